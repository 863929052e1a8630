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
