"""The numpy formats: arrays appended to the writer's shared data file and read back as
memory-mapped views (MemmapArray, the default for arrays), one ``.npy`` file per entry
(NumpyArray), numpy scalars inline (NumpyScalar)."""

from __future__ import annotations

import base64
import math
import os
import typing as tp
from operator import attrgetter, itemgetter
from pathlib import Path

import orjson

from .dumping import (
    FAST_LOADERS,
    DamagedRecord,
    DumpContext,
    delete_file,
    dumps_pickle,
    load_pickle,
    mark_damaged,
    payload_path,
)
from .files import finish_write
from .modules import imported
from .sharedfile import ALIGNMENT, BUFFER_FLUSH_BYTES, SharedFile

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
_NDARRAY: tp.Any = None


def _ndarray() -> tp.Any:
    global _NDARRAY
    _NDARRAY = (_NP or _numpy()).ndarray
    return _NDARRAY


def _numpy() -> tp.Any:
    global _NP
    import numpy

    _NP = numpy
    return numpy


@DumpContext.register(default_for="numpy.ndarray")
class MemmapArray:
    """Arrays appended to the writer's shared ``.data`` file; read back as read-only views."""

    _record_shapes = (("f", "o", "d", "s"),)
    _record_fields = {"f": str, "o": int, "d": lambda d: _dtype_known(d), "s": lambda s: _shape(s)}

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
                    f"Cannot store {_referencing(dtype)} as MemmapArray: use cache_type='Pickle'"
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
            or type(array) is not (_NDARRAY or _ndarray())
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
    def __dump_records__(
        cls, ctx: DumpContext, pairs: list[tuple[str, tp.Any]], name: str
    ) -> list[dict[str, tp.Any]]:
        """The whole index records (``#key``, ``#type``, then the fields) of many entries
        (values of one type: a run of dump_entries): the same as one ``__dump_info__`` per
        value, with less per-value overhead."""
        np = _NP or _numpy()
        shared = ctx._shared.get(".data") or ctx.shared_file(".data")
        file = shared.name
        alike = _alike_records(np, shared, pairs, name)
        if alike is not None:  # (the common case: a map's outputs, one dtype and shape)
            return alike
        append = shared.append_array
        ndarray = np.ndarray
        out: list[dict[str, tp.Any]] = []
        record = out.append
        pending = shared.pending
        # (the file's size and queued bytes as locals, written back after the loop, and
        # around the calls that read or change them)
        size, queued = shared.size, shared.pending_bytes
        last_dtype = last_shape = shape = None  # (runs of one dtype and shape: no lookups)
        dtype_str = ""
        try:
            for key, value in pairs:
                array = value
                if type(array) is not ndarray or not array.flags.c_contiguous:
                    if type(value) is not ndarray:
                        _refuse_non_array(value, "MemmapArray")  # (as one by one)
                    array = np.ascontiguousarray(value).reshape(np.shape(value))
                dtype = array.dtype
                if dtype is not last_dtype:
                    found = _DTYPE_STR.get(dtype)
                    if found is None:
                        shared.size, shared.pending_bytes = size, queued
                        size = -1  # (written back: an error leaves the file's own numbers)
                        fields = cls.__dump_info__(ctx, array)  # checks object dtypes
                        record({"#key": key, "#type": name, **fields})
                        pending, size, queued = shared.pending, shared.size, shared.pending_bytes
                        continue
                    last_dtype, dtype_str = dtype, found
                nbytes = array.nbytes
                if (
                    pending is not None
                    and array.ndim
                    and not size % ALIGNMENT
                    and queued + nbytes <= BUFFER_FLUSH_BYTES
                ):  # the common case of append_array, inlined: queue it, aligned already
                    offset = size
                    pending.append(array)
                    size += nbytes
                    queued += nbytes
                else:
                    shared.size, shared.pending_bytes = size, queued
                    size = -1
                    offset = append(array, ALIGNMENT)
                    pending, size, queued = shared.pending, shared.size, shared.pending_bytes
                if array.shape != last_shape:
                    last_shape = array.shape
                    shape = _SHAPES.get(last_shape) or _shared_shape(last_shape)
                record(
                    {"#key": key, "#type": name, "f": file, "o": offset, "d": dtype_str, "s": shape}
                )
        except Exception as error:  # (as one by one: name the key of the refused value)
            error.add_note(f"while storing {pairs[len(out)][0]!r} in {ctx.folder}")
            raise
        finally:
            if size >= 0:
                shared.size, shared.pending_bytes = size, queued
        return out

    @classmethod
    def __load_from_info__(cls, ctx: DumpContext, f: str, o: int, d: str, s: list[int]) -> tp.Any:
        return load_memmap(ctx, {"f": f, "o": o, "d": d, "s": s})


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


def _dtype_known(code: tp.Any) -> bool:
    """Whether a record's dtype field names a dtype (after a failed read only)."""
    try:
        _dtype_of(code)
    except Exception:
        return False
    return True


def _shape(shape: tp.Any) -> bool:
    # (a list as read back; a tuple in the records the writing process holds)
    return type(shape) in (list, tuple) and all(type(d) is int and d >= 0 for d in shape)


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


def _check_place(offset: tp.Any, shape: tp.Any) -> None:
    """A record's offset and shape are what a writer writes (an index line written by
    hand may say -1 or true: numpy then reads the whole file, or from byte 1)."""
    if type(offset) is not int or offset < 0 or not _shape(shape):
        raise DamagedRecord(f"offset {offset!r:.40} and shape {shape!r:.60} cannot be a place")


def load_memmap(ctx: DumpContext, info: dict[str, tp.Any]) -> tp.Any:
    np = _NP or _numpy()
    code = info["d"]
    dtype = _DTYPES.get(code)
    if dtype is None:
        dtype = _dtype_of(code)
    shape = info["s"]
    offset = info["o"]
    _check_place(offset, shape)
    count = math.prod(shape)
    if count == 0:  # (nothing to map: read-only like the others)
        empty = np.zeros(shape, dtype=dtype)
        empty.setflags(False)
        return empty
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
        _check_place(offset, shape)
        size = math.prod(shape) * dtype.itemsize
        # (0-d arrays one by one: items of a strided view would be numpy scalars)
        if stop - start < 3 or size == 0 or step < size or not shape:
            out.append(load_memmap(ctx, first))
            start += 1
            continue
        mapped = ctx.memmap(file, offset + step * (stop - start - 1) + size)
        strides = (step, *_c_strides(shape, dtype.itemsize))
        view = np.ndarray((stop - start, *shape), dtype, mapped, offset, strides)
        out.extend(view)
        start = stop
    return out


def _alike_records(
    np: tp.Any, shared: SharedFile, pairs: list[tuple[str, tp.Any]], name: str
) -> list[dict[str, tp.Any]] | None:
    """The records of a batch of C-contiguous ndarrays of one known dtype and one shape
    whose size keeps the next one aligned (no padding between them), queued at once. None
    (nothing queued): they go one by one. The checks run in C (map), not as ~60 bytecodes
    per value."""
    pending, size, count = shared.pending, shared.size, len(pairs)
    if pending is None or size % ALIGNMENT or not count:
        return None
    values = list(map(_SECOND, pairs))
    first = values[0]
    if type(first) is not np.ndarray or not first.ndim:  # (0-d: no buffer os.write takes)
        return None
    nbytes, dtype, shape = first.nbytes, first.dtype, first.shape
    dtype_str = _DTYPE_STR.get(dtype)
    total = nbytes * count
    if (
        dtype_str is None
        or nbytes % ALIGNMENT
        or shared.pending_bytes + total > BUFFER_FLUSH_BYTES
        # (one type per run: dump_entries splits runs by exact type)
        or list(map(_DTYPE_OF, values)).count(dtype) != count
        or list(map(_SHAPE_OF, values)).count(shape) != count
        or not all(map(_C_CONTIGUOUS, values))
    ):
        return None
    pending.extend(values)
    shared.size, shared.pending_bytes = size + total, shared.pending_bytes + total
    shape = _SHAPES.get(shape) or _shared_shape(shape)
    # (copies of one record: a copy clones its table, cheaper than a dict display)
    template = {"#key": "", "#type": name, "f": shared.name, "o": 0, "d": dtype_str, "s": shape}
    out = []
    for (key, _), offset in zip(pairs, range(size, size + total, nbytes)):
        record = template.copy()
        record["#key"], record["o"] = key, offset
        out.append(record)
    return out


_SECOND = itemgetter(1)
_DTYPE_OF = attrgetter("dtype")
_SHAPE_OF = attrgetter("shape")
_C_CONTIGUOUS = attrgetter("flags.c_contiguous")


def _c_strides(shape: list[int], itemsize: int) -> list[int]:
    strides = []
    running = itemsize
    for dim in reversed(shape):
        strides.append(running)
        running *= dim
    return strides[::-1]


DumpContext.FAST_DUMPER = MemmapArray
FAST_LOADERS["MemmapArray"] = load_memmap


@DumpContext.register
class NumpyArray:
    """One ``.npy`` file per entry, read back fully into memory."""

    _record_shapes = (("filename",),)
    _record_fields = {"filename": str}

    @classmethod
    def __dump_info__(cls, ctx: DumpContext, value: tp.Any) -> dict[str, tp.Any]:
        import numpy as np

        if type(value) is not np.ndarray:
            _refuse_non_array(value, "NumpyArray")
        array = np.asarray(value)
        if array.dtype.hasobject:  # np.save would pickle it, and np.load refuse to read it
            raise TypeError(
                f"Cannot store {_referencing(array.dtype)} as NumpyArray: use cache_type='Pickle'"
            )
        return ctx.key_file_record(".npy", lambda handle: np.save(handle, array))

    @classmethod
    def __load_from_info__(cls, ctx: DumpContext, filename: str) -> tp.Any:
        import numpy as np

        path = payload_path(ctx.folder, filename)
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, EOFError) as error:  # (no code of the value's runs here)
            if not _whole_npy(path):
                mark_damaged(error)
            raise

    @classmethod
    def __delete_info__(cls, ctx: DumpContext, filename: str) -> None:
        delete_file(ctx, filename)


def _whole_npy(path: Path) -> bool:
    """Whether a .npy file's header parses and its data is all there (a file cut short,
    or overwritten in its header, is damaged; records written before sizes were recorded
    have no size to compare with)."""
    import numpy as np

    fmt = np.lib.format
    try:
        with open(path, "rb") as handle:
            version = fmt.read_magic(handle)
            # (no header size limit: np.save wrote it, a structured dtype of thousands of
            # fields has a header over numpy's default 10000 bytes, which raised: taken
            # for damage, such a good entry was removed and computed again in mode retry)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(handle, max_header_size=2**62)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(handle, max_header_size=2**62)
            else:  # (a version this reader has no public header reader for: cannot tell)
                return True
            start = handle.tell()
        needed = start + math.prod(shape) * dtype.itemsize
        return os.path.getsize(path) >= needed
    except OSError:  # (unreadable: cannot tell)
        return True
    except Exception:  # (the header does not parse: cut short or overwritten)
        return False


@DumpContext.register(default_for="numpy.generic")
class NumpyScalar:
    """A numpy scalar (the numpy.float64 of a mean...) in the index line: its dtype and
    bytes, read back as the same numpy type (not a file per value, not a python float)."""

    _record_shapes = (("d", "b"), ("p",))
    _record_fields = {"d": lambda d: type(d) is str and _dtype_known(d), "b": str, "p": str}

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
            return load_pickle(base64.b64decode(p))
        if not d or not b:
            raise DamagedRecord("a NumpyScalar record holds 'd' and 'b', or 'p': not here")
        import numpy as np

        try:
            dtype, data = np.dtype(d), base64.b64decode(b, validate=True)
        except (TypeError, ValueError) as error:  # (binascii.Error is a ValueError)
            raise DamagedRecord(
                f"a NumpyScalar record's 'd' or 'b' cannot be read: {error}"
            ) from error
        if len(data) != dtype.itemsize:
            raise DamagedRecord(
                f"a NumpyScalar record of dtype {dtype} holds {len(data)} bytes, not {dtype.itemsize}"
            )
        return np.frombuffer(data, dtype=dtype)[0]


def _referencing(dtype: tp.Any) -> str:
    """An array whose bytes are references to memory outside it (not storable as bytes)."""
    if dtype.kind == "O":
        return f"an object array (dtype {dtype})"
    return f"an array of dtype {dtype} (its bytes point to memory outside the array)"
