"""The configs of tests/test_pipelines.py that most of its jobs compute (``Env``'s), and
test_pipelines_slurm's map (``SlurmSquare``).

Kept apart from the test module so that a job's process, which imports the module of the
config it unpickles, imports only exca and this file, not test_pipelines (pytest, its 4500
lines and 40 other models: about as much CPU as submitit and exca together).
"""

from __future__ import annotations

import json
import os
import time
import typing as tp
from pathlib import Path

import pydantic
from lazy_numpy import is_array

import exca


def append(path: str, record: dict[str, tp.Any]) -> None:
    """One JSON line per event; O_APPEND small writes are atomic across processes."""
    with open(path, "a", encoding="utf8") as handle:
        handle.write(json.dumps(record) + "\n")


class Step(pydantic.BaseModel):
    """A task node of a DAG: ``run(a, b) -> "<name>(<a>,<b>)"``, logging what it saw.

    Raises while the file ``fail_flag`` exists; blocks while ``block_flag`` exists; waits
    (at most 60 s) until the file ``partner`` exists, after creating ``signal_file``."""

    name: str
    log: str
    fail_flag: str = ""
    block_flag: str = ""
    signal_file: str = ""
    partner: str = ""
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log",)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self, a: tp.Any = None, b: tp.Any = None) -> str:
        shown = {k: (v.tolist() if is_array(v) else v) for k, v in (("a", a), ("b", b))}
        append(
            self.log,
            {"name": self.name, "event": "start", "t": time.time(), "pid": os.getpid(), **shown},
        )
        if self.signal_file:
            Path(self.signal_file).touch()
        if self.partner:
            end = time.time() + 60
            while not Path(self.partner).exists():
                if time.time() > end:
                    raise TimeoutError(f"{self.name}: {self.partner} never appeared")
                time.sleep(0.02)
        while self.block_flag and Path(self.block_flag).exists():
            time.sleep(0.05)
        if self.fail_flag and Path(self.fail_flag).exists():
            raise ValueError(f"{self.name} fails on purpose")
        out = f"{self.name}({_show(a)},{_show(b)})"
        append(self.log, {"name": self.name, "event": "end", "t": time.time()})
        return out


def _show(value: tp.Any) -> str:
    if is_array(value):
        return "array" + "-".join(str(v) for v in value.tolist())
    if isinstance(value, list):
        return "[" + ";".join(str(v) for v in value) + "]"
    return str(value)


class Numbers(pydantic.BaseModel):
    """A no-input task: ``make() -> [0, ..., count - 1]``."""

    count: int = 4
    log: str
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log",)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def make(self) -> list[int]:
        append(self.log, {"name": f"numbers{self.count}", "event": "start"})
        return list(range(self.count))


class Square(pydantic.BaseModel):
    """A map: ``item -> item ** power``, one log line per computed item."""

    power: int = 2
    log: str
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log",)
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def apply(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            append(self.log, {"name": f"square{item}", "event": "start", "item": item})
            yield item**self.power


class SlurmSquare(pydantic.BaseModel):
    """A map ``item -> item ** 2`` that logs the Slurm job computing each item (blocks
    while the file ``block_flag`` exists)."""

    log: str
    block_flag: str = ""
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log",)
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def apply(self, items: list[int]) -> tp.Iterator[int]:
        job = f"{os.environ.get('SLURM_ARRAY_JOB_ID')}_{os.environ.get('SLURM_ARRAY_TASK_ID')}"
        while self.block_flag and Path(self.block_flag).exists():
            time.sleep(0.05)
        for item in items:
            with open(self.log, "a", encoding="utf8") as handle:
                handle.write(
                    json.dumps({"name": f"square{item}", "event": "start", "job": job}) + "\n"
                )
            yield item**2
