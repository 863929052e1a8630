"""Pipelines (DESIGN "Identity", "The graph layer", "Modes") without Slurm: the node DSL,
sub-config chaining, pruning, plans (which never change anything), the scheduler over
many nodes (order, force, failures, retry, read-only, concurrency) and Ctrl-C.

Classes are defined at module level so that local (subprocess) jobs can import them
(tests/ is on PYTHONPATH for jobs, see conftest). Every decorated method appends one line
to the file named by its ``log`` field, so tests count the real calls wherever they ran.
The configs of ``Env``, which most jobs compute, are in jobmodels_pipelines.py: a job
imports its config's module, a light one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import typing as tp
from pathlib import Path

import pydantic
import pytest
from filelog import wait_until
from jobmodels_pipelines import Numbers, Square, Step, _show, append
from waiting import waits_for_others

import exca
import exca.graph
import exca.graph.decisions
import exca.graph.executors
import exca.graph.scheduler
import exca.graph.worker
import exca.infra.workdir
import exca.ops
from exca.graph import store
from exca.graph.errors import NodeFailures
from exca.graph.node import Value
from exca.graph.planning import describe_inputs
from exca.graph.worker import UpstreamFailed
from exca.ops.inspect import describe_recorded_inputs
from exca.uidformat import to_uid

if tp.TYPE_CHECKING:
    import numpy as np
else:
    from lazy_numpy import np  # (imported at its first use: most jobs never use it)


# --- helpers ----------------------------------------------------------------------------------
def events(log: str | Path, event: str | None = None) -> list[dict[str, tp.Any]]:
    path = Path(log)
    if not path.exists():
        return []
    out = [json.loads(line) for line in path.read_text("utf8").splitlines() if line.strip()]
    return [e for e in out if event is None or e["event"] == event]


def started(log: str | Path) -> list[str]:
    """Names of the computations started, in order."""
    return [e["name"] for e in events(log, "start")]


def wait_for(condition: tp.Callable[[], tp.Any], timeout: float = 60.0, poll: float = 0.05) -> None:
    """Wait until ``condition()`` (asked every ``poll`` seconds: a condition that asks
    squeue or sacct, as a status() does, takes a longer one)."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(poll)


def snapshot(root: Path) -> dict[str, tuple[tp.Any, ...]]:
    """Every file, link and folder under root: path, size, md5 of the bytes, mtime."""
    out: dict[str, tuple[tp.Any, ...]] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        stat = path.lstat()
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir", stat.st_mtime_ns)
        else:
            data = path.read_bytes()
            out[rel] = ("file", len(data), hashlib.md5(data).hexdigest(), stat.st_mtime_ns)
    return out


# --- configs ------------------------------------------------------------------------------------
# sub-config chaining
class Data(pydantic.BaseModel):
    kind: tp.Literal["plain"] = "plain"
    n: int = 3
    log: str
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log",)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def prepare(self) -> list[int]:
        append(self.log, {"name": f"prepare{self.n}", "event": "start"})
        return list(range(self.n))


class OtherData(pydantic.BaseModel):
    kind: tp.Literal["other"] = "other"
    n: int = 5
    log: str
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log",)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def prepare(self) -> list[int]:
        append(self.log, {"name": f"other{self.n}", "event": "start"})
        return [10 * i for i in range(self.n)]


class Train(pydantic.BaseModel):
    data: Data
    lr: float = 0.1
    log: str
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log",)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> int:
        append(self.log, {"name": "fit", "event": "start"})
        total = sum(self.data.prepare())
        append(self.log, {"name": "fit", "event": "end"})
        return total


class TrainInline(pydantic.BaseModel):
    """Same as Train, but opted out of sub-config chaining."""

    data: Data
    log: str
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log",)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply(chain_subconfigs=False)
    def fit(self) -> int:
        append(self.log, {"name": "fit", "event": "start"})
        total = sum(self.data.prepare())
        append(self.log, {"name": "fit", "event": "end"})
        return total


class TrainWithMap(pydantic.BaseModel):
    """Sub-configs that are never chained: a MapInfra owner and a folder-less TaskInfra."""

    square: Square
    data: Data
    log: str
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log",)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> int:
        append(self.log, {"name": "fit", "event": "start"})
        total = sum(self.square.apply([1, 2])) + sum(self.data.prepare())
        append(self.log, {"name": "fit", "event": "end"})
        return total


class ScaleByData(pydantic.BaseModel):
    """A map owning a data sub-config: ``item -> item * sum(data)``."""

    data: Data
    log: str
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log",)
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def apply(self, items: list[int]) -> tp.Iterator[int]:
        total = sum(self.data.prepare())
        for item in items:
            append(self.log, {"name": f"scaled{item}", "event": "start", "pid": os.getpid()})
            yield item * total


class ScaleByDataInline(ScaleByData):
    """Same as ScaleByData, but opted out of sub-config chaining."""

    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str, chain_subconfigs=False)
    def apply(self, items: list[int]) -> tp.Iterator[int]:
        total = sum(self.data.prepare())
        for item in items:
            append(self.log, {"name": f"scaled{item}", "event": "start", "pid": os.getpid()})
            yield item * total


AnyData = tp.Annotated[Data | OtherData, pydantic.Field(discriminator="kind")]


class Ensemble(pydantic.BaseModel):
    """Sub-configs in a discriminated union, a list and a dict."""

    choice: AnyData
    many: list[Data] = []
    named: dict[str, AnyData] = {}
    log: str
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log",)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> int:
        append(self.log, {"name": "fit", "event": "start"})
        total = sum(self.choice.prepare())
        total += sum(sum(d.prepare()) for d in self.many)
        total += sum(sum(d.prepare()) for d in self.named.values())
        return total


# --- fixtures -------------------------------------------------------------------------------------
class Env:
    """A cache folder, a call log, and factories of configs using them."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.folder = tmp_path / "cache"
        self.log = str(tmp_path / "calls.jsonl")

    def infra(self, **kwargs: tp.Any) -> dict[str, tp.Any]:
        return {"folder": self.folder, **kwargs}

    def step(self, name: str, **kwargs: tp.Any) -> Step:
        infra = self.infra(**kwargs.pop("infra", {}))
        return Step(name=name, log=self.log, infra=infra, **kwargs)

    def numbers(self, count: int = 4, **infra: tp.Any) -> Numbers:
        return Numbers(count=count, log=self.log, infra=self.infra(**infra))

    def square(self, power: int = 2, **infra: tp.Any) -> Square:
        return Square(power=power, log=self.log, infra=self.infra(**infra))

    def data(self, n: int = 3, **infra: tp.Any) -> Data:
        return Data(n=n, log=self.log, infra=self.infra(**infra))

    def starts(self, name: str) -> int:
        return started(self.log).count(name)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return Env(tmp_path)


# =============================================================================================
# 1. The DSL
# =============================================================================================
def test_nodes_are_lazy(env: Env) -> None:
    a = env.step("a").run.node()
    b = env.step("b").run.node(a, 3)
    squares = env.square().apply.node(env.numbers().make.node())
    top = env.step("top").run.node(b, squares)
    train = Train(data=env.data(), log=env.log, infra=env.infra()).fit.node()
    assert isinstance(top, exca.graph.Node) and isinstance(train, exca.graph.Node)
    assert {n.uid for n in top.upstream} == {b.uid, squares.uid}
    assert events(env.log) == []  # building nodes called no decorated method
    assert not env.folder.exists()  # ... and wrote nothing
    assert top.result() == "top(b(a(None,None),3),[0;1;4;9])"


def test_task_inputs_from_nodes_and_values(env: Env) -> None:
    a = env.step("a").run.node()
    combine = env.step("combine")
    node = combine.run.node(a, 7)
    assert node.result() == "combine(a(None,None),7)"
    seen = events(env.log, "start")[-1]
    assert seen["name"] == "combine" and seen["a"] == "a(None,None)" and seen["b"] == 7
    # keyword inputs name the same parameters: same node
    assert combine.run.node(a=a, b=7).uid == node.uid
    assert combine.run.node(b=7, a=a).result() == "combine(a(None,None),7)"
    assert env.starts("combine") == 1
    # another input value: another node
    assert combine.run.node(a, 8).uid != node.uid
    with pytest.raises(TypeError):
        combine.run.node(a, 7, 9)  # too many inputs
    # infra.job() cannot give the inputs: a clear error, and nothing cached
    with pytest.raises(TypeError, match=r"takes inputs \['a', 'b'\]: infra.job\(\)"):
        combine.infra.job()
    # nor status() and clear_job(), which said "not submitted" and removed config.yaml only
    with pytest.raises(TypeError, match=r"infra.status\(\) cannot tell which call.*\.status\(\)"):
        combine.infra.status()
    with pytest.raises(TypeError, match=r"infra.clear_job\(\) cannot tell which call.*\.clear\(\)"):
        combine.infra.clear_job()
    assert node.status() == "completed"
    assert sorted(c.name for c in combine.infra.iter_cached()) == ["a", "combine"]


def test_a_full_disk_writing_a_calls_inputs_yaml_names_its_folder(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inputs.yaml of a call with inputs (its own sub-folder) not written on a full
    disk: the bare "[Errno 28] No space left on device" named no folder nor what to do."""
    import errno

    a = env.step("a").run.node()
    node = env.step("combine").run.node(a, 7)
    os_open = os.open

    def full(path: tp.Any, flags: int, *args: tp.Any, **kwargs: tp.Any) -> int:
        if Path(path).name.startswith(".inputs.yaml.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", full)
    with pytest.raises(OSError, match="No space left") as info:
        exca.graph.run(node)
    monkeypatch.undo()
    notes = getattr(info.value, "__notes__", [])
    said = [n for n in notes if f"{env.folder}/" in n and "free space there" in n]
    assert said and "/inputs-" in said[0], notes  # (the first call's, a's)
    assert node.result() == "combine(a(None,None),7)"  # (space back)


def test_each_input_tuple_has_its_own_folder(env: Env) -> None:
    step = env.step("s")
    uid_folder = Path(step.infra.uid_folder())  # type: ignore[arg-type]
    nodes = [step.run.node(1, 2), step.run.node(2, 1), step.run.node(1)]
    folders = [n.folder for n in nodes]
    assert len(set(folders)) == 3
    for folder in folders:
        assert folder is not None and folder.parent == uid_folder
        assert re.fullmatch(r"inputs-[0-9a-f]{8}", folder.name), folder.name
    first, second, third = nodes
    # status / job / result / clear per node
    assert first.status() == "not submitted"
    assert first.result() == "s(1,2)"
    assert first.status() == "completed"
    assert second.status() == "not submitted"
    job = second.job()  # cluster=None: computed now
    assert job.done() and job.result() == "s(2,1)"
    assert second.status() == "completed"
    assert first.folder is not None and first.folder.is_dir()
    assert env.starts("s") == 2
    first.clear()
    assert first.status() == "not submitted"
    assert second.status() == "completed"  # other inputs of the same config: untouched
    assert first.result() == "s(1,2)"  # recomputed
    assert env.starts("s") == 3
    assert third.result() == "s(1,None)"
    assert env.starts("s") == 4


def test_clear_of_a_node_computed_by_a_local_job(env: Env) -> None:
    """The next result() computes it again (the record of the finished job said that job
    ended without a result: a failure, cached)."""
    node = env.step("cleared", infra={"cluster": "local"}).run.node()
    assert node.result() == "cleared(None,None)"
    node.clear()
    assert node.status() == "not submitted"
    assert node.result() == "cleared(None,None)"
    assert env.starts("cleared") == 2 and node.status() == "completed"


def test_node_failures_name_the_cause_at_the_end_of_a_job_trace() -> None:
    """A job that died before exca's worker ran prints a traceback: the summary keeps its
    first and last lines (the cause), not the first one only."""
    trace = (
        "Job (task=0) failed during processing with trace:\n----------------------\n"
        'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
        "ModuleNotFoundError: No module named 'pipeline_module'\n"
    )
    error = NodeFailures({"a,1/x": RuntimeError(trace), "b,1/y": ValueError("bad y")})
    assert "No module named 'pipeline_module'" in str(error)
    assert "Job (task=0) failed" in str(error)
    assert "  - b,1/y: ValueError: bad y" in str(error).splitlines()
    # a long line is cut in its middle: what to do, at its end, stays (it was cut at 300
    # characters, in the remedy; a probe)
    long = f"cannot be read: its file /{'deep/' * 80}data.npy is gone: mode='retry' fixes it"
    error = NodeFailures({"a,1/x": FileNotFoundError(long)})
    assert str(error).endswith("mode='retry' fixes it") and " [...] " in str(error)
    assert len(str(error)) < 400
    # the cut falls between words, not inside them ("process exited w [...] n ended")
    words = [f"word{i:03d}" for i in range(100)]
    error = NodeFailures({"a,1/x": RuntimeError(" ".join(words))})
    kept = str(error).splitlines()[-1].split(": ", 2)[-1]
    before, after = kept.split(" [...] ")
    assert set(before.split() + after.split()) <= set(words), kept
    assert before.split()[0] == "word000" and after.split()[-1] == "word099"


def test_node_failures_of_a_full_disk_say_which_folder_and_what_to_do(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipeline whose upstream node met a full disk (its claim not written): the error
    listing the failed nodes said "OSError: [Errno 28] No space left on device" and left
    out the note naming the folder and what to do. It now keeps it."""
    import errno

    numbers = env.numbers()
    target = env.step("sum").run.node(numbers.make.node())
    os_open = os.open

    def full(path: tp.Any, flags: int, *args: tp.Any, **kwargs: tp.Any) -> int:
        if Path(path).parent.name == "claims" and Path(path).name.endswith(".tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", full)
    with pytest.raises(NodeFailures) as info:
        exca.graph.run(target)
    monkeypatch.undo()
    said = str(info.value)
    folder = numbers.infra.uid_folder()
    assert f"OSError: [Errno 28] No space left on device\n    (no space left for {folder}" in said
    assert "free space there" in said
    assert target.result() == "sum([0;1;2;3],None)"


def test_defaults_of_a_chain_are_checked_once_per_node(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reusing a node checks the class defaults of everything upstream of it: once per
    node of the graph, not once per node and target (a plan of a long chain with every
    node a target was quadratic)."""
    checks: list[str] = []
    check = exca.infra.base.BaseInfra._check_defaults

    def counted(infra: tp.Any, **kwargs: tp.Any) -> bool:
        checks.append(infra.uid())
        return check(infra, **kwargs)

    monkeypatch.setattr(exca.infra.base.BaseInfra, "_check_defaults", counted)

    def build() -> list[exca.graph.Node]:
        nodes = [env.step("s0").run.node()]
        for i in range(1, 30):
            nodes.append(env.step(f"s{i}").run.node(nodes[-1]))
        return nodes

    assert build()[-1].result().count("s") == 30
    chain = build()  # (new instances: nothing checked yet)
    checks.clear()
    plan = exca.graph.plan(*chain)
    assert plan.counts() == {"cached": 30}
    assert sorted(checks) == sorted(n.uid.partition("/inputs-")[0] for n in chain)


def test_plan_status_below_a_failure_is_missing(env: Env) -> None:
    """Work blocked by an upstream whose job ended without a result, or holding only an
    "upstream failed" error, is "missing" (the status came from the reason's wording:
    "cached error" for these)."""
    from exca.graph.node import TASK_KEY
    from exca.storage.formats import CachedError

    block = env.tmp / "block"
    block.touch()
    up = env.step("up", block_flag=str(block), infra={"cluster": "local"}).run.node()
    job = up.job()
    wait_for(lambda: env.starts("up") == 1)
    job.cancel()
    wait_for(lambda: up.status() == "failed")
    down = env.step("down").run.node(up)
    below = env.step("below").run.node(down)
    entries = _by_uid(exca.graph.plan(below))
    assert (entries[up.uid].status, entries[up.uid].action) == ("cached error", "fail")
    assert f"local job {job.job_id} was cancelled" in entries[up.uid].reason  # (as its call says)
    for node in (down, below):
        assert (entries[node.uid].status, entries[node.uid].action) == ("missing", "fail")
    # what a job of `down` leaves when it starts after its upstream failed (Slurm, afterany)
    with down.cache.write():
        failure = UpstreamFailed(f"{down.uid} did not run: its upstream failed")
        down.cache.put(TASK_KEY, CachedError.from_exception(failure))
    retried = env.step("up", block_flag=str(block), infra={"mode": "retry"}).run.node()
    down = env.step("down").run.node(retried)
    entry = _by_uid(exca.graph.plan(down))[down.uid]
    assert (entry.status, entry.action, entry.reason) == (
        "missing",
        "compute",
        "its upstream failed last time",
    )


def test_a_job_started_below_a_failed_upstream_says_it_holds_an_error(env: Env) -> None:
    """What a job starting after its upstream failed (Slurm, afterany) raises and caches:
    it said "upstream ... is error"."""
    from exca.graph import worker

    flag = env.tmp / "fail"
    flag.touch()
    up = env.step("up", fail_flag=str(flag)).run.node()
    with pytest.raises(ValueError, match="fails on purpose"):
        up.result()
    down = env.step("down").run.node(up)
    with pytest.raises(UpstreamFailed, match=rf"upstream {re.escape(up.uid)} holds an error"):
        worker.check_upstream(down)
    with pytest.raises(UpstreamFailed, match=r"upstream .* is missing"):
        worker.check_upstream(env.step("down").run.node(env.step("never").run.node()))


def _default_was(folder: Path, old: str, new: str) -> None:
    """Rewrite a config folder's full-uid.yaml as if the class default had been ``old``
    when it was computed (today's is ``new``), as in a new process."""
    from exca.infra import base as infra_base

    full = folder / "full-uid.yaml"
    assert new in full.read_text()
    full.write_text(full.read_text().replace(new, old))
    infra_base._DEFAULTS_CHECKED.clear()


def test_plan_fails_new_inputs_under_a_config_of_other_class_defaults(env: Env) -> None:
    """A call with new inputs (a new inputs folder) of a config whose folder was computed
    with other class defaults: the plan said "missing / compute", and the run then refused
    at once (preparing that folder), running nothing else. The plan now says that node
    fails, with the error the run raises; a run fails it (and what needs it) the same way,
    and computes the rest, as for a cached result of other defaults (a probe)."""
    assert env.step("s").run.node(a=1).result() == "s(1,None)"
    config_folder = env.step("s").run.node(a=1).folder.parent
    _default_was(config_folder, "partner: peer", "partner: ''")
    new = env.step("s").run.node(a=2)
    below = env.step("below").run.node(new)
    other = env.step("other").run.node(a=3)
    entries = _by_uid(exca.graph.plan(below, other))
    assert (entries[new.uid].status, entries[new.uid].action) == ("missing", "fail")
    assert "seems incompatible" in entries[new.uid].reason
    assert "partner" in entries[new.uid].reason
    assert (entries[below.uid].status, entries[below.uid].action) == ("missing", "fail")
    assert f"upstream {new.uid} fails" in entries[below.uid].reason
    assert (entries[other.uid].status, entries[other.uid].action) == ("missing", "compute")
    with pytest.raises(NodeFailures) as info:
        exca.graph.run(below, other)
    assert set(info.value.failures) == {new.uid, below.uid}
    assert "seems incompatible" in str(info.value.failures[new.uid])
    # not its own failure: an UpstreamFailed as for a node fed by a map's failed item
    # (it was a plain RuntimeError below a task, which `except UpstreamFailed` missed)
    assert isinstance(info.value.failures[below.uid], UpstreamFailed)
    assert other.result() == "other(3,None)"  # computed by that run
    assert (env.starts("s"), env.starts("below"), env.starts("other")) == (1, 0, 1)
    with pytest.raises(RuntimeError, match="seems incompatible"):  # a call: its own error
        env.step("s").run(a=2)


def test_plan_fails_work_in_a_config_folder_of_other_class_defaults(env: Env) -> None:
    """As for new inputs: a config whose result was cleared (its yaml files stay), a map's
    new items, a forced result, in a folder computed with other class defaults: the plan
    said "compute" and the run refused everything; the plan now says each fails."""
    numbers = env.numbers(count=4)
    assert numbers.make() == [0, 1, 2, 3]
    numbers.infra.clear_job()
    _default_was(numbers.infra.uid_folder(), "count: 5", "count: 4")
    square = env.square(power=2)
    assert list(square.apply([1, 2])) == [1, 4]
    _default_was(square.infra.uid_folder(), "power: 3", "power: 2")
    cleared = env.numbers(count=4).make.node()
    new_items = env.square(power=2).apply.node([1, 2, 3])
    forced = Step(name="f", log=env.log, infra=env.infra())
    assert forced.run() == "f(None,None)"
    _default_was(forced.infra.uid_folder(), "partner: peer", "partner: ''")
    forcing = Step(name="f", log=env.log, infra=env.infra(mode="force")).run.node()
    plan = exca.graph.plan(cleared, new_items, forcing)
    shown = [(e.status, e.action, "seems incompatible" in e.reason) for e in plan.entries]
    assert shown == [
        ("missing", "fail", True),
        ("missing", "fail", True),
        ("cached", "fail", True),  # (its result is cached: with other defaults)
    ]
    with pytest.raises(NodeFailures) as info:
        exca.graph.run(cleared, new_items, forcing)
    assert len(info.value.failures) == 3
    assert env.starts("square3") == 0 and env.starts("f") == 1


def test_status_and_clear_of_a_map_node(env: Env) -> None:
    """A map node's status is about its items; clear() removes their outputs (it used to
    say 'failed' for a completed map, and clear() only dropped its job records)."""
    flag = env.tmp / "fail"
    node = FlakySquare(log=env.log, fail_flag=str(flag), infra=env.infra()).apply.node([1, 3])
    assert node.status() == "not submitted"
    assert node.result() == [1, 9]
    assert node.status() == "completed"
    node.clear()
    assert node.status() == "not submitted"
    assert node.result() == [1, 9]
    assert env.starts("square1") == 2
    flag.touch()
    failing = FlakySquare(log=env.log, fail_flag=str(flag), infra=env.infra()).apply.node([2])
    with pytest.raises(ValueError, match="on purpose"):
        failing.result()
    assert failing.status() == "failed"
    from_upstream = env.square().apply.node(env.numbers(count=2).make.node())
    assert from_upstream.status() == "not submitted"  # (its items are not known yet)


def test_eager_call_with_values_uses_the_node_folder(env: Env) -> None:
    step = env.step("e")
    assert step.run(1, 2) == "e(1,2)"
    node = env.step("e").run.node(1, 2)  # another instance, same config
    assert node.status() == "completed"
    plan = exca.graph.plan(node)
    assert [(e.status, e.action) for e in plan.entries] == [("cached", "reuse")]
    assert node.result() == "e(1,2)"
    assert env.starts("e") == 1
    # and the other way round: a node's result is an eager call's cache hit
    assert env.step("e").run.node(3, 4).result() == "e(3,4)"
    assert env.step("e").run(3, 4) == "e(3,4)"
    assert env.starts("e") == 2
    assert env.step("e").run(b=4, a=3) == "e(3,4)"
    assert env.starts("e") == 2


def test_array_inputs_are_hashed(env: Env) -> None:
    step = env.step("arr")
    three, four = step.run.node(np.arange(3)), step.run.node(np.arange(4))
    other_values = step.run.node(np.arange(3) + 1)
    assert len({three.folder, four.folder, other_values.folder}) == 3
    assert step.run(np.arange(3)) == "arr(array0-1-2,None)"
    assert step.run.node(np.arange(3)).folder == three.folder  # equal content: same node
    assert step.run(np.array([0, 1, 2])) == "arr(array0-1-2,None)"  # cache hit
    assert env.starts("arr") == 1
    assert four.result() == "arr(array0-1-2-3,None)"
    assert env.starts("arr") == 2


def test_values_changed_after_the_node_was_built_do_not_change_it(env: Env) -> None:
    """A node keeps a copy of its input values and map items: a list reused in a loop, or
    an array filled again, changed after node() was the result of the new values cached
    under the uid of the old ones (read back by any later call with the old values)."""
    step = env.step("snap")
    values, array, named = [1, 2], np.arange(3), {"x": [1]}
    node = step.run.node(array, [values, named])
    values.append(3)
    array += 10
    named["x"].append(2)
    assert node.result() == "snap(array0-1-2,[[1, 2];{'x': [1]}])"
    assert step.run(np.arange(3), [[1, 2], {"x": [1]}]) == node.result()  # (a hit)
    assert env.starts("snap") == 1
    # an array nobody can change (its memory is bytes) is not copied; a memory-mapped
    # one is (its file may be rewritten), and one its owner made read-only too
    fixed = np.frombuffer(np.arange(4.0).tobytes())
    cache: exca.cachedict.CacheDict[tp.Any] = exca.cachedict.CacheDict(env.tmp / "arrays")
    with cache.write():
        cache["x"] = np.arange(4.0)
    mapped = exca.cachedict.CacheDict(env.tmp / "arrays")["x"]
    frozen = np.arange(4.0)
    frozen.flags.writeable = False  # (its owner may make it writeable again)
    cases = ((fixed, False), (fixed[1:], False), (mapped, True), (frozen, True))
    for value, copied in cases:
        (_, source), _ = step.run.node(value).inputs  # (a, then b=None)
        assert np.shares_memory(source.value, value) is not copied
    square = env.square()
    items = [1, 2]
    mapped = square.apply.node(items)
    total = env.step("total").run.node(mapped)
    items.append(3)
    assert total.result() == "total([1;4],None)"
    assert list(square.apply([1, 2, 3])) == [1, 4, 9]  # (3 computed now: it was not before)
    assert [e["item"] for e in events(env.log, "start") if "item" in e] == [1, 2, 3]


def test_inputs_whose_uid_display_is_empty_are_different_inputs(env: Env) -> None:
    """A string of non-ASCII letters cleans to nothing in a uid display: its digest still
    tells it from the empty string and the empty list (they shared one result)."""
    step = env.step("blank")
    values = ["日本語", "λ", "", [], {}]
    assert len({step.run.node(v).folder for v in values}) == len(values)
    assert [step.run(v) for v in values] == [f"blank({_show(v)},None)" for v in values]
    assert env.starts("blank") == len(values)


def test_inputs_whose_dict_keys_differ_only_by_type_are_different_inputs(env: Env) -> None:
    """{1: "a"} and {"1": "a"} render alike in the uid format: the second call read the
    first one's result. Inputs with str keys only keep the format's uid."""
    step = env.step("keyed")
    values: list[tp.Any] = [{1: "a"}, {"1": "a"}, [{1: "a"}], [{"1": "a"}], {"t": {2.5: 1}}]
    values.append({"t": {"2.5": 1}})
    # a dotted key and a chain of single-key dicts render alike too
    values += [{"train.csv": 1}, {"train": {"csv": 1}}]
    assert len({step.run.node(v).folder for v in values}) == len(values)
    assert [step.run(v) for v in values] == [f"keyed({_show(v)},None)" for v in values]
    assert env.starts("keyed") == len(values)
    for value in ({"1": "a"}, [{"t": 1}], "text"):  # (the uid the format gives, as before)
        assert Value.of(value).uid == to_uid(value, empty="empty")


def test_inputs_whose_dict_names_a_key_twice_are_refused() -> None:
    """{"a.b": 1, "a": {"b": 2}} and {"a.b": 5, "a": {"b": 2}} had one uid ('a.b=2', the
    merge of a ConfDict, keeping the last): two inputs, one result. Refused, naming the
    key; a dotted key and another one inside its first part still differ."""
    for value in ({"a.b": 1, "a": {"b": 2}}, [{"a": {"b": 2}, "a.b": 5}]):
        with pytest.raises(ValueError, match=r"The key 'a\.b' is given twice"):
            Value.of(value)
    assert Value.of({"a": 1, "a.b": 2}).uid != Value.of({"a.b": 2}).uid


class _Select(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def pick(self, selection: np.ndarray) -> list[int]:
        return np.array([10, 20, 30])[selection].tolist()  # type: ignore[no-any-return]


def test_array_inputs_that_differ_only_by_dtype_are_different_inputs(tmp_path: Path) -> None:
    """The uid format hashes an array's bytes and shape: a bool mask and uint8 indices
    [1, 0, 1] shared a uid, and the indices read the mask's result (a probe). float64
    arrays keep the format's uid."""
    select = _Select(infra={"folder": tmp_path})
    mask = np.array([True, False, True])
    indices = np.array([1, 0, 1], dtype=np.uint8)
    assert select.pick(mask) == [10, 30]
    assert select.pick(indices) == [20, 10, 20]
    assert select.pick(mask) == [10, 30]  # (cached, each in its folder)
    assert len(list(select.infra.uid_folder().glob("inputs-*"))) == 2  # type: ignore[union-attr]
    zeros = [np.zeros(3, dtype) for dtype in (np.float64, np.int64, np.float32, np.int32)]
    assert len({Value.of(z).uid for z in zeros}) == 4
    assert len({Value.of([z]).uid for z in zeros}) == 4  # (nested too)
    assert Value.of(zeros[0]).uid == to_uid(zeros[0], empty="empty")
    assert Value.of(np.int64(3)).uid == Value.of(3).uid  # (a scalar is its number)
    big_endian = np.zeros(3, dtype=">f8")  # (a float64 too: its dtype's text is ">f8")
    assert Value.of(big_endian).uid == Value.of(zeros[0]).uid


def test_a_plan_names_what_feeds_each_call_with_inputs(env: Env) -> None:
    """The evaluations of a sweep were all <step>/default/inputs-<digest> in a plan: what
    feeds each one is said after its reason (a probe)."""
    trainings = [env.step(f"train{v}").run.node() for v in (1, 2)]
    evaluations = [env.step("eval").run.node(t, b=3) for t in trainings]
    report = env.step("report").run.node(evaluations)
    plan = exca.graph.plan(report)
    entries = _by_uid(plan)
    for training, evaluation in zip(trainings, evaluations):
        config = training.uid.split("/", 1)[1]  # (name=train1-<digest>)
        text = entries[evaluation.uid].inputs
        assert text == f"a=Step.run,1/{config}, b=3", text
        assert f"(inputs: {text})" in str(plan)
    assert entries[report.uid].inputs is not None
    assert entries[report.uid].inputs.startswith("a=[Step.run,1/name=eval-")
    assert entries[trainings[0].uid].inputs == "a=None, b=None"  # (the defaults given)
    # (a version holding a dot lost the class's name; a long value its digest; a review)
    dotted = env.step("train", infra={"version": "1.2"}).run.node()
    long = [list(range(40)), list(range(1, 41))]
    (first, second) = [env.step("eval").run.node(dotted, b=v) for v in long]
    described = describe_inputs(first)
    assert described.startswith(f"a=Step.run,1.2/{dotted.uid.split('/', 1)[1]}, b=0,1,2")
    assert described != describe_inputs(second) and len(described) < 200
    assert {n["uid"]: n["inputs"] for n in plan.to_dict()["nodes"]}[report.uid] is not None
    # a dict of nodes showed as a list: its keys, what tells a sweep's inputs apart, were lost
    keyed = env.step("report").run.node({f"lr{v}": t for v, t in zip((1, 2, 3), trainings * 2)})
    described = describe_inputs(keyed)
    assert described.startswith("a={lr1: Step.run,1/name=trai"), described
    assert ", lr2: Step.run,1/" in described and ", +1 more}, b=None" in described, described


def test_a_plan_names_the_node_feeding_each_map(env: Env) -> None:
    """The evaluation maps of a sweep, each fed by one training, were all
    <step>/default/items-<digest>, "items known at run time" in a plan: which training
    feeds each one is said as for a call's inputs (a probe)."""
    trainings = [env.numbers(count=n).make.node() for n in (2, 3)]
    squares = [env.square().apply.node(t) for t in trainings]
    plan = exca.graph.plan(*squares)
    entries = _by_uid(plan)
    for training, square in zip(trainings, squares):
        shown = f"items=Numbers.make,1/{training.uid.split('/', 1)[1]}"
        assert entries[square.uid].inputs == shown
        assert f"items known at run time (inputs: {shown})" in str(plan), str(plan)
        assert entries[square.uid].input_uids == {"items": training.uid}
    listed = env.square().apply.node([1, 2])  # (items given as values: their count says it)
    assert _by_uid(exca.graph.plan(listed))[listed.uid].inputs is None


def test_an_input_fed_another_kind_of_value_than_annotated_is_refused_when_built(
    env: Env,
) -> None:
    """A task whose list parameter is fed a node annotated to return a dict (or a map's
    list of outputs, or a dict of nodes, where a number is annotated): the run computed
    the upstream nodes, then failed in the method; refused when the node is built, naming
    the input, both annotations and the node feeding it."""

    class Report(pydantic.BaseModel):
        infra: exca.TaskInfra = exca.TaskInfra(version="1")
        mean_infra: exca.TaskInfra = exca.TaskInfra(version="1")

        @infra.apply
        def scores(self) -> dict[str, float]:
            return {"a": 1.0}

        @mean_infra.apply
        def mean(self, values: list[float], scale: float = 1.0) -> float:
            return scale * sum(values) / len(values)

    report = Report(infra=env.infra(), mean_infra=env.infra())
    scores = report.scores.node()
    with pytest.raises(TypeError, match=r"Report.mean: its input 'values', annotated") as info:
        report.mean.node(scores)
    said = str(info.value)
    assert "list[float]" in said and f"output of {scores.uid}, annotated dict[str, float]" in said
    assert "a list, or fix the annotation" in said
    squares = env.square().apply.node([1, 2])
    with pytest.raises(TypeError, match="'scale', annotated float, gets the list of the"):
        report.mean.node([1.0], scale=squares)
    with pytest.raises(TypeError, match=r"'values', annotated list.*gets a dict of nodes"):
        report.mean.node({"a": scores})
    assert events(env.log) == [] and not env.folder.exists()
    # what fits, or is not said by the annotations, is accepted
    assert report.mean.node(squares).result() == 2.5  # (a map's outputs: a list)
    assert report.mean.node([env.numbers(count=2).make.node()]).uid  # (a list of nodes)
    assert env.step("any").run.node(scores).uid  # (tp.Any)


def test_a_plan_cuts_no_input_that_a_cut_would_not_shorten(env: Env) -> None:
    """The evaluations of a sweep fed as a dict to its aggregation were each cut in their
    middle in the plan's reason, `Step.run,1/name=eval- [...] -<digest>/inputs-<digest>`:
    47 characters in place of their own 45 (a probe)."""
    trainings = [env.step(f"train{v}").run.node() for v in (1, 2)]
    evaluations = {f"lr{v}": env.step("eval").run.node(t) for v, t in zip((1, 2), trainings)}
    described = describe_inputs(env.step("report").run.node(evaluations))
    assert "[...]" not in described, described
    for key, evaluation in evaluations.items():
        shown = f"Step.run,1/{evaluation.uid.split('/', 1)[1]}"
        assert 40 < len(shown) <= 47 and f"{key}: {shown}" in described, described


def test_a_plan_says_a_list_of_long_inputs_by_whole_entries(env: Env) -> None:
    """The features of a sweep's subjects fed as a list to each training were cut in the
    middle of the whole list: `[Step.run,1/name=features-of-a-subj [...] ct-number-2-<digest>,
    +1 more]`, neither entry readable. As many entries as fit are now said whole, then
    how many more (`exca list` says the recorded inputs the same way)."""
    features = [env.step(f"features-of-a-subject-number-{k}").run.node() for k in range(3)]
    trained = env.step("train").run.node(features)
    described = describe_inputs(trained)
    first = f"Step.run,1/{features[0].uid.split('/', 1)[1]}"
    assert described == f"a=[{first}, +2 more], b=None", described
    trained.result()
    (recorded,) = [i.inputs for i in exca.ops.inspect(env.folder) if i.uid.startswith("name=train")]
    assert recorded is not None
    assert describe_recorded_inputs({"a": recorded["a"]}) == f"a=[{first}, +2 more]"
    # a value input in the plan's words too (`exca list` said `b=None-adaaae33`)
    assert describe_recorded_inputs(recorded) == described


def test_inputs_without_a_uid_get_a_hint(env: Env) -> None:
    """A bound method instead of its node, an object: the error says what to pass (it
    suggested str() as a uid, which holds an object's memory address)."""
    step = env.step("hinted")
    with pytest.raises(TypeError, match=r"pass its node: obj.method.node\(\)"):
        step.run.node(env.step("up").run)
    with pytest.raises(TypeError, match="a path or a name instead of an object") as info:
        step.run(lambda x: x)
    assert "CONFDICT_UID_TYPE_BYPASS" not in str(info.value)
    # a config (a probe: "a path or a name instead of an object" said nothing of its fields)
    data = env.data(n=2)
    with pytest.raises(TypeError, match="a config is given as a field of the config") as info:
        step.run.node(data)
    assert "Data value" in str(info.value) and "obj.model_dump()" in str(info.value)
    # which call and input it is (a probe: the error named the value only)
    config_uid = step.run.node().uid.split("/inputs-")[0]
    assert str(info.value).startswith(f"{config_uid}: its input 'a': Cannot use Data value")
    with pytest.raises(
        TypeError, match=r"^jobmodels_pipelines.Step.run,1/name=hinted.*: its input 'b'"
    ):
        step.run.node(1, [env.step("up").run.node(), object()])
    assert env.starts("hinted") == 0


def test_map_nodes_of_different_item_lists_have_different_uids(env: Env) -> None:
    """Item uids may hold anything: ["1|2"] is not ["1", "2"] (their joined uids were the
    same); lists without such characters keep the digest they always had."""
    import hashlib

    square = env.square()
    lists: list[list[tp.Any]] = [["1|2"], ["1", "2"], [], [""], ["", ""], ["from:x"]]
    uids = [square.apply.node(items).uid for items in lists]
    assert len(set(uids)) == len(lists)
    assert uids[1].endswith("/items-" + hashlib.md5(b"1|2").hexdigest()[:8])


def test_map_nodes_with_an_empty_item_uid_keep_their_digest(env: Env) -> None:
    """A list holding an empty item uid, wherever it is, is digested as its JSON (as it
    always was: found in the joined text now, not by comparing every uid with "")."""
    import hashlib
    import json

    square = env.square()
    for items in (["", "a"], ["a", ""], ["a", "", "b"], [""], ["", ""]):
        text = "\x00" + json.dumps(items)
        digest = hashlib.md5(text.encode()).hexdigest()[:8]
        assert square.apply.node(items).uid.endswith("/items-" + digest), items
    plain = hashlib.md5(b"a|b").hexdigest()[:8]
    assert square.apply.node(["a", "b"]).uid.endswith("/items-" + plain)


def test_a_dict_of_nodes_is_one_input(env: Env) -> None:
    """The method receives the dict of their outputs; a node nested deeper, or a list of
    nodes as a map's items, is a clear error (not a uid made of the node's repr)."""
    first, second = env.step("first").run.node(), env.step("second").run.node()
    node = env.step("join").run.node({"x": first, "y": second, "z": 3})
    assert node.upstream == (first, second)
    assert node.result() == "join({'x': 'first(None,None)', 'y': 'second(None,None)', 'z': 3},None)"
    same = env.step("join").run.node({"z": 3, "y": second, "x": first})  # order of keys
    assert same.uid == node.uid
    with pytest.raises(TypeError, match="not an input"):
        env.step("nested").run.node({"x": [first]})
    with pytest.raises(TypeError, match="not a list of nodes"):
        env.square().apply.node([first, second])


class Named(pydantic.BaseModel):
    """A map whose item uid reads its items (dicts with a name)."""

    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=lambda item: item["name"])
    def apply(self, items: list[dict[str, tp.Any]]) -> tp.Iterator[str]:
        for item in items:
            yield item["name"].upper()


def test_a_detached_map_element_refuses_items_that_are_not_a_list(env: Env) -> None:
    """A map fed by a node whose output is not a list (a text here): a plan and a waiting
    run refuse it ("whose output is not a list of items"), while the element of a detached
    run (Slurm) iterated it: its characters were the items, each computed (a probe: an int
    said "its items could not be read ... 'int' object is not iterable"). The element
    refuses it with the plan's words, computing nothing."""
    from exca.graph import worker

    class Text(pydantic.BaseModel):
        infra: exca.TaskInfra = exca.TaskInfra(version="1")

        @infra.apply
        def run(self) -> tp.Any:  # (annotated "-> str", the node is refused when built)
            return "text(None,None)"

    source = Text(infra=env.infra()).run.node()
    squares = env.square().apply.node(source)
    reason = {e.uid: e.reason for e in exca.graph.plan(squares).entries}[squares.uid]
    assert source.result() == "text(None,None)"
    said = f"come from {source.uid}, whose output is not a list of items: str 'text(None,None)'"
    with pytest.raises(TypeError, match=re.escape(said)):
        squares.result()
    squares.prepare()  # (its folders, as the detached run writes them before submitting)
    with pytest.raises(TypeError, match=re.escape(said)):  # (what its array's element runs)
        worker.run_unit(worker.Unit(squares, split=(0, 2)))
    assert not any(name.startswith("square") for name in started(env.log))
    assert "items known at run time" in reason


def test_the_progress_total_counts_the_items_of_maps_fed_by_nodes(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run of a map of known items and of maps fed by nodes: the bar's total held the
    first map's items only, the others' were counted past it ("2/2", then "5it": no total
    left); each map's items are added to the total once they are known."""
    known = env.square().apply.node([1, 2])
    fed = env.square(power=3).apply.node(env.numbers(count=3).make.node())
    exca.graph.run(known, fed, progress=True)
    err = capsys.readouterr().err
    assert "5/5" in err and "exca: 5it [" not in err, err  # (not "...1985it/s": a rate)


def test_a_map_fed_by_a_task_annotated_to_return_no_list_is_refused_when_built(
    env: Env,
) -> None:
    """A map fed by a task whose output is a number (a text, a dict, None) by its return
    annotation: refused when the node is built, naming both (a run computed the task
    first, then failed on its output)."""
    number = Train(data=env.data(), log=env.log, infra=env.infra()).fit.node()  # -> int
    with pytest.raises(TypeError, match=r"whose method returns int .*a map needs a list") as info:
        env.square().apply.node(number)
    assert number.uid in str(info.value) and "Square.apply" in str(info.value)
    assert events(env.log) == [] and not env.folder.exists()
    text = env.step("text").run.node()  # -> str: its characters are no items
    with pytest.raises(TypeError, match="whose method returns str"):
        env.square().apply.node(text)
    listed = env.numbers().make.node()  # -> list[int]
    assert env.square().apply.node(listed).result() == [0, 1, 4, 9]


def test_the_plan_of_no_target_says_so() -> None:
    """plan(*[]) (a sweep filtered to nothing) printed "Plan: 0 node(s): " and the header
    of an empty table (a probe)."""
    plan = exca.graph.plan(*[])
    assert str(plan) == "Plan: 0 node(s): no target given (nothing would run)"
    assert plan.counts() == {} and plan.to_dict()["nodes"] == []


def test_run_refuses_a_progress_that_is_not_a_bool(env: Env) -> None:
    """run(progress="no") showed the bar ("no" is true; run(wait="no") was refused)."""
    node = env.step("shown").run.node()
    for progress in ("no", 0, "0"):
        with pytest.raises(TypeError, match=r"run\(progress=.*\): give True, False or None"):
            exca.graph.run(node, progress=progress)  # type: ignore[arg-type]
    assert env.starts("shown") == 0
    exca.graph.run(node, progress=False)
    assert env.starts("shown") == 1


def test_run_and_plan_take_numpy_bools(env: Env) -> None:
    """run(progress=np.bool_(True)) (a flag from an array, a comparison) was refused as
    "not True, False or None", as were run(wait=...) and plan(wait=...) given one: a numpy
    bool is taken as the bool it is."""
    node = env.step("numpy").run.node()
    (entry,) = exca.graph.plan(node, wait=np.bool_(True)).entries
    assert entry.action == "compute"
    exca.graph.run(node, wait=np.bool_(True), progress=np.bool_(False))
    assert env.starts("numpy") == 1
    other = env.step("numpy2").run.node()
    exca.graph.run(other, progress=np.array([1, 2]).sum() > 2)  # (a numpy bool too)
    assert env.starts("numpy2") == 1
    with pytest.raises(TypeError, match="give True or False"):
        exca.graph.run(node, wait=np.int64(1))  # type: ignore[arg-type]


def test_an_eager_map_call_given_nodes_as_items_says_so(env: Env) -> None:
    """A map called on a list of nodes (as a task's call takes nodes) raised its item_uid's
    error, "item_uid <lambda> failed on item Node(...): TypeError: 'Node' object is not
    subscriptable" (a probe); its node said what to do. Both say it now."""
    named = Named(infra=env.infra())
    nodes = [env.step("first").run.node(), env.step("second").run.node()]
    for call in (named.apply, named.apply.node):
        with pytest.raises(TypeError, match=r"Named\.apply: the items of a map are values, or one"):
            call(nodes)
    assert list(named.apply([{"name": "a"}])) == ["A"]
    with pytest.raises(TypeError, match=r"failed on item 3: TypeError"):  # (its own error)
        list(named.apply([3]))
    assert env.starts("first") == 0


def test_map_node_shares_its_item_cache_with_eager_calls(env: Env) -> None:
    square = env.square()
    over_list = square.apply.node([1, 2, 3])
    assert over_list.result() == [1, 4, 9]
    assert list(env.square().apply([1, 2, 3, 4])) == [1, 4, 9, 16]  # eager: only 4 computed
    assert started(env.log) == ["square1", "square2", "square3", "square4"]
    # a map node over an upstream node's output uses the same per-item cache
    numbers = env.numbers(count=5)
    over_node = env.square().apply.node(numbers.make.node())
    assert over_node.folder == over_list.folder
    assert over_node.result() == [0, 1, 4, 9, 16]
    assert started(env.log)[4:] == ["numbers5", "square0"]
    assert list(env.square().apply([0, 1, 2, 3, 4])) == [0, 1, 4, 9, 16]
    assert env.square().apply.node(numbers.make.node()).result() == [0, 1, 4, 9, 16]
    assert len(started(env.log)) == 6  # nothing computed twice
    # a map node feeds a task node like any other node
    total = env.step("total").run.node(over_node)
    assert total.result() == "total([0;1;4;9;16],None)"


@pytest.mark.timeout(120)
def test_a_node_computed_elsewhere_since_the_run_started_is_said(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """A run decides to submit a node; by the time its upstream is done, another worker
    computes that node: the run waits for it instead of submitting, and says so (it
    waited in silence, a probe)."""
    from exca.graph.node import TASK_KEY
    from exca.storage.claims import Claims

    gate = env.tmp / "gate"
    gate.touch()
    upstream = env.step("up", block_flag=str(gate)).run.node()
    down = env.step("down", infra={"cluster": "local"}).run.node(upstream)
    assert down.folder is not None
    out: list[tp.Any] = []
    with caplog.at_level("INFO", logger="exca"):
        runner = threading.Thread(target=lambda: out.append(down.result()))
        runner.start()
        deadline = time.time() + 30
        while env.starts("up") == 0 and time.time() < deadline:  # (decided: "up" runs)
            time.sleep(0.05)
        os.makedirs(down.folder, exist_ok=True)
        claim = Claims(down.folder).claim_one(TASK_KEY)  # (another worker takes it)
        assert claim.mine
        gate.unlink()
        try:
            while "computed elsewhere since this run started" not in caplog.text:
                assert time.time() < deadline and runner.is_alive()
                time.sleep(0.05)
        finally:
            claim.release()  # (that worker ends without a result: the run computes it)
            runner.join(timeout=60)
    assert out == ["down(up(None,None),None)"]
    assert env.starts("down") == 1
    assert "being computed by another worker" in caplog.text


def test_one_uid_under_two_cache_roots_is_two_nodes_of_the_graph(env: Env) -> None:
    """graph() keyed nodes by uid only: the same config cached under two roots made one
    node of the graph (plan and run kept both, computing each once)."""
    other = env.tmp / "other"
    here = env.step("x").run.node(1)
    there = env.step("x", infra={"folder": other}).run.node(1)
    top = env.step("top").run.node(here, there)
    dag = exca.graph.graph(top)
    assert len(dag) == 3 == len(exca.graph.plan(top).entries)
    assert sorted(dag.predecessors(top.uid)) == [f"{env.folder}/{here.uid}", f"{other}/{here.uid}"]
    text = str(exca.graph.plan(top))
    assert f"(cache root {env.folder})" in text and f"(cache root {other})" in text
    maps = [env.square().apply.node([1, 2]), env.square(folder=other).apply.node([1, 2])]
    text = str(exca.graph.plan(*maps))  # (a map's uid ends with items-..., not a folder)
    assert f"(cache root {env.folder})" in text and f"(cache root {other})" in text
    assert top.result() == "top(x(1,None),x(1,None))"
    assert env.starts("x") == 2


def test_duplicate_nodes_are_computed_once(env: Env) -> None:
    left = env.step("x").run.node(1)
    right = env.step("x").run.node(1)  # another instance, same uid
    assert left is not right and left.uid == right.uid
    top = env.step("top").run.node(left, right)
    assert len(exca.graph.graph(top)) == 2
    assert len(exca.graph.plan(top).entries) == 2
    assert top.result() == "top(x(1,None),x(1,None))"
    assert env.starts("x") == 1
    # the same node as two targets, and shared by two branches
    shared = env.step("shared").run.node()
    one, two = env.step("one").run.node(shared), env.step("two").run.node(shared)
    exca.graph.run(one, two, one)
    assert env.starts("shared") == 1 and env.starts("one") == 1 and env.starts("two") == 1


@pytest.mark.parametrize(
    "other,shown",
    [({"cluster": "local"}, ("inline", "local")), ({"mode": "force"}, ("cached", "force"))],
)
def test_same_uid_with_different_infra_is_an_error(
    env: Env, other: dict[str, tp.Any], shown: tuple[str, str]
) -> None:
    plain = env.step("x").run.node(1)
    different = env.step("x", infra=other).run.node(1)
    assert plain.uid == different.uid  # cluster and mode are not part of the uid
    top = env.step("top").run.node(plain, different)
    for call in (exca.graph.plan, exca.graph.run, exca.graph.graph):
        with pytest.raises(ValueError) as info:
            call(top)
        message = str(info.value)
        assert plain.uid in message
        assert all(word in message for word in shown), message
    assert events(env.log) == []


def test_two_classes_of_one_name_in_a_graph_are_refused(env: Env) -> None:
    # (a script defining a class twice: both nodes have one uid, and the graph computed the
    # first only, handing its result to the readers of both)
    class Part(pydantic.BaseModel):
        infra: exca.TaskInfra = exca.TaskInfra(version="1")

        @infra.apply
        def value(self) -> int:
            return 3

    first = Part

    class Part(pydantic.BaseModel):  # type: ignore[no-redef]
        infra: exca.TaskInfra = exca.TaskInfra(version="1")

        @infra.apply
        def value(self) -> int:
            return 4

    a, b = first(infra=env.infra()).value.node(), Part(infra=env.infra()).value.node()
    assert a.uid == b.uid
    top = env.step("top").run.node(a, b)
    for call in (exca.graph.plan, exca.graph.run):
        with pytest.raises(ValueError, match="run different code") as info:
            call(top)
        assert a.uid in str(info.value) and "Rename one of the classes" in str(info.value)
        assert "in a notebook: build the nodes made from its former definition" in str(info.value)
    assert events(env.log) == [] and not env.folder.exists()  # refused before anything ran
    same = []
    for _ in range(2):  # (one class statement run twice: the same code, one node)

        class Again(pydantic.BaseModel):
            infra: exca.TaskInfra = exca.TaskInfra(version="1")

            @infra.apply
            def value(self) -> int:
                return 5

        same.append(Again(infra=env.infra()).value.node())
    assert env.step("top").run.node(*same).result() == "top(5,5)"


def test_graph_is_frozen(env: Env) -> None:
    import networkx as nx

    a = env.step("a").run.node()
    b, c = env.step("b").run.node(a), env.step("c").run.node(a)
    d = env.step("d").run.node(b, c)
    dag = exca.graph.graph(d)
    assert nx.is_frozen(dag)
    assert set(dag.nodes) == {a.uid, b.uid, c.uid, d.uid}
    assert set(dag.edges) == {(a.uid, b.uid), (a.uid, c.uid), (b.uid, d.uid), (c.uid, d.uid)}
    assert dag.nodes[d.uid]["node"] is d
    with pytest.raises(nx.NetworkXError):
        dag.add_node("extra")
    with pytest.raises(nx.NetworkXError):
        dag.add_edge(d.uid, a.uid)
    with pytest.raises(nx.NetworkXError):
        dag.remove_node(a.uid)
    assert exca.graph.graph(d).edges == dag.edges  # building it twice: the same graph
    assert events(env.log) == []


def test_a_cycle_is_an_error_naming_its_nodes(env: Env) -> None:
    # (nodes are immutable: a cycle cannot be built through the API, only by hand here)
    a = env.step("a").run.node()
    b = env.step("b").run.node(a)
    graph = exca.graph.decisions.Graph([b])
    assert graph.order == [a.key, b.key]
    graph.upstream[a.key].append(b.key)
    with pytest.raises(ValueError, match="The graph has a cycle") as info:
        graph._topological()
    assert a.uid in str(info.value) and b.uid in str(info.value)


def test_a_node_that_is_its_own_upstream_is_a_cycle(env: Env) -> None:
    """A graph of one node, its own input (by hand, as above): it was not checked (a
    graph of one node needs no order), and a run said "never started ... report this as
    an exca bug"."""
    a = env.step("a").run.node(1)
    assert a.key  # (its identity, before its input is replaced)
    object.__setattr__(a, "inputs", (("a", a),))
    for call in (exca.graph.plan, exca.graph.run):
        with pytest.raises(ValueError, match="The graph has a cycle") as info:
            call(a)
        assert a.uid in str(info.value)
    assert events(env.log) == []


def test_an_input_that_holds_itself_is_an_error_naming_the_cycle(env: Env) -> None:
    """A list or dict input that contains itself (at any depth, with nodes in it or not):
    building the node, or calling the method, crashed with a RecursionError (or, called
    with a node in it, said that node was nested too deep). Now a ValueError names the
    node, the input and where the cycle is."""
    upstream = env.step("up").run.node()
    step = env.step("top")
    holds_node: list[tp.Any] = [upstream]
    holds_node.append(holds_node)
    plain: list[tp.Any] = [1]
    plain.append(plain)
    inner: dict[str, tp.Any] = {"n": upstream, "sub": [2]}
    inner["sub"].append(inner)
    cases = {"a[1] is a": holds_node, "a[1] is a)": plain, "a['sub'][1] is a": inner}
    for told, value in cases.items():
        for build in (step.run.node, step.run):
            with pytest.raises(ValueError, match="holds itself") as info:
                build(value)
            message = str(info.value)
            assert message.startswith(step.run.node().uid.split("/inputs-")[0]), message
            assert f"its input 'a' holds itself ({told}" in message, message
    shared = [1]
    assert step.run.node([shared, shared, upstream]).result() == "top([[1];[1];up(None,None)],None)"


def test_a_dict_of_nodes_with_a_non_str_key_says_so_even_holding_a_cycle(env: Env) -> None:
    """A dict of nodes with a non-str key that also holds a cycle said it held a cycle
    (any TypeError made the input be walked for one), not that its keys must be str. Now
    a cycle is looked for only after a RecursionError: the key's error is raised."""
    upstream = env.step("up").run.node()
    cycle: list[tp.Any] = [upstream]
    cycle.append(cycle)
    step = env.step("top")
    for build in (step.run.node, step.run):
        with pytest.raises(TypeError, match="a dict of nodes needs str keys"):
            build({1: upstream, "c": cycle})


# =============================================================================================
# 2. Sub-config chaining
# =============================================================================================
def _order(env: Env) -> list[str]:
    return [f"{e['name']}:{e['event']}" for e in events(env.log)]


def test_subconfig_task_is_computed_first(env: Env) -> None:
    train = Train(data=env.data(), log=env.log, infra=env.infra())
    data_node = env.data().prepare.node()
    plan = exca.graph.plan(train.fit.node())
    assert [e.uid for e in plan.entries] == [data_node.uid, train.fit.node().uid]
    assert plan.entries[1].upstream == [data_node.uid]
    assert [e.status for e in plan.entries] == ["missing", "missing"]
    assert train.fit() == 3  # an eager call chains too
    # prepare ran before fit started; inside fit, self.data.prepare() was a cache hit
    assert _order(env) == ["prepare3:start", "fit:start", "fit:end"]
    assert env.data().prepare.node().status() == "completed"
    assert env.data().prepare() == [0, 1, 2]
    assert env.starts("prepare3") == 1
    # pruning through chaining: the cached fit does not need prepare, even when it is gone
    shutil.rmtree(data_node.folder)  # type: ignore[arg-type]
    again = Train(data=env.data(), log=env.log, infra=env.infra())
    assert [e.status for e in exca.graph.plan(again.fit.node()).entries] == ["not needed", "cached"]
    assert again.fit() == 3
    assert env.starts("prepare3") == 1 and env.starts("fit") == 1


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", ["debug", "local"])
def test_job_of_a_config_whose_subconfig_is_not_cached(env: Env, cluster: str) -> None:
    """job() and job_array() on a submitit cluster: the chained sub-config task is
    computed first (it raised 'depends on work not done yet'), then the job goes out."""
    infra = env.infra(cluster=cluster)
    train = Train(data=env.data(cluster=cluster), log=env.log, infra=infra)
    job = train.infra.job()
    assert job.result() == 3
    assert env.starts("prepare3") == 1 and env.starts("fit") == 1
    base = Train(data=env.data(n=4, cluster=cluster), log=env.log, infra=infra)
    with base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(lr=lr) for lr in (0.2, 0.3))
    assert [t.infra.job().result() for t in array] == [6, 6]
    assert env.starts("prepare4") == 1 and env.starts("fit") == 3


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", [None, "local"])
def test_forced_subconfig_is_computed_once(env: Env, cluster: str | None) -> None:
    """mode=force on a chained sub-config: forced before the job of its owner, and not
    again by the owner's call inside that job (the job's copy of the instance knows)."""
    assert Train(data=env.data(), log=env.log, infra=env.infra()).fit() == 3
    data = env.data(cluster=cluster, mode="force")
    train = Train(data=data, log=env.log, infra=env.infra(cluster=cluster))
    assert train.fit() == 3
    assert env.starts("prepare3") == 2 and env.starts("fit") == 2  # each forced once more
    assert train.fit() == 3
    assert env.starts("prepare3") == 2 and env.starts("fit") == 2


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", [None, "local"])
def test_job_of_a_config_whose_subconfig_is_forced(env: Env, cluster: str | None) -> None:
    """infra.job() forces a chained sub-config in mode force, then recomputes its owner
    (as an eager call does); it returned the owner's cached result, nothing forced."""
    assert Train(data=env.data(), log=env.log, infra=env.infra()).fit() == 3
    data = env.data(cluster=cluster, mode="force")
    train = Train(data=data, log=env.log, infra=env.infra(cluster=cluster))
    assert train.infra.job().result() == 3
    assert env.starts("prepare3") == 2 and env.starts("fit") == 2
    assert train.infra.job().result() == 3  # forced once per instance
    assert env.starts("prepare3") == 2 and env.starts("fit") == 2


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", [None, "local"])
def test_a_forced_subconfig_held_by_several_configs_is_forced_once(
    env: Env, cluster: str | None
) -> None:
    """Two configs, each with its own instance of one sub-config in mode force: a run of
    both forces it once (one node), and neither instance forces it again afterwards, in
    this process or in the jobs (which were given the instances after the force)."""
    trains = [
        Train(data=env.data(mode="force"), lr=lr, log=env.log, infra=env.infra(cluster=cluster))
        for lr in (0.1, 0.2)
    ]
    exca.graph.run(*[t.fit.node() for t in trains])
    assert env.starts("prepare3") == 1 and env.starts("fit") == 2
    assert [t.fit() for t in trains] == [3, 3]
    assert [t.data.prepare() for t in trains] == [[0, 1, 2], [0, 1, 2]]
    assert env.starts("prepare3") == 1 and env.starts("fit") == 2
    # a job array of clones (each clone holds its own copy of the sub-config)
    base = Train(data=env.data(mode="force"), log=env.log, infra=env.infra(cluster=cluster))
    with base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(lr=lr) for lr in (0.1, 0.2))
    assert [t.infra.job().result() for t in array] == [3, 3]
    assert env.starts("prepare3") == 2 and env.starts("fit") == 4


class BrokenData(pydantic.BaseModel):
    n: int = 3
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def prepare(self) -> list[int]:
        raise ValueError(f"data {self.n} is broken")


class TrainOnBroken(pydantic.BaseModel):
    data: BrokenData = BrokenData()
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> int:
        return sum(self.data.prepare())


def test_failing_subconfig_raises_its_own_error(env: Env) -> None:
    """One node failed, the others only could not run: a call raises that node's own
    error, with its type (as a call of the sub-config alone does), not NodeFailures."""
    infra = env.infra()
    train = TrainOnBroken(data=BrokenData(infra=infra), infra=infra)
    with pytest.raises(ValueError, match="data 3 is broken"):
        train.fit()
    with pytest.raises(ValueError, match="data 3 is broken"):  # decided from the cache now
        TrainOnBroken(data=BrokenData(infra=infra), infra=infra).fit()
    with pytest.raises(ValueError, match="data 3 is broken"):  # ...and by a job (no hang)
        TrainOnBroken(data=BrokenData(infra=infra), infra=infra).infra.job().result()
    # two failures of their own: both reported
    two = [TrainOnBroken(data=BrokenData(n=n, infra=infra), infra=infra) for n in (4, 5)]
    with pytest.raises(NodeFailures, match="4 node"):
        exca.graph.run(*[t.fit.node() for t in two])


def test_read_only_missing_subconfig_raises_its_own_error(env: Env) -> None:
    """A sub-config in mode read-only with nothing cached: a call of the parent raises
    the sub-config's read-only error (it raised NodeFailures naming the parent too), as
    job().result() does, and job() with a cluster (nothing submitted); exca.graph.run(...)
    lists both."""
    infra = env.infra()
    train = TrainOnBroken(data=BrokenData(n=-1, infra={**infra, "mode": "read-only"}), infra=infra)
    data_uid = train.data.prepare.node().uid
    local = TrainOnBroken(data=train.data, infra={**infra, "cluster": "local"})
    for call in (train.fit, lambda: train.infra.job().result(), local.infra.job):
        with pytest.raises(RuntimeError, match="read-only and missing") as info:
            call()
        assert not isinstance(info.value, NodeFailures)
        assert str(info.value).startswith(data_uid)
    with pytest.raises(NodeFailures) as listed:
        exca.graph.run(train.fit.node())
    assert set(listed.value.failures) == {data_uid, train.fit.node().uid}
    assert events(env.log) == []


def test_chain_subconfigs_false_runs_inline(env: Env) -> None:
    train = TrainInline(data=env.data(), log=env.log, infra=env.infra())
    plan = exca.graph.plan(train.fit.node())
    assert len(plan.entries) == 1 and plan.entries[0].upstream == []
    assert train.fit() == 3
    assert _order(env) == ["fit:start", "prepare3:start", "fit:end"]
    assert env.data().prepare() == [0, 1, 2]  # cached by the nested call
    assert env.starts("prepare3") == 1


def test_map_and_folderless_subconfigs_are_not_chained(env: Env) -> None:
    train = TrainWithMap(
        square=env.square(),
        data=Data(log=env.log, infra={"folder": None}),
        log=env.log,
        infra=env.infra(),
    )
    plan = exca.graph.plan(train.fit.node())
    assert len(plan.entries) == 1 and plan.entries[0].upstream == []
    assert len(exca.graph.graph(train.fit.node())) == 1
    assert train.fit() == 1 + 4 + 3
    order = _order(env)
    assert order[0] == "fit:start" and order[-1] == "fit:end"
    assert sorted(order[1:-1]) == ["prepare3:start", "square1:start", "square2:start"]


def test_map_owner_chains_its_subconfig_tasks(env: Env) -> None:
    """A map's data sub-config is a node of its own, planned and computed before the map (as
    for a task): not inside each chunk job, where on Slurm the nested job it submitted waited
    on the allocation the chunk jobs held (they hit their time limit)."""
    scale = ScaleByData(data=env.data(), log=env.log, infra=env.infra(cluster="local"))
    node = scale.apply.node([1, 2, 3])
    assert [n.uid for n in node.upstream] == [env.data().prepare.node().uid]
    plan = exca.graph.plan(node)
    assert [entry.uid for entry in plan.entries] == [env.data().prepare.node().uid, node.uid]
    assert node.result() == [3, 6, 9]
    assert env.starts("prepare3") == 1  # before the chunk jobs (2 of them), not in them
    assert started(env.log)[0] == "prepare3"
    assert exca.graph.plan(node).counts() == {"cached": 1, "not needed": 1}


def test_a_forced_subconfig_task_of_a_map_makes_what_follows_the_map_stale(env: Env) -> None:
    """The items of a map record the sub-config tasks they read, as a task's result does:
    recomputing the data alone marks what the map fed stale (it stayed plain cached)."""
    scale = ScaleByData(data=env.data(), log=env.log, infra=env.infra())
    after = env.step("after").run.node(scale.apply.node([1, 2]))
    exca.graph.run(after)
    assert exca.graph.plan(after).entries[-1].status == "cached"
    env.data(mode="force").prepare()  # recomputed alone
    (entry,) = [e for e in exca.graph.plan(after).entries if e.uid == after.uid]
    assert entry.status == "stale", entry
    assert f"upstream {env.data().prepare.node().uid} recomputed at" in entry.reason


def test_map_owner_with_cached_items_forces_its_forced_subconfig(env: Env) -> None:
    """A map whose items are all cached, its data sub-config in mode force: the data is
    computed again and so are the items (forced by upstream, as the plan says and as for a
    task owner). The call's fast path returned the cached items, forcing nothing."""
    assert list(ScaleByData(data=env.data(), log=env.log, infra=env.infra()).apply([1, 2])) == [
        3,
        6,
    ]
    scale = ScaleByData(data=env.data(mode="force"), log=env.log, infra=env.infra())
    assert exca.graph.plan(scale.apply.node([1, 2])).counts() == {"forced": 2}
    assert list(scale.apply([1, 2])) == [3, 6]
    assert list(scale.apply([1, 2])) == [3, 6]  # (forced once by this instance)
    assert started(env.log) == ["prepare3", "scaled1", "scaled2"] * 2


def test_map_owner_chain_subconfigs_false(env: Env) -> None:
    scale = ScaleByDataInline(data=env.data(), log=env.log, infra=env.infra())
    node = scale.apply.node([1, 2])
    assert node.upstream == () and len(exca.graph.plan(node).entries) == 1
    assert list(scale.apply([1, 2])) == [3, 6]
    assert started(env.log) == ["prepare3", "scaled1", "scaled2"]


def test_chaining_through_lists_dicts_and_unions(env: Env) -> None:
    def other(n: int) -> OtherData:
        return OtherData(n=n, log=env.log, infra=env.infra())

    ensemble = Ensemble(
        choice=other(2),
        many=[env.data(1), env.data(2)],
        named={"x": env.data(4), "y": other(3)},
        log=env.log,
        infra=env.infra(),
    )
    expected = {
        other(2).prepare.node().uid,
        env.data(1).prepare.node().uid,
        env.data(2).prepare.node().uid,
        env.data(4).prepare.node().uid,
        other(3).prepare.node().uid,
    }
    node = ensemble.fit.node()
    assert {n.uid for n in node.upstream} == expected
    plan = exca.graph.plan(node)
    assert {e.uid for e in plan.entries} == expected | {node.uid}
    assert plan.entries[-1].uid == node.uid and set(plan.entries[-1].upstream) == expected
    assert ensemble.fit() == 10 + 0 + 1 + 6 + 30
    names = started(env.log)
    assert names[-1] == "fit"  # every chained task ran before fit started
    assert sorted(names[:-1]) == ["other2", "other3", "prepare1", "prepare2", "prepare4"]


# =============================================================================================
# 3. Pruning
# =============================================================================================
def test_cached_target_does_not_need_its_upstream(env: Env) -> None:
    a = env.step("a").run.node()
    b = env.step("b").run.node(a)
    c = env.step("c").run.node(b)
    assert c.result() == "c(b(a(None,None),None),None)"
    for node in (a, b):
        shutil.rmtree(node.folder)  # type: ignore[arg-type]
    plan = exca.graph.plan(c)
    assert {e.uid: (e.status, e.action) for e in plan.entries} == {
        a.uid: ("not needed", "skip"),
        b.uid: ("not needed", "skip"),
        c.uid: ("cached", "reuse"),
    }
    assert plan.arrays == []
    exca.graph.run(c)
    assert c.result() == "c(b(a(None,None),None),None)"
    assert started(env.log) == ["a", "b", "c"]  # nothing recomputed
    assert not a.folder.exists() and not b.folder.exists()  # type: ignore[union-attr]
    # a new target that needs them recomputes them
    fresh_b = env.step("b").run.node(env.step("a").run.node())
    d = env.step("d").run.node(fresh_b)
    assert d.result() == "d(b(a(None,None),None),None)"
    assert started(env.log) == ["a", "b", "c", "a", "b", "d"]


def test_result_removed_elsewhere_is_recomputed(env: Env) -> None:
    b = env.step("b").run.node()
    assert b.result() == "b(None,None)"
    env.step("b").run.node().clear()  # another instance of the same config (or process)
    d = env.step("d").run.node(b)
    assert _by_uid(exca.graph.plan(d))[b.uid].status == "missing"
    assert d.result() == "d(b(None,None),None)"
    assert started(env.log) == ["b", "b", "d"]


# =============================================================================================
# 4. Plans
# =============================================================================================
def _by_uid(plan: tp.Any) -> dict[str, tp.Any]:
    return {e.uid: e for e in plan.entries}


def test_a_cached_error_saying_read_only_is_not_a_read_only_refusal(env: Env) -> None:
    """The run picked read-only refusals by the words "read-only" in a node's reason,
    which now holds a cached error's message: an error saying "read-only" stopped the run
    before the other nodes computed."""
    flag = env.tmp / "fail"
    flag.touch()
    bad = env.step("read-only", fail_flag=str(flag)).run.node()  # ("read-only fails ...")
    with pytest.raises(ValueError, match="read-only fails on purpose"):
        bad.result()
    good = env.step("good").run.node()
    with pytest.raises(ValueError, match="read-only fails on purpose"):
        exca.graph.run(bad, good, progress=False)
    assert good.status() == "completed"


def test_plan_statuses_actions_and_reasons(env: Env) -> None:
    flag = env.tmp / "fail"
    flag.touch()
    a = env.step("a").run.node()
    bad = env.step("bad", fail_flag=str(flag)).run.node()
    with pytest.raises(ValueError, match="bad fails on purpose"):
        bad.result()
    b = env.step("b").run.node(a)
    assert b.result() == "b(a(None,None),None)"
    after_bad = env.step("after", fail_flag="").run.node(bad)
    missing = env.step("missing").run.node()
    readonly = env.step("ro", infra={"mode": "read-only"}).run.node()
    plan = exca.graph.plan(b, after_bad, missing, readonly)
    entries = _by_uid(plan)
    got = {uid: (e.status, e.action, e.reason) for uid, e in entries.items()}
    assert got[a.uid] == ("not needed", "skip", "not needed")
    assert got[b.uid] == ("cached", "reuse", "cached")
    assert got[bad.uid] == (
        "cached error",
        "fail",
        "cached error (ValueError: bad fails on purpose): mode='retry' computes it again",
    )
    status, action, reason = got[after_bad.uid]
    assert (status, action) == ("missing", "fail") and bad.uid in reason
    assert got[missing.uid] == ("missing", "compute", "missing")
    assert got[readonly.uid] == ("missing", "fail", "read-only and missing")
    assert entries[after_bad.uid].upstream == [bad.uid]
    for entry in plan.entries:
        assert entry.job_id is None and entry.problems == []
        assert entry.folder is not None and entry.kind == "task"
    # retry of a cached error
    retry = env.step("bad", fail_flag=str(flag), infra={"mode": "retry"}).run.node()
    entry = _by_uid(exca.graph.plan(retry))[retry.uid]
    assert (entry.status, entry.action, entry.reason) == (
        "cached error",
        "compute",
        "retry of a cached error",
    )
    # force, and what it propagates to
    forced_a = env.step("a", infra={"mode": "force"}).run.node()
    forced_b = env.step("b").run.node(forced_a)
    got = {e.uid: (e.status, e.action, e.reason) for e in exca.graph.plan(forced_b).entries}
    assert got == {
        a.uid: ("forced", "compute", "mode=force"),
        b.uid: ("forced", "compute", "forced by upstream"),
    }
    assert started(env.log) == ["bad", "a", "b"]  # planning computed nothing


@pytest.mark.timeout(120)
def test_plan_submits_work_below_a_running_job_on_its_own(env: Env) -> None:
    """Work below a job submitted earlier goes out when that job ends: the plan showed it
    packed with independent work of the same wave (one array, which the run never made)."""
    block = env.tmp / "block"
    block.touch()
    local = {"cluster": "local"}
    running = env.step("running", block_flag=str(block), infra=local).run.node()
    job = running.job()
    try:
        wait_for(lambda: "running" in started(env.log), timeout=60)
        below = env.step("below", infra=local).run.node(running)
        apart = env.step("apart", infra=local).run.node()
        plan = exca.graph.plan(below, apart)
        arrays = {tuple(a.nodes): a for a in plan.arrays}
        assert set(arrays) == {(below.uid,), (apart.uid,)}
        assert arrays[(below.uid,)].after_running and not arrays[(apart.uid,)].after_running
        assert "once the running work they need ends" in str(plan)
    finally:
        block.unlink()
    assert job.result() == "running(None,None)"


@pytest.mark.timeout(120)
def test_plan_of_work_below_a_computation_without_a_job_names_no_job(env: Env) -> None:
    """Work below a task another thread (or process) computes inline: the plan marked its
    array "once the running jobs they need end", while no job was running (a probe)."""
    block = env.tmp / "block"
    block.touch()
    running = env.step("inline", block_flag=str(block)).run.node()
    thread = threading.Thread(target=running.result)
    thread.start()
    try:
        wait_for(lambda: "inline" in started(env.log), timeout=60)
        below = env.step("below", infra={"cluster": "local"}).run.node(running)
        plan = exca.graph.plan(below)
        entry = _by_uid(plan)[running.uid]
        assert (entry.status, entry.job_id) == ("running", None)
        (array,) = plan.arrays
        assert array.after_running and array.nodes == [below.uid]
        submissions = str(plan).split("Submissions:")[1]
        assert "(once the running work they need ends)" in submissions, submissions
    finally:
        block.unlink()
        thread.join()


@pytest.mark.timeout(120)
def test_inline_run_takes_other_tasks_while_another_worker_computes_one(env: Env) -> None:
    """Two drivers of one sweep of inline tasks: the second waited for each task the
    first one computed, in the same order, instead of taking the tasks nobody had
    started; it now puts a task that another worker computes after its other tasks."""
    block, b_started = env.tmp / "block", env.tmp / "b-started"
    block.touch()
    a = env.step("a", block_flag=str(block)).run.node()
    b = env.step("b", signal_file=str(b_started)).run.node()
    thread = threading.Thread(target=a.result)  # another worker, computing a
    thread.start()
    try:
        wait_for(lambda: "a" in started(env.log), timeout=60)

        # (a keeps computing until b started, or 10 s: without the fix, b waited for a)
        def release() -> None:
            with contextlib.suppress(Exception):
                wait_for(b_started.exists, timeout=10)
            block.unlink()

        unblock = threading.Thread(target=release)
        unblock.start()
        exca.graph.run(a, b, progress=False)
        unblock.join()
    finally:
        block.unlink(missing_ok=True)
        thread.join()
    order = [(e["name"], e["event"]) for e in events(env.log)]
    assert order.index(("b", "start")) < order.index(("a", "end")), order
    assert env.starts("a") == 1 and env.starts("b") == 1  # (a computed once: read here)
    assert (a.result(), b.result()) == ("a(None,None)", "b(None,None)")


def test_plan_of_a_pool_map_with_one_item_to_compute_says_inline(env: Env) -> None:
    """The run computes a single item here, without the pool (the plan said the pool)."""
    square = env.square(cluster="threadpool")
    assert list(square.apply([1])) == [1]
    one, two = square.apply.node([1, 2]), square.apply.node([3, 4])
    plan = exca.graph.plan(one, two)
    entries = _by_uid(plan)
    assert (entries[one.uid].where, entries[two.uid].where) == ("inline", "threadpool")
    assert sorted((a.where, tuple(a.nodes)) for a in plan.arrays) == [
        ("inline", (one.uid,)),
        ("threadpool", (two.uid,)),
    ]


def test_plan_of_auto_says_where_it_resolves_with_its_resources(env: Env) -> None:
    """(it read "slurm (auto)(timeout_min=5)")"""
    here = exca.graph.executors.resolve_cluster("auto")
    plain = env.step("plain", infra={"cluster": "auto"}).run.node()
    sized = env.step("sized", infra={"cluster": "auto", "timeout_min": 5}).run.node()
    plan = exca.graph.plan(plain, sized)
    entries = _by_uid(plan)
    assert entries[plain.uid].where == f"{here} (auto)"
    assert entries[sized.uid].where == f"{here}(auto, timeout_min=5)"
    # the submissions say the same (they said "on auto")
    wheres = sorted(a.where for a in plan.arrays)
    assert wheres == sorted([f"{here} (auto)", f"{here}(auto, timeout_min=5)"])
    assert f"1 element(s) on {here} (auto) for 1 node(s)" in str(plan)


def test_plan_of_a_node_without_folder_says_nothing_is_cached(env: Env) -> None:
    node = env.step("ram", infra={"folder": None}).run.node()
    (entry,) = exca.graph.plan(node).entries
    assert entry.where == "inline (no folder: RAM only)"
    assert node.result() == "ram(None,None)"


def test_plan_flags_stale_results(env: Env) -> None:
    a, b, c = _chain(env)
    assert c.result() == "c(b(a(None,None),None),None)"
    exca.graph.run(env.step("a", infra={"mode": "force"}).run.node())  # a recomputed alone
    assert started(env.log) == ["a", "b", "c", "a"]
    # planned later (fresh configs, as in another process)
    a, b, c = _chain(env)
    plan = exca.graph.plan(b)
    entry = _by_uid(plan)[b.uid]
    assert entry.status == "stale"
    assert a.uid in entry.reason
    assert "stale" in str(plan) and a.uid in str(plan)
    # c's own upstream (b) was not recomputed: c is not stale with respect to b
    assert _by_uid(exca.graph.plan(c))[c.uid].status == "cached"
    # ... but once b is looked at (a target too), what was computed from it is stale
    entry = _by_uid(exca.graph.plan(b, c))[c.uid]
    assert entry.status == "stale" and entry.reason == f"stale: upstream {b.uid} is stale"


def test_plan_flags_stale_results_through_a_map(env: Env) -> None:
    """A task fed by a map fed by a task: recomputing the first makes the last stale."""

    def chain() -> tuple[exca.graph.Node, exca.graph.Node]:
        numbers = env.numbers(3).make.node()
        return numbers, env.step("total").run.node(env.square().apply.node(numbers))

    numbers, total = chain()
    assert total.result() == "total([0;1;4],None)"
    env.numbers(3, mode="force").make()  # recomputed alone
    numbers, total = chain()
    entry = _by_uid(exca.graph.plan(total))[total.uid]
    assert entry.status == "stale" and numbers.uid in entry.reason


def _chain(env: Env) -> tuple[exca.graph.Node, exca.graph.Node, exca.graph.Node]:
    a = env.step("a").run.node()
    b = env.step("b").run.node(a)
    return a, b, env.step("c").run.node(b)


def test_plan_flags_stale_results_with_the_same_objects(env: Env) -> None:
    _, b, c = _chain(env)
    assert c.result() == "c(b(a(None,None),None),None)"
    exca.graph.run(env.step("a", infra={"mode": "force"}).run.node())
    assert _by_uid(exca.graph.plan(b))[b.uid].status == "stale"


def test_a_result_records_the_upstream_result_it_read(env: Env) -> None:
    """An upstream recomputed (by another process, here another instance) while a run is
    under way: a node of the run that then reads the new result records that one as its
    lineage (it recorded the one its run knew at the start: a later plan called it stale,
    a probe)."""
    flag, signal = env.tmp / "block", env.tmp / "signal"
    flag.touch()
    a = env.step("a").run.node()
    assert a.result() == "a(None,None)"
    first = env.step("first", block_flag=str(flag), signal_file=str(signal)).run.node(a)
    second = env.step("second").run.node(a, first)  # (runs after first: it reads a then)
    thread = threading.Thread(target=lambda: exca.graph.run(second, progress=False))
    thread.start()
    try:
        wait_until(signal.exists, timeout=60)
        exca.graph.run(env.step("a", infra={"mode": "force"}).run.node())  # a recomputed
    finally:
        flag.unlink()
        thread.join(timeout=60)
    assert started(env.log) == ["a", "first", "a", "second"]
    a = env.step("a").run.node()
    first = env.step("first", block_flag=str(flag), signal_file=str(signal)).run.node(a)
    assert _by_uid(exca.graph.plan(first))[first.uid].status == "stale"  # (read the former)
    second = env.step("second").run.node(a, first)
    assert _by_uid(exca.graph.plan(second))[second.uid].status == "cached"


def test_the_job_of_a_map_whose_upstream_fails(env: Env) -> None:
    """Its items cannot be read: the job is done, failed, and raises the upstream's own
    error (repr, done() and state raised that the items could not be read; a review)."""
    flag = env.tmp / "fail"
    flag.touch()

    class Source(pydantic.BaseModel):
        infra: exca.TaskInfra = exca.TaskInfra(version="1")

        @infra.apply
        def make(self) -> list[int]:  # (Step.run is "-> str": refused as a map's items)
            if flag.exists():
                raise ValueError("src fails on purpose")
            return [1, 2]

    job = env.square().apply.node(Source(infra=env.infra()).make.node()).job()
    assert job.done() and job.state == "FAILED" and "state=FAILED" in repr(job)
    with pytest.raises(ValueError, match="src fails on purpose"):
        job.result()


def test_plan_of_a_cached_map_fed_by_a_map(env: Env) -> None:
    """Its items are read through the upstream map (cached): the plan says cached, as the
    run then does (it said 'items known at run time', to compute)."""
    numbers = env.numbers(3).make.node()
    squares = env.square().apply.node(numbers)
    cubes = env.square(power=3).apply.node(squares)
    assert list(cubes.result()) == [0, 1, 64]
    entry = _by_uid(exca.graph.plan(cubes))[cubes.uid]
    assert (entry.status, entry.action) == ("cached", "reuse")


def test_plan_of_a_map_on_jobs_with_items_known_at_run_time(env: Env) -> None:
    """How many jobs depends on the items: the plan gives max_jobs as a bound."""
    squares = env.square(cluster="local", max_jobs=5).apply.node(env.numbers(3).make.node())
    (array,) = [a for a in exca.graph.plan(squares).arrays if squares.uid in a.nodes]
    assert (array.elements, array.at_most) == (5, True)
    assert "at most 5 element(s) on local" in str(exca.graph.plan(squares))
    # a pool: as many chunks as the run may make (it said 1)
    pooled = env.square(cluster="processpool").apply.node(env.numbers(3).make.node())
    (array,) = [a for a in exca.graph.plan(pooled).arrays if pooled.uid in a.nodes]
    workers = exca.graph.executors.Pools.workers(1 << 30, None)
    assert (array.elements, array.at_most) == (3 * workers, True)


def test_a_job_fed_by_a_ram_only_node_is_refused_before_submitting(env: Env) -> None:
    """A job is another process: it cannot read an input kept in RAM only. The plan lists
    the problem, and the run refuses before submitting (it sent a job that failed with
    "upstream is missing", cached that error, and sent a new one at every run)."""
    numbers = Numbers(count=3, log=env.log, infra={"keep_in_ram": True}).make.node()
    total = env.step("total", infra={"cluster": "local"}).run.node(numbers)
    plan = exca.graph.plan(total)
    assert "has no folder (kept in RAM only)" in str(plan)
    with pytest.raises(ValueError, match="cluster='local' runs in another process"):
        exca.graph.run(total)
    assert total.status() == "not submitted" and env.starts("total") == 0
    listed = env.step("total", infra={"cluster": "local"}).run.node([numbers, 1])  # (a list)
    with pytest.raises(ValueError, match="has no folder"):
        exca.graph.run(listed)
    assert not list(env.folder.rglob("*_log.out"))
    # in this process (debug) and for a map, whose items are read by the run: it works
    debug = env.step("total", infra={"cluster": "debug"}).run.node(numbers)
    exca.graph.run(debug)
    assert env.starts("total") == 1
    squares = env.square(cluster="local").apply.node(numbers)
    exca.graph.run(squares)
    assert list(squares.result()) == [0, 1, 4]
    # a job reading that map's outputs finds them by item uid, from the items: refused
    # too (its job failed with "upstream ... has no cached result", a probe)
    summed = env.step("summed", infra={"cluster": "local"}).run.node(squares)
    assert "(through the items of" in str(exca.graph.plan(summed))
    with pytest.raises(ValueError, match="through the items of"):
        exca.graph.run(summed)
    assert env.starts("summed") == 0


def test_plan_of_a_map_without_max_jobs_with_items_known_at_run_time(env: Env) -> None:
    """max_jobs=None: a run sends one job per chunk of items, so the plan gives no bound
    (it said "at most 1 element" and the run then sent 3 jobs)."""
    squares = env.square(cluster="local", max_jobs=None).apply.node(env.numbers(3).make.node())
    plan = exca.graph.plan(squares)
    (array,) = [a for a in plan.arrays if squares.uid in a.nodes]
    assert array.open_ended and "1 or more element(s)" in str(plan)
    assert "at most 1 element" not in str(plan)
    exca.graph.run(squares)
    assert list(squares.result()) == [0, 1, 4]
    logs = [p for p in env.folder.rglob("*_log.out") if "Square.apply" in str(p)]
    assert len(logs) == 3  # one job per item (min_samples_per_job=1)


def test_plan_map_item_counts(env: Env) -> None:
    square = env.square()
    list(square.apply(range(7)))
    ten = env.square().apply.node(list(range(10)))
    entry = exca.graph.plan(ten).entries[0]
    assert (entry.kind, entry.status, entry.action) == ("map", "missing", "compute")
    assert entry.items == "3/10 missing"
    assert "3/10 missing" in str(exca.graph.plan(ten))
    # items from an uncached upstream node are only known at run time
    numbers = env.numbers(count=12)
    over_node = env.square().apply.node(numbers.make.node())
    entries = _by_uid(exca.graph.plan(over_node))
    assert entries[over_node.uid].items == "items known at run time"
    assert entries[over_node.uid].action == "compute"
    assert entries[numbers.make.node().uid].status == "missing"
    numbers.make()
    entries = _by_uid(exca.graph.plan(over_node))
    assert entries[over_node.uid].items == "5/12 missing"  # items 0..6 are shared with the list map
    assert entries[numbers.make.node().uid].status == "cached"  # read for the items
    # fully cached
    assert over_node.result() == [i**2 for i in range(12)]
    entry = _by_uid(exca.graph.plan(over_node))[over_node.uid]
    assert (entry.status, entry.action, entry.items) == ("cached", "reuse", "0/12 missing")
    assert started(env.log).count("numbers12") == 1
    assert len([n for n in started(env.log) if n.startswith("square")]) == 12


def test_plan_of_a_map_forced_by_upstream_with_items_known_at_run_time(env: Env) -> None:
    """numbers (force) -> square: the run computes all the cached items again. The plan
    said only "items known at run time" and explain "only the missing ones are computed"
    (a probe)."""
    squares = env.square().apply.node(env.numbers(3).make.node())
    exca.graph.run(squares)
    forced = env.square().apply.node(env.numbers(3, mode="force").make.node())
    entry = _by_uid(exca.graph.plan(forced))[forced.uid]
    assert (entry.status, entry.action) == ("forced", "compute")
    assert entry.reason == (
        "forced by upstream: items known at run time, the cached ones are computed again too"
    )
    (explained,) = [e for e in exca.ops.explain(forced) if e.uid == forced.uid]
    assert explained.summary() == entry.reason + (
        " (3 item(s) are cached for this config, 3 of them computed from this upstream before)"
    )
    exca.graph.run(forced)
    assert len([n for n in started(env.log) if n.startswith("square")]) == 6  # 3, then 3 again
    # the map in mode force itself: said so
    own = env.square(mode="force").apply.node(env.numbers(4).make.node())
    entry = _by_uid(exca.graph.plan(own))[own.uid]
    assert entry.reason.startswith("mode=force: items known at run time, the cached ones")


def test_plan_where_and_packing(env: Env) -> None:
    leaves = [env.step(f"leaf{i}", infra={"cluster": "local"}).run.node() for i in range(2)]
    middle = env.step("middle", infra={"cluster": "local"}).run.node(*leaves)
    local_map = env.square(power=3, cluster="local", max_jobs=3).apply.node(list(range(10)))
    pool_map = env.square(power=4, cluster="threadpool").apply.node([1, 2, 3, 4])
    inline = env.step("inline").run.node(middle)
    plan = exca.graph.plan(inline, local_map, pool_map)
    entries = _by_uid(plan)
    assert {uid: e.where for uid, e in entries.items()} == {
        leaves[0].uid: "local",
        leaves[1].uid: "local",
        middle.uid: "local",
        local_map.uid: "local",
        pool_map.uid: "threadpool",
        inline.uid: "inline",
    }
    arrays = {(a.wave, a.where): a for a in plan.arrays}
    assert set(arrays) == {(0, "local"), (0, "threadpool"), (1, "local"), (2, "inline")}
    first = arrays[0, "local"]
    assert sorted(first.nodes) == sorted([leaves[0].uid, leaves[1].uid, local_map.uid])
    assert first.elements == 2 + 3  # two tasks + the map's 10 items split into max_jobs=3
    # a pool runs chunks of the missing items: as many as the run itself will use
    workers = exca.graph.executors.Pools.workers(4, pool_map.execution.max_jobs)
    chunks = exca.graph.decisions.to_chunks(4, 3 * workers, 1)
    pool = arrays[0, "threadpool"]
    assert pool.elements == len(chunks) and pool.nodes == [pool_map.uid]
    assert arrays[1, "local"].nodes == [middle.uid] and arrays[1, "local"].elements == 1
    assert arrays[2, "inline"].nodes == [inline.uid]
    for array in plan.arrays:
        for uid in array.nodes:
            assert entries[uid].array == array.index
    text = str(plan)
    assert "wave 0: 5 element(s) on local for 3 node(s)" in text
    assert events(env.log) == [] and not env.folder.exists()


def test_plan_renderings(env: Env) -> None:
    a = env.step("a").run.node()
    a.result()
    b, c = env.step("b").run.node(a), env.step("c").run.node(a)
    d = env.step("d").run.node(b, c)
    squares = env.square().apply.node([1, 2])
    plan = exca.graph.plan(d, squares)
    text = str(plan)
    assert text.splitlines()[0].startswith("Plan: 5 node(s)")
    for entry in plan.entries:
        assert entry.uid in text
    assert "cached" in text and "missing" in text and "2/2 missing" in text
    as_dict = plan.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict  # JSON-able
    assert json.loads(plan.to_json()) == as_dict
    assert [n["uid"] for n in as_dict["nodes"]] == [e.uid for e in plan.entries]
    # (where the work runs: none for the cached node, as the table's "-"; it said "inline")
    assert {n["uid"]: n["where"] for n in as_dict["nodes"]}[a.uid] is None
    assert {n["uid"]: n["where"] for n in as_dict["nodes"]}[b.uid] == "inline"
    assert {n["uid"]: n["status"] for n in as_dict["nodes"]} == {
        a.uid: "cached",
        b.uid: "missing",
        c.uid: "missing",
        d.uid: "missing",
        squares.uid: "missing",
    }
    assert as_dict["counts"] == {"cached": 1, "missing": 4}
    assert len(as_dict["arrays"]) == len(plan.arrays)
    mermaid = plan.to_mermaid()
    lines = mermaid.strip().splitlines()
    assert lines[0].startswith("flowchart")
    node_lines = [line for line in lines if re.match(r"\s*n\d+\[", line)]
    edge_lines = [line for line in lines if "-->" in line]
    assert len(node_lines) == 5
    assert len(edge_lines) == 4  # a->b, a->c, b->d, c->d
    ids = {
        e.uid: re.match(r"\s*(n\d+)\[", line).group(1) for e, line in zip(plan.entries, node_lines)
    }  # type: ignore[union-attr]
    edges = {tuple(line.split("-->")[i].strip() for i in (0, 1)) for line in edge_lines}
    assert edges == {
        (ids[a.uid], ids[b.uid]),
        (ids[a.uid], ids[c.uid]),
        (ids[b.uid], ids[d.uid]),
        (ids[c.uid], ids[d.uid]),
    }
    assert started(env.log) == ["a"]


def test_plan_changes_nothing(env: Env) -> None:
    flag = env.tmp / "fail"
    flag.touch()
    numbers = env.numbers(count=6)
    numbers.make()  # cached upstream of a map: planning calls item_uid on its output
    list(env.square().apply([0, 1, 2]))  # the map is partly cached
    squares = env.square().apply.node(numbers.make.node())
    total = env.step("total").run.node(squares, 1)  # missing, downstream of the map
    bad = env.step("bad", fail_flag=str(flag)).run.node()
    with pytest.raises(ValueError):
        bad.result()
    after_bad = env.step("after").run.node(bad)
    a = env.step("a").run.node()
    cached = env.step("cached").run.node(a)
    cached.result()
    shutil.rmtree(a.folder)  # type: ignore[arg-type]
    stale_source = env.step("src").run.node()
    stale = env.step("stale").run.node(stale_source)
    stale.result()
    exca.graph.run(env.step("src", infra={"mode": "force"}).run.node())
    stale_source = env.step("src").run.node()  # fresh configs, as in another process
    stale = env.step("stale").run.node(stale_source)
    forced = env.step("forced", infra={"mode": "force"}).run.node(stale_source)
    train = Train(data=env.data(), log=env.log, infra=env.infra())  # chained, missing
    readonly = env.step("ro", infra={"mode": "read-only"}).run.node()
    retry = env.step("bad", fail_flag=str(flag), infra={"mode": "retry"}).run.node()
    targets = [total, after_bad, cached, stale, forced, train.fit.node(), readonly]
    calls_before = events(env.log)
    before = snapshot(env.tmp)
    time.sleep(0.01)  # a rewrite would change an mtime
    plan = exca.graph.plan(*targets)
    retry_plan = exca.graph.plan(retry)
    str(plan), plan.to_json(), plan.to_mermaid(), str(retry_plan)
    exca.graph.graph(*targets)
    assert snapshot(env.tmp) == before
    assert events(env.log) == calls_before
    statuses = {e.status for e in plan.entries}
    assert {"cached", "cached error", "missing", "forced", "stale", "not needed"} <= statuses
    assert _by_uid(plan)[squares.uid].items == "3/6 missing"


# =============================================================================================
# 5. The scheduler over many nodes
# =============================================================================================
def _check_order(env: Env, upstream: dict[str, list[str]]) -> None:
    """Every node started after all its upstream nodes ended (in the log's order)."""
    lines = events(env.log)
    position = {(e["name"], e["event"]): i for i, e in enumerate(lines)}
    for name, ups in upstream.items():
        for up in ups:
            assert position[up, "end"] < position[name, "start"], (up, name)


def test_diamond_in_topological_order(env: Env) -> None:
    a = env.step("a").run.node()
    b, c = env.step("b").run.node(a), env.step("c").run.node(a, 2)
    d = env.step("d").run.node(b, c)
    exca.graph.run(d)
    assert sorted(started(env.log)) == ["a", "b", "c", "d"]  # each once
    _check_order(env, {"b": ["a"], "c": ["a"], "d": ["b", "c"]})
    seen = {e["name"]: (e["a"], e["b"]) for e in events(env.log, "start")}
    assert seen["d"] == ("b(a(None,None),None)", "c(a(None,None),2)")
    assert d.result() == "d(b(a(None,None),None),c(a(None,None),2))"


def test_wider_dag(env: Env) -> None:
    leaves = [env.step(f"l{i}").run.node(i) for i in range(4)]
    middles = [env.step(f"m{i}").run.node(leaves[i], leaves[i + 1]) for i in range(3)]
    upper = [env.step(f"u{i}").run.node(middles[i], middles[i + 1]) for i in range(2)]
    top = env.step("top").run.node(*upper)
    side = env.step("side").run.node(leaves[3])  # an independent branch
    plan = exca.graph.plan(top, side)
    assert len(plan.entries) == 11 and {e.status for e in plan.entries} == {"missing"}
    exca.graph.run(top, side)
    names = started(env.log)
    assert sorted(names) == sorted(
        ["top", "side", *(f"l{i}" for i in range(4)), "m0", "m1", "m2", "u0", "u1"]
    )
    upstream = {f"m{i}": [f"l{i}", f"l{i + 1}"] for i in range(3)}
    upstream.update({f"u{i}": [f"m{i}", f"m{i + 1}"] for i in range(2)})
    upstream.update({"top": ["u0", "u1"], "side": ["l3"]})
    _check_order(env, upstream)
    leaf = [f"l{i}({i},None)" for i in range(4)]
    middle = [f"m{i}({leaf[i]},{leaf[i + 1]})" for i in range(3)]
    expected = f"top(u0({middle[0]},{middle[1]}),u1({middle[1]},{middle[2]}))"
    assert top.result() == expected
    assert side.result() == f"side({leaf[3]},None)"
    assert {e.status for e in exca.graph.plan(top, side).entries} == {"cached", "not needed"}


def test_next_level_goes_out_when_jobs_are_seen_ending_at_different_polls(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Job states are polled (Slurm's through squeue/sacct), so the end of one job of an
    array may be seen a poll after another's. Here b0 is seen ending only once a0 was
    handled (while a1 waits to go out with b1): a1 and b1 must still go out, as one array
    (a run once returned with that level never launched)."""
    scheduler, executors = exca.graph.scheduler.Scheduler, exca.graph.executors
    real_submit, real_done = executors.submit_array, executors.SubmititHandle.done
    real_finish = scheduler._finish
    sizes: list[int] = []
    handles: dict[str, tp.Any] = {}  # step name -> its job's handle
    finished: list[str] = []

    def name(node: tp.Any) -> str:
        return str(node.function.owner.name)

    def submit(units: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        out = list(real_submit(units, *args, **kwargs))
        sizes.append(len(units))
        handles.update({name(u.node): h for u, h in zip(units, out)})
        return out

    def done(handle: tp.Any) -> bool:
        if handle is handles.get("a0"):  # seen ending once b0 ended too
            return bool(real_done(handle) and real_done(handles["b0"]))
        if handle is handles.get("b0"):  # seen ending after a0 was handled
            return bool(real_done(handle)) and "a0" in finished
        return bool(real_done(handle))

    def finish(self: tp.Any, run: tp.Any, progress: tp.Any) -> None:
        finished.append(name(run.node))
        real_finish(self, run, progress)

    monkeypatch.setattr(executors, "submit_array", submit)
    monkeypatch.setattr(executors.SubmititHandle, "done", done)
    monkeypatch.setattr(scheduler, "_finish", finish)
    chains = []
    for c in "ab":
        first = env.step(f"{c}0", infra={"cluster": "local"}).run.node()
        chains.append(env.step(f"{c}1", infra={"cluster": "local"}).run.node(first))
    exca.graph.run(*chains)
    assert finished[:2] == ["a0", "b0"]
    assert sizes == [2, 2]
    assert [n.result() for n in chains] == ["a1(a0(None,None),None)", "b1(b0(None,None),None)"]


def test_force_recomputes_once_and_propagates(env: Env) -> None:
    def build(mode: str) -> tuple[exca.graph.Node, exca.graph.Node]:
        a = env.step("a", infra={"mode": mode}).run.node()
        b, c = env.step("b").run.node(a), env.step("c").run.node(a, 2)
        return env.step("d").run.node(b, c), env.step("e").run.node(b)

    unrelated = env.step("u").run.node(1)
    d, e = build("cached")
    exca.graph.run(d, e, unrelated)
    assert sorted(started(env.log)) == ["a", "b", "c", "d", "e", "u"]
    forced_d, forced_e = build("force")
    plan = exca.graph.plan(forced_d, forced_e, unrelated)
    assert {x.uid: x.status for x in plan.entries}[unrelated.uid] == "cached"
    assert sorted(x.status for x in plan.entries) == ["cached"] + ["forced"] * 5
    exca.graph.run(forced_d, forced_e, unrelated)
    names = started(env.log)[6:]
    assert sorted(names) == ["a", "b", "c", "d", "e"]  # a once per run, though used twice
    _check_order(env, {"b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["b"]})
    assert env.starts("u") == 1
    assert forced_d.result() == "d(b(a(None,None),None),c(a(None,None),2))"
    assert len(started(env.log)) == 11


class LockedStep(Step):
    """A Step holding an object that cannot be pickled (a lock, a private attribute)."""

    _lock: tp.Any = pydantic.PrivateAttr(default_factory=threading.Lock)


class LockedSquare(Square):
    """A Square holding an object that cannot be pickled."""

    _lock: tp.Any = pydantic.PrivateAttr(default_factory=threading.Lock)


@pytest.mark.timeout(120)
def test_a_plan_lists_work_that_a_run_cannot_pickle(env: Env) -> None:
    """A config that cannot be pickled (a lock in a private attribute), computed in a job
    or a process pool: the run refuses it, and the plan said it would compute it. Now the
    plan lists the refusal, in the words of the run's error; also for a node on a local
    job reading a node of such a config (its job carries that node: that one was named
    neither by the run nor by the plan). Computed here, nothing is pickled: no problem."""
    up = LockedStep(name="up", log=env.log, infra=env.infra()).run.node()
    cases = {
        "the config's '_lock' (lock) cannot be pickled": LockedStep(
            name="own", log=env.log, infra=env.infra(cluster="local")
        ).run.node(),
        f"it carries the node of its upstream {up.uid}": env.step(
            "down", infra={"cluster": "local"}
        ).run.node(up),
        "cannot be sent to a process pool": LockedSquare(
            log=env.log, infra=env.infra(cluster="processpool")
        ).apply.node([1, 2]),
    }
    for told, node in cases.items():
        entries = _by_uid(exca.graph.plan(node))
        (problem,) = entries[node.uid].problems
        assert told in problem, problem
        assert not [e for e in entries.values() if e.problems and e.uid != node.uid]
        with pytest.raises(TypeError) as info:
            exca.graph.run(node)
        assert str(info.value) == f"{node.uid}: {problem}"
        assert node.status() == "not submitted"
    assert started(env.log) == ["up"]  # (computed here, then its reader was refused)
    here = LockedStep(name="own", log=env.log, infra=env.infra()).run.node()
    assert not any(e.problems for e in exca.graph.plan(here).entries)


class CountsPickling:
    """Refuses to be pickled (as a lock does), counting the attempts."""

    attempts = 0

    def __reduce__(self) -> tp.Any:
        type(self).attempts += 1
        raise TypeError("cannot pickle 'CountsPickling' object")


class CountedStep(Step):
    """A Step holding an object that cannot be pickled, which counts the attempts."""

    _guard: tp.Any = pydantic.PrivateAttr(default_factory=CountsPickling)


def test_the_pickling_check_takes_a_config_holding_a_large_array() -> None:
    """A config holding an array of 64 KB or more was said not to pickle (a review): the
    pickler hands a large buffer to the file as a PickleBuffer, which has no len()."""
    from exca.graph import jobpickle

    values = [np.arange(100_000, dtype=float), np.arange(100_000, dtype=float)[::2], b"x" * 10**6]
    for value in values:
        jobpickle.check_pickles(value)  # (raises when it does not pickle)


def test_a_plan_pickles_each_config_sent_away_once(env: Env) -> None:
    """A plan checks that the configs a run sends away pickle: it pickled them all in one
    buffer first (all the data they hold at once), then each again when one failed; it
    walked each node's closure (quadratic in a chain), and named the failing field once
    per node reading it. Now each config is pickled once, alone, keeping no bytes, its
    failing field looked for once, and each node of the chain still names that config."""
    up = CountedStep(name="up", log=env.log, infra=env.infra(cluster="local")).run.node()
    mid = env.step("mid", infra={"cluster": "local"}).run.node(up)
    down = env.step("down", infra={"cluster": "local"}).run.node(mid)
    CountsPickling.attempts = 0
    entries = _by_uid(exca.graph.plan(down))
    assert CountsPickling.attempts == 2  # (once checked, once to name its field)
    assert "the config's '_guard' (CountsPickling) cannot be pickled" in entries[up.uid].problems[0]
    for node in (mid, down):
        (problem,) = entries[node.uid].problems
        assert f"it carries the node of its upstream {up.uid}" in problem, problem


class Ramp(pydantic.BaseModel):
    """A no-input task whose result is a payload file (an array): ``make() -> 0..n-1``."""

    n: int = 100_000
    log: str
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log",)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def make(self) -> np.ndarray:
        append(self.log, {"name": "ramp", "event": "start"})
        return np.arange(float(self.n))


@pytest.mark.timeout(60)
def test_a_job_does_not_wait_for_an_upstream_job_squeue_cannot_confirm(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upstream result missing, its latest job a Slurm one, and squeue not answering
    (a machine that cannot reach the controller): a worker waited for it for ever (it
    counts as queued when squeue is silent, never to be resubmitted twice); it fails at
    once with the upstream said missing (a review)."""
    from exca.graph import registry
    from exca.graph.worker import Unit, run_unit

    upstream = Shared(block_flag="", log=env.log, infra=env.infra())
    folder = upstream.infra.uid_folder(create=True)
    assert folder is not None
    (folder / "jobs").mkdir()
    record = {"job_id": "4242", "cluster": "slurm", "logs": str(env.tmp), "submitted": 1.0}
    (folder / "jobs" / "4242.json").write_text(json.dumps({**record, "folder": str(folder)}))
    monkeypatch.setattr(registry, "confirmed_queued", lambda ids: None)  # (no answer)
    down = env.step("down").run.node(upstream.make.node())
    with pytest.raises(UpstreamFailed, match="is missing"):
        run_unit(Unit(down))
    assert env.starts("down") == 0


def test_a_run_with_a_damaged_upstream_in_retry_mode_computes_it_again(env: Env) -> None:
    """An upstream result whose payload was removed outside exca: the downstream node's
    error said "in mode='retry' ... computes it again", but a run with the upstream node
    in mode retry reused it and failed the same way (only its eager call repaired it)."""
    ramp = Ramp(log=env.log, infra=env.infra())
    assert ramp.make().sum() == sum(range(100_000))
    folder = ramp.infra.uid_folder()
    assert folder is not None
    (payload,) = [p for p in (folder / "data").iterdir() if p.is_file()]
    payload.unlink()

    def total(mode: str) -> exca.graph.Node:
        upstream = Ramp(log=env.log, infra=env.infra(mode=mode)).make.node()
        return env.step("total").run.node(upstream)

    # in mode cached: the plan says it cannot be read (a stat of its file), the run fails
    # with the error reading it gives (it reused it: the downstream node failed then)
    entry = _by_uid(exca.graph.plan(total("cached")))[total("cached").upstream[0].uid]
    assert (entry.status, entry.action) == ("missing", "fail")
    assert "cannot be read" in entry.reason and "mode='retry' computes it again" in entry.reason
    with pytest.raises(NodeFailures) as failures:
        exca.graph.run(total("cached"))
    error = failures.value.failures[total("cached").upstream[0].uid]
    assert isinstance(error, FileNotFoundError) and "mode='retry'" in str(error)
    entry = _by_uid(exca.graph.plan(total("retry")))[total("retry").upstream[0].uid]
    assert (entry.status, entry.action) == ("missing", "compute")
    assert "cannot be read" in entry.reason
    exca.graph.run(total("retry"))
    assert env.starts("ramp") == 2 and env.starts("total") == 1
    assert total("cached").result().startswith("total(array")


def test_an_upstream_overwritten_in_place_is_computed_again_in_retry_mode(env: Env) -> None:
    """An upstream result whose payload bytes were overwritten outside exca, its size
    unchanged (no stat tells): the node reading it failed with pickle's bare "invalid
    load key", and a run with the upstream in mode retry reused it and failed the same
    way (a probe). The error names the upstream and what to do; in mode retry, the run
    computes the upstream again, then the node."""
    ramp = Ramp(log=env.log, infra=env.infra())
    assert ramp.make().sum() == sum(range(100_000))
    folder = ramp.infra.uid_folder()
    assert folder is not None
    (payload,) = [p for p in (folder / "data").iterdir() if p.is_file()]
    content = bytearray(payload.read_bytes())
    content[2:66] = b"\xff" * 64  # (past the pickle protocol: in its opcodes)
    payload.write_bytes(bytes(content))

    def total(mode: str) -> exca.graph.Node:
        upstream = Ramp(log=env.log, infra=env.infra(mode=mode)).make.node()
        return env.step("total").run.node(upstream)

    up = total("cached").upstream[0].uid
    with pytest.raises(UpstreamFailed) as info:
        exca.graph.run(total("cached"))
    assert "(UnpicklingError: invalid load key" in str(info.value)
    told = f"the payload of upstream {up} no longer decodes (changed outside exca"
    assert told in str(info.value) and store.UPSTREAM_DECODE_FIX in str(info.value)
    assert env.starts("ramp") == 1 and env.starts("total") == 0
    exca.graph.run(total("retry"))
    assert env.starts("ramp") == 2 and env.starts("total") == 1
    assert total("cached").result().startswith("total(array")


def _overwrite_payload(folder: Path | None) -> Path:
    """The largest payload file of a cache folder, bytes overwritten in its opcodes, its
    size unchanged (no stat tells)."""
    assert folder is not None
    payload = max((p for p in (folder / "data").iterdir() if p.is_file()), key=_size)
    content = bytearray(payload.read_bytes())
    content[2:66] = b"\xff" * 64
    payload.write_bytes(bytes(content))
    return payload


def _size(path: Path) -> int:
    return path.stat().st_size


def test_a_plan_never_removes_an_upstream_that_no_longer_decodes(env: Env) -> None:
    """plan, explain and status of a map whose items come from a task in mode retry whose
    payload no longer decodes removed that task's result (they read it for the item
    uids; a plan writes, deletes nor repairs nothing). They leave it; the plan says the
    run computes it again (a run then does, see below)."""

    def square(mode: str) -> exca.graph.Node:
        return env.square().apply.node(env.numbers(2000, mode=mode).make.node())

    exca.graph.run(square("cached"))
    payload = _overwrite_payload(env.numbers(2000).infra.uid_folder())
    plan = exca.graph.plan(square("retry"))
    exca.ops.explain(square("retry"))
    square("retry").status()
    assert payload.exists() and env.numbers(2000).infra.status() == "completed"
    entry = _by_uid(plan)[square("retry").upstream[0].uid]
    assert (entry.status, entry.action) == ("missing", "compute"), entry
    assert entry.reason == exca.graph.decisions.UNDECODABLE
    # (in mode cached: the run fails saying what computes it again)
    with pytest.raises(UpstreamFailed) as info:
        exca.graph.run(square("cached"))
    assert "no longer decodes" in str(info.value)
    assert store.UPSTREAM_DECODE_FIX in str(info.value)
    assert payload.exists() and env.starts("numbers2000") == 1


@pytest.mark.parametrize("map_mode", ["cached", "retry"])
def test_a_map_whose_upstream_in_retry_mode_no_longer_decodes_computes_it_again(
    env: Env, map_mode: str
) -> None:
    """A map taking its items from a task in mode retry whose payload was overwritten
    outside exca (no stat tells): every run failed (the items could not be read, so the
    task was never decided again), until a task read it or the user forced it; mode retry
    computes damaged payloads again. Now the run does: the task first, then the map, whose
    items were cached (not computed again); the plan said so beforehand."""

    def square(mode: str = "cached", map_mode: str = "cached") -> exca.graph.Node:
        return env.square(mode=map_mode).apply.node(env.numbers(2000, mode=mode).make.node())

    assert len(exca.graph.run(square()).runs) == 2
    assert env.starts("numbers2000") == 1 and env.starts("square1999") == 1
    _overwrite_payload(env.numbers(2000).infra.uid_folder())
    target = square("retry", map_mode)
    entries = _by_uid(exca.graph.plan(target))
    assert entries[target.upstream[0].uid].action == "compute"
    assert entries[target.uid].items == "items known at run time"
    exca.graph.run(target)
    assert env.starts("numbers2000") == 2 and env.starts("square1999") == 1
    assert square().result()[-1] == 1999**2
    assert {e.action for e in exca.graph.plan(square("retry", map_mode)).entries} == {
        "reuse",
        "skip",
    }


# what a value's own unpickling code raises (a version check, an external resource it
# reopens found empty...): the words pickle and numpy use for a payload cut short
_OWN_ERRORS: dict[str, tuple[type[Exception], str]] = {
    "unpickling": (pickle.UnpicklingError, "this build cannot read a v2 state"),
    "eof": (EOFError, "Ran out of input"),
    "value": (ValueError, "No data left in file"),
}


def _refuses(data: bytes, kind: str = "unpickling") -> tp.Any:
    error, message = _OWN_ERRORS[kind]
    raise error(message)


class Refused:
    """A value whose own unpickling raises (see _OWN_ERRORS)."""

    def __init__(self, kind: str = "unpickling") -> None:
        self.kind = kind

    def __reduce__(self) -> tp.Any:
        return (_refuses, (b"x" * 20_000, self.kind))  # (large: in a payload file)


class MakesRefused(pydantic.BaseModel):
    log: str
    kind: str = "unpickling"
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log",)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def make(self) -> Refused:
        append(self.log, {"name": "refused", "event": "start"})
        return Refused(self.kind)


@pytest.mark.parametrize("kind", list(_OWN_ERRORS))
@pytest.mark.parametrize("reader", ["task", "map"])
def test_a_reader_keeps_an_upstream_whose_own_unpickling_fails(
    env: Env, kind: str, reader: str
) -> None:
    """A good upstream result in mode retry whose value's own unpickling code raises
    pickle.UnpicklingError was removed by the node reading it, and computed again by each
    run; so was one raising EOFError('Ran out of input') or ValueError('No data left in
    file') (taken for a file cut short by their message alone), read by a task or by a map
    taking its items from it: only a stream that no longer parses, or a payload shorter
    than written, is damaged."""

    def make(mode: str = "cached") -> MakesRefused:
        return MakesRefused(log=env.log, kind=kind, infra=env.infra(mode=mode))

    def target() -> exca.graph.Node:
        upstream = make("retry").make.node()
        if reader == "map":
            return env.square().apply.node(upstream)
        return env.step("total").run.node(upstream)

    exca.graph.run(make().make.node())
    error, message = _OWN_ERRORS[kind]
    for _ in range(2):
        with pytest.raises(UpstreamFailed, match=message) as info:
            exca.graph.run(target())
        assert isinstance(info.value.__cause__, error)
        assert "no longer decodes" not in str(info.value)
    assert make().infra.status() == "completed"
    assert env.starts("refused") == 1 and env.starts("total") == 0


def test_a_reader_removes_only_the_damaged_entry_it_read(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node reading an upstream in mode retry whose payload no longer decodes removes it;
    a good result another process wrote meanwhile (between its read and its removal) was
    removed too (an unconditional delete). Now kept."""
    ramp = Ramp(log=env.log, infra=env.infra())
    ramp.make()
    _overwrite_payload(ramp.infra.uid_folder())
    original = store.drop_damaged

    def written_meanwhile(node: exca.graph.Node, error: BaseException) -> None:
        Ramp(log=env.log, infra=env.infra(mode="retry")).make()  # (another writer)
        original(node, error)

    monkeypatch.setattr(store, "drop_damaged", written_meanwhile)
    upstream = Ramp(log=env.log, infra=env.infra(mode="retry")).make.node()
    with contextlib.suppress(UpstreamFailed):  # (read before it was written again)
        exca.graph.run(env.step("total").run.node(upstream))
    assert env.starts("ramp") == 2  # (the first one, the other writer's)
    assert Ramp(log=env.log, infra=env.infra()).infra.status() == "completed"
    exca.graph.run(env.step("total").run.node(Ramp(log=env.log, infra=env.infra()).make.node()))
    assert env.starts("ramp") == 2 and env.starts("total") == 1


@pytest.mark.parametrize("how", ["drop_outcome", "drop_damaged_items"])
def test_a_removal_of_an_outdated_entry_keeps_the_one_written_right_after_its_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Removing an outdated outcome (a forced job's, or a damaged item in mode retry)
    checks that it is still where it was, then deletes the key: a result the replacing
    writer stored between that check and the deletion (the deletion's own re-read of the
    index) was deleted with it, as every copy of the key is. Only the outdated entry goes."""
    from exca.cachedict import CacheDict
    from exca.graph.node import TASK_KEY

    cache: CacheDict[str] = CacheDict(tmp_path)
    with cache.write():
        cache[TASK_KEY] = "old"
    entry = cache.entry(TASK_KEY)
    assert entry is not None
    outdated = (entry.file, entry.offset)
    writer: CacheDict[str] = CacheDict(tmp_path)  # (the replacing job's, in its process)
    refresh = CacheDict.refresh
    reads: list[int] = []

    def written_right_after_the_check(self: CacheDict[tp.Any]) -> None:
        if self is cache:
            reads.append(1)
            if len(reads) == 2:  # (the first read checks; the next one deletes)
                del writer[TASK_KEY]
                with writer.write():
                    writer[TASK_KEY] = "new"
        refresh(self)

    monkeypatch.setattr(CacheDict, "refresh", written_right_after_the_check)
    if how == "drop_outcome":
        assert not store.drop_outcome(cache, outdated)  # (the writer removed it)
    else:
        assert store._delete_if_unchanged(cache, {TASK_KEY: outdated}) == []
    monkeypatch.setattr(CacheDict, "refresh", refresh)
    assert len(reads) >= 2 and CacheDict(tmp_path)[TASK_KEY] == "new"


def test_the_removal_of_an_outdated_outcome_removes_its_racing_copies(tmp_path: Path) -> None:
    """An outdated outcome stored twice (two writers raced on it): removing it removes
    both copies (a copy left became the outcome again, the old result)."""
    from exca.cachedict import CacheDict
    from exca.graph.node import TASK_KEY

    def stored_twice() -> CacheDict[str]:
        first: CacheDict[str] = CacheDict(tmp_path)
        second: CacheDict[str] = CacheDict(tmp_path)
        assert TASK_KEY not in second  # (read before the first one writes)
        with first.write():
            first[TASK_KEY] = "old"
        with second.write():
            second[TASK_KEY] = "old, raced"
        cache: CacheDict[str] = CacheDict(tmp_path)
        assert len(cache.live_copies()) == 2
        return cache

    cache = stored_twice()
    assert store.drop_outcome(cache, store.outdated_outcome(cache, "force"))
    assert TASK_KEY not in CacheDict(tmp_path)
    cache = stored_twice()
    entry = cache.entry(TASK_KEY)
    assert entry is not None
    assert store._delete_if_unchanged(cache, {TASK_KEY: (entry.file, entry.offset)}) == [TASK_KEY]
    assert TASK_KEY not in CacheDict(tmp_path)


@pytest.mark.parametrize("when", ["drop_damaged", "drop_outcome"])
def test_a_reader_says_removed_only_when_it_removed(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, when: str
) -> None:
    """A node reading an upstream in mode retry whose payload no longer decodes, written
    again by another process between the read and the removal (before the reader looks
    at it again, or after it found it still damaged, right before removing it): nothing
    is removed (the good result is kept), but the warning and the error said "removed"
    (or, the first way, that mode retry would compute it in such a run). Now they say it
    was written again, kept; a damaged payload removed still says "removed"."""
    ramp = Ramp(log=env.log, infra=env.infra())
    ramp.make()
    _overwrite_payload(ramp.infra.uid_folder())
    original = getattr(store, when)

    def written_meanwhile(*args: tp.Any) -> tp.Any:
        Ramp(log=env.log, infra=env.infra(mode="force")).make()  # (another writer)
        return original(*args)

    monkeypatch.setattr(store, when, written_meanwhile)
    upstream = Ramp(log=env.log, infra=env.infra(mode="retry")).make.node()
    with caplog.at_level("WARNING", logger="exca"), pytest.raises(UpstreamFailed) as info:
        exca.graph.run(env.step("total").run.node(upstream))
    message = str(info.value)
    assert "removed" not in message.replace("nothing removed", ""), message
    assert "another process wrote that output again meanwhile (kept" in message, message
    assert "removed, to compute again" not in caplog.text, caplog.text
    assert env.starts("ramp") == 2 and Ramp(log=env.log, infra=env.infra()).infra.status() == (
        "completed"
    )
    # (damaged, nobody writing it meanwhile: removed, and said so; the run computes it)
    monkeypatch.setattr(store, when, original)
    _overwrite_payload(ramp.infra.uid_folder())
    caplog.clear()
    with caplog.at_level("WARNING", logger="exca"):
        exca.graph.run(env.step("total2").run.node(upstream))
    assert "removed, to compute again" in caplog.text, caplog.text
    assert env.starts("ramp") == 3 and env.starts("total2") == 1


class Sets(pydantic.BaseModel):
    """A map whose outputs are payload files (sets: pickled)."""

    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def apply(self, items: list[int]) -> tp.Iterator[set[int]]:
        for i in items:
            yield set(range(i, i + 500))


def test_a_reader_says_a_map_upstream_was_removed_when_it_was(env: Env) -> None:
    """A node reading a map in mode retry whose payloads no longer decode, whose items
    another process removed between the read and the removal: the reader's error said
    they were 'written again meanwhile (kept: nothing removed)' (any map upstream read
    as present). Now it says another process removed them."""
    Sets(infra=env.infra()).apply.node([1, 2, 3]).result()
    upstream = Sets(infra=env.infra(mode="retry")).apply.node([1, 2, 3])
    for payload in (Path(upstream.folder) / "data").iterdir():
        content = bytearray(payload.read_bytes())
        content[2:66] = b"\xff" * 64  # (in its opcodes, its size unchanged)
        payload.write_bytes(bytes(content))
    with pytest.raises(pickle.UnpicklingError) as info:
        exca.graph.worker.load_output(upstream)  # (what a reader does)
    other = exca.cachedict.CacheDict(upstream.folder)  # (another process)
    keys = other.keys()
    with other.write():
        for key in keys:
            del other[key]
    store.drop_damaged(upstream, info.value)
    assert store.payload_dropped(info.value) == "gone"
    message = store.unreadable_input(info.value)
    assert "another process removed it meanwhile" in message, message
    assert "written again" not in message, message


class LoggedSets(pydantic.BaseModel):
    """A map whose outputs are payload files (sets, or values whose own unpickling raises
    with ``refused``), one log line per computed item."""

    log: str
    refused: str = ""  # (a kind of _OWN_ERRORS)
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log",)
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def apply(self, items: list[int]) -> tp.Iterator[tp.Any]:
        for i in items:
            append(self.log, {"name": f"set{i}", "event": "start"})
            yield Refused(self.refused) if self.refused else set(range(i, i + 500))


def _smallest(values: tp.Any) -> str:
    return str(min(values))


class SetSizes(pydantic.BaseModel):
    """A map taking its items (sets) from another map: their sizes."""

    log: str
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log",)
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=_smallest)
    def apply(self, items: list[set[int]]) -> tp.Iterator[int]:
        for values in items:
            append(self.log, {"name": f"size{min(values)}", "event": "start"})
            yield len(values)


def _set_sizes(env: Env, mode: str = "cached", refused: str = "") -> exca.graph.Node:
    upstream = LoggedSets(log=env.log, refused=refused, infra=env.infra(mode=mode))
    return SetSizes(log=env.log, infra=env.infra()).apply.node(upstream.apply.node([1, 2, 3]))


@pytest.mark.parametrize("damage", ["overwritten", "cut short", "removed"])
def test_a_map_reading_a_map_in_retry_mode_whose_items_no_longer_decode(
    env: Env, damage: str
) -> None:
    """A map taking its items from a map in mode retry, an item of which no longer decodes
    (its payload overwritten, cut short or removed outside exca): every run failed (the
    items could not be read, so the upstream map was never decided again), as a map
    reading a task did. Now the run computes that item again first (removed only then),
    then the map below (its items known then); the plan says so and removes nothing."""
    exca.graph.run(_set_sizes(env))
    (payload,) = (Path(_set_sizes(env).upstream[0].folder) / "data").glob("2-*")
    content = payload.read_bytes()
    if damage == "overwritten":  # (in its opcodes, its size unchanged: no stat tells)
        payload.write_bytes(content[:2] + b"\xff" * 64 + content[66:])
    elif damage == "cut short":
        payload.write_bytes(content[: len(content) // 2])
    else:
        payload.unlink()
    damaged = payload.read_bytes() if payload.exists() else None
    target = _set_sizes(env, "retry")
    entries = _by_uid(exca.graph.plan(target))
    upstream = entries[target.upstream[0].uid]
    assert upstream.action == "compute", upstream
    assert "1 whose payload file was removed or damaged" in upstream.reason, upstream
    assert entries[target.uid].items == "items known at run time"
    assert (payload.read_bytes() if payload.exists() else None) == damaged  # (plan: kept)
    exca.graph.run(target)
    counts = [started(env.log).count(name) for name in ("set1", "set2", "set3")]
    assert counts == [1, 2, 1]  # (the damaged item only, once more)
    assert [started(env.log).count(f"size{i}") for i in (1, 2, 3)] == [1, 1, 1]
    assert _set_sizes(env).result() == [500, 500, 500]
    assert {e.action for e in exca.graph.plan(_set_sizes(env, "retry")).entries} == {
        "reuse",
        "skip",
    }


def test_a_map_reading_a_map_keeps_items_whose_own_unpickling_fails(env: Env) -> None:
    """Items of an upstream map in mode retry whose own unpickling code raises (not a
    damaged payload): a map reading them fails, and they are never removed."""
    target = _set_sizes(env, refused="unpickling")
    exca.graph.run(target.upstream[0])
    payloads = sorted((Path(target.upstream[0].folder) / "data").iterdir())
    assert len(payloads) == 3
    for _ in range(2):
        with pytest.raises(UpstreamFailed, match="this build cannot read"):
            exca.graph.run(_set_sizes(env, "retry", refused="unpickling"))
    assert started(env.log) == ["set1", "set2", "set3"]
    assert sorted((Path(target.upstream[0].folder) / "data").iterdir()) == payloads


def test_a_map_reading_a_map_removes_only_the_damaged_items_it_read(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An item of an upstream map in mode retry that no longer decodes, written again by
    another process before the run removes it: the good item is kept (not computed again)."""
    exca.graph.run(_set_sizes(env))
    _overwrite_payload(Path(_set_sizes(env).upstream[0].folder))
    original = store.drop_damaged

    def written_meanwhile(node: exca.graph.Node, error: BaseException) -> None:
        LoggedSets(log=env.log, infra=env.infra(mode="force")).apply.node([1, 2, 3]).result()
        original(node, error)

    monkeypatch.setattr(store, "drop_damaged", written_meanwhile)
    exca.graph.run(_set_sizes(env, "retry"))
    assert len(started(env.log)) == 3 + 3 + 3  # (computed, sizes, the other writer's force)
    assert _set_sizes(env).result() == [500, 500, 500]


def test_check_upstream_says_whose_mode_retries_an_upstream_error(env: Env) -> None:
    """What a detached array element raises when its upstream holds an error said
    "mode='retry' computes it again" (the reader's own mode retries nothing upstream)."""
    upstream = env.step("up", fail_flag=str(env.tmp / "fail")).run.node()
    (env.tmp / "fail").touch()
    with pytest.raises(Exception, match="fails on purpose"):
        exca.graph.run(upstream)
    with pytest.raises(UpstreamFailed) as info:
        exca.graph.worker.check_upstream(env.step("down").run.node(upstream))
    told = "; mode='retry' on that upstream config's own infra computes it again"
    assert told in str(info.value)


def test_an_upstream_result_of_a_class_renamed_since_is_named(tmp_path: Path) -> None:
    """A pipeline input that cannot be loaded (its class renamed since): the node reading
    it said only "an input could not be read (AttributeError: Can't get attribute ...)",
    naming neither the upstream node nor what to do, which its eager call says."""
    module = tmp_path / "renamed_mod.py"
    source = textwrap.dedent(
        """
        import dataclasses, sys, pydantic, exca

        @dataclasses.dataclass
        class {name}:
            value: float

        class Prep(pydantic.BaseModel):
            infra: exca.TaskInfra = exca.TaskInfra(version="1")

            @infra.apply
            def run(self) -> {name}:
                return {name}(1.5)

        class Use(pydantic.BaseModel):
            k: int = 1
            infra: exca.TaskInfra = exca.TaskInfra(version="1")

            @infra.apply
            def run(self, r) -> float:
                return r.value * self.k

        if __name__ == "__main__":
            infra = {{"folder": sys.argv[1]}}
            prep = Prep(infra=infra).run.node()
            try:
                print(Use(k=int(sys.argv[2]), infra=infra).run.node(prep).result())
            except Exception as error:
                print(type(error).__name__, error)
                print("uid:", prep.uid)
        """
    )

    def run(name: str, k: int) -> str:
        module.write_text(source.format(name=name))
        command = [sys.executable, str(module), str(tmp_path / "cache"), str(k)]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    assert run("Stats", 1).strip() == "1.5"
    out, uid = run("Stats2", 2).split("\nuid: ")
    assert out.startswith("UpstreamFailed") and "Can't get attribute 'Stats'" in out
    assert f"; upstream {uid.strip()} holds an object whose class cannot be found now" in out
    assert "compute the result again with mode='force'" in out


def test_a_map_fed_by_an_array_output_maps_its_elements(env: Env) -> None:
    """A map whose items are an upstream task's numpy array: planning it failed with
    "The truth value of an array ... is ambiguous" (items were tested with `or`)."""
    squares = env.square().apply.node(Ramp(n=3, log=env.log, infra=env.infra()).make.node())
    (entry,) = [e for e in exca.graph.plan(squares).entries if e.kind == "map"]
    assert entry.action == "compute", entry.reason
    exca.graph.run(squares)
    assert list(squares.result()) == [0.0, 1.0, 4.0]


def _weights_loaded(log: str, blob: bytes) -> Weights:
    append(log, {"name": "weights", "event": "load"})
    return Weights(log, blob)


class Weights:
    """A result that logs each time it is unpickled (loaded from the cache)."""

    def __init__(self, log: str, blob: bytes) -> None:
        self.log, self.blob = log, blob

    def __reduce__(self) -> tuple[tp.Any, ...]:
        return _weights_loaded, (self.log, self.blob)


class Trainer(pydantic.BaseModel):
    log: str
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log",)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> Weights:
        append(self.log, {"name": "fit", "event": "start"})
        return Weights(self.log, os.urandom(200_000))  # (in a payload file, not inline)


def test_a_plan_in_retry_mode_looks_at_result_files_without_loading_them(env: Env) -> None:
    """A plan with a task in mode retry loaded its cached result, to learn whether it
    could be read (seconds for big results, for every config of a sweep). It now checks
    that the result's file is there with the size written; a file cut short outside exca
    is found so (and computed again by the run), still without loading anything."""
    Trainer(log=env.log, infra=env.infra()).fit()
    loads = len(events(env.log, "load"))  # (the call returns the value as read back)

    def retried() -> exca.graph.Node:
        return Trainer(log=env.log, infra=env.infra(mode="retry")).fit.node()

    def entry_of_retried() -> tp.Any:
        node = retried()
        return _by_uid(exca.graph.plan(node))[node.uid]

    assert entry_of_retried().status == "cached"
    assert len(events(env.log, "load")) == loads
    folder = Trainer(log=env.log, infra=env.infra()).infra.uid_folder()
    assert folder is not None
    (payload,) = [p for p in (folder / "data").iterdir() if p.is_file()]
    with payload.open("r+b") as handle:
        handle.truncate(payload.stat().st_size - 10)
    entry = entry_of_retried()
    assert (entry.status, entry.action) == ("missing", "compute")
    assert "cannot be read" in entry.reason and len(events(env.log, "load")) == loads
    exca.graph.run(retried())
    assert env.starts("fit") == 2
    assert len(Trainer(log=env.log, infra=env.infra()).fit().blob) == 200_000


class Shared(pydantic.BaseModel):
    """A no-input task that blocks while the file ``block_flag`` exists."""

    block_flag: str
    log: str
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log",)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def make(self) -> str:
        append(self.log, {"name": "shared", "event": "start"})
        while Path(self.block_flag).exists():
            time.sleep(0.05)
        append(self.log, {"name": "shared", "event": "end"})
        return "shared"


@pytest.mark.timeout(120)
def test_a_job_whose_upstream_another_process_forces_waits_for_it(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node's job starts (its run found the upstream done) while another process forces
    that upstream on a cluster: the old result was dropped when the forcing job went out.
    The job failed with "upstream ... is missing" (an upstream failure that did not
    happen, cached); it now waits for the forcing job and computes from its result (a
    probe: two researchers, one forcing a shared training)."""
    from exca.graph.worker import Unit, run_unit

    block = str(env.tmp / "block")
    waits = waits_for_others(monkeypatch)
    assert Shared(block_flag=block, log=env.log, infra=env.infra()).make() == "shared"
    down = env.step("down").run.node(
        Shared(block_flag=block, log=env.log, infra=env.infra()).make.node()
    )
    Path(block).touch()  # (the forced recomputation blocks until it goes)
    forcing = Shared(block_flag=block, log=env.log, infra=env.infra(cluster="local", mode="force"))
    job = forcing.infra.job()
    outcome: list[tp.Any] = []
    # what the job of `down` does when it starts (the run that submitted it decided before)
    thread = threading.Thread(target=lambda: outcome.append(run_unit(Unit(down))))
    thread.start()
    wait_for(lambda: env.starts("shared") == 2)  # (the forcing job computes)
    waits.until(thread)  # (for the forcing job)
    assert thread.is_alive() and env.starts("down") == 0  # waiting, not failed
    Path(block).unlink()
    assert job.result() == "shared"
    thread.join(timeout=60)
    assert not thread.is_alive() and outcome and outcome[0].computed == 1
    assert down.result() == "down(shared,None)"
    names = [e["name"] for e in events(env.log) if e["event"] in ("start", "end")]
    assert names[-4:] == ["shared", "shared", "down", "down"]  # (after the forced one)


def test_force_applies_to_each_input_of_an_instance_once(env: Env) -> None:
    """A task with inputs has a node per input values: mode=force recomputes each of them
    once per instance (it forced only the first one called)."""
    cached = env.step("s")
    assert [cached.run(1), cached.run(2)] == ["s(1,None)", "s(2,None)"]
    forced = env.step("s", infra={"mode": "force"})
    assert forced.run(1) == "s(1,None)"
    assert forced.run(1) == "s(1,None)"  # once per instance
    assert forced.run(2) == "s(2,None)"
    assert [e["a"] for e in events(env.log, "start")] == [1, 2, 1, 2]


def test_force_applies_to_each_item_of_a_map_instance_once_in_graph_runs(env: Env) -> None:
    """As eager calls do: a second node of a forced map instance with other items forces
    them (its plan said cached, and they were not recomputed)."""
    env.square().apply([1, 2, 3, 4])
    forced = env.square(mode="force")
    exca.graph.run(forced.apply.node([1, 2]))
    second = forced.apply.node([2, 3])
    assert _by_uid(exca.graph.plan(second))[second.uid].status == "forced"
    exca.graph.run(second)
    exca.graph.run(forced.apply.node([1, 3]))  # all forced once already: reused
    assert started(env.log) == [f"square{i}" for i in (1, 2, 3, 4, 1, 2, 3)]
    # items from an upstream node (known at run time): the ones not forced yet
    env.square().apply([0])
    exca.graph.run(forced.apply.node(env.numbers(count=2).make.node()))  # items 0 and 1
    assert started(env.log)[8:] == ["numbers2", "square0"]  # (7: square0 computed cached)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", [None, "threadpool", "processpool", "local"])
@pytest.mark.parametrize("mode", ["force", "cached"])
def test_two_map_nodes_of_one_config_with_shared_items_compute_them_once(
    env: Env, cluster: str | None, mode: str
) -> None:
    """Two map nodes of one config on overlapping items, in one graph run: under
    mode=force the shared items were computed twice (once per node; the claims only
    keep the two apart in time). Each output records the run that forced it."""
    if mode == "force":
        env.square().apply([1, 2, 3, 4, 5, 6, 7, 8])  # (cached before, forced below)
    square = env.square(mode=mode, cluster=cluster, max_jobs=2)
    first, second = square.apply.node([1, 2, 3, 4, 5, 6]), square.apply.node([3, 4, 5, 6, 7, 8])
    before = len(started(env.log))
    exca.graph.run(first, second)
    assert sorted(started(env.log)[before:]) == sorted(f"square{i}" for i in range(1, 9))
    assert first.result() == [1, 4, 9, 16, 25, 36] and second.result() == [9, 16, 25, 36, 49, 64]
    # a later run forces them again (once)
    if mode == "force":
        exca.graph.run(env.square(mode="force", cluster=cluster, max_jobs=2).apply.node([2, 3]))
        assert sorted(started(env.log)[before + 8 :]) == ["square2", "square3"]


def test_failure_stops_only_its_dependents_then_retry(env: Env) -> None:
    flag = env.tmp / "fail"
    flag.touch()

    def branches(mode: str = "cached") -> list[exca.graph.Node]:
        x = env.step("x", fail_flag=str(flag), infra={"mode": mode}).run.node()
        y = env.step("y").run.node(x)
        z = env.step("z").run.node(y, 1)
        p = env.step("p").run.node()
        q = env.step("q").run.node(p)
        return [x, y, z, p, q]

    x, y, z, p, q = branches()
    with pytest.raises(NodeFailures) as info:
        exca.graph.run(z, q)
    failures = info.value.failures
    assert set(failures) == {x.uid, y.uid, z.uid}
    assert isinstance(failures[x.uid], ValueError)
    assert "fails on purpose" in str(failures[x.uid])
    for uid in (x.uid, y.uid, z.uid):
        assert uid in str(info.value)
    assert sorted(started(env.log)) == ["p", "q", "x"]  # y and z never ran
    assert q.status() == "completed" and p.status() == "completed"
    assert q.result() == "q(p(None,None),None)"
    assert x.status() == "failed"
    assert y.status() == "not submitted" and z.status() == "not submitted"
    # cached mode: the cached error is raised again, nothing runs
    with pytest.raises(NodeFailures) as info:
        exca.graph.run(z, q)
    assert set(info.value.failures) == {x.uid, y.uid, z.uid}
    assert len(started(env.log)) == 3
    plan = _by_uid(exca.graph.plan(z, q))
    assert plan[x.uid].status == "cached error" and plan[q.uid].status == "cached"
    # fixed, and retried: only the failed nodes are computed
    flag.unlink()
    x, y, z, p, q = branches("retry")
    exca.graph.run(z, q)
    assert sorted(started(env.log)[3:]) == ["x", "y", "z"]
    assert z.result() == "z(y(x(None,None),None),1)"
    assert env.starts("p") == 1 and env.starts("q") == 1


def test_a_node_below_several_failures_names_them_all(env: Env) -> None:
    """An aggregation over six evaluations, two of which failed, said that it was not
    computed because of the first one only (in the run's error, and in the plan of a run
    reading the cached errors): both are named; past five, the others are counted (a
    probe)."""
    flag = env.tmp / "fail"
    flag.touch()

    def evaluations(failing: tp.Collection[int], count: int = 6, name: str = "eval") -> dict:
        return {
            f"e{i}": env.step(
                f"{name}{i}", **({"fail_flag": str(flag)} if i in failing else {})
            ).run.node()
            for i in range(count)
        }

    evals = evaluations((1, 4))
    aggregate = env.step("aggregate").run.node(evals)
    failed = [evals["e1"].uid, evals["e4"].uid]
    with pytest.raises(NodeFailures) as info:
        exca.graph.run(aggregate)
    error = info.value.failures[aggregate.uid]
    assert isinstance(error, UpstreamFailed)
    assert f"2 upstream nodes failed: {failed[0]}, {failed[1]}" in str(error), error
    # again: the errors are cached, the plan fails it before anything runs
    reason = _by_uid(exca.graph.plan(aggregate))[aggregate.uid].reason
    assert f"upstream {failed[0]} fails (" in reason, reason
    assert f"; also upstream {failed[1]} fails" in reason, reason
    with pytest.raises(NodeFailures) as info:
        exca.graph.run(aggregate)
    assert failed[1] in str(info.value.failures[aggregate.uid])
    # many: five named, the others counted
    evals = evaluations(range(1, 8), count=8, name="other")
    with pytest.raises(NodeFailures) as info:
        exca.graph.run(env.step("many").run.node(evals))
    said = str(info.value.failures[env.step("many").run.node(evals).uid])
    assert "7 upstream nodes failed: " in said and said.endswith(" and 2 more"), said
    assert evals["e5"].uid in said and evals["e6"].uid not in said, said


def test_a_node_not_computed_names_the_inputs_its_failed_upstream_feeds(env: Env) -> None:
    """An aggregation of a dict of evaluation maps, each fed by one training, one of which
    failed: the aggregation's error named the failed map by its uid, ".../items-<digest>",
    like every other, and so did the map's: which entry of the sweep it was could not be
    told. Each says which of its inputs the failed node feeds (a probe)."""
    flag = env.tmp / "fail"
    flag.touch()
    trainings = [env.numbers(count=n).make.node() for n in (2, 3)]
    bad = env.step("bad", fail_flag=str(flag)).run.node()
    evals = {f"n{i}": env.square().apply.node(t) for i, t in enumerate(trainings)}
    aggregate = env.step("aggregate").run.node({**evals, "bad": bad}, b=bad)

    class Listing(pydantic.BaseModel):
        infra: exca.TaskInfra = exca.TaskInfra(version="1")

        @infra.apply
        def make(self) -> list[int]:
            raise ValueError("no list")

    mapped = env.square().apply.node(Listing(infra=env.infra()).make.node())
    with pytest.raises(NodeFailures) as info:
        exca.graph.run(aggregate)
    said = str(info.value.failures[aggregate.uid])
    assert f"was not computed (its inputs a['bad'], b): upstream {bad.uid} failed" in said, said
    # a map whose items come from a failed node
    source = tp.cast(exca.graph.Node, mapped.items)
    with pytest.raises(NodeFailures) as info:
        exca.graph.run(mapped)
    said = str(info.value.failures[mapped.uid])
    assert f"was not computed (its items): upstream {source.uid} failed" in said, said


class FlakySquare(pydantic.BaseModel):
    """A map whose item 2 raises while the file ``fail_flag`` exists."""

    log: str
    fail_flag: str
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log", "fail_flag")
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def apply(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            append(self.log, {"name": f"square{item}", "event": "start", "item": item})
            if item == 2 and Path(self.fail_flag).exists():
                raise ValueError("item 2 fails on purpose")
            yield item**2


def test_a_failed_map_item_then_retry(env: Env) -> None:
    """A task fed by a map with a failed item did not fail itself: once the item is
    fixed and retried, the task is computed (it was cached as its own error, for good)."""
    flag = env.tmp / "fail"
    flag.touch()

    def target(mode: str = "cached") -> exca.graph.Node:
        infra = env.infra(mode=mode)
        squares = FlakySquare(log=env.log, fail_flag=str(flag), infra=infra).apply.node([1, 2, 3])
        return env.step("total").run.node(squares)

    with pytest.raises(UpstreamFailed, match="item 2 fails on purpose"):
        target().result()
    with pytest.raises(UpstreamFailed, match="item 2 fails on purpose"):
        target().result()  # cached mode: the item's error is read again, nothing runs
    # (the failed item is computed once: its method read no later item)
    assert started(env.log) == ["square1", "square2", "square3"]
    entry = _by_uid(exca.graph.plan(target()))[target().uid]  # the plan says so
    assert entry.action == "fail" and "1 cached item error(s)" in entry.reason
    flag.unlink()
    assert target("retry").result() == "total([1;4;9],None)"
    assert started(env.log)[3:] == ["square2", "total"]  # only the failed item, and the task
    assert target().result() == "total([1;4;9],None)"
    assert len(started(env.log)) == 5


def test_a_map_item_error_below_is_told_the_same_on_every_run(env: Env) -> None:
    """A task below a map whose item fails: the run that computed the map named the map
    and said that mode='retry' on it recomputes the item; the next run (the error found
    at plan time) said neither (a probe). Every run, the plan and a job reading the map
    now say the same, naming the failed item."""
    from exca.graph.worker import Unit, run_unit

    flag = env.tmp / "fail"
    flag.touch()
    squares = FlakySquare(log=env.log, fail_flag=str(flag), infra=env.infra()).apply.node([1, 2])
    target = env.step("total").run.node(squares)
    told = f"upstream {squares.uid} has 1 cached item error(s) ('2'): mode='retry' on it "
    told += "recomputes them"
    expected = f"{target.uid} did not run: an input could not be read (ValueError: item 2 "
    expected += f"fails on purpose); {told}"
    for _ in range(2):
        with pytest.raises(UpstreamFailed) as info:
            exca.graph.run(target)
        assert str(info.value) == expected
    assert _by_uid(exca.graph.plan(target))[target.uid].reason == told
    with pytest.raises(UpstreamFailed) as info:  # (as a job computing it reads its inputs)
        run_unit(Unit(target))
    assert str(info.value) == expected


def test_the_plan_of_a_map_with_a_cached_item_error_and_a_new_item(env: Env) -> None:
    """A new item made the plan forget the map's cached item error: it said "compute 1/3
    missing" and the task below "compute"; the run then failed reading that error."""
    flag = env.tmp / "fail"
    flag.touch()

    def target(items: list[int]) -> exca.graph.Node:
        squares = FlakySquare(log=env.log, fail_flag=str(flag), infra=env.infra())
        return env.step("total").run.node(squares.apply.node(items))

    with pytest.raises(UpstreamFailed, match="item 2 fails on purpose"):
        target([1, 2]).result()
    node = target([1, 2, 3])
    entries = _by_uid(exca.graph.plan(node))
    (square,) = [e for uid, e in entries.items() if "FlakySquare" in uid]
    assert square.action == "compute" and "1/3 missing" in square.reason
    assert "1 cached item error(s) (mode='retry' recomputes them)" in square.reason
    entry = entries[node.uid]
    assert entry.action == "fail" and "1 cached item error(s)" in entry.reason
    with pytest.raises(UpstreamFailed, match="item 2 fails on purpose"):
        node.result()
    assert started(env.log) == ["square1", "square2", "square3"]  # (3 computed)
    assert "total" not in started(env.log)


@pytest.mark.timeout(120)
def test_no_job_is_sent_below_a_map_that_just_failed_items(env: Env) -> None:
    """The map computes in this run and caches an item error: the tasks reading its
    outputs are not sent as jobs (each sat in the queue, then failed on reading them)."""
    flag = env.tmp / "fail"
    flag.touch()
    squares = FlakySquare(log=env.log, fail_flag=str(flag), infra=env.infra()).apply.node([1, 2])
    totals = [env.step(f"total{k}", infra={"cluster": "local"}).run.node(squares) for k in range(2)]
    with pytest.raises(NodeFailures) as info:
        exca.graph.run(*totals)
    assert not list(env.folder.glob("*Step*/**/jobs/*.json"))  # no job submitted
    assert "total0" not in started(env.log)
    assert str(info.value).count("UpstreamFailed") == 2
    assert "item 2 fails on purpose" in str(info.value)
    assert "1 cached item error(s) ('2'): mode='retry' on it recomputes them" in str(info.value)


def test_running_a_map_target_holding_cached_item_errors_raises(env: Env) -> None:
    """run() of a map whose item failed raises the item's error, the second time too (it
    is read back from the cache, nothing computes), as the map's own call does."""
    flag = env.tmp / "fail"
    flag.touch()

    def squares() -> exca.graph.Node:
        return FlakySquare(log=env.log, fail_flag=str(flag), infra=env.infra()).apply.node([1, 2])

    for _ in range(2):
        with pytest.raises(ValueError, match="item 2 fails on purpose") as info:
            exca.graph.run(squares())
        assert "'2'" in str(info.value) + "".join(getattr(info.value, "__notes__", []))
    # (the failed item is computed once: its method read no later item)
    assert started(env.log) == ["square1", "square2"]
    other = FlakySquare(log=env.log, fail_flag=str(flag), infra=env.infra()).apply.node([3])
    with pytest.raises(ValueError, match="item 2 fails on purpose"):
        exca.graph.run(squares(), other)  # (the other targets are computed all the same)
    assert started(env.log)[2:] == ["square3"]
    # the plan says so; with another failing target, both failures are named
    (entry,) = exca.graph.plan(squares()).entries
    assert (entry.status, entry.action) == ("cached error", "fail")
    broken = env.step("broken", fail_flag=str(flag)).run.node()
    with pytest.raises(NodeFailures) as info:
        exca.graph.run(squares(), broken)
    assert set(info.value.failures) == {squares().uid, broken.uid}  # (the map was left out)
    # a refusal before anything ran is raised as it is (it was replaced by the item error)
    unsaved = Step(name="unsaved", log=env.log, infra={"keep_in_ram": True}).run.node()
    local = env.step("local", infra={"cluster": "local"}).run.node(unsaved)
    with pytest.raises(ValueError, match="Cannot submit"):
        exca.graph.run(squares(), local)


def test_a_map_fed_by_a_map_with_a_failed_item(env: Env) -> None:
    """The downstream map did not fail itself: its items could not be read. It was blamed
    with the upstream item's own error (a bare ValueError under its name)."""
    flag = env.tmp / "fail"
    flag.touch()
    squares = FlakySquare(log=env.log, fail_flag=str(flag), infra=env.infra()).apply.node([1, 2])
    cubes = env.square(power=3).apply.node(squares)
    with pytest.raises(NodeFailures) as info:
        exca.graph.run(env.step("total").run.node(cubes))
    error = info.value.failures[cubes.uid]
    assert isinstance(error, UpstreamFailed) and squares.uid in str(error)
    assert "ValueError: item 2 fails on purpose" in str(error)
    with pytest.raises(UpstreamFailed, match="item 2 fails on purpose"):
        cubes.result()
    assert env.starts("square1") == 1 and "total" not in started(env.log)


def test_a_map_retried_by_another_instance_of_its_config_is_read_as_retried(env: Env) -> None:
    """Two instances of one map config hold their own view of its folder: once one of
    them retried a failed item, the other reads the new value (in a graph where both
    appear, and later), not the error its view had read."""
    flag = env.tmp / "fail"
    flag.touch()

    def squares(mode: str = "cached") -> exca.graph.Node:
        infra = env.infra(mode=mode)
        return FlakySquare(log=env.log, fail_flag=str(flag), infra=infra).apply.node([1, 2])

    def graph(mode: str = "cached") -> list[exca.graph.Node]:
        first, second = squares(mode), squares(mode)  # (one node, two instances)
        return [first, env.square(power=3, mode=mode).apply.node(second)]

    with pytest.raises(NodeFailures):
        exca.graph.run(*graph())
    old = squares()
    with pytest.raises(ValueError, match="item 2 fails on purpose"):
        old.result()  # (its view holds the error)
    flag.unlink()
    retried, cubes = graph("retry")
    exca.graph.run(retried, cubes)
    assert list(cubes.result()) == [1, 64]
    assert env.starts("square2") == 2  # (once at the first run, then retried)
    # the long-lived instance sees the retry: its plan, its result
    assert exca.graph.plan(old).entries[0].status == "cached"
    assert list(old.result()) == [1, 4]


def test_read_only_fails_before_anything_runs(env: Env) -> None:
    source = env.step("source", infra={"mode": "read-only"}).run.node()
    child = env.step("child").run.node(source)
    plan = _by_uid(exca.graph.plan(child))
    assert (plan[source.uid].status, plan[source.uid].action) == ("missing", "fail")
    assert plan[source.uid].reason == "read-only and missing"
    assert plan[child.uid].action == "fail" and source.uid in plan[child.uid].reason
    with pytest.raises(NodeFailures) as info:
        exca.graph.run(child)
    assert set(info.value.failures) == {source.uid, child.uid}
    assert "read-only" in str(info.value.failures[source.uid])
    assert events(env.log) == []
    with pytest.raises(RuntimeError, match="read-only"):
        child.result()
    assert events(env.log) == [] and not child.folder.exists()  # type: ignore[union-attr]


def test_read_only_is_not_recomputed_below_a_forced_node(env: Env) -> None:
    """read-only never computes: below a forced upstream, what it has cached is reused
    (plan and run agree); a map too."""
    source = env.step("source").run.node()
    child = env.step("child").run.node(source)
    squares = env.square().apply.node(env.numbers(count=3).make.node())
    exca.graph.run(child, squares)
    before = started(env.log)
    forced = env.step("source", infra={"mode": "force"}).run.node()
    reader = env.step("child", infra={"mode": "read-only"}).run.node(forced)
    numbers = env.numbers(count=3, mode="force").make.node()
    map_reader = env.square(mode="read-only").apply.node(numbers)
    plan = _by_uid(exca.graph.plan(reader, map_reader))
    assert (plan[reader.uid].status, plan[reader.uid].action) == ("cached", "reuse")
    assert reader.result() == "child(source(None,None),None)"
    assert list(map_reader.result()) == [0, 1, 4]
    assert started(env.log) == [*before, "numbers3"]  # (the map's items come from it)
    # below the read-only node, nothing is forced either (its input did not change)
    below = env.step("below").run.node(child)
    below.result()
    before = started(env.log)
    forced = env.step("source", infra={"mode": "force"}).run.node()
    reader = env.step("child", infra={"mode": "read-only"}).run.node(forced)
    below = env.step("below").run.node(reader)
    for _ in range(2):
        exca.graph.run(below)
        assert started(env.log) == before


def test_read_only_map_fed_by_a_node_not_computed_yet(env: Env) -> None:
    """Its items are known once its upstream ran (in its own mode); then a missing item is
    a clear read-only error (not 'the worker ended without writing it'), and items all
    cached are read."""
    source = env.numbers(count=3).make.node()
    squares = env.square(mode="read-only").apply.node(source)
    plan = exca.graph.plan(squares)
    entry = _by_uid(plan)[squares.uid]  # checked, never computed: no submission
    assert (entry.status, entry.action, entry.array) == ("missing", "check", None)
    assert [a.nodes for a in plan.arrays] == [[source.uid]]
    with pytest.raises(RuntimeError, match=r"read-only and 3/3 items missing"):
        exca.graph.run(squares)
    assert started(env.log) == ["numbers3"]
    env.square().apply([0, 1, 2])  # the items, cached by another config instance
    source.clear()
    assert list(
        env.square(mode="read-only").apply.node(env.numbers(count=3).make.node()).result()
    ) == [0, 1, 4]


class Records(pydantic.BaseModel):
    """Records of which one lacks the "name" that the map below names items by."""

    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def make(self) -> list[dict[str, str]]:
        return [{"name": "a"}, {"nom": "b"}]


class ByName(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=lambda record: record["name"])
    def apply(self, records: list[dict[str, str]]) -> tp.Iterator[str]:
        for record in records:
            yield record["name"].upper()


@pytest.mark.parametrize("cached_upstream", [False, True])
def test_item_uid_failing_on_upstream_items_fails_that_node_only(
    env: Env, cached_upstream: bool
) -> None:
    records = Records(infra=env.infra())
    if cached_upstream:
        records.make()  # items known at plan time
    by_name = ByName(infra=env.infra()).apply.node(records.make.node())
    other = env.step("other").run.node()
    with pytest.raises(KeyError, match=r"item_uid .* failed on item \{'nom': 'b'\}"):
        exca.graph.run(by_name, other)
    assert other.status() == "completed"  # the independent branch ran


def test_blocked_nodes_name_the_root_failure_and_repeated_inputs_are_one_edge(
    env: Env,
) -> None:
    source = env.step("source", infra={"mode": "read-only"}).run.node()
    child = env.step("child").run.node(source)
    grandchild = env.step("grandchild").run.node([child, child])
    plan = exca.graph.plan(grandchild)
    reasons = {e.uid: e.reason for e in plan.entries}
    expected = f"upstream {source.uid} fails (read-only and missing)"
    assert reasons[child.uid] == reasons[grandchild.uid] == expected  # not nested
    assert _by_uid(plan)[grandchild.uid].upstream == [child.uid]
    assert plan.to_mermaid().count("-->") == 2


def test_read_only_missing_stops_the_whole_run(env: Env) -> None:
    readonly = env.step("ro", infra={"mode": "read-only"}).run.node()
    other = env.step("other").run.node()
    with pytest.raises(RuntimeError, match="read-only"):
        exca.graph.run(readonly, other)
    assert events(env.log) == []


@pytest.mark.timeout(120)
def test_independent_branches_run_concurrently_on_local(env: Env) -> None:
    """Each branch's first node waits for the other's to have started: they finish only if
    they run at the same time (the waits are bounded: a sequential run fails)."""
    sig = [str(env.tmp / f"started-{i}") for i in range(2)]
    roots = [
        env.step(
            f"root{i}", signal_file=sig[i], partner=sig[1 - i], infra={"cluster": "local"}
        ).run.node()
        for i in range(2)
    ]
    leaves = [env.step(f"leaf{i}", infra={"cluster": "local"}).run.node(roots[i]) for i in range(2)]
    exca.graph.run(*leaves)
    assert [leaf.result() for leaf in leaves] == [
        f"leaf{i}(root{i}(None,None),None)" for i in range(2)
    ]
    lines = events(env.log)
    start = {e["name"]: e["t"] for e in lines if e["event"] == "start"}
    end = {e["name"]: e["t"] for e in lines if e["event"] == "end"}
    assert start["root0"] < end["root1"] and start["root1"] < end["root0"]  # overlap
    assert end["root0"] <= start["leaf0"] and end["root1"] <= start["leaf1"]
    pids = {e["name"]: e["pid"] for e in lines if e["event"] == "start"}
    assert pids["root0"] != pids["root1"] and os.getpid() not in pids.values()


@pytest.mark.timeout(120)
def test_detached_run_without_slurm_starts_a_wave_together(env: Env) -> None:
    """wait=False without Slurm runs the work here, but a wave's independent local jobs
    run at the same time (each waits for the other to start: one at a time would fail)."""
    sig = [str(env.tmp / f"started-{i}") for i in range(2)]
    nodes = [
        env.step(
            f"w{i}", signal_file=sig[i], partner=sig[1 - i], infra={"cluster": "local"}
        ).run.node()
        for i in range(2)
    ]
    exca.graph.run(*nodes, wait=False)
    assert [n.result() for n in nodes] == ["w0(None,None)", "w1(None,None)"]


def test_detached_run_raises_what_failed_here(env: Env) -> None:
    """wait=False computes cluster=None work here: its failure is raised (as a waiting
    run raises it), the first time and, cached, the next ones; the rest still runs."""
    flag = env.tmp / "fail"
    flag.touch()
    broken = env.step("broken", fail_flag=str(flag)).run.node()
    fine = env.step("fine").run.node()
    for _ in range(2):
        with pytest.raises(ValueError, match="broken fails on purpose"):
            exca.graph.run(broken, fine, wait=False)
    assert env.starts("broken") == 1 and fine.result() == "fine(None,None)"
    # below what fails during the run: not run (as when waiting)
    below = env.step("below").run.node(env.step("new", fail_flag=str(flag)).run.node())
    with pytest.raises(NodeFailures, match=r"upstream .* failed") as info:
        exca.graph.run(below, wait=False)
    assert env.starts("new") == 1 and env.starts("below") == 0
    assert isinstance(info.value.failures[below.uid], UpstreamFailed)  # (not its own)
    assert below.status() == "not submitted"


@pytest.mark.timeout(120)
def test_detached_run_below_a_running_local_job_is_refused(env: Env) -> None:
    """Only Slurm can start work after a job: below a local job still running, a
    detached run raises (it ran the downstream node at once, which failed)."""
    block = env.tmp / "block"
    block.touch()
    upstream = env.step("up", block_flag=str(block), infra={"cluster": "local"}).run.node()
    thread = threading.Thread(target=exca.graph.run, args=(upstream,))
    thread.start()  # (a waiting run of the upstream: its local job)
    try:
        wait_for(lambda: "up" in started(env.log), timeout=90)
        down = env.step("down").run.node(upstream)
        with pytest.raises(ValueError, match="only Slurm jobs can be waited for"):
            exca.graph.run(down, wait=False)
        assert env.starts("down") == 0
    finally:
        block.unlink()
        thread.join(timeout=120)
    assert down.result() == "down(up(None,None),None)"


@pytest.mark.timeout(120)
def test_jobs_go_out_before_inline_work_of_the_same_wave(env: Env) -> None:
    """An inline node waits for a local job of the same wave to start: it would wait in
    vain (and fail) if the job were submitted only once the inline work is done."""
    sig = str(env.tmp / "job-started")
    job = env.step("job", signal_file=sig, infra={"cluster": "local"}).run.node()
    here = env.step("here", partner=sig).run.node()
    exca.graph.run(job, here)
    assert here.result() == "here(None,None)" and job.result() == "job(None,None)"


@pytest.mark.timeout(120)
def test_jobs_go_out_while_inline_work_of_another_branch_runs(env: Env) -> None:
    """quick -> follow on cluster="local", and an independent inline node that waits for
    follow's job to start: follow goes out once quick ended, while the inline node runs
    (it waited for the inline work to end: the inline node then waited in vain and failed)."""
    sig = str(env.tmp / "follow-started")
    local = {"cluster": "local"}
    quick = env.step("quick", infra=local).run.node()
    follow = env.step("follow", signal_file=sig, infra=local).run.node(quick)
    here = env.step("here", partner=sig).run.node()
    exca.graph.run(follow, here)
    assert here.result() == "here(None,None)"
    assert follow.result() == "follow(quick(None,None),None)"
    assert started(env.log).count("follow") == 1
    assert not submitting_threads()  # (stopped once the inline work ended)


class ThreadName(pydantic.BaseModel):
    """A task returning the name of the thread computing it."""

    tag: str = "t"
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> str:
        return threading.current_thread().name


@pytest.mark.timeout(120)
def test_a_debug_job_runs_in_the_thread_of_the_run_while_inline_work_runs(env: Env) -> None:
    """A debug job (run in this process once its end is asked for, with pdb on failure)
    of the wave of an inline node: while the inline node runs, the thread submitting the
    other branch's jobs leaves it to the run's own thread."""
    sig = str(env.tmp / "follow-started")
    local = {"cluster": "local"}
    follow = env.step("follow", signal_file=sig, infra=local).run.node(
        env.step("quick", infra=local).run.node()
    )
    here = env.step("here", partner=sig).run.node()
    debug = ThreadName(infra=env.infra(cluster="debug")).run.node()
    exca.graph.run(follow, here, debug)
    assert debug.result() == threading.current_thread().name
    assert not submitting_threads()


def submitting_threads() -> list[threading.Thread]:
    """The threads submitting job work while a run computes inline work, still alive."""
    return [t for t in threading.enumerate() if t.name == "exca-submit"]


class Listing(pydantic.BaseModel):
    """A task listing the items of a map (touching ``signal_file`` first)."""

    signal_file: str = ""
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("signal_file",)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def make(self) -> list[int]:
        Path(self.signal_file).touch()
        return [0, 1, 2]


class SlowSquare(pydantic.BaseModel):
    """A map whose first item, computed here, waits ``pause`` s once ``after`` exists."""

    log: str
    after: str = ""
    pause: float = 0.0
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log", "after", "pause")
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def apply(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            append(self.log, {"name": f"square{item}", "event": "start", "pid": os.getpid()})
            if self.after and item == 0:
                wait_for(lambda: Path(self.after).exists())
                time.sleep(self.pause)
            yield item * item


class SquaresHere(pydantic.BaseModel):
    """An inline task computing a map's items through a call (holding their claims)."""

    square: SlowSquare
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply(chain_subconfigs=False)
    def run(self) -> list[int]:
        return list(self.square.apply([0, 1, 2]))


@pytest.mark.timeout(120)
def test_a_map_whose_items_the_inline_work_computes_is_not_lost_meanwhile(env: Env) -> None:
    """While an inline node computes a map's items (a call, holding their claims), the
    map node of the run becomes ready (its listing job ended): its work is left to the
    run's thread, which waits for those claims, then finds them done. The thread
    submitting meanwhile finished that node, without handles yet, as lost: the run
    raised "3 item(s) ... not computed: the worker ended without writing it"."""
    listed = env.tmp / "listed"
    square = {"log": env.log, "after": str(listed), "pause": 3.0}
    items = Listing(signal_file=str(listed), infra=env.infra(cluster="local")).make.node()
    mapped = SlowSquare(**square, infra=env.infra(cluster="local")).apply.node(items)
    here = SquaresHere(square=SlowSquare(**square, infra=env.infra())).run.node()
    exca.graph.run(mapped, here)
    assert mapped.result() == [0, 1, 4] and here.result() == [0, 1, 4]
    assert sorted(started(env.log)) == ["square0", "square1", "square2"]  # (each once)
    assert not submitting_threads()


class Pausing(pydantic.BaseModel):
    """A task touching ``signal_file``, then pausing ``pause`` s (its sub-config's task
    included in its result)."""

    named: ThreadName
    log: str
    signal_file: str = ""
    pause: float = 0.0
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log", "signal_file", "pause")
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> str:
        append(self.log, {"name": "pausing", "event": "start"})
        if self.signal_file:
            Path(self.signal_file).touch()
        time.sleep(self.pause)
        return f"pausing({self.named.run()})"


class CallsWhenTold(pydantic.BaseModel):
    """An inline task calling a sub-config's task once ``partner`` exists."""

    pausing: Pausing
    partner: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply(chain_subconfigs=False)
    def run(self) -> str:
        wait_for(lambda: Path(self.partner).exists(), timeout=60)
        return self.pausing.run()


@pytest.mark.timeout(120)
def test_a_task_the_inline_work_starts_computing_as_it_is_submitted_meanwhile(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread submitting while an inline node runs found a task ready (its upstream
    job ended) and not computed here; the inline work then started computing that task
    through a call (its claim) before the thread submitted it: the submission refused it
    as a method calling itself ("already being computed by this very thread"), and the
    run raised that. That claim is the inline work's, given back before the run waits:
    the thread waits for it, as for another worker's (the task is computed once)."""
    looked, claimed = env.tmp / "looked", env.tmp / "claimed"
    hold_back = exca.graph.scheduler.Scheduler._hold_back

    def slow_hold_back(self: tp.Any, ready: tp.Any, *args: tp.Any) -> tp.Any:
        if threading.current_thread().name == "exca-submit" and ready:
            looked.touch()  # (the task was not claimed: now it is, before it goes out)
            wait_for(claimed.exists, timeout=60)
        return hold_back(self, ready, *args)

    monkeypatch.setattr(exca.graph.scheduler.Scheduler, "_hold_back", slow_hold_back)
    named = ThreadName(infra=env.infra(cluster="local"))  # (upstream: a job)
    pausing = Pausing(named=named, log=env.log, infra=env.infra(cluster="local")).run.node()
    # (the same task, computed by a call of the inline work: its own instance)
    called = Pausing(
        named=named, log=env.log, signal_file=str(claimed), pause=3.0, infra=env.infra()
    )
    here = CallsWhenTold(pausing=called, partner=str(looked), infra=env.infra()).run.node()
    exca.graph.run(pausing, here)
    assert pausing.result() == here.result() == "pausing(MainThread)"
    assert started(env.log).count("pausing") == 1
    assert not submitting_threads()


@pytest.mark.timeout(120)
def test_a_map_sharing_items_with_the_inline_work_gets_jobs_for_the_rest(env: Env) -> None:
    """A map node on cluster="local" becomes ready (its listing job ended) while an
    inline map node of the same config computes one of its items (holding its claim):
    the thread submitting meanwhile sent all its items to the run's thread, which
    computed them here, in the driver, not in jobs. It is left to the run's thread,
    which decides its items once the inline work ended: jobs for the rest (as before)."""
    listed = env.tmp / "listed"
    square = {"log": env.log, "after": str(listed), "pause": 4.0}
    items = Listing(signal_file=str(listed), infra=env.infra(cluster="local")).make.node()
    mapped = SlowSquare(**square, infra=env.infra(cluster="local")).apply.node(items)
    here = SlowSquare(**square, infra=env.infra()).apply.node([0, 5])
    exca.graph.run(mapped, here)
    assert mapped.result() == [0, 1, 4] and here.result() == [0, 25]
    pids = {e["name"]: e["pid"] for e in events(env.log, "start")}
    assert sorted(pids) == ["square0", "square1", "square2", "square5"]  # (each once)
    assert pids["square1"] != os.getpid() and pids["square2"] != os.getpid()
    assert not submitting_threads()


@pytest.mark.timeout(120)
def test_ctrl_c_as_the_submitting_thread_starts_stops_it(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C right as the thread submitting during inline work starts: the run
    cancels its jobs, and that thread stops (it ran on, polling and submitting for a run
    that had ended)."""
    original = threading.Thread.start

    def start(thread: threading.Thread) -> None:
        original(thread)
        if thread.name == "exca-submit":
            raise KeyboardInterrupt

    monkeypatch.setattr(threading.Thread, "start", start)
    local = {"cluster": "local"}
    follow = env.step("follow", infra=local).run.node(env.step("quick", infra=local).run.node())
    here = env.step("here").run.node()
    with pytest.raises(KeyboardInterrupt):
        exca.graph.run(follow, here)
    monkeypatch.undo()
    wait_for(lambda: not submitting_threads(), timeout=10)


@pytest.mark.timeout(120)
def test_a_submission_failing_during_inline_work_is_raised_once_it_ended(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The thread submitting during inline work fails to submit (sbatch refused, say):
    the inline work goes on to its end (cached), then the run raises that error, as its
    loop raises a failed submission; the thread is gone. A warning says so at once (the
    inline work may last hours)."""
    original = exca.graph.executors.submit_array
    refused = env.tmp / "refused"

    def submit_array(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        if threading.current_thread().name == "exca-submit":
            refused.touch()  # (the inline work ends then: a fixed pause was too short
            raise RuntimeError("submission refused")  # on a loaded machine)
        return original(*args, **kwargs)

    monkeypatch.setattr(exca.graph.executors, "submit_array", submit_array)
    quick_started = env.tmp / "quick-started"
    local = {"cluster": "local"}
    quick = env.step("quick", signal_file=str(quick_started), infra=local).run.node()
    follow = env.step("follow", infra=local).run.node(quick)
    watch = Watch(partner=str(refused), after=str(quick_started), pause=30.0)
    watched = watch.model_copy(update={"infra": exca.TaskInfra(**env.infra())}).run.node()
    with pytest.raises(RuntimeError, match="submission refused"):
        exca.graph.run(follow, watched)
    (warned,) = [r for r in caplog.records if "while work runs here failed" in r.message]
    assert "RuntimeError: submission refused" in warned.message
    assert warned.threadName == "exca-submit"  # (said as it failed, not once it was raised)
    assert watched.status() == "completed" and quick.status() == "completed"
    assert "follow" not in started(env.log)
    assert not submitting_threads()


@pytest.mark.timeout(120)
def test_inline_work_failing_while_jobs_went_out_meanwhile(env: Env) -> None:
    """Inline work fails after the job work of another branch went out meanwhile: that
    job is waited for (cached), the run raises the inline failure; the thread is gone."""
    sig = str(env.tmp / "follow-started")
    flag = env.tmp / "fail"
    flag.touch()
    local = {"cluster": "local"}
    quick = env.step("quick", infra=local).run.node()
    follow = env.step("follow", signal_file=sig, infra=local).run.node(quick)
    here = env.step("here", partner=sig, fail_flag=str(flag)).run.node()
    with pytest.raises(ValueError, match="here fails on purpose"):
        exca.graph.run(follow, here)
    assert follow.status() == "completed" and started(env.log).count("follow") == 1
    assert not submitting_threads()


class Watch(pydantic.BaseModel):
    """An inline task watching this process's cwd and MASTER_PORT until ``partner``
    exists, or ``pause`` s after ``after`` exists: the changes it saw."""

    partner: str
    after: str
    pause: float
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("partner", "after", "pause")
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> list[str]:
        first = (os.getcwd(), os.environ.get("MASTER_PORT"))
        seen: set[str] = set()
        end = time.monotonic() + 60
        while not Path(self.partner).exists() and time.monotonic() < end:
            if Path(self.after).exists():
                end = min(end, time.monotonic() + self.pause)
            now = (os.getcwd(), os.environ.get("MASTER_PORT"))
            if now != first:
                seen.add(f"{now}")
            time.sleep(0.001)
        return sorted(seen)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("changed", ["workdir", "environ"])
def test_jobs_sent_during_inline_work_change_nothing_it_sees(
    env: Env, monkeypatch: pytest.MonkeyPatch, changed: str
) -> None:
    """A job submitted while inline work runs must not change what its code sees: a job
    with a workdir is submitted from the snapshot (cwd, sys.path, PYTHONPATH), and a
    submission hides the Slurm and torch.distributed variables of os.environ (a driver
    in a Slurm job). Such job work waits for the inline work (the inline code found its
    cwd in the job's code snapshot, and MASTER_PORT gone)."""
    quick_started, follow_started = env.tmp / "quick-started", env.tmp / "follow-started"
    infra: dict[str, tp.Any] = {"cluster": "local"}
    if changed == "workdir":
        code = env.tmp / "code"
        code.mkdir()
        (code / "nothing.py").write_text("")
        infra["workdir"] = {"copied": [str(code)]}
    else:
        monkeypatch.setenv("MASTER_PORT", "29500")
    quick = env.step("quick", signal_file=str(quick_started), infra={"cluster": "local"})
    follow = env.step("follow", signal_file=str(follow_started), infra=infra).run.node(
        quick.run.node()
    )
    watch = Watch(partner=str(follow_started), after=str(quick_started), pause=3.0)
    watched = watch.model_copy(update={"infra": exca.TaskInfra(**env.infra())}).run.node()
    exca.graph.run(follow, watched)
    assert watched.result() == []
    assert follow.result() == "follow(quick(None,None),None)"
    assert not submitting_threads()


class SetsMasterPort(pydantic.BaseModel):
    """An inline task setting MASTER_PORT once ``partner`` exists (before a
    torch.distributed init, say), then watching it for 3 s: the changes it saw."""

    partner: str
    signal_file: str
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("partner", "signal_file")
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> list[str]:
        wait_for(lambda: Path(self.partner).exists())
        os.environ["MASTER_PORT"] = "29500"
        Path(self.signal_file).touch()
        seen: set[str] = set()
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            if os.environ.get("MASTER_PORT") != "29500":
                seen.add("MASTER_PORT gone")
            time.sleep(0.001)
        return sorted(seen)


@pytest.mark.timeout(120)
def test_a_variable_the_inline_work_sets_after_the_look_is_not_hidden(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The thread submitting during inline work looks whether a submission would hide
    variables of os.environ from the inline code (MASTER_PORT...), then claims, settles
    and submits; the inline code set MASTER_PORT meanwhile (the window widened here):
    the submission hid it from that code (a torch.distributed init then failed). Checked
    again as it submits: the job goes out once the inline work ended."""
    looked, set_ = env.tmp / "looked", env.tmp / "set"
    hold_back = exca.graph.scheduler.Scheduler._hold_back

    def slow_hold_back(self: tp.Any, ready: tp.Any, *args: tp.Any) -> tp.Any:
        if threading.current_thread().name == "exca-submit" and ready:
            looked.touch()  # (MASTER_PORT was not set: now it is, before the submission)
            wait_for(set_.exists, timeout=60)
        return hold_back(self, ready, *args)

    monkeypatch.setattr(exca.graph.scheduler.Scheduler, "_hold_back", slow_hold_back)
    monkeypatch.setenv("MASTER_PORT", "")  # (the inline code sets it: undone after the test)
    monkeypatch.delenv("MASTER_PORT")
    local = {"cluster": "local"}
    follow = env.step("follow", infra=local).run.node(env.step("quick", infra=local).run.node())
    here = SetsMasterPort(partner=str(looked), signal_file=str(set_), infra=env.infra())
    exca.graph.run(follow, here.run.node())
    assert here.run.node().result() == []
    assert follow.result() == "follow(quick(None,None),None)"
    assert started(env.log).count("follow") == 1
    assert not submitting_threads()


class Cwd(pydantic.BaseModel):
    """A task returning the working directory of the process computing it."""

    log: str
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("log",)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self, a: tp.Any = None) -> str:
        append(self.log, {"name": "cwd", "event": "start"})
        return os.getcwd()


class CallsStep(pydantic.BaseModel):
    """An inline task calling a sub-config's task (a job: see its infra)."""

    step: Step
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply(chain_subconfigs=False)
    def run(self) -> str:
        return self.step.run()


@pytest.mark.timeout(120)
def test_a_job_sent_during_inline_work_is_not_sent_from_its_calls_workdir(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inline work submits a job with a workdir (a call): for that submission this
    process works from the job's code snapshot (cwd, PYTHONPATH). A job the run's other
    thread submitted meanwhile (its upstream job ended) started there too, running the
    snapshot's code: submissions of one process go one at a time."""
    go = env.tmp / "go"
    activate = exca.infra.workdir.WorkDir.activate

    @contextlib.contextmanager
    def slow_activate(self: tp.Any) -> tp.Iterator[Path]:
        with activate(self) as folder:
            go.touch()  # (the upstream job ends: the thread submits the next one)
            with contextlib.suppress(TimeoutError):  # (none is submitted meanwhile)
                wait_for(lambda: "cwd" in started(env.log), timeout=10)
            yield folder

    monkeypatch.setattr(exca.infra.workdir.WorkDir, "activate", slow_activate)
    code = env.tmp / "code"
    code.mkdir()
    (code / "nothing.py").write_text("")
    upstream = env.step("up", partner=str(go), infra={"cluster": "local"}).run.node()
    cwd = Cwd(log=env.log, infra=env.infra(cluster="local")).run.node(upstream)
    called = env.step("called", infra={"cluster": "local", "workdir": {"copied": [str(code)]}})
    here = CallsStep(step=called, infra=env.infra()).run.node()
    exca.graph.run(cwd, here)
    assert here.result() == "called(None,None)"
    assert cwd.result() == os.getcwd()
    assert not submitting_threads()


def test_a_process_forked_while_another_thread_submits_can_submit() -> None:
    """Submissions of one process go one at a time (see the test above): a process
    forked while another thread submits (a process pool of inline work, its items
    calling jobs) found that thread's lock held forever."""
    held, release = threading.Event(), threading.Event()

    def submitting() -> None:
        with exca.graph.executors._PROCESS_STATE:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=submitting)
    thread.start()
    try:
        held.wait(30)
        pid = os.fork()
        if pid == 0:  # (the child: can it submit?)
            os._exit(0 if exca.graph.executors._PROCESS_STATE.acquire(timeout=5) else 1)
        status = os.waitpid(pid, 0)[1]
    finally:
        release.set()
        thread.join()
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_run_of_inline_nodes_only_pays_nothing_for_the_submitting_thread(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chain of inline nodes (no job): each wave looked at every pending node for job
    work the submitting thread could send (n^2 looks for a chain of n: 2 M for 2000)."""
    looked: list[object] = []
    original = exca.graph.scheduler.Scheduler._sent_away

    def sent_away(*args: tp.Any) -> bool:
        looked.append(args)
        return original(*args)

    monkeypatch.setattr(exca.graph.scheduler.Scheduler, "_sent_away", staticmethod(sent_away))
    node = None
    for i in range(20):
        node = env.step(f"s{i}").run.node(node)
    assert node is not None
    exca.graph.run(node)
    assert len(started(env.log)) == 20 and not looked


def _run_until_started(
    env: Env,
    targets: tuple[exca.graph.Node, ...],
    name: str,
    block: Path,
    running: exca.graph.Node,
) -> None:
    """Run targets in a thread until node ``name`` started while ``running`` still runs
    (blocked by the file ``block``, removed at the end whatever happens)."""
    thread = threading.Thread(target=exca.graph.run, args=targets)
    thread.start()
    try:
        wait_for(lambda: name in started(env.log), timeout=90)
        assert running.status() == "running"
    finally:
        block.unlink()
        thread.join(timeout=120)


@pytest.mark.timeout(180)
def test_a_long_job_does_not_hold_back_an_unrelated_branch(env: Env) -> None:
    """slow, and quick -> add, all on cluster="local": add starts as soon as quick is done,
    while slow still runs (it waited for slow: the same array group)."""
    block = env.tmp / "block"
    block.touch()
    local = {"cluster": "local"}
    slow = env.step("slow", block_flag=str(block), infra=local).run.node()
    add = env.step("add", infra=local).run.node(env.step("quick", infra=local).run.node())
    _run_until_started(env, (slow, add), "add", block, running=slow)
    assert add.result() == "add(quick(None,None),None)" and slow.result() == "slow(None,None)"


@pytest.mark.timeout(180)
def test_ready_local_work_does_not_wait_for_its_group_to_fill(env: Env) -> None:
    """slow -> follow, and quick -> add, with follow and add of one array group: add starts
    at once (holding it back to send both in one array only pays off on Slurm)."""
    block = env.tmp / "block"
    block.touch()
    local = {"cluster": "local"}
    slow = env.step("slow", block_flag=str(block), infra=local).run.node()
    follow = env.step("follow", infra=local).run.node(slow)
    add = env.step("add", infra=local).run.node(env.step("quick").run.node())
    _run_until_started(env, (follow, add), "add", block, running=slow)
    assert follow.result() == "follow(slow(None,None),None)"


# =============================================================================================
# 6. Ctrl-C
# =============================================================================================
INTERRUPTED_SCRIPT = """
import signal
import sys
import exca

# as in a terminal: a test run started as a background job of a shell inherits SIGINT
# ignored (POSIX, without job control), and Python then leaves it ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
import exca.graph
from test_pipelines import Env

env = Env(__import__("pathlib").Path(sys.argv[1]))
quick = env.step("quick", infra={"cluster": "local"}).run.node()
slow = env.step("slow", block_flag=sys.argv[2], infra={"cluster": "local"}).run.node(quick)
try:
    exca.graph.run(slow)
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
    sys.exit(3)
print("FINISHED", flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"  # a zombie has ended


@pytest.mark.timeout(180)
@pytest.mark.parametrize("target", ["process", "group"])
def test_ctrl_c_cancels_the_jobs_of_the_run(env: Env, target: str) -> None:
    """SIGINT to the driver alone (``kill -INT``), or to its whole process group (Ctrl-C in
    a terminal, which the local job processes receive too)."""
    block = env.tmp / "block"
    block.touch()
    script = env.tmp / "driver.py"
    script.write_text(textwrap.dedent(INTERRUPTED_SCRIPT))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(env.tmp), str(block)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: a group signal spares pytest
    )
    try:
        wait_for(lambda: "slow" in started(env.log) or proc.poll() is not None, timeout=90)
        assert proc.poll() is None, proc.communicate()[0].decode()
        slow = env.step("slow", block_flag=str(block)).run.node(env.step("quick").run.node())
        records = list((slow.folder / "jobs").glob("*.json"))  # type: ignore[operator]
        assert len(records) == 1
        job_id = json.loads(records[0].read_text())["job_id"]
        worker_pid = events(env.log, "start")[-1]["pid"]
        assert _alive(int(job_id)) and _alive(worker_pid)
        assert len(list((slow.folder / "claims").glob("*.claim"))) == 1  # type: ignore[operator]
        # while it runs, a plan shows it (from another process) with its job id
        entry = _by_uid(exca.graph.plan(slow))[slow.uid]
        assert (entry.status, entry.action, entry.job_id) == ("running", "wait", job_id)
        if target == "group":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        output = proc.communicate(timeout=60)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 3 and "INTERRUPTED" in output, output
    wait_for(lambda: not _alive(int(job_id)) and not _alive(worker_pid), timeout=30)
    assert not list((slow.folder / "jobs").glob("*.json"))  # type: ignore[operator]
    assert not list((slow.folder / "claims").glob("*.claim"))  # type: ignore[operator]
    assert slow.status() == "not submitted"
    assert "end" not in [e["event"] for e in events(env.log) if e["name"] == "slow"]
    # a later run recomputes the cancelled node (and only it)
    block.unlink()
    assert slow.result() == "slow(quick(None,None),None)"
    assert started(env.log) == ["quick", "slow", "slow"]


class _Printer:
    """IPython's pretty printer, as far as a display hook uses it."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def text(self, text: str) -> None:
        self.texts.append(text)


def test_plans_and_runs_show_themselves_in_a_notebook(env: Env) -> None:
    """A notebook cell ending with a plan or a run showed `<...Plan at 0x7f...>`."""
    a = env.step("a").run.node()
    b = env.step("b").run.node(a)
    plan = exca.graph.plan(b)
    printer = _Printer()
    plan._repr_pretty_(printer, False)
    assert printer.texts == [str(plan)] and "missing" in printer.texts[0]
    assert repr(exca.graph.run(b)) == "<exca run of 2 node(s): 2 done>"
    removal = exca.ops.clean.remove_nodes(b)
    removal._repr_pretty_(printer, False)
    assert printer.texts[-1] == str(removal) and "1 item(s) to remove" in printer.texts[-1]


def test_a_node_below_a_cached_error_says_whose_mode_retries(env: Env) -> None:
    """A node in mode retry below a task holding a cached error: its plan said the
    upstream's "cached error (...): mode='retry' computes it again", and the user, in
    mode retry already, saw nothing retried (a probe, with a job array whose sub-config
    failed): it names whose mode that is."""
    flag = env.tmp / "fail"
    flag.touch()
    up = env.step("up", fail_flag=str(flag)).run.node()
    with pytest.raises(ValueError, match="fails on purpose"):
        up.result()
    down = env.step("down", infra={"mode": "retry"}).run.node(up)
    entry = _by_uid(exca.graph.plan(down))[down.uid]
    assert entry.action == "fail"
    # (one sentence: it read "...: mode='retry' computes it again): the mode of that
    # upstream config's own infra", a dangling clause, in plans, logs and errors)
    assert entry.reason == (
        f"upstream {up.uid} fails (cached error (ValueError: up fails on purpose); "
        "mode='retry' on that upstream config's own infra computes it again)"
    )
    with pytest.raises(NodeFailures) as info:
        exca.graph.run(down)
    assert str(info.value.failures[down.uid]) == f"{down.uid}: {entry.reason}"
    explained = {e.uid: e for e in exca.ops.explain(down)}
    assert explained[down.uid].summary() == entry.reason


def test_whether_submitting_hides_variables_is_read_while_no_submission_hides_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The thread submitting during inline work asks whether a submission would hide
    variables from the inline code (MASTER_PORT...): asked while a submission of the inline
    code hid them, it read "no" and submitted, hiding them from that code in turn."""
    import submitit

    monkeypatch.setenv("MASTER_PORT", "29500")
    hidden, release = threading.Event(), threading.Event()

    def submission() -> None:  # (as submit_array changes the process's state)
        with exca.graph.executors._PROCESS_STATE, submitit.helpers.clean_env():
            hidden.set()
            release.wait(2.0)

    thread = threading.Thread(target=submission)
    thread.start()
    try:
        assert hidden.wait(10) and "MASTER_PORT" not in os.environ
        threading.Timer(0.3, release.set).start()
        assert exca.graph.executors.submission_hides_environ()  # (once that one ended)
    finally:
        release.set()
        thread.join()
    assert os.environ["MASTER_PORT"] == "29500"


NOTEBOOK_CELL = """
import pydantic, exca


class Part(pydantic.BaseModel):
    x: int = 0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        {body}


class Join(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self, a: int, b: int) -> int:
        return a + b
"""


def test_a_cached_error_of_a_notebook_method_fixed_since_says_so_in_graphs(
    tmp_path: Path,
) -> None:
    """A notebook's cell fixed and run again: an eager call of its method said that its
    cached error was raised by the old code, but a plan, a graph run and a node's result
    did not (a probe: the run failed again with the same message, the Part's line not even
    saying 'cached'). They say it now, and what to do."""

    def cell(body: str) -> dict[str, tp.Any]:
        namespace: dict[str, tp.Any] = {"__name__": "__main__"}  # (a notebook's classes)
        # (not this module's `from __future__ import annotations`: pydantic would look for
        # the annotations' names in sys.modules["__main__"], pytest's)
        exec(
            compile(NOTEBOOK_CELL.format(body=body), "<cell>", "exec", dont_inherit=True), namespace
        )
        return namespace

    def target(ns: dict[str, tp.Any]) -> exca.graph.Node:
        one, two = (ns["Part"](x=x, infra={"folder": tmp_path}).run.node() for x in (1, 2))
        return ns["Join"](infra={"folder": tmp_path}).run.node(one, two)

    failing = cell("if self.x == 2:\n            raise ValueError('x=2 is bad')\n        return 1")
    with pytest.raises(exca.graph.errors.NodeFailures) as first:
        exca.graph.run(target(failing))
    said = "raised by other code of Part.run (edited since)"
    assert said not in str(first.value)
    assert said not in str(exca.graph.plan(target(failing)))  # (the same code)
    fixed = cell("return self.x")
    plan = str(exca.graph.plan(target(fixed)))
    assert f"cached error (ValueError: x=2 is bad), {said}: mode='retry'" in plan
    with pytest.raises(exca.graph.errors.NodeFailures) as again:
        exca.graph.run(target(fixed))
    assert f"ValueError: x=2 is bad (this error is cached, {said}: mode='retry'" in str(again.value)
    part = fixed["Part"](x=2, infra={"folder": tmp_path})
    with pytest.raises(ValueError, match="x=2 is bad") as read:
        part.run.node().result()
    assert any(said in note for note in read.value.__notes__)
    assert fixed["Part"](x=2, infra={"folder": tmp_path, "mode": "retry"}).run() == 2
    assert exca.graph.run(target(fixed)) is not None and target(fixed).result() == 3


NOTEBOOK_GRAPH_CELL = """
import typing as tp
import pydantic, exca


class Data(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def prepare(self) -> list[int]:
        return [1, 2, 3]


class Square(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def run(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            yield item * item{edit}


class Total(pydantic.BaseModel):
    extra: int = 0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def apply(self, values: list[int], data: list[int]) -> int:
        return sum(values) + self.extra
"""


def test_a_run_reusing_what_other_code_of_a_notebook_computed_warns_in_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A notebook's map (and task) edited in its cell, then a graph run whose new node,
    computed in a job, reads their outputs cached by the old code: the warning that they
    were computed by other code went to that job's log only, the session saying nothing
    (a probe, with cluster='local' and 'slurm'). The run warns in the session now."""
    from exca.graph import codeprint
    from exca.storage import saidonce

    monkeypatch.setattr(saidonce, "_SAID", set())
    monkeypatch.setattr(codeprint, "_ITEMS_CHECKED", {})

    def cell(edit: str, prepare: str = "") -> dict[str, tp.Any]:
        source = NOTEBOOK_GRAPH_CELL.format(edit=edit)
        source = source.replace("return [1, 2, 3]", f"return [1, 2, 3]{prepare}")
        namespace: dict[str, tp.Any] = {"__name__": "__main__"}  # (a notebook's classes)
        exec(compile(source, "<cell>", "exec", dont_inherit=True), namespace)
        return namespace

    def target(ns: dict[str, tp.Any], extra: int) -> exca.graph.Node:
        data = ns["Data"](infra={"folder": tmp_path}).prepare.node()
        squares = ns["Square"](infra={"folder": tmp_path}).run.node(data)
        total = ns["Total"](extra=extra, infra={"folder": tmp_path, "cluster": "local"})
        return total.apply.node(squares, data)

    exca.graph.run(target(cell(""), extra=0))
    warning = "reusing a result computed by other code of {}"
    edited = cell(" + 100", prepare=" + []")  # (both edited: the same outputs' uids)
    with caplog.at_level("WARNING", logger="exca"):
        exca.graph.run(target(edited, extra=1))  # (a new Total: computed in a job)
    assert warning.format("Square.run") in caplog.text
    assert warning.format("Data.prepare") in caplog.text
    assert target(edited, extra=1).result() == 15  # (the cache: as documented)


def test_a_plan_says_what_it_reuses_was_computed_by_other_code_of_a_notebook(
    tmp_path: Path,
) -> None:
    """A notebook's task and map edited in their cell (the cached results are the old
    code's): a plan said "cached  reuse ... cached", the answer to "what will run and why"
    leaving out that the results are the old code's (a call warns in the log only). The
    plan's reason says so, for the task and the map, and not for the same code."""

    def cell(edit: str) -> dict[str, tp.Any]:
        source = NOTEBOOK_GRAPH_CELL.format(edit=edit).replace(
            "return [1, 2, 3]", f"return [1, 2, 3]{edit and ' + []'}"
        )
        namespace: dict[str, tp.Any] = {"__name__": "__main__"}  # (a notebook's classes)
        exec(compile(source, "<cell>", "exec", dont_inherit=True), namespace)
        return namespace

    def targets(ns: dict[str, tp.Any]) -> list[exca.graph.Node]:
        data = ns["Data"](infra={"folder": tmp_path}).prepare.node()
        return [data, ns["Square"](infra={"folder": tmp_path}).run.node([1, 2, 3])]

    first = cell("")
    exca.graph.run(*targets(first))
    said = "computed by other code of {} (edited since, or a namesake's)"
    plan = exca.graph.plan(*targets(first))
    assert "other code" not in str(plan)
    plan = exca.graph.plan(*targets(cell(" + 100")))
    reasons = {e.uid.split("/")[0].split(".", 1)[1]: e.reason for e in plan.entries}
    assert [e.action for e in plan.entries] == ["reuse", "reuse"]  # (reused, as a call does)
    assert reasons["Data.prepare,1"].startswith("cached, " + said.format("Data.prepare"))
    assert reasons["Square.run,1"].startswith("cached, " + said.format("Square.run"))
    assert "bump the infra's version" in reasons["Square.run,1"]


def test_a_plan_of_a_map_with_new_items_says_its_cached_ones_are_of_other_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notebook's map edited in its cell, then called with one more item: the plan said
    "1/3 missing" only (explain: "not computed for this config yet"), while the run reuses
    the two cached items, of the old code (its call warns): the plan's reason says so, as
    for a map reusing all of its items, and explain keeps it (a probe)."""
    from exca.graph import codeprint

    monkeypatch.setattr(codeprint, "_ITEMS_CHECKED", {})

    def square(edit: str) -> tp.Any:
        source = NOTEBOOK_GRAPH_CELL.format(edit=edit)
        namespace: dict[str, tp.Any] = {"__name__": "__main__"}  # (a notebook's classes)
        exec(compile(source, "<cell>", "exec", dont_inherit=True), namespace)
        return namespace["Square"](infra={"folder": tmp_path})

    exca.graph.run(square("").run.node([1, 2]))
    node = square(" + 100").run.node([1, 2, 3])
    (entry,) = exca.graph.plan(node).entries
    said = "; its cached items were computed by other code of Square.run (edited since, or a"
    assert entry.reason.startswith("1/3 missing" + said), entry.reason
    (why,) = exca.ops.explain(node)
    assert why.summary().startswith(
        "1/3 missing (not computed for this config yet, or not finished: its other items are "
        "cached)" + said
    )
    exca.graph.run(node)  # (what runs: the new item, by the new code; the others reused)
    assert node.result() == [1, 4, 109]
