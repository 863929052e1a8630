"""Detached runs: submit every missing node of a DAG at once and return.

Each array depends (``afterany``) on the jobs of its upstream nodes: an array has one
dependency list for all its elements, so ``afterok`` would let one failed element cancel
unrelated work; instead each element checks at start that its own upstream results exist
(else it records "upstream failed" and exits). An array whose element i needs element i
of one upstream array only (chains) waits per element: ``aftercorr`` (element i done), or
else ``afterany`` (that array ended: element i's upstream failed). Dependencies on jobs
that already ended are dropped; a submission that fails half way cancels what it had
submitted. Workers write their results into the cache; job ids go to the job registry,
so a later plan shows them running and a later run waits for them instead of
resubmitting.
"""

from __future__ import annotations

import logging
import typing as tp

from . import executors, registry, store, submitting
from .node import Node
from .progress import Progress
from .worker import Action, Unit

logger = logging.getLogger("exca")

if tp.TYPE_CHECKING:
    from .decisions import Key, NodeRun
    from .scheduler import Scheduler


def submit_all(scheduler: Scheduler) -> None:
    """Submit every node that needs work and return without waiting. Work that runs in
    this process (cluster=None, pools) is done now, when its upstream is ready, after
    every Slurm node that does not need it is submitted."""
    from .scheduler import follow_own_job

    # jobs queued or running, waited for (not submitted again): no level of their own,
    # as in the plan (what is below one goes with the other work, after that job)
    waited: set[Key] = set()

    def refuse(work: list[NodeRun]) -> None:
        waited.update(
            r.node.key
            for r in work
            if r.action == "wait" and not follow_own_job(r, off_slurm=False)
        )
        # (before anything is submitted, or changed on disk: see Scheduler.start)
        _check_nothing_here_waits_for_jobs(scheduler, work)

    # (work whose upstream fails was decided "fail")
    work = scheduler.start(detached=True, refuse=refuse)
    pools = executors.Pools()
    progress = Progress(0, desc="exca", requested=False)
    submitted: list[tuple[NodeRun, executors.Handle]] = []
    failed = False
    try:
        remaining = [r.node.key for r in work]  # (topological)
        while remaining:
            # every Slurm node that needs no work still to be done here goes out now, by
            # level (Slurm dependencies between them): an inline node of another branch
            # held its work back until it had run (and a Ctrl-C meanwhile cancelled it)
            behind = _behind_work_here(scheduler, remaining, waited)
            now = [k for k in remaining if k not in behind]
            for wave in _waves(scheduler.graph.upstream, now, waited):
                _submit_wave(scheduler, wave, waited, submitted)
            # then the work done here that is ready: together (independent of each other)
            upstream = scheduler.graph.upstream
            here = [k for k in remaining if k in behind and not behind.intersection(upstream[k])]
            pending = {key: scheduler.runs[key] for key in here}
            scheduler._skip_blocked(pending)  # (below work that failed here: not run)
            _run_here(scheduler, list(pending.values()), pools, progress)
            done = {*now, *here}
            remaining = [k for k in remaining if k not in done]
    except BaseException as error:
        failed = True
        for run, handle in submitted:  # never leave half a submission behind
            handle.cancel()
            registry.forget(run.node.folder, handle.job_id)
        if submitted:  # (the jobs it printed as submitted: say they are gone)
            ids = sorted({handle.job_id for _, handle in submitted})
            shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
            logger.warning(
                "The detached run stopped (%s): the job(s) it had submitted are cancelled: %s",
                type(error).__name__,
                shown,
            )
        raise
    finally:
        # (Ctrl-C, an error here: their workers stop at their next item, not writing
        # after the error reached the user)
        pools.shutdown(cancel=failed)
        scheduler.graph.share_force_states()
    # what failed here (or was decided to fail: a cached error), raised as a waiting run
    # would, once everything else is submitted (the submitted jobs stay)
    scheduler._raise_failures()


def _behind_work_here(scheduler: Scheduler, keys: list[Key], waited: set[Key]) -> set[Key]:
    """The nodes among ``keys`` (topological) that are work done here, or below such work
    (Slurm work then needs its result: submitted once it is done)."""
    behind: set[Key] = set()
    for key in keys:
        run = scheduler.runs[key]
        here = key not in waited and not executors.on_slurm(run.node)
        if here or any(u in behind for u in scheduler.graph.upstream[key]):
            behind.add(key)
    return behind


def _submit_wave(
    scheduler: Scheduler,
    wave: list[Key],
    waited: set[Key],
    submitted: list[tuple[NodeRun, executors.Handle]],
) -> None:
    """Submit the Slurm work of a level, one array per group (into ``submitted``)."""
    scheduler.graph.share_force_states()  # (before instances are pickled into jobs)
    groups: dict[str, list[tuple[NodeRun, Unit]]] = {}
    pending = {key: scheduler.runs[key] for key in wave}
    scheduler._skip_blocked(pending)  # (below work that failed here: not run)
    for run in pending.values():
        if run.node.key in waited:
            continue
        for unit in _units(scheduler, run):
            groups.setdefault(run.array_key, []).append((run, unit))
    for members in groups.values():
        submitted.extend(_submit(scheduler, members, submitted))


def _check_nothing_here_waits_for_jobs(scheduler: Scheduler, work: list[NodeRun]) -> None:
    """ValueError for work done in this process (not on Slurm) below a node that goes to
    Slurm or whose job is waited for: this process would have to wait for that job."""
    for run in work:
        if executors.on_slurm(run.node):  # (checked as it is submitted: see _dependencies)
            continue
        ups = [scheduler.runs[key] for key in scheduler.graph.upstream[run.node.key]]
        refused = refusal(run, ups)
        if refused is not None:
            raise ValueError(refused)


def refusal(run: NodeRun, ups: tp.Sequence[NodeRun]) -> str | None:
    """Why a detached run refuses to submit a node's work (the words of its ValueError;
    None: it does not), given the runs of its upstream nodes as decided: work done in this
    process below work that goes to Slurm or a job waited for (refused before anything is
    submitted); Slurm work below a job that Slurm cannot wait for (a local job, or another
    process computing it: refused when its level is submitted). A plan of ``wait=False``
    lists these."""
    node = run.node
    if not executors.on_slurm(node):
        if run.action == "wait":
            return None
        for up in ups:
            if up.needs_work and (executors.on_slurm(up.node) or up.action == "wait"):
                where = "goes to Slurm" if up.action != "wait" else f"is not done ({up.reason})"
                return _cannot_wait(node, f"its upstream {up.node.uid} {where}")
        return None
    for up in ups:
        if up.action == "wait" and not _slurm_jobs_only(up):
            return _not_done(node, up)
    return None


def _slurm_jobs_only(run: NodeRun) -> bool:
    """Whether what a run waits for is Slurm jobs only (what a Slurm dependency can name)."""
    jobs = [
        h for h in run.handles if isinstance(h, executors.SubmititHandle) and h.cluster == "slurm"
    ]
    return bool(run.handles) and len(jobs) == len(run.handles)


def _cannot_wait(node: Node, why: str) -> str:
    return (
        f"Cannot submit {node.uid} without waiting: {why}, and only Slurm jobs can be "
        f"waited for by a detached run: work on {node.execution.describe()} cannot start "
        "after them (give it cluster='slurm', or use wait=True)"
    )


def _not_done(node: Node, up: NodeRun) -> str:
    # (a local job, or another process computing it: nothing Slurm can wait for)
    where = up.reason or "elsewhere"
    return (
        f"Cannot submit {node.uid} without waiting: its upstream {up.node.uid} is not done "
        f"({where}), and only Slurm jobs can be waited for by a detached run (use wait=True)"
    )


def _run_here(
    scheduler: Scheduler, runs: list[NodeRun], pools: executors.Pools, progress: Progress
) -> None:
    """Nodes of one wave that do not go to Slurm: started together, waited for (none of
    them waits for a job: see _check_nothing_here_waits_for_jobs)."""
    running: dict[Key, NodeRun] = {}
    scheduler.launch(runs, running, pools, progress)
    while running:
        scheduler.wait_some(running, progress)


def _submit(
    scheduler: Scheduler,
    members: list[tuple[NodeRun, Unit]],
    submitted: list[tuple[NodeRun, executors.Handle]],
) -> list[tuple[NodeRun, executors.Handle]]:
    deps = sorted({d for run, _ in members for d in _dependencies(scheduler, run.node.key)})
    first = members[0][0].node
    logs = executors.format_logs(first.execution.logs or "{folder}/logs/{user}/%j", first.folder)
    out: list[tuple[NodeRun, executors.Handle]] = []
    # (claim_waits=False: a task another worker computes gets its job, which waits for
    # that claim; the jobs below it can then start after that job)
    with submitting.exclusive(members, scheduler.run_id, claim_waits=False) as members:
        if not members:
            return out  # (submitted or computed by another process meanwhile)
        units = [u for _, u in members]
        outdated = store.outdated_outcomes(members)
        # forced map items: their old outputs go now (nothing waits here to tell a job that
        # dies before computing from one that recomputed them; once the jobs are out, one
        # may have written its new outputs already)
        for run, unit in members:
            if unit.action == "force" and unit.uids:
                with run.node.cache.write():
                    run.node.cache.delete_many(unit.uids)
        code = getattr(first.execution.workdir, "folder", None)
        # (a kill between sbatch and the records: the next run adopts the jobs)
        marked = submitting.mark(members, logs, scheduler.run_id, code=code)
        try:
            handles = executors.submit_array(
                units,
                first.execution,
                logs,
                len(members),
                dependencies=deps,
                permissions=first.cache.permissions,
                token=None if marked is None else marked[0],
                corresponding=_one_to_one(scheduler, members, submitted),
            )
        except Exception as error:  # (sbatch refused it: no job to adopt later)
            submitting.unmark_if_unsent(marked, error)
            raise
        for (run, unit), handle in zip(members, handles):
            run.handles.append(handle)
            run.state = "running"
            if run.action == "force" and run.node.pending_force:
                _force_applied(run.node, unit, handle.job_id)
            scheduler.record(run.node, unit, handle, code=code)
            out.append((run, handle))
        submitting.unmark(marked)
        # a forced task no longer reads as its old result (after the records: see launch)
        store.drop_outcomes(outdated)
    return out


def _one_to_one(
    scheduler: Scheduler,
    members: list[tuple[NodeRun, Unit]],
    submitted: list[tuple[NodeRun, executors.Handle]],
) -> bool:
    """Whether element i of the array of ``members`` needs at most element i of one array
    this run submitted, of as many elements (chains of nodes, level by level): then it may
    start once that element is done, not once the whole array is."""
    if len(members) < 2:
        return False
    bases: set[str] = set()
    needs: list[set[str]] = []
    for run, _ in members:
        ids = set(_dependencies(scheduler, run.node.key))
        bases.update(i.split("_")[0] for i in ids)
        needs.append(ids)
    if len(bases) != 1:
        return False
    (base,) = bases
    size = sum(1 for _, handle in submitted if handle.job_id.split("_")[0] == base)
    return size == len(members) and all(ids <= {f"{base}_{i}"} for i, ids in enumerate(needs))


def _force_applied(node: Node, unit: Unit, job_id: str) -> None:
    """This instance's mode=force is carried out by a submitted job: a later run of the
    same instance follows that job instead of forcing again (as a waiting run would)."""
    node.force_state["done"] = True
    if node.kind == "task":  # (what an earlier job writes meanwhile is not its result)
        node.force_state["job"] = job_id
    if unit.uids is not None:
        node.force_state.setdefault("uids", set()).update(unit.uids)
    elif isinstance(node.items, Node):  # (split jobs: every item that node yields)
        node.force_state.setdefault("sources", set()).add(node.items.key)


def _waves(upstream: dict[Key, list[Key]], order: list[Key], waited: set[Key]) -> list[list[Key]]:
    """Work grouped by depth (order must be topological; ``waited``: nodes of jobs already
    submitted, which add no depth)."""
    level: dict[Key, int] = {}
    for key in order:
        ups = [level[u] + (u not in waited) for u in upstream[key] if u in level]
        level[key] = max(ups, default=0)
    waves: dict[int, list[Key]] = {}
    for key in order:
        waves.setdefault(level[key], []).append(key)
    return [waves[i] for i in sorted(waves)]


def _dependencies(scheduler: Scheduler, key: Key) -> list[str]:
    """Job ids a node must start after: its upstream nodes' queued or running jobs, and
    its own earlier job when it is computed again."""
    deps: list[str] = list(scheduler.runs[key].after)
    for up in scheduler.graph.upstream[key]:
        run = scheduler.runs[up]
        if run.state == "running" or run.action == "wait":
            if not _slurm_jobs_only(run):
                raise ValueError(_not_done(scheduler.runs[key].node, run))
            deps.extend(h.job_id for h in run.handles)
    return deps


def _units(scheduler: Scheduler, run: NodeRun) -> list[Unit]:
    node = run.node
    if node.kind == "map" and run.uids is None:  # items known at run time: split then
        count = 1 if run.check_only else executors.max_jobs(node.execution) or 1
        forced_by = scheduler.run_id if run.action == "force" else ""
        action = tp.cast(Action, run.action)
        return [Unit(node, action, split=(i, count), forced_by=forced_by) for i in range(count)]
    return scheduler.units(run)
