"""Migrating a cache after a pure rename of a class (or its move to another module).

A class's name is in the name of its step folders (``<module>.<Class>.<method>,<version>``),
and, through them, in the identity of everything computed from its results: a task fed
by it lives in an ``inputs-<digest>`` folder whose digest is of its inputs' uids (which name
the upstream step), and a map fed by it is named ``items-<digest>`` of that upstream's uid
in the uids of what follows. ``rename_class`` moves the class's config folders under the
new step name, then gives every ``inputs-*`` folder downstream the digest its inputs have
under the new names (rewriting its ``inputs.yaml``), so that the renamed code finds it all.

Each change is one atomic rename of a folder or one file written under a temporary name
then renamed over the old one; a migration killed at any point leaves folders that each
hold the results of their own computation (under the old or the new name), and running
it again finishes it. What is left as it was: the provenance recorded in index lines
(which upstream entries a result was computed from: rewriting index files would move the
lines that deletions name by their place), see docs/operating.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import logging
import os
import re
import typing as tp
from pathlib import Path

from ..graph.node import INPUTS_PREFIX
from ..graph.registry import LINK_NAME
from ..infra.uidfolder import INPUTS_FILE, write_atomic
from .readings import Readings, Span

logger = logging.getLogger("exca")
_NAME = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+")
_DIGEST = r"([0-9a-f]{8})"
_ITEMS = "items-"
_NOT_NODES = frozenset({"code", "logs"})  # (in a step folder, beside its config folders)


@dataclasses.dataclass
class Renaming:
    """What ``rename_class`` does (or would do, in a dry run): folder renames (old path,
    new path), ``inputs.yaml`` files rewritten with the new names, and what was left
    (a folder being computed or whose job is queued or running, with why), links of node
    folders pointed again at the code snapshot or logs that moved (with their new text);
    ``dryrun``:
    nothing was changed (a preview: ``left`` is what a run would leave now)."""

    root: Path
    dryrun: bool = False
    moves: list[tuple[Path, Path]] = dataclasses.field(default_factory=list)
    rewrites: list[Path] = dataclasses.field(default_factory=list)
    left: list[tuple[Path, str]] = dataclasses.field(default_factory=list)
    links: list[tuple[Path, str]] = dataclasses.field(default_factory=list)

    def __str__(self) -> str:
        def shown(path: Path) -> str:  # (under the root)
            return str(path.relative_to(self.root)) if self.root in path.parents else str(path)

        lines = [f"rename   {shown(a)} -> {shown(b)}" for a, b in self.moves]
        lines += [f"rewrite  {shown(p)}" for p in self.rewrites]
        lines += [f"relink   {shown(p)} -> {text}" for p, text in self.links]
        lines += [f"left     {shown(p)}: {why}" for p, why in self.left]
        return "\n".join(lines) or "nothing to do"

    def to_dict(self) -> dict[str, tp.Any]:
        return {
            "dryrun": self.dryrun,
            "moves": [[str(a), str(b)] for a, b in self.moves],
            "rewrites": [str(p) for p in self.rewrites],
            "left": [[str(p), why] for p, why in self.left],
            "links": [[str(p), text] for p, text in self.links],
        }


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf8", "surrogatepass")).hexdigest()[:8]


def _inputs_digest(inputs: dict[str, str]) -> str:
    """The digest of a node's inputs, as graph.node.Node.inputs_uid computes it."""
    return _md5("|".join(f"{name}={uid}" for name, uid in inputs.items()))


def _read_inputs(path: Path) -> dict[str, str] | None:
    """An inputs.yaml as written (every value a string, in its order); None: unreadable."""
    from ..plainyaml import pyyaml

    try:
        text = path.read_text(encoding="utf8")
        data = pyyaml().load(text, Loader=pyyaml().BaseLoader)
    except Exception:  # (unreadable, not yaml: left alone)
        return None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in data.items()
    ):
        return None
    return data


def _dirs(folder: Path) -> list[Path]:
    try:
        with os.scandir(folder) as entries:
            return sorted(
                Path(e.path)
                for e in entries
                if e.is_dir(follow_symlinks=False) and e.name[:1] != "."
            )
    except OSError:
        return []


@dataclasses.dataclass
class _InputsFolder:
    folder: Path
    inputs: dict[str, str]
    as_written: str  # the digest of its inputs.yaml as it is


class _Migration:
    """The plan of a migration, made from the cache as it is (before, or part-way through
    a killed one): every name is computed from what the folders hold, not remembered."""

    def __init__(self, root: Path, old: str, new: str) -> None:
        self.root, self.old, self.new = root, old, new
        # a step name of the class: <old>.<method...>,<version> (not <old>X..., nor a name
        # ending with it)
        self._step = re.compile(r"(?<![\w.])" + re.escape(old) + r"\.(?=[A-Za-z_][\w.]*,[^/]*/)")
        self.steps = [d for d in _dirs(root) if d.name != "logs"]
        # the config folder names of the class's steps, under both names: what a node's
        # uid of them may name (see readings.Readings: "<step>/<config>,<value>" is no
        # config of theirs); other steps' (maybe removed, or of another root) are not
        # looked at (their uids are renamed only in their inputs-/items- digests)
        self._step_configs: dict[str, set[str]] = {}
        for step in self.steps:
            forms = self._forms(step.name)
            if len(forms) > 1:  # (a step of the class)
                configs = {c.name for c in _dirs(step) if c.name not in _NOT_NODES}
                for name in forms:
                    self._step_configs.setdefault(name, set()).update(configs)
        self._readings: dict[str, Readings] = {}
        self._new_inputs: dict[int, dict[str, str]] = {}
        self.inputs: list[_InputsFolder] = []
        self.by_digest: dict[str, list[_InputsFolder]] = {}
        self.unreadable: list[Path] = []
        for step in self.steps:
            for config in _dirs(step):
                for sub in _dirs(config):
                    if not sub.name.startswith(INPUTS_PREFIX):
                        continue
                    inputs = _read_inputs(sub / INPUTS_FILE)
                    if inputs is None:
                        self.unreadable.append(sub)
                        continue
                    found = _InputsFolder(sub, inputs, _inputs_digest(inputs))
                    self.inputs.append(found)
                    for digest in {sub.name[len(INPUTS_PREFIX) :], found.as_written}:
                        self.by_digest.setdefault(digest, []).append(found)
        self._renamed: dict[str, str] = {}
        self._uid_upstream: dict[str, set[int]] = {}  # (ids of _InputsFolder)
        self.upstream: dict[int, set[int]] = {}  # an inputs folder's, transitively
        self._collecting: list[set[int]] = []
        self._new_digest: dict[int, str] = {}
        self._items: dict[str, str] = {}  # digest of "from:<uid>" -> that uid
        self._maps: list[str] = []  # the paths of the folders holding items, not a result
        self._collect_items()

    # --- names ---------------------------------------------------------------------------
    def step_name(self, name: str) -> str:
        """The name of a step folder under the new class name (unchanged if not of it)."""
        return self._step.sub(self.new + ".", name + "/")[:-1]

    def is_old_step(self, name: str) -> bool:
        return self.step_name(name) != name

    def _forms(self, step: str) -> set[str]:
        """A step folder's name as it was before the rename, and after."""
        back = re.sub(
            r"(?<![\w.])" + re.escape(self.new) + r"\.(?=[A-Za-z_][\w.]*,[^/]*/)",
            self.old + ".",
            step + "/",
        )[:-1]
        return {step, back, self.step_name(step), self.step_name(back)}

    def _collect_items(self) -> None:
        """Which uid each ``items-<digest>`` seen in an inputs.yaml stands for (a map fed
        by a node is named after that node's uid, before or after the rename): the uids
        of every node folder under both names, then those of the maps fed by them."""
        candidates: set[str] = set()
        configs: list[str] = []
        for step in self.steps:
            for config in _dirs(step):
                for form in self._forms(step.name):
                    configs.append(f"{form}/{config.name}")
        candidates.update(configs)
        for found in self.inputs:
            above = found.folder.parent
            for form in self._forms(above.parent.name):
                for digest in {found.folder.name[len(INPUTS_PREFIX) :], found.as_written}:
                    candidates.add(f"{form}/{above.name}/{INPUTS_PREFIX}{digest}")
        candidates.update(self._fed_maps(set(candidates)))
        seen = {
            digest
            for found in self.inputs
            for uid in found.inputs.values()
            for digest in re.findall("/" + _ITEMS + _DIGEST, uid)
        }
        new = candidates
        while new:
            for uid in new:
                self._items.setdefault(_md5("from:" + uid), uid)
            resolved = [d for d in seen if d in self._items]
            more = set()
            for digest in resolved:
                for name in self._maps:
                    more.add(f"{name}/{_ITEMS}{digest}")
            new = more - candidates
            candidates |= new

    def _fed_maps(self, tasks: set[str]) -> set[str]:
        """The uids a map node fed by another node may have: its folder's path, then
        ``/items-<digest>`` of any task's uid (under the names before and after the rename),
        or of a uid of the map that fed its items (as their provenance names its folder;
        a map's items shared by several nodes record one of them only, hence the tasks)."""
        from ..graph.node import TASK_KEY
        from ..graph.worker import MAP_REF
        from ..storage.cachedict import inspecting_view
        from ..storage.index import meta_of

        feeders: dict[str, set[str]] = {}  # map folder path -> folders of maps feeding it
        for step in self.steps:
            for config in _dirs(step):
                try:
                    records = inspecting_view(config).entries_info()
                except Exception:  # (unreadable: no map uid from there)
                    continue
                if not records or set(records) == {TASK_KEY}:
                    continue  # (a task's folder, or nothing)
                maps: set[str] = set()
                last: tp.Any = None
                for record in records.values():
                    meta = meta_of(record)
                    if meta is last:  # (a run of items of one writer shares it)
                        continue
                    last = meta
                    if isinstance(meta, dict) and isinstance(meta.get("up"), dict):
                        maps.update(str(k) for k, v in meta["up"].items() if v == MAP_REF)
                for form in self._forms(step.name):
                    feeders[f"{form}/{config.name}"] = maps
        self._maps = list(feeders)
        hashed = {uid: _md5("from:" + uid) for uid in tasks}
        uids: dict[str, set[str]] = {}

        def of(path: str) -> set[str]:
            if path in uids:
                return uids[path]
            uids[path] = set()  # (a cycle, which provenance has not)
            out = {f"{path}/{_ITEMS}{digest}" for digest in hashed.values()}
            for feeder in feeders.get(path, ()):
                step, _, rest = feeder.partition("/")
                for form in self._forms(step):
                    for uid in of(f"{form}/{rest}"):
                        out.add(f"{path}/{_ITEMS}{_md5('from:' + uid)}")
            uids[path] = out
            return out

        return {uid for path in feeders for uid in of(path)}

    # Which inputs-* folders each name depends on (``upstream``): a migration renames
    # the folders downstream first. A folder renamed and its inputs.yaml rewritten no
    # longer tells its former digest, which the inputs.yaml of a folder downstream names
    # until that one is migrated: done the other way round, a migration killed in between
    # left the folder downstream under its old name for good (computed again).
    def _depends(self, folders: set[int]) -> None:
        if self._collecting:
            self._collecting[-1].update(folders)

    def _items_digest(self, digest: str) -> str:
        source = self._items.get(digest)
        if source is None:  # (items given as a list: no uid of a node in there)
            return digest
        return _md5("from:" + self.renamed(source))

    def renamed(self, uid: str) -> str:
        """A node's uid under the new names: its step's if it is one of the class's, and
        the digests of its ``inputs-*`` and ``items-*`` parts."""
        done = self._renamed.get(uid)
        if done is not None:
            self._depends(self._uid_upstream[uid])
            return done
        self._renamed[uid] = uid  # (a cycle, which a DAG has not: left as it is)
        self._uid_upstream[uid] = upstream = set[int]()
        self._collecting.append(upstream)
        try:
            step, _, rest = uid.partition("/")
            config, slash, more = rest.partition("/")
            if self.is_old_step(step) and config in self._step_configs.get(step, ()):
                step = self.step_name(step)
            more = re.sub(
                "^" + re.escape(INPUTS_PREFIX) + _DIGEST,
                lambda m: f"{INPUTS_PREFIX}{self._inputs_digest_of(m.group(1))}",
                more,
            )
            more = re.sub(
                "(^|/)" + _ITEMS + _DIGEST + "$",
                lambda m: f"{m.group(1)}{_ITEMS}{self._items_digest(m.group(2))}",
                more,
            )
            text = f"{step}/{config}{slash}{more}"
        finally:
            self._collecting.pop()
        self._renamed[uid] = text
        self._depends(upstream)
        return text

    def reading(self, uid: str) -> Readings:
        found = self._readings.get(uid)
        if found is None:
            found = self._readings[uid] = Readings(uid, self._step_configs.get)
        return found

    def _renamed_inputs(
        self, inputs: dict[str, str], recorded: tp.Callable[[], set[str] | None]
    ) -> dict[str, str]:
        """Inputs' uids under the new names: in each, the uids of nodes (references to
        the class's nodes, or to what was computed from them) renamed where every reading
        of it has them (see readings.Readings); an input read several ways that would
        rename differently is left as it is (its node computes again: a key of a dict of
        inputs holding a reference's text must not be renamed, the renamed code giving
        the renamed key would read what the old key computed). ``recorded()``: the uids of
        the upstream tasks the folder's result was computed from (None: unknown): a
        reading must name each of them (a key holding one's text is no upstream)."""
        readings = {name: self.reading(uid) for name, uid in inputs.items() if "/" in uid}
        changes = {
            name: {
                span: new
                for span in r.spans
                if (new := self.renamed(r.text[span[0] : span[1]])) != r.text[span[0] : span[1]]
            }
            for name, r in readings.items()
        }
        counts = {name: r.count() for name, r in readings.items()}
        unsure = any(
            uses.get(span, 0) not in (0, total)
            for name, (total, uses) in counts.items()
            for span in changes[name]
        )
        known = recorded() if unsure else None  # (read only when needed: an index read)
        if known:  # (a reading names each recorded task: where only one span can, it must)
            for name, needed in _required(readings, known).items():
                counted = readings[name].count(required=needed) if needed else counts[name]
                if counted[0]:  # (else the record fits no reading: not used)
                    counts[name] = counted
        out = dict(inputs)
        for name, r in readings.items():
            total, uses = counts[name]
            if not total or any(uses.get(span, 0) not in (0, total) for span in changes[name]):
                continue  # (no reading, or readings renaming differently: left)
            text, last, parts = r.text, 0, []
            for (start, end), new in sorted(changes[name].items()):
                if uses.get((start, end)):
                    parts += [text[last:start], new]
                    last = end
            out[name] = "".join(parts) + text[last:]
        return out

    def _inputs_digest_of(self, digest: str) -> str:
        found = self.by_digest.get(digest, [])
        new = {self.new_digest(f) for f in found}
        if len(new) > 1:
            raise RuntimeError(
                f"rename_class: inputs-{digest} names several folders of {self.root} "
                f"({', '.join(str(f.folder) for f in found)}) whose inputs differ: cannot "
                "tell which one an input names"
            )
        for f in found:
            self._depends({id(f)} | self.upstream[id(f)])
        return new.pop() if new else digest

    def new_digest(self, found: _InputsFolder) -> str:
        key = id(found)
        if key not in self._new_digest:
            self._new_digest[key] = found.as_written  # (a cycle: left)
            self.upstream[key] = upstream = set[int]()
            self._collecting.append(upstream)
            try:
                self._new_digest[key] = _inputs_digest(self.new_inputs(found))
            finally:
                self._collecting.pop()
        return self._new_digest[key]

    def new_inputs(self, found: _InputsFolder) -> dict[str, str]:
        key = id(found)
        if key not in self._new_inputs:
            self._new_inputs[key] = self._renamed_inputs(
                found.inputs, lambda: _recorded_tasks(found.folder)
            )
        return self._new_inputs[key]


def _required(readings: dict[str, Readings], recorded: set[str]) -> dict[str, set[Span]]:
    """The spans (by input name) that a reading must have as node uids: for each upstream
    task recorded, the one span of all readings that can be it. Its uid in the record may
    be older than the inputs.yaml (an earlier migration renamed the latter only), so that
    is the one span of its shape (store.uid_shape: without class names and digests), or
    the one span of its very uid when every span of its shape is a recorded uid (else a
    key could hold the old text of a renamed one)."""
    from ..graph.store import uid_shape

    texts = {
        (name, span): r.text[span[0] : span[1]] for name, r in readings.items() for span in r.spans
    }
    by_text: dict[str, list[tuple[str, Span]]] = {}
    by_shape: dict[tuple[str, ...], list[tuple[str, Span]]] = {}
    for place, text in texts.items():
        by_text.setdefault(text, []).append(place)
        by_shape.setdefault(uid_shape(text), []).append(place)
    out: dict[str, set[Span]] = {name: set() for name in readings}
    for uid in recorded:
        alike = by_shape.get(uid_shape(uid), [])
        same = by_text.get(uid, [])
        if len(alike) == 1:
            found = alike[0]
        elif len(same) == 1 and all(texts[place] in recorded for place in alike):
            found = same[0]
        else:
            continue
        out[found[0]].add(found[1])
    return out


def _recorded_tasks(folder: Path) -> set[str] | None:
    """The uids of the upstream nodes the result of a task's ``inputs-*`` folder was
    computed from (its provenance), None if unknown (no result). A map is recorded by its
    config's uid: given as ``<uid>/items-``, the shape of the input naming it (its items'
    digest follows), so that its span is found (a dict of two maps was read several ways,
    and left: the task computed again after the rename). What fed a map is recorded too,
    though no input of the task: a uid no span has the shape of is passed over."""
    from ..graph.node import TASK_KEY
    from ..graph.worker import MAP_REF
    from ..storage.cachedict import inspecting_view
    from ..storage.index import meta_of

    try:
        records = inspecting_view(folder).entries_info()
    except Exception:  # (unreadable: nothing known)
        return None
    if set(records) != {TASK_KEY}:
        return None
    meta = meta_of(records[TASK_KEY])
    up = meta.get("up") if isinstance(meta, dict) else None
    if not isinstance(up, dict):
        return None
    return {f"{uid}/{_ITEMS}" if ref == MAP_REF else str(uid) for uid, ref in up.items()}


def rename_class(folder: str | Path, old: str, new: str, dryrun: bool = True) -> Renaming:
    """Migrate the cache root ``folder`` after the class ``old`` (``pkg.mod.Old``) was
    renamed or moved to ``new`` (``pkg.mod.New``) with no change of behaviour: its
    config folders go under the new step names, and what was computed from them gets the
    folder names its inputs have under the new names. ``dryrun=True`` (the default)
    changes nothing and returns what would be done."""
    root = Path(folder)
    for name in (old, new):
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ValueError(
                f"rename_class: {name!r} is not the dotted name of a class "
                "(<module>.<Class>, e.g. mypkg.models.Train)"
            )
    if old == new or new.startswith(old + ".") or old.startswith(new + "."):
        raise ValueError(
            f"rename_class: {old} -> {new}: one name must not be the other or start with it"
        )
    if not root.is_dir():
        raise FileNotFoundError(f"rename_class: {root} is not a folder (a cache root)")
    plan = _Migration(root, old, new)
    if plan.unreadable:
        logger.warning(
            "rename_class: left %d inputs-* folder(s) without a readable inputs.yaml (e.g. "
            "%s): what they hold cannot be told, and computes again if it was fed by %s",
            len(plan.unreadable),
            plan.unreadable[0],
            old,
        )
    old_steps = [s for s in plan.steps if plan.is_old_step(s.name)]
    as_field = _configs_naming_class(plan.steps, old)
    unmigrated = ""
    if as_field:
        unmigrated = (
            f"{old} is the class of a sub-config in {len(as_field)} config folder(s) of "
            f"other steps (e.g. {as_field[0]}): its name is part of their uids, which "
            "rename_class does not migrate (they, and what follows them, compute again)"
        )
    discriminated = _discriminator_hint(plan.steps, old, new)
    if discriminated:
        unmigrated = f"{unmigrated}; {discriminated}" if unmigrated else discriminated
    renaming = Renaming(root, dryrun=dryrun)
    # 1. the class's config folders, under the new step names
    configs: list[tuple[Path, Path]] = []
    conflicts: list[str] = []
    for step in old_steps:
        target_step = step.with_name(plan.step_name(step.name))
        for entry in _dirs(step):
            target = target_step / entry.name
            # (a step's logs or code folder exists under the new name once the renamed
            # class ran: merged, see _merge)
            if os.path.lexists(target) and entry.name not in _NOT_NODES:
                conflicts.append(f"{entry} and {target}")
            configs.append((entry, target))
    # 2. the inputs-* folders computed from them (any depth downstream)
    inputs_moves: list[tuple[_InputsFolder, Path, dict[str, str]]] = []
    for found in plan.inputs:
        current = found.folder.name[len(INPUTS_PREFIX) :]
        new_digest = plan.new_digest(found)  # (and what it depends on)
        new_inputs = plan.new_inputs(found)
        if current == found.as_written:
            if new_digest == current:
                continue  # (nothing of the class in there)
            target = found.folder.with_name(INPUTS_PREFIX + new_digest)
            if os.path.lexists(target):
                conflicts.append(f"{found.folder} and {target}")
            inputs_moves.append((found, target, new_inputs))
        elif current == new_digest:  # (renamed by a migration killed before its yaml)
            inputs_moves.append((found, found.folder, new_inputs))
        else:
            logger.warning(
                "rename_class: left %s: its inputs.yaml does not give its name (written by "
                "hand, or by another exca)",
                found.folder,
            )
    if conflicts:
        raise RuntimeError(
            f"rename_class {old} -> {new}: the new names are taken already (results computed "
            "since under the new name, or another class's): "
            + "; ".join(conflicts)
            + ". Remove one of each pair (e.g. `exca clean ROOT node FOLDER`), then run again"
        )
    if not old_steps and not inputs_moves and not _links(plan, [], dryrun=True):
        steps = sorted({s.name.split(",", 1)[0].rsplit(".", 1)[0] for s in plan.steps})
        raise ValueError(
            f"rename_class: no step folder of {old} (<module>.<Class>.<method>,<version>) in "
            f"{root}, and nothing computed from it to migrate; its steps are of: "
            + (", ".join(steps) or "none")
            + (f". {unmigrated}" if unmigrated else "")
        )
    if unmigrated:
        logger.warning("rename_class: %s", unmigrated)
    # paths below the class's step folders move with their config folder
    moved_configs = dict(configs)

    def now_at(path: Path) -> Path:  # (an inputs-* folder, in a config folder)
        above = moved_configs.get(path.parent)
        return path if above is None else above / path.name

    # (a step's logs and code folders last, and only when none of its config folders was
    # left: a job still queued or running writes its logs and result there)
    configs.sort(key=lambda move: move[0].name in _NOT_NODES)
    busy_steps: set[Path] = set()
    used = None  # (the logs and code snapshots of queued or running jobs: any step's, as
    # an array's job may write its logs, or run its code, in another node's step folder)
    from ..graph import registry

    look = registry.QueueLook()  # (the Slurm queue, asked once for a preview's checks)
    with _stopped_said(renaming, old, new):
        for source, target in configs:
            if source.name in _NOT_NODES and used is None:
                from .clean import _used_by_jobs

                used = _used_by_jobs(root, look)
            why = None
            if source.name in _NOT_NODES and source.parent in busy_steps:
                why = "a config folder of its step was left: run again once it is done"
            elif source.name in _NOT_NODES and used:
                from .clean import _used_by

                why = _used_by(source, used)
            if why is not None:
                renaming.left.append((source, why))
                moved_configs.pop(source)
            elif _move(source, target, renaming) if not dryrun else _free(source, renaming, look):
                renaming.moves.append((source, target))
            else:
                moved_configs.pop(source)
                busy_steps.add(source.parent)
        for step in old_steps:
            if not dryrun:
                from .clean import remove_emptied_step

                try:
                    remove_emptied_step(step)  # (emptied: what is left, e.g. a busy config, stays)
                except OSError:
                    pass
        # (downstream first: see _Migration._depends)
        inputs_moves.sort(key=lambda move: -len(plan.upstream.get(id(move[0]), ())))
        for found, target, new_inputs in inputs_moves:
            source = now_at(found.folder)
            target = now_at(target)
            if source != target:
                if not (
                    _move(source, target, renaming) if not dryrun else _free(source, renaming, look)
                ):
                    continue
                renaming.moves.append((source, target))
            yaml_path = target / INPUTS_FILE
            if not dryrun:
                from ..confdict import ConfDict

                write_atomic(yaml_path, ConfDict(new_inputs).to_yaml(), _permissions(yaml_path))
            renaming.rewrites.append(yaml_path)
        # the links of node folders to a code snapshot or job logs that moved (absolute,
        # or relative from a step folder to another's), made to point there again
        for link, text in _links(plan, renaming.moves, dryrun):
            if not dryrun:
                from ..graph import registry

                registry.link(link.parent, link.name, text)
            renaming.links.append((link, text))
    for a, b in renaming.moves:
        logger.debug("%s %s -> %s", "Would rename" if dryrun else "Renamed", a, b)
    # (one line: the returned Renaming, which `exca rename` prints, lists them all)
    logger.info(
        "rename_class %s -> %s in %s: %s %d folder(s), %d inputs.yaml rewrite(s), %d link(s), "
        "%d left",
        old,
        new,
        root,
        "would rename" if dryrun else "renamed",
        len(renaming.moves),
        len(renaming.rewrites),
        len(renaming.links),
        len(renaming.left),
    )
    return renaming


@contextlib.contextmanager
def _stopped_said(renaming: Renaming, old: str, new: str) -> tp.Iterator[None]:
    """An OSError (a full disk, a folder another user owns...) stopping a migration
    half-way: said with what it left (the bare "[Errno 28] No space left on device" told
    nothing of the cache) and what to do."""
    try:
        yield
    except OSError as error:
        if not renaming.dryrun:
            from ..storage.files import note_write_error

            note_write_error(error, renaming.root)
            error.add_note(
                f"rename {old} -> {new} stopped there, after {len(renaming.moves)} folder "
                "rename(s): each folder holds its own results, under the old name or the "
                "new one (nothing cached was lost); run it again to finish it"
            )
        raise


_LINKS = ("code", LINK_NAME)  # (a node folder's links: its job's code snapshot and logs)


def _links(
    plan: _Migration, moves: list[tuple[Path, Path]], dryrun: bool
) -> list[tuple[Path, str]]:
    """The links of node folders (``code``: the snapshot a job ran; ``submitit``: its
    logs) that the folder renames ``moves`` leave pointing elsewhere than at what they
    pointed to, or that point under an old step name (a migration killed before it
    relinked them): each with its new text (absolute if it was, else relative). With
    ``dryrun`` the folders are still where they were (``moves`` predicted), else moved.
    A link whose target is not found either way is left as it is."""
    root = plan.root
    prefixes = list(dict.fromkeys((os.path.abspath(root), os.path.realpath(root))))
    pairs = [(str(a.relative_to(root)), str(b.relative_to(root))) for a, b in moves]

    def through(path: str, steps: tp.Iterable[tuple[str, str]]) -> str:
        for a, b in steps:
            if path == a or path.startswith(a + os.sep):
                path = b + path[len(a) :]
        return path

    def after(path: str) -> str:
        return through(path, pairs)

    def before(path: str) -> str:
        return through(path, [(b, a) for a, b in reversed(pairs)])

    def exists_after(path: str) -> bool:
        if not dryrun:
            return os.path.exists(root / path)
        earlier = before(path)
        return after(earlier) == path and os.path.exists(root / earlier)

    def relative(text: str, folder: str) -> str | None:  # (a target under the root)
        if os.path.isabs(text):
            for prefix in prefixes:
                if text == prefix or text.startswith(prefix + os.sep):
                    return os.path.normpath(text[len(prefix) + 1 :] or ".")
            return None
        path = os.path.normpath(os.path.join(folder, text))
        return None if path == ".." or path.startswith(".." + os.sep) else path

    out: list[tuple[Path, str]] = []
    for step in plan.steps if dryrun else [d for d in _dirs(root) if d.name != "logs"]:
        for config in _dirs(step):
            if config.name in _NOT_NODES:
                continue
            for folder in [config, *(d for d in _dirs(config) if d.name.startswith(INPUTS_PREFIX))]:
                here = str(folder.relative_to(root))
                old_place, new_place = (here, after(here)) if dryrun else (before(here), here)
                for name in _LINKS:
                    try:
                        text = os.readlink(folder / name)
                    except OSError:  # (no such link)
                        continue
                    target = relative(text, old_place)
                    if target is None:
                        continue
                    target = after(target)
                    if not exists_after(target):  # (moved by a killed migration)
                        first, _, rest = target.partition(os.sep)
                        target = os.path.join(plan.step_name(first), rest)
                        if not exists_after(target):
                            continue
                    if relative(text, new_place) == target:
                        continue
                    if os.path.isabs(text):  # (under the same prefix)
                        prefix = next(p for p in prefixes if text.startswith(p + os.sep))
                        new_text = os.path.join(prefix, target)
                    else:
                        new_text = os.path.relpath(target, new_place)
                    out.append((root / new_place / name, new_text))
    return out


def _permissions(path: Path) -> int | None:
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        return None


def _move(source: Path, target: Path, renaming: Renaming) -> bool:
    """Rename a node folder (and its inputs-* folders) unless it is being computed or its
    job is queued or running; its new parent is made if missing (whether it moved)."""
    from ..storage.files import make_folder
    from .clean import held

    if source.name in _NOT_NODES:  # (a step's workdir copies or logs: moved as they are)
        make_folder(target.parent, _permissions(source.parent))
        return _merge(source, target, renaming)
    make_folder(target.parent, _permissions(source.parent))
    try:
        with held(source) as hold:
            if hold.busy is not None:
                renaming.left.append((source, hold.busy))
                logger.warning("Not renaming %s: %s (run again once it is done)", source, hold.busy)
                return False
            try:
                os.rename(source, target)
            finally:
                hold.moved_to = target
    except FileNotFoundError:  # (moved meanwhile, by another migration)
        renaming.left.append((source, "moved meanwhile"))
        return False
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        renaming.left.append((source, f"{target} exists"))
        return False
    return True


def _free(source: Path, renaming: Renaming, look: tp.Any) -> bool:
    """What ``_move`` would find, for a preview (nothing held, nothing moved): whether a
    node folder may move now; if not, it is in ``renaming.left`` with why."""
    from .clean import _busy_with_inputs

    if source.name in _NOT_NODES:
        return True
    busy = _busy_with_inputs(source, look=look)
    if busy is not None:
        renaming.left.append((source, busy))
        return False
    return True


def _merge(source: Path, target: Path, renaming: Renaming) -> bool:
    """Move a step's logs or code folder (no node: nothing computes into it) to target,
    merged into target if it exists (the renamed class ran already: its jobs' logs are
    there); an entry of the same name on both sides is left where it is (reported)."""
    try:
        os.rename(source, target)
        return True
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not target.is_dir():
            renaming.left.append((source, str(error)))
            return False
    moved = True
    with os.scandir(source) as entries:
        names = sorted(e.name for e in entries)
    for name in names:
        child, there = source / name, target / name
        if not os.path.lexists(there):
            try:
                os.rename(child, there)
            except OSError as error:
                renaming.left.append((child, str(error)))
                moved = False
        elif child.is_dir() and not child.is_symlink() and there.is_dir():
            moved = _merge(child, there, renaming) and moved
        else:
            renaming.left.append((child, f"{there} exists"))
            moved = False
    if moved:
        with contextlib.suppress(OSError):
            os.rmdir(source)
    return moved


def _discriminator_hint(steps: list[Path], old: str, new: str) -> str:
    """What a rename of a DiscriminatedModel subclass does not migrate: its class name
    (not its module) is its discriminator value, in the uids of the configs holding it
    ("" when the name stays, the class is not one, or no config holds it)."""
    name, new_name = old.rpartition(".")[2], new.rpartition(".")[2]
    if name == new_name:  # (moved to another module: the uids hold the name only)
        return ""
    held = _configs_holding_value(steps, name)
    if not held:  # (the usual case: no module imported to tell)
        return ""
    key = _discriminator_key(new) or _discriminator_key(old)
    if key == "":  # (an importable class, not a DiscriminatedModel)
        return ""
    found = [(folder, line) for folder, key_of, line in held if key in (None, key_of)]
    if not found:
        return ""
    folder, line = found[0]
    which = (
        f"{old} is a DiscriminatedModel subclass"
        if key
        else f"if {old} is a DiscriminatedModel subclass"
    )
    return (
        f"{which}, its class name is the discriminator value in the uids of "
        f"{len(found)} config folder(s) holding it (e.g. `{line}` in {folder}): a rename to "
        f"{new_name} changes these configs, which rename_class does not migrate: they (and "
        "what follows them) compute again in new folders, the old ones stay until cleaned "
        "(`exca clean`). To keep reading them, keep the class's name (moving it to another "
        "module needs no migration)"
    )


def _discriminator_key(name: str) -> str | None:
    """The discriminator key of the DiscriminatedModel class named ``name`` ("": a class
    of another kind; None: not importable here)."""
    import importlib

    from ..infra.discriminated import DiscriminatedModel

    module, _, attr = name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), attr)
    except Exception:  # (any import error of the user's module: unknown)
        return None
    if not isinstance(found, type):
        return None
    if not issubclass(found, DiscriminatedModel):
        return ""
    return found._exca_discriminator_key


def _configs_holding_value(steps: list[Path], value: str) -> list[tuple[Path, str, str]]:
    """The config folders whose uid.yaml holds a field of value ``value``, with that
    field's name and line (its first such field)."""
    pattern = re.compile(
        rf"(?:^|[\s.{{,])(?P<line>(?P<key>\w+):\s*['\"]?{re.escape(value)}['\"]?)\s*(?:$|[,}}])",
        re.MULTILINE,
    )
    found = []
    for config, text in _uid_texts(steps):
        match = pattern.search(text) if value in text else None
        if match is not None:
            found.append((config, match.group("key"), match.group("line")))
    return found


def _uid_texts(steps: list[Path]) -> tp.Iterator[tuple[Path, str]]:
    """Each config folder of ``steps`` with the text of its uid.yaml (unreadable ones are
    skipped)."""
    for step in steps:
        for config in _dirs(step):
            try:
                text = (config / "uid.yaml").read_text(encoding="utf8")
            except (OSError, UnicodeDecodeError):
                continue
            yield config, text


def _configs_naming_class(steps: list[Path], name: str) -> list[Path]:
    """The config folders whose uid names the class ``name`` as a sub-config's class (a
    subclass in a field annotated with its base: ``<field>._class: <name>`` in uid.yaml)."""
    from ..infra.identity import CLASS_KEY

    pattern = re.compile(
        rf"(^|[\s.{{,]){re.escape(CLASS_KEY)}:\s*['\"]?{re.escape(name)}['\"]?\s*($|[,}}])",
        re.MULTILINE,
    )
    return [config for config, text in _uid_texts(steps) if name in text and pattern.search(text)]
