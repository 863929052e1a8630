"""Jobs as users see them: ``result()``, ``done()``, ``wait()`` and, for submitted work,
``stdout()``, ``stderr()``, ``cancel()`` and ``submitit_job``. Results are always read
from the node's cache (workers write them there), so a job works from any process."""

from __future__ import annotations

import contextlib
import os
import time
import typing as tp

from . import jobpickle, registry, store
from .errors import (
    NO_JOB,
    NOTHING_CACHED,
    JobFailedError,
    force_not_done,
    items_not_computed,
    retry_hint,
)
from .node import CLAIM_JOB_ID, TASK_KEY, Node, Out

if tp.TYPE_CHECKING:
    from .executors import Handle


_FAILED_STATES = ("CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "FAILED")


def not_forced(
    node: Node, job_id: str, cluster: str | None, records: list[registry.JobRecord] | None = None
) -> str | None:
    """Why what is cached is not the result of the forcing job ``job_id`` (ended, or
    not; ``cluster``: its kind): NOTHING_CACHED, or the id of the job submitted before it
    that wrote it (running when the force was asked, it wrote after the forced job
    removed the result it replaces; NO_JOB: a computation without a job started before
    it). None: the cached outcome counts, written by that job or after the force (a later
    job, or a computation without a job started since, e.g. inline in mode retry)."""
    if store.task_state(node) == "missing":
        return NOTHING_CACHED
    by = store.computed_by(node)
    if by == job_id:
        return None
    if records is None:
        records = registry.read_all(node.folder)
    submitted = {r.job_id: r.submitted for r in records}
    if by is None:  # (inline, say: it counts if it started after the force was submitted)
        if job_id in submitted and not store.computed_since(node.cache, submitted[job_id]):
            return NO_JOB
        return None
    if by in submitted and job_id in submitted:
        return by if submitted[by] < submitted[job_id] else None
    # a record removed since: Slurm numbers its jobs in the order they were submitted,
    # but ids do not order jobs of different kinds (a local one is a pid)
    theirs = next((r.cluster for r in records if r.job_id == by), None)
    theirs = theirs or store.computed_by_cluster(node)
    ours_id, their_id = (j.split("_")[0] for j in (job_id, by))
    if cluster == theirs == "slurm" and ours_id.isdigit() and their_id.isdigit():
        return by if int(their_id) < int(ours_id) else None
    if job_id in submitted:  # (when that computation started tells, as without a job)
        return None if store.computed_since(node.cache, submitted[job_id]) else by
    return None  # (unknown: it counts)


def force_failure(node: Node, handle: Handle) -> JobFailedError:
    """The error of a forced instance whose forcing job ended without computing, while
    what is cached is not a forced result (see ``not_forced``)."""
    earlier = not_forced(node, handle.job_id, handle.cluster) or NOTHING_CACHED
    # (forced by a sub-config in mode force: that one is named, not this config's mode)
    upstream = next((n.uid for n in node.closure[1:] if n.mode == "force"), None)
    if node.mode == "force":
        upstream = None
    return JobFailedError(force_not_done(node.uid, handle.ended_how(), earlier, upstream))


class Job(tp.Generic[Out]):
    """The job computing a task node (or a finished/cached one). ``Out``, for a type
    checker: what ``result()`` returns, as its node's."""

    # mode retry, following a job it did not submit (another call's): once that job ended
    # without a result, or with an error of a computation started before ``asked_at``,
    # the node's own job is sent (once), as a call in mode retry computes it again
    retry_if_lost = False
    asked_at = 0.0
    cancelled_here = False  # (its cancel() was called)

    def __init__(
        self, node: Node[Out], handle: Handle | None = None, *, replaces: bool = False
    ) -> None:
        self.node = node
        self.handle = handle
        # a forced job: what is cached before it ends is the outcome it replaces (an
        # earlier job may still write one after it was submitted)
        self.replaces = replaces and handle is not None

    def __copy__(self) -> Job[Out]:  # (not a pickling round trip, as __reduce__ would make it)
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __reduce__(self) -> tuple[tp.Any, ...]:
        # (its node holds the method's function: a class of a script (__main__) pickles
        # by value, through the unit pickler, as work sent to a job does)
        # (nor its retry of a followed job: a copy loaded elsewhere inspects, not submits)
        state = {k: v for k, v in self.__dict__.items() if k != "retry_if_lost"}
        return jobpickle.reduce(self, lambda: (object.__new__, (type(self),), state))

    @property
    def submitit_job(self) -> tp.Any:
        return None if self.handle is None else self.handle.submitit_job

    def __getattr__(self, name: str) -> tp.Any:
        """The rest of submitit's job API (``paths``, ``get_info()``, ``task()``...), for
        work that went to a submitit job."""
        handle = self.__dict__.get("handle")
        job = None if handle is None or name.startswith("__") else handle.submitit_job
        if job is None:
            raise AttributeError(
                f"{type(self).__name__} has no attribute {name!r} (submitit's job attributes "
                "exist only for work sent to a job)"
            )
        return getattr(job, name)

    @property
    def cluster(self) -> str | None:
        return None if self.handle is None else self.handle.cluster

    @property
    def job_id(self) -> str:
        if self.handle is None or not self.handle.job_id:
            return "#local#"
        return self.handle.job_id

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}<job_id={self.job_id}, cluster={self.cluster}, "
            f"state={self._state()}, node={self.node.uid}>"
        )

    def _retry_lost_job(self, blocking: bool = False) -> None:
        """The retry of a job in mode retry whose followed job ended without its result
        (see ``retry_if_lost``); ``blocking``: also on cluster None, which computes it
        in this process (not in ``done()`` or ``state``)."""
        handle = self.handle
        if not self.retry_if_lost or handle is None or not handle.done():
            return
        from .node import SUBMITIT_CLUSTERS

        if not blocking and self.node.execution.cluster not in SUBMITIT_CLUSTERS:
            return
        self.retry_if_lost = False
        node = self.node
        state = store.task_state(node, refresh=True)
        if state == "done" or self._successor() is not None:
            return  # (its result, or a later job computing it: followed by result())
        if state == "error" and store.computed_since(node.cache, self.asked_at):
            return  # (the answer of a computation started since it was asked)
        if state == "missing" and handle.finished_ok():
            return  # (its result was removed since it wrote it: not a failure to retry)
        from .calls import task_job

        new = task_job(node)
        self.handle, self.replaces = new.handle, new.replaces

    @property
    def state(self) -> str:
        self._retry_lost_job()
        return self._state()

    def _state(self) -> str:
        """``state``, without the retry of a followed job that ended (a repr sends none)."""
        if self.replaces and self.handle is not None and not self.handle.done():
            return self._live_state()
        if self._forced_nothing():  # (what is cached is not its outcome)
            return self._ended_state()
        cached = store.task_state(self.node)
        if cached == "done":
            return "COMPLETED"
        if cached == "error":
            if self._ended_without_outcome():  # (its failure recorded: how Slurm ended it)
                return self._ended_state()
            return "FAILED"
        if self.handle is None:
            return "NOT SUBMITTED"
        if not self.handle.done():
            return self._live_state()
        if self.job_id == "#local#":  # (computed here, no folder: its error, if any, is held)
            return "FAILED" if self.handle.error() is not None else "FINISHED"
        return self._ended_state()

    def _ended_state(self) -> str:
        """How submitit saw a job that ended without an outcome (CANCELLED, TIMEOUT...),
        else FAILED."""
        state = getattr(self.handle, "state", None)
        seen = str(state()) if callable(state) else ""
        if seen.startswith(_FAILED_STATES):
            return seen
        handle = self.handle
        if handle is not None and handle.cancelled_unstarted():
            # (a pending array element cancelled: Slurm keeps no state of it, sacct no row)
            return "CANCELLED"
        return "FAILED"

    def _ended_without_outcome(self) -> bool:
        """Whether this job is a Slurm job that ended without writing an outcome (cancelled,
        timed out...): the error cached for it is then its end, which its state says."""
        handle = self.handle
        if handle is None or handle.cluster != "slurm":
            return False
        # (the error cached is this job's end: not one of a later computation without a
        # job, e.g. an inline retry that raised, which leaves this job the latest record)
        entry = self.node.cache.entry(TASK_KEY)
        info = entry.info if entry is not None else {}
        said = str(info.get("m") or "")
        if not str(info.get("t") or "").endswith("JobFailedError") or (
            f"job {handle.job_id} " not in said
        ):
            return False
        with contextlib.suppress(Exception):
            return handle.done() and not handle.finished_ok() and handle.error() is None
        return False

    def _forced_nothing(self) -> bool:
        """A forced job that ended without computing (cancelled before it started, killed
        before writing) while what is cached is not a forced result (see
        ``not_forced``)."""
        handle = self.handle
        if not self.replaces or handle is None or handle.cluster not in ("slurm", "local"):
            return False  # (not a job whose worker records its id: see store.computed_by)
        if not handle.done() or handle.finished_ok():
            return False
        return not_forced(self.node, self.job_id, handle.cluster) is not None

    def _live_state(self) -> str:
        """PENDING while Slurm's queue holds the job, SUSPENDED while it is suspended
        (``scontrol suspend``), else RUNNING."""
        if self.cluster != "slurm":
            return "RUNNING"
        state = registry.queue_state(self.job_id)
        if state is None and self.handle is not None and self.handle.never_ran():
            return "PENDING"  # (not listed, e.g. just cancelled, but it never started)
        return state if state in ("PENDING", "SUSPENDED") else "RUNNING"

    def done(self) -> bool:
        self._retry_lost_job()
        state = "" if self.replaces else store.task_state(self.node, refresh=True)
        # (an error while it follows a job in mode retry: maybe retried once that job ends)
        if state == "done" or (state == "error" and not self.retry_if_lost):
            return True
        return self.handle is None or self.handle.done()  # (no job: nothing to wait for)

    def wait(self) -> None:
        if self.done():
            return
        self._refuse_waiting_for_callers()
        from .worker import JobWait

        # (in a computation of map items or of a task: a cycle through the job is refused)
        job_wait = JobWait(self.node.uid)
        waits = self._computes() if job_wait.wanted() else {}
        from . import scheduler  # (its poll bounds: one knob for every wait on jobs)

        delay = scheduler.POLL_START
        try:
            while not self.done():
                job_wait(waits)
                time.sleep(delay)
                delay = min(delay * 1.5, scheduler.POLL_MAX)
        finally:
            job_wait.end()

    def _computes(self) -> dict[str, set[str]]:
        """What the job computes (keys by folder), for the wait records (see JobWait)."""
        folder = self.node.folder
        return {} if folder is None else {os.fspath(folder): {TASK_KEY}}

    def _refuse_waiting_for_callers(self) -> None:
        """In a job: raise if this is the job of one of its callers, or the claim of one
        (each would wait for the other: see callers.py)."""
        from . import callers
        from .errors import caller_cycle_error
        from .executors import ClaimHandle

        if not callers.chained() or self.handle is None:
            return
        if callers.caller_job(self.handle.job_id) is not None:
            raise caller_cycle_error(self.node.uid, f"job {self.handle.job_id}")
        if isinstance(self.handle, ClaimHandle):
            keys = self.handle.keys if self.handle.keys is not None else [TASK_KEY]
            callers.refuse_waiting_on_claims(self.node.uid, self.node.folder, keys)

    def result(self) -> Out:
        """Wait for the job, then the node's result (re-raises a cached or job error)."""
        self.wait()
        if self.retry_if_lost:  # (cluster None: its retry computes it here, now)
            self._retry_lost_job(blocking=True)
            self.wait()
        missing = store.task_state(self.node, refresh=True) == "missing"
        if missing:
            successor = self._successor()
            if successor is not None:  # (e.g. a forced job removed this one's result)
                return Job(self.node, successor).result()
        if self._forced_nothing():
            assert self.handle is not None
            raise force_failure(self.node, self.handle)
        if missing:
            from .executors import ClaimHandle

            if isinstance(self.handle, ClaimHandle) and self.handle.keys is None:
                # the worker this job followed (no job of its own: see calls.task_job)
                # ended without a result: a job now, as a call with a cluster does
                from .calls import task_job

                return task_job(self.node).result()
            error = self.handle.error() if self.handle is not None else None
            if error is not None and self.job_id == "#local#":
                raise error  # computed here and not cached (no folder), or never started
            if self.handle is None:
                raise JobFailedError(f"{self.node.uid} not computed: it was never submitted")
            how = self.handle.ended_how()
            # (the job of its retry, or followed by it; not one the user cancelled)
            retrying = self.node.mode == "retry" and not self.cancelled_here
            raise JobFailedError(
                f"{self.node.uid} not computed: {retry_hint(how, retrying=retrying)}"
            )
        return store.task_result(self.node)

    def _successor(self) -> Handle | None:
        """A later job of the node, queued or running (this one ended without a result)."""
        if self.handle is None or self.node.folder is None:
            return None
        record = registry.latest(self.node.folder)
        if record is None or record.job_id == self.job_id or not registry.is_active(record):
            return None
        from .executors import recorded_handle

        return recorded_handle(record)

    def results(self) -> list[Out]:
        return [self.result()]

    def exception(self) -> BaseException | None:
        try:
            self.result()
        except Exception as error:
            return error
        return None

    def _log(self, kind: str) -> str | None:
        job = self.submitit_job
        if job is not None:
            text: str | None = getattr(job, kind)()
            return text
        if self.job_id == CLAIM_JOB_ID:
            return None  # (another worker computes it, with no log here: not an older job's)
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
        # (stopped on purpose: not a followed job lost meanwhile, which a job in mode
        # retry would send again from its done() or state; nor one that it retried)
        self.retry_if_lost = False
        self.cancelled_here = True
        if self.handle is not None:
            self.handle.cancel()


LocalJob = Job


class MapJob(Job[list[tp.Any]]):
    """The jobs computing the missing items of a map node (its chunks, sent as one array;
    none when every item was cached): done once every item is cached; its result is the
    outputs in item order (an item's cached error raises, as ``node.result()`` does)."""

    # the jobs followed are earlier ones (mode retry or force, asked while they were queued
    # or running): once they end, the node's own retry or force is sent
    resume = False

    def _follow_up(self) -> None:
        if self.resume and self.handle is not None and self.handle.done():
            from .calls import map_job

            new = map_job(self.node)
            self.handle, self.replaces, self.resume = new.handle, new.replaces, new.resume

    def _computes(self) -> dict[str, set[str]]:
        folder = self.node.folder
        if folder is None:
            return {}
        try:
            missing = self._missing()
        except Exception:  # (its items unknown: said by result())
            missing = None
        return {os.fspath(folder): set(missing or ())}

    def _missing(self) -> list[str] | None:
        """The items not cached yet (None: its items cannot be read, e.g. an upstream node
        failed: the handle's error says why)."""
        try:
            uids = store.map_item_uids(self.node)
        except Exception:
            handle = self.handle
            if handle is not None and handle.done() and handle.error() is not None:
                return None
            raise
        self.node.cache.refresh()
        return self.node.cache.missing(uids)

    @property
    def state(self) -> str:
        self._follow_up()
        # (jobs replacing cached items, or earlier jobs followed, e.g. a retry of their
        # errors: what is cached meanwhile is not the outcome)
        if (self.replaces or self.resume) and self.handle is not None and not self.handle.done():
            return self._live_state()
        missing = self._missing()
        if missing is None:
            return "FAILED"
        if not missing:
            errors = self.node.cache.count_errors(store.map_item_uids(self.node))
            return "FAILED" if errors else "COMPLETED"
        if self.handle is None:
            return "NOT SUBMITTED"
        if not self.handle.done():
            return self._live_state()
        return "FAILED"

    def done(self) -> bool:
        self._follow_up()
        missing = self._missing()
        if missing is None or (not self.replaces and not self.resume and not missing):
            return True
        return self.handle is None or (self.handle.done() and not self.resume)

    def _refuse_waiting_for_callers(self) -> None:
        from . import callers
        from .errors import caller_cycle_error

        if not callers.chained() or self.handle is None:
            return
        for handle in getattr(self.handle, "handles", [self.handle]):  # (a group: each)
            if callers.caller_job(handle.job_id) is not None:
                raise caller_cycle_error(self.node.uid, f"job {handle.job_id}")

    def result(self) -> list[tp.Any]:
        """Wait for the jobs, then the outputs in item order."""
        from ..storage.dumping import PAYLOAD_ERRORS

        self.wait()
        missing = self._missing()
        if missing is None or missing:
            error = self.handle.error() if self.handle is not None else None
            if error is not None and (missing is None or self.job_id == "#local#"):
                raise error  # (computed here: its own error; or why its items are unknown)
            assert missing is not None
            what = items_not_computed(missing, self.node.uid)
            if self.handle is None:
                raise JobFailedError(f"{what}: they were never submitted", missing)
            how = retry_hint(self.handle.ended_how(), items=True)
            raise JobFailedError(f"{what}: {how}", missing)
        try:
            return store.map_outputs(self.node)
        except PAYLOAD_ERRORS as error:  # (a payload removed or damaged outside exca?)
            uids = store.map_item_uids(self.node)
            store.drop_damaged_or_raise(error, self.node.cache, uids, self.node.uid, False)
            raise

    def results(self) -> list[tp.Any]:
        return [self.result()]

    def _log(self, kind: str) -> str | None:
        """The logs of its chunk jobs (not the folder's latest job: maybe another call's),
        one after the other under their job ids."""
        handles = getattr(self.handle, "handles", [self.handle] if self.handle else [])
        texts = []
        for handle in handles:
            job = handle.submitit_job
            text = getattr(job, kind)() if job is not None else None
            if text is not None:
                texts.append(text if len(handles) == 1 else f"--- job {handle.job_id}\n{text}")
        return "\n".join(texts) if texts else None
