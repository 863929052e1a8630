"""Configs whose methods meet every rank of a multi-task job before returning, as
distributed training does (torch's init_process_group): shared by the local and the
Slurm tests (imported inside their jobs)."""

from __future__ import annotations

import time
import typing as tp
from pathlib import Path

import pydantic
from filelog import append

import exca


def _meet_every_rank(meeting: Path, what: str) -> tuple[int, int]:
    """Note this rank in the meeting folder, then wait for the job's other ranks (a rank
    that never comes: an error after 60 s, not a job that hangs)."""
    import submitit

    env = submitit.JobEnvironment()
    meeting.mkdir(parents=True, exist_ok=True)
    append(meeting / "calls.txt", f"{what} rank={env.global_rank}")
    (meeting / f"{what}-{env.job_id}-rank{env.global_rank}").touch()
    deadline = time.monotonic() + 60
    while len(list(meeting.glob(f"{what}-{env.job_id}-rank*"))) < env.num_tasks:
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank {env.global_rank} of {env.num_tasks}: the others never came")
        time.sleep(0.1)
    return env.global_rank, env.num_tasks


class RankedTask(pydantic.BaseModel):
    meeting: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def train(self) -> str:
        rank, count = _meet_every_rank(Path(self.meeting), "train")
        return f"rank {rank} of {count}"


class RankedMap(pydantic.BaseModel):
    meeting: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def infer(self, items: list[int]) -> tp.Iterator[str]:
        rank, count = _meet_every_rank(Path(self.meeting), "infer")
        for item in items:
            yield f"{item} by rank {rank} of {count}"
