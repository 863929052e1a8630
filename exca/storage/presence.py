"""Whether an entry's payload files are all there, as long as written: a stat per file,
nothing read (loading a big result only to learn that it can be read costs seconds)."""

from __future__ import annotations

import math
import os
import typing as tp
from pathlib import Path

# built-in formats whose records name their file(s) in these fields
_KEY_FILE_TYPES = frozenset({"Result", "Pickle", "NumpyArray"})  # "filename" (+ "#n": size)
_SHARED_TEXT_TYPES = frozenset({"Json", "Text", "Auto", "AutoPickle"})  # "f", "o", "n"
_INLINE_ONLY_TYPES = frozenset({"Error"})


def _size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def payload_present(folder: Path, info: dict[str, tp.Any]) -> bool | None:
    """True when every file the index record ``info`` names is there and long enough,
    False when one is missing or cut short, None when the record's format does not tell
    (a format of the user's, a nested "tree" record): load the value to know."""
    kind = info.get("#type")
    if kind in _INLINE_ONLY_TYPES:
        return True
    if kind in _KEY_FILE_TYPES:
        filename = info.get("filename")
        if filename is None:  # (a Result inline: "v" or "p")
            return "v" in info or "p" in info or None
        size = _size(folder / filename)
        expected = info.get("#n")  # (records written before sizes were recorded: none)
        return size is not None and (expected is None or size == expected)
    if kind in _SHARED_TEXT_TYPES:
        if "f" not in info:  # (inline, or an Auto "tree"/"pickle" record)
            return True if "v" in info else None
        size = _size(folder / info["f"])
        return size is not None and size >= info["o"] + info["n"]
    if kind == "MemmapArray":
        import numpy as np  # (a memmap record exists: numpy wrote it)

        needed = info["o"] + math.prod(info["s"]) * np.dtype(info["d"]).itemsize
        size = _size(folder / info["f"])
        return size is not None and size >= needed
    return None
