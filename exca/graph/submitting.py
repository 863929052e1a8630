"""One submission per node across processes: the job registry is read when work is
decided, but a submission (an ``sbatch`` takes ~0.5 s) is recorded only once it returns.
Two processes deciding within that window would both submit; the worker's claims keep
the computation single, yet the second job holds an allocation while it waits. So the
submission of a task, or of a map's chunks, is claimed (``SUBMIT_KEY`` in the node
folder's claims), and once the claim is held the registry (and a task's cache) is read
again.
"""

from __future__ import annotations

import contextlib
import logging
import typing as tp

from ..storage import interrupts
from ..storage.claims import Claim, Claims
from . import callers, executors, registry, store
from .calls import being_computed, refuse_self_call
from .decisions import wait_for_map_jobs
from .node import TASK_KEY

if tp.TYPE_CHECKING:
    from .decisions import NodeRun
    from .executors import Unit

logger = logging.getLogger(__name__)


def _log_settled(run: NodeRun, by_worker: bool = False) -> None:
    """Say why a node is not submitted now (a run waiting on it was silent)."""
    then = (
        "waiting for it (computed here if it ends without a result)"
        if by_worker
        else "following its job(s) instead of submitting"
    )
    logger.info(
        "%s is computed elsewhere since this run started (%s): %s", run.node.uid, run.reason, then
    )


SUBMIT_KEY = "\x00submitting"  # (not a cache key: a task's is "result", a map's items' uids)


@contextlib.contextmanager
def exclusive(
    members: list[tuple[NodeRun, Unit]],
    run_id: str,
    claim_waits: bool = True,
    waiting: bool = False,
) -> tp.Iterator[list[tuple[NodeRun, Unit]]]:
    """Claim the submission of each node among the members (a task, or a map's chunks);
    yield the members still to submit. The others are settled: submitted by another
    process meanwhile (the run waits for those jobs), or computed meanwhile (the run is
    done). Claims are released on exit. ``waiting``: the run waits for what it submits
    (then a claim of a caller of this job, which waits for it in turn, is refused)."""
    held: list[Claim] = []
    runs = {r.node.key: r for r, _ in members if r.node.folder is not None}
    for run in runs.values():  # (a job would wait for this thread, which waits for it)
        refuse_self_call(run.node, (TASK_KEY,) if run.node.kind == "task" else run.todo or ())
    try:
        # (in a global order: two processes claiming overlapping sets cannot deadlock)
        for run in sorted(runs.values(), key=lambda r: str(r.node.folder)):
            _claim(run, held)
        tasks = [r for r in runs.values() if r.node.kind == "task"]
        settled = _settle(tasks, run_id, claim_waits, waiting)
        settled |= _settle_maps([r for r in runs.values() if r.node.kind == "map"], run_id)
        yield [(r, u) for r, u in members if r.node.key not in settled]
    finally:
        with interrupts.deferred():  # (all of them, even under a second Ctrl-C)
            for claim in held:
                claim.release()


def _claim(run: NodeRun, held: list[Claim]) -> None:
    """Take the submission claim of a node into ``held`` (waiting while another process
    holds it)."""
    node = run.node
    assert node.folder is not None
    claims = Claims(node.folder, permissions=node.cache.permissions)
    while True:
        # (held back from the lock on, until it is held: else its file stayed behind)
        with interrupts.deferred(hold=False) as window:
            claim = claims.claim([SUBMIT_KEY], window)
            if claim.mine or claim.reentered:
                held.append(claim)
                return
        claims.wait([SUBMIT_KEY], done=lambda keys: [])  # until released (or its owner died)


def _settle(
    tasks: list[NodeRun], run_id: str, claim_waits: bool = True, waiting: bool = False
) -> set[tp.Any]:
    """Tasks that another process submitted or computed since they were decided (or, with
    ``claim_waits``, a worker computes now: waited for, instead of a job that would wait)."""
    settled: set[tp.Any] = set()
    newer: dict[tp.Any, registry.JobRecord] = {}
    for run in tasks:
        node = run.node
        if run.action in ("compute", "retry") and store.task_state(node, refresh=True) == "done":
            run.handles.append(executors.DoneHandle())
            settled.add(node.key)
            continue
        # (a retry sent without waiting, e.g. a job array: nobody would retry once the claim
        # ends, say of a worker winding down after caching the error; its job waits for it)
        retried_later = run.action == "retry" and not waiting
        if (
            claim_waits
            and run.action in ("compute", "retry")
            and not retried_later
            and being_computed(node)
        ):
            if waiting:  # (by a caller of this job? It waits for this job: never ends)
                callers.refuse_waiting_on_claims(node.uid, node.folder, [TASK_KEY])
            # another worker computes it (e.g. an inline call of another process): a job
            # would only wait inside its allocation, and its end (a time limit) would be
            # taken for this task's failure. Wait here; submit if it ends without a result
            run.resume, run.action = run.action, "wait"
            run.reason = "being computed by another worker (its claim is live)"
            entry = node.cache.entry(TASK_KEY)
            run.seen_outcome = None if entry is None else (entry.file, entry.offset)
            run.handles.append(executors.ClaimHandle(node))
            settled.add(node.key)
            _log_settled(run, by_worker=True)
            continue
        record = registry.latest(node.folder)
        if record is not None and record.run != run_id and record.job_id != run.seen_job:
            newer[node.key] = record
    if not newer:
        return settled
    slurm = [r.job_id for r in newer.values() if r.cluster == "slurm"]
    queued = registry.queued_jobs(slurm) if slurm else set()
    for run in tasks:
        record = newer.get(run.node.key)
        if record is None or not registry.is_active(record, queued):
            continue
        if run.action in ("force", "retry"):
            run.resume = run.action  # (as when such a job is found at decision time)
        run.action = "wait"
        run.reason = registry.as_jobs([record.job_id])
        run.handles.append(executors.recorded_handle(record))
        settled.add(run.node.key)
        _log_settled(run)
    return settled


def _settle_maps(maps: list[NodeRun], run_id: str) -> set[tp.Any]:
    """Maps whose missing items chunk jobs of another process, submitted since they
    were decided, are computing: the run waits for those jobs (then computes what they
    leave missing)."""
    newer: dict[tp.Any, list[registry.JobRecord]] = {}
    for run in maps:
        todo = set(run.todo or ())
        found = [
            r
            for r in registry.read_all(run.node.folder)
            if r.run != run_id and r.job_id not in run.seen_jobs and registry.covers(r, todo)
        ]
        if found:
            newer[run.node.key] = found
    if not newer:
        return set()
    slurm = [r.job_id for records in newer.values() for r in records if r.cluster == "slurm"]
    queued = registry.queued_jobs(slurm) if slurm else set()
    settled: set[tp.Any] = set()
    for run in maps:
        active = [r for r in newer.get(run.node.key, []) if registry.is_active(r, queued)]
        if not active:
            continue
        wait_for_map_jobs(run, active)
        run.handles.extend(executors.recorded_handle(r) for r in active)
        settled.add(run.node.key)
        _log_settled(run)
    return settled
