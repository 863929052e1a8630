"""In-flight claims: the worker about to compute some keys of a folder claims them, so
that another process or thread needing the same keys waits and reads instead of
computing them again.

Protocol (only operations a network filesystem honours: O_EXCL create, rename, unlink;
claim files have unique names, never reused, written whole under a temporary name and
renamed into place):
- a batch of keys: a short folder lock (``claims/.lock``, O_EXCL) serialises claim
  *creation* (a few ms); under it, the claimer lists the claim files, drops dead ones,
  and writes one claim file for the keys nobody live holds (one file per batch);
- a single key (a task's result): no lock. The claimer writes its claim file first,
  then lists the others: alone with the key, it holds it; else it removes its own file
  and waits. Of two racing claimers the later one to write sees the earlier one, so two
  never both hold a key (both may back off: they retry after a random pause). The keys
  of a folder are claimed one way (a task's result alone, a map's items in batches):
  a batch claimer lists before it writes, so it could miss a single-key claimer;
- a claim records host, pid, process start time, thread and Slurm job id; a daemon thread
  refreshes its mtime (heartbeat). A claim is dead when its process is gone (same host:
  checked at once) or its heartbeat is older than two periods (other hosts);
- a claim also records where it was written (its folder's inode and real path): a claim
  of this host found in another folder (the cache copied while it computed) is dead
  there, as its owner computes into the original (see ``ClaimFile.copied``);
- keys already claimed by the same thread are re-entered, not waited for.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import threading
import time
import typing as tp
from pathlib import Path

import orjson

from . import interrupts, process
from .files import (
    await_chmod,
    chmod_folder,
    fchmod,
    folder_mode,
    make_folder,
    note_write_error,
    repair,
    write_new,
)
from .keytext import check_utf8

CLAIMS_DIR = "claims"
LOCK_NAME = ".lock"
CLAIM_SUFFIX = ".claim"
WAIT_SUFFIX = ".waits"  # a claim holder waiting for other keys (see Claims.post_wait)
BACKOFF_S = 0.005  # at most this long a random pause after two claimers met
_PUBLISH_ATTEMPTS = 5  # (a folder removed that often while a claim is written: raised)
HEARTBEAT_ENV = "EXCA_CLAIM_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 30.0
# how often a claim file that could not be removed at its release is tried again
RELEASE_RETRY_S = 1.0
logger = logging.getLogger("exca")
LOCK_STALE_S = 60.0  # the folder lock is held for milliseconds: a minute means its owner died
EMPTY_LOCK_STALE_S = 2.0  # (written right after its creation: empty after 2 s, it stays so)
BREAKING_SUFFIX = ".breaking"  # a waiter breaking the stale lock (see _remove_if_unchanged)
BREAKING_STALE_S = 10.0  # (held for a read and a remove: older, its waiter was killed)


def _server_time(folder: Path) -> float:
    """Now, as the clock that stamps files in ``folder`` sees it (a probe file's mtime)."""
    probe = folder / f".now-{os.urandom(4).hex()}"
    try:
        write_new(os.fspath(probe), b"")
        try:
            return os.stat(probe).st_mtime
        finally:
            os.remove(probe)
    except OSError:
        return time.time()


def heartbeat_seconds() -> float:
    return float(os.environ.get(HEARTBEAT_ENV, DEFAULT_HEARTBEAT_S))


JobAlive = tp.Callable[[str], "bool | None"]  # is this cluster job still queued/running?


class Owner(tp.NamedTuple):  # (named tuples, not dataclasses: cheaper to import)
    host: str
    pid: int
    start: int | None
    thread: int
    job_id: str | None

    @classmethod
    def current(cls) -> Owner:
        return cls(
            host=process.hostname(),
            pid=process.pid(),
            start=process.self_start_time(),
            thread=threading.get_native_id(),
            job_id=slurm_job_id(),
        )

    def describe(self) -> str:
        job = f", slurm job {self.job_id}" if self.job_id else ""
        return f"pid {self.pid} on {self.host}{job}" if self.pid else self.host


class _EveryKey(frozenset):
    """The keys of a claim file that cannot be read (see Claims._read): unknown, so taken
    as every key (``claim.keys & wanted`` is ``wanted``, any key is ``in`` it); it lists
    none. Nothing else tells them: the file's name tells its process (host, pid, thread,
    creation time: whether it is alive) and its mtime its heartbeat, but no key (a batch's
    keys do not fit in a name), and what its owner wrote next to it (its index, its job
    records) is as private. So a live one is waited for, key by key until each is cached,
    else until it ends (released, or its process dead): the only answer that never
    computes twice what it may compute; the wait says so (``unreadable_wait``)."""

    def __contains__(self, key: object) -> bool:
        return True

    def __and__(self, other: tp.AbstractSet[tp.Any]) -> frozenset[tp.Any]:
        return frozenset(other)

    def isdisjoint(self, other: tp.Iterable[tp.Any]) -> bool:
        return not any(True for _ in other)

    def __repr__(self) -> str:
        return "<every key>"


EVERY_KEY: frozenset[str] = _EveryKey()


def slurm_job_id() -> str | None:
    """This process's Slurm job as exca names jobs: ``<array>_<index>`` for an element of
    an array (its SLURM_JOB_ID is another number, which nothing else shows)."""
    environ = os.environ
    array, index = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array and index:
        return f"{array}_{index}"
    return environ.get("SLURM_JOB_ID")


class ClaimFile(tp.NamedTuple):
    path: Path
    owner: Owner
    keys: frozenset[str]
    mtime: float
    # a FolderHold's (a removal keeping new claims out: a claim, but no computation)
    hold: bool = False
    unreadable: bool = False  # (its owner and keys told by its name only: see Claims._read)
    # written in another folder (see _Where.differs): the cache was copied while its
    # owner computed, and the owner writes into the original, not here
    copied: bool = False

    def is_dead(self, heartbeat: float, job_alive: JobAlive | None = None) -> bool:
        if self.unreadable:  # (its name tells its process: gone on this host, or its
            # heartbeat, the file's mtime, older than two periods)
            name = self.path.name[: -len(CLAIM_SUFFIX)]
            return process.session_ended(name, self.mtime, 2 * heartbeat)
        alive = process.is_alive(self.owner.host, self.owner.pid, self.owner.start)
        if alive is not None and self.copied:  # (of this host, whose paths it names)
            return True
        if alive is None:  # another host: only its heartbeat tells
            return time.time() - self.mtime > 2 * heartbeat
        if alive and job_alive is not None and self.owner.job_id:
            # a process can outlive its cancelled job (Slurm may lose track of it)
            return job_alive(self.owner.job_id) is False
        return not alive


class Claim:
    """Result of a claim: ``mine`` to compute now, ``busy`` held by live others (wait),
    ``reentered`` already held by this very thread (an enclosing call computes them)."""

    __slots__ = ("busy", "folder", "mine", "path", "reentered")

    def __init__(
        self,
        folder: Path,
        mine: list[str],
        busy: dict[str, Owner],
        reentered: list[str],
        path: Path | None = None,
    ) -> None:
        self.folder = folder
        self.mine = mine
        self.busy = busy
        self.reentered = reentered
        self.path = path

    def __repr__(self) -> str:
        return f"Claim({self.folder}, mine={len(self.mine)}, busy={len(self.busy)})"

    def release(self) -> None:
        if self.path is not None:
            with interrupts.deferred():  # (a Ctrl-C in there left the file behind)
                path, self.path = self.path, None
                _HEARTBEAT.remove(path)
                try:
                    os.remove(path)
                except FileNotFoundError:
                    pass
                except OSError as error:  # (its folder became read-only meanwhile...)
                    # left, the file of this live process made the other processes of
                    # this host wait for its keys as long as it lived, and this thread's
                    # next claims take them for an enclosing call's: removed once it can
                    _HEARTBEAT.leave(path)
                    logger.warning(
                        "Could not remove the claim file %s (%s): this process removes it "
                        "as soon as it can (its keys are no longer computed here)",
                        path,
                        error,
                    )

    def give_back(self, keys: tp.Collection[str], claims: Claims) -> None:
        """Release some of the keys only (not started: another worker may take them); the
        others stay held (see ``_hold_only``)."""
        if self.path is None or not keys:
            return
        gone = set(keys)
        kept = [k for k in self.mine if k not in gone]
        me = Owner.current()
        with interrupts.deferred() as window, claims._folder_lock(me, window):
            self._hold_only(kept, claims, me)

    def take_back(self, keys: tp.Sequence[str], claims: Claims) -> list[str]:
        """Claim again keys given back (``give_back``), in order, as far as no live
        claim (another worker's, or another of this thread's) holds them: the first held
        ends what is taken (returned), held with the others (see ``_hold_only``)."""
        if not keys:
            return []
        me = Owner.current()
        path = self.path
        with interrupts.deferred() as window, claims._folder_lock(me, window):
            held: set[str] = set()
            asked = frozenset(keys)
            for claim in claims._all_files(skip=path):
                if claim.is_dead(claims.heartbeat, claims.job_alive):
                    _discard(claim.path)  # (the folder lock is held: see _claim)
                    continue
                held.update(claim.keys & asked)  # (an unreadable claim: all of them)
            taken: list[str] = []
            for key in keys:
                if key in held or key in self.mine:
                    break
                taken.append(key)
            if not taken:
                return []
            self._hold_only([*self.mine, *taken], claims, me)
        return taken

    def _hold_only(self, kept: list[str], claims: Claims, me: Owner) -> None:
        """Hold ``kept`` from now on (none: no file): its new claim file is written before
        the old one goes, under the folder's lock (held by the caller; a claimer lists, then
        reads, the files under it), so they are never seen unclaimed; a worker killed in
        between leaves both, dead."""
        path = self.path
        new = claims._write(me, kept) if kept else None
        if new is not None:
            _HEARTBEAT.add(new, claims.heartbeat)
        if path is not None:
            _HEARTBEAT.remove(path)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        self.path, self.mine = new, kept

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: tp.Any) -> None:
        self.release()


class Claims:
    """Claims of the keys of one folder (stored in ``<folder>/claims/``)."""

    def __init__(
        self,
        folder: Path | str,
        heartbeat: float | None = None,
        job_alive: JobAlive | None = None,
        permissions: int | None = None,
    ) -> None:
        self.folder = folder if isinstance(folder, Path) else Path(folder)  # (not parsed again)
        self.dir = self.folder / CLAIMS_DIR
        self.heartbeat = heartbeat if heartbeat is not None else heartbeat_seconds()
        self.job_alive = job_alive
        self.permissions = permissions  # of the claims folder, when created here

    # --- reading ------------------------------------------------------------------------
    def _read(self, path: Path, here: _Where) -> ClaimFile | None:
        try:
            data = path.read_bytes()
            mtime = os.stat(path).st_mtime
            record = orjson.loads(data)
            owner = Owner(**record["owner"])
            keys, hold = frozenset(record["keys"]), bool(record.get("hold"))
            written = record.get("where")  # (none: a hold's, or an older exca's)
            copied = written is not None and here.differs(written)
            return ClaimFile(path, owner, keys, mtime, hold, copied=copied)
        except (FileNotFoundError, orjson.JSONDecodeError, KeyError, TypeError):
            return None  # being written (renamed in place) or removed: not a live claim
        except PermissionError:
            return _unreadable_claim(path)

    def current(self) -> list[ClaimFile]:
        """Claim files of live owners (dead ones are ignored, not removed)."""
        return [c for c in self._all_files() if not c.is_dead(self.heartbeat, self.job_alive)]

    def dead(self) -> list[ClaimFile]:
        """Claim files of dead owners, still there (what a killed worker was computing)."""
        return [c for c in self._all_files() if c.is_dead(self.heartbeat, self.job_alive)]

    def prune_dead(self) -> int:
        """Remove the claim files of dead owners; returns how many."""
        dead = [c for c in self._all_files() if c.is_dead(self.heartbeat, self.job_alive)]
        for claim in dead:
            _discard(claim.path)
        return len(dead)

    def holders(self, keys: tp.Iterable[str]) -> dict[str, Owner]:
        """Which of these keys a live claim holds, and who holds them."""
        wanted = set(keys)
        out: dict[str, Owner] = {}
        for claim in self.current():
            for key in claim.keys & wanted:
                out[key] = claim.owner
        return out

    # --- waits of workers holding items (cycles between them) ---------------------------
    def post_wait(
        self, waits: tp.Mapping[str, tp.Iterable[str]], holds: tp.Mapping[str, tp.Iterable[str]]
    ) -> Path:
        """Record, in this folder (where this thread holds some of ``holds``), that this
        thread, holding ``holds`` (items it computes now, whose end depends on this wait,
        by folder: of this map and of others), waits for ``waits`` (keys by folder): a
        worker waiting for one of the keys it holds here finds the cycle (see ``waits``),
        whichever maps it goes through. Refreshed as claims are; ``end_wait`` removes it.
        Folders are recorded by their real path (readers compare them by ``folder_key``)."""
        me = Owner.current()
        data = orjson.dumps(
            {"owner": me._asdict(), "waits": _by_real_path(waits), "holds": _by_real_path(holds)}
        )
        with interrupts.deferred():
            path = self._publish(data, WAIT_SUFFIX)
            _HEARTBEAT.add(path, self.heartbeat)
        return path

    @staticmethod
    def end_wait(path: Path) -> None:
        with interrupts.deferred():
            _HEARTBEAT.remove(path)
            _discard(path)

    def waits(self) -> list[tuple[Owner, dict[str, frozenset[str]], dict[str, frozenset[str]]]]:
        """The live wait records of holders of keys of this folder: (owner, keys waited
        for, keys held while waiting), keys by folder (a record of an older version, keys
        only, gives those of this folder)."""
        out = []
        try:
            names = [e.path for e in os.scandir(self.dir) if e.name.endswith(WAIT_SUFFIX)]
        except FileNotFoundError:
            return []
        here = os.fspath(self.folder)
        for name in names:
            try:
                record = orjson.loads(Path(name).read_bytes())
                owner = Owner(**record["owner"])
                mtime = os.stat(name).st_mtime
                waits, holds = (_by_folder(record[k], here) for k in ("waits", "holds"))
            except (FileNotFoundError, orjson.JSONDecodeError, KeyError, TypeError):
                continue
            except PermissionError:  # (another user's, made private: no cycle is found
                continue  # through it; its claim, unreadable too, is waited for)
            probe = ClaimFile(Path(name), owner, holds.get(here, frozenset()), mtime)
            if not probe.is_dead(self.heartbeat, self.job_alive):
                out.append((owner, waits, holds))
        return out

    # --- claiming -------------------------------------------------------------------------
    def claim(
        self,
        keys: tp.Sequence[str],
        window: interrupts.deferred | None = None,
        distinct: bool = False,
    ) -> Claim:
        """Claim every key that no live other holds (one claim file for all of them).
        Ctrl-C is held back from taking the folder's lock on (a Ctrl-C in there left files
        behind); ``window``: the caller's, which then holds it back until the claim is
        guarded (else this call raises it, the claim given back). ``distinct``: the
        caller's keys are each given once (not deduplicated again; a list then becomes the
        claim's ``mine`` as it is, when nobody else holds any: the caller changes it no more)."""
        if window is None:
            with interrupts.deferred(hold=False) as own:
                return self._claim(keys, own, distinct)
        return self._claim(keys, window, distinct)

    def _claim(
        self, keys: tp.Sequence[str], window: interrupts.deferred, distinct: bool = False
    ) -> Claim:
        written: list[Path] = []
        try:
            return self._claim_locked(keys, window, written, distinct)
        except BaseException:
            # (never handed back, e.g. a KeyboardInterrupt raised in a pool's thread as the
            # lock was given back, where Ctrl-C is not held back: its file, kept by nobody,
            # held its keys for this live process, and the next call waited for itself)
            for path in written:
                _discard(path)
            raise

    def _claim_locked(
        self,
        keys: tp.Sequence[str],
        window: interrupts.deferred,
        written: list[Path],
        distinct: bool = False,
    ) -> Claim:
        me = Owner.current()
        asked: frozenset[str] | None = None  # (made once a live claim is found: else none)
        with self._folder_lock(me, window):
            mine: list[str] = []
            busy: dict[str, Owner] = {}
            reentered: list[str] = []
            held: dict[str, Owner] = {}
            for claim in self._all_files():
                if claim.is_dead(self.heartbeat, self.job_alive):
                    _discard(claim.path)  # we hold the folder lock: nobody else removes it
                    continue
                if asked is None:
                    asked = frozenset(keys)
                for key in claim.keys & asked:  # (an unreadable claim: all of them)
                    held[key] = claim.owner
            if not held:  # (the common case: no loop per key)
                # (a distinct list is shared, not copied: one list of n uids fewer for
                # the cyclic GC to walk while the unit computes)
                if distinct:
                    mine = keys if type(keys) is list else list(keys)
                else:
                    mine = list(dict.fromkeys(keys))
            for key in dict.fromkeys(keys) if held else ():
                owner = held.get(key)
                if owner is None:
                    mine.append(key)
                elif (owner.host, owner.pid, owner.thread) == (me.host, me.pid, me.thread):
                    reentered.append(key)
                else:
                    busy[key] = owner
            path = self._write(me, mine) if mine else None
            written.extend([path] if path is not None else [])
            result = Claim(self.folder, mine, busy, reentered, path)
            window.on_interrupt(result.release)
        if path is not None:
            _HEARTBEAT.add(path, self.heartbeat)
        return result

    def claim_one(self, key: str) -> Claim:
        """Claim a single key without the folder lock (see the module docstring)."""
        with interrupts.deferred() as window:  # (a Ctrl-C in there left its file behind)
            return self._claim_one(key, window)

    def _claim_one(self, key: str, window: interrupts.deferred) -> Claim:
        me = Owner.current()
        path = self._write(me, [key])
        window.on_interrupt(lambda: _discard(path))
        live: list[ClaimFile] = []
        for other in self._all_files(skip=path):
            if key not in other.keys:
                continue
            if other.is_dead(self.heartbeat, self.job_alive):
                _discard(other.path)  # a unique name: nobody else can reuse it
            else:
                live.append(other)
        if not live:
            claim = Claim(self.folder, [key], {}, [], path)
            window.on_interrupt(claim.release)  # (its heartbeat too)
            _HEARTBEAT.add(path, self.heartbeat)
            return claim
        _discard(path)
        if any(c.owner[:4] == me[:4] for c in live):  # host, pid, start, thread: this thread
            return Claim(self.folder, [], {}, [key])
        time.sleep(random.uniform(0, BACKOFF_S))  # (two claimers that met retry apart)
        return Claim(self.folder, [], {key: live[0].owner}, [])

    def _all_files(self, skip: Path | None = None) -> list[ClaimFile]:
        """The readable claim files (``skip``: one not to read, e.g. one's own)."""
        skipped = None if skip is None else os.fspath(skip)
        released = _HEARTBEAT.released  # (this process's, not removed yet: no claims)
        try:
            names = [
                e.path
                for e in os.scandir(self.dir)
                if e.name.endswith(CLAIM_SUFFIX) and e.path != skipped and e.path not in released
            ]
        except FileNotFoundError:
            return []
        here = _Where(self.folder)
        return [c for c in (self._read(Path(p), here) for p in names) if c is not None]

    def _write(self, me: Owner, keys: list[str]) -> Path:
        """A new claim file (a unique name), complete when it appears."""
        here = _Where(self.folder)
        where = here.record()
        made = False
        if where[0] is None:  # (its first claim: the folder is made with its claims folder)
            with contextlib.suppress(OSError):  # (as _write_tmp would, which then says why)
                make_folder(os.fspath(self.dir), self.permissions)
                where = _Where(self.folder).record()
        elif here.no_subfolder:  # (a new folder's first claim: no write tried first, to
            # fail for want of its claims folder)
            with contextlib.suppress(OSError):  # (as above)
                made = make_folder(os.fspath(self.dir), self.permissions, parent_mode=here.mode)
        try:
            data = orjson.dumps({"owner": me._asdict(), "keys": keys, "where": where})
        except TypeError:
            _refuse_keys_not_utf8(keys)
            raise
        return self._publish(data, CLAIM_SUFFIX, made)

    def _publish(self, data: bytes, suffix: str, made: bool = False) -> Path:
        """A new file of the claims folder (a unique name ending with ``suffix``, the
        cache's permissions), complete when it appears (``made``: that folder was just
        made here, with them)."""
        dirname = os.fspath(self.dir)
        name = process.unique_name()
        tmp = f"{dirname}/{name}.tmp"
        path = f"{dirname}/{name}{suffix}"
        for attempt in range(_PUBLISH_ATTEMPTS):
            try:
                self._write_tmp(tmp, data, made and not attempt)
                os.replace(tmp, path)
                return Path(path)
            except FileNotFoundError:
                # (the folder removed meanwhile, with the file written so far: a clean of
                # it while nothing was claimed there; made again, as for a first claim)
                if attempt == _PUBLISH_ATTEMPTS - 1:
                    raise
            except OSError as error:  # (a full disk: said with what to do)
                note_write_error(error, self.dir.parent)
                raise
        raise AssertionError("unreachable")  # (the last attempt returns or raises)

    def _write_tmp(self, tmp: str, data: bytes, made: bool = False) -> None:
        dirname = os.fspath(self.dir)
        try:
            write_new(tmp, data, self.permissions)
        except FileNotFoundError:
            make_folder(dirname, self.permissions)
            write_new(tmp, data, self.permissions)
        except PermissionError:  # (another user's claims folder just made: its chmod)
            if not await_chmod(dirname):
                raise
            write_new(tmp, data, self.permissions)
        else:
            if self.permissions is not None and not made:  # (a claims folder left by a
                repair(dirname, self.permissions)  # kill: files.repair)

    @contextlib.contextmanager
    def _folder_lock(
        self, me: Owner, window: interrupts.deferred | None = None, create: bool = True
    ) -> tp.Iterator[None]:
        """The folder's lock, taken and given back with Ctrl-C held back (not while
        waiting for it). With a ``window``, it stays held back in the block, for the caller
        to hand on what it takes there; without, the block is interruptible.
        ``create=False``: the folder is not made again when it is gone (FileNotFoundError;
        its claims folder is made)."""
        lock = self.dir / LOCK_NAME
        token = orjson.dumps({"owner": me._asdict(), "token": os.urandom(8).hex()})
        own = window is None
        held = window if window is not None else interrupts.deferred(hold=False)
        delay = 0.001
        while True:
            held.hold()
            try:
                taken = self._try_lock(lock, token, create)
            except BaseException:  # (the folder gone, or not writable: nothing taken)
                if own:
                    held.allow()  # (Ctrl-C is given back its handler)
                raise
            if taken:
                held.on_interrupt(lambda: _unlock(lock, token))
                break
            held.allow()  # (nothing taken: a Ctrl-C while waiting goes up now)
            self._break_if_stale(lock)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        try:
            if own:
                held.allow()  # (e.g. a compaction: interruptible; unlocked below)
            yield
        finally:
            try:
                held.hold()  # (a Ctrl-C raised on entering it is pending no more)
            finally:
                _unlock(lock, token)
                if own:
                    held.allow()

    def _try_lock(self, lock: Path, token: bytes, create: bool = True) -> bool:
        """Create the lock file with our token (False: someone else holds it)."""
        waited = False  # (for the chmod of another user's claims folder: once)
        while True:
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileNotFoundError:
                if not create:  # (the folder gone: FileNotFoundError)
                    _make_claims_dir(self.dir, self.permissions)
                    continue
                try:
                    make_folder(self.dir, self.permissions)
                except OSError as error:
                    if error.errno in _UNWRITABLE:
                        raise _unwritable(self.dir, error) from error
                    note_write_error(error, self.dir.parent)  # (a full disk: what to do)
                    raise
                continue
            except FileExistsError:
                return False
            except OSError as error:
                if error.errno == errno.EACCES and not waited and await_chmod(self.dir):
                    waited = True  # (another user's claims folder just made: its chmod)
                    continue
                if error.errno in _UNWRITABLE:
                    raise _unwritable(self.dir, error) from error
                note_write_error(error, self.dir.parent)  # (a full disk: what to do)
                raise
            try:
                if self.permissions is not None:  # (read by the others: see _break_if_stale)
                    fchmod(fd, lock, self.permissions)
                os.write(fd, token)
            except OSError as error:  # (a full disk: no empty lock left, what to do said)
                with contextlib.suppress(OSError):
                    os.remove(lock)
                note_write_error(error, self.dir.parent)
                raise
            finally:
                os.close(fd)
            if self.permissions is not None:  # (a claims folder left by a kill: files.repair)
                repair(self.dir, self.permissions)
            return True

    def _break_if_stale(self, lock: Path) -> None:
        data = _read(lock)
        if data is None:
            return
        try:
            mtime = os.stat(lock).st_mtime
        except FileNotFoundError:
            return
        # (an empty lock is judged within seconds: by the file server's clock, which set
        # its mtime, not this host's, which may differ by more on a network filesystem;
        # an unreadable one likewise, but as a lock of an unknown owner: after a minute)
        unknown = not data or data.startswith(_UNREADABLE)
        age = (_server_time(lock.parent) if unknown else time.time()) - mtime
        try:
            owner = Owner(**orjson.loads(data)["owner"])
            alive = process.is_alive(owner.host, owner.pid, owner.start)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            alive = None  # being written: judge by age only
        # (empty for more than a moment: its owner died between creating and writing it)
        limit = EMPTY_LOCK_STALE_S if not data else LOCK_STALE_S
        if alive is False or (alive is None and age > limit):
            _remove_if_unchanged(lock, data, self.permissions)

    def wait(
        self,
        keys: tp.Iterable[str],
        done: tp.Callable[[list[str]], list[str]],
        poll: float = 0.05,
        max_poll: float = 1.0,
        on_wait: tp.Callable[[dict[str, Owner]], None] | None = None,
    ) -> list[str]:
        """Wait until no live claim holds any of the keys; return those still not done.

        ``done(keys)`` returns which keys are finished (e.g. present in the cache).
        """
        pending = list(keys)
        while pending:
            pending = [k for k in pending if k not in set(done(pending))]
            if not pending:
                return []
            held = self.holders(pending)
            if not held:
                return pending  # released (or owner died) without finishing them
            if on_wait is not None:
                on_wait(held)
            time.sleep(poll)
            poll = min(poll * 1.5, max_poll)
        return []


class FolderHold:
    """Keeps new claims out of a folder while it is removed or renamed (see
    ``ops.clean.held``): its lock, taken and kept (a batch claimer waits for it), and a
    claim of ``keys`` (a claimer that takes no lock, of a task's result, writes its claim
    then lists the others: it sees this one and waits). One hold can be put in several
    folders (a node and its inputs-* nodes), and let go where they were moved since."""

    def __init__(self, keys: tp.Sequence[str]) -> None:
        me = Owner.current()
        self.name = process.unique_name()
        self._claim = orjson.dumps({"owner": me._asdict(), "keys": list(keys), "hold": True})
        self._token = orjson.dumps({"owner": me._asdict(), "token": os.urandom(8).hex()})

    def claim_file(self, folder: Path) -> Path:
        """The claim this hold writes in a folder (not counted as a computation there)."""
        return folder / CLAIMS_DIR / (self.name + CLAIM_SUFFIX)

    def put(self, folder: Path) -> None:
        """Hold a folder, making nothing but its claims folder (FileNotFoundError: gone),
        with the folder's mode (the cache's permissions, unknown here), as its files."""
        claims = Claims(folder, permissions=folder_mode(folder))
        _make_claims_dir(claims.dir, claims.permissions)
        lock = claims.dir / LOCK_NAME
        delay = 0.001
        while True:
            try:
                write_new(os.fspath(lock), self._token, claims.permissions)
                break
            except FileExistsError:
                claims._break_if_stale(lock)  # (its holder was killed a minute ago)
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        try:
            tmp = claims.dir / f"{self.name}.tmp"
            write_new(os.fspath(tmp), self._claim, claims.permissions)
            os.replace(tmp, self.claim_file(folder))
        except BaseException:
            _unlock(lock, self._token)
            raise

    def take_away(self, folder: Path) -> None:
        """Remove what ``put`` wrote in a folder (or where it was moved since)."""
        _discard(self.claim_file(folder))
        _unlock(folder / CLAIMS_DIR / LOCK_NAME, self._token)


class _Where:
    """The folder whose keys claim files name, looked at once, when first asked."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._seen: list[tp.Any] | None = None
        # the folder had no subfolder when looked at (its link count, 2: a new folder,
        # without claims folder; unknown, e.g. btrfs's 1: False), and its mode
        self.no_subfolder = False
        self.mode: int | None = None

    def record(self) -> list[tp.Any]:
        """[inode, real path] of the folder (inode None: it cannot be looked at)."""
        if self._seen is None:
            self._seen, status = _inode_and_real_path(self.folder)
            if status is not None:
                self.no_subfolder, self.mode = status.st_nlink == 2, status.st_mode
        return self._seen

    def differs(self, written: tp.Any) -> bool:
        """Whether a claim file written in ``written`` (a ``record()``) is in another
        folder now: a copy, whose inode and real path both differ. A real path alone
        differs for the same folder mounted twice, or named through a moved symlink; an
        inode alone, on a filesystem whose inode numbers are not stable (some FUSE ones):
        neither is a copy."""
        try:
            inode, real = written
        except (TypeError, ValueError):
            return False  # (not understood: as if not recorded)
        here_inode, here_real = self.record()
        if inode is None or here_inode is None:
            return False
        return bool(inode != here_inode and real != here_real)


_O_PATH = getattr(os, "O_PATH", 0)  # (Linux: a handle on the folder, opened for nothing)


def _inode_and_real_path(folder: Path) -> tuple[list[tp.Any], os.stat_result | None]:
    """[inode, os.path.realpath(folder)], and the folder's status (None: it cannot be
    looked at): the real path the kernel gives an open handle of the folder (its
    /proc/self/fd link), 4 system calls, where realpath makes one per component of the
    path (6 for /tmp/cache/<step>/<uid>), and ~150 Python lines."""
    if _O_PATH:
        try:
            fd = os.open(folder, _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                status = os.fstat(fd)
                real = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:  # (no /proc mounted: as below)
                real = ""
            finally:
                os.close(fd)
            if real.startswith("/") and not real.endswith(" (deleted)"):
                return [status.st_ino, real], status
    try:
        status = os.stat(folder)
    except OSError:
        return [None, os.path.realpath(folder)], None
    return [status.st_ino, os.path.realpath(folder)], status


def folder_key(folder: str | os.PathLike[str]) -> tuple[int, int] | str:
    """What tells a folder from another here, whatever path names it (a symlink, another
    mount of the cache, a relative path): its device and inode; its real path when it
    cannot be looked at (gone, or a path of another host's mounts). Wait records name
    folders by path, and a cycle through a folder named two ways was missed."""
    try:
        status = os.stat(folder)
    except OSError:
        return os.path.realpath(folder)
    return (status.st_dev, status.st_ino)


def _by_real_path(keys: tp.Mapping[str, tp.Iterable[str]]) -> dict[str, list[str]]:
    """Keys by folder, the folders by their real path: the keys of one folder named by
    two paths (a map's cache given through a symlink, calling the same map given the real
    path) are merged, not the last path's kept (a cycle through the others was missed)."""
    out: dict[str, list[str]] = {}
    for folder, folder_keys in keys.items():
        out.setdefault(os.path.realpath(folder), []).extend(folder_keys)
    return {folder: sorted(set(k)) for folder, k in out.items()}


def _by_folder(keys: tp.Any, here: str) -> dict[str, frozenset[str]]:
    """Keys of a wait record by folder (a list: of ``here``, the record's folder)."""
    if isinstance(keys, dict):
        return {os.fspath(f): frozenset(k) for f, k in keys.items()}
    return {here: frozenset(keys)}


def _make_claims_dir(path: Path, permissions: int | None) -> None:
    """The claims folder of a folder that is there (FileNotFoundError: it is gone, and is
    not made again), with ``permissions`` when made here."""
    try:
        os.mkdir(path)
    except FileExistsError:
        if permissions is not None:  # (left by a kill before its chmod: see files.repair)
            repair(path, permissions)
        return
    if permissions is not None:
        chmod_folder(path, permissions)


def _remove_if_unchanged(lock: Path, data: bytes, permissions: int | None = None) -> None:
    """Remove a stale lock, unless it changed since it was judged stale (broken, and taken
    afresh, by another waiter). Breakers take turns (a ``.breaking`` file next to it,
    holding the breaker's token): only a breaker removes a lock that is not its own, so
    the lock read in its turn is the one it removes. (A lock renamed away to be broken,
    then found fresh and put back, could come back after its holder had released it:
    held by nobody, for good.) A turn is taken over only once 10 s old (its breaker was
    killed or stalled): the breaker checks that the turn is still its own just before
    removing the lock."""
    breaking = lock.with_name(lock.name + BREAKING_SUFFIX)
    mine = os.urandom(8).hex().encode()
    try:
        fd = os.open(breaking, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        if permissions is not None:  # (read by the other waiters)
            fchmod(fd, breaking, permissions)
    except FileExistsError:  # another waiter's turn (or one killed in it: how long ago?)
        with contextlib.suppress(FileNotFoundError):
            # (by the file server's clock, which set its mtime: see _break_if_stale)
            turn = _read(breaking)
            age = _server_time(lock.parent) - os.stat(breaking).st_mtime
            if turn is not None and age > BREAKING_STALE_S and _read(breaking) == turn:
                _discard(breaking)  # (not taken over since)
        return
    try:
        os.write(fd, mine)
    finally:
        os.close(fd)
    try:
        current = _read(lock)
        # (tokens are random: the same bytes, the same lock)
        if current is not None and current == data and _read(breaking) == mine:
            _discard(lock)
    finally:
        if _read(breaking) == mine:  # (never end another waiter's turn)
            _discard(breaking)


# what stands for the bytes of a lock or turn file we may not read (never a token: json)
_UNREADABLE = b"\0unreadable "


def _unreadable_claim(path: Path) -> ClaimFile | None:
    """A claim file this user may not read (another user's, made by an exca from before
    105da31 under a private umask: 0o600), judged by its name (``process.unique_name``:
    the host and pid of its process) and mtime (its heartbeat), as holding every key: a
    live one is waited for, a dead one removed (as a lock we may not read is broken, see
    ``_read``). None: gone."""
    try:
        mtime = os.stat(path).st_mtime
    except FileNotFoundError:
        return None
    parts = path.name[: -len(CLAIM_SUFFIX)].split("-")
    if len(parts) >= 5 and parts[-4].isdigit() and parts[-3].isdigit():
        host, pid, thread = "-".join(parts[:-4]), int(parts[-4]), int(parts[-3])
    else:  # (named otherwise: told by its heartbeat alone)
        host, pid, thread = "an unknown host", 0, 0
    try:
        uid = f"uid {os.stat(path).st_uid}"
    except OSError:
        uid = "another user"
    if not pid:
        host = f"an unknown process of {uid} (its claim file {path.name} is unreadable here)"
    owner = Owner(host=host, pid=pid, start=None, thread=thread, job_id=None)
    return ClaimFile(path, owner, EVERY_KEY, mtime, unreadable=True)


def file_owner(path: Path | str) -> str:
    """Who owns a file, for messages: "user NAME (uid N)", "uid N", or "another user"."""
    try:
        uid = os.stat(path).st_uid
    except OSError:
        return "another user"
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def unreadable_wait(claim: ClaimFile, count: int) -> str:
    """What a worker waiting for a live claim it may not read says (see _EveryKey)."""
    user = file_owner(claim.path)
    folder = claim.path.parent.parent
    return (
        f"Waiting for {claim.owner.describe()}, whose claim file {claim.path}, owned by "
        f"{user}, this user may not read: the keys it holds cannot be known, so the "
        f"{count} key(s) needed here in {folder} wait for it, each until it is "
        "cached, the others until that claim ends (its process releases it, or dies: it is "
        "then removed), rather than be computed twice. Its process wrote it without the "
        "cache's permissions (permissions=None under a private umask, or an older exca): "
        "give the infra of every user of this cache `permissions` (the default 0o777, or "
        f"e.g. 0o770 for a group), or ask {user} to make the claim files of "
        f"{claim.path.parent} readable (chmod a+r)"
    )


def _read(path: Path) -> bytes | None:
    """The bytes of a lock or a turn file (None: gone). One that another user's process
    made and was killed in before its chmod (see ``_try_lock``: created with its umask,
    0o600 for a private one) stays unreadable here: its inode and mtime stand for its
    bytes (a waiter then breaks it as a lock of an unknown owner, after a minute)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except PermissionError:
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            return None
        return _UNREADABLE + f"{stat.st_ino} {stat.st_mtime_ns}".encode()


def _unlock(lock: Path, token: bytes) -> None:
    with contextlib.suppress(FileNotFoundError):
        if _read(lock) == token:  # never remove a lock someone else took over
            try:
                os.remove(lock)
            except FileNotFoundError:
                raise
            except OSError as error:
                # (left, the lock of this live process is never stale: every claimer of
                # the folder, this process too, waited for it as long as it lived)
                _HEARTBEAT.leave_lock(lock, token)
                logger.warning(
                    "Could not remove the lock %s (%s): this process removes it as soon as it can",
                    lock,
                    error,
                )
            except BaseException:
                # (interrupted there: a KeyboardInterrupt raised in a pool's thread, where
                # Ctrl-C is not held back; left, the lock of this live process stopped
                # every claimer of the folder, this process's next call too, for good)
                _HEARTBEAT.leave_lock(lock, token)
                raise


def _discard(path: Path | str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


class _Heartbeat:
    """One daemon thread per process refreshing the mtime of the claim files it holds."""

    def __init__(self) -> None:
        self._paths: dict[Path, float] = {}
        # claim files released whose removal failed (see Claim.release): removed later
        self.released: frozenset[str] = frozenset()
        # folder locks given back whose removal failed, with their token (see _unlock)
        self.left_locks: dict[Path, bytes] = {}
        self._wake = threading.Event()  # (a file left: its retries start now, not a period later)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, path: Path, period: float) -> None:
        with self._lock:
            self._paths[path] = period
            self._start()

    def _start(self) -> None:
        if self._thread is None or self._pid != process.pid() or not self._thread.is_alive():
            self._pid = process.pid()
            self._thread = threading.Thread(target=self._run, name="exca-heartbeat", daemon=True)
            self._thread.start()

    def remove(self, path: Path) -> None:
        with self._lock:
            self._paths.pop(path, None)

    def leave(self, path: Path) -> None:
        """A released claim file that could not be removed: tried again until it is."""
        with self._lock:
            self.released = self.released | {os.fspath(path)}
            self._start()
        self._wake.set()

    def leave_lock(self, lock: Path, token: bytes) -> None:
        """A folder lock given back that could not be removed: tried again until it is
        (while it still holds this token: never one taken over since)."""
        with self._lock:
            self.left_locks = {**self.left_locks, lock: token}
            self._start()
        self._wake.set()

    def _remove_left_locks(self) -> None:
        for lock, token in self.left_locks.items():
            try:
                if _read(lock) == token:
                    os.remove(lock)
            except FileNotFoundError:
                pass
            except OSError:
                continue  # (still not removable)
            with self._lock:
                self.left_locks = {k: v for k, v in self.left_locks.items() if k != lock}

    def _run(self) -> None:
        while True:
            with self._lock:
                paths = dict(self._paths)
            retry = self.released or self.left_locks
            periods = [*paths.values(), *([3 * RELEASE_RETRY_S] if retry else [])]
            self._wake.wait(max(min(periods, default=DEFAULT_HEARTBEAT_S) / 3, 0.05))
            self._wake.clear()
            for path in paths:
                # (any OSError: a transient NFS error, ESTALE or EIO, stopped the thread for
                # good, and every claim of the process looked dead two periods later)
                with contextlib.suppress(OSError):
                    os.utime(path)
            for left in self.released:
                try:
                    os.remove(left)
                except FileNotFoundError:
                    pass
                except OSError:
                    continue  # (still not writable)
                with self._lock:
                    self.released = self.released - {left}
            self._remove_left_locks()

    def reset_in_child(self) -> None:
        """After a fork: the claims are the parent's (it keeps them fresh), and the lock may
        have been held by a thread that does not exist in the child."""
        self._lock = threading.Lock()
        self._paths = {}
        self.released = frozenset()
        self.left_locks = {}
        self._wake = threading.Event()
        self._thread = None


_HEARTBEAT = _Heartbeat()
os.register_at_fork(after_in_child=_HEARTBEAT.reset_in_child)


def keep_fresh(path: Path) -> None:
    """Refresh a file's mtime every third of a heartbeat period, as a claim's (another
    host tells this process alive by it), until ``stop_refreshing``."""
    _HEARTBEAT.add(path, heartbeat_seconds())


def stop_refreshing(path: Path) -> None:
    _HEARTBEAT.remove(path)


_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _unwritable(folder: Path, error: OSError) -> OSError:
    """The error of a claim that cannot be taken in a folder this process cannot write
    to (a read-only or another user's cache), saying what to do."""
    return type(error)(
        error.errno,
        f"Cannot write into the cache folder {folder.parent}: {error.strerror} (computing "
        "or cleaning there needs write access; use a folder you can write to, or "
        "mode='read-only' to only read what is cached there)",
        error.filename,
    )


def _refuse_keys_not_utf8(keys: list[str]) -> None:
    """A clear error for keys that cannot be written (a map item's uid made of a file name
    that os.listdir decoded with surrogates): as the cache says for such keys."""
    for key in keys:
        check_utf8(key)
