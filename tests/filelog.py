"""File helpers shared by the tests: a call log that processes and jobs append to, and
polling for a condition (imported by test modules, also inside job workers)."""

from __future__ import annotations

import time
import typing as tp
from pathlib import Path


def append(path: str | Path, text: str) -> None:
    """One line per call; O_APPEND small writes are atomic across processes."""
    with open(path, "a", encoding="utf8") as handle:
        handle.write(text + "\n")


def lines(path: Path) -> list[str]:
    return path.read_text("utf8").splitlines() if path.exists() else []


def wait_until(predicate: tp.Callable[[], bool], timeout: float = 60.0, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached in time")
        time.sleep(poll)
