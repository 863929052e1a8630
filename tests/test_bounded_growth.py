"""Long-lived processes (a notebook open for days, a sweep driver looping over many
configs, a server answering from the cache): what exca keeps process-wide must not grow
with every config, folder or job it ever saw. Each test counts the entries of one such
store after many calls (not memory: counts say what grows, without timing noise)."""

from __future__ import annotations

import gc
import types
import typing as tp
import weakref
from pathlib import Path

import pydantic
import pytest

import exca
from exca.graph import worker
from exca.infra import identity


class Scaled(pydantic.BaseModel):
    factor: int = 1
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def scale(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            yield item * self.factor


def test_map_calls_of_many_configs_leave_no_entry_per_folder(tmp_path: Path) -> None:
    # a sweep making a new map config per call: each call registered its folder in a
    # per-thread dict (for nested calls of the same method) and never removed it
    before = len(worker._UNWRITTEN.by_folder)
    for factor in range(1, 31):
        assert list(Scaled(factor=factor, infra={"folder": tmp_path}).scale([1, 2])) == [
            factor,
            2 * factor,
        ]
    assert len(worker._UNWRITTEN.by_folder) == before
    assert not worker._UNWRITTEN.redoing


NOTEBOOK_CELL = """
import types
import typing as tp
import pydantic
import pytest
import exca


class Cell(pydantic.BaseModel):
    factor: int = 1
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def scale(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            yield item * self.factor
"""


def notebook_class(source: str, name: str) -> tp.Any:
    """A class defined in ``__main__``, as a notebook's cell or a script defines it."""
    namespace: dict[str, tp.Any] = {"__name__": "__main__"}
    exec(compile(source, "<cell>", "exec", dont_inherit=True), namespace)
    return namespace[name]


def test_item_checks_of_notebook_maps_keep_a_bounded_number_of_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a map of __main__ remembers which reused items it checked for other code, per
    # folder: one key per map config ever called, for good, before the bound
    from exca.graph import codeprint

    monkeypatch.setattr(codeprint, "_ITEMS_CHECKED", {})
    monkeypatch.setattr(codeprint, "_ITEMS_CHECKED_FOLDERS", 4, raising=False)
    cell = notebook_class(NOTEBOOK_CELL, "Cell")
    kept = cell(factor=1, infra={"folder": tmp_path})
    for factor in range(1, 11):
        obj = cell(factor=factor, infra={"folder": tmp_path})
        assert list(obj.scale([1, 2])) == [factor, 2 * factor]
        assert list(obj.scale([1, 2])) == [factor, 2 * factor]  # (reused: checked)
        assert list(kept.scale([1])) == [1]  # (forgotten at times: checked again)
    assert len(codeprint._ITEMS_CHECKED) == 4
    last = (str(obj.infra.uid_folder()), codeprint.digest(type(obj).scale))
    assert codeprint._ITEMS_CHECKED[last][1] == {"1", "2"}  # (the most recent are kept)


def test_slurm_liveness_memo_does_not_keep_every_job_it_looked_at(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # (a server reading a cache that Slurm jobs fill looks at each job's claim: the memo
    # of the answers, good for 2 s, kept one entry per job id ever asked)
    import shutil

    from exca.graph import registry

    clock = [1000.0]
    monkeypatch.setattr(registry, "time", types.SimpleNamespace(time=lambda: clock[0]))
    monkeypatch.setattr(registry, "queued_jobs", lambda ids: {i for i in ids if int(i) % 2})
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(registry, "_ALIVE_CACHE", {})
    for job in range(3000):
        clock[0] += 0.01  # (2 s: 200 looks)
        assert registry.slurm_job_alive(str(job)) is bool(job % 2)
    assert len(registry._ALIVE_CACHE) <= 1000
    assert registry.slurm_job_alive("2999") is True  # (still memoized: 2 s not passed)


def test_slurm_arrays_said_waited_for_are_not_kept_for_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from exca.graph import scheduler

    clock = [1000.0]
    monkeypatch.setattr(scheduler, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(scheduler, "_ARRAYS_WAITED", {})
    for array in range(3000):
        clock[0] += 1.0  # (600 s: 600 waits)
        run = types.SimpleNamespace(handles=[types.SimpleNamespace(job_id=f"{array}_0")])
        assert not scheduler._array_wait_said(tp.cast(tp.Any, run))
        assert scheduler._array_wait_said(tp.cast(tp.Any, run))  # (said a moment ago)
    assert len(scheduler._ARRAYS_WAITED) <= 1000


TASK_CELL = """
import pydantic
import exca


class Trained(pydantic.BaseModel):
    lr: float = 0.1
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> float:
        return self.lr * {factor}
"""

FUNCTION_CELL = """
from exca import helpers


def make(folder):
    @helpers.with_infra(folder=folder)
    def add(a: int, b: int = 2) -> int:
        return a + b + {factor}

    return add
"""


def test_a_notebook_class_defined_again_is_not_kept_alive(tmp_path: Path) -> None:
    # a cell run again defines its classes again: exca's memos per class kept each old
    # class alive for good (with its schema, validators, methods: ~20 kB a run)
    alive = []
    for factor in range(1, 6):
        cls = notebook_class(TASK_CELL.format(factor=factor), "Trained")
        assert cls(lr=factor, infra={"folder": tmp_path / str(factor)}).fit() == factor * factor
        alive.append(weakref.ref(cls))
    del cls
    gc.collect()
    assert [ref() is not None for ref in alive] == [False] * 4 + [True]


def test_a_notebook_function_with_infra_defined_again_is_not_kept_alive(tmp_path: Path) -> None:
    # (the cell run again as it was: each run's function and generated model were kept)
    alive = []
    for _ in range(5):
        add = notebook_class(FUNCTION_CELL.format(factor=1), "make")(tmp_path)
        assert add(a=1) == 4
        alive.append(weakref.ref(add.func))
    del add
    gc.collect()
    assert [ref() is not None for ref in alive] == [False] * 4 + [True]


def test_with_infra_definitions_on_many_folders_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (one entry per cache folder a function was decorated with, to warn of a namesake
    # of other code sharing it: a loop decorating a function per folder kept them all)
    from exca import helpers

    monkeypatch.setattr(helpers, "_DEFINITIONS", {})
    monkeypatch.setattr(helpers, "_DEFINITIONS_KEPT", 8, raising=False)
    for index in range(30):
        add = notebook_class(FUNCTION_CELL.format(factor=1), "make")(tmp_path / str(index))
        assert add(a=index) == index + 3
    assert len(helpers._DEFINITIONS) == 8


def test_namesake_classes_used_in_turns_keep_working(tmp_path: Path) -> None:
    # (a factory making a class per call: an older one used again does not evict the
    # newer one, and both compute and read back their own results)
    first = notebook_class(TASK_CELL.format(factor=1), "Trained")
    second = notebook_class(TASK_CELL.format(factor=2), "Trained")
    for _ in range(3):
        assert first(lr=1.0, infra={"folder": tmp_path / "a"}).fit() == 1.0
        assert second(lr=1.0, infra={"folder": tmp_path / "b"}).fit() == 2.0
    assert first(lr=3.0, infra={"folder": tmp_path / "a"}).fit() == 3.0
    assert identity._BY_NAME[("__main__", "Trained")]() is second
