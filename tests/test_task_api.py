"""The TaskInfra / MapInfra user API that needs no job (cluster=None): caching, modes,
errors, job()/status()/clear_job(), configs and clones, validation, MapInfra rules."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import pickle
import threading
import typing as tp
from pathlib import Path

import pydantic
import pytest
import yaml

import exca
from exca import ConfDict, MapInfra, TaskInfra
from exca.cachedict import CacheDict
from exca.infra.workdir import WorkDir
from exca.storage.dumping import is_damaged_payload, load_pickle

MODULE = __name__
CALLS: list[tuple[str, int]] = []  # (method, param) of every computation below


def _count(name: str, param: int | None = None) -> int:
    return sum(1 for n, p in CALLS if n == name and (param is None or p == param))


class Task(pydantic.BaseModel):
    param: int = 1
    fail: bool = False
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        CALLS.append(("task", self.param))
        if self.fail:
            raise KeyError(f"failing on purpose with param={self.param}")
        return self.param * 10


class Sub(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    layers: int = 2
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def build(self) -> int:
        return self.layers


class Outer(pydantic.BaseModel):
    model: Sub = Sub()
    subs: list[Sub] = []
    lr: float = 0.1
    infra: TaskInfra = TaskInfra(version="2")

    @infra.apply
    def train(self) -> float:
        CALLS.append(("outer", self.model.layers))
        return self.lr * self.model.layers


# --- caching --------------------------------------------------------------------------------
def test_result_cached_and_reread(tmp_path: Path) -> None:
    task = Task(param=2, infra={"folder": tmp_path})
    before = _count("task", 2)
    assert task.process() == 20
    assert task.process() == 20
    assert Task(param=2, infra={"folder": tmp_path}).process() == 20  # a new instance
    assert _count("task", 2) == before + 1
    assert Task(param=3, infra={"folder": tmp_path}).process() == 30
    assert _count("task", 2) == before + 1


def test_keep_in_ram(tmp_path: Path) -> None:
    ram = Task(param=4, infra={"folder": tmp_path, "keep_in_ram": True})
    assert ram.process() == 40
    before = _count("task", 4)
    Task(param=4, infra={"folder": tmp_path}).infra.clear_job()  # results removed from disk
    assert ram.process() == 40  # still in RAM
    assert _count("task", 4) == before
    assert Task(param=4, infra={"folder": tmp_path}).process() == 40  # recomputed
    assert _count("task", 4) == before + 1


def test_keep_in_ram_forgets_a_result_its_own_node_cleared(tmp_path: Path) -> None:
    """node.clear() ("the next call computes it") on the instance holding the result in
    RAM: the next call returned the old result, and computed nothing (a probe)."""
    ram = Task(param=6, infra={"folder": tmp_path, "keep_in_ram": True})
    assert ram.process() == 60 and ram.process() == 60
    before = _count("task", 6)
    ram.process.node().clear()
    assert ram.infra.status() == "not submitted"
    assert ram.process() == 60 and _count("task", 6) == before + 1
    assert ram.process() == 60 and _count("task", 6) == before + 1  # (in RAM again)


class Coeffed(pydantic.BaseModel):
    coeff: int = 2
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def scale(self, x: int) -> list[int]:
        CALLS.append(("coeffed", x))
        return [self.coeff * x]


@pytest.mark.parametrize("with_folder", (True, False))
def test_keep_in_ram_of_a_method_with_inputs(tmp_path: Path, with_folder: bool) -> None:
    """keep_in_ram=True did nothing for a method taking inputs: without folder each call
    computed again (its plan said "RAM only"), with one each call read the disk and
    returned a new object (a probe). Each input tuple now has its own RAM entry."""
    folder = tmp_path if with_folder else None
    ram = Coeffed(coeff=3, infra={"folder": folder, "keep_in_ram": True})
    before = _count("coeffed")
    first = ram.scale(1)
    first.append(0)  # (changed: later calls of this instance return that same object)
    assert ram.scale(1) is first and ram.scale(x=1) is first
    assert ram.scale(2) == [6] and ram.scale(2) is ram.scale(2)  # its own entry
    assert _count("coeffed") == before + 2
    assert ram.scale.node(1).result() in ([3], [3, 0])  # (a node reads the disk, if any)
    assert ram.scale.node(1).result() in ([3], [3, 0])
    assert _count("coeffed") == before + 2
    ram.scale.node(1).clear()  # ("the next call computes it")
    assert ram.scale(1) == [3] and _count("coeffed") == before + 3
    assert ram.scale(1) is ram.scale(1) and _count("coeffed") == before + 3
    if with_folder:  # removed through another instance: still in RAM, as without inputs
        Coeffed(coeff=3, infra={"folder": tmp_path}).scale.node(2).clear()
        assert ram.scale(2) == [6] and _count("coeffed") == before + 3
        disk = Coeffed(coeff=3, infra={"folder": tmp_path})
        assert disk.scale(1) == [3] and disk.scale(1) is not disk.scale(1)  # (read again)
        assert _count("coeffed") == before + 3
    else:  # nothing on disk for a new instance; without keep_in_ram, nothing kept
        assert Coeffed(coeff=3, infra={"keep_in_ram": True}).scale(1) == [3]
        plain = Coeffed(coeff=3)
        assert plain.scale(1) == [3] and plain.scale(1) == [3]
        assert _count("coeffed") == before + 6


def test_keep_in_ram_of_a_method_with_inputs_forced(tmp_path: Path) -> None:
    """mode=force with keep_in_ram: each input tuple is forced once, then kept."""
    assert Coeffed(coeff=4, infra={"folder": tmp_path}).scale(1) == [4]
    before = _count("coeffed")
    forced = Coeffed(coeff=4, infra={"folder": tmp_path, "mode": "force", "keep_in_ram": True})
    first = forced.scale(1)
    assert forced.scale(1) is first and _count("coeffed") == before + 1
    assert forced.scale(2) is forced.scale(2) and _count("coeffed") == before + 2


def test_without_keep_in_ram_a_cleared_result_is_recomputed(tmp_path: Path) -> None:
    disk = Task(param=17, infra={"folder": tmp_path})
    assert disk.process() == 170
    before = _count("task", 17)
    Task(param=17, infra={"folder": tmp_path}).infra.clear_job()
    assert disk.process() == 170
    assert _count("task", 17) == before + 1


def test_no_folder() -> None:
    plain = Task(param=5)
    before = _count("task", 5)
    assert plain.process() == 50
    assert plain.process() == 50
    assert _count("task", 5) == before + 2  # nothing kept: recomputed on each call
    ram = Task(param=5, infra={"keep_in_ram": True})
    assert ram.process() == 50
    assert ram.process() == 50
    assert _count("task", 5) == before + 3  # RAM only
    assert Task(param=5, infra={"keep_in_ram": True}).process() == 50
    assert _count("task", 5) == before + 4  # nothing on disk for a new instance
    assert ram.infra.uid_folder() is None


# --- modes ----------------------------------------------------------------------------------
def test_mode_force(tmp_path: Path) -> None:
    assert Task(param=6, infra={"folder": tmp_path}).process() == 60
    before = _count("task", 6)
    forced = Task(param=6, infra={"folder": tmp_path, "mode": "force"})
    assert forced.process() == 60
    assert _count("task", 6) == before + 1
    assert forced.process() == 60  # forced once per instance, then reused
    assert _count("task", 6) == before + 1
    assert Task(param=6, infra={"folder": tmp_path, "mode": "force"}).process() == 60
    assert _count("task", 6) == before + 2  # another instance forces again
    assert Task(param=6, infra={"folder": tmp_path}).process() == 60
    assert _count("task", 6) == before + 2


def test_mode_read_only(tmp_path: Path) -> None:
    before = _count("task", 7)
    with pytest.raises(RuntimeError, match="read-only and missing"):
        Task(param=7, infra={"folder": tmp_path, "mode": "read-only"}).process()
    assert _count("task", 7) == before
    assert Task(param=7, infra={"folder": tmp_path}).process() == 70
    assert Task(param=7, infra={"folder": tmp_path, "mode": "read-only"}).process() == 70
    assert _count("task", 7) == before + 1
    # job() as well: a cached result is its job's result; it refuses only to submit
    assert Task(param=7, infra={"folder": tmp_path, "mode": "read-only"}).infra.job().result() == 70
    with pytest.raises(RuntimeError, match="read-only"):
        Task(param=17, infra={"folder": tmp_path, "mode": "read-only"}).infra.job()


def test_mode_retry_on_success_does_not_recompute(tmp_path: Path) -> None:
    assert Task(param=8, infra={"folder": tmp_path}).process() == 80
    before = _count("task", 8)
    assert Task(param=8, infra={"folder": tmp_path, "mode": "retry"}).process() == 80
    assert _count("task", 8) == before


def test_error_cached_and_retry(tmp_path: Path) -> None:
    def make(**infra: tp.Any) -> Task:
        return Task(param=9, fail=True, infra={"folder": tmp_path, **infra})

    before = _count("task", 9)
    task = make()
    assert task.infra.status() == "not submitted"
    with pytest.raises(KeyError, match="failing on purpose"):
        task.process()
    assert _count("task", 9) == before + 1
    assert task.infra.status() == "failed"
    with pytest.raises(KeyError):
        make().process()  # the error is cached
    assert _count("task", 9) == before + 1
    assert make().infra.status() == "failed"
    with pytest.raises(KeyError):
        make(mode="retry").process()
    assert _count("task", 9) == before + 2
    with pytest.raises(KeyError):
        make(mode="force").process()
    assert _count("task", 9) == before + 3


class Unstorable(pydantic.BaseModel):
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> tp.Any:
        import threading

        CALLS.append(("unstorable", 0))
        return {"weights": [1.0], "post": lambda x: x, "lock": threading.Lock()}


def test_a_result_that_cannot_be_stored_is_a_cached_error(tmp_path: Path) -> None:
    """Its error says so (same type as the storage error); it is not recomputed by every
    call (the same result would come back), retry recomputes it."""
    for _ in range(2):
        obj = Unstorable(infra={"folder": tmp_path})
        with pytest.raises(TypeError, match=r"result of .* cannot be stored .*pickle") as info:
            obj.process()
        assert "the part that cannot be pickled: value['lock']" in str(info.value)
        assert obj.infra.status() == "failed"
    assert _count("unstorable") == 1
    with pytest.raises(TypeError, match="cannot be stored"):
        Unstorable(infra={"folder": tmp_path, "mode": "retry"}).process()
    assert _count("unstorable") == 2


# --- jobs -----------------------------------------------------------------------------------
def test_job_for_cluster_none(tmp_path: Path) -> None:
    task = Task(param=11, infra={"folder": tmp_path})
    before = _count("task", 11)
    job = task.infra.job()
    assert _count("task", 11) == before + 1  # computed synchronously at creation
    assert job.job_id == "#local#"
    assert job.done()
    job.wait()
    assert job.result() == 110
    assert job.results() == [110]
    assert task.infra.status() == "completed"
    again = Task(param=11, infra={"folder": tmp_path}).infra.job()
    assert again.result() == 110
    assert _count("task", 11) == before + 1


def test_job_of_failing_task(tmp_path: Path) -> None:
    task = Task(param=12, fail=True, infra={"folder": tmp_path})
    job = task.infra.job()  # does not raise
    assert job.done()
    with pytest.raises(KeyError):
        job.result()
    assert task.infra.status() == "failed"
    assert job.state == "FAILED"


class _OddFails(pydantic.BaseModel):
    infra: MapInfra = MapInfra(version="1")

    @infra.apply(item_uid=str)
    def apply(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            if item % 2:
                raise ValueError(f"odd item {item}")
            yield item


def test_failure_says_why_status_is_failed(tmp_path: Path) -> None:
    """status() is a plain "failed" (SPEC), and only `exca list` said why: failure() gives
    the error a call raises, reading only (in mode retry too: nothing computed)."""
    task = Task(param=13, fail=True, infra={"folder": tmp_path})
    assert task.infra.failure() is None  # (not submitted: no failure)
    with pytest.raises(KeyError):
        task.process()
    assert task.infra.status() == "failed"
    error = task.infra.failure()
    assert isinstance(error, KeyError) and "param=13" in str(error)
    retry = Task(param=13, fail=True, infra={"folder": tmp_path, "mode": "retry"})
    before = _count("task", 13)
    assert isinstance(retry.infra.failure(), KeyError)
    assert _count("task", 13) == before and retry.infra.status() == "failed"
    done = Task(param=14, infra={"folder": tmp_path})
    done.process()
    assert done.infra.failure() is None and done.process.node().failure() is None
    assert isinstance(task.process.node().failure(), KeyError)  # (a node says it too)
    mapper = _OddFails(infra={"folder": tmp_path})
    node = mapper.apply.node([2, 3])
    with pytest.raises(ValueError):
        node.result()
    assert node.status() == "failed"
    said = node.failure()
    assert isinstance(said, ValueError) and "odd item 3" in str(said)
    assert mapper.apply.node([2]).failure() is None
    with pytest.raises(AttributeError, match=r"failure\(\)"):
        mapper.infra.failure()


def test_job_state_without_a_folder() -> None:
    """Nothing stored: the job's state comes from what it holds (a failure said FINISHED)."""
    failed = Task(param=12, fail=True).infra.job()
    assert failed.state == "FAILED"
    with pytest.raises(KeyError):
        failed.result()
    done = Task(param=12).infra.job()
    assert done.state == "COMPLETED" and done.result() == 120


def test_status_values(tmp_path: Path) -> None:
    task = Task(param=13, infra={"folder": tmp_path})
    assert task.infra.status() == "not submitted"
    task.process()
    assert task.infra.status() == "completed"
    assert Task(param=13, infra={"folder": tmp_path}).infra.status() == "completed"


def test_clear_job(tmp_path: Path) -> None:
    task = Task(param=14, infra={"folder": tmp_path})
    assert task.process() == 140
    folder = task.infra.uid_folder()
    assert folder is not None
    assert {"uid.yaml", "full-uid.yaml", "config.yaml"} <= {p.name for p in folder.iterdir()}
    before = _count("task", 14)
    task.infra.clear_job()
    assert task.infra.status() == "not submitted"
    names = {p.name for p in folder.iterdir()}
    assert {"uid.yaml", "full-uid.yaml"} <= names
    assert "config.yaml" not in names
    assert list(task.infra.iter_cached()) == []
    assert task.process() == 140  # recomputed
    assert _count("task", 14) == before + 1
    assert (folder / "config.yaml").exists()
    assert task.infra.status() == "completed"


def test_clear_job_of_an_instance_that_read_an_older_result(tmp_path: Path) -> None:
    """The result another instance rewrote since (mode=force) is the one removed."""
    old = Task(param=18, infra={"folder": tmp_path})
    assert old.process() == 180
    Task(param=18, infra={"folder": tmp_path, "mode": "force"}).process()
    old.infra.clear_job()
    assert old.infra.status() == "not submitted"
    fresh = Task(param=18, infra={"folder": tmp_path})
    assert fresh.infra.status() == "not submitted"
    before = _count("task", 18)
    assert fresh.process() == 180 and _count("task", 18) == before + 1


def test_clear_job_of_failed_task(tmp_path: Path) -> None:
    task = Task(param=15, fail=True, infra={"folder": tmp_path})
    with pytest.raises(KeyError):
        task.process()
    task.infra.clear_job()
    assert task.infra.status() == "not submitted"
    before = _count("task", 15)
    with pytest.raises(KeyError):
        task.process()
    assert _count("task", 15) == before + 1


# --- config / clone_obj / iter_cached / obj_infras ------------------------------------------
def test_config() -> None:
    obj = Outer(model={"layers": 3}, infra={"gpus_per_node": 2})
    assert obj.infra.config() == {
        "model": {"layers": 3, "infra": {"version": "0"}},
        "subs": [],
        "lr": 0.1,
        "infra": {"version": "2"},
    }
    uid_cfg = obj.infra.config(uid=True, exclude_defaults=True)
    assert isinstance(uid_cfg, ConfDict)
    assert uid_cfg == {"model": {"layers": 3}}
    full = obj.infra.config(uid=False, exclude_defaults=False)
    assert full["infra.gpus_per_node"] == 2
    assert full["model.layers"] == 3
    assert "permissions" not in full["infra"]
    nondefault = obj.infra.config(uid=False, exclude_defaults=True)
    # the infra differs from the field default: its fields are compared with TaskInfra's
    assert nondefault == {"model": {"layers": 3}, "infra": {"gpus_per_node": 2, "version": "2"}}


def test_clone_obj(tmp_path: Path) -> None:
    obj = Outer(model={"layers": 3}, infra={"folder": tmp_path})
    obj.infra.uid()  # frozen
    clone = obj.infra.clone_obj({"model.layers": 4, "infra.mode": "force"})
    assert isinstance(clone, Outer)
    assert clone.model.layers == 4 and clone.infra.mode == "force"
    assert clone.infra.folder == tmp_path and clone.lr == 0.1
    assert obj.model.layers == 3 and obj.infra.mode == "cached"
    clone.lr = 0.2  # not frozen
    kw = obj.infra.clone_obj(**{"lr": 0.5, "model.layers": 5})
    assert kw.lr == 0.5 and kw.model.layers == 5
    nested = obj.infra.clone_obj({"model": {"layers": 6}})
    assert nested.model.layers == 6
    same = obj.infra.clone_obj()
    assert same.infra.uid() == obj.infra.uid() and same is not obj
    with pytest.raises(ValueError):
        obj.infra.clone_obj({"lr": 0.3}, lr=0.4)
    with pytest.raises(ValueError):
        obj.infra.clone_obj({"lr": 0.3}, {"lr": 0.4})
    with pytest.raises(pydantic.ValidationError):
        obj.infra.clone_obj({"unknown": 1})


class _Optim(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    lr: float = 0.1
    momentum: float = 0.0


class _Adam(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    name: tp.Literal["adam"] = "adam"
    lr: float = 0.1


class _Sgd(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    name: tp.Literal["sgd"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.0


class _Sweep(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    optim: _Optim = _Optim(momentum=0.9)
    layers: list[_Optim] = [_Optim(), _Optim(lr=0.5)]
    weights: dict[str, float] = {"a": 1.0, "b": 2.0}
    choice: tp.Annotated[_Adam | _Sgd, pydantic.Field(discriminator="name")] = _Sgd(momentum=0.7)
    model: Sub = Sub()
    infra: TaskInfra = TaskInfra(version="1", cluster="auto", gpus_per_node=2)

    @infra.apply
    def fit(self) -> float:
        return self.optim.lr


def test_clone_obj_keeps_values_of_sub_configs_at_their_field_default(tmp_path: Path) -> None:
    """A change inside a sub-config left at its field default keeps the default
    instance's other values (and its class: a discriminated union)."""
    obj = _Sweep(infra={"folder": tmp_path})
    clone = obj.infra.clone_obj({"optim.lr": 0.2})
    assert (clone.optim.lr, clone.optim.momentum) == (0.2, 0.9)
    merged = obj.infra.clone_obj({"optim": {"lr": 0.3}})
    assert (merged.optim.lr, merged.optim.momentum) == (0.3, 0.9)
    replaced = obj.infra.clone_obj({"optim": {"lr": 0.3, ConfDict.OVERRIDE: True}})
    assert (replaced.optim.lr, replaced.optim.momentum) == (0.3, 0.0)
    switched = obj.infra.clone_obj({"choice.lr": 0.5})
    assert type(switched.choice) is _Sgd and (switched.choice.lr, switched.choice.momentum) == (
        0.5,
        0.7,
    )
    # another class: the default's values (momentum, which Adam has not) are not carried
    for change in ({"choice.name": "adam"}, {"choice": {"name": "adam", "lr": 0.2}}):
        other = obj.infra.clone_obj(change)
        assert type(other.choice) is _Adam
    # inside a list or a dict at its default
    indexed = obj.infra.clone_obj({"layers.1.momentum": 0.3, "weights.b": 3.0})
    assert [(o.lr, o.momentum) for o in indexed.layers] == [(0.1, 0.0), (0.5, 0.3)]
    assert indexed.weights == {"a": 1.0, "b": 3.0}


def test_clone_obj_keeps_infra_settings_the_instance_overrode(tmp_path: Path) -> None:
    """An instance setting an infra field back to TaskInfra's own default (which the
    export leaves out) keeps it in clones instead of getting the class default's value."""
    local = _Sweep(infra={"cluster": None, "gpus_per_node": None})
    clone = local.infra.clone_obj({"optim.lr": 0.2})
    assert clone.infra.cluster is None and clone.infra.gpus_per_node is None
    assert clone.infra.version == "1"  # from the class default, not overridden
    default = _Sweep(infra={"folder": tmp_path}).infra.clone_obj({"optim.lr": 0.2})
    assert default.infra.cluster == "auto" and default.infra.gpus_per_node == 2
    # a sub-config's infra: kept too, and the sub-config is not rebuilt from scratch
    nested = _Sweep(model={"layers": 5, "infra": {"mode": "force"}}, infra={"folder": tmp_path})
    nested_clone = nested.infra.clone_obj({"model.layers": 6})
    assert nested_clone.model.infra.mode == "force" and nested_clone.model.layers == 6
    assert (
        local.infra.clone_obj({"infra.cluster": "debug", "infra.folder": tmp_path}).infra.cluster
        == "debug"
    )


def test_clone_obj_keeps_the_permissions_the_instance_set(tmp_path: Path) -> None:
    """permissions is kept out of exports (not config): clones lost it, and created their
    folders with the default 0o777 instead of the instance's 0o700."""
    task = Task(param=1, infra={"folder": tmp_path, "permissions": 0o700})
    clone = task.infra.clone_obj(param=2)
    assert clone.infra.permissions == 0o700
    clone.infra.uid_folder(create=True)
    assert (clone.infra.uid_folder().stat().st_mode & 0o777) == 0o700
    assert Task(infra={"folder": tmp_path}).infra.clone_obj(param=3).infra.permissions == 0o777


class _Optim(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    learning_rate: float = pydantic.Field(0.1, alias="lr")
    decay: float = 0.0


class _Aliased(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    batch_size: int = pydantic.Field(8, alias="bs")
    optim: _Optim = _Optim()
    notes: dict[str, int] = {}
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def train(self) -> str:
        return f"{self.batch_size} {self.optim.learning_rate}"


def test_clone_obj_takes_field_aliases() -> None:
    """Changes may name fields by their alias, as the class is built (`lr=...`): they
    were added next to the field name of the config and refused as extra inputs."""
    task = _Aliased(bs=16, optim={"lr": 0.2, "decay": 0.5}, notes={"bs": 1})
    clone = task.infra.clone_obj({"bs": 32, "optim.lr": 0.3, "notes.bs": 2})
    assert (clone.batch_size, clone.optim.learning_rate, clone.optim.decay) == (32, 0.3, 0.5)
    assert clone.notes == {"bs": 2}  # (dict keys are data, not aliases)
    nested = task.infra.clone_obj(optim={"lr": 0.4})
    assert (nested.optim.learning_rate, nested.optim.decay, nested.batch_size) == (0.4, 0.5, 16)
    assert task.infra.clone_obj(batch_size=4).batch_size == 4  # field names still work


def test_clone_obj_with_a_misspelled_key_says_the_close_field_names() -> None:
    """A sweep of clone_obj changes with a typo in a key (``optim.learning_rat``) was
    refused with pydantic's "Extra inputs are not permitted" only; the command line's
    overrides say the close field names (did you mean ...?): clone_obj says them too, once
    (in the error's line of that key, as a config built from python does)."""
    task = _Aliased()
    with pytest.raises(pydantic.ValidationError) as info:
        task.infra.clone_obj({"optim.learning_rat": 0.3})
    said = str(info.value) + "".join(getattr(info.value, "__notes__", []))
    assert [e["loc"] for e in info.value.errors()] == [("optim", "learning_rat")]
    wanted = "_Optim has no field 'learning_rat': did you mean 'learning_rate'?"
    assert said.count(wanted) == 1, said


def test_a_misspelled_infra_field_from_python_says_the_close_names() -> None:
    """``Train(infra={"fodler": ...})`` was refused with pydantic's bare "infra.fodler
    Extra inputs are not permitted", while the command line named the close fields. The
    error (still a ValidationError, same type and location) says them and where the
    fields are listed; the other lines of the error are unchanged."""
    with pytest.raises(pydantic.ValidationError) as info:
        Layered(infra={"fodler": "/tmp/x", "cluster": "bad"})
    lines = {e["loc"]: e for e in info.value.errors()}
    assert lines[("infra", "fodler")]["type"] == "extra_forbidden"
    said = "TaskInfra has no field 'fodler': did you mean 'folder'? (its fields: "
    assert said in str(info.value) and "docs/taskinfra.md" in str(info.value)
    assert lines[("infra", "cluster")]["msg"].startswith("Value error, cluster='bad'")
    with pytest.raises(pydantic.ValidationError, match="did you mean 'gpus_per_node'"):
        Layered(infra={"gpus": 1})
    with pytest.raises(pydantic.ValidationError) as info:
        LayeredMap(infra={"max_job": 2})
    assert info.value.errors()[0]["type"] == "extra_forbidden"
    assert "MapInfra has no field 'max_job': did you mean 'max_jobs'?" in str(info.value)
    config = Layered()
    with pytest.raises(pydantic.ValidationError, match="did you mean 'mode'"):
        config.infra.mdoe = "force"  # type: ignore[attr-defined]


def test_a_misspelled_field_of_a_config_from_python_says_the_close_names() -> None:
    """``Layered(Layers=[32])`` (a config holding an infra: exca makes it refuse unknown
    keys) got pydantic's bare "Extra inputs are not permitted", while a typo in its infra
    named the close fields. It names them too (case ignored); the error keeps its type and
    location, a nested infra's typo line keeps what it says, and a plain model is
    untouched."""
    with pytest.raises(pydantic.ValidationError) as info:
        Layered(Layers=[32], infra={"fodler": "/tmp/x"})  # type: ignore[call-arg]
    lines = {e["loc"]: e for e in info.value.errors()}
    assert lines[("Layers",)]["type"] == "extra_forbidden"
    said = str(info.value)
    assert "Layered has no field 'Layers': did you mean 'layers'? (its fields: " in said, said
    assert "TaskInfra has no field 'fodler': did you mean 'folder'?" in said, said
    with pytest.raises(pydantic.ValidationError) as info:
        Layered.model_validate({"xyz": 1})
    assert "Layered has no field 'xyz'; its fields: infra, layers, params" in str(info.value)

    class Plain(pydantic.BaseModel):  # (no infra: pydantic's error, as it was)
        model_config = pydantic.ConfigDict(extra="forbid")
        layers: int = 1

    with pytest.raises(pydantic.ValidationError) as info:
        Plain(Layers=2)  # type: ignore[call-arg]
    assert "has no field" not in str(info.value)


class _Optim(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    lr: float = 0.1
    momentum: float = 0.0


class _Trainer(pydantic.BaseModel):
    optim: _Optim = _Optim()
    stages: list[_Optim] = []
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def train(self) -> float:
        return self.optim.lr


def test_a_misspelled_field_of_a_sub_config_says_the_close_names_of_that_sub_config() -> None:
    """``_Trainer(optim={"lrr": 0.2})`` (a typo in a sub-config of a config holding an
    infra) got pydantic's bare "Extra inputs are not permitted" while a typo of the config
    itself named the close fields. It names the sub-config's close fields, also in a list
    of sub-configs; type, location and the other errors kept."""
    with pytest.raises(pydantic.ValidationError) as info:
        _Trainer(optim={"lrr": 0.2}, stages=[{"lr": 1}, {"momentun": 0.9}])  # type: ignore[arg-type]
    lines = {e["loc"]: e for e in info.value.errors()}
    assert set(lines) == {("optim", "lrr"), ("stages", 1, "momentun")}, lines
    assert {e["type"] for e in lines.values()} == {"extra_forbidden"}
    said = str(info.value)
    assert "_Optim has no field 'lrr': did you mean 'lr'? (its fields: _Optim.model_fields)" in said
    assert "_Optim has no field 'momentun': did you mean 'momentum'?" in said, said
    with pytest.raises(pydantic.ValidationError) as info:
        _Trainer(optim={"xyz": 1, "lr": "fast"})  # type: ignore[arg-type]
    said = str(info.value)
    assert "_Optim has no field 'xyz'; its fields: lr, momentum (_Optim.model_fields)" in said
    assert "valid number" in said  # (the other error, as pydantic said it)
    assert _Trainer(optim={"lr": 0.5}).train() == 0.5  # type: ignore[arg-type]


def test_a_setting_of_the_infra_given_to_the_config_from_python_says_where_it_goes() -> None:
    """``Layered(folder=...)`` (a setting of its infra given at the top) got pydantic's
    bare "Extra inputs are not permitted", while the command line says where it goes
    (``infra.folder=VALUE``). It says how to give it from Python; type and location kept."""
    with pytest.raises(pydantic.ValidationError) as info:
        Layered(folder="/tmp/x", cluster="local")  # type: ignore[call-arg]
    assert [(e["loc"], e["type"]) for e in info.value.errors()] == [
        (("folder",), "extra_forbidden"),
        (("cluster",), "extra_forbidden"),
    ]
    said = str(info.value)
    for key in ("folder", "cluster"):
        hint = f"Layered has no field {key!r}: {key} is a setting of its infra: "
        assert said.count(hint + f"Layered(infra={{{key!r}: ...}})") == 1, said


class Layered(pydantic.BaseModel):
    layers: list[int] = [64]
    params: dict[str, float] = {}
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def train(self) -> str:
        return f"{self.layers} {self.params}"


class LayeredMap(pydantic.BaseModel):
    scale: list[int] = [1]
    infra: MapInfra = MapInfra(version="1")

    @infra.apply(item_uid=str)
    def apply(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            yield item * sum(self.scale)


class _Steps(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    sizes: tp.Iterable[int] = (1,)


class Iterated(pydantic.BaseModel):
    sizes: tp.Iterable[int] = (1, 2)  # (pydantic: a value given here is a one-pass iterator)
    steps: _Steps = _Steps()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def train(self) -> int:
        return sum(self.sizes)


def test_a_one_pass_iterator_consumed_by_the_uid_is_named(tmp_path: Path) -> None:
    """A value given to a tp.Iterable field is validated lazily by pydantic, and the
    dump that makes the uid consumes it: the compute refused it as "changed in place",
    with no word on what changed it (no code of the user's). The error says so."""
    assert Iterated(infra={"folder": tmp_path}).train() == 3  # (a default: not validated)
    folder = {"folder": tmp_path}
    for name, config in [
        ("Iterated.sizes", Iterated(sizes=[1, 2, 3], infra=folder)),
        ("_Steps.sizes", Iterated(steps={"sizes": [4]}, infra=folder)),
    ]:
        with pytest.raises(RuntimeError, match="changed in place") as error:
            config.train()
        assert f"{name} is a one-pass iterator" in str(error.value)
        assert "tp.Sequence[int]" in str(error.value)


def test_a_config_changed_in_place_after_its_uid_is_not_computed(tmp_path: Path) -> None:
    """A list or dict changed in place after the uid was computed (a plan, a printed
    folder): the result of the new values was cached under the old values' uid."""
    exp = Layered(params={"lr": 0.1}, infra={"folder": tmp_path})
    exp.infra.uid_folder(create=True)  # the folder is written: checked again anyway
    exp.layers.append(128)
    exp.params["lr"] = 0.9
    with pytest.raises(RuntimeError, match=r"changed in place.*layers: its default -> \[64, 128\]"):
        exp.train()
    assert Layered(params={"lr": 0.1}, infra={"folder": tmp_path}).train() == "[64] {'lr': 0.1}"
    mapper = LayeredMap(infra={"folder": tmp_path})
    mapper.apply.node([1, 2]).uid  # noqa: B018  (the uid, computed by building the node)
    mapper.scale[0] = 5
    with pytest.raises(RuntimeError, match="scale"):
        list(mapper.apply([1, 2]))
    assert list(LayeredMap(infra={"folder": tmp_path}).apply([1, 2])) == [1, 2]
    # cached under the old values: the call read that result, for the new values
    cached = Layered(params={"lr": 0.1}, infra={"folder": tmp_path, "keep_in_ram": True})
    assert cached.train() == "[64] {'lr': 0.1}"
    cached.layers.append(128)
    with pytest.raises(RuntimeError, match=r"changed in place.*layers: its default -> \[64, 128\]"):
        cached.train()
    mapper = LayeredMap(infra={"folder": tmp_path})
    assert list(mapper.apply([1, 2])) == [1, 2]
    mapper.scale.append(1)
    with pytest.raises(RuntimeError, match="scale"):
        list(mapper.apply([1, 2]))
    # a method with inputs, a list in a tuple, a result kept in RAM only: the same
    with_inputs = LayeredInputs(infra={"folder": tmp_path})
    assert with_inputs.train(3) == "[64] 3"
    with_inputs.layers.append(2)
    with pytest.raises(RuntimeError, match="changed in place"):
        with_inputs.train(3)
    paired = LayeredInputs(pair=([1], 3), infra={"folder": tmp_path})
    assert paired.train(1) == "[64] 1"
    paired.pair[0].append(5)
    with pytest.raises(RuntimeError, match="changed in place"):
        paired.train(1)
    in_ram = Layered(infra={"keep_in_ram": True})
    assert in_ram.train() == "[64] {}"
    in_ram.layers.append(1)
    with pytest.raises(RuntimeError, match="changed in place"):
        in_ram.train()


@dataclasses.dataclass
class CropSpec:
    size: int = 64


@dataclasses.dataclass(frozen=True, slots=True)
class FrozenSpec:
    sizes: list[int] = dataclasses.field(default_factory=lambda: [1])


class SubSpec(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    x: int = 1


@dataclasses.dataclass(frozen=True)
class FrozenWithConfig:
    sub: SubSpec = dataclasses.field(default_factory=SubSpec)


class HoldsFrozen(pydantic.BaseModel):
    """Nothing else that can change in place."""

    holder: FrozenWithConfig = FrozenWithConfig()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def train(self) -> int:
        return self.holder.sub.x


class WithDataclasses(pydantic.BaseModel):
    crop: CropSpec = CropSpec()
    frozen: FrozenSpec = FrozenSpec()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def train(self) -> str:
        return f"{self.crop.size} {self.frozen.sizes}"


def test_a_dataclass_changed_in_place_after_its_uid_is_not_read(tmp_path: Path) -> None:
    """A dataclass field changed in place after a cached call: the next call read the
    result of the old values (a dataclass was not taken for something that can change)."""
    exp = WithDataclasses(crop=CropSpec(32), infra={"folder": tmp_path})
    assert exp.train() == "32 [1]"
    exp.crop.size = 128
    with pytest.raises(RuntimeError, match=r"changed in place.*crop.size: 32 -> 128"):
        exp.train()
    # a frozen dataclass (with slots) holding a list: the list can change
    frozen = WithDataclasses(frozen=FrozenSpec([2]), infra={"folder": tmp_path})
    assert frozen.train() == "64 [2]"
    frozen.frozen.sizes.append(3)
    with pytest.raises(RuntimeError, match="changed in place"):
        frozen.train()
    # a frozen dataclass holding a config: that config is frozen with the config (it
    # was not, and its change was caught at the next call only: a review)
    holder = HoldsFrozen(holder=FrozenWithConfig(SubSpec(x=2)), infra={"folder": tmp_path})
    assert holder.train() == 2
    with pytest.raises(RuntimeError, match=r"Cannot set SubSpec.x: the instance was frozen"):
        holder.holder.sub.x = 5
    assert holder.train() == 2
    assert WithDataclasses(crop=CropSpec(128), infra={"folder": tmp_path}).train() == "128 [1]"


@dataclasses.dataclass(frozen=True)
class FrozenAug:
    p: float = 0.5


@dataclasses.dataclass(frozen=True, slots=True)
class SlottedAug:
    p: float = 0.5
    inner: FrozenAug = FrozenAug()


@dataclasses.dataclass(frozen=True)
class RunState:
    calls: int = 0


class HoldsFrozenScalars(pydantic.BaseModel):
    """Frozen dataclasses of scalars only: nothing that can change in place, but for
    object.__setattr__."""

    model_config = pydantic.ConfigDict(extra="forbid")
    aug: FrozenAug = FrozenAug()
    slotted: SlottedAug = SlottedAug()
    augs: tuple[FrozenAug, ...] = ()
    state: RunState = RunState()  # (runtime state, kept out of the uid)
    infra: TaskInfra = TaskInfra(version="1")

    _exclude_from_cls_uid = ("state",)

    @infra.apply
    def train(self) -> str:
        return f"{self.aug.p} {self.slotted.inner.p} {[a.p for a in self.augs]}"


@pytest.mark.parametrize("keep_in_ram", (True, False))
def test_a_frozen_dataclass_changed_by_object_setattr_is_not_read(
    tmp_path: Path, keep_in_ram: bool
) -> None:
    """object.__setattr__ bypasses a frozen dataclass's refusal: after a cached call, the
    next call read the result of the old values (a frozen dataclass holding only
    scalars was taken for something that cannot change)."""
    infra = {"folder": tmp_path, "keep_in_ram": keep_in_ram}
    changes: list[tp.Callable[[HoldsFrozenScalars], None]] = [
        lambda c: object.__setattr__(c.aug, "p", 0.9),
        lambda c: object.__setattr__(c.slotted, "p", 0.9),
        lambda c: object.__setattr__(c.slotted.inner, "p", 0.9),
        lambda c: object.__setattr__(c.augs[0], "p", 0.9),
    ]
    for change in changes:
        fresh = {"aug": FrozenAug(), "slotted": SlottedAug(inner=FrozenAug())}
        config = HoldsFrozenScalars(augs=(FrozenAug(0.2),), infra=infra, **fresh)
        assert config.train() == "0.5 0.5 [0.2]"
        assert config.train() == "0.5 0.5 [0.2]"  # (cached)
        change(config)
        with pytest.raises(RuntimeError, match=r"changed in place.*0\.9"):
            config.train()
    # a change out of the uid is no change
    config = HoldsFrozenScalars(state=RunState(), infra=infra)
    assert config.train() == "0.5 0.5 []"
    object.__setattr__(config.state, "calls", 1)
    assert config.train() == "0.5 0.5 []"
    assert config.train() == "0.5 0.5 []"


@dataclasses.dataclass(frozen=True)
class MemoWindow:
    size: int = 4

    def kernel(self) -> tp.Any:
        """A memo in a non-field attribute, as frozen dataclasses often keep one."""
        np = pytest.importorskip("numpy")
        object.__setattr__(self, "_kernel", np.hanning(self.size))
        return self._kernel


class HoldsMemoWindow(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    win: MemoWindow = MemoWindow()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def train(self) -> int:
        return self.win.size


def test_a_frozen_dataclass_memo_does_not_break_a_cached_read(tmp_path: Path) -> None:
    """A cached read compared the whole __dict__ of a frozen dataclass with `!=`: a memo
    holding an array, replaced by an equal new one, raised "The truth value of an array
    ... is ambiguous". Only the fields count (told by identity), as in the uid."""
    config = HoldsMemoWindow(win=MemoWindow(size=6), infra={"folder": tmp_path})
    assert config.train() == 6
    assert config.train() == 6
    config.win.kernel()
    assert config.train() == 6
    config.win.kernel()  # (a new, equal array)
    assert config.train() == 6
    object.__setattr__(config.win, "size", 8)
    with pytest.raises(RuntimeError, match="changed in place"):
        config.train()


@dataclasses.dataclass
class Smoother:
    width: int = 3
    # computed by the class itself: not config (pydantic ignores them in its input too)
    weights: list[float] = dataclasses.field(init=False)
    seen: list[int] = dataclasses.field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.weights = [1 / self.width] * self.width


@dataclasses.dataclass(frozen=True)
class Window:
    size: int = 4
    kernel: tp.Any = dataclasses.field(init=False, default=None, repr=False)

    def get(self) -> tp.Any:
        if self.kernel is None:  # (a lazy memo)
            np = pytest.importorskip("numpy")
            object.__setattr__(self, "kernel", np.hanning(self.size))
        return self.kernel


class HoldsMemos(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    smoother: Smoother = Smoother()
    window: Window = Window()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def train(self) -> int:
        CALLS.append(("memos", self.smoother.width))
        self.smoother.seen.append(len(self.smoother.seen))
        return self.smoother.width + len(self.window.get())


def test_init_false_dataclass_fields_are_not_config(tmp_path: Path) -> None:
    """A dataclass field(init=False) that the class fills itself (a memo, in __post_init__
    or lazily) counted as config: filled since the uid, a cached read raised "changed in
    place" (an array there: "Cannot export ... numpy"), and filled before, it changed the
    uid. Such fields are in no export (uid, config.yaml) and their changes are none; a
    change of a real field is still refused, saying what it was."""
    CALLS.clear()
    folder = {"folder": tmp_path}
    config = HoldsMemos(smoother=Smoother(width=5), window=Window(size=6), infra=folder)
    config.window.get()  # (an array there before the uid)
    uid = config.infra.uid()
    assert uid == HoldsMemos(smoother=Smoother(width=5), window=Window(size=6)).infra.uid()
    assert uid.endswith("/window.size=6,smoother.width=5-7ca434d2"), uid
    assert config.train() == 11 and config.smoother.seen == [0]
    assert config.train() == 11  # (cached, with a memo filled since)
    config.window.get().fill(0)
    config.smoother.seen.append(9)
    assert config.train() == 11
    assert CALLS == [("memos", 5)]
    folder_path = config.infra.uid_folder()
    assert folder_path is not None
    written = ConfDict.from_yaml(folder_path / "config.yaml")
    assert written["smoother"] == {"width": 5} and written["window"] == {"size": 6}
    clone = config.infra.clone_obj({"smoother.width": 2})
    assert clone.smoother.weights == [0.5, 0.5] and clone.smoother.seen == []
    # at their defaults, with their memos filled: still the default
    default = HoldsMemos(infra=folder)
    default.smoother.seen.append(1)
    default.window.get()
    assert default.infra.uid().endswith("/default")
    assert default.train() == 7 and default.train() == 7
    # a real change is still refused: its old value named, not the fields left as they were
    config.smoother.width = 7
    with pytest.raises(RuntimeError, match=r"\(smoother.width: 5 -> 7\)"):
        config.train()
    default.smoother.width = 4
    with pytest.raises(RuntimeError, match=r"\(smoother.width: its default 3 -> 4\)"):
        default.train()


@dataclasses.dataclass(frozen=True)
class LazyWindow:
    size: int = 4
    kernel: tp.Any = None  # (a memo declared as a field of the config)

    def get(self) -> tp.Any:
        np = pytest.importorskip("numpy")
        object.__setattr__(self, "kernel", np.hanning(self.size))
        return self.kernel


class HoldsLazyWindow(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    window: LazyWindow = LazyWindow()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def train(self) -> int:
        return self.window.size


def test_a_memo_in_a_config_field_says_how_to_keep_it_out(tmp_path: Path) -> None:
    """An array memo set in a field of the config after a cached call: the read raised
    "Cannot export HoldsLazyWindow.window into a config ... convert numpy arrays held by
    an Any field", as if the config had been built so. It says the field changed in
    place, and how a memo is kept out of the config."""
    config = HoldsLazyWindow(window=LazyWindow(size=6), infra={"folder": tmp_path})
    assert config.train() == 6
    config.window.get()
    with pytest.raises(RuntimeError, match="changed in place") as info:
        config.train()
    message = str(info.value)
    assert "HoldsLazyWindow.window.kernel now holds a value with no json form" in message
    assert "dataclasses.field(init=False)" in message


@dataclasses.dataclass
class ArrayMemo:
    size: int = 4
    kernel: tp.Any = dataclasses.field(init=False, default=None, repr=False)  # (a memo)

    def get(self) -> tp.Any:
        if self.kernel is None:
            np = pytest.importorskip("numpy")
            self.kernel = np.hanning(self.size)
        return self.kernel


@dataclasses.dataclass(frozen=True)
class FrozenArrayMemo:
    size: int = 4
    kernel: tp.Any = dataclasses.field(init=False, default=None, repr=False)  # (a memo)

    def get(self) -> tp.Any:
        if self.kernel is None:
            np = pytest.importorskip("numpy")
            object.__setattr__(self, "kernel", np.hanning(self.size))
        return self.kernel


class HoldsArrayMemos(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    window: ArrayMemo = ArrayMemo()
    frozen: FrozenArrayMemo = FrozenArrayMemo()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def train(self) -> int:
        return len(self.window.get()) + len(self.frozen.get())


def test_a_dataclass_at_its_default_with_an_array_memo_stays_at_its_default(
    tmp_path: Path,
) -> None:
    """A dataclass equal to its field's default but for an init=False memo holding an
    array (pydantic copies a mutable default: not the default instance itself): the
    export had left the memo out, but the default comparison used ==, which raised on the
    array: the uid said window.size=4 once the memo was filled, and the cached read after
    a call that filled it raised 'changed in place ()', naming nothing."""
    assert HoldsArrayMemos().infra.uid().endswith("/default")
    filled = HoldsArrayMemos()
    filled.window.get()
    assert filled.infra.uid().endswith("/default"), filled.infra.uid()
    given = FrozenArrayMemo()  # (given, equal to the default)
    given.get()
    assert HoldsArrayMemos(frozen=given).infra.uid().endswith("/default")
    config = HoldsArrayMemos(frozen=FrozenArrayMemo(), infra={"folder": tmp_path})
    assert config.train() == 8 and config.train() == 8
    assert config.infra.uid().endswith("/default")


class Layers(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    layers: list[int] = [64]
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def train(self) -> str:
        return repr(self.layers)


def test_a_change_in_place_always_names_what_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change in place is named by comparing the flat exports, a key left out at its
    default taken at its default's value: when that found no difference (the exports
    differing only by what the default pruning left out, as with a dataclass whose
    default comparison failed) the error said 'changed in place ()'. It then names the
    keys the exports differ by (here the default's value is made to look like the new one)."""
    from exca.infra import base

    config = Layers(infra={"folder": tmp_path})
    assert config.train() == "[64]"
    config.layers.append(1)
    monkeypatch.setattr(base, "_default_at", lambda owner, key, before: [64, 1])
    with pytest.raises(RuntimeError, match=r"\(layers: its default -> \[64, 1\]\)"):
        config.train()


class _FloatField:
    """A descriptor-typed dataclass field (as in the dataclasses docs): each read gives a
    new float object."""

    def __init__(self, *, default: float) -> None:
        self._default = default

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = "_" + name

    def __get__(self, obj: tp.Any, kind: tp.Any = None) -> float:
        if obj is None:
            return self._default
        return float(getattr(obj, self._name, self._default)) * 1.0

    def __set__(self, obj: tp.Any, value: float) -> None:
        object.__setattr__(obj, self._name, float(value))


@dataclasses.dataclass(frozen=True)
class Gain:
    level: float = _FloatField(default=1.0)  # type: ignore[assignment]


class HoldsGain(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    gain: Gain = Gain()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def train(self) -> float:
        return self.gain.level


@pytest.mark.parametrize("keep_in_ram", (True, False))
def test_a_descriptor_field_does_not_export_the_config_at_each_cached_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_in_ram: bool
) -> None:
    """A frozen dataclass whose field is a descriptor giving a new object at each read:
    its fields, told by identity, always looked changed, so every cached read exported
    the config again to compare it (~17x slower). Such a field is compared by value."""
    from exca.infra import base

    config = HoldsGain(gain=Gain(level=2.0), infra={"folder": tmp_path, "keep_in_ram": keep_in_ram})
    assert config.train() == 2.0 and config.train() == 2.0
    exports: list[int] = []
    export = base.identity.export_with_keys

    def counted(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        exports.append(1)
        return export(*args, **kwargs)

    monkeypatch.setattr(base.identity, "export_with_keys", counted)
    for _ in range(3):
        assert config.train() == 2.0
    assert not exports
    # a change through the descriptor is still seen
    object.__setattr__(config.gain, "level", 3.0)
    with pytest.raises(RuntimeError, match=r"gain.level: 2.0 -> 3.0"):
        config.train()


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str = "a"
    scale: float = dataclasses.field(default=1.0, compare=False)  # (dumped, not in ==)


class _SpecField:
    """A descriptor-typed field that stores the value given and returns it."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = "_" + name

    def __get__(self, obj: tp.Any, kind: tp.Any = None) -> Spec:
        return Spec() if obj is None else getattr(obj, self._name)

    def __set__(self, obj: tp.Any, value: Spec) -> None:
        object.__setattr__(obj, self._name, value)


@dataclasses.dataclass(frozen=True, slots=True)
class SlotOuter:
    spec: Spec = Spec()


@dataclasses.dataclass(frozen=True)
class DescribedOuter:
    spec: Spec = _SpecField()  # type: ignore[assignment]


class HoldsSpecs(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    slot: SlotOuter = SlotOuter()
    described: DescribedOuter = DescribedOuter()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def train(self) -> float:
        return self.slot.spec.scale + 10 * self.described.spec.scale


@pytest.mark.parametrize("where", ("slot", "described"))
def test_a_change_of_a_field_its_class_does_not_compare_is_caught(
    tmp_path: Path, where: str
) -> None:
    """A frozen dataclass field set in place (object.__setattr__) to a value equal by
    ``==`` (its class compares without a field the uid holds): the slots of a
    ``slots=True`` dataclass (member descriptors) and a descriptor field were compared by
    ==, so the change went unseen and the cached read gave the old values' result. Slots
    are told by identity; a descriptor field is compared field by field."""
    config = HoldsSpecs(
        slot=SlotOuter(Spec("b", 2.0)),
        described=DescribedOuter(Spec("b", 2.0)),
        infra={"folder": tmp_path},
    )
    assert config.train() == 22.0 and config.train() == 22.0
    object.__setattr__(getattr(config, where), "spec", Spec("b", 3.0))
    with pytest.raises(RuntimeError, match=rf"{where}.spec.scale: 2.0 -> 3.0"):
        config.train()


class LayeredInputs(pydantic.BaseModel):
    layers: list[int] = [64]
    pair: tuple[list[int], int] = ([0], 0)
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def train(self, x: int) -> str:
        return f"{self.layers} {x}"


class Big(pydantic.BaseModel):
    size: int = 100_000
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def make(self) -> tp.Any:
        import numpy as np

        CALLS.append(("big", self.size))
        return np.arange(self.size)


def test_clear_job_of_a_folder_holding_another_config_removes_nothing(tmp_path: Path) -> None:
    """Two configs whose uids collide (uid.yaml is the other's): calls raise "Inconsistent
    uid config", clear_job() removed the other config's result (a probe)."""
    Task(param=2, infra={"folder": tmp_path}).process()
    folder = Task(param=2, infra={"folder": tmp_path}).infra.uid_folder()
    assert folder is not None
    (folder / "uid.yaml").write_text("param: 99\n")  # (as another config wrote it)
    with pytest.raises(RuntimeError, match="Inconsistent uid config"):
        Task(param=2, infra={"folder": tmp_path}).infra.clear_job()
    (folder / "uid.yaml").write_text("param: [unclosed\n")  # (unreadable: no other config's)
    Task(param=2, infra={"folder": tmp_path}).infra.clear_job()
    assert Task(param=2, infra={"folder": tmp_path}).process() == 20
    (folder / "uid.yaml").write_text("param: 2\n")
    assert Task(param=2, infra={"folder": tmp_path}).infra.status() == "completed"
    before = _count("task", 2)
    assert Task(param=2, infra={"folder": tmp_path}).process() == 20
    assert _count("task", 2) == before  # (still cached)
    Task(param=2, infra={"folder": tmp_path}).infra.clear_job()
    assert Task(param=2, infra={"folder": tmp_path}).infra.status() == "not submitted"


class _PrivateInfra(pydantic.BaseModel):
    param: int = 1
    _infra: TaskInfra = TaskInfra(version="1")

    @_infra.apply
    def process(self) -> int:
        CALLS.append(("private", self.param))
        return self.param * 10


def test_deep_model_copy_with_updates_keeps_a_working_infra(tmp_path: Path) -> None:
    """model_copy(deep=True, update=...): pydantic deep-copies the fields one by one after
    the copy, which left the infra unattached (uid(), status(), job() raised "not
    attached"); a public or a private infra alike."""
    task = Task(param=2, infra={"folder": tmp_path})
    assert task.process() == 20
    for deep, param in ((False, 3), (True, 4)):
        copied = task.model_copy(deep=deep, update={"param": param})
        assert copied.infra.uid() == Task(param=param).infra.uid()
        assert copied.infra.status() == "not submitted"
        assert copied.infra.job().result() == 10 * param
        assert copied.infra.status() == "completed" and task.infra.status() == "completed"
        assert copied.infra.clone_obj(param=7).process() == 70
    assert task.infra.uid() == Task(param=2).infra.uid() and task.process() == 20
    given = task.model_copy(update={"infra": {"folder": tmp_path}})  # (no validation)
    with pytest.raises(TypeError, match=r"Task.process needs its infra, but Task.infra is \{"):
        given.process()  # (it raised "'dict' object has no attribute '_runtime'"; a review)
    private = _PrivateInfra(param=2)
    private._infra.folder = tmp_path
    copied_private = private.model_copy(deep=True, update={"param": 5})
    assert copied_private._infra.uid() == _PrivateInfra(param=5)._infra.uid()
    assert copied_private.process() == 50 and copied_private._infra.folder == tmp_path
    assert copied_private._infra.uid_folder() == tmp_path / _PrivateInfra(param=5)._infra.uid()


def test_a_result_whose_file_was_removed_by_hand(tmp_path: Path) -> None:
    """Its payload file removed (data/ deleted by hand): a call says what is missing and
    what to do, status() says failed (it said completed); mode retry computes it again (as
    force does)."""
    infra = {"folder": tmp_path}
    assert Big(infra=infra).make().sum() == 4999950000
    folder = Big(infra=infra).infra.uid_folder()
    assert folder is not None
    removed = list((folder / "data").iterdir())
    assert removed and Big(infra=infra).infra.status() == "completed"
    for path in removed:
        path.unlink()
    assert Big(infra=infra).infra.status() == "failed"
    with pytest.raises(FileNotFoundError, match=r"cannot be read: its file .* is missing") as info:
        Big(infra=infra).make()
    assert "mode='retry'" in str(info.value)
    assert _count("big") == 1
    assert Big(infra={**infra, "mode": "retry"}).make().sum() == 4999950000
    assert _count("big") == 2
    assert Big(infra=infra).make().sum() == 4999950000  # (cached again)
    assert _count("big") == 2 and Big(infra=infra).infra.status() == "completed"


def test_a_result_whose_file_was_truncated_by_hand(tmp_path: Path) -> None:
    """Its payload file cut short (a copy that stopped half-way): a call says what to do;
    mode retry computes it again."""
    infra = {"folder": tmp_path}
    before = _count("big")  # (other tests compute Big too)
    assert Big(infra=infra).make().sum() == 4999950000
    folder = Big(infra=infra).infra.uid_folder()
    assert folder is not None
    for path in (folder / "data").iterdir():
        with path.open("r+b") as handle:
            handle.truncate(path.stat().st_size // 2)
    assert Big(infra=infra).infra.status() == "failed"
    with pytest.raises(pickle.UnpicklingError) as info:
        Big(infra=infra).make()
    assert "mode='retry' or mode='force' computes it again" in "".join(info.value.__notes__)
    assert _count("big") == before + 1
    assert Big(infra={**infra, "mode": "retry"}).make().sum() == 4999950000
    assert Big(infra=infra).make().sum() == 4999950000  # (cached again)
    assert _count("big") == before + 2


def _overwrite(path: Path, at: int, data: bytes) -> None:
    """Bytes of a file replaced in place, its size unchanged (bit rot, a partial copy
    over it): a stat does not tell."""
    content = bytearray(path.read_bytes())
    content[at : at + len(data)] = data
    path.write_bytes(bytes(content))


def test_a_result_overwritten_in_place_by_hand(tmp_path: Path) -> None:
    """Bytes of its payload file overwritten, its size unchanged: a call raised pickle's
    bare "invalid load key" and mode retry did not compute it again (a probe; the docs
    said it did). The error says what to do, and mode retry computes it again. Bytes
    that still decode as a pickle but fail otherwise: the note says mode='force'."""
    infra = {"folder": tmp_path}
    before = _count("big")
    assert Big(infra=infra).make().sum() == 4999950000
    folder = Big(infra=infra).infra.uid_folder()
    assert folder is not None
    (payload,) = list((folder / "data").iterdir())
    _overwrite(payload, 2, b"\xff" * 64)  # (past the protocol: in its opcodes)
    assert Big(infra=infra).infra.status() == "completed"  # (a stat: found on reading)
    with pytest.raises(pickle.UnpicklingError, match="invalid load key") as info:
        Big(infra=infra).make()
    assert "mode='retry' or mode='force' computes it again" in "".join(info.value.__notes__)
    assert _count("big") == before + 1
    assert Big(infra={**infra, "mode": "retry"}).make().sum() == 4999950000
    assert Big(infra=infra).make().sum() == 4999950000  # (cached again)
    assert _count("big") == before + 2
    # a string opcode whose bytes are not utf-8: not told from a value's own error
    (payload,) = list((folder / "data").iterdir())
    _overwrite(payload, 0, b"\x80\x04X\x02\x00\x00\x00\xff\xfe.")
    for mode in ("cached", "retry"):
        with pytest.raises(UnicodeDecodeError) as info:
            Big(infra={**infra, "mode": mode}).make()
        notes = "".join(info.value.__notes__)
        assert "if its file was changed outside exca, mode='force' computes it again" in notes
    assert _count("big") == before + 2


def _unloadable() -> tp.Any:
    raise EOFError("the resource this value reopens is gone")


class Unloadable:
    """A value whose unpickling raises (as one reopening a resource that is gone)."""

    def __reduce__(self) -> tp.Any:
        return (_unloadable, ())


class MakesUnloadable(pydantic.BaseModel):
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def make(self) -> Unloadable:
        CALLS.append(("unloadable", 0))
        return Unloadable()


def test_a_result_whose_own_unpickling_fails_is_not_taken_for_a_damaged_file(
    tmp_path: Path,
) -> None:
    """mode retry computes again a result whose file is damaged, not one whose value
    raises as it loads: its error is raised, the result stays."""
    before = _count("unloadable")
    for mode in ("cached", "retry", "retry"):
        with pytest.raises(EOFError, match="resource this value reopens") as info:
            MakesUnloadable(infra={"folder": tmp_path, "mode": mode}).make()
        assert "damaged" not in "".join(getattr(info.value, "__notes__", []))
    assert _count("unloadable") == before + 1


def _refuses() -> tp.Any:
    raise pickle.UnpicklingError("this build cannot read a v2 state")


class RefusesToLoad:
    """A value whose own unpickling raises pickle.UnpicklingError (a version check, as
    libraries do)."""

    def __reduce__(self) -> tp.Any:
        return (_refuses, ())


class OtherState:
    """A value whose pickled state the reader's class cannot take: pickle raises
    UnpicklingError('state is not a dictionary'), as when the reader's code differs."""

    def __reduce__(self) -> tp.Any:
        return (OtherState, (), ("v2", 1))


class MakesRefused(pydantic.BaseModel):
    kind: str
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def make(self) -> tp.Any:
        CALLS.append((f"refused-{self.kind}", 0))
        return RefusesToLoad() if self.kind == "reduce" else OtherState()


@pytest.mark.parametrize("kind", ["reduce", "state"])
def test_an_unpickling_error_of_well_formed_bytes_is_not_damage(tmp_path: Path, kind: str) -> None:
    """Every pickle.UnpicklingError counted as a damaged payload: a good result whose own
    unpickling code raised it (or whose state the reader's class could not take) was
    computed again by each call in mode retry. Only a stream that no longer parses is
    damaged: the error is raised, the result stays."""
    before = _count(f"refused-{kind}")
    for mode in ("cached", "retry", "retry"):
        with pytest.raises(pickle.UnpicklingError) as info:
            MakesRefused(kind=kind, infra={"folder": tmp_path, "mode": mode}).make()
        assert not is_damaged_payload(info.value)
        assert "if its file was changed outside exca" in "".join(info.value.__notes__)
    assert _count(f"refused-{kind}") == before + 1


def test_load_pickle_marks_only_a_malformed_stream() -> None:
    """A failed unpickling is damage only if its bytes do not parse as pickle opcodes."""
    good = pickle.dumps(RefusesToLoad())
    with pytest.raises(pickle.UnpicklingError) as info:
        load_pickle(good)
    assert not is_damaged_payload(info.value)
    broken = good[:2] + b"\xff" * 8 + good[10:]
    with pytest.raises(pickle.UnpicklingError) as info:
        load_pickle(broken)
    assert is_damaged_payload(info.value)
    # a byte turned into another valid opcode, a MARK into None (genops alone read it as
    # fine; a review): the same size, "could not find MARK"
    listed = pickle.dumps(list(range(2000)), protocol=5)
    mark = listed.index(b"]\x94(") + 2
    with pytest.raises(pickle.UnpicklingError, match="MARK") as info:
        load_pickle(listed[:mark] + b"N" + listed[mark + 1 :])
    assert is_damaged_payload(info.value)


YAML_FILES = ["config.yaml", "full-uid.yaml", "uid.yaml"]


@pytest.mark.parametrize("kind", ["task", "map"])
@pytest.mark.parametrize("via", ["call", "node"])
def test_yaml_files_removed_by_hand_are_written_again_by_a_hit(
    tmp_path: Path, kind: str, via: str
) -> None:
    """Results whose yaml files were removed (by hand, or with their folder while a worker
    wrote into it) are reused, and a hit (not read-only) writes the files again: exca list,
    inspect and iter_cached find configs through them. A call, or a node's result()."""
    from exca.infra import base as infra_base

    def call(mode: str = "cached") -> tp.Any:
        infra = {"folder": tmp_path, "mode": mode}
        if kind == "task":
            obj: tp.Any = Task(param=4, infra=infra)
            node = obj.process.node()
            return obj.infra.uid_folder(), obj.process() if via == "call" else node.result()
        obj = LayeredMap(scale=[2], infra=infra)
        node = obj.apply.node([1, 2])
        found = list(obj.apply([1, 2])) if via == "call" else list(node.result())
        return obj.infra.uid_folder(), found

    folder, expected = call()
    assert sorted(f.name for f in folder.glob("*.yaml")) == YAML_FILES
    texts = {f.name: f.read_text() for f in folder.glob("*.yaml")}
    for name in YAML_FILES:
        (folder / name).unlink()
    computed = _count("task")
    infra_base._DEFAULTS_CHECKED.clear()
    # (plans and status() only read)
    if kind == "task":
        task = Task(param=4, infra={"folder": tmp_path})
        assert task.infra.status() == "completed"
        node = task.process.node()
    else:
        node = LayeredMap(scale=[2], infra={"folder": tmp_path}).apply.node([1, 2])
    assert [e.status for e in exca.graph.plan(node).entries] == ["cached"]
    assert sorted(f.name for f in folder.glob("*.yaml")) == []
    for mode in ("read-only", "cached"):
        infra_base._DEFAULTS_CHECKED.clear()  # (as in a new process)
        assert call(mode) == (folder, expected)
        written = sorted(f.name for f in folder.glob("*.yaml"))
        assert written == ([] if mode == "read-only" else YAML_FILES)
    assert {f.name: f.read_text() for f in folder.glob("*.yaml")} == texts
    assert _count("task") == computed
    owner = (
        Task(infra={"folder": tmp_path})
        if kind == "task"
        else LayeredMap(infra={"folder": tmp_path})
    )
    assert len(list(owner.infra.iter_cached())) == 1


@pytest.mark.parametrize("kind", ["task", "map"])
@pytest.mark.parametrize("via", ["call", "node"])
@pytest.mark.parametrize("name", YAML_FILES)
def test_one_yaml_file_removed_by_hand_is_written_again_by_a_hit(
    tmp_path: Path, kind: str, via: str, name: str
) -> None:
    """uid.yaml (or config.yaml) removed alone was never written back by a hit, and
    full-uid.yaml only by the first hit of a process (the one that reads it): exca list
    noted the folder as odd, iter_cached skipped it (a probe). A hit now writes back any of
    them, from the listing its index read makes anyway (no stat added to a hit)."""

    def call(mode: str = "cached") -> tp.Any:
        infra = {"folder": tmp_path, "mode": mode}
        if kind == "task":
            obj: tp.Any = Task(param=5, infra=infra)
            node = obj.process.node()
            return obj.process() if via == "call" else node.result()
        obj = LayeredMap(scale=[3], infra=infra)
        node = obj.apply.node([1, 2])
        return list(obj.apply([1, 2])) if via == "call" else list(node.result())

    expected = call()  # (this process has checked the folder: no yaml file is read again)
    owner: tp.Any = Task(param=5) if kind == "task" else LayeredMap(scale=[3])
    folder = tmp_path / owner.infra.clone_obj(infra={"folder": tmp_path}).infra.uid()
    text = (folder / name).read_text()
    (folder / name).unlink()
    computed = _count("task")
    assert call("read-only") == expected  # (read-only writes nothing)
    assert not (folder / name).exists()
    assert call() == expected
    assert (folder / name).read_text() == text
    assert _count("task") == computed


@pytest.mark.parametrize("name", [*YAML_FILES, "inputs.yaml"])
def test_yaml_files_removed_by_hand_are_written_again_by_a_hit_with_inputs(
    tmp_path: Path, name: str
) -> None:
    """A task with inputs: a hit wrote back a removed full-uid.yaml of its config folder
    (and its inputs.yaml), not its uid.yaml nor config.yaml, as the docs said (a review)."""

    def call() -> str:
        return LayeredInputs(infra={"folder": tmp_path}).train(x=3)

    assert call() == "[64] 3"
    folder = LayeredInputs(infra={"folder": tmp_path}).infra.uid_folder()
    assert folder is not None
    (sub,) = folder.glob("inputs-*")
    path = (sub if name == "inputs.yaml" else folder) / name
    text = path.read_text()
    path.unlink()
    assert call() == "[64] 3"
    assert path.read_text() == text


def test_a_hit_whose_yaml_files_cannot_be_written_back_returns_its_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Writing back a removed yaml file on a hit: a uid.yaml edited to another config
    made the hit raise 'Inconsistent uid config'; a cache that cannot be written was
    tried again at every hit (a review). The hit returns its result and says once why the
    files were not written; it does not try again."""
    from exca.infra import uidfolder

    obj = Task(param=7, infra={"folder": tmp_path})
    assert obj.process() == 70
    folder = obj.infra.uid_folder()
    assert folder is not None
    (folder / "uid.yaml").write_text("param: 8\n")
    (folder / "config.yaml").unlink()
    with caplog.at_level(logging.WARNING, logger="exca"):
        assert Task(param=7, infra={"folder": tmp_path}).process() == 70
        assert Task(param=7, infra={"folder": tmp_path}).process() == 70
    assert caplog.text.count("Could not restore the yaml files") == 1
    assert "Inconsistent uid config" in caplog.text
    # a cache this process cannot write into: one attempt
    other = Task(param=9, infra={"folder": tmp_path})
    assert other.process() == 90
    other_folder = other.infra.uid_folder()
    assert other_folder is not None
    (other_folder / "config.yaml").unlink()
    writes: list[str] = []

    def denied(path: tp.Any, text: str, permissions: int | None) -> None:
        writes.append(str(path))
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(uidfolder, "write_atomic", denied)
    for _ in range(3):
        assert Task(param=9, infra={"folder": tmp_path}).process() == 90
    assert len(writes) == 1


def test_a_hit_writing_back_yaml_files_does_not_make_a_removed_folder_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder removed (exca clean) while a hit wrote back its removed config.yaml was
    made again, holding the yaml files only (a review): the files are written into the
    folder only if it is there."""
    from exca.infra import base as infra_base

    obj = Task(param=11, infra={"folder": tmp_path})
    assert obj.process() == 110
    folder = obj.infra.uid_folder()
    assert folder is not None
    (folder / "config.yaml").unlink()
    prepare = infra_base.BaseInfra._prepare_folder

    def cleaned_first(self: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> None:
        exca.ops.clean.remove_nodes(folder).execute()  # (another process, right then)
        prepare(self, *args, **kwargs)

    monkeypatch.setattr(infra_base.BaseInfra, "_prepare_folder", cleaned_first)
    assert Task(param=11, infra={"folder": tmp_path}).process() == 110
    assert not folder.exists()


def test_yaml_files_written_meanwhile_are_not_told_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Threads starting a map on a new folder together: one looked for full-uid.yaml
    while another was writing it, then saw that one's results and warned "Restored the
    missing yaml files" (nobody removed them; a probe). Simulated: the look finds none."""
    from exca.infra import base as infra_base
    from exca.infra import uidfolder

    assert list(LayeredMap(infra={"folder": tmp_path}).apply([1, 2])) == [1, 2]
    infra_base._DEFAULTS_CHECKED.clear()  # (as in another thread's first look)
    verify = uidfolder.verify_defaults
    looks: list[str] = []

    def written_after_the_look(folder: str, *args: tp.Any, **kwargs: tp.Any) -> bool | None:
        looks.append(folder)
        return False if len(looks) == 1 else verify(folder, *args, **kwargs)

    monkeypatch.setattr(uidfolder, "verify_defaults", written_after_the_look)
    with caplog.at_level(logging.WARNING, logger="exca"):
        assert list(LayeredMap(infra={"folder": tmp_path}).apply([1, 2])) == [1, 2]
    assert looks and "Restored" not in caplog.text
    # removed for real: told
    infra_base._DEFAULTS_CHECKED.clear()
    folder = LayeredMap(infra={"folder": tmp_path}).infra.uid_folder()
    (folder / "full-uid.yaml").unlink()
    with caplog.at_level(logging.WARNING, logger="exca"):
        assert list(LayeredMap(infra={"folder": tmp_path}).apply([1, 2])) == [1, 2]
    assert "Restored the missing yaml files" in caplog.text


def test_a_new_map_folder_without_items_is_not_told_restored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Threads starting a map on a new folder together: one found the folder that another
    had just made, before that one wrote its yaml files, and warned "Restored the missing
    yaml files" (nobody removed them; a probe, 3 runs in 5 with 4 threads). Simulated: the
    folder is there, empty. A folder holding items whose yaml files are gone is told."""
    from exca.infra import base as infra_base

    obj = LayeredMap(scale=[3], infra={"folder": tmp_path})
    folder = obj.infra.uid_folder()
    assert folder is not None
    folder.mkdir(parents=True)  # (made by another thread, which writes the yaml files next)
    with caplog.at_level(logging.WARNING, logger="exca"):
        assert list(obj.apply([1, 2])) == [3, 6]
    assert "Restored" not in caplog.text
    assert {"uid.yaml", "full-uid.yaml", "config.yaml"} <= set(os.listdir(folder))
    # its items there, its yaml files removed by hand: written again, and told
    infra_base._DEFAULTS_CHECKED.clear()
    (folder / "full-uid.yaml").unlink()
    with caplog.at_level(logging.WARNING, logger="exca"):
        assert list(LayeredMap(scale=[3], infra={"folder": tmp_path}).apply([1, 2])) == [3, 6]
    assert "Restored the missing yaml files" in caplog.text
    assert (folder / "full-uid.yaml").exists()
    # iter_cached still lists a map folder whatever it holds
    assert [o.scale for o in obj.infra.iter_cached()] == [[3]]


class Scaled(pydantic.BaseModel):
    """A task with an input, and a sub-config (whose class version is not in its uid)."""

    model_config = pydantic.ConfigDict(extra="forbid")
    task: Task = Task()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def scale(self, value: int) -> int:
        CALLS.append(("scaled", value))
        return value * 2


class Held(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    task: Task = Task()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def total(self) -> int:
        CALLS.append(("held", self.task.param))
        if self.task.fail:
            raise KeyError("failing on purpose")
        return self.task.param * 10


class HeldMap(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    task: Task = Task()
    infra: MapInfra = MapInfra(version="1")

    @infra.apply(item_uid=str)
    def apply(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            yield item * self.task.param


def test_yaml_files_of_a_call_with_inputs_are_written_again(tmp_path: Path) -> None:
    """A call with inputs keeps its result in a sub-folder (inputs-<digest>): the config
    folder's yaml files (and its inputs.yaml) removed, e.g. by a clean while a worker wrote
    the result, were never written again: exca list missed it for good (a probe)."""
    from exca.infra import base as infra_base

    obj = Scaled(infra={"folder": tmp_path})
    upstream = Task(param=3, infra={"folder": tmp_path})
    assert obj.scale.node(upstream.process.node()).result() == 60
    folder = obj.infra.uid_folder()
    assert folder is not None
    (sub,) = folder.glob("inputs-*")
    texts = {f: f.read_text() for f in [*folder.glob("*.yaml"), *sub.glob("*.yaml")]}
    assert sorted(f.name for f in texts) == sorted([*YAML_FILES, "inputs.yaml"])
    for path in texts:
        path.unlink()
    infra_base._DEFAULTS_CHECKED.clear()  # (as in a new process)
    computed = _count("scaled")
    again = Scaled(infra={"folder": tmp_path})
    assert again.scale.node(Task(param=3, infra={"folder": tmp_path}).process.node()).result() == 60
    assert _count("scaled") == computed
    assert {f: f.read_text() for f in texts if f.exists()} == texts
    found = [(i.step, i.status) for i in exca.ops.inspect(tmp_path) if "Scaled" in i.step]
    assert found == [(f"{MODULE}.Scaled.scale,1", "success")]


def _held_map_as_computed_with_task_version_0(root: Path, items: list[int]) -> Path:
    """The folder of a HeldMap whose ``items`` were computed when the held Task class was
    at version 0."""
    mapped = HeldMap(infra={"folder": root})
    assert list(mapped.apply(items)) == items
    folder = mapped.infra.uid_folder()
    assert folder is not None
    _as_written_with_task_version_0(folder)
    return folder


def _as_written_with_task_version_0(folder: Path) -> None:
    """Rewrite the folder's full-uid.yaml as written when the class of Task (a sub-config
    of the folder's config) was at version "0"."""
    full = folder / "full-uid.yaml"
    full.write_text(full.read_text().replace("  infra.version: '1'", "  infra.version: '0'"))


class Totalled(pydantic.BaseModel):
    """Held, without counting its calls in CALLS (which later tests count)."""

    model_config = pydantic.ConfigDict(extra="forbid")
    task: Task = Task()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def total(self) -> int:
        return self.task.param * 10


def test_the_sub_config_version_warning_counts_the_steps_old_results_and_names_the_clean(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ "Reusing the cache ..., computed when sub-configs had other class versions" said
    nothing of how many results of the step are of those versions, nor how to remove them:
    a user could not tell whether bumping the version then cleaning was worth it. It
    counts them and gives the exact `exca clean` command, once per step in a process: a
    sweep reusing 1000 configs of a step said it 1000 times."""
    from exca.storage import saidonce

    held = [Totalled(task=Task(param=p), infra={"folder": tmp_path}) for p in (1, 2, 3, 4)]
    assert [h.total() for h in held] == [10, 20, 30, 40]
    for h in held[:3]:  # (three of the four computed when Task's class was at version 0)
        _as_written_with_task_version_0(tp.cast(Path, h.infra.uid_folder()))
    saidonce.forget()  # (as in a new process)
    with caplog.at_level("WARNING", logger="exca"):
        sweep = [Totalled(task=Task(param=p), infra={"folder": tmp_path}) for p in (1, 2, 3, 4)]
        assert [h.total() for h in sweep] == [10, 20, 30, 40]
    step = tp.cast(Path, held[0].infra.uid_folder()).parent
    assert caplog.text.count("other class versions") == 1, caplog.text
    assert f"3 of the 4 config(s) of {step.name} were computed with other versions" in caplog.text
    assert f"`exca clean {tmp_path} versions --step {step.name}`" in caplog.text
    caplog.clear()
    saidonce.forget()  # (a new process: said again)
    with caplog.at_level("WARNING", logger="exca"):
        assert Totalled(task=Task(param=2), infra={"folder": tmp_path}).total() == 20
    assert caplog.text.count("other class versions") == 1, caplog.text


def test_sub_config_version_warning_only_where_a_result_is_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sub-config's class version changed since full-uid.yaml was written: reusing a
    result warns (its version is not in this config's uid). Computing one does not (a
    call with new inputs warned "Reusing the cache" while it computed); a stored result
    records the versions it ran with (the warning came back on every run), its own when
    in a sub-folder: the other sub-folders' results, of older versions, still warn."""
    from exca.storage import saidonce

    def older_version(folder: Path) -> None:  # (as written by the class at version "0")
        _as_written_with_task_version_0(folder)
        saidonce.forget()  # (as in a new process)

    def warned() -> bool:
        found = "other class versions" in caplog.text
        caplog.clear()
        return found

    def scaled(param: int, mode: str = "cached", obj: tp.Any = None) -> int:
        obj = obj or Scaled(infra={"folder": tmp_path, "mode": mode})
        return obj.scale.node(Task(param=param, infra={"folder": tmp_path}).process.node()).result()

    def new_process() -> None:
        saidonce.forget()

    folder = Scaled(infra={"folder": tmp_path}).infra.uid_folder()
    assert folder is not None
    with caplog.at_level("WARNING", logger="exca"):
        assert scaled(1) == 20
        older_version(folder)
        assert scaled(1) == 20 and warned()  # reused: told
        new_process()
        assert scaled(2) == 40 and not warned()  # computed (new inputs): nothing to tell
        new_process()
        assert scaled(2) == 40 and not warned()  # computed with today's versions
        new_process()
        assert scaled(1) == 20 and warned()  # still of the older version: told
        # one instance (one process): a new input computed, then an old one reused
        new_process()
        instance = Scaled(infra={"folder": tmp_path})
        assert scaled(3, obj=instance) == 60 and not warned()
        assert scaled(1, obj=instance) == 20 and warned()
        new_process()
        with pytest.raises(RuntimeError):
            scaled(6, mode="read-only")
        assert scaled(1, mode="read-only") == 20 and warned()
        assert (folder / "full-uid.yaml").read_text().count("'0'") == 1  # (never renewed)
        # exca list --where reads the record of each result
        listed = {
            version: sorted(
                i.uid.rsplit("/", 1)[-1]
                for i in exca.ops.inspect(tmp_path, where=[f"task.infra.version={version}"])
                if "Scaled" in i.step
            )
            for version in ("0", "1")
        }
        assert [len(listed["0"]), len(listed["1"])] == [1, 2], listed
        # a task without inputs: reused with a warning until computed again
        plain = Held(infra={"folder": tmp_path})
        assert plain.total() == 10
        held_folder = plain.infra.uid_folder()
        assert held_folder is not None
        older_version(held_folder)
        assert Held(infra={"folder": tmp_path}).total() == 10 and warned()
        new_process()
        assert Held(infra={"folder": tmp_path}).infra.uid_folder(create=True) == held_folder
        assert Held(infra={"folder": tmp_path}).total() == 10 and warned()  # (not renewed)
        assert Held(infra={"folder": tmp_path, "mode": "force"}).total() == 10
        new_process()
        warned()
        assert Held(infra={"folder": tmp_path}).total() == 10 and not warned()
        assert _count("held") == 2
        # a cached error retried is computed, not reused: no warning
        failing = Held(task=Task(param=7, fail=True), infra={"folder": tmp_path})
        with pytest.raises(KeyError):
            failing.total()
        failing_folder = failing.infra.uid_folder()
        assert failing_folder is not None
        older_version(failing_folder)
        retried = Held(task=Task(param=7, fail=True), infra={"folder": tmp_path, "mode": "retry"})
        with pytest.raises(KeyError):
            retried.total()
        assert not warned()
        # a map: a call computing new items and reusing others warns (the review of this
        # change: it fell silent when the warning left the folder's preparation)
        mapped = HeldMap(infra={"folder": tmp_path})
        assert list(mapped.apply([1, 2])) == [1, 2]
        map_folder = mapped.infra.uid_folder()
        assert map_folder is not None
        older_version(map_folder)
        assert list(HeldMap(infra={"folder": tmp_path}).apply([1, 4])) == [1, 4] and warned()
        new_process()
        assert list(HeldMap(infra={"folder": tmp_path}).apply([2])) == [2] and warned()
        other = HeldMap(infra={"folder": tmp_path / "fresh"})
        assert list(other.apply([5])) == [5] and not warned()  # (nothing reused)


def test_a_forced_map_does_not_warn_of_reusing_other_sub_config_versions(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A map in mode force computes its items again, reusing none: it warned (twice)
    "Reusing the cache ..., computed when sub-configs had other class versions", as a
    forced task does not. A cached call still warns (item 3, not forced, is of the older
    versions)."""
    from exca.infra import base as infra_base

    _held_map_as_computed_with_task_version_0(tmp_path, [1, 2, 3])
    with caplog.at_level("WARNING", logger="exca"):
        infra_base._DEFAULTS_CHECKED.clear()  # (as in a new process)
        forced = HeldMap(infra={"folder": tmp_path, "mode": "force"})
        assert list(forced.apply([1, 2])) == [1, 2]
        assert "other class versions" not in caplog.text
        infra_base._DEFAULTS_CHECKED.clear()
        assert list(HeldMap(infra={"folder": tmp_path}).apply([1, 2])) == [1, 2]
        assert "other class versions" in caplog.text  # (reused: told)


def test_a_map_stops_warning_of_other_sub_config_versions_once_every_item_is_recomputed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A map's items share one full-uid.yaml, which was never rewritten: reusing its items
    warned "computed when sub-configs had other class versions" for good, even once every
    item was forced again. It is rewritten once each item was computed under today's
    versions (in one call or several); while one is not, the warning stays."""
    from exca.infra import base as infra_base
    from exca.storage import saidonce

    def warned(items: list[int]) -> bool:
        saidonce.forget()  # (as in a new process)
        caplog.clear()
        assert list(HeldMap(infra={"folder": tmp_path}).apply(items)) == items
        return "other class versions" in caplog.text

    def forced(items: list[int]) -> None:
        infra_base._DEFAULTS_CHECKED.clear()
        assert list(HeldMap(infra={"folder": tmp_path, "mode": "force"}).apply(items)) == items

    folder = _held_map_as_computed_with_task_version_0(tmp_path, [1, 2, 3])
    with caplog.at_level("WARNING", logger="exca"):
        forced([1, 2])
        assert warned([1, 2, 3])  # (item 3 is still of version 0)
        assert warned([1])  # (the folder's record is one: it says so of any item)
        assert warned([1, 4])  # (a new item, of today's versions: 3 still is not)
        assert "'0'" in (folder / "full-uid.yaml").read_text()
        forced([3])
        assert not warned([1, 2, 3, 4])
        assert "'0'" not in (folder / "full-uid.yaml").read_text()


def test_plan_tells_a_reuse_under_other_sub_config_versions(tmp_path: Path) -> None:
    """A result computed when a sub-config had another class version is reused (that
    version is not part of the uid): the plan said only "cached" (the warning went to the
    log, once per process); its reason now says what changed, in every plan of the
    process, until the result is computed again."""
    from exca.infra import base as infra_base

    def older_version(folder: Path) -> None:  # (as written by the class at version "0")
        _as_written_with_task_version_0(folder)
        infra_base._DEFAULTS_CHECKED.clear()  # (as in a new process)

    def reasons(*nodes: tp.Any) -> list[str]:
        plan = exca.graph.plan(*nodes)
        return [e.reason for e in plan.entries if e.status == "cached"]

    note = "other sub-config versions (task.infra.version '0' -> '1')"
    plain = Held(infra={"folder": tmp_path})
    assert plain.total() == 10
    assert reasons(plain.total.node()) == ["cached"]
    folder = plain.infra.uid_folder()
    assert folder is not None
    older_version(folder)
    for _ in range(2):  # (the second plan: the defaults check is not done again)
        (reason,) = reasons(Held(infra={"folder": tmp_path}).total.node())
        assert reason.startswith("cached, computed with " + note) and "bump" in reason
    assert Held(infra={"folder": tmp_path, "mode": "force"}).total() == 10
    assert reasons(Held(infra={"folder": tmp_path}).total.node()) == ["cached"]
    # computed again by another process: its record says today's versions (the note
    # stayed: this process had checked the folder already)
    older_version(folder)
    assert note in reasons(Held(infra={"folder": tmp_path}).total.node())[0]
    text = (folder / "full-uid.yaml").read_text()
    (folder / "full-uid.yaml").write_text(text.replace("infra.version: '0'", "infra.version: '1'"))
    assert reasons(Held(infra={"folder": tmp_path}).total.node()) == ["cached"]

    # a call with inputs: its result in a sub-folder, the config folder's file tells,
    # unless the sub-folder has its own (a result computed since: the review of this)
    def scaled(param: int) -> tp.Any:
        upstream = Task(param=param, infra={"folder": tmp_path}).process.node()
        return Scaled(infra={"folder": tmp_path}).scale.node(upstream)

    assert scaled(1).result() == 20
    config_folder = Scaled(infra={"folder": tmp_path}).infra.uid_folder()
    assert config_folder is not None
    older_version(config_folder)
    assert scaled(2).result() == 40  # (computed now: its own full-uid.yaml, current)
    (reason,) = reasons(scaled(1))
    assert note in reason
    assert reasons(scaled(2)) == ["cached"]


def test_plan_tells_a_map_reused_under_other_sub_config_versions(tmp_path: Path) -> None:
    """A map whose items were computed when a sub-config had another class version: the
    call warned, but its plan said only "cached" (a task's plan says what changed). A
    researcher bumping the version of a training held by a per-item evaluation saw
    nothing in the plan table."""
    from exca.infra import base as infra_base

    _held_map_as_computed_with_task_version_0(tmp_path, [1, 2])
    infra_base._DEFAULTS_CHECKED.clear()  # (as in a new process)
    node = HeldMap(infra={"folder": tmp_path}).apply.node([1, 2])
    (entry,) = [e for e in exca.graph.plan(node).entries if e.status == "cached"]
    note = "computed with other sub-config versions (task.infra.version '0' -> '1')"
    assert entry.reason.startswith(f"cached, {note}"), entry.reason


def test_a_plan_does_not_warn_of_other_sub_config_versions_the_call_after_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A plan reuses nothing, but logged "Reusing the cache in ..., computed when
    sub-configs had other class versions" for each such node (its table says it in the
    node's reason): silent now; the call after it, which reuses the result (read-only
    too), warns once."""
    from exca.infra import base as infra_base

    def warnings() -> int:
        count = caplog.text.count("other class versions")
        caplog.clear()
        return count

    for mode in ("cached", "read-only"):
        folder_of = tmp_path / mode
        assert Held(infra={"folder": folder_of}).total() == 10
        mapped = HeldMap(infra={"folder": folder_of})
        assert list(mapped.apply([1, 2])) == [1, 2]
        for infra in (Held(infra={"folder": folder_of}).infra, mapped.infra):
            folder = infra.uid_folder()
            assert folder is not None
            _as_written_with_task_version_0(folder)
        infra_base._DEFAULTS_CHECKED.clear()  # (as in a new process)
        with caplog.at_level("WARNING", logger="exca"):
            held = Held(infra={"folder": folder_of, "mode": mode})
            node = HeldMap(infra={"folder": folder_of, "mode": mode}).apply.node([1, 2])
            for _ in range(2):
                entries = exca.graph.plan(held.total.node(), node).entries
                assert ["other sub-config versions" in e.reason for e in entries] == [True] * 2
                assert warnings() == 0, mode
            assert Held(infra={"folder": folder_of, "mode": mode}).total() == 10
            assert warnings() == 1, mode
            assert list(node.result()) == [1, 2]
            assert warnings() == 1, mode
            assert Held(infra={"folder": folder_of, "mode": mode}).total() == 10
            assert list(node.result()) == [1, 2]
            assert warnings() == 0, mode  # (once per process)


def test_plan_tells_an_upstream_not_needed_computed_under_other_sub_config_versions(
    tmp_path: Path,
) -> None:
    """A pipeline whose cached target was computed from a node cached when its sub-config
    had another class version (a version bumped since): the run reuses the target and
    warns of that node, but the plan table said only "not needed" for it."""
    from exca.infra import base as infra_base

    held = Held(infra={"folder": tmp_path})
    target = Scaled(infra={"folder": tmp_path}).scale.node(held.total.node())
    assert target.result() == 20
    folder = held.infra.uid_folder()
    assert folder is not None
    _as_written_with_task_version_0(folder)
    infra_base._DEFAULTS_CHECKED.clear()  # (as in a new process)
    held = Held(infra={"folder": tmp_path})
    target = Scaled(infra={"folder": tmp_path}).scale.node(held.total.node())
    plan = exca.graph.plan(target)
    assert plan.counts() == {"cached": 1, "not needed": 1}
    (entry,) = [e for e in plan.entries if e.status == "not needed"]
    note = "computed with other sub-config versions (task.infra.version '0' -> '1')"
    assert entry.reason.startswith(f"not needed, {note}"), entry.reason


def test_iter_cached(tmp_path: Path) -> None:
    for layers in (1, 2):
        assert Outer(model={"layers": layers}, infra={"folder": tmp_path}).train() > 0
    # a uid folder without a result
    pending = Outer(model={"layers": 3}, infra={"folder": tmp_path})
    pending.infra.uid_folder(create=True)
    cached = list(pending.infra.iter_cached())
    assert all(isinstance(c, Outer) for c in cached)
    assert sorted(c.model.layers for c in cached) == [1, 2]
    assert all(c.infra.folder == tmp_path for c in cached)
    before = _count("outer")
    assert sorted(c.train() for c in cached) == [0.1, 0.2]
    assert _count("outer") == before
    assert list(Outer().infra.iter_cached()) == []  # no folder


def test_iter_cached_lists_a_result_computed_again_after_another_instance_cleared_it(
    tmp_path: Path,
) -> None:
    """clear_job() of another instance removed config.yaml; an instance that had written
    it before computed again without writing it back: iter_cached() skipped the result for
    good (a probe)."""
    kept = Outer(model={"layers": 1}, infra={"folder": tmp_path})
    assert kept.train() > 0
    Outer(model={"layers": 1}, infra={"folder": tmp_path}).infra.clear_job()
    assert kept.train() > 0  # (computed again by the first instance)
    assert [c.model.layers for c in kept.infra.iter_cached()] == [1]
    # uid.yaml removed alone: written again too (iter_cached reads it; a review)
    folder = kept.infra.uid_folder()
    assert folder is not None
    (folder / "uid.yaml").unlink()
    Outer(model={"layers": 1}, infra={"folder": tmp_path}).train.node().clear()  # (yaml kept)
    assert kept.train() > 0
    assert (folder / "uid.yaml").exists()
    assert [c.model.layers for c in kept.infra.iter_cached()] == [1]


def test_iter_cached_configs_made_with_force_read_their_result(tmp_path: Path) -> None:
    """config.yaml keeps the mode of the call that made the result: a config listed from
    a forced (or retried) computation was forced again when called, replacing its result."""
    for layers, mode in ((1, "force"), (2, "retry"), (3, "cached")):
        assert Outer(model={"layers": layers}, infra={"folder": tmp_path, "mode": mode}).train()
    before = _count("outer")
    listed = list(Outer(infra={"folder": tmp_path}).infra.iter_cached())
    assert [c.infra.mode for c in listed] == ["cached"] * 3
    assert sorted(round(c.train(), 6) for c in listed) == [0.1, 0.2, 0.3]
    assert _count("outer") == before


class Layer(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    size: int = 2
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def build(self) -> int:
        CALLS.append(("layer", self.size))
        return self.size


class Network(pydantic.BaseModel):
    first: Layer = Layer()
    layers: list[Layer] = []
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def total(self) -> int:
        CALLS.append(("network", None))
        return self.first.build() + sum(layer.build() for layer in self.layers)


def test_iter_cached_configs_made_with_forced_sub_configs_read_their_results(
    tmp_path: Path,
) -> None:
    """Sub-configs (in a field, in a list) forced when the listed config was made: listed
    in mode cached too, else calling it forced them again, and the config after them."""
    infra = {"folder": tmp_path}
    forced = {"folder": tmp_path, "mode": "force"}
    net = Network(
        first=Layer(size=3, infra=forced), layers=[Layer(size=4, infra=forced)], infra=infra
    )
    assert net.total() == 7
    (listed,) = Network(infra=infra).infra.iter_cached()
    modes = [i.mode for i in listed.infra.obj_infras().values()]
    assert modes == ["cached"] * 3
    before = len(CALLS)
    assert listed.total() == 7
    assert [layer.build() for layer in [listed.first, *listed.layers]] == [3, 4]
    assert len(CALLS) == before


def test_iter_cached_of_a_moved_cache_reads_from_where_it_was_found(tmp_path: Path) -> None:
    """config.yaml names the folder it was written in: the configs of a moved cache
    computed again, in the old place (it came back, with new results)."""
    old, new = tmp_path / "old", tmp_path / "new"
    assert Outer(model={"layers": 1}, infra={"folder": old}).train() > 0
    old.rename(new)
    (cached,) = Outer(infra={"folder": new}).infra.iter_cached()
    assert cached.infra.folder == new and cached.infra.status() == "completed"
    before = _count("outer")
    assert cached.train() == 0.1
    assert _count("outer") == before and not old.exists()


class Where(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    folder: str = ""  # (a user's field named like an infra's)


class TwoSteps(pydantic.BaseModel):
    x: int = 1
    where: Where = Where()
    first: TaskInfra = TaskInfra(version="1")
    second: TaskInfra = TaskInfra(version="1")

    @first.apply
    def a(self) -> int:
        CALLS.append(("two-a", self.x))
        return self.x

    @second.apply
    def b(self) -> int:
        CALLS.append(("two-b", self.x))
        return 10 * self.x


class PrivateInfra(pydantic.BaseModel):
    x: int = 1
    _infra: TaskInfra = TaskInfra(version="1")

    @_infra.apply
    def run(self) -> int:
        return 2 * self.x


def test_iter_cached_of_a_moved_cache_moves_every_infra_of_the_config(tmp_path: Path) -> None:
    """A config with an infra per method: the other method's infra follows the move too
    (it computed in the old place); a private infra (not in config.yaml) is listed too."""
    old, new = tmp_path / "old", tmp_path / "new"
    obj = TwoSteps(x=3, where={"folder": str(old)}, first={"folder": old}, second={"folder": old})
    assert (obj.a(), obj.b()) == (3, 30)
    old.rename(new)
    (cached,) = TwoSteps(first={"folder": new}).first.iter_cached()
    assert cached.first.folder == new and cached.second.folder == new
    assert cached.where.folder == str(old)  # (not an infra's: part of the uid, kept)
    before = len(CALLS)
    assert (cached.a(), cached.b()) == (3, 30)
    assert len(CALLS) == before
    assert not old.exists()
    private = PrivateInfra(x=3)
    private._infra = TaskInfra(version="1", folder=tmp_path / "private")
    assert private.run() == 6
    assert [c.x for c in private._infra.iter_cached()] == [3]


def test_obj_infras() -> None:
    obj = Outer(subs=[Sub(), Sub(layers=4)])
    infras = obj.infra.obj_infras()
    assert set(infras) == {"infra", "model.infra", "subs.0.infra", "subs.1.infra"}
    assert infras["infra"] is obj.infra
    assert infras["model.infra"] is obj.model.infra
    assert infras["subs.1.infra"] is obj.subs[1].infra
    assert all(isinstance(i, TaskInfra) for i in infras.values())


# --- validation -----------------------------------------------------------------------------
@pytest.mark.parametrize("cluster", ["auto", "local", "slurm", "debug"])
def test_cluster_requires_folder(cluster: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="folder"):
        Task(infra={"cluster": cluster})
    assert Task(infra={"cluster": cluster, "folder": tmp_path}).infra.cluster == cluster


@pytest.mark.parametrize(
    "settings",
    [
        {"timeout_min": 0},
        {"cpus_per_task": -1},
        {"mem_gb": -3},
        {"gpus_per_node": -1},
        {"nodes": 0},
        {"max_pickle_size_gb": 0},
    ],
)
def test_resources_out_of_range_name_the_field(settings: dict[str, tp.Any]) -> None:
    (name,) = settings
    for infra in (TaskInfra, MapInfra):
        with pytest.raises(pydantic.ValidationError, match=name):
            infra(**settings)


def test_folder_that_is_a_file_or_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "afile").write_text("precious")
    for infra in (TaskInfra, MapInfra):
        with pytest.raises(pydantic.ValidationError, match="is a file"):
            infra(folder=tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "precious"
    # a device (no regular file, no folder either): refused when the config is created
    # too, not at its first call ("Not a directory")
    if os.path.exists(os.devnull):
        for infra in (TaskInfra, MapInfra):
            with pytest.raises(pydantic.ValidationError, match="is a file"):
                infra(folder=os.devnull)
    monkeypatch.chdir(tmp_path)
    assert TaskInfra(folder="cache").folder == tmp_path / "cache"  # (jobs may run elsewhere)


@pytest.mark.parametrize(
    "settings", [{"max_jobs": 0}, {"max_jobs": -1}, {"min_samples_per_job": 0}]
)
def test_map_packing_out_of_range_names_the_field(settings: dict[str, tp.Any]) -> None:
    (name,) = settings
    with pytest.raises(pydantic.ValidationError, match=name):
        MapInfra(**settings)
    assert MapInfra(max_jobs=None).max_jobs is None  # no limit


def test_class_default_settings_are_checked_at_every_creation_and_after_a_change(
    tmp_path: Path,
) -> None:
    class SlurmDefault(pydantic.BaseModel):
        infra: TaskInfra = TaskInfra(cluster="slurm")  # fine only once a folder is given

        @infra.apply
        def process(self) -> int:
            return 1

    for _ in range(2):  # the check's result is remembered per class default: still raised
        with pytest.raises(ValueError, match="folder"):
            SlurmDefault()
    assert SlurmDefault(infra={"folder": tmp_path}).infra.cluster == "slurm"
    default = Task.model_fields["infra"].default
    assert Task().infra.cluster is None  # checked and remembered as fine
    default.cluster = "debug"  # changing the class default makes copies checked again
    try:
        with pytest.raises(ValueError, match="folder"):
            Task()
    finally:
        default.cluster = None
    assert Task().infra.cluster is None


def test_class_default_containers_are_copied_per_instance(tmp_path: Path) -> None:
    class WithParams(pydantic.BaseModel):
        infra: TaskInfra = TaskInfra(slurm_additional_parameters={"qos": "low"})

        @infra.apply
        def process(self) -> int:
            return 1

    first, second = WithParams(), WithParams()
    first.infra.slurm_additional_parameters["qos"] = "high"  # type: ignore[index]
    assert second.infra.slurm_additional_parameters == {"qos": "low"}
    assert WithParams().infra.slurm_additional_parameters == {"qos": "low"}


def test_workdir_requires_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="folder"):
        Task(infra={"workdir": {"copied": ["."]}})
    task = Task(infra={"workdir": {"copied": ["."]}, "folder": tmp_path})
    assert isinstance(task.infra.workdir, WorkDir)


def test_tasks_per_node_requires_srun(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="slurm_use_srun"):
        Task(infra={"folder": tmp_path, "cluster": "slurm", "tasks_per_node": 2})
    ok = Task(
        infra={"folder": tmp_path, "cluster": "slurm", "tasks_per_node": 2, "slurm_use_srun": True}
    )
    assert ok.infra.tasks_per_node == 2
    assert Task(infra={"folder": tmp_path, "tasks_per_node": 2}).infra.tasks_per_node == 2


def test_sbatch_options_exca_manages_are_refused(tmp_path: Path) -> None:
    """slurm_additional_parameters={"array": "0-3"} was accepted: Slurm ran a 4-element
    array exca followed as one job (three elements failed at once, one hung, three
    contradictory states). Such options are refused before anything is queued, naming
    the option and what to use instead, also as the start of it sbatch takes ("arr")."""
    instead = {
        "array": r"infra\.job_array\(\)",
        "--array": r"infra\.job_array\(\)",
        "arr": r"--array is exca's own.*infra\.job_array\(\)",
        "parsable": r"remove it",
        "pars": r"--parsable is exca's own.*remove it",
    }
    for key, hint in instead.items():
        params = {key: "0-3"}
        with pytest.raises(ValueError, match=rf"(?s){key}='0-3': the sbatch option.*{hint}"):
            Task(
                infra={
                    "folder": tmp_path,
                    "cluster": "slurm",
                    "slurm_additional_parameters": params,
                }
            )
    # (output/error only move the logs: configs cached with them still read back)
    kept = {"qos": "low", "dependency": "afterok:1", "mail-type": "END", "output": "o_%j"}
    task = Task(infra={"folder": tmp_path, "cluster": "slurm", "slurm_additional_parameters": kept})
    assert task.infra.slurm_additional_parameters == kept


def test_conda_env_refused_without_cluster(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="conda_env"):
        Task(infra={"folder": tmp_path, "conda_env": "myenv"})
    with pytest.raises(ValueError, match="conda_env"):
        Task(infra={"folder": tmp_path, "conda_env": "myenv", "cluster": "debug"})


def test_a_folder_under_an_unknown_user_s_home_is_refused() -> None:
    """``~nosuchuser/x`` stayed as it was: a cache in a relative folder of that name."""
    with pytest.raises(pydantic.ValidationError, match="names no user's home"):
        Task(infra={"folder": "~exca-no-such-user-x/cache"})


def test_logs_with_an_unknown_placeholder_are_refused(tmp_path: Path) -> None:
    """A typo ("{usr}") made a log folder of that literal name."""
    with pytest.raises(pydantic.ValidationError, match=r"unknown placeholder\(s\) \{usr\}"):
        Task(infra={"folder": tmp_path, "logs": "{folder}/{usr}/%j"})
    infra = Task(infra={"folder": tmp_path, "logs": "{folder}/mine/{user}/%j"}).infra
    assert str(infra.logs) == "{folder}/mine/{user}/%j"
    # %a: submitit refused it for a single job once that job was queued (a probe)
    with pytest.raises(pydantic.ValidationError, match=r"holds %a .* use %j"):
        Task(infra={"folder": tmp_path, "logs": "{folder}/logs/%A_%a"})
    assert Task(infra={"folder": tmp_path, "logs": "{folder}/logs/%A"}).infra.logs


def test_version_must_name_one_folder(tmp_path: Path) -> None:
    """A version names the method's cache folder: a float would lose digits (yaml reads
    ``version: 1.10`` as 1.1, the cache of version 1.1), and a path would lead elsewhere."""
    assert Task(infra={"folder": tmp_path, "version": 3}).infra.version == "3"
    assert Task(infra={"folder": tmp_path, "version": "1.10"}).infra.version == "1.10"
    with pytest.raises(pydantic.ValidationError, match=r"version=1\.1 is a float.*version='1\.1'"):
        Task(**yaml.safe_load(f"infra: {{folder: {tmp_path}, version: 1.10}}"))
    for bad in ["1/2", "../../elsewhere", "", " 1", "..", "1\n2", "a\\b"]:
        with pytest.raises(pydantic.ValidationError, match="names a cache folder"):
            Task(infra={"folder": tmp_path, "version": bad})
    assert not any(tmp_path.iterdir())  # nothing written anywhere


def test_folder_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    task = Task(infra={"folder": "~/cache"})
    assert task.infra.folder == tmp_path / "cache"  # not a folder named "~"
    task.process()
    assert (tmp_path / "cache").is_dir()
    for empty in ["", "  "]:
        with pytest.raises(pydantic.ValidationError, match="is empty: give a folder path"):
            Task(infra={"folder": empty})


def test_infra_assignments_are_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``obj.infra.field = value`` is checked as the constructor checks it: the value at
    once, combinations of fields before the first call (nothing submitted before)."""
    monkeypatch.chdir(tmp_path)
    task = Task(param=3)
    with pytest.raises(pydantic.ValidationError, match="'cached', 'retry', 'force'"):
        task.infra.mode = "forc"  # type: ignore[assignment]
    with pytest.raises(pydantic.ValidationError, match="valid integer"):
        task.infra.timeout_min = "abc"  # type: ignore[assignment]
    task.infra.folder = str(tmp_path)  # type: ignore[assignment]
    assert task.infra.folder == tmp_path  # converted as in the constructor
    task.infra.cluster = "local"
    task.infra.folder = None
    with pytest.raises(ValueError, match="cluster='local' needs a folder"):
        task.process()
    assert not (tmp_path / "None").exists()  # (no job went to a folder named "None")
    task.infra.folder = tmp_path
    assert task.process() == 30  # a valid combination again: it runs


def test_an_unknown_cluster_says_what_it_can_be() -> None:
    """pydantic's literal error listed the names but not None (the default: this process),
    and a typo got no hint."""
    with pytest.raises(pydantic.ValidationError, match=r"cluster='slrum' .*did you mean 'slurm'"):
        Task(infra={"cluster": "slrum"})
    with pytest.raises(pydantic.ValidationError, match=r"use None \(compute in this process\)"):
        TaskInfra(cluster="gpu")  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError, match="not a cluster for a TaskInfra"):
        TaskInfra(cluster="processpool")  # type: ignore[arg-type]
    assert MapInfra(cluster="processpool").cluster == "processpool"
    with pytest.raises(pydantic.ValidationError, match="did you mean 'threadpool'"):
        MapInfra(cluster="threadpol")  # type: ignore[arg-type]
    task = Task(param=3)
    with pytest.raises(pydantic.ValidationError, match="did you mean 'local'"):
        task.infra.cluster = "locall"  # type: ignore[assignment]


@pytest.mark.parametrize("text", ["None", "null", "none"])
def test_a_cluster_given_as_the_text_none_says_it_is_text(text: str) -> None:
    """`python train.py --infra.cluster=None` (ConfDict.from_args keeps values strings)
    was told "use None (compute in this process)": what the user had typed."""
    args = ConfDict.from_args([f"--infra.cluster={text}"])
    with pytest.raises(pydantic.ValidationError) as info:
        Task(**args)
    message = str(info.value)
    assert f"cluster='{text}' is not a cluster (the text '{text}', not None: " in message
    assert "read them as yaml" in message and "docs/confdict.md" in message


def test_a_map_folder_whose_parent_is_missing_says_which_and_what_to_do(tmp_path: Path) -> None:
    """A MapInfra under a missing folder said "its parent does not exist", neither which
    one (the folder may be several levels deep) nor what to do, where a TaskInfra given the
    same folder makes the missing parents."""

    class Square(pydantic.BaseModel):
        infra: MapInfra = MapInfra()

        @infra.apply(item_uid=str)
        def run(self, items: list[int]) -> tp.Iterator[int]:
            yield from (item**2 for item in items)

    folder = tmp_path / "missing" / "cache"
    with pytest.raises(pydantic.ValidationError) as info:
        Square(infra={"folder": folder})
    message = str(info.value)
    assert f"its parent {tmp_path / 'missing'} does not exist" in message
    assert f"mkdir -p {tmp_path / 'missing'}" in message
    assert TaskInfra(folder=folder).folder == folder  # (makes them when it computes)


def test_permissions_parsing() -> None:
    assert TaskInfra().permissions == 0o777
    assert TaskInfra(permissions="a+rwx").permissions == 0o777  # type: ignore[arg-type]
    assert TaskInfra(permissions="").permissions is None  # type: ignore[arg-type]
    assert TaskInfra(permissions=None).permissions is None
    assert TaskInfra(permissions=0o750).permissions == 0o750
    assert MapInfra(permissions="a+rwx").permissions == 0o777  # type: ignore[arg-type]
    assert TaskInfra(permissions=0o2775).permissions == 0o2775  # (setgid: shared folders)
    assert TaskInfra(permissions="2775").permissions == 0o2775  # type: ignore[arg-type]
    for bad in [-1, "-1", 0o17777]:
        with pytest.raises(pydantic.ValidationError, match=r"is not a file mode \(0 to 0o7777\)"):
            TaskInfra(permissions=bad)  # type: ignore[arg-type]
    # an octal mode written in decimal: 777 is 0o1411 (sticky bit, almost no access)
    with pytest.raises(pydantic.ValidationError, match=r"777 is 0o1411.*did you mean 0o777\?"):
        TaskInfra(permissions=777)
    with pytest.raises(ValueError, match=r"755 is 0o1363.*did you mean 0o755\?"):
        CacheDict("unused-folder", permissions=755)
    assert TaskInfra(permissions=1533).permissions == 0o2775  # (0o2775 in decimal: valid)


def test_permissions_applied(tmp_path: Path) -> None:
    task = Task(param=16, infra={"folder": tmp_path / "cache", "permissions": 0o750})
    task.process()
    folder = task.infra.uid_folder()
    assert folder is not None
    assert (folder / "uid.yaml").stat().st_mode & 0o777 == 0o750
    assert folder.stat().st_mode & 0o777 == 0o750


def test_a_folder_gone_before_its_chmod_is_no_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`exca clean` makes (or repairs the mode of) the claims folder of each folder it
    cleans, with the cache's permissions (files.chmod_folder, files.repair): a folder a
    concurrent clean or clear removed meanwhile logged "Could not chmod ...: No such file
    or directory", an alarming warning for nothing. A path that is gone needs no chmod:
    nothing is said; a chmod refused still warns."""
    from exca.storage import files

    folder = tmp_path / "uid-folder"
    folder.mkdir(mode=0o700)
    seen = os.stat(folder)  # (listed by the clean, then removed by another process)
    folder.rmdir()
    with caplog.at_level(logging.WARNING, logger="exca"):
        files.repair(folder, 0o777, status=seen)
        files.chmod_folder(folder, 0o777)
    assert "Could not chmod" not in caplog.text
    folder.mkdir(mode=0o700)

    def refused(path: tp.Any, mode: int) -> None:
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(files.os, "chmod", refused)
    with caplog.at_level(logging.WARNING, logger="exca"):
        files.repair(folder, 0o777)
    assert f"Could not chmod {folder} to 0o777: [Errno 1] Operation not permitted" in caplog.text


def test_permissions_keep_the_setgid_bit_of_a_groups_cache(tmp_path: Path) -> None:
    """A group's cache (its folder setgid: what is made there takes its group) with
    permissions=0o770: chmod 0o770 cleared the setgid bit each new folder inherits, and
    the files made in them took their maker's own group, which others may not read."""
    import stat

    root = tmp_path / "cache"
    root.mkdir()
    root.chmod(0o2770)
    task = Task(param=17, infra={"folder": root, "permissions": 0o770})
    task.process()
    folder = task.infra.uid_folder()
    assert folder is not None
    for made in (folder.parent, folder, *(p for p in folder.rglob("*") if p.is_dir())):
        assert made.stat().st_mode & 0o2777 == 0o2770, made
    assert folder.stat().st_mode & stat.S_ISGID


class ArrayTask(pydantic.BaseModel):
    x: int = 0
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> tp.Any:
        import numpy as np

        return np.arange(100) + self.x


class ArrayMap(pydantic.BaseModel):
    infra: MapInfra = MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: tp.Sequence[int]) -> tp.Iterator[tp.Any]:
        import numpy as np

        for item in items:
            yield np.full(100, item)


@pytest.mark.timeout(120)
def test_permissions_reach_every_created_folder_and_file(tmp_path: Path) -> None:
    """A shared cache (default permissions 0o777): whatever the umask, the folders and files
    exca creates are open to the other users (claims/, data/ and jobs/ included), and so
    are the log folders, where each user adds a folder of their own (submitit created
    them with the umask: another user's submission failed with PermissionError)."""
    import getpass
    import os
    import stat

    root = tmp_path / "cache"
    previous = os.umask(0o077)
    try:
        assert ArrayTask(x=1, infra={"folder": root}).process()[0] == 1
        assert ArrayTask(x=2, infra={"folder": root, "cluster": "local"}).process()[0] == 2
        assert [o[0] for o in ArrayMap(infra={"folder": root}).process([1, 2])] == [1, 2]
        local_map = ArrayMap(infra={"folder": root, "cluster": "local"})
        assert [o[0] for o in local_map.process([3, 4])] == [3, 4]
    finally:
        os.umask(previous)
    seen = set()
    user = getpass.getuser()
    for folder, dirs, files in os.walk(root):
        if Path(folder).name == user and Path(folder).parent.name == "logs":
            dirs[:], files = [], []  # (submitit's own job folders and files)
        for name in [*dirs, *files]:
            path = Path(folder) / name
            if path.is_symlink():
                continue
            seen.add(name)
            assert stat.S_IMODE(path.stat().st_mode) == 0o777, path
    assert {"claims", "data", "jobs", "uid.yaml", "config.yaml", "logs", user} <= seen


@pytest.mark.parametrize("killed_at", [1, 2, 3, 4])
def test_permissions_of_folders_whose_maker_was_killed(tmp_path: Path, killed_at: int) -> None:
    """A process killed between the mkdir of a folder of a shared cache and its chmod (the
    root, the step folder, the node folder, its claims folder: the chmod numbered
    ``killed_at`` of a first call ends its process, os._exit) left that folder with the
    umask's mode (0o755 under 0o022) for good: every later call found it there and kept
    it, and the other users could never write in it. The next call of its owner gives it
    the cache's permissions."""
    import os
    import stat
    import subprocess
    import sys

    root = tmp_path / "cache"
    code = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
os.umask(0o022)
from exca.storage import files
from test_task_api import ArrayTask
calls, chmod_folder = [], files.chmod_folder
def killed(path, permissions, *parent_mode):
    calls.append(path)
    if len(calls) == {killed_at}:
        os._exit(3)
    chmod_folder(path, permissions, *parent_mode)
files.chmod_folder = killed
ArrayTask(x=5, infra={{"folder": {str(root)!r}}}).process()
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 3
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")] if p.is_dir()}
    assert 0o755 in modes.values()  # (what the kill left)
    previous = os.umask(0o022)
    try:
        task = ArrayTask(x=5, infra={"folder": root})
        assert task.process()[0] == 5
    finally:
        os.umask(previous)
    folder = task.infra.uid_folder()
    assert folder is not None and (folder / "claims").is_dir()
    for made in (root, *root.rglob("*")):
        if made.is_dir():
            assert stat.S_IMODE(made.stat().st_mode) == 0o777, made


def test_permissions_given_back_to_folders_a_writer_writes_in(tmp_path: Path) -> None:
    """The folders of a node (itself, its step folder, claims/, data/) found without the
    cache's permissions (as a kill between their mkdir and chmod leaves them) by the
    process owning them, which then writes there, get them; the cache root, which may be
    the user's own, is left as it is once it holds something."""
    import os
    import stat

    root = tmp_path / "cache"
    assert [o[0] for o in ArrayMap(infra={"folder": root}).process([1, 2])] == [1, 2]
    folders = [p for p in root.rglob("*") if p.is_dir()]
    assert {p.name for p in folders} >= {"claims", "data"}
    for folder in (root, *folders):
        folder.chmod(0o755)
    assert [o[0] for o in ArrayMap(infra={"folder": root}).process([1, 3])] == [1, 3]
    for folder in folders:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777, folder
    assert stat.S_IMODE(root.stat().st_mode) == 0o755
    # (a folder of another user is not this process's to chmod: nothing tried)
    other = tmp_path / "other"
    other.mkdir(mode=0o755)
    os.chmod(other, 0o755)
    files_module = __import__("exca.storage.files", fromlist=["repair"])
    status = os.stat(other)
    fake = os.stat_result((*status[:4], status.st_uid + 1, *status[5:]))
    files_module.repair(other, 0o777, status=fake)
    assert stat.S_IMODE(other.stat().st_mode) == 0o755


def test_a_folder_repaired_then_made_again_by_a_killed_maker_is_repaired_again(
    tmp_path: Path,
) -> None:
    """A process that gave a folder of its cache the permissions (found with the umask's
    mode, as a kill between its mkdir and its chmod leaves it) repairs it again when it is
    removed, then made again by a process killed the same way: ext4 gives the new folder
    the inode of the removed one at once, and files.repair remembered the folders it had
    repaired by inode (to try a chmod that does not take only once): it took the new one
    for repaired already, and left it 0o755 for good (the other users could not write in
    it) for the life of that process. (The folder made again is the same folder given the
    umask's mode here: the same inode whatever the file system does.)"""
    import os
    import stat

    root = tmp_path / "cache"
    previous = os.umask(0o022)
    try:
        mapper = ArrayMap(infra={"folder": root})
        assert [o[0] for o in mapper.process([1])] == [1]
        folder = mapper.infra.uid_folder()
        assert folder is not None
        data = folder / "data"
        data.chmod(0o755)  # (as a kill before its chmod leaves it)
        assert [o[0] for o in ArrayMap(infra={"folder": root}).process([2])] == [2]
        assert stat.S_IMODE(data.stat().st_mode) == 0o777
        data.chmod(0o755)  # (removed, made again by a process killed before its chmod)
        assert [o[0] for o in ArrayMap(infra={"folder": root}).process([3])] == [3]
    finally:
        os.umask(previous)
    assert stat.S_IMODE(data.stat().st_mode) == 0o777


def test_a_logs_folder_left_by_a_killed_submitter_gets_the_permissions(tmp_path: Path) -> None:
    """A submission killed between the mkdir of a step's logs folder and its chmod left
    it with the umask's mode (0o755 under 0o022), and the next submission made its
    user's folder in it (logs/<user>), so it was never given the cache's permissions
    (make_folder took it for a folder of the user's, repaired only when found empty):
    the other users of the shared cache could never make their own logs/<user> there.
    It is now given them, as the other folders of the cache; a log folder of the user's
    (outside the cache) is left as it is."""
    import os
    import stat

    root = tmp_path / "cache"
    previous = os.umask(0o022)
    try:
        assert ArrayTask(x=1, infra={"folder": root}).process()[0] == 1
        folder = ArrayTask(x=1, infra={"folder": root}).infra.uid_folder()
        assert folder is not None
        logs = folder.parent / "logs"
        logs.mkdir()  # (the umask's mode: as a kill before its chmod leaves it)
        theirs = tmp_path / "own"  # (a log folder of the user's, outside the cache)
        theirs.mkdir()
        for x, infra in ((2, {}), (3, {"logs": f"{theirs}/{{user}}/%j"})):
            task = ArrayTask(x=x, infra={"folder": root, "cluster": "local", **infra})
            assert task.process()[0] == x
    finally:
        os.umask(previous)
    assert stat.S_IMODE(logs.stat().st_mode) == 0o777
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o777 for p in logs.iterdir())
    assert stat.S_IMODE(theirs.stat().st_mode) == 0o755


def test_a_chmod_of_the_owner_is_undone_unless_permissions_allow_it(tmp_path: Path) -> None:
    """What docs/taskinfra.md says of a folder its owner took bits from (chmod go-w, to
    keep the other users out): the owner's next computation there gives the cache's
    permissions back (exca cannot tell it from a folder a kill left with the umask's
    mode); with the permissions set to the mode wanted (0o755), or None, it is kept. A
    cache root in use (not empty) keeps its chmod whatever the permissions."""
    import stat

    root = tmp_path / "cache"
    assert [o[0] for o in ArrayMap(infra={"folder": root}).process([1])] == [1]
    node = next(p.parent for p in root.rglob("claims"))
    mode = lambda path: stat.S_IMODE(path.stat().st_mode)  # noqa: E731
    assert mode(node) == mode(root) == 0o777
    for path in (node, root):
        path.chmod(0o755)
    for item, permissions in ((2, 0o755), (3, None)):
        infra = {"folder": root, "permissions": permissions}
        assert [o[0] for o in ArrayMap(infra=infra).process([item])] == [item]
        assert mode(node) == 0o755
    assert [o[0] for o in ArrayMap(infra={"folder": root}).process([4])] == [4]
    assert mode(node) == 0o777 and mode(root) == 0o755


_RACING_USER = """
import os, sys, time, typing as tp
os.umask(0o022)
import pydantic, exca
from exca.storage import files

chmod_folder = files.chmod_folder


def slow_chmod_folder(path: tp.Any, permissions: int, *parent_mode: tp.Any) -> None:
    time.sleep(0.005)  # (a loaded machine, a network file system: a wider window)
    chmod_folder(path, permissions, *parent_mode)


files.chmod_folder = slow_chmod_folder


class Step(pydantic.BaseModel):
    x: int = 0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        return 2 * self.x


class Items(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def run(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            yield 2 * item


base, me, start, rounds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
for i in range(rounds):
    while time.time() < start + 0.4 * i:  # (both users start the round together)
        pass
    try:
        if i % 3 == 0:  # the same task
            got = Step(infra={"folder": f"{base}/{i}/cache"}).run()
        elif i % 3 == 1:  # a task each, in the same step folder
            got = Step(x=me, infra={"folder": f"{base}/{i}/cache"}).run()
        else:  # a map, items in common and one each
            got = list(Items(infra={"folder": f"{base}/{i}"}).run([0, 1, 2 + me]))
        print(i, got, flush=True)
    except Exception as error:
        print(i, "failed:", type(error).__name__, error, flush=True)
"""


def test_two_users_using_a_new_shared_cache_at_once(tmp_path: Path) -> None:
    """Two users calling at once into a new shared cache (permissions 0o777, both under
    umask 0o022): the one that makes a folder (the root, a step, node or claims folder)
    makes it 0o755 and chmods it just after; the other one, finding it in between, could
    not write in it: PermissionError "Cannot write into the cache folder" (a third of
    their calls failed when racing, a probe). It now waits for that chmod
    (files.await_chmod). Real users (setpriv, two uids), racing 12 times: the same task,
    a task each, a map; their maker's chmods delayed by 5 ms, as on a loaded machine."""
    import shutil
    import stat
    import subprocess
    import sys
    import tempfile
    import time

    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to run as two users")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def as_user(uid: int, *args: str) -> list[str]:
        return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *args]

    users = (54541, 54542)  # (no such users needed: uids of their own)
    probe = subprocess.run(
        as_user(users[0], sys.executable, "-c", "import exca"),
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
    )
    if probe.returncode:
        pytest.skip(f"exca cannot be imported by another user here: {probe.stderr[-300:]}")
    base = Path(tempfile.mkdtemp(prefix="exca-shared-"))  # (tmp_path: root's only)
    try:
        base.chmod(0o1777)  # (as /tmp)
        rounds, start = 12, time.time() + 5
        users_runs = [
            subprocess.Popen(
                as_user(
                    uid,
                    sys.executable,
                    "-c",
                    _RACING_USER,
                    str(base),
                    str(me),
                    str(start),
                    str(rounds),
                ),
                env=env,
                cwd="/",
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for me, uid in enumerate(users)
        ]
        outputs = [run.communicate(timeout=120) for run in users_runs]
        for me, (out, err) in enumerate(outputs):
            expected = [f"{i} {[0, 2 * me, [0, 2, 4 + 2 * me]][i % 3]}" for i in range(rounds)]
            assert out.splitlines() == expected, err[-2000:]
        owners = set()
        for folder, dirs, _ in os.walk(base):
            for name in dirs:
                status = (Path(folder) / name).stat()
                owners.add(status.st_uid)
                assert stat.S_IMODE(status.st_mode) == 0o777, Path(folder) / name
        assert owners == set(users)  # (each made some of them)
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- MapInfra --------------------------------------------------------------------------------
class Mapper(pydantic.BaseModel):
    coeff: int = 1
    infra: MapInfra = MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: tp.Sequence[int]) -> tp.Iterator[int]:
        for item in items:
            CALLS.append(("map", item))
            yield item * self.coeff


class LongUids(pydantic.BaseModel):
    infra: MapInfra = MapInfra()

    @infra.apply(item_uid=lambda item: "u" * item, item_uid_max_length=40)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        yield from items


class NoShortening(pydantic.BaseModel):
    infra: MapInfra = MapInfra()

    @infra.apply(item_uid=lambda item: "u" * item, item_uid_max_length=None)
    def process(self, items: tp.Iterable[int]) -> tp.Iterator[int]:
        yield from items


def test_map_defaults() -> None:
    infra = MapInfra()
    assert infra.keep_in_ram is True
    assert infra.max_jobs == 128
    assert infra.min_samples_per_job == 1
    assert infra.forbid_single_item_computation is False
    # (mode="retry" is allowed for maps: SPEC [ours] "Map errors")
    for cluster in ("threadpool", "processpool"):
        assert MapInfra(cluster=cluster).cluster == cluster  # type: ignore[arg-type]


def test_map_apply_rules() -> None:
    infra = MapInfra()
    with pytest.raises(TypeError):

        class Bare(pydantic.BaseModel):
            infra: MapInfra = MapInfra()

            @infra.apply
            def process(self, items: list[int]) -> tp.Iterator[int]:
                yield from items

    with pytest.raises(TypeError, match="item_uid"):
        infra.apply()

    def three(self: tp.Any, items: list[int], other: int) -> tp.Iterator[int]:
        yield from items

    def one(self: tp.Any) -> tp.Iterator[int]:
        yield 1

    def unannotated(self: tp.Any, items):  # type: ignore[no-untyped-def]
        yield from items

    def wrong_hint(self: tp.Any, items: int) -> tp.Iterator[int]:
        yield items

    # (SPEC: exactly (self, items), annotated as a sequence: TypeError otherwise)
    with pytest.raises(TypeError, match=r"must have the signature \(self, items\)"):
        MapInfra().apply(item_uid=str)(three)
    with pytest.raises(TypeError, match=r"must have the signature \(self, items\)"):
        MapInfra().apply(item_uid=str)(one)
    # (an unannotated items said "got <class 'inspect._empty'>": it says there is none,
    # and shows the signature to write)
    unannotated_error = r"got no annotation\), e.g. def unannotated\(self, items: list\[str\]\)"
    with pytest.raises(TypeError, match=unannotated_error):
        MapInfra().apply(item_uid=str)(unannotated)
    with pytest.raises(TypeError, match=r"got 'int'\), e.g. def wrong_hint"):
        MapInfra().apply(item_uid=str)(wrong_hint)
    # (strings: annotations under `from __future__ import annotations`, as written)
    texts = ("tp.List[int]", "List[int]", "Tuple[int, ...]", "tp.Sequence[int]", "list[int]")
    for hint in (
        list[int],
        tuple[int, ...],
        tp.Sequence[int],
        tp.Iterable[int],
        tp.List[int],  # noqa: UP006
        *texts,
    ):

        def ok(self: tp.Any, items: tp.Any) -> tp.Iterator[int]:
            yield from items

        ok.__annotations__["items"] = hint
        assert MapInfra().apply(item_uid=str)(ok) is not None
    with pytest.raises(ValueError):
        MapInfra().apply(item_uid=str, item_uid_max_length=31)(ok)
    # items keyword-only or *items: refused here (the call failed, and its error was cached
    # for every item, outliving the fix of the signature)

    def keyword_only(self: tp.Any, *, items: list[int]) -> tp.Iterator[int]:
        yield from items

    def star(self: tp.Any, *items: list[int]) -> tp.Iterator[int]:
        yield from items

    for bad in (keyword_only, star):
        with pytest.raises(TypeError, match="plain positional parameter"):
            MapInfra().apply(item_uid=str)(bad)
    # the other arguments, checked here too
    with pytest.raises(TypeError, match=r"item_uid .* must be a function"):
        MapInfra().apply(item_uid="str")(ok)
    for length in ("abc", 40.5):
        with pytest.raises(ValueError, match="item_uid_max_length"):
            MapInfra().apply(item_uid=str, item_uid_max_length=length)(ok)


def test_map_call_rules(tmp_path: Path) -> None:
    obj = Mapper(coeff=2, infra={"folder": tmp_path})
    assert list(obj.process([1, 2])) == [2, 4]
    assert list(obj.process(items=[3])) == [6]
    with pytest.raises(NameError):
        obj.process(things=[1])
    with pytest.raises(ValueError):
        obj.process()
    with pytest.raises(ValueError):
        obj.process([1], [2])
    with pytest.raises(ValueError):
        obj.process([1], items=[2])


def test_map_output_order_and_duplicates(tmp_path: Path) -> None:
    obj = Mapper(coeff=3, infra={"folder": tmp_path})
    before = len(CALLS)
    assert list(obj.process([4, 1, 4, 2, 1])) == [12, 3, 12, 6, 3]
    computed = sorted(item for _, item in CALLS[before:])
    assert computed == [1, 2, 4]  # each unique item computed once
    assert list(obj.process(x for x in (2, 5, 2))) == [6, 15, 6]  # any iterable
    assert list(Mapper(coeff=3, infra={"folder": tmp_path}).process([5, 4])) == [15, 12]
    assert len(CALLS) == before + 4
    assert sorted(obj.infra.cache_dict.keys()) == ["1", "2", "4", "5"]


def test_map_cache_dict(tmp_path: Path) -> None:
    obj = Mapper(coeff=4, infra={"folder": tmp_path})
    list(obj.process([1, 2]))
    cache = obj.infra.cache_dict
    folder = obj.infra.uid_folder()
    assert folder is not None
    assert set(cache.keys()) == {"1", "2"}
    assert cache["2"] == 8
    assert any(p.name.endswith("-info.jsonl") for p in folder.iterdir())
    assert (folder / "uid.yaml").exists() and (folder / "config.yaml").exists()
    assert yaml.safe_load((folder / "uid.yaml").read_text()) == {"coeff": 4}


def test_map_without_folder() -> None:
    ram = Mapper(coeff=5)
    before = len(CALLS)
    assert list(ram.process([1])) == [5]
    assert list(ram.process([1])) == [5]
    assert len(CALLS) == before + 1  # keep_in_ram=True by default: RAM cache
    plain = Mapper(coeff=5, infra={"keep_in_ram": False})
    assert list(plain.process([1])) == [5]
    assert list(plain.process([1])) == [5]
    assert len(CALLS) == before + 3


def test_map_modes(tmp_path: Path) -> None:
    list(Mapper(coeff=6, infra={"folder": tmp_path}).process([1, 2]))
    before = len(CALLS)
    readonly = Mapper(coeff=6, infra={"folder": tmp_path, "mode": "read-only"})
    assert list(readonly.process([2, 1])) == [12, 6]
    with pytest.raises(RuntimeError, match=r"read-only and 1/2 items missing \('3'\)"):
        list(readonly.process([1, 3]))
    assert len(CALLS) == before
    forced = Mapper(coeff=6, infra={"folder": tmp_path, "mode": "force"})
    assert list(forced.process([1, 2])) == [6, 12]
    assert len(CALLS) == before + 2
    assert list(forced.process([1, 2, 3])) == [6, 12, 18]  # each uid forced once per instance
    assert len(CALLS) == before + 3


def test_forbid_single_item_computation(tmp_path: Path) -> None:
    obj = Mapper(coeff=7, infra={"folder": tmp_path, "forbid_single_item_computation": True})
    with pytest.raises(RuntimeError):
        list(obj.process([1]))
    assert list(obj.process([1, 2])) == [7, 14]
    assert list(obj.process([1])) == [7]  # cached: fine


def test_map_folder_parent_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="parent"):
        Mapper(infra={"folder": tmp_path / "missing" / "cache"})
    assert Mapper(infra={"folder": tmp_path / "cache"}).infra.folder == tmp_path / "cache"


def test_map_class_default_folder_parent_is_checked_at_every_creation(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()

    class DefaultFolder(pydantic.BaseModel):
        infra: MapInfra = MapInfra(folder=parent / "cache")

        @infra.apply(item_uid=str)
        def process(self, items: tp.Sequence[int]) -> tp.Iterator[int]:
            yield from items

    assert DefaultFolder().infra.folder == parent / "cache"
    parent.rmdir()
    with pytest.raises(ValueError, match="parent"):
        DefaultFolder()


def _shortened(uid: str, max_length: int) -> str:
    c = (max_length - 13 - len(str(len(uid)))) // 2
    digest = hashlib.md5(uid.encode("utf8")).hexdigest()[:8]
    return f"{uid[:c]}..{len(uid) - 2 * c}..{uid[-c:]}-{digest}"


def test_item_uid_shortening(tmp_path: Path) -> None:
    obj = LongUids(infra={"folder": tmp_path})
    item_uid = obj.infra.item_uid
    assert item_uid(40) == "u" * 40
    long = "u" * 100
    short = item_uid(100)
    assert short == _shortened(long, 40)
    assert short.startswith("u" * 12 + "..76..") and len(short) <= 40
    assert item_uid.shorten(short) == short  # idempotent
    assert list(obj.process([100, 3])) == [100, 3]
    assert set(obj.infra.cache_dict.keys()) == {short, "uuu"}
    # a warm call (values held in RAM) finds the long item under its shortened uid
    assert list(obj.process([3, 100, 100])) == [3, 100, 100]
    assert set(obj.infra.cache_dict.keys()) == {short, "uuu"}
    # the default maximum is 256
    default = Mapper(infra={"folder": tmp_path}).infra.item_uid
    assert default.shorten("x" * 256) == "x" * 256
    assert default.shorten("x" * 300) == _shortened("x" * 300, 256)
    assert NoShortening().infra.item_uid(1000) == "u" * 1000


class _SubForDict(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    x: int = 1


class _DictOfSubs(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    subs: dict[str, _SubForDict] = {}
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return len(self.subs)


def test_iter_cached_skips_a_config_that_does_not_read_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A dict key holding a "." reads back from config.yaml as nesting (it does not
    validate): that folder is skipped with a warning, the others still come."""
    _DictOfSubs(subs={"k.dot": {"x": 3}}, infra={"folder": tmp_path}).process()
    _DictOfSubs(subs={"plain": {"x": 4}}, infra={"folder": tmp_path}).process()
    found = list(_DictOfSubs(infra={"folder": tmp_path}).infra.iter_cached())
    assert [obj.subs for obj in found] == [{"plain": _SubForDict(x=4)}]
    assert "does not validate" in caplog.text


class _Removing(pydantic.BaseModel):
    lr: float = 0.1
    wd: float = 0.0  # (removed from the class below)
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def train(self) -> float:
        return self.lr


def test_iter_cached_lists_configs_of_a_field_removed_since_at_its_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After a field was removed from the class, a call reused the configs cached with it
    at its default (out of their uid), but iter_cached() listed none of them ("Extra
    inputs are not permitted")."""
    _Removing(lr=0.2, infra={"folder": tmp_path}).train()
    _Removing(lr=0.3, wd=0.5, infra={"folder": tmp_path}).train()  # (wd in its uid)

    class _Removing2(pydantic.BaseModel):  # today's class: wd removed
        lr: float = 0.1
        infra: TaskInfra = TaskInfra(version="1")

        @infra.apply
        def train(self) -> float:
            raise AssertionError("cached: not computed again")

    _Removing2.__name__ = _Removing2.__qualname__ = "_Removing"  # (the same step folder)
    today = _Removing2(lr=0.2, infra={"folder": tmp_path})
    assert (
        today.infra.uid_folder() == _Removing(lr=0.2, infra={"folder": tmp_path}).infra.uid_folder()
    )
    assert today.train() == 0.2  # (a call reuses it)
    found = list(_Removing2(infra={"folder": tmp_path}).infra.iter_cached())
    assert [obj.lr for obj in found] == [0.2]  # (lr=0.3 had wd=0.5: not today's config)
    assert found[0].train() == 0.2
    assert "does not validate" in caplog.text  # (the other one, skipped)


class _Batch(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    size: int = 32


class _SizedSweep(pydantic.BaseModel):
    lr: float = 0.1
    data: _Batch = _Batch()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def train(self) -> float:
        return self.lr * self.data.size


def test_iter_cached_after_a_default_changed_does_not_compute_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """config.yaml holds every value: after a sub-config's class default changed, the
    configs rebuilt from it held the old default as a value, named other folders, and
    their calls computed the whole sweep again there, silently. They keep the values they
    were computed with (a table of results), in mode read-only, with a warning; configs
    that still name their folder, or its legacy name, are listed as before, unfrozen."""
    for lr in (0.1, 0.2):
        assert _SizedSweep(lr=lr, infra={"folder": tmp_path}).train() == lr * 32
    listed = list(_SizedSweep(infra={"folder": tmp_path}).infra.iter_cached())
    assert sorted(obj.lr for obj in listed) == [0.1, 0.2]
    assert {obj.infra.mode for obj in listed} == {"cached"}
    listed[0].infra.mode = "force"  # (unfrozen: listing computed no uid on it)

    class _Batch2(pydantic.BaseModel):  # today's class: another default
        model_config = pydantic.ConfigDict(extra="forbid")
        size: int = 64

    class _SizedSweep2(pydantic.BaseModel):
        lr: float = 0.1
        data: _Batch2 = _Batch2()
        infra: TaskInfra = TaskInfra(version="1")

        @infra.apply
        def train(self) -> float:
            raise AssertionError("not computed again")

    _SizedSweep2.__name__ = _SizedSweep2.__qualname__ = "_SizedSweep"  # (the same step folder)
    step = _SizedSweep(infra={"folder": tmp_path}).infra.uid_folder().parent
    folders = sorted(p.name for p in step.iterdir())
    with caplog.at_level("WARNING", logger="exca"):
        found = list(_SizedSweep2(infra={"folder": tmp_path}).infra.iter_cached())
    assert sorted((obj.lr, obj.data.size) for obj in found) == [(0.1, 32), (0.2, 32)]
    assert {obj.infra.mode for obj in found} == {"read-only"}
    assert "in mode read-only: rebuilt from its config.yaml" in caplog.text
    with pytest.raises(RuntimeError, match="read-only"):
        found[0].train()
    assert sorted(p.name for p in step.iterdir()) == folders  # nothing new


# --- folders written by the reference exca ----------------------------------------------------
def test_task_folder_written_by_the_reference(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Same folder names, other payloads: the reference's job.pkl is left alone, the result
    computed again, with a one-line warning."""
    task = Task(param=3, infra={"folder": tmp_path})
    folder = task.infra.uid_folder()
    assert folder is not None
    folder.mkdir(parents=True)
    (folder / "job.pkl").write_bytes(b"a pickled submitit job of the reference")
    with caplog.at_level("WARNING", logger="exca"):
        assert task.process() == 30
    (record,) = [r for r in caplog.records if "job.pkl" in r.getMessage()]
    assert "\n" not in record.getMessage() and "left alone" in record.getMessage()
    assert (folder / "job.pkl").read_bytes() == b"a pickled submitit job of the reference"
    assert Task(param=3, infra={"folder": tmp_path}).process() == 30  # cached now


def test_map_folder_written_by_the_reference(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mapper = Mapper(coeff=2, infra={"folder": tmp_path})
    folder = mapper.infra.uid_folder()
    assert folder is not None
    folder.mkdir(parents=True)
    foreign = folder / "vm-123-info.jsonl"  # the reference's index file name and format
    line = b'{"#key":"1","#type":"MemmapArray","filename":"data/vm-123.data","offset":0}\n'
    foreign.write_bytes(line)
    before = CALLS.count(("map", 1))
    with caplog.at_level("WARNING", logger="exca"):
        assert list(mapper.process([1, 2])) == [2, 4]
        assert list(Mapper(coeff=2, infra={"folder": tmp_path}).process([1, 2])) == [2, 4]
    warnings = [r.getMessage() for r in caplog.records if foreign.name in r.getMessage()]
    assert len(warnings) == 1 and "left alone" in warnings[0]  # once per folder
    assert foreign.read_bytes() == line
    assert CALLS.count(("map", 1)) == before + 1  # computed once, then read from our entries


@pytest.mark.timeout(60)
def test_relative_folder_created_from_scratch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """folder="cache/run1" on a first run, in the working directory (it hung)."""
    monkeypatch.chdir(tmp_path)
    assert Task(param=2, infra={"folder": "cache/run1"}).process() == 20
    assert list(Mapper(infra={"folder": "cache/run2"}).process([1, 2])) == [1, 2]
    assert (tmp_path / "cache" / "run1").is_dir() and (tmp_path / "cache" / "run2").is_dir()


class OptionalInfra(pydantic.BaseModel):
    x: int = 1
    infra: TaskInfra | None = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return self.x


class Fits(pydantic.BaseModel):
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def fit(self, feats: list[int], scale: int = 1) -> int:
        return scale * sum(feats)


def test_a_misspelt_input_is_named() -> None:
    """A misspelt keyword with a required input left out: the error names the misspelt
    one (it said the required one was missing)."""
    with pytest.raises(
        TypeError,
        match=r"Fits\.fit: got an unexpected keyword argument "
        r"'features' \(its parameters: feats, scale\)",
    ):
        Fits().fit.node(features=[1, 2])
    with pytest.raises(TypeError, match=r"missing a required argument: 'feats'"):
        Fits().fit.node(scale=2)
    assert Fits().fit(feats=[1, 2], scale=2) == 6


def test_misuse_gets_a_clear_error(tmp_path: Path) -> None:
    """Wrong arguments raise an error naming them and what to do, not an internal
    AttributeError; nothing is computed or submitted."""
    import exca.graph
    from exca import helpers

    with pytest.raises(TypeError, match=r"OptionalInfra\.infra is None: give it an infra"):
        OptionalInfra(infra=None).process()
    task = Task(param=9123, infra={"folder": tmp_path})
    with pytest.raises(TypeError, match=r"pass them one by one: run\(\*nodes\)"):
        exca.graph.run([task.process.node()])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"got generator .*pass them one by one"):
        exca.graph.plan(n for n in [task.process.node()])  # type: ignore[arg-type]
    for function in (exca.graph.result, exca.graph.status, exca.graph.job, exca.graph.clear):
        with pytest.raises(TypeError, match=r"got int 5: get one with obj.method.node"):
            function(5)
    with pytest.raises(ValueError, match="got 2 positional arguments: merge them into one"):
        task.infra.clone_obj({"param": 3}, {"param": 4})
    with pytest.raises(TypeError, match="got dict: append Task"), task.infra.job_array() as array:
        array.append({"param": 3})
    fine = Task(param=9124, infra={"folder": tmp_path})
    with pytest.raises(ValueError, match="max_workers=0"), task.infra.job_array(0) as array:
        array.append(fine)
    with pytest.raises(TypeError, match="clone_obj takes a dict of changes"):
        task.infra.clone_obj([("param", 3)])
    with pytest.raises(TypeError, match="from_args takes a list of arguments"):
        ConfDict.from_args("--x=1")  # type: ignore[arg-type]
    with pytest.raises(pydantic.ValidationError, match="foldr"):
        helpers.with_infra(foldr=str(tmp_path))(lambda a: a)
    for decorator in (property, classmethod, staticmethod):
        with pytest.raises(TypeError, match=f"got a {decorator.__name__}: put @infra.apply"):

            class Wrong(pydantic.BaseModel):
                infra: TaskInfra = TaskInfra()

                @infra.apply  # type: ignore[arg-type]
                @decorator  # type: ignore[misc]
                def f(self) -> int:
                    return 1

    # (a partial failed on its missing __name__; a class was taken as a method)
    with pytest.raises(TypeError, match=r"got a partial: put @infra\.apply"):

        class Partial(pydantic.BaseModel):
            infra: TaskInfra = TaskInfra()
            f = infra.apply(functools.partial(lambda self, a: a, a=1))

    with pytest.raises(TypeError, match=r"got a type: put @infra\.apply"):

        class Nested(pydantic.BaseModel):
            infra: TaskInfra = TaskInfra()

            @infra.apply  # type: ignore[arg-type]
            class Inner:
                pass

    with pytest.raises(TypeError, match=r"use a list of field names \(\['param'\]\)"):

        class Excluding(pydantic.BaseModel):
            param: int = 1
            infra: TaskInfra = TaskInfra()

            @infra.apply(exclude_from_cache_uid="param")
            def f(self) -> int:
                return 1

    with pytest.raises(RuntimeError) as info:  # (Python wraps errors of __set_name__)

        class NotPydantic:
            infra = TaskInfra()

            @infra.apply
            def f(self) -> int:
                return 1

    assert "is not a pydantic.BaseModel subclass" in str(info.value.__cause__)
    assert not {("task", 9123), ("task", 9124)} & set(CALLS) and not list(tmp_path.iterdir())


READ_ONLY_SCRIPT = """
import sys

from test_task_api import CALLS, Task

task = Task(param=3, infra={"folder": sys.argv[1]})
try:
    task.process()
except OSError as error:
    print("ERROR", error)
print("CALLS", CALLS)
"""


def test_a_cache_folder_that_cannot_be_written_is_named(tmp_path: Path) -> None:
    """A read-only cache folder: the error names infra.folder and the ways out (it was a
    bare OSError from deep inside), raised before computing."""
    import os
    import shutil
    import subprocess
    import sys

    folder = tmp_path / "cache"
    folder.mkdir()
    script = [sys.executable, "-c", READ_ONLY_SCRIPT, str(folder)]
    if os.geteuid() != 0:  # (chmod does not stop root)
        folder.chmod(0o500)
    elif shutil.which("unshare") and shutil.which("mount"):  # a read-only bind mount
        mount = f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} {folder}"
        script = ["unshare", "-m", "sh", "-c", f'{mount} && exec "$@"', "sh", *script]
    else:
        pytest.skip("root without unshare/mount: no way to make a folder read-only")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run(script, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"Cannot write into the cache folder {folder} (infra.folder)" in proc.stdout
    assert "mode='read-only'" in proc.stdout
    assert "CALLS []" in proc.stdout  # refused before computing


class Listing(pydantic.BaseModel):
    """A result large enough for its own file under data/."""

    size: int = 100_000
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> list[int]:
        CALLS.append(("listing", self.size))
        return list(range(self.size))


UNREADABLE_SCRIPT = """
import sys

from test_task_api import CALLS, Listing

try:
    Listing(infra={"folder": sys.argv[1]}).process()
except OSError as error:
    print("ERROR", type(error).__name__, error, *getattr(error, "__notes__", []), sep="\\n")
print("CALLS", CALLS)
"""


def test_a_result_file_this_process_may_not_read_says_so(tmp_path: Path) -> None:
    """A cached result whose file this process may not read (another user's, made with
    a umask of 077, or chmodded): the PermissionError's note said "if its file was
    changed outside exca, mode='force' computes it again", hours of computing where a
    chmod does. Now it says that the file is intact and how to give read access; nothing
    is computed."""
    import shutil
    import subprocess
    import sys

    assert len(Listing(infra={"folder": tmp_path}).process()) == 100_000
    (payload,) = tmp_path.rglob("data/*.pkl")
    payload.chmod(0)
    script = [sys.executable, "-c", UNREADABLE_SCRIPT, str(tmp_path)]
    if os.geteuid() == 0:  # (root reads any file: without that capability, as a user)
        if not shutil.which("setpriv"):
            pytest.skip("root without setpriv: no way to make a file unreadable")
        caps = "-dac_override,-dac_read_search"
        script = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *script]
    paths = [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    proc = subprocess.run(script, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = proc.stdout
    assert "PermissionError" in said and str(payload) in said, said
    assert "chmod a+r" in said and "computing it again is not needed" in said, said
    assert "mode='force'" not in said, said
    assert "CALLS []" in said, said
    payload.chmod(0o644)
    assert len(Listing(infra={"folder": tmp_path}).process()) == 100_000


def _reopen(path: str) -> tp.Any:
    raise PermissionError(13, "Permission denied", path)  # (a file of the value's own)


class _Handle:
    """A value whose unpickling opens a file of its own (outside the cache)."""

    def __reduce__(self) -> tp.Any:
        return (_reopen, ("/nonexistent/secret.key",))


class Reopening(pydantic.BaseModel):
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> tp.Any:
        return _Handle()


def test_a_permission_error_of_the_values_own_file_is_not_said_intact(tmp_path: Path) -> None:
    """A PermissionError raised by a value's own unpickling code (a file of its own): not
    the cache's file, so not said "intact, its owner can give read access"."""
    with pytest.raises(PermissionError) as info:  # (a call returns what the cache reads)
        Reopening(infra={"folder": tmp_path}).process()
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "computing it again is not needed" not in notes, notes
    assert "mode='force' computes it again" in notes, notes


def test_a_cache_folder_that_cannot_be_made_is_named() -> None:
    """A folder that cannot be created there (under /proc): the same named error (it was
    a bare FileNotFoundError), before computing."""
    if not Path("/proc").is_dir():
        pytest.skip("no /proc on this system")
    before = list(CALLS)
    with pytest.raises(FileNotFoundError, match=r"Cannot write into the cache folder /proc/"):
        Task(param=3, infra={"folder": "/proc/exca-cannot-be-made"}).process()
    assert before == CALLS


def test_a_cache_folder_under_a_file_is_named(tmp_path: Path) -> None:
    """A typo making the folder a path under a file: status() and the call raised a bare
    NotADirectoryError naming an internal file (a probe)."""
    (tmp_path / "a_file").write_text("not a folder")
    before = list(CALLS)
    task = Task(param=3, infra={"folder": tmp_path / "a_file" / "cache"})
    assert task.infra.status() == "not submitted"
    with pytest.raises(NotADirectoryError, match=r"Cannot write into the cache folder .*a_file"):
        task.process()
    assert before == CALLS


def test_a_cache_folder_that_is_a_dangling_symlink_says_so(tmp_path: Path) -> None:
    """A folder that is a symlink to a folder not there (a scratch disk unmounted, a link
    made on another machine): the error said only "No such file or directory"."""
    (tmp_path / "cache").symlink_to(tmp_path / "unmounted")
    before = list(CALLS)
    with pytest.raises(FileNotFoundError, match=r"it is a symlink to .*unmounted, not there"):
        Task(param=3, infra={"folder": tmp_path / "cache"}).process()
    assert before == CALLS


def test_names_too_long_for_a_file_system_are_refused_naming_what_to_shorten(
    tmp_path: Path,
) -> None:
    """A folder or a version making a name longer than 255 bytes raised a bare OSError
    "File name too long" at the first call, from a read of an internal file."""
    with pytest.raises(pydantic.ValidationError, match=r"folder: the name 'xxx.*\(300 bytes\)"):
        TaskInfra(folder=tmp_path / ("x" * 300))
    before = list(CALLS)
    task = Task(param=3, infra={"folder": tmp_path, "version": "v" * 300})
    with pytest.raises(ValueError, match=r"shorter infra.version \(300 characters\)"):
        task.process()
    assert before == CALLS and not list(tmp_path.iterdir())
    # without a folder, nothing is named after it: the version is fine
    assert Task(param=3, infra={"version": "v" * 300}).process() is not None


def test_a_property_above_apply_is_explained() -> None:
    class Propertied(pydantic.BaseModel):
        infra: TaskInfra = TaskInfra(version="1")

        @property
        @infra.apply
        def value(self) -> int:
            return 1

    with pytest.raises(TypeError, match=r"a decorator above @infra.apply, e.g. @property"):
        Propertied().value  # noqa: B018


def test_calling_the_method_on_the_class_with_a_config_says_how_to_call_it() -> None:
    """``Class.method(obj)`` blamed a decorator above @infra.apply that was not there."""
    with pytest.raises(TypeError, match=r"Task.process\(obj\).*call it on the config, obj.process"):
        Task.process(Task())


def test_calling_the_method_on_the_class_says_to_call_it_on_a_config() -> None:
    """(it spoke of a decorator above @infra.apply)"""
    with pytest.raises(TypeError, match=r"Task.process was called on the class: call it on a "):
        Task.process()


def test_setting_a_frozen_infra_suggests_a_clone(tmp_path: Path) -> None:
    task = Task(infra={"folder": tmp_path})
    task.process()
    with pytest.raises(RuntimeError, match=r"clone_obj\(\{'infra.mode': 'force'\}\)"):
        task.infra.mode = "force"
    clone = task.infra.clone_obj({"infra.mode": "force"})
    assert clone.infra.mode == "force" and clone.process() == 10


def test_folder_names_environment_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "$SCRATCH/cache" from a yaml file: expanded (a literal "./$SCRATCH" folder was
    created); an unset variable is an error naming it."""
    monkeypatch.setenv("EXCA_TEST_SCRATCH", str(tmp_path))
    task = Task(infra={"folder": "$EXCA_TEST_SCRATCH/cache"})
    assert task.infra.folder == tmp_path / "cache"
    assert Task(infra={"folder": "${EXCA_TEST_SCRATCH}/c2"}).infra.folder == tmp_path / "c2"
    monkeypatch.delenv("EXCA_TEST_SCRATCH")
    with pytest.raises(pydantic.ValidationError, match=r"\$EXCA_TEST_SCRATCH, which is not set"):
        Task(infra={"folder": "$EXCA_TEST_SCRATCH/cache"})
    literal = tmp_path / "cache$EXCA_TEST_SCRATCH"  # an existing folder: its name, as is
    literal.mkdir()
    assert Task(infra={"folder": str(literal)}).infra.folder == literal


def test_class_default_folder_naming_an_unset_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared class default folder="$SCRATCH/cache" on a laptop without $SCRATCH: the
    class could not even be defined (the module failed at import, also for a user giving
    another folder). The variable is read when a config is created: an error then."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EXCA_TEST_SCRATCH", raising=False)

    class Shared(pydantic.BaseModel):
        x: int = 1
        infra: TaskInfra = TaskInfra(folder="$EXCA_TEST_SCRATCH/cache")

        @infra.apply
        def process(self) -> int:
            return 2 * self.x

    assert Shared(x=2, infra={"folder": tmp_path / "mine"}).process() == 4
    assert list((tmp_path / "mine").iterdir())
    with pytest.raises(pydantic.ValidationError, match=r"\$EXCA_TEST_SCRATCH, which is not set"):
        Shared(x=3)
    monkeypatch.setenv("EXCA_TEST_SCRATCH", str(tmp_path / "scratch"))
    shared = Shared(x=3)
    assert shared.infra.folder == tmp_path / "scratch/cache"
    assert shared.process() == 6 and list((tmp_path / "scratch/cache").iterdir())
    assert not list(tmp_path.glob("$*"))  # (no folder named "$EXCA_TEST_SCRATCH")
    monkeypatch.delenv("EXCA_TEST_SCRATCH")
    mine = Shared(x=4, infra={"folder": tmp_path / "mine"})
    with pytest.raises(ValueError, match=r"\$EXCA_TEST_SCRATCH, which is not set"):
        mine.infra.folder = "$EXCA_TEST_SCRATCH/other"
    assert mine.infra.folder == tmp_path / "mine" and mine.process() == 8

    class Settings(pydantic.BaseModel):  # (an infra no method applies: never linked)
        infra: TaskInfra = TaskInfra(folder="$EXCA_TEST_SCRATCH/cache")

    with pytest.raises(ValueError, match=r"\$EXCA_TEST_SCRATCH, which is not set"):
        os.makedirs(Settings().infra.folder)  # (it made a folder named "$EXCA_TEST_SCRATCH")
    assert not list(tmp_path.glob("$*"))


@pytest.mark.timeout(120)
def test_logs_names_environment_variables_expanded_when_a_job_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """logs "$SCRATCH/logs/%j" made a folder named "$SCRATCH" in the cwd (a probe); then,
    expanded when the config was built, a class default naming a variable unset on a
    laptop could not even be defined, with cluster=None (a review). It is expanded when a
    job is sent: an unset variable is an error of that call, and a problem of its plan."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EXCA_TEST_SCRATCH", raising=False)

    class Scratch(pydantic.BaseModel):
        infra: TaskInfra = TaskInfra(version="1", logs="$EXCA_TEST_SCRATCH/logs/%j")

        @infra.apply
        def process(self) -> int:
            return 12

    assert Scratch(infra={"folder": tmp_path / "here"}).process() == 12  # (no job: no logs)
    local = Scratch(infra={"folder": tmp_path / "local", "cluster": "local"})
    with pytest.raises(ValueError, match=r"logs=.*\$EXCA_TEST_SCRATCH, which is not set"):
        local.process()
    [entry] = exca.graph.plan(local.process.node()).entries
    assert any("$EXCA_TEST_SCRATCH, which is not set" in p for p in entry.problems)
    monkeypatch.setenv("EXCA_TEST_SCRATCH", str(tmp_path / "scratch"))
    local = Scratch(infra={"folder": tmp_path / "local", "cluster": "local"})
    assert not exca.graph.plan(local.process.node()).entries[0].problems
    assert local.process() == 12
    assert list((tmp_path / "scratch/logs").iterdir())  # (the job's log folder)
    assert not list(tmp_path.glob("$*"))  # (no folder named "$EXCA_TEST_SCRATCH")
    home = Scratch(infra={"folder": tmp_path / "home", "cluster": "local", "logs": "~{user}/x/%j"})
    assert "~{user}" in str(home.infra.logs)  # ({user} is filled first, then ~user expanded)
    assert not exca.graph.plan(home.process.node()).entries[0].problems
    # a cache folder holding a "$": only the user's logs text is expanded (the folder's
    # name was taken for a variable: every job failed, or logged elsewhere; a review)
    dollar = tmp_path / "c$EXCA_TEST_NOPE"
    dollar.mkdir()  # (an existing folder: its name, as is)
    in_dollar = Scratch(infra={"folder": dollar, "cluster": "local", "logs": "{folder}/logs/%j"})
    assert in_dollar.process() == 12 and list(dollar.glob("*/logs/*"))
    # an unset variable in a node of a later wave: refused before anything is sent (the
    # run sent the first wave, then raised hours later; a review)
    monkeypatch.delenv("EXCA_TEST_SCRATCH")
    first = Scratch(infra={"folder": tmp_path / "first", "cluster": "local", "logs": "{folder}/%j"})
    later = LogsBelow(infra={"folder": tmp_path / "later", "cluster": "local"})
    with pytest.raises(ValueError, match=r"Cannot submit.*\$EXCA_TEST_SCRATCH, which is not set"):
        exca.graph.run(later.process.node(first.process.node()))
    assert not (tmp_path / "first").exists() or not list((tmp_path / "first").glob("*/jobs/*"))


def test_a_cache_folder_holding_a_submitit_placeholder_is_refused_for_jobs(tmp_path: Path) -> None:
    """A cache folder whose name holds "%j" (or %A, %a, %t): submitit replaces them in the
    whole path of a job's log folder ({folder}/logs/{user}/%j), so the job looked for its
    work in ".../c<job id>/..." and died, said "its process died (killed, out of memory,
    or sys.exit/os._exit in the method)" (a new user's probe). It is a problem of the
    plan and refused before anything is sent, naming the folder and what to do; computed
    without a job it is fine, and so is a logs setting that does not use {folder}."""
    folder = tmp_path / "c%j"
    local = Scratchless(infra={"folder": folder, "cluster": "local"})
    [entry] = exca.graph.plan(local.process.node()).entries
    assert any("holds '%j', which submitit replaces" in p for p in entry.problems), entry
    with pytest.raises(ValueError, match=r"Cannot submit.*holds '%j', which submitit replaces"):
        local.process()
    assert not list(tmp_path.glob("c[0-9]*"))  # (no job sent: no folder of its id)
    assert Scratchless(infra={"folder": folder}).process() == 12  # (no job: no logs)
    elsewhere = {"folder": folder, "cluster": "local", "logs": str(tmp_path / "logs/%j")}
    assert Scratchless(x=1, infra=elsewhere).process() == 13
    assert list((tmp_path / "logs").iterdir())


class Scratchless(pydantic.BaseModel):
    x: int = 0
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return 12 + self.x


class LogsBelow(pydantic.BaseModel):
    infra: TaskInfra = TaskInfra(version="1", logs="$EXCA_TEST_SCRATCH/logs/%j")

    @infra.apply
    def process(self, x: int = 0) -> int:
        return x + 1


class Prepared(pydantic.BaseModel):
    """process() calls prep(), which fails: one failure, logged once."""

    model_config = pydantic.ConfigDict(extra="forbid")
    prep_infra: TaskInfra = TaskInfra(version="1")
    infra: TaskInfra = TaskInfra(version="1")

    @prep_infra.apply
    def prep(self) -> int:
        raise ValueError("bad prep")

    @infra.apply
    def process(self) -> int:
        return self.prep() + 1


def test_a_task_failure_is_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """SPEC §10: logged with its traceback, then cached and re-raised (a job array goes
    on without raising it). A task failing because a task it calls failed logs nothing
    more (it was logged twice)."""
    import logging

    obj = Prepared(infra={"folder": tmp_path}, prep_infra={"folder": tmp_path})
    with (
        caplog.at_level(logging.WARNING, logger="exca"),
        pytest.raises(ValueError, match="bad prep"),
    ):
        obj.process()
    logged = [r for r in caplog.records if "failed (its error is cached)" in r.getMessage()]
    assert len(logged) == 1 and "Prepared.prep" in logged[0].getMessage()
    assert logged[0].exc_info is not None and "bad prep" in str(logged[0].exc_info[1])
    assert obj.infra.status() == "failed"  # (process: the same error, cached too)


class _Pickled(pydantic.BaseModel):
    x: int = 1
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        return f"base{self.x}"


class _PickledOverride(_Pickled):
    def process(self) -> str:  # type: ignore[override]
        return "override:" + super().process()


def test_a_pickled_bound_method_is_the_same_method() -> None:
    """(pickling obj.method looks it up again on the instance: super().method came back
    as the subclass's method, another function and cache folder; a review)"""
    obj = _PickledOverride(x=5)
    assert pickle.loads(pickle.dumps(obj.process))() == "override:base5"
    base_method = super(_PickledOverride, obj).process
    assert pickle.loads(pickle.dumps(base_method))() == "base5"
    assert pickle.loads(pickle.dumps(_Pickled(x=2).process))() == "base2"


LOGGING_SCRIPT = """
import logging, sys
import pydantic, exca

if sys.argv[2] == "configured":
    logging.basicConfig(level=logging.INFO, format="APP %(name)s: %(message)s")


class Failing(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        raise ValueError("boom")


try:
    Failing(infra={"folder": sys.argv[1]}).run()
except ValueError:
    pass
"""


@pytest.mark.parametrize("logging_setup", ["none", "configured"])
def test_log_lines_appear_once(tmp_path: Path, logging_setup: str) -> None:
    """exca's own log handler writes its lines, unless the application configured logging
    (handlers on the root logger): then they go through those only (they came twice)."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", LOGGING_SCRIPT, str(tmp_path), logging_setup],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [x for x in proc.stderr.splitlines() if "failed (its error is cached)" in x]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("APP exca: ") is (logging_setup == "configured")


RESULT_MODULE = """
import dataclasses, sys
import pydantic
import exca


@dataclasses.dataclass
class {name}:
    score: float


class Exp(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> {name}:
        return {name}(score=0.5)


if __name__ == "__main__":
    try:
        print(Exp(infra={{"folder": sys.argv[1]}}).fit())
    except Exception as error:
        print(type(error).__name__, error, getattr(error, "__notes__", []))
"""


def test_a_result_whose_class_was_renamed_says_so(tmp_path: Path) -> None:
    """A cached result holding an instance of a class renamed since raised pickle's bare
    AttributeError ("Can't get attribute 'Metrics'"), nothing saying what to do."""
    import subprocess
    import sys

    module = tmp_path / "resmod.py"

    def run(name: str) -> str:
        module.write_text(RESULT_MODULE.format(name=name))
        command = [sys.executable, str(module), str(tmp_path / "cache")]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    assert run("Metrics").startswith("Metrics(score=0.5)")
    out = run("Scores")  # (the class renamed: the cached result cannot be unpickled)
    assert out.startswith("AttributeError Can't get attribute 'Metrics'")
    assert "holds an object whose class cannot be found now: renamed" in out and "force" in out


NOTEBOOK_SCRIPT = """
import functools
import sys
import pydantic
import exca


def logged(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


class Experiment(pydantic.BaseModel):
    seed: int = 0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    @logged
    def train(self) -> str:
        {body}


if __name__ == "__main__":
    cluster = None if sys.argv[2] == "none" else sys.argv[2]
    for seed in map(int, sys.argv[3].split(",")):
        obj = Experiment(seed=seed, infra={{"folder": sys.argv[1], "cluster": cluster}})
        print(obj.train() if sys.argv[4] == "call" else obj.train.node().result())
        print(obj.train())
"""


def test_a_result_of_other_code_of_a_main_class_warns(tmp_path: Path) -> None:
    """Two notebooks (or scripts) defining a class of the same name share its cache folder
    (`__main__.Experiment.train,1`), as does a method edited and run again: each silently
    got what the other cached. A result of a `__main__` method records its code's digest
    (the decorated function's, not a wrapper's); reusing one of other code warns, once per
    method."""
    import subprocess
    import sys

    def run(
        body: str, cluster: str = "none", seeds: str = "0", how: str = "call"
    ) -> subprocess.CompletedProcess[str]:
        script = tmp_path / "notebook.py"
        script.write_text(NOTEBOOK_SCRIPT.format(body=body))
        command = [sys.executable, str(script), str(tmp_path / "cache"), cluster, seeds, how]
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)

    warning = "reusing a result computed by other code of Experiment.train"
    first = run('return "a CNN"', seeds="0,1,2")
    assert first.stdout.split() == ["a", "CNN"] * 6 and warning not in first.stderr
    other = run('return "a transformer"', seeds="0,1,2")  # (another notebook's, or edited)
    assert other.stdout.split() == ["a", "CNN"] * 6  # (the cache: as documented)
    assert other.stderr.count(warning) == 1, other.stderr  # (once for the 3 configs)
    assert "bump the infra's version" in other.stderr
    assert warning in run('return "a transformer"', how="node").stderr  # (a graph node's)
    again = run('"A docstring."\n        return "a CNN"')  # the same code (a docstring aside)
    assert warning not in again.stderr
    # computed in a job (the class pickled by value): the same digest as here
    assert run('return "a CNN"', cluster="local", seeds="5").stdout.split()[:2] == ["a", "CNN"]
    assert warning not in run('return "a CNN"', seeds="5").stderr
    assert warning in run('return str("a CNN")', seeds="5").stderr  # (other code)


NOTEBOOK_OUTPUT_SCRIPT = """
import sys
import threading
import typing as tp
import pydantic
import exca

{output}


class Experiment(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def train(self) -> tp.Any:
        return {value}


class Features(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def embed(self, items: list[int]) -> tp.Iterator[tp.Any]:
        for _ in items:
            yield {value}


if __name__ == "__main__":
    if sys.argv[2] == "task":
        print(Experiment(infra={{"folder": sys.argv[1]}}).train())
    else:
        print(list(Features(infra={{"folder": sys.argv[1]}}).embed([1, 2])))
"""


def test_a_result_holding_a_class_another_notebook_lacks_is_not_said_a_cached_error(
    tmp_path: Path,
) -> None:
    """A notebook caches results holding an object of its own class (a pydantic model of
    its __main__); another notebook, with a config class of the same name but not that
    class, calls it (a probe). The task's AttributeError had the note "this error is
    cached, raised by other code of Experiment.train (edited since): mode='retry'
    computes it again": it is a result, not an error, and retry computes nothing; a map
    item's error had no note at all. Both now say that a class cannot be found, and what
    to do."""
    import subprocess
    import sys

    def run(output: str, value: str, what: str) -> subprocess.CompletedProcess[str]:
        script = tmp_path / "notebook.py"
        script.write_text(NOTEBOOK_OUTPUT_SCRIPT.format(output=output, value=value))
        command = [sys.executable, str(script), str(tmp_path / "cache"), what]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    own = "class Stats(pydantic.BaseModel):\n    mean: float = 1.0"
    for what, item in (("task", "result"), ("map", "item '1'")):
        first = run(own, "Stats()", what)
        assert first.returncode == 0, first.stderr
        other = run("", "1.0", what)  # (another notebook: no Stats)
        assert other.returncode == 1
        assert "AttributeError: Can't get attribute 'Stats'" in other.stderr
        assert "this error is cached" not in other.stderr
        assert f"exca: the cached {item}" in other.stderr, other.stderr
        assert "holds an object whose class cannot be found now" in other.stderr


@pytest.mark.parametrize(
    "source, shown",
    [
        ("def run(self, **kw):\n    return repr(kw)", r"\*\*kw"),
        ("def run(self, *args):\n    return sum(args)", r"\*args"),
        ("def run(self, a, /, b=2):\n    return a + b", r"a \(positional-only\)"),
    ],
)
def test_a_task_method_with_unnamed_parameters_is_refused_at_class_definition(
    source: str, shown: str
) -> None:
    """**kw received kw={...} (a wrong result, cached), *args and positional-only
    parameters failed with a TypeError that was cached too: inputs go by name."""
    namespace: dict[str, tp.Any] = {}
    exec(source, namespace)
    with pytest.raises(TypeError, match=f"has the parameter {shown}: .* must be named ones"):

        class WithStars(pydantic.BaseModel):
            infra: exca.TaskInfra = exca.TaskInfra(version="1")
            run = infra.apply(namespace["run"])

    def run(self: tp.Any, /, a: int = 1) -> int:  # (self alone positional-only: fine)
        return a

    class SelfOnly(pydantic.BaseModel):
        infra: exca.TaskInfra = exca.TaskInfra(version="1")
        go = infra.apply(run)

    assert SelfOnly().go(a=3) == 3


def test_an_infra_method_over_an_abstract_method_keeps_the_class_instantiable() -> None:
    """(The infra method's getter is its function: a property whose getter is abstract
    makes its class abstract; an infra method never did.)"""
    import abc

    class Base(pydantic.BaseModel, abc.ABC):
        infra: TaskInfra = TaskInfra(version="1")

        @infra.apply
        @abc.abstractmethod
        def run(self) -> int:
            return 1

    assert Base().run() == 1


PIPED_SCRIPT = """
import sys
from pathlib import Path

import pydantic
import exca

CALLS = Path(sys.argv[1]) / "calls.txt"


class Talkative(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        with CALLS.open("a") as handle:
            handle.write("task\\n")
        print("progress " * 30_000)  # (beyond the pipe's buffer: written at once)
        return 3


class TalkativeMap(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def run(self, items: list[int]):
        for item in items:
            with CALLS.open("a") as handle:
                handle.write(f"item {item}\\n")
            print("progress " * 30_000)
            yield item * 2


folder = Path(sys.argv[1]) / "cache"
if sys.argv[2] == "task":
    print(Talkative(infra={"folder": folder}).run(), file=sys.stderr)
else:
    print(list(TalkativeMap(infra={"folder": folder}).run([1, 2])), file=sys.stderr)
"""


@pytest.mark.parametrize("kind", ["task", "map"])
def test_an_output_closed_by_its_reader_is_no_cached_error(tmp_path: Path, kind: str) -> None:
    """`python run.py | head`: once head left, a print of the method raised BrokenPipeError,
    cached as the method's error (a later call raised it again, until mode retry; a
    probe). Not the method's failure: nothing is cached, the next call computes."""
    import subprocess
    import sys

    script = tmp_path / "talk.py"
    script.write_text(PIPED_SCRIPT)
    command = [sys.executable, str(script), str(tmp_path), kind]
    closed = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert closed.stdout is not None and closed.stderr is not None
    closed.stdout.close()  # (the reader leaves at once, as head does)
    errors = closed.stderr.read().decode()
    assert closed.wait(timeout=60) != 0 and "BrokenPipeError" in errors, errors
    calls = tmp_path / "calls.txt"
    first = calls.read_text().splitlines()
    assert first == (["task"] if kind == "task" else ["item 1"])
    again = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert again.returncode == 0, again.stderr
    assert again.stderr.strip() == ("3" if kind == "task" else "[2, 4]")
    assert calls.read_text().splitlines()[len(first) :] == (
        ["task"] if kind == "task" else ["item 1", "item 2"]
    )


def test_folders_made_at_once_by_many_threads_under_a_new_root(tmp_path: Path) -> None:
    """Threads (or processes) making folders under one new root at the same time, with
    permissions, all succeed. Folders made under a temporary name then renamed into place
    (tried to close the window between a mkdir and its chmod) failed there: a rename over
    the empty folder another thread had just made removed it while that thread created
    its step folder inside ("No such file or directory"), seen as two maps called from
    two threads failing now and then."""
    from exca.storage import files

    for attempt in range(30):
        root = tmp_path / f"r{attempt}"
        start = threading.Barrier(6)
        errors: list[BaseException] = []

        def make(
            i: int,
            root: Path = root,
            start: threading.Barrier = start,
            errors: list[BaseException] = errors,
        ) -> None:
            start.wait()
            try:
                files.make_folder(root / "step" / f"node{i}", 0o777)
            except OSError as error:
                errors.append(error)

        threads = [threading.Thread(target=make, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert sorted(p.name for p in (root / "step").iterdir()) == [f"node{i}" for i in range(6)]
        assert (root / "step").stat().st_mode & 0o777 == 0o777


def test_folder_made_while_another_thread_repairs_it_ends_with_the_permissions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads making the same folder of a group's cache (permissions 0o770, umask
    0o022): the one that made it chmods it, the other finds it there, still 0o755 (before
    that chmod), and repairs it (files.repair). The repair added the bits it lacked to the
    mode it had seen (0o755 | 0o770): done after the maker's chmod, it gave back the bits
    that chmod removed, and the folder ended 0o775, readable by every user. Both now set
    the same mode: 0o770, whichever comes last."""
    import os
    import stat

    from exca.storage import files

    folder = tmp_path / "cache"
    made, seen, chmodded = threading.Event(), threading.Event(), threading.Event()
    chmod, chmod_folder = files.chmod, files.chmod_folder
    maker = threading.get_ident()

    def slow_chmod_folder(path: tp.Any, permissions: int, *parent_mode: tp.Any) -> None:
        if threading.get_ident() == maker:
            made.set()
            seen.wait(10)  # (the other thread has stat'ed the folder)
        chmod_folder(path, permissions, *parent_mode)
        if threading.get_ident() == maker:
            chmodded.set()

    def late_chmod(path: tp.Any, permissions: int) -> None:
        if threading.get_ident() != maker:
            seen.set()
            chmodded.wait(10)  # (after the maker's chmod)
        chmod(path, permissions)

    def other() -> None:
        made.wait(10)
        assert not files.make_folder(folder, 0o770)

    monkeypatch.setattr(files, "chmod_folder", slow_chmod_folder)
    monkeypatch.setattr(files, "chmod", late_chmod)
    thread = threading.Thread(target=other)
    previous = os.umask(0o022)
    try:
        thread.start()
        assert files.make_folder(folder, 0o770)
        thread.join()
    finally:
        os.umask(previous)
    monkeypatch.undo()
    assert seen.is_set() and chmodded.is_set()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o770


def test_a_private_empty_root_made_by_the_user_is_left_private(tmp_path: Path) -> None:
    """An empty cache root the user made with a mode of their own (0o700: mkdir -m 700,
    tempfile.mkdtemp) stays so: exca cannot tell an empty root from one a kill left
    without its permissions (with the umask's mode, which it repairs), but a mode other
    than the umask's is the user's choice. It was made 0o777 (the default permissions)
    by the first call: the user's private cache, open to every user."""
    import os
    import stat

    private, plain = tmp_path / "private", tmp_path / "plain"
    private.mkdir()
    plain.mkdir()
    previous = os.umask(0o022)
    try:
        private.chmod(0o700)
        plain.chmod(0o755)  # (the umask's mode: as a kill leaves it)
        assert ArrayTask(x=1, infra={"folder": private}).process()[0] == 1
        assert ArrayTask(x=1, infra={"folder": plain}).process()[0] == 1
    finally:
        os.umask(previous)
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert stat.S_IMODE(plain.stat().st_mode) == 0o777


def test_make_folder_of_a_path_with_a_trailing_slash(tmp_path: Path) -> None:
    """make_folder("a/b/") with "a" missing makes both, with the permissions, and says
    it made "a/b" (True: its caller then writes its files there as in a new folder). It
    took "a/b" for its own parent (os.path.dirname("a/b/")), made it as a missing parent,
    then found it there: False, as if another process had made it."""
    import os
    import stat

    from exca.storage import files

    previous = os.umask(0o022)
    try:
        assert files.make_folder(f"{tmp_path}/a/b/", 0o777)
        assert not files.make_folder(f"{tmp_path}/a/b/", 0o777)
        assert files.make_folder(f"{tmp_path}/c/", 0o777)
    finally:
        os.umask(previous)
    for name in ("a", "a/b", "c"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o777, name


def test_a_full_disk_before_the_first_call_names_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A disk full when a config's folder gets its yaml files: the bare "[Errno 28] No
    space left on device" named no folder (a temporary yaml file was left in it). Now the
    error names the folder and says what to do, nothing is left there but folders, and
    once space is back the call computes."""
    import errno

    task = Task(param=17, infra={"folder": tmp_path})

    def full(fd: int, data: tp.Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space left") as info:
        task.process()
    monkeypatch.undo()
    notes = getattr(info.value, "__notes__", [])
    folder = task.infra.uid_folder()
    assert any(str(folder) in n and "free space there" in n for n in notes), notes
    assert [p.name for p in folder.iterdir() if p.is_file()] == []
    assert task.process() == 170 and task.infra.status() == "completed"


def test_a_step_folder_another_user_kept_private_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared cache whose step folder another user made private (permissions=None under
    umask 0o077): a new config's call failed with a bare "Permission denied:
    '.../<uid>/full-uid.yaml'", a file that does not exist, saying neither which folder
    refused it nor what to do (real users, a probe). (This test runs as root, whom modes
    do not stop: the refusals are those a user meets there.)"""
    import errno
    import os

    Task(param=1, infra={"folder": tmp_path}).process()
    step = Task(param=2, infra={"folder": tmp_path}).infra.uid_folder().parent  # type: ignore
    open_, access = os.open, os.access

    def refused(path: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> int:
        if str(path).startswith(f"{step}/"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return open_(path, *args, **kwargs)

    def may_enter(path: tp.Any, mode: int, *args: tp.Any, **kwargs: tp.Any) -> bool:
        return str(path) != str(step) and access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", refused)
    monkeypatch.setattr(os, "access", may_enter)
    with pytest.raises(PermissionError) as info:
        Task(param=2, infra={"folder": tmp_path}).process()
    monkeypatch.undo()
    (note,) = getattr(info.value, "__notes__", [])
    owner = f"owner uid {os.getuid()}, mode {oct(step.stat().st_mode & 0o7777)}"
    assert note.startswith(f"this process may not read {step} ({owner}): another user's")
    assert "Ask its owner to open it (chmod -R a+rwX" in note


def test_a_step_folder_another_user_made_read_only_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared cache whose step folder another user made without the cache's permissions
    (0o755): a new config's call said "Cannot write into the cache folder <root>", a
    root this user may write to, not naming the folder that refused it (real users, a
    probe; this test runs as root, whom modes do not stop)."""
    import errno
    import os

    Task(param=1, infra={"folder": tmp_path}).process()
    step = Task(param=2, infra={"folder": tmp_path}).infra.uid_folder().parent  # type: ignore
    mkdir = os.mkdir

    def refused(path: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> None:
        if str(path).startswith(f"{step}/"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", refused)
    before = _count("task", 2)
    with pytest.raises(PermissionError) as info:
        Task(param=2, infra={"folder": tmp_path}).process()
    monkeypatch.undo()
    owner = f"owner uid {os.getuid()}, mode {oct(step.stat().st_mode & 0o7777)}"
    assert f"Cannot write into the cache folder {tmp_path} (infra.folder)" in str(info.value)
    assert f": Permission denied in {step} ({owner}), another user's folder" in str(info.value)
    assert _count("task", 2) == before  # (refused before computing)
