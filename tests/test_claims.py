"""Single-key claims (a task's result): one winner among racing claimers, re-entry by the
same thread, takeover of a dead holder's claim, and respect of batch claims."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import orjson

from exca.storage import process
from exca.storage.claims import CLAIMS_DIR, Claims, Owner


def _dead_owner() -> dict[str, object]:
    """An owner on this host whose process has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return {"host": process.hostname(), "pid": proc.pid, "start": 1, "thread": 1, "job_id": None}


def _key_claim_path(folder: Path) -> Path:
    claim = Claims(folder).claim_one("result")
    path = claim.path
    assert path is not None
    claim.release()
    return path


def test_one_winner_among_threads(tmp_path: Path) -> None:
    barrier = threading.Barrier(8)
    outcomes: list[str] = []
    claims_held = []

    def claim() -> None:
        barrier.wait()
        claim = Claims(tmp_path).claim_one("result")
        outcomes.append("mine" if claim.mine else "busy" if claim.busy else "other")
        claims_held.append(claim)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["busy"] * 7 + ["mine"]
    # only the winner's claim file is left (no temporary file either)
    assert [p.name for p in (tmp_path / CLAIMS_DIR).iterdir()] == [
        next(c for c in claims_held if c.mine).path.name
    ]
    for claim in claims_held:
        claim.release()
    assert list((tmp_path / CLAIMS_DIR).iterdir()) == []


def test_same_thread_reenters(tmp_path: Path) -> None:
    with Claims(tmp_path).claim_one("result") as first:
        assert first.mine == ["result"]
        again = Claims(tmp_path).claim_one("result")
        assert again.reentered == ["result"] and not again.mine and not again.busy
        holders = Claims(tmp_path).holders(["result"])
        assert holders["result"] == Owner.current()
    assert Claims(tmp_path).holders(["result"]) == {}


def test_dead_holder_is_taken_over(tmp_path: Path) -> None:
    path = _key_claim_path(tmp_path)
    path.write_bytes(orjson.dumps({"owner": _dead_owner(), "keys": ["result"]}))
    with Claims(tmp_path).claim_one("result") as claim:
        assert claim.mine == ["result"]
        assert orjson.loads(path.read_bytes())["owner"]["pid"] == Owner.current().pid
    assert not path.exists()
    assert list((tmp_path / CLAIMS_DIR).iterdir()) == []


def test_unreadable_claim_file_is_replaced(tmp_path: Path) -> None:
    path = _key_claim_path(tmp_path)
    path.write_bytes(b'{"owner": {"ho')  # never written by exca (links publish whole files)
    with Claims(tmp_path).claim_one("result") as claim:
        assert claim.mine == ["result"]
    assert list((tmp_path / CLAIMS_DIR).iterdir()) == []


def test_live_batch_claim_of_the_key_wins(tmp_path: Path) -> None:
    """A batch claim (e.g. from an older exca) holding the key: the single-key claimer
    waits for it and leaves no claim file of its own."""
    result: list[object] = []

    def batch_claim() -> None:
        result.append(Claims(tmp_path).claim(["result", "other"]))

    thread = threading.Thread(target=batch_claim)  # another thread: a live other owner
    thread.start()
    thread.join()
    batch = result[0]
    single = Claims(tmp_path).claim_one("result")
    assert single.busy and not single.mine and single.path is None
    names = [p.name for p in (tmp_path / CLAIMS_DIR).iterdir() if p.name.endswith(".claim")]
    assert names == [batch.path.name]  # type: ignore[attr-defined]
    batch.release()  # type: ignore[attr-defined]
    with Claims(tmp_path).claim_one("result") as claim:
        assert claim.mine == ["result"]


def test_dead_batch_claim_is_removed(tmp_path: Path) -> None:
    claims = tmp_path / CLAIMS_DIR
    claims.mkdir()
    dead = claims / "somebody-1-1-abc-000000.claim"
    dead.write_bytes(orjson.dumps({"owner": _dead_owner(), "keys": ["result"]}))
    with Claims(tmp_path).claim_one("result") as claim:
        assert claim.mine == ["result"]
    assert not dead.exists()


def test_claim_of_a_dead_process_with_this_pid_is_not_reentered(tmp_path: Path) -> None:
    """A pid is reused: a dead process's claim with our pid and thread id is taken over,
    not mistaken for one this thread holds (its start time differs)."""
    path = _key_claim_path(tmp_path)
    me = Owner.current()
    ghost = me._replace(start=(me.start or 0) + 12345)._asdict()
    path.write_bytes(orjson.dumps({"owner": ghost, "keys": ["result"]}))
    with Claims(tmp_path).claim_one("result") as claim:
        assert claim.mine == ["result"] and not claim.reentered
