"""Append-only data files, one per writer session and suffix (``data/<session><suffix>``):
payloads of many entries (arrays, text, JSON) written contiguously, never truncated, so
that readers may keep them memory-mapped."""

from __future__ import annotations

import os
import typing as tp
from pathlib import Path

from .files import chmod, ensure_folder, finish_write

BUFFER_FLUSH_BYTES = 16 << 20  # batched payload bytes kept in memory before writing
ALIGNMENT = 64  # byte alignment of arrays in shared data files


class SharedFile:
    """An append-only data file owned by one writer session (never truncated)."""

    def __init__(self, folder: Path, name: str, permissions: int | None) -> None:
        self.name = name  # relative to the cache folder
        path = folder / name
        ensure_folder(path.parent, permissions)
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
        # (the number first: a write after this fails, it never reaches another file that
        # reuses the number, e.g. after an interrupted close)
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


_ZEROS = bytes(ALIGNMENT)
_IOV_MAX = 1024  # buffers per writev call (the Linux limit)


def _write_all(fd: int, buffers: list[tp.Any], total: int) -> None:
    written = os.writev(fd, buffers) if len(buffers) > 1 else os.write(fd, buffers[0])
    if written != total:
        finish_write(fd, buffers, written)
