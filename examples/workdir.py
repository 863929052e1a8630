"""WorkDir: jobs run from a snapshot of your code, taken when they are submitted.

What it shows:
- `workdir={"copied": [...]}` copies the named folders (here the `exca` package and this
  `examples` folder) into the cache folder when the job is submitted;
- the job starts in that copy, so it imports the copied code: editing files while jobs
  wait in the queue does not change what they run.

Run it from the repository root:

    .venv/bin/python examples/workdir.py                  # Slurm if it answers, else local processes
    .venv/bin/python examples/workdir.py --cluster local  # local subprocesses

Results go to ./demo-cache/workdir; the snapshots to
./demo-cache/workdir/__main__.WhereAmI.run,1/code/<date>-<random>/.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pydantic

import exca


class WhereAmI(pydantic.BaseModel):
    tag: str = "demo"
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> dict[str, str]:
        return {"cwd": os.getcwd(), "exca": str(Path(exca.__file__).parent)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cluster", default="auto", choices=["auto", "slurm", "local"])
    args = parser.parse_args()
    folder = Path("demo-cache/workdir").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    workdir = {
        # "exca" is found as an editable package (or in the current directory);
        # an absolute path is copied under its last component ("examples")
        "copied": ["exca", Path(__file__).resolve().parent],
        "includes": ["*.py"],  # the default: only python files are copied
    }
    # a new tag per run: a new config, so a new job (and a new snapshot) every time
    tag = time.strftime("%H%M%S")
    task = WhereAmI(tag=tag, infra={"folder": folder, "cluster": args.cluster, "workdir": workdir})
    where = task.run()
    print("this process runs exca from:", Path(exca.__file__).parent)
    print("the job started in:         ", where["cwd"])
    print("the job ran exca from:      ", where["exca"])
    snapshot = Path(where["cwd"])
    print("snapshot content:", sorted(p.name for p in snapshot.iterdir()))


if __name__ == "__main__":
    main()
