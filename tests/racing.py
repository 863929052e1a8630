"""Functions run in threads by tests: in the background while the test acts, or all at
once with the interpreter switching between them as often as it can (a race between
them then shows within a second instead of once in a while)."""

from __future__ import annotations

import sys
import threading
import typing as tp


def race(*targets: tp.Callable[[], object]) -> None:
    """Run each function in its own thread, all at once; returns once all ended."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=target) for target in targets]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)


class Background:
    """A function running in a thread from its creation on; ``outcome``, once it ended:
    ``[what it returned]`` or ``[the exception it raised]``."""

    def __init__(self, function: tp.Callable[[], object]) -> None:
        self.outcome: list[tp.Any] = []
        self.thread = threading.Thread(target=self._run, args=(function,))
        self.thread.start()

    def _run(self, function: tp.Callable[[], object]) -> None:
        try:
            self.outcome.append(function())
        except BaseException as error:  # (the test checks it)
            self.outcome.append(error)

    def join(self, timeout: float) -> list[tp.Any]:
        self.thread.join(timeout=timeout)
        return self.outcome
