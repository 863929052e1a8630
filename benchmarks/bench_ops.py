"""Operating a large cache (issue "operating a cache", item 6): list / explain / clean
times on a folder of 1,000 task configs (plus one of a newer version) and a map of
100,000 items; compaction of the index files of 50 writer sessions.

There are no targets for these: they are reported (the issue asks for the times)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import typing as tp
from pathlib import Path

import common
import models

import exca
import exca.ops
from exca.ops import clean
from exca.storage.cachedict import CacheDict

CONFIGS = 1000
ITEMS = 100_000


def _build(root: Path, configs: int, items: int) -> tuple[float, float]:
    start = time.perf_counter()
    for i in range(configs):
        models.Experiment(
            seed=i, optim={"lr": 0.01 * (1 + i % 7)}, infra={"folder": root}
        ).process()
    models.Experiment(seed=0, infra={"folder": root, "version": "2"}).process()  # a newer version
    build_configs = time.perf_counter() - start
    start = time.perf_counter()
    out = list(models.mapper(root).process(list(range(items))))
    assert len(out) == items
    return build_configs, time.perf_counter() - start


def _cli(*args: tp.Any) -> subprocess.CompletedProcess[str]:
    env = common.clean_env({"PYTHONPATH": str(common.BENCH_DIR)})
    result = subprocess.run(
        [sys.executable, "-m", "exca", *map(str, args)], capture_output=True, text=True, env=env
    )
    assert result.returncode in (0, 1), result.stderr
    return result


def _times(func: tp.Callable[[], tp.Any], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        func()
        out.append(time.perf_counter() - start)
    return out


def bench_large_folder(ctx: common.Context) -> None:
    configs, items = ctx.size(CONFIGS, 100), ctx.size(ITEMS, 5000)
    repeat = min(ctx.repeat, 3)
    root = common.fresh_dir("ops_large")
    try:
        build_configs, build_items = _build(root, configs, items)
        paths = sum(1 for _ in root.rglob("*"))
        notes = f"{configs + 1} task configs + a map of {items} items, {paths} paths"
        ctx.record(
            "O1",
            "exca.ops.inspect(root), in-process",
            _times(lambda: exca.ops.inspect(root), repeat),
            "s",
            notes=f"{notes}; building them: configs {build_configs:.1f}s, map {build_items:.1f}s",
        )
        ctx.record(
            "O2",
            "python -m exca list ROOT (fresh process, CLI startup included)",
            _times(lambda: _cli("list", root), repeat),
            "s",
            floor=_times(lambda: _cli("--help"), repeat),
            floor_label="python -m exca --help",
        )
        ctx.record(
            "O3",
            "python -m exca list ROOT --where optim.lr=0.02",
            _times(lambda: _cli("list", root, "--where", "optim.lr=0.02"), repeat),
            "s",
        )
        ctx.record(
            "O3b",
            "python -m exca list ROOT --where typo=1 (a key no config has: why nothing matched)",
            _times(lambda: _cli("list", root, "--where", "typo=1"), repeat),
            "s",
        )
        node = models.Experiment(seed=5, optim={"lr": 0.5}, infra={"folder": root}).process.node()
        ctx.record(
            "O4",
            f"exca.ops.explain(new config): nearest among {configs + 1}",
            _times(lambda: exca.ops.explain(node), repeat),
            "s",
        )
        map_node = models.mapper(root).process.node(list(range(items + 1000)))
        ctx.record(
            "O5",
            f"exca.ops.explain(map node of {items + 1000} items, 1000 new)",
            _times(lambda: exca.ops.explain(map_node), repeat),
            "s",
        )
        ctx.record(
            "O6",
            "clean.old_versions(root) preview",
            _times(lambda: clean.old_versions(root), repeat),
            "s",
        )
        ctx.record(
            "O7", "clean.orphans(root) preview", _times(lambda: clean.orphans(root), repeat), "s"
        )
        keep = [  # (configs of the root: garbage refuses targets computed nowhere there)
            models.Experiment(
                seed=i, optim={"lr": 0.01 * (1 + i % 7)}, infra={"folder": root}
            ).process.node()
            for i in range(10)
        ]
        ctx.record(
            "O8",
            "clean.garbage(root, 10 targets) dry run",
            _times(lambda: clean.garbage(root, keep), repeat),
            "s",
        )
    finally:
        common.remove(root)


def child_write_session(folder: str, start: int, count: int) -> dict[str, float]:
    cache: CacheDict[tp.Any] = CacheDict(folder)
    with cache.write():
        cache.set_many((str(i), i) for i in range(start, start + count))
    return {"pid": float(os.getpid())}


def bench_compact(ctx: common.Context) -> None:
    sessions, per = ctx.size(50, 10), 200
    folder = common.fresh_dir("ops_compact")
    try:
        for s in range(sessions):  # separate processes: their index files belong to dead writers
            common.child(
                "bench_ops", "child_write_session", folder=str(folder), start=s * per, count=per
            )
        before = len(list(folder.glob("*-info.jsonl")))
        start = time.perf_counter()
        merged, kept = clean.compact(folder, grace_seconds=0)
        seconds = time.perf_counter() - start
        after = len(list(folder.glob("*-info.jsonl")))
        assert len(CacheDict(folder).keys()) == sessions * per
        ctx.record(
            "O9",
            f"clean.compact: {before} index files of dead writers -> {after}",
            [seconds],
            "s",
            notes=f"{merged} files merged, {kept} index lines kept; every entry reads back",
        )
    finally:
        common.remove(folder)


def run(ctx: common.Context) -> None:
    ctx.guard("ops large folder", lambda: bench_large_folder(ctx))
    ctx.guard("ops compact", lambda: bench_compact(ctx))


if __name__ == "__main__":
    common.main(run)
