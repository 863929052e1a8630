"""Shared helpers of the benchmark harness: timing, results, subprocesses, machine load.

Every bench module exposes ``run(ctx) -> None`` which records results with
``ctx.record(...)``; ``run.py`` executes each module in its own subprocess
(``python benchmarks/bench_x.py --out file.json``), so a crash or a hang in one
module never stops the others.

Measurement processes run with ``PYTHONDONTWRITEBYTECODE`` removed from the environment
(after ``python -m compileall -q exca``), so imports use cached bytecode as they do for
a user.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
import typing as tp
import uuid
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
TMP = BENCH_DIR / ".tmp"
PYTHON = sys.executable


# --- environment --------------------------------------------------------------------------
def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of measurement processes: bytecode caching on, benchmarks importable."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    paths = [str(BENCH_DIR), str(ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("OMP_NUM_THREADS", "1")  # numpy sums: no thread pool noise
    env["TQDM_DISABLE"] = "1"
    if extra:
        env.update(extra)
    return env


def loadavg() -> tuple[float, float, float]:
    parts = Path("/proc/loadavg").read_text().split()
    return float(parts[0]), float(parts[1]), float(parts[2])


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields), idle


def busy_fraction(window: float = 0.5) -> float:
    """Share of all cores busy over a short window (our own processes are idle then)."""
    total0, idle0 = _cpu_times()
    time.sleep(window)
    total1, idle1 = _cpu_times()
    total = max(total1 - total0, 1)
    return 1.0 - (idle1 - idle0) / total


def wait_for_quiet(
    max_wait: float, load_limit: float = 0.5, busy_limit: float = 0.15
) -> dict[str, tp.Any]:
    """Wait (up to max_wait seconds) until the 1-min load is below load_limit, or at least
    until the cores are idle right now; returns what was seen (recorded with results)."""
    start = time.monotonic()
    busy = busy_fraction()
    while True:
        load = loadavg()
        if load[0] < load_limit:
            break
        waited = time.monotonic() - start
        if waited >= max_wait:
            break
        # our own previous measurements keep the 1-min average up for a while: once the
        # cores are idle right now, a short wait is enough
        if busy < busy_limit and waited >= min(max_wait, 20):
            break
        time.sleep(2)
        busy = busy_fraction()
    return {
        "loadavg": list(loadavg()),
        "busy_now": round(busy, 3),
        "waited_s": round(time.monotonic() - start, 1),
    }


def machine_info() -> dict[str, tp.Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    versions = {}
    for name in ("exca", "pydantic", "numpy", "orjson", "submitit", "joblib"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[name] = version(name)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mem,
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "versions": versions,
        "disk_tmp": str(TMP),
    }


# --- timing -------------------------------------------------------------------------------
def stats(values: tp.Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def per_call(
    func: tp.Callable[[int], tp.Any], number: int, repeat: int, warmup: int = 1
) -> list[float]:
    """Seconds per call of ``func(i)`` for i in range(number), one figure per repetition."""
    for _ in range(warmup):
        for i in range(min(number, 200)):
            func(i)
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        for i in range(number):
            func(i)
        out.append((time.perf_counter() - start) / number)
    return out


def settle() -> None:
    """A full collection of the cyclic GC before an in-process timed section that
    allocates much (10k entries): it then pays only the collections its own allocations
    trigger, not a full one (20-30 ms in a benchmark process) owed to what an earlier
    step (another row, a floor) left behind. Not before short sections (a warm call of a
    few ms): the collection's walk of every object leaves the CPU caches cold."""
    gc.collect()


def timed(func: tp.Callable[..., tp.Any], *args: tp.Any) -> float:
    start = time.perf_counter()
    func(*args)
    return time.perf_counter() - start


def fresh_dir(name: str) -> Path:
    """A new empty folder under benchmarks/.tmp (same disk as the repository, not tmpfs)."""
    path = TMP / f"{name}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --- subprocesses --------------------------------------------------------------------------
def child(
    module: str,
    func: str,
    timeout: float = 300,
    env: dict[str, str] | None = None,
    **kwargs: tp.Any,
) -> tp.Any:
    """Run ``benchmarks/<module>.py:<func>(**kwargs)`` in a fresh interpreter; returns the
    JSON value the function returned (printed by the child on its last stdout line)."""
    code = (
        "import json, sys\n"
        f"import {module} as m\n"
        "kwargs = json.loads(sys.argv[1])\n"
        f"out = m.{func}(**kwargs)\n"
        "sys.stdout.write('\\n@@RESULT@@' + json.dumps(out) + '\\n')\n"
    )
    proc = subprocess.run(
        [PYTHON, "-c", code, json.dumps(kwargs)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or clean_env(),
        cwd=str(ROOT),
    )
    marker = "@@RESULT@@"
    if proc.returncode != 0 or marker not in proc.stdout:
        raise RuntimeError(
            f"child {module}.{func} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return json.loads(proc.stdout.rsplit(marker, 1)[1].strip())


# --- results --------------------------------------------------------------------------------
class Context:
    """What a bench module gets: sizes (quick mode), repetitions and the result list."""

    def __init__(self, quick: bool, repeat: int, max_wait: float) -> None:
        self.quick = quick
        self.repeat = repeat
        self.max_wait = max_wait
        self.results: list[dict[str, tp.Any]] = []
        self.errors: list[dict[str, str]] = []
        self.conditions: dict[str, tp.Any] = {}

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def record(
        self,
        id: str,
        name: str,
        values: tp.Sequence[float],
        unit: str,
        *,
        target: float | None = None,
        floor: tp.Sequence[float] | None = None,
        floor_label: str = "",
        higher_is_better: bool = False,
        notes: str = "",
        extra: dict[str, tp.Any] | None = None,
    ) -> dict[str, tp.Any]:
        """Record one measurement (``values``: one figure per repetition, in ``unit``).

        ratio = how many times slower than the floor (>1: slower), for times and rates alike.
        """
        values = list(values)
        figure = stats(values)
        best = figure["max"] if higher_is_better else figure["min"]
        floor_stats = stats(list(floor)) if floor else None
        ratio = None
        if floor_stats is not None and figure["median"] and floor_stats["median"]:
            ratio = (
                floor_stats["median"] / figure["median"]
                if higher_is_better
                else figure["median"] / floor_stats["median"]
            )
        passed = None
        if target is not None:
            passed = figure["median"] >= target if higher_is_better else figure["median"] <= target
        result = {
            "id": id,
            "name": name,
            "unit": unit,
            "median": figure["median"],
            "best": best,
            "values": values,
            "target": target,
            "target_op": ">=" if higher_is_better else "<=",
            "floor": None if floor_stats is None else floor_stats["median"],
            "floor_best": None
            if floor_stats is None
            else (floor_stats["max"] if higher_is_better else floor_stats["min"]),
            "floor_label": floor_label,
            "ratio": ratio,
            "passed": passed,
            "higher_is_better": higher_is_better,
            "notes": notes,
            "extra": extra or {},
        }
        self.results.append(result)
        print(format_line(result), flush=True)
        return result

    def guard(self, name: str, func: tp.Callable[[], tp.Any]) -> None:
        """Run one benchmark: an exception is printed and recorded, the module goes on."""
        start = time.perf_counter()
        try:
            func()
        except Exception as e:
            print(f"!! {name} failed: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc()
            self.errors.append({"name": name, "error": f"{type(e).__name__}: {e}"[:2000]})
        print(f"   ({name}: {time.perf_counter() - start:.1f}s)", flush=True)


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:.1f} µs"
        if value < 1:
            return f"{value * 1e3:.2f} ms"
        return f"{value:.2f} s"
    if unit == "items/s":
        if value >= 1e6:
            return f"{value / 1e6:.2f}M/s"
        if value >= 1e3:
            return f"{value / 1e3:.1f}k/s"
        return f"{value:.0f}/s"
    if unit == "count":
        return f"{value:g}"
    return f"{value:.3g} {unit}"


def format_line(r: dict[str, tp.Any]) -> str:
    target = "-" if r["target"] is None else f"{r['target_op']} {fmt_value(r['target'], r['unit'])}"
    ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
    status = {True: "PASS", False: "MISS", None: "info"}[r["passed"]]
    return (
        f"[{status}] {r['id']:<6} {r['name']:<58} {fmt_value(r['median'], r['unit']):>11} "
        f"(best {fmt_value(r['best'], r['unit'])})  target {target:<12} "
        f"FLOOR {fmt_value(r['floor'], r['unit'])} [{r['floor_label']}]  ratio {ratio}"
        + (f"\n         {r['notes']}" if r["notes"] else "")
    )


def main(run: tp.Callable[[Context], None]) -> None:
    """Entry point of a bench module run as a script (by run.py)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--max-wait", type=float, default=60)
    args = parser.parse_args()
    env = clean_env()  # jobs (local, slurm, pools) started from here inherit it
    os.environ.clear()
    os.environ.update(env)
    TMP.mkdir(parents=True, exist_ok=True)
    ctx = Context(args.quick, args.repeat, args.max_wait)
    ctx.conditions = wait_for_quiet(args.max_wait)
    print(f"   conditions: {ctx.conditions}", flush=True)
    run(ctx)
    payload = {"results": ctx.results, "errors": ctx.errors, "conditions": ctx.conditions}
    if args.out is not None:
        args.out.write_text(json.dumps(payload, indent=1))
