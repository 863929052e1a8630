"""Job arrays of TaskInfra configs (SPEC §8) with cluster "local" and cluster None."""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import typing as tp
from pathlib import Path

import pydantic
import pytest
from filelog import wait_until
from jobmodels_job_array import Square
from waiting import waiting_for_jobs

import exca


@pytest.fixture
def ctl(tmp_path: Path) -> tp.Iterator[Path]:
    folder = tmp_path / "ctl"
    folder.mkdir()
    (tmp_path / "cache").mkdir()
    yield folder
    (folder / "block").unlink(missing_ok=True)  # let blocked jobs end, whatever happened


def base(tmp_path: Path, ctl: Path, cluster: str | None, **infra: tp.Any) -> Square:
    return Square(ctl=str(ctl), infra={"folder": tmp_path / "cache", "cluster": cluster, **infra})


def calls(ctl: Path) -> collections.Counter[int]:
    path = ctl / "calls.txt"
    text = path.read_text() if path.exists() else ""
    return collections.Counter(int(x) for x in text.split())


def records(task: Square) -> list[dict[str, tp.Any]]:
    folder = task.infra.uid_folder()
    assert folder is not None
    return [json.loads(p.read_text()) for p in sorted((folder / "jobs").glob("*.json"))]


class Cube(Square):
    """A subclass sharing the decorated method (its own uids: the class name is in them)."""


class Doubled(Square):
    factor: int = 2


# --- what goes in ----------------------------------------------------------------------------
def test_configs_of_sibling_classes_share_an_array(tmp_path: Path, ctl: Path) -> None:
    """Any config of the class defining the method (or of a subclass) may join; anything
    else is refused with a clear error."""
    array_base = Cube(ctl=str(ctl), infra={"folder": tmp_path / "cache"})
    mixed = [
        Cube(x=1, ctl=str(ctl), infra={"folder": tmp_path / "cache"}),
        Doubled(x=2, ctl=str(ctl), infra={"folder": tmp_path / "cache"}),
        Square(x=3, ctl=str(ctl), infra={"folder": tmp_path / "cache"}),
    ]
    with array_base.infra.job_array() as array:
        array.extend(mixed)
    assert [task.process() for task in mixed] == [1, 4, 9]
    assert calls(ctl) == {1: 1, 2: 1, 3: 1}
    refused = pytest.raises(TypeError, match="got dict: append Square")
    with refused, array_base.infra.job_array() as array:
        array.append({"x": 4})
    # a class of the same name defined again (a notebook cell run again): said so
    again = pydantic.create_model("Square", x=(int, 0), __module__=Square.__module__)
    refused = pytest.raises(TypeError, match=r"got Square \(a class Square defined again, e\.g\.")
    with refused, array_base.infra.job_array() as array:
        array.append(again(x=5))


@pytest.mark.parametrize("cluster", [None, "local"])
def test_empty_array(tmp_path: Path, ctl: Path, cluster: str | None) -> None:
    task = base(tmp_path, ctl, cluster)
    with pytest.raises(RuntimeError, match="Nothing was added"), task.infra.job_array():
        pass
    with task.infra.job_array(allow_empty=True) as array:
        assert array == []
    assert calls(ctl) == {}
    # a bad max_workers is refused before the block runs (not after it, nor as a '<' error)
    for bad in (0, "x", None, 1.5):
        entered = []
        with pytest.raises(ValueError, match="max_workers"), task.infra.job_array(max_workers=bad):  # type: ignore[arg-type]
            entered.append(1)
        assert entered == []


@pytest.mark.parametrize("cluster", [None, "local"])
def test_repeated_configs(
    tmp_path: Path, ctl: Path, cluster: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    task = base(tmp_path, ctl, cluster)
    first = task.infra.clone_obj({"x": 3, "infra.timeout_min": 11})
    second = task.infra.clone_obj({"x": 3, "infra.timeout_min": 22})
    with pytest.raises(ValueError) as info, task.infra.job_array() as array:
        array.extend([first, second])
    message = str(info.value)
    assert "x: 3" in message
    assert "timeout_min: 11" in message and "timeout_min: 22" in message  # both configs
    assert calls(ctl) == {}  # nothing submitted
    caplog.set_level(logging.WARNING, logger="exca")
    with task.infra.job_array(allow_repeated_tasks=True) as array:
        array.extend(
            [task.infra.clone_obj(x=3), task.infra.clone_obj(x=4), task.infra.clone_obj(x=3)]
        )
    assert any("repeated" in r.getMessage().lower() for r in caplog.records), caplog.text
    wait_until(lambda: all(t.infra.status() == "completed" for t in array))
    assert [t.process() for t in array] == [9, 16, 9]
    assert calls(ctl) == {3: 1, 4: 1}
    # one config in another folder is another task: sent too (it was dropped as a
    # repeat, then computed by a call in this process; without the flag, refused)
    elsewhere = task.infra.clone_obj({"x": 3, "infra.folder": tmp_path / "elsewhere"})
    with task.infra.job_array() as array:
        array.extend([task.infra.clone_obj(x=3), elsewhere])
    wait_until(lambda: elsewhere.infra.status() == "completed")
    assert elsewhere.process() == 9 and calls(ctl) == {3: 2, 4: 1}


def test_a_config_without_folder_is_refused(tmp_path: Path, ctl: Path) -> None:
    """A config appended without a folder (not made from the array's config): its job
    computed a result kept nowhere, and a call then computed it again. Refused before
    anything is submitted."""
    task = base(tmp_path, ctl, "local")
    with (
        pytest.raises(ValueError, match=r"has no folder .*clone_obj"),
        task.infra.job_array() as array,
    ):
        array.append(task.infra.clone_obj(x=2))
        array.append(Square(ctl=str(ctl), x=3))
    assert calls(ctl) == {}
    assert list((tmp_path / "cache").rglob("jobs")) == []


def test_one_object_appended_twice_is_named(tmp_path: Path, ctl: Path) -> None:
    """Changing one object between appends: the error said "the same config twice" and
    showed two identical yamls."""
    task = base(tmp_path, ctl, None)
    variant = task.infra.clone_obj(x=3)
    error = pytest.raises(ValueError, match="the same object twice")
    with error as info, task.infra.job_array() as array:
        array.append(variant)
        variant.x = 4  # (not frozen yet: it has no uid)
        array.append(variant)
    assert "clone_obj" in str(info.value)
    assert calls(ctl) == {}


def test_an_array_of_cached_configs_reads_no_job_record(
    tmp_path: Path, ctl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before submitting, an array read the job records of every config it was given, to
    tell whose last job could not load its config (842a404), though only the configs it
    submits are told of: an array of 10k configs, all cached, read 10k jobs/ folders
    (~0.3 ms each on a loaded machine) to submit nothing. Now only the configs submitted
    have their records read."""
    from exca.graph import registry

    task = base(tmp_path, ctl, "local")
    with task.infra.job_array() as array:
        array.extend(task.infra.clone_obj(x=x) for x in range(4))
    assert [t.process() for t in array] == [0, 1, 4, 9]
    read: list[Path] = []
    read_all = registry.read_all

    def counted(folder: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        if kwargs.get("refused"):
            read.append(folder)
        return read_all(folder, *args, **kwargs)

    monkeypatch.setattr(registry, "read_all", counted)
    with task.infra.job_array() as again:  # (all cached: nothing submitted)
        again.extend(task.infra.clone_obj(x=x) for x in range(4))
    assert read == []
    with task.infra.job_array() as more:  # (one new config: its records only)
        more.extend(task.infra.clone_obj(x=x) for x in range(5))
    assert read == [more[4].infra.uid_folder()]
    assert more[4].process() == 16 and calls(ctl) == {x: 1 for x in range(5)}


# --- cluster None: computed now, in order --------------------------------------------------
def test_inline_array_computes_in_order(tmp_path: Path, ctl: Path) -> None:
    task = base(tmp_path, ctl, None)
    assert task.infra.clone_obj(x=5).process() == 25  # already cached: not recomputed
    with task.infra.job_array() as array:
        for x in [3, 1, 5, 2]:
            array.append(task.infra.clone_obj(x=x))
        assert calls(ctl) == {5: 1}  # nothing runs before the exit
    order = (ctl / "calls.txt").read_text().split()
    assert order == ["5", "3", "1", "2"]
    assert [t.infra.status() for t in array] == ["completed"] * 4
    assert [t.process() for t in array] == [9, 1, 25, 4]
    assert calls(ctl) == {1: 1, 2: 1, 3: 1, 5: 1}


def test_inline_array_with_failure(tmp_path: Path, ctl: Path) -> None:
    (ctl / "fail-2").touch()
    task = base(tmp_path, ctl, None)
    with task.infra.job_array() as array:
        array.extend(task.infra.clone_obj(x=x) for x in [1, 2, 3])
    assert [t.infra.status() for t in array] == ["completed", "failed", "completed"]
    with pytest.raises(ValueError, match="bad x=2"):
        array[1].process()
    assert calls(ctl) == {1: 1, 2: 1, 3: 1}


# --- cluster local: one array, no waiting ------------------------------------------------
@pytest.mark.timeout(120)
def test_local_array(tmp_path: Path, ctl: Path) -> None:
    task = base(tmp_path, ctl, "local")
    inline = base(tmp_path, ctl, None)
    assert inline.infra.clone_obj(x=1).process() == 1  # 2 of the 5 are cached already
    assert inline.infra.clone_obj(x=3).process() == 9
    (ctl / "block").touch()
    with task.infra.job_array() as array:
        array.extend(task.infra.clone_obj(x=x) for x in range(5))
    # exit did not wait: the jobs are blocked, the results are not there yet
    statuses = [t.infra.status() for t in array]
    assert statuses == ["running", "completed", "running", "completed", "running"]
    submitted = [array[i] for i in (0, 2, 4)]
    recs = [records(t) for t in submitted]
    assert all(len(r) == 1 for r in recs)
    job_ids = {r[0]["job_id"] for r in recs}
    assert len(job_ids) == 3 and all(j.isdigit() for j in job_ids)
    assert len({r[0]["run"] for r in recs}) == 1  # submitted together
    # the logs are in the array infra's log folder
    step = Path(tmp_path / "cache" / task.infra.uid()).parent
    assert all(step in Path(r[0]["logs"]).parents for r in recs)
    for i in (1, 3):  # cached: not resubmitted
        folder = array[i].infra.uid_folder()
        assert folder is not None and not (folder / "jobs").exists()
    (ctl / "block").unlink()
    # the results become available without anybody waiting on the jobs
    wait_until(lambda: all(t.infra.status() == "completed" for t in array))
    assert [t.process() for t in array] == [0, 1, 4, 9, 16]
    assert [t.infra.job().result() for t in array] == [0, 1, 4, 9, 16]
    assert calls(ctl) == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}
    assert [t.infra.status() for t in array] == ["completed"] * 5
    # a fresh instance reads the results, and a new array submits nothing
    with task.infra.job_array() as again:
        again.extend(task.infra.clone_obj(x=x) for x in range(5))
    assert [t.process() for t in again] == [0, 1, 4, 9, 16]
    assert calls(ctl) == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}
    assert all(len(records(t)) == 1 for t in submitted)


@pytest.mark.timeout(120)
def test_local_array_does_not_resubmit_running_jobs(
    tmp_path: Path, ctl: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """(the array says it does not submit them again: it said "waiting for it", and did
    not wait)"""
    import submitit.core.core

    # submitit waits 15 s for a result pickle each time exca asks how a dead job ended
    monkeypatch.setattr(submitit.core.core.Job, "_results_timeout_s", 1)
    task = base(tmp_path, ctl, "local")
    (ctl / "block").touch()
    with task.infra.job_array() as array:
        array.extend(task.infra.clone_obj(x=x) for x in range(2))
    wait_until(lambda: sum(calls(ctl).values()) == 2)  # both jobs are computing
    with caplog.at_level(logging.INFO, logger="exca"), task.infra.job_array() as again:
        again.extend(task.infra.clone_obj(x=x) for x in range(3))  # (2 running)
    said = [r.getMessage() for r in caplog.records if "computed elsewhere" in r.getMessage()]
    assert len(said) == 2 and all(m.endswith(": not submitted again") for m in said), said
    wait_until(lambda: sum(calls(ctl).values()) == 3)
    assert [t.infra.status() for t in again] == ["running"] * 3
    (ctl / "block").unlink()
    wait_until(lambda: all(t.infra.status() != "running" for t in again))
    assert [t.infra.status() for t in again] == ["completed"] * 3
    assert [t.process() for t in again] == [0, 1, 4]
    assert calls(ctl) == {0: 1, 1: 1, 2: 1}
    assert [len(records(t)) for t in again] == [1, 1, 1]


# --- modes on the array infra --------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", [None, "local"])
def test_force_array_resubmits_then_reverts(tmp_path: Path, ctl: Path, cluster: str | None) -> None:
    cached = base(tmp_path, ctl, None)
    assert [cached.infra.clone_obj(x=x).process() for x in range(3)] == [0, 1, 4]
    forced = base(tmp_path, ctl, cluster, mode="force")
    with forced.infra.job_array() as array:
        array.extend(forced.infra.clone_obj(x=x) for x in range(3))
    wait_until(lambda: calls(ctl) == {0: 2, 1: 2, 2: 2})
    wait_until(lambda: all(t.infra.status() == "completed" for t in array))
    assert [t.process() for t in array] == [0, 1, 4]
    # the array infra and the tasks are back to cached: nothing is forced again
    assert [forced.infra.mode, *(t.infra.mode for t in array)] == ["cached"] * 4
    with forced.infra.job_array() as again:
        again.extend(cached.infra.clone_obj(x=x) for x in range(3))
    assert [t.process() for t in again] == [0, 1, 4]
    assert all(t.infra.status() == "completed" for t in again)
    assert calls(ctl) == {0: 2, 1: 2, 2: 2}
    # ... also for new clones of the forced base
    with forced.infra.job_array() as third:
        third.extend(forced.infra.clone_obj(x=x) for x in range(3))
    assert [t.process() for t in third] == [0, 1, 4]
    assert calls(ctl) == {0: 2, 1: 2, 2: 2}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["force", "retry"])
def test_forced_or_retried_array_never_shows_the_old_outcome(
    tmp_path: Path, ctl: Path, mode: str
) -> None:
    (ctl / "fail-1").touch()
    cached = base(tmp_path, ctl, None)
    assert cached.infra.clone_obj(x=0).process() == 0
    with pytest.raises(ValueError, match="bad x=1"):
        cached.infra.clone_obj(x=1).process()
    (ctl / "fail-1").unlink()
    (ctl / "block").touch()  # the jobs start and wait
    array_infra = base(tmp_path, ctl, "local", mode=mode)
    with array_infra.infra.job_array() as array:
        array.extend(array_infra.infra.clone_obj(x=x) for x in range(2))
    # force replaces both results, retry the error only: until their jobs end, the tasks
    # show them running (not the old result or error), and a new instance waits for them
    expected = ["running", "running"] if mode == "force" else ["completed", "running"]
    assert [t.infra.status() for t in array] == expected
    fresh = base(tmp_path, ctl, None).infra.clone_obj(x=1)
    assert fresh.infra.status() == "running"
    (ctl / "block").unlink()
    assert fresh.process() == 1
    assert [t.infra.job().result() for t in array] == [0, 1]
    assert calls(ctl) == ({0: 2, 1: 2} if mode == "force" else {0: 1, 1: 2})


def job_ended(task: Square) -> bool:
    """The recorded jobs of a task have exited (gone, or a zombie nobody reaped yet)."""
    for record in records(task):
        stat = Path(f"/proc/{record['job_id']}/stat")
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            return False
    return True


@pytest.mark.timeout(120)
def test_an_array_says_how_many_configs_have_a_cached_error(
    tmp_path: Path, ctl: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sweep rerun after failures says why it leaves the failed configs out, and what
    recomputes them (it submitted nothing and said nothing about them)."""
    for x in (1, 2):
        (ctl / f"fail-{x}").touch()
    task = base(tmp_path, ctl, None)
    for x in (1, 2):
        with pytest.raises(ValueError):
            task.infra.clone_obj(x=x).process()
    with caplog.at_level(logging.INFO, logger="exca"), task.infra.job_array() as array:
        array.extend(task.infra.clone_obj(x=x) for x in range(3))
    assert [t.infra.status() for t in array] == ["completed", "failed", "failed"]
    (said,) = [r for r in caplog.records if "failed before" in r.getMessage()]
    assert said.getMessage().startswith("Job array: 2 config(s) failed before")
    assert "use mode='retry' to recompute" in said.getMessage()
    assert said.levelno == logging.INFO  # (as the lines on configs computed elsewhere)


@pytest.mark.parametrize("cluster", [None, "local"])
def test_retry_array_resubmits_failed_only(tmp_path: Path, ctl: Path, cluster: str | None) -> None:
    (ctl / "fail-1").touch()
    task = base(tmp_path, ctl, cluster)
    with task.infra.job_array() as array:
        array.extend(task.infra.clone_obj(x=x) for x in range(3))
    wait_until(lambda: [t.infra.status() for t in array] == ["completed", "failed", "completed"])
    # mode cached: a failed task is not resubmitted
    with task.infra.job_array() as again:
        again.extend(task.infra.clone_obj(x=x) for x in range(3))
    assert again[1].infra.status() == "failed"
    assert calls(ctl) == {0: 1, 1: 1, 2: 1}
    if cluster == "local":  # the failed job is over (see the next test for when it is not)
        wait_until(lambda: job_ended(array[1]))
    (ctl / "fail-1").unlink()
    retry = base(tmp_path, ctl, cluster, mode="retry")
    with retry.infra.job_array() as array:
        array.extend(retry.infra.clone_obj(x=x) for x in range(3))
    wait_until(lambda: calls(ctl) == {0: 1, 1: 2, 2: 1})
    wait_until(lambda: all(t.infra.status() == "completed" for t in array))
    assert [t.process() for t in array] == [0, 1, 4]
    assert calls(ctl) == {0: 1, 1: 2, 2: 1}
    # back to cached: a new array on the same infra resubmits nothing
    (ctl / "fail-1").touch()
    with retry.infra.job_array() as again:
        again.extend(task.infra.clone_obj(x=x) for x in range(3))
    assert [t.process() for t in again] == [0, 1, 4]
    assert calls(ctl) == {0: 1, 1: 2, 2: 1}


@pytest.mark.timeout(120)
def test_retry_array_right_after_a_failure(tmp_path: Path, ctl: Path) -> None:
    (ctl / "fail-1").touch()
    task = Square(
        ctl=str(ctl), linger=3.0, infra={"folder": tmp_path / "cache", "cluster": "local"}
    )
    with task.infra.job_array() as array:
        array.extend(task.infra.clone_obj(x=x) for x in range(2))
    wait_until(lambda: [t.infra.status() for t in array] == ["completed", "failed"])
    (ctl / "fail-1").unlink()
    retry = task.infra.clone_obj({"infra.mode": "retry"})
    with retry.infra.job_array() as again:
        again.extend(retry.infra.clone_obj(x=x) for x in range(2))
    wait_until(lambda: calls(ctl) == {0: 1, 1: 2})
    wait_until(lambda: all(t.infra.status() == "completed" for t in again))
    assert [t.process() for t in again] == [0, 1]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cluster", [None, "debug"])
def test_the_array_infras_retry_applies_to_tasks_in_mode_cached(
    tmp_path: Path, ctl: Path, cluster: str | None
) -> None:
    """The array infra's mode decides, whatever the tasks' own mode (here cached)."""
    (ctl / "fail-1").touch()
    task = base(tmp_path, ctl, None)
    with base(tmp_path, ctl, cluster).infra.job_array() as array:
        array.extend(task.infra.clone_obj(x=x) for x in range(2))
    assert [t.infra.status() for t in array] == ["completed", "failed"]
    (ctl / "fail-1").unlink()
    with base(tmp_path, ctl, cluster, mode="retry").infra.job_array() as again:
        again.extend(task.infra.clone_obj(x=x) for x in range(2))
    assert [t.infra.status() for t in again] == ["completed", "completed"]
    assert calls(ctl) == {0: 1, 1: 2}


class Source(pydantic.BaseModel):
    n: int = 0
    fail_flag: str = ""  # fails while this file exists
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def prepare(self) -> int:
        if self.n == 1 or (self.fail_flag and Path(self.fail_flag).exists()):
            raise ValueError(f"source {self.n} fails")
        return self.n


class Consumer(pydantic.BaseModel):
    source: Source = Source()
    x: int = 0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        return self.source.prepare() + 100 * self.x


@pytest.mark.parametrize("cluster", [None, "local"])
def test_a_failing_sub_config_fails_only_its_tasks(
    tmp_path: Path, cluster: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """A task whose chained sub-config fails: the other tasks of the array are computed
    (submitted), and the exit raises nothing (the array was lost, cluster=None); it logs
    which configs it did not submit, and why (their status stays "not submitted")."""
    base = Consumer(
        source={"infra": {"folder": tmp_path}}, infra={"folder": tmp_path, "cluster": cluster}
    )
    tasks = [base.infra.clone_obj({"source.n": n, "x": n}) for n in (0, 1, 2)]
    with caplog.at_level("WARNING", logger="exca"), base.infra.job_array() as array:
        array.extend(tasks)
    (logged,) = [r.getMessage() for r in caplog.records if "not submitted" in r.getMessage()]
    source_uid = tasks[1].source.infra.uid()
    assert logged == (
        f"Job array: 1 config(s) not submitted:\n  - {tasks[1].infra.uid()}: upstream "
        f"{source_uid} fails (cached error (ValueError: source 1 fails); mode='retry' on "
        "that upstream config's own infra computes it again)"
    )
    assert [t.infra.job().result() for t in (tasks[0], tasks[2])] == [0, 202]
    with pytest.raises(ValueError, match="source 1 fails"):
        tasks[1].infra.job().result()


def test_an_array_waiting_for_its_configs_sub_config_job_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The configs' sub-config computed first in a job of its own: leaving the block
    waited for that job (queued and run: on a busy cluster, hours) without a word, where
    the block "does not wait". It says what it waits for, and how not to."""
    local = {"folder": tmp_path, "cluster": "local"}
    base = Consumer(source={"n": 5, "infra": local}, infra=local)
    with caplog.at_level("INFO", logger="exca"), base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(x=x) for x in (1, 2))
    said = [r.getMessage() for r in caplog.records if "Computing first" in r.getMessage()]
    assert len(said) == 1, said
    assert f"(1 node(s), e.g. {base.source.infra.uid()} on local)" in said[0]
    assert "cluster=None" in said[0]
    assert [t.infra.job().result() for t in array] == [105, 205]


class Sized(pydantic.BaseModel):
    x: int = 0
    size: int = 32
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return self.x * self.size


def test_an_array_logs_the_configs_cached_with_other_defaults(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A config whose result was cached with another class default: not submitted (it
    fails, as its direct call does), and the block's exit said nothing about it."""
    assert Sized(infra={"folder": tmp_path}).process() == 0

    class Sized2(pydantic.BaseModel):  # today's class: another default
        x: int = 0
        size: int = 64
        infra: exca.TaskInfra = exca.TaskInfra(version="1")

        @infra.apply
        def process(self) -> int:
            return self.x * self.size

    Sized2.__name__ = Sized2.__qualname__ = "Sized"  # (the same step folder)
    base = Sized2(infra={"folder": tmp_path})
    with caplog.at_level("WARNING", logger="exca"), base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(x=x) for x in (0, 1))
    (logged,) = [r.getMessage() for r in caplog.records if "not submitted" in r.getMessage()]
    assert f"1 config(s) not submitted:\n  - {array[0].infra.uid()}: cached with other" in logged
    assert "Default size=64 seems incompatible" in logged
    assert array[1].process() == 64


def test_an_array_logs_nothing_about_configs_with_their_own_cached_error(
    tmp_path: Path, ctl: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """(they are "failed", not "not submitted": the log spoke of them too; a review)"""
    (ctl / "fail-1").touch()
    task = base(tmp_path, ctl, None)
    with pytest.raises(ValueError):
        task.infra.clone_obj(x=1).process()
    with caplog.at_level("WARNING", logger="exca"), task.infra.job_array() as array:
        array.extend(task.infra.clone_obj(x=x) for x in range(2))
    assert [t.infra.status() for t in array] == ["completed", "failed"]
    assert not [r for r in caplog.records if "not submitted" in r.getMessage()]


def test_a_forced_array_keeps_the_results_it_could_not_recompute(tmp_path: Path) -> None:
    """mode force, the forced sub-config of a task fails: that task is not submitted, and
    its cached result stays (it was removed as if a job were replacing it)."""
    flag = tmp_path / "fail"
    source = {"fail_flag": str(flag), "infra": {"folder": tmp_path}}
    base = Consumer(source=source, infra={"folder": tmp_path, "cluster": "local"})
    task = base.infra.clone_obj({"source.n": 3, "x": 1})
    assert task.run() == 103
    flag.touch()
    forced = Consumer(
        source={**source, "infra": {"folder": tmp_path, "mode": "force"}},
        infra={"folder": tmp_path, "cluster": "local", "mode": "force"},
    )
    with forced.infra.job_array() as array:
        array.append(forced.infra.clone_obj({"source.n": 3, "x": 1}))
    assert base.infra.clone_obj({"source.n": 3, "x": 1}).infra.status() == "completed"
    assert base.infra.clone_obj({"source.n": 3, "x": 1}).run() == 103


@pytest.mark.timeout(120)
def test_a_local_array_of_more_jobs_than_cpus_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every local job is a process of this machine, all started at once (an array of 300
    configs: 600 processes, 165 s on 2 cores, where cluster=None took 0.4 s): said so.
    At once indeed: submitit spaced them by 0.2 s (30 configs waited 6 s to start), a
    pause meant for a scheduler, which local jobs do not have."""
    import submitit.core.core as submitit_core

    slept: list[float] = []

    class Clock:  # (submitit's time module, its pauses recorded)
        def __getattr__(self, name: str) -> tp.Any:
            return getattr(time, name)

        def sleep(self, seconds: float) -> None:
            slept.append(seconds)
            time.sleep(seconds)

    monkeypatch.setattr(submitit_core, "_time", Clock())
    monkeypatch.setattr("exca.graph.executors.usable_cpus", lambda: 2)
    base = Square(ctl=str(tmp_path), infra={"folder": tmp_path / "cache", "cluster": "local"})
    configs = [base.infra.clone_obj(x=x) for x in range(3)]
    with caplog.at_level(logging.INFO, logger="exca"), base.infra.job_array() as array:
        array.extend(configs)
    assert slept == []
    assert "3 local jobs computing at once on this machine (2 CPUs)" in caplog.text
    assert [config.infra.job().result() for config in configs] == [0, 1, 4]


def _slot_locks(path: Path, slots: int) -> tuple[int, int]:
    """How many processes hold a slot of a throttled local array's slots file, and how many
    wait for one (their lock on the byte after the slots, see localslots), from /proc/locks."""
    inode = f":{path.stat().st_ino}"
    held = waiting = 0
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()  # (n: POSIX ADVISORY READ|WRITE pid dev:inode start end)
        if len(fields) >= 8 and fields[1] == "POSIX" and fields[5].endswith(inode):
            if fields[6] == str(slots):
                waiting += 1
            elif int(fields[6]) < slots:
                held += 1
    return held, waiting


@pytest.mark.timeout(120)
@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="no /proc/locks to see the slots")
def test_a_local_array_computes_at_most_max_workers_configs_at_once(
    tmp_path: Path, ctl: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """job_array(max_workers=2) of 4 configs with cluster="local": the 4 jobs computed at
    once (a 40-config sweep, 40 processes computing on a 2-core laptop): max_workers was
    Slurm's throttle only. Now 2 compute while the others wait for one of them to end; the
    results are the same, each computed once."""
    from exca.graph import localslots

    slots = tmp_path / "slots"  # (the array's slots file, where its jobs' locks are seen)
    monkeypatch.setattr(localslots, "new_slots_file", lambda: str(slots))
    (ctl / "block").touch()
    array_base = base(tmp_path, ctl, "local")
    tasks = [array_base.infra.clone_obj(x=x) for x in range(4)]
    with (
        caplog.at_level(logging.WARNING, logger="exca"),
        array_base.infra.job_array(max_workers=2) as array,
    ):
        array.extend(tasks)
    stderrs = [Path(t.infra.job().paths.stderr) for t in tasks]
    wait_until(lambda: all(path.exists() for path in stderrs))  # (every job's process started)
    wait_until(lambda: sum(calls(ctl).values()) == 2)
    # (the 2 others wait for a slot the 2 computing hold)
    wait_until(lambda: slots.exists() and _slot_locks(slots, 2) == (2, 2))
    assert sum(calls(ctl).values()) == 2
    assert [t.infra.status() for t in tasks] == ["running"] * 4
    _unblock_and_check_each_ran_once(ctl, tasks)
    assert "local jobs computing at once" not in caplog.text  # (2 jobs, 2 CPUs)


def test_an_interrupted_array_submission_names_the_jobs_left_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A Ctrl-C landing while a Slurm array is submitted raised a bare KeyboardInterrupt:
    the jobs sbatch had queued stayed queued, and nothing said so. (The interruption is
    simulated after a submission recorded its handle: no cluster is needed to check the
    message.)"""
    from exca.graph import executors, scheduler

    def interrupted(self: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        self.start()
        handle = executors.DoneHandle(job_id="4242_0")
        handle.cluster = "slurm"
        next(iter(self.runs.values())).handles.append(handle)
        raise KeyboardInterrupt

    monkeypatch.setattr(scheduler.Scheduler, "submit", interrupted)
    base = Square(ctl=str(tmp_path), infra={"folder": tmp_path / "cache", "cluster": "local"})
    with pytest.raises(KeyboardInterrupt), base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(x=x) for x in range(2))
    assert "Job array interrupted: job(s) 4242, submitted before the interruption" in caplog.text


def _blocked_local_array(tmp_path: Path, ctl: Path) -> tuple[list[Square], list[str]]:
    """Four tasks sent as one local job_array(), each blocked until the flag `ctl/block`
    goes; the tasks and their job ids."""
    (ctl / "block").touch()
    base = Square(ctl=str(ctl), infra={"folder": tmp_path / "cache", "cluster": "local"})
    tasks = [base.infra.clone_obj(x=x) for x in range(4)]
    with base.infra.job_array() as array:
        array.extend(tasks)
    return tasks, [t.infra.job().job_id for t in tasks]


def _unblock_and_check_each_ran_once(ctl: Path, tasks: list[Square]) -> None:
    """The array's jobs let go: each ends with its result, none cancelled, none computed
    again."""
    (ctl / "block").unlink()
    wait_until(lambda: all(t.infra.status() == "completed" for t in tasks))
    assert [t.process() for t in tasks] == [0, 1, 4, 9]
    assert calls(ctl) == {0: 1, 1: 1, 2: 1, 3: 1}


def _signal_once_all_run(ctl: Path, signum: int, waiting: threading.Event) -> threading.Thread:
    """A thread that sends ``signum`` to this process once the four jobs of
    ``_blocked_local_array`` run and the call waits for its own (``waiting``)."""

    def send() -> None:
        wait_until(lambda: sum(calls(ctl).values()) == 4)  # (all running)
        wait_until(waiting.is_set)
        signal.raise_signal(signum)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


@pytest.mark.timeout(120)
def test_ctrl_c_waiting_for_one_job_of_an_array_says_the_others_keep_running(
    tmp_path: Path, ctl: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C while a call waits for one local job of a job_array(): the message named
    that job only ("keep running"), not the array's other jobs, which nothing cancels
    either: they are named too, and they do run to their end."""
    import signal

    tasks, ids = _blocked_local_array(tmp_path, ctl)

    waiting = waiting_for_jobs(monkeypatch)
    thread = _signal_once_all_run(ctl, signal.SIGINT, waiting)  # (the user's Ctrl-C)
    with caplog.at_level(logging.WARNING, logger="exca"), pytest.raises(KeyboardInterrupt):
        tasks[0].process()
    thread.join()
    assert f"Interrupted: job(s) {ids[0]} keep running" in caplog.text
    others = ", ".join(sorted(ids[1:]))
    told = f"the 3 other job(s) of the same job_array(), not ended yet, keep running too: {others}"
    assert told in caplog.text
    assert [t.infra.status() for t in tasks] == ["running"] * 4  # (what it says)
    _unblock_and_check_each_ran_once(ctl, tasks)


@pytest.mark.timeout(120)
def test_another_error_stopping_a_wait_for_an_array_job_says_it_keeps_running(
    tmp_path: Path, ctl: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error raised in the caller while a call waits for a local job (a signal
    handler's: an alarm's TimeoutError, a SIGTERM's sys.exit), not a Ctrl-C: the job runs
    on, as before, but nothing said so; the error now says it (its note and the log), and
    the job does end with its result, computed once."""
    import signal

    tasks, ids = _blocked_local_array(tmp_path, ctl)

    def give_up(*_: tp.Any) -> None:
        raise TimeoutError("the caller gave up")

    previous = signal.signal(signal.SIGUSR1, give_up)
    try:
        thread = _signal_once_all_run(ctl, signal.SIGUSR1, waiting_for_jobs(monkeypatch))
        with caplog.at_level(logging.WARNING, logger="exca"), pytest.raises(TimeoutError) as raised:
            tasks[0].process()
        thread.join()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    said = f"job(s) {ids[0]} keep running: this error stops no job"
    assert any(said in note for note in raised.value.__notes__)
    assert said in caplog.text
    assert [t.infra.status() for t in tasks] == ["running"] * 4  # (what it says)
    _unblock_and_check_each_ran_once(ctl, tasks)


@pytest.mark.timeout(120)
def test_ctrl_c_in_another_process_waiting_for_one_job_of_an_array_names_the_others(
    tmp_path: Path, ctl: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, from another process (same configs): it knows the job it follows from
    its record only, and named that one alone, while the submitter names the array's
    other jobs. It now names them too, from their records (the same run of the same
    process, in the step's other configs), those not ended yet; they do run on."""
    import signal

    from exca.graph import scheduler

    tasks, ids = _blocked_local_array(tmp_path, ctl)
    scheduler._ARRAY_JOBS.clear()  # (what another process knows: not this memo)
    wait_until(lambda: sum(calls(ctl).values()) == 4)  # (all running)

    waiting = waiting_for_jobs(monkeypatch)

    def interrupt_once_waiting() -> None:
        wait_until(waiting.is_set)  # (the call waits for its job)
        signal.raise_signal(signal.SIGINT)  # (the user's Ctrl-C)

    thread = threading.Thread(target=interrupt_once_waiting)
    thread.start()
    other = Square(ctl=str(ctl), x=0, infra={"folder": tmp_path / "cache", "cluster": "local"})
    with caplog.at_level(logging.WARNING, logger="exca"), pytest.raises(KeyboardInterrupt):
        other.process()
    thread.join()
    assert f"Interrupted: job(s) {ids[0]} keep running" in caplog.text
    others = ", ".join(sorted(ids[1:]))
    told = (
        "the 3 other local job(s) submitted along with them by another call (a "
        f"job_array()?), not ended yet, keep running too: {others}"
    )
    assert told in caplog.text, caplog.text
    _unblock_and_check_each_ran_once(ctl, tasks)


def test_ctrl_c_following_a_slurm_array_element_of_another_process_names_its_array(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A Slurm array element's id (``123_4``) names its array: interrupted while following
    one another process submitted, the call said only "job(s) 123_4 keep running"; it now
    names the array, whose other elements run on too, and the scancel stopping them all."""
    from exca.graph import scheduler

    with caplog.at_level(logging.WARNING, logger="exca"):
        scheduler._log_foreign_siblings([], ["123_4", "77"])
    told = (
        "job(s) 123_4 are elements of Slurm job array(s) 123, submitted by another call: "
        "the array's other jobs keep running too (scancel 123 stops all of them)"
    )
    assert told in caplog.text, caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="exca"):
        scheduler._log_foreign_siblings([], ["77"])  # (no array: nothing more to say)
    assert not caplog.text


class _Fit(pydantic.BaseModel):
    lr: float = 0.1
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self, features: list[float]) -> float:
        return self.lr * sum(features)


def test_job_array_of_a_method_taking_inputs_is_refused(tmp_path: Path) -> None:
    """job() refused it, job_array() sent each config's job, which called the method
    without its inputs and cached the TypeError as its result (a probe): refused before
    the block runs; nothing written."""
    base = _Fit(infra={"folder": tmp_path, "cluster": "local"})
    refused = pytest.raises(TypeError, match=r"takes inputs \['features'\].*job_array\(\)")
    with refused, base.infra.job_array() as array:
        array.extend(base.infra.clone_obj(lr=lr) for lr in (0.2, 0.3))
    assert not list(tmp_path.iterdir())
    assert base.fit.node([1.0, 2.0]).uid and base.fit([1.0, 2.0]) == pytest.approx(0.3)


@pytest.mark.timeout(120)
def test_retry_array_while_the_failed_worker_still_holds_its_claim(
    tmp_path: Path, ctl: Path
) -> None:
    """The error cached, its worker's claim not released yet (a process winding down):
    a retry array saw the live claim, "waited" for it, and being sent without waiting,
    never retried (seen once in CI under load)."""
    from exca.graph.node import TASK_KEY
    from exca.storage.claims import Claims

    (ctl / "fail-1").touch()
    failing = base(tmp_path, ctl, None).infra.clone_obj(x=1)
    with pytest.raises(ValueError, match="bad x=1"):
        failing.process()
    (ctl / "fail-1").unlink()
    folder = failing.infra.uid_folder()
    assert folder is not None
    held, release = threading.Event(), threading.Event()

    def hold_the_claim() -> None:  # (as the failed worker, still alive)
        with Claims(folder).claim_one(TASK_KEY):
            held.set()
            release.wait(timeout=60)

    holder = threading.Thread(target=hold_the_claim)
    holder.start()
    try:
        held.wait(timeout=30)
        retry = base(tmp_path, ctl, "local", mode="retry")
        with retry.infra.job_array() as again:
            again.append(retry.infra.clone_obj(x=1))
    finally:
        release.set()
        holder.join(timeout=30)
    wait_until(lambda: calls(ctl) == {1: 2})
    wait_until(lambda: again[0].infra.status() == "completed")
    assert again[0].process() == 1


def test_a_script_waiting_for_its_local_array_leaves_no_template_folder(tmp_path: Path) -> None:
    """A script sending a local job_array() and then calling its configs (a sweep,
    examples/job_array.py) left submitit's empty literal ``%j`` folder beside the jobs' log
    folders at its exit: the calls wait on the cache, not on the submission's handles, the
    only ones that dropped it. The process now drops it as it exits, its jobs started."""
    script = tmp_path / "sweep.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import pydantic
            import exca

            class Train(pydantic.BaseModel):
                x: int = 0
                infra: exca.TaskInfra = exca.TaskInfra(version="1")

                @infra.apply
                def fit(self) -> int:
                    return 10 * self.x

            if __name__ == "__main__":
                base = Train(infra={{"folder": {str(tmp_path / "cache")!r}, "cluster": "local"}})
                with base.infra.job_array() as array:
                    array.extend(base.infra.clone_obj(x=x) for x in (1, 2, 3))
                print([train.fit() for train in array])
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(Path(exca.__file__).parents[1])}
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "[10, 20, 30]", out.stderr
    (logs,) = (tmp_path / "cache").glob("*/logs/*")  # .../logs/<user>
    names = sorted(p.name for p in logs.iterdir())
    assert len(names) == 3 and all(n.isdigit() for n in names), names  # no "%j"
