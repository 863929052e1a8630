"""CacheDict storage: many small arrays (4), big arrays (5), small dicts (6), a miss in a
folder of many ended writers' index files (6c).

Writes are timed in this process, reads by a new CacheDict in a fresh process (after its
imports). Floors do the same work with raw tools: payload bytes appended to one file and
one JSON line per key in another (write); reading and parsing those lines plus
``np.frombuffer`` on an mmap (read).
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import time
import typing as tp
from pathlib import Path

import common
import numpy as np
import orjson

from exca.cachedict import CacheDict


# --- children (fresh processes) -------------------------------------------------------------
def child_read_arrays(folder: str) -> dict[str, float]:
    start = time.perf_counter()
    cd: CacheDict[tp.Any] = CacheDict(folder)
    keys = cd.keys()
    total = 0.0
    for key in keys:
        total += cd[key][-1]  # touch the data (one element: the page must be read)
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "keys": len(keys), "check": float(total)}


def child_read_arrays_raw(folder: str) -> dict[str, float]:
    start = time.perf_counter()
    root = Path(folder)
    with open(root / "data.bin", "rb") as handle:
        buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    index = {}
    with open(root / "index.jsonl", "rb") as handle:
        for line in handle:
            info = orjson.loads(line)
            index[info["key"]] = info
    total = 0.0
    for info in index.values():
        arr = np.frombuffer(buffer, dtype=info["dtype"], count=info["size"], offset=info["offset"])
        total += arr[-1]
    elapsed = time.perf_counter() - start
    return {"seconds": elapsed, "keys": len(index), "check": float(total)}


def child_read_big(folder: str) -> dict[str, float]:
    start = time.perf_counter()
    cd: CacheDict[tp.Any] = CacheDict(folder)
    total = 0.0
    for key in cd:
        total += float(cd[key].sum())
    return {"seconds": time.perf_counter() - start, "check": total}


def child_read_big_raw(folder: str) -> dict[str, float]:
    start = time.perf_counter()
    total = 0.0
    for path in sorted(Path(folder).glob("*.npy")):
        total += float(np.load(path, mmap_mode="r").sum())
    return {"seconds": time.perf_counter() - start, "check": total}


def child_read_dicts(folder: str) -> dict[str, float]:
    start = time.perf_counter()
    cd: CacheDict[tp.Any] = CacheDict(folder)
    count = 0
    for key in cd:
        count += len(cd[key]["c"])
    return {"seconds": time.perf_counter() - start, "keys": count // 2}


def child_read_dicts_raw(folder: str) -> dict[str, float]:
    start = time.perf_counter()
    out = {}
    with open(Path(folder) / "index.jsonl", "rb") as handle:
        for line in handle:
            info = orjson.loads(line)
            out[info["key"]] = info["value"]
    count = sum(len(v["c"]) for v in out.values())
    return {"seconds": time.perf_counter() - start, "keys": count // 2}


# --- writers ------------------------------------------------------------------------------------
def write_cd(folder: Path, pairs: list[tuple[str, tp.Any]], batched: bool = False) -> float:
    cd: CacheDict[tp.Any] = CacheDict(folder)
    common.settle()
    start = time.perf_counter()
    with cd.write():
        if batched:
            cd.set_many(pairs)
        else:
            for key, value in pairs:
                cd[key] = value
    return time.perf_counter() - start


def write_raw_arrays(folder: Path, pairs: list[tuple[str, np.ndarray]]) -> float:
    common.settle()
    start = time.perf_counter()
    offset = 0
    with open(folder / "data.bin", "ab") as data, open(folder / "index.jsonl", "ab") as index:
        for key, value in pairs:
            raw = value.tobytes()
            data.write(raw)
            index.write(
                orjson.dumps(
                    {
                        "key": key,
                        "offset": offset,
                        "dtype": value.dtype.str,
                        "size": value.size,
                        "shape": value.shape,
                    }
                )
                + b"\n"
            )
            offset += len(raw)
    return time.perf_counter() - start


def write_raw_dicts(folder: Path, pairs: list[tuple[str, tp.Any]]) -> float:
    common.settle()
    start = time.perf_counter()
    with open(folder / "index.jsonl", "ab") as index:
        for key, value in pairs:
            index.write(orjson.dumps({"key": key, "value": value}) + b"\n")
    return time.perf_counter() - start


# --- benchmarks ----------------------------------------------------------------------------------
def bench_small_arrays(ctx: common.Context) -> None:
    number = ctx.size(10000, 2000)
    rng = np.random.default_rng(0)
    pairs = [(f"key{i}", rng.random(64)) for i in range(number)]
    writes, batched, raw_writes = [], [], []
    reads, raw_reads = [], []
    for _ in range(ctx.repeat):
        folder, folder_b, folder_raw = (common.fresh_dir(n) for n in ("cd4", "cd4b", "raw4"))
        try:
            writes.append(number / write_cd(folder, pairs))
            batched.append(number / write_cd(folder_b, pairs, batched=True))
            raw_writes.append(number / write_raw_arrays(folder_raw, pairs))
            out = common.child("bench_cachedict", "child_read_arrays", folder=str(folder))
            assert out["keys"] == number, out
            reads.append(number / out["seconds"])
            out = common.child("bench_cachedict", "child_read_arrays_raw", folder=str(folder_raw))
            raw_reads.append(number / out["seconds"])
        finally:
            for path in (folder, folder_b, folder_raw):
                common.remove(path)
    label = "raw append bytes + 1 orjson line/key"
    ctx.record(
        "4a",
        f"CacheDict write {number} (64,) arrays (cd[k]=v)",
        writes,
        "items/s",
        target=150e3,
        floor=raw_writes,
        floor_label=label,
        higher_is_better=True,
    )
    ctx.record(
        "4b",
        f"CacheDict write {number} (64,) arrays (set_many)",
        batched,
        "items/s",
        floor=raw_writes,
        floor_label=label,
        higher_is_better=True,
    )
    ctx.record(
        "4c",
        f"CacheDict read {number} (64,) arrays, new instance, fresh process",
        reads,
        "items/s",
        target=120e3,
        floor=raw_reads,
        floor_label="orjson.loads lines + np.frombuffer(mmap)",
        higher_is_better=True,
    )


def bench_big_arrays(ctx: common.Context) -> None:
    number = ctx.size(100, 10)
    base = np.random.default_rng(0).random((1000, 1000), dtype=np.float32)
    writes, raw_writes, reads, raw_reads = [], [], [], []
    repeat = min(ctx.repeat, 3)
    for rep in range(repeat):
        folder, folder_raw = common.fresh_dir("cd5"), common.fresh_dir("raw5")
        try:

            def exca_write(folder: Path = folder) -> float:
                cd: CacheDict[tp.Any] = CacheDict(folder)
                start = time.perf_counter()
                with cd.write():
                    for i in range(number):
                        base[0, 0] = i
                        cd[f"arr{i}"] = base
                return time.perf_counter() - start

            def raw_write(folder_raw: Path = folder_raw) -> float:
                start = time.perf_counter()
                for i in range(number):
                    base[0, 0] = i
                    np.save(folder_raw / f"arr{i:04d}.npy", base)
                return time.perf_counter() - start

            # alternate the order (page cache writeback of the first disturbs the second)
            if rep % 2:
                raw_writes.append(raw_write())
                writes.append(exca_write())
            else:
                writes.append(exca_write())
                raw_writes.append(raw_write())
            reads.append(
                common.child("bench_cachedict", "child_read_big", folder=str(folder))["seconds"]
            )
            raw_reads.append(
                common.child("bench_cachedict", "child_read_big_raw", folder=str(folder_raw))[
                    "seconds"
                ]
            )
        finally:
            common.remove(folder)
            common.remove(folder_raw)
    gb = number * base.nbytes / 1e9
    ctx.record(
        "5a",
        f"CacheDict write {number} (1000,1000) float32 ({gb:.1f} GB)",
        writes,
        "s",
        target=2 * common.stats(raw_writes)["median"],
        floor=raw_writes,
        floor_label="np.save per array",
        notes="target: 2x the floor",
    )
    ctx.record(
        "5b",
        f"CacheDict read+sum {number} (1000,1000) float32, fresh process",
        reads,
        "s",
        target=2 * common.stats(raw_reads)["median"],
        floor=raw_reads,
        floor_label="np.load(mmap_mode=r).sum()",
        notes="target: 2x the floor",
    )


def bench_small_dicts(ctx: common.Context) -> None:
    number = ctx.size(10000, 2000)
    pairs = [(f"key{i}", {"a": i, "b": "text", "c": [1.5, 2]}) for i in range(number)]
    writes, raw_writes, reads, raw_reads = [], [], [], []
    for _ in range(ctx.repeat):
        folder, folder_raw = common.fresh_dir("cd6"), common.fresh_dir("raw6")
        try:
            writes.append(number / write_cd(folder, pairs))
            raw_writes.append(number / write_raw_dicts(folder_raw, pairs))
            out = common.child("bench_cachedict", "child_read_dicts", folder=str(folder))
            assert out["keys"] == number, out
            reads.append(number / out["seconds"])
            out = common.child("bench_cachedict", "child_read_dicts_raw", folder=str(folder_raw))
            raw_reads.append(number / out["seconds"])
        finally:
            common.remove(folder)
            common.remove(folder_raw)
    ctx.record(
        "6a",
        f"CacheDict write {number} small dicts",
        writes,
        "items/s",
        floor=raw_writes,
        floor_label="orjson.dumps line per key",
        higher_is_better=True,
    )
    ctx.record(
        "6b",
        f"CacheDict read {number} small dicts, fresh process",
        reads,
        "items/s",
        floor=raw_reads,
        floor_label="orjson.loads per line",
        higher_is_better=True,
    )


def _write_one(folder: str, writer: int) -> None:
    cd: CacheDict[tp.Any] = CacheDict(folder=folder)
    with cd.write():
        for i in range(5):
            cd[f"w{writer}-{i}"] = {"i": i}


def bench_miss_many_writers(ctx: common.Context) -> None:
    """A key absent from a folder of 200 index files whose writers' processes ended (as
    after 200 jobs or script runs): a miss reads the folder again to find new writers."""
    writers = ctx.size(200, 50)
    folder = common.fresh_dir("cd6c")
    try:
        fork = multiprocessing.get_context("fork")
        for writer in range(writers):  # (one process each: one index file each)
            proc = fork.Process(target=_write_one, args=(str(folder), writer))
            proc.start()
            proc.join()
        cd: CacheDict[tp.Any] = CacheDict(folder=folder)
        assert len(cd) == 5 * writers
        misses, floors = [], []
        for _ in range(ctx.repeat):
            for _ in range(3):  # (warm-up: the first misses check the writers' processes)
                assert "absent" not in cd
            loops = 200
            start = time.perf_counter()
            for _ in range(loops):
                "absent" in cd  # noqa: B015
            misses.append((time.perf_counter() - start) / loops)
            start = time.perf_counter()
            for _ in range(loops):
                [e.name for e in os.scandir(folder) if e.name.endswith("-info.jsonl")]
            floors.append((time.perf_counter() - start) / loops)
    finally:
        common.remove(folder)
    ctx.record(
        "6c",
        f"CacheDict miss (`key in cd`) in a folder of {writers} ended writers' index files",
        misses,
        "s",
        floor=floors,
        floor_label="os.scandir of the folder",
    )


def run(ctx: common.Context) -> None:
    ctx.guard("4 small arrays", lambda: bench_small_arrays(ctx))
    ctx.guard("5 big arrays", lambda: bench_big_arrays(ctx))
    ctx.guard("6 small dicts", lambda: bench_small_dicts(ctx))
    ctx.guard("6c miss", lambda: bench_miss_many_writers(ctx))


if __name__ == "__main__":
    common.main(run)
