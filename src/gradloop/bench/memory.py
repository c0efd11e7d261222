"""Peak resident memory, as the kernel keeps it: no sampling thread runs beside the timed code.

Three readings, for three questions:

    PeakRSS                     the peak above the level at entry, of a block of code (Linux: the kernel's
                                high-water mark ``VmHWM``, reset on entry through ``/proc/self/clear_refs``)
    peak_rss_since_reset_mib()  ``VmHWM`` itself: the process's peak since it started or since the last
                                ``PeakRSS`` reset it (Linux)
    process_peak_rss_mib()      ``getrusage``'s ``ru_maxrss``: the whole process's peak, on any Unix, for a
                                process that resets nothing (a bench worker; benchmarks/peak_rss.py)
"""

from __future__ import annotations

import resource
import sys


class PeakRSS:
    """Peak resident memory above the level at entry (Linux).

    The kernel keeps the peak (``VmHWM``) and resets it on request
    (``/proc/self/clear_refs``), so no sampling thread runs beside the timed
    code. ``mib`` is None where that is not available.
    """

    def __enter__(self) -> PeakRSS:
        self.base = _rss() if _reset_peak() else None
        self.peak = None
        return self

    def __exit__(self, *exc) -> None:
        self.peak = _status_kib("VmHWM") if self.base is not None else None

    @property
    def mib(self) -> float | None:
        if self.base is None or self.peak is None:
            return None
        return max(self.peak * 1024 - self.base, 0) / 2**20


def peak_rss_since_reset_mib() -> float | None:
    """This process's peak resident memory since it started or since the last ``PeakRSS`` began (Linux)."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib / 1024


def process_peak_rss_mib() -> float:
    """This process's peak resident set size so far (the kernel's high-water mark, whole process), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size to the current one
        return True
    except OSError:
        return False


def _rss() -> int | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None
