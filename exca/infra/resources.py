"""Where and with which resources missing work runs (the submitit fields of infras).

None of these fields enters a uid: they change how a result is computed, not what it is.
"""

from __future__ import annotations

import datetime
import os
import re
import typing as tp
from pathlib import Path

import pydantic

from ..graph.node import Execution
from .workdir import WorkDir

SUBMITIT_CLUSTERS = ("auto", "local", "slurm", "debug")
_PARAMS = (
    "timeout_min",
    "nodes",
    "tasks_per_node",
    "cpus_per_task",
    "gpus_per_node",
    "mem_gb",
    "slurm_constraint",
    "slurm_partition",
    "slurm_account",
    "slurm_qos",
    "slurm_use_srun",
    "slurm_additional_parameters",
    "slurm_setup",
)


# sbatch options exca (through submitit) writes itself and reads back: given in
# slurm_additional_parameters, they replaced exca's, and what sbatch queued was no longer
# what exca waits for (-> what to use instead). (A "dependency" is kept: exca adds its
# own next to it; one that can never be satisfied fails the wait, see executors. And so
# are output/error: they only move the logs exca quotes, and configs cached with them
# must still read back.)
MANAGED_SBATCH_OPTIONS = {
    "array": (
        "exca makes the Slurm arrays itself, one element per config, and follows each by "
        "its id (this queued elements nothing follows): use infra.job_array() (or a "
        "MapInfra's max_jobs) to run several computations as one array"
    ),
    "parsable": (
        "it changes sbatch's answer, from which exca reads the job id (the job would run "
        "unfollowed): remove it"
    ),
}
# (sbatch takes any unambiguous start of an option: --arr is --array; --par is not --parsable)
_SHORTEST_PREFIX = {"array": 2, "parsable": 4}


SUBMITIT_PLACEHOLDERS = ("%j", "%A", "%a", "%t")  # (what submitit fills in a log folder)
UNSET_VARIABLE = re.compile(r"\$\{?\w+\}?")  # (what expandvars leaves of an unset one)


def expand_path_text(field: str, text: str) -> str:
    """A path given as text (e.g. from a yaml file) with its environment variables and
    ``~`` expanded: ValueError naming what is not set (an existing path with a "$" in its
    name is kept as it is)."""
    if "$" in text:  # ("$SCRATCH/cache")
        expanded = os.path.expandvars(text)
        unset = UNSET_VARIABLE.search(expanded)
        if unset and os.path.exists(text):
            expanded = text  # (an existing folder with a "$" in its name)
        elif unset:
            raise ValueError(
                f"{field}={text!r} names the environment variable {unset.group()}, which is "
                "not set: set it, or give the path"
            )
        text = expanded
    if text.startswith("~"):
        expanded = os.path.expanduser(text)
        if expanded.startswith("~"):  # (no such user: it became a relative folder)
            raise ValueError(
                f"{field}={text!r}: {text.split('/')[0]!r} names no user's home folder here; "
                "give the path"
            )
        return expanded
    return text


class SubmititMixin(pydantic.BaseModel):
    """Resources and cluster settings, forwarded to submitit (``slurm_*`` unchanged)."""

    model_config = pydantic.ConfigDict(defer_build=True)
    __slots__ = ()
    cluster: str | None = None
    logs: Path | str = "{folder}/logs/{user}/%j"
    job_name: str | None = None
    # (bounds: a 0 or negative value was accepted, and jobs failed without naming it)
    timeout_min: int | None = pydantic.Field(default=None, ge=1)
    nodes: int | None = pydantic.Field(default=1, ge=1)
    tasks_per_node: int | None = pydantic.Field(default=1, ge=1)
    cpus_per_task: int | None = pydantic.Field(default=None, ge=1)
    gpus_per_node: int | None = pydantic.Field(default=None, ge=0)
    mem_gb: float | None = pydantic.Field(default=None, gt=0)
    max_pickle_size_gb: float | None = pydantic.Field(default=None, gt=0)
    slurm_constraint: str | None = None
    slurm_partition: str | None = None
    slurm_account: str | None = None
    slurm_qos: str | None = None
    slurm_use_srun: bool = False
    slurm_additional_parameters: dict[str, int | str | float | bool] | None = None
    slurm_setup: list[str] | None = None
    conda_env: Path | str | None = None
    workdir: WorkDir | None = None

    @pydantic.field_validator("cluster", mode="before")
    @classmethod
    def _known_cluster(cls, value: tp.Any) -> tp.Any:
        # (pydantic's literal error lists the names but not None, the default: computing in
        # this process; a typo gets its likely name)
        kinds = tp.get_args(cls.model_fields["cluster"].annotation)
        names = [
            n for kind in kinds if tp.get_origin(kind) is tp.Literal for n in tp.get_args(kind)
        ]
        if not isinstance(value, str) or value in names or not names:
            return value
        import difflib

        close = difflib.get_close_matches(value, [str(n) for n in names], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        if value in ("threadpool", "processpool"):
            hint = f" for a {cls.__name__} (a MapInfra's pool: it computes items)"
        if value.strip().lower() in ("none", "null", "~", ""):
            # (a command line's values stay text, ConfDict.from_args: a user typing None
            # there was told "use None", which no text can be)
            hint = (
                f" (the text {value!r}, not None: the values of a command line stay "
                "strings with ConfDict.from_args; read them as yaml, see "
                "docs/confdict.md, or leave infra.cluster out)"
            )
        listed = ", ".join(repr(n) for n in names)
        raise ValueError(
            f"cluster={value!r} is not a cluster{hint}: use None (compute in this process) or "
            f"one of {listed}"
        )

    @pydantic.field_validator("slurm_additional_parameters")
    @classmethod
    def _no_managed_sbatch_option(
        cls, value: dict[str, int | str | float | bool] | None
    ) -> dict[str, int | str | float | bool] | None:
        # (given here, they replaced the ones exca/submitit write: sbatch queued work that
        # exca does not follow, e.g. an array of 4 jobs recorded as one job)
        for key, given in (value or {}).items():
            option = key.lstrip("-").lower().replace("_", "-")
            option = next(
                (
                    name
                    for name, shortest in _SHORTEST_PREFIX.items()
                    if len(option) >= shortest and name.startswith(option)
                ),
                option,
            )
            instead = MANAGED_SBATCH_OPTIONS.get(option)
            if instead is not None:
                raise ValueError(
                    f"slurm_additional_parameters {key}={given!r}: the sbatch option "
                    f"--{option} is exca's own: {instead}"
                )
        return value

    @pydantic.field_validator("logs")
    @classmethod
    def _known_placeholders(cls, value: Path | str) -> Path | str:
        # (an unknown one, "{usr}", made a folder of that literal name)
        unknown = sorted(set(re.findall(r"\{([^{}]*)\}", str(value))) - {"folder", "user"})
        if unknown:
            raise ValueError(
                f"logs={str(value)!r} holds the unknown placeholder(s) "
                f"{', '.join('{' + u + '}' for u in unknown)}: exca fills {{folder}} and "
                "{user} (submitit fills %j, %A, %t)"
            )
        if "%a" in str(value):
            # (submitit refuses it for a job that is not an array element, once the job is
            # queued: exca sends one job, not an array, when there is one task)
            raise ValueError(
                f"logs={str(value)!r} holds %a (the index in a job array), which a single job "
                "does not have: use %j (a job's id; <array id>_<index> for an array element)"
            )
        return value

    def _check_resources(self, folder: Path | None) -> None:
        cluster = self.cluster
        if cluster in SUBMITIT_CLUSTERS and folder is None:
            raise ValueError(
                f"cluster={cluster!r} needs a folder (results come back through the cache): "
                "set infra folder=..."
            )
        if self.workdir is not None and folder is None:
            raise ValueError("workdir needs a folder (the code copy goes under it): set folder=...")
        if (
            (self.tasks_per_node or 1) > 1
            and cluster in ("slurm", "auto")
            and not self.slurm_use_srun
        ):
            raise ValueError(
                f"tasks_per_node={self.tasks_per_node} on Slurm requires slurm_use_srun=True "
                "(each task is started by srun)"
            )
        if self.conda_env is not None and cluster in (None, "debug", "threadpool", "processpool"):
            raise ValueError(
                f"conda_env={self.conda_env!r} only applies to jobs (cluster local/slurm/auto), "
                f"not to cluster={cluster!r}"
            )

    def _submitit_params(self) -> tuple[tuple[str, tp.Any], ...]:
        out = []
        for name in _PARAMS:
            value = getattr(self, name)
            if isinstance(value, dict):
                value = dict(value)
            elif isinstance(value, list):
                value = list(value)
            out.append((name, value))
        return tuple(out)

    def _workdir_folder(self, step: str) -> Path | None:
        """A new code snapshot folder for one submission: ``<step>/code/<date>-<random>``."""
        folder = getattr(self, "folder", None)
        if self.workdir is None or folder is None:
            return None
        stamp = datetime.date.today().isoformat()
        return Path(folder) / step / "code" / f"{stamp}-{os.urandom(3).hex()}"

    def _execution(
        self,
        logs_folder: Path | None,
        job_name: str | None,
        workdir_folder: Path | None,
        max_jobs: int | None = None,
        min_items_per_job: int = 1,
    ) -> Execution:
        workdir = self.workdir
        if workdir is not None and workdir.folder is None and workdir_folder is not None:
            workdir = workdir.model_copy(update={"folder": workdir_folder})
            workdir._exca_levels = 2  # (<step>/code/<date>-<random>: see _workdir_folder)
        permissions = getattr(self, "permissions", None)
        if workdir is not None and permissions is not None:
            workdir = workdir.model_copy() if workdir is self.workdir else workdir
            workdir._permissions = permissions
        logs, logs_problem = str(self.logs), None
        if "$" in logs or logs.startswith("~"):
            # (the user's text only, not the folder: a cache folder may hold a "$"; now,
            # not when the config is built: a class default "$SCRATCH/logs/%j" must import
            # where SCRATCH is unset and nothing is sent)
            import getpass

            try:
                logs = expand_path_text("logs", logs.replace("{user}", getpass.getuser()))
            except ValueError as error:
                logs_problem = str(error)
        if logs_problem is None and logs_folder is not None and "{folder}" in logs:
            # (submitit replaces these in the whole path of a job's log folder, the cache
            # folder's name included: the job looked for its work in another folder, and
            # died "killed, out of memory...")
            held = next((t for t in SUBMITIT_PLACEHOLDERS if t in str(logs_folder)), None)
            if held is not None:
                logs_problem = (
                    f"logs={self.logs!r}: its {{folder}}, {logs_folder}, holds {held!r}, which "
                    "submitit replaces in a job's log folder (with the job's id or index): "
                    "give the cache a folder without it, or set logs to a folder without it"
                )
        return Execution(
            cluster=self.cluster,
            params=self._submitit_params(),
            logs=logs.replace("{folder}", str(logs_folder)),
            logs_setting=str(self.logs),
            logs_problem=logs_problem,
            max_jobs=max_jobs,
            min_items_per_job=min_items_per_job,
            conda_env=None if self.conda_env is None else str(self.conda_env),
            max_pickle_size_gb=self.max_pickle_size_gb,
            workdir=workdir,
            job_name=self.job_name or job_name,
        )
