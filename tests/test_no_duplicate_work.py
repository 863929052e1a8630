"""No duplicate work (DESIGN "Storage", in-flight claims; SPEC [ours] "No duplicate work, ever").

Callers run in separate processes (a small script in tmp_path that imports this module:
tests/ is on PYTHONPATH) and/or threads. Each computation appends "<pid> <thread id>" to
`<ctl>/calls.txt`; the first computing caller blocks until the test creates
`<ctl>/release`, so that the other callers ask while it computes.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import typing as tp
from pathlib import Path

import filelog
import orjson
import pydantic
import pytest
from filelog import append, lines
from waiting import waits_for_others

import exca
from exca.graph import registry
from exca.storage import process as process_info
from exca.storage.claims import Claim, Claims

WAIT_S = 60.0  # bound on any wait (never reached when things work)
wait_until = functools.partial(filelog.wait_until, timeout=WAIT_S, poll=0.02)


def me() -> str:
    return f"{os.getpid()} {threading.get_native_id()}"


def block_if_first(ctl: Path) -> None:
    """The first caller that computed anything (first line of calls.txt) waits for `release`."""
    first = lines(ctl / "calls.txt")[0].split(" ", 2)[-2:]
    if " ".join(first) == me():
        wait_until((ctl / "release").exists)


class Slow(pydantic.BaseModel):
    x: int = 1
    ctl: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        ctl = Path(self.ctl)
        append(ctl / "calls.txt", f"task {me()}")
        block_if_first(ctl)
        return 2 * self.x


class SlowInputs(pydantic.BaseModel):
    ctl: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self, x: int) -> int:
        ctl = Path(self.ctl)
        append(ctl / "calls.txt", f"task {me()}")
        block_if_first(ctl)
        return 2 * x


class SlowMap(pydantic.BaseModel):
    ctl: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        ctl = Path(self.ctl)
        for item in items:
            append(ctl / "calls.txt", f"{item} {me()}")
            block_if_first(ctl)
            yield 2 * item


class GenerationMap(pydantic.BaseModel):
    """Outputs 2 * item + the generation written in <ctl>/gen (old outputs are told from
    new ones). Under EXCA_TEST_BLOCK=k, a call of the method has written its first k
    outputs (a flush, after FLUSH_SECONDS) when it blocks on the next until `release`."""

    ctl: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        ctl = Path(self.ctl)
        generation = int((ctl / "gen").read_text()) if (ctl / "gen").exists() else 0
        block = int(os.environ.get("EXCA_TEST_BLOCK", -1))
        for index, item in enumerate(items):
            append(ctl / "calls.txt", f"{item} {me()}")
            if index == block - 1:
                time.sleep(0.6)  # (> FLUSH_SECONDS: the outputs so far are written)
            if index == block:
                wait_until((ctl / "release").exists)
            yield 2 * item + generation


def build(spec: dict[str, tp.Any]) -> tp.Any:
    infra = {"folder": spec["folder"], "mode": spec.get("mode", "cached")}
    infra.update(spec.get("infra", {}))
    if spec["kind"] == "task":
        return Slow(x=spec.get("x", 1), ctl=spec["ctl"], infra=infra)
    if spec["kind"] == "generation-map":
        return GenerationMap(ctl=spec["ctl"], infra=infra)
    return SlowMap(ctl=spec["ctl"], infra=infra)


def call_in_threads(spec: dict[str, tp.Any]) -> None:
    """Entry point of the caller script: `threads` threads call at once; prints results."""
    results: dict[int, tp.Any] = {}

    shared = build(spec) if spec.get("shared") else None  # (one instance for all threads)

    def call(index: int) -> None:
        obj = shared if shared is not None else build(spec)
        (Path(spec["ctl"]) / f"ready-{os.getpid()}-{index}").touch()
        try:
            if spec["kind"] == "task":
                results[index] = obj.process()
            else:
                results[index] = list(obj.process(spec["items"][index]))
        except Exception as error:
            results[index] = f"ERROR {type(error).__name__}: {error}"
        (Path(spec["ctl"]) / f"done-{os.getpid()}-{index}").touch()

    threads = [threading.Thread(target=call, args=(i,)) for i in range(spec["threads"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print("RESULTS " + json.dumps([results[i] for i in range(spec["threads"])]), flush=True)


SCRIPT = """
import json
import sys

import test_no_duplicate_work

test_no_duplicate_work.call_in_threads(json.loads(sys.argv[1]))
"""


class Caller:
    """A caller process running `call_in_threads`."""

    def __init__(self, tmp_path: Path, spec: dict[str, tp.Any], env: dict[str, str] | None = None):
        script = tmp_path / "caller.py"
        if not script.exists():
            script.write_text(textwrap.dedent(SCRIPT))
        index = len(list(tmp_path.glob("caller-*.out")))
        self.out = tmp_path / f"caller-{index}.out"
        self.err = tmp_path / f"caller-{index}.err"
        with self.out.open("w") as out, self.err.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), json.dumps(spec)],
                stdout=out,
                stderr=err,
                env={**os.environ, **(env or {})},
                cwd=tmp_path,
            )

    def results(self, timeout: float = WAIT_S) -> list[tp.Any]:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        assert code == 0, self.err.read_text()[-3000:]
        found = [x for x in self.out.read_text().splitlines() if x.startswith("RESULTS ")]
        assert found, self.err.read_text()[-3000:]
        return list(json.loads(found[0][len("RESULTS ") :]))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()  # reap it (a zombie keeps its pid)


@pytest.fixture
def ctl(tmp_path: Path) -> tp.Iterator[Path]:
    folder = tmp_path / "ctl"
    folder.mkdir()
    (tmp_path / "cache").mkdir()
    yield folder
    (folder / "release").touch()  # let blocked callers end, whatever happened


def _spec(tmp_path: Path, ctl: Path, kind: str, threads: int, **extra: tp.Any) -> dict[str, tp.Any]:
    return {
        "kind": kind,
        "folder": str(tmp_path / "cache"),
        "ctl": str(ctl),
        "threads": threads,
        **extra,
    }


def _run_callers(tmp_path: Path, specs: list[dict[str, tp.Any]], ctl: Path) -> list[tp.Any]:
    callers = [Caller(tmp_path, spec) for spec in specs]
    try:
        total = sum(spec["threads"] for spec in specs)

        # someone is computing (blocked until released), and every other caller thread
        # waits for it (it says so on its stderr) or ended (its items were all computed
        # by a caller that was not blocked: overlapping map lists)
        def asked() -> int:
            count = 0
            for caller, spec in zip(callers, specs):
                waits = caller.err.read_text().count("Waiting for ")
                done = len(list(ctl.glob(f"done-{caller.proc.pid}-*")))
                count += min(waits + done, spec["threads"])
            return count

        wait_until(lambda: bool(lines(ctl / "calls.txt")) and asked() >= total - 1)
        (ctl / "release").touch()
        return [r for caller in callers for r in caller.results()]
    finally:
        for caller in callers:
            caller.kill()


def claim_files(folder: Path) -> list[str]:
    claims = folder / "claims"
    return sorted(os.listdir(claims)) if claims.exists() else []


# --- the same task, asked at the same time -----------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("processes,threads", [(2, 1), (1, 2), (2, 2)])
def test_task_computed_once(tmp_path: Path, ctl: Path, processes: int, threads: int) -> None:
    specs = [_spec(tmp_path, ctl, "task", threads, x=21) for _ in range(processes)]
    results = _run_callers(tmp_path, specs, ctl)
    assert results == [42] * (processes * threads)
    assert len(lines(ctl / "calls.txt")) == 1
    task = Slow(x=21, ctl=str(ctl), infra={"folder": tmp_path / "cache"})
    assert task.process() == 42
    assert len(lines(ctl / "calls.txt")) == 1
    folder = task.infra.uid_folder()
    assert folder is not None
    assert not [n for n in claim_files(folder) if n.endswith(".claim")]


@pytest.mark.timeout(120)
def test_a_forced_call_while_another_process_computes_computes_again(
    tmp_path: Path, ctl: Path
) -> None:
    """A process computes a config inline; another forces it meanwhile, from two threads of
    one instance: it waits, then computes again, once (it returned the other process's
    result, which predates the force: computed by its code, maybe older)."""
    computing = Caller(tmp_path, _spec(tmp_path, ctl, "task", 1, x=21))
    try:
        wait_until(lambda: bool(lines(ctl / "calls.txt")))  # (it computes: blocked)
        forcing = Caller(tmp_path, _spec(tmp_path, ctl, "task", 2, x=21, mode="force", shared=True))
        # (one forcing thread waits for that computation, the other for its own force)
        wait_until(lambda: "Waiting for " in forcing.err.read_text())
        (ctl / "release").touch()
        assert computing.results() + forcing.results() == [42, 42, 42]
    finally:
        computing.kill()
    calls = lines(ctl / "calls.txt")
    assert len(calls) == 2, calls
    assert calls[0].split()[1] != calls[1].split()[1]  # (two processes)


@pytest.mark.timeout(120)
def test_clear_job_while_another_process_computes_says_it_cannot_stop_it(
    tmp_path: Path, ctl: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """clear_job() while another process computes the config inline: nothing to cancel,
    and the result that process stores when it ends is cached after the clear; it said
    nothing of that (a user clearing an outdated result found it back, a probe). It now
    warns, naming that process; the computing caller gets its result, computed once, and
    writes back the config.yaml the clear removed (without it `exca list` and
    iter_cached() missed the entry until the next call)."""
    computing = Caller(tmp_path, _spec(tmp_path, ctl, "task", 1, x=31))
    try:
        wait_until(lambda: bool(lines(ctl / "calls.txt")))  # (it computes: blocked)
        task = build(_spec(tmp_path, ctl, "task", 1, x=31))
        with caplog.at_level("WARNING", logger="exca"):
            task.infra.clear_job()
        said = f"pid {computing.proc.pid} on {process_info.hostname()} computes it now"
        assert said in caplog.text and "call clear_job() again then" in caplog.text
        folder = task.infra.uid_folder()
        assert folder is not None and not (folder / "config.yaml").exists()
        (ctl / "release").touch()
        assert computing.results() == [62]
    finally:
        computing.kill()
    assert (folder / "config.yaml").exists()
    assert [cached.x for cached in task.infra.iter_cached()] == [31]
    assert task.process() == 62 and len(lines(ctl / "calls.txt")) == 1


@pytest.mark.timeout(60)
def test_task_threads_in_this_process(
    tmp_path: Path, ctl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads of the test process itself, on two instances of one config."""
    waits = waits_for_others(monkeypatch)
    out: list[tp.Any] = []

    def call() -> None:
        out.append(Slow(x=4, ctl=str(ctl), infra={"folder": tmp_path / "cache"}).process())

    threads = [threading.Thread(target=call) for _ in range(2)]
    threads[0].start()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))
    threads[1].start()
    waits.until(threads[1], kinds=("claim",))  # (for the first one's claim)
    (ctl / "release").touch()
    for thread in threads:
        thread.join(timeout=WAIT_S)
    assert out == [8, 8]
    assert len(lines(ctl / "calls.txt")) == 1


@pytest.mark.timeout(90)
@pytest.mark.parametrize("call", ["run", "job", "job_array"])
def test_no_job_for_a_task_another_worker_computes(
    tmp_path: Path,
    ctl: Path,
    call: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A config computed inline by another caller (its claim is live) and asked for with
    cluster="local": a call or an array submits no job (it would only wait for the claim
    inside its allocation, and its end, e.g. a time limit, was taken for the task's
    failure, which then replaced the result being computed); the call waits for that
    computation. Neither does job(): its job follows that computation (a job submitted
    would hold its allocation only to wait, a GPU for as long as the other computes); its
    cancel() says that it cannot stop the other worker (it did nothing, silently)."""
    folder = tmp_path / "cache"
    waits = waits_for_others(monkeypatch)
    inline: list[int] = []
    first = threading.Thread(
        target=lambda: inline.append(Slow(ctl=str(ctl), infra={"folder": folder}).process())
    )
    first.start()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))
    other = Slow(ctl=str(ctl), infra={"folder": folder, "cluster": "local"})
    assert other.infra.status() == "running"
    results: list[int] = []
    waiter = None
    if call == "run":
        waiter = threading.Thread(target=lambda: results.append(other.process()))
        waiter.start()
        waits.until(waiter)  # (decided: a submission would show in jobs/)
    elif call == "job":
        job = other.infra.job()
        assert job.job_id == "#claim#" and job.state == "RUNNING" and not job.done()
        with caplog.at_level("WARNING", logger="exca"):
            job.cancel()  # (nothing here can stop the other worker: said, not ignored)
        assert "Cannot cancel" in caplog.text and f"pid {os.getpid()} on" in caplog.text
        assert not job.done() and job.stdout() is None
    else:
        with other.infra.job_array() as array:
            array.append(other.infra.clone_obj())
    folder_of_task = other.infra.uid_folder()
    assert folder_of_task is not None
    assert not (folder_of_task / "jobs").exists()  # (no job record: nothing submitted)
    (ctl / "release").touch()
    first.join(timeout=WAIT_S)
    if waiter is not None:
        waiter.join(timeout=WAIT_S)
    elif call == "job":
        results.append(job.result())
    else:
        results.append(Slow(ctl=str(ctl), infra={"folder": folder}).process())
    assert inline == [2] and results == [2]
    assert len(lines(ctl / "calls.txt")) == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("inputs", (False, True))
def test_task_kept_in_ram_only_threads_of_one_instance(
    ctl: Path, inputs: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No folder (keep_in_ram only): no claim on disk, yet threads calling one instance
    compute it once (each computed it; with inputs, each call computed it anyway)."""
    waits = waits_for_others(monkeypatch)
    call: tp.Callable[[], int]
    if inputs:
        with_inputs = SlowInputs(ctl=str(ctl), infra={"keep_in_ram": True})
        call = functools.partial(with_inputs.process, 5)
    else:
        call = Slow(x=5, ctl=str(ctl), infra={"keep_in_ram": True}).process
    out: list[tp.Any] = []
    threads = [threading.Thread(target=lambda: out.append(call())) for _ in range(3)]
    threads[0].start()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))
    for thread in threads[1:]:
        thread.start()
    waits.until(*threads[1:], kinds=("lock",))  # (for the first one's computation)
    (ctl / "release").touch()
    for thread in threads:
        thread.join(timeout=WAIT_S)
    assert out == [10, 10, 10]
    assert len(lines(ctl / "calls.txt")) == 1
    if inputs:  # (another input: computed, and kept)
        assert with_inputs.process(6) == 12 and with_inputs.process(6) == 12
        assert len(lines(ctl / "calls.txt")) == 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("processes,threads", [(2, 1), (1, 2), (2, 2)])
def test_map_items_computed_once(tmp_path: Path, ctl: Path, processes: int, threads: int) -> None:
    lists = [list(range(0, 10)), list(range(5, 15))]
    specs = [
        _spec(tmp_path, ctl, "map", threads, items=[lists[(p + t) % 2] for t in range(threads)])
        for p in range(processes)
    ]
    results = _run_callers(tmp_path, specs, ctl)
    expected = [[2 * i for i in items] for spec in specs for items in spec["items"]]
    assert results == expected
    computed = collections.Counter(int(line.split()[0]) for line in lines(ctl / "calls.txt"))
    assert computed == dict.fromkeys(range(15), 1)
    mapper = SlowMap(ctl=str(ctl), infra={"folder": tmp_path / "cache"})
    assert list(mapper.process(list(range(15)))) == [2 * i for i in range(15)]
    assert len(lines(ctl / "calls.txt")) == 15
    folder = mapper.infra.uid_folder()
    assert folder is not None
    assert not [n for n in claim_files(folder) if n.endswith(".claim")]


@pytest.mark.timeout(120)
def test_a_pool_map_forced_while_another_process_forces_it(tmp_path: Path, ctl: Path) -> None:
    """A process forces a map (inline) and has rewritten 10 of its 12 items, still holding
    their claim, when another process forces it with cluster="processpool": the latter's
    pool worker waits for that claim, then computes them again (they predate its force).
    Both return new outputs (the latter raised "N item(s) not computed"), and the cache
    holds them."""
    items = list(range(12))
    cache = tmp_path / "cache"
    old = list(GenerationMap(ctl=str(ctl), infra={"folder": cache}).process(items))
    assert old == [2 * i for i in items]
    (ctl / "gen").write_text("1")
    calls = ctl / "calls.txt"
    spec = _spec(tmp_path, ctl, "generation-map", 1, items=[items], mode="force")
    first = Caller(tmp_path, spec, env={"EXCA_TEST_BLOCK": "10"})
    second = None
    try:
        wait_until(lambda: len(lines(calls)) == 2 * len(items) - 1)  # (blocked on its 11th)
        second = Caller(tmp_path, {**spec, "infra": {"cluster": "processpool"}})
        wait_until(lambda: "Waiting for " in second.err.read_text())
        (ctl / "release").touch()
        expected = [[2 * i + 1 for i in items]]
        assert first.results() == expected
        assert second.results() == expected
    finally:
        first.kill()
        if second is not None:
            second.kill()
    forced = collections.Counter(int(line.split()[0]) for line in lines(calls)[len(items) :])
    assert set(forced) == set(items)
    count = len(lines(calls))
    mapper = GenerationMap(ctl=str(ctl), infra={"folder": cache})
    assert list(mapper.process(items)) == [2 * i + 1 for i in items]
    assert len(lines(calls)) == count


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cluster", [None, "threadpool"])
def test_map_forced_from_two_threads_of_one_instance(
    tmp_path: Path, ctl: Path, cluster: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mode=force applies once per instance: a second thread of the instance calling it
    while the first forces the items waits and reads them (it forced them again)."""
    waits = waits_for_others(monkeypatch)
    mapper = SlowMap(
        ctl=str(ctl), infra={"folder": tmp_path / "cache", "mode": "force", "cluster": cluster}
    )
    items = list(range(6))
    out: dict[int, list[int]] = {}

    def call(index: int) -> None:
        out[index] = list(mapper.process(items))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    threads[0].start()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))  # (the first one computes, blocked)
    threads[1].start()
    # (the second one asks meanwhile: waits for the first one's force, or for its items'
    # claims, in a thread of its pool)
    filelog.wait_until(lambda: waits.count("lock", "claim") > 0 or not threads[1].is_alive())
    (ctl / "release").touch()
    for thread in threads:
        thread.join(timeout=WAIT_S)
    assert out == {0: [2 * i for i in items], 1: [2 * i for i in items]}
    computed = collections.Counter(int(line.split()[0]) for line in lines(ctl / "calls.txt"))
    assert computed == dict.fromkeys(items, 1)


@pytest.mark.timeout(60)
def test_map_threads_with_overlapping_items(tmp_path: Path, ctl: Path) -> None:
    """Two threads of this process: [0..9] and [5..14] at the same time."""
    out: dict[int, list[int]] = {}

    def call(index: int, items: list[int]) -> None:
        mapper = SlowMap(ctl=str(ctl), infra={"folder": tmp_path / "cache"})
        out[index] = list(mapper.process(items))

    first = threading.Thread(target=call, args=(0, list(range(10))))
    second = threading.Thread(target=call, args=(1, list(range(5, 15))))
    first.start()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))  # the first thread holds its items
    second.start()
    # the second thread computes what nobody holds (10..14), then waits for 5..9
    wait_until(lambda: len(lines(ctl / "calls.txt")) >= 6)
    (ctl / "release").touch()
    first.join(timeout=WAIT_S)
    second.join(timeout=WAIT_S)
    assert out == {0: [2 * i for i in range(10)], 1: [2 * i for i in range(5, 15)]}
    computed = collections.Counter(int(line.split()[0]) for line in lines(ctl / "calls.txt"))
    assert computed == dict.fromkeys(range(15), 1)


# --- the computing process dies ------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["task", "map"])
def test_killed_owner_is_taken_over(tmp_path: Path, ctl: Path, kind: str) -> None:
    # a long heartbeat: the takeover must come from the dead pid, not from a stale heartbeat
    env = {"EXCA_CLAIM_HEARTBEAT_S": "600"}
    spec = _spec(tmp_path, ctl, kind, 1, x=5, items=[[1, 2, 3]])
    owner = Caller(tmp_path, spec, env=env)
    try:
        wait_until(lambda: bool(lines(ctl / "calls.txt")))  # computing (blocked, no release)
        waiter = Caller(tmp_path, spec, env=env)
        wait_until(lambda: "Waiting for " in waiter.err.read_text())  # for the owner's claim
        assert len(lines(ctl / "calls.txt")) == 1
        owner.kill()
        results = waiter.results()  # WAIT_S bounds it; a 600 s heartbeat would exceed it
    finally:
        owner.kill()
    expected = 10 if kind == "task" else [2, 4, 6]
    assert results == [expected]
    calls = [line.split() for line in lines(ctl / "calls.txt")]
    # the owner started, the waiter computed the rest (after the owner died)
    assert calls[0][1] == str(owner.proc.pid)
    assert [c[1] for c in calls[1:]] == [str(waiter.proc.pid)] * (len(calls) - 1)
    if kind == "task":
        assert [c[0] for c in calls] == ["task", "task"]
        obj: tp.Any = Slow(x=5, ctl=str(ctl), infra={"folder": tmp_path / "cache"})
        assert obj.process() == 10
    else:
        assert sorted(int(c[0]) for c in calls[1:]) == [1, 2, 3]
        obj = SlowMap(ctl=str(ctl), infra={"folder": tmp_path / "cache"})
        assert list(obj.process([1, 2, 3])) == [2, 4, 6]
    folder = obj.infra.uid_folder()
    assert folder is not None
    assert claim_files(folder) == []
    assert len(lines(ctl / "calls.txt")) == len(calls)


@pytest.mark.timeout(120)
def test_the_job_following_another_worker_submits_when_that_worker_dies(
    tmp_path: Path, ctl: Path
) -> None:
    """job() of a task another process computes inline follows that computation (no job
    submitted); when that process dies without a result, result() submits the job then,
    as a call with a cluster does."""
    owner = Caller(tmp_path, _spec(tmp_path, ctl, "task", 1, x=5))
    try:
        wait_until(lambda: bool(lines(ctl / "calls.txt")))  # computing (blocked, no release)
        other = Slow(x=5, ctl=str(ctl), infra={"folder": tmp_path / "cache", "cluster": "local"})
        job = other.infra.job()
        assert job.job_id == "#claim#"
        folder = other.infra.uid_folder()
        assert folder is not None and not (folder / "jobs").exists()
        owner.kill()
        (ctl / "release").touch()
        assert job.result() == 10
    finally:
        owner.kill()
    assert (folder / "jobs").exists()  # (computed by a local job, submitted by result())
    assert [line.split()[0] for line in lines(ctl / "calls.txt")] == ["task", "task"]


class AsksItsOwnJob(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return int(self.infra.job().result())


@pytest.mark.timeout(60)
def test_job_of_the_task_this_thread_computes_is_refused(tmp_path: Path) -> None:
    """job() follows the computation of another worker, not this thread's own (a task
    asking for its own job waited for itself, for ever)."""
    with pytest.raises(RuntimeError, match="this very thread"):
        AsksItsOwnJob(infra={"folder": tmp_path}).process()


class CallsItself(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return self.process() + 1  # (a user's bug)


class MapsItself(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            yield next(iter(self.process([item]))) + 1  # (a user's bug)


@pytest.mark.timeout(90)
def test_a_method_calling_itself_in_its_local_job_is_refused(tmp_path: Path) -> None:
    """Without a job, a method calling itself is refused at once; in a local job, the
    inner call waited for the job it runs in (its record, then its claim), for good, and
    a map's inner call submitted a job per item, each submitting another."""
    task = CallsItself(infra={"folder": tmp_path, "cluster": "local"})
    with pytest.raises(RuntimeError, match="this very thread"):
        task.process()
    assert task.infra.status() == "failed"
    mapper = MapsItself(infra={"folder": tmp_path, "cluster": "local"})
    # (as without a job: refused, the item needing itself; before: computed here too,
    # until Python's recursion limit)
    with pytest.raises(RuntimeError, match="this very thread"):
        list(mapper.process([1, 2]))
    folder = mapper.infra.uid_folder()
    assert folder is not None
    # (its jobs: none submitted from them)
    assert {r.pid for r in registry.read_all(folder)} == {os.getpid()}


class NeedsItsPrevious(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1", max_jobs=1)

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        for n in items:  # (an item needing another of the same call: legit re-entrance)
            yield n if n < 2 else n + next(iter(self.process([n - 1])))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("cluster", [None, "local"])
def test_a_map_item_needing_another_of_its_call_is_computed_in_its_job_too(
    tmp_path: Path, cluster: str | None
) -> None:
    """Without a job, items an enclosing call of this thread holds are computed here too;
    in the job, the inner call was refused as a self call (before: waited for good)."""
    fib = NeedsItsPrevious(infra={"folder": tmp_path, "cluster": cluster})
    assert list(fib.process([1, 2, 3])) == [1, 3, 6]


def _meet(ctl: Path, count: int = 2, me: str = "") -> None:
    """Wait until ``count`` workers got here (each holds what it computes by then; 20 s
    at most: alone in its process, there is nobody to wait for). A worker is ``me``, by
    default this thread."""
    (ctl / f"started-{me or f'{os.getpid()}-{threading.get_native_id()}'}").touch()
    with contextlib.suppress(TimeoutError):
        filelog.wait_until(lambda: len(list(ctl.glob("started-*"))) >= count, timeout=20)


class NeedsOthers(pydantic.BaseModel):
    """Items needing other items of the same map (``deps``). An item with needs first
    waits until ``barrier`` chunk units started (each claimed its whole chunk by then)."""

    ctl: str
    deps: dict[str, list[str]]
    barrier: int = 1
    returns_list: bool = False  # (computes its items as it is called)
    infra: exca.MapInfra = exca.MapInfra(version="1", max_jobs=2)

    @infra.apply(item_uid=str)
    def process(self, items: list[str]) -> tp.Iterable[str]:
        outputs = self._process(items)
        return list(outputs) if self.returns_list else outputs

    def _process(self, items: list[str]) -> tp.Iterator[str]:
        ctl = Path(self.ctl)
        for item in items:
            append(ctl / "calls.txt", item)
            needed = self.deps.get(item, [])
            if needed:  # (one worker a process)
                _meet(ctl, self.barrier, me=str(os.getpid()))
            yield item + "(" + ",".join(self.process(needed)) + ")"


def test_a_method_returning_a_list_computes_its_items_once_when_one_needs_another(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A method returning a list computes its items as it is called: item a needing d (a
    nested call, while the list was being made) took b, c and d for unstarted and gave
    them back, and the call stopped after a: the outputs of b, c and d it had computed
    anyway were dropped, and b, c computed again by a second call (7 computations of 4
    items). Only d, needed before the list made it, is computed twice now."""
    from exca.graph import scheduler

    monkeypatch.setattr(scheduler._SHUFFLER, "shuffle", lambda items: None)  # (in order)
    mapped = NeedsOthers(
        ctl=str(tmp_path), deps={"a": ["d"]}, returns_list=True, infra={"folder": tmp_path / "c"}
    )
    assert list(mapped.process(["a", "b", "c", "d"])) == ["a(d())", "b()", "c()", "d()"]
    assert sorted(lines(tmp_path / "calls.txt")) == ["a", "b", "c", "d", "d"]


def _kill_jobs_left(folder: Path | None) -> None:
    """The processes of this test's jobs still holding claims (a regression: deadlocked)."""
    if folder is None:
        return
    from exca.storage.claims import Claims

    for claim in Claims(folder)._all_files():
        if claim.owner.pid != os.getpid():
            with contextlib.suppress(OSError):
                os.kill(claim.owner.pid, signal.SIGKILL)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", [None, "debug", "local", "threadpool", "processpool"])
def test_map_items_needing_items_of_a_sibling_chunk_are_computed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: str | None
) -> None:
    """Two chunk jobs ([a0, a1] and [b0, b1]) whose first items need the other chunk's
    second item: each job claimed its chunk, then waited for the other's job (for good,
    a deadlock); without jobs, a1 (or b1) was computed twice (by the nested call, then by
    the enclosing one). Now a worker about to wait gives back the items it has not
    started, and a nested call waits for items, not for whole sibling jobs."""
    from exca.graph import scheduler

    monkeypatch.setattr(scheduler._SHUFFLER, "shuffle", lambda items: None)  # (chunks)
    barrier = 2 if cluster == "local" else 1
    deps = {"a0": ["b1"], "b0": ["a1"]}
    dag = NeedsOthers(
        ctl=str(tmp_path),
        deps=deps,
        barrier=barrier,
        infra={"folder": tmp_path / "c", "cluster": cluster},
    )
    try:
        out = list(dag.process(["a0", "a1", "b0", "b1"]))
    finally:
        _kill_jobs_left(dag.infra.uid_folder())
    assert out == ["a0(b1())", "a1()", "b0(a1())", "b1()"]
    assert sorted(lines(tmp_path / "calls.txt")) == ["a0", "a1", "b0", "b1"]  # (once each)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("seed", range(3))
def test_a_dag_of_map_items_over_random_chunks_is_computed_once(tmp_path: Path, seed: int) -> None:
    """Any chunking (shuffled as usual) of items needing later items: each once."""
    rng = random.Random(seed)
    names = [f"i{n}" for n in range(8)]
    deps = {n: sorted(rng.sample(names[k + 1 :], min(2, 7 - k))) for k, n in enumerate(names)}
    dag = NeedsOthers(
        ctl=str(tmp_path), deps=deps, infra={"folder": tmp_path / "c", "cluster": "local"}
    )
    try:
        out = list(dag.process(names))
    finally:
        _kill_jobs_left(dag.infra.uid_folder())

    def expected(name: str) -> str:
        return name + "(" + ",".join(expected(d) for d in deps[name]) + ")"

    assert out == [expected(n) for n in names]
    assert sorted(lines(tmp_path / "calls.txt")) == names


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", [None, "local"])
def test_map_items_needing_each_other_in_sibling_jobs_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster: str | None
) -> None:
    """A real cycle (a0 needs b0, b0 needs a0): in sibling jobs, each computing one and
    waiting for the other, both waited for good; in one thread, the items were computed
    again and again (until the recursion limit, then an unrelated error). Now refused."""
    from exca.graph import scheduler

    monkeypatch.setattr(scheduler._SHUFFLER, "shuffle", lambda items: None)
    deps = {"a0": ["b0"], "b0": ["a0"]}
    barrier = 2 if cluster == "local" else 1
    dag = NeedsOthers(
        ctl=str(tmp_path),
        deps=deps,
        barrier=barrier,
        infra={"folder": tmp_path / "c", "cluster": cluster},
    )
    try:
        with pytest.raises(Exception, match=r"cannot \(directly or indirectly"):
            list(dag.process(["a0", "a1", "b0", "b1"]))
    finally:
        _kill_jobs_left(dag.infra.uid_folder())
    # (the other items are computed, once)
    assert collections.Counter(lines(tmp_path / "calls.txt"))["a1"] == 1


class CrossNeeds(pydantic.BaseModel):
    """Two maps (``side`` "a" or "b": items named a* or b*) whose items need items of the
    other map (``deps``), called with the same cluster. An item with needs first waits
    until ``barrier`` workers reached such an item (each claimed its whole call by then)."""

    side: str
    ctl: str
    deps: dict[str, list[str]]
    barrier: int = 2
    infra: exca.MapInfra = exca.MapInfra(version="1", max_jobs=1)

    @infra.apply(item_uid=str)
    def process(self, items: list[str]) -> tp.Iterator[str]:
        ctl = Path(self.ctl)
        for item in items:
            append(ctl / "calls.txt", item)
            needed = self.deps.get(item, [])
            if needed:
                _meet(ctl, self.barrier)
            yield item + "(" + ",".join(self.other().process(needed)) + ")"

    def other(self) -> CrossNeeds:
        side = "b" if self.side == "a" else "a"
        infra = {"folder": self.infra.folder, "cluster": self.infra.cluster}
        return CrossNeeds(side=side, ctl=self.ctl, deps=self.deps, infra=infra)


def _call_both_sides(
    tmp_path: Path,
    cluster: str | None,
    deps: dict[str, list[str]],
    folders: dict[str, Path] | None = None,
) -> dict[str, tp.Any]:
    """Map a calls [a0, a1] and map b [b0, b1] at the same time (two threads): the outputs
    (or the error) of each; fails if a call hangs (its jobs then killed). ``folders``: the
    cache folder each side (and the other map it calls) is given, by side."""
    folders = folders or {s: tmp_path / "c" for s in "ab"}
    maps = {
        s: CrossNeeds(side=s, ctl=str(tmp_path), deps=deps, infra={"folder": f, "cluster": cluster})
        for s, f in folders.items()
    }
    out: dict[str, tp.Any] = {}

    def call(side: str) -> None:
        try:
            out[side] = list(maps[side].process([f"{side}0", f"{side}1"]))
        except Exception as error:
            traceback.print_exc()  # (shown with a failure: where an unexpected error came from)
            out[side] = error

    threads = [threading.Thread(target=call, args=(s,), daemon=True) for s in "ab"]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join(timeout=WAIT_S)
        assert not any(t.is_alive() for t in threads), "the calls wait for each other for good"
        # (debug jobs run by two threads at once: submitit put one's job id back in the
        # environment for good; the process then read as a job, see executors)
        assert "SUBMITIT_DEBUG_JOB_ID" not in os.environ
    finally:
        for side in "ab":
            _kill_jobs_left(maps[side].infra.uid_folder())
    return out


@pytest.mark.timeout(150)
@pytest.mark.parametrize("cluster", [None, "debug", "local", "threadpool", "processpool"])
def test_items_of_two_maps_needing_items_the_other_map_holds_are_computed_once(
    tmp_path: Path, cluster: str | None
) -> None:
    """Two maps called at the same time (each in one job, or thread), whose first items
    need the other map's second item: a worker about to wait gives back the items it has
    not started whichever map they belong to, and the other worker computes them."""
    out = _call_both_sides(tmp_path, cluster, {"a0": ["b1"], "b0": ["a1"]})
    assert out == {"a": ["a0(b1())", "a1()"], "b": ["b0(a1())", "b1()"]}
    assert sorted(lines(tmp_path / "calls.txt")) == ["a0", "a1", "b0", "b1"]  # (once each)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("cluster", [None, "debug", "local", "threadpool", "processpool"])
def test_items_of_two_maps_needing_each_other_are_refused(
    tmp_path: Path, cluster: str | None
) -> None:
    """A cycle across two maps (a0 of map a needs b0 of map b, b0 needs a0), each item
    computed by its own worker (job or thread) waiting for the other: both waited for
    good (the wait records were read in one map's folder only). Now refused, naming the
    items; the other items are computed, once."""
    out = _call_both_sides(tmp_path, cluster, {"a0": ["b0"], "b0": ["a0"]})
    for side in "ab":
        assert isinstance(out[side], Exception), out
    said = f"{out['a']}\n{out['b']}"
    assert "cannot (directly or indirectly" in said
    assert "'a0'" in said or "'b0'" in said
    calls = collections.Counter(lines(tmp_path / "calls.txt"))
    assert calls["a1"] == 1 and calls["b1"] == 1


@pytest.mark.timeout(150)
def test_items_of_two_maps_needing_each_other_through_a_symlinked_cache_are_refused(
    tmp_path: Path,
) -> None:
    """The cycle across two maps above, one side given the cache folder through a symlink
    (or another mount of it), the other by its real path: the wait records named folders
    by those paths and compared them as strings, so the cycle was missed and both waited
    for good. Now refused, as with one path."""
    real = tmp_path / "c"
    real.mkdir()
    other = tmp_path / "link"
    other.symlink_to(real, target_is_directory=True)
    out = _call_both_sides(tmp_path, None, {"a0": ["b0"], "b0": ["a0"]}, {"a": other, "b": real})
    for side in "ab":
        assert isinstance(out[side], Exception), out
    said = f"{out['a']}\n{out['b']}"
    assert "cannot (directly or indirectly" in said
    calls = collections.Counter(lines(tmp_path / "calls.txt"))
    assert calls["a1"] == 1 and calls["b1"] == 1


class TaskNeedingItem(pydantic.BaseModel):
    """Its result needs item a0 of ItemNeedingTask, whose a0 needs this result."""

    ctl: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        append(Path(self.ctl) / "calls.txt", "task")
        _meet(Path(self.ctl))
        items = ItemNeedingTask(ctl=self.ctl, infra={"folder": self.infra.folder})
        return "t(" + ",".join(items.process(["a0"])) + ")"


class ItemNeedingTask(pydantic.BaseModel):
    ctl: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[str]) -> tp.Iterator[str]:
        for item in items:
            append(Path(self.ctl) / "calls.txt", item)
            if item != "a0":
                yield item + "()"
                continue
            _meet(Path(self.ctl))
            task = TaskNeedingItem(ctl=self.ctl, infra={"folder": self.infra.folder})
            yield item + "(" + task.process() + ")"


@pytest.mark.timeout(150)
def test_a_map_item_and_a_task_needing_each_other_are_refused(tmp_path: Path) -> None:
    """Item a0 of a map needs a task whose computation needs a0, each computed by its own
    thread: both waited for good (a task computed was no holder in the wait records).
    Now refused; the map's other item is computed, once."""
    folder = tmp_path / "c"
    out: dict[str, tp.Any] = {}

    def call(name: str, function: tp.Callable[[], tp.Any]) -> None:
        try:
            out[name] = function()
        except Exception as error:
            out[name] = error

    mapper = ItemNeedingTask(ctl=str(tmp_path), infra={"folder": folder})
    task = TaskNeedingItem(ctl=str(tmp_path), infra={"folder": folder})
    threads = [
        threading.Thread(target=call, args=("map", lambda: list(mapper.process(["a0", "a1"])))),
        threading.Thread(target=call, args=("task", task.process)),
    ]
    for thread in threads:
        thread.daemon = True
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT_S)
    assert not any(t.is_alive() for t in threads), "they wait for each other for good"
    assert isinstance(out["map"], Exception) and isinstance(out["task"], Exception), out
    said = f"{out['map']}\n{out['task']}"
    assert "cannot (directly or indirectly" in said
    assert collections.Counter(lines(tmp_path / "calls.txt"))["a1"] == 1


class TaskOfItems(pydantic.BaseModel):
    """A task (infra ``spec["task"]``) whose result needs items ``spec["task_items"]`` of
    ItemsOfTask, whose items ``spec["needy"]`` need this result (through its job whole:
    ``task.process()``, or ``task.infra.job().result()`` when ``spec["via_job"]``). With
    ``spec["meet"]``, the task and a needy item wait until that many workers met."""

    spec: dict[str, tp.Any]
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        ctl = Path(self.spec["ctl"])
        append(ctl / "calls.txt", "task")
        if self.spec["meet"]:
            _meet(ctl, self.spec["meet"])
        items = ItemsOfTask(spec=self.spec, infra={"folder": self.infra.folder})
        return "t(" + ",".join(items.process(self.spec["task_items"])) + ")"


class ItemsOfTask(pydantic.BaseModel):
    spec: dict[str, tp.Any]
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[str]) -> tp.Iterable[str]:
        outputs = self._process(items)
        return list(outputs) if self.spec.get("as_list") else outputs

    def _process(self, items: list[str]) -> tp.Iterator[str]:
        ctl = Path(self.spec["ctl"])
        for item in items:
            append(ctl / "calls.txt", item)
            if item not in self.spec["needy"]:
                yield item + "()"
                continue
            if self.spec["meet"]:
                _meet(ctl, self.spec["meet"])
            task = TaskOfItems(
                spec=self.spec, infra={"folder": self.infra.folder, **self.spec["task"]}
            )
            if self.spec["via_job"]:
                yield item + "(" + task.infra.job().result() + ")"
            else:
                yield item + "(" + task.process() + ")"


_SLURM_TASK = {"cluster": "slurm", "cpus_per_task": 1, "timeout_min": 3}


def _task_and_items(
    tmp_path: Path,
    cluster: str,
    both: bool,
    via: str,
    needy: list[str],
    task_items: list[str],
    as_list: bool = False,
) -> dict[str, tp.Any]:
    """The map called on [x, y] (and, ``both``, the task called at the same time by
    another thread, both waiting until the other started): outputs or errors."""
    task_infra = _SLURM_TASK if cluster == "slurm" else {"cluster": cluster}
    spec = {
        "ctl": str(tmp_path),
        "task": task_infra,
        "needy": needy,
        "task_items": task_items,
        "meet": 2 if both else 0,
        "via_job": via == "job",
        "as_list": as_list,  # (the map's method returns a list)
    }
    folder = tmp_path / "c"
    items = ItemsOfTask(spec=spec, infra={"folder": folder})
    task = TaskOfItems(spec=spec, infra={"folder": folder, **task_infra})
    calls: dict[str, tp.Callable[[], tp.Any]] = {"map": lambda: list(items.process(["x", "y"]))}
    if both:
        calls["task"] = task.process
    out: dict[str, tp.Any] = {}

    def call(name: str) -> None:
        try:
            out[name] = calls[name]()
        except Exception as error:
            traceback.print_exc()
            out[name] = error

    threads = [threading.Thread(target=call, args=(n,), daemon=True) for n in calls]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join(timeout=WAIT_S)
        assert not any(t.is_alive() for t in threads), "they wait for each other for good"
    finally:
        for node in (items, task):
            _kill_jobs_left(node.infra.uid_folder())
    return out


def _refused_as_cycle(out: dict[str, tp.Any]) -> str:
    """What every call of _task_and_items raised, each a cycle error: their texts."""
    assert all(isinstance(error, Exception) for error in out.values()), out
    said = "\n".join(str(error) for error in out.values())
    assert "cannot (directly or indirectly" in said
    return said


@pytest.mark.timeout(150)
def test_a_map_item_of_a_list_method_and_a_task_needing_each_other_are_refused(
    tmp_path: Path,
) -> None:
    """As below, the map's method returning a list (computing its items as it is
    called): while it was being called, its thread recorded no item it held (the item
    computed now is known once the method returned), so the job of the task, waiting for
    x, found no wait record holding x, and both waited for good. Refused now."""
    out = _task_and_items(
        tmp_path, "local", False, "job", needy=["x"], task_items=["x"], as_list=True
    )
    said = _refused_as_cycle(out)
    assert "item(s) 'x'" in said and "TaskOfItems" in said and "ItemsOfTask" in said


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    "cluster, both, via",
    [
        ("debug", True, "call"),
        ("local", True, "call"),
        pytest.param("slurm", True, "call", marks=pytest.mark.slurm),
        ("local", True, "job"),
        ("local", False, "job"),
        ("debug", False, "job"),
        ("local", False, "call"),
    ],
)
def test_a_map_item_and_a_task_needing_each_other_through_its_job_are_refused(
    tmp_path: Path, cluster: str, both: bool, via: str
) -> None:
    """Item x needs a task computed by its job (waited for whole: its call with a
    cluster, or job().result()), whose method needs x. Waited for good: by the map's
    thread following the job the task's own call sent (``both``), or the job that x sent
    through job() (no callers); no wait record linked a job waited for whole. Now refused,
    naming both ends; y computed once."""
    out = _task_and_items(tmp_path, cluster, both, via, needy=["x"], task_items=["x"])
    said = _refused_as_cycle(out)
    # (else refused as before: x calls the task's job with callers (a caller of the job),
    # or runs its debug job in its own thread (already computed by this very thread))
    if both or (via == "job" and cluster != "debug"):
        assert "item(s) 'x'" in said and "TaskOfItems" in said and "ItemsOfTask" in said
    assert collections.Counter(lines(tmp_path / "calls.txt"))["y"] == 1


@pytest.mark.timeout(150)
@pytest.mark.parametrize(
    "cluster, both, via",
    [
        ("debug", True, "call"),
        ("local", True, "call"),
        pytest.param("slurm", True, "call", marks=pytest.mark.slurm),
        ("local", True, "job"),
        ("local", False, "call"),
        pytest.param("slurm", False, "call", marks=pytest.mark.slurm),
        ("local", False, "job"),
    ],
)
def test_a_task_job_needing_an_item_its_waiting_caller_has_not_started_computes_it(
    tmp_path: Path, cluster: str, both: bool, via: str
) -> None:
    """No cycle: item x needs the task (its job waited for whole), whose method needs
    item y of the same call, claimed by the map's thread but not started. The thread
    held y while it waited for the job: the job waited for y for good (the task called
    by another thread, ``both``, or x's job() job), or refused it as held by a caller of
    its job. Now the thread gives back its unstarted items before it waits for a job
    whole (before sending it): the job computes y; each is computed once."""
    out = _task_and_items(tmp_path, cluster, both, via, needy=["x"], task_items=["y"])
    expected = {"map": ["x(t(y()))", "y()"]}
    if both:
        expected["task"] = "t(y())"
    assert out == expected
    assert sorted(lines(tmp_path / "calls.txt")) == ["task", "x", "y"]


class ItemTask(pydantic.BaseModel):
    """A task per item of PerItemJobs (in its own local job)."""

    item: int
    ctl: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        append(Path(self.ctl) / "tasks.txt", str(self.item))
        return 10 * self.item


class PerItemJobs(pydantic.BaseModel):
    """A map whose method, set up once per call, calls a task per item (waited for whole,
    in its job)."""

    ctl: str
    task: dict[str, tp.Any]
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        append(Path(self.ctl) / "setups.txt", ",".join(str(i) for i in items))
        for item in items:
            append(Path(self.ctl) / "items.txt", str(item))
            task = ItemTask(
                item=item, ctl=self.ctl, infra={"folder": self.infra.folder, **self.task}
            )
            yield task.process() + 1


@pytest.mark.timeout(300)
def test_a_method_calling_a_job_per_item_is_called_once(tmp_path: Path) -> None:
    """Before waiting for each item's job, the thread gives back the items it has not
    started (a job may need them): the method stopped after each item and was called
    again on the rest (10 calls for 10 items, its setup each time). The items nobody took
    meanwhile are now taken back once the wait ends, and the same call goes on."""
    # (3 items: each item after the first was a call of its own, so 3 calls without the fix)
    items = PerItemJobs(ctl=str(tmp_path), task={"cluster": "local"}, infra={"folder": tmp_path})
    try:
        assert list(items.process(list(range(3)))) == [10 * i + 1 for i in range(3)]
    finally:
        _kill_jobs_left(items.infra.uid_folder())
    assert lines(tmp_path / "setups.txt") == [",".join(str(i) for i in range(3))]
    assert sorted(lines(tmp_path / "items.txt"), key=int) == [str(i) for i in range(3)]
    assert sorted(lines(tmp_path / "tasks.txt"), key=int) == [str(i) for i in range(3)]


class Ping(pydantic.BaseModel):
    """Calls Pong, which calls Ping again (a user's bug, each through its own cluster)."""

    pong_cluster: str | None = None
    inner_cluster: str = "same"  # (the cluster Pong calls Ping with)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        infra = {"folder": self.infra.folder, "cluster": self.pong_cluster}
        pong = Pong(ping=self.model_dump(), ping_cluster=self.inner_cluster, infra=infra)
        return pong.process()


class Pong(pydantic.BaseModel):
    ping: dict[str, tp.Any]  # (not a Ping: a field holding one makes it an upstream node)
    ping_cluster: str = "same"  # (else the cluster of the Ping it calls: the same config)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        ping = dict(self.ping)
        if self.ping_cluster == "job":  # (its job, and its result: waited for)
            return int(Ping(**ping).infra.job().result()) + 1
        if self.ping_cluster != "same":
            ping["infra"] = {**ping["infra"], "cluster": self.ping_cluster}
        return Ping(**ping).process() + 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "ping_cluster, inner_cluster",
    [(None, "same"), ("local", "same"), (None, "local"), (None, "job"), ("local", "job")],
)
def test_methods_calling_each_other_through_local_jobs_are_refused(
    tmp_path: Path, ping_cluster: str | None, inner_cluster: str
) -> None:
    """Ping (inline or in its job) calls Pong in a local job, whose Pong calls Ping
    (inline, with a cluster: the same config, or through job().result()): it waited for
    Ping's claim (or job), while Ping waited for Pong's job, for good."""
    infra = {"folder": tmp_path, "cluster": ping_cluster}
    ping = Ping(pong_cluster="local", inner_cluster=inner_cluster, infra=infra)
    with pytest.raises(RuntimeError, match="caller of this job") as info:
        ping.process()
    assert ping.infra.uid() in str(info.value)
    assert ping.infra.status() == "failed"
    # (nothing submitted from Pong's job: Ping's only job, if any, and Pong's)
    pong = Pong(ping=ping.model_dump(), ping_cluster=inner_cluster, infra={"folder": tmp_path})
    pong_folder = pong.infra.uid_folder()
    assert pong_folder is not None and len(registry.read_all(pong_folder)) == 1
    folder = ping.infra.uid_folder()
    assert folder is not None
    assert len(registry.read_all(folder)) == (0 if ping_cluster is None else 1)


class PoolCaller(pydantic.BaseModel):
    """Its method maps PoolItems on a process pool, whose items need PoolCaller's own result."""

    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        infra = {"folder": self.infra.folder, "cluster": "processpool"}
        return sum(PoolItems(outer=self.model_dump(), infra=infra).process([1, 2]))


class PoolItems(pydantic.BaseModel):
    outer: dict[str, tp.Any]  # (not an PoolCaller: a field holding one makes it an upstream)
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            yield item + PoolCaller(**self.outer).process()


@pytest.mark.timeout(60)
def test_a_processpool_item_needing_what_its_caller_computes_is_refused(tmp_path: Path) -> None:
    """A map's items on a process pool needing the result their caller computes (a cycle
    through the pool's processes): each waited for the caller's claim, while the caller
    waited for them, for good. Refused as for a job (the pool's units carry their
    callers): the error names what the caller computes."""
    outer = PoolCaller(infra={"folder": tmp_path})
    with pytest.raises(RuntimeError, match="caller of this job") as info:
        outer.process()
    assert outer.infra.uid() in str(info.value)


class Submitter(pydantic.BaseModel):
    """Sends Follower's job without waiting for it, then ends; Follower needs it."""

    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        follower = Follower(infra={"folder": self.infra.folder, "cluster": "local"})
        follower.infra.job()  # (not waited for: no cycle, the job waits for this claim)
        time.sleep(1.0)
        return 1


class Follower(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return Submitter(infra={"folder": self.infra.folder}).process() + 10


class Pinger(pydantic.BaseModel):
    """Its job sends Planner's job and waits for it."""

    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        return Planner(infra={"folder": self.infra.folder, "cluster": "local"}).process()


class Planner(pydantic.BaseModel):
    """Plans Pinger in its job: reads only, nothing waits."""

    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        pinger = Pinger(infra={"folder": self.infra.folder, "cluster": "local"})
        (entry,) = exca.graph.plan(pinger.process.node()).entries
        return f"{entry.status} {entry.action}"


@pytest.mark.timeout(120)
def test_jobs_that_need_what_their_submitter_computes_without_a_cycle(tmp_path: Path) -> None:
    """Not cycles (review): a job sent by job() (not waited for) needing its submitter's
    claim waits for it; a plan in a job of what its caller's job computes reads only."""
    assert Submitter(infra={"folder": tmp_path}).process() == 1
    follower = Follower(infra={"folder": tmp_path, "cluster": "local"})
    assert follower.infra.job().result() == 11
    assert Pinger(infra={"folder": tmp_path, "cluster": "local"}).process() == "running wait"


def test_a_claim_its_caller_took_after_submitting_the_job_is_waited_for(tmp_path: Path) -> None:
    """A caller whose wait for a job ended (Ctrl-C: Slurm jobs stay queued) and that
    claims later what that job asks for does not wait for the job: the job waits for it."""
    from exca.graph import callers
    from exca.storage.claims import Claims

    before = callers.current()
    try:
        with Claims(tmp_path).claim_one("result"):
            callers.adopt([before])  # (submitted before the claim: not a cycle)
            callers.refuse_waiting_on_claims("uid", tmp_path, ["result"])
            callers.adopt([callers.current()])  # (submitted while holding it: a cycle)
            with pytest.raises(RuntimeError, match="caller of this job"):
                callers.refuse_waiting_on_claims("uid", tmp_path, ["result"])
            callers.refuse_waiting_on_claims("uid", tmp_path, ["other"])  # (not held)
    finally:
        callers.adopt([])


# --- an owner on another host ------------------------------------------------------------
def write_foreign_claim(folder: Path, keys: list[str]) -> Path:
    """A claim file as exca/storage/claims.py writes them, for a process on another host."""
    claims = folder / "claims"
    claims.mkdir(parents=True, exist_ok=True)
    owner = {"host": "some-other-host", "pid": 12345, "start": 987, "thread": 12345, "job_id": "77"}
    path = claims / f"some-other-host-12345-12345-{time.time_ns():x}-abcdef.claim"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps({"owner": owner, "keys": keys}))
    os.replace(tmp, path)
    return path


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["task", "map"])
def test_foreign_claim_waited_for_then_taken_over(
    tmp_path: Path, ctl: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXCA_CLAIM_HEARTBEAT_S", "0.5")
    assert process_info.hostname() != "some-other-host"
    (ctl / "release").touch()  # nothing blocks in this test
    if kind == "task":
        obj: tp.Any = Slow(x=3, ctl=str(ctl), infra={"folder": tmp_path / "cache"})
        keys = ["result"]  # exca.graph.node.TASK_KEY
    else:
        obj = SlowMap(ctl=str(ctl), infra={"folder": tmp_path / "cache"})
        keys = ["1", "2"]
    folder = obj.infra.uid_folder(create=True)
    assert folder is not None
    claim = write_foreign_claim(folder, keys)
    out: list[tp.Any] = []

    def call() -> None:
        if kind == "task":
            out.append(obj.process())
        else:
            out.append(list(obj.process([1, 2, 3])))

    thread = threading.Thread(target=call)
    thread.start()
    # while the foreign owner's heartbeat is fresh, the caller waits
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        os.utime(claim)
        time.sleep(0.1)
    computed = [line.split()[0] for line in lines(ctl / "calls.txt")]
    assert thread.is_alive()
    assert computed == ([] if kind == "task" else ["3"])  # what nobody held is computed
    # the owner stops beating: after two missed heartbeats the caller takes over
    thread.join(timeout=WAIT_S)
    assert not thread.is_alive()
    if kind == "task":
        assert out == [6]
        assert [line.split()[0] for line in lines(ctl / "calls.txt")] == ["task"]
    else:
        assert out == [[2, 4, 6]]
        assert sorted(line.split()[0] for line in lines(ctl / "calls.txt")) == ["1", "2", "3"]
    assert not claim.exists()
    assert [n for n in claim_files(folder) if n.endswith(".claim")] == []


@pytest.mark.timeout(60)
def test_a_claim_another_user_left_unreadable_is_waited_for_and_said(
    tmp_path: Path, ctl: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A live claim of another user that this one may not read (written without the
    cache's permissions, under a private umask) holds keys nobody can know: taken as
    holding every key of its map, each call there waited for it, told only "Waiting for
    pid N on HOST to finish 2 key(s)", at info level. Waiting stays the answer (the only
    one that never computes twice what it may compute), now said as a warning naming the
    file, its owner, and what to do (permissions); once its process is gone, the items
    are computed."""
    import logging
    import pathlib

    (ctl / "release").touch()  # nothing blocks in this test
    obj = SlowMap(ctl=str(ctl), infra={"folder": tmp_path / "cache"})
    folder = obj.infra.uid_folder(create=True)
    assert folder is not None
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host, now = process_info.hostname(), f"{time.time_ns() // 1000:x}"
    claim = folder / "claims" / f"{host}-{sleeper.pid}-{sleeper.pid}-{now}-abcdef.claim"
    claim.parent.mkdir(exist_ok=True)
    claim.write_bytes(b'{"owner": {}, "keys": ["7"]}')  # (what it holds: unknown here)
    os.chown(claim, 65534, 65534)  # (nobody's)
    claim.chmod(0)
    read_bytes = pathlib.Path.read_bytes

    def refuse(path: pathlib.Path) -> bytes:  # (the tests run as root, whom modes do not stop)
        if path == claim:
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    monkeypatch.setattr(pathlib.Path, "read_bytes", refuse)
    out: list[tp.Any] = []
    thread = threading.Thread(target=lambda: out.append(list(obj.process([1, 2]))), daemon=True)

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if "Waiting for" in r.getMessage()]

    try:
        with caplog.at_level(logging.INFO, logger="exca"):
            thread.start()
            filelog.wait_until(lambda: bool(said()), timeout=20)
            assert not (ctl / "calls.txt").exists()  # (waited for)
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
            assert warnings, said()
            message = warnings[0].getMessage()
            assert str(claim) in message and "uid 65534" in message, message
            assert "may not read" in message and "permissions" in message, message
        sleeper.kill()
        sleeper.wait()
        thread.join(timeout=WAIT_S)
        assert out == [[2, 4]]
        assert not claim.exists()  # (dead: removed)
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.timeout(60)
def test_a_claim_another_user_left_unreadable_for_real(tmp_path: Path, ctl: Path) -> None:
    """The test above with real permissions: the claim file nobody's, mode 0o600, the
    call made by root without the capabilities that bypass file permissions (setpriv)."""
    import shutil

    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to give files to another user")
    (ctl / "release").touch()  # nothing blocks in this test
    obj = SlowMap(ctl=str(ctl), infra={"folder": tmp_path / "cache"})
    folder = obj.infra.uid_folder(create=True)
    assert folder is not None
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host, now = process_info.hostname(), f"{time.time_ns() // 1000:x}"
    claim = folder / "claims" / f"{host}-{sleeper.pid}-{sleeper.pid}-{now}-abcdef.claim"
    claim.parent.mkdir(exist_ok=True)
    claim.write_bytes(b'{"owner": {}, "keys": ["7"]}')
    claim.chmod(0o600)
    os.chown(claim, 65534, 65534)  # (nobody's)
    code = f"""
import logging, sys
logging.basicConfig(level=logging.INFO)
from test_no_duplicate_work import SlowMap
obj = SlowMap(ctl={str(ctl)!r}, infra={{"folder": {str(tmp_path / "cache")!r}}})
print(list(obj.process([1, 2])))
"""
    no_bypass, python = "-dac_override,-dac_read_search", [sys.executable, "-c", code]
    caller = subprocess.Popen(
        [setpriv, f"--bounding-set={no_bypass}", f"--inh-caps={no_bypass}", *python],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert caller.stderr is not None
        said = ""
        while "Waiting for" not in said:  # (the first line it writes: nothing computed)
            said = caller.stderr.readline()
            assert said, "the call ended without waiting"
        assert not (ctl / "calls.txt").exists()
        assert said.startswith("WARNING") and str(claim) in said and "uid 65534" in said, said
        sleeper.kill()
        sleeper.wait()
        out, err = caller.communicate(timeout=WAIT_S)
        assert out.strip() == "[2, 4]", err
        assert not claim.exists()  # (dead: removed)
    finally:
        sleeper.kill()
        sleeper.wait()
        caller.kill()
        caller.wait()


# --- nested decorated calls --------------------------------------------------------------
class Inner(pydantic.BaseModel):
    x: int = 1
    log: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        append(Path(self.log), f"inner {self.x}")
        return 10 * self.x


class Squares(pydantic.BaseModel):
    log: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            append(Path(self.log), f"square {item}")
            yield item * item


class Outer(pydantic.BaseModel):
    """Its method calls other decorated methods (built inside the computation)."""

    x: int = 1
    log: str
    cache: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        append(Path(self.log), f"outer {self.x}")
        inner = Inner(x=self.x, log=self.log, infra={"folder": self.cache})
        squares = Squares(log=self.log, infra={"folder": self.cache})
        total = sum(squares.process(list(range(self.x + 1))))
        # the same nested call twice: the second is a cache hit
        return inner.process() + inner.process() + total


class WithSub(pydantic.BaseModel):
    """A sub-config with its own TaskInfra, called from the parent's method."""

    sub: Inner
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return self.sub.process() + 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", [None, "local"])
def test_nested_calls(tmp_path: Path, cluster: str | None) -> None:
    log = tmp_path / "calls.txt"
    cache = tmp_path / "cache"
    cache.mkdir()
    outer = Outer(x=3, log=str(log), cache=str(cache), infra={"folder": cache, "cluster": cluster})
    assert outer.process() == 10 * 3 * 2 + (0 + 1 + 4 + 9)
    assert collections.Counter(lines(log)) == {
        "outer 3": 1,
        "inner 3": 1,
        "square 0": 1,
        "square 1": 1,
        "square 2": 1,
        "square 3": 1,
    }
    # the nested results are cached for everyone
    assert Inner(x=3, log=str(log), infra={"folder": cache}).process() == 30
    assert list(Squares(log=str(log), infra={"folder": cache}).process([3, 2])) == [9, 4]
    assert len(lines(log)) == 6


@pytest.mark.timeout(60)
def test_nested_calls_in_concurrent_threads(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    cache = tmp_path / "cache"
    cache.mkdir()
    out: list[int] = []

    def call(x: int) -> None:
        out.append(Outer(x=x, log=str(log), cache=str(cache), infra={"folder": cache}).process())

    threads = [threading.Thread(target=call, args=(x,)) for x in (2, 2, 3, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT_S)
    assert sorted(out) == [45, 45, 74, 74]
    counted = collections.Counter(lines(log))
    assert all(count == 1 for count in counted.values()), counted
    assert set(counted) == {
        "outer 2",
        "outer 3",
        "inner 2",
        "inner 3",
        "square 0",
        "square 1",
        "square 2",
        "square 3",
    }


def test_sub_config_task_called_from_parent(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    cache = tmp_path / "cache"
    cache.mkdir()
    parent = WithSub(sub=Inner(x=2, log=str(log), infra={"folder": cache}), infra={"folder": cache})
    assert parent.process() == 21
    assert lines(log) == ["inner 2"]
    assert Inner(x=2, log=str(log), infra={"folder": cache}).process() == 20
    assert lines(log) == ["inner 2"]


class Fib(pydantic.BaseModel):
    """A map whose method calls itself (on self) for smaller items."""

    log: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        for n in items:
            append(Path(self.log), str(n))
            if n < 2:
                yield n
            else:
                a, b = self.process([n - 1, n - 2])
                yield a + b


@pytest.mark.timeout(60)
@pytest.mark.parametrize("items", [[7], list(range(8))])
def test_recursive_map_call(tmp_path: Path, items: list[int]) -> None:
    """Items computed by an enclosing call are read, not computed again (they were: its
    outputs waited in a batch, unwritten). An item that comes later in an enclosing call's
    list is computed once too (it was computed twice: 7 asks for [6, 5], and 6 for [5, 4],
    its 5 computed before the enclosing call reached its own): the enclosing call gives
    up the items it has not started, and finds them computed."""
    log = tmp_path / "calls.txt"
    fib = Fib(log=str(log), infra={"folder": tmp_path / "cache"})
    expected = {0: 0, 1: 1, 2: 1, 3: 2, 4: 3, 5: 5, 6: 8, 7: 13}
    assert list(fib.process(items)) == [expected[i] for i in items]
    counts = collections.Counter(lines(log))
    assert counts == {str(n): 1 for n in range(8)}
    again = Fib(log=str(log), infra={"folder": tmp_path / "cache"})
    assert list(again.process(list(range(8)))) == list(expected.values())
    assert collections.Counter(lines(log)) == counts  # (all read)


@pytest.mark.timeout(60)
def test_recursive_map_forced_on_a_threadpool(tmp_path: Path) -> None:
    """Forced on a threadpool (its chunks in threads), the recursive map's pool threads
    each waited for an item another held, not started yet, for good; now each item is
    computed once."""
    log = tmp_path / "calls.txt"
    Fib(log=str(log), infra={"folder": tmp_path / "cache"}).process(list(range(8)))
    log.unlink()
    infra = {"folder": tmp_path / "cache", "mode": "force", "cluster": "threadpool"}
    fib = Fib(log=str(log), infra=infra)
    assert list(fib.process(list(range(8)))) == [0, 1, 1, 2, 3, 5, 8, 13]
    assert collections.Counter(lines(log)) == {str(n): 1 for n in range(8)}


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("cluster", "max_jobs"), [("local", 1), ("local", 3), ("processpool", 2)])
def test_recursive_map_forced_in_jobs_computes_each_item_once(
    tmp_path: Path, cluster: str, max_jobs: int
) -> None:
    """Forced in local jobs (or pool processes), an item calling the map forced the items
    it needed under a run of the job's own, which the job's unit did not count as its
    force: the items it had given back were computed again (2 of 8 twice in one job,
    several up to 5 times over 3 jobs). Now the calls made in a job force under the job's
    run: each item is computed once."""
    log = tmp_path / "calls.txt"
    Fib(log=str(log), infra={"folder": tmp_path / "cache"}).process(list(range(8)))
    log.unlink()
    infra = {
        "folder": tmp_path / "cache",
        "mode": "force",
        "cluster": cluster,
        "max_jobs": max_jobs,
    }
    fib = Fib(log=str(log), infra=infra)
    assert list(fib.process(list(range(8)))) == [0, 1, 1, 2, 3, 5, 8, 13]
    assert collections.Counter(lines(log)) == {str(n): 1 for n in range(8)}
    again = Fib(log=str(log), infra={"folder": tmp_path / "cache"})  # (forced: read)
    assert list(again.process(list(range(8)))) == [0, 1, 1, 2, 3, 5, 8, 13]
    assert len(lines(log)) == 8


class FibList(pydantic.BaseModel):
    """Fib, its method computing all its items before returning them (a list)."""

    log: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> list[int]:
        out = []
        for n in items:
            append(Path(self.log), str(n))
            if n < 2:
                out.append(n)
            else:
                a, b = self.process([n - 1, n - 2])
                out.append(a + b)
        return out


@pytest.mark.timeout(60)
def test_recursive_map_call_of_a_method_returning_a_list(tmp_path: Path) -> None:
    """A method computing several items before returning any (a list): 3 needs 2, which
    the same method computed already, not yet returned; the enclosing call, at its first
    item (2) still, was taken for 2 needing itself: the self-call error, for a DAG. Now 2
    is computed again for 3 (as before the items given up), and every value is right."""
    log = tmp_path / "calls.txt"
    fib = FibList(log=str(log), infra={"folder": tmp_path / "cache"})
    assert list(fib.process([2, 3, 4])) == [1, 2, 3]
    counts = collections.Counter(lines(log))
    assert set(counts) == {"0", "1", "2", "3", "4"} and max(counts.values()) <= 2
    again = FibList(log=str(log), infra={"folder": tmp_path / "cache"})
    assert list(again.process([0, 1, 2, 3, 4])) == [0, 1, 1, 2, 3]
    assert collections.Counter(lines(log)) == counts  # (all read)


class WaitsOnGate(pydantic.BaseModel):
    """Item 'slow' computes once the file ``gate`` exists; 'needs' needs 'slow'."""

    ctl: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[str]) -> tp.Iterator[str]:
        for item in items:
            if item == "slow":
                (Path(self.ctl) / "slow-started").touch()
                filelog.wait_until((Path(self.ctl) / "gate").exists, timeout=30)
                yield item
            else:
                yield item + "+" + next(iter(self.process(["slow"])))


@pytest.mark.timeout(60)
def test_a_wait_record_follows_the_caches_permissions(tmp_path: Path) -> None:
    """Under a private umask (0o077), the record of a worker holding an item while it
    waits for another (claims/*.waits) has the cache's permissions, as claim files have:
    it was 0o600, which the other users of a shared cache, checking for cycles, could not
    read (PermissionError)."""
    import stat

    previous = os.umask(0o077)
    try:
        infra = {"folder": tmp_path / "c", "permissions": 0o770}
        slow = WaitsOnGate(ctl=str(tmp_path), infra=infra)
        got: dict[str, list[str]] = {}
        first = threading.Thread(target=lambda: got.setdefault("slow", slow.process(["slow"])))
        first.start()
        filelog.wait_until((tmp_path / "slow-started").exists, timeout=30)
        needs = WaitsOnGate(ctl=str(tmp_path), infra=infra)
        second = threading.Thread(
            target=lambda: got.setdefault("needs", list(needs.process(["needs"])))
        )
        second.start()
        folder = slow.infra.uid_folder()
        assert folder is not None
        try:
            filelog.wait_until(lambda: any((folder / "claims").glob("*.waits")), timeout=30)
            records = list((folder / "claims").glob("*.waits"))
            modes = {stat.S_IMODE(os.stat(p).st_mode) for p in records}
        finally:
            (tmp_path / "gate").touch()
            first.join()
            second.join()
    finally:
        os.umask(previous)
    assert modes == {0o770}
    assert list(got["slow"]) == ["slow"] and got["needs"] == ["needs+slow"]
    assert not list((folder / "claims").glob("*.waits"))  # (removed once the wait ended)


class NeedsFailing(pydantic.BaseModel):
    """Item 3 always fails; item 4 needs item 3."""

    log: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        for n in items:
            append(Path(self.log), str(n))
            if n == 3:
                raise ValueError("bad item 3")
            yield next(iter(self.process([3]))) + 1 if n == 4 else n


@pytest.mark.timeout(60)
def test_a_retry_does_not_retry_again_what_its_nested_call_retried(tmp_path: Path) -> None:
    """mode='retry' on [4, 3, 5], 4 needing 3, both failed before: 4's nested call
    retries 3 (its error cached again), then the retry's own unit, which had given 3 back
    to that nested call, claimed it again and retried it once more. An error cached since
    the retry asked is its answer, as for the items it waits for."""
    log = tmp_path / "calls.txt"
    infra = {"folder": tmp_path / "cache"}
    with pytest.raises(ValueError, match="bad item 3"):
        list(NeedsFailing(log=str(log), infra=infra).process([4, 3, 5]))
    log.unlink()
    retry = NeedsFailing(log=str(log), infra={**infra, "mode": "retry"})
    with pytest.raises(ValueError, match="bad item 3"):
        list(retry.process([4, 3, 5]))
    counts = collections.Counter(lines(log))
    # (4 computed once: read one by one, its error is its own; its nested call retries
    # 3, whose error the retry's unit then reads, cached since the retry asked)
    assert counts == {"4": 1, "3": 1}


def test_a_cycle_through_keys_held_under_two_paths_of_one_folder_is_refused(
    tmp_path: Path,
) -> None:
    """A worker holding items a0 and a2 of one map folder under two paths (the map given
    the cache through a symlink, an item calling the same map by the real path) waits for
    b0, whose holder waits for a0: a cycle. The check merged its holdings by folder
    keeping only the last path's keys (a2), and missed it: both waited for good."""
    from exca.graph import worker
    from exca.storage.claims import Claims

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    link = tmp_path / "link"
    link.symlink_to(a, target_is_directory=True)
    posted, done = threading.Event(), threading.Event()
    owner: list[tp.Any] = []

    def other_worker() -> None:  # (holds b0, waits for a0)
        from exca.storage.claims import Owner

        owner.append(Owner.current())
        record = Claims(b).post_wait({os.fspath(a): ["a0"]}, {os.fspath(b): ["b0"]})
        posted.set()
        done.wait(30)
        Claims.end_wait(record)

    thread = threading.Thread(target=other_worker)
    thread.start()
    try:
        assert posted.wait(30)
        holds = {os.fspath(link): {"a0"}, os.fspath(a): {"a2"}}
        with pytest.raises(RuntimeError, match="'a0'"):
            worker.refuse_cycle({os.fspath(b): {"b0"}}, holds, "map-a")
    finally:
        done.set()
        thread.join()


class FailsAfterTakeBack(pydantic.BaseModel):
    """Item 0 needs item 3 of the same map (a nested call: 1 to 5 are given back, 3 is
    computed there, 1, 2, 4 and 5 taken back once it returned); item 1 raises."""

    ctl: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            append(Path(self.ctl) / "items.txt", str(item))
            if item == 0:
                assert list(self.process([3])) == [30]
            if item == 1:
                raise ValueError("item 1 fails")
            yield 10 * item


def test_items_taken_back_before_an_item_error_are_computed(tmp_path: Path) -> None:
    """Items taken back by the call that then stopped at an item's error (before the
    first item it could not take back: 3, computed meanwhile) were dropped: neither
    computed nor claimed again ("not computed ('2'): the worker ended without writing
    it"). They are computed after the error, as any item after an item error."""
    maps = FailsAfterTakeBack(ctl=str(tmp_path), infra={"folder": tmp_path / "cache"})
    with pytest.raises(ValueError, match="item 1 fails"):
        list(maps.process(list(range(6))))
    # (1 once: read one by one, its error is its own)
    assert sorted(lines(tmp_path / "items.txt"), key=int) == ["0", "1", "2", "3", "4", "5"]
    with pytest.raises(ValueError, match="item 1 fails"):  # (all cached: read back)
        list(maps.process(list(range(6))))
    assert list(maps.process([0, 2, 3, 4, 5])) == [0, 20, 30, 40, 50]
    assert len(lines(tmp_path / "items.txt")) == 6


class ListNeedsAPool(pydantic.BaseModel):
    """A method returning a list, calling a map on a threadpool (the thread gives back
    the items after the first before its jobs go out), raising for item 2."""

    ctl: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> list[int]:
        append(Path(self.ctl) / "calls.txt", ",".join(map(str, items)))
        pool = Doubles(infra={"folder": Path(self.ctl) / "cache", "cluster": "threadpool"})
        assert list(pool.process([items[0], 100])) == [2 * items[0], 200]
        if 2 in items:
            raise ValueError("item 2 fails")
        return [10 * i for i in items]


class Doubles(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            yield 2 * item


def test_a_list_method_raising_after_giving_back_computes_its_first_item(
    tmp_path: Path,
) -> None:
    """A method returning a list that gave back its items after the first (a nested call
    sending jobs, while it was called) and then raised: the item it kept, never written,
    was dropped with those given back ("3 item(s) ... not computed ('0', '1', '2')"),
    where each half is called in turn to find the item at fault. The item kept is now
    called alone, the others claimed again."""
    maps = ListNeedsAPool(ctl=str(tmp_path), infra={"folder": tmp_path / "cache"})
    with pytest.raises(ValueError, match="item 2 fails"):
        list(maps.process([0, 1, 2, 3]))
    assert list(maps.process([0, 1, 3])) == [0, 10, 30]
    calls = lines(tmp_path / "calls.txt")
    assert sorted(c for c in calls if "," not in c) == ["0", "1", "2", "3"]


class HeldWhenComputed(pydantic.BaseModel):
    """Item 0 needs item 3 of the same map (1 to 5 given back, then taken back); each
    item notes whether this thread held its claim as it was computed."""

    ctl: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        claims = Claims(self.infra.uid_folder())
        for item in items:
            owner = claims.holders([str(item)]).get(str(item))
            held = owner is not None and owner.thread == threading.get_native_id()
            append(Path(self.ctl) / "items.txt", f"{item} {'held' if held else 'free'}")
            if item == 0:
                assert list(self.process([3])) == [30]
            yield 10 * item


def test_a_failed_take_back_computes_no_item_it_does_not_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taking back the items given back failed (writing the claim: a full disk): the
    error was taken for the next item's, which was computed alone to tell, though it was
    given back (another worker could compute it too) and the error said to be a batch's.
    The call now stops there, and the unit claims the rest again."""
    maps = HeldWhenComputed(ctl=str(tmp_path), infra={"folder": tmp_path / "cache"})

    def take_back(*args: tp.Any) -> list[str]:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Claim, "take_back", take_back)
    assert list(maps.process(list(range(6)))) == [10 * i for i in range(6)]
    assert sorted(lines(tmp_path / "items.txt")) == [f"{i} held" for i in range(6)]
