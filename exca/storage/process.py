"""Who is writing: host, pid, process start time, thread; and whether such a process lives.

A pid alone can be reused after its process dies; (pid, start time) cannot, so liveness
checks on the same host compare both. Names built here are unique and never reused.
"""

from __future__ import annotations

import functools
import os
import random
import socket
import threading
import time

# this process's pid, and a random source of its own (a user's random.seed() does not make
# two names alike), both renewed in a forked child: os.getpid() and os.urandom() are system
# calls, ~2 µs each on a VM, and a task's first call made 8 and 6 of them
_PID = [os.getpid()]
_RANDOM = random.Random()


def _after_fork() -> None:
    _PID[0] = os.getpid()
    _RANDOM.seed()


os.register_at_fork(after_in_child=_after_fork)


def pid() -> int:
    """``os.getpid()`` without its system call."""
    return _PID[0]


def random_hex(nbytes: int) -> str:
    """``os.urandom(nbytes).hex()`` for names (not secrets), without its system call."""
    return format(_RANDOM.getrandbits(8 * nbytes), f"0{2 * nbytes}x")


_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def safe_name(text: str, max_length: int = 40) -> str:
    """Reduce text to characters safe in a file name (used for host names)."""
    cleaned = "".join(c if c in _SAFE else "-" for c in text).strip(".") or "x"
    return cleaned[:max_length]


@functools.cache
def hostname() -> str:
    return safe_name(socket.gethostname())


def process_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (None if it does not exist or
    has already exited and waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ")"
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields and fields[0] in (b"Z", b"X"):
        return None  # a zombie has finished: it is not running anything anymore
    try:
        return int(fields[19])  # field 22 of the whole line
    except (IndexError, ValueError):
        return None


def start_epoch(pid: int) -> float | None:
    """When a running process started, in seconds since the epoch (to ~1 s), or None."""
    ticks = process_start_time(pid)
    if ticks is None:
        return None
    return _boot_time() + ticks / os.sysconf("SC_CLK_TCK")


@functools.cache
def _boot_time() -> float:
    with open("/proc/stat", "rb") as handle:
        for line in handle:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    return 0.0


_SELF: dict[int, int | None] = {}


def self_start_time() -> int | None:
    pid = _PID[0]
    if pid not in _SELF:  # recomputed after a fork (new pid)
        _SELF[pid] = process_start_time(pid)
    return _SELF[pid]


def _self_start_epoch() -> float | None:
    ticks = self_start_time()
    return None if ticks is None else _boot_time() + ticks / os.sysconf("SC_CLK_TCK")


def is_alive(host: str, pid: int, start_time: int | None) -> bool | None:
    """True/False for a process on this host; None when it runs on another host (unknown)."""
    if host != hostname():
        return None
    current = process_start_time(pid)
    if current is None:
        return False
    return start_time is None or current == start_time


def session_ended(session: str, last_write: float, grace: float) -> bool:
    """Whether the writer session named ``session`` (by ``unique_name``) can never write
    again: its process is gone (on this host, where /proc tells; a pid reused by a process
    started after the session counts as gone), or, on another host, it wrote nothing for
    ``grace`` seconds (``last_write``: its file's mtime)."""
    parts = session.split("-")
    if len(parts) >= 5 and parts[-4].isdigit() and "-".join(parts[:-4]) == hostname():
        pid = int(parts[-4])
        # (a session of this process: its start is known once; a /proc read per index
        # file of its own writers made each refresh of a folder it writes cost one each)
        started = _self_start_epoch() if pid == _PID[0] else start_epoch(pid)
        if started is None:
            return True
        try:
            created = int(parts[-2], 16) / 1e6
        except ValueError:
            return False
        return started > created + 2.0  # (start times are known to ~1 s)
    return time.time() - last_write > grace


def unique_name_time(name: str) -> float | None:
    """When a ``unique_name`` was made (time.time()), None for another name."""
    try:
        return int(name.rsplit("-", 2)[-2], 16) / 1e6
    except (IndexError, ValueError):
        return None


def unique_name(prefix: str = "") -> str:
    """A name no other writer, thread or later process will ever produce."""
    parts = [
        hostname(),
        str(_PID[0]),
        str(threading.get_native_id()),
        format(time.time_ns() // 1000, "x"),
        random_hex(3),
    ]
    return prefix + "-".join(parts)
