"""Long-lived processes (a notebook open for days, a sweep driver looping over many
configs, a server answering from the cache): what exca keeps process-wide must not grow
with every config, folder or job it ever saw. Each test counts the entries of one such
store after many calls (not memory: counts say what grows, without timing noise)."""

from __future__ import annotations

import typing as tp
from pathlib import Path

import pydantic

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
