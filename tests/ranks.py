"""Configs whose methods meet every rank of a multi-task job at each call before going
on, as distributed code does (torch's collectives): shared by the local and the Slurm
tests (imported inside their jobs)."""

from __future__ import annotations

import itertools
import os
import signal
import time
import typing as tp
from pathlib import Path

import pydantic
from filelog import append

import exca

_CALLS = itertools.count()  # this process's calls of a method (the nth meets the nth)


def _meet_every_rank(meeting: Path, what: str, timeout: float = 60) -> tuple[int, int]:
    """Note this rank's call in the meeting folder, then wait for the same call of the
    job's other ranks (one that never comes: an error after ``timeout`` s, not a job that
    hangs)."""
    import submitit

    env = submitit.JobEnvironment()
    call = next(_CALLS)
    meeting.mkdir(parents=True, exist_ok=True)
    append(meeting / "calls.txt", f"{what} rank={env.global_rank}")
    prefix = f"{what}-{env.job_id}-call{call}-rank"
    (meeting / f"{prefix}{env.global_rank}").touch()
    deadline = time.monotonic() + timeout
    while len(list(meeting.glob(f"{prefix}*"))) < env.num_tasks:
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"rank {env.global_rank} of {env.num_tasks}, call {call}: the others never came"
            )
        time.sleep(0.05)
    return env.global_rank, env.num_tasks


class RankedTask(pydantic.BaseModel):
    """``rank_zero_dies``: rank 0 is killed (out of memory, say) once every rank met.
    ``hold``: a file; every rank waits as long as it exists (up to 60 s), then meets."""

    meeting: str
    rank_zero_dies: bool = False
    hold: str = ""
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def train(self) -> str:
        if self.hold:
            from filelog import wait_until

            wait_until(lambda: not Path(self.hold).exists())
        rank, count = _meet_every_rank(Path(self.meeting), "train")
        if self.rank_zero_dies and rank == 0:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.5 * self.rank_zero_dies)  # (rank 1 still running when rank 0 dies)
        return f"rank {rank} of {count}"


class RankedFailing(pydantic.BaseModel):
    """Rank ``failing_rank`` raises once every rank met (the others return); ``dies``:
    it is killed instead (out of memory, say)."""

    meeting: str
    failing_rank: int = 1
    dies: bool = False
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def train(self) -> str:
        rank, count = _meet_every_rank(Path(self.meeting), "train")
        if rank == self.failing_rank and self.dies:
            os.kill(os.getpid(), signal.SIGKILL)
        if rank == self.failing_rank:
            raise ValueError(f"rank {rank} went another way")
        return f"rank {rank} of {count}"


class RankedMap(pydantic.BaseModel):
    """Item 13 raises (on every rank, or on rank 0 only), after the call met the other
    ranks. ``returns_list``: the method returns a list (each call meets the other ranks
    as it is called, not when its first output is asked for)."""

    meeting: str
    fails_on_rank_zero_only: bool = False
    returns_list: bool = False
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def infer(self, items: list[int]) -> tp.Iterable[str]:
        outputs = self._infer(items)
        return list(outputs) if self.returns_list else outputs

    def _infer(self, items: list[int]) -> tp.Iterator[str]:
        rank, count = _meet_every_rank(Path(self.meeting), "infer")
        for item in items:
            if item == 13 and (rank == 0 or not self.fails_on_rank_zero_only):
                raise ValueError(f"bad item {item} on rank {rank}")
            yield f"{item} by rank {rank} of {count}"


class RankedDag(pydantic.BaseModel):
    """Items needing other items of the same map (``deps``): each rank notes the items its
    method steps through (``steps.txt``). The other ranks call for what an item needs
    once rank 0 computed it (a flag): the order of the steps does not depend on timing."""

    meeting: str
    deps: dict[str, list[str]] = {}
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def infer(self, items: list[str]) -> tp.Iterator[str]:
        import submitit
        from filelog import wait_until

        rank = submitit.JobEnvironment().global_rank
        meeting = Path(self.meeting)
        for item in items:
            append(meeting / "steps.txt", f"{item} rank={rank}")
            needed = self.deps.get(item, [])
            flag = meeting / f"computed-{item}"
            if needed and rank > 0:
                wait_until(flag.exists)
            got = list(self.infer(needed)) if needed else []
            if needed and rank == 0:
                flag.touch()
            yield item + "(" + ",".join(got) + ")"


class RankedInner(pydantic.BaseModel):
    """A map called inside the items of RankedNesting: each item meets every rank."""

    meeting: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def infer(self, items: list[str]) -> tp.Iterator[str]:
        for item in items:
            rank, _ = _meet_every_rank(Path(self.meeting), f"inner {item}", timeout=20)
            yield f"{item} by rank {rank}"


class RankedStep(pydantic.BaseModel):
    """A task called inside the items of RankedNesting: it meets every rank."""

    meeting: str
    x: int
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> str:
        rank, _ = _meet_every_rank(Path(self.meeting), f"step {self.x}", timeout=20)
        return f"step {self.x} by rank {rank}"


class RankedNesting(pydantic.BaseModel):
    """Each item calls a map (RankedInner, on two items) and a task (RankedStep) cached in
    ``cache``, computed in the job (no cluster); each rank notes what it got
    (``got.txt``). ``tag``: another config, with the same nested calls."""

    meeting: str
    cache: str
    tag: str = ""
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def infer(self, items: list[int]) -> tp.Iterator[str]:
        import submitit

        rank = submitit.JobEnvironment().global_rank
        inner = RankedInner(meeting=self.meeting, infra={"folder": self.cache})
        for x in items:
            got = list(inner.infer([f"{x}.1", f"{x}.2"]))
            step = RankedStep(meeting=self.meeting, x=x, infra={"folder": self.cache}).run()
            output = f"{x}: {', '.join(got)}; {step}"
            append(Path(self.meeting) / "got.txt", f"{self.tag}{output} rank={rank}")
            yield output


class RankedItemJob(pydantic.BaseModel):
    """A task computed in a job of its own (``cluster="local"``), called by each item of
    RankedJobPerItem."""

    meeting: str
    x: int
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        append(Path(self.meeting) / "tasks.txt", str(self.x))
        return 10 * self.x


class RankedJobPerItem(pydantic.BaseModel):
    """Each item waits for a task's job (RankedItemJob, cached in ``cache``) and meets
    every rank; each rank notes each call of the method (``setups.txt``: its items)."""

    meeting: str
    cache: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def infer(self, items: list[int]) -> tp.Iterator[int]:
        import submitit

        rank = submitit.JobEnvironment().global_rank
        meeting = Path(self.meeting)
        append(meeting / "setups.txt", f"{','.join(map(str, items))} rank={rank}")
        for x in items:
            infra = {"folder": self.cache, "cluster": "local"}
            got = RankedItemJob(meeting=self.meeting, x=x, infra=infra).run()
            _meet_every_rank(meeting, f"item {x}", timeout=30)
            yield got + 1


class RankedNote(pydantic.BaseModel):
    """A task called inside the items of RankedDiverging (no meeting)."""

    x: int
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        return self.x


class RankedDiverging(pydantic.BaseModel):
    """Each item x calls RankedNote(x) (cached in ``cache``) on every rank, after
    RankedNote(100 + x) on rank ``only_rank`` alone; each rank notes the errors of those
    calls (``errors.txt``: ``<x> rank=<rank>: <error>``)."""

    meeting: str
    cache: str
    only_rank: int
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def infer(self, items: list[int]) -> tp.Iterator[int]:
        import submitit

        rank = submitit.JobEnvironment().global_rank

        def run(x: int) -> int:
            try:
                return RankedNote(x=x, infra={"folder": self.cache}).run()
            except RuntimeError as error:
                append(Path(self.meeting) / "errors.txt", f"{x} rank={rank}: {error}")
                return -1

        for x in items:
            if rank == self.only_rank:
                run(100 + x)
            yield run(x)


class RankedFanOut(pydantic.BaseModel):
    """Items needing other items of the same map (``deps``), asked for all at once from a
    thread pool of the method (one thread per item needed); each rank notes each call of
    the method in its job's thread (``calls.txt``: ``infer <items> rank=<rank>``)."""

    meeting: str
    deps: dict[str, list[str]] = {}
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def infer(self, items: list[str]) -> tp.Iterator[str]:
        import threading
        from concurrent import futures

        import submitit

        rank = submitit.JobEnvironment().global_rank
        if threading.current_thread() is threading.main_thread():
            append(Path(self.meeting) / "calls.txt", f"infer {','.join(items)} rank={rank}")
        # (computed in this job: the same map, without a cluster)
        infra = {"folder": self.infra.folder}
        inline = RankedFanOut(meeting=self.meeting, deps=self.deps, infra=infra)

        def one(item: str) -> str:
            return next(iter(inline.infer([item])))

        for item in items:
            needed = self.deps.get(item, [])
            with futures.ThreadPoolExecutor(max(1, len(needed))) as pool:
                got = list(pool.map(one, needed))
            yield item + "(" + ",".join(got) + ")"
