"""A submitting process killed right after ``sbatch`` returned, before exca recorded the
jobs (SIGKILL, Ctrl-C at the wrong instant), on the real Slurm cluster: the jobs stay
queued with no record. A rerun follows them (records them, as their submitter would have)
instead of submitting them again; a submission cut before ``sbatch`` is made once.

The submitter is a subprocess that kills itself at that instant (its first job record, or
its ``submit_array`` call). Every ``sbatch`` goes through a PATH shim that counts the
calls (the subprocess's too). The jobs of the killed submitter are held
(``--hold``, released by the test) so that the rerun finds them queued, not done.
"""

from __future__ import annotations

import collections
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import typing as tp
from pathlib import Path

import pytest
from filelog import lines, wait_until
from test_slurm_execution import SlurmMap, SlurmTask, records, resources

from exca.graph import registry
from slurm_cluster import SlurmCluster

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]

WAIT_S = 120.0

SUBMITTER = textwrap.dedent(
    """\
    import json, os, signal, sys

    import exca.graph.executors, exca.graph.scheduler, exca.graph.slurmhold
    import slurm_jobs as t

    spec = json.loads(sys.argv[1])

    def killed(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if spec.get("max_array_size"):  # (the array is split in parts of that size)
        exca.graph.executors.max_array_size = lambda: spec["max_array_size"]
    if spec["kill"] == "after-sbatch":  # (sbatch returned: the first job record is next)
        exca.graph.scheduler.Scheduler.record = killed
    elif spec["kill"] == "before-release":  # (the jobs' folders made: exca releases them next)
        exca.graph.slurmhold.release = killed
    else:  # (the submission is noted: sbatch is next)
        exca.graph.executors.submit_array = killed
    if spec["kind"] == "array":
        base = t.SlurmTask(ctl=spec["ctl"], infra=spec["infra"])
        with base.infra.job_array() as array:
            array.extend(base.infra.clone_obj(x=x) for x in spec["xs"])
    elif spec["kind"] == "task":
        t.SlurmTask(x=spec["xs"][0], ctl=spec["ctl"], infra=spec["infra"]).infra.job()
    else:
        list(t.SlurmMap(ctl=spec["ctl"], infra=spec["infra"]).process(spec["xs"]))
    sys.exit("not killed")
    """
)


class Sbatch:
    """The sbatch calls made through the PATH shim: the job id each one queued."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def jobs(self) -> list[str]:
        return [line.split()[-1] for line in lines(self.log)]

    def count(self) -> int:
        return len(self.jobs())


@pytest.fixture
def sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sbatch:
    real = shutil.which("sbatch")
    assert real is not None
    shim = tmp_path / "shim"
    shim.mkdir()
    log = tmp_path / "sbatch.log"
    (shim / "sbatch").write_text(
        f'#!/bin/sh\nout=$(\'{real}\' "$@") || exit $?\necho "$out" >> \'{log}\'\necho "$out"\n'
    )
    (shim / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")
    return Sbatch(log)


@pytest.fixture
def ctl(tmp_path: Path) -> Path:
    folder = tmp_path / "ctl"
    folder.mkdir()
    return folder


@pytest.fixture
def to_cancel() -> tp.Iterator[list[str]]:
    """Job ids the test cancels at its end (its own jobs, by id), whatever happened."""
    ids: list[str] = []
    yield ids
    if ids:
        subprocess.run(["scancel", *sorted(set(ids))], check=False, timeout=30)


def settings(
    tmp_path: Path, cluster: SlurmCluster, held: bool, **extra: tp.Any
) -> dict[str, tp.Any]:
    infra = {"folder": str(tmp_path / "cache"), "cluster": "slurm", **resources(cluster), **extra}
    if held:
        infra["slurm_additional_parameters"] = {"hold": True}
    return infra


def killed_submitter(
    kind: str,
    kill: str,
    ctl: Path,
    infra: dict[str, tp.Any],
    xs: list[int],
    env: dict[str, str] | None = None,
    **spec: tp.Any,
) -> None:
    spec.update(kind=kind, kill=kill, ctl=str(ctl), infra=infra, xs=xs)
    proc = subprocess.run(
        [sys.executable, "-c", SUBMITTER, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        env=None if env is None else {**os.environ, **env},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def markers(folder: Path | None) -> list[Path]:
    """The submissions noted in a node folder (see registry.Marker)."""
    assert folder is not None
    return sorted((folder / "jobs").glob("*.submitting"))


def squeue_lines(job_ids: list[str], fields: str) -> list[str]:
    """squeue's lines (format ``fields``) for the jobs (array elements) of these ids."""
    return subprocess.run(
        ["squeue", "-h", "-r", "-o", fields, "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.splitlines()


def queued(job_ids: list[str]) -> list[str]:
    """The jobs (array elements) of these ids that squeue lists."""
    return sorted((line.strip() for line in squeue_lines(job_ids, "%i")), key=job_order)


def reasons(job_ids: list[str]) -> dict[str, str]:
    """squeue's reason for each job (array element) of these ids it lists."""
    lines = squeue_lines(job_ids, "%i|%r")
    return dict(line.split("|", 1) for line in lines if "|" in line)


def job_order(job_id: str) -> list[int]:
    return [int(p) for p in job_id.split("_")]


def release(job_ids: list[str]) -> None:
    for base in sorted({j.split("_")[0] for j in job_ids}):
        subprocess.run(["scontrol", "release", base], check=True, timeout=30)


def job_of(folder: Path | None) -> str:
    (record,) = records(folder)
    return str(record["job_id"])


def computed_by(folder: Path | None) -> str:
    """What the job recorded for a node printed (its stdout log)."""
    (record,) = registry.read_all(folder)
    wait_until(record.stdout.exists, timeout=WAIT_S)
    return record.stdout.read_text()


def calls(ctl: Path) -> collections.Counter[str]:
    return collections.Counter(lines(ctl / "calls.txt"))


@pytest.mark.parametrize("split", [None, 2])
def test_a_rerun_follows_the_array_of_a_submitter_killed_after_sbatch(
    tmp_path: Path,
    ctl: Path,
    slurm_cluster: SlurmCluster,
    sbatch: Sbatch,
    to_cancel: list[str],
    split: int | None,
) -> None:
    """300 configs submitted as an array, the submitter killed before their records: the
    rerun submitted 300 more jobs (each config computed twice). It follows the 300.
    ``split``: Slurm's MaxArraySize in the submitter (an array of 2, then one job)."""
    infra = settings(tmp_path, slurm_cluster, held=True)
    killed_submitter("array", "after-sbatch", ctl, infra, [1, 2, 3], max_array_size=split)
    to_cancel.extend(sbatch.jobs())
    configs = [SlurmTask(x=x, ctl=str(ctl), infra=infra) for x in (1, 2, 3)]
    folders = [c.infra.uid_folder() for c in configs]
    assert sbatch.count() == (2 if split else 1) and not any(records(f) for f in folders)
    first = queued(sbatch.jobs())
    assert len(first) == 3  # (held)
    count = sbatch.count()
    base = SlurmTask(ctl=str(ctl), infra=infra)
    with base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(x=x) for x in (1, 2, 3))
    to_cancel.extend(sbatch.jobs())
    assert sbatch.count() == count  # nothing submitted again
    assert sorted(map(job_of, folders), key=job_order) == first == queued(sbatch.jobs())
    assert not any(markers(f) for f in folders)
    assert [c.infra.status() for c in configs] == ["running"] * 3
    release(first)
    assert [c.infra.job().result() for c in configs] == [3, 6, 9]
    assert calls(ctl) == {"1": 1, "2": 1, "3": 1}
    # each config's record names the array element that computed it
    for x, folder in zip((1, 2, 3), folders):
        assert f"slurm task x={x}\n" in computed_by(folder)
    # a new array submits nothing
    with base.infra.job_array() as again:
        again.extend(base.infra.clone_obj(x=x) for x in (1, 2, 3))
    assert sbatch.count() == count and calls(ctl) == {"1": 1, "2": 1, "3": 1}


def test_a_rerun_releases_the_jobs_exca_held_when_their_submitter_was_killed(
    tmp_path: Path,
    ctl: Path,
    slurm_cluster: SlurmCluster,
    sbatch: Sbatch,
    to_cancel: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """exca sends jobs held and releases them once submitit made their log folders: a
    submitter killed in between leaves them held, which nothing would release. The
    rerun follows them (nothing is submitted again), releases them, says so, and they
    compute."""
    infra = settings(tmp_path, slurm_cluster, held=False)
    killed_submitter("array", "before-release", ctl, infra, [1, 2, 3])
    to_cancel.extend(sbatch.jobs())
    first = queued(sbatch.jobs())
    assert set(reasons(first).values()) == {"JobHeldUser"} and len(first) == 3
    configs = [SlurmTask(x=x, ctl=str(ctl), infra=infra) for x in (1, 2, 3)]
    base = SlurmTask(ctl=str(ctl), infra=infra)
    with base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(x=x) for x in (1, 2, 3))
    to_cancel.extend(sbatch.jobs())
    assert sbatch.count() == 1  # nothing submitted again
    said = f"Released jobs {', '.join(first)}: exca held them until their log folders were made"
    assert said in caplog.text, caplog.text
    wait_until(lambda: "JobHeldUser" not in reasons(first).values(), timeout=WAIT_S)
    assert [c.infra.job().result() for c in configs] == [3, 6, 9]
    assert calls(ctl) == {"1": 1, "2": 1, "3": 1}
    assert not any(markers(c.infra.uid_folder()) for c in configs)


@pytest.mark.parametrize("unknown", ["in-environment", "in-marker"])
def test_the_jobs_are_found_whatever_user_name_the_submitter_had(
    tmp_path: Path,
    ctl: Path,
    slurm_cluster: SlurmCluster,
    sbatch: Sbatch,
    to_cancel: list[str],
    unknown: str,
) -> None:
    """$LOGNAME/$USER need not name the user the jobs run as (`su` without `-` keeps the
    caller's, a container passes the host's): squeue listed that other user's jobs, not
    these. And the marker's user may be unknown where the rerun runs (another user
    database): squeue said "Invalid user", yet answered 0 and listed nothing. Either
    way the rerun submitted everything again."""
    infra = settings(tmp_path, slurm_cluster, held=True)
    # (another user of this host: squeue lists that user's jobs, none of these)
    other = next(u.pw_name for u in pwd.getpwall() if u.pw_uid != os.getuid())
    env = {"LOGNAME": other, "USER": other} if unknown == "in-environment" else None
    killed_submitter("array", "after-sbatch", ctl, infra, [1, 2], env=env)
    to_cancel.extend(sbatch.jobs())
    first = queued(sbatch.jobs())
    assert len(first) == 2
    folders = [SlurmTask(x=x, ctl=str(ctl), infra=infra).infra.uid_folder() for x in (1, 2)]
    if unknown == "in-marker":
        for marker in (m for f in folders for m in markers(f)):
            marker.write_text(json.dumps({**json.loads(marker.read_text()), "user": "nosuchuser"}))
    base = SlurmTask(ctl=str(ctl), infra=infra)
    with base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(x=x) for x in (1, 2))
    to_cancel.extend(sbatch.jobs())
    assert sbatch.count() == 1  # nothing submitted again
    assert sorted(map(job_of, folders), key=job_order) == first


def test_a_rerun_submits_once_what_a_submitter_killed_before_sbatch_left(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, sbatch: Sbatch, to_cancel: list[str]
) -> None:
    """Its marker (the submission noted before sbatch) names no job: dropped."""
    infra = settings(tmp_path, slurm_cluster, held=False)
    killed_submitter("array", "before-sbatch", ctl, infra, [1, 2, 3])
    configs = [SlurmTask(x=x, ctl=str(ctl), infra=infra) for x in (1, 2, 3)]
    folders = [c.infra.uid_folder() for c in configs]
    assert sbatch.count() == 0 and all(len(markers(f)) == 1 for f in folders)
    base = SlurmTask(ctl=str(ctl), infra=infra)
    with base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(x=x) for x in (1, 2, 3))
    to_cancel.extend(sbatch.jobs())
    assert sbatch.count() == 1 and not any(markers(f) for f in folders)
    assert [c.process() for c in configs] == [3, 6, 9]
    assert calls(ctl) == {"1": 1, "2": 1, "3": 1}


def test_a_job_that_cannot_run_is_cancelled_and_submitted_again(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, sbatch: Sbatch, to_cancel: list[str]
) -> None:
    """Killed between sbatch and submitit storing what a job runs (its pickle): that job
    would wait for it, then fail (an error cached for its config)."""
    infra = settings(tmp_path, slurm_cluster, held=True)
    killed_submitter("array", "after-sbatch", ctl, infra, [1, 2, 3])
    to_cancel.extend(sbatch.jobs())
    first = queued(sbatch.jobs())
    configs = [SlurmTask(x=x, ctl=str(ctl), infra=infra) for x in (1, 2, 3)]
    folders = [c.infra.uid_folder() for c in configs]
    (pickle,) = (tmp_path / "cache").rglob(f"{first[1]}_submitted.pkl")
    pickle.unlink()  # (as if the kill came before submitit moved it in place)
    base = SlurmTask(ctl=str(ctl), infra=infra)
    with base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(x=x) for x in (1, 2, 3))
    to_cancel.extend(sbatch.jobs())
    jobs = [job_of(f) for f in folders]
    assert sbatch.count() == 2  # (the one job again)
    assert queued(sbatch.jobs()[:1]) == [first[0], first[2]]  # (the other one is cancelled)
    assert len(set(jobs) - set(first)) == 1 and first[1] not in jobs
    release(jobs)
    assert [c.infra.job().result() for c in configs] == [3, 6, 9]
    assert calls(ctl) == {"1": 1, "2": 1, "3": 1}


def test_a_rerun_follows_the_job_of_a_task_whose_submitter_was_killed(
    tmp_path: Path,
    ctl: Path,
    slurm_cluster: SlurmCluster,
    sbatch: Sbatch,
    to_cancel: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """(The user's own Slurm comment stays, exca's token follows it.)"""
    infra = settings(tmp_path, slurm_cluster, held=True)
    infra["slurm_additional_parameters"]["comment"] = "my note"
    killed_submitter("task", "after-sbatch", ctl, infra, [4])
    to_cancel.extend(sbatch.jobs())
    config = SlurmTask(x=4, ctl=str(ctl), infra=infra)
    (first,) = queued(sbatch.jobs())
    assert "_" not in first  # (one job: not an array)
    comment = subprocess.run(
        ["squeue", "-h", "-o", "%k", "-j", first], capture_output=True, text=True, timeout=30
    ).stdout.strip()
    assert comment.startswith("my note exca:"), comment
    job = config.infra.job()
    to_cancel.extend(sbatch.jobs())
    assert job.job_id == first and sbatch.count() == 1
    said = f"Following job {first} instead of submitting again: queued, submitted by a process"
    assert said in caplog.text, caplog.text
    assert reasons([first]) == {first: "JobHeldUser"}  # (the user's hold: kept)
    assert not markers(config.infra.uid_folder())
    release([first])
    assert job.result() == 12 and config.process() == 12
    assert calls(ctl) == {"4": 1}


def test_a_rerun_follows_the_chunk_jobs_of_a_map_whose_submitter_was_killed(
    tmp_path: Path, ctl: Path, slurm_cluster: SlurmCluster, sbatch: Sbatch, to_cancel: list[str]
) -> None:
    """Each chunk job's record gets the items it computes (from the marker)."""
    infra = settings(tmp_path, slurm_cluster, held=True, max_jobs=2)
    killed_submitter("map", "after-sbatch", ctl, infra, [1, 2, 3, 4])
    to_cancel.extend(sbatch.jobs())
    mapper = SlurmMap(ctl=str(ctl), infra=infra)
    folder = mapper.infra.uid_folder()
    first = queued(sbatch.jobs())
    assert len(first) == 2
    results: list[list[int]] = []
    rerun = threading.Thread(target=lambda: results.append(list(mapper.process([1, 2, 3, 4]))))
    rerun.start()
    try:  # (followed: recorded; or submitted again: held too, released below)
        wait_until(lambda: len(records(folder)) >= 2, timeout=WAIT_S)
    finally:
        to_cancel.extend(sbatch.jobs())
        release(sbatch.jobs())
        rerun.join(WAIT_S)
    assert results == [[2, 3, 4, 5]] and sbatch.count() == 1
    chunks = {r["job_id"]: r["keys"] for r in records(folder)}
    assert sorted(chunks) == first
    assert sorted(k for keys in chunks.values() for k in keys) == ["1", "2", "3", "4"]
    done = collections.Counter(i for line in lines(ctl / "calls.txt") for i in line.split())
    assert done == {"1": 1, "2": 1, "3": 1, "4": 1}
    assert not markers(folder)


# how the first sbatch fails once it queued the job: what it says, how it ends
_QUEUED_THEN = {
    "timed out": (
        "echo 'sbatch: error: Batch job submission failed: Socket timed out on send/recv "
        "operation' >&2\n  exit 1\n",
        "Socket timed out",
    ),
    # (killed by a signal: a negative return code, a CalledProcessError all the same)
    "killed": ("kill -9 $$\n", "refused"),
}


@pytest.mark.parametrize("failure", sorted(_QUEUED_THEN))
def test_a_job_queued_by_an_sbatch_that_timed_out_is_cancelled_by_a_rerun(
    tmp_path: Path,
    ctl: Path,
    slurm_cluster: SlurmCluster,
    sbatch: Sbatch,
    to_cancel: list[str],
    failure: str,
) -> None:
    """sbatch may fail on a socket timeout after the controller queued the job, or be
    killed by a signal once it sent it. That job cannot run (submitit stores what it runs
    only once sbatch answered): the submission's marker must stay (unlike after a
    refusal, which queues nothing) for a rerun to find it and cancel it, instead of
    leaving it to start and fail. The first sbatch here queues the job, then says it
    timed out and exits 1, as sbatch does then, or is killed (SIGKILL)."""
    real_dir = tmp_path / "timing-out"
    real_dir.mkdir()
    flag = tmp_path / "timed-out-once"
    end, said = _QUEUED_THEN[failure]
    (real_dir / "sbatch").write_text(
        "#!/bin/sh\n"
        f"out=$('{tmp_path / 'shim' / 'sbatch'}' \"$@\") || exit $?\n"  # (the counting one)
        f"if [ ! -e '{flag}' ]; then\n"
        f"  touch '{flag}'\n"
        f"  {end}"
        "fi\n"
        'echo "$out"\n'
    )
    (real_dir / "sbatch").chmod(0o755)
    infra = settings(tmp_path, slurm_cluster, held=True)
    code = (
        "import json, sys\nimport slurm_jobs as t\n"
        "spec = json.loads(sys.argv[1])\n"
        "t.SlurmTask(x=4, ctl=spec['ctl'], infra=spec['infra']).infra.job()\n"
    )
    env = {**os.environ, "PATH": f"{real_dir}{os.pathsep}{os.environ['PATH']}"}
    spec = json.dumps({"ctl": str(ctl), "infra": infra})
    proc = subprocess.run(
        [sys.executable, "-c", code, spec], capture_output=True, text=True, timeout=WAIT_S, env=env
    )
    to_cancel.extend(sbatch.jobs())
    assert proc.returncode == 1 and "refused" in proc.stderr, proc.stderr
    assert said in proc.stderr
    first = queued(sbatch.jobs())
    assert len(first) == 1  # (queued all the same, held)
    config = SlurmTask(x=4, ctl=str(ctl), infra=infra)
    assert len(markers(config.infra.uid_folder())) == 1
    job = config.infra.job()
    to_cancel.extend(sbatch.jobs())
    assert sbatch.count() == 2  # (a new job: the first one cannot run)
    assert queued(first) == []  # cancelled
    assert not markers(config.infra.uid_folder())
    release(queued(sbatch.jobs()))
    assert job.result() == 12
    assert calls(ctl) == {"4": 1}
