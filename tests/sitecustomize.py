"""Run by every Python process the test suite starts (tests/ is on their PYTHONPATH, see
conftest.py): in a job's worker process (`python -u -m submitit.core._submit FOLDER`, local
or Slurm), submitit's eager ``import numpy`` is skipped, as submitit does where numpy is not
installed; numpy is imported when the job's pickle or code needs it. The suite runs ~1400
job workers, most of which never touch numpy: its import was ~20% of a worker's start-up
CPU (0.81 -> 0.65 CPU-s per `import submitit.core.submission, exca`, loaded machine), and
the suite is CPU-bound on its 2 cores. Other processes are left as they are."""

from __future__ import annotations

import sys
import types
import typing as tp

_WORKER = ("-m", "submitit.core._submit")
_EAGER_IMPORTER = "submitit.core.submission"


class _NumpyOnDemandInJobWorkers:
    """A meta path finder refusing ``numpy`` to the module-level import statement of
    submitit's submission module only (it catches ImportError); any other import of numpy
    in the same process (the job's code, run by that module's functions) finds it."""

    def find_spec(self, name: str, path: tp.Any = None, target: tp.Any = None) -> None:
        if name == "numpy":
            frame: types.FrameType | None = sys._getframe(1)
            while frame is not None and frame.f_globals.get("__name__") == "importlib._bootstrap":
                frame = frame.f_back  # (up to the import statement)
            if (
                frame is not None
                and frame.f_globals.get("__name__") == _EAGER_IMPORTER
                and frame.f_code.co_name == "<module>"
            ):
                raise ImportError("numpy: imported by the job when it needs it (tests)")
        return None


def _is_job_worker(argv: list[str]) -> bool:
    return any(tuple(argv[k : k + 2]) == _WORKER for k in range(len(argv) - 1))


if _is_job_worker(getattr(sys, "orig_argv", [])):
    sys.meta_path.insert(0, _NumpyOnDemandInJobWorkers())
