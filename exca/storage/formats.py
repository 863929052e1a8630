"""How values are written to and read from a cache folder, one format per value type.

A format ("handler") is a class registered on ``DumpContext`` with
``__dump_info__(ctx, value) -> dict`` (write the payload, return what is needed to read
it back; small values can live in that dict, i.e. inline in the index line) and
``__load_from_info__(ctx, **info) -> value``; ``__delete_info__(ctx, **info)`` removes
payload files owned by one entry. Loading always dispatches on the stored ``#type``.
"""

from __future__ import annotations

import base64
import hashlib
import math
import mmap
import os
import pickle
import sys
import threading
import traceback
import typing as tp
import warnings
from collections import OrderedDict
from pathlib import Path

import orjson

from .files import chmod, finish_write, make_folder
from .modules import imported

INLINE_MAX_BYTES = 512
INLINE_PICKLE_MAX_BYTES = 2048  # task results pickled smaller than this live in the index
BUFFER_FLUSH_BYTES = 16 << 20  # batched payload bytes kept in memory before writing
MEMMAP_ARRAY_FILE_MAX_CACHE = 1024  # memory maps kept open per reader
ALIGNMENT = 64  # byte alignment of arrays in shared data files
DATA_DIR = "data"
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
_ORJSON_OPTIONS |= orjson.OPT_PASSTHROUGH_SUBCLASS


def _refuse(value: tp.Any) -> tp.Any:
    raise TypeError(f"not plain json: {type(value).__name__}")


def plain_json(value: tp.Any) -> bytes | None:
    """JSON bytes of a value that reads back equal, else None (tuples come back as lists).

    dataclasses, datetimes, enums, UUIDs, str/int/dict subclasses and non-finite floats
    would come back changed, so they are refused (orjson writes enums and UUIDs as their
    values, and NaN as null).
    """
    try:
        if not _plain_types(value):
            return None
        data = orjson.dumps(value, default=_refuse, option=_ORJSON_OPTIONS)
    except (TypeError, orjson.JSONEncodeError, RecursionError):  # (too deep for JSON)
        return None
    if b"null" in data and _has_non_finite(value):
        return None
    return data


_JSON_LEAVES = frozenset({str, int, float, bool, type(None)})


def _plain_types(value: tp.Any) -> bool:
    """Whether a value is made of the exact JSON types only (plain loops: this runs for
    every small value written)."""
    kind = type(value)
    if kind in _JSON_LEAVES:
        return True
    leaves = _JSON_LEAVES
    if kind is dict:
        for key in value:
            if type(key) is not str:
                return False
        for sub in value.values():
            if type(sub) not in leaves and not _plain_types(sub):
                return False
        return True
    if kind is list or kind is tuple:
        for sub in value:  # noqa: SIM110 (a loop: twice as fast as all() of a generator)
            if type(sub) not in leaves and not _plain_types(sub):
                return False
        return True
    return False


def _has_non_finite(value: tp.Any) -> bool:
    if isinstance(value, float):
        return value != value or value in (float("inf"), float("-inf"))
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(v) for v in value)
    return False


def _utf8(text: str) -> bool:
    """Whether a str can be written as UTF-8 (JSON): not when it holds lone surrogates."""
    try:
        text.encode("utf8")
    except UnicodeEncodeError:
        return False
    return True


def key_file_stem(key: str) -> str:
    """A file-name stem for a key: safe characters only, never a path, unique by digest."""
    digest = hashlib.md5(key.encode("utf8")).hexdigest()[:8]
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "-_=,.") else "-" for c in key)
    cleaned = cleaned.lstrip(".-") or "key"
    if len(cleaned) > 80:
        cleaned = cleaned[:40] + "..." + cleaned[-40:]
    return f"{cleaned}-{digest}"


class SharedFile:
    """An append-only data file owned by one writer session (never truncated)."""

    def __init__(self, folder: Path, name: str, permissions: int | None) -> None:
        self.name = name  # relative to the cache folder
        path = folder / name
        if not path.parent.exists():
            make_folder(path.parent, permissions)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        self.size = os.fstat(self.fd).st_size
        self.pending: list[tp.Any] | None = None  # batched writes: buffers not written yet
        self.pending_bytes = 0
        if permissions is not None and self.size == 0:
            chmod(path, permissions)

    def append(self, data: tp.Any, tail: bytes = b"", align: int = 1) -> int:
        """Write data (then tail) contiguously, after padding to `align`; return data's offset."""
        if self.pending is not None:
            return self._buffer(data, memoryview(data).nbytes, tail, align)
        pad = (-self.size) % align
        nbytes = memoryview(data).nbytes
        if pad or tail:
            buffers = [b"\0" * pad, data, tail] if pad else [data, tail]
            total = pad + nbytes + len(tail)
            self.write(buffers, total)
        else:
            total = nbytes
            self.write([data], total)
        offset = self.size + pad
        self.size += total
        return offset

    def write(self, buffers: list[tp.Any], total: int) -> None:
        """Append the buffers whole; if that fails (disk full...), the next offsets still
        match the file: no later entry can point into the bytes of a failed one."""
        try:
            _write_all(self.fd, buffers, total)
        except BaseException:
            self.resync()
            raise

    def resync(self) -> None:
        """Take the file's real size (after a failed write, some bytes may be in it)."""
        self.pending = None
        self.size = os.fstat(self.fd).st_size

    def _buffer(self, data: tp.Any, nbytes: int, tail: bytes, align: int) -> int:
        """Queue buffers for one writev at flush time (no copy of the payload)."""
        pending = self.pending
        assert pending is not None
        pad = (-self.size) % align
        if pad:
            pending.append(_ZEROS[:pad])
        offset = self.size + pad
        pending.append(data)
        if tail:
            pending.append(tail)
        self.size = offset + nbytes + len(tail)
        self.pending_bytes += pad + nbytes + len(tail)
        if self.pending_bytes > BUFFER_FLUSH_BYTES:
            self.flush()
            self.start_batch()
        return offset

    def start_batch(self) -> None:
        if self.pending is None:
            self.pending = []
            self.pending_bytes = 0

    def flush(self) -> None:
        """Write queued buffers (a batch's payloads go to disk before its index lines)."""
        pending = self.pending
        self.pending = None
        if not pending:
            return
        if len(pending) <= _IOV_MAX:  # one writev (the byte count is known)
            self.write(pending, self.pending_bytes)
            return
        for start in range(0, len(pending), _IOV_MAX):
            part = pending[start : start + _IOV_MAX]
            self.write(part, sum(memoryview(b).nbytes for b in part))

    def append_array(self, array: tp.Any, align: int) -> int:
        """Append a C-contiguous array's bytes (padded to `align`); return their offset."""
        nbytes = array.nbytes
        if not array.ndim:  # 0-d arrays do not export a buffer os.write accepts
            array = array.reshape(1)
        if self.pending is not None:
            return self._buffer(array, nbytes, b"", align)
        pad = (-self.size) % align
        self.write([_ZEROS[:pad], array] if pad else [array], pad + nbytes)
        offset = self.size + pad
        self.size += pad + nbytes
        return offset

    def close(self) -> None:
        os.close(self.fd)


_ZEROS = bytes(ALIGNMENT)
_IOV_MAX = 1024  # buffers per writev call (the Linux limit)
_DTYPE_STR: dict[tp.Any, str] = {}
# One shared tuple per array shape in index records. A record (dict) holding only atomic
# values and tuples the GC already untracked is not tracked itself: then 10k cached
# entries cost the cyclic GC nothing (a fresh shape tuple per record made each record,
# and its entry tuple, long-lived tracked objects: ~1/3 of the time of `cd[k] = v`).
_SHAPES: dict[tuple[int, ...], tuple[int, ...]] = {}


def _shared_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    found = _SHAPES.get(shape)
    if found is None:
        if len(_SHAPES) >= 10_000:
            _SHAPES.clear()
        found = _SHAPES[shape] = shape
    return found


_NP: tp.Any = None


def _numpy() -> tp.Any:
    global _NP
    import numpy

    _NP = numpy
    return numpy


def _write_all(fd: int, buffers: list[tp.Any], total: int) -> None:
    written = os.writev(fd, buffers) if len(buffers) > 1 else os.write(fd, buffers[0])
    if written != total:
        finish_write(fd, buffers, written)


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

    def __init__(
        self,
        folder: Path | str,
        key: str | None = None,
        options: DumpOptions | None = None,
        permissions: int | None = 0o777,
        session_name: str | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.key = key
        self.options = options or DumpOptions()
        self.permissions = permissions
        self.session_name = session_name
        self._shared: dict[str, SharedFile] = {}
        self._made_shared: set[str] = set()  # shared files this session created
        self._memo: dict[str, tp.Any] = {}
        self._maps: OrderedDict[str, mmap.mmap] = OrderedDict()
        self._lock = threading.Lock()
        self._dispatch_memo: dict[tuple[type, str | None], tuple[str, tp.Any, bool]] = {}
        self._by_type: dict[type, tuple[str, tp.Any, bool]] = {}  # (cache_type None: hot path)
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
            known = ", ".join(sorted(cls.HANDLERS))
            raise ValueError(f"Unknown cache_type {name!r}; known formats: {known}") from None

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
        return found

    def dump(self, value: tp.Any, cache_type: str | None = None) -> dict[str, tp.Any]:
        """Write a value; return its info dict (with ``#type``), e.g. for nested values."""
        name, handler, itself = self._dispatch(type(value), cache_type)
        out = value.__dump_info__(self) if itself else handler.__dump_info__(self, value)
        if "#key" in out or "#type" in out:
            raise ValueError(f"Format {name} returned reserved keys #key/#type in {out}")
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
        if handler is MemmapArray:  # the hot path of `cd[key] = array`
            info = MemmapArray.entry(self, key, name, value)
            if info is not None:
                return info
        made = self.made
        if made and not self.batching:
            made.clear()  # (the files of the previous entry: it is written)
        try:
            out = value.__dump_info__(self) if itself else handler.__dump_info__(self, value)
            info = {"#key": key, "#type": name, **out}
            if len(info) != len(out) + 2:  # (cheaper than looking the two up in out)
                raise ValueError(f"Format {name} returned reserved keys #key/#type in {out}")
            if "" in out:
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
        at once (``__dump_many__``) are dumped together."""
        out: list[dict[str, tp.Any]] = []
        start = 0
        while start < len(pairs):
            kind = type(pairs[start][1])
            name, handler, itself = self._dispatch(kind, cache_type)
            many = None if itself else getattr(handler, "__dump_many__", None)
            if many is None:
                key, value = pairs[start]
                out.append(self.dump_entry(key, value, cache_type))
                start += 1
                continue
            stop = start + 1
            while stop < len(pairs) and type(pairs[stop][1]) is kind:
                stop += 1
            run = pairs[start:stop]
            for (key, _), fields in zip(run, many(self, [v for _, v in run])):
                out.append({"#key": key, "#type": name, **fields})
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
            deleter(self, **{k: v for k, v in info.items() if k[0] != "#"})

    # --- payload files ---------------------------------------------------------------------
    def key_path(self, suffix: str) -> Path:
        """A path owned by the current key (``data/<key stem><suffix>``)."""
        if self.key is None:
            raise RuntimeError("key_path needs a key: only available while dumping an entry")
        folder = self.folder / DATA_DIR
        if not folder.exists():
            make_folder(folder, self.permissions)
        # the writer's session and a count in the name: a file is never reused, so a stale
        # deleter (an entry deleted and written again since it read the index) can only
        # remove the file of the entry it deletes
        session = (self.session_name or "").rsplit("-", 1)[-1]
        self._key_files += 1
        unique = f"-{session}{self._key_files:x}" if session else ""
        path = folder / (key_file_stem(self.key) + unique + suffix)
        self.made.append(path)
        return path

    def write_key_file(self, suffix: str, writer: tp.Callable[[tp.IO[bytes]], None]) -> str:
        """Write a per-entry file atomically (temporary name, then rename); return its name."""
        path = self.key_path(suffix)
        tmp = path.with_name(f"save-tmp-{os.urandom(6).hex()}-{path.name}")
        try:
            with open(tmp, "wb") as handle:
                writer(handle)
            if self.permissions is not None:
                chmod(tmp, self.permissions)
            os.replace(tmp, path)
        except BaseException:  # (a value the writer refused, a full disk: no leftover)
            tmp.unlink(missing_ok=True)
            raise
        return f"{DATA_DIR}/{path.name}"

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
        for shared in self._shared.values():
            shared.flush()
            shared.close()
        self._shared.clear()

    def close_files(self) -> None:
        """Close the shared files without writing what is queued (they were removed)."""
        for shared in self._shared.values():
            shared.pending = None
            shared.close()
        self._shared.clear()

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
        with open(self.folder / name, "rb") as handle:
            handle.seek(offset)
            data = handle.read(length)
        if len(data) != length:
            raise OSError(
                f"{self.folder / name} is shorter than its index says ({offset}+{length})"
            )
        return data

    def memmap(self, name: str, end: int) -> mmap.mmap:
        """A read-only map of a shared file covering at least ``end`` bytes."""
        current = self._maps.get(name)
        if current is not None and len(current) >= end:
            return current
        with self._lock:
            current = self._maps.get(name)
            if current is not None and len(current) >= end:
                self._maps.move_to_end(name)
                return current
            with open(self.folder / name, "rb") as handle:
                mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            if len(mapped) < end:
                raise OSError(f"{self.folder / name} is shorter than its index says ({end})")
            self._maps[name] = mapped  # older maps stay alive while arrays view them
            if len(self._maps) > MEMMAP_ARRAY_FILE_MAX_CACHE:
                self._maps.popitem(last=False)
            return mapped

    def cached(self, key: str, factory: tp.Callable[[], tp.Any]) -> tp.Any:
        with self._lock:
            if key not in self._memo:
                self._memo[key] = factory()
            return self._memo[key]

    def invalidate(self, key: str) -> None:
        with self._lock:
            self._memo.pop(key, None)
            self._maps.pop(key, None)


def _check_fields(name: str, out: dict[str, tp.Any]) -> None:
    if "" in out:  # (every read of the entry would fail)
        raise ValueError(f"Format {name} returned a field with an empty name in {out!r:.200}")


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


def _delete_file(ctx: DumpContext, name: str) -> None:
    try:
        os.remove(ctx.folder / name)
    except FileNotFoundError:
        pass


# --- built-in formats -----------------------------------------------------------------------
@DumpContext.register(default_for="numpy.ndarray")
class MemmapArray:
    """Arrays appended to the writer's shared ``.data`` file; read back as read-only views."""

    @classmethod
    def __dump_info__(cls, ctx: DumpContext, value: tp.Any) -> dict[str, tp.Any]:
        np = _NP or _numpy()
        array = value
        if type(array) is not np.ndarray or not array.flags.c_contiguous:
            if type(array) is not np.ndarray:
                _refuse_non_array(value, "MemmapArray")
            array = np.ascontiguousarray(value).reshape(np.shape(value))
        dtype = array.dtype
        dtype_str = _DTYPE_STR.get(dtype)
        if dtype_str is None:
            if dtype.hasobject:
                raise TypeError(
                    f"Cannot store an object array (dtype {dtype}) as MemmapArray: "
                    "use cache_type='Pickle'"
                )
            dtype_str = _DTYPE_STR[dtype] = _dtype_code(dtype)
        shared = ctx._shared.get(".data") or ctx.shared_file(".data")
        offset = shared.append_array(array, ALIGNMENT)
        shape = array.shape
        shape = _SHAPES.get(shape) or _shared_shape(shape)
        return {"f": shared.name, "o": offset, "d": dtype_str, "s": shape}

    @staticmethod
    def entry(ctx: DumpContext, key: str, name: str, array: tp.Any) -> dict[str, tp.Any] | None:
        """The whole index record of one array, written now, in one call: for the common
        case (a C-contiguous ndarray of a known dtype, the data file open, not batching,
        its end aligned), else None (``__dump_info__`` handles everything)."""
        shared = ctx._shared.get(".data")
        if (
            shared is None
            or shared.pending is not None
            or type(array) is not (_NP or _numpy()).ndarray
            or not array.flags.c_contiguous
        ):
            return None
        dtype_str = _DTYPE_STR.get(array.dtype)
        shape = array.shape
        offset = shared.size
        if dtype_str is None or not shape or offset % ALIGNMENT:
            return None
        nbytes = array.nbytes
        try:
            written = os.write(shared.fd, array)
            if written != nbytes:  # (a signal, or an array over ~2 GiB)
                finish_write(shared.fd, [array], written)
        except BaseException:
            shared.resync()
            raise
        shared.size = offset + nbytes
        shape = _SHAPES.get(shape) or _shared_shape(shape)
        return {
            "#key": key,
            "#type": name,
            "f": shared.name,
            "o": offset,
            "d": dtype_str,
            "s": shape,
        }

    @classmethod
    def __dump_many__(cls, ctx: DumpContext, values: list[tp.Any]) -> list[dict[str, tp.Any]]:
        """The same as one ``__dump_info__`` per value, with less per-value overhead."""
        np = _NP or _numpy()
        shared = ctx._shared.get(".data") or ctx.shared_file(".data")
        name = shared.name
        append = shared.append_array
        ndarray = np.ndarray
        out = []
        pending = shared.pending
        for value in values:
            array = value
            if type(array) is not ndarray or not array.flags.c_contiguous:
                if type(value) is not ndarray:
                    _refuse_non_array(value, "MemmapArray")  # (as one by one)
                array = np.ascontiguousarray(value).reshape(np.shape(value))
            dtype = array.dtype
            dtype_str = _DTYPE_STR.get(dtype)
            if dtype_str is None:
                out.append(cls.__dump_info__(ctx, array))  # checks object dtypes
                pending = shared.pending
                continue
            nbytes = array.nbytes
            if (
                pending is not None
                and array.ndim
                and not shared.size % ALIGNMENT
                and shared.pending_bytes + nbytes <= BUFFER_FLUSH_BYTES
            ):  # the common case of append_array, inlined: queue it, aligned already
                offset = shared.size
                pending.append(array)
                shared.size += nbytes
                shared.pending_bytes += nbytes
            else:
                offset = append(array, ALIGNMENT)
                pending = shared.pending
            shape = array.shape
            shape = _SHAPES.get(shape) or _shared_shape(shape)
            out.append({"f": name, "o": offset, "d": dtype_str, "s": shape})
        return out

    @classmethod
    def __load_from_info__(cls, ctx: DumpContext, f: str, o: int, d: str, s: list[int]) -> tp.Any:
        return _load_memmap(ctx, {"f": f, "o": o, "d": d, "s": s})


_DTYPES: dict[str, tp.Any] = {}


def _dtype_code(dtype: tp.Any) -> str:
    """How an index record names a dtype: ``dtype.str`` ("<f4"), or for a structured
    dtype the JSON text of its ``.npy`` description (its ``str`` is only "|V12")."""
    if dtype.fields is None and dtype.subdtype is None:
        return str(dtype.str)
    from numpy.lib import format as npy_format

    return orjson.dumps(npy_format.dtype_to_descr(dtype)).decode("utf8")


def _dtype_of(code: str) -> tp.Any:
    np = _NP or _numpy()
    if code.startswith("["):
        from numpy.lib import format as npy_format

        dtype = npy_format.descr_to_dtype(_descr_from_json(orjson.loads(code)))
    else:
        dtype = np.dtype(code)
    _DTYPES[code] = dtype
    return dtype


def _descr_from_json(descr: tp.Any) -> tp.Any:
    """A ``.npy`` dtype description back from JSON (which made its tuples lists)."""
    if not isinstance(descr, list):
        return descr
    out = []
    for name, fmt, *shape in descr:
        name = tuple(name) if isinstance(name, list) else name
        out.append((name, _descr_from_json(fmt), *(tuple(dims) for dims in shape)))
    return out


def _refuse_masked(value: tp.Any, name: str) -> None:
    if type(value).__module__.startswith("numpy.ma"):
        raise TypeError(
            f"Cannot store a masked array as {name}: its mask would be lost; use "
            "cache_type='Pickle' (or leave cache_type unset: masked arrays are pickled)"
        )


def _refuse_non_array(value: tp.Any, name: str) -> None:
    """Array formats store numpy arrays (and np.memmap) only: anything else would come
    back as a plain array (5 as a 0-d array, [1, "a"] as strings, a str Enum cut to its
    first characters, a matrix or a namedtuple as an ndarray) instead of itself."""
    np = _NP or _numpy()
    kind = type(value)
    if kind is np.ndarray or isinstance(value, np.memmap):
        return
    _refuse_masked(value, name)
    if isinstance(value, np.ndarray):
        use = "Pickle"  # (an ndarray subclass: what it adds would be lost)
    elif isinstance(value, np.generic):
        use = "NumpyScalar"
    else:
        use = DumpContext.default_name(kind)
    what = kind.__qualname__
    if kind.__module__ != "builtins":
        what = f"{kind.__module__}.{what}"
    raise TypeError(
        f"cache_type {name!r} stores numpy arrays, got {what}"
        f" (it would read back as a plain numpy array): use cache_type={use!r} (or leave "
        "cache_type unset), or convert the value yourself (np.asarray(value))"
    )


def _load_memmap(ctx: DumpContext, info: dict[str, tp.Any]) -> tp.Any:
    np = _NP or _numpy()
    code = info["d"]
    dtype = _DTYPES.get(code)
    if dtype is None:
        dtype = _dtype_of(code)
    shape = info["s"]
    count = math.prod(shape)
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    offset = info["o"]
    mapped = ctx.memmap(info["f"], offset + count * dtype.itemsize)
    return np.frombuffer(mapped, dtype, count, offset).reshape(shape)


def load_memmap_runs(ctx: DumpContext, infos: list[dict[str, tp.Any]]) -> list[tp.Any]:
    """Arrays of many MemmapArray records: runs of equal dtype and shape at a regular
    stride in one file come from one strided view (one array object per item, no per-item
    ``frombuffer``); anything else is loaded one by one."""
    np = _NP or _numpy()
    out: list[tp.Any] = []
    count = len(infos)
    start = 0
    while start < count:
        first = infos[start]
        file, shape, code, offset = first["f"], first["s"], first["d"], first["o"]
        stop = start + 1
        if stop < count:
            step = infos[stop]["o"] - offset
            while (
                stop < count
                and infos[stop]["o"] == offset + (stop - start) * step
                and infos[stop]["f"] == file
                and infos[stop]["d"] == code
                and infos[stop]["s"] == shape
            ):
                stop += 1
        dtype = _DTYPES.get(code)
        if dtype is None:
            dtype = _dtype_of(code)
        size = math.prod(shape) * dtype.itemsize
        # (0-d arrays one by one: items of a strided view would be numpy scalars)
        if stop - start < 3 or size == 0 or step < size or not shape:
            out.append(_load_memmap(ctx, first))
            start += 1
            continue
        mapped = ctx.memmap(file, offset + step * (stop - start - 1) + size)
        strides = (step, *_c_strides(shape, dtype.itemsize))
        view = np.ndarray((stop - start, *shape), dtype, mapped, offset, strides)
        out.extend(view)
        start = stop
    return out


def _c_strides(shape: list[int], itemsize: int) -> list[int]:
    strides = []
    running = itemsize
    for dim in reversed(shape):
        strides.append(running)
        running *= dim
    return strides[::-1]


def _fresh(value: tp.Any) -> tp.Any:
    """A copy of an inline dict/list: never hand out the index's own (mutable) object."""
    if type(value) is dict or type(value) is list:
        return orjson.loads(orjson.dumps(value))
    return value


def _load_inline(ctx: DumpContext, info: dict[str, tp.Any]) -> tp.Any:
    if "p" in info and info["#type"] == "Result":
        return pickle.loads(base64.b64decode(info["p"]))
    if "v" in info and "f" not in info:
        return _fresh(info["v"])
    handler = DumpContext.handler(info["#type"])
    return handler.__load_from_info__(ctx, **{k: v for k, v in info.items() if k[0] != "#"})


# loaders that read an index record directly (no keyword unpacking): the hot read paths
FAST_LOADERS: dict[str, tp.Callable[[DumpContext, dict[str, tp.Any]], tp.Any]] = {
    "MemmapArray": _load_memmap,
    "Json": _load_inline,
    "Auto": _load_inline,
    "Result": _load_inline,
    "Text": _load_inline,
}


@DumpContext.register
class NumpyArray:
    """One ``.npy`` file per entry, read back fully into memory."""

    @classmethod
    def __dump_info__(cls, ctx: DumpContext, value: tp.Any) -> dict[str, tp.Any]:
        import numpy as np

        if type(value) is not np.ndarray:
            _refuse_non_array(value, "NumpyArray")
        array = np.asarray(value)
        if array.dtype.hasobject:  # np.save would pickle it, and np.load refuse to read it
            raise TypeError(
                f"Cannot store an object array (dtype {array.dtype}) as NumpyArray: "
                "use cache_type='Pickle'"
            )
        name = ctx.write_key_file(".npy", lambda handle: np.save(handle, array))
        return {"filename": name}

    @classmethod
    def __load_from_info__(cls, ctx: DumpContext, filename: str) -> tp.Any:
        import numpy as np

        return np.load(ctx.folder / filename, allow_pickle=False)

    @classmethod
    def __delete_info__(cls, ctx: DumpContext, filename: str) -> None:
        _delete_file(ctx, filename)


def dumps_pickle(value: tp.Any) -> bytes:
    """Pickle, falling back to cloudpickle for classes that cannot be found by name."""
    try:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, AttributeError, TypeError):
        import cloudpickle

        data: bytes = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        return data


@DumpContext.register(default_for="numpy.generic")
class NumpyScalar:
    """A numpy scalar (the numpy.float64 of a mean...) in the index line: its dtype and
    bytes, read back as the same numpy type (not a file per value, not a python float)."""

    @classmethod
    def __dump_info__(cls, ctx: DumpContext, value: tp.Any) -> dict[str, tp.Any]:
        np = imported("numpy")
        if np is None or not isinstance(value, np.generic):
            # (an array would be stored as its first element; a python float has no dtype)
            raise TypeError(
                f"cache_type 'NumpyScalar' stores numpy scalars (np.float64(1.5)...), got "
                f"{type(value).__name__}: convert it (np.float64(x)) or use another cache_type"
            )
        dtype = value.dtype
        if dtype.hasobject or dtype.fields is not None or dtype.kind in "SUV":
            return {"p": base64.b64encode(dumps_pickle(value)).decode("ascii")}
        return {"d": dtype.str, "b": base64.b64encode(value.tobytes()).decode("ascii")}

    @classmethod
    def __load_from_info__(
        cls, ctx: DumpContext, d: str = "", b: str = "", p: str | None = None
    ) -> tp.Any:
        if p is not None:
            return pickle.loads(base64.b64decode(p))
        import numpy as np

        return np.frombuffer(base64.b64decode(b), dtype=np.dtype(d))[0]


@DumpContext.register
class Pickle:
    """One ``.pkl`` file per entry."""

    @classmethod
    def __dump_info__(cls, ctx: DumpContext, value: tp.Any) -> dict[str, tp.Any]:
        data = dumps_pickle(value)

        def write(handle: tp.IO[bytes]) -> None:
            handle.write(data)

        return {"filename": ctx.write_key_file(".pkl", write)}

    @classmethod
    def __load_from_info__(cls, ctx: DumpContext, filename: str) -> tp.Any:
        with open(ctx.folder / filename, "rb") as handle:
            return pickle.load(handle)

    @classmethod
    def __delete_info__(cls, ctx: DumpContext, filename: str) -> None:
        _delete_file(ctx, filename)


def _dump_text_like(ctx: DumpContext, data: bytes, suffix: str) -> dict[str, tp.Any]:
    shared = ctx.shared_file(suffix)
    # the trailing newline keeps the shared text/jsonl files readable by eye
    return {"f": shared.name, "o": shared.append(data, tail=b"\n"), "n": len(data)}


@DumpContext.register
class Json:
    """JSON: inline in the index line when small, else in the writer's shared jsonl file."""

    @classmethod
    def __dump_info__(cls, ctx: DumpContext, value: tp.Any) -> dict[str, tp.Any]:
        data = plain_json(value)
        if data is None:
            raise TypeError(
                f"Value of type {type(value).__name__} does not read back equal from JSON "
                "(NaN, non-str keys, custom types): use cache_type='Pickle' or 'Auto'"
            )
        if len(data) <= INLINE_MAX_BYTES:
            return {"v": orjson.Fragment(data)}
        return _dump_text_like(ctx, data, "-data.jsonl")

    @classmethod
    def __load_from_info__(
        cls,
        ctx: DumpContext,
        v: tp.Any = None,
        f: str | None = None,
        o: int = 0,
        n: int = 0,
    ) -> tp.Any:
        if f is None:
            return _fresh(v)
        return orjson.loads(ctx.read_bytes(f, o, n))


@DumpContext.register(default_for=str)
class Text:
    """Strings: inline when small, else in the writer's shared text file."""

    @classmethod
    def __dump_info__(cls, ctx: DumpContext, value: str) -> dict[str, tp.Any]:
        if not isinstance(value, str):
            raise TypeError(f"Text format stores str values, got {type(value).__name__}")
        try:
            data = value.encode("utf8")
        except UnicodeEncodeError:  # lone surrogates (a file name from os.listdir...):
            # not JSON, so never inline; stored as the bytes "surrogatepass" gives back
            info = _dump_text_like(ctx, value.encode("utf8", "surrogatepass"), "-data.txt")
            return {**info, "s": 1}
        if len(data) <= INLINE_MAX_BYTES:
            return {"v": value}
        return _dump_text_like(ctx, data, "-data.txt")

    @classmethod
    def __load_from_info__(
        cls,
        ctx: DumpContext,
        v: str | None = None,
        f: str | None = None,
        o: int = 0,
        n: int = 0,
        s: int = 0,
    ) -> str:
        if f is None:
            return v or ""
        return ctx.read_bytes(f, o, n).decode("utf8", "surrogatepass" if s else "strict")


_AUTO_TAG = "#type"


@DumpContext.register(default_for=dict)
class Auto:
    """Plain JSON when possible; registered leaves (arrays...) dumped with their own format
    inside the JSON structure; anything else pickled. Tuples come back as lists."""

    @classmethod
    def __dump_info__(cls, ctx: DumpContext, value: tp.Any) -> dict[str, tp.Any]:
        data = plain_json(value)
        if data is not None:
            if len(data) <= INLINE_MAX_BYTES:
                return {"v": orjson.Fragment(data)}
            return _dump_text_like(ctx, data, "-data.jsonl")
        try:
            walked = cls._walk(ctx, value)
        except _NotJsonable:
            warnings.warn(
                f"Auto format: {type(value).__name__} value is not JSON-serializable, pickling it "
                "(use cache_type='Pickle' or 'AutoPickle' to silence this)",
                DeprecationWarning,
                stacklevel=4,
            )
            return {"pickle": Pickle.__dump_info__(ctx, value)["filename"]}
        return {"tree": walked}

    @classmethod
    def _walk(cls, ctx: DumpContext, value: tp.Any, depth: int = 0) -> tp.Any:
        # exact types only: a subclass (numpy.float64, an Enum, a namedtuple...) would not
        # come back as itself from JSON, or not be JSON at all
        kind = type(value)
        if kind is str:
            if not value.isascii() and not _utf8(value):
                raise _NotJsonable  # (a file name decoded with surrogateescape: pickled)
            return value
        if value is None or kind is bool:
            return value
        if kind is int:
            if not _JSON_INT_MIN <= value <= _JSON_INT_MAX:
                raise _NotJsonable
            return value
        if kind is float:
            if value != value or value in (float("inf"), float("-inf")):
                raise _NotJsonable
            return value
        if (kind is dict or kind is list or kind is tuple) and depth >= _TREE_MAX_DEPTH:
            raise _NotJsonable  # (orjson refuses deeper index records)
        if kind is dict:
            if _AUTO_TAG in value:
                raise ValueError(f"{_AUTO_TAG!r} is a reserved key in values of the Auto format")
            if not all(type(k) is str and (k.isascii() or _utf8(k)) for k in value):
                raise _NotJsonable
            return {k: cls._walk(ctx, v, depth + 1) for k, v in value.items()}
        if kind is list or kind is tuple:
            return [cls._walk(ctx, v, depth + 1) for v in value]
        name = DumpContext.default_name(type(value))
        if name in ("Auto", "AutoPickle"):
            raise _NotJsonable
        return ctx.dump(value, cache_type=name)

    @classmethod
    def __load_from_info__(
        cls,
        ctx: DumpContext,
        v: tp.Any = None,
        f: str | None = None,
        o: int = 0,
        n: int = 0,
        tree: tp.Any = None,
        pickle: str | None = None,
    ) -> tp.Any:
        if pickle is not None:
            return Pickle.__load_from_info__(ctx, pickle)
        if tree is not None:
            return cls._unwalk(ctx, tree)
        return Json.__load_from_info__(ctx, v=v, f=f, o=o, n=n)

    @classmethod
    def _unwalk(cls, ctx: DumpContext, tree: tp.Any) -> tp.Any:
        if isinstance(tree, dict):
            if _AUTO_TAG in tree:
                return ctx.load(tree)
            return {k: cls._unwalk(ctx, v) for k, v in tree.items()}
        if isinstance(tree, list):
            return [cls._unwalk(ctx, v) for v in tree]
        return tree

    @classmethod
    def __delete_info__(cls, ctx: DumpContext, **info: tp.Any) -> None:
        if info.get("pickle"):
            _delete_file(ctx, info["pickle"])
        if info.get("tree") is not None:
            cls._delete_tree(ctx, info["tree"])

    @classmethod
    def _delete_tree(cls, ctx: DumpContext, tree: tp.Any) -> None:
        """The payloads of values stored with their own format inside the structure."""
        if isinstance(tree, dict):
            if _AUTO_TAG in tree:
                ctx.delete(tree)
                return
            for sub in tree.values():
                cls._delete_tree(ctx, sub)
        elif isinstance(tree, list):
            for sub in tree:
                cls._delete_tree(ctx, sub)


_JSON_INT_MIN, _JSON_INT_MAX = -(2**63), 2**64 - 1  # what orjson writes
# containers nested in an Auto tree: orjson writes at most 254 levels, and the tree sits
# in the index record, with the records of values stored in their own format inside it
_TREE_MAX_DEPTH = 240


class _NotJsonable(Exception):
    pass


@DumpContext.register
class AutoPickle(Auto):
    """Like Auto, but pickles non-JSON values silently."""

    @classmethod
    def __dump_info__(cls, ctx: DumpContext, value: tp.Any) -> dict[str, tp.Any]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().__dump_info__(ctx, value)


@DumpContext.register
class Result:
    """Results of tasks: exact JSON scalars inline, small pickles inline (base64), larger
    ones in a pickle file (all read back as ordinary, writable objects, unlike
    memory-mapped arrays)."""

    @classmethod
    def __dump_info__(cls, ctx: DumpContext, value: tp.Any) -> dict[str, tp.Any]:
        if value is None or type(value) in (bool, int, str, float):
            data = plain_json(value)
            if data is not None and len(data) <= INLINE_MAX_BYTES:
                return {"v": orjson.Fragment(data)}
        data = dumps_pickle(value)
        if len(data) <= INLINE_PICKLE_MAX_BYTES:  # a hit then opens no payload file
            return {"p": base64.b64encode(data).decode("ascii")}

        def write(handle: tp.IO[bytes]) -> None:
            handle.write(data)

        return {"filename": ctx.write_key_file(".pkl", write)}

    @classmethod
    def __load_from_info__(
        cls,
        ctx: DumpContext,
        v: tp.Any = None,
        filename: str | None = None,
        p: str | None = None,
    ) -> tp.Any:
        if p is not None:
            return pickle.loads(base64.b64decode(p))
        if filename is None:
            return v
        return Pickle.__load_from_info__(ctx, filename)

    @classmethod
    def __delete_info__(
        cls, ctx: DumpContext, v: tp.Any = None, filename: str | None = None, p: str | None = None
    ) -> None:
        if filename is not None:
            _delete_file(ctx, filename)


class ComputationError(RuntimeError):
    """A cached error whose original exception type could not be restored."""


class CachedError:
    """An exception stored in a cache: type, message, traceback, and the exception itself
    when it pickles (so it can be re-raised with its original type)."""

    def __init__(
        self,
        type_name: str,
        message: str,
        traceback_text: str,
        exception: BaseException | None = None,
    ) -> None:
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        self.exception = exception

    @classmethod
    def from_exception(cls, exc: BaseException) -> CachedError:
        kind = type(exc)
        text = "".join(traceback.format_exception(kind, exc, exc.__traceback__))
        return cls(f"{kind.__module__}.{kind.__qualname__}", str(exc), text, exc)

    def __repr__(self) -> str:
        return f"CachedError({self.type_name}: {self.message})"

    def to_exception(self, where: str) -> BaseException:
        """The exception to raise for this cached error: the original type when it could be
        restored, with where it happened and its original traceback attached as a note."""
        import copy

        note = (
            f"exca: cached error of {where} (mode='retry' computes it again); original "
            f"traceback:\n{self.traceback_text}"
        )
        if self.exception is not None:
            try:
                exc = copy.copy(self.exception)
            except Exception:
                exc = self.exception
            exc.__notes__ = [note]
            return exc
        error = ComputationError(f"{self.type_name}: {self.message}")
        error.add_note(note)
        return error

    def __dump_info__(self, ctx: DumpContext) -> dict[str, tp.Any]:
        info: dict[str, tp.Any] = {
            "t": self.type_name,
            "m": self.message[:20_000],
            "tb": self.traceback_text[-50_000:],
        }
        if self.exception is not None:
            from . import exceptions

            data = exceptions.dumps(self.exception)
            if data is not None:
                info["p"] = base64.b64encode(data).decode("ascii")
        return info

    @classmethod
    def __load_from_info__(
        cls, ctx: DumpContext, t: str, m: str, tb: str, p: str | None = None
    ) -> CachedError:
        exception = None
        if p is not None:
            from . import exceptions

            exception = exceptions.loads(base64.b64decode(p))
        return cls(t, m, tb, exception)


DumpContext.register(CachedError, name="Error")
DumpContext.DEFAULTS[CachedError] = "Error"

# names of the reference's legacy writers: they still work, with a DeprecationWarning
LEGACY_WRITERS = {"NumpyMemmapArray": "MemmapArray", "String": "Text", "DataDict": "Auto"}
# alternative names
DumpContext.ALIASES.update(
    {
        "MemmapArrayFile": "MemmapArray",
        "PickleDump": "Pickle",
        "JsonDump": "Json",
        **LEGACY_WRITERS,
    }
)
