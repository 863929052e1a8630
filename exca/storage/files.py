"""Creating a file whole: the low-level step of atomic writes and claims."""

from __future__ import annotations

import os


def write_new(path: str, data: bytes) -> None:
    """Create ``path`` (it must not exist: ``FileExistsError``) and write all of ``data``
    into it, finishing short writes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        written = os.write(fd, data)
        while written < len(data):
            written += os.write(fd, data[written:])
    finally:
        os.close(fd)
