"""Pytest helpers for tests that run against a real Slurm cluster.

Wiring (in tests/conftest.py)::

    from slurm_cluster import *  # noqa: F403

    def pytest_collection_modifyitems(config, items):
        add_slurm_fixture(items)

`add_slurm_fixture` makes every test marked ``@pytest.mark.slurm`` request the session
fixture ``slurm_cluster`` first (then ``slurm_turn``: one Slurm test at a time across
pytest workers; then ``slurm_jobs_left_ended``: the jobs a test left are ended after it), so such a test is skipped (or failed, see below) before
any of its other fixtures runs. A test may also request ``slurm_cluster`` directly to read
the cluster's partition, CPUs, memory, MaxArraySize and node name.

What the fixture does, once per pytest session:

1. ``slurm_available()``: the controller answers ``scontrol ping`` with UP and ``sinfo``
   shows a usable node (idle / mixed / allocated / completing);
2. if not, and we may start one, runs ``scripts/start-slurm.sh`` (apt install + daemons,
   300 s at most), then checks again. "May start" means ``EXCA_START_SLURM=1``, or, when
   that variable is unset, running as root on a machine with apt-get while ``SLURM_CONF``
   is unset or the default ``/etc/slurm/slurm.conf`` (a user pointing ``SLURM_CONF``
   elsewhere means another cluster, which we must not try to replace).
   ``EXCA_START_SLURM=0`` never starts anything;
3. if still unavailable: ``pytest.skip(reason)``, or ``pytest.fail(reason)`` when
   ``EXCA_REQUIRE_SLURM=1`` (CI sets it, so CI can never go green without Slurm).

Every Slurm command runs with a timeout (10 s), so nothing here can hang on a dead or
unreachable controller.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

__all__ = [
    "START_SCRIPT",
    "SlurmCluster",
    "add_slurm_fixture",
    "end_jobs_logging_in",
    "sacct_states",
    "slurm_available",
    "slurm_cluster",
    "slurm_jobs_left_ended",
    "slurm_turn",
    "squeue_ids",
]

REPO = Path(__file__).resolve().parents[1]
START_SCRIPT = REPO / "scripts" / "start-slurm.sh"
DEFAULT_SLURM_CONF = "/etc/slurm/slurm.conf"
CMD_TIMEOUT = 10.0  # seconds, for each Slurm client command
START_TIMEOUT = 300.0  # seconds, for scripts/start-slurm.sh (may apt-install)
# node states in which jobs can run (sinfo %T, lower case, suffix flags removed)
# ("planned": idle, its CPUs planned by the backfill scheduler for a pending job)
_USABLE_STATES = {"idle", "mixed", "allocated", "completing", "planned"}
_START_ATTEMPTED: list[str] = []  # the start script runs at most once per process


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    """What tests may need to know about the cluster the ``slurm_cluster`` fixture found."""

    partition: str  # the default partition (marked '*' by sinfo), e.g. "debug"
    node: str  # name of the (first) node of that partition
    cpus_per_node: int
    mem_mb_per_node: int
    max_array_size: int  # scontrol show config: MaxArraySize (largest task index + 1)


def _run(cmd: list[str], timeout: float = CMD_TIMEOUT) -> tuple[int, str, str]:
    """Run a Slurm client command; never raises, never hangs (rc 127: not found, 124: timeout)."""
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError:
        return 127, "", f"{cmd[0]}: command not found"
    except subprocess.TimeoutExpired:
        return 124, "", f"{' '.join(cmd)} did not answer within {timeout:.0f}s"
    return proc.returncode, proc.stdout, proc.stderr


def _where() -> str:
    return f"SLURM_CONF={os.environ.get('SLURM_CONF', DEFAULT_SLURM_CONF)}"


def slurm_available() -> tuple[bool, str]:
    """(True, description) when the controller answers and a node can run jobs, else
    (False, reason). Bounded by two command timeouts (about 20 s at worst)."""
    if shutil.which("scontrol") is None or shutil.which("sinfo") is None:
        return False, "Slurm client commands (scontrol, sinfo) are not on PATH"
    rc, out, err = _run(["scontrol", "ping"])
    # "Slurmctld(primary) at vm is UP"; one line per controller
    if not re.search(r"\bis UP\b", out):
        first = (out.strip().splitlines() or [err.strip() or f"exit code {rc}"])[0]
        return False, f"Slurm controller does not answer ({_where()}): scontrol ping: {first}"
    rc, out, err = _run(["sinfo", "-h", "-N", "-o", "%N %T"])
    if rc != 0:
        return False, f"sinfo failed ({_where()}): {err.strip() or f'exit code {rc}'}"
    nodes = [line.split() for line in out.splitlines() if line.strip()]
    usable = [n for n, state in nodes if _usable(state)]
    if not usable:
        shown = ", ".join(f"{n} {s}" for n, s in nodes) or "no node at all"
        return False, f"no Slurm node can run jobs ({_where()}): {shown}"
    return True, f"Slurm controller UP; usable node(s): {', '.join(sorted(set(usable)))}"


def _usable(state: str) -> bool:
    # a trailing '*' means "not responding"; other suffixes (~ # ! % $ @ ^ - +) are flags
    return not state.endswith("*") and state.rstrip("~#!%$@^-+").lower() in _USABLE_STATES


def _may_start() -> bool:
    flag = os.environ.get("EXCA_START_SLURM")
    if flag is not None:
        return flag == "1"
    return (
        os.geteuid() == 0
        and shutil.which("apt-get") is not None
        and START_SCRIPT.is_file()
        and os.environ.get("SLURM_CONF", DEFAULT_SLURM_CONF) == DEFAULT_SLURM_CONF
    )


def _start_cluster() -> str:
    """Run scripts/start-slurm.sh once; return '' on success, else a short failure text."""
    if _START_ATTEMPTED:
        return _START_ATTEMPTED[0]
    # output goes to a file, not a pipe: if the script is killed on timeout, a surviving
    # grandchild (apt, dpkg) holding a pipe open would block us forever
    with tempfile.TemporaryFile(mode="w+") as log:
        t0 = time.monotonic()
        try:
            rc = subprocess.run(
                ["bash", str(START_SCRIPT)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=START_TIMEOUT,
            ).returncode
        except subprocess.TimeoutExpired:
            rc = 124
        log.seek(0)
        tail = "\n".join(log.read().splitlines()[-15:])
    took = time.monotonic() - t0
    if rc == 0:
        result = ""
    elif rc == 124:
        result = f"{START_SCRIPT} did not finish within {START_TIMEOUT:.0f}s:\n{tail}"
    else:
        result = f"{START_SCRIPT} failed (exit {rc}) after {took:.0f}s:\n{tail}"
    _START_ATTEMPTED.append(result)
    return result


@contextlib.contextmanager
def _uncaptured(config: pytest.Config) -> Iterator[None]:
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        yield
    else:
        with capman.global_and_fixture_disabled():
            yield


def _cluster_info() -> SlurmCluster:
    rc, out, err = _run(["sinfo", "-h", "-o", "%P|%c|%m|%N"])
    if rc != 0 or not out.strip():
        raise RuntimeError(f"sinfo failed: {err.strip() or out.strip()}")
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    default = next((r for r in rows if r[0].endswith("*")), rows[0])
    partition = default[0].rstrip("*")
    rc, nodes, _ = _run(["sinfo", "-h", "-N", "-p", partition, "-o", "%N"])
    node = (nodes.split() or [default[3]])[0]
    rc, config, err = _run(["scontrol", "show", "config"])
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", config, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"MaxArraySize not found in `scontrol show config` ({err.strip()})")
    return SlurmCluster(
        partition=partition,
        node=node,
        cpus_per_node=int(default[1].rstrip("+")),
        mem_mb_per_node=int(default[2].rstrip("+")),
        max_array_size=int(match.group(1)),
    )


@pytest.fixture(scope="session")
def slurm_cluster(request: pytest.FixtureRequest) -> SlurmCluster:
    """The running Slurm cluster (started if needed and allowed); skips, or fails under
    EXCA_REQUIRE_SLURM=1, when none answers."""
    ok, reason = slurm_available()
    if not ok and _may_start():
        with _uncaptured(request.config):
            print(f"\n[slurm_cluster] {reason}; starting one with {START_SCRIPT} ...", flush=True)
        failure = _start_cluster()
        ok, reason = slurm_available()
        if not ok and failure:
            reason = f"{reason}\n{failure}"
    if not ok:
        if os.environ.get("EXCA_REQUIRE_SLURM") == "1":
            pytest.fail(f"EXCA_REQUIRE_SLURM=1 but no Slurm cluster: {reason}", pytrace=False)
        pytest.skip(f"no Slurm cluster: {reason}")
    return _cluster_info()


@pytest.fixture
def slurm_turn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One Slurm test at a time across the pytest workers of a run (one cluster; some tests
    count its jobs or hold its only node). `make test` also sends them all to one worker
    (xdist's loadgroup), which leaves this lock uncontended; it still holds when that
    grouping does not apply (pytest 9.2 with xdist 3.8 ignored it: Slurm tests ran on both
    workers, and held jobs of one starved the other's)."""
    import fcntl

    # (the workers' base temp folders share their parent; without workers, its own one)
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    with open(root / "slurm-turn.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture
def slurm_jobs_left_ended(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a Slurm test, end the jobs it left in the queue (its jobs: those whose log
    is in its own ``tmp_path``; a module fixture's job, in another folder, runs on), and
    wait until they left. Jobs lingering after their test (a process living on after
    its result, a job nobody waited for) held the cluster's 2 CPUs while the next tests
    ran: theirs waited, pending, ~9 s at p90 after their submission."""
    yield
    folder = request.node.funcargs.get("tmp_path")  # type: ignore[attr-defined]
    if folder is not None:
        end_jobs_logging_in(Path(folder))


JOBS_LEFT_WAIT_S = 30.0  # at most, for the jobs ended after a test to leave the queue


def end_jobs_logging_in(folder: Path) -> list[str]:
    """Kill (running) then cancel (pending) this user's queued Slurm jobs whose log path
    is inside ``folder``, and wait until squeue no longer lists them; their ids."""
    import getpass

    # (StdOut as given to sbatch, %A_%j patterns unexpanded: a prefix is enough)
    rc, out, _ = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-O", "JobID:30,StdOut:4000"])
    if rc != 0:
        return []
    inside = str(folder.resolve()) + os.sep
    ids = []
    for line in out.splitlines():
        job, _, log = line.strip().partition(" ")
        if job and str(Path(log.strip()).resolve()).startswith(inside):
            ids.append(job)
    if not ids:
        return []
    # (KILL first: submitit's jobs ignore the SIGTERM of a plain scancel, then die
    # KillWait (5 s) later; a pending job is not signalled: the scancel after ends it)
    _run(["scancel", "--full", "--signal=KILL", *ids])
    _run(["scancel", *ids])
    deadline = time.monotonic() + JOBS_LEFT_WAIT_S
    while time.monotonic() < deadline:
        rc, out, err = _run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i"])
        if (rc == 0 and not out.strip()) or "Invalid job id" in err:
            break
        time.sleep(0.1)
    return ids


def add_slurm_fixture(items: Iterable[pytest.Item]) -> None:
    """Make each test marked ``slurm`` request ``slurm_cluster`` then ``slurm_turn`` before
    its other fixtures (call from conftest's ``pytest_collection_modifyitems``)."""
    for item in items:
        names = getattr(item, "fixturenames", None)
        if item.get_closest_marker("slurm") is None or names is None:
            continue
        # (a new list: the parametrized items of one test function share theirs, and every
        # one of them, marked slurm or not, waited for the Slurm turn, or was skipped
        # without a cluster)
        # (the jobs a test left are ended before the next test's turn: teardown runs
        # in the reverse order)
        first = ["slurm_cluster", "slurm_turn", "slurm_jobs_left_ended"]
        item.fixturenames = [*first, *(name for name in names if name not in first)]  # type: ignore[attr-defined]


def sacct_states(job_ids: Iterable[str | int]) -> dict[str, str]:
    """{job id: state} from one ``sacct -n -X -P -o JobID,State -j a,b,c`` call.

    Array tasks show as ``<id>_<i>``. A job the accounting database does not know yet is
    absent: the tasks of an array that has not started are only known as a whole (asking for
    ``<id>`` gives ``<id>_[0-2]: PENDING``; asking for ``<id>_0`` gives nothing), and records
    reach the database asynchronously, so poll. The state is sacct's first word
    ("CANCELLED by 0" -> "CANCELLED"). Raises RuntimeError if sacct fails."""
    ids = [str(j) for j in job_ids]
    if not ids:
        return {}
    cmd = ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(ids)]
    rc, out, err = _run(cmd)
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {rc}): {err.strip()}")
    states = {}
    for line in out.splitlines():
        if "|" in line:
            job, state = line.split("|", 1)
            states[job.strip()] = (state.split() or [""])[0]
    return states


def squeue_ids() -> set[str]:
    """Ids of the jobs squeue lists by default, i.e. not finished yet (pending, running,
    completing...), array tasks expanded as ``<id>_<i>``. Raises RuntimeError if squeue
    fails."""
    cmd = ["squeue", "-h", "-r", "-o", "%i"]
    rc, out, err = _run(cmd)
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {rc}): {err.strip()}")
    return {line.strip() for line in out.splitlines() if line.strip()}
