"""Pausing Python's cyclic garbage collector around exca's own bulk work.

Reading an index of 10k entries or planning 10k nodes allocates hundreds of thousands of
small acyclic objects (dicts, tuples, array views); each allocation burst triggers
collections that walk every object of the process, which took up to half of such work.
Nothing exca allocates there forms reference cycles, so pausing loses no memory. User
code (decorated methods, ``item_uid``) never runs inside a pause: it keeps normal
collection. Pauses nest and are shared between threads (the collector is per process).
"""

from __future__ import annotations

import gc
import os
import threading

_lock = threading.Lock()
_depth = 0
_resume = False  # whether the collector was enabled when the outermost pause began


class _Pause:
    """A context manager (a class: cheaper than a generator on hot paths)."""

    def __enter__(self) -> None:
        global _depth, _resume
        with _lock:
            if _depth == 0:
                _resume = gc.isenabled()
                gc.disable()
            _depth += 1

    def __exit__(self, *exc: object) -> None:
        global _depth
        with _lock:
            _depth -= 1
            if _depth == 0 and _resume:
                gc.enable()


_PAUSE = _Pause()


def paused() -> _Pause:
    """``with paused():`` pauses the collector (nested pauses end with the outermost)."""
    return _PAUSE


def _reset_in_child() -> None:
    """A process forked during a pause must not keep the collector off for good: the
    thread that would end the pause does not exist in the child."""
    global _depth, _lock
    _lock = threading.Lock()
    if _depth:
        _depth = 0
        if _resume:
            gc.enable()


os.register_at_fork(after_in_child=_reset_in_child)
