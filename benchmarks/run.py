"""Run every benchmark and write the results table into benchmarks/README.md and the raw
numbers into benchmarks/results.json.

    python benchmarks/run.py            # everything (~7 minutes on 2 cores)
    python benchmarks/run.py --quick    # small sizes, for developing the harness
    python benchmarks/run.py --only bench_map bench_graph   # some modules (others kept)

Each module runs in its own subprocess (a crash or a hang in one does not stop the
others), with PYTHONDONTWRITEBYTECODE removed from the environment after
``python -m compileall -q exca``, so that imports use cached bytecode as they do for
users.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
import typing as tp
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

MODULES = [
    "bench_config",
    "bench_cachedict",
    "bench_infra",
    "bench_map",
    "bench_graph",
    "bench_compare",
    "bench_ops",
]
README = common.BENCH_DIR / "README.md"
RESULTS = common.BENCH_DIR / "results.json"
START, END = "<!-- results:start (written by benchmarks/run.py) -->", "<!-- results:end -->"


def run_module(name: str, args: argparse.Namespace) -> dict[str, tp.Any]:
    out = common.TMP / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = [
        common.PYTHON,
        str(common.BENCH_DIR / f"{name}.py"),
        "--out",
        str(out),
        "--repeat",
        str(args.repeat),
        "--max-wait",
        str(args.max_wait),
    ]
    if args.quick:
        cmd.append("--quick")
    print(f"\n=== {name} ===", flush=True)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, env=common.clean_env(), cwd=str(common.ROOT), timeout=args.module_timeout
        )
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    elapsed = time.perf_counter() - start
    if out.exists():
        payload = json.loads(out.read_text())
    else:
        payload = {"results": [], "errors": [], "conditions": {}}
    if code != 0:
        payload["errors"].append({"name": name, "error": f"module exited with {code}"})
    payload["seconds"] = round(elapsed, 1)
    for result in payload["results"]:
        result["module"] = name
    return payload


def table(data: dict[str, tp.Any]) -> str:
    machine = data["machine"]
    lines = [
        f"Run of {data['started']} ({data['total_s']:.0f} s, repeat={data['args']['repeat']}"
        + (", QUICK sizes" if data["args"]["quick"] else "")
        + (
            f", only {' '.join(data['args']['only'])}: the other rows are from earlier runs"
            if data["args"].get("only")
            else ""
        )
        + f"): {machine['cpu']}, {machine['cores']} cores, {machine['memory']}, "
        f"Python {machine['python']}, "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()),
        "",
        f"Load before the run: 1/5/15-min {data['initial_conditions']['loadavg']} "
        f"(waited {data['initial_conditions']['waited_s']} s). Per module (load when it "
        "started, share of the cores busy right then; when it ran): "
        + "; ".join(
            f"{name} {m['conditions'].get('loadavg', ['?'])[0]} / {m['conditions'].get('busy_now', '?')}"
            f" ({m.get('when', 'before ' + str(data['started']))})"
            for name, m in data["modules"].items()
        ),
        "",
        "| # | measurement | median | best | target | floor (median) | ratio vs floor | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in MODULES:
        module = data["modules"].get(name)
        if module is None:
            continue
        for r in module["results"]:
            target = (
                "-"
                if r["target"] is None
                else f"{r['target_op']} {common.fmt_value(r['target'], r['unit'])}"
            )
            floor = (
                "-"
                if r["floor"] is None
                else f"{common.fmt_value(r['floor'], r['unit'])} ({r['floor_label']})"
            )
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            status = {True: "pass", False: "**MISS**", None: "info"}[r["passed"]]
            if r["passed"] is False and r["target"]:
                over = (
                    r["target"] / r["median"]
                    if r["higher_is_better"]
                    else r["median"] / r["target"]
                )
                status += f" ({over:.1f}x)"
            name_cell = r["name"] + (f" — {r['notes']}" if r["notes"] else "")
            lines.append(
                f"| {r['id']} | {name_cell} | {common.fmt_value(r['median'], r['unit'])} | "
                f"{common.fmt_value(r['best'], r['unit'])} | {target} | {floor} | {ratio} | {status} |"
            )
    errors = [(n, e) for n, m in data["modules"].items() for e in m["errors"]]
    if errors:
        lines += ["", "Errors and skips:", ""]
        lines += [f"- {n}: {e['name']}: `{e['error'].splitlines()[0][:300]}`" for n, e in errors]
    return "\n".join(lines)


def write_readme(text: str) -> None:
    readme = README.read_text() if README.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in readme or END not in readme:
        readme += f"\n## Results\n\n{START}\n{END}\n"
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{text}\n{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (harness development)")
    parser.add_argument("--repeat", type=int, default=5, help="repetitions per measurement")
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help="modules to run (the others keep their last results)",
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=30,
        help="seconds to wait for a quiet machine before each module",
    )
    parser.add_argument(
        "--initial-wait",
        type=float,
        default=120,
        help="seconds to wait for load < 0.5 at the start",
    )
    parser.add_argument("--module-timeout", type=float, default=900)
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite README.md")
    args = parser.parse_args()
    modules = args.only or MODULES
    unknown = set(modules) - set(MODULES)
    if unknown:
        parser.error(f"unknown modules {sorted(unknown)}; choose among {MODULES}")
    common.TMP.mkdir(parents=True, exist_ok=True)
    started = datetime.datetime.now().isoformat(timespec="seconds")
    start = time.perf_counter()
    # cached bytecode, as users have it (the measurement processes may then write more)
    subprocess.run(
        [common.PYTHON, "-m", "compileall", "-q", "exca"],
        cwd=str(common.ROOT),
        env=common.clean_env(),
        check=False,
    )
    print("waiting for a quiet machine (1-min load < 0.5)...", flush=True)
    initial = common.wait_for_quiet(args.initial_wait)
    print(f"conditions: {initial}", flush=True)
    data: dict[str, tp.Any] = {"modules": {}}
    if args.only and RESULTS.exists():
        data = json.loads(RESULTS.read_text())
    for name in modules:
        data["modules"][name] = run_module(name, args)
        data["modules"][name]["when"] = time.strftime("%Y-%m-%dT%H:%M")
    data.update(
        started=started,
        total_s=time.perf_counter() - start,
        args=vars(args),
        machine=common.machine_info(),
        initial_conditions=initial,
    )
    data["modules"] = {n: data["modules"][n] for n in MODULES if n in data["modules"]}
    RESULTS.write_text(json.dumps(data, indent=1, default=str) + "\n")
    text = table(data)
    print("\n" + text)
    if not args.no_readme:
        write_readme(text)
    common.remove(common.TMP)
    print(
        f"\nwrote {RESULTS.relative_to(common.ROOT)}"
        + ("" if args.no_readme else f" and {README.relative_to(common.ROOT)}")
    )


if __name__ == "__main__":
    main()
