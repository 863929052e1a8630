"""Jobs as users see them: ``result()``, ``done()``, ``wait()`` and, for submitit jobs,
``stdout()``, ``stderr()``, ``cancel()``. Results are always read from the node's cache
(workers write them there), so a job object works from any process."""

from __future__ import annotations

import time
import typing as tp

from . import registry, store
from .node import Node


class Job:
    """The job computing a task node (or a finished/cached one)."""

    def __init__(self, node: Node, submitit_job: tp.Any = None, cluster: str | None = None) -> None:
        self.node = node
        self.submitit_job = submitit_job
        self.cluster = cluster

    @property
    def job_id(self) -> str:
        if self.submitit_job is None:
            return "#local#"
        return str(self.submitit_job.job_id)

    def __repr__(self) -> str:
        state = self.state
        return f"{type(self).__name__}<job_id={self.job_id}, cluster={self.cluster}, state={state}, node={self.node.uid}>"

    @property
    def state(self) -> str:
        cached = store.task_state(self.node)
        if cached == "done":
            return "COMPLETED"
        if cached == "error":
            return "FAILED"
        if self.submitit_job is None:
            return "NOT SUBMITTED"
        try:
            return str(self.submitit_job.state)
        except Exception:
            return "UNKNOWN"

    def done(self) -> bool:
        self.node.cache.refresh()
        if store.task_state(self.node) != "missing":
            return True
        if self.submitit_job is None:
            return False
        return bool(self.submitit_job.done())

    def wait(self, poll: float = 0.2) -> None:
        delay = 0.05
        while not self.done():
            time.sleep(delay)
            delay = min(delay * 1.5, max(poll, 2.0))

    def result(self) -> tp.Any:
        """Wait for the job, then the node's result (re-raises a cached or job error)."""
        self.wait()
        if store.task_state(self.node) == "missing":
            from .errors import JobFailedError
            from .executors import SubmititHandle

            how = SubmititHandle(self.submitit_job, str(self.cluster)).ended_how()
            raise JobFailedError(f"{self.node.uid} not computed: {how}")
        return store.task_result(self.node)

    def results(self) -> list[tp.Any]:
        return [self.result()]

    def exception(self) -> BaseException | None:
        try:
            self.result()
        except Exception as error:
            return error
        return None

    def _log(self, kind: str) -> str | None:
        if self.submitit_job is not None:
            text: str | None = getattr(self.submitit_job, kind)()
            return text
        record = registry.latest(self.node.folder)
        if record is None:
            return None
        path = record.stdout if kind == "stdout" else record.stderr
        return path.read_text() if path.exists() else None

    def stdout(self) -> str | None:
        return self._log("stdout")

    def stderr(self) -> str | None:
        return self._log("stderr")

    def cancel(self, check: bool = True) -> None:
        if self.submitit_job is not None:
            self.submitit_job.cancel(check=check)


LocalJob = Job
