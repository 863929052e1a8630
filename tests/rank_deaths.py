"""A multi-task job one of whose ranks is killed (SIGKILL: out of memory, say) at a
chosen point: ``loading`` (as it loads its work, before rank 0 announces anything or
another rank follows), or ``call`` (in the method, once every rank is in it); ``exit``:
it calls sys.exit(0) in the method instead; ``os_exit``: os._exit(0) (no finally, no atexit:
what a library ending its process at once does). The other ranks sleep ``sleep_s`` in the
method (as distributed code waits in a collective for the dead rank) before returning.
Each rank notes its start and end of the method in ``log``."""

from __future__ import annotations

import os
import signal
import sys
import time
import typing as tp
from pathlib import Path

import pydantic
from filelog import append, lines

import exca


def _job_rank() -> int | None:
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None  # (the test's process: not a job)
    found = os.environ.get("SUBMITIT_LOCAL_GLOBALID") or os.environ.get("SLURM_PROCID")
    return None if found is None else int(found)


def _own_host(rank: int) -> None:
    """This rank's process takes itself for the only one of the job on its host (as on a
    job of one task per node): the other ranks' processes are out of its sight."""
    import types

    from exca.graph import ranks
    from exca.storage import process

    fake = f"{process.hostname()}-rank{rank}"

    def is_alive(host: str, pid: int, start: int | None) -> bool | None:
        return process.is_alive(process.hostname(), pid, start) if host == fake else None

    ranks.process = types.SimpleNamespace(  # type: ignore[assignment]
        hostname=lambda: fake, is_alive=is_alive, self_start_time=process.self_start_time
    )
    os.environ["SLURM_GTIDS"] = str(rank)


def _wait_for_line(path: Path, line: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if line in lines(path):
            return
        time.sleep(0.05)


class RankDies(pydantic.BaseModel):
    log: str
    dies: int = 0  # the rank killed
    when: str = "call"  # "loading" or "call"
    sleep_s: float = 0.0
    other_hosts: bool = False  # each rank takes the others for processes of other hosts
    startup_s: float = 0.0  # (set: the job's ranks.STARTUP_S and LEAD_STALE_S, shorter)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    def __setstate__(self, state: tp.Any) -> None:  # (a job loads its config: unpickled)
        super().__setstate__(state)
        rank = _job_rank()
        if self.other_hosts and rank is not None:
            _own_host(rank)
        if self.startup_s and rank is not None:
            from exca.graph import ranks

            ranks.STARTUP_S = ranks.LEAD_STALE_S = self.startup_s
        if self.when == "loading" and rank == self.dies:
            if rank:  # (rank 0 in its call first: on a slow machine srun ended the step
                # before rank 0 got there, and the test saw no rank it ended)
                _wait_for_line(Path(self.log), "start rank=0", timeout_s=60)
            os.kill(os.getpid(), signal.SIGKILL)

    @infra.apply
    def train(self) -> str:
        rank = _job_rank()
        append(Path(self.log), f"start rank={rank}")
        time.sleep(1.0)  # (every rank in the call)
        if self.when == "call" and rank == self.dies:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.when == "exit" and rank == self.dies:
            sys.exit(0)  # (no death Slurm or a local job's controller sees: exit code 0)
        if self.when == "os_exit" and rank == self.dies:
            os._exit(0)  # (the same, skipping every finally and atexit of the process)
        time.sleep(self.sleep_s)
        append(Path(self.log), f"end rank={rank}")
        return f"rank {rank}"
