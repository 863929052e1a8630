"""TaskInfra / MapInfra / job arrays on the real one-node Slurm cluster (DESIGN "Execution
backends"; SPEC §1, §2, §6 find_slurm_job, §8, §10 and the [ours] error rules).

Few, small jobs: the cluster has 2 CPUs. Every method appends a line to a file named in
its config (the node shares this machine's disk), so tests count the real calls.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import re
import threading
import time
import typing as tp
from pathlib import Path

import filelog
import pytest
from filelog import lines
from racing import Background
from slurm_jobs import (  # (the configs the jobs run: see slurm_jobs)
    BlocksEach,
    BlocksOne,
    Heavy,
    Lingering,
    LingeringMap,
    PastTheWarning,
    SlowToStore,
    SlurmArrays,
    SlurmCallsItself,
    SlurmEnv,
    SlurmMap,
    SlurmParent,
    SlurmPing,
    SlurmPong,
    SlurmTask,
)

import exca
from exca.graph import executors, registry
from exca.graph.errors import JobFailedError, NodeFailures
from slurm_cluster import SlurmCluster, sacct_states, squeue_ids

pytestmark = pytest.mark.slurm

WAIT_S = 120.0  # bound on waits for Slurm (never reached when things work)
wait_until = functools.partial(filelog.wait_until, timeout=WAIT_S, poll=0.2)


@pytest.fixture
def ctl(tmp_path: Path) -> tp.Iterator[Path]:
    folder = tmp_path / "ctl"
    folder.mkdir()
    (tmp_path / "cache").mkdir()
    yield folder
    (folder / "block").unlink(missing_ok=True)  # let a blocked job end, whatever happened


def resources(cluster: SlurmCluster, **extra: tp.Any) -> dict[str, tp.Any]:
    return {
        "cpus_per_task": 1,
        "timeout_min": 5,
        "slurm_partition": cluster.partition,
        **extra,
    }


def task(tmp_path: Path, ctl: Path, slurm: SlurmCluster, x: int = 1, **infra: tp.Any) -> SlurmTask:
    settings = {"folder": tmp_path / "cache", "cluster": "slurm", **resources(slurm), **infra}
    return SlurmTask(x=x, ctl=str(ctl), infra=settings)


def records(folder: Path | None) -> list[dict[str, tp.Any]]:
    assert folder is not None
    return [json.loads(p.read_text()) for p in sorted((folder / "jobs").glob("*.json"))]


def in_sacct(job_id: str) -> bool:
    """sacct knows the job (records reach the accounting database asynchronously: poll)."""
    try:
        wait_until(lambda: job_id in sacct_states([job_id]), timeout=60)
    except TimeoutError:
        return False
    return True


@pytest.fixture
def quick_queue_looks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wait asks squeue about a job at most every 5 s (QUEUE_LOOK_S): tests that watch
    two looks of a wait take 1 s per look."""
    monkeypatch.setattr(registry, "QUEUE_LOOK_S", 1.0)


@pytest.fixture
def squeue_looks(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The looks at the queue waits make (the job ids each asked squeue about), in
    order: a test waits for the next ones rather than for their period."""
    looks: list[list[str]] = []
    look = registry._squeue
    monkeypatch.setattr(registry, "_squeue", lambda bases: looks.append(bases) or look(bases))
    return looks


def more_looks(looks: list[list[str]], count: int) -> tp.Callable[[], bool]:
    """Whether ``count`` looks at the queue were made since this was asked."""
    seen = len(looks)
    return lambda: len(looks) >= seen + count


@pytest.fixture
def short_result_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit waits 15 s for the result pickle of a job that has none, each time exca asks
    how a dead job ended; 1 s is enough on a local disk."""
    import submitit.core.core

    monkeypatch.setattr(submitit.core.core.Job, "_results_timeout_s", 1)


def wait_until_worker_killed(obj: tp.Any, job_id: str) -> None:
    """Wait until Slurm has killed the worker of a cancelled job (found through its claim
    file, which records its pid and Slurm job id). submitit's worker ignores SIGTERM; the
    batch shell does not, and once it is gone Slurm kills what is left of the job (with
    proctrack/pgid as here, or cgroup on real clusters)."""
    from exca.storage.process import hostname

    folder = obj.infra.uid_folder()
    assert folder is not None
    pids = [
        int(owner["pid"])
        for path in (folder / "claims").glob("*.claim")
        if str((owner := json.loads(path.read_text())["owner"])["job_id"]) == job_id
        and owner["host"] == hostname()
    ]

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(lambda: all(gone(pid) for pid in pids))


def short_cancel_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """clear_job() waits (5 s at most) for the cancelled job's worker to end: return
    sooner, so the worker outlives it (it may, for KillWait after its SIGTERM)."""
    monkeypatch.setattr(exca.infra.task, "CANCEL_WAIT_S", 0.5)


# --- one task ------------------------------------------------------------------------------
@pytest.mark.timeout(240)
def test_slurm_task(tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster) -> None:
    obj = task(tmp_path, ctl, slurm_cluster, x=7)
    job = obj.infra.job()
    assert job.job_id.isdigit(), job.job_id
    assert job.result() == 21
    assert obj.process() == 21
    assert obj.infra.status() == "completed"
    assert lines(ctl / "calls.txt") == ["7"]
    stdout = job.stdout()
    assert stdout is not None and "slurm task x=7" in stdout
    assert in_sacct(job.job_id)
    # the record, the link, and a fresh instance (cache hit: no new job)
    folder = obj.infra.uid_folder()
    (record,) = records(folder)
    assert record["job_id"] == job.job_id and record["cluster"] == "slurm"
    assert folder is not None and (folder / "submitit").resolve() == Path(record["logs"]).resolve()
    assert task(tmp_path, ctl, slurm_cluster, x=7).process() == 21
    assert lines(ctl / "calls.txt") == ["7"]
    # find_slurm_job finds it, with its configs
    found = exca.helpers.find_slurm_job(job.job_id, folder=tmp_path / "cache")
    assert str(found.job_id) == job.job_id
    assert found.config["x"] == 7
    assert found.uid_config["x"] == 7
    assert "slurm task x=7" in (found.stdout() or "")
    found = exca.helpers.find_slurm_job(job.job_id)  # (by scontrol: the cache above its log)
    assert found.uid_config["x"] == 7


def squeue_reason(job_id: str) -> str | None:
    """squeue's reason for a job (an array element: ``<array>_<index>``) still queued."""
    import subprocess

    out = subprocess.run(
        ["squeue", "-h", "-r", "-o", "%i|%r", "-j", job_id.split("_")[0]],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    reasons = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
    return reasons.get(job_id)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("kind", ["task", "array"])
def test_a_job_whose_log_folder_is_made_late_computes(
    tmp_path: Path,
    ctl: Path,
    slurm_cluster: SlurmCluster,
    monkeypatch: pytest.MonkeyPatch,
    short_result_wait: None,
    kind: str,
) -> None:
    """submitit makes a job's folder, where Slurm opens its log file, only once sbatch
    answered with its id (one element after another for an array): Slurm could start
    the job before, failed it at once (sacct's ExitCode 0:53), and the call raised
    "Slurm could not start it: it could not open the job's log file". Here each folder
    is made only once Slurm failed its job, or holds it: the jobs are sent held and
    released once their folders exist, and compute."""
    import submitit.core.utils

    make = submitit.core.utils.JobPaths.move_temporary_file

    def made_once_failed_or_held(paths: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> None:
        job_id = str(paths.job_id)
        if kind == "task" or "_" in job_id:  # (an array's own folder holds no log)
            wait_until(
                lambda: (
                    squeue_reason(job_id) == "JobHeldUser"
                    or sacct_states([job_id]).get(job_id) == "FAILED"
                )
            )
        make(paths, *args, **kwargs)

    monkeypatch.setattr(
        submitit.core.utils.JobPaths, "move_temporary_file", made_once_failed_or_held
    )
    if kind == "task":
        assert task(tmp_path, ctl, slurm_cluster, x=5).process() == 15
        assert lines(ctl / "calls.txt") == ["5"]
        return
    base = task(tmp_path, ctl, slurm_cluster)
    with base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(x=x) for x in (5, 6))
    assert [task(tmp_path, ctl, slurm_cluster, x=x).process() for x in (5, 6)] == [15, 18]
    assert sorted(lines(ctl / "calls.txt")) == ["5", "6"]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("option", ["hold", "hol"])
def test_a_job_the_user_holds_is_not_released(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, option: str
) -> None:
    """exca sends its jobs held and releases them once their folders exist: not a job
    whose slurm_additional_parameters hold it (``hol``: sbatch takes a start of an
    option), which waits for the user's `scontrol release`."""
    import subprocess

    obj = task(tmp_path, ctl, slurm_cluster, x=9, slurm_additional_parameters={option: True})
    job = obj.infra.job()
    try:
        assert squeue_reason(job.job_id) == "JobHeldUser"
        subprocess.run(["scontrol", "release", job.job_id], check=True, timeout=30)
        assert job.result() == 27
    finally:
        subprocess.run(["scancel", job.job_id], check=False, timeout=30)


@pytest.mark.timeout(240)
def test_jobs_that_cannot_be_released_are_cancelled(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs exca held until their folders existed, which `scontrol release` then fails to
    release (tried 3 times), would wait held for good: they are cancelled, the error says
    what failed, and the next call submits them again."""
    import shutil
    import subprocess

    real = shutil.which("scontrol")
    shim, tries = tmp_path / "shim", tmp_path / "tries"
    shim.mkdir()
    (shim / "scontrol").write_text(
        f"#!/bin/sh\nif [ \"$1\" = release ]; then echo $2 >> '{tries}'; "
        "echo 'slurm_suspend error: Unexpected message received' >&2; exit 1; fi\n"
        f"exec '{real}' \"$@\"\n"
    )
    (shim / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")
    obj = task(tmp_path, ctl, slurm_cluster, x=8)
    with pytest.raises(RuntimeError, match="scontrol release") as failed:
        obj.process()
    (job_id,) = set(lines(tries))
    assert lines(tries) == [job_id] * 3
    said = str(failed.value)
    assert "Unexpected message received" in said and "were cancelled" in said, said
    left = subprocess.run(
        ["squeue", "-h", "-o", "%i", "-j", job_id], capture_output=True, text=True, timeout=30
    )
    assert left.stdout.strip() == ""  # (cancelled)
    monkeypatch.undo()
    assert task(tmp_path, ctl, slurm_cluster, x=8).process() == 24
    assert lines(ctl / "calls.txt") == ["8"]


@pytest.mark.timeout(240)
def test_a_job_whose_log_folder_is_missing_when_it_starts_says_so(
    tmp_path: Path,
    ctl: Path,
    slurm_cluster: SlurmCluster,
    monkeypatch: pytest.MonkeyPatch,
    short_result_wait: None,
) -> None:
    """Slurm cannot start a job whose log folder (`--output`'s) is not there on the node
    (a cache on a login node's /tmp, say): sacct's ExitCode 0:53, which was said "its
    process died (killed by signal 53)". Here the job's folder is moved away before exca
    releases the job."""
    from exca.graph import slurmhold

    release = slurmhold.release

    def folder_gone_then_released(job_ids: tp.Sequence[str], *args: tp.Any) -> None:
        for job_id in job_ids:
            for folder in (tmp_path / "cache").rglob(job_id):
                folder.rename(folder.with_name(f"{job_id}-moved"))
        release(job_ids, *args)

    monkeypatch.setattr(slurmhold, "release", folder_gone_then_released)
    obj = task(tmp_path, ctl, slurm_cluster, x=5)
    with pytest.raises(JobFailedError) as failed:
        obj.process()
    said = str(failed.value)
    assert "could not open the job's log file (exit code 0:53)" in said, said
    assert "signal 53" not in said
    assert f"({tmp_path / 'cache'}" in said  # (its log folder named)
    assert lines(ctl / "calls.txt") == []  # (the method never ran)


@pytest.mark.timeout(240)
def test_a_method_calling_itself_in_its_slurm_job_is_refused(
    tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    """The inner call found its own job running (then its own claim) and waited for it,
    to the job's time limit."""
    settings = {"folder": tmp_path / "cache", "cluster": "slurm", **resources(slurm_cluster)}
    obj = SlurmCallsItself(infra=settings)
    with pytest.raises(RuntimeError, match="this very thread"):
        obj.process()
    assert obj.infra.status() == "failed"
    assert len(records(obj.infra.uid_folder())) == 1  # (no job submitted from the job)


@pytest.mark.timeout(240)
def test_methods_calling_each_other_through_slurm_jobs_are_refused(
    tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    """Pong's job waited for Ping's job, which waited for Pong's, to their time limit."""
    settings = {"folder": tmp_path / "cache", "cluster": "slurm", **resources(slurm_cluster)}
    ping = SlurmPing(pong_infra=settings, infra=settings)
    with pytest.raises(RuntimeError, match="caller of this job") as info:
        ping.process()
    assert ping.infra.uid() in str(info.value)
    assert ping.infra.status() == "failed"
    pong = SlurmPong(ping=ping.model_dump(), infra=settings)
    assert pong.infra.status() == "failed"
    assert len(records(pong.infra.uid_folder())) == 1  # (no job submitted from its job)
    assert len(records(ping.infra.uid_folder())) == 1


# --- a map packed into one array ----------------------------------------------------------
@pytest.mark.timeout(240)
def test_slurm_map_is_one_array(tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster) -> None:
    infra = {"folder": tmp_path / "cache", "cluster": "slurm", "max_jobs": 4}
    mapper = SlurmMap(ctl=str(ctl), infra={**infra, **resources(slurm_cluster)})
    items = list(range(1000))
    assert list(mapper.process(items)) == [i + 1 for i in items]
    # every item computed exactly once, by 4 jobs of 250 items
    chunks = [line.split() for line in lines(ctl / "calls.txt")]
    assert sorted(len(c) for c in chunks) == [250] * 4
    assert collections.Counter(int(i) for c in chunks for i in c) == dict.fromkeys(items, 1)
    recs = records(mapper.infra.uid_folder())
    ids = sorted(r["job_id"] for r in recs)
    assert len(ids) == 4
    assert all(r["cluster"] == "slurm" for r in recs)
    bases = {i.split("_")[0] for i in ids}
    assert len(bases) == 1, ids  # one sbatch array
    (base,) = bases
    assert base.isdigit()
    assert sorted(int(i.split("_")[1]) for i in ids) == [0, 1, 2, 3]
    # sacct knows the array and its 4 elements
    wait_until(lambda: len([j for j in sacct_states([base]) if j.startswith(base + "_")]) == 4)
    assert sorted(j for j in sacct_states([base]) if "_" in j) == ids
    # cached: nothing more is submitted
    assert list(SlurmMap(ctl=str(ctl), infra={**infra}).process([999, 0])) == [1000, 1]
    assert len(lines(ctl / "calls.txt")) == 4
    assert len(records(mapper.infra.uid_folder())) == 4
    # a node's job: the missing items only, sent without waiting; its Slurm job id
    job = mapper.process.node([0, 1000, 1001]).job()
    assert job.job_id.split("_")[0].isdigit() and job.job_id.split("_")[0] != base
    assert job.result() == [1, 1001, 1002] and job.state == "COMPLETED"
    later = [i for line in lines(ctl / "calls.txt")[4:] for i in line.split()]
    assert sorted(later) == ["1000", "1001"]  # (item 0 was cached)


@pytest.mark.timeout(300)
def test_slurm_forced_map_frees_the_space_of_what_it_replaces(
    tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    """The forcing jobs free the files of the jobs whose outputs they replace (ended, on
    the same node: the jobs are pinned to one; a job on another host counts as ended an
    hour after its last write): the folder does not grow with each forced run."""
    items = list(range(200))
    sizes = []
    for offset in (0, 1000, 2000):
        infra = {
            "folder": tmp_path / "cache",
            "cluster": "slurm",
            "mode": "force" if offset else "cached",
            "max_jobs": 2,
            "slurm_additional_parameters": {"nodelist": slurm_cluster.node},
            **resources(slurm_cluster),
        }
        mapper = SlurmArrays(offset=offset, infra=infra)
        assert [float(o[0]) for o in mapper.process(items)] == [i + offset for i in items]
        folder = mapper.infra.uid_folder()
        assert folder is not None
        sizes.append(sum(f.stat().st_size for f in (folder / "data").iterdir()))
        then = time.time() - 300  # (only files idle for 2 minutes are freed)
        for index in folder.glob("*-info.jsonl"):
            os.utime(index, (then, then))
    assert sizes[0] >= 200 * 8000
    assert sizes == [sizes[0]] * 3


# --- cluster="auto" -------------------------------------------------------------------------
@pytest.mark.timeout(240)
def test_auto_cluster(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    executors.slurm_answers.cache_clear()
    try:
        obj = task(tmp_path, ctl, slurm_cluster, x=2, cluster="auto")
        job = obj.infra.job()
        assert job.job_id.isdigit()
        assert job.result() == 6
        (record,) = records(obj.infra.uid_folder())
        assert record["cluster"] == "slurm"
        assert in_sacct(job.job_id)
        # no controller answering: local
        monkeypatch.setattr(executors, "slurm_answers", lambda: False)
        local = task(tmp_path, ctl, slurm_cluster, x=3, cluster="auto")
        assert local.process() == 9
        (record,) = records(local.infra.uid_folder())
        assert record["cluster"] == "local"
        assert record["job_id"].isdigit()
    finally:
        monkeypatch.undo()
        executors.slurm_answers.cache_clear()
    assert lines(ctl / "calls.txt") == ["2", "3"]


# --- job arrays -----------------------------------------------------------------------------
@pytest.mark.timeout(240)
def test_slurm_job_array(tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster) -> None:
    base = task(tmp_path, ctl, slurm_cluster)
    inline = task(tmp_path, ctl, slurm_cluster, cluster=None)
    assert inline.infra.clone_obj(x=1).process() == 3  # 2 of the 5 are cached already
    assert inline.infra.clone_obj(x=3).process() == 9
    with base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(x=x) for x in range(5))
    submitted = [array[i] for i in (0, 2, 4)]
    ids = sorted(r["job_id"] for t in submitted for r in records(t.infra.uid_folder()))
    assert len(ids) == 3
    bases = {i.split("_")[0] for i in ids}
    assert len(bases) == 1, ids  # one array of 3 elements
    assert sorted(int(i.split("_")[1]) for i in ids) == [0, 1, 2]
    for i in (1, 3):  # cached: not resubmitted
        folder = array[i].infra.uid_folder()
        assert folder is not None and not (folder / "jobs").exists()
    wait_until(lambda: all(t.infra.status() == "completed" for t in array))
    assert [t.process() for t in array] == [0, 3, 6, 9, 12]
    assert [t.infra.job().result() for t in array] == [0, 3, 6, 9, 12]
    assert collections.Counter(lines(ctl / "calls.txt")) == dict.fromkeys("01234", 1)
    (base_id,) = bases
    wait_until(lambda: len([j for j in sacct_states([base_id]) if "_" in j]) == 3)


@pytest.mark.timeout(240)
def test_reading_an_arrays_results_one_by_one_says_the_wait_once(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster
) -> None:
    """`[c.process() for c in array]` while the array runs: each call logged an INFO line
    saying it waits for its element (20 lines for 40 configs, a probe). The first wait on
    the array is said; the next ones are logged at DEBUG. Each config is released by the
    log record of its own wait: every call does wait."""
    import logging

    xs = (1, 2, 3)
    for x in xs:
        (ctl / f"block-{x}").touch()
    settings = {"folder": tmp_path / "cache", "cluster": "slurm", **resources(slurm_cluster)}
    base = BlocksEach(ctl=str(ctl), infra=settings)
    with base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(x=x) for x in xs)
    said: list[int] = []

    class Releasing(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if "is computed elsewhere" in message:
                said.append(record.levelno)
                found = re.search(r"x=(\d+)", message)
                assert found is not None, message
                (ctl / f"block-{found.group(1)}").unlink(missing_ok=True)

    logger = logging.getLogger("exca")
    handler, level = Releasing(logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        assert [config.process() for config in array] == list(xs)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        for x in xs:
            (ctl / f"block-{x}").unlink(missing_ok=True)
    assert said == [logging.INFO, logging.DEBUG, logging.DEBUG]


@pytest.mark.timeout(240)
def test_an_array_element_cancelled_while_running_is_said_cancelled(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    """Right after scancel of a running element, sacct did not know it yet: the call
    said "ended with state UNKNOWN ... cancelled before it started?" (a probe saw it in
    2 runs of 4); later calls said "was cancelled"."""
    import subprocess

    (ctl / "block").touch()
    settings = {"folder": tmp_path / "cache", "cluster": "slurm", **resources(slurm_cluster)}
    base = BlocksOne(ctl=str(ctl), infra=settings)
    with base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(x=x) for x in (1, 2))
    wait_until(lambda: "1" in lines(ctl / "calls.txt"))  # x=1 runs, blocked
    blocked = array[0]
    (record,) = records(blocked.infra.uid_folder())
    subprocess.run(["scancel", record["job_id"]], check=True)
    with pytest.raises(JobFailedError, match=rf"job {record['job_id']} was cancelled"):
        blocked.process()
    wait_until_worker_killed(blocked, record["job_id"])  # type: ignore[arg-type]


@pytest.mark.timeout(240)
def test_a_job_of_an_array_element_cancelled_while_pending_ends(
    tmp_path: Path,
    ctl: Path,
    slurm_cluster: SlurmCluster,
    short_result_wait: None,
    quick_queue_looks: None,
) -> None:
    """sacct keeps no record of an array element cancelled before it started: submitit
    reads its state UNKNOWN for good, and job.result() / job.wait() waited forever (a
    probe), while the call, status() and the plan said it failed. Then job.state said
    RUNNING until the wait saw it gone, then FAILED, and its error "ended with state
    UNKNOWN ...: cancelled before it started?" (a review): CANCELLED, "was cancelled"."""
    (ctl / "block").touch()
    settings = {"folder": tmp_path / "cache", "cluster": "slurm", **resources(slurm_cluster)}
    base = BlocksOne(ctl=str(ctl), infra=settings)
    # (three: one pending element left is the array's own record, which sacct keeps)
    with base.infra.job_array(max_workers=1) as array:
        array.extend(base.infra.clone_obj(x=x) for x in (1, 2, 3))
    wait_until(lambda: "1" in lines(ctl / "calls.txt"))  # x=1 runs: the others wait
    pending = array[2].infra.job()
    assert pending.state == "PENDING" and not pending.done()
    pending.handle.job.watcher.update()  # type: ignore[union-attr]  (sacct: PENDING, for good)
    pending.cancel()
    # (gone from the queue, not yet taken for ended: it never ran, it said RUNNING)
    assert pending.state in ("PENDING", "CANCELLED")
    with pytest.raises(JobFailedError, match=rf"{re.escape(pending.job_id)}") as info:
        pending.result()
    # (Slurm keeps no record of it: it said FAILED, and "ended with state UNKNOWN")
    assert pending.done() and array[2].infra.status() == "failed"
    assert pending.state == "CANCELLED"
    said = f"job {pending.job_id} was cancelled before it started"
    assert said in str(info.value) and "UNKNOWN" not in str(info.value), str(info.value)
    (ctl / "block").unlink()
    assert [array[i].infra.job().result() for i in (0, 1)] == [1, 2]
    assert lines(ctl / "calls.txt") == ["1", "2"]  # (the cancelled element never ran)


class LaggingSacct:
    """exca's sacct calls answered as sacct answered them at ``freeze()`` (its rows about
    one array): sacct's lag behind the queue, which lasts ~3 s here after an scancel
    (seconds or more on a loaded cluster), held for as long as a test needs it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = registry._sacct
        self.frozen = False
        self.seen: dict[tuple[str, bool], list[list[str]]] = {}
        self.served = 0
        monkeypatch.setattr(registry, "_sacct", self)

    def __call__(self, fields: str, job_ids: tp.Sequence[str], runs: bool = False) -> tp.Any:
        key = (fields, runs)
        if self.frozen and key in self.seen:
            self.served += 1
            return self.seen[key]
        rows = self.real(fields, job_ids, runs)
        if not self.frozen:
            self.seen[key] = rows
        return rows

    def freeze(self, job_id: str) -> None:
        """Record sacct's answers (those exca asks for a job's ending) as they are now."""
        registry.slurm_endings([job_id])
        registry.sacct_states([job_id])
        self.frozen = True


def said_for(config: tp.Any) -> list[str]:
    """What a user reads of a config whose job ended: its status, its failure(), the
    line of `exca list` (exca.ops.inspect), the error of a call."""
    with pytest.raises(JobFailedError) as info:
        config.process()
    listed = {i.folder: i.error for i in exca.ops.inspect(Path(config.infra.folder))}
    return [
        config.infra.status(),
        str(config.infra.failure()),
        str(listed[config.infra.uid_folder()]),
        str(info.value),
    ]


@pytest.mark.timeout(240)
def test_an_array_element_cancelled_while_pending_is_not_said_pending(
    tmp_path: Path,
    ctl: Path,
    slurm_cluster: SlurmCluster,
    short_result_wait: None,
    quick_queue_looks: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """scancel of one element of an array while the others still wait: sacct then lists
    the array's pending elements without it, and submitit keeps the state it read last:
    the call said "job N ended with state PENDING without writing its result" (a probe,
    a map chunk's job). For the ~3 s sacct lags behind the queue its grouped row still
    lists the element PENDING: the job, gone from the queue two looks later, was said
    "ended with state UNKNOWN ...: it never started" (QUEUE_LOOK_S=1), and `exca list`
    "ended with state PENDING". The same words whatever the lag: held here, then over."""
    import subprocess

    later = {"begin": "now+600"}  # (pending until cancelled)
    settings = {"folder": tmp_path / "cache", "cluster": "slurm", **resources(slurm_cluster)}
    base = BlocksOne(ctl=str(ctl), infra={**settings, "slurm_additional_parameters": later})
    with base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(x=x) for x in (1, 2, 3))
    jobs = [config.infra.job() for config in array]
    sacct = LaggingSacct(monkeypatch)
    try:
        cancelled = jobs[2]
        submitit_job = cancelled.handle.job  # type: ignore[union-attr]

        def read_pending() -> bool:
            submitit_job.watcher.update()
            return str(submitit_job.state) == "PENDING"

        wait_until(read_pending)  # (sacct lists it, with the array's pending elements)
        sacct.freeze(cancelled.job_id)
        subprocess.run(["scancel", cancelled.job_id], check=True, timeout=30)
        with pytest.raises(JobFailedError, match=re.escape(cancelled.job_id)) as info:
            cancelled.result()
        lagging = [str(info.value), *said_for(array[2])]
        assert sacct.served  # (the lag held: exca asked sacct while it lagged)
        sacct.frozen = False
        wait_until(lambda: registry.sacct_states([cancelled.job_id])[cancelled.job_id] == "UNKNOWN")
        settled = said_for(array[2])
    finally:
        subprocess.run(["scancel", jobs[0].job_id.split("_")[0]], check=False, timeout=30)
    for status, *words in (lagging[1:], settled):
        assert status == "failed"
        for text in words + lagging[:1]:
            assert "PENDING" not in text and "UNKNOWN" not in text, text
            assert f"job {cancelled.job_id} was cancelled before it started" in text, text
    assert cancelled.state == "CANCELLED"
    assert lines(ctl / "calls.txt") == []


@pytest.mark.timeout(240)
def test_a_plain_job_cancelled_while_pending_is_worded_as_an_array_element(
    tmp_path: Path,
    ctl: Path,
    slurm_cluster: SlurmCluster,
    short_result_wait: None,
    quick_queue_looks: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plain (non-array) job cancelled while pending, while sacct lags (~3 s here): its
    call, status() and failure() said "cancelled before it started?", but `exca list` a
    generic "ended without writing its result" line, where an array element's is worded
    as the call (sacct's PENDING row of a job gone from the queue tells nothing of how it
    ended). Listed as the call says it; once sacct caught up, "cancelled before it
    started" everywhere."""
    import subprocess

    later = {"begin": "now+600"}  # (pending until cancelled)
    settings = {"folder": tmp_path / "cache", "cluster": "slurm", **resources(slurm_cluster)}
    config = BlocksOne(ctl=str(ctl), x=2, infra={**settings, "slurm_additional_parameters": later})
    job = config.infra.job()
    assert "_" not in job.job_id  # (a plain job)
    sacct = LaggingSacct(monkeypatch)
    try:
        submitit_job = job.handle.job  # type: ignore[union-attr]

        def read_pending() -> bool:
            submitit_job.watcher.update()
            return str(submitit_job.state) == "PENDING"

        wait_until(read_pending)  # (sacct lists it pending)
        sacct.freeze(job.job_id)
        subprocess.run(["scancel", job.job_id], check=True, timeout=30)
        with pytest.raises(JobFailedError, match=re.escape(job.job_id)) as info:
            job.result()
        lagging = [str(info.value), *said_for(config)]
        assert sacct.served  # (the lag held: exca asked sacct while it lagged)
        sacct.frozen = False
        wait_until(lambda: registry.sacct_states([job.job_id])[job.job_id] != "PENDING")
        settled = said_for(config)
    finally:
        subprocess.run(["scancel", job.job_id], check=False, timeout=30)
    for status, *words in (lagging[1:], settled):
        assert status == "failed"
        for text in words + lagging[:1]:
            assert "PENDING" not in text and "cancelled before it started" in text, text
            assert "killed, out of memory, cancelled...?" not in text, text  # (generic)
    for text in lagging + settled[1:]:  # (exca list too, as of an array element)
        assert "UNKNOWN" not in text, text
    assert lines(ctl / "calls.txt") == []


@pytest.mark.timeout(240)
def test_an_element_that_ran_is_not_said_cancelled_before_it_started_while_sacct_lags(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running array element cancelled while sacct still listed it RUNNING: `exca list`
    said it "ended with state UNKNOWN ...: cancelled before it started?" (its row, not
    final, not read), though it ran and wrote a log; before that, "ended with state
    RUNNING ...: its process exited with code 0 (did the method call sys.exit...?)"."""
    import subprocess

    (ctl / "block").touch()
    settings = {"folder": tmp_path / "cache", "cluster": "slurm", **resources(slurm_cluster)}
    base = BlocksOne(ctl=str(ctl), infra=settings)
    with base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(x=x) for x in (1, 2))
    running = array[0].infra.job()
    sacct = LaggingSacct(monkeypatch)
    try:
        wait_until(lambda: "1" in lines(ctl / "calls.txt"))  # (x=1 runs, blocked)
        wait_until(lambda: registry.sacct_states([running.job_id])[running.job_id] == "RUNNING")
        sacct.freeze(running.job_id)
    finally:
        subprocess.run(["scancel", running.job_id], check=False, timeout=30)
    wait_until(lambda: not registry.queued_jobs([running.job_id]))
    wait_until_worker_killed(array[0], running.job_id)
    listed = {i.folder: i.error for i in exca.ops.inspect(tmp_path / "cache")}
    said = listed[array[0].infra.uid_folder()] or ""
    assert sacct.served  # (the lag held: exca asked sacct while it lagged)
    assert f"job {running.job_id}" in said and "its log" in said, said
    assert "before it started" not in said and "exited with code" not in said, said


@pytest.mark.timeout(120)
def test_every_rank_of_a_srun_job_until_its_time_limit_is_submitted(
    job_until_the_time_limit: tp.Callable[[], PastTheWarningJob],
) -> None:
    """Sends the job that test_every_rank_of_a_srun_job_runs_until_its_time_limit (after
    the queue-state, failures and clear_job tests below) waits for, so that its minute and
    a half overlaps the tests in between: 2 ranks on one CPU, a 1-minute limit warned 1 s
    before. (Sent after the failures section only, that test still waited ~35 s for it.)"""
    _, job, _ = job_until_the_time_limit()
    assert job.job_id.isdigit(), job.job_id
    script = Path(job.submitit_job.paths.submission_file).read_text()
    assert "#SBATCH --ntasks-per-node=2\n" in script and "#SBATCH --overcommit\n" in script
    assert "#SBATCH --time=1\n" in script


@pytest.mark.timeout(240)
def test_the_state_of_a_cancelled_job_stays_cancelled(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    """job.state of a job Slurm ended (scancel, a time limit) read CANCELLED or TIMEOUT
    until its failure was recorded, then FAILED: the job that had timed out said
    state=FAILED, while its error said "timed out (state TIMEOUT)" and submitit_job.state
    TIMEOUT (a probe, deciding to resume with more time). It says Slurm's end, in a new
    process too (its record read back)."""
    import pickle
    import subprocess

    (ctl / "block").touch()
    obj = task(tmp_path, ctl, slurm_cluster, x=34)
    job = obj.infra.job()
    try:
        wait_until(lambda: lines(ctl / "calls.txt") == ["34"])  # (running, blocked)
    finally:
        subprocess.run(["scancel", job.job_id], check=False, timeout=30)
    with pytest.raises(JobFailedError, match="was cancelled"):
        obj.process()
    assert obj.infra.status() == "failed"
    assert job.state.startswith("CANCELLED"), job.state
    again = task(tmp_path, ctl, slurm_cluster, x=34).infra.job()  # (from its record)
    assert again.job_id == job.job_id and again.state.startswith("CANCELLED"), again.state
    assert pickle.loads(pickle.dumps(again)).state.startswith("CANCELLED")
    wait_until_worker_killed(obj, job.job_id)
    # (retried without a job, the method raising: the job, still the latest recorded,
    # reads FAILED: the error cached is not its end)
    (ctl / "fail").touch()
    retried = task(tmp_path, ctl, slurm_cluster, x=34, mode="retry", cluster=None)
    with pytest.raises(ValueError, match="bad x=34"):
        retried.process()
    latest = task(tmp_path, ctl, slurm_cluster, x=34).infra.job()
    assert latest.job_id == job.job_id and latest.state == "FAILED"
    assert lines(ctl / "calls.txt") == ["34", "34"]


@pytest.mark.timeout(300)
def test_the_queue_state_of_a_job_gone_from_the_queue_is_none(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster
) -> None:
    """queue_state() kept the state squeue gave last for a job no longer listed: a job
    cancelled while pending still read PENDING (job.state too, until its wait ended)."""
    import subprocess

    later = {"begin": "now+600"}  # (pending until cancelled)
    obj = task(tmp_path, ctl, slurm_cluster, x=33, slurm_additional_parameters=later)
    job = obj.infra.job()
    try:
        wait_until(lambda: registry.queue_state(job.job_id) == "PENDING")
        assert job.state == "PENDING"
    finally:
        subprocess.run(["scancel", job.job_id], check=False, timeout=30)
    wait_until(lambda: not registry.queued_jobs([job.job_id]))
    assert registry.queue_state(job.job_id) is None
    assert registry.last_queue_state(job.job_id) is None


@pytest.mark.timeout(400)
def test_a_job_slurm_never_starts_ends_its_wait(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster
) -> None:
    """A job given the dependency afterok:<a job that did not succeed> stays pending for
    good (squeue's reason: DependencyNeverSatisfied): its call waited for ever, the plan
    said "pending" without a reason (a probe). Its wait ends, naming the job, the reason
    and what to do; the job is left queued (an scontrol update may still start it)."""
    import subprocess

    def sbatch(*options: str) -> str:
        args = ["sbatch", "--parsable", "-t", "1", "-o", "/dev/null", *options, "--wrap", "true"]
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()

    other = sbatch("--hold")
    subprocess.run(["scancel", other], check=True, timeout=30)  # (it never succeeds)
    params = {"dependency": f"afterok:{other}"}
    obj = task(tmp_path, ctl, slurm_cluster, x=31, slurm_additional_parameters=params)
    job = obj.infra.job()
    try:
        wait_until(lambda: registry.queue_state(job.job_id) == "PENDING")

        def reason() -> str:
            (entry,) = exca.graph.plan(obj.process.node()).entries
            return entry.reason

        wait_until(lambda: "(Slurm never starts it: DependencyNeverSatisfied)" in reason())
        said = (
            rf"job {job.job_id} is pending with reason DependencyNeverSatisfied: Slurm never "
            rf"starts it.*scancel {job.job_id}"
        )
        wait_until(job.done, timeout=60)  # (it waited for ever)
        with pytest.raises(JobFailedError, match=said):
            job.result()
        with pytest.raises(JobFailedError, match=said) as info:  # a call waiting for it
            task(tmp_path, ctl, slurm_cluster, x=31, slurm_additional_parameters=params).process()
        # (not the usual hint: mode='retry' alone follows that job again, failing at once)
        assert "use mode='retry' to recompute" not in str(info.value)
        assert registry.queue_state(job.job_id) == "PENDING"  # (left queued, failure not cached)
        assert obj.infra.status() == "running" and lines(ctl / "calls.txt") == []
        update = ["scontrol", "update", f"jobid={job.job_id}", "dependency="]
        subprocess.run(update, check=True, timeout=30)
        assert task(tmp_path, ctl, slurm_cluster, x=31).process() == 93  # (that job's result)
    finally:
        subprocess.run(["scancel", job.job_id], check=False, timeout=30)
    assert lines(ctl / "calls.txt") == ["31"]


def _exca_cli(*args: str | Path) -> str:
    """What `python -m exca ...` prints (a user's shell)."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "exca", *map(str, args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=WAIT_S)
    return result.stdout + result.stderr


def _held_warnings(caplog: pytest.LogCaptureFixture, job_id: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith(f"Waiting for job {job_id}, which is held by Slurm")
    ]


@pytest.mark.timeout(400)
def test_a_held_job_is_said_held_and_still_waited_for(
    tmp_path: Path,
    ctl: Path,
    slurm_cluster: SlurmCluster,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    squeue_looks: list[list[str]],
) -> None:
    """A job held in the queue (scontrol hold) made a call waiting for it wait for ever,
    saying only "waiting for it"; the plan said "pending as job N", exca list "(pending)"
    (a probe). The waiting call warns once (the job, squeue's reason, scontrol release)
    and waits on: a held job may be released (unlike DependencyNeverSatisfied); the plan,
    exca list and exca logs say it is held."""
    import subprocess

    monkeypatch.setattr(registry, "QUEUE_LOOK_S", 0.2)  # (many looks at the queue: one warning)
    later = {"begin": "now+600"}  # (pending, not started: held below)
    obj = task(tmp_path, ctl, slurm_cluster, x=41, slurm_additional_parameters=later)
    job = obj.infra.job()
    try:
        wait_until(lambda: registry.queue_state(job.job_id) == "PENDING")
        subprocess.run(["scontrol", "hold", job.job_id], check=True, timeout=30)
        (entry,) = exca.graph.plan(obj.process.node()).entries
        found = re.fullmatch(
            rf"pending as job {job.job_id} \(held: (JobHeld\w+); `scontrol release "
            rf"{job.job_id}` lets it start\)",
            entry.reason,
        )
        assert found is not None and entry.action == "wait", entry.reason
        reason = found.group(1)
        (info,) = exca.ops.inspect(tmp_path / "cache")
        assert (info.status, info.job_state, info.job_reason) == ("running", "held", reason)
        listed = _exca_cli("list", tmp_path / "cache")
        assert f"job {job.job_id} (held: {reason}; `scontrol release {job.job_id}`" in listed
        logs = _exca_cli("logs", info.folder)
        assert f"Job {job.job_id} (slurm) is held by Slurm (squeue's reason: {reason})" in logs
        out: list[int] = []
        waiting = threading.Thread(
            target=lambda: out.append(task(tmp_path, ctl, slurm_cluster, x=41).process())
        )
        with caplog.at_level("WARNING", logger="exca"):
            waiting.start()
            wait_until(lambda: _held_warnings(caplog, job.job_id))
            # (the queue looked at again and again: no second warning)
            wait_until(more_looks(squeue_looks, 5))
            assert waiting.is_alive()  # (the wait goes on)
            subprocess.run(["scontrol", "release", job.job_id], check=True, timeout=30)
            start = ["scontrol", "update", f"jobid={job.job_id}", "StartTime=now"]
            subprocess.run(start, check=True, timeout=30)
            waiting.join(timeout=300)
        assert out == [123]
        (said,) = _held_warnings(caplog, job.job_id)
        assert f"(squeue's reason: {reason})" in said and f"`scontrol release {job.job_id}`" in said
    finally:
        subprocess.run(["scancel", job.job_id], check=False, timeout=30)
    assert lines(ctl / "calls.txt") == ["41"]


@pytest.mark.timeout(600)
def test_a_job_requeued_held_while_running_is_said_held(
    tmp_path: Path,
    ctl: Path,
    slurm_cluster: SlurmCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """scontrol requeuehold of a running job: squeue's reason is "job requeued in held
    state"; a call waiting for it said nothing of it (a probe). It warns, waits on, and
    returns the result of the job's run once it is released."""
    import subprocess

    (ctl / "block").touch()  # (its first run blocks: requeued held below)
    obj = task(tmp_path, ctl, slurm_cluster, x=43)
    job = obj.infra.job()
    try:
        wait_until(lambda: lines(ctl / "calls.txt") == ["43"], timeout=300)  # (running)
        subprocess.run(["scontrol", "requeuehold", job.job_id], check=True, timeout=30)

        def reason() -> str:
            (entry,) = exca.graph.plan(obj.process.node()).entries
            return entry.reason

        wait_until(lambda: "(held: job requeued in held state; `scontrol release" in reason())
        out: list[int] = []
        waiting = threading.Thread(
            target=lambda: out.append(task(tmp_path, ctl, slurm_cluster, x=43).process())
        )
        with caplog.at_level("WARNING", logger="exca"):
            waiting.start()
            wait_until(lambda: _held_warnings(caplog, job.job_id))
            assert waiting.is_alive()
            subprocess.run(["scontrol", "release", job.job_id], check=True, timeout=30)
            _start_requeued(job.job_id)
            waiting.join(timeout=300)
        assert out == [129]  # (its second run: not blocked)
        (said,) = _held_warnings(caplog, job.job_id)
        assert "(squeue's reason: job requeued in held state)" in said, said
    finally:
        subprocess.run(["scancel", job.job_id], check=False, timeout=30)
    assert lines(ctl / "calls.txt") == ["43", "43"]


@pytest.mark.timeout(400)
def test_list_plan_and_call_say_alike_how_a_dead_job_ended(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    """Array elements cancelled while pending (one alone, then the rest with the array):
    exca list said "ended without writing its result (killed, out of memory,
    cancelled...?): `exca logs FOLDER --stderr` shows how" (no log there), the plan "job N
    ended without a result", where the call said how (cancelled before it started). All
    three say it in the call's words now."""
    import subprocess

    later = {"begin": "now+600"}  # (pending until cancelled)
    settings = {"folder": tmp_path / "cache", "cluster": "slurm", **resources(slurm_cluster)}
    base = BlocksOne(ctl=str(ctl), infra={**settings, "slurm_additional_parameters": later})
    with base.infra.job_array(max_workers=1) as array:
        array.extend(base.infra.clone_obj(x=x) for x in (1, 2, 3))
    jobs = [config.infra.job() for config in array]
    try:
        wait_until(lambda: all(registry.queue_state(j.job_id) == "PENDING" for j in jobs))
        subprocess.run(["scancel", jobs[2].job_id], check=True, timeout=30)
        wait_until(lambda: jobs[2].job_id not in registry.queued_jobs([jobs[2].job_id]))
    finally:
        subprocess.run(["scancel", jobs[0].job_id.split("_")[0]], check=False, timeout=30)
    wait_until(lambda: not registry.queued_jobs([j.job_id for j in jobs]))
    # (sacct knows them: the whole array, as one row of its pending elements)
    base = jobs[0].job_id.split("_")[0]
    wait_until(lambda: any(job.startswith(f"{base}_") for job in sacct_states([base])))
    listed = {i.folder: i.error for i in exca.ops.inspect(tmp_path / "cache")}
    nodes = [config.process.node() for config in array]
    reasons = {e.uid: e.reason for e in exca.graph.plan(*nodes).entries}
    for config, node, job in zip(array, nodes, jobs):
        said = listed[config.infra.uid_folder()]
        assert said is not None and said.startswith(f"job {job.job_id} "), said
        assert "exca logs" not in said and "cancelled before it started" in said, said
        assert reasons[node.uid] == f"{said}: mode='retry' computes it again"
        with pytest.raises(JobFailedError) as info:
            BlocksOne(ctl=str(ctl), x=config.x, infra=settings).process()
        assert f"{said} (use mode='retry' to recompute)" in str(info.value)
    assert lines(ctl / "calls.txt") == []


@pytest.mark.timeout(240)
def test_pending_elements_past_squeues_cut_are_still_queued(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, quick_queue_looks: None
) -> None:
    """squeue lists the pending elements of an array as one line, 12_[3,5,7,...], cut at
    ~32 characters: with gaps (elements cancelled, or done), the elements past the cut
    read as ended: the call of a config still pending raised "ended with state UNKNOWN
    ... cancelled before it started?" and status() said failed (a review)."""
    import subprocess

    (ctl / "block").touch()
    settings = {"folder": tmp_path / "cache", "cluster": "slurm", **resources(slurm_cluster)}
    base = BlocksOne(ctl=str(ctl), infra=settings)
    with base.infra.job_array(max_workers=1) as array:
        array.extend(base.infra.clone_obj(x=x) for x in range(1, 31))
    jobs: list[tp.Any] = [array[0].infra.job()]
    try:
        wait_until(lambda: "1" in lines(ctl / "calls.txt"))  # x=1 runs: the others wait
        jobs = [config.infra.job() for config in array]
        gaps = [job.job_id for job in jobs[1:20:2]]
        subprocess.run(["scancel", *gaps], check=True, timeout=30)
        last = jobs[-1]
        assert registry.confirmed_queued([last.job_id]) == {last.job_id}
        # (a wait asks squeue again every QUEUE_LOOK_S: the cancelled ones end)
        wait_until(lambda: {job.job_id for job in jobs if job.done()} == set(gaps))
        assert not last.done() and array[-1].infra.status() == "running"
    finally:
        subprocess.run(["scancel", jobs[0].job_id.split("_")[0]], check=False, timeout=30)
        (ctl / "block").unlink()


def test_a_wait_for_an_element_cancelled_while_pending_ends_at_the_first_squeue_look(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wait for an array element cancelled while pending (no log; sacct keeps no row of
    it) took it for ended only once two squeue looks, QUEUE_LOOK_S (5 s) apart, missed
    it: it now ends at the first look, sacct saying the array no longer has it. The
    element still pending is still waited for."""
    import subprocess

    (ctl / "block").touch()
    settings = {"folder": tmp_path / "cache", "cluster": "slurm", **resources(slurm_cluster)}
    base = BlocksOne(ctl=str(ctl), infra=settings)
    with base.infra.job_array(max_workers=1) as array:
        array.extend(base.infra.clone_obj(x=x) for x in range(1, 4))
    jobs = [config.infra.job() for config in array]
    wait_until(lambda: "1" in lines(ctl / "calls.txt"))  # x=1 runs: the others wait
    cancelled, pending = jobs[1], jobs[2]
    subprocess.run(["scancel", cancelled.job_id], check=True, timeout=30)
    wait_until(lambda: cancelled.job_id not in squeue_ids())
    looks: list[list[str]] = []
    look = registry._squeue
    monkeypatch.setattr(registry, "_squeue", lambda bases: looks.append(bases) or look(bases))
    # (a look of before the scancel forgotten; none after the next one in this test)
    monkeypatch.setattr(registry, "_QUEUE_LOOKS", {})
    monkeypatch.setattr(registry, "QUEUE_LOOK_S", 3600.0)
    assert cancelled.done() and len(looks) == 1
    assert not pending.done() and not jobs[0].done() and len(looks) == 1


@pytest.mark.timeout(240)
def test_a_stopped_job_is_not_done(
    tmp_path: Path,
    ctl: Path,
    slurm_cluster: SlurmCluster,
    quick_queue_looks: None,
    squeue_looks: list[list[str]],
) -> None:
    """A job stopped by Slurm (scancel --signal=STOP --full), which squeue lists as
    STOPPED, can go on (SIGCONT): a wait taking it for ended failed it, "ended with
    state RUNNING without writing its result" (a review)."""
    import subprocess

    (ctl / "block").touch()
    settings = {"folder": tmp_path / "cache", "cluster": "slurm", **resources(slurm_cluster)}
    config = BlocksOne(x=1, ctl=str(ctl), infra=settings)
    job = config.infra.job()
    try:
        wait_until(lambda: "1" in lines(ctl / "calls.txt"))
        subprocess.run(["scancel", "--signal=STOP", "--full", job.job_id], check=True, timeout=30)
        wait_until(lambda: registry.queue_state(job.job_id) == "STOPPED")
        two_looks = more_looks(squeue_looks, 2)  # (of the waits below, done() asked again)
        wait_until(lambda: job.done() or two_looks())
        assert not job.done() and config.infra.status() == "running"
        subprocess.run(["scancel", "--signal=CONT", "--full", job.job_id], check=True, timeout=30)
        (ctl / "block").unlink()
        assert job.result() == 1
    finally:
        subprocess.run(["scancel", job.job_id], check=False, timeout=30)


@pytest.mark.timeout(240)
def test_a_suspended_job_is_not_done(
    tmp_path: Path,
    ctl: Path,
    slurm_cluster: SlurmCluster,
    quick_queue_looks: None,
    squeue_looks: list[list[str]],
) -> None:
    """submitit takes a job sacct says SUSPENDED (scontrol suspend) for ended: its
    done() said True, its state FAILED, and its result() raised "ended with state
    SUSPENDED without writing its result" though it goes on once resumed (a probe)."""
    import subprocess
    import threading

    (ctl / "block").touch()
    settings = {"folder": tmp_path / "cache", "cluster": "slurm", **resources(slurm_cluster)}
    config = BlocksOne(x=1, ctl=str(ctl), infra=settings)
    job = config.infra.job()
    try:
        wait_until(lambda: "1" in lines(ctl / "calls.txt"))
        subprocess.run(["scontrol", "suspend", job.job_id], check=True, timeout=30)
        wait_until(lambda: sacct_states([job.job_id]).get(job.job_id) == "SUSPENDED")
        job.submitit_job.watcher.update()  # (submitit reads SUSPENDED now)
        assert not job.done() and job.state == "SUSPENDED"
        assert config.infra.status() == "running"
        outcome: list[tp.Any] = []
        waiting = threading.Thread(target=lambda: outcome.append(job.exception()))
        two_looks = more_looks(squeue_looks, 2)
        waiting.start()
        wait_until(lambda: not waiting.is_alive() or two_looks())  # (its wait looked twice)
        assert waiting.is_alive() and not job.done()  # (still waiting)
        subprocess.run(["scontrol", "resume", job.job_id], check=True, timeout=30)
        (ctl / "block").unlink()
        waiting.join(WAIT_S)
        assert outcome == [None] and job.result() == 1
    finally:
        subprocess.run(["scontrol", "resume", job.job_id], check=False, timeout=30)
        subprocess.run(["scancel", job.job_id], check=False, timeout=30)


@pytest.mark.timeout(120)
def test_an_array_over_max_pickle_size_is_refused_before_anything_is_written(
    tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    """submitit checks max_pickle_size_gb for a single job, not for the elements of a
    Slurm array: 3 configs of 2 MB went out with a limit of 4 MB (6 x 100 MB pickles in
    the newcomer's case). The array is refused, as a single job is, before any pickle."""
    infra = {
        "folder": tmp_path / "cache",
        "cluster": "slurm",
        "max_pickle_size_gb": 0.004,
        **resources(slurm_cluster),
    }
    base = Heavy(payload="x" * 2_000_000, infra=infra)
    refused = pytest.raises(RuntimeError, match=r"Submitting an estimated 3 x 0.00\d* > 0.004GB")
    with refused, base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(x=x) for x in range(3))
    assert not list((tmp_path / "cache").rglob("*.pkl"))
    for obj in array:
        assert obj.infra.status() == "not submitted"


# --- failures -------------------------------------------------------------------------------
@pytest.mark.timeout(240)
def test_slurm_failure_then_retry(tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster) -> None:
    (ctl / "fail").touch()
    obj = task(tmp_path, ctl, slurm_cluster, x=4)
    with pytest.raises(ValueError, match="bad x=4") as info:
        obj.process()
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "Traceback" in notes and "in process" in notes
    assert obj.infra.status() == "failed"
    with pytest.raises(ValueError, match="bad x=4"):  # cached: not resubmitted
        task(tmp_path, ctl, slurm_cluster, x=4).process()
    assert lines(ctl / "calls.txt") == ["4"]
    (ctl / "fail").unlink()
    retry = task(tmp_path, ctl, slurm_cluster, x=4, mode="retry")
    assert retry.process() == 12
    assert retry.infra.status() == "completed"
    assert lines(ctl / "calls.txt") == ["4", "4"]
    recs = records(retry.infra.uid_folder())
    assert len(recs) == 2  # recomputed by a second Slurm job
    assert all(r["cluster"] == "slurm" and r["job_id"].isdigit() for r in recs)


@pytest.mark.timeout(300)
def test_slurm_killed_job_says_how(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    (ctl / "kill").touch()
    obj = task(tmp_path, ctl, slurm_cluster, x=6)
    # (sacct gives the batch script's code, "9:0": it said "its process exited with code
    # 9", where a local job says its process died; bash's report in the log tells)
    killed = r"its process died \(killed by SIGKILL: out of memory, or killed by hand\)"
    with pytest.raises(JobFailedError, match=killed):
        obj.process()
    assert obj.infra.status() == "failed"
    assert re.search(killed, str(task(tmp_path, ctl, slurm_cluster, x=6).infra.job().exception()))
    (ctl / "kill").unlink()
    assert task(tmp_path, ctl, slurm_cluster, x=6, mode="retry").process() == 18


@pytest.mark.timeout(300)
def test_slurm_job_whose_method_raises_keyboardinterrupt_says_so(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    """A method raising KeyboardInterrupt in a Slurm job (a notebook probe: a stop
    condition written so): the call said "job N ended with state FAILED without writing
    its result: its process exited with code 2", the interrupt's traceback hiding the
    job's note from the end of the log it quotes, where a local job's error says that
    the method raised it (no SIGINT came)."""
    (ctl / "interrupt").touch()
    obj = task(tmp_path, ctl, slurm_cluster, x=7)
    with pytest.raises(JobFailedError) as info:
        obj.process()
    said = str(info.value)
    assert "KeyboardInterrupt was raised (by the method: no SIGINT was received)" in said, said
    assert "_log.err" in said and "raise KeyboardInterrupt" in said, said
    # (never cached: see tests/test_execution.py; it was 'failed', mode='retry' needed)
    assert "nothing is cached: the next call computes it" in said, said
    assert obj.infra.status() == "not submitted"
    (ctl / "interrupt").unlink()
    assert task(tmp_path, ctl, slurm_cluster, x=7).process() == 21


@pytest.mark.timeout(300)
def test_slurm_map_job_whose_method_raises_keyboardinterrupt_names_the_item(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    """A map's method raising KeyboardInterrupt at an item in a Slurm job: the call named
    the items the job left not computed (several, in any order), not the one the method
    was at, where a pool's caller names it; the job's note names it now, and the call
    says it. Nothing is cached for those items: the next call computes them."""
    (ctl / "interrupt").touch()
    infra = {"folder": tmp_path / "cache", "cluster": "slurm", "max_jobs": 1}
    mapper = SlurmMap(ctl=str(ctl), infra={**infra, **resources(slurm_cluster)})
    with pytest.raises(JobFailedError) as info:
        list(mapper.process([0, 1, 2, 3]))
    said = str(info.value)
    raised = "KeyboardInterrupt was raised (by the method: no SIGINT was received)"
    assert f"{raised} while computing item '2'" in said, said
    assert "2" in info.value.item_uids and "the next call computes them" in said, said
    (ctl / "interrupt").unlink()
    assert list(mapper.process([0, 1, 2, 3])) == [1, 2, 3, 4]


def test_only_the_batch_scripts_report_of_a_signal_its_exit_code_tells_counts() -> None:
    """A job whose method ran a child that was killed, then exited with code 3 (or 9), was
    said "killed by SIGKILL" (a review): the last "Killed" line of its log was trusted,
    bash's report of that child's death. Only the batch script's (or srun's) report of a
    signal its exit code tells counts."""
    from exca.graph.registry import signal_in_log

    script = "/var/spool/slurmd/job01/slurm_script: line 17:  6771 Killed   python -u -m x\n"
    child = "bash: line 1: 17603 Killed                  sleep 30\n"
    srun = "srun: error: vm: task 0: Killed\n"
    assert signal_in_log(script, 9) == "SIGKILL" and signal_in_log(script, 137) == "SIGKILL"
    assert signal_in_log(srun, 9) == "SIGKILL"
    assert signal_in_log(script, 3) is None  # (a code no signal gives)
    assert signal_in_log(child, 9) is None and signal_in_log(child, 3) is None
    assert signal_in_log("all went well\n", 9) is None


@pytest.mark.timeout(300)
def test_a_job_failing_before_python_names_its_log(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    """A job whose slurm_setup fails ends before its python runs: the call said only
    "job N ended with state FAILED without writing its result: its process exited with
    code 3", not where the job's log (which says why) is (a probe)."""
    setup = ["echo 'no such module: cuda/99' >&2", "exit 3"]
    obj = task(tmp_path, ctl, slurm_cluster, x=11, slurm_setup=setup)
    with pytest.raises(JobFailedError) as info:
        obj.process()
    (record,) = records(obj.infra.uid_folder())
    log = Path(record["logs"].replace("%j", record["job_id"])) / f"{record['job_id']}_0_log.err"
    assert log.read_text().strip() == "no such module: cuda/99"
    for error in (
        str(info.value),  # the call that waited
        str(task(tmp_path, ctl, slurm_cluster, x=11, slurm_setup=setup).infra.job().exception()),
    ):
        assert f"job {record['job_id']} ended with state FAILED" in error, error
        assert "exited with code 3" in error and f"its log: {log}" in error, error
        assert error.rstrip().endswith("no such module: cuda/99"), error  # (its last line)
    node = task(tmp_path, ctl, slurm_cluster, x=12, slurm_setup=setup).process.node()
    with pytest.raises(JobFailedError, match=r"(?s)_0_log\.err.*no such module: cuda/99"):
        exca.graph.run(node)
    assert lines(ctl / "calls.txt") == []  # (no python ran)


@pytest.mark.timeout(300)
def test_chunk_jobs_failing_before_python_are_described_one_per_line(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    """Two chunk jobs whose slurm_setup fails: the second job's description was glued
    (with "; ") onto the last quoted line of the first one's log, and the first call's
    error lacked the hint to recompute that later ones give. Both ending alike (their
    job ids aside), the second is named after the first's description (3d506ab)."""
    setup = ["echo 'no such module: cuda/99' >&2", "exit 3"]
    infra = {"folder": tmp_path / "cache", "cluster": "slurm", **resources(slurm_cluster)}
    infra.update(slurm_setup=setup, max_jobs=2, min_samples_per_job=1)
    with pytest.raises(JobFailedError) as info:
        list(SlurmMap(ctl=str(ctl), infra=infra).process([1, 2]))
    said = str(info.value).splitlines()
    # (a map's missing items are not recorded as failed: a plain call computes them)
    assert said[0].endswith(" (the next call computes them)"), said
    starts = [i for i, line in enumerate(said) if re.match(r"(.*: )?job \d+_0 ended", line)]
    assert len(starts) == 1, said  # (the description on a line of its own, said once)
    assert re.search(r"; and so in 1 other job: \d+_1\b", said[starts[0]]), said
    assert said[starts[0] + 1 : starts[0] + 3] == [
        "the end of that log:",
        "    no such module: cuda/99",
    ]
    assert lines(ctl / "calls.txt") == []
    infra["slurm_setup"] = []  # (fixed: the next call, in mode cached, computes them)
    assert list(SlurmMap(ctl=str(ctl), infra=infra).process([1, 2])) == [2, 3]


@pytest.mark.timeout(300)
def test_many_killed_jobs_are_described_with_one_sacct_call(
    tmp_path: Path,
    ctl: Path,
    slurm_cluster: SlurmCluster,
    short_result_wait: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plan or run meeting several jobs that died without a result says how each ended,
    from one sacct call for all of them (not two per job: ~0.1 s each)."""

    (ctl / "kill").touch()
    array = [task(tmp_path, ctl, slurm_cluster, x=x) for x in (20, 21, 22)]
    with array[0].infra.job_array() as jobs:
        jobs.extend(array)
    wait_until(lambda: all(t.infra.status() == "failed" for t in array), timeout=120)
    ids = [r["job_id"] for t in array for r in records(t.infra.uid_folder())]
    assert len({j.split("_")[0] for j in ids}) == 1 and all(in_sacct(j) for j in ids)
    calls = {"one by one": 0, "batched": 0}
    one_by_one, batched = registry.slurm_exit, registry.slurm_endings

    def spy_one(job_id: str) -> str:
        calls["one by one"] += 1
        return one_by_one(job_id)

    def spy_batch(job_ids: tp.Sequence[str]) -> dict[str, tuple[str, str]]:
        calls["batched"] += 1
        return batched(job_ids)

    monkeypatch.setattr(registry, "slurm_exit", spy_one)
    monkeypatch.setattr(registry, "slurm_endings", spy_batch)
    nodes = [task(tmp_path, ctl, slurm_cluster, x=x).process.node() for x in (20, 21, 22)]
    plan = exca.graph.plan(*nodes)
    assert [(e.status, e.action) for e in plan.entries] == [("cached error", "fail")] * 3
    with pytest.raises(NodeFailures) as info:
        exca.graph.run(*nodes)
    assert len(info.value.failures) == 3
    for error in info.value.failures.values():
        assert re.search(r"its process died \(killed by SIGKILL", str(error)), error
    assert calls == {"one by one": 0, "batched": 2}  # one per decision: the plan, the run
    assert sorted(lines(ctl / "calls.txt")) == ["20", "21", "22"]  # nothing recomputed


def test_claim_of_an_ended_slurm_job_on_another_host_is_not_running(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster
) -> None:
    """A worker killed on another node leaves its claim with a fresh heartbeat: its Slurm
    job has ended (squeue), so the task is not 'running' (status agrees with the plan)."""
    from exca.graph import registry
    from exca.storage import process

    obj = task(tmp_path, ctl, slurm_cluster, x=7)
    folder = obj.infra.uid_folder(create=True)
    assert folder is not None
    record = registry.JobRecord(
        job_id="999999", cluster="slurm", logs=str(tmp_path), submitted=time.time() - 5
    )
    registry.write(folder, record)
    (folder / "claims").mkdir()
    owner = {"host": "compute-node-7", "pid": 4242, "start": 1, "thread": 1, "job_id": "999999"}
    claim = {"owner": owner, "keys": ["result"]}
    (folder / "claims" / f"{process.unique_name()}.claim").write_text(json.dumps(claim))
    assert obj.infra.status() == "failed"


@pytest.mark.timeout(300)
def test_slurm_cancelled_job(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    (ctl / "block").touch()
    obj = task(tmp_path, ctl, slurm_cluster, x=5)
    job = obj.infra.job()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))  # running
    assert obj.infra.status() == "running"
    job.cancel()
    wait_until(lambda: sacct_states([job.job_id]).get(job.job_id) == "CANCELLED")
    fresh = task(tmp_path, ctl, slurm_cluster, x=5)
    wait_until(lambda: fresh.infra.status() != "running", timeout=60)
    assert fresh.infra.status() == "failed"
    with pytest.raises(JobFailedError, match=r"(?i)cancel"):
        fresh.process()
    assert fresh.infra.status() == "failed"
    assert lines(ctl / "calls.txt") == ["5"]
    wait_until_worker_killed(obj, job.job_id)


def test_plan_says_whether_a_job_is_pending_or_running(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster
) -> None:
    """A plan said "running as job X" for a job still waiting in the queue (and the job's
    state, RUNNING)."""
    import subprocess

    (ctl / "block").touch()
    extra = {"slurm_additional_parameters": {"begin": "now+600"}}  # (pending: its begin time)
    obj = task(tmp_path, ctl, slurm_cluster, x=8, **extra)
    job = obj.infra.job()

    def reason() -> str:
        fresh = task(tmp_path, ctl, slurm_cluster, x=8)
        (entry,) = exca.graph.plan(fresh.process.node()).entries
        return entry.reason

    try:
        # (a later begin, as a job Slurm requeued has: said, the queue's reason BeginTime,
        # which Slurm gives it at its next scheduling pass once exca released it)
        said = f"pending as job {job.job_id} (waits for its begin time"
        wait_until(lambda: reason().startswith(said))
        assert job.state == "PENDING" and "state=PENDING" in repr(job)
        subprocess.run(["scontrol", "update", f"jobid={job.job_id}", "starttime=now"], check=True)
        wait_until(lambda: bool(lines(ctl / "calls.txt")))  # running
        assert reason() == f"running as job {job.job_id}"
        wait_until(lambda: job.state == "RUNNING")  # (sacct may lag the queue a moment)
        (ctl / "block").unlink()
        assert job.result() == 24
    finally:  # (never left in the queue, to start in 10 minutes)
        subprocess.run(["scancel", job.job_id], check=False)


_EDITED_CLASS = """
import pydantic, exca
class Edited(pydantic.BaseModel):
    lr: float = 0.1
    infra: exca.TaskInfra = exca.TaskInfra(version="1")
    @infra.apply
    def run(self) -> float:
        return self.lr * 2
"""


@pytest.mark.timeout(300)
def test_a_class_edited_while_its_job_waits(
    tmp_path: Path, slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fields added to the class while its job is queued: the job computed, then cached an
    AttributeError. A field with a default now gets it (the uid leaves defaults out: the
    same config); a required one is refused, saying so, and nothing is cached."""
    import importlib
    import subprocess

    (tmp_path / "edited_mod.py").write_text(_EDITED_CLASS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}")
    module = importlib.import_module("edited_mod")
    pending = {"slurm_additional_parameters": {"begin": "now+600"}}
    infra = {"folder": tmp_path / "cache", "cluster": "slurm", **resources(slurm_cluster)}
    edits = {
        "m: float = 1.0": (0.1, 1.1),  # a default: computed with it
        "m: float": (0.2, "'m' that the submitted config lacks"),  # required: refused
    }
    for field, (lr, expected) in edits.items():
        (tmp_path / "edited_mod.py").write_text(_EDITED_CLASS)
        module = importlib.reload(module)
        job = module.Edited(lr=lr, infra={**infra, **pending}).infra.job()
        try:
            edited = _EDITED_CLASS.replace("lr: float = 0.1", f"lr: float = 0.1\n    {field}")
            edited = edited.replace("self.lr * 2", "self.lr + self.m")
            (tmp_path / "edited_mod.py").write_text(edited)
            subprocess.run(
                ["scontrol", "update", f"jobid={job.job_id}", "starttime=now"], check=True
            )
            if isinstance(expected, str):
                with pytest.raises(JobFailedError, match=expected):
                    job.result()
                folder = module.Edited(lr=lr, infra=infra).infra.uid_folder()
                assert not exca.cachedict.CacheDict(folder).keys()  # no AttributeError cached
                (found,) = exca.ops.logs(folder)  # (its log says why)
                assert found.refused and "ClassChangedError" in found.stderr()
                refused = exca.helpers.find_slurm_job(job.job_id, folder=tmp_path / "cache")
                assert refused.config["lr"] == lr  # (found by its id too)
            else:
                assert job.result() == pytest.approx(expected)
        finally:
            subprocess.run(["scancel", job.job_id], check=False)


@pytest.mark.timeout(300)
def test_clear_job_of_a_running_slurm_job_leaves_nothing_cached(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster
) -> None:
    """clear_job() on a running Slurm job: Slurm kills its worker, nothing is cached, the
    next call computes again."""
    (ctl / "block").touch()
    obj = task(tmp_path, ctl, slurm_cluster, x=5)
    job = obj.infra.job()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))  # running
    obj.infra.clear_job()
    wait_until_worker_killed(obj, job.job_id)
    (ctl / "block").unlink()
    fresh = task(tmp_path, ctl, slurm_cluster, x=5)
    assert fresh.infra.status() == "not submitted"
    assert fresh.process() == 15  # computed again, by a new job
    assert lines(ctl / "calls.txt") == ["5", "5"]


@pytest.mark.timeout(300)
def test_a_job_cleared_that_ends_after_its_sigterm_stores_nothing(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With srun, the task runs in a job step that Slurm sends SIGTERM (which submitit's
    worker ignores) and kills only KillWait later: a task finishing meanwhile stored its
    result after clear_job() removed the old one (the config read "completed", from the
    job the user cancelled)."""
    short_cancel_wait(monkeypatch)
    (ctl / "block").touch()
    obj = task(tmp_path, ctl, slurm_cluster, x=5, slurm_use_srun=True)
    job = obj.infra.job()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))  # running
    obj.infra.clear_job()
    wait_until(lambda: "SIGTERM" in (job.stderr() or ""))  # the worker got it, and goes on
    (ctl / "block").unlink()  # its task finishes now, before Slurm's SIGKILL
    folder = obj.infra.uid_folder()
    assert folder is not None
    wait_until(lambda: not list((folder / "claims").glob("*.claim")))  # the worker ended
    assert "its outcome is not stored" in (job.stderr() or "")
    fresh = task(tmp_path, ctl, slurm_cluster, x=5, slurm_use_srun=True)
    assert fresh.infra.status() == "not submitted"
    assert fresh.process() == 15  # computed again, by a new job
    assert lines(ctl / "calls.txt") == ["5", "5"]


@pytest.mark.timeout(300)
def test_clear_job_while_the_result_is_being_written_leaves_nothing_cached(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """clear_job() while the job already writes its result (past the last check; with
    srun, Slurm kills it KillWait after its SIGTERM): the result it finishes writing is
    removed again."""
    short_cancel_wait(monkeypatch)
    (ctl / "block").touch()
    settings = {
        "folder": tmp_path / "cache",
        "cluster": "slurm",
        **resources(slurm_cluster, slurm_use_srun=True),
    }
    obj = SlowToStore(ctl=str(ctl), infra=settings)
    job = obj.infra.job()
    wait_until(lambda: lines(ctl / "calls.txt") == ["pickling"])
    obj.infra.clear_job()
    wait_until(lambda: "SIGTERM" in (job.stderr() or ""))
    (ctl / "block").unlink()  # the result is written now, before Slurm's SIGKILL
    folder = obj.infra.uid_folder()
    assert folder is not None
    wait_until(lambda: not list((folder / "claims").glob("*.claim")))  # the worker ended
    assert "its outcome is not stored" in (job.stderr() or "")
    assert SlowToStore(ctl=str(ctl), infra=settings).infra.status() == "not submitted"


@pytest.mark.timeout(300)
def test_every_rank_of_a_srun_job_runs_until_its_time_limit(
    job_until_the_time_limit: tp.Callable[[], PastTheWarningJob], quick_queue_looks: None
) -> None:
    """tasks_per_node=2: at Slurm's early warning, rank 0 failed ("reached its time limit",
    ~15 s into a 1-minute job) while rank 1 ran on, its work thrown away (a probe). Every
    rank now runs until Slurm stops the job at its limit, and the error says it timed out.
    (Its job, sent by test_every_rank_of_a_srun_job_until_its_time_limit_is_submitted,
    ran meanwhile.)"""
    obj, job, ctl = job_until_the_time_limit()
    # (the limit is said, and that a retry needs more: it said "timed out" only)
    said = r"timed out at its time limit \(timeout_min=1: give its infra a larger one\) \(state TIMEOUT\)"
    with pytest.raises(JobFailedError, match=said):
        obj.run()
    assert sorted(lines(ctl / "calls.txt")) == ["start rank=0", "start rank=1"]
    rank_zero = Path(job.submitit_job.paths.stderr)  # (<job id>_0_log.err)
    for log in (rank_zero, rank_zero.with_name(rank_zero.name.replace("_0_", "_1_"))):
        assert "time limit is near" in log.read_text()  # (on each rank, then ran on)
    # (Slurm sends it up to 60 s early: at submitit's 90 s it came as the job started,
    # which killed a task whose python could not ignore it yet; now near the minute's end)
    script = Path(job.submitit_job.paths.submission_file).read_text()
    assert "#SBATCH --signal=USR2@1\n" in script
    assert obj.infra.status() == "failed"


@pytest.mark.timeout(300)
def test_slurm_forced_job_array_holds_back_only_the_config_with_a_running_job(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster
) -> None:
    """In a forced job array, the config whose earlier job runs starts after that job,
    in an array of its own: the other configs do not wait for it (they shared its
    dependency)."""
    (ctl / "block").touch()
    first = task(tmp_path, ctl, slurm_cluster, x=4).infra.job()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))  # running
    base = task(tmp_path, ctl, slurm_cluster, x=4, mode="force")
    with base.infra.job_array() as array:
        array.extend(base.infra.clone_obj({"x": x}) for x in (4, 5))
    wait_until(lambda: array[1].infra.status() == "completed", timeout=120)
    assert (ctl / "block").exists() and not first.done()  # (x=5 did not wait for it)
    # the same with a detached run
    nodes = [task(tmp_path, ctl, slurm_cluster, x=x, mode="force").process.node() for x in (4, 6)]
    exca.graph.run(*nodes, wait=False)
    wait_until(lambda: nodes[1].status() == "completed", timeout=120)
    assert (ctl / "block").exists() and not first.done()
    (ctl / "block").unlink()
    assert [t.process() for t in array] == [12, 15]
    assert nodes[0].result() == 12 and nodes[1].result() == 18
    assert sorted(lines(ctl / "calls.txt")) == ["4", "4", "4", "5", "6"]


@pytest.mark.timeout(300)
def test_slurm_configs_forced_over_one_earlier_array_share_one_array(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster
) -> None:
    """Configs forced while the elements of one earlier array wait in the queue start
    after their earlier jobs: they went out as one sbatch per config (an array per job
    to start after). A dependency names the earlier array, whole: they now share one
    new array (a probe: forcing a sweep sent an sbatch per config)."""
    import subprocess

    pending = {"slurm_additional_parameters": {"begin": "now+600"}}  # (held in the queue)
    held = task(tmp_path, ctl, slurm_cluster, x=0, **pending)
    with held.infra.job_array() as first:
        first.extend(held.infra.clone_obj({"x": x}) for x in (4, 5, 6))
    first_ids = {r["job_id"] for t in first for r in records(t.infra.uid_folder())}
    (first_array,) = {i.split("_")[0] for i in first_ids}
    try:
        forced = task(tmp_path, ctl, slurm_cluster, x=0, mode="force")
        with forced.infra.job_array() as again:
            again.extend(forced.infra.clone_obj({"x": x}) for x in (4, 5, 6))
        new_ids = {r["job_id"] for t in again for r in records(t.infra.uid_folder())}
        new_ids -= first_ids
        assert len(new_ids) == 3
        assert len({i.split("_")[0] for i in new_ids}) == 1, new_ids  # one sbatch
        subprocess.run(["scontrol", "update", f"jobid={first_array}", "starttime=now"], check=True)
        wait_until(lambda: len(lines(ctl / "calls.txt")) >= 3, timeout=120)  # (the earlier)
        # a call waits for its forcing job: what the earlier array wrote meanwhile (the new
        # one starts after it) is not the forced result (it was returned: a test run)
        assert [t.process() for t in again] == [12, 15, 18]
        assert sorted(lines(ctl / "calls.txt")) == ["4", "4", "5", "5", "6", "6"]
    finally:  # (never left in the queue, to start in 10 minutes)
        subprocess.run(["scancel", first_array], check=False)


@pytest.mark.timeout(300)
def test_slurm_scancel_while_waiting_then_retry(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    """The caller is blocked in the call when the job is cancelled with scancel."""
    import subprocess
    import threading

    (ctl / "block").touch()
    obj = task(tmp_path, ctl, slurm_cluster, x=6)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            obj.process()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=call)
    thread.start()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))  # running
    (record,) = records(obj.infra.uid_folder())
    subprocess.run(["scancel", record["job_id"]], check=True, timeout=30)
    thread.join(timeout=WAIT_S)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], JobFailedError), errors
    assert "cancel" in str(errors[0]).lower()
    assert task(tmp_path, ctl, slurm_cluster, x=6).infra.status() == "failed"
    wait_until_worker_killed(obj, record["job_id"])
    retry = task(tmp_path, ctl, slurm_cluster, x=6, mode="retry")
    assert retry.process() == 18
    assert lines(ctl / "calls.txt") == ["6", "6"]
    assert len(records(retry.infra.uid_folder())) == 2


@pytest.mark.timeout(300)
def test_slurm_retry_after_cancel(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    (ctl / "block").touch()
    obj = task(tmp_path, ctl, slurm_cluster, x=8)
    job = obj.infra.job()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))  # running
    job.cancel()
    wait_until(lambda: sacct_states([job.job_id]).get(job.job_id) == "CANCELLED")
    wait_until_worker_killed(obj, job.job_id)
    with pytest.raises(JobFailedError):
        task(tmp_path, ctl, slurm_cluster, x=8).process()
    retry = task(tmp_path, ctl, slurm_cluster, x=8, mode="retry", timeout_min=2)
    assert retry.process() == 24
    assert lines(ctl / "calls.txt") == ["8", "8"]


@pytest.mark.timeout(120)
def test_running_array_element_is_alive_by_its_own_job_id(
    tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    """A claim made inside an array element records its SLURM_JOB_ID (its own job id),
    which squeue prints as <array>_<index>: it must still be seen alive (else another
    worker takes the claim over and computes the same work twice)."""
    import subprocess

    from exca.graph import registry

    array = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--array=0-1",
            f"--output={tmp_path}/%A_%a.out",
            "--wrap=sleep 60",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    try:

        def own_ids() -> list[str]:
            out = subprocess.run(
                ["squeue", "-h", "-o", "%i|%T|%A", "-j", array],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.split()
            return [line.split("|")[2] for line in out if line.split("|")[1] == "RUNNING"]

        filelog.wait_until(lambda: len(own_ids()) == 2, timeout=60)
        ids = own_ids()
        assert array in ids  # one element has the array's own id, the other a new one
        (other,) = [i for i in ids if i != array]
        registry._ALIVE_CACHE.clear()
        assert registry.slurm_job_alive(other) is True
        assert registry.queued_jobs([other, f"{array}_1", f"{array}_7"]) == {other, f"{array}_1"}
    finally:
        subprocess.run(["scancel", array], check=False, timeout=30)
    filelog.wait_until(lambda: not registry.queued_jobs([other]), timeout=60)


@pytest.mark.timeout(120)
def test_an_option_sbatch_refuses_names_the_config(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster
) -> None:
    """sbatch's own error named neither the config nor where the option came from."""
    import submitit

    obj = task(
        tmp_path, ctl, slurm_cluster, x=2, slurm_additional_parameters={"gres": "gpu:volta:1"}
    )
    with pytest.raises(submitit.core.utils.FailedJobError) as info:
        obj.process()
    message = str(info.value)
    assert "slurm refused the job(s) of" in message and obj.infra.uid() in message
    assert "gres" in message and "slurm_additional_parameters" in message
    assert obj.infra.status() == "not submitted"
    assert not (ctl / "calls.txt").exists()
    # nothing was queued: the refused submission's pickle and sbatch script are removed
    assert list((tmp_path / "cache").rglob("*.pkl")) == []
    assert list((tmp_path / "cache").rglob(".submission_file_*.sh")) == []


@pytest.mark.timeout(120)
def test_a_submission_sbatch_refuses_leaves_no_marker(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster
) -> None:
    """The marker of a submission (jobs/<token>.submitting, written before sbatch for a
    later run to adopt jobs whose submitter was killed before recording them) stayed in
    the node folders after sbatch refused the submission: no command removed it (`clean
    orphans` neither), only a later submission of the same node (a probe). Now it goes
    when sbatch refused it, for a call, a map's array and a detached run alike."""
    import submitit

    bad = {"slurm_additional_parameters": {"gres": "gpu:volta:1"}}
    root = tmp_path / "cache"
    obj = task(tmp_path, ctl, slurm_cluster, x=2, **bad)
    with pytest.raises(submitit.core.utils.FailedJobError, match="refused"):
        obj.process()
    settings = {"folder": root, "cluster": "slurm", **resources(slurm_cluster), **bad}
    mapped = SlurmMap(ctl=str(ctl), infra=settings)
    with pytest.raises(submitit.core.utils.FailedJobError, match="refused"):
        list(mapped.process([1, 2]))
    detached = task(tmp_path, ctl, slurm_cluster, x=3, **bad)
    with pytest.raises(submitit.core.utils.FailedJobError, match="refused"):
        exca.graph.run(detached.process.node(), wait=False)
    assert len(list(root.glob("*/*/jobs"))) == 3  # (where the markers were)
    assert sorted(root.rglob("*.submitting")) == []
    assert not (ctl / "calls.txt").exists()


@pytest.mark.timeout(240)
def test_a_hyphenated_sbatch_option_replaces_the_field(
    tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    """{"cpus-per-task": 2} with cpus_per_task=1: submitit wrote both --cpus-per-task=2 and
    the field's --cpus-per-task=1 (last: sbatch took it), while the check assumed 2."""
    if slurm_cluster.cpus_per_node < 2:
        pytest.skip("needs a node of 2 CPUs")
    settings = {"folder": tmp_path / "cache", "cluster": "slurm", **resources(slurm_cluster)}
    obj = SlurmEnv(
        names=("SLURM_CPUS_PER_TASK",),
        infra={**settings, "slurm_additional_parameters": {"cpus-per-task": 2}},
    )
    assert settings["cpus_per_task"] == 1
    assert obj.read() == {"SLURM_CPUS_PER_TASK": "2"}


@pytest.mark.timeout(300)
def test_every_rank_of_a_multi_task_slurm_job_runs_the_method(
    tmp_path: Path, slurm_cluster: SlurmCluster
) -> None:
    """tasks_per_node=2 with srun: rank 1 waited for rank 0's claim instead of running the
    method, and rank 0 waited for rank 1 to meet it (distributed training's rendezvous):
    the job failed after its wait (a probe). Every rank runs it; rank 0's result is stored."""
    if slurm_cluster.cpus_per_node < 2:
        pytest.skip("needs a node of 2 CPUs")
    from ranks import RankedMap, RankedTask

    meeting = tmp_path / "meeting"
    infra = {
        "folder": tmp_path / "cache",
        "cluster": "slurm",
        **resources(slurm_cluster, tasks_per_node=2, slurm_use_srun=True),
    }
    assert RankedTask(meeting=str(meeting), infra=infra).train() == "rank 0 of 2"
    assert sorted(lines(meeting / "calls.txt")) == ["train rank=0", "train rank=1"]
    mapped = RankedMap(meeting=str(meeting), infra={**infra, "max_jobs": 1})
    assert list(mapped.infer([1, 2])) == ["1 by rank 0 of 2", "2 by rank 0 of 2"]
    assert sorted(lines(meeting / "calls.txt"))[:2] == ["infer rank=0", "infer rank=1"]


@pytest.mark.timeout(300)
def test_a_multi_task_slurm_job_whose_rank_one_dies_as_it_starts_fails_soon(
    tmp_path: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    """tasks_per_node=2 with srun, rank 1 killed as it starts (loading its work), before
    it follows rank 0's calls: rank 0, its call made, waited STARTUP_S (600 s) for the
    process file rank 1 never wrote. Rank 1's process gone from the node (where
    slurmstepd started both tasks, SLURM_GTIDS) tells it."""
    if slurm_cluster.cpus_per_node < 2:
        pytest.skip("needs a node of 2 CPUs")
    from rank_dies_early import RANK_ONE_DIED_EARLY, RankOneDiesEarly

    infra = {
        "folder": tmp_path / "cache",
        "cluster": "slurm",
        **resources(slurm_cluster, tasks_per_node=2, slurm_use_srun=True),
    }
    task = RankOneDiesEarly(infra=infra)
    # (srun ends the step at once, see the test after this one: rank 0, waiting for rank 1,
    # is ended too, unless it told rank 1 gone, after UNSEEN_S, within Slurm's KillWait)
    with pytest.raises(RuntimeError, match=RANK_ONE_DIED_EARLY):
        task.train()
    assert task.infra.status() == "failed"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dies", [0, 1])
def test_a_multi_node_slurm_job_ends_once_one_of_its_ranks_died(
    tmp_path: Path, slurm_cluster: SlurmCluster, short_result_wait: None, dies: int
) -> None:
    """A rank of a multi-node job killed (out of memory...): srun let the other ranks run
    on, waiting for it in their collectives, or for its process file, out of their host's
    sight: rank 0 waited STARTUP_S (600 s) for rank 1 killed as it started, rank 1 waited
    for rank 0's lead file to go stale (600 s) once rank 0 was killed during the call.
    srun now ends the step: the job fails at once (the rank waiting for the dead one,
    here 25 s, is ended), and its error names the rank that died first and its log.
    (Each rank takes the other for one of another host; its waits are 40 s, not 600 s.)"""
    if slurm_cluster.cpus_per_node < 2:
        pytest.skip("needs a node of 2 CPUs")
    from rank_deaths import RankDies

    log = tmp_path / "log.txt"
    infra = {
        "folder": tmp_path / "cache",
        "cluster": "slurm",
        **resources(slurm_cluster, tasks_per_node=2, slurm_use_srun=True),
    }
    when = "loading" if dies else "call"  # (rank 1 before it follows; rank 0 mid-call)
    task = RankDies(
        log=str(log), dies=dies, when=when, sleep_s=25, other_hosts=True, startup_s=40, infra=infra
    )
    said = rf"rank {dies} ended first: its process died \(killed by SIGKILL.* \(its log: \S+_{dies}_log\.err\)"
    with pytest.raises(JobFailedError, match=said):
        task.train()
    assert task.infra.status() == "failed"
    assert "start rank=0" in lines(log)
    assert not [line for line in lines(log) if line.startswith("end")]  # (ended by srun)


@pytest.mark.timeout(300)
def test_a_multi_node_slurm_job_whose_rank_zero_calls_os_exit_ends_soon(
    tmp_path: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    """Rank 0 of a multi-node job calling os._exit(0) in its call (exit code 0: srun lets
    the step run; no finally: nothing announced): rank 1, whose node cannot see rank 0's
    process, waited for rank 0's lead file to go stale (LEAD_STALE_S, 600 s), then said
    "stopped refreshing". Rank 0's watcher (a process of its own, left by slurmstepd
    while the step runs) writes its ended mark: rank 1 stops at once and says so.
    (Each rank takes the other for one of another host; its waits are 40 s, not 600 s.)"""
    if slurm_cluster.cpus_per_node < 2:
        pytest.skip("needs a node of 2 CPUs")
    from rank_deaths import RankDies

    infra = {
        "folder": tmp_path / "cache",
        "cluster": "slurm",
        **resources(slurm_cluster, tasks_per_node=2, slurm_use_srun=True),
    }
    log = tmp_path / "log.txt"
    task = RankDies(log=str(log), when="os_exit", other_hosts=True, startup_s=40, infra=infra)
    # (srun reported rank 1, which stopped then: its error said "rank 1 ended first")
    said = r"rank 0 ended first: its process exited in its call, without a result.* rank 1 then stopped"
    with pytest.raises(JobFailedError, match=said):
        task.train()
    assert task.infra.status() == "failed"
    (rank_one,) = (tmp_path / "cache").rglob("*_1_log.err")
    said = r"rank 0 \(pid \d+ on \S+\) ended without finishing its calls \(os._exit, killed\?\)"
    assert re.search(said, rank_one.read_text()), rank_one.read_text()[-2000:]


PastTheWarningJob = tuple[PastTheWarning, tp.Any, Path]  # (config, its job, its ctl)


@pytest.fixture(scope="module")
def job_past_the_warning(
    tmp_path_factory: pytest.TempPathFactory, slurm_cluster: SlurmCluster
) -> tp.Iterator[tp.Callable[[], PastTheWarningJob]]:
    """The job of test_a_srun_job_runs_past_slurms_time_limit_warning, sent by the first
    test of the module calling this (in its body: in its Slurm turn): a job of 2 minutes
    on one CPU, which runs until Slurm's warning, 60 to 90 s after its start (USR2@30: see
    executors.slurm_signal_delay_s). test_a_srun_job_past_..._is_submitted sends it early;
    the tests between it and that test run meanwhile, on the cluster's other CPU: each
    needs one at a time (the forced-job tests from test_slurm_forced_job_while_an_earlier_
    job_runs on, whose later jobs wait for the earlier one, then the requeue and retry
    tests). The tests holding both, such as
    test_every_rank_of_a_multi_task_slurm_job_runs_the_method,
    test_slurm_forced_job_array_holds_back_only_the_config_with_a_running_job or
    test_status_of_a_map_whose_job_wrote_everything_is_completed (2 elements, each living
    8 s after its result), come before or after."""
    settings = resources(slurm_cluster, timeout_min=2, slurm_use_srun=True)
    yield from _one_job_in_the_background(tmp_path_factory, "past_the_warning", settings)


@pytest.fixture(scope="module")
def job_until_the_time_limit(
    tmp_path_factory: pytest.TempPathFactory, slurm_cluster: SlurmCluster
) -> tp.Iterator[tp.Callable[[], PastTheWarningJob]]:
    """The job of test_every_rank_of_a_srun_job_runs_until_its_time_limit, sent by the
    first test of the module calling this (in its Slurm turn): 2 ranks (srun) blocked
    until Slurm stops them at their 1-minute limit, 65 to 95 s after the start (Slurm
    looks at time limits every 30 s, then waits KillWait). Overcommitted on one CPU
    (--overcommit: 2 tasks, 1 CPU), so that the tests between
    test_every_rank_of_a_srun_job_until_its_time_limit_is_submitted and that test run
    meanwhile on the cluster's other CPU (each needs one at a time: the queue-state tests
    from test_the_state_of_a_cancelled_job_stays_cancelled on, whose jobs are pending,
    held, or arrays of max_workers=1, then the "failures" section and the clear_job tests
    after it); it held both CPUs, and the Slurm tests, which run in turn, waited for it
    (~90 s)."""
    extra = {"slurm_additional_parameters": {"overcommit": True}}
    settings = resources(
        slurm_cluster, timeout_min=1, tasks_per_node=2, slurm_use_srun=True, **extra
    )
    yield from _one_job_in_the_background(
        tmp_path_factory, "until_the_time_limit", settings, block=True
    )


def _one_job_in_the_background(
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    settings: dict[str, tp.Any],
    block: bool = False,
) -> tp.Iterator[tp.Callable[[], PastTheWarningJob]]:
    """A module fixture's body: a function sending one PastTheWarning job with these Slurm
    ``settings`` (the first call; ``block``: its method waits on ctl/block until the end)
    and giving it; cancelled at the end (never left running when the test that waits for
    it did not run)."""
    sent: list[PastTheWarningJob] = []

    def send() -> PastTheWarningJob:
        if not sent:
            tmp_path = tmp_path_factory.mktemp(name)
            ctl = tmp_path / "ctl"
            ctl.mkdir()
            if block:
                (ctl / "block").touch()
            infra = {"folder": tmp_path / "cache", "cluster": "slurm", **settings}
            obj = PastTheWarning(ctl=str(ctl), infra=infra)
            sent.append((obj, obj.infra.job(), ctl))
        return sent[0]

    yield send
    if sent:
        import subprocess

        (sent[0][2] / "block").unlink(missing_ok=True)
        subprocess.run(["scancel", sent[0][1].job_id], check=False, timeout=30)


@pytest.mark.timeout(120)
def test_a_srun_job_past_its_time_limit_warning_is_submitted(
    job_past_the_warning: tp.Callable[[], PastTheWarningJob],
) -> None:
    """Sends the job that test_a_srun_job_runs_past_slurms_time_limit_warning (after the
    forced-job, requeue and retry tests below) waits for, so that its minute and a half
    overlaps the tests in between: a 2-minute job is warned 30 s before its limit (Slurm
    sends it up to 60 s earlier still: 30 s after the job's start at the soonest). (Sent
    after the forced-job tests, that test still waited ~30 s for it.)"""
    _, job, _ = job_past_the_warning()
    assert job.job_id.isdigit(), job.job_id
    script = Path(job.submitit_job.paths.submission_file).read_text()
    assert "#SBATCH --time=2\n" in script and "#SBATCH --signal=USR2@30\n" in script


@pytest.mark.timeout(300)
def test_slurm_forced_job_while_an_earlier_job_runs(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster
) -> None:
    """mode=force while the config's job runs: a new job, after that one (afterany), that
    computes again; its job.result() is that new result (job() returned the running job,
    and nothing was computed again)."""
    (ctl / "block").touch()
    first = task(tmp_path, ctl, slurm_cluster, x=4).infra.job()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))  # running
    forced = task(tmp_path, ctl, slurm_cluster, x=4, mode="force")
    job = forced.infra.job()
    assert job.job_id != first.job_id
    (ctl / "block").unlink()
    assert job.result() == 12
    assert lines(ctl / "calls.txt") == ["4", "4"]
    assert first.result() == 12 and forced.process() == 12
    assert lines(ctl / "calls.txt") == ["4", "4"]


@pytest.mark.timeout(300)
def test_a_forced_job_whose_result_is_written_is_completed_while_its_process_ends(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster
) -> None:
    """status() of a forced instance said "running" once its job had written the forced
    result (job.result() returned it), until the job left the queue."""
    settings = {"folder": tmp_path / "cache", "cluster": "slurm", **resources(slurm_cluster)}
    assert Lingering(ctl=str(ctl), linger=0, infra={**settings, "cluster": None}).process() == 2
    forced = Lingering(ctl=str(ctl), infra={**settings, "mode": "force"})
    job = forced.infra.job()
    assert job.result() == 2 and lines(ctl / "calls.txt") == ["1", "1"]
    assert forced.infra.status() == "completed"
    assert forced.process() == 2 and lines(ctl / "calls.txt") == ["1", "1"]


@pytest.mark.timeout(300)
def test_slurm_forced_job_while_an_earlier_local_job_runs(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster
) -> None:
    """mode=force on Slurm while the config's earlier job runs on cluster local (Slurm
    cannot start after a process): job() returned that local job as the forced one, and
    its result(), the forced call and status() gave what it computed before the force
    (computed once). A Slurm job goes out at once and computes again once the local
    computation ends (it waits for its claim, as off Slurm)."""
    (ctl / "block").touch()
    first = task(tmp_path, ctl, slurm_cluster, x=4, cluster="local").infra.job()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))  # running
    forced = task(tmp_path, ctl, slurm_cluster, x=4, mode="force")
    job = forced.infra.job()
    assert (job.cluster, first.cluster) == ("slurm", "local")
    assert job.job_id in {r["job_id"] for r in records(forced.infra.uid_folder())}
    (ctl / "block").unlink()
    assert first.result() == 12 and job.result() == 12
    assert lines(ctl / "calls.txt") == ["4", "4"]
    assert forced.process() == 12 and forced.infra.status() == "completed"
    assert lines(ctl / "calls.txt") == ["4", "4"]


@pytest.mark.timeout(300)
def _refused_as_earlier(folder: Path, job: tp.Any, first: tp.Any, forced: tp.Any) -> None:
    """With the record of the job that wrote the cached result removed, the forced job
    (cancelled before it started) and the forced call still say that result is earlier."""
    (folder / "jobs" / f"{first.job_id}.json").unlink()
    said = rf"job {job.job_id} was cancelled before it started.*earlier one \(of job {first.job_id}"
    with pytest.raises(JobFailedError, match=said):
        job.result()
    with pytest.raises(JobFailedError, match=said):
        forced.process()


def test_forced_job_whose_records_are_gone_orders_jobs_by_time_not_by_id(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    """Whether a forced job that ended without computing has a forced result cached: with a
    job record removed, jobs were ordered by their ids, a local job's (a pid) compared
    with a Slurm job's. An earlier local job, running when the force was asked, wrote
    after it, its record gone: its result was taken for the forced one (its pid is larger
    than the Slurm id); a later Slurm job computing after a forced local job whose record
    is gone: its result was called "an earlier one" (a smaller id)."""
    import subprocess

    held = {"slurm_additional_parameters": {"begin": "now+600"}}
    (ctl / "block").touch()
    first = task(tmp_path, ctl, slurm_cluster, x=4, cluster="local").infra.job()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))  # running
    forced = task(tmp_path, ctl, slurm_cluster, x=4, mode="force", **held)
    job = forced.infra.job()
    subprocess.run(["scancel", job.job_id], check=True, timeout=30)
    (ctl / "block").unlink()
    assert first.result() == 12  # (written after the force)
    folder = forced.infra.uid_folder()
    assert folder is not None
    _refused_as_earlier(folder, job, first, forced)
    # a forced local job killed before writing, its record gone; then a Slurm job computes
    (ctl / "kill").touch()
    forced = task(tmp_path, ctl, slurm_cluster, x=4, mode="force", cluster="local")
    job = forced.infra.job()
    with pytest.raises(JobFailedError):
        job.result()
    (ctl / "kill").unlink()
    (folder / "jobs" / f"{job.job_id}.json").unlink()
    assert task(tmp_path, ctl, slurm_cluster, x=4, mode="retry").process() == 12
    assert job.result() == 12 and job.state == "COMPLETED"
    assert len(lines(ctl / "calls.txt")) == 3  # (the earlier job, the killed one, the retry)


def test_an_earlier_queued_slurm_job_whose_record_is_gone_is_not_the_forced_one(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    """A Slurm job still queued when its config was forced, computing after the force
    (the forced job cancelled before it started), its record removed: the rule for a
    record gone took when it computed (after the force was asked) for a forced result
    (a review): two Slurm jobs are ordered by their ids, as by their records (the
    cached result says which kind of job wrote it)."""
    import subprocess

    held = {"slurm_additional_parameters": {"begin": "now+600"}}
    first = task(tmp_path, ctl, slurm_cluster, x=4, **held).infra.job()  # (queued)
    forced = task(tmp_path, ctl, slurm_cluster, x=4, mode="force")
    job = forced.infra.job()  # (after the earlier one: pending too)
    subprocess.run(["scancel", job.job_id], check=True, timeout=30)
    subprocess.run(
        ["scontrol", "update", f"jobid={first.job_id}", "starttime=now"], check=True, timeout=30
    )
    assert first.result() == 12  # (computed after the force was asked)
    folder = forced.infra.uid_folder()
    assert folder is not None
    _refused_as_earlier(folder, job, first, forced)
    assert len(lines(ctl / "calls.txt")) == 1


@pytest.mark.timeout(300)
def test_a_forced_job_cancelled_before_it_started_says_so(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    """A forced job cancelled while pending computed nothing: with the config's earlier
    job running meanwhile, job.result(), the forced instance's call and status() gave
    what that earlier job wrote as the forced result (a probe); with a result cached, the
    force removed it and the errors said only "was cancelled"."""
    import subprocess

    (ctl / "block").touch()
    first = task(tmp_path, ctl, slurm_cluster, x=4).infra.job()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))  # running
    forced = task(tmp_path, ctl, slurm_cluster, x=4, mode="force")
    job = forced.infra.job()  # (starts after the earlier job: pending)
    assert job.state == "PENDING" and forced.infra.status() == "running"
    subprocess.run(["scancel", job.job_id], check=True, timeout=30)
    (ctl / "block").unlink()
    assert first.result() == 12  # (the earlier job writes its result after the force)
    said = (
        rf"job {job.job_id} was cancelled before it started \(state CANCELLED.*\): the "
        rf"forced computation did not happen; the result cached now is an earlier one "
        rf"\(of job {first.job_id}, submitted before it\), not a forced one"
    )
    with pytest.raises(JobFailedError, match=said):
        job.result()
    assert job.state.startswith("CANCELLED") and forced.infra.status() == "failed"
    with pytest.raises(JobFailedError, match=said):
        forced.process()
    cached = task(tmp_path, ctl, slurm_cluster, x=4)  # (the earlier job's result: kept)
    assert cached.process() == 12 and cached.infra.status() == "completed"
    # a forced job removes the result it replaces once queued: cancelled, nothing is cached
    held = {"slurm_additional_parameters": {"begin": "now+600"}}
    again = task(tmp_path, ctl, slurm_cluster, x=4, mode="force", **held)
    job = again.infra.job()
    subprocess.run(["scancel", job.job_id], check=True, timeout=30)
    with pytest.raises(JobFailedError, match=r"the result it replaces was removed when it was"):
        job.result()
    fresh = task(tmp_path, ctl, slurm_cluster, x=4)
    assert fresh.infra.status() == "failed"
    with pytest.raises(JobFailedError, match=rf"job {job.job_id} was cancelled before it started"):
        fresh.process()
    assert lines(ctl / "calls.txt") == ["4"]  # (the forced jobs computed nothing)
    assert task(tmp_path, ctl, slurm_cluster, x=4, mode="retry").process() == 12


@pytest.mark.timeout(300)
def test_a_result_computed_after_a_cancelled_forced_job_counts_as_the_forced_one(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    """A forced job cancelled before it started, then the config computed again: inline
    by another instance in mode retry, the forced instance kept raising that the result
    was "an earlier one (of a computation without a job)"; by a later job K, the forced
    job's result() called K's result "an earlier one (of job K)" while the forced
    instance's call returned it."""
    import subprocess

    held = {"slurm_additional_parameters": {"begin": "now+600"}}
    assert task(tmp_path, ctl, slurm_cluster, x=6).process() == 18
    forced = task(tmp_path, ctl, slurm_cluster, x=6, mode="force", **held)
    job = forced.infra.job()
    subprocess.run(["scancel", job.job_id], check=True, timeout=30)
    with pytest.raises(JobFailedError, match="the result it replaces was removed"):
        job.result()
    inline = SlurmTask(x=6, ctl=str(ctl), infra={"folder": tmp_path / "cache", "mode": "retry"})
    assert inline.process() == 18  # (computed after the force: it counts)
    assert forced.infra.status() == "completed" and forced.process() == 18
    assert job.result() == 18 and forced.infra.job().result() == 18
    # again, the config computed since by a later job
    forced = task(tmp_path, ctl, slurm_cluster, x=6, mode="force", **held)
    job = forced.infra.job()
    subprocess.run(["scancel", job.job_id], check=True, timeout=30)
    later = task(tmp_path, ctl, slurm_cluster, x=6, mode="retry").infra.job()
    assert int(later.job_id) > int(job.job_id) and later.result() == 18
    assert job.result() == 18 and job.state == "COMPLETED"
    assert forced.process() == 18 and forced.infra.status() == "completed"
    assert len(lines(ctl / "calls.txt")) == 3  # (the forced jobs computed nothing)
    # a computation without a job started BEFORE the force, writing after it: refused as
    # an earlier job's is (a review: it was taken for the forced result)
    import sys

    early = tmp_path / "early"
    early.mkdir()
    (early / "block").touch()  # (its first call blocks while this file exists)
    script = (
        "import slurm_jobs as t\n"
        f"t.SlurmTask(x=6, ctl={str(early)!r}, infra={{'folder': {str(tmp_path / 'cache2')!r}}})"
        ".process()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    inline_run = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        wait_until(lambda: bool(lines(early / "calls.txt")), timeout=60)
        settings = {"folder": tmp_path / "cache2", "mode": "force", **held}
        forced = task(tmp_path, early, slurm_cluster, x=6, **settings)
        job = forced.infra.job()
        subprocess.run(["scancel", job.job_id], check=True, timeout=30)
    finally:
        (early / "block").unlink()
        inline_run.wait(timeout=120)
    assert inline_run.returncode == 0
    with pytest.raises(JobFailedError, match="of a computation without a job, started before"):
        forced.process()
    assert forced.infra.status() == "failed"


@pytest.mark.timeout(300)
def test_a_job_forced_by_its_sub_config_and_cancelled_names_what_was_forced(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    """A parent's job replacing its result because its sub-config is in mode force,
    cancelled before it started: its result() said the parent was not computed again
    "(mode='force')" and that "a new instance in mode='force'" computes it, though the
    parent is not in that mode."""
    import subprocess

    folder = tmp_path / "cache"
    sub = SlurmTask(x=3, ctl=str(ctl), infra={"folder": folder})
    assert SlurmParent(sub=sub, infra={"folder": folder}).process() == 1009
    forced = SlurmTask(x=3, ctl=str(ctl), infra={"folder": folder, "mode": "force"})
    held = {"slurm_additional_parameters": {"begin": "now+600"}}
    infra = {"folder": folder, "cluster": "slurm", **resources(slurm_cluster), **held}
    parent = SlurmParent(sub=forced, infra=infra)
    job = parent.infra.job()
    subprocess.run(["scancel", job.job_id], check=True, timeout=30)
    with pytest.raises(JobFailedError) as info:
        job.result()
    said = str(info.value)
    assert f"not computed again (its upstream {forced.process.node().uid} is in " in said
    assert "mode='force'): job" in said and "the forced computation did not happen" in said
    assert said.endswith("nothing is cached (use mode='retry' to recompute)"), said
    assert "new instance in mode='force'" not in said


def _start_requeued(job_id: str, scontrol: str = "scontrol") -> None:
    """Let a requeued job (PENDING now) start again at once: Slurm makes it wait 2 minutes.
    Not in the second its previous run was killed: slurmd refuses a launch whose credential
    is of that second (revoked up to it): the job ended FAILED, exit code 1 ("Killing
    non-startable batch job: Job credential revoked"), and never ran again."""
    import subprocess

    requeued_by = int(time.time())  # (the kill came before the job was seen pending)
    wait_until(lambda: int(time.time()) > requeued_by)
    update = [scontrol, "update", f"jobid={job_id}", "StartTime=now"]
    subprocess.run(update, check=True, timeout=30)


def _requeued_while_running(tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster) -> tp.Any:
    """The job of a task (x=9) requeued while it ran (its method blocked), once pending
    again."""
    import subprocess

    (ctl / "block").touch()
    job = task(tmp_path, ctl, slurm_cluster, x=9).infra.job()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))  # running
    subprocess.run(["scontrol", "requeue", job.job_id], check=True, timeout=30)
    wait_until(lambda: registry.queue_state(job.job_id) == "PENDING")
    return job


@pytest.mark.timeout(300)
def test_a_requeued_job_cancelled_while_pending_again_had_started(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    """A job that ran, was requeued, then cancelled while pending: sacct -X shows only
    its last run (no node), so it was said "cancelled before it started", without its
    log."""
    import subprocess

    job = _requeued_while_running(tmp_path, ctl, slurm_cluster)
    subprocess.run(["scancel", job.job_id], check=True, timeout=30)
    wait_until(lambda: sacct_states([job.job_id]).get(job.job_id, "").startswith("CANCELLED"))
    assert registry.slurm_exit(job.job_id) != registry.NEVER_STARTED
    log = job.submitit_job.paths.stderr
    said = rf"job {job.job_id} was cancelled \(state CANCELLED.*\); its log: {re.escape(str(log))}"
    with pytest.raises(JobFailedError, match=said):
        job.result()
    with pytest.raises(JobFailedError, match=said):
        task(tmp_path, ctl, slurm_cluster, x=9).process()


@pytest.mark.timeout(300)
def test_a_requeued_job_ended_while_pending_again_quotes_no_exit_code(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    """A job that ran, was requeued, then ended before its new run started (its deadline
    passed while pending): sacct -D gives that last run the exit code 1 though no process
    ran in it, and the error said "its process exited with code 1"."""
    import subprocess

    job = _requeued_while_running(tmp_path, ctl, slurm_cluster)
    # (its time limit, 5 min, cannot fit before this deadline: ended when next scheduled)
    update = ["scontrol", "update", f"jobid={job.job_id}", "Deadline=now+2", "StartTime=now"]
    subprocess.run(update, check=True, timeout=30)
    wait_until(lambda: sacct_states([job.job_id]).get(job.job_id, "").startswith("DEADLINE"))
    said = (
        rf"job {job.job_id} ended with state DEADLINE without writing its result: it was "
        "requeued after running, then ended before it started again; its log: "
    )
    for call in (job.result, task(tmp_path, ctl, slurm_cluster, x=9).process):
        with pytest.raises(JobFailedError, match=said) as info:
            call()
        assert "exited with code" not in str(info.value)


@pytest.mark.timeout(300)
def test_a_detached_forced_job_cancelled_before_it_started_is_not_its_result(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    """A detached run forcing a config while its earlier job runs: its job cancelled
    while pending, node.result() and the forced instance's call returned what the
    earlier job wrote after the force (a probe)."""
    import subprocess

    (ctl / "block").touch()
    first = task(tmp_path, ctl, slurm_cluster, x=5).infra.job()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))  # running
    forced = task(tmp_path, ctl, slurm_cluster, x=5, mode="force")
    node = forced.process.node()
    exca.graph.run(node, wait=False)
    ids = [r["job_id"] for r in records(forced.infra.uid_folder()) if r["job_id"] != first.job_id]
    subprocess.run(["scancel", *ids], check=True, timeout=30)
    (ctl / "block").unlink()
    assert first.result() == 15
    said = rf"job {ids[0]} was cancelled before it started.*earlier one \(of job {first.job_id},"
    with pytest.raises(JobFailedError, match=said):
        node.result()
    with pytest.raises(JobFailedError, match=said):
        forced.process()
    assert forced.infra.status() == "failed" and lines(ctl / "calls.txt") == ["5"]


@pytest.mark.parametrize("time_limit", ["1", "0:01:00"])
def test_a_time_in_slurm_additional_parameters_sets_the_warning_delay(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, time_limit: str
) -> None:
    """A ``time`` in slurm_additional_parameters is the job's limit in the sbatch script
    (it replaces timeout_min's): the warning comes 1 s before a 1-minute limit, not the 90 s
    of timeout_min's default (Slurm then sent it as the job started)."""
    extra = {"slurm_additional_parameters": {"time": time_limit}}
    obj = task(tmp_path, ctl, slurm_cluster, x=4, timeout_min=None, **extra)
    job = obj.infra.job()
    assert job.result() == 12
    script = Path(job.submitit_job.paths.submission_file).read_text()
    assert f"#SBATCH --time={time_limit}\n" in script
    assert "#SBATCH --signal=USR2@1\n" in script


@pytest.mark.timeout(300)
def test_a_srun_job_signalled_long_before_its_time_limit_is_still_requeued(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster
) -> None:
    """The signal also comes with a preemption (Slurm's send_user_signal), long before the
    time limit: submitit's handler still requeues the job, which computes the task again."""
    import subprocess

    (ctl / "block").touch()
    obj = task(tmp_path, ctl, slurm_cluster, x=6, timeout_min=15, slurm_use_srun=True)
    job = obj.infra.job()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))  # running
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True, timeout=30)
    wait_until(lambda: registry.queue_state(job.job_id) == "PENDING")  # requeued
    _start_requeued(job.job_id)
    assert job.result() == 18  # (its second run does not block)
    assert lines(ctl / "calls.txt") == ["6", "6"]
    assert "time limit is near" not in (job.stderr() or "")


@pytest.mark.timeout(300)
def test_a_preempted_job_whose_requeue_command_is_killed_is_not_cached_as_failed(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slurm's SIGTERM to a job it requeues can reach submitit's `scontrol requeue` before
    that exits (seen on a loaded machine): its CalledProcessError, raised inside the method,
    was cached as the config's failure. Here an `scontrol` on the job's PATH requeues, then
    is killed by SIGTERM, every time: the requeued job computes the task."""
    import shutil
    import subprocess

    real = shutil.which("scontrol")
    assert real is not None
    fake = tmp_path / "bin" / "scontrol"
    fake.parent.mkdir()
    fake.write_text(
        f'#!/bin/bash\nif [ "$1" = requeue ]; then {real} "$@"; kill -TERM $$; fi\n'
        f'exec {real} "$@"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    (ctl / "block").touch()
    obj = task(tmp_path, ctl, slurm_cluster, x=7, timeout_min=15, slurm_use_srun=True)
    job = obj.infra.job()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))  # running
    subprocess.run(["scancel", "--signal=USR2", job.job_id], check=True, timeout=30)
    wait_until(lambda: registry.queue_state(job.job_id) == "PENDING")  # requeued
    _start_requeued(job.job_id, scontrol=real)
    assert job.result() == 21
    assert lines(ctl / "calls.txt") == ["7", "7"]


@pytest.mark.timeout(300)
def test_a_detached_forcing_map_whose_jobs_die_is_not_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run(wait=False) of a forced map whose jobs die before computing: its old outputs
    went when the jobs went out, so it is not shown completed and its result is computed
    anew (it said completed and returned the outputs it was forced to replace). (Its jobs
    die importing its module, before the method: refused, not a failure of the method,
    see test_execution.py::test_a_job_whose_module_raises_at_import_caches_no_failure.)"""
    from test_map_execution import dying_module

    module = dying_module(tmp_path, monkeypatch)
    folder = tmp_path / "cache"
    config = {"scale_file": str(tmp_path / "scale")}
    infra = {"folder": folder, "cluster": "slurm", "mode": "force", "max_jobs": 1}
    node = module.Scaled(**config, infra=infra).process.node([1, 2])
    exca.graph.run(node, wait=False)
    filelog.wait_until(lambda: node.status() != "running", timeout=120, poll=0.5)
    assert node.status() == "not submitted"
    (tmp_path / "die").unlink()
    again = module.Scaled(**config, infra={"folder": folder}).process.node([1, 2])
    assert again.result() == [10, 20]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("how", ["call", "job"])
def test_a_retry_right_after_scancel_computes_again(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None, how: str
) -> None:
    """Right after scancel of a running job, Slurm still lists it (COMPLETING, for
    KillWait and the epilog): a call or job() in mode retry then followed it, and raised
    "was cancelled ... (use mode='retry' to recompute)" to a caller in mode retry; a
    second retry worked. The retry now computes it again (job(): its own job, at once)."""
    import subprocess

    (ctl / "block").touch()
    obj = task(tmp_path, ctl, slurm_cluster, x=4)
    job = obj.infra.job()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))  # running, blocked
    subprocess.run(["scancel", job.job_id], check=True, timeout=30)
    retry = task(tmp_path, ctl, slurm_cluster, x=4, mode="retry")
    if how == "job":
        again = retry.infra.job()
        assert again.job_id.isdigit() and again.job_id != job.job_id  # (a new job, at once)
        assert again.result() == 12
    assert retry.process() == 12
    assert lines(ctl / "calls.txt") == ["4", "4"]
    assert task(tmp_path, ctl, slurm_cluster, x=4).infra.status() == "completed"


@pytest.mark.timeout(300)
def test_retry_callers_following_a_job_cancelled_meanwhile_compute_it_again_once(
    tmp_path: Path,
    ctl: Path,
    slurm_cluster: SlurmCluster,
    short_result_wait: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A call and a job() in mode retry, made while another call's job runs, follow it;
    it is then cancelled: both raised "was cancelled ... (use mode='retry' to
    recompute)". The retry now computes it again, once for both."""
    import subprocess

    (ctl / "block").touch()
    job = task(tmp_path, ctl, slurm_cluster, x=5).infra.job()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))  # running, blocked
    with caplog.at_level("INFO", logger="exca"):
        call = Background(task(tmp_path, ctl, slurm_cluster, x=5, mode="retry").process)
        wait_until(lambda: f"running as job {job.job_id}" in caplog.text)  # (it follows it)
        followed = task(tmp_path, ctl, slurm_cluster, x=5, mode="retry").infra.job()
        assert followed.job_id == job.job_id
        subprocess.run(["scancel", job.job_id], check=True, timeout=30)
        call.join(timeout=WAIT_S)
    assert call.outcome == [15]
    assert followed.result() == 15  # (computed by its retry, or the call's: once)
    assert lines(ctl / "calls.txt") == ["5", "5"]


@pytest.mark.timeout(300)
def test_a_retry_job_cancelled_through_itself_is_not_sent_again(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, short_result_wait: None
) -> None:
    """job() in mode retry while another call's job runs follows that job; the user then
    stopped it with that job's own cancel(): its done() (or state, result()) took it for
    a job lost meanwhile and sent a new one, computing what was just cancelled. A job
    cancelled through it is not sent again (a later call in mode retry computes it)."""
    (ctl / "block").touch()
    job = task(tmp_path, ctl, slurm_cluster, x=6).infra.job()
    wait_until(lambda: bool(lines(ctl / "calls.txt")))  # running, blocked
    retry = task(tmp_path, ctl, slurm_cluster, x=6, mode="retry")
    followed = retry.infra.job()
    assert followed.job_id == job.job_id
    followed.cancel()
    wait_until(followed.done)
    assert followed.job_id == job.job_id and followed.state.startswith("CANCELLED")
    with pytest.raises(JobFailedError, match="was cancelled"):
        followed.result()
    assert len(records(retry.infra.uid_folder())) == 1  # nothing sent since
    assert lines(ctl / "calls.txt") == ["6"]
    wait_until_worker_killed(retry, job.job_id)
    assert retry.process() == 18  # (a new call in mode retry computes it)


@pytest.mark.timeout(300)
def test_a_retry_right_after_a_requeue_follows_the_requeued_job(
    tmp_path: Path,
    ctl: Path,
    slurm_cluster: SlurmCluster,
    short_result_wait: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A running job requeued (scontrol requeue here; a preemption, a node failure) is
    listed COMPLETING while Slurm stops its run, as a cancelled one is, then runs again
    under the same id: a job() in mode retry took it for a job ending without a result
    and submitted a second one (both then ran, one waiting in its allocation for the
    other's computation); a call or a job array planned to compute it again. They
    follow the requeued job."""
    import subprocess

    (ctl / "block").touch()
    job = task(tmp_path, ctl, slurm_cluster, x=7).infra.job()
    retry = task(tmp_path, ctl, slurm_cluster, x=7, mode="retry")
    try:
        wait_until(lambda: bool(lines(ctl / "calls.txt")))  # running, blocked
        subprocess.run(["scontrol", "requeue", job.job_id], check=True, timeout=30)
        assert registry.queue_state(job.job_id) == "COMPLETING"  # (its run is stopped)
        (entry,) = exca.graph.plan(retry.process.node()).entries  # (a call, a job array)
        assert entry.action == "wait", entry.reason
        again = retry.infra.job()
        assert again.job_id == job.job_id
        assert len(records(retry.infra.uid_folder())) == 1
        wait_until(lambda: registry.queue_state(job.job_id) == "PENDING")
        # (the plan and a wait say why it is pending: they said "pending as job N" only)
        (entry,) = exca.graph.plan(retry.process.node()).entries
        assert f"pending as job {job.job_id} (waits for its begin time" in entry.reason
        with caplog.at_level("WARNING", logger="exca"):
            assert not again.done()
        told = f"Waiting for job {job.job_id}, which waits for its begin time (squeue's"
        assert [r for r in caplog.records if r.getMessage().startswith(told)], caplog.text
        _start_requeued(job.job_id)
        assert again.result() == 21  # (its second run: not blocked)
    finally:
        subprocess.run(["scancel", job.job_id], check=False, timeout=30)
    assert lines(ctl / "calls.txt") == ["7", "7"]
    assert len(records(retry.infra.uid_folder())) == 1


@pytest.mark.timeout(300)
def test_a_srun_job_runs_past_slurms_time_limit_warning(
    job_past_the_warning: tp.Callable[[], PastTheWarningJob],
) -> None:
    """With slurm_use_srun=True the job step gets Slurm's warning (submitit's --signal,
    USR2, 90 s before the time limit, up to 60 s earlier still): submitit's handler raised
    in the method, and a 1-minute job failed after ~18 s, "reached its time limit" (a
    probe). Without srun the method runs until Slurm's limit: with srun too now, the
    warning is only logged. (Its job, sent by
    test_a_srun_job_past_its_time_limit_warning_is_submitted, ran meanwhile.)"""
    obj, job, ctl = job_past_the_warning()
    assert obj.run() == "rank 0"
    assert lines(ctl / "calls.txt") == ["start rank=0", "end rank=0"]
    log = job.stderr() or ""
    assert "signal SIGUSR2: this job's time limit is near" in log


@pytest.mark.timeout(300)
def test_status_of_a_map_whose_job_wrote_everything_is_completed(tmp_path: Path) -> None:
    """Right after the call returned, status() said "running" (and `exca list` too) while
    Slurm still listed the job that had written every output."""
    mapper = LingeringMap(infra={"folder": tmp_path, "cluster": "slurm"})
    assert list(mapper.process([1, 2])) == [1, 2]
    node = mapper.process.node([1, 2])
    job_id = exca.ops.logs(node)[-1].job_id
    assert job_id in registry.queued_jobs([job_id])  # (still listed: the case)
    assert node.status() == "completed"
    (info,) = exca.ops.inspect(tmp_path)
    assert (info.status, info.job_state) == ("success", "ended")


@pytest.mark.timeout(300)
def test_a_retry_job_array_right_after_scancel_submits_again(
    tmp_path: Path,
    ctl: Path,
    slurm_cluster: SlurmCluster,
    short_result_wait: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A job array in mode retry right after scancel of the array before (its running
    element still listed, COMPLETING) followed that element: "computed elsewhere
    (running as job N_0): not submitted again", then calls raised "was cancelled". It
    is now submitted again (the completed element is not)."""
    import subprocess

    (ctl / "block").touch()
    settings = {"folder": tmp_path / "cache", "cluster": "slurm", **resources(slurm_cluster)}
    base = BlocksOne(ctl=str(ctl), infra=settings)
    with base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(x=x) for x in (1, 2))
    wait_until(lambda: "1" in lines(ctl / "calls.txt"))  # x=1 runs, blocked
    wait_until(lambda: array[1].infra.status() == "completed")
    (record,) = records(array[0].infra.uid_folder())
    subprocess.run(["scancel", record["job_id"].split("_")[0]], check=True, timeout=30)
    retry = BlocksOne(ctl=str(ctl), infra={**settings, "mode": "retry"})
    with caplog.at_level("INFO", logger="exca"), retry.infra.job_array() as again:
        again.extend(retry.infra.clone_obj(x=x) for x in (1, 2))
    assert "not submitted again" not in caplog.text
    assert len(records(again[0].infra.uid_folder())) == 2  # submitted again
    wait_until_worker_killed(array[0], record["job_id"])
    (ctl / "block").unlink()  # (its first job, killed, never returns)
    assert [t.process() for t in again] == [1, 2]
    assert collections.Counter(lines(ctl / "calls.txt")) == {"1": 2, "2": 1}
