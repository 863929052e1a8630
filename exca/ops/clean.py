"""Freeing disk space: each function returns a CleanPlan (a preview: what goes, how many
bytes, why); nothing is removed until ``plan.execute()``.

Safety: a folder with a live claim (being computed) or a queued/running job is never
touched; a node folder is renamed away first (its entries disappear at once, never
half-way), then deleted; files younger than ``min_age_hours`` are kept when they may
belong to a writer still at work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import logging
import os
import re
import shlex
import shutil
import stat
import sys
import time
import typing as tp
from pathlib import Path

import orjson

from ..graph import registry, store
from ..graph.localcontroller import OLDER_JOB_PREFIX
from ..graph.node import TASK_KEY, Node
from ..infra.uidfolder import UID_FILE, read_yaml
from ..storage import process
from ..storage.cachedict import CacheDict, inspecting_view
from ..storage.claims import CLAIMS_DIR, Claims, FolderHold
from ..storage.dumping import DATA_DIR
from ..storage.files import NO_SPACE, folder_mode, note_write_error
from ..storage.index import (
    _OUR_INDEX_NAME,
    AT,
    FORMER_PLACES,
    FORMER_PLACES_BYTES,
    IN,
    INDEX_SUFFIX,
    file_of,
    index_files_bytes,
    line_fields,
    record_of,
    tombstone_lines,
)
from ..storage.reclaim import MIN_IDLE_SECONDS
from .inspect import (
    INPUTS_PREFIX,
    REMOVING_PREFIX,
    _is_dir,
    disk_usage,
    human_size,
    input_folders,
    is_node_folder,
    node_folders,
    not_a_folder,
    step_selects,
    without_links_to_siblings,
)
from .logs import JOB_FOLDER

logger = logging.getLogger("exca")


# In a step folder: the config folders removed from it (a line each, name, reason and
# time, the last REMOVALS_KEPT): explain says such a config was computed, then removed,
# not that it differs from the nearest cached one. Written by removals only, read by
# explain only (never on the path of a cached result).
REMOVALS_FILE = ".exca-removed"
REMOVALS_KEPT = 1000


def record_removal(folder: Path, reason: str) -> None:
    """Note in its step folder that this config folder was removed (best effort: an
    advisory record, a removal racing another may drop the other's line)."""
    parent = folder.parent
    if "," not in parent.name:  # (an inputs-* node, in its config's folder: not recorded)
        return
    record = parent / REMOVALS_FILE
    try:
        lines = record.read_bytes().splitlines()
    except OSError:
        lines = []
    mine = orjson.dumps({"name": folder.name, "reason": reason, "t": round(time.time())})
    kept = [line for line in lines if _removed_name(line) not in (None, folder.name)]
    text = b"\n".join([*kept[-(REMOVALS_KEPT - 1) :], mine]) + b"\n"
    temporary = parent / f"{REMOVALS_FILE}.tmp-{process.unique_name()}"
    try:
        temporary.write_bytes(text)
        os.replace(temporary, record)
    except OSError as error:  # (a read-only step folder...: nothing recorded)
        logger.debug("Could not record the removal of %s: %s", folder, error)
        with contextlib.suppress(OSError):
            temporary.unlink()


def remove_emptied_step(folder: Path) -> None:
    """rmdir of a step folder its configs left (OSError when something else is there):
    the record of their removals goes with it."""
    if os.listdir(folder) == [REMOVALS_FILE]:
        (folder / REMOVALS_FILE).unlink()
    folder.rmdir()


def _removed_name(line: bytes) -> str | None:
    try:
        name = orjson.loads(line).get("name")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def removal_of(folder: Path) -> dict[str, tp.Any] | None:
    """The record of this config folder's last removal (name, reason, t), if any."""
    try:
        lines = (folder.parent / REMOVALS_FILE).read_bytes().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if _removed_name(line) == folder.name:
            found: dict[str, tp.Any] = orjson.loads(line)
            return found
    return None


@dataclasses.dataclass
class Removal:
    path: Path
    size: int
    reason: str
    keys: list[str] | None = None  # only these items of a map's folder (None: the path)
    # where the copies of those items were when previewed: one computed again since is kept
    places: dict[str, list[tuple[str, int]]] | None = dataclasses.field(default=None, repr=False)
    files: list[str] | None = None  # only these files of the folder (None: the path)
    links: list[Path] | None = None  # symlinks to the folder it was given as (unlinked too)
    template: bool = False  # submitit's empty log-folder template (see _idle_template)
    # (inode, mtime in ns, size) of a leftover as previewed: one written again since is kept
    stamp: tuple[int, int, int] | None = None
    # job logs: the ids that are pids of this host (local jobs); kept if a process of one
    # runs when removed (a new job reusing the pid writes there: the same folder or names)
    pids: tuple[str, ...] = ()


@dataclasses.dataclass
class CleanPlan:
    """What a cleaning would remove (``execute()`` does it)."""

    removals: list[Removal] = dataclasses.field(default_factory=list)
    kept: list[tuple[Path, str]] = dataclasses.field(default_factory=list)  # protected, and why
    # per cache root: what its queued or running jobs use (read once while planning)
    jobs_use: dict[Path, dict[Path, str]] = dataclasses.field(
        default_factory=dict, repr=False, compare=False
    )
    # the Slurm queue, looked at once for the jobs of every folder of a root (per 1000
    # ids), by the preview and by execute(): not an squeue call per folder, twice
    look: registry.QueueLook = dataclasses.field(
        default_factory=registry.QueueLook, repr=False, compare=False
    )
    # folders removed too when the removals leave them empty (an old version's step folder)
    emptied: list[Path] = dataclasses.field(default_factory=list, repr=False, compare=False)
    # per folder: the symlinks in it, by the real path they point to (see _links_to)
    links_in: dict[Path, dict[str, list[Path]]] = dataclasses.field(
        default_factory=dict, repr=False, compare=False
    )
    # after execute(): what it left, and why (started being computed or used since the preview)
    skipped: list[tuple[Path, str]] = dataclasses.field(
        default_factory=list, repr=False, compare=False
    )
    # after execute(): what could not be removed, and why (left whole)
    failed: list[tuple[Path, str]] = dataclasses.field(
        default_factory=list, repr=False, compare=False
    )
    # ``logs``: the log folders left as their jobs ended (or wrote) too recently, not
    # listed as kept (nothing protects them: a smaller --days takes them)
    recent: list[Path] = dataclasses.field(default_factory=list, repr=False, compare=False)
    # ``logs``: log folders no job record names, old enough for --days but written in the
    # last UNRECORDED_GRACE_S (their job may be being submitted): left whatever --days
    starting: list[Path] = dataclasses.field(default_factory=list, repr=False, compare=False)

    @property
    def size(self) -> int:
        return sum(r.size for r in self.removals)

    def _repr_pretty_(self, printer: tp.Any, cycle: bool) -> None:
        """The preview, for a notebook cell ending with a plan (IPython's display hook)."""
        printer.text(str(self))

    def __str__(self) -> str:
        lines = [f"{len(self.removals)} item(s) to remove, {human_size(self.size)}:"]
        for reason, group in itertools.groupby(self.removals, key=lambda r: r.reason):
            removals = list(group)
            if len(removals) == 1:
                (r,) = removals
                lines.append(f"  - {human_size(r.size):>9s}  {r.path}  ({reason})")
                continue
            # (the reason once for items in a row that share it: old versions, orphans...)
            size = human_size(sum(r.size for r in removals))
            lines.append(f"  {reason}: {len(removals)} item(s), {size}")
            lines += [f"    - {human_size(r.size):>9s}  {r.path}" for r in removals]
        if self.kept:
            lines.append(f"{len(self.kept)} kept:")
            for why, kept_group in itertools.groupby(self.kept, key=lambda k: k[1]):
                paths = [path for path, _ in kept_group]
                if len(paths) == 1:
                    lines.append(f"  - {paths[0]}  ({why})")
                    continue
                lines.append(f"  {why}: {len(paths)} item(s)")
                lines += [f"    - {path}" for path in paths]
        if not self.removals and not self.kept:
            lines = ["Nothing to remove."]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, tp.Any]:
        return {
            "bytes": self.size,
            "removals": [
                {"path": str(r.path), "bytes": r.size, "reason": r.reason} for r in self.removals
            ],
            "kept": [{"path": str(p), "why": why} for p, why in self.kept],
        }

    def execute(self, warn: bool = True) -> int:
        """Remove everything listed (node folders: renamed away first); return bytes freed.
        What cannot be removed (e.g. another user's folder) is left whole, listed in
        ``failed`` and warned about; what started being computed or used since the preview
        is kept, listed in ``skipped`` and warned about (``warn=False``: not warned, the
        caller says them: the command line, in its outcome and its error); the rest is
        removed. The Slurm
        queue is not asked again about the jobs the preview asked about (``look``): one
        queued then is taken as queued still (what it uses is kept), one ended then as
        ended; a job recorded since is asked about (one call for those of a root)."""
        freed = 0
        self.failed = []
        self.skipped = []
        jobs_use: dict[Path, dict[Path, str]] = {}  # (read again: jobs may have started since)
        for removal in self.removals:
            try:
                freed += _remove(removal, jobs_use, self.look)
            except _InUse as error:
                self.skipped.append((removal.path, str(error)))
            except _Incomplete as error:
                freed += error.freed
                self.failed.append((removal.path, str(error)))
            except OSError as error:
                why = f"left as it was: {type(error).__name__}: {error}"
                if error.errno in NO_SPACE:  # (renaming it away needs a new directory entry)
                    why += (
                        " (the disk or quota is full: renaming the folder away before "
                        "deleting it needs a little space; free some, e.g. remove another "
                        "folder with rm -rf, then run the same command again)"
                    )
                self.failed.append((removal.path, why))
        for folder in self.emptied:
            with contextlib.suppress(OSError):  # (not empty: something kept, or new, there)
                remove_emptied_step(folder)
        if self.skipped and warn:
            logger.warning(
                "Kept %d item(s), in use since the preview:\n%s",
                len(self.skipped),
                "\n".join(f"  - {path}: {why}" for path, why in self.skipped),
            )
        if self.failed and warn:
            logger.warning(
                "Could not remove %d item(s):\n%s",
                len(self.failed),
                "\n".join(f"  - {path}: {why}" for path, why in self.failed),
            )
        return freed


class _InUse(Exception):
    """A removal left alone: its folder started being computed or used since the preview."""


class _Incomplete(OSError):
    """A removal that could remove only part of what it was to (``freed`` bytes)."""

    def __init__(self, message: str, freed: int) -> None:
        super().__init__(message)
        self.freed = freed

    def __str__(self) -> str:
        return str(self.args[0])


def _remove(
    removal: Removal, jobs_use: dict[Path, dict[Path, str]], look: registry.QueueLook
) -> int:
    """Remove one item of a plan (unless in use since the preview); the bytes freed."""
    path = removal.path
    reused = _running_pid(removal.pids)
    if reused is not None:
        raise _InUse(
            f"a process {reused} runs here since the preview, maybe a new job reusing that id"
        )
    if removal.template:  # (checked again: a submission may have started since the preview)
        if not path.exists():
            return 0
        if not _idle_template(path, time.time()):
            raise _InUse("a submission wrote next to it since the preview")
        try:
            path.rmdir()
        except FileNotFoundError:
            return 0
        except OSError as error:
            if error.errno != errno.ENOTEMPTY:
                raise
            raise _InUse("a job's controller wrote into it since the preview") from None
        return removal.size
    if path.is_symlink() and removal.keys is None and removal.files is None:
        path.unlink()  # (only the link, whatever it points to: see _add_folder)
        return removal.size
    if removal.stamp is not None and _stamp(path) not in (removal.stamp, None):
        # (a file named by its key, by a user format, written again for a new entry)
        raise _InUse("written again since the preview")
    whole = removal.keys is None and removal.files is None
    # (a whole node folder is checked again right before it is renamed away, see held)
    busy = _busy_with_inputs(path, look=look) if path.is_dir() and not whole else None
    if busy is not None:  # started being used since the preview
        raise _InUse(busy)
    if removal.keys is not None:
        _remove_items(path, removal.keys, removal.places)
        return removal.size
    if removal.files is not None:  # (a folder holding other files too: kept)
        freed, failures = 0, []
        for name in removal.files:
            try:
                size = os.lstat(path / name).st_blocks * 512  # (as planned)
                (path / name).unlink()
                freed += size
            except FileNotFoundError:
                pass
            except OSError as error:  # (another user's file in a sticky folder...)
                failures.append(f"{name}: {error.strerror or error}")
        if failures:
            raise _Incomplete(
                f"{len(failures)} of {len(removal.files)} file(s) left (first: {failures[0]})",
                freed,
            )
        return freed
    root = registry.root_of(path) if (path / UID_FILE).exists() else path.parent.parent
    used = _holds_what_jobs_use(path, root, jobs_use, look) if path.is_dir() else None
    if used is not None:
        raise _InUse(used)
    if path.is_dir():
        node = is_node_folder(path)
        remove_node_folder(path, removal.size, checked=True, look=look)
        if node:
            record_removal(path, removal.reason)
    else:
        try:
            path.unlink()
        except FileNotFoundError:  # (removed meanwhile, by another cleaner: not freed here)
            return 0
    for link in removal.links or ():  # (they would point at nothing now)
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
    return removal.size


def _stamp(
    path: Path | os.DirEntry[str], stat: os.stat_result | None = None
) -> tuple[int, int, int] | None:
    """(inode, mtime in ns, size) of a file, None when it is gone."""
    if stat is None:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def busy_reason(
    folder: Path, own: tp.Container[Path] = (), look: registry.QueueLook | None = None
) -> str | None:
    """Why a folder must not be touched now (being computed, job queued/running), or None
    (``own``: claim files of this cleaning, not counted; ``look``: the Slurm queue as a
    run over many folders looked at it, else an squeue call for this folder's jobs)."""
    owners = [c for c in Claims(folder).current() if c.path not in own]
    if owners:
        # (a removal's hold, another cleaning's: no computation, see ClaimFile.hold)
        first = next((c for c in owners if not c.hold), owners[0])
        doing = "being removed or renamed" if first.hold else "being computed"
        return f"{doing} by {first.owner.describe()}"
    # every record, not only the latest: a map's chunk job may still be queued after a
    # later job (another call, other items) ended
    records = registry.read_all(folder, copied=True)
    slurm = [r.job_id for r in records if r.cluster == "slurm"]
    queued = registry.queued_jobs(slurm) if look is None else look.queued_of(slurm)
    for record in reversed(records):
        if _still_running(record, queued):
            return f"job {record.job_id} is queued or running"
    return None


def _still_running(record: registry.JobRecord, queued: set[str] | None = None) -> bool:
    """``registry.still_running``, also for a local job of another host (a cache shared by
    machines), whose process this one cannot see (taken for ended): running while its
    node folder holds a live claim of that host (heartbeats tell it across hosts; the
    claim is its worker's, a child of the process its id names) and it wrote no outcome."""
    return registry.still_running(record, queued) or _runs_on_another_host(record)


def _runs_on_another_host(record: registry.JobRecord) -> bool:
    """Whether a local job of another host still runs (see ``_still_running``)."""
    if record.cluster != "local" or record.foreign or record.host in ("", process.hostname()):
        return False
    if record.node_folder is None:
        return False
    try:
        owners = Claims(record.node_folder).current()
    except OSError:
        return False
    running = any(c.owner.host == record.host for c in owners)
    return running and not registry.wrote_outcome(record)


def _remove_items(
    folder: Path, keys: list[str], places: dict[str, list[tuple[str, int]]] | None = None
) -> None:
    """Delete items of a map's folder (tombstones: other processes stop reading them);
    ``places``: only where they were previewed (not an item computed again since)."""
    from ..cachedict import CacheDict

    cache: CacheDict[tp.Any] = CacheDict(folder=folder, keep_in_ram=False)
    with cache.write():
        if places is None:
            cache.delete_many(keys)  # (those removed meanwhile are skipped)
        else:
            cache.delete_at({k: places[k] for k in keys if k in places})


def remove_node_folder(
    folder: Path, size: int = 0, checked: bool = False, look: registry.QueueLook | None = None
) -> None:
    """Remove a node (or step) folder: renamed away first, in one step, so that its
    entries vanish at once whenever a kill comes (removing its index files one by one,
    a kill between the file holding a deletion and the one holding the deleted entry
    brought that entry back); then deleted. ``size``: its bytes, as planned (what a failed
    deletion freed is counted from it). ``checked``: a node folder (and its inputs-*
    nodes) being computed, or whose job is queued or running, is kept (_InUse): checked
    right before the rename, while no new claim can be taken there (see ``held``; ``look``:
    see busy_reason)."""
    if folder.name.startswith(REMOVING_PREFIX):  # (left by a killed removal)
        _delete_tree(folder, size)
        return
    _check_deletable(folder)  # (renamed away but not deleted, its space was not freed)
    trash = folder.with_name(REMOVING_PREFIX + process.unique_name())
    guard = held(folder, look) if checked and is_node_folder(folder) else None
    try:
        with guard if guard is not None else contextlib.nullcontext(Hold(None)) as hold:
            if hold.busy is not None:
                raise _InUse(hold.busy)
            os.rename(folder, trash)
            hold.moved_to = trash  # (what the hold put there goes before the deletion)
    except FileNotFoundError:
        return
    except PermissionError as error:
        parent = os.stat(folder.parent)
        if parent.st_mode & stat.S_ISVTX and os.stat(folder).st_uid != os.geteuid():
            why = (
                f"{folder.parent} is sticky (like /tmp): only the owner of {folder.name} "
                f"(uid {os.stat(folder).st_uid}) may move or remove it"
            )
        elif not (
            os.geteuid() == 0 or (parent.st_uid == os.geteuid() and parent.st_mode & stat.S_IWUSR)
        ) and not os.access(folder.parent, os.W_OK | os.X_OK):
            why = (
                f"renaming it needs write access to {folder.parent} (owner uid "
                f"{parent.st_uid}): ask its owner, or run the clean as them"
            )
        else:  # (root, or the permissions allow it: something else refuses)
            why = (
                f"{folder.parent} refuses the rename although its permissions allow it: "
                "an immutable or append-only attribute (`lsattr -d` shows it, `chattr -i` "
                "removes it), or a read-only mount?"
            )
        raise PermissionError(error.errno, f"{error.strerror}: {why}") from None
    _delete_tree(trash, size)


@dataclasses.dataclass
class Hold:
    """A node folder held by ``held``: why it must be left alone (None: it may go), and
    where the block moved it (``moved_to``: what this cleaning put there is taken away)."""

    busy: str | None
    moved_to: Path | None = None


@contextlib.contextmanager
def held(folder: Path, look: registry.QueueLook | None = None) -> tp.Iterator[Hold]:
    """Keep new claims out of a node folder and of its inputs-* nodes while the block
    renames it (away, or to another name); ``busy`` says why it must be left alone (being
    computed, job queued or running: checked in there). A check made before, then the
    rename, removed the items a map had claimed and written in between (and what it wrote
    next went into the removed folder). Each node folder's claims lock is held (a batch
    claimer, of a map's items or of a submission, waits for it; a job's record is written
    under its submission's claim), and a claim of the task key by this process is there
    (the claimer of a task's result takes no lock: it writes its claim, then lists the
    others: it sees this one and waits, or this check sees its claim). Nothing is made
    again where the folder went meanwhile (FileNotFoundError). A folder this user may not
    write into is only checked. ``look``: see busy_reason."""
    keeper = FolderHold([TASK_KEY])
    hold = Hold(None)
    done: list[Path] = []  # (the node folders held)
    try:
        try:
            while True:  # (an inputs-* node made meanwhile, by a new call: held too)
                new = [f for f in (folder, *input_folders(folder)) if f not in done]
                if not new:
                    break
                for node_folder in new:
                    # (known before it is put: a Ctrl-C as put returns, or in it once
                    # the lock is taken, leaves nothing behind, see below)
                    done.append(node_folder)
                    try:
                        keeper.put(node_folder)
                    except OSError:  # (nothing of it was put: put takes its lock away)
                        done.pop()
                        raise
                own = {keeper.claim_file(f) for f in done}
                hold.busy = _busy_with_inputs(folder, own, look)
                if hold.busy is not None:
                    break
        # (another user's folder, which this one may still rename; a full disk, where a
        # hold cannot be written: the cleaning that frees space is then checked only)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS, *NO_SPACE):
                raise
            _take_away(keeper, folder, folder, done)
            done.clear()
            hold.busy = _busy_with_inputs(folder, look=look)
        yield hold
    finally:  # (where the block moved it, what this process put there went along)
        for place in dict.fromkeys((folder, hold.moved_to or folder)):
            _take_away(keeper, folder, place, done)


def _take_away(keeper: FolderHold, folder: Path, now: Path, held: list[Path]) -> None:
    """Take a hold away from the node folders of ``folder`` it was put in, now at ``now``
    (moved by the block)."""
    for node_folder in reversed(held):
        keeper.take_away(now / node_folder.relative_to(folder))


def _check_deletable(folder: Path) -> None:
    """PermissionError naming the first folder of a tree whose entries this process cannot
    remove (another user's, read-only), before anything of it is touched."""
    for dirpath, _, _ in os.walk(folder):
        if not os.access(dirpath, os.W_OK | os.X_OK):
            raise PermissionError(
                errno.EACCES,
                f"Permission denied: {dirpath} is not writable by this user (owner uid "
                f"{os.stat(dirpath).st_uid}): ask its owner, or run the clean as them",
            )


DELETE_PASSES = 3  # (over a removed tree: writes still landing in it, see _delete_tree)


def _delete_tree(folder: Path, size: int) -> None:
    """Delete a tree renamed away (``size`` bytes); what cannot be deleted is said
    (_Incomplete: its entries are out of the cache, what is left still takes space)."""
    failures: list[str] = []
    late: list[str] = []  # (folders a write landed in after they were listed)

    def failed(_: tp.Any, path: str, error: tp.Any) -> None:
        value = error[1] if isinstance(error, tuple) else error
        if isinstance(value, FileNotFoundError):  # (deleted meanwhile: another cleaning
            return  # of the same leftover, say; nothing of it is left there)
        if isinstance(value, OSError) and value.errno == errno.ENOTEMPTY:
            late.append(path)
        failures.append(f"{path}: {value}")

    # (onerror gives (type, value, traceback); its successor onexc, Python 3.12, the value)
    hook = "onexc" if sys.version_info >= (3, 12) else "onerror"
    options: dict[str, tp.Any] = {hook: failed}
    for _ in range(DELETE_PASSES):
        failures.clear()
        late.clear()
        shutil.rmtree(folder, **options)
        # (a write into the folder that looked it up before the rename lands in it after:
        # the rename moves the folder, not a lookup already made; deleted by a new pass)
        if not failures or len(late) != len(failures):
            break
    if failures:
        left, _ = disk_usage(folder, recursive_into_inputs=True) if folder.exists() else (0, 0.0)
        raise _Incomplete(
            f"partly removed (out of the cache): {len(failures)} file(s) could not be "
            f"deleted (first: {failures[0]}); what is left is in {folder}: remove it by hand",
            max(size - left, 0),
        )


def _killed_removals(root: Path, limit: float, steps: set[str] | None) -> list[Removal]:
    """Folders a killed removal left (renamed away, not deleted), older than ``limit``
    (``steps``: in these steps only)."""

    def scan(folder: Path | str) -> list[os.DirEntry[str]]:
        try:  # (a shared cache: what this user cannot read is skipped)
            return list(os.scandir(folder))
        except OSError:
            return []

    out = []
    parents: list[Path | str] = [
        p.path
        for p in scan(root)
        if "," in p.name and _is_dir(p) and (steps is None or p.name in steps)
    ]
    # (above: step folders, holding config folders; below: their inputs-* folders)
    parents += [f for s, _, f in node_folders(root) if steps is None or s in steps]
    for parent in parents:
        for entry in scan(parent):
            if not entry.name.startswith(REMOVING_PREFIX) or not _is_dir(entry):
                continue
            stat = _stat(entry)
            remover = entry.name[len(REMOVING_PREFIX) :]
            if (
                stat is not None
                and stat.st_mtime < limit
                and process.session_ended(remover, stat.st_mtime, 0.0)
            ):
                size = disk_usage(Path(entry.path), recursive_into_inputs=True)[0]
                out.append(Removal(Path(entry.path), size, "folder left by a killed removal"))
    return out


def _busy_with_inputs(
    folder: Path, own: tp.Container[Path] = (), look: registry.QueueLook | None = None
) -> str | None:
    """``busy_reason`` of a node folder or of a node in it (a method's inputs-* nodes)."""
    busy = busy_reason(folder, own, look)
    if busy is None:
        for sub in input_folders(folder):
            busy = busy_reason(sub, own, look)
            if busy is not None:
                return f"{sub.name}: {busy}"
    return busy


def cache_root(root: Path | str) -> Path:
    """``root`` if it is a cache root; a clear error for a step or node folder (whose
    subfolders a cleaning would take for steps or versions)."""
    root = Path(root)
    if root.name in ("", ".."):  # (".": the folder's own name tells what it is)
        root = root.resolve()
    if not root.is_dir():  # (a typo: an empty plan would say there is nothing to clean)
        raise ValueError(f"{root}: {not_a_folder(root)} (give a cache root: an infra's folder)")
    if is_node_folder(root):
        raise ValueError(
            f"{root} is the folder of one node, not a cache root: give the cache root "
            f"({registry.root_of(root)}); to remove this node: `exca clean ROOT node {shlex.quote(str(root))}`"
        )
    if "," in root.name and _holds_node_folders(root):
        raise ValueError(
            f"{root} is a step folder, not a cache root: give the cache root ({root.parent}) "
            f"and restrict to this step with --step {shlex.quote(root.name)}"
        )
    return root


def _add_folder(
    plan: CleanPlan, folder: Path, reason: str, links: list[Path] | None = None
) -> None:
    if folder.is_symlink():  # (not to a sibling: those go with their folder, see node_folders)
        reason += " (a link: unlinked only, not the folder it points to)"
        plan.removals.append(Removal(folder, 0, reason))
        return
    linked = _linked_step(folder)
    if linked is not None:  # (another cache's step folder, or an alias of another version)
        plan.kept.append(
            (
                folder,
                f"reached through the link {linked}, an alias of the step folder "
                f"{_link_target(linked).name} of this root: cleaned under that name",
            )
        )
        return
    root = registry.root_of(folder)
    # (the jobs of the whole root first: the queue is asked about all of them at once)
    used = _jobs_use_of(root, plan.jobs_use, plan.look)
    busy = _busy_with_inputs(folder, look=plan.look) or _used_by(folder, used)
    if busy is not None:
        plan.kept.append((folder, busy))
        return
    size, _ = disk_usage(folder, recursive_into_inputs=True)
    if links:  # (given as links: the user named the folder through them)
        reason += f" as the link(s) {', '.join(map(str, links))}, to this folder: both go"
    beside = [k for k in _links_to(plan, folder) if k not in (links or [])]
    if beside:  # (they would point at nothing)
        reason += f"; with the link(s) to it: {', '.join(map(str, beside))}"
    links = [*(links or []), *beside]
    plan.removals.append(Removal(folder, size, reason, links=links or None))


def _linked_step(folder: Path) -> Path | None:
    """The step folder above a node folder when it is a symlink to another step folder
    of the same root (a v1 folder aliasing v2: ``versions`` took v2's live results for
    old ones). A step folder linked from elsewhere (moved to another disk) is this
    cache's: cleaned as any other."""
    step = folder.parent.parent if folder.name.startswith(INPUTS_PREFIX) else folder.parent
    return step if _alias_target(step) is not None else None


def _alias_target(step: Path) -> Path | None:
    """The step folder of the same root a step folder is an alias of (``fit,9 -> fit,2``:
    a version bumped, its old results kept), or None: a real one. An alias is a symlink
    whose real path is another step folder's of the root, whatever their parents: fit,2
    itself may be a link, moved to another disk (then fit,9 was taken for version 9 and
    every real version removed). Of step folders with one real path, the real one is a
    folder, else the one the others' links go through, else the one named as its target.
    A link to a folder of the root named as no step (``fit,9 -> fit-v3-kept``: a version
    renamed to keep it) is an alias of that folder."""
    if not step.is_symlink():
        return None
    real = os.path.realpath(step)
    try:
        same = [
            Path(e.path)
            for e in os.scandir(step.parent)
            if "," in e.name and e.name != step.name and _is_dir(e)
            if os.path.realpath(e.path) == real
        ]
    except OSError:
        return None
    if not same:  # (fit,9 -> fit-v3-kept: a folder of the root named as no step)
        beside = os.path.dirname(real) == os.path.realpath(step.parent)
        return step.parent / os.path.basename(real) if beside else None
    group = [step, *same]
    names = {os.path.join(os.path.realpath(step.parent), p.name) for p in group}

    def through_another(path: Path) -> bool:  # (its links name another of the group)
        current = str(path)
        for _ in range(40):  # (as the system's limit of links followed)
            if not os.path.islink(current):
                return False
            parent = os.path.realpath(os.path.dirname(current))
            current = os.path.normpath(os.path.join(parent, os.readlink(current)))
            if current in names - {os.path.join(parent, path.name)}:
                return True
        return False

    def order(path: Path) -> tuple[bool, bool, bool, str]:
        linked = path.is_symlink()
        return (linked, linked and through_another(path), path.name != Path(real).name, path.name)

    first = min(group, key=order)
    return None if first == step else first


def _links_to(plan: CleanPlan, folder: Path) -> list[Path]:
    """The symlinks beside a node folder that point to it (a shortcut, "best", in its step
    folder), each folder listed once per plan."""
    parent = folder.parent
    found = plan.links_in.get(parent)
    if found is None:
        found = plan.links_in[parent] = {}
        with contextlib.suppress(OSError):  # (a folder this user cannot read: none known)
            for entry in os.scandir(parent):
                if entry.is_symlink():
                    found.setdefault(os.path.realpath(entry.path), []).append(Path(entry.path))
    return [k for k in found.get(os.path.realpath(folder), []) if k != folder]


def _link_target(path: Path) -> Path:
    """The folder a symlink points to, through links to links, as the system resolves it
    (``..`` under a linked folder is its target's parent: a lexical reading would name
    another folder)."""
    return Path(os.path.realpath(path))


def _add_items(plan: CleanPlan, folder: Path, keys: list[str], reason: str) -> None:
    """Some items of a map folder (the size: their share of the folder's, an estimate)."""
    _jobs_use_of(registry.root_of(folder), plan.jobs_use, plan.look)  # (the root's jobs)
    busy = _busy_with_inputs(folder, look=plan.look)
    if busy is not None:
        plan.kept.append((folder, busy))
        return
    view = inspecting_view(folder)
    # (where each is now: one computed again before execute(), from another input, stays)
    places = view.copy_places(keys)
    total = max(len(view.keys()), 1)
    size, _ = disk_usage(folder)
    shown = f"{len(keys)} of {total} items: {reason}"
    removal = Removal(folder, size * len(keys) // total, shown, keys=keys, places=places)
    plan.removals.append(removal)


def _holds_what_jobs_use(
    folder: Path, root: Path, jobs_use: dict[Path, dict[Path, str]], look: registry.QueueLook
) -> str | None:
    """Why a folder holds files a queued or running job of ANOTHER node needs (jobs packed
    in one array share the log folder and code snapshot of its first node), or None;
    ``jobs_use`` memoizes ``_used_by_jobs`` per root."""
    return _used_by(folder, _jobs_use_of(root, jobs_use, look))


def _jobs_use_of(
    root: Path, jobs_use: dict[Path, dict[Path, str]], look: registry.QueueLook
) -> dict[Path, str]:
    """``_used_by_jobs(root)``, once per root (``jobs_use``); it asks the queue (``look``)
    about every Slurm job recorded under the root, so that the folders checked next find
    theirs there."""
    root = root.resolve()
    if root not in jobs_use:
        jobs_use[root] = _used_by_jobs(root, look)
    return jobs_use[root]


def _used_by(folder: Path, used: dict[Path, str]) -> str | None:
    """Why a folder holds what a job uses (``used``: see _used_by_jobs), or None."""
    resolved = folder.resolve()
    for path, why in used.items():
        if path == resolved or resolved in path.parents:
            return why
    return None


def _used_by_jobs(root: Path, look: registry.QueueLook) -> dict[Path, str]:
    """Log folders and code snapshots of the queued or running jobs under a root (the
    queue asked about all of them at once, per 1000 ids, through ``look``)."""
    records = [(f, r) for _, _, f in node_folders(root) for r in registry.read_all(f, copied=True)]
    queued = look.queued_of([r.job_id for _, r in records if r.cluster == "slurm"])
    used: dict[Path, str] = {}
    for folder, record in records:
        if _still_running(record, queued):
            why = f"files of job {record.job_id} ({folder.name}), queued or running"
            used[record.logs_folder().resolve()] = why
            code = folder / "code"
            if code.is_symlink():
                used[code.resolve()] = why
    return used


# --- nodes and what depends on them ----------------------------------------------------------
def computed_from(
    root: Path, folders: tp.Iterable[Path]
) -> tuple[list[Path], dict[Path, list[str]]]:
    """What was computed from the given node folders (recorded provenance): whole node
    folders, and the items of map folders of which only some were (a map's folder holds
    the items of every call of its config: those computed from other inputs stay)."""
    by_uid: dict[str, Path] = {}
    parents: dict[Path, dict[str | None, set[str]]] = {}  # (None: a task's result)
    # a task's result by its uid's shape and entry (provenance recorded before its class
    # was renamed, exca rename, names it by its old uid: see store.uid_shape)
    by_entry: dict[tuple[tuple[str, ...], str], str] = {}
    renamed: set[tuple[str, str]] = set()  # (recorded uids no folder has, and entries)
    for step, uid, folder in node_folders(root):
        by_uid[f"{step}/{uid}"] = folder
        cache = inspecting_view(folder)
        entry = cache.entry(TASK_KEY)
        metas: dict[str | None, tp.Any]
        if entry is None:  # a map: each item may record the upstream it came from
            metas = {key: info.get("#meta") for key, info in cache.entries_info().items()}
        else:
            metas = {None: entry.info.get("#meta")}
            by_entry[store.uid_shape(f"{step}/{uid}"), store.entry_ref(entry)] = f"{step}/{uid}"
        ups = {
            key: meta["up"] if isinstance(meta, dict) and isinstance(meta.get("up"), dict) else {}
            for key, meta in metas.items()
        }
        parents[folder] = {key: set(up) for key, up in ups.items()}
        renamed.update((u, r) for up in ups.values() for u, r in up.items() if isinstance(r, str))
    aliases: dict[str, str] = {}
    for uid, ref in renamed:
        if uid not in by_uid:
            alias = by_entry.get((store.uid_shape(uid), ref))
            if alias is not None:
                aliases[uid] = alias
    if aliases:
        for ups_of in parents.values():
            for key, up in ups_of.items():
                ups_of[key] = {aliases.get(u, u) for u in up}
    # a config folder goes with the node folders of its inputs (inputs-*) inside it
    targets = {g.resolve() for f in folders for g in (Path(f), *input_folders(Path(f)))}
    found: list[Path] = []
    some_items: dict[Path, list[str]] = {}
    frontier = {uid for uid, f in by_uid.items() if f.resolve() in targets}
    while frontier:
        next_frontier: set[str] = set()
        for folder, ups in parents.items():
            if folder.resolve() in targets or folder in found:
                continue
            hit = [key for key, up in ups.items() if up & frontier]
            if not hit:
                continue
            if len(hit) < len(ups):  # (what follows these items recorded where they came
                done = some_items.setdefault(folder, [])  # from: found through that)
                done.extend(k for k in hit if k is not None and k not in done)
                continue
            some_items.pop(folder, None)
            found.append(folder)
            gone = {folder, *input_folders(folder)}
            next_frontier.update(u for u, f in by_uid.items() if f in gone)
        frontier = next_frontier
    return found, some_items


def cached_folder(node: Node) -> Path | None:
    """The folder holding a node's cache: its own, else the one under its config's legacy
    (v2) name (an older exca's cache, which the node's next run renames and reuses), else
    None (never computed)."""
    folder = node.folder
    if folder is None or folder.exists():
        return folder
    # (only a folder holding this very config: what a run renames and reuses)
    legacy_folder = node.legacy_folder() if node.legacy_folder is not None else None
    if legacy_folder is None:
        return None
    if node.inputs_uid is not None:  # (a call with inputs: its folder is in its config's)
        legacy_folder /= node.inputs_uid
    return legacy_folder if legacy_folder.exists() else None


def remove_nodes(
    nodes: Node | Path | str | tp.Sequence[Node | Path | str],
    downstream: bool = False,
    root: Path | str | None = None,
    reason: str = "requested",
    look: registry.QueueLook | None = None,
) -> CleanPlan:
    """Remove node folders (Nodes or folder paths: a node never computed has nothing to
    remove), and on request every folder whose result was computed from them (in
    ``root``, by default the cache root of the first one). ``reason``: what the preview
    says of the folders given (those of some configs: ``[i.folder for i in
    exca.ops.inspect(root, where=[...])]``, as ``exca clean ROOT node --where`` does);
    ``look``: the Slurm queue as looked at already by that selection (see inspect)."""
    plan = CleanPlan() if look is None else CleanPlan(look=look)
    folders = []
    links: dict[Path, list[Path]] = {}  # (a folder given as a symlink: that link goes too)
    if isinstance(nodes, Node | Path | str):
        nodes = [nodes]
    base = cache_root(root) if root is not None else None  # (a root that is not: refused)
    for item in nodes:
        # (a path as given: ".", "../x": absolute, as its removal renames it)
        folder = cached_folder(item) if isinstance(item, Node) else Path(os.path.abspath(item))
        if folder is None:
            continue
        link = None
        if folder.is_symlink():  # (removing the link alone would leave the cache there)
            link, folder = folder, _link_target(folder)
            if not folder.exists():
                raise ValueError(f"{link}: {not_a_folder(link)}")
        if not folder.exists():
            raise ValueError(f"{folder}: {not_a_folder(folder)} (give node folders, or Nodes)")
        if not is_node_folder(folder):  # (a method folder or a root holds many nodes,
            # whose claims are not checked one by one here)
            raise ValueError(
                f"{folder} is not the folder of a node (no {UID_FILE}): pass config folders "
                "(<root>/<module.Class.method,version>/<uid>); whole methods are removed by "
                "`exca clean ROOT versions` (old versions) or, from Python, "
                "exca.ops.clean.garbage(root, targets)"
            )
        if link is not None:
            # (its target goes only if in the cache: the root given, else the link's own
            # when it is in a step folder; another cache's folder is never reached so)
            home = base if base is not None else None
            if home is None and "," in link.parent.name:
                home = Path(os.path.abspath(link)).parent.parent
            if home is not None and registry.root_of(folder).resolve() != home.resolve():
                raise ValueError(
                    f"{link} is a link to {folder}, which is not in the cache root {home}: "
                    "remove the link alone with rm, or that folder from its own cache"
                )
            links.setdefault(folder.resolve(), []).append(link)
        folders.append(folder)
    # (a folder given twice, "F" and "F/", or with its config folder: listed and counted once)
    # (a symlink given with its target: the target once, see above)
    unique: dict[Path, Path] = {}
    for folder in folders:
        unique.setdefault(folder.resolve(), folder)
    folders = [f for real, f in unique.items() if real.parent not in unique]
    for folder in folders:
        real = folder.resolve()
        # (the links to it, and to the inputs-* folders it holds)
        given = [k for target, ks in links.items() if real in (target, target.parent) for k in ks]
        _add_folder(plan, folder, reason, given)
    if base is None and downstream and folders:
        base = registry.root_of(folders[0])
    if base is not None:
        real = base.resolve()
        outside = [f for f in folders if registry.root_of(f.absolute()).resolve() != real]
        if outside:  # (its downstream would be looked for in the wrong cache)
            raise ValueError(f"{outside[0]} is not in the cache root {base}: give its root")
        if downstream:
            # (absolute, as the folders given: a root given relative listed them so)
            whole, some_items = computed_from(Path(os.path.abspath(base)), folders)
            for folder in whole:
                _add_folder(plan, folder, "computed from a removed node")
            for folder, keys in some_items.items():
                _add_items(plan, folder, keys, "computed from a removed node")
    return plan


# --- old versions -------------------------------------------------------------------------------
_NUMBERED_VERSION = re.compile(r"v?(\d+(?:\.\d+)*)")


def _version_key(version: str) -> tuple[int, ...] | None:
    """The number of a version, for `clean versions`: digits, dot-separated, optionally
    after a "v" ("1" < "2" < "10", "1.9" < "1.10", "v2" is 2; trailing zeros do not count:
    "1.0" is "1"). None for any other version ("debug", "2b", "old"): such a version is
    neither older nor newer than another one, so `clean versions` never removes it, and
    it never makes another version old."""
    match = _NUMBERED_VERSION.fullmatch(version)
    if match is None:
        return None
    parts = [int(p) for p in match.group(1).split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def _step_matches(step: str, name: str, method: str) -> bool:
    """A ``--step`` filter: a glob or substring of ``<method>,<version>``; a step written
    with its version (as `exca list` prints it) selects every version of that method."""
    if "," in step and not any(c in step for c in "*?["):
        given = step.partition(",")[0]  # (the module may be left out: Train.fit,1)
        return method == given or method.endswith("." + given)
    return step_selects(step, name)


def _selected_methods(step: str, methods: dict[str, list[Path]]) -> dict[str, list[Path]]:
    """The methods a ``--step`` filter selects. Given as ``Class.method,version`` (module
    left out) and naming methods of several modules, it is refused: which one is meant is
    unclear, and `versions` removes data."""
    selected = {
        method: folders
        for method, folders in methods.items()
        if any(_step_matches(step, f.name, method) for f in folders)
    }
    if "," not in step or any(c in step for c in "*?[") or len(selected) < 2:
        return selected
    given = step.partition(",")[0]
    if given in selected:  # (named in full: that one, not others ending the same way)
        return {given: selected[given]}
    raise ValueError(
        f"--step {step!r} names {len(selected)} methods: {', '.join(sorted(selected))}; "
        "give the one meant with its module (as `exca list` prints it)"
    )


def _seen_as_node_folder(folder: Path) -> bool:
    """``is_node_folder``, False for a folder this user cannot look into (a shared cache:
    another user's private folder, told where it would be cleaned)."""
    try:
        return is_node_folder(folder)
    except OSError:
        return False


def _holds_node_folders(folder: Path) -> bool:
    """Whether a folder holds node folders (one it cannot list holds none it may clean)."""
    try:
        return any(
            _is_dir(entry) and _seen_as_node_folder(Path(entry.path))
            for entry in os.scandir(folder)
        )
    except OSError:
        return False


# the files submitit writes for a job (local, Slurm, debug; arrays: <job>_<index>_..., and
# the link to the array's shared submission script)
_JOB_FILE = re.compile(
    r"(DEBUG_)?\d+(_\d+)*_(log\.out|log\.err|result\.pkl|submitted\.pkl|submission\.sh)"
    r"|\.submission_file_[0-9a-f]+\.sh"
)
_CODE_SNAPSHOT = re.compile(r"\d{4}-\d\d-\d\d-[0-9a-f]{6}")  # (workdir copies)


def _written_by_exca(folder: Path) -> bool:
    """Whether a folder of a step folder (not a node folder) is exca's: job logs (``logs/``
    or the folder a ``logs`` setting named: only files of submitit jobs in it), or code
    snapshots (``code/<date>-<random>``). The walk stops at the first other file."""
    if folder.name == "code":
        try:
            names = [e.name for e in os.scandir(folder)]
        except OSError:
            return False
        return bool(names) and all(_CODE_SNAPSHOT.fullmatch(n) for n in names)
    found = False
    try:
        for _, _, files in os.walk(folder):
            for name in files:
                if not _JOB_FILE.fullmatch(name):
                    return False
                found = True
    except OSError:
        return False
    return found


def _is_step_folder(folder: Path) -> bool:
    """Whether a folder is a ``<method>,<version>`` folder exca wrote: it holds node
    folders, or only what exca writes besides them (its configs removed)."""
    try:
        # (a loop of links in it is no folder: it made the whole step folder skipped)
        subfolders = [Path(e.path) for e in os.scandir(folder) if _is_dir(e)]
    except OSError as error:  # (a shared cache: another user's step folder)
        logger.warning("Skipping %s: %s", folder, error)
        return False
    if any(_seen_as_node_folder(p) for p in subfolders):  # (holds node folders)
        return True
    return bool(subfolders) and all(_written_by_exca(p) for p in subfolders)


def _methods(root: Path) -> dict[str, list[Path]]:
    """The step folders of a root, by ``<module>.<Class>.<method>``."""
    methods: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and "," in p.name):
        if not _is_step_folder(folder):
            continue  # (a folder of the user's whose name holds a comma)
        methods.setdefault(folder.name.partition(",")[0], []).append(folder)
    return methods


def selected_steps(root: Path, step: str | None) -> set[str] | None:
    """The names of the step folders a ``--step`` filter (a glob or a substring of
    ``<module>.<Class>.<method>,<version>``) selects (None: no filter); one selecting none
    is an error (a typo would free nothing, silently)."""
    if step is None:
        return None
    every = _methods(root)
    # (as `exca list --step`: a step copied from its output is that version only)
    names = {f.name for folders in every.values() for f in folders}
    selected = {name for name in names if step_selects(step, name)}
    if not selected:
        raise ValueError(_unmatched(every, step))
    return selected


def _unmatched(methods: dict[str, list[Path]], step: str) -> str:
    """Why a ``--step`` filter selecting nothing is refused: the steps there are."""
    steps = sorted(f.name for folders in methods.values() for f in folders)
    return f"--step {step!r} matches no step of the root: {', '.join(steps) or 'it holds none'}"


def old_versions(root: Path | str, step: str | None = None, downstream: bool = False) -> CleanPlan:
    """Every ``<method>,<version>`` folder of a numbered version lower than the newest
    numbered version of its method holding a successful result (see ``_version_key``).
    A newer version without one (only cached errors, cleared, or being computed) makes
    nothing old and is kept, with why; one left with logs only is old, its reason then
    says "newest with a result is N". A version that is not a number ("debug", "2b") is
    never old and never makes another one old: the preview lists it as kept, with why
    (as a numbered version equal to the newest one: "v2"). ``downstream``: also what was
    computed from the configs removed (recorded provenance, as ``remove_nodes`` finds
    it), e.g. the aggregation of the evaluations of an old version."""
    root = cache_root(root)
    plan = _old_versions(root, step)
    if downstream:
        _add_downstream(plan, root, "computed from an old version")
    return plan


def downstream_left(plan: CleanPlan, root: Path | str) -> list[Path]:
    """The node folders computed from what a plan removes whole that it leaves (made
    without ``downstream``): they stay cached, and a run reuses them rather than
    computing again what the plan removes (an aggregation of removed trainings)."""
    removed = []
    for removal in plan.removals:
        path = removal.path
        if removal.keys is not None or path.is_symlink():
            continue
        with contextlib.suppress(OSError):
            if is_node_folder(path):
                removed.append(path)
    if not removed:
        return []
    whole, some_items = computed_from(Path(os.path.abspath(root)), removed)
    listed = {r.path.resolve() for r in plan.removals}
    return [f for f in [*whole, *some_items] if f.resolve() not in listed]


def _add_downstream(plan: CleanPlan, root: Path, reason: str) -> None:
    """Add to a plan what was computed from the node folders it removes whole (not what
    it keeps: e.g. a config of an old version a link points to)."""
    removed = []
    for removal in plan.removals:
        path = removal.path
        if removal.keys is not None or path.is_symlink():  # (items; a link alone)
            continue
        try:
            if is_node_folder(path):
                removed.append(path)
        except PermissionError:  # (not listed as removed then)
            continue
    if not removed:
        return
    kept = {p.resolve() for p, _ in plan.kept}
    # (absolute, as the folders removed: a root given relative listed them so)
    whole, some_items = computed_from(Path(os.path.abspath(root)), removed)
    for folder in whole:
        if folder.resolve() not in kept:
            _add_folder(plan, folder, reason)
    for folder, keys in some_items.items():
        if folder.resolve() not in kept:
            _add_items(plan, folder, keys, reason)


def _old_versions(root: Path, step: str | None) -> CleanPlan:
    plan = CleanPlan()
    every = methods = _methods(root)
    if step is not None:
        methods = _selected_methods(step, methods)
        if not methods:
            raise ValueError(_unmatched(every, step))
    # (an alias is no version: fit,9 -> fit,2 taken as version 9 made 2, and the real
    # newest 3, old: all removed, the link left to nothing. Versions are judged on real
    # folders; an alias is kept, and so is the folder it points to)
    aliases = {f: t for folders in every.values() for f in folders if (t := _alias_target(f))}
    targets: dict[Path, list[Path]] = {}
    for alias, target in aliases.items():
        targets.setdefault(target, []).append(alias)
    step_reals = {os.path.realpath(f) for folders in every.values() for f in folders}
    olds: dict[str, tuple[list[Path], str]] = {}  # per method: its old versions, why
    for folders in methods.values():
        for alias in (f for f in folders if f in aliases):
            name = aliases[alias].name
            why = (
                f"an alias of the step folder {name} of this root (a link to it): not a "
                f"version of its own, its number is not compared; kept, and {name} with it"
            )
            plan.kept.append((alias, why))
        folders = [f for f in folders if f not in aliases]
        # (a version is one by its own configs: fit,9/ holding only links to fit,2's
        # configs was taken for version 9 holding a success, and every real one removed)
        owns = {f: _own_configs(f, step_reals) for f in folders}
        for folder in folders:
            own, borrowed = owns[folder]
            if borrowed and not own:
                name = folder.name
                why = (
                    f"{name} holds only links to config folders of other step folders of "
                    "this root, no config of its own: not a version, its number is not "
                    "compared; kept"
                )
                plan.kept.append((folder, why))
        folders = [f for f in folders if owns[f][0] or not owns[f][1]]
        numbered = [f for f in folders if _version_key(f.name.partition(",")[2]) is not None]
        if len(folders) > 1:
            for folder in folders:
                if folder not in numbered:
                    why = (
                        f"version {folder.name.partition(',')[2]!r} is not a number: "
                        "`versions` only compares numbered versions (1 < 2 < 10, 1.9 < 1.10, "
                        f"v2); remove its configs with `exca clean {shlex.quote(str(root))} node FOLDER...`"
                    )
                    plan.kept.append((folder, why))
        if len(numbered) < 2:
            continue
        numbered = _newest_last(numbered)
        # (a newer version whose runs all failed, or were cleared, is a try the user may
        # have reverted: the code in use may be an older version's, which must stay)
        newest_folder = next(
            (f for f in reversed(numbered) if _holds_a_success(f, step_reals)), None
        )
        if newest_folder is None:
            why = "no version of this method holds a successful result: none is removed"
            plan.kept.append((numbered[-1], why))
            continue
        newest_key = _version_key(newest_folder.name.partition(",")[2])
        newest = newest_folder.name.partition(",")[2]
        older = []
        any_newer = False
        for folder in numbered:
            version = folder.name.partition(",")[2]
            if folder == newest_folder:
                continue
            key = _version_key(version)
            newer = key is not None and newest_key is not None and key > newest_key
            any_newer = any_newer or newer
            if newer and owns[folder][0]:  # (one left with logs only is old)
                computer = _computed_now_by(folder)
                state = (
                    f"being computed by {computer}"
                    if computer is not None
                    else "only cached errors, or nothing: it failed, was cleared, or is "
                    "being computed"
                )
                why = (
                    f"version {version!r} holds no successful result ({state}): it does not "
                    f"make older versions old; they are compared with {newest!r}, the newest "
                    "holding one"
                )
                plan.kept.append((folder, why))
            elif key == newest_key:
                why = f"version {version!r} is the same number as the newest ({newest})"
                plan.kept.append((folder, why))
            elif folder in targets:  # (removing it would leave the alias to nothing)
                links = ", ".join(str(a) for a in targets[folder])
                why = (
                    f"version {version!r} is older than {newest!r}, but the alias {links} "
                    "links to it: kept with the link (remove the link to clean it)"
                )
                plan.kept.append((folder, why))
            else:
                older.append(folder)
        if older and _set_on_instances_only(newest_folder):
            # (a try with infra.version="5" makes every lower version old: said so)
            newest += (
                ", set by its configs, not by the class: if that was a try, remove its "
                f"configs first (`exca list {shlex.quote(str(root))} --step {shlex.quote(newest_folder.name)}`, then "
                f"`exca clean {shlex.quote(str(root))} node FOLDER...`)"
            )
        # (a newer version is on disk, without a result: "newest is 1" would read wrongly)
        newest = f"newest with a result is {newest}" if any_newer else f"newest is {newest}"
        olds[newest_folder.name] = (older, newest)
    old_steps = {f for older, _ in olds.values() for f in older}
    # (a link kept in the root to an old config, fit,3/prev -> ../fit,1/<uid>, was left to
    # nothing: what a kept link points to, or into, stays, and so does the link)
    linked = _kept_links(root, every, aliases, {os.path.realpath(f) for f in old_steps})
    logs_users: dict[Path, set[Path]] | None = None  # (read when an old version has logs)
    for old_folders, newest in olds.values():
        plan.emptied += old_folders
        for old in old_folders:
            reason = f"old version ({newest})"  # ("newest is 2", "newest with a result is 1")
            kept_before = len(plan.kept)
            # (not a folder being removed: see remove_node_folder)
            subfolders = sorted(p for p in old.iterdir() if p.is_dir() and p.name[0] != ".")
            for config in without_links_to_siblings(old, subfolders):  # (links go with theirs)
                try:
                    is_config = is_node_folder(config)
                except PermissionError as error:  # (a shared cache: another user's, private)
                    logger.warning("Skipping %s: %s", config, error)
                    plan.kept.append((config, "this user cannot read it (another user's?)"))
                    continue
                link = _linked_from(config, linked) if is_config else None
                if link is not None:
                    why = (
                        f"an {reason}, but the link {link} points to it: kept with the link "
                        "(remove the link to clean it)"
                    )
                    plan.kept.append((config, why))
                elif is_config:
                    _add_folder(plan, config, reason)
            if len(plan.kept) > kept_before:  # a config of this version is in use:
                for other in subfolders:  # (its logs and code stay too, said so)
                    try:
                        config_folder = is_node_folder(other)
                    except PermissionError:  # (another user's config: kept above)
                        continue
                    if not config_folder and _written_by_exca(other):
                        why = f"{other.name} of an {reason}, kept with its config kept above"
                        plan.kept.append((other, why))
                continue
            for other in subfolders:
                # logs/, code/ of the old version (not what the user put there)
                if not is_node_folder(other) and _written_by_exca(other):
                    link = _linked_from(other, linked)
                    if link is not None:
                        plan.kept.append((other, f"the link {link} points to it"))
                        continue
                    # (a job of another method may use them)
                    used = _holds_what_jobs_use(other, root, plan.jobs_use, plan.look)
                    if used is not None:
                        plan.kept.append((other, used))
                        continue
                    if logs_users is None:
                        logs_users = _logs_users(root)
                    current = sorted(
                        node
                        for logs, nodes in logs_users.items()
                        if logs == other.resolve() or other.resolve() in logs.parents
                        for node in nodes
                        if not any(s in node.parents for s in old_steps)
                    )
                    if current:  # (an array of several nodes keeps its logs in the first's)
                        why = f"logs of jobs of current nodes too ({current[0]})"
                        plan.kept.append((other, why))
                        continue
                    size, _ = disk_usage(other, recursive_into_inputs=True)
                    plan.removals.append(Removal(other, size, f"{other.name} of an {reason}"))
    return plan


# --- orphans and leftovers -----------------------------------------------------------------------
def _set_on_instances_only(step_folder: Path) -> bool:
    """Whether every config of a ``<method>,<version>`` folder set that version itself
    (their uid holds ``<infra field>.version``: the class default is left out of uids)."""
    version = step_folder.name.partition(",")[2]
    try:  # (a shared cache: what this user cannot read tells nothing)
        configs = [p / UID_FILE for p in step_folder.iterdir() if (p / UID_FILE).is_file()]
    except OSError:
        return False
    if not configs:
        return False
    for path in configs:
        config = read_yaml(path) or {}
        if not any(
            (key.endswith(".version") and key.count(".") == 1 and str(value) == version)
            or (isinstance(value, dict) and str(value.get("version")) == version)
            for key, value in config.items()
        ):
            return False  # computed with the class's default version
    return True


def _kept_links(
    root: Path, every: dict[str, list[Path]], aliases: dict[Path, Path], old_reals: set[str]
) -> dict[str, Path]:
    """The symlinks that cleaning the step folders ``old_reals`` (real paths) leaves in a
    root (in it, and in the folders it holds), by the real path they point to. Links of an
    old version to a config folder go with it (unlinked, or with the folder they point
    to); a step folder moved to another disk (a link in the root) is no link to keep."""
    steps = {f for folders in every.values() for f in folders if f not in aliases}
    found: dict[str, Path] = {}

    def scan(folder: Path) -> list[os.DirEntry[str]]:
        try:  # (a shared cache: what this user cannot read is skipped)
            return list(os.scandir(folder))
        except OSError:
            return []

    def add(path: Path) -> None:
        if os.path.exists(path):  # (a link to nothing: nothing to keep)
            found.setdefault(os.path.realpath(path), path)

    for entry in scan(root):
        path = Path(entry.path)
        if entry.is_symlink() and path not in steps:
            add(path)
        if not _is_dir(entry) or path in aliases or (entry.is_symlink() and path not in steps):
            continue  # (an alias's links are its target's, seen there)
        old = os.path.realpath(path) in old_reals
        for sub in scan(path):
            if not sub.is_symlink():
                continue
            if (
                old
                and _is_dir(sub)
                and (_seen_as_node_folder(Path(sub.path)) or _written_by_exca(Path(sub.path)))
            ):
                continue  # (unlinked, or removed with the config, logs, code it points to)
            add(Path(sub.path))
    return found


def _linked_from(folder: Path, linked: dict[str, Path]) -> Path | None:
    """A kept link (``_kept_links``) pointing to a folder, into it, or to its step folder."""
    real = os.path.realpath(folder)
    for target, link in linked.items():
        if target in (real, os.path.dirname(real)) or target.startswith(real + os.sep):
            return link
    return None


def _borrowed(config: Path, step_reals: set[str]) -> bool:
    """Whether a config folder of a step folder is a symlink to a config folder of another
    step folder of the root (``fit,9/<uid> -> ../fit,2/<uid>``): that version's, not this
    one's (a link out of the root, a config moved to another disk, is this one's)."""
    return config.is_symlink() and os.path.dirname(os.path.realpath(config)) in step_reals


def _own_configs(step_folder: Path, step_reals: set[str]) -> tuple[bool, bool]:
    """(whether a step folder holds config folders of its own, whether it holds config
    folders that are links to another step folder's: see ``_borrowed``)."""
    own = borrowed = False
    for _, _, folder in node_folders(step_folder.parent, only=step_folder.name):
        if _borrowed(folder, step_reals):
            borrowed = True
        else:
            own = True
    return own, borrowed


def _holds_a_success(step_folder: Path, step_reals: set[str] | None = None) -> bool:
    """Whether a ``<method>,<version>`` folder holds a result that is not a cached error
    (``step_reals``: the real paths of the root's step folders, in its own configs only,
    not in links to theirs)."""
    for _, _, folder in node_folders(step_folder.parent, only=step_folder.name):
        if step_reals is not None and _borrowed(folder, step_reals):
            continue
        try:
            view = inspecting_view(folder)
            keys = view.keys()  # (not entries_info: a copy of each record, see index.META)
        except OSError:  # (a shared cache: another user's private folder tells nothing)
            continue
        if len(view.error_keys(keys)) < len(keys):
            return True
    return False


def _computed_now_by(step_folder: Path) -> str | None:
    """Who computes a config of a ``<method>,<version>`` folder now (a live claim), or
    None (a queued Slurm job, which holds no claim yet, is not looked for)."""
    for _, _, folder in node_folders(step_folder.parent, only=step_folder.name):
        try:
            # (a removal's hold is no computation: see ClaimFile.hold)
            owners = [c for c in Claims(folder).current() if not c.hold]
        except OSError:  # (a shared cache: another user's private folder tells nothing)
            continue
        if owners:
            return owners[0].owner.describe()
    return None


def _newest_last(folders: list[Path]) -> list[Path]:
    """Step folders by version, the newest last: the highest version still holding
    configs (one left with logs or code only, its configs removed, is not the newest)."""
    folders = _by_version(folders)
    holding = [f for f in folders if _holds_node_folders(f)]
    if holding and holding[-1] is not folders[-1]:
        folders.remove(holding[-1])
        folders.append(holding[-1])
    return folders


def _by_version(folders: list[Path]) -> list[Path]:
    """Step folders of numbered versions (see ``_version_key``), the highest last."""
    return sorted(folders, key=lambda p: _version_key(p.name.partition(",")[2]) or ())


def _logs_users(root: Path) -> dict[Path, set[Path]]:
    """The node folders whose job records name each log folder under a root."""
    users: dict[Path, set[Path]] = {}
    for _, _, folder in node_folders(root):
        for record in registry.read_all(folder, copied=True, refused=True):
            users.setdefault(record.logs_folder().resolve(), set()).add(folder)
    return users


def _referenced(info: tp.Any, out: set[str]) -> None:
    """Every file name an index record may point to: any string in it, and each of its path
    components (user formats name their files as they like: "data/x.txt", "x.txt", a path,
    a file in a folder of the entry's, "<folder>/a.bin": that folder of data/ is read)."""
    if isinstance(info, str):
        if len(info) < 4096:
            out.add(info)
            if "/" in info or os.sep in info:
                out.update(info.replace(os.sep, "/").split("/"))
    elif isinstance(info, dict):
        for value in info.values():
            _referenced(value, out)
    elif isinstance(info, list):
        for value in info:
            _referenced(value, out)


def orphans(root: Path | str, min_age_hours: float = 1.0, step: str | None = None) -> CleanPlan:
    """Leftovers no entry reads: unreferenced payload files, temporary files of killed
    writers, claims of dead owners, pickles and sbatch scripts of failed submissions.
    ``step``: only in these steps (see ``selected_steps``)."""
    if not min_age_hours >= 0:  # (a negative age removed the files of writers at work)
        raise ValueError(f"min_age_hours={min_age_hours}: give a number of hours >= 0")
    plan = CleanPlan()
    limit = time.time() - min_age_hours * 3600
    root = cache_root(root)
    steps = selected_steps(root, step)
    templates: list[Path] = []  # (a map's logs are in its node folder, a task's in its step's)
    _jobs_use_of(root, plan.jobs_use, plan.look)  # (the queue asked about the root's jobs)
    for step_name, _, folder in node_folders(root):
        if steps is not None and step_name not in steps:
            continue
        if busy_reason(folder, look=plan.look) is not None:
            continue
        templates += _templates_under(folder)
        plan.removals += _unsent_in(folder / "logs", limit)  # (a map's: in its node folder)
        try:
            plan.removals += _orphans_in(folder, limit)
        except PermissionError as error:  # (a shared cache: another user's private files)
            logger.warning("Skipping %s: %s", folder, error)
    plan.removals += _killed_removals(root, limit, steps)
    plan.removals += _unsent_pickles(root, limit, steps)
    for step_folder in _scan(root):  # (a loop of links: none)
        selected = steps is None or step_folder.name in steps
        if "," in step_folder.name and selected and _is_dir(step_folder):
            templates += _templates_under(Path(step_folder.path))
    _add_templates(plan, templates, limit)
    return plan


def _orphans_in(folder: Path, limit: float) -> list[Removal]:
    """The leftovers of one node folder (see ``orphans``), files older than ``limit``."""
    removals: list[Removal] = []
    cache = inspecting_view(folder)
    referenced: set[str] = set()
    for copy in cache.live_copies():  # (duplicates a reader may return included)
        _referenced(copy, referenced)
    indexes = [e.name for e in _scan(folder) if e.name.endswith(INDEX_SUFFIX)]
    data = folder / DATA_DIR
    # another exca's index files (left alone, not read): what they point to is unknown
    if data.is_dir() and all(_OUR_INDEX_NAME.fullmatch(n) for n in indexes):
        # a session whose index file is there may write again into its shared files
        sessions = tuple(n[: -len(INDEX_SUFFIX)] for n in indexes)  # (.data, -data.txt...)
        for entry in os.scandir(data):
            stat = _stat(entry)
            if stat is None:
                continue
            size, written = stat.st_blocks * 512, stat.st_mtime
            if entry.is_dir(follow_symlinks=False):  # (a user format's folder: its files)
                size += disk_usage(Path(entry.path))[0]
                written = max(written, _newest_write(Path(entry.path)))
            if written > limit:
                continue  # may belong to a writer still at work
            if entry.name in referenced:
                continue  # (whatever its name: a key may start with "save-tmp-")
            if entry.name.startswith(sessions):
                continue  # (compact merges the index files of dead writers first)
            if entry.name.startswith("save-tmp-"):
                reason = "temporary file of a killed writer"
            else:
                reason = "payload no entry refers to"
            removals.append(Removal(Path(entry.path), size, reason, stamp=_stamp(entry, stat)))
    for place in (folder, folder / "jobs"):  # yaml files, index compaction, job records
        for entry in _scan(place):
            if not (entry.name.startswith(".") and _is_temporary(entry.name)):
                continue
            stat = _stat(entry)
            if stat is not None and stat.st_mtime < limit and entry.is_file():
                removals.append(
                    Removal(
                        Path(entry.path),
                        stat.st_blocks * 512,
                        "temporary file of a killed writer",
                        stamp=_stamp(entry, stat),
                    )
                )
    claims = folder / CLAIMS_DIR
    if claims.is_dir():
        live = {c.path for c in Claims(folder).current()}
        for entry in os.scandir(claims):
            stat = _stat(entry)
            if (
                stat is not None
                and Path(entry.path) not in live
                and stat.st_mtime < limit
                and entry.name != ".lock"
            ):
                size, stamp = stat.st_blocks * 512, _stamp(entry, stat)
                removals.append(
                    Removal(Path(entry.path), size, "claim of a dead owner", stamp=stamp)
                )
    return removals


# submitit's log-folder template (a logs setting ending with %j, the default): each local
# job's controller creates it as it starts (mkdir exist_ok, which fails if the folder
# vanishes right then); the submitter removes it once its jobs ended, a killed one
# leaves it behind, empty, forever
TEMPLATE = "%j"
# a submission writes next to the template (its jobs' folders, its pickles) before its
# local jobs' controllers look for it, a few seconds later: a template is left alone
# until neither it nor its parent changed for that long
TEMPLATE_GRACE_S = 60.0


def _templates_under(folder: Path) -> list[Path]:
    """The literal template folders of the default log layout under a step or node folder
    (``logs/<user>/%j``)."""
    return [Path(u.path) / TEMPLATE for u in _scan(folder / "logs") if _is_dir(u)]


def _idle_template(path: Path, limit: float) -> bool:
    """Whether a template folder is empty and idle: neither it nor its parent (where each
    submission writes) changed since ``limit``, nor in the last TEMPLATE_GRACE_S seconds."""
    limit = min(limit, time.time() - TEMPLATE_GRACE_S)
    try:
        if path.is_symlink() or not path.is_dir():
            return False
        with os.scandir(path) as entries:
            if next(entries, None) is not None:
                return False
        return max(os.stat(path).st_mtime, os.stat(path.parent).st_mtime) < limit
    except OSError:
        return False


def _add_templates(plan: CleanPlan, templates: tp.Iterable[Path], limit: float) -> None:
    """The idle empty templates, removed first (a removal next to one, of a job's logs or
    a pickle, makes it look recently written to at execution)."""
    found, seen = [], set()
    for path in templates:
        real = os.path.realpath(path)  # (a step folder and its alias: once)
        if real in seen:
            continue
        seen.add(real)
        if _idle_template(path, limit):
            reason = "empty log-folder template of submitit (its submitting process ended before its jobs: killed, or detached)"
            size = os.lstat(path).st_blocks * 512
            found.append(Removal(path, size, reason, template=True))
    plan.removals[:0] = found


# submitit pickles a job's work as <uuid hex>.pkl in the log folder of its user, then
# moves it into the job's own folder once sbatch answered: one left there (older than a
# submission takes) belongs to a submission that failed (sbatch refused it, Ctrl-C)
_UNSENT_PICKLE = re.compile(r"[0-9a-f]{32}\.pkl")
# submitit writes a Slurm job's sbatch script there as .submission_file_<uuid hex>.sh,
# then moves it into the job's folder once sbatch answered, leaving a link to it: a file
# (not a link) left there is of a submission that failed (sbatch refused it; a full disk
# left it empty)
_UNSENT_SCRIPT = re.compile(r"\.submission_file_[0-9a-f]{32}\.sh")


def _unsent_pickles(root: Path, limit: float, steps: set[str] | None) -> list[Removal]:
    """The pickles and sbatch scripts of submissions that never went out, in the default
    log folders (``<step>/logs/<user>/``), older than ``limit``."""
    out = []
    for step in _scan(root):
        if "," not in step.name or not _is_dir(step):  # (a loop of links: none)
            continue
        if steps is not None and step.name not in steps:
            continue
        out += _unsent_in(Path(step.path) / "logs", limit)
    return out


def _unsent_in(logs: Path, limit: float) -> list[Removal]:
    """The pickles and sbatch scripts of submissions that never went out in a default log
    folder (``<logs>/<user>/``: a step's, or a map's node folder's), older than ``limit``."""
    out = []
    for user in _scan(logs):
        for entry in _scan(Path(user.path)) if _is_dir(user) else []:
            if _UNSENT_PICKLE.fullmatch(entry.name):
                reason = "pickle of a submission that failed (never sent)"
            elif _UNSENT_SCRIPT.fullmatch(entry.name):
                reason = "sbatch script of a submission that failed (never sent)"
            else:
                continue
            stat = _stat(entry)
            if stat is not None and stat.st_mtime < limit and entry.is_file(follow_symlinks=False):
                size, stamp = stat.st_blocks * 512, _stamp(entry, stat)
                out.append(Removal(Path(entry.path), size, reason, stamp=stamp))
    return out


def _scan(folder: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except PermissionError as error:  # (another user's private folder: the rest is cleaned)
        logger.warning("Skipping %s: %s", folder, error)
        return []


def _is_temporary(name: str) -> bool:
    """A hidden file written under a temporary name, then renamed into place (what a
    killed writer leaves): ``.uid.yaml.tmp-<pid>-<hex>``, ``.<index>.tmp``, ``.<job>.<hex>.tmp``."""
    return ".tmp-" in name or name.endswith(".tmp")


def _stat(entry: os.DirEntry[str]) -> os.stat_result | None:
    try:
        return entry.stat()
    except FileNotFoundError:  # removed by its writer meanwhile
        return None


def logs(root: Path | str, older_than_days: float = 30.0, step: str | None = None) -> CleanPlan:
    """submitit leftovers: log folders of jobs that ended more than N days ago
    (``step``: jobs of these steps' nodes only, see ``selected_steps``)."""
    if not older_than_days >= 0:  # (nan too: every comparison with it is False)
        raise ValueError(f"older_than_days={older_than_days}: give a number of days >= 0")
    plan = CleanPlan()
    limit = time.time() - older_than_days * 86400
    root = cache_root(root)
    steps = selected_steps(root, step)
    # (jobs may share a log folder: every step's jobs are looked at, the selected ones go)
    by_folder: dict[Path, list[tuple[bool, registry.JobRecord]]] = {}
    nodes = list(node_folders(root))
    for step_name, _, folder in nodes:
        # (with the jobs that refused their config: their logs are of no more use later)
        for record in registry.read_all(folder, copied=True, refused=True):
            selected = steps is None or step_name in steps
            by_folder.setdefault(record.logs_folder(), []).append((selected, record))
    templates: set[Path] = set()
    # (the queue asked about every job at once: not once per job, see _is_active)
    plan.look.ask(r.job_id for rs in by_folder.values() for _, r in rs if r.cluster == "slurm")
    for logs_folder, records in by_folder.items():
        if not any(selected for selected, _ in records):
            continue
        if logs_folder.name in {i for _, r in records for i in (r.job_id, r.job_id.split("_")[0])}:
            # (a logs setting ending with %j: its template is its jobs' folders' sibling,
            # there whether or not their folders still are)
            templates.add(logs_folder.parent / TEMPLATE)
        if not logs_folder.exists():
            continue
        other = _another_cache_root(logs_folder, root)
        if other is not None:  # (records of a copied or moved cache point at the original)
            plan.kept.append((logs_folder, f"in another cache root ({other}): clean that one"))
            continue
        ids = sorted({r.job_id for _, r in records})
        files = _job_files(logs_folder, ids)
        own = logs_folder.name in {i.split("_")[0] for i in ids} | set(ids)
        # (with the files of older jobs of its id, a pid, that a later one set aside)
        entries = _scan(logs_folder)
        theirs = len(files) + sum(e.name.startswith(OLDER_JOB_PREFIX) for e in entries)
        if own and theirs == len(entries) and all(s for s, _ in records):
            # a folder of its own (the default ".../%j"), holding only its jobs' files
            _add_whole_logs_folder(plan, logs_folder, [r for _, r in records], limit)
        else:
            _add_job_files(plan, logs_folder, records, files, limit)
    _add_array_scripts(plan, by_folder)
    templates.update(_add_unrecorded_logs(plan, root, steps, nodes, by_folder, limit))
    templates = {t for t in templates if _another_cache_root(t, root) is None}
    # (not the logs' age: a template holds no job's logs, and its parent changes with
    # each job's folder; only a starting submission needs it, TEMPLATE_GRACE_S)
    _add_templates(plan, sorted(templates), time.time())
    return plan


# an unrecorded log folder written to this recently is kept: its job may be being
# submitted (its record not written yet)
UNRECORDED_GRACE_S = 3600.0


def _add_unrecorded_logs(
    plan: CleanPlan,
    root: Path,
    steps: set[str] | None,
    nodes: list[tuple[str, str, Path]],
    by_folder: dict[Path, list[tuple[bool, registry.JobRecord]]],
    limit: float,
) -> set[Path]:
    """The log folders of the default layout (``<step>/logs/<user>/<job id>/``, a map's
    in its node folder) that no job record names any more: records are dropped when
    their job is cancelled by a Ctrl-C of its submitter, by ``clear_job()`` or
    ``node.clear()``, and with the node folder ``clean node`` removes, while the job's
    logs stay in the step's folder. They go once nothing was written in them since
    ``limit`` (and for an hour), and no job of their id is queued (Slurm) or running
    (a local job's id is its pid on this host). Returns the templates beside them."""
    recorded = {os.path.realpath(f) for f in by_folder}
    # (an array's script folder is named after the array: _add_array_scripts decides)
    arrays = {r.job_id.split("_")[0] for rs in by_folder.values() for _, r in rs}
    parents: list[Path] = []
    for step in _scan(root):
        if "," in step.name and _is_dir(step) and (steps is None or step.name in steps):
            parents.append(Path(step.path))
    for step_name, _, folder in nodes:  # (a map's logs are in its folder)
        if steps is None or step_name in steps:
            parents.append(folder)
    asked, limit = limit, min(limit, time.time() - UNRECORDED_GRACE_S)
    found = []
    for path in unrecorded_log_folders(parents, recorded, arrays):
        newest = _newest_write(path)
        if newest > asked:  # (younger than --days)
            plan.recent.append(path)
        elif newest > limit:  # (within the grace only)
            plan.starting.append(path)
        if newest <= limit:
            found.append(path)
    if not found:
        return set()
    queued = _unrecorded_queued([p.name for p in found], plan.look)
    for path in found:
        if path.name in queued:
            plan.kept.append((path, f"job {path.name} (no record) is queued on Slurm"))
        elif path.name.isdigit() and process.process_start_time(int(path.name)) is not None:
            plan.kept.append(
                (path, f"job {path.name} (no record) may run: a process {path.name} runs here")
            )
        else:
            size, _ = disk_usage(path)
            reason = (
                f"logs of job {path.name}, which no record names (cancelled by a Ctrl-C, "
                "cleared, or its node removed)"
            )
            pids = (path.name,) if path.name.isdigit() else ()
            plan.removals.append(Removal(path, size, reason, pids=pids))
    return {p.parent / TEMPLATE for p in found}


def unrecorded_log_folders(
    parents: tp.Iterable[Path], recorded: set[str], arrays: set[str]
) -> list[Path]:
    """The job log folders of the default layout (``<parent>/logs/<user>/<job id>/``,
    holding submitit's files alone) whose real path is not in ``recorded`` (the log
    folders job records name) and whose name is no array's (``arrays``: their scripts'
    folders), under these parents (step folders; node folders, for a map's logs)."""
    found: list[Path] = []
    for parent in parents:
        for user in _scan(parent / "logs"):
            if not _is_dir(user) or user.is_symlink():
                continue
            for entry in _scan(Path(user.path)):
                name = entry.name
                if not JOB_FOLDER.fullmatch(name) or name in arrays:
                    continue
                if entry.is_symlink() or not _is_dir(entry):
                    continue
                path = Path(entry.path)
                if os.path.realpath(path) in recorded:
                    continue
                inside = _scan(path)  # (submitit's files alone: <job id>_...)
                if inside and all(
                    e.name.startswith(f"{name}_") and e.is_file(follow_symlinks=False)
                    for e in inside
                ):
                    found.append(path)
    return found


def _unrecorded_queued(job_ids: list[str], look: registry.QueueLook) -> set[str]:
    """Which of these job ids Slurm has queued. Where squeue is not installed (no Slurm on
    this host), none; where it is but does not answer, all of them (they may run)."""
    if shutil.which("squeue") is None:
        return set()
    return look.queued_of(job_ids)


def _add_array_scripts(
    plan: CleanPlan, by_folder: dict[Path, list[tuple[bool, registry.JobRecord]]]
) -> None:
    """The default layout (``.../%j``): submitit writes a Slurm array's script in a folder
    of the array's id next to its elements' folders (``<A>/<A>_submission.sh``), and a
    ``.submission_file_<hex>.sh`` link to it in their parent; no record names them. They
    go with the last of the array's element folders."""
    removed = {r.path for r in plan.removals if r.files is None}
    arrays: dict[Path, set[str]] = {}  # parent folder -> ids of arrays all of whose go
    elements: dict[tuple[Path, str], list[Path]] = {}
    for folder, records in by_folder.items():
        for _, record in records:
            if "_" in record.job_id:
                elements.setdefault((folder.parent, record.job_id.split("_")[0]), []).append(folder)
    for (parent, array_id), folders in elements.items():
        if all(f in removed or not f.exists() for f in folders):
            arrays.setdefault(parent, set()).add(array_id)
    for parent, ids in arrays.items():
        for array_id in sorted(i for i in ids if i.isdigit()):  # (Slurm's ids)
            script = parent / array_id
            names = [e.name for e in _scan(script)]
            if (
                script.is_dir()
                and not script.is_symlink()
                and names == [f"{array_id}_submission.sh"]
            ):
                size, _ = disk_usage(script)
                reason = f"submission script of array {array_id}, whose jobs' logs go"
                plan.removals.append(Removal(script, size, reason))
        for entry in _scan(parent):  # (links to those scripts, or dangling)
            if entry.name.startswith(".submission_file_") and entry.is_symlink():
                with contextlib.suppress(OSError):
                    target = Path(os.readlink(entry.path))
                    if target.name.split("_")[0] in ids or not os.path.exists(entry.path):
                        reason = "link to the submission script of an array whose logs go"
                        plan.removals.append(Removal(Path(entry.path), 0, reason))


def _add_whole_logs_folder(
    plan: CleanPlan, folder: Path, records: list[registry.JobRecord], limit: float
) -> None:
    """A log folder of its own (the default ``.../%j``): removed whole once its jobs ended
    before ``limit``."""
    if any(r.submitted > limit for r in records):
        plan.recent.append(folder)  # (a recent job)
        return
    active = next((r for r in records if _is_active(r, plan.look)), None)
    if active is not None:
        plan.kept.append((folder, f"job {active.job_id} is queued or running"))
        return
    if _newest_write(folder) > limit:
        plan.recent.append(folder)  # (written until recently: a job queued long ago)
        return
    pids = _local_pids(records)
    reused = _running_pid(pids)
    if reused is not None:  # (its record not written yet: being submitted)
        plan.kept.append((folder, f"a process {reused} runs here, maybe a new job reusing that id"))
        return
    size, _ = disk_usage(folder)
    shown = ", ".join(sorted({r.job_id for r in records}))
    plan.removals.append(Removal(folder, size, f"logs of job {shown}, ended", pids=pids))


def _local_pids(records: tp.Iterable[registry.JobRecord]) -> tuple[str, ...]:
    """The ids of these jobs that are pids of this host (local jobs run here)."""
    here = process.hostname()
    ids = {r.job_id for r in records if r.cluster == "local" and r.host in ("", here)}
    return tuple(sorted(i for i in ids if i.isdigit()))


def _running_pid(pids: tp.Iterable[str]) -> str | None:
    """One of these pids whose process runs now (its job, or a later process reusing
    the pid: maybe a new job of that id, writing into the same log folder), or None."""
    return next((p for p in pids if process.process_start_time(int(p)) is not None), None)


def _is_active(record: registry.JobRecord, look: registry.QueueLook) -> bool:
    """``registry.is_active`` (the queue as ``look`` saw it), or a local job of another
    host still running (see ``_still_running``)."""
    queued = look.queued_of([record.job_id]) if record.cluster == "slurm" else None
    return registry.is_active(record, queued) or _runs_on_another_host(record)


def _add_job_files(
    plan: CleanPlan,
    folder: Path,
    records: list[tuple[bool, registry.JobRecord]],
    files: dict[str, tuple[str, os.stat_result]],
    limit: float,
) -> None:
    """A log folder shared by many jobs, or a folder the user named (a ``logs`` setting
    without %j: other caches' jobs, their own files, the cache itself may be in it): the
    files of the selected jobs that ended before ``limit`` go, job by job."""
    by_job: dict[str, list[str]] = {}  # (an array's shared files: under the array's id)
    for name, (job_id, _) in files.items():
        by_job.setdefault(job_id, []).append(name)
    # (any record's: a local job id is a pid, which a later job may have again, recorded
    # or still being submitted)
    local = set(_local_pids(r for _, r in records))
    busy = sorted(
        {
            r.job_id
            for _, r in records
            if r.job_id in by_job
            and (_is_active(r, plan.look) or (r.job_id in local and _running_pid([r.job_id])))
        }
    )
    going: list[str] = []
    for selected, record in records:
        names = by_job.get(record.job_id)
        if not selected or not names or record.job_id in going or record.job_id in busy:
            continue
        if record.submitted <= limit and max(files[n][1].st_mtime for n in names) <= limit:
            going.append(record.job_id)
        elif folder not in plan.recent:
            plan.recent.append(folder)
    gone = [n for job_id in going for n in by_job[job_id]]
    elements: dict[str, set[str]] = {}  # array id -> its elements' job ids
    for _, record in records:
        elements.setdefault(record.job_id.split("_")[0], set()).add(record.job_id)
    for array_id, names in by_job.items():  # (its script: once no element's files stay)
        members = elements.get(array_id, set())
        if (
            array_id not in members
            and members
            and all(m in going or (m not in by_job and m not in busy) for m in members)
        ):
            gone += names
    if busy:
        plan.kept.append((folder, f"job {', '.join(busy)} is queued or running: its files stay"))
    if not gone:
        return
    size = sum(files[n][1].st_blocks * 512 for n in gone)  # (disk space, as du counts it)
    reason = f"log files of job {', '.join(going)}, ended (only theirs: the folder holds others)"
    pids = tuple(sorted(local.intersection(going)))
    plan.removals.append(Removal(folder, size, reason, files=sorted(gone), pids=pids))


def _job_files(folder: Path, job_ids: list[str]) -> dict[str, tuple[str, os.stat_result]]:
    """The files submitit wrote for these jobs in a folder (``<job id>_...``), with their
    job's id and stats; an array's shared ``<array id>_submission.sh`` and the
    ``.submission_file_<hex>.sh`` links to a script, under the array's id."""
    prefixes = sorted(((f"{j}_", j) for j in job_ids), key=lambda p: -len(p[0]))
    scripts = {f"{j.split('_')[0]}_submission.sh": j.split("_")[0] for j in job_ids}
    out: dict[str, tuple[str, os.stat_result]] = {}
    entries = _scan(folder)
    for entry in entries:
        name = entry.name
        owner = scripts.get(name)
        if owner is None:  # (the longest id first: an element's files, not its array's)
            owner = next((j for prefix, j in prefixes if name.startswith(prefix)), None)
        if owner is not None and entry.is_file(follow_symlinks=False):
            stat = _stat(entry)
            if stat is not None:
                out[name] = (owner, stat)
    for entry in entries:  # (submitit's links to a submission script it renamed)
        if entry.name.startswith(".submission_file_") and entry.is_symlink():
            with contextlib.suppress(OSError):
                target = os.path.basename(os.readlink(entry.path))
                if target in out:
                    out[entry.name] = (out[target][0], entry.stat(follow_symlinks=False))
    return out


def _another_cache_root(logs_folder: Path, root: Path) -> Path | None:
    """The cache root other than ``root`` that a log folder lies in (in a step folder or a
    node folder of it), if any: a log folder set elsewhere by the user is this cache's."""
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(logs_folder))
    if real.is_relative_to(real_root):
        return None
    for folder in real.parents:
        if os.path.exists(folder / UID_FILE):  # a node folder (a map's logs are in it)
            return registry.root_of(folder)
        if "," in folder.name and _holds_node_folders(folder):  # a step folder
            return folder.parent
    return None


def _newest_write(folder: Path) -> float:
    """The latest modification time of the files under a folder (0 when empty)."""
    newest = 0.0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                newest = max(newest, os.stat(os.path.join(dirpath, name)).st_mtime)
    return newest


def garbage(root: Path | str, targets: Node | tp.Sequence[Node]) -> CleanPlan:
    """Node folders of a cache root that no given target reaches (their whole graph is
    kept, upstream included). Refused when no target's graph is in that root (targets of
    another cache, or none: every node of the root would go)."""
    from ..graph.decisions import collect

    root = cache_root(root)
    targets = [targets] if isinstance(targets, Node) else list(targets)
    if not targets:
        raise ValueError("garbage: give the target nodes to keep (none given: all would go)")
    graph = collect(targets).values()
    keep = {f.resolve() for n in graph if (f := cached_folder(n)) is not None}
    real_root = root.resolve()
    here = [n for n in graph if n.root is not None and n.root.resolve() == real_root]
    if not any(cached_folder(n) is not None for n in here):
        roots = sorted({str(n.root) for n in graph if n.root is not None})[:3]
        where = (
            "they are not computed (a config typo?)"
            if here
            else f"their cache: {', '.join(roots) or 'no folder set'}"
        )
        if here:  # (a class run as a script caches under __main__.<Class>: another step)
            from .explain import namesakes

            elsewhere = sorted({name for n in here for name in namesakes(n)})
            if elsewhere:
                where = (
                    f"the same methods are cached under other module names: "
                    f"{', '.join(elsewhere[:3])} (the classes were run as a script, "
                    "__main__, or moved?)"
                )
        raise ValueError(
            f"garbage: none of the targets' nodes is cached in {root} ({where}): every "
            "node of it would go; give targets computed there"
        )
    keep_configs = {f.parent for f in keep if f.name.startswith(INPUTS_PREFIX)}
    plan = CleanPlan()
    for _, uid, folder in node_folders(root):
        resolved = folder.resolve()
        if resolved in keep or (resolved in keep_configs and "/" not in uid):
            continue
        if "/" in uid and resolved.parent not in keep and resolved.parent not in keep_configs:
            continue  # removed with its config folder
        _add_folder(plan, folder, "not reached by the given targets")
    for node in here:  # (kept, but unusable: the targets fail on it)
        if node.folder is None or not node.folder.exists() or node.check_reuse is None:
            continue
        try:
            node.check_reuse()  # (its own: an upstream's failure is told with that one)
        except RuntimeError as error:
            why = str(error).splitlines()[0]
            plan.kept.append(
                (
                    node.folder,
                    f"reached by a target, but cached with other class defaults ({why}): "
                    f"`exca clean {shlex.quote(str(root))} node {shlex.quote(str(node.folder))}` removes it, to compute it again",
                )
            )
        except OSError as error:  # (its yaml files cannot be read: another user's?)
            plan.kept.append((node.folder, f"reached by a target; not checked: {error}"))
    return plan


# --- compaction ---------------------------------------------------------------------------------
def _writer_dead(name: str, mtime: float, grace: float) -> bool:
    return process.session_ended(name[: -len(INDEX_SUFFIX)], mtime, grace)


# former places kept per merged line: a writer whose view predates more compactions than
# that is unlikely (an hour of idleness each), and the lines must not grow forever
KEPT_PLACES = 2


MERGED_NOTE = "the merged index files were replaced by"


def compact(
    folder: Path | str, grace_seconds: float = 3600.0, look: registry.QueueLook | None = None
) -> tuple[int, int]:
    """Merge the index files of dead writers of a folder into one; returns (files merged,
    entries kept). Readers see every entry throughout (new file written first).
    ``grace_seconds``: how long another host's writer must have been idle; on this host,
    a file is merged once its writer ended and it was idle for 2 minutes (or for
    ``grace_seconds`` if shorter). ``look``: see busy_reason."""
    if not compactable(
        folder, grace_seconds, look
    ):  # (no lock taken, nor claims/ made, for nothing)
        return 0, 0  # (checked again below, under the folder's lock)
    folder = Path(folder)
    try:
        return _compact(folder, grace_seconds)
    except OSError as error:  # (a full disk, a quota: said with what it means here)
        if any(n.startswith(MERGED_NOTE) for n in getattr(error, "__notes__", ())):
            raise
        note_write_error(error, folder)
        error.add_note(
            f"the index files of {folder} were not merged: they are as they were, every "
            "entry is still read from them (nothing cached was lost)"
        )
        raise


def _compact(folder: Path, grace_seconds: float) -> tuple[int, int]:
    claims = Claims(folder, permissions=folder_mode(folder))  # (the cache's: unknown here)
    # (a folder removed meanwhile, maybe while this waited for a removal's hold of it:
    # not made again, nothing to merge there)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(claims._folder_lock(claims_owner(), create=False))
        except FileNotFoundError:
            return 0, 0
        files = _dead_index_files(folder, grace_seconds)
        if len(files) < 2:
            return 0, 0
        cache: CacheDict[tp.Any] = CacheDict(folder, permissions=None)
        cache.refresh()
        merged = {e.name for e in files}
        reader = cache._reader
        assert reader is not None
        lines = []
        for stored in reader.entries.values():
            if file_of(stored) in merged:
                entry = record_of(stored)
                # where it was, for deletions aimed there by writers who read the old file
                record = line_fields(entry)
                places = list(record.get(FORMER_PLACES) or ())
                places = places[len(places) - KEPT_PLACES + 1 :] if KEPT_PLACES > 1 else []
                record[FORMER_PLACES] = [*places, f"{entry[IN]}:{entry[AT]}"]
                lines.append(orjson.dumps(record))
        lines += _tombstones_still_needed(folder, merged)
        target = folder / (process.unique_name() + INDEX_SUFFIX)
        tmp = target.with_name("." + target.name + ".tmp")
        try:
            tmp.write_bytes(b"\n".join(lines) + b"\n" if lines else b"")
            with contextlib.suppress(OSError):  # (what the merged files allowed: shared)
                mode = 0
                for index_file in files:
                    mode |= stat.S_IMODE(index_file.stat().st_mode)
                os.chmod(tmp, mode)
            # (the last write of the entries it holds, not of the merging: `exca list`
            # shows a node's last write, the newest mtime of its index files)
            last_write = max(index_file.stat().st_mtime_ns for index_file in files)
            os.utime(tmp, ns=(time.time_ns(), last_write))
            os.replace(tmp, target)
        except BaseException:  # (a full disk: its part written is not left behind)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        for index_file in files:
            try:
                # (the size when listed, before it was read: a torn last line counts too)
                if os.stat(index_file.path).st_size != index_file.stat().st_size:
                    continue  # appended to since (a writer idle, not dead): kept
                os.remove(index_file.path)
            except FileNotFoundError:
                pass
            except OSError as error:
                error.add_note(
                    f"{MERGED_NOTE} {target.name}, but {index_file.name} and the ones after it "
                    "were left: their entries are read once (nothing cached was lost); a "
                    "later compaction removes them"
                )
                raise
    return len(files), len(lines)


def _tombstones_still_needed(folder: Path, merged: set[str]) -> list[bytes]:
    """The deletions written in the merged files that may still meet the line they
    delete, as they were written (with their key: a reader may read the deleted line
    before them). They are aimed at a file that exists, merged ones included (it stays
    until the removals below end: a compaction killed half-way through them would
    otherwise bring back an entry deleted in a removed file), or at a place that an index
    line names as a former place of its entry. The others are dropped."""
    named = _former_places(folder)
    out = []
    for name in sorted(merged):
        try:
            data = (folder / name).read_bytes()
        except FileNotFoundError:
            continue
        for line, target in tombstone_lines(data):
            aimed = target.rpartition(":")[0]
            if aimed in merged or target in named or os.path.exists(folder / aimed):
                out.append(line)
    return list(dict.fromkeys(out))  # (copies of one: merged files of a killed compaction)


def _former_places(folder: Path) -> set[str]:
    """The former places (``<index file>:<offset>``, written by compactions as ``#was``)
    of the lines of the folder's index files."""
    named: set[str] = set()
    marker = FORMER_PLACES_BYTES
    for _, data in index_files_bytes(folder):
        if marker not in data:
            continue
        for line in data.split(b"\n"):
            if marker not in line:
                continue
            try:
                places = orjson.loads(line).get(FORMER_PLACES)
            except (orjson.JSONDecodeError, AttributeError):
                continue
            for place in places if isinstance(places, list) else ():
                if isinstance(place, str):
                    named.add(place)
    return named


def compactable(
    folder: Path | str, grace_seconds: float = 3600.0, look: registry.QueueLook | None = None
) -> list[str]:
    """The index files ``compact(folder)`` would merge now (none when the folder is being
    computed, or when fewer than two writers are finished): a preview, nothing changes.
    ``look``: see busy_reason."""
    folder = _cache_folder(folder)
    if busy_reason(folder, look=look) is not None:
        return []
    files = _dead_index_files(folder, grace_seconds)
    return sorted(e.name for e in files) if len(files) >= 2 else []


def _cache_folder(folder: Path | str) -> Path:
    """``folder`` if it is there (compaction writes into it: not into a typo's)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(
            f"{folder}: {not_a_folder(folder)} (give a node folder, <root>/<module.Class.method,"
            "version>/<uid>; `exca clean ROOT compact` merges every node folder of a root)"
        )
    if not (folder / UID_FILE).is_file() and next(folder.glob(f"*/*/{UID_FILE}"), None):
        # (a root merged nothing, and said nothing)
        raise ValueError(
            f"{folder} is a cache root, not a node folder: give a node folder, "
            "<root>/<module.Class.method,version>/<uid> (exca.ops.inspect(root) lists them), "
            "or run `exca clean ROOT compact --yes`, which merges every node folder of a root"
        )
    return folder


def _dead_index_files(folder: Path, grace_seconds: float) -> list[os.DirEntry[str]]:
    # (and idle for a while, whatever its writer's state seems: a live writer misjudged
    # as ended, by a step of the wall clock or from another pid namespace under this host
    # name, would append to the merged file after it is removed; idle that long, it
    # checks that its file is still there before appending)
    idle_before = time.time() - min(grace_seconds, MIN_IDLE_SECONDS)
    return [
        e
        for e in os.scandir(folder)
        if _OUR_INDEX_NAME.fullmatch(e.name)
        and e.is_file()  # (a folder under such a name: not merged)
        and e.stat().st_mtime <= idle_before
        and _writer_dead(e.name, e.stat().st_mtime, grace_seconds)
    ]


def look_at_jobs(folders: tp.Iterable[Path]) -> registry.QueueLook:
    """The Slurm queue, asked at once (per 1000 ids) about the jobs recorded in these node
    folders: a QueueLook to give to what checks them one by one (see busy_reason)."""
    look = registry.QueueLook()
    records = (r for f in folders for r in registry.read_all(f, copied=True))
    look.ask(r.job_id for r in records if r.cluster == "slurm")
    return look


def claims_owner() -> tp.Any:
    from ..storage.claims import Owner

    return Owner.current()


def unrecorded_logs_near(folder: Path) -> list[Path]:
    """The job log folders no record of the cache names (see unrecorded_log_folders) in
    a node folder's step folder (a task's job logs) and in the node folder (a map's):
    where the logs of its jobs whose records were dropped may be."""
    folder = Path(os.path.abspath(folder))
    config = folder.parent if folder.name.startswith(INPUTS_PREFIX) else folder
    records = [
        record
        for _, _, node in node_folders(registry.root_of(folder))
        for record in registry.read_all(node, copied=True, refused=True)
    ]
    recorded = {os.path.realpath(r.logs_folder()) for r in records}
    arrays = {r.job_id.split("_")[0] for r in records}
    return sorted(unrecorded_log_folders([config.parent, config], recorded, arrays))
