"""Freeing the files of ended writers whose every entry was deleted.

A deletion writes a tombstone in the deleter's own index file and leaves the entry's
line (and its bytes in the writer's shared data files) where they are. Once no entry of
an index file is live and its writer can never append again, the file and the writer's
shared data files (``data/<session>*``) hold nothing anyone reads: readers remove them
as they meet them (after a forced recomputation, a deletion, a ``keys()``). A reader
that still holds an older view finds the payload missing, reads the index again and
sees the entry gone (or its new copy).

A writer misjudged as ended (its pid hidden from this process, another pid namespace
under the same host name) is protected too: only files idle for two of its idle checks
are freed, and a writer idle that long checks, before and after it appends, that its
files are still there (IndexWriter.gone_while_idle / unlinked, CacheDict.put), else it
writes again in a new session. (Left: a freeing between that last check and the
unlink, a window of microseconds, loses that writer's entry; it never reads back wrong.)
"""

from __future__ import annotations

import logging
import os
import re
import time
import typing as tp
from pathlib import Path

from . import process
from .claims import CLAIMS_DIR, LOCK_STALE_S
from .claims import LOCK_NAME as COMPACTION_LOCK
from .dumping import DATA_DIR
from .index import (
    _OUR_INDEX_NAME,
    IDLE_CHECK_SECONDS,
    INDEX_SUFFIX,
    IndexReader,
    tombstone_lines,
)

logger = logging.getLogger("exca")
# a writer on another host (no /proc to ask) counts as ended after this long without a
# write (as for `clean compact`)
REMOTE_WRITER_GRACE = 3600.0
# no file written to more recently is freed, whatever its writer's state seems to be
MIN_IDLE_SECONDS = 2 * IDLE_CHECK_SECONDS
# a lifeless file whose writer lives is checked again after this long (not at every read)
RECHECK_SECONDS = 60.0


def free_lifeless_files(
    folder: Path,
    reader: IndexReader,
    reissue: tp.Callable[[list[bytes]], None] | None = None,
) -> list[str]:
    """Remove the index and shared data files of ended writers whose entries are all
    deleted; returns the removed index files' names. ``reissue`` (a deleter's): appends
    tombstone lines to its own index; a file whose tombstones may still delete another
    file's entries is then freed too, once they are re-issued there (else it is kept)."""
    sessions = []
    unknown_files: bool | None = None
    for name, inode, size, aims in reader.lifeless_files(with_live_aims=reissue is not None):
        if not _OUR_INDEX_NAME.fullmatch(name):
            reader.emptied.discard(name)
            continue
        path = folder / name
        try:
            stat = os.stat(path)
            if _compaction_may_run(folder):
                reader.defer(name, RECHECK_SECONDS)
                continue
            if aims:
                # its tombstones aim at files this reader did not read (removed since):
                # they may still delete entries moved by a compaction this reader has not
                # seen yet (it writes the merged file, then removes the old ones: checked
                # here in that order)
                there = [os.path.exists(folder / aimed) for aimed in aims]
                if any(there) and reissue is None:  # (a deleter re-issues them below)
                    reader.defer(name, RECHECK_SECONDS)
                    continue
                if not all(there):
                    if unknown_files is None:
                        unknown_files = _unread_index_files(folder, reader)
                    if unknown_files:
                        continue  # (the next read reads them, then checks again)
        except FileNotFoundError:  # (removed by another reader)
            reader.forget_removed(name)
            continue
        except OSError as error:  # (a stale NFS handle...: not this reader's problem)
            logger.debug("Could not check %s: %s", path, error)
            reader.defer(name, RECHECK_SECONDS)
            continue
        if (stat.st_ino, stat.st_size) != (inode, size):
            # appended to since this reader read it (the next read tells), or a torn
            # last line of a killed writer (kept: `clean compact` merges it)
            reader.defer(name, RECHECK_SECONDS)
            continue
        idle = time.time() - stat.st_mtime
        session = name[: -len(INDEX_SUFFIX)]
        if idle < MIN_IDLE_SECONDS:
            reader.defer(name, MIN_IDLE_SECONDS - idle)
            continue
        if not process.session_ended(session, stat.st_mtime, REMOTE_WRITER_GRACE):
            reader.defer(name, RECHECK_SECONDS)
            continue
        if aims and reissue is not None:
            try:
                reissue(_tombstones_still_needed(folder, name, reader.moved_from))
            except OSError as error:
                logger.debug("Could not re-issue the deletions of %s: %s", path, error)
                reader.defer(name, RECHECK_SECONDS)
                continue
        try:
            os.remove(path)  # the index first: a crash then leaves unreferenced data only
        except FileNotFoundError:
            pass
        except OSError as error:  # (a reader without write access to a shared cache)
            logger.debug("Could not free %s: %s", path, error)
            reader.emptied.discard(name)
            continue
        reader.forget_removed(name)
        sessions.append(session)
    if sessions:
        _remove_shared_data(folder / DATA_DIR, tuple(sessions))
    return [s + INDEX_SUFFIX for s in sessions]


def _tombstones_still_needed(folder: Path, name: str, moved_from: set[str]) -> list[bytes]:
    """The tombstone lines of an index file that delete entries of another file that is
    there, or whose entries a compaction moved (those aimed at a removed file are not
    re-issued: generations of forced writes would carry them all along)."""
    out = []
    for line, target in tombstone_lines((folder / name).read_bytes()):
        aimed = target.rpartition(":")[0]
        if aimed != name and (aimed in moved_from or os.path.exists(folder / aimed)):
            out.append(line + b"\n")
    return list(dict.fromkeys(out))  # (copies: re-issued by two deleters, or a crash)


def _compaction_may_run(folder: Path) -> bool:
    """Whether the folder lock (held by `clean compact` while it merges, by claims for
    milliseconds) is taken, by a process that may still be alive (not a leftover)."""
    try:
        lock = os.stat(folder / CLAIMS_DIR / COMPACTION_LOCK)
    except FileNotFoundError:
        return False
    return time.time() - lock.st_mtime < LOCK_STALE_S


def _unread_index_files(folder: Path, reader: IndexReader) -> bool:
    known = set(reader.file_names())
    with os.scandir(folder) as listing:
        return any(
            e.name not in known and _OUR_INDEX_NAME.fullmatch(e.name) is not None for e in listing
        )


# what follows the key's stem in the name of a key's own file (dumping.key_path): its
# digest, then the writer's tail and a count; never in a shared file's suffix
_KEY_FILE_PART = re.compile(r"-[0-9a-f]{8}-[0-9a-f]{7,}")


def _remove_shared_data(data: Path, sessions: tuple[str, ...]) -> None:
    """Remove the shared files (``<session><suffix>``) of freed sessions; a key's own file
    whose key starts with such a session's name (any string is a key) is left alone."""
    try:
        listing = list(os.scandir(data))
    except OSError:
        return
    for entry in listing:
        session = next((s for s in sessions if entry.name.startswith(s)), None)
        if session is not None and not _KEY_FILE_PART.search(entry.name, len(session)):
            try:
                os.remove(entry.path)
            except FileNotFoundError:
                pass
            except OSError as error:
                logger.debug("Could not free %s: %s", entry.path, error)
