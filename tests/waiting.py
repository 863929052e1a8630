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


class Waits:
    """The threads of this process seen waiting for work done elsewhere, by what they
    waited for: "claim" (a claim another worker holds, in a folder), "jobs" (the
    scheduler's wait loop: jobs or pool units), "lock" (another thread of the same
    instance computing or forcing it: a lock in this process), "upstream" (a worker
    whose upstream task's result another worker or job computes again)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self.threads: dict[str, set[int]] = {
            kind: set() for kind in ("claim", "jobs", "lock", "upstream")
        }

    def note(self, kind: str) -> None:
        with self._guard:
            self.threads[kind].add(threading.get_ident())

    def count(self, *kinds: str) -> int:
        """How many threads waited for one of these (all kinds if none given)."""
        with self._guard:
            return len(set().union(*(self.threads[k] for k in kinds or self.threads)))

    def waited(self, thread: threading.Thread, *kinds: str) -> bool:
        with self._guard:
            return any(thread.ident in self.threads[k] for k in kinds or self.threads)

    def until(self, *threads: threading.Thread, kinds: tuple[str, ...] = ()) -> None:
        """Wait until each of these threads waits (or ended: what it did is then for the
        test's assertions to judge, not a time-out's)."""
        from filelog import wait_until

        wait_until(lambda: all(self.waited(t, *kinds) or not t.is_alive() for t in threads))


class _NotedLock:
    """A lock that notes the threads finding it taken (then waiting for it)."""

    def __init__(self, lock: tp.Any, waits: Waits) -> None:
        self._lock, self._waits = lock, waits

    def __enter__(self) -> _NotedLock:
        if not self._lock.acquire(blocking=False):
            self._waits.note("lock")
            self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def waits_for_others(monkeypatch: pytest.MonkeyPatch) -> Waits:
    """Notes which threads of this process wait for work done elsewhere (see Waits): for
    tests starting a call that must wait for another one, instead of sleeping a while
    (long enough to decide? on a loaded machine, not always)."""
    from exca.graph import calls, scheduler, worker
    from exca.infra import base
    from exca.storage import claims

    waits = Waits()
    wait_some = scheduler.Scheduler._wait_some
    claims_wait = claims.Claims.wait
    ram_lock = base._Runtime.ram_lock
    force_lock = calls._force_lock
    recomputed_elsewhere = worker._recomputed_elsewhere

    def wait_some_noted(self: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        waits.note("jobs")
        return wait_some(self, *args, **kwargs)

    def claims_wait_noted(
        self: tp.Any, *args: tp.Any, on_wait: tp.Any = None, **kw: tp.Any
    ) -> tp.Any:
        def noted(held: tp.Any) -> None:  # (called while a live claim holds some keys)
            waits.note("claim")
            if on_wait is not None:
                on_wait(held)

        return claims_wait(self, *args, on_wait=noted, **kw)

    def recomputed_elsewhere_noted(source: tp.Any) -> bool:
        elsewhere = recomputed_elsewhere(source)
        if elsewhere:  # (worker._upstream_state waits for it)
            waits.note("upstream")
        return elsewhere

    monkeypatch.setattr(scheduler.Scheduler, "_wait_some", wait_some_noted)
    monkeypatch.setattr(worker, "_recomputed_elsewhere", recomputed_elsewhere_noted)
    monkeypatch.setattr(claims.Claims, "wait", claims_wait_noted)
    monkeypatch.setattr(
        base._Runtime, "ram_lock", lambda self, *a: _NotedLock(ram_lock(self, *a), waits)
    )
    monkeypatch.setattr(calls, "_force_lock", lambda node: _NotedLock(force_lock(node), waits))
    return waits
