"""What a user's type checker sees of exca's public API, as the docs use it.

Never run: tests/test_typing_usage.py runs ``mypy --strict`` on this file. A comment
``# revealed: <type>`` says what mypy must reveal on the next line; a
``# type: ignore[code]`` must be needed (--strict warns of unused ignores): a call that
does not fit the decorated method's signature is an error.
"""

from __future__ import annotations

import typing as tp
from pathlib import Path

import numpy as np
import pydantic

import exca
from exca import cachedict
from exca.workdir import WorkDir


class Experiment(pydantic.BaseModel):
    lr: float = 0.01
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def train(self) -> float:
        return self.lr * 5


def modules(folder: Path) -> None:
    exp = Experiment(lr=0.1, infra=exca.TaskInfra(folder=folder))
    # revealed: Literal['not submitted'] | Literal['running'] | Literal['completed'] | Literal['failed']
    tp.reveal_type(exp.infra.status())
    # revealed: str
    tp.reveal_type(exp.infra.uid())
    # revealed: pathlib.Path | None
    tp.reveal_type(exp.infra.uid_folder())
    # revealed: exca.confdict.ConfDict
    tp.reveal_type(exp.infra.config(uid=True))
    with exp.infra.job_array() as array:
        array.append(exp.infra.clone_obj({"lr": 0.5}))
    plan = exca.graph.plan(exp.train.node())
    # revealed: dict[str, int]
    tp.reveal_type(plan.counts())
    # revealed: str
    tp.reveal_type(plan.to_mermaid())
    exca.graph.run(exp.train.node(), wait=False)
    # revealed: list[tuple[pathlib.Path, pathlib.Path]]
    tp.reveal_type(exca.helpers.update_uids(folder))
    conf = exca.ConfDict({"model.layers": 2})
    # revealed: dict[str, Any]
    tp.reveal_type(conf.flat())
    # revealed: str
    tp.reveal_type(conf.to_uid())
    # revealed: exca.confdict.ConfDict
    tp.reveal_type(exca.ConfDict.from_model(exp, uid=True))
    # revealed: exca.confdict.ConfDict
    tp.reveal_type(exca.ConfDict.from_args(["--lr=0.1"]))
    # revealed: exca.infra.workdir.WorkDir
    tp.reveal_type(WorkDir(copied=["exca"]))


class Trainer(pydantic.BaseModel):
    l2: float = 1.0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply(exclude_from_cache_uid=("l2",))
    def fit(self, features: list[np.ndarray], scale: float = 1.0) -> dict[str, float]:
        return {"loss": float(np.stack(features).sum()) * scale * self.l2}


def task(folder: Path) -> None:
    exp = Experiment(lr=0.1, infra=exca.TaskInfra(folder=folder))
    # revealed: float
    tp.reveal_type(exp.train())
    exp.train(3)  # type: ignore[call-arg]
    trainer = Trainer(infra=exca.TaskInfra(folder=folder))
    # revealed: dict[str, float]
    tp.reveal_type(trainer.fit([np.zeros(2)], scale=2.0))
    trainer.fit([np.zeros(2)], scal=2.0)  # type: ignore[call-arg]


class Embedder(pydantic.BaseModel):
    dim: int = 8
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def embed(self, items: tp.Iterable[int]) -> tp.Iterator[np.ndarray]:
        for item in items:
            yield np.full(self.dim, item)


class Squares(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)  # (as the docs: a list, called with any iterable)
    def run(self, items: list[int]) -> tp.Iterator[dict[str, tp.Any]]:
        for item in items:
            yield {"square": item**2}


def map_items(folder: Path) -> None:
    embedder = Embedder(infra=exca.MapInfra(folder=folder))
    # revealed: typing.Iterator[numpy.ndarray[tuple[Any, ...], numpy.dtype[Any]]]
    tp.reveal_type(embedder.embed([1, 2, 3]))
    embedder.embed(items=range(3))
    embedder.embed(["a"])  # type: ignore[list-item]
    # revealed: str
    tp.reveal_type(embedder.infra.item_uid(3))
    squares = Squares(infra=exca.MapInfra(folder=folder))
    # revealed: typing.Iterator[dict[str, Any]]
    tp.reveal_type(squares.run(range(13)))
    # revealed: typing.Iterator[dict[str, Any]]
    tp.reveal_type(squares.run(items=(i for i in range(3))))
    squares.run(items=["a"])  # type: ignore[list-item]
    # revealed: list[dict[str, Any]]
    tp.reveal_type(squares.run.node([1, 2]).result())


def pipeline(folder: Path) -> None:
    exp = Experiment(infra=exca.TaskInfra(folder=folder))
    embedder = Embedder(infra=exca.MapInfra(folder=folder))
    trainer = Trainer(infra=exca.TaskInfra(folder=folder))
    features = embedder.embed.node([1, 2])
    model = trainer.fit.node(features, scale=2.0)
    # revealed: float
    tp.reveal_type(exp.train.node().result())
    # revealed: list[numpy.ndarray[tuple[Any, ...], numpy.dtype[Any]]]
    tp.reveal_type(features.result())
    # revealed: dict[str, float]
    tp.reveal_type(model.result())
    # revealed: dict[str, float]
    tp.reveal_type(exca.graph.result(model))
    # revealed: dict[str, float]
    tp.reveal_type(model.job().result())
    # revealed: list[numpy.ndarray[tuple[Any, ...], numpy.dtype[Any]]]
    tp.reveal_type(features.job().result())
    targets: dict[str, exca.graph.Node] = {"model": model, "train": exp.train.node()}
    exca.graph.run(*targets.values())
    # revealed: str
    tp.reveal_type(model.status())
    # revealed: BaseException | None
    tp.reveal_type(model.failure())


@exca.helpers.with_infra(folder="/tmp/cache")
def noise(rows: int, cols: int) -> list[float]:
    return [0.0] * rows * cols


def helpers() -> None:
    # revealed: list[float]
    tp.reveal_type(noise(rows=2, cols=3))
    noise(rows=2, colls=3)  # type: ignore[call-arg]
    # revealed: str
    tp.reveal_type(noise.config(rows=2, cols=3).infra.uid())
    exca.helpers.validate_kwargs(noise, {"rows": 1})


def cache_dict(folder: Path) -> None:
    cache: cachedict.CacheDict[np.ndarray] = cachedict.CacheDict(folder=folder)
    with cache.write():
        cache["weights"] = np.zeros(3)
    # revealed: numpy.ndarray[tuple[Any, ...], numpy.dtype[Any]]
    tp.reveal_type(cache["weights"])
    # revealed: numpy.ndarray[tuple[Any, ...], numpy.dtype[Any]] | None
    tp.reveal_type(cache.get("weights"))
    # revealed: numpy.ndarray[tuple[Any, ...], numpy.dtype[Any]] | int
    tp.reveal_type(cache.get("weights", 0))
    # revealed: list[str]
    tp.reveal_type(cache.keys())
    anything = cachedict.CacheDict(folder=folder)  # (as the docs write it: any value)
    # revealed: exca.storage.cachedict.CacheDict[Any]
    tp.reveal_type(anything)


def cached_configs(folder: Path) -> None:
    exp = Experiment(infra=exca.TaskInfra(folder=folder))
    for config in exp.infra.iter_cached():  # (instances of the owner class)
        print(config.infra.uid())
