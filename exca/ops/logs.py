"""stdout/stderr of the job that computed a node, or a map item, from any process."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from ..graph import registry
from ..graph.node import Node


@dataclasses.dataclass
class JobLogs:
    """The log files of one job of a node: ``stdout()`` / ``stderr()`` read them (empty
    when a file is gone); ``refused``: the job refused its config, nothing computed."""

    job_id: str
    cluster: str
    stdout_path: Path
    stderr_path: Path
    # the job refused its config, its class edited while it was queued: nothing computed
    refused: bool = False
    # no record names the job any more (see unrecorded_job): found through the node's link
    unrecorded: bool = False

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""


def logs(target: Node | Path | str, item: str | None = None) -> list[JobLogs]:
    """Logs of the jobs recorded for a node (newest last); ``item``: only the map chunk
    that computed this item uid (a chunk of a map whose items came from an upstream
    node is known once its job started). Jobs of grouped arrays are found through each
    node's own record; a job that refused its config (its class was edited while it was
    queued: its log says so) is listed too, ``refused``."""
    folder = target.folder if isinstance(target, Node) else Path(target)
    if folder is None:
        return []
    if not isinstance(target, Node) and not folder.is_dir():  # (a node not computed: none)
        what = "not a folder" if folder.exists() else "no such folder"
        raise ValueError(f"{str(folder)!r}: {what} (give the folder of a task or map config)")
    out = []
    for record in registry.read_all(folder, copied=True, refused=True):
        if item is not None and item not in (registry.items_of(folder, record) or ()):
            continue
        out.append(
            JobLogs(record.job_id, record.cluster, record.stdout, record.stderr, record.refused)
        )
    return out


# a job's own log folder in the default layout (``.../logs/<user>/%j``): named after
# the job's id, Slurm's (an array element's ``<array id>_<index>``) or a local job's pid
JOB_FOLDER = re.compile(r"[0-9]+(?:_[0-9]+)?")


def unrecorded_job(folder: Path | str) -> JobLogs | None:
    """The job whose log folder a node folder's ``submitit`` link points to when no record
    of the folder names it any more, else None. A job's record is dropped when the call
    that submitted it cancels it (a Ctrl-C of it stops its local jobs) or by
    ``node.clear()``, while its logs and that link stay (``clear_job()`` removes the link
    too): the log of the job that last ran for the node."""
    link = Path(folder) / registry.LINK_NAME
    if not link.is_symlink():
        return None
    target = Path(os.path.realpath(link))
    if not JOB_FOLDER.fullmatch(target.name) or not target.is_dir():
        return None
    records = registry.read_all(Path(folder), copied=True, refused=True)
    if any(os.path.realpath(r.logs_folder()) == str(target) for r in records):
        return None
    job_id = target.name

    def log_file(kind: str) -> Path:  # (submitit names them <job id>_<task>_log.<kind>)
        found = sorted(target.glob(f"{job_id}_*_log.{kind}"))
        return found[0] if found else target / f"{job_id}_0_log.{kind}"

    return JobLogs(job_id, "no record", log_file("out"), log_file("err"), unrecorded=True)
