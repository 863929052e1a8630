"""One submission per node across processes: the job registry is read when work is
decided, but a submission (an ``sbatch`` takes ~0.5 s) is recorded only once it returns.
Two processes deciding within that window would both submit; the worker's claims keep
the computation single, yet the second job holds an allocation while it waits. So the
submission of a task, or of a map's chunks, is claimed (``SUBMIT_KEY`` in the node
folder's claims), and once the claim is held the registry (and a task's cache) is read
again.

A submitter killed between ``sbatch`` and its records left jobs nothing follows: a marker
written before ``sbatch`` names the submission (see ``registry.Marker``), and the next
submission of its nodes, under the claim, adopts those jobs (``adopt``) instead of
submitting them again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import typing as tp
from pathlib import Path

from ..storage import interrupts, process
from ..storage.claims import Claim, Claims
from . import callers, executors, registry, slurmhold, store
from .calls import being_computed, refuse_self_call, removal_holder
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
    if run.reason.startswith(REMOVED_NOW):  # (a cleaning's hold: nothing computes it)
        logger.info("%s: %s; waiting for that to end, then computed here", run.node.uid, run.reason)
        return
    logger.info(
        "%s is computed elsewhere since this run started (%s): %s", run.node.uid, run.reason, then
    )


REMOVED_NOW = "its folder is being removed or renamed"  # (a run's reason, see exclusive)


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
    # (a job would wait for this thread, which waits for it; not in a thread submitting for
    # a busy one, callers.acting_for: a claim that one took since the node was looked at is
    # its inline work's, given back before it waits for jobs. A task is then waited for,
    # see _settle; a map's job waits for its items)
    for run in runs.values() if not callers.acting() else ():
        refuse_self_call(run.node, (TASK_KEY,) if run.node.kind == "task" else run.todo or ())
    try:
        # (in a global order: two processes claiming overlapping sets cannot deadlock)
        for run in sorted(runs.values(), key=lambda r: str(r.node.folder)):
            _claim(run, held)
        adopted = adopt(list(runs.values()))  # (jobs of a killed submitter: now recorded)
        tasks = [r for r in runs.values() if r.node.kind == "task"]
        settled = _settle(tasks, run_id, claim_waits, waiting, adopted)
        maps = [r for r in runs.values() if r.node.kind == "map"]
        settled |= _settle_maps(maps, run_id, adopted)
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
    tasks: list[NodeRun],
    run_id: str,
    claim_waits: bool = True,
    waiting: bool = False,
    adopted: tp.AbstractSet[str] = frozenset(),
) -> set[tp.Any]:
    """Tasks that another process submitted or computed since they were decided (or, with
    ``claim_waits``, a worker computes now: waited for, instead of a job that would wait).
    ``adopted``: jobs squeue listed an instant ago (followed even if they ended since)."""
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
            remover = removal_holder(node)  # (a cleaning's hold: it computes nothing)
            run.reason = (
                "being computed by another worker (its claim is live)"
                if remover is None
                else f"{REMOVED_NOW} by {remover}"
            )
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
    slurm = [r.job_id for r in newer.values() if r.cluster == "slurm" and r.job_id not in adopted]
    queued = (registry.queued_jobs(slurm) if slurm else set()) | set(adopted)
    for run in tasks:
        record = newer.get(run.node.key)
        if record is None or not registry.is_active(record, queued):
            continue
        if run.action in ("force", "retry"):
            run.resume = run.action  # (as when such a job is found at decision time)
        elif run.node.mode == "retry":  # (computed again if it ends without a result)
            run.retry_if_lost = True
        run.action = "wait"
        run.reason = registry.as_jobs([record.job_id])
        run.handles.append(executors.recorded_handle(record))
        settled.add(run.node.key)
        _log_settled(run)
    return settled


def _settle_maps(
    maps: list[NodeRun], run_id: str, adopted: tp.AbstractSet[str] = frozenset()
) -> set[tp.Any]:
    """Maps whose missing items chunk jobs of another process, submitted since they
    were decided, are computing: the run waits for those jobs (then computes what they
    leave missing). ``adopted``: as for ``_settle``."""
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
    slurm = [
        r.job_id
        for records in newer.values()
        for r in records
        if r.cluster == "slurm" and r.job_id not in adopted
    ]
    queued = (registry.queued_jobs(slurm) if slurm else set()) | set(adopted)
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


Marked = tuple[str, list[Path]]  # a submission's token, and the node folders it marked


def mark(
    members: list[tuple[NodeRun, Unit]], logs: str, run_id: str, code: tp.Any = None
) -> Marked | None:
    """Note the Slurm submission of these members (in the order they are submitted) in
    their node folders, before ``sbatch``: its token goes to submit_array, ``unmark``
    ends it once the jobs are recorded (None: not a Slurm submission)."""
    execution = members[0][0].node.execution
    if executors.resolve_cluster(execution.cluster) != "slurm":
        return None  # (local and debug jobs die with their submitter)
    token = os.urandom(8).hex()
    extra = dict(execution.params).get("slurm_additional_parameters")
    held = slurmhold.exca_holds("slurm", extra)  # (as submit_array sends them)
    # (the name of the uid sbatch submits as: getpass's comes from $LOGNAME/$USER first,
    # which `su` or a container may leave naming someone else, and squeue listed none of
    # the jobs)
    try:
        import pwd

        user = pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):  # (no name for this uid: every user's jobs are looked at)
        user = ""
    units: dict[Path, list[tuple[int, list[str] | None]]] = {}
    nodes = {}
    for position, (run, unit) in enumerate(members):
        if run.node.folder is not None:
            units.setdefault(run.node.folder, []).append((position, unit.uids))
            nodes[run.node.folder] = run.node
    marked: list[Path] = []
    for folder, own in units.items():
        marker = registry.Marker(
            token=token,
            logs=logs,
            submitted=time.time(),
            run=run_id,
            user=user,
            host=process.hostname(),
            pid=os.getpid(),
            folder=os.path.abspath(folder),
            units=own,
            code=None if code is None else str(code),
            held=held,
        )
        try:
            registry.mark(folder, marker, permissions=nodes[folder].cache.permissions)
            marked.append(folder)
        except OSError as error:  # (as a record that cannot be written: said, not fatal)
            logger.warning("Could not note the submission of %s: %s", nodes[folder].uid, error)
    return token, marked


def unmark(marked: Marked | None) -> None:
    """End a submission noted by ``mark`` (its jobs are recorded)."""
    if marked is not None:
        token, folders = marked
        for folder in folders:
            registry.unmark(folder, token)


def unmark_if_unsent(marked: Marked | None, error: BaseException) -> None:
    """End a submission noted by ``mark`` that failed with ``error`` if no job of it went
    out (sbatch refused it: nothing for a later run to adopt; see executors.sent_nothing)."""
    if executors.sent_nothing(error):
        unmark(marked)


def adopt(runs: list[NodeRun]) -> set[str]:
    """Record the jobs still queued of submissions whose submitter was killed before
    recording them (their marker is in the node folders of these runs, whose submission
    claims are held), so that the run follows them instead of submitting again: the ids
    of those jobs. The markers go (a submission none of whose jobs is queued was cut
    before sbatch, or its jobs ended: its nodes are submitted as decided)."""
    found: dict[Path, tuple[NodeRun, list[registry.Marker]]] = {}
    for run in runs:
        folder = run.node.folder
        if folder is None or folder in found:
            continue
        here = os.path.abspath(folder)
        markers = []
        for marker in registry.markers(folder):  # (one listing: the node is to be submitted)
            if marker.folder == here or registry.same_folder(marker.folder, here):
                markers.append(marker)
            else:  # (copied with the cache: its jobs compute into the original folder)
                registry.unmark(folder, marker.token)
        if markers:
            found[folder] = (run, markers)
    if not found:
        return set()
    users = sorted({m.user for _, markers in found.values() for m in markers})
    queued = registry.marked_jobs(users)
    if queued is None:  # (its markers stay: looked up again at the next submission)
        logger.warning(
            "An earlier submission of %s was interrupted before its job(s) were recorded, "
            "and squeue does not answer: its jobs, if any, are not followed (squeue -o "
            "'%%i %%k' lists them with the comment exca:<token>, tokens %s)",
            ", ".join(run.node.uid for run, _ in found.values()),
            ", ".join(sorted({m.token for _, markers in found.values() for m in markers})),
        )
        return set()
    adopted: dict[str, str] = {}  # job id -> node uid
    unusable: dict[str, str] = {}
    submitters: set[str] = set()
    unreleased: set[str] = set()  # (held by exca until their folders were made)
    for folder, (run, markers) in found.items():
        for marker in markers:
            jobs = queued.get(marker.token, {})
            fates = [
                (job_id, _adopt_job(run, marker, job_id, keys))
                for position, keys in marker.units
                if (job_id := jobs.get(position)) is not None
            ]
            for job_id, fate in fates:
                if fate == "followed":
                    adopted[job_id] = run.node.uid
                    submitters.add(f"pid {marker.pid} on {marker.host}")
                    if marker.held and registry.held(job_id) == slurmhold.HELD_BY_SBATCH:
                        unreleased.add(job_id)
                elif fate == "cancelled":
                    unusable[job_id] = run.node.uid
            if all(fate != "unrecorded" for _, fate in fates):  # (else kept: said, retried)
                registry.unmark(folder, marker.token)
    if unusable:
        logger.warning(
            "Cancelled %s, submitted by a process killed before exca recorded them: they "
            "lack what they run (submitit had not stored it yet); submitting again: %s",
            _jobs_of(unusable),
            ", ".join(sorted(set(unusable.values()))[:5]),
        )
    if adopted:
        uids = sorted(set(adopted.values()))
        logger.warning(
            "Following %s instead of submitting again: queued, submitted by a process "
            "(%s) killed before exca recorded them, for %s",
            _jobs_of(adopted),
            ", ".join(sorted(submitters)),
            ", ".join(uids[:5]) + (f" and {len(uids) - 5} more" if len(uids) > 5 else ""),
        )
    if unreleased:
        _release_adopted(unreleased)
    return set(adopted)


def _release_adopted(job_ids: set[str]) -> None:
    """Release the jobs of a killed submitter that exca held until their folders were
    made (they exist: the jobs' pickles are there), and say so. Each by its own id:
    another element of their array may lack its pickle (it is adopted, or cancelled, by
    the run of its own config)."""
    try:
        slurmhold.release(sorted(job_ids), whole_arrays=False)
    except slurmhold.NotReleased as error:  # (the wait says they are held, and how to start them)
        logger.warning("%s; their submitter was killed before it released them", error)
        return
    registry.released(job_ids)  # (a plan, or the run's reasons, no longer say them held)
    logger.warning(
        "Released %s: exca held them until their log folders were made, and their "
        "submitter was killed before it released them",
        _jobs_of(dict.fromkeys(job_ids, "")),
    )


def _jobs_of(jobs: tp.Mapping[str, str]) -> str:
    ids = sorted(jobs, key=lambda j: [int(p) for p in j.split("_") if p.isdigit()])
    shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
    return f"job{'s' if len(ids) > 1 else ''} {shown}"


def _adopt_job(
    run: NodeRun, marker: registry.Marker, job_id: str, keys: list[str] | None
) -> tp.Literal["followed", "cancelled", "unrecorded"]:
    """Record a queued job of an interrupted submission in its node folder, to be
    followed; cancelled when it cannot run (its submitter was killed before submitit
    stored what the job runs); "unrecorded" when its record cannot be written (said)."""
    import submitit

    node = run.node
    assert node.folder is not None
    job: tp.Any = submitit.SlurmJob(folder=marker.logs, job_id=job_id)
    if not job.paths.submitted_pickle.exists():
        # (it would wait for it, then fail: cancelled, the node is submitted again)
        with contextlib.suppress(Exception):
            job.cancel(check=False)
        return "cancelled"
    record = registry.JobRecord(
        job_id=job_id,
        cluster="slurm",
        logs=str(job.paths.folder),
        submitted=marker.submitted,
        run=marker.run,
        keys=keys,
        host=marker.host,
        pid=marker.pid,
        folder=marker.folder,
    )
    if not registry.recorded(node.folder, job_id):  # (killed between records and unmark)
        try:
            registry.write(
                node.folder, record, link=keys is None, permissions=node.cache.permissions
            )
            if marker.code is not None and keys is None:
                registry.link(node.folder, "code", registry.link_target(node.folder, marker.code))
        except OSError as error:
            logger.warning("Could not record job %s in %s: %s", job_id, node.folder, error)
            return "unrecorded"
    return "followed"
