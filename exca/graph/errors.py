"""Errors raised when cached computations failed, with what users need to act on them."""

from __future__ import annotations

import errno
import re
import typing as tp
from pathlib import Path

from ..storage.cachederror import CachedError, ComputationError
from ..storage.files import WRITE_NOTE_STARTS


class UpstreamFailed(RuntimeError):
    """What a node needs from upstream was not in the cache when it started (the upstream
    job failed), or could not be read; not this node's own failure: a later run
    recomputes it."""


class JobFailedError(RuntimeError):
    """A job ended without writing its result: cancelled, timed out, out of memory, killed.
    ``item_uids``: for a map, the uids of the items it left not computed (else empty)."""

    def __init__(self, message: str, item_uids: tp.Sequence[str] = ()) -> None:
        super().__init__(message)
        self.item_uids = list(item_uids)


NOTHING_CACHED = ""  # (jobs.not_forced: the forced job's predecessor removed, nothing since)
NO_JOB = "-"  # (jobs.not_forced: computed without a job, started before the force)
# what a job's log says of a KeyboardInterrupt that no stop signal caused (a local job is
# cancelled by SIGINT: one raised by the method is no cancel)
RAISED_INTERRUPT = "KeyboardInterrupt was raised (by the method: no SIGINT was received)"
# ... which is never cached as the config's failure (an interrupt is no property of the
# config): a task's job sets its record aside, as a job refusing its config does, and the
# next call computes it, in any mode, as after an inline call's KeyboardInterrupt
INTERRUPT_HINT = "nothing is cached: the next call computes it"
# the attribute of a KeyboardInterrupt that stopped a map's method naming the item it was
# computing: raised by the method in a pool's thread or process, the caller's error names it
INTERRUPTED_ITEM = "exca_item"
# ... and how many of its job's items the map's unit had cached then, of how many (what a
# job's log says of it: its outputs written before are kept, see worker._compute_from)
CACHED_ITEMS = "exca_cached_items"
# ... and the map (its label or uid): a task's job names it, the map its method called
INTERRUPTED_MAP = "exca_map"

# the errno of an OSError of the storage or of the machine, not of a computation: a full
# disk or quota, a file size limit, permissions, a read-only file system, I/O, a network
# file system gone, too many open files, no memory
ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.EIO,
        errno.ESTALE,
        errno.ENOTCONN,
        errno.ETIMEDOUT,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
    }
)
# ... met by a task's job storing its outcome: never cached as the config's failure (as
# inline, where that OSError propagates): the job sets its record aside, as for a
# KeyboardInterrupt, and the next call computes it, in any mode
STORAGE_HINT = (
    "not a failure of the config, nothing is cached: once its cache folder has space (or "
    "write access) again, the next call computes it"
)
_ERRNO_RAISED = re.compile(r"\b\w*Error: \[Errno (\d+)\]")


def storage_failed(how: str) -> bool:
    """Whether a job's ending (``Handle.ended_how``, its first line) is an OSError of its
    environment (see ENVIRONMENT_ERRNOS) the job raised: met storing the outcome (the
    method's own errors are cached, as its outcome); not cached, see STORAGE_HINT."""
    match = _ERRNO_RAISED.search(how.partition("\n")[0])
    return match is not None and int(match.group(1)) in ENVIRONMENT_ERRNOS


def storage_failed_in_log(log: str) -> bool:
    """Whether a job's log shows an OSError of its environment raised (a look before its
    ending is read, see storage_failed)."""
    return any(int(m.group(1)) in ENVIRONMENT_ERRNOS for m in _ERRNO_RAISED.finditer(log))


def not_cached(how: str) -> bool:
    """Whether a job's ending is none of the config's failures, the next call computing
    it: its method's KeyboardInterrupt or sys.exit, or what its storage raised."""
    return method_interrupted(how) or storage_failed(how)


# what a job's log says of a SystemExit the method raised (sys.exit), after "SystemExit(code)"
EXITED_IN_METHOD = " was raised (sys.exit in the method?)"


def exit_said(log: str) -> str | None:
    """The job's note of a sys.exit in the method, from "SystemExit(" on (with the map item
    the method was computing: see interrupted_at), else None."""
    for line in reversed(log.splitlines()):
        if EXITED_IN_METHOD in line and "SystemExit(" in line:
            return line[line.index("SystemExit(") :].strip()
    return None


def interrupted_at(error: BaseException) -> str:
    """Which map item the method was computing when it raised ``error`` (a
    KeyboardInterrupt, a SystemExit), as a job's log note ends: "" when unknown (a task)."""
    item = getattr(error, INTERRUPTED_ITEM, None)
    if item is None:
        return ""
    said = f" while computing item {item!r}"
    cached = getattr(error, CACHED_ITEMS, None)
    if cached is not None:  # (what `exca logs` says of the job's items: see cli)
        said += f" {CACHED_SAID}{cached[0]} of its {cached[1]} item(s))"
    return said


CACHED_SAID = "(the job had cached "


def task_interrupted_at(error: BaseException) -> str:
    """Where a task's method was when it raised ``error``: in a map it called, at an item
    (a task's job note speaks of the task, not of that map's items: see interrupted_at),
    or "" (in the method itself)."""
    item = getattr(error, INTERRUPTED_ITEM, None)
    if item is None:
        return ""
    where = getattr(error, INTERRUPTED_MAP, None)
    return f" in a map it called ({where}), at item {item!r}" if where else f" at item {item!r}"


def interrupt_said(log: str) -> str | None:
    """RAISED_INTERRUPT as a job's log notes it, with the item the method was computing
    (see interrupted_at), else None."""
    for line in reversed(log.splitlines()):
        if RAISED_INTERRUPT in line:
            return line[line.index(RAISED_INTERRUPT) :].strip()
    return None


def pool_interrupt(
    error: BaseException, what: str, cluster: str, missing: tp.Sequence[str]
) -> JobFailedError:
    """The error of a call whose method raised KeyboardInterrupt, or called sys.exit, in a
    pool's thread or process (``what``: what was not computed, ``missing`` its items): not
    the caller's Ctrl-C (which stops the caller itself, not here), and a bare
    KeyboardInterrupt read as one, a bare SystemExit ended the caller's script silently.
    The method's own traceback is its cause."""
    item = getattr(error, INTERRUPTED_ITEM, None)
    where = "a thread" if cluster == "threadpool" else "a process"
    which = f" computing item {item!r}" if item is not None else ""
    hint = ITEMS_HINT if missing else INTERRUPT_HINT
    if isinstance(error, SystemExit):
        said = f"the method called sys.exit({error.code!r}) in {where} of the {cluster}{which}"
        why = f"nothing is cached for it: {hint}"
    else:
        said = f"the method raised KeyboardInterrupt in {where} of the {cluster}{which}"
        why = f"raised by the method itself: no Ctrl-C; {hint}"
    failure = JobFailedError(f"{what}: {said} ({why})", missing)
    failure.__cause__ = error
    return failure


LOG_QUOTE = "\nthe end of that log:\n"  # (what precedes the end of a job's log a message quotes)


# what a job refusing a config whose class was edited while it was queued raised (see
# jobprocess.ClassChangedError), as its ending quotes it
CLASS_CHANGED = "ClassChangedError: "
# ... and a job that could not import its config (jobprocess.ConfigImportError): refused too
CONFIG_UNIMPORTABLE = "ConfigImportError: "


NEVER_STARTS = "Slurm never starts it"  # (a job's own advice: no retry hint)


def class_changed(how: str) -> bool:
    """Whether a job's ending (``Handle.ended_how``) is its refusal of a config whose
    class changed, or of a config it could not import: not a failure of the computation
    (nothing cached, nothing to retry)."""
    return CLASS_CHANGED in how or CONFIG_UNIMPORTABLE in how


def method_interrupted(how: str) -> bool:
    """Whether a job's ending (``Handle.ended_how``) is a KeyboardInterrupt its method
    raised (no SIGINT: not a cancel), or a sys.exit it called (its first line says so, see
    EXITED_IN_METHOD): not cached, as a refusal (see RAISED_INTERRUPT)."""
    return RAISED_INTERRUPT in how or EXITED_IN_METHOD in how.partition(LOG_QUOTE)[0]


def method_ended_in_log(log: str) -> bool:
    """Whether a job's log notes that its method raised KeyboardInterrupt or called
    sys.exit (see worker.run_job_unit): what the next call reads as no failure."""
    return RAISED_INTERRUPT in log or exit_said(log) is not None


RETRY_HINT = "use mode='retry' to recompute"
# (what a caller in mode retry is told instead: its retry was that job, or followed it)
RETRIED_HINT = "this call in mode retry retried it already: call again to recompute"
# (a map's items a job left missing are not recorded as failed: mode retry would also
# recompute every item whose error is cached)
ITEMS_HINT = "the next call computes them"


def retry_hint(how: str, items: bool = False, retrying: bool = False) -> str:
    """A job's ending (``Handle.ended_how``) with the hint to recompute, before the end of
    the job's log it may quote (not inside a message of several lines: it cut it); as it
    is for a job that refused a changed class (its message says to submit it again), or that
    Slurm never starts (its own advice: mode=retry alone would follow it again). A task's
    failure is recorded (mode retry computes it again); ``items``: a map's items the job
    left missing, which the next call computes in any mode; ``retrying``: said to a caller
    in mode retry (not told to use it)."""
    if class_changed(how) or NEVER_STARTS in how:
        return how
    said, quote, log_end = how.partition(LOG_QUOTE)
    if items:
        hint = ITEMS_HINT
    elif method_interrupted(how):
        hint = INTERRUPT_HINT
    elif storage_failed(how):
        hint = STORAGE_HINT
    else:
        hint = RETRIED_HINT if retrying else RETRY_HINT
    return f"{said} ({hint}){quote}{log_end}"


def retried_error(error: BaseException | None) -> BaseException | None:
    """A task's lost-job error as a caller in mode retry gets it: its hint says that the
    call retried already (the error cached for later calls keeps "use mode='retry'")."""
    if not isinstance(error, JobFailedError) or f"({RETRY_HINT})" not in str(error):
        return error
    said = str(error).replace(f"({RETRY_HINT})", f"({RETRIED_HINT})", 1)
    return JobFailedError(said, error.item_uids)


def ending_line(how: str) -> str:
    """A job's ending (``Handle.ended_how``) on one line, without the end of its log it
    may quote: what a plan's reason and `exca list` say of a job that ended without its
    result, as the call's error does (they said "ended without a result" only)."""
    return " ".join(how.partition(LOG_QUOTE)[0].split())


def force_not_done(uid: str, how: str, earlier: str, upstream: str | None = None) -> str:
    """What a forced job that ended without computing (e.g. cancelled before it started)
    says: the force did not happen, and what the cache holds instead (``earlier``: the
    job submitted before it that wrote what is cached; "": nothing, removed when the
    forced job was submitted). ``upstream``: the forced sub-config that made this config
    forced (None: this config's own mode='force')."""
    if not earlier:
        now = "the result it replaces was removed when it was submitted: nothing is cached"
    elif earlier == NO_JOB:
        now = (
            "the result cached now is an earlier one (of a computation without a job, started "
            "before it), not a forced one"
        )
    else:
        now = (
            f"the result cached now is an earlier one (of job {earlier}, submitted before it),"
            " not a forced one"
        )
    if upstream is None:
        why, again = "mode='force'", "a new instance in mode='force' computes it again"
    else:  # (this config is not in mode force: what was forced is upstream; it was
        # recomputed, this one was not: mode retry computes it with that new result)
        why = f"its upstream {upstream} is in mode='force'"
        again = RETRY_HINT
    said, quote, log_end = how.partition(LOG_QUOTE)
    return (
        f"{uid} not computed again ({why}): {said}: the forced computation did not "
        f"happen; {now} ({again}){quote}{log_end}"
    )


ITEMS_NAMED = 5  # item uids an error message names, before "... and N more"


def first_named(names: tp.Sequence[str], shown: tp.Callable[[str], str] = str) -> str:
    """``a, b, c and 2 more``: the first ITEMS_NAMED names (each as ``shown`` gives it),
    the others counted."""
    named = ", ".join(shown(name) for name in names[:ITEMS_NAMED])
    if len(names) > ITEMS_NAMED:
        named += f" and {len(names) - ITEMS_NAMED} more"
    return named


def named_items(uids: tp.Sequence[str]) -> str:
    """``'a', 'b', 'c'``: the first ITEMS_NAMED uids, the others counted."""
    return first_named(uids, repr)


# where a text names a job by its id: after "job " (Slurm's "JOB 12 ON node CANCELLED"
# too), in a command (scancel, scontrol's jobid=) or a path (its log folder and file); by
# one of its steps in Slurm's words (slurmstepd's "StepId=12.batch", "STEP 12.0 ON node
# CANCELLED", an older "in step 12.batch cgroup"), in scontrol's output ("JobId=12")
_BEFORE_IDS: tuple[str, ...] = ("job ", "Job ", "JOB ", "jobs ", "jobid=", "job_id=", "JobId=")
_BEFORE_IDS += ("scancel ", "release ", "StepId=", "STEP ", "step ", "/")
# ... the id whole: not the start of a longer word or number (job 12's text holds 123),
# but a log file of submitit's (12_0_log.err), or a step of the job (12.batch, 12.0)
_ID_ENDS = re.compile(r"_\d+_log\b|\.(?:batch|extern|interactive|\d+)(?!\w)|[^\w.-]|\.(?!\w)|$")
_UID_ENDS = re.compile(r"(?![\w,=-]|\.\w)")  # (a uid whole: not x=1 in x=10)
_IN_UIDS = re.compile(r"[\w.,=-]")


def _without(text: str, name: str, mark: str, named: tp.Callable[[int, int], bool]) -> str:
    """``text`` with each occurrence of ``name`` that ``named(start, end)`` replaced by
    ``mark`` (str.find, not a pattern per name: a call's 1000 chunk jobs, 1000 ids)."""
    parts, done = [], 0
    at = text.find(name) if name else -1
    while at >= 0:
        end = at + len(name)
        if named(at, end):
            parts += [text[done:at], mark]
            done = end
        at = text.find(name, end if done == end else at + 1)
    return "".join(parts) + text[done:] if parts else text


def without_job_id(text: str, job_id: str, mark: str = "\0") -> str:
    """A job's text with each mention of its job id (after ``_BEFORE_IDS``, whole)
    replaced by ``mark``: the endings of jobs alike but for their ids are then equal.
    Only mentions: a number that happens to hold the id (a line number, an exit code, a
    longer id) stays, so that two jobs exiting with their own codes are not said alike."""
    return _without(
        text,
        job_id,
        mark,
        lambda at, end: text.endswith(_BEFORE_IDS, 0, at) and bool(_ID_ENDS.match(text, end)),
    )


def without_uid(text: str, uid: str, mark: str = "\0") -> str:
    """A text with each mention of a node's uid (whole: not inside a longer uid, ``x=1``
    of ``x=10``) replaced by ``mark``."""
    return _without(
        text,
        uid,
        mark,
        lambda at, end: (
            (at == 0 or not _IN_UIDS.match(text[at - 1])) and bool(_UID_ENDS.match(text, end))
        ),
    )


def same_endings(endings: tp.Sequence[tuple[str, str]]) -> list[str]:
    """The endings (``Handle.ended_how``) of several jobs, by job id, each said once: the
    jobs ending the same way (the same words once their job ids, in their log paths too,
    are set aside) are named after the first one's ending, "and in N other jobs: ...".
    (Eight chunk jobs that could not import their config printed its paragraph eight
    times.)"""
    groups: dict[str, list[tuple[str, str]]] = {}
    for job_id, how in endings:
        key = without_job_id(how, job_id)
        groups.setdefault(key, []).append((job_id, how))
    said = []
    for group in groups.values():
        how = group[0][1]
        others = [job_id for job_id, _ in group[1:]]
        if others:
            jobs = "job" if len(others) == 1 else "jobs"
            first, quote, log_end = how.partition(LOG_QUOTE)
            named = first_named(others)
            how = f"{first}; and so in {len(others)} other {jobs}: {named}{quote}{log_end}"
        said.append(how)
    return said


def failed_upstreams(uids: tp.Sequence[str], verb: str = "failed") -> str:
    """``upstream A failed``, or ``2 upstream nodes failed: A, B``: every failed input of a
    node named (an aggregation over evaluations, two of which failed, named the first
    only), the first ITEMS_NAMED of many, the others counted."""
    if len(uids) == 1:
        return f"upstream {uids[0]} {verb}"
    return f"{len(uids)} upstream nodes {verb}: {first_named(uids)}"


def items_not_computed(uids: tp.Sequence[str], node_uid: str) -> str:
    """``3 item(s) of <node> not computed ('a', 'b', 'c')``: which ones, not just how many."""
    return f"{len(uids)} item(s) of {node_uid} not computed ({named_items(uids)})"


def as_bool(value: tp.Any) -> bool | None:
    """A flag given as True/False, or as a numpy bool (``np.bool_(True)``, from an array
    or a comparison): as a bool; None for anything else (refused: "no" is true)."""
    if isinstance(value, bool):
        return value
    kind = type(value)
    if kind.__name__ in ("bool_", "bool") and kind.__module__ == "numpy":
        return bool(value)
    return None


def legacy_cache(node: tp.Any) -> Path | None:
    """A node's cache under its config's legacy (v2) folder name, an older exca's, when
    its own folder is not there (None otherwise)."""
    if node.legacy_folder is None or node.folder is None or node.folder.exists():
        return None
    legacy = node.legacy_folder()
    if legacy is not None and node.inputs_uid is not None:  # (in its config's folder)
        legacy /= node.inputs_uid
    return legacy if legacy is not None and legacy.exists() else None


def legacy_not_renamed(node: tp.Any, legacy: Path, who: str) -> str:
    """What a call that renames nothing says of a cache under its legacy (v2) name."""
    root = legacy.parent.parent if node.inputs_uid is None else legacy.parent.parent.parent
    return (
        f"its cache is there under its legacy (v2) name {legacy}, which {who} does not "
        "rename: call it once in another mode (renamed then), or rename the cache with "
        f"exca.helpers.update_uids({str(root)!r}, dryrun=False)"
    )


def read_only_error(node: tp.Any, what: str) -> RuntimeError:
    """The error of a read-only node missing something (naming its cache folder: a map
    node's uid ends with the digest of its items, not a folder)."""
    legacy = legacy_cache(node)
    if legacy is not None:
        what += "; " + legacy_not_renamed(node, legacy, "mode 'read-only'")
    return RuntimeError(
        f"{node.uid}: {what} (mode='read-only' never computes; cache folder: {node.folder})"
    )


# (how the note of a cached error of a method edited since it raised starts, see calls)
EDITED_NOTE = "exca: this error is cached, raised by other code of "


class NodeFailures(RuntimeError):
    """Several nodes of one run failed; ``failures`` maps each node uid to its error."""

    def __init__(self, failures: dict[str, BaseException]) -> None:
        self.failures = failures
        lines = [f"{len(failures)} node(s) failed:"]
        alike = _refused_alike(failures)
        for uid, error in failures.items():
            if uid in alike and not alike[uid]:
                continue  # (said with the first node refused so)
            # (its remedy whole: said once for the nodes refused alike)
            limit = 1000 if uid in alike else 300
            line = f"  - {uid}: {type(error).__name__}: {_summary(str(error), limit)}"
            # (a cached error of a notebook's method fixed since: the one line seen of it)
            edited = [n for n in getattr(error, "__notes__", ()) if n.startswith(EDITED_NOTE)]
            lines.append(line + (f" ({edited[0][len('exca: ') :]})" if edited else ""))
            # (a full disk, an unwritable folder: which one, and what to do)
            said = [n for n in getattr(error, "__notes__", ()) if n.startswith(WRITE_NOTE_STARTS)]
            if said:
                lines.append(f"    ({said[0]})")
            others = alike.get(uid)
            if others:
                lines.append(f"    and so in {len(others)} other node(s): {first_named(others)}")
        super().__init__("\n".join(lines))


_JOB_ID = re.compile(r"\bjob ([\w.-]+) ")


def _refused_alike(failures: dict[str, BaseException]) -> dict[str, list[str]]:
    """The nodes whose jobs refused their config for the same reason (it could not be
    imported, or its class changed: the same words once the node's uid and its job id
    are set aside), grouped under the first one: its uid -> the others' (with their job
    ids); theirs -> [] (a sweep of 8 jobs that could not import its config printed its
    paragraph 8 times)."""
    groups: dict[str, list[str]] = {}
    for uid, error in failures.items():
        text = str(error)
        if not class_changed(text):
            continue
        found = _JOB_ID.search(text)
        key = without_uid(text, uid)
        if found is not None:
            key = without_job_id(key, found.group(1), "\1")
        groups.setdefault(key, []).append(uid if found is None else f"{uid} (job {found[1]})")
    alike: dict[str, list[str]] = {}
    for said in groups.values():
        if len(said) > 1:
            first = said[0].partition(" (job ")[0]
            alike[first] = said[1:]
            alike.update((other.partition(" (job ")[0], []) for other in said[1:])
    return alike


def _summary(message: str, limit: int = 300) -> str:
    """First line of a message, and its last one when it has more (the cause, at the end
    of a traceback a job printed)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return ""
    first = _between_words(lines[0], limit)
    return first if len(lines) == 1 else f"{first} ... {_between_words(lines[-1], limit)}"


def _between_words(line: str, limit: int) -> str:
    """``shortened``, its cut moved to the nearest spaces (within 40 characters): a
    message cut inside its words ("process exited w [...] n ended") read as typos."""
    cut = shortened(line, limit)
    if cut == line:
        return cut
    half = limit // 2
    left, right = line[:half], line[-half:]
    if (space := left.rfind(" ", half - 40)) > 0:
        left = left[:space]
    if (space := right.find(" ", 0, 40)) >= 0:
        right = right[space + 1 :]
    return f"{left}{_CUT}{right}"


def shortened(line: str, limit: int) -> str:
    """A line of at most about ``limit`` characters, cut in its middle: what to do (an
    error's remedy, a uid's digest) is at its end (cut at the limit, a long cache path
    left out the remedy; a probe)."""
    half = limit // 2
    if len(line) <= max(limit, 2 * half + len(_CUT)):  # (a cut would be no shorter)
        return line
    return f"{line[:half]}{_CUT}{line[-half:]}"


_CUT = " [...] "


def raise_from(record: CachedError, where: str) -> tp.NoReturn:
    raise record.to_exception(where)


def self_call_error(uid: str) -> RuntimeError:
    """A decorated method calling itself (directly or not): it would wait for itself."""
    return RuntimeError(
        f"{uid} is already being computed by this very thread: a decorated "
        "method cannot (directly or indirectly) call itself"
    )


def item_cycle_error(uid: str, keys: list[str], holder: str, theirs: str = "") -> RuntimeError:
    """Items of a map (or a task's result, key "result") computed by two workers (sibling
    chunk jobs, or a job waited for whole), each waiting for an item the other computes
    (directly or through other workers). ``theirs``: what the other one computes."""
    if keys == ["result"]:
        shown = "its result being computed here is"
    else:
        shown = "item(s) " + ", ".join(repr(k) for k in keys[:3]) + " being computed here are"
    also = f" (computing {theirs})" if theirs else ""
    return RuntimeError(
        f"{uid}: {shown} needed by {holder}{also}, which "
        "computes what this thread waits for: a decorated method cannot (directly or "
        "indirectly, through jobs) call itself"
    )


def caller_cycle_error(uid: str, holder: str) -> RuntimeError:
    """A job's method calling, through jobs, what one of its callers computes: each would
    wait for the other."""
    return RuntimeError(
        f"{uid} is being computed by a caller of this job ({holder}), which waits for "
        "this job to end: a decorated method cannot (directly or indirectly, through jobs) "
        "call itself"
    )


__all__ = ["ComputationError", "JobFailedError", "NodeFailures", "UpstreamFailed", "raise_from"]
