"""release: finished iterators are deleted on the release thread, which ends before exit."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import weakref

from gradloop.loop import release


def test_release_iterator_deletes_on_its_thread_once_nothing_else_holds_it():
    class Iterator:
        pass

    deleted_on = []
    held = Iterator()
    weakref.finalize(held, lambda: deleted_on.append(threading.current_thread().name))
    release.release_iterator(held)
    release.release_iterator(None)  # nothing to release
    time.sleep(0.3)
    assert deleted_on == []  # still ours
    del held
    deadline = time.monotonic() + 30
    while not deleted_on and time.monotonic() < deadline:
        time.sleep(0.01)
    assert deleted_on == ["gradloop-release"]


def test_the_release_thread_ends_before_the_interpreter_finalizes():
    # A daemon thread still inside TensorFlow at finalization aborts the process.
    script = (
        "import atexit, threading\n"
        "from gradloop.loop import release\n"
        "atexit.register(lambda: print('alive at exit:', any(t.name == 'gradloop-release' "
        "for t in threading.enumerate())))  # runs after gradloop's own handler (last in, first out)\n"
        "class Iterator: pass\n"
        "release.release_iterator(Iterator())\n"
        "release.release_iterator(kept := Iterator())  # still held at exit: left to its holder\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, "alive at exit: False\n"), done.stderr


def test_an_iterator_held_elsewhere_is_let_go_after_the_hold_limit(monkeypatch):
    monkeypatch.setattr(release, "HOLD_SECONDS", 0.2)  # a reference cycle would never let go

    class Iterator:
        pass

    kept = Iterator()
    alone = sys.getrefcount(kept)
    release.release_iterator(kept)
    deadline = time.monotonic() + 30
    while sys.getrefcount(kept) > alone and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sys.getrefcount(kept) == alone  # the thread dropped its reference; ours remains
