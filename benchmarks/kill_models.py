"""Configs of the fault-injection sweep (benchmarks/kill_sweep.py).

Every result is derived from its config (and a "generation" read from a side file, so a
forced recomputation gives another, also valid, value): a checker can tell a right value
from a wrong one. Each computation appends a line to ``<root>/calls.log`` through the
original ``open`` (captured at import, before the sweep patches it), so the checker knows
what was recomputed.
"""

import builtins
import os
import typing as tp
from pathlib import Path

import numpy as np
import pydantic

import exca

_raw_open = builtins.open
ROOT: list[Path] = []  # set by the sweep: the cache root of the run


def root() -> Path:
    """The cache root of the run (in a job's process: from the environment)."""
    if not ROOT:
        ROOT.append(Path(os.environ["KILL_SWEEP_ROOT"]))
    return ROOT[0]


def generation() -> int:
    path = root() / "gen.txt"
    return int(path.read_text()) if path.exists() else 1


def note_call(what: str) -> None:
    with _raw_open(root() / "calls.log", "a") as handle:
        handle.write(what + "\n")


def task_value(x: int, gen: int) -> dict[str, tp.Any]:
    # (big enough to be pickled to its own file under data/)
    return {"x": x, "gen": gen, "arr": np.arange(5000, dtype=np.float64) + 1000 * gen + x}


def item_value(x: int, offset: int, gen: int) -> np.ndarray:
    return np.full(50, x * x + offset + 1000 * gen, dtype=np.int64)


class Task(pydantic.BaseModel):
    x: int = 0
    fail: bool = False  # (raises in generation 1: a cached error, recomputed by retry)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def compute(self) -> dict[str, tp.Any]:
        gen = generation()
        note_call(f"task x={self.x} gen={gen}")
        if self.fail and gen == 1:
            raise ValueError(f"cannot compute x={self.x}")
        return task_value(self.x, gen)


class Squares(pydantic.BaseModel):
    offset: int = 0
    fail: int = -1  # (this item raises in generation 1: a cached error)
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def square(self, items: list[int]) -> tp.Iterator[np.ndarray]:
        gen = generation()
        for x in items:
            note_call(f"item offset={self.offset} x={x} gen={gen}")
            if x == self.fail and gen == 1:
                raise ValueError(f"cannot square x={x}")
            yield item_value(x, self.offset, gen)


class Source(pydantic.BaseModel):
    n: int = 3
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def make(self) -> list[int]:
        note_call(f"source n={self.n}")
        return list(range(self.n))


class Total(pydantic.BaseModel):
    scale: int = 2
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def total(self, values: list[int]) -> dict[str, tp.Any]:
        note_call(f"total scale={self.scale}")
        return {"total": self.scale * sum(values), "pad": list(range(2000))}


def total_value(scale: int, n: int) -> dict[str, tp.Any]:
    return {"total": scale * sum(range(n)), "pad": list(range(2000))}


def with_infra_function(root: Path) -> tp.Callable[..., np.ndarray]:
    @exca.helpers.with_infra(folder=root)
    def noise(rows: int, cols: int) -> np.ndarray:
        note_call(f"noise rows={rows} cols={cols}")
        return noise_value(rows, cols)

    return noise


def noise_value(rows: int, cols: int) -> np.ndarray:
    return np.arange(rows * cols * 100, dtype=np.float32).reshape(rows, cols * 100)


class OldSource(pydantic.BaseModel):
    """Source before a rename (``exca rename ROOT kill_models.OldSource kill_models.Source``)."""

    n: int = 3
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def make(self) -> list[int]:
        note_call(f"source n={self.n}")
        return list(range(self.n))


class GenSource(pydantic.BaseModel):
    """An upstream whose value is its generation's: a downstream total tells which one it
    was computed from."""

    n: int = 4
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def make(self) -> list[int]:
        gen = generation()
        note_call(f"gensource gen={gen}")
        return [gen] * self.n
