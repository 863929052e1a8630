"""Entry points used by decorated calls: a cache hit returns at once (no claim, no
networkx, no submitit); anything else goes through the scheduler."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import typing as tp

from ..storage.cachederror import CachedError
from ..storage.cachedict import CacheDict, keeping_files
from ..storage.dumping import PAYLOAD_ERRORS, is_damaged_payload
from . import callers, codeprint, registry, store
from .errors import JobFailedError, self_call_error
from .jobs import Job, MapJob
from .node import SUBMITIT_CLUSTERS, TASK_KEY, Node, reading_only, restoring_files

logger = logging.getLogger("exca")
MISSING: tp.Any = object()
READ_ATTEMPTS = 5  # computations of a task whose result others keep removing
REUSING_MODES = ("cached", "read-only")  # modes under which a cached map item is used as is


def reuse(cache: CacheDict[tp.Any], mode: str, where: str) -> tp.Any:
    """The cached result of a task if it can be reused as is (else ``MISSING``): the fast
    path of a call, one index check, before any node is built."""
    if mode == "force":
        return MISSING
    # incremental read: sees a result another process cleared or wrote
    entry = cache.entry_type(TASK_KEY, refresh=True)
    if entry is None:
        return MISSING
    try:
        value = store.cached_outcome(cache, MISSING)  # (removed since the check: MISSING)
    except PAYLOAD_ERRORS as error:
        if not is_damaged_payload(error):
            raise  # (e.g. raised by the value's own unpickling code)
        if mode != "retry":
            raise  # (saying what to do: see store.read_outcome)
        # (its payload is gone or damaged: retry computes it again, as a failure)
        logger.warning(
            "The cached result of %s cannot be read (%s: %s): computed again (mode=retry)",
            where,
            type(error).__name__,
            error,
        )
        with contextlib.suppress(KeyError):
            del cache[TASK_KEY]
        return MISSING
    if type(value) is CachedError:  # (the value, not the entry type: replaced meanwhile?)
        if mode == "retry" or store.cache_upstream_failed(cache):
            return MISSING
        raise value.to_exception(where)
    return value


def check_code(cache: CacheDict[tp.Any], func: tp.Callable[..., tp.Any], where: str) -> None:
    """Warn when a reused result of a ``__main__`` method was computed by other code."""
    entry = cache.entry(TASK_KEY)
    if entry is not None:
        codeprint.check(entry.info.get("#meta"), func, where)


def note_if_edited(
    error: BaseException, cache: CacheDict[tp.Any], func: tp.Callable[..., tp.Any]
) -> None:
    """A cached error of a ``__main__`` method raised again: say so when the method was
    edited since it raised (fixed, it still raised the old error)."""
    entry = cache.entry(TASK_KEY)
    if entry is None or entry.info.get("#type") != "Error":
        return  # (a result that cannot be read: not an error of the method, see read_outcome)
    edited = codeprint.edited_error(entry.info.get("#meta"), func)
    if edited is not None:
        error.add_note(
            f"exca: this error is cached, {edited}: mode='retry' computes it again with "
            "today's code"
        )


def _check_node_code(node: Node) -> None:
    func = codeprint.method_function(node.function)
    if func is not None and func.__module__ == "__main__":  # (see codeprint)
        check_code(node.cache, func, node.uid)


Status = tp.Literal["not submitted", "running", "completed", "failed"]


def task_status(node: Node) -> Status:
    """State of a task node's computation, from its cache and its recorded job. Reads
    only: it frees no file of an ended writer (reclaim.py), as a plan does not."""
    with keeping_files():
        return _task_status(node)[0]


def task_failure(node: Node) -> BaseException | None:
    """Why ``task_status`` says "failed" (None otherwise): the error a call in mode cached
    raises (a cached error, how its job ended...), read only: nothing computed or sent."""
    with keeping_files():
        why = _task_status(node)[1]
        return None if why is None else why()


def _raised(read: tp.Callable[[], tp.Any]) -> BaseException:
    """The error ``read`` raises (a cached error re-raised by a read of the result)."""
    try:
        read()
    except Exception as error:
        return error
    return RuntimeError("no error")  # (replaced meanwhile: a result is cached now)


def _task_status(node: Node) -> tuple[Status, tp.Callable[[], BaseException] | None]:
    """The status, and for "failed" a function building the error saying why (built only
    when asked: status() is called in polling loops)."""
    state = store.task_state(node, refresh=True)
    if state == "done" and node.cache.payload_present(TASK_KEY) is False:
        # (its file removed outside exca: a call raises, a plan says fail; or replaced since
        # the index was read, e.g. by a force elsewhere: read again)
        node.cache.refresh()
        state = store.task_state(node)
        if state == "done" and node.cache.payload_present(TASK_KEY) is False:
            return "failed", lambda: _raised(lambda: store.task_result(node))
    if node.force_state.get("job") is not None:  # (this instance's force went to a job)
        from .decisions import forcing_job

        own = forcing_job(node)
        if own is not None:  # running (what is cached meanwhile is an earlier job's), or
            # ended without computing: the force did not happen (see Job.result)
            if own[1]:
                return "running", None
            return "failed", lambda: _forced_failure(node, own[0])
    if state == "done":
        if not any(n.pending_force for n in node.closure):
            try:  # (as a call does: a result of other class defaults is not this one's)
                node.check_defaults()
            except RuntimeError as error:
                refused: BaseException = error  # (``error`` is unbound after the block)
                return "failed", lambda: refused
        return "completed", None
    if state == "error":
        return "failed", lambda: _raised(lambda: store.task_result(node))
    record = registry.latest(node.folder)
    if record is not None and record.cluster == "debug":
        record = None  # (run by its submitting process, like cluster=None: claims tell)
    if record is not None and registry.is_active(record):
        return "running", None
    if record is not None and record.cluster == "slurm" and registry.is_active(record):
        return "running", None  # (a second look: squeue can miss a job for an instant)
    # computed by a worker: here or in another process (no job needed); a removal's hold
    # computes nothing: the folder is as the removal found it, until it is gone
    if being_computed(node, holds=False):
        return "running", None
    if record is None or registry.wrote_outcome(record):
        return "not submitted", None  # (an outcome removed since, e.g. by an interrupted force)
    from .executors import ended_not_cached

    if ended_not_cached(record):  # (not its failure: the next call computes it)
        return "not submitted", None
    return "failed", lambda: _lost_job_failure(node, record)


def _lost_job_failure(node: Node, record: registry.JobRecord) -> BaseException:
    """The error of a call after its job ended without writing its result (cancelled,
    killed, timed out), as the call says it."""
    from .errors import retry_hint
    from .executors import recorded_handle

    how = recorded_handle(record).ended_how()
    return JobFailedError(f"{node.uid} not computed: {retry_hint(how)}")


def _forced_failure(node: Node, record: registry.JobRecord) -> BaseException:
    from .executors import recorded_handle
    from .jobs import force_failure

    return force_failure(node, recorded_handle(record))


def being_computed(node: Node, holds: bool = True) -> bool:
    """Whether a live worker holds the claim of a task's result (``holds``: a removal's
    hold counts too, see keys_being_computed)."""
    return bool(keys_being_computed(node, (TASK_KEY,), holds=holds))


def removal_holder(node: Node) -> str | None:
    """Who holds a task's folder to remove or rename it (``exca clean``, an infra's
    cleaning, update_uids: a FolderHold, which computes nothing), when such holds are the
    only live claims of its result; else None."""
    from ..storage.claims import CLAIMS_DIR, Claims

    if node.folder is None or not os.path.isdir(os.path.join(node.folder, CLAIMS_DIR)):
        return None
    claims = [c for c in Claims(node.folder).current() if TASK_KEY in c.keys]
    if not claims or not all(c.hold for c in claims):
        return None
    return claims[0].owner.describe()


def computer(node: Node) -> str | None:
    """Who computes a task's result now (a live claim of it, not a removal's hold), or
    None."""
    from ..storage.claims import CLAIMS_DIR, Claims

    if node.folder is None or not os.path.isdir(os.path.join(node.folder, CLAIMS_DIR)):
        return None
    claims = [c for c in Claims(node.folder).current() if TASK_KEY in c.keys and not c.hold]
    return claims[0].owner.describe() if claims else None


def claimed_here(node: Node, keys: tp.Iterable[str] | None) -> bool:
    """Whether this very thread holds a claim on some of these keys of a node (an
    enclosing call computes them right now; ``None``: on any key)."""
    from ..storage.claims import CLAIMS_DIR, Claims, Owner

    if node.folder is None or not os.path.isdir(os.path.join(node.folder, CLAIMS_DIR)):
        return False
    wanted = None if keys is None else set(keys)
    me = (*Owner.current()[:2], callers.thread_id())  # (a thread submitting for another: its)
    return any(
        (claim.owner.host, claim.owner.pid, claim.owner.thread) == me
        and (wanted is None or bool(claim.keys & wanted))
        for claim in Claims(node.folder).current()
    )


def refuse_self_call(node: Node, keys: tp.Iterable[str]) -> None:
    """Raise if this very thread computes some of these keys of a node right now (in a
    job: a decorated method calling itself there would wait for its own computation)."""
    if claimed_here(node, keys):
        raise self_call_error(node.uid)


def keys_being_computed(
    node: Node, keys: tp.Iterable[str], others_only: bool = False, holds: bool = True
) -> set[str]:
    """Which of these keys of a node's cache live workers hold claims of (computing them
    right now: here, in another process, in a job; ``others_only``: not this thread).
    ``holds``: the hold of a removal (``exca clean``, update_uids' rename), which keeps new
    claims out while it renames the folder, counts too (waiters wait for it to end); it
    computes nothing."""
    from ..storage.claims import CLAIMS_DIR, Claims, Owner

    if node.folder is None or not os.path.isdir(os.path.join(node.folder, CLAIMS_DIR)):
        return set()
    wanted = set(keys)
    me = (*Owner.current()[:2], callers.thread_id()) if others_only else None
    # the claim of a Slurm job that ended is not a computation, whatever its process does
    # (a lingering one here, a heartbeat still fresh on another host)
    return {
        key
        for claim in Claims(node.folder).current()
        if (holds or not claim.hold)
        and not (claim.owner.job_id and registry.slurm_job_alive(claim.owner.job_id) is False)
        and (me is None or (claim.owner.host, claim.owner.pid, claim.owner.thread) != me)
        for key in claim.keys & wanted
    }


def task_result(node: Node, missed: bool = False) -> tp.Any:
    """The result of a task node: from the cache when it can be reused, else computed
    (or waited for: this instance's forcing job, while it runs, see decisions).
    ``missed``: the caller just found it not reusable (a call's fast path): not looked
    for again before the plan (which looks again, a moment later)."""
    if node.mode != "read-only":  # (the common case: no context to enter)
        return _task_result(node, missed)
    with reading_only([node]):  # (a read-only node's upstream nodes: read only)
        return _task_result(node, missed)


def _task_result(node: Node, missed: bool = False) -> tp.Any:
    reusing = not any(n.pending_force for n in node.closure) and node.force_state.get("job") is None
    if reusing:
        with restoring_files():  # (as a call does: made with today's class defaults?)
            # (its upstream's too, named with this node if one fails; its own was just
            # made when the call's fast path ``missed`` its result)
            node.check_defaults(upstream_only=missed)
    if reusing and not missed:
        try:
            value = reuse(node.cache, node.mode, node.uid)
        except Exception as error:
            func = codeprint.method_function(node.function)
            if func is not None:  # (a notebook's method fixed since it raised? say so)
                note_if_edited(error, node.cache, func)
            raise
        if value is not MISSING:
            if node.restore_files is not None:  # (its folder was just listed: free)
                node.restore_files()
            _check_node_code(node)
            return value
    from .scheduler import Scheduler

    for attempt in range(READ_ATTEMPTS):
        forcing = [n for n in node.closure if n.pending_force]
        if forcing:  # threads of one forced instance: one forces, the others then reuse
            with _force_lock(forcing[0]):  # (a job's submission is not a claim: 3 jobs)
                Scheduler([node]).run(root_cause=True)
        elif missed and not attempt:
            # (the fast path read its folder just now: the plan relies on that read, the
            # worker's claim reads it again before computing)
            with node.cache.relying_on_last_read():
                Scheduler([node]).run(root_cause=True)
        else:
            Scheduler([node]).run(root_cause=True)
        value = store.task_result(node, missing=MISSING)
        if value is not MISSING:
            _check_node_code(node)  # (reused by the run, or computed: then the same code)
            return value
        # (removed right after it was computed or waited for: by another process forcing
        # or clearing it; computed, or waited for, again)
    raise RuntimeError(
        f"{node.uid}: its result was removed right after each of {READ_ATTEMPTS} "
        "computations (another process forcing or clearing it again and again?)"
    )


_FORCE_LOCKS: dict[int, threading.RLock] = {}  # by force_state (one per instance)
_FORCE_LOCKS_GUARD = threading.Lock()


def _force_lock(node: Node) -> threading.RLock:
    """The lock of a forced instance's force (its force_state is shared by its nodes and
    pickled into jobs: the lock lives here; an id reused after collection only shares a
    lock, never a force). Re-entrant: a forced computation may call a decorated method
    whose closure holds the same forced node."""
    key = id(node.force_state)
    with _FORCE_LOCKS_GUARD:
        lock = _FORCE_LOCKS.get(key)
        if lock is None:
            if len(_FORCE_LOCKS) > 10_000:
                _FORCE_LOCKS.clear()
            lock = _FORCE_LOCKS[key] = threading.RLock()
    return lock


def has_job_or_outcome(node: Node) -> bool:
    """Whether a task's outcome is cached, or a job of it is queued or running (then
    ``task_job`` submits nothing)."""
    if store.task_state(node, refresh=True) != "missing":
        return True
    record = registry.latest(node.folder)
    return (record is not None and registry.is_active(record)) or being_computed(node)


def task_job(node: Node) -> Job:
    """The job of a task node, submitting it when there is none (does not wait)."""
    from .executors import DoneHandle, recorded_handle
    from .scheduler import Scheduler

    asked_at = time.time()  # (an error computed since is the answer: see Job.retry_if_lost)
    state = store.task_state(node, refresh=True)
    record = registry.latest(node.folder)
    reusable = state == "done" or (state == "error" and node.mode != "retry")
    # (once per instance: then its job is the one to follow); a forced sub-config forces
    # this node too, as in an eager call
    forcing = any(n.pending_force for n in node.closure)
    if node.force_state.get("job") is not None:  # (this instance's force went to a job)
        from .decisions import forcing_job

        # (still running, or ended without computing: what is cached is not its result)
        own = forcing_job(node)
        if own is not None:
            return Job(node, recorded_handle(own[0]), replaces=True)
    active = record is not None and registry.is_active(record)
    ending = False  # (mode retry: a job ending without a result, retried now, see
    # Graph._check_registry; the new job's worker waits for the claim its worker holds)
    if active and state == "missing" and not forcing:
        from .decisions import retry_ending_job

        assert record is not None
        ending = retry_ending_job(node, record)
        active = not ending
    if not forcing and (reusable or active):
        if reusable:
            with restoring_files():
                node.check_defaults()
        job = Job(node, recorded_handle(record) if record is not None else None)
        # (mode retry following a job it did not submit: if that job ends without a
        # result, its own job then, once, as a call does; see Job._retry_lost_job)
        job.retry_if_lost = not reusable and node.mode == "retry"
        job.asked_at = asked_at
        return job
    if (
        not forcing
        and not ending
        and keys_being_computed(node, (TASK_KEY,), others_only=True, holds=False)
    ):
        # another worker computes it (an inline call of another process, say): its outcome
        # is the job's; a job submitted now would hold its allocation only to wait for
        # that claim (a call with a cluster waits too, and submits only if it ends
        # without a result: job() again then)
        from .executors import ClaimHandle

        return Job(node, ClaimHandle(node))
    scheduler = Scheduler([node])
    if node.execution.cluster is None:
        try:
            scheduler.run(root_cause=True)
        except Exception as error:  # (a cached error is raised by job.result() from the cache)
            return Job(node, DoneHandle(error))
        return Job(node, DoneHandle())
    scheduler.claim_waits = False  # (a job: it waits for a live claim, then computes if needed)
    scheduler.root_cause = True  # (a failure decided now raises as a call of the node does)
    # the outcome the new job replaces: removed once it is submitted (store.drop_outcome)
    outdated = store.outdated_outcome(node.cache, "force" if forcing else node.mode)
    handles = scheduler.submit().get(node.key) or []
    if handles:  # (nothing submitted: what is cached stays)
        store.drop_outcome(node.cache, outdated)
        if node.pending_force:
            node.force_state["done"] = True  # (the scheduler only sees the jobs it waits for)
            node.force_state["job"] = handles[0].job_id  # (a later call waits for it)
        job = Job(node, handles[0], replaces=forcing)
        settled = scheduler.runs.get(node.key)
        if settled is not None and settled.retry_if_lost:  # (another call's job, submitted
            # meanwhile, followed: retried once if it ends without a result, see _settle)
            job.retry_if_lost, job.asked_at = True, asked_at
        return job
    run = scheduler.runs.get(node.key)
    if run is not None and isinstance(run.error, JobFailedError) and record is not None:
        return Job(node, recorded_handle(record))  # its last job ended without a result
    try:  # nothing submitted: why (an upstream's own error, as a call raises it)
        scheduler._raise_failures(root_cause=True)
    except Exception as error:
        return Job(node, DoneHandle(error))
    why = run.error if run is not None else None
    return Job(node, DoneHandle(why) if why is not None else None)


def map_job(node: Node) -> MapJob:
    """The jobs of a map node's missing items, submitted now without waiting (computed here
    on cluster None and in pools); none when every item is cached."""
    from .executors import DoneHandle, HandleGroup
    from .scheduler import Scheduler

    forcing = any(n.pending_force for n in node.closure)
    if node.mode != "retry" and not forcing:
        try:
            uids: list[str] | None = store.map_item_uids(node)
        except Exception:  # (items from an upstream node not computed yet: run below)
            uids = None
        if uids is not None:
            node.cache.refresh()
            if not node.cache.missing(uids) and not map_jobs_pending(node, uids):
                with restoring_files():
                    node.check_defaults()
                return MapJob(node)
    scheduler = Scheduler([node])
    if node.execution.cluster not in SUBMITIT_CLUSTERS:
        handle = DoneHandle()
        handle.cluster = node.execution.cluster  # (a pool's, or None)
        try:
            scheduler.run(root_cause=True)
        except Exception as error:  # (an item's error is raised by job.result() from the cache)
            handle._error = error
        return MapJob(node, handle)
    scheduler.claim_waits = False  # (its jobs wait for items others compute)
    scheduler.root_cause = True
    handles = scheduler.submit().get(node.key) or []
    if handles:
        run = scheduler.runs.get(node.key)
        # (earlier jobs of the items, still queued or running: followed, then what they
        # leave, or this node's own retry or force, is sent once they end: see MapJob)
        resume = run is not None and run.action == "wait"
        if node.pending_force and not resume:  # (forced once by these jobs, as a call does)
            node.force_state["done"] = True
            node.force_state.setdefault("uids", set()).update(store.map_item_uids(node))
        # (retry: its items' cached errors are what the jobs replace)
        job = MapJob(node, HandleGroup(handles), replaces=forcing or node.mode == "retry")
        job.resume = resume
        return job
    try:  # nothing submitted: why (an upstream's own error, as a call raises it)
        scheduler._raise_failures(root_cause=True)
    except Exception as error:
        return MapJob(node, DoneHandle(error))
    return MapJob(node)


def map_items(node: Node, uids: list[str], missing: list[str] | None = None) -> None:
    """Make sure every item of a map node is in its cache (computing the missing ones);
    ``missing``: those of ``uids`` the caller just found missing, if it looked."""
    state = node.force_state
    if node.mode == "force" and state.get("done") and not state.get("uids", set()).issuperset(uids):
        state["done"] = False  # mode=force: the items this instance has not forced yet
    settled = node.mode != "retry" and not any(n.pending_force for n in node.closure)
    if missing is None and settled:
        missing = node.cache.missing(uids)
    if (
        settled
        and not missing
        and not (node.force_state.get("jobs") and map_jobs_pending(node, uids))
    ):
        with restoring_files():
            node.check_defaults()
        return
    from .scheduler import Scheduler

    # (missing: read just now through this node's cache; the scheduler's decision and its
    # worker's look-up before claiming rely on that read, the claim's refresh reads again)
    reading = node.cache.relying_on_last_read() if missing is not None else contextlib.nullcontext()
    with reading:
        known = None if missing is None else {node.key: missing}
        Scheduler([node], item_uids={node.key: uids}, item_missing=known).run(root_cause=True)


def map_jobs_pending(node: Node, uids: list[str]) -> bool:
    """Whether jobs still running will replace cached items of a map node: this instance's
    own forcing jobs (sent by its job(): what is cached meanwhile predates them), or jobs
    retrying the items' cached errors. A call or job() then goes to the scheduler, which
    waits for them."""
    own = node.force_state.get("jobs")
    if node.folder is None or not (own or node.cache.count_errors(uids)):
        return False
    from .decisions import retrying_jobs

    records = [r for r in registry.read_all(node.folder) if not registry.runs_here(r)]
    forcing = [r for r in records if own and r.job_id in own]
    active = [r for r in forcing if registry.is_active(r)]
    if own:  # (ended, their items counted forced: forgotten, calls take the fast path again)
        forced = node.force_state.get("uids", set())
        running = {r.job_id for r in active}
        for job_id, (_, places) in list(own.items()):
            if job_id not in running and forced.issuperset(places):
                own.pop(job_id, None)
    if active:
        return True
    return any(registry.is_active(r) for r in retrying_jobs(node, uids, records))


def wait_for_retried_items(node: Node, uids: list[str]) -> bool:
    """Items whose cached errors a job queued or running since retries (e.g. a detached
    run's): wait for it (whether there was one; a call then reads them again)."""
    from .decisions import retrying_jobs
    from .scheduler import Scheduler

    if node.folder is None:
        return False
    records = [r for r in registry.read_all(node.folder) if not registry.runs_here(r)]
    if not any(registry.is_active(r) for r in retrying_jobs(node, uids, records)):
        return False
    Scheduler([node], item_uids={node.key: uids}).run(root_cause=True)
    return True


def run_nodes(targets: tp.Sequence[Node]) -> None:
    """Compute whatever the targets need (waiting for it)."""
    from .scheduler import Scheduler

    Scheduler(targets).run(root_cause=True)
