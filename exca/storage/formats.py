"""The built-in formats besides numpy's (arrays.py): pickle files, JSON and text (inline
in the index line when small, else in the writer's shared files), Auto (JSON with
registered leaves, pickle otherwise), task results; and the names older versions used.
See dumping.py for what a format is; importing this module registers them all."""

from __future__ import annotations

import base64
import binascii
import typing as tp
import warnings

import orjson

from .arrays import MemmapArray, NumpyArray, NumpyScalar, load_memmap_runs
from .cachederror import CachedError, ComputationError
from .dumping import (
    DATA_DIR,
    FAST_LOADERS,
    MEMMAP_ARRAY_FILE_MAX_CACHE,
    DamagedRecord,
    DumpContext,
    DumpInfo,
    DumpOptions,
    delete_file,
    dumps_pickle,
    load_pickle,
    payload_path,
)

__all__ = [
    "DATA_DIR",
    "LEGACY_WRITERS",
    "MEMMAP_ARRAY_FILE_MAX_CACHE",
    "CachedError",
    "ComputationError",
    "DumpContext",
    "DumpInfo",
    "DumpOptions",
    "MemmapArray",
    "NumpyArray",
    "NumpyScalar",
    "load_inline",
    "load_memmap_runs",
]

INLINE_MAX_BYTES = 512
INLINE_PICKLE_MAX_BYTES = 2048  # task results pickled smaller than this live in the index
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
_ORJSON_OPTIONS |= orjson.OPT_PASSTHROUGH_SUBCLASS


def _refuse(value: tp.Any) -> tp.Any:
    raise TypeError(f"not plain json: {type(value).__name__}")


def plain_json(value: tp.Any, tuples: bool = True) -> bytes | None:
    """JSON bytes of a value that reads back equal, else None (tuples come back as lists;
    ``tuples=False``: a value holding a tuple is refused too).

    dataclasses, datetimes, enums, UUIDs, str/int/dict subclasses and non-finite floats
    would come back changed, so they are refused (orjson writes enums and UUIDs as their
    values, and NaN as null).
    """
    try:
        if not _plain_types(value, _SEQUENCES if tuples else _LISTS):
            return None
        data = orjson.dumps(value, default=_refuse, option=_ORJSON_OPTIONS)
    except (TypeError, orjson.JSONEncodeError, RecursionError):  # (too deep for JSON)
        return None
    if b"null" in data and _has_non_finite(value):
        return None
    return data


_JSON_LEAVES = frozenset({str, int, float, bool, type(None)})
_SEQUENCES = frozenset({list, tuple})  # (JSON arrays)
_LISTS = frozenset({list})  # (JSON arrays that read back as what was written)


def _plain_types(value: tp.Any, sequences: frozenset[type] = _SEQUENCES) -> bool:
    """Whether a value is made of the exact JSON types only, its arrays of the
    ``sequences`` types (plain loops: this runs for every small value written)."""
    kind = type(value)
    if kind in _JSON_LEAVES:
        return True
    leaves = _JSON_LEAVES
    if kind is dict:
        for key in value:
            if type(key) is not str:
                return False
        for sub in value.values():
            if type(sub) not in leaves and not _plain_types(sub, sequences):
                return False
        return True
    if kind in sequences:
        for sub in value:  # (a loop: twice as fast as all() of a generator)
            if type(sub) not in leaves and not _plain_types(sub, sequences):
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


def fresh_copy(value: tp.Any) -> tp.Any:
    """A copy of an inline dict/list: never hand out the index's own (mutable) object."""
    if type(value) is dict or type(value) is list:
        return orjson.loads(orjson.dumps(value))
    return value


def load_inline(ctx: DumpContext, info: dict[str, tp.Any]) -> tp.Any:
    if "p" in info and info["#type"] == "Result":
        # (base64.b64decode is this call, through two Python functions: a hit's path)
        return load_pickle(binascii.a2b_base64(info["p"]))
    if "v" in info and "f" not in info:
        return fresh_copy(info["v"])
    handler = DumpContext.handler(info["#type"])
    return handler.__load_from_info__(ctx, **{k: v for k, v in info.items() if k[0] != "#"})


def load_text(ctx: DumpContext, info: dict[str, tp.Any]) -> tp.Any:
    value = info.get("v")
    if type(value) is str and "f" not in info:
        return value
    return Text.__load_from_info__(ctx, **{k: v for k, v in info.items() if k[0] != "#"})


# (the hot read paths: see dumping.FAST_LOADERS)
FAST_LOADERS.update(
    {"Json": load_inline, "Auto": load_inline, "Result": load_inline, "Text": load_text}
)
_NONE: tp.Any = object()  # (a field not in the record: "v": null is a None value)


def _no_value(name: str) -> DamagedRecord:
    return DamagedRecord(
        f"a {name} record holds its value in 'v', or its place in 'f', 'o' and 'n': "
        "this one has neither"
    )


_SHARED = {"f": str, "o": int, "n": int}  # (the fields of a payload in a shared file)


@DumpContext.register
class Pickle:
    """One ``.pkl`` file per entry."""

    _record_shapes = (("filename",),)
    _record_fields = {"filename": str}

    @classmethod
    def __dump_info__(cls, ctx: DumpContext, value: tp.Any) -> dict[str, tp.Any]:
        data = dumps_pickle(value)

        def write(handle: tp.IO[bytes]) -> None:
            handle.write(data)

        return ctx.key_file_record(".pkl", write)

    @classmethod
    def __load_from_info__(cls, ctx: DumpContext, filename: str) -> tp.Any:
        with open(payload_path(ctx.folder, filename), "rb") as handle:
            return load_pickle(handle)

    @classmethod
    def __delete_info__(cls, ctx: DumpContext, filename: str) -> None:
        delete_file(ctx, filename)


def _dump_text_like(ctx: DumpContext, data: bytes, suffix: str) -> dict[str, tp.Any]:
    shared = ctx.shared_file(suffix)
    # the trailing newline keeps the shared text/jsonl files readable by eye
    return {"f": shared.name, "o": shared.append(data, tail=b"\n"), "n": len(data)}


@DumpContext.register
class Json:
    """JSON: inline in the index line when small, else in the writer's shared jsonl file."""

    _record_shapes = (("v",), ("f", "o", "n"))
    _record_fields = _SHARED

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
        v: tp.Any = _NONE,
        f: str | None = None,
        o: int = 0,
        n: int = 0,
    ) -> tp.Any:
        if f is None:
            if v is _NONE:
                raise _no_value(cls.__name__)
            return fresh_copy(v)
        return orjson.loads(ctx.read_bytes(f, o, n))


@DumpContext.register(default_for=str)
class Text:
    """Strings: inline when small, else in the writer's shared text file."""

    _record_shapes = (("v",), ("f", "o", "n"))
    _record_fields = {"v": str, "s": int, **_SHARED}

    @classmethod
    def __dump_info__(cls, ctx: DumpContext, value: str) -> dict[str, tp.Any]:
        if not isinstance(value, str):
            raise TypeError(f"Text format stores str values, got {type(value).__name__}")
        if type(value) is not str:  # (numpy.str_, a str Enum...: read back as its text)
            value = str.__str__(value)
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
            if type(v) is not str:
                raise (
                    _no_value(cls.__name__)
                    if v is None
                    else DamagedRecord(f"the 'v' of a Text record is a str, not {type(v).__name__}")
                )
            return v
        return ctx.read_bytes(f, o, n).decode("utf8", "surrogatepass" if s else "strict")


_AUTO_TAG = "#type"


@DumpContext.register(default_for=dict)
class Auto:
    """Plain JSON when possible; registered leaves (arrays...) dumped with their own format
    inside the JSON structure, tuples tagged in it (``{"#type": "tuple", "v": [...]}``:
    they come back as tuples); anything else pickled (a namedtuple as well: it comes back
    as itself)."""

    _record_shapes = (("v",), ("f", "o", "n"), ("tree",), ("pickle",))
    _record_fields = {"pickle": str, "tuples": int, **_SHARED}

    @classmethod
    def __dump_info__(cls, ctx: DumpContext, value: tp.Any) -> dict[str, tp.Any]:
        data = plain_json(value, tuples=False)
        if data is not None:
            if len(data) <= INLINE_MAX_BYTES:
                return {"v": orjson.Fragment(data)}
            return _dump_text_like(ctx, data, "-data.jsonl")
        try:
            walked = cls._walk(ctx, value)
        except _ReservedKey:
            if plain_json(value) is None:  # (with arrays...: the tag would be misread)
                raise
            # JSON but for its tuples, a dict of it with a "#type" key: a tag of its own
            return _pickled(ctx, value)
        except _NotJsonable:
            warnings.warn(
                f"Auto format: {type(value).__name__} value is not JSON-serializable, pickling it "
                "(use cache_type='Pickle' or 'AutoPickle' to silence this)",
                DeprecationWarning,
                stacklevel=4,
            )
            return _pickled(ctx, value)
        try:
            data = orjson.dumps(walked)
        except TypeError:  # (a field of a nested record: the index line says it)
            return {"tree": walked}
        # a big tree whose only tags are tuples (no payload of its own inside): in the
        # shared jsonl file, as big JSON values (the index line stays short)
        if len(data) > INLINE_MAX_BYTES and data.count(b'"#type":') == data.count(_TUPLE_TAG):
            return {**_dump_text_like(ctx, data, "-data.jsonl"), "tuples": 1}
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
                raise _ReservedKey(f"{_AUTO_TAG!r} is a reserved key in values of the Auto format")
            if not all(type(k) is str and (k.isascii() or _utf8(k)) for k in value):
                raise _NotJsonable
            return {k: cls._walk(ctx, v, depth + 1) for k, v in value.items()}
        if kind is list:
            return [cls._walk(ctx, v, depth + 1) for v in value]
        if kind is tuple:  # (tagged: JSON would give it back as a list; two JSON levels)
            return {_AUTO_TAG: AUTO_TUPLE, "v": [cls._walk(ctx, v, depth + 2) for v in value]}
        name = DumpContext.default_name(type(value))
        if name in ("Auto", "AutoPickle"):
            raise _NotJsonable
        return ctx.dump(value, cache_type=name)

    @classmethod
    def __load_from_info__(
        cls,
        ctx: DumpContext,
        v: tp.Any = _NONE,
        f: str | None = None,
        o: int = 0,
        n: int = 0,
        tree: tp.Any = None,
        pickle: str | None = None,
        tuples: int = 0,
    ) -> tp.Any:
        if pickle is not None:
            return Pickle.__load_from_info__(ctx, pickle)
        if tree is not None:
            return cls._unwalk(ctx, tree)
        if f is None and v is _NONE:
            raise _no_value(cls.__name__)
        value = Json.__load_from_info__(ctx, v=v, f=f, o=o, n=n)
        return cls._unwalk(ctx, value) if tuples else value

    @classmethod
    def _unwalk(cls, ctx: DumpContext, tree: tp.Any) -> tp.Any:
        if isinstance(tree, dict):
            if _AUTO_TAG in tree:
                if tree[_AUTO_TAG] == AUTO_TUPLE:
                    return tuple([cls._unwalk(ctx, v) for v in tree["v"]])
                return ctx.load(tree)
            return {k: cls._unwalk(ctx, v) for k, v in tree.items()}
        if isinstance(tree, list):
            return [cls._unwalk(ctx, v) for v in tree]
        return tree

    @classmethod
    def __delete_info__(cls, ctx: DumpContext, **info: tp.Any) -> None:
        if info.get("pickle"):
            delete_file(ctx, info["pickle"])
        if info.get("tree") is not None:
            cls._delete_tree(ctx, info["tree"])

    @classmethod
    def _delete_tree(cls, ctx: DumpContext, tree: tp.Any) -> None:
        """The payloads of values stored with their own format inside the structure."""
        if isinstance(tree, dict):
            if _AUTO_TAG in tree and tree[_AUTO_TAG] != AUTO_TUPLE:
                ctx.delete(tree)
                return
            for sub in tree.values():
                cls._delete_tree(ctx, sub)
        elif isinstance(tree, list):
            for sub in tree:
                cls._delete_tree(ctx, sub)


AUTO_TUPLE = "tuple"  # (the tag of a tuple in an Auto tree: not the name of a format)
_TUPLE_TAG = b'"#type":"tuple"'
_JSON_INT_MIN, _JSON_INT_MAX = -(2**63), 2**64 - 1  # what orjson writes
# containers nested in an Auto tree: orjson writes at most 254 levels, and the tree sits
# in the index record, with the records of values stored in their own format inside it
_TREE_MAX_DEPTH = 240


class _NotJsonable(Exception):
    pass


class _ReservedKey(ValueError):
    pass


def _pickled(ctx: DumpContext, value: tp.Any) -> dict[str, tp.Any]:
    """An Auto record of a value in its own pickle file (with its size: presence.py)."""
    record = Pickle.__dump_info__(ctx, value)
    return {"pickle": record["filename"], "#n": record["#n"]}


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

    _record_shapes = (("v",), ("filename",), ("p",))
    _record_fields = {"filename": str, "p": str}

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

        return ctx.key_file_record(".pkl", write)

    @classmethod
    def __load_from_info__(
        cls,
        ctx: DumpContext,
        v: tp.Any = _NONE,
        filename: str | None = None,
        p: str | None = None,
    ) -> tp.Any:
        if p is not None:
            return load_pickle(binascii.a2b_base64(p))
        if filename is None:
            if v is _NONE:
                raise DamagedRecord("a Result record holds 'v', 'p' or 'filename': none here")
            return v
        return Pickle.__load_from_info__(ctx, filename)

    @classmethod
    def __delete_info__(
        cls, ctx: DumpContext, v: tp.Any = None, filename: str | None = None, p: str | None = None
    ) -> None:
        if filename is not None:
            delete_file(ctx, filename)


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
