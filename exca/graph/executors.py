"""Where units run: the caller's thread, a thread/process pool, or submitit jobs.

Each submission of a list of units returns one handle per unit. Results never travel
through handles (workers write them into the cache); handles only say whether a unit's
job is over, and how it ended when it left no result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import pickle
import re
import shutil
import subprocess
import sys
import threading
import time
import types
import typing as tp
from pathlib import Path

from ..storage.files import NO_SPACE, make_folder, note_write_error
from ..storage.process import hostname, process_start_time
from . import callers, slurmhold
from .errors import (
    LOG_QUOTE,
    exit_said,
    interrupt_said,
    method_ended_in_log,
    not_cached,
    storage_failed_in_log,
)
from .localcontroller import KILLED_BY_SIGNAL, LOCAL_RANK_GRACE_S, RANK_ENDED, REQUEUE_EXIT_CODE
from .node import CLAIM_JOB_ID, DEFAULT_MAX_JOBS, TASK_KEY, Execution
from .worker import Report, Unit, UnloadedUnit, run_job_unit, run_stoppable, run_unit

if tp.TYPE_CHECKING:
    import concurrent.futures

logger = logging.getLogger("exca")
FAILED_STATES = (
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "INTERRUPTED",
    "REVOKED",
)


# --- cluster detection ---------------------------------------------------------------------
@functools.cache
def slurm_answers() -> bool:
    """True when a Slurm controller answers (not merely when srun is on PATH)."""
    if shutil.which("scontrol") is None:
        return False
    try:
        out = subprocess.run(
            ["scontrol", "ping"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "UP" in out.stdout


def resolve_cluster(cluster: str | None) -> str | None:
    """``auto`` becomes ``slurm`` when a controller answers, else ``local``."""
    if cluster == "auto":
        return "slurm" if slurm_answers() else "local"
    return cluster


def usable_cpus() -> int:
    """The CPUs this process may run on (in a Slurm allocation or a container: fewer than
    the machine's)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # (not on Linux)
        return os.cpu_count() or 1


def max_jobs(execution: Execution) -> int | None:
    """How many jobs a map's items are split into at most. On cluster local every job is a
    process of this machine, all started at once: the default bound (128, for clusters)
    becomes the CPU count (any other value stays as given)."""
    if execution.max_jobs == DEFAULT_MAX_JOBS and resolve_cluster(execution.cluster) == "local":
        return min(DEFAULT_MAX_JOBS, usable_cpus())
    return execution.max_jobs


def _all_of(given: tp.Any, added: str) -> str:
    """A Slurm dependency holding both ``given`` (the user's, if any) and ``added``."""
    if not given:
        return added
    if "?" in str(given):  # (Slurm reads a mix of "?" and "," as all "?": any of them)
        raise ValueError(
            f"slurm_additional_parameters dependency={given!r} means 'any of' ('?'), which "
            f"cannot be combined with the dependency exca adds ({added}, all of them): use "
            "',' (all of) in yours, or run the upstream work first"
        )
    return f"{given},{added}"


def _can_chain(executor: tp.Any, execution: Execution) -> bool:
    """Whether the parts of a split array can wait for each other: not when the user's
    dependency is an 'any of' (said once: its parts then run side by side)."""
    given = _additional(executor).get("dependency")
    if given and "?" in str(given):
        logger.warning(
            "The array of %s is split at MaxArraySize; its dependency %r ('any of') cannot "
            "be combined with making the parts wait for each other: they run side by side, "
            "each with the array's throttle",
            execution.job_name,
            given,
        )
        return False
    return True


def _additional(executor: tp.Any) -> dict[str, tp.Any]:
    """The sbatch options a submitit Slurm executor adds (slurm_additional_parameters)."""
    return dict(executor._executor.parameters.get("additional_parameters", {}) or {})


def _run_after(executor: tp.Any, job_ids: str) -> None:
    """Make the next submission of a submitit Slurm executor start once ``job_ids`` (":"
    separated; an array: all its elements) ended, whatever their end, besides the
    dependencies it has."""
    _wait_for(executor, _additional(executor).get("dependency"), job_ids)


def _wait_for(executor: tp.Any, given: tp.Any, job_ids: str) -> None:
    """Make the next submission of a submitit Slurm executor depend on ``given`` and on
    the end of ``job_ids`` (the dependency it had is replaced)."""
    params = _additional(executor)
    params["dependency"] = _all_of(given, f"afterany:{job_ids}")
    executor._executor.update_parameters(additional_parameters=params)


def _run_after_corresponding(executor: tp.Any, array_id: str) -> None:
    """Make element i of the next array submission start once element i of ``array_id``
    completed, or else once that whole array ended (an element whose upstream failed
    then starts, as with afterany, and says so: Slurm's aftercorr alone waits for ever).
    Slurm reads each job id of a '?' (any of) dependency as a choice of its own: one
    array only."""
    params = _additional(executor)
    params["dependency"] = f"aftercorr:{array_id}?afterany:{array_id}"
    executor._executor.update_parameters(additional_parameters=params)


def _comment(executor: tp.Any, given: tp.Any, mark: str) -> None:
    """Make the next submission of a submitit Slurm executor carry ``mark`` in its
    comment (after the user's own comment, if any)."""
    params = _additional(executor)
    params["comment"] = f"{given} {mark}" if given else mark
    executor._executor.update_parameters(additional_parameters=params)


@functools.cache
def max_array_size() -> int:
    """Slurm's MaxArraySize (arrays larger than that are split)."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 1001
    for line in out.splitlines():
        if line.strip().startswith("MaxArraySize"):
            try:
                return int(line.split("=", 1)[1].strip())
            except ValueError:
                break
    return 1001


def format_logs(template: str, folder: Path | None) -> str:
    """Resolve ``{folder}`` and ``{user}`` in a log folder template (``%j`` stays; ``~`` and
    environment variables were expanded with the node's execution: see logs_problem)."""
    import getpass  # (lazy: only jobs with logs need it)

    return template.replace("{folder}", str(folder)).replace("{user}", getpass.getuser())


def _make_log_folder(logs: str, permissions: int | None, step: Path | None = None) -> None:
    """Create the fixed part of a log folder template (up to the component holding ``%j``)
    with the cache's permissions: submitit would create it with the user's umask, and
    another user of a shared cache could not add their own ``{user}`` folder next to it.
    Its folders under ``step`` (the step folder of the nodes: ``logs/<user>`` for the
    default ``{folder}/logs/{user}/%j``) are exca's, given the permissions when found
    without them (see files.make_folder: a process killed between the mkdir of ``logs``
    and its chmod left it 0o755 for good, as it holds a user's folder right after); the
    others are the user's."""
    parts = Path(logs).expanduser().parts  # (as submitit reads it)
    fixed = next((i for i, part in enumerate(parts) if "%" in part), len(parts))
    if fixed > 1:
        made = Path(os.path.abspath(Path(*parts[:fixed])))
        levels = 0  # (the user's)
        if step is not None and made.is_relative_to(os.path.abspath(step)):
            levels = len(made.parts) - len(Path(os.path.abspath(step)).parts)
        with contextlib.suppress(OSError):  # (submitit reports a folder it cannot create)
            make_folder(made, permissions, levels=levels)


def remove_write_litter(job: tp.Any) -> None:
    """Once a job ended: the result file submitit failed to write (a full disk: its
    ``*_result.pkl.save_tmp``, empty or cut, which nothing reads, and on which a rerun
    under the same id, a requeued Slurm job, failed), and with it the job's stderr log
    if empty (nothing could be written on that disk either). Only `exca clean logs`
    removed them, with the whole log folder."""
    try:
        result = str(job.paths.result_pickle)
        stderr = str(job.paths.stderr)
        os.remove(result + ".save_tmp")
    except Exception:  # (none: the common case)
        return
    with contextlib.suppress(OSError):
        if os.path.getsize(stderr) == 0:
            os.remove(stderr)


# --- handles -------------------------------------------------------------------------------
# how a local job ended when it wrote no result file (submitit's local controller ends
# normally whatever happened to the worker)
_DIED = "its process died (killed, out of memory, or sys.exit/os._exit in the method)"


# free bytes under which a disk is said full (a job writing there may have died of it)
NO_SPACE_BYTES = 1 << 20


def _no_space_said(folder: Path) -> str:
    """What a job's death says of a full disk of its log folder (where its result file
    goes too: a job that could write neither died saying nothing), else ""."""
    try:
        stats = os.statvfs(folder)
    except OSError:
        return ""
    free = stats.f_bavail * stats.f_frsize
    if free >= NO_SPACE_BYTES:
        return ""
    return (
        f"; the disk of its log folder {folder} is full ({free} bytes left): the job could "
        "not write its log nor its result there (free space, then call again)"
    )


def _local_death(job_id: str, stderr: Path) -> str:
    """How a local job that wrote no result file ended, with the end of its log (the
    signal that killed its process, as its controller wrote it there)."""
    said = f"local job {job_id} ended without writing its result: {_DIED}"
    said += _no_space_said(stderr.parent)
    try:
        text = read_tail(stderr)
    except OSError:  # (no log)
        return said
    signal_name = local_signal_in_log(text)
    rank_ended = _rank_ended_locally(text, stderr, job_id)
    if rank_ended is not None:  # (this rank was stopped: another one ended first)
        said = f"local job {job_id} ended without writing its result: {rank_ended}"
        text = text.rstrip().rpartition("\n")[0]  # (the note: said above)
    elif signal_name is not None:
        from .registry import killed_words

        said = f"local job {job_id} ended without writing its result: {killed_words(signal_name)}"
        text = text.rstrip().rpartition("\n")[0]  # (the log's own end: said above)
    elif (exited := exit_said(text)) is not None:  # (the method's sys.exit: not a death)
        said = f"local job {job_id} ended without writing its result: {exited}"
    elif (gone := _rank_zero_gone_locally(stderr, job_id)) is not None:
        said = f"local job {job_id} ended without writing its result: {gone}"
    end = log_tail(text)
    # (its end quoted as a Slurm job's: after the first line, which a plan's reason
    # and `exca list` say alone; it was glued to it, up to 1500 characters)
    return f"{said}; its log: {stderr}" + (f"{LOG_QUOTE}{end}" if end else " (empty)")


def rank_zero_gone_words(rank: int, gone: str, log: Path) -> str:
    """How a multi-task job ended when rank 0 ended first without an error (its exit code
    0 reported by neither srun nor a local controller) and ``rank`` then stopped, as
    its log says (``gone``: ranks.LEAD_GONE's why)."""
    return (
        "rank 0 ended first: its process exited in its call, without a result nor an "
        f"error (os._exit(0) in the method?); rank {rank} then stopped ({gone}; its log: "
        f"{log})"
    )


def _rank_zero_gone_locally(stderr: Path, job_id: str) -> str | None:
    """That rank 0 of a multi-task local job ended first without an error, as the log of
    another rank that stopped then says (``rank_zero_gone_words``), or None."""
    from .ranks import lead_gone_in_log

    logs = sorted(stderr.parent.glob(f"{job_id}_*_log.err"))
    for log in logs:
        rank = log.name[len(job_id) + 1 :].partition("_")[0]
        if not rank.isdigit() or rank == "0":
            continue
        with contextlib.suppress(OSError):
            gone = lead_gone_in_log(read_tail(log))
            if gone is not None:
                return rank_zero_gone_words(int(rank), gone, log)
    return None


def _rank_ended_locally(text: str, stderr: Path, job_id: str) -> str | None:
    """Which rank of a multi-task local job ended first, and how, as the note its
    controller ended this rank's log with says (it then stopped this one: RANK_ENDED), or
    None."""
    from submitit.core.utils import JobPaths

    from .registry import EXITED_WITH_CODE, killed_words

    last = text.rstrip().rpartition("\n")[2]
    found = re.fullmatch(re.escape(RANK_ENDED) + r"(\d+) ended first \((.+)\)", last)
    if found is None:
        return None
    rank, ended = int(found.group(1)), found.group(2)
    if ended.startswith("exit code "):
        how = f"{EXITED_WITH_CODE} {ended[len('exit code ') :]}"
    else:
        how = killed_words(ended)
    log = JobPaths(stderr.parent, job_id=job_id, task_id=rank).stderr
    return (
        f"rank {rank} ended first: {how} (its log: {log}); the job's other ranks were then stopped"
    )


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def pool_signal(error: BaseException | None) -> str | None:
    """The signal that killed the process of a process pool a unit ran in (its pool
    broke: ``BrokenProcessPool``), when known (``SIGKILL``), or None."""
    return getattr(error, "exca_signal", None)


def local_signal_in_log(text: str) -> str | None:
    """The signal that killed a local job's process, as its controller wrote it at the end
    of the job's log (``SIGKILL``), or None."""
    lines = text.rstrip().splitlines()
    if not lines or not lines[-1].startswith(KILLED_BY_SIGNAL):
        return None
    return lines[-1][len(KILLED_BY_SIGNAL) :].split()[0] or None


class Handle:
    """What the scheduler knows about the job running one unit."""

    job_id = ""
    cluster: str | None = None

    def done(self) -> bool:
        raise NotImplementedError

    def error(self) -> BaseException | None:
        """The exception that ended the job, if it failed (only meaningful once done)."""
        return None

    def ended_how(self, known: tuple[str, str] | None = None) -> str:
        """A short description of how a job ended without writing its result (``known``:
        its state and exit in words, looked up with others' by ``registry.slurm_endings``)."""
        error = self.error()
        return f"{type(error).__name__}: {error}" if error is not None else "ended"

    def cancel(self) -> None:
        pass

    def finished_ok(self) -> bool:
        """Whether the job is known to have ended with its work done (no error)."""
        return False

    def never_starts(self) -> bool:
        """Whether the job's wait ended though it is still queued: Slurm never starts it
        (its failure is not cached: an ``scontrol update`` of its dependency may start it)."""
        return False

    def never_ran(self) -> bool:
        """Whether the job is known not to have run (yet, or ever, once it left the queue)."""
        return False

    def cancelled_unstarted(self) -> bool:
        """Whether the job, gone from the queue, was cancelled before it started: it never
        ran, and it is not one Slurm keeps queued without ever starting it."""
        return not self.never_starts() and self.never_ran()

    @property
    def submitit_job(self) -> tp.Any:
        return None


class HandleGroup(Handle):
    """The jobs of one node's chunks (a map's items sent as a job array), seen as one."""

    def __init__(self, handles: tp.Sequence[Handle]) -> None:
        self.handles = list(handles)
        self.job_id = self.handles[0].job_id
        self.cluster = self.handles[0].cluster

    def done(self) -> bool:
        return all(h.done() for h in self.handles)

    def error(self) -> BaseException | None:
        return next((e for e in (h.error() for h in self.handles) if e is not None), None)

    def ended_how(self, known: tuple[str, str] | None = None) -> str:
        ended = [h for h in self.handles if not h.finished_ok()] or self.handles
        return ended[0].ended_how()  # (it names its job)

    def cancel(self) -> None:
        for handle in self.handles:
            handle.cancel()

    def finished_ok(self) -> bool:
        return all(h.finished_ok() for h in self.handles)

    def never_starts(self) -> bool:
        return any(h.never_starts() for h in self.handles)

    @property
    def submitit_job(self) -> tp.Any:
        return self.handles[0].submitit_job


class DoneHandle(Handle):
    """A unit that already ran in the caller's thread."""

    def __init__(self, error: BaseException | None = None, job_id: str = "#local#") -> None:
        self._error = error
        self.job_id = job_id

    def done(self) -> bool:
        return True

    def error(self) -> BaseException | None:
        return self._error


class ClaimHandle(Handle):
    """A task (or map items: ``keys``) another worker is computing (it holds their claims,
    with no job of this run): done when those claims end, released or their owner dead."""

    job_id = CLAIM_JOB_ID

    def __init__(self, node: tp.Any, keys: tp.Sequence[str] | None = None) -> None:
        self.node = node
        self.keys = keys

    def done(self) -> bool:
        from .calls import being_computed, keys_being_computed

        if self.keys is None:
            return not being_computed(self.node)
        return not keys_being_computed(self.node, self.keys)

    def ended_how(self, known: tuple[str, str] | None = None) -> str:
        return "the worker that was computing it ended without writing its result"

    def cancel(self) -> None:
        """Not a job of this process: nothing here can stop it (said, not silently ignored)."""
        from ..storage.claims import Claims

        keys = set(self.keys) if self.keys is not None else {TASK_KEY}
        folder = self.node.folder
        holders = {
            claim.owner.describe()
            for claim in (Claims(folder).current() if folder is not None else [])
            if claim.keys & keys
        }
        if holders:
            logger.warning(
                "Cannot cancel %s: it is computed by another worker (%s), not by a job; "
                "stop that worker to cancel it",
                self.node.uid,
                ", ".join(sorted(holders)),
            )


class FutureHandle(Handle):
    def __init__(
        self,
        future: concurrent.futures.Future[tp.Any],
        cluster: str,
        adopt: tp.Callable[[tp.Any], None] | None = None,
        isolation: _Isolation | None = None,
        payload: bytes | None = None,
        poll: tp.Callable[[], None] | None = None,
    ) -> None:
        self.future = future
        self._poll = poll  # (a process pool's: counts the items its processes wrote)
        self.cluster = cluster
        self.job_id = f"#{cluster}#"
        self._adopt = adopt  # called once with the result, before done() says True
        # a process pool's unit: run again on its own if the pool breaks (see _Isolation)
        self._isolation, self._payload = isolation, payload

    def done(self) -> bool:
        if self._isolation is not None:
            self._isolation.pump()
        if self._poll is not None:
            self._poll()
        if not self.future.done():
            return False
        if self._poll is not None:  # (its last items, written before it ended)
            self._poll()
        if self._payload is not None and type(self.future.exception()).__name__ == (
            "BrokenProcessPool"
        ):
            assert self._isolation is not None
            self.future, self._payload = self._isolation.submit(self._payload), None
            return False
        if self._adopt is not None:
            adopt, self._adopt = self._adopt, None
            if not self.future.cancelled() and self.future.exception() is None:
                adopt(self.future.result())
        return True

    def error(self) -> BaseException | None:
        if not self.future.done() or self.future.cancelled():
            return None
        return self.future.exception()

    def cancel(self) -> None:
        self.future.cancel()


def _final(state: str) -> bool:
    """Whether a Slurm state (sacct's words: "CANCELLED by 0") is an end."""
    from .registry import FINAL_STATES

    return state.split(" ")[0].rstrip("+") in FINAL_STATES


_DEBUG_JOB_ID = "SUBMITIT_DEBUG_JOB_ID"
_DEBUG_JOBS = threading.Lock()
_DEBUG_RUNNING: list[tp.Any] = [0, False]  # (debug jobs running, the id there before)


@contextlib.contextmanager
def _debug_job_environ() -> tp.Iterator[None]:
    """While debug jobs run in this process: submitit sets SUBMITIT_DEBUG_JOB_ID for one,
    then puts back the environment it found; two running at once in two threads, the
    second found the first one's id and put it back for good (the process then read as a
    job of submitit's, and no longer submitted jobs while work ran inline). Removed once
    the last one ended, if it was not there before the first."""
    with _DEBUG_JOBS:
        if not _DEBUG_RUNNING[0]:
            _DEBUG_RUNNING[1] = _DEBUG_JOB_ID in os.environ
        _DEBUG_RUNNING[0] += 1
    try:
        yield
    finally:
        with _DEBUG_JOBS:
            _DEBUG_RUNNING[0] -= 1
            if not _DEBUG_RUNNING[0] and not _DEBUG_RUNNING[1]:
                os.environ.pop(_DEBUG_JOB_ID, None)


class SubmititHandle(Handle):
    def __init__(self, job: tp.Any, cluster: str, template: str | None = None) -> None:
        self.job = job
        self.cluster = cluster
        self.job_id = str(job.job_id)
        self._done = False
        self._template = template  # local jobs: the log-folder template to drop when done
        self._cancelled = False  # (cancelled by this handle: a local job it then killed too)
        self._never_starts: str | None = None  # (squeue's reason: Slurm never starts it)

    @property
    def submitit_job(self) -> tp.Any:
        return self.job

    def __getstate__(self) -> dict[str, tp.Any]:
        local = self.cluster == "local" and "_process_start" not in self.__dict__
        ended = local and self.done()  # (first: done() updates the state copied below)
        state = self.__dict__.copy()
        if local and self.job_id.isdigit():
            # which process the job is (its id is a pid): another process loading this
            # handle tells whether it still runs (submitit's unpickled local job said done;
            # ended: none, its pid may be another process's already)
            state["_process_host"] = hostname()
            state["_process_start"] = None if ended else process_start_time(int(self.job_id))
        return state

    def _loaded(self) -> bool:
        """Whether this handle of a local job was loaded from a pickle (not the process
        that started it: submitit's job has no process to look at)."""
        return "_process_start" in self.__dict__ and getattr(self.job, "_process", None) is None

    def done(self) -> bool:
        if not self._done:
            if self._loaded():
                self._done = not self._runs_elsewhere()
            else:
                self._done = self._submitit_done() or self._left_slurm_queue()
            if self._done and self.cluster == "local":
                # (by job id: a handle loaded from the job's record, as a call after a
                # job_array() waits with, tells it too; the submission's own may never be
                # asked, and its %j folder was left)
                _template_job_done(self.job_id)
                self._template = None
            if self._done and self.cluster != "debug":
                remove_write_litter(self.job)
        return self._done

    def _submitit_done(self) -> bool:
        """submitit's ``done()``, except for a Slurm job in a state that is not final:
        submitit takes every state but a few running ones for an end, so a job suspended
        (``scontrol suspend``: SUSPENDED), stopped or held for requeue read as ended,
        and its wait failed it though it goes on once resumed."""
        if self.cluster == "debug":
            with _debug_job_environ():  # (done() runs a debug job)
                if not self.job.done():
                    return False
        elif not self.job.done():
            return False
        if self.cluster != "slurm" or self.job.paths.result_pickle.exists():
            return True
        if _final(self.state()):
            return True
        # (submitit no longer asks sacct about a job it took for ended: asked again)
        with contextlib.suppress(Exception):
            self.job.watcher._finished.discard(self.job_id)
        return False

    def _left_slurm_queue(self) -> bool:
        """Whether a Slurm job submitit does not take for done has left the queue: sacct
        keeps no record of an array element cancelled while pending (on some clusters),
        and submitit then reads its last state (PENDING, or UNKNOWN) for good: a wait for
        it never ended. squeue knows a job from its submission on (see left_queue)."""
        if self.cluster != "slurm":
            return False
        from .registry import left_queue, never_starts, tell_held

        if left_queue(self.job_id, self._gone_unstarted):
            return True
        # (a job pending for a reason Slurm never gets over, DependencyNeverSatisfied:
        # waited for, its call waited for ever; it ends the wait, described as such)
        self._never_starts = never_starts(self.job_id)
        if self._never_starts is None:
            # (held: it may be released, so the wait goes on; told, as it never ends else)
            tell_held(self.job_id)
        return self._never_starts is not None

    def _gone_unstarted(self) -> bool:
        """Whether a job squeue no longer lists (one look) ended for good before it
        started: it opened no log (Slurm does as the job starts: a job that ran, then
        was requeued, has one) and sacct knows no node it got. Such a job, cancelled
        while pending, then ends its wait at the first look, not QUEUE_LOOK_S later."""
        from .registry import never_got_a_node

        return not self._wrote_log() and never_got_a_node(self.job_id)

    def never_starts(self) -> bool:
        return self.__dict__.get("_never_starts") is not None

    def never_ran(self) -> bool:
        """A Slurm job that wrote neither its result nor its log, which Slurm opens as the job
        starts: it has not run (gone from the queue, it never will: cancelled while pending)."""
        if self.cluster != "slurm" or self._wrote_log():
            return False
        with contextlib.suppress(Exception):
            return not self.job.paths.result_pickle.exists()
        return False

    def _runs_elsewhere(self) -> bool:
        """Whether the local job of a handle loaded in another process still runs (on
        another host: taken for ended, as a recorded local job of another host is)."""
        started = self.__dict__["_process_start"]
        return (
            started is not None
            and self.__dict__.get("_process_host") == hostname()
            and process_start_time(int(self.job_id)) == started
        )

    def state(self) -> str:
        try:
            return str(self.job.state)
        except Exception:  # watcher/sacct hiccup
            return "UNKNOWN"

    def error(self) -> BaseException | None:
        if self.cluster == "debug":
            # (run in this process, with no result pickle: without a terminal the job
            # returns the exception it met, see run_unit_quietly; it read as having ended
            # without its result, "state DONE", where an inline call raises that error)
            submission = getattr(self.job, "_submission", None)
            result = getattr(submission, "_result", None) if submission is not None else None
            if getattr(submission, "_done", False) and isinstance(result, BaseException):
                return result
            return None
        try:
            if not self.job.paths.result_pickle.exists():
                return None  # ended without a result file: submitit would wait 15 s for it
            return tp.cast(BaseException | None, self.job.exception())
        except Exception as e:
            return e

    def finished_ok(self) -> bool:
        try:
            return bool(self.job.paths.result_pickle.exists()) and self.error() is None
        except Exception:
            return False

    def ended_how(self, known: tuple[str, str] | None = None) -> str:
        never = self.__dict__.get("_never_starts")  # (absent: a handle pickled before)
        if never is not None:
            from .registry import never_starts_words

            return never_starts_words(self.job_id, never)
        if self.cluster == "local":
            with contextlib.suppress(Exception):  # (no log to read: described below)
                cancelled = _cancelled_local_job(self.job_id, Path(self.job.paths.stderr))
                if cancelled is not None:
                    return cancelled
            if self._cancelled and not self.finished_ok():  # (killed after the interrupt)
                return f"local job {self.job_id} was cancelled (job.cancel())"
        if known is not None and self.cluster == "slurm" and known[0]:
            state, how = known
        else:
            state, how = self.state(), None
            if self.cluster == "slurm" and not _final(state):
                self.job.watcher.update()  # force a fresh sacct look before describing it
                state = self.state()
                if not _final(state):
                    # (UNKNOWN while sacct lags; or the last state submitit read, kept
                    # once sacct forgot the job: PENDING for an array element cancelled
                    # while pending, whose row left the array's. Not an end: not said)
                    settled = _settled_sacct_state(self.job_id)
                    state = settled if settled is not None and _final(settled) else "UNKNOWN"
        if state.startswith("UNKNOWN") and self.cancelled_unstarted():
            # (scancel of a pending array element leaves no record of it, in squeue or
            # sacct: it left the queue without a log, which Slurm opens as a job starts)
            return f"job {self.job_id} was cancelled before it started ({GONE_UNSTARTED})"
        kinds = {
            "CANCELLED": "was cancelled",
            "TIMEOUT": "timed out",
            "OUT_OF_MEMORY": "ran out of memory",
            "NODE_FAIL": "lost its node",
            "PREEMPTED": "was preempted",
            "INTERRUPTED": "was interrupted (killed)",
        }
        for key, text in kinds.items():
            if state.startswith(key):
                if key == "CANCELLED" and self._never_started(how):
                    return f"job {self.job_id} was cancelled before it started (state {state})"
                if key == "TIMEOUT":
                    text += self._time_limit_said()
                return f"job {self.job_id} {text} (state {state}){self._log_said()}"
        error = self.error()
        unloaded = _unloaded_said(self.job_id, error, self.job.paths.stderr)
        if unloaded is not None:
            return unloaded
        if error is not None:  # (the job raised: submitit's error holds its traceback)
            where = "local " if self.cluster == "local" else ""
            return where + job_raised(self.job_id, error, self.job.paths.stderr)
        if self.cluster == "local":
            host = self.__dict__.get("_process_host")
            running = self.__dict__.get("_process_start") is not None  # (when pickled)
            if running and host is not None and host != hostname():  # (loaded elsewhere)
                return (
                    f"local job {self.job_id} runs on host {host}, not here: only a process "
                    "of that host can follow it"
                )
            # (submitit's local controller ends normally whatever happened to the worker)
            return _local_death(self.job_id, self.job.paths.stderr)
        detail = ""
        if self.cluster == "slurm":
            from .registry import EXITED_WITH_CODE, LOG_NOT_OPENED, slurm_exit

            if how is None:
                how = slurm_exit(self.job_id)
            code = (
                how[len(EXITED_WITH_CODE) :].split()[0] if how.startswith(EXITED_WITH_CODE) else ""
            )
            if code.isdigit() and int(code) != 0:
                how = (
                    self._rank_ended_said()
                    or self._killed_said(int(code))
                    or self._raised_interrupt()
                    or self._exited_in_method()
                    or how
                )
            else:  # (e.g. sys.exit(0) in the method: no result, sacct says no code)
                how = self._exited_in_method() or how
            if how == LOG_NOT_OPENED:  # (the folder a user can check on a compute node)
                how += f" ({Path(self.job.paths.stderr).parent})"
            if not how and state.startswith("UNKNOWN"):
                how = "the queue no longer lists it and the accounting (sacct) has no end for it"
                # (a job that wrote a log ran: sacct lags behind its end, its log says more)
                how += ": cancelled before it started?" if not self._wrote_log() else " yet"
            detail = f": {how}" if how else ""
            # (ended before python ran, e.g. a slurm_setup line failing: its log says why)
            detail += self._log_said(tail=True)
        return f"job {self.job_id} ended with state {state} without writing its result{detail}"

    def _wrote_log(self) -> bool:
        with contextlib.suppress(Exception):
            return Path(self.job.paths.stderr).exists()
        return False

    def _never_started(self, how: str | None) -> bool:
        """Whether Slurm never gave the ended job a node (cancelled while pending):
        ``how`` as ``registry.slurm_endings`` says it, else the row submitit's sacct
        look read with the state."""
        from .registry import NEVER_STARTED, NO_NODE

        if self._wrote_log():
            return False  # (it ran, e.g. then requeued and cancelled while pending)
        if how is not None:
            return how == NEVER_STARTED
        try:
            info = self.job.get_info(mode="cache")
        except Exception:
            return False
        return isinstance(info, dict) and info.get("NodeList") == NO_NODE

    def _killed_said(self, exit_code: int) -> str | None:
        """How the job's process was killed by a signal, as its log says (sacct gave the
        batch script's code: a python killed by SIGKILL read "exited with code 9"), or
        None."""
        from .registry import killed_words, signal_in_log

        try:
            name = signal_in_log(read_tail(Path(self.job.paths.stderr)), exit_code)
        except Exception:  # (no log)
            return None
        return None if name is None else killed_words(name)

    def _rank_ended_said(self) -> str | None:
        """Which rank of a multi-task job ended first, and how, as srun's report in rank 0's
        log says (srun then ended the others: their deaths, rank 0's too, followed), or
        None. Said as the job's own death, it named rank 0 and its log only."""
        from submitit.core.utils import JobPaths

        from .ranks import lead_gone_in_log
        from .registry import first_task_ended, rank_zero_reported

        try:
            text = read_tail(Path(self.job.paths.stderr))
        except Exception:  # (no log)
            return None
        found = first_task_ended(text)
        if found is None:
            return None
        rank, how = found
        log = JobPaths(self.job.paths.folder, job_id=self.job_id, task_id=rank).stderr
        gone = None
        if rank and not rank_zero_reported(text):  # (rank 0 ended with code 0, unseen)
            with contextlib.suppress(OSError):
                gone = lead_gone_in_log(read_tail(Path(log)))
        if gone is not None:  # (that rank stopped because rank 0 had ended: say so)
            return rank_zero_gone_words(rank, gone, log) + ", and srun ended the job"
        return (
            f"rank {rank} ended first: {how} (its log: {log}); srun then ended the job's "
            "other ranks"
        )

    def _raised_interrupt(self) -> str | None:
        """That the method raised KeyboardInterrupt, as the job's log notes (worker.py:
        no SIGINT came), else None. The traceback after the note hides it from the end
        of the log a call quotes: a Slurm job said only "its process exited with code 2",
        where a local one names the interrupt."""
        try:
            text = read_tail(Path(self.job.paths.stderr), 64 * 1024)
        except Exception:  # (no log)
            return None
        last = text.strip().rsplit("\n", 1)[-1].strip()
        if last.startswith("KeyboardInterrupt"):
            return interrupt_said(text)  # (with the map item the method was computing)
        return None

    def _exited_in_method(self) -> str | None:
        """That the method called sys.exit, as the job's log notes it (worker.py), else
        None: a Slurm job said only "its process exited with code 3", where a local one
        says it (and the next call computes it: nothing is cached)."""
        try:
            return exit_said(read_tail(Path(self.job.paths.stderr), 64 * 1024))
        except Exception:  # (no log)
            return None

    def _time_limit_said(self) -> str:
        """The time limit a Slurm job ran into, as its sbatch script set it, and what to
        change (a retry alone would time out again), or "" (no script found)."""
        array = self.job_id.split("_")[0]
        try:  # (each job's logs in a folder named by its id; an array's one script in its own)
            folder = Path(self.job.paths.folder)
            script = (folder.parent / array / f"{array}_submission.sh").read_text()
        except Exception:  # (not a slurm job's handle, or its script was removed)
            return ""
        found = re.search(r"^#SBATCH --time=(\d+)$", script, re.MULTILINE)
        if found is None or folder.name != self.job_id:
            return ""
        minutes = found.group(1)
        return f" at its time limit (timeout_min={minutes}: give its infra a larger one)"

    def _log_said(self, tail: bool = False) -> str:
        """Where the job's stderr log is (and, with ``tail``, its last lines): "" when
        it wrote none."""
        try:
            path = Path(self.job.paths.stderr)
            text = read_tail(path) if tail else None
        except Exception:  # (no log: e.g. the job never started)
            return ""
        if text is None:
            return f"; its log: {path}" if path.exists() else ""
        end = log_tail(text)
        # (the quoted lines last: a caller's hint goes at the end of the first line)
        return f"; its log: {path}" + (f"{LOG_QUOTE}{end}" if end else " (empty)")

    def cancel(self) -> None:
        process = getattr(self.job, "_process", None)  # (our child: its pid is not reused)
        if self.cluster == "local" and process is not None and process.poll() is None:
            self._cancelled = True
            _cancel_local_job(process)
            return
        if self._loaded():
            if self._runs_elsewhere():
                self._cancelled = True
                _cancel_local_pid(int(self.job_id), self._runs_elsewhere)
            return
        with contextlib.suppress(Exception):
            self.job.cancel(check=False)


class RecordedLocalHandle(Handle):
    """A local job submitted by another process (known from the job registry): it runs
    while its process does (a rebuilt submitit LocalJob cannot see that process)."""

    def __init__(self, record: tp.Any) -> None:
        self.record = record
        self.job_id = record.job_id
        self.cluster = record.cluster  # (local, or debug: run by its submitting process)

    @property
    def submitit_job(self) -> tp.Any:
        from .registry import submitit_job

        return submitit_job(self.record)

    def done(self) -> bool:
        from .registry import is_active

        if self.__dict__.get("_done"):
            return True
        self._done = not is_active(self.record)
        if self._done and self.cluster != "debug":
            with contextlib.suppress(Exception):  # (a record naming no readable job)
                remove_write_litter(self.submitit_job)
        return self._done

    def finished_ok(self) -> bool:
        from .registry import wrote_outcome

        return self.done() and wrote_outcome(self.record)

    def ended_how(self, known: tuple[str, str] | None = None) -> str:
        stderr = self.record.stderr
        cancelled = _cancelled_local_job(self.job_id, stderr)
        if cancelled is not None:
            return cancelled
        error = None
        with contextlib.suppress(Exception):  # (no result file: the process died)
            job = self.submitit_job
            if job.paths.result_pickle.exists():
                error = job.exception()
        if error is not None:
            # (another process's local job, e.g. an element of a job array: said as the
            # job of this process is)
            unloaded = _unloaded_said(self.job_id, error, stderr)
            if unloaded is not None:
                return "local " + unloaded
            return "local " + job_raised(self.job_id, error, stderr)
        return _local_death(self.job_id, stderr)

    def cancel(self) -> None:
        from .registry import is_active

        if is_active(self.record) and self.job_id.isdigit():
            _cancel_local_pid(int(self.job_id), lambda: is_active(self.record))


TAIL_LINES, TAIL_CHARS = 10, 1500  # the end of a job's log an error quotes
TAIL_BYTES = 16 * 1024  # what is read of a log to quote its end (TAIL_CHARS, even in UTF-8)


def read_tail(path: Path, size: int = TAIL_BYTES) -> str:
    """The last ``size`` bytes of a file, decoded: a job's log may be gigabytes (raises
    OSError when it is not there)."""
    with open(path, "rb") as handle:
        handle.seek(max(0, os.fstat(handle.fileno()).st_size - size))
        return handle.read().decode(errors="replace")


def log_tail(text: str) -> str:
    """The last lines of a log (at most TAIL_LINES, TAIL_CHARS), indented."""
    lines = text.rstrip().splitlines()[-TAIL_LINES:]
    end = "\n".join(lines)[-TAIL_CHARS:]
    return "\n".join(f"    {line}" for line in end.splitlines())


_LOGS_PART = "\n----------------------\nYou can check full logs"  # (submitit's report)
_RAISED_MAX = 1000  # characters of an exception's text in a job's failure


# sbatch's words when no controller answers (not a problem of the job's options)
# (not "Socket timed out": sbatch may have queued the job then)
_CONTROLLER_DOWN = re.compile(r"Unable to contact slurm controller", re.I)
# sbatch's errors after which the controller may have queued the job all the same
_MAYBE_QUEUED = re.compile(r"timed out|time out|timeout", re.I)


# how a Slurm job that left the queue without running is known to have been cancelled
GONE_UNSTARTED = "it left Slurm's queue without running: no log, no end in the accounting"

SACCT_SETTLING = (0.25, 0.5, 1.0, 1.5)  # seconds between looks at a job sacct does not know


def _settled_sacct_state(job_id: str) -> str | None:
    """The state of an ended Slurm job that sacct did not know yet (its accounting lags
    behind the job's end: an array element cancelled while running read UNKNOWN for an
    instant, "cancelled before it started?"), or None."""
    from .registry import sacct_states

    global _SETTLED_AT
    # (a plan describing many jobs sacct never knew, e.g. purged from its accounting:
    # sacct's lag is waited for once, not once per job)
    recent = time.monotonic() - _SETTLED_AT < 2 * sum(SACCT_SETTLING)
    try:
        for pause in (0.0,) if recent else SACCT_SETTLING:
            time.sleep(pause)
            state = sacct_states([job_id]).get(job_id, "UNKNOWN")
            if not state.startswith("UNKNOWN"):
                return state
        return None
    finally:
        _SETTLED_AT = time.monotonic()


_SETTLED_AT = -1e9


def job_raised(job_id: str, error: BaseException, log: tp.Any) -> str:
    """How a job whose method raised ended: what it raised and where its log is."""
    return f"job {job_id} failed: {_raised_in_job(error)} (its log: {log})"


def _raised_in_job(error: BaseException) -> str:
    """The exception a job raised (``Type: message``, with every line of its message and
    notes), from the report submitit makes of it (the traceback, then where its logs
    are); any other error as it is."""
    report = str(error).rsplit(_LOGS_PART, 1)[0]  # (a report may quote another one)
    start = report.rfind("Traceback (most recent call last):")
    text = ""
    if start >= 0:
        lines = report[start:].splitlines()[1:]
        # (the frames are indented; the exception follows them)
        first = next((i for i, line in enumerate(lines) if line[:1] not in ("", " ")), None)
        if first is not None:
            text = "\n".join(lines[first:]).strip()
    if not text:  # (a live exception, a debug job's: with its notes, as in a traceback)
        notes = "".join(f"\n{n}" for n in getattr(error, "__notes__", ()) if isinstance(n, str))
        text = f"{type(error).__name__}: {report.strip()}{notes}"
    if len(text) > _RAISED_MAX:
        text = text[:_RAISED_MAX] + " [...]"
    return text


def _cancel_local_job(process: tp.Any) -> None:
    """Stop a local job this process started (see ``_cancel_local``)."""
    import signal

    _cancel_local(
        process.pid, lambda: process.poll() is None, lambda: process.send_signal(signal.SIGINT)
    )


def _cancel_local_pid(pid: int, alive: tp.Callable[[], bool]) -> None:
    """Stop a local job another process started (``alive``: whether ``pid`` is still that
    job, never a process that reused the pid of an ended one): SIGINT, as submitit's own
    LocalJob.cancel (its job processes bypass SIGTERM)."""
    import signal

    def controller_interrupted() -> None:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGINT)

    _cancel_local(pid, alive, controller_interrupted)


def _cancel_local(
    pid: int, alive: tp.Callable[[], bool], interrupt_controller: tp.Callable[[], None]
) -> None:
    """Stop a local job (its submitit controller: ``pid``) as submitit's cancel() does
    through the controller (SIGINT to the tasks, SIGKILL to those still alive a second
    later), but from here: SIGINT to the controller made it print its own KeyboardInterrupt
    traceback in the terminal of the process that started it (it ends normally once its
    tasks have). A job that ignores SIGINT is killed at once."""
    import signal

    with contextlib.suppress(Exception):
        _kill_if_sigint_ignored(pid)
    tasks = _children().get(pid, [])
    if not tasks:  # (none started yet: the controller's own handling)
        with contextlib.suppress(OSError):
            interrupt_controller()
        # a controller still starting (importing) may lose the interrupt (Python ignores
        # a KeyboardInterrupt raised in an import lock's callback) and start its task
        # anyway: then its tasks are interrupted, and killed with it a second later
        _after_a_second(lambda: _interrupt_tasks_then_kill(pid, alive, interrupt_controller))
        return
    for task in tasks:
        with contextlib.suppress(OSError):
            os.kill(task, signal.SIGINT)

    def kill_the_rest() -> None:
        if not alive():
            return
        for task in set(tasks) & set(_children().get(pid, [])):  # (still the job's tasks)
            with contextlib.suppress(OSError):
                os.kill(task, signal.SIGKILL)

    _after_a_second(kill_the_rest)


def _after_a_second(action: tp.Callable[[], None]) -> None:
    # (not a daemon: a caller exiting right after cancel() still stops a task that caught
    # the interrupt)
    threading.Timer(1.0, action).start()


_CANCEL_ROUNDS = 5  # seconds a cancelled local job still starting is interrupted again


def _interrupt_tasks_then_kill(
    pid: int,
    alive: tp.Callable[[], bool],
    interrupt_controller: tp.Callable[[], None],
    rounds: int = _CANCEL_ROUNDS,
) -> None:
    """A local job still alive a second after its cancellation: SIGINT to its tasks, and
    a second later SIGKILL to what is left of them and of the controller (its tasks die
    with it). A controller still starting (no task yet) is interrupted again, and a task
    started since the interrupt is interrupted before being killed (a few rounds)."""
    import signal

    if not alive():
        return
    tasks = _children().get(pid, [])
    if not tasks and rounds > 1:  # (still starting: its own handling, again)
        with contextlib.suppress(OSError):
            interrupt_controller()
        _after_a_second(
            lambda: _interrupt_tasks_then_kill(pid, alive, interrupt_controller, rounds - 1)
        )
        return
    for task in tasks:
        with contextlib.suppress(OSError):
            os.kill(task, signal.SIGINT)

    def kill_all() -> None:
        if not alive():
            return
        if set(_children().get(pid, [])) - set(tasks) and rounds > 1:  # (started since)
            _interrupt_tasks_then_kill(pid, alive, interrupt_controller, rounds - 1)
            return
        for process in [*_descendants(pid), pid]:  # (the tasks first: nothing restarts them)
            with contextlib.suppress(OSError):
                os.kill(process, signal.SIGKILL)

    _after_a_second(kill_all)


def _kill_if_sigint_ignored(pid: int) -> None:
    """SIGKILL a local job that ignores SIGINT, with the processes it started (submitit's
    controller and its task): it inherited that from a script started in the background
    by a shell (``python run.py &``), and SIGINT would not stop it."""
    import signal

    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # (ended, or no /proc: SIGINT is all there is)
        return
    ignored = [line for line in status.splitlines() if line.startswith("SigIgn:")]
    if not ignored or not int(ignored[0].split()[1], 16) >> (signal.SIGINT - 1) & 1:
        return
    for process in [*_descendants(pid), pid]:  # (the tasks first: nothing restarts them)
        with contextlib.suppress(OSError):
            os.kill(process, signal.SIGKILL)


def _children() -> dict[int, list[int]]:
    """The child processes of every process (read from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # (after the command in parentheses, which may hold spaces: state, ppid)
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(stat.parent.name))
    return children


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid``."""
    children = _children()
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(children.get(child, []))
    return out


def unpicklable_error(units: tp.Sequence[Unit], error: Exception, where: str) -> TypeError:
    """The error of work that cannot be pickled to be sent away, naming the cause."""
    node = units[0].node
    return TypeError(f"{node.uid}: {unpicklable_reason(node, error, where, units)}")


def unpicklable_reason(
    node: tp.Any,
    error: BaseException,
    where: str,
    units: tp.Sequence[Unit] = (),
    failing: tp.Any = None,
    parts: dict[int, str | None] | None = None,
) -> str:
    """Why work of a node cannot be sent to ``where`` (pickling it raised ``error``): the
    words of a run's error after the node's uid, and of a plan's problem (the same place
    for both). ``failing``: the node of its closure whose config does not pickle, when
    known (a plan: only it is looked at, not the whole closure of each node); ``parts``:
    what was found of each config (by id of its function), shared across calls."""
    found = _unpicklable_item(units)
    if found is not None:
        uid, item = found
        # (named by its uid: the repr of an object is often its address, which says nothing)
        return (
            f"its items cannot be sent to {where} ({error}): item "
            f"{uid!r} ({type(item).__qualname__}) cannot be pickled. Give items that pickle "
            "(e.g. paths or ids instead of open files or clients), or use cluster=None to "
            "compute here"
        )
    found_parts = {} if parts is None else parts

    def part(function: tp.Any) -> str | None:
        if id(function) not in found_parts:
            found_parts[id(function)] = _unpicklable_part(function)
        return found_parts[id(function)]

    # (a unit carries the nodes it reads)
    candidates = getattr(node, "closure", (node,)) if failing is None else (failing,)
    for candidate in candidates:
        culprit = part(candidate.function)
        if culprit is None:
            continue
        if candidate is node or candidate.key == node.key:
            return f"cannot be sent to {where} ({error}): {culprit}"
        return (
            f"cannot be sent to {where} ({error}): it carries the node of its upstream "
            f"{candidate.uid} (to read its output), and {culprit}"
        )
    return (
        f"its config or method cannot be sent to {where} ({error}). "
        "Keep unpicklable objects (locks, open files, clients) out of the config, its class "
        "and what its method uses, e.g. create them in the method, or use cluster=None to "
        "compute here"
    )


def sent_to(node: tp.Any, computed_here: bool) -> str | None:
    """Where work of a node is pickled to (as the errors say it: "a job", "a process
    pool"), None when it runs in this process (inline, threads, the debug cluster; a
    pool's item computed here: ``computed_here``)."""
    cluster = resolve_cluster(node.execution.cluster)
    if cluster in ("local", "slurm"):
        return "a job"
    if cluster == "processpool" and not computed_here:
        return "a process pool"
    return None


def pickling_errors(functions: tp.Iterable[tp.Any]) -> dict[int, BaseException]:
    """The errors pickling each of these (a node's config and method, as a unit sent away
    pickles it) raises, by id of the function: each pickled once, one by one, keeping no
    bytes (configs holding large data: no buffer of them all). Only pickling errors count
    (what a run turns into ``unpicklable_error``)."""
    from .jobpickle import check_pickles

    out: dict[int, BaseException] = {}
    done: set[int] = set()
    for function in functions:
        if id(function) in done:
            continue
        done.add(id(function))
        try:
            check_pickles(function)
        except (TypeError, AttributeError, pickle.PicklingError) as error:
            if "pickle" in str(error):
                out[id(function)] = error
        except Exception:  # (a value's own reduce failing otherwise: the run raises it)
            pass
    return out


def _unpicklable_part(function: tp.Any) -> str | None:
    """Which field of the config, which attribute of a class sent by value, or which
    variable or global of its method cannot be pickled (a class of a notebook or a script,
    or one defined in a function, is sent by value: with its attributes, and the globals
    and closure variables its methods use)."""
    import cloudpickle

    def fails(value: tp.Any) -> bool:
        try:
            cloudpickle.dumps(value)
        except Exception:
            return True
        return False

    owner = getattr(function, "owner", None)
    fields = dict(getattr(owner, "__dict__", None) or {})
    fields.update(getattr(owner, "__pydantic_private__", None) or {})
    for name, value in fields.items():
        if fails(value):
            return _unpicklable_field(name, value, fails)
    if owner is not None:
        culprit = _unpicklable_class_attribute(type(owner), fails)
        if culprit is not None:
            return culprit
    func: tp.Any = getattr(getattr(function, "method", None), "func", None)
    code = getattr(func, "__code__", None)
    if code is None or not _sent_by_value(func):
        return None
    classes: list[tuple[str, type]] = []
    for name, cell in zip(code.co_freevars, func.__closure__ or ()):
        try:
            value = cell.cell_contents
        except ValueError:  # (an empty cell: a variable not assigned yet)
            continue
        if isinstance(value, type):  # (e.g. __class__ for super(), or a class naming itself)
            classes.append((name, value))  # (what fails is in the class: checked below)
            continue
        if fails(value):
            return (
                f"the variable {name!r} ({type(value).__name__}) that {func.__qualname__} "
                "takes from the function defining it cannot be pickled. Create it in the "
                "method, or use cluster=None to compute here"
            )
    for _, value in classes:
        culprit = _unpicklable_class_attribute(value, fails)
        if culprit is not None:
            return culprit
    for name in code.co_names:
        if name not in func.__globals__:
            continue
        value = func.__globals__[name]
        if isinstance(value, type):
            culprit = _unpicklable_class_attribute(value, fails)
            if culprit is not None:
                return culprit
        if fails(value):
            return (
                f"the global {name!r} ({type(value).__name__}) that {func.__qualname__} uses "
                "cannot be pickled: a class defined in a notebook or a script is sent by "
                "value, with the globals its methods use. Create it in the method (or in a "
                "module the method imports), or use cluster=None to compute here"
            )
    for name, value in classes:
        if fails(value):  # (none of its attributes: what one of its methods uses)
            where = "in a function" if "<locals>" in value.__qualname__ else "in a script"
            return (
                f"the class {value.__qualname__} that {func.__qualname__} uses (as {name!r}) "
                f"cannot be pickled: a class defined {where} is sent by value, with its "
                "attributes and the globals its methods use. Define it in a module, or use "
                "cluster=None to compute here"
            )
    return None


def _sent_by_value(obj: tp.Any) -> bool:
    """Whether cloudpickle sends this class or function by value rather than by reference:
    it is defined in __main__ (a notebook or a script) or in a function."""
    module = getattr(obj, "__module__", None)
    return (
        module == "__main__"
        or module not in sys.modules
        or "<locals>" in getattr(obj, "__qualname__", "")
    )


def _unpicklable_class_attribute(
    klass: type, fails: tp.Callable[[tp.Any], bool], of: str = ""
) -> str | None:
    """The error naming an attribute that cannot be pickled of this class or of its bases
    sent by value (None: there is none)."""
    plain = (types.FunctionType, property, classmethod, staticmethod)
    for base in klass.__mro__:
        if not _sent_by_value(base):  # (sent by reference: its module is imported)
            continue
        for name, value in vars(base).items():
            # (dunders and _abc_impl: the class machinery's, which cloudpickle handles)
            dunder = name.startswith("__") and name.endswith("__")
            if dunder or name == "_abc_impl" or isinstance(value, plain) or not fails(value):
                continue
            where = (
                "in a function" if "<locals>" in base.__qualname__ else "in a notebook or a script"
            )
            return (
                f"the class attribute {base.__qualname__}.{name} ({type(value).__name__}){of} "
                f"cannot be pickled: a class defined {where} is sent by value, with its "
                "attributes. Create it in the method (or define the class in a module), or "
                "use cluster=None to compute here"
            )
    return None


def _unpicklable_field(name: str, value: tp.Any, fails: tp.Callable[[tp.Any], bool]) -> str:
    """The error of a field of the config that cannot be pickled: an attribute of its class
    (sent by value), a field of it (a sub-config), or the value itself."""
    kind = type(value).__name__
    culprit = _unpicklable_class_attribute(type(value), fails, of=f" of the config's {name!r}")
    if culprit is not None:
        return culprit
    if hasattr(value, "__pydantic_fields_set__"):  # (a sub-config: which of its fields)
        sub = dict(getattr(value, "__dict__", None) or {})
        sub.update(getattr(value, "__pydantic_private__", None) or {})
        for key, item in sub.items():
            if fails(item):
                return _unpicklable_field(f"{name}.{key}", item, fails)
    return (
        f"the config's {name!r} ({kind}) cannot be pickled. Keep unpicklable objects (locks, "
        "open files, clients) out of the config, e.g. create them in the method, or use "
        "cluster=None to compute here"
    )


def _unpicklable_item(units: tp.Sequence[Unit]) -> tuple[str, tp.Any] | None:
    """The uid and the item of the first map item of these units that cannot be pickled
    (None: the items pickle)."""
    import cloudpickle

    for unit in units:
        for uid, item in zip(unit.uids or (), unit.items or ()):
            try:
                cloudpickle.dumps(item)
            except Exception:
                return uid, item
    return None


def _unloaded_said(job_id: str, error: BaseException | None, log: tp.Any) -> str | None:
    """How a job that failed loading its pickled call ended (see _unloadable), else None."""
    unloadable = _unloadable(str(error)) if error is not None else None
    if unloadable is None:
        return None
    return (
        f"job {job_id} could not load what it had to run ({unloadable}): the module "
        "defining the config (or what it holds) is not importable in the job; with a "
        f"workdir, list that module in workdir.copied too; the job's log: {log}"
    )


def _unloadable(trace: str) -> str | None:
    """The error line of a submitit job that failed loading its pickled call (before any
    code of exca ran in it: a module missing there), else None."""
    if "DelayedSubmission.load" not in trace:
        return None
    errors = [
        line.strip()
        for line in trace.splitlines()
        if line and not line[0].isspace() and ("Error: " in line or "Exception: " in line)
    ]
    return errors[-1] if errors else None


def _cancelled_local_job(job_id: str, stderr: Path) -> str | None:
    """How a local job that ended on a KeyboardInterrupt ended: cancelling one sends it
    SIGINT (its log's last line says so; not worth its traceback), unless the job's
    process noted that none came (the method raised it: its log is quoted)."""
    if not stderr.exists():
        return None
    last = _before_kill_note(read_tail(stderr, 400)).strip().rsplit("\n", 1)[-1].strip()
    if last != "KeyboardInterrupt" and not last.startswith("KeyboardInterrupt: "):
        return None
    # (the note, then the traceback of the interrupt)
    tail = _before_kill_note(read_tail(stderr, 64 * 1024))
    said = interrupt_said(tail)  # (with the map item the method was computing)
    if said is not None:
        return (
            f"local job {job_id} ended without writing its result: {said}; "
            f"its log: {stderr}{LOG_QUOTE}{log_tail(tail)}"
        )
    if last != "KeyboardInterrupt":
        return None
    return f"local job {job_id} was cancelled (interrupted by SIGINT, which job.cancel() sends)"


def _before_kill_note(log: str) -> str:
    """A local job's log without the SIGKILL line its controller ends it with: a job still
    winding down a second after cancel()'s interrupt is killed by cancel() itself."""
    if local_signal_in_log(log) == "SIGKILL":
        return log.rstrip().rsplit("\n", 1)[0]
    return log


def recorded_handle(record: tp.Any) -> Handle:
    """The handle of a job found in the registry (submitted by any process)."""
    if record.cluster in ("local", "debug"):  # (debug: the submitting process runs it)
        return RecordedLocalHandle(record)
    from .registry import submitit_job

    return SubmititHandle(submitit_job(record), record.cluster)


def ended_not_cached(record: tp.Any) -> bool:
    """Whether a recorded job that ended without its outcome ended on a KeyboardInterrupt
    its method raised, a sys.exit it called, or a full disk or a folder it could not
    write met storing its outcome (``errors.not_cached`` of its ending, as the next call
    reads it: it computes the task, or the items, again, see
    decisions.Graph._check_registry), its record not set aside yet (by the job, or by that
    call; on a read-only folder it cannot be): status() and ``exca list`` say what that
    call does. Its log is looked at first (the job notes the interrupt there, see
    worker.run_job_unit; an OSError's traceback ends it): the ending of any other job, a
    Slurm one's asked of sacct, is not looked up."""
    return _ended_so(
        record, None, lambda log: method_ended_in_log(log) or storage_failed_in_log(log), not_cached
    )


def _ended_so(
    record: tp.Any,
    known: tuple[str, str] | None,
    in_log: tp.Callable[[str], bool],
    ending: tp.Callable[[str], bool],
) -> bool:
    """Whether a recorded job's log tail passes ``in_log`` (a quick look) and its ending
    (``Handle.ended_how``) ``ending``."""
    try:
        if not in_log(read_tail(Path(record.stderr), 64 * 1024)):
            return False
    except OSError:  # (no log: not noted)
        return False
    try:
        return ending(recorded_handle(record).ended_how(known))
    except Exception:  # (its ending unknown: as before, a failure)
        return False


# --- executors -------------------------------------------------------------------------------
def run_inline(unit: Unit, progress: tp.Callable[[int], None] | None = None) -> DoneHandle:
    """Run a unit now, in the caller's thread (exceptions are kept in the handle)."""
    try:
        run_unit(unit, progress)
    except Exception as error:
        return DoneHandle(error)
    return DoneHandle()


def run_unit_quietly(unit: Unit) -> Report | BaseException:
    """For the debug executor without a terminal: return failures instead of raising (submitit
    would open a pdb post-mortem nobody can answer); the cache holds the error anyway."""
    try:
        return run_unit(unit)
    except Exception as error:
        return error


def _in_workdir(workdir: tp.Any, function: tp.Callable[[Unit], tp.Any], unit: Unit) -> tp.Any:
    with workdir.activate():
        return function(unit)


def on_slurm(node: tp.Any) -> bool:
    """Whether a node's work goes to Slurm (cluster "slurm", or "auto" with a controller)."""
    cluster = node.execution.cluster
    return cluster in ("slurm", "auto") and resolve_cluster(cluster) == "slurm"


def run_sole_local_unit(unit: Unit) -> Report:
    """The unit of a one-job local submission: its controller process created the literal
    log-folder template (``.../%j``) again; it holds nothing. (In an array, another job's
    controller may be creating it right now, with a mkdir that fails if it vanishes
    meanwhile: the submitter drops it once every job of the array ended.)"""
    with contextlib.suppress(Exception):
        import submitit

        folder = Path(submitit.JobEnvironment().paths.folder)
        _remove_template_folder(str(folder.parent / "%j"))
    return run_job_unit(unit)


_RUNNING = [0]  # units running in this pool process


def _interrupt_left_to_the_caller(signum: int, frame: tp.Any) -> None:
    """A pool process's SIGINT handler: nothing (see _end_with_parent)."""


def _end_with_parent(parent: int, stop: tp.Any = None, items: tp.Any = None) -> None:
    """Pool process initializer: end once the process that made the pool is gone (e.g.
    killed): a pool process would wait for work forever, holding a copy of its memory and
    its output pipes. A unit running then is finished first: its outputs are cached.
    ``stop``: the pool's event set on Ctrl-C (its maps stop at their next item);
    ``items``: the count of the items its maps write (see Pools.poll_items)."""
    _RUNNING[0] = 0  # (forked from a pool process running a unit: none runs here yet)
    _POOL_STOP[0] = stop
    _POOL_ITEMS[0] = items
    if stop is not None:
        # a Ctrl-C reaches the whole process group (a terminal's, a Jupyter interrupt): the
        # caller sets ``stop``, and this process ends at its next item with what it wrote
        # (SIGINT raising here lost the item it computed). A Python handler, not SIG_IGN:
        # the programs the method starts are not made deaf to Ctrl-C.
        import signal

        with contextlib.suppress(ValueError):  # (not the main thread: left as it is)
            signal.signal(signal.SIGINT, _interrupt_left_to_the_caller)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent and not _RUNNING[0]:
                os._exit(0)

    threading.Thread(target=watch, name="exca-parent-watch", daemon=True).start()


def _run_pickled(payload: bytes) -> tuple[Report, bytes | None]:
    """Run a unit in a pool process. Without a folder, its outputs live in this process's
    memory: they are returned (pickled), for the caller's in-memory cache."""
    import cloudpickle

    from ..storage.dumping import dumps_pickle
    from . import callers

    unit = cloudpickle.loads(payload)
    if isinstance(unit, UnloadedUnit):  # (a pool inside a submitit job: its env says so)
        raise (AttributeError if unit.missing else ImportError)(unit.error)
    _RUNNING[0] += 1
    callers.adopt(unit.callers)
    try:
        counted = _POOL_ITEMS[0] is not None and unit.uids is not None  # (a map's)
        report = run_stoppable(_POOL_STOP[0], unit, _count_items if counted else None)
    finally:
        _RUNNING[0] -= 1
        callers.adopt([])  # (the process's next unit: other callers)
    if not _in_memory(unit):
        return report, None
    cache = unit.node.cache
    outputs = [(key, cache[key]) for key in unit.keys if key in cache]
    # (protocol 5, as the cache pickles: the pool's protocol 4 turns a big-endian numpy
    # array into a native one)
    try:
        return report, dumps_pickle(outputs)
    except Exception:  # (an output that does not pickle: its item fails, the others return)
        return report, dumps_pickle([_sendable(key, value) for key, value in outputs])


def _sendable(key: str, value: tp.Any) -> tuple[str, tp.Any]:
    """An output of a pool process without a folder, or the cached error of its item when
    it cannot be pickled back to the caller (as an output a folder cannot store)."""
    from ..storage.cachederror import CachedError
    from ..storage.dumping import dumps_pickle
    from .worker import unsendable

    try:
        dumps_pickle(value)
    except Exception as error:
        fate = (
            "cannot be handed back from its pool process (without a folder, outputs return pickled)"
        )
        failure = unsendable(f"the output of item {key!r}", value, fate, error)
        return key, CachedError.from_exception(failure)
    return key, value


def _in_memory(unit: Unit) -> bool:
    """Whether a unit's outputs stay in memory (a cache without a folder)."""
    return unit.node.cache is not None and unit.node.cache.folder is None


def _adopter(unit: Unit) -> tp.Callable[[tp.Any], None] | None:
    """What takes a pool process's outputs into the caller's in-memory cache (no folder)."""
    if not _in_memory(unit):
        return None
    cache = unit.node.cache

    def adopt(result: tuple[Report, bytes | None]) -> None:
        if result[1] is None:
            return
        outputs = pickle.loads(result[1])
        if outputs:
            cache.set_many(outputs, skip_existing=True)

    return adopt


class _Isolation:
    """The units of a process pool that broke (one of its processes died: killed, out of
    memory, os._exit) fail all at once. They run again here one at a time, each in a
    process pool of its own: the unit that dies again is the one to blame, the others
    complete (at once, they could exhaust the memory again)."""

    def __init__(self) -> None:
        self.queue: list[tuple[bytes, concurrent.futures.Future[tp.Any]]] = []
        self.running: tuple[tp.Any, concurrent.futures.Future[tp.Any]] | None = None
        self.items: tp.Any = None  # (the pools' shared count of items written: see Pools)

    def submit(self, payload: bytes) -> concurrent.futures.Future[tp.Any]:
        import concurrent.futures

        outcome: concurrent.futures.Future[tp.Any] = concurrent.futures.Future()
        self.queue.append((payload, outcome))
        self.pump()
        return outcome

    def pump(self) -> None:
        """Start the next unit once the one running ended (called by handles' done())."""
        if self.running is not None:
            if not self.running[1].done():
                return
            self.running[0].shutdown(wait=False)
            self.running = None
        if not self.queue:
            return
        payload, outcome = self.queue.pop(0)
        pool = _process_pool(1, items=self.items)
        inner = pool.submit(_run_pickled, payload)
        inner.add_done_callback(functools.partial(_settle, outcome, pool=pool))
        self.running = (pool, inner)

    def shutdown(self) -> list[tp.Any]:
        """Drop the queued units; the processes of the one running (to be stopped)."""
        for _, outcome in self.queue:
            outcome.cancel()
        self.queue.clear()
        processes: list[tp.Any] = []
        if self.running is not None:
            pool = self.running[0]
            processes = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            self.running = None
        return processes


def _settle(
    outcome: concurrent.futures.Future[tp.Any],
    inner: concurrent.futures.Future[tp.Any],
    pool: tp.Any = None,
) -> None:
    if inner.cancelled():
        outcome.cancel()
    elif inner.exception() is not None:
        error = tp.cast(BaseException, inner.exception())
        if type(error).__name__ == "BrokenProcessPool" and pool is not None:
            # (the pool's one process, dead: called while the pool fails its futures,
            # before it stops and forgets its processes)
            processes = list((getattr(pool, "_processes", None) or {}).values())
            for process in processes:  # (dead: reaped at once; ended a moment ago)
                process.join(timeout=2.0)
            codes = [process.exitcode for process in processes]
            signals = [-code for code in codes if code is not None and code < 0]
            if signals:
                error.exca_signal = _signal_name(signals[0])  # type: ignore[attr-defined]
        outcome.set_exception(error)
    else:
        outcome.set_result(inner.result())


# a process pool's semaphores and shared counters live in shared memory (/dev/shm)
SHARED_MEMORY_FULL = (
    "cluster='processpool' could not start its pool: no space left in the shared memory of "
    "this machine (/dev/shm), where its semaphores live; free some there, or use "
    "cluster='threadpool' or None (nothing was computed, what is cached is as it was)"
)


def _process_pool(
    workers: int, stop: tp.Any = None, items: tp.Any = None
) -> concurrent.futures.ProcessPoolExecutor:
    import concurrent.futures
    import multiprocessing

    return concurrent.futures.ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_end_with_parent,
        initargs=(os.getpid(), stop, items),
    )


_POOL_STOP: list[tp.Any] = [None]  # in a pool process: its pool's stop event
# in a pool process: the count of the map items its pool's processes wrote, shared with
# the caller (a multiprocessing Value), which shows it on its progress bar as it grows
_POOL_ITEMS: list[tp.Any] = [None]


def _count_items(count: int) -> None:
    counter = _POOL_ITEMS[0]
    lock = counter.get_lock()
    # (a pool process killed while it held the lock, by the out-of-memory killer say,
    # would hold it for good: the count is only shown, never waited for)
    if lock.acquire(timeout=1.0):
        try:
            counter.get_obj().value += count
        finally:
            lock.release()


STOP_WAIT_S = 2.0  # on Ctrl-C, how long pool processes get to write what they computed


class Pools:
    """Thread and process pools of one run (created on first use, shut down at the end)."""

    def __init__(self, on_items: tp.Callable[[int], None] | None = None) -> None:
        # (counts the items of the maps its threads and processes compute, as they are
        # written: a progress bar's; a process pool's through a shared count, polled)
        self._on_items = on_items
        self._process_items: tp.Any = None  # (that count: a multiprocessing Value)
        self._items_seen = 0
        # one pool per cluster and bound (cpus - 1, max_jobs): a map's max_jobs bounds its
        # own chunks (a pool made for an earlier map with a higher bound ran them all at
        # once), with its size: a map needing more workers replaces a smaller pool (which
        # finishes its work, then ends)
        self._pools: dict[tuple[str, int], tuple[concurrent.futures.Executor, int]] = {}
        # replaced pools, with their processes (shutdown(wait=False) forgets them: a
        # Ctrl-C must still stop them)
        self._retired: list[tuple[concurrent.futures.Executor, list[tp.Any]]] = []
        self._isolation = _Isolation()
        # set on Ctrl-C: the maps of the pools' threads and processes stop (see STOP)
        self._stop = threading.Event()
        self._process_stop: tp.Any = None  # (a multiprocessing event, made with the pool)

    @staticmethod
    def workers(count: int, max_jobs: int | None) -> int:
        # (the CPUs this process may use: in a Slurm job of 4 CPUs on a 64-core node, 3
        # workers, not 63 crowding those 4)
        limit = max(1, usable_cpus() - 1)
        if max_jobs:
            limit = min(limit, max_jobs)
        return max(1, min(count, limit))

    def submit(self, units: list[Unit], cluster: str, max_jobs: int | None) -> list[Handle]:
        key = (cluster, self.workers(1 << 30, max_jobs))
        workers = self.workers(len(units), max_jobs)
        pool, size = self._pools.get(key, (None, 0))
        if pool is None or size < workers:
            import concurrent.futures  # (lazy: inline calls need no pool)

            if pool is not None:
                processes = list((getattr(pool, "_processes", None) or {}).values())
                pool.shutdown(wait=False)  # (its work goes on; its workers end after it)
                self._retired.append((pool, processes))
            if cluster == "processpool":
                import multiprocessing

                if multiprocessing.current_process().daemon:
                    raise RuntimeError(
                        f"cluster='processpool' cannot start processes in this one: it is "
                        f"a daemonic process ({multiprocessing.current_process().name}, "
                        "e.g. a worker of a multiprocessing.Pool or a DataLoader). Use "
                        "cluster=None or 'threadpool' in there, or call with one item at "
                        "a time (a single missing item is computed here)"
                    )
                try:
                    if self._process_stop is None:
                        context = multiprocessing.get_context("fork")
                        self._process_stop = context.Event()
                        if self._on_items is not None:
                            self._process_items = context.Value("q", 0)
                            self._isolation.items = self._process_items
                    pool = _process_pool(workers, self._process_stop, self._process_items)
                except OSError as error:  # (the bare errno: as if the cache's disk was full)
                    if error.errno in NO_SPACE:
                        error.add_note(SHARED_MEMORY_FULL)
                    raise
            else:
                pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="exca")
            self._pools[key] = (pool, workers)
        handles: list[Handle] = []
        if cluster == "processpool":
            import cloudpickle

            from . import callers

            # (the threads waiting for them: a unit's process waiting in turn for a claim
            # one of them holds would wait for good, and is refused, see callers.py)
            chain = callers.for_job()
            units = [unit._replace(callers=chain) for unit in units]
            try:  # (all first: never half of them sent)
                payloads = [cloudpickle.dumps(unit) for unit in units]
            except (TypeError, AttributeError, pickle.PicklingError) as error:
                if "pickle" not in str(error):
                    raise
                raise unpicklable_error(units, error, "a process pool") from error
            for unit, payload in zip(units, payloads):
                future = pool.submit(_run_pickled, payload)
                poll = self.poll_items if self._process_items is not None else None
                handles.append(
                    FutureHandle(future, cluster, _adopter(unit), self._isolation, payload, poll)
                )
        else:
            for unit in units:
                on_items = self._on_items if unit.uids is not None else None
                running = pool.submit(run_stoppable, self._stop, unit, on_items)
                handles.append(FutureHandle(running, cluster))
        return handles

    def poll_items(self) -> None:
        """Count the map items the process pools' processes wrote since the last poll."""
        counter = self._process_items
        if counter is None or self._on_items is None:
            return
        written = counter.get_obj().value  # (no lock: a dead holder never blocks this)
        if written != self._items_seen:
            self._on_items(written - self._items_seen)
            self._items_seen = written

    def shutdown(self, cancel: bool = False) -> None:
        """``cancel`` (Ctrl-C, or the call failing in this process, e.g. an OSError): drop
        queued work and stop the pools' workers before returning (they would finish the
        work already sent to them, writing in the folder after the call raised, and the
        interpreter would wait for them at exit; what they wrote is complete, what they did
        not is not indexed)."""
        isolated = self._isolation.shutdown()
        if cancel:
            self._stop.set()
            if self._process_stop is not None:
                self._process_stop.set()
        current = [
            # (read before shutdown(), which forgets them)
            (pool, list((getattr(pool, "_processes", None) or {}).values()))
            for pool, _ in self._pools.values()
        ]
        threads = [
            thread
            for pool, _ in [*self._retired, *current]
            for thread in list(getattr(pool, "_threads", None) or ())
            if thread is not threading.current_thread()
        ]
        for pool, _ in [*self._retired, *current]:
            if cancel:
                with contextlib.suppress(Exception):  # (its workers are stopped below)
                    pool.shutdown(wait=False, cancel_futures=True)
                continue
            try:
                pool.shutdown(wait=True)
            except BaseException:
                # (e.g. an OSError writing to wake its manager: the workers, idle or not,
                # were left running after the call raised)
                self.shutdown(cancel=True)
                raise
        if cancel:
            processes = [p for _, group in [*self._retired, *current] for p in group]
            _stop_workers([*processes, *isolated], threads)
        self._pools.clear()
        self._retired.clear()


STOP_KILL_WAIT_S = 1.0  # how long a pool process told to terminate gets before SIGKILL


def _stop_workers(processes: list[tp.Any], threads: list[threading.Thread]) -> None:
    """Wait for pool workers told to stop (at their next item: they write what they
    computed, then end; a Ctrl-C reaching this process alone, e.g. a notebook's
    interrupt, lost their unwritten outputs), at most STOP_WAIT_S; then the processes
    still in user code are terminated and reaped, so that none writes in the folder once
    the caller's error reaches the user (who may delete the folder or call again at
    once). A thread cannot be ended: one still running is named in a warning."""
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline and (
        any(p.is_alive() for p in processes) or any(t.is_alive() for t in threads)
    ):
        time.sleep(0.02)
    for process in processes:
        with contextlib.suppress(Exception):
            process.terminate()
    for process in processes:
        with contextlib.suppress(Exception):
            process.join(STOP_KILL_WAIT_S)
            if process.is_alive():  # (SIGTERM handled or ignored by the user's code)
                process.kill()
                process.join(STOP_KILL_WAIT_S)
    if stuck := [t.name for t in threads if t.is_alive()]:
        logger.warning(
            "%d thread(s) of this call's threadpool did not stop within %.0f s (in the "
            "method's code; a thread cannot be ended): they may still write their current "
            "item(s) in the cache folder: %s",
            len(stuck),
            STOP_WAIT_S,
            ", ".join(stuck),
        )


LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # the time limit of a local job whose timeout_min is None


# srun ends the whole step once a task of it died or failed (exited non-zero): else, a
# rank of a multi-task job killed (out of memory...), the others ran on, waiting for it in
# their collectives, or, on another node, for its process file to go stale (10 minutes),
# before the job ended. A rank other than 0 exits 0 even when its method raised (rank 0
# caches the outcome: see ranks.py), and rank 0 exits non-zero only once it is done.
SRUN_KILL_ON_BAD_EXIT = "--kill-on-bad-exit=1"
SLURM_SIGNAL_DELAY_S = 90  # submitit's --signal=USR2@90: its time-limit warning
SLURM_WARNING_SLACK_S = 60  # Slurm may send it this much earlier still
SLURM_STARTUP_S = 30  # the warning never comes sooner after the job's start


def slurm_signal_delay_s(timeout_min: int | None) -> int:
    """How long before the time limit Slurm sends a job's warning signal (USR2). The tasks
    of a srun step get it and ignore it (see ``worker._run_on_past_time_limit_warning``),
    but only once python has started: submitit's 90 s, on a job of 1 or 2 minutes, had it
    sent as the job started (Slurm sends it up to 60 s early), killing a task still
    starting. Shorter for those: 1 s at least (Slurm sends no warning for 0; a preemption's
    signal, with PreemptParameters=send_user_signal, may depend on it)."""
    limit = 60 * (timeout_min or 5)  # (None: submitit's default, 5 minutes)
    delay = limit - SLURM_WARNING_SLACK_S - SLURM_STARTUP_S
    return max(1, min(SLURM_SIGNAL_DELAY_S, delay))


def _time_limit_min(params: dict[str, tp.Any]) -> int | None:
    """The job's time limit in minutes: a ``time`` in slurm_additional_parameters replaces
    timeout_min's in the sbatch script (a 1-minute ``time`` with the signal delay of the
    default 5 minutes had the warning sent as the job started)."""
    from .slurm_check import slurm_minutes

    time_limit = (params.get("slurm_additional_parameters") or {}).get("time")
    if time_limit is not None:
        with contextlib.suppress(ValueError):  # (not a time: sbatch says so)
            return slurm_minutes(str(time_limit)) or None  # (UNLIMITED, 0: no limit)
    return tp.cast(int | None, params.get("timeout_min"))


def sbatch_options(extra: dict[str, tp.Any]) -> dict[str, tp.Any]:
    """slurm_additional_parameters with submitit's spelling ("ntasks_per_node"): the same
    option spelled "ntasks-per-node" did not replace the field's, both were written and
    sbatch took the field's (written last)."""
    return {key.replace("-", "_"): value for key, value in extra.items()}


def submitit_executor(execution: Execution, logs: str) -> tp.Any:
    """A configured ``submitit.AutoExecutor`` for an execution (logs: folder with %j)."""
    import submitit

    cluster = resolve_cluster(execution.cluster)
    kwargs: dict[str, tp.Any] = {}
    if execution.conda_env is not None:
        kwargs["slurm_python"] = _conda_python(execution.conda_env)
    if cluster == "local":
        _local_jobs_in_own_session()
    try:
        executor = submitit.AutoExecutor(folder=logs, cluster=cluster, **kwargs)
    except OSError as error:  # (its log folder: say which setting made it)
        error.add_note(
            f"while creating the job log folder {logs!r} (the infra's logs setting "
            f"{execution.logs or '{folder}/logs/{user}/%j'!r}): give a folder that can be made"
        )
        raise
    params = {k: v for k, v in execution.params if v is not None}
    if cluster == "local" and "timeout_min" not in params:
        # (submitit's default killed a local job after 90 s: a laptop's training, or a
        # cluster="auto" run without Slurm, died so; a local process has no queue limit)
        params["timeout_min"] = LOCAL_TIMEOUT_MIN
    if execution.job_name and "name" not in params:
        params["name"] = execution.job_name
    if params.get("slurm_additional_parameters"):
        params["slurm_additional_parameters"] = sbatch_options(
            params["slurm_additional_parameters"]
        )
    if cluster == "slurm":
        params["slurm_signal_delay_s"] = slurm_signal_delay_s(_time_limit_min(params))
        if params.get("slurm_use_srun", True):  # (submitit's default)
            params["slurm_srun_args"] = [SRUN_KILL_ON_BAD_EXIT]
    executor.update_parameters(**params)
    if execution.max_pickle_size_gb is not None:
        executor._executor.max_pickle_size_gb = execution.max_pickle_size_gb  # type: ignore[attr-defined]
    if cluster == "local" and hasattr(executor._executor, "_throttling"):
        # (submitit spaces its submissions by 0.2 s, for a scheduler's sake: a local job
        # array of 30 configs waited 6 s to start its processes, with no scheduler to spare)
        executor._executor._throttling = 0.0
    return executor


class _NewSessionSubprocess:
    """``subprocess`` as submitit's local module sees it: the job controllers it starts
    get a session of their own. A terminal's Ctrl-C (SIGINT to the whole foreground
    process group), or its closing (SIGHUP), then stops the calling script only: its
    local jobs keep running, as Slurm jobs do, and a call cancels those it submitted
    itself. (They shared the script's group: the jobs died with it, as failures.)"""

    def __getattr__(self, name: str) -> tp.Any:
        import subprocess

        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:  # (subprocess's name)
        import subprocess

        kwargs.setdefault("start_new_session", True)
        args = (_recording_controller(args[0]), *args[1:]) if args else args
        # (the controller prints nothing to stdout, its tasks write to the job's log
        # files: sharing the script's stdout, it held a pipe open, `python run.py | tee
        # log` waiting for every local job to end; stderr stays, for the controller's own
        # failure, e.g. a module shadowing submitit)
        for stream in ("stdin", "stdout"):
            kwargs.setdefault(stream, subprocess.DEVNULL)
        with _sigint_held_by(args[0] if args else None):
            process = subprocess.Popen(*args, **kwargs)
            started = getattr(_SUBMITTING, "started", None)
            if started is not None:
                started.append(process)
        return process


@contextlib.contextmanager
def _sigint_held_by(command: tp.Any) -> tp.Iterator[None]:
    """SIGINT blocked in this thread while it starts exca's own controller (``command``):
    the controller inherits the mask and unblocks SIGINT once it can end on it quietly.
    A cancellation's SIGINT while it was still starting (python's own start, its imports)
    printed a KeyboardInterrupt traceback in this process's terminal (its inherited
    stderr); it is now held, then ends the controller silently. (This thread's mask is
    restored once the process is recorded: a Ctrl-C it held is raised then.)"""
    if not (isinstance(command, list) and _OWN_CONTROLLER in command):
        yield  # (another controller, e.g. submitit's, would leave SIGINT blocked in its tasks)
        return
    import signal

    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


# submitit's local controller (`python -m submitit.local._local FOLDER`) subclassed, for a
# submitit whose protocol localcontroller.py may not follow (see _own_controller_fits). It
# also writes to the log of a task killed by a signal how it ended: the controller forgets its
# tasks' exit codes, and a job killed by the out-of-memory killer was said only "died".
# And, as srun with --kill-on-bad-exit (see SRUN_KILL_ON_BAD_EXIT), a task of a multi-task
# job that ended badly (killed, or a non-zero exit) ends the others: they ran on, waiting
# for it in their collectives (until the job's time limit, a week), or ran their method to
# its end for nothing. They get LOCAL_RANK_GRACE_S to end on their own (rank 0 exits
# non-zero once done with a failure: the others end right after), then SIGTERM, then
# SIGKILL; the log of each ends with a note naming the rank that ended first (RANK_ENDED).
# And it makes the job's folder before opening its log there: submitit's submitter makes
# it only after starting the controller, which died on FileNotFoundError when it got there
# first (a loaded machine: the job ended without a result, nothing in its log).
_CONTROLLER = "submitit.local._local"
_RECORDING_CONTROLLER = f"""
import runpy, signal, sys, threading, time
from pathlib import Path

def how(code):
    if code >= 0:
        return f"exit code {{code}}"
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {{-code}}"

def recorded(codes, logs, stopped):
    for rank, (code, log) in enumerate(zip(codes, logs)):
        # (SIGINT: a job cancelled, or a Ctrl-C, which its log's KeyboardInterrupt says)
        if rank in stopped:
            log.write(f"\\n{RANK_ENDED}{{stopped[rank]}}\\n")
            log.flush()
        elif code is not None and code < 0 and -code != signal.SIGINT:
            log.write(f"\\n{KILLED_BY_SIGNAL}{{how(code)}} (signal {{-code}})\\n")
            log.flush()

def ended_with(tasks, stopped):
    while True:
        codes = [t.poll() for t in tasks]
        if all(c is not None for c in codes):
            return
        bad = next((k for k, c in enumerate(codes) if c not in (None, 0)), None)
        if bad is not None:
            break
        time.sleep(0.1)
    end = time.monotonic() + {LOCAL_RANK_GRACE_S}
    while time.monotonic() < end and any(t.poll() is None for t in tasks):
        time.sleep(0.05)
    live = [k for k, t in enumerate(tasks) if t.poll() is None]
    for k in live:
        stopped[k] = f"{{bad}} ended first ({{how(codes[bad])}})"
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for k in live:
            if tasks[k].poll() is None:
                tasks[k].send_signal(sig)
        end = time.monotonic() + {LOCAL_RANK_GRACE_S}
        while time.monotonic() < end and any(tasks[k].poll() is None for k in live):
            time.sleep(0.05)

try:
    from submitit.local import local

    class Controller(local.Controller):  # (exca: see executors._RECORDING_CONTROLLER)
        def start_tasks(self):
            # (the job's folder, which the submitter makes only once this process started)
            local.utils.JobPaths(self.folder, self.pid).folder.mkdir(parents=True, exist_ok=True)
            super().start_tasks()

        def wait(self, *args, **kwargs):
            stopped = {{}}
            watcher = threading.Thread(target=ended_with, args=(list(self.tasks), stopped))
            watcher.daemon = True
            if len(self.tasks) > 1:
                watcher.start()
            codes = super().wait(*args, **kwargs)
            try:  # (submitit's internals as of 1.5: never what makes a job fail)
                if watcher.is_alive():  # (every task ended: it is done too)
                    watcher.join()
                recorded(codes, self.stderrs, stopped)
            except Exception:
                pass
            return codes

except Exception:  # (another submitit: its own controller, as is)
    runpy.run_module("{_CONTROLLER}", run_name="__main__", alter_sys=True)
else:
    Controller(Path(sys.argv[1])).run()
"""


def _recording_controller(command: tp.Any) -> tp.Any:
    """The command of submitit's local controller, made exca's own (localcontroller.py:
    standard modules only, run without site-packages: -S), or _RECORDING_CONTROLLER's for
    a submitit it may not follow (any other command unchanged)."""
    if isinstance(command, list) and command[1:3] == ["-m", _CONTROLLER]:
        if _own_controller_fits():
            # (-P: no script folder, nor cwd, in its sys.path to shadow a standard module)
            return [command[0], "-S", "-P", _OWN_CONTROLLER, *command[3:]]
        return [command[0], "-c", _RECORDING_CONTROLLER, *command[3:]]
    return command  # (with setup lines, a shell's: exca gives local jobs none)


_OWN_CONTROLLER = str(Path(__file__).with_name("localcontroller.py"))


@functools.cache
def _own_controller_fits() -> bool:
    """Whether localcontroller.py follows the installed submitit's local protocol (coded
    against 1.5: its environment variables, log paths and requeue exit code)."""
    try:
        import submitit
        from submitit.core import utils
        from submitit.local import local

        paths = utils.JobPaths("/f/%j", job_id="1", task_id=2)
        return (
            submitit.__version__.startswith("1.5.")
            and local.LOCAL_REQUEUE_RETURN_CODE == REQUEUE_EXIT_CODE
            and local.LocalJobEnvironment._env == _SUBMITIT_LOCAL_ENV
            and (str(paths.stdout), str(paths.stderr)) == ("/f/1/1_2_log.out", "/f/1/1_2_log.err")
            and hasattr(os, "posix_spawnp")
            and os.path.isfile(_OWN_CONTROLLER)
        )
    except Exception:  # (submitit's internals moved: not the one localcontroller follows)
        return False


# the variables submitit's worker reads in a local task (LocalJobEnvironment._env)
_SUBMITIT_LOCAL_ENV = {
    "job_id": "SUBMITIT_LOCAL_JOB_ID",
    "num_tasks": "SUBMITIT_LOCAL_NTASKS",
    "num_nodes": "SUBMITIT_LOCAL_JOB_NUM_NODES",
    "node": "SUBMITIT_LOCAL_NODEID",
    "global_rank": "SUBMITIT_LOCAL_GLOBALID",
    "local_rank": "SUBMITIT_LOCAL_LOCALID",
}


class _Submitting(threading.local):
    """The local job controllers a submission of this thread started so far: stopped if
    it is interrupted before its jobs are known (no record, no cancellation: in their own
    session, nothing else would stop them)."""

    started: list[tp.Any] | None = None


_SUBMITTING = _Submitting()
# held by a submission while it changes this process's state (clean_env hides variables
# of os.environ, a workdir changes the cwd, sys.path and PYTHONPATH): a submission of
# another thread meanwhile (a waiting run submits while its inline work runs, and that
# work can call a job of its own) would start its jobs with that state (from another
# job's code snapshot). Never held while waiting for a claim or a job: no deadlock
_PROCESS_STATE = threading.RLock()


def _new_process_state_lock() -> None:
    """In a process forked while another thread submitted (a process pool of inline
    work): the lock that thread held is free (else a submission there waits forever)."""
    global _PROCESS_STATE
    _PROCESS_STATE = threading.RLock()


os.register_at_fork(after_in_child=_new_process_state_lock)


def _local_jobs_in_own_session() -> None:
    from submitit.local import local

    if not isinstance(local.subprocess, _NewSessionSubprocess):  # (once per process)
        local.subprocess = _NewSessionSubprocess()  # type: ignore[assignment]


def _conda_python(env: str) -> str:
    path = Path(env)
    if not path.is_absolute():
        import sys

        envs = Path(sys.executable).parents[2]
        path = envs / env if envs.name == "envs" else envs / "envs" / env
    python = path / "bin" / "python"
    if not python.exists():
        raise ValueError(f"conda_env={env!r}: no python at {python}")
    return str(python)


# what submitit's clean_env removes from os.environ while a job is submitted (a job
# submitted from a job would inherit them)
_HIDDEN_PREFIXES = ("SLURM_", "SLURMD_", "SRUN_", "SBATCH_", "SUBMITIT_")
_HIDDEN_NAMES = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
)


def _sent_nothing(error: BaseException) -> BaseException:
    """``error``, raised by ``submit_array`` before any job of its submission went out
    (see ``sent_nothing``)."""
    error.exca_sent_nothing = True  # type: ignore[attr-defined]
    return error


def sent_nothing(error: BaseException) -> bool:
    """Whether an error of ``submit_array`` says that no job went out: sbatch refused the
    first one (it exited with an error), or the work could not be pickled. Its marker
    (see submitting.mark) can go: no job of it is queued for a later run to adopt."""
    return bool(getattr(error, "exca_sent_nothing", False))


class SubmissionLeft(Exception):
    """A submission made for another thread (callers.acting_for: a waiting run's thread
    busy with inline work) that would now hide variables of os.environ from that thread's
    code: nothing was submitted, the work is left to that thread."""


def submission_hides_environ() -> bool:
    """Whether submitting a job now removes variables from this process's environment
    for its duration (submitit's clean_env: this process runs in a Slurm job, or with
    torch.distributed's variables), which code running meanwhile in another thread
    would miss (see Scheduler._run_inline). Read while no submission of another thread
    hides them (it then says False, and the thread it answers submits while they are
    hidden from the code of the others)."""
    with _PROCESS_STATE:
        return any(k.startswith(_HIDDEN_PREFIXES) or k in _HIDDEN_NAMES for k in os.environ)


def _array_job_name(units: list[Unit], name: str | None) -> str | None:
    """The name of an array of units: the first node's (its default names one config);
    for several configs, their steps', each once (a pipeline's array may hold several
    steps of equal resources: named after the first alone, squeue said "Train.fit,1" of
    a map's chunks too)."""
    first = units[0].node if units else None
    if first is None or not name or not name.endswith("/" + first.config_uid):
        return name  # (a name the user gave: kept)
    if all(u.node.uid == first.uid for u in units):
        return name
    steps: list[str] = []
    for unit in units:
        own = unit.node.execution.job_name or unit.node.step
        suffix = "/" + unit.node.config_uid
        step = own[: -len(suffix)] if own.endswith(suffix) else own
        if step not in steps:
            steps.append(step)
    return "+".join(steps)


def submit_array(
    units: list[Unit],
    execution: Execution,
    logs: str,
    parallelism: int | None = None,
    dependencies: tp.Sequence[str] = (),
    permissions: int | None = None,
    token: str | None = None,
    corresponding: bool = False,
) -> list[SubmititHandle]:
    """Submit units as one submitit array (split at Slurm's MaxArraySize). ``token``: the
    submission's marker (see registry.Marker), given to Slurm in each job's comment.
    ``corresponding``: ``dependencies`` are elements of one array of as many elements,
    element i of this one needing element i of that one only (it may start once that
    element is done, not once the whole array is)."""
    import submitit

    from .registry import submission_comment

    first = units[0].node if units else None
    step = None if first is None or first.root is None else first.root / first.step
    _make_log_folder(logs, permissions, step)
    name = _array_job_name(units, execution.job_name)
    if name != execution.job_name:
        execution = dataclasses.replace(execution, job_name=name)
    executor = submitit_executor(execution, logs)
    cluster = executor.cluster
    if cluster in ("local", "slurm"):  # (another process: a notebook's lines are sent)
        from .jobprocess import memory_sources

        sources: dict[int, tp.Any] = {}  # (per function: the units of a map share it)
        units = list(units)
        for index, unit in enumerate(units):
            key = id(unit.node.function)
            if key not in sources:
                sources[key] = memory_sources(unit.node)
            if sources[key]:
                units[index] = unit._replace(sources=sources[key])
    if cluster == "slurm":
        extra: dict[str, tp.Any] = {"array_parallelism": parallelism or len(units)}
        if dependencies:
            from .registry import queued_jobs

            # ended jobs cannot be waited for; an array id waits for all its elements
            alive = sorted({j.split("_")[0] for j in queued_jobs(list(dependencies))})
            one_to_one = (
                corresponding
                and len(alive) == 1
                and 1 < len(units) <= max(1, max_array_size())  # (not split: same indices)
                and not _additional(executor).get("dependency")  # (no mix of ',' and '?')
            )
            if one_to_one:
                _run_after_corresponding(executor, alive[0])
            elif alive:  # (with the user's own dependency, if any: it was replaced)
                _run_after(executor, ":".join(alive))
        executor._executor.update_parameters(**extra)
    # (held until submitit made the jobs' folders: see slurmhold)
    hold = cluster == "slurm" and slurmhold.exca_holds(cluster, _additional(executor))
    if hold:
        params = _additional(executor)
        params[slurmhold.HOLD_OPTION] = True
        executor._executor.update_parameters(additional_parameters=params)
    # (MaxArraySize 0: Slurm has arrays disabled, every unit goes as a plain job)
    size = max(1, max_array_size()) if cluster == "slurm" else len(units) or 1
    function: tp.Callable[[Unit], tp.Any] = run_job_unit  # (in the job's own process)
    if cluster == "debug":  # (in this process)
        function = run_unit if sys.stdin.isatty() else run_unit_quietly
    elif cluster == "local" and len(units) == 1:
        function = run_sole_local_unit
    elif cluster == "local" and parallelism is not None and parallelism < len(units):
        # (a job_array's max_workers: its local jobs, all started at once, take turns)
        from .localslots import new_slots_file, run_in_slot

        function = functools.partial(run_in_slot, new_slots_file(), parallelism, function)
    if cluster == "debug" and execution.workdir is not None:
        # a debug job runs in this process when its result is asked for, after the
        # submission's workdir context ended: it enters the snapshot itself
        function = functools.partial(_in_workdir, execution.workdir, function)
    context = (
        execution.workdir.activate() if execution.workdir is not None else contextlib.nullcontext()
    )
    jobs: list[tp.Any] = []
    began = time.time()  # (a pickle left half-written since then is this submission's)
    _SUBMITTING.started = [] if cluster == "local" else None
    try:
        if cluster == "slurm" and len(units) > 1:  # (pickling errors: told below)
            _check_array_pickles(function, units, executor._executor.max_pickle_size_gb)
        # Parts of an array split at MaxArraySize each get the array's throttle: they run
        # one after the other, or together they would run parts x parallelism jobs at once.
        # Plain jobs (MaxArraySize 0 or 1: no arrays, no throttle) make `parallelism`
        # chains instead, each job waiting for the one before it in its chain.
        back = tp.cast(int, parallelism) if size == 1 else 1
        chained = (
            cluster == "slurm"
            and len(units) > size
            and parallelism is not None
            and parallelism < len(units)
            and _can_chain(executor, execution)
        )
        given = _additional(executor).get("dependency") if chained else None
        comment = _additional(executor).get("comment") if cluster == "slurm" else None
        with _PROCESS_STATE:
            # (looked at before this submission's claims and settling: the code of the
            # thread it submits for may have set MASTER_PORT, say, since)
            if callers.acting() and submission_hides_environ():
                raise SubmissionLeft(units[0].node.uid)
            with submitit.helpers.clean_env(), context:
                for start in range(0, len(units), size):
                    part = units[start : start + size]
                    if chained and len(jobs) >= back:  # (the given dependency, and this one)
                        _wait_for(executor, given, jobs[-back].job_id.split("_")[0])
                    if token is not None and cluster == "slurm":  # (which units its elements are)
                        _comment(executor, comment, submission_comment(token, start))
                    if len(part) == 1:
                        jobs.append(executor.submit(function, part[0]))
                        continue
                    with executor.batch():
                        part_jobs = [executor.submit(function, unit) for unit in part]
                    jobs.extend(part_jobs)
                if hold:  # (every folder made: they may start)
                    slurmhold.release([str(job.job_id) for job in jobs])
    except KeyboardInterrupt:  # (never half a submission)
        if cluster == "local":  # (every controller started, returned as a job or not)
            for process in _SUBMITTING.started or ():
                with contextlib.suppress(Exception):
                    _cancel_local_job(process)
        else:
            for job in jobs:
                with contextlib.suppress(Exception):
                    job.cancel(check=False)
        raise
    except slurmhold.NotReleased as error:
        # (held: none started; one it failed to cancel, a later run adopts and releases)
        slurmhold.cancel([str(job.job_id) for job in jobs])
        raise type(error)(
            f"{error}. The job(s) of {units[0].node.uid}"
            + (f" and {len(units) - 1} more" if len(units) > 1 else "")
            + " were cancelled: is the Slurm controller up? `sinfo` tells"
        ) from error
    except submitit.core.utils.FailedJobError as error:
        for job in jobs:  # (what went out before: never half a submission)
            with contextlib.suppress(Exception):
                job.cancel(check=False)
        # (sbatch's own words name the option, not where it came from)
        hint = (
            "Is the Slurm controller up? `sinfo` tells; nothing was submitted"
            if _CONTROLLER_DOWN.search(str(error))
            else "Check the infra's resources, slurm_* fields and slurm_additional_parameters"
        )
        refused = type(error)(
            f"{cluster} refused the job(s) of {units[0].node.uid}"
            + (f" and {len(units) - 1} more" if len(units) > 1 else "")
            + f" ({execution.describe()}): {str(error).strip()}. {hint}"
        )
        # (sbatch exited with an error: it submitted nothing; another FailedJobError, e.g.
        # sbatch killed half-way (by a signal: a negative return code), may have sent a
        # job, which a later run adopts; so may a socket timeout: the controller may have
        # queued the job and not answered)
        cause = error.__cause__
        if (
            isinstance(cause, subprocess.CalledProcessError)
            and cause.returncode > 0
            and not _MAYBE_QUEUED.search(str(error))
        ):
            # (the refused part's pickles and sbatch script: no job ever reads them; in a
            # map's node folder no clean looked for them, they stayed for good)
            _remove_unsent_files(error)
            if not jobs:
                _sent_nothing(refused)
        raise refused from error
    except RuntimeError as error:
        if "executor.max_pickle_size_gb" not in str(error):  # (submitit's: not our array's)
            raise
        for job in jobs:  # (what went out before: never half a submission)
            with contextlib.suppress(Exception):
                job.cancel(check=False)
        _remove_partial_pickles(logs, began, error)
        # (submitit's words say "update executor.max_pickle_size_gb": an exca user sets
        # the infra's field)
        estimate = str(error).split(" of objects")[0].removeprefix("Submitting an estimated ")
        too_large = RuntimeError(
            f"The job of {units[0].node.uid} would pickle an estimated {estimate} (its "
            "config, inputs or items, and the method): raise the infra's max_pickle_size_gb "
            "if this is intended, or keep large data out of configs and items (load it in "
            "the method, from a path). It was not submitted"
        )
        raise (_sent_nothing(too_large) if not jobs else too_large) from error
    except OSError as error:  # (a full disk: the job's pickle is not written, not sent)
        if error.errno not in NO_SPACE:
            raise
        for job in jobs:  # (what went out before: never half a submission)
            with contextlib.suppress(Exception):
                job.cancel(check=False)
        _remove_partial_pickles(logs, began, error)
        note_write_error(error, logs.split("%j")[0].rstrip("/"))
        if not jobs:
            _sent_nothing(error)
        raise
    except (TypeError, AttributeError, pickle.PicklingError) as error:
        if "pickle" not in str(error):
            raise
        for job in jobs:  # (what went out before: never half a submission)
            with contextlib.suppress(Exception):
                job.cancel(check=False)
        _remove_partial_pickles(logs, began, error)
        unpicklable = unpicklable_error(units, error, "a job")
        raise (_sent_nothing(unpicklable) if not jobs else unpicklable) from error
    finally:
        _SUBMITTING.started = None
    template = None
    if cluster == "local" and len(jobs) > 1:
        # each local job's controller process creates the template folder when it starts
        # (mkdir exist_ok, which fails if the folder vanishes meanwhile): dropped once
        # every job of the submission ended, not before
        template = logs
        with _TEMPLATES_LOCK:
            _TEMPLATES.setdefault(template, {}).update(
                {str(j.job_id): _local_job_start(str(j.job_id)) for j in jobs}
            )
        _drop_templates_at_exit()
    elif cluster != "local":  # (a sole local job drops it itself, once started)
        _remove_template_folder(logs)
    if jobs:
        ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
        logger.info(
            "Submitted %d job(s) to %s (%s): %s; logs in %s",
            len(jobs),
            cluster,
            execution.describe(),
            ", ".join(ids[:5]) + (" ..." if len(ids) > 5 else ""),
            logs.split("%j")[0],
        )
    cpus = usable_cpus()
    running = min(len(jobs), parallelism or len(jobs))
    if cluster == "local" and running > cpus:  # (each is a process of this machine)
        logger.warning(
            "%d local jobs computing at once on this machine (%d CPUs): each is a process "
            "of its own (job_array(max_workers=...) caps how many compute at once, a map's "
            "max_jobs how many jobs it makes); for many small tasks, cluster=None (one "
            "after the other, in this process) is faster",
            running,
            cpus,
        )
    return [SubmititHandle(job, cluster, template) for job in jobs]


# per log-folder template, the local jobs of its submissions not yet seen ended: their
# ids (pids), with their process's start time
_TEMPLATES: dict[str, dict[str, int | None]] = {}
_TEMPLATES_LOCK = threading.Lock()
_TEMPLATES_OWNER: list[int] = []  # the pid that registered the exit check (not a fork's)


def _drop_templates_at_exit() -> None:
    if not _TEMPLATES_OWNER:
        _TEMPLATES_OWNER.append(os.getpid())
        import atexit

        atexit.register(_drop_ended_templates)


def _drop_ended_templates() -> None:
    """At exit: the templates none of whose jobs can make them again, though no handle of
    theirs was asked (the calls after a job_array() wait on the cache: its %j folder was
    left behind). A job that ended, or whose controller opened its log file (after making
    the template), will not; one still starting may."""
    if [os.getpid()] != _TEMPLATES_OWNER:  # (a fork's copy of the pending jobs)
        return
    with _TEMPLATES_LOCK:
        pending = {template: dict(jobs) for template, jobs in _TEMPLATES.items()}
    for template, jobs in pending.items():
        if all(_past_its_start(template, i, start) for i, start in jobs.items()):
            with _TEMPLATES_LOCK:
                _TEMPLATES.pop(template, None)
            _remove_template_folder(template)


def _past_its_start(template: str, job_id: str, start: int | None) -> bool:
    if _local_job_start(job_id) != start:  # (ended)
        return True
    from submitit.core.utils import JobPaths

    with contextlib.suppress(Exception):
        return JobPaths(template, job_id, 0).stdout.exists()
    return False


def _local_job_start(job_id: str) -> int | None:
    """The start time of a local job's process (its id is its pid), None once ended."""
    return process_start_time(int(job_id)) if job_id.isdigit() else None


def _template_job_done(job_id: str) -> None:
    """A local job was seen ended (by any handle of it in this process): the log-folder
    template of its submission goes once each of its jobs was (a job seen twice counts
    once)."""
    emptied = []
    with _TEMPLATES_LOCK:
        for template, ids in list(_TEMPLATES.items()):
            if job_id in ids:
                del ids[job_id]
                if not ids:
                    del _TEMPLATES[template]
                    emptied.append(template)
    for template in emptied:
        _remove_template_folder(template)


class _CountingSink:
    """A file that only counts what is written to it."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        return len(data)


def _check_array_pickles(function: tp.Any, units: list[Unit], limit_gb: float) -> None:
    """submitit checks the pickle of a single job against ``max_pickle_size_gb`` (an
    estimate for a batch: the first one's size times their number), not those of a Slurm
    array: the same estimate, before anything is written."""
    import cloudpickle

    sink = _CountingSink()
    cloudpickle.dump((function, units[0]), sink)
    size = sink.size / 1024**3
    if len(units) * size > limit_gb:
        raise RuntimeError(
            f"Submitting an estimated {len(units)} x {size:.2f} > {limit_gb}GB of objects "
            f"(function and arguments) through pickle for the array of {units[0].node.uid} "
            "and others: raise max_pickle_size_gb if this is intended, or keep large data "
            "out of configs and items (load it in the method, from a path)"
        )


def _remove_partial_pickles(logs: str, since: float, error: BaseException) -> None:
    """submitit opens a job's pickle before dumping into it: a failed dump leaves it empty,
    or cut where the disk filled up (a 2 MB tmpfs kept 4096 of 13771 bytes), named by a
    random id that nothing reads. The one the dump that raised ``error`` was writing (its
    traceback names it), written since ``since``, is removed when empty or ending before
    its STOP opcode (checked without unpickling: nothing is imported). Not another's:
    another process submitting jobs of the same step meanwhile writes its pickles in
    the same folder, empty or partial while it dumps them, and needs them once sent."""
    folder = Path(logs.split("%j")[0]) if "%j" in logs else Path(logs)
    ours = _pickles_named(error)
    for path in folder.glob("*.pkl") if ours and folder.is_dir() else []:
        if path.name not in ours:
            continue
        with contextlib.suppress(OSError):
            stat = path.stat()
            if stat.st_size == 0 or (stat.st_mtime >= since - 1 and _cut_short(path)):
                path.unlink()


# the files submitit writes for a submission before sbatch answers, named by a random id:
# its pickles (moved into the job's folder once sent) and its sbatch script
_UNSENT_FILE = re.compile(r"(?:[0-9a-f]{32}\.pkl|\.submission_file_[0-9a-f]{32}\.sh)")


def _remove_unsent_files(error: BaseException) -> None:
    """Remove the pickles and the sbatch script of a submission sbatch refused (it exited
    with an error: nothing was queued, no job will read them), those the frames ``error``
    went through were handling (submitit's locals: ``pickle_path``, ``pickle_paths`` of
    an array, ``submission_file_path``). Not another's: another process submitting jobs
    of the same step meanwhile writes its own in the same folder, and needs them."""
    paths = {
        path
        for path in _paths_in_frames(error, within_lists=True)
        if _UNSENT_FILE.fullmatch(os.path.basename(path))
    }
    for path in paths:
        with contextlib.suppress(OSError):
            if not os.path.islink(path):
                os.remove(path)


def _paths_in_frames(error: BaseException, within_lists: bool = False) -> tp.Iterator[str]:
    """The paths held by the locals of the frames ``error`` went through (and by their
    lists and tuples, ``within_lists``: an array's ``pickle_paths``)."""
    trace = error.__traceback__
    while trace is not None:
        for value in trace.tb_frame.f_locals.values():
            values = value if within_lists and isinstance(value, list | tuple) else (value,)
            for item in values[:100_000]:
                if isinstance(item, str | os.PathLike):
                    path = os.fspath(item)
                    if isinstance(path, str):
                        yield path
        trace = trace.tb_next


def _pickles_named(error: BaseException) -> set[str]:
    """The names of the pickle files the frames ``error`` went through were writing (the
    locals of submitit's dump: ``<random hex>.pkl``)."""
    names = (os.path.basename(path) for path in _paths_in_frames(error))
    return {name for name in names if name.endswith(".pkl")}


def _cut_short(path: Path) -> bool:
    """Whether a pickle file ends before its STOP opcode (a dump cut by a full disk)."""
    import pickletools

    try:
        with open(path, "rb") as handle:
            for _ in pickletools.genops(handle):
                pass
    except (ValueError, EOFError):  # ("pickle exhausted before seeing STOP")
        return True
    except Exception:  # (anything else: not ours to judge)
        return False
    return False


def _remove_template_folder(logs: str) -> None:
    """submitit creates the log folder template itself (a literal ``%j`` folder): drop it
    when empty, job folders are its siblings."""
    if "%j" in logs:
        path = Path(logs.split("%j")[0] + "%j")
        with contextlib.suppress(OSError):
            path.rmdir()
