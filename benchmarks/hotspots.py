"""Where the time goes: cProfile of the benchmark workloads (not run by run.py).

    python benchmarks/hotspots.py                 # every scenario
    python benchmarks/hotspots.py uid map_new     # some of them
    python benchmarks/hotspots.py --list

Prints, per scenario, the top functions by own time (tottime) with their share of the
profiled total, and the top exca functions by cumulative time. cProfile slows small
Python functions more than C code: use the shares to rank, not as absolute times.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
import typing as tp
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
import models
import numpy as np

import exca
from exca.cachedict import CacheDict

Workload = tp.Callable[[], tp.Any]
SCENARIOS: dict[str, tp.Callable[[Path], Workload]] = {}
WRITING = ("cd_write", "map_new", "task_first", "map_processpool", "map_partial")


def scenario(func: tp.Callable[[Path], Workload]) -> tp.Callable[[Path], Workload]:
    SCENARIOS[func.__name__] = func
    return func


@scenario
def creation(tmp: Path) -> Workload:
    return lambda: [models.TutorialTask(param=i) for i in range(20000)]


@scenario
def uid(tmp: Path) -> Workload:
    models.make_experiment(-1).infra.uid()
    objs = [models.make_experiment(i) for i in range(2000)]
    return lambda: [o.infra.uid() for o in objs]


@scenario
def confdict(tmp: Path) -> Workload:
    import bench_config

    cd = exca.ConfDict(bench_config._confdict_input())
    return lambda: [cd.to_uid() for _ in range(500)]


@scenario
def cd_write(tmp: Path) -> Workload:
    rng = np.random.default_rng(0)
    pairs = [(f"key{i}", rng.random(64)) for i in range(10000)]

    def work() -> None:
        cd: CacheDict[tp.Any] = CacheDict(tmp / "cd_write")
        with cd.write():
            for key, value in pairs:
                cd[key] = value

    return work


@scenario
def task_hit_new(tmp: Path) -> Workload:
    for x in range(600):
        models.Hit(x=x, infra={"folder": tmp / "hit"}).process()
    objs = [models.Hit(x=x, infra={"folder": tmp / "hit"}) for x in range(100, 600)]
    models.Hit(x=0, infra={"folder": tmp / "hit"}).process()
    return lambda: [o.process() for o in objs]


@scenario
def task_hit_warm(tmp: Path) -> Workload:
    obj = models.Hit(x=0, infra={"folder": tmp / "hitwarm"})
    obj.process()
    return lambda: [obj.process() for _ in range(2000)]


@scenario
def task_first(tmp: Path) -> Workload:
    models.Hit(x=-1, infra={"folder": tmp / "first"}).process()
    objs = [models.Hit(x=x, infra={"folder": tmp / "first"}) for x in range(300)]
    return lambda: [o.process() for o in objs]


def _items() -> list[int]:
    return list(range(10000))


@scenario
def map_new(tmp: Path) -> Workload:
    list(models.mapper(tmp / "warm", param=-1).process(_items()[:100]))
    obj = models.mapper(tmp / "map_new")
    return lambda: list(obj.process(_items()))


@scenario
def map_cached(tmp: Path) -> Workload:
    list(models.mapper(tmp / "map_cached").process(_items()))
    obj = models.mapper(tmp / "map_cached")  # new instance (this process, warm code)
    return lambda: list(obj.process(_items()))


@scenario
def map_warm(tmp: Path) -> Workload:
    obj = models.mapper(tmp / "map_warm")
    list(obj.process(_items()))
    return lambda: [list(obj.process(_items())) for _ in range(5)]


@scenario
def map_partial(tmp: Path) -> Workload:
    list(models.mapper(tmp / "map_partial").process(_items()[:9500]))
    obj = models.mapper(tmp / "map_partial")
    return lambda: list(obj.process(_items()))


@scenario
def map_processpool(tmp: Path) -> Workload:
    obj = models.mapper(tmp / "pool", cluster="processpool")
    return lambda: list(obj.process(_items()))


@scenario
def plan(tmp: Path) -> Workload:
    import bench_graph

    groups = int(os.environ.get("HOTSPOTS_GROUPS", "300"))
    bench_graph.child_populate(str(tmp / "plan"), groups)
    nodes = bench_graph.build_dag(str(tmp / "plan"), groups)
    return lambda: str(exca.graph.plan(*nodes["join"]))


@scenario
def run_cached(tmp: Path) -> Workload:
    import bench_graph

    bench_graph.child_populate(str(tmp / "run"), 100, everything=True)
    nodes = bench_graph.build_dag(str(tmp / "run"), 100)
    every = [n for role in nodes.values() for n in role]
    return lambda: exca.graph.run(*every, progress=False)


def report(name: str, profile: cProfile.Profile, elapsed: float, top: int) -> None:
    stats = pstats.Stats(profile)
    raw = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0
    rows = sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]
    print(f"\n## {name}: {elapsed:.3f} s unprofiled; profiled own-time total {total:.3f} s")
    print("   own%   cum%    calls  function")
    for (path, line, func), (_, ncalls, tottime, cumtime, _) in rows:
        where = f"{Path(path).parent.name}/{Path(path).name}:{line}" if path != "~" else "builtin"
        print(
            f"  {100 * tottime / total:5.1f}  {100 * cumtime / total:5.1f} {ncalls:8d}  {func}  ({where})"
        )
    exca_rows = sorted(
        ((k, v) for k, v in raw.items() if "/exca/" in k[0]), key=lambda kv: -kv[1][3]
    )[:top]
    print("   -- exca functions by cumulative share --")
    for (path, line, func), (_, ncalls, _, cumtime, _) in exca_rows:
        print(
            f"  cum {100 * cumtime / total:5.1f}%  {ncalls:8d}  {func}  ({Path(path).parent.name}/{Path(path).name}:{line})"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("names", nargs="*")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    if args.list:
        print("\n".join(SCENARIOS))
        return
    for name in args.names or list(SCENARIOS):
        tmp = common.fresh_dir(f"hot-{name}")
        try:
            work = SCENARIOS[name](tmp)
            start = time.perf_counter()
            work()  # unprofiled reference (on a scenario that writes, this run writes)
            elapsed = time.perf_counter() - start
            if name in WRITING:
                common.remove(tmp)
                tmp.mkdir(parents=True)
            work = SCENARIOS[name](tmp)  # new objects: the profiled run is not warmer
            profile = cProfile.Profile()
            profile.enable()
            work()
            profile.disable()
            report(name, profile, elapsed, args.top)
        except Exception as e:
            print(f"\n## {name}: failed: {type(e).__name__}: {e}")
        finally:
            common.remove(tmp)


if __name__ == "__main__":
    main()
