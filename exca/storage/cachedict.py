"""CacheDict: a dict facade over a cache folder (or over RAM only).

Writes go through ``with cd.write(): cd[key] = value``; each thread of each process
writes its own index and data files (see ``index.py``), so writers never share a file and
need no lock (the instances of a folder in one thread take up one session in turns).
Reads are incremental. A key is any string; it never becomes a path.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import operator
import os
import pickle
import shutil
import threading
import typing as tp
import warnings
from collections import OrderedDict
from pathlib import Path
from time import monotonic as _monotonic

import orjson

from . import gcpause, interrupts, presence
from .dumping import (
    PATH_TYPE,
    RECORD_ERRORS,
    DamagedRecord,
    is_damaged_payload,
    mark_damaged,
    mark_if_damaged,
    record_problem,
)
from .files import (
    NO_SPACE,
    check_name_lengths,
    ensure_folder,
    note_write_error,
    parse_permissions,
)
from .formats import (
    DATA_DIR,
    LEGACY_WRITERS,
    CachedError,
    DumpContext,
    DumpOptions,
    fresh_copy,
    load_inline,
    load_memmap_runs,
)
from .index import (
    _FORKS,
    AT,
    IDLE_CHECK_SECONDS,
    IN,
    INDEX_SUFFIX,
    META,
    CacheFolderRemoved,
    Entry,
    FileState,
    IndexReader,
    IndexWriter,
    Record,
    SessionFilesGone,
    Stored,
    index_files_bytes,
    line_fields,
    place,
    places,
    record_at,
    record_of,
    records_of,
    stored_meta,
    unshare,
    written_record,
)
from .keytext import check_utf8
from .modules import imported

logger = logging.getLogger("exca")
LOAD_ATTEMPTS = 20  # reads of a key whose payload keeps being deleted under the reader
_REMOVED_KEYS_KEPT = 4096  # removed keys noted before pruning those without a RAM copy
_INLINE_TYPES = frozenset({"Result", "Json", "Auto"})  # (their value may be in the index line)


def _inline(info: dict[str, tp.Any]) -> bool:
    """Whether an index record holds the value itself (a pickle or a json value)."""
    kind = info["#type"]
    if kind not in _INLINE_TYPES or "f" in info:
        return False
    return "v" in info or (kind == "Result" and "p" in info)


if tp.TYPE_CHECKING:  # (a default: `CacheDict(folder)` is a CacheDict[Any] for a checker)
    from typing_extensions import TypeVar

    X = TypeVar("X", default=tp.Any)
else:
    X = tp.TypeVar("X")
D = tp.TypeVar("D")  # (get's default)
_CUT_SHORT_TYPES = (ValueError, EOFError, pickle.UnpicklingError)  # (a payload cut short)


class MissingKey(KeyError):
    """A key the cache does not hold (a KeyError raised while loading a value is not one:
    get() and items() tell them apart without reading the folder again, which a key written
    meanwhile by another process would turn into a false 'present')."""


class _ThreadState(threading.local):
    # the write() context this thread is in: a one-element list of its own, emptied (falsy)
    # when the context ends in another thread (a generator holding it, closed elsewhere)
    writing: list[bool] | tp.Literal[False] = False
    writing_generation = -1  # the fork generation whose write() context set `writing`
    frozen = 0  # >0: a miss refreshes at most once (bulk checks)
    refreshed_while_frozen = False
    relying = False  # inside relying_on_last_read(), before the next refresh()
    # (writer, its dump context, the fork generation it belongs to): one thread-local
    # lookup on the hot path instead of three
    session: tuple[IndexWriter, DumpContext, int, int] | None = None


_FORK_GENERATION = 0

# Written values that RAM (keep_in_ram, with a folder) keeps as they are: reading them back
# from disk would give the same. Other values are loaded from disk at their first read
# (what a new instance gets: a caller changing its object later, or a method refilling
# one buffer, does not change what the cache returns).
_KEPT_AS_WRITTEN = frozenset({int, float, complex, str, bytes, bool, type(None), CachedError})
RAM_ARRAY_BYTES = 1 << 16  # smaller arrays: RAM keeps a read-only copy (no disk read)
_HALF_IDLE = IDLE_CHECK_SECONDS / 2


def _check_key_and_meta(key: str, meta: dict[str, tp.Any] | None) -> None:
    check_utf8(key)
    if meta is not None:
        try:
            orjson.dumps(meta)
        except TypeError as error:
            raise TypeError(
                f"meta of {key!r} must be JSON (str, numbers, lists, dicts): {error} in {meta!r:.200}"
            ) from None


# what a cached value's file this process may not read says (its owner's umask, a chmod)
UNREADABLE_NOTE = (
    "this process may not read that file (its permissions): its owner can give read "
    "access (chmod a+r); the value is intact, computing it again is not needed"
)


def _written_once(key: str, folder: Path | None) -> ValueError:
    """A key is written once: the refusal says how to replace it (a user read only "no
    overwrite")."""
    where = "" if folder is None else f" {folder}"
    return ValueError(
        f"Key {key!r} is already in the cache{where} (no overwrite): a key is written once; "
        f"to replace its value, delete it first (del cache[{key!r}]), then write it"
    )


def _add_note(error: BaseException, note: str) -> None:
    if note not in getattr(error, "__notes__", ()):
        error.add_note(note)


def _ram_copy(value: tp.Any, owned: bool, cache_type: str | None) -> tp.Any:
    """What RAM keeps of a written value, or ``_NOT_KEPT``. ``owned``: the caller holds no
    other reference to the value (a copy made for the cache). With a format chosen by
    the caller, what comes back may differ (a number as a 0-d array...): not kept."""
    kind = type(value)
    if kind in _KEPT_AS_WRITTEN and cache_type is None:
        return value
    if (
        (kind is _NDARRAY[0] or _is_ndarray_type(kind))
        and value.nbytes <= RAM_ARRAY_BYTES
        and cache_type in (None, "MemmapArray")
    ):
        if not owned:
            value = value.copy()
        value.setflags(False)  # read-only, as a memmap read from disk (positional: 3x cheaper)
        return value
    return _NOT_KEPT


_NDARRAY: list[tp.Any] = [None]  # numpy.ndarray, once a value of it was seen


def _is_ndarray_type(kind: type) -> bool:
    np = imported("numpy")
    if np is None or kind is not np.ndarray:
        return False
    _NDARRAY[0] = kind
    return True


_NOT_KEPT: tp.Any = object()


def _new_batch(
    pairs: list[tuple[str, tp.Any]], entries: dict[str, tp.Any], ram: dict[str, tp.Any]
) -> tuple[dict[str, tp.Any], str | None]:
    """The batch of ``set_many``'s pairs and its keys joined, when every key is a str,
    given once, and neither indexed nor in RAM (the common case, checked in C: no
    bytecodes per entry); else ``({}, None)``: the caller checks the keys one by one."""
    try:
        batch = dict(pairs)
        joined = "".join(batch)  # (a TypeError for a key that is no str)
    except (TypeError, ValueError):  # (said by the loop, naming the key)
        return {}, None
    if len(batch) != len(pairs) or not entries.keys().isdisjoint(batch):
        return {}, None
    if ram and not ram.keys().isdisjoint(batch):
        return {}, None
    return batch, joined


def _reloaded(line: bytes, stored: tp.Any) -> Record:
    """The record of an entry's line (its inline value as read back), its metadata as
    ``stored`` (see index.META): parsed without it when it is a dict's or a list's bytes
    (a record made holding a dict stays tracked by the collector)."""
    if type(stored) is not bytes:
        return tp.cast(Record, orjson.loads(line))
    tail = b',"#meta":' + stored + b"}\n"
    data = line[: -len(tail)] + b"}" if line.endswith(tail) else line  # (last: see put)
    record = orjson.loads(data)
    record[META] = stored
    return tp.cast(Record, record)


def _not_json_record(info: dict[str, tp.Any]) -> bool:
    try:
        orjson.dumps(info)
    except TypeError:
        return True
    return False


def _own_state(writer: IndexWriter, reader: IndexReader) -> FileState:
    """The state, in this reader, of the index file this writer appends to (an instance
    writing through a session another instance of the folder took up first has its own)."""
    state = writer.read_state = reader.own_file(writer.name, writer.inode)
    writer.read_owner = reader
    return state


def _skip_own_lines(state: FileState, writer: IndexWriter, before: int) -> None:
    """After an append to a writer's file from ``before``: its reader need not read it back.
    Not when the reader stopped short of ``before``: the lines in between, another
    instance's through the same session, are read at its next refresh (with these)."""
    if state.offset == before or not writer.shared:
        state.offset = writer.size


class _SharedSessions(threading.local):
    """This thread's last writer session per folder (and options), which an instance of
    the folder takes up when no write() context of another uses it: a loop making a new
    instance per call writes one index file, not one per instance (each of which every
    reader opens and checks at each read: quadratic). Holds no open file: a session's
    files are closed at the end of each write() context."""

    def __init__(self) -> None:
        self.sessions: OrderedDict[tuple[tp.Any, ...], tuple[IndexWriter, DumpContext, int]]
        self.sessions = OrderedDict()


_SHARED = _SharedSessions()
_SHARED_KEPT = 256  # folders remembered per thread (the least recently used go)


def _after_fork() -> None:
    global _FORK_GENERATION  # writer sessions of the parent must not be reused by a child
    _FORK_GENERATION += 1


os.register_at_fork(after_in_child=_after_fork)


class CacheDict(tp.Generic[X]):
    """Dictionary-like cache of values in a folder (and/or in RAM).

    Parameters
    ----------
    folder: where entries are stored (None: RAM only, then keep_in_ram must be True)
    keep_in_ram: also keep written/loaded values in memory
    cache_type: name of the format used to write values (None: chosen per value type);
        reading always uses the format an entry was written with
    permissions: chmod applied to created files and folders (None: leave them alone)
    frees_files: whether reads free the files of ended writers whose entries were all
        deleted (reclaim.py); False for a read-only use, which changes nothing on disk
    """

    def __init__(
        self,
        folder: Path | str | None,
        keep_in_ram: bool = False,
        cache_type: str | None = None,
        permissions: int | str | None = 0o777,
        options: DumpOptions | None = None,
        *,
        frees_files: bool = True,
    ) -> None:
        if folder is None and not keep_in_ram:
            raise ValueError(
                "CacheDict needs a folder or keep_in_ram=True (else it stores nothing)"
            )
        if folder is not None:
            folder = folder if type(folder) is PATH_TYPE else Path(folder)
            if not folder.is_absolute():  # (the cwd may change: a relative path would not hold)
                folder = folder.absolute()
            check_name_lengths(folder, "CacheDict folder", "use a folder with shorter names")
        self.folder = folder
        self.keep_in_ram = keep_in_ram
        if cache_type is not None:
            DumpContext.handler(cache_type)  # fail early on an unknown format
            if cache_type in LEGACY_WRITERS:
                warnings.warn(
                    f"cache_type={cache_type!r} is a legacy name: use "
                    f"{LEGACY_WRITERS[cache_type]!r}",
                    DeprecationWarning,
                    stacklevel=2,
                )
        self.cache_type = cache_type
        if permissions is not None and permissions != 0o777:  # (the default: no check)
            permissions = parse_permissions(permissions)
        self.permissions = permissions
        self.options = options or DumpOptions()
        self._frees_files = frees_files
        self._ram: dict[str, X] = {}
        self._reader = self._new_reader() if self.folder is not None else None
        self._loader_context: DumpContext | None = None
        self._local = _ThreadState()
        self._clears = 0  # clear() calls: a thread's writer session of before is not reused
        # (what a writer session shared with other instances of the folder must agree on)
        replace = self.options.replace
        self._share_key = (folder, permissions, tuple(sorted(replace.items())) if replace else ())
        self._read_once = False
        self._ram_errors = 0  # cached errors held in RAM (values_of must check them)
        # whether an infra's method stores its results here (a removal of the folder is
        # then said to its caller, who may not know the CacheDict)
        self._holds_results = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.folder)!r}, keep_in_ram={self.keep_in_ram})"

    @property
    def _loader(self) -> DumpContext | None:
        """The context values are read through (created on first read)."""
        if self._loader_context is None and self.folder is not None:
            self._loader_context = DumpContext(
                self.folder, options=self.options, permissions=self.permissions
            )
        return self._loader_context

    # pickling gives a fresh view of the same folder, without RAM content
    def __getstate__(self) -> dict[str, tp.Any]:
        return {
            "folder": self.folder,
            "keep_in_ram": self.keep_in_ram,
            "cache_type": self.cache_type,
            "permissions": self.permissions,
            "options": self.options.replace,
            "frees_files": self._frees_files,
            "holds_results": self._holds_results,
        }

    def __setstate__(self, state: dict[str, tp.Any]) -> None:
        options = DumpOptions(state.pop("options", None))
        holds_results = state.pop("holds_results", False)
        self.__init__(**state, options=options)  # type: ignore[misc]
        self._holds_results = holds_results

    def __deepcopy__(self, memo: dict[int, tp.Any]) -> CacheDict[X]:
        new = type(self).__new__(type(self))
        new.__setstate__(self.__getstate__())
        return new

    # --- reading ------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Read what other writers added since the last read."""
        reader = self._reader
        if reader is not None:
            self._local.relying = False  # (read now: later misses may read again)
            reader.refresh()
            self._read_once = True
            if self._local.frozen:  # (the one re-read a frozen context allows: done)
                self._local.refreshed_while_frozen = True
            removed = reader.removed_keys
            if removed is not None and len(removed) > _REMOVED_KEYS_KEPT:
                with reader.locked():  # (only the keys of RAM copies matter)
                    removed.intersection_update(self._ram.keys())
            if (
                (reader.emptied or (reader.deferred and _monotonic() >= reader.deferred_until))
                and self._frees_files
                and not _KEEPING_FILES.get()
            ):
                self._free_lifeless_files()

    def _free_lifeless_files(self, deleter: bool = False) -> None:
        """Remove the files of ended writers whose entries were all deleted (reclaim.py);
        a ``deleter`` re-issues their tombstones that still apply in its own index."""
        from .reclaim import free_lifeless_files

        assert self.folder is not None and self._reader is not None
        free_lifeless_files(
            self.folder, self._reader, self._reissue_tombstones if deleter else None
        )

    def _reissue_tombstones(self, lines: list[bytes]) -> None:
        """Append another file's tombstone lines to this view's own index (that file is
        freed next: its deletions must keep applying)."""
        if not lines:
            return
        reader = self._reader
        assert reader is not None
        targets = []
        for line in lines:
            record = orjson.loads(line)
            file, _, offset = record["#of"].rpartition(":")
            targets.append((record.get("#del"), (file, int(offset))))
        writer, _ = self._session()
        try:
            if writer.fd is None:
                writer.open()
            state = _own_state(writer, reader)
            with reader.locked():  # (see put)
                before = writer.size
                writer.append(b"".join(lines))
                _skip_own_lines(state, writer, before)
                for key, target in targets:
                    reader.apply_tombstone(key, target)
                state.aim_at(target[0] for _, target in targets)
        finally:
            if not self._local.writing:
                writer.close()

    def reread(self) -> None:
        """``refresh()`` if this view read the folder before (else its first read comes
        anyway): for a long-lived view, what other processes wrote, forced or deleted."""
        local = self._local
        if local.relying:  # (read just now: see relying_on_last_read)
            local.refreshed_while_frozen = True
            return
        if self._read_once:
            self.refresh()

    @contextlib.contextmanager
    def relying_on_last_read(self) -> tp.Iterator[None]:
        """The caller read the folder just now (this thread, e.g. a map call's look-up of
        its items): until the next ``refresh()`` in this block, ``reread()`` and a miss
        rely on that read instead of listing the folder again (what is computed next
        refreshes before computing anything: see the worker's claims)."""
        local = self._local
        outer, local.relying = local.relying, self._read_once
        try:
            yield
        finally:
            local.relying = outer

    def _new_reader(self) -> IndexReader:
        assert self.folder is not None
        reader = IndexReader(self.folder)
        if self.keep_in_ram:
            reader.removed_keys = set()  # (see drop_stale_ram)
        return reader

    def index_positions(self) -> frozenset[tuple[str, int]] | None:
        """How far each index file of the folder was read (see IndexReader.positions), as
        of the last read; None in RAM only."""
        reader = self._reader
        return None if reader is None else reader.positions()

    def listed_names(self) -> set[str] | frozenset[str] | None:
        """Every file and folder name the last read found in the folder (None: not read
        yet, or in RAM only): what else the folder holds, known without a syscall."""
        reader = self._reader
        return None if reader is None else reader.listed

    @property
    def read_just_now(self) -> bool:
        """Whether this thread is inside ``relying_on_last_read()`` with no refresh since
        (a look-up then needs no listing of its own)."""
        return bool(self._local.relying)

    @property
    def folder_absent(self) -> bool:
        """Whether the last read of the folder found no folder at all."""
        return self._reader is not None and self._reader.absent

    def drop_stale_ram(self) -> None:
        """Forget the values held in RAM whose entries other views deleted (or replaced)
        since they were kept, as read by the last refresh: for callers that promise what
        the folder holds now (a map call not served from memory). Otherwise RAM shadows
        them, as documented."""
        reader = self._reader
        if reader is None or not reader.removed_keys:
            return
        with reader.locked():
            removed, reader.removed_keys = reader.removed_keys, set()
        ram = self._ram
        for key in removed & ram.keys():
            self._forget_ram(key)

    def _forget_ram(self, key: str) -> None:
        if type(self._ram.pop(key, None)) is CachedError:  # (once, when threads race here)
            self._ram_errors -= 1

    def _entries(self) -> dict[str, Stored]:
        if self._reader is None:
            return {}
        if not self._read_once:
            self.refresh()
        return self._reader.entries

    def _entries_read(self) -> tuple[dict[str, Stored], bool]:
        """The entries, and whether this call read the folder (a view's first read: then a
        miss needs no second read)."""
        if self._reader is None:
            return {}, False
        if not self._read_once:
            self.refresh()
            return self._reader.entries, True
        return self._reader.entries, False

    def _refresh_on_miss(self) -> bool:
        """Refresh after a miss, unless a bulk check already refreshed (returns True if read)."""
        if self._reader is None:
            return False
        local = self._local
        if local.relying:  # (read just now: see relying_on_last_read)
            return False
        if local.frozen:
            if local.refreshed_while_frozen:
                return False
            local.refreshed_while_frozen = True
        self.refresh()
        return True

    @contextlib.contextmanager
    def frozen_cache_folder(self) -> tp.Iterator[None]:
        """Within this context, misses re-read the folder at most once (bulk checks), and
        not at all after an explicit ``refresh()`` in it."""
        local = self._local
        if not local.frozen:
            local.refreshed_while_frozen = False
        local.frozen += 1
        try:
            yield
        finally:
            local.frozen -= 1

    def __contains__(self, key: object) -> bool:
        if key in self._ram:
            return True
        entries, first_read = self._entries_read()
        if key in entries:
            return True
        if not isinstance(key, str) or first_read:
            return False
        return self._refresh_on_miss() and key in entries

    def missing(self, keys: tp.Iterable[str], distinct: bool = False) -> list[str]:
        """The keys (in order, deduplicated) that are not in the cache: one folder read.
        ``distinct``: the keys are each given once (not deduplicated again)."""
        entries, first_read = self._entries_read()
        # filter first, then deduplicate what is left (usually few keys)
        # (a folder's first items: nothing indexed, so nothing to filter out)
        kept = itertools.filterfalse(entries.__contains__, keys) if entries else keys
        out = list(kept) if distinct else list(dict.fromkeys(kept))
        if out and self._ram:
            out = list(itertools.filterfalse(self._ram.__contains__, out))
        if out and not first_read and self._refresh_on_miss():
            out = list(itertools.filterfalse(entries.__contains__, out))
        return out

    def ram_values(self, keys: tp.Sequence[str]) -> tuple[X, ...] | None:
        """The values of keys, in order, when every one is held in RAM and none of them is a
        cached error; else None. One C-level pass (the warm path of map calls)."""
        if not self.keep_in_ram or self._ram_errors or not keys:
            return None
        try:
            if len(keys) == 1:
                return (self._ram[keys[0]],)
            return tp.cast(tuple[X, ...], operator.itemgetter(*keys)(self._ram))
        except KeyError:
            return None

    def values_of(self, keys: tp.Sequence[str], where: str = "") -> tp.Iterator[X]:
        """Lazy values of keys, in order; a cached error raises (naming its key)."""
        values = self.ram_values(keys)
        if values is None and self._preload_arrays(keys):
            values = self.ram_values(keys)  # (memory-mapped views now: no data was read)
        if values is not None:
            return iter(values)  # (C-level: no per-key call or check)
        return self._iter_values(keys, where)

    def _iter_values(self, keys: tp.Sequence[str], where: str) -> tp.Iterator[X]:
        entries, _ = self._entries_read()
        ram, reader = self._ram, self._reader
        # (a value held in its index line is read here, without a __getitem__ call each:
        # the same outcome for a fraction of the cost, on maps of many small items; not
        # after a clear() meanwhile: these entries are then gone)
        inline, keep = not self.options.replace, self.keep_in_ram
        for key in keys:
            stored = entries.get(key) if inline and key not in ram else None
            info = record_of(stored) if isinstance(stored, tuple) else stored  # (see Packed)
            if info is not None and self._reader is not reader:
                info = None
            if info is not None and "v" in info and "p" not in info and _inline(info):
                copied: X = fresh_copy(info["v"])
                if keep:
                    ram[key] = copied
                yield copied
                continue
            value = self[key]
            if isinstance(value, CachedError) and key in self._ram:
                value = self._replaced_error(key, value)
            if isinstance(value, CachedError):
                error = value.to_exception(f"{where} item {key!r}" if where else repr(key))
                failed = self.error_keys(keys)
                if len(failed) > 1:  # (the others' errors were logged where they ran: a job)
                    shown = ", ".join(repr(k) for k in failed[:5])
                    more = ", ..." if len(failed) > 5 else ""
                    error.add_note(
                        f"exca: {len(failed)} of the {len(set(keys))} items asked for have "
                        f"cached errors ({shown}{more}); this is the first of them"
                    )
                raise error
            yield value

    def _replaced_error(self, key: str, error: X) -> X:
        """A cached error held in RAM whose entry was replaced on disk since (recomputed by
        another process with mode="retry"): the new value."""
        entry = record_at(self._entries(), key)
        if entry is None or entry["#type"] == "Error":
            return error
        self._forget_ram(key)
        return self[key]

    def _preload_arrays(self, keys: tp.Sequence[str]) -> bool:
        """Load many memory-mapped arrays at once into RAM (they are views: no data is
        read), when keep_in_ram holds them anyway. Whether it loaded them."""
        if not self.keep_in_ram or len(keys) < 16 or self._loader is None:
            return False
        entries = self._entries()
        ram = self._ram
        # (the first key to load tells at once a map of other values: no pass over all)
        first = next((entries[k] for k in keys if k not in ram and k in entries), None)
        if first is None or record_of(first)["#type"] != "MemmapArray":
            return False
        todo = [k for k in dict.fromkeys(keys) if k not in ram and k in entries]
        infos = records_of(list(map(entries.__getitem__, todo)))
        if not infos or self.options.replace:
            return False  # (nothing to load: numpy is not even needed)
        if not all(info["#type"] == "MemmapArray" for info in infos):
            return False
        try:
            with gcpause.paused():
                ram.update(zip(todo, load_memmap_runs(self._loader, infos)))
        except Exception:
            # (a data file freed since this view read the index, or damaged, a damaged
            # record: loaded one by one, lazily, where a map call's reader handles a
            # damaged payload, and a damaged record is named)
            return False
        return True

    def count_errors(self, keys: tp.Iterable[str]) -> int:
        """How many of these keys hold a cached error (read from the index, nothing loaded)."""
        return len(self.error_keys(keys))

    def error_keys(self, keys: tp.Iterable[str]) -> list[str]:
        """Which of these keys hold a cached error, in order (from the index, nothing loaded)."""
        entries = self._entries()
        out = []
        for key in dict.fromkeys(keys):
            entry = entries.get(key)
            if entry is not None:
                if record_of(entry)["#type"] == "Error":
                    out.append(key)
            elif type(self._ram.get(key)) is CachedError:
                out.append(key)
        return out

    def entry_type(self, key: str, refresh: bool = False) -> str | None:
        """The stored format name of an entry (``"Error"`` for cached errors), without loading.
        ``refresh``: read the folder first (then a miss does not read it a second time)."""
        if refresh:
            self.refresh()
        entries, first_read = self._entries_read()
        entry = record_at(entries, key)
        if entry is None and not (refresh or first_read) and self._refresh_on_miss():
            entry = record_at(entries, key)
        if entry is not None:
            return str(entry["#type"])
        if key in self._ram:
            return "Error" if isinstance(self._ram[key], CachedError) else "ram"
        return None

    def entries_info(self) -> dict[str, dict[str, tp.Any]]:
        """Every key's index record (``#type``, ``#meta``, format fields; ``#in``/``#at``:
        where its line is), without loading any value: what inspection tools read."""
        self.refresh()
        return {key: written_record(record) for key, record in self._entries().items()}

    def live_copies(self) -> list[dict[str, tp.Any]]:
        """The index record of every live entry, duplicates of a key included (two writers
        that raced on a key: a reader may return either): what cleaning must keep."""
        self.refresh()
        if self._reader is None:
            return []
        reader = self._reader
        return [
            written_record(copy) for key in list(self._entries()) for copy in reader.copies(key)
        ]

    def entry(self, key: str) -> Entry | None:
        """Where an entry is stored (index file, offset, its index record), or None."""
        entries, first_read = self._entries_read()
        if key not in entries and not first_read:
            self._refresh_on_miss()
        found = entries.get(key)
        return None if found is None else Entry.of(found)

    def records(self, keys: tp.Iterable[str]) -> tp.Iterator[Record | None]:
        """The index record of each key (None: not in the index when it was last read;
        the folder is read at most once), lazily: what a bulk look at many keys wants
        (as kept in memory: its ``#meta`` is read with ``index.meta_of``)."""
        entries, _ = self._entries_read()
        found = map(entries.get, keys)
        # (a reader of fewer entries than index.PACKED_FROM holds records only)
        if self._reader is None or not self._reader.packed:
            return tp.cast(tp.Iterator[Record | None], found)
        return (None if stored is None else record_of(stored) for stored in found)

    def known(self, key: str) -> bool:
        """Whether this instance saw ``key`` in the cache when it last read the folder (or
        wrote it since): no file is read (a RAM copy of a value is checked so)."""
        reader = self._reader
        return key in self._ram or (reader is not None and key in reader.entries)

    def payload_present(self, key: str) -> bool | None:
        """Whether ``key``'s payload files are all there and as long as written (a stat
        each, the value not loaded); None when its format does not tell, or for a key
        not in the cache (KeyError on reading it)."""
        if key in self._ram:
            return True
        found = self.entry(key)
        if found is None or self.folder is None:
            return None
        return presence.payload_present(self.folder, found.info)

    def damaged(self, keys: tp.Iterable[str]) -> list[str]:
        """Those of ``keys`` in the cache whose payload file was removed or cut short
        outside exca (a stat per distinct file; nothing loaded), in order."""
        if self.folder is None:
            return []
        entries = self._entries()
        infos = ((k, record_of(entries[k])) for k in dict.fromkeys(keys) if k in entries)
        return presence.damaged(self.folder, infos)

    def __getitem__(self, key: str) -> X:
        ram = self._ram
        if key in ram:
            return ram[key]
        entries, first_read = self._entries_read()
        entry = entries.get(key)  # (a record or packed: see index.Packed)
        if entry is None:
            if not first_read and self._refresh_on_miss():
                entry = entries.get(key)
            if entry is None:
                raise MissingKey(key)
        if type(entry) is not dict:  # (the check inline: one call fewer per read)
            entry = record_of(entry)
        try:
            info = entry
            if _inline(info) and not self.options.replace:
                value: X = load_inline(None, info)  # type: ignore[arg-type]  # (no file: no context)
            else:
                value = self._loader.load(info)  # type: ignore[union-attr]
        except FileNotFoundError as error:
            value = self._load_again(key, entry, error)
        except Exception as error:  # (name the key: the format's message may not)
            if isinstance(error, RECORD_ERRORS):
                self._raise_if_damaged_record(key, entry, error)
            _add_note(error, f"while reading {key!r} from {self.folder}")
            self._mark_if_damaged(key, entry, error)
            raise
        if self.keep_in_ram:
            ram[key] = value
            if type(value) is CachedError:
                self._ram_errors += 1
        return value

    def _load_again(self, key: str, entry: Record, error: FileNotFoundError) -> X:
        """A payload file is missing: deleted (and maybe written again) by another writer
        since this view read the index? Then the newer entry is read, as many times as it
        was replaced meanwhile (a bound: a key deleted and written in a loop reads as
        deleted, a KeyError, never as a missing file)."""
        for _ in range(LOAD_ATTEMPTS):
            self.refresh()
            current = record_at(self._entries(), key)
            if current is None:
                raise MissingKey(key) from None
            try:
                if place(current) == place(entry):  # the same entry: its payload is missing
                    raise error
                return self._loader.load(current)  # type: ignore[union-attr]
            except FileNotFoundError as again:
                if place(current) == place(entry):
                    _add_note(again, f"while reading {key!r} from {self.folder}")
                    self._mark_if_damaged(key, current, again)
                    raise
                entry, error = current, again  # (replaced again since: read the newer one)
            except Exception as failure:
                if isinstance(failure, RECORD_ERRORS):
                    self._raise_if_damaged_record(key, current, failure)
                _add_note(failure, f"while reading {key!r} from {self.folder}")
                self._mark_if_damaged(key, current, failure)
                raise
        raise MissingKey(key)

    def _mark_if_damaged(self, key: str, entry: Record, error: BaseException) -> None:
        """Mark a loading error that comes of a payload removed or cut short: a missing file
        of this folder, or a payload shorter than written (never by the error's message: a
        value's own unpickling code raises the same ones; a stream that no longer parses
        is marked by its format's loader). A payload this process may not read (another
        user's, mode 0o600) is intact: what to do is said (not to compute it again)."""
        if isinstance(error, PermissionError) and self._holds(error.filename):
            _add_note(error, UNREADABLE_NOTE)
            return
        mark_if_damaged(error, self.folder)
        if (
            self.folder is not None
            and type(error) in _CUT_SHORT_TYPES
            and not is_damaged_payload(error)
            and presence.damaged(self.folder, [(key, entry)])
        ):
            mark_damaged(error)

    def _holds(self, path: tp.Any) -> bool:
        """Whether a path is of this cache's folder (not a file a value's own code opened)."""
        if self.folder is None or not isinstance(path, str | os.PathLike):
            return False
        return os.path.abspath(path).startswith(os.path.join(os.path.abspath(self.folder), ""))

    def _raise_if_damaged_record(self, key: str, entry: Record, error: Exception) -> None:
        """Reading an entry failed: if its index line lacks fields, or holds fields of the
        wrong type (written by hand, by another tool...), raise a DamagedRecord saying so
        (the loader's own error, a TypeError of a format's internals, says nothing of it;
        a KeyError would read as a missing key)."""
        problem = record_problem(line_fields(entry))
        if problem is None and isinstance(error, DamagedRecord):
            problem = str(error)
        if problem is None:
            return
        where = f"{self.folder}/{entry[IN]}" if self.folder is not None else "memory"
        raise DamagedRecord(
            f"The index line of {key!r} in {where} is damaged: {problem} (the line: "
            f"{line_fields(written_record(entry))!r:.300}). Was it written by hand, or by another tool? Delete the key "
            f"(del cache[{key!r}], inside cache.write()) to write it again; in an infra's "
            "cache, mode='retry' or mode='force' computes it again"
        ) from error

    @tp.overload
    def get(self, key: str) -> X | None: ...
    @tp.overload
    def get(self, key: str, default: D) -> X | D: ...
    def get(self, key: str, default: tp.Any = None) -> tp.Any:
        try:
            return self[key]
        except (
            MissingKey
        ):  # (a KeyError raised loading its value, e.g. by its __setstate__, is raised)
            return default

    def keys(self) -> list[str]:
        """Every key, after reading what other writers added."""
        self.refresh()
        if self._reader is None:
            return list(self._ram)
        entries = self._reader.entries
        keys = list(entries)
        if self._ram and self._reader.removals:
            # RAM shadows entries deleted elsewhere, as `in` and reads do (a set
            # difference: C speed, and no Python code runs while RAM is iterated)
            keys.extend(self._ram.keys() - entries.keys())
        return keys

    def __iter__(self) -> tp.Iterator[str]:
        return iter(self.keys())

    def values(self) -> tp.Iterator[X]:
        for _, value in self.items():
            yield value

    def items(self) -> tp.Iterator[tuple[str, X]]:
        for key in self.keys():
            try:
                value = self[key]
            except MissingKey:  # deleted by another writer since the listing: skipped
                continue
            yield key, value

    def __len__(self) -> int:
        # counted as keys() lists, without building the list: a loop checking len() per
        # write or read was quadratic in the number of entries
        self.refresh()
        if self._reader is None:
            return len(self._ram)
        entries = self._reader.entries
        count = len(entries)
        if self._ram and self._reader.removals:
            count += len(self._ram.keys() - entries.keys())
        return count

    def __bool__(self) -> bool:
        if self._ram:
            return True
        self.refresh()
        return bool(self._reader is not None and self._reader.entries)

    # --- writing ------------------------------------------------------------------------------
    def is_writing(self) -> bool:
        """Whether this thread is inside a ``write()`` context of this instance."""
        return bool(self._local.writing)

    def view(self) -> CacheDict[X]:
        """Another instance on the same folder (own RAM; its writes go through the thread's
        writer session of the folder while no open write() context of another uses it)."""
        new = type(self).__new__(type(self))
        new.__setstate__(self.__getstate__())
        return new

    @contextlib.contextmanager
    def write(self) -> tp.Iterator[None]:
        """Context in which ``cd[key] = value`` is allowed (one per thread at a time)."""
        local = self._local
        # (a child forked inside the parent's context may write, as the parent could, and
        # may open its own context: that is no re-entry in the child)
        if local.writing and local.writing_generation == _FORK_GENERATION:
            raise RuntimeError("Already inside a write() context of this CacheDict in this thread")
        outer = local.writing, local.writing_generation  # (the parent's, in a forked child)
        session = local.session
        if session is not None and not (
            session[0].still_there() and session[1].shared_files_there()
        ):
            local.session = None  # cleared or removed since: a new session, a new name
            self._unshare(session[0])
        elif session is not None and session[0].holder and session[2] == _FORK_GENERATION:
            # (taken up since by another instance of the folder, whose write() context is
            # still open: an interleaved generator, a nested call; this one writes its own)
            local.session = None
        # (set right before the try: a Ctrl-C during the checks above left the thread
        # "inside a write() context" for good)
        context = [True]  # (this context's own: thread ids are reused by new threads)
        local.writing, local.writing_generation = context, _FORK_GENERATION
        ended = False  # (the block ran through: a removal of the folder is said then)
        try:
            if local.session is not None and local.session[2] == _FORK_GENERATION:
                local.session[0].holder = context
            yield
            ended = True
        finally:
            if local.writing is not context:
                # a generator holding the context, closed by another thread (g.close(), the
                # garbage collector): that thread's state is not this context's; the
                # opening thread's context ends (its session is kept for its next one)
                context.clear()
            else:
                local.writing, local.writing_generation = outer
                session = local.session
                removed = None  # (the folder, removed while the block wrote: its last
                # lines, since the writer's last check, went nowhere)
                if session is not None and session[2] == _FORK_GENERATION:  # (not the parent's)
                    writer = session[0]
                    with interrupts.deferred():  # (a Ctrl-C there left a session half closed)
                        if (
                            ended
                            and writer.fd is not None
                            and writer.removed_while_busy(_monotonic())
                        ):
                            removed = writer
                        else:
                            session[1].close_shared()
                            writer.close()
                context.clear()  # (its session may be taken up by another instance now)
                if removed is not None:
                    self._end_removed_session(removed)

    @contextlib.contextmanager
    def writer(self) -> tp.Iterator[CacheDict[X]]:
        """Deprecated: use ``with cd.write(): cd[key] = value``."""
        warnings.warn(
            "CacheDict.writer() is deprecated, use `with cache.write(): cache[key] = value`",
            DeprecationWarning,
            stacklevel=3,
        )
        with self.write():
            yield self

    def _session(self, restart: bool = False) -> tuple[IndexWriter, DumpContext]:
        local = self._local
        session = local.session
        if session is not None and session[2] == _FORK_GENERATION and session[3] != self._clears:
            # (its files were removed by a clear() of another thread: a new session)
            session[1].close_files()
            session[0].close()
            self._unshare(session[0])
            session = local.session = None
        if session is not None and session[2] == _FORK_GENERATION:
            writer = session[0]
            held = writer.holder
            if held and held is not local.writing:
                # (taken up since by another instance, inside its write() context: left
                # to it, this one writes its own)
                local.session = None
            else:
                # (a closed writer reopens its file by name: not once that file was removed,
                # e.g. merged away by a compaction, as offsets would start again at 0)
                there = writer.fd is not None or writer.still_there()
                if not restart and there and not writer.gone_while_idle():
                    return writer, session[1]
                # its index file was merged away by a compaction while it was idle: what it
                # appended there would be lost (a new session, a new name)
                session[1].close_shared()
                session[0].close()
                self._unshare(writer)
        # new thread state, or after a fork: the thread's session of the folder, else a new one
        assert self.folder is not None
        try:
            ensure_folder(self.folder, self.permissions, levels=0)  # (maybe the user's)
        except OSError as error:  # (a folder it may not make: said with what to do)
            note_write_error(error, self.folder)
            raise
        shared = self._shared_session()
        if shared is not None:
            writer, ctx = shared
        else:
            writer = IndexWriter(self.folder, self.permissions)
            ctx = DumpContext(
                self.folder,
                options=self.options,
                permissions=self.permissions,
                session_name=writer.session,
            )
            sessions = _SHARED.sessions
            sessions[self._share_key] = (writer, ctx, _FORK_GENERATION)
            sessions.move_to_end(self._share_key)
            if len(sessions) > _SHARED_KEPT:
                sessions.popitem(last=False)
        if local.writing:
            writer.holder = local.writing
        local.session = (writer, ctx, _FORK_GENERATION, self._clears)
        return writer, ctx

    def _end_removed_session(self, writer: IndexWriter, lost: int | None = None) -> tp.NoReturn:
        """After lines went nowhere, the index file of a session busy writing removed (a
        user's ``rm -rf`` of the folder): CacheFolderRemoved. Written again in a new
        session, the entries would be cached in a folder made anew where the user just
        removed everything (and the items a map's worker had written before, gone with
        it, were said "not computed", a failure to store them cached as theirs)."""
        local = self._local
        if local.session is not None and local.session[0] is writer:
            local.session[1].discard_files()  # (payloads of these entries: unnamed)
            local.session[1].close_files()
            writer.close()
            self._unshare(writer)
            local.session = None  # (a later write starts a new session, a new folder)
        with contextlib.suppress(OSError):
            self.refresh()  # (its entries, written into the removed files, are not listed)
        assert self.folder is not None
        written = "entries were" if lost is None else f"{lost} entry(ies) were"
        if self._holds_results:
            raise CacheFolderRemoved.at(self.folder, f"{written} written to it")
        raise CacheFolderRemoved.of_cachedict(self.folder, written)

    def _shared_session(self) -> tuple[IndexWriter, DumpContext] | None:
        """This thread's session of the folder, if no write() context uses it now and its
        files are still there (else a new one: names are never reused)."""
        sessions = _SHARED.sessions
        found = sessions.get(self._share_key)
        if found is None:
            return None
        writer, ctx, generation = found
        if writer.holder or writer.fd is not None:
            return None  # (in use: another instance's write() context, interleaved)
        if generation != _FORK_GENERATION or not (
            writer.still_there() and ctx.shared_files_there()
        ):
            del sessions[self._share_key]  # (the parent's, or removed since: a clean)
            return None
        sessions.move_to_end(self._share_key)
        writer.shared = True
        return writer, ctx

    def _unshare(self, writer: IndexWriter) -> None:
        """This thread's session of the folder is not to be taken up anymore (its files
        were removed, or merged away)."""
        sessions = _SHARED.sessions
        found = sessions.get(self._share_key)
        if found is not None and found[0] is writer:
            del sessions[self._share_key]

    def put(self, key: str, value: X, meta: dict[str, tp.Any] | None = None) -> None:
        """``cd[key] = value``, optionally recording JSON metadata in the entry's index line
        (readable without loading the value: ``cd.entry(key).info["#meta"]``)."""
        if type(key) is not str and not isinstance(key, str):
            raise TypeError(f"CacheDict keys must be str, got {key!r} ({type(key).__name__})")
        reader = self._reader
        if reader is None:  # RAM only: the same rules as with a folder
            if key in self._ram:
                raise _written_once(key, None)
            self._ram[key] = value
            self._ram_errors += type(value) is CachedError
            return
        local = self._local
        if not local.writing:
            raise RuntimeError(
                f"Writing {key!r} outside of a write context: use `with cache.write(): cache[key] = value`"
            )
        entries = reader.entries if self._read_once else self._entries()  # (a new view: read)
        if (key in entries or key in self._ram) and self._present(key):
            raise _written_once(key, self.folder)
        if type(value) is CachedError and self.keep_in_ram:
            self._ram_errors += 1
        session = local.session
        resumed = False  # (after a while without writing: its files may be freed meanwhile)
        started = _monotonic()
        if session is None or session[2] != _FORK_GENERATION or session[3] != self._clears:
            writer, ctx = self._session()
        else:
            writer, ctx = session[0], session[1]
            if writer.fd is None and writer.inode:  # (its first entry in this context)
                # its files freed since write() checked (reclaim.py): never made again
                # under their names, from offset 0
                resumed = True
                if not (writer.still_there() and ctx.shared_files_there()):
                    writer, ctx = self._session(restart=True)
            elif started >= writer.next_check:
                if writer.removed_while_busy(started):  # (its lines went nowhere since)
                    self._end_removed_session(writer)
                if started >= writer.idle_check:
                    resumed = True
                    if writer.gone_while_idle():
                        writer, ctx = self._session(restart=True)
        if not key.isascii() or meta is not None:
            _check_key_and_meta(key, meta)  # (before any payload is written)
        # payload first (complete when dump_entry returns), then its index line
        cache_type = self.cache_type
        fast = ctx.fast_entry.get(type(value)) if cache_type is None else None
        try:
            # (the arrays' fast path called here: None when it does not apply)
            info = None if fast is None else fast[1](ctx, key, fast[0], value)
            if info is None:
                fast = None
                info = ctx.dump_entry(key, value, cache_type)
        except Exception as error:  # (name the key: the format's message may not)
            _add_note(error, f"while storing {key!r} in {self.folder}")
            note_write_error(error, self.folder)
            raise
        stored = None
        if meta is not None:  # (bytes in memory, see index.META: written as they are)
            stored = stored_meta(meta)
            info[META] = orjson.Fragment(stored) if type(stored) is bytes else stored
        try:
            line = orjson.dumps(info, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError as error:  # (orjson.JSONEncodeError: from the format's fields)
            self._not_json(ctx, error, info)
            raise
        if writer.fd is None:
            try:
                writer.open()  # (its inode names the file for the reader's state below)
            except SessionFilesGone:  # freed while the payload was written: anew
                ctx.discard_files()  # (no line names them)
                self._put_anew(key, value, meta)
                return
            except OSError as error:  # (a folder this process may not write to)
                _add_note(error, f"while storing {key!r} in {self.folder}")
                note_write_error(error, self.folder)
                raise
        state = writer.read_state
        if state is None or writer.read_owner is not reader:
            state = _own_state(writer, reader)
        if fast is not None and stored is None:
            pass  # (an array's record: no inline value, no metadata)
        elif "v" in info and type(info["v"]) is orjson.Fragment:  # pre-serialized inline value
            info = _reloaded(line, stored)
        elif type(stored) is bytes:
            info[META] = stored
        # (a long dump: the file may have become idle for long enough to be freed meanwhile)
        resumed = resumed or _monotonic() - started > _HALF_IDLE
        # append and record under the reader's lock: a refresh by another thread in between
        # would read this line too, then move the file's offset past its end
        lock = reader._lock if reader._lock_fork == _FORKS[0] else reader.locked()
        lock.acquire()  # (not `with`: twice as costly on this path)
        try:
            fd, before = writer.fd, writer.size
            if writer.torn or resumed or fd is None:
                offset = writer.append(line)
            else:  # (IndexWriter.append inlined: the hot path of every write)
                offset, size = before, len(line)
                try:
                    written = os.write(fd, line)
                    if written != size:
                        writer.finish_short_write(line, written)
                except BaseException:
                    writer.failed_append()
                    raise
                writer.size = offset + size
            if resumed and writer.unlinked():
                # freed while the payload was written (the file was idle for long): the
                # line went nowhere; this entry and the next ones go to a new session
                retry = True
            else:
                retry = False
                if state.offset == before or not writer.shared:
                    state.offset = writer.size
                info[IN], info[AT] = writer.name, offset
                entry = info
                if key in entries:  # written meanwhile by another thread: both copies known
                    reader._shadow(key, entry)
                entries[key] = entry
                state.keys.add(key)
        except OSError as error:  # (its index line: a bare "No space left on device")
            _add_note(error, f"while storing {key!r} in {self.folder}")
            note_write_error(error, self.folder)
            raise
        finally:
            lock.release()
        if retry:
            self._put_anew(key, value, meta)
            return
        if self.keep_in_ram:
            kept = _ram_copy(value, False, cache_type)
            if kept is not _NOT_KEPT:
                self._ram[key] = kept

    __setitem__ = put  # (no extra call on the hot path of `cd[key] = value`)

    def _put_anew(self, key: str, value: X, meta: dict[str, tp.Any] | None) -> None:
        """Write an entry again, in a new session: the current one's files were freed
        (reclaim.py) while its payload was written."""
        if type(value) is CachedError and self.keep_in_ram:
            self._ram_errors -= 1  # (counted again)
        self._session(restart=True)
        self.put(key, value, meta)

    def _present(self, key: str) -> bool:
        """Whether a key this view lists is still in the cache: its index is re-read first
        (another view may have deleted the key since), so that a stale view decides as a
        fresh one would; a value it holds in RAM of a key deleted elsewhere is dropped
        (written anew). (Only on the rare path where a key to write is found.)"""
        self.refresh()
        if key in self._entries():
            return True
        if key in self._ram:
            self._forget_ram(key)
        return False

    def _not_json(self, ctx: DumpContext, error: Exception, info: dict[str, tp.Any]) -> None:
        """An index record that orjson refuses (a format returned a Path, a numpy number,
        a structure too deep...): name the entry and remove what was written for it."""
        ctx.discard_files()
        _add_note(
            error,
            f"while storing {info.get('#key')!r} in {self.folder}: the format "
            f"{info.get('#type')!r} returned fields that are not JSON (str, numbers, lists, "
            f"dicts): {info!r:.300}",
        )

    def set_many(
        self,
        pairs: tp.Iterable[tuple[str, X]],
        meta: dict[str, tp.Any] | None = None,
        skip_existing: bool = False,
        owned: bool = False,
    ) -> None:
        """Write many entries at once (inside ``write()``): their payloads, then all their
        index lines in one append. A crash leaves none or a prefix of them, never a wrong one.
        ``owned``: nothing else references the values (RAM may keep them without a copy)."""
        try:
            with gcpause.paused():
                self._set_many(pairs, meta, skip_existing, owned)
        except OSError as error:  # (its payloads' or index lines' write: what to do)
            note_write_error(error, self.folder)
            raise

    def _set_many(
        self,
        pairs: tp.Iterable[tuple[str, X]],
        meta: dict[str, tp.Any] | None,
        skip_existing: bool,
        owned: bool = False,
    ) -> None:
        reader = self._reader
        if reader is None:
            self._set_many_in_ram(pairs, skip_existing)
            return
        local = self._local
        if not local.writing:
            raise RuntimeError("set_many must be called inside `with cache.write():`")
        session = local.session
        resumed = session is not None and (  # (as in put: its files may be freed meanwhile)
            (session[0].fd is None and bool(session[0].inode))
            or _monotonic() >= session[0].idle_check
        )
        writer, ctx = self._session()
        entries = reader.entries if self._read_once else self._entries()  # (a new view: read)
        records: list[dict[str, tp.Any]] = []
        lines: list[bytes] = []
        batch: dict[str, X] = {}  # (in order: the values to write)
        errors = 0  # cached errors among the values (counted for RAM reads)
        stale = True  # (the index is re-read at most once: then it is up to date)
        ram = self._ram
        if meta is not None:
            _check_key_and_meta("", meta)  # (before any payload is written)
        ctx.start_batch()
        try:
            given = pairs if type(pairs) is list else list(pairs)
            batch, joined = _new_batch(given, entries, ram)
            if joined is not None:  # (else some key is not new, or no str: one by one)
                given = []
                errors = list(map(type, batch.values())).count(CachedError)
            for key, value in given:
                if type(key) is not str and not isinstance(key, str):
                    raise TypeError(f"CacheDict keys must be str, got {key!r}")
                if key in entries or key in ram or key in batch:
                    if key in batch:
                        present = True
                    elif stale:
                        stale = False
                        present = self._present(key)
                    else:  # (the index was read just now, by _present)
                        present = key in entries
                        if not present:
                            self._forget_ram(key)  # (a value of a key deleted elsewhere)
                    if present:
                        if skip_existing:
                            continue  # written meanwhile (e.g. by a re-entrant call)
                        raise _written_once(key, self.folder)
                batch[key] = value
                if type(value) is CachedError:
                    errors += 1
            if joined is None:
                joined = "".join(batch)
            if not joined.isascii():  # (one C-level pass for the batch's keys)
                for key in batch:
                    _check_key_and_meta(key, None)
            values = list(batch.items())
            records = ctx.dump_entries(values, self.cache_type)
            stored = None
            if meta is not None:  # (bytes in memory, see index.META: written as they are)
                stored = stored_meta(meta)
                written = orjson.Fragment(stored) if type(stored) is bytes else stored
                for info in records:
                    info[META] = written
            dumps, newline = orjson.dumps, orjson.OPT_APPEND_NEWLINE
            try:
                lines = [dumps(info, option=newline) for info in records]
            except TypeError as error:  # (orjson.JSONEncodeError: from a format's fields)
                bad = next(r for r in records if _not_json_record(r))
                self._not_json(ctx, error, bad)
                raise
        except BaseException:
            ctx.discard_files()  # (per-entry files of the batch: no index line names them)
            raise
        finally:
            ctx.flush_batch()  # payloads are on disk before any of their index lines
        if not lines:
            return
        if writer.fd is None:
            try:
                writer.open()  # (its inode names the file for the reader's state below)
            except SessionFilesGone:  # freed while the payloads were written: anew
                ctx.discard_files()  # (no line names them)
                self._session(restart=True)
                self._set_many(values, meta, skip_existing, owned)
                return
        state = writer.read_state
        if state is None or writer.read_owner is not reader:
            state = _own_state(writer, reader)
        name, fragment, keys = writer.name, orjson.Fragment, state.keys
        # (loop invariants as locals: the loop below runs once per entry)
        meta_bytes, in_, at, length = type(stored) is bytes, IN, AT, len
        with reader.locked():  # (see put)
            before = writer.size
            offset = writer.append(b"".join(lines))
            # (one fstat per batch: also a folder removed under a busy writer)
            freed = writer.unlinked()
            for info, line in () if freed else zip(records, lines):
                if "v" in info and type(info["v"]) is fragment:  # pre-serialized inline value
                    info = _reloaded(line, stored)
                elif meta_bytes:  # (one object for the batch)
                    info[META] = stored
                key = info["#key"]
                info[in_] = name
                info[at] = offset
                if key in entries:  # written meanwhile by another thread: both copies known
                    reader._shadow(key, info)
                entries[key] = info
                offset += length(line)
            if not freed:
                keys.update(batch)  # (the keys of the records)
                _skip_own_lines(state, writer, before)
        if freed:  # (see put: the lines went nowhere)
            if not resumed:  # (written to within the minute: no reclaim's doing)
                self._end_removed_session(writer, len(lines))
            self._session(restart=True)
            self._set_many(values, meta, skip_existing, owned)
            return
        if self.keep_in_ram:
            self._ram_errors += errors
            ram, cache_type = self._ram, self.cache_type
            # (_ram_copy inlined for the common case: small arrays the caller gave away)
            ndarray = _NDARRAY[0] if owned and cache_type in (None, "MemmapArray") else None
            kept: tp.Any
            most = RAM_ARRAY_BYTES
            for key, kept in values:
                if type(kept) is ndarray and kept.nbytes <= most:
                    kept.setflags(False)  # (write=False, positional: 3x cheaper)
                    ram[key] = kept
                    continue
                kept = _ram_copy(kept, owned, cache_type)
                if kept is not _NOT_KEPT:
                    ram[key] = kept

    def _set_many_in_ram(self, pairs: tp.Iterable[tuple[str, X]], skip_existing: bool) -> None:
        """set_many without a folder: the same rules (str keys, no overwrite), all or nothing."""
        ram = self._ram
        batch: dict[str, X] = {}
        for key, value in pairs:
            if type(key) is not str and not isinstance(key, str):
                raise TypeError(f"CacheDict keys must be str, got {key!r}")
            if key in ram or key in batch:
                if skip_existing:
                    continue
                raise _written_once(key, None)
            batch[key] = value
        self._ram_errors += sum(type(v) is CachedError for v in batch.values())
        ram.update(batch)

    def __delitem__(self, key: str) -> None:
        if self.folder is not None:
            self.refresh()  # where the key's lines are now (e.g. moved by `clean compact`)
        self._delete(key)
        self._free_after_deleting()

    def delete_many(self, keys: tp.Iterable[str]) -> None:
        """Delete the keys that are in the cache (one index reread for all of them)."""
        if self.folder is not None:
            self.refresh()
        entries, ram = self._entries(), self._ram
        for key in keys:
            if key in entries or key in ram:
                self._delete(key)
        self._free_after_deleting()

    def copy_places(self, keys: tp.Iterable[str]) -> dict[str, list[tuple[str, int]]]:
        """Where the live copies of these keys are now, ``(index file, offset)`` each (keys
        absent left out): what ``delete_at`` takes, read once for the check and the
        deletion (a copy written after this read is not among them)."""
        wanted = set(keys)
        places: dict[str, list[tuple[str, int]]] = {}
        for copy in self.live_copies():
            if copy["#key"] in wanted:
                places.setdefault(copy["#key"], []).append((copy[IN], copy[AT]))
        return places

    def delete_at(self, entries: tp.Mapping[str, tp.Iterable[tuple[str, int]]]) -> list[str]:
        """Delete copies of keys where they were read (key -> the places of its copies,
        ``(entry.file, entry.offset)``, or ``#in``/``#at`` of ``live_copies()``): a copy of
        a key written since (computed again) is not deleted. Returns the keys of which a
        copy was deleted (those gone or rewritten since are skipped)."""
        if self.folder is None:
            raise ValueError("delete_at: a CacheDict without a folder has no entry places")
        self.refresh()
        deleted = [
            key
            for key, where in entries.items()
            if self._delete(key, frozenset((file, at) for file, at in where))
        ]
        self._free_after_deleting()
        return deleted

    def _free_after_deleting(self) -> None:
        """A deleter frees the files of ended writers its deletions emptied (reclaim.py)."""
        if self._reader is not None and (self._reader.emptied or self._reader.awaiting_deleter):
            self._free_lifeless_files(deleter=True)

    def _delete(self, key: str, only: frozenset[tuple[str, int]] | None = None) -> bool:
        """Delete a key (``only``: its copies at these places, if still there; False if
        none is)."""
        if only is not None:
            assert self._reader is not None
            copies = [
                Entry.of(c) for c in self._reader.copies(key) if not only.isdisjoint(places(c))
            ]
            if not copies:
                return False
            self._ram.pop(key, None)
            self._tombstone(key, copies)
            return True
        in_ram = key in self._ram
        self._ram.pop(key, None)
        if self.folder is None:
            if not in_ram:
                raise KeyError(key)
            return True
        entry = self.entry(key)
        if entry is None:
            if in_ram:
                return True
            raise KeyError(key)
        assert self._reader is not None
        # every copy this reader knows of (duplicates written by concurrent writers)
        copies = [Entry.of(c) for c in self._reader.copies(key)] or [entry]
        self._tombstone(key, copies)
        return True

    def _tombstone(self, key: str, copies: list[Entry]) -> None:
        """Write the deletion of these copies of a key, then remove their payloads."""
        try:
            self._write_tombstone(key, copies)
        except OSError as error:  # (a full disk: the bare errno said nothing of the entry)
            if error.errno in NO_SPACE:
                error.add_note(
                    f"no space left for {self.folder} (a full disk, a quota or a file size "
                    f"limit): the deletion of {key!r} was not written, the entry is still "
                    "there as it was; free space there, then try again"
                )
            else:
                note_write_error(error, self.folder)
            raise

    def _write_tombstone(self, key: str, copies: list[Entry]) -> None:
        writer, ctx = self._session()
        assert self._reader is not None
        lines = b"".join(
            orjson.dumps({"#del": key, "#of": f"{c.file}:{c.offset}"}) + b"\n" for c in copies
        )
        if writer.fd is None:
            try:
                writer.open()
            except SessionFilesGone:  # (freed just now: see put)
                self._session(restart=True)
                self._write_tombstone(key, copies)
                return
        state = _own_state(writer, self._reader)
        # (as a reader of this file would note: a file whose tombstones aim elsewhere is
        # kept while they may apply, e.g. in a child forked after this process ended)
        state.aim_at(c.file for c in copies)
        try:
            with self._reader.locked():  # (see put)
                before = writer.size
                writer.append(lines)
                _skip_own_lines(state, writer, before)
                for copy in copies:
                    self._reader.apply_tombstone(key, copy.id)
        finally:
            if not self._local.writing:
                writer.close()
        for copy in copies:
            try:
                ctx.delete(copy.info)  # payload files owned by this entry only
            except OSError as e:
                logger.warning("Could not remove the payload of %r in %s: %s", key, self.folder, e)

    def clear(self) -> None:
        """Remove every entry (index files first, then payloads); the folder is kept."""
        self._ram.clear()
        self._ram_errors = 0
        if self.folder is None or not self.folder.exists():
            return
        own = self._retire_every_entry()
        names = [
            e.name
            for e in os.scandir(self.folder)
            if e.name.endswith(INDEX_SUFFIX) and e.is_file()  # (not a stray folder)
        ]
        for name in sorted(names, key=lambda n: n == own):  # (the deleting file last)
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.folder / name)
        shutil.rmtree(self.folder / DATA_DIR, ignore_errors=True)
        self._clears += 1  # (other threads' sessions wrote into removed files: see _session)
        session, self._local.session = self._local.session, None
        _SHARED.sessions.pop(self._share_key, None)  # (its files were removed above)
        if session is not None and session[2] == _FORK_GENERATION:
            # (inside write(): its files, removed above, would stay open until the process ends)
            session[1].close_files()
            session[0].close()
        unshare(self.folder)  # (new readers must not start from what the removed files held)
        self._reader = self._new_reader()
        self._loader_context = None
        self._read_once = False

    def _retire_every_entry(self) -> str | None:
        """Before ``clear`` removes the index files (one by one: a kill may come between
        two), delete every entry line of the folder, live or not, from this view's own
        index: whatever file is gone first, none of its deletions brings an entry back.
        Returns the name of that index file (None: the folder held no entry)."""
        assert self.folder is not None
        lines = []
        for name, data in index_files_bytes(self.folder):
            offset = 0
            for line in data.split(b"\n")[:-1]:  # (complete lines only)
                try:
                    record = orjson.loads(line) if b'"#key"' in line else None
                except orjson.JSONDecodeError:
                    record = None
                if isinstance(record, dict) and isinstance(record.get("#key"), str):
                    of = f"{name}:{offset}"
                    lines.append(orjson.dumps({"#del": record["#key"], "#of": of}) + b"\n")
                offset += len(line) + 1
        if not lines:
            return None
        writer, _ = self._session()
        if writer.fd is None:
            try:
                writer.open()
            except SessionFilesGone:  # (freed just now: see put)
                writer, _ = self._session(restart=True)
                writer.open()
        try:
            writer.append(b"".join(lines))
        finally:
            if not self._local.writing:
                writer.close()
        return writer.name


CacheDictWriter = CacheDict  # legacy name


# set inside dry runs (plans, explanations): reads there free nothing (see keeping_files)
_KEEPING_FILES: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "exca_keeping_files", default=False
)


@contextlib.contextmanager
def keeping_files() -> tp.Iterator[None]:
    """Reads of any cache in this block (this thread) free no file of an ended writer: a
    dry run only reads. What they would have freed is freed by the next read outside."""
    token = _KEEPING_FILES.set(True)
    try:
        yield
    finally:
        _KEEPING_FILES.reset(token)


def inspecting_view(folder: Path | str) -> CacheDict[tp.Any]:
    """A view of a cache folder for inspection tools (listings, previews, explanations):
    its reads free nothing (reclaim.py), whatever they meet."""
    return CacheDict(folder, permissions=None, frees_files=False)
