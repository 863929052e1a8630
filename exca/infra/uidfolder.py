"""The three yaml files of a uid folder, and their consistency checks.

- ``uid.yaml``: the minimal config defining the result (what the folder name encodes);
- ``full-uid.yaml``: the same with defaults (so a changed default can be detected);
- ``config.yaml``: the whole config, infra settings included (written once).

Checks run once per instance before anything is computed: an existing ``uid.yaml`` that
differs means two configs share a folder name (RuntimeError); an existing
``full-uid.yaml`` whose value of a default changed means the cache was made with another
default (RuntimeError). Unreadable files are replaced with a warning. The second check
also runs before cached results are reused (``verify_defaults``, which writes only the
defaults of fields added since, for a call reusing them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import typing as tp
from pathlib import Path

from ..confdict import ConfDict
from ..graph.node import INPUTS_PREFIX
from ..plainyaml import load as plain_load
from ..plainyaml import pyyaml
from ..storage import process, saidonce
from ..storage.files import chmod, make_folder, note_read_error, write_new

logger = logging.getLogger("exca")
UID_FILE = "uid.yaml"
FULL_UID_FILE = "full-uid.yaml"
CONFIG_FILE = "config.yaml"
INPUTS_FILE = "inputs.yaml"  # (in the sub-folder of a call with inputs: which they are)
# Sub-configs' version changes found when reusing a folder (its path -> what changed):
# the warning is logged once per folder and process; plans show it on each reuse
_VERSION_CHANGES: dict[str, str] = {}
# ...found by a plan, status() or explain, which reuse nothing: not logged then (a plan
# of many nodes logged one warning each, its table says it), but by the call reusing them
_UNTOLD: set[str] = set()
# ...and fields maybe renamed (removed beside one added at another value) that a plan
# found (folder -> (path, removed, added) of each), for its table and the call after it
_SWAPS: dict[str, list[tuple[str, dict[str, tp.Any], dict[str, tp.Any]]]] = {}
_UNTOLD_SWAPS: set[str] = set()
# ...and the changed versions' keys with their values of today (folder -> {key: value}):
# the warning counts the step's configs computed with other ones (see oldresults)
_VERSIONS_NOW: dict[str, dict[str, tp.Any]] = {}


class VersionChange(str):
    """``data.infra.version '1' -> '2'``, with the dotted key and today's value."""

    key: str
    current: tp.Any

    @classmethod
    def of(cls, key: str, cached: tp.Any, current: tp.Any) -> VersionChange:
        change = cls(f"{key} {cached!r} -> {current!r}")
        change.key, change.current = key, current
        return change


def read_text(path: Path) -> str | None:
    try:
        # (bytes that are no UTF-8, a damaged file: kept as surrogates, a text no yaml
        # reads, so that the file counts as unreadable instead of stopping the caller)
        return path.read_text(encoding="utf8", errors="surrogateescape")
    except FileNotFoundError:
        return None


def read_yaml(
    path: Path, text: str | None = None, remove_unreadable: bool = False
) -> dict[str, tp.Any] | None:
    """A yaml mapping from a file (or its text, already read); None if it is missing or
    unreadable (``remove_unreadable``: then removed too, by a writer about to rewrite it;
    readers such as inspect or iter_cached leave it alone)."""
    if text is None:
        text = read_text(path)
        if text is None:
            return None
    data = _load(text)
    if data is None:
        if not remove_unreadable:
            logger.warning("Skipping unreadable %s: %r", path, text[:200])
            return None
        logger.warning("Removing unreadable %s (it will be rewritten): %r", path, text[:200])
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        return None
    return data


def _load(text: str) -> dict[str, tp.Any] | None:
    """The yaml mapping of a text, None if it is no yaml mapping."""
    # (the files exca writes, read back without PyYAML's constructor: 4-5x faster, the
    # bulk of `exca list` on 5k configs; any other text is read by PyYAML)
    data = plain_load(text)
    if data is not None:
        return data
    yaml = pyyaml()
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (yaml.YAMLError, UnicodeError):  # (UnicodeError: bytes that are no UTF-8)
        return None
    return data if isinstance(data, dict) else None


def holds_uid_config(folder: Path, uid_config: ConfDict) -> bool:
    """Whether a folder's uid.yaml describes this uid config (as it reads back)."""
    existing = read_yaml(folder / UID_FILE)
    return existing is not None and ConfDict(existing).flat() == _normalized(uid_config)


def holds_other_config(folder: Path, uid_config: ConfDict) -> bool:
    """Whether a folder's uid.yaml, readable, describes another uid config (two configs
    mapped to the same folder name)."""
    existing = read_yaml(folder / UID_FILE)
    return existing is not None and ConfDict(existing).flat() != _normalized(uid_config)


def _differ(a: tp.Any, b: tp.Any) -> bool:
    """``a != b``, with nan equal to nan (a nan read back from yaml is another object)."""
    return a != b and not (a != a and b != b)


def _normalized(cfg: ConfDict) -> dict[str, tp.Any]:
    """The flat form of a config as it reads back from yaml (tuples become lists...)."""
    yaml = pyyaml()

    loaded = yaml.load(cfg.to_yaml(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return ConfDict(loaded or {}).flat()


def write_atomic(path: Path | str, text: str, permissions: int | None) -> None:
    """Write a whole file under a temporary name, then rename it into place (readers see
    the old file or the new one, never a part)."""
    path = os.fspath(path)
    parent, name = os.path.split(path)
    tmp = os.path.join(parent, f".{name}.tmp-{process.pid()}-{process.random_hex(3)}")
    write_new(tmp, text.encode("utf8"))
    if permissions is not None:
        chmod(tmp, permissions)
    os.replace(tmp, path)


def _check_or_write(path: Path, text: str, permissions: int | None) -> dict[str, tp.Any] | None:
    """Write ``text`` to a missing or unreadable file. Returns the file's mapping when it
    holds another text, to be compared (an identical text needs no yaml parsing)."""
    existing_text = read_text(path)
    if existing_text == text:
        return None
    existing = None if existing_text is None else read_yaml(path, existing_text, True)
    if existing is None:
        write_atomic(path, text, permissions)
    return existing


REFERENCE_RESULT = "job.pkl"  # where the reference exca keeps a task's result (not read)


class ConfigTexts(tp.NamedTuple):
    """The yaml texts of a uid folder's files, each made on demand (a new folder needs
    only these: no ConfDict built)."""

    uid: tp.Callable[[], str]
    full_uid: tp.Callable[[], str]
    config: tp.Callable[[], str]


def prepare(
    folder: Path,
    uid_config: tp.Callable[[], ConfDict],
    full_uid_config: tp.Callable[[], ConfDict],
    config: tp.Callable[[], ConfDict],
    permissions: int | None,
    sub_configs: tp.Callable[[], Structure] | None = None,
    reuses: tp.Callable[[], bool] | None = None,
    create: bool = True,
    texts: ConfigTexts | None = None,
) -> bool:
    """Create the folder, check the existing yaml files, write the missing ones
    (``sub_configs``: see ``_check_defaults``). Whether full-uid.yaml is the config's
    (False: its sub-configs' versions differ, told here if ``reuses()``: what the folder
    holds is reused by this call, e.g. a map's other items; else where it is reused).
    ``create=False``: the folder is not made (FileNotFoundError when it is gone).
    ``texts``: the configs' ``to_yaml()``, maybe made faster (the configs themselves are
    only made for an existing folder's checks: memoize them)."""
    if texts is None:
        texts = ConfigTexts(
            lambda: uid_config().to_yaml(),
            lambda: full_uid_config().to_yaml(),
            lambda: config().to_yaml(),
        )
    uid_text, full_uid_text = texts.uid(), texts.full_uid()  # (an export error: no folder)
    if create and make_folder(folder, permissions, levels=2):  # (and its step folder)
        # created by this call: no file to check yet (a concurrent creator of the same
        # folder writes the same texts, each file replaced whole)
        write_atomic(f"{folder}/{UID_FILE}", uid_text, permissions)
        write_atomic(f"{folder}/{FULL_UID_FILE}", full_uid_text, permissions)
        write_atomic(f"{folder}/{CONFIG_FILE}", texts.config(), permissions)
        return True
    if os.path.exists(f"{folder}/{REFERENCE_RESULT}"):
        logger.warning(
            "%s holds a result written by another exca (%s, the reference package?): it is "
            "left alone, and the result is computed again",
            folder,
            REFERENCE_RESULT,
        )
    existing = _check_or_write(folder / UID_FILE, uid_text, permissions)
    if existing is not None and ConfDict(existing).flat() != _normalized(uid_config()):
        raise RuntimeError(
            f"Inconsistent uid config in {folder}:\n"
            f"existing {UID_FILE}:\n{ConfDict(existing).to_yaml()}"
            f"current config:\n{uid_text}"
            "Two configs map to the same folder name; remove the folder if the cache is obsolete"
        )
    existing_full = _check_or_write(folder / FULL_UID_FILE, full_uid_text, permissions)
    versions: list[str] = []
    if existing_full is not None:
        full = full_uid_config()
        versions = _check_defaults(folder, existing_full, uid_config(), full, sub_configs)
        # (a call computing anew, e.g. a task in mode retry over its cached error, reuses
        # nothing: "Reusing the results..." was said of what it replaces; recorded all the
        # same, as what the folder holds now is taken to be)
        tell = reuses is None or reuses()
        _record_added_fields(folder, existing_full, full, sub_configs, permissions, tell)
        if versions and reuses is not None and reuses():
            _warn_versions(folder, versions)
    config_text = read_text(folder / CONFIG_FILE)  # (unparsable: removed and rewritten)
    if config_text is None:
        write_atomic(folder / CONFIG_FILE, texts.config(), permissions)
        return not versions
    current = texts.config()
    # (the same text is readable: parsing it would import PyYAML, ~20 ms of a first call)
    if config_text != current and read_yaml(folder / CONFIG_FILE, config_text, True) is None:
        write_atomic(folder / CONFIG_FILE, current, permissions)
    return not versions


def verify_defaults(
    folder: str,
    uid_config: tp.Callable[[], ConfDict],
    full_uid_config: tp.Callable[[], ConfDict],
    full_uid_text: tp.Callable[[], str] | None = None,
    sub_configs: tp.Callable[[], Structure] | None = None,
    reused: tp.Callable[[], bool] | None = None,
    record: bool = False,
    permissions: int | None = None,
    unrecorded: set[str] | None = None,
    tell: bool = True,
) -> bool | None:
    """Before cached results are reused: the class defaults they were computed with are
    the defaults of now (``full-uid.yaml``, when there is one: returns whether there was
    one to check). ``full_uid_text``: ``full_uid_config().to_yaml()``, maybe made faster
    (plans check thousands of nodes). ``reused``: whether there is a result to reuse (a
    change of sub-configs' versions is told only then: None when there was such a change
    and nothing to reuse, not settled). ``record``: a call about to reuse the result
    records in full-uid.yaml the defaults of fields added since (plans only read: the
    folder is then added to ``unrecorded`` if there are such fields, for a call to check
    again). ``tell``: a call reusing the result, which warns of changed versions (a plan
    only records them, see ``tell_untold_versions``)."""
    path = os.path.join(folder, FULL_UID_FILE)  # (str paths, bytes: a hit's path is short)
    try:
        data = _read_small(path)
    except (FileNotFoundError, NotADirectoryError):  # (a folder under a file: none either)
        return False
    except PermissionError as error:  # (said with the folder refusing it, and what to do)
        note_read_error(error, path)
        raise
    text = data.decode("utf8", errors="surrogateescape")  # (no UTF-8: unreadable, see read_text)
    if text == (full_uid_text() if full_uid_text is not None else full_uid_config().to_yaml()):
        if _VERSION_CHANGES or _SWAPS:  # (recomputed since, maybe by another process)
            forget_version_changes(folder)
        return True
    full = full_uid_config()
    existing = _load(text)
    if existing is None:
        # (damaged: as a missing one, not settled, for a call reusing the result to write
        # it again, even after a plan, a status() or a read-only call of this process)
        # (a check that only reads skipped it: told once per process)
        if not record and saidonce.first(("unreadable full-uid.yaml", path)):
            logger.warning("Skipping unreadable %s: %r", path, text[:200])
        return False
    versions = _check_defaults(Path(folder), existing, uid_config(), full, sub_configs)
    if record and (reused is None or reused()):
        _record_added_fields(Path(folder), existing, full, sub_configs, permissions)
    elif not record and _added(existing, full, sub_configs)[1]:
        if unrecorded is not None:
            unrecorded.add(folder)
        # (a read-only call: said before the reuse, which records nothing; a plan, status()
        # or explain: noted for its table, told by the call reusing the results)
        _note_swaps(Path(folder), existing, full, sub_configs, tell)
    if versions:
        if reused is not None and not reused():
            return None  # (nothing reused: nothing to tell yet)
        _warn_versions(Path(folder), versions, tell)
    return True


def _record_added_fields(
    folder: Path,
    existing: dict[str, tp.Any],
    full_uid_config: ConfDict,
    sub_configs: tp.Callable[[], Structure] | None,
    permissions: int | None,
    tell: bool = True,
) -> None:
    """Once results are reused under the defaults of fields added to the classes since
    they were computed, full-uid.yaml says so: a later change of such a default is then
    caught as any other (without this, it never was). What the file holds stays as is
    (sub-configs' versions, fields removed since). Never raises: a cache shared read-only
    only misses the record. ``tell``: warn of fields maybe renamed (results reused)."""
    merged, added = _added(existing, full_uid_config, sub_configs)
    if not added:
        return
    if tell:
        _tell_swaps(folder, existing, full_uid_config, sub_configs)
    _SWAPS.pop(str(folder), None)  # (recorded now: a plan's note of them no longer holds)
    _UNTOLD_SWAPS.discard(str(folder))
    text = ConfDict(merged).to_yaml()
    if ConfDict(merged).flat() == _normalized(full_uid_config):
        text = full_uid_config.to_yaml()  # (the very text of the config: later reads are quick)
    try:
        write_atomic(folder / FULL_UID_FILE, text, permissions)
    except OSError as error:
        logger.debug("Could not record added fields in %s: %s", folder / FULL_UID_FILE, error)


def _tell_swaps(
    folder: Path,
    existing: dict[str, tp.Any],
    full_uid_config: ConfDict,
    sub_configs: tp.Callable[[], Structure] | None,
) -> None:
    """Warn of the fields removed since the results of ``folder`` were computed beside
    fields added at another value (maybe renamed with another default), once per step."""
    _UNTOLD_SWAPS.discard(str(folder))  # (told: nothing left for a later call to tell)
    for path, gone, new in _swaps_of(existing, full_uid_config, sub_configs):
        _warn_swapped(folder, path, gone, new)


def _swaps_of(
    existing: dict[str, tp.Any],
    full_uid_config: ConfDict,
    sub_configs: tp.Callable[[], Structure] | None,
) -> list[tuple[str, dict[str, tp.Any], dict[str, tp.Any]]]:
    plain = sub_configs().plain if sub_configs is not None else set()
    cached, current = _nested(existing), _nested(_normalized(full_uid_config))
    return list(_swapped(cached, current, plain))


def _note_swaps(
    folder: Path,
    existing: dict[str, tp.Any],
    full_uid_config: ConfDict,
    sub_configs: tp.Callable[[], Structure] | None,
    tell: bool,
) -> None:
    """What ``_tell_swaps`` warns of, found by a check that records nothing: kept for the
    tables of later plans (``swaps_note``; their check is not done again); warned of if
    ``tell`` (a read-only call), else by the call reusing the results (a plan's, status()'s
    or explain's: ``tell_untold_swaps``)."""
    swaps = _swaps_of(existing, full_uid_config, sub_configs)
    if not swaps:
        return
    if len(_SWAPS) >= 10_000:
        _SWAPS.clear()  # (bounded memos)
        _UNTOLD_SWAPS.clear()
    key = str(folder)
    _SWAPS[key] = swaps
    if not tell:
        _UNTOLD_SWAPS.add(key)
        return
    _UNTOLD_SWAPS.discard(key)
    for path, gone, new in swaps:
        _warn_swapped(folder, path, gone, new)


def any_swaps() -> bool:
    """Whether a check of this process found fields maybe renamed (``_note_swaps``)."""
    return bool(_SWAPS)


def any_untold_swaps() -> bool:
    """...that only a plan, status() or explain found: no call has told them yet."""
    return bool(_UNTOLD_SWAPS)


def swaps_note(folder: Path | str) -> str | None:
    """What a plan says next to "cached" of fields maybe renamed since the results of
    ``folder`` were computed (a plan of this process found them), None if none."""
    swaps = _SWAPS.get(str(Path(folder))) if _SWAPS else None
    if not swaps:
        return None
    return "; ".join(
        f"computed with {_swap_text(path, gone, new)}: taken as computed with that "
        "default (if it is the removed field renamed, bump the infra version)"
        for path, gone, new in swaps
    )


def tell_untold_swaps(folder: Path | str) -> None:
    """A call reuses the results of ``folder``, whose fields maybe renamed only a plan
    found (its check is not done again): warned now (once per step, as any)."""
    key = str(Path(folder))
    if key not in _UNTOLD_SWAPS:
        return
    _UNTOLD_SWAPS.discard(key)
    for path, gone, new in _SWAPS.get(key, ()):
        _warn_swapped(Path(folder), path, gone, new)


def _added(
    existing: dict[str, tp.Any],
    full_uid_config: ConfDict,
    sub_configs: tp.Callable[[], Structure] | None,
) -> tuple[tp.Any, bool]:
    """``existing`` (nested) with the fields added since, and whether there are any."""
    plain = sub_configs().plain if sub_configs is not None else set()
    return _with_added(_nested(existing), _nested(_normalized(full_uid_config)), plain)


def _with_added(
    cached: tp.Any, current: tp.Any, plain: set[str], parts: tuple[str, ...] = ()
) -> tuple[tp.Any, bool]:
    """``cached`` with the models' keys that only ``current`` has (fields added since),
    walked as ``_changes`` walks them; and whether there were any."""
    if isinstance(cached, dict) and isinstance(current, dict) and ".".join(parts) not in plain:
        merged: dict[str, tp.Any] = {}
        added = False
        for name, value in cached.items():
            if name in current:
                value, sub_added = _with_added(value, current[name], plain, (*parts, name))
                added = added or sub_added
            merged[name] = value
        for name, value in current.items():
            if name not in cached:
                merged[name] = value
                added = True
        return merged, added
    if (
        isinstance(cached, list)
        and isinstance(current, list)
        and len(cached) == len(current)
        and all(isinstance(a, dict) and isinstance(b, dict) for a, b in zip(cached, current))
    ):
        items = [
            _with_added(value, now, plain, (*parts, str(index)))
            for index, (value, now) in enumerate(zip(cached, current))
        ]
        return [item for item, _ in items], any(added for _, added in items)
    return cached, False


def _swapped(
    cached: tp.Any, current: tp.Any, plain: set[str], parts: tuple[str, ...] = ()
) -> tp.Iterator[tuple[str, dict[str, tp.Any], dict[str, tp.Any]]]:
    """(dotted path, fields removed since, fields added since) of the models where fields
    went and came, each added one at a value no removed one had: maybe a field renamed
    and its default changed, which reads as an added field (walked as ``_with_added``)."""
    key = ".".join(parts)
    if isinstance(cached, dict) and isinstance(current, dict) and key not in plain:
        gone = {k: v for k, v in cached.items() if k not in current}
        new = {k: v for k, v in current.items() if k not in cached}
        changed_new = {
            k: v for k, v in new.items() if not any(same_value(v, o) for o in gone.values())
        }
        changed_gone = {
            k: v for k, v in gone.items() if not any(same_value(v, n) for n in new.values())
        }
        # (a rename at the same value beside one at another value is told: only the latter)
        if changed_gone and changed_new:
            yield key, changed_gone, changed_new
        for name, value in cached.items():
            if name in current:
                yield from _swapped(value, current[name], plain, (*parts, name))
    elif _dict_lists(cached, current):
        for index, (value, now) in enumerate(zip(cached, current)):
            yield from _swapped(value, now, plain, (*parts, str(index)))


def _dict_lists(cached: tp.Any, current: tp.Any) -> bool:
    """Whether both are lists of dicts of one length (walked item by item)."""
    return (
        isinstance(cached, list)
        and isinstance(current, list)
        and len(cached) == len(current)
        and all(isinstance(a, dict) and isinstance(b, dict) for a, b in zip(cached, current))
    )


def same_value(a: tp.Any, b: tp.Any) -> bool:
    """Equal values, nan equal to nan, at any depth (a sub-config field renamed as is)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return not isinstance(a, (dict, list)) and not isinstance(b, (dict, list)) and not _differ(a, b)


def _step_folder(folder: Path) -> Path:
    """The step folder of a config folder, or of the sub-folder of one holding the result
    of a call with inputs (``inputs-<digest>``, which may have its own full-uid.yaml)."""
    return folder.parent.parent if folder.name.startswith(INPUTS_PREFIX) else folder.parent


def _swap_parts(path: str, gone: dict[str, tp.Any], new: dict[str, tp.Any]) -> tuple[str, str]:
    where = f"{path}." if path else ""
    removed = ", ".join(f"{where}{k}={v!r}" for k, v in gone.items())
    added = ", ".join(f"{where}{k} (default {v!r})" for k, v in new.items())
    return removed, added


def _swap_text(path: str, gone: dict[str, tp.Any], new: dict[str, tp.Any]) -> str:
    removed, added = _swap_parts(path, gone, new)
    return f"{removed}, which is no field now, and before {added} was added"


def _warn_swapped(folder: Path, path: str, gone: dict[str, tp.Any], new: dict[str, tp.Any]) -> None:
    removed, added = _swap_parts(path, gone, new)
    # (a sweep's folders: one warning, not 1000)
    if not saidonce.first(("field renamed", str(_step_folder(folder)), removed, added)):
        return
    logger.warning(
        "Reusing the results in %s, computed with %s: they are taken as computed with "
        "that default (a call reusing them records it in %s). If it is the removed field "
        "renamed, with another default, these results hold the old value: bump the infra "
        "version (or remove the folder) to compute them again (said once per step folder "
        "in this process)",
        folder,
        _swap_text(path, gone, new),
        FULL_UID_FILE,
    )


def _read_small(path: str) -> bytes:
    """A small file's bytes (cheaper than a buffered file object: plans read thousands)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


@dataclasses.dataclass
class Structure:
    """Where a config's plain dicts (holding no model) sit in its export (dotted paths,
    list items by index), and which keys are sub-configs' infra versions."""

    plain: set[str]
    versions: set[str]


def _check_defaults(
    folder: Path,
    existing: dict[str, tp.Any],
    uid_config: ConfDict,
    full_uid_config: ConfDict,
    sub_configs: tp.Callable[[], Structure] | None = None,
) -> list[str]:
    """RuntimeError when a value of ``full-uid.yaml`` that is a default (not in the uid)
    differs from the current default, or when a value the uid encodes differs (two
    configs whose uids collide: a hit reads only this file). A field added to a model
    since (or removed) is no change, in a sub-config held in a list or a dict too; a key
    added to a plain dict is. The version of a sub-config's class is not part of this
    config's identity: the changes of them are returned (for a warning). Values are
    normalized through yaml (only here: when the texts differ)."""
    structure = sub_configs() if sub_configs is not None else Structure(set(), set())
    uid_tree = _nested(ConfDict(_normalized(uid_config)))
    changed_versions: list[str] = []
    for key, parts, current, cached in _changes(
        _nested(existing), _nested(_normalized(full_uid_config)), structure.plain
    ):
        if _holds(uid_tree, parts):  # a value the uid encodes: another config has this folder name
            raise RuntimeError(
                f"Inconsistent uid config in {folder}: {key}={current!r} here, "
                f"{key}={cached!r} in {folder / FULL_UID_FILE}. Two configs map to the same "
                "folder name (their uids collide); remove the folder if the cache is obsolete"
            )
        if key in structure.versions:
            changed_versions.append(VersionChange.of(key, cached, current))
            continue
        # (removing the file reads the cached results as those of the new default: said
        # as such, after the safe ways; "to ignore" read as a harmless way out)
        keep = (
            f"only if the cached results also hold for {key}={current!r}, remove "
            f"{FULL_UID_FILE}: they are then read for it"
        )
        if "_FuncConfig.build," in folder.parent.name:  # (a function of with_infra)
            why = (
                f"the default of the function's parameter {key!r} changed since the cache "
                f"was written; if the cached results are wrong now, give with_infra(...) a "
                f"new version=...; {keep}"
            )
        else:
            why = (
                "the class default changed since the cache was written; if the cached "
                "results are wrong now, bump the infra version; if this field does not "
                "change results, e.g. a path or a device, keep it out of the uid with "
                f"_exclude_from_cls_uid; {keep}"
            )
        raise RuntimeError(
            f"Default {key}={current!r} seems incompatible with the cached "
            f"{key}={cached!r} in {folder / FULL_UID_FILE} ({why})"
        )
    return changed_versions


def versions_mark(
    folder: Path | str,
    full_uid_config: tp.Callable[[], ConfDict],
    full_uid_text: tp.Callable[[], str],
    sub_configs: tp.Callable[[], Structure],
) -> str | None:
    """When ``folder``'s full-uid.yaml records other sub-configs' versions than those of
    now: a digest of today's versions (a map marks the items it computes with it: once
    every item is marked, the file may say today's versions), else None. Never raises
    (the folder's checks are ``prepare``'s)."""
    text = read_text(Path(folder) / FULL_UID_FILE)
    if text is None or text == full_uid_text():
        return None
    existing = _load(text)
    if existing is None:
        return None
    structure = sub_configs()
    if not structure.versions:
        return None
    flat = _normalized(full_uid_config())
    changes = _changes(_nested(existing), _nested(flat), structure.plain)
    if not any(key in structure.versions for key, *_ in changes):
        return None
    today = ",".join(f"{key}={flat.get(key)!r}" for key in sorted(structure.versions))
    return hashlib.md5(today.encode("utf8")).hexdigest()[:8]


def any_version_changes() -> bool:
    """Whether a reuse in this process found sub-configs' versions changed (plans check
    thousands of nodes: nothing else to look up when none did)."""
    return bool(_VERSION_CHANGES)


def version_changes(folder: Path | str) -> str | None:
    """The sub-configs' version changes told when this folder's results were last reused
    in this process (``data.infra.version '1' -> '2'``), None if there were none."""
    return _VERSION_CHANGES.get(str(Path(folder)))


def forget_version_changes(folder: Path | str) -> None:
    """The folder's full-uid.yaml now says the current versions (results stored anew)."""
    _VERSION_CHANGES.pop(str(Path(folder)), None)
    _VERSIONS_NOW.pop(str(Path(folder)), None)
    _UNTOLD.discard(str(Path(folder)))
    _SWAPS.pop(str(Path(folder)), None)  # (and fields it lacked: recorded too)
    _UNTOLD_SWAPS.discard(str(Path(folder)))


def untold_at(folders: tp.Iterable[Path | str]) -> bool:
    """Whether a plan found, at one of these folders, sub-configs' versions or fields
    changed that no call has told yet (set look-ups, no disk: a call of another folder
    pays nothing for them)."""
    return any((key := str(Path(folder))) in _UNTOLD or key in _UNTOLD_SWAPS for folder in folders)


def noted_at(folders: tp.Iterable[Path | str]) -> bool:
    """Whether version changes or swapped fields were found at one of these folders."""
    return any(
        (key := str(Path(folder))) in _VERSION_CHANGES or key in _SWAPS for folder in folders
    )


def any_untold_versions() -> bool:
    """Whether a plan found sub-configs' versions changed that no call has told yet."""
    return bool(_UNTOLD)


def tell_untold_versions(folder: Path | str) -> None:
    """A call reuses the result of ``folder``, whose sub-configs' version changes only a
    plan found (its check is not done again): warned now, once."""
    key = str(Path(folder))
    if key not in _UNTOLD:
        return
    _UNTOLD.discard(key)
    changes = _VERSION_CHANGES.get(key)
    if changes is not None:
        _log_versions(key, changes)


def _warn_versions(folder: Path, changed_versions: list[str], tell: bool = True) -> None:
    if len(_VERSION_CHANGES) >= 10_000:
        _VERSION_CHANGES.clear()  # (a bounded memo)
        _VERSIONS_NOW.clear()
        _UNTOLD.clear()
    key = str(Path(folder))
    _VERSION_CHANGES[key] = ", ".join(changed_versions)
    _VERSIONS_NOW[key] = {
        c.key: c.current for c in changed_versions if isinstance(c, VersionChange)
    }
    if not tell:
        _UNTOLD.add(key)
        return
    _UNTOLD.discard(key)
    _log_versions(key, _VERSION_CHANGES[key])


def _log_versions(folder: str, changes: str) -> None:
    from .oldresults import said, step_folder

    current = _VERSIONS_NOW.get(folder, {})
    # (once per step and changed versions: a sweep of 1000 configs reused said it 1000
    # times; its count tells how many configs it concerns)
    step = step_folder(Path(folder))
    now = tuple(sorted((k, repr(v)) for k, v in current.items())) or changes
    if not saidonce.first(("other class versions", str(step or folder), now)):
        return
    logger.warning(
        "Reusing the cache in %s, computed when sub-configs had other class versions "
        "(%s): a sub-config's version is not part of this config's uid. If these "
        "results depend on what changed, bump this class's infra version too%s",
        folder,
        changes,
        said(folder, current, _load),
    )


def _nested(value: tp.Any) -> tp.Any:
    """A value with its dotted keys split into nested dicts, inside lists too."""
    if isinstance(value, dict):
        out: dict[str, tp.Any] = {}
        for key, sub in value.items():
            *heads, last = str(key).split(".")
            place = out
            for head in heads:
                place = place.setdefault(head, {})
                if not isinstance(place, dict):  # (a key and a dotted key clash: keep whole)
                    place = out
                    last = str(key)
                    break
            place[last] = _nested(sub)
        return out
    if isinstance(value, list):
        return [_nested(v) for v in value]
    return value


def _changes(
    cached: tp.Any, current: tp.Any, plain: set[str], parts: tuple[str, ...] = ()
) -> tp.Iterator[tuple[str, tuple[str, ...], tp.Any, tp.Any]]:
    """(dotted key, its parts, current value, cached value) of the values of ``cached``
    that ``current`` holds with another value. Keys in one of them only are skipped (a
    model's field added or removed since), but in a plain dict (``plain``: their paths):
    its keys are part of its value. Lists of dicts of one length are compared item by
    item; other values as a whole."""
    key = ".".join(parts)
    if isinstance(cached, dict) and isinstance(current, dict):
        if key not in plain or cached.keys() == current.keys():
            for name, value in cached.items():
                if name in current:
                    yield from _changes(value, current[name], plain, (*parts, name))
            return
    elif _dict_lists(cached, current):
        for index, (value, now) in enumerate(zip(cached, current)):
            yield from _changes(value, now, plain, (*parts, str(index)))
        return
    if _differ(current, cached):
        yield key, parts, current, cached


def _holds(tree: tp.Any, parts: tuple[str, ...]) -> bool:
    """Whether a nested value has something at this path (list items by index)."""
    for part in parts:
        if isinstance(tree, dict) and part in tree:
            tree = tree[part]
        elif isinstance(tree, list) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        else:
            return False
    return True
