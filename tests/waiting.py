"""Knowing when a call of the test's process waits for its jobs, for the tests that
interrupt it there (a signal sent a fixed while after its jobs started could come before
the wait on a loaded machine, and makes the suite slower everywhere else)."""

from __future__ import annotations

import threading
import typing as tp

import pytest


def waiting_for_jobs(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """An event set once a call of this process waits for its jobs to end (entered the
    scheduler's wait loop)."""
    from exca.graph import scheduler

    waiting = threading.Event()
    wait_some = scheduler.Scheduler._wait_some

    def wait_some_noted(self: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        waiting.set()
        return wait_some(self, *args, **kwargs)

    monkeypatch.setattr(scheduler.Scheduler, "_wait_some", wait_some_noted)
    return waiting
