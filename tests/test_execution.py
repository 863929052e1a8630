"""TaskInfra on the real non-Slurm executors (DESIGN "Execution backends", SPEC §1, §10).

Classes are defined at module level so that local (subprocess) jobs can import them
(tests/ is on PYTHONPATH for jobs, see conftest). Every method appends a line to a file
given in its config, so tests count the real calls, wherever they ran. The configs most
jobs compute are in jobmodels_execution.py: a job imports their module, a light one.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import typing as tp
from pathlib import Path
from unittest import mock

import pydantic
import pytest
from controller_starts import hook_controller_starts
from filelog import append, wait_until
from jobmodels_execution import Counted, Listed
from racing import Background, race
from waiting import waiting_for_jobs, waits_for_others

import exca
import exca.graph.executors
from exca.cachedict import CacheDict
from exca.graph.errors import JobFailedError

CLUSTERS = [None, "local", "debug"]


def calls(path: str | Path) -> list[str]:
    path = Path(path)
    return path.read_text("utf8").splitlines() if path.exists() else []


@pytest.fixture(autouse=True)
def _unblock(tmp_path: Path) -> tp.Iterator[None]:
    """Whatever happens in a test, let its blocked jobs finish afterwards."""
    yield
    (tmp_path / "block-flag").unlink(missing_ok=True)


def _computing_process_gone(log: Path) -> bool:
    """Whether the process that logged the last computation (``pid=``) ended."""
    pid = int(calls(log)[-1].rsplit("pid=", 1)[1])
    return exca.storage.process.process_start_time(pid) is None


def make(tmp_path: Path, cluster: str | None, **kwargs: tp.Any) -> Counted:
    infra = {"folder": tmp_path / "cache", "cluster": cluster, **kwargs.pop("infra", {})}
    return Counted(log=str(tmp_path / "calls.txt"), infra=infra, **kwargs)


# --- results, cache, jobs -------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", CLUSTERS)
def test_result_is_cached(tmp_path: Path, cluster: str | None) -> None:
    task = make(tmp_path, cluster, x=3)
    assert task.infra.status() == "not submitted"
    assert task.process() == 6
    assert task.infra.status() == "completed"
    assert len(calls(tmp_path / "calls.txt")) == 1
    # a new instance (same config) reads the cache without recomputing
    again = make(tmp_path, cluster, x=3)
    assert again.process() == 6
    assert again.infra.status() == "completed"
    # even with another cluster: the cluster is not part of the identity
    other = make(tmp_path, None if cluster else "local", x=3)
    assert other.process() == 6
    assert len(calls(tmp_path / "calls.txt")) == 1
    # another config is another computation
    assert make(tmp_path, cluster, x=4).process() == 8
    assert len(calls(tmp_path / "calls.txt")) == 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", CLUSTERS)
def test_job_api(tmp_path: Path, cluster: str | None) -> None:
    task = make(tmp_path, cluster, x=5)
    job = task.infra.job()
    job.wait()
    assert job.done()
    assert job.result() == 10
    assert task.process() == 10
    # job() of a computed config returns a finished job, without recomputing
    job2 = make(tmp_path, cluster, x=5).infra.job()
    assert job2.done()
    assert job2.result() == 10
    assert len(calls(tmp_path / "calls.txt")) == 1
    if cluster is not None:  # (a debug job, found in the registry, said cluster=local)
        assert f"cluster={cluster}," in repr(job2)


@pytest.mark.timeout(120)
def test_local_job_details(tmp_path: Path) -> None:
    task = make(tmp_path, "local", x=7)
    job = task.infra.job()
    assert job.job_id.isdigit(), job.job_id  # a pid
    assert job.result() == 14
    # the method ran in another process (a child of the job's controller process)
    (line,) = calls(tmp_path / "calls.txt")
    assert line.startswith("x=7 pid=") and line != f"x=7 pid={os.getpid()}"
    stdout = job.stdout()
    assert stdout is not None and "computing x=7" in stdout
    folder = task.infra.uid_folder()
    assert folder is not None
    link = folder / "submitit"
    assert link.is_symlink()
    log_folder = link.resolve()
    assert log_folder.is_dir()
    assert job.job_id in log_folder.name
    assert any(log_folder.glob(f"{job.job_id}_*_log.out"))
    # the rest of submitit's job API goes to the submitit job
    assert job.paths.stdout.resolve() == next(log_folder.glob(f"{job.job_id}_*_log.out")).resolve()
    with pytest.raises(AttributeError, match="only for work sent to a job"):
        make(tmp_path, None, x=70).infra.job().paths  # noqa: B018
    assert [p.name for p in log_folder.parent.iterdir()] == [job.job_id]  # no literal "%j"
    records = [json.loads(p.read_text()) for p in (folder / "jobs").glob("*.json")]
    assert [r["job_id"] for r in records] == [job.job_id]
    assert Path(records[0]["logs"]).resolve() == log_folder
    assert records[0]["cluster"] == "local"
    # a fresh instance finds the same job and its logs
    job2 = make(tmp_path, "local", x=7).infra.job()
    assert job2.job_id == job.job_id
    stdout2 = job2.stdout()
    assert stdout2 is not None and "computing x=7" in stdout2


@pytest.mark.timeout(120)
def test_a_local_job_whose_controller_starts_before_its_submitter_made_its_folder_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short_result_wait: None
) -> None:
    """submitit makes a local job's log folder (``.../<pid>``) in the submitting process,
    after starting the job's controller, which opens its log there: a submitter slow to
    get there (a loaded machine, another thread holding the GIL) and the controller died
    on FileNotFoundError, the job ended without a result (a flaky test, a lost job). Here
    the submitter waits until the controller got past opening its log (or died)."""
    import submitit.local.local

    submit = submitit.local.local.LocalExecutor._submit_command

    def late(self: tp.Any, command: str) -> tp.Any:
        job = submit(self, command)  # (the controller started: the folder is made after)
        _wait_for(lambda: job._process.poll() is not None or job.paths.stdout.exists())
        return job

    monkeypatch.setattr(submitit.local.local.LocalExecutor, "_submit_command", late)
    task = make(tmp_path, "local", x=8)
    assert task.infra.job().result() == 16
    assert len(calls(tmp_path / "calls.txt")) == 1


# --- errors -------------------------------------------------------------------------------
@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", CLUSTERS)
def test_error_cached_and_retried(tmp_path: Path, cluster: str | None) -> None:
    flag = tmp_path / "fail-flag"
    flag.touch()
    task = make(tmp_path, cluster, x=2, fail_flag=str(flag))
    with pytest.raises(ValueError, match="bad x=2") as info:
        task.process()
    notes = "\n".join(getattr(info.value, "__notes__", []))
    if cluster is not None:  # the traceback of the remote computation is attached
        assert "Traceback" in notes and "bad x=2" in notes and "in process" in notes
    if cluster == "local":  # the job's log: which config failed, and its traceback once
        log = task.infra.job().stderr() or ""
        assert "x=2" in log and "failed (its error is cached)" in log
        assert log.count("ValueError: bad x=2") == 1, log
    assert task.infra.status() == "failed"
    assert len(calls(tmp_path / "calls.txt")) == 1
    # a second call (same or new instance) re-raises the cached error without recomputing
    with pytest.raises(ValueError, match="bad x=2"):
        task.process()
    again = make(tmp_path, cluster, x=2, fail_flag=str(flag))
    with pytest.raises(ValueError, match="bad x=2") as info2:
        again.process()
    notes = "\n".join(getattr(info2.value, "__notes__", []))
    assert "Traceback" in notes and "(mode='retry' computes it again)" in notes
    assert again.infra.status() == "failed"
    with pytest.raises(ValueError):
        again.infra.job().result()
    assert len(calls(tmp_path / "calls.txt")) == 1
    # retry recomputes (now succeeding)
    flag.unlink()
    retry = make(tmp_path, cluster, x=2, fail_flag=str(flag), infra={"mode": "retry"})
    assert retry.process() == 4
    assert len(calls(tmp_path / "calls.txt")) == 2
    assert retry.infra.status() == "completed"
    assert make(tmp_path, cluster, x=2, fail_flag=str(flag)).process() == 4
    # retry does not recompute a success
    assert make(tmp_path, cluster, x=2, fail_flag=str(flag), infra={"mode": "retry"}).process() == 4
    assert len(calls(tmp_path / "calls.txt")) == 2


class Interrupting(pydantic.BaseModel):
    """process() -> 1; raises KeyboardInterrupt itself while the file ``flag`` exists (a
    stop condition: no signal, nobody pressed Ctrl-C)."""

    flag: str
    log: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        append(self.log, "called")
        if Path(self.flag).exists():
            raise KeyboardInterrupt("a stop condition")
        return 1


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", CLUSTERS)
def test_a_keyboardinterrupt_of_the_method_is_never_cached(
    tmp_path: Path, cluster: str | None
) -> None:
    """A method raising KeyboardInterrupt itself (a notebook probe): inline it propagated
    and nothing was recorded, but a local job was recorded as failed (the next calls
    raised it, until mode='retry'). An interrupt is no property of the config: nothing
    is cached in any cluster, the next call computes it. In this process (None, debug)
    the KeyboardInterrupt propagates; a job's error says that the method raised it."""
    flag, log = tmp_path / "flag", tmp_path / "calls.txt"
    flag.touch()

    def task() -> Interrupting:
        infra = {"folder": tmp_path / "cache", "cluster": cluster}
        return Interrupting(flag=str(flag), log=str(log), infra=infra)

    if cluster == "local":
        with pytest.raises(JobFailedError) as info:
            task().process()
        said = str(info.value)
        assert "KeyboardInterrupt was raised (by the method: no SIGINT was received)" in said
        assert "nothing is cached: the next call computes it" in said, said
        assert "retry" not in said.partition("the end of that log")[0], said
    else:
        with pytest.raises(KeyboardInterrupt, match="a stop condition"):
            task().process()
    assert task().infra.status() == "not submitted"
    assert calls(log) == ["called"]
    flag.unlink()
    assert task().process() == 1  # (mode cached: computed)
    assert task().infra.status() == "completed"
    assert calls(log) == ["called"] * 2


class Exiting(pydantic.BaseModel):
    """process() -> 1; calls sys.exit(3) while the file ``flag`` exists (a stop condition
    of a script's method, called in a task)."""

    flag: str
    log: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        append(self.log, "called")
        if Path(self.flag).exists():
            sys.exit(3)
        return 1


@pytest.mark.timeout(240)
@pytest.mark.parametrize("cluster", [*CLUSTERS, pytest.param("slurm", marks=pytest.mark.slurm)])
def test_a_sys_exit_of_the_method_is_never_cached(tmp_path: Path, cluster: str | None) -> None:
    """A task's method calling sys.exit(3): a local job was recorded as failed (status
    "failed", `exca list` an error, the next calls raised it until mode='retry'), a Slurm
    job too ("its process exited with code 3"), while a map's item is never cached for
    it (the next call computes it), and inline the SystemExit propagated naming nothing.
    Now as for a map's item, on every cluster: nothing is cached, the next call computes
    it; a job's error says that the method called sys.exit (not to use mode='retry');
    in this process (None, debug) the SystemExit propagates with a note naming the task."""
    flag, log = tmp_path / "flag", tmp_path / "calls.txt"
    flag.touch()

    def task() -> Exiting:
        infra = {"folder": tmp_path / "cache", "cluster": cluster}
        return Exiting(flag=str(flag), log=str(log), infra=infra)

    for attempt in (1, 2):  # (the second call computes it again: nothing was cached)
        if cluster in (None, "debug"):
            with pytest.raises(SystemExit) as exited:
                task().process()
            assert exited.value.code == 3
            notes = getattr(exited.value, "__notes__", [])
            said = f"exca: the method of {task().process.node().uid} called sys.exit(3)"
            assert any(note.startswith(said) for note in notes), notes
        else:
            with pytest.raises(JobFailedError) as info:
                task().process()
            first = str(info.value).partition("\n")[0]
            assert "SystemExit(3) was raised (sys.exit in the method?)" in first, first
            assert "(nothing is cached: the next call computes it)" in first, first
            assert "retry" not in first, first
        assert task().infra.status() == "not submitted"
        (listed,) = exca.ops.inspect(tmp_path / "cache")
        assert listed.error is None and listed.status != "error", listed
        assert calls(log) == ["called"] * attempt
    flag.unlink()
    assert task().process() == 1  # (mode cached: computed)
    assert task().infra.status() == "completed"
    assert calls(log) == ["called"] * 3


class _SpaceNeeded:
    """A result whose storing fails with ENOSPC while the file ``flag`` exists (as on a
    full disk); it reads back as the number 7."""

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def __reduce__(self) -> tp.Any:
        if Path(self.flag).exists():
            import errno

            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return (int, (7,))


class FillsTheDisk(pydantic.BaseModel):
    flag: str
    log: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> tp.Any:
        append(self.log, "called")
        return _SpaceNeeded(self.flag)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("cluster", CLUSTERS)
def test_a_result_a_full_disk_could_not_store_is_computed_by_the_next_call(
    tmp_path: Path, cluster: str | None
) -> None:
    """A disk full when the result is stored: inline nothing was cached (the next call
    computed it), but a local job was recorded as failed: once space was freed, every
    call raised "local job ... failed: OSError: [Errno 28] No space left on device (use
    mode='retry' to recompute)", a debug job too. A full disk is no property of the
    config: on every cluster nothing is cached, the error names the folder and says what
    to do, and the next call (in the default mode) computes it."""
    flag, log = tmp_path / "full", tmp_path / "calls.txt"
    flag.touch()

    def task() -> FillsTheDisk:
        infra = {"folder": tmp_path / "cache", "cluster": cluster}
        return FillsTheDisk(flag=str(flag), log=str(log), infra=infra)

    for attempt in (1, 2):  # (the second call computes it again: nothing was cached)
        with pytest.raises(OSError if cluster is None else JobFailedError) as info:
            task().process()
        said = "\n".join([str(info.value), *getattr(info.value, "__notes__", [])])
        assert "No space left on device" in said, said
        assert str(task().infra.uid_folder()) in said, said
        assert "free space" in said, said
        assert "mode='retry'" not in said, said
        assert task().infra.status() == "not submitted"
        assert calls(log) == ["called"] * attempt
    flag.unlink()  # (space freed)
    assert task().process() == 7  # (mode cached: computed)
    assert task().infra.status() == "completed"
    assert calls(log) == ["called"] * 3


@pytest.mark.timeout(180)
def test_a_full_disk_job_whose_record_stayed_is_no_failure_for_status(tmp_path: Path) -> None:
    """A local job that met a full disk (or a read-only folder) storing its result sets its
    record aside; on a read-only folder it cannot, and the record stays. The next call
    computes it all the same (no failure of the config), but status() said "failed",
    failure() gave the disk's error and exca list an "error": they say what the call does."""
    flag, log = tmp_path / "full", tmp_path / "calls.txt"
    flag.touch()

    def task() -> FillsTheDisk:
        infra = {"folder": tmp_path / "cache", "cluster": "local"}
        return FillsTheDisk(flag=str(flag), log=str(log), infra=infra)

    with pytest.raises(JobFailedError, match="No space left on device"):
        task().process()
    jobs = task().infra.uid_folder() / "jobs"
    for refused in jobs.glob("*.refused"):  # (as a job that could not set it aside)
        refused.rename(refused.with_suffix(".json"))
    assert list(jobs.glob("*.json"))
    assert task().infra.status() == "not submitted"
    assert task().infra.failure() is None
    (listed,) = exca.ops.inspect(tmp_path / "cache")
    assert listed.error is None and listed.status != "error", listed
    flag.unlink()  # (space freed)
    assert task().process() == 7
    assert calls(log) == ["called"] * 2


class FillsTheDiskItems(pydantic.BaseModel):
    flag: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: tp.Iterable[int]) -> tp.Iterator[tp.Any]:
        for _ in items:
            yield _SpaceNeeded(self.flag)


@pytest.mark.timeout(180)
def test_a_map_job_dead_on_a_full_disk_is_no_failure_for_status(tmp_path: Path) -> None:
    """A local map job that met a full disk storing its items: the next call computes
    them, and exca list said nothing of a failure, but the node's status() said "failed"
    (a job whose method raised KeyboardInterrupt is no failure for it, a full disk was)."""
    flag = tmp_path / "full"
    flag.touch()

    def mapped() -> FillsTheDiskItems:
        infra = {"folder": tmp_path / "cache", "cluster": "local"}
        return FillsTheDiskItems(flag=str(flag), infra=infra)

    with pytest.raises(JobFailedError, match="No space left on device"):
        mapped().process([1, 2])
    node = mapped().process.node([1, 2])
    assert node.status() == "not submitted"
    assert node.failure() is None
    (listed,) = exca.ops.inspect(tmp_path / "cache")
    assert listed.error is None and listed.status != "error", listed
    flag.unlink()  # (space freed)
    assert list(mapped().process([1, 2])) == [7, 7]


class DiesOrStops(pydantic.BaseModel):
    """A map whose job dies at item 1 (os._exit) and is interrupted at item 3."""

    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: tp.Iterable[int]) -> tp.Iterator[int]:
        for item in items:
            if item == 1:
                os._exit(3)
            if item == 3:
                raise KeyboardInterrupt
            yield item


@pytest.mark.timeout(180)
def test_a_map_failure_names_the_job_that_failed(tmp_path: Path) -> None:
    """A map's items left by a job that died, then by a later job whose method raised
    KeyboardInterrupt (no failure): status() said "failed" for the first, but failure()
    quoted the last job without its outcome, the interrupted one ("the next call
    computes them"). It names the job status() found failed."""

    def mapped() -> DiesOrStops:
        return DiesOrStops(infra={"folder": tmp_path / "cache", "cluster": "local"})

    with pytest.raises(JobFailedError, match="its process died") as died:
        mapped().process([1, 2])
    with pytest.raises(JobFailedError, match="KeyboardInterrupt"):
        mapped().process([3])
    node = mapped().process.node([1, 2, 3])
    assert node.status() == "failed"
    failure = node.failure()
    assert isinstance(failure, JobFailedError)
    job = str(died.value).split("local job ")[1].split(" ")[0]
    assert f"local job {job} ended without writing its result: its process died" in str(failure)
    assert "KeyboardInterrupt" not in str(failure)


def test_a_job_record_on_a_full_disk_leaves_nothing_and_says_what_to_do(tmp_path: Path) -> None:
    """A job record (or an item list, a submission marker, an interrupted call's note)
    written on a full disk (here over a file size limit): the bare "[Errno 27] File too
    large" named no file, and its partial temporary file stayed in jobs/ for good. Now
    nothing is left and the error names the node folder and what to do."""
    import resource

    from exca.graph import registry

    folder = tmp_path / "node"
    record = registry.JobRecord(job_id="123", cluster="local", logs="x" * 200, submitted=1.0)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (over the limit: EFBIG)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, hard))
    try:
        with pytest.raises(OSError) as info:
            registry.write(folder, record, link=False)
        with pytest.raises(OSError):
            registry.write_items(folder, "124", [f"item-{i}" for i in range(20)])
        registry.note_interrupted(
            folder, [f"item-{i}" for i in range(20)], "KeyboardInterrupt", None
        )
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert os.listdir(folder / "jobs") == []
    notes = getattr(info.value, "__notes__", [])
    assert any(f"no space left for {folder}" in n and "free space" in n for n in notes), notes
    registry.write(folder, record, link=False)  # (space is back)
    assert [r.job_id for r in registry.read_all(folder)] == ["123"]


def _wait_for(predicate: tp.Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not _holds(predicate):
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def _holds(predicate: tp.Callable[[], bool]) -> bool:
    # (a glob walking a folder the jobs remove meanwhile, e.g. a one-job submission's
    # literal logs/<user>/%j, raised FileNotFoundError: looked at again)
    try:
        return predicate()
    except FileNotFoundError:
        return False


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def kill_tree(pid: int) -> None:
    """SIGKILL a local job: its controller process (the job id) and the task it started;
    returns once the task is gone (a signal is delivered asynchronously: a process in
    uninterruptible I/O, under load, ran on for a moment, its claim still live)."""
    from exca.storage.process import process_start_time

    kids = children(pid)
    # the task first: with the controller dead while its task ran on, the caller took the
    # task's live claim for another worker's computation and waited for it (a flake)
    for kid in kids:
        os.kill(kid, signal.SIGKILL)
    _wait_for(lambda: all(process_start_time(kid) is None for kid in kids))
    with contextlib.suppress(ProcessLookupError):  # (it may have ended with its task)
        os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(120)
def test_retry_right_after_a_failure(tmp_path: Path) -> None:
    flag = tmp_path / "fail-flag"
    flag.touch()
    task = make(tmp_path, "local", x=3, fail_flag=str(flag), linger=3.0)
    task.infra.job()
    _wait_for(lambda: task.infra.status() == "failed")  # the error is cached; the job lingers
    flag.unlink()
    retry = make(tmp_path, "local", x=3, fail_flag=str(flag), linger=3.0, infra={"mode": "retry"})
    assert retry.process() == 6
    assert len(calls(tmp_path / "calls.txt")) == 2


@pytest.fixture
def short_result_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit waits 15 s for the result pickle of a job that has none (NFS delays) every
    time exca asks how a dead job ended; 1 s is enough on a local disk."""
    import submitit.core.core

    monkeypatch.setattr(submitit.core.core.Job, "_results_timeout_s", 1)


@pytest.fixture(scope="module")
def killed_job(tmp_path_factory: pytest.TempPathFactory) -> tp.Iterator[Path]:
    """A local job killed (SIGKILL) while computing; yields its tmp folder."""
    tmp_path = tmp_path_factory.mktemp("killed")
    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    job = make(tmp_path, "local", x=9, block_flag=str(block)).infra.job()
    _wait_for(lambda: len(calls(log)) == 1)  # the method started in the job
    kill_tree(int(job.job_id))
    _wait_for(job.done)  # (reaps the killed process)
    block.unlink()  # a recomputation would now finish
    yield tmp_path


def _killed(tmp_path: Path, **infra: tp.Any) -> Counted:
    return make(tmp_path, "local", x=9, block_flag=str(tmp_path / "block-flag"), infra=infra)


class KillsItself(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        os.kill(os.getpid(), signal.SIGKILL)  # (as the out-of-memory killer does)
        return 1


@pytest.mark.timeout(120)
def test_a_local_job_killed_by_a_signal_says_which(tmp_path: Path, short_result_wait: None) -> None:
    """A local job whose process was killed (e.g. by the out-of-memory killer) was said to
    have died, 'killed, out of memory, or sys.exit/os._exit': its controller forgot the
    signal. Its log, its error and `exca list` name it."""
    task = KillsItself(infra={"folder": tmp_path, "cluster": "local"})
    with pytest.raises(JobFailedError, match=r"killed by SIGKILL: out of memory"):
        task.process()
    assert task.infra.status() == "failed"
    # (why, in python too: the call's error, as `exca list` says it)
    assert "killed by SIGKILL" in str(task.infra.failure())
    assert "killed by SIGKILL (signal 9)" in (task.infra.job().stderr() or "")
    (info,) = exca.ops.inspect(tmp_path)
    assert "killed by SIGKILL" in (info.error or "")


@pytest.mark.timeout(120)
def test_killed_local_job_fails(killed_job: Path, short_result_wait: None) -> None:
    task = _killed(killed_job)
    with pytest.raises(JobFailedError, match="its process died"):  # (not "state FINISHED")
        task.process()
    assert task.infra.status() == "failed"
    with pytest.raises(JobFailedError, match="its process died"):  # mode cached: not recomputed
        _killed(killed_job).process()
    assert _killed(killed_job).infra.status() == "failed"
    job = _killed(killed_job).infra.job()  # the killed job itself (not a stand-in)
    assert job.job_id == task.infra.job().job_id != "#local#"
    assert (job.cluster, job.state) == ("local", "FAILED") and job.done()
    with pytest.raises(JobFailedError, match="use mode='retry'"):  # (it hung)
        job.result()
    assert len(calls(killed_job / "calls.txt")) == 1


@pytest.mark.timeout(120)
def test_a_submission_on_a_full_disk_names_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job whose pickle cannot be written (its log folder's disk full): the bare "[Errno
    28] No space left on device", from deep inside submitit, said nothing of where nor of
    what to do. Now it names the log folder and says to free space; nothing was
    submitted, and once space is back the call computes."""
    import errno

    import submitit.core.utils

    def full(obj: tp.Any, filename: tp.Any) -> None:
        Path(filename).write_bytes(b"")  # (opened, as submitit does, then the disk is full)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    task = make(tmp_path, "local", x=4)
    monkeypatch.setattr(submitit.core.utils, "cloudpickle_dump", full)
    with pytest.raises(OSError, match="No space left") as info:
        task.process()
    monkeypatch.undo()
    notes = getattr(info.value, "__notes__", [])
    logs = task.infra.uid_folder().parent / "logs"
    assert any(str(logs) in n and "free space there" in n for n in notes), notes
    assert task.infra.status() == "not submitted" and not list(logs.rglob("*.pkl"))
    assert make(tmp_path, "local", x=4).process() == 8
    assert len(calls(tmp_path / "calls.txt")) == 1


@pytest.mark.timeout(120)
def test_a_submission_on_a_full_disk_leaves_no_partial_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's pickle cut where the disk filled up (on a 2 MB tmpfs: 4096 of its 13771
    bytes written): only an empty one was removed, the partial one stayed in the log
    folder, under a random name nothing reads. Nothing is left; once space is back the
    call computes."""
    import errno

    import cloudpickle
    import submitit.core.utils

    def full(obj: tp.Any, filename: tp.Any) -> None:
        data = cloudpickle.dumps(obj)
        Path(filename).write_bytes(data[: len(data) // 2])  # (then the disk is full)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    task = make(tmp_path, "local", x=5)
    monkeypatch.setattr(submitit.core.utils, "cloudpickle_dump", full)
    with pytest.raises(OSError, match="No space left"):
        task.process()
    monkeypatch.undo()
    logs = task.infra.uid_folder().parent / "logs"
    assert task.infra.status() == "not submitted" and not list(logs.rglob("*.pkl"))
    assert make(tmp_path, "local", x=5).process() == 10
    assert len(calls(tmp_path / "calls.txt")) == 1


@pytest.mark.timeout(120)
def test_a_failed_submission_leaves_the_pickles_another_submitter_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(a review: a submission whose dump failed (a full disk, an unpicklable config)
    removed every empty or cut pickle written since it began in the step's log folder,
    which another process submitting jobs of that step meanwhile shares: its pickles,
    empty or partial while it dumps them, went, and its job could not be loaded)"""
    import errno

    import cloudpickle
    import submitit.core.utils

    others: list[Path] = []

    def full(obj: tp.Any, filename: tp.Any) -> None:
        data = cloudpickle.dumps(obj)
        folder = Path(filename).parent  # (another submitter's, being written meanwhile)
        others.extend([folder / f"{'ab' * 16}.pkl", folder / f"{'cd' * 16}.pkl"])
        others[0].write_bytes(data[: len(data) // 3])
        others[1].write_bytes(b"")
        Path(filename).write_bytes(data[: len(data) // 2])  # (then the disk is full)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    task = make(tmp_path, "local", x=6)
    monkeypatch.setattr(submitit.core.utils, "cloudpickle_dump", full)
    with pytest.raises(OSError, match="No space left"):
        task.process()
    monkeypatch.undo()
    logs = task.infra.uid_folder().parent / "logs"
    assert sorted(logs.rglob("*.pkl")) == sorted(others)  # (its own went)


class FillsItsDisk(pydantic.BaseModel):
    """Fills the disk holding ``path`` (a small tmpfs), then raises."""

    path: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        with open(self.path, "wb") as f:
            for size in (65536, 4096, 1):  # (to its last byte)
                with contextlib.suppress(OSError):
                    while True:
                        f.write(b"x" * size)
                        f.flush()
        raise ValueError("the disk is full")


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> tp.Iterator[Path]:
    """A 2 MB tmpfs (root only: skipped otherwise), unmounted at the end."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.timeout(120)
def test_a_job_on_a_full_disk_leaves_no_litter_in_its_log_folder(
    tmp_path: Path, small_tmpfs: Path
) -> None:
    """(seen last session: a job whose log folder's disk filled up left an empty
    ``*_result.pkl.save_tmp`` (submitit's result, not written) and an empty ``*_log.err``
    there, which only `exca clean logs` removed) Both go once the job is seen ended; a
    log holding text stays."""
    task = FillsItsDisk(
        path=str(small_tmpfs / "filler"),
        infra={"folder": tmp_path / "cache", "cluster": "local", "logs": str(small_tmpfs / "%j")},
    )
    with pytest.raises(OSError, match="No space left"):  # (its file could not be closed)
        task.process()
    files = {p.name: p.stat().st_size for p in small_tmpfs.rglob("*") if p.is_file()}
    (stdout,) = [name for name in files if name.endswith("_log.out")]
    assert files[stdout] > 0  # (written before the disk was full)
    assert not [n for n in files if n.endswith(".save_tmp") or n.endswith("_log.err")], files


class DiesQuietly(pydantic.BaseModel):
    """Its process ends at once, writing nothing (as a job meeting a full disk may)."""

    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        os._exit(1)


@pytest.mark.timeout(120)
def test_a_local_job_dead_on_a_full_disk_says_so(
    tmp_path: Path, short_result_wait: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local job dead without a word while the disk of its log folder is full (it could
    write neither its log nor its result) was said to have died "killed, out of memory,
    or sys.exit/os._exit in the method", nothing of the disk. Now its error says that
    the disk is full, and what to do. (The disk is seen full here: statvfs says so.)"""
    real = os.statvfs

    def full(path: tp.Any) -> os.statvfs_result:
        fields = list(real(path))
        fields[3] = fields[4] = 0  # (f_bfree, f_bavail)
        return os.statvfs_result(fields)

    task = DiesQuietly(infra={"folder": tmp_path, "cluster": "local"})
    monkeypatch.setattr(os, "statvfs", full)
    with pytest.raises(JobFailedError, match="its process died") as info:
        task.process()
    said = str(info.value)
    assert "the disk of its log folder" in said and "is full (0 bytes left)" in said, said
    assert "free space, then call again" in said, said
    monkeypatch.undo()
    with pytest.raises(JobFailedError) as again:  # (not full: not said)
        DiesQuietly(infra={"folder": tmp_path, "cluster": "local", "mode": "retry"}).process()
    assert "its process died" in str(again.value) and "is full" not in str(again.value)


def _snapshot(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every file and folder under root: its mode, size, modification time and inode."""
    return {
        str(path.relative_to(root)): (info.st_mode, info.st_size, info.st_mtime_ns, info.st_ino)
        for path in [root, *root.rglob("*")]
        for info in [os.lstat(path)]
    }


@pytest.mark.timeout(120)
def test_a_read_only_call_says_how_a_killed_local_job_ended(
    killed_job: Path, short_result_wait: None
) -> None:
    """A task whose local job was killed (SIGKILL): a call, status() and a plan say that
    its process died; a read-only call (and its plan) said only "read-only and missing",
    as of a config never computed. It now raises the call's error, and its plan gives
    the call's reason, writing nothing."""
    root = killed_job / "cache"
    before = _snapshot(root)
    reader = _killed(killed_job, mode="read-only")
    with pytest.raises(JobFailedError, match="its process died") as read_only:
        reader.process()
    (entry,) = exca.graph.plan(reader.process.node()).entries
    assert entry.action == "fail" and "its process died" in entry.reason, entry
    assert reader.infra.status() == "failed"
    assert _snapshot(root) == before  # (nothing written, nothing moved)
    with pytest.raises(JobFailedError) as call:
        _killed(killed_job).process()
    assert str(read_only.value) == str(call.value)
    assert len(calls(killed_job / "calls.txt")) == 1


@pytest.mark.timeout(120)
def test_a_read_only_call_waiting_for_a_job_that_dies_says_how_it_ended(
    tmp_path: Path, short_result_wait: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only call waits for the job computing its task; that job killed (SIGKILL),
    the call raised "read-only and missing (job N ended without a result)", saying not
    how it ended, where the other read-only paths (a job found ended) raise the default
    call's JobFailedError. It does too now, writing nothing."""
    block = tmp_path / "block-flag"
    block.touch()
    job = make(tmp_path, "local", x=9, block_flag=str(block)).infra.job()
    _wait_for(lambda: len(calls(tmp_path / "calls.txt")) == 1)  # (the method started)
    reader = make(tmp_path, "local", x=9, block_flag=str(block), infra={"mode": "read-only"})
    root = tmp_path / "cache"
    try:
        with caplog.at_level(logging.INFO, logger="exca"):
            reading = Background(reader.process)
            _wait_for(lambda: "is computed elsewhere" in caplog.text)  # (it waits)
    finally:
        kill_tree(int(job.job_id))
    (error,) = reading.join(timeout=60)
    assert isinstance(error, JobFailedError), error
    assert f"job {job.job_id} ended without writing its result: its process died" in str(error)
    before = _snapshot(root)
    with pytest.raises(JobFailedError) as again:  # (the read-only call that finds it ended)
        reader.process()
    assert str(again.value) == str(error)
    assert _snapshot(root) == before
    assert len(calls(tmp_path / "calls.txt")) == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("outcome", ["result", "error"])
def test_a_job_whose_outcome_was_removed_since_did_not_fail(tmp_path: Path, outcome: str) -> None:
    """A forced or retried run removes the old outcome before it submits; interrupted
    then (Ctrl-C, a killed notebook), the latest job record is the earlier job, which ran
    to its end: the config is "not submitted" and computed again, not "failed" with "the
    job ended without writing its result"."""
    flag = tmp_path / "fail-flag"
    if outcome == "error":
        flag.touch()
    task = make(tmp_path, "local", x=5, fail_flag=str(flag))
    with contextlib.suppress(ValueError):
        task.process()
    folder = task.infra.uid_folder()
    assert folder is not None and (folder / "jobs").exists()
    flag.unlink(missing_ok=True)
    cache: CacheDict[tp.Any] = CacheDict(folder)
    del cache["result"]  # (what a force or a retry does before it submits)
    fresh = make(tmp_path, "local", x=5, fail_flag=str(flag))
    if outcome == "error":
        # (a failed job's result file holds an error: whether the method's, cached then
        # removed, or the job's own, it cannot tell: failed, naming that error)
        assert fresh.infra.status() == "failed"
        with pytest.raises(JobFailedError, match="ValueError: bad x=5"):
            fresh.process()
        return
    assert fresh.infra.status() == "not submitted"
    assert fresh.process() == 10
    assert len(calls(tmp_path / "calls.txt")) == 2


@pytest.mark.timeout(150)
def test_local_job_reaching_its_time_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit stops a local job at its time limit by raising its UncompletedJobError in
    the method: the task fails with JobFailedError (as on Slurm), cached; retry recomputes."""
    import submitit.local.local

    submit = submitit.local.local.LocalExecutor._submit_command

    def warned_early(self: tp.Any, command: str) -> tp.Any:
        # (submitit's warning 48 s before the 1-minute limit, not its 30 s: the job is
        # stopped 12 s after its start; the test waited 30 s for it. Not 5 s: on a loaded
        # machine the job's process had not yet set its handler, and SIGUSR2 killed it)
        self.parameters["signal_delay_s"] = 48
        return submit(self, command)

    monkeypatch.setattr(submitit.local.local.LocalExecutor, "_submit_command", warned_early)
    flag = str(tmp_path / "block-flag")
    task = make(tmp_path, "local", block_flag=flag, infra={"timeout_min": 1})
    Path(flag).touch()
    job = task.infra.job()
    with pytest.raises(JobFailedError, match="timed-out") as info:
        task.process()
    # (what to do, and which job, as on Slurm: the hint was missing)
    assert f"job {job.job_id} reached its time limit" in str(info.value)
    assert str(info.value).endswith("(use mode='retry' to recompute)")
    assert task.infra.status() == "failed"
    again = make(tmp_path, None, block_flag=flag)
    with pytest.raises(JobFailedError, match="timed-out"):
        again.process()
    Path(flag).unlink()
    assert make(tmp_path, None, block_flag=flag, infra={"mode": "retry"}).process() == 2


class LocalLimit(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def limit(self) -> str:
        return os.environ.get("SUBMITIT_LOCAL_TIMEOUT_S", "")


@pytest.mark.timeout(120)
def test_a_local_job_without_timeout_min_is_not_stopped_after_two_minutes(
    tmp_path: Path,
) -> None:
    """submitit's default stopped a local job after 90 s (2 minutes, minus its signal
    delay): any real training on a laptop, or a cluster="auto" run without Slurm, died
    so (a probe). A local job's limit is now 7 days unless timeout_min says otherwise."""
    default = LocalLimit(infra={"folder": tmp_path / "a", "cluster": "local"}).limit()
    assert int(default) == 7 * 24 * 3600
    given = LocalLimit(infra={"folder": tmp_path / "b", "cluster": "local", "timeout_min": 3})
    assert int(given.limit()) == 3 * 60


class WaitsOnItsOwnJob(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        from submitit.core.utils import UncompletedJobError

        raise UncompletedJobError("Job 42 has not produced any output (state: CANCELLED)")


def test_an_uncompleted_job_error_of_the_method_is_its_own(tmp_path: Path) -> None:
    """Only submitit's time-limit signal is the job's failure: the same error type raised
    by the method (a sub-job of its own that died) is the method's error, as it is."""
    from submitit.core.utils import UncompletedJobError

    task = WaitsOnItsOwnJob(infra={"folder": tmp_path})
    for _ in range(2):  # computed, then read from the cache
        with pytest.raises(UncompletedJobError, match="state: CANCELLED"):
            task.process()


@pytest.mark.timeout(60)
def test_job_of_a_failing_task_without_folder(tmp_path: Path) -> None:
    """No folder: the error is not cached; job().result() raises it (it hung)."""
    task = Counted(x=5, log=str(tmp_path / "calls.txt"), fail_flag=str(tmp_path / "calls.txt"))
    job = task.infra.job()  # (the log file exists once the method ran: then it fails)
    assert job.done()
    with pytest.raises(ValueError, match="bad x=5"):
        job.result()


@pytest.mark.timeout(120)
def test_retry_job_follows_the_new_job(tmp_path: Path) -> None:
    """mode=retry, job() on a submitit cluster: until the new job ends, the task shows it
    running (not the old error), and its result is the new one."""
    flag = tmp_path / "fail-flag"
    flag.touch()
    with pytest.raises(ValueError, match="bad x=7"):
        make(tmp_path, None, x=7, fail_flag=str(flag)).process()
    flag.unlink()
    block = tmp_path / "block-flag"
    block.touch()
    retry = make(tmp_path, "local", x=7, fail_flag=str(flag), block_flag=str(block))
    retry = retry.infra.clone_obj({"infra.mode": "retry"})
    job = retry.infra.job()
    assert retry.infra.status() == "running"
    assert not job.done()
    block.unlink()
    assert job.result() == 14
    assert retry.infra.status() == "completed"


@pytest.mark.timeout(120)
def test_killed_local_job_retry_recomputes(
    killed_job: Path, tmp_path: Path, short_result_wait: None
) -> None:
    folder = tmp_path / "killed"  # (a copy: the fixture's folder stays as the kill left it)
    shutil.copytree(killed_job, folder, symlinks=True)
    retry = _killed(folder, mode="retry")
    assert retry.process() == 18
    assert retry.infra.status() == "completed"
    assert len(calls(folder / "calls.txt")) == 2
    assert _killed(folder).process() == 18


@pytest.mark.timeout(120)
def test_the_plan_of_a_copied_cache_says_how_the_original_job_ended(
    killed_job: Path, tmp_path: Path, short_result_wait: None
) -> None:
    """A cache copied (cp -a) holding the record of a local job that was killed: a plan
    and explain of the copy said only "missing" ("its folder exists but holds no result
    (interrupted, or cleared?)"), where the original's say the job died. The copy's call
    computes it anew (that job wrote into the original folder: not the copy's failure,
    see registry.read_all), and its plan says so and how that job ended, writing nothing."""
    folder = tmp_path / "killed"
    subprocess.run(["cp", "-a", str(killed_job), str(folder)], check=True)
    before = _snapshot(folder)
    original = str(_killed(killed_job).infra.uid_folder())

    def copied(**infra: tp.Any) -> Counted:  # (the same config, in the copy)
        return _killed(killed_job, folder=folder / "cache", **infra)

    node = copied().process.node()
    (entry,) = exca.graph.plan(node).entries
    assert (entry.status, entry.action) == ("missing", "compute"), entry
    assert f"its folder was copied from {original}, where local job" in entry.reason, entry
    assert "its process died" in entry.reason and "not a failure of this folder" in entry.reason
    (explained,) = exca.ops.explain(node)
    assert explained.reason == entry.reason and "interrupted, or cleared" not in explained.reason
    (entry,) = exca.graph.plan(copied(mode="read-only").process.node()).entries
    assert entry.reason.startswith("read-only and missing (its folder was copied from"), entry
    assert _snapshot(folder) == before  # (read only)
    assert len(calls(killed_job / "calls.txt")) == 1


@pytest.mark.timeout(120)
def test_job_killed_while_waited_for(tmp_path: Path, short_result_wait: None) -> None:
    """The caller is blocked in the call when the job dies: JobFailedError, then retry."""
    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    task = make(tmp_path, "local", x=5, block_flag=str(block))
    errors: list[BaseException] = []

    def call() -> None:
        try:
            task.process()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=call)
    thread.start()
    _wait_for(lambda: len(calls(log)) == 1)
    records = list((tmp_path / "cache").glob("*/*/jobs/*.json"))
    assert len(records) == 1
    kill_tree(int(json.loads(records[0].read_text())["job_id"]))
    thread.join(timeout=100)
    assert not thread.is_alive()
    block.unlink()
    assert len(errors) == 1 and isinstance(errors[0], JobFailedError), errors
    assert make(tmp_path, "local", x=5, block_flag=str(block)).infra.status() == "failed"
    retry = make(tmp_path, "local", x=5, block_flag=str(block), infra={"mode": "retry"})
    assert retry.process() == 10
    assert len(calls(log)) == 2


@pytest.mark.timeout(120)
def test_other_instance_waits_for_running_local_job(
    tmp_path: Path, short_result_wait: None
) -> None:
    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    job = make(tmp_path, "local", x=4, block_flag=str(block)).infra.job()
    _wait_for(lambda: len(calls(log)) == 1)  # computing in the job
    other = make(tmp_path, "local", x=4, block_flag=str(block))
    assert other.infra.status() == "running"
    other_job = other.infra.job()  # the same job, not a new one
    assert other_job.job_id == job.job_id
    assert not other_job.done()
    out: list[tp.Any] = []
    thread = threading.Thread(target=lambda: out.append(other.process()))
    thread.start()
    thread.join(timeout=2.0)
    assert thread.is_alive()  # waiting for the running job
    block.unlink()
    thread.join(timeout=60)
    assert out == [8]
    assert other_job.result() == 8
    assert make(tmp_path, "local", x=4, block_flag=str(block)).process() == 8
    assert len(calls(log)) == 1


_LOADED_JOB = """
import pickle, sys
sys.path.insert(0, sys.argv[1])
job = pickle.loads(open(sys.argv[2], "rb").read())
print(job.state, job.done(), flush=True)
if sys.argv[3] == "cancel":
    job.cancel()
    job.wait()
    print(job.state, job.done(), flush=True)
else:
    print(job.result(), job.state, flush=True)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("then", ["result", "cancel"])
def test_a_local_job_loaded_by_another_process_runs_until_it_ends(
    tmp_path: Path, then: str
) -> None:
    """Jobs are plain objects to pickle and inspect elsewhere: a running local job loaded
    by another process said FAILED and done (submitit's unpickled local job has no
    process); that process can also cancel it."""
    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    job = make(tmp_path, "local", x=6, block_flag=str(block)).infra.job()
    _wait_for(lambda: len(calls(log)) == 1)  # computing in the job
    (tmp_path / "job.pkl").write_bytes(pickle.dumps(job))
    command = [sys.executable, "-c", _LOADED_JOB, str(Path(__file__).parent)]
    other = subprocess.Popen(
        [*command, str(tmp_path / "job.pkl"), then], stdout=subprocess.PIPE, text=True
    )
    assert other.stdout is not None
    assert other.stdout.readline().split() == ["RUNNING", "False"]
    if then == "result":
        block.unlink()
        assert other.stdout.readline().split() == ["12", "COMPLETED"]
        assert job.result() == 12
    else:
        assert other.stdout.readline().split()[1] == "True"
        with pytest.raises(JobFailedError, match="cancelled"):
            job.result()
    assert other.wait(timeout=60) == 0 and len(calls(log)) == 1


@pytest.mark.timeout(120)
def test_a_pickled_retry_job_following_a_lost_job_submits_nothing(
    tmp_path: Path, short_result_wait: None
) -> None:
    """A job() in mode retry following another call's job sends its own job once that one
    ended without a result, when asked its state: a copy of it pickled (to inspect
    elsewhere) sent one too, from its done() (a review)."""
    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    first = make(tmp_path, "local", x=13, block_flag=str(block)).infra.job()
    _wait_for(lambda: len(calls(log)) == 1)  # computing in the job
    retry = make(tmp_path, "local", x=13, block_flag=str(block), infra={"mode": "retry"})
    follower = retry.infra.job()
    assert follower.job_id == first.job_id  # (it follows that job)
    loaded = pickle.loads(pickle.dumps(follower))
    first.cancel()
    _wait_for(first.done)
    assert loaded.done() and loaded.job_id == first.job_id
    assert len(list((tmp_path / "cache").glob("*/*/jobs/*.json"))) == 1  # (nothing sent)
    block.unlink()
    assert follower.result() == 26  # (the follower itself retries it: once)
    assert len(calls(log)) == 2


@pytest.mark.timeout(120)
def test_a_cache_copied_while_its_job_runs_computes_on_its_own(tmp_path: Path) -> None:
    """A cache copied while a job computes into the original: the copy's call does not
    take that job's end for its own (it cached "the job died" in the copy, for good: the
    job had written its result into the original); it computes in the copy."""
    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    job = make(tmp_path, "local", x=4, block_flag=str(block)).infra.job()
    _wait_for(lambda: len(calls(log)) == 1)  # computing in the job
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "cache", copy, symlinks=True)
    copied = make(tmp_path, None, x=4, block_flag=str(block), infra={"folder": copy})
    folder = copied.infra.uid_folder()
    assert folder is not None and exca.graph.registry.latest(folder) is None
    assert len(exca.graph.registry.read_all(folder, copied=True)) == 1  # (its logs: ops)
    out: list[tp.Any] = []
    thread = threading.Thread(target=lambda: out.append(copied.process()))
    thread.start()
    block.unlink()
    thread.join(timeout=60)
    assert out == [8] and job.result() == 8
    assert len(calls(log)) == 2  # (the job, then the copy)
    assert copied.infra.status() == "completed"
    assert make(tmp_path, None, x=4, infra={"folder": copy}).process() == 8


@pytest.mark.timeout(60)
def test_a_cache_copied_while_a_call_computes_does_not_wait_for_it(tmp_path: Path) -> None:
    """A cache copied while a call of this machine computed into it: the copy's status
    said "running" and its call waited for that whole computation (it writes into the
    original), then computed anyway (a probe: a training's hours). It computes at once."""
    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    out: list[int] = []

    def call(**infra: tp.Any) -> None:
        out.append(make(tmp_path, None, x=6, block_flag=str(block), infra=infra).process())

    first = threading.Thread(target=call)
    first.start()
    _wait_for(lambda: len(calls(log)) == 1)  # computing (blocked)
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "cache", copy, symlinks=True)
    copied = make(tmp_path, None, x=6, block_flag=str(block), infra={"folder": copy})
    assert copied.infra.status() == "not submitted"
    assert make(tmp_path, None, x=6, block_flag=str(block)).infra.status() == "running"
    second = threading.Thread(target=call, kwargs={"folder": copy})
    second.start()
    _wait_for(lambda: len(calls(log)) == 2, timeout=10)  # (not after the first one)
    block.unlink()
    first.join(timeout=30)
    second.join(timeout=30)
    assert out == [12, 12]


@pytest.mark.timeout(120)
def test_clear_job_cancels_a_running_local_job(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """(quietly: SIGINT to the job's controller made it print a KeyboardInterrupt traceback
    in the terminal of the process that had started the job)"""
    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    job = make(tmp_path, "local", x=5, block_flag=str(block)).infra.job()
    _wait_for(lambda: len(calls(log)) == 1)  # computing in the job
    other = make(tmp_path, "local", x=5, block_flag=str(block))  # (knows the job from disk)
    other.infra.clear_job()
    _wait_for(lambda: exca.storage.process.process_start_time(int(job.job_id)) is None)
    # the job's process was stopped (it is gone, or a zombie)...
    block.unlink()
    _wait_for(lambda: _computing_process_gone(log))  # (stopped, or computed and wrote)
    assert other.infra.status() == "not submitted"  # ...before writing the cleared result
    assert make(tmp_path, None, x=5).infra.status() == "not submitted"
    assert "KeyboardInterrupt" not in capfd.readouterr().err


@pytest.mark.timeout(120)
@pytest.mark.parametrize("then", ["call", "job"])
def test_a_forced_job_while_an_earlier_job_computes_computes_again(
    tmp_path: Path, then: str
) -> None:
    """mode=force while a job of the same config runs: job() returned that running job,
    whose result (computed from before the force) counted as forced: nothing computed
    again. Now a new job computes once the earlier one is done, and job.result() is its."""
    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    first = make(tmp_path, "local", x=5, block_flag=str(block)).infra.job()
    _wait_for(lambda: len(calls(log)) == 1)  # computing in the job
    forced = make(tmp_path, "local", x=5, block_flag=str(block), infra={"mode": "force"})
    job = forced.infra.job()
    assert job.job_id != first.job_id and not job.done()
    block.unlink()
    assert first.result() == 10
    # the forced instance waits for its job (the first job's result came too early)
    assert (forced.process() if then == "call" else forced.infra.job().result()) == 10
    assert len(calls(log)) == 2  # computed again, after the first job
    assert job.result() == 10 and forced.process() == 10  # (forced once per instance)
    assert len(calls(log)) == 2


@pytest.mark.timeout(120)
def test_a_forced_call_whose_result_was_removed_since_is_forced_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its job computed the forced result, removed before the call looked (another
    process forcing or clearing it): computed again, and the force of this instance
    counts as done (the next call forced once more)."""
    from exca.graph.node import TASK_KEY
    from exca.graph.scheduler import Scheduler

    log = tmp_path / "calls.txt"
    finish = Scheduler._finish

    def removed_first(scheduler: tp.Any, run: tp.Any, progress: tp.Any) -> None:
        run.node.cache.refresh()
        if len(calls(log)) == 1 and TASK_KEY in run.node.cache:
            del run.node.cache[TASK_KEY]  # (what another process did meanwhile)
        finish(scheduler, run, progress)

    monkeypatch.setattr(Scheduler, "_finish", removed_first)
    forced = make(tmp_path, "local", x=9, infra={"mode": "force"})
    assert forced.process() == 18 and len(calls(log)) == 2
    assert forced.process() == 18 and len(calls(log)) == 2


@pytest.mark.timeout(120)
def test_plan_of_a_forced_config_whose_earlier_job_runs(tmp_path: Path) -> None:
    """The plan listed no submission for it (it waits for that job), but the run gives
    it a job of its own: the plan's submissions say so."""
    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    make(tmp_path, "local", x=8, block_flag=str(block)).infra.job()
    _wait_for(lambda: len(calls(log)) == 1)  # computing in the job
    forced = make(tmp_path, "local", x=8, block_flag=str(block), infra={"mode": "force"})
    plan = exca.graph.plan(forced.process.node())
    (entry,) = plan.entries
    assert entry.status == "running" and "then computed again once it ends" in entry.reason
    assert [(a.where, a.elements, a.nodes) for a in plan.arrays] == [("local", 1, [entry.uid])]
    block.unlink()
    assert forced.process() == 16 and len(calls(log)) == 2


@pytest.mark.timeout(120)
def test_a_call_whose_job_result_was_forced_away_follows_the_new_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call waits for its job; the job writes the result; another caller forces the
    config before the call sees it (its poll is held back here): the call raised "not
    computed: the worker ended without writing it", and cached that failure, which the
    forced job then kept instead of its own result."""
    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    waiter = make(tmp_path, "local", x=7, block_flag=str(block))
    polled = threading.Event()
    done = exca.graph.executors.SubmititHandle.done

    def held_back(handle: tp.Any) -> bool:
        if threading.current_thread() is thread and not polled.is_set():
            return False
        return done(handle)

    monkeypatch.setattr(exca.graph.executors.SubmititHandle, "done", held_back)
    got: list[tp.Any] = []

    def call() -> None:
        try:
            got.append(waiter.process())
        except Exception as error:  # (shown by the assertion below)
            got.append(error)

    thread = threading.Thread(target=call)
    thread.start()
    _wait_for(lambda: len(calls(log)) == 1)  # computing in the waiter's job
    block.unlink()
    same = {"x": 7, "block_flag": str(block)}  # (the flag is gone: nothing blocks now)
    _wait_for(lambda: make(tmp_path, None, **same).infra.status() == "completed")
    forced = make(tmp_path, "local", **same, infra={"mode": "force"})
    new_job = forced.infra.job()  # (removes the result, submits a new job)
    polled.set()
    thread.join(timeout=90)
    assert got == [14]  # the new job's result
    assert new_job.result() == 14 and len(calls(log)) == 2
    assert make(tmp_path, None, **same).process() == 14


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["clear_job", "cancel"])
def test_a_local_job_ignoring_sigint_is_stopped_too(tmp_path: Path, how: str) -> None:
    """A script started in the background by a shell ignores SIGINT, and so do its local
    jobs: clear_job() and cancel() (SIGINT) stopped nothing, and the job cached its result."""
    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        job = make(tmp_path, "local", x=6, block_flag=str(block)).infra.job()
    finally:
        signal.signal(signal.SIGINT, previous)
    _wait_for(lambda: len(calls(log)) == 1)  # computing in the job
    other = make(tmp_path, "local", x=6, block_flag=str(block))
    other.infra.clear_job() if how == "clear_job" else job.cancel()
    _wait_for(lambda: exca.storage.process.process_start_time(int(job.job_id)) is None)
    block.unlink()
    _wait_for(lambda: _computing_process_gone(log))  # (stopped, or computed and wrote)
    assert other.infra.status() == ("not submitted" if how == "clear_job" else "failed")
    with pytest.raises(exca.graph.errors.JobFailedError):
        job.result()


class Stubborn(pydantic.BaseModel):
    """Catches KeyboardInterrupt (e.g. to save a checkpoint) and goes on while the file
    ``block_flag`` exists."""

    log: str
    block_flag: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        append(self.log, "start")
        while True:
            try:  # (the check too: an interrupt may come while it reads the disk)
                if not Path(self.block_flag).exists():
                    return 1
                time.sleep(0.05)
            except KeyboardInterrupt:
                append(self.log, "caught")


@pytest.mark.timeout(120)
def test_cancel_stops_a_local_job_that_catches_the_interrupt(tmp_path: Path) -> None:
    log, block = tmp_path / "calls.txt", tmp_path / "block-flag"
    block.touch()
    task = Stubborn(
        log=str(log),
        block_flag=str(block),
        infra={"folder": tmp_path / "cache", "cluster": "local"},
    )
    job = task.infra.job()
    _wait_for(lambda: calls(log) == ["start"])
    job.cancel()
    _wait_for(job.done)  # (killed a second after the interrupt it caught)
    assert "caught" in calls(log)
    block.unlink()
    with pytest.raises(exca.graph.errors.JobFailedError):
        job.result()
    assert task.infra.status() == "failed"


_LOSES_THE_INTERRUPT = """
import signal, subprocess, sys, time
signal.signal(signal.SIGINT, lambda *_: None)  # (as a KeyboardInterrupt lost in an import)
print("ready", flush=True)
time.sleep(0.3)
child = "import signal, time; signal.signal(signal.SIGINT, lambda *_: None); time.sleep(300)"
task = subprocess.Popen([sys.executable, "-c", child])
print(task.pid, flush=True)
time.sleep(300)
"""


@pytest.mark.timeout(60)
def test_cancelling_a_local_job_whose_controller_lost_the_interrupt_still_stops_it() -> None:
    """A Ctrl-C right after a local submission: the controller, still importing, lost the
    SIGINT of the cancellation and started its task, which ran on (a CI run saw it)."""

    from exca.graph.executors import _cancel_local

    controller = subprocess.Popen(
        [sys.executable, "-c", _LOSES_THE_INTERRUPT], stdout=subprocess.PIPE, text=True
    )
    assert controller.stdout is not None
    try:
        assert controller.stdout.readline().strip() == "ready"
        _cancel_local(
            controller.pid,
            lambda: controller.poll() is None,
            lambda: controller.send_signal(signal.SIGINT),
        )
        task = int(controller.stdout.readline())
        assert controller.wait(timeout=20) == -signal.SIGKILL
        _wait_for(lambda: exca.storage.process.process_start_time(task) is None, timeout=20)
    finally:
        controller.kill()
        controller.wait()


_STARTS_SLOWLY_LOSING_THE_INTERRUPT = """
import signal, sys, time
signal.signal(signal.SIGINT, lambda *_: None)  # (a KeyboardInterrupt lost in an import)
time.sleep({lost})  # (still starting: a loaded machine)
signal.signal(signal.SIGINT, signal.default_int_handler)
from pathlib import Path
from unittest import mock
from submitit.local.local import Controller
Controller(Path(sys.argv[1])).run()
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("lost", [1.3, 3.0])
def test_a_cancelled_job_whose_controller_lost_the_interrupt_is_said_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lost: float
) -> None:
    """A controller that lost the interrupt and was still starting a second later: its
    task, started after the follow-up looked, was killed without an interrupt, and the
    job was said "interrupted (killed)" (found by review)."""

    def losing(cmd: list[str]) -> list[str]:
        assert cmd[1:3] == ["-m", "submitit.local._local"]
        return [cmd[0], "-c", _STARTS_SLOWLY_LOSING_THE_INTERRUPT.format(lost=lost), *cmd[3:]]

    controllers = hook_controller_starts(monkeypatch, command=losing)
    block = tmp_path / "block-flag"
    block.touch()
    task = make(tmp_path, "local", x=7, block_flag=str(block))
    job = task.infra.job()
    time.sleep(0.2)
    job.cancel()
    job.handle.job._process.wait(timeout=30)
    assert controllers == [int(job.job_id)]  # (the controller losing the interrupt)
    _wait_for(lambda: task.infra.status() == "failed", timeout=30)
    with pytest.raises(exca.graph.errors.JobFailedError, match=r"local job \d+ was cancelled"):
        job.result()
    if calls(tmp_path / "calls.txt"):  # its task ran: it was interrupted before being killed
        assert "KeyboardInterrupt" in (job.stderr() or "")


def test_a_log_folder_that_cannot_be_made_names_the_logs_setting(tmp_path: Path) -> None:
    task = make(tmp_path, "local", x=2, infra={"logs": "/dev/null/sub/%j"})
    with pytest.raises(OSError) as failed:
        task.process()
    notes = "\n".join(getattr(failed.value, "__notes__", []))
    assert "logs setting '/dev/null/sub/%j'" in notes
    assert calls(tmp_path / "calls.txt") == []


def _sigterm_while_computing(job: tp.Any, log: Path, block: Path) -> None:
    """SIGTERM to a local job once its (blocked) task computes, then let it finish."""
    _wait_for(lambda: len(calls(log)) == 1)
    os.kill(int(job.job_id), signal.SIGTERM)  # (the controller forwards it to its task)
    _wait_for(lambda: "SIGTERM" in (job.stderr() or ""))  # (noted, and ignored by submitit)
    block.unlink()


@pytest.mark.timeout(120)
def test_a_job_told_to_stop_but_still_recorded_keeps_its_result(tmp_path: Path) -> None:
    """SIGTERM also comes with preemption, requeues and time limits (submitit ignores it
    until SIGKILL): a task finishing meanwhile keeps its result while its job is still
    recorded (only clear_job(), which removes the record, withdraws it)."""
    block = tmp_path / "block-flag"
    block.touch()
    task = make(tmp_path, "local", x=21, block_flag=str(block))
    job = task.infra.job()
    _sigterm_while_computing(job, tmp_path / "calls.txt", block)
    assert job.result() == 42
    assert make(tmp_path, None, x=21, block_flag=str(block)).infra.status() == "completed"


class CallsCounted(pydantic.BaseModel):
    """A task computing a Counted task (its sub-computation) inside its own job."""

    x: int = 1
    log: str
    block_flag: str = ""
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        inner = Counted(
            x=self.x, log=self.log, block_flag=self.block_flag, infra={"folder": self.infra.folder}
        )
        return inner.process() + 1


@pytest.mark.timeout(120)
def test_a_task_computed_inside_a_job_told_to_stop_keeps_its_result(tmp_path: Path) -> None:
    """The withdrawal check looked for the job's record in the folder of any task the job
    computed: a task computed inside it (never recorded there) was refused, and the job
    ended without a result."""
    block = tmp_path / "block-flag"
    block.touch()
    outer = CallsCounted(
        x=4,
        log=str(tmp_path / "calls.txt"),
        block_flag=str(block),
        infra={"folder": tmp_path / "cache", "cluster": "local"},
    )
    job = outer.infra.job()
    _sigterm_while_computing(job, tmp_path / "calls.txt", block)  # (in the inner task)
    assert job.result() == 9
    assert make(tmp_path, None, x=4, block_flag=str(block)).infra.status() == "completed"


@pytest.mark.timeout(120)
def test_clear_job_withdraws_a_local_job_whose_method_catches_the_interrupt(
    tmp_path: Path,
) -> None:
    """A local job is cancelled by SIGINT: a method that catches it and returns stored its
    result after clear_job() (the config read "completed" from the withdrawn job)."""
    log, block = tmp_path / "calls.txt", tmp_path / "block-flag"
    block.touch()
    infra = {"folder": tmp_path / "cache", "cluster": "local"}
    task = Stubborn(log=str(log), block_flag=str(block), infra=infra)
    job = task.infra.job()
    _wait_for(lambda: calls(log) == ["start"])

    def unblock() -> None:  # (it returns then, before the SIGKILL a second after the interrupt)
        _wait_for(lambda: "caught" in calls(log))
        block.unlink()

    unblocking = threading.Thread(target=unblock)
    unblocking.start()
    task.infra.clear_job()
    unblocking.join()
    # (status() said "running" while the withdrawn job's process lived on: clear_job()
    # waits for it, a moment; a probe)
    assert task.infra.status() == "not submitted"
    _wait_for(job.done)
    fresh = Stubborn(log=str(log), block_flag=str(block), infra=infra)
    assert fresh.infra.status() == "not submitted"
    assert "its outcome is not stored" in (job.stderr() or "")


@pytest.mark.timeout(120)
def test_a_cancelled_local_job_is_said_cancelled(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """SPEC: a cancelled job is "failed" with an error saying so (it said "ended without
    writing its result", followed by the job's KeyboardInterrupt traceback). Its traceback
    stays in the job's log (submitit's controller printed its own in the caller's
    terminal)."""
    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    task = make(tmp_path, "local", x=7, block_flag=str(block))
    job = task.infra.job()
    _wait_for(lambda: len(calls(log)) == 1)  # computing in the job
    job.cancel()
    _wait_for(lambda: task.infra.status() == "failed")
    with pytest.raises(exca.graph.errors.JobFailedError, match=r"local job \d+ was cancelled"):
        job.result()
    _wait_for(lambda: job.handle.job._process.poll() is not None)  # (the controller ended)
    assert "KeyboardInterrupt" not in capfd.readouterr().err
    assert "KeyboardInterrupt" in (job.stderr() or "")
    with pytest.raises(exca.graph.errors.JobFailedError, match="was cancelled") as info:
        make(tmp_path, "local", x=7, block_flag=str(block)).process()  # a new instance
    assert "Traceback" not in str(info.value)


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (Linux's /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (signum - 1) & 1)


@pytest.mark.timeout(120)
def test_a_local_job_cancelled_while_its_controller_starts_prints_no_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """cancel() (or a Ctrl-C, which cancels) right after a local submission, while the
    job's controller was still starting (python's own start, its imports): it printed a
    KeyboardInterrupt traceback in the submitter's terminal, the controller's inherited
    stderr (22 of 36 cancellations 2-24 ms after job() returned). Here the controller's
    process is held before it runs a line, until the cancellation's SIGINT was sent."""
    held: list[int] = []

    def hold(process: tp.Any) -> None:  # (its stdin, kept open here: it waits)
        held.append(os.dup(process.stdin.fileno()))
        # (once python set its SIGINT handler: earlier, SIGINT's default action ends it)
        _wait_for(lambda: _catches(process.pid, signal.SIGINT), timeout=30)

    controllers = hook_controller_starts(monkeypatch, started=hold)
    task = make(tmp_path, "local", x=7)
    job = task.infra.job()
    job.cancel()  # (its SIGINT: the controller has not run a line yet)
    os.close(held.pop())  # (it starts)
    controller = job.handle.job._process
    assert controller.wait(timeout=30) == -signal.SIGINT
    assert controllers == [controller.pid]  # (the hook held it)
    with pytest.raises(JobFailedError, match=r"local job \d+ was cancelled"):
        job.result()
    assert task.infra.status() == "failed"
    assert calls(tmp_path / "calls.txt") == []  # (its task never started)
    assert "KeyboardInterrupt" not in capfd.readouterr().err


class SlowToExit(pydantic.BaseModel):
    """Blocks while the file `block_flag` exists; its process then takes 5 s to exit."""

    log: str
    block_flag: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        atexit.register(time.sleep, 5)  # (a slow wind-down: cleanup, a busy machine)
        append(self.log, "started")
        while Path(self.block_flag).exists():
            time.sleep(0.05)
        return 1


@pytest.mark.timeout(120)
def test_a_cancelled_local_job_killed_while_winding_down_is_said_cancelled(
    tmp_path: Path,
) -> None:
    """cancel() sends SIGINT, then SIGKILL to a job still alive a second later. A job
    slow to exit after its KeyboardInterrupt (on a loaded machine, in CI) was then said
    "killed by SIGKILL: out of memory, or killed by hand" by every later call: the line
    its controller writes after the traceback hid the interrupt from them."""
    block = tmp_path / "block-flag"
    block.touch()
    infra = {"folder": tmp_path / "cache", "cluster": "local"}
    task = SlowToExit(log=str(tmp_path / "calls.txt"), block_flag=str(block), infra=infra)
    job = task.infra.job()
    _wait_for(lambda: calls(tmp_path / "calls.txt") == ["started"])
    job.cancel()
    _wait_for(lambda: task.infra.status() == "failed")
    log = job.stderr() or ""
    assert "exca: the job's process was killed by SIGKILL" in log  # (killed, as meant)
    again = SlowToExit(log=str(tmp_path / "calls.txt"), block_flag=str(block), infra=infra)
    with pytest.raises(JobFailedError, match=r"local job \d+ was cancelled") as info:
        again.process()  # (a new instance: reads the job's log)
    assert "out of memory" not in str(info.value)


@pytest.mark.timeout(120)
def test_a_retry_job_cancelled_by_its_user_does_not_say_it_retried(tmp_path: Path) -> None:
    """A job() in mode retry stopped with its own cancel(): its result() said "this call
    in mode retry retried it already", though nothing was retried (a review)."""
    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    task = make(tmp_path, "local", x=9, block_flag=str(block), infra={"mode": "retry"})
    job = task.infra.job()
    _wait_for(lambda: len(calls(log)) == 1)  # computing in the job
    job.cancel()
    with pytest.raises(JobFailedError, match=r"was cancelled") as info:
        job.result()
    assert "retried it already" not in str(info.value)
    assert "use mode='retry' to recompute" in str(info.value)


@pytest.mark.timeout(120)
def test_a_waiter_follows_a_resubmission_instead_of_caching_a_failure(
    tmp_path: Path, short_result_wait: None
) -> None:
    """One instance waits for the job another submitted; the submitter cancels it and
    submits again (clear_job + job, e.g. for other resources). The cancelled job is not
    the config's failure: the waiter waits for the new job; nobody caches an error."""
    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    submitter = make(tmp_path, "local", x=7, block_flag=str(block))
    first = submitter.infra.job()
    _wait_for(lambda: len(calls(log)) == 1)  # computing in the first job
    waiter = make(tmp_path, "local", x=7, block_flag=str(block))
    thread, out = _in_thread(waiter.process)
    thread.join(timeout=1.0)
    assert thread.is_alive()  # waiting for the first job
    submitter.infra.clear_job()  # cancels it
    _wait_for(lambda: exca.storage.process.process_start_time(int(first.job_id)) is None)
    again = make(tmp_path, "local", x=7, block_flag=str(block)).infra.job()
    assert again.job_id != first.job_id
    _wait_for(lambda: len(calls(log)) == 2)  # computing in the new job
    block.unlink()
    thread.join(timeout=60)
    assert out == [14]
    assert again.result() == 14
    assert make(tmp_path, None, x=7, block_flag=str(block)).infra.status() == "completed"


def _job_blocked_computing(tmp_path: Path, x: int) -> tuple[Path, Path, tp.Any, tp.Any]:
    """A local job of config ``x`` computing, held there while the returned flag exists:
    (call log, flag, config, job)."""
    log, block = tmp_path / "calls.txt", tmp_path / "block-flag"
    block.touch()
    obj = make(tmp_path, "local", x=x, block_flag=str(block))
    job = obj.infra.job()
    _wait_for(lambda: len(calls(log)) == 1)  # computing in the job's worker
    return log, block, obj, job


@pytest.mark.timeout(120)
def test_a_call_following_a_job_withdrawn_by_its_submitter_computes_it(tmp_path: Path) -> None:
    """A call waits for another call's job, which its submitter withdraws (Ctrl-C, or
    clear_job()) with no new job: the waiting call computes the config itself (it raised
    "withdrawn"; its own job cancelled from elsewhere still does)."""
    log, block, submitter, first = _job_blocked_computing(tmp_path, x=9)
    waiter = make(tmp_path, "local", x=9, block_flag=str(block))
    thread, out = _in_thread(waiter.process)
    reader = make(tmp_path, None, x=9, block_flag=str(block), infra={"mode": "read-only"})
    reading, read = _in_thread(reader.process)
    for followed in (thread, reading):
        followed.join(timeout=1.0)
        assert followed.is_alive()  # following the submitter's job
    submitter.infra.clear_job()
    _wait_for(lambda: exca.storage.process.process_start_time(int(first.job_id)) is None)
    block.unlink()  # (the waiter's own job computes then)
    thread.join(timeout=60)
    reading.join(timeout=60)
    assert out == [18]
    assert len(calls(log)) == 2
    # (read-only never computes: it says the job ended without a result)
    assert len(read) == 1 and isinstance(read[0], RuntimeError), read
    assert "read-only and missing" in str(read[0]) and first.job_id in str(read[0])
    assert make(tmp_path, None, x=9, block_flag=str(block)).infra.status() == "completed"


@pytest.mark.timeout(120)
def test_a_running_local_job_stays_running_when_the_wall_clock_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process's start time read from /proc is boot time + ticks, and the boot time
    /proc gives moves with steps of the wall clock (a VM's clock: seconds at a time):
    a running local job then looked like a later process reusing its pid, i.e. dead (its
    call raised "ended without writing its result", or another computed it again). Its
    record holds its start in ticks since boot, which no clock step moves."""
    from exca.storage import process

    log, block, task, _ = _job_blocked_computing(tmp_path, x=13)
    record = exca.graph.registry.latest(task.infra.uid_folder())
    assert record is not None and exca.graph.registry.is_active(record)
    real = process._boot_time()
    monkeypatch.setattr(process, "_boot_time", lambda: real + 30.0)  # (a step of 30 s)
    assert exca.graph.registry.is_active(record)
    block.unlink()
    assert make(tmp_path, "local", x=13, block_flag=str(block)).process() == 26
    assert len(calls(log)) == 1
    _wait_for(lambda: not exca.graph.registry.is_active(record))  # (and it ends)


@pytest.mark.timeout(120)
def test_a_job_cleared_by_another_instance_is_not_cached_as_failed(
    tmp_path: Path, short_result_wait: None
) -> None:
    """clear_job() from another instance cancels the job a call is waiting for: that call
    fails (it is not submitted again), and the next call computes (no cached failure)."""
    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    caller = make(tmp_path, "local", x=8, block_flag=str(block))
    thread, out = _in_thread(caller.process)
    _wait_for(lambda: len(calls(log)) == 1)  # computing in its job
    make(tmp_path, "local", x=8, block_flag=str(block)).infra.clear_job()
    thread.join(timeout=60)
    assert len(out) == 1 and isinstance(out[0], JobFailedError), out
    assert "withdrawn" in str(out[0]) and "clear_job" in str(out[0])
    again = make(tmp_path, None, x=8, block_flag=str(block))
    assert again.infra.status() == "not submitted"
    block.unlink()
    assert again.process() == 16
    assert len(calls(log)) == 2


@pytest.mark.timeout(120)
def test_a_debug_job_of_another_process_is_waited_for(tmp_path: Path) -> None:
    """A debug job runs inside the process that submitted it: while that process computes,
    another one sees the task running and waits for it (it used to call it failed)."""
    block = tmp_path / "block-flag"
    block.touch()
    stay = tmp_path / "stay-flag"  # the submitting process lives on while this exists
    stay.touch()
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); from pathlib import Path; "
        "import test_execution as t; "
        "print(t.make(Path(sys.argv[2]), 'debug', x=4, block_flag=sys.argv[3]).process(), "
        "flush=True)\n"
        "while Path(sys.argv[4]).exists(): time.sleep(0.05)"
    )
    args = [str(Path(__file__).parent), str(tmp_path), str(block), str(stay)]
    submitter = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE)
    try:
        _wait_for(lambda: len(calls(tmp_path / "calls.txt")) == 1)  # computing over there
        waiter = make(tmp_path, "debug", x=4, block_flag=str(block))
        assert waiter.infra.status() == "running"
        (entry,) = exca.graph.plan(waiter.process.node()).entries  # the plan says so too
        assert (entry.status, entry.action) == ("running", "wait")
        thread, out = _in_thread(waiter.process)
        thread.join(timeout=1.0)
        assert thread.is_alive()  # waiting
        block.unlink()
        thread.join(timeout=60)
        assert out == [8]  # as soon as it is computed...
        assert submitter.poll() is None  # ...not when the submitting process exits
        stay.unlink()
        assert submitter.communicate(timeout=60)[0].strip().endswith(b"8")
    finally:
        submitter.kill()
        submitter.wait()
    assert len(calls(tmp_path / "calls.txt")) == 1


@pytest.mark.timeout(120)
def test_simultaneous_calls_submit_one_job(tmp_path: Path) -> None:
    """Callers deciding at the same instant (before either job is recorded) submit ONE
    job: the others wait for it (no second allocation waiting on the worker's claim)."""
    barrier = threading.Barrier(3)
    out: list[tp.Any] = []

    def call() -> None:
        task = make(tmp_path, "local", x=11)
        barrier.wait()
        out.append(_result_or_error(task.process))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert out == [22, 22, 22]
    folder = make(tmp_path, None, x=11).infra.uid_folder()
    assert folder is not None
    assert len(list((folder / "jobs").glob("*.json"))) == 1  # one job recorded
    assert len(calls(tmp_path / "calls.txt")) == 1
    assert not list((folder / "claims").glob("*.claim"))  # the submission claims are gone


@pytest.mark.timeout(120)
def test_status_is_running_while_computed_without_a_job(tmp_path: Path) -> None:
    """cluster=None: no job record, but a worker computing it holds its claim."""
    block = tmp_path / "block-flag"
    block.touch()
    task = make(tmp_path, None, x=12, block_flag=str(block))
    thread = threading.Thread(target=task.process)
    thread.start()
    _wait_for(lambda: len(calls(tmp_path / "calls.txt")) == 1)
    other = make(tmp_path, None, x=12, block_flag=str(block))
    assert other.infra.status() == "running"
    (entry,) = exca.graph.plan(other.process.node()).entries
    assert (entry.status, entry.action) == ("running", "wait")
    assert "another process" in entry.reason
    block.unlink()
    thread.join(timeout=60)
    assert other.infra.status() == "completed"
    (entry,) = exca.graph.plan(other.process.node()).entries
    assert (entry.status, entry.action) == ("cached", "reuse")


_HOLDER = """
import os, sys, time
from pathlib import Path
from unittest import mock
from exca.ops import clean
folder, go = Path(sys.argv[1]), Path(sys.argv[2])
rename = os.rename
def rename_on_go(source, target):  # (the hold is on: new claims are kept out)
    print("held", flush=True)
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    rename(source, target)
clean.os.rename = rename_on_go
clean.remove_node_folder(folder, checked=True)
"""


@contextlib.contextmanager
def _held_for_removal(task: tp.Any, go: Path) -> tp.Iterator[subprocess.Popen[str]]:
    """The task's folder, its result cleared, under an `exca clean` removal hold (a
    process holding it until the file ``go`` exists): that process."""
    task.infra.clear_job()  # (the folder is left without a result)
    folder = task.infra.uid_folder()
    assert folder is not None and folder.is_dir()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(folder), str(go)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        go.touch()
        holder.wait(timeout=60)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", [None, "local"])
def test_status_and_job_while_the_folder_is_being_removed(
    tmp_path: Path, cluster: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """While `exca clean` removed a config's folder (its hold keeps new claims out until the
    folder is renamed away), status() said "running" and job() gave a job "#claim#",
    RUNNING: nothing computes it. status() says what the folder holds (no result: "not
    submitted"), and job() waits for the removal, then computes it anew."""
    task = make(tmp_path, cluster, x=14)
    assert task.process() == 28
    go = tmp_path / "go"
    with _held_for_removal(task, go):
        other = make(tmp_path, cluster, x=14)
        assert other.infra.status() == "not submitted"
        (entry,) = exca.graph.plan(other.process.node()).entries
        assert (entry.status, entry.action) == ("missing", "compute")
        assert "being removed or renamed by pid" in entry.reason
        with caplog.at_level(logging.INFO, logger="exca"):
            asked = Background(other.infra.job)
            seen = list(asked.join(timeout=1.0))  # (it waits for the removal: nothing yet)
            go.touch()
            (job,) = asked.join(timeout=90)
        assert not seen, seen
        assert job.job_id != "#claim#" and job.result() == 28
    assert len(calls(tmp_path / "calls.txt")) == 2  # (computed again, once removed)
    assert other.infra.status() == "completed"
    if cluster is None:  # (the wait says what it waits for)
        assert "which is removing or renaming" in caplog.text


@pytest.mark.timeout(120)
def test_read_only_call_meeting_a_removal_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A read-only call of a config whose folder `exca clean` removed (its hold, the only
    claim there) said "being computed right now by another worker": its plan "running,
    wait", its log "computed elsewhere", its error, once removed, "the worker that was
    computing it ended without writing it". Nothing computes it: each says the folder is
    being (was) removed, by whom; the plan says "missing"."""
    task = make(tmp_path, None, x=15)
    assert task.process() == 30
    go = tmp_path / "go"
    with _held_for_removal(task, go) as holder:
        reader = make(tmp_path, None, x=15, infra={"mode": "read-only"})
        (entry,) = exca.graph.plan(reader.process.node()).entries
        assert (entry.status, entry.action) == ("missing", "wait"), entry
        assert f"being removed or renamed by pid {holder.pid}" in entry.reason, entry.reason
        assert "computed" not in entry.reason.replace("computes nothing", ""), entry.reason
        with caplog.at_level(logging.INFO, logger="exca"):
            asked = Background(reader.process)
            seen = list(asked.join(timeout=1.0))  # (it waits for the removal: nothing yet)
            go.touch()
            (error,) = asked.join(timeout=90)
        assert not seen, seen
    assert isinstance(error, RuntimeError), error
    message = str(error)
    assert f"its folder was removed or renamed by pid {holder.pid}" in message, message
    assert "computing" not in message, message
    assert "being removed or renamed" in caplog.text and "computed elsewhere" not in caplog.text
    assert len(calls(tmp_path / "calls.txt")) == 1  # (read-only: never computed again)


@pytest.mark.timeout(120)
def test_a_job_whose_record_could_not_be_written_fails_as_usual(
    tmp_path: Path, short_result_wait: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No record written (e.g. permissions): its job killed is this config's failure
    (cached), not a job "withdrawn" by someone who removed its record."""
    from exca.graph import registry

    def refuse(*args: tp.Any, **kwargs: tp.Any) -> None:
        raise PermissionError("not allowed (simulated)")

    monkeypatch.setattr(registry, "write", refuse)
    block = tmp_path / "block-flag"
    block.touch()
    task = make(tmp_path, "local", x=13, block_flag=str(block))
    thread, out = _in_thread(task.process)
    _wait_for(lambda: len(calls(tmp_path / "calls.txt")) == 1)
    pid = int(calls(tmp_path / "calls.txt")[0].split("pid=")[1])
    kill_tree(pid)
    thread.join(timeout=60)
    assert len(out) == 1 and isinstance(out[0], JobFailedError), out
    assert "withdrawn" not in str(out[0])
    assert make(tmp_path, None, x=13, block_flag=str(block)).infra.status() == "failed"


@pytest.mark.timeout(120)
def test_a_forced_job_in_flight_is_waited_for_not_its_old_result(tmp_path: Path) -> None:
    """While a forced recomputation's job is queued or running, other instances see the
    task running and wait for the new result (they read the old one)."""
    block, offset = tmp_path / "block-flag", tmp_path / "offset"
    flags = {"block_flag": str(block), "offset_file": str(offset)}
    assert make(tmp_path, None, x=14, **flags).process() == 28
    block.touch()
    offset.write_text("1000")  # the recomputation returns 1028
    forced = make(tmp_path, "local", x=14, **flags, infra={"mode": "force"})
    forcing = threading.Thread(target=forced.process)
    forcing.start()
    _wait_for(lambda: len(calls(tmp_path / "calls.txt")) == 2)  # recomputing in its job
    other = make(tmp_path, None, x=14, **flags)
    assert other.infra.status() == "running"
    reader, out = _in_thread(other.process)
    reader.join(timeout=1.0)
    assert reader.is_alive()  # waiting for the forced job
    block.unlink()
    reader.join(timeout=60)
    forcing.join(timeout=60)
    assert out == [1028]  # (the new result, not the old 28)
    assert len(calls(tmp_path / "calls.txt")) == 2


@pytest.mark.timeout(120)
def test_the_plan_of_a_forced_task_whose_job_runs_says_it_computes_again(
    tmp_path: Path,
) -> None:
    block = tmp_path / "block-flag"
    block.touch()
    make(tmp_path, "local", x=15, block_flag=str(block)).infra.job()
    _wait_for(lambda: len(calls(tmp_path / "calls.txt")) == 1)  # computing in its job
    forced = make(tmp_path, "local", x=15, block_flag=str(block), infra={"mode": "force"})
    (entry,) = exca.graph.plan(forced.process.node()).entries
    assert (entry.status, entry.action) == ("running", "wait")
    assert "then computed again once it ends (mode force)" in entry.reason
    block.unlink()


def _in_thread(func: tp.Callable[[], tp.Any]) -> tuple[threading.Thread, list[tp.Any]]:
    """Call func in a started thread; the list gets its result, or the exception raised."""
    out: list[tp.Any] = []
    thread = threading.Thread(target=lambda: out.append(_result_or_error(func)))
    thread.start()
    return thread, out


def _result_or_error(func: tp.Callable[[], tp.Any]) -> tp.Any:
    try:
        return func()
    except Exception as error:
        return error


def test_a_reused_pid_is_not_a_running_local_job(tmp_path: Path) -> None:
    from exca.graph import registry

    task = make(tmp_path, "local", x=6)
    folder = task.infra.uid_folder()
    assert folder is not None
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # a job recorded an hour ago, whose pid is now this unrelated process
        record = registry.JobRecord(
            job_id=str(stranger.pid),
            cluster="local",
            logs=str(tmp_path / "logs"),
            submitted=time.time() - 3600,
            host=exca.storage.process.hostname(),
        )
        registry.write(folder, record, link=True)
        assert task.infra.status() == "failed"  # ended without a result, not "running"
        task.infra.clear_job()
        time.sleep(0.2)
        assert stranger.poll() is None  # not killed
    finally:
        stranger.kill()
        stranger.wait()


# --- classes of __main__ -------------------------------------------------------------------
MAIN_SCRIPT = """
import os
import sys
import typing as tp

import pydantic

import exca


class MainTask(pydantic.BaseModel):
    x: int = 1
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> tuple[int, int]:
        return self.x * 3, os.getpid()


class MainMap(pydantic.BaseModel):
    factor: int = 2
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[tuple[int, int]]:
        for item in items:
            yield item * self.factor, os.getpid()


if __name__ == "__main__":
    folder = sys.argv[1]
    task = MainTask(x=4, infra={"folder": folder, "cluster": "local"})
    value, pid = task.process()
    assert value == 12, value
    assert pid != os.getpid(), "expected a subprocess"
    assert MainTask(x=4, infra={"folder": folder}).process()[0] == 12
    mapper = MainMap(factor=3, infra={"folder": folder, "cluster": "processpool"})
    out = list(mapper.process(list(range(6))))
    assert [v for v, _ in out] == [0, 3, 6, 9, 12, 15], out
    assert any(p != os.getpid() for _, p in out), "expected pool processes"
    # a bound method pickles (standard pickle: a class of __main__ by name), e.g. to
    # hand it to a process pool (it failed: "not the same object as __main__.MainTask...")
    import concurrent.futures
    import pickle

    assert pickle.loads(pickle.dumps(task.process))()[0] == 12
    assert [v for v, _ in pickle.loads(pickle.dumps(mapper.process))([1])] == [3]
    with concurrent.futures.ProcessPoolExecutor(1) as pool:
        assert pool.submit(MainTask(x=5, infra={"folder": folder}).process).result()[0] == 15
    print("MAIN-OK")
"""


def run_main_script(tmp_path: Path, code: str, *args: str) -> None:
    """Run code as a script (its classes and functions live in __main__); it prints
    MAIN-OK when everything went right."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(exca.__file__).parents[1])  # only exca, not the tests
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MAIN-OK" in proc.stdout


@pytest.mark.timeout(120)
def test_class_defined_in_main(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    run_main_script(tmp_path, MAIN_SCRIPT, str(cache))


MAIN_RESULT_SCRIPT = """
import dataclasses, enum, sys, typing as tp
import pydantic, exca


class Kind(enum.Enum):
    A = "a"


@dataclasses.dataclass
class Res:
    x: int


class Task(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def get(self) -> tp.Any:
        return {"kind": Kind.A, "res": Res(3)}


class Mapper(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def get(self, items: list[int]) -> tp.Iterator[tp.Any]:
        for i in items:
            yield (Kind.A, Res(i))


if __name__ == "__main__":
    infra = {"folder": sys.argv[1], "cluster": "local"}
    out = Task(infra=infra).get()
    assert out["kind"] is Kind.A and type(out["res"]) is Res, out
    kind, res = list(Mapper(infra=infra).get([4]))[0]
    assert kind is Kind.A and type(res) is Res and res.x == 4, (kind, res)
    print("MAIN-OK")
"""


@pytest.mark.timeout(120)
def test_results_holding_classes_of_main_read_back_as_them_in_a_new_run(tmp_path: Path) -> None:
    """A job's result holding an Enum / dataclass of the script: read by a new run of the
    script (a cache hit), it held copies of the classes made by cloudpickle (in the job,
    __main__ is submitit's: not found by name), neither equal nor instances of them."""
    cache = tmp_path / "cache"
    cache.mkdir()
    run_main_script(tmp_path, MAIN_RESULT_SCRIPT, str(cache))  # computed in jobs
    run_main_script(tmp_path, MAIN_RESULT_SCRIPT, str(cache))  # read back


PICKLED_JOB_SCRIPT = """
import pickle, subprocess, sys
import pydantic, exca


class Train(pydantic.BaseModel):
    x: int = 0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> int:
        return 2 * self.x


if __name__ == "__main__":
    for cluster in (None, "local"):
        job = Train(x=3, infra={"folder": sys.argv[1], "cluster": cluster}).infra.job()
        again = pickle.loads(pickle.dumps(job))  # (plain pickle, as submitit's jobs allow)
        assert (again.job_id, again.result()) == (job.job_id, 6), again
    print("MAIN-OK")
"""


@pytest.mark.timeout(120)
def test_a_job_of_a_class_of_main_pickles(tmp_path: Path) -> None:
    """pickle.dumps(job) failed for a class of a script: "Can't pickle <function
    Train.fit>: it's not the same object as __main__.Train.fit"."""
    cache = tmp_path / "cache"
    cache.mkdir()
    run_main_script(tmp_path, PICKLED_JOB_SCRIPT, str(cache))


UNPICKLABLE_GLOBAL_SCRIPT = """
import sys, threading
import typing as tp
import pydantic, exca

LOCK = threading.Lock()


class Exp(pydantic.BaseModel):
    lr: float = 0.1
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def train(self) -> float:
        with LOCK:
            return self.lr


def make():  # (a lock taken from the function defining the class: its closure)
    lock = threading.Lock()

    class Local(pydantic.BaseModel):
        infra: exca.TaskInfra = exca.TaskInfra(version="1")

        @infra.apply
        def train(self) -> int:
            with lock:
                return 1

    return Local


class WithClassVar(pydantic.BaseModel):
    LOCK: tp.ClassVar[tp.Any] = threading.Lock()
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def train(self) -> int:
        return 1


if __name__ == "__main__":
    try:
        Exp(infra={"folder": sys.argv[1], "cluster": "local"}).train()
    except TypeError as error:
        assert "the global 'LOCK' (lock) that Exp.train uses cannot be pickled" in str(error)
    else:
        raise AssertionError("sent")
    # (both were said to be in the config, which holds nothing of them: a probe)
    try:
        make()(infra={"folder": sys.argv[1], "cluster": "local"}).train()
    except TypeError as error:
        assert "the variable 'lock' (lock) that make.<locals>.Local.train takes" in str(error)
    else:
        raise AssertionError("sent")
    try:
        WithClassVar(infra={"folder": sys.argv[1], "cluster": "local"}).train()
    except TypeError as error:
        assert "the class attribute WithClassVar.LOCK (lock) cannot be pickled" in str(error)
    else:
        raise AssertionError("sent")
    print("MAIN-OK")
"""


@pytest.mark.timeout(120)
def test_an_unpicklable_global_of_a_main_method_is_named(tmp_path: Path) -> None:
    """The config holds a float; the script's class goes by value with the globals its
    method uses: the error blamed the config."""
    cache = tmp_path / "cache"
    cache.mkdir()
    run_main_script(tmp_path, UNPICKLABLE_GLOBAL_SCRIPT, str(cache))


UNPICKLABLE_CLASS_SCRIPT = """
import sys, threading
import typing as tp
import pydantic, exca


class Parent(pydantic.BaseModel):
    def describe(self) -> str:
        return "x"


class WithSuper(Parent):  # (super(): the method's closure holds the class, as __class__)
    LOCK: tp.ClassVar[tp.Any] = threading.Lock()
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def train(self) -> str:
        return super().describe()


def make():  # (the method names its class: the closure holds it)
    class Local(pydantic.BaseModel):
        LOCK: tp.ClassVar[tp.Any] = threading.Lock()
        infra: exca.TaskInfra = exca.TaskInfra(version="1")

        @infra.apply
        def train(self) -> int:
            return isinstance(self, Local)

    return Local


def make_with_empty_cell():  # (a_later: a variable assigned after the class, never)
    lock = threading.Lock()

    class Empty(pydantic.BaseModel):
        infra: exca.TaskInfra = exca.TaskInfra(version="1")

        @infra.apply
        def train(self) -> int:
            with lock:
                return a_later

    return Empty
    a_later = 1


class Data(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    CACHE: tp.ClassVar[tp.Any] = threading.Lock()
    path: str = "x"


class Exp(pydantic.BaseModel):
    data: Data = Data()
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def train(self) -> str:
        return self.data.path


def message(config) -> str:
    try:
        config(infra={"folder": sys.argv[1], "cluster": "local"}).train()
    except TypeError as error:
        return str(error)
    raise AssertionError("sent")


if __name__ == "__main__":
    error = message(WithSuper)  # (it blamed the variable '__class__' (ModelMetaclass))
    assert "the class attribute WithSuper.LOCK (lock) cannot be pickled" in error, error
    error = message(make())  # (it blamed the variable 'Local')
    assert "class attribute make.<locals>.Local.LOCK (lock) cannot be pickled" in error, error
    assert "defined in a function" in error, error
    error = message(make_with_empty_cell())  # (a ValueError reading the empty cell)
    assert "the variable 'lock' (lock) that make_with_empty_cell" in error, error
    error = message(Exp)  # (it blamed the config's 'data', which holds a path)
    assert "class attribute Data.CACHE (lock) of the config's 'data' cannot" in error, error
    print("MAIN-OK")
"""


@pytest.mark.timeout(120)
def test_an_unpicklable_attribute_of_a_main_class_is_named(tmp_path: Path) -> None:
    """A class attribute of a script's class (sent by value) that cannot be pickled is
    named, when the method's closure holds the class (super(), or a class naming itself)
    and when the class is that of a sub-config (the variable '__class__', or the config's
    'data' holding a path, was blamed); an empty closure cell is skipped."""
    cache = tmp_path / "cache"
    cache.mkdir()
    run_main_script(tmp_path, UNPICKLABLE_CLASS_SCRIPT, str(cache))


LIBRARY_MODULE = """
import typing as tp

import pydantic

import exca


class Train(pydantic.BaseModel):
    layers: int = 2
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> int:
        return 10 * self.layers


class Embed(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        yield from items
"""


def _module_of_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str = LIBRARY_MODULE
) -> tp.Any:
    """The module ``name`` written from ``source`` in tmp_path/code and imported from
    there: on this process's sys.path only (as a notebook's sys.path.insert), not on the
    PYTHONPATH its jobs get."""
    import importlib

    code = tmp_path / "code"
    code.mkdir()
    (code / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(code))
    return importlib.import_module(name)


SUBCLASS_IN_MAIN_SCRIPT = """
import sys

import library


class Big(library.Train):  # (infra not overridden)
    extra: int = 0


class Embed2(library.Embed):
    offset: int = 0


if __name__ == "__main__":
    folder = sys.argv[1]
    assert Big(layers=3, extra=1, infra={"folder": folder, "cluster": "local"}).fit() == 30
    mapper = Embed2(offset=1, infra={"folder": folder, "cluster": "local"})
    assert list(mapper.process([1, 2, 3])) == [1, 2, 3]
    print("MAIN-OK")
"""


@pytest.mark.timeout(120)
def test_subclass_defined_in_main_of_a_library_class(tmp_path: Path) -> None:
    """A script subclasses a config class of an importable module without overriding
    its infra: its jobs run (they failed: "Big.infra overrides the infra that
    Train.fit is decorated with", the class rebuilt in the job holding a copy of it)."""
    (tmp_path / "library.py").write_text(textwrap.dedent(LIBRARY_MODULE))
    cache = tmp_path / "cache"
    cache.mkdir()
    run_main_script(tmp_path, SUBCLASS_IN_MAIN_SCRIPT, str(cache))


@pytest.mark.timeout(120)
def test_a_job_that_cannot_import_the_config_module_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config's module is importable here (sys.path set by this process) but not in
    the job: the error says so, with the missing module (it said "ended with state
    FINISHED without writing its result", the cause deep in submitit's traceback)."""
    module = _module_of_this_process(tmp_path, monkeypatch, "hidden_module_27")
    try:
        task = module.Train(infra={"folder": tmp_path / "cache", "cluster": "local"})
        with pytest.raises(JobFailedError, match="could not load what it had to run") as info:
            task.fit()
        assert "No module named 'hidden_module_27'" in str(info.value)
        assert "workdir.copied" in str(info.value)
    finally:
        sys.modules.pop("hidden_module_27", None)


@pytest.mark.timeout(180)
def test_an_array_whose_jobs_cannot_import_the_config_module_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job array (local) of configs whose module raises when a job imports it (an import
    needing a display, say): each config's error said "local job N failed: RuntimeError:
    ...", as if the method had raised, where a single task's job names the load that
    failed (an array's jobs are followed through their records, which did not look for
    it). They now say that the job could not load what it had to run, and why; nothing
    is cached (the method never ran: see
    test_a_job_whose_module_raises_at_import_caches_no_failure), so each is "not
    submitted" again."""
    source = textwrap.dedent(LIBRARY_MODULE) + textwrap.dedent(
        """
        import os

        if os.environ.get("SUBMITIT_EXECUTOR"):  # (in a job's process only)
            raise RuntimeError("no display in jobs")
        """
    )
    module, _ = _import_module_file(tmp_path, monkeypatch, "hidden_module_36", source)
    try:
        base = module.Train(infra={"folder": tmp_path / "cache", "cluster": "local"})
        with base.infra.job_array() as array:
            array.extend(base.infra.clone_obj(layers=n) for n in (3, 4))
        for task in array:
            with pytest.raises(JobFailedError) as info:
                task.infra.job().result()
            said = str(info.value)
            assert "could not load what it had to run (RuntimeError: no display in jobs)" in said
            assert "_log.err" in said, said
            assert task.infra.status() == "not submitted"
    finally:
        sys.modules.pop("hidden_module_36", None)


@pytest.mark.timeout(180)
def test_a_job_whose_module_raises_at_import_caches_no_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The config's module raises at its import in the job only (code run at import,
    guarded by a file or an environment variable only jobs have: a display, a GPU, a
    mounted disk): the method never ran, yet its failure was cached (status "failed",
    every call re-raising it until mode='retry', though the job's environment was fixed),
    while a module missing there (an ImportError) is refused, nothing cached. Now the
    same: the error names the module that raised and says it happened at its import, the
    status is "not submitted", and once the import succeeds in jobs the next call
    computes it. The method's own errors are still cached."""
    flag = tmp_path / "no_display"
    source = textwrap.dedent(LIBRARY_MODULE) + textwrap.dedent(
        f"""
        import os


        class Broken(pydantic.BaseModel):
            infra: exca.TaskInfra = exca.TaskInfra(version="1")

            @infra.apply
            def fit(self) -> int:
                raise RuntimeError("the method's own error")


        if os.environ.get("SUBMITIT_EXECUTOR") and os.path.exists({str(flag)!r}):
            raise RuntimeError("no display in jobs")
        """
    )
    module, path = _import_module_file(tmp_path, monkeypatch, "hidden_module_55", source)
    flag.touch()
    try:
        infra = {"folder": tmp_path / "cache", "cluster": "local"}
        task = module.Train(infra=infra)
        for _ in range(2):  # (nothing cached: the second call submits it again)
            with pytest.raises(JobFailedError) as info:
                task.fit()
            said = _refused_load(task, info)
            assert "could not load what it had to run (RuntimeError: no display in jobs)" in said
            raised = f"the module hidden_module_55 ({path}) raised it while the job imported it"
            assert raised in said, said
            assert "nothing of the method ran" in said, said
        flag.unlink()  # (the jobs' environment fixed)
        _computed_then_method_error_cached(module, infra, "the method's own error")
    finally:
        sys.modules.pop("hidden_module_55", None)


@pytest.mark.timeout(180)
def test_an_array_submitted_again_after_its_jobs_could_not_load_it_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A job array whose jobs cannot import the config's module (on this process's
    sys.path only): each job refuses its config, nothing is cached and the status is
    "not submitted" again, as for a single task; but an array does not wait for its
    jobs, so nobody was told, and the same array run again was refused again, silently.
    Submitted again, it now warns, naming how many configs, a job, and why."""
    module = _module_of_this_process(tmp_path, monkeypatch, "hidden_module_37")
    cannot = "ConfigImportError: "

    def refused(tasks: list[tp.Any]) -> bool:  # (their jobs ended, their logs say why)
        records = [exca.graph.registry.read_all(t.infra.uid_folder(), refused=True) for t in tasks]
        return all(
            r and r[-1].refused and r[-1].stderr.exists() and cannot in r[-1].stderr.read_text()
            for r in records
        )

    try:
        base = module.Train(infra={"folder": tmp_path / "cache", "cluster": "local"})
        with caplog.at_level(logging.WARNING, logger="exca"):
            for attempt in range(2):
                with base.infra.job_array() as array:
                    array.extend(base.infra.clone_obj(layers=n) for n in (3, 4))
                said = [r.getMessage() for r in caplog.records if "Job array" in r.message]
                if not attempt:
                    assert not said, said  # (never refused before)
                else:
                    (message,) = said
                    assert "the last job of 2 config(s) submitted now could not load it" in message
                    assert "No module named 'hidden_module_37'" in message, message
                wait_until(lambda: refused(array), timeout=60)
                assert [t.infra.status() for t in array] == ["not submitted"] * 2
    finally:
        sys.modules.pop("hidden_module_37", None)


@pytest.mark.timeout(180)
def test_a_job_that_cannot_import_its_config_caches_no_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that cannot import its config's module (the jobs' PYTHONPATH lacks it) is an
    environment problem, not the config's outcome: nothing is cached (it was: once the
    import path fixed, the default mode re-raised it until mode='retry'); its error says
    which module, where (host, python), and what to do. An ImportError raised by the
    method itself is cached as any error of the method."""
    source = textwrap.dedent(LIBRARY_MODULE) + textwrap.dedent(
        """
        class Broken(pydantic.BaseModel):
            infra: exca.TaskInfra = exca.TaskInfra(version="1")

            @infra.apply
            def fit(self) -> int:
                import no_such_module_29  # noqa

                return 1
        """
    )
    module = _module_of_this_process(tmp_path, monkeypatch, "hidden_module_29", source)
    try:
        infra = {"folder": tmp_path / "cache", "cluster": "local"}
        task = module.Train(infra=infra)
        with pytest.raises(JobFailedError, match="could not load what it had to run") as info:
            task.fit()
        said = _refused_load(task, info)
        assert "No module named 'hidden_module_29'" in said
        assert "PYTHONPATH" in said and "workdir.copied" in said
        monkeypatch.setenv(
            "PYTHONPATH", f"{tmp_path / 'code'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
        )
        _computed_then_method_error_cached(module, infra, "no_such_module_29")
    finally:
        sys.modules.pop("hidden_module_29", None)


@pytest.mark.timeout(180)
def test_jobs_that_cannot_import_the_config_module_say_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notebook's sys.path.insert(0, "mydir") and classes from a module there (a probe):
    every job of the call refuses its config for the same reason, and the call printed
    that paragraph (naming PYTHONPATH) once per job: a map's 3 chunk jobs, a graph run's
    3 tasks. It is said once now, the other jobs named after it."""
    module = _module_of_this_process(tmp_path, monkeypatch, "hidden_module_31")
    cannot = "could not load what it had to run"
    try:
        infra = {"folder": tmp_path / "cache", "cluster": "local"}
        chunks = {**infra, "max_jobs": 3, "min_samples_per_job": 1}
        with pytest.raises(JobFailedError, match=cannot) as info:
            list(module.Embed(infra=chunks).process([1, 2, 3]))
        said = str(info.value)
        assert said.count(cannot) == 1 and said.count("PYTHONPATH") == 1, said
        assert re.search(r"; and so in 2 other jobs: \d+, \d+$", said), said
        nodes = [module.Train(layers=n, infra=infra).fit.node() for n in range(3)]
        with pytest.raises(exca.graph.errors.NodeFailures) as failures:
            exca.graph.run(*nodes)
        said = str(failures.value)
        assert len(failures.value.failures) == 3  # (each node's error, whole, is there)
        assert said.count(cannot) == 1 and said.count("PYTHONPATH") == 1, said
        assert "\n    and so in 2 other node(s): " in said, said
        assert f"{nodes[1].uid} (job " in said and f"{nodes[2].uid} (job " in said, said
    finally:
        sys.modules.pop("hidden_module_31", None)


def test_slurm_jobs_ending_alike_are_said_alike_whatever_slurm_names_them() -> None:
    """Slurm's texts name a job by its steps too: "StepId=12345.batch" (slurmstepd's
    out-of-memory line), "STEP 12345.0" (a step cancelled), "step 12345.batch" (older
    Slurm), "JobId=12345" (scontrol). Jobs ending alike but for these mentions were each
    said whole (their endings differed): a sweep of jobs killed for their memory printed
    each job's log end. These mentions are set aside now, as "JOB 12345" was; a number
    holding the id (a line, a size) still tells jobs apart."""
    from exca.graph.errors import LOG_QUOTE, same_endings

    def ending(job_id: str) -> str:
        log = f"/cache/m.T.f,1/logs/user/{job_id}/{job_id}_0_log.err"
        tail = "\n".join(
            [
                f"slurmstepd: error: Detected 1 oom_kill event in StepId={job_id}.batch. Some "
                "of the step tasks have been OOM Killed.",
                f"slurmstepd: error: *** STEP {job_id}.0 ON node1 CANCELLED AT "
                "2026-12-06T14:00:00 ***",
                f"slurmstepd: error: Detected 1 oom-kill event(s) in step {job_id}.extern cgroup.",
                f"JobId={job_id} JobName=train JobState=OUT_OF_MEMORY Reason=OutOfMemory",
            ]
        )
        return (
            f"job {job_id} ran out of memory (state OUT_OF_MEMORY); its log: {log}{LOG_QUOTE}{tail}"
        )

    alike = [(i, ending(i)) for i in ("12345", "12346", "12347")]
    assert same_endings(alike) == [
        ending("12345").replace(LOG_QUOTE, f"; and so in 2 other jobs: 12346, 12347{LOG_QUOTE}")
    ]
    # (an id inside a longer one is no mention: jobs naming other jobs' steps differ)
    other = [(i, f"job {i} failed: StepId={i}9.batch was cancelled") for i in ("123", "124")]
    assert same_endings(other) == [how for _, how in other]


def test_jobs_are_said_alike_only_when_their_endings_differ_by_their_ids_alone() -> None:
    """Jobs ending alike (chunk jobs, nodes' jobs refusing their config) are said once,
    the others named after the first one: "alike" was the same text once each job's id
    was replaced wherever it appeared, so job 12 exiting with code 12 and job 34 with
    code 34 (or job 5 at line 55, job 6 at line 66) were said alike, the second's
    ending hidden. Only the mentions of a job (after "job ", in its log's path) are set
    aside now."""
    from exca.graph.errors import NodeFailures, same_endings

    def ending(job_id: str, code: int) -> str:
        log = f"/cache/m.T.f,1/logs/user/{job_id}/{job_id}_0_log.err"
        return (
            f"local job {job_id} ended without writing its result: its process exited with "
            f"code {code}; its log: {log}"
        )

    for codes in ({"12": 12, "34": 34}, {"5": 55, "6": 66}):
        endings = [(job_id, ending(job_id, code)) for job_id, code in codes.items()]
        assert same_endings(endings) == [how for _, how in endings]  # (each said)
    alike = [(i, ending(i, 1)) for i in ("5", "6", "1234_1", "1234_10")]
    assert same_endings(alike) == [f"{ending('5', 1)}; and so in 3 other jobs: 6, 1234_1, 1234_10"]

    # nodes whose jobs refused their config: the same, their uids set aside too (a uid
    # inside a longer one is no mention of it)
    def refused(uid: str, job_id: str, why: str) -> JobFailedError:
        return JobFailedError(
            f"{uid} not computed: job {job_id} could not load what it had to run "
            f"(ConfigImportError: {why})"
        )

    uids = ["m.T.f,1/n=1", "m.T.f,1/n=2", "m.T.f,1/n=10"]
    for whys in (
        {"12": "x.py, line 12: invalid syntax", "34": "x.py, line 34: invalid syntax"},
        {"12": "it needs m.T.f,1/n=10", "34": "it needs m.T.f,1/n=20"},
    ):
        failures = {uid: refused(uid, *job) for uid, job in zip(uids, whys.items())}
        said = str(NodeFailures(failures))  # (as the user sees it)
        assert "and so in" not in said and all(why in said for why in whys.values()), said
    said = str(NodeFailures({u: refused(u, j, "x") for u, j in zip(uids, ("12", "34", "56"))}))
    assert said.count("ConfigImportError") == 1, said
    assert "and so in 2 other node(s): m.T.f,1/n=2 (job 34), m.T.f,1/n=10 (job 56)" in said


def _refused_load(task: tp.Any, info: pytest.ExceptionInfo[JobFailedError]) -> str:
    """The error of a job that could not load its config: it names this host and python,
    offers no retry (nothing was cached: a call submits again); the task is not submitted."""
    import socket

    said = str(info.value)
    assert f"host {socket.gethostname()} " in said and sys.executable in said
    assert "mode='retry'" not in said  # (nothing to retry: call again)
    assert task.infra.status() == "not submitted"
    return said


def _computed_then_method_error_cached(
    module: tp.Any, infra: dict[str, tp.Any], match: str
) -> None:
    """Once the job can load it, module.Train is submitted again in the default mode and
    computed; module.Broken's method raises ``match``: its own error, cached."""
    again = module.Train(infra=infra)
    assert again.fit() == 20
    assert again.infra.status() == "completed"
    failing = module.Broken(infra=infra)
    with pytest.raises(Exception, match=match):
        failing.fit()
    assert failing.infra.status() == "failed"
    with pytest.raises(Exception, match=match):
        module.Broken(infra=infra).fit()


def _import_module_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str
) -> tuple[tp.Any, Path]:
    """A module written in tmp_path/code and imported, importable by the jobs too (its
    file read again, not its bytecode, once a test edits it); the module and its file."""
    import importlib

    code = tmp_path / "code"
    code.mkdir()
    path = code / f"{name}.py"
    path.write_text(source)
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.setenv("PYTHONPATH", f"{code}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    return importlib.import_module(name), path


@pytest.mark.timeout(180)
def test_a_job_whose_module_lacks_the_config_class_caches_no_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job whose module no longer has the config's class (renamed or removed in the
    module's file after this process imported it: pickle's AttributeError at loading) is
    refused as a job that cannot import the module: nothing cached (it was cached as the
    config's failure, re-raised until mode='retry'), the error names the class, the host
    and python, and the next call submits it again. An AttributeError raised by the method
    itself is cached as any error of the method."""
    broken = textwrap.dedent(
        """
        class Broken(pydantic.BaseModel):
            infra: exca.TaskInfra = exca.TaskInfra(version="1")

            @infra.apply
            def fit(self) -> int:
                raise AttributeError("module 'x' has no attribute 'MyTask'")
        """
    )
    source = textwrap.dedent(LIBRARY_MODULE) + broken
    module, path = _import_module_file(tmp_path, monkeypatch, "hidden_module_31", source)
    try:
        path.write_text(source.replace("class Train(", "class Trainer("))  # (renamed)
        infra = {"folder": tmp_path / "cache", "cluster": "local"}
        task = module.Train(infra=infra)
        with pytest.raises(JobFailedError, match="could not load what it had to run") as info:
            task.fit()
        said = _refused_load(task, info)
        assert "'Train'" in said and "hidden_module_31" in said
        assert "renamed or removed" in said
        path.write_text(source)  # (the class is back)
        _computed_then_method_error_cached(module, infra, "has no attribute 'MyTask'")
    finally:
        sys.modules.pop("hidden_module_31", None)


NESTED_MODULE = """
import pydantic

import exca


class Parts:
    class Optim(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(extra="forbid")
        lr: float = 0.5


class Fit(pydantic.BaseModel):
    optim: Parts.Optim = Parts.Optim()
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> float:
        return self.optim.lr
"""


@pytest.mark.timeout(180)
def test_a_job_missing_a_nested_class_names_its_module_and_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job whose module lacks a nested class the config holds (Parts.Optim renamed):
    the error names the module and the class by its qualified name (it named the module
    "hidden_module_34.Parts", which is no module, missing "Optim")."""
    source = textwrap.dedent(NESTED_MODULE)
    module, path = _import_module_file(tmp_path, monkeypatch, "hidden_module_34", source)
    try:
        path.write_text(source.replace("Optim", "Optimizer"))  # (renamed in the job's code)
        task = module.Fit(infra={"folder": tmp_path / "cache", "cluster": "local"})
        with pytest.raises(JobFailedError, match="could not load what it had to run") as info:
            task.fit()
        said = str(info.value)
        assert "the module hidden_module_34 has no Parts.Optim there" in said, said
        assert "a version of hidden_module_34 that defines Parts.Optim" in said, said
        assert task.infra.status() == "not submitted"
    finally:
        sys.modules.pop("hidden_module_34", None)


def test_a_pool_inside_a_job_raises_the_import_error_of_a_unit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A unit a pool process cannot import, in a submitit job (its environment tells
    worker.load_unit so): the ImportError, not a placeholder unit run as one."""
    import importlib

    import cloudpickle

    from exca.graph.executors import _run_pickled
    from exca.graph.worker import Unit

    code = tmp_path / "code"
    code.mkdir()
    (code / "hidden_module_30.py").write_text(textwrap.dedent(LIBRARY_MODULE))
    with monkeypatch.context() as patch:
        patch.syspath_prepend(str(code))
        module = importlib.import_module("hidden_module_30")
        task = module.Train(infra={"folder": tmp_path / "cache"})
        payload = cloudpickle.dumps(Unit(task.fit.node()))
    sys.modules.pop("hidden_module_30", None)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    with pytest.raises(ImportError, match="No module named 'hidden_module_30'"):
        _run_pickled(payload)


def test_a_pool_inside_a_job_raises_the_missing_class_of_a_unit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A unit whose config class its module lacks in a pool process, in a submitit job:
    the AttributeError, not a placeholder unit run as one."""

    import cloudpickle

    from exca.graph.executors import _run_pickled
    from exca.graph.worker import Unit

    module = _module_of_this_process(tmp_path, monkeypatch, "hidden_module_32")
    try:
        task = module.Train(infra={"folder": tmp_path / "cache"})
        payload = cloudpickle.dumps(Unit(task.fit.node()))
        monkeypatch.delattr(module, "Train")
        monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
        with pytest.raises(AttributeError, match="'Train' on <module 'hidden_module_32'"):
            _run_pickled(payload)
    finally:
        sys.modules.pop("hidden_module_32", None)


EDITED_MODULE = """
import pydantic

import exca


class Edited(pydantic.BaseModel):
    a: int = 1
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> str:
        return f"a={self.a}"
"""


def _edited_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str
) -> tuple[Path, tp.Any]:
    """A module ``name`` of ``source`` in tmp_path/code, imported here and importable by
    jobs (PYTHONPATH): its file, to edit, and the module (removed from sys.modules by
    the caller)."""
    import importlib

    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    module_file = code / f"{name}.py"
    module_file.write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.setenv("PYTHONPATH", f"{code}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return module_file, importlib.import_module(name)


@pytest.mark.timeout(120)
def test_a_job_refusing_an_edited_class_caches_no_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job whose config's class gained a required field since submission (edited while
    queued: here before the job imported it) refuses it, saying nothing was computed nor
    cached: the next call in the default mode submits it again (the caller cached the
    job's error: status said failed, and the call re-raised it, saying to retry)."""

    module_file, module = _edited_module(tmp_path, monkeypatch, "edited_module_31", EDITED_MODULE)
    try:
        infra = {"folder": tmp_path / "cache", "cluster": "local"}
        # the class the job will import gains a required field ("b")
        module_file.write_text(
            textwrap.dedent(EDITED_MODULE).replace("a: int = 1", "a: int = 1\n    b: int")
        )
        task = module.Edited(infra=infra)
        with pytest.raises(JobFailedError, match="required field") as info:
            task.run()
        assert "Nothing was computed nor cached" in str(info.value)
        assert "mode='retry'" not in str(info.value)  # (nothing to retry: submit it again)
        assert task.infra.status() == "not submitted"
        module_file.write_text(textwrap.dedent(EDITED_MODULE))  # the edit reverted
        again = module.Edited(infra=infra)
        assert again.run() == "a=1"  # submitted again, in the default mode
    finally:
        sys.modules.pop("edited_module_31", None)


@pytest.mark.timeout(120)
def test_the_log_of_a_job_refusing_an_edited_class_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The log of a job that refused its config (its class edited while queued) says why:
    `exca logs` found no job (its record was removed, so that the next call submits it
    again). The record is set aside instead: the status stays "not submitted"."""

    from exca.ops.cli import main

    module_file, module = _edited_module(tmp_path, monkeypatch, "edited_module_32", EDITED_MODULE)
    try:
        infra = {"folder": tmp_path / "cache", "cluster": "local"}
        module_file.write_text(
            textwrap.dedent(EDITED_MODULE).replace("a: int = 1", "a: int = 1\n    b: int")
        )
        task = module.Edited(infra=infra)
        with pytest.raises(JobFailedError, match="required field"):
            task.run()
        folder = task.infra.uid_folder()
        assert task.infra.status() == "not submitted"
        (refused,) = exca.ops.logs(folder)
        assert refused.refused and "ClassChangedError" in refused.stderr()
        capsys.readouterr()
        assert main(["logs", str(folder), "--stderr"]) == 0
        out = capsys.readouterr().out
        assert "ClassChangedError" in out and "refused its config" in out
        cleaning = exca.ops.clean.logs(tmp_path / "cache", older_than_days=0)
        assert refused.stdout_path.parent in [r.path for r in cleaning.removals]  # (not kept)
        module_file.write_text(textwrap.dedent(EDITED_MODULE))  # the edit reverted
        assert module.Edited(infra=infra).run() == "a=1"  # submitted again
        first, second = exca.ops.logs(folder)
        assert first.job_id == refused.job_id and not second.refused
        assert main(["logs", str(folder)]) == 0
        assert "refused" not in capsys.readouterr().out  # (the latest job's log)
    finally:
        sys.modules.pop("edited_module_32", None)


GATED_EDITED_MODULE = """
import os
import time
from pathlib import Path
from unittest import mock

import pydantic

import exca

_CTL = Path(os.environ["EDITED_CTL"])
with open(_CTL / "imports.txt", "a") as _log:  # (each process importing it: a line)
    _log.write("import\\n")
while (_CTL / "gate").exists():  # (a job waiting in the queue, until the gate goes)
    time.sleep(0.05)


class Edited(pydantic.BaseModel):
    a: int = 1
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> str:
        return f"a={self.a}"
"""


class _OnLog(logging.Handler):
    """Calls ``action`` once a log message of exca holds ``words``."""

    def __init__(self, words: str, action: tp.Callable[[], None]) -> None:
        super().__init__()
        self.words, self.action = words, action

    def emit(self, record: logging.LogRecord) -> None:
        if self.words in record.getMessage():
            self.action()


@pytest.mark.timeout(120)
def test_a_follower_of_a_local_job_refusing_an_edited_class_submits_no_other_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call following another call's local job, which then refuses its config (its
    class edited while it was queued): the follower took the job for withdrawn and
    submitted the config again, a job refused again (its config is of the class the job
    refused). It fails now with that job's refusal, nothing cached, nothing submitted."""

    ctl = tmp_path / "ctl"
    ctl.mkdir()
    monkeypatch.setenv("EDITED_CTL", str(ctl))
    module_file, module = _edited_module(
        tmp_path, monkeypatch, "edited_module_33", GATED_EDITED_MODULE
    )
    imports = ctl / "imports.txt"
    handler = _OnLog("computed elsewhere", lambda: (ctl / "gate").unlink(missing_ok=True))
    exca_logger = logging.getLogger("exca")
    try:
        infra = {"folder": tmp_path / "cache", "cluster": "local"}
        module_file.write_text(
            textwrap.dedent(GATED_EDITED_MODULE).replace("a: int = 1", "a: int = 1\n    b: int")
        )
        (ctl / "gate").touch()
        module.Edited(infra=infra).infra.job()  # (another call's job, waiting at the gate)
        wait_until(lambda: len(calls(imports)) == 2)  # (this process, and the job)
        follower = module.Edited(infra=infra)
        exca_logger.addHandler(handler)  # (the gate goes once the follower waits for it)
        with pytest.raises(JobFailedError, match="required field") as info:
            follower.run()
        assert "Nothing was computed nor cached" in str(info.value)
        assert len(calls(imports)) == 2  # (no other job)
        assert follower.infra.status() == "not submitted"
        assert [j.refused for j in exca.ops.logs(follower.infra.uid_folder())] == [True]
    finally:
        exca_logger.removeHandler(handler)
        (ctl / "gate").unlink(missing_ok=True)
        sys.modules.pop("edited_module_33", None)


MAIN_ERRORS_SCRIPT = """
import sys
import typing as tp

import pydantic

import exca


class MyError(Exception):
    pass


class TwoArgsError(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}-{b}")
        self.pair = (a, b)


class Failing(pydantic.BaseModel):
    kind: str = "mine"
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        raise MyError("mine") if self.kind == "mine" else TwoArgsError(1, 2)


class FailingMap(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            if item == 1:
                raise MyError(f"item {item}")
            yield item


def check(cluster: str | None) -> None:
    for kind, error in (("mine", MyError), ("two", TwoArgsError)):
        for _ in range(2):  # computed, then from the cache (a new instance)
            task = Failing(kind=kind, infra={"folder": FOLDER, "cluster": cluster})
            try:
                task.process()
            except error as caught:  # the script's own class, not a stand-in
                if kind == "two":
                    assert caught.pair == (1, 2) and str(caught) == "1-2"
            else:
                raise AssertionError("no error")
    for _ in range(2):
        mapper = FailingMap(infra={"folder": FOLDER, "cluster": cluster})
        try:
            list(mapper.process([0, 1, 2]))
        except MyError as caught:
            assert "item 1" in str(caught)
        else:
            raise AssertionError("no error")


FOLDER = sys.argv[1]
if __name__ == "__main__":
    check(sys.argv[2] if sys.argv[2] != "none" else None)
    print("MAIN-OK")
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", ["local", "none"])
def test_errors_of_classes_defined_in_main_keep_their_type(tmp_path: Path, cluster: str) -> None:
    """An exception class of the user's script, raised in a job, is raised again as that
    class (it was a ComputationError); one whose __init__ takes other arguments than its
    args keeps its type and attributes when read back from the cache; and a new process
    of the same script reads both cached errors as its own classes."""
    cache = tmp_path / "cache"
    run_main_script(tmp_path, MAIN_ERRORS_SCRIPT, str(cache), cluster)
    run_main_script(tmp_path, MAIN_ERRORS_SCRIPT, str(cache), "none")  # all cached now


MAIN_TRACEBACK_SCRIPT = """
import sys
import typing as tp
import pydantic
import exca


def check_x(x: int) -> int:
    raise ValueError(f"bad x {x}")  # RAISED-HERE


class Failing(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return check_x(1)


class FailingMap(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            yield check_x(item)


if __name__ == "__main__":
    line = next(i for i, text in enumerate(open(__file__), 1) if "# RAISED-" + "HERE" in text)
    where = f'File "{__file__}", line {line}, in check_x'
    infra = {"folder": sys.argv[1], "cluster": sys.argv[2]}
    for obj in (Failing(infra=infra), FailingMap(infra={**infra, "cluster": sys.argv[3]})):
        for _ in range(2):  # computed, then read from the cache
            try:
                obj.process() if isinstance(obj, Failing) else list(obj.process([1]))
            except ValueError as error:
                notes = "\\n".join(getattr(error, "__notes__", []))
                assert where in notes and "<dynamic-code>" not in notes, notes
            else:
                raise AssertionError("no error")
    print("MAIN-OK")
"""


@pytest.mark.timeout(120)
def test_job_tracebacks_name_the_file_of_main_code(tmp_path: Path) -> None:
    """Code of a script (or notebook) is pickled by value to jobs and process pools, and
    cloudpickle names it "<dynamic-code>": the traceback of its error in a job said
    `File "<dynamic-code>", line 9, in check_x`. It names the script's file now."""
    run_main_script(
        tmp_path, MAIN_TRACEBACK_SCRIPT, str(tmp_path / "cache"), "local", "processpool"
    )


class RaisesWithALock(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        raise ValueError("bad", threading.Lock())  # (a lock does not pickle)


@pytest.mark.parametrize("cluster", [None, "local"])
def test_an_error_holding_an_unpicklable_value_keeps_its_type(
    tmp_path: Path, cluster: str | None
) -> None:
    """It came back as ComputationError (except ValueError missed it); the value that
    does not pickle is replaced by its repr."""
    infra = {"folder": tmp_path, "cluster": cluster}
    with pytest.raises(ValueError, match="bad"):
        RaisesWithALock(infra=infra).process()
    with pytest.raises(ValueError) as info:  # read back from the cache
        RaisesWithALock(infra=infra).process()
    assert info.value.args[0] == "bad" and "lock" in info.value.args[1]


MAIN_FUNCTIONS_SCRIPT = """
import pickle
import sys

from exca.helpers import with_infra

FOLDER = sys.argv[1]


@with_infra(folder=FOLDER)
def inner(a: int) -> int:
    return a + 1


@with_infra(folder=FOLDER, cluster=sys.argv[2])
def outer(a: int) -> int:
    return inner(a=a) * 10  # a with_infra function of the script, called in the job


if __name__ == "__main__":
    assert outer(a=1) == 20
    assert pickle.loads(pickle.dumps(inner))(a=4) == 5  # plain pickle too
    print("MAIN-OK")
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", ["local", "debug"])
def test_with_infra_functions_defined_in_main(tmp_path: Path, cluster: str) -> None:
    run_main_script(tmp_path, MAIN_FUNCTIONS_SCRIPT, str(tmp_path / "cache"), cluster)


# --- keep_in_ram, force --------------------------------------------------------------------
def test_keep_in_ram(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    task = Listed(log=str(log), infra={"folder": tmp_path / "cache", "keep_in_ram": True})
    first = task.process()
    assert first == [1, 1]
    assert task.process() is first  # from RAM
    assert len(calls(log)) == 1
    # another instance reads the disk cache (equal, not the same object)
    other = Listed(log=str(log), infra={"folder": tmp_path / "cache", "keep_in_ram": True})
    assert other.process() == [1, 1]
    assert other.process() is not first
    assert len(calls(log)) == 1
    # without keep_in_ram, each call reads the disk again (a new object)
    plain = Listed(log=str(log), infra={"folder": tmp_path / "cache"})
    assert plain.process() == plain.process()
    assert plain.process() is not plain.process()
    # RAM only (no folder): computed once per instance
    ram = Listed(x=2, log=str(log), infra={"keep_in_ram": True})
    value = ram.process()
    assert ram.process() is value
    assert len(calls(log)) == 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", [None, "local"])
def test_force_recomputes_once_per_instance(tmp_path: Path, cluster: str | None) -> None:
    log = tmp_path / "calls.txt"
    assert make(tmp_path, cluster, x=6).process() == 12
    assert len(calls(log)) == 1
    forced = make(tmp_path, cluster, x=6, infra={"mode": "force"})
    assert forced.process() == 12
    assert len(calls(log)) == 2
    assert forced.process() == 12  # once per instance
    assert len(calls(log)) == 2
    assert make(tmp_path, cluster, x=6).process() == 12  # the forced result is cached
    assert len(calls(log)) == 2
    # a new forced instance recomputes again
    assert make(tmp_path, cluster, x=6, infra={"mode": "force"}).process() == 12
    assert len(calls(log)) == 3


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", [None, "local"])
def test_threads_of_one_forced_instance_force_it_once(
    tmp_path: Path, cluster: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three threads call one forced instance at once: one computation (with local jobs,
    each thread submitted its own job: 3 computations)."""
    waits = waits_for_others(monkeypatch)
    log = tmp_path / "calls.txt"
    assert make(tmp_path, cluster, x=6).process() == 12
    block = tmp_path / "block-flag"
    block.touch()
    forced = make(tmp_path, cluster, x=6, block_flag=str(block), infra={"mode": "force"})
    out: list[tp.Any] = []
    threads = [threading.Thread(target=lambda: out.append(forced.process())) for _ in range(3)]
    for thread in threads:
        thread.start()
    _wait_for(lambda: len(calls(log)) == 2)  # (the forced computation started)
    # (the other threads are waiting for it, not submitting)
    _wait_for(lambda: waits.count("lock", "claim") == 2 or len(calls(log)) > 2)
    block.unlink()
    for thread in threads:
        thread.join(timeout=60)
    assert out == [12, 12, 12]
    assert len(calls(log)) == 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", [None, "local"])
def test_forced_job_is_followed_and_submitted_once(tmp_path: Path, cluster: str | None) -> None:
    """infra.job() in mode force: its result() is the new one, later job()/calls of the
    instance follow that job instead of submitting again."""
    log = tmp_path / "calls.txt"
    assert make(tmp_path, cluster, x=7).process() == 14
    block = tmp_path / "block-flag"
    if cluster is not None:  # (inline, job() computes before it returns)
        block.touch()
    forced = make(tmp_path, cluster, x=7, block_flag=str(block), infra={"mode": "force"})
    job = forced.infra.job()
    if cluster is not None:  # still computing: not the old result
        assert forced.infra.status() == "running" and not job.done()
        assert forced.infra.job().job_id == job.job_id  # followed, not submitted again
    block.unlink(missing_ok=True)
    assert job.result() == 14
    assert forced.process() == 14 and forced.infra.job().result() == 14
    assert len(calls(log)) == 2


def test_force_recomputes_a_cached_error(tmp_path: Path) -> None:
    flag = tmp_path / "fail-flag"
    flag.touch()
    with pytest.raises(ValueError):
        make(tmp_path, None, fail_flag=str(flag)).process()
    flag.unlink()
    forced = make(tmp_path, None, fail_flag=str(flag), infra={"mode": "force"})
    assert forced.process() == 2
    assert forced.infra.status() == "completed"
    assert len(calls(tmp_path / "calls.txt")) == 2


@pytest.mark.timeout(120)
def test_read_only_waits_for_a_running_job(tmp_path: Path) -> None:
    """mode='read-only' never computes, but a result being computed by a job is not
    missing: the call waits for it (it raised "read-only and missing" while status()
    said "running"); a job that ends without a result leaves it missing (nothing cached
    by the read-only caller), its error saying how that job ended."""
    block = tmp_path / "block-flag"
    block.touch()
    job = make(tmp_path, "local", x=9, block_flag=str(block)).infra.job()
    _wait_for(lambda: len(calls(tmp_path / "calls.txt")) == 1)  # computing in its job
    reader = make(tmp_path, None, x=9, block_flag=str(block), infra={"mode": "read-only"})
    assert reader.infra.status() == "running"
    thread, out = _in_thread(reader.process)
    thread.join(timeout=1.0)
    assert thread.is_alive()  # waiting for the job
    block.unlink()
    thread.join(timeout=60)
    assert out == [18] and job.result() == 18
    assert len(calls(tmp_path / "calls.txt")) == 1
    # the same for a job that dies: read-only reports it missing, and caches nothing
    block.touch()
    job = make(tmp_path, "local", x=10, block_flag=str(block)).infra.job()
    _wait_for(lambda: len(calls(tmp_path / "calls.txt")) == 2)
    reader = make(tmp_path, None, x=10, block_flag=str(block), infra={"mode": "read-only"})
    thread, out = _in_thread(reader.process)
    thread.join(timeout=1.0)
    assert thread.is_alive()
    kill_tree(int(job.job_id))
    thread.join(timeout=60)
    # (how it ended, as a default call says it: see the test below)
    assert isinstance(out[0], JobFailedError) and "its process died" in str(out[0]), out
    folder = reader.infra.uid_folder()
    assert folder is not None and not CacheDict(folder).keys()  # (nothing cached)


def _stale_slurm_record_without_squeue(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node folder records a Slurm job long gone, and no Slurm command is on PATH."""
    record = exca.graph.registry.JobRecord(
        job_id="424242", cluster="slurm", logs=str(folder / "logs"), submitted=time.time() - 86400
    )
    exca.graph.registry.write(folder, record)
    monkeypatch.setenv("PATH", str(folder / "no-slurm-here"))


class Source(pydantic.BaseModel):
    n: int = 3
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def load(self) -> list[int]:
        return list(range(self.n))


class UsesSource(pydantic.BaseModel):
    source: Source = Source()
    block_flag: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> int:
        while Path(self.block_flag).exists():
            time.sleep(0.05)
        return sum(self.source.load())


@pytest.mark.timeout(120)
def test_read_only_waits_for_a_running_job_of_a_config_with_a_sub_config(tmp_path: Path) -> None:
    """The upstream of a read-only node is not decided (nothing of it is needed): it did
    not hold the wait back ("upstream ... failed")."""
    block = tmp_path / "block-flag"
    source = {"infra": {"folder": tmp_path}}
    assert Source(**source).load() == [0, 1, 2]
    block.touch()
    job = UsesSource(
        source=source, block_flag=str(block), infra={"folder": tmp_path, "cluster": "local"}
    ).infra.job()
    reader = UsesSource(
        source=source, block_flag=str(block), infra={"folder": tmp_path, "mode": "read-only"}
    )
    _wait_for(lambda: reader.infra.status() == "running")
    thread, out = _in_thread(reader.fit)
    thread.join(timeout=1.0)
    assert thread.is_alive()  # waiting for the job
    block.unlink()
    thread.join(timeout=60)
    assert out == [3] and job.result() == 3


@pytest.mark.timeout(60)
def test_read_only_does_not_wait_for_a_job_squeue_cannot_confirm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stale Slurm record (a job long gone) seen from a host where squeue does not
    answer: read-only reports the result missing (it waited forever); only a run that
    could submit assumes such a job may still run."""
    task = make(tmp_path, None, x=31, infra={"mode": "read-only"})
    folder = task.infra.uid_folder(create=True)
    assert folder is not None
    _stale_slurm_record_without_squeue(folder, monkeypatch)
    with pytest.raises(RuntimeError, match="read-only and missing"):
        task.process()


class FlakyItems(pydantic.BaseModel):
    fail_flag: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def make(self) -> list[int]:
        if Path(self.fail_flag).exists():
            raise ValueError("no items today")
        return [1, 2, 3]


class SquareItems(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def run(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            yield item**2


@pytest.mark.timeout(60)
def test_a_read_only_map_fed_by_a_failed_node_fails_without_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only map whose items come from an upstream node is checked once they are
    known; a job recorded for the map (here a stale one, squeue unreachable) did not make
    it start at once, before its upstream (it waited forever, or raised from the wrong
    place)."""
    flag = tmp_path / "fail"
    flag.touch()
    source = FlakyItems(fail_flag=str(flag), infra={"folder": tmp_path})
    with pytest.raises(ValueError, match="no items today"):
        source.make()
    node = SquareItems(infra={"folder": tmp_path, "mode": "read-only"}).run.node(source.make.node())
    assert node.folder is not None
    node.folder.mkdir(parents=True, exist_ok=True)
    _stale_slurm_record_without_squeue(node.folder, monkeypatch)
    with pytest.raises(exca.graph.errors.NodeFailures, match="no items today"):
        exca.graph.run(node)


def test_read_only(tmp_path: Path) -> None:
    task = make(tmp_path, None, x=8, infra={"mode": "read-only"})
    with pytest.raises(RuntimeError, match="read-only and missing"):
        task.process()
    assert calls(tmp_path / "calls.txt") == []
    assert make(tmp_path, None, x=8).process() == 16
    assert make(tmp_path, None, x=8, infra={"mode": "read-only"}).process() == 16
    assert len(calls(tmp_path / "calls.txt")) == 1


class Locked(pydantic.BaseModel):
    """A config holding an object that cannot be pickled (a lock)."""

    x: int = 1
    _lock: tp.Any = pydantic.PrivateAttr(default_factory=threading.Lock)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return self.x


def test_a_config_that_cannot_be_pickled_gets_a_clear_error(tmp_path: Path) -> None:
    """Not pickle's bare TypeError from inside submitit, nor an empty pickle left behind;
    nothing is cached or recorded: the next call tries again."""
    task = Locked(infra={"folder": tmp_path, "cluster": "local"})
    for _ in range(2):
        with pytest.raises(TypeError, match=r"sent to a job .*the config's '_lock' \(lock\)"):
            task.process()
    assert task.infra.status() == "not submitted"
    assert not [p for p in tmp_path.rglob("*.pkl") if p.stat().st_size == 0]
    assert Locked(x=1, infra={"folder": tmp_path}).process() == 1  # computed here


class Named(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=lambda item: item[0])
    def process(self, items: list[tuple[str, tp.Any]]) -> tp.Iterator[int]:
        for name, _ in items:
            yield len(name)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cluster, where", [("local", "a job"), ("processpool", "a process pool")])
def test_map_items_that_cannot_be_pickled_are_named(
    tmp_path: Path, cluster: str, where: str
) -> None:
    """The items are to blame, not the config (the error said the config; with a process
    pool, pickle's bare TypeError). The item is named by its uid (its repr, often an
    object's memory address, said nothing)."""
    mapper = Named(infra={"folder": tmp_path, "cluster": cluster, "max_jobs": 1})
    items = [("a", 1), ("bb", threading.Lock())]
    match = rf"its items cannot be sent to {where} .* item 'bb' \(tuple\) cannot be pickled"
    with pytest.raises(TypeError, match=match) as info:
        list(mapper.process(items))
    assert " at 0x" not in str(info.value)
    assert list(Named(infra={"folder": tmp_path}).process(items)) == [1, 2]  # here: fine


class Large(pydantic.BaseModel):
    """A result stored in a payload file of its own (not inline in the index)."""

    log: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> list[int]:
        append(self.log, "large")
        return list(range(1000))


def test_a_result_removed_between_its_check_and_its_read_is_computed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process forcing the task removes its result right after this call found it,
    and again right after this call computed it: the call computes it again (it raised a
    bare KeyError('result'))."""
    from exca.storage.cachedict import CacheDict

    def large() -> Large:
        return Large(log=str(tmp_path / "calls.txt"), infra={"folder": tmp_path / "cache"})

    assert large().process() == list(range(1000))
    folder = large().infra.uid_folder()
    read = CacheDict.__getitem__
    removals = []

    def removed_first(self: tp.Any, key: str) -> tp.Any:
        if key == "result" and len(removals) < 2:  # (as a forcing process would)
            other: CacheDict[tp.Any] = CacheDict(folder, keep_in_ram=False)
            with other.write():
                del other["result"]
            removals.append(key)
        return read(self, key)

    monkeypatch.setattr(CacheDict, "__getitem__", removed_first)
    assert large().process() == list(range(1000))
    assert len(removals) == 2 and len(calls(tmp_path / "calls.txt")) == 3


@pytest.mark.timeout(120)
def test_read_only_waits_for_a_worker_forcing_the_result(tmp_path: Path) -> None:
    """A forced call removes the result, then computes it again, holding its claim: a
    read-only call meanwhile waits for it (it raised "read-only and missing" while the
    result was a moment away)."""
    block = tmp_path / "block-flag"
    assert make(tmp_path, None, x=6, block_flag=str(block)).process() == 12
    block.touch()
    forced = make(tmp_path, None, x=6, block_flag=str(block), infra={"mode": "force"})
    forcing = threading.Thread(target=forced.process)
    forcing.start()
    reader = make(tmp_path, None, x=6, block_flag=str(block), infra={"mode": "read-only"})
    wait_until(lambda: reader.infra.status() == "running")  # (removed, being computed)
    threading.Timer(0.5, block.unlink).start()
    assert reader.process() == 12
    forcing.join(timeout=60)
    assert len(calls(tmp_path / "calls.txt")) == 2
    block.unlink(missing_ok=True)
    assert (
        make(tmp_path, None, x=6, block_flag=str(block), infra={"mode": "read-only"}).process()
        == 12
    )


class _BadPickle:
    """Loading it raises KeyError (a user's object whose unpickling fails)."""

    def __reduce__(self) -> tuple[tp.Any, ...]:
        import operator

        return (operator.getitem, ({}, "missing-key"))


class Unloadable(pydantic.BaseModel):
    log: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> tp.Any:
        append(self.log, "unloadable")
        return _BadPickle()


def test_a_key_error_loading_a_result_is_raised_as_it_is(tmp_path: Path) -> None:
    """Not taken for a result removed by another process (computed again five times, then
    a RuntimeError blaming another process)."""
    for _ in range(2):
        task = Unloadable(log=str(tmp_path / "calls.txt"), infra={"folder": tmp_path / "cache"})
        with pytest.raises(KeyError, match="missing-key"):
            task.process()
    assert calls(tmp_path / "calls.txt") == ["unloadable"]


@pytest.mark.timeout(120)
def test_ctrl_c_while_waiting_says_which_jobs_it_cancels_and_which_keep_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while a call waited for a job submitted earlier (by job() or a job array)
    logged "cancelling the jobs this run submitted" though it cancelled nothing: the job
    runs on. The log now names the jobs cancelled and those that keep running."""
    import _thread

    log, block = tmp_path / "calls.txt", tmp_path / "block-flag"
    block.touch()

    def interrupt_once_computing() -> None:
        _wait_for(lambda: len(calls(log)) >= 1)
        _wait_for(waiting.is_set)  # (the call is in its wait loop)
        _thread.interrupt_main()

    # a job submitted earlier: the interrupted call leaves it running
    earlier = make(tmp_path, "local", x=6, block_flag=str(block)).infra.job()
    waiting = waiting_for_jobs(monkeypatch)  # (by the call interrupted)
    thread = threading.Thread(target=interrupt_once_computing)
    thread.start()
    with caplog.at_level("WARNING", logger="exca"), pytest.raises(KeyboardInterrupt):
        make(tmp_path, "local", x=6, block_flag=str(block)).process()
    thread.join()
    messages = [r.getMessage() for r in caplog.records if "Interrupted" in r.getMessage()]
    assert messages == [
        f"Interrupted: job(s) {earlier.job_id} keep running (not submitted by this call; "
        "calling again waits for them, clear_job() or kill -9 <job id> (a local job's id is "
        "its process id) stops them)"
    ]  # (it said "or scancel", which knows no local job)
    block.unlink()
    assert earlier.result() == 12  # it ran on
    # a job this call submitted: cancelled, and named
    caplog.clear()
    block.touch()
    log.unlink()
    thread = threading.Thread(target=interrupt_once_computing)
    thread.start()
    own = make(tmp_path, "local", x=7, block_flag=str(block))
    with caplog.at_level("WARNING", logger="exca"), pytest.raises(KeyboardInterrupt):
        own.process()
    thread.join()
    messages = [r.getMessage() for r in caplog.records if "Interrupted" in r.getMessage()]
    assert len(messages) == 1 and messages[0].startswith(
        "Interrupted: cancelling the job(s) this call submitted: "
    )
    job_id = messages[0].rsplit(" ", 1)[1]
    assert job_id.isdigit()  # (a local job's id: its pid)
    _wait_for(lambda: exca.storage.process.process_start_time(int(job_id)) is None)
    block.unlink()
    assert own.infra.status() == "not submitted"


def _interrupted_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    xs: tuple[int, ...],
    more_ctrl_c: tp.Callable[[int], int],
) -> tuple[list[tp.Any], list[str]]:
    """Run the configs ``xs`` as local jobs held computing (the block flag), Ctrl-C once
    they all compute; the n-th cancel() of a job gets ``more_ctrl_c(n)`` more Ctrl-Cs
    right then. Returns the nodes and the ids of the jobs whose cancel() was called."""
    import _thread
    import signal

    from exca.graph import executors

    log, block = tmp_path / "calls.txt", tmp_path / "block-flag"
    block.touch()
    nodes = [make(tmp_path, "local", x=x, block_flag=str(block)).process.node() for x in xs]
    cancel = executors.SubmititHandle.cancel
    seen: list[str] = []

    def cancel_interrupted(handle: tp.Any) -> None:
        rank = len(seen)
        seen.append(handle.job_id)
        for _ in range(int(more_ctrl_c(rank))):
            signal.raise_signal(signal.SIGINT)
        cancel(handle)

    monkeypatch.setattr(executors.SubmititHandle, "cancel", cancel_interrupted)

    waiting = waiting_for_jobs(monkeypatch)

    def interrupt_once_computing() -> None:
        _wait_for(lambda: len(calls(log)) == len(xs))
        _wait_for(waiting.is_set)  # (the run waits for its jobs)
        _thread.interrupt_main()

    thread = threading.Thread(target=interrupt_once_computing)
    thread.start()
    with pytest.raises(KeyboardInterrupt):
        exca.graph.run(*nodes, progress=False)
    thread.join()
    return nodes, seen


@pytest.mark.timeout(120)
def test_a_second_ctrl_c_while_jobs_are_cancelled_waits_for_the_cancellation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second Ctrl-C arriving while the first one cancels the run's jobs stopped that
    half-way: jobs the warning named as cancelled ran on, or one kept its record and the
    next call raised "cancelled". The cancellation now completes first."""
    nodes, seen = _interrupted_run(tmp_path, monkeypatch, (21, 22), lambda rank: rank == 0)
    assert len(seen) == 2  # both cancelled
    for node in nodes:
        assert exca.graph.registry.latest(node.folder) is None  # (records forgotten)
    for pid in map(int, seen):
        _wait_for(lambda pid=pid: exca.storage.process.process_start_time(pid) is None)
    (tmp_path / "block-flag").unlink()
    assert [n.result() for n in nodes] == [42, 44]  # computed again, not "cancelled"


def _job_names_submitted(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The job name of each submitit executor the test's runs make, in order."""
    from exca.graph import executors

    names: list[str | None] = []
    real = executors.submitit_executor

    def recording(execution: tp.Any, logs: str) -> tp.Any:
        names.append(execution.job_name)
        return real(execution, logs)

    monkeypatch.setattr(executors, "submitit_executor", recording)
    return names


def test_an_array_of_several_configs_is_named_by_their_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every element of an array a run sent carried the first config's uid as its job
    name (squeue showed x=1's uid for x=2 and x=3): an array of several configs is named
    by their step; a job of one config keeps its uid."""
    names = _job_names_submitted(monkeypatch)
    nodes = [make(tmp_path, "local", x=x).process.node() for x in (1, 2, 3)]
    exca.graph.run(*nodes, progress=False)
    assert [n.result() for n in nodes] == [2, 4, 6]
    assert names == ["Counted.process,1"]
    names.clear()
    assert make(tmp_path, "local", x=4).process() == 8
    assert len(names) == 1 and names[0].startswith("Counted.process,1/x=4")


def test_an_array_of_several_steps_is_named_by_each_of_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's array holding configs of two steps (same resources: one array) was named
    after the first step alone: squeue said "Counted.process,1" of the other step's jobs
    too (a pipeline's map chunks were "Train.fit,1"). It is named by each step, once."""
    names = _job_names_submitted(monkeypatch)
    infra = {"folder": tmp_path / "cache", "cluster": "local"}
    listed = [Listed(x=x, log=str(tmp_path / "listed.txt"), infra=infra) for x in (1, 2)]
    nodes = [make(tmp_path, "local", x=x).process.node() for x in (1, 2)]
    nodes += [obj.process.node() for obj in listed]
    exca.graph.run(*nodes, progress=False)
    assert [n.result() for n in nodes] == [2, 4, [1, 1], [2, 2]]
    assert names == ["Counted.process,1+Listed.process,1"]


def test_a_node_whose_logs_are_set_is_not_sent_in_another_nodes_array(tmp_path: Path) -> None:
    """Nodes of equal resources went out as one array whatever their ``logs``: every job
    wrote its logs where the first node's went, the ``logs`` set on the other ignored
    (a pipeline's map chunks logged into a task's step folder). A node whose logs are
    set goes out in an array of its own; nodes of the default still share one (an array
    has one log folder: the first node's)."""
    mine = tmp_path / "my-logs"
    infra = {"folder": tmp_path / "cache", "cluster": "local"}
    log = str(tmp_path / "listed.txt")
    own = Listed(x=2, log=log, infra={**infra, "logs": str(mine / "%j")}).process.node()
    shared = [make(tmp_path, "local").process.node(), Listed(log=log, infra=infra).process.node()]
    exca.graph.run(*shared, own, progress=False)
    assert [n.result() for n in (*shared, own)] == [2, [1, 1], [2, 2]]
    record = exca.graph.registry.latest(own.folder)
    assert record is not None and Path(record.logs).parent == mine, record.logs
    records = [exca.graph.registry.latest(n.folder) for n in shared]
    assert len({Path(r.logs).parent for r in records if r is not None}) == 1  # (one array)


@pytest.mark.timeout(120)
def test_a_third_ctrl_c_stops_waiting_for_the_cancellation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Waiting for the cancellation could not be stopped (a Slurm controller that does not
    answer scancel held the terminal): the second Ctrl-C says that one more stops the
    wait, and the third does; the jobs not cancelled yet keep running (and their record)."""
    from exca.graph import executors

    cancel = executors.SubmititHandle.cancel
    with caplog.at_level("WARNING", logger="exca"):  # (the second Ctrl-C: held back, told)
        nodes, seen = _interrupted_run(tmp_path, monkeypatch, (23, 24), lambda rank: 2)
    assert len(seen) == 1  # (the other job was not cancelled: it runs on)
    assert any("Ctrl-C again stops waiting" in r.getMessage() for r in caplog.records)
    # (stopped before its cancellation happened, the first job runs on too: both keep
    # their record, none runs unseen)
    assert all(exca.graph.registry.latest(n.folder) is not None for n in nodes)
    monkeypatch.setattr(executors.SubmititHandle, "cancel", cancel)
    (tmp_path / "block-flag").unlink()
    assert [n.result() for n in nodes] == [46, 48]  # (their jobs' results: read)
    assert len(calls(tmp_path / "calls.txt")) == 2


@pytest.mark.timeout(120)
def test_a_ctrl_c_right_after_a_submission_cancels_its_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C after sbatch (or the local controllers' start) returned, while the run
    recorded its jobs: they were not the run's yet, so its Ctrl-C cleanup did not cancel
    them; they ran on, with no record or half of one."""
    import signal

    from exca.graph.scheduler import Scheduler

    block = tmp_path / "block-flag"
    block.touch()
    nodes = [make(tmp_path, "local", x=x, block_flag=str(block)).process.node() for x in (25, 26)]
    record = Scheduler.record
    ids: list[str] = []

    def record_interrupted(
        self: tp.Any, node: tp.Any, unit: tp.Any, handle: tp.Any, **kw: tp.Any
    ) -> None:
        ids.append(handle.job_id)
        if len(ids) == 1:
            signal.raise_signal(signal.SIGINT)  # (the user's Ctrl-C, right then)
        record(self, node, unit, handle, **kw)

    monkeypatch.setattr(Scheduler, "record", record_interrupted)
    with pytest.raises(KeyboardInterrupt):
        exca.graph.run(*nodes, progress=False)
    assert len(ids) == 2
    for pid in map(int, ids):  # (cancelled: they would wait for the flag)
        _wait_for(lambda pid=pid: exca.storage.process.process_start_time(pid) is None)
    assert all(exca.graph.registry.latest(n.folder) is None for n in nodes)


@pytest.mark.timeout(120)
def test_a_ctrl_c_during_a_local_submission_stops_the_jobs_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C while an array of local jobs is being started: the jobs started so far
    had no record yet and, in their own session, nothing stopped them (they ran on,
    unseen by status(), clear_job() and the interrupt's warning). They are stopped."""
    from submitit.local import local

    block = tmp_path / "block-flag"
    block.touch()
    started: list[tp.Any] = []
    real = local.start_controller

    def start_then_interrupt(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        if len(started) == 2:
            raise KeyboardInterrupt  # (the user's Ctrl-C, right then)
        started.append(real(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(local, "start_controller", start_then_interrupt)
    base = make(tmp_path, "local", block_flag=str(block))
    with pytest.raises(KeyboardInterrupt), base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(x=x) for x in range(4))
    assert len(started) == 2
    for process in started:
        process.wait(timeout=30)  # (stopped: they would wait for the flag)
    assert [obj.infra.status() for obj in array] == ["not submitted"] * 4


@pytest.mark.timeout(120)
def test_a_ctrl_c_signal_during_a_local_array_submission_stops_every_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The user's Ctrl-C (a SIGINT) is held back while an array's jobs are started and
    recorded, then raised: the detached submission of job_array() then cancelled nothing,
    and every job ran on (the docs say they are stopped; a probe found it)."""
    from submitit.local import local

    block = tmp_path / "block-flag"
    block.touch()
    started: list[tp.Any] = []
    real = local.start_controller

    def start_and_interrupt(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        started.append(real(*args, **kwargs))
        if len(started) == 2:
            signal.raise_signal(signal.SIGINT)  # (the user's Ctrl-C, held back)
        return started[-1]

    monkeypatch.setattr(local, "start_controller", start_and_interrupt)
    base = make(tmp_path, "local", block_flag=str(block))
    with pytest.raises(KeyboardInterrupt), base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(x=x) for x in range(4))
    assert len(started) == 4  # (all of them started: the interrupt came after)
    for process in started:
        process.wait(timeout=30)  # (stopped: they would wait for the flag)
    assert [obj.infra.status() for obj in array] == ["not submitted"] * 4


TERMINAL_DRIVER = """
import sys
from pathlib import Path
from unittest import mock
import test_execution as t

tmp, block = Path(sys.argv[1]), sys.argv[2]
t.make(tmp, "local", x=6, block_flag=block).infra.job()  # (e.g. a job array, earlier)
t.make(tmp, "local", x=6, block_flag=block).process()  # waits for that job
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGHUP"])
def test_local_jobs_outlive_a_terminal_ctrl_c_or_closing(tmp_path: Path, signal_name: str) -> None:
    """A terminal's Ctrl-C (SIGINT to the whole foreground process group) or its closing
    (SIGHUP) reached the local jobs too: they died with the script, and the next call
    raised their end as a cached failure ("cancelled") instead of reading their results.
    They run on, as the warning says and Slurm jobs do: computed once, read back."""
    import signal

    log, block = tmp_path / "calls.txt", tmp_path / "block-flag"
    block.touch()
    driver = _start_driver(
        TERMINAL_DRIVER,
        tmp_path,
        block,
        start_new_session=True,  # (its own group: the test plays the terminal)
        stdout=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: len(calls(log)) == 1)  # the job computes, the driver waits
        os.killpg(driver.pid, getattr(signal, signal_name))
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # (started by this test)
    assert driver.returncode != 0
    block.unlink()
    assert make(tmp_path, "local", x=6, block_flag=str(block)).process() == 12
    assert [c.split()[0] for c in calls(log)] == ["x=6"]  # (computed once)


def _start_driver(
    code: str, tmp_path: Path, block: Path, **popen: tp.Any
) -> subprocess.Popen[bytes]:
    """A script (``code``) submitting this module's tasks, in its own process."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    command = [sys.executable, "-c", code, str(tmp_path), str(block)]
    return subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL, **popen)


PIPED_DRIVER = """
import sys
from pathlib import Path
from unittest import mock
import test_execution as t

t.make(Path(sys.argv[1]), "local", x=8, block_flag=sys.argv[2]).infra.job()
print("submitted", flush=True)
"""


@pytest.mark.timeout(120)
def test_a_script_submitting_local_jobs_does_not_hold_its_output_pipe(tmp_path: Path) -> None:
    """`python run.py | tee log` waited for every local job the script had submitted to
    end: their controllers held the script's stdout and stderr (a probe found it)."""
    log, block = tmp_path / "calls.txt", tmp_path / "block-flag"
    block.touch()
    # (the controllers keep the script's stderr: DEVNULL, its stdout: a pipe)
    driver = _start_driver(PIPED_DRIVER, tmp_path, block, stdout=subprocess.PIPE)
    try:
        out, _ = driver.communicate(timeout=60)  # (the pipe's end: all writers gone)
        assert b"submitted" in out
        assert len(calls(log)) <= 1 and block.exists()  # (its job still runs, blocked)
    finally:
        block.unlink(missing_ok=True)  # (the job ends)
        if driver.poll() is None:
            driver.kill()
    assert make(tmp_path, "local", x=8, block_flag=str(block)).process() == 16


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", [None, "local"])
def test_a_retry_while_another_call_computes_computes_again_after_it(
    tmp_path: Path, cluster: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mode=retry while another call computes (code from before the fix, say) and then
    fails: the retry re-raised that error, computed before it asked. It computes again."""
    waits = waits_for_others(monkeypatch)
    log, block, fail = tmp_path / "calls.txt", tmp_path / "block-flag", tmp_path / "fail"
    block.touch()
    fail.touch()
    first = make(tmp_path, cluster, x=3, block_flag=str(block), fail_flag=str(fail))
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _catch(first.process, errors))
    thread.start()
    _wait_for(lambda: len(calls(log)) == 1)  # computing
    retried = make(
        tmp_path, cluster, x=3, infra={"mode": "retry"}, block_flag=str(block), fail_flag=str(fail)
    )
    retry_errors: list[BaseException] = []
    retrying = threading.Thread(target=lambda: _catch(retried.process, retry_errors))
    retrying.start()
    # (the retry waits for the first computation: its claim, or its job)
    waits.until(retrying, kinds=("claim", "lock") if cluster is None else ())
    block.unlink()
    thread.join(timeout=60)
    retrying.join(timeout=60)
    # (the first call's error was replaced by the retry's: it reports that one, not a job
    # that "ended without writing its result")
    assert [type(e) for e in errors] == [ValueError]
    assert len(calls(log)) == 2  # the retry computed again, after the first one failed
    assert [type(e) for e in retry_errors] == [ValueError]


def test_an_error_computed_the_same_millisecond_a_retry_asked_is_computed_again(
    tmp_path: Path,
) -> None:
    """Provenance times are rounded to the millisecond: the error of a computation started
    a fraction of a millisecond before a retry asked looked started since (the answer to
    that retry, which re-raised it: the test above failed so, now and then). Older."""
    from exca.cachedict import CachedError
    from exca.graph import store
    from exca.graph.node import TASK_KEY

    cache: CacheDict[tp.Any] = CacheDict(tmp_path)
    started = 1_800_000_000.0003  # (recorded unrounded, as worker._provenance does)
    with cache.write():
        cache.put(TASK_KEY, CachedError.from_exception(ValueError("bad")), meta={"t": started})
    assert not store.computed_since(cache, started + 0.0001)  # asked after it started
    assert store.computed_since(cache, started - 0.001)  # asked before it started


def test_an_older_exca_s_rounded_start_the_same_millisecond_a_retry_asked_is_since(
    tmp_path: Path,
) -> None:
    from exca.cachedict import CachedError
    from exca.graph import store
    from exca.graph.node import TASK_KEY

    cache: CacheDict[tp.Any] = CacheDict(tmp_path)
    asked = 1_800_000_000.0009
    started = asked + 0.0003  # started 0.3 ms AFTER the retry asked: recorded as ...0.001
    with cache.write():
        cache.put(
            TASK_KEY, CachedError.from_exception(ValueError("bad")), meta={"t": round(started, 3)}
        )
    assert store.computed_since(cache, asked)  # (as older exca recorded it: rounded)


def _error_of_x4_cached_then_blocking(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The error of config x=4 cached; its next computations block (then fail again)
    until the block flag goes: the call log, the block flag and the fail flag."""
    log, block, fail = tmp_path / "calls.txt", tmp_path / "block-flag", tmp_path / "fail"
    fail.touch()
    with pytest.raises(ValueError):
        make(tmp_path, None, x=4, fail_flag=str(fail), block_flag=str(block)).process()
    block.touch()
    return log, block, fail


@pytest.mark.timeout(120)
def test_a_retry_asked_just_before_another_retry_computes_follows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B asks (mode retry) 0.5 ms before A's computation starts (A had asked a bit
    earlier): B must follow A's computation, not compute again."""
    log, block, fail = _error_of_x4_cached_then_blocking(tmp_path)
    waits = waits_for_others(monkeypatch)
    from exca.graph import scheduler, worker

    starts: list[float] = []
    real = worker._provenance

    def provenance(node: tp.Any) -> dict[str, tp.Any]:
        meta = real(node)
        starts.append(meta["t"])  # (the start of A's computation)
        return meta

    monkeypatch.setattr(worker, "_provenance", provenance)
    init = scheduler.Scheduler.__init__

    def init_b(self: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> None:
        init(self, *args, **kwargs)
        if starts:  # B: it asked just before A's computation started (< 1 ms before)
            self.asked_at = starts[0] - 0.0005

    monkeypatch.setattr(scheduler.Scheduler, "__init__", init_b)

    def retry() -> tp.Callable[[], tp.Any]:
        infra = {"mode": "retry"}
        return make(
            tmp_path, None, x=4, infra=infra, fail_flag=str(fail), block_flag=str(block)
        ).process

    errors: list[BaseException] = []
    a = threading.Thread(target=lambda: _catch(retry(), errors))
    a.start()
    _wait_for(lambda: len(calls(log)) == 2)  # A computes
    b = threading.Thread(target=lambda: _catch(retry(), errors))
    b.start()
    waits.until(b, kinds=("claim",))  # B waits for A's claim
    block.unlink()
    a.join(timeout=60)
    b.join(timeout=60)
    assert [type(e) for e in errors] == [ValueError] * 2
    assert len(calls(log)) == 2, calls(log)  # once before, once for both retries


@pytest.mark.timeout(120)
def test_concurrent_retries_of_a_cached_error_compute_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three calls in mode retry at the same time, of a config whose error is cached: one
    computes (a job), the others follow it; each recomputed in turn, failing again."""
    log, block, fail = _error_of_x4_cached_then_blocking(tmp_path)
    waits = waits_for_others(monkeypatch)
    errors: list[BaseException] = []
    threads = [
        threading.Thread(
            target=lambda: _catch(
                make(
                    tmp_path,
                    "local",
                    x=4,
                    infra={"mode": "retry"},
                    fail_flag=str(fail),
                    block_flag=str(block),
                ).process,
                errors,
            )
        )
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    _wait_for(lambda: len(calls(log)) == 2)  # the retry computes
    waits.until(*threads)  # (the others follow it: waiting for its job, not submitting)
    block.unlink()
    for thread in threads:
        thread.join(timeout=60)
    assert [type(e) for e in errors] == [ValueError] * 3
    assert len(calls(log)) == 2  # once before, once for the three retries


def _catch(call: tp.Callable[[], tp.Any], errors: list[BaseException]) -> None:
    try:
        call()
    except Exception as error:
        errors.append(error)


def test_work_sent_by_another_python_version_fails_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Code pickled by value (a script's functions) travels as bytecode, which differs
    between Python versions: a job run by another Python said "bad marshal data" (or
    crashed later). It now names both versions and what to do."""
    from exca.graph import jobpickle

    namespace: dict[str, tp.Any] = {"__name__": "a_script_not_importable"}
    exec("def double(x):\n    return 2 * x\n", namespace)
    assert pickle.loads(jobpickle.dumps(namespace["double"]))(4) == 8
    monkeypatch.setattr(jobpickle, "PYTHON", (3, 7))  # (the sending side's version)
    payload = jobpickle.dumps(namespace["double"])
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match=r"sent by Python 3\.7 and is loaded by Python 3\.\d+"):
        pickle.loads(payload)


@pytest.mark.timeout(120)
def test_killing_a_local_jobs_controller_ends_its_task(
    tmp_path: Path, short_result_wait: None
) -> None:
    """`kill -9 <job id>` (the controller's pid, as the log prints it) ends the task too:
    no orphan computing on unseen, its claim live, making the next call wait for it."""
    from exca.storage.process import process_start_time

    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    job = make(tmp_path, "local", x=6, block_flag=str(block)).infra.job()
    _wait_for(lambda: len(calls(log)) == 1)
    task_pid = int(calls(log)[0].split("pid=")[1])
    os.kill(int(job.job_id), signal.SIGKILL)
    _wait_for(lambda: process_start_time(task_pid) is None)
    with pytest.raises(JobFailedError):
        job.result()
    assert make(tmp_path, "local", x=6, block_flag=str(block)).infra.status() == "failed"
    block.unlink()
    retry = make(tmp_path, "local", x=6, block_flag=str(block), infra={"mode": "retry"})
    assert retry.process() == 12
    assert len(calls(log)) == 2


@pytest.mark.timeout(120)
def test_a_retry_call_following_a_local_job_killed_meanwhile_computes_it_again(
    tmp_path: Path, short_result_wait: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A call and a job() in mode retry, made while another call's local job computes,
    follow it; that job is then killed (kill -9): the call raised "its process died ...
    (use mode='retry' to recompute)" to a caller in mode retry. It now computes it
    again, once for both."""
    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    job = make(tmp_path, "local", x=7, block_flag=str(block)).infra.job()
    _wait_for(lambda: len(calls(log)) == 1)  # the method started in the job
    with caplog.at_level("INFO", logger="exca"):
        call = Background(
            make(tmp_path, "local", x=7, block_flag=str(block), infra={"mode": "retry"}).process
        )
        _wait_for(lambda: f"running as job {job.job_id}" in caplog.text)  # (it follows it)
        retry = make(tmp_path, "local", x=7, block_flag=str(block), infra={"mode": "retry"})
        followed = retry.infra.job()
        assert followed.job_id == job.job_id
        kill_tree(int(job.job_id))
        block.unlink()  # (the recomputation then returns)
        call.join(timeout=60)
    assert call.outcome == [14]
    assert followed.result() == 14  # (computed by its retry, or the call's: once)
    assert len(calls(log)) == 2
    assert make(tmp_path, "local", x=7, block_flag=str(block)).infra.status() == "completed"


@pytest.mark.timeout(120)
def test_a_retry_job_following_a_local_job_killed_meanwhile_is_sent_again(
    tmp_path: Path, short_result_wait: None
) -> None:
    """job() in mode retry while another call's local job computes returns that job;
    killed, its result() raised "its process died ... (use mode='retry' to recompute)".
    The retry's own job is now sent once that job ended, and computes it."""
    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    job = make(tmp_path, "local", x=5, block_flag=str(block)).infra.job()
    _wait_for(lambda: len(calls(log)) == 1)  # the method started in the job
    retry = make(tmp_path, "local", x=5, block_flag=str(block), infra={"mode": "retry"})
    followed = retry.infra.job()
    assert followed.job_id == job.job_id
    kill_tree(int(job.job_id))
    block.unlink()
    assert followed.result() == 10
    assert followed.job_id not in (job.job_id, "#local#") and followed.state == "COMPLETED"
    assert len(calls(log)) == 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["call", "job"])
def test_a_retry_whose_own_job_dies_does_not_say_to_use_mode_retry(
    tmp_path: Path, short_result_wait: None, how: str
) -> None:
    """The job of a call (or job()) in mode retry killed: its error told that caller
    "use mode='retry' to recompute"; it says that this call retried already. The failure
    recorded for later calls keeps the hint (mode cached re-raises it)."""
    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    retry = make(tmp_path, "local", x=8, block_flag=str(block), infra={"mode": "retry"})
    call = Background(retry.process if how == "call" else lambda: retry.infra.job().result())
    _wait_for(lambda: len(calls(log)) == 1)  # its own job computes
    (record,) = (tmp_path / "cache").glob("*/*/jobs/*.json")
    kill_tree(int(json.loads(record.read_text())["job_id"]))
    (error,) = call.join(timeout=60)
    assert isinstance(error, JobFailedError) and "not computed: " in str(error)
    assert "use mode='retry'" not in str(error) and "retried it already" in str(error)
    with pytest.raises(JobFailedError, match="use mode='retry' to recompute"):
        make(tmp_path, "local", x=8, block_flag=str(block)).process()
    assert len(calls(log)) == 1


def test_a_local_job_over_max_pickle_size_gb_names_the_infras_field(tmp_path: Path) -> None:
    """submitit's refusal said "update executor.max_pickle_size_gb", which an exca user
    does not have: the error names the infra's field, and nothing ran."""
    log = tmp_path / "log.txt"
    infra = {"folder": tmp_path / "cache", "cluster": "local", "max_pickle_size_gb": 1e-9}
    task = Counted(x=3, log=str(log), infra=infra)
    with pytest.raises(RuntimeError, match="raise the infra's max_pickle_size_gb") as info:
        task.process()
    assert "executor.max_pickle_size_gb" not in str(info.value)
    assert task.infra.status() == "not submitted" and not log.exists()
    bigger = Counted(x=3, log=str(log), infra={**infra, "max_pickle_size_gb": 1.0})
    assert bigger.process() == 6


@pytest.mark.timeout(180)
def test_every_rank_of_a_multi_task_local_job_runs_the_method(tmp_path: Path) -> None:
    """tasks_per_node=2: rank 0 claimed the task and rank 1 waited for its claim instead
    of running the method, so distributed code meeting every rank waited for good (a
    probe). Every rank runs it; rank 0's outcome is stored, once; a map too."""
    from ranks import RankedMap, RankedTask

    meeting = tmp_path / "meeting"
    infra = {"folder": tmp_path / "cache", "cluster": "local", "tasks_per_node": 2}
    task = RankedTask(meeting=str(meeting), infra=infra)
    assert task.train() == "rank 0 of 2"
    assert sorted(calls(meeting / "calls.txt")) == ["train rank=0", "train rank=1"]
    assert RankedTask(meeting=str(meeting), infra=infra).train() == "rank 0 of 2"  # (cached)
    assert len(calls(meeting / "calls.txt")) == 2
    mapped = RankedMap(meeting=str(meeting), infra=infra)
    assert list(mapped.infer([1, 2])) == ["1 by rank 0 of 2", "2 by rank 0 of 2"]
    infer = [line for line in calls(meeting / "calls.txt") if line.startswith("infer")]
    assert infer and infer.count("infer rank=0") == infer.count("infer rank=1")  # (a job a chunk)
    assert list(RankedMap(meeting=str(meeting), infra=infra).infer([2, 1])) == [
        "2 by rank 0 of 2",
        "1 by rank 0 of 2",
    ]
    assert len(calls(meeting / "calls.txt")) == 2 + len(infer)  # (cached: no job)
    # an item error: rank 0 computes the items again, the failing one alone, and the
    # other ranks make the same calls (they ended after the first: rank 0 waited for them)
    one_job = {**infra, "max_jobs": 1}
    with pytest.raises(ValueError, match="bad item 13 on rank 0"):
        list(RankedMap(meeting=str(meeting), infra=one_job).infer([3, 13, 4]))
    assert list(RankedMap(meeting=str(meeting), infra=one_job).infer([3, 4])) == [
        "3 by rank 0 of 2",
        "4 by rank 0 of 2",
    ]
    infer = [line for line in calls(meeting / "calls.txt") if line.startswith("infer")]
    assert infer.count("infer rank=0") == infer.count("infer rank=1")


@pytest.mark.timeout(180)
def test_a_multi_task_job_whose_other_rank_raises_fails_naming_it(tmp_path: Path) -> None:
    """tasks_per_node=2, rank 1 raising where rank 0 returns: rank 0's result was cached
    and returned, the error only in rank 1's log. The call raises, naming the rank and its
    log; the error is cached (the next call raises it, no job)."""
    from ranks import RankedFailing

    infra = {"folder": tmp_path / "cache", "cluster": "local", "tasks_per_node": 2}
    task = RankedFailing(meeting=str(tmp_path / "meeting"), infra=infra)
    with pytest.raises(RuntimeError, match=r"Rank 1 of 2 raised ValueError: rank 1 went") as info:
        task.train()  # (it returned rank 0's result, "rank 0 of 2")
    assert type(info.value).__name__ == "RankFailed"
    log = re.search(r"its log: (\S+_1_log\.err)\)", str(info.value))
    assert log is not None, info.value
    assert "rank 1 went another way" in Path(log.group(1)).read_text()
    assert task.infra.status() == "failed"
    again = RankedFailing(meeting=str(tmp_path / "meeting"), infra=infra)
    with pytest.raises(RuntimeError, match="Rank 1 of 2"):
        again.train()
    assert len(calls(tmp_path / "meeting" / "calls.txt")) == 2  # (one job, two ranks)
    fine = RankedFailing(meeting=str(tmp_path / "meeting"), failing_rank=5, infra=infra)
    assert fine.train() == "rank 0 of 2"  # (every rank returned: rank 0's result)


@pytest.mark.timeout(180)
def test_a_multi_task_job_whose_other_rank_dies_fails_naming_it(
    tmp_path: Path, short_result_wait: None
) -> None:
    """Rank 1 killed during the call while rank 0 returned: rank 0's result was cached."""
    from ranks import RankedFailing

    infra = {"folder": tmp_path / "cache", "cluster": "local", "tasks_per_node": 2}
    task = RankedFailing(meeting=str(tmp_path / "meeting"), dies=True, infra=infra)
    # (rank 0 tells it, or, still waiting for rank 1 after 2 s, is stopped: see the next tests)
    said = r"Rank 1 of 2 did not end its call: it ended \(pid|rank 1 ended first: its process died"
    with pytest.raises(RuntimeError, match=said):
        task.train()
    assert task.infra.status() == "failed"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("dies", [0, 1])
def test_a_multi_task_local_job_ends_once_one_of_its_ranks_died(
    tmp_path: Path, short_result_wait: None, dies: int
) -> None:
    """A rank of a multi-task local job killed in its call (out of memory...): the other
    ran its method to its end (60 s here; distributed code waiting for the dead rank in a
    collective: until the job's time limit, a week), then failed. The controller stops
    the others (as srun does on Slurm): the job fails at once, naming the rank that died
    first and its log."""
    from rank_deaths import RankDies

    log = tmp_path / "log.txt"
    infra = {"folder": tmp_path / "cache", "cluster": "local", "tasks_per_node": 2}
    task = RankDies(log=str(log), dies=dies, sleep_s=60, infra=infra)
    if dies:
        said = r"rank 1 ended first: its process died \(killed by SIGKILL.* \(its log: \S+_1_log\.err\)"
    else:  # (rank 0's own log says it)
        said = r"its process died \(killed by SIGKILL.*its log: \S+_0_log\.err"
    with pytest.raises(JobFailedError, match=said):
        task.train()
    assert task.infra.status() == "failed"
    assert sorted(calls(log)) == ["start rank=0", "start rank=1"]  # (no end: stopped)


@pytest.mark.timeout(180)
def test_a_multi_task_job_whose_other_rank_dies_as_it_starts_fails_soon(
    tmp_path: Path, short_result_wait: None
) -> None:
    """Rank 1 killed as it starts (loading its work), before it follows rank 0's calls:
    rank 0, its call made, waited STARTUP_S (600 s) for the process file rank 1 never
    wrote before saying anything. Rank 1's process gone from the host tells it (a local
    job's ranks all run here)."""
    from rank_dies_early import RANK_ONE_DIED_EARLY, RankOneDiesEarly

    infra = {"folder": tmp_path / "cache", "cluster": "local", "tasks_per_node": 2}
    task = RankOneDiesEarly(infra=infra)
    # (rank 0 tells it, after UNSEEN_S, or the controller stopped it before: it waited)
    with pytest.raises(RuntimeError, match=RANK_ONE_DIED_EARLY):
        task.train()
    assert task.infra.status() == "failed"


@pytest.mark.timeout(180)
def test_a_multi_node_job_whose_other_rank_exits_in_its_call_fails_soon(
    tmp_path: Path, short_result_wait: None
) -> None:
    """Rank 1 of a multi-node job calling sys.exit(0) in its call (no death srun or a
    local controller sees: its exit code is 0): rank 0, whose host cannot see rank 1's
    process, waited for rank 1's process file to go stale (LEAD_STALE_S, 600 s) before
    saying anything. Rank 1 left rank 0's calls (its "done" mark): rank 0 tells it at
    once. (Each rank takes the other for one of another host; its waits are 40 s here.)"""
    from rank_deaths import RankDies

    infra = {"folder": tmp_path / "cache", "cluster": "local", "tasks_per_node": 2}
    log = tmp_path / "log.txt"
    task = RankDies(log=str(log), dies=1, when="exit", other_hosts=True, startup_s=40, infra=infra)
    said = r"Rank 1 of 2 did not end its call: it stopped following rank 0's calls before it"
    with pytest.raises(RuntimeError, match=said):
        task.train()
    assert task.infra.status() == "failed"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("dies", [0, 1])
def test_a_multi_node_job_whose_rank_calls_os_exit_is_told_ended_soon(
    tmp_path: Path, short_result_wait: None, dies: int
) -> None:
    """A rank of a multi-node job calling os._exit(0) in its call (no finally, no done
    mark, no death srun or a local controller sees): the rank waiting for it, whose host
    cannot see its process, waited for its process file to go stale (LEAD_STALE_S, 600 s)
    and then said "stopped refreshing". Its watcher writes its ended mark: told at once.
    (Each rank takes the other for one of another host; its waits are 40 s here.)"""
    from rank_deaths import RankDies

    infra = {"folder": tmp_path / "cache", "cluster": "local", "tasks_per_node": 2}
    log = tmp_path / "log.txt"
    task = RankDies(
        log=str(log), dies=dies, when="os_exit", other_hosts=True, startup_s=40, infra=infra
    )
    with pytest.raises(RuntimeError) as raised:  # (rank 0's RankFailed; the job's failure)
        task.train()
    assert task.infra.status() == "failed"
    if dies:  # (rank 0 tells it)
        said = r"Rank 1 of 2 did not end its call: it ended \(pid \d+ on \S+, os._exit, killed\?\)"
        assert re.search(said, str(raised.value)), raised.value
    else:  # (rank 1 stops following, its log says why)
        (rank_one,) = (tmp_path / "cache").rglob("*_1_log.err")
        said = r"rank 0 \(pid \d+ on \S+\) ended without finishing its calls \(os._exit, killed\?\)"
        assert re.search(said, rank_one.read_text()), rank_one.read_text()[-2000:]
        # (and the job's error says it: it said "its process died (killed, out of
        # memory, or sys.exit/os._exit in the method)", with rank 0's empty log)
        said = rf"rank 0 ended first: its process exited in its call.* rank 1 then stopped \({said}; its log: {re.escape(str(rank_one))}\)"
        assert re.search(said, str(raised.value)), raised.value


def test_a_slurm_job_step_ends_when_one_of_its_tasks_dies(tmp_path: Path) -> None:
    """srun let the other tasks of a step run on when one died (Slurm's KillOnBadExit=0 by
    default, measured on the real cluster): a rank of a multi-task job killed (out of
    memory...), the others waited for it in their collectives, or, on another node, for
    its process file to go stale (600 s). The sbatch script asks srun to end the step."""
    from exca.graph import executors
    from exca.graph.node import Execution

    def script(**params: tp.Any) -> str:
        execution = Execution(cluster="slurm", params=tuple(params.items()))
        executor = executors.submitit_executor(execution, str(tmp_path / "logs" / "%j"))
        return str(executor._executor._make_submission_file_text("python run.py", "u"))

    ranked = script(tasks_per_node=2, slurm_use_srun=True)
    srun = [line for line in ranked.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1 and " --kill-on-bad-exit=1 " in srun[0], ranked
    assert "--kill-on-bad-exit" not in script(slurm_use_srun=False)  # (no step: no srun)


def test_the_rank_whose_death_ended_a_slurm_step_is_named() -> None:
    """A multi-task job's step ended by srun (a task died: --kill-on-bad-exit) said "its
    process died (killed by SIGKILL...)" with rank 0's log, whichever rank died first:
    srun's first report in that log names it, and how it ended."""
    from exca.graph.registry import first_task_ended

    died = "srun: error: vm: task 1: Killed\nslurmstepd-vm: error: *** STEP 5.0 CANCELLED\n"
    died += "submitit WARNING - Bypassing signal SIGTERM\nsrun: error: vm: task 0: Killed\n"
    assert first_task_ended(died) == (
        1,
        "its process died (killed by SIGKILL: out of memory, or killed by hand)",
    )
    rank_zero = "srun: error: vm: task 0: Segmentation fault\nsrun: error: n2: tasks 1-3: Killed"
    assert first_task_ended(rank_zero) == (0, "its process died (killed by SIGSEGV)")
    exited = "srun: error: n7: task 3: Exited with exit code 2\n"
    assert first_task_ended(exited) == (3, "its process exited with code 2")
    # (a job of one task, or rank 0 alone: the job's own words say it)
    assert first_task_ended("srun: error: vm: task 0: Killed\n") is None
    assert first_task_ended("bash: line 1: 17603 Killed sleep 30\n") is None


def test_a_rank_not_seen_where_proc_hides_environments_is_not_said_dead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(a review: the early-death check took a process whose environment it may not read
    (a security module, a sandbox's /proc) for one that ended: every rank not started
    following yet was "its process ended before it started following rank 0's calls",
    rank 0 raised RankFailed for ranks alive)"""
    from exca.graph import ranks

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_JOB_ID", f"no-such-job-{os.getpid()}")
    monkeypatch.setattr(ranks, "UNSEEN_S", 0.0)
    since = time.monotonic()
    # (a rank of a job no process here belongs to: gone, as for a rank killed early)
    assert "its process ended before" in str(ranks._follower_gone(tmp_path, 1, since))
    real_open = open

    def hidden(path: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        if str(path).endswith("/environ"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(ranks, "open", hidden, raising=False)
    ranks._UNSEEN.clear()
    assert ranks._follower_gone(tmp_path, 2, since) is None  # (cannot tell: waited for)


@pytest.mark.timeout(180)
def test_a_jobs_result_file_and_its_ranks_calls_take_the_caches_permissions(
    tmp_path: Path,
) -> None:
    """Under a private umask, the result file submitit writes once a job's function
    returned (read by `exca list`, clean and status(): its job ran to its end) and the
    folder where rank 0 of a multi-task job announces its calls (read by the other ranks,
    removed by `exca clean logs`) took the umask (0o600, 0o700), not the infra's
    ``permissions``, as the job's logs beside them do. That folder (a file per call,
    nested ones too) stayed after the job: every rank done, it is removed."""
    from ranks import RankedTask

    cache = tmp_path / "cache"
    hold = tmp_path / "hold"
    hold.touch()
    previous = os.umask(0o077)
    try:
        infra = {"folder": cache, "cluster": "local", "permissions": 0o750}
        assert Counted(x=15, log=str(tmp_path / "calls.txt"), infra=infra).process() == 30
        ranked = {**infra, "tasks_per_node": 2}
        task = RankedTask(meeting=str(tmp_path / "meeting"), hold=str(hold), infra=ranked)
        job = task.infra.job()
        try:  # (the method held: rank 0 announced its call)
            _wait_for(lambda: len(list(cache.rglob("rank-calls-*/0.json"))) == 1)
            (calls_folder,) = cache.rglob("rank-calls-*")
            assert calls_folder.stat().st_mode & 0o7777 == 0o750
            files = {p.name: p.stat().st_mode & 0o7777 for p in calls_folder.iterdir()}
            assert "lead.json" in files and set(files.values()) == {0o750}, files
        finally:
            hold.unlink()
        assert job.result() == "rank 0 of 2"
    finally:
        os.umask(previous)

    def modes(pattern: str) -> dict[str, int]:
        return {p.name: p.stat().st_mode & 0o7777 for p in cache.rglob(pattern)}

    # (one job of one task, one of two: a result file each task; set as each one exits)
    _wait_for(
        lambda: len(modes("*_result.pkl")) == 3 and set(modes("*_result.pkl").values()) == {0o750}
    )
    assert not calls_folder.exists()


@pytest.mark.timeout(180)
def test_the_ranks_of_a_multi_task_job_stop_where_rank_zero_gave_items_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tasks_per_node=2, one job for [a, b, c, d], a needing d: rank 0 gives back what its
    method has not started (b, c, d) and computes d for a, then b and c (taken back, in the
    same call since the other ranks wait for its decision); the other rank made the whole first call (a, b, c, d), then b and c again: the ranks
    disagreed on the items, and a collective of an item rank 0 never computed in that call
    waited for good. Now every rank stops that call after a, as rank 0 did."""
    from ranks import RankedDag

    from exca.graph import scheduler

    monkeypatch.setattr(scheduler._SHUFFLER, "shuffle", lambda items: None)  # (in order)
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    infra = {"folder": tmp_path / "cache", "cluster": "local", "tasks_per_node": 2, "max_jobs": 1}
    dag = RankedDag(meeting=str(meeting), deps={"a": ["d"]}, infra=infra)
    assert list(dag.infer(["a", "b", "c", "d"])) == ["a(d())", "b()", "c()", "d()"]
    steps = calls(meeting / "steps.txt")
    by_rank = {r: [s.split()[0] for s in steps if s.endswith(f"rank={r}")] for r in (0, 1)}
    # (d: computed by rank 0's nested call for a, which the other rank's follows)
    assert by_rank == {0: ["a", "d", "b", "c"], 1: ["a", "d", "b", "c"]}


@pytest.mark.timeout(240)
def test_the_ranks_of_a_multi_task_job_step_through_nested_calls_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tasks_per_node=2, a map whose items call another map and a task (computed in the
    job): rank 0 computed their items without announcing them, and the other rank's same
    calls waited for its claims (or claimed first and computed them itself), so a
    collective inside them never met every rank (here: 20 s, then an error). Every rank
    now steps through the same nested items, in the same order, and the other ranks read
    rank 0's outcome; then, those nested calls cached, nothing is computed again."""
    from ranks import RankedNesting

    from exca.graph import scheduler

    monkeypatch.setattr(scheduler._SHUFFLER, "shuffle", lambda items: None)  # (in order)
    meeting = tmp_path / "meeting"
    infra = {"folder": tmp_path / "cache", "cluster": "local", "tasks_per_node": 2, "max_jobs": 1}
    outputs = [f"{x}: {x}.1 by rank 0, {x}.2 by rank 0; step {x} by rank 0" for x in (1, 2)]
    for tag in ("", "again"):  # (again: another config, its nested calls cached)
        nesting = RankedNesting(
            meeting=str(meeting), cache=str(tmp_path / "nested"), tag=tag, infra=infra
        )
        assert list(nesting.infer([1, 2])) == outputs
        lines = calls(meeting / "calls.txt")
        by_rank = {
            r: [c.rsplit(" ", 1)[0] for c in lines if c.endswith(f"rank={r}")] for r in (0, 1)
        }
        steps = ["inner 1.1", "inner 1.2", "step 1", "inner 2.1", "inner 2.2", "step 2"]
        assert by_rank == {0: steps, 1: steps}
    got = calls(meeting / "got.txt")
    assert sorted(got) == sorted(
        f"{t}{o} rank={r}" for t in ("", "again") for o in outputs for r in (0, 1)
    )


@pytest.mark.timeout(180)
def test_the_ranks_stop_a_call_where_rank_zero_stops_it_at_a_failing_item(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 13 fails on rank 0 only: rank 0 stops its call [3, 13, 4] there, caches 13's
    error (its method read no later item: not computed alone since) and calls [4], a
    call of its own that meets the other ranks. The other rank, past 13 in the first
    call, must stop that call before rank 0's next call, else that call's meeting waits
    for it, which waits for rank 0 (it would stop only when rank 0's first call ended)."""
    from ranks import RankedMap

    from exca.graph import scheduler

    # (in order: 13 shuffled last, the call [3, 4, 13] has no item after it, 2 calls)
    monkeypatch.setattr(scheduler._SHUFFLER, "shuffle", lambda items: None)
    meeting = tmp_path / "meeting"
    infra = {"folder": tmp_path / "cache", "cluster": "local", "tasks_per_node": 2, "max_jobs": 1}
    mapped = RankedMap(meeting=str(meeting), fails_on_rank_zero_only=True, infra=infra)
    with pytest.raises(ValueError, match="bad item 13 on rank 0"):  # (not "never came")
        list(mapped.infer([3, 13, 4]))
    infer = calls(meeting / "calls.txt")
    assert infer.count("infer rank=0") == infer.count("infer rank=1") == 2  # ([3, 13, 4], [4])


@pytest.mark.timeout(180)
def test_the_ranks_of_a_multi_task_job_follow_a_method_returning_a_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A method returning a list computes its items (meeting the other ranks) as it is
    called: rank 0 called it before announcing the call, so the other ranks, waiting
    for the announcement, never met it (an error after 60 s, that item's). And its call
    raising for item 13 cached nothing. Now rank 0 announces first; the call raising at
    13 (its method read no later item), 13's error is cached and the items before it
    (computed for nothing) are called again, then those after it (announced too): 3 and 4
    are cached, 13's error too."""
    from ranks import RankedMap

    from exca.graph import scheduler

    monkeypatch.setattr(scheduler._SHUFFLER, "shuffle", lambda items: None)  # (in order)
    meeting = tmp_path / "meeting"
    infra = {"folder": tmp_path / "cache", "cluster": "local", "tasks_per_node": 2, "max_jobs": 1}
    mapped = RankedMap(meeting=str(meeting), returns_list=True, infra=infra)
    assert list(mapped.infer([1, 2])) == ["1 by rank 0 of 2", "2 by rank 0 of 2"]
    with pytest.raises(ValueError, match="bad item 13 on rank 0"):  # (not "never came")
        list(RankedMap(meeting=str(meeting), returns_list=True, infra=infra).infer([3, 13, 4]))
    infer = calls(meeting / "calls.txt")
    # ([1, 2]; [3, 13, 4], [3], [4])
    assert infer.count("infer rank=0") == infer.count("infer rank=1") == 4
    infos = mapped.infra.cache_dict.entries_info()
    assert sorted(infos) == ["1", "13", "2", "3", "4"]
    assert [k for k, i in infos.items() if i["#type"] == "Error"] == ["13"]


@pytest.mark.timeout(240)
def test_a_multi_task_jobs_method_waiting_for_a_job_per_item_is_called_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tasks_per_node=2, each item waiting for a task's job: before each wait rank 0 gives
    back the items its method has not started; outside multi-task jobs it takes them back
    once the wait ended and the same call goes on, but here the call stopped after each
    item (the other ranks were told so at once), and the method was called again on the
    rest (4 calls for 4 items, on every rank). Rank 0 now tells the other ranks where the
    call stops only once it knows (the wait ended, the items taken back or not): one call
    on every rank, each task computed once."""
    from ranks import RankedJobPerItem

    from exca.graph import scheduler

    monkeypatch.setattr(scheduler._SHUFFLER, "shuffle", lambda items: None)  # (in order)
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    infra = {"folder": tmp_path / "cache", "cluster": "local", "tasks_per_node": 2, "max_jobs": 1}
    mapped = RankedJobPerItem(meeting=str(meeting), cache=str(tmp_path / "nested"), infra=infra)
    assert list(mapped.infer([1, 2, 3, 4])) == [11, 21, 31, 41]
    assert sorted(calls(meeting / "setups.txt")) == ["1,2,3,4 rank=0", "1,2,3,4 rank=1"]
    assert sorted(calls(meeting / "tasks.txt")) == ["1", "2", "3", "4"]
    met = [c for c in calls(meeting / "calls.txt")]
    assert sorted(met) == sorted(f"item {x} rank={r}" for x in (1, 2, 3, 4) for r in (0, 1))


@pytest.mark.timeout(240)
def test_calls_from_threads_of_a_multi_task_jobs_method_are_not_announced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A map's item asks for 8 other items of its map at once from a thread pool of its
    method (computed in the job, by those threads): rank 0's announcements are written by
    its job's thread only, without a lock (announced from those threads too, they took
    the same numbers: one was lost, and rank 1 waited for it until rank 0 ended), so
    those threads' calls, of the same map on other items (other nodes), are neither
    announced nor followed by the other ranks' job threads (their own pool threads make
    their calls, as for a pool): one call of the method in each rank's job thread, rank
    1 followed rank 0 to its end, and the job ends with every item."""
    from ranks import RankedFanOut

    from exca.graph import scheduler

    monkeypatch.setattr(scheduler._SHUFFLER, "shuffle", lambda items: None)  # (in order)
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    infra = {"folder": tmp_path / "cache", "cluster": "local", "tasks_per_node": 2, "max_jobs": 1}
    deps = [f"d{i}" for i in range(8)]
    mapped = RankedFanOut(meeting=str(meeting), deps={"x": deps}, infra=infra)
    assert list(mapped.infer(["x"])) == ["x(" + ",".join(f"{d}()" for d in deps) + ")"]
    assert sorted(calls(meeting / "calls.txt")) == ["infer x rank=0", "infer x rank=1"]
    # (rank 1 followed rank 0 to its end: announced from those threads too, two of them
    # took one number, and rank 1 waited for the next one until rank 0 ended)
    (log,) = (tmp_path / "cache").rglob("*_1_log.err")
    said = log.read_text()
    assert "raised on this rank" not in said and "stops following" not in said, said


@pytest.mark.timeout(240)
@pytest.mark.parametrize("only_rank", [0, 1])
def test_a_rank_whose_nested_calls_diverge_from_rank_zeros_says_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, only_rank: int
) -> None:
    """Items 1, 2 each call a task on every rank, after another one on one rank only:
    another rank than 0 cannot follow those calls. It raised, for each of its calls
    after the one that went another way, "This rank called <its call>, but rank 0 did
    not (its next announcement: <a raw message>)": every call seemed at fault. The first
    that diverged says so, rank 0's next call in words and what to do; a later one names
    the first; a call the others make alone does not stop them following the next ones."""
    from ranks import RankedDiverging, RankedNote

    from exca.graph import scheduler

    monkeypatch.setattr(scheduler._SHUFFLER, "shuffle", lambda items: None)  # (in order)
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    cache = str(tmp_path / "nested")
    infra = {"folder": tmp_path / "cache", "cluster": "local", "tasks_per_node": 2, "max_jobs": 1}
    mapped = RankedDiverging(meeting=str(meeting), cache=cache, only_rank=only_rank, infra=infra)
    assert list(mapped.infer([1, 2])) == [1, 2]  # (rank 0's)
    errors = calls(meeting / "errors.txt")
    run = {
        x: f"RankedNote.run of {RankedNote(x=x, infra={'folder': cache}).infra.uid()}"
        for x in (1, 2, 101, 102)
    }
    if only_rank == 1:  # (rank 1's own calls raise; its calls of every rank are followed)
        assert errors == [
            f"{x} rank=1: Rank 1 called {run[x]}, but rank 0 did not at this point (rank "
            f"0's next: its call of {run[x - 100]}): in a multi-task job every rank must "
            "make the same decorated calls, in the same order (rank 0 computes them, the "
            "others make them with it and read its outcome); a call made on some ranks only "
            "(e.g. under `if rank == 0`) cannot be followed: make it on every rank"
            for x in (101, 102)
        ]
        return
    assert len(errors) == 2, errors
    assert errors[0] == (
        f"1 rank=1: Rank 1 called {run[1]}, but rank 0 did not at this point (rank 0's "
        f"next: its call of {run[101]}): in a multi-task job every rank must make the same "
        "decorated calls, in the same order (rank 0 computes them, the others make them "
        "with it and read its outcome); a call made on some ranks only (e.g. under `if "
        "rank == 0`) cannot be followed: make it on every rank"
    )
    assert errors[1].startswith(
        f"2 rank=1: Rank 1 called {run[2]}: not followed either, this rank's calls went "
        f"another way than rank 0's at its call of {run[1]} (rank 0's next: its call of "
        f"{run[101]})"
    )


@pytest.mark.timeout(120)
def test_the_plan_of_a_task_another_process_computes_inline_says_wait_whatever_its_cluster(
    tmp_path: Path,
) -> None:
    """A task computed right now without a job (an inline call elsewhere): a run with a
    cluster waits for it and submits nothing, but its plan said compute, and listed a job
    in its Submissions, unless its own cluster was None (a probe)."""
    log, block = tmp_path / "calls.txt", tmp_path / "block"
    block.touch()
    infra = {"folder": tmp_path / "cache"}
    computing = Counted(log=str(log), block_flag=str(block), infra=infra)
    thread = threading.Thread(target=computing.process)
    thread.start()
    try:
        wait_until(lambda: len(calls(log)) == 1, timeout=60)
        planned = Counted(log=str(log), block_flag=str(block), infra={**infra, "cluster": "local"})
        plan = exca.graph.plan(planned.process.node())
        [entry] = plan.entries
        assert (entry.status, entry.action) == ("running", "wait"), entry.reason
        assert "computed right now by another process" in entry.reason
        assert "Submissions" not in str(plan)
        assert planned.infra.status() == "running"
    finally:
        block.unlink()
        thread.join(timeout=60)
    assert planned.process() == 2 and len(calls(log)) == 1


@pytest.mark.timeout(180)
def test_a_multi_task_job_whose_rank_zero_dies_ends(tmp_path: Path) -> None:
    """The other ranks follow rank 0's calls: a rank 0 killed left them waiting for its
    next call until the job's time limit (a review). They stop: the job fails."""
    from ranks import RankedTask

    infra = {"folder": tmp_path / "cache", "cluster": "local", "tasks_per_node": 2}
    task = RankedTask(meeting=str(tmp_path / "meeting"), rank_zero_dies=True, infra=infra)
    job = task.infra.job()
    _wait_for(job.done)
    assert task.infra.status() == "failed"
    logs = list((tmp_path / "cache").glob("*/logs/*/*/*_1_log.err"))
    assert logs and "stops following rank 0's calls" in logs[0].read_text()


def test_the_end_of_a_big_log_is_quoted_without_reading_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The end of a job's log an error quotes was read from the whole file: a 400 MB
    log took seconds and 1.6 GB of memory (here a log that does not read whole)."""
    import types

    from exca.graph.executors import RecordedLocalHandle, SubmititHandle

    log = tmp_path / "1_0_log.err"
    with open(log, "w") as f:
        f.write("epoch 1 step 123 loss 0.123456\n" * 30_000)
        f.write("Segmentation fault (core dumped)\n")
    whole = (Path.read_text, Path.read_bytes)

    def refuse(kind: int) -> tp.Callable[..., tp.Any]:
        def read(path: Path, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
            if path == log:
                raise MemoryError(f"{path} is too big to read whole")
            return whole[kind](path, *args, **kwargs)

        return read

    monkeypatch.setattr(Path, "read_text", refuse(0))
    monkeypatch.setattr(Path, "read_bytes", refuse(1))
    job = types.SimpleNamespace(job_id="1", paths=types.SimpleNamespace(stderr=log))
    said = SubmititHandle(job, "slurm")._log_said(tail=True)
    assert said.startswith(f"; its log: {log}\nthe end of that log:\n")
    assert said.splitlines()[-1] == "    Segmentation fault (core dumped)"
    assert len(said.splitlines()) == 2 + 10  # (its last 10 lines)
    record = types.SimpleNamespace(job_id="1", stderr=log, cluster="local")
    how = RecordedLocalHandle(record).ended_how()
    assert how.startswith("local job 1 ended without writing its result")
    assert how.splitlines()[-1] == "    Segmentation fault (core dumped)"  # (quoted)


@pytest.mark.timeout(120)
def test_a_retry_job_that_lost_the_submission_to_another_call_retries_its_lost_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short_result_wait: None
) -> None:
    """A job() in mode retry deciding to submit while another call submits the same
    config follows that call's job (one job, not two); if that job then ends without a
    result, the retry computes it, once, as when it found the job already running. It
    followed it without the retry, and raised "was cancelled" (a review)."""
    from exca.graph import submitting

    log = tmp_path / "calls.txt"
    block = tmp_path / "block-flag"
    block.touch()
    waiting, recorded = threading.Event(), threading.Event()
    claim = submitting._claim

    def late_claim(*args: tp.Any) -> None:
        if threading.current_thread().name == "retry":  # (decided: submits once A did)
            waiting.set()
            recorded.wait(timeout=60)
        claim(*args)

    monkeypatch.setattr(submitting, "_claim", late_claim)
    retry = make(tmp_path, "local", x=14, block_flag=str(block), infra={"mode": "retry"})
    out: list[tp.Any] = []
    thread = threading.Thread(target=lambda: out.append(retry.infra.job()), name="retry")
    thread.start()
    assert waiting.wait(timeout=60)
    first = make(tmp_path, "local", x=14, block_flag=str(block)).infra.job()
    recorded.set()
    thread.join(timeout=60)
    (follower,) = out
    assert follower.job_id == first.job_id  # (it follows that job: one job)
    _wait_for(lambda: len(calls(log)) == 1)  # computing in the job
    first.cancel()
    _wait_for(first.done)
    block.unlink()
    assert follower.result() == 28  # (computed again, once)
    assert len(calls(log)) == 2


def test_squeue_answers_read_by_several_threads_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The states squeue said last are kept per process and read by every thread waiting
    for jobs (a waiting run's thread submitting during inline work, user threads): one
    thread forgot the states of its jobs while iterating the states another thread was
    adding, "dictionary changed size during iteration" (squeue stands in: the answer's
    parsing is what is checked)."""
    from exca.graph import registry

    def squeue(args: list[str]) -> subprocess.CompletedProcess[str]:
        base = args[args.index("-j") + 1]
        lines = [f"{base}_{i}|PENDING|{base}|JobHeldUser\n" for i in range(50)]
        return subprocess.CompletedProcess(args, 0, "".join(lines), "")

    monkeypatch.setattr(registry, "_squeue_call", squeue)
    for name in ("_STATES", "_NEVER", "_HELD", "_HELD_TOLD"):
        monkeypatch.setattr(registry, name, {})
    errors: list[BaseException] = []
    said: list[str] = []

    def look(base: str) -> None:
        try:
            for _ in range(1500):
                registry._squeue([base])
                said.append(registry.as_jobs([f"{base}_{i}" for i in range(0, 50, 7)]))
                registry.tell_held(f"{base}_3")
        except BaseException as error:  # (raised here below)
            errors.append(error)

    race(*(functools.partial(look, str(base)) for base in (1, 2, 3)))
    assert not errors, errors
    assert said[-1].startswith("pending as job(s)") and "held: JobHeldUser" in said[-1]


_CELL_RAISING = """
import exca, pydantic

class CellTask(pydantic.BaseModel):
    x: int = 1
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        return helper(self.x)

def helper(x):
    y = x + 1
    raise ValueError(f"bad {y}")
"""


@pytest.mark.timeout(120)
def test_a_job_of_a_notebook_cell_shows_its_lines_in_its_traceback(tmp_path: Path) -> None:
    """A method defined in a notebook's cell (its lines in linecache only, as IPython
    registers them) failing in a local job: the traceback the caller got showed the
    cell's frames without their lines (the job's process cannot read them). They are
    sent with the job, and shown, for the method and the cell's helpers."""
    import linecache
    import traceback

    name = "<ipython-input-7-0123456789ab>"
    lines = _CELL_RAISING.splitlines(True)
    linecache.cache[name] = (len(_CELL_RAISING), None, lines, name)  # (as IPython does)
    try:
        namespace: dict[str, tp.Any] = {"__name__": "__main__"}  # (a notebook's classes)
        exec(compile(_CELL_RAISING, name, "exec", dont_inherit=True), namespace)
        task = namespace["CellTask"](infra={"folder": tmp_path, "cluster": "local"})
        with pytest.raises(ValueError, match="bad 2") as info:
            task.run()
    finally:
        linecache.cache.pop(name, None)
    shown = "".join(traceback.format_exception(info.value))
    assert "return helper(self.x)" in shown, shown  # (the method's line)
    assert 'raise ValueError(f"bad {y}")' in shown, shown  # (its helper's)


def test_a_force_that_cannot_remove_the_old_result_fails_instead_of_returning_it(
    tmp_path: Path,
) -> None:
    """mode=force whose removal of the old result failed (an OSError writing its
    tombstone: EIO, a full disk) returned that old result as the forced one, computing
    nothing and saying nothing. It raises that error now; the old result stays readable,
    and a later force computes."""
    offset = tmp_path / "offset.txt"
    assert make(tmp_path, None, x=3, offset_file=str(offset)).process() == 6
    offset.write_text("100")  # (a recomputation gives 106)
    forced = make(tmp_path, None, x=3, offset_file=str(offset), infra={"mode": "force"})
    real = CacheDict._tombstone
    failed: list[str] = []

    def tombstone_failing_once(self: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        if not failed:
            failed.append("tombstone")
            raise OSError(5, "Input/output error (injected)")
        return real(self, *args, **kwargs)

    with (
        mock.patch.object(CacheDict, "_tombstone", tombstone_failing_once),
        pytest.raises(OSError, match="injected"),
    ):
        forced.process()
    assert failed and len(calls(tmp_path / "calls.txt")) == 1  # (nothing computed)
    assert make(tmp_path, None, x=3, offset_file=str(offset)).process() == 6  # (kept)
    again = make(tmp_path, None, x=3, offset_file=str(offset), infra={"mode": "force"})
    assert again.process() == 106
    assert make(tmp_path, None, x=3, offset_file=str(offset)).process() == 106


def test_a_timed_out_slurm_job_read_back_from_its_record_names_its_time_limit(
    tmp_path: Path,
) -> None:
    """An array element that timed out, described by a later process (its submitit job
    rebuilt from its record, its log folder <logs>/<array>_<index>): the time limit is read
    from the array's sbatch script, in <logs>/<array>; the element's own folder has none."""
    import submitit

    from exca.graph.executors import SubmititHandle

    logs = tmp_path / "logs"
    (logs / "84").mkdir(parents=True)
    (logs / "84" / "84_submission.sh").write_text("#!/bin/bash\n#SBATCH --time=7\nsrun ...\n")
    job = submitit.SlurmJob(folder=logs / "84_2", job_id="84_2")  # (as registry.submitit_job)
    how = SubmititHandle(job, "slurm").ended_how(known=("TIMEOUT", ""))
    assert (
        how
        == "job 84_2 timed out at its time limit (timeout_min=7: give its infra a larger one) (state TIMEOUT)"
    )
