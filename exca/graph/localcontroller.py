"""A local job's controller: the process submitit's LocalExecutor starts for each job
(``python -m submitit.local._local FOLDER``, run as ``python -S -P <this file> FOLDER``
instead, see executors._recording_controller). It starts the job's tasks and follows them
as submitit's own controller (1.5) does, reading the same environment variables
(SUBMITIT_LOCAL_*, set by submitit's start_controller) and giving each task the ones
submitit's worker reads, writing the same log files; with exca's additions: the job's
folder made first, the files an older job of its id (a pid, reused) left there set aside
(OLDER_JOB_PREFIX), a task killed by a signal noted at the end of its log
(KILLED_BY_SIGNAL), and a multi-task job's ranks ended once one of them ends badly
(RANK_ENDED).

Standard modules only, and the fewest: submitit's controller imported all of submitit
(asyncio, concurrent.futures...), ~0.25 CPU-s per local job before its task even started.
"""

import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:  # (signal without its enums, which cost as much again as this whole process)
    import _signal as signal

# the line that ends the log of a task killed by a signal, followed by the signal's name
KILLED_BY_SIGNAL = "exca: the job's process was killed by "
# the line that ends the log of a rank stopped because another one ended badly first,
# followed by "<rank> ended first (<how>)"
RANK_ENDED = "exca: this rank was stopped: rank "
# seconds the other ranks get to end on their own once one ended badly (rank 0 exits
# non-zero once done with a failure: the others end right after), then after SIGTERM
LOCAL_RANK_GRACE_S = 2.0

# a local job's id is a pid, which is reused: a new job then gets the log folder of an
# older one (<logs>/<user>/%j). The older one's logs and results go aside when the new one
# starts, into <folder>/<this><boot time>-<start ticks of the new job's process>, where
# the older job's record finds them (registry.JobRecord.own_logs_folder)
OLDER_JOB_PREFIX = "older-job-before-"

# submitit's protocol (submitit/local/local.py, 1.5)
REQUEUE_EXIT_CODE = 144  # (LOCAL_REQUEUE_RETURN_CODE: a task asks to be started again)
MAX_RUNS = 6  # (Controller.run's max_retry)
POLL_S = 1 / 24  # (Controller.wait's freq)
KILL_DELAY_S = 1.0  # between SIGINT and SIGKILL when the tasks are stopped


def job_path(template: str, job_id: str, task: int) -> str:
    """A path of submitit's job paths (JobPaths._format_id) for one task."""
    path = template.replace("%j", job_id).replace("%t", str(task))
    if "%a" in path:  # (a local job is no array's)
        raise ValueError(f"%a is in the folder path but this is not a job array: {template}")
    return path.replace("%A", job_id)


def split_command(command: str) -> list[str]:
    """shlex.split of submitit's task command, without importing shlex (and re) when
    nothing in it is quoted: then it splits on spaces alone."""
    if command.isprintable() and not any(char in command for char in "'\"\\"):
        return [part for part in command.split(" ") if part]
    import shlex

    return shlex.split(command)


def ended_how(code: int) -> str:
    """How a task ended, from its exit code (negative: the signal that killed it)."""
    if code >= 0:
        return f"exit code {code}"
    names: dict[int, str] = {}
    for name in sorted(vars(signal)):  # (the first name of a number: signal.Signals's)
        number = getattr(signal, name)
        if name.startswith("SIG") and not name.startswith("SIG_") and isinstance(number, int):
            names.setdefault(number, name)
    return names.get(-code, f"signal {-code}")


def start_ticks(pid: int) -> int | None:
    """When a process started, in clock ticks since boot (None: gone, or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
        # (the command name, field 2, may hold spaces and parentheses)
        return int(stat[stat.rfind(b")") + 2 :].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def boot_time() -> int | None:
    try:
        with open("/proc/stat", "rb") as handle:
            for line in handle:
                if line.startswith(b"btime "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


# the files of a job in its folder that an older job's could be mistaken for
JOB_FILES = ("_log.out", "_log.err", "_result.pkl")


def set_aside(
    folder: str, job_id: str, before: float | None = None, kinds: tuple[str, ...] = JOB_FILES
) -> None:
    """Move the files of an older job of this id (of ``kinds``: their name's ends) out of
    a new one's folder (all of them, or those last written before the epoch ``before``)
    into the sub-folder named after the new job's start: the new job appended to the older
    one's logs, and the older one's record then read the new one's logs and result."""
    ticks, booted = start_ticks(int(job_id)), boot_time()
    if ticks is None or booted is None:  # (not Linux, or the job ended: left as they are)
        return
    try:
        names = os.listdir(folder)
    except OSError:
        return
    aside = os.path.join(folder, f"{OLDER_JOB_PREFIX}{booted}-{ticks}")
    for name in names:
        if not name.startswith(job_id + "_") or not name.endswith(kinds):
            continue
        path = os.path.join(folder, name)
        try:
            if before is not None and os.stat(path).st_mtime >= before:
                continue
            os.makedirs(aside, exist_ok=True)
            os.rename(path, os.path.join(aside, name))
        except OSError:  # (moved meanwhile by the other of submitter and controller)
            pass


class Task:
    """One task process (a rank): started, polled and signalled until reaped."""

    def __init__(self, pid: int, log: int) -> None:
        self.pid = pid
        self.log = log  # (its stderr file descriptor: where notes go)
        self.code: int | None = None

    def poll(self) -> int | None:
        if self.code is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # (reaped by another: as subprocess.Popen says it)
                self.code = 0
            else:
                if pid:
                    self.code = os.waitstatus_to_exitcode(status)
        return self.code

    def send(self, signum: int) -> None:
        # (never to a reaped task: its pid may be another process's by now)
        if self.poll() is None:
            try:
                os.kill(self.pid, signum)
            except OSError:
                pass

    def note(self, line: str) -> None:
        os.write(self.log, f"\n{line}\n".encode())


class Controller:
    def __init__(self, folder: str) -> None:
        environ = os.environ
        self.ntasks = int(environ["SUBMITIT_LOCAL_NTASKS"])
        if self.ntasks < 1:
            raise ValueError(f"SUBMITIT_LOCAL_NTASKS={self.ntasks}: nothing to do")
        self.command = split_command(environ["SUBMITIT_LOCAL_COMMAND"])
        self.timeout_s = int(environ["SUBMITIT_LOCAL_TIMEOUT_S"])
        self.signal_delay_s = int(environ["SUBMITIT_LOCAL_SIGNAL_DELAY_S"])
        self.stderr_to_stdout = bool(environ["SUBMITIT_STDERR_TO_STDOUT"])
        # (the job's id: this process's pid, or its shell's when setup lines ran first)
        with_shell = bool(environ["SUBMITIT_LOCAL_WITH_SHELL"])
        self.job_id = str(os.getppid() if with_shell else os.getpid())
        # (submitit's JobPaths: the folder made absolute, not resolved)
        self.folder = os.path.join(os.getcwd(), os.path.expanduser(folder))
        name = "SIG" + environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
        self.warning_signal: int | None = getattr(signal, name, None)
        self.tasks: list[Task] = []
        self.files: list[int] = []
        # (the folders whose older files went aside: after that, and in a requeue, the
        # files there are this job's own, appended to)
        self.cleared: set[str] = set()
        signal.signal(signal.SIGTERM, self._forward)

    def _forward(self, signum: int, frame: object = None) -> None:
        for task in self.tasks:
            task.send(signum)

    def run(self) -> None:
        for _ in range(MAX_RUNS):
            try:
                self.start_tasks()
                codes = self.wait()
            finally:
                self.stop_tasks()
            if REQUEUE_EXIT_CODE not in codes:
                return

    def start_tasks(self) -> None:
        # (as subprocess.Popen's restore_signals: this python ignores them, not its tasks)
        restored = (signal.SIGPIPE, signal.SIGXFSZ)
        for rank in range(self.ntasks):
            # the job's folder first: the submitter makes it only once this process
            # started, which died on FileNotFoundError when it got there first
            folder = job_path(self.folder, self.job_id, rank)
            os.makedirs(folder, exist_ok=True)
            if folder not in self.cleared:
                set_aside(folder, self.job_id)
                self.cleared.add(folder)
            stdout = self._open(os.path.join(folder, f"{self.job_id}_{rank}_log.out"))
            stderr = stdout
            if not self.stderr_to_stdout:
                stderr = self._open(os.path.join(folder, f"{self.job_id}_{rank}_log.err"))
            env = dict(os.environ)
            env.update(
                SUBMITIT_LOCAL_LOCALID=str(rank),
                SUBMITIT_LOCAL_GLOBALID=str(rank),
                SUBMITIT_LOCAL_JOB_ID=self.job_id,
            )
            files = [(os.POSIX_SPAWN_DUP2, stdout, 1), (os.POSIX_SPAWN_DUP2, stderr, 2)]
            # (no KeyboardInterrupt between the task's start and its record: else nothing
            # would stop it; it comes right after, and stop_tasks stops it)
            mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
            try:
                pid = os.posix_spawnp(
                    self.command[0],
                    self.command,
                    env,
                    file_actions=files,
                    setsigdef=restored,
                    setsigmask=mask,
                )
                self.tasks.append(Task(pid, stderr))
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _open(self, path: str) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        self.files.append(os.open(path, flags, 0o666))
        return self.files[-1]

    def wait(self) -> list[int | None]:
        """The tasks' exit codes once all ended, or at the time limit (None: still
        running). The warning signal goes to them signal_delay_s before that limit."""
        start = time.monotonic()
        end = start + self.timeout_s
        warn_at = None
        if 0 < self.signal_delay_s <= self.timeout_s:
            warn_at = start + self.timeout_s - self.signal_delay_s
        ranks = RankEnder(self.tasks)
        while True:
            codes = [task.poll() for task in self.tasks]
            if all(code is not None for code in codes):
                break
            now = time.monotonic()
            if warn_at is not None and now >= warn_at:
                if self.warning_signal is None:  # (as submitit: the job fails here)
                    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL")
                    raise RuntimeError(
                        f"Unknown signal SIG{name}: unset or update env var "
                        "SUBMITIT_PREEMPT_SIGNAL (e.g. USR2)"
                    )
                self._forward(self.warning_signal)
                warn_at = None
            if now >= end:
                break
            if len(self.tasks) > 1:
                ranks.follow(codes, now)
            time.sleep(POLL_S)
        try:  # (notes only: never what makes a job fail)
            for rank, (task, code) in enumerate(zip(self.tasks, codes)):
                if rank in ranks.stopped:
                    task.note(RANK_ENDED + ranks.stopped[rank])
                # (SIGINT: a job cancelled, or a Ctrl-C, which its log's KeyboardInterrupt says)
                elif code is not None and code < 0 and -code != signal.SIGINT:
                    task.note(f"{KILLED_BY_SIGNAL}{ended_how(code)} (signal {-code})")
        except Exception:
            pass
        return codes

    def stop_tasks(self) -> None:
        """SIGINT to the tasks still running, SIGKILL a second later to those still
        running then (submitit's kill_tasks); their logs closed."""
        # (a Ctrl-C meanwhile, held until they are stopped: it left them running; not
        # ignored: exca's cancel kills at once a job that ignores SIGINT)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
        try:
            self._forward(signal.SIGINT)
            if any(task.poll() is None for task in self.tasks):
                time.sleep(0.001)
                if any(task.poll() is None for task in self.tasks):
                    time.sleep(KILL_DELAY_S)
            self._forward(signal.SIGKILL)
            self.tasks = []
            for descriptor in self.files:
                os.close(descriptor)
            self.files = []
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


class RankEnder:
    """A multi-task job's ranks, ended as srun's --kill-on-bad-exit does once one of them
    ended badly (killed, or a non-zero exit): they ran on, waiting for it in their
    collectives until the job's time limit, or ran their method to its end for nothing.
    They get LOCAL_RANK_GRACE_S to end on their own, then SIGTERM, then SIGKILL."""

    def __init__(self, tasks: list[Task]) -> None:
        self.tasks = tasks
        self.stopped: dict[int, str] = {}  # rank -> "<rank> ended first (<how>)"
        self.first_bad: str | None = None
        self.live: list[Task] = []
        self.next_step_at = 0.0
        self.steps = [signal.SIGTERM, signal.SIGKILL]

    def follow(self, codes: list[int | None], now: float) -> None:
        if self.first_bad is None:
            bad = next((k for k, code in enumerate(codes) if code not in (None, 0)), None)
            code = None if bad is None else codes[bad]
            if bad is not None and code is not None:
                self.first_bad = f"{bad} ended first ({ended_how(code)})"
                self.next_step_at = now + LOCAL_RANK_GRACE_S
            return
        if not self.steps or now < self.next_step_at:
            return
        signum = self.steps.pop(0)
        if signum == signal.SIGTERM:  # (the grace is over: those still running are stopped)
            self.live = [task for task in self.tasks if task.poll() is None]
            for task in self.live:
                self.stopped[self.tasks.index(task)] = self.first_bad
        for task in self.live:
            task.send(signum)
        self.next_step_at = now + LOCAL_RANK_GRACE_S


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(f"usage: {argv[0]} <submitit log folder>")
    try:
        # (exca starts this process with SIGINT blocked, see executors._sigint_held_by: a
        # cancellation while python started printed its KeyboardInterrupt traceback in the
        # submitter's terminal; held until here, it is raised now, within this try)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
        Controller(argv[1]).run()
    except KeyboardInterrupt:  # (cancelled before its tasks started, or a Ctrl-C)
        # ended by SIGINT as python does, without a traceback in the submitter's terminal
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)


if __name__ == "__main__":
    main(sys.argv)
