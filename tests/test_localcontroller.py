"""A local job's controller (exca/graph/localcontroller.py), run as exca runs it in place
of submitit's: the protocol submitit's local executor and worker expect (environment
variables, log files, time limit, requeue, exit status) and exca's additions (notes at
the end of a task's log). Tasks here are small python scripts, not exca jobs: the jobs
themselves are in test_execution, test_job_array, test_map_execution."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from filelog import wait_until

from exca.graph import executors, localcontroller


def start(
    folder: Path,
    code: str,
    *args: str,
    ntasks: int = 1,
    timeout_s: int = 60,
    signal_delay_s: int = 30,
    own: bool = True,
) -> subprocess.Popen[str]:
    """A job controller started as exca starts it (submitit's variables, as its
    start_controller sets them), for tasks running ``python -c code *args``."""
    env = dict(
        os.environ,
        SUBMITIT_LOCAL_NTASKS=str(ntasks),
        SUBMITIT_LOCAL_COMMAND=shlex.join([sys.executable, "-c", code, *args]),
        SUBMITIT_LOCAL_TIMEOUT_S=str(timeout_s),
        SUBMITIT_LOCAL_SIGNAL_DELAY_S=str(signal_delay_s),
        SUBMITIT_LOCAL_NODEID="0",
        SUBMITIT_LOCAL_JOB_NUM_NODES="1",
        SUBMITIT_STDERR_TO_STDOUT="",
        SUBMITIT_EXECUTOR="local",
        SUBMITIT_LOCAL_WITH_SHELL="",
    )
    submitits = [sys.executable, "-m", "submitit.local._local", str(folder / "%j")]
    if own:
        command = executors._recording_controller(submitits)
        assert command[1:4] == ["-S", "-P", str(Path(localcontroller.__file__))]
    else:  # (exca's subclass of submitit's controller, for a submitit of another version)
        command = [sys.executable, "-c", executors._RECORDING_CONTROLLER, *submitits[3:]]
    return subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def log(folder: Path, controller: subprocess.Popen[str], rank: int = 0, kind: str = "err") -> str:
    job = controller.pid
    path = folder / str(job) / f"{job}_{rank}_log.{kind}"
    return path.read_text() if path.exists() else ""


def ended(pid: int) -> bool:
    """Whether a process ended (a zombie no one reaped yet counts)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


@pytest.mark.timeout(60)
def test_tasks_get_submitits_variables_and_log_files(tmp_path: Path) -> None:
    """Through submitit's own start_controller: each rank's task reads its job id, rank
    and task count with submitit's JobEnvironment, and writes its stdout and stderr to
    submitit's log files of the job's folder (made by the controller; no literal %j
    folder beside it: submitit's controller made one, which exca then removed)."""
    from submitit.local import local

    executors._local_jobs_in_own_session()  # (what exca does before its local jobs)
    code = (
        "import sys, submitit; env = submitit.JobEnvironment(); "
        "print(env.job_id, env.global_rank, env.local_rank, env.num_tasks, env.node, "
        "env.num_nodes); print('to stderr', file=sys.stderr)"
    )
    process = local.start_controller(
        folder=tmp_path / "%j",
        command=shlex.join([sys.executable, "-c", code]),
        tasks_per_node=2,
        timeout_min=1,
    )
    assert process.args[1:3] == ["-S", "-P"]  # (exca's controller, not submitit's)
    assert process.wait(timeout=50) == 0
    job = str(process.pid)
    for rank in range(2):
        out = (tmp_path / job / f"{job}_{rank}_log.out").read_text()
        assert out.split() == [job, str(rank), str(rank), "2", "0", "1"]
        assert (tmp_path / job / f"{job}_{rank}_log.err").read_text() == "to stderr\n"
    assert os.listdir(tmp_path) == [job]


@pytest.mark.timeout(60)
def test_stderr_to_stdout_writes_one_log(tmp_path: Path) -> None:
    from submitit.local import local

    executors._local_jobs_in_own_session()
    code = "import sys; print('out', flush=True); print('err', file=sys.stderr)"
    process = local.start_controller(
        folder=tmp_path / "%j",
        command=shlex.join([sys.executable, "-c", code]),
        stderr_to_stdout=True,
    )
    assert process.wait(timeout=50) == 0
    job = str(process.pid)
    assert os.listdir(tmp_path / job) == [f"{job}_0_log.out"]
    assert (tmp_path / job / f"{job}_0_log.out").read_text() == "out\nerr\n"


_WARNED_THEN_STUBBORN = """
import os, signal, time
def noted(name):
    return lambda *_: print(name, flush=True)
signal.signal(signal.SIGUSR2, noted("warned"))
signal.signal(signal.SIGINT, noted("interrupted"))
print(os.getpid(), flush=True)
end = time.monotonic() + 50
while time.monotonic() < end:
    time.sleep(0.05)
"""


@pytest.mark.timeout(60)
def test_a_task_at_its_time_limit_is_warned_then_interrupted_then_killed(
    tmp_path: Path,
) -> None:
    """As submitit's controller: the warning signal (USR2) signal_delay_s before the time
    limit, SIGINT at the limit, SIGKILL a second later to a task still running."""
    controller = start(tmp_path, _WARNED_THEN_STUBBORN, timeout_s=2, signal_delay_s=1)
    assert controller.wait(timeout=30) == 0
    pid, *said = log(tmp_path, controller, kind="out").split()
    assert said == ["warned", "interrupted"]
    wait_until(lambda: ended(int(pid)), timeout=10)


@pytest.mark.timeout(60)
def test_a_ctrl_c_while_the_tasks_are_stopped_still_kills_them(tmp_path: Path) -> None:
    """A task still running a second after the SIGINT of its time limit is killed, even
    when the controller is interrupted meanwhile (submitit's controller then left it
    running: its KeyboardInterrupt came before the SIGKILL; own=False fails here)."""
    controller = start(tmp_path, _WARNED_THEN_STUBBORN, timeout_s=1)
    wait_until(lambda: "interrupted" in log(tmp_path, controller, kind="out"), timeout=30)
    controller.send_signal(signal.SIGINT)
    assert controller.wait(timeout=30) == -signal.SIGINT
    pid = int(log(tmp_path, controller, kind="out").split()[0])
    try:
        wait_until(lambda: ended(pid), timeout=10)
    finally:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


_INTERRUPTIBLE = "import time; print('started', flush=True); time.sleep(50)"


@pytest.mark.timeout(60)
def test_an_interrupted_controller_interrupts_its_task_and_ends_by_sigint(
    tmp_path: Path,
) -> None:
    """SIGINT to the controller (submitit's LocalJob.cancel, or exca's cancel of a job
    whose task has not started yet): its task is interrupted, and the controller ends by
    SIGINT (a job submitit says INTERRUPTED), without printing its own KeyboardInterrupt
    traceback in the terminal of the script that started it (submitit's did)."""
    controller = start(tmp_path, _INTERRUPTIBLE)
    wait_until(lambda: "started" in log(tmp_path, controller, kind="out"), timeout=30)
    controller.send_signal(signal.SIGINT)
    assert controller.wait(timeout=30) == -signal.SIGINT
    assert controller.stderr is not None and controller.stderr.read() == ""
    assert log(tmp_path, controller).rstrip().endswith("KeyboardInterrupt")


@pytest.mark.timeout(60)
def test_a_task_asking_to_be_requeued_is_started_again_up_to_six_times(
    tmp_path: Path,
) -> None:
    """Exit code 144 (submitit's local requeue, after a checkpoint): the tasks are
    started again, in the same logs, up to six runs in all."""
    runs = tmp_path / "runs"
    code = "import sys; open(sys.argv[1], 'a').write('run\\n'); sys.exit(144)"
    controller = start(tmp_path, code, str(runs))
    assert controller.wait(timeout=50) == 0
    assert runs.read_text().split() == ["run"] * localcontroller.MAX_RUNS
    once = tmp_path / "once"
    code = "import os, sys; done = os.path.exists(sys.argv[1]); open(sys.argv[1], 'a').write('run\\n'); sys.exit(0 if done else 144)"
    controller = start(tmp_path, code, str(once))
    assert controller.wait(timeout=50) == 0
    assert once.read_text().split() == ["run", "run"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("own", [True, False])
def test_a_task_killed_by_a_signal_has_it_noted_at_the_end_of_its_log(
    tmp_path: Path, own: bool
) -> None:
    """By exca's controller, and by its subclass of submitit's (another submitit)."""
    code = "import os, signal; print('dying', flush=True); os.kill(os.getpid(), signal.SIGABRT)"
    controller = start(tmp_path, code, own=own)
    assert controller.wait(timeout=50) == 0
    text = log(tmp_path, controller, kind="out") + log(tmp_path, controller)
    assert text.rstrip().endswith("exca: the job's process was killed by SIGABRT (signal 6)")
    assert executors.local_signal_in_log(text) == "SIGABRT"


_RANKS = """
import os, sys, time
if os.environ["SUBMITIT_LOCAL_GLOBALID"] == "1":
    sys.exit(3)
print("waiting", flush=True)
time.sleep(50)
"""


@pytest.mark.timeout(60)
def test_a_rank_ending_badly_ends_the_others_and_is_named_in_their_logs(
    tmp_path: Path,
) -> None:
    controller = start(tmp_path, _RANKS, ntasks=2)
    assert controller.wait(timeout=50) == 0
    note = localcontroller.RANK_ENDED + "1 ended first (exit code 3)"
    assert log(tmp_path, controller, rank=0).rstrip().endswith(note)
    assert log(tmp_path, controller, rank=1) == ""  # (it ended on its own)
    stderr = tmp_path / str(controller.pid) / f"{controller.pid}_0_log.err"
    said = executors._rank_ended_locally(stderr.read_text(), stderr, str(controller.pid))
    assert said is not None and said.startswith(
        "rank 1 ended first: its process exited with code 3"
    )


def test_another_submitit_gets_its_own_controller_subclassed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """localcontroller.py follows submitit 1.5's protocol: another version keeps
    exca's subclass of submitit's own controller."""
    import submitit

    assert executors._own_controller_fits.__wrapped__()
    monkeypatch.setattr(submitit, "__version__", "1.6.0")
    assert not executors._own_controller_fits.__wrapped__()
    monkeypatch.setattr(executors, "_own_controller_fits", lambda: False)
    command = executors._recording_controller(["py", "-m", "submitit.local._local", "f"])
    assert command == ["py", "-c", executors._RECORDING_CONTROLLER, "f"]


@pytest.mark.parametrize(
    "command",
    [
        "/usr/bin/python3 -u -m submitit.core._submit /tmp/logs/user/%j",
        "python  -u -m x '/tmp/with space/%j'",
        'python -c "print(1)" a\\ b',
        "python\t-m x",
    ],
)
def test_the_task_command_is_split_as_shlex_does(command: str) -> None:
    assert localcontroller.split_command(command) == shlex.split(command)


def test_the_controller_imports_nothing_python_does_not_start_with() -> None:
    """Standard modules only (os, time, _signal), not even signal's enums (submitit's controller
    imported all of submitit, ~0.25 CPU-s per local job)."""

    def imported(*args: str) -> set[str]:
        run = [sys.executable, "-S", "-P", "-X", "importtime", *args]
        stderr = subprocess.run(run, capture_output=True, text=True).stderr
        lines = [line for line in stderr.splitlines() if line.startswith("import time:")]
        return {line.rsplit("|", 1)[1].strip() for line in lines[1:]}  # (after the header)

    startup = imported("-c", "import os")  # (frozen in python: read from its binary)
    controller = imported(localcontroller.__file__)  # (no folder: a usage error, once imported)
    assert controller - startup == set()
