"""Delete finished tf.data iterators on a background thread, not on the training one.

With tf.data's autotuner on (the default for any pipeline), deleting an
iterator can wait for the tuner thread's next wake-up, whose period doubles up
to 60 s (measured in docs/performance.md). A loop that makes an iterator per
epoch (Keras' ``fit``, the tutorial's loop) would pay that on the training
thread. The wait releases the GIL, so on a thread of its own it overlaps the training.

    release_iterator(it)   # the thread holds it until its reference is the last,
                           # then drops it: the deletion (and any wait) runs there

At interpreter exit the thread finishes its deletions and ends: a daemon thread
still inside TensorFlow when Python finalizes aborts the process ("FATAL:
exception not rethrown", seen in a multi-worker run).
"""

from __future__ import annotations

import atexit
import os
import queue
import sys
import threading
import time

# Held this long at most (a reference cycle never lets the count drop), then let go.
HOLD_SECONDS = 600.0

# sys.getrefcount of an object only the thread's list holds, counted in the same shape the
# thread counts in (list entry, loop variable, the call's argument): CPython versions differ.
_SOLE = [sys.getrefcount(o) for _, o in [(0.0, object())]][0]


def release_iterator(iterator: object) -> None:
    """Let ``iterator`` be deleted on the release thread once nothing else holds it."""
    global _thread
    if iterator is None:
        return
    with _lock:
        if _stop.is_set():
            return  # exiting: the caller's reference is the last, dropped where it is
        if _thread is None:
            _thread = threading.Thread(target=_delete_released, name="gradloop-release", daemon=True)
            _thread.start()
            atexit.register(_finish)
        _released.put(iterator)


_released: queue.SimpleQueue = queue.SimpleQueue()
_lock = threading.Lock()
_thread: threading.Thread | None = None
_stop = threading.Event()


def _delete_released() -> None:
    held: list[tuple[float, object]] = []  # (when released, iterator)
    while not (_stop.is_set() and _released.empty()):
        try:
            item = _released.get(timeout=0.05 if held else None)
        except queue.Empty:
            pass
        else:
            if item is not None:  # None wakes the thread to stop
                held.append((time.monotonic(), item))
            del item
        now = time.monotonic()
        held = [(t, it) for t, it in held if sys.getrefcount(it) > _SOLE and now - t < HOLD_SECONDS]


def _finish() -> None:
    with _lock:
        _stop.set()
        _released.put(None)
    if _thread is not None:
        _thread.join(timeout=150)  # deletions in turn; each waits at most the tuner's 60 s period


def _forget_thread() -> None:  # a forked child has no such thread
    global _thread, _released, _lock
    _thread, _released, _lock = None, queue.SimpleQueue(), threading.Lock()


os.register_at_fork(after_in_child=_forget_thread)
