"""Job registry: which jobs were submitted for a node (``<node folder>/jobs/*.json``).

Submitted-but-not-started work lives here, not in claims: a later call or plan finds
the job (to wait for it instead of submitting again, to show it as running, to reach its
logs) from any process. A node folder also gets a ``submitit`` link to its latest job's
log folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import re
import time
import typing as tp
from pathlib import Path

import orjson

from ..storage import claims, process, saidonce
from ..storage.files import ensure_folder, note_write_error, write_new
from .errors import NEVER_STARTS
from .localcontroller import OLDER_JOB_PREFIX, set_aside
from .node import INPUTS_PREFIX

JOBS_DIR = "jobs"
LINK_NAME = "submitit"

logger = logging.getLogger("exca")


@dataclasses.dataclass
class JobRecord:
    job_id: str
    cluster: str
    logs: str  # the job's own submitit folder (stdout/stderr/pickles)
    submitted: float
    run: str = ""
    keys: list[str] | None = None  # map chunks: the item uids of the job
    host: str = ""
    pid: int = 0  # the submitting process
    # the node folder the job computes into (absolute), "" in records of older versions
    folder: str = ""
    # a local job: when its process started (clock ticks since boot), which tells it from
    # a later process reusing its pid whatever the wall clock did since (None: older
    # versions' records, or a process ended before it was recorded)
    start: int | None = None

    # the node folder the record was read from (not written: see logs_folder)
    node_folder: Path | None = dataclasses.field(default=None, compare=False, repr=False)
    # a job of the folder this one was copied or moved from (not written: see read_all)
    foreign: bool = dataclasses.field(default=False, compare=False, repr=False)
    # a job that refused its config (see set_refused; not written: its file's suffix says)
    refused: bool = dataclasses.field(default=False, compare=False, repr=False)

    @property
    def stdout(self) -> Path:
        return _log_file(self, "out")

    @property
    def stderr(self) -> Path:
        return _log_file(self, "err")

    def logs_folder(self) -> Path:
        """The job's log folder. The record holds the absolute path it had: in a cache
        moved or copied since, the same place in the cache the record was read from, when
        it is there (a copy's own logs, not the original's; an array's logs may be in the
        folder of another node of it)."""
        found = self._logs_in_cache()
        if self.node_folder is None or not self.folder or found.exists():
            return found
        # (its node folder moved to another step since: exca rename of its class, whose
        # step folder's logs went along)
        here, then = _step_of(self.node_folder), _step_of(Path(self.folder))
        if here.name != then.name:
            recorded = Path(os.path.abspath(self.logs))
            if recorded.is_relative_to(then):
                moved = here / recorded.relative_to(then)
                if moved.exists():
                    return moved
        return found

    def own_logs_folder(self) -> Path:
        """The folder of this job's own log and result files: ``logs_folder()``, or for a
        local job whose id (a pid) a later job reused there, the sub-folder where that
        job's controller set this one's files aside (named after its start)."""
        folder = self.logs_folder()
        if self.cluster != "local":
            return folder
        try:
            names = [n for n in os.listdir(folder) if n.startswith(OLDER_JOB_PREFIX)]
        except OSError:
            return folder
        later = [(self._started_after(name), name) for name in names]
        firsts = sorted((start, name) for start, name in later if start is not None)
        return folder / firsts[0][1] if firsts else folder

    def _started_after(self, aside: str) -> float | None:
        """When the job that set files aside in ``aside`` started (epoch seconds) if after
        this one, else None."""
        try:
            booted, ticks = map(int, aside[len(OLDER_JOB_PREFIX) :].split("-"))
        except ValueError:
            return None
        tick = os.sysconf("SC_CLK_TCK")
        started = booted + ticks / tick
        # (of the same boot as this job, start ticks order the two exactly; else the
        # wall clock: this job started before it was recorded)
        if self.start is not None and abs(booted + self.start / tick - self.submitted) < 60:
            return started if ticks > self.start else None
        return started if started > self.submitted else None

    def _logs_in_cache(self) -> Path:
        recorded = Path(self.logs)
        if self.node_folder is None:
            return recorded
        root = root_of(Path(os.path.abspath(self.node_folder)))  # (read from ".", say)
        if self.folder:  # (logs in the cache it was submitted from: the same place in this one)
            original = root_of(Path(self.folder))
            if original != root and recorded.is_relative_to(original):
                return root / recorded.relative_to(original)  # (there or not: not the original's)
        parts = recorded.parts
        for start in range(1, len(parts)):  # (the longest tail of it found in this cache)
            here = root.joinpath(*parts[start:])
            if here == recorded:
                return here
            # (from a <method>,<version> folder down: a shorter tail, <user>/<job id>,
            # could name another job's logs, local job ids being reused pids)
            if "," in parts[start] and here.exists():
                return here
        return recorded


def _log_file(record: JobRecord, kind: str) -> Path:
    folder = record.own_logs_folder()
    # submitit names logs <job_id>_<task>_log.out
    candidates = sorted(folder.glob(f"{record.job_id}_*_log.{kind}"))
    return candidates[0] if candidates else folder / f"{record.job_id}_0_log.{kind}"


def write(
    folder: Path, record: JobRecord, link: bool = True, permissions: int | None = None
) -> None:
    """Record a submitted job for a node folder (atomic), and point ``submitit`` at it."""
    jobs = folder / JOBS_DIR
    ensure_folder(jobs, permissions)
    name = record.job_id.replace("/", "-")
    written = {
        k: v
        for k, v in dataclasses.asdict(record).items()
        if k not in ("node_folder", "foreign", "refused")
    }
    _write_file(jobs, f"{name}.json", orjson.dumps(written), permissions)
    if link:
        globals()["link"](folder, LINK_NAME, link_target(folder, record.logs))


def _write_file(jobs: Path, name: str, data: bytes, permissions: int | None) -> None:
    """Write ``jobs/name`` atomically (a temporary file renamed into place). On a full
    disk, or in a folder this process may not write to, nothing is left behind and the
    error says what to do (a bare "[Errno 28] No space left on device" named no file, and
    its partial temporary file stayed)."""
    tmp = os.fspath(jobs / f".{name}.{os.urandom(3).hex()}.tmp")
    try:
        write_new(tmp, data, permissions)
    except OSError as error:
        note_write_error(error, jobs.parent)
        raise
    os.replace(tmp, jobs / name)


def link_target(folder: Path, logs: str) -> str:
    """A log folder (or code snapshot) inside the cache is linked relatively: the link
    survives moving or copying the cache (one elsewhere keeps its absolute path)."""
    root = os.path.abspath(root_of(folder))
    if os.path.commonpath([root, os.path.abspath(logs)]) != root:
        return logs
    return os.path.relpath(logs, folder)


def _step_of(node_folder: Path) -> Path:
    """The step folder of a node folder, absolute (see root_of)."""
    folder = Path(os.path.abspath(node_folder))
    if folder.name.startswith(INPUTS_PREFIX):
        folder = folder.parent
    return folder.parent


def root_of(node_folder: Path) -> Path:
    """The cache root of a node folder: <root>/<step>/<uid>[/inputs-<digest>] (a uid may
    hold commas, a step always does)."""
    folder = Path(node_folder)
    if folder.name.startswith(INPUTS_PREFIX):
        folder = folder.parent
    return folder.parent.parent


def link(folder: Path, name: str, target: str) -> None:
    """Point ``folder/name`` at target (replaced atomically)."""
    tmp_link = folder / f".{name}.{os.urandom(3).hex()}"
    try:
        os.symlink(target, tmp_link)
        os.replace(tmp_link, folder / name)
    except OSError:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp_link)


def forget(folder: Path | None, job_id: str) -> None:
    """Drop the record of a job (e.g. cancelled on purpose: a later run recomputes)."""
    if folder is None or not job_id:
        return
    name = job_id.replace("/", "-")
    for suffix in (".json", ITEMS_SUFFIX):
        with contextlib.suppress(FileNotFoundError):
            os.remove(folder / JOBS_DIR / (name + suffix))


def set_refused(folder: Path | None, job_id: str) -> None:
    """Set aside the record of a job that refused its config (its class was edited while
    it was queued, see jobprocess.ClassChangedError): no longer a job of the node (its
    status is "not submitted", the next call submits it again), but its log, which says
    why, is still found (``read_all(..., refused=True)``: ``exca logs``). A record this
    user may not move (another user's cache, a read-only one) is left: a plan or a call
    made there found it failing with PermissionError (its ending says why all the same)."""
    if folder is None or not job_id:
        return
    jobs = os.path.join(folder, JOBS_DIR)
    name = job_id.replace("/", "-")
    try:
        os.replace(os.path.join(jobs, name + ".json"), os.path.join(jobs, name + REFUSED_SUFFIX))
    except FileNotFoundError:  # (set aside already, or never written)
        pass
    except OSError as error:
        if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        logger.debug("Could not set aside the record of job %s in %s: %s", job_id, jobs, error)


ITEMS_SUFFIX = ".items"  # next to a record: the item uids its job took (known at run time)
REFUSED_SUFFIX = ".refused"  # a record set aside: its job refused its config (set_refused)


def write_items(folder: Path, job_id: str, uids: list[str], permissions: int | None = None) -> None:
    """Note which items a map chunk job computes, when they were unknown at submission
    (its record has no keys): ``logs(..., item=...)`` finds the job through it."""
    jobs = folder / JOBS_DIR
    ensure_folder(jobs, permissions)
    name = job_id.replace("/", "-")
    _write_file(jobs, name + ITEMS_SUFFIX, orjson.dumps(uids), permissions)


def items_of(folder: Path, record: JobRecord) -> list[str] | None:
    """The item uids of a map chunk job: from its record, else from what the job noted
    when it started (None: unknown, or not a map chunk)."""
    if record.keys is not None:
        return record.keys
    path = folder / JOBS_DIR / (record.job_id.replace("/", "-") + ITEMS_SUFFIX)
    try:
        uids = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return [str(u) for u in uids] if isinstance(uids, list) else None


# --- calls interrupted in a process (no job) ------------------------------------------------
# A map's call interrupted where it was made (Ctrl-C, a KeyboardInterrupt or sys.exit of its
# method) keeps the items it computed: without a note its folder read as a success. The
# note names the call's items; `exca list` counts those not cached since. A call of more
# than NOTED_KEYS items (a map of millions: a note of every uid was tens of MB, written on
# Ctrl-C) notes how many it had and had cached, and the items it left (not cached when it
# ended): all of them when they are at most NOTED_KEYS (any later call that caches them
# removes the note), else the first NOTED_KEYS and a digest of them all, and beside the
# note (<note>.left) an 8-byte hash of each item it left (a later call caching some of
# them takes them out of it, the note goes once none is left: a rerun of the call, a call
# of more items or several calls of some; `exca list` counts those not cached).
INTERRUPTED_SUFFIX = ".interrupted"
LEFT_SUFFIX = ".left"
NOTED_KEYS = 1000


def uids_digest(uids: tp.Sequence[str]) -> str:
    """A digest of a set of item uids (their order aside)."""
    return hashlib.md5("\n".join(sorted(uids)).encode("utf8", "surrogatepass")).hexdigest()


def uid_hashes(uids: tp.Iterable[str]) -> tp.Any:
    """The sorted distinct 8-byte hashes of item uids (a numpy array, little-endian: the
    file beside a big note; ~0.5 us a uid)."""
    import numpy as np

    md5 = hashlib.md5
    raw = b"".join(md5(u.encode("utf8", "surrogatepass")).digest()[:8] for u in uids)
    return np.unique(np.frombuffer(raw, dtype="<u8"))


def left_hashes(note: dict[str, tp.Any]) -> tp.Any:
    """The hashes of the items a big call's note still names as left (see NOTED_KEYS), as
    uid_hashes; None: the note has none (a small note, an older exca's, or its file lost:
    then only the noted uids and the digest tell)."""
    import numpy as np

    if not note.get("hashed"):
        return None
    try:
        with open(note["path"] + LEFT_SUFFIX, "rb") as f:
            raw = f.read()
    except OSError:
        return None
    if len(raw) % 8:  # (not one that this module wrote: unsound to read)
        return None
    return np.frombuffer(raw, dtype="<u8")


def note_interrupted(
    folder: Path,
    uids: list[str],
    how: str,
    item: str | None,
    permissions: int | None = None,
    cached: int | None = None,
    left: list[str] | None = None,
) -> None:
    """Note that a call of this process computing ``uids`` ended on ``how`` (at ``item``;
    ``cached``: how many of them were cached then; ``left``: those not cached then, None:
    not known). Never raises: a note that cannot be written is not worth hiding the
    interrupt."""
    with contextlib.suppress(OSError):
        jobs = folder / JOBS_DIR
        ensure_folder(jobs, permissions)
        host = process.hostname()
        name = f"inline-{host}-{os.getpid()}-{time.time_ns()}"
        data: dict[str, tp.Any] = {"how": how, "item": item, "pid": os.getpid(), "host": host}
        if len(uids) > NOTED_KEYS:  # (see NOTED_KEYS)
            # (the items it left: a later call caching them all can tell, see
            # drop_finished_interruptions; a call's first uids are the first it computed)
            rest = uids if left is None else left
            data.update(count=len(uids), cached=cached, digest=uids_digest(rest), left=len(rest))
            data["hashed"] = len(rest) > NOTED_KEYS
            uids, hashes = rest[:NOTED_KEYS], rest
        text = orjson.dumps({**data, "keys": uids, "time": time.time()})
        _write_file(jobs, name + INTERRUPTED_SUFFIX, text, permissions)
        if data.get("hashed"):  # (after the note: a note never outlives its file)
            raw = uid_hashes(hashes).tobytes()
            _write_file(jobs, name + INTERRUPTED_SUFFIX + LEFT_SUFFIX, raw, permissions)


def interrupted_calls(folder: Path) -> list[dict[str, tp.Any]]:
    """The notes of note_interrupted, oldest first (unreadable ones skipped), each with
    its file's ``path``."""
    try:
        entries = list(os.scandir(os.path.join(folder, JOBS_DIR)))
    except OSError:
        return []
    out = []
    for entry in entries:
        if entry.name.endswith(INTERRUPTED_SUFFIX):
            with contextlib.suppress(OSError, orjson.JSONDecodeError):
                note = orjson.loads(Path(entry.path).read_bytes())
                if isinstance(note, dict) and isinstance(note.get("keys"), list):
                    out.append({**note, "path": entry.path})
    return sorted(out, key=lambda n: n.get("time", 0))


def noted_all_left(note: dict[str, tp.Any]) -> bool:
    """Whether a note of ``note_interrupted`` names every item its call left not cached
    (a note of an older exca's big call names its first items, and says no "left")."""
    return "digest" not in note or note.get("left", note.get("count", 0)) <= len(note["keys"])


def drop_finished_interruptions(
    folder: Path, missing: tp.Callable[[list[str]], list[str]], uids: tp.Sequence[str] = ()
) -> None:
    """Remove the notes of interrupted calls whose items are all cached now (``missing``:
    those of some keys not cached): nothing is left of them to say. A note of a big call
    naming only some of the items it left takes ``uids``, a call's items all cached, out
    of the hashes of those items, and goes once none is left (a note without them: when
    ``uids`` are those items)."""
    digest: str | None = None
    cached: tp.Any = None  # (the hashes of uids: computed once, for the first big note)
    for note in interrupted_calls(folder):
        if "digest" in note and not noted_all_left(note):
            left = left_hashes(note)
            if left is not None:
                if not uids:
                    continue
                cached = uid_hashes(uids) if cached is None else cached
                if not _took_out(note, left, cached):
                    continue  # (items it left are still missing, or unknown)
            else:
                if note.get("left", note.get("count")) != len(uids):
                    continue
                digest = uids_digest(uids) if digest is None else digest
                if digest != note["digest"]:
                    continue
        elif missing([str(k) for k in note["keys"]]):
            continue
        with contextlib.suppress(OSError):  # (its hashes first: no file outlives its note)
            os.remove(note["path"] + LEFT_SUFFIX)
        with contextlib.suppress(OSError):
            os.remove(note["path"])


def _took_out(note: dict[str, tp.Any], left: tp.Any, cached: tp.Any) -> bool:
    """Take the hashes of items cached now out of a big note's file: whether none is
    left. (Two calls doing so at once may put back what the other took out: the note
    then stays longer, never goes while items it left are missing.)"""
    import numpy as np

    rest = left[~np.isin(left, cached, assume_unique=True)]
    if not len(rest):
        return True
    if len(rest) < len(left):
        path = Path(note["path"] + LEFT_SUFFIX)
        with contextlib.suppress(OSError):  # (the mode it had: a shared cache's)
            mode = os.stat(path).st_mode & 0o7777
            _write_file(path.parent, path.name, rest.tobytes(), mode)
    return False


# --- submissions in progress -----------------------------------------------------------------
# A Slurm submission is recorded once sbatch returned: a submitter killed in between (SIGKILL,
# an OOM kill, a closed terminal) left its jobs queued with no record, and the next run
# submitted them again. So before sbatch each node folder gets a marker naming the
# submission (a random token, also given to Slurm as the jobs' --comment, which squeue
# shows); it goes once the records are written. A marker left behind is looked up by the
# next submission of its node (never on a cache hit): its jobs still queued are recorded
# and followed, as if their submitter had recorded them (see submitting.adopt).
MARK_SUFFIX = ".submitting"
_COMMENT = re.compile(r"\bexca:([0-9a-f]{16}):(\d+)\b")


@dataclasses.dataclass
class Marker:
    """A Slurm submission in progress for a node folder (``jobs/<token>.submitting``)."""

    token: str
    logs: str  # the jobs' log folder template (with %j)
    submitted: float
    run: str
    user: str  # (squeue lists the jobs of this user; "": unknown, of every user)
    host: str
    pid: int
    folder: str  # the node folder (absolute)
    # the position in the submission of each unit of this folder -> its item uids (None:
    # a task, or a map's items known at run time); the comment of a part of the array
    # starting at position p is exca:<token>:<p>, its element i is position p + i
    units: list[tuple[int, list[str] | None]]
    code: str | None = None  # the workdir snapshot the jobs run
    held: bool = False  # sent held by exca, released once their folders exist (slurmhold)


def submission_comment(token: str, start: int) -> str:
    """What the jobs of a submission's part starting at position ``start`` carry in their
    Slurm comment (found by marked_jobs)."""
    return f"exca:{token}:{start}"


def mark(folder: Path, marker: Marker, permissions: int | None = None) -> None:
    """Note a submission about to be made for a node folder (atomic)."""
    jobs = folder / JOBS_DIR
    ensure_folder(jobs, permissions)
    _write_file(
        jobs, marker.token + MARK_SUFFIX, orjson.dumps(dataclasses.asdict(marker)), permissions
    )


def unmark(folder: Path, token: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(folder / JOBS_DIR / (token + MARK_SUFFIX))


def markers(folder: Path | None) -> list[Marker]:
    """The submissions noted in a node folder whose submitter did not end them (killed
    between its marker and its records; an unreadable one is said and skipped)."""
    if folder is None:
        return []
    try:
        entries = list(os.scandir(os.path.join(folder, JOBS_DIR)))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for entry in entries:
        if not entry.name.endswith(MARK_SUFFIX) or entry.name.startswith("."):
            continue
        try:
            loaded = orjson.loads(Path(entry.path).read_bytes())
            loaded["units"] = [(int(p), k) for p, k in loaded["units"]]
            out.append(Marker(**loaded))
        except FileNotFoundError:
            continue  # (ended meanwhile)
        except (OSError, orjson.JSONDecodeError, TypeError, KeyError, ValueError) as error:
            _warn_unreadable(entry.path, error)
    return sorted(out, key=lambda m: m.submitted)


def _squeue_call(args: list[str]) -> tp.Any:
    """``squeue -h -r <args>`` (a CompletedProcess, text), or None when it cannot run."""
    import subprocess

    try:
        return subprocess.run(
            ["squeue", "-h", "-r", *args], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def marked_jobs(users: tp.Sequence[str]) -> dict[str, dict[int, str]] | None:
    """The jobs of these users (every user's if one is unknown: "") that squeue lists in
    a state that is not final, whose comment names a submission (ONE call): token ->
    position in the submission -> job id (an array element's ``<array>_<index>``). None
    when squeue does not answer."""
    who = [] if "" in users else ["-u", ",".join(sorted(set(users)))]
    result = _squeue_call([*who, "-o", "%i|%T|%r|%k"])
    if result is None:
        return None
    if who and "Invalid user" in result.stderr:  # (a name this host does not know: squeue
        return marked_jobs([""])  # says so, yet lists nothing and answers 0)
    if result.returncode:
        return None
    found: dict[str, dict[int, str]] = {}
    for line in result.stdout.splitlines():
        job, _, rest = line.partition("|")
        state, _, rest = rest.partition("|")
        reason, _, comment = rest.partition("|")
        matches = list(_COMMENT.finditer(comment))  # (exca's goes last, after the user's)
        state, reason = state.strip(), reason.strip()
        if not matches or state in FINAL_STATES:
            continue
        match = matches[-1]
        base, _, index = job.strip().partition("_")
        if index.startswith("["):  # (grouped elements: 12_[3-5%2], in case -r is not honoured)
            indexes = _expand(index[1:].rstrip("]").split("%")[0])
        else:
            indexes = [int(index)] if index.isdigit() else [] if index else [0]
        start, own = int(match.group(2)), found.setdefault(match.group(1), {})
        for i in indexes:
            own[start + i] = f"{base}_{i}" if index else base
            _STATES[own[start + i]] = state  # (as_jobs says "pending as job ...")
            if state == "PENDING" and reason in HELD_REASONS:  # (see held())
                _HELD[own[start + i]] = reason
            else:
                _HELD.pop(own[start + i], None)
    return found


def read_all(folder: Path | None, copied: bool = False, refused: bool = False) -> list[JobRecord]:
    """Every job recorded for a node folder, oldest first. Without ``copied``, not the
    jobs of the folder this one was copied or moved from (copied with the cache): they
    compute into that folder, not this one; their logs may be here (see logs_folder).
    With ``refused``, also the jobs that refused their config (see set_refused), marked
    so: only their logs are of use."""
    if folder is None:
        return []
    try:
        entries = list(os.scandir(os.path.join(folder, JOBS_DIR)))  # str: no Path parsing
    except (FileNotFoundError, NotADirectoryError):  # (a folder under a file: none either)
        return []
    out = []
    here = ""
    for entry in entries:
        set_aside = refused and entry.name.endswith(REFUSED_SUFFIX)
        if not entry.name.endswith(".json") and not set_aside:
            continue
        try:
            record = JobRecord(**orjson.loads(Path(entry.path).read_bytes()))
        except FileNotFoundError:
            continue  # (removed meanwhile: a clear_job, a resubmission)
        except (OSError, orjson.JSONDecodeError, TypeError) as error:
            _warn_unreadable(entry.path, error)
            continue
        if record.folder:
            here = here or os.path.abspath(folder)
            if record.folder != here and not same_folder(record.folder, here):
                if not copied:
                    continue
                record.foreign = True
        record.node_folder = Path(folder)
        record.refused = set_aside
        out.append(record)
    return sorted(out, key=lambda r: r.submitted)


def same_folder(recorded: str, here: str) -> bool:
    """Whether a job's folder may be this one: under another name (a symbolic link), or
    not there (moved since, or a mount point another host names otherwise: trusted)."""
    try:
        return os.path.samefile(recorded, here)
    except OSError:
        return True


def covers(record: JobRecord, todo: set[str]) -> bool:
    """Whether a job may compute some of these items (a task's job, a chunk of unknown
    items, or no items known to compare with: yes)."""
    return record.keys is None or not todo or not todo.isdisjoint(record.keys)


def recorded(folder: Path | None, job_id: str) -> bool:
    """Whether a job's record is (still) in a node folder."""
    if folder is None:
        return False
    return os.path.exists(os.path.join(folder, JOBS_DIR, job_id.replace("/", "-") + ".json"))


def _warn_unreadable(path: str, error: Exception) -> None:
    """A job record that does not read (written atomically: damaged outside exca), said
    once per process: its job is then unknown here (not waited for, no logs)."""
    if not saidonce.first(("unreadable job record", path)):
        return
    logger.warning(
        "Ignoring the unreadable job record %s (%s: %s): its job is unknown here; remove "
        "the file if that job ended",
        path,
        type(error).__name__,
        error,
    )


def latest(folder: Path | None) -> JobRecord | None:
    records = read_all(folder)
    return records[-1] if records else None


def submitit_job(record: JobRecord) -> tp.Any:
    """A submitit job object for a recorded job (logs, state, cancel) from any process."""
    import submitit

    if record.cluster == "slurm":
        return submitit.SlurmJob(folder=record.logs_folder(), job_id=record.job_id)
    from submitit.local.local import LocalJob

    return LocalJob(folder=record.own_logs_folder(), job_id=record.job_id)


def wrote_outcome(record: JobRecord) -> bool:
    """Whether a recorded job ran to its end (submitit wrote a successful result file):
    its result went into the cache. Missing from the cache now, it was removed since (mode
    force, then interrupted; a clear): the job did not fail. (A job whose method raised
    wrote an error file: that error, cached or not, is how it ended.)"""
    import pickle

    try:
        with open(submitit_job(record).paths.result_pickle, "rb") as handle:
            outcome = pickle.load(handle)  # (small: workers write results to the cache)
    except Exception:  # (no file: it died; logs gone, unreadable: nothing says it ended well)
        return False
    # ("error", traceback): the job itself failed (e.g. its module would not import)
    return isinstance(outcome, tuple) and bool(outcome) and outcome[0] == "success"


def set_aside_older_results(logs: Path, pid: int) -> None:
    """Move the results of an older local job of this id out of a new one's log
    folder, where its record finds them (own_logs_folder): local job ids are pids, which
    are reused, and the default layout (``<logs>/<user>/%j``) then gives the new job the
    old one's folder, whose result file said the new job had ended (well) while it ran.
    Those written before its process started are the older job's. Not its logs: the
    controller may have them open already; it sets them aside itself before that."""
    started = process.start_epoch(pid)
    if started is None:  # (ended already: its own result, if any, is the newest)
        return
    set_aside(str(logs), str(pid), before=started - LOCAL_START_SLACK, kinds=("_result.pkl",))


# the states of a job squeue may list that are final: every other one may still run (or
# be released and run: STOPPED, SPECIAL_EXIT, REQUEUE_HOLD, RESV_DEL_HOLD, SIGNALING...)
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "CANCELLED",
        "FAILED",
        "TIMEOUT",
        "NODE_FAIL",
        "BOOT_FAIL",
        "DEADLINE",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
    }
)


LOCAL_START_SLACK = 2.0  # seconds: precision of a process start time (boot time, clock ticks)


def is_active(record: JobRecord, queued: set[str] | None = None) -> bool:
    """Whether a recorded job may still write results (pending or running) into the
    folder its record was read from."""
    if record.foreign:
        return False  # (it writes into the folder this one was copied from)
    if record.cluster == "slurm":
        if queued is None:
            queued = queued_jobs([record.job_id])
        return record.job_id in queued
    if record.cluster == "local":
        if record.host != process.hostname() or not record.job_id.isdigit():
            return False
        if record.start is not None:
            return process.process_start_time(int(record.job_id)) == record.start
        started = process.start_epoch(int(record.job_id))
        # the job's process started before it was recorded; a later one reuses its pid
        # (a step of the wall clock since moves the start times read now: hence ``start``)
        return started is not None and started <= record.submitted + LOCAL_START_SLACK
    return False  # (debug jobs run in their submitter's process: its claims tell)


def runs_here(record: JobRecord) -> bool:
    """Whether this process runs inside the recorded job: a decorated method calling
    itself in its job found its own job computing it, and waited for it for good (the
    same call without a job says at once that a method cannot call itself)."""
    environ = os.environ
    if record.cluster == "local":
        # (a local job id is a pid: of this host, and of this very controller process,
        # not of an older job whose pid it reuses)
        if record.job_id != environ.get("SUBMITIT_LOCAL_JOB_ID") or record.foreign:
            return False
        if record.host != process.hostname() or not record.job_id.isdigit():
            return False
        return (
            record.start is None or process.process_start_time(int(record.job_id)) == record.start
        )
    if record.cluster == "slurm":
        return record.job_id in (environ.get("SLURM_JOB_ID"), claims.slurm_job_id())
    return False


def still_running(record: JobRecord, queued: set[str] | None = None) -> bool:
    """``is_active``, except for a job whose python ended well: it writes nothing more
    to the cache, though Slurm may list it a while (its epilogue, ``COMPLETING``) and a
    local job's process may not have exited yet (what status, list and clean show)."""
    return is_active(record, queued) and not wrote_outcome(record)


def queued_jobs(job_ids: tp.Sequence[str]) -> set[str]:
    """Which of these Slurm jobs are pending or running, with one ``squeue`` call per 1000
    ids (the controller knows a job at once; sacct may lag right after a submission). When
    squeue does not answer: all of them (they may still run: never resubmitted twice)."""
    confirmed = confirmed_queued(job_ids)
    return set(job_ids) if confirmed is None else confirmed


class QueueLook:
    """Which Slurm jobs are queued (``queued_jobs``), looked at once for many folders: a
    run over many folders (update_uids) asks for every job id it knows first, in one
    squeue call (per 1000 ids: one command line stays short), not one call per folder;
    an id met later and not asked yet (a job recorded since) is asked then, in a call of
    its own. A job queued when looked at is taken as queued for the rest of the run."""

    def __init__(self) -> None:
        self.asked: set[str] = set()
        self.queued: set[str] = set()

    def ask(self, job_ids: tp.Iterable[str]) -> None:
        new = sorted(set(job_ids) - self.asked)
        self.queued |= queued_jobs(new)
        self.asked.update(new)

    def queued_of(self, job_ids: tp.Sequence[str]) -> set[str]:
        """``queued_jobs(job_ids)``, from what was looked at already when it can."""
        self.ask(job_ids)
        return self.queued.intersection(job_ids)


_STATES: dict[str, str] = {}  # Slurm state of the jobs squeue listed last (PENDING, RUNNING...)
_NEVER: dict[str, str] = {}  # pending jobs squeue said last Slurm never starts -> its reason

# squeue's reasons (%r) of a pending job Slurm never starts: waited for, a call waited
# for ever (a slurm_additional_parameters dependency afterok:<a job that failed>)
NEVER_STARTS_REASONS = frozenset({"DependencyNeverSatisfied"})


def never_starts(job_id: str) -> str | None:
    """The reason squeue gave, in its last call listing this pending job, why Slurm will
    never start it (None: none such; no new call)."""
    return _NEVER.get(job_id)


def never_starts_words(job_id: str, reason: str) -> str:
    """Why a call does not wait for a job Slurm never starts, and what to do."""
    return (
        f"job {job_id} is pending with reason {reason}: {NEVER_STARTS} (a "
        "dependency that can no longer be met, e.g. afterok on a job that failed, "
        "given in slurm_additional_parameters; exca.graph.run orders exca's own "
        f"computations): scancel {job_id} (then mode='retry' computes it again), or "
        f"change its dependency (scontrol update jobid={job_id} dependency=...)"
    )


_HELD: dict[str, str] = {}  # pending jobs squeue said last Slurm holds -> its reason

# squeue's reasons (%r) of a pending job held (scontrol hold / uhold, sbatch --hold;
# scontrol requeuehold of a running job: "job requeued in held state"): it may be
# released and run, so a wait for it goes on; it is only told
HELD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin", "job requeued in held state"})


_DEFERRED: set[str] = set()  # pending jobs squeue said last wait for their begin time

# squeue's reason (%r) of a pending job that may not start before its begin time: Slurm
# gives one to a job it requeues (preempted, its node failed, `scontrol requeue`), about
# two minutes on; a wait for it showed only "pending" (or `sbatch --begin`)
DEFERRED_REASON = "BeginTime"
DEFERRED_WORDS = (
    "waits for its begin time (squeue's reason: BeginTime): a job Slurm requeued "
    "(preempted, its node failed, `scontrol requeue`) may not start again for about 2 "
    "minutes, nor one given a later `begin`"
)


def deferred(job_id: str) -> bool:
    """Whether squeue said, in its last call listing this pending job, that it waits for
    its begin time (a job Slurm requeued; no new call)."""
    return job_id in _DEFERRED


def held(job_id: str) -> str | None:
    """The reason squeue gave, in its last call listing this pending job, why Slurm holds
    it (JobHeldUser, JobHeldAdmin; None: not held; no new call)."""
    return _HELD.get(job_id)


def released(job_ids: tp.Iterable[str]) -> None:
    """Forget that squeue said these jobs held: exca released them since."""
    for job_id in job_ids:
        _HELD.pop(job_id, None)


def held_words(job_id: str, reason: str) -> str:
    """What a job Slurm holds waits for, and how to start it ("is held...": after the
    job's name)."""
    return (
        f"is held by Slurm (squeue's reason: {reason}): it does not start "
        f"until it is released (`scontrol release {job_id}`), or cancelled (`scancel "
        f"{job_id}`)"
    )


# array (or job) id -> the job of it a waiting call told held (or deferred), and why
_HELD_TOLD: dict[str, tuple[str, str]] = {}


def tell_held(job_id: str) -> None:
    """Warn, once per job (or array) while it stays held, that a job a call waits for is
    held by Slurm: the call waits on (it may be released), silently it seemed to hang.
    So for a job waiting for its begin time (requeued by Slurm): told again if held."""
    base = job_id.split("_")[0]
    reason = held(job_id)
    if reason is None and deferred(job_id):
        reason = DEFERRED_REASON
    if reason is None:
        if _HELD_TOLD.get(base, ("", ""))[0] == job_id:  # (released: told again if held again)
            _HELD_TOLD.pop(base, None)
        return
    if _HELD_TOLD.get(base, ("", ""))[1] == reason:
        return
    if len(_HELD_TOLD) > 1000:
        _HELD_TOLD.clear()
    _HELD_TOLD[base] = (job_id, reason)
    words = DEFERRED_WORDS if reason == DEFERRED_REASON else held_words(job_id, reason)
    logger.warning("Waiting for job %s, which %s; the wait goes on", job_id, words)


def queue_state(job_id: str) -> str | None:
    """The state squeue gives a Slurm job (PENDING, RUNNING...; None: not queued, or no
    answer): one squeue call, which knows a job at once (sacct may lag)."""
    confirmed_queued([job_id])
    return _STATES.get(job_id)


def last_queue_state(job_id: str) -> str | None:
    """The state squeue gave a Slurm job in its last call listing it (no new call)."""
    return _STATES.get(job_id)


def maybe_requeued(job_ids: tp.Sequence[str]) -> set[str]:
    """Which of these Slurm jobs squeue lists may be ones Slurm requeues (``scontrol
    requeue``, a preemption, a node failure): squeue lists such a job COMPLETING while
    its run is stopped, as it lists one cancelled, then runs it again under the same id.
    Their restart counts tell (ONE squeue call): 0, never requeued. All of them when
    squeue does not answer; none of those it no longer lists (they ended)."""
    if not job_ids:
        return set()
    fields = "ArrayJobID:40,ArrayTaskID:40,RestartCnt:12"
    result = _squeue_call(["-j", ",".join(sorted(set(job_ids))), "-O", fields])
    if result is None or result.returncode:
        return set(job_ids)
    counts: dict[str, str] = {}
    for line in result.stdout.splitlines():
        words = line.split()
        if len(words) == 3:  # (an array element by its array id and index; N/A: no array)
            base, index, count = words
            counts[base if index == "N/A" else f"{base}_{index}"] = count
    return {j for j in job_ids if counts.get(j, "0") != "0"}


def as_jobs(job_ids: tp.Sequence[str]) -> str:
    """ "running as job 12" for a plan's reasons; "pending as job 12" when squeue said
    last that the job (every one of them) waits in the queue."""
    shown = ", ".join(job_ids[:5]) + (", ..." if len(job_ids) > 5 else "")
    pending = bool(job_ids) and all(_STATES.get(j) == "PENDING" for j in job_ids)
    # (.get: another thread's squeue call may forget a job meanwhile)
    never = sorted({r for r in map(_NEVER.get, job_ids) if r is not None})
    said = f" (Slurm never starts it: {', '.join(never)})" if never else ""
    holds = {j: r for j in job_ids if (r := _HELD.get(j)) is not None}
    held_ids = list(holds)
    if held_ids:
        reasons = ", ".join(sorted(set(holds.values())))
        listed = ",".join(held_ids[:5]) + (",..." if len(held_ids) > 5 else "")
        said += f" (held: {reasons}; `scontrol release {listed}` lets it start)"
    elif pending and any(j in _DEFERRED for j in job_ids):
        said += f" ({DEFERRED_WORDS})"
    return (
        f"{'pending' if pending else 'running'} as job{'(s)' if len(job_ids) > 1 else ''} "
        f"{shown}{said}"
    )


def confirmed_queued(job_ids: tp.Sequence[str]) -> set[str] | None:
    """``queued_jobs`` as squeue says it; None when squeue does not answer."""
    if not job_ids:
        return set()
    bases = sorted({j.split("_")[0] for j in job_ids})
    listed: set[str] = set()
    own_ids: set[str] = set()
    # (a call per SQUEUE_IDS ids: the ids of a large cache's jobs, in one argument, passed
    # Linux's 128 kB limit for one; squeue could not run, and every job read as queued)
    for start in range(0, len(bases), SQUEUE_IDS):
        answer = _squeue(bases[start : start + SQUEUE_IDS])
        if answer is None:
            return None
        listed |= answer[0]
        own_ids |= answer[1]
    return {j for j in job_ids if j in listed or j.split("_")[0] in listed or j in own_ids}


SQUEUE_IDS = 1000  # job ids per squeue call


def _squeue(bases: list[str]) -> tuple[set[str], set[str]] | None:
    """The jobs squeue lists for these job (or array) ids in a state that is not final:
    each by its id (an array element's ``<array>_<index>``), and the own job ids of the
    started ones (an element's SLURM_JOB_ID: maybe its array's id); None when squeue
    does not answer."""
    # (-r: one line per array element; grouped, the pending ones are listed as
    # 12_[3,5,7,...] cut at ~32 characters: elements past the cut read as ended)
    result = _squeue_call(["-o", "%i|%T|%A|%r", "-j", ",".join(bases)])
    if result is None:
        return None
    if result.returncode and "Invalid job id" not in result.stderr:
        return None
    listed: set[str] = set()
    own_ids: set[str] = set()
    if len(_STATES) > 10_000:
        _STATES.clear()
        _NEVER.clear()
        _HELD.clear()
        _DEFERRED.clear()
    asked = set(bases)
    # (list(): a copy made at once, another thread may call squeue meanwhile: a waiting
    # run submits while its inline work runs, user threads wait for jobs)
    for said in (_STATES, _NEVER, _HELD):
        for job in [j for j in list(said) if j.split("_")[0] in asked]:
            said.pop(job, None)  # (what this call says replaces it: a job gone from the
            # queue has no state, a released job no hold)
    _DEFERRED.difference_update([j for j in list(_DEFERRED) if j.split("_")[0] in asked])
    for line in result.stdout.splitlines():
        job, _, rest = line.partition("|")
        state, _, rest = rest.partition("|")
        raw, _, reason = rest.partition("|")
        state, reason = state.strip(), reason.strip()
        if not state or state in FINAL_STATES:
            continue
        never = state == "PENDING" and reason in NEVER_STARTS_REASONS
        hold = state == "PENDING" and reason in HELD_REASONS
        later = state == "PENDING" and reason == DEFERRED_REASON
        if "_[" in job:  # (grouped elements: 12_[3-5%2], in case -r is not honoured)
            root, _, ranges = job.partition("_[")
            expanded = [f"{root}_{i}" for i in _expand(ranges.rstrip("]").split("%")[0])]
            listed.update(expanded)
            _STATES.update(dict.fromkeys(expanded, state))
            if never:
                _NEVER.update(dict.fromkeys(expanded, reason))
            if hold:
                _HELD.update(dict.fromkeys(expanded, reason))
            if later:
                _DEFERRED.update(expanded)
        else:
            if never:
                _NEVER[job] = reason
            if hold:
                _HELD[job] = reason
            if later:
                _DEFERRED.add(job)
            listed.add(job)
            _STATES[job] = state
            own = raw.strip()
            if state != "PENDING" or own != job.split("_")[0]:  # (pending: its array's)
                own_ids.add(own)
                _STATES[own] = state
    return listed, own_ids


QUEUE_LOOK_S = 5.0  # seconds an answer of squeue about an array serves its waiting jobs
_QUEUE_LOOKS: dict[str, tuple[float, set[str] | None]] = {}  # array id -> (when, queued)
_MISSED: dict[str, float] = {}  # job id -> when the look that first did not list it was


def left_queue(job_id: str, gone_at_first_miss: tp.Callable[[], bool] | None = None) -> bool:
    """Whether squeue, asked about this job's array at most every QUEUE_LOOK_S (one call
    for all the jobs of an array waited for), no longer lists this job: in two looks in
    a row (a job ended is not taken back; a miss for an instant must not end a wait), or
    in one when ``gone_at_first_miss()`` then says it ended for good. False when squeue
    does not answer."""
    base = job_id.split("_")[0]
    now = time.monotonic()
    looked = _QUEUE_LOOKS.get(base)
    if looked is None or now - looked[0] >= QUEUE_LOOK_S:
        if len(_QUEUE_LOOKS) > 1000:
            _QUEUE_LOOKS.clear()
        answer = _squeue([base])
        looked = _QUEUE_LOOKS[base] = (now, None if answer is None else answer[0] | answer[1])
    when, queued = looked
    if queued is None:
        return False
    if job_id in queued:
        _MISSED.pop(job_id, None)
        return False
    if len(_MISSED) > 10_000:
        _MISSED.clear()
    if job_id not in _MISSED:
        _MISSED[job_id] = when
        return gone_at_first_miss is not None and gone_at_first_miss()
    return _MISSED[job_id] < when


_ALIVE_CACHE: dict[str, tuple[float, bool]] = {}
_ALIVE_CACHE_PRUNED_AT = 1000  # (entries: the expired ones go then)


def slurm_job_alive(job_id: str) -> bool | None:
    """Whether a Slurm job is still queued or running (cached for 2 s; None: unknown)."""
    import shutil

    now = time.time()
    cached = _ALIVE_CACHE.get(job_id)
    if cached is not None and now - cached[0] < 2.0:
        return cached[1]
    if shutil.which("squeue") is None:
        return None
    alive = job_id in queued_jobs([job_id])
    if len(_ALIVE_CACHE) >= _ALIVE_CACHE_PRUNED_AT:  # (a key per job ever looked at, else)
        for key, (when, _) in list(_ALIVE_CACHE.items()):
            if now - when >= 2.0:
                _ALIVE_CACHE.pop(key, None)
    _ALIVE_CACHE[job_id] = (now, alive)
    return alive


def _sacct(fields: str, job_ids: tp.Sequence[str], runs: bool = False) -> list[list[str]]:
    """``sacct`` rows (one per job, array elements included) of these jobs' arrays, with
    the given comma-separated fields; no rows when sacct cannot answer. With ``runs``,
    one row per run of a requeued job (``-D``), oldest first."""
    import subprocess

    bases = sorted({j.split("_")[0] for j in job_ids})
    width = fields.count(",") + 1
    rows: list[list[str]] = []
    for start in range(0, len(bases), SQUEUE_IDS):  # (as squeue's: a short argument)
        ids = ",".join(bases[start : start + SQUEUE_IDS])
        try:
            out = subprocess.run(
                ["sacct", "-n", "-X", "-P", *(["-D"] if runs else []), "-o", fields, "-j", ids],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return []
        rows.extend(row for line in out.splitlines() if len(row := line.split("|")) == width)
    return rows


EXITED_WITH_CODE = "its process exited with code"  # (then the code: sacct's ExitCode)
NO_NODE = "None assigned"  # sacct's NodeList of a job that never got a node
NEVER_STARTED = "it never started (Slurm gave it no node)"
# (a job that ran, was requeued, then ended before its new run got a node)
NOT_RESTARTED = "it was requeued after running, then ended before it started again"


def slurm_exit(job_id: str) -> str:
    """How a Slurm job's process ended, in words ("" when sacct does not say;
    NEVER_STARTED for a job that never got a node, e.g. cancelled while pending)."""
    found = _endings([job_id])
    return found[job_id][1] if job_id in found else ""


def never_got_a_node(job_id: str) -> bool:
    """Whether sacct gives this job no run with a node: it lists none of its own (an array
    element cancelled while pending has none; its array's grouped PENDING row may list
    it for long after, on this Slurm version), or only runs that never got one. False
    for a job that got a node, e.g. one whose launch failed, then requeued (squeue may
    miss it for an instant, with no log written). One sacct call per array and squeue
    look (the elements of a whole pending array cancelled ask)."""
    base = job_id.split("_")[0]
    look = _QUEUE_LOOKS.get(base, (0.0, None))[0]
    asked = _SACCT_AT_LOOK.get(base)
    if asked is None or asked[0] != look:
        if len(_SACCT_AT_LOOK) > 1000:
            _SACCT_AT_LOOK.clear()
        asked = _SACCT_AT_LOOK[base] = (look, _sacct(_ENDINGS_FIELDS, [base], runs=True))
    return all(row[3].strip() == NO_NODE for row in asked[1] if row[0] == job_id)


def slurm_endings(job_ids: tp.Sequence[str], unknown: bool = False) -> dict[str, tuple[str, str]]:
    """State and exit (``slurm_exit``'s words) of ended Slurm jobs, with ONE ``sacct``
    call (a plan describing many dead jobs would otherwise make two calls per job).
    With ``unknown``: ("UNKNOWN", "") for an array element sacct does not list while it
    lists its array (an element cancelled while pending, on some clusters), and for a job
    it lists as not ended yet (it lags behind the queue, for seconds, after an scancel):
    the caller knows it ended."""
    return _endings(job_ids, unknown) if job_ids else {}


_SACCT_AT_LOOK: dict[str, tuple[float, list[list[str]]]] = {}  # array -> (squeue look, rows)
_ENDINGS_FIELDS = "JobID,State,ExitCode,NodeList"


def _endings(job_ids: tp.Sequence[str], unknown: bool = False) -> dict[str, tuple[str, str]]:
    runs: dict[str, list[list[str]]] = {}
    for row in _sacct(_ENDINGS_FIELDS, job_ids, runs=True):
        runs.setdefault(row[0], []).append(row)
    for job in [j for j in runs if "_[" in j]:
        # (pending elements grouped, 12_[3-5%2]: e.g. the array cancelled while they were
        # pending; an element's own row, if any, says more)
        root, _, ranges = job.partition("_[")
        for index in _expand(ranges.rstrip("]").split("%")[0]):
            runs.setdefault(f"{root}_{index}", runs[job])
    found = {}
    for job, rows in runs.items():
        # (its last run says how it ended)
        _, state, code, nodes = rows[-1]
        if state.split(" ")[0].rstrip("+") not in FINAL_STATES:
            # (sacct lags behind the queue: an array element cancelled while pending
            # stays in its array's grouped PENDING row for seconds; the job asked about
            # has ended, so that row tells nothing of how: "ended with state PENDING")
            continue
        if nodes.strip() != NO_NODE:
            how = _exit_words(code.strip())
        elif any(r[3].strip() != NO_NODE for r in rows[:-1]):
            # (requeued after an earlier run, then ended while pending, e.g. cancelled:
            # the code sacct gives that last run, which had no node, is no process's)
            how = NOT_RESTARTED
        else:
            how = NEVER_STARTED
        found[job] = (state.strip(), how)
    if unknown:
        arrays = {j.split("_")[0] for j in runs}
        for job in job_ids:
            # (a plain job sacct lists, not ended yet while it lags: as an element, its
            # row tells nothing of how it ended; one sacct does not list: no answer)
            lags = job in runs or ("_" in job and job.split("_")[0] in arrays)
            if job not in found and lags:
                found[job] = ("UNKNOWN", "")  # (as SubmititHandle.ended_how then says)
    return {j: found[j] for j in job_ids if j in found}


# sacct's ExitCode of a batch job Slurm could not launch because it could not open the
# job's output file (`--output`): said "killed by signal 53" before, naming no cause
LOG_NOT_OPENED_CODE = "0:53"
LOG_NOT_OPENED = (
    "Slurm could not start it: it could not open the job's log file (exit code 0:53), "
    "its folder missing on the node or not writable there"
)


def _exit_words(exit_code: str) -> str:
    """sacct's ExitCode (``code:signal``) in words ("" when it says nothing useful)."""
    import signal

    if exit_code == LOG_NOT_OPENED_CODE:
        return LOG_NOT_OPENED
    code, _, sig = exit_code.partition(":")
    number = int(sig) if sig.isdigit() and int(sig) else None
    if number is None and code.isdigit() and int(code) > 128:
        number = int(code) - 128  # (a shell's code for a process killed by a signal)
    if number is not None:
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return killed_words(name)
    if not code.isdigit():
        return ""
    if int(code) == 0:
        return f"{EXITED_WITH_CODE} 0 (did the method call sys.exit or os._exit?)"
    return f"{EXITED_WITH_CODE} {code}"


def killed_words(signal_name: str) -> str:
    """How a job's process killed by a signal ended, in words (what a local job's says:
    "its process died (killed...")."""
    hint = ": out of memory, or killed by hand" if signal_name == "SIGKILL" else ""
    return f"its process died (killed by {signal_name}{hint})"


# what bash (the batch script) or srun writes to the job's log when the process it waits
# for is killed by a signal ("slurm_script: line 17:  6771 Killed  python -u -m submitit
# ..."; "srun: error: node: task 0: Killed"): sacct then gives the script's code, the
# signal's number as an exit code ("9:0", as a process exiting with code 9)
_BASH_SIGNALS = {
    "Killed": "SIGKILL",
    "Terminated": "SIGTERM",
    "Segmentation fault": "SIGSEGV",
    "Aborted": "SIGABRT",
    "Bus error": "SIGBUS",
    "Floating point exception": "SIGFPE",
    "Illegal instruction": "SIGILL",
    "Hangup": "SIGHUP",
}
# (the batch script's own report, or srun's: not one of a child the method ran, "bash:
# line 1: 17603 Killed sleep 30")
_SIGNAL_REPORT = re.compile(
    r"(?:slurm_script: line \d+: +\d+|^srun: error: .*task \d+:) ("
    + "|".join(_BASH_SIGNALS)
    + r")\b",
    re.MULTILINE,
)


def signal_in_log(text: str, exit_code: int) -> str | None:
    """The signal that killed a job's process, as its log's last report of one says
    (bash's or srun's words), or None; only a signal the job's exit code tells (its
    number, or 128 + it: a job exiting with code 3 was not killed)."""
    import signal

    found = _SIGNAL_REPORT.findall(text)
    if not found:
        return None
    name = _BASH_SIGNALS[found[-1]]
    number = int(signal.Signals[name])
    return name if exit_code in (number, 128 + number) else None


# srun's report of a task of its step that ended badly ("srun: error: node: task 1:
# Killed", "... tasks 0-1: Exited with exit code 1"): the first one names the rank that
# ended the step (srun runs with --kill-on-bad-exit: the others' came after, as it ended them)
_TASK_REPORT = re.compile(
    r"^srun: error: [^:\n]+: tasks? (\d+)[\d,-]*: (Exited with exit code (\d+)|\w[\w ]*)$",
    re.MULTILINE,
)


def rank_zero_reported(text: str) -> bool:
    """Whether srun reported task 0 as ended badly in a job's log (a task ending with
    exit code 0, as os._exit(0) in the method does, is never reported)."""
    return any(task == "0" for task, _, _ in _TASK_REPORT.findall(text))


def first_task_ended(text: str) -> tuple[int, str] | None:
    """The rank (task) srun reported first as ended badly in a job's log of a multi-task
    step, with how in words ("its process died (killed by SIGKILL...)"), or None: no such
    report, or only of task 0 (a job of one task, or rank 0 died alone: the job's words
    say it)."""
    found = _TASK_REPORT.findall(text)
    if not found or all(task == "0" for task, _, _ in found):
        return None
    task, words, code = found[0]
    if code:
        return int(task), f"{EXITED_WITH_CODE} {code}"
    name = _BASH_SIGNALS.get(words.strip())
    return int(task), (killed_words(name) if name else f"its process ended ({words.strip()})")


def sacct_states(job_ids: tp.Sequence[str]) -> dict[str, str]:
    """States of Slurm jobs with ONE ``sacct`` call (array elements included)."""
    if not job_ids:
        return {}
    states: dict[str, str] = {}
    for job, state in _sacct("JobID,State", job_ids):
        states[job] = state.strip()
        if "[" in job:  # pending array elements are grouped: 12_[3-5]
            root, _, ranges = job.partition("_[")
            for index in _expand(ranges.rstrip("]").split("%")[0]):
                states.setdefault(f"{root}_{index}", state.strip())
    return {j: states.get(j, "UNKNOWN") for j in job_ids}


def _expand(ranges: str) -> list[int]:
    out: list[int] = []
    for part in ranges.split(","):
        if "-" in part:
            first, last = part.split("-", 1)
            if first.isdigit() and last.isdigit():
                out.extend(range(int(first), int(last) + 1))
        elif part.isdigit():
            out.append(int(part))
    return out


def now() -> float:
    return time.time()
