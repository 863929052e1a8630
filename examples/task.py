"""TaskInfra: one cached computation per config.

What it shows:
- a config whose `train` method is cached in a folder named after the config;
- a second call (or a new process) reads the result instead of computing it;
- a failure is cached too, re-raised with its original type, and recomputed with
  mode="retry";
- the job, its status, and the configs already cached.

Run it from the repository root:

    .venv/bin/python examples/task.py                   # computes in this process
    .venv/bin/python examples/task.py --cluster local   # each computation in a subprocess
    .venv/bin/python examples/task.py --cluster auto    # on Slurm when a controller answers

Results go to ./demo-cache/task (delete it to start over).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pydantic

import exca


class Experiment(pydantic.BaseModel):
    learning_rate: float = 0.01
    epochs: int = 5
    num_workers: int = 2  # does not change the result: kept out of the uid
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    _exclude_from_cls_uid = ("num_workers",)

    @infra.apply
    def train(self) -> float:
        if self.learning_rate > 1:
            raise ValueError(f"learning_rate={self.learning_rate} makes the training diverge")
        print(f"training with learning_rate={self.learning_rate}, epochs={self.epochs}")
        rng = np.random.default_rng(self.epochs)
        return float(np.exp(-self.learning_rate * self.epochs * 10) + 0.01 * rng.random())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cluster", default="none", choices=["none", "local", "auto", "slurm"])
    args = parser.parse_args()
    folder = Path("demo-cache/task").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    infra = {"folder": folder, "cluster": None if args.cluster == "none" else args.cluster}

    exp = Experiment(learning_rate=0.05, infra=infra)
    print("uid:   ", exp.infra.uid())
    print("folder:", exp.infra.uid_folder())
    print("status:", exp.infra.status())
    loss = exp.train()  # computes (or reads, on a second run of this script)
    print("loss:  ", loss, "| status:", exp.infra.status())
    assert exp.train() == loss  # read back from the cache

    # a config that differs only by an excluded field shares the same result
    same = Experiment(learning_rate=0.05, num_workers=8, infra=infra)
    assert same.infra.uid() == exp.infra.uid() and same.train() == loss

    # failures are cached and re-raised with their original type
    bad = Experiment(learning_rate=5.0, infra=infra)
    try:
        bad.train()
    except ValueError as error:
        print("failed:", error, "| status:", bad.infra.status())
    retry = Experiment(learning_rate=5.0, infra={**infra, "mode": "retry"})
    try:
        retry.train()  # recomputes the cached error (and fails again here)
    except ValueError:
        print("retried, failed again (as expected)")

    # a variant of a config: clone_obj takes dotted keys and returns an unfrozen copy
    longer = exp.infra.clone_obj({"epochs": 10})
    job = longer.infra.job()  # submits (or finds) the job, without waiting for it
    print("job:   ", job)
    print("result:", job.result())  # waits

    # every config of this method computed in the folder (results and cached errors)
    cached = sorted(e.infra.uid() for e in exp.infra.iter_cached())
    print("cached configs:", *cached, sep="\n  ")


if __name__ == "__main__":
    main()
