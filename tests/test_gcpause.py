"""exca pauses the cyclic garbage collector around its own bulk work: the user's setting
must come back afterwards, whatever happens inside."""

from __future__ import annotations

import gc
import os
import threading
import typing as tp
from pathlib import Path

import numpy as np
import pydantic
import pytest

import exca
from exca.storage import gcpause


class Squares(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra()

    @infra.apply(item_uid=str)
    def square(self, items: tp.Sequence[int]) -> tp.Iterator[np.ndarray]:
        for x in items:
            assert gc.isenabled(), "user code must run with the collector on"
            yield np.full(2, x * x)


def test_collector_is_on_after_exca_work(tmp_path: Path) -> None:
    assert gc.isenabled()
    obj = Squares(infra={"folder": tmp_path, "keep_in_ram": False})
    assert [int(a[0]) for a in obj.square([1, 2, 3])] == [1, 4, 9]
    assert gc.isenabled()
    new = Squares(infra={"folder": tmp_path, "keep_in_ram": True})
    assert [int(a[0]) for a in new.square(list(range(40)))] == [x * x for x in range(40)]
    assert gc.isenabled()
    plan = exca.graph.plan(new.square.node([500, 600]))
    assert "compute" in str(plan) and gc.isenabled()


def test_user_choice_to_disable_is_kept() -> None:
    gc.disable()
    try:
        with gcpause.paused():
            assert not gc.isenabled()
        assert not gc.isenabled(), "a pause must not turn on a collector the user turned off"
    finally:
        gc.enable()


def test_nested_pauses_and_errors() -> None:
    with pytest.raises(ValueError, match="inside"), gcpause.paused():
        with gcpause.paused():
            assert not gc.isenabled()
        assert not gc.isenabled(), "the outer pause still holds"
        raise ValueError("inside")
    assert gc.isenabled()


def test_threads_share_one_pause() -> None:
    inside = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with gcpause.paused():
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    inside.wait(10)
    with gcpause.paused():
        pass
    assert not gc.isenabled(), "the other thread's pause is still on"
    release.set()
    thread.join()
    assert gc.isenabled()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_child_forked_during_a_pause_collects() -> None:
    read, write = os.pipe()
    with gcpause.paused():
        pid = os.fork()
        if pid == 0:  # the child: the pausing thread does not exist here
            os.write(write, b"1" if gc.isenabled() else b"0")
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(read)


def test_the_entries_a_map_writes_add_nothing_the_collector_walks(tmp_path: Path) -> None:
    """Every entry written kept a (file, offset, record) tuple in the cache's index in
    RAM: CPython never untracks a tuple holding a dict, so each map call of 10k items
    added 10k objects that every full collection walked (half of a call's time when a
    collection came)."""
    obj = Squares(infra={"folder": tmp_path, "keep_in_ram": True})
    list(obj.square(list(range(500))))  # (shapes and formats known: shared afterwards)
    gc.collect()
    before = len(gc.get_objects())
    out = list(obj.square(list(range(500, 5500))))
    gc.collect(0)  # (young tuples of strings and numbers are untracked by a collection)
    assert len(out) == 5000
    assert len(gc.get_objects()) - before < 500
