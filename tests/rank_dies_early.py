"""A multi-task job whose rank 1 is killed as it starts (out of memory as it loads, say),
before it follows rank 0's calls: this module, the config's, is imported by every rank
as it loads its work (the job's pickle names the class), and rank 1 is killed there."""

from __future__ import annotations

import os
import signal

import pydantic

import exca


def _job_rank() -> str | None:
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None  # (the test's process: not a job)
    return os.environ.get("SUBMITIT_LOCAL_GLOBALID") or os.environ.get("SLURM_PROCID")


if _job_rank() == "1":
    os.kill(os.getpid(), signal.SIGKILL)


class RankOneDiesEarly(pydantic.BaseModel):
    x: int = 1
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def train(self) -> int:
        return 2 * self.x


# what the task's call raises, whichever of rank 0 or the job's controller tells it first
RANK_ONE_DIED_EARLY = (
    r"Rank 1 of 2 did not end its call: its process ended before it started following"
    r"|rank 1 ended first: its process died \(killed by SIGKILL"
)
