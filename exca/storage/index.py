"""The index of a cache folder: one append-only JSON-lines file per writer session.

Each line is ``{"#key": key, "#type": format, ...}`` (an entry) or
``{"#del": key, "#of": "<file>:<offset>"}`` (a tombstone naming the exact entry it
deletes, so the order in which files are read does not matter). A writer appends a line
only after its payload is fully written, so a visible line always reads back right.
Readers keep a byte offset per file and read only what was appended since; a last line
without its newline is left for later; a line that does not parse is skipped with a
warning. New files are found by listing the folder, never by trusting its mtime.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import errno
import functools
import itertools
import logging
import math
import operator
import os
import re
import stat
import sys
import threading
import time
import typing as tp
import warnings
import weakref
from pathlib import Path

import orjson

from . import gcpause, process, saidonce
from .files import chmod, finish_write, note_read_error

INDEX_SUFFIX = "-info.jsonl"
logger = logging.getLogger("exca")

EntryId = tuple[str, int]  # (index file name, byte offset of the line)
# Where an entry's line is, kept in its record in memory only (never written): records of
# strings and numbers are then objects Python's garbage collector does not track. A
# (file, offset, record) tuple would be tracked for good (CPython never untracks a tuple
# holding a dict): a map of 10k items added 10k objects that every full collection walks,
# and a collection came at every call or two.
IN, AT = "#in", "#at"
Record = dict[str, tp.Any]  # an entry's record: its line's fields, plus IN and AT
# An entry as a reader keeps it (IndexReader.entries): a Record, or for the lines of a
# parse chunk that share their other fields (a writer's batch), a Packed tuple
# ``(key, the values of the fields that differ between lines..., offset, template)``; the
# template, shared by the chunk, is ``(index file name, the names of those values: "#key"
# first, AT last, every field of the line in its order: (name, shared value or None)
# pairs, then IN and AT)``. A record cost ~270 bytes, plus its own copy of the offsets;
# a tuple of numbers and strings ~70, and the collector untracks it (no dict inside:
# CPython keeps a tuple holding any dict tracked). ``record_of`` makes the Record.
Packed = tuple[tp.Any, ...]
Stored = Record | Packed
# a writer idle for longer checks that its index file is still there before appending
# (compaction and the freeing of lifeless files take files idle for twice as long; the
# check costs one fstat)
IDLE_CHECK_SECONDS = 60.0
# a writer busy writing checks this often that its index file was not removed under it
# (an `rm -rf` of the folder: its appends went to an unlinked file, silently lost); one
# fstat, in a branch the hot path of `cd[k] = v` already takes once the time is up
BUSY_CHECK_SECONDS = 0.1
# compaction moves entries into a new index file; each moved line keeps where it was
# ("file:offset" strings): a deletion written meanwhile, aimed at the old place, still
# finds the entry
FORMER_PLACES = "#was"
FORMER_PLACES_BYTES = b'"#was"'
META_BYTES = b'"#meta"'
# index lines parsed at a time (~2k lines): the memory a parse holds meanwhile stays the
# process's (freed blocks among the entries kept); 4 MB left ~300 bytes per entry read
PARSE_BYTES = 256 << 10
# index bytes from which a read pauses the cyclic collector (gcpause): ~100 entries and
# more; fewer make no burst of allocations worth a pause (whose first use costs ~12 µs of
# a process's first cache hit)
PAUSE_BYTES = 64 << 10
# entries a reader holds from which it keeps those of the chunks it parses packed (see
# Packed: ~190 bytes fewer each, but each read of one makes its record anew, ~5k
# instructions): the index of a map of millions of items fits small machines, and reads
# of a smaller cache (a record ~470 bytes: 10 MB at this count) are not slowed
PACKED_FROM = 20_000


# An entry's metadata (``put(..., meta=...)``: the code that computed a result of
# ``__main__``, when, from which upstream entries). In memory, a dict or list there is
# kept as its JSON bytes (one object for a run of entries sharing it): a record holding a
# dict would be tracked by the collector, and a map of a million items of a method of
# ``__main__`` (a code digest per item) added a million objects to every collection (1.9 s
# of 11 s). ``meta_of`` reads it; ``line_fields`` and ``Entry.of`` give it back as written.
META = "#meta"


def meta_of(record: Record) -> tp.Any:
    """The metadata of an entry (None: none), as it was written."""
    meta = record.get(META)
    return _parsed_meta(meta) if type(meta) is bytes else meta


@functools.lru_cache(maxsize=256)
def _parsed_meta(data: bytes) -> tp.Any:
    # (one object for equal metadata, as the records of a writer's batch share theirs)
    return orjson.loads(data)


def stored_meta(meta: tp.Any) -> tp.Any:
    """What a record keeps in memory of an entry's metadata: its JSON bytes for a dict or
    a list (see META), else itself."""
    return orjson.dumps(meta) if isinstance(meta, dict | list) else meta


def written_record(stored: Stored) -> Record:
    """A record as its line has it (its metadata as written), for whoever reads it."""
    record = record_of(stored)
    meta = record.get(META)
    if type(meta) is not bytes:
        return record
    out = dict(record)
    out[META] = _parsed_meta(meta)
    return out


def _store_metas(records: list[Record]) -> None:
    """Parsed records (in place): those with dict or list metadata made anew with its
    bytes (see META; one object for a run of equal ones): a dict made holding a dict
    stays tracked by the collector, one made of strings and numbers is not."""
    stored: tp.Any = None
    for index, record in enumerate(records):
        meta = record.get(META)
        if meta is None or not isinstance(meta, dict | list):
            continue
        # (equal bytes, not equal values: {"n": 1} == {"n": True} == {"n": 1.0})
        data = orjson.dumps(meta)
        if data != stored:
            stored = data
        record[META] = stored
        records[index] = dict(zip(record, record.values()))


def record_of(stored: Stored) -> Record:
    """The record of a stored entry (a new dict for a packed one: see Packed)."""
    if isinstance(stored, dict):
        return stored
    template = stored[-1]
    base = _BASES.get(id(template))
    if base is None or base[0] is not template:
        base = _base_of(template)
    out = base[1].copy()  # (a dict's copy is a copy of its table: ~10x cheaper than a build)
    out.update(zip(template[1], stored))  # (the template at the end is left out)
    return out


# the template of Packed entries -> a dict of its fields (by id: hashing a template walks
# it); bounded (a template dropped meanwhile, its id reused, is told by the identity)
_BASES: dict[int, tuple[tuple[tp.Any, ...], Record]] = {}


def _base_of(template: tuple[tp.Any, ...]) -> tuple[tuple[tp.Any, ...], Record]:
    if len(_BASES) >= 4096:
        _BASES.clear()
    base = _BASES[id(template)] = (template, dict(template[2]))
    return base


def records_of(stored: list[Stored]) -> list[Record]:
    """The records of many stored entries (in C when they share one template: a map's
    items, each a Python call of record_of otherwise)."""
    kinds = set(map(type, stored))
    if kinds == {dict}:
        return tp.cast(list[Record], stored)
    if kinds == {tuple}:
        templates = list(map(operator.itemgetter(-1), stored))
        if len(set(map(id, templates))) == 1:
            template = templates[0]
            base = _BASES.get(id(template))
            if base is None or base[0] is not template:
                base = _base_of(template)
            out = list(map(dict.copy, itertools.repeat(base[1], len(stored))))
            _consume(map(dict.update, out, map(zip, itertools.repeat(template[1]), stored)))
            return out
    return list(map(record_of, stored))


def record_at(entries: dict[str, Stored], key: str) -> Record | None:
    """The record of a key in a reader's entries (None: absent)."""
    stored = entries.get(key)
    return stored if stored is None or isinstance(stored, dict) else record_of(stored)


def file_of(stored: Stored) -> str:
    """The index file that holds an entry's line."""
    return str(stored[IN] if isinstance(stored, dict) else stored[-1][0])


def place(record: Stored) -> EntryId:
    """Where an entry's line is."""
    if isinstance(record, dict):
        return (record[IN], record[AT])
    return (record[-1][0], record[-2])


def line_fields(record: Stored) -> dict[str, tp.Any]:
    """What an entry's line holds (its record without where it is), for orjson.dumps."""
    out = {k: v for k, v in record_of(record).items() if k != IN and k != AT}
    if type(out.get(META)) is bytes:  # (written again as it was: see META)
        out[META] = orjson.Fragment(out[META])
    return out


def places(entry: Stored) -> list[EntryId]:
    """Where an entry is, then where it was before compactions (tombstones name either)."""
    here = place(entry)
    if not isinstance(entry, dict):  # (lines a compaction moved are not packed)
        return [here]
    former = entry.get(FORMER_PLACES)
    if not former:
        return [here]
    out = [here]
    for where in former:
        file, _, offset = str(where).rpartition(":")
        if offset.isdigit():
            out.append((file, int(offset)))
    return out


class Entry(tp.NamedTuple):
    """Where an entry's line is, and what it says (``#key``, ``#type``, the format's fields).

    Stored internally as its record alone (see ``IN``), made into this on request.
    """

    file: str
    offset: int
    info: dict[str, tp.Any]

    @property
    def id(self) -> EntryId:
        return (self.file, self.offset)

    @classmethod
    def of(cls, stored: Stored) -> Entry:
        record = record_of(stored)
        return cls(record[IN], record[AT], written_record(record))


class FileState:
    """What a reader has consumed of one index file."""

    # (a plain class: a dataclass costs ~1 ms of `import exca`)
    __slots__ = ("aims", "ended_check", "final", "inode", "keys", "offset")

    def __init__(self, inode: int, offset: int, keys: set[str]) -> None:
        self.inode = inode
        self.offset = offset  # bytes of complete lines consumed
        self.keys = keys
        self.aims: set[str] | None = None  # the files its tombstones delete from
        # read to its end after its writer's process ended (on this host): it cannot
        # grow anymore, and names are never reused, so it needs no stat at each refresh
        # (a folder of many writers' files: 200 files cost ~0.7 ms per refresh)
        self.final = False
        self.ended_check = 0.0  # (monotonic time of the last check of its writer)

    def copy(self) -> FileState:
        """An independent copy, as a new reader that read the file up to there would hold
        it (``final`` dropped: a new reader stats every file once, whatever the one it
        copies knew; its writer not checked yet)."""
        out = FileState(self.inode, self.offset, set(self.keys))
        out.aims = None if self.aims is None else set(self.aims)
        return out

    def aim_at(self, files: tp.Iterable[str]) -> None:
        """Note files this one's tombstones delete from."""
        if self.aims is None:
            self.aims = set()
        self.aims.update(files)


_KEY = operator.itemgetter("#key")
_PLUS_NEWLINE = (1).__add__
# (runs an iterator in C and keeps nothing)
_consume: tp.Callable[[tp.Iterable[tp.Any]], None] = collections.deque(maxlen=0).extend
_SHAPES: dict[tuple[int, ...], tuple[int, ...]] = {}  # (one object per shape read)


def _common_fields(records: list[Record], name: str, chunk: bytes | None = None) -> Record:
    """The fields every record of a parsed chunk holds with one value (a format's name,
    its data file's name, a dtype; an array's shape), as one object each, plus IN: what
    each record is updated with. orjson makes a new object per value, and a record held
    ~270 bytes of copies of these (a map of a million arrays: ~0.27 GB to know what is
    cached). Lines of one writer's batch share these. ``chunk``: the bytes of the records'
    lines, one each, where a run of such fields is searched for as written (in C, a few
    hundred instructions per line, about a third of looking into each record).
    """
    first = records[0]
    array = first.get("#type") == "MemmapArray"
    candidates = [
        (field, value)
        for field, value in first.items()
        if (type(value) is str and field != "#key") or (array and field == "s")
    ]
    # (no escape, no nested object (metadata, a dict value stored inline): a run found in
    # a line is then that line's own fields, not a value's that looks like them)
    if chunk is not None and (
        b"\\" in chunk or META_BYTES in chunk or chunk.count(b"{") != len(records)
    ):
        chunk = None
    held: Record = {}
    if chunk is None:
        held.update((f, v) for f, v in candidates if _held_by_all(records, f))
    else:
        for run in _runs(first, dict(candidates)):
            if len(run) > 1 and not _in_every_line(chunk, run, len(records)):
                run = {f: v for f, v in run.items() if _in_every_line(chunk, {f: v}, len(records))}
            elif len(run) == 1 and not _in_every_line(chunk, run, len(records)):
                continue
            held.update(run)
    out: Record = {f: sys.intern(v) if type(v) is str else v for f, v in held.items()}
    if type(out.get("s")) is list:
        out["s"] = _shared_shape(out["s"])
    out[IN] = name
    return out


def _runs(first: Record, candidates: Record) -> list[Record]:
    """The runs of adjacent candidate fields of a record, in its order."""
    runs: list[Record] = [{}]
    for field, value in first.items():
        if field in candidates:
            runs[-1][field] = value
        elif runs[-1]:
            runs.append({})
    return [run for run in runs if run]


def _in_every_line(chunk: bytes, fields: Record, count: int) -> bool:
    return chunk.count(orjson.dumps(fields)[1:-1]) == count


def _held_by_all(records: list[Record], field: str) -> bool:
    """Whether every record holds the first one's value of a field, of the same types."""
    value = records[0][field]
    try:
        values = list(map(operator.itemgetter(field), records))
    except (KeyError, TypeError):
        return False
    if values.count(value) != len(records):
        return False
    # (a list of exactly ints: [1] == [1.0] == [True], but a line saying 1.0 is damaged)
    return type(value) is str or {int}.issuperset(map(type, itertools.chain.from_iterable(values)))


def _shared_shape(value: list[tp.Any]) -> tuple[tp.Any, ...]:
    """An array shape as one tuple per shape (as a writer's records hold it; exca's own
    format reads either), which the collector does not walk."""
    shape = tuple(value)
    shared = _SHAPES.get(shape)
    if shared is None:
        if len(_SHAPES) >= 1024:  # (bounded: a long process reading many shapes)
            _SHAPES.clear()
        shared = _SHAPES[shape] = shape
    return shared


def _packed(
    name: str, records: list[Record], lines: list[bytes], joined: bytes, offset: int
) -> list[Packed] | None:
    """The packed entries (see Packed) of a chunk's parsed entry lines that hold the same
    fields, sharing all but their key and a few others (a writer's batch), or None (then
    kept as records)."""
    first = records[0]
    count = len(records)
    if next(iter(first)) != "#key" or set(map(len, records)) != {len(first)}:
        return None
    shared: Record = {}
    try:
        for field, value in first.items():
            if field == "#key":
                continue
            if field == META and isinstance(value, dict | list):
                data = _shared_meta(value, joined, count)
                if data is None:  # (each line's own: kept as its bytes, see _store_metas)
                    return None
                shared[META] = data
            elif _shareable(field, value, first):
                values = list(map(operator.itemgetter(field), records))
                if values.count(value) == count and (
                    type(value) is str
                    or {int}.issuperset(map(type, itertools.chain.from_iterable(values)))
                ):
                    shared[field] = _shared_value(field, value)
        # (every line holds the first one's fields, and no other: as many, all found)
        names = [field for field in first if field not in shared]
        columns = [list(map(operator.itemgetter(field), records)) for field in names]
    except (KeyError, TypeError):
        return None
    if not shared:
        return None
    base = (*((field, shared.get(field)) for field in first), (IN, name), (AT, None))
    template = (name, (*names, AT), base)
    offsets = itertools.accumulate(map(_PLUS_NEWLINE, map(len, lines)), initial=offset)
    return list(zip(*columns, offsets, itertools.repeat(template)))


def _shared_meta(meta: tp.Any, joined: bytes, count: int) -> bytes | None:
    """The bytes of the metadata every line of a chunk writes alike (see META), or None.
    (Equal bytes, not equal values: {"n": 1} == {"n": True}; found in the chunk's bytes,
    once per line, when nothing else is nested: a run found is then each line's own.)"""
    data = orjson.dumps(meta)
    run = b'"#meta":' + data
    if b"\\" in joined or joined.count(b"{") != count * (1 + data.count(b"{")):
        return None
    return data if joined.count(run) == count else None


def _shareable(field: str, value: tp.Any, record: Record) -> bool:
    """Whether a field may be shared by a chunk's lines (see _packed): a string, an
    array's shape (as written: one tuple per shape)."""
    if type(value) is str:
        return True
    return field == "s" and type(value) is list and record.get("#type") == "MemmapArray"


def _shared_value(field: str, value: tp.Any) -> tp.Any:
    if type(value) is str:
        return sys.intern(value)
    return _shared_shape(value) if field == "s" else value


_FORKS = [0]  # forks of this process so far (see IndexReader.locked)


def _count_fork() -> None:
    global _SHARED_LOCK
    _FORKS[0] += 1
    _SHARED_LOCK = threading.Lock()  # (it may have been held by a thread of the parent)


# The reader of each folder last started in this process (see IndexReader.adopt): a new
# reader of the folder starts from a copy of its state and reads only what was appended
# since, instead of parsing every index file again (a new CacheDict per call, e.g. a new
# config instance of a map per item: ~14 ms per instance at 1,600 entries). Held weakly,
# and strongly (a loop drops each instance) for the last folders read, up to a total of
# entries (~70 MB of RAM) as they hold them at the next one's first read: beyond, shared
# while an instance holds its reader.
_SHARED_READERS: weakref.WeakValueDictionary[str, IndexReader] = weakref.WeakValueDictionary()
_KEPT_READERS: collections.OrderedDict[str, IndexReader] = collections.OrderedDict()
_KEPT_ENTRIES = 100_000
_KEPT_FOLDERS = 8
_SHARED_LOCK = threading.Lock()


def _share(reader: IndexReader) -> None:
    """Make a reader the one new readers of its folder copy."""
    folder = reader._dir
    with _SHARED_LOCK:
        kept = _KEPT_READERS
        kept.pop(folder, None)
        if reader.absent and not (reader.entries or reader.removals or reader.moved_from):
            # (no folder: a new reader starts from nothing, as from a copy of this one;
            # no weak reference nor kept reader for each of a plan's thousands of new nodes)
            _SHARED_READERS.pop(folder, None)
        else:
            _SHARED_READERS[folder] = reader
            kept[folder] = reader
            if len(kept) > _KEPT_FOLDERS:
                kept.popitem(last=False)
        total = 0  # (counted now: a reader kept may have grown since, by its writes)
        for name, other in reversed(list(kept.items())):
            total += len(other.entries)
            if total > _KEPT_ENTRIES:
                del kept[name]


@atexit.register
def _drop_kept_readers() -> None:
    """At exit, the kept readers go first (freed as an instance's were): the final cyclic
    collections of the interpreter walked their entries (~2.5k instructions per entry)."""
    with _SHARED_LOCK:
        _KEPT_READERS.clear()


def unshare(folder: Path | str) -> None:
    """New readers of this folder start from nothing (its index files were removed)."""
    folder = os.fspath(folder)
    with _SHARED_LOCK:
        _SHARED_READERS.pop(folder, None)
        _KEPT_READERS.pop(folder, None)


def _unshare_all() -> None:
    """New readers read every folder from nothing (a command of the command line, run
    as in a new process: it warns again of the unreadable lines it meets)."""
    with _SHARED_LOCK:
        _SHARED_READERS.clear()
        _KEPT_READERS.clear()


saidonce.FORGET_CHECKS.append(_unshare_all)


_NO_NAMES: frozenset[str] = frozenset()  # (the listing of an absent folder)


def _shared_reader(folder: str) -> IndexReader | None:
    with _SHARED_LOCK:
        return _SHARED_READERS.get(folder)


os.register_at_fork(after_in_child=_count_fork)


class IndexReader:
    """Incremental view of every index file in a folder.

    ``entries`` maps a key to its record (with where its line is: see ``IN``).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._dir = os.fspath(folder)  # plain strings on the hot path (no Path parsing)
        self.entries: dict[str, Stored] = {}
        self._files: dict[str, FileState] = {}
        self._deleted: set[EntryId] = set()
        # other live entries of a key whose current entry came from a later-read line:
        # a tombstone of the current one promotes one of them (file read order is arbitrary)
        self._shadowed: dict[str, list[Stored]] = {}
        self.removals = 0  # entries removed by tombstones (RAM copies may outlive them)
        self.packed = False  # whether some entries are packed (see PACKED_FROM)
        # the keys of those entries, when a view asks (see CacheDict.drop_stale_ram)
        self.removed_keys: set[str] | None = None
        self.absent = False  # whether the last refresh found no folder at all
        # every name the last refresh listed in the folder (callers check other files of
        # theirs there without a stat of their own), None before the first
        self.listed: set[str] | frozenset[str] | None = None
        # files that lost entries to tombstones: maybe none of theirs is live anymore
        self.emptied: set[str] = set()
        # lifeless files whose writer may still write: checked again at a monotonic time
        self.deferred: dict[str, float] = {}
        self.deferred_until = 0.0  # (the earliest of those times)
        # lifeless files whose tombstones still apply elsewhere: freed by a deletion
        self.awaiting_deleter: set[str] = set()
        # the files entries were moved from by compactions (a tombstone aimed at such a
        # file, gone, may still delete the entry at its former place)
        self.moved_from: set[str] = set()
        self._lock = threading.RLock()
        self._lock_fork = _FORKS[0]
        self._adopting = False  # (the first refresh after adopt)

    def locked(self) -> threading.RLock:
        """The reader's lock. After a fork, a new one: the old one may be held by a thread
        of the parent (reading the index right then), which does not exist in the child.
        (Checked per use: a registry of readers for a fork hook costs a weakref each,
        which the cyclic GC then has to walk.)"""
        if self._lock_fork != _FORKS[0]:
            self._lock, self._lock_fork = threading.RLock(), _FORKS[0]
        return self._lock

    def refresh(self) -> None:
        """Read what every writer appended since the last refresh (at the first one, of
        a copy of the state of the folder's last reader, see adopt)."""
        with self.locked():
            first = self.listed is None and not self._files and not self.entries
            if first:
                self.adopt()
            try:
                self._refresh()
            finally:
                self._adopting = False
            if first:
                _share(self)

    def adopt(self) -> None:
        """Start from a copy of what the folder's last reader of this process read. The
        refresh that follows reads every file again from where that reader stopped, after
        a stat of its own (the same inode, no shorter: index files are append-only and
        their names never reused; else read again from 0), and forgets the files gone:
        what it then holds is what a parse of every file would give."""
        source = _shared_reader(self._dir)
        if source is None or source is self:
            return
        with source.locked():
            if source.listed is None:
                return
            self.entries = dict(source.entries)  # (records are never changed: shared)
            self._files = {name: state.copy() for name, state in source._files.items()}
            self._deleted = set(source._deleted)
            self._shadowed = {key: list(shadows) for key, shadows in source._shadowed.items()}
            self.removals = source.removals
            self.packed = source.packed
            # (lifeless files checked again now, as a reader parsing them all would)
            self.emptied = source.emptied | source.deferred.keys() | source.awaiting_deleter
            self.moved_from = set(source.moved_from)
            self._adopting = True

    def _refresh(self) -> None:
        with self.locked():
            for _ in range(10):
                try:
                    # (the entries kept: their file type tells a new index file is a
                    # regular one without a stat of its own)
                    found = list(os.scandir(self._dir))
                    self.listed = {e.name for e in found}
                    listing = [n for n in self.listed if n.endswith(INDEX_SUFFIX)]
                    self.absent = False
                except (FileNotFoundError, NotADirectoryError):  # (under a file: absent too)
                    # (one shared empty set: one object fewer per absent folder for the
                    # collector to walk, e.g. after a plan of thousands of new nodes)
                    found, listing, self.listed = [], [], _NO_NAMES
                    self.absent = True
                except PermissionError as error:  # (said with whose folder, what to do)
                    note_read_error(error, self._dir)
                    raise
                known = self._files
                if not known.keys() >= set(listing):  # new files: are they ours?
                    by_name = {e.name: e for e in found}
                    listing = [
                        n for n in listing if n in known or _written_here(n, self, by_name[n])
                    ]
                for name in set(self._files).difference(listing):
                    self._forget_file(name)  # compacted or cleared by someone else
                vanished = [name for name in listing if not self._read_file(name)]
                if not vanished:
                    return
                # a file vanished between listing and reading (compaction writes the merged
                # file before removing the old ones): list again to find where they went

    def file_names(self) -> list[str]:
        return list(self._files)

    def positions(self) -> frozenset[tuple[str, int]]:
        """Each index file read, with how far (bytes): the same set after a refresh means
        that no writer appended nor removed anything meanwhile."""
        return frozenset((name, state.offset) for name, state in self._files.items())

    def _forget_file(self, name: str) -> None:
        state = self._files.pop(name)
        for key in state.keys:
            shadows = self._shadowed.get(key)
            if shadows:
                shadows[:] = [s for s in shadows if file_of(s) != name]
            entry = self.entries.get(key)
            if entry is not None and file_of(entry) == name:
                self._drop_entry(key)
                if shadows:
                    self.entries[key] = shadows.pop()
            if shadows is not None and not shadows:
                del self._shadowed[key]

    def _drop_entry(self, key: str) -> None:
        """Remove a key's current entry (a RAM copy of it may outlive it: counted, noted)."""
        del self.entries[key]
        self.removals += 1
        if self.removed_keys is not None:
            self.removed_keys.add(key)

    def _shadow(self, key: str, new: Stored) -> None:
        """Remember the current entry of a key about to be replaced by another live entry."""
        old = self.entries.get(key)
        if old is None or place(old) == place(new):
            return
        shadows = self._shadowed.get(key)
        if shadows is None:
            self._shadowed[key] = [old]
            return
        here = place(new)
        # (a line of the reader's own session read again: see cachedict._skip_own_lines)
        if any(place(s) == here for s in shadows):
            shadows[:] = [s for s in shadows if place(s) != here]
        shadows.append(old)

    def _read_file(self, name: str) -> bool:
        """Read what was appended to one file; False if the file vanished."""
        state = self._files.get(name)
        if state is not None and state.final:
            if time.monotonic() - state.ended_check < _FINAL_RESTAT:
                return True
            # (looked at again now and then: a writer misjudged as ended, e.g. in another
            # pid namespace under this host name, is then missed for seconds, not forever)
            state.final = False
        path = f"{self._dir}/{name}"
        fd = -1
        try:
            if state is None:  # a new file: open it at once (its fstat gives inode and size)
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                stat = os.fstat(fd)
            else:  # (a known file, often unchanged: one stat tells)
                stat = os.stat(path)
        except FileNotFoundError:
            if state is not None:
                self._forget_file(name)
            return False
        except PermissionError:
            if state is None and _empty(path):  # (nothing to read in it: read when it grows)
                return True
            raise
        try:
            if state is not None:
                if stat.st_size == state.offset and stat.st_ino == state.inode:
                    if not self._adopting:  # (a reader reading it all would not check)
                        _check_final(path, state, stat.st_size)
                    return True
                if stat.st_ino != state.inode or stat.st_size < state.offset:
                    self._forget_file(name)  # replaced or truncated: read it again
                    state = None
            if state is None:
                state = FileState(inode=stat.st_ino, offset=0, keys=set())
                self._files[name] = state
            try:
                if fd < 0:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                data = _read_span(fd, state.offset, stat.st_size - state.offset)
            except FileNotFoundError:
                self._forget_file(name)
                return False
        finally:
            if fd >= 0:
                os.close(fd)
        end = data.rfind(b"\n")
        if end < 0:
            # (a torn line of a killed writer stays torn)
            _check_final(path, state, state.offset + len(data))
            return True  # only an incomplete line so far
        with gcpause.paused() if end >= PAUSE_BYTES else contextlib.nullcontext():
            self._parse_span(name, state, data, end)
        return True

    def _parse_span(self, name: str, state: FileState, data: bytes, end: int) -> None:
        """Parse the complete lines of what was read of a file (``data[:end]``)."""
        # (parsed PARSE_BYTES at a time: orjson's transient memory for one big document
        # is ~2 kB per entry, more than the entries it makes)
        start = 0
        while start < end:
            cut = (
                data.rfind(b"\n", start, start + PARSE_BYTES) if end - start > PARSE_BYTES else end
            )
            if cut < start:  # (a line longer than that)
                cut = data.find(b"\n", start + PARSE_BYTES)
            chunk = data[start:cut]
            lines = chunk.split(b"\n")
            moved = FORMER_PLACES_BYTES in chunk  # (lines a compaction moved: rare)
            if not self._parse_bulk(name, state, lines, moved):
                self._parse_lines(name, state, lines)
            state.offset += cut - start + 1
            start = cut + 1

    def _note_former_places(self, record: dict[str, tp.Any]) -> None:
        former = record.get(FORMER_PLACES)
        for where in former if isinstance(former, list) else ():
            if isinstance(where, str):
                self.moved_from.add(where.rpartition(":")[0])

    def _parse_bulk(
        self, name: str, state: FileState, lines: list[bytes], moved: bool = False
    ) -> bool:
        """Fast path: every line is well-formed JSON (entries, and tombstones: see
        ``_parse_mixed``), nothing odd."""
        joined = b"[" + b",".join(lines) + b"]"
        try:
            records = orjson.loads(joined)
        except orjson.JSONDecodeError:
            return False
        try:
            keys = list(map(_KEY, records))
            if set(map(type, keys)) != {str}:
                return False
            if not all(map(operator.contains, records, itertools.repeat("#type"))):
                return False
        except KeyError:  # (a tombstone: e.g. the lines of a forced map)
            return self._parse_mixed(name, state, lines, records, moved)
        except TypeError:
            return False
        packed = None
        # (a chunk with metadata is packed from the start: records each holding its own
        # bytes of it cost more to make, see _store_metas)
        if not moved and (len(self.entries) >= PACKED_FROM or META_BYTES in joined):
            packed = _packed(name, records, lines, joined, state.offset)
        if packed is not None:
            self.packed = True
            self._add_parsed(name, state, keys, packed)
            return True
        if moved:
            for record in records:
                if FORMER_PLACES in record:
                    self._note_former_places(record)
        offsets = itertools.accumulate(map(_PLUS_NEWLINE, map(len, lines)), initial=state.offset)
        _consume(map(dict.update, records, itertools.repeat(_common_fields(records, name, joined))))
        _consume(map(operator.setitem, records, itertools.repeat(AT), offsets))
        if META_BYTES in joined:
            _store_metas(records)
        self._add_parsed(name, state, keys, records)
        return True

    def _add_parsed(
        self, name: str, state: FileState, keys: list[str], records: list[tp.Any]
    ) -> None:
        """Make the entries of a parsed chunk of a file current (see _parse_bulk)."""
        if self._deleted or (self.entries and not self.entries.keys().isdisjoint(keys)):
            pairs = [(k, e) for k, e in zip(keys, records) if not self._is_deleted(e)]
            if len(pairs) < len(keys):
                self.emptied.add(name)
            for key, entry in pairs:  # rare: duplicate keys or deletions in the folder
                self._shadow(key, entry)
                self.entries[key] = entry
            state.keys.update(k for k, _ in pairs)
        else:
            entries = self.entries
            known = len(entries)
            entries.update(zip(keys, records))
            if len(entries) - known != len(keys):
                # a key twice in these lines (instances of one thread sharing a session,
                # each unaware of the other's entry): both copies known, as in two files
                for key in keys:
                    entries.pop(key, None)
                for key, entry in zip(keys, records):
                    self._shadow(key, entry)
                    entries[key] = entry
            state.keys.update(keys)

    def _parse_mixed(
        self,
        name: str,
        state: FileState,
        lines: list[bytes],
        records: list[tp.Any],
        moved: bool,
    ) -> bool:
        """Entries and tombstones, all well-formed: the outcome of reading them line by
        line (a tombstone deletes a place, whether its entry is read before or after)."""
        offsets = itertools.accumulate(map(_PLUS_NEWLINE, map(len, lines)), initial=state.offset)
        entries: list[tuple[str, Record]] = []
        tombstones: list[tuple[tp.Any, EntryId]] = []
        for offset, record in zip(offsets, records):
            if type(record) is not dict:
                return False
            key = record.get("#key")
            if key is not None:
                if type(key) is not str or "#type" not in record:
                    return False
                record[IN] = name
                record[AT] = offset
                entries.append((key, record))
                continue
            target = record.get("#of")
            if type(target) is not str:
                return False
            file, _, at = target.rpartition(":")
            if not file or not at.isdigit():
                return False
            tombstones.append((record.get("#del"), (file, int(at))))
        if entries:  # (see _common_fields)
            stored = [entry for _, entry in entries]
            _consume(map(dict.update, stored, itertools.repeat(_common_fields(stored, name))))
        if moved:
            for _, entry in entries:
                if FORMER_PLACES in entry:
                    self._note_former_places(entry)
        if any(META in entry for _, entry in entries):
            stored = [entry for _, entry in entries]
            _store_metas(stored)
            entries = [(key, entry) for (key, _), entry in zip(entries, stored)]
        state.aim_at({target[0] for _, target in tombstones})
        deleted, shadowed, current = self._deleted, self._shadowed, self.entries
        for key, target in tombstones:
            if type(key) is str and (key in current or key in shadowed):
                self.apply_tombstone(key, target)
            else:  # (what apply_tombstone does then, without its lock: held by refresh)
                deleted.add(target)
        for key, entry in entries:
            if deleted and (
                place(entry) in deleted
                if FORMER_PLACES not in entry
                else not deleted.isdisjoint(places(entry))
            ):
                self.emptied.add(name)
                continue
            self._shadow(key, entry)
            self.entries[key] = entry
            state.keys.add(key)
        return True

    def _parse_lines(self, name: str, state: FileState, lines: list[bytes]) -> None:
        position = state.offset
        for line in lines:
            offset = position
            position += len(line) + 1
            if not line or line.isspace():
                continue
            try:
                record = orjson.loads(line)
                key = record.get("#key") if type(record) is dict else None
            except orjson.JSONDecodeError:
                record = key = None
            if key is not None:
                if FORMER_PLACES in record:
                    self._note_former_places(record)
                if "#type" not in record or type(key) is not str:
                    _warn_bad_line(self.folder / name, offset, line)
                    continue
                record[IN] = name
                record[AT] = offset
                if META in record:
                    made = [record]
                    _store_metas(made)
                    record = made[0]
                if not self._is_deleted(record):
                    self._shadow(key, record)
                    self.entries[key] = record
                    state.keys.add(key)
                else:
                    self.emptied.add(name)
                continue
            target = record.get("#of") if type(record) is dict else None
            if isinstance(target, str) and ":" in target:
                file, _, off = target.rpartition(":")
                if off.isdigit():
                    state.aim_at((file,))
                    self.apply_tombstone(record.get("#del"), (file, int(off)))
                    continue
            _warn_bad_line(self.folder / name, offset, line)

    def _is_deleted(self, entry: Stored) -> bool:
        deleted = self._deleted
        if not deleted:
            return False
        return not deleted.isdisjoint(places(entry))

    def apply_tombstone(self, key: tp.Any, target: EntryId) -> None:
        with self.locked():
            self._deleted.add(target)
            if not isinstance(key, str):
                return

            shadows = self._shadowed.get(key)
            if shadows:
                kept = [s for s in shadows if target not in places(s)]
                self.emptied.update(file_of(s) for s in shadows if target in places(s))
                shadows[:] = kept
            entry = self.entries.get(key)
            if entry is not None and target in places(entry):
                self._drop_entry(key)
                self.emptied.add(file_of(entry))
                if shadows:  # another live copy of the key was read earlier
                    self.entries[key] = shadows.pop()
            if shadows is not None and not shadows:
                del self._shadowed[key]

    def copies(self, key: str) -> list[Record]:
        """Every live entry of a key that was read (the current one first)."""
        with self.locked():
            current = self.entries.get(key)
            if current is None:
                return []
            return [record_of(current), *map(record_of, self._shadowed.get(key, []))]

    def lifeless_files(self, with_live_aims: bool = False) -> list[tuple[str, int, int, set[str]]]:
        """``(name, inode, bytes read, other files its tombstones aim at)`` of the files
        that lost entries to tombstones and hold no live entry now, nor a tombstone that
        may still delete an entry this reader knows of (removing the file would bring
        the entry back): once their writer ended, their space can be freed.
        ``with_live_aims``: also those with such tombstones (a deleter re-issues them in
        its own index first)."""
        out = []
        with self.locked():
            if self.deferred and time.monotonic() >= self.deferred_until:
                now = time.monotonic()
                due = [name for name, when in self.deferred.items() if when <= now]
                for name in due:
                    del self.deferred[name]
                self.emptied.update(due)
                self.deferred_until = min(self.deferred.values(), default=0.0)
            names = self.emptied | self.awaiting_deleter if with_live_aims else self.emptied
            for name in list(names):
                state = self._files.get(name)
                if state is None:
                    self.emptied.discard(name)
                    self.awaiting_deleter.discard(name)
                    continue
                if not with_live_aims and self._deletes_elsewhere(name, state):
                    # (when what it deletes is gone, it may go; else the next deletion
                    # through this reader re-issues its tombstones and frees it)
                    self.emptied.discard(name)
                    self.awaiting_deleter.add(name)
                    continue
                if any(self._lives_in(name, key) for key in state.keys):
                    self.emptied.discard(name)  # (a later tombstone adds it again)
                    self.awaiting_deleter.discard(name)
                    continue
                state.keys = set()  # (nothing there to forget: later checks are cheap)
                aims = state.aims - {name} if state.aims else set()
                out.append((name, state.inode, state.offset, aims))
        return out

    def _deletes_elsewhere(self, name: str, state: FileState) -> bool:
        """Whether a tombstone of the file may still delete an entry of another file."""
        others = state.aims - {name} if state.aims else None
        if not others:
            return False
        return not (others.isdisjoint(self._files) and others.isdisjoint(self.moved_from))

    def _lives_in(self, name: str, key: str) -> bool:
        entry = self.entries.get(key)
        if entry is not None and file_of(entry) == name:
            return True
        return any(file_of(s) == name for s in self._shadowed.get(key, ()))

    def defer(self, name: str, seconds: float) -> None:
        """Check a lifeless file again in that many seconds, not at every read."""
        with self.locked():
            self.emptied.discard(name)
            self.awaiting_deleter.discard(name)
            when = time.monotonic() + seconds
            self.deferred[name] = when
            self.deferred_until = min(self.deferred_until or when, when)

    def forget_removed(self, name: str) -> None:
        """A file this reader found lifeless was removed."""
        with self.locked():
            self.emptied.discard(name)
            self.awaiting_deleter.discard(name)
            self.deferred.pop(name, None)
            if name in self._files:
                self._forget_file(name)

    def own_file(self, name: str, inode: int) -> FileState:
        """The read state of a file this process writes (so refresh skips its own lines)."""
        with self.locked():
            state = self._files.get(name)
            if state is None or state.inode != inode:
                state = self._files[name] = FileState(inode=inode, offset=0, keys=set())
            return state


# index files of this implementation: <host>-<pid>-<thread>-<time hex>-<random>-info.jsonl
# (process.unique_name); other names come from another exca (the reference writes
# <host>-<thread>-info.jsonl, whose payload formats differ): left alone, not read
_OUR_INDEX_NAME = re.compile(r".+-\d+-\d+-[0-9a-f]{12,}-[0-9a-f]{6}" + re.escape(INDEX_SUFFIX))


def _regular_file(folder: str, name: str) -> bool:
    """Whether an index name is a regular file (a directory made under that name, by hand
    or a tool, made every read of the cache fail; a FIFO made readers wait forever)."""
    path = os.path.join(folder, name)
    try:
        if stat.S_ISREG(os.stat(path).st_mode):
            return True
    except FileNotFoundError:  # (removed since the listing: the reader looks again)
        return True
    except OSError:
        pass
    if saidonce.first(("index name not a file", path)):
        logger.warning("%s is named like an index file but is not a file: ignored", path)
    return False


def _read_span(fd: int, offset: int, size: int) -> bytes:
    """``size`` bytes from ``offset`` (what the fstat/stat saw; lines appended since are
    read by the next refresh), fewer if the file was truncated meanwhile."""
    parts: list[bytes] = []
    got = 0
    while got < size:  # (more than one read: a huge span, or a signal)
        more = os.pread(fd, size - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return parts[0] if len(parts) == 1 else b"".join(parts)


_FINAL_RECHECK = 1.0  # seconds between two checks of a live writer's process
_FINAL_RESTAT = 10.0  # seconds a file whose writer ended is not looked at


def _check_final(path: str, state: FileState, size: int) -> None:
    """Mark an index file read up to ``size`` bytes as final if its writer ended."""
    now = time.monotonic()
    if now - state.ended_check < _FINAL_RECHECK:
        return
    state.ended_check = now
    # (only a writer on this host is known to have ended: another host's may be idle)
    name = os.path.basename(path)
    if not process.session_ended(name[: -len(INDEX_SUFFIX)], 0.0, math.inf):
        return
    try:  # (what it appended right before it ended, since the size was read: read next)
        current = os.stat(path)
    except OSError:
        return
    state.final = current.st_size == size and current.st_ino == state.inode


def _written_here(name: str, reader: IndexReader, entry: os.DirEntry[str] | None = None) -> bool:
    if _OUR_INDEX_NAME.fullmatch(name):
        # (a listing that says "regular file" needs no stat: a plan reads thousands of
        # new folders; a symlink or an unknown type is stat'ed, as before)
        if entry is not None and entry.is_file(follow_symlinks=False):
            return True
        return _regular_file(reader._dir, name)
    if saidonce.first(("foreign index", reader._dir)):  # (once per folder and process)
        logger.warning(
            "%s: %s was not written by this exca (the reference package?): its entries are "
            "ignored and computed again; the file is left alone, so this is said once per "
            "process: if the reference package no longer uses this cache, remove %s",
            reader._dir,
            name,
            os.path.join(reader._dir, name),
        )
    return False


def _warn_bad_line(path: Path, offset: int, line: bytes) -> None:
    warnings.warn(
        f"Skipping an unreadable index line at byte {offset} of {path} "
        f"(a writer was killed while writing it, or its disk was full; that entry is not "
        f"read, the others are): {line[:120]!r}",
        RuntimeWarning,
        stacklevel=5,
    )


def index_files_bytes(folder: Path | str) -> tp.Iterator[tuple[str, bytes]]:
    """(name, bytes) of every index file of a folder (those removed meanwhile skipped)."""
    for item in os.scandir(folder):
        if not item.name.endswith(INDEX_SUFFIX) or not item.is_file():  # (a stray folder)
            continue
        try:
            with open(item.path, "rb") as handle:
                yield item.name, handle.read()
        except FileNotFoundError:
            continue
        except PermissionError:
            if not _empty(item.path):
                raise


def _empty(path: str) -> bool:
    """Whether an index file this user may not open is empty: another user's writer made
    it with its umask's mode (0o600 under umask 077) and was killed before its chmod to
    the cache's permissions, or is about to chmod it. It holds nothing to read; its
    PermissionError made every read of the folder fail, for every other user."""
    try:
        return os.stat(path).st_size == 0
    except OSError:
        return False


def tombstone_lines(data: bytes) -> tp.Iterator[tuple[bytes, str]]:
    """The tombstone lines of an index file's bytes, each with the place it names
    (``"<file>:<offset>"``); lines that do not parse are skipped."""
    for line in data.split(b"\n"):
        if b'"#of"' not in line:
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        target = record.get("#of") if isinstance(record, dict) else None
        if isinstance(target, str):
            yield line, target


class SessionFilesGone(FileNotFoundError):
    """A writer session's files were removed while it was idle: a new session writes."""


class CacheFolderRemoved(FileNotFoundError):
    """The cache folder (or the files of a session writing there) was removed by someone
    else (an ``rm -rf``, ``exca clean`` in another shell) while that session wrote to it:
    what it wrote since is lost. Never an entry's failure: nothing is stored for it, the
    next call computes it again. (Not a reclaim's doing: it frees no file written to in
    the last two minutes, see reclaim.MIN_IDLE_SECONDS.)"""

    @classmethod
    def of_cachedict(cls, folder: Path | str, written: str) -> CacheFolderRemoved:
        """Said to a user of a CacheDict, who may know no infra (a removal of the folder
        while ``written``, e.g. "3 entry(ies) were")."""
        return cls(
            errno.ENOENT,
            f"The folder of this CacheDict was removed while {written} written to it (an "
            "`rm -rf`, or clear() by another CacheDict of the folder, in this process or "
            "another?): these entries are not stored (nor written to a folder made anew, "
            "which would hide the removal), and those written before went with the folder. "
            "To store them, write them again: the next write makes the folder anew",
            str(folder),
        )

    @classmethod
    def at(cls, folder: Path | str, during: str) -> CacheFolderRemoved:
        """Said to a caller of an infra's method, whose results the folder held
        (``during``: what was going on, e.g. "3 entries were written to it")."""
        return cls(
            errno.ENOENT,
            f"The cache folder disappeared while {during} (removed by an `rm -rf`, or "
            "`exca clean` in another shell?): what was computed is not cached, and nothing "
            "cached says it failed (the next call computes it again)",
            str(folder),
        )


def folder_marker(folder: str | os.PathLike[str] | None) -> int | None:
    """The inode of a cache folder's uid.yaml (None without one): a folder removed and made
    again by a write has none, or another one (the folder's own inode is given again at
    once to the folder made anew)."""
    if folder is None:
        return None
    try:
        return os.stat(os.path.join(folder, "uid.yaml")).st_ino
    except OSError:
        return None


class IndexWriter:
    """The index file of one writer session (a process x thread, shared by the CacheDict
    instances of its folder in that thread while no write() context of another holds it)."""

    def __init__(self, folder: Path, permissions: int | None) -> None:
        self.folder = folder
        self.permissions = permissions
        self.session = process.unique_name()
        self.name = self.session + INDEX_SUFFIX
        self.fd: int | None = None
        self.inode = 0
        self.size = 0
        self.read_state: FileState | None = None  # the reader's state of this file
        self.read_owner: IndexReader | None = None  # (whose reader: see CacheDict._session)
        # taken up by more than one CacheDict of the folder (one thread): a reader's state
        # of this file skips to its end only past lines that reader knows of
        self.shared = False
        # the write() context (a one-element list, emptied when it ends) that uses this
        # session now: no other instance takes the session up meanwhile
        self.holder: list[bool] | None = None
        # a failed append left part of a line (no newline): the next append ends it first
        self.torn = False
        # (monotonic times of the next removed_while_busy check, of the next
        # gone_while_idle one)
        self.next_check = self.idle_check = 0.0

    def gone_while_idle(self) -> bool:
        """At most once a minute (compaction merges only files idle for an hour): whether
        this session's index file was removed (one fstat, then a stat). Writers call it
        before appending: one that was idle checks at its next write."""
        if self.fd is None:
            return False
        now = time.monotonic()
        if now < self.idle_check:
            return False
        self.idle_check = now + IDLE_CHECK_SECONDS
        try:
            if os.fstat(self.fd).st_nlink == 0:
                return True
        except OSError:
            return True
        return not self.still_there()

    def removed_while_busy(self, now: float) -> bool:
        """Whether this session's open index file was removed although written to less
        than a minute ago (one fstat): not a compaction's nor a freeing's doing, which take
        only files idle for longer, but an ``rm -rf`` of the folder, ``exca clean`` in
        another shell. ``now``: the monotonic time (the next check is due
        BUSY_CHECK_SECONDS later)."""
        self.next_check = now + BUSY_CHECK_SECONDS
        if self.fd is None:
            return False
        try:
            stat = os.fstat(self.fd)
        except OSError:
            return False  # (said by the write itself)
        return stat.st_nlink == 0 and time.time() - stat.st_mtime < IDLE_CHECK_SECONDS

    def unlinked(self) -> bool:
        """Whether the open index file was removed (one fstat)."""
        try:
            return self.fd is not None and os.fstat(self.fd).st_nlink == 0
        except OSError:
            return True

    def still_there(self) -> bool:
        """Whether this session's index file is still the one it wrote (not removed by a
        clear() or a clean since): else the session must end (its name is never reused)."""
        if not self.inode:
            return True  # (nothing written yet)
        try:
            return os.stat(self.folder / self.name).st_ino == self.inode
        except FileNotFoundError:
            return False

    def open(self) -> int:
        if self.fd is None:
            path = self.folder / self.name
            # a file this session made and that was removed since (a clean, freed by a
            # reader) is never made again under its name, from offset 0: old deletions
            # aimed at its lines would meet the new ones
            flags = os.O_WRONLY | os.O_APPEND | (0 if self.inode else os.O_CREAT)
            try:
                self.fd = os.open(path, flags, 0o666)
            except FileNotFoundError:
                if not self.inode:
                    raise
                raise SessionFilesGone(f"{path} was removed since this session wrote it") from None
            now = time.monotonic()  # (it is there now)
            self.next_check, self.idle_check = now + BUSY_CHECK_SECONDS, now + IDLE_CHECK_SECONDS
            stat = os.fstat(self.fd)
            self.inode, self.size = stat.st_ino, stat.st_size
            if self.size == 0 and self.permissions is not None:
                chmod(path, self.permissions)
        return self.fd

    def append(self, data: bytes) -> int:
        """Append complete lines (each with its newline); return the offset of the first."""
        fd = self.fd if self.fd is not None else self.open()
        offset, out = self.size, data
        if self.torn:  # end the fragment a failed append left (readers skip that line)
            offset, out = offset + 1, b"\n" + data
        try:
            written = os.write(fd, out)
            if written != len(out):
                self.finish_short_write(out, written)
        except BaseException:
            self.failed_append()
            raise
        self.size, self.torn = offset + len(data), False
        return offset

    def recover(self) -> None:
        """After a failed append (disk full, a signal): the real size of the file, and
        whether it ends inside a line. Offsets of later lines stay right, and the fragment
        does not swallow the next line."""
        try:
            size = os.fstat(self.fd).st_size if self.fd is not None else self.size
            with open(self.folder / self.name, "rb") as handle:
                handle.seek(max(0, size - 1))
                last = handle.read(1)
        except OSError:
            return
        self.size = size
        self.torn = size > 0 and last != b"\n"

    def failed_append(self) -> None:
        """After an append failed: its state read again (see recover); a file it holds
        nothing of (its first line, on a full disk) is removed (see discard_empty)."""
        self.recover()
        if self.size == 0:
            self.discard_empty()

    def discard_empty(self) -> None:
        """Remove this session's index file while it holds nothing (its first append
        failed: a full disk left it empty, in the node folder for good, as no clean
        removes it). No line of it was ever read: a later append makes it anew."""
        fd, self.fd = self.fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        path = self.folder / self.name
        with contextlib.suppress(OSError):
            stat = os.stat(path)
            if stat.st_ino == self.inode and stat.st_size == 0:  # (its own file, still empty)
                os.unlink(path)
        self.inode, self.size, self.torn = 0, 0, False
        self.read_state = self.read_owner = None  # (a new file, a new inode: read anew)

    def finish_short_write(self, data: bytes, written: int) -> None:
        """After a short write of ``data`` (``written`` bytes of it): write the rest (rare),
        so that the lines stay whole."""
        assert self.fd is not None
        finish_write(self.fd, [data], written)

    def close(self) -> None:
        fd, self.fd = self.fd, None  # (first: see SharedFile.close)
        # (a session kept for other instances must not keep a reader, with its entries)
        self.read_state = self.read_owner = None
        if fd is not None:
            os.close(fd)
