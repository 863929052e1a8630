"""exca.helpers.rename_class: migrating a cache after a pure rename (or move) of a class,
its pipeline downstream included. Each run of the project's code is a new process (the
class renamed in its module file between runs, as a user does)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import typing as tp
from pathlib import Path

import pydantic
import pytest

import exca
from exca import helpers
from exca.ops import cli

HEADER = """
import os
import typing as tp
from pathlib import Path

import pydantic
import exca

LOG = Path(__file__).with_name("calls.log")


def log(what: str) -> None:
    with LOG.open("a") as f:
        f.write(what + "\\n")
"""

DATA_DEF = """
class {data}(pydantic.BaseModel):
    n: int = 4
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def prepare(self) -> list[int]:
        log("prepare")
        return list(range(self.n))
"""

MODULE = (
    HEADER
    + '''
{data_def}

class {square}(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def run(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            log(f"square {{item}}")
            yield item**2


class Scale(pydantic.BaseModel):
    factor: int = 10
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def apply(self, values: list[int]) -> list[int]:
        log("scale")
        return [v * self.factor for v in values]


class Plus(pydantic.BaseModel):
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def run(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            log(f"plus {{item}}")
            yield item + 1


class Report(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def summarize(self, scaled: list[int], parts: list[list[int]]) -> int:
        log("report")
        return sum(scaled) + 1000 * len(parts) + sum(len(p) for p in parts)


class Tail(pydantic.BaseModel):  # (named after Scale, which feeds it)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def last(self, values: list[int]) -> int:
        log("tail")
        return values[-1]


class Train(pydantic.BaseModel):
    data: {data} = {data}()
    lr: float = 0.5
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> float:
        log("fit")
        return self.lr * sum(self.data.prepare())


def results(root: str, mode: str = "cached") -> dict[str, tp.Any]:
    """Every result of the pipeline (None: missing in read-only mode)."""
    infra = {{"folder": root, "mode": mode}}
    data = {data}(infra=infra)
    square = {square}(infra=infra)
    scaled = Scale(infra=infra).apply.node(square.run.node(data.prepare.node()))
    report = Report(infra=infra).summarize.node(scaled, parts=[scaled, data.prepare.node()])
    # a map fed by a map fed by a task (whose uid no inputs.yaml names)
    small = {data}(n=3, infra=infra).prepare.node()
    plus = Plus(infra=infra).run.node(square.run.node(small))
    chained = Scale(factor=3, infra=infra).apply.node(plus)
    out: dict[str, tp.Any] = {{}}
    for name, call in (
        ("report", report.result),
        ("chained", chained.result),
        ("tail", Tail(infra=infra).last.node(scaled).result),
        ("scaled", scaled.result),
        ("fit", Train(data=data, infra=infra).fit),
        ("eager_map", lambda: list(square.run([7, 3]))),
        ("eager_scale", lambda: Scale(infra=infra).apply(values=[1, 2])),
    ):
        try:
            out[name] = call()
        except RuntimeError:
            if mode != "read-only":
                raise
            out[name] = None
    return out
'''
)

EXPECTED = {
    "report": 140 + 2000 + 8,
    "chained": [3, 6, 15],
    "tail": 90,
    "scaled": [0, 10, 40, 90],
    "fit": 3.0,
    "eager_map": [49, 9],
    "eager_scale": [10, 20],
}

DRIVER = """
import json, os, sys
import exca
mode, root = sys.argv[1], sys.argv[2]
if mode == "migrate":
    old, new = sys.argv[3], sys.argv[4]
    done = exca.helpers.rename_class(root, old, new, dryrun=False)
    print(json.dumps(done.to_dict()))
else:
    import pipemod
    print(json.dumps(pipemod.results(root, "cached" if mode == "run" else mode)))
"""


class Project:
    """The project's code in tmp_path/code (module pipemod), run in new processes."""

    def __init__(self, tmp_path: Path) -> None:
        self.code = tmp_path / "code"
        self.code.mkdir(exist_ok=True)
        (self.code / "driver.py").write_text(DRIVER)
        self.root = tmp_path / "cache"
        self.log = self.code / "calls.log"
        self.names = {"data": "Data", "square": "Square"}
        self.write()

    def write(self, moved: bool = False, **names: str) -> None:
        """The module, with its classes named ``names``; ``moved``: Data defined in
        module newmod (imported by pipemod)."""
        self.names.update(names)
        data_def = DATA_DEF.format(**self.names)
        if moved:
            (self.code / "newmod.py").write_text(
                HEADER.replace("{{", "{").replace("}}", "}") + data_def
            )
            data_def = f"from newmod import {self.names['data']}"
        (self.code / "pipemod.py").write_text(MODULE.format(data_def=data_def, **self.names))

    def run(self, *args: str, root: Path | None = None) -> tp.Any:
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        repo = str(Path(__file__).parents[1])
        env["PYTHONPATH"] = os.pathsep.join([str(self.code), repo, env.get("PYTHONPATH", "")])
        out = subprocess.run(
            [
                sys.executable,
                str(self.code / "driver.py"),
                args[0],
                str(root or self.root),
                *args[1:],
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if out.returncode:
            return out
        return json.loads(out.stdout.strip().splitlines()[-1])

    def calls(self) -> list[str]:
        """What the methods computed since the last look."""
        if not self.log.exists():
            return []
        done = self.log.read_text().split()
        self.log.unlink()
        return done


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"")
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def project(tmp_path: Path) -> Project:
    project = Project(tmp_path)
    assert project.run("run") == EXPECTED
    assert project.calls()  # (computed)
    return project


@pytest.mark.parametrize("renamed", ["data", "square"])
def test_rename_class_then_nothing_recomputes(project: Project, renamed: str) -> None:
    old = {"data": "Data", "square": "Square"}[renamed]
    new = old + "Renamed"
    before = _tree(project.root)
    project.write(**{renamed: new})
    # what the rename costs without a migration: the class's results and everything
    # computed from them downstream (a copy of the cache, to leave this one as it was)
    copy = project.root.with_name("copy")
    shutil.copytree(project.root, copy)
    assert project.run("run", root=copy) == EXPECTED
    recomputed = project.calls()
    assert recomputed.count("scale") == 2 and "report" in recomputed
    # a dry run says what it would do and changes nothing
    planned = helpers.rename_class(project.root, f"pipemod.{old}", f"pipemod.{new}")
    assert _tree(project.root) == before
    assert planned.moves and planned.rewrites
    assert all(f"pipemod.{new}." in str(b) for a, b in planned.moves if f"pipemod.{old}." in str(a))
    done = helpers.rename_class(project.root, f"pipemod.{old}", f"pipemod.{new}", dryrun=False)
    assert done.moves == planned.moves and done.rewrites == planned.rewrites and not done.left
    assert not [p for p in project.root.iterdir() if p.name.startswith(f"pipemod.{old}.")]
    assert project.run("run") == EXPECTED
    assert project.calls() == []  # nothing recomputed
    # the renamed class's folders are read in read-only mode too
    assert project.run("read-only") == EXPECTED
    # run again: nothing of the old name left, it says so
    with pytest.raises(ValueError, match=f"no step folder of pipemod.{old}"):
        helpers.rename_class(project.root, f"pipemod.{old}", f"pipemod.{new}", dryrun=False)


def test_rename_class_moved_to_another_module(project: Project) -> None:
    project.write(moved=True)
    done = helpers.rename_class(project.root, "pipemod.Data", "newmod.Data", dryrun=False)
    assert any(b.parent.name == "newmod.Data.prepare,1" for _, b in done.moves)
    assert project.run("run") == EXPECTED
    assert project.calls() == []


def test_rename_class_refusals(project: Project) -> None:
    with pytest.raises(ValueError, match=r"no step folder of pipemod\.Nothing .*: pipemod\.Data"):
        helpers.rename_class(project.root, "pipemod.Nothing", "pipemod.Other")
    with pytest.raises(ValueError, match="not the dotted name"):
        helpers.rename_class(project.root, "Data", "pipemod.Other")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        helpers.rename_class(project.root / "nope", "pipemod.Data", "pipemod.Other")
    # the renamed code ran before the migration: the new names hold results already
    project.write(data="Dataset")
    assert project.run("run") == EXPECTED
    project.calls()
    before = _tree(project.root)
    with pytest.raises(RuntimeError, match=r"new names are taken already.*Dataset\.prepare,1"):
        helpers.rename_class(project.root, "pipemod.Data", "pipemod.Dataset", dryrun=False)
    assert _tree(project.root) == before  # (refused before any change)
    out = project.run("migrate", "pipemod.Data", "pipemod.Dataset")
    assert out.returncode == 1 and "new names are taken already" in out.stderr


def _migrate_killed(root: Path, old: str, new: str, kill_at: int) -> int:
    """rename_class in a forked process SIGKILLed at its kill_at-th rename (of a folder or
    a file, the claims of its holds included; 0: not killed). Its number of renames."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # (the child: never back into pytest)
        try:
            count = [0]

            def counted(real: tp.Any) -> tp.Any:
                def call(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
                    count[0] += 1
                    if count[0] == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real(*args, **kwargs)

                return call

            os.rename, os.replace = counted(os.rename), counted(os.replace)
            helpers.rename_class(root, old, new, dryrun=False)
            os.write(write, str(count[0]).encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    said = os.read(read, 100).decode()
    os.close(read)
    if kill_at:
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, kill_at
        return kill_at
    assert os.WIFEXITED(status) and said, status
    return int(said)


def test_rename_class_killed_then_run_again(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration killed (SIGKILL) at each of its renames of a folder or file in turn."""
    template = tmp_path / "template"
    shutil.copytree(project.root, template)
    old, new = "pipemod.Data", "pipemod.Dataset"
    project.write(data="Dataset")
    monkeypatch.syspath_prepend(str(project.code))
    sys.modules.pop("pipemod", None)
    pipemod: tp.Any = importlib.import_module("pipemod")
    try:
        shutil.copytree(template, tmp_path / "counted")
        renames = _migrate_killed(tmp_path / "counted", old, new, 0)
        assert renames >= 10
        states = set()
        for kill_at in range(1, renames + 1):
            shutil.rmtree(project.root)
            shutil.copytree(template, project.root)
            _migrate_killed(project.root, old, new, kill_at)
            states.add(json.dumps(sorted(_tree(project.root))))
            # whatever the kill left reads back right, or is missing
            read = pipemod.results(str(project.root), "read-only")
            assert set(read) == set(EXPECTED)
            assert all(v is None or v == EXPECTED[k] for k, v in read.items()), (kill_at, read)
            # run again: the migration finishes the job, nothing computes
            done = helpers.rename_class(project.root, old, new, dryrun=False)
            assert done.left == [], kill_at
            assert pipemod.results(str(project.root)) == EXPECTED, kill_at
            assert project.calls() == [], kill_at
            assert not [p for p in project.root.iterdir() if p.name.startswith(f"{old}.")]
        assert len(states) >= renames // 2  # (killed at different points of the migration)
    finally:
        sys.modules.pop("pipemod", None)


def test_rename_class_stopped_by_a_full_disk_says_what_it_left(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A migration stopped half-way by a full disk (the third folder rename): it raised the
    bare "[Errno 28] No space left on device", nothing of the cache's state. It now says
    it stopped after how many renames, that nothing cached was lost and to run it again,
    which finishes it (nothing computes)."""
    import errno

    old, new = "pipemod.Data", "pipemod.Dataset"
    project.write(data="Dataset")
    rename, count = os.rename, [0]

    def full_at_third(*args: tp.Any, **kwargs: tp.Any) -> None:
        count[0] += 1
        if count[0] == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        rename(*args, **kwargs)

    monkeypatch.setattr(os, "rename", full_at_third)
    with pytest.raises(OSError, match="No space left") as info:
        helpers.rename_class(project.root, old, new, dryrun=False)
    monkeypatch.undo()
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert f"rename {old} -> {new} stopped there, after 2 folder rename(s)" in notes, notes
    assert "nothing cached was lost" in notes and "run it again" in notes
    assert "free space there" in notes
    done = helpers.rename_class(project.root, old, new, dryrun=False)
    assert done.left == []
    assert project.run("run") == EXPECTED
    assert project.calls() == []


def test_rename_class_command_line(
    project: Project, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    before = _tree(project.root)
    args = ["rename", str(project.root), "pipemod.Data", "pipemod.Dataset"]
    with caplog.at_level("INFO", logger="exca"):
        assert cli.main(args) == 0
    said = capsys.readouterr().out
    assert "pipemod.Dataset.prepare,1" in said and "preview" in said
    # each rename is printed once, not logged too (one summary line)
    (logged,) = [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    assert "would rename" in logged and "pipemod.Dataset.prepare,1" not in logged
    assert _tree(project.root) == before
    assert cli.main([*args, "--yes", "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["moves"] and not done["left"]
    project.write(data="Dataset")
    assert project.run("run") == EXPECTED
    assert project.calls() == []
    assert cli.main(args) == 2
    assert "no step folder of pipemod.Data" in capsys.readouterr().err


def test_rename_class_removes_a_step_folder_recording_removed_configs(project: Project) -> None:
    """A step folder from which a config was removed holds the record of that removal
    (.exca-removed, read by explain): a migration moving its other configs out left it,
    with that file only, under the old name."""
    from exca.ops import clean

    old = project.root / "pipemod.Data.prepare,1"
    clean.record_removal(old / "seed=9-0123abcd", "requested")
    assert (old / clean.REMOVALS_FILE).exists()
    done = helpers.rename_class(project.root, "pipemod.Data", "pipemod.Dataset", dryrun=False)
    assert done.left == [] and not old.exists()


def _job_logs(step: Path, job: str) -> None:
    """The log folder a job of this step writes (logs/<user>/<job id>/...)."""
    folder = step / "logs" / "someone" / job
    folder.mkdir(parents=True)
    (folder / f"{job}_0_log.out").write_text(f"log of {job}")


def test_rename_class_merges_the_logs_of_the_renamed_class(project: Project) -> None:
    """The renamed class ran a job before the migration (its step folder under the new
    name has a logs folder): the migration merges the logs, it does not refuse."""
    old = project.root / "pipemod.Data.prepare,1"
    new = project.root / "pipemod.Dataset.prepare,1"
    _job_logs(old, "11")
    _job_logs(new, "22")
    done = helpers.rename_class(project.root, "pipemod.Data", "pipemod.Dataset", dryrun=False)
    assert done.left == []
    assert not old.exists()
    assert (new / "logs/someone/11/11_0_log.out").read_text() == "log of 11"
    assert (new / "logs/someone/22/22_0_log.out").read_text() == "log of 22"
    project.write(data="Dataset")
    assert project.run("run") == EXPECTED
    assert project.calls() == []


class Held(pydantic.BaseModel):
    flag: str = ""
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def wait(self) -> int:
        while Path(self.flag).exists():
            time.sleep(0.02)
        return 1


def test_rename_class_leaves_the_logs_of_a_step_being_computed(tmp_path: Path) -> None:
    """A config folder of the class left (being computed, or its job queued or running:
    its logs are written in the step's logs folder): the step's logs stay too."""
    root = tmp_path / "cache"
    flag = tmp_path / "flag"
    Held(flag=str(tmp_path / "none"), infra={"folder": root}).wait()
    busy = Held(flag=str(flag), infra={"folder": root})
    flag.touch()
    thread = threading.Thread(target=busy.wait)
    thread.start()
    try:
        folder = busy.infra.uid_folder()
        assert folder is not None
        deadline = time.monotonic() + 60
        while not list(folder.glob("claims/*.claim")):
            assert time.monotonic() < deadline, "the thread claims its task"
            time.sleep(0.02)
        step = folder.parent
        _job_logs(step, "11")
        name = f"{__name__}.Held"
        # the preview says what a run leaves (its 'left' was always empty)
        preview = helpers.rename_class(root, name, name + "Again")
        assert [p for p, _ in preview.left] == [folder, step / "logs"], preview.left
        assert "being computed" in preview.left[0][1]
        assert len(preview.moves) == 1 and preview.moves[0][0].parent == step
        assert cli.main(["rename", str(root), name, name + "Again"]) == 1
        done = helpers.rename_class(root, name, name + "Again", dryrun=False)
        assert done.left == preview.left and done.moves == preview.moves
        assert (step / "logs/someone/11/11_0_log.out").exists()
    finally:
        flag.unlink()
        thread.join()


class Logged(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        print("hello from the job", flush=True)
        return 1


def test_rename_class_then_the_logs_of_its_jobs_are_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job's record names its logs by the path they had (under the old step folder):
    `exca logs` of the migrated folder finds them where the migration moved them."""
    root = tmp_path / "cache"
    obj = Logged(infra={"folder": root, "cluster": "local"})
    assert obj.run() == 1
    folder = obj.infra.uid_folder()
    assert folder is not None
    name = f"{__name__}.Logged"
    helpers.rename_class(root, name, name + "Again", dryrun=False)
    moved = root / folder.parent.name.replace(name, name + "Again") / folder.name
    assert moved.is_dir() and not folder.parent.exists()
    capsys.readouterr()
    assert cli.main(["logs", str(moved)]) == 0
    assert "hello from the job" in capsys.readouterr().out


def test_rename_class_json_says_whether_it_renamed(
    project: Project, capsys: pytest.CaptureFixture[str]
) -> None:
    """`exca rename ... --json` printed the same keys for a preview and for --yes: a
    script could not tell whether anything was renamed."""
    args = ["rename", str(project.root), "pipemod.Data", "pipemod.Dataset", "--json"]
    assert cli.main(args) == 0
    preview = json.loads(capsys.readouterr().out)
    assert preview["dryrun"] is True and preview["moves"]
    assert (project.root / "pipemod.Data.prepare,1").exists()
    assert cli.main([*args, "--yes"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["dryrun"] is False and done["moves"] == preview["moves"]
    assert not (project.root / "pipemod.Data.prepare,1").exists()


class SubBase(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    n: int = 3


class SubData(SubBase):
    pass


class SubDataLoader(SubBase):  # (a name SubData starts)
    pass


class UsesSub(pydantic.BaseModel):
    data: SubBase = SubBase()
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> int:
        return self.data.n


def test_rename_class_of_a_sub_config_says_it_is_not_migrated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A subclass in a field annotated with its base is named in the uid of the config
    holding it (data._class=...): renaming it changes those uids, which rename_class does
    not migrate. It said only "no step folder of ...", or migrated the class's own steps
    and said nothing of the configs that compute again."""
    root = tmp_path / "cache"
    assert UsesSub(data=SubData(), infra={"folder": root}).fit() == 3
    assert UsesSub(data=SubDataLoader(), infra={"folder": root}).fit() == 3
    name = f"{__name__}.SubData"
    with pytest.raises(ValueError, match="no step folder") as error:
        helpers.rename_class(root, name, name + "2")
    said = str(error.value)
    assert f"{name} is the class of a sub-config in 1 config folder(s)" in said
    assert "data._class=" in said and "compute again" in said
    assert cli.main(["rename", str(root), name, name + "2"]) == 2
    assert "is the class of a sub-config" in capsys.readouterr().err
    # with a step of its own, the migration goes on and warns
    Held(flag=str(tmp_path / "none"), infra={"folder": root}).wait()
    held = f"{__name__}.Held"
    assert UsesSub(data=SubBase(), infra={"folder": root}).fit() == 3
    caplog.clear()
    with caplog.at_level("WARNING", logger="exca"):
        helpers.rename_class(root, held, held + "2", dryrun=True)
    assert "sub-config" not in caplog.text  # (Held is no sub-config's class)


class Head(helpers.DiscriminatedModel):
    pass


class LinearHead(Head):
    width: int = 2


class UsesHead(pydantic.BaseModel):
    head: Head = LinearHead()
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> int:
        return 1


def test_rename_class_of_a_discriminated_model_says_its_configs_compute_again(
    tmp_path: Path,
) -> None:
    """A DiscriminatedModel subclass's name is its discriminator value, in the uids of
    the configs holding it (head.type: LinearHead): renaming it, rename_class said only
    that there was nothing to migrate, though those configs compute again. It says so
    now, and what to do; a move to another module (the name kept) needs nothing."""
    root = tmp_path / "cache"
    assert UsesHead(head=LinearHead(width=3), infra={"folder": root}).fit() == 1
    name = f"{__name__}.LinearHead"
    for old in (name, "gone.LinearHead"):  # (importable, or not: its key unknown)
        with pytest.raises(ValueError, match="nothing computed from it to migrate") as error:
            helpers.rename_class(root, old, f"{__name__}.DenseHead")
        said = str(error.value)
        assert "DiscriminatedModel subclass, its class name is the discriminator value" in said
        assert "1 config folder(s) holding it (e.g. `type: LinearHead` in " in said, said
        assert "compute again" in said and "keep the class's name" in said, said
    with pytest.raises(ValueError) as error:  # (moved: the uids do not change)
        helpers.rename_class(root, name, "othermod.LinearHead")
    assert "DiscriminatedModel" not in str(error.value)


def test_rename_class_leaves_logs_a_running_job_of_another_step_uses(tmp_path: Path) -> None:
    """A job of an array spanning several steps writes its logs (and runs its code
    snapshot) in one node's step folder: a job of another class's node, running, whose
    logs are in the renamed class's step folder keeps them where it writes them."""
    from exca.graph import registry
    from exca.storage import process

    root = tmp_path / "cache"
    Held(flag=str(tmp_path / "none"), infra={"folder": root}).wait()
    other = UsesSub(infra={"folder": root})
    assert other.fit() == 3
    step = next(root.glob("*.Held.wait,1"))
    logs = step / "logs" / "someone" / "4242"
    logs.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        folder = other.infra.uid_folder()
        assert folder is not None
        record = registry.JobRecord(
            job_id=str(sleeper.pid),
            cluster="local",
            logs=str(logs),
            submitted=time.time(),
            host=process.hostname(),
            folder=os.path.abspath(folder),
            start=process.process_start_time(sleeper.pid),
        )
        registry.write(folder, record, link=False)
        name = f"{__name__}.Held"
        preview = helpers.rename_class(root, name, name + "Again")
        assert [p for p, _ in preview.left] == [step / "logs"], preview.left
        done = helpers.rename_class(root, name, name + "Again", dryrun=False)
        assert done.left == preview.left and done.moves == preview.moves
        assert [p for p, _ in done.left] == [step / "logs"], done.left
        assert "queued or running" in done.left[0][1]
        assert logs.is_dir()
        assert len(done.moves) == 1  # (the config folder)
    finally:
        sleeper.kill()
        sleeper.wait()
    done = helpers.rename_class(root, name, name + "Again", dryrun=False)
    assert done.left == [] and not step.exists()


CALLS: list[str] = []


class Source(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def prepare(self) -> list[int]:
        CALLS.append("prepare")
        return [1, 2]


class SourceAgain(Source):  # (the renamed class: the same config and method)
    pass


class Note(pydantic.BaseModel):
    note: str = ""
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def get(self) -> str:
        CALLS.append("note")
        return self.note


class Join(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self, values: list[int], tag: str) -> str:
        CALLS.append("join")
        return f"{sum(values)}:{tag}"


class Keys(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def keys(self, parts: dict[str, tp.Any]) -> list[str]:
        CALLS.append("keys")
        return sorted(parts)


def test_rename_class_renames_step_references_only(tmp_path: Path) -> None:
    """A step's name held as a string (an input's value, a config field, a key of a dict
    of inputs) was rewritten in the uids naming it as if it referred to the step: what
    was computed from it computed again, and a dict key naming the old step was read
    back under the key naming the new one (the result of other inputs)."""
    root = tmp_path / "cache"
    old, new = f"{__name__}.Source", f"{__name__}.SourceAgain"
    old_ref = f"{old}.prepare,1/default"

    def results(cls: type[Source], key: str, mode: str = "cached") -> list[tp.Any]:
        infra = {"folder": root, "mode": mode}
        data = cls(infra=infra).prepare.node()
        join = Join(infra=infra)
        return [
            join.run.node(data, tag=old_ref).result(),  # (a value)
            join.run.node(data, tag=Note(note=old_ref, infra=infra).get.node()).result(),
            # ("other" fed by another node: the same one, the key could be
            # "<old step>/k=<old step>/default,other", see the test below)
            Keys(infra=infra)
            .keys.node({key: data, "other": Note(infra=infra).get.node()})
            .result(),
        ]

    expected = [f"3:{old_ref}", f"3:{old_ref}", ["other", f"{old}.prepare,1/k"]]
    assert results(Source, f"{old}.prepare,1/k") == expected
    CALLS.clear()
    helpers.rename_class(root, old, new, dryrun=False)
    # everything is found under the new names: read-only reads it back
    assert results(SourceAgain, f"{old}.prepare,1/k", mode="read-only") == expected
    # a key naming the new step is another input: computed, not the old key's result
    keyed = Keys(infra={"folder": root}).keys.node(
        {
            f"{new}.prepare,1/k": SourceAgain(infra={"folder": root}).prepare.node(),
            "other": SourceAgain(infra={"folder": root}).prepare.node(),
        }
    )
    assert keyed.result() == ["other", f"{new}.prepare,1/k"]
    assert CALLS == ["keys"]


def test_rename_class_leaves_a_dict_key_holding_a_reference(tmp_path: Path) -> None:
    """A key of a dict of inputs holding the text of a reference to a node of the class
    ("<old step>/<config>" followed by "," or "}" in the key) was renamed with the real
    references: the renamed code giving the key naming the new step read back the result
    computed for the old key. Only what is a reference in every reading of the group's
    uid is renamed (its recorded upstream telling readings apart); else the group is
    left as it is, and computes again."""
    root = tmp_path / "cache"
    old, new = f"{__name__}.Source", f"{__name__}.SourceAgain"
    infra = {"folder": root}

    def keyed(cls: type[Source], step: str, with_note: bool, mode: str = "cached") -> tp.Any:
        data = cls(infra={**infra, "mode": mode}).prepare.node()
        note = Note(note="n", infra={**infra, "mode": mode}).get.node()
        parts: dict[str, tp.Any] = {"other": note if with_note else data}
        parts[f"{step}.prepare,1/default,z"] = data
        if not with_note:  # (a key "...}" too)
            parts[f"{step}.prepare,1/default}}"] = data
        return Keys(infra={**infra, "mode": mode}).keys.node(parts).result()

    # "other" fed by the same node as the keys: the group's uid reads two ways
    assert keyed(Source, old, with_note=False)[0] == "other"
    # "other" fed by another node: its recorded upstream tells the reading
    assert keyed(Source, old, with_note=True) == ["other", f"{old}.prepare,1/default,z"]
    helpers.rename_class(root, old, new, dryrun=False)
    CALLS.clear()
    # the keys naming the new step are other inputs: computed, not read back
    for with_note in (False, True):
        got = keyed(SourceAgain, new, with_note=with_note)
        assert all(key == "other" or key.startswith(new) for key in got), got
    assert CALLS == ["keys", "keys"]
    # the key as it was, fed by the renamed node, is found where the migration put it
    CALLS.clear()
    got = keyed(SourceAgain, old, with_note=True, mode="read-only")
    assert got == ["other", f"{old}.prepare,1/default,z"]


class Coded(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        return 2


def test_rename_class_points_the_links_of_its_folders_at_where_they_moved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node folder's `code` link (the snapshot its job ran, an absolute path) pointed
    at the old step folder after a migration (dangling); so did a link to logs in the
    step folder of another node (an array's job), relative or not."""
    root = tmp_path / "cache"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.py").write_text("")
    infra = {"folder": root, "cluster": "local", "workdir": {"copied": [tmp_path / "src"]}}
    obj = Coded(infra=infra)
    assert obj.run() == 2
    folder = obj.infra.uid_folder()
    assert folder is not None and (folder / "code").is_symlink()
    # the link to the snapshot in the cache is relative (as the one to the job's logs),
    # it survives moving the cache; an older exca wrote an absolute one
    assert not os.path.isabs(os.readlink(folder / "code")) and (folder / "code").exists()
    snapshot = os.path.realpath(folder / "code")
    (folder / "code").unlink()
    os.symlink(snapshot, folder / "code")
    step = folder.parent
    # another class's node whose job (of an array) wrote its logs in Coded's step folder
    other = UsesSub(infra={"folder": root})
    assert other.fit() == 3
    elsewhere = other.infra.uid_folder()
    assert elsewhere is not None
    _job_logs(step, "4242")
    os.symlink(os.path.relpath(step / "logs/someone/4242", elsewhere), elsewhere / "submitit")
    os.symlink(snapshot, elsewhere / "code")
    name = f"{__name__}.Coded"
    new_step = root / step.name.replace(name, name + "Again")
    preview = helpers.rename_class(root, name, name + "Again")
    assert {p for p, _ in preview.links} == {
        elsewhere / "code",
        elsewhere / "submitit",
        new_step / folder.name / "code",
    }
    assert (folder / "code").exists() and (elsewhere / "code").exists()  # (unchanged)
    # a migration killed before it relinked (the links left as they were): the next run
    # relinks them, though nothing else is left to do
    from exca.graph import registry

    monkeypatch.setattr(registry, "link", lambda *args: None)
    done = helpers.rename_class(root, name, name + "Again", dryrun=False)
    assert done.links == preview.links
    monkeypatch.undo()
    assert not step.exists() and not (elsewhere / "code").exists()
    done = helpers.rename_class(root, name, name + "Again", dryrun=False)
    assert not done.moves and done.links == preview.links
    for link in (elsewhere / "code", elsewhere / "submitit", new_step / folder.name / "code"):
        assert link.exists() and new_step in Path(os.path.realpath(link)).parents, link
    assert os.path.isabs(os.readlink(elsewhere / "code"))
    assert not os.path.isabs(os.readlink(elsewhere / "submitit"))
    assert (elsewhere / "submitit" / "4242_0_log.out").read_text() == "log of 4242"
    assert (new_step / folder.name / "code" / "src" / "a.py").exists()
    with pytest.raises(ValueError, match="no step folder"):  # (nothing left to do)
        helpers.rename_class(root, name, name + "Again", dryrun=False)


def test_rename_class_then_provenance_finds_the_renamed_upstream(tmp_path: Path) -> None:
    """The provenance of a result keeps the uids its upstream had (the old class name):
    after a migration, `clean --downstream` of a renamed folder did not find what was
    computed from it, and that folder recomputed alone did not make them `stale` (a plan
    said `cached`)."""

    root = tmp_path / "cache"
    old, new = f"{__name__}.Source", f"{__name__}.SourceAgain"

    def targets(cls: type[Source]) -> list[tp.Any]:
        infra = {"folder": root}
        data = cls(infra=infra).prepare.node()
        return [Join(infra=infra).run.node(data, tag="t"), Keys(infra=infra).keys.node({"a": data})]

    for node in targets(Source):
        node.result()
    helpers.rename_class(root, old, new, dryrun=False)
    plan = exca.graph.plan(*targets(SourceAgain))
    assert {e.status for e in plan.entries} == {"cached", "not needed"}
    # `exca clean ROOT node FOLDER --downstream` finds what was computed from it
    from exca.ops import clean

    source = SourceAgain(infra={"folder": root}).prepare.node()
    removal = clean.remove_nodes(source, downstream=True, root=root)
    assert {r.path for r in removal.removals} == {n.folder for n in [source, *targets(SourceAgain)]}
    # the renamed upstream recomputed alone: what was computed from it is stale
    forced = SourceAgain(infra={"folder": root, "mode": "force"})
    forced.prepare()
    plan = exca.graph.plan(*targets(SourceAgain))
    stale = [e for e in plan.entries if e.status == "stale"]
    assert len(stale) == 2, plan.entries
    assert all(f"stale: upstream {new}.prepare,1/default recomputed" in e.reason for e in stale)


MAPS_MODULE = """
import typing as tp
import pydantic
import exca


class Square(pydantic.BaseModel):
    k: int = 1
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def run(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            yield item * self.k
"""


class Gather(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def total(self, parts: dict[str, list[int]]) -> int:
        return sum(sum(p) for p in parts.values())


def test_rename_class_of_maps_feeding_a_dict_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task fed a dict of two map nodes (one evaluation per trained model, gathered):
    its inputs.yaml reads several ways (a step name holds a comma) and the record that
    tells them apart was not used for maps: the rename left it, and the gathering task
    computed again under the new names."""
    for name in ("mapsold", "mapsnew"):
        (tmp_path / f"{name}.py").write_text(MAPS_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    root = tmp_path / "cache"

    def target(module: str) -> exca.graph.Node:
        cls = importlib.import_module(module).Square
        parts = {
            key: cls(k=k, infra={"folder": root}).run.node([1, 2])
            for key, k in (("a", 1), ("b", 2))
        }
        return Gather(infra={"folder": root}).total.node(parts)

    assert target("mapsold").result() == 9
    done = helpers.rename_class(root, "mapsold.Square", "mapsnew.Square", dryrun=False)
    assert len(done.rewrites) == 1 and not done.left
    plan = exca.graph.plan(target("mapsnew"))
    assert plan.counts() == {"cached": 1, "not needed": 2}
