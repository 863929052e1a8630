"""Why a node will compute: the plan's reason, and for a missing config the difference
with the nearest cached config of the same method (any version):
``optim.lr 0.01 → 0.02``, ``version 1 → 2``, "never computed", "cached error", "forced",
"stale: upstream X recomputed at ..."). Reads only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import shlex
import time
import typing as tp
from pathlib import Path

from ..confdict import ConfDict
from ..graph.decisions import FORCED_ITEMS_LATER, NodeRun
from ..graph.errors import JobFailedError, named_items
from ..graph.node import INPUTS_PREFIX, Group, Node, Value
from ..graph.planning import EDITED_ITEMS, Plan, PlanEntry
from ..graph.worker import MAP_REF
from ..infra.task import INPUTS_FILE
from ..infra.uidfolder import FULL_UID_FILE, UID_FILE, read_yaml, same_value
from ..storage.cachedict import CacheDict, inspecting_view, keeping_files
from ..storage.index import meta_of
from .inspect import group_entries, input_folders, without_links_to_siblings

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
    # never computed: steps of other methods holding a folder of this very config (its
    # folder name comes from its values only: a class or method renamed, or moved?)
    same_config_in: list[str] = dataclasses.field(default_factory=list)
    root: str | None = None  # the node's cache root (named in the migration command)
    # what feeds a call with inputs (or a map its items), as the plan says it: the
    # evaluations of a sweep, all <step>/default/items-<digest>, looked alike
    inputs: str | None = None
    # a map fed by a node: the node that fed the cached items of its config nearest to
    # its own (``diff`` then says how they differ: ``items.lr 0.2 → 0.3``)
    items_from: str | None = None

    def _migration(self, steps: list[str]) -> str:
        """How to migrate the cache when a single former step is of another class with
        the same method and version (a pure rename or move of the class)."""

        def split(step: str) -> tuple[str, str]:  # (class, ".method,version")
            name, _, version = step.partition(",")
            owner, _, method = name.rpartition(".")
            return owner, f".{method},{version}"

        if len(steps) != 1 or "__main__." in steps[0]:
            return ""
        (old, rest), (new, own) = split(steps[0]), split(self.uid.split("/")[0])
        if rest != own or old == new:
            return ""
        root = "ROOT" if self.root is None else shlex.quote(self.root)
        return (
            f" (if the class was renamed and nothing else changed: exca rename {root} {old} {new})"
        )

    def summary(self) -> str:
        if self.status == "missing" and self.action in ("compute", "fail"):
            # (a map says how many items are missing: all of them, when compared)
            prefix = "" if self.reason == "missing" else f"{self.reason}: "
            if self.nearest is None:
                if self.namesakes:
                    why = (
                        "a class defined in a script run as __main__ caches under __main__ "
                        "(import it from its module in that script)"
                        if any(n.startswith("__main__.") for n in self.namesakes)
                        else "the class's module was renamed or moved?"
                    )
                    return (
                        f"{prefix}never computed (no cached config of this method); a class "
                        "and method of the same names have cached configs in "
                        f"{', '.join(self.namesakes)}: {why}" + self._migration(self.namesakes)
                    )
                if self.reason not in ("missing", _READ_ONLY_MISSING):
                    return self.reason
                if self.same_config_in:
                    folder = self.uid.split("/")[1]
                    return (
                        f"{prefix}never computed (no cached config of this method); the same config "
                        f"folder, {folder}, is cached under {', '.join(self.same_config_in)}: "
                        "a class or method renamed, or moved to another module?"
                        + self._migration(self.same_config_in)
                    )
                return f"{prefix}never computed (no cached config of this method)"
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
        if self.items_from is not None:
            text += f"\n    nearest cached: the items from {self.items_from}"
        if self.inputs:
            text += f"\n    inputs: {self.inputs}"
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


def nearest_cached(
    node: Node, inputs: _InputConfigs | None = None
) -> tuple[Path | None, list[tuple[str, tp.Any, tp.Any]], int]:
    """The cached config of the same method (any version) closest to the node's config
    (the first by folder name among equally near ones), the differences (key, cached
    value, wanted value), and how many other cached configs are as near. A call with
    inputs is compared with the cached calls, inputs included: an input from a node by
    that node's config (``inputs.w.optim.lr``, see ``_InputConfigs``)."""
    if node.root is None or node.uid_config is None:
        return None, [], 0
    wanted = _flat(node.uid_config())
    with_inputs = bool(node.inputs)  # a call with inputs: its node is <config>/inputs-<digest>
    given = dict(node.inputs)
    inputs = inputs or _InputConfigs()  # (one per explain(): each folder read once)
    method, _, version = node.step.partition(",")
    best: tuple[int, Path, list[tuple[str, tp.Any, tp.Any]]] | None = None
    ties = 0
    for step_folder in sorted(Path(node.root).glob(f"{method},*")):
        if not step_folder.is_dir():  # (a loop of links: explain stopped with errno 40)
            continue
        other_version = step_folder.name.partition(",")[2]
        configs = (p for p in step_folder.iterdir() if p.is_dir() and p.name[0] != ".")
        # (hidden: being removed, see clean; a link to another config: that one)
        for config_folder in sorted(without_links_to_siblings(step_folder, configs)):
            for folder in input_folders(config_folder) if with_inputs else [config_folder]:
                if folder == node.folder or not inputs.has_results(folder):
                    continue
                own = folder / FULL_UID_FILE  # (a result's own record, if any: see inspect)
                full = inputs.yaml(own) or inputs.yaml(config_folder / FULL_UID_FILE)
                if full is None:
                    continue  # (nothing to compare with)
                cached = _flat(full)
                wanting = wanted
                if with_inputs:
                    recorded = inputs.yaml(folder / INPUTS_FILE) or {}
                    wanting = dict(wanted)
                    for name in sorted(set(given) | set(recorded)):
                        want, had = inputs.compare(given.get(name), recorded.get(name))
                        wanting.update(_prefixed(f"inputs.{name}", want))
                        cached.update(_prefixed(f"inputs.{name}", had))
                diff = [
                    (key, cached.get(key, _MISSING), wanting.get(key, _MISSING))
                    for key in sorted(set(cached) | set(wanting))
                    # (nan equal to nan: one read back from yaml is another object)
                    if not same_value(cached.get(key, _MISSING), wanting.get(key, _MISSING))
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


# a node's uid as inputs.yaml records it: <step>,<version>/<config>[/inputs-|/items-<digest>]
_NODE_UID = re.compile(r"[^/]+,[^/]*/[^/]+(/(inputs|items)-[0-9a-f]{8})?")
_ITEMS_PREFIX = "items-"  # (a map node's uid: its config folder, then its items' digest)
_INPUT_DEPTH = 4  # inputs of inputs compared by their configs (deeper: by their uids)


def _prefixed(prefix: str, flat: dict[str, tp.Any]) -> dict[str, tp.Any]:
    """``flat``'s keys under ``prefix`` (the key "" is the prefix itself)."""
    # (an entry of a list or dict of nodes, ``[lr=0.1]``, follows its prefix as is)
    return {
        prefix + (key if key[:1] in ("", "[") else f".{key}"): value for key, value in flat.items()
    }


class _InputConfigs:
    """What a node's inputs are, to compare two calls: an input coming from a node is
    that node's config (its step, then its uid config's values, and its own inputs, the
    same way), not its uid (two uids differ in any value: every cached call with other
    inputs was as near as any other, the first by folder name shown). Each node folder is
    read once."""

    def __init__(self) -> None:
        self.read: dict[tuple[Path, str], dict[str, tp.Any] | None] = {}
        self.own: dict[tuple[str, str], dict[str, tp.Any]] = {}  # wanted nodes, by key
        self.files: dict[Path, tp.Any] = {}  # yaml files read (explaining a sweep of n
        self.results: dict[Path, bool] = {}  # calls read each sibling's n times)
        self.fed: dict[tuple[Path, str], dict[str, int]] = {}  # map folders' feeders
        self.views: dict[Path, CacheDict[tp.Any]] = {}  # (a map's index read once)

    def view(self, folder: Path) -> CacheDict[tp.Any]:
        """An inspecting view of a node folder, one per folder (its index read once)."""
        if folder not in self.views:
            self.views[folder] = inspecting_view(folder)
        return self.views[folder]

    def feeders(self, root: Path, path: str, depth: int = 0) -> dict[str, int]:
        """The uids of the nodes that fed the items cached in the map folder ``root/path``
        (their provenance: a task's uid; a map's folder, its uid rebuilt from what fed
        that map), in the order first met, each with how many of the items it fed (0 for
        a map's: its items' provenance does not say which of them)."""
        key = (root, path)
        if key in self.fed:
            return self.fed[key]
        self.fed[key] = {}  # (a cycle, which provenance has not)
        out: dict[str, int] = {}
        try:
            cache = self.view(root / path)
            last: tp.Any = None
            direct: list[str] = []
            for record in cache.records(cache.keys()):
                meta = None if record is None else meta_of(record)
                if meta is not last:  # (a run of items of one writer shares it)
                    last, direct = meta, []
                    up = meta.get("up") if isinstance(meta, dict) else None
                    for uid, ref in up.items() if isinstance(up, dict) else ():
                        if ref != MAP_REF:
                            direct.append(str(uid))
                        elif depth < _INPUT_DEPTH:  # (a map feeding it: by its feeders)
                            for source in self.feeders(root, str(uid), depth + 1):
                                out.setdefault(
                                    f"{uid}/{_ITEMS_PREFIX}{_digest('from:' + source)}", 0
                                )
                for uid in direct:
                    out[uid] = out.get(uid, 0) + 1
        except Exception:  # (unreadable: no feeder known from there)
            pass
        self.fed[key] = out
        return out

    def items_source(self, root: Path, uid: str) -> str | None:
        """The uid of the node that fed the map node ``uid`` (<step>/<config>/items-<digest>)
        its items, when its config's cached items record it (None: items given as a list,
        or not found)."""
        path, _, items = uid.rpartition("/")
        for source in self.feeders(root, path):
            if _ITEMS_PREFIX + _digest("from:" + source) == items:
                return source
        return None

    def yaml(self, path: Path) -> tp.Any:
        """A yaml file's content (None: missing or unreadable), read once."""
        if path not in self.files:
            self.files[path] = read_yaml(path) if path.exists() else None
        return self.files[path]

    def has_results(self, folder: Path) -> bool:
        if folder not in self.results:
            self.results[folder] = _result_count(self.view(folder)) > 0
        return self.results[folder]

    def compare(
        self, wanted: tp.Any, recorded: tp.Any, depth: int = 0
    ) -> tuple[dict[str, tp.Any], dict[str, tp.Any]]:
        """(wanted, cached) flat descriptions of one input: by config when the wanted
        input is a node and the recorded uid names a node folder of its root that can be
        read, else by uid (a value, a list or dict of nodes, a removed folder)."""
        if isinstance(wanted, Node) and wanted.root is not None and isinstance(recorded, str):
            had = self.cached(Path(wanted.root), recorded)
            if had is not None and wanted.uid_config is not None:
                want, had = dict(self.wanted(wanted)), dict(had)
                inputs = recorded.rpartition("/")[2]
                if not inputs.startswith(INPUTS_PREFIX):
                    inputs = ""
                given = dict(wanted.inputs)
                folder = Path(wanted.root) / recorded
                before = self.yaml(folder / INPUTS_FILE) if inputs and given else None
                if before is not None and depth < _INPUT_DEPTH:
                    for name in sorted(set(given) | set(before)):
                        sub = self.compare(given.get(name), before.get(name), depth + 1)
                        want.update(_prefixed(f"inputs.{name}", sub[0]))
                        had.update(_prefixed(f"inputs.{name}", sub[1]))
                elif inputs or given:
                    want["inputs"] = wanted.inputs_uid or _MISSING
                    had["inputs"] = inputs or _MISSING
                source = None
                if isinstance(wanted.items, Node) and depth < _INPUT_DEPTH:
                    source = self.items_source(Path(wanted.root), recorded)
                if source is not None:  # (a map fed by a node: by that node's config)
                    del want["items"], had["items"]
                    sub = self.compare(wanted.items, source, depth + 1)
                    want.update(_prefixed("items", sub[0]))
                    had.update(_prefixed("items", sub[1]))
                return want, had
        if isinstance(wanted, Group) and isinstance(recorded, str) and depth < _INPUT_DEPTH:
            entries = group_entries(recorded, wanted.keys is not None)
            if entries is not None:  # (a list or dict of nodes: compared entry by entry)
                return self._compare_entries(wanted, entries, depth)
            if any(isinstance(s, Node) for s in wanted.sources):
                # (another kind of input was cached: each entry differs, not one key, or
                # a call given a list would be nearer than one given another dict)
                want, had = self._compare_entries(wanted, {}, depth)
                want[""], had[""] = _MISSING, recorded
                return want, had
        shown = wanted.uid if isinstance(wanted, Node | Value | Group) else _MISSING
        return {"": shown}, {"": _MISSING if recorded is None else recorded}

    def _compare_entries(
        self, wanted: Group, recorded: dict[str, str], depth: int
    ) -> tuple[dict[str, tp.Any], dict[str, tp.Any]]:
        """A list or dict of nodes against the one a cached call got: each entry as an
        input of its own (``[lr=0.1]``, ``[2]``), so that a sweep's aggregation says which
        of its inputs differ, and how, not the two whole lists of uids."""
        names = wanted.keys or [str(i) for i in range(len(wanted.sources))]
        given = dict(zip(names, wanted.sources))
        want: dict[str, tp.Any] = {}
        had: dict[str, tp.Any] = {}
        for name in sorted(set(given) | set(recorded), key=_entry_order):
            sub = self.compare(given.get(name), recorded.get(name), depth + 1)
            want.update({f"[{name}]{_dotted(k)}": v for k, v in sub[0].items()})
            had.update({f"[{name}]{_dotted(k)}": v for k, v in sub[1].items()})
        return want, had

    def wanted(self, node: Node) -> dict[str, tp.Any]:
        """A node's step and config values (and its items' digest, for a map)."""
        own = self.own.get(node.key)
        if own is None:
            assert node.uid_config is not None
            own = self.own[node.key] = {"": node.step, **_own_values(node.uid_config())}
            if node.items_uid is not None:
                own["items"] = node.items_uid
        return own

    def cached(self, root: Path, uid: str) -> dict[str, tp.Any] | None:
        """The step and config values of the node ``uid`` names in ``root`` (and its
        items' digest, for a map), from its folders (None: not a node uid, or nothing
        readable there)."""
        if (root, uid) in self.read:
            return self.read[root, uid]
        out: dict[str, tp.Any] | None = None
        if _NODE_UID.fullmatch(uid) is not None:
            step, config_uid, *rest = uid.split("/")
            own = None
            if rest and rest[0].startswith(INPUTS_PREFIX):  # (a result's own record, if any)
                own = self.yaml(root / uid / FULL_UID_FILE)
            full = own or self.yaml(root / step / config_uid / FULL_UID_FILE)
            if full is not None:
                out = {"": step, **_own_values(full)}
                if rest and rest[0].startswith(_ITEMS_PREFIX):
                    out["items"] = rest[0]
        self.read[root, uid] = out
        return out


def _digest(text: str) -> str:
    """The digest of a node's ``items-``/``inputs-`` folder name (see node.items_uid)."""
    return hashlib.md5(text.encode("utf8", "surrogatepass")).hexdigest()[:8]


def _entry_order(name: str) -> tuple[int, str]:
    """List entries by index, dict entries by key."""
    return (int(name), "") if name.isdigit() else (-1, name)


def _dotted(key: str) -> str:
    return f".{key}" if key else ""


def _own_values(config: dict[str, tp.Any]) -> dict[str, tp.Any]:
    """A config's flat values, but its infra's version (its step says it)."""
    return {k: v for k, v in _flat(config).items() if k != "infra.version"}


def _missing_and_failed(uids: tp.Sequence[str], todo: tp.Sequence[str], folder: Path) -> str:
    """A map's reason when some of its items are missing and others failed before (it
    was "1/3 missing, and 1 cached item error(s) (mode='retry' recomputes them) (not
    computed for this config yet, or not finished: its other items are cached)")."""
    wanted = list(dict.fromkeys(uids))
    missing = list(dict.fromkeys(todo))
    absent = set(missing)
    failed = inspecting_view(folder).error_keys([u for u in wanted if u not in absent])
    cached = len(wanted) - len(missing) - len(failed)
    said = (
        f"{len(missing)} of its {len(wanted)} item(s) not computed for this config yet, or "
        f"not finished ({named_items(missing)}): a call computes them; {len(failed)} item(s) "
        f"failed when computed before ({named_items(failed)}): their errors are cached, a "
        "call raises them and mode='retry' computes them again"
    )
    return said + (f"; the other {cached} item(s) are cached" if cached else "")


def _why_empty(folder: Path) -> str:
    """What the files of a node folder holding no result tell of how it got so (it said
    "interrupted, or cleared?" of a node that never started, e.g. below a failure)."""
    from ..graph import registry
    from ..storage.claims import CLAIMS_DIR, Claims
    from ..storage.index import INDEX_SUFFIX
    from .inspect import upstream_problems
    from .logs import unrecorded_job

    try:
        names = os.listdir(folder)
    except OSError:
        names = []
    if any(name.endswith(INDEX_SUFFIX) for name in names):  # (something was written)
        return "what was cached in it was removed since"
    dead = [c for c in Claims(folder).dead() if not c.hold]
    copied = [c for c in dead if c.copied]
    if copied and len(copied) == len(dead):
        return (
            f"the cache was copied while its computation ({copied[0].owner.describe()}) "
            "ran in the original: that one writes its result there, not here"
        )
    dead = [c for c in dead if not c.copied]
    if dead:
        return f"its computation ({dead[0].owner.describe()}) died before writing it"
    if registry.read_all(folder):  # (a job ended without writing: its plan reason says so)
        return "its job ended without writing it"
    job = unrecorded_job(folder)
    if job is not None:  # (it said "interrupted" only: a job ran, and its log is there)
        return (
            f"its job {job.job_id} ended without a result (no record names it any more: "
            "the call that submitted it cancelled it, e.g. on Ctrl-C, or node.clear() "
            f"dropped it); `exca logs {folder}` shows its log"
        )
    if CLAIMS_DIR in names:  # (claimed, and given back without a result: an interrupt
        # caches nothing, an error would be cached)
        return "its computation started and ended without a result: interrupted"
    said = "it never started: nothing was computed in it"
    problems = upstream_problems(folder)
    if problems:  # (e.g. a run that stopped at its failed input)
        said += "; " + "; ".join(text for text, _ in problems)
    return said


def _result_count(cache: CacheDict[tp.Any]) -> int:
    """How many entries of a node folder hold a result (not a cached error)."""
    keys = cache.keys()  # (not entries_info: a copy of each record, see index.META)
    return len(keys) - len(cache.error_keys(keys))


# a map's reason when items are simply missing (not cached errors or damaged payloads to
# redo): "3/10 missing", "read-only and 3/10 items missing (...)", "items known at run time"
_MISSING_ITEMS = re.compile(r"(read-only and )?\d+/\d+ (items )?missing|(read-only: )?items known")


# a read-only task's reason when its result is missing (it fails: see decisions)
_READ_ONLY_MISSING = "read-only and missing"


def _missing_items(reason: str) -> bool:
    return _MISSING_ITEMS.match(reason) is not None


def explain(*targets: Node, plan: Plan | None = None) -> list[Explanation]:
    """Explanations for every node of the targets' graph that is not simply reused."""
    with keeping_files():  # (reads only)
        plan = plan or Plan(list(targets))
        runs = {r.node.uid: r for r in plan.graph.runs.values()}
        inputs = _InputConfigs()  # (the cached folders, read once for all nodes)
        out = []
        for entry in plan.entries:
            if entry.action in ("reuse", "skip") and entry.status != "stale":
                continue
            note = ""  # (said last: after what explain adds to the plan's reason)
            if EDITED_ITEMS in entry.reason:
                reason, _, edited = entry.reason.partition(EDITED_ITEMS)
                entry, note = dataclasses.replace(entry, reason=reason), EDITED_ITEMS + edited
            explanation = _explain_entry(entry, runs[entry.uid], inputs)
            explanation.reason += note
            out.append(explanation)
    return out


def _explain_entry(entry: PlanEntry, run: NodeRun, inputs: _InputConfigs) -> Explanation:
    node = run.node
    explanation = Explanation(
        entry.uid, entry.status, entry.action, entry.reason, inputs=entry.inputs
    )
    if entry.reason.endswith(FORCED_ITEMS_LATER) and node.folder is not None:
        # (forced, items known at run time: how many of its cached items may be redone)
        cached = _result_count(inputs.view(node.folder))
        if cached:
            explanation.reason += f" ({cached} item(s) are cached for this config"
            source = node.items
            if isinstance(source, Node) and node.root is not None:
                # (those its upstream fed before: likely the ones computed again, not all)
                fed = inputs.feeders(Path(node.root), node.path).get(source.uid, 0)
                explanation.reason += f", {fed} of them computed from this upstream before"
            explanation.reason += ")"
        return explanation
    # (read-only: the same comparison, what a call computing it would compute)
    # (a read-only map's items left missing by a job that ended: its reason says how)
    left_by_job = isinstance(run.error, JobFailedError)
    if entry.reason in ("missing", _READ_ONLY_MISSING) or (
        node.kind == "map" and _missing_items(entry.reason) and not left_by_job
    ):
        # (the plan's counts, not the cache: a map's index can hold 100k entries)
        if run.uids is not None and len(run.todo or ()) < len(set(run.uids)):
            # some items are cached for this very config: the others were never computed
            # for it, or not finished (a run interrupted, a job that died), not a config
            # that differs from another one ("new items" misled after a Ctrl-C)
            if run.item_errors and node.folder is not None:  # (and some failed: said
                # plainly, with their names, rather than as two notes in parentheses)
                explanation.reason = _missing_and_failed(run.uids, run.todo or (), node.folder)
                return explanation
            if _items_changed(explanation, node, inputs):
                explanation.reason = f"{entry.reason}, new ones{explanation.reason}"
                return explanation
            removed = _removed_items(node.folder, run.todo or ())
            explanation.reason += (
                f" ({_removed_said(removed, run.todo or ())}; its other items are cached)"
                if removed
                else " (not computed for this config yet, or not finished: its other items "
                "are cached)"
            )
            return explanation
        if run.uids is None and node.kind == "map" and node.folder is not None:
            # items known at run time: the items of this config already cached are reused
            # then, whichever they are (not a config that differs from another one)
            cached = _result_count(inputs.view(node.folder))
            if cached:
                then = (
                    ""  # (the plan's reason says "a missing item fails" already)
                    if node.mode == "read-only"
                    else ": only the missing ones are computed"
                )
                said = f" ({cached} item(s) are cached for this config{then})"
                if _items_changed(explanation, node, inputs):
                    said = explanation.reason + said
                explanation.reason = entry.reason + said
                return explanation
        # its own folder, left without a result: no other config's differences to show
        # (a map's folder holding other items, even errors only, is in use: its counts tell)
        if node.folder is not None and node.folder.is_dir():
            if node.kind == "task" and not inputs.has_results(node.folder):
                what = "result"
            elif node.kind == "map" and not inspecting_view(node.folder).entries_info():
                what = "item"
            else:
                what = ""
            if what:
                why = _why_empty(node.folder)
                explanation.reason = (
                    f"{entry.reason}: its folder exists but holds no {what} ({why})"
                )
                return explanation
        if node.kind == "map" and _items_changed(explanation, node, inputs):
            # (its config's folder holds the items of other upstreams: not another config)
            explanation.reason = entry.reason + explanation.reason
            return explanation
        if node.kind == "map" and run.uids is not None and node.folder is not None:
            cached = _result_count(inputs.view(node.folder))
            if cached:  # (its config is cached, for other items: not another config)
                removed = _removed_items(node.folder, run.todo or ())
                explanation.reason += (
                    f" ({_removed_said(removed, run.todo or ())}"
                    if removed
                    else " (not computed for this config yet, or not finished"
                ) + f"; {cached} other item(s) are cached for this config)"
                return explanation
        how = _removed_folder(node)
        if how is not None:  # (not another config: this one, computed, then removed)
            explanation.reason = f"{entry.reason}: {how}"
            return explanation
        folder, explanation.diff, explanation.equally_near = nearest_cached(node, inputs)
        explanation.nearest = None if folder is None else str(folder)
        if folder is None:
            explanation.root = None if node.root is None else str(node.root)
            explanation.namesakes = namesakes(node)
            if not explanation.namesakes:
                explanation.same_config_in = same_config_elsewhere(node)
        elif not explanation.diff:
            explanation.legacy = node.legacy_name is not None and folder.name == node.legacy_name()
    return explanation


def _removed_folder(node: Node) -> str | None:
    """How the node's folder, gone, was removed, if a removal recorded it (see
    clean.record_removal): a removed config was explained as one that differs from the
    nearest cached one."""
    from .clean import removal_of

    if node.folder is None or node.folder.exists():
        return None
    record = removal_of(node.folder)
    if record is None:
        return None
    when = ""
    if isinstance(record.get("t"), int | float):
        when = time.strftime(" on %Y-%m-%d %H:%M", time.localtime(record["t"]))
    return (
        f"computed before, then its folder was removed{when} (exca clean, or "
        f"exca.ops.clean.remove_nodes: {record.get('reason', '?')})"
    )


def _removed_items(folder: Path | None, keys: tp.Sequence[str]) -> list[str]:
    """Which of these missing items were cached in the folder and removed since: their
    index files hold a removal of theirs (node.clear(), exca clean; a compaction drops it)."""
    import orjson

    from ..storage.index import INDEX_SUFFIX

    wanted = set(keys)
    if folder is None or not wanted:
        return []
    gone: set[str] = set()
    try:
        names = [n for n in os.listdir(folder) if n.endswith(INDEX_SUFFIX)]
        for name in names:
            with open(folder / name, "rb") as file:
                for line in file:
                    if b'"#del"' in line:  # (a removal's line: {"#del": key, "#of": ...})
                        try:
                            key = orjson.loads(line).get("#del")
                        except (orjson.JSONDecodeError, AttributeError):
                            continue
                        if key in wanted:
                            gone.add(key)
    except OSError:  # (a file compacted away meanwhile: what was read)
        pass
    return [k for k in dict.fromkeys(keys) if k in gone]


def _removed_said(removed: list[str], todo: tp.Sequence[str]) -> str:
    """Missing items computed before: removed since, not new items nor another config (a
    map node cleared was explained as a config that differs from another one)."""
    count = "" if len(removed) == len(set(todo)) else f"{len(removed)} of them, "
    return (
        f"{count}{named_items(removed)}: computed before, then removed (node.clear(), "
        "exca clean, or a forced run cut short)"
    )


def _items_changed(explanation: Explanation, node: Node, inputs: _InputConfigs) -> bool:
    """For a map fed by a node other than those that fed its config's cached items: sets
    the explanation's ``items_from`` (the nearest of those) and ``diff`` (``items.lr 0.2 →
    0.3``), and its reason to what follows the plan's (False: not so, nothing set). A map
    fed by a retrained model said "items known at run time" only: not which training
    changed, nor how."""
    source = node.items
    if not isinstance(source, Node) or node.root is None or source.uid_config is None:
        return False
    fed = inputs.feeders(Path(node.root), node.path)
    if not fed or source.uid in fed:
        return False
    method = source.step.partition(",")[0]
    # (sorted: of equally near ones, the first by name, as nearest_cached picks them)
    alike = sorted([uid for uid in fed if uid.partition(",")[0] == method] or fed)
    best: tuple[int, str, list[tuple[str, tp.Any, tp.Any]]] | None = None
    for uid in alike:
        want, had = inputs.compare(source, uid)
        want, had = _prefixed("items", want), _prefixed("items", had)
        diff = [
            (key, had.get(key, _MISSING), want.get(key, _MISSING))
            for key in sorted(set(want) | set(had))
            if not same_value(had.get(key, _MISSING), want.get(key, _MISSING))
        ]
        if best is None or len(diff) < best[0]:
            best = (len(diff), uid, diff)
    if best is None or not best[2]:
        return False
    explanation.items_from, explanation.diff = best[1], best[2]
    changes = ", ".join(f"{k} {_show(a)} → {_show(b)}" for k, a, b in best[2])
    explanation.reason = (
        f", from an upstream new to this config: {changes} against the nearest one that fed "
        "its cached items"
    )
    return True


def namesakes(node: Node) -> list[str]:
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


def same_config_elsewhere(node: Node) -> list[str]:
    """Step folders of the node's root, for other methods, holding a folder of the very
    config of this node (not ``default``: every class has one). A config's folder name
    comes from its values only, so such a folder is likely this config's results under
    the class or method's former name, when its fields are this config's (its
    full-uid.yaml names the same fields: another class sharing a value, ``seed=1``, is
    not named as a former name)."""
    if node.root is None or node.config_uid == "default" or node.uid_config is None:
        return []
    try:
        steps = [e.name for e in os.scandir(node.root) if "," in e.name and e.is_dir()]
    except OSError:
        return []
    fields: set[str] | None = None
    out = []
    for step in steps:
        folder = os.path.join(node.root, step, node.config_uid)
        if step == node.step or not os.path.exists(os.path.join(folder, UID_FILE)):
            continue
        full = read_yaml(Path(folder) / FULL_UID_FILE)
        if fields is None:
            fields = {str(k).split(".")[0] for k in node.uid_config()}
        # (its yaml's keys may be dotted: "infra.version")
        if full is None or {str(k).split(".")[0] for k in full} == fields:
            out.append(step)
    return sorted(out)


def render(explanations: list[Explanation]) -> str:
    if not explanations:
        return "Nothing to compute: every node is cached (or not needed)."
    return "\n".join(str(e) for e in explanations)
