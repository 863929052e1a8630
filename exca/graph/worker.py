"""What runs a unit of work, wherever it runs (the caller's thread, a pool, a job).

This is the only place where decorated methods are called. A unit claims what it is
about to compute (so no other process or thread computes it too), re-checks the cache,
computes, writes results or errors into the node's cache, and releases its claim.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import functools
import itertools
import logging
import operator
import os
import re
import subprocess
import sys
import threading
import time
import traceback
import typing as tp
from pathlib import Path

from ..storage import interrupts
from ..storage.cachederror import CachedError
from ..storage.cachedict import CacheDict
from ..storage.claims import Claim, Claims, Owner, folder_key, unreadable_wait
from ..storage.dumping import is_damaged_payload
from ..storage.index import CacheFolderRemoved, meta_of
from ..storage.modules import imported
from . import callers, codeprint, jobpickle, jobprocess, ranks, registry, store
from .errors import (
    CACHED_ITEMS,
    ENVIRONMENT_ERRNOS,
    EXITED_IN_METHOD,
    INTERRUPTED_ITEM,
    INTERRUPTED_MAP,
    RAISED_INTERRUPT,
    UpstreamFailed,
    ending_line,
    interrupted_at,
    item_cycle_error,
    not_cached,
    read_only_error,
    retry_hint,
    self_call_error,
    task_interrupted_at,
)
from .node import INPUTS_PREFIX, TASK_KEY, Group, Node, Value

logger = logging.getLogger("exca")
Action = tp.Literal["compute", "force", "retry"]
FLUSH_ITEMS = 256  # map outputs written per batch
FLUSH_SECONDS = 0.5  # ... or at least this often
# Outputs wait in a batch only when the method cannot change them afterwards (a method may
# yield the same buffer again and again): immutable values, and copies of small arrays.
# Anything else is written before the method resumes.
_IMMUTABLE = frozenset({int, float, complex, str, bytes, bool, type(None)})
SNAPSHOT_BYTES = 1 << 16
# an upstream task recomputed by another job while this one starts: how often its end is
# looked for (doubling up to the max)
RECOMPUTED_POLL_S = 0.1
RECOMPUTED_POLL_MAX_S = 2.0


class Unit(tp.NamedTuple):
    """One element of an array: a task node, or a chunk of a map node's items.

    ``split=(i, n)``: a map whose items come from an upstream node computes the i-th of n
    contiguous chunks of them, found at run time (detached runs).
    """

    node: Node
    action: Action = "compute"
    items: list[tp.Any] | None = None
    uids: list[str] | None = None
    split: tuple[int, int] | None = None
    # a task forced while an earlier job computes it: waits for that computation, then
    # computes again (by default a computation that held the claim meanwhile counts)
    after_running_job: bool = False
    # map items forced by a run: the id of that run, recorded with each output; an item
    # already written under it (by another node of the run on the same items) is not
    # computed again
    forced_by: str = ""
    # when the run asked for it (time.time()): under mode retry, an error of a computation
    # started since (another thread or process asked at the same time) is the answer; an
    # older one is computed again
    asked_at: float = 0.0
    # the threads waiting for this unit's job to end (see callers.py)
    callers: tuple[tp.Any, ...] = ()
    # the source lines of code the submitting process holds in memory only (a notebook's
    # cells, exec'd code), by file name: the job's tracebacks show them (see jobprocess)
    sources: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def keys(self) -> list[str]:
        return [TASK_KEY] if self.uids is None else self.uids

    def describe(self) -> str:
        if self.uids is None:
            return self.node.uid
        return f"{self.node.uid} ({len(self.uids)} items)"

    def __reduce__(self) -> tuple[tp.Any, ...]:  # (its code keeps its file name: jobpickle)
        if getattr(jobpickle._DEPTH, "value", 0):
            return (Unit, tuple(self))
        # (loaded by load_unit: a job that cannot import the config's module still runs
        # exca, which sets the job aside instead of its failure being cached)
        folder = "" if self.node.folder is None else str(self.node.folder)
        return load_unit, (jobpickle.dumps(self), folder, self.node.uid)

    def __copy__(self) -> Unit:  # (immutable: not a pickling round trip, as __reduce__ is)
        return self


class Report:
    """What a unit did: outputs computed, item errors, outputs reused or waited for."""

    # (a plain class: creating a dataclass costs ~1 ms, at the first call of each process)
    def __init__(
        self, computed: int = 0, errors: int = 0, reused: int = 0, waited: int = 0
    ) -> None:
        self.computed = computed
        self.errors = errors
        self.reused = reused
        self.waited = waited

    def __repr__(self) -> str:
        counts = ", ".join(f"{name}={value}" for name, value in vars(self).items())
        return f"Report({counts})"


UpstreamMissing = UpstreamFailed


class JobStopped(BaseException):
    """A job withdrawn while it ran (clear_job(): cancelled, its record removed) finished
    its task anyway: the outcome is not stored. Not an Exception: submitit writes no
    result for it (the job ends as a killed one would)."""


ProgressCallback = tp.Callable[[int], None]


def run_unit(unit: Unit, progress: ProgressCallback | None = None) -> Report:
    """Run one unit; raises the user's exception when a task failed (after caching it)."""
    if unit.split is not None:
        unit = _resolve_split(unit)
    if unit.node.kind == "task":
        return _run_task(unit)
    return _run_map(unit, progress)


class UnloadedUnit(tp.NamedTuple):
    """What a submitit job got for its unit when loading it failed on an ImportError (the
    config's module, or a module of what it holds, is not importable in the job), on
    the lookup of a class its module does not have there (``missing``: "module:Class", the
    class by its qualified name: "Outer.Inner" for a nested one), or on another exception
    (``raised``: the module whose code, run at its import, raised it, else "" when an
    object's unpickling raised it: ``other``)."""

    folder: str
    uid: str
    error: str
    missing: str = ""
    raised: str = ""
    other: bool = False


def _module_raising(error: BaseException) -> str:
    """The module (name and file) whose code, run when it was imported, raised ``error``
    (the innermost module frame of its traceback), else "" (raised by no import)."""
    module = ""
    trace = error.__traceback__
    while trace is not None:
        code = trace.tb_frame.f_code
        if code.co_name == "<module>":
            name = trace.tb_frame.f_globals.get("__name__", "?")
            module = f"{name} ({code.co_filename})"
        trace = trace.tb_next
    return module


# pickle's words for a global its module lacks ("Can't get attribute 'Name' on <module
# 'mod' from ...>"), and getattr's on a module ("module 'mod' has no attribute 'Name'")
_MISSING_GLOBAL = re.compile(
    r"^(?:Can't get attribute '(?P<name>[^']+)' on <module '(?P<module>[^']+)'"
    r"|module '(?P<module2>[^']+)' has no attribute '(?P<name2>[^']+)'$)"
)


def _missing_global(error: AttributeError) -> str | None:
    """ "module:Name" when ``error`` is the lookup of a global its module lacks (the name
    may be dotted: a nested class, "Outer.Inner")."""
    found = _MISSING_GLOBAL.match(str(error))
    if found is None:
        return None
    module = found.group("module") or found.group("module2")
    return f"{module}:{found.group('name') or found.group('name2')}"


def load_unit(data: bytes, folder: str = "", uid: str = "") -> Unit | UnloadedUnit:
    """A pickled unit (see ``Unit.__reduce__``). In a submitit job, an exception while
    loading it (an ImportError, the lookup of a class that its module lacks in the job:
    renamed or removed there, a module's code run at its import raising there) gives an
    ``UnloadedUnit`` (run_job_unit refuses it: an environment problem, not the config's
    outcome: the method never ran), elsewhere it is raised."""
    import pickle

    try:
        return tp.cast(Unit, pickle.loads(data))
    except Exception as error:  # (the method never ran: not its outcome to cache)
        if not uid or not os.environ.get("SUBMITIT_EXECUTOR"):
            raise
        said = f"{type(error).__name__}: {error}"
        if isinstance(error, ImportError):
            return UnloadedUnit(folder, uid, said)
        missing = _missing_global(error) if isinstance(error, AttributeError) else None
        if missing is not None:
            return UnloadedUnit(folder, uid, said, missing)
        # (code run at a module's import in the job: e.g. guarded by an environment
        # variable or a file only jobs have; or an object's unpickling)
        raised = _module_raising(error)
        return UnloadedUnit(folder, uid, said, raised=raised, other=not raised)


def _refuse_unloaded(unit: UnloadedUnit) -> tp.NoReturn:
    """A job that could not import its config: its record is set aside (as a job refusing
    a changed class: Scheduler._refused_changed_class), nothing is computed nor cached."""
    from ..storage.process import hostname

    _JOB_UNIT.append(unit.uid)
    registry.set_refused(Path(unit.folder) if unit.folder else None, _job_id() or "")
    where = f"on host {hostname()} with python {sys.executable}"
    if unit.missing:
        module, name = unit.missing.split(":", 1)
        said = (
            f"the module {module} has no {name} there (the class of the config, or of "
            "what it holds, was renamed or removed from its module in the code the job "
            "imports)"
        )
        advice = (
            f"make the jobs import a version of {module} that defines {name} (the "
            "submitting process's code: the same environment on the nodes; with a "
            "workdir, list that module in workdir.copied too), or call with a config of "
            "the class as the code names it now"
        )
    elif unit.raised:
        said = (
            f"the module {unit.raised} raised it while the job imported it (code run at "
            "import, not the method: nothing of the method ran)"
        )
        advice = (
            "make that module's import-time code succeed in the jobs (what it needs there: "
            "environment variables, files, devices; or move that code into the method)"
        )
    elif unit.other:
        said = (
            "unpickling the config (or what it holds) raised it there (nothing of the method ran)"
        )
        advice = (
            "keep values that cannot be loaded in the jobs out of the config (create "
            "them in the method)"
        )
    else:
        said = "the module defining the config (or what it holds) is not importable there"
        advice = (
            "make it importable in the jobs (PYTHONPATH of the submitting environment, "
            "the same environment on the nodes; with a workdir, list that module in "
            "workdir.copied too)"
        )
    raise jobprocess.ConfigImportError(
        f"{unit.uid}: the job could not load what it had to run ({unit.error}) {where}: "
        f"{said}. Nothing was computed nor cached (not a failure of the config: the next "
        f"call submits it again): {advice}, then call again"
    )


def run_job_unit(unit: Unit) -> Report:
    """What a submitit job (local or Slurm) runs: its unit (see ``_JOB_UNIT``)."""
    if isinstance(unit, UnloadedUnit):
        _refuse_unloaded(unit)
    if not _JOB_UNIT:
        _JOB_UNIT.append(unit.node.uid)
        _watch_stop_signals()
        jobprocess.start(getattr(unit.node.cache, "permissions", None))
        callers.adopt(unit.callers)
    jobprocess.known_sources(unit.sources)
    # (a task's note speaks of the task: a map its method called is named, not counted)
    where = interrupted_at if unit.node.kind == "map" else task_interrupted_at
    try:
        jobprocess.prepare(unit.node)
    except jobprocess.ClassChangedError:
        # not a failure of the computation: the job's record is set aside (a later call
        # submits the config again, instead of reading it failed; its log stays found)
        registry.set_refused(unit.node.folder, _job_id() or "")
        raise
    rank, tasks = ranks.job_rank()
    try:
        if tasks == 1:
            return run_unit(unit)
        if rank > 0:
            return _follow_rank_zero(unit)
        ranks.lead(unit.node.uid, getattr(unit.node.cache, "permissions", None))
        try:
            return run_unit(unit)
        finally:
            ranks.end()
    except SystemExit as exiting:  # (the job ends without a result: its log says why)
        # (else a stop signal's doing, or submitit's exit after requeuing a preempted job:
        # said otherwise)
        if not _TOLD_TO_STOP and not _PREEMPTED:
            with contextlib.suppress(Exception):  # (a stderr closed by the method: unsaid)
                print(
                    f"exca: {unit.node.uid}: the job ends without its result: "
                    f"SystemExit({exiting.code!r}){EXITED_IN_METHOD}{where(exiting)}",
                    file=sys.stderr,
                    flush=True,
                )
            if unit.node.kind == "task":  # (a map's missing items: computed by the next call)
                # no failure of the config either (a sys.exit says nothing of it, and its
                # log says why): set aside as for a KeyboardInterrupt, the next call computes it
                with contextlib.suppress(Exception):
                    registry.set_refused(unit.node.folder, _job_id() or "")
        raise
    except OSError as error:
        if unit.node.kind == "task" and (
            error.errno in ENVIRONMENT_ERRNOS or isinstance(error, CacheFolderRemoved)
        ):
            _set_aside_unless_cached(unit.node)
        raise
    except KeyboardInterrupt as interrupt:  # (no SIGINT received: raised by the method)
        if not _TOLD_TO_STOP:
            with contextlib.suppress(Exception):
                # (the map item it was computing: the caller's error names it, as a pool's
                # caller does, see executors.interrupt_said)
                print(
                    f"exca: {unit.node.uid}: the job ends without its result: {RAISED_INTERRUPT}"
                    f"{where(interrupt)}",
                    file=sys.stderr,
                    flush=True,
                )
            if unit.node.kind == "task":  # (a map's missing items: computed by the next call)
                # not the config's failure (see errors.INTERRUPT_HINT): its record is set
                # aside, as a job refusing its config does (the next call computes it)
                with contextlib.suppress(Exception):
                    registry.set_refused(unit.node.folder, _job_id() or "")
        raise


def _set_aside_unless_cached(node: Node) -> None:
    """A task's job raising an OSError of its environment (a full disk...): met storing its
    outcome, which is then not cached (as inline): not the config's failure, its record is
    set aside (see errors.STORAGE_HINT) and the next call computes it. Unless the method
    raised it, then cached as its error (its record stays: its failure)."""
    with contextlib.suppress(Exception):  # (a job ending anyway: its error says why)
        node.cache.refresh()
        if TASK_KEY not in node.cache:
            registry.set_refused(node.folder, _job_id() or "")


def _follow_rank_zero(unit: Unit) -> Report:
    """A rank other than 0 of a multi-task job makes the calls of the method rank 0
    announces, and stores nothing (see ranks.py): it waited for rank 0's claim instead,
    and distributed code meeting every rank waited for good."""
    if unit.split is not None:
        unit = _resolve_split(unit)
    node = unit.node
    by_uid = dict(zip(unit.uids or (), unit.items or ()))
    for call in ranks.announced(getattr(node.cache, "permissions", None)):
        failure: Exception | None = None
        try:
            if call.uids is None:
                node.function(**_inputs(node))
            else:
                _follow_items(node, call, [by_uid[uid] for uid in call.uids])
        except ranks.LeadGone:
            raise
        except Exception as error:  # (rank 0 caches the outcome: a task's fails then)
            failure = error
            logger.warning(
                "%s raised on this rank (rank 0 caches the outcome; a task's is this error): %s",
                node.uid,
                "".join(traceback.format_exception(error)).rstrip(),
            )
        if call.uids is None and call.node in (None, node.uid):
            ranks.report_outcome(call, failure)  # (rank 0 waits for it: see ranks.py)
    return Report()


def _follow_items(node: Node, call: ranks.Followed, items: list[tp.Any]) -> None:
    """Make rank 0's call of a map's method on these items: the next item only once rank
    0 went on to it (it stops a call after an item when it gives the others back)."""
    outputs = _outputs(node, items)
    try:
        for done, _ in enumerate(outputs, 1):
            if done < len(items) and not call.goes_on(done):
                break
    finally:
        close = getattr(outputs, "close", None)
        if close is not None:  # (a generator: stopped now, as rank 0's)
            close()


def follow_nested(what: str, target: Node) -> None:
    """Another rank than 0's nested call (of target, in a method it follows, see
    ranks.py): make the calls rank 0's same call announces, of target's method or of its
    upstream nodes' (errors raised here are only logged: rank 0's outcome is read after),
    until that call ended on rank 0; raises what it raised."""
    nodes = {node.uid: node for node in target.closure}
    items: dict[str, dict[str, tp.Any]] = {}  # (a map's items by uid, read when followed)
    for call in ranks.follow_nested(what):
        node = nodes.get(call.node or "")
        if node is None:  # (not one it needs: rank 0's run went another way)
            logger.warning("Rank 0 called %s's method, not this rank's call: skipped", call.node)
            continue
        try:
            if call.uids is None:
                node.function(**_inputs(node))
                continue
            if node.uid not in items:
                listed = node.items
                if isinstance(listed, Node):  # (computed by now: rank 0 called the map)
                    listed = list(load_output(listed))
                    uids = store.map_item_uids(dataclasses.replace(node, items=listed))
                else:
                    uids = store.map_item_uids(node)
                items[node.uid] = dict(zip(uids, listed or ()))
            _follow_items(node, call, [items[node.uid][uid] for uid in call.uids])
        except ranks.LeadGone:
            raise
        except Exception as error:  # (rank 0 caches the outcome: its own)
            logger.warning(
                "%s raised on this rank (rank 0's outcome is cached): %r", node.uid, error
            )


def _resolve_split(unit: Unit) -> Unit:
    """Items of a map chunk whose items come from an upstream node (known now)."""
    from .scheduler import to_chunks

    node = unit.node
    assert unit.split is not None and isinstance(node.items, Node) and node.item_uid is not None
    try:
        output = load_output(node.items)
    except Exception as e:  # (an upstream item's cached error too: not this node's own)
        raise UpstreamFailed(
            f"{node.uid}: its items could not be read from {node.items.uid} "
            f"{store.unreadable_input(e, named=True)}"
        ) from e
    store.check_items_output(node, node.items, output)  # (as a plan and a waiting run say)
    items = list(output)
    uids = store.map_item_uids(dataclasses.replace(node, items=items))
    if node.mode == "read-only":  # (never computes: checks what is cached)
        node.cache.refresh()
        missing = node.cache.missing(uids)
        if missing:
            total = len(set(uids))
            shown = ", ".join(repr(u) for u in missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise read_only_error(
                node, f"read-only and {len(missing)}/{total} items missing ({shown})"
            )
        return unit._replace(items=[], uids=[], split=None)
    index, count = unit.split
    chunks = to_chunks(len(items), count, 1)
    start, stop = chunks[index] if index < len(chunks) else (0, 0)
    _note_items(node, uids[start:stop])
    return unit._replace(items=items[start:stop], uids=uids[start:stop], split=None)


def _note_items(node: Node, uids: list[str]) -> None:
    """Next to this job's record, which items it computes (for ``exca logs --item``)."""
    if node.folder is None or not os.environ.get("SUBMITIT_EXECUTOR"):
        return  # (not a submitit job: nothing recorded to find)
    import submitit

    # (written even before the submitter wrote the record: a fast job may start first)
    job_id = submitit.JobEnvironment().job_id
    try:
        registry.write_items(node.folder, job_id, uids, node.cache.permissions)
    except OSError as error:  # (only `exca logs --item` needs it: compute anyway)
        logger.warning("Could not note the items of job %s: %s", job_id, error)


def check_upstream(node: Node) -> None:
    """Raise UpstreamFailed unless every upstream task's result is in the cache (an
    element of a detached array starts after its upstream jobs, whatever they did)."""
    from .decisions import UPSTREAM_RETRY_COMPUTES  # (the plan's wording: whose mode)

    for source in node.upstream:
        if source.kind != "task":
            continue
        state = _upstream_state(source)
        if state != "done":
            why = (state == "missing" and _recomputed_meanwhile(source)) or (
                f"upstream {source.uid}{_its_job(source)} holds an error (exca.ops.explain "
                f"or its call shows it){UPSTREAM_RETRY_COMPUTES} it again"
                if state == "error"
                else _missing_upstream_said(source)
            )
            raise UpstreamFailed(f"{node.uid} did not run: {why}")


def _its_job(source: Node) -> str:
    """The last job recorded for an upstream node, as " (job N)" ("" when none)."""
    record = registry.latest(source.folder)
    return "" if record is None else f" (job {record.job_id})"


def _missing_upstream_said(source: Node) -> str:
    """Why an upstream task holds no result, e.g. in a Slurm job started after its job
    (a detached run's afterany): how that job ended (cancelled, timed out, died), not only
    "missing", with what computes it again."""
    from .decisions import UPSTREAM_RETRY_COMPUTES
    from .executors import recorded_handle  # (it imports this module)

    missing = f"upstream {source.uid} is missing"
    record = registry.latest(source.folder)
    if record is None or record.cluster != "slurm":
        return missing
    if registry.confirmed_queued([record.job_id]) != set():
        return missing  # (still queued or running, or squeue not answering: no ending)
    try:
        known = registry.slurm_endings([record.job_id], unknown=True).get(record.job_id)
        how = recorded_handle(record).ended_how(known)
    except Exception:  # (its ending unknown: said as before)
        return missing
    if not_cached(how):  # (not a failure of its own: the next run computes it)
        remedy = "; the next run computes it again"
    elif retry_hint(how) != how:
        remedy = f"{UPSTREAM_RETRY_COMPUTES} it again"
    else:  # (its own words say what to do)
        remedy = ""
    return f"upstream {source.uid} has no result: {ending_line(how)}{remedy}"


def _in_slurm_job() -> bool:
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm"  # (set by submitit in the job)


def _recomputed_meanwhile(source: Node) -> str | None:
    """Why a missing upstream task result is not waited for, in a Slurm job (off Slurm,
    ``_upstream_state`` waited for it), for an UpstreamFailed message; else None."""
    if not (_in_slurm_job() and _recomputed_elsewhere(source)):
        return None
    return (
        f"upstream {source.uid} is computed again elsewhere (forced or retried since this "
        "node's run decided); a Slurm job does not hold its allocation to wait for it: the "
        "next run computes this node"
    )


def _upstream_state(source: Node) -> str:
    """The state of an upstream task's result, once another worker or job computing it
    right now ended: another process forcing it drops its old result when its job goes
    out (failing then blamed an upstream failure that did not happen). Not in a Slurm
    job: waiting would hold its allocation (that other job may wait for it)."""
    state = store.task_state(source, refresh=True)
    if _in_slurm_job():
        return state
    delay, told = RECOMPUTED_POLL_S, False
    while state == "missing" and _recomputed_elsewhere(source):
        if not told:
            logger.info("Waiting for upstream %s: another job or worker computes it", source.uid)
            told = True
        time.sleep(delay)
        delay = min(2 * delay, RECOMPUTED_POLL_MAX_S)
        state = store.task_state(source, refresh=True)
    return state


def _recomputed_elsewhere(source: Node) -> bool:
    """Whether a live worker (not this thread) holds the claim of a task's result, or a
    recorded job that may still write it is queued or runs."""
    from .calls import keys_being_computed

    if source.folder is None:
        return False
    if keys_being_computed(source, (TASK_KEY,), others_only=True):
        return True
    record = registry.latest(source.folder)
    if record is None:
        return False
    queued = None
    if record.cluster == "slurm":
        # (squeue not answering: not waited for, for ever, on a job maybe long dead)
        queued = registry.confirmed_queued([record.job_id])
        if not queued:
            return False
    return registry.still_running(record, queued)


def _wait_message(node: Node) -> _OnWait:
    """Say once who is waited for (after refusing to wait for a caller of this job)."""
    return _OnWait(node)


class _OnWait:
    """What a worker does while it waits for keys others hold: refuse to wait for a caller
    of its job; before the first wait, give back the items this thread has not started
    (see _InFlight), and, holding items of maps (a nested call: of this map or another)
    or computing tasks, record the wait in the folder of each, so that a cycle of such
    waits (item a needs b, computed by a sibling job, or a job of another map, or a task
    computed elsewhere, whose b needs a) is refused instead of waited for by both for good;
    say once who is waited for."""

    def __init__(self, node: Node) -> None:
        self.node, self.folder = node, node.folder
        self.shown = False
        self.records: list[Path] = []
        self.holds: dict[str, set[str]] = {}  # (by folder)

    def __call__(self, held: dict[str, Owner]) -> None:
        node, folder = self.node, self.folder
        if callers.chained():
            callers.refuse_waiting_on_claims(node.uid, folder, held)
        # (what they wait for may need those)
        if not self.shown and (_IN_FLIGHT.units or _IN_FLIGHT.tasks):
            give_up_unstarted()
            if folder is not None:
                holders = _current_items()
                self.holds = {f: keys for f, (_, keys) in holders.items()}
                waits = {os.fspath(folder): list(held)}
                for claims, _ in holders.values():
                    self.records.append(claims.post_wait(waits, self.holds))
        if self.records:
            assert folder is not None
            refuse_cycle({os.fspath(folder): set(held)}, self.holds, node.uid)
        if not self.shown:
            owner = next(iter(held.values()))
            current = Claims(folder).current() if folder is not None else []
            # (a cleaning's hold, exca clean or update_uids: it computes nothing)
            holds = any(c.hold and c.owner == owner for c in current)
            # (one whose keys are unknown: taken as holding them all, said with what to do)
            unreadable = [c for c in current if c.unreadable and c.owner in held.values()]
            if unreadable:
                logger.warning(unreadable_wait(unreadable[0], len(held)))
            elif holds:
                logger.info(
                    "Waiting for %s, which is removing or renaming %s", owner.describe(), folder
                )
            else:
                logger.info(
                    "Waiting for %s to finish %d key(s) in %s", owner.describe(), len(held), folder
                )
            self.shown = True

    def end(self) -> None:
        while self.records:
            Claims.end_wait(self.records.pop())


def refuse_cycle(waiting: dict[str, set[str]], holds: dict[str, set[str]], uid: str) -> None:
    """Raise if the holders of what this thread waits for (``waiting``: keys by folder)
    wait, in turn, directly or through others (of any map), for an item this thread
    computes (and ``holds``, waiting). A holder waiting records it in the folder of the
    keys it holds: the records of the folder of the keys waited for say who waits for
    what next. ``uid``: named when no computation of this thread is of that folder."""
    # (folders compared by folder_key, not by path: one cache may be named by several,
    # through a symlink or another mount, by the workers recording their waits)
    keys_of: dict[str, tp.Any] = {}

    def key(path: str) -> tp.Any:
        if path not in keys_of:
            keys_of[path] = folder_key(path)
        return keys_of[path]

    def by_key(by_path: tp.Mapping[str, tp.Iterable[str]]) -> dict[tp.Any, set[str]]:
        merged: dict[tp.Any, set[str]] = {}  # (one folder named by two paths: both kept)
        for path, keys in by_path.items():
            merged.setdefault(key(path), set()).update(keys)
        return merged

    mine = by_key(holds)
    Record = tuple[
        Owner, dict[tp.Any, set[str]], dict[str, frozenset[str]], dict[str, frozenset[str]]
    ]
    records: dict[tp.Any, list[Record]] = {}  # (by folder, read once)
    pending: dict[tp.Any, tuple[str, set[str]]] = {}
    for folder, keys in waiting.items():
        pending.setdefault(key(folder), (folder, set()))[1].update(keys)
    seen: set[tuple[tp.Any, ...]] = {Owner.current()[:4]}
    while pending:
        further: dict[tp.Any, tuple[str, set[str]]] = {}
        for here, (where, keys) in pending.items():
            if here not in records:
                found = Claims(where, job_alive=registry.slurm_job_alive).waits()
                records[here] = [(owner, by_key(held), waits, held) for owner, waits, held in found]
            for owner, held_by_key, waits, held in records[here]:
                if owner[:4] in seen or keys.isdisjoint(held_by_key.get(here, ())):
                    continue
                seen.add(owner[:4])
                for there, needed in waits.items():
                    cycle = mine.get(key(there), set()) & needed
                    if cycle:
                        raise item_cycle_error(
                            _uid_of(there, uid), sorted(cycle), owner.describe(), _named(held)
                        )
                    further.setdefault(key(there), (there, set()))[1].update(needed)
        pending = further


def _named(holds: dict[str, frozenset[str]]) -> str:
    """What a wait record's holder computes, for a cycle error: the uid of each node (its
    folder under the cache root, ``<step>/<config uid>[/inputs-...]``) and its items."""
    said = []
    for folder, keys in holds.items():
        parts = Path(folder).parts
        uid = "/".join(parts[-3:] if parts[-1].startswith(INPUTS_PREFIX) else parts[-2:])
        shown = ", ".join(repr(k) for k in sorted(keys)[:3])
        said.append(uid if keys == {TASK_KEY} else f"{uid}: item(s) {shown}")
    return "; ".join(said)


def _uid_of(folder: str, default: str) -> str:
    """The uid of the map (or task) this thread computes items of in ``folder``."""
    wanted = folder_key(folder)
    for unit in _IN_FLIGHT.units:
        if folder_key(unit.claims.folder) == wanted:
            return unit.uid
    for claims, uid in _IN_FLIGHT.tasks:
        if folder_key(claims.folder) == wanted:
            return uid
    return default


class JobWait:
    """What a thread computing map items or tasks (a nested call) does while it waits for
    jobs whole, its own or others' it follows (as _OnWait does for claims): gives back the
    items it has not started (those jobs may need them), and records, in the folder of
    what it holds, that it waits for what those jobs compute, then refuses a cycle through
    them (item x of a map needs task T, whose job needs x: each waited for good)."""

    def __init__(self, uid: str) -> None:
        self.uid = uid  # (named when a cycle goes through no computation of this thread)
        self.records: list[Path] = []
        self.waits: dict[str, set[str]] = {}
        self.holds: dict[str, set[str]] = {}

    @staticmethod
    def wanted() -> bool:
        """Whether this thread computes map items or tasks (else it holds nothing)."""
        return bool(_IN_FLIGHT.units or _IN_FLIGHT.tasks)

    def __call__(self, waits: dict[str, set[str]]) -> None:
        """Each look while waiting; ``waits``: what the jobs compute (keys by folder)."""
        if not waits or not self.wanted():
            return
        if waits != self.waits:
            give_up_unstarted()  # (once per computation: see _InFlight.give_up)
            self.end()
            self.waits = waits
            holders = _current_items()
            self.holds = {f: keys for f, (_, keys) in holders.items()}
            for claims, _ in holders.values():
                self.records.append(claims.post_wait(waits, self.holds))
        if self.records:
            refuse_cycle(dict(self.waits), self.holds, self.uid)

    def end(self) -> None:
        while self.records:
            Claims.end_wait(self.records.pop())


def _current_items() -> dict[str, tuple[Claims, set[str]]]:
    """The items the computations of this thread compute now (and the results of the
    tasks it computes), by folder (with the claims of that folder)."""
    out: dict[str, tuple[Claims, set[str]]] = {}
    for unit in _IN_FLIGHT.units:
        at, calling = unit.at, unit.calling
        if at is not None and at() < len(unit.uids):
            where = os.fspath(unit.claims.folder)
            out.setdefault(where, (unit.claims, set()))[1].add(unit.uids[at()])
        elif calling is not None:  # (a method being called: a list's items, computed then)
            keys = calling()
            if keys:
                where = os.fspath(unit.claims.folder)
                out.setdefault(where, (unit.claims, set()))[1].update(keys)
    for claims, _ in _IN_FLIGHT.tasks:
        out.setdefault(os.fspath(claims.folder), (claims, set()))[1].add(TASK_KEY)
    return out


def load_output(source: Node | Value | Group, drop_damaged: bool = False) -> tp.Any:
    """What an input receives: a value, a task's result, a map's outputs (in order), or
    the list of these for a group. ``drop_damaged``: a task of a run reads it (never a
    plan, explain or status): an upstream output in mode retry that no longer decodes is
    removed, for the run to compute it again."""
    if isinstance(source, Value):
        return source.value
    if isinstance(source, Group):
        outputs = [load_output(s, drop_damaged) for s in source.sources]
        return outputs if source.keys is None else dict(zip(source.keys, outputs))
    try:
        if source.kind == "map":
            return store.map_outputs(source)
        if _upstream_state(source) == "missing":
            raise UpstreamMissing(
                _recomputed_meanwhile(source)
                or f"upstream {source.uid} has no cached result (upstream failed?)"
            )
        return store.task_result(source)
    except UpstreamFailed:
        raise
    except Exception as error:  # (which upstream node, for the reader's message)
        if getattr(error, store.INPUT_SOURCE, None) is None:
            setattr(error, store.INPUT_SOURCE, source)
            if drop_damaged and source.mode == "retry" and is_damaged_payload(error):
                store.drop_damaged(source, error)  # (the run computes it again)
        raise


def _inputs(node: Node) -> dict[str, tp.Any]:
    return {name: load_output(source, drop_damaged=True) for name, source in node.inputs}


def _run_task(unit: Unit) -> Report:
    node = unit.node
    folder = node.folder
    if folder is None:  # no cache on disk: compute in place, RAM only
        value = node.function(**_inputs(node))
        with node.cache.write():
            if TASK_KEY in node.cache:
                del node.cache[TASK_KEY]
            node.cache[TASK_KEY] = value
        return Report(computed=1)
    claims = Claims(folder, job_alive=registry.slurm_job_alive, permissions=node.cache.permissions)
    forced = unit.action == "force"
    retrying = unit.action == "retry" or node.mode == "retry"
    cache = node.cache

    def reusable_error() -> bool:
        # (an error of its own; "upstream failed" is computed again; under retry, only an
        # error computed since this run asked)
        if store.cache_upstream_failed(cache):
            return False
        if retrying:
            return store.computed_since(cache, unit.asked_at)
        return unit.action == "compute"

    while True:
        # (a miss relies on this thread's last read of the folder, e.g. the plan's a moment
        # ago, without listing it again: the claim is followed by a fresh look anyway)
        with cache.relying_on_last_read():
            state = store.task_state(node)
        if state == "done" and not forced and not (retrying and store.result_damaged(node)):
            return Report(reused=1)
        if state == "error" and reusable_error():
            return Report(reused=1)
        with interrupts.deferred() as window:  # (Ctrl-C held back while claiming)
            claim = claims.claim_one(TASK_KEY)
            if claim.mine:
                compute = functools.partial(
                    _compute_claimed, node, unit, forced, reusable_error, claims
                )
                return window.guard(claim, compute)
        if claim.reentered:
            raise self_call_error(node.uid)
        on_wait = _wait_message(node)
        try:
            claims.wait([TASK_KEY], _task_done(node, forced), on_wait=on_wait)
        finally:
            on_wait.end()
        # a computation started before this force (another process's, of older code
        # maybe) is not it: computed again, unless this instance's force was done
        # meanwhile (another thread of it)
        forced = forced and (unit.after_running_job or not node.force_state.get("done"))


def _compute_claimed(
    node: Node, unit: Unit, forced: bool, reusable_error: tp.Callable[[], bool], claims: Claims
) -> Report:
    """Compute a task whose claim this worker holds (unless done meanwhile)."""
    _prepared_again(node)
    state = store.task_state(node, refresh=True)
    retrying = unit.action == "retry" or node.mode == "retry"
    if state == "done" and not forced and not (retrying and store.result_damaged(node)):
        return Report(reused=1)
    if state == "error" and reusable_error():
        return Report(reused=1)
    if state != "missing":
        del node.cache[TASK_KEY]
    _IN_FLIGHT.tasks.append((claims, node.uid))  # (a wait of its method says it holds it)
    try:
        report = _compute_task(node)
    finally:
        _IN_FLIGHT.tasks.pop()
    if forced:  # (before the claim goes: a thread of this instance waiting for it)
        node.force_state["done"] = True
    return report


# what a node folder holds from its preparation on: a config's folder, a call's with inputs
_PREPARED_FILES = ("uid.yaml", "inputs.yaml")


def _prepared_again(node: Node) -> None:
    """The yaml files of a node folder a clean removed after the scheduler prepared it
    (idle then: rightly removed), made again by the claim just taken there: written back
    before the result (else ``exca list`` did not show the entry)."""
    folder = node.folder
    if folder is None or node.prepare is None:
        return
    if not any(os.path.exists(f"{folder}/{name}") for name in _PREPARED_FILES):
        node.prepare()


def _written_back(node: Node) -> None:
    """_prepared_again once the outcome is stored, for config.yaml too (clear_job()
    removes it, not uid.yaml); a file it cannot write is no failure of the task."""
    folder = node.folder
    if folder is None or node.prepare is None:
        return
    if os.path.exists(f"{folder}/{_CONFIG_FILE}") or os.path.exists(f"{folder}/inputs.yaml"):
        return  # (a call with inputs: its config's files are its config folder's)
    try:
        node.prepare()
    except Exception as error:  # (its outcome is stored: not failed by a file beside it)
        logger.warning("%s: could not write its yaml files back: %s", node.uid, error)


_CONFIG_FILE = "config.yaml"


def _task_done(node: Node, forced: bool) -> tp.Callable[[list[str]], list[str]]:
    def done(keys: list[str]) -> list[str]:
        return keys if store.task_state(node, refresh=True) != "missing" else []

    return done


def _provenance(node: Node) -> dict[str, tp.Any]:
    """When and from which upstream entries a result is computed (plans use it to flag
    results whose upstream was recomputed since as stale)."""
    upstream = {}
    for source in node.upstream:
        if source.kind == "task":
            entry = source.cache.entry(TASK_KEY)
            if entry is not None:
                upstream[source.uid] = store.entry_ref(entry)
        elif source.kind == "map":
            upstream.update(_map_provenance(source))
            upstream[source.path] = MAP_REF
    # (which job computed it, None: no job: `exca list` shows the job that made a result)
    # (unrounded: computed_since compares it with when a retry asked, which may be a
    # fraction of a millisecond away)
    meta: dict[str, tp.Any] = {"t": time.time(), "up": upstream, "job": _job_id()}
    if meta["job"] is not None:  # (and its kind: ids of two kinds do not compare)
        meta["cl"] = _JOB[1]
    code = codeprint.digest(codeprint.method_function(node.function))
    if code is not None:  # (a method of __main__: see codeprint)
        meta[codeprint.CODE_KEY] = code
    return meta


def _job_id() -> str | None:
    """The id of the submitit job this process runs (as its records name it), else None
    (its kind, "slurm", "local"..., then in ``_JOB[1]``)."""
    if not _JOB_UNIT:
        return None
    if not _JOB:
        try:
            import submitit

            environment = submitit.JobEnvironment()
            _JOB.extend([str(environment.job_id), str(environment.cluster)])
        except Exception:  # (not a submitit job after all)
            _JOB.extend([None, None])
    return _JOB[0]


_JOB: list[str | None] = []  # (memoized: one job per process; its id and kind)


# a map's place in provenance, under its folder's path (its items are cached there, whichever
# node computed them): recorded for `clean --downstream` (a plan's staleness check compares
# task entries only: a map has no single entry to compare)
MAP_REF = "map"


def _map_provenance(source: Node) -> dict[str, str]:
    """The upstream entries a map node's items were computed from (a map fed by a task
    records its entry with each item): what fed the map fed this node too, so a forced
    task makes what follows its map stale."""
    out: dict[str, str] = {}
    if not isinstance(source.items, Node) and not source.chained:
        return out
    try:
        uids = store.map_item_uids(source)
    except Exception:  # (the map's items cannot be read: nothing to record)
        return out
    cache = source.cache
    cache.refresh()
    # (the records as kept in memory, their metadata read with meta_of: entries_info
    # copies each record whose metadata is kept as bytes; a run of items of one writer
    # shares one metadata object, looked at once)
    last: tp.Any = None
    for info in cache.records(dict.fromkeys(uids)):
        meta = meta_of(info) if info is not None else None
        if meta is last:
            continue
        last = meta
        if isinstance(meta, dict) and isinstance(meta.get("up"), dict):
            out.update(meta["up"])
    return out


def _compute_task(node: Node) -> Report:
    meta: dict[str, tp.Any] | None = None
    outer = sys.exc_info()[1]  # (handled by the callers: not the task's, see _cached_error)
    try:
        check_upstream(node)
        try:
            inputs = _inputs(node)
        except UpstreamFailed:
            raise
        except Exception as error:  # e.g. a map item's cached error: not this node's own
            raise UpstreamFailed(
                f"{node.uid} did not run: an input could not be read "
                f"{store.unreadable_input(error)}"
            ) from error
        # (once the inputs are read: the upstream entries they came from, not those this
        # process knew before, replaced meanwhile by a forced upstream)
        meta = _provenance(node)
        ranks.announce(node.uid, None)  # (a task computed here has a folder)
        value = node.function(**inputs)
        ranks.check_other_ranks(node.uid)  # (a rank that raised: its error is cached)
    except KeyboardInterrupt:
        if node.folder is not None and not _JOB_UNIT:  # (a job's record and log tell)
            # (nothing cached: else `exca list` showed a bare "empty")
            how = "KeyboardInterrupt" if meta is not None else "KeyboardInterrupt (before it ran)"
            registry.note_interrupted(node.folder, [TASK_KEY], how, None, node.cache.permissions)
        raise
    except SystemExit as exiting:  # (nothing cached: the next call computes it)
        if meta is not None and not _JOB_UNIT and not getattr(exiting, _EXIT_NOTED, False):
            # (in this process it propagates as it is, cluster None or debug, named as a
            # map's item is; a job's log says it instead, see run_job_unit)
            setattr(exiting, _EXIT_NOTED, True)  # (the innermost task's, for nested calls)
            exiting.add_note(
                f"exca: the method of {node.label or node.uid} called "
                f"sys.exit({exiting.code!r}) (nothing is cached: the next call computes it)"
            )
        raise
    except Exception as error:
        if _closed_output(error):
            raise  # (not the method's failure: nothing cached)
        if meta is None:
            meta = _provenance(node)
        failure = _job_timeout(node.uid, error) or error
        _refuse_if_withdrawn(node)
        _log_failure(node.uid, failure)
        node.cache.refresh()
        if TASK_KEY not in node.cache:  # (see below)
            with node.cache.write():
                node.cache.put(TASK_KEY, _cached_error(failure, outer), meta=meta)
            _stored(node)
        if failure is not error:
            raise failure from error
        raise
    _refuse_if_withdrawn(node)
    try:
        # what was written meanwhile counts: e.g. a job cancelled while this process ran
        # on (Slurm waits before killing it) has its failure cached by who waited for it
        node.cache.refresh()
        with node.cache.write():
            node.cache.put(TASK_KEY, value, meta=meta)
    except OSError:  # (disk full, permissions...: not the result's fault, nothing cached)
        raise
    except Exception as error:
        node.cache.refresh()
        if isinstance(error, ValueError) and TASK_KEY in node.cache:
            # written meanwhile by a worker thought dead (e.g. orphan of a cancelled job)
            logger.warning(
                "%s was written by another process meanwhile (a worker thought dead, or the "
                "failure of this cancelled job); keeping that entry",
                node.uid,
            )
            return Report(computed=1)
        # a result the cache cannot store: its error is cached (the same result would come
        # again), naming the cause
        failure = _unstorable(f"the result of {node.uid}", value, node.cache, error)
        _log_failure(node.uid, failure)
        with node.cache.write():
            node.cache.put(TASK_KEY, CachedError.from_exception(failure), meta=meta)
        _stored(node)
        raise failure from error
    _refuse_if_withdrawn(node, written=True)  # (withdrawn while it wrote: removed again)
    _stored(node)
    return Report(computed=1)


_EXIT_NOTED = "exca_exit_noted"  # (a SystemExit a task's method raised, noted already)


def _stored(node: Node) -> None:
    """A task's outcome was stored: its node records what it was computed with (a
    file it cannot write is no failure of the task), and its folder's yaml files that a
    clear_job() or a clean of another process removed while it computed are written
    back (without config.yaml, ``exca list`` and iter_cached() missed the entry)."""
    _written_back(node)
    # (a note of a call interrupted before: done now; notes are in the folder's jobs/,
    # which the listing made before the store, under this worker's claim, shows)
    listed = node.cache.listed_names()
    if node.folder is not None and (listed is None or registry.JOBS_DIR in listed):
        registry.drop_finished_interruptions(node.folder, node.cache.missing)
    if node.after_store is not None:
        try:
            node.after_store()
        except OSError as error:
            logger.warning("%s: could not record its config next to it: %s", node.uid, error)


_LOGGED = "__exca_logged__"


_JOB_UNIT: list[str] = []  # in a submitit job's process: the uid of the job's unit
_TOLD_TO_STOP: list[bool] = []  # in a submitit job's process: SIGTERM or SIGINT received
_PREEMPTED: list[bool] = []  # in a Slurm job's process: submitit's preemption signal received


def _watch_stop_signals() -> None:
    """In a submitit job's process, note SIGTERM (scancel, clear_job(), preemption, the
    time limit) before submitit's handler, which ignores it until Slurm's SIGKILL, and
    SIGINT (how a local job is cancelled; a method may catch the KeyboardInterrupt): a
    task finishing meanwhile must not store its outcome if clear_job() withdrew it."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return
    for kind in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(kind)
        if previous is None:  # (a handler not installed from Python: left alone)
            continue

        def noted(signum: int, frame: tp.Any, previous: tp.Any = previous) -> None:
            _TOLD_TO_STOP.append(True)
            if callable(previous):
                previous(signum, frame)
            elif previous == signal.SIG_DFL:  # (no handler of submitit's: the default)
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        with contextlib.suppress(ValueError, OSError):
            signal.signal(kind, noted)
    _run_on_past_time_limit_warning()


def _run_on_past_time_limit_warning() -> None:
    """In a Slurm job's process: submitit asks Slurm for its signal (USR2) 90 s before the
    time limit (``--signal=USR2@90``; Slurm may send it up to 60 s earlier still). The
    tasks of a job step started by srun (``slurm_use_srun=True``, every multi-task job)
    get it, and submitit's handler, finding the job "timed-out" and exca's function not
    checkpointable, raised inside the method: the job failed 1.5 to 2.5 minutes before its
    limit, said to have reached it (rank 0 only: the other ranks ran on, for nothing),
    while without srun the python never gets it and runs until Slurm's limit. Now that
    warning is logged and ignored: the method runs until Slurm stops the job at its limit
    (state TIMEOUT), with or without srun, on every rank. A signal submitit does not take
    for the time limit (a preemption's) still goes to its handler, which requeues the job."""
    import signal

    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":  # (local: see _job_timeout)
        return
    try:
        import submitit

        kind = submitit.JobEnvironment._usr_sig()  # (USR2, or SUBMITIT_PREEMPT_SIGNAL)
    except Exception:  # (an unknown SUBMITIT_PREEMPT_SIGNAL: submitit's handler failed too)
        return
    previous = signal.getsignal(kind)
    # (submitit's SignalHandler: its own rule decides "timed-out" or "preempted")
    timed_out = getattr(getattr(previous, "__self__", None), "has_timed_out", None)
    if not callable(previous) or not callable(timed_out):
        return

    def warned(signum: int, frame: tp.Any) -> None:
        try:
            near_limit = bool(timed_out())
        except Exception:  # (its logging, in a signal handler: the time limit, likely)
            near_limit = True
        if not near_limit:
            _PREEMPTED.append(True)  # (its sys.exit(-1) after requeuing: not the method's)
            try:
                previous(signum, frame)  # preempted: submitit requeues the job
            except (subprocess.SubprocessError, OSError) as error:  # (its `scontrol requeue`)
                _requeue_failed(error)
            return
        with contextlib.suppress(Exception):  # (logging from a signal handler)
            logger.warning(
                "Slurm's signal %s: this job's time limit is near; the method runs on "
                "until Slurm stops the job at its limit (exca does not checkpoint it: "
                "nothing is gained by stopping sooner)",
                signal.Signals(signum).name,
            )

    with contextlib.suppress(ValueError, OSError):
        signal.signal(kind, warned)


def _requeue_failed(error: Exception) -> tp.NoReturn:
    """submitit's ``scontrol requeue`` of a preempted job failed (most often killed by the
    SIGTERM Slurm sends the job it is requeuing, before it could exit), or could not run. Raised inside the
    method, that error was cached as the config's failure: it is not the method's. The job
    ends without a result instead, as after a requeue; requeued or not, the next call finds
    no result and computes the config again."""
    with contextlib.suppress(Exception):  # (a stderr closed by the method: unsaid)
        print(
            f"exca: this job was preempted and submitit's requeue of it failed ({error}): "
            "the job ends without its result (Slurm requeues it, or the next call submits "
            "it again)",
            file=sys.stderr,
            flush=True,
        )
    sys.exit(-1)


def _refuse_if_withdrawn(node: Node, written: bool = False) -> None:
    """A task whose job was withdrawn stores nothing: it was told to stop (SIGTERM,
    SIGINT) and its record is gone (clear_job() removes it, then cancels). A job preempted, requeued or out of
    time keeps its record: its outcome stands. ``written``: checked again after storing
    (clear_job() may have come while a big result was written): removed then."""
    if not _TOLD_TO_STOP or node.folder is None or node.uid not in _JOB_UNIT:
        return  # (a task computed inside the job's own: the job's record is not there)
    job_id = _job_id()
    if job_id is None or registry.recorded(node.folder, job_id):  # (None: not a job after all)
        return
    if written:
        node.cache.refresh()
        with contextlib.suppress(KeyError), node.cache.write():
            del node.cache[TASK_KEY]
    raise JobStopped(
        f"{node.uid}: its job {job_id} was cancelled and withdrawn (clear_job()) while it "
        "ran: its outcome is not stored"
    )


def _log_failure(uid: str, failure: BaseException) -> None:
    """SPEC: a task's failure is logged, then cached and re-raised (a job array or a
    detached run goes on without raising it; a job's log holds it). Once per exception: a
    task calling a failing task fails with the same one."""
    if isinstance(failure, UpstreamFailed) or getattr(failure, _LOGGED, False):
        return  # (an upstream node's failure: logged there)
    # the job's own task: submitit logs its traceback right after (not twice in the log)
    own = uid in _JOB_UNIT
    logger.warning("%s failed (its error is cached)", uid, exc_info=None if own else failure)
    with contextlib.suppress(Exception):  # (an exception type refusing new attributes)
        setattr(failure, _LOGGED, True)


def _reached_time_limit(error: Exception) -> bool:
    """Whether ``error`` is submitit's time-limit signal, raised in the method's frame: not
    the method's failure (the same type raised by the method itself is: e.g. a job of its
    own that died)."""
    kind = type(error)
    return (
        kind.__name__ == "UncompletedJobError"
        and kind.__module__.startswith("submitit")
        and "timed-out" in str(error)
    )


def _closed_output(error: Exception) -> bool:
    """Whether ``error`` is a write to this process's closed stdout or stderr (``python
    run.py | head``: the reader left): the terminal's doing, not the method's failure, so
    not cached (a later call would raise it again, with its output read this time)."""
    if not isinstance(error, BrokenPipeError):
        return False
    import select

    for stream in (sys.stdout, sys.stderr):
        try:
            # (a pipe whose reader left polls as an error; a flush may find nothing to write)
            poller = select.poll()
            poller.register(stream.fileno(), select.POLLOUT)
            # (POLLHUP: how some systems, macOS among them, say it of a pipe)
            if any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0)):
                return True
        except Exception:  # (no file descriptor: replaced by the method, or closed)
            continue
    return False


def _job_timeout(uid: str, error: Exception) -> Exception | None:
    """The error of a job stopped at its time limit (the same error a task gets on Slurm,
    where the job is killed instead), when ``error`` is submitit's signal."""
    if not _reached_time_limit(error):
        return None
    from .errors import JobFailedError, retry_hint

    job_id = _job_id()
    job = f"job {job_id}" if job_id else "its job"
    # (the hint as on Slurm, where the caller describes the job that timed out)
    how = f"{job} reached its time limit (timeout_min; submitit: {error})"
    return JobFailedError(f"{uid} not computed: {retry_hint(how)}")


def _unstorable(what: str, value: tp.Any, cache: CacheDict[tp.Any], error: Exception) -> Exception:
    """The error of an output the cache cannot store (of the same type, when it can be built:
    ``except`` clauses and retries keep working)."""
    return unsendable(what, value, f"cannot be stored in {cache.folder}", error)


def unsendable(what: str, value: tp.Any, fate: str, error: Exception) -> Exception:
    """The error of an output that cannot be pickled to be stored or sent (``fate``: what
    could not be done with it), naming the part that does not pickle."""
    message = f"{what} {fate} ({type(value).__name__}): {error}"
    path = _unpicklable_part(value) if "pickle" in str(error) else ""
    if path:
        message += (
            f" (the part that cannot be pickled: value{path}; return what it is made "
            "of instead, e.g. a state dict or a file path)"
        )
    try:
        failure: Exception = type(error)(message)
    except Exception:
        failure = RuntimeError(message)
    return failure


def _unpicklable_part(value: tp.Any, depth: int = 6) -> str:
    """Where in a value the part that does not pickle is (``['model'].net``), or "" (with
    cloudpickle, as the Pickle format: a lambda or a class of a script pickles)."""
    import cloudpickle

    if depth == 0:
        return ""
    if isinstance(value, dict):
        children: tp.Iterable[tuple[str, tp.Any]] = ((f"[{k!r}]", v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        children = ((f"[{i}]", v) for i, v in enumerate(value))
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        children = ((f".{k}", v) for k, v in vars(value).items())
    else:
        return ""
    for where, child in children:
        try:
            cloudpickle.dumps(child)
        except Exception:
            return where + _unpicklable_part(child, depth - 1)
    return ""


# --- maps ---------------------------------------------------------------------------------
def _run_map(unit: Unit, progress: ProgressCallback | None) -> Report:
    report = Report()
    try:
        _run_map_unit(unit, progress, report)
        if report.computed or report.errors:
            _renew_versions(unit.node)
        if unit.node.folder is not None:  # (notes of calls interrupted before: done now?)
            registry.drop_finished_interruptions(
                unit.node.folder, unit.node.cache.missing, unit.uids or ()
            )
        return report
    except (KeyboardInterrupt, SystemExit) as interrupt:
        # (what it computed before is written and kept: its job's log says how many, the
        # outermost map's of this process for nested calls, as for INTERRUPTED_ITEM)
        done = report.computed + report.errors
        setattr(interrupt, CACHED_ITEMS, (done, len(unit.uids or ())))
        # (not the map of this job: its record tells; a map a task's job called: noted)
        if unit.node.uid not in _JOB_UNIT and unit.node.folder is not None and unit.uids:
            # (a call where it was made: nothing else tells `exca list` it did not finish)
            how = type(interrupt).__name__
            if isinstance(interrupt, SystemExit):
                how = f"sys.exit({interrupt.code!r})"
            item = getattr(interrupt, INTERRUPTED_ITEM, None)
            cached = report.reused + report.waited + done
            left = None  # (the items not cached now: what a later call has to finish)
            with contextlib.suppress(Exception):
                left = unit.node.cache.missing(list(unit.uids))
            registry.note_interrupted(
                unit.node.folder,
                list(unit.uids),
                how,
                item,
                unit.node.cache.permissions,
                cached,
                left,
            )
        raise


_UNSEEN = object()
VERSIONS_KEY = "sv"  # (an item's meta: the sub-config versions it was computed with)


def _versions_mark(node: Node) -> str | None:
    """``node.versions_mark()``; None when it cannot be made (e.g. in a job, an infra of a
    class of __main__ that does not find its method): its items are then not marked, and
    the folder's full-uid.yaml is not renewed (its warning stays, as before)."""
    if node.versions_mark is None:
        return None
    try:
        return node.versions_mark()
    except Exception as error:  # (a record of versions is no reason to fail the items)
        logger.debug("%s: no sub-config versions mark: %s", node.uid, error)
        return None


def _renew_versions(node: Node) -> None:
    """A map's items share their folder's full-uid.yaml: when it records other sub-config
    versions, it is rewritten with today's only once every item there was computed under
    them (marked so, see _compute_from), e.g. all forced again; until then reusing them
    warns. A scan of the folder's records, only while the versions differ."""
    if node.after_store is None:
        return
    mark = _versions_mark(node)
    if mark is None:
        return
    cache = node.cache
    keys = cache.keys()  # (read anew: what other processes wrote too)
    last: tp.Any = _UNSEEN
    for info in cache.records(keys):
        meta = meta_of(info) if info is not None else None
        if meta is last:  # (a run of items of one writer shares its meta)
            continue
        last = meta
        if not isinstance(meta, dict) or meta.get(VERSIONS_KEY) != mark:
            return
    try:
        node.after_store()
    except OSError as error:  # (a cache shared read-only: the warning stays)
        logger.warning("%s: could not record its sub-config versions: %s", node.uid, error)


def _run_map_unit(unit: Unit, progress: ProgressCallback | None, report: Report) -> Report:
    node = unit.node
    assert unit.items is not None and unit.uids is not None
    by_uid = dict(zip(unit.uids, unit.items))
    given = (unit.uids, unit.items)
    forced_by = unit.forced_by
    if forced_by:
        node = _shared_force_state(node, forced_by)
    if unit.action == "compute" and not forced_by and node.cache.read_just_now:
        # (the plan found these missing a moment ago, on the read this thread still relies
        # on: not looked up again; the claim's refresh looks again before computing)
        # (each uid once: the unit's own list, not a copy the GC walks too)
        todo = unit.uids if len(by_uid) == len(unit.uids) else list(by_uid)
    else:
        todo = _map_todo(node, list(by_uid), unit.action, forced_by)
    report.reused = len(by_uid) - len(todo)
    if node.folder is None:
        _compute_items(node, todo, by_uid, unit.action, report, progress, forced_by, given=given)
        return report
    claims = Claims(
        node.folder, job_alive=registry.slurm_job_alive, permissions=node.cache.permissions
    )
    action = unit.action
    forced_again = False  # (the items a forced unit waited for: computed again, once)
    while todo:
        if _IN_FLIGHT.units:  # (a nested call: items an enclosing one has not started)
            _give_up_items(node.folder, todo)
        left: list[str] = []  # (given up while computing: claimed again below)
        # (Ctrl-C held back while claiming and releasing: else the claim file stayed)
        with interrupts.deferred(hold=False) as window:
            claim = claims.claim(todo, window, distinct=True)  # (each uid once: see above)

            def compute(claim: Claim = claim, action: str = action, left: list[str] = left) -> None:
                mine = claim.mine
                if mine:
                    _prepared_again(node)
                    with node.cache.frozen_cache_folder():  # (one read: what others wrote)
                        node.cache.refresh()
                        # (mine: the claim's keys, each once)
                        mine = _kept_if_all(
                            mine, _map_todo(node, mine, action, forced_by, distinct=True)
                        )
                    in_flight = _InFlight(claims, claim, mine, node.uid)
                    left.extend(
                        _compute_items(
                            node,
                            mine,
                            by_uid,
                            action,
                            report,
                            progress,
                            forced_by,
                            in_flight,
                            given,
                        )
                    )

            window.guard(claim, compute)
        if left:  # (then waits for what others hold, if they still do)
            if action == "retry" and unit.asked_at:  # (an error cached since this retry
                # asked: its answer, e.g. the nested call's that needed the item; a unit
                # without the time, e.g. detached.py's, retries them all as before)
                node.cache.refresh()
                left = [k for k in left if not _new_error(node.cache, k, unit.asked_at)]
            todo = list(dict.fromkeys([*left, *claim.busy, *claim.reentered]))
            continue
        if claim.reentered:
            # (a method calling itself: what the enclosing calls computed is written first)
            for flush in _UNWRITTEN.by_folder.get(str(node.folder), ()):
                flush()
            node.cache.refresh()
            again = _map_todo(node, claim.reentered, "compute")
            # (an item needing itself, through others, is computed here again once, and
            # refused when that computation needs it again: the item an enclosing method
            # is at may be computed already, by a method computing several items before
            # yielding (returning a list), so that an item needing it is no cycle)
            redoing = _UNWRITTEN.redoing.setdefault(str(node.folder), set())
            cycle = sorted(redoing.intersection(again))
            if cycle:
                raise self_call_error(f"{node.uid} (item {cycle[0]!r})")
            if again:
                logger.warning(
                    "%d item(s) of %s are being computed by an enclosing call of this "
                    "thread; computing them here too",
                    len(again),
                    node.uid,
                )
            redoing.update(again)
            try:
                _compute_items(node, again, by_uid, "compute", report, progress)
            finally:
                redoing.difference_update(again)
                if not redoing:  # (as by_folder: no key left per folder)
                    _drop_if_same(_UNWRITTEN.redoing, str(node.folder), redoing)
        if not claim.busy:
            break
        busy = list(claim.busy)
        report.waited += len(busy)
        # (forced: what another worker computes under its own decision, e.g. another
        # process's force that had rewritten some when this one decided, is waited for
        # until its claim goes, then forced here too, once; the run then finds each
        # output replaced by this force)
        refresh = action == "force" and not forced_again
        if refresh:
            done = _items_forced(node, forced_by)
        elif action == "retry":  # (an error cached before this retry asked: retried still)
            done = _items_done(node, retried_before=unit.asked_at)
        else:
            done = _items_done(node)
        on_wait = _wait_message(node)
        try:
            todo = claims.wait(busy, done, on_wait=on_wait)
        finally:
            on_wait.end()
        if refresh:
            forced_again = True
        elif action != "retry":
            action = "compute"  # what others computed meanwhile is fresh
    return report


def _kept_if_all(uids: list[str], kept: list[str]) -> list[str]:
    """``kept``, a filtered copy of ``uids``: ``uids`` itself when nothing was filtered out
    (the usual case; one list of n uids fewer for the cyclic GC to walk meanwhile)."""
    return uids if len(kept) == len(uids) else kept


_FORCE_STATES: dict[tuple[str, str], dict[str, tp.Any]] = {}  # (run, node uid): see below


def _shared_force_state(node: Node, run: str) -> Node:
    """A forced map unit in a job or a pool process: its node and the instance its method
    runs on (each unpickled) held force states of their own, and so did each unit of a
    pool process; a call of the map made by the method (an item needing others) forced
    its items under a run of its own, which the unit did not count as its force: the
    items it had given back were computed a second time. As where the run was called,
    they all share one (the submitting instance's jobs it lists are not followed here)."""
    call = node.function
    owner, method = getattr(call, "owner", None), getattr(call, "method", None)
    infra_of = getattr(method, "infra_of", None)
    if owner is None or infra_of is None:
        return node
    runtime = infra_of(owner)._runtime()
    if runtime.force_state is node.force_state:  # (computed in the calling process)
        return node
    key = (run, node.uid)
    state = _FORCE_STATES.get(key)
    if state is None:
        if len(_FORCE_STATES) > 1000:  # (a pool process lives on: forgotten at times)
            _FORCE_STATES.clear()
        unfollowed = ("job", "jobs")
        state = {k: v for k, v in node.force_state.items() if k not in unfollowed}
        _FORCE_STATES[key] = state
    runs = (state, node.force_state, runtime.force_state)  # (forced here by any of them)
    state["runs"] = tuple(dict.fromkeys(r for s in runs for r in s.get("runs", ())))
    if runtime.force_state.get("done"):
        state["done"] = True
    state["job_run"] = run  # (calls of the map made here force under it: see scheduler)
    runtime.force_state, runtime.node = state, None
    shared = copy.copy(node)
    vars(shared)["force_state"] = state
    return shared


def _map_todo(
    node: Node, uids: list[str], action: str, forced_by: str = "", distinct: bool = False
) -> list[str]:
    """The uids of a unit still to compute (``distinct``: given each once)."""
    if action == "force":
        if not forced_by:
            return uids
        runs = node.forcing_runs(forced_by)
        with node.cache.frozen_cache_folder():  # (misses: one folder read, not one each)
            return [u for u in uids if not store.forced_by(node.cache.entry(u), runs)]
    if action != "retry":  # (the present items' records and data files: retry's only)
        with node.cache.frozen_cache_folder():
            return node.cache.missing(uids, distinct=distinct)
    missing, errors = store.item_states(node, uids)
    wanted = set(missing) | set(errors)
    return [u for u in uids if u in wanted]


def _items_forced(node: Node, run: str) -> tp.Callable[[list[str]], list[str]]:
    """Which keys hold an output (or error) forced by this instance (run ``run``, or
    another call of it: another thread's)."""

    def done(keys: list[str]) -> list[str]:
        node.cache.refresh()
        todo = set(_map_todo(node, keys, "force", run))
        return [k for k in keys if k not in todo]

    return done


def _items_done(
    node: Node, retried_before: float | None = None
) -> tp.Callable[[list[str]], list[str]]:
    """Which waited-for items are computed; ``retried_before``: a retry's, to which an
    item's error cached by a computation started before it asked is not (a computation
    started since, e.g. by another retry asked at the same time, is its answer)."""

    def done(keys: list[str]) -> list[str]:
        node.cache.refresh()
        missing = set(node.cache.missing(keys))
        if retried_before is not None:
            missing.update(k for k in keys if _old_error(node.cache, k, retried_before))
        return [k for k in keys if k not in missing]

    return done


def _old_error(cache: CacheDict[tp.Any], key: str, when: float) -> bool:
    """Whether an item holds an error of a computation started before ``when``."""
    return cache.entry_type(key) == "Error" and not store.computed_since(cache, when, key)


def _new_error(cache: CacheDict[tp.Any], key: str, when: float) -> bool:
    """Whether an item holds an error of a computation started at ``when`` or later."""
    return cache.entry_type(key) == "Error" and store.computed_since(cache, when, key)


def _items_provenance(node: Node) -> dict[str, tp.Any] | None:
    """For maps fed by an upstream node, or chaining sub-configs' tasks: where the items
    came from (clean --downstream finds maps computed from a node through it; a plan,
    tasks made stale since)."""
    up: dict[str, tp.Any] = {}
    for chained in node.chained:  # (the sub-config tasks its method read, as a task's)
        entry = chained.cache.entry(TASK_KEY)
        if entry is not None:
            up[chained.uid] = store.entry_ref(entry)
    source = node.items
    if isinstance(source, Node) and source.kind == "map":  # (and what fed that map)
        up.update({**_map_provenance(source), source.path: MAP_REF})
    elif isinstance(source, Node):
        entry = source.cache.entry(TASK_KEY)
        if entry is not None:
            up[source.uid] = store.entry_ref(entry)
    return {"t": round(time.time(), 3), "up": up} if up else None


def _compute_items(
    node: Node,
    uids: list[str],
    by_uid: dict[str, tp.Any],
    action: str,
    report: Report,
    progress: ProgressCallback | None,
    forced_by: str = "",
    in_flight: _InFlight | None = None,
    given: tuple[list[str], list[tp.Any]] | None = None,
) -> list[str]:
    """Compute these items; returns those given up meanwhile (see _InFlight), not
    computed here. ``given``: the unit's uids and items, as by_uid was made of them."""
    if not uids:
        return []
    if in_flight is not None:
        in_flight.uids = uids
        _IN_FLIGHT.units.append(in_flight)
    cache = node.cache
    if cache.is_writing():  # a map method calling itself: write through another instance
        cache = cache.view()
    with cache.write():
        if action in ("force", "retry"):
            cache.delete_many(uids)
        failures = _Failures()
        # (built once: after each item error the method is called again on the rest, a
        # slice of it; rebuilt each time, n items with k errors cost n*k dict lookups)
        if given is not None and len(given[1]) == len(uids) and given[0] == uids:
            items = given[1]  # (all of the unit's, each once, in order: no look-up each)
        else:
            items = [by_uid[u] for u in uids]
        # (the ranges of items left to call the method on, the next one last: a method
        # that raised as it was called, before any output (one returning a list), is
        # called on each half of its items in turn, down to the item that raises alone)
        ranges = [(0, len(uids))]
        try:
            while ranges:
                start, end = ranges.pop()
                if in_flight is not None and in_flight.released:
                    # (the items given back, the last ones, are the unit's to claim again;
                    # those before them are still held here: computed, not dropped, when
                    # the call stopped before them, an item's error or a method raising
                    # as it was called, after a nested call gave back the others)
                    end = min(end, len(uids) - len(in_flight.released))
                    if start >= end:
                        continue
                position = _compute_from(
                    node,
                    cache,
                    uids,
                    items,
                    start,
                    end,
                    report,
                    progress,
                    failures,
                    forced_by,
                    in_flight,
                )
                if position == _HALVES:
                    middle = (start + end) // 2
                    ranges += [(middle, end), (start, middle)]
                elif position < end:
                    ranges.append((position, end))
                if failures.redo is not None:  # (called first: they come first)
                    ranges.append(failures.redo)
                    failures.redo = None
            for (kind, message), first in list(failures.batch_errors.items())[:3]:
                logger.warning(
                    "%s raised (%s: %s) on a batch from item %r, and no item raised it again "
                    "when computed after it: the error is not cached (a batch too large?)",
                    node.label or node.uid,
                    kind,
                    message,
                    first,
                )
        finally:
            if in_flight is not None:
                _IN_FLIGHT.units.remove(in_flight)
            if failures.unlogged:  # (one line per failed item: a flood for many)
                logger.warning(
                    "... and %d more item(s) of %s failed; their errors are cached too",
                    failures.unlogged,
                    node.label or node.uid,
                )
    return [] if in_flight is None else in_flight.released


class _Stop(threading.local):
    """Per thread: the event a pool thread's run sets when it is interrupted (Ctrl-C): a
    map computing in that thread stops at its next item (a thread cannot be interrupted;
    it went on with its whole chunk, and the interpreter waited for it at exit)."""

    event: threading.Event | None = None


STOP = _Stop()


_COMPUTED_ITERATORS: tuple[type, ...] = (type(iter([])), type(iter(())))  # (of a list, a tuple)


def _until_stopped(
    outputs: tp.Iterable[tp.Any], stop: threading.Event, uid: str
) -> tp.Iterator[tp.Any]:
    """The outputs, until ``stop`` is set: then KeyboardInterrupt instead of computing the
    next item (what was computed is written, as after a Ctrl-C)."""
    for output in outputs:
        yield output
        if stop.is_set():
            raise KeyboardInterrupt(f"{uid}: its run was interrupted")


def run_stoppable(
    stop: threading.Event, unit: Unit, progress: ProgressCallback | None = None
) -> Report:
    """``run_unit`` in a pool thread, stopping between two items once ``stop`` is set."""
    if stop is not None and stop.is_set():  # (a unit queued before the interrupt)
        raise KeyboardInterrupt("the run was interrupted before this unit started")
    STOP.event = stop
    try:
        return run_unit(unit, progress)
    finally:
        STOP.event = None


class _Unwritten(threading.local):
    """Per thread: the flushes of the map computations running, by node folder (a map
    method calling itself finds the items its enclosing calls computed, not yet written)."""

    def __init__(self) -> None:
        self.by_folder: dict[str, list[tp.Callable[[], None]]] = {}
        # (the items that an enclosing call holds, computed here again: see _run_map)
        self.redoing: dict[str, set[str]] = {}


_UNWRITTEN = _Unwritten()


def _drop_if_same(store: dict[str, tp.Any], key: str, value: object) -> None:
    """Remove ``store[key]`` if it is still ``value`` (emptied by its last user)."""
    if store.get(key) is value:
        del store[key]


class _InFlight:
    """A map unit's items being computed by this thread, under its claim. A nested call of
    this thread that is about to wait for another worker, or that needs some of the items
    not started yet, makes it give those back (``give_up``): the method stops after the
    item it is computing, unless it takes them back then (``take_back``: those nobody
    took or computed meanwhile), and the unit claims what is left again. (Else two chunk jobs
    whose items need each other's later items waited for each other for good.)"""

    __slots__ = ("at", "calling", "claim", "claims", "flush", "halt", "released", "uid", "uids")

    def __init__(self, claims: Claims, claim: Claim, uids: list[str], uid: str = "") -> None:
        self.claims, self.claim, self.uids = claims, claim, uids
        self.uid = uid  # (the map's: named by a cycle error)
        self.flush: tp.Callable[[], None] | None = None  # (set by _compute_from)
        self.at: tp.Callable[[], int] | None = None  # the position of the item computed now
        # (while the method is being called: the items it computes then and still holds)
        self.calling: tp.Callable[[], list[str]] | None = None
        self.halt: tp.Callable[[], int] | None = None  # stops after the item computed now
        self.released: list[str] = []

    def unstarted(self) -> list[str]:
        """The items the method has not started and holds (a lazy method: after the
        current one; none while the method is being called: it computes them all then, see
        _compute_from)."""
        if self.at is None:
            return []
        gone = set(self.released)
        return [u for u in self.uids[self.at() + 1 :] if u not in gone]

    def give_up(self) -> list[str]:
        """Write what was computed, and give back the claims of the items not started
        (those not given back already: some may have been taken back, see take_back)."""
        if self.halt is None or self.claim.path is None:
            return []
        gone = set(self.released)
        if self.flush is not None:
            self.flush()
        stop = self.halt()
        rest = [u for u in self.uids[stop:] if u not in gone]
        if rest:
            self.claim.give_back(rest, self.claims)
            gone.update(rest)
            self.released = [u for u in self.uids[stop:] if u in gone]
        return rest

    def take_back(self, upto: int, missing: tp.Callable[[list[str]], list[str]]) -> int:
        """Once the wait that made it give up ended: claim again, in order, the items
        given back before ``self.uids[upto]`` that no other claim holds and that are not
        computed meanwhile (``missing`` of the cache, read after they are claimed: a
        worker writes an item before it releases it); the method then goes on to them.
        Returns how many were taken (the first that could not be ends them)."""
        wanted = self.released[: max(0, upto - (len(self.uids) - len(self.released)))]
        if not wanted:
            return 0
        taken = self.claim.take_back(wanted, self.claims)
        if not taken:
            return 0
        new = set(missing(taken))
        count = next((i for i, u in enumerate(taken) if u not in new), len(taken))
        if count < len(taken):  # (computed meanwhile: given back again)
            self.claim.give_back(taken[count:], self.claims)
        self.released = self.released[count:]
        return count


class _Stack(threading.local):
    def __init__(self) -> None:
        self.units: list[_InFlight] = []
        self.tasks: list[tuple[Claims, str]] = []  # (the tasks it computes: claims, uid)


_IN_FLIGHT = _Stack()


def computing_items(folder: Path | None) -> bool:
    """Whether this thread computes items of the map of this folder (a nested call)."""
    return folder is not None and any(u.claims.folder == folder for u in _IN_FLIGHT.units)


def computing_any_items() -> bool:
    """Whether this thread computes items of some map (a nested call)."""
    return bool(_IN_FLIGHT.units)


def _give_up_items(folder: Path, keys: tp.Collection[str]) -> None:
    """Before claiming keys: the enclosing computations of this thread holding some of
    them, not started yet, give up what they have not started (computed here, once)."""
    wanted = set(keys)
    for unit in _IN_FLIGHT.units:
        if unit.claims.folder == folder and not wanted.isdisjoint(unit.unstarted()):
            unit.give_up()


def give_up_unstarted() -> None:
    """Before waiting for another worker: every computation of this thread gives back
    the items it has not started (that worker may need them)."""
    for unit in _IN_FLIGHT.units:
        unit.give_up()


SETUP_ERROR_REPEATS = 3  # the same error on this many items in a row, and no output ever
ITEM_ERRORS_LOGGED = 3  # item errors logged one by one per unit; the others counted


class _Failures:
    """Item errors of one unit in a row, while the method never produced an output for
    this config: the same error on several items then looks like an error of the method's
    setup (a model that does not load), not of those items."""

    def __init__(self) -> None:  # (a plain class: see Report)
        self.last: tuple[str, str] | None = None  # (type, message) of the last item error
        self.repeats = 0  # how many items in a row got it
        # errors of a batch whose first item then computed alone, by (type, message): the
        # first item; an item that raises it again later is at fault (then forgotten)
        self.batch_errors: dict[tuple[str, str], str] = {}
        self.logged = 0  # item errors logged one by one (the first ITEM_ERRORS_LOGGED)
        # (items a method returning a list computed for nothing before the one that
        # raised: their range, called again before those after it; see _compute_from)
        self.redo: tuple[int, int] | None = None
        self.unlogged = 0  # ... and the others, counted in one line at the end of the unit


_FIRST = operator.itemgetter(0)
_HALVES = -1  # (_compute_from: the method raised as it was called, on several items)


class _Watched(list[tp.Any]):
    """The items a map method is called on, telling how far it read them: a method
    reading them once, one by one (``for item in items``), that raised had read no later
    item, so the error is the last item's. Any other reading (an index, a slice, a second
    loop...) makes it unknown: the item is then computed alone (see _compute_from); len
    tells no item (a progress bar's total).
    A list still, for the method; pickled as a plain list."""

    __slots__ = ("_reading", "_times", "other")

    def __init__(self, items: list[tp.Any]) -> None:
        super().__init__(items)
        self.other = False  # read some other way (later items possibly)
        self._reading: tp.Iterator[tp.Any] | None = None  # (the first loop's list iterator)
        # (when the last item was given: its computation's start, recorded with its error)
        self._times: collections.deque[float] = collections.deque(maxlen=1)

    @property
    def read(self) -> int:
        """The items given by the first loop over them."""
        if self._reading is None:
            return 0
        return len(self) - operator.length_hint(self._reading)  # (its index)

    @property
    def read_at(self) -> float:
        return self._times[0] if self._times else 0.0

    def only_read_to(self, index: int) -> bool:
        """Whether the method read items only one by one, up to this one (included)."""
        return not self.other and self.read == index + 1

    def __iter__(self) -> tp.Iterator[tp.Any]:
        if self.read or self.other:
            self.other = True
            return super().__iter__()
        # (iterators chained in C, no bytecode per item: each item taken from the list
        # iterator, whose index tells how many were read, then the time appended)
        reading = self._reading = super().__iter__()
        stamped = map(self._times.append, itertools.starmap(time.time, itertools.repeat(())))
        return itertools.chain(map(_FIRST, zip(reading, stamped)), self._ended())

    def _ended(self) -> tp.Iterator[tp.Any]:
        self.other = True  # (read to its end: an error after that is of no item known)
        yield from ()

    def _other(name: str) -> tp.Any:  # type: ignore[misc]  # (builds the methods below)
        method = getattr(list, name)

        def read_otherwise(self: _Watched, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
            self.other = True
            return method(self, *args, **kwargs)

        read_otherwise.__name__ = name
        return read_otherwise

    for _name in (
        "__getitem__", "__contains__", "__reversed__", "__add__", "__mul__",
        "__rmul__", "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "index",
        "count", "copy", "pop", "sort", "reverse",
    ):  # fmt: skip
        locals()[_name] = _other(_name)
    del _name, _other
    __hash__ = None  # (a list: unhashable)

    def __reduce__(self) -> tuple[tp.Any, ...]:
        self.other = True
        return (list, (list(super().__iter__()),))


def _compute_from(
    node: Node,
    cache: CacheDict[tp.Any],
    uids: list[str],
    all_items: list[tp.Any],
    start: int,
    end: int,
    report: Report,
    progress: ProgressCallback | None,
    failures: _Failures,
    forced_by: str = "",
    in_flight: _InFlight | None = None,
) -> int:
    """Call the method on items[start:end]; write outputs in batches; when the method
    raises, cache the error for the item it was computing (confirmed by computing that
    item alone: a method working on batches raises for a later item). Returns where to
    restart, or _HALVES: the call itself raised, before any output (a method returning a
    list), on several items: which one is at fault is unknown, each half is called."""
    items = all_items[start:end] if start or end < len(all_items) else all_items
    outer = sys.exc_info()[1]  # (handled by the callers: not the items', see _cached_error)
    meta = _items_provenance(node)
    # (an item's error tells when its computation started: a retry asked since computes
    # it again, one asked after reads it; see _old_error, decisions.retrying_jobs)
    error_meta = {"t": time.time(), **(meta or {})}
    if forced_by:
        meta = {**(meta or {}), "forced": forced_by}
    code = codeprint.digest(codeprint.method_function(node.function))
    if code is not None:  # (a method of __main__: see codeprint)
        meta = {**(meta or {}), codeprint.CODE_KEY: code}
    mark = _versions_mark(node)
    if mark is not None:  # (its folder records other sub-config versions)
        meta = {**(meta or {}), VERSIONS_KEY: mark}
    error_meta = {**error_meta, **(meta or {})}
    position = start
    stop = -1  # (given up by a nested call: the method stops after the item at stop - 1)
    batch: list[tuple[str, tp.Any]] = []
    flush_by = time.monotonic() + FLUSH_SECONDS  # (the batch is written by then at the latest)
    call: ranks.Call | None = None  # (rank 0 of a multi-task job: the other ranks follow)

    def at() -> int:
        return position

    def halt() -> int:
        # (in a multi-task job, the other ranks are told where the call stops only once
        # this one knows, at that item: it may take back what it gave, see resumed)
        nonlocal stop
        stop = position + 1
        return stop

    def missing(keys: list[str]) -> list[str]:
        with cache.frozen_cache_folder():  # (one read: what others wrote meanwhile)
            cache.refresh()
            return cache.missing(keys)

    def resumed() -> bool:
        """At the item where a give-up stopped the call (the wait that made it give up
        has ended, in the method's previous item): whether it goes on, the next items
        taken back (else the unit claims them again and calls the method again on them,
        its setup paid again: once per item of a method waiting for a job per item). In a
        multi-task job, the other ranks wait at that item for rank 0 to go on (Call.paced)
        or to stop the call there (ended): they follow what it decided."""
        nonlocal stop
        if in_flight is None:
            return False
        try:
            taken = in_flight.take_back(end, missing)
        except Exception:  # (not the next item's error: that item is not held; the unit
            # claims the rest again, and says such an error of the claims folder there)
            logger.warning("Could not claim again items of %s", node.uid, exc_info=True)
            return False
        if not taken:
            return False
        stop = position + taken if position + taken < end else -1
        return True

    def calling() -> list[str]:
        """The items of this call still held (a method computing its items as it is
        called, returning a list, computes them all then)."""
        return uids[position : stop if stop != -1 else end]

    def ended() -> None:  # (the other ranks stop where this call does)
        if call is not None and position < count:
            call.stop(position - start)

    def flush() -> None:
        nonlocal flush_by
        if batch:
            try:
                cache.set_many(batch, meta=meta, skip_existing=True, owned=True)
            except CacheFolderRemoved as error:  # (not the outputs' fault: none is cached)
                _note_unstored(error, cache, batch[0][0], len(batch))
                batch.clear()  # (lost: never written again, in a folder made anew)
                raise
            except Exception:  # an output that cannot be stored: only its item fails
                _store_one_by_one(node, cache, batch, meta, report, error_meta)
            else:
                report.computed += len(batch)
            if progress is not None:
                progress(len(batch))
            batch.clear()
        flush_by = time.monotonic() + FLUSH_SECONDS

    numpy = imported("numpy")
    ndarray = numpy.ndarray if numpy is not None else None
    in_memory = cache.folder is None  # (RAM keeps the objects: arrays are copied)
    unwritten = _UNWRITTEN.by_folder.setdefault(str(node.folder), [])
    unwritten.append(flush)
    if in_flight is not None:  # (at: once the method returned, see below)
        in_flight.halt, in_flight.flush, in_flight.calling = halt, flush, calling
    # (names bound locally: this loop runs once per item)
    count, immutable, monotonic, append = end, _IMMUTABLE, time.monotonic, batch.append
    snapshot, flush_items = SNAPSHOT_BYTES, FLUSH_ITEMS
    called = False  # (whether the method returned: a list's items are all computed then)
    watched = _Watched([])  # (the items as the method got them: how far it read them)
    try:
        # (announced first: the other ranks make the call too, and a method computing its
        # items as it is called, returning a list, meets them)
        call = ranks.announce(node.uid, uids[start:end], node.folder is not None)
        watched = _Watched(items)
        outputs = _outputs(node, watched)
        called = True
        if in_flight is not None:
            # (not before: a method running as it is called computes its items then, and
            # returns a list; a nested call needing one of them, made meanwhile, found the
            # items after the first unstarted, and the method stopped after its first
            # item: the others' outputs were computed for nothing, then computed again by
            # the next call. A lazy method's body runs only once its outputs are asked for)
            in_flight.at, in_flight.calling = at, None
        # (a pool's thread or process; a lazy iterator's next item is not computed yet, a
        # list's is)
        if STOP.event is not None and not isinstance(outputs, _COMPUTED_ITERATORS):
            outputs = _until_stopped(outputs, STOP.event, node.uid)
        if call is not None:
            outputs = call.paced(outputs, count - start)
        for output in outputs:
            if position >= count:
                return _miscounted(
                    node, cache, uids, start, end, position - len(batch), report, "more", error_meta
                )
            kind = type(output)
            if kind is ndarray and (in_memory or output.nbytes <= snapshot):
                # (a copy: a method may refill one buffer, or keep a way to reach it, a
                # weak reference or memory of its own that the array only views)
                append((uids[position], output.copy()))
            elif kind in immutable:
                append((uids[position], output))
            else:
                append((uids[position], output))
                # (written before the method resumes; without a folder, RAM keeps objects)
                if not in_memory:
                    position += 1
                    flush()
                    if position == stop and not resumed():
                        break
                    continue
            position += 1
            if position == stop and not resumed():
                break
            if len(batch) >= flush_items or monotonic() > flush_by:
                flush()
        if position == stop:  # (the rest was given up: not computed by this method call)
            flush()
            close = getattr(outputs, "close", None)
            if close is not None:
                close()
            return position
        if position >= count:
            # (in the try: a Ctrl-C right after the last output still writes the batch)
            flush()
    except Exception as error:
        ended()  # (before this item is computed alone: another call, which they follow)
        if isinstance(error, CacheFolderRemoved):
            raise  # (no item's error: the call fails, nothing is cached for the items)
        flush()
        if position >= end or isinstance(error, NotIterableOutputs):
            raise
        if _reached_time_limit(error) or _closed_output(error):
            raise  # (the job's time is up, or stdout closed: not this item's error)
        if not called and end - start > 1:  # (no output yet: whose error? see _HALVES)
            if not watched.read or watched.other:
                return _HALVES
            # (it read its items one by one, and raised at one: that one's error; those
            # before it, computed for nothing (no list returned), are called again)
            position = start + watched.read - 1
            if position > start:
                failures.redo = (start, position)
        uid = uids[position]
        if uid in _UNWRITTEN.redoing.get(str(node.folder), ()):
            failures.redo = None
            raise  # (computed again for a nested call: the enclosing one caches its error)
        if end - start > 1 and called and not watched.only_read_to(position - start):
            # (the method had other items, maybe read with this one: is it this one's
            # error? Not asked when it read no later item: computed once, not twice)
            error_meta = {**error_meta, "t": time.time()}  # (the error is alone's, if any)
            alone = _compute_alone(node, cache, uid, all_items[position], meta, report, progress)
            if alone is None:  # (it computed alone: the error was a later item's?)
                failures.batch_errors.setdefault((type(error).__name__, str(error)), uid)
                failures.last, failures.repeats = None, 0
                return position + 1
            # (raised while the batch's error was handled: its implicit context, the same
            # error of the batch, showed twice in the cached traceback)
            _drop_context(alone, error)
            error = alone
        elif end - start > 1:  # (its computation started as the method read it)
            error_meta = {**error_meta, "t": watched.read_at}
        signature = (type(error).__name__, str(error))
        failures.batch_errors.pop(signature, None)  # (this item's: said below)
        failures.repeats = failures.repeats + 1 if signature == failures.last else 1
        failures.last = signature
        cache.put(uid, _cached_error(error, outer), meta=error_meta)
        report.errors += 1
        if failures.logged < ITEM_ERRORS_LOGGED:
            failures.logged += 1
            logger.warning(
                "Item %r of %s failed (%s: %s); the error is cached, other items go on",
                uid,
                node.label or node.uid,
                type(error).__name__,
                error,
            )
        else:
            failures.unlogged += 1
        left = len(uids) - position - 1
        if failures.repeats >= SETUP_ERROR_REPEATS and left and _never_computed(cache, report):
            _setup_failed(node, left, error)
        return position + 1
    except BaseException as interrupt:  # Ctrl-C, SystemExit: what was computed stays computed
        if isinstance(interrupt, KeyboardInterrupt | SystemExit) and position < end:
            # (the item it interrupted, named by a pool's caller and a job's log: see
            # INTERRUPTED_ITEM; the outermost map's of this process, for nested calls)
            setattr(interrupt, INTERRUPTED_ITEM, uids[position])
            setattr(interrupt, INTERRUPTED_MAP, node.label or node.uid)
            if not _JOB_UNIT:
                # (in this process, it propagates as it is: cluster None, debug; not in a
                # job, whose log must end with the interrupt, see errors.interrupt_said)
                did = "was computing"
                if isinstance(interrupt, SystemExit):
                    did = f"called sys.exit({interrupt.code!r}) while computing"
                interrupt.add_note(
                    f"exca: the method of {node.label or node.uid} {did} item {uids[position]!r}"
                )
        flush()
        raise
    finally:
        unwritten.remove(flush)
        if not unwritten:  # (a key per map folder ever computed, kept, grew for good)
            _drop_if_same(_UNWRITTEN.by_folder, str(node.folder), unwritten)
        if in_flight is not None:
            in_flight.at = in_flight.halt = in_flight.flush = in_flight.calling = None
        ended()
    if position < end:
        return _miscounted(
            node, cache, uids, start, end, position - len(batch), report, "fewer", error_meta
        )
    return position


def _drop_context(error: BaseException, handled: BaseException) -> list[BaseException]:
    """Unlink ``handled`` from the exceptions chained to ``error`` (as its implicit
    ``__context__``: raised while it was being handled, by code that never saw it); the
    links the user's code made (``raise ... from``, an error raised in its own except
    block) stay. Returns the exceptions unlinked."""
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    unlinked: list[BaseException] = []
    while todo:
        exc = todo.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        if exc.__context__ is handled:
            exc.__context__ = None
            unlinked.append(exc)
        todo.extend(e for e in (exc.__cause__, exc.__context__) if e is not None)
    return unlinked


def _cached_error(error: BaseException, outer: BaseException | None) -> CachedError:
    """The error to cache, its traceback without ``outer``: an exception the callers
    were handling when the computation started (a call made in an except block), not the
    computation's, though the error got it as its implicit context. The cache outlives
    that handler: every later re-raise and `exca logs` showed it, then "During
    handling". The live error keeps its chain (raised on to that caller)."""
    if outer is None:
        return CachedError.from_exception(error)
    unlinked = _drop_context(error, outer)
    try:
        return CachedError.from_exception(error)
    finally:
        for exc in unlinked:
            exc.__context__ = outer


def _compute_alone(
    node: Node,
    cache: CacheDict[tp.Any],
    uid: str,
    item: tp.Any,
    meta: dict[str, tp.Any] | None,
    report: Report,
    progress: ProgressCallback | None,
) -> Exception | None:
    """Compute one item by itself: None once its output is stored, else its error."""
    error_meta = {"t": time.time(), **(meta or {})}  # (see _compute_from)
    try:
        ranks.announce(node.uid, [uid], node.folder is not None)
        outputs = list(itertools.islice(_outputs(node, [item]), 2))  # (one is expected)
    except Exception as error:
        if (
            _reached_time_limit(error)
            or _closed_output(error)
            or isinstance(error, NotIterableOutputs)
        ):
            raise
        return error
    if len(outputs) != 1:
        return RuntimeError(
            f"{node.label or node.uid} did not yield exactly once per item: it yielded "
            f"{'more' if outputs else 'no'} output(s) for item {uid!r} alone"
        )
    output = outputs[0]
    numpy = imported("numpy")
    if cache.folder is None and numpy is not None and type(output) is numpy.ndarray:
        output = output.copy()  # (kept in RAM: a method may refill one buffer)
    _store_one_by_one(node, cache, [(uid, output)], meta, report, error_meta)
    if progress is not None:
        progress(1)
    return None


def _never_computed(cache: CacheDict[tp.Any], report: Report) -> bool:
    """Whether the method never produced an output for this config (in this unit, or
    cached before): its errors so far may be its setup's, not its items'."""
    if report.computed:
        return False
    return all(info.get("#type") == "Error" for info in cache.entries_info().values())


def _setup_failed(node: Node, left: int, error: Exception) -> tp.NoReturn:
    """The method raised the same error for several items in a row and never produced an
    output: calling it once per remaining item would repeat its setup (a model load...)
    each time. Its error is raised; the items it got are cached as failed (mode="retry"
    computes them again), the rest of the unit is left missing (the next call computes
    them, stopping the same way if nothing changed)."""
    logger.warning(
        "%s raised the same error (%s: %s) for %d items in a row and never produced an "
        "output: an error of its setup? Stopped; %d item(s) left missing (computed by "
        "the next call)",
        node.label or node.uid,
        type(error).__name__,
        error,
        SETUP_ERROR_REPEATS,
        left,
    )
    if not _JOB_UNIT:  # (a job's error gets its own note: how many items it left)
        error.add_note(  # (the log line alone was easy to miss in a notebook)
            f"exca: {node.label or node.uid} raised it for {SETUP_ERROR_REPEATS} items in a "
            f"row and never produced an output (its setup?): stopped, {left} item(s) left "
            "missing (the next call computes them)"
        )
    raise error


class NotIterableOutputs(TypeError):
    """A map method that gives no iterable (a forgotten ``yield``): the method's error,
    not one of each item."""


def _outputs(node: Node, items: list[tp.Any]) -> tp.Iterator[tp.Any]:
    outputs = node.function(items)
    if isinstance(outputs, tp.Mapping | str | bytes):  # (iterating them is not one per item)
        raise NotIterableOutputs(
            f"{node.label or node.uid}: the method returned a {type(outputs).__name__}, not "
            "one output per item: yield each output (or return a list of them)"
        )
    try:
        return iter(outputs)
    except TypeError:
        raise NotIterableOutputs(
            f"{node.label or node.uid}: the method returned {type(outputs).__name__}, not one "
            "output per item: yield each output (or return a list of them)"
        ) from None


def _miscounted(
    node: Node,
    cache: CacheDict[tp.Any],
    uids: list[str],
    start: int,
    end: int,
    flushed: int,
    report: Report,
    how: str,
    meta: dict[str, tp.Any] | None = None,
) -> int:
    """A method that yielded more or fewer outputs than items: which output belongs to which
    item is unknown, so none of this call's outputs is kept (those already written are
    deleted); every item of the call gets the error. Returns where to restart (the end)."""
    error = RuntimeError(
        f"{node.label or node.uid} did not yield exactly once per item: it yielded {how} "
        f"outputs than its {end - start} items (a map method must yield one output "
        "per item, in order)"
    )
    cache.delete_many(uids[start:flushed])
    cache.set_many(((u, CachedError.from_exception(error)) for u in uids[start:end]), meta=meta)
    report.computed -= flushed - start
    report.errors += end - start
    logger.warning("%s; the error is cached for each of those items", error)
    return end


def _store_one_by_one(
    node: Node,
    cache: CacheDict[tp.Any],
    batch: list[tuple[str, tp.Any]],
    meta: dict[str, tp.Any] | None,
    report: Report,
    error_meta: dict[str, tp.Any] | None = None,
) -> None:
    """Write a batch item by item: an output the cache cannot store (an object array as
    NumpyArray...) becomes that item's cached error; the other outputs are kept."""
    failed = 0
    for done, (uid, output) in enumerate(batch):
        try:
            cache.set_many([(uid, output)], meta=meta, skip_existing=True)
        except Exception as error:
            if isinstance(error, OSError) and (
                error.errno in ENVIRONMENT_ERRNOS or isinstance(error, CacheFolderRemoved)
            ):  # (not the output's fault: nothing cached)
                _note_unstored(error, cache, uid, len(batch) - done)
                raise
            failed += 1
            _cache_unstorable(
                node,
                cache,
                uid,
                output,
                error,
                report,
                log=failed <= ITEM_ERRORS_LOGGED,
                meta=error_meta,
            )
            continue
        report.computed += 1
    if failed > ITEM_ERRORS_LOGGED:  # (one line per item: a flood for many)
        logger.warning(
            "... and %d more output(s) of %s could not be stored; their errors are cached too",
            failed - ITEM_ERRORS_LOGGED,
            node.label or node.uid,
        )


UNSTORED = "exca_unstored"  # (on such an error: how many computed items it left uncached)


def _note_unstored(error: BaseException, cache: CacheDict[tp.Any], uid: str, count: int) -> None:
    """Say, on the storage error that stops a map, what it cost: the items computed that
    are not cached (a task's error names its result, see _compute_task; a map's said only
    "No space left on device", leaving the user to guess whether the values were kept).
    The count rides on the error too: a call whose units all failed so adds them up."""
    setattr(error, UNSTORED, count)
    what = f"it and the {count - 1} other item(s) computed with it" if count > 1 else "it"
    error.add_note(
        f"while storing item {uid!r} in {cache.folder}: {what} could not be stored, computed "
        "but not cached (the next call computes them again)"
    )


def _cache_unstorable(
    node: Node,
    cache: CacheDict[tp.Any],
    uid: str,
    output: tp.Any,
    error: Exception,
    report: Report,
    log: bool = True,
    meta: dict[str, tp.Any] | None = None,
) -> None:
    """An output the cache cannot store: its item's cached error (the others go on)."""
    failure = _unstorable(f"the output of item {uid!r}", output, cache, error)
    try:
        cache.put(uid, CachedError.from_exception(failure), meta=meta)
    except Exception:  # (the error itself cannot be stored: it is raised instead)
        raise failure from error
    report.errors += 1
    if log:
        logger.warning(
            "%s: %s; the error is cached, other items go on", node.label or node.uid, failure
        )


def current_job_id() -> str | None:
    return os.environ.get("SLURM_JOB_ID")


__all__ = ["Claim", "Report", "Unit", "run_unit"]
