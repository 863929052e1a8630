"""Job arrays: a grid of configs sent as ONE array, only the missing ones.

What it shows:
- `infra.job_array()` collects configs (variants made with `clone_obj`);
- on exit, the configs without a result are submitted together as one array (one
  Slurm job array, or local subprocesses), and the call returns without waiting;
- running the script again submits nothing: every config is already cached.

Run it from the repository root:

    .venv/bin/python examples/job_array.py                  # Slurm if it answers, else local processes
    .venv/bin/python examples/job_array.py --cluster local  # local subprocesses

Results go to ./demo-cache/job_array; job logs to
./demo-cache/job_array/__main__.Sweep.run,1/logs/<user>/<job id>/.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import pydantic

import exca


class Sweep(pydantic.BaseModel):
    layers: int = 2
    width: int = 32
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> float:
        return 1.0 / (self.layers * self.width)  # stands for a training run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cluster", default="auto", choices=["auto", "slurm", "local"])
    args = parser.parse_args()
    folder = Path("demo-cache/job_array").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    base = Sweep(
        infra={"folder": folder, "cluster": args.cluster, "cpus_per_task": 1, "timeout_min": 5}
    )

    grid = list(itertools.product([2, 4, 8], [32, 64]))
    before = [base.infra.clone_obj(layers=n, width=w).infra.status() for n, w in grid]
    print(f"{before.count('completed')}/{len(grid)} configs already computed")
    with base.infra.job_array(max_workers=4) as array:  # on Slurm, at most 4 run at once
        for layers, width in grid:
            array.append(base.infra.clone_obj({"layers": layers, "width": width}))
    # leaving the block submitted the missing configs as one array; it did not wait
    print("statuses:", [sweep.infra.status() for sweep in array])
    while any(sweep.infra.status() == "running" for sweep in array):
        time.sleep(0.5)
    for sweep in array:  # read from the cache
        print(f"layers={sweep.layers} width={sweep.width}: {sweep.run():.4f}")


if __name__ == "__main__":
    main()
