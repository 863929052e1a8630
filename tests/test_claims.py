"""Single-key claims (a task's result), taken without the folder lock: never two holders
at once however claimers race, re-entry by the same thread, dead holders ignored and
removed, batch claims respected."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import threading
import time
import typing as tp
from pathlib import Path
from unittest import mock

import orjson
import pytest

from exca.storage import claims as claims_module
from exca.storage import process
from exca.storage.claims import CLAIMS_DIR, Claim, Claims, Owner


def _dead_owner() -> dict[str, object]:
    """An owner on this host whose process has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return {"host": process.hostname(), "pid": proc.pid, "start": 1, "thread": 1, "job_id": None}


def _write_claim(folder: Path, owner: dict[str, object], keys: list[str]) -> Path:
    claims = folder / CLAIMS_DIR
    claims.mkdir(parents=True, exist_ok=True)
    path = claims / f"{owner['host']}-{owner['pid']}-{time.time_ns():x}.claim"
    path.write_bytes(orjson.dumps({"owner": owner, "keys": keys}))
    return path


def _claim_files(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / CLAIMS_DIR).iterdir())


def test_never_two_holders_among_racing_threads(tmp_path: Path) -> None:
    """8 threads start together, each until it held the key once: at most one holds it
    at any time, and every one gets it in the end (those that met retry)."""
    barrier = threading.Barrier(8)
    holders: list[int] = []
    overlaps: list[int] = []
    done: list[int] = []

    def worker(index: int) -> None:
        claims = Claims(tmp_path)
        barrier.wait()
        while True:
            claim = claims.claim_one("result")
            if not claim.mine:
                assert claim.busy and not claim.reentered
                claims.wait(["result"], lambda keys: [])
                continue
            with claim:
                holders.append(index)
                if len(holders) > 1:
                    overlaps.append(index)
                time.sleep(0.002)
                holders.remove(index)
            done.append(index)
            return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(done) == list(range(8))
    assert overlaps == []
    assert _claim_files(tmp_path) == []  # every claim file removed, no temporary file left


def test_same_thread_reenters(tmp_path: Path) -> None:
    with Claims(tmp_path).claim_one("result") as first:
        assert first.mine == ["result"]
        again = Claims(tmp_path).claim_one("result")
        assert again.reentered == ["result"] and not again.mine and not again.busy
        assert Claims(tmp_path).holders(["result"])["result"] == Owner.current()
        assert len(_claim_files(tmp_path)) == 1  # the re-entry left no file
    assert Claims(tmp_path).holders(["result"]) == {}


def test_busy_leaves_the_holder_alone(tmp_path: Path) -> None:
    out: list[Claim] = []
    thread = threading.Thread(target=lambda: out.append(Claims(tmp_path).claim_one("result")))
    thread.start()
    thread.join()
    held = out[0]
    assert held.mine == ["result"] and held.path is not None
    other = Claims(tmp_path).claim_one("result")  # this thread: another live owner
    assert other.busy and not other.mine and other.path is None
    assert _claim_files(tmp_path) == [held.path.name]
    held.release()
    with Claims(tmp_path).claim_one("result") as claim:
        assert claim.mine == ["result"]


def test_dead_holder_is_removed(tmp_path: Path) -> None:
    dead = _write_claim(tmp_path, _dead_owner(), ["result"])
    with Claims(tmp_path).claim_one("result") as claim:
        assert claim.mine == ["result"]
        assert not dead.exists()
    assert _claim_files(tmp_path) == []


def test_unreadable_claim_file_is_ignored(tmp_path: Path) -> None:
    (tmp_path / CLAIMS_DIR).mkdir()
    (tmp_path / CLAIMS_DIR / "garbage.claim").write_bytes(b'{"owner": {"ho')
    with Claims(tmp_path).claim_one("result") as claim:
        assert claim.mine == ["result"]


def test_live_batch_claim_of_the_key_wins(tmp_path: Path) -> None:
    """A batch claim (a map's items, or an older exca) holding the key: the single-key
    claimer waits for it and leaves no claim file of its own."""
    result: list[Claim] = []

    def batch_claim() -> None:
        result.append(Claims(tmp_path).claim(["result", "other"]))

    thread = threading.Thread(target=batch_claim)  # another thread: a live other owner
    thread.start()
    thread.join()
    batch = result[0]
    assert batch.path is not None
    single = Claims(tmp_path).claim_one("result")
    assert single.busy and not single.mine and single.path is None
    names = [n for n in _claim_files(tmp_path) if n.endswith(".claim")]
    assert names == [batch.path.name]
    batch.release()
    with Claims(tmp_path).claim_one("result") as claim:
        assert claim.mine == ["result"]


def test_claim_of_a_dead_process_with_this_pid_is_not_reentered(tmp_path: Path) -> None:
    """A pid is reused: a dead process's claim with our pid and thread id is removed, not
    mistaken for one this thread holds (its start time differs)."""
    me = Owner.current()
    ghost = me._replace(start=(me.start or 0) + 12345)._asdict()
    stale = _write_claim(tmp_path, ghost, ["result"])
    with Claims(tmp_path).claim_one("result") as claim:
        assert claim.mine == ["result"] and not claim.reentered
    assert not stale.exists()


def test_release_removes_only_its_own_file(tmp_path: Path) -> None:
    """Claim file names are never reused: a late release (a worker thought dead) cannot
    remove the claim of the one that took over."""
    first = Claims(tmp_path).claim_one("result")
    assert first.path is not None
    first_path = first.path
    first_path.unlink()  # as if taken over after its owner was judged dead
    with Claims(tmp_path).claim_one("result") as second:
        assert second.mine == ["result"]
        first.release()  # the late release
        assert Claims(tmp_path).holders(["result"]) == {"result": Owner.current()}
        assert second.path is not None and second.path.exists()


@pytest.mark.timeout(60)
def test_an_empty_folder_lock_of_a_dead_writer_is_broken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process killed between creating claims/.lock and writing its owner in it leaves
    an empty lock: batch claims take it over once it is a little old (2 s), not after
    the minute a lock whose owner is unknown gets (here an hour: it would hang)."""
    monkeypatch.setattr(claims_module, "LOCK_STALE_S", 3600.0)
    lock = tmp_path / CLAIMS_DIR / ".lock"
    lock.parent.mkdir()
    lock.touch()
    old = time.time() - 5
    os.utime(lock, (old, old))
    claim = Claims(tmp_path).claim(["a", "b"])
    try:
        assert claim.mine == ["a", "b"]
    finally:
        claim.release()


def test_a_stale_lock_broken_by_two_waiters_never_comes_back_held_by_nobody(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two waiters judge the lock of a killed process stale. A breaks it and takes the
    lock afresh; B then renamed A's fresh lock away, found other bytes and linked it
    back, which, when A had released it meanwhile, left a lock of a live process held by
    nobody: every later claim in the folder waited for as long as that process lived."""
    code = (
        "import os\nfrom exca.storage import claims as C\n"
        f"with C.Claims({str(tmp_path)!r})._folder_lock(C.Owner.current()):\n    os._exit(9)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False, timeout=60)
    lock = tmp_path / CLAIMS_DIR / ".lock"
    assert lock.exists()  # (left by the killed process)
    claims = Claims(tmp_path)
    events = {name: threading.Event() for name in ("b_judging", "a_inside", "b_acting", "a_out")}
    breaker_b: list[int] = []
    is_alive, link = process.is_alive, os.link

    def judged(*args: tp.Any) -> bool | None:  # B judges the dead owner, A breaks meanwhile
        if threading.get_ident() in breaker_b and not events["b_judging"].is_set():
            events["b_judging"].set()
            events["a_inside"].wait(10)
        return is_alive(*args)

    def linked(*args: tp.Any, **kwargs: tp.Any) -> None:  # (B's put-back, when it had one)
        if threading.get_ident() in breaker_b:
            events["b_acting"].set()
            events["a_out"].wait(10)
        link(*args, **kwargs)

    monkeypatch.setattr(claims_module.process, "is_alive", judged)
    monkeypatch.setattr(os, "link", linked)

    def waiter_b() -> None:
        breaker_b.append(threading.get_ident())
        try:
            claims._break_if_stale(lock)  # (what a waiter finding the lock taken does)
        finally:
            events["b_acting"].set()

    def waiter_a() -> None:
        with claims._folder_lock(Owner.current()):
            events["a_inside"].set()
            events["b_acting"].wait(10)
            assert lock.exists()  # (B left A's lock alone: no second holder can come in)
        events["a_out"].set()

    b = threading.Thread(target=waiter_b)
    b.start()
    assert events["b_judging"].wait(10)
    a = threading.Thread(target=waiter_a)
    a.start()
    a.join(20)
    b.join(20)
    monkeypatch.undo()
    assert not lock.exists()  # A released it: nobody holds it
    assert [p.name for p in lock.parent.iterdir()] == []
    claim = Claims(tmp_path).claim(["item"])  # (waited forever)
    try:
        assert claim.mine == ["item"]
    finally:
        claim.release()


def test_the_turn_of_a_breaker_killed_while_breaking_the_lock_is_taken_over(
    tmp_path: Path,
) -> None:
    """A waiter killed while breaking a stale lock leaves its turn (.lock.breaking): the
    others take it over once it is 10 s old, then break the lock."""
    code = (
        "import os\nfrom exca.storage import claims as C\n"
        f"with C.Claims({str(tmp_path)!r})._folder_lock(C.Owner.current()):\n    os._exit(9)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False, timeout=60)
    turn = tmp_path / CLAIMS_DIR / ".lock.breaking"
    turn.write_bytes(b"a killed breaker's token")
    old = time.time() - 11
    os.utime(turn, (old, old))
    claim = Claims(tmp_path).claim(["item"])
    try:
        assert claim.mine == ["item"]
        assert not turn.exists()
    finally:
        claim.release()
    assert [p.name for p in turn.parent.iterdir()] == []


@pytest.mark.usefixtures("private_umask")
def test_a_hold_or_a_compaction_keeps_the_setgid_bit_of_a_group_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a cache whose permissions are 0o2770 (a group's cache: what is made there takes
    the folder's group), the claims folder that a removal's hold or a compaction made had
    no setgid bit (they applied the folder's mode without it), where a claimer's has it:
    the claim files and locks of the users claiming there later took their own group, in
    which the other users of the cache may not be, and could not read them."""
    from exca.ops import clean
    from exca.storage.claims import FolderHold

    folder = tmp_path / "node"
    folder.mkdir()
    os.chmod(folder, 0o2770)  # (made with the cache's permissions)
    claims = Claims(folder, permissions=0o2770)
    with claims.claim(["a"]):
        assert _modes(folder)[CLAIMS_DIR] == 0o2770  # (a claimer's)
    for made_by in ("hold", "compaction"):
        shutil.rmtree(folder / CLAIMS_DIR)
        if made_by == "hold":
            hold = FolderHold(["a"])
            hold.put(folder)
            assert _modes(folder)[CLAIMS_DIR] == 0o2770, (made_by, _modes(folder))
            hold.take_away(folder)
        else:
            monkeypatch.setattr(clean, "compactable", lambda *args: ["x", "y"])
            assert clean.compact(folder, grace_seconds=0) == (0, 0)  # (nothing to merge)
        assert _modes(folder)[CLAIMS_DIR] == 0o2770, (made_by, _modes(folder))


def test_claim_files_another_user_left_unreadable_are_judged_by_their_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim file (or a wait record) of another user that this one may not read (an exca
    from before 105da31 wrote them 0o600 under a private umask) made every claimer and
    reader of the folder raise PermissionError (claims, status, `exca list`, clean). Such
    a claim stands for every key, its owner told by its name (host, pid: a unique_name)
    and its heartbeat by its mtime: a live one is waited for, a dead one removed."""
    import pathlib

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    claims_dir = tmp_path / CLAIMS_DIR
    claims_dir.mkdir()
    host = process.hostname()

    def unreadable(name: str, age: float = 0.0) -> Path:
        path = claims_dir / name
        path.write_bytes(b"")
        when = time.time() - age
        os.utime(path, (when, when))
        return path

    now = f"{time.time_ns() // 1000:x}"
    live = unreadable(f"{host}-{sleeper.pid}-{sleeper.pid}-{now}-abcdef.claim")
    fresh = unreadable(f"elsewhere-12-12-{now}-abcdef.claim")  # (another host: its mtime)
    stale = unreadable(f"elsewhere-13-13-{now}-abcdef.claim", age=1000)
    odd = unreadable("not-a-unique-name.claim", age=1000)
    record = unreadable(f"{host}-{sleeper.pid}-{sleeper.pid}-{now}-abcdef.waits")
    refused = {live, fresh, stale, odd, record}
    read_bytes = pathlib.Path.read_bytes

    def refuse(path: pathlib.Path) -> bytes:
        if path in refused:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(pathlib.Path, "read_bytes", refuse)
    try:
        claims = Claims(tmp_path, heartbeat=30.0)
        assert {c.path for c in claims.current()} == {live, fresh}
        assert claims.holders(["result"])["result"].pid in (sleeper.pid, 12)
        assert claims.waits() == []  # (no cycle is found through a record unreadable)
        claim = claims.claim(["a", "b"])
        assert claim.mine == [] and set(claim.busy) == {"a", "b"}
        assert not stale.exists() and not odd.exists()  # (dead: removed)
        assert claims.claim_one("result").mine == []
        fresh.unlink()
        sleeper.kill()
        sleeper.wait()
        with claims.claim_one("result") as one:
            assert one.mine == ["result"]
        assert not live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_lock_and_a_turn_left_unreadable_by_another_users_killed_claimer_are_broken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claimer of another user, with a private umask, killed right after creating the
    folder's lock (or a breaker's turn) and before its chmod, leaves a file we may not
    read: a waiter raised PermissionError there, for good (no other user's claim could
    be taken in that folder). Such a lock is a lock of an unknown owner (broken after a
    minute), such a turn is taken over after 10 s, by their inode and mtime."""
    import pathlib

    claims_dir = tmp_path / CLAIMS_DIR
    claims_dir.mkdir()
    lock, turn = claims_dir / ".lock", claims_dir / ".lock.breaking"
    lock.write_bytes(b"")
    turn.write_bytes(b"")
    for path, age in ((lock, 61), (turn, 11)):
        old = time.time() - age
        os.utime(path, (old, old))

    def identity(path: Path) -> tuple[int, int]:
        stat = os.stat(path)
        return stat.st_ino, stat.st_mtime_ns

    unreadable = {identity(lock), identity(turn)}  # (not the ones made later)
    read_bytes = pathlib.Path.read_bytes

    def refused(path: pathlib.Path) -> bytes:
        with contextlib.suppress(FileNotFoundError):
            if identity(path) in unreadable:
                raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(pathlib.Path, "read_bytes", refused)
    claim = Claims(tmp_path).claim(["item"])
    try:
        assert claim.mine == ["item"]
    finally:
        claim.release()
    assert [p.name for p in claims_dir.iterdir()] == []


# --- Ctrl-C while claiming or releasing --------------------------------------------------------
# A real SIGINT (signal.raise_signal: the interpreter's own handler raises KeyboardInterrupt)
# sent at the instants where one left a claim file or the folder lock behind, owned by a
# process that lives on (a notebook kernel): every other worker of the folder then waited.


def _sigint_after(target: object, name: str, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make ``target.name`` send SIGINT to this process right after it ran (once)."""
    import signal

    original = getattr(target, name)
    sent: list[int] = []

    def wrapped(*args: object, **kwargs: object) -> object:
        out = original(*args, **kwargs)
        if not sent:
            sent.append(1)
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(target, name, wrapped)
    return sent


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / CLAIMS_DIR).iterdir())


@pytest.mark.parametrize("where", ["claim file written", "folder lock taken", "lock given back"])
def test_ctrl_c_while_claiming_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    claims = Claims(tmp_path)
    target, name = {
        "claim file written": (Claims, "_write"),
        "folder lock taken": (Claims, "_try_lock"),
        "lock given back": (claims_module, "_unlock"),
    }[where]
    sent = _sigint_after(target, name, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        claims.claim(["a", "b"])
    assert sent and _left(tmp_path) == []
    monkeypatch.undo()
    with claims.claim(["a", "b"]) as claim:  # (and nothing waits for a leftover)
        assert claim.mine == ["a", "b"]


def test_ctrl_c_while_claiming_one_key_or_releasing_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = Claims(tmp_path)
    sent = _sigint_after(Claims, "_write", monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        claims.claim_one("a")
    assert sent and _left(tmp_path) == []
    monkeypatch.undo()
    claim = claims.claim_one("a")
    sent = _sigint_after(claims_module._HEARTBEAT, "remove", monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        claim.release()
    assert sent and _left(tmp_path) == []


class _Taken:
    def __init__(self) -> None:
        self.released = 0

    def release(self) -> None:
        self.released += 1


def test_a_guarded_claim_is_given_back_whenever_ctrl_c_comes() -> None:
    """``guard``: the body runs with Ctrl-C allowed; the release runs whatever happens (a
    ``with claim:`` skipped it when the interrupt struck on entering ``__exit__``)."""
    import signal

    from exca.storage import interrupts

    def interrupted_body() -> None:
        signal.raise_signal(signal.SIGINT)  # (Ctrl-C during the computation)

    taken = _Taken()
    with pytest.raises(KeyboardInterrupt), interrupts.deferred() as window:
        window.guard(taken, interrupted_body)
    assert taken.released == 1

    class InterruptedRelease(_Taken):
        def release(self) -> None:
            signal.raise_signal(signal.SIGINT)  # (held back: raised once given back)
            super().release()

    taken = InterruptedRelease()
    with pytest.raises(KeyboardInterrupt), interrupts.deferred() as window:
        assert window.guard(taken, lambda: 7) == 7
    assert taken.released == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_escapable_block_gives_the_handler_back_whenever_ctrl_c_comes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``deferred(escape=...)``: a second Ctrl-C raises at once, but never while the
    block ends (a Ctrl-C held back, then one more as it gave the handler back, left its
    handler installed for good: later blocks held nothing, and a Ctrl-C was swallowed)."""
    import signal

    from exca.storage import interrupts

    told: list[str] = []
    checkpoint = interrupts._checkpoint

    def late_ctrl_c() -> None:  # (one more Ctrl-C as the block ends)
        signal.raise_signal(signal.SIGINT)
        checkpoint()

    escapable = interrupts.deferred(escape=lambda: told.append("escape"))
    with pytest.raises(KeyboardInterrupt), escapable:
        signal.raise_signal(signal.SIGINT)  # (held back, told)
        monkeypatch.setattr(interrupts, "_checkpoint", late_ctrl_c)
    monkeypatch.setattr(interrupts, "_checkpoint", checkpoint)
    assert told == ["escape"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt), interrupts.deferred(escape=lambda: None):
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)  # (the second one: raised at once)
        told.append("not reached")
    assert told == ["escape"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_while_waiting_for_the_folder_lock_stops_at_once(tmp_path: Path) -> None:
    """(a review: the whole claim, lock wait included, held Ctrl-C back: it waited as long
    as another live process held the lock, for good if that one hung)"""
    import signal

    from exca.storage.claims import Owner

    claims = Claims(tmp_path)
    code = (
        "import sys, time; from exca.storage.claims import Claims, Owner\n"
        "with Claims(sys.argv[1])._folder_lock(Owner.current()):\n"
        "    print('locked', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            claims.claim(["a"])  # (waits for the lock: the holder sleeps 60 s)
        timer.join()
        assert holder.poll() is None  # (interrupted while the lock was still held)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert Owner.current().pid not in [c.owner.pid for c in claims._all_files()]
    finally:
        holder.kill()
        holder.wait()


def test_a_compaction_of_a_folder_removed_meanwhile_leaves_ctrl_c_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compact() of a node folder removed after it looked at it (another cleaning): the
    folder lock it could not take left Ctrl-C held back for good in the main thread (a
    notebook's next Ctrl-C did nothing; seen as an order-dependent test failure)."""
    import signal

    from exca.ops import clean

    folder = tmp_path / "node"
    folder.mkdir()

    def removed_after_the_look(path: tp.Any, grace_seconds: float, look: tp.Any = None) -> bool:
        shutil.rmtree(folder)  # (it had index files of ended writers to merge)
        return True

    monkeypatch.setattr(clean, "compactable", removed_after_the_look)
    assert clean.compact(folder, grace_seconds=0) == (0, 0)
    monkeypatch.undo()
    assert not folder.exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signal.SIGINT)


def test_a_child_forked_while_ctrl_c_is_held_back_gets_the_default_handler(
    tmp_path: Path,
) -> None:
    """(a review: forked by another thread then, the child kept the recording handler and
    ignored Ctrl-C for good)"""
    import signal

    from exca.storage import interrupts

    with interrupts.deferred():
        pid = os.fork()
        if pid == 0:  # the child: Ctrl-C must raise there
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)
                os._exit(3)  # (ignored)
            except KeyboardInterrupt:
                os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.fixture
def private_umask() -> tp.Iterator[None]:
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def _modes(folder: Path) -> dict[str, int]:
    """The mode of each path under a folder, by its path relative to it."""
    import stat

    return {
        os.path.relpath(os.path.join(top, name), folder): stat.S_IMODE(
            os.stat(os.path.join(top, name)).st_mode
        )
        for top, dirs, files in os.walk(folder)
        for name in [*dirs, *files]
    }


@pytest.mark.usefixtures("private_umask")
def test_claims_follow_the_caches_permissions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a private umask (0o077), what claims make in a cache folder whose permissions
    are 0o770 (its claims folder, claim files, the folder's lock) has that mode, and so
    does what a removal's hold or a compaction makes there, which know the folder only:
    they made the claims folder with the umask (0o700: the other users of a shared cache
    could then take no claim there), and its lock and claim files were 0o600 (unreadable
    by them)."""
    from exca.ops import clean
    from exca.storage.claims import FolderHold

    folder = tmp_path / "node"
    folder.mkdir()
    os.chmod(folder, 0o770)  # (made with the cache's permissions)
    claims = Claims(folder, permissions=0o770)
    with claims._folder_lock(Owner.current()):
        assert _modes(folder) == {CLAIMS_DIR: 0o770, f"{CLAIMS_DIR}/.lock": 0o770}
    with claims.claim(["a"]):
        assert len(_modes(folder)) == 2  # (claims/ and the claim file)
        assert set(_modes(folder).values()) == {0o770}, _modes(folder)
    for made_by in ("hold", "compaction"):
        shutil.rmtree(folder / CLAIMS_DIR)
        if made_by == "hold":
            hold = FolderHold(["a"])
            hold.put(folder)
            assert {".lock", f"{hold.name}.claim"} <= set(os.listdir(folder / CLAIMS_DIR))
            assert set(_modes(folder).values()) == {0o770}, _modes(folder)
            hold.take_away(folder)
        else:
            monkeypatch.setattr(clean, "compactable", lambda *args: ["x", "y"])
            assert clean.compact(folder, grace_seconds=0) == (0, 0)  # (nothing to merge)
        assert _modes(folder) == {CLAIMS_DIR: 0o770}, made_by


def test_a_wait_record_keeps_the_keys_of_a_folder_named_by_two_paths(tmp_path: Path) -> None:
    """A worker holding keys of one map folder under two paths (the map given the cache
    through a symlink, one of its items calling the same map given the real path) records
    them all: the record named folders by their real path, and kept only the keys of the
    last path, so a worker waiting for the others missed the cycle and both waited for
    good."""
    real, other = tmp_path / "c", tmp_path / "d"
    real.mkdir()
    other.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    claims = Claims(real, heartbeat=30.0)
    record = claims.post_wait(
        {os.fspath(other): ["b0"]}, {os.fspath(link): ["a0"], os.fspath(real): ["a2"]}
    )
    try:
        [(_, waits, holds)] = claims.waits()
        assert holds[os.path.realpath(real)] == {"a0", "a2"}
        assert waits[os.path.realpath(other)] == {"b0"}
    finally:
        Claims.end_wait(record)


def test_a_live_claim_copied_with_its_folder_holds_nothing_in_the_copy(
    tmp_path: Path,
) -> None:
    """A cache copied while a worker of this host computed in it: the copy of its claim
    made the copy's callers wait for that worker's whole computation (which writes into
    the original), then compute anyway (a probe). In the copy it is dead; in the original,
    and through a symlink to it, it still holds its keys."""
    original, copy, link = tmp_path / "original", tmp_path / "copy", tmp_path / "link"
    original.mkdir()
    link.symlink_to(original, target_is_directory=True)
    with Claims(original).claim(["a", "b"]), Claims(original / "task").claim_one("result"):
        shutil.copytree(original, copy)
        me = Owner.current()
        for folder in (original, link):
            assert Claims(folder).holders(["a", "b"]) == {"a": me, "b": me}
            assert Claims(folder / "task").holders(["result"]) == {"result": me}
        assert Claims(copy).holders(["a", "b"]) == {}
        assert Claims(copy / "task").holders(["result"]) == {}
        taken: list[list[str]] = []
        thread = threading.Thread(  # (another thread: not a re-entry)
            target=lambda: taken.extend(
                [Claims(copy).claim(["a"]).mine, Claims(copy / "task").claim_one("result").mine]
            )
        )
        thread.start()
        thread.join(timeout=10)
        assert taken == [["a"], ["result"]]


def test_keys_given_back_are_taken_back_in_order_until_one_another_holds(
    tmp_path: Path,
) -> None:
    """A worker gives back keys it has not started, then takes them back (its wait
    ended): in order, as far as no live claim of another worker holds them; the keys
    kept and taken are then held by one claim file, the others stay free."""
    claims = Claims(tmp_path)
    claim = claims.claim(["a", "b", "c", "d", "e"])
    claim.give_back(["b", "c", "d", "e"], claims)
    taken: list[Claim] = []
    thread = threading.Thread(target=lambda: taken.append(claims.claim(["d"])))
    thread.start()  # (another thread: a live other owner)
    thread.join()
    assert taken[0].mine == ["d"]
    assert claim.take_back(["b", "c", "d", "e"], claims) == ["b", "c"]
    assert claim.mine == ["a", "b", "c"]
    assert len(_claim_files(tmp_path)) == 2
    assert claims.holders(["a", "b", "c", "d", "e"]).keys() == {"a", "b", "c", "d"}
    assert claim.take_back(["e"], claims) == ["e"]  # (d taken by the other: e still free)
    taken[0].release()
    claim.give_back(["a", "b", "c", "e"], claims)  # (all: no claim file left)
    assert claim.path is None and _claim_files(tmp_path) == []
    assert claim.take_back(["b", "c"], claims) == ["b", "c"]
    assert claims.holders(["a", "b", "c"]).keys() == {"b", "c"}
    claim.release()
    assert _claim_files(tmp_path) == []


@pytest.mark.parametrize("how", ["claim", "claim_one"])
def test_a_full_disk_while_claiming_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A claim on a full disk: its empty lock file (or temporary claim file) stayed in
    claims/, and the bare "No space left on device" said nothing of where. Now nothing is
    left, the error names the folder and says what to do, and once space is back the
    claim is taken."""
    import errno

    claims = Claims(tmp_path)
    with claims.claim(["warm-up"]):  # (claims/ exists: only writes fail now)
        pass

    def full(fd: int, data: tp.Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space left") as info:
        claims.claim(["a"]) if how == "claim" else claims.claim_one("a")
    monkeypatch.undo()
    notes = getattr(info.value, "__notes__", [])
    assert any(str(tmp_path) in n and "free space there" in n for n in notes), notes
    assert _claim_files(tmp_path) == []
    with claims.claim(["a"]) as claim:
        assert claim.mine == ["a"]


@pytest.mark.parametrize("made", ["lock", "claims folder"])
def test_a_full_disk_making_the_claims_lock_says_where_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, made: str
) -> None:
    """A full disk (no inode, a quota) as a claim made the folder's lock file, or the
    claims folder itself: the bare "[Errno 28] No space left on device" reached the user
    of a map or a task, naming no folder. It now names it and says what to do."""
    import errno

    claims = Claims(tmp_path)
    if made == "lock":
        with claims.claim(["warm-up"]):  # (claims/ exists: the lock's creation fails)
            pass
    os_open, os_mkdir = os.open, os.mkdir

    def no_inode(path: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        if Path(path).name == (".lock" if made == "lock" else "claims"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return (os_open if made == "lock" else os_mkdir)(path, *args, **kwargs)

    monkeypatch.setattr(os, "open" if made == "lock" else "mkdir", no_inode)
    with pytest.raises(OSError, match="No space left") as info:
        claims.claim(["a"])
    monkeypatch.undo()
    notes = getattr(info.value, "__notes__", [])
    assert any(str(tmp_path) in n and "free space there" in n for n in notes), notes
    assert not (tmp_path / "claims").exists() or _claim_files(tmp_path) == []
    with claims.claim(["a"]) as claim:
        assert claim.mine == ["a"]


def test_a_claim_file_that_cannot_be_removed_is_removed_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim released while its folder cannot be written (remounted read-only, say):
    its removal raised, masking the call's own error, and the file of this live process
    stayed, so the other processes of this host waited for its keys as long as it lived
    (and this thread's next claims took them for an enclosing call's). Now the release
    warns, this process takes its keys for free, and removes the file once it can."""
    import errno

    claims = Claims(tmp_path)
    claim = claims.claim(["a"])
    remove = os.remove

    def read_only(path: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> None:
        if str(path).endswith(".claim"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        remove(path, *args, **kwargs)

    monkeypatch.setattr(os, "remove", read_only)
    claim.release()  # (no error: the call's own is the one to see)
    assert len(_claim_files(tmp_path)) == 1
    again = claims.claim(["a"])
    assert again.mine == ["a"] and not again.reentered
    monkeypatch.undo()
    again.release()
    deadline = time.monotonic() + 10
    while _claim_files(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _claim_files(tmp_path) == []


def test_a_folder_lock_whose_removal_failed_is_removed_later(tmp_path: Path) -> None:
    """Giving the folder lock back, its removal failed once (EIO, ESTALE of a network
    filesystem): the lock of this live process was never stale, so every later batch
    claim of the folder, this process's too, waited for good. The heartbeat removes it."""
    claims = Claims(tmp_path)
    real_remove = os.remove
    failed: list[str] = []

    def remove_failing_once(path: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> None:
        if os.fspath(path).endswith(os.sep + ".lock") and not failed:
            failed.append(os.fspath(path))
            raise OSError(5, "Input/output error", os.fspath(path))
        real_remove(path, *args, **kwargs)

    with mock.patch.object(os, "remove", remove_failing_once):
        claims.claim(["a"]).release()
    assert failed, "the lock was never removed"
    second: list[Claim] = []
    thread = threading.Thread(target=lambda: second.append(claims.claim(["b"])), daemon=True)
    thread.start()
    thread.join(30)  # (bound on a wait that never ends without the fix)
    assert second, "a batch claim waited for a lock its live owner gave back"
    assert second[0].mine == ["b"]
    second[0].release()


def test_an_interrupt_in_a_pool_thread_giving_the_lock_back_leaves_nothing_held(
    tmp_path: Path,
) -> None:
    """A KeyboardInterrupt raised in a thread (where Ctrl-C is not held back, e.g. a
    threadpool's) as a batch claim gave the folder lock back: the lock and the claim file
    just written stayed, both of this live process, never stale; the next claim of the
    folder, a call of this very process too, waited for good. The claim file goes at once,
    the lock with the heartbeat, and the keys are claimed again."""
    claims = Claims(tmp_path)
    real_remove = os.remove
    raised: list[BaseException] = []

    def remove_interrupted_once(path: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> None:
        if os.fspath(path).endswith(os.sep + ".lock") and not raised:
            raised.append(KeyboardInterrupt("raised in the thread"))
            raise raised[0]
        real_remove(path, *args, **kwargs)

    def first() -> None:
        with contextlib.suppress(KeyboardInterrupt):
            claims.claim(["a", "b"])

    with mock.patch.object(os, "remove", remove_interrupted_once):
        thread = threading.Thread(target=first, daemon=True)
        thread.start()
        thread.join(30)
    assert raised and [f for f in _claim_files(tmp_path) if f.endswith(".claim")] == []
    second: list[Claim] = []
    thread = threading.Thread(target=lambda: second.append(claims.claim(["a", "b"])), daemon=True)
    thread.start()
    thread.join(30)  # (bound on a wait that never ends without the fix)
    assert second, "a batch claim waited for a lock its live owner gave back"
    assert second[0].mine == ["a", "b"]
    second[0].release()
