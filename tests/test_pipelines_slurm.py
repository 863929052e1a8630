"""Pipelines on a real Slurm cluster (DESIGN "Detached Slurm runs"): a whole DAG submitted
at once with ``run(..., wait=False)``, one array per level chained with ``afterany``,
re-attachment instead of resubmission, results read from a fresh process, failures that
stop only their dependents, retry, and maps whose items come from an upstream job.

Every ``sbatch`` goes through a PATH shim that logs the ``#SBATCH`` lines of each
submission, so tests count submissions and arrays exactly. Jobs left in the queue by a
test (only the ones it submitted, read from its job records) are cancelled at its end.
"""

from __future__ import annotations

import json
import os
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

import pytest
from jobmodels_pipelines import SlurmSquare
from test_pipelines import Env, _by_uid, events, started, wait_for

import exca
import exca.graph
import exca.graph.executors
import exca.graph.scheduler
import exca.ops
from exca.graph.errors import NodeFailures
from slurm_cluster import squeue_ids

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(180)]


def slurm(**extra: tp.Any) -> dict[str, tp.Any]:
    return {"cluster": "slurm", "cpus_per_task": 1, "timeout_min": 3, **extra}


# --- fixtures ---------------------------------------------------------------------------------
class Sbatch:
    """The submissions made through the sbatch shim: one list of #SBATCH lines per call."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        chunks = self.log.read_text().split("=== CALL\n")[1:]
        return [[line for line in chunk.splitlines() if line.strip()] for chunk in chunks]

    def count(self) -> int:
        return len(self.calls())

    @staticmethod
    def option(call: list[str], name: str) -> str | None:
        for line in call:
            match = re.match(rf"#SBATCH --{name}=(\S+)", line)
            if match:
                return match.group(1)
        return None


@pytest.fixture
def sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sbatch:
    real = shutil.which("sbatch")
    assert real is not None
    shim = tmp_path / "shim"
    shim.mkdir()
    log = tmp_path / "sbatch.log"
    script = shim / "sbatch"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            {{
              echo "=== CALL"
              for arg in "$@"; do
                if [ -f "$arg" ]; then grep '^#SBATCH' "$arg"; fi
              done
            }} >> '{log}'
            exec '{real}' "$@"
            """
        )
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")
    return Sbatch(log)


def recorded_jobs(folder: Path) -> list[str]:
    """Job ids recorded in every node folder under a cache folder."""
    return [json.loads(p.read_text())["job_id"] for p in sorted(folder.rglob("jobs/*.json"))]


@pytest.fixture
def env(tmp_path: Path, sbatch: Sbatch) -> tp.Iterator[Env]:
    environment = Env(tmp_path)
    yield environment
    # cancel what this test submitted and left in the queue (never anyone else's job)
    if environment.folder.exists():
        mine = {j.split("_")[0] for j in recorded_jobs(environment.folder)}
        queued = {j.split("_")[0] for j in squeue_ids()}
        if mine & queued:
            subprocess.run(["scancel", *sorted(mine & queued)], check=False, timeout=30)


def records(node: exca.graph.Node) -> list[dict[str, tp.Any]]:
    assert node.folder is not None
    return [json.loads(p.read_text()) for p in sorted((node.folder / "jobs").glob("*.json"))]


def job_id(node: exca.graph.Node) -> str:
    found = records(node)
    assert len(found) == 1, found
    return str(found[0]["job_id"])


SQUEUE_POLL_S = 0.2  # (a squeue every 0.05 s, as wait_for looks at files: ~160 in a test)


def wait_until_ended(ids: tp.Iterable[str], timeout: float = 150) -> None:
    bases = {j.split("_")[0] for j in ids}
    end = time.monotonic() + timeout
    while bases & {j.split("_")[0] for j in squeue_ids()}:
        if time.monotonic() > end:
            raise TimeoutError(f"jobs {sorted(bases)} still queued after {timeout}s")
        time.sleep(SQUEUE_POLL_S)


def build_dag(
    env: Env, block: str = "", fail: str = "", mode: str = "cached"
) -> tuple[list[exca.graph.Node], list[exca.graph.Node], exca.graph.Node]:
    """4 leaves (blocked while ``block`` exists; leaf 2 fails while ``fail`` exists, with
    ``mode``) -> 2 middles (two leaves each) -> 1 top."""
    leaves = []
    for i in range(4):
        kwargs: dict[str, tp.Any] = {"block_flag": block}
        infra = slurm()
        if i == 2:
            kwargs["fail_flag"] = fail
            infra["mode"] = mode
        leaves.append(env.step(f"l{i}", infra=infra, **kwargs).run.node(i))
    middles = [
        env.step(f"m{i}", infra=slurm()).run.node(leaves[2 * i], leaves[2 * i + 1])
        for i in range(2)
    ]
    return leaves, middles, env.step("top", infra=slurm()).run.node(*middles)


def leaf_value(i: int) -> str:
    return f"l{i}({i},None)"


EXPECTED_TOP = f"top(m0({leaf_value(0)},{leaf_value(1)}),m1({leaf_value(2)},{leaf_value(3)}))"

FRESH_PROCESS = """
import sys
from pathlib import Path
from test_pipelines import Env
from test_pipelines_slurm import build_dag

_, _, top = build_dag(Env(Path(sys.argv[1])), block=sys.argv[2])
print("RESULT", top.result(), flush=True)
"""


# --- tests ------------------------------------------------------------------------------------
def test_a_detached_run_that_would_wait_here_submits_nothing(env: Env, sbatch: Sbatch) -> None:
    """Work done in this process (cluster=None) above a node that goes to Slurm: refused
    before anything is submitted (the leaf's job was submitted, then cancelled)."""
    leaf = env.step("leaf", infra=slurm()).run.node(1)
    top = env.step("top").run.node(leaf)
    with pytest.raises(ValueError, match=r"Cannot submit .*top.* without waiting"):
        exca.graph.run(top, wait=False)
    assert sbatch.count() == 0
    assert leaf.status() == "not submitted" and not events(env.log)


def test_a_refused_detached_run_changes_nothing_on_disk(env: Env, sbatch: Sbatch) -> None:
    """A detached run refused (a map done here below a Slurm task) had already removed the
    task's cached result, in mode retry, whose payload no longer decodes (the map read its
    items from it), and written the config folders of the work it then refused. A refused
    run now changes nothing; the same run waiting removes that result and computes it."""
    from test_pipelines import _overwrite_payload, snapshot

    def square(**infra: tp.Any) -> exca.graph.Node:
        return env.square().apply.node(env.numbers(2000, **infra).make.node())

    exca.graph.run(square())  # (computed here)
    _overwrite_payload(env.numbers(2000).infra.uid_folder())
    fresh = env.square(power=3).apply.node(env.numbers(3000, **slurm()).make.node())
    before = snapshot(env.folder)
    for target in (square(mode="retry", **slurm()), fresh):
        with pytest.raises(ValueError, match=r"Cannot submit .* without waiting"):
            exca.graph.run(target, wait=False)
    assert snapshot(env.folder) == before
    assert sbatch.count() == 0 and env.starts("numbers2000") == 1
    exca.graph.run(square(mode="retry"))  # (waiting, here: computed again)
    assert env.starts("numbers2000") == 2 and env.starts("square1999") == 1


def test_a_plan_of_a_detached_run_lists_what_it_would_refuse(env: Env, sbatch: Sbatch) -> None:
    """Work done here (cluster=None) below a node that goes to Slurm, a task or a map
    taking its items from it: run(..., wait=False) refuses it, and no plan said so. Now
    plan(..., wait=False) lists it, in the words of the run's error (a waiting run does
    not refuse it: its plan lists nothing)."""
    numbers = env.numbers(3, **slurm()).make.node()
    for node in (env.step("top").run.node(numbers), env.square().apply.node(numbers)):
        assert not [e for e in exca.graph.plan(node).entries if e.problems]
        entries = _by_uid(exca.graph.plan(node, wait=False))
        (problem,) = entries[node.uid].problems
        assert not entries[numbers.uid].problems
        assert f"its upstream {numbers.uid} goes to Slurm" in problem, problem
        with pytest.raises(ValueError) as info:
            exca.graph.run(node, wait=False)
        assert str(info.value) == problem
    assert sbatch.count() == 0 and not events(env.log)


def test_a_detached_run_whose_submission_fails_half_way_says_it_cancelled(
    env: Env, sbatch: Sbatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The upper level's sbatch refuses an option: the jobs submitted before (printed as
    submitted) are cancelled, and now a warning names them (that was silent)."""
    leaf = env.step("leaf", infra=slurm()).run.node(1)
    bad = slurm(slurm_additional_parameters={"bogus-option": 1})
    top = env.step("top", infra=bad).run.node(leaf)
    with pytest.raises(Exception, match="bogus"):
        exca.graph.run(top, wait=False)
    assert sbatch.count() == 2
    assert "the job(s) it had submitted are cancelled" in caplog.text, caplog.text
    assert leaf.status() == "not submitted"


def test_detached_dag(env: Env, sbatch: Sbatch) -> None:
    block = env.tmp / "block"
    block.touch()  # the leaves cannot end before the test removes it
    leaves, middles, top = build_dag(env, block=str(block))
    exca.graph.run(top, wait=False)
    # it returned with every job queued or running
    ids = {n.uid: job_id(n) for n in [*leaves, *middles, top]}
    queued = squeue_ids()
    assert set(ids.values()) <= queued, (ids, queued)
    assert "end" not in {e["event"] for e in events(env.log)}
    # one array per level; each level waits (afterany) for the one below
    leaf_array = {ids[n.uid].split("_")[0] for n in leaves}
    middle_array = {ids[n.uid].split("_")[0] for n in middles}
    assert len(leaf_array) == 1 and len(middle_array) == 1
    (leaf_array_id,), (middle_array_id,) = leaf_array, middle_array
    calls = sbatch.calls()
    assert len(calls) == 3
    assert [Sbatch.option(c, "array") for c in calls] == ["0-3%4", "0-1%2", None]
    assert Sbatch.option(calls[0], "dependency") is None
    assert Sbatch.option(calls[1], "dependency") == f"afterany:{leaf_array_id}"
    assert Sbatch.option(calls[2], "dependency") == f"afterany:{middle_array_id}"
    shown = subprocess.run(
        ["scontrol", "show", "job", middle_array_id], capture_output=True, text=True, timeout=30
    ).stdout
    assert re.search(rf"Dependency=afterany:{leaf_array_id}(_\*)?\(", shown), shown
    # a plan made now shows every node running, with its job id
    plan = exca.graph.plan(top)
    assert {e.uid: (e.status, e.action, e.job_id) for e in plan.entries} == {
        uid: ("running", "wait", job) for uid, job in ids.items()
    }
    # running it again re-attaches: no new submission
    exca.graph.run(top, wait=False)
    exca.graph.run(*build_dag(env, block=str(block))[2:], wait=False)
    assert sbatch.count() == 3
    assert {n.uid: job_id(n) for n in [*leaves, *middles, top]} == ids
    # a fresh process waits for the same jobs and reads the result
    script = env.tmp / "fresh.py"
    script.write_text(FRESH_PROCESS)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(env.tmp), str(block)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        block.unlink()
        output = proc.communicate(timeout=150)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and f"RESULT {EXPECTED_TOP}" in output, output
    assert sbatch.count() == 3  # the fresh process submitted nothing
    assert sorted(started(env.log)) == sorted(["l0", "l1", "l2", "l3", "m0", "m1", "top"])
    # middles started after their leaves ended, the top after the middles
    lines = events(env.log)
    position = {(e["name"], e["event"]): i for i, e in enumerate(lines)}
    for down, ups in {"m0": ["l0", "l1"], "m1": ["l2", "l3"], "top": ["m0", "m1"]}.items():
        assert all(position[up, "end"] < position[down, "start"] for up in ups), lines
    assert top.result() == EXPECTED_TOP


KILLED_AFTER_SBATCH = """
import os, signal, sys
from pathlib import Path
import exca.graph, exca.graph.scheduler
from test_pipelines import Env
from test_pipelines_slurm import build_dag

def killed(*args, **kwargs):  # (sbatch returned: the first job record is next)
    os.kill(os.getpid(), signal.SIGKILL)

exca.graph.scheduler.Scheduler.record = killed
_, _, top = build_dag(Env(Path(sys.argv[1])), block=sys.argv[2])
exca.graph.run(top, wait=False)
sys.exit("not killed")
"""


def test_a_detached_run_killed_after_sbatch_is_followed_by_the_next_run(
    env: Env, sbatch: Sbatch
) -> None:
    """Killed right after the leaves' sbatch returned, before their records: the next
    detached run submitted the leaves again (each computed twice). It follows them, and
    the levels above wait for them."""
    block = env.tmp / "block"
    block.touch()  # the leaves cannot end before the test removes it
    script = env.tmp / "killed.py"
    script.write_text(KILLED_AFTER_SBATCH)
    try:
        proc = subprocess.run(
            [sys.executable, str(script), str(env.tmp), str(block)],
            capture_output=True,
            text=True,
            timeout=150,
        )
        assert proc.returncode == -9, proc.stderr
        assert sbatch.count() == 1 and recorded_jobs(env.folder) == []
        leaves, _, top = build_dag(env, block=str(block))
        exca.graph.run(top, wait=False)
        assert sbatch.count() == 3  # (the middles and the top)
        (leaf_array,) = {job_id(n).split("_")[0] for n in leaves}
        calls = sbatch.calls()
        assert Sbatch.option(calls[0], "array") == "0-3%4"
        assert Sbatch.option(calls[1], "dependency") == f"afterany:{leaf_array}"
    finally:
        block.unlink()
    assert top.result() == EXPECTED_TOP
    assert sorted(started(env.log)) == sorted(["l0", "l1", "l2", "l3", "m0", "m1", "top"])


def test_failing_leaf_stops_only_its_dependents_then_retry(env: Env, sbatch: Sbatch) -> None:
    flag = env.tmp / "fail"
    flag.touch()
    leaves, middles, top = build_dag(env, fail=str(flag))
    exca.graph.run(top, wait=False)
    assert sbatch.count() == 3
    wait_until_ended(recorded_jobs(env.folder))
    leaves, middles, top = build_dag(env, fail=str(flag))  # fresh configs, as a later session
    assert sorted(started(env.log)) == ["l0", "l1", "l2", "l3", "m0"]  # m1 and top did not run
    assert middles[0].status() == "completed"
    assert middles[0].result() == f"m0({leaf_value(0)},{leaf_value(1)})"
    assert leaves[2].status() == "failed"
    assert middles[1].status() == "failed" and top.status() == "failed"
    plan = _by_uid(exca.graph.plan(top))
    assert (plan[leaves[2].uid].status, plan[leaves[2].uid].action) == ("cached error", "fail")
    for node in (middles[1], top):
        assert plan[node.uid].action == "fail"
        assert leaves[2].uid in plan[node.uid].reason
    assert plan[middles[0].uid].status == "cached"
    # the job of m1 said which job of its upstream failed
    said = exca.ops.logs(middles[1])[-1].stderr()
    assert f"upstream {leaves[2].uid} (job {job_id(leaves[2])}) holds an error" in said
    # cached mode: the error is raised again, nothing is submitted
    with pytest.raises(NodeFailures) as info:
        exca.graph.run(top)
    assert set(info.value.failures) == {leaves[2].uid, middles[1].uid, top.uid}
    assert "fails on purpose" in str(info.value.failures[leaves[2].uid])
    assert sbatch.count() == 3
    # fixed and retried: only the failed leaf and its dependents are submitted again
    flag.unlink()
    leaves, middles, top = build_dag(env, fail=str(flag), mode="retry")
    exca.graph.run(top, wait=False)
    calls = sbatch.calls()[3:]
    assert len(calls) == 3 and all(Sbatch.option(c, "array") is None for c in calls)  # 1 node each
    wait_until_ended(recorded_jobs(env.folder))  # (see test_result_waits_for_a_resubmitted_job)
    assert top.result() == EXPECTED_TOP
    assert sbatch.count() == 6
    for node in (leaves[2], middles[1], top):
        assert len(records(node)) == 2
    for node in (leaves[0], leaves[1], leaves[3], middles[0]):
        assert len(records(node)) == 1
    names = started(env.log)
    assert {n: names.count(n) for n in set(names)} == {
        "l0": 1,
        "l1": 1,
        "l2": 2,
        "l3": 1,
        "m0": 1,
        "m1": 1,
        "top": 1,
    }


def test_detached_chains_go_on_element_by_element(env: Env, sbatch: Sbatch) -> None:
    """Two chains a_i -> b_i, detached: b0 waited for the whole array of the a's (afterany),
    a1 still running. Now b_i waits for a_i only (aftercorr); a1's job cancelled (scancel)
    still starts b1 once the a's ended (aftercorr alone: never), and b1's error (what
    `exca logs` and its stderr show) says how a1's job ended and what computes it again:
    it said only "upstream a1 is missing"."""
    block = env.tmp / "block"
    block.touch()
    a = [env.step("a0", infra=slurm()).run.node()]
    a.append(env.step("a1", block_flag=str(block), infra=slurm()).run.node())
    b = [env.step(f"b{i}", infra=slurm()).run.node(a[i]) for i in range(2)]
    exca.graph.run(*b, wait=False)
    wait_for(lambda: "b0" in started(env.log), timeout=120)  # (a1 blocked meanwhile)
    assert "a1" in started(env.log)  # (running: sacct says CANCELLED, not "never started")
    # (a1 stays blocked: unblocked, it may return in the grace Slurm gives after SIGTERM)
    subprocess.run(["scancel", job_id(a[1])], check=True, timeout=30)
    calls = sbatch.calls()
    (array,) = {job_id(n).split("_")[0] for n in a}
    assert [Sbatch.option(c, "array") for c in calls] == ["0-1%2", "0-1%2"]
    # (quoted by submitit: '?' is special to a shell)
    assert Sbatch.option(calls[1], "dependency") == f"'aftercorr:{array}?afterany:{array}'"
    wait_until_ended([job_id(b[1])])
    assert b[0].result() == "b0(a0(None,None),None)"
    assert sorted(started(env.log)) == ["a0", "a1", "b0"]  # (b1 computed nothing)
    said = exca.ops.logs(b[1])[-1].stderr().strip().splitlines()[-1]
    cancelled = f"upstream {a[1].uid} has no result: job {job_id(a[1])} was cancelled (state"
    assert cancelled in said
    assert said.endswith("mode='retry' on that upstream config's own infra computes it again")


@pytest.mark.parametrize("wait", [False, True])
def test_one_array_per_level(
    env: Env, sbatch: Sbatch, wait: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 nodes on 3 levels with one resource set: 3 submissions, one array each, whether
    the run waits (a level goes out once the level below ended) or not (afterany). The
    targets are on two levels (tops, and a middle feeding no top). (4 leaves, 2 middles
    of 2 leaves each, 2 tops of the first middle: every level has 2 nodes or more; it had
    14 nodes, 2 CPUs of jobs for ~20 s.)"""
    # (a level's ready nodes wait at most HOLD_BACK_MAX_S for the rest of the level: on a
    # loaded machine the leaves on the test cluster's 2 CPUs took longer than its 30 s,
    # and the middles went out as they became ready)
    monkeypatch.setattr(exca.graph.scheduler, "HOLD_BACK_MAX_S", 600.0)
    leaves = [env.step(f"l{i}", infra=slurm()).run.node(i) for i in range(4)]
    middles = [
        env.step(f"m{i}", infra=slurm()).run.node(leaves[2 * i], leaves[2 * i + 1])
        for i in range(2)
    ]
    tops = [env.step(f"t{i}", infra=slurm()).run.node(middles[0]) for i in range(2)]
    targets = [*tops, middles[1]]
    plan = exca.graph.plan(*targets)
    assert len(plan.entries) == 8
    assert [(a.wave, a.elements) for a in plan.arrays] == [(0, 4), (1, 2), (2, 2)]
    exca.graph.run(*targets, wait=wait)
    calls = sbatch.calls()
    assert [Sbatch.option(c, "array") for c in calls] == ["0-3%4", "0-1%2", "0-1%2"]
    if wait:  # run() returned: everything it was asked for is computed
        assert [exca.graph.status(t) for t in targets] == ["completed"] * len(targets)
    assert len({j.split("_")[0] for j in recorded_jobs(env.folder)}) == 3
    assert len(recorded_jobs(env.folder)) == 8
    middle = "m0(l0(0,None),l1(1,None))"
    assert [top.result() for top in tops] == [f"t{i}({middle},None)" for i in range(2)]
    assert len(started(env.log)) == 8
    assert sbatch.count() == 3


def test_map_fed_by_upstream_is_split_at_run_time(env: Env, sbatch: Sbatch) -> None:
    numbers = env.numbers(count=7, **slurm())
    mapper = SlurmSquare(log=env.log, infra={"folder": env.folder, **slurm(max_jobs=3)})
    squares = mapper.apply.node(numbers.make.node())
    entry = _by_uid(exca.graph.plan(squares))[squares.uid]
    assert entry.items == "items known at run time"
    exca.graph.run(squares, wait=False)
    calls = sbatch.calls()
    assert len(calls) == 2
    numbers_job = job_id(numbers.make.node())
    assert Sbatch.option(calls[1], "array") == "0-2%3"  # max_jobs tasks, items unknown yet
    assert Sbatch.option(calls[1], "dependency") == f"afterany:{numbers_job}"
    wait_until_ended(recorded_jobs(env.folder))
    fresh = SlurmSquare(log=env.log, infra={"folder": env.folder, **slurm(max_jobs=3)})
    fresh_node = fresh.apply.node(env.numbers(count=7, **slurm()).make.node())
    assert _by_uid(exca.graph.plan(fresh_node))[fresh_node.uid].status == "cached"
    assert fresh_node.result() == [i**2 for i in range(7)]
    assert sbatch.count() == 2
    computed = [e for e in events(env.log) if e["name"].startswith("square")]
    assert sorted(e["name"] for e in computed) == sorted(
        f"square{i}" for i in range(7)
    )  # once each
    jobs = {e["job"] for e in computed}
    assert len(jobs) == 3 and len({j.split("_")[0] for j in jobs}) == 1  # one array of 3
    # each item's logs: the chunk job that computed it (its items were unknown when queued)
    for event in computed:
        (found,) = exca.ops.logs(squares.folder, item=event["name"][len("square") :])
        assert found.job_id == event["job"]
    assert list(fresh.apply(list(range(7)))) == [i**2 for i in range(7)]  # shared with eager calls


def test_detached_map_is_reattached(env: Env, sbatch: Sbatch) -> None:
    block = env.tmp / "block"
    block.touch()  # the map's jobs cannot end before the test ends
    numbers = env.numbers(count=4, **slurm())
    mapper = SlurmSquare(
        log=env.log, block_flag=str(block), infra={"folder": env.folder, **slurm(max_jobs=2)}
    )
    squares = mapper.apply.node(numbers.make.node())
    exca.graph.run(squares, wait=False)
    assert sbatch.count() == 2
    entry = _by_uid(exca.graph.plan(squares))[squares.uid]
    assert entry.status == "running"
    exca.graph.run(squares, wait=False)
    assert sbatch.count() == 2


def test_result_waits_for_a_resubmitted_job(env: Env, sbatch: Sbatch) -> None:
    flag = env.tmp / "fail"
    flag.touch()

    def build(mode: str) -> exca.graph.Node:
        leaf = env.step("leaf", fail_flag=str(flag), infra=slurm(mode=mode)).run.node()
        return env.step("top", infra=slurm()).run.node(leaf)

    exca.graph.run(build("cached"), wait=False)
    wait_until_ended(recorded_jobs(env.folder))
    assert build("cached").status() == "failed"  # its upstream failed
    flag.unlink()
    top = build("retry")
    exca.graph.run(top, wait=False)  # the leaf and the top are submitted again
    assert sbatch.count() == 4
    assert top.result() == "top(leaf(None,None),None)"  # waits for the new job


def test_a_detached_forced_run_hides_the_old_results(env: Env, sbatch: Sbatch) -> None:
    """While the jobs of a forced recomputation are queued or running, another instance
    sees the nodes running and waits for the new results (it read the old ones)."""
    block = env.tmp / "block"

    def build(mode: str) -> exca.graph.Node:
        leaf = env.step("leaf", block_flag=str(block), infra=slurm(mode=mode)).run.node()
        return env.step("top", infra=slurm()).run.node(leaf)

    assert build("cached").result() == "top(leaf(None,None),None)"
    block.touch()  # the forced leaf cannot end before the test removes it
    exca.graph.run(build("force"), wait=False)
    fresh = build("cached")
    assert fresh.status() == "running"  # (its old result was read: "completed")
    assert fresh.upstream[0].status() == "running"
    block.unlink()
    assert fresh.result() == "top(leaf(None,None),None)"
    assert started(env.log).count("leaf") == 2 and started(env.log).count("top") == 2


@pytest.mark.parametrize("wait", [False, True])
def test_retried_middle_node_while_the_old_downstream_job_is_queued(
    env: Env, sbatch: Sbatch, wait: bool
) -> None:
    """a -> b -> c, detached; b fails while c's job is still queued (held: a busy
    cluster). b is fixed and retried: that old c job depends on b's failed job and
    cannot use the new result, so the retry computes c again after b (it took a third
    run: the old job cached "upstream failed" and the retry waited for it)."""
    _retried_middle_node(env, sbatch, wait)


def _retried_middle_node(env: Env, sbatch: Sbatch, wait: bool) -> None:
    fail, block = env.tmp / "fail", env.tmp / "block"

    def build(mode: str) -> exca.graph.Node:
        a = env.step("a", infra=slurm()).run.node()
        b = env.step("b", fail_flag=str(fail), block_flag=str(block), infra=slurm(mode=mode))
        return env.step("c", infra=slurm()).run.node(b.run.node(a))

    fail.touch()
    block.touch()
    c = build("cached")
    exca.graph.run(c, wait=False)
    old_c = job_id(c)
    subprocess.run(["scontrol", "hold", old_c], check=True, capture_output=True)
    block.unlink()  # b runs and fails

    def b_failed() -> bool:
        return "b" in started(env.log) and c.upstream[0].status() == "failed"

    wait_for(b_failed, timeout=120, poll=SQUEUE_POLL_S)
    fail.unlink()
    block.touch()  # the new b job runs a while
    retried = build("retry")
    entry = _by_uid(exca.graph.plan(retried))[retried.uid]
    assert (entry.status, entry.action) == ("missing", "compute")
    assert f"job {old_c} predates the new computation of upstream" in entry.reason

    def release_old_c_then_unblock_b() -> None:
        wait_for(lambda: sbatch.count() >= 4, timeout=120)  # (the retry's b: c decided)
        subprocess.run(["scontrol", "release", old_c], check=True, capture_output=True)
        wait_until_ended([old_c])  # it started before the new b result exists
        if not wait:  # c's new job is queued, its old one cached "upstream failed":
            exca.graph.run(build("cached"), wait=False)  # nothing more to submit
        block.unlink()

    releaser = threading.Thread(target=release_old_c_then_unblock_b)
    releaser.start()
    exca.graph.run(retried, wait=wait)
    releaser.join(timeout=150)
    assert build("cached").result() == "c(b(a(None,None),None),None)"
    assert started(env.log) == ["a", "b", "b", "c"]  # c computed once, from the new b
    assert sbatch.count() == 5  # a, b, c; then b and c again


def test_detached_forced_run_goes_after_the_running_job(env: Env, sbatch: Sbatch) -> None:
    """mode=force while the node's previous job is still running: a detached run submits
    the recomputation at once, to start after that job (it submitted nothing)."""
    block = env.tmp / "block"
    block.touch()

    def build(mode: str) -> exca.graph.Node:
        return env.step("solo", block_flag=str(block), infra=slurm(mode=mode)).run.node()

    first = build("cached")
    exca.graph.run(first, wait=False)
    first_job = job_id(first)
    wait_for(lambda: started(env.log) == ["solo"], timeout=120)  # running
    forced = build("force")
    exca.graph.run(forced, wait=False)
    assert sbatch.count() == 2
    dependency = Sbatch.option(sbatch.calls()[1], "dependency")
    assert dependency == f"afterany:{first_job.split('_')[0]}"
    block.unlink()
    wait_until_ended(recorded_jobs(env.folder))
    assert started(env.log) == ["solo", "solo"]  # computed again after the first job
    assert build("cached").result() == "solo(None,None)"


def test_plan_of_a_forced_node_whose_job_is_queued_counts_what_follows(
    env: Env, sbatch: Sbatch
) -> None:
    """a -> b detached, a's job still running; a forced: b is computed again after it.
    The plan showed b waiting for its old job "(mode force)" and one submission, while the
    run sent two (a, then b)."""
    block = env.tmp / "block"
    block.touch()

    def build(mode: str) -> exca.graph.Node:
        a = env.step("a", block_flag=str(block), infra=slurm(mode=mode)).run.node()
        return env.step("b", infra=slurm()).run.node(a)

    exca.graph.run(build("cached"), wait=False)
    wait_for(lambda: started(env.log) == ["a"], timeout=120)  # a runs, b queued behind it
    forced = build("force")
    plan = exca.graph.plan(forced)
    entry = _by_uid(plan)[forced.uid]
    assert (entry.status, entry.action) == ("forced", "compute"), entry
    assert "forced by upstream" in entry.reason and "(mode force)" not in entry.reason
    assert [a.wave for a in plan.arrays] == [0, 1]  # a again, then b
    block.unlink()
    exca.graph.run(forced)
    assert sbatch.count() == 2 + len(plan.arrays)
    wait_until_ended(recorded_jobs(env.folder))
    assert started(env.log)[:2] == ["a", "a"] and started(env.log).count("b") >= 1
    assert build("cached").result() == "b(a(None,None),None)"


def test_two_detached_runs_of_one_forced_instance_force_it_once(env: Env, sbatch: Sbatch) -> None:
    """One instance in mode force feeds two detached runs: the second follows the job of
    the first (it forced the node again after that job, and its first downstream node had
    read a result that was then replaced)."""
    block = env.tmp / "block"
    block.touch()
    leaf = env.step("a", block_flag=str(block), infra=slurm(mode="force"))
    exca.graph.run(env.step("b1", infra=slurm()).run.node(leaf.run.node()), wait=False)
    exca.graph.run(env.step("b2", infra=slurm()).run.node(leaf.run.node()), wait=False)
    assert sbatch.count() == 3  # a, b1, b2
    block.unlink()
    wait_until_ended(recorded_jobs(env.folder))
    assert sorted(started(env.log)) == ["a", "b1", "b2"]


def test_a_forced_map_split_by_a_detached_run_is_forced_once(env: Env, sbatch: Sbatch) -> None:
    """A map in mode force fed by an upstream node: the detached run's split jobs force
    its items; the same instance's later runs and eager calls reuse them."""
    numbers = env.numbers(count=3).make.node()
    mapper = SlurmSquare(log=env.log, infra={"folder": env.folder, **slurm(max_jobs=1)})
    exca.graph.run(mapper.apply.node(numbers))  # cached once
    numbers.clear()  # (computed again by the detached run: the map's items unknown then)
    forced = SlurmSquare(
        log=env.log, infra={"folder": env.folder, **slurm(max_jobs=1, mode="force")}
    )
    exca.graph.run(forced.apply.node(numbers), wait=False)
    wait_until_ended(recorded_jobs(env.folder))
    squares = [e["name"] for e in events(env.log) if e["name"].startswith("square")]
    assert sorted(squares) == sorted(2 * ["square0", "square1", "square2"])
    again = forced.apply.node(numbers)
    assert _by_uid(exca.graph.plan(again))[again.uid].action == "reuse"
    assert again.result() == [0, 1, 4]
    assert list(forced.apply([0, 1, 2])) == [0, 1, 4]
    assert len([e for e in events(env.log) if e["name"].startswith("square")]) == 6


def test_detached_read_only_map_fed_by_upstream_only_checks(env: Env, sbatch: Sbatch) -> None:
    """Its items are known once its upstream job ran: one job checks them, and fails if
    one is missing (it never computes, as a waiting run or an eager call)."""
    numbers = env.numbers(count=5, **slurm())
    mapper = SlurmSquare(
        log=env.log, infra={"folder": env.folder, "mode": "read-only", **slurm(max_jobs=3)}
    )
    squares = mapper.apply.node(numbers.make.node())
    entry = _by_uid(exca.graph.plan(squares))[squares.uid]
    assert (entry.status, entry.action) == ("missing", "check")
    exca.graph.run(squares, wait=False)
    calls = sbatch.calls()
    assert len(calls) == 2
    assert Sbatch.option(calls[1], "array") is None  # one check job, not max_jobs chunks
    wait_until_ended(recorded_jobs(env.folder))
    assert not [e for e in events(env.log) if e["name"].startswith("square")]  # none computed
    with pytest.raises(RuntimeError, match="read-only and 5/5 items missing"):
        squares.result()
    computing = SlurmSquare(log=env.log, infra={"folder": env.folder, "cluster": None})
    assert list(computing.apply(list(range(5)))) == [i**2 for i in range(5)]
    again = SlurmSquare(
        log=env.log, infra={"folder": env.folder, "mode": "read-only", **slurm(max_jobs=3)}
    )
    assert again.apply.node(numbers.make.node()).result() == [i**2 for i in range(5)]


def test_plan_of_work_below_a_running_job_on_slurm_is_one_array(env: Env, sbatch: Sbatch) -> None:
    """On Slurm, a waiting run holds the independent work of the array back until the
    running job ends, then sends both as one array: the plan says one array too, and a
    detached run sends one array, after the running job (it sent two: the running job
    counted as a level)."""
    block = env.tmp / "block"
    block.touch()
    running = env.step("running", block_flag=str(block), infra=slurm()).run.node()
    job = running.job()
    try:
        below = env.step("below", infra=slurm()).run.node(running)
        apart = env.step("apart", infra=slurm()).run.node()
        plan = exca.graph.plan(below, apart)
        (array,) = plan.arrays
        assert sorted(array.nodes) == sorted([below.uid, apart.uid]) and not array.after_running
        before = sbatch.count()
        exca.graph.run(below, apart, wait=False)
        assert sbatch.count() == before + 1
        (call,) = sbatch.calls()[before:]
        assert sbatch.option(call, "dependency") == f"afterany:{job_id(running).split('_')[0]}"
    finally:
        block.unlink()
    assert job.result() == "running(None,None)"
    assert below.result() == "below(running(None,None),None)"
    assert apart.result() == "apart(None,None)"


def test_ready_work_is_held_back_for_a_bounded_time(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ready work of an array group waited for every running job with work of that group
    below it, for as long as that job ran: the next step of a quick branch waited for a
    long training in another branch, not even queued (a probe). It waits HOLD_BACK_MAX_S
    at most (shortened here), then goes on its own."""
    monkeypatch.setattr(exca.graph.scheduler, "HOLD_BACK_MAX_S", 1.0)
    block = env.tmp / "block"
    block.touch()
    slow = env.step("slow", block_flag=str(block), infra=slurm()).run.node()
    below = env.step("below", infra=slurm()).run.node(slow)
    quick = env.step("quick", infra=slurm()).run.node()
    after = env.step("after", infra=slurm()).run.node(quick)
    running = threading.Thread(target=lambda: exca.graph.run(below, after))
    running.start()
    try:
        wait_for(lambda: after.status() == "completed", timeout=120, poll=SQUEUE_POLL_S)
        assert slow.status() == "running" and below.status() == "not submitted"
    finally:
        block.unlink()
        running.join(timeout=120)
    assert below.result() == "below(slow(None,None),None)"
    assert after.result() == "after(quick(None,None),None)"


def test_detached_run_above_a_node_another_worker_computes(env: Env, sbatch: Sbatch) -> None:
    """A leaf computed inline by another caller (its claim is live) under a detached run:
    the leaf still gets a job (it waits for that claim), so the node above it can be
    queued after that job (a run that waits would wait for the claim instead; a detached
    one cannot, and refused to submit)."""
    block = env.tmp / "block"
    block.touch()
    inline = env.step("l0", block_flag=str(block)).run.node(0)
    computing = threading.Thread(target=lambda: exca.graph.run(inline))
    computing.start()
    try:
        wait_for(lambda: "l0" in started(env.log), timeout=60)
        leaf = env.step("l0", infra=slurm(), block_flag=str(block)).run.node(0)
        top = env.step("m0", infra=slurm()).run.node(leaf)
        assert leaf.uid == inline.uid
        exca.graph.run(top, wait=False)
        assert sbatch.count() == 2
        assert Sbatch.option(sbatch.calls()[1], "dependency") == f"afterany:{job_id(leaf)}"
    finally:
        block.unlink()
        computing.join(timeout=60)
    wait_until_ended([job_id(top)])
    assert top.result() == f"m0({leaf_value(0)},None)"
    assert started(env.log).count("l0") == 1  # (the leaf's job read what the caller wrote)


def test_plan_says_when_slurm_splits_an_array(env: Env) -> None:
    """More elements than Slurm's MaxArraySize go out as several arrays: the plan says so
    (it showed one array of 1100 elements where a run sent two; a probe)."""
    size = exca.graph.executors.max_array_size()
    square = SlurmSquare(log=env.log, infra={"folder": env.folder, **slurm(max_jobs=None)})
    plan = exca.graph.plan(square.apply.node(list(range(size + 99))))
    (array,) = plan.arrays
    assert (array.elements, array.slurm_arrays) == (size + 99, 2)
    assert f"{size + 99} element(s) in 2 arrays (Slurm's MaxArraySize is {size})" in str(plan)
    small = exca.graph.plan(square.apply.node([1, 2]))
    assert small.arrays[0].slurm_arrays == 1 and " arrays" not in str(small)


# --- inline work does not hold back Slurm work it does not need ----------------------------------
def _inline_beside_a_slurm_chain(env: Env) -> tuple[exca.graph.Node, exca.graph.Node]:
    """leaf -> mid on Slurm (mid touches a file as it starts), and an independent inline
    node (cluster=None) that waits (60 s at most, else fails) for that file: it ends only
    if mid's job starts while it runs."""
    started_file = env.tmp / "mid-started"
    leaf = env.step("leaf", infra=slurm()).run.node(1)
    mid = env.step("mid", signal_file=str(started_file), infra=slurm()).run.node(leaf)
    inline = env.step("inline", partner=str(started_file)).run.node(2)
    return mid, inline


def test_a_waiting_run_submits_slurm_work_while_an_inline_node_runs(
    env: Env, sbatch: Sbatch
) -> None:
    """A job ends while an inline node of another branch runs: the Slurm work it makes
    ready goes out then (it waited for the inline node to end, a probe: 40 s late)."""
    mid, inline = _inline_beside_a_slurm_chain(env)
    exca.graph.run(mid, inline)
    assert mid.result() == "mid(leaf(1,None),None)"
    assert inline.result() == "inline(2,None)"
    assert sbatch.count() == 2  # (leaf, then mid: none twice)
    assert started(env.log).count("inline") == 1


def test_a_detached_run_submits_slurm_work_before_inline_work_it_does_not_need(
    env: Env, sbatch: Sbatch
) -> None:
    """run(..., wait=False) with an independent inline node: every Slurm node goes out
    (with its dependency) before the inline node runs (mid went out only once the inline
    node had run, a probe: 25 s late, and never on a Ctrl-C meanwhile)."""
    mid, inline = _inline_beside_a_slurm_chain(env)
    exca.graph.run(mid, inline, wait=False)
    calls = sbatch.calls()
    assert len(calls) == 2
    leaf_id = job_id(next(iter(mid.upstream)))
    assert Sbatch.option(calls[1], "dependency") == f"afterany:{leaf_id}"
    assert inline.status() == "completed"
    wait_until_ended([job_id(mid)])
    assert mid.result() == "mid(leaf(1,None),None)"


INTERRUPTED_INLINE_SCRIPT = """
import signal
import sys
from pathlib import Path

signal.signal(signal.SIGINT, signal.default_int_handler)  # (as in a terminal)
import exca.graph
from test_pipelines import Env
from test_pipelines_slurm import slurm

env = Env(Path(sys.argv[1]))
leaf = env.step("leaf", infra=slurm()).run.node(1)
mid = env.step("mid", signal_file=sys.argv[2], block_flag=sys.argv[3], infra=slurm()).run.node(leaf)
inline = env.step("inline", block_flag=sys.argv[3]).run.node(2)
try:
    exca.graph.run(mid, inline)
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
    sys.exit(3)
print("FINISHED", flush=True)
"""


def test_ctrl_c_during_inline_work_cancels_the_jobs_submitted_meanwhile(env: Env) -> None:
    """Ctrl-C while an inline node runs, after the job its run submitted meanwhile started
    (mid, ready once leaf ended): that job is cancelled and forgotten, as every job of an
    interrupted run (without it, mid never started while the inline node ran)."""
    block = env.tmp / "block"
    block.touch()
    mid_started = env.tmp / "mid-started"
    script = env.tmp / "driver.py"
    script.write_text(textwrap.dedent(INTERRUPTED_INLINE_SCRIPT))
    tests = str(Path(__file__).parent)
    path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(env.tmp), str(mid_started), str(block)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": path},
        start_new_session=True,
    )
    try:
        wait_for(lambda: mid_started.exists() or proc.poll() is not None, timeout=120)
        assert proc.poll() is None, proc.communicate()[0].decode()
        assert started(env.log).count("inline") == 1 and "inline" not in [
            e["name"] for e in events(env.log, "end")
        ]
        leaf = env.step("leaf", infra=slurm()).run.node(1)
        mid_node = env.step(
            "mid", signal_file=str(mid_started), block_flag=str(block), infra=slurm()
        ).run.node(leaf)
        (mid_job,) = [r["job_id"] for r in records(mid_node)]
        os.kill(proc.pid, signal.SIGINT)
        output = proc.communicate(timeout=90)[0].decode()
    finally:
        block.unlink()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 3 and "INTERRUPTED" in output, output
    assert "cancelling the job(s) this call submitted" in output and mid_job in output, output
    wait_until_ended([mid_job])
    assert not records(mid_node)  # (cancelled: forgotten, the next call submits it again)
    assert "mid" not in [e["name"] for e in events(env.log, "end")]
