"""MapInfra on the real executors (SPEC §2 and the [ours] list: map errors are cached per item).

The mapped method appends one line per item it computes to a file named in its config, so
tests count the real per-item calls wherever they ran (threads, processes, local jobs).
Mapper, which most jobs compute, is in jobmodels_map_execution.py: a job imports its
config's module, a light one.
"""

from __future__ import annotations

import collections
import enum
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import types
import typing as tp
import weakref
from pathlib import Path

import pydantic
import pytest
from filelog import append, lines, wait_until
from jobmodels_map_execution import Mapper
from waiting import waits_for_others

import exca
import exca.cachedict
import exca.graph.scheduler
from exca.infra import uidfolder

if tp.TYPE_CHECKING:
    import numpy as np
else:
    from lazy_numpy import np  # (imported at its first use: most jobs never use it)

CLUSTERS = [None, "threadpool", "processpool", "local", "debug"]


def counts(path: str | Path) -> collections.Counter[int]:
    path = Path(path)
    lines = path.read_text("utf8").splitlines() if path.exists() else []
    return collections.Counter(int(line) for line in lines)


def make(tmp_path: Path, cluster: str | None, **kwargs: tp.Any) -> Mapper:
    infra = {"folder": tmp_path / "cache", "cluster": cluster, **kwargs.pop("infra", {})}
    return Mapper(log=str(tmp_path / "calls.txt"), infra=infra, **kwargs)


def error_text(error: BaseException) -> str:
    return "\n".join([str(error), *getattr(error, "__notes__", [])])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", CLUSTERS)
def test_only_missing_items_are_computed(tmp_path: Path, cluster: str | None) -> None:
    log = tmp_path / "calls.txt"
    mapper = make(tmp_path, cluster)
    assert list(mapper.process([1, 2, 3])) == [10, 20, 30]
    assert counts(log) == {1: 1, 2: 1, 3: 1}
    # outputs in input order, duplicates repeated; only 4 and 5 are computed
    again = make(tmp_path, cluster)
    assert list(again.process([5, 3, 4, 3, 1, 5])) == [50, 30, 40, 30, 10, 50]
    assert counts(log) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    # everything cached: nothing computed, any order
    assert list(make(tmp_path, cluster).process(items=[2, 2, 1])) == [20, 20, 10]
    assert list(make(tmp_path, None).process([4])) == [40]
    assert counts(log) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}


def test_a_new_instance_per_call_writes_one_index_file(tmp_path: Path) -> None:
    """``for f in files: Mapper(...).process([f])``: each call's new instance takes up the
    thread's writer session of the folder, so the folder holds one index file, not one per
    call (every later read opened them all: quadratic); everything reads back, here and
    in a new process, and nothing is computed twice."""
    log = tmp_path / "calls.txt"
    for item in range(50):
        assert list(make(tmp_path, None).process([item])) == [10 * item]
    folder = make(tmp_path, None).infra.uid_folder()
    assert folder is not None and len(list(folder.glob("*-info.jsonl"))) == 1
    code = (
        "import sys; from exca.cachedict import CacheDict; cd = CacheDict(sys.argv[1]); "
        "print(sorted((int(k), cd[k]) for k in cd.keys()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == repr([(i, 10 * i) for i in range(50)])
    assert list(make(tmp_path, None).process(range(50))) == [10 * i for i in range(50)]
    assert counts(log) == dict.fromkeys(range(50), 1)


def test_a_small_map_call_lists_its_folder_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One new item: the call's look-up, then the worker's read once it holds the claim
    (what another process wrote meanwhile); the scheduler's decision, the worker's check
    before claiming and the end of the run listed it again (5 listings: on NFS each is a
    round trip). One cached item: one listing."""
    # (as in a process that met no sub-config version change: one met by an earlier test
    # of this process, anywhere, makes a reuse check its folder's record, one more listing)
    for name in ("_VERSION_CHANGES", "_UNTOLD", "_SWAPS", "_UNTOLD_SWAPS"):
        monkeypatch.setattr(uidfolder, name, type(getattr(uidfolder, name))())
    log = tmp_path / "calls.txt"
    assert list(make(tmp_path, None).process([1, 2])) == [10, 20]
    folder = make(tmp_path, None).infra.uid_folder()
    assert folder is not None
    listings: list[str] = []
    scandir = os.scandir

    def counted(path: tp.Any = ".") -> tp.Any:
        if os.fspath(path) == str(folder):
            listings.append(str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counted)
    assert list(make(tmp_path, None).process([3])) == [30]
    assert len(listings) == 2
    listings.clear()
    assert list(make(tmp_path, None).process([2])) == [20]
    assert len(listings) == 1
    mapper = make(tmp_path, None)  # (an instance that read before: its call reads again)
    assert list(mapper.process([1])) == [10]
    listings.clear()
    assert list(mapper.process([4, 1])) == [40, 10]
    assert len(listings) == 2
    monkeypatch.undo()
    assert counts(log) == {1: 1, 2: 1, 3: 1, 4: 1}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", CLUSTERS)
def test_item_errors(tmp_path: Path, cluster: str | None) -> None:
    log = tmp_path / "calls.txt"
    fail_dir = tmp_path / "fail"
    fail_dir.mkdir()
    (fail_dir / "2").touch()
    (fail_dir / "5").touch()
    items = [1, 2, 3, 4, 5, 6]
    # max_jobs=2: jobs/chunks of several items, so an error hits the middle of a chunk
    mapper = make(tmp_path, cluster, fail_dir=str(fail_dir), infra={"max_jobs": 2})
    outputs = mapper.process(items)  # computes every item; errors show when read
    # (a failing item is computed once more, alone: is the error its own? unless the
    # method was called with it alone already, as the last item of a chunk)
    first = counts(log)
    assert {i: first[i] for i in (1, 3, 4, 6)} == dict.fromkeys((1, 3, 4, 6), 1)
    assert first[2] in (1, 2) and first[5] in (1, 2)
    with pytest.raises(ValueError, match="bad item 2") as info:
        list(outputs)
    assert "item '2'" in error_text(info.value)  # names the failing item
    # ... and says that another item failed too (its job's log had its warning)
    assert "2 of the 6 items asked for have cached errors ('2', '5')" in error_text(info.value)
    # the same instance again (its values held in RAM): the error again, nothing computed
    with pytest.raises(ValueError, match="bad item 2"):
        list(mapper.process(items))
    assert counts(log) == first
    # the other items are cached
    good = [1, 3, 4, 6]
    assert list(make(tmp_path, cluster, fail_dir=str(fail_dir)).process(good)) == [10, 30, 40, 60]
    with pytest.raises(ValueError, match="bad item 5") as info:
        list(make(tmp_path, cluster, fail_dir=str(fail_dir)).process([6, 5]))
    assert "item '5'" in error_text(info.value)
    assert "Traceback" in error_text(info.value)
    # a second call in mode cached re-raises without recomputing
    with pytest.raises(ValueError, match="bad item 2"):
        list(make(tmp_path, cluster, fail_dir=str(fail_dir)).process(items))
    assert counts(log) == first
    # retry recomputes only the failed items
    (fail_dir / "2").unlink()
    (fail_dir / "5").unlink()
    retry = make(tmp_path, cluster, fail_dir=str(fail_dir), infra={"mode": "retry"})
    assert list(retry.process(items)) == [10, 20, 30, 40, 50, 60]
    retried = {**first, 2: first[2] + 1, 5: first[5] + 1}
    assert counts(log) == retried
    reader = make(tmp_path, cluster, fail_dir=str(fail_dir))
    assert list(reader.process(items[::-1])) == [60, 50, 40, 30, 20, 10]
    assert counts(log) == retried


@pytest.mark.timeout(60)
def test_a_process_pool_without_shared_memory_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/dev/shm full as a processpool map started its pool (its semaphores live there):
    the bare "[Errno 28] No space left on device" read as if the cache's disk was full.
    It now says where space is missing and what to use instead."""
    import errno
    import multiprocessing

    def no_shared_memory(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(multiprocessing.get_context("fork"), "Event", no_shared_memory)
    mapper = make(tmp_path, "processpool")
    with pytest.raises(OSError, match="No space left") as info:
        list(mapper.process([1, 2, 3]))
    assert "shared memory of this machine (/dev/shm)" in error_text(info.value)
    assert "cluster='threadpool' or None" in error_text(info.value)
    monkeypatch.undo()
    assert list(mapper.process([1, 2, 3])) == [10, 20, 30]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cluster", [None, "threadpool"])
def test_a_retry_stopped_by_a_full_disk_raises_that_not_the_old_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: str | None
) -> None:
    """mode="retry" on a full disk (the claim of the failed items could not be made):
    the call raised the old cached error, "bad item 2 ... (mode='retry' computes it
    again)", as if it had been retried and failed again; the disk was never mentioned.
    It now raises the full disk's error; the cached error stays, retried once there is
    space."""
    import errno

    fail_dir = tmp_path / "fail"
    fail_dir.mkdir()
    (fail_dir / "2").touch()
    with pytest.raises(ValueError, match="bad item 2"):
        list(make(tmp_path, cluster, fail_dir=str(fail_dir)).process([1, 2, 3]))
    (fail_dir / "2").unlink()
    os_open = os.open

    def no_inode(path: tp.Any, flags: int, *args: tp.Any, **kwargs: tp.Any) -> int:
        if Path(path).name == ".lock":  # (the claims folder's lock: a new file)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_inode)
    retry = make(tmp_path, cluster, fail_dir=str(fail_dir), infra={"mode": "retry"})
    with pytest.raises(OSError, match="No space left") as info:
        list(retry.process([1, 2, 3]))
    assert "free space there" in error_text(info.value)
    monkeypatch.undo()
    assert counts(tmp_path / "calls.txt") == {1: 1, 2: 1, 3: 1}
    assert list(retry.process([1, 2, 3])) == [10, 20, 30]
    assert counts(tmp_path / "calls.txt") == {1: 1, 2: 2, 3: 1}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", [None, "processpool", "local"])
@pytest.mark.parametrize("miscount", ["short", "extra"])
def test_miscounted_outputs_keep_no_value(
    tmp_path: Path, cluster: str | None, miscount: str
) -> None:
    # which output belongs to which item is unknown: no output of a miscounted call is kept
    flags = {miscount: True}
    outputs = make(tmp_path, cluster, infra={"max_jobs": 2}, **flags).process(list(range(8)))
    with pytest.raises(RuntimeError, match="exactly once"):
        list(outputs)
    for item in range(8):  # each work unit miscounted: every item raises, none reads wrong
        with pytest.raises(RuntimeError, match="exactly once") as info:
            list(make(tmp_path, cluster, **flags).process([item]))
        assert f"yielded {'fewer' if miscount == 'short' else 'more'} outputs" in str(info.value)
    assert set(counts(tmp_path / "calls.txt")) <= set(range(8))  # computed once, not re-run
    assert sum(counts(tmp_path / "calls.txt").values()) <= 8


@pytest.mark.parametrize("keep_in_ram", [False, True])
def test_extra_outputs_inline(tmp_path: Path, keep_in_ram: bool) -> None:
    infra: dict[str, tp.Any] = {"folder": None, "keep_in_ram": True} if keep_in_ram else {}
    mapper = make(tmp_path, None, extra=True, infra=infra)
    with pytest.raises(RuntimeError, match="yielded more outputs than its 3 items") as info:
        list(mapper.process([1, 2, 3]))
    assert "item '1'" in error_text(info.value)
    with pytest.raises(RuntimeError, match="exactly once"):  # cached: the same error again
        list(mapper.process([3]))
    assert counts(tmp_path / "calls.txt") == {1: 1, 2: 1, 3: 1}
    # the right method on the same items computes them (its config differs)
    assert list(make(tmp_path, None, infra=infra).process([1, 2, 3])) == [10, 20, 30]


def test_fewer_outputs_inline_names_the_first_item(tmp_path: Path) -> None:
    mapper = make(tmp_path, None, short=True)
    with pytest.raises(RuntimeError, match="exactly once") as info:
        list(mapper.process([1, 2, 3]))
    assert "item '1'" in error_text(info.value)
    retry = make(tmp_path, None, short=True, infra={"mode": "retry"})
    with pytest.raises(RuntimeError, match="yielded fewer outputs than its 2 items"):
        list(retry.process([1, 2]))  # retry recomputes them (still miscounted)
    assert counts(tmp_path / "calls.txt") == {1: 2, 2: 1}


@pytest.mark.parametrize("cluster", [None, "threadpool"])
def test_forbid_single_item_computation(tmp_path: Path, cluster: str | None) -> None:
    mapper = make(tmp_path, cluster, infra={"forbid_single_item_computation": True})
    with pytest.raises(RuntimeError, match="item '1'; pass it with other items in one call"):
        list(mapper.process([1]))
    assert counts(tmp_path / "calls.txt") == {}
    assert list(mapper.process([1, 2])) == [10, 20]
    # once cached, a single item can be read
    again = make(tmp_path, cluster, infra={"forbid_single_item_computation": True})
    assert list(again.process([1])) == [10]
    assert counts(tmp_path / "calls.txt") == {1: 1, 2: 1}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", [None, "threadpool", "local"])
def test_force_recomputes_every_item_once(tmp_path: Path, cluster: str | None) -> None:
    log = tmp_path / "calls.txt"
    assert list(make(tmp_path, cluster).process([1, 2, 3])) == [10, 20, 30]
    forced = make(tmp_path, cluster, infra={"mode": "force"})
    assert list(forced.process([1, 2, 3, 4, 1])) == [10, 20, 30, 40, 10]
    assert counts(log) == {1: 2, 2: 2, 3: 2, 4: 1}
    assert list(forced.process([1, 2, 3, 4])) == [10, 20, 30, 40]  # once per instance
    assert counts(log) == {1: 2, 2: 2, 3: 2, 4: 1}
    assert list(make(tmp_path, cluster).process([4, 3])) == [40, 30]
    assert counts(log) == {1: 2, 2: 2, 3: 2, 4: 1}
    again = make(tmp_path, cluster, infra={"mode": "force"})
    assert list(again.process([2])) == [20]
    assert counts(log) == {1: 2, 2: 3, 3: 2, 4: 1}
    # once per item uid: a later call forces the items this instance has not forced yet
    assert list(again.process([2, 3])) == [20, 30]
    assert counts(log) == {1: 2, 2: 3, 3: 3, 4: 1}
    assert list(again.process([3, 2])) == [30, 20]
    assert counts(log) == {1: 2, 2: 3, 3: 3, 4: 1}


def test_read_only(tmp_path: Path) -> None:
    assert list(make(tmp_path, None).process([1])) == [10]
    reader = make(tmp_path, None, infra={"mode": "read-only"})
    assert list(reader.process([1])) == [10]
    with pytest.raises(RuntimeError, match=r"read-only and 1/2 items missing \('2'\)") as info:
        list(reader.process([1, 2]))
    assert counts(tmp_path / "calls.txt") == {1: 1}
    # (the node's uid ends with its items' digest: the message names the folder too)
    folder = reader.process.node([1, 2]).folder
    assert str(info.value).endswith(f"never computes; cache folder: {folder})")
    assert folder is not None and folder.is_dir()


def test_executor(tmp_path: Path) -> None:
    """As TaskInfra's: a configured submitit executor, None when computed in this process."""
    assert make(tmp_path, None).infra.executor() is None
    assert make(tmp_path, "processpool").infra.executor() is None
    executor = make(tmp_path, "local", infra={"timeout_min": 7}).infra.executor()
    assert executor.cluster == "local"
    assert executor._executor.parameters["timeout_min"] == 7
    assert str(tmp_path) in str(executor.folder)
    with pytest.raises(RuntimeError, match="read-only"):
        make(tmp_path, "local", infra={"mode": "read-only"}).infra.executor()


def test_task_calls_of_a_map_infra_say_what_to_call_instead(tmp_path: Path) -> None:
    """`infra.status()` (job(), clear_job(), job_array()) of a MapInfra, natural for a user
    whose method went from a TaskInfra to a MapInfra, raised a bare "'MapInfra' object
    has no attribute 'status'". Still an AttributeError, it names the map and what to
    call: the node of the items."""
    mapper = make(tmp_path, None)
    for call, instead in [
        (lambda: mapper.infra.status(), "call its .status()"),
        (lambda: mapper.infra.job(), "call its .job()"),
        (lambda: mapper.infra.clear_job(), "call its .clear()"),
        (lambda: mapper.infra.job_array(), "run it"),
    ]:
        with pytest.raises(AttributeError) as error:
            call()
        message = str(error.value)
        assert message.startswith("Mapper.process is a map (MapInfra): it has no infra."), message
        assert "Build obj.process.node(items) with the items and " + instead in message
    assert list(mapper.process([1])) == [10]  # (nothing else changed)


@pytest.mark.timeout(120)
def test_local_packing_into_one_array(tmp_path: Path) -> None:
    """13 items, max_jobs=2, min_samples_per_job=5: 2 jobs of 7 and 6 items, one submission."""
    mapper = make(tmp_path, "local", infra={"max_jobs": 2, "min_samples_per_job": 5})
    items = list(range(13))
    assert list(mapper.process(items)) == [10 * i for i in items]
    assert counts(tmp_path / "calls.txt") == dict.fromkeys(items, 1)
    folder = mapper.infra.uid_folder()
    assert folder is not None
    records = [json.loads(p.read_text()) for p in sorted((folder / "jobs").glob("*.json"))]
    assert len(records) == 2, records
    assert len({r["job_id"] for r in records}) == 2
    assert all(r["job_id"].isdigit() and r["cluster"] == "local" for r in records)
    assert len({r["run"] for r in records}) == 1  # submitted together, by one run
    assert sorted(len(r["keys"]) for r in records) == [6, 7]
    assert sorted(k for r in records for k in r["keys"]) == sorted(str(i) for i in items)
    # the jobs' logs are in the map's uid folder
    for record in records:
        assert Path(record["logs"]).is_dir()
        assert folder in Path(record["logs"]).parents


@pytest.mark.timeout(120)
def test_a_call_waits_only_for_jobs_computing_its_items(tmp_path: Path) -> None:
    """A chunk job of another call is running (item 0, blocked): a call for other items
    computes them at once; a call needing item 0 waits for that job, then reads it."""
    block = tmp_path / "block-flag"
    block.touch()
    first: list[tp.Any] = []
    submitter = make(tmp_path, "local", block_flag=str(block))
    thread = threading.Thread(target=lambda: first.append(list(submitter.process([0]))))
    thread.start()
    deadline = time.time() + 60
    while counts(tmp_path / "calls.txt")[0] == 0 and time.time() < deadline:
        time.sleep(0.05)  # item 0 is being computed in its local job
    other = make(tmp_path, None, block_flag=str(block))
    assert list(other.process([100, 101])) == [1000, 1010]  # (used to wait for that job)
    needing: list[tp.Any] = []
    waiter = threading.Thread(target=lambda: needing.append(list(other.process([0, 102]))))
    waiter.start()
    waiter.join(timeout=1.0)
    assert waiter.is_alive()  # waits for the job computing item 0
    block.unlink()
    waiter.join(timeout=60)
    thread.join(timeout=60)
    assert first == [[0]] and needing == [[0, 1020]]
    assert counts(tmp_path / "calls.txt") == {0: 1, 100: 1, 101: 1, 102: 1}


@pytest.mark.timeout(120)
def test_a_forced_call_waits_for_running_jobs_then_forces(tmp_path: Path) -> None:
    """mode=force while a job of another call computes the same items (its outputs
    predate the force): the forced call waits for it to end, then computes the items
    again (it used to read that job's outputs: a force that recomputed nothing)."""
    block = tmp_path / "block-flag"
    block.touch()
    first: list[tp.Any] = []
    submitter = make(tmp_path, "local", block_flag=str(block))
    thread = threading.Thread(target=lambda: first.append(list(submitter.process([0, 1]))))
    thread.start()
    deadline = time.time() + 60
    while counts(tmp_path / "calls.txt")[0] == 0 and time.time() < deadline:
        time.sleep(0.05)  # item 0 is being computed in its local job
    forced = make(tmp_path, None, block_flag=str(block), infra={"mode": "force"})
    plan = exca.graph.plan(forced.process.node([0, 1]))
    assert plan.entries[0].action == "wait"
    assert plan.entries[0].reason.endswith("then computed again once they end (mode force)")
    release = threading.Timer(1.0, block.unlink)  # (once the forced call waits)
    release.start()
    assert list(forced.process([0, 1])) == [0, 10]
    thread.join(timeout=60)
    release.join()
    assert first == [[0, 10]]
    assert counts(tmp_path / "calls.txt") == {0: 2, 1: 2}


@pytest.mark.timeout(120)
def test_the_status_of_a_map_node_counts_only_the_jobs_sent_its_items(tmp_path: Path) -> None:
    """status() of a map node read every job of its config's folder: "running" for items
    no job computes while a job of other items ran, then "failed" for items never sent
    (a Slurm probe). Only the jobs sent some of the node's items count now."""
    block = tmp_path / "block-flag"
    block.touch()
    computing = make(tmp_path, "local", block_flag=str(block))
    thread = threading.Thread(target=lambda: list(computing.process([0, 1])))
    thread.start()
    try:
        sent = computing.process.node([0, 1])
        wait_until(lambda: sent.status() == "running", timeout=60)
        other = make(tmp_path, "local", block_flag=str(block)).process.node([9])
        assert other.status() == "not submitted"
    finally:
        block.unlink()
        thread.join(timeout=60)
    assert sent.status() == "completed" and other.status() == "not submitted"
    assert computing.process.node([0, 9]).status() == "not submitted"


@pytest.mark.timeout(120)
def test_items_computed_right_now_elsewhere_are_running(tmp_path: Path) -> None:
    """A worker without a job (another thread or process) computes a map's missing items:
    the plan says run() waits for them and status() says running (they said compute and
    not submitted, while run() then only waited)."""
    block = tmp_path / "block-flag"
    block.touch()
    computing = make(tmp_path, None, block_flag=str(block))
    thread = threading.Thread(target=lambda: list(computing.process([0, 1])))
    thread.start()
    deadline = time.time() + 60
    while counts(tmp_path / "calls.txt")[0] == 0 and time.time() < deadline:
        time.sleep(0.05)  # items 0 and 1 are claimed, item 0 is being computed
    try:
        node = make(tmp_path, None, block_flag=str(block)).process.node([0, 1])
        [entry] = exca.graph.plan(node).entries
        assert (entry.status, entry.action) == ("running", "wait"), entry.reason
        assert "computed right now by another process" in entry.reason
        assert entry.items == "2/2 missing"
        assert node.status() == "running"
        more = make(tmp_path, None, block_flag=str(block)).process.node([0, 1, 2])
        [entry] = exca.graph.plan(more).entries
        assert (entry.status, entry.action) == ("missing", "compute")
        assert entry.reason == "3/3 missing (2 of them computed right now by another process)"
    finally:
        block.unlink()
        thread.join(timeout=60)
    assert node.status() == "completed" and more.status() == "not submitted"
    assert counts(tmp_path / "calls.txt") == {0: 1, 1: 1}


@pytest.mark.timeout(120)
def test_a_forced_instance_called_from_two_threads_forces_once(tmp_path: Path) -> None:
    """The second call waits for the first call's job on their shared item 0: that job
    carries out this instance's force, so it reads it (it forced it a second time), and
    it forces its other item 1 itself while the first call still waits for item 2 (a
    fix of the former read item 1's old output)."""
    assert list(make(tmp_path, None).process([0, 1, 2])) == [0, 10, 20]
    block, slow = tmp_path / "block-flag", tmp_path / "slow-flag"
    block.touch()
    slow.touch()
    flags = {"block_flag": str(block), "slow_flag": str(slow)}
    forced = make(tmp_path, "local", infra={"mode": "force"}, **flags)
    outputs: dict[str, list[tp.Any]] = {}
    first = threading.Thread(target=lambda: outputs.update(a=list(forced.process([0, 2]))))
    first.start()
    deadline = time.time() + 60
    log = tmp_path / "calls.txt"
    while (counts(log)[0] < 2 or counts(log)[2] < 2) and time.time() < deadline:
        time.sleep(0.05)  # items 0 and 2 are being forced in their local jobs
    second = threading.Thread(target=lambda: outputs.update(b=list(forced.process([0, 1]))))
    second.start()
    second.join(timeout=1.0)  # (it waits for the first call's job on item 0)
    block.unlink()
    second.join(timeout=60)
    assert outputs == {"b": [0, 10]} and counts(log) == {0: 2, 1: 2, 2: 2}
    slow.unlink()
    first.join(timeout=60)
    assert outputs == {"a": [0, 20], "b": [0, 10]}
    assert counts(log) == {0: 2, 1: 2, 2: 2}
    assert list(forced.process([0, 1, 2])) == [0, 10, 20]  # (forced once: read now)
    assert counts(log) == {0: 2, 1: 2, 2: 2}


def _the_next_call_computes_item_2(tmp_path: Path, mapper: tp.Any, raised: str) -> None:
    """Item 2 stopped the method (``raised``): nothing was cached for it. Its status says
    what the next call does, "not submitted" (not "failed", as a local job's items were
    said: sent to a job that did not write them), and that call computes it again."""
    assert mapper.process.node([1, 2, 3]).status() == "not submitted"
    fail_dir = Path(mapper.fail_dir)
    (fail_dir / "2").unlink()
    again = make(tmp_path, mapper.infra.cluster, fail_dir=str(fail_dir), raised=raised)
    assert list(again.process([1, 2, 3])) == [10, 20, 30]
    assert counts(tmp_path / "calls.txt")[2] == 2


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", CLUSTERS)
def test_a_keyboardinterrupt_of_the_method_is_named_and_never_cached(
    tmp_path: Path, cluster: str | None
) -> None:
    """A method raising KeyboardInterrupt itself at an item (a notebook probe): in a
    processpool it reached the caller as a bare KeyboardInterrupt, as the user's own
    Ctrl-C does. From a pool's thread or process (not the caller's: its Ctrl-C stops the
    caller) the call now raises a JobFailedError naming the item, as a local job's names
    the interrupt; in this process (None, debug) it propagates as it is. In every
    cluster nothing is cached for that item: the next call computes it, and the status of
    the items says so ("not submitted": a local job's said "failed")."""
    fail_dir = tmp_path / "fail"
    fail_dir.mkdir()
    (fail_dir / "2").touch()
    mapper = make(tmp_path, cluster, fail_dir=str(fail_dir), raised="KeyboardInterrupt")
    if cluster in (None, "debug"):
        with pytest.raises(KeyboardInterrupt, match="bad item 2") as interrupted:
            list(mapper.process([1, 2, 3]))
        # (the item it was at, in a note: a bare KeyboardInterrupt named none)
        notes = getattr(interrupted.value, "__notes__", [])
        assert any("was computing item '2'" in note for note in notes), notes
    else:
        with pytest.raises(exca.graph.errors.JobFailedError) as info:
            list(mapper.process([1, 2, 3]))
        said = str(info.value)
        assert "2" in info.value.item_uids and "the next call computes them" in said, said
        if cluster == "local":
            # (the item the method was at, as a pool's caller names it: the job's items
            # not computed may be several, item '2' among them)
            raised = "KeyboardInterrupt was raised (by the method: no SIGINT was received)"
            assert f"{raised} while computing item '2'" in said, said
        else:
            where = "a thread" if cluster == "threadpool" else "a process"
            raised = f"the method raised KeyboardInterrupt in {where} of the {cluster}"
            assert f"{raised} computing item '2'" in said, said
            assert "bad item 2" in "".join(traceback.format_exception(info.value))
    _the_next_call_computes_item_2(tmp_path, mapper, "KeyboardInterrupt")


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", CLUSTERS)
def test_a_sys_exit_of_the_method_names_the_item_and_is_never_cached(
    tmp_path: Path, cluster: str | None
) -> None:
    """A method calling sys.exit at an item: in a threadpool or processpool the caller got
    a bare SystemExit, naming no item (a script ended silently, with the method's code),
    where a local job's error names the item. From a pool the call now raises a
    JobFailedError naming the item and the sys.exit, the method's SystemExit as its cause;
    in this process (None, debug) the SystemExit propagates as it is, with a note naming
    the item. Nothing is cached for that item: the next call computes it."""
    fail_dir = tmp_path / "fail"
    fail_dir.mkdir()
    (fail_dir / "2").touch()
    mapper = make(tmp_path, cluster, fail_dir=str(fail_dir), raised="SystemExit")
    if cluster in (None, "debug"):
        with pytest.raises(SystemExit, match="bad item 2") as exited:
            list(mapper.process([1, 2, 3]))
        notes = getattr(exited.value, "__notes__", [])
        said = "called sys.exit('bad item 2') while computing item '2'"
        assert any(said in note for note in notes), notes
    else:
        with pytest.raises(exca.graph.errors.JobFailedError) as info:
            list(mapper.process([1, 2, 3]))
        said = str(info.value)
        assert "2" in info.value.item_uids and "the next call computes them" in said, said
        if cluster == "local":
            raised = "SystemExit('bad item 2') was raised (sys.exit in the method?)"
            assert f"{raised} while computing item '2'" in said, said
        else:
            where = "a thread" if cluster == "threadpool" else "a process"
            called = f"the method called sys.exit('bad item 2') in {where} of the {cluster}"
            assert f"{called} computing item '2'" in said, said
            assert isinstance(info.value.__cause__, SystemExit)
    _the_next_call_computes_item_2(tmp_path, mapper, "SystemExit")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "cluster,raised",
    [("local", "SystemExit"), ("debug", "SystemExit"), ("debug", "KeyboardInterrupt")],
)
def test_a_map_job_stopped_by_its_method_keeps_the_items_before_it(
    tmp_path: Path, cluster: str, raised: str
) -> None:
    """A job's method calling sys.exit (or raising KeyboardInterrupt) at item 5 of 1..8
    (one job for them all): the items it had computed are kept, but which ones varied from call to call (a job
    got its items shuffled: items after 5, or none, were cached). A job computes its items
    in the call's order now: 1 to 4 are kept, as in the calling process, and the next
    call computes the others only."""
    fail_dir = tmp_path / "fail"
    fail_dir.mkdir()
    (fail_dir / "5").touch()
    items = list(range(1, 9))
    one_job = {"max_jobs": 1}
    mapper = make(tmp_path, cluster, fail_dir=str(fail_dir), raised=raised, infra=one_job)
    with pytest.raises((exca.graph.errors.JobFailedError, SystemExit, KeyboardInterrupt)):
        list(mapper.process(items))
    assert sorted(mapper.infra.cache_dict.keys()) == ["1", "2", "3", "4"]
    (fail_dir / "5").unlink()
    again = make(tmp_path, cluster, fail_dir=str(fail_dir), raised=raised, infra=one_job)
    assert list(again.process(items)) == [10 * i for i in items]
    assert counts(tmp_path / "calls.txt") == {**{i: 1 for i in items}, 5: 2}


def test_a_debug_map_job_interrupted_by_its_method_is_not_failed(tmp_path: Path) -> None:
    """A debug job runs in the calling process: its method raising KeyboardInterrupt (as a
    Ctrl-C there) caches nothing and the next call computes its items, but the records
    node.job() leaves made the node's status() "failed" (taken for jobs that died), where
    a task's status() reads a debug job's record as not submitted. Not submitted now."""
    fail_dir = tmp_path / "fail"
    fail_dir.mkdir()
    (fail_dir / "2").touch()
    mapper = make(tmp_path, "debug", fail_dir=str(fail_dir), raised="KeyboardInterrupt")
    node = mapper.process.node([1, 2, 3])
    with pytest.raises(KeyboardInterrupt, match="bad item 2"):
        node.job().result()
    assert exca.graph.registry.read_all(mapper.infra.uid_folder())  # (records left)
    assert node.status() == "not submitted"
    # (no failure: `exca list` says the call stopped, and how, see test_ops)
    (listed,) = exca.ops.inspect(tmp_path / "cache")
    assert listed.status == "partial" and "ended on KeyboardInterrupt at item '2'" in str(
        listed.error
    ), listed
    (fail_dir / "2").unlink()
    assert list(mapper.process([1, 2, 3])) == [10, 20, 30]
    assert node.status() == "completed"


@pytest.mark.timeout(120)
def test_a_forced_call_interrupted_after_submitting_forces_at_the_next_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C right after the jobs went out (they are cancelled before computing): the
    same instance's next call forces the items (a fix counted them as forced at their
    submission, and read the old outputs)."""
    import exca.graph.scheduler

    assert list(make(tmp_path, None).process([1, 2])) == [10, 20]
    forced = make(tmp_path, "local", infra={"mode": "force"})

    def interrupted(*args: tp.Any, **kwargs: tp.Any) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(exca.graph.scheduler.Scheduler, "wait_some", interrupted)
        with pytest.raises(KeyboardInterrupt):
            list(forced.process([1, 2]))
    assert list(forced.process([1, 2])) == [10, 20]
    assert counts(tmp_path / "calls.txt") == {1: 2, 2: 2}


class Pickled(pydantic.BaseModel):
    """item -> 10 * item, each output in a file of its own (not inline in the index)."""

    log: str
    infra: exca.MapInfra = exca.MapInfra(version="1", keep_in_ram=False)

    @infra.apply(item_uid=str, cache_type="Pickle")
    def process(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            append(self.log, str(item))
            yield 10 * item


def test_outputs_deleted_while_read_are_computed_again(tmp_path: Path) -> None:
    """A call's outputs are read lazily: items deleted meanwhile (by mode force or retry
    in another process, before it writes them again) are waited for or computed again,
    not a KeyError in the middle of the iteration."""

    def make_pickled() -> Pickled:
        return Pickled(log=str(tmp_path / "calls.txt"), infra={"folder": tmp_path / "cache"})

    items = list(range(6))
    assert list(make_pickled().process(items)) == [10 * i for i in items]
    outputs = make_pickled().process(items)
    assert next(outputs) == 0
    other = make_pickled().infra.cache_dict
    with other.write():
        for uid in ("2", "3"):
            del other[uid]  # (as a forcing process does before computing them again)
    assert list(outputs) == [10 * i for i in items[1:]]
    assert counts(tmp_path / "calls.txt") == {0: 1, 1: 1, 2: 2, 3: 2, 4: 1, 5: 1}


class Labeled(pydantic.BaseModel):
    """item -> (item, "label<item>"): a tuple (JSON would give it back as a list)."""

    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[tuple[int, str]]:
        for item in items:
            yield item, f"label{item}"


def test_tuple_outputs_read_back_as_tuples(tmp_path: Path) -> None:
    """Outputs holding tuples, read by a new instance (from the cache folder), are the
    tuples the method yielded, not lists."""
    expected = [(i, f"label{i}") for i in range(3)]
    assert list(Labeled(infra={"folder": tmp_path}).process(range(3))) == expected
    outputs = list(Labeled(infra={"folder": tmp_path}).process(range(3)))
    assert outputs == expected and all(type(out) is tuple for out in outputs)


class Offset(pydantic.BaseModel):
    """item -> item + offset; offset is not part of the uid (instances of one folder that
    compute different values: what each returns tells where it read from)."""

    log: str
    offset: int = 0
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str, exclude_from_cache_uid=("offset",))
    def process(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            append(self.log, str(item))
            yield item + self.offset


def test_a_long_lived_instance_reads_what_another_forced_or_deleted(tmp_path: Path) -> None:
    """keep_in_ram (the default): an instance holding outputs in memory, called with a
    missing item (not served from memory), returns the outputs another instance forced
    since and recomputes those it deleted (it returned the old values from memory)."""

    def offset(value: int, **infra: tp.Any) -> Offset:
        infra = {"folder": tmp_path / "cache", **infra}
        return Offset(log=str(tmp_path / "calls.txt"), offset=value, infra=infra)

    long_lived = offset(0)
    assert list(long_lived.process([1, 2])) == [1, 2]
    assert list(offset(100, mode="force").process([1])) == [101]
    del offset(0).infra.cache_dict["2"]
    assert list(long_lived.process([1, 2])) == [1, 2]  # (served from memory: as it was)
    assert list(long_lived.process([1, 2, 3])) == [101, 2, 3]
    assert counts(tmp_path / "calls.txt") == {1: 2, 2: 2, 3: 1}
    # the same when its memory was filled through a graph node first, or after a clear()
    through_graph = offset(0)
    assert list(exca.graph.result(through_graph.process.node([4]))) == [4]
    assert list(offset(100, mode="force").process([4])) == [104]
    assert list(through_graph.process([4, 5])) == [104, 5]
    through_graph.infra.cache_dict.clear()
    assert list(through_graph.process([6])) == [6]
    assert list(offset(100, mode="force").process([6])) == [106]
    assert list(through_graph.process([6, 7])) == [106, 7]


def test_a_deleted_cache_folder_gets_its_yaml_files_back(tmp_path: Path) -> None:
    """A live instance writing into its folder after someone deleted it wrote only outputs
    (no uid.yaml, config.yaml, full-uid.yaml): listing and iter_cached missed it."""
    import shutil

    mapper = make(tmp_path, None)
    assert list(mapper.process([1, 2])) == [10, 20]
    folder = mapper.infra.uid_folder()
    assert folder is not None
    shutil.rmtree(folder)
    assert list(mapper.process([3])) == [30]
    assert {"uid.yaml", "full-uid.yaml", "config.yaml"} <= {p.name for p in folder.iterdir()}


class SelfRemoving(pydantic.BaseModel):
    """Logs each item it computes; removes its own cache folder (an `rm -rf` in another
    shell) while computing the second item of a call, once (while the file `once`
    exists, replaced by the file `removed` naming that item)."""

    log: str
    once: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[dict[str, int]]:
        import shutil

        for position, item in enumerate(items):
            append(self.log, str(item))
            if position == 1 and Path(self.once).exists():
                Path(self.once).unlink()
                shutil.rmtree(tp.cast(Path, self.infra.uid_folder()))
                Path(self.once).with_name("removed").write_text(str(item))
            yield {"v": item}  # (a dict: written as soon as it is yielded)


@pytest.mark.parametrize("cluster", [None, "threadpool", "processpool"])
def test_a_cache_folder_removed_during_a_call_fails_it_and_caches_no_item_error(
    tmp_path: Path, cluster: str | None
) -> None:
    """The folder removed while the method computed (after it had written an output):
    the outputs written after went into an unlinked index file, and the call returned
    them from RAM (inline; the next call computed them again) or raised "not computed:
    the worker ended without writing it" (pools). It fails naming the folder and that it
    disappeared; nothing cached says an item failed: the next call computes them."""
    once = tmp_path / "once"
    once.touch()
    # (the pools' 4 items go in 3 chunks: one has 2 items, and removes the folder)
    infra = {"folder": tmp_path / "cache", "cluster": cluster, "max_jobs": 1}
    mapper = SelfRemoving(log=str(tmp_path / "log"), once=str(once), infra=infra)
    folder = mapper.infra.uid_folder()
    with pytest.raises(FileNotFoundError, match="cache folder disappeared") as raised:
        list(mapper.process([0, 1, 2, 3]))
    assert raised.value.filename == str(folder)
    again = SelfRemoving(log=str(tmp_path / "log"), once=str(once), infra=infra)
    assert list(again.process([0, 1, 2, 3])) == [{"v": i} for i in range(4)]
    removed_at = int((tmp_path / "removed").read_text())
    assert counts(tmp_path / "log")[removed_at] == 2  # (computed, not stored: again)


@pytest.mark.timeout(60)
def test_items_recomputed_by_another_process_right_after_are_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between this call writing its items and checking them, another process (here a
    thread) forcing item 1 claims it and deletes it: the call waits for that recomputation
    (it said the worker ended without writing it)."""
    from exca.graph import worker
    from exca.storage.claims import Claims

    mapper = make(tmp_path, None, infra={"keep_in_ram": False})
    folder = mapper.infra.uid_folder()
    assert folder is not None
    original = worker._run_map
    forcer: list[threading.Thread] = []

    def force_item_1() -> None:
        with Claims(folder).claim(["1"]):
            cache = make(tmp_path, None).infra.cache_dict
            with cache.write():
                del cache["1"]
            claimed.set()
            time.sleep(0.5)  # recomputing
            with cache.write():
                cache["1"] = 10

    claimed = threading.Event()

    def run_map(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        report = original(*args, **kwargs)
        if not forcer:
            forcer.append(threading.Thread(target=force_item_1))
            forcer[0].start()
            claimed.wait(10)
        return report

    monkeypatch.setattr(worker, "_run_map", run_map)
    assert list(mapper.process([0, 1, 2])) == [0, 10, 20]
    forcer[0].join()
    assert counts(tmp_path / "calls.txt") == {0: 1, 1: 1, 2: 1}  # (1 written by the "forcer")


@pytest.mark.timeout(120)
def test_simultaneous_map_calls_submit_the_chunks_once(tmp_path: Path) -> None:
    """Calls deciding at the same instant (before either's jobs are recorded) submit the
    chunk jobs once; the other calls wait for them."""
    barrier = threading.Barrier(3)
    out: list[tp.Any] = []

    def call() -> None:
        mapper = make(tmp_path, "local", infra={"max_jobs": 2})
        barrier.wait()
        out.append(list(mapper.process(list(range(6)))))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert out == [[10 * i for i in range(6)]] * 3
    folder = make(tmp_path, None).infra.uid_folder()
    assert folder is not None
    assert len(list((folder / "jobs").glob("*.json"))) == 2  # one submission of 2 chunks
    assert counts(tmp_path / "calls.txt") == dict.fromkeys(range(6), 1)


@pytest.mark.timeout(120)
def test_local_packing_respects_max_jobs(tmp_path: Path) -> None:
    mapper = make(tmp_path, "local", infra={"max_jobs": 3, "min_samples_per_job": 1})
    items = list(range(10))
    assert list(mapper.process(items)) == [10 * i for i in items]
    folder = mapper.infra.uid_folder()
    assert folder is not None
    records = [json.loads(p.read_text()) for p in (folder / "jobs").glob("*.json")]
    assert sorted(len(r["keys"]) for r in records) == [2, 4, 4]
    # only the missing items go out next time: 3 new items, min 1 per job, max 3 jobs
    more = make(tmp_path, "local", infra={"max_jobs": 3, "min_samples_per_job": 2})
    assert list(more.process(list(range(13)))) == [10 * i for i in range(13)]
    records = [json.loads(p.read_text()) for p in (folder / "jobs").glob("*.json")]
    new = [r for r in records if set(r["keys"]) & {"10", "11", "12"}]
    assert sorted(len(r["keys"]) for r in new) == [1, 2]
    assert counts(tmp_path / "calls.txt") == dict.fromkeys(range(13), 1)


@pytest.mark.timeout(120)
def test_local_map_by_default_starts_one_job_per_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every local job is a process of this machine, started at once: with the default
    max_jobs (128, for clusters), 1000 items on cluster="local" started 128 jobs (256
    processes: 55 s on 2 cores, against 1.4 s in 2 jobs). The default becomes the CPU
    count there; a max_jobs the user gives stays as given, and a plan says the same."""
    monkeypatch.setattr("exca.graph.executors.usable_cpus", lambda: 2)
    mapper = make(tmp_path, "local")
    assert mapper.infra.max_jobs == 128  # (the field keeps its value)
    plan = exca.graph.plan(mapper.process.node(list(range(10))))
    assert [a.elements for a in plan.arrays] == [2]
    assert list(mapper.process(list(range(10)))) == [10 * i for i in range(10)]
    folder = mapper.infra.uid_folder()
    assert folder is not None
    records = [json.loads(p.read_text()) for p in (folder / "jobs").glob("*.json")]
    assert sorted(len(r["keys"]) for r in records) == [5, 5]
    chosen = make(tmp_path, "local", infra={"max_jobs": 3})
    assert list(chosen.process(list(range(10, 20)))) == [10 * i for i in range(10, 20)]
    records = [json.loads(p.read_text()) for p in (folder / "jobs").glob("*.json")]
    assert sorted(len(r["keys"]) for r in records) == [2, 4, 4, 5, 5]


class ThreeJobs(pydantic.BaseModel):
    """A map whose class sets max_jobs (3) in its field's default."""

    infra: exca.MapInfra = exca.MapInfra(version="1", max_jobs=3)

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        yield from items


def test_a_max_jobs_chosen_anyhow_stays_on_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the default 128 becomes the CPU count on cluster local: a class default of
    3 stays 3 (it was taken for "not set": the instance's infra given as a dict), and two
    instances differing only in whether 128 was written out are one node."""
    monkeypatch.setattr("exca.graph.executors.usable_cpus", lambda: 2)
    local = {"folder": tmp_path / "cache", "cluster": "local"}
    node = ThreeJobs(infra=local).process.node(list(range(10)))
    assert [a.elements for a in exca.graph.plan(node).arrays] == [3]
    node = ThreeJobs(infra={**local, "max_jobs": None}).process.node(list(range(10)))
    assert [a.elements for a in exca.graph.plan(node).arrays] == [10]
    written = make(tmp_path, None, infra={"max_jobs": 128}).process.node([1, 2])
    default = make(tmp_path, None).process.node([1, 2])
    assert exca.graph.run(written, default).failures() == {}


def test_each_chunk_job_carries_only_its_own_items(tmp_path: Path) -> None:
    """A chunk job's pickle held the whole item list and every uid (100k items in 128
    jobs: GBs of pickles); it holds its own chunk now."""
    items = [f"/data/subject_{i:05d}/" + "x" * 200 for i in range(400)]
    upper = Upper(infra={"folder": tmp_path, "cluster": "local", "max_jobs": 4})
    assert list(upper.process(items)) == [item.upper() for item in items]
    pickles = list(tmp_path.rglob("*_submitted.pkl"))
    total = sum(len(item) for item in items)
    assert len(pickles) == 4
    assert all(p.stat().st_size < total / 2 for p in pickles)  # (a quarter each, and some)


class Batched(pydantic.BaseModel):
    """Works on batches of 4 items (a model's inference): an item listed in `bad` makes its
    whole batch raise before any of its outputs. Loads `model` (a file) before anything."""

    log: str
    model: str = ""
    bad: tuple[int, ...] = ()
    message: str = ""  # the error of every bad item (default: naming the item)
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        append(self.log, "call")
        if self.model:
            Path(self.model).read_text()  # (the setup: FileNotFoundError while missing)
        for start in range(0, len(items), 4):
            batch = items[start : start + 4]
            for item in batch:
                if item in self.bad:
                    raise ValueError(self.message or f"item {item} is corrupt")
            yield from (10 * item for item in batch)


@pytest.mark.parametrize("cluster", [None, "local"])
def test_a_batch_error_is_cached_for_its_own_item_only(tmp_path: Path, cluster: str | None) -> None:
    """Items 4 and 5, computed in item 6's batch, got item 6's error cached (raised forever
    in mode cached); each failing item is now confirmed alone."""
    infra = {"folder": tmp_path / "cache", "cluster": cluster, "max_jobs": 1}
    mapper = Batched(log=str(tmp_path / "calls.txt"), bad=(6,), infra=infra)
    outputs = mapper.process(list(range(10)))
    assert [next(outputs) for _ in range(6)] == [0, 10, 20, 30, 40, 50]
    with pytest.raises(ValueError, match="item 6 is corrupt"):
        next(outputs)
    fresh = Batched(log=str(tmp_path / "calls.txt"), bad=(6,), infra=infra)
    assert list(fresh.process([4, 5, 7, 8, 9])) == [40, 50, 70, 80, 90]  # (cached)
    infos = fresh.infra.cache_dict.entries_info()
    assert sorted(infos) == [str(i) for i in range(10)]
    assert [k for k, info in infos.items() if info["#type"] == "Error"] == ["6"]


class OneByOne(pydantic.BaseModel):
    """item -> 10 * item, one item at a time (an expensive computation per item): an item
    listed in `bad` raises. Appends each item it starts to `log`."""

    log: str
    bad: tuple[int, ...] = ()
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("bad",)  # (a fix: same outputs)
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        total = len(items)  # (a progress bar's: no item read)
        for done, item in enumerate(items, 1):
            append(self.log, str(item))
            if item in self.bad:
                raise ValueError(f"bad item {item} ({done}/{total})")
            yield 10 * item


@pytest.mark.parametrize("cluster", [None, "local"])
def test_a_failing_item_read_one_by_one_is_computed_once(
    tmp_path: Path, cluster: str | None
) -> None:
    """A method reading its items one by one that raised for one was called again on
    that item alone (to tell whether the error was a later item's, read in its batch):
    the user's expensive failing item ran twice. The method had read no item after it:
    the error is that item's, computed once; the others are computed once and cached."""
    log = tmp_path / "calls.txt"
    infra = {"folder": tmp_path / "cache", "cluster": cluster, "max_jobs": 1}
    with pytest.raises(ValueError, match="bad item 3") as info:
        list(OneByOne(log=str(log), bad=(3,), infra=infra).process([1, 2, 3, 4, 5]))
    assert "item '3'" in error_text(info.value)
    assert counts(log) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    mapper = OneByOne(log=str(log), bad=(3,), infra=infra)
    assert list(mapper.process([5, 4, 2, 1])) == [50, 40, 20, 10]  # (cached)
    with pytest.raises(ValueError, match="bad item 3"):  # (cached: not computed again)
        list(mapper.process([3]))
    infos = mapper.infra.cache_dict.entries_info()
    assert [k for k, i in infos.items() if i["#type"] == "Error"] == ["3"]
    assert counts(log) == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    retry = OneByOne(log=str(log), infra={**infra, "mode": "retry"})
    assert list(retry.process([1, 2, 3, 4, 5])) == [10, 20, 30, 40, 50]
    assert counts(log) == {1: 1, 2: 1, 3: 2, 4: 1, 5: 1}


class Listing(pydantic.BaseModel):
    """item -> 10 * item, returned as a list (no generator): an item listed in `bad`
    raises, so the whole call raises before any output. Appends each item it starts to
    `log`, and "call <items>" to `calls` for each call."""

    log: str
    calls: str
    bad: tuple[int, ...] = ()
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("bad",)  # (a fix: same outputs)
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> list[int]:
        append(self.calls, "call " + ",".join(str(i) for i in items))
        outputs = []
        for item in items:
            append(self.log, str(item))
            if item in self.bad:
                raise ValueError(f"bad item {item}")
            outputs.append(10 * item)
        return outputs


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", [None, "processpool", "local"])
def test_a_method_returning_a_list_caches_the_error_of_its_failing_item_only(
    tmp_path: Path, cluster: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A method returning a list (not yielding) that raised for one item was called
    outside the per-item error handling: nothing was cached, neither that item's error
    nor the other items (all computed again by the next call). Its call raising before
    any output, on several items, is now called on each half of them, down to the item
    that raises alone: the others are cached, that item's error too."""
    log, calls = tmp_path / "calls.txt", tmp_path / "methodcalls.txt"
    infra = {"folder": tmp_path / "cache", "cluster": cluster, "max_jobs": 1}

    def make_listing(**kwargs: tp.Any) -> Listing:
        return Listing(log=str(log), calls=str(calls), bad=kwargs.pop("bad", (3,)), **kwargs)

    monkeypatch.setattr(exca.graph.scheduler._SHUFFLER, "shuffle", lambda items: None)
    items = [1, 2, 3, 4, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="bad item 3") as info:
        list(make_listing(infra=infra).process(items))
    assert "item '3'" in error_text(info.value)
    first = counts(log)
    if cluster == "processpool":  # (3 chunks for a pool's worker: [1, 2, 3], [4, 5, 6], [7, 8])
        expected = ["call 1,2,3", "call 1", "call 2,3", "call 2", "call 3"]
        assert sorted(lines(calls)) == sorted([*expected, "call 4,5,6", "call 7,8"])
        assert [c for c in lines(calls) if c in expected] == expected
        assert first == {1: 2, 2: 3, 3: 3, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1}
    else:
        assert lines(calls) == [
            "call 1,2,3,4,5,6,7,8",  # (raises at 3: each half is called)
            "call 1,2,3,4",  # (raises: halves again)
            "call 1,2",
            "call 3,4",  # (raises: halves again)
            "call 3",  # (its error is cached)
            "call 4",
            "call 5,6,7,8",
        ]
        assert first == {1: 3, 2: 3, 3: 4, 4: 1, 5: 1, 6: 1, 7: 1, 8: 1}
    # the other items are cached, the error too: nothing computed again
    good = [8, 7, 6, 5, 4, 2, 1]
    assert list(make_listing(infra=infra).process(good)) == [10 * i for i in good]
    with pytest.raises(ValueError, match="bad item 3") as info:
        list(make_listing(infra=infra).process([4, 3]))
    assert "item '3'" in error_text(info.value) and "Traceback" in error_text(info.value)
    infos = make_listing(infra=infra).infra.cache_dict.entries_info()
    assert sorted(infos) == [str(i) for i in items]
    assert [k for k, i in infos.items() if i["#type"] == "Error"] == ["3"]
    assert counts(log) == first
    # retry recomputes the failed item only, once fixed
    retry = make_listing(bad=(), infra={**infra, "mode": "retry"})
    assert list(retry.process(items)) == [10 * i for i in items]
    assert counts(log) == {**first, 3: first[3] + 1}
    assert lines(calls)[-1] == "call 3"


class ListingOnce(pydantic.BaseModel):
    """Listing, reading its items in one loop only (no "call" line: reading them to
    write it is another loop)."""

    log: str
    bad: tuple[int, ...] = ()
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("bad",)  # (a fix: same outputs)
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> list[int]:
        outputs = []
        for item in items:
            append(self.log, str(item))
            if item in self.bad:
                raise ValueError(f"bad item {item}")
            outputs.append(10 * item)
        return outputs


@pytest.mark.parametrize("cluster", [None, "local"])
def test_a_method_returning_a_list_read_one_by_one_computes_its_failing_item_once(
    tmp_path: Path, cluster: str | None
) -> None:
    """A method returning a list that raised for an item was called on each half of its
    items down to that item (computed 4 times out of 8 items, 6 times out of 64): which
    item raised was unknown. When it read its items one by one, it read no item after
    the one that raised: that item's error is cached at once, the items before it
    (computed for nothing: no list returned) are called again, then those after it."""
    log = tmp_path / "calls.txt"
    infra = {"folder": tmp_path / "cache", "cluster": cluster, "max_jobs": 1}
    items = list(range(1, 9))
    with pytest.raises(ValueError, match="bad item 3") as info:
        list(ListingOnce(log=str(log), bad=(3, 6), infra=infra).process(items))
    assert "item '3'" in error_text(info.value)
    # ([1..8] raises at 3: [1, 2] again; [4..8] raises at 6: [4, 5] again; [7, 8])
    assert counts(log) == {1: 2, 2: 2, 3: 1, 4: 2, 5: 2, 6: 1, 7: 1, 8: 1}
    mapper = ListingOnce(log=str(log), infra=infra)
    assert list(mapper.process([8, 7, 5, 4, 2, 1])) == [80, 70, 50, 40, 20, 10]  # (cached)
    infos = mapper.infra.cache_dict.entries_info()
    assert sorted(k for k, i in infos.items() if i["#type"] == "Error") == ["3", "6"]
    retry = ListingOnce(log=str(log), infra={**infra, "mode": "retry"})
    assert list(retry.process(items)) == [10 * i for i in items]
    assert counts(log) == {1: 2, 2: 2, 3: 2, 4: 2, 5: 2, 6: 2, 7: 1, 8: 1}


def test_a_method_returning_a_list_with_several_failing_items(tmp_path: Path) -> None:
    """Two failing items of a list-returning method: each one's error is cached, with
    its own message; the other items are computed and cached."""
    log, calls = tmp_path / "calls.txt", tmp_path / "methodcalls.txt"
    mapper = Listing(log=str(log), calls=str(calls), bad=(2, 5), infra={"folder": tmp_path})
    with pytest.raises(ValueError, match="bad item 2"):
        list(mapper.process([1, 2, 3, 4, 5, 6]))
    infos = mapper.infra.cache_dict.entries_info()
    assert sorted(infos) == [str(i) for i in range(1, 7)]
    assert sorted(k for k, i in infos.items() if i["#type"] == "Error") == ["2", "5"]
    with pytest.raises(ValueError, match="bad item 5"):
        list(mapper.process([6, 5]))
    assert list(mapper.process([1, 3, 4, 6])) == [10, 30, 40, 60]
    # (halves: [1, 2, 3] -> [1], [2, 3] -> [2], [3]; [4, 5, 6] -> [4], [5, 6] -> [5], [6])
    assert len(lines(calls)) == 11


class TooBig(pydantic.BaseModel):
    """Raises MemoryError on a batch of more than 2 items (no item is at fault)."""

    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        items = list(items)
        for position, item in enumerate(items):
            if position == 2:
                raise MemoryError("batch too large")
            yield item


def test_a_batch_error_no_item_has_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The items of a batch that raised, computed again from the item at fault, all
    computed: nothing is cached as failed, and the method's error, only logged at the
    INFO level, vanished (a probe): a warning names it now."""
    with caplog.at_level(logging.WARNING, logger="exca"):
        assert list(TooBig(infra={"folder": tmp_path}).process([1, 2, 3, 4, 5])) == [1, 2, 3, 4, 5]
    assert "raised (MemoryError: batch too large) on a batch from item '3'" in caplog.text
    assert "no item raised it again when computed after it" in caplog.text
    # an item's own error raised in a batch: cached for it, and no such warning (review)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="exca"):
        mapper = Batched(log=str(tmp_path / "calls.txt"), bad=(6,), infra={"folder": tmp_path})
        with pytest.raises(ValueError, match="item 6 is corrupt"):
            list(mapper.process(list(range(10))))
    assert "Item '6' of" in caplog.text and "no item raised it again" not in caplog.text


@pytest.mark.parametrize("cluster", [None, "local", "debug"])
def test_a_setup_error_stops_the_unit(tmp_path: Path, cluster: str | None) -> None:
    """A method failing before any output the same way for 3 items in a row, and never
    producing an output for this config (its model file is missing), was called once (and
    now twice) per item. It stops there: the 3 items keep the error (mode="retry" computes
    them again), the others are left missing for the next call. The call raises the
    method's own error, in a job too (it was a JobFailedError there: an `except
    FileNotFoundError` working inline missed it on a cluster; in a debug job, run in this
    process without a result file, it said "job DEBUG_N ended with state DONE without
    writing its result", the error lost)."""
    model = tmp_path / "model.bin"
    log = tmp_path / "calls.txt"
    infra = {"folder": tmp_path / "cache", "cluster": cluster, "max_jobs": 1}
    mapper = Batched(log=str(log), model=str(model), infra=infra)
    with pytest.raises(FileNotFoundError) as info:
        list(mapper.process(list(range(50))))
    if cluster in ("local", "debug"):  # (the job's end is told too)
        assert "47 item(s) of" in error_text(info.value), error_text(info.value)
    else:  # (inline too: a log line said so, the error did not)
        told = "for 3 items in a row and never produced an output (its setup?): stopped, 47"
        assert f"{told} item(s) left missing" in error_text(info.value)
    assert len(lines(log)) == 6  # 3 x (the rest of the items, then the first one alone)
    infos = mapper.infra.cache_dict.entries_info()
    assert len(infos) == 3 and all(info["#type"] == "Error" for info in infos.values())
    model.write_text("weights")
    retry = Batched(log=str(log), model=str(model), infra={**infra, "mode": "retry"})
    assert list(retry.process(list(range(50)))) == [10 * i for i in range(50)]


def test_items_failing_alike_do_not_stop_the_others(tmp_path: Path) -> None:
    """Two items failing with the same message (an assert) are their own errors: the
    items after them are computed in the same call."""
    log = str(tmp_path / "calls.txt")
    mapper = Batched(log=log, bad=(0, 1), message="corrupt", infra={"folder": tmp_path})
    outputs = mapper.process(list(range(6)))
    infos = mapper.infra.cache_dict.entries_info()
    assert sorted(k for k, i in infos.items() if i["#type"] == "Error") == ["0", "1"]
    assert len(infos) == 6
    with pytest.raises(ValueError):
        next(outputs)


class Storing(pydantic.BaseModel):
    """Outputs of any kind, stored with cache_type=NumpyArray (object arrays cannot be)."""

    log: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str, cache_type="NumpyArray")
    def process(self, items: list[int]) -> tp.Iterator[tp.Any]:
        for item in items:
            append(self.log, str(item))
            yield np.array([object()]) if item == 3 or item >= 100 else np.arange(item)


class Records(pydantic.BaseModel):
    """Items that are dicts and lists: stored in their index lines (no payload file)."""

    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[tp.Any]:
        for item in items:
            yield {"item": item, "seen": [item]} if item % 2 else [item, {"twice": 2 * item}]


@pytest.mark.parametrize("keep_in_ram", [False, True])
def test_mutating_items_read_back_does_not_change_what_the_cache_holds(
    tmp_path: Path, keep_in_ram: bool
) -> None:
    """Items read from their index lines by a new instance are copies: a caller editing
    them changes neither the cache nor the index records the instance reads them from."""
    infra = {"folder": tmp_path, "keep_in_ram": keep_in_ram}
    expected = [{"item": 1, "seen": [1]}, [2, {"twice": 4}], {"item": 3, "seen": [3]}]
    assert list(Records(infra=infra).process([1, 2, 3])) == expected
    reader = Records(infra=infra)
    read = list(reader.process([1, 2, 3]))
    assert read == expected
    read[0]["seen"].append("edited")
    read[1][1]["twice"] = "edited"
    read[2]["new"] = "edited"
    assert list(Records(infra=infra).process([1, 2, 3])) == expected
    records = reader.infra.cache_dict.entries_info()  # (the reader's own index records)
    assert [records[k]["v"] for k in ("1", "2", "3")] == expected
    if not keep_in_ram:  # (else the reader hands out its RAM copy: the caller's object)
        assert list(reader.process([1, 2, 3])) == expected


def test_an_item_uid_that_is_not_unicode_is_a_clear_error(tmp_path: Path) -> None:
    """An item uid made of a file name that os.listdir decoded with surrogates: a raw
    TypeError of orjson, from the claim, naming no item."""
    mapper = make(tmp_path, None)
    with pytest.raises(ValueError, match=r"Key '3\\udcff' cannot be written as UTF-8"):
        list(mapper.process([1, "3\udcff"]))
    # a long one, shortened to a digest: a raw UnicodeEncodeError naming no item (a probe)
    long_name = "recordings/" + "session-" * 40 + "caf\udce9.wav"
    with pytest.raises(ValueError, match=r"Key 'recordings/session-.*cannot be written as UTF"):
        list(mapper.process([long_name]))


def _map_in_a_pool_worker(args: tuple[Path, list[int]]) -> tp.Any:
    tmp_path, items = args
    try:
        return list(make(tmp_path, "processpool").process(items))
    except RuntimeError as error:
        return str(error)


@pytest.mark.timeout(120)
def test_a_processpool_map_in_a_daemonic_process(tmp_path: Path) -> None:
    """In a worker of a multiprocessing.Pool (or a DataLoader), which cannot start
    processes: one item per call is computed there, as it was (a review: a bare
    "AssertionError: daemonic processes are not allowed to have children" once a
    single item stopped running inline); several items get an error saying why."""
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(2) as pool:
        single = pool.map(_map_in_a_pool_worker, [(tmp_path, [i]) for i in (1, 2, 3)])
        several = pool.map(_map_in_a_pool_worker, [(tmp_path, [4, 5])])
    assert single == [[10], [20], [30]]
    assert "cannot start processes in this one: it is a daemonic process" in several[0]


def test_an_output_that_cannot_be_stored_is_that_items_error(tmp_path: Path) -> None:
    """The other outputs of the batch are kept; the item's error names it and is cached."""
    log = tmp_path / "calls.txt"
    first = Storing(log=str(log), infra={"folder": tmp_path / "cache"})
    outputs = first.process([1, 2, 3, 4])
    assert [len(next(outputs)) for _ in range(2)] == [1, 2]
    with pytest.raises(TypeError, match=r"item '3' cannot be stored.*object array"):
        next(outputs)
    again = Storing(log=str(log), infra={"folder": tmp_path / "cache"})
    assert [len(a) for a in again.process([1, 2, 4])] == [1, 2, 4]
    with pytest.raises(TypeError, match="item '3'"):
        list(again.process([3]))
    assert counts(log) == {1: 1, 2: 1, 3: 1, 4: 1}


@pytest.mark.parametrize("code", ["ENOSPC", "EFBIG", "ESTALE"])
def test_a_full_disk_caches_no_item_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str
) -> None:
    """Outputs that cannot be written for lack of space (or over a file size limit, or
    on a network file system gone stale): the call raises the OSError and caches nothing
    for them (they were cached as the items' own errors, raised again by every call once
    space was back, until mode='retry')."""
    import errno

    from exca.storage.cachedict import CacheDict

    log = tmp_path / "calls.txt"
    set_many = CacheDict.set_many
    number = getattr(errno, code)

    def full(cache: tp.Any, items: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        items = list(items)
        if any(uid == "3" for uid, _ in items):
            raise OSError(number, os.strerror(number))
        return set_many(cache, items, *args, **kwargs)

    monkeypatch.setattr(CacheDict, "set_many", full)
    with pytest.raises(OSError, match=os.strerror(number)):
        list(make(tmp_path, None).process([1, 2, 3, 4]))
    monkeypatch.undo()
    assert list(make(tmp_path, None).process([1, 2, 3, 4])) == [10, 20, 30, 40]
    assert counts(log)[3] == 2


def test_an_oserror_of_a_format_is_that_items_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A format raising OSError for one value (numpy's tofile on an object array, PIL
    refusing a mode): that item's cached error, not the whole call's (only a full disk,
    permissions and the like are the folder's fault)."""
    from exca.storage.cachedict import CacheDict

    set_many = CacheDict.set_many

    def refuses_3(cache: tp.Any, items: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        items = list(items)
        if any(uid == "3" for uid, _ in items):
            raise OSError("cannot write mode RGBA as JPEG")
        return set_many(cache, items, *args, **kwargs)

    monkeypatch.setattr(CacheDict, "set_many", refuses_3)
    outputs = make(tmp_path, None).process([1, 2, 3, 4])
    assert [next(outputs) for _ in range(2)] == [10, 20]
    with pytest.raises(OSError, match="item '3' cannot be stored"):
        next(outputs)
    monkeypatch.undo()
    assert list(make(tmp_path, None).process([1, 2, 4])) == [10, 20, 40]
    assert counts(tmp_path / "calls.txt") == {1: 1, 2: 1, 3: 1, 4: 1}


def test_a_folder_it_cannot_write_to_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New items in a cache folder this process cannot write to (a read-only mount):
    the bare "Read-only file system: '.../claims/.lock'" said nothing of what to do.
    Simulated: tests run as root, which writes everywhere."""
    import errno

    assert list(make(tmp_path, None).process([1, 2])) == [10, 20]
    open_ = os.open

    def read_only(path: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> int:
        if "claims" in str(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return open_(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(OSError, match=r"Cannot write into the cache folder .* mode='read-only'"):
        list(make(tmp_path, None).process([1, 2, 3]))
    assert list(make(tmp_path, None).process([1, 2])) == [10, 20]  # (cached: no claim)


class Upper(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=lambda item: item)
    def process(self, items: list[tp.Any]) -> tp.Iterator[str]:
        for item in items:
            yield str.upper(item)


class _Color(str, enum.Enum):  # noqa: UP042 (str() of a member is "_Color.RED", not its text)
    RED = "red"


def test_item_uids_of_str_subclasses_are_their_text(tmp_path: Path) -> None:
    obj = Upper(infra={"folder": tmp_path})
    assert list(obj.process([_Color.RED, np.str_("blue")])) == ["RED", "BLUE"]
    assert set(obj.infra.cache_dict.keys()) == {"red", "blue"}
    assert list(Upper(infra={"folder": tmp_path}).process(["red", "blue"])) == ["RED", "BLUE"]
    with pytest.raises(TypeError, match="item_uid must return a str, got 1 for item 1"):
        list(obj.process([1]))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("keep_in_ram", [True, False])
def test_processpool_without_a_folder(tmp_path: Path, keep_in_ram: bool) -> None:
    """The pool processes hand their outputs back: nothing is written anywhere."""
    mapper = Mapper(
        log=str(tmp_path / "calls.txt"),
        infra={"cluster": "processpool", "keep_in_ram": keep_in_ram},
    )
    items = list(range(12))
    assert list(mapper.process(items)) == [10 * i for i in items]
    assert list(mapper.process([3, 20])) == [30, 200]
    assert counts(tmp_path / "calls.txt") == {
        **{i: 1 if keep_in_ram else 2 for i in (3,)},
        **{i: 1 for i in items if i != 3},
        20: 1,
    }


class LockAtThree(pydantic.BaseModel):
    """Item 3's output is a lock (it does not pickle); the others are the items."""

    log: str
    infra: exca.MapInfra = exca.MapInfra(version="1", cluster="processpool")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[tp.Any]:
        for item in items:
            with open(self.log, "a") as f:
                f.write(f"{item}\n")
            yield threading.Lock() if item == 3 else item


@pytest.mark.timeout(120)
def test_processpool_without_a_folder_names_an_output_that_cannot_come_back(
    tmp_path: Path,
) -> None:
    """An output that does not pickle could not return from the pool process: the call
    raised "cannot pickle '_thread.lock' object" naming no item, and the other items'
    outputs were lost with it. Its item now fails as an output a folder cannot store."""
    obj = LockAtThree(log=str(tmp_path / "calls.txt"))
    expected = r"the output of item '3' cannot be handed back from its pool process.*_thread.lock"
    for items in ([3], [1, 2, 3]):
        with pytest.raises(TypeError, match=expected):
            list(obj.process(items))
    assert list(obj.process([1, 2])) == [1, 2]
    assert counts(tmp_path / "calls.txt") == {3: 1, 1: 1, 2: 1}  # (the others came back)


def _refilled(pool: list[tp.Any], item: int) -> np.ndarray:
    """The pool's last buffer refilled with ``item`` while it is alive (the pool keeps a
    weak reference only), else a new one."""
    buffer = pool[0]() if pool[0] is not None else None
    if buffer is None or not buffer.flags.writeable:
        buffer = np.zeros(4)
    buffer[:] = item
    pool[0] = weakref.ref(buffer)
    return buffer


class Reusing(pydantic.BaseModel):
    """Yields the same buffer (an array, or a dict) for every item, changed in place; "view":
    a new array object each time, viewing that one buffer (nothing else references it);
    "pool": the buffer refilled while alive, reached through a weak reference only."""

    kind: str = "small"
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[tp.Any]:
        array = np.zeros(4 if self.kind in ("small", "view") else 100_000)
        record: dict[str, tp.Any] = {"item": None}
        pool: list[tp.Any] = [None]  # (a weak reference only: a pool of buffers)
        for item in items:
            if self.kind == "dict":
                record["item"] = item
                yield record
            elif self.kind == "view":
                array[:] = item
                yield array[:]
            elif self.kind == "pool":
                yield _refilled(pool, item)
            else:
                array[:] = item
                yield array


@pytest.mark.parametrize("cluster", [None, "processpool"])
@pytest.mark.parametrize("kind", ["small", "big", "dict", "view", "pool"])
def test_outputs_are_stored_as_yielded(tmp_path: Path, cluster: str | None, kind: str) -> None:
    # each output is stored as it was when yielded, whatever the method does with it next
    infra = {"folder": tmp_path, "cluster": cluster}
    computing = Reusing(kind=kind, infra=infra)
    first = list(computing.process([1, 2, 3]))
    again = list(computing.process([1, 2, 3]))  # the same instance (keep_in_ram)
    reread = list(Reusing(kind=kind, infra=infra).process([1, 2, 3]))
    for outputs in (first, again, reread):
        if kind == "dict":
            assert outputs == [{"item": 1}, {"item": 2}, {"item": 3}]
        else:
            assert [set(o.tolist()) for o in outputs] == [{1.0}, {2.0}, {3.0}]
            assert not any(o.flags.writeable for o in outputs)  # as memmaps from disk


@pytest.mark.parametrize("kind", ["small", "big", "view", "pool"])
def test_arrays_kept_in_memory_only_are_copies(kind: str) -> None:
    """A method refilling one array buffer (other objects are kept as yielded: copying
    every output cost 2.5x on lists)."""
    outputs = list(Reusing(kind=kind).process([1, 2, 3]))  # no folder: RAM only
    for again in (outputs, list(Reusing(kind=kind).process([1, 2, 3]))):
        assert [set(o.tolist()) for o in again] == [{1.0}, {2.0}, {3.0}]


class _Held:
    """An object of a method's frame (e.g. its list of items)."""


_HELD: list[tp.Any] = []


class FailingHolder(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        import weakref

        held = _Held()  # (a local of the frame a failure's traceback holds)
        _HELD.append(weakref.ref(held))
        for item in items:
            if item % 2:
                raise ValueError(f"odd {item}")
            yield item


def test_cached_item_errors_do_not_keep_the_methods_frames_alive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each item error held in RAM kept its traceback, whose frames kept their locals
    (the remaining items of the call, per failure: 1 GB for 1000 errors among 200k
    items); the traceback is kept as text."""
    import gc
    import logging

    # (pytest keeps the log records, whose arguments hold the raised errors)
    monkeypatch.setattr(logging.getLogger("exca"), "disabled", True)
    mapper = FailingHolder()  # (no folder: the errors are held in RAM)
    with pytest.raises(ValueError, match="odd 1") as info:
        list(mapper.process(list(range(10))))
    assert "Traceback" in error_text(info.value)  # (the text is kept)
    del info
    gc.collect()
    assert _HELD and all(ref() is None for ref in _HELD)


class BigEndian(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[np.ndarray]:
        for item in items:
            yield np.array([item, 1], dtype=">i4")


@pytest.mark.parametrize("folder", [True, False])
def test_a_processpool_keeps_the_byte_order_of_arrays(tmp_path: Path, folder: bool) -> None:
    """Without a folder, a pool process's outputs came back through the pool's pickle
    (protocol 4), which gives numpy arrays the native byte order."""
    infra: dict[str, tp.Any] = {
        "cluster": "processpool",
        **({"folder": tmp_path} if folder else {}),
    }
    outputs = list(BigEndian(infra=infra).process([1, 2, 3]))
    assert [(o.dtype.str, o.tolist()) for o in outputs] == [(">i4", [i, 1]) for i in (1, 2, 3)]


@pytest.mark.parametrize("keep_in_ram", [True, False])
def test_a_long_lived_instance_sees_what_other_instances_did(
    tmp_path: Path, keep_in_ram: bool
) -> None:
    """The documented workflow: an item fails, another process fixes it with mode="retry";
    an instance that saw the failure reads the fix instead of raising the old error. A
    deleted item is computed again (it raised KeyError)."""
    fail_dir = tmp_path / "fail"
    fail_dir.mkdir()
    (fail_dir / "2").touch()
    kwargs: dict[str, tp.Any] = {"fail_dir": str(fail_dir)}
    seen = make(tmp_path, None, infra={"keep_in_ram": keep_in_ram}, **kwargs)
    with pytest.raises(ValueError, match="bad item 2"):
        list(seen.process([1, 2, 3]))
    (fail_dir / "2").unlink()
    fixer = make(tmp_path, None, infra={"mode": "retry"}, **kwargs)
    assert list(fixer.process([1, 2, 3])) == [10, 20, 30]
    assert list(seen.process([1, 2, 3])) == [10, 20, 30]
    assert counts(tmp_path / "calls.txt") == {1: 1, 2: 2, 3: 1}  # (2: failed, then fixed)
    if not keep_in_ram:  # (RAM keeps what it read: documented)
        del make(tmp_path, None, **kwargs).infra.cache_dict["3"]
        assert list(seen.process([3, 1])) == [30, 10]
        assert counts(tmp_path / "calls.txt")[3] == 2


class Gated(pydantic.BaseModel):
    """A map whose items wait while the file ``gate`` exists; logs ``<pid> <item>``. The
    file ``<gate>.started`` receives the pid of each process the method runs in."""

    log: str
    gate: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        append(self.gate + ".started", str(os.getpid()))
        for item in items:
            while Path(self.gate).exists():
                time.sleep(0.02)
            append(self.log, f"{os.getpid()} {item}")
            yield item


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf8") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"  # (a zombie is dead)
    except FileNotFoundError:
        return False


def test_pool_processes_end_with_a_killed_caller(tmp_path: Path) -> None:
    """SIGKILL of the process running a processpool map: its pool process finishes the
    work it holds (cached), then ends (it waited for more work forever, holding the
    caller's memory and output pipes)."""
    import signal
    import subprocess
    import sys

    log, gate = tmp_path / "calls.txt", tmp_path / "gate"
    gate.touch()
    code = (
        "import test_map_execution as t\n"
        f"m = t.Gated(log={str(log)!r}, gate={str(gate)!r}, "
        f"infra={{'folder': {str(tmp_path / 'cache')!r}, 'cluster': 'processpool', 'max_jobs': 1}})\n"
        "list(m.process([1, 2, 3]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not lines(Path(f"{gate}.started")):  # (the pool process holds the items)
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    gate.unlink()
    deadline = time.time() + 30
    while not log.exists():
        assert time.time() < deadline, "the pool process did not finish its work"
        time.sleep(0.05)
    (worker,) = {int(line.split()[0]) for line in lines(log)}
    try:
        deadline = time.time() + 15
        while _alive(worker):
            assert time.time() < deadline, f"pool process {worker} outlived its caller"
            time.sleep(0.1)
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)  # (started by this test)
    done_before = {line.split()[1] for line in lines(log)}
    cached = Gated(log=str(log), gate=str(gate), infra={"folder": tmp_path / "cache"})
    assert list(cached.process([1, 2, 3])) == [1, 2, 3]
    items = [line.split()[1] for line in lines(log)]
    assert sorted(items) == ["1", "2", "3"] and done_before  # what it finished is cached


def _infra(tmp_path: Path, cluster: str) -> str:
    return repr({"folder": str(tmp_path / "cache"), "cluster": cluster, "max_jobs": 1})


def _calling_process(config: str, items: range, detached: bool = False) -> tp.Any:
    """A process calling ``<config>.process(items)`` (a config of this module; or running
    its node detached), in a session of its own (a signal to its group reaches its pool's
    processes too)."""
    import subprocess
    import sys

    call = (
        f"exca.graph.run({config}.process.node({items!r}), wait=False)"
        if detached
        else f"list({config}.process({items!r}))"
    )
    code = f"import exca\nimport test_map_execution as t\n{call}\n"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.Popen(
        [sys.executable, "-c", code], env=env, start_new_session=True, stderr=subprocess.PIPE
    )


def test_ctrl_c_stops_a_processpool_map(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the process group, as a terminal sends) stops the pool's workers:
    they do not go on with the work already sent to them (the caller waited for it)."""
    import signal

    log, gate = tmp_path / "calls.txt", tmp_path / "gate"
    gate.touch()
    proc = _calling_process(
        f"t.Gated(log={str(log)!r}, gate={str(gate)!r}, infra={_infra(tmp_path, 'processpool')})",
        range(40),
    )
    started = Path(f"{gate}.started")
    try:
        deadline = time.time() + 60
        # the worker holds its items, behind the gate (its pid line written, not just
        # the file created: a signal between the two left it empty)
        while not lines(started):
            assert time.time() < deadline and proc.poll() is None, (
                proc.stderr.read() if proc.stderr else ""
            )
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # (started by this test)
    gate.unlink()  # (a worker still going would now compute its items)
    (worker,) = {int(pid) for pid in started.read_text().split()}
    try:
        deadline = time.time() + 30
        while _alive(worker):
            assert time.time() < deadline, f"pool process {worker} went on after Ctrl-C"
            time.sleep(0.1)
    finally:
        if _alive(worker):
            os.kill(worker, signal.SIGKILL)  # (started by this test)
    assert not log.exists(), log.read_text()  # nothing computed after Ctrl-C
    assert not Gated(
        log=str(log), gate=str(gate), infra={"folder": tmp_path / "cache"}
    ).infra.cache_dict.keys()


class Paced(pydantic.BaseModel):
    """A map computing each item in 50 ms; logs ``<item>`` when it starts one."""

    log: str
    # the outputs returned as a generator, a list (all computed first) or a lazy `map`
    returns: str = "generator"
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("returns",)
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        if self.returns == "map":
            return map(self._output, items)
        outputs = (self._output(item) for item in items)
        return iter(list(outputs)) if self.returns == "list" else outputs

    def _output(self, item: int) -> int:
        append(self.log, str(item))
        time.sleep(0.05)
        return 2 * item


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "cluster,how",
    [
        ("threadpool", "call"),
        ("processpool", "call"),
        ("processpool", "group"),
        ("threadpool", "detached"),
    ],
)
@pytest.mark.parametrize("returns", ["generator", "list", "map"])
def test_ctrl_c_reaching_the_caller_alone_stops_its_pool_and_keeps_what_it_computed(
    tmp_path: Path, cluster: str, how: str, returns: str
) -> None:
    """A Ctrl-C reaching the calling process alone (a notebook's interrupt): a pool's
    thread went on with its whole chunk (the interpreter waited for it at exit; the next
    call of a notebook waited for it), a pool's process was killed with the outputs it had
    not yet written. Both stop at their next item, having written what they computed (a
    method returning a list: all of it, computed; a detached run's pool too; reviews).
    A Ctrl-C reaching the pool's processes too (a terminal's, a Jupyter interrupt, sent
    to the process group) interrupted the item each was computing: it was lost."""
    import signal

    log = tmp_path / "calls.txt"
    config = f"t.Paced(log={str(log)!r}, returns={returns!r}, infra={_infra(tmp_path, cluster)})"
    proc = _calling_process(config, range(100), detached=how == "detached")
    try:
        wait_until(lambda: len(counts(log)) >= 3, timeout=60)
        if how == "group":  # (a terminal's Ctrl-C, a Jupyter interrupt: the pool's too)
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)  # (to the caller only, not its process group)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # (started by this test)
    assert b"KeyboardInterrupt" in stderr
    started = set(counts(log))
    if returns != "list":  # (a list's items are all computed before the first is written)
        assert len(started) < 20  # (a chunk is 34 items: it went on with it)
    cached = Paced(log=str(log), infra={"folder": tmp_path / "cache"}).infra.cache_dict
    assert {int(key) for key in cached} == started  # (nothing computed was lost)
    assert all(cached[str(item)] == 2 * item for item in started)


class CallsPaced(pydantic.BaseModel):
    """A map whose items each call a Paced map of 60 items in a threadpool of its own."""

    log: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        assert self.infra.folder is not None
        inner = {"folder": Path(self.infra.folder) / "inner", "cluster": "threadpool"}
        paced = Paced(log=self.log, infra={**inner, "max_jobs": 1})
        for item in items:
            yield sum(paced.process(range(100 * item, 100 * item + 60)))


@pytest.mark.timeout(120)
def test_ctrl_c_stops_a_map_called_in_a_pool_thread_with_a_pool_of_its_own(
    tmp_path: Path,
) -> None:
    """The inner map's pool went on with all its 60 items after a Ctrl-C reaching the
    caller alone: its run waited in the outer pool's thread, never told (a review)."""
    import signal

    log = tmp_path / "calls.txt"
    proc = _calling_process(
        f"t.CallsPaced(log={str(log)!r}, infra={_infra(tmp_path, 'threadpool')})", range(3)
    )
    try:
        wait_until(lambda: len(counts(log)) >= 3, timeout=60)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # (started by this test)
    started = set(counts(log))
    assert len(started) < 20  # (a chunk of the inner map is 20 items)
    cached = Paced(log=str(log), infra={"folder": tmp_path / "cache" / "inner"}).infra.cache_dict
    assert {int(key) for key in cached} == started  # (what it computed is kept)


def _submit_failing_once_started(
    monkeypatch: pytest.MonkeyPatch, cluster: str, started: tp.Callable[[], bool]
) -> None:
    """The pool's second submission raises OSError(ENOSPC) in the caller (as a write to
    its pipe can), once the first unit's worker has started computing its items."""
    import concurrent.futures
    import errno

    executor = (
        concurrent.futures.ProcessPoolExecutor
        if cluster == "processpool"
        else concurrent.futures.ThreadPoolExecutor
    )
    submit, submitted = executor.submit, [0]

    def failing(self: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        submitted[0] += 1
        if submitted[0] == 2:
            wait_until(started, timeout=30)
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return submit(self, *args, **kwargs)

    monkeypatch.setattr(executor, "submit", failing)


def _pool_workers_alive() -> list[str]:
    import multiprocessing

    threads = [t.name for t in threading.enumerate() if t.name.startswith("exca_")]
    return threads + [p.name for p in multiprocessing.active_children()]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cluster", ["threadpool", "processpool"])
def test_an_error_of_the_caller_stops_its_pool_before_it_is_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: str
) -> None:
    """An OSError raised in the calling process while it fed its pool (a full disk): the
    pool's workers went on with the items already sent to them, writing in the folder
    after the error reached the user (who may delete it, or call again at once). They now
    stop at their next item, what they computed written, before the error is raised."""
    log = tmp_path / "calls.txt"
    _submit_failing_once_started(monkeypatch, cluster, lambda: bool(lines(log)))
    infra = {"folder": tmp_path / "cache", "cluster": cluster, "max_jobs": 2}
    with pytest.raises(OSError, match="injected"):
        list(Paced(log=str(log), infra=infra).process(range(24)))
    assert not _pool_workers_alive()  # (they went on with their 12 items)
    started = set(counts(log))
    assert 0 < len(started) < 12
    cached = Paced(log=str(log), infra={"folder": tmp_path / "cache"}).infra.cache_dict
    assert {int(key) for key in cached} == started  # (what it computed is kept)
    monkeypatch.undo()
    assert list(Paced(log=str(log), infra=infra).process(range(24))) == [2 * i for i in range(24)]
    assert counts(log) == dict.fromkeys(range(24), 1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cluster", ["threadpool", "processpool"])
def test_a_pool_failing_to_shut_down_at_the_end_of_a_call_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: str
) -> None:
    """The shutdown of the pool once its work is done raising (an OSError writing to wake
    its manager): the call raises it, and its workers are gone (they were left waiting)."""
    import concurrent.futures
    import errno

    executor = (
        concurrent.futures.ProcessPoolExecutor
        if cluster == "processpool"
        else concurrent.futures.ThreadPoolExecutor
    )
    shutdown = executor.shutdown

    def failing(self: tp.Any, wait: bool = True, **kwargs: tp.Any) -> None:
        if wait:
            raise OSError(errno.EIO, "Input/output error (injected)")
        shutdown(self, wait=wait, **kwargs)

    monkeypatch.setattr(executor, "shutdown", failing)
    infra = {"folder": tmp_path / "cache", "cluster": cluster, "max_jobs": 2}
    with pytest.raises(OSError, match="injected"):
        list(Paced(log=str(tmp_path / "calls.txt"), infra=infra).process(range(4)))
    assert not _pool_workers_alive()


@pytest.mark.timeout(60)
def test_an_error_of_the_caller_ends_a_pool_process_stuck_in_the_method(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool process that does not reach its next item (the method waits, or computes
    for long) is terminated after a short grace, before the caller's error is raised: it
    ran on and wrote its items later."""
    log, gate = tmp_path / "calls.txt", tmp_path / "gate"
    gate.touch()
    started = Path(f"{gate}.started")
    monkeypatch.setattr(exca.graph.executors, "STOP_WAIT_S", 0.2)
    _submit_failing_once_started(monkeypatch, "processpool", lambda: bool(lines(started)))
    infra = {"folder": tmp_path / "cache", "cluster": "processpool", "max_jobs": 2}
    with pytest.raises(OSError, match="injected"):
        list(Gated(log=str(log), gate=str(gate), infra=infra).process(range(4)))
    (worker,) = {int(pid) for pid in lines(started)}
    assert not _alive(worker)
    gate.unlink()  # (a worker still going would now compute its items)
    assert not log.exists()
    monkeypatch.undo()
    gated = Gated(log=str(log), gate=str(gate), infra=infra)
    assert list(gated.process(range(4))) == [0, 1, 2, 3]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cluster", [None, "processpool"])
def test_a_full_disk_storing_items_says_how_many_computed_items_are_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: str | None
) -> None:
    """The write of the items' data failing (disk full): the call raises, as a task's
    does, but its error said only "No space left on device" and where, not that the
    items it computed were lost (a task's names its result); it now says how many."""
    import errno

    import exca.storage.dumping

    def full(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    context = exca.storage.dumping.DumpContext
    monkeypatch.setattr(context, "dump_entries", full)  # (in the pool's process too: forked)
    monkeypatch.setattr(context, "dump_entry", full)
    mapper = make(tmp_path, cluster, infra={"max_jobs": 1})
    with pytest.raises(OSError, match="No space left") as info:
        list(mapper.process([1, 2, 3]))
    text = error_text(info.value)
    folder = mapper.infra.uid_folder()
    if cluster is None:  # (one unit)
        assert f"in {folder}: it and the 2 other item(s) computed with it could not be " in text
    else:  # (3 units of 1 item: each raised, the first to end is said)
        said = f" in {folder}: it could not be stored, computed but "
        assert any(f"while storing item '{item}'{said}" in text for item in (1, 2, 3)), text
        assert f"in all, 3 item(s) computed by this call could not be stored in {folder}," in text
    assert not mapper.infra.cache_dict.keys()
    monkeypatch.undo()
    assert list(make(tmp_path, cluster).process([1, 2, 3])) == [10, 20, 30]
    assert counts(tmp_path / "calls.txt") == {1: 2, 2: 2, 3: 2}  # (computed again)
    assert set(make(tmp_path, None).infra.cache_dict.keys()) == {"1", "2", "3"}


class Filled(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[tp.Any]:
        for item in items:
            yield np.full(100, item)


def test_status_of_a_map_whose_item_files_were_removed_is_failed(tmp_path: Path) -> None:
    """Its payload files removed outside exca: the plan said fail and a call raised, its
    node's status() said completed (a review)."""
    node = Filled(infra={"folder": tmp_path}).process.node([1, 2, 3])
    assert [float(v.sum()) for v in node.result()] == [100.0, 200.0, 300.0]
    assert node.status() == "completed"
    folder = Filled(infra={"folder": tmp_path}).infra.uid_folder()
    assert folder is not None
    removed = [path for path in (folder / "data").iterdir() if path.is_file()]
    assert removed
    for path in removed:
        path.unlink()
    assert Filled(infra={"folder": tmp_path}).process.node([1, 2, 3]).status() == "failed"
    retried = Filled(infra={"folder": tmp_path, "mode": "retry"}).process.node([1, 2, 3])
    assert [float(v.sum()) for v in retried.result()] == [100.0, 200.0, 300.0]
    assert Filled(infra={"folder": tmp_path}).process.node([1, 2, 3]).status() == "completed"


class Lowered(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=lambda text: text.lower())
    def process(self, items: list[str]) -> tp.Iterator[str]:
        for text in items:
            yield f"from {text}"


@pytest.mark.parametrize("cluster", [None, "threadpool"])
def test_items_sharing_a_uid_read_the_first_ones_output(
    tmp_path: Path, cluster: str | None
) -> None:
    mapper = Lowered(infra={"folder": tmp_path, "cluster": cluster})
    assert list(mapper.process(["Apple", "APPLE", "pear"])) == ["from Apple"] * 2 + ["from pear"]


class Interrupted(pydantic.BaseModel):
    """item -> item + 1; Ctrl-C (KeyboardInterrupt) at item ``stop`` (while it exists)."""

    stop: int
    flag: str
    log: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            append(self.log, str(item))
            if item == self.stop and Path(self.flag).exists():
                raise KeyboardInterrupt
            yield item + 1


def test_ctrl_c_keeps_the_outputs_yielded_before(tmp_path: Path) -> None:
    """Outputs wait in a small batch before being written: an interruption writes them
    (it lost them: a second call computed everything again)."""
    flag = tmp_path / "interrupt"
    flag.touch()

    def mapper() -> Interrupted:
        infra = {"folder": tmp_path / "cache"}
        return Interrupted(stop=8, flag=str(flag), log=str(tmp_path / "calls.txt"), infra=infra)

    with pytest.raises(KeyboardInterrupt):
        list(mapper().process(list(range(12))))
    flag.unlink()
    assert list(mapper().process(list(range(12)))) == list(range(1, 13))
    assert lines(tmp_path / "calls.txt") == [str(i) for i in range(9)] + [
        str(i) for i in range(8, 12)
    ]  # only the interrupted item and those after it, again


def test_ctrl_c_while_the_last_outputs_are_written_keeps_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C as the method has yielded its last output, when the last batch is being
    written (a KeyboardInterrupt raised as that write starts): the batch is written
    all the same (it was lost, up to 256 outputs computed again by the next call)."""
    from exca.storage.cachedict import CacheDict

    write = CacheDict.set_many
    interrupted: list[int] = []

    def interrupted_once(self: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        if not interrupted:
            interrupted.append(1)
            raise KeyboardInterrupt
        return write(self, *args, **kwargs)

    monkeypatch.setattr(CacheDict, "set_many", interrupted_once)
    infra = {"folder": tmp_path / "cache"}
    log = tmp_path / "calls.txt"
    mapper = Interrupted(stop=-1, flag=str(tmp_path / "none"), log=str(log), infra=infra)
    with pytest.raises(KeyboardInterrupt):
        list(mapper.process(list(range(12))))
    assert interrupted and len(lines(log)) == 12
    again = Interrupted(stop=-1, flag=str(tmp_path / "none"), log=str(log), infra=infra)
    assert list(again.process(list(range(12)))) == list(range(1, 13))
    assert len(lines(log)) == 12  # (nothing computed again)


class Dying(pydantic.BaseModel):
    """item -> item; the process computing item 5 exits at once (os._exit) while ``flag``
    exists."""

    flag: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            if item == 5 and Path(self.flag).exists():
                os._exit(3)
            yield item


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", ["local", "processpool"])
def test_a_dead_chunk_job_is_the_one_blamed(tmp_path: Path, cluster: str) -> None:
    """One of 3 chunk jobs dies: the error names that job (and its items' count), not the
    two that did their share; a dead pool process is named as such."""
    from exca.graph import registry
    from exca.graph.errors import JobFailedError

    flag = tmp_path / "die"
    flag.touch()
    infra = {"folder": tmp_path / "cache", "cluster": cluster, "max_jobs": 3}
    mapper = Dying(flag=str(flag), infra=infra)
    with pytest.raises(JobFailedError) as info:
        list(mapper.process(list(range(12))))
    message = str(info.value)
    if cluster == "local":
        records = registry.read_all(mapper.infra.uid_folder())
        (dead,) = [r.job_id for r in records if r.keys is not None and "5" in r.keys]
        others = [r.job_id for r in records if r.job_id != dead]
        assert len(others) == 2
        assert f"job {dead} " in message
        assert not any(f"job {job} " in message for job in others), message
    else:
        assert "a process of the pool died" in message
        # the pool broke for every chunk: they ran again, each on its own, and only the
        # dead one's items are missing (12 items, at least 3 chunks; none of them before)
        cached = set(Dying(flag=str(flag), infra=infra).infra.cache_dict.keys())
        assert "5" not in cached and len(cached) >= 8, cached
    flag.unlink()
    assert list(Dying(flag=str(flag), infra=infra).process(list(range(12)))) == list(range(12))


class NoYield(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:  # (forgot to yield)
            _ = item + 1


def test_a_method_that_yields_nothing_is_one_clear_error(tmp_path: Path) -> None:
    """Not one cached TypeError per item ("'NoneType' object is not iterable")."""
    mapper = NoYield(infra={"folder": tmp_path / "cache"})
    with pytest.raises(TypeError, match="returned NoneType, not one output per item: yield"):
        list(mapper.process([1, 2, 3]))
    assert not list(mapper.infra.cache_dict.keys())  # no error cached for the items


class Lengths(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[str]) -> tp.Iterator[int]:
        return {item: len(item) for item in items}  # type: ignore[return-value]


class Count(pydantic.BaseModel):
    as_dict: bool = False
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def make(self) -> tp.Any:
        return {"items": ["a", "b"]} if self.as_dict else 5


def test_maps_refuse_what_is_not_one_value_per_item(tmp_path: Path) -> None:
    """A method returning a dict (its keys were cached as the outputs), a string or a dict
    given as the items (its characters or keys were the items), a single item, or an
    upstream task whose output is not a list: clear errors, nothing cached."""
    mapper = Lengths(infra={"folder": tmp_path / "cache"})
    with pytest.raises(TypeError, match="returned a dict, not one output per item"):
        list(mapper.process(["cat", "horse"]))
    with pytest.raises(TypeError, match=r"got the str 'recording.wav': wrap one item in a list"):
        mapper.process("recording.wav")
    with pytest.raises(TypeError, match=r"Lengths.process takes a list .* got int"):
        mapper.process(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got the str"):
        mapper.process.node("recording.wav")
    assert not list(mapper.infra.cache_dict.keys())
    source = Count(infra={"folder": tmp_path / "cache"}).make.node()
    with pytest.raises(TypeError, match=r"come from .*Count.make.*not a list of items: int 5"):
        mapper.process.node(source).result()
    # the plan says so, and not that the items are known at run time (it read them)
    (entry,) = [e for e in exca.graph.plan(mapper.process.node(source)).entries if e.kind == "map"]
    assert (entry.action, entry.items) == ("fail", None)
    assert entry.reason.startswith("TypeError: The items of ")
    # a dict: its keys were the items, silently (a probe)
    with pytest.raises(TypeError, match=r"got a dict: give list\(d\) for its keys"):
        mapper.process({"cat": 1, "horse": 2})
    keyed = Count(as_dict=True, infra={"folder": tmp_path / "cache"}).make.node()
    with pytest.raises(TypeError, match=r"not a list of items: dict .*list\(d.values\(\)\)"):
        mapper.process.node(keyed).result()
    assert not list(mapper.infra.cache_dict.keys())


def test_a_generator_method_cannot_be_a_task() -> None:
    with pytest.raises(TypeError, match="yields: a TaskInfra method returns one result"):

        class Generating(pydantic.BaseModel):
            infra: exca.TaskInfra = exca.TaskInfra(version="1")

            @infra.apply
            def make(self) -> tp.Iterator[int]:
                yield 1


@pytest.mark.parametrize("infra_cls", [exca.TaskInfra, exca.MapInfra])
def test_an_async_method_is_refused_when_decorated(infra_cls: tp.Any) -> None:
    """An async method was accepted: its call cached "cannot pickle 'coroutine'" as the
    method's error (a generator task is refused when decorated)."""
    with pytest.raises(TypeError, match=r"Coroutined.make is async: .*asyncio.run"):

        class Coroutined(pydantic.BaseModel):
            infra: tp.Any = infra_cls(version="1")
            apply = infra.apply if infra_cls is exca.TaskInfra else infra.apply(item_uid=str)

            @apply
            async def make(self) -> int:
                return 1


class Thing:
    def __init__(self, size: int) -> None:
        self.size = size


class Sizes(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[Thing]) -> tp.Iterator[int]:
        for item in items:
            yield item.size


def test_item_uids_holding_a_memory_address_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """item_uid=str on objects without a __str__: their uid changes every run (nothing
    is ever reused, the cache grows): said once."""
    mapper = Sizes(infra={"folder": tmp_path})
    first = [Thing(1), Thing(2)]  # (kept alive: a new Thing at a freed one's address has its uid)
    with caplog.at_level(logging.WARNING, logger="exca"):
        assert list(mapper.process(first)) == [1, 2]
        assert list(mapper.process([Thing(3)])) == [3]
    warned = [r for r in caplog.records if "memory address" in r.getMessage()]
    assert len(warned) == 1 and "Thing object at 0x" in warned[0].getMessage()


_CROWD_LOCK = threading.Lock()
_CROWD: dict[str, list[int]] = {}  # tag -> [running now, most at once]


class Crowd(pydantic.BaseModel):
    """Counts how many of its chunks run at once (threadpool: same process)."""

    tag: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def apply(self, items: list[int]) -> tp.Iterator[int]:
        state = _CROWD.setdefault(self.tag, [0, 0])
        with _CROWD_LOCK:
            state[0] += 1
            state[1] = max(state[1], state[0])
        try:
            for item in items:
                time.sleep(0.02)  # (lets the chunks overlap when the pool allows it)
                yield item
        finally:
            with _CROWD_LOCK:
                state[0] -= 1


def test_each_pool_map_gets_its_own_max_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threadpool maps in one run: the pool of the first (max_jobs=4) is not reused
    for the second (max_jobs=1, e.g. to bound its memory): its chunks run one at a time,
    and the first map's run several at once (an 8-core machine)."""
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    _CROWD.clear()
    infra = {"folder": tmp_path / "cache", "cluster": "threadpool"}
    wide = Crowd(tag="wide", infra={**infra, "max_jobs": 4}).apply.node(list(range(12)))
    narrow = Crowd(tag="narrow", infra={**infra, "max_jobs": 1}).apply.node(wide)
    exca.graph.run(narrow)
    assert narrow.result() == list(range(12))
    assert _CROWD["narrow"][1] == 1
    assert _CROWD["wide"][1] > 1


class Arrays(pydantic.BaseModel):
    """item -> a (100,) array of 10 * item (outputs in one shared data file)."""

    log: str
    infra: exca.MapInfra = exca.MapInfra(version="1", keep_in_ram=False)

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[np.ndarray]:
        for item in items:
            append(self.log, str(item))
            yield np.full(100, 10 * item)


class NpyArrays(pydantic.BaseModel):
    """item -> a (100,) array of 10 * item (one .npy file per output)."""

    log: str
    infra: exca.MapInfra = exca.MapInfra(version="1", keep_in_ram=False)

    @infra.apply(item_uid=str, cache_type="NumpyArray")
    def process(self, items: list[int]) -> tp.Iterator[np.ndarray]:
        for item in items:
            append(self.log, str(item))
            yield np.full(100, 10 * item)


@pytest.mark.parametrize("via", ["call", "node"])
@pytest.mark.parametrize(
    "kind, cut",
    [
        ("pickle", None),
        ("pickle", "overwritten"),  # (its bytes, at the same size: found on reading)
        ("shared", 0.5),
        ("shared", 0),
        ("shared-ram", 0.5),
        ("npy", 0.5),
        ("npy", 0.1),  # (inside its header)
        ("npy", 0.004),  # (3 bytes, inside its magic string: numpy spoke of pickled data)
        ("npy", 0.007),  # (6 bytes: "EOF: reading magic string")
        ("npy", 0),
    ],
)
def test_outputs_whose_files_were_damaged_by_hand_are_computed_again_by_retry(
    tmp_path: Path, kind: str, cut: float | str | None, via: str
) -> None:
    """A payload file removed (cut None), cut short, or overwritten at the same size
    outside exca: a call says what to do; mode retry computes those items again (only
    those; one overwritten was read back as fine, a probe). "shared-ram": enough items
    kept in RAM for a call to load their views at once (the damage escaped that load:
    a review)."""
    log = tmp_path / "calls.txt"
    items = list(range(20 if kind == "shared-ram" else 4))
    model = {"pickle": Pickled, "shared": Arrays, "shared-ram": Arrays, "npy": NpyArrays}[kind]
    ram = {"keep_in_ram": True} if kind == "shared-ram" else {}

    def outputs(mode: str = "cached") -> list[int]:
        infra = {"folder": tmp_path / "cache", "mode": mode, **ram}
        method = model(log=str(log), infra=infra).process
        values = method(items) if via == "call" else method.node(items).result()
        return [int(np.max(v)) for v in values]

    expected = [10 * i for i in items]
    assert outputs() == expected
    data = model(log=str(log), infra={"folder": tmp_path / "cache"}).infra.uid_folder() / "data"
    if kind.startswith("shared"):
        (damaged,) = list(data.iterdir())  # (items 2 and 3 cut off, or all of them)
    else:
        (damaged,) = [p for p in data.iterdir() if p.name.startswith("2-")]
    if cut is None:
        damaged.unlink()
    elif cut == "overwritten":
        size = damaged.stat().st_size
        damaged.write_bytes(damaged.read_bytes()[:2] + b"\xff" * (size - 2))
    else:
        assert isinstance(cut, float | int)
        with damaged.open("r+b") as handle:
            handle.truncate(int(damaged.stat().st_size * cut))
    with pytest.raises(Exception) as info:
        outputs()
    assert "mode='retry' computes it again" in "".join(info.value.__notes__)
    assert outputs("retry") == expected
    assert outputs() == expected
    half = items[len(items) // 2 :]
    again = {0: items, 0.5: half}[cut] if kind.startswith("shared") else [2]
    assert counts(log) == {i: 2 if i in again else 1 for i in items}


class SumOf(pydantic.BaseModel):
    """The sum of the arrays given (a task downstream of a map)."""

    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self, arrays: list[np.ndarray]) -> float:
        return float(sum(a.sum() for a in arrays))


def test_a_downstream_node_of_a_damaged_payload_says_how_to_repair_it(tmp_path: Path) -> None:
    """A node whose input was cut short outside exca fails (not with a wrong value), and
    says what repairs it: the upstream map in mode retry. A run with it in that mode
    reused its damaged items (the plan said "cached") and failed the same way; the plan
    now finds them (a stat per data file, nothing loaded) and the run computes them
    again, then the downstream node."""
    from exca.graph.worker import UpstreamFailed

    log, folder = tmp_path / "calls.txt", tmp_path / "cache"
    mapper = Arrays(log=str(log), infra={"folder": folder})
    assert len(list(mapper.process([1, 2, 3]))) == 3
    (damaged,) = list((mapper.infra.uid_folder() / "data").iterdir())
    with damaged.open("r+b") as handle:
        handle.truncate(damaged.stat().st_size // 2)

    def total(mode: str) -> exca.graph.Node:
        upstream = Arrays(log=str(log), infra={"folder": folder, "mode": mode})
        items = upstream.process.node([1, 2, 3])
        return SumOf(infra={"folder": folder, "mode": "retry"}).process.node(items)

    # the plan in mode cached tells beforehand (it said the map "cached", the task "compute")
    plan = exca.graph.plan(total("cached"))
    mapped, summed = plan.entries
    assert (mapped.status, mapped.action, mapped.items) == ("missing", "fail", "2/3 missing")
    assert "2 cached item(s) cannot be read ('2', '3': their payload file" in mapped.reason
    assert "mode='retry' computes them again" in mapped.reason
    told = mapped.reason.replace(
        ": mode='retry' computes", "; mode='retry' on that upstream config's own infra computes"
    )
    assert told.endswith("on that upstream config's own infra computes them again")
    assert (summed.action, summed.reason) == ("fail", f"upstream {mapped.uid} fails ({told})")
    # (its first line counted statuses only: "2 missing", which reads as "2 to compute")
    assert str(plan).startswith("Plan: 2 node(s): 2 missing; 2 would fail (see their reason)\n")
    with pytest.raises(UpstreamFailed, match="that node in mode='retry'") as info:
        exca.graph.run(total("cached"), progress=False)
    assert "shorter than its index says" in str(info.value)
    (entry,) = [e for e in exca.graph.plan(total("retry")).entries if e.kind == "map"]
    assert (entry.status, entry.action, entry.items) == ("missing", "compute", "2/3 to compute")
    assert "2 whose payload file was removed or damaged outside exca" in entry.reason
    # (explain added "not computed for this config yet" to any map with items to compute)
    (why,) = [e for e in exca.ops.explain(total("retry")) if e.uid == entry.uid]
    assert why.summary().startswith("retry of 2 whose payload")
    assert "not computed for this config yet" not in why.summary()
    exca.graph.run(total("retry"), progress=False)
    assert total("cached").result() == 100 * (10 + 20 + 30)
    assert counts(log) == {1: 1, 2: 2, 3: 2}  # (item 1 was before the cut)


class Total(pydantic.BaseModel):
    """The sum of the numbers given (a task downstream of a map)."""

    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self, numbers: list[int]) -> int:
        return sum(numbers)


def test_a_run_computes_again_an_upstream_item_overwritten_in_place(tmp_path: Path) -> None:
    """An item's payload overwritten at the same size (no stat tells: the plan says
    cached): the node reading it failed, and the run with the map in mode retry failed the
    same way. The map's damaged item is computed again in that run, then the node."""
    log, folder = tmp_path / "calls.txt", tmp_path / "cache"
    mapper = Pickled(log=str(log), infra={"folder": folder})
    assert list(mapper.process([1, 2, 3])) == [10, 20, 30]
    (damaged,) = [p for p in (mapper.infra.uid_folder() / "data").iterdir() if p.name[0] == "2"]
    size = damaged.stat().st_size
    damaged.write_bytes(damaged.read_bytes()[:2] + b"\xff" * (size - 2))

    def total(mode: str) -> exca.graph.Node:
        items = Pickled(log=str(log), infra={"folder": folder, "mode": mode}).process.node(
            [1, 2, 3]
        )
        return Total(infra={"folder": folder}).process.node(items)

    (entry,) = [e for e in exca.graph.plan(total("retry")).entries if e.kind == "map"]
    assert (entry.status, entry.action) == ("cached", "reuse")
    exca.graph.run(total("retry"), progress=False)
    assert total("cached").result() == 60
    assert counts(log) == {1: 1, 2: 2, 3: 1}


class SetupFails(pydantic.BaseModel):
    """A map whose setup (before its first output) raises: a model file that is missing."""

    path: str
    message: str = ""  # raised as a ValueError instead, when given
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        if self.message:
            raise ValueError(self.message)
        Path(self.path).read_text()
        yield from items


@pytest.mark.timeout(120)
def test_a_job_whose_method_raises_says_what_it_raised(tmp_path: Path) -> None:
    """A map job whose method's setup raises: the error gave the job's state ("FINISHED",
    "PENDING" on Slurm) and a cut-off middle of its traceback; the call raises what the
    method raised, as an inline call does, its note naming the job's end and log."""
    missing = tmp_path / "model.bin"
    infra = {"folder": tmp_path / "cache", "cluster": "local", "max_jobs": 1}
    with pytest.raises(FileNotFoundError) as info:
        list(SetupFails(path=str(missing), infra=infra).process(range(10)))
    note = "\n".join(info.value.__notes__)
    told = note[note.index("exca: 7 item(s)") :]  # (after the item's own traceback)
    assert f"failed: FileNotFoundError: [Errno 2] No such file or directory: '{missing}'" in told
    assert "_log.err" in told and "ended with state" not in told and "Traceback" not in told
    # a message of several lines is told whole (not its last line, taken for the exception)
    message = "no model here\nhint: download it first"
    with pytest.raises(ValueError) as info:
        list(SetupFails(path="", message=message, infra=infra).process(range(10)))
    assert str(info.value) == message
    assert f"failed: ValueError: {message} (its log:" in "\n".join(info.value.__notes__)


class ArrayMapper(pydantic.BaseModel):
    """item -> an array of 1000 times (item + offset); offset is not part of the uid."""

    offset: int = 0
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str, exclude_from_cache_uid=("offset",))
    def process(self, items: list[int]) -> tp.Iterator[np.ndarray]:
        for item in items:
            yield np.full(1000, float(item + self.offset))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", ["processpool", "local"])
def test_forced_outputs_free_the_space_of_those_they_replace(tmp_path: Path, cluster: str) -> None:
    """Forcing a map again and again does not make its folder grow: the outputs it
    replaces were written by processes that ended (a while ago), whose files are freed."""
    items = list(range(300))
    sizes = []
    for offset in (0, 1000, 2000, 3000):
        mode = "force" if offset else "cached"
        mapper = ArrayMapper(
            offset=offset,
            infra={"folder": tmp_path, "cluster": cluster, "mode": mode, "max_jobs": 2},
        )
        outputs = list(mapper.process(items))
        assert [float(o[0]) for o in outputs] == [i + offset for i in items]
        folder = mapper.infra.uid_folder()
        data = folder / "data"
        sizes.append(sum(f.stat().st_size for f in data.iterdir()))
        then = time.time() - 300  # (only files idle for 2 minutes are freed)
        for index in folder.glob("*-info.jsonl"):
            os.utime(index, (then, then))
    assert sizes[0] >= 300 * 8000
    assert sizes[-1] == sizes[0]  # (not 4x: the three replaced runs' data files are gone)
    fresh = ArrayMapper(offset=5, infra={"folder": tmp_path, "mode": "read-only"})
    assert [float(o[0]) for o in fresh.process(items)] == [i + 3000 for i in items]


FORCED_MODULE = """
import types
import typing as tp
import pydantic
import exca
import exca.cachedict
import exca.graph.scheduler


class Doubler(pydantic.BaseModel):
    factor: int = 2
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            yield self.factor * item
"""


@pytest.mark.timeout(120)
def test_a_forcing_job_that_dies_before_computing_is_an_error_not_the_old_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The forcing job cannot even load its work (its module is gone by then): the call
    raises, naming the job's end, instead of returning the outputs it was asked to
    replace; the next call forces them."""
    (tmp_path / "forced_module.py").write_text(FORCED_MODULE, "utf8")
    monkeypatch.syspath_prepend(str(tmp_path))
    import forced_module

    from exca.graph.errors import JobFailedError

    folder = tmp_path / "cache"
    assert list(forced_module.Doubler(infra={"folder": folder}).process([1, 2])) == [2, 4]
    (tmp_path / "forced_module.py").unlink()  # (and the job's interpreter cannot import it)
    infra = {"folder": folder, "cluster": "local", "mode": "force"}
    forced = forced_module.Doubler(infra=infra)
    with pytest.raises(JobFailedError, match="2 item") as failed:
        list(forced.process([1, 2]))
    assert "ModuleNotFoundError" in str(failed.value)
    assert list(forced_module.Doubler(infra={"folder": folder}).process([1, 2])) == [2, 4]


class DiesAfterAnItemError(pydantic.BaseModel):
    """Item 1 raises (an item error: the others go on), then the process dies at item 3."""

    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            if item == 1:
                raise ValueError("error of item 1")
            if item == 3:
                os._exit(3)
            yield item


@pytest.mark.timeout(120)
def test_a_chunk_job_killed_after_an_item_error_is_a_job_failure(tmp_path: Path) -> None:
    """Only the error a job raised is raised as the method's: a job that died after an
    item's error (cached, its unit going on) is a JobFailedError, not that item's error
    (an `except ValueError` took the kill for it)."""
    from exca.graph.errors import JobFailedError

    infra = {"folder": tmp_path / "cache", "cluster": "local", "max_jobs": 1}
    with pytest.raises(JobFailedError, match="its process died"):
        list(DiesAfterAnItemError(infra=infra).process([0, 1, 2, 3, 4]))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", ["local", "processpool"])
def test_overlapping_map_nodes_of_one_run_send_each_item_to_one_job(
    tmp_path: Path, cluster: str
) -> None:
    """Two map nodes of one config in one run, sharing items: each item goes to the jobs of
    one node (the jobs of both included the shared ones, and half of them only waited for
    the other's claims); the other node waits for those jobs."""
    from exca.graph import registry

    mapper = make(tmp_path, cluster, infra={"max_jobs": 1000})  # (as given, even on local)
    first, second = mapper.process.node([1, 2, 3, 4]), mapper.process.node([3, 4, 5])
    plan = exca.graph.plan(first, second)
    assert [e.items for e in plan.entries] == [
        "4/4 missing",
        "3/3 missing, 2 by another node of this run",
    ]
    # (the table does not say the counts twice: "3/3 missing [3/3 missing, 2 by ...]")
    assert "3/3 missing [2 by another node of this run]" in str(plan)
    if cluster == "local":  # (one item per job here: as many jobs as distinct items)
        assert [a.elements for a in plan.arrays] == [5]
    exca.graph.run(first, second)
    assert (first.result(), second.result()) == ([10, 20, 30, 40], [30, 40, 50])
    assert counts(tmp_path / "calls.txt") == {1: 1, 2: 1, 3: 1, 4: 1, 5: 1}
    if cluster == "local":
        records = registry.read_all(first.folder)
        sent = collections.Counter(k for r in records for k in r.keys or [])
        assert sent == {"1": 1, "2": 1, "3": 1, "4": 1, "5": 1}, records


@pytest.mark.timeout(120)
def test_read_only_waits_for_a_worker_forcing_the_items(tmp_path: Path) -> None:
    """A forced call removes its items' outputs, then computes them again, holding their
    claims: a read-only call meanwhile waits for it (it raised "read-only and 3/3 items
    missing" while they were a moment away)."""
    block = tmp_path / "block-flag"
    assert list(make(tmp_path, None, block_flag=str(block)).process([0, 1, 2])) == [0, 10, 20]
    block.touch()
    forced = make(tmp_path, None, block_flag=str(block), infra={"mode": "force"})
    forcing = threading.Thread(target=lambda: list(forced.process([0, 1, 2])))
    forcing.start()
    reader = make(tmp_path, None, block_flag=str(block), infra={"mode": "read-only"})
    wait_until(lambda: reader.process.node([0, 1, 2]).status() == "running")
    threading.Timer(0.5, block.unlink).start()
    assert list(reader.process([0, 1, 2])) == [0, 10, 20]
    forcing.join(timeout=60)
    assert counts(tmp_path / "calls.txt") == {0: 2, 1: 2, 2: 2}


DYING_MODULE = """
import sys
import time
import types
import typing as tp
from pathlib import Path

import pydantic

import exca
import exca.cachedict
import exca.graph.scheduler

if sys.argv[0].endswith("_submit.py") and Path(__file__).with_name("die").exists():
    time.sleep(3)  # (a job that lives a while, then dies before computing anything)
    raise RuntimeError("this job dies before computing")  # (an ImportError: refused)


class Scaled(pydantic.BaseModel):
    scale_file: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        scale = int(Path(self.scale_file).read_text())
        for item in items:
            yield scale * item
"""


def dying_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tp.Any:
    """DYING_MODULE, importable here and in jobs, with its map computed once (scale 1),
    then its scale file set to 10 and its jobs set to die."""
    import importlib
    import sys

    (tmp_path / "dying_module.py").write_text(DYING_MODULE, "utf8")
    monkeypatch.syspath_prepend(str(tmp_path))
    paths = [str(tmp_path), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))  # (jobs)
    monkeypatch.delitem(sys.modules, "dying_module", raising=False)  # (another test's)
    module = importlib.import_module("dying_module")
    scale = tmp_path / "scale"
    scale.write_text("1")
    computed = module.Scaled(scale_file=str(scale), infra={"folder": tmp_path / "cache"})
    assert list(computed.process([1, 2])) == [1, 2]
    scale.write_text("10")
    (tmp_path / "die").touch()
    return module


@pytest.mark.timeout(180)
def test_a_second_call_of_a_forcing_instance_whose_job_dies_forces_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads call one forced instance; the first one's job dies before computing: the
    second, which waited for that job, does not take the old outputs as forced (it returned
    them, and so did every later call of the instance)."""
    from exca.graph import registry
    from exca.graph.errors import JobFailedError

    module = dying_module(tmp_path, monkeypatch)
    infra = {"folder": tmp_path / "cache", "cluster": "local", "mode": "force", "max_jobs": 1}
    forced = module.Scaled(scale_file=str(tmp_path / "scale"), infra=infra)
    outcomes: list[tp.Any] = []

    def first() -> None:
        try:
            outcomes.append(list(forced.process([1, 2])))
        except JobFailedError as error:
            outcomes.append(error)

    thread = threading.Thread(target=first)
    thread.start()
    node = forced.process.node([1, 2])
    wait_until(lambda: registry.read_all(node.folder))  # (its job is on its way)
    with pytest.raises(JobFailedError, match="this job dies"):
        list(forced.process([1, 2]))
    thread.join(timeout=120)
    assert len(outcomes) == 1 and isinstance(outcomes[0], JobFailedError)
    (tmp_path / "die").unlink()
    assert list(forced.process([1, 2])) == [10, 20]


def test_the_plan_of_a_pool_map_node_whose_items_another_node_computes(tmp_path: Path) -> None:
    """Its items all computed by the other node's pool: no element of its own (the plan
    counted the elements of a map whose items are not known yet, or one inline)."""
    mapper = make(tmp_path, "threadpool")
    first, second = mapper.process.node([1, 2]), mapper.process.node([1])
    plan = exca.graph.plan(first, second)
    assert [(a.where, a.elements) for a in plan.arrays] == [(plan.arrays[0].where, 2)]
    assert plan.arrays[0].where != "inline" and plan.arrays[0].nodes == [first.uid]
    exca.graph.run(first, second)
    assert counts(tmp_path / "calls.txt") == {1: 1, 2: 1}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", [None, "threadpool"])
def test_a_forced_and_a_cached_map_node_of_one_config_compute_shared_items_once(
    tmp_path: Path, cluster: str | None
) -> None:
    """One run, two map nodes of one config, one forced: an item both need is computed once
    (the forced node recomputed what the other had just computed)."""
    forced = make(tmp_path, cluster, infra={"mode": "force"}).process.node([3, 4])
    cached = make(tmp_path, cluster).process.node([4, 6])
    exca.graph.run(cached, forced)  # (the cached one first: it computes item 4)
    assert counts(tmp_path / "calls.txt") == {3: 1, 4: 1, 6: 1}
    assert (forced.result(), cached.result()) == ([30, 40], [40, 60])


class SlowItems(pydantic.BaseModel):
    """A task making the items of a map, after a pause (other nodes end meanwhile)."""

    items: list[int]
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def make(self) -> list[int]:
        time.sleep(1.0)
        return self.items


@pytest.mark.timeout(120)
def test_a_forced_node_whose_shared_item_another_forced_node_computed_before(
    tmp_path: Path,
) -> None:
    """Two forced map nodes of one config; the second gets its items from a slow upstream
    task, after the first forced their shared item: that item is forced once, and the
    second does not report it as not computed (its job skips it: forced by this run)."""
    first = make(tmp_path, "threadpool", infra={"mode": "force"}).process.node([2, 4])
    items = SlowItems(items=[1, 2], infra={"folder": tmp_path / "cache"}).make.node()
    second = make(tmp_path, "threadpool", infra={"mode": "force"}).process.node(items)
    exca.graph.run(first, second)
    assert counts(tmp_path / "calls.txt") == {1: 1, 2: 1, 4: 1}
    assert second.result() == [10, 20]


@pytest.mark.timeout(180)
def test_a_map_node_whose_shared_items_job_dies_computes_them_itself(tmp_path: Path) -> None:
    """Two map nodes of one config share item 2; the first node's job is killed before
    computing it: the second node computes it with a job of its own (it failed, naming the
    first node's job, which it had only waited for)."""
    from test_execution import kill_tree

    from exca.graph import registry

    block, slow = tmp_path / "block-flag", tmp_path / "slow-flag"
    block.touch()
    slow.touch()  # (item 2 waits too: the first node's job cannot compute it before the kill)
    flags = {"block_flag": str(block), "slow_flag": str(slow)}
    mapper = make(tmp_path, "local", **flags, infra={"max_jobs": 1})
    first, second = mapper.process.node([0, 2]), mapper.process.node([2, 3])
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            exca.graph.run(first, second)
            outcome.append(None)
        except BaseException as error:  # (checked below)
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    folder = first.folder
    wait_until(lambda: any(r.keys and "0" in r.keys for r in registry.read_all(folder)))
    (job,) = [r for r in registry.read_all(folder) if r.keys and "0" in r.keys]
    wait_until(lambda: {0, 2} & set(counts(tmp_path / "calls.txt")))  # (it started, waits)
    kill_tree(int(job.job_id))
    slow.unlink()
    thread.join(timeout=150)
    block.unlink()
    (error,) = outcome
    failed = error.failures if isinstance(error, exca.graph.errors.NodeFailures) else None
    assert failed is None or second.uid not in failed, error
    assert first.uid in str(error) or isinstance(error, exca.graph.errors.JobFailedError)
    assert second.result() == [20, 30]


class Tagged(pydantic.BaseModel):
    """item -> 1000 * tag + item (tag is not part of the uid: a value tells which call wrote
    it); the first process computing item 99 dies (SIGKILL) while the file `died` is absent
    in `ctl`, creating it."""

    log: str
    ctl: str
    tag: int = 0
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str, exclude_from_cache_uid=("tag", "ctl"))
    def process(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            append(self.log, str(item))
            died = Path(self.ctl) / "died"
            if item == 99 and not died.exists():
                died.touch()
                os.kill(os.getpid(), 9)
            yield 1000 * self.tag + item


def tagged_in(tmp_path: Path) -> tp.Callable[..., Tagged]:
    def tagged(tag: int, **infra: tp.Any) -> Tagged:
        infra = {"folder": tmp_path / "cache", **infra}
        return Tagged(log=str(tmp_path / "calls.txt"), ctl=str(tmp_path), tag=tag, infra=infra)

    return tagged


@pytest.mark.timeout(180)
def test_forced_map_nodes_sharing_items_whose_job_dies_force_them_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One forced instance, two nodes sharing items 99 and 1; the job of the first dies on
    item 99 before item 1: the second node forces both itself (it took item 1's old output
    as forced), and the instance's next call forces nothing again (it lost what the second
    node's own job had forced: item 2)."""
    import exca.graph.scheduler

    monkeypatch.setattr(exca.graph.scheduler._SHUFFLER, "shuffle", lambda items: None)
    (tmp_path / "died").touch()
    tagged = tagged_in(tmp_path)

    assert list(tagged(1).process([99, 1, 2])) == [1099, 1001, 1002]
    (tmp_path / "died").unlink()
    forced = tagged(2, cluster="local", mode="force", max_jobs=1)
    first, second = forced.process.node([99, 1]), forced.process.node([99, 1, 2])
    with pytest.raises(exca.graph.errors.JobFailedError):  # (the first node's job died)
        exca.graph.run(first, second)
    assert list(tagged(0, mode="read-only").process([99, 1, 2])) == [2099, 2001, 2002]
    before = counts(tmp_path / "calls.txt")
    assert list(forced.process([99, 1, 2])) == [2099, 2001, 2002]
    assert counts(tmp_path / "calls.txt") == before


@pytest.mark.timeout(180)
def test_a_read_only_map_says_how_the_job_that_left_its_items_ended(tmp_path: Path) -> None:
    """A map whose local chunk job was killed (SIGKILL) before writing its items: the
    call says that job's process died, status() says "failed" and the default mode
    computes them again, but a read-only call (and its plan) said only "read-only and
    5/5 items missing", as of items never sent to a job. It now names that job and how it
    ended, writing nothing."""
    from test_execution import _snapshot

    tagged, items = tagged_in(tmp_path), [1, 2, 99, 3, 4]
    with pytest.raises(exca.graph.errors.JobFailedError, match="its process died") as call:
        list(tagged(0, cluster="local", max_jobs=1).process(items))
    job_id = call.value.args[0].split("local job ")[1].split()[0]
    root = tmp_path / "cache"
    before = _snapshot(root)
    reader = tagged(0, mode="read-only")
    ended = rf"read-only and \d/5 items missing .*: local job {job_id} ended without writing"
    with pytest.raises(exca.graph.errors.JobFailedError, match=ended) as read_only:
        list(reader.process(items))
    assert "its process died (killed by SIGKILL" in str(read_only.value)
    assert "mode='read-only' never computes" in str(read_only.value)
    node = reader.process.node(items)
    (entry,) = exca.graph.plan(node).entries
    assert entry.action == "fail" and f"local job {job_id} ended" in entry.reason, entry
    (explanation,) = exca.ops.explain(node)
    assert explanation.reason == entry.reason  # (not "its folder ... holds no item")
    assert node.status() == "failed"
    assert _snapshot(root) == before  # (nothing written, nothing moved)
    assert list(tagged(0, cluster="local").process(items)) == items  # (computed again)
    assert list(reader.process(items)) == items


@pytest.mark.timeout(120)
def test_a_read_only_map_waiting_for_a_job_that_dies_says_how_it_ended(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only call waits for the chunk job computing its items; that job killed
    (SIGKILL), the call raised "read-only and 2/2 items missing", saying not how the job
    ended, where a read-only call finding it ended names it. It does too now."""
    from racing import Background
    from test_execution import kill_tree

    block = tmp_path / "block-flag"
    block.touch()
    items, one_job = [0, 2], {"max_jobs": 1}  # (the job blocks in item 0)
    job = make(tmp_path, "local", block_flag=str(block), infra=one_job).process.node(items).job()
    wait_until(lambda: counts(tmp_path / "calls.txt"))  # (the method started)
    infra = {"mode": "read-only", **one_job}
    reader = make(tmp_path, "local", block_flag=str(block), infra=infra)
    try:
        with caplog.at_level(logging.INFO, logger="exca"):
            reading = Background(lambda: list(reader.process(items)))
            wait_until(lambda: "is computed elsewhere" in caplog.text)  # (it waits)
    finally:
        kill_tree(int(job.job_id))
    (error,) = reading.join(timeout=60)
    ended = f"local job {job.job_id} ended without writing its result: its process died"
    assert isinstance(error, exca.graph.errors.JobFailedError) and ended in str(error), error
    with pytest.raises(exca.graph.errors.JobFailedError) as again:  # (finding it ended)
        list(reader.process(items))
    assert str(again.value) == str(error)


@pytest.mark.timeout(120)
def test_a_forced_and_a_cached_map_node_on_different_clusters_share_items(
    tmp_path: Path,
) -> None:
    """The cached node computes inline, the forced one in a pool, with its items from an
    upstream task: what one computed in the run, the other does not compute again."""
    items = SlowItems(items=[5, 6], infra={"folder": tmp_path / "cache"}).make.node()
    cached = make(tmp_path, None).process.node([5, 6])
    forced = make(tmp_path, "threadpool", infra={"mode": "force"}).process.node(items)
    exca.graph.run(cached, forced)
    assert counts(tmp_path / "calls.txt") == {5: 1, 6: 1}


@pytest.mark.timeout(180)
def test_a_forced_node_whose_shared_items_job_dies_before_starting_forces_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two forced nodes sharing items 1 and 2; the first node's job is killed right after
    its submission, before computing anything: the second node forces the shared items
    itself (their old outputs were still in place, and it returned them as forced)."""
    from test_execution import kill_tree

    import exca.graph.scheduler

    tagged = tagged_in(tmp_path)
    assert list(tagged(1).process([1, 2, 3])) == [1001, 1002, 1003]
    submit = exca.graph.scheduler.executors.submit_array
    killed: list[str] = []

    def submit_then_kill(units: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        handles = list(submit(units, *args, **kwargs))
        for unit, handle in zip(units, handles):
            if unit.uids and "1" in unit.uids and not killed:
                killed.append(handle.job_id)
                kill_tree(int(handle.job_id))
        return handles

    monkeypatch.setattr(exca.graph.scheduler.executors, "submit_array", submit_then_kill)
    forced = tagged(2, cluster="local", mode="force", max_jobs=1)
    first, second = forced.process.node([1, 2]), forced.process.node([1, 2, 3])
    with pytest.raises(exca.graph.errors.JobFailedError):  # (the first node's job)
        exca.graph.run(first, second)
    assert killed
    assert list(tagged(0, mode="read-only").process([1, 2, 3])) == [2001, 2002, 2003]


@pytest.mark.timeout(120)
def test_ctrl_c_while_a_pool_computes_says_it_cancels_that_work(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """(the warning spoke of jobs only: Ctrl-C of a pool's work logged nothing)"""
    import _thread

    log, block = tmp_path / "calls.txt", tmp_path / "block"
    block.touch()
    mapper = make(tmp_path, "threadpool", block_flag=str(block))

    def interrupt_once_computing() -> None:
        # (item 0 blocks its worker; on 2 cores the pool has one thread, which may take
        # item 0 first: waiting for another item as well hung ~5% of runs)
        wait_until(lambda: 0 in counts(log), timeout=60)
        time.sleep(0.2)
        _thread.interrupt_main()
        time.sleep(0.5)
        block.unlink()  # (the pool's thread computing item 0 then ends)

    thread = threading.Thread(target=interrupt_once_computing)
    thread.start()
    with caplog.at_level("WARNING", logger="exca"), pytest.raises(KeyboardInterrupt):
        list(mapper.process(list(range(20))))
    thread.join()
    messages = [r.getMessage() for r in caplog.records if "Interrupted" in r.getMessage()]
    assert messages == ["Interrupted: cancelling this call's work in its threadpool"]


def test_ctrl_c_while_a_map_claims_its_items_leaves_no_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C right after the claim file was written left it behind: in a process that
    lives on (a notebook), every other process computing those items waited for good."""
    import signal

    from exca.storage.claims import Claims

    original = Claims._write
    sent: list[int] = []

    def write_then_sigint(self: Claims, *args: tp.Any) -> tp.Any:
        out = original(self, *args)
        if not sent:
            sent.append(1)
            signal.raise_signal(signal.SIGINT)
        return out

    mapper = make(tmp_path, None)
    monkeypatch.setattr(Claims, "_write", write_then_sigint)
    with pytest.raises(KeyboardInterrupt):
        list(mapper.process([1, 2, 3]))
    monkeypatch.undo()
    folder = mapper.process.node([1]).folder
    assert folder is not None and sent
    assert list((folder / "claims").glob("*.claim")) == []
    # another process computes them at once (it waited for this live process's claim)
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from test_map_execution import make; "
        "from pathlib import Path; print(list(make(Path(sys.argv[2]), None).process([1, 2, 3])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "[10, 20, 30]"


def test_many_item_errors_are_logged_in_a_few_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One warning per failed item flooded a notebook's cell (20 lines for 20 items): the
    first ones are logged one by one, the others counted in one line."""
    fail_dir = tmp_path / "fail"
    fail_dir.mkdir()
    items = list(range(20))
    for item in items[1::2]:  # (every other one: not mistaken for a failed setup)
        (fail_dir / str(item)).touch()
    mapper = make(tmp_path, None, fail_dir=str(fail_dir))
    with caplog.at_level(logging.WARNING, logger="exca"), pytest.raises(ValueError):
        list(mapper.process(items))
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" of ")[0] for line in lines] == [
        "Item '1'",
        "Item '3'",
        "Item '5'",
        "... and 7 more item(s)",
    ]
    assert "failed; their errors are cached too" in lines[-1]
    assert len(list(mapper.process(items[::2]))) == 10  # (the others computed and cached)


def test_many_outputs_that_cannot_be_stored_are_logged_in_a_few_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mapper = Storing(log=str(tmp_path / "calls.txt"), infra={"folder": tmp_path / "cache"})
    with caplog.at_level(logging.WARNING, logger="exca"), pytest.raises(TypeError):
        list(mapper.process(list(range(100, 110))))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and all("cannot be stored" in line for line in lines[:3])
    assert lines[3].startswith("... and 7 more output(s) of ") and "cached too" in lines[3]


NOTEBOOK_MAP_SCRIPT = """
import sys
from typing import Iterator
import pydantic
import exca
import exca.cachedict
import exca.graph.scheduler


class Embedder(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def embed(self, items: list[int]) -> Iterator[int]:
        for item in items:
            {body}


if __name__ == "__main__":
    cluster = None if sys.argv[2] == "none" else sys.argv[2]
    obj = Embedder(infra={{"folder": sys.argv[1], "cluster": cluster}})
    items = [int(i) for i in sys.argv[3].split(",")]
    if sys.argv[4] == "call":
        print(*obj.embed(items))
    else:
        print(*obj.embed.node(items).result())
"""


def test_items_of_other_code_of_a_main_map_warn(tmp_path: Path) -> None:
    """As a task's result: two notebooks defining `class Embedder` share
    `__main__.Embedder.embed,1`, and so does a map cell edited and run again. Items of a
    `__main__` method record their code's digest; a call reusing items computed by other
    code warns once, whether it reads them alone or along with new ones."""

    def run(
        body: str, items: str, cluster: str = "none", how: str = "call"
    ) -> subprocess.CompletedProcess[str]:
        script = tmp_path / "notebook.py"
        script.write_text(NOTEBOOK_MAP_SCRIPT.format(body=body))
        command = [sys.executable, str(script), str(tmp_path / "cache"), cluster, items, how]
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)

    warning = "reusing a result computed by other code of Embedder.embed"
    first = run("yield item * 10", "1,2,3")
    assert first.stdout.split() == ["10", "20", "30"] and warning not in first.stderr
    same = run("yield item * 10", "1,2,3,4")  # (the same code: reused, and one new item)
    assert same.stdout.split() == ["10", "20", "30", "40"] and warning not in same.stderr
    edited = run("yield item * 100", "3,4,5")  # (cached items, and one computed now)
    assert edited.stdout.split() == ["30", "40", "500"]  # (the cache: as documented)
    assert edited.stderr.count(warning) == 1, edited.stderr
    assert warning in run("yield item * 100", "1", how="node").stderr  # (a graph node's)
    assert warning not in run("yield item * 100", "5").stderr  # (its own item)
    # (its own item first, then one of other code: each run of items is looked at)
    assert warning in run("yield item * 100", "5,2").stderr
    # computed in a process pool (the class pickled by value): the same digest as here
    pooled = run("yield item * 10", "6,7", cluster="processpool")
    assert pooled.stdout.split() == ["60", "70"]
    assert warning not in run("yield item * 10", "6,7").stderr
    assert warning in run("yield item * 100", "6,7").stderr


@pytest.mark.parametrize("when", ["before", "after"])
def test_items_of_other_code_read_by_a_later_call_warn(tmp_path: Path, when: str) -> None:
    """A process checked the items of a folder once per code (codeprint._ITEMS_CHECKED),
    those its first call read: an item of other code (another notebook's namesake class)
    read by a later call was used without the warning a fresh process gives, whether it
    was written before that first call (``before``) or by another process since
    (``after``). Items not checked yet are checked, and all of them again once the
    folder's index holds what was not there at the last check."""
    cache = tmp_path / "cache"
    other = tmp_path / "other.py"
    other.write_text(NOTEBOOK_MAP_SCRIPT.format(body="yield item * 100"))
    main = """
        def main() -> None:
            import subprocess
            other = [sys.executable, sys.argv[2], sys.argv[1], "none", "3", "call"]
            obj = Embedder(infra={"folder": sys.argv[1]})
            if sys.argv[3] == "before":
                subprocess.run(other, check=True)
            print(*obj.embed([1, 2]), flush=True)
            print(*obj.embed([1, 2]), flush=True)  # (checked: once)
            if sys.argv[3] == "after":
                subprocess.run(other, check=True)
            print("then", *Embedder(infra={"folder": sys.argv[1]}).embed([1, 2, 3]), flush=True)


        if __name__ == "__main__" and sys.argv[2].endswith(".py"):
            main()
        elif __name__ == "__main__":"""
    script = tmp_path / "notebook.py"
    script.write_text(
        NOTEBOOK_MAP_SCRIPT.format(body="yield item * 10").replace(
            'if __name__ == "__main__":', textwrap.dedent(main)
        )
    )
    command = [sys.executable, str(script), str(cache), str(other), when]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    assert done.stdout.split("then")[1].split() == ["10", "20", "300"], done.stdout
    warning = "reusing a result computed by other code of Embedder.embed"
    assert done.stderr.count(warning) == 1, done.stderr


@pytest.mark.parametrize("cluster", ["threadpool", "debug"])
def test_a_call_leaves_the_random_state_of_the_user_as_it_was(tmp_path: Path, cluster: str) -> None:
    """Items computed or cached, the numbers a seeded script draws after a call are the
    same (the order chunks start in is shuffled with a generator of exca's own)."""
    import random

    def draws() -> list[int]:
        random.seed(0)
        assert list(make(tmp_path, cluster).process(list(range(6)))) == [10 * i for i in range(6)]
        return [random.randint(0, 99) for _ in range(5)]

    random.seed(0)
    expected = [random.randint(0, 99) for _ in range(5)]
    assert draws() == expected  # (items computed)
    assert draws() == expected  # (cached)
    assert counts(tmp_path / "calls.txt") == {i: 1 for i in range(6)}


def test_forked_drivers_start_their_chunks_in_different_orders() -> None:
    """Overlapping runs start on different chunks: processes forked from one driver (a
    multiprocessing pool) shuffled alike with a generator seeded once at import (a review)."""
    import multiprocessing

    from exca.graph.scheduler import _SHUFFLER

    def order(queue: tp.Any) -> None:
        items = list(range(50))
        _SHUFFLER.shuffle(items)
        queue.put(items)

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    processes = [context.Process(target=order, args=(queue,)) for _ in range(3)]
    for process in processes:
        process.start()
    orders = [tuple(queue.get(timeout=30)) for _ in processes]
    for process in processes:
        process.join()
    assert len(set(orders)) == 3


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", [None, "threadpool", "local", "debug"])
def test_the_job_of_a_map_node_gives_its_outputs(tmp_path: Path, cluster: str | None) -> None:
    """node.job() of a map (docs: a map's node answers what a task's infra does) sends its
    missing items; result() gives the outputs in item order, once every item is cached;
    an item's error is raised; cached items are no job. It read the task's result key:
    always "not computed", a local job "died" (a probe)."""
    fail_dir = tmp_path / "fail"
    fail_dir.mkdir()

    def node(items: list[int], mode: str = "cached") -> tp.Any:
        infra = {"max_jobs": 2, "mode": mode}
        return make(tmp_path, cluster, fail_dir=str(fail_dir), infra=infra).process.node(items)

    job = node([3, 1, 2, 1]).job()
    assert job.result() == [30, 10, 20, 10]
    assert job.done() and job.state == "COMPLETED" and job.cluster == cluster
    if cluster == "local":  # (2 chunk jobs: the logs of both, under their ids)
        ids = [h.job_id for h in job.handle.handles]
        assert len(ids) == 2 and all(f"--- job {i}" in job.stderr() for i in ids)
    assert counts(tmp_path / "calls.txt") == {1: 1, 2: 1, 3: 1}
    again = node([1, 2]).job()  # (all cached: no job)
    assert again.handle is None and again.state == "COMPLETED" and again.result() == [10, 20]
    (fail_dir / "4").touch()
    failing = node([4, 5]).job()
    with pytest.raises(ValueError, match="bad item 4"):
        failing.result()
    assert failing.state == "FAILED"
    (fail_dir / "4").unlink()
    before = counts(tmp_path / "calls.txt")  # (4: maybe twice, its error checked alone)
    retry = node([4, 5], "retry").job()
    assert retry.result() == [40, 50]
    assert counts(tmp_path / "calls.txt") == {**before, 4: before[4] + 1}
    assert before[5] == 1 and all(before[i] == 1 for i in (1, 2, 3))


@pytest.mark.timeout(180)
def test_a_call_waits_for_a_job_retrying_cached_item_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job sent to retry a map's cached item errors (e.g. by a detached run, or a node's
    job()) is waited for by a call in mode cached, which then gives the outputs: it
    raised the old error at once (the plan said the map was cached, with errors; a probe)."""
    waits = waits_for_others(monkeypatch)
    fail_dir, slow = tmp_path / "fail", tmp_path / "slow"
    fail_dir.mkdir()
    (fail_dir / "2").touch()

    def mapper(mode: str = "cached") -> Mapper:
        return make(
            tmp_path, "local", fail_dir=str(fail_dir), slow_flag=str(slow), infra={"mode": mode}
        )

    with pytest.raises(ValueError, match="bad item 2"):
        list(mapper().process([2, 5]))
    (fail_dir / "2").unlink()
    slow.touch()  # (the retry of item 2 waits for it)
    job = mapper("retry").process.node([2, 5]).job()
    (entry,) = exca.graph.plan(mapper().process.node([2, 5])).entries
    assert (entry.status, entry.action) == ("running", "wait"), entry.reason
    outputs: list[tp.Any] = []
    thread = threading.Thread(target=lambda: outputs.append(list(mapper().process([2, 5]))))
    thread.start()
    waits.until(thread)
    assert thread.is_alive() and not outputs  # (waiting for the job)
    slow.unlink()
    thread.join(timeout=120)
    assert outputs == [[20, 50]] and job.result() == [20, 50]
    assert counts(tmp_path / "calls.txt")[5] == 1


@pytest.mark.timeout(180)
def test_the_retry_job_of_a_map_node_asked_while_a_job_of_its_items_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """job() in mode retry while the job that cached the item's error still runs: it gave
    that job's outcome (the old error); then it followed that job, and sent the retry only
    when polled, with that job's id meanwhile: its cancel() cancelled that job (a review).
    Its own job is sent at once: it waits for the items the other job holds, and retries
    the error that job cached before."""
    fail_dir, slow = tmp_path / "fail", tmp_path / "slow"
    fail_dir.mkdir()
    (fail_dir / "4").touch()
    slow.touch()
    # (items in the order given: 4 fails, then the job waits in item 2)
    monkeypatch.setattr(exca.graph.scheduler, "_SHUFFLER", types.SimpleNamespace(shuffle=len))

    def node(mode: str = "cached") -> tp.Any:
        infra = {"mode": mode, "max_jobs": 1}
        mapper = make(tmp_path, "local", fail_dir=str(fail_dir), slow_flag=str(slow), infra=infra)
        return mapper.process.node([4, 2])

    first = node().job()  # (item 2 waits for the slow flag; item 4 fails)
    wait_until(lambda: exca.cachedict.CacheDict(node().folder).entry_type("4") == "Error")
    (fail_dir / "4").unlink()
    retry = node("retry").job()
    assert retry.job_id != first.job_id and not first.done()
    assert not retry.done() and retry.state in ("PENDING", "RUNNING")
    slow.unlink()
    assert retry.result() == [40, 20]
    assert counts(tmp_path / "calls.txt")[4] >= 2 and counts(tmp_path / "calls.txt")[2] == 1


@pytest.mark.timeout(180)
@pytest.mark.parametrize("raised", ["ValueError", "KeyError"])
def test_a_cached_job_or_call_follows_a_job_retrying_cached_errors(
    tmp_path: Path, raised: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a job retries a map's cached item error: job() in mode cached said FAILED and
    gave the old error at once; a call did so when the error was a KeyError (a review)."""
    waits = waits_for_others(monkeypatch)
    fail_dir, slow = tmp_path / "fail", tmp_path / "slow"
    fail_dir.mkdir()
    (fail_dir / "2").touch()

    def mapper(mode: str = "cached") -> Mapper:
        infra = {"mode": mode}
        flags = {"fail_dir": str(fail_dir), "slow_flag": str(slow), "raised": raised}
        return make(tmp_path, "local", infra=infra, **flags)

    with pytest.raises((ValueError, KeyError), match="bad item 2"):
        list(mapper().process([2, 5]))
    (fail_dir / "2").unlink()
    slow.touch()  # (the retry of item 2 waits for it)
    retrying = mapper("retry").process.node([2, 5]).job()
    follower = mapper().process.node([2, 5]).job()
    assert not follower.done() and follower.state in ("PENDING", "RUNNING")
    outputs: list[tp.Any] = []
    thread = threading.Thread(target=lambda: outputs.append(list(mapper().process([2, 5]))))
    thread.start()
    waits.until(thread)
    assert thread.is_alive() and not outputs  # (waiting for the retry job)
    slow.unlink()
    thread.join(timeout=120)
    assert outputs == [[20, 50]] and follower.result() == [20, 50]
    assert retrying.result() == [20, 50]


@pytest.mark.timeout(180)
def test_a_forced_instance_reads_what_its_own_forcing_job_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """node.job() of a forced instance, then a call of that instance while the job runs:
    it read the outputs the force was replacing, and a second job() said COMPLETED and
    raised a bare KeyError (a review). Both follow the forcing job."""
    waits = waits_for_others(monkeypatch)
    slow, factor = tmp_path / "slow", tmp_path / "factor"
    assert list(make(tmp_path, "local", slow_flag=str(slow)).process([1, 2])) == [10, 20]
    factor.write_text("100")  # (item -> 100 * item from now on)
    forced = make(
        tmp_path, "local", slow_flag=str(slow), factor_file=str(factor), infra={"mode": "force"}
    )
    slow.touch()
    job = forced.process.node([1, 2]).job()
    outputs: list[tp.Any] = []
    thread = threading.Thread(target=lambda: outputs.append(list(forced.process([1, 2]))))
    thread.start()
    waits.until(thread)
    again = forced.process.node([1, 2]).job()
    assert thread.is_alive() and not outputs and not again.done()
    slow.unlink()
    thread.join(timeout=120)
    assert outputs == [[100, 200]] and again.result() == [100, 200] == job.result()
    assert counts(tmp_path / "calls.txt") == {1: 2, 2: 2}  # (forced once)
    assert list(forced.process([1, 2])) == [100, 200]


def test_an_item_error_records_when_its_computation_started(tmp_path: Path) -> None:
    """A retry tells an error cached before it asked (computed again) from one of a
    computation started since (its answer: e.g. another retry asked at the same time);
    item errors of a map fed a list recorded no start time: every one looked older, and
    two retries asked together computed the item twice (a review)."""
    fail_dir = tmp_path / "fail"
    fail_dir.mkdir()
    (fail_dir / "2").touch()
    before = time.time()
    with pytest.raises(ValueError, match="bad item 2"):
        list(make(tmp_path, None, fail_dir=str(fail_dir)).process([2, 5]))
    cache = make(tmp_path, None, fail_dir=str(fail_dir)).infra.cache_dict
    started = cache.entry("2").info["#meta"]["t"]  # type: ignore[union-attr]
    assert before - 0.01 <= started <= time.time()
    # an error of a batch: its time is when its item started, read by the method, not
    # the batch's start (which made a retry asked meanwhile compute it once more; a review)
    (fail_dir / "3").touch()
    block = tmp_path / "block"
    block.touch()
    before = time.time()  # (before the timer starts: its 0.5 s count from after this)
    threading.Timer(0.5, block.unlink).start()
    blocked = make(tmp_path, None, fail_dir=str(fail_dir), block_flag=str(block))
    with pytest.raises(ValueError, match="bad item 3"):
        list(blocked.process([0, 3]))  # (item 0 waits 0.5 s, then 3 fails)
    failed = blocked.infra.cache_dict.entry("3").info["#meta"]["t"]  # type: ignore[union-attr]
    assert failed >= before + 0.5


@pytest.mark.timeout(180)
def test_a_cached_item_error_is_raised_at_once_while_its_job_runs_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job that cached an item's error goes on with other items: job() and a call in
    mode cached followed it, as if it retried the error, until it ended (a review)."""
    fail_dir, slow = tmp_path / "fail", tmp_path / "slow"
    fail_dir.mkdir()
    (fail_dir / "3").touch()
    slow.touch()
    monkeypatch.setattr(exca.graph.scheduler, "_SHUFFLER", types.SimpleNamespace(shuffle=len))
    flags = {"fail_dir": str(fail_dir), "slow_flag": str(slow), "infra": {"max_jobs": 1}}
    running = make(tmp_path, "local", **flags).process.node([3, 2]).job()
    try:
        wait_until(lambda: exca.cachedict.CacheDict(running.node.folder).entry_type("3") == "Error")
        job = make(tmp_path, "local", **flags).process.node([3]).job()
        assert job.done() and job.state == "FAILED"
        with pytest.raises(ValueError, match="bad item 3"):
            list(make(tmp_path, "local", **flags).process([3]))
        assert not running.done()
    finally:
        slow.unlink()
    wait_until(running.done, timeout=120)
    assert running.state == "FAILED"  # (item 3's error)


@pytest.mark.timeout(120)
def test_a_call_waits_for_a_job_retrying_an_error_cached_without_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item errors cached by an older exca have no start time: a call in mode cached raised
    such an error at once while a job retried it (a review); it waits for that job."""
    waits = waits_for_others(monkeypatch)
    fail_dir, slow = tmp_path / "fail", tmp_path / "slow"
    fail_dir.mkdir()
    (fail_dir / "2").touch()

    def mapper(mode: str = "cached") -> Mapper:
        flags = {"fail_dir": str(fail_dir), "slow_flag": str(slow)}
        return make(tmp_path, "local", infra={"mode": mode}, **flags)

    with pytest.raises(ValueError, match="bad item 2"):
        list(mapper().process([2]))
    cache = mapper().infra.cache_dict
    error = cache["2"]
    with cache.write():  # (as an older exca wrote it: no "#meta")
        del cache["2"]
        cache["2"] = error
    assert "#meta" not in cache.entry("2").info  # type: ignore[union-attr]
    (fail_dir / "2").unlink()
    slow.touch()  # (the retry of item 2 waits for it)
    job = mapper("retry").process.node([2]).job()
    outputs: list[tp.Any] = []
    thread = threading.Thread(target=lambda: outputs.append(list(mapper().process([2]))))
    thread.start()
    waits.until(thread)
    assert thread.is_alive() and not outputs  # (waiting for the job)
    slow.unlink()
    thread.join(timeout=60)
    assert outputs == [[20]] and job.result() == [20]


class Segfaults(pydantic.BaseModel):
    """item -> item; item 7 crashes its process (a C library reading address 0)."""

    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        import ctypes
        import faulthandler

        for item in items:
            if item == 7:
                faulthandler.disable()  # (pytest's: its dump of every thread in the test log)
                ctypes.string_at(0)
            yield item


@pytest.mark.timeout(120)
def test_a_processpool_item_that_crashes_alone_does_not_kill_the_caller(tmp_path: Path) -> None:
    """A process pool isolates crashes: the only missing item, which segfaults, ran in the
    caller (a shortcut for one item) and killed it (a notebook's kernel); it fails in a
    pool process, as it did among other missing items. The plan says so too."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import exca.graph; "
        "from exca.graph.errors import JobFailedError; "
        "from test_map_execution import Segfaults\n"
        "mapper = Segfaults(infra={'folder': sys.argv[2], 'cluster': 'processpool'})\n"
        "print(exca.graph.plan(mapper.process.node([7])).entries[0].where)\n"
        "try:\n"
        "    list(mapper.process([7]))\n"
        "except JobFailedError as error:\n"
        "    print('caught:', error)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert out.returncode == 0, (out.returncode, out.stderr[-2000:])
    where, caught = out.stdout.splitlines()[:2]
    assert where == "processpool"
    assert caught.startswith("caught: ") and "a process of the pool died" in caught


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", ["processpool", "local"])
def test_a_dead_worker_error_names_the_items_it_left(tmp_path: Path, cluster: str) -> None:
    """A worker dying hard (here a segfault) left "N item(s) of <node> not computed" with
    no item named: the error names them (the first few, the others counted) and holds
    them all in ``item_uids``."""
    from exca.graph.errors import JobFailedError

    items = list(range(40))
    infra = {"folder": tmp_path / "cache", "cluster": cluster, "max_jobs": 1}
    mapper = Segfaults(infra=infra)
    with pytest.raises(JobFailedError) as info:
        list(mapper.process(items))
    cached = set(mapper.infra.cache_dict.keys())
    missing = [str(item) for item in items if str(item) not in cached]
    # (the dead chunk: one job of 40 items on local, one of 3 chunks of a pool)
    assert "7" in missing and len(missing) > 5, missing
    assert info.value.item_uids == missing
    message = str(info.value)
    assert f"{len(missing)} item(s) of " in message
    assert ", ".join(repr(uid) for uid in missing[:5]) in message
    assert f"and {len(missing) - 5} more" in message


class KilledOnce(pydantic.BaseModel):
    """item -> item; item 7 kills its process (SIGKILL) while the file ``flag`` exists.
    With ``holding_the_count``, it first removes the flag (killed once) and takes the lock
    of its process pool's item count."""

    flag: str
    holding_the_count: bool = False
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        import signal

        from exca.graph import executors

        for item in items:
            if item == 7 and os.path.exists(self.flag):
                if self.holding_the_count:
                    os.remove(self.flag)
                    executors._POOL_ITEMS[0].get_lock().acquire()
                os.kill(os.getpid(), signal.SIGKILL)
            yield item


@pytest.mark.timeout(180)
@pytest.mark.parametrize("call", ["call", "job"])
def test_a_killed_map_job_says_the_next_call_computes_its_items(tmp_path: Path, call: str) -> None:
    """A map job killed (kill -9) said "use mode='retry' to recompute", as for a task
    (whose failure is recorded), while its missing items are not recorded as failed: the
    next call computes them in any mode (and retry also recomputes every item whose error
    is cached). The hint says so (a probe)."""
    from exca.graph.errors import JobFailedError

    flag = tmp_path / "kill"
    flag.touch()
    items = list(range(12))
    infra = {"folder": tmp_path / "cache", "cluster": "local", "max_jobs": 1}
    mapper = KilledOnce(flag=str(flag), infra=infra)
    with pytest.raises(JobFailedError) as info:
        if call == "call":
            list(mapper.process(items))
        else:
            mapper.process.node(items).job().result()
    message = str(info.value)
    assert "7" in info.value.item_uids and "killed" in message, message
    assert message.endswith("(the next call computes them)"), message
    assert "mode='retry'" not in message
    flag.unlink()
    again = KilledOnce(flag=str(flag), infra=infra)  # (mode cached: what the hint says)
    assert list(again.process(items)) == items


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", ["processpool", "local"])
def test_a_map_process_killed_by_a_signal_says_which(tmp_path: Path, cluster: str) -> None:
    """A pool process or a local job killed by SIGKILL (the out-of-memory killer) was said
    to have died, 'killed, out of memory, ... or sys.exit': the signal is named."""
    from exca.graph.errors import JobFailedError

    flag = tmp_path / "kill"
    flag.touch()
    infra = {"folder": tmp_path / "cache", "cluster": cluster, "max_jobs": 1}
    with pytest.raises(JobFailedError) as info:
        list(KilledOnce(flag=str(flag), infra=infra).process(list(range(12))))
    message = str(info.value)
    assert "died (killed by SIGKILL: out of memory, or killed by hand)" in message, message


@pytest.mark.timeout(120)
def test_a_pool_process_killed_while_it_counts_its_items_hangs_nothing(tmp_path: Path) -> None:
    """A pool process killed (the out-of-memory killer) while it held the lock of the item
    count its pool shares with the caller (for the progress bar): the other processes
    writing items, and the caller reading the count, waited for that lock for good. The
    count is only shown: it is skipped, the map ends as for any killed process."""
    flag = tmp_path / "kill"
    flag.touch()
    infra = {"folder": tmp_path / "cache", "cluster": "processpool", "max_jobs": 1}
    mapper = KilledOnce(flag=str(flag), holding_the_count=True, infra=infra)
    assert list(mapper.process(list(range(12)))) == list(range(12))  # (its unit re-run)
    assert not flag.exists()  # (the process was killed once)


class Listed(pydantic.BaseModel):
    """item -> [item] (written as soon as yielded: not an immutable value, batched); the
    last item of a call waits while the file ``gate`` exists."""

    gate: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[list[int]]:
        for item in items:
            while item == items[-1] and Path(self.gate).exists():
                time.sleep(0.02)
            yield [item]


@pytest.mark.timeout(120)
def test_a_map_cleared_while_its_job_ran_is_not_failed(tmp_path: Path) -> None:
    """node.clear() while the map's chunk job runs: once the job ended (it wrote the rest),
    the cleared items are missing, not failed (status said 'failed', with no item error,
    while a plan said them missing); the next call computes them."""
    gate = tmp_path / "gate"
    gate.touch()
    infra = {"folder": tmp_path / "cache", "cluster": "local", "max_jobs": 1}
    node = Listed(gate=str(gate), infra=infra).process.node([0, 1, 2])
    job = node.job()  # (one job: its first two items written, it waits on the last one)
    wait_until(lambda: len(Listed(gate=str(gate), infra=infra).infra.cache_dict) == 2)
    node.clear()  # (the two items removed, the job still computes the last one)
    gate.unlink()
    job.wait()
    # (the job ended well, writing the last item)
    assert len(Listed(gate=str(gate), infra=infra).infra.cache_dict) == 1
    assert node.status() == "not submitted"
    entry = exca.graph.plan(node).entries[0]
    assert (entry.status, entry.action) == ("missing", "compute")
    assert node.result() == [[0], [1], [2]]
    assert node.status() == "completed"


def test_pool_workers_follow_the_cpus_this_process_may_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Slurm job of 4 CPUs on a 64-core node: a threadpool or processpool map runs on
    min(missing, cpus - 1, max_jobs) workers, the CPUs being those this process may use
    (as for local jobs), not the machine's: 3 workers, whose 3 chunks each make 9 elements
    for 100 items (it planned 63 workers, 100 chunks of one item, on the 4 CPUs)."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    for cluster in ("threadpool", "processpool"):
        log = str(tmp_path / f"{cluster}.log")
        mapper = Mapper(log=log, infra={"folder": tmp_path / cluster, "cluster": cluster})
        plan = exca.graph.plan(mapper.process.node(list(range(100))))
        assert [array.elements for array in plan.arrays] == [9], (cluster, str(plan))


class _Refused(pydantic.BaseModel):
    """A map and a task on Slurm, whose sbatch (a stand-in) refuses every job."""

    model_config = pydantic.ConfigDict(extra="forbid")
    tag: int = 0
    infra: exca.MapInfra = exca.MapInfra(version="1", cluster="slurm", min_samples_per_job=1)
    task: exca.TaskInfra = exca.TaskInfra(version="1", cluster="slurm")

    @infra.apply(item_uid=str)
    def double(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            yield 2 * item

    @task.apply
    def run(self) -> int:
        return self.tag


def test_a_refused_submission_leaves_no_pickle_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sbatch refused a map's array (an invalid partition, say): submitit's pickles of its
    jobs (complete, named by a random id: moved into a job's folder only once sent) and
    its sbatch script stayed in the map's log folder for good (`exca clean orphans` looks
    for them in a step's log folder only, where a task's go, and then only after an hour).
    Nothing was queued, no job reads them: they are removed at once, as the error is
    raised; the task's single job too."""
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    sbatch = bin_folder / "sbatch"
    sbatch.write_text(
        "#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid partition "
        "name specified' >&2\nexit 1\n"
    )
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    root = tmp_path / "cache"
    refused = _Refused(infra={"folder": root}, task={"folder": root})
    with pytest.raises(Exception, match=r"slurm refused the job\(s\) of .* and 2 more"):
        refused.double([1, 2, 3])
    with pytest.raises(Exception, match=r"slurm refused the job\(s\) of .*Invalid partition"):
        refused.run()
    left = [p.name for p in root.rglob("*") if p.is_file() and "logs" in p.parts]
    assert left == [], left


def test_how_to_stop_a_map_s_jobs_names_no_clear_job() -> None:
    """The ways said to stop jobs that keep running (after an error or a Ctrl-C that does
    not cancel them) named clear_job() for a map's jobs too, which MapInfra has not."""
    from exca.graph.scheduler import _how_to_stop

    def run(kind: str, cluster: str) -> tp.Any:
        handle = types.SimpleNamespace(cluster=cluster)
        return types.SimpleNamespace(node=types.SimpleNamespace(kind=kind), handles=[handle])

    assert _how_to_stop([run("map", "local")]).startswith("kill -9 <job id>")
    assert _how_to_stop([run("map", "slurm")]) == "scancel"
    assert _how_to_stop([run("task", "slurm")]) == "clear_job() or scancel"
    assert "clear_job()" in _how_to_stop([run("map", "slurm"), run("task", "local")])
