"""How many results of a step were computed with other sub-config versions: what the
warning "Reusing the cache ... other class versions" adds, so that a user can tell
whether bumping the class's version, then ``exca clean ROOT versions``, is worth it.

One look per step and process (the warning is said once per step and changed versions,
see uidfolder._log_versions): each config folder's full-uid.yaml is read, no payload.
Sizes are not summed here (a map's data/ may hold 100k files): the clean command's
preview lists them.
"""

from __future__ import annotations

import os
import shlex
import typing as tp
from pathlib import Path

from ..confdict import ConfDict


def step_folder(folder: Path) -> Path | None:
    """The step folder (``<module>.<Class>.<method>,<version>``) holding a config folder
    (or the ``inputs-...`` sub-folder of a task with inputs)."""
    for candidate in (folder.parent, folder.parent.parent):
        if "," in candidate.name:
            return candidate
    return None


def said(folder: str, current: dict[str, tp.Any], load: tp.Callable[[str], tp.Any]) -> str:
    """What the warning adds for the config folder ``folder``: how many configs of its
    step hold results of other versions of the changed sub-configs (``current``: the
    dotted keys of their versions, with today's values), and the command that removes
    the old version's results once this class's version is bumped. ``load``: the yaml
    reader of full-uid.yaml texts. "" when it cannot tell."""
    step = step_folder(Path(folder))
    if step is None or not current:
        return ""
    old, total = _count(step, current, load)
    if not old:
        return ""
    root = shlex.quote(str(step.parent))
    return (
        f" ({old} of the {total} config(s) of {step.name} were computed with other versions "
        "of these sub-configs, whose reuse is not warned of again in this process; once a "
        f"bumped version has results, `exca clean {root} "
        f"versions --step {shlex.quote(step.name)}` previews the removal of the old "
        "version's results, with their sizes, and removes them with --yes)"
    )


def _count(
    step: Path, current: dict[str, tp.Any], load: tp.Callable[[str], tp.Any]
) -> tuple[int, int]:
    """(configs of the step whose full-uid.yaml records another value for one of the
    ``current`` keys, configs with a full-uid.yaml)."""
    old = total = 0
    try:
        entries = list(os.scandir(step))
    except OSError:
        return 0, 0
    for entry in entries:
        try:
            with open(os.path.join(entry.path, "full-uid.yaml"), encoding="utf8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError):  # (logs/, code/, a folder without results)
            continue
        data = load(text)
        if not isinstance(data, dict):
            continue
        total += 1
        flat = ConfDict(data).flat()
        if any(k in flat and flat[k] != v for k, v in current.items()):
            old += 1
    return old, total
