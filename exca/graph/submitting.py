"""One submission per task across processes: the job registry is read when work is
decided, but a submission (an ``sbatch`` takes ~0.5 s) is recorded only once it returns.
Two processes deciding within that window would both submit; the worker's claims keep
the computation single, yet the second job holds an allocation while it waits. So a
task's submission is claimed (``SUBMIT_KEY`` in the node folder's claims), and once
the claim is held the registry and cache are read again.
"""

from __future__ import annotations

import contextlib
import typing as tp

from ..storage.claims import Claim, Claims
from . import executors, registry, store

if tp.TYPE_CHECKING:
    from .decisions import NodeRun
    from .executors import Unit

SUBMIT_KEY = "#submitting"  # (not a cache key: a task's result is under "result")


@contextlib.contextmanager
def exclusive(
    members: list[tuple[NodeRun, Unit]], run_id: str
) -> tp.Iterator[list[tuple[NodeRun, Unit]]]:
    """Claim the submission of each task member; yield those still to submit. The others
    are settled: submitted by another process meanwhile (the run waits for that job), or
    computed meanwhile (the run is done). Claims are released on exit."""
    held: list[Claim] = []
    tasks = [(r, u) for r, u in members if u.uids is None and r.node.folder is not None]
    try:
        # (in a global order: two processes claiming overlapping sets cannot deadlock)
        for run, _ in sorted(tasks, key=lambda member: str(member[0].node.folder)):
            held.append(_claim(run))
        settled = _settle(tasks, run_id)
        yield [(r, u) for r, u in members if r.node.key not in settled]
    finally:
        for claim in held:
            claim.release()


def _claim(run: NodeRun) -> Claim:
    """The submission claim of a task (waiting while another process holds it)."""
    node = run.node
    assert node.folder is not None
    claims = Claims(node.folder, permissions=node.cache.permissions)
    while True:
        claim = claims.claim([SUBMIT_KEY])
        if claim.mine or claim.reentered:
            return claim
        claims.wait([SUBMIT_KEY], done=lambda keys: [])  # until released (or its owner died)


def _settle(tasks: list[tuple[NodeRun, Unit]], run_id: str) -> set[tp.Any]:
    """Tasks that another process submitted or computed since they were decided."""
    settled: set[tp.Any] = set()
    newer: dict[tp.Any, registry.JobRecord] = {}
    for run, _ in tasks:
        node = run.node
        if run.action in ("compute", "retry") and store.task_state(node, refresh=True) == "done":
            run.handles.append(executors.DoneHandle())
            settled.add(node.key)
            continue
        record = registry.latest(node.folder)
        if record is not None and record.run != run_id and record.job_id != run.seen_job:
            newer[node.key] = record
    if not newer:
        return settled
    slurm = [r.job_id for r in newer.values() if r.cluster == "slurm"]
    queued = registry.queued_jobs(slurm) if slurm else set()
    for run, _ in tasks:
        record = newer.get(run.node.key)
        if record is None or not registry.is_active(record, queued):
            continue
        if run.action in ("force", "retry"):
            run.resume = run.action  # (as when such a job is found at decision time)
        run.action = "wait"
        run.reason = f"running as job {record.job_id}"
        run.handles.append(executors.recorded_handle(record))
        settled.add(run.node.key)
    return settled
