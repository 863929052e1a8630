"""Configs and identity: creating configs with an infra field (1), first uid of a nested
config (2), ConfDict uid/yaml (3), ``import exca`` time (7)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
import typing as tp

import common
import models

import exca


def bench_creation(ctx: common.Context) -> None:
    number = ctx.size(20000, 2000)
    values = common.per_call(lambda i: models.TutorialTask(param=i), number, ctx.repeat)
    plain = common.per_call(lambda i: models.PlainNested(param=i), number, ctx.repeat)
    only = common.per_call(lambda i: models.ParamOnly(param=i), number, ctx.repeat)
    ctx.record(
        "1",
        "config creation TutorialTask(param=i) (infra field)",
        values,
        "s",
        target=4e-6,
        floor=plain,
        floor_label="same model, plain nested BaseModel default",
        extra={"param_only_model_s": common.stats(only)},
        notes=f"param-only model: {common.fmt_value(common.stats(only)['median'], 's')}",
    )


def bench_first_uid(ctx: common.Context) -> None:
    number = ctx.size(3000, 300)
    fields = _count_fields(models.Experiment)
    values, floors = [], []
    models.make_experiment(-1).infra.uid()  # warm up (class facts, schemas)
    for _ in range(ctx.repeat):
        objs = [models.make_experiment(i) for i in range(number)]
        start = time.perf_counter()
        for obj in objs:
            obj.infra.uid()
        values.append((time.perf_counter() - start) / number)
        objs = [models.make_experiment(i) for i in range(number)]
        start = time.perf_counter()
        for obj in objs:
            dumped = obj.model_dump(mode="json")
            hashlib.md5(json.dumps(dumped, sort_keys=True).encode()).hexdigest()
        floors.append((time.perf_counter() - start) / number)
    ctx.record(
        "2",
        f"first uid of a nested config (3 levels, {fields} fields)",
        values,
        "s",
        target=40e-6,
        floor=floors,
        floor_label="model_dump(mode=json) + json + md5",
        extra={"example_uid": models.make_experiment(3).infra.uid()},
    )


def _count_fields(cls: tp.Any) -> int:
    count = 0
    for field in cls.model_fields.values():
        ann = field.annotation
        if (
            isinstance(ann, type)
            and issubclass(ann, models.pydantic.BaseModel)
            and not issubclass(ann, exca.TaskInfra)
        ):
            count += _count_fields(ann)
        else:
            count += 1
    return count


def _confdict_input(shift: int = 0) -> dict[str, tp.Any]:
    """``shift``: another set of values (same keys and types), never rendered before."""
    out: dict[str, tp.Any] = {}
    for i in range(200):
        key = f"block{i // 10}.layer{i % 10}.param"
        kind = i % 3
        v = i + 1000 * shift
        out[key] = v if kind == 0 else (v * 0.37 if kind == 1 else f"name{v}")
    return out


def bench_confdict(ctx: common.Context) -> None:
    import yaml

    number = ctx.size(500, 100)
    flat = _confdict_input()
    cds = [exca.ConfDict(flat) for _ in range(8)]
    nested = json.loads(json.dumps(cds[0]))

    def floor_uid(i: int) -> None:
        hashlib.md5(json.dumps(nested, sort_keys=True).encode()).hexdigest()

    def floor_uid_flat(i: int) -> None:
        hashlib.md5(json.dumps(flat, sort_keys=True).encode()).hexdigest()

    uid = common.per_call(lambda i: cds[i % 8].to_uid(), number, ctx.repeat)
    # a new ConfDict each call (in case to_uid memoizes)
    fresh = [exca.ConfDict(flat) for _ in range(number)]
    fresh_uid = []
    for _ in range(ctx.repeat):
        fresh = [exca.ConfDict(flat) for _ in range(number)]
        start = time.perf_counter()
        for cd in fresh:
            cd.to_uid()
        fresh_uid.append((time.perf_counter() - start) / number)
    # values no uid rendered before each call (a memo of earlier renders cannot help)
    new_values_uid = []
    for r in range(ctx.repeat):
        unseen = [exca.ConfDict(_confdict_input(1 + r * number + n)) for n in range(number)]
        start = time.perf_counter()
        for cd in unseen:
            cd.to_uid()
        new_values_uid.append((time.perf_counter() - start) / number)
    floor = common.per_call(floor_uid, number, ctx.repeat)
    floor_flat = common.per_call(floor_uid_flat, number, ctx.repeat)
    build = common.per_call(lambda i: exca.ConfDict(flat), max(number // 5, 20), ctx.repeat)
    ctx.record(
        "3a",
        "ConfDict.to_uid() on 200 dotted keys",
        uid,
        "s",
        target=100e-6,
        floor=floor,
        floor_label="json.dumps(sort_keys) + md5",
        notes=(
            f"new ConfDict each call: {common.fmt_value(common.stats(fresh_uid)['median'], 's')}; "
            "values never seen before each call: "
            f"{common.fmt_value(common.stats(new_values_uid)['median'], 's')}; "
            f"floor on the flat dict: {common.fmt_value(common.stats(floor_flat)['median'], 's')}; "
            f"building ConfDict(flat): {common.fmt_value(common.stats(build)['median'], 's')}"
        ),
        extra={
            "new_confdict_each_call_s": common.stats(fresh_uid),
            "new_values_each_call_s": common.stats(new_values_uid),
            "floor_flat_s": common.stats(floor_flat),
            "build_confdict_s": common.stats(build),
        },
    )
    number_yaml = max(number // 20, 10)
    to_yaml = common.per_call(lambda i: cds[i % 8].to_yaml(), number_yaml, ctx.repeat)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    floor_yaml = common.per_call(
        lambda i: yaml.dump(nested, Dumper=dumper), number_yaml, ctx.repeat
    )
    ctx.record(
        "3b",
        "ConfDict.to_yaml() on 200 dotted keys",
        to_yaml,
        "s",
        floor=floor_yaml,
        floor_label=f"yaml.dump(nested, {dumper.__name__})",
    )


IMPORT_CODE = "import time\nt = time.perf_counter()\n{stmt}\nprint(time.perf_counter() - t)"


# exca's classes are pydantic models: the first model class defined in a process makes
# pydantic import its schema generation (~40% of the floor), which the floor alone does not
ONE_MODEL = "import pydantic\nclass _One(pydantic.BaseModel):\n    x: int = 0"


def _import_times(stmt: str, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        proc = subprocess.run(
            [common.PYTHON, "-c", IMPORT_CODE.format(stmt=stmt)],
            capture_output=True,
            text=True,
            env=common.clean_env(),
            check=True,
        )
        out.append(float(proc.stdout.strip().splitlines()[-1]))
    return out


def _startup_times(runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([common.PYTHON, "-c", "pass"], env=common.clean_env(), check=True)
        out.append(time.perf_counter() - start)
    return out


def _importtime_top(stmt: str, count: int = 12) -> list[tuple[str, float]]:
    """Top self+children import times (µs → s) from ``python -X importtime``."""
    proc = subprocess.run(
        [common.PYTHON, "-X", "importtime", "-c", stmt],
        capture_output=True,
        text=True,
        env=common.clean_env(),
        check=True,
    )
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        rows.append((name.rstrip(), int(cumulative) / 1e6))
    # top-level packages (no dot in the name): where the import time goes
    top_level = [(n.strip(), c) for n, c in rows if "." not in n and n.strip() != "exca"]
    top_level.sort(key=lambda r: -r[1])
    return top_level[:count]


def bench_import(ctx: common.Context) -> None:
    runs = ctx.size(15, 5)
    _import_times("import exca", 2)  # warm the OS file cache and bytecode
    # interleaved rounds: the VM's speed drifts within a minute
    values, floor, with_model = [], [], []
    for _ in range(runs):
        values += _import_times("import exca", 1)
        floor += _import_times("import pydantic; from pydantic import BaseModel", 1)
        with_model += _import_times(ONE_MODEL, 1)
    startup = _startup_times(runs)
    top = _importtime_top("import exca")
    ctx.record(
        "7",
        "import exca (fresh interpreter, in-process perf_counter)",
        values,
        "s",
        target=0.150,
        floor=floor,
        floor_label="import pydantic; from pydantic import BaseModel",
        notes=(
            f"interpreter startup (python -c pass, wall): "
            f"{common.fmt_value(common.stats(startup)['median'], 's')}; the floor plus defining one "
            f"model class (pydantic imports its schema machinery then): "
            f"{common.fmt_value(common.stats(with_model)['median'], 's')}"
        ),
        extra={
            "startup_s": common.stats(startup),
            "floor_with_one_model_s": common.stats(with_model),
            "importtime_top_cumulative_s": top,
        },
    )


def run(ctx: common.Context) -> None:
    ctx.guard("1 config creation", lambda: bench_creation(ctx))
    ctx.guard("2 first uid", lambda: bench_first_uid(ctx))
    ctx.guard("3 confdict", lambda: bench_confdict(ctx))
    ctx.guard("7 import", lambda: bench_import(ctx))


if __name__ == "__main__":
    common.main(run)
