"""What a call leaves behind is freed by reference counting alone: objects in reference
cycles wait for the cyclic collector (memory held between its passes, longer pauses)."""

from __future__ import annotations

import gc
import typing as tp
import weakref
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


class Exp(pydantic.BaseModel):
    lr: float = 0.1
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> float:
        return 2 * self.lr


def _freed_at_del(make: tp.Callable[[], pydantic.BaseModel], call: str) -> list[object]:
    """Makes an instance, calls it once, drops it: asserts it was freed at ``del`` (the
    collector off: by reference counting); the objects left in cycles."""

    def action() -> None:
        obj = make()
        getattr(obj, call)()
        ref = weakref.ref(obj)
        del obj
        assert ref() is None, "the instance outlived its last reference (a cycle)"

    return _cyclic_garbage(action)


def test_a_task_instance_is_freed_when_dropped_after_its_first_call(tmp_path: Path) -> None:
    """(It held its infra, whose runtime, node and callbacks held it back: all it had
    loaded stayed until a full collection, after hundreds of instances.)"""
    Exp(lr=0, infra={"folder": tmp_path}).run()  # (the folder's state is made)
    assert not _freed_at_del(lambda: Exp(lr=1, infra={"folder": tmp_path}), "run")
    assert not _freed_at_del(lambda: Exp(lr=2, infra={"keep_in_ram": True}), "run")
    assert not _freed_at_del(lambda: Exp(lr=3), "run")
    assert Exp(lr=1, infra={"folder": tmp_path}).infra.status() == "completed"


def test_a_map_instance_is_freed_when_dropped_after_a_call(tmp_path: Path) -> None:
    assert list(Doubles(infra={"folder": tmp_path}).double([0])) == [0]

    def action() -> None:
        obj = Doubles(infra={"folder": tmp_path})
        assert list(obj.double([1, 2])) == [2, 4]
        ref = weakref.ref(obj)
        del obj
        assert ref() is None, "the instance outlived its last reference (a cycle)"

    assert not _cyclic_garbage(action)


def test_an_infra_of_a_dropped_owner_still_works(tmp_path: Path) -> None:
    """``Exp(lr=1).infra.job()``: the owner is dropped as soon as its infra is read."""
    gc.disable()  # (what keeps the owner must not be a cycle waiting for the collector)
    try:
        folder = {"folder": tmp_path}
        assert Exp(lr=1, infra=folder).infra.status() == "not submitted"
        assert (
            Exp(lr=1, infra=folder).infra.uid_folder() == Exp(lr=1, infra=folder).infra.uid_folder()
        )
        job = Exp(lr=1, infra=folder).infra.job()
        gc.collect()
        assert job.result() == 2
        assert Exp(lr=1, infra=folder).infra.status() == "completed"
        Exp(lr=1, infra=folder).infra.clear_job()
        assert Exp(lr=1, infra=folder).infra.status() == "not submitted"
        infra = Exp(lr=3, infra=folder).infra
        gc.collect()
        assert infra.job().result() == 6 and infra.status() == "completed"
        exp = Exp(lr=4, infra=folder)
        job = exp.infra.job()
        del exp
        gc.collect()
        assert job.result() == 8
        node = Exp(lr=7, infra=folder).run.node()  # (a pipeline's step)
        items = Doubles(infra=folder).double.node([5, 6])
        gc.collect()
        assert node.result() == 14 and list(items.result()) == [10, 12]
    finally:
        gc.enable()


def test_an_owner_class_own_del_is_still_called(tmp_path: Path) -> None:
    dropped: list[float] = []

    class Logged(Exp):
        def __del__(self) -> None:
            dropped.append(self.lr)

    obj = Logged(lr=5, infra={"folder": tmp_path})
    assert obj.run() == 10
    del obj
    assert dropped == [5]
