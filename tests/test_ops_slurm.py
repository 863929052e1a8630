"""Operating a cache on a real Slurm cluster: resources checked before any sbatch (one
error listing every problem, nothing queued), in plans and in ``python -m exca check``;
arrays split at MaxArraySize; a queued/running job shown by ``inspect`` and protected from
``clean``; logs of a finished Slurm task from a fresh process.

Jobs import these classes as ``test_ops_slurm`` (tests/ is on PYTHONPATH, see conftest).
Other sessions may use the cluster at the same time (and as the same user): jobs are told
apart by their names, which start with the class names below.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import subprocess
import sys
import time
import typing as tp
from pathlib import Path

import pydantic
import pytest
import yaml

import exca
import exca.graph
import exca.ops
from exca.graph import registry, slurm_check
from exca.graph.slurm_check import ResourceError

pytestmark = pytest.mark.slurm
WAIT_S = 90.0  # bound on any wait
QUEUE_S = 300.0  # bound on the wait for a job to start (the cluster may be shared and busy)
HOLD = {"begin": "now+600"}  # keeps a job queued (BeginTime) until we cancel it


class ImpossibleOpsTask(pydantic.BaseModel):
    x: int = 1
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        return self.x


class ImpossibleOpsMap(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def run(self, items: list[int]) -> tp.Iterator[int]:
        yield from items


class SplitOpsMap(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def run(self, items: list[int]) -> tp.Iterator[int]:
        yield from items


class NapOps(pydantic.BaseModel):
    """Sleeps, printing a marker to stdout and stderr; with ``block``, until that file is
    gone (``seconds`` at most)."""

    seconds: float = 10.0
    marker: str = "nap"
    block: str = ""
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def nap(self) -> str:
        print(f"{self.marker}-stdout", flush=True)
        print(f"{self.marker}-stderr", file=sys.stderr, flush=True)
        if not self.block:
            time.sleep(self.seconds)
        end = time.monotonic() + self.seconds
        while self.block and Path(self.block).exists() and time.monotonic() < end:
            time.sleep(0.1)
        return self.marker


class AfterNapOps(pydantic.BaseModel):
    """A task with an input (a NapOps node's output)."""

    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def after(self, marker: str) -> str:
        return marker


# --- helpers -----------------------------------------------------------------------------------
def _run(*cmd: str) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, f"{' '.join(cmd)}: {result.stderr}"
    return result.stdout


def _jobs_named(prefix: str, since: float) -> dict[str, str]:
    """{job id: name} of this user's jobs whose name starts with prefix, queued now
    (squeue) or started since `since` (sacct)."""
    user = getpass.getuser()
    found = {}
    for line in _run("squeue", "-h", "-u", user, "-o", "%i|%j").splitlines():
        job, _, name = line.partition("|")
        if name.startswith(prefix):
            found[job.strip()] = name
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since - 60))
    sacct = _run("sacct", "-n", "-X", "-P", "-u", user, "-S", start, "-o", "JobID,JobName")
    for line in sacct.splitlines():
        job, _, name = line.partition("|")
        if name.startswith(prefix):
            found[job.strip()] = name
    return found


def _queue_state(job_id: str) -> str:
    """squeue's state of a job ('' once it left the queue)."""
    out = subprocess.run(
        ["squeue", "-h", "-j", job_id.split("_")[0], "-o", "%T"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout
    return out.strip().splitlines()[0] if out.strip() else ""


def _scancel(*job_ids: str) -> None:
    """Cancel jobs this test submitted (by id)."""
    ids = sorted({j.split("_")[0] for j in job_ids if j})
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30, check=False)


def wait_until(predicate: tp.Callable[[], tp.Any], what: str, timeout: float = WAIT_S) -> tp.Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached within {timeout:.0f}s: {what}")
        time.sleep(0.2)


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exca", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        stdin=subprocess.DEVNULL,
    )


def _has_accounting() -> bool:
    user = getpass.getuser()
    result = subprocess.run(
        ["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=account"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.returncode == 0 and bool(result.stdout.strip())


IMPOSSIBLE = {
    "cluster": "slurm",
    "slurm_partition": "no_such_partition",
    "cpus_per_task": 64,
    "gpus_per_node": 4,
    "mem_gb": 10000,
    "slurm_constraint": "unobtainium",
    "slurm_account": "no_such_account",
    "slurm_qos": "no_such_qos",
}


def _expected_problems() -> list[str]:
    expected = [
        "partition 'no_such_partition' does not exist",
        "cpus_per_task x tasks_per_node = 64",
        "gpus_per_node=4",
        "mem_gb=10000",
        "slurm_constraint='unobtainium'",
    ]
    if _has_accounting():  # accounts and qos are only known with accounting
        expected += ["slurm_account='no_such_account'", "slurm_qos='no_such_qos'"]
    elif os.environ.get("EXCA_REQUIRE_SLURM") == "1":  # (CI's cluster has it: a real loss)
        pytest.fail("EXCA_REQUIRE_SLURM=1 but sacctmgr lists no association for this user")
    return expected


def test_a_list_of_partitions_is_checked_partition_by_partition(tmp_path: Path) -> None:
    """Slurm takes "a,b" (the job starts in whichever can run it first): it was refused as
    one unknown partition (a probe). Each name must exist; the resources must fit one of
    them."""
    from exca.graph import slurm_check

    known = sorted(slurm_check.cluster().partitions)[0]

    def problems(**infra: tp.Any) -> list[str]:
        task = ImpossibleOpsTask(infra={"folder": tmp_path, "cluster": "slurm", **infra})
        (entry,) = exca.graph.plan(task.run.node()).entries
        return entry.problems

    assert problems(slurm_partition=f"{known},{known}") == []
    (problem,) = problems(slurm_partition=f"{known},no_such_partition")
    assert "partition 'no_such_partition' does not exist" in problem
    (problem,) = problems(slurm_partition=f"{known},{known}", cpus_per_task=640)
    assert f"nodes of partition '{known}' have at most" in problem  # (a name listed twice)


def test_resources_given_as_sbatch_options_are_checked(tmp_path: Path) -> None:
    """cpus_per_task / nodes in slurm_additional_parameters were not checked: the job
    stayed pending for good (a probe)."""
    task = ImpossibleOpsTask(
        infra={
            "folder": tmp_path,
            "cluster": "slurm",
            "slurm_additional_parameters": {"cpus_per_task": 640, "nodes": 30},
        }
    )
    (entry,) = exca.graph.plan(task.run.node()).entries
    assert len(entry.problems) == 2, entry.problems
    assert "cpus_per_task x tasks_per_node = 640" in entry.problems[0]
    assert "nodes=30" in entry.problems[1]
    with pytest.raises(ResourceError, match="nothing was submitted"):
        task.infra.job()


# --- check before submitting ---------------------------------------------------------------------
def test_impossible_resources_one_error_nothing_submitted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    expected = _expected_problems()
    start = time.time()
    before = _jobs_named("ImpossibleOps", start)
    sent = tmp_path / "sbatch-calls"  # (every sbatch call: none is to be made)
    (tmp_path / "shim").mkdir()
    (tmp_path / "shim" / "sbatch").write_text(
        f"#!/bin/sh\necho \"$@\" >> '{sent}'\nexec '{shutil.which('sbatch')}' \"$@\"\n"
    )
    (tmp_path / "shim" / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'shim'}{os.pathsep}{os.environ['PATH']}")
    task = ImpossibleOpsTask(infra={"folder": root, **IMPOSSIBLE})
    with pytest.raises(ResourceError) as info:
        task.run()
    message = str(info.value)
    assert "nothing was submitted" in message
    lines = message.splitlines()[1:]
    assert len(lines) == len(expected), message
    for problem, line in zip(expected, lines):
        assert problem in line, message
        assert task.run.node().uid in line
    # the same from job() and for a map
    with pytest.raises(ResourceError):
        ImpossibleOpsTask(x=2, infra={"folder": root, **IMPOSSIBLE}).infra.job()
    mapper = ImpossibleOpsMap(infra={"folder": root, **IMPOSSIBLE, "max_jobs": 4})
    with pytest.raises(ResourceError) as info:
        list(mapper.run([1, 2, 3, 4, 5]))
    assert len(str(info.value).splitlines()) == 1 + len(expected)
    # nothing reached Slurm (no sbatch call), nothing was recorded
    # a job array of 3 configs with these resources: each problem listed once
    with pytest.raises(ResourceError) as info, task.infra.job_array() as array:
        array.extend(ImpossibleOpsTask(x=x, infra={"folder": root}) for x in (4, 5, 6))
    lines = str(info.value).splitlines()[1:]
    assert len(lines) == len(expected), info.value
    assert all("(and 2 more with these resources)" in line for line in lines)
    assert not sent.exists() and _jobs_named("ImpossibleOps", start) == before
    recorded = [*root.rglob("jobs"), *root.rglob("*_submitted.pkl")] if root.exists() else []
    assert recorded == []
    assert not root.exists() or exca.ops.inspect(root, status="running") == []


def test_plan_and_check_show_the_problems(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    expected = _expected_problems()
    node = ImpossibleOpsTask(x=3, infra={"folder": root, **IMPOSSIBLE}).run.node()
    plan = exca.graph.plan(node)
    (entry,) = plan.entries
    assert len(entry.problems) == len(expected)
    for problem, found in zip(expected, entry.problems):
        assert problem in found
    text = str(plan)
    assert "Problems (a run would refuse to submit)" in text
    assert all(problem in text for problem in expected)
    assert plan.to_dict()["nodes"][0]["problems"] == entry.problems
    # the command line: one line per problem, non-zero exit
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"infra": {"folder": str(root), **IMPOSSIBLE}}))
    result = cli("check", f"{__name__}:ImpossibleOpsTask.run", "--config", cfg, "x=3")
    assert result.returncode != 0
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(expected), result.stdout
    for problem, line in zip(expected, lines):
        assert line.startswith(f"{node.uid}: ") and problem in line
    rows = json.loads(
        cli("check", f"{__name__}:ImpossibleOpsTask.run", "--config", cfg, "--json").stdout
    )
    assert [r["problem"] for r in rows] == entry.problems
    # resources that fit: exit 0
    fine = tmp_path / "fine.yaml"
    fine.write_text(
        yaml.safe_dump({"infra": {"folder": str(root), "cluster": "slurm", "cpus_per_task": 1}})
    )
    result = cli("check", f"{__name__}:ImpossibleOpsTask.run", "--config", fine)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "Resources fit the cluster."
    # a cached config is checked too (a check comes before forcing or changing it)
    assert ImpossibleOpsTask(x=4, infra={"folder": root}).run() == 4
    result = cli("check", f"{__name__}:ImpossibleOpsTask.run", "--config", cfg, "x=4")
    assert result.returncode != 0
    assert len(result.stdout.strip().splitlines()) == len(expected), result.stdout


def _no_controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slurm commands of this test (and of its subprocesses) reach no controller."""
    conf = tmp_path / "slurm.conf"  # (a port where nothing listens: refused at once)
    conf.write_text(
        "ClusterName=nowhere\nSlurmctldHost=localhost\nSlurmctldPort=1\nMessageTimeout=2\n"
    )
    monkeypatch.setenv("SLURM_CONF", str(conf))


def _wrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str, before: str = "") -> None:
    """The real ``command``, first on PATH, run with this test's SLURM_CONF (after the
    shell line ``before``)."""
    real = shutil.which(command)
    assert real is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / command
    conf = os.environ["SLURM_CONF"]
    wrapper.write_text(f'#!/bin/sh\n{before}\nSLURM_CONF={conf} exec {real} "$@"\n')
    wrapper.chmod(0o755)
    if not os.environ["PATH"].startswith(f"{bin_dir}{os.pathsep}"):
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_check_says_when_no_controller_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`exca check` said "Resources fit the cluster." (exit 0) for an impossible request
    when no controller answered: nothing had been checked."""
    _no_controller(tmp_path, monkeypatch)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"infra": {"folder": str(tmp_path / "cache"), **IMPOSSIBLE}}))
    result = cli("check", f"{__name__}:ImpossibleOpsTask.run", "--config", cfg)
    assert result.returncode == 1, result
    assert result.stdout.startswith("no Slurm controller answered")  # (no node's problem)
    assert "the resources were not checked" in result.stdout
    assert "fit" not in result.stdout
    rows = json.loads(
        cli("check", f"{__name__}:ImpossibleOpsTask.run", "--config", cfg, "--json").stdout
    )
    assert [r["uid"] for r in rows] == [None]
    # a plan of nodes of several resource sets asks the controller once (each unanswered
    # question may take seconds), not once per node and command
    calls = tmp_path / "calls"
    _wrap(tmp_path, monkeypatch, "scontrol", f"echo $1 >> {calls}")
    nodes = [
        ImpossibleOpsTask(x=x, infra={"folder": tmp_path, "cluster": "slurm", "cpus_per_task": x})
        for x in (1, 2, 3)
    ]
    monkeypatch.setattr(slurm_check, "_unanswered", [])  # (what this process read before:
    slurm_check._read_cluster.cache_clear()  # forgotten, as in a new process)
    exca.graph.plan(*(n.run.node() for n in nodes))
    exca.graph.plan(*(n.run.node() for n in nodes))
    assert calls.read_text().split() == ["show"]


def test_sbatch_without_controller_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sbatch failing to reach the controller was blamed on the job's resources."""
    _no_controller(tmp_path, monkeypatch)
    # (submitit submits without the SLURM_* variables: the real sbatch, given them here)
    _wrap(tmp_path, monkeypatch, "sbatch")
    task = ImpossibleOpsTask(x=5, infra={"folder": tmp_path / "cache", "cluster": "slurm"})
    with pytest.raises(Exception, match="Unable to contact slurm controller") as info:
        task.run()
    assert "Is the Slurm controller up? `sinfo` tells; nothing was submitted" in str(info.value)
    assert "slurm_additional_parameters" not in str(info.value)
    # the controller back, a minute later: this process checks resources again
    monkeypatch.undo()
    monkeypatch.setattr(slurm_check, "UNANSWERED_KEPT_S", 0.0)
    with pytest.raises(ResourceError, match="nothing was submitted"):
        ImpossibleOpsTask(x=6, infra={"folder": tmp_path / "cache", **IMPOSSIBLE}).run()


def test_array_larger_than_max_array_size_is_split(tmp_path: Path, slurm_cluster: tp.Any) -> None:
    limit = slurm_cluster.max_array_size
    if limit > 2000:
        reason = f"MaxArraySize={limit}: splitting would queue more than {limit} jobs"
        if os.environ.get("EXCA_REQUIRE_SLURM") == "1":  # (scripts/start-slurm.sh sets 1001)
            pytest.fail(f"EXCA_REQUIRE_SLURM=1 but {reason}")
        pytest.skip(reason)
    mapper = SplitOpsMap(
        infra={
            "folder": tmp_path / "cache",
            "cluster": "slurm",
            "max_jobs": limit + 1,
            "slurm_additional_parameters": HOLD,  # never runs: cancelled below
        }
    )
    node = mapper.run.node(list(range(limit + 1)))
    (array,) = exca.graph.plan(node).arrays
    assert array.elements == limit + 1  # what would be submitted
    ids: list[str] = []
    try:
        exca.graph.run(node, wait=False)
        ids = [r.job_id for r in registry.read_all(node.folder)]
        sizes: dict[str, int] = {}
        for job_id in ids:
            base = job_id.split("_")[0]
            sizes[base] = sizes.get(base, 0) + 1
        assert len(ids) == limit + 1
        assert sorted(sizes.values()) == [1, limit]
        queued = registry.queued_jobs(ids)
        assert queued == set(ids)  # Slurm accepted both arrays
    finally:
        _scancel(*ids)


def _scontrol_job(job_id: str) -> str:
    return subprocess.run(
        ["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30, check=False
    ).stdout


@pytest.mark.timeout(QUEUE_S + 2 * WAIT_S)
def test_job_array_split_at_max_array_size_keeps_max_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An array split at MaxArraySize: each part got the max_workers throttle, so together
    they ran parts x max_workers jobs at once. The parts now run one after the other."""
    from exca.graph import executors

    monkeypatch.setattr(executors, "max_array_size", lambda: 3)
    held = {"folder": tmp_path / "held", "cluster": "slurm", "slurm_additional_parameters": HOLD}
    tasks = [NapOps(seconds=0, marker=f"h{i}", infra=held) for i in range(5)]
    ids: list[str] = []
    try:
        with tasks[0].infra.job_array(max_workers=2) as array:
            array.extend(tasks)
        ids = [task.infra.job().job_id for task in tasks]
        first, second = sorted({i.split("_")[0] for i in ids}, key=int)
        assert [i.split("_")[0] for i in ids] == [first] * 3 + [second] * 2
        for part in (first, second):
            assert "ArrayTaskThrottle=2" in _scontrol_job(part)
        assert f"Dependency=afterany:{first}" in _scontrol_job(second)
        assert "Dependency=(null)" in _scontrol_job(first)
    finally:
        _scancel(*ids)
    # a map without such a cap (the scheduler's arrays): its parts run side by side
    mapper = SplitOpsMap(
        infra={"folder": tmp_path / "map", "cluster": "slurm", "slurm_additional_parameters": HOLD}
    )
    node = mapper.run.node(list(range(5)))
    map_ids: list[str] = []
    try:
        exca.graph.run(node, wait=False)
        map_ids = [r.job_id for r in registry.read_all(node.folder)]
        parts = sorted({i.split("_")[0] for i in map_ids}, key=int)
        assert len(parts) == 2
        assert all("Dependency=(null)" in _scontrol_job(part) for part in parts)
    finally:
        _scancel(*map_ids)
    # run for real: every task computes once, the second part after the first
    infra = {"folder": tmp_path / "run", "cluster": "slurm"}
    tasks = [NapOps(seconds=0, marker=f"r{i}", infra=infra) for i in range(5)]
    with tasks[0].infra.job_array(max_workers=2) as array:
        array.extend(tasks)
    wait_until(lambda: all(t.infra.status() == "completed" for t in tasks), "the jobs end", QUEUE_S)
    assert [t.nap() for t in tasks] == [f"r{i}" for i in range(5)]
    assert len({t.infra.job().job_id.split("_")[0] for t in tasks}) == 2


@pytest.mark.timeout(QUEUE_S + 2 * WAIT_S)
def test_max_array_size_zero_submits_plain_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MaxArraySize=0 (Slurm: arrays disabled): a plan raised ZeroDivisionError and a run
    "range() arg 3 must not be zero". Each element is now a plain job; a job array's
    max_workers holds through chains of jobs, each waiting for the one before it."""
    from exca.graph import executors

    monkeypatch.setattr(executors, "max_array_size", lambda: 0)
    mapper = SplitOpsMap(infra={"folder": tmp_path / "map", "cluster": "slurm", "max_jobs": 3})
    node = mapper.run.node([1, 2, 3])
    text = str(exca.graph.plan(node))
    assert (
        "3 element(s) as separate jobs (Slurm's MaxArraySize is 0: job arrays are disabled)" in text
    )
    assert list(mapper.run([1, 2, 3])) == [1, 2, 3]
    ids = [r.job_id for r in registry.read_all(node.folder)]
    assert len(ids) == 3 and all("_" not in i for i in ids)  # (no array)
    held = {"folder": tmp_path / "held", "cluster": "slurm", "slurm_additional_parameters": HOLD}
    tasks = [NapOps(seconds=0, marker=f"z{i}", infra=held) for i in range(5)]
    ids = []
    try:
        with tasks[0].infra.job_array(max_workers=2) as array:
            array.extend(tasks)
        ids = [task.infra.job().job_id for task in tasks]
        assert all("_" not in i for i in ids)
        waits = [re.search(r"Dependency=(\S+)", _scontrol_job(i)) for i in ids]
        assert [w and w.group(1) for w in waits] == [
            "(null)",
            "(null)",
            f"afterany:{ids[0]}(unfulfilled)",
            f"afterany:{ids[1]}(unfulfilled)",
            f"afterany:{ids[2]}(unfulfilled)",
        ]
    finally:
        _scancel(*ids)


class EchoOps(pydantic.BaseModel):
    tag: str = ""
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self, text: str) -> str:
        return text


def test_a_users_slurm_dependency_is_kept_next_to_the_upstream_one(tmp_path: Path) -> None:
    """A detached pipeline's downstream job waits for its upstream's (afterany): that
    replaced the dependency the user gave in slurm_additional_parameters. An 'any of'
    one ('?') cannot be combined: a clear error, before that job is submitted."""
    root = tmp_path / "cache"
    held = {"folder": root, "cluster": "slurm", "slurm_additional_parameters": HOLD}
    up = NapOps(seconds=0, marker="up", infra=held).nap.node()

    def down(dependency: str) -> exca.graph.Node:
        params = {"dependency": dependency}
        infra = {"folder": root, "cluster": "slurm", "slurm_additional_parameters": params}
        return EchoOps(tag=dependency, infra=infra).run.node(up)

    other = NapOps(seconds=0, marker="other", infra=held).infra.job().job_id
    ids: list[str] = [other]
    try:
        node = down(f"afterok:{other}")
        exca.graph.run(node, wait=False)
        ids += [r.job_id for folder in (up.folder, node.folder) for r in registry.read_all(folder)]
        up_id, down_id = ids[1:]
        shown = _scontrol_job(down_id)
        assert f"afterok:{other}" in shown and f"afterany:{up_id}" in shown
        with pytest.raises(ValueError, match=r"dependency='afterok:1\?afterok:2' means 'any of'"):
            exca.graph.run(down("afterok:1?afterok:2"), wait=False)
    finally:
        _scancel(*ids)


@pytest.mark.timeout(QUEUE_S + 2 * WAIT_S)
def test_an_array_element_computing_is_named_by_its_array_id(tmp_path: Path) -> None:
    """A running array element's claim named its raw SLURM_JOB_ID, which nothing else
    shows (exca list, job records: <array>_<index>): clean's "kept" named that number."""
    root = tmp_path / "cache"
    infra = {"folder": root, "cluster": "slurm"}
    # (element 0 ends at once: with one CPU free, element 1 starts without waiting for it)
    tasks = [NapOps(seconds=30 * i, marker=f"a{i}", infra=infra) for i in range(2)]
    with tasks[0].infra.job_array() as array:
        array.extend(tasks)
    job_ids = [task.infra.job().job_id for task in tasks]
    try:
        folder = tasks[1].infra.uid_folder()
        assert folder is not None
        claims = folder / "claims"
        wait_until(
            lambda: claims.is_dir() and any(p.suffix == ".claim" for p in claims.iterdir()),
            "the element claims its config",
            QUEUE_S,
        )
        plan = exca.ops.clean.remove_nodes([folder])
        ((kept, why),) = plan.kept
        assert kept == folder and f"slurm job {job_ids[1]}" in why, why
    finally:
        _scancel(*job_ids)


# --- a queued / running job: inspect and clean ------------------------------------------------------
def test_queued_job_shown_running_and_kept(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    task = NapOps(
        seconds=1,
        marker="held",
        infra={"folder": root, "cluster": "slurm", "slurm_additional_parameters": HOLD},
    )
    other = NapOps(seconds=0, marker="other", infra={"folder": root}).nap.node()
    job = task.infra.job()
    try:
        assert wait_until(lambda: _queue_state(job.job_id), "squeue lists the job") == "PENDING"
        (info,) = exca.ops.inspect(root)
        # (a job waiting in the queue says so: it said "running", as plan said "pending")
        assert (info.status, info.job_id, info.job_state) == ("running", job.job_id, "pending")
        rows = json.loads(cli("list", root, "--status", "running", "--json").stdout)
        assert [(r["status"], r["job_id"]) for r in rows] == [("running", job.job_id)]
        assert rows[0]["job_state"] == "pending"
        table = cli("list", root).stdout
        assert f"job {job.job_id} (pending)" in table
        # (it said its logs were removed, or that it never started)
        logs = cli("logs", info.folder)
        said = f"Job {job.job_id} (slurm) is still pending in Slurm's queue"
        assert said in logs.stdout and "removed" not in logs.stdout, logs
        folder = info.folder
        plan = exca.ops.clean.remove_nodes([folder])
        assert plan.removals == []
        ((kept, why),) = plan.kept
        assert kept == folder and job.job_id in why
        result = cli("clean", root, "node", folder, "--yes")
        assert result.returncode == 0 and "kept" in result.stdout
        assert folder.is_dir() and registry.latest(folder) is not None
        other.result()  # (computed here: garbage collection against it keeps only it)
        assert exca.ops.clean.garbage(root, [other]).removals == []
    finally:
        _scancel(job.job_id)
    wait_until(lambda: not _queue_state(job.job_id), "the cancelled job leaves the queue")
    (info,) = exca.ops.inspect(root, where=["marker=held"])
    assert info.job_state == "ended" and info.status == "error"

    def held_error() -> str:
        return exca.ops.inspect(root, where=["marker=held"])[0].error or ""

    # how it ended, from sacct (it said "ended without writing its result... the log shows
    # how": a job cancelled while pending has no log)
    said = "was cancelled before it started (state CANCELLED"
    wait_until(lambda: said in held_error(), "sacct knows it")
    assert held_error().startswith(f"job {job.job_id} was cancelled")


def test_list_says_how_the_job_of_an_input_ended(tmp_path: Path) -> None:
    """A task with inputs not computed as its input's Slurm job ended without a result:
    `exca list` said how that job ended on the input's line (sacct: "was cancelled before
    it started") and, in the note of the task below it, "ended without writing its result
    (killed, out of memory, cancelled...?)", also when the job had raised (a probe). The
    note says what the line says, with --step too (the input's step not listed)."""
    root = tmp_path / "cache"
    infra = {"folder": root, "cluster": "slurm", "slurm_additional_parameters": HOLD}
    task = NapOps(seconds=1, marker="gone", infra=infra)
    job = task.infra.job()
    try:
        wait_until(lambda: _queue_state(job.job_id), "squeue lists the job")
    finally:
        _scancel(job.job_id)
    wait_until(lambda: not _queue_state(job.job_id), "the cancelled job leaves the queue")
    source = NapOps(seconds=1, marker="gone", infra=infra).nap.node()
    down = AfterNapOps(infra={"folder": root}).after.node(source)
    down.prepare()  # (its folders: a run stopped there, as its input failed)
    said = f"job {job.job_id} was cancelled before it started (state CANCELLED"
    wait_until(
        lambda: said in (exca.ops.inspect(root, where=["marker=gone"])[0].error or ""),
        "sacct knows it",
    )
    for step in (None, "AfterNapOps"):
        (info,) = exca.ops.inspect(root, step=step, status="empty")
        assert info.note is not None and info.note.startswith(
            f"not computed: its input 'marker' ({source.uid}) failed ({said}"
        ), info.note


@pytest.mark.timeout(QUEUE_S + 4 * WAIT_S)
def test_running_job_then_logs_from_a_fresh_process(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    block = tmp_path / "block"  # (the job naps until it is removed: running meanwhile)
    block.touch()
    infra = {"folder": root, "cluster": "slurm"}
    task = NapOps(seconds=WAIT_S, marker="slurmnap", block=str(block), infra=infra)
    job = task.infra.job()
    try:
        wait_until(lambda: _queue_state(job.job_id) == "RUNNING", "the job runs", QUEUE_S)
        (info,) = exca.ops.inspect(root)
        assert (info.job_id, info.job_state) == (job.job_id, "running")
        # the running job also holds the claim of its node: "computing" (see report)
        assert info.status in ("running", "computing")
        plan = exca.ops.clean.remove_nodes([info.folder])
        assert plan.removals == [] and [p for p, _ in plan.kept] == [info.folder]
        block.unlink()
        assert job.result() == "slurmnap"
    finally:
        block.unlink(missing_ok=True)
        if _queue_state(job.job_id):  # only if something above failed
            _scancel(job.job_id)
    wait_until(lambda: not _queue_state(job.job_id), "the job leaves the queue")
    (info,) = exca.ops.inspect(root)
    assert (info.status, info.job_state) == ("success", "ended")
    out = cli("logs", info.folder)
    assert (
        out.returncode == 0
        and "slurmnap-stdout" in out.stdout
        and f"job {job.job_id}" in out.stdout
    )
    err = cli("logs", info.folder, "--stderr")
    assert err.returncode == 0 and "slurmnap-stderr" in err.stdout
    code = (
        f"import exca.ops; (j,) = exca.ops.logs({str(info.folder)!r}); print(j.cluster, j.stdout())"
    )
    fresh = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT_S, env=os.environ
    )
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.startswith("slurm ") and "slurmnap-stdout" in fresh.stdout


def test_a_queued_chunk_job_is_seen_after_a_later_job_ended(tmp_path: Path) -> None:
    """A map's chunk job still queued while a later job of the same config (other items)
    ended: inspect said the later job ("ended") and clean removed the folder, with the
    queued job's files (it failed when it started)."""
    root = tmp_path / "cache"
    held = SplitOpsMap(
        infra={
            "folder": root,
            "cluster": "slurm",
            "max_jobs": 1,
            "slurm_additional_parameters": HOLD,
        }
    )
    exca.graph.run(held.run.node([1, 2]), wait=False)
    (record,) = registry.read_all(held.infra.uid_folder())
    try:
        assert wait_until(lambda: _queue_state(record.job_id), "squeue lists it") == "PENDING"
        later = SplitOpsMap(infra={"folder": root, "cluster": "local"})
        assert list(later.run([3])) == [3]  # its own job, ended
        folder = later.infra.uid_folder()
        assert folder is not None and registry.latest(folder).job_id != record.job_id
        (info,) = exca.ops.inspect(root)
        assert (info.status, info.job_id, info.job_state) == ("running", record.job_id, "pending")
        plan = exca.ops.clean.remove_nodes([folder])
        assert plan.removals == [] and record.job_id in plan.kept[0][1]
    finally:
        _scancel(record.job_id)


class BlockingOpsMap(pydantic.BaseModel):
    """Item 6 waits while the file ``block`` exists (WAIT_S at most)."""

    block: str = ""
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def run(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            end = time.monotonic() + WAIT_S
            while item == 6 and Path(self.block).exists() and time.monotonic() < end:
                time.sleep(0.1)
            yield item


@pytest.mark.timeout(QUEUE_S + 3 * WAIT_S)
def test_list_says_how_a_maps_chunk_job_ended(tmp_path: Path) -> None:
    """A map's chunk job on Slurm that ended without writing its items while another
    chunk wrote its own (cancelled here; a time limit the same): `exca list` said
    "(killed, out of memory, cancelled...?)" where the call's error said how, from
    sacct. It says it too."""
    root, block = tmp_path / "cache", tmp_path / "block"
    block.touch()
    infra = {"folder": root, "cluster": "slurm", "max_jobs": 2}
    mapped = BlockingOpsMap(block=str(block), infra=infra)
    exca.graph.run(mapped.run.node([5, 6]), wait=False)
    (blocked,) = [r for r in registry.read_all(mapped.infra.uid_folder()) if r.keys == ["6"]]
    try:
        wait_until(lambda: exca.ops.inspect(root)[0].entries == 1, "item 5 is written", QUEUE_S)
    finally:
        subprocess.run(["scancel", blocked.job_id], capture_output=True, timeout=30, check=False)
        try:  # (item 6 blocked until then: not computed)
            wait_until(lambda: not _queue_state(blocked.job_id), "the cancelled job ends")
        finally:
            block.unlink()

    def said() -> str:
        (info,) = exca.ops.inspect(root)
        return str(info.error)

    cancelled = f"job {blocked.job_id} was cancelled (state CANCELLED"
    wait_until(lambda: cancelled in said(), "sacct knows it")  # (it lags, for seconds)
    assert "without writing 1 of 1 item(s)" in said() and "killed, out of memory" not in said()


@pytest.mark.timeout(QUEUE_S + 2 * WAIT_S)
def test_clean_versions_removes_the_logs_of_an_old_versions_slurm_array(tmp_path: Path) -> None:
    """An array's logs folder holds submitit's `.submission_file_<hex>.sh` link besides the
    job files: it is exca's all the same, removed with the old version (it was kept, and
    no other clean command reached it)."""
    root = tmp_path / "cache"
    infra = {"folder": root, "cluster": "slurm"}
    tasks = [NapOps(seconds=0, marker=f"v1-{i}", infra=infra) for i in range(2)]
    with tasks[0].infra.job_array() as array:
        array.extend(tasks)
    step = tasks[0].infra.uid_folder().parent  # (<module>.NapOps.nap,1)
    assert any(p.name.startswith(".submission_file_") for p in (step / "logs").rglob("*"))
    # (a job still ending keeps its folders: not what is tested here)
    job_ids = [task.infra.job().job_id for task in tasks]
    wait_until(lambda: not any(map(_queue_state, job_ids)), "the jobs leave the queue")
    NapOps(seconds=0, marker="v1-0", infra={"folder": root, "version": "2"}).nap()
    result = cli("clean", root, "versions", "--yes")
    assert "logs of an old version" in result.stdout
    assert not step.exists()  # (left empty: removed too)
