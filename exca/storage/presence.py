"""Whether an entry's payload files are all there, as long as written: a stat per file,
nothing read (loading a big result only to learn that it can be read costs seconds)."""

from __future__ import annotations

import math
import os
import typing as tp
from pathlib import Path

from .dumping import DamagedPayload, payload_path

# built-in formats whose records name their file(s) in these fields
_KEY_FILE_TYPES = frozenset({"Result", "Pickle", "NumpyArray"})  # "filename" (+ "#n": size)
_SHARED_TEXT_TYPES = frozenset({"Json", "Text", "Auto", "AutoPickle"})  # "f", "o", "n"
_INLINE_ONLY_TYPES = frozenset({"Error"})
# a file named outside the cache folder; the fields of a damaged index line (reading it
# raises DamagedRecord)
_UNREADABLE = (DamagedPayload, TypeError, ValueError, KeyError, OverflowError)


def _size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _needed(folder: Path, info: dict[str, tp.Any]) -> tuple[Path, int] | None:
    """(file, the size it must have at least) of a record's shared-file payload, or None
    when the record has none of those (checked alone)."""
    kind = info.get("#type")
    if "f" not in info:
        return None
    if kind in _SHARED_TEXT_TYPES:
        return payload_path(folder, info["f"]), info["o"] + info["n"]
    if kind == "MemmapArray":
        import numpy as np

        end = info["o"] + math.prod(info["s"]) * np.dtype(info["d"]).itemsize
        return payload_path(folder, info["f"]), end
    return None


def damaged(folder: Path, infos: tp.Iterable[tuple[str, dict[str, tp.Any]]]) -> list[str]:
    """The keys of ``(key, record)`` pairs whose payload file is missing or cut short: a
    stat per distinct file (the items of a map share a few), not per key."""
    shared: dict[Path, list[tuple[int, str]]] = {}
    keys, bad = [], set()
    for key, info in infos:
        keys.append(key)
        try:
            needed = _needed(folder, info)
        except _UNREADABLE:
            bad.add(key)
            continue
        if needed is not None:
            shared.setdefault(needed[0], []).append((needed[1], key))
        elif payload_present(folder, info) is False:
            bad.add(key)
    for path, ends in shared.items():
        size = _size(path)
        bad.update(key for end, key in ends if size is None or size < end)
    return [key for key in keys if key in bad] if bad else []


def payload_present(folder: Path, info: dict[str, tp.Any]) -> bool | None:
    """True when every file the index record ``info`` names is there and long enough,
    False when one is missing or cut short, None when the record's format does not tell
    (a format of the user's, a nested "tree" record): load the value to know."""
    try:
        return _payload_present(folder, info)
    except _UNREADABLE:
        return False


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
    return None  # (an Auto "tree"/"pickle" record, a format of the user's)
