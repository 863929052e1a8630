"""At most N local jobs of one job_array() computing at once (``max_workers``, what
Slurm's array throttle does for Slurm jobs).

submitit's local executor starts every job of a batch at once, each a process of this
machine. Each job of a throttled array first takes one of N slots: byte-range locks
(``lockf``) on one small file in the temporary folder, shared by the array's jobs, so a
job that dies frees its slot with its process. A job waits (polling) until a slot is free;
its process exists meanwhile, computing nothing. The last job to end removes the file.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
import typing as tp
import uuid

POLL_SECONDS = 0.2  # how often a waiting job tries the slots again


def new_slots_file() -> str:
    """The path of the slots file of a new throttled array (made by its first job)."""
    return os.path.join(tempfile.gettempdir(), f"exca-local-slots-{uuid.uuid4().hex}")


def run_in_slot(path: str, slots: int, function: tp.Callable[..., tp.Any], *args: tp.Any) -> tp.Any:
    """``function(*args)`` once one of the ``slots`` slots of ``path`` is this process's."""
    fd = _open_waiting(path, slots)
    try:
        slot = _take_slot(fd, slots)
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, slots)  # (no longer waiting)
        try:
            return function(*args)
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, slot)
            _remove_if_unused(fd, path, slots)
    finally:
        os.close(fd)


def _open_waiting(path: str, slots: int) -> int:
    """The slots file, opened, with this process marked as waiting (a shared lock on the
    byte after the slots): never the file the last job removed just before (else this
    job would throttle with nobody)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.lockf(fd, fcntl.LOCK_SH, 1, slots)  # (waits while a last job removes it)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _take_slot(fd: int, slots: int) -> int:
    while True:
        for slot in range(slots):
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
            except OSError:
                continue
            return slot
        time.sleep(POLL_SECONDS)


def _remove_if_unused(fd: int, path: str, slots: int) -> None:
    """Remove the file when no job holds a slot or waits for one (an exclusive lock on
    all of it succeeds): the array's jobs have ended (one started later makes it anew)."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, slots + 1, 0)
    except OSError:
        return
    try:
        os.unlink(path)
    except OSError:
        pass
