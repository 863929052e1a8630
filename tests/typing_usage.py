"""What a user's type checker sees of exca's public API, as the docs use it.

Never run: tests/test_typing_usage.py runs ``mypy --strict`` on this file. A comment
``# revealed: <type>`` says what mypy must reveal on the next line; a
``# type: ignore[code]`` must be needed (--strict warns of unused ignores): a call that
does not fit the decorated method's signature is an error.
"""

from __future__ import annotations

import typing as tp
from pathlib import Path

import pydantic

import exca
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
