"""The configs whose methods the jobs of test_slurm_execution.py run (and the result
class one of them returns). Each Slurm job imports the module of its config's class:
this one imports no pytest and defines no test, where test_slurm_execution's import took
~0.85 s of CPU per job on the test cluster's 2 CPUs (~0.55 s for this one)."""

from __future__ import annotations

import os
import signal
import threading
import time
import typing as tp
from pathlib import Path

import pydantic
from filelog import append, lines

import exca


class SlurmTask(pydantic.BaseModel):
    """x -> 3 * x; raises ValueError while <ctl>/fail exists, kills itself (SIGKILL) while
    <ctl>/kill exists. The first call (only) blocks while <ctl>/block exists
    (recomputations do not block)."""

    x: int = 1
    ctl: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        ctl = Path(self.ctl)
        append(ctl / "calls.txt", str(self.x))
        print(f"slurm task x={self.x}", flush=True)
        first = len(lines(ctl / "calls.txt")) == 1
        while first and (ctl / "block").exists():
            time.sleep(0.1)
        if (ctl / "fail").exists():
            raise ValueError(f"bad x={self.x}")
        if (ctl / "kill").exists():
            os.kill(os.getpid(), signal.SIGKILL)
        if (ctl / "interrupt").exists():
            raise KeyboardInterrupt  # (by the method: no signal)
        return 3 * self.x


class SlurmMap(pydantic.BaseModel):
    ctl: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        append(Path(self.ctl) / "calls.txt", " ".join(str(i) for i in items))
        for item in items:
            if item == 2 and (Path(self.ctl) / "interrupt").exists():
                raise KeyboardInterrupt  # (by the method: no signal)
            yield item + 1


class SlurmCallsItself(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return self.process() + 1  # (a user's bug)


class SlurmPing(pydantic.BaseModel):
    """Calls SlurmPong in its job, whose job calls SlurmPing again (a user's bug)."""

    pong_infra: dict[str, tp.Any]
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return SlurmPong(ping=self.model_dump(), infra=self.pong_infra).process()


class SlurmPong(pydantic.BaseModel):
    ping: dict[str, tp.Any]  # (a SlurmPing field would make it an upstream node)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return SlurmPing(**self.ping).process() + 1


class SlurmArrays(pydantic.BaseModel):
    """item -> 1000 times (item + offset) as an array; offset is not part of the uid."""

    offset: int = 0
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str, exclude_from_cache_uid=("offset",))
    def process(self, items: list[int]) -> tp.Iterator[tp.Any]:
        import numpy as np

        for item in items:
            yield np.full(1000, float(item + self.offset))


class BlocksOne(pydantic.BaseModel):
    """x=1 blocks while <ctl>/block exists; other configs return at once."""

    x: int = 0
    ctl: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        append(Path(self.ctl) / "calls.txt", str(self.x))
        while self.x == 1 and (Path(self.ctl) / "block").exists():
            time.sleep(0.1)
        return self.x


class BlocksEach(pydantic.BaseModel):
    """Each config blocks while <ctl>/block-<x> exists."""

    x: int = 0
    ctl: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        while (Path(self.ctl) / f"block-{self.x}").exists():
            time.sleep(0.1)
        return self.x


class Heavy(pydantic.BaseModel):
    """A config carrying 2 MB of data (kept out of its uid)."""

    x: int = 1
    payload: str = ""
    infra: exca.TaskInfra = exca.TaskInfra(version="1")
    _exclude_from_cls_uid = ("payload",)

    @infra.apply
    def process(self) -> int:
        return self.x + len(self.payload)


class GatedPickle:
    """A result whose pickling waits while the file ``gate`` exists (a big result being
    written), saying so in ``log``."""

    def __init__(self, gate: str, log: str) -> None:
        self.gate, self.log = gate, log

    def __reduce__(self) -> tuple[tp.Any, ...]:
        append(Path(self.log), "pickling")
        while Path(self.gate).exists():
            time.sleep(0.05)
        return (GatedPickle, (self.gate, self.log))


class SlowToStore(pydantic.BaseModel):
    ctl: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> GatedPickle:
        return GatedPickle(str(Path(self.ctl) / "block"), str(Path(self.ctl) / "calls.txt"))


class Lingering(pydantic.BaseModel):
    """process() -> 2 * x; its process lives on `linger` seconds after the result."""

    x: int = 1
    ctl: str
    linger: float = 5.0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    _exclude_from_cls_uid = ("linger",)

    @infra.apply
    def process(self) -> int:
        append(Path(self.ctl) / "calls.txt", str(self.x))
        threading.Thread(target=time.sleep, args=(self.linger,)).start()  # (non-daemon)
        return 2 * self.x


class SlurmParent(pydantic.BaseModel):
    sub: SlurmTask
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return self.sub.process() + 1000


class SlurmEnv(pydantic.BaseModel):
    names: tuple[str, ...]
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def read(self) -> dict[str, str | None]:
        return {name: os.environ.get(name) for name in self.names}


class PastTheWarning(pydantic.BaseModel):
    """Each rank notes its start and end in <ctl>/calls.txt. It runs until its own log
    shows Slurm's time-limit warning (SIGUSR2, logged by submitit or exca), then 3 s more
    (100 s at most); forever while <ctl>/block exists."""

    ctl: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> str:
        import submitit

        env = submitit.JobEnvironment()
        ctl, log = Path(self.ctl), Path(env.paths.stderr)
        append(ctl / "calls.txt", f"start rank={env.global_rank}")
        end = time.monotonic() + 100
        while time.monotonic() < end or (ctl / "block").exists():
            if "SIGUSR2" in log.read_text():
                end = min(end, time.monotonic() + 3)
            time.sleep(0.5)
        append(ctl / "calls.txt", f"end rank={env.global_rank}")
        return f"rank {env.global_rank}"


class LingeringMap(pydantic.BaseModel):
    """Its job's process stays a few seconds after writing its result (an exit handler):
    Slurm lists the job as running, then completing, meanwhile."""

    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        import atexit

        atexit.register(time.sleep, 8)
        yield from items
