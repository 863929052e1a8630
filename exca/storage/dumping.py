"""The dump context: what a format sees while writing or reading one cache folder (the
registry of formats, the dispatch of a value to its format, per-entry and shared payload
files, memory maps).

A format ("handler") is a class registered on ``DumpContext`` with
``__dump_info__(ctx, value) -> dict`` (write the payload, return what is needed to read
it back; small values can live in that dict, i.e. inline in the index line) and
``__load_from_info__(ctx, **info) -> value``; ``__delete_info__(ctx, **info)`` removes
payload files owned by one entry. Loading always dispatches on the stored ``#type``.
The built-in formats are in formats.py (arrays.py for numpy), cached errors in
cachederror.py.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import logging
import mmap
import operator
import os
import pickle
import sys
import threading
import typing as tp
import warnings
from collections import OrderedDict
from pathlib import Path

from .files import chmod, ensure_folder
from .index import _FORKS
from .sharedfile import SharedFile

logger = logging.getLogger("exca")
_SECOND = operator.itemgetter(1)  # (the value of a (key, value) pair)


class DamagedPayload(OSError):
    """A payload file is shorter than its index line says (truncated, e.g. by a copy
    that stopped half-way)."""


def payload_path(folder: Path, name: str) -> Path:
    """The path of a payload file an index line names, which must be inside the cache
    folder: a line edited by hand (or by another tool, or another user of a shared cache)
    naming ``../x`` made a deletion of its key remove a file outside the cache."""
    if (
        type(name) is not str
        or not name
        or name[0] in "/\\"
        or ".." in name.replace("\\", "/").split("/")
    ):
        raise DamagedPayload(
            f"An index line of {folder} names the payload file {name!r}, which is not inside "
            "the cache folder: refused (a line written by hand or by another tool?)"
        )
    return folder / name


class DamagedRecord(ValueError):
    """An index line whose fields are missing or of the wrong type for its format (written
    by hand or by another tool?): reading it would give a wrong value, or an obscure
    error."""


# what reading an entry whose payload was removed or damaged outside exca raises (also
# raised by other things, e.g. a method: see ``mark_if_damaged``)
PAYLOAD_ERRORS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    DamagedPayload,
    EOFError,
    pickle.UnpicklingError,
    ValueError,
)
_DAMAGED = "exca_damaged_payload"


def mark_if_damaged(error: BaseException, folder: Path | None) -> None:
    """Mark an error raised while loading an entry of ``folder`` if it says that a payload
    file of that folder is missing, or named outside it. Never by an error's message: a
    value's own unpickling code may raise EOFError('Ran out of input'), ValueError('No
    data left in file')... from a good payload, which must never be removed. A stream
    that no longer parses is marked where it is read (``load_pickle``, the NumpyArray
    format), a payload shorter than written by the cache reading it (CacheDict)."""
    if isinstance(error, FileNotFoundError):
        inside = str(folder) + os.sep
        damaged = folder is not None and str(error.filename or "").startswith(inside)
    else:
        damaged = isinstance(error, DamagedPayload)
    if damaged:
        mark_damaged(error)


def mark_damaged(error: BaseException) -> None:
    """Mark an error as saying that an entry's payload was removed, cut short, or does not
    decode."""
    setattr(error, _DAMAGED, True)


def load_pickle(source: bytes | tp.BinaryIO) -> tp.Any:
    """Unpickle a payload; an error pickle raises on a stream cut short or overwritten
    (UnpicklingError, EOFError, ValueError) is marked damaged only if the stream itself
    is malformed: the same errors come of a well-formed stream's code (a value's own
    ``__setstate__``, or a reader whose class differs from the writer's), and such a
    result is not damaged."""
    try:
        # (bytes: loads, no stream on the path of every hit)
        return pickle.loads(source) if isinstance(source, bytes) else pickle.load(source)
    except (pickle.UnpicklingError, EOFError, ValueError) as error:
        # (exactly these types, which pickle raises on a stream cut short or overwritten;
        # a UnicodeDecodeError, say, is left unmarked as before)
        if type(error) not in _STREAM_ERRORS:
            raise
        stream = io.BytesIO(source) if isinstance(source, bytes) else source
        with contextlib.suppress(OSError):  # (not seekable: left unmarked)
            size = stream.seek(0, io.SEEK_END)
            # (disassembling a large stream costs seconds and its size in memory: an
            # EOFError or ValueError of one is left unmarked, its result never removed;
            # one cut short is found by its recorded size)
            if type(error) is not pickle.UnpicklingError and size > _WELL_FORMED_MAX:
                raise
            stream.seek(0)
            if not well_formed_pickle(stream):
                mark_damaged(error)
        raise


_STREAM_ERRORS = (pickle.UnpicklingError, EOFError, ValueError)
_WELL_FORMED_MAX = 16 * 2**20  # (bytes: larger streams are not disassembled, see above)


def well_formed_pickle(stream: tp.BinaryIO) -> bool:
    """Whether a stream is a valid pickle program up to its STOP: its opcodes, and the
    marks, stack and memo they use (pickletools.dis runs none of the code the stream
    names; genops alone read an overwritten MARK or memo index as fine)."""
    import pickletools  # (~4M instructions to import: only a failed read needs it)

    try:
        pickletools.dis(stream, out=io.StringIO())
    except Exception:  # (opcode unknown, no MARK, memo key never stored, exhausted...)
        return False
    return True


def is_damaged_payload(error: BaseException) -> bool:
    """Whether an error says that an entry's payload was removed, cut short, or does not
    decode (see ``mark_if_damaged``)."""
    return isinstance(error, DamagedPayload | DamagedRecord) or getattr(error, _DAMAGED, False)


# errors a loader raises on a record missing fields or holding fields of the wrong type
RECORD_ERRORS = (TypeError, KeyError, ValueError, AttributeError, IndexError)


def record_problem(info: tp.Any) -> str | None:
    """What is wrong with an index record for its format (a field missing, of the wrong
    type, or unknown), or None when nothing can be told. Formats may declare
    ``_record_shapes`` (the sets of fields a record holds one of) and ``_record_fields``
    (field -> type, or a check of the value); otherwise the fields are matched against
    the arguments of ``__load_from_info__``. Only run after a failed read."""
    if type(info) is not dict:
        return f"it is a {type(info).__name__}, not a JSON object"
    name = info.get("#type")
    if type(name) is not str:
        return f"its '#type' is {name!r}, not a format name"
    try:
        handler = DumpContext.handler(name)
    except ValueError:  # (not registered here: the reader's own error says it)
        return None
    fields = {k: v for k, v in info.items() if k[:1] != "#"}
    shapes = getattr(handler, "_record_shapes", None)
    if shapes and not any(all(field in fields for field in shape) for shape in shapes):
        wanted = " or ".join(
            repr(shape[0]) if len(shape) == 1 else f"({', '.join(map(repr, shape))})"
            for shape in shapes
        )
        have = ", ".join(map(repr, fields)) or "none"
        return f"a record of the {name} format holds {wanted} (this one: {have})"
    checks = getattr(handler, "_record_fields", {})
    for field, value in fields.items():
        check = checks.get(field)
        if check is None:
            continue
        if isinstance(check, type):
            if not isinstance(value, check) or (type(value) is bool and check is int):
                return f"its field {field!r} is {value!r:.60}, not a {check.__name__}"
        elif not check(value):
            return f"its field {field!r} is {value!r:.60}, not what the format reads"
    try:
        import inspect

        inspect.signature(handler.__load_from_info__).bind(None, **fields)
    except TypeError as error:  # (missing or unexpected fields)
        return f"its fields do not fit the {name} format ({error})"
    except ValueError:  # (no signature to check)
        pass
    return None


MEMMAP_ARRAY_FILE_MAX_CACHE = 1024  # memory maps kept open per reader
DATA_DIR = "data"
# loaders that read an index record directly (no keyword unpacking): the hot read paths
# (filled by the modules of the built-in formats)
FAST_LOADERS: dict[str, tp.Callable[[DumpContext, dict[str, tp.Any]], tp.Any]] = {}


def key_file_stem(key: str) -> str:
    """A file-name stem for a key: safe characters only, never a path, unique by digest."""
    digest = hashlib.md5(key.encode("utf8")).hexdigest()[:8]
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "-_=,.") else "-" for c in key)
    cleaned = cleaned.lstrip(".-") or "key"
    if len(cleaned) > 80:
        cleaned = cleaned[:40] + "..." + cleaned[-40:]
    return f"{cleaned}-{digest}"


PATH_TYPE = type(Path())  # (what Path() makes: PosixPath here, never Path itself)


class DumpOptions:
    """Options of a context: ``replace`` remaps handler names on dump and load."""

    def __init__(self, replace: dict[str, str] | None = None) -> None:
        self.replace = dict(replace or {})


class DumpInfo(tp.TypedDict, total=False):
    """What an index line holds besides the key: the handler name and its own fields."""


class DumpContext:
    """What a format sees while writing or reading one cache folder."""

    HANDLERS: tp.ClassVar[dict[str, tp.Any]] = {}
    DEFAULTS: tp.ClassVar[dict[tp.Any, str]] = {}  # type or "module.QualName" -> handler name
    ALIASES: tp.ClassVar[dict[str, str]] = {}
    # the format with an ``entry(ctx, key, name, value)`` fast path (arrays.MemmapArray):
    # ``info`` or None to go the general way
    FAST_DUMPER: tp.ClassVar[tp.Any] = None

    def __init__(
        self,
        folder: Path | str,
        key: str | None = None,
        options: DumpOptions | None = None,
        permissions: int | None = 0o777,
        session_name: str | None = None,
    ) -> None:
        self.folder = folder if type(folder) is PATH_TYPE else Path(folder)
        self.key = key
        self.options = options or DumpOptions()
        self.permissions = permissions
        self.session_name = session_name
        self._shared: dict[str, SharedFile] = {}
        self._made_shared: set[str] = set()  # shared files this session created
        self._memo: dict[str, tp.Any] = {}
        self._maps: OrderedDict[str, mmap.mmap] = OrderedDict()
        self._lock = threading.Lock()
        self._lock_fork = _FORKS[0]
        self._dispatch_memo: dict[tuple[type, str | None], tuple[str, tp.Any, bool]] = {}
        self._by_type: dict[type, tuple[str, tp.Any, bool]] = {}  # (cache_type None: hot path)
        # types FAST_DUMPER stores (cache_type None): (name, its ``entry``), which
        # ``CacheDict.put`` calls itself (one Python call per entry fewer)
        self.fast_entry: dict[type, tuple[str, tp.Callable[..., tp.Any]]] = {}
        self.batching = False
        self._key_files = 0  # per-entry files named so far (see key_path)
        # per-entry files named for the current entry (or batch): removed if it fails
        self.made: list[Path] = []

    # --- registry --------------------------------------------------------------------------
    @classmethod
    def register(
        cls, handler: tp.Any = None, *, default_for: tp.Any = None, name: str | None = None
    ) -> tp.Any:
        """Register a format class (usable as ``@register`` or ``@register(default_for=T)``)."""

        def decorate(klass: tp.Any) -> tp.Any:
            key = name or klass.__name__
            for attr in ("__dump_info__", "__load_from_info__"):
                if not hasattr(klass, attr):
                    raise TypeError(f"Format {key} must define {attr}")
            existing = cls.HANDLERS.get(key)
            redefined = existing is not None and (existing.__module__, existing.__qualname__) == (
                klass.__module__,
                klass.__qualname__,
            )  # the same class defined again (a re-run notebook cell): replace it
            if existing is not None and existing is not klass and not redefined:
                raise ValueError(
                    f"A format named {key!r} is already registered ({existing!r}): "
                    "rename the class or pass name=..."
                )
            cls.HANDLERS[key] = klass
            if default_for is not None:
                targets = default_for if isinstance(default_for, tuple) else (default_for,)
                for target in targets:
                    cls.DEFAULTS[target] = key
            return klass

        if handler is not None:
            return decorate(handler)
        return decorate

    @classmethod
    def handler(cls, name: str) -> tp.Any:
        name = cls.ALIASES.get(name, name)
        try:
            return cls.HANDLERS[name]
        except KeyError:
            import difflib

            known = ", ".join(sorted(cls.HANDLERS))
            close = difflib.get_close_matches(name, list(cls.HANDLERS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"Unknown cache_type {name!r}{hint}; known formats: {known} (a format of "
                "your own: register it with DumpContext.register before the first call)"
            ) from None

    @classmethod
    def default_name(cls, kind: type) -> str:
        """Name of the default format of a value type ("Auto" when none is registered)."""
        name = cls.DEFAULTS.get(kind)
        if name is not None:
            return name
        for base in kind.__mro__:
            name = cls.DEFAULTS.get(base) or cls.DEFAULTS.get(
                f"{base.__module__}.{base.__qualname__}"
            )
            if name == "MemmapArray" and base is not kind and kind.__name__ != "memmap":
                name = "Pickle"  # an ndarray subclass (masked array...) keeps what it adds
            elif name == "Text" and base is not kind:
                name = "Pickle"  # a str subclass (a str Enum...) would come back a plain str
            if name is not None:
                cls.DEFAULTS[kind] = name  # memoize the resolution of lazy names
                return name
        if hasattr(kind, "__dump_info__") and hasattr(kind, "__load_from_info__"):
            # named by module and qualified name: two classes of one name stay apart, and
            # a reading process finds the class from the name alone
            name = f"{kind.__module__}.{kind.__qualname__}"
            cls.register(kind, name=name)
            cls.ALIASES.setdefault(kind.__name__, name)  # (entries of older versions)
            cls.DEFAULTS[kind] = name
            return name
        return "Auto"

    @classmethod
    def _find_self_dumping(cls, name: str) -> bool:
        """Register the class a ``module.Class`` format name designates, if it dumps
        itself (a process reading values it never wrote)."""
        import importlib

        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            module_name = ".".join(parts[:cut])
            try:
                found: tp.Any = sys.modules.get(module_name) or importlib.import_module(module_name)
                for part in parts[cut:]:
                    found = getattr(found, part)
            except (ImportError, AttributeError):
                continue
            if (
                isinstance(found, type)
                and hasattr(found, "__dump_info__")
                and hasattr(found, "__load_from_info__")
                and _dumps_itself(found)
            ):
                cls.register(found, name=name)
                cls.DEFAULTS.setdefault(found, name)
                return True
        return False

    # --- dump / load ---------------------------------------------------------------------
    def _dispatch(self, kind: type, cache_type: str | None) -> tuple[str, tp.Any, bool]:
        """(stored name, handler, values dump themselves) for a value type: memoized."""
        found = self._dispatch_memo.get((kind, cache_type))
        if found is None:
            if cache_type is not None and hasattr(kind, "__dump_info__"):
                cache_type = None  # values that describe themselves keep their own format
            name = cache_type or self.DEFAULTS.get(kind) or self.default_name(kind)
            name = self.options.replace.get(name, name)
            name = self.ALIASES.get(name, name)
            handler = self.handler(name)
            itself = _dumps_itself(handler)
            if itself and not issubclass(kind, handler):
                raise TypeError(
                    f"cache_type {name!r} stores {handler.__qualname__} values only (they write "
                    f"themselves), got {kind.__qualname__}: use another cache_type (or leave "
                    "it unset)"
                )
            found = (name, handler, itself)
            self._dispatch_memo[(kind, cache_type)] = found
            if cache_type is None:
                self._by_type[kind] = found
                if handler is self.FAST_DUMPER:
                    self.fast_entry[kind] = (name, handler.entry)
        return found

    def dump(self, value: tp.Any, cache_type: str | None = None) -> dict[str, tp.Any]:
        """Write a value; return its info dict (with ``#type``), e.g. for nested values."""
        name, handler, itself = self._dispatch(type(value), cache_type)
        out = value.__dump_info__(self) if itself else handler.__dump_info__(self, value)
        _check_fields(name, out)
        info = {"#type": name}
        info.update(out)
        return info

    def dump_entry(self, key: str, value: tp.Any, cache_type: str | None) -> dict[str, tp.Any]:
        """Write the payload of an entry; return its index record (``#key``, ``#type``, ...)."""
        self.key = key
        kind = type(value)
        found = self._by_type.get(kind) if cache_type is None else None
        name, handler, itself = found or self._dispatch(kind, cache_type)
        if handler is self.FAST_DUMPER:  # the hot path of `cd[key] = array`
            info = handler.entry(self, key, name, value)
            if info is not None:
                return info
        made = self.made
        if made and not self.batching:
            made.clear()  # (the files of the previous entry: it is written)
        try:
            out = value.__dump_info__(self) if itself else handler.__dump_info__(self, value)
            info = {"#key": key, "#type": name, **out}
            for field in out:
                if type(field) is not str or not field or field[0] == "#":
                    _check_fields(name, out)
        except BaseException:
            if not self.batching:  # (a batch removes its files itself)
                self.discard_files()
            raise
        return info

    def dump_entries(
        self, pairs: list[tuple[str, tp.Any]], cache_type: str | None
    ) -> list[dict[str, tp.Any]]:
        """Index records of many entries; runs of values of one format that can dump many
        at once (``__dump_records__``: whole records) are dumped together."""
        out: list[dict[str, tp.Any]] = []
        start = 0
        # (the values' types, listed in C: a run of one type is found without a loop)
        kinds = list(map(type, map(_SECOND, pairs)))
        while start < len(pairs):
            kind = kinds[start]
            name, handler, itself = self._dispatch(kind, cache_type)
            many = None if itself else getattr(handler, "__dump_records__", None)
            if many is None:
                key, value = pairs[start]
                try:
                    out.append(self.dump_entry(key, value, cache_type))
                except Exception as error:  # (name the key: the format's message may not)
                    error.add_note(f"while storing {key!r} in {self.folder}")
                    raise
                start += 1
                continue
            stop = start + 1
            if start == 0 and kinds.count(kind) == len(kinds):
                stop = len(kinds)  # (all of one type: the common case)
            while stop < len(pairs) and kinds[stop] is kind:
                stop += 1
            out.extend(many(self, pairs[start:stop], name))  # (whole records)
            start = stop
        return out

    def discard_files(self) -> None:
        """Remove the per-entry files named for an entry (or a batch) that failed: no index
        line will name them."""
        for path in self.made:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            except OSError:  # (a directory written by a format...)
                import shutil

                shutil.rmtree(path, ignore_errors=True)
        self.made.clear()

    def load(self, info: dict[str, tp.Any]) -> tp.Any:
        """Read a value back from its index record (dispatching on the stored ``#type``)."""
        name = info["#type"]
        if not self.options.replace:
            fast = FAST_LOADERS.get(name)
            if fast is not None:
                return fast(self, info)
        name = self.options.replace.get(name, name)
        if (
            name not in self.HANDLERS
            and self.ALIASES.get(name, name) not in self.HANDLERS
            and not ("." in name and self._find_self_dumping(name))
        ):
            raise ValueError(
                f"Entry {info.get('#key')!r} was written with the format {name!r}, which is "
                "not registered in this process: import the module that registers it "
                f"(known formats: {', '.join(sorted(self.HANDLERS))})"
            )
        handler = self.handler(name)
        fields = {k: v for k, v in info.items() if k[0] != "#"}
        return handler.__load_from_info__(self, **fields)

    def delete(self, info: dict[str, tp.Any]) -> None:
        name = info["#type"]
        if type(name) is not str:  # (a damaged index line: no format to ask)
            return
        if (
            name not in self.HANDLERS
            and self.ALIASES.get(name, name) not in self.HANDLERS
            and not ("." in name and self._find_self_dumping(name))
        ):
            # (the entry is deleted; its payload files, if any, are left to `clean orphans`)
            warnings.warn(
                f"Deleted entry {info.get('#key')!r} of format {name!r}, not registered in "
                "this process: its payload files (if any) are left in data/",
                RuntimeWarning,
                stacklevel=4,
            )
            return
        handler = self.handler(name)
        deleter = getattr(handler, "__delete_info__", None)
        if deleter is not None:
            try:
                deleter(self, **{k: v for k, v in info.items() if k[0] != "#"})
            except RECORD_ERRORS:
                problem = record_problem(info)
                if problem is None:
                    raise
                # (a damaged record: deleting the entry is what frees it of it)
                warnings.warn(
                    f"Deleted entry {info.get('#key')!r}, whose index line is damaged "
                    f"({problem}): its payload files (if any) are left in data/",
                    RuntimeWarning,
                    stacklevel=4,
                )

    # --- payload files ---------------------------------------------------------------------
    def key_path(self, suffix: str) -> Path:
        """A path owned by the current key (``data/<key stem><suffix>``)."""
        if self.key is None:
            raise RuntimeError("key_path needs a key: only available while dumping an entry")
        folder = self.folder / DATA_DIR
        ensure_folder(folder, self.permissions)
        # the writer's session and a count in the name: a file is never reused, so a stale
        # deleter (an entry deleted and written again since it read the index) can only
        # remove the file of the entry it deletes
        session = (self.session_name or "").rsplit("-", 1)[-1]
        self._key_files += 1
        unique = f"-{session}{self._key_files:x}" if session else ""
        path = folder / (key_file_stem(self.key) + unique + suffix)
        self.made.append(path)
        return path

    def key_file_record(
        self, suffix: str, writer: tp.Callable[[tp.IO[bytes]], None]
    ) -> dict[str, tp.Any]:
        """Write a per-entry file atomically; return ``{"filename": name, "#n": size}``
        (the size tells a file cut short since without reading it: presence.py)."""
        path = self.key_path(suffix)
        tmp = path.with_name(f"save-tmp-{os.urandom(6).hex()}-{path.name}")
        try:
            with open(tmp, "wb") as handle:
                writer(handle)
                size = handle.tell()
            if self.permissions is not None:
                chmod(tmp, self.permissions)
            os.replace(tmp, path)
        except BaseException:  # (a value the writer refused, a full disk: no leftover)
            tmp.unlink(missing_ok=True)
            raise
        return {"filename": f"{DATA_DIR}/{path.name}", "#n": size}

    def shared_file(self, suffix: str) -> SharedFile:
        """The current writer's append-only file with this suffix (``data/<session><suffix>``)."""
        shared = self._shared.get(suffix)
        if shared is None:
            if self.session_name is None:
                raise RuntimeError("shared_file is only available while writing")
            name = f"{DATA_DIR}/{self.session_name}{suffix}"
            shared = SharedFile(self.folder, name, self.permissions)
            self._made_shared.add(name)
            if self.batching:
                shared.start_batch()
            self._shared[suffix] = shared
        return shared

    def shared_files_there(self) -> bool:
        """Whether the shared files this session made are all still there: one removed
        since (a clean) must not be made again under its name, from offset 0, while
        readers may hold a map of the old one (they would read the old bytes)."""
        return all(os.path.exists(self.folder / name) for name in self._made_shared)

    def close_shared(self) -> None:
        while self._shared:  # (each forgotten before it is closed: never used closed)
            _, shared = self._shared.popitem()
            try:
                shared.flush()
            finally:
                shared.close()

    def close_files(self) -> None:
        """Close the shared files without writing what is queued (they were removed)."""
        while self._shared:
            _, shared = self._shared.popitem()
            shared.pending = None
            shared.close()

    def start_batch(self) -> None:
        """Buffer shared-file payloads in memory until ``flush_batch``."""
        self.made.clear()
        self.batching = True
        for shared in self._shared.values():
            shared.start_batch()

    def flush_batch(self) -> None:
        self.batching = False
        for shared in self._shared.values():
            shared.flush()

    def read_bytes(self, name: str, offset: int, length: int) -> bytes:
        if type(offset) is not int or type(length) is not int or offset < 0 or length < 0:
            # (written by hand: true read from byte 1, or cut the value to 1 byte)
            raise DamagedRecord(f"offset {offset!r:.40} and size {length!r:.40} cannot be a place")
        with open(payload_path(self.folder, name), "rb") as handle:
            handle.seek(offset)
            data = handle.read(length)
        if len(data) != length:
            raise DamagedPayload(
                f"{self.folder / name} is shorter than its index says ({offset}+{length})"
            )
        return data

    def memmap(self, name: str, end: int) -> mmap.mmap:
        """A read-only map of a shared file covering at least ``end`` bytes."""
        current = self._maps.get(name)
        if current is not None and len(current) >= end:
            return current
        with self._locked():
            current = self._maps.get(name)
            if current is not None and len(current) >= end:
                self._maps.move_to_end(name)
                return current
            with open(payload_path(self.folder, name), "rb") as handle:
                mapped = None  # (mmap refuses an empty file: checked first)
                if os.fstat(handle.fileno()).st_size >= end:
                    mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            if mapped is None or len(mapped) < end:
                raise DamagedPayload(f"{self.folder / name} is shorter than its index says ({end})")
            self._maps[name] = mapped  # older maps stay alive while arrays view them
            if len(self._maps) > MEMMAP_ARRAY_FILE_MAX_CACHE:
                self._maps.popitem(last=False)
            return mapped

    def _locked(self) -> threading.Lock:
        """The lock of this context; a new one in a forked child (a thread of the parent
        may have held it at the fork: the child's first array read waited forever)."""
        if self._lock_fork != _FORKS[0]:
            self._lock, self._lock_fork = threading.Lock(), _FORKS[0]
        return self._lock

    def cached(self, key: str, factory: tp.Callable[[], tp.Any]) -> tp.Any:
        with self._locked():
            if key not in self._memo:
                self._memo[key] = factory()
            return self._memo[key]

    def invalidate(self, key: str) -> None:
        with self._locked():
            self._memo.pop(key, None)
            self._maps.pop(key, None)


SIZE_FIELD = "#n"  # (a per-entry file's size: see key_file_record)


def _check_fields(name: str, out: dict[str, tp.Any]) -> None:
    if "" in out:  # (every read of the entry would fail)
        raise ValueError(f"Format {name} returned a field with an empty name in {out!r:.200}")
    # (names starting with "#" are exca's: #key, #type, #meta... a read drops them; the
    # size key_file_record gives is kept with the record. Names that are not strings are
    # left to the JSON encoder's error)
    reserved = sorted(
        k for k in out if type(k) is str and k.startswith("#") and not _file_size(k, out)
    )
    if reserved:
        raise ValueError(
            f"Format {name} returned fields {reserved} in {out!r:.200}: names starting "
            "with '#' are reserved (#key, #type and exca's own): rename them"
        )


def _file_size(field: str, out: dict[str, tp.Any]) -> bool:
    """Whether a field is the size key_file_record gives with its file ("filename", or
    "pickle" in an Auto record); a format's own '#n' would be dropped on read: refused as
    the other '#' names."""
    return (
        field == SIZE_FIELD and type(out[field]) is int and ("filename" in out or "pickle" in out)
    )


_SELF_DUMPING: dict[type, bool] = {}


def _dumps_itself(klass: type) -> bool:
    """True when ``__dump_info__`` is a plain method: values of the class dump themselves."""
    known = _SELF_DUMPING.get(klass)
    if known is None:
        raw = next(
            b.__dict__["__dump_info__"] for b in klass.__mro__ if "__dump_info__" in b.__dict__
        )
        known = _SELF_DUMPING[klass] = not isinstance(raw, classmethod | staticmethod)
    return known


def delete_file(ctx: DumpContext, name: str) -> None:
    """Remove a payload file of the folder (gone already: nothing to do)."""
    try:
        path = payload_path(ctx.folder, name)
    except DamagedPayload as error:  # (the entry goes; nothing outside the cache does)
        logger.warning("%s", error)
        return
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def dumps_pickle(value: tp.Any) -> bytes:
    """Pickle, falling back to cloudpickle for classes that cannot be found by name."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        buffer = io.BytesIO()
        _no_files_pickler()(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
        return buffer.getvalue()


@functools.cache
def _no_files_pickler() -> type[pickle.Pickler]:
    """cloudpickle, except for open files: it pickles them as a StringIO of their content,
    and the cache would give that back for the file (silently another object). In-memory
    buffers pickle as themselves."""
    import cloudpickle

    class NoFilesPickler(cloudpickle.Pickler):
        def reducer_override(self, obj: tp.Any) -> tp.Any:
            if isinstance(obj, io.IOBase) and not isinstance(obj, io.BytesIO | io.StringIO):
                raise TypeError(
                    f"Cannot store an open file ({obj!r}) in a cache: return its path, or "
                    "what you read from it"
                )
            return super().reducer_override(obj)

    return NoFilesPickler
