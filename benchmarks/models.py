"""Configs used by the benchmarks (a module, so that jobs and child processes import them)."""

from __future__ import annotations

import typing as tp
from pathlib import Path

import numpy as np
import pydantic

import exca


# --- 1. config creation -------------------------------------------------------------------
class TutorialTask(pydantic.BaseModel):
    """As tests/seed_globals.py (and the seed docs)."""

    param: int = 12
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> float:
        return self.param * 0.5


def _plain_sub_model() -> type[pydantic.BaseModel]:
    """A plain BaseModel with TaskInfra's fields (same names, annotations and defaults)."""
    fields: dict[str, tp.Any] = {}
    for name, field in exca.TaskInfra.model_fields.items():
        fields[name] = (field.annotation, field.default)
    return pydantic.create_model("PlainInfraLike", **fields)


PlainInfraLike = _plain_sub_model()


class PlainNested(pydantic.BaseModel):
    param: int = 12
    infra: PlainInfraLike = PlainInfraLike(version="1")  # type: ignore[valid-type]


class ParamOnly(pydantic.BaseModel):
    param: int = 12


# --- 2. nested config (3 levels, ~15 fields) -------------------------------------------------
class Layer(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    width: int = 64
    activation: str = "relu"
    dropout: float = 0.1


class Network(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    depth: int = 4
    encoder: Layer = Layer()
    decoder: Layer = Layer(width=32)
    norm: tp.Literal["batch", "layer", "none"] = "batch"


class Optim(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)


class Experiment(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    seed: int = 0
    dataset: str = "mnist"
    epochs: int = 10
    network: Network = Network()
    optim: Optim = Optim()
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> float:
        return float(self.seed)


def make_experiment(i: int) -> Experiment:
    return Experiment(
        seed=i,
        dataset="cifar10",
        network={"depth": 6, "encoder": {"width": 128 + i % 7, "dropout": 0.2}, "norm": "layer"},
        optim={"lr": 0.01, "betas": (0.8, 0.99)},
    )


# --- tasks -----------------------------------------------------------------------------------
class Hit(pydantic.BaseModel):
    """A task returning a small array (cache hit / first call benchmarks)."""

    x: int = 0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> np.ndarray:
        return np.zeros(64)


class Trivial(pydantic.BaseModel):
    """A trivial task for the job latency benchmarks (local / slurm)."""

    x: int = 0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return self.x + 1


def trivial(x: int) -> int:
    return x + 1


# --- maps -------------------------------------------------------------------------------------
class Mapper(pydantic.BaseModel):
    param: int = 0
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: tp.Sequence[int]) -> tp.Iterator[np.ndarray]:
        for _ in items:
            yield np.zeros(64)


def zeros64(item: int) -> np.ndarray:
    return np.zeros(64)


def mapper(
    folder: Path | str,
    param: int = 0,
    keep_in_ram: bool = True,
    cluster: str | None = None,
    mode: str = "cached",
) -> Mapper:
    infra: dict[str, tp.Any] = {
        "folder": folder,
        "keep_in_ram": keep_in_ram,
        "cluster": cluster,
        "mode": mode,
    }
    return Mapper(param=param, infra=infra)


# --- pipelines --------------------------------------------------------------------------------
class Source(pydantic.BaseModel):
    i: int = 0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return self.i


class Step(pydantic.BaseModel):
    k: int = 0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self, x: int) -> int:
        return x + self.k


class Join(pydantic.BaseModel):
    k: int = 0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self, a: int, b: int, c: int) -> int:
        return a + b + c + self.k


def add_one(x: int) -> int:
    """Wrapped by ``helpers.with_infra`` in the benchmarks."""
    return x + 1
