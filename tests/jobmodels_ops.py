"""The configs of tests/test_ops.py that its local jobs and helper processes compute.

Kept apart from the test module so that a job's process, which imports the module of the
config it unpickles, imports only exca and this file: importing test_ops (pytest, its 9000
lines and ~90 other models) cost each of the module's ~80 job and helper processes about
0.4 s of CPU, as much as exca itself.
"""

from __future__ import annotations

import os
import sys
import time
import typing as tp

import pydantic

import exca

WAIT_S = 60.0  # bound on any wait (never reached when things work)


class Optim(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    lr: float = 0.01
    momentum: float = 0.9


class Train(pydantic.BaseModel):
    """A task with a nested config; prints to stdout and stderr; fails on request."""

    optim: Optim = Optim()
    seed: int = 0
    fail: bool = False
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> float:
        print(f"fitting seed={self.seed} lr={self.optim.lr}", flush=True)
        print(f"warning from seed={self.seed}", file=sys.stderr, flush=True)
        if self.fail:
            raise ValueError(f"cannot fit seed={self.seed}")
        return self.optim.lr * 100 + self.seed


class Squares(pydantic.BaseModel):
    """A map: x -> x * x + offset; a negative item raises (a cached item error)."""

    offset: int = 0
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def square(self, items: list[int]) -> tp.Iterator[int]:
        for x in items:
            if x < 0:
                raise ValueError(f"negative item {x}")
            yield x * x + self.offset


class Ranges(pydantic.BaseModel):
    """A map whose outputs are large enough to go to shared data files (not inline)."""

    width: int = 200
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def expand(self, items: list[int]) -> tp.Iterator[list[int]]:
        for x in items:
            yield list(range(x, x + self.width))


class Source(pydantic.BaseModel):
    """Upstream task of a pipeline (its list result is stored as a payload file)."""

    n: int = 3
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def make(self) -> list[int]:
        return list(range(self.n))


class Total(pydantic.BaseModel):
    """Downstream task with an input (cached in <uid>/inputs-<digest>)."""

    scale: int = 2
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    # (tp.Any: tests of a failed input feed it a Train.fit node, a float never read, which
    # a list[int] annotation refuses when the node is built)
    def total(self, values: tp.Any) -> int:
        return self.scale * sum(values)


class Slow(pydantic.BaseModel):
    """Blocks while the file `flag` exists (at most `limit_s` seconds)."""

    flag: str
    limit_s: float = WAIT_S
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def wait_for_flag(self) -> str:
        print("slow task started", flush=True)
        end = time.time() + self.limit_s
        while os.path.exists(self.flag) and time.time() < end:
            time.sleep(0.02)
        return "released"


class SlowMap(pydantic.BaseModel):
    """A map (x -> x) blocking while the file `flag` exists."""

    flag: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def values(self, items: list[int]) -> tp.Iterator[int]:
        end = time.time() + WAIT_S
        while os.path.exists(self.flag) and time.time() < end:
            time.sleep(0.02)
        yield from items
