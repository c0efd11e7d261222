"""The names of bench's variants, and which to time: what the CLI needs to build its parser and check
``--variants``, imported without TensorFlow or any peer's framework (help must not wait for them)."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from gradloop import errors
from gradloop.app.config import DEFAULT_EPOCHS

# The variants this process times, in the order bench reports them.
IN_PROCESS = ("eager", "tf.function", "keras spe=1", "keras spe=32", "gradloop", "gradloop --jit")
# The peers, each timed in a process of its own (gradloop.bench.peers), with the package each needs.
PEERS = {"keras-jax spe=1": "jax", "keras-jax spe=32": "jax", "jax jit": "jax", "jax scan": "jax", "torch": "torch"}
PEERS_INSTALL = "pip install 'gradloop[peers]'"  # the extra that brings every peer's package
# Every variant bench can time; it times the in-process ones but XLA's unless told otherwise.
VARIANTS = (*IN_PROCESS, *PEERS)
DEFAULT_VARIANTS = tuple(v for v in IN_PROCESS if v != "gradloop --jit")
TRAIN_EPOCHS = DEFAULT_EPOCHS  # gradloop train's default: the run whose XLA choice bench's "gradloop" makes


def choose_variants(names: Sequence[str] | None, *, peers: bool = False) -> tuple[tuple[str, ...], dict[str, str]]:
    """The variants to time, and the peers left out with the reason: ``names`` (default
    ``DEFAULT_VARIANTS``), then with ``peers`` every other peer whose package is installed.
    A name bench does not know, or a named peer whose package is missing, is a ConfigError."""
    chosen = list(dict.fromkeys(DEFAULT_VARIANTS if names is None else names))
    unknown = [name for name in chosen if name not in VARIANTS]
    if unknown:
        raise errors.ConfigError(f"unknown bench variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    for name in chosen:
        if name in PEERS and not _installed(PEERS[name]):
            raise errors.ConfigError(
                f"bench variant {name!r} needs {PEERS[name]}, which is not installed; "
                f"install the peers with: {PEERS_INSTALL}"
            )
    skipped = {}
    for name in PEERS if peers else ():
        if name in chosen:
            continue
        if _installed(PEERS[name]):
            chosen.append(name)
        else:
            skipped[name] = f"{PEERS[name]} is not installed ({PEERS_INSTALL})"
    return tuple(chosen), skipped


def _installed(package: str) -> bool:
    """Whether ``package`` can be imported, without importing it (a peer's framework takes seconds to import)."""
    return importlib.util.find_spec(package) is not None
