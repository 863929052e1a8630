"""What a cache folder holds: one record per node folder (a config of a step, or a task
with inputs), with its readable config, status, entry counts, size, last write and job.

Reads only. Layout: ``<root>/<module>.<Class>.<method>,<version>/<uid>[/inputs-<digest>]``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fnmatch
import functools
import logging
import math
import os
import re
import typing as tp
from pathlib import Path

from ..confdict import ConfDict
from ..graph import registry, store
from ..graph.errors import shortened
from ..graph.node import INPUTS_PREFIX, TASK_KEY
from ..graph.planning import INPUT_SHOWN, listed_inputs, value_text
from ..infra.uidfolder import (
    CONFIG_FILE,
    FULL_UID_FILE,
    INPUTS_FILE,
    UID_FILE,
    read_text,
    read_yaml,
)
from ..plainyaml import pyyaml
from ..storage import saidonce
from ..storage.cachederror import record_line, shorten
from ..storage.cachedict import inspecting_view
from ..storage.claims import Claims
from ..storage.index import INDEX_SUFFIX

logger = logging.getLogger("exca")


STATUSES = ("success", "error", "running", "computing", "partial", "empty")
# the words infra.status() says for the same states: a user filtering by them means these
STATUS_ALIASES = {"completed": "success", "failed": "error"}


@dataclasses.dataclass
class NodeInfo:
    """One node folder of a cache."""

    step: str  # <module>.<Class>.<method>,<version>
    uid: str  # config uid [/inputs-<digest>]
    folder: Path
    kind: str  # task | map | empty
    status: str  # success | error | running | computing | partial | empty
    config: dict[str, tp.Any]  # uid.yaml (flat, dotted keys)
    entries: int = 0
    errors: int = 0
    size: int = 0  # bytes on disk
    modified: float = 0.0  # last index write (unix time)
    job_id: str | None = None
    job_state: str | None = None  # pending | held | running | ended
    job_reason: str | None = None  # squeue's reason of a held job (JobHeldUser...)
    stdout: str | None = None
    stderr: str | None = None
    error: str | None = None  # a task's cached error: "ValueError: its message" (shortened)
    note: str | None = None  # something odd about the folder (its uid.yaml removed...)
    # a task with inputs: what fed it, by parameter name, as its inputs.yaml records it
    # (an upstream node's uid, a value's uid, or a list or dict of them)
    inputs: dict[str, str] | None = None
    full_config: dict[str, tp.Any] = dataclasses.field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, tp.Any]:
        out = dataclasses.asdict(self)
        del out["full_config"]
        out["folder"] = str(self.folder)
        out["modified"] = _iso(self.modified)
        return out


def _iso(stamp: float) -> str | None:
    if not stamp:
        return None
    return datetime.datetime.fromtimestamp(stamp).isoformat(timespec="seconds")


# a folder being removed is first renamed to this prefix + the remover's unique name
# (see clean.remove_node_folder)
REMOVING_PREFIX = ".removing-"


def node_folders(root: Path, only: str | None = None) -> tp.Iterator[tuple[str, str, Path]]:
    """(step, uid, folder) of every node folder under a cache root (``only``: one step)."""
    try:
        steps = sorted(
            (
                e
                for e in os.scandir(root)
                if "," in e.name and (only is None or e.name == only) and _is_dir(e)
            ),
            key=lambda e: e.name,
        )
    except FileNotFoundError:
        return
    # (a step folder and a symlink to it: listed once, by its own name, not the alias's:
    # an alias "fit,1" of "fit,2" sorts first, and showed v2's configs as v1's)
    real_root = os.path.realpath(root) if any(e.is_symlink() for e in steps) else str(root)
    seen = {os.path.join(real_root, e.name) for e in steps if not e.is_symlink()}
    for step in steps:
        real = os.path.join(real_root, step.name)
        if step.is_symlink():
            real = os.path.realpath(step.path)
            if real in seen:
                continue
            seen.add(real)
        try:
            configs = sorted(
                # (hidden: a folder being removed, see clean.remove_node_folder)
                (e for e in os.scandir(step.path) if _is_dir(e) and not e.name.startswith(".")),
                key=lambda e: e.name,
            )
        except PermissionError as error:  # (a shared cache: skip what this user cannot read)
            logger.warning("Skipping %s: %s", step.path, error)
            continue
        for config in without_links_to_siblings(real, configs):
            path = Path(config.path)
            try:
                if not is_node_folder(path):
                    continue
            except PermissionError as error:
                logger.warning("Skipping %s: %s", path, error)
                continue
            yield step.name, config.name, path
            for sub in input_folders(path):
                yield step.name, f"{config.name}/{sub.name}", sub


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """``entry.is_dir()``; a loop of links is not a folder (as for pathlib), and is named
    (once): a command scanning a cache stopped at it with errno 40, or said nothing."""
    try:
        return entry.is_dir()
    except OSError as error:
        if error.errno == errno.ELOOP and saidonce.first(loop_key(entry.path)):
            # (the loop's other links: said with this one)
            saidonce.mark(loop_key(p) for p in _link_walk(entry.path)[1])
            logger.warning("Skipping %s: %s", entry.path, not_a_folder(entry.path))
        return False


def loop_key(path: str | os.PathLike[str]) -> tuple[str, str]:
    """The ``saidonce`` key of a link of a symlink loop, said skipped."""
    return ("symlink loop", os.path.abspath(path))


class _Folder(tp.Protocol):
    """A Path or an os.DirEntry (whose is_symlink() is known from the listing)."""

    @property
    def name(self) -> str: ...

    def is_symlink(self) -> bool: ...

    def __fspath__(self) -> str: ...


_F = tp.TypeVar("_F", bound=_Folder)


def without_links_to_siblings(step: str | Path, folders: tp.Iterable[_F]) -> list[_F]:
    """Folders of the step folder ``step``, but the symlinks to another of them (a
    shortcut, "best": the same node, listed, counted and cleaned once, as the folder it
    points to). Only the links are resolved (a stat for each)."""
    folders = list(folders)
    if not any(f.is_symlink() for f in folders):
        return folders
    real = os.path.realpath(step)
    targets = {os.path.join(real, f.name) for f in folders if not f.is_symlink()}
    return [f for f in folders if not f.is_symlink() or os.path.realpath(f) not in targets]


def not_a_folder(path: Path | str) -> str:
    """Why a path given as a folder is none, to say so: "no such folder", "not a folder",
    or the symlink that makes it one of neither (a loop of links, ``a -> b -> a``, a link
    into one, or a link to nothing), named with where it points."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return "a folder"
    if os.path.exists(path):
        return "not a folder"
    found = _broken_link(path)
    if found is None:
        return "no such folder"
    link, error = found
    # (Path drops a trailing slash: "a/" with a the loop is that loop, not under it)
    under = "" if Path(link).parts == Path(path).parts else "under "
    chain, loop = _link_trouble(link)
    if error.errno == errno.ELOOP:
        # (a link into a loop elsewhere: the loop is what to fix, not that link)
        kind = "a symlink loop" if loop in (None, link) else "a symlink into a symlink loop"
        return f"{under}{kind}: {chain} (fix or remove the link {loop or link})"
    if error.errno == errno.ENOENT:
        return f"{under}a symlink to nothing: {chain} (no such file or folder)"
    return f"not readable ({link}: {error.strerror})"


def _broken_link(path: str) -> tuple[str, OSError] | None:
    """The first link of a path (itself or a folder above it) that leads nowhere, and
    why (None: no such link)."""
    parts = Path(path).parts
    for end in range(1, len(parts) + 1):
        link = os.path.join(*parts[:end])
        if not os.path.islink(link):
            if os.path.lexists(link):
                continue
            return None
        try:
            os.stat(link)
        except OSError as error:
            return link, error
    return None


def _link_walk(link: str, limit: int = 8) -> tuple[list[str], list[str], int | None]:
    """``link`` and where it points, link after link, as written (up to a repeat); the
    path of each; and the index of the one a loop comes back to (None: no loop)."""
    chain, paths, current = [link], [link], link
    seen = {os.path.abspath(link): 0}
    while os.path.islink(current) and len(chain) <= limit:
        try:
            target = os.readlink(current)
        except OSError:
            break
        current = os.path.join(os.path.dirname(current), target)
        chain.append(target)
        paths.append(current)
        back = seen.setdefault(os.path.abspath(current), len(paths) - 1)
        if back != len(paths) - 1:
            return chain, paths, back
    return chain, paths, None


def _link_trouble(link: str, depth: int = 0) -> tuple[str, str | None]:
    """The links from ``link`` on, as ``a -> b -> a``, with the loop a link leads into
    through a folder of it (``y -> a/sub, where a -> b -> a``); and the link that loop
    comes back to (None: none seen)."""
    chain, paths, back = _link_walk(link)
    text = " -> ".join(chain)
    if back is not None:
        return text, paths[back]
    found = _broken_link(paths[-1]) if depth < 4 and paths[-1] != link else None
    if found is None or found[0] == paths[-1]:
        return text, None
    inner, loop = _link_trouble(found[0], depth + 1)
    return f"{text}, where {inner}", loop


def is_node_folder(folder: Path) -> bool:
    """Whether a folder is a node's: a config folder (``<root>/<step>/<uid>``, with its
    uid.yaml, or lost_uid_file) or the ``inputs-*`` folder of one."""
    if folder.name.startswith(INPUTS_PREFIX):
        config = folder.parent
        return (config / UID_FILE).exists() or lost_uid_file(config)
    return (folder / UID_FILE).exists() or lost_uid_file(folder)


def lost_uid_file(folder: Path) -> bool:
    """Whether a config folder (in a ``<method>,<version>`` folder) lost its uid.yaml
    (removed by hand, or by a sync): it still holds its full-uid.yaml, a file only exca
    writes. Index files or a config.yaml alone are not enough: a user's own CacheDict, or
    any folder of theirs, may hold them, and cleaning would remove it."""
    if "," not in folder.parent.name or (folder / UID_FILE).exists():
        return False
    return (folder / FULL_UID_FILE).is_file()


def input_folders(folder: Path) -> list[Path]:
    """The node folders of a config's method inputs (``inputs-*``), sorted."""
    try:
        subs = [e for e in os.scandir(folder) if e.name.startswith(INPUTS_PREFIX) and _is_dir(e)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [Path(e.path) for e in sorted(subs, key=lambda e: e.name)]


def disk_usage(folder: Path, recursive_into_inputs: bool = False) -> tuple[int, float]:
    """(bytes on disk, last index write) of a node folder (sub-node folders excluded)."""
    total = 0
    modified = 0.0
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.is_symlink():
                continue
            if entry.is_dir():
                if (
                    current == folder
                    and entry.name.startswith(INPUTS_PREFIX)
                    and not recursive_into_inputs
                ) or entry.name.startswith(REMOVING_PREFIX):  # (not the node's any more)
                    continue
                stack.append(Path(entry.path))
                continue
            try:
                stat = entry.stat()
            except FileNotFoundError:  # a claim or temporary file removed meanwhile
                continue
            total += stat.st_blocks * 512
            if entry.name.endswith(INDEX_SUFFIX):
                modified = max(modified, stat.st_mtime)
    return total, modified


# (the line for a job that ended without writing its result, when nothing tells more:
# its log, if it wrote one, tells how)
_DIED = "ended without writing its result (killed, out of memory, cancelled...?)"
_LOG_SHOWS = ": `exca logs FOLDER --stderr` shows how"
_NO_LOG = "; it wrote no log (cancelled before it started?)"


def step_selects(step: str, name: str) -> bool:
    """Whether a ``--step`` filter selects a step folder ``<module>.<Class>.<method>,
    <version>``: a glob, or a substring; with a version (copied from what `exca list`
    prints), that method and version only (``Train.fit,1``: not ``,10`` nor ``,1.5``, nor
    ``PreTrain.fit,1``; ``,1``: every method's version 1)."""
    if fnmatch.fnmatch(name, step):
        return True
    if "," not in step:
        return step in name
    method, _, version = step.partition(",")  # (the module may be left out: Train.fit,1)
    name_method, _, name_version = name.partition(",")
    if method and name_method != method and not name_method.endswith("." + method):
        return False  # (PreTrain.fit is not Train.fit)
    return not version or name_version == version  # (Train.fit, : every version)


ERROR_WIDTH = 200  # (characters of a cached error `exca list` shows)


def error_line(record: dict[str, tp.Any], node_uid: str) -> str:
    """A task's cached error on one line, as `exca list` shows it next to the node's uid:
    without that uid again (a lost job's error starts "<uid> not computed: job ..."), cut
    keeping its closing advice ("(use mode='retry' to recompute)")."""
    line = record_line(record, width=1 << 62)
    kind, sep, message = line.partition(": ")
    for said in (f"{node_uid} not computed: ", f"{node_uid}: "):
        if sep and message.startswith(said) and len(message) > len(said):
            line = f"{kind}: {message[len(said) :]}"
            break
    return shorten(line, ERROR_WIDTH)


def _configs(folder: Path) -> tuple[dict[str, tp.Any], dict[str, tp.Any], str | None]:
    """A node folder's configs (flat): its uid.yaml, its full-uid.yaml (every uid value,
    defaults too: what ``--where`` matches; config.yaml when both files are gone), and a
    note when its uid.yaml is missing or damaged."""
    config_folder = folder.parent if folder.name.startswith(INPUTS_PREFIX) else folder
    uid_data = read_yaml(config_folder / UID_FILE)
    config = ConfDict(uid_data or {}).flat()
    # (a result of a call with inputs may record its own, when computed under other
    # sub-config versions than its config folder's file says)
    own = folder / FULL_UID_FILE if folder != config_folder else None
    full_path = own if own is not None and own.exists() else config_folder / FULL_UID_FILE
    full = ConfDict(read_yaml(full_path) or {}).flat()
    note = None
    damaged = uid_data is None and (config_folder / UID_FILE).is_file()
    if not config and (lost_uid_file(config_folder) or damaged):
        note = (
            f"{UID_FILE} unreadable (damaged?): a call of its config still reuses it; "
            "remove the file and that call writes it back"
            if damaged
            else f"{UID_FILE} missing (removed by hand?): a call of its config still "
            "reuses it, and writes it back"
        )
        if not full:  # (config.yaml: every value, uid or not; for `--where` filters)
            full = ConfDict(read_yaml(config_folder / CONFIG_FILE) or {}).flat()
    return config, full, note


def describe(
    step: str,
    uid: str,
    folder: Path,
    queued: set[str] | None = None,
    records: list[registry.JobRecord] | None = None,
) -> NodeInfo:
    """The NodeInfo of one node folder (``records``: its job records, if read already)."""
    config, full, note = _configs(folder)
    cache = inspecting_view(folder)
    cache.refresh()
    # (keys and error keys: entries_info copies each record whose metadata is kept as
    # bytes, see index.META, a cost per item of a large map)
    keys = cache.keys()
    errors = len(cache.error_keys(keys))
    kind = "empty"
    if keys:
        kind = "task" if keys == [TASK_KEY] else "map"
    task = cache.entry(TASK_KEY) if kind == "task" else None
    entries: dict[str, tp.Any] = {TASK_KEY: task.info} if task is not None else dict.fromkeys(keys)
    size, modified = disk_usage(folder)
    info = NodeInfo(step, uid, folder, kind, "empty", config, len(entries), errors, size, modified)
    info.full_config = full
    info.note = note
    if records is None:
        records = registry.read_all(folder, copied=True)
    if queued is None:  # (one squeue call for the folder's Slurm jobs)
        queued = registry.queued_jobs([r.job_id for r in records if r.cluster == "slurm"])
    # the latest active job (a chunk job may still run after a later one ended), else the latest
    record = next((r for r in reversed(records) if registry.still_running(r, queued)), None)
    if record is not None:
        info.job_state = "running"
        if registry.last_queue_state(record.job_id) == "PENDING":
            info.job_state = "pending"  # (as squeue said, in the call just made)
            info.job_reason = registry.held(record.job_id)
            if info.job_reason is not None:  # (it may wait for ever: not plain pending)
                info.job_state = "held"
    elif records or kind == "task":
        record, elsewhere = _producer(records, entries.get(TASK_KEY) if kind == "task" else None)
        info.job_state = "ended" if record is not None or elsewhere is not None else None
        info.job_id = elsewhere  # (computed inside the job of another node: its logs)
    if record is not None:
        info.job_id = record.job_id
        info.stdout, info.stderr = str(record.stdout), str(record.stderr)
    # (a removal's hold keeps new claims out while it renames the folder: not a computation)
    computing = any(not claim.hold for claim in Claims(folder).current())
    # a job of a detached run that found an input missing records "upstream failed" and
    # exits: not computed, as a waiting run leaves it (its inputs' problems are noted)
    skipped = kind == "task" and store.upstream_failed_type(entries[TASK_KEY].get("t", ""))
    if kind == "task":
        info.status = "empty" if skipped else "error" if errors else "success"
    elif kind == "map":
        info.status = "partial" if errors else "success"
    if info.job_state in ("running", "pending", "held") and (kind == "empty" or kind == "map"):
        info.status = "running"  # queued, or computing inside its job
    elif computing:
        info.status = "computing"
    if info.status == "error":  # (not while it is computed again)
        info.error = error_line(entries[TASK_KEY], f"{step}/{uid}")
    elif (
        info.status == "empty" and info.job_state == "ended" and record is not None and not skipped
    ):
        # (as status() says: "failed"; a copy's job wrote into the original: not a failure;
        # a debug job ran in its submitting process, as with cluster None: ended without
        # its outcome, that process was interrupted (a Ctrl-C, or a KeyboardInterrupt of the
        # method), which caches nothing: status() reads its record alike, not submitted)
        died = (
            not record.foreign and record.cluster != "debug" and not registry.wrote_outcome(record)
        )
        if died:  # (not ended by its method's KeyboardInterrupt, nor by a full disk met
            # storing its result: no failure, the next call computes it, as status() says;
            # its record is set aside then)
            from ..graph.executors import ended_not_cached

            died = not ended_not_cached(record)
        if died:
            info.status = "error"
            info.error = f"job {record.job_id} {_DIED}"  # (see _describe_dead_jobs)
            info.error += _LOG_SHOWS if record.stderr.exists() else _NO_LOG
        elif record.foreign:  # (as a plan of the copy says it: that job's state there)
            _say_copied_job(info, record)
    elif kind == "map" and info.status in ("success", "partial"):
        left = _items_left_by_dead_jobs(folder, records, set(entries), queued)
        if left is not None:  # (a killed chunk job: "success" hid the items it never wrote)
            info.status, info.error = "partial", left
    # (a dead job's words come first: its items are the same)
    stopped = info.status in ("success", "partial", "empty") and info.error is None
    if kind == "empty" and stopped and info.job_state is None:
        info.error = _task_interrupted(folder)  # (a task's call or job stopped by Ctrl-C)
    if kind in ("map", "empty") and stopped and info.error is None:
        left = _items_left_by_calls(folder, set(entries))
        if left is not None:  # (a call stopped part-way where it was made)
            info.status, info.error = "partial", left
    return info


def _say_copied_job(info: NodeInfo, record: registry.JobRecord) -> None:
    """A folder copied (or moved) while the job of its last record computed into the
    original: the job's state is its state there (it said "ended" of a job still running
    there), and the note says what ``explain`` of the copy says."""
    from ..graph.planning import copied_job_said

    running, said = copied_job_said(record)
    info.job_state = "running" if running else "ended"
    info.note = f"{info.note}; {said}" if info.note else said


def _task_interrupted(folder: Path) -> str | None:
    """What ``exca list`` says of a task folder holding nothing whose last call was
    interrupted (its KeyboardInterrupt, or Ctrl-C cancelling its job, whose record then
    goes: a note of the call, see registry.note_interrupted). None: no such note."""
    notes = [n for n in registry.interrupted_calls(folder) if n["keys"] == [TASK_KEY]]
    if not notes:
        return None
    note = notes[-1]
    when = _iso(note.get("time") or 0.0) or "?"
    where = f"pid {note.get('pid')} on {note.get('host')}"
    return f"interrupted at {when} ({note.get('how')}, a call of {where}); a call computes it"


def _items_left_by_calls(folder: Path, cached: set[str]) -> str | None:
    """What ``exca list`` says of a map's calls made without a job that stopped before
    caching all of their items: interrupted (a note of the call, see
    registry.note_interrupted) or killed (the claim its dead process left). None: none."""
    said = []
    hashed: tp.Any = None  # (the hashes of the cached uids: for a big call's note)
    for note in registry.interrupted_calls(folder):
        keys = [str(k) for k in note["keys"]]
        if keys == [TASK_KEY]:
            continue  # (a task's: see _task_interrupted)
        absent = sum(1 for k in keys if k not in cached)
        at = f" at item {note['item']!r}" if note.get("item") is not None else ""
        where = f"pid {note.get('pid')} on {note.get('host')}"
        if "digest" in note:  # (a big call: the items it left noted, see NOTED_KEYS)
            count, then = note.get("count"), note.get("cached")
            how_far = f"having cached {then} of its {count} item(s) then"
            if then is None:
                how_far = f"computing {count} item(s)"
            left = registry.left_hashes(note)
            if left is not None:  # (every item it left, hashed: those not cached counted)
                hashed = registry.uid_hashes(cached) if hashed is None else hashed
                absent = _not_in(left, hashed)
                if not absent:
                    continue  # (every item it left is cached now)
                now = f"{absent} of the {note.get('left')} it left not cached now"
            elif "left" not in note:  # (an older note: the call's first items)
                now = f"{absent} of its first {len(keys)} not cached now"
            elif registry.noted_all_left(note):
                if not absent:
                    continue  # (every item it left is cached now)
                now = f"{absent} of the {len(keys)} it left not cached now"
            else:
                now = f"{absent} of the first {len(keys)} of the {note['left']} it left not cached now"
            said.append(f"a call ({where}) ended on {note.get('how')}{at}, {how_far} ({now})")
        elif absent:
            said.append(
                f"a call ({where}) ended on {note.get('how')}{at}, having cached "
                f"{len(keys) - absent} of its {len(keys)} item(s)"
            )
    for claim in Claims(folder).dead():
        if claim.hold or claim.unreadable or claim.owner.job_id or TASK_KEY in claim.keys:
            continue  # (a removal's hold; a job's claim: its record tells; a task's)
        absent = sum(1 for k in claim.keys if k not in cached)
        if absent and claim.copied:  # (its call computes into the original: alive)
            said.append(
                f"copied while a call ({claim.owner.describe()}) computed {len(claim.keys)} "
                f"item(s) into the original, {len(claim.keys) - absent} of them cached here"
            )
        elif absent:
            said.append(
                f"a call ({claim.owner.describe()}) died (killed?) while computing "
                f"{len(claim.keys)} item(s), having cached {len(claim.keys) - absent} of them"
            )
    if not said:
        return None
    return "; ".join(said) + "; a call computes the items left"


def _not_in(hashes: tp.Any, among: tp.Any) -> int:
    """How many of some sorted distinct uid hashes are not among others (numpy arrays)."""
    import numpy as np

    return int(np.count_nonzero(~np.isin(hashes, among, assume_unique=True)))


def _items_left_by_dead_jobs(
    folder: Path, records: list[tp.Any], cached: set[str], queued: set[str]
) -> str | None:
    """What ``exca list`` says of a map's chunk jobs that ended without writing all of
    their items (killed, out of memory, cancelled): None when there is none."""
    dead, missing, total = [], 0, 0
    for record in records:
        if record.foreign or record.cluster == "debug" or registry.still_running(record, queued):
            # (a copy's job writes elsewhere; a running job is not done; a debug job ran in
            # its submitting process, as with cluster None: see describe)
            continue
        items = registry.items_of(folder, record)
        absent = sum(1 for item in items or () if item not in cached)
        if absent and not registry.wrote_outcome(record):
            dead.append(record)
            missing, total = missing + absent, total + len(items or ())
    if not dead:
        return None
    jobs = ", ".join(r.job_id for r in dead)
    said = f"job {jobs} ended" if len(dead) == 1 else f"jobs {jobs} ended"
    how = _local_ending(dead[0]) if len(dead) == 1 else None
    how = how if how is not None else _slurm_endings(dead)
    if how is not None:  # (the words of the call's error)
        return f"{said} without writing {missing} of {total} item(s): {how}; a call computes them again"
    logs = _LOG_SHOWS if any(r.stderr.exists() for r in dead) else _NO_LOG
    return (
        f"{said} without writing {missing} of {total} item(s) (killed, out of memory, "
        f"cancelled...?){logs}; a call computes them again"
    )


def _slurm_endings(dead: list[tp.Any]) -> str | None:
    """How Slurm chunk jobs that ended without writing all of their items ended, as the
    call's error says it (one sacct call: "job 12_0 timed out (state TIMEOUT)...; and so
    in 1 other job: 12_1"; it said "killed, out of memory, cancelled...?"), or None (not
    all on Slurm, or sacct does not tell)."""
    if any(r.cluster != "slurm" for r in dead):
        return None
    from ..graph import executors
    from ..graph.errors import ending_line, same_endings

    try:
        endings = registry.slurm_endings([r.job_id for r in dead], unknown=True)
        if any(r.job_id not in endings for r in dead):
            return None
        hows = [(r.job_id, executors.recorded_handle(r).ended_how(endings[r.job_id])) for r in dead]
    except Exception:  # (the generic words stay)
        return None
    return "; ".join(ending_line(how) for how in same_endings(hows))


def _local_ending(record: tp.Any) -> str | None:
    """How a local job that ended without writing all of its work ended, as the end of
    its log says (cancelled, its process killed by a signal, or a sys.exit in the method,
    as the call says it), or None (not told)."""
    if record.cluster != "local":
        return None
    from ..graph import executors
    from ..graph.errors import exit_said, interrupt_said
    from ..graph.registry import killed_words

    try:
        stderr = Path(record.stderr)
        if not stderr.exists():
            return None
        cancelled = executors._cancelled_local_job(record.job_id, stderr)
        if cancelled is not None and " was cancelled " in cancelled:
            return "it was cancelled (interrupted by SIGINT, which job.cancel() sends)"
        said = interrupt_said(cancelled) if cancelled is not None else None
        if said is not None:  # (the method's own KeyboardInterrupt, at an item)
            return said.partition("; its log: ")[0]
        tail = executors.read_tail(stderr)
        signal_name = executors.local_signal_in_log(tail)
    except OSError:
        return None
    if signal_name is None:
        return exit_said(tail)
    return killed_words(signal_name)


def upstream_problems(
    folder: Path, infos: dict[Path, NodeInfo] | None = None
) -> list[tuple[str, Path]]:
    """Why a node with inputs may hold nothing (e.g. not computed as its upstream failed),
    from its inputs.yaml: its inputs that are nodes of its cache root and hold an error,
    item errors or nothing, each said with its folder (``infos``: the NodeInfos made
    already, by folder; those made here are added)."""
    return _problems_of(_upstream_nodes(folder, infos))


def _upstream_nodes(
    folder: Path,
    infos: dict[Path, NodeInfo] | None = None,
    chained: _ChainedIndex | None = None,
) -> list[tuple[str, str, Path, NodeInfo]]:
    """The nodes a node needed computed first: its inputs (its inputs.yaml: read once)
    that are nodes of its cache root, and the cached tasks of its sub-configs (see
    _chained_nodes): (what it is, "input 'a'" or "sub-config 'data'"; uid, folder,
    NodeInfo) each (``infos``: see upstream_problems; ``chained``: the steps' configs read
    so far)."""
    info = infos.get(folder) if infos is not None else None
    inputs = info.inputs if info is not None and info.inputs is not None else _inputs_of(folder)
    chained_nodes = _chained_nodes(folder, infos, chained or _ChainedIndex())
    if not inputs:
        return chained_nodes
    root = registry.root_of(folder)
    out = []
    for name, uid in inputs.items():
        # (a list or dict of inputs, ``[uid,uid]``: each of its nodes, its index or key
        # named; its uid as a path named no folder, so no note told a member failed)
        members = group_members(str(uid), lambda u: _is_node(root, u))
        named = [(None, str(uid))] if members is None else members
        for index, (key, member) in enumerate(named):
            found = _described_node(root, member, infos)
            if found is None:
                continue
            label = f"input {str(name)!r}"
            if members is not None:
                label += f"[{index}]" if key is None else f"[{key!r}]"
            out.append((label, member, *found))
    return out + chained_nodes


def _node_path(root: Path, uid: str) -> tuple[Path, str, str] | None:
    """Where the node ``uid`` of a cache root would be, with its step and config uid
    (None: a value's uid, or a group's)."""
    step, _, rest = uid.partition("/")  # (a value's uid, or a group: not a node)
    if "," not in step or not rest or rest.startswith("/") or uid[:1] in ("[", "{"):
        return None
    path = root / uid
    if path.name.startswith("items-"):  # (a map node: its items' digest)
        path, rest = path.parent, rest.rpartition("/")[0]
    return path, step, rest


def _is_node(root: Path, uid: str) -> bool:
    where = _node_path(root, uid)
    return where is not None and where[0].is_dir() and is_node_folder(where[0])


def _described_node(
    root: Path, uid: str, infos: dict[Path, NodeInfo] | None
) -> tuple[Path, NodeInfo] | None:
    """(folder, NodeInfo) of the node ``uid`` of a cache root (``infos``: see
    upstream_problems), None if it is not one."""
    where = _node_path(root, uid)
    if where is None:
        return None
    path, step, rest = where
    info = infos.get(path) if infos is not None else None
    if info is None:
        if not path.is_dir() or not is_node_folder(path):
            return None
        try:
            info = describe(step, rest, path)
        except (PermissionError, IsADirectoryError):  # (skipped by inspect, warned)
            return None
        if infos is not None:
            infos[path] = info
    return path, info


class _ChainedIndex:
    """The full uid configs of the node folders of a step, read once per listing (the
    sub-configs of many parents are looked for in the same steps)."""

    def __init__(self) -> None:
        self._steps: dict[Path, list[tuple[str, Path, dict[str, tp.Any]]]] = {}

    def steps(self, root: Path, version: str) -> list[Path]:
        """The step folders of a root for a method version (``<...>,<version>``)."""
        try:
            entries = list(os.scandir(root))
        except OSError:
            return []
        return [Path(e.path) for e in entries if e.name.endswith(f",{version}") and _is_dir(e)]

    def configs(self, step: Path) -> list[tuple[str, Path, dict[str, tp.Any]]]:
        """(uid, folder, flat full uid config) of the config folders of a step."""
        if step not in self._steps:
            found = []
            for _, uid, path in node_folders(step.parent, only=step.name):
                if "/" in uid:  # (a call with inputs: never chained)
                    continue
                try:
                    full = ConfDict(read_yaml(path / FULL_UID_FILE) or {}).flat()
                except (PermissionError, IsADirectoryError):
                    continue
                found.append((uid, path, full))
            self._steps[step] = found
        return self._steps[step]


def _sub_configs(
    config: tp.Any, path: tuple[str, ...] = ()
) -> tp.Iterator[tuple[tuple[str, ...], dict[str, tp.Any]]]:
    """(path, sub-config) of each sub-config of a config.yaml (at any depth, through
    dicts and lists) whose infra has a folder: those whose task a parent's call chains."""
    if isinstance(config, dict):
        infra = config.get("infra")
        if path and isinstance(infra, dict) and infra.get("folder") and "version" in infra:
            yield path, config
        for key, value in config.items():
            if key != "infra":
                yield from _sub_configs(value, (*path, str(key)))
    elif isinstance(config, list):
        for index, value in enumerate(config):
            yield from _sub_configs(value, (*path, str(index)))


def _at(config: tp.Any, path: tuple[str, ...]) -> tp.Any:
    """The value of a nested config at a path (dict keys, list indices), else None."""
    for part in path:
        if isinstance(config, dict):
            config = config.get(part)
        elif isinstance(config, list) and part.isdigit() and int(part) < len(config):
            config = config[int(part)]
        else:
            return None
    return config


def _chained_nodes(
    folder: Path, infos: dict[Path, NodeInfo] | None, index: _ChainedIndex
) -> list[tuple[str, str, Path, NodeInfo]]:
    """The task nodes of a node's sub-configs (a ``data: Data`` field whose infra has a
    folder: computed before the node, its failure leaves the node empty), found by their
    full uid config in the sub-config's cache root (its config names no class): as
    _upstream_nodes returns them, "sub-config 'data'"."""
    config_folder = folder.parent if folder.name.startswith(INPUTS_PREFIX) else folder
    try:
        config = read_yaml(config_folder / CONFIG_FILE)
        subs = list(_sub_configs(config))
        full = ConfDict(read_yaml(config_folder / FULL_UID_FILE) or {}) if subs else {}
    except (PermissionError, IsADirectoryError):
        return []
    own_root = registry.root_of(folder)
    out = []
    for path, sub in subs:
        section = _at(full, path)
        if not isinstance(section, dict):
            continue
        wanted = ConfDict(section).flat()
        root = Path(str(sub["infra"]["folder"]))
        if not root.is_dir():  # (a moved or copied cache: its own root)
            root = own_root
        for step in index.steps(root, str(sub["infra"]["version"])):
            for uid, found, flat in index.configs(step):
                if flat != wanted or found == config_folder:
                    continue
                info = infos.get(found) if infos is not None else None
                if info is None:
                    try:
                        info = describe(step.name, uid, found)
                    except (PermissionError, IsADirectoryError):
                        continue
                    if infos is not None:
                        infos[found] = info
                if info.kind != "map":  # (maps are never chained)
                    out.append(
                        (f"sub-config {'.'.join(path)!r}", f"{step.name}/{uid}", found, info)
                    )
    return out


def _inputs_of(folder: Path) -> dict[str, str] | None:
    """What fed a task with inputs, as the inputs.yaml of its ``inputs-*`` folder records
    it (None: not such a folder, or nothing readable there)."""
    if not folder.name.startswith(INPUTS_PREFIX):
        return None
    try:
        inputs = read_yaml(folder / INPUTS_FILE)
    except (PermissionError, IsADirectoryError):  # (as inspect skips such a folder)
        return None
    if not isinstance(inputs, dict):
        return None
    return {str(name): str(uid) for name, uid in inputs.items()}


def _problems_of(upstream: list[tuple[str, str, Path, NodeInfo]]) -> list[tuple[str, Path]]:
    """What upstream_problems says of the upstream nodes ``_upstream_nodes`` found (from
    their NodeInfos as they are now: dead Slurm jobs described since, say)."""
    out = []
    for name, uid, path, info in upstream:
        said = {
            "error": f"failed ({info.error})" if info.error else "failed",
            "partial": f"holds {info.errors} item error(s)",
            "empty": "holds nothing (not computed)",
            "running": "is being computed",
            "computing": "is being computed",
        }.get(info.status)
        if said is not None:
            out.append((f"its {name} ({uid}) {said}", path))
    return out


def _producer(records: list[tp.Any], entry: dict[str, tp.Any] | None) -> tuple[tp.Any, str | None]:
    """The ended job to show for a node: the latest, unless its task result says it was
    computed by another job, or by no job (e.g. inline, with mode retry after that job
    failed: the list named the failed job as the maker of the result). Returns (its
    record, else None; the id of a job recorded elsewhere that computed it, else None)."""
    job = result_job(entry)
    if job is _UNKNOWN:  # (a map, nothing cached, or written by an older exca)
        return (records[-1] if records else None), None
    found = next((r for r in reversed(records) if r.job_id == job), None)
    return found, (job if found is None and isinstance(job, str) else None)


_UNKNOWN: tp.Any = object()


def result_job(entry: dict[str, tp.Any] | None) -> tp.Any:
    """The id of the job that computed a task result (its index record ``entry``), None
    when no job did (where it was called), ``_UNKNOWN`` when the record does not say."""
    meta = entry.get("#meta") if entry is not None else None
    if not isinstance(meta, dict) or "job" not in meta:
        return _UNKNOWN
    return meta["job"]


def _readable_records(folder: Path) -> list[registry.JobRecord] | None:
    try:
        return registry.read_all(folder, copied=True)
    except PermissionError:  # (describe() skips the folder, with a warning)
        return None


def inspect(
    root: Path | str,
    step: str | None = None,
    where: tp.Sequence[str] = (),
    status: str | None = None,
    look: registry.QueueLook | None = None,
    described: list[NodeInfo] | None = None,
) -> list[NodeInfo]:
    """Describe every node folder of a cache root (filters: step glob or substring,
    ``key=value`` conditions on the uid config, status). ``look``: the Slurm queue as
    looked at already (a command describing, then cleaning: one squeue call), else asked
    once for the jobs of these folders. ``described``: a list that receives every node of
    the root (or step) before the ``where`` and ``status`` filters, for a caller saying
    why they matched nothing without describing the cache again (their configs and
    statuses; the notes on upstream problems and dead jobs' endings are made for the
    selected nodes only)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: {not_a_folder(root)} (give a cache root: an infra's folder)")
    status = STATUS_ALIASES.get(status, status) if status is not None else None
    if status is not None and status not in STATUSES:
        raise ValueError(f"status={status!r} is not a status: use one of {', '.join(STATUSES)}")
    if isinstance(where, str):
        where = [where]
    if root.name in ("", ".."):  # (".": the folder's own name tells what it is)
        root = root.resolve()
    conditions = [_parse_condition(c) for c in where]
    _refuse_contradictions(conditions)
    # (given a step, config or inputs folder instead of a root: that part of the root)
    only_step, only_config, only_inputs = None, None, None
    # (absolute: the folders above a relative one, "epochs=5-..." given from its step
    # folder, have names then)
    full = Path(os.path.abspath(root))
    if full.name.startswith(INPUTS_PREFIX) and is_node_folder(full):
        only_inputs, full = full.name, full.parent
    if is_node_folder(full):
        only_step, only_config, root = full.parent.name, full.name, full.parent.parent
        if full.is_symlink():  # (a link beside the config folder it points to: that node)
            target = Path(os.path.realpath(full))
            if target.parent == Path(os.path.realpath(full.parent)):
                only_config = target.name
    elif "," in full.name and any(node_folders(full.parent, only=full.name)):
        only_step, root = full.name, full.parent
    folders = [
        (s, u, f)
        for s, u, f in node_folders(root, only=only_step)
        if (step is None or step_selects(step, s))
        and (only_config is None or u.split("/")[0] == only_config)
        and (only_inputs is None or u == f"{only_config}/{only_inputs}")
    ]
    read = {f: _readable_records(f) for _, _, f in folders}  # (every job, read once)
    records = [r for found in read.values() for r in found or ()]
    slurm = [r.job_id for r in records if r.cluster == "slurm"]
    if look is not None:
        queued = look.queued_of(slurm)
    else:
        queued = registry.queued_jobs(slurm) if slurm else set()
    parents = {f.parent for _, u, f in folders if "/" in u}
    out = []
    for s, u, f in folders:
        try:
            info = describe(s, u, f, queued, read[f])
        # (a shared cache: another user's private files; a yaml file that is a folder)
        except (PermissionError, IsADirectoryError) as error:
            logger.warning("Skipping %s: %s", f, error)
            continue
        if f in parents and info.kind == "empty":
            continue  # a config folder that only holds tasks with inputs (listed themselves)
        out.append(info)
    if described is not None:
        described.extend(out)
    # the filters first: what follows (sacct) is asked only for the nodes listed
    selected = select(out, where, status, parsed=conditions)
    # a task with inputs holding nothing: not computed as an upstream node failed? (its
    # inputs.yaml read, its upstream nodes described once, if not listed)
    known = {info.folder: info for info in out}
    for info in selected:  # (what fed each task with inputs: its inputs.yaml, read once)
        info.inputs = _inputs_of(info.folder)
    # (or as a sub-config's task failed: any node holding nothing)
    empty = [i for i in selected if i.status == "empty"]
    # (their upstream nodes described, added to known if not there: inputs.yaml read once)
    chained = _ChainedIndex()
    upstream = {info.folder: _upstream_nodes(info.folder, known, chained) for info in empty}
    # how dead Slurm jobs ended (one sacct call), for the lines listed and for the notes
    # below naming an upstream's error (they said "killed, out of memory, cancelled...?"
    # for a job that raised); the records of upstream nodes of other steps too
    asked = {info.folder: info for info in selected}
    for nodes in upstream.values():
        for _, _, path, info in nodes:
            asked.setdefault(path, info)
    own = {f for _, _, f in folders}  # (once: not per listed folder, 10k of them)
    wanted = [r for r in records if r.node_folder in asked]
    wanted += [r for f in asked if f not in own for r in _readable_records(f) or ()]
    _describe_dead_jobs(list(asked.values()), wanted)
    for info in empty:
        problems = _problems_of(upstream[info.folder])
        if problems:
            said = "not computed: " + "; ".join(text for text, _ in problems)
            info.note = f"{info.note}; {said}" if info.note else said
    return selected


def select(
    infos: list[NodeInfo],
    where: tp.Sequence[str] = (),
    status: str | None = None,
    parsed: list[tuple[str, str]] | None = None,
) -> list[NodeInfo]:
    """The NodeInfos matching ``key=value`` conditions and a status (see inspect)."""
    conditions = [_parse_condition(c) for c in where] if parsed is None else parsed
    status = STATUS_ALIASES.get(status, status) if status is not None else None
    upstreams = _Upstreams({info.folder: info for info in infos})  # (once per listing)
    out = []
    for info in infos:
        config = info.full_config or info.config
        if conditions:  # (first: a key naming several is an error whatever the status)
            view = where_view(info, upstreams)
            if not all(_matches(config, k, v, info.step, view) for k, v in conditions):
                continue
        if status is not None and info.status != status:
            continue
        out.append(info)
    return out


def _describe_dead_jobs(infos: list[NodeInfo], records: list[tp.Any]) -> None:
    """How the Slurm and local jobs that ended without a result ended, in the words their
    call's error has (``Handle.ended_how``: cancelled while pending, out of memory...),
    Slurm's asked with ONE sacct call: the generic line sent to a log that a job cancelled
    before it started never wrote, and said less than the call and the plan (a local
    job's, read from the end of its log: cancelled, or killed by SIGKILL)."""
    by_job = {(r.node_folder, r.job_id): r for r in records if r.cluster in ("slurm", "local")}
    dead = [
        (info, by_job[(info.folder, info.job_id)])
        for info in infos
        if info.error
        and info.error.startswith(f"job {info.job_id} {_DIED}")
        and (info.folder, info.job_id) in by_job
    ]
    slurm = [record.job_id for _, record in dead if record.cluster == "slurm"]
    endings = registry.slurm_endings(slurm, unknown=True) if slurm else {}
    from ..graph import executors
    from ..graph.errors import ending_line

    for info, record in dead:
        known = endings.get(record.job_id)
        if known is None and record.cluster == "slurm":
            continue  # (sacct did not answer: the generic line stays)
        # (a local job: its log says how, e.g. cancelled, or killed by SIGKILL)
        with contextlib.suppress(Exception):  # (the generic line stays)
            how = executors.recorded_handle(record).ended_how(known)
            info.error = ending_line(how)  # (no log quoted: a line, as the plan's)


def keys_outside_uids(infos: list[NodeInfo], keys: tp.Sequence[str]) -> list[str]:
    """Those of ``keys`` that a config.yaml of ``infos`` holds though no uid does (a field
    excluded from the uid: ``--where`` cannot match it). Read only when a filter matched
    nothing, each config folder's file once, stopping when every key is found."""
    left, found = set(keys), []
    seen: set[Path] = set()
    for info in infos:
        folder = info.folder.parent if info.folder.name.startswith(INPUTS_PREFIX) else info.folder
        if not left or folder in seen:
            continue
        seen.add(folder)
        text = read_text(folder / CONFIG_FILE)
        maybe = [key for key in left if _may_hold(text, key)] if text is not None else []
        if not maybe:  # (a typo: no parse of each of 5k files, the text tells)
            continue
        flat = ConfDict(read_yaml(folder / CONFIG_FILE, text=text) or {}).flat()
        for key in sorted(maybe):
            if any(k == key or k.startswith(key + ".") for k in flat):
                left.discard(key)
                found.append(key)
    return [k for k in keys if k in found]


# (what a key part written in yaml may turn into: str() of a number, bool or null key)
_NUMERIC = frozenset("0123456789.+-e")
_NAMED = frozenset({"True", "False", "None", "inf", "-inf", "nan"})


def _may_hold(text: str, key: str) -> bool:
    """Whether a yaml text may hold a flat ``key`` (or keys below it): False only when a
    part of it is not in the text at all, a part yaml can only hold as written (no
    escape in the text: a backslash; no space, quote, number, bool or null word in the
    part, which folding, quoting or a key of another type may spell otherwise)."""
    if "\\" in text:
        return True
    for part in key.split("."):
        if part in text or part in _NAMED or set(part) <= _NUMERIC:
            continue
        if not any(c.isspace() or c in "'\"" for c in part):
            return False
    return True


def keys_no_config_has(infos: list[NodeInfo], where: tp.Sequence[str]) -> list[str]:
    """The keys of ``key=value`` conditions that no config of ``infos`` holds (a typo?)."""
    conditions = [_parse_condition(c) for c in where]
    upstreams = _Upstreams({info.folder: info for info in infos})
    views = [where_view(i, upstreams) for i in infos]
    return [
        key
        for key, value in conditions
        if not any(_keys_named(view, _resplit(view, key, value)[0]) for view in views)
    ]


def input_path_problems(infos: list[NodeInfo], key: str) -> tuple[list[str], list[str]]:
    """For a ``--where`` key that no config of ``infos`` holds (see keys_no_config_has):
    (why it names nothing through the inputs of the nodes with inputs, when it starts
    with an input's name: ``model.lrr`` where the config of the input ``model`` has no
    ``lrr``, each said with the keys there are; the names of the inputs of each step with
    inputs, when it starts with none: a typo?)."""
    upstreams = _Upstreams({info.folder: info for info in infos})
    problems: dict[str, None] = {}  # (ordered, once each)
    names: dict[str, set[str]] = {}
    for info in infos:
        if not info.folder.name.startswith(INPUTS_PREFIX):
            continue
        view = where_view(info, upstreams)
        names.setdefault(info.step, set()).update(view.inputs())
        said = _path_problem(view, key, "", info.step)
        if said is not None:
            problems[said] = None
    if problems:
        return list(problems), []
    return [], [f"{', '.join(sorted(n))} ({step})" for step, n in sorted(names.items()) if n]


def _path_problem(view: _WhereView, key: str, above: str, owner: str) -> str | None:
    """Why ``key`` names nothing through an input of a node (``view``: its config's), or
    None when it does not start with the name of one of its inputs (``above``: the path
    of inputs walked so far, ``owner``: whose inputs they are)."""
    name, _, rest = key.partition(".")
    held = view.inputs().get(name)
    if held is None:
        return None
    return _input_problem(held, rest, f"{above}{name}", owner)


def _input_problem(held: _Input, rest: str, path: str, owner: str) -> str | None:
    """Why ``rest`` names nothing in the input ``held`` (``path``: how the key named it),
    or None when it names something (see _path_problem)."""
    members = held.members
    if members is not None:  # (a list or dict of inputs: a member by its index or key)
        kind, one, labels = ("list", "index", "indices")
        if held.uid[:1] == "{":
            kind, one, labels = ("dict", "key", "keys")
        what = f"a {kind} of {len(members)} input(s)"
        for label, member in members.items():
            if rest.startswith(f"{label}."):
                return _input_problem(member, rest[len(label) + 1 :], f"{path}.{label}", owner)
        if rest in members:  # (a member named, with no key of its config)
            return _input_problem(members[rest], "", f"{path}.{rest}", owner)
        there = ", ".join(members) or "none"
        if not rest:
            example = f"{path}.{next(iter(members), '0')}.KEY"
            return (
                f"the input {path!r} of {owner} is {what}: give the {one} of one, then a key "
                f"of its config (e.g. {example}); its {labels}: {there}"
            )
        first = rest.partition(".")[0]
        return (
            f"the input {path!r} of {owner} is {what}: {first!r} is none of its {labels} ({there})"
        )
    step = held.uid.partition("/")[0]  # (the input's step: said once for its nodes)
    if held.view is None:
        what = "a node that is not in this cache"
        if held.uid[:1] in ("[", "{"):
            what = "a list or dict of inputs whose members its uid does not tell apart"
        elif "/" not in held.uid:
            what = "a value"
        return f"the input {path!r} of {owner} is {what} ({held.uid}): it has no config keys"
    keys = _named_keys(held.view)
    if not rest:
        return f"{path!r} is an input of {owner} (a {step} node): give a key of its config: {keys}"
    if _keys_named(held.view, rest):
        return None
    deeper = _path_problem(held.view, rest, f"{path}.", step)
    if deeper is not None:
        return deeper
    return (
        f"the input {path!r} of {owner} (a {step} node) holds no key {rest!r}: its keys are {keys}"
    )


def _named_keys(view: _WhereView, most: int = 12) -> str:
    """The keys of a config's view (its list items left out) and the names of its inputs,
    for an error message."""
    keys = sorted(k for k in view.values if k not in view.first_index)
    inputs = sorted(view.inputs())
    text = ", ".join(keys[:most]) + (f" (and {len(keys) - most} more)" if len(keys) > most else "")
    text = text or "none"
    if inputs:
        text += f"; its inputs: {', '.join(inputs)}"
    return text


def keys_in_list_items(infos: list[NodeInfo], key: str) -> list[str]:
    """The keys of ``infos``' configs that ``key`` ends inside list items (a condition
    names them only with their indices: ``layers.0.size``, not ``size``), sorted."""
    return sorted(
        {
            k
            for view in (where_view(i) for i in infos)
            for k in view.first_index
            if k.endswith("." + key)
        }
    )


def close_keys(infos: list[NodeInfo], key: str) -> list[str]:
    """For a ``--where`` key that no config of ``infos`` holds (a typo: ``lrr``): the
    close keys of the configs, or their close ends (as ``lr`` names ``optim.lr``)."""
    import difflib

    names: set[str] = set()
    for info in infos:  # (the views keys_no_config_has made: kept on each info)
        names.update(where_view(info).values)
    ends = {name.split(".", i)[-1] for name in names for i in range(name.count(".") + 1)}
    return difflib.get_close_matches(key, sorted(ends - {""}), n=3, cutoff=0.7)


def path_hint(infos: list[NodeInfo], key: str) -> str | None:
    """For a dotted ``key`` that no config of ``infos`` holds (see keys_no_config_has):
    what the configs hold at its longest start that some config has (``layers.5.size``:
    the indices of ``layers``; ``heads.nope``: the keys of ``heads``), or None."""
    views = [where_view(i) for i in infos]
    parts = key.split(".")
    for size in range(len(parts) - 1, 0, -1):
        start = ".".join(parts[:size])
        below: dict[str, None] = {}
        kinds = set()
        for view in views:
            if start in view.values:
                kinds.add(type(view.values[start]))
            below.update(
                (k[len(start) + 1 :].partition(".")[0], None)
                for k in view.values
                if k.startswith(f"{start}.")
            )
        if not below and not kinds:
            continue
        if not below:
            return f"{start!r} is a value there (no keys in it)"
        names = sorted(below, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))
        shown = ", ".join(names[:12]) + (
            f" (and {len(names) - 12} more)" if len(names) > 12 else ""
        )
        what = "items" if kinds and kinds <= {list} else "keys"
        return f"{start!r} holds the {what} {shown}"
    return None


def null_condition_hints(infos: list[NodeInfo], where: tp.Sequence[str]) -> list[str]:
    """For each condition ``key=null`` (a None value) whose key holds the text "null" in
    some config of ``infos``: how to match that text instead (it is not matched)."""
    hints = []
    upstreams = _Upstreams({info.folder: info for info in infos})
    for key, text in (_parse_condition(c) for c in where):
        if not reads_as_null(text):
            continue
        words = {
            _value(view, k)
            for view in (where_view(i, upstreams) for i in infos)
            for k in _keys_named(view, key)
            if isinstance(_value(view, k), str) and reads_as_null(_value(view, k))
        }
        for word in sorted(words):
            hints.append(
                f"{key}={text} matches None values only; for the text {word!r}, quote it: "
                f"--where \"{key}='{word}'\""
            )
    return hints


@dataclasses.dataclass
class _WhereView:
    """A flat config with its list items (and what they hold) under keys too:
    ``optim.betas`` [0.9, 0.99] adds ``optim.betas.0`` 0.9 and ``optim.betas.1`` 0.99, as
    overrides index lists (``layers.1.size``). ``first_index``: for a key under a list
    item, where its first index starts in it (a key ending it names it only if it holds
    that index: ``size`` does not name ``layers.0.size``, ``0.size`` does)."""

    values: dict[str, tp.Any]
    first_index: dict[str, int]
    # (a node with inputs: its inputs by name, read from its inputs.yaml when first asked)
    inputs_of: tp.Callable[[], dict[str, _Input]] | None = None
    _inputs: dict[str, _Input] | None = None

    def inputs(self) -> dict[str, _Input]:
        if self._inputs is None:
            self._inputs = self.inputs_of() if self.inputs_of is not None else {}
        return self._inputs


class _Input:
    """An input of a node with inputs, as its inputs.yaml names it: its uid, and the view
    of its config (read when first asked; None for a value, or a node not in the cache)."""

    def __init__(self, uid: str, root: Path, upstreams: _Upstreams) -> None:
        self.uid, self._root, self._upstreams = uid, root, upstreams

    @functools.cached_property
    def view(self) -> _WhereView | None:
        if self.members is not None:
            return None
        return self._upstreams.view(self._root, self.uid)

    @functools.cached_property
    def members(self) -> dict[str, _Input] | None:
        """A list or dict of inputs: its members, by index (``"0"``...) or key (None: not
        one, or one whose uid cannot be split into its members' uids)."""
        if self.uid[:1] not in ("[", "{"):
            return None
        parsed = group_members(self.uid, self._exists)
        if parsed is None:
            return None
        return {
            str(index) if key is None else key: _Input(uid, self._root, self._upstreams)
            for index, (key, uid) in enumerate(parsed)
        }

    def _exists(self, uid: str) -> bool:
        return self._upstreams.view(self._root, uid) is not None


# the uids of the members of a list or dict of inputs (graph.node.Group.uid): a node's,
# <step>/<config uid>[/inputs-<digest>] (a map's: /items-<digest>), its config uid
# "default" or key=value pairs and a digest; or a value's, its uid format
# (<display>-<digest>, without "/")
_NODE_UID = re.compile(
    r"[\w<>]+(?:\.[\w<>]+)+,[^/]*/(?:default|[^/,=]+=[^/]*-[0-9a-f]{8})(?:/(?:inputs|items)-[0-9a-f]{8})?"
)
_VALUE_UID = re.compile(r"[^/]*-[0-9a-f]{8}")
_UID_END = re.compile(r"(?:-[0-9a-f]{8}|/default)$")
_Members = list[tuple[str | None, str]]


def group_members(uid: str, exists: tp.Callable[[str], bool] | None = None) -> _Members | None:
    """The members of a list of inputs (its uid ``[uid,uid,...]``) or of a dict of them
    (``{key=uid,...}``, a key up to its first ``=``), as (key, or None in a list; uid), in
    order. The uids hold commas too: every split whose members are nodes' or values' uids
    is tried; of several, the one whose nodes are all there (``exists``, given a node's
    uid), then the finest one. None when the text is not one, or no single split fits."""
    if len(uid) < 2 or (uid[0], uid[-1]) not in (("[", "]"), ("{", "}")):
        return None
    keyed = uid[0] == "{"
    text = uid[1:-1]
    if not text:
        return []
    # where a member may end: before a comma, after a uid's end (a digest, "default")
    # (searched in the 9 characters before: from the start, quadratic in the text)
    ends = [i for i, c in enumerate(text) if c == "," and _UID_END.search(text, i - 9, i)]
    ends.append(len(text))
    most = 8  # (splits kept: more is hopeless)

    def readings(member: str) -> list[tuple[str | None, str]]:
        if not keyed:
            uid = _NODE_UID.fullmatch(member) or _VALUE_UID.fullmatch(member)
            return [(None, member)] if uid else []
        # (a key holding "=" itself, {"lr=0.1,steps=50": node}: each "=" after which a
        # node's uid comes is a reading (read up to its first "=" only, as "lr", the
        # dict was one whose members the uid did not tell apart), else the first after
        # which a value's does, as before (a value's uid may hold "=" too; a node's
        # ends as a value's: "<key>=<step>/lr" then "0.02-<digest>")
        nodes: list[tuple[str | None, str]] = []
        values: list[tuple[str | None, str]] = []
        position = member.find("=")
        while position >= 0:
            rest = member[position + 1 :]
            if _NODE_UID.fullmatch(rest):
                nodes.append((member[:position], rest))
            elif _VALUE_UID.fullmatch(rest):
                values.append((member[:position], rest))
            position = member.find("=", position + 1)
        return nodes or values[:1]

    # the ways text[start:] splits into members (up to ``most``), from the last start to
    # the first (a recursion went as deep as the members: a list of ~1000 nodes raised
    # RecursionError), each kept as its first member and where the rest is in ``memo``
    # (the lists of members made at the end only: each start copied its rests whole); a
    # member holds at most two "/" (a node's), past its key: the ends further away are
    # not tried (each start tried every end: quadratic)
    Split = tuple[tuple[str | None, str], int, int]  # (member, start of the rest, its split)
    memo: dict[int, list[Split]] = {}
    for first in range(len(ends) - 1, -1, -1):
        start = 0 if first == 0 else ends[first - 1] + 1
        base = text.find("=", start) if keyed else start
        splits: list[Split] = []
        for end in ends[first:]:
            if len(splits) >= most or base < 0 or text.count("/", base, end) > 2:
                break
            for read in readings(text[start:end]):
                if len(splits) >= most:
                    break
                if end == len(text):
                    splits.append((read, -1, 0))
                else:
                    rests = range(min(len(memo[end + 1]), most - len(splits)))
                    splits.extend((read, end + 1, i) for i in rests)
        memo[start] = splits

    def members(start: int, index: int) -> _Members:
        out: _Members = []
        while start >= 0:
            read, start, index = memo[start][index]
            out.append(read)
        return out

    found = [members(0, i) for i in range(len(memo[0]))]
    if len(found) > 1 and exists is not None:
        found = [f for f in found if all(exists(u) for _, u in f if "/" in u)]
    if len(found) > 1:
        # (a value's uid, its text then a digest, reads as several values, and as their
        # end: [node,0.5,0.3] split as node, "0.5-<digest>,0.3-<digest>" too, and no
        # list holding two values was split; a text holding "-<digest>," is rare: the
        # finest split)
        finest = max(len(f) for f in found)
        found = [f for f in found if len(f) == finest]
    return found[0] if len(found) == 1 else None


class _Upstreams:
    """The configs of the nodes that inputs.yaml files name (``--where model.optim.lr=...``
    reaches into the input ``model``), read once per listing, by folder (``known``: the
    NodeInfos described already, whose configs are not read again)."""

    def __init__(self, known: dict[Path, NodeInfo] | None = None) -> None:
        self.known = known or {}
        self.views: dict[Path, _WhereView | None] = {}

    def inputs(self, folder: Path) -> dict[str, _Input]:
        """A node folder's inputs (none unless it is an ``inputs-*`` folder)."""
        if not folder.name.startswith(INPUTS_PREFIX):
            return {}
        try:
            named = read_yaml(folder / INPUTS_FILE)
        except (PermissionError, IsADirectoryError):  # (as inspect skips such a folder)
            return {}
        if not isinstance(named, dict):
            return {}
        root = registry.root_of(folder)
        return {str(name): _Input(str(uid), root, self) for name, uid in named.items()}

    def view(self, root: Path, uid: str) -> _WhereView | None:
        """The view of the config of the node ``uid`` of the cache ``root`` (None: a
        value's uid, or no node folder of that root)."""
        step, _, rest = uid.partition("/")  # (a value's uid, or a group: not a node)
        if "," not in step or not rest or rest.startswith("/") or uid[:1] in ("[", "{"):
            return None  # (a group's "[a.B.f,1/...": its text as a path was too long)
        path = root / uid
        if path.name.startswith("items-"):  # (a map node: its items' digest)
            path = path.parent
        if path in self.views:
            return self.views[path]
        self.views[path] = None
        info = self.known.get(path)
        if info is not None:
            config = info.full_config or info.config
        else:
            try:
                if not path.is_dir() or not is_node_folder(path):
                    return None
                own, full, _ = _configs(path)
            except (PermissionError, IsADirectoryError):  # (skipped by inspect, warned)
                return None
            except OSError as error:  # (a value's uid holding "/": a name too long)
                if error.errno != errno.ENAMETOOLONG:
                    raise
                return None
            config = full or own
        view = self.views[path] = _where_view(config)
        view.inputs_of = functools.partial(self.inputs, path)
        return view


def where_view(info: NodeInfo, upstreams: _Upstreams | None = None) -> _WhereView:
    """The view of a config that ``--where`` conditions are matched against (built once
    per config: a list of 10k items makes 10k keys), reaching into the configs of its
    inputs (``upstreams``: shared by the nodes of a listing, each input read once)."""
    config = info.full_config or info.config
    view = info.__dict__.get("_where_view")
    if view is None or view[0] is not config:
        made = _where_view(config)
        if info.folder.name.startswith(INPUTS_PREFIX):
            made.inputs_of = functools.partial((upstreams or _Upstreams()).inputs, info.folder)
        view = info.__dict__["_where_view"] = (config, made)
    return tp.cast(_WhereView, view[1])


def _where_view(config: dict[str, tp.Any]) -> _WhereView:
    view = _WhereView({}, {})

    def add(key: str, value: tp.Any, first: int) -> None:
        view.values[key] = value
        if first >= 0:
            view.first_index[key] = first
        if isinstance(value, list):
            for index, item in enumerate(value):
                add(f"{key}.{index}", item, len(key) + 1 if first < 0 else first)
        elif isinstance(value, dict):  # (a dict inside a list item; flat() did the others)
            for name, item in value.items():
                add(f"{key}.{name}", item, first)

    for key, value in config.items():
        add(key, value, -1)
    return view


def _keys_named(view: _WhereView, key: str) -> list[str]:
    """The keys of a config's view a condition's key names: itself, else the keys it ends
    (``lr`` names ``optim.lr``), with every list index they hold (see _WhereView); and,
    for a node with inputs, a key starting with the name of an input names the keys of
    that input's config the rest of it names (``model.lr``: ``model.optim.lr``, the
    ``optim.lr`` of the input ``model``; never ``lr`` alone: an input is named)."""
    if key in view.values:
        return [key]
    start = -len(key)  # (where the key starts in a key it ends)
    named = [
        k
        for k in view.values
        if k.endswith("." + key) and view.first_index.get(k, len(k)) >= len(k) + start
    ]
    name, dot, rest = key.partition(".")
    if dot and rest and view.inputs_of is not None:
        held = view.inputs().get(name)
        if held is not None:
            named += [f"{name}.{k}" for k in _input_keys(held, rest)]
    return named


def _input_keys(held: _Input, key: str) -> list[str]:
    """The keys of the config of an input that ``key`` names (see _keys_named); in a list
    or dict of inputs, a key starting with the index or key of a member names that
    member's (``models.0.optim.lr``: the ``optim.lr`` of the first node of ``models``)."""
    if held.view is not None:
        return _keys_named(held.view, key)
    return [
        f"{label}.{k}"
        for label, member in (held.members or {}).items()
        if key.startswith(f"{label}.")
        for k in _input_keys(member, key[len(label) + 1 :])
    ]


def _value(view: _WhereView, key: str) -> tp.Any:
    """The value of a key _keys_named gave (in the config, or an input's)."""
    if key in view.values:
        return view.values[key]
    name, _, rest = key.partition(".")
    return _input_value(view.inputs()[name], rest)


def _input_value(held: _Input, key: str) -> tp.Any:
    if held.view is not None:
        return _value(held.view, key)
    for label, member in (held.members or {}).items():
        sub = key[len(label) + 1 :]
        if key.startswith(f"{label}.") and sub in _input_keys(member, sub):
            return _input_value(member, sub)
    raise KeyError(key)


def _parse_condition(text: str) -> tuple[str, str]:
    key, equal, value = text.partition("=")
    if not equal or not key.strip():  # (no key: "=1" matched nothing, "no key ''")
        raise ValueError(
            f"Cannot parse condition {text!r}: expected key=value (e.g. optim.lr=0.01)"
        )
    return key.strip(), value.strip()


def _refuse_contradictions(conditions: list[tuple[str, str]]) -> None:
    """A key given two values (``--where lr=0.1 --where lr=0.2``): every condition must
    hold, so nothing could match; a listing that said "No cached node matches" read as
    an empty cache. (A value holding "=" is left alone: the key may be split elsewhere,
    see _resplit.)"""
    seen: dict[str, str] = {}
    for key, value in conditions:
        if "=" in value:
            continue
        before = seen.setdefault(key, value)
        if before != value:
            raise ValueError(
                f"--where {key}={before} and --where {key}={value}: every condition must "
                f"hold, and a config has one value of {key}: give one (list each value in "
                "its own command)"
            )


# unquoted, these name None (yaml's words, and Python's, as uids display None)
_NULL_WORDS = ("null", "Null", "NULL", "~", "None", "")


def reads_as_null(text: str) -> bool:
    """Whether a condition's value (as written) names None."""
    return text in _NULL_WORDS


def _is_nan(value: tp.Any) -> bool:
    return isinstance(value, float) and value != value


def _matches(
    config: dict[str, tp.Any],
    key: str,
    value: str,
    step: str = "",
    view: _WhereView | None = None,
) -> bool:
    """``key=value`` against a flat config (with defaults: full-uid.yaml; ``view``: its
    _where_view, if made already). The value is read as yaml: ``null`` (``~``, ``None``,
    or nothing) matches None only, ``nan`` (``.nan``) a nan; a string also matches as
    written (``infra.version=1`` finds '1'). ValueError when the key is the end of several
    keys of the config (``lr``: ``optim.lr`` and ``sched.lr``): which one is meant is
    unclear."""
    yaml = pyyaml()

    if view is None:
        view = _where_view(config)
    key, value = _resplit(view, key, value)
    candidates = _keys_named(view, key)
    if len(candidates) > 1:
        where = f" of {step}" if step else ""
        raise ValueError(
            f"condition {key}={value}: {key!r} names several keys of the configs{where}: "
            f"{', '.join(candidates)}; give the whole key, e.g. {min(candidates, key=len)}={value}"
        )
    if not candidates:
        return False
    held = _value(view, candidates[0])
    if reads_as_null(value):
        return held is None
    try:
        expected = yaml.safe_load(value)
    except yaml.YAMLError:  # not yaml (e.g. "[1"): compared as text
        expected = value
    if isinstance(expected, str):  # (yaml 1.1 reads 1e-5, nan, inf as strings: floats for us)
        try:
            expected = float(value)
        except ValueError:
            pass
    if held is None:
        return False
    if isinstance(held, str):
        return held in (expected, value)
    if _is_nan(held):
        return _is_nan(expected)
    if _is_float(held) and _is_number(expected):  # (0.1 * 3 is 0.30000000000000004:
        # the uid shows lr=0.30, and lr=0.3 is what was meant)
        return math.isclose(held, expected, rel_tol=1e-9)
    return bool(held == expected) or str(held) == value


def _resplit(view: _WhereView, key: str, value: str) -> tuple[str, str]:
    """A condition is split at its first "=": a key holding "=" itself (a dict key,
    ``runs.lr=0.1,steps=50``, of a config or of a dict of inputs) named nothing then. When
    that key names nothing in ``view``, the first later "=" whose key names something
    splits it (the condition as given, else)."""
    if "=" not in value or _keys_named(view, key):
        return key, value
    head, rest = key, value
    while "=" in rest:
        part, _, rest = rest.partition("=")
        head = f"{head}={part}"
        if _keys_named(view, head):
            return head, rest
    return key, value


def _is_float(value: tp.Any) -> bool:
    return isinstance(value, float)


def _is_number(value: tp.Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"


# a node uid inside a list or dict of nodes as inputs.yaml records it (see Group.uid):
# <module>.<Class>.<method>,<version>/<config uid: default, or ending with its digest>,
# then its inputs or items folder if any
_GROUP_NODE = (
    r"[A-Za-z_][\w.]*,[^,/{}\[\]=]*/(?:default|[^/]*?-[0-9a-f]{8})"
    r"(?:/(?:inputs|items)-[0-9a-f]{8})?"
)
_LIST_ENTRY = re.compile(rf"({_GROUP_NODE})(?:,|$)")
_DICT_ENTRY = re.compile(rf"(.*?)=({_GROUP_NODE})(?:,|$)")
# (or a value's uid, which ends with its digest: a group mixing nodes and values)
_GROUP_ANY = rf"(?:{_GROUP_NODE}|.*?-[0-9a-f]{{8}})"
_LIST_ANY = re.compile(rf"({_GROUP_ANY})(?:,|$)")
_DICT_ANY = re.compile(rf"(.*?)=({_GROUP_ANY})(?:,|$)")
_GROUP_PARSERS = {  # (keyed, values): the parser of an entry
    (False, False): _LIST_ENTRY,
    (True, False): _DICT_ENTRY,
    (False, True): _LIST_ANY,
    (True, True): _DICT_ANY,
}


def group_entries(recorded: str, keyed: bool, values: bool = False) -> dict[str, str] | None:
    """The entries of a list (``[uid,...]``: by index) or dict (``{key=uid,...}``) of
    nodes as inputs.yaml records it, when every entry is a node (``values``: or a value)
    and the parse gives back the same text (None: a value among them, or not such a
    group)."""
    opening, closing = "{}" if keyed else "[]"
    if len(recorded) < 2 or recorded[0] != opening or recorded[-1] != closing:
        return None
    entry = _GROUP_PARSERS[keyed, values]
    body = recorded[1:-1]
    out: dict[str, str] = {}
    position = 0
    while position < len(body):
        found = entry.match(body, position)
        if found is None:
            return None
        name, uid = found.groups() if keyed else (str(len(out)), found.group(1))
        if name in out:
            return None
        out[name] = uid
        position = found.end()
    shown = ",".join(f"{k}={v}" for k, v in out.items()) if keyed else ",".join(out.values())
    return out if shown == body else None


def describe_recorded_inputs(inputs: dict[str, str]) -> str:
    """What fed a task with inputs, short, in the plan's words (``weights=Train.fit,1/
    lr=0.10-.../inputs-...``): an upstream node by its step without its module, a value by
    its uid, a list or dict of them by its first two entries (``{best: Train.fit,1/...,
    +3 more}``), each cut in its middle when long."""
    shown = []
    for name, uid in inputs.items():
        # (nodes only first: a key holding '=' is read right then; values are rarer)
        listed = group_entries(uid, False) or group_entries(uid, False, values=True)
        keyed = group_entries(uid, True) or group_entries(uid, True, values=True)
        entries = keyed if keyed is not None else listed
        if entries is None:  # (a node, or a value: in the plan's words, no digest)
            text = _without_module(uid) if "/" in uid else value_text(uid)
            shown.append(f"{name}={shortened(text, INPUT_SHOWN)}")
            continue
        texts = [_without_module(entry) for entry in list(entries.values())[:2]]
        more = len(entries) - len(texts)
        tail = f", +{more} more" if more else ""
        if keyed is None:
            shown.append(f"{name}={listed_inputs(texts, len(entries))}")
            continue
        half = INPUT_SHOWN // 2  # (each entry cut on its own, as the plan does)
        pairs = [f"{shortened(k, half)}: {shortened(t, half)}" for k, t in zip(entries, texts)]
        shown.append(f"{name}={{{', '.join(pairs)}{tail}}}")
    return ", ".join(shown)


def _without_module(uid: str) -> str:
    """A node uid with its step's module left out (``Train.fit,1/...``), else as it is."""
    step, _, rest = uid.partition("/")
    if "," in step and rest and not step.startswith(("{", "[")):
        method, _, version = step.partition(",")
        return f"{'.'.join(method.rsplit('.', 2)[-2:])},{version}/{rest}"
    return uid


def render(infos: list[NodeInfo]) -> str:
    """A table grouped by step."""
    if not infos:
        return "No cached node found."
    lines = []
    current = None
    for info in infos:
        if info.step != current:
            current = info.step
            count = sum(1 for i in infos if i.step == current)
            lines.append(f"{current}  ({count} config(s))")
        entries = f"{info.entries} item(s)" if info.kind == "map" else ""
        errors = f", {info.errors} error(s)" if info.kind == "map" and info.errors else ""
        state = info.job_state
        if state == "held":
            state = f"held: {info.job_reason}; `scontrol release {info.job_id}` lets it start"
        job = f"  job {info.job_id} ({state})" if info.job_id else ""
        error = f"  {info.error}" if info.error else ""
        note = f"  ({info.note})" if info.note else ""
        fed = f"  (inputs: {describe_recorded_inputs(info.inputs)})" if info.inputs else ""
        details = f"{entries}{errors}{job}{error}{note}{fed}".strip()  # (no trailing spaces)
        lines.append(
            f"  {info.status:9s} {human_size(info.size):>9s}  {_iso(info.modified) or '-':19s}  "
            f"{info.uid}" + (f"  {details}" if details else "")
        )
    return "\n".join(lines)
