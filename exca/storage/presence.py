"""Whether an entry's payload files are all there, as long as written: a stat per file,
nothing read (loading a big result only to learn that it can be read costs seconds)."""

from __future__ import annotations

import math
import os
import typing as tp
from pathlib import Path

from .dumping import DamagedPayload, payload_path
from .formats import AUTO_TUPLE

# built-in formats whose records name their file(s) in these fields
_KEY_FILE_TYPES = frozenset({"Result", "Pickle", "NumpyArray"})  # "filename" (+ "#n": size)
_SHARED_TEXT_TYPES = frozenset({"Json", "Text", "Auto", "AutoPickle"})  # "f", "o", "n"
_INLINE_ONLY_TYPES = frozenset({"Error"})
# fields of a damaged index line (reading it raises DamagedRecord), a folder this user
# cannot search: the check cannot tell
_UNCLEAR = (TypeError, ValueError, KeyError, OverflowError, AttributeError, OSError)


def _size(path: Path) -> int | None:
    """The size of a file, read from an open descriptor: a network file system's cached
    attributes of a file another host appends to may be old; opening revalidates them
    (close-to-open), as a read does (non-blocking: a FIFO there never blocks)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:  # (another user's file, mode 600, say: its size still tells)
        try:
            return os.stat(path).st_size
        except (FileNotFoundError, NotADirectoryError):
            return None
    try:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _leaves(info: dict[str, tp.Any]) -> list[dict[str, tp.Any]]:
    """The records naming payload files in an index record: itself, or those nested in
    an Auto tree (arrays in a dict...), or its pickle file."""
    kind = info.get("#type")
    if kind not in _SHARED_TEXT_TYPES or "f" in info or "v" in info:
        return [info]
    if "pickle" in info:
        return [{"#type": "Pickle", "filename": info["pickle"], "#n": info.get("#n")}]
    if "tree" not in info:
        return [info]
    out, stack = [], [info["tree"]]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            nested = item.get("#type")
            if nested is not None and nested != AUTO_TUPLE:
                out.append(item)  # (a record of the value of another format)
            else:
                stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return out


def _needed(folder: Path, info: dict[str, tp.Any]) -> tuple[Path, int] | None:
    """(file, the size it must have at least) of a record's shared-file payload, or None
    when the record has none of those (checked alone)."""
    kind = info.get("#type")
    if "f" not in info:
        return None
    if kind in _SHARED_TEXT_TYPES:
        return payload_path(folder, info["f"]), info["o"] + info["n"]
    if kind == "MemmapArray":
        return payload_path(folder, info["f"]), info["o"] + _nbytes(info["d"], info["s"])
    return None


def _nbytes(dtype: str, shape: tp.Sequence[int]) -> int:
    from .arrays import _dtype_of  # (structured dtypes too: JSON descriptions)

    if not all(type(dim) is int for dim in shape):  # (a damaged line: unclear, see damaged)
        raise TypeError(f"Not a shape: {shape!r}")
    size: int = math.prod(shape) * _dtype_of(dtype).itemsize
    return size


def damaged(folder: Path, infos: tp.Iterable[tuple[str, dict[str, tp.Any]]]) -> list[str]:
    """The keys of ``(key, record)`` pairs whose payload file is missing or cut short: a
    size per distinct shared file (the items of a map share a few), one per own file."""
    shared: dict[Path, list[tuple[int, str]]] = {}
    keys, bad = [], set()
    # (map items: records of arrays in a few shared files; their ends computed here, with
    # the array sizes and paths of a file memoized, ~10x faster than the general path)
    by_name: dict[str, list[tuple[int, str]]] = {}
    sizes: dict[tuple[tp.Any, ...], int] = {}
    for key, info in infos:
        keys.append(key)
        if info.get("#type") == "MemmapArray":
            try:
                name, shape, dtype = info["f"], info["s"], info["d"]
                if type(name) is str and type(dtype) is str and type(shape) in (list, tuple):
                    spec = (dtype, *shape)
                    nbytes = sizes.get(spec)
                    if nbytes is None:
                        nbytes = sizes[spec] = _nbytes(dtype, shape)
                    end = info["o"] + nbytes
                    if type(end) is int:
                        by_name.setdefault(name, []).append((end, key))
                        continue
            except _UNCLEAR:
                continue  # (unclear: found when it is read)
        try:
            for leaf in _leaves(info):
                needed = _needed(folder, leaf)
                if needed is not None:
                    shared.setdefault(needed[0], []).append((needed[1], key))
                elif _payload_present(folder, leaf) is False:
                    bad.add(key)
        except DamagedPayload:  # (a file named outside the cache folder)
            bad.add(key)
        except _UNCLEAR:  # (unclear: found when it is read)
            continue
    for name, ends in by_name.items():
        try:
            shared.setdefault(payload_path(folder, name), []).extend(ends)
        except DamagedPayload:  # (a file named outside the cache folder)
            bad.update(key for _, key in ends)
    for path, ends in shared.items():
        try:
            size = _size(path)
        except OSError:  # (a folder this user cannot search: found when read)
            continue
        bad.update(key for end, key in ends if size is None or size < end)
    return [key for key in keys if key in bad] if bad else []


def payload_present(folder: Path, info: dict[str, tp.Any]) -> bool | None:
    """True when every file the index record ``info`` names is there and long enough,
    False when one is missing or cut short, None when the record does not tell (a format
    of the user's, fields the check cannot read): load the value to know."""
    try:
        answers = [_payload_present(folder, leaf) for leaf in _leaves(info)]
    except DamagedPayload:  # (a file named outside the cache folder)
        return False
    except _UNCLEAR:
        return None
    if False in answers:
        return False
    return None if None in answers else True


def _payload_present(folder: Path, info: dict[str, tp.Any]) -> bool | None:
    kind = info.get("#type")
    if kind in _INLINE_ONLY_TYPES:
        return True
    if kind in _KEY_FILE_TYPES:
        filename = info.get("filename")
        if filename is None:  # (a Result inline: "v" or "p")
            return "v" in info or "p" in info or None
        size = _size(payload_path(folder, filename))
        expected = info.get("#n")  # (records written before sizes were recorded: none)
        return size is not None and (expected is None or size == expected)
    needed = _needed(folder, info)
    if needed is not None:
        size = _size(needed[0])
        return size is not None and size >= needed[1]
    if kind in _SHARED_TEXT_TYPES and "v" in info:
        return True
    if kind == "NumpyScalar":  # (inline: "d" and "b", or "p")
        return True
    return None  # (a format of the user's)
