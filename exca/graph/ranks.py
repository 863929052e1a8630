"""Multi-task jobs (``nodes`` or ``tasks_per_node`` above 1): submitit starts the job's
function once per task, and distributed code needs every rank to make the same calls
(each one meets the other ranks, e.g. in torch's collectives). Rank 0 decides what to
compute (claims, cached items, per-item retries), caches the outcomes and announces each
call of the method in the job's log folder; the other ranks make the same calls, in the
same order, with the same items, and store nothing."""

from __future__ import annotations

import json
import logging
import os
import time
import typing as tp
from pathlib import Path

logger = logging.getLogger("exca")
POLL_MAX_S = 0.5  # (another rank's next call: its collectives would wait for it anyway)
_CALLS_DIR = "rank-calls"


class Announcer:
    """Rank 0's side: each call of the unit's method, then the end, as numbered files."""

    def __init__(self, folder: Path, node_uid: str) -> None:
        self.folder, self.node_uid, self.count = folder, node_uid, 0
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, message: dict[str, tp.Any]) -> None:
        path = self.folder / f"{self.count}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(message), encoding="utf8")
        os.replace(tmp, path)  # (another rank never reads half a call)
        self.count += 1


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

    # (a requeued job runs again under its id: its calls of before are not these)
    attempt = os.environ.get("SLURM_RESTART_COUNT", "0")
    return Path(submitit.JobEnvironment().paths.folder) / f"{_CALLS_DIR}-{attempt}"


def lead(node_uid: str) -> None:
    """In rank 0 of a multi-task job: announce the calls of this node's method."""
    _ANNOUNCER[:] = [Announcer(_calls_folder(), node_uid)]


def announce(node_uid: str, uids: list[str] | None) -> None:
    """Rank 0 calls the unit's method (on these map items; None: a task): the other ranks
    are told to make that call too. A nested node's method (called by the unit's) is not
    announced: the other ranks' own calls of the unit's method make it."""
    if _ANNOUNCER and _ANNOUNCER[0].node_uid == node_uid:
        _ANNOUNCER[0].write({"uids": uids})


def end() -> None:
    """Rank 0 is done with its unit: the other ranks stop following."""
    if _ANNOUNCER:
        _ANNOUNCER.pop().write({"end": True})


def announced() -> tp.Iterator[list[str] | None]:
    """The calls rank 0 announces (map items; None: a task), as they come, until its end."""
    folder = _calls_folder()
    count = 0
    while True:
        path = folder / f"{count}.json"
        delay = 0.02
        while not path.exists():
            time.sleep(delay)
            delay = min(delay * 1.5, POLL_MAX_S)
        message = json.loads(path.read_text(encoding="utf8"))
        if message.get("end"):
            return
        yield message["uids"]
        count += 1
