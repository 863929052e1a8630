"""exca.helpers (SPEC §6): with_infra, to_config_model/to_config, validate_kwargs,
update_uids and DiscriminatedModel."""

from __future__ import annotations

import collections
import inspect
import json
import os
import pickle
import sys
import time
import typing as tp
import warnings
from pathlib import Path

import numpy as np
import pydantic
import pytest
import yaml
from fake_squeue import counting_squeue

from exca import ConfDict, TaskInfra, helpers
from exca.helpers import DiscriminatedModel

MODULE = __name__
CALLS: list[tuple[str, tp.Any]] = []


# --- with_infra -------------------------------------------------------------------------------
def _add(a: int, b: int = 2) -> int:
    CALLS.append(("add", (a, b)))
    return a + b


def test_with_infra(tmp_path: Path) -> None:
    add = helpers.with_infra(folder=tmp_path)(_add)
    assert isinstance(add, helpers.FunctionWithInfra)
    before = len(CALLS)
    assert add(a=1) == 3
    assert add(a=1) == 3
    assert add(a=1, b=2) == 3  # same config: explicit default
    assert len(CALLS) == before + 1
    assert add(a=1, b=5) == 6
    assert len(CALLS) == before + 2
    # cached on disk: another decorated function object reads it
    assert helpers.with_infra(folder=tmp_path)(_add)(a=1) == 3
    assert len(CALLS) == before + 2
    with pytest.raises(RuntimeError, match="keyword"):
        add(1)


def test_with_infra_called_positionally_shows_the_call_by_keyword(tmp_path: Path) -> None:
    """`noise(2, 3)` of a function decorated by with_infra raised "call it with keyword
    arguments only": the user had to look up the parameter names. The error now writes
    the call with them (positional arguments that do not bind: as before)."""
    add = helpers.with_infra(folder=tmp_path)(_add)
    before = len(CALLS)
    with pytest.raises(RuntimeError, match=r"keyword arguments only: _add\(a=1, b=5\)$"):
        add(1, 5)
    with pytest.raises(RuntimeError, match=r"keyword arguments only: _add\(a=1, b=4\)$"):
        add(1, b=4)
    with pytest.raises(RuntimeError, match=r"keyword arguments only$"):
        add(1, 2, 3)  # (one too many: no call to show)
    assert len(CALLS) == before  # (nothing computed)


def test_with_infra_force_recomputes_every_call(tmp_path: Path) -> None:
    """mode="force" on a function: every call computes (a config kept per arguments
    forced only the first call of the process)."""
    add = helpers.with_infra(folder=tmp_path, mode="force")(_add)
    before = len(CALLS)
    assert add(a=4) == 6 and add(a=4) == 6
    assert len(CALLS) == before + 2
    assert helpers.with_infra(folder=tmp_path)(_add)(a=4) == 6  # cached for the others
    assert len(CALLS) == before + 2


def _describe(x: bool | int | tuple[bool | int, ...]) -> str:
    return f"{type(x).__name__}:{x!r}"


def test_with_infra_tells_true_from_1(tmp_path: Path) -> None:
    """Equal for a dict key (True == 1), but two configs with two uids."""
    describe = helpers.with_infra(folder=tmp_path)(_describe)
    assert describe(x=1) == "int:1"
    assert describe(x=True) == "bool:True"
    assert describe(x=(1,)) == "tuple:(1,)"
    assert describe(x=(True,)) == "tuple:(True,)"


def test_with_infra_config(tmp_path: Path) -> None:
    add = helpers.with_infra(folder=tmp_path, mode="force")(_add)
    config = add.config(a=3)
    assert isinstance(config, helpers.FuncConfig)
    assert config.a == 3 and config.b == 2  # type: ignore[attr-defined]
    assert config.infra.folder == tmp_path  # type: ignore[attr-defined]
    assert config.infra.mode == "force"  # type: ignore[attr-defined]
    assert config.infra.version == "1"  # type: ignore[attr-defined]
    uid = config.infra.uid()  # type: ignore[attr-defined]
    assert uid == f"{MODULE}._add_FuncConfig.build,1/{ConfDict(a=3).to_uid()}"
    assert config.build() == 5
    with pytest.raises(pydantic.ValidationError):
        add.config(a=3, unknown=4)


class _Audio:
    @staticmethod
    def load(n: int) -> str:
        return f"audio{n}"


class _Video:
    @staticmethod
    def load(n: int) -> str:
        return f"video{n}"


def test_with_infra_methods_of_one_name_in_two_classes_do_not_share_a_folder(
    tmp_path: Path,
) -> None:
    """Audio.load and Video.load shared the folder <module>.load_FuncConfig.build,1: the
    second returned the first's results (a probe). A module's function keeps its name."""
    audio = helpers.with_infra(folder=tmp_path)(_Audio.load)
    video = helpers.with_infra(folder=tmp_path)(_Video.load)
    assert (audio(n=1), video(n=1)) == ("audio1", "video1")
    assert video.config(n=1).infra.uid().startswith(f"{MODULE}._Video.load_FuncConfig.build,1/")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{MODULE}._Audio.load_FuncConfig.build,1",
        f"{MODULE}._Video.load_FuncConfig.build,1",
    ]

    # classes made in a function too (a review); a function made in one keeps its name
    def classes() -> tuple[tp.Any, tp.Any]:
        class Audio:
            @staticmethod
            def load(n: int) -> str:
                return f"local audio{n}"

        class Video:
            @staticmethod
            def load(n: int) -> str:
                return f"local video{n}"

        return Audio.load, Video.load

    local = tmp_path / "local"
    audio, video = (helpers.with_infra(folder=local)(f) for f in classes())
    assert (audio(n=1), video(n=1)) == ("local audio1", "local video1")
    assert sorted(p.name for p in local.iterdir()) == [
        f"{MODULE}.Audio.load_FuncConfig.build,1",
        f"{MODULE}.Video.load_FuncConfig.build,1",
    ]


def test_with_infra_default_changed_says_what_to_do_for_a_function(tmp_path: Path) -> None:
    """A parameter's default changed since the cache was written: the error spoke of a
    class default and of _exclude_from_cls_uid, which a function cannot use (a probe)."""

    def smooth(n: int, window: int = 3) -> int:
        return n * window

    assert helpers.with_infra(folder=tmp_path)(smooth)(n=10) == 30

    def smooth(n: int, window: int = 50) -> int:  # type: ignore[no-redef]  # (edited)
        return n * window

    edited = helpers.with_infra(folder=tmp_path)(smooth)
    with pytest.raises(RuntimeError, match="Default window=50") as info:
        edited(n=10)
    message = str(info.value)
    assert "parameter 'window' changed" in message and "new version=" in message
    assert "_exclude_from_cls_uid" not in message


def test_with_infra_warns_without_folder_and_cluster(tmp_path: Path) -> None:
    with pytest.warns(UserWarning):
        add = helpers.with_infra()(_add)
    assert add(a=2) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        helpers.with_infra(folder=tmp_path)(_add)
        helpers.with_infra(folder=tmp_path, cluster="local")(_add)


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # no folder nor cluster: warns (tested above)

    @helpers.with_infra(keep_in_ram=True)
    def module_level_square(x: int) -> int:
        CALLS.append(("square", x))
        return x * x


def test_with_infra_picklable() -> None:
    restored = pickle.loads(pickle.dumps(module_level_square))
    assert restored(x=3) == 9
    assert restored is module_level_square  # pickled by name


def test_function_configs_pickle(tmp_path: Path) -> None:
    """A config of to_config / to_config_model / with_infra(...).config pickled (to a
    process pool, a DataLoader's workers...): its class, made from the function, is no
    attribute of the function's module, and pickle refused it ('attribute lookup
    _add_FuncConfig on ... failed'). It is made again
    from the function (by name, or the with_infra function decorating it); a cached
    result is read back, not computed."""
    config = helpers.to_config(_add, a=3, infra={"folder": tmp_path})
    assert config.build() == 5
    before = len(CALLS)
    restored = pickle.loads(pickle.dumps(config))
    assert type(restored) is type(config) and restored.a == 3 and restored.b == 2
    assert restored.infra.folder == tmp_path and restored.build() == 5
    assert len(CALLS) == before  # read from the cache
    model = helpers.to_config_model(_add)
    assert pickle.loads(pickle.dumps(model(a=1, b=1))).build() == 2
    wrapped = helpers.with_infra(folder=tmp_path)(_add).config(a=7)
    assert pickle.loads(pickle.dumps(wrapped)).infra.folder == tmp_path
    # the module attribute is the decorated function: it carries the config
    square = pickle.loads(pickle.dumps(module_level_square.config(x=4)))
    assert square.x == 4 and square.infra.keep_in_ram and square.build() == 16


def test_with_infra_picklable_by_value(tmp_path: Path) -> None:
    add = helpers.with_infra(folder=tmp_path)(_add)  # not the module attribute: by value
    restored = pickle.loads(pickle.dumps(add))
    assert isinstance(restored, helpers.FunctionWithInfra)
    assert restored(a=4) == 6
    assert restored.infra == {"folder": tmp_path}


def _scaler(factor: int) -> tp.Callable[..., tp.Any]:
    def scaled(x: int) -> int:
        return x * factor

    return scaled


def _other_scaled() -> tp.Callable[..., tp.Any]:
    def scaled(x: int) -> int:
        return x + 100

    return scaled


def test_with_infra_warns_when_another_function_takes_the_same_folder(tmp_path: Path) -> None:
    """Closures made in a loop, or a notebook cell edited and run again: same name, so the
    same cache folder; the second definition is told it reads the first one's results."""
    double = helpers.with_infra(folder=tmp_path)(_scaler(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = helpers.with_infra(folder=tmp_path)(_scaler(2))  # equal captured value: fine
    assert double(x=5) == same(x=5) == 10
    with pytest.warns(UserWarning, match=r"scaled_FuncConfig.build,1.*version"):
        triple = helpers.with_infra(folder=tmp_path)(_scaler(3))
    assert triple(x=5) == 10  # what the warning is about: the first definition's result
    with pytest.warns(UserWarning, match="another body"):
        helpers.with_infra(folder=tmp_path)(_other_scaled())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        own = helpers.with_infra(folder=tmp_path, version="2")(_scaler(3))  # the remedy
        assert own(x=5) == 15
        elsewhere = helpers.with_infra(folder=tmp_path / "other")(_scaler(4))  # nothing shared
        assert elsewhere(x=5) == 20


def test_with_infra_warns_when_a_global_it_reads_changed_between_definitions(
    tmp_path: Path,
) -> None:
    """A notebook loop decorating a function once per value of a global it reads got the
    first value's results for the others, without a warning (a probe)."""
    namespace: dict[str, tp.Any] = {"helpers": helpers, "folder": tmp_path}
    source = "@helpers.with_infra(folder=folder)\ndef noise(a: int) -> int:\n    return a * k\n"
    namespace["k"] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(source, namespace)
        assert namespace["noise"](a=3) == 3
        exec(source, namespace)  # (the same value: fine)
    namespace["k"] = 2
    with pytest.warns(UserWarning, match="read from its module's globals"):
        exec(source, namespace)
    assert namespace["noise"](a=3) == 3  # (what the warning is about: k=1's result)
    # attribute names are not globals; NaN is the same value (review)
    other = (
        "@helpers.with_infra(folder=folder)\n"
        "def load(path: str, scale: float = 1.0) -> str:\n"
        "    return Path(path).name + str(scale * t)\n"
    )
    namespace.update(Path=Path, name="run1", t=float("nan"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec(other, namespace)
        namespace["name"] = "run2"
        exec(other, namespace)


# --- to_config_model / to_config --------------------------------------------------------------
def _train(lr: float, layers: int = 3, name: str = "net") -> str:
    CALLS.append(("train", (lr, layers, name)))
    return f"{name}-{layers}-{lr}"


def _no_annotation(x, y: int = 1) -> int:  # type: ignore[no-untyped-def]
    return y


def _any_annotation(x: tp.Any) -> int:
    return 1


def _infra_param(infra: int) -> int:
    return infra


def test_to_config_model() -> None:
    model = helpers.to_config_model(_train)
    assert issubclass(model, helpers.FuncConfig)
    assert model.__name__ == "_train_FuncConfig"
    assert set(model.model_fields) == {"lr", "layers", "name", "infra"}
    assert model.model_fields["lr"].is_required()
    assert model.model_fields["layers"].default == 3
    assert model.model_fields["lr"].annotation is float
    infra = model.model_fields["infra"].default
    assert isinstance(infra, TaskInfra) and infra.version == "1"
    assert helpers.to_config_model(_train) is model  # built once
    with pytest.raises(pydantic.ValidationError):
        model(lr="not a float")  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError):
        model()  # type: ignore[call-arg]


def _build_param(build: int) -> int:
    return build


def _model_param(model_config: int) -> int:
    return model_config


def _private_param(_x: int) -> int:
    return _x


def _var_params(*values: int, **named: int) -> int:
    return 0


def _positional_only(a: int, /, b: int = 1) -> int:  # (every call failed, cached so)
    return a + b


@pytest.mark.parametrize(
    "func", [_no_annotation, _any_annotation, _infra_param, _var_params, _positional_only]
)
def test_to_config_model_refusals(func: tp.Callable[..., tp.Any]) -> None:
    expected = (
        rf"{func.__name__}.*(precise type annotation|named 'infra'|\*args/\*\*kwargs|"
        "positional-only parameter 'a')"
    )
    with pytest.raises(ValueError, match=expected):
        helpers.to_config_model(func)
    with pytest.raises(ValueError, match=expected):  # (at decoration, not at the first call)
        helpers.with_infra(folder="unused")(func)


@pytest.mark.parametrize("func", [_infra_param, _build_param, _model_param, _private_param])
def test_reserved_parameter_names_are_refused_by_name(func: tp.Callable[..., tp.Any]) -> None:
    name = next(iter(inspect.signature(func).parameters))
    with pytest.raises(ValueError, match=f"parameter named '{name}'.*rename it"):
        helpers.with_infra(folder="unused")(func)(**{name: 1})


def test_to_config_build_cached(tmp_path: Path) -> None:
    config = helpers.to_config(_train, lr=0.5, infra={"folder": tmp_path})
    assert isinstance(config, helpers.to_config_model(_train))
    before = len(CALLS)
    assert config.build() == "net-3-0.5"
    assert config.build() == "net-3-0.5"
    assert helpers.to_config(_train, lr=0.5, infra={"folder": tmp_path}).build() == "net-3-0.5"
    assert len(CALLS) == before + 1
    cfg = config.infra.config()  # type: ignore[attr-defined]
    assert cfg == {"lr": 0.5, "layers": 3, "name": "net", "infra": {"version": "1"}}
    folder = config.infra.uid_folder()  # type: ignore[attr-defined]
    assert folder is not None and (folder / "uid.yaml").exists()


# --- validate_kwargs -------------------------------------------------------------------------
def test_validate_kwargs() -> None:
    helpers.validate_kwargs(_train, {"lr": 0.1})
    helpers.validate_kwargs(_train, {"lr": 1, "layers": 2, "name": "x"})  # int for float is fine
    with pytest.raises(ValueError, match="layerz"):
        helpers.validate_kwargs(_train, {"lr": 0.1, "layerz": 2})
    with pytest.raises(ValueError, match="lr"):
        helpers.validate_kwargs(_train, {"layers": 2})
    with pytest.raises(TypeError, match="layers"):
        helpers.validate_kwargs(_train, {"lr": 0.1, "layers": "two"})

    def with_kwargs(a: int, **kwargs: tp.Any) -> None:
        pass

    helpers.validate_kwargs(with_kwargs, {"a": 1, "anything": 2})


# --- update_uids ------------------------------------------------------------------------------
def _legacy_folder(root: Path, config: dict[str, tp.Any]) -> Path:
    cfg = ConfDict(config)
    folder = root / "mymod.Task.process,1" / cfg.to_uid(version=2)
    folder.mkdir(parents=True)
    cfg.to_yaml(folder / "uid.yaml")
    (folder / "payload.txt").write_text("data")
    return folder


def test_update_uids_of_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a folder"):  # (a typo: not "nothing to do")
        helpers.update_uids(tmp_path / "typo")


def test_update_uids(tmp_path: Path) -> None:
    config = {"training": {"optim": {"lr": 0.01}}, "name": "a b"}
    legacy = _legacy_folder(tmp_path, config)
    v3_name = ConfDict(config).to_uid()
    assert legacy.name != v3_name
    # a folder already named in v3 is left alone
    current = tmp_path / "mymod.Task.process,1" / ConfDict(x=1).to_uid()
    current.mkdir()
    ConfDict(x=1).to_yaml(current / "uid.yaml")
    renames = helpers.update_uids(tmp_path, dryrun=True)
    assert [(old, new.name) for old, new in renames] == [(legacy, v3_name)]
    assert legacy.exists()  # dry run: nothing renamed
    renames = helpers.update_uids(tmp_path, dryrun=False)
    assert [(old, new.name) for old, new in renames] == [(legacy, v3_name)]
    assert not legacy.exists()
    moved = legacy.with_name(v3_name)
    assert (moved / "payload.txt").read_text() == "data"
    assert current.exists()
    assert helpers.update_uids(tmp_path, dryrun=False) == []


def test_update_uids_of_processes_renaming_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Processes meeting a legacy cache at once (the jobs of an array, after an upgrade)
    each rename its folders: one renaming a folder another had just renamed stopped with
    FileNotFoundError (its call failed). A folder renamed meanwhile is skipped."""
    config = {"training": {"optim": {"lr": 0.01}}}
    legacy = _legacy_folder(tmp_path, config)
    other = _legacy_folder(tmp_path, {"name": "b"})
    rename = os.rename

    def another_process_first(source: tp.Any, target: tp.Any) -> None:
        if Path(source) == legacy:
            rename(source, target)  # (the other process's rename)
        rename(source, target)

    monkeypatch.setattr(os, "rename", another_process_first)
    renames = helpers.update_uids(tmp_path, dryrun=False)
    assert [old for old, _ in renames] == [other]  # (what this one renamed)
    moved = legacy.with_name(ConfDict(config).to_uid())
    assert (moved / "payload.txt").read_text() == "data" and not legacy.exists()
    assert other.with_name(ConfDict({"name": "b"}).to_uid()).is_dir()


class GatedV2(pydantic.BaseModel):
    """A task noting each computation in ``<gate>/computed``; it touches ``<gate>/started``
    and waits for ``<gate>/go`` (a nested field: its v2 and v3 names differ)."""

    gate: str
    opts: dict[str, int] = {"a": 1}
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def value(self) -> int:
        gate = Path(self.gate)
        with (gate / "computed").open("a") as handle:
            handle.write("x\n")
        (gate / "started").touch()
        deadline = time.monotonic() + 60
        while not (gate / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        return 7


def test_update_uids_leaves_a_folder_being_computed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A process still naming folders in v2 (CONFDICT_UID_VERSION=2: an older exca's job)
    computing a task: update_uids renamed its folder under it (claims ignored); its result
    went into a folder made again under the v2 name, without its yaml files (seen by no
    listing, renamed by no later update), and the v3 name computed it again (a real
    process, paused by files). A folder being computed is left, with a warning, and
    renamed by an update once it is done: its result is read, not computed again."""
    import subprocess

    root, gate = tmp_path / "cache", tmp_path / "gate"
    gate.mkdir()
    code = f"""
import test_helpers
print(test_helpers.GatedV2(gate={str(gate)!r}, opts={{"a": 2}}, infra={{"folder": {str(root)!r}}}).value())
"""
    env = dict(os.environ, CONFDICT_UID_VERSION="2")
    worker = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (gate / "started").exists():
            assert worker.poll() is None and time.monotonic() < deadline, worker.communicate()
            time.sleep(0.02)
        (legacy,) = root.glob("*GatedV2*/*")
        with caplog.at_level("WARNING", logger="exca"):
            assert helpers.update_uids(root, dryrun=False) == []
        assert "Not renaming" in caplog.text and "being computed" in caplog.text
        assert legacy.is_dir() and (legacy / "uid.yaml").is_file()
    finally:
        (gate / "go").touch()
        out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert out.strip() == "7"
    ((_, moved),) = helpers.update_uids(root, dryrun=False)  # (done: renamed now)
    config = GatedV2(gate=str(gate), opts={"a": 2}, infra={"folder": root})
    assert moved == config.infra.uid_folder() and not legacy.exists()
    assert config.value() == 7
    assert (gate / "computed").read_text().count("x") == 1  # (not computed again)
    assert [p.name for p in root.glob("*GatedV2*/*")] == [moved.name]


def test_update_uids_looks_at_the_slurm_queue_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """update_uids checked each folder holding Slurm job records for a job still queued
    or running with an squeue call of its own (500 such folders: 7x the time). The queue
    is looked at once for the jobs of every folder to rename; a folder whose job runs is
    still left, with a warning, and a job recorded after that look (submitted meanwhile)
    is looked up when met, not taken for ended."""
    from exca.graph import registry

    root = tmp_path / "cache"
    folders = [_legacy_folder(root, {"training": {"optim": {"lr": i}}}) for i in range(6)]

    def record(folder: Path, job_id: str, into: Path | None = None) -> None:
        logs = str(root / "logs" / job_id)
        job = registry.JobRecord(job_id, "slurm", logs, time.time(), folder=str(folder))
        registry.write(into or folder, job, link=False)

    for i, folder in enumerate(folders[:5]):
        record(folder, str(101 + i))
    staged = tmp_path / "staged"  # (the record of a job of the last folder, submitted
    record(folders[5], "106", into=staged)  # right after the first look at the queue)
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    move = (staged / registry.JOBS_DIR, folders[5] / registry.JOBS_DIR)
    calls = counting_squeue(bin_folder, running={"103", "106"}, move=move)
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    with caplog.at_level("WARNING", logger="exca"):
        renames = helpers.update_uids(root, dryrun=False)
    assert sorted(old for old, _ in renames) == sorted(folders[i] for i in (0, 1, 3, 4))
    assert folders[2].is_dir() and folders[5].is_dir()  # (their jobs run: left)
    assert "Not renaming" in caplog.text and "job 103 is queued or running" in caplog.text
    assert "job 106 is queued or running" in caplog.text
    # one call for the jobs known at first, one for the job recorded since
    asked = calls.read_text().splitlines()
    assert len(asked) == 2, asked
    assert asked[0].endswith("-j 101,102,103,104,105") and asked[1].endswith("-j 106")


def test_the_queue_of_a_cache_with_many_slurm_jobs_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ids of 20,000 recorded jobs went to squeue (and sacct) in one argument, past
    Linux's 128 kB limit for one: squeue could not run, and every job read as queued (an
    `exca list` of a large cache said them all running, a cleaning left them all)."""
    from exca.graph import registry

    calls = counting_squeue(tmp_path, running={"1000007", "1019999"})
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    job_ids = [str(1_000_000 + i) for i in range(20_000)]
    assert registry.queued_jobs(job_ids) == {"1000007", "1019999"}
    assert len(calls.read_text().splitlines()) == 20


def test_update_uids_finds_folders_at_any_depth_and_changes_nothing_in_a_dry_run(
    tmp_path: Path,
) -> None:
    root = tmp_path / "project" / "cache"
    legacy = _legacy_folder(root, {"training": {"optim": {"lr": 0.01}}})
    broken = root / "mymod.Task.process,1" / "broken"
    broken.mkdir()
    (broken / "uid.yaml").write_text("{not: [yaml")
    for start in (root, root / "mymod.Task.process,1", tmp_path):  # root, method, parent
        assert [old for old, _ in helpers.update_uids(start)] == [legacy]
    assert (broken / "uid.yaml").read_text() == "{not: [yaml"  # a dry run removes nothing


def test_update_uids_golden_example(tmp_path: Path) -> None:
    legacy = _legacy_folder(tmp_path, {"training.optim.lr": 0.01})
    assert legacy.name == "training.optim.lr=0.01-346ce994"
    helpers.update_uids(tmp_path, dryrun=False)
    assert (legacy.parent / "training.optim.lr=0.01-0f8936b4" / "uid.yaml").exists()


def test_update_uids_then_infra_finds_cache(tmp_path: Path) -> None:
    class Legacy(pydantic.BaseModel):
        lr: float = 0.1
        infra: TaskInfra = TaskInfra(version="1")

        @infra.apply
        def process(self) -> float:
            return self.lr

    obj = Legacy(lr=0.01, infra={"folder": tmp_path})
    folder = obj.infra.uid_folder()
    assert folder is not None
    cfg = obj.infra.config(uid=True, exclude_defaults=True)
    legacy = folder.with_name(cfg.to_uid(version=2))
    legacy.mkdir(parents=True)
    cfg.to_yaml(legacy / "uid.yaml")
    helpers.update_uids(tmp_path, dryrun=False)
    assert folder.exists() and not legacy.exists()
    assert yaml.safe_load((folder / "uid.yaml").read_text()) == {"lr": 0.01}


class _Legacy(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    lr: float = 0.1
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> float:
        _LEGACY_CALLS.append(self.lr)
        return 2 * self.lr


_LEGACY_CALLS: list[float] = []


def test_a_v2_named_cache_is_renamed_and_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache written with v2 uids (an older exca) is found by a v3 config: its method
    folder is migrated (update_uids) instead of computing again."""
    monkeypatch.setenv("CONFDICT_UID_VERSION", "2")
    old = _Legacy(lr=0.2, infra={"folder": tmp_path})
    assert old.process() == 0.4
    v2_folder = old.infra.uid_folder()
    monkeypatch.delenv("CONFDICT_UID_VERSION")
    new = _Legacy(lr=0.2, infra={"folder": tmp_path})
    assert new.process() == 0.4 and _LEGACY_CALLS.count(0.2) == 1  # read, not computed again
    assert new.infra.uid_folder() != v2_folder and new.infra.status() == "completed"
    assert v2_folder is not None and not v2_folder.exists()


class _LegacyDefault(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    lr: float = 0.1
    steps: int = 10
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> float:
        _LEGACY_CALLS.append(self.lr)
        return 3 * self.lr


def test_a_v2_named_cache_made_with_another_default_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call renames a v2-named cache, then checks the class defaults it was made with
    (its full-uid.yaml) as for any cache: a default changed since is refused."""
    monkeypatch.setenv("CONFDICT_UID_VERSION", "2")
    old = _LegacyDefault(lr=0.07, infra={"folder": tmp_path})
    assert old.process() == pytest.approx(0.21)
    v2_folder = old.infra.uid_folder()
    assert v2_folder is not None
    full = v2_folder / "full-uid.yaml"
    assert "steps: 10" in full.read_text()
    full.write_text(full.read_text().replace("steps: 10", "steps: 11"))  # (then the default)
    monkeypatch.delenv("CONFDICT_UID_VERSION")
    new = _LegacyDefault(lr=0.07, infra={"folder": tmp_path})
    with pytest.raises(RuntimeError, match="steps"):
        new.process()
    assert not v2_folder.exists() and _LEGACY_CALLS.count(0.07) == 1  # renamed, not computed


def test_read_only_commands_leave_a_v2_named_cache_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`exca plan` / `explain` / `check` never write: they name the legacy folder they
    found instead of renaming it (a run renames it)."""
    from exca.ops.cli import main

    monkeypatch.setenv("CONFDICT_UID_VERSION", "2")
    old = _Legacy(lr=0.3, infra={"folder": tmp_path})
    assert old.process() == 0.6
    v2_folder = old.infra.uid_folder()
    assert v2_folder is not None
    monkeypatch.delenv("CONFDICT_UID_VERSION")
    target = f"{__name__}:_Legacy.process"
    for command in ("plan", "explain", "check"):
        caplog.clear()
        assert main([command, target, f"infra.folder={tmp_path}", "lr=0.3"]) == 0
        assert f"legacy (v2) name {v2_folder.name}, which a read-only command" in caplog.text
        assert v2_folder.exists()
    new = _Legacy(lr=0.3, infra={"folder": tmp_path})
    assert new.process() == 0.6 and _LEGACY_CALLS.count(0.3) == 1  # renamed by the run
    assert not v2_folder.exists()


def test_dry_runs_in_python_leave_a_v2_named_cache_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Building a node renamed it: exca.graph.plan, exca.ops.explain, node.status() and
    infra.status() too (mode read-only included), though they only read. A run renames."""
    import exca.graph
    import exca.ops

    monkeypatch.setenv("CONFDICT_UID_VERSION", "2")
    old = _Legacy(lr=0.4, infra={"folder": tmp_path})
    assert old.process() == 0.8
    v2_folder = old.infra.uid_folder()
    assert v2_folder is not None
    monkeypatch.delenv("CONFDICT_UID_VERSION")

    def config(mode: str = "cached") -> _Legacy:
        return _Legacy(lr=0.4, infra={"folder": tmp_path, "mode": mode})

    caplog.clear()
    (entry,) = exca.graph.plan(config().process.node()).entries
    assert entry.status == "missing"  # (as the CLI's plan says: its warning tells why)
    assert f"legacy (v2) name {v2_folder.name}, which a read-only command" in caplog.text
    exca.ops.explain(config().process.node())
    assert config().process.node().status() == "not submitted"
    assert config().infra.status() == "not submitted"
    exca.graph.plan(config("read-only").process.node())
    assert v2_folder.exists()
    exca.graph.run(config().process.node())  # a run renames it, and reads the result
    assert not v2_folder.exists() and _LEGACY_CALLS.count(0.4) == 1
    assert config().process() == 0.8 and config().infra.status() == "completed"


@pytest.mark.parametrize("how", ["clear_job", "node.clear"])
def test_clearing_a_v2_named_cache_clears_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """(once building a node no longer renamed it, a clear removed nothing: the next call
    renamed the legacy folder and returned the old result)"""
    lr = {"clear_job": 0.5, "node.clear": 0.6}[how]
    monkeypatch.setenv("CONFDICT_UID_VERSION", "2")
    assert _Legacy(lr=lr, infra={"folder": tmp_path}).process() == 2 * lr
    monkeypatch.delenv("CONFDICT_UID_VERSION")
    config = _Legacy(lr=lr, infra={"folder": tmp_path})
    if how == "clear_job":
        config.infra.clear_job()
    else:
        config.process.node().clear()
    assert _Legacy(lr=lr, infra={"folder": tmp_path}).process() == 2 * lr
    assert _LEGACY_CALLS.count(lr) == 2  # computed again


def test_read_only_calls_leave_a_v2_named_cache_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A call in mode read-only renamed the legacy folders of the method (update_uids),
    though that mode never writes: it leaves them, and its error names the legacy folder
    and how to rename it. A call in another mode renames it then."""
    import exca.graph

    monkeypatch.setenv("CONFDICT_UID_VERSION", "2")
    assert _Legacy(lr=0.7, infra={"folder": tmp_path}).process() == pytest.approx(1.4)
    other = _Legacy(lr=0.8, infra={"folder": tmp_path})
    assert other.process() == pytest.approx(1.6)
    v2_folder, v2_other = (
        _Legacy(lr=0.7, infra={"folder": tmp_path}).infra.uid_folder(),
        (other.infra.uid_folder()),
    )
    assert v2_folder is not None and v2_other is not None
    monkeypatch.delenv("CONFDICT_UID_VERSION")
    before = sorted(p.name for p in v2_folder.parent.iterdir())

    def read_only() -> _Legacy:
        return _Legacy(lr=0.7, infra={"folder": tmp_path, "mode": "read-only"})

    for call in (
        lambda: read_only().process(),
        lambda: exca.graph.run(read_only().process.node()),
    ):
        with pytest.raises(RuntimeError, match="read-only") as info:
            call()
        assert f"legacy (v2) name {v2_folder}" in str(info.value)
        assert "update_uids" in str(info.value)
        assert sorted(p.name for p in v2_folder.parent.iterdir()) == before  # nothing renamed
    assert _LEGACY_CALLS.count(0.7) == 1
    assert _Legacy(lr=0.7, infra={"folder": tmp_path}).process() == pytest.approx(1.4)
    assert not v2_folder.exists() and not v2_other.exists()  # renamed by that call
    assert read_only().process() == pytest.approx(1.4) and _LEGACY_CALLS.count(0.7) == 1


class _LegacyLoose(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    x: int | str = 0
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        return f"{self.x!r}"


def test_a_v2_named_cache_of_another_config_is_not_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """v2 names are untyped: x="1" and x=1 share one. The v2 folder of x="1" was renamed
    to x=1's name, and x=1 returned x="1"'s result."""
    monkeypatch.setenv("CONFDICT_UID_VERSION", "2")
    assert _LegacyLoose(x="1", infra={"folder": tmp_path}).process() == "'1'"
    monkeypatch.delenv("CONFDICT_UID_VERSION")
    assert _LegacyLoose(x=1, infra={"folder": tmp_path}).process() == "1"
    old = _LegacyLoose(x="1", infra={"folder": tmp_path, "mode": "read-only"})
    assert old.process() == "'1'"  # renamed to its own v3 name, by update_uids


class _LegacySteps(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    steps: collections.OrderedDict[str, int] = collections.OrderedDict()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        _LEGACY_CALLS.append(len(self.steps))
        return sum(self.steps.values())


def test_a_v2_named_cache_of_an_ordereddict_config_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """uid.yaml does not say a dict was an OrderedDict (whose order is in its v3 uid):
    the config's own v2 folder takes the name of its live config."""
    steps = collections.OrderedDict([("warmup", 1), ("main", 10)])
    monkeypatch.setenv("CONFDICT_UID_VERSION", "2")
    assert _LegacySteps(steps=steps, infra={"folder": tmp_path}).process() == 11
    monkeypatch.delenv("CONFDICT_UID_VERSION")
    calls = len(_LEGACY_CALLS)
    new = _LegacySteps(steps=steps, infra={"folder": tmp_path})
    assert new.process() == 11 and len(_LEGACY_CALLS) == calls  # renamed, not computed
    folder = new.infra.uid_folder()
    assert folder is not None and [p.name for p in folder.parent.iterdir()] == [folder.name]


# --- DiscriminatedModel ----------------------------------------------------------------------
class Animal(DiscriminatedModel):
    legs: int = 4


class Dog(Animal):
    bark: str = "woof"


class Bird(Animal):
    legs: int = 2
    wingspan: float = 0.3


class Zoo(pydantic.BaseModel):
    star: Animal = Animal()
    others: list[Animal] = []
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def count(self) -> int:
        return len(self.others) + 1


class Shape(DiscriminatedModel, discriminator_key="kind"):
    size: int = 1


class Square(Shape):
    side: int = 2


def test_discriminated_construction() -> None:
    dog = Animal(type="Dog", bark="wuff")  # type: ignore[call-arg]
    assert type(dog) is Dog and dog.bark == "wuff"
    zoo = Zoo(star={"type": "Bird", "wingspan": 1.5}, others=["Dog", {"type": "Animal"}])
    assert type(zoo.star) is Bird and zoo.star.wingspan == 1.5 and zoo.star.legs == 2
    assert type(zoo.others[0]) is Dog and zoo.others[0].bark == "woof"  # string: default subclass
    assert type(zoo.others[1]) is Animal
    assert type(Zoo(star=Dog()).star) is Dog
    assert type(Animal.model_validate({"type": "Dog"})) is Dog
    assert type(Shape(kind="Square", side=3)) is Square  # type: ignore[call-arg]


def test_discriminated_clone_to_another_subclass() -> None:
    """A sweep over subclasses: clone_obj switches the class by its key (it kept the old
    class and refused the new name)."""
    zoo = Zoo(star={"type": "Bird", "wingspan": 1.5}, others=["Dog"])
    dog_star = zoo.infra.clone_obj({"star": {"type": "Dog", "=replace=": True}})
    assert type(dog_star.star) is Dog and dog_star.star.bark == "woof"
    renamed = Zoo(star="Bird").infra.clone_obj({"star.type": "Dog", "star.legs": 3})
    assert type(renamed.star) is Dog and renamed.star.legs == 3
    assert type(zoo.infra.clone_obj({"star.wingspan": 2.0}).star) is Bird  # same class kept
    assert type(zoo.infra.clone_obj({"others": [{"type": "Bird"}]}).others[0]) is Bird


def test_discriminated_unknown_name() -> None:
    with pytest.raises(ValueError) as info:
        Zoo(star={"type": "Cat"})
    message = str(info.value)
    assert "Cat" in message
    for option in ("Animal", "Bird", "Dog"):
        assert option in message


def test_discriminated_misspelled_name_says_the_close_ones() -> None:
    """A typo in the class name ('dog', 'Brid') said only "Unknown Animal type='dog'" and
    the options: the name meant is said first (case ignored), with the options still."""
    for given, said in [
        ("dog", "Unknown Animal type='dog': did you mean 'Dog'? Options are "),
        ({"type": "Brid"}, "Unknown Animal type='Brid': did you mean 'Bird'? Options are "),
        ({"type": "Cat"}, "Unknown Animal type='Cat'; options are "),
    ]:
        with pytest.raises(ValueError) as info:
            Zoo(star=given)
        assert said + "['Animal', 'Bird', 'Dog']" in str(info.value), str(info.value)
    with pytest.raises(ValueError, match="Unknown Shape kind='sqare': did you mean 'Square'"):
        Shape(kind="sqare")  # type: ignore[call-arg]


def test_discriminated_forgotten_key_hint() -> None:
    with pytest.raises(ValueError) as info:
        Zoo(star={"bark": "wuff"})
    message = str(info.value)
    assert "forget" in message or "forgot" in message
    assert "discriminator" in message and "Dog" in message


def test_discriminated_key_switched_by_a_merge_says_to_replace() -> None:
    """A yaml config holding a Bird, then a command line's --star.type=Dog merged onto it
    (ConfDict.update): pydantic said only "star.wingspan: Extra inputs are not permitted",
    not that the merge kept Bird's fields, nor what to do (docs/confdict.md: replace)."""
    config = ConfDict.from_yaml("star:\n  type: Bird\n  wingspan: 1.5\n")
    config.update(ConfDict.from_args(["--star.type=Dog"]))
    with pytest.raises(pydantic.ValidationError) as info:
        Zoo(**config)
    message = str(info.value)
    assert "fields ['wingspan'] belong to ['Bird'], not to type='Dog'" in message
    assert "--<field>.=replace==true --<field>.type=Dog" in message
    config.update(ConfDict.from_args(["--star.=replace==true", "--star.type=Dog"]))
    assert Zoo(**config).star == Dog()  # (as it says)
    with pytest.raises(pydantic.ValidationError) as info:  # a typo: no such hint
        Zoo(star={"type": "Dog", "barks": "wuff"})
    assert "replace" not in str(info.value) and "barks" in str(info.value)


def test_discriminated_typo_says_the_close_field_names() -> None:
    """A typo in a DiscriminatedModel sub-config (exca validates it: the key picks the
    class) got pydantic's bare "star.barks  Extra inputs are not permitted": the class
    chosen and its close fields now said, the error's type and location unchanged (the
    command line adds no second note)."""
    for star, said in [
        ({"type": "Dog", "barks": "wuff"}, "Dog has no field 'barks': did you mean 'bark'?"),
        ({"type": "Bird", "wingspam": 1.0}, "Bird has no field 'wingspam': did you mean "),
        ({"legz": 3}, "Animal has no field 'legz': did you mean 'legs'?"),
    ]:
        with pytest.raises(pydantic.ValidationError) as info:
            Zoo(star=star)
        (line,) = info.value.errors()
        assert line["type"] == "extra_forbidden" and line["loc"][0] == "star", line
        assert said in str(info.value), (star, str(info.value))


def test_discriminated_field_named_like_key() -> None:
    with pytest.raises(RuntimeError, match="type"):

        class Clash(Animal):
            type: str = "x"

    with pytest.raises(RuntimeError, match="kind"):

        class ClashKind(Shape):
            kind: str = "x"

    # a refused class cannot be selected by its name afterwards
    with pytest.raises(pydantic.ValidationError, match="Clash"):
        Animal(type="Clash")


def test_discriminated_same_name_in_two_modules() -> None:
    class Family(DiscriminatedModel):
        pass

    class Member(Family):
        pass

    with pytest.raises(RuntimeError, match="Member"):

        class Member(Family):  # type: ignore[no-redef]
            __module__ = "some.other.module"


_TWO_ENCODERS = """
from exca.helpers import DiscriminatedModel

class Family(DiscriminatedModel):
    pass

class Vision:
    class Encoder(Family):
        depth: int = 2

class Audio:
    class Encoder(Family):
        depth: int = 2
"""


_VISION_AGAIN = """
class Vision:
    class Encoder(Family):
        depth: int = 3
"""


def test_discriminated_same_name_in_two_classes_of_one_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Vision.Encoder and Audio.Encoder in one module: both were named type=Encoder in
    uids, and the audio config read the vision config's result (a probe). Refused; a class
    defined again under the same qualified name (a notebook cell run again), or in a
    function's body (the same name in two tests), replaces it."""
    import types

    module = types.ModuleType("exca_test_two_encoders")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    with pytest.raises(RuntimeError, match=r"Vision\.Encoder and .*Audio\.Encoder.*rename one"):
        exec(_TWO_ENCODERS, module.__dict__)
    family = module.Family
    assert type(family(type="Encoder")) is module.Vision.Encoder
    first = module.Vision.Encoder
    exec(_VISION_AGAIN, module.__dict__)
    assert module.Vision.Encoder is not first
    assert type(family(type="Encoder")) is module.Vision.Encoder

    class Pet(DiscriminatedModel):
        pass

    def one_test() -> type:
        class Dog(Pet):
            size: int = 1

        return Dog

    def another_test() -> type:
        class Dog(Pet):
            size: int = 2

        return Dog

    first_dog = one_test()
    assert type(Pet(type="Dog")) is first_dog
    second_dog = another_test()  # (it replaces the first)
    assert type(Pet(type="Dog")) is second_dog


def test_discriminated_dumps_and_yaml_round_trip() -> None:
    zoo = Zoo(star=Bird(wingspan=2.0), others=[Dog(bark="wuff")])
    dumped = zoo.model_dump(mode="json")
    assert dumped["star"] == {"type": "Bird", "legs": 2, "wingspan": 2.0}
    assert dumped["others"] == [{"type": "Dog", "legs": 4, "bark": "wuff"}]
    back = Zoo(**yaml.safe_load(yaml.safe_dump(dumped)))
    assert type(back.star) is Bird and back.star.wingspan == 2.0
    assert type(back.others[0]) is Dog and back.others[0].bark == "wuff"
    assert back.infra.uid() == zoo.infra.uid()
    assert Square(side=5).model_dump() == {"kind": "Square", "size": 1, "side": 5}
    config = zoo.infra.config(uid=False)
    assert config["star.type"] == "Bird"


def test_discriminated_uid_includes_key() -> None:
    zoo = Zoo(star=Dog(), others=[Bird(wingspan=1.0)])
    cfg = zoo.infra.config(uid=True, exclude_defaults=True)
    assert cfg["star"] == {"type": "Dog"}
    assert cfg["others"] == [{"type": "Bird", "wingspan": 1.0}]
    assert "type=Dog" in zoo.infra.uid()
    assert zoo.infra.uid() != Zoo(star=Bird(), others=[Bird(wingspan=1.0)]).infra.uid()
    assert Zoo().infra.uid().endswith("/default")


def test_with_infra_parameter_without_a_schema_is_named(tmp_path: Path) -> None:
    """An array parameter: the error names it (it was pydantic's own error about a
    model_config the user never wrote)."""

    @helpers.with_infra(folder=tmp_path)
    def total(data: np.ndarray, scale: int = 1) -> float:
        return float(data.sum()) * scale

    with pytest.raises(TypeError, match=r"Parameter\(s\) 'data' .* of .*total cannot become"):
        total(data=np.zeros(3))


class _Recorded(pydantic.BaseModel):
    x: int = 1
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        return self.x


@pytest.mark.timeout(120)
def test_find_slurm_job_skips_a_folder_being_removed(tmp_path: Path) -> None:
    """A job's record in a node folder being removed (renamed away by `exca clean`) is
    not found: that folder is no config's any more."""
    task = _Recorded(x=3, infra={"folder": tmp_path, "cluster": "local"})
    job = task.infra.job()
    assert job.result() == 3
    found = helpers.find_slurm_job(job.job_id, folder=tmp_path)
    assert found.config["x"] == 3
    folder = task.infra.uid_folder()
    assert folder is not None
    folder.rename(folder.with_name(".removing-vm-1-1-0123456789ab-abcdef"))
    with pytest.raises(RuntimeError, match="No record of job"):
        helpers.find_slurm_job(job.job_id, folder=tmp_path)


@pytest.mark.timeout(120)
def _fake_scontrol(monkeypatch: pytest.MonkeyPatch, logs: dict[str, Path]) -> None:
    """`scontrol show job <id>` answers with the job's log (StdOut) from ``logs``."""
    import subprocess

    run = subprocess.run

    def scontrol(args: list[str], **kwargs: tp.Any) -> tp.Any:
        if args[:3] == ["scontrol", "show", "job"]:
            out = f"JobId={args[3]} StdOut={logs[args[3]]}\n"
            return subprocess.CompletedProcess(args, 0, out, "")
        return run(args, **kwargs)

    monkeypatch.setattr(helpers.subprocess, "run", scontrol)


# a log 7 folders under tmp_path: the climb (helpers._LOG_DEPTH, 8 folders) ends at tmp_path,
# whatever the folders above hold (a cache left in /tmp made it find one there)
LOG_IN_NO_CACHE = "a/b/c/d/e/x/77/77.out"


def test_find_slurm_job_without_folder_looks_above_the_log_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a folder, the cache is the closest folder above the job's log (scontrol's
    StdOut) holding job records. A log in no cache (a job exca did not send, logs set
    elsewhere) had the climb go up to / and search the whole filesystem (an OSError on
    /proc, hours on a cluster's filesystem): it is refused, asking for the folder."""

    assert len(Path(LOG_IN_NO_CACHE).parents) == helpers._LOG_DEPTH  # (tmp_path the last)
    task = _Recorded(x=5, infra={"folder": tmp_path / "cache", "cluster": "local"})
    job = task.infra.job()
    assert job.result() == 5
    logs = {job.job_id: Path(job.submitit_job.paths.stdout), "77": tmp_path / LOG_IN_NO_CACHE}
    _fake_scontrol(monkeypatch, logs)
    found = helpers.find_slurm_job(job.job_id)
    assert found.config["x"] == 5 and found.uid_config == {"x": 5}
    searched: list[Path] = []
    search = helpers._job_record_files
    monkeypatch.setattr(
        helpers, "_job_record_files", lambda f, n: searched.append(f) or search(f, n)
    )
    with pytest.raises(
        RuntimeError,
        match=r"No exca cache found above the log of job 77.*"
        r"find_slurm_job\('77', folder=\.\.\.\)",
    ):
        helpers.find_slurm_job("77")
    assert searched == []


def test_find_slurm_job_goes_on_past_a_folder_removed_during_its_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder removed while find_slurm_job searches (a cleaning, pytest removing its old
    runs next to the cache) is skipped: the search raised FileNotFoundError (seen as a
    flaky test in a parallel run)."""
    import os
    import shutil

    Path(tmp_path / "cache" / "removed" / "meanwhile").mkdir(parents=True)
    (tmp_path / "gone" / "soon").mkdir(parents=True)
    scandir = os.scandir

    def removing(path: tp.Any) -> tp.Any:
        if isinstance(path, (str, Path)) and Path(path).name in ("removed", "gone"):
            shutil.rmtree(path)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", removing)
    with pytest.raises(RuntimeError, match="No record of job 12 under"):
        helpers.find_slurm_job("12", folder=tmp_path / "cache")
    _fake_scontrol(monkeypatch, {"77": tmp_path / LOG_IN_NO_CACHE})
    with pytest.raises(RuntimeError, match="No exca cache found above the log of job 77"):
        helpers.find_slurm_job("77")
    assert not (tmp_path / "gone").exists()  # (it was there when the climb listed tmp_path)


class _Scaled(pydantic.BaseModel):
    factor: int = 1
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def apply(self, values: list[int]) -> list[int]:
        return [self.factor * v for v in values]


@pytest.mark.timeout(120)
def test_find_slurm_job_gives_the_config_of_a_task_with_inputs(tmp_path: Path) -> None:
    """The job of a task with inputs computes into its config's inputs-<digest> folder,
    which holds no config files: find_slurm_job gave empty configs (a Slurm probe)."""
    import exca.graph

    node = _Scaled(factor=3, infra={"folder": tmp_path, "cluster": "local"}).apply.node([1, 2])
    exca.graph.run(node, progress=False)
    assert node.result() == [3, 6]
    found = helpers.find_slurm_job(node.job().job_id, folder=tmp_path)
    assert found.uid_config == {"factor": 3} and found.config["factor"] == 3


WITH_INFRA_SCRIPT = """
import sys
import exca


@exca.helpers.with_infra(folder=sys.argv[1])
def double(x: int) -> int:
    {body}


print(double(x=5))
"""


def test_a_script_function_edited_between_runs_warns_when_its_result_is_reused(
    tmp_path: Path,
) -> None:
    """A with_infra function of a script, edited and run again, returned the old result
    silently (a method of a script's class warned): the result records the function's code."""
    import subprocess
    import sys

    def run(body: str) -> subprocess.CompletedProcess[str]:
        script = tmp_path / "script.py"
        script.write_text(WITH_INFRA_SCRIPT.format(body=body))
        command = [sys.executable, str(script), str(tmp_path / "cache")]
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)

    warning = "reusing a result computed by other code of double"
    first = run("return x * 2")
    assert first.stdout.split() == ["10"] and warning not in first.stderr
    edited = run("return x * 3")
    assert edited.stdout.split() == ["10"]  # (the cache: as documented)
    assert warning in edited.stderr and "bump the infra's version" in edited.stderr
    assert warning not in run("return x * 2").stderr
    # a result recorded by an older exca (the digest of the generated wrapper, the same
    # for every body: it told nothing) is reused silently, as before (review)
    from exca.graph import codeprint

    def double(x: int) -> int:
        return x

    double.__module__ = "__main__"
    build = vars(helpers.to_config_model(double))["build"].func
    older = codeprint._code_digest(build)  # (the same whatever the function's body)
    assert older is not None and older != codeprint.digest(build)
    (index,) = (tmp_path / "cache").glob("*/*/*-info.jsonl")
    (line,) = [json.loads(text) for text in index.read_text().splitlines()]
    line["#meta"]["code"] = older
    index.write_text(json.dumps(line) + "\n")
    assert warning not in run("return x * 3").stderr


def test_a_cached_error_of_a_script_function_edited_since_says_so(tmp_path: Path) -> None:
    """A script's function that failed, fixed and run again, raised its cached error with
    no word that the code changed (a probe): a note says it, and what to do."""
    import subprocess
    import sys

    def run(body: str) -> subprocess.CompletedProcess[str]:
        script = tmp_path / "script.py"
        script.write_text(WITH_INFRA_SCRIPT.format(body=body))
        command = [sys.executable, str(script), str(tmp_path / "cache")]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    note = "raised by other code of double (edited since): mode='retry'"
    failed = run("raise ValueError('not yet')")
    assert failed.returncode != 0 and note not in failed.stderr
    again = run("raise ValueError('not yet')")
    assert "not yet" in again.stderr and note not in again.stderr  # (the same code)
    fixed = run("return x * 2")
    assert fixed.returncode != 0 and "not yet" in fixed.stderr and note in fixed.stderr


class _Coach(pydantic.BaseModel):
    star: Animal = Bird(wingspan=1.0)
    pet: Animal = pydantic.Field(default_factory=Dog)
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def count(self) -> int:
        return 1


def test_discriminated_subclass_defaults() -> None:
    """``star: Animal = Bird()`` and ``Field(default_factory=Dog)``: the default is the
    subclass, its config is the default one, and an exported config comes back as it."""
    coach = _Coach()
    assert type(coach.star) is Bird and coach.star.wingspan == 1.0 and type(coach.pet) is Dog
    assert coach.infra.uid().endswith("/default")
    assert coach.infra.uid() == _Coach(star=Bird(wingspan=1.0), pet=Dog()).infra.uid()
    full = coach.infra.config(uid=False, exclude_defaults=False)
    assert full["star.type"] == "Bird" and full["pet.type"] == "Dog"
    back = _Coach(**ConfDict.from_yaml(full.to_yaml()))
    assert type(back.star) is Bird and type(back.pet) is Dog
    assert back.infra.uid() == coach.infra.uid()
    other = _Coach(star=Bird(wingspan=2.0))  # (a changed default keeps its key)
    short = ConfDict.from_yaml(other.infra.config(uid=False, exclude_defaults=True).to_yaml())
    assert short["star"] == {"type": "Bird", "wingspan": 2.0}
    assert _Coach(**short).infra.uid() == other.infra.uid() != coach.infra.uid()


def test_discriminated_plain_default_is_explained() -> None:
    """``pet: Animal = "Dog"``: pydantic does not validate defaults, the field holds the
    string; the export said "type object 'str' has no attribute '__pydantic_serializer__'"
    with a hint about numpy values. It now says what to write instead."""

    class Kennel(pydantic.BaseModel):
        pet: Animal = "Dog"  # type: ignore[assignment]
        infra: TaskInfra = TaskInfra()

        @infra.apply
        def count(self) -> int:
            return 1

    with pytest.raises(TypeError) as error:
        Kennel().infra.uid()
    message = str(error.value)
    assert "Kennel.pet" in message and "'Dog' (str)" in message
    assert "default_factory=Dog" in message and "validate_default=True" in message
    assert "numpy" not in message and "__pydantic_serializer__" not in message

    class Validated(pydantic.BaseModel):  # (the written fix works)
        pet: Animal = pydantic.Field("Dog", validate_default=True)

    assert type(Validated().pet) is Dog
