"""Pipelines: plan of a 10,000-node DAG (12), scheduler overhead per cached node (13a/b)
and per computed node of a long chain (13c), number of sbatch calls for a 30-node 3-level DAG on Slurm, waiting and detached (14).

The DAG is made of groups of 10 nodes: three chains ``Source -> Step(k=1) -> Step(k=2)``
joined by one ``Join`` (fan-in of 3). One ``Step`` config per level is shared by every
chain (as a user applies one preprocessing config to many inputs).
"""

from __future__ import annotations

import functools
import os
import stat
import time
import typing as tp
from pathlib import Path

import bench_infra
import common
import models

import exca
import exca.graph


def build_dag(folder: str, groups: int, **infra: tp.Any) -> dict[str, list[tp.Any]]:
    """Nodes of ``groups`` groups (see module docstring), by role."""
    settings = {"folder": folder, **infra}
    step1 = models.Step(k=1, infra=settings)
    step2 = models.Step(k=2, infra=settings)
    join = models.Join(infra=settings)
    out: dict[str, list[tp.Any]] = {"source": [], "step1": [], "step2": [], "join": []}
    for g in range(groups):
        chains = []
        for c in range(3):
            source = models.Source(i=3 * g + c, infra=settings).process.node()
            s1 = step1.process.node(source)
            s2 = step2.process.node(s1)
            out["source"].append(source)
            out["step1"].append(s1)
            out["step2"].append(s2)
            chains.append(s2)
        out["join"].append(join.process.node(*chains))
    return out


def _half_cached_targets(nodes: dict[str, list[tp.Any]]) -> list[tp.Any]:
    """Per group: Step1 of chains 0 and 1 (with their sources) and the source of chain 2:
    5 of the 10 nodes of every group."""
    targets = []
    for g in range(len(nodes["join"])):
        targets += [nodes["step1"][3 * g], nodes["step1"][3 * g + 1], nodes["source"][3 * g + 2]]
    return targets


# --- children -------------------------------------------------------------------------------------
def child_populate(folder: str, groups: int, everything: bool = False) -> dict[str, float]:
    nodes = build_dag(folder, groups)
    targets = nodes["join"] if everything else _half_cached_targets(nodes)
    start = time.perf_counter()
    exca.graph.run(*targets, progress=False)
    return {"seconds": time.perf_counter() - start}


def _wrap(owner: tp.Any, name: str, totals: dict[str, float], label: str) -> None:
    """Add the time spent in ``owner.name`` to ``totals[label]`` (skipped if it is gone)."""
    func = getattr(owner, name, None)
    if func is None:
        return

    @functools.wraps(func)
    def timed(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        start = time.perf_counter()
        try:
            return func(*args, **kwargs)
        finally:
            totals[label] = totals.get(label, 0.0) + time.perf_counter() - start

    setattr(owner, name, timed)


def child_plan(folder: str, groups: int) -> dict[str, tp.Any]:
    from exca.graph import decisions

    start = time.perf_counter()
    nodes = build_dag(folder, groups)
    built = time.perf_counter() - start
    totals: dict[str, float] = {}
    _wrap(decisions.Graph, "__init__", totals, "graph (collect + topological order)")
    _wrap(decisions.Graph, "decide", totals, "decide (cache/registry reads)")
    start = time.perf_counter()
    plan = exca.graph.plan(*nodes["join"])
    planned = time.perf_counter() - start
    start = time.perf_counter()
    text = str(plan)
    rendered = time.perf_counter() - start
    split = dict(totals)
    split["plan entries + packing (rest of plan())"] = planned - sum(totals.values())
    split["render str(plan)"] = rendered
    return {
        "build_nodes": built,
        "plan": planned,
        "render": rendered,
        "split": split,
        "counts": plan.counts(),
        "nodes": len(plan.entries),
        "lines": text.count("\n") + 1,
    }


def child_run_cached(folder: str, groups: int, targets: str) -> dict[str, tp.Any]:
    nodes = build_dag(folder, groups)
    chosen = nodes["join"] if targets == "sinks" else [n for role in nodes.values() for n in role]
    total = sum(len(v) for v in nodes.values())
    start = time.perf_counter()
    scheduler = exca.graph.run(*chosen, progress=False)
    elapsed = time.perf_counter() - start
    actions: dict[str, int] = {}
    for run in scheduler.runs.values():
        actions[run.action] = actions.get(run.action, 0) + 1
    assert "compute" not in actions, actions
    # a single cached task called directly (new instances, after the above warmed up)
    per = []
    for i in range(min(100, 3 * groups)):
        obj = models.Source(i=i, infra={"folder": folder})
        t0 = time.perf_counter()
        obj.process()
        per.append(time.perf_counter() - t0)
    per.sort()
    return {
        "seconds": elapsed,
        "nodes": total,
        "actions": actions,
        "direct_hit": per[len(per) // 2],
    }


def child_run_chain(folder: str, nodes: int, shape: str) -> dict[str, tp.Any]:
    """run() computing ``nodes`` new inline tasks: a chain (each Step reads the previous
    one: one scheduler wave per node) or independent Sources (one wave)."""
    if shape == "chain":
        node = models.Source(i=0, infra={"folder": folder}).process.node()
        for k in range(1, nodes):
            node = models.Step(k=k, infra={"folder": folder}).process.node(node)
        targets = [node]
    else:
        targets = [
            models.Source(i=i, infra={"folder": folder}).process.node() for i in range(nodes)
        ]
    start = time.perf_counter()
    scheduler = exca.graph.run(*targets, progress=False)
    elapsed = time.perf_counter() - start
    assert all(r.state == "done" for r in scheduler.runs.values())
    return {"seconds": elapsed}


def child_sbatch_count(folder: str, logfile: str, wait: bool, max_wait: float) -> dict[str, tp.Any]:
    """30 nodes in 3 levels (10 chains Source -> Step -> Step), cluster='slurm'."""
    settings = {
        "folder": folder,
        "cluster": "slurm",
        "slurm_partition": "debug",
        "mem_gb": 1,
        "timeout_min": 10,
    }
    step1 = models.Step(k=1, infra=settings)
    step2 = models.Step(k=2, infra=settings)
    targets = []
    for c in range(10):
        source = models.Source(i=c, infra=settings).process.node()
        targets.append(step2.process.node(step1.process.node(source)))
    start = time.perf_counter()
    exca.graph.run(*targets, wait=wait, progress=False)
    returned = time.perf_counter() - start
    done = None
    if not wait:  # detached: wait here for the workers to finish (results in the cache)
        deadline = time.monotonic() + max_wait
        while time.monotonic() < deadline:
            states = [exca.graph.status(t) for t in targets]
            if all(s in ("completed", "failed") for s in states):
                done = time.perf_counter() - start
                break
            time.sleep(1)
    results = []
    for t in targets:
        try:
            results.append(t.result() if wait or done is not None else None)
        except Exception as e:
            results.append(f"{type(e).__name__}: {e}")
    calls = Path(logfile).read_text().splitlines() if Path(logfile).exists() else []
    return {
        "returned_after": returned,
        "completed_after": done,
        "sbatch_calls": len(calls),
        "arrays": [
            c.split("--array=")[-1].strip() if "--array=" in c else "single job" for c in calls
        ],
        "results": results,
    }


# --- benchmarks ------------------------------------------------------------------------------------
def bench_plan(ctx: common.Context) -> None:
    groups = ctx.size(1000, 100)
    folder = common.fresh_dir("plan12")
    try:
        populate = common.child(
            "bench_graph", "child_populate", timeout=900, folder=str(folder), groups=groups
        )
        outs = [
            common.child(
                "bench_graph", "child_plan", timeout=900, folder=str(folder), groups=groups
            )
        ]
        # a plan far over its target is not repeated (keeps the harness within its budget)
        while len(outs) < min(ctx.repeat, 3) and outs[0]["plan"] < 10:
            outs.append(
                common.child(
                    "bench_graph", "child_plan", timeout=900, folder=str(folder), groups=groups
                )
            )
    finally:
        common.remove(folder)
    splits = {k: common.stats([o["split"][k] for o in outs])["median"] for k in outs[0]["split"]}
    split_text = "; ".join(f"{k}: {common.fmt_value(v, 's')}" for k, v in splits.items())
    build = common.stats([o["build_nodes"] for o in outs])["median"]
    ctx.record(
        "12",
        f"plan of a {outs[0]['nodes']}-node DAG, half cached (fresh process)",
        [o["plan"] for o in outs],
        "s",
        target=1.0,
        notes=f"split: {split_text}; building the nodes before (not timed): {common.fmt_value(build, 's')}; "
        f"counts {outs[0]['counts']}",
        extra={
            "split_s": splits,
            "build_nodes_s": build,
            "render_s": common.stats([o["render"] for o in outs])["median"],
            "counts": outs[0]["counts"],
            "populate_s": populate["seconds"],
        },
    )


def bench_scheduler_overhead(ctx: common.Context) -> None:
    groups = ctx.size(100, 30)
    folder = common.fresh_dir("sched13")
    try:
        populate = common.child(
            "bench_graph",
            "child_populate",
            timeout=600,
            folder=str(folder),
            groups=groups,
            everything=True,
        )
        runs = min(ctx.repeat, 3)
        sinks = [
            common.child(
                "bench_graph",
                "child_run_cached",
                folder=str(folder),
                groups=groups,
                targets="sinks",
            )
            for _ in range(runs)
        ]
        every = [
            common.child(
                "bench_graph", "child_run_cached", folder=str(folder), groups=groups, targets="all"
            )
            for _ in range(runs)
        ]
    finally:
        common.remove(folder)
    total = sinks[0]["nodes"]
    direct = [o["direct_hit"] for o in every + sinks]
    ctx.record(
        "13a",
        f"run() on an all-cached DAG ({total} nodes, every node a target): per node",
        [o["seconds"] / total for o in every],
        "s",
        floor=direct,
        floor_label="single cached task called directly",
        extra={
            "actions": every[0]["actions"],
            "total_s": common.stats([o["seconds"] for o in every]),
            "populate_s": populate["seconds"],
        },
    )
    ctx.record(
        "13b",
        f"run() on an all-cached DAG ({total} nodes, {groups} sinks as targets): per node",
        [o["seconds"] / total for o in sinks],
        "s",
        floor=direct,
        floor_label="single cached task called directly",
        notes="only the sinks are checked: their upstream is 'not needed'",
        extra={
            "actions": sinks[0]["actions"],
            "total_s": common.stats([o["seconds"] for o in sinks]),
        },
    )


def bench_chain(ctx: common.Context) -> None:
    nodes = ctx.size(2000, 200)
    runs = min(ctx.repeat, 3)
    outs: dict[str, list[float]] = {"chain": [], "fan": []}
    for _ in range(runs):
        for shape in outs:
            folder = common.fresh_dir("chain13")
            try:
                out = common.child(
                    "bench_graph",
                    "child_run_chain",
                    timeout=600,
                    folder=str(folder),
                    nodes=nodes,
                    shape=shape,
                )
            finally:
                common.remove(folder)
            outs[shape].append(out["seconds"] / nodes)
    ctx.record(
        "13c",
        f"run() computing a chain of {nodes} new inline tasks (one wave per node): per node",
        outs["chain"],
        "s",
        floor=outs["fan"],
        floor_label=f"{nodes} independent new tasks in one run()",
    )


def _sbatch_wrapper(directory: Path, logfile: Path) -> None:
    real = "/usr/bin/sbatch"
    script = directory / "sbatch"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$(date +%s.%N) $* $(grep -h -o -- "--array=[^ ]*" "$@" 2>/dev/null | tr "\\n" " ")" >> "{logfile}"\n'
        f'exec {real} "$@"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def bench_sbatch_count(ctx: common.Context) -> None:
    up, why = bench_infra.slurm_up()
    if not up:
        print(f"   14 skipped: {why}", flush=True)
        ctx.errors.append({"name": "14 sbatch count", "error": f"skipped: {why}"})
        return
    for wait in (True, False):
        folder = common.fresh_dir("sbatch14")
        wrapper = folder / "bin"
        wrapper.mkdir()
        logfile = folder / "sbatch.log"
        _sbatch_wrapper(wrapper, logfile)
        env = common.clean_env({"PATH": f"{wrapper}{os.pathsep}{os.environ.get('PATH', '')}"})
        queued = bench_infra.queue_length()
        try:
            out = common.child(
                "bench_graph",
                "child_sbatch_count",
                timeout=900,
                env=env,
                folder=str(folder / "cache"),
                logfile=str(logfile),
                wait=wait,
                max_wait=600,
            )
        finally:
            common.remove(folder)
        label = "waiting run(target)" if wait else "detached run(target, wait=False)"
        bad = [r for r in out["results"] if not isinstance(r, int)]
        timing = f"array sizes {out['arrays']}; returned after {out['returned_after']:.1f}s"
        if out["completed_after"] is not None:
            timing += f", all done after {out['completed_after']:.1f}s"
        ctx.record(
            "14a" if wait else "14b",
            f"sbatch calls, 30-node 3-level DAG on Slurm, {label}",
            [out["sbatch_calls"]],
            "count",
            target=3,
            notes=f"{timing}; jobs in the queue before: {queued}"
            + (f"; bad results: {bad[:2]}" if bad else ""),
            extra=out,
        )


def run(ctx: common.Context) -> None:
    ctx.guard("12 plan", lambda: bench_plan(ctx))
    ctx.guard("13 scheduler overhead", lambda: bench_scheduler_overhead(ctx))
    ctx.guard("13c chain", lambda: bench_chain(ctx))
    ctx.guard("14 sbatch count", lambda: bench_sbatch_count(ctx))


if __name__ == "__main__":
    common.main(run)
