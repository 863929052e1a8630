"""Tests of the Slurm test harness itself (tests/slurm_cluster.py), against the real cluster.

Jobs run stdlib functions (operator, os, time): they are pickled by reference and import
in the job without this test module being importable there.
"""

from __future__ import annotations

import operator
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import submitit

from slurm_cluster import (
    SlurmCluster,
    end_jobs_logging_in,
    sacct_states,
    slurm_available,
    squeue_ids,
)

pytestmark = pytest.mark.slurm

WAIT_S = 120.0  # upper bound when waiting for a state to show; not a timing assertion


def _executor(folder: Path, cluster: SlurmCluster) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(
        timeout_min=5, slurm_partition=cluster.partition, cpus_per_task=1, name="exca-harness"
    )
    return executor


def _wait_states(job_ids: list[str], done: set[str]) -> dict[str, str]:
    """Poll sacct (one call per round) until every job is in one of `done`."""
    deadline = time.monotonic() + WAIT_S
    while True:
        states = sacct_states(job_ids)
        if all(states.get(j) in done for j in job_ids) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


@pytest.fixture
def dead_slurm_conf(tmp_path: Path) -> Path:
    """A copy of the cluster's slurm.conf whose controller port nobody listens on."""
    with socket.socket() as sock:  # a port free right now: connections to it are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    source = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    lines = [
        line
        for line in source.read_text().splitlines()
        if not line.startswith(("SlurmctldPort=", "Include"))
    ]
    conf = tmp_path / "slurm.conf"
    conf.write_text("\n".join([*lines, f"SlurmctldPort={port}", ""]))
    return conf


def test_cluster_description(slurm_cluster: SlurmCluster) -> None:
    assert slurm_cluster.partition and not slurm_cluster.partition.endswith("*")
    assert slurm_cluster.node
    assert slurm_cluster.cpus_per_node >= 1
    assert slurm_cluster.mem_mb_per_node >= 1
    assert slurm_cluster.max_array_size >= 3
    ok, reason = slurm_available()
    assert ok, reason
    assert slurm_cluster.node in reason


def test_single_job_result_and_sacct(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    executor = _executor(tmp_path, slurm_cluster)
    job = executor.submit(operator.add, 2, 3)
    assert job.result() == 5
    job_env = executor.submit(os.getenv, "SLURM_JOB_ID")
    assert job_env.result() == job_env.job_id
    ids = [job.job_id, job_env.job_id]
    states = _wait_states(ids, {"COMPLETED"})
    assert states == {i: "COMPLETED" for i in ids}


def test_batch_is_one_array(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    executor = _executor(tmp_path, slurm_cluster)
    with executor.batch():
        jobs = [executor.submit(os.getenv, "SLURM_ARRAY_TASK_ID") for _ in range(3)]
    ids = [job.job_id for job in jobs]
    base = ids[0].split("_")[0]
    assert ids == [f"{base}_{i}" for i in range(3)]
    assert [job.result() for job in jobs] == ["0", "1", "2"]
    states = _wait_states(ids, {"COMPLETED"})
    assert states == {i: "COMPLETED" for i in ids}


def test_cancelled_job_leaves_squeue_and_shows_in_sacct(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    executor = _executor(tmp_path, slurm_cluster)
    job = executor.submit(time.sleep, 300)
    assert job.job_id in squeue_ids()
    job.cancel()
    states = _wait_states([job.job_id], {"CANCELLED"})
    assert states == {job.job_id: "CANCELLED"}
    # a running job stays in squeue (COMPLETING) until killed: up to KillWait (5 s) more
    deadline = time.monotonic() + WAIT_S
    while job.job_id in squeue_ids() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job.job_id not in squeue_ids()


def test_the_jobs_a_test_left_are_ended_and_only_they(tmp_path: Path) -> None:
    """After each Slurm test, its jobs still queued (their log in its tmp_path) are ended
    and waited for (they held the cluster's CPUs while the next tests ran); another
    folder's jobs (a module fixture's) go on."""
    mine, other = tmp_path / "test", tmp_path.parent / f"{tmp_path.name}-other"
    ids = []
    for folder, state in ((mine, "--hold"), (mine, "--begin=now"), (other, "--hold")):
        folder.mkdir(exist_ok=True)
        run = ["sbatch", "--parsable", state, "-o", f"{folder}/%A_%a.out", "--wrap=sleep 60"]
        ids.append(subprocess.run(run, capture_output=True, text=True, check=True).stdout.strip())
    try:
        assert sorted(end_jobs_logging_in(mine)) == sorted(ids[:2])
        assert set(ids) & squeue_ids() == {ids[2]}
    finally:
        subprocess.run(["scancel", *ids], check=False, timeout=30)


def test_sacct_states_of_nothing_is_empty() -> None:
    assert sacct_states([]) == {}


@pytest.mark.timeout(60)  # the check must never hang, whatever the controller does
def test_slurm_available_false_on_dead_controller(
    dead_slurm_conf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(dead_slurm_conf))
    ok, reason = slurm_available()
    assert not ok
    assert "does not answer" in reason and str(dead_slurm_conf) in reason


def _run_inner_pytest(folder: Path, conf: Path, require: bool) -> subprocess.CompletedProcess:
    """Run a tiny pytest session using the harness the way tests/conftest.py wires it."""
    tests_dir = Path(__file__).resolve().parent
    (folder / "pytest.ini").write_text("[pytest]\nmarkers =\n    slurm: needs Slurm\n")
    (folder / "conftest.py").write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tests_dir)!r})
        from slurm_cluster import *  # noqa: F403

        def pytest_collection_modifyitems(config, items):
            add_slurm_fixture(items)
        """)
    )
    # (params of one test, one marked slurm: they share the list of fixtures the harness
    # edits, and the unmarked one was skipped too)
    (folder / "test_inner.py").write_text(
        textwrap.dedent("""
        import pytest

        @pytest.mark.slurm
        def test_needs_slurm():
            pass

        @pytest.mark.parametrize("x", [1, pytest.param(2, marks=pytest.mark.slurm)])
        def test_one_param_needs_slurm(x):
            pass
        """)
    )
    env = {**os.environ, "SLURM_CONF": str(conf), "EXCA_START_SLURM": "0"}
    env.pop("EXCA_REQUIRE_SLURM", None)
    if require:
        env["EXCA_REQUIRE_SLURM"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-rsE", "-p", "no:cacheprovider", str(folder)]
    return subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=120)


def test_marked_test_skips_with_reason_without_cluster(
    dead_slurm_conf: Path, tmp_path: Path
) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    proc = _run_inner_pytest(inner, dead_slurm_conf, require=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 2 skipped" in proc.stdout
    assert "no Slurm cluster: Slurm controller does not answer" in proc.stdout


def test_marked_test_fails_without_cluster_under_require(
    dead_slurm_conf: Path, tmp_path: Path
) -> None:
    inner = tmp_path / "inner"
    inner.mkdir()
    proc = _run_inner_pytest(inner, dead_slurm_conf, require=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 passed, 2 errors" in proc.stdout
    assert "EXCA_REQUIRE_SLURM=1 but no Slurm cluster" in proc.stdout
