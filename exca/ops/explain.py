"""Why a node will compute: the plan's reason, and for a missing config the difference
with the nearest cached config of the same method (any version):
``optim.lr 0.01 → 0.02``, ``version 1 → 2``, "never computed", "cached error", "forced",
"stale: upstream X recomputed at ..."). Reads only.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing as tp
from pathlib import Path

from ..confdict import ConfDict
from ..graph.decisions import NodeRun
from ..graph.node import Node
from ..graph.planning import Plan, PlanEntry
from ..infra.task import INPUTS_FILE
from ..infra.uidfolder import FULL_UID_FILE, read_yaml
from ..storage.cachedict import inspecting_view, keeping_files
from .inspect import input_folders

_MISSING: tp.Any = "<absent>"


@dataclasses.dataclass
class Explanation:
    """Why one node would (not) be computed."""

    uid: str
    status: str
    action: str
    reason: str
    nearest: str | None = None  # folder of the nearest cached config of the same method
    diff: list[tuple[str, tp.Any, tp.Any]] = dataclasses.field(
        default_factory=list
    )  # key, cached, wanted
    equally_near: int = 0  # other cached configs differing by as many keys (first by name shown)
    # never computed: steps of a class and method of the same names in another module
    namesakes: list[str] = dataclasses.field(default_factory=list)
    legacy: bool = False  # the nearest is this config under its legacy (v2) folder name

    def summary(self) -> str:
        if self.status == "missing" and self.action in ("compute", "fail"):
            # (a map says how many items are missing: all of them, when compared)
            prefix = "" if self.reason == "missing" else f"{self.reason}: "
            if self.nearest is None:
                if self.reason != "missing":
                    return self.reason
                if self.namesakes:
                    why = (
                        "a class defined in a script run as __main__ caches under __main__ "
                        "(import it from its module in that script)"
                        if any(n.startswith("__main__.") for n in self.namesakes)
                        else "the class's module was renamed or moved?"
                    )
                    return (
                        "never computed (no cached config of this method); a class and method "
                        f"of the same names have cached configs in {', '.join(self.namesakes)}: "
                        + why
                    )
                return "never computed (no cached config of this method)"
            if not self.diff and self.legacy:
                return (
                    f"{prefix}the same config is cached under its legacy (v2) folder name, "
                    f"{Path(self.nearest).name}, written by an older exca: a run renames it "
                    "and reuses it (a plan does not rename it)"
                )
            if not self.diff:  # (same values: the folder name follows the defaults of then)
                return (
                    f"{prefix}the same config is cached under another folder name, "
                    f"{Path(self.nearest).name} (a class default changed since: folder names "
                    "show only values that differ from the defaults)"
                )
            changes = ", ".join(f"{k} {_show(a)} → {_show(b)}" for k, a, b in self.diff)
            return f"{prefix}config differs from the nearest cached one: {changes}"
        return self.reason

    def __str__(self) -> str:
        text = f"{self.status:12s} {self.action:8s} {self.uid}\n    why: {self.summary()}"
        if self.nearest is not None and self.diff:
            text += f"\n    nearest cached: {self.nearest}"
            if self.equally_near:
                text += f" (and {self.equally_near} other cached config(s) as near)"
        return text

    def to_dict(self) -> dict[str, tp.Any]:
        out = dataclasses.asdict(self)
        out["summary"] = self.summary()
        return out


def _show(value: tp.Any) -> str:
    return (
        "(absent)" if value is _MISSING else repr(value) if isinstance(value, str) else str(value)
    )


def _flat(data: dict[str, tp.Any] | None) -> dict[str, tp.Any]:
    return ConfDict(data or {}).flat()


def nearest_cached(node: Node) -> tuple[Path | None, list[tuple[str, tp.Any, tp.Any]], int]:
    """The cached config of the same method (any version) closest to the node's config
    (the first by folder name among equally near ones), the differences (key, cached
    value, wanted value), and how many other cached configs are as near."""
    if node.root is None or node.uid_config is None:
        return None, [], 0
    wanted = _flat(node.uid_config())
    with_inputs = bool(node.inputs)
    if with_inputs:  # a call with inputs: its node is <config>/inputs-<digest>
        wanted.update(_flat({"inputs": {name: source.uid for name, source in node.inputs}}))
    method, _, version = node.step.partition(",")
    best: tuple[int, Path, list[tuple[str, tp.Any, tp.Any]]] | None = None
    ties = 0
    for step_folder in sorted(Path(node.root).glob(f"{method},*")):
        other_version = step_folder.name.partition(",")[2]
        configs = (p for p in step_folder.iterdir() if p.is_dir() and p.name[0] != ".")
        for config_folder in sorted(configs):  # (hidden: being removed, see clean)
            for folder in input_folders(config_folder) if with_inputs else [config_folder]:
                if folder == node.folder or not _has_results(folder):
                    continue
                own = folder / FULL_UID_FILE  # (a result's own record, if any: see inspect)
                full = read_yaml(own if own.exists() else config_folder / FULL_UID_FILE)
                if full is None:
                    continue  # (nothing to compare with)
                cached = _flat(full)
                if with_inputs:
                    cached.update(_flat({"inputs": read_yaml(folder / INPUTS_FILE) or {}}))
                diff = [
                    (key, cached.get(key, _MISSING), wanted.get(key, _MISSING))
                    for key in sorted(set(cached) | set(wanted))
                    if cached.get(key, _MISSING) != wanted.get(key, _MISSING)
                    and key != "infra.version"
                ]
                if other_version != version:
                    diff.insert(0, ("version", other_version, version))
                if best is None or len(diff) < best[0]:
                    best = (len(diff), folder, diff)
                    ties = 0
                elif len(diff) == best[0]:
                    ties += 1
    if best is None:
        return None, [], 0
    return best[1], best[2], ties


def _has_results(folder: Path) -> bool:
    return _result_count(folder) > 0


def _result_count(folder: Path) -> int:
    """How many entries of a node folder hold a result (not a cached error)."""
    cache = inspecting_view(folder)
    return sum(info.get("#type") != "Error" for info in cache.entries_info().values())


# a map's reason when items are simply missing (not cached errors or damaged payloads to
# redo): "3/10 missing", "read-only and 3/10 items missing (...)", "items known at run time"
_MISSING_ITEMS = re.compile(r"(read-only and )?\d+/\d+ (items )?missing|(read-only: )?items known")


def _missing_items(reason: str) -> bool:
    return _MISSING_ITEMS.match(reason) is not None


def explain(*targets: Node, plan: Plan | None = None) -> list[Explanation]:
    """Explanations for every node of the targets' graph that is not simply reused."""
    with keeping_files():  # (reads only)
        plan = plan or Plan(list(targets))
        runs = {r.node.uid: r for r in plan.graph.runs.values()}
        out = []
        for entry in plan.entries:
            if entry.action in ("reuse", "skip") and entry.status != "stale":
                continue
            out.append(_explain_entry(entry, runs[entry.uid]))
    return out


def _explain_entry(entry: PlanEntry, run: NodeRun) -> Explanation:
    node = run.node
    explanation = Explanation(entry.uid, entry.status, entry.action, entry.reason)
    if entry.reason == "missing" or (node.kind == "map" and _missing_items(entry.reason)):
        # (the plan's counts, not the cache: a map's index can hold 100k entries)
        if run.uids is not None and len(run.todo or ()) < len(set(run.uids)):
            # some items are cached for this very config: the others are new items, not
            # a config that differs from another one
            explanation.reason += " (new items: the others are cached for this config)"
            return explanation
        if run.uids is None and node.kind == "map" and node.folder is not None:
            # items known at run time: the items of this config already cached are reused
            # then, whichever they are (not a config that differs from another one)
            cached = _result_count(node.folder)
            if cached:
                then = (
                    "a missing one fails"
                    if node.mode == "read-only"
                    else "only the missing ones are computed"
                )
                explanation.reason += f" ({cached} item(s) are cached for this config: {then})"
                return explanation
        folder, explanation.diff, explanation.equally_near = nearest_cached(node)
        explanation.nearest = None if folder is None else str(folder)
        if folder is None:
            explanation.namesakes = _namesakes(node)
        elif not explanation.diff:
            explanation.legacy = node.legacy_name is not None and folder.name == node.legacy_name()
    return explanation


def _namesakes(node: Node) -> list[str]:
    """Step folders of the node's root for a class and method of the same names in
    another module (``__main__.Exp.fit,1`` for ``train.Exp.fit,1``)."""
    if node.root is None:
        return []
    base = node.step.partition(",")[0]
    tail = base.split(".")[-2:]
    try:
        steps = [e.name for e in os.scandir(node.root) if "," in e.name and e.is_dir()]
    except OSError:
        return []
    return sorted(
        name
        for name in steps
        if name.partition(",")[0] != base and name.partition(",")[0].split(".")[-2:] == tail
    )


def render(explanations: list[Explanation]) -> str:
    if not explanations:
        return "Nothing to compute: every node is cached (or not needed)."
    return "\n".join(str(e) for e in explanations)
