"""Multi-task jobs (``nodes`` or ``tasks_per_node`` above 1): submitit starts the job's
function once per task, and distributed code needs every rank to make the same calls
(each one meets the other ranks, e.g. in torch's collectives). Rank 0 decides what to
compute (claims, cached items, per-item retries), caches the outcomes and announces each
call of the method in the job's log folder; the other ranks make the same calls, in the
same order, with the same items, and store nothing. Rank 0 may stop a call of a map's
method after any item (it gave the others back and could not take them back: see
worker._InFlight), so the other ranks start an item of the call only once rank 0 went on
to it (``Call``).

The unit's method may call other decorated methods (a nested call, of a task or a map
with a folder, made in the job's thread): rank 0 announces it as a bracket (``nested``:
its start, the calls of methods it makes in this thread, its end, with the error it
raised), and the other ranks, at their same call, make those calls as they come, then
read rank 0's outcome from the cache instead of deciding or computing anything
themselves (``follow_nested``): every rank steps through the same nested items, and a
collective inside them meets every rank. Computed elsewhere (a pool, a job of its own),
the other ranks only wait for the bracket's end. A folder-less infra keeps its cache in
each process's memory: every rank computes its own, as before."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import os
import re
import shutil
import threading
import time
import typing as tp
from pathlib import Path

from ..storage import claims, process
from ..storage.files import make_folder, write_new

if tp.TYPE_CHECKING:
    import subprocess

logger = logging.getLogger("exca")
POLL_MAX_S = 0.5  # (another rank's next call: its collectives would wait for it anyway)
ITEM_POLL_MAX_S = 0.05  # (rank 0 going on to the next item of a call: waited for per item,
# then POLL_MAX_S once rank 0 spent 10 s on its item: fewer reads of a shared folder)
_CALLS_DIR = "rank-calls"


LEAD_FILE = "lead.json"  # rank 0's process, its mtime refreshed (see claims.keep_fresh)
# (a rank that dies, or exits non-zero, ends the whole job: srun runs with
# --kill-on-bad-exit, a local job's controller does the same, see executors. These waits
# are for what neither sees: a rank alive but silent, on a host whose processes are out
# of sight; a rank that left with exit code 0 is told by its done mark, see _follower_gone,
# or, ended without it (os._exit), by its watcher's ended mark, see _watch_exit)
STARTUP_S = 600.0  # the other ranks wait this long for rank 0 to start announcing
# rank 0 on another host is taken for dead when its lead file is this stale: long, since a
# single step holding the GIL (a big unpickle...) stops its heartbeat thread meanwhile
LEAD_STALE_S = 600.0


class Announcer:
    """Rank 0's side: each call of the unit's method, then the end, as numbered files
    (``permissions``: the cache's, given to the folder and its files, as to the job's
    logs beside them: the other users of the cache read them, `exca clean logs` of
    another user removes them). Only the job's thread writes (no lock): announce takes
    a call of the unit's node (made in that thread; another thread's call of the same
    map, on other items, is another node) or, inside a nested call, one of that thread;
    led and end are that thread's too."""

    def __init__(self, folder: Path, node_uid: str, permissions: int | None = None) -> None:
        self.folder, self.node_uid, self.count = folder, node_uid, 0
        self.permissions = permissions
        self.thread = threading.get_ident()  # (the job's: its nested calls are announced)
        self.depth = 0  # (nested calls of that thread in progress)
        self.task_call: int | None = None  # (the number of the unit's task call, announced)
        # (the starts of those whose bracket is not written yet: a nested call announcing
        # no call inside is one message, see led)
        self.pending: list[dict[str, tp.Any]] = []
        make_folder(folder, permissions)
        lead = folder / LEAD_FILE
        me = {"host": process.hostname(), "pid": os.getpid(), "start": process.self_start_time()}
        _write_json(lead, me, permissions)
        claims.keep_fresh(lead)  # (a rank 0 killed stops refreshing it: the others stop)
        _watch_exit(lead, permissions)  # (its ended mark: the others stop at once)

    def write(self, message: dict[str, tp.Any]) -> int:
        if self.pending:  # (the brackets this message is inside start first)
            started, self.pending = self.pending, []
            for start in started:
                self.write(start)
        _write_json(self.folder / f"{self.count}.json", message, self.permissions)
        self.count += 1
        return self.count - 1


class Call:
    """Rank 0's announced call of a map's method: it tells the other ranks when it goes
    on to the next item, or that the call stops after some items (it gave the others
    back, or the method raised); they start an item only once rank 0 did, or stop too
    (else they computed every announced item: a collective of an item rank 0 never
    computes waited for good, and the ranks disagreed on the items computed)."""

    __slots__ = ("path", "permissions", "stopped")

    def __init__(self, path: Path, permissions: int | None = None) -> None:
        self.path, self.permissions = path, permissions
        self.stopped: int | None = None

    def paced(self, outputs: tp.Iterator[tp.Any], count: int) -> tp.Iterator[tp.Any]:
        """The method's outputs; asked for the next one, rank 0 goes on to its item."""
        done = 0
        try:
            for output in outputs:
                yield output
                done += 1
                if done < count:
                    _write_json(self.path, {"at": done}, self.permissions)
        finally:
            close = getattr(outputs, "close", None)
            if close is not None:  # (a generator: stopped now, as without this one)
                close()

    def stop(self, done: int) -> None:
        """The call ends after its first ``done`` items (the others are not computed)."""
        if self.stopped is None or done < self.stopped:
            self.stopped = done
            _write_json(self.path, {"stop": done}, self.permissions)


# A rank's process that ends without saying so (os._exit in the method, killed...) is seen
# ended from its host only: on another host the others waited for its process file to go
# stale (LEAD_STALE_S). A small process it starts writes its "ended" mark for it: it
# lives on its own (no GIL shared with a busy rank), sees its parent gone within a second
# (or its pipe closed) and writes the mark, unless the rank told it it was done first.
_WATCHER = """
import os, select, sys
mark, parent, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
while os.getppid() == parent:
    if select.select([0], [], [], 1.0)[0]:
        if os.read(0, 1):
            sys.exit(0)
        break
try:
    fd = os.open(mark, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    if mode >= 0:
        os.fchmod(fd, mode)
    os.close(fd)
except OSError:
    pass
"""
_ENDED = ".ended"  # (after a process file's stem: that process ended, see _WATCHER)
_WATCHERS: dict[Path, subprocess.Popen[bytes]] = {}  # a process file -> the watcher of its process


def _watch_exit(path: Path, permissions: int | None) -> None:
    """Have ``path``'s ended mark written once this process ends, unless ``_unwatch``
    told first that it is done (no mark: when a watcher cannot start, its file's
    staleness tells it, as before)."""
    import subprocess
    import sys

    mark = path.with_name(path.stem + _ENDED)
    mode = -1 if permissions is None else permissions
    command = [sys.executable, "-S", "-I", "-c", _WATCHER, str(mark), str(os.getpid()), str(mode)]
    with contextlib.suppress(OSError):
        _WATCHERS[path] = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True
        )


def _unwatch(path: Path) -> None:
    """This process is done with ``path``: its watcher ends without writing its mark."""
    watcher = _WATCHERS.pop(path, None)
    if watcher is not None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            watcher.stdin.write(b"d")  # type: ignore[union-attr]
            watcher.stdin.close()  # type: ignore[union-attr]


def _ended(path: Path) -> bool:
    """Whether the process of the process file ``path`` ended (its watcher's mark)."""
    return path.with_name(path.stem + _ENDED).exists()


def _write_json(path: Path, data: dict[str, tp.Any], permissions: int | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):  # (left by a rank 0 killed while writing)
        tmp.unlink()
    write_new(os.fspath(tmp), json.dumps(data).encode("utf8"), permissions)
    os.replace(tmp, path)  # (another rank never reads half a file)


_ANNOUNCER: list[Announcer] = []  # rank 0 of a multi-task job: its announcer
# non-empty in each rank of a multi-task job (a decorated call looks at nested_role then)
ACTIVE: list[bool] = []


def job_rank() -> tuple[int, int]:
    """(global rank, number of tasks) of this submitit job; (0, 1) out of a job."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return 0, 1
    import submitit

    try:
        env = submitit.JobEnvironment()
        return env.global_rank, env.num_tasks
    except Exception:  # (not a submitit job after all)
        return 0, 1


def _calls_folder() -> Path:
    import submitit

    # (named after the job: a log folder without %j is shared by jobs and array elements;
    # a requeued job runs again under its id: its calls of before are not these)
    env = submitit.JobEnvironment()
    attempt = os.environ.get("SLURM_RESTART_COUNT", "0")
    return Path(env.paths.folder) / f"{_CALLS_DIR}-{env.job_id}-{attempt}"


def lead(node_uid: str, permissions: int | None = None) -> None:
    """In rank 0 of a multi-task job: announce the calls of this node's method
    (``permissions``: the cache's, see Announcer)."""
    _ANNOUNCER[:] = [Announcer(_calls_folder(), node_uid, permissions)]
    ACTIVE[:] = [True]


def announce(node_uid: str, uids: list[str] | None, shared: bool = True) -> Call | None:
    """Rank 0 calls a node's method (on these map items; None: a task): the unit's, or,
    in the job's thread, one a nested call of the unit's method computes (``shared``: its
    node has a folder; a folder-less one is computed by each rank for itself). The other
    ranks are told to make that call too (a map's: paced by the ``Call`` returned)."""
    if not _ANNOUNCER:
        return None
    announcer = _ANNOUNCER[0]
    if announcer.depth:
        if not shared or threading.get_ident() != announcer.thread:
            return None
    elif announcer.node_uid != node_uid:
        return None
    index = announcer.write({"uids": uids, "node": node_uid})
    if uids is None and not announcer.depth:
        announcer.task_call = index  # (the other ranks report how theirs ended: see others)
    if uids is not None and len(uids) > 1:
        return Call(announcer.folder / f"{index}{_AT}", announcer.permissions)
    return None


def nested_role() -> str | None:
    """In the job's thread of a rank of a multi-task job: "lead" (rank 0: its nested calls
    are announced, see ``led``) or "follow" (the other ranks: see ``follow_nested``)."""
    if _ANNOUNCER and _ANNOUNCER[0].thread == threading.get_ident():
        return "lead"
    if _CURSOR and _CURSOR[0].thread == threading.get_ident():
        return "follow"
    return None


@contextlib.contextmanager
def led(what: str) -> tp.Iterator[None]:
    """Rank 0's nested call (``what``: the method and config called): announced as a
    bracket, with the calls of methods it makes in this thread, then its end (and the
    error it raised: the other ranks raise it too). One that announced nothing inside (a
    cache hit, or computed elsewhere) is one message once it ended, ``done``."""
    announcer = _ANNOUNCER[0]
    start: dict[str, tp.Any] = {"nested": what}
    announcer.pending.append(start)
    announcer.depth += 1
    ending: dict[str, tp.Any] = {"nested_end": True}
    try:
        yield
    except BaseException as error:
        ending["error"] = _error_info(error)
        raise
    finally:
        announcer.depth -= 1
        if announcer.pending and announcer.pending[-1] is start:
            announcer.pending.pop()
            ending = {**start, "done": True, **{k: v for k, v in ending.items() if k == "error"}}
        announcer.write(ending)


def _error_info(error: BaseException) -> dict[str, str]:
    from ..storage import exceptions

    info = {"type": type(error).__name__, "message": str(error)[:20_000]}
    data = exceptions.dumps(error) if isinstance(error, Exception) else None
    if data is not None:
        info["pickle"] = base64.b64encode(data).decode("ascii")
    return info


class RankZeroFailed(RuntimeError):
    """Rank 0's nested call raised an error that could not be rebuilt here (its type and
    message are said)."""


def raise_rank_zero_error(info: dict[str, str], what: str) -> tp.NoReturn:
    """Raise on this rank the error rank 0's nested call raised (its own type, when it
    unpickles here)."""
    from ..storage import exceptions

    error = None
    if "pickle" in info:
        error = exceptions.loads(base64.b64decode(info["pickle"]))
    if error is None:
        error = RankZeroFailed(f"{info['type']}: {info['message']}")
    error.add_note(f"exca: raised by rank 0's call of {what} (this rank followed it)")
    raise error


_OUTCOME = ".rank"  # (after a call's number, then a rank: how that rank's call ended)
_FOLLOWER = "rank-"  # (then a rank: the process of a rank following rank 0's calls)


class RankFailed(RuntimeError):
    """Another rank than 0 of a multi-task job raised in (or died during) the unit's task
    call, which rank 0 made without error: its result is not that of the job's ranks."""


def check_other_ranks(node_uid: str) -> None:
    """Rank 0, its unit's task call made without error: wait for the other ranks to end
    that call too, and raise RankFailed naming the first that raised (or died), with its
    log: its result is not cached (a rank's error was only in that rank's log, and rank
    0's result was cached as the job's). A rank still running it is waited for (its
    collectives meet the others: the ranks end their calls together)."""
    if not _ANNOUNCER or threading.get_ident() != _ANNOUNCER[0].thread:
        return
    announcer = _ANNOUNCER[0]
    index = announcer.task_call
    if announcer.node_uid != node_uid or announcer.depth or index is None:
        return
    announcer.task_call = None
    since, tasks = time.monotonic(), job_rank()[1]
    for rank in range(1, tasks):
        outcome = _poll_rank(announcer.folder, index, rank, since)
        error = outcome.get("error")
        if error is not None:
            said = f"raised {error['type']}: {error['message']}"
        elif outcome.get("gone"):
            said = f"did not end its call: {outcome['gone']}"
        else:
            continue
        raise RankFailed(
            f"Rank {rank} of {tasks} {said} (its log: {outcome.get('log') or rank_log(rank)})"
            "; rank 0's call ended without error, but its result is not cached: every rank "
            "of a multi-task job must succeed"
        )


def _poll_rank(folder: Path, index: int, rank: int, since: float) -> dict[str, tp.Any]:
    """How ``rank`` ended call ``index`` (waited for); an error when it died before."""
    path = folder / f"{index}{_OUTCOME}{rank}.json"
    delay = 0.01
    checked = time.monotonic()
    while True:
        try:
            found: dict[str, tp.Any] = json.loads(path.read_text(encoding="utf8"))
            return found
        except FileNotFoundError:
            pass
        time.sleep(delay)
        delay = min(delay * 1.5, POLL_MAX_S)
        if time.monotonic() - checked > 1.0:
            checked = time.monotonic()
            gone = _follower_gone(folder, rank, since)
            if gone is not None and not path.exists():
                return {"gone": gone}


def rank_log(rank: int) -> str:
    """The log (stderr) of a rank of this job."""
    import submitit
    from submitit.core.utils import JobPaths

    try:
        env = submitit.JobEnvironment()
        return str(JobPaths(env.paths.folder, job_id=env.job_id, task_id=rank).stderr)
    except Exception:
        return "unknown"


def _follower_gone(folder: Path, rank: int, since: float) -> str | None:
    """Why ``rank`` will not report (it died: killed, out of memory...), or None."""
    if (folder / f"{_DONE}{rank}").exists():  # (it left: on another host, else seen stale)
        return "it stopped following rank 0's calls before it ended this one (sys.exit?)"
    path = folder / f"{_FOLLOWER}{rank}.json"
    how, info = _how_gone(path, since, rank)
    if how == "silent":
        return f"it did not start following rank 0's calls in {STARTUP_S:.0f} s"
    if how == "vanished":
        return "its process ended before it started following rank 0's calls (killed?)"
    if how == "ended":
        return f"it ended (pid {info['pid']} on {info['host']}, os._exit, killed?) before ending this call"
    if how == "stale":
        return f"it (on {info['host']}) stopped refreshing {path} (killed?)"
    return None


def _how_gone(path: Path, since: float, rank: int) -> tuple[str | None, dict[str, tp.Any]]:
    """How ``rank``, whose process file (refreshed, see claims) is ``path``, is gone:
    "vanished" (no file, and its process is not on this host: killed as it started),
    "silent" (no file ``STARTUP_S`` after ``since``), "ended" (its process is dead),
    "stale" (on another host, no refresh for two heartbeats), or None (alive, or not
    started yet); with the file's content."""
    try:
        info = json.loads(path.read_text(encoding="utf8"))
        age = time.time() - path.stat().st_mtime
    except (FileNotFoundError, ValueError):
        if _vanished(path, rank):
            return "vanished", {}
        return ("silent" if time.monotonic() - since > STARTUP_S else None), {}
    _UNSEEN.pop(path, None)
    if _ended(path):  # (on another host too)
        return "ended", info
    alive = process.is_alive(info["host"], info["pid"], info.get("start"))
    if alive is False:
        return "ended", info
    if alive is None and age > max(2 * claims.heartbeat_seconds(), LEAD_STALE_S):
        return "stale", info
    return None, info


# a rank's process not on its host in two looks this far apart: gone (not less: a task
# shows its job's variables only once its program starts, after Slurm's TaskProlog,
# which may take some seconds longer for one task than for another)
UNSEEN_S = 5.0
_UNSEEN: dict[Path, float] = {}  # a rank's process file -> when its process was first unseen


def _vanished(path: Path, rank: int) -> bool:
    """Whether the process of ``rank`` (which wrote no ``path`` yet) is gone from this
    host, where the job launched it with this one (not there in two looks UNSEEN_S
    apart, the file still missing after the second): killed as it started (before it
    wrote its file, a wait for it lasted STARTUP_S). False when this host cannot tell."""
    markers = _rank_markers(rank)
    if markers is None or _process_with(markers) is not False:
        _UNSEEN.pop(path, None)
        return False
    first = _UNSEEN.setdefault(path, time.monotonic())
    return time.monotonic() - first >= UNSEEN_S and not path.exists()


def _rank_markers(rank: int) -> dict[str, str] | None:
    """The variables the job launching ``rank`` set in its environment (and its children
    inherit), or None when this host cannot see its process: it runs on another node, or
    this process runs out of sight of the Slurm step's (a container's own pids)."""
    env = os.environ
    executor = env.get("SUBMITIT_EXECUTOR")
    if executor == "local" and "SUBMITIT_LOCAL_JOB_ID" in env:
        return {
            "SUBMITIT_LOCAL_JOB_ID": env["SUBMITIT_LOCAL_JOB_ID"],
            "SUBMITIT_LOCAL_GLOBALID": str(rank),
        }
    if executor != "slurm" or "SLURM_STEP_ID" not in env or "SLURM_JOB_ID" not in env:
        return None  # (no step: a job without srun has one task)
    if str(rank) not in env.get("SLURM_GTIDS", "").split(",") or not _under_slurmstepd():
        return None
    return {
        "SLURM_JOB_ID": env["SLURM_JOB_ID"],
        "SLURM_STEP_ID": env["SLURM_STEP_ID"],
        "SLURM_PROCID": str(rank),
    }


@functools.cache
def _under_slurmstepd() -> bool:
    """Whether an ancestor of this process is slurmstepd: the processes it launched for the
    step's other tasks are then seen from here (not in a pid namespace of this one's)."""
    pid = os.getppid()
    for _ in range(20):
        if pid <= 1:
            return False
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            return False
        name = stat[stat.find(b"(") + 1 : stat.rfind(b")")]
        if name == b"slurmstepd":
            return True
        pid = int(stat[stat.rfind(b")") + 2 :].split()[1])
    return False


def _process_with(markers: dict[str, str]) -> bool | None:
    """Whether a process of this user on this host has these environment variables (as
    it started: a rank's process, or one it started), or None when /proc cannot say: it
    does not show this very process's environment (a security module, a sandbox's /proc,
    another pid namespace's /proc), nor would it show a rank's, launched as this one is:
    a rank absent from it may be alive."""
    wanted = {f"{k}={v}".encode() for k, v in markers.items()}
    first = next(iter(wanted))
    uid, me = os.getuid(), str(os.getpid())
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return None
    seen_me = False
    for pid in pids:
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            with open(f"/proc/{pid}/environ", "rb") as handle:
                data = handle.read()  # (empty for a zombie: it runs nothing)
        except OSError:  # (ended meanwhile; or not dumpable: not launched as a rank is)
            continue
        seen_me = seen_me or pid == me
        if first in data and wanted <= set(data.split(b"\0")):
            return True
    return False if seen_me else None


def report_outcome(call: Followed, error: BaseException | None) -> None:
    """Another rank than 0 ended the unit's task call (``error``: what it raised): rank
    0 waits for this before caching its result (see check_other_ranks)."""
    index = call.at.name[: -len(_AT)]
    rank = job_rank()[0]
    data: dict[str, tp.Any] = {"error": None, "log": None}
    if error is not None:
        data["error"] = {"type": type(error).__name__, "message": str(error)[:2_000]}
        data["log"] = rank_log(rank)
    _write_json(call.at.parent / f"{index}{_OUTCOME}{rank}.json", data)


def end() -> None:
    """Rank 0 is done with its unit: the other ranks stop following."""
    if _ANNOUNCER:
        announcer = _ANNOUNCER.pop()
        announcer.write({"end": True})
        claims.stop_refreshing(announcer.folder / LEAD_FILE)
        _unwatch(announcer.folder / LEAD_FILE)
        ACTIVE.clear()
        _done(announcer.folder, announcer.permissions)


_DONE = "done-"  # (then a rank: it reads and writes nothing more in the calls' folder)


def _done(folder: Path, permissions: int | None) -> None:
    """This rank is done with the calls' folder (one file per call of a method, nested
    ones too): the last rank done removes it. One killed before leaves it (as a job's
    logs, `exca clean logs` removes it)."""
    rank, tasks = job_rank()
    try:
        write_new(os.fspath(folder / f"{_DONE}{rank}"), b"", permissions)
        done = sum(name.startswith(_DONE) for name in os.listdir(folder))
    except OSError:  # (no folder: rank 0 never made it; or a rank done twice: left as is)
        return
    if done >= tasks:  # (each rank notes it before counting: the last one sees them all)
        shutil.rmtree(folder, ignore_errors=True)


def _lead_gone(folder: Path, since: float) -> str | None:
    """Why rank 0 will announce nothing more (it died: killed, out of memory...), or None."""
    lead = folder / LEAD_FILE
    how, info = _how_gone(lead, since, 0)
    if how == "silent":
        return f"rank 0 announced nothing in {STARTUP_S:.0f} s"
    if how == "vanished":
        return "rank 0's process ended before it announced anything (killed?)"
    if how == "ended":
        return (
            f"rank 0 (pid {info['pid']} on {info['host']}) ended without finishing its "
            "calls (os._exit, killed?)"
        )
    if how == "stale":
        return f"rank 0 (on {info['host']}) stopped refreshing {lead} (killed?)"
    return None


class LeadGone(RuntimeError):
    """Rank 0 died: the other ranks stop (not an error of the method's call)."""


LEAD_GONE = "This rank stops following rank 0's calls: "  # (then why: _lead_gone's words)


def lead_gone_in_log(text: str) -> str | None:
    """Why a rank other than 0 stopped (rank 0 ended first), as the LeadGone its log ends
    with says, or None: it stopped for another reason."""
    found = re.findall(re.escape(LEAD_GONE) + r"(.+)", text)
    return found[-1].strip() if found else None


_AT = ".at.json"  # (after a call's number: how far rank 0 went in it, see Call)
_T = tp.TypeVar("_T")


class Followed(tp.NamedTuple):
    """A call rank 0 announced, as another rank makes it."""

    uids: list[str] | None  # (None: a task)
    at: Path  # rank 0's progress in it (see Call)
    since: float
    node: str | None = None  # (the uid of the node whose method it is)

    def goes_on(self, done: int) -> bool:
        """Whether rank 0 went on to the item after the first ``done`` ones of this call
        (waits until it did, or stopped the call there)."""

        def read() -> bool | None:
            try:
                message = json.loads(self.at.read_text(encoding="utf8"))
            except FileNotFoundError:
                return None
            if "stop" in message:
                return done < message["stop"]
            return True if message["at"] >= done else None

        return _poll(self.at.parent, read, self.since, 0.001, ITEM_POLL_MAX_S)


def _poll(
    folder: Path, ready: tp.Callable[[], _T | None], since: float, delay: float, most: float
) -> _T:
    """What ``ready`` returns once it is not None (polled, from ``delay`` up to ``most``
    seconds apart, POLL_MAX_S after 10 s); an error when rank 0 died meanwhile."""
    began = checked = time.monotonic()
    while True:
        value = ready()
        if value is not None:
            return value
        time.sleep(delay)
        delay = min(delay * 1.5, most if checked - began < 10.0 else POLL_MAX_S)
        if time.monotonic() - checked > 1.0:  # (a second: a process check, a stat)
            checked = time.monotonic()
            gone = _lead_gone(folder, since)
            if gone is not None:
                value = ready()  # (written just before it ended?)
                if value is not None:
                    return value
                raise LeadGone(f"{LEAD_GONE}{gone}")


def _present(path: Path) -> bool | None:
    return True if path.exists() else None


class _Cursor:
    """The other ranks' place in rank 0's announcements (one sequence: the calls of the
    unit's method, and the brackets of their nested calls, read by those calls)."""

    def __init__(self) -> None:
        self.folder = _calls_folder()
        self.count, self.since = 0, time.monotonic()
        self.thread = threading.get_ident()
        self.last: dict[str, tp.Any] = {}  # (the message that ended the latest calls())
        # (where this rank's nested calls first went another way: index, call; see diverged)
        self.first_diverged: tuple[int, str] = (-1, "")

    def peek(self, nested: bool = False) -> dict[str, tp.Any]:
        """The next message (waited for: a nested one item by item, see Followed)."""
        path = self.folder / f"{self.count}.json"
        delay, most = (0.001, ITEM_POLL_MAX_S) if nested else (0.02, POLL_MAX_S)
        _poll(self.folder, functools.partial(_present, path), self.since, delay, most)
        message: dict[str, tp.Any] = json.loads(path.read_text(encoding="utf8"))
        return message

    def diverged(self, what: str, message: dict[str, tp.Any]) -> CallsDiverged:
        """The error of this rank's nested call of ``what`` where rank 0's next
        announcement is ``message`` (taken later: another call of this rank may be it).
        A later call meeting the same announcement names the first that did."""
        rank = job_rank()[0]
        first = self.first_diverged if self.first_diverged[0] == self.count else None
        self.first_diverged = (self.count, what) if first is None else first
        if first is not None:
            return CallsDiverged(
                f"Rank {rank} called {what}: not followed either, this rank's calls went "
                f"another way than rank 0's at its call of {first[1]} (rank 0's next: "
                f"{_described(message)}): every rank must make the same decorated calls, "
                "in the same order"
            )
        return CallsDiverged(
            f"Rank {rank} called {what}, but rank 0 did not at this point (rank 0's next: "
            f"{_described(message)}): in a multi-task job every rank must make the same "
            "decorated calls, in the same order (rank 0 computes them, the others make "
            "them with it and read its outcome); a call made on some ranks only (e.g. "
            "under `if rank == 0`) cannot be followed: make it on every rank"
        )

    def take(self, nested: bool = False) -> dict[str, tp.Any]:
        message = self.peek(nested)
        self.count += 1
        return message

    def calls(self, until: str, nested: bool = False) -> tp.Iterator[Followed]:
        """The calls announced until the message ``until`` (the unit's end, or the end of
        a nested call's bracket); a bracket that no call of this rank took (its method
        went another way: raised before its nested call...) is skipped."""
        while True:
            index = self.count
            message = self.take(nested)
            if message.get(until):
                self.last = message
                return
            if "nested" in message:
                logger.warning(
                    "This rank did not make rank 0's call of %s: its calls are skipped",
                    message["nested"],
                )
                if not message.get("done"):
                    self.skip_bracket()
                continue
            if "uids" in message:
                path = self.folder / f"{index}{_AT}"
                yield Followed(message["uids"], path, self.since, message.get("node"))

    def skip_bracket(self) -> None:
        depth = 1
        while depth:
            message = self.take(nested=True)
            depth += ("nested" in message and not message.get("done")) - bool(
                message.get("nested_end")
            )


_CURSOR: list[_Cursor] = []  # the other ranks of a multi-task job: theirs


class CallsDiverged(RuntimeError):
    """A nested call of another rank than 0 that rank 0 did not make there (the ranks'
    methods went different ways): it cannot be followed."""


def _described(message: dict[str, tp.Any]) -> str:
    """Rank 0's announcement, in words."""
    if "nested" in message:
        return f"its call of {message['nested']}"
    if message.get("nested_end"):
        return "the end of the call this one is made in"
    if message.get("end"):
        return "the end of its unit"
    uids = message.get("uids")
    on = "" if uids is None else f" on {len(uids)} item(s)"
    return f"a call of the method of {message.get('node')}{on}"


def _forget_in_child() -> None:
    # (a process forked by the job, e.g. a pool's worker, neither announces nor follows:
    # it would write into rank 0's sequence, as the same thread, or read from it)
    _ANNOUNCER.clear()
    _CURSOR.clear()
    ACTIVE.clear()
    _WATCHERS.clear()  # (they watch the parent: this process ends without telling them)


os.register_at_fork(after_in_child=_forget_in_child)


def announced(permissions: int | None = None) -> tp.Iterator[Followed]:
    """The calls of the unit's method rank 0 announces, as they come, until its end (or
    this rank stops following: then it is done with them, see ``_done``)."""
    _CURSOR[:] = [cursor := _Cursor()]
    ACTIVE[:] = [True]
    me = {"host": process.hostname(), "pid": os.getpid(), "start": process.self_start_time()}
    mine = cursor.folder / f"{_FOLLOWER}{job_rank()[0]}.json"
    with contextlib.suppress(OSError):  # (rank 0 tells a rank that died: see _follower_gone)
        make_folder(cursor.folder, permissions)
        _write_json(mine, me, permissions)
        claims.keep_fresh(mine)  # (on another host: its mtime says it lives)
        _watch_exit(mine, permissions)  # (its ended mark: rank 0 stops waiting at once)
    try:
        yield from cursor.calls("end")
    finally:
        claims.stop_refreshing(mine)
        _unwatch(mine)
        _CURSOR.clear()
        ACTIVE.clear()
        _done(cursor.folder, permissions)


def follow_nested(what: str) -> tp.Iterator[Followed]:
    """The other ranks' nested call: the calls rank 0's same nested call announces, as
    they come (to be made by the caller), until the end of its bracket; then rank 0's
    error is raised, if it raised one. Raises (and takes no message) when rank 0's next
    announcement is not that call: this rank's method went another way."""
    cursor = _CURSOR[0]
    message = cursor.peek(nested=True)
    if message.get("nested") != what:
        raise cursor.diverged(what, message)
    cursor.count += 1
    if message.get("done"):  # (it announced no call)
        error = message.get("error")
    else:
        yield from cursor.calls("nested_end", nested=True)
        error = cursor.last.get("error")
    if error is not None:
        raise_rank_zero_error(error, what)
