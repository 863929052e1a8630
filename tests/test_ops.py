"""Operating a cache (exca.ops and ``python -m exca``): inspect / list, explain, clean, logs
and check, on real cache folders built by running exca (no Slurm here, see
test_ops_slurm.py).

Classes are defined at module level: local jobs, helper processes and the command line
import them as ``test_ops`` (tests/ is on PYTHONPATH, see conftest); those most of them
compute (Train, Squares, Source...) as ``jobmodels_ops``. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib
import io
import json
import logging
import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import typing as tp
import warnings
from pathlib import Path
from unittest import mock

import pydantic
import pytest
import yaml
from controller_starts import hook_controller_starts
from fake_squeue import counting_squeue
from jobmodels_ops import Optim, Ranges, Slow, SlowMap, Source, Squares, Total, Train
from waiting import waiting_for_jobs

import exca
import exca.graph
import exca.ops
import exca.storage.process
from exca.graph import localcontroller, registry
from exca.graph.errors import JobFailedError, NodeFailures
from exca.ops import clean
from exca.ops.inspect import human_size, node_folders, step_selects
from exca.storage.cachedict import CacheDict
from exca.storage.claims import Claims

WAIT_S = 60.0  # bound on any wait (never reached when things work)
# the module of the configs most jobs and helper processes compute: a light one (see it)
MODELS = "jobmodels_ops"
INDEX_GLOB = "*-info.jsonl"


# --- configs ---------------------------------------------------------------------------------


class SlowWithInput(pydantic.BaseModel):
    """A method with an input (its node lives in an ``inputs-*`` sub-folder) that blocks
    while the file `flag` exists."""

    flag: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def wait_then(self, value: int) -> int:
        end = time.time() + WAIT_S
        while os.path.exists(self.flag) and time.time() < end:
            time.sleep(0.02)
        return value


class Chatty(pydantic.BaseModel):
    """A map printing one stdout and one stderr line per item it computes."""

    tag: str = "a"
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def shout(self, items: list[int]) -> tp.Iterator[int]:
        for x in items:
            print(f"item-{x}-out pid={os.getpid()}", flush=True)
            print(f"item-{x}-err", file=sys.stderr, flush=True)
            yield x + 1


# --- helpers -----------------------------------------------------------------------------------
def cli(
    *args: str | Path, cwd: Path | None = None, check: bool = False, fresh: bool = False
) -> subprocess.CompletedProcess[str]:
    """``python -m exca <args>``: in this process (``exca.ops.cli.main``, as a fresh process
    would see it: see _cli_here), or, ``fresh``, in a new process (the real entry point; for
    a TARGET module written by the test, which this process would import once, and keep)."""
    argv = [str(a) for a in args]
    if fresh:
        result = subprocess.run(
            [sys.executable, "-m", "exca", *argv],
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
        )
    else:
        result = _cli_here(argv, cwd)
    if check:
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


# where the modules a command may import live (those of a test's folder: fresh=True)
_KNOWN_MODULE_PLACES = tuple(
    str(Path(p).resolve()) + os.sep
    for p in {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        Path(exca.__file__).parent,
        Path(__file__).parent,
    }
)


# the warnings a fresh Python process does not show (its default filters)
_IGNORED_BY_DEFAULT = (
    DeprecationWarning,
    PendingDeprecationWarning,
    ImportWarning,
    ResourceWarning,
)


def _cli_here(argv: list[str], cwd: Path | None) -> subprocess.CompletedProcess[str]:
    """``exca.ops.cli.main(argv)`` with what a fresh ``python -m exca`` process has: its
    stdout and stderr captured (the "exca" logger's records and warnings written there
    too, not to pytest's capture), stdin empty (not a tty), ``cwd`` as the current folder;
    sys.path, the cwd and the logging and warnings settings put back after."""
    from exca.ops.cli import main

    out, err = io.StringIO(), io.StringIO()
    code: int | str | None
    modules, path, before = set(sys.modules), list(sys.path), os.getcwd()
    root, exca_logger = logging.getLogger(), logging.getLogger("exca")
    root_handlers, exca_level = list(root.handlers), exca_logger.level
    streams = [(h, h.stream) for h in exca_logger.handlers if isinstance(h, logging.StreamHandler)]
    try:
        # a fresh process: no handler on the root logger (pytest puts its own there, which
        # makes the "exca" handler quiet), exca's INFO level, Python's default warning filters
        root.handlers[:] = []
        exca_logger.setLevel(logging.INFO)
        for handler, _ in streams:
            handler.setStream(err)
        with warnings.catch_warnings():
            warnings.resetwarnings()
            for category in _IGNORED_BY_DEFAULT:
                warnings.simplefilter("ignore", category)
            warnings.showwarning = _warning_to_stderr  # (pytest's records them, else)
            if cwd is not None:
                os.chdir(cwd)
            with (
                contextlib.redirect_stdout(out),
                contextlib.redirect_stderr(err),
                mock.patch.object(sys, "stdin", io.StringIO()),
            ):
                try:
                    code = main(argv)
                except SystemExit as stop:  # (argparse: 2 for a usage error, 0 for --help)
                    code = stop.code
                except Exception:  # (as the interpreter: the traceback, exit status 1)
                    traceback.print_exc()
                    code = 1
    finally:
        os.chdir(before)
        sys.path[:] = path
        root.handlers[:] = root_handlers
        exca_logger.setLevel(exca_level)
        for handler, stream in streams:
            handler.setStream(stream)
    if isinstance(code, str):  # (sys.exit("message"): printed, exit status 1)
        err.write(code + "\n")
        code = 1
    _no_module_of_a_test_folder(set(sys.modules) - modules, argv)
    return subprocess.CompletedProcess(argv, code or 0, out.getvalue(), err.getvalue())


def _warning_to_stderr(
    message: tp.Any, category: tp.Any, filename: str, lineno: int, *_: tp.Any
) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno))


def _no_module_of_a_test_folder(imported: set[str], argv: list[str]) -> None:
    """A module imported from elsewhere (a test's folder) stays in this process: a later
    command would get it as it was, not as a fresh process reads it (fresh=True)."""
    for name in imported:
        file = getattr(sys.modules.get(name), "__file__", None)
        if file is not None and not str(Path(file).resolve()).startswith(_KNOWN_MODULE_PLACES):
            del sys.modules[name]
            raise AssertionError(
                f"exca {' '.join(argv)} imported {name} from {file}: give fresh=True"
            )


def warning_target() -> exca.graph.Node:
    """A CLI TARGET whose function warns (as a user's code may, e.g. a deprecation)."""
    warnings.warn("targets built from defaults", UserWarning, stacklevel=1)
    return Train(infra={"folder": Path.cwd() / "cache"}).fit.node()


def test_cli_here_shows_what_a_fresh_process_shows(tmp_path: Path) -> None:
    """cli() runs ``exca.ops.cli.main`` in this process (much cheaper than a process per
    command): each command gives what ``python -m exca`` (the real entry point, run here
    too) gives, exit status, stdout and stderr: relative paths from cwd, a usage error of
    argparse (exit 2), an error message, the "exca" logger's warnings (pytest's logging
    makes exca's handler quiet), a TARGET's Python warning, an uncaught error's traceback
    (exit 1); stdin is empty and not a tty in both; this process's cwd, sys.path and
    logging are put back."""
    root = tmp_path / "cache"
    Train(infra={"folder": root}).fit()
    step = folder_of(Train(infra={"folder": root})).parent
    (step / "x").symlink_to("y")  # (a loop: a warning of the "exca" logger, each command)
    (step / "y").symlink_to("x")
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", re.MULTILINE)
    commands: list[tuple[str | Path, ...]] = [
        ("list", "cache"),
        ("list", "cache", "--json"),
        ("clean", "cache", "versions"),
        ("list", "nope"),
        ("clean", "cache", "everything"),
        ("logs", step),
        ("plan", f"{__name__}:warning_target"),
        ("--help",),
    ]
    path, handlers, cwd = list(sys.path), list(logging.getLogger().handlers), os.getcwd()
    for argv in commands:
        here, fresh = (cli(*argv, cwd=tmp_path, fresh=f) for f in (False, True))
        assert here.returncode == fresh.returncode, (argv, here, fresh)
        assert here.stdout == fresh.stdout, argv
        assert stamp.sub("", here.stderr) == stamp.sub("", fresh.stderr), argv
    codes = {argv[:2]: cli(*argv, cwd=tmp_path).returncode for argv in commands}
    assert set(codes.values()) == {0, 2}  # (both kinds of exit met)
    here = cli("clean", "cache", "orphans", cwd=tmp_path)
    assert "WARNING - exca - Skipping" in here.stderr and "UserWarning: targets built" in (
        cli("plan", f"{__name__}:warning_target", cwd=tmp_path).stderr
    )
    here, fresh = (
        cli("explain", f"{__name__}:targets_raising_key_error", fresh=f) for f in (False, True)
    )
    assert here.returncode == fresh.returncode == 1
    assert here.stderr.splitlines()[-2:] == fresh.stderr.splitlines()[-2:]
    assert here.stderr.startswith("Traceback") and fresh.stderr.startswith("Traceback")
    assert (sys.path, logging.getLogger().handlers, os.getcwd()) == (path, handlers, cwd)


def test_cli_here_refuses_a_target_module_of_a_test_folder(tmp_path: Path) -> None:
    """A TARGET module written by a test, imported by a command run in this process, would
    stay imported (a later command, after the test edits it, would get the old one; a
    later test's module of the same name, this one): cli() refuses it, dropping it, and
    says to give fresh=True (a new process, as a user's shell runs)."""
    (tmp_path / "exca_cli_probe.py").write_text(
        textwrap.dedent(
            """
            import exca, pydantic

            class Probe(pydantic.BaseModel):
                infra: exca.TaskInfra = exca.TaskInfra(folder="cache", version="1")

                @infra.apply
                def run(self) -> int:
                    return 1
            """
        )
    )
    with pytest.raises(AssertionError, match=r"imported exca_cli_probe from .*: give fresh=True"):
        cli("plan", "exca_cli_probe:Probe.run", cwd=tmp_path)
    assert "exca_cli_probe" not in sys.modules
    planned = cli("plan", "exca_cli_probe:Probe.run", cwd=tmp_path, fresh=True, check=True)
    assert "exca_cli_probe.Probe.run,1" in planned.stdout, planned.stdout


def python(code: str, **popen: tp.Any) -> subprocess.Popen[str]:
    """Start ``python -c code`` (it can ``import test_ops``)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def run_python(code: str) -> str:
    proc = python(code)
    out, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, f"helper process failed:\n{out}\n{err}"
    return out


def wait_until(predicate: tp.Callable[[], tp.Any], what: str, timeout: float = WAIT_S) -> tp.Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached within {timeout:.0f}s: {what}")
        time.sleep(0.05)


def tree_hash(root: Path) -> str:
    """Digest of every path, file content and symlink target under root."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            digest.update(str(path.relative_to(root)).encode() + b"\0")
            if path.is_symlink():
                digest.update(b"L" + os.readlink(path).encode())
            elif path.is_file():
                digest.update(b"F" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def disk_bytes(folder: Path, skip_inputs: bool = False) -> int:
    """Bytes on disk (allocated blocks) of the files under a folder (symlinks not followed);
    ``skip_inputs``: without the inputs-* sub-folders of the folder itself."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(folder):
        if skip_inputs and Path(dirpath) == folder:
            dirnames[:] = [d for d in dirnames if not d.startswith("inputs-")]
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                total += path.stat().st_blocks * 512
    return total


def index_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(INDEX_GLOB))


def age_index_files(folder: Path, seconds: float = 300.0) -> None:
    """Make the index files of a folder look idle for that long (compaction merges only
    files idle for 2 minutes)."""
    then = time.time() - seconds
    for path in index_files(folder):
        os.utime(path, (then, then))


def unrelated(root: Path) -> list[exca.graph.Node]:
    """A target computed in ``root`` that reaches none of its other folders: garbage
    collection against it keeps nothing else there."""
    node = Pair(a=-1, b=-1, infra={"folder": root}).make.node()
    assert node.result() == [-1, -1]
    return [node]


def folder_of(obj: tp.Any) -> Path:
    folder = obj.infra.uid_folder()
    assert folder is not None
    return Path(folder)


def by_uid(infos: list[exca.ops.NodeInfo]) -> dict[str, exca.ops.NodeInfo]:
    return {i.uid: i for i in infos}


def grouped_lines(text: str) -> dict[str, list[str]]:
    """The table of ``exca list``: {step header: its config lines}."""
    groups: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            current = line.split()[0]
            groups[current] = []
        else:
            assert current is not None, text
            groups[current].append(line.strip())
    return groups


TRAIN_STEP = f"{MODELS}.Train.fit,1"


# --- a cache with some of everything ----------------------------------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tp.Any]:
    """Tasks (success, error, nested config values, a local job), maps (all good, with an
    item error) and a pipeline whose downstream task has inputs."""
    root = tmp_path_factory.mktemp("inspect") / "cache"
    infra = {"folder": root}
    out: dict[str, tp.Any] = {"root": root}
    out["default"] = Train(infra=infra)
    out["lr"] = Train(optim={"lr": 0.02}, infra=infra)
    out["seed"] = Train(seed=3, infra=infra)
    out["fail"] = Train(fail=True, infra=infra)
    out["job"] = Train(seed=4, infra={**infra, "cluster": "local"})
    for name in ("default", "lr", "seed", "job"):
        out[name].fit()
    with pytest.raises(ValueError, match="cannot fit"):
        out["fail"].fit()
    out["squares"] = Squares(infra=infra)
    assert list(out["squares"].square([1, 2, 3, 4])) == [1, 4, 9, 16]
    out["partial"] = Squares(offset=1, infra=infra)
    with pytest.raises(ValueError, match="negative item -2"):
        list(out["partial"].square([1, -2, 3]))
    source = Source(n=4, infra=infra)
    out["pipeline"] = Total(infra=infra).total.node(source.make.node())
    assert out["pipeline"].result() == 12
    out["source"] = source
    return out


def test_inspect_python_api(cache: dict[str, tp.Any]) -> None:
    root = cache["root"]
    infos = exca.ops.inspect(root)
    train = by_uid([i for i in infos if i.step == TRAIN_STEP])
    default, lr, seed, fail, job = (
        folder_of(cache[k]) for k in ("default", "lr", "seed", "fail", "job")
    )
    assert set(train) == {p.name for p in (default, lr, seed, fail, job)}
    assert train[default.name].status == "success"
    assert train[default.name].kind == "task"
    assert train[default.name].entries == 1
    assert train[default.name].config == {}  # only non-default values identify a config
    assert train[lr.name].config == {"optim.lr": 0.02}
    assert train[fail.name].status == "error"
    assert (train[fail.name].entries, train[fail.name].errors) == (1, 1)
    assert train[fail.name].error == "ValueError: cannot fit seed=0"
    assert train[default.name].error is None
    # size on disk and last write time, as the files say
    for name, info in train.items():
        folder = root / TRAIN_STEP / name
        assert info.folder == folder
        assert info.size == disk_bytes(folder) > 0
        assert info.modified == max(p.stat().st_mtime for p in index_files(folder))
    # the job that produced a result, and its logs
    assert train[job.name].job_id is not None and train[job.name].job_state == "ended"
    assert train[default.name].job_id is None
    stdout = Path(train[job.name].stdout or "")
    assert "fitting seed=4" in stdout.read_text()
    assert "warning from seed=4" in Path(train[job.name].stderr or "").read_text()
    # maps: entry counts, errors included
    maps = by_uid(exca.ops.inspect(root, step=f"{MODELS}.Squares.square,1"))
    good, partial = maps[folder_of(cache["squares"]).name], maps[folder_of(cache["partial"]).name]
    assert (good.kind, good.status, good.entries, good.errors) == ("map", "success", 4, 0)
    assert (partial.kind, partial.status, partial.entries, partial.errors) == (
        "map",
        "partial",
        3,
        1,
    )


def test_inspect_lists_inputs_node_on_its_own(cache: dict[str, tp.Any]) -> None:
    node = cache["pipeline"]
    infos = exca.ops.inspect(cache["root"], step="Total")
    (info,) = [i for i in infos if i.folder == node.folder]
    assert info.uid == f"{node.config_uid}/{node.inputs_uid}"
    assert info.uid.split("/")[-1].startswith("inputs-")
    assert (info.kind, info.status, info.entries) == ("task", "success", 1)
    assert info.size == disk_bytes(node.folder)
    # the config folder that only holds tasks with inputs is not listed as an empty node
    assert not [i for i in infos if i.folder == node.folder.parent]


class LostJob(pydantic.BaseModel):
    """Raises what the call of a task whose job ended without its result caches."""

    log: str = "/cache/of/a/project/" + "x" * 150 + "/logs/7666_0_log.err"
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        uid = f"{type(self).__module__}.LostJob.run,1/{self.infra.uid().rsplit('/', 1)[-1]}"
        raise exca.graph.errors.JobFailedError(
            f"{uid} not computed: job 7666 was cancelled (state CANCELLED by 0); its log: "
            f"{self.log} (use mode='retry' to recompute)"
        )


def test_list_shows_the_advice_of_a_long_error_without_its_uid_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`exca list` cut errors at 200 characters: a lost job's error repeated the uid of
    the line and lost its advice ("(use mode='retry' ...)"). The uid is dropped, the
    advice kept (the cut in the middle), in the table and in --json."""
    from exca.ops.cli import main

    task = LostJob(infra={"folder": tmp_path})
    with pytest.raises(exca.graph.errors.JobFailedError):
        task.run()
    capsys.readouterr()
    assert main(["list", str(tmp_path), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    error = row["error"]
    assert error.startswith("JobFailedError: job 7666 was cancelled (state CANCELLED by 0); its")
    assert error.endswith(" ... (use mode='retry' to recompute)"), error
    assert len(error) <= 200 and "LostJob" not in error
    assert main(["list", str(tmp_path)]) == 0
    assert error in capsys.readouterr().out
    short = LostJob(log="/short.err", infra={"folder": tmp_path})
    with pytest.raises(exca.graph.errors.JobFailedError):
        short.run()
    infos = exca.ops.inspect(tmp_path)
    (said,) = [i.error for i in infos if i.uid != row["uid"]]
    assert said == (
        "JobFailedError: job 7666 was cancelled (state CANCELLED by 0); its log: /short.err "
        "(use mode='retry' to recompute)"
    )


def test_list_cli_table_grouped_by_step(cache: dict[str, tp.Any]) -> None:
    root = cache["root"]
    result = cli("list", root, check=True)
    groups = grouped_lines(result.stdout)
    steps = {
        TRAIN_STEP,
        f"{MODELS}.Squares.square,1",
        f"{MODELS}.Source.make,1",
        f"{MODELS}.Total.total,1",
    }
    assert set(groups) == steps, result.stdout
    for key, status in (
        ("default", "success"),
        ("lr", "success"),
        ("fail", "error"),
        ("job", "success"),
    ):
        name = folder_of(cache[key]).name
        (line,) = [row for row in groups[TRAIN_STEP] if f"  {name}" in row]
        assert line.split()[0] == status, line
    # a failed task says which error (a sweep's failures told apart without opening logs)
    fail_line = next(r for r in groups[TRAIN_STEP] if folder_of(cache["fail"]).name in r)
    assert fail_line.endswith("ValueError: cannot fit seed=0"), fail_line
    job_line = next(r for r in groups[TRAIN_STEP] if folder_of(cache["job"]).name in r)
    job_id = exca.ops.inspect(root, where=["seed=4"])[0].job_id
    assert f"job {job_id}" in job_line
    squares = groups[f"{MODELS}.Squares.square,1"]
    (partial,) = [r for r in squares if r.startswith("partial")]
    assert "3 item(s), 1 error(s)" in partial
    (good,) = [r for r in squares if r.startswith("success")]
    assert "4 item(s)" in good


def test_list_a_step_or_config_folder(cache: dict[str, tp.Any]) -> None:
    """Given a step folder (or one config's folder) instead of the cache root, `list`
    shows that step (that config), not "No cached node found"."""
    root = cache["root"]
    everything = {i.uid for i in exca.ops.inspect(root) if i.step == TRAIN_STEP}
    step = {(i.step, i.uid) for i in exca.ops.inspect(root / TRAIN_STEP)}
    assert step == {(TRAIN_STEP, uid) for uid in everything} and len(step) == 5
    (one,) = exca.ops.inspect(folder_of(cache["lr"]))
    assert (one.step, one.uid, one.status) == (TRAIN_STEP, folder_of(cache["lr"]).name, "success")
    groups = grouped_lines(cli("list", root / TRAIN_STEP, check=True).stdout)
    assert list(groups) == [TRAIN_STEP] and len(groups[TRAIN_STEP]) == 5
    inputs = cache["pipeline"].folder  # a task with inputs: <config>/inputs-<digest>
    (node,) = exca.ops.inspect(inputs)
    assert node.folder == inputs and node.uid == f"{inputs.parent.name}/{inputs.name}"
    cwd = os.getcwd()
    os.chdir(inputs)
    try:  # `exca list .` from inside it
        assert [i.uid for i in exca.ops.inspect(".")] == [node.uid]
    finally:
        os.chdir(cwd)


def test_list_a_config_folder_given_relative_to_its_step_folder(
    cache: dict[str, tp.Any],
) -> None:
    """`exca list seed=3-...` from its step folder (or `inputs-...` from its config
    folder) said "No cached node found in seed=3-...": its parents were read from the
    relative path, which has none (a probe)."""
    folder = folder_of(cache["seed"])
    out = cli("list", folder.name, cwd=folder.parent, check=True).stdout
    assert list(grouped_lines(out)) == [TRAIN_STEP] and folder.name in out
    inputs = cache["pipeline"].folder
    out = cli("list", inputs.name, cwd=inputs.parent, check=True).stdout
    assert f"{inputs.parent.name}/{inputs.name}" in out
    out = cli("list", f"{inputs.parent.name}/{inputs.name}", cwd=inputs.parent.parent).stdout
    assert f"{inputs.parent.name}/{inputs.name}" in out


class WithSub(pydantic.BaseModel):
    optim: Optim = Optim(lr=0.5)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> float:
        return self.optim.lr


def test_list_a_uid_with_an_empty_sub_config(tmp_path: Path) -> None:
    """A sub-config at its class default (not its field default) is `optim={}` in the
    uid: listing it (table and json) works."""
    task = WithSub(optim=Optim(), infra={"folder": tmp_path})
    assert task.fit() == Optim().lr and "optim={}" in task.infra.uid()
    (info,) = exca.ops.inspect(tmp_path)
    assert info.to_dict()["config"] == {"optim": {}}
    assert info.uid in cli("list", tmp_path, check=True).stdout


def test_list_cli_filters_and_json(cache: dict[str, tp.Any]) -> None:
    root = cache["root"]

    def listed(*args: str) -> list[dict[str, tp.Any]]:
        result = cli("list", root, "--json", *args, check=True)
        return json.loads(result.stdout)

    everything = listed()
    fields = {"step", "uid", "folder", "kind", "status", "config", "entries", "errors", "size",
              "modified", "job_id", "job_state", "job_reason", "stdout", "stderr", "error",
              "note", "inputs"}  # fmt: skip
    assert everything and all(set(row) == fields for row in everything)
    python_side = exca.ops.inspect(root)
    assert [r["folder"] for r in everything] == [str(i.folder) for i in python_side]
    for row, info in zip(everything, python_side):
        assert row["size"] == info.size and row["entries"] == info.entries
        if info.modified:  # an empty config folder (parent of inputs-*) has no index yet
            written = datetime.datetime.fromtimestamp(info.modified).replace(microsecond=0)
            assert datetime.datetime.fromisoformat(row["modified"]) == written
        else:
            assert row["modified"] is None
    # --step
    steps = {r["step"] for r in listed("--step", f"{MODELS}.Squares.*")}
    assert steps == {f"{MODELS}.Squares.square,1"}
    assert {r["step"] for r in listed("--step", "Train")} == {TRAIN_STEP}
    # a --step selecting no step is an error naming those there (as clean's --step is)
    typo = cli("list", root, "--step", "Trian")
    assert typo.returncode == 2 and typo.stdout == "", typo
    assert f"--step 'Trian' matches no step of {root}: " in typo.stderr
    assert TRAIN_STEP in typo.stderr
    # --where, nested dotted keys
    (row,) = listed("--where", "optim.lr=0.02")
    assert row["folder"] == str(folder_of(cache["lr"]))
    (row,) = listed("--where", "seed=3")
    assert row["folder"] == str(folder_of(cache["seed"]))
    assert listed("--where", "seed=3", "--where", "optim.lr=0.02") == []
    assert listed("--where", "optim.lr=0.5") == []
    # --status
    (row,) = listed("--status", "error")
    assert row["folder"] == str(folder_of(cache["fail"]))
    (row,) = listed("--status", "partial")
    assert row["folder"] == str(folder_of(cache["partial"]))
    assert {r["status"] for r in listed("--status", "success")} == {"success"}
    # the same filters from Python
    (info,) = exca.ops.inspect(root, step="Train", where=["optim.lr=0.02"], status="success")
    assert info.folder == folder_of(cache["lr"])
    # a bad condition is an error message, not a traceback
    bad = cli("list", root, "--where", "seed")
    assert bad.returncode != 0 and "key=value" in bad.stderr and "Traceback" not in bad.stderr


def test_list_where_matches_default_values(cache: dict[str, tp.Any]) -> None:
    infos = exca.ops.inspect(cache["root"], step="Train", where=["optim.lr=0.01", "seed=0"])
    assert folder_of(cache["default"]) in {i.folder for i in infos}


@pytest.fixture
def busy_task(tmp_path: Path) -> tp.Iterator[tuple[Path, Path, subprocess.Popen[str]]]:
    """A slow task computed (with its claim) by another process until the fixture ends;
    yields (root, node folder, process)."""
    root = tmp_path / "cache"
    flag = tmp_path / "hold"
    flag.touch()
    Train(infra={"folder": root}).fit()  # something else in the cache
    proc = python(
        f"""
        import jobmodels_ops
        print(jobmodels_ops.Slow(flag={str(flag)!r}, infra={{"folder": {str(root)!r}}}).wait_for_flag())
        """
    )
    folder = folder_of(Slow(flag=str(flag), infra={"folder": root}))
    try:
        wait_until(
            lambda: exca.ops.inspect(root, step="Slow", status="computing"),
            "the other process claims the slow task",
        )
        yield root, folder, proc
    finally:
        flag.unlink(missing_ok=True)
        try:
            out, err = proc.communicate(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()  # started by this fixture
            out, err = proc.communicate()
        assert proc.returncode == 0, err
        assert "released" in out


def test_inspect_shows_computing(busy_task: tuple[Path, Path, subprocess.Popen[str]]) -> None:
    root, folder, proc = busy_task
    (info,) = exca.ops.inspect(root, step="Slow")
    assert info.status == "computing"
    assert info.folder == folder
    assert proc.poll() is None
    rows = json.loads(cli("list", root, "--status", "computing", "--json", check=True).stdout)
    assert [r["folder"] for r in rows] == [str(folder)]
    table = cli("list", root, check=True).stdout
    (line,) = grouped_lines(table)[f"{MODELS}.Slow.wait_for_flag,1"]
    assert line.startswith("computing")


def test_listing_while_another_process_writes(tmp_path: Path) -> None:
    """A writer process adds map items (one writer session per call) until told to stop;
    listing meanwhile never fails and never goes backwards."""
    root = tmp_path / "cache"
    stop = tmp_path / "stop"
    started = tmp_path / "started"
    proc = python(
        f"""
        import os, jobmodels_ops
        count = 0
        while not os.path.exists({str(stop)!r}) and count < 3000:
            items = list(range(count * 4, count * 4 + 4))
            assert list(jobmodels_ops.Squares(infra={{"folder": {str(root)!r}}}).square(items)) == [x * x for x in items]
            count += 1
            if count == 1:
                open({str(started)!r}, "w").close()
        print(count)
        """
    )
    try:
        wait_until(started.exists, "the writer process starts writing")
        seen: list[int] = []
        for round_ in range(24):
            assert proc.poll() is None, "the writer must still be writing"
            if round_ % 8 == 0:
                rows = json.loads(cli("list", root, "--json", check=True).stdout)
                (row,) = rows
                seen.append(row["entries"])
            else:
                (info,) = exca.ops.inspect(root)
                assert info.kind == "map"
                assert info.status in ("success", "computing")  # the writer holds claims
                seen.append(info.entries)
    finally:
        stop.touch()
        out, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 0, err
    written = int(out.strip()) * 4
    assert seen == sorted(seen), seen
    assert seen[0] > 0 and seen[-1] <= written
    (info,) = exca.ops.inspect(root)
    assert info.entries == written


# --- explain -----------------------------------------------------------------------------------
def test_a_symlinked_step_folder_is_listed_once(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    Train(seed=2, infra={"folder": root}).fit()
    step = folder_of(Train(seed=2, infra={"folder": root})).parent
    (root / "alias,1").symlink_to(step)
    assert len(exca.ops.inspect(root)) == 1


def test_clean_node_downstream_through_a_step_folder_on_another_disk(tmp_path: Path) -> None:
    """A step folder may be a symlink to another disk: its nodes are in the root."""
    root, elsewhere = tmp_path / "cache", tmp_path / "other-disk"
    source = Source(n=4, infra={"folder": root}).make.node()
    assert source.folder is not None
    elsewhere.mkdir()
    moved = elsewhere / source.folder.parent.name
    root.mkdir()
    moved.mkdir()
    (root / moved.name).symlink_to(moved)  # (made before computing: the layout of a user)
    down = Total(infra={"folder": root}).total.node(source)
    assert down.result() == 12 and source.folder.resolve().parent == moved
    plan = clean.remove_nodes(source, downstream=True, root=root)
    assert {r.path for r in plan.removals} == {source.folder, down.folder}


def test_where_with_a_float_in_exponent_notation(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    small = Train(optim={"lr": 1e-5}, infra={"folder": root})
    small.fit()
    Train(infra={"folder": root}).fit()
    for value in ("1e-5", "1.0e-5", "0.00001"):
        (row,) = exca.ops.inspect(root, where=[f"optim.lr={value}"])
        assert row.folder == folder_of(small)


def test_where_finds_a_float_computed_in_a_sweep_as_its_uid_shows_it(tmp_path: Path) -> None:
    """A sweep's lr=0.1 * 3 is 0.30000000000000004: its folder reads optim.lr=0.30, and
    ``--where optim.lr=0.3`` (or 0.30) found nothing; clean node --where neither."""
    root = tmp_path / "cache"
    swept = Train(optim={"lr": 0.1 * 3}, infra={"folder": root})
    swept.fit()
    Train(optim={"lr": 0.31}, infra={"folder": root}).fit()
    assert "optim.lr=0.30" in folder_of(swept).name
    for value in ("0.3", "0.30", str(0.1 * 3)):
        (row,) = exca.ops.inspect(root, where=[f"optim.lr={value}"])
        assert row.folder == folder_of(swept)
    assert exca.ops.inspect(root, where=["optim.lr=0.4"]) == []
    listed = cli("list", root, "--where", "lr=0.3", check=True).stdout
    assert "(1 config(s))" in listed and folder_of(swept).name in listed
    cli("clean", root, "node", "--where", "lr=0.3", "--yes", check=True)
    assert not folder_of(swept).exists()
    assert len(exca.ops.inspect(root)) == 1  # (0.31 stays)


class Schedule(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    lr: float = 0.1


class Tagged(pydantic.BaseModel):
    """Two keys ending in ``lr``, an optional string, a float that may be nan, a list."""

    optim: Optim = Optim()
    sched: Schedule = Schedule()
    tag: str | None = None
    threshold: float = 0.5
    betas: list[float] = [0.9, 0.999]
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> str:
        return "done"


def test_where_ambiguous_keys_null_nan_and_list_items(tmp_path: Path) -> None:
    """``--where lr=0.1`` matched any config whose optim.lr OR sched.lr was 0.1 (here:
    all, by sched.lr's default); ``tag=null`` matched the text "null" too; ``.nan``
    matched nothing; ``betas.0=0.8`` named no key (a probe)."""
    root = tmp_path / "cache"
    configs: dict[str, dict[str, tp.Any]] = {
        "default": {},
        "optim": {"optim": {"lr": 0.1}},
        "text": {"tag": "null"},
        "nan": {"threshold": float("nan")},
        "betas": {"betas": [0.8, 0.99]},
    }
    folders = {}
    for name, config in configs.items():
        obj = Tagged(**config, infra={"folder": root})
        obj.run()
        folders[name] = folder_of(obj)

    def found(*where: str) -> set[str]:
        infos = exca.ops.inspect(root, where=list(where))
        return {name for name, f in folders.items() if f in {i.folder for i in infos}}

    # a key ending several keys of a config: an error naming them, not a guess
    with pytest.raises(ValueError, match=r"optim\.lr, sched\.lr"):
        exca.ops.inspect(root, where=["lr=0.1"])
    bad = cli("list", root, "--where", "lr=0.1")
    assert bad.returncode == 2 and "optim.lr, sched.lr" in bad.stderr, bad.stderr
    assert found("optim.lr=0.1") == {"optim"}
    assert found("sched.lr=0.1") == set(folders)
    # null (or ~, None: as uids display it) is None only; the text is quoted
    assert found("tag=null") == found("tag=~") == found("tag=None") == set(folders) - {"text"}
    assert found("tag='null'") == found('tag="null"') == {"text"}
    listed = cli("list", root, "--where", "tag=null", check=True)
    assert "tag=null-" not in listed.stdout and "--where \"tag='null'\"" in listed.stderr
    # nan, however yaml or Python writes it
    assert found("threshold=nan") == found("threshold=.nan") == found("threshold=NaN") == {"nan"}
    assert found("threshold=0.5") == set(folders) - {"nan"}
    # list items by index, as overrides write them
    assert found("betas.0=0.8") == found("betas.1=0.99") == {"betas"}
    assert found("betas=[0.8, 0.99]") == {"betas"}
    assert found("betas.0=0.9") == set(folders) - {"betas"}
    # a string held is also matched as written (infra.version is the text '1')
    assert found("infra.version=1") == set(folders)


class Stage(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    lr: float = 0.5
    size: int = 4


class Staged(pydantic.BaseModel):
    """A list of sub-configs, each with an ``lr``, beside ``optim.lr``."""

    optim: Optim = Optim()
    stages: list[Stage] = []
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> str:
        return "done"


def test_where_key_ends_do_not_name_keys_inside_list_items(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Key ends matched inside list items: with a list of sub-configs each holding an
    ``lr``, the documented ``--where lr=0.02`` was an ambiguity error, as ``size=8`` with
    stages of sizes 8 and 16; a config's view was built again for each condition, and
    `list` with a null condition described the cache twice (a review). Inside list items
    a key end names keys with their indices only; each config's view is built once, and
    the cache is described once."""
    from exca.ops import cli as ops_cli

    ops_inspect = sys.modules["exca.ops.inspect"]  # (exca.ops.inspect is also a function)

    root = tmp_path / "cache"
    plain = Staged(optim={"lr": 0.02}, infra={"folder": root})
    plain.run()
    staged = Staged(stages=[{"lr": 0.02, "size": 8}, {"size": 16}], infra={"folder": root})
    staged.run()
    infos = exca.ops.inspect(root, where=["lr=0.02"])
    assert [i.folder for i in infos] == [folder_of(plain)]
    assert exca.ops.inspect(root, where=["size=8"]) == []
    for where in ("stages.0.size=8", "0.size=8", "1.size=16", "0.lr=0.02"):
        assert [i.folder for i in exca.ops.inspect(root, where=[where])] == [folder_of(staged)]
    listed = cli("list", root, "--where", "size=8")
    assert "give its indices, e.g. stages.0.size" in listed.stdout, listed.stdout
    # one view per config, one description of the cache
    views, described = [], []
    where_view, describe = ops_inspect._where_view, ops_inspect.describe
    monkeypatch.setattr(ops_inspect, "_where_view", lambda c: views.append(1) or where_view(c))
    monkeypatch.setattr(
        ops_inspect, "describe", lambda *a, **k: described.append(1) or describe(*a, **k)
    )
    assert len(exca.ops.inspect(root, where=["optim.lr=0.01", "optim.momentum=0.9"])) == 1
    assert len(views) == 2
    described.clear()
    assert ops_cli.main(["list", str(root), "--where", "optim.lr=~"]) == 0
    assert len(described) == 2
    assert "No cached node matches" in capsys.readouterr().out


class Evaluate(pydantic.BaseModel):
    """The second stage of a pipeline: a task whose input ``model`` is a Train's result."""

    split: str = "test"
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def score(self, model: float, offset: float = 0.0) -> float:
        return model + offset


class Judge(pydantic.BaseModel):
    """A third stage: its input ``score`` is an Evaluate's result."""

    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def judge(self, score: float) -> bool:
        return score > 1


def test_where_reaches_into_the_configs_of_a_tasks_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--where`` filtered on a node's own config only: the evaluations of the trainings
    with lr=0.02 could not be selected. A key starting with an input's name reaches into
    the config of the node it was (its inputs.yaml, that node's config file, read once per
    listing), through the inputs of that node too; a path naming nothing there is an error
    naming it and the keys there are."""
    ops_inspect = sys.modules["exca.ops.inspect"]  # (exca.ops.inspect is also a function)
    root = tmp_path / "cache"
    evaluated = {}
    for lr in (0.01, 0.02):
        trained = Train(optim={"lr": lr}, infra={"folder": root}).fit.node()
        for split in ("test", "val"):
            node = Evaluate(split=split, infra={"folder": root}).score.node(trained, offset=1.0)
            evaluated[lr, split] = node
    judged = {
        lr: Judge(infra={"folder": root}).judge.node(evaluated[lr, "val"]) for lr in (0.01, 0.02)
    }
    for node in judged.values():
        node.result()
    for node in evaluated.values():
        node.result()

    def found(*where: str, step: str | None = None) -> set[Path]:
        return {i.folder for i in exca.ops.inspect(root, step=step, where=list(where))}

    def folders(*nodes: tp.Any) -> set[Path]:
        return {n.folder for n in nodes}

    lr2 = folders(evaluated[0.02, "test"], evaluated[0.02, "val"])
    assert found("model.optim.lr=0.02") == lr2
    assert found("model.lr=0.02") == lr2  # (the end of a key of the input's config)
    assert found("model.lr=0.02", "split=val") == folders(evaluated[0.02, "val"])
    assert found("score.model.optim.lr=0.01") == folders(judged[0.01])  # (an input's input)
    assert found("score.split=val") == folders(*judged.values())
    # a key without an input's name does not reach into inputs: the training only
    assert found("optim.lr=0.02") == {folder_of(Train(optim={"lr": 0.02}, infra={"folder": root}))}
    # the trainings read once per listing (not listed with --step: read from their folders)
    reads: list[Path] = []
    configs = ops_inspect._configs
    monkeypatch.setattr(ops_inspect, "_configs", lambda f: reads.append(f) or configs(f))
    assert found("model.lr=0.02", step="Evaluate") == lr2
    trainings = {folder_of(Train(optim={"lr": lr}, infra={"folder": root})) for lr in (0.01, 0.02)}
    assert sorted(f for f in reads if f in trainings) == sorted(trainings)
    monkeypatch.undo()
    # the command: selected, and a path naming nothing is an error naming what there is
    listed = cli("list", root, "--where", "model.optim.lr=0.02", check=True).stdout
    assert "Evaluate.score,1  (2 config(s))" in listed and "Train.fit,1  (" not in listed
    bad = cli("list", root, "--where", "model.lrr=1")
    assert bad.returncode == 2, bad
    assert "--where model.lrr: the input 'model' of test_ops.Evaluate.score,1" in bad.stderr
    assert "holds no key 'lrr': its keys are " in bad.stderr and "optim.lr" in bad.stderr
    deep = cli("list", root, "--where", "score.model.lrr=1")
    assert deep.returncode == 2 and "the input 'score.model' of" in deep.stderr, deep
    value = cli("list", root, "--where", "offset.x=1")
    assert value.returncode == 2 and "the input 'offset'" in value.stderr, value
    assert "is a value" in value.stderr
    typo = cli("list", root, "--where", "modle.lr=0.02", check=True).stdout
    assert "No config has a key 'modle.lr'" in typo
    assert "model, offset (test_ops.Evaluate.score,1)" in typo, typo
    assert "score (test_ops.Judge.judge,1)" in typo
    # clean node --where selects the same nodes
    preview = cli("clean", root, "node", "--where", "model.optim.lr=0.02", check=True).stdout
    assert "2 item(s) to remove" in preview, preview


class Ensemble(pydantic.BaseModel):
    """A task whose inputs are a list and a dict of inputs (Train results, a value)."""

    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def vote(self, models: list[float], named: dict[str, float]) -> float:
        return sum(models) + sum(named.values())


class Sweep(pydantic.BaseModel):
    runs: dict[str, float] = {}
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def total(self) -> float:
        return sum(self.runs.values())


def test_where_names_dict_keys_holding_equal_signs_and_dots(tmp_path: Path) -> None:
    """A dict key holding "=" (``{"lr=0.1,steps=50": ...}``), in a config or in a dict of
    inputs, could not be named by ``--where``: a condition was split at its first "=",
    so its key was ``runs.lr`` (nothing: no match), and a dict of inputs read each key
    up to its first "=" (its members "not told apart": an error). The first "=" whose key
    names something splits the condition now, and such a dict's members are read whole.
    Keys with dots were named already; no uid changes."""
    root = tmp_path / "cache"
    one = Sweep(runs={"lr=0.1,steps=50": 1.0, "v1.2": 2.0}, infra={"folder": root})
    two = Sweep(runs={"lr=0.1": 3.0, "steps=50": 1.0}, infra={"folder": root})
    assert (one.total(), two.total()) == (3.0, 4.0)
    assert one.infra.uid().endswith("/runs={v1.2=2,lr=0.1,steps=50=1}-ef2ab3c0")

    def found(*where: str, step: str = "Sweep") -> set[Path]:
        return {i.folder for i in exca.ops.inspect(root, step=step, where=list(where))}

    folders = [t.infra.uid_folder() for t in (one, two)]
    assert found("runs.lr=0.1,steps=50=1.0") == found("runs.v1.2=2") == {folders[0]}
    assert found("runs.lr=0.1=3") == found("runs.steps=50=1") == {folders[1]}
    assert found("runs.lr=0.1=1") == set()
    # in a dict of inputs
    trained = [Train(optim={"lr": lr}, infra={"folder": root}).fit.node() for lr in (0.01, 0.02)]
    ensemble = Ensemble(infra={"folder": root})
    both = ensemble.vote.node([trained[0]], {"lr=0.1,steps=50": trained[0], "v1.2": trained[1]})
    swapped = ensemble.vote.node([trained[0]], {"lr=0.1": trained[1], "steps=50": trained[0]})
    both.result(), swapped.result()
    assert found("named.lr=0.1,steps=50.lr=0.01", step="Ensemble") == {both.folder}
    assert found("named.v1.2.optim.lr=0.02", step="Ensemble") == {both.folder}
    assert found("named.lr=0.1.lr=0.02", "named.steps=50.lr=0.01", step="Ensemble") == {
        swapped.folder
    }
    listed = cli("list", root, "--where", "named.lr=0.1,steps=50.lr=0.01", check=True).stdout
    assert "named={lr=0.1,steps=50: Train.fit,1/default, v1.2: " in listed, listed


def test_where_reaches_into_lists_and_dicts_of_inputs(tmp_path: Path) -> None:
    """``--where`` could not reach into an input that is a list or dict of nodes (an error:
    "its members are not reached"), and a path naming nothing in a config (a list index or
    a dict key that is not there) only said that no config has it. A member is named by
    its index or key, as in a config (``models.0.optim.lr``, ``named.best.lr``); a path
    naming nothing there is an error naming the indices or keys there are, and a path
    naming nothing in a config says what the configs hold where it goes wrong."""
    root = tmp_path / "cache"
    trained = {
        lr: Train(optim={"lr": lr}, infra={"folder": root}).fit.node() for lr in (0.01, 0.02)
    }
    ensemble = Ensemble(infra={"folder": root})
    both = ensemble.vote.node([trained[0.01], trained[0.02]], {"best": trained[0.02]})
    one = ensemble.vote.node([trained[0.02]], {"best": trained[0.01], "other": 3.0})
    both.result(), one.result()

    def found(*where: str) -> set[Path]:
        return {i.folder for i in exca.ops.inspect(root, step="Ensemble", where=list(where))}

    assert found("models.0.optim.lr=0.01") == found("models.1.lr=0.02") == {both.folder}
    assert found("models.0.optim.lr=0.02") == {one.folder}
    assert found("named.best.optim.lr=0.02") == {both.folder}
    assert found("named.best.lr=0.01", "models.0.lr=0.02") == {one.folder}
    assert found("models.1.lr=0.01") == set()
    listed = cli("list", root, "--where", "named.best.optim.lr=0.02", check=True).stdout
    assert "test_ops.Ensemble.vote,1  (1 config(s))" in listed, listed
    # a path naming nothing there: an error naming what there is
    for where, said in [
        (
            "models.5.lr=1",
            "the input 'models' of test_ops.Ensemble.vote,1 is a list of 2 "
            "input(s): '5' is none of its indices (0, 1)",
        ),
        ("named.worst.lr=1", "is a dict of 1 input(s): 'worst' is none of its keys (best)"),
        ("named.other.lr=1", "the input 'named.other' of test_ops.Ensemble.vote,1 is a value"),
        (
            "models.0.lrr=1",
            "the input 'models.0' of test_ops.Ensemble.vote,1 (a "
            "jobmodels_ops.Train.fit,1 node) holds no key 'lrr': its keys are ",
        ),
        (
            "models=1",
            "is a list of 2 input(s): give the index of one, then a key of its "
            "config (e.g. models.0.KEY)",
        ),
    ]:
        bad = cli("list", root, "--where", where)
        assert bad.returncode == 2 and said in bad.stderr, (where, bad.stderr)
    # a path naming nothing in a config: what the configs hold where it goes wrong
    staged = Staged(stages=[{"size": 8}, {"size": 16}], infra={"folder": root})
    staged.run()
    wrong = cli("list", root, "--where", "stages.5.size=8", check=True).stdout
    assert "No config has a key 'stages.5.size'" in wrong, wrong
    assert "For 'stages.5.size': 'stages' holds the items 0, 1." in wrong, wrong
    wrong = cli("list", root, "--where", "stages.0.siz=8", check=True).stdout
    assert "'stages.0' holds the keys lr, size." in wrong, wrong


def test_where_splits_long_lists_of_inputs_and_lists_holding_values(tmp_path: Path) -> None:
    """The uid of a list (or dict) of inputs was split into its members' uids by a
    recursion as deep as the members: ``--where models.0.lr=...`` over an aggregation of
    a sweep of ~1000 nodes raised RecursionError (and each member tried every end after
    it: quadratic). A list holding a node and two values or more was not split (a value's
    uid, its text then a digest, also reads as several values): its uid was then taken
    for a node's folder name (OSError "File name too long" past 255 characters, else
    "is a value")."""
    from exca.ops.inspect import group_members

    uids = [f"proj.Train.fit,1/lr=0.1,seed={i}-{i:08x}" for i in range(3000)]
    uids[5] += "/inputs-0123abcd"
    assert group_members("[" + ",".join(uids) + "]") == [(None, u) for u in uids]
    keyed = "{" + ",".join(f"k/{i}={u}" for i, u in enumerate(uids)) + "}"
    assert group_members(keyed) == [(f"k/{i}", u) for i, u in enumerate(uids)]
    root = tmp_path / "cache"
    trained = Train(optim={"lr": 0.02}, infra={"folder": root}).fit.node()
    ensemble = Ensemble(infra={"folder": root})
    for count in (2, 300):
        weights = [float(i) for i in range(count)]
        voted = ensemble.vote.node([trained, *weights], {"best": trained})
        voted.result()

        def found(*where: str) -> set[Path]:
            return {i.folder for i in exca.ops.inspect(root, step="Ensemble", where=list(where))}

        assert found("models.0.optim.lr=0.02") >= {voted.folder}, count
        assert found("models.0.optim.lr=0.01") == set(), count
        bad = cli("list", root, "--where", f"models.{count}.lr=1")
        assert bad.returncode == 2, bad.stderr
        assert f"the input 'models.{count}' of test_ops.Ensemble.vote,1 is a value" in bad.stderr


def test_explain_the_same_config_under_another_folder_name(tmp_path: Path) -> None:
    """A folder name lists the values that differ from the defaults of the day it was
    computed: after a default changed, the same config is cached under another name
    (simulated by renaming the folder). explain says so instead of a bare "missing"."""
    root = tmp_path / "cache"
    cached = Train(optim={"lr": 0.02}, infra={"folder": root})
    cached.fit()
    renamed = folder_of(cached).parent / "default"
    folder_of(cached).rename(renamed)
    (explanation,) = exca.ops.explain(Train(optim={"lr": 0.02}, infra={"folder": root}).fit.node())
    assert explanation.nearest == str(renamed) and explanation.diff == []
    assert "the same config is cached under another folder name, default" in str(explanation)


def test_explain_a_config_cached_under_its_legacy_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache written by an older exca (v2 folder names): explain said "a class default
    changed since", which nothing did (a probe)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("CONFDICT_UID_VERSION", "2")
    Train(optim={"lr": 0.2}, infra={"folder": root}).fit()
    monkeypatch.delenv("CONFDICT_UID_VERSION")
    (explanation,) = exca.ops.explain(Train(optim={"lr": 0.2}, infra={"folder": root}).fit.node())
    assert explanation.diff == [] and explanation.legacy
    assert "cached under its legacy (v2) folder name" in str(explanation)
    assert "default changed" not in str(explanation)


def test_explain_a_config_whose_folder_holds_no_result(tmp_path: Path) -> None:
    """A config whose folder exists but holds no result (a run interrupted in process, or
    cleared): explain compared it with the nearest other cached config, as if its values
    were the reason (a probe)."""
    root = tmp_path / "cache"
    Train(seed=1, infra={"folder": root}).fit()
    cleared = Train(seed=2, infra={"folder": root})
    cleared.fit()
    cleared.infra.clear_job()
    assert folder_of(cleared).is_dir()
    (explanation,) = exca.ops.explain(Train(seed=2, infra={"folder": root}).fit.node())
    assert explanation.nearest is None and explanation.diff == []
    assert "its folder exists but holds no result" in str(explanation)


def test_explain_of_a_task_copied_while_it_computed_says_so(tmp_path: Path) -> None:
    """A cache copied while a call of this machine computed a task: explain of the copy
    now takes that call's claim for none (the call writes into the original), and said
    the computation "died before writing it", of a call still alive."""
    original, copy = tmp_path / "original", tmp_path / "copy"
    folder = folder_of(Train(seed=3, infra={"folder": original}))
    folder.mkdir(parents=True)
    with Claims(folder).claim_one("result"):  # (as that call holds it)
        shutil.copytree(original, copy)
        (explanation,) = exca.ops.explain(Train(seed=3, infra={"folder": copy}).fit.node())
    said = f"the cache was copied while its computation (pid {os.getpid()} on"
    assert said in str(explanation) and "died" not in str(explanation), str(explanation)


def test_explain_of_a_node_that_never_started_says_so(tmp_path: Path) -> None:
    """A pipeline node never computed (its run stopped at its failed input; the input's
    error cleared since), its folder made by that run: explain guessed "(interrupted, or
    cleared?)". It says what its folder tells: it never started, and its input's state;
    the input's own folder: its result was removed; a task interrupted in process: so."""
    root = tmp_path / "cache"
    failing = Train(fail=True, infra={"folder": root})
    evaluate = Evaluate(infra={"folder": root}).score.node(failing.fit.node())
    with pytest.raises(NodeFailures):
        exca.graph.run(evaluate)
    failing.infra.clear_job()
    (upstream, below) = exca.ops.explain(evaluate)
    assert "interrupted, or cleared" not in below.reason, below
    assert below.reason.startswith(
        "missing: its folder exists but holds no result (it never started: nothing was "
        "computed in it; its input 'model' ("
    ), below.reason
    assert upstream.reason.endswith("(what was cached in it was removed since)"), upstream
    interrupted = Interrupts(infra={"folder": root})
    with pytest.raises(KeyboardInterrupt):
        interrupted.run()
    (explanation,) = exca.ops.explain(interrupted.run.node())
    assert explanation.reason.endswith("ended without a result: interrupted)"), explanation


def test_explain_new_items_of_a_map_whose_folder_holds_errors_only(tmp_path: Path) -> None:
    """A map whose folder held only cached errors of other items: explain of new items
    said "its folder exists but holds no result" instead of how many are missing (a
    review)."""
    root = tmp_path / "cache"
    with pytest.raises(ValueError, match="negative item -1"):
        list(Squares(infra={"folder": root}).square([-1]))
    node = Squares(infra={"folder": root}).square.node([5])
    (explanation,) = exca.ops.explain(node)
    assert explanation.reason == "1/1 missing", explanation
    for index in folder_of(Squares(infra={"folder": root})).glob(INDEX_GLOB):
        index.unlink()  # (nothing left of it: as if cleared)
    (explanation,) = exca.ops.explain(node)
    assert explanation.reason.startswith("1/1 missing: its folder exists but holds no item")


def test_explain_never_computed(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    Squares(infra={"folder": root}).square([1])  # another method is cached
    (explanation,) = exca.ops.explain(Train(infra={"folder": root}).fit.node())
    assert (explanation.status, explanation.action) == ("missing", "compute")
    assert explanation.nearest is None
    assert "never computed" in explanation.summary()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"infra": {"folder": str(root)}}))
    result = cli("explain", f"{MODELS}:Train.fit", "--config", cfg, "seed=5", check=True)
    assert "never computed" in result.stdout


class Learner(pydantic.BaseModel):
    """Train under another name (a class renamed): its configs have the same folders."""

    optim: Optim = Optim()
    seed: int = 0
    fail: bool = False
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> float:
        return self.optim.lr * 100 + self.seed


class Scorer(pydantic.BaseModel):
    """Another class sharing a field with Train (seed): not Train renamed."""

    seed: int = 0
    metric: str = "acc"
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> float:
        return float(self.seed)


def test_explain_never_computed_names_the_step_holding_the_same_config(
    tmp_path: Path,
) -> None:
    """A class renamed (Train -> Learner): explain said "never computed" and nothing
    more, while its configs' folders (named after their values only) sat under the old
    name's step folder (a probe)."""
    root = tmp_path / "cache"
    Train(seed=3, infra={"folder": root}).fit()
    Train(infra={"folder": root}).fit()
    (why,) = exca.ops.explain(Learner(seed=3, infra={"folder": root}).fit.node())
    assert why.nearest is None and why.same_config_in == [f"{MODELS}.Train.fit,1"]
    assert why.summary() == (
        "never computed (no cached config of this method); the same config folder, "
        f"{Path(why.uid).name}, is cached under {MODELS}.Train.fit,1: a class or method "
        "renamed, or moved to another module? (if the class was renamed and nothing else "
        f"changed: exca rename {shlex.quote(str(root))} {MODELS}.Train {__name__}.Learner)"
    )
    # not for the default config (every class has one), nor for a config cached nowhere
    for other in (Learner(infra={"folder": root}), Learner(seed=4, infra={"folder": root})):
        (why,) = exca.ops.explain(other.fit.node())
        assert why.same_config_in == []
        assert why.summary() == "never computed (no cached config of this method)"
    # nor for another class whose config has the same folder name (seed=3), but other
    # fields: a new class sharing a value, not a former name (it was named)
    (why,) = exca.ops.explain(Scorer(seed=3, infra={"folder": root}).fit.node())
    assert why.same_config_in == [], why.summary()


TRAIN_SCRIPT = """
import sys
import pydantic
import exca


class Exp(pydantic.BaseModel):
    lr: float = 0.1
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> float:
        return self.lr


if __name__ == "__main__":
    Exp(infra={"folder": sys.argv[1]}).fit()
"""


def test_explain_names_the_same_class_cached_by_a_script(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A class defined in a script caches under ``__main__.<Class>``: explained from its
    module, it said "never computed" and nothing more."""
    (tmp_path / "train_script.py").write_text(TRAIN_SCRIPT)
    root = tmp_path / "cache"
    subprocess.run([sys.executable, str(tmp_path / "train_script.py"), str(root)], check=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    import train_script

    (explanation,) = exca.ops.explain(train_script.Exp(infra={"folder": root}).fit.node())
    assert explanation.summary().startswith("never computed")
    assert "configs in __main__.Exp.fit,1: a class defined in a script" in explanation.summary()


def test_explain_config_diff_against_nearest(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    infra = {"folder": root}
    cached = {
        "far": Train(optim={"lr": 0.03, "momentum": 0.5}, seed=5, infra=infra),
        "seed0": Train(seed=0, infra=infra),
        "near": Train(seed=1, infra=infra),  # differs from the wanted config by optim.lr only
        "lr_seed2": Train(optim={"lr": 0.02}, seed=2, infra=infra),
    }
    for obj in cached.values():
        obj.fit()
    wanted = Train(optim={"lr": 0.02}, seed=1, infra=infra)
    (explanation,) = exca.ops.explain(wanted.fit.node())
    assert (explanation.status, explanation.action) == ("missing", "compute")
    assert explanation.nearest == str(folder_of(cached["near"]))
    assert explanation.diff == [("optim.lr", 0.01, 0.02)]
    # lr_seed2 differs by one key too (seed): the first by folder name is shown, the tie said
    assert explanation.equally_near == 1
    assert "(and 1 other cached config(s) as near)" in str(explanation)
    assert "optim.lr 0.01 → 0.02" in explanation.summary()
    assert "optim.lr 0.01 → 0.02" in str(explanation)
    assert explanation.to_dict()["summary"] == explanation.summary()
    # from the command line: yaml config + dotted overrides
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"infra": {"folder": str(root)}, "seed": 1}))
    result = cli("explain", f"{MODELS}:Train.fit", "--config", cfg, "optim.lr=0.02", check=True)
    assert "optim.lr 0.01 → 0.02" in result.stdout
    assert str(folder_of(cached["near"])) in result.stdout
    rows = json.loads(
        cli(
            "explain",
            f"{MODELS}:Train.fit",
            "--config",
            cfg,
            "optim.lr=0.02",
            "--json",
            check=True,
        ).stdout
    )
    assert [r["diff"] for r in rows] == [[["optim.lr", 0.01, 0.02]]]
    # a cached config: nothing to explain
    result = cli("explain", f"{MODELS}:Train.fit", "--config", cfg, check=True)
    assert "Nothing to compute" in result.stdout
    assert exca.ops.explain(Train(seed=1, infra=infra).fit.node()) == []


def test_explain_read_only_compares_with_the_nearest_cached_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`exca explain T --mode read-only` of a config never computed said only "read-only
    and missing", dropping the difference with the nearest cached config that the default
    mode shows (a probe). It shows it after "read-only and missing", and says so of a
    config never computed at all and of a folder holding no result."""
    from exca.ops.cli import main

    root = tmp_path / "cache"
    Train(seed=1, infra={"folder": root}).fit()
    target = [f"{MODELS}:Train.fit", f"infra.folder={root}", "seed=2"]
    assert main(["explain", *target, "--mode", "read-only"]) == 0
    out = capsys.readouterr().out
    said = "why: read-only and missing: config differs from the nearest cached one: seed 1 → 2"
    assert said in out, out
    assert f"nearest cached: {folder_of(Train(seed=1, infra={'folder': root}))}" in out
    (explanation,) = exca.ops.explain(
        Train(seed=2, infra={"folder": root, "mode": "read-only"}).fit.node()
    )
    assert (explanation.action, explanation.diff) == ("fail", [("seed", 1, 2)])
    assert main(["explain", *target, "--mode", "read-only", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["diff"] == [["seed", 1, 2]] and row["nearest"] is not None
    empty = {"folder": tmp_path / "other", "mode": "read-only"}
    (explanation,) = exca.ops.explain(Train(seed=2, infra=empty).fit.node())
    assert explanation.summary() == (
        "read-only and missing: never computed (no cached config of this method)"
    )
    cleared = Train(seed=3, infra={"folder": root})
    cleared.fit()
    cleared.infra.clear_job()
    read_only = Train(seed=3, infra={"folder": root, "mode": "read-only"})
    (explanation,) = exca.ops.explain(read_only.fit.node())
    assert explanation.nearest is None and explanation.summary().startswith(
        "read-only and missing: its folder exists but holds no result"
    )


def test_explain_of_missing_items_beside_cached_item_errors_is_a_plain_sentence(
    tmp_path: Path,
) -> None:
    """A map with items missing and others failed before: explain said "1/3 missing, and 1
    cached item error(s) (mode='retry' recomputes them) (not computed for this config yet,
    or not finished: its other items are cached)". It names the items of each kind and
    what computes them."""
    root = tmp_path / "cache"
    with pytest.raises(ValueError, match="negative item -1"):
        list(Squares(infra={"folder": root}).square([1, -1]))
    (explanation,) = exca.ops.explain(Squares(infra={"folder": root}).square.node([1, -1, 2]))
    assert explanation.summary() == (
        "1 of its 3 item(s) not computed for this config yet, or not finished ('2'): a call "
        "computes them; 1 item(s) failed when computed before ('-1'): their errors are "
        "cached, a call raises them and mode='retry' computes them again; the other 1 "
        "item(s) are cached"
    ), explanation.summary()


def test_explain_a_partly_cached_map_names_no_other_config(tmp_path: Path) -> None:
    """Items missing from a map whose config has other items cached are new items, or items
    a run did not finish (it said "new items" after a Ctrl-C): explain says so, and does not
    send the user to another config's folder (nor when the items are known only at run
    time: a probe)."""
    root = tmp_path / "cache"
    Squares(offset=1, infra={"folder": root}).square([1, 2, 3])
    Squares(infra={"folder": root}).square([1, 2])
    (explanation,) = exca.ops.explain(Squares(infra={"folder": root}).square.node([1, 2, 3, 4]))
    assert explanation.nearest is None and explanation.diff == []
    assert explanation.summary() == (
        "2/4 missing (not computed for this config yet, or not finished: its other items are "
        "cached)"
    )
    # nothing cached for this config: the nearest cached config is named, with the change
    (fresh,) = exca.ops.explain(Squares(offset=2, infra={"folder": root}).square.node([1]))
    assert fresh.nearest is not None and fresh.diff[0][0] == "offset"
    assert fresh.summary().startswith("1/1 missing: config differs from the nearest cached")
    assert "offset" in fresh.summary() and "→ 2" in fresh.summary()
    # items known at run time (from an upstream node): nothing said of new items
    numbers = Source(infra={"folder": root}).make.node()
    (later,) = [
        e
        for e in exca.ops.explain(Squares(infra={"folder": root}).square.node(numbers))
        if "Squares" in e.uid
    ]
    assert "new items" not in later.summary()
    # ... but that this config has items cached, which the run reuses: no other config is
    # named (offset=1 was, as "nearest cached", sending the user after a change not made)
    assert later.nearest is None and later.diff == []
    assert "(2 item(s) are cached for this config: only the missing ones" in later.summary()
    # read-only computes nothing: it says what happens then instead
    (checked,) = [
        e
        for e in exca.ops.explain(
            Squares(infra={"folder": root, "mode": "read-only"}).square.node(numbers)
        )
        if "Squares" in e.uid
    ]
    # (said once: it said "(a missing item fails) (2 item(s) are cached for this config: a
    # missing one fails)")
    assert checked.summary() == (
        "read-only: items known at run time (a missing item fails) (2 item(s) are cached for "
        "this config)"
    )
    # no config of this method cached, items known at run time, but one of a class of the
    # same name in another module: a moved module, said as for a task (it was not)
    step = next(root.glob("*Squares.square,1"))
    step.rename(step.with_name(f"old_module.{step.name.split('.', 1)[1]}"))
    (moved,) = [
        e
        for e in exca.ops.explain(Squares(infra={"folder": root}).square.node(numbers))
        if "Squares" in e.uid
    ]
    assert moved.summary().startswith("items known at run time: never computed")
    assert "old_module.Squares.square,1: the class's module was renamed" in moved.summary()


def test_explain_says_what_feeds_each_node_as_the_plan_does(tmp_path: Path) -> None:
    """The evaluation maps of a sweep, each fed by one training, were explained as
    <step>/default/items-<digest>, "items known at run time", all alike: each explanation
    says what feeds it, as the plan does (a probe)."""
    root = tmp_path / "cache"
    sources = [Source(infra={"folder": root}).make.node()]
    maps = [Squares(infra={"folder": root}).square.node(s) for s in sources]
    explained = {e.uid: e for e in exca.ops.explain(*maps)}
    for source, node in zip(sources, maps):
        text = str(explained[node.uid])
        assert f"\n    inputs: items=Source.make,1/{source.uid.split('/', 1)[1]}" in text, text
    assert explained[sources[0].uid].inputs is None  # (fed by nothing)


SCORED: list[int] = []  # the items CountedScores computed (this process)


class CountedScores(pydantic.BaseModel):
    """A map whose items come from an upstream task (a training's checkpoints, say)."""

    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def score(self, checkpoints: list[int]) -> tp.Iterator[int]:
        for item in checkpoints:
            SCORED.append(item)
            yield -item


def test_explain_names_the_upstream_change_that_changed_a_maps_items(tmp_path: Path) -> None:
    """A map fed by a task whose config changed (a retrained model feeding its evaluation)
    was explained as "items known at run time (3 item(s) are cached for this config)", and
    what it fed as `inputs.values.items 'items-8d3c…' → 'items-51e0…'`: neither said which
    upstream changed, nor how. Both compare the upstream with the one that fed the cached
    items (their provenance names it): `items.n 3 → 4` (a probe)."""
    root = tmp_path / "cache"

    def pipeline(n: int) -> tuple[exca.graph.Node, exca.graph.Node, exca.graph.Node]:
        source = Source(n=n, infra={"folder": root}).make.node()
        scores = CountedScores(infra={"folder": root}).score.node(source)
        return source, scores, Total(infra={"folder": root}).total.node(scores)

    exca.graph.run(pipeline(3)[2])
    SCORED.clear()
    source, scores, total = pipeline(4)
    explained = {e.uid: e for e in exca.ops.explain(total)}
    why = explained[scores.uid]
    assert why.diff == [("items.n", 3, 4)]
    assert why.items_from == pipeline(3)[0].uid
    assert why.summary() == (
        "items known at run time, from an upstream new to this config: items.n 3 → 4 against "
        "the nearest one that fed its cached items (3 item(s) are cached for this config: only "
        "the missing ones are computed)"
    )
    assert f"nearest cached: the items from {pipeline(3)[0].uid}" in str(why)
    assert explained[total.uid].diff == [("inputs.values.items.n", 3, 4)]
    # the upstream computed, the items known: the new ones named, with the change
    exca.graph.run(source)
    (why,) = [e for e in exca.ops.explain(total) if e.uid == scores.uid]
    assert why.summary() == (
        "1/4 missing, new ones, from an upstream new to this config: items.n 3 → 4 against "
        "the nearest one that fed its cached items"
    )
    # what runs: the new item only (the others are cached for this config)
    exca.graph.run(total)
    assert total.result() == -12 and SCORED == [3]


class Checkpoints(pydantic.BaseModel):
    """A training of a sweep: its checkpoints are the items of its evaluation map."""

    lr: float = 0.1
    depth: int = 2
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> list[int]:
        return [int(self.lr * 100) + self.depth]


def test_explain_of_a_sweeps_evaluation_names_the_change_its_training_names(
    tmp_path: Path,
) -> None:
    """Of equally near trainings, the evaluation of a new one was compared with the first
    met in its config's items (`items.lr 0.1 → 0.3`) while the training itself was
    compared with the first by folder name (`lr 0.2 → 0.3`): both now the first by name."""
    root = tmp_path / "cache"

    def evaluation(lr: float, depth: int) -> tuple[exca.graph.Node, exca.graph.Node]:
        train = Checkpoints(lr=lr, depth=depth, infra={"folder": root}).fit.node()
        return train, CountedScores(infra={"folder": root}).score.node(train)

    exca.graph.run(*(evaluation(lr, d)[1] for lr in (0.1, 0.2) for d in (2, 3)))
    train, scores = evaluation(0.3, 3)
    explained = {e.uid: e for e in exca.ops.explain(scores)}
    assert explained[train.uid].diff == [("lr", 0.2, 0.3)]
    assert explained[scores.uid].diff == [("items.lr", 0.2, 0.3)]
    assert explained[scores.uid].items_from == evaluation(0.2, 3)[0].uid


def test_explain_of_a_map_forced_by_its_upstream_counts_the_items_that_upstream_fed(
    tmp_path: Path,
) -> None:
    """A map fed by a forced task said "the cached ones are computed again too (4 item(s)
    are cached for this config)": all of its config's items, while only those of this
    upstream's output are (a probe)."""
    root = tmp_path / "cache"
    for n in (3, 4):  # (n=4 computes its one new item: 3)
        source = Source(n=n, infra={"folder": root}).make.node()
        exca.graph.run(CountedScores(infra={"folder": root}).score.node(source))
    SCORED.clear()
    forced = Source(n=3, infra={"folder": root, "mode": "force"}).make.node()
    scores = CountedScores(infra={"folder": root}).score.node(forced)
    (why,) = [e for e in exca.ops.explain(scores) if e.uid == scores.uid]
    assert why.summary() == (
        "forced by upstream: items known at run time, the cached ones are computed again too "
        "(4 item(s) are cached for this config, 3 of them computed from this upstream before)"
    )
    exca.graph.run(scores)
    assert SCORED == [0, 1, 2]


class CountedSquares(pydantic.BaseModel):
    offset: int = 0
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def square(self, items: list[int]) -> tp.Iterator[int]:
        for x in items:
            SCORED.append(x)
            if x < 0:
                raise ValueError(f"negative item {x}")
            yield x * x + self.offset


def test_explain_of_cleared_map_items_names_no_other_config(tmp_path: Path) -> None:
    """The items of a map node cleared (node.clear()) while its config holds other items
    were explained as another config's: "2/2 missing: config differs from the nearest
    cached one: offset 1 → 0", a change nobody made; only some of them: "not computed for
    this config yet, or not finished". Their removal is in the index: said so (a probe)."""
    root = tmp_path / "cache"
    for offset in (0, 1):
        CountedSquares(offset=offset, infra={"folder": root}).square([1, 2, 3])
    CountedSquares(infra={"folder": root}).square.node([1, 2]).clear()
    SCORED.clear()
    cleared = CountedSquares(infra={"folder": root}).square.node([1, 2])
    (why,) = exca.ops.explain(cleared)
    assert why.nearest is None and why.diff == []
    removed = "'1', '2': computed before, then removed (node.clear(), exca clean, or a forced run "
    assert why.summary() == (
        f"2/2 missing ({removed}cut short); 1 other item(s) are cached for this config)"
    )
    (why,) = exca.ops.explain(CountedSquares(infra={"folder": root}).square.node([1, 2, 3]))
    assert why.summary() == f"2/3 missing ({removed}cut short); its other items are cached)"
    # new items of a config holding others: not another config either
    (why,) = exca.ops.explain(CountedSquares(infra={"folder": root}).square.node([7]))
    assert why.nearest is None and why.summary() == (
        "1/1 missing (not computed for this config yet, or not finished; 1 other item(s) are "
        "cached for this config)"
    )
    exca.graph.run(CountedSquares(infra={"folder": root}).square.node([1, 2, 3]))
    assert SCORED == [1, 2]


def test_explain_of_a_removed_node_folder_says_it_was_removed(tmp_path: Path) -> None:
    """A task whose folder was removed (clean.remove_nodes, exca clean) was explained as
    another config: "config differs from the nearest cached one: seed 1 → 0", a change
    nobody made (maps' cleared items said "computed before, then removed"). The removal
    is recorded in the step folder: explain says so, for a map's folder too."""
    root = tmp_path / "cache"
    for seed in (0, 1):
        Train(seed=seed, infra={"folder": root}).fit()
    CountedSquares(infra={"folder": root}).square([1, 2])
    CountedSquares(offset=1, infra={"folder": root}).square([1, 2])
    task = Train(infra={"folder": root}).fit.node()
    squares = CountedSquares(infra={"folder": root}).square.node([1, 2])
    clean.remove_nodes([task, squares]).execute()
    assert task.folder is not None and not task.folder.exists()
    for node in (task, squares):
        (why,) = exca.ops.explain(node)
        assert why.nearest is None and why.diff == [], why
        assert "computed before, then its folder was removed on " in why.summary(), why
        assert "exca.ops.clean.remove_nodes: requested)" in why.summary(), why
    # computed again, and what a removal of old versions empties still goes whole
    assert Train(infra={"folder": root}).fit() == 1.0
    (why,) = exca.ops.explain(Train(seed=2, infra={"folder": root}).fit.node())
    assert why.summary() == "config differs from the nearest cached one: seed 0 → 2"
    assert clean.remove_nodes(task).execute() > 0
    old = Train(infra={"folder": root, "version": "2"})
    old.fit()
    assert (task.folder.parent / clean.REMOVALS_FILE).exists()
    clean.old_versions(root).execute()
    assert not task.folder.parent.exists() and old.fit.node().folder.exists()


def test_plan_counts_a_target_map_raising_its_cached_item_errors_as_failing(
    tmp_path: Path,
) -> None:
    """A map target with a new item and an item whose error is cached (mode cached): the
    plan's header said "1 missing" and no failure, while the run computes the new item,
    then raises the cached error. It is counted among those that would fail (a probe)."""
    root = tmp_path / "cache"
    with pytest.raises(ValueError, match="negative item -1"):
        list(CountedSquares(infra={"folder": root}).square([1, -1]))
    SCORED.clear()
    node = CountedSquares(infra={"folder": root}).square.node([1, -1, 2])
    plan = exca.graph.plan(node)
    assert (
        str(plan).splitlines()[0] == "Plan: 1 node(s): 1 missing; 1 would fail (see their reason)"
    )
    (entry,) = plan.entries
    assert (entry.action, entry.fails_after) == ("compute", True)
    assert plan.to_dict()["nodes"][0]["fails_after"] is True
    with pytest.raises(ValueError, match="negative item -1"):
        exca.graph.run(node)
    assert SCORED == [2]  # (the new item computed, then the cached error raised)
    # in mode retry: computed again, not counted as failing beforehand
    retried = CountedSquares(infra={"folder": root, "mode": "retry"}).square.node([1, -1, 2])
    assert "would fail" not in str(exca.graph.plan(retried)).splitlines()[0]
    # not a target: what reads it fails, counted already
    total = Total(infra={"folder": root}).total.node(node)
    plan = exca.graph.plan(total)
    assert [e.fails_after for e in plan.entries] == [False, False]
    assert str(plan).splitlines()[0].endswith("; 1 would fail (see their reason)")


def test_plan_of_a_map_retrying_its_cached_item_errors_names_them(tmp_path: Path) -> None:
    """A map in mode retry: its plan said "retry of 2 cached error(s)", not which items a
    run computes again (its failure names them); it names them now (a probe)."""
    root = tmp_path / "cache"
    with pytest.raises(ValueError, match="negative item -1"):
        list(CountedSquares(infra={"folder": root}).square([1, -1, -2]))
    SCORED.clear()
    node = CountedSquares(infra={"folder": root, "mode": "retry"}).square.node([1, -1, -2, 3])
    (entry,) = exca.graph.plan(node).entries
    assert entry.reason == "retry of 2 cached error(s) ('-1', '-2') and 1 missing"
    with pytest.raises(ValueError, match="negative item -1"):
        exca.graph.run(node)
    # (a failing item is computed again alone, to tell it from the others of its call)
    assert set(SCORED) == {-2, -1, 3} and SCORED.count(3) == 1


class Labelled(pydantic.BaseModel):
    name: str = "x"
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def label(self) -> str:
        return self.name.upper()


def test_cli_config_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    """A --config file of bytes that are no UTF-8 ended with "exca: error:
    UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff", a missing one with a bare
    FileNotFoundError (a probe): neither said it was the --config. Both name it now."""
    binary, missing = tmp_path / "binary.yaml", tmp_path / "missing.yaml"
    binary.write_bytes(b"\xff\xfe")
    for path, why in ((binary, "not a yaml mapping"), (missing, "cannot read it (No such")):
        result = cli("explain", f"{MODELS}:Train.fit", "--config", path)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert f"exca: error: ValueError: --config {path}: {why}" in result.stderr, result.stderr


def test_cli_config_file_values_keep_their_yaml_types(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    for name in ("123", "a: b"):
        assert Labelled(name=name, infra={"folder": root}).label() == name.upper()
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(yaml.safe_dump({"infra": {"folder": str(root)}, "name": name}))
        result = cli("explain", f"{__name__}:Labelled.label", "--config", cfg, check=True)
        assert "Nothing to compute" in result.stdout
    # values of the command line are yaml: name=123 is the int (a validation error)
    result = cli("explain", f"{__name__}:Labelled.label", "--config", cfg, "name=123")
    assert result.returncode == 2 and "name" in result.stderr
    result = cli("explain", f"{__name__}:Nope.label", "--config", cfg)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "has no Nope (check TARGET)" in result.stderr
    # a part after the method (it said the module has no "Labelled.label")
    result = cli("explain", f"{__name__}:Labelled.label.x", "--config", cfg)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is not a class (check TARGET" in result.stderr and "has no" not in result.stderr


class Layer(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    size: int = 2


class Seeded(pydantic.BaseModel):
    """Lists in its config: overrides index them (seeds.0=5)."""

    seeds: list[int] = [0, 1]
    layers: list[Layer] = [Layer(), Layer(size=4)]
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> int:
        return sum(self.seeds) + sum(layer.size for layer in self.layers)


class DataSource(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    path: str = "a"
    token: pydantic.SecretStr = pydantic.SecretStr("real-token")
    kept: int = pydantic.Field(default=3, exclude=True)


class Net(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    lr: float = 0.1
    layers: list[Layer] = [Layer(), Layer(size=8)]


class Indexed(pydantic.BaseModel):
    sources: list[DataSource] = [DataSource(kept=5)]
    net: Net = Net(layers=[Layer(size=99)])
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> int:
        return 1


def test_cli_config_given_twice_merges_the_files_in_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`exca plan T --config base.yaml --config exp.yaml` planned exp.yaml's config alone:
    the first file was dropped silently (argparse keeps the last value). The files are
    merged in order, each onto what the ones before set, then the overrides; a file it
    cannot read is named."""
    from exca.ops.cli import main

    base, exp = tmp_path / "base.yaml", tmp_path / "exp.yaml"
    base.write_text(yaml.safe_dump({"seed": 4, "optim": {"lr": 0.5}}))
    exp.write_text(yaml.safe_dump({"optim": {"momentum": 0.1}, "seed": 5}))
    target = [f"{MODELS}:Train.fit", f"infra.folder={tmp_path / 'cache'}", "--json"]
    for seed, overrides in ((5, []), (6, ["seed=6"])):  # (the overrides go last)
        files = ["--config", str(base), "--config", str(exp)]
        assert main(["plan", *target, *files, *overrides]) == 0
        (node,) = json.loads(capsys.readouterr().out)["nodes"]
        optim = Optim(lr=0.5, momentum=0.1)
        expected = Train(seed=seed, optim=optim, infra={"folder": tmp_path}).fit.node()
        assert node["uid"] == expected.uid, node["uid"]
    missing = tmp_path / "nothere.yaml"
    assert main(["plan", *target, "--config", str(base), "--config", str(missing)]) == 2
    assert f"--config {missing}: cannot read it" in capsys.readouterr().err


def test_cli_list_index_overrides_keep_the_other_fields_and_any_order(tmp_path: Path) -> None:
    """A review: indexing a list of sub-models copied it through a json export (secrets
    came back as "**********", excluded fields at their defaults); and the list indexed
    under a sub-model depended on the order of the overrides (the field's default
    instance, or the class's defaults once an earlier override made a dict of it)."""
    from exca.ops.cli import _target_node

    def built(*overrides: str) -> tp.Any:
        node = _target_node(
            f"{__name__}:Indexed.fit", None, [f"infra.folder={tmp_path}", *overrides]
        )
        return node.function.owner

    source = built("sources.0.path=b").sources[0]
    assert (source.path, source.token.get_secret_value(), source.kept) == ("b", "real-token", 5)
    one, two = built("net.lr=2", "net.layers.0.size=1"), built("net.layers.0.size=1", "net.lr=2")
    assert one.net == two.net == Net(lr=2, layers=[Layer(size=1), Layer(size=8)])


def test_cli_overrides_index_the_lists_of_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """seeds.0=5 replaced the default list [0, 1] with {'0': 5}: a ValidationError
    ("seeds: Input should be a valid list"), though dotted keys index lists."""
    from exca.ops.cli import main

    root = tmp_path / "cache"
    target = f"{__name__}:Seeded.fit"
    assert Seeded(seeds=[5, 1], infra={"folder": root}).fit() == 12
    result = cli("explain", target, f"infra.folder={root}", "seeds.0=5", check=True)
    assert "Nothing to compute" in result.stdout  # (the config computed from Python)

    def uid(*overrides: str) -> str:
        assert main(["plan", target, "--json", f"infra.folder={root}", *overrides]) == 0
        (entry,) = json.loads(capsys.readouterr().out)["nodes"]
        return str(entry["uid"])

    def uid_of(obj: Seeded) -> str:
        return str(obj.fit.node().uid)

    layers = [Layer(), Layer(size=7)]
    assert uid("layers.1.size=7") == uid_of(Seeded(layers=layers))  # (in a list of models)
    assert uid("seeds.1=3", "layers.1.size=7") == uid_of(Seeded(seeds=[0, 3], layers=layers))
    assert uid("seeds=[1,2,3]", "seeds.2=5") == uid_of(Seeded(seeds=[1, 2, 5]))
    # a list of the --config file
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"seeds": [3, 4, 5]}))
    assert uid("--config", str(cfg), "seeds.2=9") == uid_of(Seeded(seeds=[3, 4, 9]))
    # past the end of a list: an error naming the key, the length, what to do
    for argv, source in (
        (["seeds.5=1"], "the class default, now [0, 1]"),
        (["--config", str(cfg), "seeds.3=1"], "given before (--config or an override)"),
    ):
        assert main(["plan", target, f"infra.folder={root}", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert f"override {argv[-1]!r}: index {argv[-1][6]} is out of range of 'seeds', " in err
        assert source in err and "give the whole list, e.g. 'seeds=[...]'" in err, err
        assert "Traceback" not in err
    result = cli("plan", target, f"infra.folder={root}", "seeds.2=1")
    assert result.returncode == 2 and "a list of 2 item(s) (indices 0 to 1;" in result.stderr


def test_clone_obj_past_the_end_of_a_list_names_the_key() -> None:
    """clone_obj({'seeds.2': 7}) raised a bare "IndexError: list index out of range"."""
    obj = Seeded()
    assert obj.infra.clone_obj({"seeds.1": 7}).seeds == [0, 7]
    message = (
        r"Index 2 of key 'seeds\.2' is out of range: 'seeds' is a list of 2 item\(s\) "
        r"\(indices 0 to 1\); to change its length, set the whole list \('seeds': \[\.\.\.\]\)"
    )
    with pytest.raises(IndexError, match=message):
        obj.infra.clone_obj({"seeds.2": 7})
    with pytest.raises(
        IndexError, match=r"Index 3 of key 'layers\.3\.size' is out of range: 'layers'"
    ):
        obj.infra.clone_obj({"layers.3.size": 7})


def test_a_target_written_with_dots_only_gets_the_colon_form(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`exca plan myexp.Train.fit,1` (the step as `exca list` prints it, copied) said only
    that TARGET must look like package.module:Class.method: the user had to work out
    where the colon goes. The error names the TARGET meant; one it cannot guess is as
    before."""
    from exca.ops.cli import main

    cases = {
        "myexp.Train.fit,1": "did you mean 'myexp:Train.fit'? (`exca list` names steps",
        "pkg.sub.Train.fit": "did you mean 'pkg.sub:Train.fit'?",
        "pkg.targets": "did you mean 'pkg:targets'?",
    }
    for target, said in cases.items():
        assert main(["plan", target]) == 2
        err = capsys.readouterr().err
        assert "TARGET must look like" in err and said in err, (target, err)
    for target in ("myexp", "myexp:", "./myexp.py"):
        assert main(["explain", target]) == 2
        err = capsys.readouterr().err
        assert "TARGET must look like" in err and "did you mean" not in err, (target, err)


def test_cli_bad_input_gets_a_message_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from exca.ops.cli import main

    root = tmp_path / "cache"
    Train(infra={"folder": root}).fit()
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1\n")
    cases = {
        ("plan", f"{MODELS}:Squares.square", f"infra.folder={root}"): "from Python",
        ("plan", f"{MODELS}:Total.total", f"infra.folder={root}"): "from Python",
        ("plan", f"{MODELS}:Train.fit", "optim.lr=[1"): "optim.lr=[1",
        ("plan", f"{MODELS}:Train.fit", "--config", str(listed)): "list.yaml",
        ("plan", f"{MODELS}:Train.fit", "--config", str(broken)): "broken.yaml",
        ("plan", "no_colon.Train.fit"): "TARGET must look like",
        ("plan", f"{MODELS}:Train.fit", "=3"): "override '=3': expected key=value",
        ("plan", f"{MODELS}:Train.fitt"): "no method 'fitt' (check TARGET); decorated methods "
        "of Train: fit",
        ("list", str(tmp_path / "nope")): "no such folder",
        ("list", str(listed)): "list.yaml: not a folder (give a cache folder)",
        ("logs", str(tmp_path / "nope")): "no such folder",
        ("clean", str(tmp_path / "nope"), "versions"): "no such folder",
        ("clean", str(root), "node"): "give the node folders",
        ("clean", str(root), "node", str(tmp_path / "nope")): "no such folder",
    }
    for argv, message in cases.items():
        assert main(list(argv)) == 2, argv
        err = capsys.readouterr().err
        assert "exca: error:" in err and message in err, (argv, err)
    # a typo in a key: pydantic names it; no hint about quoting strings (it misled)
    assert main(["plan", f"{MODELS}:Train.fit", "optim.lrr=0.3"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "Extra inputs are not permitted" in err and "quote" not in err
    with pytest.raises(SystemExit) as exit_info:
        main(["clean"])  # (the optional node folders are not named among the missing)
    assert exit_info.value.code == 2
    assert "required: root, what (see" in capsys.readouterr().err.splitlines()[-1]
    # a --config file may replace a sub-config ("=replace=", as confdict.md shows)
    replacing = tmp_path / "replace.yaml"
    replacing.write_text(f"infra:\n  folder: {root}\noptim:\n  =replace=: true\n  lr: 0.5\n")
    assert main(["plan", f"{MODELS}:Train.fit", "--config", str(replacing)]) == 0
    assert "optim.lr=0.50" in capsys.readouterr().out
    # a --where value that is not yaml is compared as text (no error)
    assert main(["list", str(root), "--where", "optim.lr=[1"]) == 0
    assert "No cached node" in capsys.readouterr().out
    # the step as `exca list` prints it (with its version) selects the method
    Train(infra={"folder": root, "version": "2"}).fit()
    assert main(["clean", str(root), "versions", "--step", f"{MODELS}.Train.fit,2"]) == 0
    assert "Train.fit,1" in capsys.readouterr().out


PIPELINE_ROOT: list[Path] = []  # (where pipeline_targets caches: set by the test)


def pipeline_targets() -> exca.graph.Node:
    """A CLI TARGET naming a function: a task fed by a map (not made from a config)."""
    root = PIPELINE_ROOT[0]
    squares = Squares(infra={"folder": root}).square.node([1, 2, 3])
    return Total(infra={"folder": root}).total.node(squares)


def pipeline_target_list() -> list[exca.graph.Node]:
    return [pipeline_targets(), Train(infra={"folder": PIPELINE_ROOT[0]}).fit.node()]


NOT_NODES = 3


def pipeline_target_generator() -> tp.Iterator[exca.graph.Node]:
    """A TARGET function yielding its nodes."""
    yield pipeline_targets()
    yield Train(infra={"folder": PIPELINE_ROOT[0]}).fit.node()


def pipeline_target_dict_values() -> tp.Iterable[exca.graph.Node]:
    return {"total": pipeline_targets()}.values()


def pipeline_targets_by_name() -> dict[str, exca.graph.Node]:
    """A TARGET function returning its nodes by name."""
    return {
        "total": pipeline_targets(),
        "train": Train(infra={"folder": PIPELINE_ROOT[0]}).fit.node(),
    }


def targets_by_name_holding_a_str() -> dict[str, tp.Any]:
    return {"total": pipeline_targets(), "train": "Train.fit"}


def no_target_by_name() -> dict[str, exca.graph.Node]:
    return {}


def no_target() -> tp.Iterator[exca.graph.Node]:
    yield from ()


def empty_targets() -> list[exca.graph.Node]:
    return []


def failing_target_generator() -> tp.Iterator[exca.graph.Node]:
    yield pipeline_targets()
    raise RuntimeError("no more configs")


def not_only_nodes() -> tp.Iterator[tp.Any]:
    yield pipeline_targets()
    yield "train"


def targets_of(folder: str) -> list[exca.graph.Node]:  # (a TARGET needing an argument)
    return [Train(infra={"folder": folder}).fit.node()]


def pipeline_ensemble() -> exca.graph.Node:
    """A CLI TARGET: an Ensemble fed by a list and a dict of six trainings (and a value)."""
    root = PIPELINE_ROOT[0]
    models = [Train(seed=s, infra={"folder": root}).fit.node() for s in range(6)]
    named = {f"s{s}": Train(seed=s, infra={"folder": root}).fit.node() for s in range(5)}
    return Ensemble(infra={"folder": root}).vote.node(models, {**named, "bias": 0.5})


def test_cli_plan_json_gives_each_input_by_name_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`exca plan --json` gave the inputs of a node as the table's text only, cut past two
    entries (`{s0: Train.fit,1/default, s1: ..., +4 more}`): a script could not tell
    what fed it. Its ``input_uids`` map each input's name to the uid of its node or value,
    or to a list (a dict, by key) of them, whole (a probe)."""
    from exca.ops.cli import main

    monkeypatch.setattr(sys.modules[__name__], "PIPELINE_ROOT", [tmp_path / "cache"])
    assert main(["plan", f"{__name__}:pipeline_ensemble", "--json"]) == 0
    nodes = {n["uid"]: n for n in json.loads(capsys.readouterr().out)["nodes"]}
    target = pipeline_ensemble()
    trainings = [Train(seed=s, infra={"folder": tmp_path / "cache"}).fit.node() for s in range(6)]
    entry = nodes[target.uid]
    assert "+4 more" in entry["inputs"]  # (the display text, as the table shows it)
    bias = entry["input_uids"]["named"]["bias"]
    assert entry["input_uids"] == {
        "models": [t.uid for t in trainings],
        "named": {**{f"s{s}": trainings[s].uid for s in range(5)}, "bias": bias},
    }
    assert bias == exca.graph.node.Value.of(0.5).uid
    assert all(uid in nodes for uid in entry["input_uids"]["models"])  # (joined by uid)
    assert nodes[trainings[0].uid]["input_uids"] is None  # (no inputs)


def test_cli_plan_mermaid_writes_the_picture_or_names_the_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`exca plan --mermaid FILE` into a folder that does not exist (or a folder) printed
    the plan, then "exca: error: FileNotFoundError: [Errno 2] No such file or directory:
    ..." naming no option. The error names --mermaid and why, before any plan is printed;
    a path it can write gets the flowchart."""
    from exca.ops.cli import main

    monkeypatch.setattr(sys.modules[__name__], "PIPELINE_ROOT", [tmp_path / "cache"])
    picture = tmp_path / "dag.mmd"
    assert main(["plan", f"{__name__}:pipeline_targets", "--mermaid", str(picture)]) == 0
    assert capsys.readouterr().out.startswith("Plan: 2 node(s)")
    assert picture.read_text().startswith("flowchart TD")
    for bad, why in ((tmp_path / "nowhere" / "dag.mmd", "No such file"), (tmp_path, "Is a dir")):
        assert main(["plan", f"{__name__}:pipeline_targets", "--mermaid", str(bad)]) == 2
        out, err = capsys.readouterr()
        said = f"exca: error: ValueError: --mermaid {bad}: cannot write it ({why}"
        assert said in err and out == "", (out, err)


def pipeline_failing() -> list[exca.graph.Node]:
    """A CLI TARGET: a training that fails, and the aggregation of a map (cached)."""
    failing = Train(seed=3, fail=True, infra={"folder": PIPELINE_ROOT[0]}).fit.node()
    return [failing, pipeline_targets()]


def test_cli_plan_and_explain_preview_another_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`exca plan` / `exca explain` of a function returning nodes could not say what
    mode='retry' (or 'force') would recompute: the nodes are built by its code, no
    infra.mode override applies (a probe). --mode gives the targets that mode (their
    upstream nodes keep theirs), and computes nothing."""
    from exca.ops.cli import main

    root = tmp_path / "cache"
    monkeypatch.setattr(sys.modules[__name__], "PIPELINE_ROOT", [root])
    failing, total = pipeline_failing()
    with pytest.raises(ValueError, match="cannot fit"):
        failing.result()
    assert total.result() == 28
    capsys.readouterr()  # (what the training printed)
    before = tree_hash(root)

    def plan(*options: str) -> dict[str, tuple[str, str]]:
        assert main(["plan", f"{__name__}:pipeline_failing", "--json", *options]) == 0
        nodes = json.loads(capsys.readouterr().out)["nodes"]
        return {n["uid"]: (n["status"], n["action"]) for n in nodes}

    squares = total.upstream[0]
    assert plan() == {
        failing.uid: ("cached error", "fail"),
        squares.uid: ("not needed", "skip"),
        total.uid: ("cached", "reuse"),
    }
    retried = plan("--mode", "retry")
    assert retried[failing.uid] == ("cached error", "compute")  # (what retry recomputes)
    assert retried[total.uid] == ("cached", "reuse")
    forced = plan("--mode", "force")
    assert forced[total.uid] == ("forced", "compute")
    assert forced[squares.uid] == ("cached", "reuse")  # (upstream: its own mode)
    assert main(["explain", f"{__name__}:pipeline_failing", "--mode", "retry"]) == 0
    out = capsys.readouterr().out
    assert "compute" in out and failing.uid in out, out
    assert tree_hash(root) == before  # (read-only: computes nothing, writes nothing)
    assert plan() == {
        failing.uid: ("cached error", "fail"),
        squares.uid: ("not needed", "skip"),
        total.uid: ("cached", "reuse"),
    }


def test_cli_check_takes_mode_as_plan_and_explain_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`exca check` had no --mode while plan and explain had it (exit 2, "unrecognized
    arguments"): the same options could not be given to the three commands. It takes it,
    with the same help and the same error for a bad value, naming the allowed ones."""
    from exca.ops.cli import main

    _made_up_cluster(monkeypatch)
    cfg = tmp_path / "cfg.yaml"
    infra = {"folder": str(tmp_path / "cache"), "cluster": "slurm", "gpus_per_node": 9}
    cfg.write_text(yaml.safe_dump({"infra": {**infra, "slurm_partition": "gpu"}}))
    target = [f"{__name__}:Checked.run", "--config", str(cfg)]
    for mode in ("cached", "retry", "force", "read-only"):
        assert main(["check", *target, "--mode", mode]) == 1, mode
        out = capsys.readouterr().out
        assert "gpus_per_node=9" in out, out
    helps, errors = {}, {}
    for command in ("plan", "explain", "check"):
        with pytest.raises(SystemExit) as exit_:
            main([command, *target, "--mode", "retried"])
        assert exit_.value.code == 2
        errors[command] = capsys.readouterr().err.splitlines()[-1]
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        helps[command] = out[out.rindex("--mode {") :].split(" --", 1)[0]  # (options)
    assert "invalid choice: 'retried'" in errors["check"], errors
    assert "'cached', 'retry', 'force', 'read-only'" in errors["check"], errors
    said = {e.split(":", 1)[1].rsplit(" (see `exca", 1)[0] for e in errors.values()}
    assert len(said) == 1, errors  # (but the prog, and its --help)
    assert len(set(helps.values())) == 1 and "mode='retry'" in helps["check"], helps


def targets_raising_value_error() -> list[exca.graph.Node]:
    """A CLI TARGET whose code raises (a config file it reads, a value it checks)."""
    raise ValueError("no such experiment: exp12")


def targets_raising_key_error() -> list[exca.graph.Node]:
    return [{"a": 1}["b"]]


def test_cli_target_function_raising_says_it_raised(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A TARGET function raising a ValueError (RuntimeError, OSError...) ended with
    "exca: error: ValueError: no such experiment: exp12", as if exca refused something:
    nothing said the function raised it, nor where (a probe). The error says so, with the
    file and line; another error type keeps its traceback, with a note naming TARGET."""
    from exca.ops.cli import main

    target = f"{__name__}:targets_raising_value_error"
    assert main(["plan", target]) == 2
    err = capsys.readouterr().err
    said = (
        f"exca: error: ValueError: calling targets_raising_value_error(), the function of "
        f"TARGET {target}, failed: ValueError: no such experiment: exp12 (raised at {__file__}:"
    )
    assert err.startswith(said), err
    with pytest.raises(KeyError) as error:
        main(["explain", f"{__name__}:targets_raising_key_error"])
    assert error.value.__notes__ == [
        f"calling targets_raising_key_error(), the function of TARGET "
        f"{__name__}:targets_raising_key_error, failed"
    ]


def test_cli_target_naming_a_function_returning_nodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pipeline's nodes with inputs cannot be built from a config: plan, explain and
    check take a function of the module returning them (they could not address them)."""
    from exca.ops.cli import main

    monkeypatch.setattr(sys.modules[__name__], "PIPELINE_ROOT", [tmp_path / "cache"])
    assert main(["plan", f"{__name__}:pipeline_targets"]) == 0
    assert capsys.readouterr().out.startswith("Plan: 2 node(s): 2 missing")
    assert pipeline_targets().result() == 28
    assert main(["plan", f"{__name__}:pipeline_target_list"]) == 0
    assert capsys.readouterr().out.startswith("Plan: 3 node(s): 1 missing, 1 cached, 1 not needed")
    assert main(["explain", f"{__name__}:pipeline_target_list"]) == 0
    assert "Train.fit,1/default" in capsys.readouterr().out
    assert main(["check", f"{__name__}:pipeline_targets"]) == 0
    assert "No node goes to Slurm" in capsys.readouterr().out
    cases = {
        (f"{__name__}:NOT_NODES",): "gave int (3), expected a node or a list of nodes",
        (f"{__name__}:targets_of",): "called with no argument (missing a required argument",
        (f"{__name__}:nothing_here",): "has no nothing_here (check TARGET)",
        (f"{__name__}:pipeline_targets", "scale=3"): "takes no --config nor key=value",
        # an option the command has not (explain's, a typo): said so, not an override
        (f"{__name__}:pipeline_targets", "--folder", "x"): (
            "'--folder' is not an option of this command: see --help"
        ),
        # (written with '=': it said 'takes no --config nor key=value overrides')
        (f"{__name__}:pipeline_targets", "--folder=x"): (
            "'--folder' (in '--folder=x') is not an option of this command: see --help"
        ),
        # a setting of the infra given as the config's: what to write instead
        (f"{MODELS}:Train.fit", "--folder=x"): (
            "folder is a setting of the infra, not of the config: write infra.folder=VALUE"
        ),
        (f"{MODELS}:Train.fit", "cluster=local"): "write infra.cluster=VALUE",
        (f"{MODELS}:Train", "seed=3"): "Train is a class: name its decorated method",
        (f"{__name__}:",): "TARGET must look like",
    }
    for argv, message in cases.items():
        assert main(["plan", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert "exca: error:" in err and message in err, (argv, err)


def test_cli_target_function_returning_any_iterable_of_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A TARGET function returning a generator of nodes (or any iterable but a list or a
    tuple) was refused, "expected a node or a list of nodes" (a probe); an empty list said
    "gave list ([]), expected ...". Any iterable of nodes is taken; one holding no node
    says the function returned no node; an error raised while a generator runs is the
    function's, said as such."""
    from exca.ops.cli import main

    monkeypatch.setattr(sys.modules[__name__], "PIPELINE_ROOT", [tmp_path / "cache"])
    assert main(["plan", f"{__name__}:pipeline_target_generator"]) == 0
    assert capsys.readouterr().out.startswith("Plan: 3 node(s): 3 missing")
    assert main(["plan", f"{__name__}:pipeline_target_dict_values"]) == 0
    assert capsys.readouterr().out.startswith("Plan: 2 node(s): 2 missing")
    cases = {
        "no_target": "no_target() returned no node (an empty generator)",
        "empty_targets": "empty_targets() returned no node (an empty list)",
        "failing_target_generator": (
            "iterating what failing_target_generator() returned, for TARGET "
            f"{__name__}:failing_target_generator, failed: RuntimeError: no more configs "
            f"(raised at {__file__}:"
        ),
        "not_only_nodes": "gave generator holding str ('train'), expected a node",
    }
    for name, message in cases.items():
        assert main(["plan", f"{__name__}:{name}"]) == 2, name
        err = capsys.readouterr().err
        assert "exca: error:" in err and message in err, (name, err)


def test_cli_target_function_returning_a_dict_plans_its_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A TARGET function returning its nodes by name ({"total": node, "train": node}) was
    iterated by keys: "gave dict holding str ('total'), expected a node or a list of
    nodes", though it holds nothing but nodes. A dict's values are the nodes now; a value
    that is no node is named by its key, and an empty dict says no node was returned."""
    from exca.ops.cli import main

    monkeypatch.setattr(sys.modules[__name__], "PIPELINE_ROOT", [tmp_path / "cache"])
    assert main(["plan", f"{__name__}:pipeline_targets_by_name"]) == 0
    assert capsys.readouterr().out.startswith("Plan: 3 node(s): 3 missing")
    cases = {
        "targets_by_name_holding_a_str": (
            "targets_by_name_holding_a_str() returned a dict whose value for 'train' is str "
            "('Train.fit'), not a node"
        ),
        "no_target_by_name": "no_target_by_name() returned no node (an empty dict)",
    }
    for name, message in cases.items():
        assert main(["plan", f"{__name__}:{name}"]) == 2, name
        err = capsys.readouterr().err
        assert "exca: error:" in err and message in err, (name, err)


class OwnInfraName(pydantic.BaseModel):
    """A task whose infra field is not named "infra"."""

    stage: exca.TaskInfra = exca.TaskInfra(version="1")

    @stage.apply
    def run(self) -> int:
        return 1


def test_cli_a_cluster_without_folder_says_the_override_to_give(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`exca plan T infra.cluster=local` (no folder) said pydantic's "set infra folder=...",
    what a python caller writes, not the override the command line takes (a probe). It
    says `infra.folder=PATH`, with the name of the TARGET's infra field."""
    from exca.ops.cli import main

    cases = {
        (f"{MODELS}:Train.fit", "infra.cluster=local"): "give infra.folder=PATH",
        (f"{__name__}:OwnInfraName.run", "stage.cluster=local"): "give stage.folder=PATH",
        (f"{__name__}:OwnInfraName.run", "stage.workdir.copied=[.]"): "give stage.folder=PATH",
    }
    for argv, message in cases.items():
        for command in ("plan", "explain"):
            assert main([command, *argv]) == 2, argv
            err = capsys.readouterr().err
            assert "exca: error:" in err and message in err, (argv, err)
            assert "set infra folder" not in err and "set folder" not in err, err


class Sgd(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    momentum: float = 0.9


class Typoed(pydantic.BaseModel):
    """Sub-configs in a field, a list, a dict, an optional field and a union."""

    optim: Optim = Optim()
    layers: list[Optim] = [Optim()]
    heads: dict[str, Optim] = {}
    maybe: Optim | None = None
    either: Optim | Sgd = Sgd()
    epochs: int = 3
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        return self.epochs


def test_cli_config_typo_names_the_fields_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key the config does not have (a typo: `epoch=4`, `optim.lrr=0.1`) ended with
    pydantic's "Extra inputs are not permitted" alone: nothing said which keys there are.
    The error names the model that has no such field and the close names, or its fields
    (also in a list item, a dict value, an optional field, a union's members)."""
    from exca.ops.cli import main

    cases = {
        "optim.lrr=0.1": "optim.lrr: Optim has no field 'lrr': did you mean 'lr'?",
        "optim.zzz=0.1": "optim.zzz: Optim has no field 'zzz'; its fields: lr, momentum",
        "layers.0.lrr=0.1": "layers.0.lrr: Optim has no field 'lrr': did you mean 'lr'?",
        "heads={lr: {lrr: 1}}": "heads.lr.lrr: Optim has no field 'lrr': did you mean 'lr'?",
        "maybe={lrr: 1}": "maybe.lrr: Optim has no field 'lrr': did you mean 'lr'?",
        "either={momentm: 1}": "either.Sgd.momentm: Sgd has no field 'momentm': did you mean",
    }
    for override, message in cases.items():
        argv = ["plan", f"{__name__}:Typoed.run", f"infra.folder={tmp_path}", override]
        assert main(argv) == 2, override
        err = capsys.readouterr().err
        where, said = message.split(": ", 1)  # (said once, in the error's line of that key)
        assert "exca: error:" in err and f"\n{where}\n" in err, (override, err)
        assert err.count(said) == 1, (override, err)
    # a key of the config itself: its error says the close names, once
    assert main(["plan", f"{__name__}:Typoed.run", f"infra.folder={tmp_path}", "epoch=4"]) == 2
    err = capsys.readouterr().err
    assert err.count("Typoed has no field 'epoch': did you mean 'epochs'?") == 1, err
    # a key of the infra: its own error says the close names, once
    assert main(["plan", f"{__name__}:Typoed.run", "infra.clustr=local"]) == 2
    err = capsys.readouterr().err
    assert err.count("TaskInfra has no field 'clustr': did you mean 'cluster'?") == 1, err
    # a setting of the infra: said as before, once
    assert main(["plan", f"{__name__}:Typoed.run", "folder=x"]) == 2
    err = capsys.readouterr().err
    assert "write infra.folder=VALUE" in err and "has no field" not in err, err


class Helped(pydantic.BaseModel):
    """A decorated method next to a plain one (not a TARGET)."""

    name: str = "x"
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def label(self) -> str:
        return self.name

    def helper(self) -> int:
        return 1


class Relabelled(Helped):
    def label(self) -> str:  # (overridden without a decorator)
        return self.name.upper()


def test_cli_target_not_decorated(capsys: pytest.CaptureFixture[str]) -> None:
    from exca.ops.cli import main

    for method in ("helper", "model_dump"):  # (model_dump: a method every config has)
        assert main(["plan", f"{__name__}:Helped.{method}"]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "not decorated with an infra" in err, err
        assert "decorated methods of Helped: label" in err, err
    # a subclass overriding a decorated method without decorating it: said so
    assert main(["plan", f"{__name__}:Relabelled.label"]) == 2
    err = capsys.readouterr().err
    assert "(Relabelled overrides Helped.label, which is)" in err, err
    assert "decorated methods of Relabelled: none" in err, err


def test_cli_misformed_overrides_get_the_key_value_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from exca.ops.cli import main

    root = tmp_path / "cache"
    target = f"{MODELS}:Train.fit"
    for bad in (["optim.lr"], ["--optim.lr", "0.3"], ["--seed"]):
        assert main(["plan", target, f"infra.folder={root}", *bad]) == 2, bad
        err = capsys.readouterr().err
        assert f"override {bad[0]!r}: expected key=value, e.g. optim.lr=0.01" in err, err
    # a leading -- is accepted, among the options of the command (in any order)
    argv = ["plan", target, "--json", f"--infra.folder={root}", "--optim.lr=0.3"]
    assert main(argv) == 0
    (entry,) = json.loads(capsys.readouterr().out)["nodes"]
    assert "optim.lr=0.3" in entry["uid"]
    # a yaml word given for a str field: pydantic's message, and how to quote it
    assert main(["plan", f"{__name__}:Labelled.label", f"infra.folder={root}", "name=no"]) == 2
    err = capsys.readouterr().err
    assert "name\n  Input should be a valid string" in err, err
    assert """overrides are read as yaml; for a string, quote it: 'name="no"'""" in err, err
    # a number out of its field's range: pydantic's message only (quoting would not help)
    argv = ["plan", target, f"infra.folder={root}", "infra.timeout_min=0"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "greater than or equal to 1" in err and "quote it" not in err, err
    # other commands take no override
    with pytest.raises(SystemExit) as exit_info:
        main(["list", str(tmp_path), "seed=1"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: seed=1" in capsys.readouterr().err


def test_cli_plan_and_explain_warn_of_a_missing_cache_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from exca.ops.cli import main

    missing = tmp_path / "no_cache"
    for command in ("plan", "explain"):
        for extra in ([], ["--json"]):
            argv = [command, f"{MODELS}:Train.fit", f"infra.folder={missing}", *extra]
            assert main(argv) == 0, argv
            out, err = capsys.readouterr()
            assert f"cache folder {missing} does not exist" in err, err
            if extra:
                json.loads(out)  # (the warning stays out of the json)
    assert not missing.exists()  # (still a dry run)
    root = tmp_path / "cache"
    Train(infra={"folder": root}).fit()
    assert main(["plan", f"{MODELS}:Train.fit", f"infra.folder={root}"]) == 0
    assert "does not exist" not in capsys.readouterr().err


def test_cli_target_module_that_fails_to_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from exca.ops.cli import main

    (tmp_path / "exca_cli_broken.py").write_text("raise ImportError('no module named torch')\n")
    monkeypatch.chdir(tmp_path)  # (TARGET modules are imported from the current folder)
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert main(["plan", "exca_cli_broken:X.run"]) == 2
    err = capsys.readouterr().err
    assert "importing 'exca_cli_broken', the module of TARGET" in err, err
    assert "no module named torch" in err, err
    # where it was raised (a one-line message: it said nothing of the file and line)
    assert f"(raised at {tmp_path / 'exca_cli_broken.py'}:1)" in err, err
    assert main(["plan", "exca_cli_nowhere:X.run"]) == 2
    err = capsys.readouterr().err
    assert "importing 'exca_cli_nowhere', the module of TARGET" in err, err
    assert "No module named 'exca_cli_nowhere'" in err, err
    (tmp_path / "exca_cli_typo.py").write_text("x = (\n")
    assert main(["plan", "exca_cli_typo:X.run"]) == 2
    err = capsys.readouterr().err
    assert "importing 'exca_cli_typo', the module of TARGET" in err, err
    assert "SyntaxError" in err and "exca_cli_typo.py, line 1" in err and "Traceback" not in err
    # the part before the method names no class: a message, not an AttributeError
    (tmp_path / "exca_cli_notclass.py").write_text("import pydantic\n")
    assert main(["plan", "exca_cli_notclass:pydantic.BaseModel"]) == 2
    err = capsys.readouterr().err
    assert "pydantic in exca_cli_notclass is not a class" in err, err


def test_exca_ops_loads_on_first_use() -> None:
    """`exca.ops.clean.garbage(...)`, as the docs write it, after a bare `import exca`."""
    code = (
        "import sys, exca; assert 'exca.ops' not in sys.modules; "
        "print(exca.ops.clean.garbage.__name__, exca.ops.inspect.__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["garbage", "inspect"]


def test_explain_a_task_with_inputs(tmp_path: Path) -> None:
    """The nearest cached call of a method with inputs: its config and input values."""
    root = tmp_path / "cache"
    source = Source(n=4, infra={"folder": root}).make.node()
    assert Total(infra={"folder": root}).total.node(source).result() == 12
    other_scale = Total(scale=3, infra={"folder": root}).total.node(source)
    (explanation,) = [e for e in exca.ops.explain(other_scale) if e.uid == other_scale.uid]
    assert explanation.diff == [("scale", 2, 3)]
    assert explanation.nearest is not None and "inputs-" in explanation.nearest
    other_input = Total(infra={"folder": root}).total.node(
        Source(n=5, infra={"folder": root}).make.node()
    )
    (explanation,) = [e for e in exca.ops.explain(other_input) if e.uid == other_input.uid]
    assert explanation.diff == [("inputs.values.n", 4, 5)]  # (the upstream's config)


class Score(pydantic.BaseModel):
    """Downstream of one training (an input: its result)."""

    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def score(self, w: float) -> float:
        return -w


def test_explain_compares_inputs_by_their_upstream_configs(tmp_path: Path) -> None:
    """After a change of the trainings of a sweep, each evaluation is compared with the
    evaluation of its own training: the inputs' uids were compared as strings, so every
    cached evaluation was as near, and each explanation named the first by folder name
    (`inputs.w '...lr=0.90...' → '...momentum=0.5...'`, read as "my lr changed") (a probe)."""
    root = tmp_path / "cache"

    def scores(momentum: float) -> list[exca.graph.Node]:
        return [
            Score(infra={"folder": root}).score.node(
                Train(optim={"lr": lr, "momentum": momentum}, infra={"folder": root}).fit.node()
            )
            for lr in (0.01, 0.5, 0.9)
        ]

    exca.graph.run(*scores(0.9))
    explanations = {e.uid: e for e in exca.ops.explain(*scores(0.5))}
    for new, cached in zip(scores(0.5), scores(0.9), strict=True):
        why = explanations[new.uid]
        assert (why.status, why.action) == ("missing", "compute")
        assert why.nearest == str(cached.folder) and why.equally_near == 0
        assert why.diff == [("inputs.w.optim.momentum", 0.9, 0.5)]
        assert why.summary() == (
            "config differs from the nearest cached one: inputs.w.optim.momentum 0.9 → 0.5"
        )
    # an input of an input, the same way: a score of the scores
    again = [Score(infra={"folder": tmp_path / "again"}).score.node(n) for n in scores(0.9)]
    exca.graph.run(*again)
    wanted = Score(infra={"folder": tmp_path / "again"}).score.node(scores(0.5)[1])
    (why,) = [e for e in exca.ops.explain(wanted) if e.uid == wanted.uid]
    assert why.nearest == str(again[1].folder) and why.equally_near == 0
    assert why.diff == [("inputs.w.inputs.w.optim.momentum", 0.9, 0.5)]


class Gather(pydantic.BaseModel):
    """Downstream of a sweep: a list or a dict of its scores."""

    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def gather(self, scores: tp.Any) -> float:
        return max(scores.values() if isinstance(scores, dict) else scores)


def test_explain_compares_a_list_or_dict_of_nodes_entry_by_entry(tmp_path: Path) -> None:
    """An aggregation of a sweep (a dict or a list of nodes as input) was compared with
    the cached one as one uid string: the explanation showed both whole lists of uids (a
    few kB for a sweep) and not which entry changed, nor how (a probe)."""
    root = tmp_path / "cache"

    def scores(momentum: float, lrs: tp.Sequence[float]) -> dict[str, exca.graph.Node]:
        return {
            f"lr={lr}": Score(infra={"folder": root}).score.node(
                Train(optim={"lr": lr, "momentum": momentum}, infra={"folder": root}).fit.node()
            )
            for lr in lrs
        }

    before = scores(0.9, (0.01, 0.5))
    cached = {
        "dict": Gather(infra={"folder": root}).gather.node(before),
        "list": Gather(infra={"folder": root}).gather.node(list(before.values())),
    }
    exca.graph.run(*cached.values())
    # the trainings' momentum changed: each entry says how, through its own inputs (and
    # the nearest is the call given the same kind of input)
    after = scores(0.5, (0.01, 0.5))
    for kind, given, entries in (
        ("dict", after, ("lr=0.01", "lr=0.5")),
        ("list", list(after.values()), ("0", "1")),
    ):
        wanted = Gather(infra={"folder": root}).gather.node(given)
        (why,) = [e for e in exca.ops.explain(wanted) if e.uid == wanted.uid]
        assert why.nearest == str(cached[kind].folder)
        assert why.diff == [
            (f"inputs.scores[{entry}].inputs.w.optim.momentum", 0.9, 0.5) for entry in entries
        ]
        assert why.summary() == "config differs from the nearest cached one: " + ", ".join(
            f"inputs.scores[{entry}].inputs.w.optim.momentum 0.9 → 0.5" for entry in entries
        )
    # an entry added and one gone: named by their keys
    wanted = Gather(infra={"folder": root}).gather.node(scores(0.9, (0.01, 0.7)))
    (why,) = [e for e in exca.ops.explain(wanted) if e.uid == wanted.uid]
    assert [(key, a == "<absent>", b == "<absent>") for key, a, b in why.diff] == [
        ("inputs.scores[lr=0.5]", False, True),
        ("inputs.scores[lr=0.7]", True, False),
    ]


def test_explain_version_change(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    Train(seed=1, infra={"folder": root}).fit()
    bumped = Train(seed=1, infra={"folder": root, "version": "2"})
    (explanation,) = exca.ops.explain(bumped.fit.node())
    assert explanation.diff == [("version", "1", "2")]
    assert "version '1' → '2'" in explanation.summary()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"infra": {"folder": str(root), "version": "2"}, "seed": 1}))
    result = cli("explain", f"{MODELS}:Train.fit", "--config", cfg, check=True)
    assert "version '1' → '2'" in result.stdout


def test_explain_cached_error_and_forced(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    failing = Train(fail=True, infra={"folder": root})
    with pytest.raises(ValueError):
        failing.fit()
    (explanation,) = exca.ops.explain(Train(fail=True, infra={"folder": root}).fit.node())
    assert explanation.status == "cached error"
    # (it said "cached error" only: the error, and what recomputes it, were elsewhere)
    told = "cached error (ValueError: cannot fit seed=0): mode='retry' computes it again"
    assert explanation.summary() == told
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"infra": {"folder": str(root)}}))
    result = cli("explain", f"{MODELS}:Train.fit", "--config", cfg, "fail=true", check=True)
    assert told in result.stdout
    # forced
    Train(seed=2, infra={"folder": root}).fit()
    forced = Train(seed=2, infra={"folder": root, "mode": "force"})
    (explanation,) = exca.ops.explain(forced.fit.node())
    assert (explanation.status, explanation.action) == ("forced", "compute")
    assert "mode=force" in explanation.summary()
    result = cli(
        "explain",
        f"{MODELS}:Train.fit",
        "--config",
        cfg,
        "seed=2",
        "infra.mode=force",
        check=True,
    )
    assert "forced" in result.stdout


def _pipeline(root: Path) -> tuple[exca.graph.Node, exca.graph.Node]:
    source = Source(n=4, infra={"folder": root}).make.node()
    return source, Total(infra={"folder": root}).total.node(source)


def test_explain_stale_upstream(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    source, downstream = _pipeline(root)
    assert downstream.result() == 12
    # one run (another process) force-recomputes the upstream task only
    run_python(
        f"""
        import jobmodels_ops
        jobmodels_ops.Source(n=4, infra={{"folder": {str(root)!r}, "mode": "force"}}).make()
        """
    )
    entry = CacheDict(source.folder).entry("result")
    assert entry is not None
    stamp = datetime.datetime.fromtimestamp(entry.info["#meta"]["t"]).isoformat(timespec="seconds")
    source, downstream = _pipeline(root)
    (explanation,) = exca.ops.explain(downstream)
    assert explanation.uid == downstream.uid
    assert explanation.status == "stale"
    assert explanation.summary() == f"stale: upstream {source.uid} recomputed at {stamp}"


def test_explain_stale_with_nodes_built_before(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    _, downstream = _pipeline(root)
    assert downstream.result() == 12
    Source(n=4, infra={"folder": root, "mode": "force"}).make()  # another instance
    explanations = exca.ops.explain(downstream)
    assert [e.status for e in explanations] == ["stale"]


# --- clean -------------------------------------------------------------------------------------
def test_clean_without_downstream_says_what_computed_from_them_stays(tmp_path: Path) -> None:
    """Cleaning some trainings left the aggregation computed from them cached, without a
    word: the next run reused it and computed nothing (a researcher cleaning a bad
    learning rate saw a plan with nothing to compute). The preview, and the removal, now
    name what stays and that --downstream removes it too."""
    root = tmp_path / "cache"
    source, downstream = _pipeline(root)
    assert downstream.result() == 12
    assert source.folder is not None and downstream.folder is not None
    shown = str(downstream.folder.relative_to(root))
    for args in ([], ["--yes"]):
        text = cli("clean", root, "node", source.folder, *args, check=True).stdout
        assert f"Left: 1 node folder(s) computed from these ({shown})" in text, text
        assert "--downstream removes them too" in text
        if not args:
            assert "preview" in text
    assert not source.folder.exists() and downstream.folder.exists()
    plan = exca.graph.plan(_pipeline(root)[1])
    assert plan.counts() == {"cached": 1, "not needed": 1}  # (what the line warns of)
    Source(n=4, infra={"folder": root}).make()
    text = cli("clean", root, "node", source.folder, "--downstream", check=True).stdout
    assert "Left:" not in text  # (removed with them)


def test_clean_previews_remove_nothing(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    source, downstream = _pipeline(root)
    downstream.result()
    Train(seed=1, infra={"folder": root}).fit()
    Train(seed=1, infra={"folder": root, "version": "2"}).fit()
    Train(seed=2, infra={"folder": root, "cluster": "local"}).fit()
    (source.folder / "data").mkdir(exist_ok=True)  # small results are stored inline
    (source.folder / "data" / "save-tmp-0123456789ab-result.pkl").write_bytes(b"x" * 100)
    before = tree_hash(root)
    assert source.folder is not None
    previews = {
        "node": cli("clean", root, "node", source.folder, "--downstream", check=True),
        "versions": cli("clean", root, "versions", check=True),
        "orphans": cli("clean", root, "orphans", check=True),
        "logs": cli("clean", root, "logs", "--days", "0", check=True),
        "compact": cli("clean", root, "compact", check=True),
    }
    for what in ("node", "versions", "logs"):
        assert "item(s) to remove" in previews[what].stdout, previews[what].stdout
        assert "preview" in previews[what].stdout
    # and from Python: plans only
    plans = [
        clean.remove_nodes([source], downstream=True),
        clean.old_versions(root),
        clean.orphans(root, min_age_hours=0),
        clean.logs(root, older_than_days=0),
        clean.garbage(root, [source]),
    ]
    assert all(plan.removals for plan in plans)
    assert tree_hash(root) == before


def test_clean_node_downstream(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    source4, down4 = _pipeline(root)
    source5 = Source(n=5, infra={"folder": root}).make.node()
    down5 = Total(infra={"folder": root}).total.node(source5)
    assert (down4.result(), down5.result()) == (12, 20)
    Train(infra={"folder": root}).fit()
    before = tree_hash(root)
    assert source4.folder is not None and down4.folder is not None
    expected = {source4.folder: disk_bytes(source4.folder), down4.folder: disk_bytes(down4.folder)}
    preview = json.loads(
        cli("clean", root, "node", source4.folder, "--downstream", "--json", check=True).stdout
    )
    assert {Path(r["path"]): r["bytes"] for r in preview["removals"]} == expected
    assert preview["bytes"] == sum(expected.values())
    assert preview["kept"] == []
    assert tree_hash(root) == before
    text = cli("clean", root, "node", source4.folder, "--downstream", check=True).stdout
    assert str(down4.folder) in text and "computed from a removed node" in text
    # without --downstream: only the node
    only = clean.remove_nodes([source4.folder])
    assert [r.path for r in only.removals] == [source4.folder]
    done = json.loads(
        cli(
            "clean", root, "node", source4.folder, "--downstream", "--yes", "--json", check=True
        ).stdout
    )
    assert done["freed"] == sum(expected.values())
    assert not source4.folder.exists() and not down4.folder.exists()
    # the rest is intact and still cached
    source5 = Source(n=5, infra={"folder": root}).make.node()
    down5 = Total(infra={"folder": root}).total.node(source5)
    assert [e.status for e in exca.graph.plan(down5).entries] == ["not needed", "cached"]
    assert [i.status for i in exca.ops.inspect(root, step="Train")] == ["success"]


def test_clean_versions_downstream(tmp_path: Path) -> None:
    """`exca clean ROOT versions --downstream` was refused ("does not apply"): what was
    computed from an old version's results (the aggregation of the evaluations of version
    1) stayed. The preview lists it too, --yes removes it; the aggregation of the newest
    version stays cached (a probe)."""
    root = tmp_path / "cache"
    train = Train(infra={"folder": root}).fit.node()
    aggregates = {}
    evaluations = {}
    for version in ("1", "2"):
        evaluation = Evaluate(infra={"folder": root, "version": version}).score.node(train)
        evaluations[version] = evaluation
        aggregates[version] = Ensemble(infra={"folder": root}).vote.node(
            [evaluation], {"v": evaluation}
        )
        assert aggregates[version].result() == 2.0
    old, old_aggregate = evaluations["1"].folder, aggregates["1"].folder
    assert old is not None and old_aggregate is not None
    before = tree_hash(root)
    alone = json.loads(cli("clean", root, "versions", "--json", check=True).stdout)
    assert {Path(r["path"]) for r in alone["removals"]} == {old.parent}  # (its config)
    preview = json.loads(
        cli("clean", root, "versions", "--downstream", "--json", check=True).stdout
    )
    removals = {Path(r["path"]): r["reason"] for r in preview["removals"]}
    assert set(removals) == {old.parent, old_aggregate}, removals
    assert removals[old_aggregate] == "computed from an old version"
    text = cli("clean", root, "versions", "--downstream", check=True).stdout
    assert str(old_aggregate) in text and "computed from an old version" in text, text
    assert tree_hash(root) == before
    cli("clean", root, "versions", "--downstream", "--yes", check=True)
    assert not old.exists() and not old_aggregate.exists()
    statuses = {e.uid: e.status for e in exca.graph.plan(aggregates["2"]).entries}
    assert statuses[aggregates["2"].uid] == "cached", statuses
    assert clean.old_versions(root, downstream=True).removals == []  # (nothing left)


def test_clean_node_downstream_of_a_root_given_relative(tmp_path: Path) -> None:
    """`exca clean cache node ... --downstream` from the cache's parent: the preview gave
    the node absolute and what was computed from it relative to the current folder
    ("cache/...Total.total,1/..."), two ways in one list (a probe). Both are absolute."""
    root = tmp_path / "cache"
    source, down = _pipeline(root)
    assert down.result() == 12 and source.folder is not None and down.folder is not None
    relative = source.folder.relative_to(tmp_path)
    text = cli("clean", "cache", "node", relative, "--downstream", cwd=tmp_path, check=True).stdout
    removals = [line for line in text.splitlines() if line.startswith("  -")]
    assert len(removals) == 2, text
    assert removals[0].endswith(f"{source.folder}  (requested)"), text
    assert removals[1].endswith(f"{down.folder}  (computed from a removed node)"), text


class Double(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def twice(self, value: int) -> int:
        return 2 * value


def test_clean_downstream_of_a_config_folder_holding_input_nodes(tmp_path: Path) -> None:
    """Removing a config folder removes its inputs-* node folders: what was computed from
    them is downstream too."""
    root = tmp_path / "cache"
    source, total = _pipeline(root)
    doubled = Double(infra={"folder": root}).twice.node(total)
    assert doubled.result() == 24
    assert total.folder is not None and doubled.folder is not None
    config_folder = total.folder.parent  # <root>/<step>/default, holding inputs-<digest>
    plan = clean.remove_nodes([config_folder], downstream=True, root=root)
    assert [r.path for r in plan.removals] == [config_folder, doubled.folder]
    plan.execute()
    assert not doubled.folder.exists() and source.folder is not None and source.folder.exists()


def test_clean_node_downstream_includes_maps(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    source = Source(n=4, infra={"folder": root}).make.node()
    mapped = Squares(infra={"folder": root}).square.node(source)
    assert mapped.result() == [0, 1, 4, 9]
    plan = clean.remove_nodes([source], downstream=True)
    assert {r.path for r in plan.removals} == {source.folder, mapped.folder}


class Pair(pydantic.BaseModel):
    a: int = 0
    b: int = 0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def make(self) -> list[int]:
        return [self.a, self.b]


@pytest.mark.parametrize("what", ["node", "versions"])
def test_clean_frees_space_on_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """`exca clean ... --yes` on a full disk (when space is most wanted): the hold it puts
    on a node folder (a lock and a claim file: new files) could not be written, so every
    folder was "left as it was: OSError: [Errno 28] No space left on device", exit 1,
    nothing freed. The folder is now only checked there (as one it may not write into),
    and removed."""
    import errno

    root = tmp_path / "cache"
    old = Pair(a=1, b=2, infra={"folder": root, "version": "1"})
    assert old.make() == [1, 2]
    assert Pair(a=1, b=2, infra={"folder": root, "version": "2"}).make() == [1, 2]
    folder = folder_of(old)
    os_open = os.open

    def full(path: tp.Any, flags: int, *args: tp.Any, **kwargs: tp.Any) -> int:
        if Path(path).parent.name == "claims" and flags & os.O_CREAT:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", full)
    given = [str(folder)] if what == "node" else []
    result = cli("clean", root, what, *given, "--yes")
    monkeypatch.undo()
    assert result.returncode == 0, result.stdout + result.stderr
    assert not folder.exists()
    assert Pair(a=1, b=2, infra={"folder": root, "version": "2"}).infra.status() == "completed"


def test_clean_whose_rename_away_meets_a_full_disk_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node folder is renamed away before it is deleted; on a full disk that rename can
    fail (a new directory entry), and `exca clean` said only "left as it was: OSError:
    [Errno 28] No space left on device". It now says why and what to do."""
    import errno

    root = tmp_path / "cache"
    old = Pair(a=1, b=2, infra={"folder": root, "version": "1"})
    assert old.make() == [1, 2]
    folder = folder_of(old)
    os_rename = os.rename

    def full(source: tp.Any, target: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> None:
        if Path(source) == folder:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os_rename(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "rename", full)
    plan = clean.remove_nodes([old.make.node()])
    plan.execute()
    monkeypatch.undo()
    assert [path for path, _ in plan.failed] == [folder]
    why = plan.failed[0][1]
    assert "No space left on device" in why and "free some" in why, why
    assert old.infra.status() == "completed"  # (nothing lost)


@pytest.mark.parametrize("what", ["node", "versions"])
@pytest.mark.parametrize("errno_name", ["ENOSPC", "EPERM"])
def test_clean_on_the_command_line_says_in_its_error_what_it_could_not_remove(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str, errno_name: str
) -> None:
    """`exca clean ROOT node|versions ... --yes` that could not remove a folder (a full
    disk, a folder refusing the rename: an immutable attribute, a read-only mount) exited
    with 1, its error saying nothing: the folder and the reason went through the logger
    only ("see the warning above", which a script capturing the command's output, or
    --json, never saw). Its error now names each folder, why, and what to do."""
    import errno

    root = tmp_path / "cache"
    old = Pair(a=1, b=2, infra={"folder": root, "version": "1"})
    assert old.make() == [1, 2]
    assert Pair(a=1, b=2, infra={"folder": root, "version": "2"}).make() == [1, 2]
    folder = folder_of(old)
    os_rename, code = os.rename, getattr(errno, errno_name)

    def refused(source: tp.Any, target: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> None:
        if Path(source) == folder:
            raise OSError(code, os.strerror(code))
        os_rename(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "rename", refused)
    given = [str(folder)] if what == "node" else []
    result = cli("clean", root, what, *given, "--yes")
    monkeypatch.undo()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Removed 0 of 1 item(s), 0 B freed; 1 could not be removed (said below)" in result.stdout
    error = result.stderr
    assert error.startswith("exca: error: could not remove 1 of 1 item(s):\n"), error
    assert f"  - {folder}: left as it was: " in error
    if errno_name == "ENOSPC":
        assert "the disk or quota is full" in error and "free some" in error, error
    else:  # (as root, or with permissions that allow it: something else refuses)
        allowed = os.geteuid() == 0 or os.access(folder.parent, os.W_OK | os.X_OK)
        assert ("chattr -i" if allowed else "ask its owner") in error, error
    assert "run the same command again" in error
    assert old.infra.status() == "completed"  # (nothing lost)


def test_clean_node_downstream_of_a_uid_with_commas(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    source = Pair(a=1, b=2, infra={"folder": root}).make.node()
    assert source.folder is not None and "," in source.folder.name
    down = Total(infra={"folder": root}).total.node(source)
    assert down.result() == 6
    plan = clean.remove_nodes([source], downstream=True)  # (no root given: found from it)
    assert {r.path for r in plan.removals} == {source.folder, down.folder}


def test_clean_from_python_refuses_a_root_that_is_no_folder(tmp_path: Path) -> None:
    """``clean.orphans``, ``logs`` and ``compact`` of a root that does not exist (a typo)
    returned an empty plan, "Nothing to remove", and ``old_versions`` raised a bare
    FileNotFoundError (a probe), where ``exca.ops.inspect`` and the command line say "no
    such folder". Each now raises that ValueError, naming the root; a file too."""
    root = tmp_path / "cache"
    Train(seed=1, infra={"folder": root}).fit()
    typo, a_file = tmp_path / "cahce", tmp_path / "notes.txt"
    a_file.write_text("not a cache")
    for bad, why in ((typo, "no such folder"), (a_file, "not a folder")):
        for call in (clean.orphans, clean.old_versions, clean.logs):
            with pytest.raises(ValueError, match=f"^{re.escape(str(bad))}: {why} \\(give a cache"):
                call(bad)
        with pytest.raises(ValueError, match=why):
            clean.garbage(bad, Train(seed=1, infra={"folder": root}).fit.node())
    assert clean.orphans(root).removals == []  # (a root that is one: fine)


def test_commands_suggested_by_clean_can_be_pasted_into_a_shell(tmp_path: Path) -> None:
    """The commands that clean's previews and errors suggest named the root and node
    folders unquoted: pasted into a shell, a root with a space split in two arguments,
    and a uid with parentheses or braces (a tuple, a sub-config) was a syntax error or
    brace-expanded (a probe). They are quoted as a shell reads them now."""
    root = tmp_path / "my cache (shared)"
    Train(seed=1, infra={"folder": root}).fit()
    Train(seed=1, infra={"folder": root, "version": "5"}).fit()
    Train(seed=1, infra={"folder": root, "version": "debug"}).fit()

    def suggested(text: str) -> list[list[str]]:
        return [shlex.split(c) for c in re.findall(r"`(exca [^`]+)`", text)]

    plan = clean.old_versions(root)
    commands = suggested(plan.removals[0].reason) + suggested(plan.kept[0][1])
    assert [c[:3] for c in commands] == [["exca", "list", str(root)]] + [
        ["exca", "clean", str(root)]
    ] * 2, commands
    assert commands[0][3:] == ["--step", f"{MODELS}.Train.fit,5"]
    node = folder_of(Train(seed=1, infra={"folder": root, "version": "5"}))
    odd = node.with_name("optim={lr=0.02,momentum=0.5}-(0.80,0.90)")
    node.rename(odd)
    with pytest.raises(ValueError) as error:
        clean.cache_root(odd)
    assert suggested(str(error.value)) == [["exca", "clean", "ROOT", "node", str(odd)]]
    with pytest.raises(ValueError, match="step folder") as error:
        clean.cache_root(odd.parent)
    assert shlex.split(str(error.value).rpartition("--step ")[2]) == [odd.parent.name]


def test_clean_versions_says_when_the_newest_was_set_by_configs(tmp_path: Path) -> None:
    """One try with infra.version="5" makes the class's version old: the preview says
    that no class set "5"."""
    root = tmp_path / "cache"
    assert Train(seed=1, infra={"folder": root}).fit() == 2  # the class's version: "1"
    assert clean.old_versions(root).removals == []
    assert Train(seed=1, infra={"folder": root, "version": "5"}).fit() == 2
    (removal,) = clean.old_versions(root).removals
    assert removal.path.parent.name == f"{MODELS}.Train.fit,1"
    assert "newest is 5, set by its configs, not by the class: if that was a try" in (
        removal.reason
    )
    assert f"(`exca list {root} --step {MODELS}.Train.fit,5`, then `exca clean {root} " in (
        removal.reason
    )
    # --step as `exca list` prints a step: that version only (not every version)
    assert clean.selected_steps(root, f"{MODELS}.Train.fit,1") == {f"{MODELS}.Train.fit,1"}
    # the try's configs removed (its job logs left): the class's version is the newest
    tried = root / f"{MODELS}.Train.fit,5"
    (config,) = [p for p in tried.iterdir() if (p / "uid.yaml").exists()]
    clean.remove_nodes(config).execute()
    (tried / "logs" / "root").mkdir(parents=True)
    (tried / "logs" / "root" / "1234_0_log.out").write_text("a job's log")
    assert [r.path for r in clean.old_versions(root).removals] == [tried / "logs"]
    # a version holding a config that left it to the class: no such note
    class_set = folder_of(Train(seed=1, infra={"folder": root}))
    shutil.copytree(class_set, tried / class_set.name)
    (removal,) = clean.old_versions(root).removals
    assert "newest is 5)" in removal.reason


def test_clean_versions_keeps_versions_that_are_not_numbers(tmp_path: Path) -> None:
    """A one-off infra.version="debug" (a word sorted after every number) made every
    numbered version old: `exca clean versions --yes` removed the real results. Only
    numbered versions are compared now; the others are kept, and the preview says why."""
    root = tmp_path / "cache"
    step = f"{MODELS}.Train.fit"
    objs = {v: Train(seed=1, infra={"folder": root, "version": v}) for v in ("1", "2", "3")}
    objs["debug"] = Train(seed=1, infra={"folder": root, "version": "debug"})
    for obj in objs.values():
        obj.fit()
    plan = clean.old_versions(root)
    old = {folder_of(objs["1"]), folder_of(objs["2"])}
    assert {r.path for r in plan.removals} == old
    assert all("old version (newest is 3" in r.reason for r in plan.removals)
    ((path, why),) = plan.kept
    assert path == root / f"{step},debug"
    assert "version 'debug' is not a number: `versions` only compares numbered versions" in why
    preview = cli("clean", root, "versions", check=True).stdout
    assert "2 item(s) to remove" in preview and "1 kept:" in preview
    assert f"{step},debug  (version 'debug' is not a number" in preview
    kept = json.loads(cli("clean", root, "versions", "--json", check=True).stdout)["kept"]
    assert [Path(k["path"]) for k in kept] == [root / f"{step},debug"]
    cli("clean", root, "versions", "--yes", check=True)
    assert not any(p.exists() for p in old)
    assert folder_of(objs["3"]).exists() and folder_of(objs["debug"]).exists()
    assert {(i.step, i.status) for i in exca.ops.inspect(root)} == {
        (f"{step},3", "success"),
        (f"{step},debug", "success"),
    }
    # no numbered version is newer than another: nothing goes ("old" sorted last before)
    other = tmp_path / "other"
    for version in ("2", "2b", "old"):
        Train(seed=1, infra={"folder": other, "version": version}).fit()
    plan = clean.old_versions(other)
    assert plan.removals == []
    assert {p.name for p, _ in plan.kept} == {f"{step},2b", f"{step},old"}
    assert all("is not a number" in why for _, why in plan.kept)
    before = tree_hash(other)
    cli("clean", other, "versions", "--yes", check=True)
    assert tree_hash(other) == before


def test_a_version_holding_a_comma_is_read_back_whole(tmp_path: Path) -> None:
    """The folder <method>,<version> was split at its last ',': version "2024,1" was read
    as "1" (and "2024,2" as "2": the first one looked old)."""
    root = tmp_path / "cache"
    step = f"{MODELS}.Train.fit"
    for version in ("2024,1", "2024,2"):
        Train(seed=1, infra={"folder": root, "version": version}).fit()
    plan = clean.old_versions(root)
    assert plan.removals == []
    kept = {p.name: why for p, why in plan.kept}
    assert kept.keys() == {f"{step},2024,1", f"{step},2024,2"}
    assert "version '2024,1' is not a number" in kept[f"{step},2024,1"]


def test_clean_versions_compares_dotted_numbers(tmp_path: Path) -> None:
    """1.9 < 1.10 (numbers, not text), "v2" is 2, and "2.0" is "2": neither is older."""
    root = tmp_path / "cache"
    step = f"{MODELS}.Train.fit"
    objs = {v: Train(seed=1, infra={"folder": root, "version": v}) for v in ("1.9", "1.10")}
    objs["v1"] = Train(seed=1, infra={"folder": root, "version": "v1"})
    for obj in objs.values():
        obj.fit()
    plan = clean.old_versions(root)
    assert {r.path for r in plan.removals} == {folder_of(objs["1.9"]), folder_of(objs["v1"])}
    assert all("newest is 1.10" in r.reason for r in plan.removals) and plan.kept == []
    for version in ("2", "2.0"):  # (the same number: both kept, and they make 1.x old)
        Train(seed=1, infra={"folder": root, "version": version}).fit()
    plan = clean.old_versions(root)
    assert {r.path.parent.name for r in plan.removals} == {
        f"{step},{v}" for v in ("1.9", "1.10", "v1")
    }
    ((path, why),) = plan.kept
    assert path.name in (f"{step},2", f"{step},2.0") and "is the same number as the newest" in why


def test_clean_refuses_slips_that_would_remove_the_wrong_things(tmp_path: Path) -> None:
    """garbage() against targets of another cache (or none) planned to remove every node
    of the root; remove_nodes(downstream) with a folder of another root missed its
    downstream silently; compact() of a typo created the folder; a step typo, a missing
    root or a status typo from Python answered "nothing"."""
    roots = [tmp_path / "a", tmp_path / "b"]
    for root in roots:
        source = Source(n=4, infra={"folder": root}).make.node()
        down = Total(infra={"folder": root}).total.node(source)
        assert down.result() == 12
    before = tree_hash(tmp_path)
    targets_of_b = [Total(infra={"folder": roots[1]}).total.node(source)]
    with pytest.raises(ValueError, match=r"none of the targets' nodes is cached in .*/a \(their"):
        clean.garbage(roots[0], targets_of_b)
    with pytest.raises(ValueError, match="give the target nodes to keep"):
        clean.garbage(roots[0], [])
    typo = Total(scale=3, infra={"folder": roots[0]}).total.node([1])  # (never computed)
    with pytest.raises(ValueError, match=r"they are not computed \(a config typo\?\)"):
        clean.garbage(roots[0], [typo])
    assert clean.garbage(roots[1], targets_of_b[0]).removals == []  # (one Node: fine)
    assert source.folder is not None
    with pytest.raises(ValueError, match=r"is not in the cache root .*/a: give its root"):
        clean.remove_nodes([source.folder], downstream=True, root=roots[0])
    result = cli("clean", roots[0], "node", source.folder, "--downstream", "--yes")
    assert result.returncode == 2 and "is not in the cache root" in result.stderr
    # one folder, not a list of them; a path that is not there
    plan = clean.remove_nodes(str(source.folder), downstream=True)
    assert {r.path for r in plan.removals} == {source.folder, down.folder}
    with pytest.raises(ValueError, match="no such folder"):
        clean.remove_nodes([tmp_path / "b" / "typo"])
    # compact writes into node folders only
    with pytest.raises(ValueError, match="typo: no such folder"):
        clean.compact(tmp_path / "typo")
    with pytest.raises(ValueError, match="typo: no such folder"):
        clean.compactable(tmp_path / "typo")
    assert clean.compact(source.folder.parent) == (0, 0)  # (a step folder: no claims/ made)
    with pytest.raises(ValueError, match=r"--step 'Trian' matches no step of the root: "):
        clean.old_versions(roots[0], step="Trian")
    for func in (clean.orphans, clean.logs):
        with pytest.raises(ValueError, match="matches no step"):
            func(roots[0], step="Trian")
    with pytest.raises(ValueError, match="no such folder"):
        exca.ops.inspect(tmp_path / "typo")
    with pytest.raises(ValueError, match=r"status='sucess' is not a status: use one of success"):
        exca.ops.inspect(roots[0], status="sucess")
    assert tree_hash(tmp_path) == before  # nothing removed, nothing created
    assert len(exca.ops.inspect(roots[0], where="scale=2")) == 1  # (one condition, a str)
    listed = cli("list", roots[0], "--where", "sclae=2", check=True).stdout
    assert "No config has a key 'sclae'" in listed
    with pytest.raises(TypeError, match=r"run\(wait='no'\): give True or False"):
        exca.graph.run(down, wait="no")


def test_clean_node_refuses_what_is_not_a_node_folder(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    source = Source(n=4, infra={"folder": root}).make.node()
    assert source.result() == [0, 1, 2, 3]
    assert source.folder is not None
    for folder in (source.folder.parent, root):  # a method folder, a cache root
        with pytest.raises(ValueError, match="not the folder of a node"):
            clean.remove_nodes([folder])
    result = cli("clean", root, "node", source.folder.parent, "--yes")
    assert result.returncode == 2 and "not the folder of a node" in result.stderr
    assert source.folder.is_dir()


def test_clean_downstream_through_a_map_fed_twice(tmp_path: Path) -> None:
    """Items of one map folder computed from two upstream results: each upstream finds
    the map, and the task fed through it."""
    root = tmp_path / "cache"

    def total(n: int) -> exca.graph.Node:
        source = Source(n=n, infra={"folder": root}).make.node()
        return Total(infra={"folder": root}).total.node(
            Squares(infra={"folder": root}).square.node(source)
        )

    assert total(3).result() == 2 * (0 + 1 + 4)
    assert total(5).result() == 2 * (0 + 1 + 4 + 9 + 16)  # items 3 and 4 come from n=5
    source5 = Source(n=5, infra={"folder": root}).make.node()
    removed = {r.path for r in clean.remove_nodes([source5], downstream=True).removals}
    mapped = Squares(infra={"folder": root}).square.node(source5)
    assert {source5.folder, mapped.folder, total(5).folder} <= removed
    assert total(3).folder not in removed
    # the map's folder holds the items of n=3 too: only items 3 and 4 go
    plan = clean.remove_nodes([source5], downstream=True)
    (items,) = [r for r in plan.removals if r.path == mapped.folder]
    assert sorted(items.keys or []) == ["3", "4"] and "2 of 5 items" in items.reason
    plan.execute()
    assert mapped.folder is not None and mapped.folder.exists()
    assert exca.graph.plan(total(3)).counts() == {"cached": 1, "not needed": 2}
    assert exca.graph.plan(total(5)).counts() == {"missing": 3}


def test_clean_downstream_keeps_an_item_computed_again_since_the_preview(
    tmp_path: Path,
) -> None:
    """Items of a map previewed as computed from a removed node, one of them computed
    again from another input before execute(): execute() deleted it too (the item's
    key), though it no longer came from the removed node. Only the previewed entries go."""
    root = tmp_path / "cache"

    def total(n: int, mode: str = "cached") -> exca.graph.Node:
        source = Source(n=n, infra={"folder": root}).make.node()
        squares = Squares(infra={"folder": root, "mode": mode}).square.node(source)
        return Total(infra={"folder": root}).total.node(squares)

    assert total(3).result() == 2 * (0 + 1 + 4)
    assert total(5).result() == 2 * (0 + 1 + 4 + 9 + 16)  # items 3 and 4 come from n=5
    source5 = Source(n=5, infra={"folder": root}).make.node()
    mapped = Squares(infra={"folder": root}).square.node(source5)
    plan = clean.remove_nodes([source5], downstream=True)
    (items,) = [r for r in plan.removals if r.path == mapped.folder]
    assert sorted(items.keys or []) == ["3", "4"]
    # before execute(): item 3 computed again, from n=4
    assert total(4, mode="force").result() == 2 * (0 + 1 + 4 + 9)
    plan.execute()
    assert mapped.folder is not None
    left = CacheDict(mapped.folder)
    assert sorted(left.keys()) == ["0", "1", "2", "3"]  # item 4 went, not 3
    entry = left.entry("3")
    assert entry is not None and next(iter(entry.info["#meta"]["up"])).endswith(
        Source(n=4, infra={"folder": root}).make.node().uid.split("/")[-1]
    )


class Shift(pydantic.BaseModel):
    """A map fed by a map (x -> x + 1)."""

    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def shift(self, items: list[int]) -> tp.Iterator[int]:
        for x in items:
            yield x + 1


def test_clean_downstream_of_a_map_of_given_items(tmp_path: Path) -> None:
    """A map whose items were given (not made by a node) and what was computed from it: a
    task, and a map fed by it then a task (they were not found: nothing recorded the map)."""
    root = tmp_path / "cache"
    squares = Squares(infra={"folder": root}).square.node([1, 2, 3])
    total = Total(infra={"folder": root}).total.node(squares)
    shifted = Shift(infra={"folder": root}).shift.node(squares)
    after = Total(scale=3, infra={"folder": root}).total.node(shifted)
    assert (total.result(), after.result()) == (28, 3 * (2 + 5 + 10))
    other = Total(infra={"folder": root}).total.node(
        Source(n=2, infra={"folder": root}).make.node()
    )
    assert other.result() == 2
    plan = clean.remove_nodes([squares], downstream=True)
    expected = [squares.folder, total.folder, shifted.folder, after.folder]
    assert sorted(r.path for r in plan.removals) == sorted(expected)  # type: ignore[type-var]
    assert all(r.keys is None for r in plan.removals)


def test_clean_old_versions_orders_numbers_inside_versions(tmp_path: Path) -> None:
    """v10 is newer than v9 (not a string comparison)."""
    root = tmp_path / "cache"
    v9 = Train(seed=1, infra={"folder": root, "version": "v9"})
    v10 = Train(seed=1, infra={"folder": root, "version": "v10"})
    v9.fit()
    v10.fit()
    plan = clean.old_versions(root)
    assert {r.path for r in plan.removals} == {folder_of(v9)}
    assert all("newest is v10" in r.reason for r in plan.removals)


def test_clean_old_versions(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    objs = {
        "v1": Train(seed=1, infra={"folder": root}),
        "v1b": Train(seed=2, infra={"folder": root}),
        "v2": Train(seed=1, infra={"folder": root, "version": "2"}),
        "v10": Train(seed=1, infra={"folder": root, "version": "10"}),  # newest: 10 > 2
    }
    for obj in objs.values():
        obj.fit()
    Squares(infra={"folder": root}).square([1, 2])  # another method, single version: untouched
    old = {folder_of(objs[k]) for k in ("v1", "v1b", "v2")}
    before = tree_hash(root)
    plan = clean.old_versions(root)
    assert {r.path for r in plan.removals} == old
    assert plan.failed == [] and plan.skipped == []  # (a preview: nothing tried yet)
    assert all(r.size == disk_bytes(r.path) and "newest is 10" in r.reason for r in plan.removals)
    assert clean.old_versions(root, step="Squares").removals == []
    # a step as `exca list` prints it, with or without its module, or a glob naming one
    # version: every version of that method
    for step in (f"{MODELS}.Train.fit,1", "Train.fit,1", "*fit,2", "Train"):
        assert {r.path for r in clean.old_versions(root, step=step).removals} == old, step
    with pytest.raises(ValueError, match="matches no step"):  # (no such method)
        clean.old_versions(root, step="Trains.fit,1")
    preview = json.loads(cli("clean", root, "versions", "--json", check=True).stdout)
    assert {Path(r["path"]) for r in preview["removals"]} == old
    assert tree_hash(root) == before
    cli("clean", root, "versions", "--yes", check=True)
    assert not any(p.exists() for p in old)
    # (the old versions' step folders, left empty, went too)
    assert not any(p.parent.exists() for p in old)
    remaining = exca.ops.inspect(root)
    assert {(i.step, i.status) for i in remaining} == {
        (f"{MODELS}.Train.fit,10", "success"),
        (f"{MODELS}.Squares.square,1", "success"),
    }
    node = Train(seed=1, infra={"folder": root, "version": "10"}).fit.node()
    assert exca.graph.plan(node).entries[0].status == "cached"


def test_clean_versions_says_a_shared_reason_once(tmp_path: Path) -> None:
    """The preview of `clean versions` repeated "(old version (newest is 3))" after every
    config of every old version (a probe): items in a row going for one reason are listed
    under it, said once with their count and bytes; a reason of one item stays on its
    line."""
    root = tmp_path / "cache"
    for version, seeds in (("1", (1, 2, 3)), ("2", (1, 2)), ("3", (1,))):
        for seed in seeds:
            Train(seed=seed, infra={"folder": root, "version": version}).fit()
    plan = clean.old_versions(root)
    (reason,) = {r.reason for r in plan.removals}  # (a long one: set by configs, not the class)
    assert len(plan.removals) == 5 and reason.startswith("old version (newest is 3, set by")
    preview = cli("clean", root, "versions", check=True).stdout
    assert preview.count("newest is 3") == 1, preview
    lines = preview.splitlines()
    assert lines[1] == f"  {reason}: 5 item(s), {human_size(plan.size)}"
    assert [line.split()[-1] for line in lines[2:7]] == [str(r.path) for r in plan.removals]
    assert all(line.startswith("    - ") for line in lines[2:7])
    # a plan of one item: its reason on its line, as before
    single = clean.remove_nodes([plan.removals[0].path])
    assert str(single).splitlines()[1].endswith(f"{plan.removals[0].path}  (requested)")


def test_clean_versions_keeps_the_older_versions_when_the_newest_holds_no_success(
    tmp_path: Path,
) -> None:
    """A version bump that crashed (only a cached error), or whose result was cleared,
    then reverted: `versions` took it for the newest and removed every result of the
    version in use (a probe)."""
    root = tmp_path / "cache"
    in_use = Train(seed=1, infra={"folder": root})
    in_use.fit()
    with pytest.raises(ValueError, match="cannot fit"):
        Train(seed=1, fail=True, infra={"folder": root, "version": "2"}).fit()
    cleared = Train(seed=1, infra={"folder": root, "version": "3"})
    cleared.fit()
    cleared.infra.clear_job()
    plan = clean.old_versions(root)
    assert plan.removals == []
    kept = {path.name: why for path, why in plan.kept}
    assert set(kept) == {f"{MODELS}.Train.fit,2", f"{MODELS}.Train.fit,3"}
    assert "holds no successful result" in kept[f"{MODELS}.Train.fit,2"]
    result = cli("clean", root, "versions", "--yes", check=True)
    assert "holds no successful result" in result.stdout
    assert folder_of(in_use).exists()
    # a success in a newer version: the version in use before is old
    Train(seed=1, infra={"folder": root, "version": "2"}).fit()
    assert [r.path for r in clean.old_versions(root).removals] == [folder_of(in_use)]


def test_clean_versions_says_the_newest_is_the_newest_with_a_result(tmp_path: Path) -> None:
    """v1 computed, v2 left with logs only, v3 holding only a cached error: v2's logs were
    removed as "logs of an old version (newest is 1)", which reads wrongly (a review)."""
    root = tmp_path / "cache"
    Train(seed=1, infra={"folder": root}).fit()
    second = Train(seed=1, infra={"folder": root, "version": "2"})
    second.fit()
    shutil.rmtree(folder_of(second))  # (its configs removed: its logs stay)
    logs = folder_of(second).parent / "logs"
    (logs / "123").mkdir(parents=True)
    (logs / "123" / "123_0_log.out").write_text("log")
    with pytest.raises(ValueError, match="cannot fit"):
        Train(seed=1, fail=True, infra={"folder": root, "version": "3"}).fit()
    (removal,) = clean.old_versions(root).removals
    assert removal.path == logs
    assert removal.reason == "logs of an old version (newest with a result is 1)"


def test_clean_versions_says_a_newer_version_is_being_computed(
    busy_task: tuple[Path, Path, subprocess.Popen[str]],
) -> None:
    """A newer version being computed now was kept as "only cached errors, or nothing"."""
    root, folder, _ = busy_task
    Slow(flag=str(root / "absent"), infra={"folder": root, "version": "0"}).wait_for_flag()
    plan = clean.old_versions(root)
    assert plan.removals == []
    kept = dict(plan.kept)
    assert "being computed by pid " in kept[folder.parent], kept


def test_clean_versions_refuses_a_step_naming_methods_of_several_modules(
    tmp_path: Path,
) -> None:
    root = tmp_path / "cache"
    for version in ("1", "2"):
        Train(seed=1, infra={"folder": root, "version": version}).fit()
    ours = f"{MODELS}.Train.fit"
    for other in ("other.Train.fit", f"x.{ours}"):  # the same method in other modules
        for version in ("1", "2"):
            shutil.copytree(root / f"{ours},{version}", root / f"{other},{version}")
    before = tree_hash(root)
    with pytest.raises(ValueError, match=r"names 3 methods: .*other\.Train\.fit.*with its module"):
        clean.old_versions(root, step="Train.fit,1")
    result = cli("clean", root, "versions", "--step", "Train.fit,2", "--yes")
    assert result.returncode != 0 and "names 3 methods" in result.stderr
    assert tree_hash(root) == before  # (nothing removed)
    # named in full: that method only, not another one whose name ends the same way
    removals = clean.old_versions(root, step=f"{ours},2").removals
    assert {r.path.parent.name for r in removals} == {f"{ours},1"}


def test_clean_versions_says_when_the_step_matches_nothing(tmp_path: Path) -> None:
    """A --step with a typo said "Nothing to remove", as if that step had no old version."""
    root = tmp_path / "cache"
    for version in ("1", "2"):
        Train(seed=1, infra={"folder": root, "version": version}).fit()
    result = cli("clean", root, "versions", "--step", "Trian.fit")
    assert result.returncode == 2, result
    assert "--step 'Trian.fit' matches no step of the root: " in result.stderr
    assert f"{MODELS}.Train.fit,1, {MODELS}.Train.fit,2" in result.stderr
    assert len(clean.old_versions(root, step="Train.fit").removals) == 1


def test_a_step_with_its_version_selects_that_version_only(tmp_path: Path) -> None:
    """`--step mod.Train.fit,1`, as `list` prints it, also selected versions 10 and 1.5
    (a substring): `clean logs` removed their job logs too."""
    root = tmp_path / "cache"
    for version in ("1", "10", "1.5"):
        assert Train(seed=3, infra={"folder": root, "cluster": "local", "version": version}).fit()
    step = f"{MODELS}.Train.fit,1"
    listed = json.loads(cli("list", root, "--step", step, "--json", check=True).stdout)
    assert {r["step"] for r in listed} == {step}
    assert clean.selected_steps(root, "Train.fit,1") == {step}  # (module left out)
    assert len(clean.selected_steps(root, "Train.fit") or ()) == 3  # (no version: all)
    assert len(clean.selected_steps(root, "Train.fit,") or ()) == 3  # (every version)
    assert step_selects("Train.fit,1", "mod.Train.fit,1")
    assert not step_selects("Train.fit,1", "mod.PreTrain.fit,1")  # (review)
    assert not step_selects("rain.fit,1", "mod.Train.fit,1")
    assert step_selects(",1", "mod.Train.fit,1") and not step_selects(",1", "mod.Train.fit,10")
    cli("clean", root, "logs", "--days", "0", "--step", step, "--yes", check=True)
    kept = sorted({p.parts[len(root.parts)] for p in root.glob("*/logs/**/*") if p.is_file()})
    assert kept == [f"{MODELS}.Train.fit,1.5", f"{MODELS}.Train.fit,10"]


def test_clean_orphans_logs_and_compact_of_some_steps(tmp_path: Path) -> None:
    """`--step` was read by `versions` only: `orphans`, `logs` and `compact` freed every
    step's files, whatever step was given."""
    root = tmp_path / "cache"
    train = Train(seed=3, infra={"folder": root, "cluster": "local"})
    source = Source(n=1000, infra={"folder": root})
    assert train.fit() == 4 and source.make() == list(range(1000))
    orphans = [folder_of(o) / "data" / "result-0badc0de-ffffff.pkl" for o in (train, source)]
    for orphan in orphans:
        orphan.parent.mkdir(exist_ok=True)
        orphan.write_bytes(b"orphan")
    (train_job,) = exca.ops.logs(folder_of(train))
    step = "Source.make"
    assert [r.path for r in clean.orphans(root, min_age_hours=0, step=step).removals] == [
        orphans[1]
    ]
    assert clean.logs(root, older_than_days=0, step=step).removals == []
    train_logs = [r.path for r in clean.logs(root, older_than_days=0, step="Train").removals]
    assert train_logs == [train_job.stdout_path.parent]
    for orphan in orphans:  # (the command line's grace period: an hour)
        os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    cli("clean", root, "orphans", "--step", step, "--yes", check=True)
    cli("clean", root, "logs", "--days", "0", "--step", step, "--yes", check=True)
    assert orphans[0].exists() and not orphans[1].exists() and train_job.stdout_path.exists()
    # compact: the merges of another step's folder are not even previewed
    _many_writer_sessions(root, 3)
    ranges = folder_of(Ranges(infra={"folder": root}))
    copy = root / f"x.Copy.expand,1/{ranges.name}"
    shutil.copytree(ranges, copy)
    for folder in (ranges, copy):
        age_index_files(folder)
    listed = json.loads(cli("clean", root, "compact", "--step", "Copy", "--json").stdout)
    assert [Path(f["folder"]) for f in listed["merges"]] == [copy]
    cli("clean", root, "compact", "--step", "Copy", "--yes", check=True)
    assert len(index_files(ranges)) == 3 and len(index_files(copy)) == 1
    # a typo is an error for each, as for `versions`; `node` takes no --step
    for what in ("orphans", "logs", "compact"):
        result = cli("clean", root, what, "--step", "Trian", "--yes")
        assert result.returncode == 2 and "--step 'Trian' matches no step" in result.stderr
    result = cli("clean", root, "node", str(folder_of(train)), "--step", "Train", "--yes")
    assert result.returncode == 2 and "--step does not apply" in result.stderr
    # nor do the options of the other commands (they were ignored: `logs FOLDER --days 0
    # --yes` removed the logs of the whole root)
    for args in (
        ("logs", str(folder_of(train)), "--days", "0"),
        ("orphans", "--downstream"),
        ("versions", "--days", "30"),  # (its default value, given: refused too)
        ("node", str(folder_of(train)), "--days", "2"),
    ):
        result = cli("clean", root, *args, "--yes")
        assert result.returncode == 2 and "does not apply" in result.stderr, args
    assert orphans[0].exists() and train_job.stdout_path.exists() and folder_of(train).exists()


def test_clean_logs_of_a_step_keeps_a_folder_shared_with_another_steps_job(
    tmp_path: Path,
) -> None:
    """A log folder holds the jobs of several steps (a `logs` setting without %j): only
    the files of the selected steps' jobs go (the other steps' went too: a review), while
    another step's job runs too."""
    root, shared = tmp_path / "cache", tmp_path / "shared-logs"
    infra = {"folder": root, "cluster": "local", "logs": shared}
    assert Train(seed=1, infra=infra).fit() == 2
    (train_job,) = [r["job_id"] for r in _records(folder_of(Train(seed=1, infra=infra)))]
    assert [r.path for r in clean.logs(root, older_than_days=0, step="Train").removals] == [shared]
    flag = tmp_path / "hold"
    flag.touch()
    job = Slow(flag=str(flag), infra=infra).infra.job()  # another step's job, running
    try:
        wait_until(lambda: "slow task started" in (job.stdout() or ""), "the job runs")
        plan = clean.logs(root, older_than_days=0, step="Train")
        (removal,) = plan.removals
        assert removal.files and all(n.startswith(f"{train_job}_") for n in removal.files)
        plan.execute()
        assert not list(shared.glob(f"{train_job}_*"))
        assert list(shared.glob(f"{job.job_id}_*"))  # (the running job's: untouched)
    finally:
        flag.unlink()
    assert job.result() == "released"
    assert "slow task started" in (job.stdout() or "")


def test_clean_refuses_a_step_or_node_folder_as_root(tmp_path: Path) -> None:
    """Given a step folder, `versions` took configs whose uid holds a comma
    (a=5,b=3-... and a=5,b=4-...) for two versions of a method "a=5", and removed the
    payloads of the "older" one under its index."""
    root = tmp_path / "cache"
    for b in (3, 4):
        assert Pair(a=5, b=b, infra={"folder": root}).make() == [5, b]
    config = folder_of(Pair(a=5, b=3, infra={"folder": root}))
    step = config.parent
    before = tree_hash(root)
    for what in ("versions", "orphans", "logs", "compact"):
        for folder in (step, config):
            result = cli("clean", folder, what, "--yes")
            assert result.returncode == 2, result
            kind = "a step folder" if folder == step else "the folder of one node"
            assert f"{folder} is {kind}, not a cache root" in result.stderr
            assert f"give the cache root ({root})" in result.stderr
    assert tree_hash(root) == before
    with pytest.raises(ValueError, match="is a step folder"):
        clean.old_versions(step)
    assert [Pair(a=5, b=b, infra={"folder": root}).make() for b in (3, 4)] == [[5, 3], [5, 4]]


def test_clean_versions_leaves_folders_exca_did_not_write(tmp_path: Path) -> None:
    """A folder of the user's named like a step (`report,2023`) is not an old version."""
    root = tmp_path / "cache"
    Train(seed=1, infra={"folder": root}).fit()
    Train(seed=1, infra={"folder": root, "version": "2"}).fit()
    for year in (2023, 2024):
        (root / f"report,{year}" / "figures").mkdir(parents=True)
        (root / f"report,{year}" / "figures" / "a.png").write_bytes(b"png")
        (root / f"report,{year}" / "runs").mkdir()
        (root / f"report,{year}" / "runs" / "eval_log.out").write_text("log")
        (root / f"report,{year}" / "logs").mkdir()
        (root / f"report,{year}" / "logs" / "notes.txt").write_text("mine")
    old = folder_of(Train(seed=1, infra={"folder": root}))
    (old.parent / "analysis").mkdir()  # (the user's, in an old step folder)
    (old.parent / "analysis" / "eval_log.out").write_text("mine")
    plan = clean.old_versions(root)
    assert [r.path for r in plan.removals] == [old]
    plan.execute()
    assert (root / "report,2023" / "figures" / "a.png").read_bytes() == b"png"
    assert (old.parent / "analysis" / "eval_log.out").read_text() == "mine"


def test_clean_versions_skips_a_step_folder_it_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared cache root (named with a comma here) whose parent and one step folder
    (another user's) cannot be listed: the rest is cleaned (it stopped with
    PermissionError). Simulated: tests run as root, which reads everything."""
    root = tmp_path / "exp,2024"
    Train(seed=1, infra={"folder": root}).fit()
    Train(seed=1, infra={"folder": root, "version": "2"}).fit()
    Source(infra={"folder": root}).make()
    private = folder_of(Source(infra={"folder": root})).parent
    (private / "logs").mkdir()  # (orphans stopped on it: a probe)
    scandir = os.scandir

    def guarded(path: tp.Any) -> tp.Any:
        if Path(path) in (private, private / "logs", tmp_path):
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", guarded)
    plan = clean.old_versions(root)
    assert [r.path for r in plan.removals] == [folder_of(Train(seed=1, infra={"folder": root}))]
    assert clean.orphans(root).removals == []


def _exca_as_a_user(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m exca ARGS`` as root without the capabilities that bypass file
    permissions (setpriv): what a user of a shared cache sees of another user's files."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux) to give files to another user")
    no_bypass = "-dac_override,-dac_read_search"
    as_a_user = [setpriv, f"--bounding-set={no_bypass}", f"--inh-caps={no_bypass}"]
    return subprocess.run(
        [*as_a_user, sys.executable, "-m", "exca", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=60,
    )


def _give_to_nobody(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, 65534, 65534)  # (nobody)


def test_list_skips_a_config_whose_files_another_user_kept_private(tmp_path: Path) -> None:
    """A shared cache where one config's uid.yaml is another user's, mode 600: `exca list`
    stopped with "exca: error: PermissionError" and listed nothing (a probe). It now
    lists the rest, with a warning naming the skipped folder. Real permissions: run as
    root without the capabilities that bypass them (setpriv), the files another uid's."""
    root = tmp_path / "cache"
    for seed in (1, 2):
        Train(seed=seed, infra={"folder": root}).fit()
    theirs = folder_of(Train(seed=1, infra={"folder": root}))
    _give_to_nobody(theirs)
    (theirs / "uid.yaml").chmod(0o600)
    listing = _exca_as_a_user("list", str(root))
    assert listing.returncode == 0, listing.stderr
    assert "seed=2" in listing.stdout and "seed=1" not in listing.stdout, listing.stdout
    assert f"Skipping {theirs}" in listing.stderr and "Permission denied" in listing.stderr


def test_clean_versions_keeps_a_config_another_user_kept_private(tmp_path: Path) -> None:
    """An old version holding another user's private config folder (mode 700): the
    preview of `clean versions` itself stopped with "exca: error: PermissionError" (a
    probe). That folder is kept, with a warning; the rest of the version goes."""
    root = tmp_path / "cache"
    for seed in (1, 2):
        Train(seed=seed, infra={"folder": root}).fit()
    Train(seed=1, infra={"folder": root, "version": "2"}).fit()
    theirs, mine = (folder_of(Train(seed=s, infra={"folder": root})) for s in (1, 2))
    _give_to_nobody(theirs)
    theirs.chmod(0o700)
    preview = _exca_as_a_user("clean", str(root), "versions")
    assert preview.returncode == 0, preview.stderr
    assert f"Skipping {theirs}: " in preview.stderr, preview.stderr
    assert str(mine) in preview.stdout and "cannot read it" in preview.stdout, preview.stdout
    done = _exca_as_a_user("clean", str(root), "versions", "--yes")
    assert done.returncode == 0, done.stderr
    assert theirs.is_dir() and not mine.exists()


def test_a_uid_yaml_of_bytes_that_are_no_utf8_is_skipped_with_a_warning(tmp_path: Path) -> None:
    """A damaged uid.yaml (bytes that are no UTF-8): `exca list` and `clean node --where`
    stopped with "exca: error: UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff",
    naming no file (a probe), where a yaml that does not parse is skipped with a warning
    naming it. It is such an unreadable file now: skipped by `exca list` with that
    warning (the other configs are listed), and a call of its config still reuses it."""
    root = tmp_path / "cache"
    for seed in (1, 2):
        Train(seed=seed, infra={"folder": root}).fit()
    damaged = folder_of(Train(seed=1, infra={"folder": root})) / "uid.yaml"
    damaged.write_bytes(b"\xff\xfe seed: 1\n")
    listing = cli("list", root, check=True)
    assert f"Skipping unreadable {damaged}" in listing.stderr, listing.stderr
    assert "seed=2" in listing.stdout, listing.stdout
    selected = cli("clean", root, "node", "--where", "seed=2", check=True)
    assert "1 item(s) to remove" in selected.stdout, selected.stdout
    assert Train(seed=1, infra={"folder": root, "mode": "read-only"}).fit() == 2
    assert Train(seed=1, infra={"folder": root}).fit() == 2


def test_clean_orphans_skips_a_config_whose_index_another_user_kept_private(
    tmp_path: Path,
) -> None:
    """A shared cache where one config's index file is another user's, mode 600: `exca
    clean ROOT orphans` stopped with "exca: error: PermissionError" and found nothing
    anywhere (a probe). That folder is now skipped with a warning naming it; the orphans
    of the other folders are found and removed. Real permissions (setpriv)."""
    root = tmp_path / "cache"
    for seed in (1, 2):
        Train(seed=seed, infra={"folder": root}).fit()
    theirs, mine = (folder_of(Train(seed=s, infra={"folder": root})) for s in (1, 2))
    orphan = mine / "data" / "left-by-a-killed-writer.pkl"
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(b"orphan")
    os.utime(orphan, (time.time() - 7200, time.time() - 7200))
    _give_to_nobody(theirs)
    indexes = sorted(theirs.glob("*-info.jsonl"))
    for index in indexes:
        index.chmod(0o600)
    preview = _exca_as_a_user("clean", str(root), "orphans")
    assert preview.returncode == 0, preview.stderr
    assert f"Skipping {theirs}: " in preview.stderr, preview.stderr
    assert str(orphan) in preview.stdout, preview.stdout
    done = _exca_as_a_user("clean", str(root), "orphans", "--yes")
    assert done.returncode == 0, done.stderr
    assert not orphan.exists() and indexes and all(i.exists() for i in indexes)


def test_clean_leaves_whole_what_it_cannot_delete_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A node folder of another user in a team-writable step folder: a clean renamed it
    away (its results left the cache), could not delete its files, and said "removed"
    with the bytes as freed (a probe). It is now left as it was, named in ``failed`` and
    in a warning, and not counted; the rest is removed. Simulated: tests run as root,
    which may write anywhere."""
    root = tmp_path / "cache"
    for seed in (1, 2):
        Train(seed=seed, infra={"folder": root}).fit()
        Train(seed=seed, infra={"folder": root, "version": "2"}).fit()
    theirs, mine = (folder_of(Train(seed=s, infra={"folder": root})) for s in (1, 2))
    access = os.access
    monkeypatch.setattr(
        os, "access", lambda path, mode: Path(path) != theirs and access(path, mode)
    )
    plan = clean.old_versions(root)
    assert sorted(r.path for r in plan.removals) == sorted([theirs, mine])
    with caplog.at_level("WARNING", logger="exca"):
        freed = plan.execute()
    assert [path for path, _ in plan.failed] == [theirs]
    assert "not writable by this user" in plan.failed[0][1] and str(theirs) in caplog.text
    assert freed == next(r.size for r in plan.removals if r.path == mine)
    assert not mine.exists() and (theirs / "uid.yaml").exists()
    assert not list(theirs.parent.glob(".removing-*"))
    assert Train(seed=1, infra={"folder": root}).fit() == 2  # (still cached: not recomputed)
    assert exca.ops.inspect(theirs)[0].status == "success"


def test_clean_that_fails_midway_says_what_is_left_and_counts_what_it_freed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A file that cannot be deleted once the removal started (another user's file in a
    sticky folder: the check before cannot see it): the report said "left as they were"
    with nothing freed, though the folder was renamed away and mostly deleted; a shared
    logs folder's file stopped the removal of the next ones (a review). Simulated with
    a failing unlink."""
    root, shared = tmp_path / "cache", tmp_path / "shared-logs"
    Train(seed=1, infra={"folder": root}).fit()
    Train(seed=1, infra={"folder": root, "version": "2"}).fit()
    Source(infra={"folder": root, "cluster": "local", "logs": shared}).make()
    old = folder_of(Train(seed=1, infra={"folder": root}))
    unlink = os.unlink

    def guarded(path: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> None:
        if os.path.basename(path) in ("uid.yaml", "notes.txt") or str(path).endswith("_log.out"):
            raise PermissionError(1, "Operation not permitted", str(path))
        unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", guarded)
    plan = clean.old_versions(root)
    with caplog.at_level("WARNING", logger="exca"):
        freed = plan.execute()
    ((path, why),) = plan.failed
    (trash,) = old.parent.glob(".removing-*")
    assert path == old and not old.exists() and "partly removed" in why and str(trash) in why
    assert 0 < freed < plan.size and str(trash) in caplog.text
    assert sorted(p.name for p in trash.iterdir()) == ["uid.yaml"]
    logs = clean.logs(root, older_than_days=0)
    (removal,) = logs.removals
    assert removal.files is not None and len(removal.files) > 2
    logs.execute()
    ((_, why),) = logs.failed
    assert "1 of" in why and "left" in why
    assert [p.name for p in shared.iterdir()] == [n for n in removal.files if n.endswith("out")]


def test_clean_versions_removes_a_log_folder_named_by_the_logs_setting(tmp_path: Path) -> None:
    """logs="{folder}/slurm-logs/%j": that folder went with the old version too (it was
    kept, and the old version, left with it only, was no longer seen)."""
    root = tmp_path / "cache"
    infra = {"folder": root, "cluster": "local", "logs": "{folder}/slurm-logs/%j"}
    Train(seed=1, infra=infra).fit()
    Train(seed=1, infra={**infra, "version": "2"}).fit()
    old = folder_of(Train(seed=1, infra={"folder": root}))
    assert (old.parent / "slurm-logs").is_dir()
    plan = clean.old_versions(root)
    assert sorted(r.path for r in plan.removals) == [old, old.parent / "slurm-logs"]
    plan.execute()
    assert not old.parent.exists()  # (emptied: removed too)


def test_clean_versions_keeps_logs_a_current_node_of_the_same_array_needs(
    tmp_path: Path,
) -> None:
    """Two nodes sent in one array keep their logs in the first one's step folder: a new
    version of that one made the folder "old", and cleaning removed the logs of the other,
    current, node."""
    root = tmp_path / "cache"
    local = {"folder": root, "cluster": "local"}
    train, source = Train(seed=8, infra=local).fit.node(), Source(n=9, infra=local).make.node()
    exca.graph.run(train, source)
    (log,) = {exca.ops.logs(n)[-1].stdout_path for n in (source,)}
    holder = next(
        n for n in (train, source) if n.folder is not None and n.folder.parent in log.parents
    )
    other = source if holder is train else train
    assert holder.folder is not None and other.folder is not None
    if holder is train:
        Train(seed=8, infra={"folder": root, "version": "2"}).fit()
    else:
        Source(n=9, infra={"folder": root, "version": "2"}).make()
    plan = clean.old_versions(root)
    assert [r.path for r in plan.removals] == [holder.folder]
    assert [(p, why.split(" (")[0]) for p, why in plan.kept] == [
        (holder.folder.parent / "logs", "logs of jobs of current nodes too")
    ]
    plan.execute()
    assert exca.ops.logs(other)[-1].stdout_path.exists()


def _dead_claim(folder: Path) -> None:
    """A claim left by a process that died without releasing it."""
    run_python(
        f"""
        import os
        from exca.storage.claims import Claims
        claim = Claims({str(folder)!r}).claim(["result"])
        assert claim.mine == ["result"]
        os._exit(0)  # dies holding the claim
        """
    )


def test_clean_orphans(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    big = 1000  # a result this large is stored in its own payload file (small ones inline)
    source = Source(n=big, infra={"folder": root})
    assert source.make() == list(range(big))
    folder = folder_of(source)
    data = folder / "data"
    (referenced,) = list(data.iterdir())
    orphan = data / "result-0badc0de-ffffff.pkl"
    orphan.write_bytes(referenced.read_bytes())
    tmp_file = data / "save-tmp-0123456789ab-result.pkl"
    tmp_file.write_bytes(b"half written")
    tmp_yaml = folder / ".uid.yaml.tmp-12345-abcdef"  # (a yaml file's writer killed)
    tmp_yaml.write_text("n: 1")
    _dead_claim(folder)
    (dead_claim,) = list((folder / "claims").glob("*.claim"))
    # young files may belong to a writer still at work: kept by the default grace period
    assert clean.orphans(root).removals == []
    plan = clean.orphans(root, min_age_hours=0)
    reasons = {r.path: r.reason for r in plan.removals}
    assert set(reasons) == {orphan, tmp_file, tmp_yaml, dead_claim}
    assert "temporary" in reasons[tmp_file] and "no entry refers" in reasons[orphan]
    assert "temporary" in reasons[tmp_yaml]
    assert {r.path: r.size for r in plan.removals}[orphan] == orphan.stat().st_blocks * 512
    freed = plan.execute()
    assert freed == plan.size
    assert not orphan.exists() and not tmp_file.exists() and not dead_claim.exists()
    assert not tmp_yaml.exists() and (folder / "uid.yaml").exists()
    assert referenced.exists()
    assert CacheDict(folder)["result"] == list(range(big))
    # from the command line: files older than the grace period (1 hour) go
    again = data / "result-0badc0de-eeeeee.pkl"
    again.write_bytes(b"orphan")
    old = time.time() - 2 * 3600
    os.utime(again, (old, old))
    preview = json.loads(cli("clean", root, "orphans", "--json", check=True).stdout)
    assert [Path(r["path"]) for r in preview["removals"]] == [again]
    assert again.exists()
    cli("clean", root, "orphans", "--yes", check=True)
    assert not again.exists() and referenced.exists()
    assert Source(n=big, infra={"folder": root}).make() == list(range(big))
    # nothing left: no "run again with --yes" after "Nothing to remove."
    assert cli("clean", root, "orphans", check=True).stdout.strip() == "Nothing to remove."


def test_clean_orphans_removes_the_sbatch_script_of_a_failed_submission(tmp_path: Path) -> None:
    """submitit writes a Slurm job's script as logs/<user>/.submission_file_<hex>.sh, then
    moves it into the job's folder, leaving a link: a submission that failed (sbatch
    refused it; a full disk left it empty) left the file there for good, which no clean
    removed (its pickle went). `clean orphans` removes it once old, not a sent one's link."""
    root = tmp_path / "cache"
    Train(seed=1, infra={"folder": root}).fit()
    logs = folder_of(Train(seed=1, infra={"folder": root})).parent / "logs" / "someone"
    (logs / "123").mkdir(parents=True)
    failed = logs / f".submission_file_{'a' * 32}.sh"
    failed.touch()  # (empty: the disk was full)
    sent = logs / "123" / "123_submission.sh"
    sent.write_text("#!/bin/bash")
    link = logs / f".submission_file_{'b' * 32}.sh"
    link.symlink_to(sent)
    other = logs / ".submission_file_notours.sh"  # (not submitit's name: left alone)
    other.touch()
    old = time.time() - 2 * 3600
    for path in (failed, sent, other):
        os.utime(path, (old, old))
    os.utime(link, (old, old), follow_symlinks=False)
    assert clean.orphans(root, min_age_hours=3).removals == []  # (younger than asked)
    plan = clean.orphans(root)
    assert [(r.path, r.reason) for r in plan.removals] == [
        (failed, "sbatch script of a submission that failed (never sent)")
    ]
    plan.execute()
    assert not failed.exists() and link.is_symlink() and sent.exists() and other.exists()


def test_clean_orphans_removes_unsent_pickles_in_a_maps_log_folder(tmp_path: Path) -> None:
    """A map's jobs log into its node folder (logs/<user>/), a task's into its step's:
    `clean orphans` looked for the pickles and sbatch scripts of submissions that never
    went out (a submitter killed while sbatch ran) in the step's only, and left a map's
    for good. Both are looked at now, once old."""
    root = tmp_path / "cache"
    Squares(infra={"folder": root}).square([1])
    logs = folder_of(Squares(infra={"folder": root})) / "logs" / "someone"
    logs.mkdir(parents=True)
    pickle_file, script = logs / f"{'c' * 32}.pkl", logs / f".submission_file_{'d' * 32}.sh"
    for path in (pickle_file, script):
        path.write_bytes(b"x")
        os.utime(path, (time.time() - 2 * 3600,) * 2)
    plan = clean.orphans(root)
    assert sorted((r.path, r.reason) for r in plan.removals) == [
        (script, "sbatch script of a submission that failed (never sent)"),
        (pickle_file, "pickle of a submission that failed (never sent)"),
    ]
    plan.execute()
    assert not pickle_file.exists() and not script.exists()
    assert Squares(infra={"folder": root}).square([1]) is not None


class Named(pydantic.BaseModel):
    """A map whose item uids are the items (strings), outputs pickled to one file each."""

    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str, cache_type="Pickle")
    def label(self, items: list[str]) -> tp.Iterator[str]:
        for item in items:
            yield item.upper()


def test_clean_orphans_keeps_payloads_of_keys_named_like_temporary_files(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    assert list(Named(infra={"folder": root}).label(["save-tmp-a"])) == ["SAVE-TMP-A"]
    (folder,) = [f for _, _, f in node_folders(root)]
    (payload,) = list((folder / "data").iterdir())
    assert payload.name.startswith("save-tmp-")
    assert clean.orphans(root, min_age_hours=0).removals == []
    assert payload.exists()


def _node_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "cache" / "pkg.Cls.method,1" / "default"
    folder.mkdir(parents=True)
    (folder / "uid.yaml").write_text("{}\n")
    return folder


def test_clean_orphans_keeps_what_readers_may_still_read(tmp_path: Path) -> None:
    """Three payloads no entry of a fresh reader points to, still in use: the shared file
    of a writer session whose index file is there (it writes again into it, and readers
    mapped it), the payload of a duplicate entry (two writers raced on a key: a reader
    may return either copy), and what another exca wrote (its index is not read)."""
    import numpy as np

    folder = _node_folder(tmp_path)
    writer: CacheDict[tp.Any] = CacheDict(folder)
    with writer.write():
        writer["a"] = np.arange(8.0)
        writer["t"] = "long text " * 100  # (its own shared file: <session>-data.txt)
    del writer["a"]  # every entry of the session's shared files deleted
    del writer["t"]
    first: CacheDict[str] = CacheDict(folder, cache_type="Pickle")
    second: CacheDict[str] = CacheDict(folder, cache_type="Pickle")
    assert "k" not in first and "k" not in second  # (both checked before either wrote)
    with first.write():
        first["k"] = "first"
    with second.write():
        second["k"] = "second"
    foreign = folder / "vm-140245-info.jsonl"  # the reference's index name
    foreign.write_text('{"#key": "x", "#type": "PickleDump", "filename": "x-abcdef12.pkl"}\n')
    (folder / "data" / "x-abcdef12.pkl").write_bytes(b"\0" * 24)
    before = sorted(p.name for p in (folder / "data").iterdir())
    assert len(before) == 5  # two shared files, two payloads of k, the foreign one
    assert clean.orphans(tmp_path / "cache", min_age_hours=0).removals == []
    foreign.unlink()  # (without the foreign index: its payload is an orphan like any)
    plan = clean.orphans(tmp_path / "cache", min_age_hours=0)
    assert [r.path.name for r in plan.removals] == ["x-abcdef12.pkl"]
    plan.execute()
    assert sorted(p.name for p in (folder / "data").iterdir()) == sorted(
        set(before) - {"x-abcdef12.pkl"}
    )
    assert {CacheDict(folder)["k"], first["k"], second["k"]} == {"first", "second"}


def test_a_writer_whose_shared_file_was_removed_starts_a_new_one(tmp_path: Path) -> None:
    """A shared data file removed under a live writer session (a clean) is not made again
    under its name from offset 0: a reader that mapped the old file would read the old
    bytes for the new entries."""
    import numpy as np

    folder = _node_folder(tmp_path)
    writer: CacheDict[tp.Any] = CacheDict(folder)
    reader: CacheDict[tp.Any] = CacheDict(folder)
    with writer.write():
        writer["a"] = np.arange(8.0)
    assert reader["a"].tolist() == list(range(8))  # (the reader maps the file)
    del writer["a"]
    (shared,) = (folder / "data").iterdir()
    shared.unlink()  # what a clean of its payloads does
    with writer.write():
        writer["b"] = np.full(8, 7.0)
    assert reader["b"].tolist() == [7.0] * 8
    assert not shared.exists()  # (a new session, a new name)


class ShoutedText:
    """A user format (as in docs/cachedict.md): one file per entry, named in its own way."""

    @classmethod
    def __dump_info__(cls, ctx: tp.Any, value: str) -> dict[str, tp.Any]:
        path = ctx.key_path(".txt")
        path.write_text(value.upper())
        return {"name": path.name}

    @classmethod
    def __load_from_info__(cls, ctx: tp.Any, name: str) -> str:
        return (ctx.folder / "data" / name).read_text()


def _orphans_keep_the_payload_of(fmt: type, value: str, tmp_path: Path) -> tp.Any:
    """Clean orphans in a folder holding one entry of a user format and an unreferenced
    file: only the file goes; returns the entry read back (its payload is still there)."""
    from exca.cachedict import DumpContext

    if fmt.__name__ not in DumpContext.HANDLERS:
        DumpContext.register(fmt)
    folder = tmp_path / "cache" / "step,1" / "default"
    folder.mkdir(parents=True)
    (folder / "uid.yaml").write_text("{}\n")
    cd: CacheDict[str] = CacheDict(folder, cache_type=fmt.__name__)
    with cd.write():
        cd["a"] = value
    (payload,) = list((folder / "data").iterdir())
    (folder / "data" / "nobody-reads-this.txt").write_text("orphan")
    plan = clean.orphans(tmp_path / "cache", min_age_hours=0)
    assert [r.path.name for r in plan.removals] == ["nobody-reads-this.txt"]
    plan.execute()
    assert payload.exists()
    return CacheDict(folder)["a"]


def test_an_orphan_removed_meanwhile_is_not_counted_as_freed(tmp_path: Path) -> None:
    """Two cleaners of one leftover: the one finding it gone counted its bytes as freed
    (a review)."""
    folder = tmp_path / "cache" / "step,1" / "default"
    (folder / "data").mkdir(parents=True)
    (folder / "uid.yaml").write_text("{}\n")
    orphan = folder / "data" / "nobody-reads-this.txt"
    orphan.write_text("orphan" * 1000)
    plan = clean.orphans(tmp_path / "cache", min_age_hours=0)
    assert [r.path for r in plan.removals] == [orphan] and plan.size > 0
    orphan.unlink()  # (the other cleaner)
    assert plan.execute() == 0 and plan.failed == [] and plan.skipped == []


def test_clean_orphans_keeps_payloads_of_user_formats(tmp_path: Path) -> None:
    assert _orphans_keep_the_payload_of(ShoutedText, "quiet", tmp_path) == "QUIET"


class TextParts:
    """A user format writing a folder per entry, its record naming the files in it."""

    @classmethod
    def __dump_info__(cls, ctx: tp.Any, value: str) -> dict[str, tp.Any]:
        parts = ctx.key_path("-parts")
        parts.mkdir()
        (parts / "head.txt").write_text(value[:2])
        (parts / "tail.txt").write_text(value[2:])
        return {"files": [f"{parts.name}/head.txt", f"data/{parts.name}/tail.txt"]}

    @classmethod
    def __load_from_info__(cls, ctx: tp.Any, files: list[str]) -> str:
        head, tail = files
        return (ctx.folder / "data" / head).read_text() + (ctx.folder / tail).read_text()


def test_clean_orphans_keeps_a_payload_folder_whose_files_an_entry_names(tmp_path: Path) -> None:
    """A format writing a folder of files for an entry (data/<folder>/head.txt), its record
    naming the files in it, not the folder: orphans took the folder for an unreferenced
    payload and removed it (the entry then failed to read)."""
    assert _orphans_keep_the_payload_of(TextParts, "hello", tmp_path) == "hello"


def test_clean_orphans_sizes_and_dates_a_payload_folder_by_its_files(tmp_path: Path) -> None:
    """A folder of data/ no entry names (a user format's, its entry deleted): the preview
    gave the size of the folder itself (4 KB) for the megabytes it holds, and dated it by
    its own mtime, not by its files (one written into it just now went too)."""
    folder = tmp_path / "cache" / "step,1" / "default"
    folder.mkdir(parents=True)
    (folder / "uid.yaml").write_text("{}\n")
    cd: CacheDict[list[int]] = CacheDict(folder)
    with cd.write():
        cd["a"] = list(range(2000))
    left = folder / "data" / "left-by-a-format"
    left.mkdir()
    (left / "big.bin").write_bytes(b"x" * 2_000_000)
    old = time.time() - 2 * 3600
    os.utime(left, (old, old))
    assert clean.orphans(tmp_path / "cache").removals == []  # (its file is recent)
    os.utime(left / "big.bin", (old, old))
    plan = clean.orphans(tmp_path / "cache")
    (removal,) = plan.removals
    assert removal.path == left and removal.size >= 2_000_000
    assert plan.execute() == removal.size and not left.exists()
    assert CacheDict(folder)["a"] == list(range(2000))


class KeyNamedText:
    """A user format naming its file after the key, without __delete_info__ (a deleted
    entry leaves its file; the key written again writes that file again)."""

    @classmethod
    def __dump_info__(cls, ctx: tp.Any, value: str) -> dict[str, tp.Any]:
        path = ctx.folder / "data" / f"{ctx.key}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_text(value)
        return {"name": path.name}

    @classmethod
    def __load_from_info__(cls, ctx: tp.Any, name: str) -> str:
        return (ctx.folder / "data" / name).read_text()


def test_clean_orphans_keeps_a_file_written_again_since_the_preview(tmp_path: Path) -> None:
    """A leftover of the preview written again before execute() (a user format naming
    files after keys, the key written again): execute() removed it, the new entry then
    failed to read. It is kept, named in plan.skipped."""
    from exca.cachedict import DumpContext

    if "KeyNamedText" not in DumpContext.HANDLERS:
        DumpContext.register(KeyNamedText)
    folder = tmp_path / "cache" / "step,1" / "default"
    folder.mkdir(parents=True)
    (folder / "uid.yaml").write_text("{}\n")
    cd: CacheDict[str] = CacheDict(folder, cache_type="KeyNamedText")
    with cd.write():
        cd["k"] = "old"
    del cd["k"]  # (its file stays: an orphan)
    old = time.time() - 2 * 3600
    os.utime(folder / "data" / "k.txt", (old, old))
    plan = clean.orphans(tmp_path / "cache")
    assert [r.path.name for r in plan.removals] == ["k.txt"]
    with cd.write():
        cd["k"] = "new"
    assert plan.execute() == 0
    assert [(p.name, why) for p, why in plan.skipped] == [
        ("k.txt", "written again since the preview")
    ]
    assert CacheDict(folder)["k"] == "new"
    # untouched since its preview, it goes
    del cd["k"]
    os.utime(folder / "data" / "k.txt", (old, old))
    plan = clean.orphans(tmp_path / "cache")
    assert plan.execute() == plan.size > 0 and not (folder / "data" / "k.txt").exists()


def test_read_only_commands_leave_unreadable_yaml_alone(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    assert Train(seed=3, infra={"folder": root}).fit() == 4
    folder = folder_of(Train(seed=3, infra={"folder": root}))
    (folder / "uid.yaml").write_text("[unclosed\n")
    (folder / "full-uid.yaml").write_text("[unclosed\n")
    exca.ops.inspect(root)
    cli("list", root, check=True)
    exca.ops.explain(Train(seed=4, infra={"folder": root}).fit.node())
    assert (folder / "uid.yaml").read_text() == "[unclosed\n"
    assert (folder / "full-uid.yaml").read_text() == "[unclosed\n"
    # a computation of that config (a writer) rewrites them
    assert Train(seed=3, infra={"folder": root, "mode": "force"}).fit() == 4
    assert yaml.safe_load((folder / "uid.yaml").read_text()) == {"seed": 3}


def test_list_skips_a_uid_yaml_that_is_a_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A uid.yaml that is a folder (a sync, a slip) stopped `exca list` with
    IsADirectoryError (a probe): that node is skipped with a warning, the others listed."""
    root = tmp_path / "cache"
    for seed in (1, 2):
        Train(seed=seed, infra={"folder": root}).fit()
    odd = folder_of(Train(seed=1, infra={"folder": root}))
    (odd / "uid.yaml").unlink()
    (odd / "uid.yaml").mkdir()
    with caplog.at_level("WARNING", logger="exca"):
        infos = exca.ops.inspect(root)
    assert [i.folder for i in infos] == [folder_of(Train(seed=2, infra={"folder": root}))]
    assert f"Skipping {odd}" in caplog.text
    result = cli("list", root, check=True)
    assert "seed=2" in result.stdout and "Skipping" in result.stderr


def test_list_skips_a_folder_it_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a shared cache, another user's private folder: skipped with a warning (the whole
    listing failed). Simulated: tests run as root, which reads everything."""
    inspect_module = sys.modules["exca.ops.inspect"]  # (exca.ops.inspect is also a function)
    root = tmp_path / "cache"
    assert Train(seed=1, infra={"folder": root}).fit() == 2
    assert Source(n=2, infra={"folder": root}).make() == [0, 1]
    private = folder_of(Train(seed=1, infra={"folder": root})).parent
    scandir = os.scandir

    def guarded(path: tp.Any) -> tp.Any:
        if Path(path) == private:
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(inspect_module.os, "scandir", guarded)
    rows = exca.ops.inspect(root)
    assert [r.step.split(".")[-1] for r in rows] == ["make,1"]


def test_clean_logs_of_ended_jobs(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    task = Train(seed=7, infra={"folder": root, "cluster": "local"})
    assert task.fit() == 8
    folder = folder_of(task)
    (job,) = exca.ops.logs(folder)
    log_folder = job.stdout_path.parent
    assert "fitting seed=7" in job.stdout()
    assert "item(s) to remove" not in cli("clean", root, "logs", check=True).stdout  # 30 days
    before = tree_hash(root)
    preview = json.loads(cli("clean", root, "logs", "--days", "0", "--json", check=True).stdout)
    assert [Path(r["path"]) for r in preview["removals"]] == [log_folder]
    assert preview["bytes"] == disk_bytes(log_folder) > 0
    assert tree_hash(root) == before
    cli("clean", root, "logs", "--days", "0", "--yes", check=True)
    assert not log_folder.exists()
    assert Train(seed=7, infra={"folder": root}).fit() == 8  # results are not logs
    assert exca.ops.inspect(root)[0].status == "success"


def test_clean_logs_says_how_many_log_folders_it_leaves_as_recent(tmp_path: Path) -> None:
    """`exca clean ROOT logs` of a cache whose jobs ended this week said "Nothing to
    remove." alone: a user freeing space read it as "no logs here". It says how many log
    folders it leaves as younger than --days, and how to take them (not in --json; a
    --days that takes them all says nothing more)."""
    root = tmp_path / "cache"
    for seed in (1, 2):
        assert Train(seed=seed, infra={"folder": root, "cluster": "local"}).fit() == seed + 1
    said = "(2 log folder(s) of jobs that ended less than 30 day(s) ago are left: --days N"
    out = cli("clean", root, "logs", check=True).stdout
    assert out.startswith("Nothing to remove.\n") and said in out, out
    assert said in cli("clean", root, "logs", "--yes", check=True).stdout
    assert "less than 2.5 day(s) ago" in cli("clean", root, "logs", "--days", "2.5").stdout
    data = json.loads(cli("clean", root, "logs", "--json", check=True).stdout)
    assert data["removals"] == [] and data["kept"] == []
    out = cli("clean", root, "logs", "--days", "0", check=True).stdout
    assert out.startswith("2 item(s) to remove") and "are left" not in out, out
    assert len(exca.ops.clean.logs(root).recent) == 2


def test_clean_logs_says_it_leaves_the_logs_of_unrecorded_jobs_written_this_hour(
    tmp_path: Path,
) -> None:
    """A log folder no job record names, written to in the last hour, is left whatever
    --days (its job may be being submitted): `exca clean ROOT logs --days 0` left it and
    said nothing of it ("Nothing to remove." on a cache holding logs). It says so."""
    root = tmp_path / "cache"
    assert Train(seed=1, infra={"folder": root, "cluster": "local"}).fit() == 2
    (job,) = exca.ops.logs(folder_of(Train(seed=1, infra={"folder": root})))
    fresh = job.stdout_path.parent.parent / "79"  # (named as a local job's, no record)
    fresh.mkdir()
    (fresh / "79_0_log.out").write_text("...")
    plan = clean.logs(root, older_than_days=0)
    assert [r.path for r in plan.removals if not r.template] == [job.stdout_path.parent]
    assert plan.starting == [fresh] and plan.recent == []
    said = "(1 log folder(s) that no job record names were written to in the last hour: left"
    out = cli("clean", root, "logs", "--days", "0", "--yes", check=True).stdout
    assert said in out, out
    assert fresh.exists() and not job.stdout_path.parent.exists()
    out = cli("clean", root, "logs", "--days", "0", check=True).stdout
    assert out.startswith("Nothing to remove.") and said in out, out


def test_clean_logs_finds_the_logs_of_jobs_whose_record_is_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`exca clean ROOT logs` found job log folders through the job records alone. A
    record goes when its job is cancelled by a Ctrl-C of the submitter, with clear_job()
    or node.clear(), and with the node folder `clean node` removes, while a task's job
    logs stay in its step folder (<step>/logs/<user>/<job id>/): no command listed them
    any more (a training's logs, removed node by node, stayed until its whole version
    was cleaned). Such folders of the default layout are found, and go as the others
    do, unless a job of their id is queued on Slurm or a process of their id runs here
    (a local job's id), or they hold other files than submitit's."""
    root = tmp_path / "cache"
    cleared = Train(seed=3, infra={"folder": root, "cluster": "local"})
    removed = Train(seed=4, infra={"folder": root, "cluster": "local"})
    logs = []
    for task in (cleared, removed):
        assert task.fit() == task.seed + 1
        (job,) = exca.ops.logs(folder_of(task))
        logs.append(job.stdout_path.parent)
    cleared.infra.clear_job()
    clean.remove_nodes([folder_of(removed)]).execute()
    assert all(folder.exists() for folder in logs)  # (what the cleanings left)
    user = folder_of(cleared).parent / "logs" / "someone"
    left = {  # folders without a record that no cleaning may take
        "queued": user / "77",  # a Slurm job (submitted, not recorded yet: its
        "live": user / str(os.getpid()),  # submitter killed); a local job running
        "user's": user / "78",  # a folder holding a file of the user
        "recent": user / "79",  # written in the last hour: maybe being submitted
    }
    for folder in left.values():
        folder.mkdir(parents=True)
        (folder / f"{folder.name}_0_log.out").write_text("...")
    (left["user's"] / "notes.txt").write_text("mine")
    old = time.time() - 2 * 3600
    for folder in [*logs, *left.values()]:
        for path in folder.iterdir():
            if folder != left["recent"]:
                os.utime(path, (old, old))
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    counting_squeue(bin_folder, running={"77"})
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    assert clean.logs(root, older_than_days=1).removals == []  # (2 hours old)
    plan = clean.logs(root, older_than_days=0)
    assert sorted(r.path for r in plan.removals if not r.template) == sorted(logs)
    assert all("which no record names" in r.reason for r in plan.removals if not r.template)
    kept = dict(plan.kept)
    assert "job 77 (no record) is queued on Slurm" in kept[left["queued"]]
    assert f"a process {os.getpid()} runs here" in kept[left["live"]]
    assert left["user's"] not in kept and left["recent"] not in kept
    plan.execute()
    assert not any(folder.exists() for folder in logs)
    assert all(folder.exists() for folder in left.values())
    assert cleared.fit() == 4  # (results are not logs: computed again, as cleared)


def test_json_output_matching_nothing_says_why_on_stderr(tmp_path: Path) -> None:
    """`exca list --json` (and `clean node --where --json`) matching nothing printed `[]`
    (an empty plan) alone: the text output's why (a key no config has, a step matching
    nothing, a folder that is no cache) was lost, a typo looked like an empty cache. It
    is said on stderr (stdout stays the JSON)."""
    root = tmp_path / "cache"
    Train(seed=1, infra={"folder": root}).fit()
    cases = {
        ("list", root, "--where", "sed=1"): "No config has a key 'sed'",
        ("list", tmp_path): "it holds no <module>.<Class>.<method>,<version> folder",
        ("clean", root, "node", "--where", "sed=1"): "No config has a key 'sed'",
    }
    for args, why in cases.items():
        result = cli(*args, "--json", check=True)
        out = json.loads(result.stdout)
        assert out == [] or (out["removals"] == [] and out["dryrun"] is True), out
        assert result.stderr.startswith("exca: note: ") and why in result.stderr, result.stderr
    assert cli("list", root, "--json", check=True).stderr == ""  # (matching: no note)


def test_clean_of_a_folder_that_is_no_cache_says_so(tmp_path: Path) -> None:
    """`exca clean DIR versions` (orphans, logs, compact) of a folder holding no cache,
    e.g. the project's folder given for its cache, said "Nothing to remove." alone, as
    for a clean cache: the user believed it clean. It says that DIR holds no step
    folder, as `list` does (exit 0, nothing removed; under --json on stderr)."""
    project = tmp_path / "project"
    Train(seed=1, infra={"folder": project / "cache"}).fit()
    (project / "notes.txt").write_text("x")
    before = tree_hash(project)
    for what in ("versions", "orphans", "logs", "compact"):
        result = cli("clean", project, what, "--yes", check=True)
        assert f"No cached node found in {project}: it holds no" in result.stdout, result.stdout
        assert f"cache folders inside it: {project / 'cache'}" in result.stdout, result.stdout
        assert result.stdout.startswith(("Nothing to remove.", "merged 0")), what
        result = cli("clean", project, what, check=True)  # (the preview too)
        assert f"No cached node found in {project}" in result.stdout, result.stdout
        result = cli("clean", project, what, "--json", check=True)
        json.loads(result.stdout)
        assert f"exca: note: No cached node found in {project}" in result.stderr, result.stderr
        # the cache itself: nothing more said
        assert "No cached node" not in cli("clean", project / "cache", what, check=True).stdout
    assert tree_hash(project) == before


def test_list_of_a_folder_holding_caches_names_them(tmp_path: Path) -> None:
    """`exca list demo-cache` (the folder the examples write to: they keep their caches
    in demo-cache/task, demo-cache/map...) said only that it "holds no
    <module>.<Class>.<method>,<version> folder": a newcomer did not see which folder to
    give. The sub-folders that are caches are named (a folder without any: as before)."""
    demo = tmp_path / "demo-cache"
    Train(seed=1, infra={"folder": demo / "task"}).fit()
    list(Squares(infra={"folder": demo / "map"}).square([1, 2]))
    (demo / "notes").mkdir()
    out = cli("list", demo, check=True).stdout
    assert f"No cached node found in {demo}: it holds no" in out
    assert out.rstrip().endswith(f"cache folders inside it: {demo / 'map'}, {demo / 'task'}")
    result = cli("list", demo, "--json", check=True)
    assert json.loads(result.stdout) == [] and f"inside it: {demo / 'map'}" in result.stderr
    assert "inside it" not in cli("list", demo / "notes", check=True).stdout
    assert "(1 config(s))" in cli("list", demo / "task", check=True).stdout


def test_options_taking_one_value_given_twice_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`exca list ROOT --step A --step B` listed B's step only (argparse keeps the last
    value, silently; so for --status, --mermaid, --mode, clean's --step and --days, logs'
    --item): the user asked for both. Each is refused, naming the two values."""
    from exca.ops.cli import main

    root = tmp_path / "cache"
    Train(seed=1, infra={"folder": root}).fit()
    folder = folder_of(Train(seed=1, infra={"folder": root}))
    target = f"{MODELS}:Train.fit"
    cases = [
        ["list", root, "--step", "Train", "--step", "Squares"],
        ["list", root, "--status", "success", "--status", "error"],
        ["plan", target, "--mermaid", tmp_path / "a", "--mermaid", tmp_path / "b"],
        ["explain", target, "--mode", "retry", "--mode=force"],
        ["check", target, "--mode", "retry", "--mode", "force"],
        ["clean", root, "logs", "--step", "Train", "--step", "Squares"],
        ["clean", root, "logs", "--days", "1", "--days", "2"],
        ["logs", folder, "--item", "a", "--item", "b"],
    ]
    for argv in cases:
        with pytest.raises(SystemExit) as exit_:
            main([str(a) for a in argv])
        assert exit_.value.code == 2, argv
        err = capsys.readouterr().err
        option = argv[-2].partition("=")[0] if argv[-2].startswith("--") else "--mode"
        assert f"argument {option}: given twice (" in err and "give it once" in err, (argv, err)
    assert main(["list", str(root), "--step", "Train"]) == 0  # (once: as before)
    assert "Train.fit,1" in capsys.readouterr().out


def test_where_without_a_key_is_refused(tmp_path: Path) -> None:
    """`exca list ROOT --where =1` (and `clean node --where =1`) was taken as a condition
    on the key '': "No cached node matches ... No config has a key ''", exit 0 (a
    probe). A condition without a key is refused as one without '=' is."""
    root = tmp_path / "cache"
    Train(seed=1, infra={"folder": root}).fit()
    for args in (("list", root), ("clean", root, "node")):
        for condition in ("=1", " =1"):
            result = cli(*args, "--where", condition)
            assert result.returncode == 2, result.stdout
            assert f"Cannot parse condition {condition!r}: expected key=value" in result.stderr
    with pytest.raises(ValueError, match="Cannot parse condition"):
        exca.ops.inspect(root, where=["=1"])


def test_clean_logs_refuses_days_that_are_not_a_number_of_days(tmp_path: Path) -> None:
    """`clean logs --days nan` previewed (and with --yes removed) the logs of every ended
    job, as --days 0 (every comparison with nan is False); --days -1 was refused naming
    older_than_days, a Python parameter. Both are refused naming --days; nothing removed."""
    root = tmp_path / "cache"
    task = Train(seed=7, infra={"folder": root, "cluster": "local"})
    assert task.fit() == 8
    (job,) = exca.ops.logs(folder_of(task))
    for days in ("nan", "-1"):
        result = cli("clean", root, "logs", "--days", days, "--yes")
        assert result.returncode == 2, (days, result.stdout)
        assert f"exca: error: ValueError: --days {days}: give a number of days >= 0" in (
            result.stderr
        )
    with pytest.raises(ValueError, match="older_than_days=nan"):
        clean.logs(root, older_than_days=float("nan"))
    assert job.stdout_path.exists()


def test_clean_removes_the_log_folder_template_its_submitter_left(tmp_path: Path) -> None:
    """A process that submitted local jobs and ended before them (killed, or a detached
    run) left submitit's literal, empty ``logs/<user>/%j`` folder (made by submitit's own
    controller: exca's makes none, see test_localcontroller): `clean orphans` and
    `clean logs` left it forever (a probe). Both remove it once empty and idle (neither
    it nor its parent, where each submission writes, changed for a while: a new
    submission's local jobs look for it as they start)."""
    root, flag = tmp_path / "cache", tmp_path / "flag"
    flag.touch()
    submitter = python(
        f"""
        import jobmodels_ops
        infra = {{"folder": {str(root)!r}, "cluster": "local", "max_jobs": 2}}
        mapper = jobmodels_ops.SlowMap(flag={str(flag)!r}, infra={{**infra, "min_samples_per_job": 1}})
        print(list(mapper.values([1, 2, 3, 4])))
        """
    )
    mapper = SlowMap(flag=str(flag), infra={"folder": root})
    folder = folder_of(mapper)
    try:
        wait_until(lambda: len(list(folder.glob("jobs/*.json"))) == 2, "the jobs are recorded")
    finally:
        submitter.kill()  # (killed while its jobs run)
        submitter.wait(timeout=WAIT_S)
        flag.unlink()
    wait_until(lambda: clean.busy_reason(folder) is None, "the jobs end")
    submitter.communicate(timeout=WAIT_S)  # (its pipes, which its jobs held)
    assert list(mapper.values([1, 2, 3, 4])) == [1, 2, 3, 4]  # (computed by the jobs)
    jobs = sorted(folder.glob("logs/*/*"))
    assert len(jobs) == 2 and all(job.name.isdigit() for job in jobs)
    template = jobs[0].parent / "%j"
    template.mkdir()  # (as submitit's own controller left it)

    def listed(plan: clean.CleanPlan) -> list[Path]:
        return [r.path for r in plan.removals if r.path.name == "%j"]

    def age(*paths: Path) -> None:
        old = time.time() - 2 * 3600
        for path in paths:
            os.utime(path, (old, old))

    # just left: a submission may be starting its jobs next to it
    assert listed(clean.orphans(root, min_age_hours=0)) == []
    assert listed(clean.logs(root, older_than_days=0)) == []
    age(template, template.parent)
    assert listed(clean.orphans(root)) == [template]
    assert listed(clean.logs(root, older_than_days=0)) == [template]
    (template / "x").touch()  # (not empty: kept)
    age(template, template.parent)
    assert listed(clean.orphans(root)) == listed(clean.logs(root, older_than_days=0)) == []
    (template / "x").unlink()
    age(template, template.parent)
    (template.parent / "12345").mkdir()  # (a new submission writes next to it: kept)
    assert listed(clean.orphans(root)) == listed(clean.logs(root, older_than_days=0)) == []
    (template.parent / "12345").rmdir()
    age(template, template.parent)
    preview = clean.orphans(root)
    assert listed(preview) == [template]
    os.utime(template.parent)  # (since the preview)
    preview.execute()
    assert template.is_dir() and [p for p, _ in preview.skipped] == [template]
    age(template, template.parent)
    out = cli("clean", root, "orphans", "--yes", check=True).stdout
    assert "log-folder template" in out and not template.exists()
    assert all(job.is_dir() for job in jobs)  # (orphans leaves the logs of jobs)
    template.mkdir()
    age(template, template.parent)
    cli("clean", root, "logs", "--days", "0", "--yes", check=True)
    assert not template.exists() and not any(job.exists() for job in jobs)
    # a task's logs are in its step folder
    task = Train(seed=3, infra={"folder": root, "cluster": "local"})
    assert task.fit() == 4
    (job_folder,) = folder_of(task).parent.glob("logs/*/*")
    template = job_folder.parent / "%j"
    template.mkdir()
    age(template, template.parent)
    assert listed(clean.orphans(root)) == listed(clean.logs(root, older_than_days=0)) == [template]


def test_clean_logs_keeps_those_of_a_local_job_running_on_another_host(tmp_path: Path) -> None:
    """A cache shared by machines: a local job running on host A, its logs cleaned from
    host B, which cannot see its process (taken for ended). `clean logs` removed the log
    folder of the running job ('logs of job N, ended'; the job then ended without its
    result). Its live claim (heartbeats, read across hosts) now tells it runs."""
    root = tmp_path / "cache"
    train = Train(seed=7, infra={"folder": root})
    train.fit()
    folder = folder_of(train)
    logs = folder.parent / "logs" / "someone" / "4242"
    logs.mkdir(parents=True)
    (logs / "4242_0_log.out").write_text("training...")
    old = time.time() - 2 * 86400
    os.utime(logs / "4242_0_log.out", (old, old))
    record = registry.JobRecord(
        job_id="4242", cluster="local", logs=str(logs), submitted=old, host="hostA", pid=1
    )
    registry.write(folder, record, link=False)
    # (its worker's claim: a child of the job's process, whose pid is the job's id)
    claim = folder / "claims" / "hostA-4243-4243-0123456789ab-abcdef.claim"
    claim.parent.mkdir(exist_ok=True)
    owner = {"host": "hostA", "pid": 4243, "start": None, "thread": 4243, "job_id": None}
    claim.write_text(json.dumps({"owner": owner, "keys": ["result"]}))
    plan = clean.logs(root, older_than_days=1)
    assert plan.removals == [] and [p for p, _ in plan.kept] == [logs]
    claim.unlink()  # (the job ended, or died: no live claim)
    assert [r.path for r in clean.logs(root, older_than_days=1).removals] == [logs]


def test_clean_logs_removes_the_template_beside_recent_logs(tmp_path: Path) -> None:
    """`clean logs` (default --days 30) kept an idle empty `%j` template for as long as
    any job of its log folder ended in the last 30 days (its parent changes with each
    job's folder): docs say it stays only while it or its parent changed in the last
    minute, as the commit adding it meant (a review)."""
    root = tmp_path / "cache"
    task = Train(seed=5, infra={"folder": root, "cluster": "local"})
    assert task.fit() == 6
    (job_folder,) = folder_of(task).parent.glob("logs/*/*")
    template = job_folder.parent / "%j"
    template.mkdir()
    old = time.time() - 2 * 3600  # (the job ended 2 hours ago: its logs stay 30 days)
    for path in (template, template.parent):
        os.utime(path, (old, old))
    plan = clean.logs(root)
    assert [r.path for r in plan.removals] == [template]
    plan.execute()
    assert not template.exists() and job_folder.is_dir()


def test_clean_logs_of_a_copied_cache_leaves_the_original_alone(tmp_path: Path) -> None:
    """Job records hold absolute log paths, those of the original: a copy's logs are read
    and cleaned from the copy's own log folders (the original's were removed once)."""
    original, copy = tmp_path / "original", tmp_path / "copy"
    assert Train(seed=7, infra={"folder": original, "cluster": "local"}).fit() == 8
    (job,) = exca.ops.logs(folder_of(Train(seed=7, infra={"folder": original})))
    squares = Squares(infra={"folder": original, "cluster": "local"})
    assert list(squares.square([1, 2])) == [1, 4]  # (a map's logs are in its node folder)
    jobs = [job, *exca.ops.logs(squares.square.node([1, 2]))]
    assert len(jobs) > 1
    shutil.copytree(original, copy, symlinks=True)
    copied = [copy / j.stdout_path.parent.relative_to(original) for j in jobs]
    plan = clean.logs(copy, older_than_days=0)
    assert sorted(r.path for r in plan.removals) == sorted(copied)
    cli("clean", copy, "logs", "--days", "0", "--yes", check=True)
    assert all(j.stdout_path.exists() for j in jobs)
    assert not any(c.exists() for c in copied)
    # the copy's logs are gone: said so, not the original's shown instead (a probe)
    result = cli(
        "logs", copy / folder_of(Train(seed=7, infra={"folder": original})).relative_to(original)
    )
    assert result.returncode == 1 and "is not there" in result.stdout
    assert str(copy) in result.stdout and str(original) not in result.stdout


def test_garbage_refused_names_the_targets_cached_under_another_module(tmp_path: Path) -> None:
    """A pipeline run as a script caches ``__main__.<Class>.<method>``; its targets built
    from the module are other steps: garbage refused with "they are not computed (a
    config typo?)", which hid why (a probe). It names the steps that hold them."""
    root = tmp_path / "cache"
    task = Train(seed=11, infra={"folder": root})
    task.fit()
    step = folder_of(task).parent
    step.rename(step.with_name(f"__main__.{step.name.split('.', 1)[1]}"))
    with pytest.raises(ValueError, match=r"other module names: __main__\.Train\.fit,1"):
        clean.garbage(root, task.fit.node())


def test_garbage_names_a_kept_result_of_other_class_defaults(tmp_path: Path) -> None:
    """A target whose cached result was computed with other class defaults: garbage kept
    it silently (the target then fails on it) and removed the others (a probe)."""
    from exca.infra import base as infra_base

    root = tmp_path / "cache"
    assert Train(seed=1, infra={"folder": root}).fit() == 2
    assert Train(seed=2, infra={"folder": root}).fit() == 3
    folder = folder_of(Train(seed=1, infra={"folder": root}))
    full = folder / "full-uid.yaml"
    assert "0.01" in full.read_text()
    full.write_text(full.read_text().replace("0.01", "0.05"))  # (the default was 0.05)
    infra_base._DEFAULTS_CHECKED.clear()  # (as in a new process)
    plan = clean.garbage(root, [Train(seed=1, infra={"folder": root}).fit.node()])
    assert [r.path for r in plan.removals] == [folder_of(Train(seed=2, infra={"folder": root}))]
    assert [path for path, _ in plan.kept] == [folder]
    assert "other class defaults" in plan.kept[0][1] and "exca clean" in plan.kept[0][1]


def test_garbage_keeps_a_target_cached_under_its_legacy_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A target cached by an older exca (v2 folder name, which its next run renames and
    reuses): garbage removed it as "not reached by the given targets" (the run computed
    it again), and remove_nodes of that target found nothing to remove (a probe)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("CONFDICT_UID_VERSION", "2")
    Train(optim={"lr": 0.2}, infra={"folder": root}).fit()
    legacy = folder_of(Train(optim={"lr": 0.2}, infra={"folder": root}))
    monkeypatch.delenv("CONFDICT_UID_VERSION")
    Train(seed=1, infra={"folder": root}).fit()
    target = Train(optim={"lr": 0.2}, infra={"folder": root})
    assert folder_of(target) != legacy and not folder_of(target).exists()
    plan = clean.garbage(root, [target.fit.node()])
    assert [r.path for r in plan.removals] == [folder_of(Train(seed=1, infra={"folder": root}))]
    assert [r.path for r in clean.remove_nodes([target.fit.node()]).removals] == [legacy]
    plan.execute()
    capsys.readouterr()
    assert Train(optim={"lr": 0.2}, infra={"folder": root}).fit() == 20.0
    assert "fitting" not in capsys.readouterr().out  # (reused, not computed again)


def test_a_node_folder_that_lost_its_uid_yaml_is_listed_and_cleaned(tmp_path: Path) -> None:
    """A node folder whose uid.yaml was removed (its result still reused by a call) was
    invisible: `exca list` left it out, `clean node` refused it as "not the folder of a
    node", garbage and versions ignored it (a probe)."""
    root = tmp_path / "cache"
    lost = Train(seed=1, infra={"folder": root})
    lost.fit()
    Train(seed=2, infra={"folder": root}).fit()
    folder = folder_of(lost)
    (folder / "uid.yaml").unlink()
    info = by_uid(exca.ops.inspect(root))[folder.name]
    assert info.status == "success" and info.note is not None and "uid.yaml" in info.note
    assert [i.folder for i in exca.ops.inspect(root, where=["seed=1"])] == [folder]
    assert "uid.yaml missing" in cli("list", root, check=True).stdout
    kept = Train(seed=2, infra={"folder": root}).fit.node()
    assert [r.path for r in clean.garbage(root, [kept]).removals] == [folder]
    Train(seed=2, infra={"folder": root, "version": "2"}).fit()
    assert folder in [r.path for r in clean.old_versions(root).removals]
    result = cli("clean", root, "node", folder, "--yes", check=True)
    assert not folder.exists(), result.stdout


def test_a_damaged_uid_yaml_is_noted_and_a_damaged_full_uid_yaml_written_again(
    tmp_path: Path,
) -> None:
    """A damaged uid.yaml (no yaml: a sync or an edit gone wrong) was listed as {} without
    a note and `--where` missed it; a damaged full-uid.yaml turned the check of changed
    class defaults off, and stayed (a probe). `exca list` notes the damaged uid.yaml and
    filters on full-uid.yaml's values; removing it has the next call write it back (a hit
    does not read it: it stays cheap). A damaged full-uid.yaml, read by a call reusing the
    result anyway (once per process: a new process here), is written again (not in mode
    read-only)."""
    root = tmp_path / "cache"
    for seed in (1, 2):
        Train(seed=seed, infra={"folder": root}).fit()
    folder = folder_of(Train(seed=1, infra={"folder": root}))
    good = {name: (folder / name).read_text() for name in ("uid.yaml", "full-uid.yaml")}
    (folder / "uid.yaml").write_text("seed: [1\n")
    listing = cli("list", root, check=True).stdout
    assert "uid.yaml unreadable (damaged?): a call of its config still reuses it; remove" in (
        listing
    )
    assert [i.folder for i in exca.ops.inspect(root, where=["seed=1"])] == [folder]

    def call(mode: str = "cached") -> str:  # (prints "fitting" when it computes)
        infra = {"folder": str(root), "mode": mode}
        return run_python(
            f"import jobmodels_ops\nprint(jobmodels_ops.Train(seed=1, infra={infra!r}).fit())"
        )

    (folder / "uid.yaml").unlink()  # (as the note says)
    assert call() == "2.0\n"  # (not computed)
    assert (folder / "uid.yaml").read_text() == good["uid.yaml"]
    assert by_uid(exca.ops.inspect(root))[folder.name].note is None
    (folder / "full-uid.yaml").write_bytes(b"\xff\xfe seed: 1\n")
    assert call("read-only") == "2.0\n"
    assert (folder / "full-uid.yaml").read_bytes() == b"\xff\xfe seed: 1\n"  # (left alone)
    assert call() == "2.0\n"
    assert (folder / "full-uid.yaml").read_text() == good["full-uid.yaml"]


@pytest.mark.parametrize("first", ["plan", "status", "read-only"])
def test_a_damaged_full_uid_yaml_is_written_again_after_a_read_in_the_same_process(
    tmp_path: Path, first: str
) -> None:
    """A plan, a status() or a read-only call that met a damaged full-uid.yaml (it only
    reads: it skips the file) did not leave the folder checked for the rest of the
    process: a call reusing the result after it writes the file again, as in a new
    process (else it was left damaged, and the check of class defaults off there)."""
    root = tmp_path / "cache"
    run_python(
        f"import jobmodels_ops\njobmodels_ops.Train(seed=1, infra={{'folder': {str(root)!r}}}).fit()"
    )
    folder = folder_of(Train(seed=1, infra={"folder": root}))
    good = (folder / "full-uid.yaml").read_text()
    (folder / "full-uid.yaml").write_bytes(b"\xff\xfe seed: 1\n")
    reads = {
        "plan": "print(exca.graph.plan(jobmodels_ops.Train(**kwargs).fit.node()))",
        "status": "print(jobmodels_ops.Train(**kwargs).infra.status())",
        "read-only": "print(jobmodels_ops.Train(seed=1, infra={**infra, 'mode': 'read-only'}).fit())",
    }
    infra = {"folder": str(root)}
    out = run_python(
        "import exca, jobmodels_ops\n"
        f"infra = {infra!r}\nkwargs = dict(seed=1, infra=infra)\n"
        f"{reads[first]}\n"
        "print('call', jobmodels_ops.Train(**kwargs).fit())\n"
    )
    assert out.splitlines()[-1] == "call 2.0" and "fitting" not in out  # (not computed)
    assert (folder / "full-uid.yaml").read_text() == good


def test_a_users_folders_holding_index_files_are_not_nodes(tmp_path: Path) -> None:
    """A user's own folders under comma-named folders of the root, holding index files
    but no uid.yaml nor full-uid.yaml (their own CacheDict, a run-info.jsonl next to their
    data), were listed with a "uid.yaml missing" note and removed by garbage and versions
    (a review)."""
    root = tmp_path / "cache"
    kept = Train(seed=1, infra={"folder": root})
    kept.fit()
    theirs = []
    for version in ("1", "2"):
        features = root / f"features,{version}" / "train"
        features.mkdir(parents=True)
        (features / "run-info.jsonl").write_text('{"a": 1}\n')
        (features / "precious.npy").write_text("data")
        bert = root / f"embeddings,v{version}" / "bert"
        embeddings: CacheDict[int] = CacheDict(bert)
        with embeddings.write():
            embeddings["k"] = 1
        theirs += [features, bert]
    assert [i.folder for i in exca.ops.inspect(root)] == [folder_of(kept)]
    assert "missing" not in cli("list", root, check=True).stdout
    plans = [
        clean.garbage(root, [kept.fit.node()]),
        clean.old_versions(root),
        clean.orphans(root, min_age_hours=0),
    ]
    for plan in plans:
        plan.execute()
    assert all(folder.exists() for folder in theirs)
    assert (root / "features,1" / "train" / "precious.npy").read_text() == "data"


def test_clean_node_given_twice_is_counted_once(tmp_path: Path) -> None:
    """The same node given twice ("F" and "F/", or a path and its Node), or with its
    config folder, was listed and counted twice: previews and `--yes` reported twice the
    bytes (a probe)."""
    root = tmp_path / "cache"
    obj = Train(seed=1, infra={"folder": root})
    obj.fit()
    folder = folder_of(obj)
    plan = clean.remove_nodes([folder, f"{folder}/", obj.fit.node()])
    assert [r.path for r in plan.removals] == [folder]
    _, down = _pipeline(root)
    assert down.result() == 12 and down.folder is not None
    plan = clean.remove_nodes([down, down.folder.parent])  # (its config folder holds it)
    assert [r.path for r in plan.removals] == [down.folder.parent]
    size = disk_bytes(folder)
    done = json.loads(cli("clean", root, "node", folder, f"{folder}/", "--yes", "--json").stdout)
    assert done["freed"] == size and len(done["removals"]) == 1
    assert not folder.exists()


def test_clean_node_given_with_a_symlink_to_it_removes_the_folder(tmp_path: Path) -> None:
    """A node folder given with a symlink to it, link first: only the link was kept, and
    `--yes` unlinked it, reported the folder's bytes as freed and left the folder (a
    review)."""
    root = tmp_path / "cache"
    obj = Train(seed=1, infra={"folder": root})
    obj.fit()
    folder = folder_of(obj)
    link = folder.parent / "mylink"
    link.symlink_to(folder)
    assert [r.path for r in clean.remove_nodes([folder, link]).removals] == [folder]
    size = disk_bytes(folder)
    done = json.loads(cli("clean", root, "node", link, folder, "--yes", "--json").stdout)
    assert [r["path"] for r in done["removals"]] == [str(folder)] and done["freed"] == size
    assert not folder.exists()


def test_clean_node_given_only_as_a_symlink_removes_the_folder(tmp_path: Path) -> None:
    """A node folder given only as a symlink to it (a shortcut of the user's, outside the
    cache): the link was unlinked, its folder's bytes reported as freed, and the cache
    left whole (a probe). Its folder goes now, and the link with it."""
    root = tmp_path / "cache"
    obj = Train(seed=5, infra={"folder": root})
    obj.fit()
    folder = folder_of(obj)
    link = tmp_path / "best"
    link.symlink_to(folder)
    size = disk_bytes(folder)
    preview = json.loads(cli("clean", root, "node", link, "--json", check=True).stdout)
    assert [r["path"] for r in preview["removals"]] == [str(folder)]
    assert str(link) in preview["removals"][0]["reason"]
    done = json.loads(cli("clean", root, "node", link, "--yes", "--json", check=True).stdout)
    assert done["freed"] == size
    assert not folder.exists() and not os.path.lexists(link)
    assert exca.ops.inspect(root) == []
    # a link to a link, from Python
    other = Train(seed=6, infra={"folder": root})
    other.fit()
    (tmp_path / "first").symlink_to(folder_of(other))
    (tmp_path / "second").symlink_to(tmp_path / "first")
    size = disk_bytes(folder_of(other))
    plan = clean.remove_nodes(tmp_path / "second")
    assert [r.path for r in plan.removals] == [folder_of(other)]
    assert plan.execute() == size
    assert not folder_of(other).exists() and not os.path.lexists(tmp_path / "second")
    assert os.path.lexists(tmp_path / "first")  # (not given: the user's, left dangling)


def test_a_link_to_a_config_folder_in_its_step_folder_is_that_node(tmp_path: Path) -> None:
    """A symlink beside a config folder, to it ("best", a user's shortcut): `list` showed
    it as one more config (its bytes counted twice); `clean versions` and `garbage`
    counted its bytes twice, unlinked it and removed the folder, reporting both as freed
    (a probe). It is that node now: listed once; the link goes with its folder."""
    root = tmp_path / "cache"
    old = Train(seed=7, infra={"folder": root})
    old.fit()
    folder = folder_of(old)
    link = folder.parent / "best"
    link.symlink_to(folder)
    assert [i.folder for i in exca.ops.inspect(root)] == [folder]
    assert "(1 config(s))" in cli("list", root, check=True).stdout
    Train(seed=7, infra={"folder": root, "version": "2"}).fit()
    size = disk_bytes(folder)
    plan = clean.old_versions(root)
    assert [r.path for r in plan.removals] == [folder] and plan.size == size
    assert plan.execute() == size
    assert not os.path.lexists(link) and not folder.parent.exists()
    # garbage: the same
    kept, dropped = Train(seed=8, infra={"folder": root}), Train(seed=9, infra={"folder": root})
    kept.fit()
    dropped.fit()
    link = folder_of(dropped).parent / "best"
    link.symlink_to(folder_of(dropped))
    size = disk_bytes(folder_of(dropped))
    plan = clean.garbage(
        root, [kept.fit.node(), Train(seed=7, infra={"folder": root, "version": "2"}).fit.node()]
    )
    assert [r.path for r in plan.removals] == [folder_of(dropped)]
    assert plan.execute() == size and not os.path.lexists(link)


def test_list_of_a_link_beside_its_config_folder_lists_that_node(tmp_path: Path) -> None:
    """`exca list ROOT/step/best`, a link beside the config folder it points to (that
    node, as clean and the docs take it), found nothing (a review): it lists that node."""
    root = tmp_path / "cache"
    for seed in (1, 2):
        Train(seed=seed, infra={"folder": root}).fit()
    folder = folder_of(Train(seed=1, infra={"folder": root}))
    (folder.parent / "best").symlink_to(folder.name)
    assert [i.folder for i in exca.ops.inspect(folder.parent / "best")] == [folder]
    out = cli("list", "best", cwd=folder.parent, check=True).stdout
    assert folder.name in out and "(1 config(s))" in out


def test_listing_resolves_only_the_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """node_folders resolved every config folder (realpath: a stat per path part) to find
    the links to siblings, doubling the time of a listing (a review): only links are."""
    from exca.ops.inspect import node_folders

    root = tmp_path / "cache"
    for seed in range(4):
        Train(seed=seed, infra={"folder": root}).fit()
    realpath = os.path.realpath
    resolved: list[str] = []

    def counted(path: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> str:
        resolved.append(os.fspath(path))
        return realpath(path, *args, **kwargs)

    monkeypatch.setattr(os.path, "realpath", counted)
    assert len(list(node_folders(root))) == 4
    assert resolved == []  # (no link anywhere: nothing to resolve)


def test_cleaning_a_link_that_is_not_to_a_sibling_unlinks_it_only(tmp_path: Path) -> None:
    """A symlink in a step folder to anything but a config folder beside it ("latest" in
    the old version's folder, to the live new one; a link to another cache's folder):
    `clean versions` and `garbage` removed the folder it points to, a live result or
    another cache's (a review). They unlink it only, as before; `clean node LINK` removes
    its target only in the cache root (resolved as the system does: ``..`` under a
    linked step folder is its target's parent)."""
    root, other = tmp_path / "cache", tmp_path / "other"
    old = Train(seed=1, infra={"folder": root})
    old.fit()
    new = Train(seed=1, infra={"folder": root, "version": "2"})
    new.fit()
    latest = folder_of(old).parent / "latest"
    latest.symlink_to(os.path.relpath(folder_of(new), latest.parent))
    plan = clean.old_versions(root)
    assert {r.path: r.size for r in plan.removals} == {
        folder_of(old): disk_bytes(folder_of(old)),
        latest: 0,
    }
    assert "unlinked only" in str(plan)
    plan.execute()
    assert [(i.folder, i.status) for i in exca.ops.inspect(root)] == [(folder_of(new), "success")]
    assert not os.path.lexists(latest) and not folder_of(old).parent.exists()
    # garbage: a link to another cache's folder
    elsewhere = Train(seed=2, infra={"folder": other})
    elsewhere.fit()
    dropped = Train(seed=3, infra={"folder": root, "version": "2"})
    dropped.fit()
    link = folder_of(new).parent / "from-other"
    link.symlink_to(folder_of(elsewhere))
    plan = clean.garbage(root, [new.fit.node()])
    assert sorted(r.path for r in plan.removals) == sorted([folder_of(dropped), link])
    plan.execute()
    assert not os.path.lexists(link) and folder_of(elsewhere).exists()
    assert [i.folder for i in exca.ops.inspect(other)] == [folder_of(elsewhere)]
    # clean node of a relative link in a step folder linked from another cache: the
    # system resolves its ".." in that other cache, whose folder is not this root's
    scratch_step = other / "linked,1"
    scratch_step.mkdir()
    (root / "linked,1").symlink_to(scratch_step)
    shortcut = root / "linked,1" / "best"
    shortcut.symlink_to(f"../{folder_of(elsewhere).parent.name}/{folder_of(elsewhere).name}")
    assert shortcut.resolve() == folder_of(elsewhere)
    for given_root in (None, root):
        with pytest.raises(ValueError, match="not in the cache root"):
            clean.remove_nodes(shortcut, root=given_root)
    assert folder_of(elsewhere).exists() and folder_of(new).exists()
    shortcut.unlink()
    # a loop of links in a step folder is no folder (listing and cleaning go on)
    (folder_of(new).parent / "loop").symlink_to(folder_of(new).parent / "loop2")
    (folder_of(new).parent / "loop2").symlink_to(folder_of(new).parent / "loop")
    assert [i.folder for i in exca.ops.inspect(root)] == [folder_of(new)]


def test_cleaning_leaves_what_an_alias_of_a_step_folder_holds(tmp_path: Path) -> None:
    """A step folder that is a symlink to another of the same root (a v1 folder aliasing
    v2): `clean versions` removed the live v2 results as v1's, which list showed under the
    alias's name (a review). What it holds is kept, with why; list names the real step
    folder."""
    second = tmp_path / "cache2"
    live = Train(seed=1, infra={"folder": second, "version": "2"})
    live.fit()
    alias = second / folder_of(live).parent.name.replace(",2", ",1")
    alias.symlink_to(folder_of(live).parent.name)
    assert [i.folder for i in exca.ops.inspect(second)] == [folder_of(live)]
    plan = clean.old_versions(second)
    assert "an alias of the step folder" in str(plan), str(plan)
    plan.execute()
    assert folder_of(live).exists() and live.infra.status() == "completed"


def test_clean_versions_judges_real_folders_not_an_alias_of_a_higher_version(
    tmp_path: Path,
) -> None:
    """A step folder alias of a higher version to an older one (fit,9 -> fit,2: a version
    bumped, its old results kept) was taken for the newest version: `clean versions --yes`
    removed fit,2 (the alias's target) and every real version, the real newest fit,3 too,
    leaving the alias to nothing (a review). Versions are judged on real folders; an alias
    (whatever its name) is kept, and so is the folder it points to."""
    root = tmp_path / "cache"
    trains = {v: Train(seed=1, infra={"folder": root, "version": v}) for v in "1234"}
    for train in trains.values():
        train.fit()
    steps = {v: folder_of(t).parent for v, t in trains.items()}
    bumped = root / steps["2"].name.replace(",2", ",9")
    bumped.symlink_to(steps["2"].name)
    named = root / steps["3"].name.replace(",3", ",best")  # (an alias not a number)
    named.symlink_to(steps["3"].name)
    preview = cli("clean", root, "versions", check=True).stdout
    assert f"{bumped}  (an alias of the step folder {steps['2'].name}" in preview, preview
    assert f"{named}  (an alias of the step folder {steps['3'].name}" in preview, preview
    assert f"{steps['2']}  (version '2' is older than '4', but the alias {bumped}" in preview
    assert "newest is 9" not in preview and "(newest is 4" in preview, preview
    done = cli("clean", root, "versions", "--yes", check=True).stdout
    assert "Removed 1 item(s)" in done, done
    assert not steps["1"].exists()
    for v in "234":
        assert folder_of(trains[v]).is_dir() and trains[v].infra.status() == "completed"
    assert bumped.is_symlink() and bumped.resolve() == steps["2"].resolve()
    assert named.is_symlink() and named.resolve() == steps["3"].resolve()
    # without the link, the folder it pointed to is an old version as any other
    bumped.unlink()
    cli("clean", root, "versions", "--yes", check=True)
    assert not steps["2"].exists() and folder_of(trains["4"]).is_dir()
    assert folder_of(trains["3"]).is_dir()  # (still the target of 'best')


def test_clean_versions_knows_an_alias_of_a_step_folder_moved_to_another_disk(
    tmp_path: Path,
) -> None:
    """fit,2 moved to another disk (a link out of the root: part of it, as cli.md says)
    and an alias fit,9 -> fit,2: the alias was told by the parent of its real path, out of
    the root, so fit,9 counted as version 9 and `versions --yes` removed every real
    version, the newest fit,3 too (a review). An alias is a step folder with the real path
    of another of the root, wherever that is."""
    root, disk2 = tmp_path / "cache", tmp_path / "disk2"
    disk2.mkdir()
    trains = {v: Train(seed=1, infra={"folder": root, "version": v}) for v in "123"}
    for train in trains.values():
        train.fit()
    steps = {v: folder_of(t).parent for v, t in trains.items()}
    moved = disk2 / steps["2"].name
    shutil.move(steps["2"], moved)
    steps["2"].symlink_to(moved)
    bumped = root / steps["2"].name.replace(",2", ",9")
    bumped.symlink_to(steps["2"].name)
    preview = cli("clean", root, "versions", check=True).stdout
    assert f"{bumped}  (an alias of the step folder {steps['2'].name}" in preview, preview
    assert "newest is 9" not in preview, preview
    cli("clean", root, "versions", "--yes", check=True)
    assert not steps["1"].exists()
    for v in "23":
        assert folder_of(trains[v]).is_dir() and trains[v].infra.status() == "completed"
    assert (moved / folder_of(trains["2"]).name).is_dir()
    assert bumped.resolve() == moved.resolve() and steps["2"].is_symlink()


def test_clean_versions_counts_own_configs_not_links_to_another_versions(
    tmp_path: Path,
) -> None:
    """fit,9/ a real folder holding only links to fit,2's configs (an alias made config by
    config) counted as version 9 holding a success: `versions --yes` removed fit,1..3, the
    real newest too (a review). A step folder is a version by its own configs: one holding
    only links to other step folders' is no version, kept, as the preview says."""
    root = tmp_path / "cache"
    trains = {v: Train(seed=1, infra={"folder": root, "version": v}) for v in "123"}
    for train in trains.values():
        train.fit()
    steps = {v: folder_of(t).parent for v, t in trains.items()}
    bumped = root / steps["2"].name.replace(",2", ",9")
    bumped.mkdir()
    config = folder_of(trains["2"]).name
    (bumped / config).symlink_to(f"../{steps['2'].name}/{config}")
    preview = cli("clean", root, "versions", check=True).stdout
    assert f"{bumped}  ({bumped.name} holds only links to config folders" in preview, preview
    assert "newest is 9" not in preview and "newest is 3" in preview, preview
    cli("clean", root, "versions", "--yes", check=True)
    assert not steps["1"].exists()
    assert folder_of(trains["3"]).is_dir() and trains["3"].infra.status() == "completed"
    assert (bumped / config).is_symlink()


def test_clean_versions_keeps_what_a_kept_link_points_to(tmp_path: Path) -> None:
    """A link in the newest version to an old version's config (fit,3/prev ->
    ../fit,1/<uid>), or in a step folder of only links (fit,9/<uid> -> ../fit,2/<uid>):
    `versions --yes` removed the config and left the link to nothing (a review). What a
    kept link points to stays, as the preview says; what no link points to goes."""
    root = tmp_path / "cache"
    trains = {v: Train(seed=1, infra={"folder": root, "version": v}) for v in "1234"}
    other = Train(seed=2, infra={"folder": root, "version": "1"})  # (no link to it)
    for train in [*trains.values(), other]:
        train.fit()
    configs = {v: folder_of(t) for v, t in trains.items()}
    prev = configs["4"].parent / "prev"
    prev.symlink_to(f"../{configs['1'].parent.name}/{configs['1'].name}")
    bumped = root / configs["2"].parent.name.replace(",2", ",9")
    bumped.mkdir()
    (bumped / configs["2"].name).symlink_to(f"../{configs['2'].parent.name}/{configs['2'].name}")
    shortcut = root / "best"  # (a link to an old step folder)
    shortcut.symlink_to(configs["3"].parent.name)
    preview = cli("clean", root, "versions", check=True).stdout
    assert f"{configs['1']}  (an old version (newest is 4), but the link {prev}" in preview
    assert f"{configs['2']}  (an old version (newest is 4), but the link {bumped}" in preview
    assert f"{configs['3']}  (an old version (newest is 4), but the link {shortcut}" in preview
    assert f"{folder_of(other)}  (old version" in preview, preview
    cli("clean", root, "versions", "--yes", check=True)
    assert not folder_of(other).exists()
    for v in "1234":
        assert configs[v].is_dir() and trains[v].infra.status() == "completed"
    assert prev.resolve() == configs["1"].resolve() and shortcut.resolve().is_dir()
    # without the links, those are old versions as any other
    for link in (prev, bumped / configs["2"].name, shortcut):
        link.unlink()
    cli("clean", root, "versions", "--yes", check=True)
    assert [v for v in "1234" if configs[v].exists()] == ["4"]


def test_clean_versions_links_of_a_review(tmp_path: Path) -> None:
    """Three slips of the link rules above (a review): fit,9 -> fit-v3-kept (a version
    renamed to keep it, a folder of the root named as no step) counted as version 9, so
    `versions --yes` removed fit,2 (kept before: an alias of that folder); an old
    version's own `code` link to a copy kept elsewhere counted as a kept link pointing to
    itself, keeping that version forever; a config kept for a link kept its version's code
    too, which the preview did not say."""
    root, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    trains = {v: Train(seed=1, infra={"folder": root, "version": v}) for v in "123"}
    for train in trains.values():
        train.fit()
    steps = {v: folder_of(t).parent for v, t in trains.items()}
    kept = root / "fit-v3-kept"
    steps["3"].rename(kept)
    bumped = root / steps["3"].name.replace(",3", ",9")
    bumped.symlink_to(kept.name)
    snapshot = elsewhere / "2026-12-05-abcdef"
    snapshot.mkdir(parents=True)
    (snapshot / "module.py").write_text("x = 1\n")
    (steps["1"] / "code").symlink_to(elsewhere)  # (an old version's code, kept elsewhere)
    preview = cli("clean", root, "versions", check=True).stdout
    assert f"{bumped}  (an alias of the step folder {kept.name}" in preview, preview
    assert "newest is 9" not in preview and "newest is 2" in preview, preview
    assert "points to it" not in preview, preview
    cli("clean", root, "versions", "--yes", check=True)
    assert not folder_of(trains["1"]).exists() and not (steps["1"] / "code").exists()
    assert (snapshot / "module.py").is_file()  # (the link only was removed)
    assert folder_of(trains["2"]).is_dir() and trains["2"].infra.status() == "completed"
    assert (bumped / folder_of(trains["3"]).name).is_dir()
    # a config kept for a link keeps its version's code: the preview says so
    newer = Train(seed=1, infra={"folder": root, "version": "4"})
    newer.fit()
    (steps["2"] / "code").mkdir()
    (steps["2"] / "code" / "2026-12-05-fedcba").mkdir()
    prev = folder_of(newer).parent / "prev"
    prev.symlink_to(f"../{steps['2'].name}/{folder_of(trains['2']).name}")
    preview = cli("clean", root, "versions", check=True).stdout
    assert f"{folder_of(trains['2'])}  (an old version (newest is 4), but the link" in preview
    assert f"{steps['2'] / 'code'}  (code of an old version (newest is 4), kept with" in preview
    cli("clean", root, "versions", "--yes", check=True)
    assert folder_of(trains["2"]).is_dir() and (steps["2"] / "code").is_dir()


class Untyped(pydantic.BaseModel):
    """A config of an untyped value: 1 and "1" are two configs with one v2 folder name."""

    value: tp.Any = 0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def show(self) -> str:
        print(f"computing {self.value!r}", flush=True)
        return repr(self.value)


def test_cleaning_skips_a_legacy_folder_of_another_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """v2 names do not record types: value=1 and value="1" share one. remove_nodes of
    value=1, never computed, removed the v2-named cache of value="1", and garbage kept
    it as value=1's instead of refusing targets not computed (a review)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("CONFDICT_UID_VERSION", "2")
    Untyped(value="1", infra={"folder": root}).show()
    monkeypatch.delenv("CONFDICT_UID_VERSION")
    never = Untyped(value=1, infra={"folder": root}).show.node()
    with pytest.raises(ValueError, match="not computed"):
        clean.garbage(root, [never])
    assert clean.remove_nodes([never]).removals == []
    capsys.readouterr()
    assert Untyped(value="1", infra={"folder": root}).show() == "'1'"
    assert "computing" not in capsys.readouterr().out  # (its legacy cache, reused)


def test_clean_node_where_removes_the_configs_list_where_shows(tmp_path: Path) -> None:
    """`list` took --where key=value, `clean` did not: removing the results of some configs
    meant copying their folders from list's output. `clean ROOT node --where` selects the
    configs `list --where` shows (the same code), previews unless --yes, and --step narrows
    it; through `python -m exca`."""
    root = tmp_path / "cache"
    folders = {}
    for lr in (0.01, 0.02):
        for seed in (0, 1):
            obj = Train(optim={"lr": lr}, seed=seed, infra={"folder": root})
            obj.fit()
            folders[lr, seed] = folder_of(obj)
    squares = Squares(infra={"folder": root})
    assert list(squares.square([1, 2])) == [1, 4]
    every = {*folders.values(), folder_of(squares)}

    def on_disk() -> set[Path]:
        return {f for f in every if f.exists()}

    listed = json.loads(cli("list", root, "--where", "optim.lr=0.02", "--json", check=True).stdout)
    preview = cli("clean", root, "node", "--where", "optim.lr=0.02", check=True).stdout
    assert {Path(i["folder"]) for i in listed} == {folders[0.02, 0], folders[0.02, 1]}
    # (what list shows, under why, said once; nothing removed yet)
    assert "\n  --where optim.lr=0.02: 2 item(s), " in preview, preview
    for info in listed:
        assert f"  {info['folder']}\n" in preview
    assert "2 item(s) to remove" in preview and "run again with --yes" in preview
    assert on_disk() == every
    # a key's end, as in list; conditions all hold; --yes removes
    done = cli("clean", root, "node", "--where", "lr=0.02", "--where", "seed=1", "--yes")
    assert done.returncode == 0 and "Removed 1 item(s)" in done.stdout, done.stdout
    assert on_disk() == every - {folders[0.02, 1]}
    # --step narrows the selection; a key no config has is named; nothing is removed
    other = cli("clean", root, "node", "--step", "Squares", "--where", "lr=0.01", "--yes")
    assert other.returncode == 0 and "Nothing to remove" in other.stdout, other.stdout
    typo = cli("clean", root, "node", "--where", "optim.lrr=0.01", "--yes", check=True).stdout
    assert "Nothing to remove" in typo and "No config has a key 'optim.lrr'" in typo
    assert on_disk() == every - {folders[0.02, 1]}
    cleaned = cli("clean", root, "node", "--step", "Train.fit,1", "--where", "seed=0", "--yes")
    assert "Removed 2 item(s)" in cleaned.stdout, cleaned.stdout
    assert on_disk() == {folders[0.01, 1], folder_of(squares)}
    # what does not go together
    for argv, said in {
        ("node", folders[0.01, 1], "--where", "seed=1"): "not both",
        ("node", "--step", "Train"): "--step only restricts those",
        ("node", folders[0.01, 1], "--step", "Train"): "--step does not apply",
        ("versions", "--where", "seed=1"): "--where does not apply",
        # (a --step matching nothing is an error, as for the other clean commands)
        ("node", "--where", "seed=1", "--step", "Typo", "--yes"): (
            f"--step 'Typo' matches no step of the root: {MODELS}.Squares.square,1, "
            f"{MODELS}.Train.fit,1"
        ),
    }.items():
        refused = cli("clean", root, *argv)
        assert refused.returncode == 2 and said in refused.stderr, (argv, refused.stderr)
    assert on_disk() == {folders[0.01, 1], folder_of(squares)}


def test_symlink_loops_are_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A loop of symlinks (a -> b -> a) given to list/clean/logs was "no such folder";
    one inside a cache root stopped clean orphans/logs and explain with "[Errno 40] Too
    many levels of symbolic links", and made clean versions skip the step folder holding
    it (its old results stayed). The loop is named, link by link; a scan skips it (and
    says so once)."""
    from exca.ops.cli import main

    root = tmp_path / "cache"
    old = Train(infra={"folder": root})
    old.fit()
    Train(infra={"folder": root, "version": "2"}).fit()
    step = folder_of(old).parent
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    (root / "y").symlink_to("a/sub")  # (into the loop, through a folder of it)
    (step / "x").symlink_to("y")  # (in the step folder of the old version)
    (step / "y").symlink_to("x")
    loop = [root / f"{MODELS}.Train.fit,{v}" for v in (7, 8)]
    loop[0].symlink_to(loop[1].name)
    loop[1].symlink_to(loop[0].name)
    for argv, named in {
        ("list", root / "a"): f"{root / 'a'}: a symlink loop: {root / 'a'} -> b -> a",
        ("list", root / "a" / "sub"): f"under a symlink loop: {root / 'a'} -> b -> a",
        # (a trailing slash: a itself is the loop, not under it)
        ("list", f"{root / 'a'}/"): f"{root / 'a'}/: a symlink loop: {root / 'a'} -> b -> a",
        ("list", root / "y"): (
            f"{root / 'y'}: a symlink into a symlink loop: {root / 'y'} -> a/sub, where "
            f"{root / 'a'} -> b -> a (fix or remove the link {root / 'a'})"
        ),
        ("clean", root / "a", "orphans"): f"{root / 'a'}: a symlink loop",
        ("clean", root, "node", step / "x"): f"{step / 'x'}: a symlink loop: {step / 'x'} -> y",
        ("logs", step / "y"): f"{step / 'y'}: a symlink loop: {step / 'y'} -> x -> y",
    }.items():
        refused = cli(*argv)
        assert refused.returncode == 2 and named in refused.stderr, (argv, refused.stderr)
        assert "no such folder" not in refused.stderr and "fix or remove the link" in refused.stderr
    # inside the root: skipped, and named
    for what in ("orphans", "logs", "versions"):
        done = cli("clean", root, what, check=True)
        assert "Errno 40" not in done.stderr, done.stderr
    versions = cli("clean", root, "versions", check=True)
    assert f"{folder_of(old)}  (" in versions.stdout  # (the old version goes: not skipped)
    assert f"Skipping {step / 'x'}: a symlink loop" in versions.stderr
    listed = cli("list", root, check=True)
    assert listed.stdout.count("success") == 2
    assert any(f"Skipping {link}: a symlink loop" in listed.stderr for link in loop)
    assert main(["explain", f"{MODELS}:Train.fit", f"infra.folder={root}", "seed=3"]) == 0
    assert "nearest cached" in capsys.readouterr().out
    assert {f for f in (*loop, step / "x", step / "y", root / "a") if f.is_symlink()} == {
        *loop,
        step / "x",
        step / "y",
        root / "a",
    }


def test_clean_node_checks_its_root_and_takes_relative_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`exca clean ROOT node FOLDER` checked ROOT only with --downstream: a node folder
    was taken as ROOT, and a node of another cache root was removed. "." (run from the
    node folder) was previewed, then failed to be removed (a probe)."""
    team_a, team_b = tmp_path / "a", tmp_path / "b"
    for root in (team_a, team_b):
        Train(seed=1, infra={"folder": root}).fit()
    theirs = folder_of(Train(seed=1, infra={"folder": team_b}))
    mine = folder_of(Train(seed=1, infra={"folder": team_a}))
    result = cli("clean", team_a, "node", theirs, "--yes")
    assert result.returncode == 2 and "is not in the cache root" in result.stderr
    result = cli("clean", mine, "node", mine)
    assert result.returncode == 2 and "not a cache root" in result.stderr
    assert theirs.exists() and mine.exists()
    monkeypatch.chdir(mine)
    plan = clean.remove_nodes(".", root="../..")
    assert [r.path for r in plan.removals] == [mine]
    plan.execute()
    assert not mine.exists() and theirs.exists()


def test_a_copy_made_while_a_job_ran_does_not_list_it_as_failed(tmp_path: Path) -> None:
    """A cache copied while a job computed into it: the job wrote its result into the
    original, not the copy, which listed it as an error ("ended without writing its
    result") while status() said "not submitted" (a probe)."""
    original, copy = tmp_path / "original", tmp_path / "copy"
    assert Train(seed=5, infra={"folder": original, "cluster": "local"}).fit() == 6
    shutil.copytree(original, copy, symlinks=True)
    folder = folder_of(Train(seed=5, infra={"folder": copy}))
    # (as copied while the job ran: neither its result nor submitit's result pickle yet)
    for path in [*folder.glob("*-info.jsonl"), *copy.rglob("*_result.pkl")]:
        path.unlink()
    (info,) = exca.ops.inspect(copy)
    assert (info.status, info.error, info.job_state) == ("empty", None, "ended")
    assert Train(seed=5, infra={"folder": copy}).infra.status() == "not submitted"
    (original_info,) = exca.ops.inspect(original)
    assert original_info.status == "success"


def test_logs_of_a_moved_cache(tmp_path: Path) -> None:
    """The records of a moved cache name the old place of the logs: `exca logs` and
    `clean logs` find them in the moved cache (they printed nothing, found nothing); a log
    file that is not there is an error, not an empty text."""
    before, after = tmp_path / "cache", tmp_path / "moved"
    assert Train(seed=7, infra={"folder": before, "cluster": "local"}).fit() == 8
    squares = Squares(infra={"folder": before, "cluster": "local", "max_jobs": 1})
    assert list(squares.square([1, 2])) == [1, 4]
    task_folder = folder_of(Train(seed=7, infra={"folder": before}))
    map_folder = squares.square.node([1, 2]).folder
    # a task with inputs (its node folder is <uid>/inputs-*), and two nodes of one array
    # (the second one's logs are in the first one's step folder)
    local = {"folder": before, "cluster": "local"}
    total = Total(infra=local).total.node(Source(n=3, infra=local).make.node())
    packed = [Train(seed=8, infra=local).fit.node(), Source(n=9, infra=local).make.node()]
    exca.graph.run(total, *packed)
    assert map_folder is not None and total.folder is not None
    logs = {str(exca.ops.logs(n)[-1].stdout_path.parent.parent.parent) for n in packed}
    assert len(logs) == 1  # (one array: one log folder)
    before.rename(after)
    for folder in (task_folder, map_folder, total.folder, *(n.folder for n in packed)):
        assert folder is not None
        moved = after / folder.relative_to(before)
        result = cli("logs", moved, check=True)
        assert str(after) in result.stdout.splitlines()[0]
        assert (moved / "submitit").resolve().is_relative_to(after)  # (the link too)
    assert "fitting seed=7" in cli("logs", after / task_folder.relative_to(before)).stdout
    # --item on a task: no chunk job (said why: --item is a map's)
    result = cli("logs", after / task_folder.relative_to(before), "--item", "x")
    assert result.returncode == 1 and "this is a task" in result.stdout
    plan = clean.logs(after, older_than_days=0)
    assert plan.kept == [] and all(r.path.is_relative_to(after) for r in plan.removals)
    plan.execute()
    result = cli("logs", after / task_folder.relative_to(before))
    assert result.returncode == 1 and "is not there" in result.stdout


def test_an_unreadable_job_record_is_named(tmp_path: Path) -> None:
    """A job record damaged outside exca: `exca logs` said "No job recorded", and nothing
    said why (a probe)."""
    root = tmp_path / "cache"
    assert Train(seed=7, infra={"folder": root, "cluster": "local"}).fit() == 8
    folder = folder_of(Train(seed=7, infra={"folder": root}))
    (record,) = (folder / "jobs").glob("*.json")
    record.write_text("{junk")
    result = cli("logs", folder)
    assert result.returncode == 1 and "No job recorded" in result.stdout
    assert f"Ignoring the unreadable job record {record}" in result.stderr, result.stderr


def test_clean_logs_counts_from_when_the_job_ended(tmp_path: Path) -> None:
    """A job submitted long ago (queued for days) that ended now: its logs are recent
    (they were removed by --days 1, counted from the submission)."""
    root = tmp_path / "cache"
    task = Train(seed=8, infra={"folder": root, "cluster": "local"})
    assert task.fit() == 9
    folder = folder_of(task)
    (path,) = (folder / "jobs").glob("*.json")
    record = json.loads(path.read_text())
    record["submitted"] -= 3 * 86400
    path.write_text(json.dumps(record))
    assert clean.logs(root, older_than_days=1).removals == []
    assert len(clean.logs(root, older_than_days=0).removals) == 1


def test_clean_logs_of_a_logs_setting_without_job_id_removes_only_those_jobs_files(
    tmp_path: Path,
) -> None:
    """logs= naming a folder without %j (a user's results folder, another cache's jobs in
    it, or the cache root itself): `clean logs` removed that whole folder, the user's
    files, the other cache's logs, or every cached result (a probe). Only the files of
    the cache's own jobs that ended go now."""
    results, root, other = tmp_path / "results", tmp_path / "cache", tmp_path / "other"
    results.mkdir()
    (results / "notes.txt").write_text("my notes")
    assert Train(seed=1, infra={"folder": root, "cluster": "local", "logs": results}).fit() == 2
    assert Train(seed=2, infra={"folder": other, "cluster": "local", "logs": results}).fit() == 3
    (own,) = [r["job_id"] for r in _records(folder_of(Train(seed=1, infra={"folder": root})))]
    (theirs,) = [r["job_id"] for r in _records(folder_of(Train(seed=2, infra={"folder": other})))]
    plan = clean.logs(root, older_than_days=0)
    assert [r.path for r in plan.removals] == [results]
    assert "only theirs" in str(plan)
    names = sorted(p.name for p in results.iterdir())
    assert plan.size == sum(
        (results / n).stat().st_blocks * 512 for n in names if n.startswith(own)
    )
    cli("clean", root, "logs", "--days", "0", "--yes", check=True)
    left = sorted(p.name for p in results.iterdir())
    assert left == [n for n in names if not n.startswith(f"{own}_")]
    assert "notes.txt" in left and any(n.startswith(f"{theirs}_") for n in left)
    # logs in the cache root itself
    assert Train(seed=3, infra={"folder": root, "cluster": "local", "logs": root}).fit() == 4
    cli("clean", root, "logs", "--days", "0", "--yes", check=True)
    assert not list(root.glob("*_log.out"))
    assert sorted(i.status for i in exca.ops.inspect(root)) == ["success", "success"]
    assert Train(seed=3, infra={"folder": root}).fit() == 4


def test_clean_logs_of_a_shared_folder_goes_job_by_job(tmp_path: Path) -> None:
    """A folder of many jobs' logs: one recent job kept every old job's files (a cache in
    use never had it cleaned), and a user's folder named like a debug job's array
    ("DEBUG") was removed whole with the user's files (a review)."""
    root, shared = tmp_path / "cache", tmp_path / "DEBUG"
    shared.mkdir()
    (shared / "notes.txt").write_text("mine")
    for seed, cluster in ((1, "local"), (2, "debug"), (3, "local")):
        infra = {"folder": root, "cluster": cluster, "logs": shared}
        assert Train(seed=seed, infra=infra).fit() == seed + 1
    old = [folder_of(Train(seed=s, infra={"folder": root})) for s in (1, 2)]
    old_ids = []
    for folder in old:  # (these two ended 40 days ago)
        (path,) = (folder / "jobs").glob("*.json")
        record = json.loads(path.read_text())
        record["submitted"] -= 40 * 86400
        path.write_text(json.dumps(record))
        old_ids.append(record["job_id"])
        for log in shared.glob(f"{record['job_id']}_*"):
            os.utime(log, (time.time() - 40 * 86400,) * 2)
    assert old_ids[1].startswith("DEBUG_")
    plan = clean.logs(root, older_than_days=30)
    (removal,) = plan.removals
    prefixes = tuple(f"{job_id}_" for job_id in old_ids)
    assert removal.files and all(n.startswith(prefixes) for n in removal.files)
    plan.execute()
    left = sorted(p.name for p in shared.iterdir())
    assert "notes.txt" in left and not any(n.startswith(tuple(old_ids)) for n in left)
    assert len(left) > 1  # (the recent job's files)


def _fake_job(node_folder: Path, job_id: str, logs: Path, age_days: float, **extra: tp.Any) -> None:
    """A job record of a node folder, and submitit's files for it in ``logs`` (Slurm jobs
    cannot be made here at will: as their records and files look)."""
    when = time.time() - age_days * 86400
    (node_folder / "jobs").mkdir(exist_ok=True)
    record = {"job_id": job_id, "cluster": "slurm", "logs": str(logs), "submitted": when}
    record.update(folder=str(node_folder), host=exca.storage.process.hostname(), pid=1, **extra)
    (node_folder / "jobs" / f"{job_id}.json").write_text(json.dumps(record))
    logs.mkdir(parents=True, exist_ok=True)
    for name in (f"{job_id}_0_log.out", f"{job_id}_submitted.pkl"):
        (logs / name).write_text("x" * 100)
        os.utime(logs / name, (when, when))


def _age(path: Path, days: float) -> None:
    when = time.time() - days * 86400
    os.utime(path, (when, when), follow_symlinks=False)


def test_clean_looks_at_the_slurm_queue_once_per_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`exca clean ... --yes` asked squeue about the jobs of each folder on its own, in the
    preview and again in the removal (50 folders: 102 calls for `clean node`; `clean node
    --where` asked once to select, once to remove). The preview
    and the removal share one look at the queue, asked about every job of the root at
    once, for each kind of cleaning; a folder whose job runs is still kept, and a job
    recorded after the preview is asked about when the removal meets it."""
    root = tmp_path / "cache"
    Train(seed=0, infra={"folder": root}).fit()
    source = folder_of(Train(seed=0, infra={"folder": root}))
    folders = []
    for i in range(50):
        folder = source.with_name(f"copy{i:02d}")
        shutil.copytree(source, folder)
        _fake_job(folder, str(5000 + i), root / "logs" / str(5000 + i), 40)
        folders.append(folder)
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    calls = counting_squeue(bin_folder, running={"5003", "5040", "5100"})
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")

    def asked(*args: str | Path) -> list[str]:
        calls.unlink(missing_ok=True)
        result = cli("clean", root, *args)
        assert result.returncode == 0, result.stderr
        return calls.read_text().splitlines()

    # (each: one call, for the 50 jobs; the two running ones' logs and folders kept)
    assert len(asked("logs", "--yes")) == 1
    assert sorted(p.name for p in (root / "logs").iterdir()) == ["5003", "5040"]
    assert len(asked("orphans", "--yes")) == 1
    assert len(asked("compact")) == 1
    assert len(asked("compact", "--yes")) == 1
    # (--where: its selection and the removal share the look; a key matching nothing too,
    # and `list`)
    assert len(asked("node", "--where", "seed=0")) == 1
    assert len(asked("node", "--where", "seed=7")) == 1
    calls.unlink()
    assert cli("list", root, "--where", "seed=7").returncode == 0
    assert len(calls.read_text().splitlines()) == 1
    (call,) = asked("node", "--where", "seed=0", "--step", "Train", "--yes")
    assert call.endswith("-j " + ",".join(str(5000 + i) for i in range(50)))
    assert sorted(p.name for p in source.parent.glob("copy*")) == ["copy03", "copy40"]
    assert not source.exists()
    Train(seed=0, infra={"folder": root}).fit()  # (computed again)
    for i in range(50):
        if i not in (3, 40):
            shutil.copytree(source, source.with_name(f"copy{i:02d}"))
            _fake_job(folders[i], str(5000 + i), root / "logs" / str(5000 + i), 40)
    (call,) = asked("node", *folders, "--yes")
    assert call.endswith("-j " + ",".join(str(5000 + i) for i in range(50)))
    assert sorted(p.name for p in source.parent.glob("copy*")) == ["copy03", "copy40"]
    # a job recorded between the preview and the removal: asked about then, and kept
    calls.unlink()
    plan = clean.remove_nodes(source)
    assert not plan.kept and len(calls.read_text().splitlines()) == 1
    _fake_job(source, "5100", root / "logs" / "5100", 0)
    plan.execute()
    assert plan.skipped and "job 5100 is queued or running" in plan.skipped[0][1]
    assert source.is_dir()
    asked_calls = calls.read_text().splitlines()
    assert len(asked_calls) == 2 and asked_calls[1].endswith("-j 5100"), asked_calls


def test_clean_logs_of_slurm_arrays_takes_their_scripts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Slurm array's script (``<A>/<A>_submission.sh`` next to its elements' folders in
    the default layout, ``<A>_submission.sh`` in a shared folder) and submitit's link to
    it were never removed: no record names them; in a shared folder cleaned in two passes
    (an element still recent the first time), the script stayed for good (a review)."""
    monkeypatch.setattr(registry, "confirmed_queued", lambda ids: set())  # (all ended)
    root = tmp_path / "cache"
    Train(seed=1, infra={"folder": root}).fit()
    Train(seed=2, infra={"folder": root}).fit()
    node, other = (folder_of(Train(seed=s, infra={"folder": root})) for s in (1, 2))
    logs = node.parent / "logs" / "root"
    for job_id in ("9001_0", "9001_1"):  # the default layout: .../%j
        _fake_job(node if job_id.endswith("0") else other, job_id, logs / job_id, 40)
    (logs / "9001").mkdir()
    (logs / "9001" / "9001_submission.sh").write_text("#!/bin/bash")
    (logs / ".submission_file_aa.sh").symlink_to(logs / "9001" / "9001_submission.sh")
    plan = clean.logs(root, older_than_days=30)
    assert sorted(r.path.name for r in plan.removals) == [
        ".submission_file_aa.sh",
        "9001",
        "9001_0",
        "9001_1",
    ]
    plan.execute()
    assert sorted(p.name for p in logs.iterdir()) == []
    # a shared folder (logs= without %j), cleaned twice: the script goes the second time
    shared = tmp_path / "shared"
    _fake_job(node, "9002_0", shared, 40)
    _fake_job(other, "9002_1", shared, 0)
    (shared / "9002_submission.sh").write_text("#!/bin/bash")
    (shared / ".submission_file_bb.sh").symlink_to(shared / "9002_submission.sh")
    for name in ("9002_submission.sh", ".submission_file_bb.sh"):
        _age(shared / name, 40)
    clean.logs(root, older_than_days=30).execute()
    assert sorted(p.name for p in shared.iterdir()) == [
        ".submission_file_bb.sh",
        "9002_1_0_log.out",
        "9002_1_submitted.pkl",
        "9002_submission.sh",
    ]
    _fake_job(other, "9002_1", shared, 40)  # (that one ended long ago too, now)
    clean.logs(root, older_than_days=30).execute()
    assert sorted(p.name for p in shared.iterdir()) == []


def test_clean_logs_keeps_the_files_of_a_running_job_with_a_reused_pid(tmp_path: Path) -> None:
    """Local job ids are pids: an old ended job and a running one of another node with
    the same pid share their file names in a shared folder; the running one's files
    were removed as the old one's (a review)."""
    from exca.storage.process import process_start_time

    root, shared = tmp_path / "cache", tmp_path / "shared"
    Train(seed=1, infra={"folder": root}).fit()
    Train(seed=2, infra={"folder": root}).fit()
    old, running = (folder_of(Train(seed=s, infra={"folder": root})) for s in (1, 2))
    pid = str(os.getpid())  # (this process stands for the running job)
    _fake_job(old, pid, shared, 40, cluster="local", start=1)
    _fake_job(running, pid, shared, 0, cluster="local", start=process_start_time(os.getpid()))
    _fake_job(old, "12", shared, 40, cluster="local", start=1)
    plan = clean.logs(root, older_than_days=0)
    (removal,) = plan.removals
    assert removal.files == ["12_0_log.out", "12_submitted.pkl"]
    assert [(p, "running" in why) for p, why in plan.kept] == [(shared, True)]


@pytest.mark.parametrize("layout", ["own folder", "shared folder"])
def test_clean_logs_keeps_the_logs_of_a_new_job_reusing_an_old_jobs_pid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    """Local job ids are pids: a new local job may get the pid of an old ended one, and
    write into the old one's log folder (`.../logs/<user>/<pid>/`) or files. `clean logs
    --days 0` removed them while the new job ran: in the moment before its record is
    written (the old record said "ended"), and when the new job started between the
    preview and the removal (`--yes` after the preview was read). A live process of the
    pid keeps them, in the preview and again at the removal."""
    root = tmp_path / "cache"
    Train(seed=1, infra={"folder": root}).fit()
    old = folder_of(Train(seed=1, infra={"folder": root}))
    pid = str(os.getpid())  # (this process stands for the new job: the pid is reused)
    logs = old.parent / "logs" / "someone" / pid if layout == "own folder" else tmp_path / "x"
    _fake_job(old, pid, logs, 40, cluster="local", start=1)  # (another process's start)
    plan = clean.logs(root, older_than_days=0)  # the new job runs, not recorded yet
    assert plan.removals == [] and [(p, pid in why) for p, why in plan.kept] == [(logs, True)]
    with monkeypatch.context() as patch:  # the preview, before the new job started
        patch.setattr(exca.storage.process, "process_start_time", lambda pid: None)
        plan = clean.logs(root, older_than_days=0)
    assert [r.path for r in plan.removals] == [logs]
    assert plan.execute(warn=False) == 0  # the removal, once it runs
    assert sorted(p.name for p in logs.iterdir()) == [f"{pid}_0_log.out", f"{pid}_submitted.pkl"]
    assert [(p, "runs here since the preview" in why) for p, why in plan.skipped] == [(logs, True)]


def test_clean_logs_removes_a_job_folder_with_an_older_jobs_files_set_aside(
    tmp_path: Path,
) -> None:
    """A local job whose pid an older job had set that job's files aside in a sub-folder
    of its log folder (`<pid>/older-job-before-*/`): `clean logs` took the folder for one
    shared with files of others, removed the jobs' files one by one and left the
    sub-folder, and the folder, for good. Once both jobs ended, the folder goes whole."""
    root = tmp_path / "cache"
    Train(seed=1, infra={"folder": root}).fit()
    node = folder_of(Train(seed=1, infra={"folder": root}))
    ended = subprocess.Popen(["true"])
    ended.wait()  # (its pid: a job's that ended)
    pid = str(ended.pid)
    logs = node.parent / "logs" / "someone" / pid
    _fake_job(node, pid, logs, 40, cluster="local", start=1)
    aside = logs / f"{localcontroller.OLDER_JOB_PREFIX}0-1"
    aside.mkdir()
    (aside / f"{pid}_0_log.out").write_text("the older job's log")
    _age(aside / f"{pid}_0_log.out", 40)
    plan = clean.logs(root, older_than_days=30)
    assert [(r.path, r.files) for r in plan.removals] == [(logs, None)]
    plan.execute(warn=False)
    assert not logs.exists()


@pytest.mark.timeout(120)
def test_a_local_job_reusing_an_old_jobs_pid_is_not_taken_for_ended_by_its_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Local job ids are pids: a new local job whose pid an old job had gets the old one's
    log folder (`<step>/logs/<user>/<pid>/`), holding the old one's result file. Read as
    the new job's, it said the job ended well while it ran (`exca list` said success;
    another caller following it took it for ended). A result file older than the job's
    process is an older job's: it goes when the new job is recorded."""
    root, flag = tmp_path / "cache", tmp_path / "hold"
    flag.touch()
    task = Slow(flag=str(flag), infra={"folder": root, "cluster": "local"})
    logs = folder_of(task).parent / "logs"

    def reused_pid(process: subprocess.Popen[bytes]) -> None:
        (user,) = logs.iterdir()  # (an old job of this pid left its result)
        old = user / str(process.pid) / f"{process.pid}_0_result.pkl"
        old.parent.mkdir(exist_ok=True)
        old.write_bytes(pickle.dumps(("success", None)))
        _age(old, 40)

    controllers = hook_controller_starts(monkeypatch, started=reused_pid)
    job = task.infra.job()
    assert controllers == [int(job.job_id)]  # (its pid was an old job's)
    try:
        wait_until(lambda: "slow task started" in (job.stdout() or ""), "the job runs")
        (record,) = registry.read_all(folder_of(task))
        assert registry.still_running(record)
        assert exca.ops.inspect(root)[0].status == "running"
    finally:
        flag.unlink()
    assert job.result() == "released"
    assert exca.ops.inspect(root)[0].status == "success"


@pytest.mark.timeout(120)
def test_a_local_job_reusing_an_old_jobs_pid_and_the_old_job_each_read_their_own_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new local job whose pid an old ended job had writes into the old one's log
    folder: it appended to the old job's log files (its logs showed the old job's lines),
    and the old job's record, pointing at that folder, then read the new job's logs and
    result. The old job's files now go aside when the new job starts, where its record
    finds them."""
    root, flag = tmp_path / "cache", tmp_path / "hold"
    flag.touch()
    task = Slow(flag=str(flag), infra={"folder": root, "cluster": "local"})
    old_task = Slow(flag=str(tmp_path / "other"), infra={"folder": root})
    old_folder = folder_of(old_task)
    logs = folder_of(task).parent / "logs"

    def reused_pid(process: subprocess.Popen[bytes]) -> None:
        (user,) = logs.iterdir()  # (an old ended job of this pid left its logs)
        old = user / str(process.pid)
        old.mkdir(exist_ok=True)
        files = {"0_log.out": b"old job's stdout\n", "0_log.err": b"old job's stderr\n"}
        files["0_result.pkl"] = pickle.dumps(("success", None))
        for name, content in files.items():
            (old / f"{process.pid}_{name}").write_bytes(content)
            _age(old / f"{process.pid}_{name}", 40)
        record = registry.JobRecord(
            job_id=str(process.pid),
            cluster="local",
            logs=str(old),
            submitted=time.time() - 40 * 86400,
            host=exca.storage.process.hostname(),
            folder=str(old_folder),
            start=1,  # (long before the new job's process)
        )
        registry.write(old_folder, record, link=False)

    controllers = hook_controller_starts(monkeypatch, started=reused_pid)
    job = task.infra.job()
    assert controllers == [int(job.job_id)]  # (its pid was the old job's)
    try:
        wait_until(lambda: "slow task started" in (job.stdout() or ""), "the job runs")
        assert "old job" not in (job.stdout() or "") + (job.stderr() or "")
    finally:
        flag.unlink()
    assert job.result() == "released"
    (new,) = exca.ops.logs(folder_of(task))
    assert "old job" not in new.stdout() + new.stderr()
    assert "slow task started" in new.stdout()
    (old_logs,) = exca.ops.logs(old_folder)
    assert (old_logs.stdout(), old_logs.stderr()) == ("old job's stdout\n", "old job's stderr\n")
    (old_record,) = registry.read_all(old_folder)
    assert not registry.is_active(old_record)
    with open(registry.submitit_job(old_record).paths.result_pickle, "rb") as handle:
        assert pickle.load(handle) == ("success", None)  # (not the new job's "released")


def _records(folder: Path) -> list[dict[str, tp.Any]]:
    return [json.loads(p.read_text()) for p in sorted((folder / "jobs").glob("*.json"))]


@pytest.mark.timeout(120)
def test_clean_logs_keeps_a_log_folder_shared_with_a_running_job(tmp_path: Path) -> None:
    root, shared = tmp_path / "cache", tmp_path / "shared-logs"  # logs= without %j
    infra = {"folder": root, "cluster": "local", "logs": shared}
    assert Pair(a=1, infra=infra).make() == [1, 0]  # a job that ended (listed first)
    flag = tmp_path / "hold"
    flag.touch()
    job = Slow(flag=str(flag), infra=infra).infra.job()  # a running job, same log folder
    try:
        wait_until(lambda: "slow task started" in (job.stdout() or ""), "the job runs")
        plan = clean.logs(root, older_than_days=0)
        # the ended job's files go, the running one's stay (it kept the whole folder: a
        # review, the folder of a cache in use was never cleaned)
        (removal,) = plan.removals
        assert removal.files and not any(n.startswith(f"{job.job_id}_") for n in removal.files)
        assert [(path, "running" in why) for path, why in plan.kept] == [(shared, True)]
    finally:
        flag.unlink()
    assert job.result() == "released"
    wait_until(
        lambda: any(
            n.startswith(f"{job.job_id}_")
            for r in clean.logs(root, older_than_days=0).removals
            for n in r.files or []
        ),
        "the job ended",
    )
    assert [r.path for r in clean.logs(root, older_than_days=0).removals] == [shared]


class HeldMap(pydantic.BaseModel):
    """A map that blocks while the file `flag` exists."""

    flag: str = ""
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def compute(self, items: list[int]) -> tp.Iterator[int]:
        end = time.time() + WAIT_S
        while self.flag and os.path.exists(self.flag) and time.time() < end:
            time.sleep(0.02)
        yield from items


@pytest.mark.timeout(120)
def test_clean_keeps_a_folder_holding_another_running_jobs_files(tmp_path: Path) -> None:
    """Maps packed in one array keep their jobs' files in the first node's folder:
    removing that (finished) node removed the running job's logs and pickles."""
    root, flag = tmp_path / "cache", tmp_path / "hold"
    flag.touch()
    infra = {"folder": root, "cluster": "local"}
    fast = HeldMap(infra=infra).compute.node([1])
    slow = HeldMap(flag=str(flag), infra=infra).compute.node([2])
    thread = threading.Thread(target=exca.graph.run, args=(fast, slow))
    thread.start()
    try:
        wait_until(lambda: fast.status() == "completed", "the fast map is done")
        (record,) = registry.read_all(slow.folder)
        assert fast.folder is not None and fast.folder in Path(record.logs).parents
        plan = clean.remove_nodes([fast.folder])
        assert plan.removals == [] and record.job_id in plan.kept[0][1]
        # a removal previewed before the job started is checked again when executed
        stale = clean.CleanPlan()
        stale.removals.append(clean.Removal(fast.folder, 0, "previewed earlier"))
        assert stale.execute() == 0 and Path(record.logs).is_dir()
    finally:
        flag.unlink()
        thread.join(timeout=WAIT_S)
    assert slow.result() == [2]


def test_clean_garbage_keeps_what_targets_reach(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    source4, down4 = _pipeline(root)
    source5 = Source(n=5, infra={"folder": root}).make.node()
    down5 = Total(infra={"folder": root}).total.node(source5)
    assert (down4.result(), down5.result()) == (12, 20)
    Train(infra={"folder": root}).fit()
    squares = Squares(infra={"folder": root})
    squares.square([1, 2])
    assert down4.folder is not None and source4.folder is not None
    before = tree_hash(root)
    plan = clean.garbage(root, [down4])
    removed = {r.path for r in plan.removals}
    assert removed == {
        source5.folder,
        down5.folder,
        folder_of(Train(infra={"folder": root})),
        folder_of(squares),
    }
    assert plan.size == sum(disk_bytes(p) for p in removed)
    assert tree_hash(root) == before  # a dry run
    plan.execute()
    for path in removed:
        assert not path.exists()
    # the target and its whole graph (upstream included) are intact and cached
    source4, down4 = _pipeline(root)
    assert [e.status for e in exca.graph.plan(down4).entries] == ["not needed", "cached"]
    assert down4.result() == 12
    assert Source(n=4, infra={"folder": root}).make() == [0, 1, 2, 3]


def _many_writer_sessions(root: Path, processes: int) -> None:
    """`processes` separate processes (forked by a helper) each write a few map items."""
    run_python(
        f"""
        import os, jobmodels_ops
        pids = []
        for i in range({processes}):
            pid = os.fork()
            if pid == 0:
                try:
                    items = [3 * i, 3 * i + 1, 3 * i + 2]
                    list(jobmodels_ops.Ranges(infra={{"folder": {str(root)!r}}}).expand(items))
                finally:
                    os._exit(0)
            pids.append(pid)
            if len(pids) == 10:
                for p in pids:
                    assert os.waitpid(p, 0)[1] == 0
                pids = []
        for p in pids:
            assert os.waitpid(p, 0)[1] == 0
        """
    )


CLEAN_JSON_KEYS = {"what", "dryrun", "bytes", "removals", "kept", "merges", "freed", "merged"}
CLEAN_JSON_KEYS |= {"failed", "skipped"}


def test_clean_json_has_one_shape_for_every_what(tmp_path: Path) -> None:
    """`exca clean ROOT WHAT --json` printed a list for a compact preview, {"merged": N}
    for compact --yes, and the plan's bytes/removals/kept (with freed, failed and skipped
    under --yes) for the other WHATs: a script had to know each shape, and could not
    tell a preview from a removal. Every WHAT now prints one object with the same keys
    (docs/cli.md), "dryrun" saying which, and "what" the WHAT."""
    root = tmp_path / "cache"
    _many_writer_sessions(root, 3)
    ranges = folder_of(Ranges(infra={"folder": root}))
    age_index_files(ranges)
    old = Train(seed=1, infra={"folder": root})
    old.fit()
    Train(seed=1, infra={"folder": root, "version": "2"}).fit()
    gone = Train(seed=2, infra={"folder": root, "version": "2"})
    gone.fit()
    kinds = {"node": [str(folder_of(gone))], "versions": [], "orphans": [], "logs": []}
    kinds["compact"] = []
    for what, extra in kinds.items():
        for yes in ([], ["--yes"]):
            out = json.loads(cli("clean", root, what, *extra, *yes, "--json", check=True).stdout)
            assert isinstance(out, dict) and set(out) == CLEAN_JSON_KEYS, (what, yes, out)
            assert out["what"] == what and out["dryrun"] is not yes, (what, out)
            assert (out["freed"] is None) is not yes and (out["merged"] is None) is not yes
            if what == "compact":
                assert out["removals"] == [] and out["bytes"] == 0, out
                assert [m["folder"] for m in out["merges"]] == [str(ranges)], out
                assert len(out["merges"][0]["index_files"]) == 3, out
                assert out["merged"] in (None, 3), out
            else:
                assert out["merges"] == [] and out["merged"] in (None, 0), out
    assert not folder_of(gone).exists() and not folder_of(old).exists()
    empty = json.loads(cli("clean", root, "node", "--where", "seed=9", "--json").stdout)
    assert set(empty) == CLEAN_JSON_KEYS and empty["removals"] == [], empty


def test_compact_many_writer_sessions(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    _many_writer_sessions(root, 50)
    folder = folder_of(Ranges(infra={"folder": root}))
    assert len(index_files(folder)) == 50
    assert cli("clean", root, "compact", check=True).stdout.startswith("Nothing to merge")
    age_index_files(folder)  # (merged once idle for 2 minutes)
    reader: CacheDict[tp.Any] = CacheDict(folder)  # a reader from before the compaction
    before = {key: reader[key] for key in reader}
    assert len(before) == 150 and before["7"] == list(range(7, 207))
    size_before = exca.ops.inspect(root)[0].entries
    # the python function takes a node folder: a root merged nothing, and said nothing
    with pytest.raises(ValueError, match="is a cache root, not a node folder"):
        clean.compact(root)
    preview = cli("clean", root, "compact", check=True)
    assert f"{folder}: 50 index file(s)" in preview.stdout
    assert "preview: 50 index file(s) of finished writers would be merged" in preview.stdout
    assert len(index_files(folder)) == 50  # a preview changes nothing
    listed = json.loads(cli("clean", root, "compact", "--json", check=True).stdout)
    merges = [{"folder": str(folder), "index_files": [f.name for f in index_files(folder)]}]
    assert listed["merges"] == merges and listed["dryrun"] is True
    result = cli("clean", root, "compact", "--yes", check=True)
    assert "merged 50 index file(s)" in result.stdout
    after = index_files(folder)
    assert len(after) < 50
    # with the mode of the files it merged (0o777, the default permissions: a shared cache)
    assert {oct(f.stat().st_mode & 0o777) for f in after} == {oct(0o777)}
    # every entry reads back identically: fresh readers, and the reader from before
    assert {k: v for k, v in CacheDict(folder).items()} == before
    assert all(reader[key] == value for key, value in before.items())
    reader.refresh()
    assert sorted(reader.keys()) == sorted(before)
    assert all(reader[key] == value for key, value in before.items())
    assert exca.ops.inspect(root)[0].entries == size_before
    # nothing left to merge; the map still reads without recomputing
    assert clean.compact(folder) == (0, 0)
    done = json.loads(cli("clean", root, "compact", "--yes", "--json", check=True).stdout)
    assert done["merged"] == 0 and done["merges"] == [] and done["dryrun"] is False
    assert list(Ranges(infra={"folder": root, "mode": "read-only"}).expand([0, 149])) == [
        list(range(0, 200)),
        list(range(149, 349)),
    ]


def test_compact_on_a_full_disk_says_nothing_was_merged_nor_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while `exca clean ROOT compact --yes` wrote the merged index file: it
    said only "OSError: [Errno 28] No space left on device" (not even which file), and
    left the part written behind. It now says that the folder's index files were not
    merged and that nothing cached was lost, and leaves no partial file."""
    import errno

    root = tmp_path / "cache"
    _many_writer_sessions(root, 3)
    folder = folder_of(Ranges(infra={"folder": root}))
    age_index_files(folder)
    before = {key: value for key, value in CacheDict(folder).items()}
    files_before = sorted(os.listdir(folder))
    write_bytes = Path.write_bytes

    def full_disk(self: Path, data: tp.Any) -> int:
        if self.name.endswith(".tmp"):  # (the merged file: half of it, then a full disk)
            write_bytes(self, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    result = cli("clean", root, "compact", "--yes")
    assert result.returncode == 2
    assert f"the index files of {folder} were not merged" in result.stderr, result.stderr
    assert "nothing cached was lost" in result.stderr
    assert "no space left for" in result.stderr  # (and what to do)
    assert sorted(os.listdir(folder)) == files_before  # (no partial merged file left)
    assert {key: value for key, value in CacheDict(folder).items()} == before
    monkeypatch.undo()  # (space freed: merged then)
    assert "merged 3 index file(s)" in cli("clean", root, "compact", "--yes", check=True).stdout
    assert {key: value for key, value in CacheDict(folder).items()} == before


def test_previews_of_a_root_given_relative_name_full_folders(tmp_path: Path) -> None:
    """`exca clean cache compact` (the root given relative) previewed 'cache/...: N index
    file(s)' where the other previews (node, logs...) name full folders: it names them
    in full, in its text and in --json."""
    root = tmp_path / "cache"
    _many_writer_sessions(root, 2)
    folder = folder_of(Ranges(infra={"folder": root}))
    age_index_files(folder)
    preview = cli("clean", "cache", "compact", cwd=tmp_path, check=True).stdout
    assert preview.startswith(f"{folder}: 2 index file(s)\n"), preview
    listed = json.loads(cli("clean", "cache", "compact", "--json", cwd=tmp_path, check=True).stdout)
    assert [entry["folder"] for entry in listed["merges"]] == [str(folder)]
    node = cli("clean", "cache", "node", folder.relative_to(tmp_path), cwd=tmp_path, check=True)
    assert f"  {folder}  (requested)" in node.stdout  # (as the node preview names it)
    # and versions' ('cache/...' too: only compact's had been made whole)
    old = Train(seed=1, infra={"folder": root})
    old.fit()
    Train(seed=1, infra={"folder": root, "version": "2"}).fit()
    versions = cli("clean", "cache", "versions", cwd=tmp_path, check=True).stdout
    assert f"  {folder_of(old)}  (old version" in versions, versions


def test_compact_keeps_the_last_write_that_list_shows(tmp_path: Path) -> None:
    """`exca list` shows a node's last write (the newest mtime of its index files): a
    compaction, which writes no entry, moved it to the time of the merging (a probe).
    The merged file keeps the last write of the files it merged."""
    root = tmp_path / "cache"
    _many_writer_sessions(root, 3)
    folder = folder_of(Ranges(infra={"folder": root}))
    age_index_files(folder, seconds=86400.0)
    (before,) = exca.ops.inspect(root)
    listed = cli("list", root, check=True).stdout
    assert "merged 3 index file(s)" in cli("clean", root, "compact", "--yes", check=True).stdout
    assert len(index_files(folder)) == 1
    (after,) = exca.ops.inspect(root)
    assert after.entries == before.entries == 9
    assert after.to_dict()["modified"] == before.to_dict()["modified"]
    shown = before.to_dict()["modified"]  # (as `exca list` shows it)
    assert shown in listed and shown in cli("list", root, check=True).stdout, listed


def test_compact_leaves_another_excas_index_files_alone(tmp_path: Path) -> None:
    """An index file of the reference (<host>-<thread>-info.jsonl, not read by this exca)
    was merged away as a dead writer's: SPEC, a folder the reference wrote is left alone."""
    root = tmp_path / "cache"
    _many_writer_sessions(root, 3)
    folder = folder_of(Ranges(infra={"folder": root}))
    foreign = folder / "vm-140245-info.jsonl"
    foreign.write_text('{"#key": "x", "#type": "Json", "v": 1}\n')
    old = time.time() - 7200
    os.utime(foreign, (old, old))
    assert clean.compact(folder, grace_seconds=0)[0] == 3
    assert foreign.read_text() == '{"#key": "x", "#type": "Json", "v": 1}\n'


def _dead_sessions(folder: Path, code: str) -> None:
    """Run CacheDict code in a process that then ends (its index files become mergeable)."""
    run_python(
        f"from exca.storage.cachedict import CacheDict\ncd = CacheDict({str(folder)!r}, "
        f"cache_type='Pickle')\n" + textwrap.dedent(code)
    )


def test_a_long_lived_reader_sees_every_change_after_its_writers_ended(tmp_path: Path) -> None:
    """A reader stops looking at index files whose writers ended (they cannot grow): it
    still sees new writers, deletions, a compaction merging those files, and the file of
    a live writer of this process growing."""
    folder = tmp_path / "cache"
    _dead_sessions(folder, "with cd.write():\n    cd['a'] = 'A'")
    _dead_sessions(folder, "with cd.write():\n    cd['b'] = 'B'")
    reader: CacheDict[tp.Any] = CacheDict(folder)
    for _ in range(2):  # (the second read finds both files unchanged, their writers ended)
        assert "absent" not in reader
    assert dict(reader.items()) == {"a": "A", "b": "B"}
    _dead_sessions(folder, "with cd.write():\n    cd['c'] = 'C'")
    assert reader["c"] == "C"
    _dead_sessions(folder, "del cd['a']")
    reader.refresh()
    assert "a" not in reader
    assert clean.compact(folder, grace_seconds=0)[0] == 4  # (files merged)
    reader.refresh()
    assert dict(reader.items()) == {"b": "B", "c": "C"}
    live: CacheDict[tp.Any] = CacheDict(folder, cache_type="Pickle")
    with live.write():
        live["d"] = "D"
        assert reader["d"] == "D"
        for _ in range(2):  # (its file unchanged: its writer, this process, is alive)
            assert "absent" not in reader
        live["e"] = "E"
        assert reader["e"] == "E"
    assert dict(CacheDict(folder).items()) == {"b": "B", "c": "C", "d": "D", "e": "E"}


def test_a_killed_folder_removal_brings_no_deleted_entry_back(tmp_path: Path) -> None:
    """A node folder is renamed away before it is deleted: a removal killed after the
    index file holding a deletion went (not the one holding the deleted entry) brought
    that entry back under the folder's name."""
    root = tmp_path / "cache"
    obj = Ranges(infra={"folder": root})
    assert list(obj.expand([1])) == [list(range(1, 201))]
    folder = folder_of(obj)
    _dead_sessions(folder, "del cd['1']\nwith cd.write():\n    cd['1'] = 'replaced'")
    replacing = max(index_files(folder), key=lambda p: p.stat().st_mtime_ns).name
    killed = python(
        f"""
        import os, pathlib, shutil
        from exca.ops import clean

        def killed_after_the_replacing_file_went(path, *args, **kwargs):
            path = pathlib.Path(path)
            if path.name != {replacing!r}:
                path = (path.parent if path.is_file() else path) / {replacing!r}
            path.unlink(missing_ok=True)
            os._exit(9)

        os.remove = shutil.rmtree = killed_after_the_replacing_file_went
        clean.remove_node_folder(pathlib.Path({str(folder)!r}))
        """
    )
    killed.communicate(timeout=WAIT_S)
    assert killed.returncode == 9
    survivors = dict(CacheDict(folder).items()) if folder.exists() else {}
    assert survivors.get("1", "replaced") == "replaced"  # never the deleted entry
    assert not folder.exists()  # (entries of the folder: all gone at once)
    assert [uid for _, uid, _ in node_folders(root)] == []  # (the leftover is not a node)
    assert list(Ranges(infra={"folder": root}).expand([1])) == [list(range(1, 201))]
    (leftover,) = [p for p in folder.parent.iterdir() if p.name.startswith(".removing-")]
    plan = clean.orphans(root, min_age_hours=0)
    assert [(r.path, r.reason) for r in plan.removals] == [
        (leftover, "folder left by a killed removal")
    ]
    plan.execute()
    assert not leftover.exists() and dict(CacheDict(folder).items()) == {"1": list(range(1, 201))}


def test_two_cleanings_of_one_leftover_both_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two cleanings removing the same folder at once (a leftover of a killed removal,
    listed by both `orphans`): the one finding a file already deleted by the other said
    'partly removed ... remove it by hand' (`--yes` exited with 1), nothing being left."""
    root = tmp_path / "cache"
    source = Source(n=1000, infra={"folder": root})
    assert source.make() == list(range(1000))
    folder = folder_of(source)
    leftover = folder.with_name(clean.REMOVING_PREFIX + "vm-1-1-0123456789ab-abcdef")
    folder.rename(leftover)
    plan = clean.orphans(root, min_age_hours=0)
    assert [r.path for r in plan.removals] == [leftover]
    unlink = os.unlink
    raced: list[tp.Any] = []

    def the_other_cleaning_first(path: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> None:
        if not raced:
            raced.append(path)
            unlink(path, *args, **kwargs)
        unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", the_other_cleaning_first)
    plan.execute()
    assert raced and plan.failed == [] and not leftover.exists()


def test_a_folder_a_killed_removal_left_is_not_listed(tmp_path: Path) -> None:
    """A node folder being removed (renamed away, then deleted) is not a config: no
    listing, iter_cached, explanation or cleaning of old versions reads it."""
    root = tmp_path / "cache"
    kept, removed = Source(n=1, infra={"folder": root}), Source(n=5, infra={"folder": root})
    assert kept.make() == [0] and removed.make() == list(range(5))
    folder = folder_of(removed)
    folder.rename(folder.with_name(clean.REMOVING_PREFIX + "vm-1-1-0123456789ab-abcdef"))
    assert [c.n for c in kept.infra.iter_cached()] == [1]
    assert [uid for _, uid, _ in node_folders(root)] == [folder_of(kept).name]
    nearest = str(exca.ops.explain(Source(n=4, infra={"folder": root}).make.node()))
    assert "n=1" in nearest and "n=5" not in nearest
    assert clean.old_versions(root).removals == []


def test_a_killed_clear_brings_no_deleted_entry_back(tmp_path: Path) -> None:
    """clear() removes index files one by one: killed after the file holding a deletion
    went, before the one holding the deleted entry, it brought that entry back (now every
    entry is deleted in the clearing view's own index first, removed last)."""
    folder = tmp_path / "cache"
    _dead_sessions(folder, "with cd.write():\n    cd['k'] = 'old'\n    cd['other'] = 1")
    (first,) = index_files(folder)
    _dead_sessions(folder, "del cd['k']\nwith cd.write():\n    cd['k'] = 'new'")
    (deleting,) = [p for p in index_files(folder) if p != first]
    killed = python(
        f"""
        import os
        from exca.storage.cachedict import CacheDict
        remove = os.remove

        def killed_after_the_deleting_file_went(path):
            remove(path)
            if os.path.basename(path) == {deleting.name!r}:
                os._exit(9)

        os.remove = killed_after_the_deleting_file_went
        scandir = os.scandir  # (the deleting file listed first)
        os.scandir = lambda path: sorted(scandir(path), key=lambda e: e.name != {deleting.name!r})
        CacheDict({str(folder)!r}).clear()
        """
    )
    killed.communicate(timeout=WAIT_S)
    assert killed.returncode == 9
    assert not deleting.exists()
    assert dict(CacheDict(folder).items()) == {}  # (partly cleared at worst: never "old")
    CacheDict(folder).clear()
    assert index_files(folder) == [] and dict(CacheDict(folder).items()) == {}


def test_a_compaction_killed_between_its_removals_brings_nothing_back(tmp_path: Path) -> None:
    """Killed after removing the file holding a deletion, before removing the one holding
    the deleted entry: the entry was live again (its payload removed: unreadable)."""
    folder = tmp_path / "cache"
    _dead_sessions(folder, "with cd.write():\n    cd['a'] = 'A'\n    cd['b'] = 'B'")
    (entries,) = [p for p in folder.glob("*-info.jsonl")]
    _dead_sessions(folder, "del cd['a']")
    (deletion,) = [p for p in folder.glob("*-info.jsonl") if p != entries]
    killed = python(
        textwrap.dedent(
            f"""
            import os, pathlib
            from exca.ops import clean
            remove = os.remove

            def killed_after_the_deletion_went(path):
                if pathlib.Path(path) == pathlib.Path({str(entries)!r}):
                    pathlib.Path({str(deletion)!r}).unlink(missing_ok=True)  # (first)
                    os._exit(9)  # the compaction dies here
                remove(path)

            os.remove = killed_after_the_deletion_went
            clean.compact({str(folder)!r}, grace_seconds=0)
            """
        )
    )
    killed.communicate(timeout=WAIT_S)
    assert killed.returncode == 9
    assert entries.exists() and not deletion.exists()
    assert dict(CacheDict(folder).items()) == {"b": "B"}
    _dead_sessions(folder, "from exca.ops import clean\nclean.compact(cd.folder, grace_seconds=0)")
    assert [p.name for p in folder.glob("*-info.jsonl")] != [entries.name]
    assert dict(CacheDict(folder).items()) == {"b": "B"}
    # the deletion, aimed at a file gone that no line names any more, is dropped then
    _dead_sessions(folder, "with cd.write():\n    cd['c'] = 'C'")
    _dead_sessions(folder, "from exca.ops import clean\nclean.compact(cd.folder, grace_seconds=0)")
    (merged,) = folder.glob("*-info.jsonl")
    assert b'"#of"' not in merged.read_bytes()
    assert dict(CacheDict(folder).items()) == {"b": "B", "c": "C"}


def test_a_writer_never_reopens_its_removed_index_file_by_name(tmp_path: Path) -> None:
    """A deletion outside write() by a writer whose index file was merged away reopened
    that file by name: offsets started at 0 again, where deletions kept by the merged
    file were aimed (a new entry there read as deleted)."""
    folder = tmp_path / "cache"
    cd: CacheDict[tp.Any] = CacheDict(folder, cache_type="Pickle")
    with cd.write():
        cd["a"], cd["b"] = "A", "B"
    (first,) = folder.glob("*-info.jsonl")
    merged = folder / (exca.storage.process.unique_name() + "-info.jsonl")
    os.rename(first, merged)  # (what a compaction does, in effect: the lines live elsewhere)
    del cd["a"]
    assert not first.exists()
    assert dict(CacheDict(folder).items()) == {"b": "B"}


def test_compact_keeps_deletions_whatever_the_read_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import itertools

    from exca.storage import index as index_module

    folder = tmp_path / "cache"
    live: CacheDict[tp.Any] = CacheDict(folder, cache_type="Pickle")  # this process: alive
    with live.write():
        live["k1"] = "one"
        live["k2"] = "two"
    _dead_sessions(folder, "del cd['k1']")  # a dead process deleted a live writer's entry
    _dead_sessions(folder, "with cd.write():\n    cd['k3'] = 'three'")
    assert clean.compact(folder, grace_seconds=0)[0] == 2
    names = [p.name for p in index_files(folder)]
    assert len(names) == 2  # the live writer's file and the merged one
    scandir = os.scandir
    for order in itertools.permutations(names):

        def ordered(path: tp.Any, order: tuple[str, ...] = order) -> list[tp.Any]:
            found = {e.name: e for e in scandir(path)}
            return [found[n] for n in order if n in found] + [
                e for n, e in found.items() if n not in order
            ]

        monkeypatch.setattr(index_module.os, "scandir", ordered)
        fresh: CacheDict[tp.Any] = CacheDict(folder)
        assert dict(fresh.items()) == {"k2": "two", "k3": "three"}, order
        monkeypatch.undo()


def test_delete_by_a_reader_from_before_the_compaction(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    _dead_sessions(folder, "with cd.write():\n    cd['a'] = 'A'")
    _dead_sessions(folder, "with cd.write():\n    cd['b'] = 'B'")
    reader: CacheDict[tp.Any] = CacheDict(folder)
    assert sorted(reader.keys()) == ["a", "b"]
    assert clean.compact(folder, grace_seconds=0) == (2, 2)
    del reader["a"]  # its lines moved since this reader read the index
    assert "a" not in reader and "a" not in CacheDict(folder)
    assert dict(CacheDict(folder).items()) == {"b": "B"}


def test_delete_while_compacting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A live writer deletes an entry after compaction read the index and before it
    replaced the files: its tombstone names the old place, the merged line (which keeps
    where it was) is still deleted for every reader, whatever it read first."""
    folder = tmp_path / "cache"
    _dead_sessions(folder, "with cd.write():\n    cd['a'] = 'A'")
    _dead_sessions(folder, "with cd.write():\n    cd['b'] = 'B'")
    deleter: CacheDict[tp.Any] = CacheDict(folder)
    assert sorted(deleter.keys()) == ["a", "b"]
    before_compaction: CacheDict[tp.Any] = CacheDict(folder)
    assert sorted(before_compaction.keys()) == ["a", "b"]
    read_index = clean._tombstones_still_needed

    def delete_meanwhile(folder_: Path, merged: set[str]) -> list[bytes]:
        del deleter["a"]  # (this process is alive: its index file is not merged)
        return read_index(folder_, merged)

    monkeypatch.setattr(clean, "_tombstones_still_needed", delete_meanwhile)
    assert clean.compact(folder, grace_seconds=0) == (2, 2)
    assert dict(CacheDict(folder).items()) == {"b": "B"}
    before_compaction.refresh()
    assert sorted(before_compaction.keys()) == ["b"]


def test_compact_of_an_idle_writer_on_another_host(tmp_path: Path) -> None:
    """A writer on another host (its liveness unknown here) idle for longer than the
    grace period gets merged; when it writes again, it sees its index file gone and starts
    a new one (its appends to the removed file were lost). Idle checks are made every
    60 s in real life, every 0.5 s here; the grace period, 1 s instead of an hour."""
    folder = tmp_path / "cache"
    _dead_sessions(folder, "with cd.write():\n    cd['old'] = 1")
    go = tmp_path / "go"
    writer = python(
        f"""
        import os, socket, time
        socket.gethostname = lambda: "node042"  # (another host)
        from exca.storage import index
        index.IDLE_CHECK_SECONDS = 0.5
        from exca.storage.cachedict import CacheDict
        cd = CacheDict({str(folder)!r})
        with cd.write():
            cd["first"] = 1
            print("wrote first", flush=True)
            while not os.path.exists({str(go)!r}):
                time.sleep(0.05)
            cd["second"] = 2
            del cd["first"]
        print("done", flush=True)
        """
    )
    assert writer.stdout is not None
    assert writer.stdout.readline().strip() == "wrote first"
    time.sleep(1.5)  # (the grace period passes: not a timing assertion)
    assert clean.compact(folder, grace_seconds=1)[0] == 2
    go.touch()
    _, err = writer.communicate(timeout=WAIT_S)
    assert writer.returncode == 0, err
    assert dict(CacheDict(folder).items()) == {"old": 1, "second": 2}


def test_repeated_compactions_converge(tmp_path: Path) -> None:
    """A dead writer's file ending in a torn line is merged and removed (it was kept,
    seen as "appended since", and merged again at every compaction); each merged line
    keeps at most two former places (they grew by one per compaction)."""
    folder = tmp_path / "cache"
    _dead_sessions(folder, "with cd.write():\n    cd['a'] = 'A'")
    _dead_sessions(folder, "with cd.write():\n    cd['b'] = 'B'")
    torn = index_files(folder)[0]
    with torn.open("ab") as handle:
        handle.write(b'{"#key": "half-writ')  # (a writer killed mid-line)
    for round_ in range(4):  # each compaction in a process that ends (its file is dead)
        run_python(
            f"from exca.ops import clean\nprint(clean.compact({str(folder)!r}, grace_seconds=0))"
        )
        _dead_sessions(folder, f"with cd.write():\n    cd['more{round_}'] = {round_}")
    assert len(index_files(folder)) == 2  # the last merged file and the last writer's
    places = [
        len(json.loads(line).get("#was", []))
        for path in index_files(folder)
        for line in path.read_text().splitlines()
    ]
    assert max(places) == 2
    assert dict(CacheDict(folder).items()) == {
        "a": "A",
        "b": "B",
        **{f"more{i}": i for i in range(4)},
    }
    reader: CacheDict[tp.Any] = CacheDict(folder)
    del reader["a"]
    assert "a" not in CacheDict(folder)


def test_compaction_does_not_make_results_stale(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    # computed, then the source forced and the total recomputed, by processes that ended
    # (their index files can be merged)
    for code in ("", "'mode': 'force'"):
        run_python(
            "import jobmodels_ops, exca.graph\n"
            f"source = jobmodels_ops.Source(n=4, infra={{'folder': {str(root)!r}, {code}}}).make.node()\n"
            f"total = jobmodels_ops.Total(infra={{'folder': {str(root)!r}, {code}}}).total.node(source)\n"
            "print(exca.graph.run(total))"
        )
    source, down = _pipeline(root)
    assert [e.status for e in exca.graph.plan(down).entries] == ["not needed", "cached"]
    assert clean.compact(source.folder, grace_seconds=0)[0] == 2
    source, down = _pipeline(root)
    assert [e.status for e in exca.graph.plan(down).entries] == ["not needed", "cached"]


def _read_until(folder: Path, stop: threading.Event, counts: list[int]) -> None:
    """Fresh readers, one after the other, each counting the entries it sees."""
    while not stop.is_set():
        counts.append(len(CacheDict(folder).keys()))


def test_compact_leaves_a_live_writer_that_looks_ended_alone(tmp_path: Path) -> None:
    """A writer on this host looks ended after a step of the wall clock (its start time,
    read from /proc as boot time + ticks, moves with it; this VM's clock steps by seconds
    under load) or from another pid namespace. Compacting its file right after it deleted
    keys, in one write() block, lost the keys it wrote again next (appended to the merged,
    removed file): a file is merged only once idle for 2 minutes, and a writer idle that
    long checks its file before appending."""
    folder = tmp_path / "cache"
    run_python(
        f"""
        from exca.storage.cachedict import CacheDict
        cd = CacheDict({str(folder)!r})
        with cd.write():
            for i in range(40):
                cd[f"k{{i}}"] = f"A{{i}}"
        """
    )
    age_index_files(folder)  # (writer A ended long ago)
    deleted, go = tmp_path / "deleted", tmp_path / "go"
    writer = python(
        f"""
        import os, time
        from exca.storage.cachedict import CacheDict
        cd = CacheDict({str(folder)!r})
        with cd.write():
            for i in range(20):
                del cd[f"k{{i}}"]
            open({str(deleted)!r}, "w").close()
            while not os.path.exists({str(go)!r}):
                time.sleep(0.01)
            for i in range(20):
                cd[f"k{{i}}"] = f"B{{i}}"
        """
    )
    try:
        wait_until(lambda: deleted.exists() or writer.poll() is not None, "deletions written")
        assert writer.poll() is None, writer.communicate()
        merged = run_python(
            f"""
            from exca.storage import process
            real = process._boot_time()
            process._boot_time = lambda: real + 30.0  # (the wall clock stepped 30 s since)
            from exca.ops import clean
            print(clean.compact({str(folder)!r})[0])
            """
        )
        go.touch()
        assert writer.wait(timeout=WAIT_S) == 0, writer.communicate()
    finally:
        if writer.poll() is None:
            writer.kill()  # (started by this test)
    assert int(merged) < 2  # (writer B's file is not merged)
    expected = {f"k{i}": f"B{i}" if i < 20 else f"A{i}" for i in range(40)}
    assert dict(CacheDict(folder).items()) == expected


def test_compact_never_hides_entries_from_a_concurrent_reader(tmp_path: Path) -> None:
    """Fresh readers keep reading a folder while another process compacts it: each must see
    every entry. A race, so 3 rounds (stopping at the first loss), 4 staggered readers.
    500 entries per index file: a reader that does not list again a file that vanished
    lost entries in 6 of 8 rounds (2,000 per file: 1 of 3, the reads longer, fewer),
    a compaction removing the files before writing the merged one in 5 of 6."""
    folders = [tmp_path / f"round{round_}" for round_ in range(3)]
    # 30 writer sessions of a process that has ended, 500 entries each, per folder
    run_python(
        f"""
        from exca.storage import cachedict
        from exca.storage.cachedict import CacheDict
        for folder in {[str(f) for f in folders]!r}:
            for session in range(30):
                cachedict._SHARED.sessions.clear()  # (a session of its own: 30 index files)
                cache = CacheDict(folder)
                with cache.write():
                    cache.set_many((f"s{{session}}-{{i}}", i) for i in range(500))
        """
    )
    lost: list[int] = []
    for folder in folders:
        assert len(CacheDict(folder).keys()) == 15_000
        age_index_files(folder)
        stop = threading.Event()
        counts: list[int] = []
        readers = [
            threading.Thread(target=_read_until, args=(folder, stop, counts)) for _ in range(4)
        ]
        for reader in readers:
            reader.start()
            time.sleep(0.03)
        try:
            merged = run_python(
                f"import exca.ops; print(exca.ops.clean.compact({str(folder)!r})[0])"
            )
        finally:
            stop.set()
            for reader in readers:
                reader.join()
        assert int(merged) == 30
        assert len(index_files(folder)) == 1
        lost.extend(15_000 - c for c in counts if c != 15_000)
        if lost:
            break
    assert lost == []


def test_clean_keeps_a_config_whose_input_node_is_being_computed(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    flag = tmp_path / "hold"
    flag.touch()
    obj = SlowWithInput(flag=str(flag), infra={"folder": root})
    thread = threading.Thread(target=obj.wait_then, args=(3,))
    thread.start()
    try:
        config_folder = obj.infra.uid_folder()
        assert config_folder is not None
        wait_until(
            lambda: [p for p in config_folder.glob("inputs-*/claims/*.claim")],
            "the thread claims the input node",
        )
        plan = clean.remove_nodes([config_folder])
        assert plan.removals == []
        ((kept, why),) = plan.kept
        assert kept == config_folder and "inputs-" in why and "being computed" in why
    finally:
        flag.unlink()
        thread.join()
    assert obj.wait_then(3) == 3
    assert [r.path for r in clean.remove_nodes([config_folder]).removals] == [config_folder]


def test_clean_never_touches_a_folder_being_computed(
    busy_task: tuple[Path, Path, subprocess.Popen[str]],
) -> None:
    root, folder, proc = busy_task
    before = tree_hash(folder)
    # node
    plan = clean.remove_nodes([folder])
    assert plan.removals == []
    ((kept, why),) = plan.kept
    assert kept == folder and "being computed" in why
    result = cli("clean", root, "node", folder, "--yes", check=True)
    assert "kept" in result.stdout and str(folder) in result.stdout
    # garbage collection keeping nothing there: everything else goes, not the busy folder
    plan = clean.garbage(root, unrelated(root))
    assert folder not in {r.path for r in plan.removals}
    assert folder in {p for p, _ in plan.kept}
    assert clean.compact(folder, grace_seconds=0) == (0, 0)
    assert clean.orphans(root, min_age_hours=0).removals == []
    assert folder.is_dir() and tree_hash(folder) == before
    assert proc.poll() is None


def test_a_clean_of_a_new_folder_before_its_yaml_files_leaves_the_call_computing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`clean node` of a task's folder just made, before its yaml files are all written
    (nothing claimed there yet: idle, rightly removed): the call failed with
    FileNotFoundError (its config.yaml in the removed folder)."""
    from exca.infra import uidfolder

    task = Train(seed=3, infra={"folder": tmp_path / "cache"})
    folder = folder_of(task)
    real = uidfolder.write_atomic
    removed: list[int] = []

    def write_atomic(path: Path | str, text: str, permissions: int | None) -> None:
        if str(path).endswith(uidfolder.CONFIG_FILE) and not removed:
            removed.append(clean.remove_nodes([folder]).execute())  # (a cleaning meanwhile)
        real(path, text, permissions)

    monkeypatch.setattr(uidfolder, "write_atomic", write_atomic)
    assert task.fit() == 4.0
    assert removed and removed[0] > 0  # (it did remove the folder)
    monkeypatch.undo()
    (info,) = exca.ops.inspect(tmp_path / "cache")
    assert (info.folder, info.status) == (folder, "success")
    assert Train(seed=3, infra={"folder": tmp_path / "cache", "mode": "read-only"}).fit() == 4.0


def test_a_clean_while_a_task_writes_its_claim_leaves_the_call_computing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`clean node` renaming a task's folder away between the write of the call's claim
    file and its rename into place (nothing claimed there yet: idle, rightly removed):
    the call failed with FileNotFoundError (the claim's file, gone with the folder)."""
    task = Train(seed=4, infra={"folder": tmp_path / "cache"})
    folder = folder_of(task)
    real = Claims._write_tmp
    removed: list[int] = []

    def write_tmp(self: Claims, tmp: str, data: bytes, *made: bool) -> None:
        real(self, tmp, data, *made)
        if self.folder == folder and not removed:
            removed.append(clean.remove_nodes([folder]).execute())  # (a cleaning meanwhile)

    monkeypatch.setattr(Claims, "_write_tmp", write_tmp)
    assert task.fit() == 5.0
    assert removed and removed[0] > 0  # (it did remove the folder)
    monkeypatch.undo()
    assert Train(seed=4, infra={"folder": tmp_path / "cache", "mode": "read-only"}).fit() == 5.0
    (info,) = exca.ops.inspect(tmp_path / "cache")
    assert (info.folder, info.status) == (folder, "success")


def test_a_clean_before_a_map_claims_its_items_leaves_the_items_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`clean node` of a map's folder after the call prepared it, before it claimed its
    items (idle: rightly removed): the claim made the folder again, without its yaml
    files, and the items computed there were not listed (`exca list`)."""
    squares = Squares(infra={"folder": tmp_path / "cache"})
    folder = folder_of(squares)
    real = Claims.claim
    removed: list[int] = []

    def claim(self: Claims, keys: tp.Sequence[str], *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        if self.folder == folder and not removed:
            removed.append(clean.remove_nodes([folder]).execute())  # (a cleaning meanwhile)
        return real(self, keys, *args, **kwargs)

    monkeypatch.setattr(Claims, "claim", claim)
    assert list(squares.square([2, 3])) == [4, 9]
    assert removed and removed[0] > 0  # (it did remove the folder)
    monkeypatch.undo()
    (info,) = exca.ops.inspect(tmp_path / "cache")
    assert (info.folder, info.kind, info.entries, info.note) == (folder, "map", 2, None)


def test_a_write_landing_in_a_folder_being_deleted_is_deleted_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write into a node folder that looked the folder up just before `clean node`
    renamed it away lands in the renamed folder (the rename moves the folder, not a
    lookup already made), maybe after the deletion listed it: the removal failed with
    "Directory not empty", said "remove it by hand" and counted nothing as freed (a
    probe: a task's config.yaml, written while its idle folder was removed)."""
    task = Train(seed=5, infra={"folder": tmp_path / "cache"})
    task.fit()
    folder = folder_of(task)
    rmdir = os.rmdir
    landed: list[str] = []

    def late_write(path: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> None:
        if clean.REMOVING_PREFIX in str(path) and not kwargs.get("dir_fd") and not landed:
            landed.append(str(path))
            Path(path, "config.yaml").write_text("late\n")  # (after it was emptied)
        rmdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "rmdir", late_write)
    plan = clean.remove_nodes([folder])
    assert plan.execute() == plan.size > 0
    monkeypatch.undo()
    assert landed and plan.failed == [] and not Path(landed[0]).exists()
    # (what is left: the record of the removal, for explain)
    assert sorted(p.name for p in folder.parent.iterdir()) == [clean.REMOVALS_FILE]


def test_a_removal_kept_at_execute_is_told(
    busy_task: tuple[Path, Path, subprocess.Popen[str]], caplog: pytest.LogCaptureFixture
) -> None:
    """A folder that started being computed between the preview and execute() is rightly
    kept, but silently: execute() returned 0 with nothing in ``failed`` (a probe)."""
    _, folder, proc = busy_task
    plan = clean.CleanPlan(removals=[clean.Removal(folder, 4096, "requested")])  # (previewed idle)
    with caplog.at_level("WARNING", logger="exca"):
        assert plan.execute() == 0
    ((path, why),) = plan.skipped
    assert path == folder and "being computed" in why and plan.failed == []
    assert "in use since the preview" in caplog.text and str(folder) in caplog.text
    assert folder.is_dir() and proc.poll() is None


def test_clean_yes_says_how_many_were_removed_and_kept(
    busy_task: tuple[Path, Path, subprocess.Popen[str]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`exca clean --yes` with a folder that started being computed after the preview
    printed it among the "2 item(s) to remove", then "removed.", then the kept one: how
    many were removed was not said (a review)."""
    from exca.ops import cli as exca_cli

    root, busy, proc = busy_task
    idle = folder_of(Train(infra={"folder": root}))  # (computed by the fixture)
    size = disk_bytes(idle)
    # the preview, made before the other process started computing `busy`
    preview = clean.CleanPlan(
        removals=[clean.Removal(busy, 4096, "requested"), clean.Removal(idle, size, "requested")]
    )
    monkeypatch.setattr(clean, "remove_nodes", lambda *args, **kwargs: preview)
    assert exca_cli._main(["clean", str(root), "node", str(busy), str(idle), "--yes"]) == 0
    summary = capsys.readouterr().out.rsplit(f"{idle}\n", 1)[1]  # (after the preview)
    assert summary.startswith(f"Removed 1 of 2 item(s), {human_size(size)} freed; ")
    assert f"1 kept, in use since the preview:\n  - {busy}  (being computed by pid" in summary
    assert busy.is_dir() and not idle.exists() and proc.poll() is None


def _local_slow_job(tmp_path: Path, **infra: tp.Any) -> tuple[Slow, tp.Any, Path]:
    flag = tmp_path / "hold"
    flag.touch()
    task = Slow(flag=str(flag), infra={"folder": tmp_path / "cache", "cluster": "local", **infra})
    job = task.infra.job()
    wait_until(lambda: "slow task started" in (job.stdout() or ""), "the local job starts")
    return task, job, flag


def test_clean_keeps_node_of_a_running_local_job(tmp_path: Path) -> None:
    task, job, flag = _local_slow_job(tmp_path)
    folder = folder_of(task)
    try:
        (info,) = exca.ops.inspect(tmp_path / "cache", step="Slow")
        assert (info.job_id, info.job_state) == (job.job_id, "running")
        plan = clean.remove_nodes([folder])
        assert plan.removals == [] and [p for p, _ in plan.kept] == [folder]
        assert plan.execute() == 0
        assert folder.is_dir()
    finally:
        flag.unlink()
    assert job.result() == "released"


def _process_state(pid: str) -> str | None:
    """State letter of a process (R, S, Z...), None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return text[text.rfind(")") + 2]


def test_finished_local_job_is_not_reported_running(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    task = Train(seed=12, infra={"folder": root, "cluster": "local"})
    job = task.infra.job()  # held, as a user would
    assert job.result() == 13.0
    wait_until(lambda: _process_state(job.job_id) in (None, "Z"), "the job process exits")
    (info,) = exca.ops.inspect(root)
    assert (info.status, info.job_id) == ("success", job.job_id)
    assert info.job_state == "ended"
    assert [r.path for r in clean.remove_nodes([folder_of(task)]).removals] == [folder_of(task)]


def test_clean_versions_keeps_logs_of_a_running_old_job(tmp_path: Path) -> None:
    task, job, flag = _local_slow_job(tmp_path)
    try:
        Slow(flag="", infra={"folder": tmp_path / "cache", "version": "2"}).wait_for_flag()
        stdout = Path(exca.ops.logs(folder_of(task))[-1].stdout_path)
        assert stdout.exists()
        plan = clean.old_versions(tmp_path / "cache")
        assert folder_of(task) in {p for p, _ in plan.kept}
        plan.execute()
        assert stdout.exists(), "the running job's log file was deleted"
    finally:
        flag.unlink(missing_ok=True)
        job.wait()


# --- logs --------------------------------------------------------------------------------------
class Dies(pydantic.BaseModel):
    """A task whose process dies (no result, no error: a kill, out of memory...)."""

    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        os._exit(3)


def test_a_config_whose_job_died_is_listed_as_an_error(tmp_path: Path) -> None:
    """Its job died: nothing cached, and `list` said "empty" where status() says
    "failed" (`--status error` missed every killed, cancelled or crashed job)."""
    dies = Dies(infra={"folder": tmp_path, "cluster": "local"})
    job = dies.infra.job()
    wait_until(job.done, "the job ends")
    assert dies.infra.status() == "failed"
    (info,) = exca.ops.inspect(tmp_path, status="error")
    assert info.folder == folder_of(dies) and info.entries == 0
    assert info.error is not None and f"job {job.job_id} ended without writing" in info.error
    assert "ended without writing its result" in cli("list", tmp_path, check=True).stdout


class DiesHalfway(pydantic.BaseModel):
    """A map whose process dies (a kill, out of memory) at its third item, after writing
    two (in the order it is given them)."""

    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def run(self, items: list[int]) -> tp.Iterator[list[int]]:
        for position, item in enumerate(items):
            if position == 2:
                os._exit(3)
            yield [item]  # (a list: written before the method resumes, see worker.py)


def test_a_map_whose_chunk_job_died_half_way_is_listed_as_partial(tmp_path: Path) -> None:
    """A map's chunk job killed after writing 2 of its 5 items: `exca list` said
    "success  2 item(s)  job N (ended)", nothing telling the other items were never
    written (a probe: a local job SIGKILLed). It is "partial" now, saying how many of
    its items that job left unwritten; once they are written, "success" again."""
    infra = {"folder": tmp_path, "cluster": "local", "max_jobs": 1}
    with pytest.raises(JobFailedError):
        list(DiesHalfway(infra=infra).run(range(5)))
    (info,) = exca.ops.inspect(tmp_path)
    assert (info.status, info.entries) == ("partial", 2), info
    assert info.error is not None and info.error.startswith(
        f"job {info.job_id} ended without writing 3 of 5 item(s)"
    ), info.error
    listing = cli("list", tmp_path, check=True).stdout
    assert "without writing 3 of 5 item(s)" in listing, listing
    view = CacheDict(folder=info.folder)
    with view.write():  # (the missing items, as a later call writes them)
        for item in {str(i) for i in range(5)} - set(view.keys()):
            view[item] = [int(item)]
    (info,) = exca.ops.inspect(tmp_path)
    assert (info.status, info.error) == ("success", None), info


class KilledHalfway(pydantic.BaseModel):
    """A map whose process is killed by SIGKILL (the out-of-memory killer) at its third
    item, after writing two."""

    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def run(self, items: list[int]) -> tp.Iterator[list[int]]:
        import signal

        for position, item in enumerate(items):
            if position == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            yield [item]  # (a list: written before the method resumes, see worker.py)


def test_a_partial_map_says_how_its_local_chunk_job_died(tmp_path: Path) -> None:
    """A map's local chunk job killed by SIGKILL half way: its call said 'its process died
    (killed by SIGKILL: out of memory, or killed by hand)', `exca list` only '(killed, out
    of memory, cancelled...?)' (a probe). It says what the call says now."""
    infra = {"folder": tmp_path, "cluster": "local", "max_jobs": 1}
    with pytest.raises(JobFailedError, match="killed by SIGKILL"):
        list(KilledHalfway(infra=infra).run(range(5)))
    (info,) = exca.ops.inspect(tmp_path)
    assert (info.status, info.entries) == ("partial", 2), info
    said = (
        f"job {info.job_id} ended without writing 3 of 5 item(s): its process died (killed "
        "by SIGKILL: out of memory, or killed by hand); a call computes them again"
    )
    assert info.error == said, info.error
    assert said in cli("list", tmp_path, check=True).stdout


def test_explain_a_config_whose_job_died_says_what_computes_it_again(tmp_path: Path) -> None:
    """explain (and plan) said "job N ended without a result", where a cached error says
    what computes it again (the call's error does: mode='retry'; a probe)."""
    dies = Dies(infra={"folder": tmp_path, "cluster": "local"})
    job = dies.infra.job()
    wait_until(job.done, "the job ends")
    (why,) = exca.ops.explain(dies.run.node())
    # (in the call's words: how it ended, and where its log is)
    said = why.summary()
    died = f"local job {job.job_id} ended without writing its result: its process died"
    assert said.startswith(died) and "; its log: " in said, said
    assert said.endswith("_log.err (empty): mode='retry' computes it again"), said
    read_only = Dies(infra={"folder": tmp_path, "cluster": "local", "mode": "read-only"})
    (entry,) = exca.graph.plan(read_only.run.node()).entries
    assert "retry" not in entry.reason
    with pytest.raises(JobFailedError) as info:  # (the call says it alike)
        Dies(infra={"folder": tmp_path, "cluster": "local"}).run()
    line = said.removesuffix(": mode='retry' computes it again")
    assert f"{line} (use mode='retry' to recompute)" in str(info.value), info.value


class Exits(pydantic.BaseModel):
    """A task whose method calls sys.exit (its job ends without a result, nor an error)."""

    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        sys.exit(3)


def test_a_local_job_ended_by_sys_exit_says_so(tmp_path: Path) -> None:
    """A method calling sys.exit(3) in a local job: the call said only 'its process died
    (killed, out of memory, or sys.exit/os._exit...)', with an empty log, where a Slurm
    job's says its exit code (a probe). The job's log now ends with what it raised, which
    the call quotes, with the log's path (as a call following the job after it ended
    did already)."""
    with pytest.raises(JobFailedError) as info:
        Exits(infra={"folder": tmp_path, "cluster": "local"}).run()
    said = "the job ends without its result: SystemExit(3) was raised (sys.exit in the method?)"
    assert said in str(info.value) and "_log.err" in str(info.value), info.value


class ExitsAtItem(pydantic.BaseModel):
    """A map whose method calls sys.exit at item 2 (its job ends without a result), or
    raises KeyboardInterrupt there (``interrupt``)."""

    interrupt: bool = False
    infra: exca.MapInfra = exca.MapInfra(version="1", max_jobs=1)

    @infra.apply(item_uid=str)
    def run(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            if item == 2 and self.interrupt:
                raise KeyboardInterrupt
            if item == 2:
                sys.exit(3)
            yield item


def test_a_local_map_job_ended_by_sys_exit_names_the_item(tmp_path: Path) -> None:
    """A map's method calling sys.exit in a local job: the end of the job's log, quoted by
    the call, said what was raised but not at which item (the items left not computed
    may be several); it names the item now, as a pool's caller does for an interrupt."""
    with pytest.raises(JobFailedError) as info:
        list(ExitsAtItem(infra={"folder": tmp_path, "cluster": "local"}).run([0, 1, 2, 3]))
    said = "SystemExit(3) was raised (sys.exit in the method?) while computing item '2'"
    assert said in str(info.value), info.value


def test_the_first_line_of_a_local_job_ended_by_sys_exit_names_it(tmp_path: Path) -> None:
    """A local job whose method called sys.exit was said, on the first line of the call's
    error (what a plan's reason and `exca list` say alone), to have died "(killed, out of
    memory, or sys.exit/os._exit in the method)", the sys.exit only in the log quoted
    below, where a pool's caller says it (and, for a map, at which item). The first line
    now quotes the job's note: a task's, and a map's with its item."""
    with pytest.raises(JobFailedError) as info:
        Exits(infra={"folder": tmp_path / "task", "cluster": "local"}).run()
    first = str(info.value).partition("\n")[0]
    assert "ended without writing its result: SystemExit(3) was raised" in first, first
    assert "died" not in first, first
    mapper = ExitsAtItem(infra={"folder": tmp_path / "map", "cluster": "local"})
    with pytest.raises(JobFailedError) as info:
        list(mapper.run([0, 1, 2, 3]))
    first = str(info.value).partition("\n")[0]
    said = "SystemExit(3) was raised (sys.exit in the method?) while computing item '2'"
    assert f"ended without writing its result: {said}" in first, first


def test_list_and_logs_of_a_task_whose_job_called_sys_exit(tmp_path: Path) -> None:
    """A task's local job whose method called sys.exit: `exca list` listed the job's
    failure as an error (cached: the next calls raised it until mode='retry'). Nothing
    is cached now, as for a map's item (see tests/test_execution.py): no error listed, and
    `exca logs` says why its record was set aside (not that the job refused its config,
    as for the other records set aside)."""
    with pytest.raises(JobFailedError, match=r"SystemExit\(3\) was raised"):
        Exits(infra={"folder": tmp_path, "cluster": "local"}).run()
    (listed,) = exca.ops.inspect(tmp_path)
    assert listed.error is None and listed.status != "error", listed
    folder = Exits(infra={"folder": tmp_path}).infra.uid_folder()
    out = cli("logs", folder, check=True).stdout
    said = "ended on a sys.exit of its method: SystemExit(3) was raised (sys.exit in the method?)"
    assert f"{said}; nothing was cached for what it left; the next call computes it" in out, out
    assert "refused its config" not in out, out


@pytest.mark.parametrize("interrupt", (False, True))
def test_logs_of_a_map_job_ended_by_its_method_count_the_items_it_cached(
    tmp_path: Path, interrupt: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """A map's local job whose method called sys.exit (or raised KeyboardInterrupt) at item
    2: the items it computed before are kept, yet `exca logs` noted "nothing was cached"
    (a task's words). The job's log, quoted by the call and by `exca logs`, now counts the
    items the job had cached."""
    mapper = ExitsAtItem(interrupt=interrupt, infra={"folder": tmp_path, "cluster": "local"})
    with pytest.raises(JobFailedError) as info:
        list(mapper.run([0, 1, 2, 3]))
    folder = mapper.infra.uid_folder()
    assert folder is not None
    cached = len(CacheDict(folder).keys())
    said = f"while computing item '2' (the job had cached {cached} of its 4 item(s))"
    assert said in str(info.value), info.value
    from exca.ops.cli import main

    capsys.readouterr()
    assert main(["logs", str(folder)]) == 0
    out = capsys.readouterr().out
    note = out.splitlines()[1]
    assert said in note and note.endswith("the next call computes the items it left)"), out
    assert "nothing was cached" not in out, out
    # (`exca list` said "(killed, out of memory, cancelled...?)" for the method's interrupt)
    assert main(["list", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert said in out and "killed, out of memory" not in out, out


class CallsInterruptedMap(pydantic.BaseModel):
    """A task whose method calls a map (no job of its own) that raises KeyboardInterrupt
    at item 2."""

    maps: str  # (the map's folder)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        return sum(ExitsAtItem(interrupt=True, infra={"folder": self.maps}).run([0, 1, 2, 3]))


def test_a_task_job_whose_inline_map_was_interrupted_speaks_of_the_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A task's local job whose method called a map that was interrupted at item 2: the
    job's note (quoted by the call) carried the map's item count, "(the job had cached 2
    of its 4 item(s))", and `exca logs` noted "the next call computes the items it left",
    a map job's words. They speak of the task now, naming the map; the map's own folder
    is listed as not finished (its call ran in that job, without a job of its own)."""
    maps = tmp_path / "maps"
    maps.mkdir()
    task = CallsInterruptedMap(maps=str(maps), infra={"folder": tmp_path, "cluster": "local"})
    with pytest.raises(JobFailedError) as info:
        task.run()
    first = str(info.value).partition("\n")[0]
    said = f"{exca.graph.errors.RAISED_INTERRUPT} in a map it called (test_ops.ExitsAtItem.run,1/"
    assert said in first and "at item '2'" in first, first
    assert "the job had cached" not in first, first
    from exca.ops.cli import main

    capsys.readouterr()
    assert main(["logs", str(task.infra.uid_folder())]) == 0
    note = capsys.readouterr().out.splitlines()[1]
    assert "nothing was cached for the task; the next call computes it" in note, note
    assert "items it left" not in note and "in a map it called (" in note, note
    (listed,) = exca.ops.inspect(maps)
    assert listed.status == "partial" and "having cached 2 of its 4 item(s)" in str(listed.error)


def test_list_of_a_map_call_interrupted_where_it_was_made_says_it_did_not_finish(
    tmp_path: Path,
) -> None:
    """A map's call (no job) whose method raised KeyboardInterrupt at item 2: `exca list`
    said "success  2 item(s)", as for a call that finished. It says how the call ended and
    what it had cached; once the items left are computed, "success" again."""
    mapper = ExitsAtItem(interrupt=True, infra={"folder": tmp_path})
    with pytest.raises(KeyboardInterrupt):
        list(mapper.run([0, 1, 2, 3]))
    (info,) = exca.ops.inspect(tmp_path)
    assert (info.status, info.entries) == ("partial", 2), info
    said = "ended on KeyboardInterrupt at item '2', having cached 2 of its 4 item(s)"
    assert info.error is not None and said in info.error, info.error
    assert said in cli("list", tmp_path, "--status", "partial", check=True).stdout
    view = CacheDict(folder=info.folder)
    with view.write():  # (the items left, as a later call writes them)
        for item in ("2", "3"):
            view[item] = int(item)
    (info,) = exca.ops.inspect(tmp_path)
    assert (info.status, info.error) == ("success", None), info


class Interruptible(pydantic.BaseModel):
    """Touches <ctl>/started; raises KeyboardInterrupt while <ctl>/raise exists; blocks
    while <ctl>/block exists."""

    ctl: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        ctl = Path(self.ctl)
        (ctl / "started").touch()
        if (ctl / "raise").exists():
            raise KeyboardInterrupt
        while (ctl / "block").exists():
            time.sleep(0.02)
        return 1


@pytest.mark.timeout(120)
def test_list_says_a_task_interrupted_by_ctrl_c_not_a_bare_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task whose call was interrupted (its method's KeyboardInterrupt, where it was
    called; or Ctrl-C cancelling its local job, whose record then goes) was listed as a
    bare "empty", as one never run. `exca list` says when and how it was interrupted
    (still "empty": nothing is cached); once computed, that note goes."""
    import signal

    ctl = tmp_path / "ctl"
    ctl.mkdir()
    (ctl / "raise").touch()
    inline = Interruptible(ctl=str(ctl), infra={"folder": tmp_path / "inline"})
    with pytest.raises(KeyboardInterrupt):
        inline.run()
    (info,) = exca.ops.inspect(tmp_path / "inline")
    assert info.status == "empty" and info.error is not None, info
    assert (
        info.error.startswith("interrupted at ")
        and "(KeyboardInterrupt, a call of pid" in info.error
    )
    assert "interrupted at " in cli("list", tmp_path / "inline", check=True).stdout
    (ctl / "raise").unlink()
    assert Interruptible(ctl=str(ctl), infra={"folder": tmp_path / "inline"}).run() == 1
    (info,) = exca.ops.inspect(tmp_path / "inline")
    assert (info.status, info.error) == ("success", None), info
    assert not list((tmp_path / "inline").rglob("*.interrupted"))  # (the note went)
    # a local job cancelled by Ctrl-C
    (ctl / "started").unlink()
    (ctl / "block").touch()
    local = Interruptible(ctl=str(ctl), infra={"folder": tmp_path / "local", "cluster": "local"})

    waiting = waiting_for_jobs(monkeypatch)

    def interrupt_once_started() -> None:
        wait_until(lambda: (ctl / "started").exists(), "the job to start")
        wait_until(waiting.is_set, "the call to wait for its job")
        signal.raise_signal(signal.SIGINT)  # (the user's Ctrl-C)

    thread = threading.Thread(target=interrupt_once_started)
    thread.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            local.run()
    finally:
        thread.join()
        (ctl / "block").unlink()
    (info,) = exca.ops.inspect(tmp_path / "local")
    assert info.status == "empty" and info.error is not None, info
    assert (
        info.error.startswith("interrupted at ")
        and "(Ctrl-C, which cancelled its job " in info.error
    )


class InterruptsAtItemWhileFlagged(pydantic.BaseModel):
    """A map whose method raises KeyboardInterrupt at item 2 while the file ``flag`` exists."""

    flag: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def run(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            if item == 2 and Path(self.flag).exists():
                raise KeyboardInterrupt
            yield item


def test_the_note_of_an_interrupted_map_call_goes_once_its_items_are_computed(
    tmp_path: Path,
) -> None:
    """The note an interrupted map call leaves (jobs/*.interrupted, read by `exca list`)
    stayed for ever once its items were computed: a later call finishing them removes it."""
    flag = tmp_path / "flag"
    flag.touch()
    mapper = InterruptsAtItemWhileFlagged(flag=str(flag), infra={"folder": tmp_path / "cache"})
    with pytest.raises(KeyboardInterrupt):
        list(mapper.run([0, 1, 2, 3]))
    folder = mapper.infra.uid_folder()
    assert folder is not None and len(list((folder / "jobs").glob("*.interrupted"))) == 1
    assert list(mapper.run([0, 1])) == [0, 1]  # (cached: nothing computed, the note stays)
    assert len(list((folder / "jobs").glob("*.interrupted"))) == 1
    flag.unlink()
    assert list(mapper.run([0, 1, 2, 3])) == [0, 1, 2, 3]
    assert not list((folder / "jobs").glob("*.interrupted"))
    ((listed,)) = exca.ops.inspect(tmp_path / "cache")
    assert (listed.status, listed.error) == ("success", None), listed


def test_list_of_a_map_call_killed_where_it_was_made_says_it_did_not_finish(
    tmp_path: Path,
) -> None:
    """A map's call (no job) whose process was killed (SIGKILL) at item 2: `exca list` said
    "success  2 item(s)". It says the call died, from the claim its process left."""
    code = (
        "import test_ops; "
        f"list(test_ops.KilledHalfway(infra={{'folder': {str(tmp_path)!r}}}).run(range(5)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=WAIT_S)
    assert result.returncode == -9, result
    (info,) = exca.ops.inspect(tmp_path)
    assert (info.status, info.entries) == ("partial", 2), info
    said = "died (killed?) while computing 5 item(s), having cached 2 of them"
    assert info.error is not None and said in info.error, info.error


def test_list_of_a_map_copied_while_a_call_computed_it_says_so(tmp_path: Path) -> None:
    """A map's cache copied while a call of this machine computed its items: `exca list`
    of the copy said "computing" (the copied claim), though that call writes into the
    original; nothing computes them in the copy. It says what the copy holds."""
    original, copy = tmp_path / "original", tmp_path / "copy"
    squares = Squares(infra={"folder": original})
    assert list(squares.square([0, 1])) == [0, 1]
    folder = squares.square.node([0, 1]).folder
    assert folder is not None
    with Claims(folder).claim(["2", "3"]):  # (as that call holds them)
        shutil.copytree(original, copy)
        (listed,) = exca.ops.inspect(original)
        assert listed.status == "computing", listed
        (info,) = exca.ops.inspect(copy)
    assert (info.status, info.entries) == ("partial", 2), info
    said = f"copied while a call (pid {os.getpid()}"
    assert info.error is not None and said in info.error, info.error
    assert "computed 2 item(s) into the original, 0 of them cached here" in info.error


def test_list_of_a_task_copied_while_its_local_job_computed_it_says_so(tmp_path: Path) -> None:
    """A cache copied (cp -a) while a local job computed a task into the original: `exca
    list` of the copy showed "job N (ended)" of a job still running in the original,
    where explain said "copied from ..., where job N computes it now". It says so too,
    then that the job computed it since, once it did."""
    original, copy = tmp_path / "original", tmp_path / "copy"
    flag = tmp_path / "hold"
    flag.touch()
    job = Slow(flag=str(flag), infra={"folder": original, "cluster": "local"}).infra.job()
    try:
        wait_until(lambda: "slow task started" in (job.stdout() or ""), "the job runs")
        subprocess.run(["cp", "-a", str(original), str(copy)], check=True)
        (info,) = exca.ops.inspect(copy)
        out = cli("list", copy, check=True).stdout
    finally:
        flag.unlink()
    there = folder_of(Slow(flag=str(flag), infra={"folder": original}))
    said = f"its folder was copied from {there}, where job {job.job_id} computes it now"
    assert (info.status, info.job_state, info.error) == ("empty", "running", None), info
    assert info.note is not None and said in info.note, info.note
    assert f"job {job.job_id} (running)" in out and said in out, out
    assert job.result() == "released"
    (info,) = exca.ops.inspect(copy)
    assert (info.status, info.job_state) == ("empty", "ended"), info
    said = f"where job {job.job_id} computed it since"
    assert info.note is not None and said in info.note, info.note


class Interrupts(pydantic.BaseModel):
    """A task whose method raises KeyboardInterrupt itself (no signal: nobody cancels)."""

    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        raise KeyboardInterrupt


def test_a_local_job_whose_method_raises_keyboardinterrupt_is_not_cancelled(
    tmp_path: Path,
) -> None:
    """A method raising KeyboardInterrupt in a local job: the call (and exca list) said
    'local job N was cancelled (interrupted by SIGINT, which job.cancel() sends)', though
    nothing cancelled it. The job's log notes that no SIGINT came; the error says the
    method raised it, with the log's path and its end. Nothing is cached (`exca list`
    lists no error; it listed the job's failure), and `exca logs` says why (not that
    the job refused its config, as for the other records set aside)."""
    with pytest.raises(JobFailedError) as info:
        Interrupts(infra={"folder": tmp_path, "cluster": "local"}).run()
    said = str(info.value)
    assert "was cancelled" not in said, said
    assert "KeyboardInterrupt was raised (by the method: no SIGINT was received)" in said
    assert "_log.err" in said and "raise KeyboardInterrupt" in said, said
    assert "nothing is cached: the next call computes it" in said, said
    # (not cached as the config's failure, see tests/test_execution.py: its job's record
    # is set aside, and its log says why)
    (listed,) = exca.ops.inspect(tmp_path)
    assert listed.error is None and listed.status != "error", listed
    folder = Interrupts(infra={"folder": tmp_path}).infra.uid_folder()
    out = cli("logs", folder, check=True).stdout
    assert "method raised KeyboardInterrupt: nothing was cached" in out, out
    assert "refused its config" not in out, out


def test_plan_of_another_users_task_whose_job_raised_keyboardinterrupt(tmp_path: Path) -> None:
    """A task's job whose method raised KeyboardInterrupt, its record still there (the
    job ended before its submitter recorded it, and the submitter was gone before it set
    it aside): a plan sets it aside (nothing is cached, see tests/test_execution.py). In
    a cache folder of another user's, `exca plan` stopped there with "exca: error:
    PermissionError: ... jobs/N.json -> jobs/N.refused" (that user may not move it): it
    now plans the task as missing, to compute, and leaves the record. Real permissions:
    run as root without the capabilities that bypass them (setpriv)."""
    root = tmp_path / "cache"
    with pytest.raises(JobFailedError, match="KeyboardInterrupt was raised"):
        Interrupts(infra={"folder": root, "cluster": "local"}).run()
    folder = Interrupts(infra={"folder": root}).infra.uid_folder()
    assert folder is not None
    (refused,) = (folder / "jobs").glob("*.refused")
    record = refused.with_suffix(".json")
    refused.rename(record)  # (as if recorded after the job set its record aside)
    _give_to_nobody(root)
    (folder / "jobs").chmod(0o755)
    target = f"{__name__}:Interrupts.run"
    planned = _exca_as_a_user("plan", target, f"infra.folder={root}", "infra.cluster=local")
    assert planned.returncode == 0, planned.stderr
    assert "PermissionError" not in planned.stderr, planned.stderr
    assert "missing  compute" in planned.stdout, planned.stdout
    assert record.exists()  # (left: not this user's to move)


def _interrupted_job_record(root: Path) -> Path:
    """A task's local job whose method raised KeyboardInterrupt, its record put back
    where it was before the job set it aside (the job ended before its submitter recorded
    it, and the submitter was gone before it set it aside; or a kill at the right
    instant): the record, in the node folder's jobs/."""
    with pytest.raises(JobFailedError, match="KeyboardInterrupt was raised"):
        Interrupts(infra={"folder": root, "cluster": "local"}).run()
    folder = Interrupts(infra={"folder": root}).infra.uid_folder()
    assert folder is not None
    (refused,) = (folder / "jobs").glob("*.refused")
    record = refused.with_suffix(".json")
    refused.rename(record)
    return record


def _tree(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every file and folder under root: its mode, size, modification time and inode."""
    return {
        str(path.relative_to(root)): (info.st_mode, info.st_size, info.st_mtime_ns, info.st_ino)
        for path in [root, *root.rglob("*")]
        for info in [os.lstat(path)]
    }


def test_plan_and_explain_of_a_task_whose_job_raised_keyboardinterrupt_write_nothing(
    tmp_path: Path,
) -> None:
    """`exca plan` and `exca explain` finding the record of a task's job whose method
    raised KeyboardInterrupt (not set aside: see _interrupted_job_record) renamed it
    aside (jobs/N.json -> jobs/N.refused), though a plan computes nothing and writes
    nothing (run on caches one may only read). They now leave the cache as it was, and
    plan the task as missing, to compute; the call that computes it sets it aside."""
    root = tmp_path / "cache"
    record = _interrupted_job_record(root)
    before = _tree(root)
    target = (f"{__name__}:Interrupts.run", f"infra.folder={root}", "infra.cluster=local")
    assert "missing  compute" in cli("plan", *target, check=True).stdout
    assert "missing      compute" in cli("explain", *target, check=True).stdout
    assert _tree(root) == before  # (the record left where it was)
    with pytest.raises(JobFailedError, match="KeyboardInterrupt was raised") as info:
        Interrupts(infra={"folder": root, "cluster": "local"}).run()  # (computed again)
    assert f"local job {record.stem} " not in str(info.value)  # (a new job's)
    assert not record.exists() and record.with_suffix(".refused").exists()


def test_status_and_list_of_a_task_whose_job_raised_keyboardinterrupt_say_what_a_call_does(
    tmp_path: Path,
) -> None:
    """The record of a task's job whose method raised KeyboardInterrupt, not set aside
    (see _interrupted_job_record): status() said "failed" and `exca list` "error" (the
    job's ending), yet the next call computes it (an interrupt is no failure of the
    config: nothing is cached). Both now say what that call does: not submitted, no
    error; neither moves the record, the call does."""
    root = tmp_path / "cache"
    record = _interrupted_job_record(root)
    task = Interrupts(infra={"folder": root, "cluster": "local"})
    assert task.infra.status() == "not submitted"
    (listed,) = exca.ops.inspect(root)
    assert listed.status == "empty" and listed.error is None, listed
    assert exca.ops.inspect(root, status="error") == []
    out = cli("list", root, check=True).stdout
    assert "KeyboardInterrupt" not in out and " error " not in out, out
    assert record.exists()
    with pytest.raises(JobFailedError, match="KeyboardInterrupt was raised") as info:
        task.run()  # (computed: a new job)
    assert f"local job {record.stem} " not in str(info.value)
    assert not record.exists() and task.infra.status() == "not submitted"


class InterruptsWhileFlagged(pydantic.BaseModel):
    """A task whose method raises KeyboardInterrupt itself while the file ``flag`` exists."""

    flag: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        if Path(self.flag).exists():
            raise KeyboardInterrupt("stop condition")
        return 7


@pytest.mark.parametrize("call", ["call", "job"])
@pytest.mark.parametrize("cluster", [None, "debug"])
def test_a_keyboardinterrupt_of_the_method_in_this_process_lists_no_error(
    tmp_path: Path, cluster: str | None, call: str
) -> None:
    """A method raising KeyboardInterrupt itself in the calling process (cluster None or
    "debug") cannot be told from the user's Ctrl-C: it propagates, nothing is cached, the
    status is "not submitted" and the next call computes it. But a debug job followed by
    job().result() leaves its record (a call withdraws the job it submitted), which `exca
    list` read as a job that died: "error ... job DEBUG_N ended without writing its result
    (killed, out of memory, cancelled...?)", where status() said "not submitted" (and
    cluster None lists "empty"). It lists "empty" now, saying when the call was
    interrupted (unless the debug job's record, kept, tells of its job)."""
    root = tmp_path / "cache"
    flag = tmp_path / "flag"
    flag.touch()
    infra = {"folder": root, "cluster": cluster}
    task = InterruptsWhileFlagged(flag=str(flag), infra=infra)
    with pytest.raises(KeyboardInterrupt, match="stop condition"):
        task.run() if call == "call" else task.infra.job().result()
    assert task.infra.status() == "not submitted"
    (listed,) = exca.ops.inspect(root)
    assert listed.status == "empty", listed
    if (cluster, call) == ("debug", "job"):
        assert listed.error is None, listed
    else:
        said = listed.error or ""
        assert said.startswith("interrupted at ") and "(KeyboardInterrupt, a call" in said, said
    assert exca.ops.inspect(root, status="error") == []
    out = cli("list", root, check=True).stdout
    assert " error " not in out and "ended without writing" not in out, out
    flag.unlink()
    assert InterruptsWhileFlagged(flag=str(flag), infra=infra).run() == 7  # (computed)
    assert task.infra.status() == "completed"
    (listed,) = exca.ops.inspect(root)
    assert listed.status == "success", listed


class StartsThenWaits(pydantic.BaseModel):
    """A task that says it started (a file), then waits (bounded) to be cancelled."""

    started: str = ""
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        Path(self.started).touch()
        time.sleep(WAIT_S)
        return 1


def test_exca_list_says_a_local_job_was_cancelled_as_its_call_does(tmp_path: Path) -> None:
    """A sweep's local job cancelled (job.cancel()): its call said 'local job N was
    cancelled (interrupted by SIGINT, which job.cancel() sends)', but `exca list` said
    'job N ended without writing its result (killed, out of memory, cancelled...?)' (a
    probe), where a Slurm job's line has its call's words. It has them now."""
    started = tmp_path / "started"
    task = StartsThenWaits(started=str(started), infra={"folder": tmp_path, "cluster": "local"})
    job = task.infra.job()
    wait_until(started.exists, "the job to start")
    job.cancel()
    wait_until(job.done, "the cancelled job to end")
    with pytest.raises(JobFailedError, match="was cancelled"):
        job.result()
    (listed,) = exca.ops.inspect(tmp_path)
    assert listed.status == "error"
    said = f"local job {job.job_id} was cancelled (interrupted by SIGINT, which job.cancel() sends)"
    assert listed.error is not None and listed.error.startswith(said), listed.error
    assert said in cli("list", tmp_path, check=True).stdout


class _SubmititLikeHandler:
    """Stands for submitit's signal handler of a Slurm job: on its signal, a job not near
    its time limit is preempted: requeued, then its process exits with sys.exit(-1)."""

    def has_timed_out(self) -> bool:
        return False

    def checkpoint_and_try_requeue(self, signum: int, frame: tp.Any = None) -> None:
        print("submitit: preempted, requeued", file=sys.stderr, flush=True)
        sys.exit(-1)


class Preempted(pydantic.BaseModel):
    """A task whose Slurm job is preempted while it runs (submitit's handler exits)."""

    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        import signal

        from exca.graph import worker

        os.environ["SUBMITIT_EXECUTOR"] = "slurm"  # (as in a Slurm job's process)
        signal.signal(signal.SIGUSR2, _SubmititLikeHandler().checkpoint_and_try_requeue)
        worker._run_on_past_time_limit_warning()
        os.kill(os.getpid(), signal.SIGUSR2)
        time.sleep(5)  # (the signal comes first)
        return 12


def test_a_preempted_jobs_exit_is_not_said_to_be_the_methods(tmp_path: Path) -> None:
    """submitit's handler requeues a preempted job, then calls sys.exit(-1) in the
    method's frame: its log said 'SystemExit(-1) was raised (sys.exit in the method?)',
    blaming the method for submitit's exit."""
    with pytest.raises(JobFailedError) as info:
        Preempted(infra={"folder": tmp_path, "cluster": "local"}).run()
    assert "submitit: preempted, requeued" in str(info.value), info.value
    assert "sys.exit in the method?" not in str(info.value), info.value


def test_a_result_computed_without_a_job_is_not_listed_as_that_jobs(tmp_path: Path) -> None:
    """A job failed; the fix ran inline with mode retry: `list` named the failed job as the
    maker of the result (and `logs` showed its failure without a word)."""
    root = tmp_path / "cache"
    failing = Train(seed=5, fail=True, infra={"folder": root, "cluster": "local"})
    with pytest.raises(ValueError, match="cannot fit seed=5"):
        failing.fit()
    failed_job = exca.ops.logs(folder_of(failing))[-1].job_id
    (info,) = exca.ops.inspect(root)
    assert (info.status, info.job_id, info.job_state) == ("error", failed_job, "ended")
    fixed = Train(seed=5, fail=True, infra={"folder": root, "mode": "retry"})
    with pytest.raises(ValueError):  # (still failing, now inline: no job made it)
        fixed.fit()
    (info,) = exca.ops.inspect(root)
    assert (info.status, info.job_id, info.job_state) == ("error", None, None)
    out = cli("logs", folder_of(failing), check=True).stdout
    assert f"not computed by job {failed_job} (the last job recorded here) but where" in out
    # computed by a job again: that job is shown, its logs without a note
    again = Train(seed=5, fail=True, infra={"folder": root, "cluster": "local", "mode": "retry"})
    with pytest.raises(ValueError):
        again.fit()
    (info,) = exca.ops.inspect(root)
    assert info.job_id not in (None, failed_job) and info.job_state == "ended"
    assert "not computed by job" not in cli("logs", folder_of(failing), check=True).stdout


class Outer(pydantic.BaseModel):
    """Computes its sub-config's task inside its own job (chaining off)."""

    inner: Train = Train(seed=11)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply(chain_subconfigs=False)
    def fit(self) -> float:
        return self.inner.fit() + 1


def test_a_result_computed_in_another_nodes_job_names_that_job(tmp_path: Path) -> None:
    """A sub-config's task computed inside the job of the config holding it: list shows
    that job (its log holds the output), logs says so next to the sub-config's own."""
    root = tmp_path / "cache"
    inner = Train(seed=11, infra={"folder": root})
    outer = Outer(inner=inner, infra={"folder": root, "cluster": "local"})
    assert outer.fit() == 13.0
    (job,) = exca.ops.logs(folder_of(outer))
    infos = {i.folder: i for i in exca.ops.inspect(root)}
    assert (infos[folder_of(inner)].job_id, infos[folder_of(inner)].job_state) == (
        job.job_id,
        "ended",
    )
    assert "fitting seed=11" in job.stdout()


def test_logs_of_a_map_whose_items_failed_inline_names_them(cache: dict[str, tp.Any]) -> None:
    """`exca logs MAP_FOLDER` of a map computed where it was called said only "No job
    recorded", not that an item failed and that `--item` shows its error (a probe)."""
    folder = folder_of(cache["partial"])
    result = cli("logs", folder)
    assert result.returncode == 1 and "1 item(s) failed" in result.stdout, result.stdout
    assert "--item=-2" in result.stdout
    shown = cli("logs", folder, "--item=-2")
    assert "ValueError: negative item -2" in shown.stdout


class BadTexts(pydantic.BaseModel):
    """A map of texts, failing on those holding "bad"."""

    infra: exca.MapInfra = exca.MapInfra()

    @infra.apply(item_uid=str)
    def apply(self, items: tp.Iterable[str]) -> tp.Iterator[int]:
        for text in items:
            if "bad" in text:
                raise ValueError(f"bad item {text}")
            yield len(text)


def test_logs_of_a_map_item_failed_inline_quotes_its_uid(tmp_path: Path) -> None:
    """The `--item=a bad one` that `exca logs` suggested was not shell-quoted: pasted, the
    shell split it (a review). It is quoted as a shell reads it."""
    obj = BadTexts(infra={"folder": tmp_path})
    with pytest.raises(ValueError):
        list(obj.apply(["a bad one"]))
    out = cli("logs", folder_of(obj)).stdout
    hint = out.split("(e.g. ")[1].split(")")[0]
    assert shlex.split(hint) == ["--item=a bad one"], out
    assert (
        "ValueError: bad item a bad one" in cli("logs", folder_of(obj), *shlex.split(hint)).stdout
    )


class LookedUp(pydantic.BaseModel):
    """A map looking its items up: a missing one raises from its KeyError (a chain)."""

    infra: exca.MapInfra = exca.MapInfra()

    @infra.apply(item_uid=str)
    def apply(self, items: tp.Iterable[str]) -> tp.Iterator[int]:
        table = {"a": 1, "b": 2}
        for text in items:
            try:
                yield table[text]
            except KeyError as error:
                raise ValueError(f"unknown item {text}") from error


def test_a_failed_map_item_cached_traceback_shows_its_error_once(tmp_path: Path) -> None:
    """The cached traceback of a map's item that failed among others showed its error
    twice, the second "During handling of the above exception, another exception
    occurred" (a probe, `exca logs F --item UID`): the item, computed alone after the
    call of the whole batch failed, raised while the batch's error was handled, which
    became its context. It shows once, with the user's frames; a chain the user's code
    made is kept."""
    obj = Squares(offset=5, infra={"folder": tmp_path})
    for _ in range(2):  # (computed, then re-raised from the cache)
        with pytest.raises(ValueError, match="negative item -2") as info:
            list(obj.square([1, -2, 3]))
        (note,) = info.value.__notes__
        assert note.count("ValueError: negative item -2") == 1, note
        assert "During handling" not in note and 'raise ValueError(f"negative item' in note
    shown = cli("logs", folder_of(obj), "--item=-2").stdout
    assert shown.count("ValueError: negative item -2") == 1, shown
    assert "During handling" not in shown and "in square" in shown
    chained = LookedUp(infra={"folder": tmp_path})
    with pytest.raises(ValueError, match="unknown item c"):
        list(chained.apply(["a", "c", "b"]))
    shown = cli("logs", folder_of(chained), "--item=c").stdout
    assert shown.count("ValueError: unknown item c") == 1, shown
    assert "During handling" not in shown and "KeyError: 'c'" in shown, shown
    assert (
        shown.index("KeyError: 'c'")
        < shown.index("was the direct cause")
        < shown.index("ValueError: unknown item c")
    )


def test_an_error_cached_in_an_except_block_holds_its_error_only(tmp_path: Path) -> None:
    """A map item (alone in its method call) or a task computed while the caller handled
    another exception (a call made in an except block, the user's or exca's) cached its
    error with that exception as its implicit context: the note of every later re-raise,
    and `exca logs F --item UID`, showed the unrelated error, then "During handling", for
    good (the symptom of a one-off failure of
    test_a_failed_map_item_cached_traceback_shows_its_error_once). The error's own
    traceback is cached, as for an item that failed among others; the raised one still
    chains to what the caller handled (Python's doing, live)."""
    for items in ([-2], [1, -2, 3]):
        obj = Squares(offset=len(items), infra={"folder": tmp_path})
        try:
            raise KeyError("unrelated")
        except KeyError:
            with pytest.raises(ValueError, match="negative item -2") as info:
                list(obj.square(items))
        assert isinstance(info.value.__context__, KeyError)  # (the live chain)
        for _ in range(2):  # (the note of the error computed, then of the cached one)
            (note,) = info.value.__notes__
            assert "unrelated" not in note and "During handling" not in note, note
            assert note.count("ValueError: negative item -2") == 1, note
            with pytest.raises(ValueError, match="negative item -2") as info:
                list(obj.square(items))
        shown = cli("logs", folder_of(obj), "--item=-2").stdout
        assert "unrelated" not in shown and "During handling" not in shown, shown
        assert shown.count("ValueError: negative item -2") == 1, shown
    task = Train(seed=4, fail=True, infra={"folder": tmp_path})
    try:
        raise KeyError("unrelated")
    except KeyError:
        with pytest.raises(ValueError, match="cannot fit seed=4") as raised:
            task.fit()
    assert isinstance(raised.value.__context__, KeyError)  # (the live chain)
    with pytest.raises(ValueError, match="cannot fit seed=4") as raised:
        task.fit()  # (from the cache)
    (note,) = raised.value.__notes__
    assert "unrelated" not in note and "During handling" not in note, note
    assert note.count("ValueError: cannot fit seed=4") == 1 and "in fit" in note, note


def test_logs_of_an_item_the_map_folder_does_not_hold_says_so(tmp_path: Path) -> None:
    """`exca logs FOLDER --item 77` of a map holding items 0 to 4 only (a typo, an item of
    another config) said only "No job recorded ... for item '77'", as for an item that
    is there, computed where it was called (a probe). It says no such item is cached
    there, and names some that are."""
    obj = Squares(infra={"folder": tmp_path})
    assert list(obj.square(range(5))) == [0, 1, 4, 9, 16]
    typo = cli("logs", folder_of(obj), "--item", "77")
    assert typo.returncode == 1, typo.stderr
    assert "no item '77' is cached there (its 5 item(s): '0', '1', '2', ...:" in typo.stdout
    there = cli("logs", folder_of(obj), "--item", "3")
    assert there.returncode == 1 and "is cached there" not in there.stdout, there.stdout


def test_logs_of_a_local_task_from_a_fresh_process(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    task = Train(seed=9, infra={"folder": root, "cluster": "local"})
    assert task.fit() == 9.0 + 1.0
    folder = folder_of(task)
    (job,) = exca.ops.logs(task.fit.node())
    assert exca.ops.logs(folder) == [job]
    assert "fitting seed=9" in job.stdout() and "warning from seed=9" in job.stderr()
    out = cli("logs", folder, check=True).stdout
    assert f"job {job.job_id}" in out and "fitting seed=9" in out
    assert cli("logs", ".", cwd=folder, check=True).stdout == out.replace(str(folder), ".")
    source = Source(infra={"folder": root}).make.node()
    total = Total(infra={"folder": root, "cluster": "local"}).total.node(source)
    assert total.result() == 6 and total.folder is not None
    assert "total" in cli("logs", ".", cwd=total.folder, check=True).stdout  # (inputs-*)
    # its config's folder: the jobs are those of its inputs-* folders, said so
    result = cli("logs", total.folder.parent)
    assert result.returncode == 1 and f"have their own: {total.folder}" in result.stdout
    assert "warning from seed=9" not in out
    err = cli("logs", folder, "--stderr", check=True).stdout
    assert "warning from seed=9" in err
    data = json.loads(cli("logs", folder, "--json", check=True).stdout)
    assert data["job_id"] == job.job_id and "fitting seed=9" in data["text"]
    # a folder without any job: a message and a non-zero exit
    inline = Train(seed=10, infra={"folder": root})
    inline.fit()
    result = cli("logs", folder_of(inline))
    assert result.returncode == 1 and "No job recorded" in result.stdout
    result = cli("logs", folder_of(inline), "--json")
    assert result.returncode == 1 and "No job recorded" in json.loads(result.stdout)["error"]
    assert "traceback" not in json.loads(result.stdout)  # (a success: no error to show)
    # a failure computed where it was called: no log, its cached traceback instead
    failed = Train(seed=10, fail=True, infra={"folder": root})
    with pytest.raises(ValueError):
        failed.fit()
    result = cli("logs", folder_of(failed))
    assert result.returncode == 1 and "No job recorded" in result.stdout
    assert "its cached error:" in result.stdout
    assert "Traceback (most recent call last)" in result.stdout
    assert result.stdout.rstrip().endswith("ValueError: cannot fit seed=10")
    data = json.loads(cli("logs", folder_of(failed), "--json").stdout)
    assert data["traceback"].endswith("ValueError: cannot fit seed=10")


def test_list_of_a_node_fed_by_a_list_of_nodes_names_its_failed_input(tmp_path: Path) -> None:
    """(seen last session: a task fed by a list of nodes, ``[ok, failing]``, one of which
    failed, was listed "empty" without "not computed: its input ... failed": its inputs.yaml
    names the list's uid, ``[uid,uid]``, looked up as one node folder) Each node of a list
    (or dict) of inputs is looked at, named by its index (key)."""
    root = tmp_path / "cache"
    ok = Train(seed=31, infra={"folder": root}).fit.node()
    failing = Train(seed=32, fail=True, infra={"folder": root}).fit.node()
    total = Total(infra={"folder": root}).total.node([ok, failing])
    keyed = Total(scale=3, infra={"folder": root}).total.node({"a": ok, "b": failing})
    with pytest.raises(Exception, match="cannot fit seed=32"):
        exca.graph.run(total, keyed)
    said = f"its input 'values'[1] ({failing.uid}) failed (ValueError: cannot fit seed=32)"
    listed = cli("list", root, check=True).stdout.splitlines()
    (line,) = [line for line in listed if "default/inputs-" in line]
    assert line.split()[0] == "empty" and f"(not computed: {said})" in line, line
    assert total.folder is not None
    assert f"not computed: {said}: `exca logs {failing.folder}`" in cli("logs", total.folder).stdout
    (info,) = exca.ops.inspect(root, step="*Total*", where=["scale=3"])
    assert info.note == "not computed: " + said.replace("[1]", "['b']")


def test_logs_of_a_task_that_failed_in_a_job_names_its_error(tmp_path: Path) -> None:
    """`exca logs FOLDER` of a task whose local job raised showed its stdout alone, ending
    with submitit's "Submitted job triggered an exception": neither the error nor where
    to find it (its stderr). The log is followed by the error and the --stderr command
    (``job_error`` in --json); a successful job's log has no such line."""
    root = tmp_path / "cache"
    failed = Train(seed=21, fail=True, infra={"folder": root, "cluster": "local"})
    with pytest.raises(ValueError, match="cannot fit seed=21"):
        failed.fit()
    folder = folder_of(failed)
    out = cli("logs", folder, check=True).stdout
    assert "fitting seed=21" in out
    said = "# (the job failed: ValueError: cannot fit seed=21; its traceback is in its stderr"
    assert said in out and out.rstrip().endswith(f"`exca logs {folder} --stderr`)")
    data = json.loads(cli("logs", folder, "--json", check=True).stdout)
    assert data["job_error"] == "ValueError: cannot fit seed=21"
    err = cli("logs", folder, "--stderr", check=True).stdout  # (the traceback is there)
    assert "the job failed" not in err and "ValueError: cannot fit seed=21" in err
    ok = Train(seed=22, infra={"folder": root, "cluster": "local"})
    assert ok.fit() == 23.0
    assert "the job failed" not in cli("logs", folder_of(ok), check=True).stdout


class Wordy(pydantic.BaseModel):
    """A task whose error message is long, its advice at the end (as UpstreamFailed's)."""

    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        raise ValueError("a long explanation " * 15 + "(the advice at the end)")


def test_logs_of_a_task_that_failed_in_a_job_shows_its_whole_error(tmp_path: Path) -> None:
    """The line `exca logs FOLDER` adds after the log of a failed job cut the error at 200
    characters ("... mode='retry' on that upstrea ...": an upstream failure's advice, at
    its end, was lost): the message is shown whole."""
    wordy = Wordy(infra={"folder": tmp_path / "cache", "cluster": "local"})
    with pytest.raises(ValueError, match="the advice at the end"):
        wordy.run()
    out = cli("logs", folder_of(wordy), check=True).stdout
    said = "a long explanation " * 15 + "(the advice at the end); its traceback is in"
    assert f"# (the job failed: ValueError: {said}" in out, out


def test_logs_and_list_of_a_node_not_computed_as_its_input_failed(tmp_path: Path) -> None:
    """A task with inputs not computed because its upstream failed: `exca logs` said only
    "No job recorded", `exca list` showed it "empty" (a probe). Both name the failed
    input; a folder holding nothing for another reason points to `exca explain`."""
    root = tmp_path / "cache"
    failing = Train(seed=11, fail=True, infra={"folder": root}).fit.node()
    total = Total(infra={"folder": root}).total.node(failing)
    again = Total(scale=3, infra={"folder": root}).total.node(total)  # (its input's failed)
    with pytest.raises(Exception, match="cannot fit seed=11"):
        exca.graph.run(again)
    assert total.folder is not None and again.folder is not None
    result = cli("logs", total.folder)
    assert result.returncode == 1 and "No job recorded" in result.stdout
    said = f"its input 'values' ({failing.uid}) failed (ValueError: cannot fit seed=11)"
    assert f"not computed: {said}: `exca logs {failing.folder}`" in result.stdout
    lines = [
        line for line in cli("list", root, check=True).stdout.splitlines() if "inputs-" in line
    ]
    assert len(lines) == 2 and all(line.split()[0] == "empty" for line in lines)
    assert sum(f"(not computed: {said})" in line for line in lines) == 1
    (info,) = exca.ops.inspect(root, step="*Total*", where=["scale=2"])  # (its input unlisted)
    assert info.status == "empty" and info.note == f"not computed: {said}"
    result = cli("logs", again.folder)
    assert f"its input 'values' ({total.uid}) holds nothing (not computed)" in result.stdout
    # nothing cached, no input: where to look
    empty = Train(seed=12, infra={"folder": root})
    empty.infra.uid_folder(create=True)
    out = cli("logs", folder_of(empty)).stdout
    assert "nothing is cached there: `exca explain TARGET`" in out


def test_logs_of_a_map_item_that_failed_in_a_job_show_its_traceback(tmp_path: Path) -> None:
    """A map's item that failed in a job has its error cached and the job goes on: its
    log holds "Job completed successfully" (stderr a one-line warning), so `exca logs
    FOLDER --item UID` showed no traceback, only in the cache (a probe; for an item
    that failed where it was called, logs shows the cached one). It shows the cached
    traceback after the job's log (``traceback`` in --json), and the log of the map
    without --item says which items failed."""
    root = tmp_path / "cache"
    mapper = Squares(offset=2, infra={"folder": root, "cluster": "local"})
    with pytest.raises(ValueError, match="negative item -2"):
        list(mapper.square([1, -2, 3]))
    folder = folder_of(mapper)
    result = cli("logs", folder, "--item", "-2", check=True)
    assert "# job " in result.stdout
    assert "# item '-2' holds a cached error (its traceback):\nTraceback" in result.stdout
    assert result.stdout.rstrip().endswith("ValueError: negative item -2"), result.stdout
    data = json.loads(cli("logs", folder, "--item=-2", "--json", check=True).stdout)
    assert data["traceback"].endswith("ValueError: negative item -2")
    data = json.loads(cli("logs", folder, "--item", "3", "--json", check=True).stdout)
    assert "traceback" not in data  # (an item that succeeded: its log alone)
    result = cli("logs", folder, check=True)
    assert "1 item(s) of this map hold a cached error" in result.stdout
    assert "--item=-2" in result.stdout
    data = json.loads(cli("logs", folder, "--json", check=True).stdout)
    assert data["failed_items"] == ["-2"]


def test_logs_of_a_node_being_computed_where_it_was_called(tmp_path: Path) -> None:
    """`exca logs FOLDER` of a task being computed right now where it was called (no job,
    a live claim) said "nothing is cached there: `exca explain TARGET` tells why it is
    not computed" (a probe): it is computed, by a process that writes no log file here.
    It names that process; a removal's hold (`exca clean`) is named as such."""
    from exca.storage.claims import Claims, FolderHold

    root = tmp_path / "cache"
    task = Train(seed=13, infra={"folder": root})
    task.infra.uid_folder(create=True)
    folder = folder_of(task)
    claim = Claims(folder).claim(["result"])
    try:
        result = cli("logs", folder)
    finally:
        claim.release()
    assert result.returncode == 1 and "No job recorded" in result.stdout
    said = f"it is being computed right now by pid {os.getpid()} on "
    assert said in result.stdout and "exca explain" not in result.stdout, result.stdout
    hold = FolderHold(["result"])
    hold.put(folder)
    try:
        result = cli("logs", folder)
    finally:
        hold.take_away(folder)
    said = f"its folder is being removed or renamed by pid {os.getpid()} on "
    assert said in result.stdout and "computed right now" not in result.stdout, result.stdout
    assert "exca explain" in cli("logs", folder).stdout  # (nothing there: as before)


def test_list_says_what_fed_each_task_with_inputs(tmp_path: Path) -> None:
    """The evaluations of a sweep (a task with inputs, whose config does not change) were
    listed as `default/inputs-<digest>` lines only, the same for all but their digest:
    nothing told which training each one evaluated, short of reading its inputs.yaml (a
    probe). Each line now says what fed it, as the plan does, and --json gives it."""
    root = tmp_path / "cache"
    trained = {seed: Train(seed=seed, infra={"folder": root}).fit.node() for seed in (1, 2)}
    for node in trained.values():
        Score(infra={"folder": root}).score.node(node).result()
    infos = exca.ops.inspect(root, step="*Score*")
    assert sorted(str(i.inputs) for i in infos) == [str({"w": n.uid}) for n in trained.values()]
    out = cli("list", root, "--step", "Score", check=True).stdout
    lines = sorted(line for line in out.splitlines() if "inputs-" in line)
    ends = sorted(f"(inputs: w=Train.fit,1/{n.uid.split('/', 1)[1]})" for n in trained.values())
    assert len(lines) == 2 and all(any(line.endswith(end) for line in lines) for end in ends), (
        lines,
        ends,
    )
    # a task without inputs says nothing of them; the json has them, by name
    assert "(inputs:" not in cli("list", root, "--step", "Train", check=True).stdout
    listed = json.loads(cli("list", root, "--step", "Score", "--json", check=True).stdout)
    assert sorted(entry["inputs"]["w"] for entry in listed) == [n.uid for n in trained.values()]


def test_list_says_lists_and_dicts_of_inputs_as_the_plan_does(tmp_path: Path) -> None:
    """A task fed by a list or a dict of nodes was listed with the raw text of its
    inputs.yaml, modules included and cut in its middle (``named={best=mymod.Train.fit,1/
    [...] ...}``), not as the plan says it (``named={best: Train.fit,1/..., ...}``), which
    the docs promise: the same text now."""
    root = tmp_path / "cache"
    trained = [Train(seed=seed, infra={"folder": root}).fit.node() for seed in (1, 2, 3)]
    named = {"best": trained[0], "worst": trained[1]}
    node = Ensemble(infra={"folder": root}).vote.node(trained, named)
    planned = str(exca.graph.plan(node)).splitlines()
    (line,) = [line for line in planned if "Ensemble.vote" in line]
    fed = line[line.index("(inputs: ") :]
    assert "models=[Train.fit,1/seed=1-" in fed and ", +1 more]" in fed, fed
    assert "named={best: Train.fit,1/seed=1-" in fed and f"{MODELS}." not in fed, fed
    node.result()
    out = cli("list", root, "--step", "Ensemble", check=True).stdout
    assert out.rstrip().endswith(fed), (out, fed)


def test_list_says_a_list_mixing_nodes_and_values_without_modules(tmp_path: Path) -> None:
    """A list input mixing a node and a value was listed as inputs.yaml records it
    (``models=[jobmodels_ops.Train.fit,1/seed=1-...,2.50-...]``: the module kept, no spaces),
    unlike a list of nodes only: its nodes are now said without their module, as the plan
    says them, its values by their uid (as a value input is listed)."""
    root = tmp_path / "cache"
    trained = [Train(seed=seed, infra={"folder": root}).fit.node() for seed in (1, 2)]
    node = Ensemble(infra={"folder": root}).vote.node([trained[0], 2.5], {"best": trained[1]})
    node.result()
    out = cli("list", root, "--step", "Ensemble", check=True).stdout
    (line,) = [line for line in out.splitlines() if "(inputs: " in line]
    assert "models=[Train.fit,1/seed=1-" in line and ", 2.50-" in line, line
    assert "named={best: Train.fit,1/seed=2-" in line and f"{MODELS}." not in line, line


def test_list_of_a_node_whose_detached_job_found_its_input_failed(tmp_path: Path) -> None:
    """The element of a detached run (Slurm, afterany) starting after its upstream failed
    records "upstream failed" and exits: `exca list` showed it as an `error` (UpstreamFailed,
    or "job N failed: ...", `--status error` selecting it) while a waiting run leaves the
    same node `empty`, "not computed: its input ... failed", as the plan says "missing"
    (a probe). It is listed as a waiting run leaves it."""
    from exca.graph import worker
    from exca.graph.errors import UpstreamFailed

    root = tmp_path / "cache"
    failing = Train(seed=15, fail=True, infra={"folder": root}).fit.node()
    with pytest.raises(ValueError, match="cannot fit seed=15"):
        failing.result()
    total = Total(infra={"folder": root}).total.node(failing)
    total.prepare()  # (its folders, as the run writes them before submitting)
    with pytest.raises(UpstreamFailed):  # (what the element of its array runs, and caches)
        worker.run_unit(worker.Unit(total))
    (info,) = exca.ops.inspect(root, step="*Total*")
    said = f"its input 'values' ({failing.uid}) failed (ValueError: cannot fit seed=15)"
    assert (info.status, info.error, info.note) == ("empty", None, f"not computed: {said}")
    assert exca.ops.inspect(root, step="*Total*", status="error") == []
    (line,) = [
        line for line in cli("list", root, check=True).stdout.splitlines() if "inputs-" in line
    ]
    assert line.split()[0] == "empty" and f"(not computed: {said})" in line
    entry = {e.uid: e for e in exca.graph.plan(total).entries}[total.uid]
    assert entry.status == "missing"  # (as the plan says)


def test_list_reads_the_inputs_of_an_empty_task_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """inspect read the inputs.yaml of each empty task with inputs twice (once to describe
    its upstream nodes, once more for its note, after asking sacct): once now, the note
    unchanged."""
    inspect_module = importlib.import_module("exca.ops.inspect")
    root = tmp_path / "cache"
    failing = Train(seed=16, fail=True, infra={"folder": root}).fit.node()
    total = Total(infra={"folder": root}).total.node(failing)
    with pytest.raises(Exception, match="cannot fit seed=16"):
        exca.graph.run(total)
    read = inspect_module.read_yaml
    reads: list[Path] = []

    def counted(path: Path) -> tp.Any:
        reads.append(Path(path))
        return read(path)

    monkeypatch.setattr(inspect_module, "read_yaml", counted)
    (info,) = exca.ops.inspect(root, step="*Total*")
    said = f"its input 'values' ({failing.uid}) failed (ValueError: cannot fit seed=16)"
    assert (info.status, info.note) == ("empty", f"not computed: {said}")
    assert [p.name for p in reads].count("inputs.yaml") == 1, reads


def test_list_asks_sacct_only_for_the_nodes_it_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """inspect (exca list) asked sacct how the dead Slurm jobs of every folder ended
    before applying --where and --status: one sacct call per listing, also when the
    filters left none of them. Only the listed nodes' jobs (and their inputs') are asked."""
    from exca.graph import registry

    root = tmp_path / "cache"
    dead = Train(seed=21, infra={"folder": root})
    folder = dead.infra.uid_folder(create=True)
    assert folder is not None
    record = registry.JobRecord(
        job_id="99999991",
        cluster="slurm",
        logs=str(folder / "logs"),
        submitted=time.time() - 60,
        folder=str(folder),
    )
    registry.write(folder, record, link=False)
    assert Train(seed=22, infra={"folder": root}).fit() == pytest.approx(23.0)
    asked: list[list[str]] = []

    def endings(job_ids: tp.Sequence[str], unknown: bool = False) -> dict[str, tp.Any]:
        asked.append(list(job_ids))
        return {}

    monkeypatch.setattr(registry, "queued_jobs", lambda job_ids: set())
    monkeypatch.setattr(registry, "slurm_endings", endings)
    (info,) = exca.ops.inspect(root, where=["seed=22"])
    assert info.status == "success"
    assert exca.ops.inspect(root, status="success") == [info]
    assert asked == []  # (nothing listed had a dead Slurm job)
    (info,) = exca.ops.inspect(root, where=["seed=21"])
    assert info.status == "error" and info.job_id == "99999991"
    assert asked == [["99999991"]]


class MyUpstreamFailed(RuntimeError):
    """A user's error whose name ends as exca's UpstreamFailed."""


class RaisesLookalike(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        raise MyUpstreamFailed("its own failure")


def test_a_users_error_named_like_upstream_failed_is_listed_as_an_error(tmp_path: Path) -> None:
    """The cached error of exca's UpstreamFailed is listed empty (not computed: the
    previous test); a user's MyUpstreamFailed was too (its type name was matched by its
    end; a review), and a run took it for a skipped node. It is the method's error."""
    from exca.graph import store

    obj = RaisesLookalike(infra={"folder": tmp_path})
    with pytest.raises(MyUpstreamFailed):
        obj.run()
    (info,) = exca.ops.inspect(tmp_path)
    assert info.status == "error" and "MyUpstreamFailed" in (info.error or ""), info
    assert not store.cache_upstream_failed(obj.run.node().cache)


def test_logs_of_a_node_not_computed_given_relative_to_it(tmp_path: Path) -> None:
    """`exca logs .` (from the folder of a call not computed as its input failed), or its
    path from a folder less than a root above it: its root was taken from the path as
    given ("." has no parent): the failed input was not found, and the command pointed to
    `exca explain` instead (a review)."""
    root = tmp_path / "cache"
    failing = Train(seed=14, fail=True, infra={"folder": root}).fit.node()
    total = Total(infra={"folder": root}).total.node(failing)
    with pytest.raises(Exception, match="cannot fit seed=14"):
        exca.graph.run(total)
    assert failing.folder is not None and total.folder is not None
    said = f"its input 'values' ({failing.uid}) failed (ValueError: cannot fit seed=14)"
    for cwd, given in ((total.folder, "."), (total.folder.parent, total.folder.name)):
        out = cli("logs", given, cwd=cwd).stdout
        assert f"not computed: {said}: `exca logs {failing.folder}`" in out, out


@pytest.mark.parametrize("unreadable", ("upstream", "inputs"))
def test_list_of_a_node_whose_input_cannot_be_read(tmp_path: Path, unreadable: str) -> None:
    """`exca list` skips a folder it cannot read (with a warning): the note of a call with
    inputs not computed described that upstream again, or read the call's inputs.yaml,
    unguarded: the whole listing crashed (a review)."""
    root = tmp_path / "cache"
    failing = Train(seed=13, fail=True, infra={"folder": root}).fit.node()
    total = Total(infra={"folder": root}).total.node(failing)
    with pytest.raises(Exception, match="cannot fit seed=13"):
        exca.graph.run(total)
    assert failing.folder is not None and total.folder is not None
    path = (
        (failing.folder / "uid.yaml")
        if unreadable == "upstream"
        else (total.folder / "inputs.yaml")
    )
    path.unlink()
    path.mkdir()  # (IsADirectoryError, as PermissionError for another user's private file)
    infos = {info.folder: info for info in exca.ops.inspect(root)}
    assert infos[total.folder].status == "empty"
    result = cli("logs", total.folder)
    assert result.returncode == 1 and "No job recorded" in result.stdout


def test_logs_of_the_map_chunk_that_computed_an_item(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    mapper = Chatty(infra={"folder": root, "cluster": "local", "max_jobs": 2})
    items = [1, 2, 3, 4, 5, 6]
    assert list(mapper.shout(items)) == [x + 1 for x in items]
    folder = folder_of(mapper)
    jobs = exca.ops.logs(folder)
    assert len(jobs) == 2 and jobs[0].job_id != jobs[1].job_id
    printed = {}
    for job in jobs:
        printed[job.job_id] = {x for x in items if f"item-{x}-out" in job.stdout()}
    assert printed[jobs[0].job_id] | printed[jobs[1].job_id] == set(items)
    assert not printed[jobs[0].job_id] & printed[jobs[1].job_id]
    for x in items:  # each item: its own chunk's job, not the other one
        (job,) = exca.ops.logs(folder, item=str(x))
        assert x in printed[job.job_id]
        assert f"item-{x}-err" in job.stderr()
    assert exca.ops.logs(folder, item="999") == []
    # from a fresh process: one item of each chunk
    for job_id, own in printed.items():
        x = min(own)
        result = cli("logs", folder, "--item", str(x), check=True)
        assert f"job {job_id}" in result.stdout
        assert {y for y in items if f"item-{y}-out" in result.stdout} == own
        err = cli("logs", folder, "--item", str(x), "--stderr", check=True).stdout
        assert {y for y in items if f"item-{y}-err" in err} == own


# --- check -------------------------------------------------------------------------------------
def test_check_without_slurm_says_nothing_was_checked(tmp_path: Path) -> None:
    """Nothing goes to Slurm: it said "Resources fit the cluster." even for
    cpus_per_task=1000 on cluster local (only Slurm resources are checked)."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"infra": {"folder": str(tmp_path / "cache"), "cluster": None}}))
    result = cli("check", f"{MODELS}:Train.fit", "--config", cfg, "seed=3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("No node goes to Slurm")
    rows = json.loads(
        cli("check", f"{MODELS}:Train.fit", "--config", cfg, "--json", check=True).stdout
    )
    assert rows == []
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


class Checked(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        return 1


def _made_up_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """The resource check sees a made-up cluster: partition gpu (1 day, a node with 8 GPUs
    and 16 CPUs, one with 64 CPUs and no GPU) and partition long (7 days, no GPU)."""
    from exca.graph import slurm_check as sc

    info = sc.SlurmCluster(
        partitions={
            "gpu": sc.SlurmPartition("gpu", True, 24 * 60, ["g1", "c2"]),
            "long": sc.SlurmPartition("long", False, 7 * 24 * 60, ["c1"]),
        },
        nodes={
            "g1": sc.SlurmNode("g1", 16, 64000, 8, {"a100"}, {"gpu"}),
            "c2": sc.SlurmNode("c2", 64, 64000, 0, set(), {"gpu"}),
            "c1": sc.SlurmNode("c1", 64, 256000, 0, set(), {"long"}),
        },
        max_array_size=1001,
        accounts=None,
        qos=None,
    )
    monkeypatch.setattr(sc, "cluster", lambda: info)


def _plan_problems(tmp_path: Path, **infra: tp.Any) -> list[str]:
    task = Checked(infra={"folder": tmp_path, "cluster": "slurm", **infra})
    (entry,) = exca.graph.plan(task.run.node()).entries
    return entry.problems


def test_a_list_of_partitions_must_fit_in_one_of_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "gpu,long" was checked against both partitions pooled: GPUs from one, the time
    limit of the other passed, and the job stayed pending for good."""
    _made_up_cluster(monkeypatch)
    day = 24 * 60
    assert _plan_problems(tmp_path, slurm_partition="gpu,long", gpus_per_node=1) == []
    assert _plan_problems(tmp_path, slurm_partition="gpu,long", timeout_min=3 * day) == []
    (problem,) = _plan_problems(
        tmp_path, slurm_partition="gpu,long", gpus_per_node=1, timeout_min=3 * day
    )
    assert problem.startswith("no single partition of 'gpu', 'long' fits"), problem
    assert "timeout_min=4320 exceeds the time limit of partition 'gpu' (1440 min)" in problem
    assert "gpus_per_node=1 but nodes of partition 'long' have at most 0 GPUs" in problem
    (problem,) = _plan_problems(tmp_path, slurm_partition="gpu,long", nodes=2, cpus_per_task=64)
    assert "nodes=2 but partition 'long' has 1 node(s)" in problem
    assert "nodes=2 with 64 CPUs, 0 GPUs each but 1 node(s) of partition 'gpu' have them" in problem
    # in one partition, the resources of one node: 64 CPUs and a GPU are on no node of gpu
    (problem,) = _plan_problems(tmp_path, slurm_partition="gpu", gpus_per_node=1, cpus_per_task=64)
    assert problem == "no node of partition 'gpu' has 64 CPUs, 1 GPUs together"


def test_a_time_slurm_cannot_read_is_refused_before_submission(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`exca check` said "Resources fit the cluster" for {"time": "abc"} (and the job was
    submitted: sbatch refused it, naming only --time): the value and the formats Slurm
    reads are named, by check, a plan and the submission."""
    from exca.graph import slurm_check as sc
    from exca.ops.cli import main

    _made_up_cluster(monkeypatch)
    formats = "minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED"
    for time_limit in ("abc", "1.5", "+3", "5:", "1:2:3:4", "1-2-3", "5m", "1-1:"):
        (problem,) = _plan_problems(tmp_path, slurm_additional_parameters={"time": time_limit})
        assert problem.startswith(f"time={time_limit!r} in slurm_additional_parameters is not a")
        assert formats in problem
    for time_limit in (90, "90", "30:00", "1:30:00", "0-23", "0-2:3", "1-0:0:0", "1-"):
        assert _plan_problems(tmp_path, slurm_additional_parameters={"time": time_limit}) == []
    task = Checked(
        infra={
            "folder": tmp_path,
            "cluster": "slurm",
            "slurm_additional_parameters": {"time": "abc"},
        }
    )
    with pytest.raises(sc.ResourceError, match="time='abc' in slurm_additional_parameters"):
        task.run()  # (nothing submitted)
    assert task.infra.status() == "not submitted"
    cfg = tmp_path / "cfg.yaml"
    infra = {"folder": str(tmp_path), "cluster": "slurm"}
    cfg.write_text(
        yaml.safe_dump({"infra": {**infra, "slurm_additional_parameters": {"time": "abc"}}})
    )
    capsys.readouterr()
    assert main(["check", f"{__name__}:Checked.run", "--config", str(cfg)]) != 0
    out = capsys.readouterr().out
    assert "time='abc'" in out and formats in out and "fit the cluster" not in out


def test_time_and_mem_given_as_sbatch_options_are_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """timeout_min=3 days was refused on gpu (1 day), but {"time": "3-00:00:00"} passed, as
    did {"mem": "500G"} where mem_gb=500 was refused: the job stayed pending for good."""
    _made_up_cluster(monkeypatch)
    limit = "exceeds the time limit of partition 'gpu' (1440 min)"
    # (0 is UNLIMITED to sbatch: it passed; a review)
    for time_limit in (3 * 24 * 60, "4320", "72:00:00", "3-00:00:00", "2-1", "UNLIMITED", 0, "0"):
        problems = _plan_problems(tmp_path, slurm_additional_parameters={"time": time_limit})
        assert problems == [f"time={time_limit!r} in slurm_additional_parameters {limit}"]
    for time_limit in (60, "1440", "23:59:59", "1-00:00:00", "1-0", "30:00"):  # they fit
        assert _plan_problems(tmp_path, slurm_additional_parameters={"time": time_limit}) == []
    # sbatch takes the option over the field: the option is checked
    assert (
        _plan_problems(tmp_path, timeout_min=3 * 24 * 60, slurm_additional_parameters={"time": 60})
        == []
    )
    most = "but nodes of partition 'gpu' have at most 62.5 GB"
    for mem in ("500G", "500GB", "512000", "512000M", "1T"):
        problems = _plan_problems(tmp_path, slurm_additional_parameters={"mem": mem})
        assert problems == [f"mem={mem!r} in slurm_additional_parameters {most}"]
    for mem in ("60G", "61440", "0"):  # they fit (0: all of a node's memory)
        assert _plan_problems(tmp_path, slurm_additional_parameters={"mem": mem}) == []
    for mem in ("8G", "0"):
        assert _plan_problems(tmp_path, mem_gb=500, slurm_additional_parameters={"mem": mem}) == []
    # per CPU / per GPU: times the node's CPUs / GPUs (they passed whatever their amount)
    per_cpu = {"mem-per-cpu": "8G"}
    (problem,) = _plan_problems(tmp_path, cpus_per_task=16, slurm_additional_parameters=per_cpu)
    assert problem == (
        "mem-per-cpu='8G' in slurm_additional_parameters (x 16 CPUs: 128 GB per node) " + most
    )
    assert _plan_problems(tmp_path, cpus_per_task=4, slurm_additional_parameters=per_cpu) == []
    per_gpu = {"mem_per_gpu": "40000", "gpus_per_node": 2}
    (problem,) = _plan_problems(
        tmp_path, slurm_partition="gpu", slurm_additional_parameters=per_gpu
    )
    assert problem.startswith("mem-per-gpu='40000' in slurm_additional_parameters (x 2 GPUs: ")
    # (with mem too: sbatch refuses at once, "mutually exclusive"; a review)
    (problem,) = _plan_problems(tmp_path, mem_gb=1, slurm_additional_parameters=per_cpu)
    assert problem.startswith("mem_gb=1 and mem-per-cpu='8G': sbatch takes only one of")


def test_a_constraint_must_be_met_by_the_nodes_holding_the_resources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Features were checked over a partition's nodes pooled: a100 (on a 16-CPU node) with
    64 CPUs (another node's) passed, and the job stayed pending for good (a review)."""
    _made_up_cluster(monkeypatch)
    on_gpu = {"slurm_partition": "gpu", "slurm_constraint": "a100"}
    assert _plan_problems(tmp_path, cpus_per_task=16, **on_gpu) == []
    assert _plan_problems(tmp_path, cpus_per_task=64, slurm_partition="gpu") == []
    (problem,) = _plan_problems(tmp_path, cpus_per_task=64, **on_gpu)
    assert "no node of partition 'gpu' has 64 CPUs, 0 GPUs with feature(s) ['a100']" in problem


def test_inspection_and_previews_free_nothing(tmp_path: Path) -> None:
    """A forced task leaves the first run's index file without a live entry (its writer
    ended): listings, previews, explanations and plans leave it on disk; a read of the
    cache frees it."""
    root = tmp_path / "cache"
    for mode in ("cached", "force"):
        run_python(
            "import jobmodels_ops\n"
            f"jobmodels_ops.Source(n=5, infra={{'folder': {str(root)!r}, 'mode': {mode!r}}}).make()"
        )
    folder = Source(n=5, infra={"folder": root}).infra.uid_folder()
    assert folder is not None
    then = time.time() - 300  # (files idle for 2 minutes may be freed)
    for index in folder.glob("*-info.jsonl"):
        os.utime(index, (then, then))
    before = sorted(folder.glob("*-info.jsonl"))
    assert len(before) == 2
    exca.ops.inspect(root)
    clean.orphans(root, min_age_hours=0)
    clean.garbage(root, unrelated(root))
    exca.ops.explain(Source(n=6, infra={"folder": root}).make.node())
    # dry runs of the node itself read its cache without freeing (even twice: a second
    # read re-checks files it could not free at the first)
    node = Source(n=5, infra={"folder": root}).make.node()
    for _ in range(2):
        assert exca.graph.plan(node).counts() == {"cached": 1}
        exca.ops.explain(node)
    assert sorted(folder.glob("*-info.jsonl")) == before
    assert CacheDict(folder).keys() == ["result"]  # a read of the cache frees it
    assert len(list(folder.glob("*-info.jsonl"))) == 1


def test_cli_config_file_empty_or_only_comments_gives_no_values(tmp_path: Path) -> None:
    """An empty --config file (or one of comments only) was refused, "got NoneType": it
    holds no values, as an empty mapping."""
    root = tmp_path / "cache"
    assert Labelled(name="x", infra={"folder": root}).label() == "X"
    for text in ("", "# nothing yet\n"):
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(text)
        folder = f"infra.folder={root}"
        result = cli("explain", f"{__name__}:Labelled.label", "--config", cfg, "name=x", folder)
        assert result.returncode == 0, result.stderr
        assert "Nothing to compute" in result.stdout


def test_python_ops_refuse_what_is_no_cache_folder(tmp_path: Path) -> None:
    """exca.ops.logs of a path that is no folder returned [] (as a folder without jobs),
    clean.orphans took a negative age (then even files of writers at work are old)."""
    for path, what in ((tmp_path / "nope", "no such folder"), (tmp_path / "f", "not a folder")):
        if what == "not a folder":
            path.write_text("")
        with pytest.raises(ValueError, match=f"{what} \\(give the folder of a task or map"):
            exca.ops.logs(path)
    with pytest.raises(ValueError, match=r"min_age_hours=-5: give a number of hours >= 0"):
        clean.orphans(tmp_path, min_age_hours=-5)


def test_cli_list_lines_end_without_spaces(tmp_path: Path) -> None:
    """A task's line of `exca list` ended with the two spaces meant to precede its map
    details (pasted output, diffs and `grep 'x$'` saw them)."""
    root = tmp_path / "cache"
    for name in ("a", "b"):
        assert Labelled(name=name, infra={"folder": root}).label() == name.upper()
    result = cli("list", root, check=True)
    rows = result.stdout.splitlines()
    assert len(rows) == 3 and all(row == row.rstrip() for row in rows), rows


def _gate(gate: Path, x: int) -> None:
    """Note that ``x`` is computed; for 2, touch ``written`` then wait for ``go``."""
    with (gate / "computed").open("a") as handle:
        handle.write(f"{x}\n")
    if x == 2:
        (gate / "written").touch()
        wait_until(lambda: (gate / "go").exists(), "the cleaner lets item 2 go")


class Gated(pydantic.BaseModel):
    """A map (x -> [10 x], written as yielded) and a task (2 -> [20]) paused by files in
    ``gate`` (see _gate): the map's items 0 and 1 are written when item 2 waits."""

    gate: str
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def values(self, items: list[int]) -> tp.Iterator[list[int]]:
        for x in items:
            _gate(Path(self.gate), x)
            yield [10 * x]


class GatedTask(pydantic.BaseModel):
    gate: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def value(self, x: int) -> list[int]:
        _gate(Path(self.gate), x)
        return [10 * x]


@pytest.mark.parametrize("kind", ["map", "task"])
def test_a_removal_never_takes_a_folder_claimed_after_its_last_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """execute() checked that a node folder was not being computed, then (after reading
    every job record of the root) renamed it away: a map that claimed its items in
    between, its first items written, had them removed while it ran, and the others
    written into the removed folder (a real process, paused by files: its call failed,
    '4 item(s) ... not computed'); a task computing then lost its folder and claim. The
    last check is made under the folder's lock, with the removal's own claim on the task
    key, right before the rename: such a folder is kept (plan.skipped) and what was
    computed reads back."""
    root, gate = tmp_path / "cache", tmp_path / "gate"
    gate.mkdir()
    if kind == "map":
        call, items, expected = "test_ops.Gated({}).values([0, 1, 2, 3])", [0, 1, 2, 3, 100], 5
        assert list(Gated(gate=str(gate), infra={"folder": root}).values([100])) == [[1000]]
        folder = folder_of(Gated(gate=str(gate), infra={"folder": root}))
    else:
        call, items, expected = "test_ops.GatedTask({}).value(2)", [2], 2
        assert GatedTask(gate=str(gate), infra={"folder": root}).value(100) == [1000]
        folder = folder_of(GatedTask(gate=str(gate), infra={"folder": root}))
    plan = clean.remove_nodes([folder])  # (the config folder: its inputs-* nodes with it)
    assert [r.path for r in plan.removals] == [folder]
    config = f"gate={str(gate)!r}, infra={{'folder': {str(root)!r}}}"
    worker = python(
        f"""
        import test_ops
        from pathlib import Path
        test_ops.wait_until(Path({str(gate / "checked")!r}).exists, "the cleaner's check")
        print(list({call.format(config)}))
        """
    )
    checked = clean._holds_what_jobs_use

    def paused(*args: tp.Any) -> str | None:  # (after its check of the folder's claims)
        (gate / "checked").touch()
        wait_until(lambda: (gate / "written").exists(), "the worker computes item 2")
        return checked(*args)

    monkeypatch.setattr(clean, "_holds_what_jobs_use", paused)
    try:
        plan.execute()
    finally:
        (gate / "go").touch()
        out, err = worker.communicate(timeout=WAIT_S)
    assert worker.returncode == 0, err
    assert out.strip() == ("[[0], [10], [20], [30]]" if kind == "map" else "[20]")
    ((path, why),) = plan.skipped
    assert path == folder and "being computed" in why
    computed = (gate / "computed").read_text().split()
    assert len(computed) == expected
    if kind == "map":
        fresh = Gated(gate=str(gate), infra={"folder": root})
        assert list(fresh.values(items)) == [[10 * x] for x in items]
    else:
        assert GatedTask(gate=str(gate), infra={"folder": root}).value(2) == [20]
    assert (gate / "computed").read_text().split() == computed  # (nothing computed again)


def test_a_compaction_makes_no_folder_removed_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node folder removed (renamed away by a removal, or by a legacy rename) after
    compact() looked at it, before it took its lock (or while it waited for a removal's
    hold of it): the lock made the folder again, left there as <uid>/claims/ (no uid.yaml:
    seen by no listing nor cleaning, kept for ever; a probe). Nothing is made: nothing is
    merged there."""
    root = tmp_path / "cache"
    _many_writer_sessions(root, 3)
    folder = folder_of(Ranges(infra={"folder": root}))
    age_index_files(folder)
    assert len(clean.compactable(folder, grace_seconds=0)) == 3
    previewed = clean.compactable

    def then_removed(*args: tp.Any, **kwargs: tp.Any) -> list[str]:
        names = previewed(*args, **kwargs)
        clean.remove_nodes([folder]).execute()  # (another cleaner's)
        return names

    monkeypatch.setattr(clean, "compactable", then_removed)
    assert clean.compact(folder, grace_seconds=0) == (0, 0)
    assert not folder.exists()
    # (what is left: the record of the removal, for explain)
    assert [p.name for p in folder.parent.iterdir()] == [clean.REMOVALS_FILE]


def test_a_removal_leaves_no_claim_where_a_link_of_the_folder_points(tmp_path: Path) -> None:
    """A removal holds each node folder of the folder it removes (its inputs-* ones too)
    with a claim and a lock, taken away with the folder: in an inputs-* folder that is a
    link to a folder elsewhere (moved to another disk), they stayed there once the link
    was deleted (a probe: the node read as being computed by the cleaning process for as
    long as it lived). They are taken away before the deletion."""
    from exca.storage.claims import Claims

    root = tmp_path / "cache"
    down = Total(infra={"folder": root}).total.node(Source(infra={"folder": root}).make.node())
    assert down.result() == 6
    inputs = down.folder
    assert inputs is not None and inputs.name.startswith("inputs-")
    elsewhere = tmp_path / "disk" / inputs.name
    elsewhere.parent.mkdir()
    shutil.move(inputs, elsewhere)
    inputs.symlink_to(elsewhere)
    plan = clean.remove_nodes([inputs.parent])
    plan.execute()
    assert plan.skipped == [] and plan.failed == [] and not inputs.parent.exists()
    assert Claims(elsewhere).current() == []
    assert not (elsewhere / "claims" / ".lock").exists()


@pytest.mark.parametrize("interrupted", [1, 2])
def test_a_ctrl_c_while_a_removal_holds_a_folder_leaves_no_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupted: int
) -> None:
    """A Ctrl-C landing right after a removal put its hold (claims lock and claim) in a
    node folder (the config's, or its inputs-* one): the hold was not known to be there
    yet, and stayed. The folder, kept, read as being computed by the cleaning process
    (a notebook: for as long as it lived), and a map's claimer waited for its lock."""
    from exca.storage import claims as claims_module
    from exca.storage.claims import Claims

    root = tmp_path / "cache"
    down = Total(infra={"folder": root}).total.node(Source(infra={"folder": root}).make.node())
    assert down.result() == 6
    inputs = down.folder
    assert inputs is not None and inputs.name.startswith("inputs-")
    config = inputs.parent
    put = claims_module.FolderHold.put
    calls: list[Path] = []

    def put_then_interrupted(self: tp.Any, folder: Path) -> None:
        put(self, folder)
        calls.append(folder)
        if len(calls) == interrupted:  # (the signal arrives as put returns)
            raise KeyboardInterrupt

    monkeypatch.setattr(claims_module.FolderHold, "put", put_then_interrupted)
    plan = clean.remove_nodes([config])
    with pytest.raises(KeyboardInterrupt):
        plan.execute()
    assert len(calls) == interrupted and config.exists()
    for folder in (config, inputs):
        assert Claims(folder).current() == []
        assert not (folder / "claims" / ".lock").exists()


def test_a_folder_held_by_a_removal_is_not_listed_as_computed(tmp_path: Path) -> None:
    """While a removal (``exca clean``, an infra's cleaning) holds a node folder to rename
    it away, its claim of the task key keeps new claimers out; `exca list` and inspect()
    read it as a computation ("computing", by the cleaning process). A removal's hold is
    not work in progress: the node is listed by what it holds."""
    root = tmp_path / "cache"
    Train(infra={"folder": root}).fit()
    folder = folder_of(Train(infra={"folder": root}))
    with clean.held(folder) as hold:
        assert hold.busy is None
        assert [i.status for i in exca.ops.inspect(root, step="Train")] == ["success"]
        said = cli("list", root, "--json", check=True).stdout
        assert [n["status"] for n in json.loads(said)] == ["success"], said
        assert "computing" not in cli("list", root, check=True).stdout


def test_a_folder_held_by_another_removal_is_kept_as_being_removed(tmp_path: Path) -> None:
    """A cleaning that finds a node folder held by another removal (another `exca clean`,
    an infra's cleaning, update_uids) kept it as "being computed by" that cleaning's
    process: it is being removed or renamed, not computed."""
    root = tmp_path / "cache"
    Train(infra={"folder": root}).fit()
    folder = folder_of(Train(infra={"folder": root}))
    with clean.held(folder):  # (another removal's, as far as the plan below knows)
        plan = clean.remove_nodes(folder)
    assert plan.removals == []
    (reason,) = dict(plan.kept).values()
    assert reason.startswith("being removed or renamed by pid "), reason
    assert "computed" not in reason


def test_the_summary_of_exca_help_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """`exca --help` opens with one line per command (what it takes, what it does): the
    `rename` command was missing from it, only in argparse's list below."""
    from exca.ops.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    choices = out.split("{", 1)[1].split("}", 1)[0].split(",")
    summary = out.split("positional arguments:")[0]
    assert len(choices) >= 7, choices
    missing = [c for c in choices if not re.search(rf"^  {c} ", summary, re.M)]
    assert missing == [], summary


class Placed(pydantic.BaseModel):
    """A config with a field kept out of its uid (where it runs)."""

    lr: float = 0.1
    device: str = "cpu"
    infra: exca.TaskInfra = exca.TaskInfra(version="1")
    _exclude_from_cls_uid = ("device",)

    @infra.apply
    def fit(self) -> float:
        return self.lr


def test_where_on_a_field_excluded_from_the_uid_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`exca list ROOT --where device=cuda` on a field excluded from the uid said "No
    config has a key 'device'" (as for a typo) though every config.yaml holds it: it now
    says the key is not in the uid, which is what --where matches."""
    from exca.ops.cli import main

    root = tmp_path / "cache"
    Placed(lr=0.2, device="cuda", infra={"folder": root}).fit()
    for key in ("device", "infra.cluster"):
        main(["list", str(root), "--where", f"{key}=cuda", "--where", "lrr=1"])
        out = " ".join(capsys.readouterr().out.split())
        assert "No config has a key 'lrr'" in out, out
        assert f"No config has a key '{key}'" not in out, out
        assert f"'{key}' is in the configs' config.yaml but not in their uid" in out, out


def test_list_matching_nothing_reads_each_config_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`exca list ROOT --where KEY=V` matching nothing described the whole cache twice
    (once filtered, then again to say why nothing matched: 2x the reads, seconds on 5k
    configs): each node's uid.yaml and full-uid.yaml are now read once, and it says the
    same."""
    from exca.infra import uidfolder
    from exca.ops.cli import main

    root = tmp_path / "cache"
    for lr in (0.1, 0.2, 0.3):
        Placed(lr=lr, infra={"folder": root}).fit()
    reads: dict[str, int] = {}
    read_text = uidfolder.read_text

    def counted(path: Path) -> str | None:
        reads[Path(path).name] = reads.get(Path(path).name, 0) + 1
        return read_text(path)

    monkeypatch.setattr(uidfolder, "read_text", counted)
    for condition, said in [("lrr=1", "No config has a key 'lrr'"), ("lr=5", "")]:
        reads.clear()
        main(["list", str(root), "--where", condition])
        out = " ".join(capsys.readouterr().out.split())
        assert "No cached node matches --step/--where/--status." in out, out
        assert said in out, out
        assert reads["uid.yaml"] == 3 and reads["full-uid.yaml"] == 3, reads


def test_where_on_a_key_no_config_has_parses_no_config_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`exca list ROOT --where typo=1` parsed every config.yaml of the cache to say that
    none holds 'typo' (seconds on 5k configs): a file whose text does not hold a part of
    the key is no longer parsed; a key spelled otherwise there (an escape, a dotted yaml
    key) is still found."""
    from exca.ops.cli import main

    inspect_module = importlib.import_module("exca.ops.inspect")  # (not exca.ops.inspect())
    root = tmp_path / "cache"
    for lr in (0.1, 0.2, 0.3):
        Placed(lr=lr, infra={"folder": root}).fit()
    parsed: list[str] = []
    read_yaml = inspect_module.read_yaml

    def counted(path: Path, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        parsed.append(Path(path).name)
        return read_yaml(path, *args, **kwargs)

    monkeypatch.setattr(inspect_module, "read_yaml", counted)
    main(["list", str(root), "--where", "typo=1"])
    out = " ".join(capsys.readouterr().out.split())
    assert "No config has a key 'typo'" in out, out
    assert "config.yaml" not in parsed, parsed
    # (keys a hand-edited config.yaml spells otherwise: found, as before)
    config = next(root.glob("*/*/config.yaml"))
    config.write_text(config.read_text() + '"zz\\x71": 1\nopt.beta: 2\n')
    for key in ("zzq", "opt.beta", "opt"):
        main(["list", str(root), "--where", f"{key}=1"])
        out = " ".join(capsys.readouterr().out.split())
        assert f"'{key}' is in the configs' config.yaml but not in their uid" in out, out


def test_list_as_text_makes_no_json_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`exca list ROOT` (text) made the --json record of every node (NodeInfo.to_dict,
    copying each config: a quarter of the time on 5k nodes) and printed none of them:
    made only under --json now, which prints them as before."""
    from exca.ops.cli import main
    from exca.ops.inspect import NodeInfo

    root = tmp_path / "cache"
    for lr in (0.1, 0.2):
        Placed(lr=lr, infra={"folder": root}).fit()
    made: list[str] = []
    to_dict = NodeInfo.to_dict

    def counted(self: NodeInfo) -> dict[str, tp.Any]:
        made.append(self.uid)
        return to_dict(self)

    monkeypatch.setattr(NodeInfo, "to_dict", counted)
    main(["list", str(root)])
    out = capsys.readouterr().out
    assert "(2 config(s))" in out and out.count("success") == 2, out
    assert not made, made
    main(["list", str(root), "--json"])
    listed = json.loads(capsys.readouterr().out)
    assert sorted(node["config"].get("lr", 0.1) for node in listed) == [0.1, 0.2], listed
    assert len(made) == 2, made


class ForcedTask(pydantic.BaseModel):
    x: int = 1
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        return self.x


class ForcedMap(pydantic.BaseModel):
    k: int = 1
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            yield item * self.k


def test_status_and_read_only_calls_free_no_file_of_an_ended_writer(tmp_path: Path) -> None:
    """A task and a map computed, then forced again, each by a process now ended: the
    first writer's index files hold only deleted entries, freed by the next read (after
    two idle checks, reclaim.py). infra.status(), a node's status() and mode='read-only'
    calls removed them, though they only read (a cache one may only read); a plan did not
    (keeping_files). They now leave the cache as it was; a call in the default mode
    frees them."""
    root = tmp_path / "cache"
    for mode in ("cached", "force"):
        run_python(
            f"""
            import test_ops
            infra = {{"folder": {str(root)!r}, "mode": {mode!r}}}
            test_ops.ForcedTask(infra=infra).run()
            list(test_ops.ForcedMap(infra=infra).process([1, 2]))
            """
        )
    long_ago = time.time() - 3600  # (idle for long: see reclaim.MIN_IDLE_SECONDS)
    for path in root.rglob("*"):
        os.utime(path, (long_ago, long_ago), follow_symlinks=False)
    before = _tree(root)
    task = ForcedTask(infra={"folder": root})
    mapper = ForcedMap(infra={"folder": root})
    assert task.infra.status() == "completed"
    assert task.run.node().status() == "completed"
    assert mapper.process.node([1, 2]).status() == "completed"
    assert ForcedTask(infra={"folder": root, "mode": "read-only"}).run() == 1
    assert list(ForcedMap(infra={"folder": root, "mode": "read-only"}).process([1, 2])) == [1, 2]
    assert _tree(root) == before  # (nothing freed)
    assert task.run() == 1 and list(mapper.process([1, 2])) == [1, 2]  # (these free them)
    assert len(_tree(root)) < len(before)


class ForcedOuter(pydantic.BaseModel):
    inner: ForcedTask = ForcedTask()
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def total(self) -> int:
        return self.inner.x * 10


def test_iter_cached_and_a_reuse_check_free_no_file_of_an_ended_writer(tmp_path: Path) -> None:
    """As status() and read-only calls (above): infra.iter_cached() (a listing) and the
    check of a read-only call reusing a result computed under another sub-config version
    read the task's folder through a CacheDict of their own, which freed the index file of
    an ended writer (an index file removed, its folder's mtime changed). They only peek:
    the cache is left as it was."""
    from exca.infra import base as infra_base

    root = tmp_path / "cache"
    for mode in ("cached", "force"):
        run_python(
            f"""
            import test_ops
            infra = {{"folder": {str(root)!r}, "mode": {mode!r}}}
            test_ops.ForcedTask(infra=infra).run()
            test_ops.ForcedOuter(infra=infra).total()
            """
        )
    outer = ForcedOuter(infra={"folder": root}).infra.uid_folder()
    assert outer is not None
    full = outer / "full-uid.yaml"  # (as written by the sub-config's class at version "0")
    older = full.read_text().replace("  infra.version: '1'", "  infra.version: '0'")
    assert older != full.read_text()
    full.write_text(older)
    long_ago = time.time() - 3600  # (idle for long: see reclaim.MIN_IDLE_SECONDS)
    for path in root.rglob("*"):
        os.utime(path, (long_ago, long_ago), follow_symlinks=False)
    before = _tree(root)
    for mode in ("cached", "read-only"):
        listed = ForcedTask(infra={"folder": root, "mode": mode}).infra.iter_cached()
        assert [c.x for c in listed] == [1]
    assert _tree(root) == before  # (nothing freed by the listings)
    infra_base._DEFAULTS_CHECKED.clear()  # (as in a new process: the check is made)
    assert ForcedOuter(infra={"folder": root, "mode": "read-only"}).total() == 10
    assert _tree(root) == before  # (nothing freed by the read-only call's check)


def test_a_copy_of_a_cache_view_that_frees_nothing_frees_nothing(tmp_path: Path) -> None:
    """A CacheDict made to free no file (an inspecting view, a read-only call's) gave
    copies (view(), a pickle sent to a worker, deepcopy) that freed the index files of an
    ended writer again: the setting was set on the instance after it was made, and a copy
    is made from the constructor's arguments."""
    import copy
    import pickle

    from exca.storage.cachedict import CacheDict, inspecting_view

    root = tmp_path / "cache"
    for mode in ("cached", "force"):
        run_python(
            f"""
            import test_ops
            infra = {{"folder": {str(root)!r}, "mode": {mode!r}}}
            list(test_ops.ForcedMap(infra=infra).process([1, 2]))
            """
        )
    folder = ForcedMap(infra={"folder": root}).infra.uid_folder()
    assert folder is not None
    long_ago = time.time() - 3600  # (idle for long: see reclaim.MIN_IDLE_SECONDS)
    for path in root.rglob("*"):
        os.utime(path, (long_ago, long_ago), follow_symlinks=False)
    before = _tree(root)
    view = inspecting_view(folder)
    for copied in (view.view(), pickle.loads(pickle.dumps(view)), copy.deepcopy(view)):
        assert len(copied.keys()) == 2
        assert _tree(root) == before  # (nothing freed)
    assert len(CacheDict(folder).keys()) == 2  # (a plain instance frees them)
    assert len(_tree(root)) < len(before)


class ForcedSum(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def total(self, values: list[int]) -> int:
        return sum(values)


def test_read_only_nodes_write_nothing_in_their_upstream_folders(tmp_path: Path) -> None:
    """Read-only nodes (a map whose items come from a task, a task taking that task's
    output) below an upstream task in the default mode: the upstream was read in its own
    mode, so a read-only call freed its files of an ended writer (computed, then forced
    again by processes now ended: reclaim.py) and wrote back its yaml files removed by
    hand, though the read-only nodes' own folders were left as they were (c42a65c). A
    call of read-only nodes now writes and removes nothing anywhere; a default call
    frees and restores them."""
    root = tmp_path / "cache"
    for mode in ("cached", "force"):
        run_python(
            f"""
            import jobmodels_ops, test_ops
            infra = {{"folder": {str(root)!r}, "mode": {mode!r}}}
            up = jobmodels_ops.Source(infra=infra)
            if {mode!r} == "cached":
                test_ops.ForcedMap(infra=infra).process.node(up.make.node()).result()
                test_ops.ForcedSum(infra=infra).total.node(up.make.node()).result()
            up.make()
            """
        )
    upstream = Source(infra={"folder": root}).infra.uid_folder()
    assert upstream is not None
    (upstream / "uid.yaml").unlink()  # (removed by hand: a call reusing it writes it back)
    long_ago = time.time() - 3600  # (idle for long: see reclaim.MIN_IDLE_SECONDS)
    for path in root.rglob("*"):
        os.utime(path, (long_ago, long_ago), follow_symlinks=False)
    before = _tree(root)
    read_only = {"folder": root, "mode": "read-only"}
    up = Source(infra={"folder": root})
    assert ForcedMap(infra=read_only).process.node(up.make.node()).result() == [0, 1, 2]
    assert ForcedSum(infra=read_only).total.node(up.make.node()).result() == 3
    assert exca.graph.run(ForcedMap(infra=read_only).process.node(up.make.node()))
    assert _tree(root) == before  # (nothing freed, nothing written back)
    assert up.make() == [0, 1, 2]  # (the default mode frees and restores them)
    after = _tree(root)
    assert "uid.yaml" in {Path(p).name for p in set(after) - set(before)}
    assert set(before) - set(after), "no file freed"


def test_read_only_nodes_rename_no_legacy_upstream_folder(tmp_path: Path) -> None:
    """A read-only map fed by an upstream task in the default mode whose cache has its
    legacy (v2) folder name (an older exca's): the call renamed the upstream's folder (and
    its method's other v2-named folders) while building its scheduler, though a call of
    read-only nodes writes, renames and removes nothing. It now leaves every file as it
    was and fails naming the legacy folder (computing the upstream again beside it would
    write); a call in the default mode still renames it and reuses it."""
    root = tmp_path / "cache"
    up = Source(n=4, infra={"folder": root})
    assert ForcedMap(infra={"folder": root}).process.node(up.make.node()).result() == [0, 1, 2, 3]
    folder, legacy_name = up.infra.uid_folder(), up.infra._legacy_name()
    assert folder is not None and legacy_name is not None and legacy_name != folder.name
    legacy = folder.rename(folder.parent / legacy_name)  # (as an older exca named it)
    from exca.infra import base as infra_base

    # (as in a new process: this one saw the method folder missing, made it, and skips
    # the look for v2 names in it; f01f47f)
    infra_base._FOLDERS_MADE_SINCE.clear()
    before = _tree(root)
    read_only = {"folder": root, "mode": "read-only"}
    node = ForcedMap(infra=read_only).process.node(Source(n=4, infra={"folder": root}).make.node())
    with pytest.raises(RuntimeError, match=r"legacy \(v2\) name .*n=4-") as info:
        node.result()
    assert str(legacy) in str(info.value) and "update_uids" in str(info.value)
    with pytest.raises(RuntimeError, match=r"legacy \(v2\) name"):
        exca.graph.run(node)
    assert _tree(root) == before  # (nothing renamed, nothing computed beside it)
    up = Source(n=4, infra={"folder": root})
    assert ForcedMap(infra={"folder": root}).process.node(up.make.node()).result() == [0, 1, 2, 3]
    assert folder.is_dir() and not legacy.exists()  # (the default mode adopts it)
    assert folder.stat().st_ino == before[str(legacy.relative_to(root))][3]  # (renamed)
    assert up.infra.status() == "completed"


def test_cli_config_from_a_pipe_is_read_once(tmp_path: Path) -> None:
    """A --config file was read twice (a probe for an empty file, then the config): one
    from a pipe (``--config <(make_config)``) was empty the second time, and the command
    failed with "not a yaml mapping ... got NoneType" (a slow file was paid twice)."""
    cfg = f"infra:\n  folder: {tmp_path}\nseed: 3\n"
    read, write = os.pipe()
    os.write(write, cfg.encode())
    os.close(write)
    try:
        result = cli("explain", f"{MODELS}:Train.fit", "--config", f"/dev/fd/{read}")
    finally:
        os.close(read)
    assert result.returncode == 0, result.stderr
    assert "seed" in result.stdout or "Nothing to compute" in result.stdout, result.stdout


def test_the_note_of_an_interrupted_big_map_call_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The note of an interrupted map call listed every item uid of the call: for a map
    of millions of items, a JSON of tens of MB, written on Ctrl-C. Past NOTED_KEYS items
    it holds their count, how many were cached, the first uids and a digest of all."""
    flag = tmp_path / "flag"
    flag.touch()
    mapper = InterruptsAtItemWhileFlagged(flag=str(flag), infra={"folder": tmp_path / "cache"})
    with pytest.raises(KeyboardInterrupt):
        list(mapper.run(list(range(100_000))))
    folder = mapper.infra.uid_folder()
    assert folder is not None
    (note,) = (folder / "jobs").glob("*.interrupted")
    assert note.stat().st_size < 20_000  # (every uid: ~0.7 MB; their hashes beside: 0.8)
    (listed,) = exca.ops.inspect(tmp_path / "cache")
    said = (
        "ended on KeyboardInterrupt at item '2', having cached 2 of its 100000 item(s) then "
        "(99998 of the 99998 it left not cached now)"
    )
    assert listed.status == "partial" and said in str(listed.error), listed.error
    # with fewer noted uids: the note goes once a call of the same items finishes them
    monkeypatch.setattr(exca.graph.registry, "NOTED_KEYS", 2)
    with pytest.raises(KeyboardInterrupt):
        list(mapper.run([0, 1, 2, 3]))
    assert len(list((folder / "jobs").glob("*.interrupted"))) == 2
    flag.unlink()
    assert list(mapper.run([0, 1, 2])) == [0, 1, 2]  # (other items: its note stays)
    assert len(list((folder / "jobs").glob("*.interrupted"))) == 2
    assert list(mapper.run([3, 2, 1, 0])) == [3, 2, 1, 0]
    assert [n.name for n in (folder / "jobs").glob("*.interrupted")] == [note.name]


def test_the_note_of_an_interrupted_big_map_call_goes_once_other_calls_compute_its_items(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(seen last session: the note of a call past NOTED_KEYS items went only when a later
    call's items were exactly those it left: finished by a call of more items, or by
    several calls of some, the folder stayed "partial" for good) The note goes once every
    item it left is cached, and not before; `exca list` counts those left."""
    monkeypatch.setattr(exca.graph.registry, "NOTED_KEYS", 5)
    flag = tmp_path / "flag"
    flag.touch()
    mapper = InterruptsAtItemWhileFlagged(flag=str(flag), infra={"folder": tmp_path / "a"})
    with pytest.raises(KeyboardInterrupt):
        list(mapper.run(list(range(20))))  # (18 items left: more than noted)
    folder = mapper.infra.uid_folder()
    assert folder is not None
    flag.unlink()
    assert list(mapper.run(list(range(10)))) == list(range(10))  # (some of them)
    (listed,) = exca.ops.inspect(tmp_path / "a")
    said = "having cached 2 of its 20 item(s) then (10 of the 18 it left not cached now)"
    assert listed.status == "partial" and said in str(listed.error), listed.error
    assert len(list((folder / "jobs").glob("*.interrupted"))) == 1
    assert list(mapper.run(list(range(10, 19)))) == list(range(10, 19))  # (all but one)
    (listed,) = exca.ops.inspect(tmp_path / "a")
    assert "(1 of the 18 it left not cached now)" in str(listed.error), listed.error
    assert list(mapper.run(list(range(15, 30)))) == list(range(15, 30))  # (a superset)
    assert not list((folder / "jobs").iterdir())  # (the note and its hashes)
    (listed,) = exca.ops.inspect(tmp_path / "a")
    assert (listed.status, listed.error) == ("success", None), listed


class WithNans(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    floor: float = float("nan")
    scales: list[float] = [1.0]
    seed: int = 1
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        return self.seed


def test_explain_takes_nan_for_nan(tmp_path: Path) -> None:
    """`exca explain` compared a config with the nearest cached one by Python's !=: a nan
    read back from full-uid.yaml is another object than the config's, so every nan field
    was listed as changed, "floor nan → nan" (and the nearest config could be missed)."""
    WithNans(scales=[float("nan")], infra={"folder": tmp_path}).run()
    node = WithNans(scales=[float("nan")], seed=2, infra={"folder": tmp_path}).run.node()
    (explanation,) = exca.ops.explain(node)
    assert explanation.diff == [("seed", 1, 2)]


def test_the_note_of_an_interrupted_big_map_call_goes_once_its_items_are_computed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(a review: the note of a call past NOTED_KEYS items went only when a later call's
    items were all the call's; a rerun computes only the items it left, so the note stayed
    for ever and `exca list` said the finished folder "partial")"""
    monkeypatch.setattr(exca.graph.registry, "NOTED_KEYS", 5)
    flag = tmp_path / "flag"
    flag.touch()
    mapper = InterruptsAtItemWhileFlagged(flag=str(flag), infra={"folder": tmp_path / "a"})
    with pytest.raises(KeyboardInterrupt):
        list(mapper.run(list(range(10))))  # (8 items left: more than noted)
    folder = mapper.infra.uid_folder()
    assert folder is not None and len(list((folder / "jobs").glob("*.interrupted"))) == 1
    flag.unlink()
    assert list(mapper.run(list(range(10)))) == list(range(10))
    assert not list((folder / "jobs").glob("*.interrupted"))
    (listed,) = exca.ops.inspect(tmp_path / "a")
    assert (listed.status, listed.error) == ("success", None), listed
    # at most NOTED_KEYS items left: all noted, any call caching them removes the note
    monkeypatch.setattr(exca.graph.registry, "NOTED_KEYS", 9)
    flag.touch()
    mapper = InterruptsAtItemWhileFlagged(flag=str(flag), infra={"folder": tmp_path / "b"})
    with pytest.raises(KeyboardInterrupt):
        list(mapper.run(list(range(10))))
    (listed,) = exca.ops.inspect(tmp_path / "b")
    said = "having cached 2 of its 10 item(s) then (8 of the 8 it left not cached now)"
    assert listed.status == "partial" and said in str(listed.error), listed.error
    flag.unlink()
    assert list(mapper.run(list(range(12)))) == list(range(12))
    folder = mapper.infra.uid_folder()
    assert folder is not None and not list((folder / "jobs").glob("*.interrupted"))
    (listed,) = exca.ops.inspect(tmp_path / "b")
    assert (listed.status, listed.error) == ("success", None), listed


def test_list_of_a_node_fed_by_a_dict_of_maps_names_its_failed_input(tmp_path: Path) -> None:
    """(noted last session: a task fed by a dict of map nodes, ``{"a": map_node}``, whose
    map failed (an item's error), listed plain "empty", without the "not computed: its
    input ... failed" note) Covered by e78a8f6's look at each member of a group of inputs
    (fails with the inspect.py before it): kept as a guard for maps in a dict."""
    root = tmp_path / "cache"
    ok = Squares(infra={"folder": root}).square.node([1, 2])
    failing = Squares(offset=1, infra={"folder": root}).square.node([3, -4])
    keyed = Total(infra={"folder": root}).total.node({"a": ok, "b": failing})
    with pytest.raises(Exception, match="negative item -4"):
        exca.graph.run(keyed)
    listed = cli("list", root, check=True).stdout.splitlines()
    (line,) = [line for line in listed if "/inputs-" in line]
    assert line.split()[0] == "empty" and "(not computed: its input 'values'['b'] (" in line, line
    (info,) = exca.ops.inspect(root, step="*Total*")
    assert info.note is not None and info.note.startswith("not computed: its input 'values'['b']")
