"""Row 8a in instructions: a task cache hit on a new instance in a fresh process (not run
by run.py; needs valgrind).

    python benchmarks/first_hit_instructions.py

Prints the instructions of the config build, of the first call (the row's figure) and of
a later new instance (build + call), each counted by callgrind inside an
``operator.call(...)`` alone (``--toggle-collect``): a difference of whole processes
(import + hit minus import) moves by +-10% from run to run with the import's own noise,
this by less than 0.1%.
"""

from __future__ import annotations

import gc
import operator
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models

MODES = ("build", "call", "later")


def child(mode: str, folder: str) -> None:
    """One measured process: only what runs inside operator.call is counted."""
    build = lambda: models.Hit(x=0, infra={"folder": folder})  # noqa: E731
    if mode == "later":  # (after two other new instances: what a loop pays per instance)
        models.Hit(x=1, infra={"folder": folder}).process()
        models.Hit(x=2, infra={"folder": folder}).process()
        gc.collect()
        operator.call(lambda: models.Hit(x=3, infra={"folder": folder}).process())
    elif mode == "build":
        gc.collect()
        operator.call(build)
    else:
        obj = build()
        gc.collect()
        operator.call(obj.process)
    os._exit(0)  # (no exit-time collection counted, nor run)


def measure(mode: str, folder: str, out: Path) -> int:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONHASHSEED="0")
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    command = [
        "valgrind",
        "--tool=callgrind",
        "--toggle-collect=_operator_call*",
        f"--callgrind-out-file={out}",
        sys.executable,
        __file__,
        "--child",
        mode,
        folder,
    ]
    subprocess.run(command, env=env, check=True, capture_output=True)
    text = out.read_text()
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no instruction total in {out}")
    return int(found.group(1))


def main() -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is needed (apt-get install valgrind)")
    repo = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(repo / "exca")], check=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "cache")
        for x in range(4):  # (the results every measured process reads)
            models.Hit(x=x, infra={"folder": folder}).process()
        for mode in MODES:
            count = measure(mode, folder, Path(tmp) / f"callgrind.{mode}.out")
            print(f"{mode:>6}: {count:>10,} instructions")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3])
    else:
        main()
