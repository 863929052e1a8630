"""Globals injected into every documentation script (as the seeds expect), importable by
jobs (tests/ is on PYTHONPATH) so that submitted work can unpickle them."""

import types
import typing as tp

import numpy as np
import pydantic

from exca import MapInfra, TaskInfra


class TutorialTask(pydantic.BaseModel):
    param: int = 12
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> float:
        return self.param * np.random.rand()


class TutorialMap(pydantic.BaseModel):
    param: int = 12
    infra: MapInfra = MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: tp.Iterable[int]) -> tp.Iterator[np.ndarray]:
        for item in items:
            yield np.random.rand(item, self.param)


def torch_module() -> types.ModuleType:
    """The real torch when installed, else a minimal stand-in (the docs only import and
    subclass ``torch.nn.Module``)."""
    try:
        import torch

        return torch
    except ImportError:
        pass
    torch = types.ModuleType("torch")
    nn = types.ModuleType("torch.nn")

    class Module:
        def __init__(self, *args: tp.Any, **kwargs: tp.Any) -> None:
            pass

    nn.Module = Module  # type: ignore[attr-defined]
    torch.nn = nn  # type: ignore[attr-defined]
    torch.__exca_stand_in__ = True  # type: ignore[attr-defined]
    return torch
