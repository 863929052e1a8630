"""Warnings said once per process (a loop of symlinks, an unreadable record, a renamed
field reused...): one memo of what was said, by key, for all of exca.

One memo, not one per module: the command line (``exca.ops.cli.main``, called several
times in one process by a notebook or the tests) empties it for each command, as a new
``python -m exca`` process starts with it empty; a memo of its own that the command line
did not know of (or one renamed) kept each later command silent.

Keys are tuples whose first item names the warning (``("symlink loop", path)``).
"""

from __future__ import annotations

import contextlib
import threading
import typing as tp
import warnings

_SAID: set[tuple[tp.Hashable, ...]] = set()
_LOCK = threading.Lock()
_BOUND = 100_000  # (a bounded memo: a process scanning huge caches says some things twice)
# how to forget the memos of checks done once per process whose checks say things (e.g.
# that cached results were computed with a renamed field): forgotten by ``afresh``, for
# the check to run, and say, again (kept, a second command said nothing)
FORGET_CHECKS: list[tp.Callable[[], object]] = []


def said(key: tuple[tp.Hashable, ...]) -> bool:
    """Whether ``key`` was said already (a look: it is not marked)."""
    return key in _SAID


def first(key: tuple[tp.Hashable, ...]) -> bool:
    """Whether ``key`` is said now for the first time (it is marked said): ``if
    first(key): logger.warning(...)``."""
    with _LOCK:  # (two threads meeting the same thing: one says it)
        if key in _SAID:
            return False
        if len(_SAID) >= _BOUND:
            _SAID.clear()
        _SAID.add(key)
        return True


def mark(keys: tp.Iterable[tuple[tp.Hashable, ...]]) -> None:
    """Mark ``keys`` said (what one warning covers, e.g. every link of a loop)."""
    with _LOCK:
        _SAID.update(keys)


def forget() -> None:
    """As in a new process: everything is said again, the checks of FORGET_CHECKS run
    again (for tests, and a long-lived process that wants to hear it all again)."""
    with _LOCK:
        _SAID.clear()
    for check in FORGET_CHECKS:
        check()


@contextlib.contextmanager
def afresh() -> tp.Iterator[None]:
    """Everything is said again within the block (a command of the command line), as in
    a new process (the checks of FORGET_CHECKS run again, Python's warnings are said
    again); after it, what was said before and within counts as said (Python's warnings
    may be said again: their memo is reset whenever the warning filters change). Not for
    threads: the warning filters are the process's."""
    with _LOCK:
        before = set(_SAID)
        _SAID.clear()
    for forget in FORGET_CHECKS:
        forget()
    try:
        # (Python's warnings, e.g. an unreadable index line, said once per place and
        # text: entering this resets what they said, the filters kept as they are)
        with warnings.catch_warnings():
            yield
    finally:
        with _LOCK:
            _SAID.update(before)
