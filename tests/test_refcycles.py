"""What a call leaves behind is freed by reference counting alone: objects in reference
cycles wait for the cyclic collector (memory held between its passes, longer pauses)."""

from __future__ import annotations

import gc
import typing as tp
from pathlib import Path

import pydantic

import exca
from exca.graph.node import Node


class Doubles(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra()

    @infra.apply(item_uid=str)
    def double(self, items: tp.Sequence[int]) -> tp.Iterator[int]:
        for x in items:
            yield 2 * x


def _cyclic_garbage(action: tp.Callable[[], object]) -> list[object]:
    """The objects that ``action`` left in reference cycles (the collector off meanwhile)."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        action()
        gc.collect()
        return list(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def test_a_map_call_leaves_no_node_in_a_cycle(tmp_path: Path) -> None:
    obj = Doubles(infra={"folder": tmp_path})
    assert list(obj.double([1, 2])) == [2, 4]  # (the instance's own state is made)

    def calls() -> None:
        for start in range(3, 30, 3):  # (new items each time: a node per call)
            assert list(obj.double([start, start + 1])) == [2 * start, 2 * start + 2]

    garbage = _cyclic_garbage(calls)
    nodes = [x for x in garbage if isinstance(x, Node)]
    assert not nodes, f"{len(nodes)} nodes of calls in cycles ({len(garbage)} objects)"


_N_ITEMS = 257  # (a length no other list of the run has)


class UidLists(pydantic.BaseModel):
    """Counts, while its method runs, the lists of the call's uids alive then."""

    infra: exca.MapInfra = exca.MapInfra()

    @infra.apply(item_uid=str)
    def count(self, items: tp.Sequence[int]) -> tp.Iterator[int]:
        lists = [
            o
            for o in gc.get_objects()
            if type(o) is list and len(o) == _N_ITEMS and type(o[0]) is str
        ]
        for _ in items:
            yield len(lists)


def test_a_map_call_computes_with_few_copies_of_its_uids(tmp_path: Path) -> None:
    """Each list of n uids alive while the items are computed is walked again by each pass
    of the cyclic collector over the young objects: the call's uids and those missing (here
    all of them, one list) are shared by the scheduler, the claim and the worker, not copied."""
    counts = list(UidLists(infra={"folder": tmp_path}).count(list(range(_N_ITEMS))))
    assert counts == [2] * _N_ITEMS
