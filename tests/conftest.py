"""Shared test setup: jobs can import test modules; the Slurm cluster fixture and marker."""

from __future__ import annotations

import os
import signal
import typing as tp
from pathlib import Path

import pytest

from slurm_cluster import *  # noqa: F403  (fixtures: slurm_cluster; helpers)

TESTS = Path(__file__).resolve().parent
# submitted jobs (local subprocesses, Slurm) import the classes of test modules by name
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p
)
os.environ.setdefault("EXCA_PROGRESS", "0")
# A suite started in the background by a script (`make test &`, nohup) inherits SIGINT
# ignored: Python then raises no KeyboardInterrupt, nor do the processes it starts (an
# ignored signal stays ignored across exec), and every Ctrl-C test fails. Handled here,
# children get the default action back, and Python its KeyboardInterrupt.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config, "workerinput"):  # (once, in the process that starts the workers)
        _compile_the_code_jobs_import()
        _rewrite_the_test_modules(config)


def _compile_the_code_jobs_import() -> None:
    """Write the bytecode of exca and of the test modules. Each job of the suite (local
    process, Slurm job, CLI call) is a fresh interpreter importing both: where
    PYTHONDONTWRITEBYTECODE is set, as on the CI machines, every one of those ~1000
    processes compiled ~60k lines from source (~0.3 s of CPU each). Stale files only are
    compiled; a job still compiles any module newer than its bytecode."""
    import compileall

    import exca

    for folder in (Path(exca.__file__).parent, TESTS):
        compileall.compile_dir(folder, quiet=1)


def _rewrite_the_test_modules(config: pytest.Config) -> None:
    """Write pytest's bytecode of the test modules a run with xdist workers collects (their
    asserts rewritten), before the workers start. Where PYTHONDONTWRITEBYTECODE is set,
    pytest rewrites and compiles each test module it imports but keeps nothing, and every
    worker imports them all: ~20 s of CPU per worker for the whole suite (`pytest
    --collect-only tests/`: 28 CPU-s, 7 with the files written). Pytest reads them
    whatever that setting; stale ones only are written. (Private helpers of pytest: if they
    change, pytest rewrites in each worker, as before.)"""
    if not config.getoption("numprocesses", None) or config.getoption("assertmode") != "rewrite":
        return
    try:
        from _pytest.assertion import rewrite

        state = config.stash[rewrite.assertstate_key]
        for source in [TESTS / "conftest.py", *_test_modules(config)]:
            cached = rewrite.get_cache_dir(source) / (source.name[:-3] + rewrite.PYC_TAIL)
            if rewrite._read_pyc(source, cached) is None and rewrite.try_makedirs(cached.parent):
                stat, code = rewrite._rewrite_test(source, config)
                rewrite._write_pyc(state, code, stat, cached)
    except (ImportError, AttributeError, KeyError, TypeError):
        return


def _test_modules(config: pytest.Config) -> list[Path]:
    """The test modules of tests/ named by the run's arguments (files, node ids, folders)."""
    found: set[Path] = set()
    for arg in config.args:
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if path.is_dir() and (path == TESTS or TESTS.is_relative_to(path)):
            found.update(TESTS.glob("test_*.py"))
        elif path.parent == TESTS and path.name.startswith("test_") and path.suffix == ".py":
            found.add(path)
    return sorted(found)


@pytest.fixture(autouse=True)
def _ctrl_c_handler_given_back() -> tp.Iterator[None]:
    """Fail a test that leaves the main thread's SIGINT handler changed (exca holding
    Ctrl-C back for good: a user's next Ctrl-C does nothing), where it happens, not in
    a later Ctrl-C test; the handler is put back for the others."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        pytest.fail(f"the test left the SIGINT handler changed: {after!r}, was {before!r}")


@pytest.fixture(autouse=True)
def _claim_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short heartbeats so that takeover tests do not wait a minute."""
    monkeypatch.setenv("EXCA_CLAIM_HEARTBEAT_S", os.environ.get("EXCA_CLAIM_HEARTBEAT_S", "2"))


# Slurm tests: a wait on jobs looks at them at least every 0.2 s (exca's default backs off to
# 2 s, not to load users' clusters): a job ending 0.1 s after a look was seen up to 1.9 s
# late, ~1 s on average, for each of the ~900 waits of the Slurm tests (they run in turn).
# Measured, job.result() returned 0.26 s (mean) after the job's end with 0.5 s, 0.13 s with
# 0.2 s. (squeue and sacct keep their own rates: a look mostly reads files.)
SLURM_TEST_POLL_MAX_S = 0.2
# A wait notices a job that left the queue without its result (cancelled, killed) in two
# looks at squeue, QUEUE_LOOK_S apart (5 s: one squeue per array, not to load users'
# clusters): 1 s here. And submitit then waits 15 s for the result pickle such a job never
# wrote, each time exca asks how it ended: 1 s is enough on this machine's disk.
SLURM_TEST_QUEUE_LOOK_S = 1.0
SLURM_TEST_RESULTS_TIMEOUT_S = 1


@pytest.fixture(autouse=True)
def _quick_job_polls(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("slurm") is not None:
        import submitit.core.core

        import exca.graph.registry
        import exca.graph.scheduler

        monkeypatch.setattr(exca.graph.scheduler, "POLL_MAX", SLURM_TEST_POLL_MAX_S)
        monkeypatch.setattr(exca.graph.registry, "QUEUE_LOOK_S", SLURM_TEST_QUEUE_LOOK_S)
        monkeypatch.setattr(
            submitit.core.core.Job, "_results_timeout_s", SLURM_TEST_RESULTS_TIMEOUT_S
        )


@pytest.hookimpl(tryfirst=True)  # (before xdist's, which reads the groups)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    add_slurm_fixture(items)  # noqa: F405
    # `make test` runs three pytest workers (-n 3 --dist loadgroup): the Slurm tests all go
    # to one of them, in turn, as without workers (one cluster; some count its jobs)
    for item in items:
        if item.get_closest_marker("slurm") is not None:
            item.add_marker(pytest.mark.xdist_group("slurm"))
