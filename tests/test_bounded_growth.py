"""Long-lived processes (a notebook open for days, a sweep driver looping over many
configs, a server answering from the cache): what exca keeps process-wide must not grow
with every config, folder or job it ever saw. Each test counts the entries of one such
store after many calls (not memory: counts say what grows, without timing noise)."""

from __future__ import annotations

import typing as tp
from pathlib import Path

import pydantic
import pytest

import exca
from exca.graph import worker


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

