"""Property: ``exca.graph.plan(targets)`` says exactly what ``exca.graph.run(targets)``
computes (DESIGN "The graph layer"). Random DAGs of tasks and maps (fan-in, fan-out,
diamonds, lists and dicts of inputs, configs shared by several nodes) over random
pre-cached states (results, cached errors, partially cached maps), in modes cached,
retry and force on a node, with targets that are not all sinks; fixed seeds.

Every decorated method appends one line per computation (task, or map item) to a log
file, so what ran is counted whatever the plan says.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import threading
import time
import typing as tp
from pathlib import Path

import pydantic
import pytest

import exca
import exca.graph
import exca.ops
from exca.graph.errors import NodeFailures
from exca.graph.worker import UpstreamFailed


def _log(folder: str, record: dict[str, tp.Any]) -> None:
    with open(Path(folder) / "calls.jsonl", "a", encoding="utf8") as handle:
        handle.write(json.dumps(record) + "\n")


def _calls(folder: Path) -> list[dict[str, tp.Any]]:
    path = folder / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf8").splitlines() if line]


def _flat(value: tp.Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [x for v in value for x in _flat(v)]


class PData(pydantic.BaseModel):
    """A sub-config of tasks: its method is chained (a node computed before its parent).
    Fails while the file ``fail-<name>`` exists in ``flags``."""

    name: str
    flags: str
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("flags",)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def prepare(self) -> list[int]:
        _log(self.flags, {"kind": "data", "name": self.name})
        if (Path(self.flags) / f"fail-{self.name}").exists():
            _log(self.flags, {"kind": "data-failed", "name": self.name})
            raise ValueError(f"{self.name} fails")
        return data_value(self.name)


class PTask(pydantic.BaseModel):
    """A task node: a few small ints from its name and inputs (items of maps below it).
    Fails while the file ``fail-<name>`` exists in ``flags``."""

    name: str
    flags: str
    data: PData | None = None
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("flags",)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self, tag: str = "", a: tp.Any = None, b: tp.Any = None) -> list[int]:
        _log(self.flags, {"kind": "task", "name": self.name, "tag": tag})
        if (Path(self.flags) / f"fail-{self.name}").exists():
            _log(self.flags, {"kind": "task-failed", "name": self.name, "tag": tag})
            raise ValueError(f"{self.name} fails")
        extra = self.data.prepare() if self.data is not None else None
        return task_value(self.name, a, b, extra)


class PMap(pydantic.BaseModel):
    """A map node: item -> item * 2 (+ a name offset); the item fails while the file
    ``fail-<name>-<item>`` exists in ``flags``."""

    name: str
    flags: str
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("flags",)
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def run(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            _log(self.flags, {"kind": "map", "name": self.name, "item": item})
            if (Path(self.flags) / f"fail-{self.name}-{item}").exists():
                _log(self.flags, {"kind": "map-failed", "name": self.name, "item": item})
                raise ValueError(f"{self.name} fails on {item}")
            yield map_value(self.name, item)


def task_value(name: str, a: tp.Any, b: tp.Any, extra: tp.Any = None) -> list[int]:
    total = sum(_flat(a)) + sum(_flat(b)) + sum(_flat(extra)) + sum(map(ord, name))
    return sorted({(total + k * 3) % 9 for k in range(3)})


def data_value(name: str) -> list[int]:
    return [ord(name[-1]) % 7, 1]


def map_value(name: str, item: int) -> int:
    return item * 2 + len(name)


def _expected(specs: list[Spec]) -> list[tp.Any]:
    """What each node computes, without exca."""
    out: list[tp.Any] = []

    def value(ref: tp.Any) -> tp.Any:
        if ref is None:
            return None
        if isinstance(ref, int):
            return out[ref]
        if isinstance(ref, list):
            return [out[r] for r in ref]
        return {k: out[r] for k, r in ref.items()}

    for spec in specs:
        if spec.kind == "task":
            extra = None if spec.data is None else data_value(spec.data)
            out.append(task_value(spec.config, value(spec.a), value(spec.b), extra))
        else:
            items = out[spec.items] if isinstance(spec.items, int) else spec.items
            out.append([map_value(spec.config, i) for i in items])
    return out


def _items(specs: list[Spec]) -> list[list[int]]:
    """The items of each map node (empty for tasks)."""
    values = _expected(specs)
    return [
        (values[s.items] if isinstance(s.items, int) else s.items) if s.kind == "map" else []
        for s in specs
    ]


@dataclasses.dataclass
class Spec:
    """How to build one node of the random DAG."""

    kind: str  # task | map
    config: str  # the config's name (shared by several nodes sometimes)
    tag: str = ""  # tasks: a value input telling nodes of one config apart
    a: tp.Any = None  # index, list of indices, dict of indices, or None
    b: tp.Any = None
    items: tp.Any = None  # maps: a list of ints, or the index of a node feeding them
    cluster: str | None = None
    data: str | None = None  # tasks: the name of their sub-config (a chained node)


def _random_specs(
    rng: random.Random, count: int, clusters: dict[str, tp.Sequence[str | None]]
) -> list[Spec]:
    specs: list[Spec] = []
    task_configs: list[str] = []
    map_configs: list[str] = []
    where: dict[str, str | None] = {}
    datas: dict[
        str, str | None
    ] = {}  # a task config's sub-config  # a config's cluster (one per config: one node, one infra)
    for index in range(count):
        tasks = [i for i, s in enumerate(specs) if s.kind == "task"]
        if specs and rng.random() < 0.3:
            # a map: literal items, or the output of an upstream task
            if map_configs and rng.random() < 0.3:
                config = rng.choice(map_configs)  # a shared config
            else:
                config = f"m{index}"
                map_configs.append(config)
            if tasks and rng.random() < 0.5:
                items: tp.Any = rng.choice(tasks)
            elif len(tasks) < len(specs) and rng.random() < 0.2:  # the outputs of a map
                items = rng.choice([i for i, s in enumerate(specs) if s.kind == "map"])
            elif rng.random() < 0.1:  # an item given twice
                items = rng.choices(range(9), k=rng.randint(2, 5))
            else:
                items = sorted(rng.sample(range(9), rng.randint(1, 5)))
            # (map nodes of one config may run apart: one node, one cluster)
            cluster = where.setdefault(f"{config}:{items}", rng.choice(clusters["map"]))
            specs.append(Spec("map", config, items=items, cluster=cluster))
            continue
        if specs and rng.random() < 0.05:  # the same node again (one node of the graph)
            specs.append(dataclasses.replace(rng.choice(specs)))
            continue
        if task_configs and rng.random() < 0.15:
            config = rng.choice(task_configs)
        else:
            config = f"t{index}"
            task_configs.append(config)

        def source() -> tp.Any:
            if not specs or rng.random() < 0.3:
                return None
            shape = rng.random()
            near = list(range(max(0, len(specs) - 8), len(specs)))  # diamonds, fan-in
            if shape < 0.6:
                return rng.choice(near)
            picked = rng.sample(near, min(len(near), rng.randint(1, 3)))
            if shape < 0.8:
                return picked
            return {f"k{i}": p for i, p in enumerate(picked)}

        cluster = where.setdefault(config, rng.choice(clusters["task"]))
        data = datas.setdefault(config, rng.choice([None, None, None, *DATAS]))
        spec = Spec("task", config, f"n{index}", source(), source(), cluster=cluster, data=data)
        specs.append(spec)
    return specs


DATAS = ("d0", "d1", "d2")


def _data(name: str, flags: Path, cache: Path, mode: str = "cached") -> PData:
    return PData(name=name, flags=str(flags), infra={"folder": cache, "mode": mode})


def _build(
    specs: list[Spec],
    flags: Path,
    cache: Path,
    modes: dict[int, str],
    data_modes: dict[str, str] | None = None,
) -> list[exca.graph.Node]:
    nodes: list[exca.graph.Node] = []

    def ref(value: tp.Any) -> tp.Any:
        if value is None:
            return None
        if isinstance(value, int):
            return nodes[value]
        if isinstance(value, list):
            return [nodes[v] for v in value]
        return {k: nodes[v] for k, v in value.items()}

    for index, spec in enumerate(specs):
        infra = {"folder": cache, "mode": modes.get(index, "cached"), "cluster": spec.cluster}
        if spec.kind == "task":
            data = None
            if spec.data is not None:
                data = _data(spec.data, flags, cache, (data_modes or {}).get(spec.data, "cached"))
            task = PTask(name=spec.config, flags=str(flags), data=data, infra=infra)
            nodes.append(task.run.node(tag=spec.tag, a=ref(spec.a), b=ref(spec.b)))
        else:
            mapper = PMap(name=spec.config, flags=str(flags), infra=infra)
            items = ref(spec.items) if isinstance(spec.items, int) else spec.items
            nodes.append(mapper.run.node(items))
    return nodes


def _ancestors(nodes: list[exca.graph.Node], chosen: list[int]) -> set[int]:
    """The indices of the chosen nodes and of every node upstream of them."""
    index = {n.uid: i for i, n in enumerate(nodes)}
    out: set[int] = set()
    todo = list(chosen)
    while todo:
        i = todo.pop()
        if i not in out:
            out.add(i)
            # (a sub-config's chained node is not one of them)
            todo.extend(index[u.uid] for u in nodes[i].upstream if u.uid in index)
    return out


def _run(*targets: exca.graph.Node) -> None:
    try:
        exca.graph.run(*targets, progress=False)
    except (NodeFailures, UpstreamFailed):  # (failures are part of the property)
        pass
    except ValueError as error:  # (one node's own error, raised as it is)
        assert " fails" in str(error), error


def _counted(calls: list[dict[str, tp.Any]]) -> tuple[dict[str, int], dict[str, int]]:
    """Tasks computed per (config, tag); map items computed per config. A failing item
    is computed again to tell whose error it is (among the items of one method call, see
    docs/mapinfra.md): only those count once; any other item computed twice is a defect."""
    tasks: dict[str, int] = {}
    seen: dict[str, list[int]] = {}
    failing = {(c["name"], c["item"]) for c in calls if c["kind"] == "map-failed"}
    for call in calls:
        if call["kind"].endswith("failed"):
            continue
        if call["kind"] == "data":
            continue  # (counted apart)
        if call["kind"] == "task":
            key = f"{call['name']}:{call['tag']}"
            tasks[key] = tasks.get(key, 0) + 1
        else:
            seen.setdefault(call["name"], []).append(call["item"])
    for name, done in seen.items():
        again = {i for i in done if done.count(i) > 1 and (name, i) not in failing}
        assert not again, f"items of {name} computed twice: {again}"
    return tasks, {name: len(set(done)) for name, done in seen.items()}


FAST = {"task": (None,), "map": (None, None, "threadpool")}


def check_seed(
    seed: int,
    tmp_path: Path,
    clusters: dict[str, tp.Sequence[str | None]] = FAST,
    prepare_inline: bool = False,
) -> None:
    """``prepare_inline``: the random cached state is made without jobs nor processes (a
    node's cluster is no part of its uid: the same folders get the same results and
    errors); the run whose plan is checked uses the clusters."""
    rng = random.Random(seed)
    flags = tmp_path / "flags"
    flags.mkdir()
    cache = tmp_path / "cache"
    specs = _random_specs(rng, rng.randint(20, 60), clusters)
    prepared = [dataclasses.replace(s, cluster=None) for s in specs] if prepare_inline else specs
    nodes = _build(prepared, flags, cache, {})
    # --- a random cached state: some nodes computed, some failing, maps partly cached
    for spec in specs:
        if rng.random() < 0.06:
            name = spec.config if spec.kind == "task" else f"{spec.config}-{rng.randrange(9)}"
            (flags / f"fail-{name}").touch()
    for data in DATAS:
        if rng.random() < 0.15:
            (flags / f"fail-{data}").touch()
    failing: list[int] = []  # nodes holding a cached error
    for index in rng.sample(range(len(nodes)), len(nodes) // 4):
        spec = specs[index]
        before = len(_calls(flags))
        if spec.kind == "map" and isinstance(spec.items, list) and rng.random() < 0.5:
            part = rng.sample(spec.items, rng.randint(1, len(spec.items)))
            mapper = PMap(name=spec.config, flags=str(flags), infra={"folder": cache})
            try:
                list(mapper.run(part))
            except ValueError as error:  # (an item's error)
                assert " fails" in str(error), error
        else:
            _run(nodes[index])
        if any(c["kind"].endswith("failed") for c in _calls(flags)[before:]):
            failing.append(index)
    for flag in flags.glob("fail-*"):  # some failures fixed since
        if rng.random() < 0.5:
            flag.unlink()
    # some nodes computed again alone (forced): what was computed from them is stale
    tasks = [i for i, s in enumerate(specs) if s.kind == "task"]
    for index in rng.sample(tasks, min(len(tasks), rng.randint(0, 2))):
        _run(_build(prepared[: index + 1], flags, cache, {index: "force"})[index])
    # --- modes, targets
    used = {u.uid for n in nodes for u in n.upstream}
    sinks = [i for i, n in enumerate(nodes) if n.uid not in used]
    others = [i for i, n in enumerate(nodes) if n.uid in used]
    chosen = rng.sample(sinks, max(1, len(sinks) // 2))
    chosen += rng.sample(others, min(len(others), rng.randint(0, 3)))
    ancestors = sorted(_ancestors(nodes, chosen))
    modes: dict[int, str] = {}
    choice = rng.random()
    if choice < 0.4 or choice > 0.9:
        for index in rng.sample(ancestors, min(len(ancestors), rng.randint(1, 2))):
            modes[index] = "force"
    if choice > 0.4:  # (both modes, some of the time)
        picked = rng.sample(ancestors, min(len(ancestors), len(ancestors) // 5))
        retried = [i for i in failing if rng.random() < 0.7]
        chosen += retried  # (targets: their cached errors are looked at)
        for index in [*picked, *retried]:
            modes[index] = "retry"
    same = {i: [j for j, n in enumerate(nodes) if n.uid == nodes[i].uid] for i in modes}
    modes = {j: mode for i, mode in modes.items() for j in same[i]}  # (one node, one mode)
    data_modes = {d: rng.choice(["cached"] * 6 + ["force", "retry"]) for d in DATAS}
    nodes = _build(specs, flags, cache, modes, data_modes)
    targets = [nodes[i] for i in chosen]
    # --- what the plan says, then what the run does
    plan = exca.graph.plan(*targets)
    planned_tasks: dict[str, int] = {}
    planned_items: dict[str, int] = {}
    unknown: set[str] = set()  # maps whose items are known at run time
    by_uid = {n.uid: (i, n) for i, n in enumerate(nodes)}
    datas = {_data(d, flags, cache).prepare.node().uid: d for d in DATAS}
    planned_datas = [datas[e.uid] for e in plan.entries if e.action == "compute" and e.uid in datas]
    for entry in plan.entries:
        if entry.uid in datas:
            continue
        index, node = by_uid[entry.uid]
        spec = specs[index]
        if entry.action != "compute":
            continue
        if spec.kind == "task":
            key = f"{spec.config}:{spec.tag}"
            planned_tasks[key] = planned_tasks.get(key, 0) + 1
        elif entry.items is None or "known at run time" in entry.items:
            unknown.add(spec.config)
        else:
            # ("3/3 missing, 1 by another node of this run, 1 also in another node ...")
            todo = int(entry.items.split("/")[0])
            for other in entry.items.split(", ")[1:]:
                todo -= int(other.split()[0])
            planned_items[spec.config] = planned_items.get(spec.config, 0) + todo
    before = len(_calls(flags))
    _run(*targets)
    calls = _calls(flags)[before:]
    tasks, items = _counted(calls)
    context = f"seed {seed}:\n{plan}"
    # a node failing in this run (not known to the plan) stops what is below it
    failed = {f"{c['name']}:{c['tag']}" for c in calls if c["kind"] == "task-failed"}
    failed_items = {(c["name"], c["item"]) for c in calls if c["kind"] == "map-failed"}
    failed_datas = {c["name"] for c in calls if c["kind"] == "data-failed"}
    stopped = {u for u, d in datas.items() if d in failed_datas and d in planned_datas}
    expected = _items(specs)
    computing = {e.uid for e in plan.entries if e.action == "compute"}
    for index, node in enumerate(nodes):
        spec = specs[index]
        if node.uid not in computing:
            continue  # (cached, failing or not needed: a run does not change it)
        if (
            any(u.uid in stopped for u in node.upstream)
            or (spec.kind == "task" and f"{spec.config}:{spec.tag}" in failed)
            or (
                spec.kind == "map"
                and any(
                    name == spec.config and item in expected[index] for name, item in failed_items
                )
            )
        ):
            stopped.add(node.uid)
    for entry in plan.entries:
        if entry.uid in datas:
            continue
        index, node = by_uid[entry.uid]
        spec = specs[index]
        if spec.kind == "task" and any(u.uid in stopped for u in node.upstream):
            planned_tasks.pop(f"{spec.config}:{spec.tag}", None)
        if spec.kind == "map" and any(u.uid in stopped for u in node.upstream):
            unknown.add(spec.config)
    assert tasks == planned_tasks, context
    assert sorted(c["name"] for c in calls if c["kind"] == "data") == sorted(planned_datas), context
    known = {k: v for k, v in items.items() if k not in unknown}
    planned = {k: v for k, v in planned_items.items() if k not in unknown and v}
    assert known == planned, context
    assert set(items) <= set(planned_items) | unknown, context
    # what the targets read back is right, and reading them computes nothing more
    expected = _expected(specs)
    before = len(_calls(flags))
    readers = _build(specs, flags, cache, {})  # (mode cached: a retry would compute again)
    for index in chosen:
        try:
            value = readers[index].result()
        except (NodeFailures, UpstreamFailed):
            continue
        except ValueError as error:
            assert " fails" in str(error), error
            continue
        assert value == expected[index], f"seed {seed}: {nodes[index].uid}"
    assert _calls(flags)[before:] == [], context


SEEDS = list(range(30))


@pytest.mark.parametrize("seed", SEEDS)
def test_the_plan_says_what_the_run_computes(seed: int, tmp_path: Path) -> None:
    check_seed(seed, tmp_path)


@pytest.mark.parametrize("seed", [3, 7])
def test_the_plan_says_what_the_run_computes_in_jobs_and_processes(
    seed: int, tmp_path: Path
) -> None:
    clusters = {"task": (None, "local"), "map": (None, "processpool", "local")}
    check_seed(seed, tmp_path, clusters, prepare_inline=True)


@pytest.mark.parametrize("clusters", [(None, "threadpool"), ("threadpool", "processpool")])
def test_the_plan_counts_items_shared_by_map_nodes_on_two_clusters_once(
    tmp_path: Path, clusters: tuple[str | None, str]
) -> None:
    """Two map nodes of one config with overlapping items, on two clusters: the run
    computes a shared item once (the second waits for the first's claim, then reads it),
    the plan said both nodes computed them ("3/3 missing" twice: 6 items, 4 computed)."""
    flags = tmp_path / "flags"
    flags.mkdir()
    first, second = (
        PMap(name="m", flags=str(flags), infra={"folder": tmp_path, "cluster": c}).run.node(items)
        for c, items in zip(clusters, ([1, 2, 3], [2, 3, 4]))
    )
    plan = exca.graph.plan(first, second)
    assert [e.items for e in plan.entries] == [
        "3/3 missing",
        "3/3 missing, 2 also in another node of this run (computed once)",
    ]
    exca.graph.run(first, second)
    assert sorted(c["item"] for c in _calls(flags)) == [1, 2, 3, 4]
    assert second.result() == [map_value("m", i) for i in (2, 3, 4)]


# --- changes between the plan and the run ---------------------------------------------------
class Gated(pydantic.BaseModel):
    """A task that waits while the file ``gate-<name>`` exists in ``flags`` (after
    touching ``started-<name>``)."""

    name: str
    flags: str
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("flags",)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self, a: tp.Any = None, b: tp.Any = None) -> str:
        _log(self.flags, {"kind": "task", "name": self.name, "tag": "", "pid": os.getpid()})
        (Path(self.flags) / f"started-{self.name}").touch()
        end = time.monotonic() + 60
        while (Path(self.flags) / f"gate-{self.name}").exists() and time.monotonic() < end:
            time.sleep(0.02)
        return f"{self.name}({a},{b})"


def test_a_result_removed_while_the_run_goes_fails_its_reader_naming_it(tmp_path: Path) -> None:
    """A cached upstream removed (``exca clean``, ``clear()``) after the run decided to
    reuse it: its reader fails naming it (no wrong result), and the plan and ``explain``
    afterwards said only "its upstream failed last time", not which one, nor why."""
    flags = tmp_path / "flags"
    flags.mkdir()

    def gated(name: str, **inputs: tp.Any) -> exca.graph.Node:
        return Gated(name=name, flags=str(flags), infra={"folder": tmp_path}).run.node(**inputs)

    assert gated("x").result() == "x(None,None)"
    reader = gated("y", a=gated("x"), b=gated("w"))
    (flags / "gate-w").touch()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            exca.graph.run(reader)
        except UpstreamFailed as error:
            failures.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 60
    while not (flags / "started-w").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    gated("x").clear()  # (the run decided to reuse it)
    (flags / "gate-w").unlink()
    thread.join(timeout=60)
    assert len(failures) == 1 and f"upstream {gated('x').uid} is missing" in str(failures[0])
    assert [c["name"] for c in _calls(flags)] == ["x", "w"]
    said = f"its upstream failed last time (upstream {gated('x').uid} is missing)"
    removed, below = (e.summary() for e in exca.ops.explain(reader))
    assert "removed since" in removed and below == said
    assert reader.result() == "y(x(None,None),w(None,None))"  # computed again, from x's new


# --- Ctrl-C during a run ------------------------------------------------------------------------
class GatedMap(pydantic.BaseModel):
    """A map whose item waits while the file ``gate-<name>-<item>`` exists in ``flags``
    (after touching ``started-<name>-<item>``)."""

    name: str
    flags: str
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("flags",)
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def run(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            _log(self.flags, {"kind": "map", "name": self.name, "item": item})
            (Path(self.flags) / f"started-{self.name}-{item}").touch()
            end = time.monotonic() + 60
            gate = Path(self.flags) / f"gate-{self.name}-{item}"
            while gate.exists() and time.monotonic() < end:
                time.sleep(0.02)
            yield item * 10


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"  # (a zombie has ended)


@pytest.mark.timeout(120)
def test_ctrl_c_while_inline_work_and_a_local_job_run_then_a_rerun_computes_what_is_missing(
    tmp_path: Path,
) -> None:
    """Ctrl-C in the main thread while a map computes inline (two of its items done) and a
    local job runs: the job is cancelled (its process ends), nothing is cached wrong, and
    the rerun computes only what is missing: the interrupted item, the ones after it, the
    cancelled task, then the task below them."""
    flags = tmp_path / "flags"
    flags.mkdir()

    def target() -> exca.graph.Node:
        infra = {"folder": tmp_path / "cache"}
        job = Gated(name="j", flags=str(flags), infra={**infra, "cluster": "local"}).run.node()
        mapped = GatedMap(name="m", flags=str(flags), infra=infra).run.node([1, 2, 3, 4])
        return Gated(name="d", flags=str(flags), infra=infra).run.node(a=mapped, b=job)

    (flags / "gate-j").touch()
    (flags / "gate-m-3").touch()

    not_started: list[str] = []

    def interrupt() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(
            (flags / f"started-{n}").exists() for n in ("j", "m-3")
        ):
            time.sleep(0.02)
        # (sent anyway, the run ends; said below: the Ctrl-C came before what it was for)
        not_started.extend(n for n in ("j", "m-3") if not (flags / f"started-{n}").exists())
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        exca.graph.run(target())
    assert not_started == [], "not started in 60 s (the Ctrl-C came before them)"
    before = _calls(flags)
    assert [(c["name"], c.get("item")) for c in before if c["name"] == "m"] == [
        ("m", 1),
        ("m", 2),
        ("m", 3),
    ]
    (job_call,) = [c for c in before if c["name"] == "j"]
    deadline = time.monotonic() + 30
    while _alive(job_call["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(job_call["pid"])  # (cancelled: not left computing beside the rerun)
    (flags / "gate-j").unlink()
    (flags / "gate-m-3").unlink()
    plan = exca.graph.plan(target())
    assert [(e.status, e.items) for e in plan.entries if e.kind == "map"] == [
        ("missing", "2/4 missing")
    ]
    assert target().result() == "d([10, 20, 30, 40],j(None,None))"
    again = [(c["name"], c.get("item")) for c in _calls(flags)[len(before) :]]
    assert sorted(again, key=str) == [("d", None), ("j", None), ("m", 3), ("m", 4)]


def test_the_topological_order_is_the_standard_librarys() -> None:
    """Plans list their nodes in graphlib's static order (decisions.static_order makes it
    without graphlib on graphs with no cycle): random DAGs, nodes given only as upstream,
    and graphs with a cycle (None: graphlib then names it)."""
    import graphlib

    from exca.graph.decisions import static_order

    rng = random.Random(0)
    cycles = 0
    for _ in range(1000):
        nodes = [("root", f"n{i}") for i in range(rng.randint(0, 30))]
        rng.shuffle(nodes)
        graph = {
            key: list(dict.fromkeys(rng.sample(nodes[:i], rng.randint(0, min(i, 4)))))
            for i, key in enumerate(nodes)
        }
        keys = list(graph)
        rng.shuffle(keys)  # (some nodes only named as upstream)
        graph = {k: graph[k] for k in keys if rng.random() < 0.8 or not graph[k]}
        assert static_order(graph) == list(graphlib.TopologicalSorter(graph).static_order())
        if len(graph) > 2:
            a, b = rng.sample(list(graph), 2)
            graph[a], graph[b] = [*graph[a], b], [*graph[b], a]
            try:
                expected = list(graphlib.TopologicalSorter(graph).static_order())
            except graphlib.CycleError:
                expected, cycles = None, cycles + 1
            assert static_order(graph) == expected
    assert cycles > 100
