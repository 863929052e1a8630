"""Multi-task jobs (``nodes`` or ``tasks_per_node`` above 1): submitit starts the job's
function once per task, and distributed code needs every rank to make the same calls
(each one meets the other ranks, e.g. in torch's collectives). Rank 0 decides what to
compute (claims, cached items, per-item retries), caches the outcomes and announces each
call of the method in the job's log folder; the other ranks make the same calls, in the
same order, with the same items, and store nothing."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import typing as tp
from pathlib import Path

from ..storage import claims, process
from ..storage.files import make_folder, write_new

logger = logging.getLogger("exca")
POLL_MAX_S = 0.5  # (another rank's next call: its collectives would wait for it anyway)
_CALLS_DIR = "rank-calls"


LEAD_FILE = "lead.json"  # rank 0's process, its mtime refreshed (see claims.keep_fresh)
STARTUP_S = 600.0  # the other ranks wait this long for rank 0 to start announcing
# rank 0 on another host is taken for dead when its lead file is this stale: long, since a
# single step holding the GIL (a big unpickle...) stops its heartbeat thread meanwhile
LEAD_STALE_S = 600.0


class Announcer:
    """Rank 0's side: each call of the unit's method, then the end, as numbered files
    (``permissions``: the cache's, given to the folder and its files, as to the job's
    logs beside them: the other users of the cache read them, `exca clean logs` of
    another user removes them)."""

    def __init__(self, folder: Path, node_uid: str, permissions: int | None = None) -> None:
        self.folder, self.node_uid, self.count = folder, node_uid, 0
        self.permissions = permissions
        make_folder(folder, permissions)
        lead = folder / LEAD_FILE
        me = {"host": process.hostname(), "pid": os.getpid(), "start": process.self_start_time()}
        _write_json(lead, me, permissions)
        claims.keep_fresh(lead)  # (a rank 0 killed stops refreshing it: the others stop)

    def write(self, message: dict[str, tp.Any]) -> None:
        _write_json(self.folder / f"{self.count}.json", message, self.permissions)
        self.count += 1


def _write_json(path: Path, data: dict[str, tp.Any], permissions: int | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):  # (left by a rank 0 killed while writing)
        tmp.unlink()
    write_new(os.fspath(tmp), json.dumps(data).encode("utf8"), permissions)
    os.replace(tmp, path)  # (another rank never reads half a file)


_ANNOUNCER: list[Announcer] = []  # rank 0 of a multi-task job: its announcer


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


def announce(node_uid: str, uids: list[str] | None) -> None:
    """Rank 0 calls the unit's method (on these map items; None: a task): the other ranks
    are told to make that call too. A nested node's method (called by the unit's) is not
    announced: the other ranks' own calls of the unit's method make it."""
    if _ANNOUNCER and _ANNOUNCER[0].node_uid == node_uid:
        _ANNOUNCER[0].write({"uids": uids})


def end() -> None:
    """Rank 0 is done with its unit: the other ranks stop following."""
    if _ANNOUNCER:
        announcer = _ANNOUNCER.pop()
        announcer.write({"end": True})
        claims.stop_refreshing(announcer.folder / LEAD_FILE)


def _lead_gone(folder: Path, since: float) -> str | None:
    """Why rank 0 will announce nothing more (it died: killed, out of memory...), or None."""
    lead = folder / LEAD_FILE
    try:
        info = json.loads(lead.read_text(encoding="utf8"))
        age = time.time() - lead.stat().st_mtime
    except (FileNotFoundError, ValueError):
        if time.monotonic() - since > STARTUP_S:
            return f"rank 0 announced nothing in {STARTUP_S:.0f} s"
        return None
    alive = process.is_alive(info["host"], info["pid"], info.get("start"))
    if alive is False:
        return f"rank 0 (pid {info['pid']}) ended without finishing its calls (killed?)"
    if alive is None and age > max(2 * claims.heartbeat_seconds(), LEAD_STALE_S):
        return f"rank 0 (on {info['host']}) stopped refreshing {lead} (killed?)"
    return None


def announced() -> tp.Iterator[list[str] | None]:
    """The calls rank 0 announces (map items; None: a task), as they come, until its end."""
    folder = _calls_folder()
    count, since = 0, time.monotonic()
    while True:
        path = folder / f"{count}.json"
        delay, checked = 0.02, time.monotonic()
        while not path.exists():
            time.sleep(delay)
            delay = min(delay * 1.5, POLL_MAX_S)
            if time.monotonic() - checked > 1.0:  # (a second: a process check, a stat)
                checked = time.monotonic()
                gone = _lead_gone(folder, since)
                if gone is not None and not path.exists():  # (its end, written just before?)
                    raise RuntimeError(f"This rank stops following rank 0's calls: {gone}")
        message = json.loads(path.read_text(encoding="utf8"))
        if message.get("end"):
            return
        yield message["uids"]
        count += 1
