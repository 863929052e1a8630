"""Slurm jobs are sent held, and released once their folders exist.

submitit's sbatch script names each job's log files in a folder named after its job id
(``<logs>/<job id>/``; an array element's ``<array>_<index>``), which submitit makes
only once sbatch answered with that id (for an array, one element's after the other),
moving the job's pickle there then. Slurm could start a job before: it could not open
the job's log file and failed it at once (sacct's ExitCode 0:53), a race of the
submission itself, likelier with large arrays, a busy submitter or an idle cluster.

So exca asks sbatch to hold the jobs (``--hold``: every element of an array) and
releases them once submitit made their folders: one ``scontrol release`` for a whole
submission. A submitter killed in between leaves them held: the next run that follows
them (see submitting.adopt) releases them, as the submission's marker says exca held
them. A user's own ``hold`` (slurm_additional_parameters) keeps its meaning: exca then
adds none and releases nothing.
"""

from __future__ import annotations

import logging
import subprocess
import time
import typing as tp

logger = logging.getLogger(__name__)

# sbatch's option, and the squeue reason of a job it held (scontrol hold gives it too)
HOLD_OPTION = "hold"
HELD_BY_SBATCH = "JobHeldUser"
RELEASE_TRIES = 3  # (a controller busy for an instant: tried again a second later)


class NotReleased(RuntimeError):
    """``scontrol release`` of jobs exca held failed (they do not start)."""


def user_holds(extra: tp.Mapping[str, tp.Any] | None) -> bool:
    """Whether slurm_additional_parameters ask sbatch to hold the jobs: ``hold``, or a
    start of it that sbatch takes as it (``ho``, ``hol``: sbatch takes any unambiguous
    start of a long option)."""
    return any(
        len(key) >= 2 and HOLD_OPTION.startswith(str(key).replace("-", "_")) for key in extra or {}
    )


def exca_holds(cluster: str | None, extra: tp.Mapping[str, tp.Any] | None) -> bool:
    """Whether exca sends jobs held, to release them itself once their folders exist:
    on Slurm, unless the user holds them."""
    return cluster == "slurm" and not user_holds(extra)


def job_list(job_ids: tp.Iterable[str], whole_arrays: bool) -> str:
    """The ids for one scontrol call, each once; ``whole_arrays``: an array element's by
    its array's id (every element of it)."""
    ids = {str(j).split("_")[0] if whole_arrays else str(j) for j in job_ids}
    return ",".join(sorted(ids, key=lambda i: [int(p) for p in i.split("_") if p.isdigit()]))


def release(job_ids: tp.Sequence[str], whole_arrays: bool = True) -> None:
    """Release jobs exca held (one ``scontrol release`` for all; ``whole_arrays``: an
    array by its id, every element of it). NotReleased, with scontrol's words, when it
    fails RELEASE_TRIES times."""
    if not job_ids:
        return
    listed = job_list(job_ids, whole_arrays)
    said = ""
    for attempt in range(RELEASE_TRIES):
        if attempt:
            time.sleep(1.0)
        try:
            answer = subprocess.run(
                ["scontrol", "release", listed],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            said = str(error)
            continue
        if answer.returncode == 0:
            return
        said = (answer.stderr or answer.stdout).strip() or f"exit code {answer.returncode}"
    raise NotReleased(
        f"`scontrol release {listed}` failed ({said}): Slurm held the job(s) until exca "
        "had made their log folders, and they cannot start"
    )


def cancel(job_ids: tp.Sequence[str]) -> None:
    """Cancel jobs exca could not release (one ``scancel``; an array by its id), as far
    as it goes: what it misses a later run finds through the submission's marker."""
    if not job_ids:
        return
    try:
        subprocess.run(
            ["scancel", *job_list(job_ids, whole_arrays=True).split(",")],
            capture_output=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        logger.warning("Could not cancel job(s) %s", job_list(job_ids, whole_arrays=True))
