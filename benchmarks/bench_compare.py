"""exca vs joblib.Memory on the same workloads ("operating a cache", item 6).

* a cached function call returning ``np.zeros(64)``: joblib ``memory.cache(f)(x)`` hit vs
  an exca TaskInfra hit, warm (same process, same object), and on a new instance (new
  config in the same process; and the first call in a fresh process);
* per item: joblib caching a function per item (``[g(i) for i in items]``) vs exca
  MapInfra (``list(obj.process(items))``), 10k items, new and cached (cached: same
  process, and a fresh process).

Here the "floor" column holds the joblib figure: ratio > 1 means exca is slower.
"""

from __future__ import annotations

import time
import typing as tp

import common
import joblib
import models


def hit(x: int) -> tp.Any:
    return models.zeros64(x)


# --- children -------------------------------------------------------------------------------------
def child_joblib_first_hit(folder: str) -> dict[str, float]:
    memory = joblib.Memory(folder, verbose=0)
    cached = memory.cache(hit)
    start = time.perf_counter()
    value = cached(0)
    assert value.shape == (64,)
    return {"first_call": time.perf_counter() - start}


def child_joblib_items(folder: str, number: int) -> dict[str, float]:
    memory = joblib.Memory(folder, verbose=0)
    cached = memory.cache(models.zeros64)
    start = time.perf_counter()
    out = [cached(i) for i in range(number)]
    assert len(out) == number
    return {"seconds": time.perf_counter() - start}


# --- benchmarks ------------------------------------------------------------------------------------
def bench_call(ctx: common.Context) -> None:
    number = ctx.size(2000, 300)
    runs = ctx.size(ctx.repeat, 3)
    folder, jfolder = common.fresh_dir("cmp_exca"), common.fresh_dir("cmp_joblib")
    try:
        memory = joblib.Memory(str(jfolder), verbose=0)
        jcached = memory.cache(hit)
        objs = [models.Hit(x=x, infra={"folder": folder}) for x in range(100)]
        for x, obj in enumerate(objs):
            obj.process()
            jcached(x)
        warm = common.per_call(lambda i: objs[i % 100].process(), number, ctx.repeat)
        jwarm = common.per_call(lambda i: jcached(i % 100), number, ctx.repeat)
        new = []
        for _ in range(ctx.repeat):
            fresh = [models.Hit(x=x, infra={"folder": folder}) for x in range(100)]
            start = time.perf_counter()
            for obj in fresh:
                obj.process()
            new.append((time.perf_counter() - start) / 100)
        first = [
            common.child("bench_infra", "child_task_hit", folder=str(folder), count=1)["first_call"]
            for _ in range(runs)
        ]
        jfirst = [
            common.child("bench_compare", "child_joblib_first_hit", folder=str(jfolder))[
                "first_call"
            ]
            for _ in range(runs)
        ]
    finally:
        common.remove(folder)
        common.remove(jfolder)
    ctx.record(
        "C1",
        "cached call, warm (same process, same object) vs joblib",
        warm,
        "s",
        floor=jwarm,
        floor_label="joblib memory.cache(f)(x) hit",
    )
    ctx.record(
        "C2",
        "cached call, new config instance (same process) vs joblib",
        new,
        "s",
        floor=jwarm,
        floor_label="joblib hit (same process)",
    )
    ctx.record(
        "C3",
        "cached call, first call in a fresh process vs joblib",
        first,
        "s",
        floor=jfirst,
        floor_label="joblib hit, first call in a fresh process",
    )


def bench_items(ctx: common.Context) -> None:
    number = ctx.size(10000, 1000)
    items = list(range(number))
    repeat = min(ctx.repeat, 2)  # joblib needs ~20 s per 10k new items
    new, jnew, cached, jcached_rates, fresh, jfresh = [], [], [], [], [], []
    for rep in range(repeat):
        folder, jfolder = common.fresh_dir("cmpmap"), common.fresh_dir("cmpjob")
        try:
            obj = models.mapper(folder, param=rep)
            new.append(number / common.timed(lambda o=obj: list(o.process(items))))
            memory = joblib.Memory(str(jfolder), verbose=0)
            jcached = memory.cache(models.zeros64)
            jnew.append(number / common.timed(lambda f=jcached: [f(i) for i in items]))
            # cached: a new instance, same process
            obj2 = models.mapper(folder, param=rep)
            cached.append(number / common.timed(lambda o=obj2: list(o.process(items))))
            jcached_rates.append(number / common.timed(lambda f=jcached: [f(i) for i in items]))
            seconds = common.child(
                "bench_map", "child_map", folder=str(folder), number=number, param=rep
            )["seconds"]
            fresh.append(number / seconds)
            seconds = common.child(
                "bench_compare",
                "child_joblib_items",
                timeout=600,
                folder=str(jfolder),
                number=number,
            )["seconds"]
            jfresh.append(number / seconds)
        finally:
            common.remove(folder)
            common.remove(jfolder)
    ctx.record(
        "C4",
        f"per item, {number} new items: MapInfra vs joblib per-item cache",
        new,
        "items/s",
        floor=jnew,
        floor_label="joblib memory.cache(f) per item",
        higher_is_better=True,
    )
    ctx.record(
        "C5",
        f"per item, {number} cached, new instance (same process) vs joblib",
        cached,
        "items/s",
        floor=jcached_rates,
        floor_label="joblib per item hits",
        higher_is_better=True,
    )
    ctx.record(
        "C6",
        f"per item, {number} cached, fresh process vs joblib",
        fresh,
        "items/s",
        floor=jfresh,
        floor_label="joblib per item hits, fresh process",
        higher_is_better=True,
    )


def run(ctx: common.Context) -> None:
    ctx.guard("compare call", lambda: bench_call(ctx))
    ctx.guard("compare items", lambda: bench_items(ctx))


if __name__ == "__main__":
    common.main(run)
