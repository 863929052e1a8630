"""stdout/stderr of the job that computed a node, or a map item, from any process."""

from __future__ import annotations

import dataclasses
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
