"""The public functions of the graph layer: plan, run, and what a node gives back."""

from __future__ import annotations

import typing as tp

from ..storage.cachedict import keeping_files
from ..storage.dumping import PAYLOAD_ERRORS
from . import calls, store
from .decisions import check_node, collect
from .errors import JobFailedError, NodeFailures, as_bool
from .jobs import Job
from .node import TASK_KEY, Node, Out, reading_only
from .planning import Plan
from .scheduler import Scheduler
from .store import first_item_error

if tp.TYPE_CHECKING:
    import networkx as nx


def plan(*targets: Node, wait: bool = True) -> Plan:
    """Dry run: what ``run(*targets, wait=wait)`` would do for every node, and why, and
    what it would refuse (reads only)."""
    return Plan(list(targets), wait=wait)


def run(*targets: Node, wait: bool = True, progress: bool | None = None) -> Scheduler:
    """Compute what the targets need; with ``wait=False``, submit every missing Slurm node
    at once (Slurm dependencies between levels) and return without waiting for them (work
    not on Slurm, inline, in pools or local jobs, is done before returning)."""
    flag = as_bool(wait)
    if flag is None:  # (wait="no" is true: it waited)
        raise TypeError(f"run(wait={wait!r}): give True or False")
    wait = flag
    if progress is not None:
        flag = as_bool(progress)
        if flag is None:  # (progress="no" is true)
            raise TypeError(
                f"run(progress={progress!r}): give True, False or None (None: as the "
                "EXCA_PROGRESS variable or the terminal says)"
            )
        progress = flag
    scheduler = Scheduler(list(targets), progress=progress)
    if wait:
        try:
            scheduler.run()
        except Exception:
            # (a refusal before anything ran, e.g. a node that cannot be submitted, is
            # raised as it is)
            items = _item_errors(scheduler, targets) if scheduler.failures() else {}
            if not items:
                raise
            # (other nodes failed too: every failure is named)
            raise NodeFailures({**scheduler.failures(), **items}) from None
        items = _item_errors(scheduler, targets)
        if len(items) == 1:
            raise next(iter(items.values()))
        if items:
            raise NodeFailures(items)
    else:
        scheduler.run_detached()
    return scheduler


def _item_errors(scheduler: Scheduler, targets: tp.Sequence[Node]) -> dict[str, BaseException]:
    """Target maps whose items hold errors (computed now or cached) cannot be read: the
    first item's error of each (raised, as iterating the map's call does)."""
    failures: dict[str, BaseException] = {}
    for node in dict.fromkeys(targets):
        run = scheduler.runs.get(node.key)
        if node.kind != "map" or run is None or run.state != "done":
            continue
        if run.action == "reuse" and not run.item_errors:  # (counted when decided)
            continue
        uids = run.uids if run.uids is not None else store.map_item_uids(node)
        error = first_item_error(node, uids)
        if error is not None:
            failures[node.uid] = error
    return failures


def graph(*targets: Node) -> nx.DiGraph:
    """The DAG of the targets (nodes keyed by uid, attribute ``node``); frozen. A uid
    found under two cache roots keys its nodes by ``<root>/<uid>`` (they are two nodes;
    one without a folder keeps its uid)."""
    import networkx as nx  # (lazily: plan and run do not need it)

    nodes = collect(list(targets))
    roots_of: dict[str, set[str]] = {}
    for node in nodes.values():
        roots_of.setdefault(node.uid, set()).add(str(node.root))

    def name(node: Node) -> str:  # (a node without a folder keeps its uid)
        if len(roots_of[node.uid]) == 1 or node.root is None:
            return node.uid
        return f"{node.root}/{node.uid}"

    dag = nx.DiGraph()
    for node in nodes.values():
        dag.add_node(name(node), node=node)
    for node in nodes.values():
        for up in node.upstream:
            dag.add_edge(name(up), name(node))
    return nx.freeze(dag)


def result(node: Node[Out]) -> Out:
    """The output of a node (computing what is missing): a task's result, or a map's
    outputs in item order."""
    check_node(node)
    with reading_only([node]):  # (a read-only node's upstream read too: frees nothing)
        return _result(node)


def _result(node: Node) -> tp.Any:
    if node.kind == "task":
        return calls.task_result(node)
    calls.run_nodes([node])
    try:
        return store.map_outputs(node)
    except PAYLOAD_ERRORS as error:  # (a payload removed or damaged outside exca?)
        uids = store.map_item_uids(node)
        store.drop_damaged_or_raise(error, node.cache, uids, node.uid, node.mode == "retry")
    calls.run_nodes([node])
    return store.map_outputs(node)


def status(node: Node) -> str:
    """``completed`` / ``failed`` / ``running`` / ``not submitted``. A map is completed
    when every item is cached without error, failed with an item error (or items a job
    left missing: it died; not when its method raised KeyboardInterrupt, which the next
    call computes again, as for a task), running while a chunk job is queued or running or another
    thread or process computes its missing items without a job, else not submitted (its
    missing items computed by nobody, or removed since their job wrote them). Reads
    only: it frees no file of an ended writer (reclaim.py), as a plan does not."""
    check_node(node)
    with keeping_files():
        return _status(node)


def _status(node: Node) -> str:
    if node.kind == "task":
        return calls.task_status(node)
    from . import registry

    try:
        uids: list[str] | None = store.map_item_uids(node)
    except Exception:  # (items made by an upstream node not computed yet)
        uids = None

    wanted = None if uids is None else set(uids)
    records = [r for r in registry.read_all(node.folder) if _computes(node, r, wanted)]
    slurm = [r.job_id for r in records if r.cluster == "slurm"]
    queued = registry.queued_jobs(slurm) if slurm else set()
    if any(registry.still_running(r, queued) for r in records):
        return "running"
    if uids is None:
        return "not submitted"
    node.cache.refresh()
    if node.cache.count_errors(uids):
        return "failed"
    missing = node.cache.missing(uids)
    if not missing:
        if node.cache.damaged(uids):  # (files removed outside exca; or replaced meanwhile)
            node.cache.refresh()
            if node.cache.damaged(uids):
                return "failed"
            return status(node)
        return "completed"
    if calls.keys_being_computed(node, missing):  # (by a worker without a job)
        return "running"
    # items a job was sent and did not write: it failed (see _failed_jobs)
    failed = next(_failed_jobs(node, records, missing), None) is not None
    return "failed" if failed else "not submitted"


def _computes(node: Node, record: tp.Any, keys: set[str] | None) -> bool:
    """Whether a job of a map's folder was sent some of ``keys`` (the folder's jobs
    compute the items of every call of its config: only those count; items from an
    upstream node: noted by the job when it started; a record of an older version lists
    none)."""
    from . import registry

    if keys is None or node.folder is None:
        return True
    sent = registry.items_of(node.folder, record)
    return sent is None or not keys.isdisjoint(sent)


def _failed_jobs(node: Node, records: list[tp.Any], missing: list[str]) -> tp.Iterator[tp.Any]:
    """The jobs that left some of a map's ``missing`` items: sent them and did not write
    them (lazily: each may read a log). A job that ran to its end wrote them, removed
    since (a clear() while it ran): missing, as never computed; a job whose method raised
    KeyboardInterrupt, or that met a full disk storing them, is no failure (the next call
    computes them: see errors.INTERRUPT_HINT and STORAGE_HINT), as for a task
    (calls.task_status); nor is a debug job, run by its submitting process as with
    cluster None (ended so, that process was interrupted: nothing is cached)."""
    from . import registry
    from .executors import ended_not_cached

    left = set(missing)
    for record in records:
        if (
            _computes(node, record, left)
            and record.cluster != "debug"
            and not registry.wrote_outcome(record)
            and not ended_not_cached(record)
        ):
            yield record


def failure(node: Node) -> BaseException | None:
    """Why ``status(node)`` is "failed" (None when it is not): the error a call in mode
    cached raises, without computing or submitting anything (a task's cached error, or how
    its job ended: cancelled, killed, timed out; a map's first item error, or its items a
    job ended without writing)."""
    check_node(node)
    with keeping_files():
        if node.kind == "task":
            return calls.task_failure(node)
        if _status(node) != "failed":
            return None
        return _map_failure(node)


def _map_failure(node: Node) -> BaseException:
    from . import registry
    from .errors import items_not_computed, retry_hint
    from .executors import recorded_handle

    uids = store.map_item_uids(node)
    cached = first_item_error(node, uids)
    if cached is not None:
        return cached
    damaged = node.cache.damaged(uids)
    if damaged:
        try:
            node.cache[damaged[0]]
        except Exception as error:
            return error
    missing = node.cache.missing(uids)
    what = items_not_computed(missing, node.uid)
    # (the last of the jobs status() found failed: not a later one, interrupted, say)
    records = list(_failed_jobs(node, registry.read_all(node.folder), missing))
    if not records:
        return JobFailedError(f"{what}: their job ended without writing them", missing)
    how = retry_hint(recorded_handle(records[-1]).ended_how(), items=True)
    return JobFailedError(f"{what}: {how}", missing)


def job(node: Node[Out]) -> Job[Out]:
    """A task's job, or the jobs of a map's missing items (submitted now, not waited for)."""
    check_node(node)
    found: Job[tp.Any] = calls.task_job(node) if node.kind == "task" else calls.map_job(node)
    return found


def clear(node: Node) -> None:
    """Remove a task node's result, or a map node's outputs for its items (the folder's
    yaml files are kept), and the records of its finished jobs: the next call computes
    them again (a record of a job that ended without a result would say it failed). A job
    still running is left alone."""
    from . import registry

    check_node(node)
    if node.adopt_legacy is not None:  # (a cache under its legacy name: what is cleared)
        node.adopt_legacy()
    node.cache.refresh()  # (the result may have been rewritten since this view read it)
    if node.kind == "map":
        try:
            uids = store.map_item_uids(node)
        except Exception:  # (items made by an upstream node not computed: none cached)
            uids = []
        with node.cache.write():
            node.cache.delete_many([u for u in dict.fromkeys(uids) if u in node.cache])
    elif TASK_KEY in node.cache:
        del node.cache[TASK_KEY]
    for record in registry.read_all(node.folder):
        if not registry.is_active(record):
            registry.forget(node.folder, record.job_id)
