"""In-flight claims: the worker about to compute some keys of a folder claims them, so
that another process or thread needing the same keys waits and reads instead of
computing them again.

Protocol (only operations a network filesystem honours: O_EXCL create, link, rename,
unlink):
- a batch of keys: a short folder lock (``claims/.lock``, O_EXCL) serialises claim
  *creation* (a few ms); under it, the claimer lists the claim files, drops dead ones,
  and writes one claim file for the keys nobody live holds (one file per batch);
- a single key (a task's result): no lock. Its claim file has a name fixed by the key
  and is written under a temporary name, then hard-linked into place: the link fails
  when the name exists, so one claimer wins, and the file is complete when it appears.
  A dead holder's file is renamed away (atomic: one taker wins) before linking again;
- a claim records host, pid, process start time, thread and Slurm job id; a daemon thread
  refreshes its mtime (heartbeat). A claim is dead when its process is gone (same host:
  checked at once) or its heartbeat is older than two periods (other hosts);
- keys already claimed by the same thread are re-entered, not waited for.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import typing as tp
from pathlib import Path

import orjson

from . import process
from .files import write_new
from .formats import key_file_stem

CLAIMS_DIR = "claims"
LOCK_NAME = ".lock"
CLAIM_SUFFIX = ".claim"
KEY_CLAIM_PREFIX = "key-"  # claim files of a single key: key-<key file stem>.claim
HEARTBEAT_ENV = "EXCA_CLAIM_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 30.0
LOCK_STALE_S = 60.0  # the folder lock is held for milliseconds: a minute means its owner died


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
            pid=os.getpid(),
            start=process.self_start_time(),
            thread=threading.get_native_id(),
            job_id=os.environ.get("SLURM_JOB_ID"),
        )

    def describe(self) -> str:
        job = f", slurm job {self.job_id}" if self.job_id else ""
        return f"pid {self.pid} on {self.host}{job}"


class ClaimFile(tp.NamedTuple):
    path: Path
    owner: Owner
    keys: frozenset[str]
    mtime: float

    def is_dead(self, heartbeat: float, job_alive: JobAlive | None = None) -> bool:
        alive = process.is_alive(self.owner.host, self.owner.pid, self.owner.start)
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
            _HEARTBEAT.remove(self.path)
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
            self.path = None

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: tp.Any) -> None:
        self.release()


class Claims:
    """Claims of the keys of one folder (stored in ``<folder>/claims/``)."""

    def __init__(
        self, folder: Path | str, heartbeat: float | None = None, job_alive: JobAlive | None = None
    ) -> None:
        self.folder = Path(folder)
        self.dir = self.folder / CLAIMS_DIR
        self.heartbeat = heartbeat if heartbeat is not None else heartbeat_seconds()
        self.job_alive = job_alive

    # --- reading ------------------------------------------------------------------------
    def _read(self, path: Path) -> ClaimFile | None:
        try:
            data = path.read_bytes()
            mtime = os.stat(path).st_mtime
            record = orjson.loads(data)
            owner = Owner(**record["owner"])
            return ClaimFile(path, owner, frozenset(record["keys"]), mtime)
        except (FileNotFoundError, orjson.JSONDecodeError, KeyError, TypeError):
            return None  # being written (renamed in place) or removed: not a live claim

    def current(self) -> list[ClaimFile]:
        """Claim files of live owners (dead ones are ignored, not removed)."""
        try:
            names = [e.path for e in os.scandir(self.dir) if e.name.endswith(CLAIM_SUFFIX)]
        except FileNotFoundError:
            return []
        found = (self._read(Path(p)) for p in names)
        return [c for c in found if c is not None and not c.is_dead(self.heartbeat, self.job_alive)]

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

    # --- claiming -------------------------------------------------------------------------
    def claim(self, keys: tp.Sequence[str]) -> Claim:
        """Claim every key that no live other holds (one claim file for all of them)."""
        me = Owner.current()
        with self._folder_lock(me):
            mine: list[str] = []
            busy: dict[str, Owner] = {}
            reentered: list[str] = []
            held: dict[str, Owner] = {}
            for claim in self._all_files():
                if claim.is_dead(self.heartbeat, self.job_alive):
                    _discard(claim.path)  # we hold the folder lock: nobody else removes it
                    continue
                for key in claim.keys:
                    held[key] = claim.owner
            for key in dict.fromkeys(keys):
                owner = held.get(key)
                if owner is None:
                    mine.append(key)
                elif (owner.host, owner.pid, owner.thread) == (me.host, me.pid, me.thread):
                    reentered.append(key)
                else:
                    busy[key] = owner
            path = self._write(me, mine) if mine else None
        result = Claim(self.folder, mine, busy, reentered, path)
        if path is not None:
            _HEARTBEAT.add(path, self.heartbeat)
        return result

    def claim_one(self, key: str) -> Claim:
        """Claim a single key without the folder lock (see the module docstring)."""
        me = Owner.current()
        record = orjson.dumps({"owner": me._asdict(), "keys": [key]})
        dirname = os.fspath(self.dir)
        path = f"{dirname}/{KEY_CLAIM_PREFIX}{key_file_stem(key)}{CLAIM_SUFFIX}"
        tmp = f"{dirname}/{process.unique_name()}.tmp"
        _write_new(tmp, record, dirname)
        try:
            while True:
                try:
                    os.link(tmp, path)
                    break
                except FileExistsError:
                    pass
                holder = self._holder(path)
                if holder is None:
                    continue  # vanished meanwhile (released or taken over): link again
                owner = holder.owner
                if owner[:4] == me[:4]:  # host, pid, start time, thread: this very thread
                    return Claim(self.folder, [], {}, [key])
                if not holder.is_dead(self.heartbeat, self.job_alive):
                    return Claim(self.folder, [], {key: owner}, [])
                _take_away(path, holder)
        finally:
            _discard(tmp)
        # a batch claim may hold this key too (a process of an older exca): it wins
        mine = os.path.basename(path)
        with os.scandir(dirname) as listing:
            others = [e.path for e in listing if e.name.endswith(CLAIM_SUFFIX) and e.name != mine]
        for other in filter(None, (self._read(Path(p)) for p in others)):
            if key not in other.keys:
                continue
            if other.is_dead(self.heartbeat, self.job_alive):
                _discard(other.path)  # a unique name: nobody else can reuse it
                continue
            _discard(path)
            owner = other.owner
            if owner[:4] == me[:4]:
                return Claim(self.folder, [], {}, [key])
            return Claim(self.folder, [], {key: owner}, [])
        claimed = Path(path)
        _HEARTBEAT.add(claimed, self.heartbeat)
        return Claim(self.folder, [key], {}, [], claimed)

    def _holder(self, path: str) -> ClaimFile | None:
        """The claim in a single-key claim file; None when it vanished. An unreadable one
        (never written by exca: links publish complete files) counts as a dead owner's."""
        try:
            with open(path, "rb") as handle:
                data = handle.read()
            mtime = os.stat(path).st_mtime
        except FileNotFoundError:
            return None
        try:
            record = orjson.loads(data)
            return ClaimFile(Path(path), Owner(**record["owner"]), frozenset(record["keys"]), mtime)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return ClaimFile(Path(path), _NOBODY, frozenset(), 0.0)

    def _all_files(self) -> list[ClaimFile]:
        try:
            names = [e.path for e in os.scandir(self.dir) if e.name.endswith(CLAIM_SUFFIX)]
        except FileNotFoundError:
            return []
        return [c for c in (self._read(Path(p)) for p in names) if c is not None]

    def _write(self, me: Owner, keys: list[str]) -> Path:
        path = self.dir / (process.unique_name() + CLAIM_SUFFIX)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps({"owner": me._asdict(), "keys": keys}))
        os.replace(tmp, path)
        return path

    @contextlib.contextmanager
    def _folder_lock(self, me: Owner) -> tp.Iterator[None]:
        lock = self.dir / LOCK_NAME
        token = orjson.dumps({"owner": me._asdict(), "token": os.urandom(8).hex()})
        delay = 0.001
        while True:
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileNotFoundError:
                self.dir.mkdir(parents=True, exist_ok=True)
                continue
            except FileExistsError:
                self._break_if_stale(lock)
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
                continue
            try:
                os.write(fd, token)
            finally:
                os.close(fd)
            break
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                if lock.read_bytes() == token:  # never remove a lock someone else took over
                    os.remove(lock)

    def _break_if_stale(self, lock: Path) -> None:
        try:
            data = lock.read_bytes()
            age = time.time() - os.stat(lock).st_mtime
        except FileNotFoundError:
            return
        try:
            owner = Owner(**orjson.loads(data)["owner"])
            alive = process.is_alive(owner.host, owner.pid, owner.start)
        except (orjson.JSONDecodeError, KeyError, TypeError):
            alive = None  # being written: judge by age only
        if alive is False or (alive is None and age > LOCK_STALE_S):
            stale = lock.with_name(f"{LOCK_NAME}.stale-{os.urandom(4).hex()}")
            try:
                os.rename(lock, stale)  # atomic: one breaker wins
            except FileNotFoundError:
                return
            if stale.read_bytes() != data:  # took a fresh lock by mistake: put it back
                with contextlib.suppress(FileExistsError):
                    os.link(stale, lock)
            _discard(stale)

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


def _discard(path: Path | str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


_NOBODY = Owner(host="", pid=0, start=None, thread=0, job_id=None)  # of an unreadable claim


def _write_new(path: str, data: bytes, dirname: str) -> None:
    """Create a file holding ``data`` (its folder too, when missing)."""
    try:
        write_new(path, data)
    except FileNotFoundError:
        os.makedirs(dirname, exist_ok=True)
        write_new(path, data)


def _take_away(path: str, dead: ClaimFile) -> None:
    """Remove a dead holder's single-key claim file; atomic (a rename to a unique name), so
    of several takers one removes it. A file that is no longer the dead one (another taker
    linked its own claim meanwhile) is put back."""
    stale = f"{path}.stale-{os.urandom(4).hex()}"
    try:
        os.rename(path, stale)
    except FileNotFoundError:
        return
    try:
        with open(stale, "rb") as handle:
            record = orjson.loads(handle.read())
        replaced = Owner(**record["owner"]) != dead.owner
    except (orjson.JSONDecodeError, KeyError, TypeError):
        replaced = dead.owner != _NOBODY
    if replaced:
        with contextlib.suppress(FileExistsError):
            os.link(stale, path)
    _discard(stale)


class _Heartbeat:
    """One daemon thread per process refreshing the mtime of the claim files it holds."""

    def __init__(self) -> None:
        self._paths: dict[Path, float] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, path: Path, period: float) -> None:
        with self._lock:
            self._paths[path] = period
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="exca-heartbeat", daemon=True
                )
                self._thread.start()

    def remove(self, path: Path) -> None:
        with self._lock:
            self._paths.pop(path, None)

    def _run(self) -> None:
        while True:
            with self._lock:
                paths = dict(self._paths)
            period = min(paths.values(), default=DEFAULT_HEARTBEAT_S)
            time.sleep(max(period / 3, 0.05))
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.utime(path)


_HEARTBEAT = _Heartbeat()
