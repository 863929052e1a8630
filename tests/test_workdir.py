"""WorkDir (SPEC §7): validation, name resolution, filters, copying at activation time,
activate() (cwd and sys.path), log_commit; then jobs (local and debug clusters) running
from their snapshots."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import typing as tp
from pathlib import Path

import pydantic
import pytest

import exca
from exca.infra.workdir import SNAPSHOT_MARKER, WorkDir


def _write(path: Path, text: str = "x = 1\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder (the cwd) with a package, data files and caches."""
    root = tmp_path / "project"
    _write(root / "pkg" / "__init__.py")
    _write(root / "pkg" / "core.py", "VALUE = 1\n")
    _write(root / "pkg" / "sub" / "deep" / "mod.py")
    _write(root / "pkg" / "notes.txt", "not python")
    _write(root / "pkg" / "config.yaml", "a: 1\n")
    _write(root / "pkg" / "__pycache__" / "core.py")
    _write(root / "pkg" / ".git" / "hooks.py")
    _write(root / "pkg" / "skipme" / "mod.py")
    _write(root / "pkg" / "skip_this.py")
    _write(root / "script.py", "print('hello')\n")
    monkeypatch.chdir(root)
    return root


def _files(folder: Path) -> set[str]:
    """The copied files (not the marker that every snapshot holds)."""
    return {
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and p.name != SNAPSHOT_MARKER
    }


def test_validation() -> None:
    with pytest.raises(pydantic.ValidationError):
        WorkDir(copied=[])
    with pytest.raises(pydantic.ValidationError):
        WorkDir()  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError):
        WorkDir(copied=["."], unknown=1)  # type: ignore[call-arg]
    wd = WorkDir(copied=["pkg"])
    assert wd.folder is None and wd.log_commit is False
    assert tuple(wd.includes) == ("*.py",)
    assert tuple(wd.excludes) == ("__pycache__", ".git")


def test_resolution(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wd = WorkDir(copied=["pkg"])
    assert wd.resolve("pkg") == project / "pkg"  # cwd first
    assert wd.resolve("script.py") == project / "script.py"
    absolute = _write(tmp_path / "elsewhere" / "otherpkg" / "a.py").parent
    assert wd.resolve(absolute) == absolute
    with pytest.raises(ValueError):
        wd.resolve("does_not_exist_anywhere")
    with pytest.raises(ValueError):
        wd.resolve(tmp_path / "missing" / "abs")
    # then PYTHONPATH
    _write(tmp_path / "pythonpath" / "frompath" / "m.py")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "pythonpath"))
    assert wd.resolve("frompath") == tmp_path / "pythonpath" / "frompath"
    # an editable package (exca itself)
    assert wd.resolve("exca") == Path(exca.__file__).parent
    # a site-installed package cannot be copied
    with pytest.raises(ValueError, match="editable"):
        wd.resolve("yaml")
    # the standard library is not code to copy: "os" (frozen) copied nothing, "json"
    # copied the stdlib's folder, to shadow it in jobs
    for name in ("os", "json", "email.mime"):
        with pytest.raises(ValueError, match="standard library"):
            wd.resolve(name)


def test_copy_of_the_working_directory(project: Path, tmp_path: Path) -> None:
    """copied=["."]: the content of the cwd, even when the snapshot lies inside it (a
    cache folder under the project); ".." names land inside the snapshot."""
    _write(tmp_path / "shared_lib" / "util.py")
    folder = project / "cache" / "step" / "code" / "snap"
    with WorkDir(copied=[".", "../shared_lib"], folder=folder).activate():
        assert Path.cwd() == folder
    copied = _files(folder)
    assert {"script.py", "pkg/core.py", "shared_lib/util.py"} <= copied
    assert not [name for name in copied if name.startswith("cache/")]
    assert not (tmp_path / "project" / "cache" / "step" / "code" / "shared_lib").exists()
    (project / "pkg" / "core.py").write_text("VALUE = 2\n")  # the same snapshot: no recopy
    with WorkDir(copied=["."], folder=folder).activate():
        pass
    assert (folder / "pkg" / "core.py").read_text() == "VALUE = 1\n"


def test_python_environments_inside_a_copied_folder_are_skipped(
    project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """copied=["."] in a project holding its virtual env (or a conda env, or a bare
    site-packages): the installed packages are not the project's code, only the project's
    files are copied, and the log says what was left out."""
    _write(project / ".venv" / "pyvenv.cfg", "home = /usr/bin\n")
    _write(project / ".venv" / "lib" / "python3.11" / "site-packages" / "big" / "mod.py")
    _write(project / "envs" / "conda" / "conda-meta" / "history", "")
    _write(project / "envs" / "conda" / "lib" / "thing.py")
    _write(project / "vendor" / "site-packages" / "dep.py")
    _write(project / "vendor" / "own.py")
    folder = tmp_path / "code"
    with caplog.at_level("INFO", logger="exca"), WorkDir(copied=["."], folder=folder).activate():
        pass
    copied = _files(folder)
    assert {"script.py", "pkg/core.py", "vendor/own.py"} <= copied
    assert not [n for n in copied if n.startswith((".venv/", "envs/")) or "site-packages" in n]
    assert ".venv" in caplog.text and "environment" in caplog.text


def test_copy_happens_at_activation(project: Path, tmp_path: Path) -> None:
    folder = tmp_path / "code"
    wd = WorkDir(copied=["pkg", "script.py"], folder=folder)
    assert not folder.exists()  # nothing copied at construction
    with wd.activate():
        pass
    assert _files(folder) == {
        "pkg/__init__.py",
        "pkg/core.py",
        "pkg/sub/deep/mod.py",
        "pkg/skipme/mod.py",
        "pkg/skip_this.py",
        "script.py",
    }
    assert (folder / "pkg" / "core.py").read_text() == "VALUE = 1\n"


def test_includes_and_excludes(project: Path, tmp_path: Path) -> None:
    folder = tmp_path / "code"
    wd = WorkDir(
        copied=["pkg"], folder=folder, includes=("*.py", "*.yaml"), excludes=("skip*", "sub")
    )
    with wd.activate():
        pass
    assert _files(folder) == {
        "pkg/__init__.py",
        "pkg/core.py",
        "pkg/config.yaml",
        "pkg/__pycache__/core.py",  # the default excludes were replaced
        "pkg/.git/hooks.py",
    }


def test_relative_and_absolute_destinations(project: Path, tmp_path: Path) -> None:
    absolute = _write(tmp_path / "elsewhere" / "otherpkg" / "a.py").parent
    folder = tmp_path / "code"
    wd = WorkDir(copied=["pkg/sub", str(absolute)], folder=folder)
    wd.populate()
    assert _files(folder) == {"pkg/sub/deep/mod.py", "otherpkg/a.py"}


def test_a_folder_and_a_folder_inside_it_are_copied_whole_in_any_order(
    project: Path, tmp_path: Path
) -> None:
    """copied=["pkg/sub", "pkg"]: copying pkg/sub first made pkg exist, and the rest of
    pkg was skipped as "already there" (its __init__.py too: jobs imported an empty pkg)."""
    orders = (["pkg", "pkg/sub"], ["pkg/sub", "pkg"])
    copies = [
        _files(WorkDir(copied=c, folder=tmp_path / f"code{i}").populate())
        for i, c in enumerate(orders)
    ]
    assert copies[0] == copies[1]
    assert {"pkg/__init__.py", "pkg/core.py", "pkg/sub/deep/mod.py"} <= copies[1]


def test_existing_destinations_not_recopied(project: Path, tmp_path: Path) -> None:
    folder = tmp_path / "code"
    wd = WorkDir(copied=["pkg"], folder=folder)
    with wd.activate():
        pass
    _write(project / "pkg" / "core.py", "VALUE = 2\n")
    _write(project / "pkg" / "new.py")
    with WorkDir(copied=["pkg"], folder=folder).activate():
        pass
    assert (folder / "pkg" / "core.py").read_text() == "VALUE = 1\n"
    assert not (folder / "pkg" / "new.py").exists()
    # another folder gets a fresh snapshot
    other = tmp_path / "code2"
    WorkDir(copied=["pkg"], folder=other).populate()
    assert (other / "pkg" / "core.py").read_text() == "VALUE = 2\n"


def test_a_copy_that_failed_half_way_leaves_nothing_in_a_fixed_folder(
    project: Path, tmp_path: Path
) -> None:
    """The copy went file by file into the folder: one that failed half-way (here a broken
    link), or one still running when another submission to the same fixed folder looked,
    left a partial package that the snapshot's jobs imported, for good (never recopied)."""
    folder, shared = tmp_path / "code", tmp_path / "shared"
    broken = project / "pkg" / "b_broken.py"
    broken.symlink_to(tmp_path / "no-such-target.py")
    with pytest.raises(FileNotFoundError):
        WorkDir(copied=["pkg", "script.py"], folder=folder).populate()
    assert not folder.exists()  # (made by this copy: removed)
    with pytest.raises(FileNotFoundError):  # (a name moved in first: maybe in use, kept)
        WorkDir(copied=["script.py", "pkg"], folder=folder).populate()
    assert sorted(p.name for p in folder.iterdir()) == [SNAPSHOT_MARKER, "script.py"]
    shared.mkdir()
    (shared / "kept.txt").write_text("there before")
    with pytest.raises(FileNotFoundError):
        WorkDir(copied=["script.py", "pkg"], folder=shared).populate()
    assert not (shared / "pkg").exists()  # (what failed is not there at all)
    assert sorted(p.name for p in shared.iterdir()) == [SNAPSHOT_MARKER, "kept.txt", "script.py"]
    broken.unlink()
    WorkDir(copied=["script.py", "pkg"], folder=shared).populate()
    assert (shared / "pkg" / "core.py").read_text() == "VALUE = 1\n"
    assert (shared / "pkg" / "sub" / "deep" / "mod.py").exists()
    assert not [p for p in shared.iterdir() if p.name.startswith(".staging")]


def test_activate_changes_and_restores_cwd_and_sys_path(project: Path, tmp_path: Path) -> None:
    folder = tmp_path / "code"
    wd = WorkDir(copied=["pkg"], folder=folder)
    path_before = list(sys.path)
    with wd.activate() as active:
        assert Path(active) == folder
        assert Path.cwd() == folder
        assert sys.path[0] == str(folder)
        with wd.activate():  # re-entrant
            assert Path.cwd() == folder
            assert sys.path.count(str(folder)) == 1
        assert Path.cwd() == folder  # still active after the inner exit
        assert sys.path[0] == str(folder)
    assert Path.cwd() == project
    assert sys.path == path_before


def test_a_relative_folder_gives_jobs_absolute_import_paths(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """activate() changes the cwd: the paths it gives jobs (PYTHONPATH) must not be
    relative to the cwd it left."""
    _write(project / "src" / "srclib" / "__init__.py")
    monkeypatch.syspath_prepend(str(project / "src"))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    with WorkDir(copied=["src"], folder="snap").activate() as folder:
        assert Path(folder).is_absolute() and Path.cwd() == project / "snap"
        assert os.environ["PYTHONPATH"] == str(project / "snap" / "src")
    assert "PYTHONPATH" not in os.environ


def test_activate_restores_on_error(project: Path, tmp_path: Path) -> None:
    wd = WorkDir(copied=["pkg"], folder=tmp_path / "code")
    path_before = list(sys.path)
    with pytest.raises(KeyError), wd.activate():
        raise KeyError("inside")
    assert Path.cwd() == project
    assert sys.path == path_before


def _git(repo: Path, *args: str) -> str:
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
    )
    out = subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    _write(repo / "code.py", "A = 1\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "code.py")
    _git(repo, "commit", "-q", "-m", "first")
    return repo


def test_log_commit_clean_repo(repo: Path, tmp_path: Path) -> None:
    folder = tmp_path / "code"
    wd = WorkDir(copied=[repo], folder=folder, log_commit=True)
    with wd.activate():
        pass
    log = folder / "git-hashes.log"
    assert log.exists()
    assert _git(repo, "rev-parse", "HEAD") in log.read_text()
    assert (folder / "repo" / "code.py").exists()


def test_log_commit_dirty_repo(repo: Path, tmp_path: Path) -> None:
    _write(repo / "code.py", "A = 2\n")  # uncommitted change
    wd = WorkDir(copied=[repo], folder=tmp_path / "code", log_commit=True)
    cwd = Path.cwd()
    with pytest.raises(RuntimeError, match="uncommitted"), wd.activate():
        pass
    assert Path.cwd() == cwd
    assert not (tmp_path / "code" / "git-hashes.log").exists()
    # nothing was copied: once the change is reverted, the fixed folder gets the
    # committed code (the refused copy stayed, and was logged as the commit)
    assert not (tmp_path / "code" / "repo").exists()
    _git(repo, "checkout", "-q", "code.py")
    with wd.activate() as folder:
        assert (Path(folder) / "repo" / "code.py").read_text() == "A = 1\n"
        assert (Path(folder) / "git-hashes.log").exists()
    # without log_commit, a dirty repo is fine
    WorkDir(copied=[repo], folder=tmp_path / "code3").populate()


def test_log_commit_outside_a_repository(tmp_path: Path) -> None:
    """Not "uncommitted changes" (git diff fails there too): no repository, or no commit."""
    plain = tmp_path / "plain"
    _write(plain / "code.py", "A = 1\n")
    wd = WorkDir(copied=[plain], folder=tmp_path / "code", log_commit=True)
    with (
        pytest.raises(RuntimeError, match="is not in a git repository with a commit"),
        wd.activate(),
    ):
        pass
    _git(plain, "init", "-q")  # a repository without any commit yet
    wd = WorkDir(copied=[plain], folder=tmp_path / "code2", log_commit=True)
    with (
        pytest.raises(RuntimeError, match="is not in a git repository with a commit"),
        wd.activate(),
    ):
        pass


def test_log_commit_untracked_and_unrelated_files(repo: Path, tmp_path: Path) -> None:
    """An untracked file that would be copied refuses (the snapshot would not be the
    commit); one that would not (not in includes), or a change outside the copied
    folder, does not."""
    _write(repo / "lib" / "mod.py", "B = 1\n")
    _git(repo, "add", "lib/mod.py")
    _git(repo, "commit", "-q", "-m", "lib")
    _write(repo / "notes.txt", "not copied\n")
    _write(repo / "code.py", "A = 2\n")  # dirty, but outside the copied folder
    folder = tmp_path / "code"
    with WorkDir(copied=[repo / "lib"], folder=folder, log_commit=True).activate():
        pass
    assert (folder / "git-hashes.log").exists()
    _write(repo / "lib" / "new.py", "C = 1\n")
    wd = WorkDir(copied=[repo / "lib"], folder=tmp_path / "code2", log_commit=True)
    with pytest.raises(RuntimeError, match=r"new\.py"), wd.activate():
        pass


def test_log_commit_ignores_what_the_copy_leaves_out(repo: Path, tmp_path: Path) -> None:
    """An untracked file under an excluded folder, or a change to a tracked file the
    filters leave out (a data file), refused the submission: neither is copied."""
    _write(repo / "lib" / "mod.py", "B = 1\n")
    _write(repo / "lib" / "params.yaml", "lr: 1\n")
    _git(repo, "add", "lib/mod.py", "lib/params.yaml")
    _git(repo, "commit", "-q", "-m", "lib")
    _write(repo / "lib" / "wip" / "draft.py", "D = 1\n")  # untracked, excluded folder
    _write(repo / "lib" / "params.yaml", "lr: 2\n")  # tracked, changed, not copied
    excludes = ["__pycache__", ".git", "wip"]
    folder = tmp_path / "code"
    WorkDir(copied=[repo / "lib"], folder=folder, excludes=excludes, log_commit=True).populate()
    assert (folder / "git-hashes.log").exists() and (folder / "lib" / "mod.py").exists()
    assert not (folder / "lib" / "wip").exists()
    _write(repo / "lib" / "mod.py", "B = 2\n")  # what is copied: refused
    wd = WorkDir(
        copied=[repo / "lib"], folder=tmp_path / "code2", excludes=excludes, log_commit=True
    )
    with pytest.raises(
        RuntimeError, match=r"uncommitted changes in what would be copied \(mod\.py\)"
    ):
        wd.populate()


def test_log_commit_ignores_a_python_environment_in_a_copied_folder(
    repo: Path, tmp_path: Path
) -> None:
    """A virtualenv inside a copied folder is never copied, yet its untracked files
    refused the submission as files "which would be copied" (a probe)."""
    _write(repo / "lib" / "mod.py", "B = 1\n")
    _git(repo, "add", "lib/mod.py")
    _git(repo, "commit", "-q", "-m", "lib")
    _write(repo / "lib" / "venvin" / "pyvenv.cfg", "home = /usr/bin\n")
    _write(repo / "lib" / "venvin" / "lib" / "site" / "pkg.py", "P = 1\n")  # untracked
    folder = tmp_path / "code"
    WorkDir(copied=[repo / "lib"], folder=folder, log_commit=True).populate()
    assert (folder / "git-hashes.log").exists() and (folder / "lib" / "mod.py").exists()
    assert not (folder / "lib" / "venvin").exists()
    # a snapshot in a copied folder (a cache kept in the project) is not copied either
    _write(repo / "lib" / "cache" / "snap" / ".exca-snapshot", "")
    _write(repo / "lib" / "cache" / "snap" / "pkg" / "__init__.py", "S = 1\n")
    WorkDir(copied=[repo / "lib"], folder=tmp_path / "code1", log_commit=True).populate()
    assert not (tmp_path / "code1" / "lib" / "cache").exists()
    _write(repo / "lib" / "new.py", "N = 1\n")  # (an untracked file that is copied: refused)
    wd = WorkDir(copied=[repo / "lib"], folder=tmp_path / "code2", log_commit=True)
    with pytest.raises(
        RuntimeError, match=r"git does not track, which would be copied \(new\.py\)"
    ):
        wd.populate()


def test_log_commit_sees_a_change_to_a_file_copied_by_name(repo: Path, tmp_path: Path) -> None:
    """A file named in ``copied`` is copied whatever ``includes`` says: a change to it
    passed the filter of what would be copied (found by review)."""
    _write(repo / "settings.yaml", "lr: 1\n")
    _git(repo, "add", "settings.yaml")
    _git(repo, "commit", "-q", "-m", "settings")
    _write(repo / "settings.yaml", "lr: 2\n")
    wd = WorkDir(copied=[repo / "settings.yaml"], folder=tmp_path / "code", log_commit=True)
    with pytest.raises(RuntimeError, match="uncommitted changes"):
        wd.populate()


def test_public_module() -> None:
    from exca.workdir import WorkDir as Public  # type: ignore[import-not-found]

    assert Public is WorkDir


# --- jobs run from their snapshot ----------------------------------------------------------------
class Reads(pydantic.BaseModel):
    """Reads pkg.core.VALUE in the job (imported from the snapshot)."""

    model_config = pydantic.ConfigDict(extra="forbid")
    n: int = 0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def value(self) -> str:
        import pkg.core

        return f"{pkg.core.VALUE} {os.getcwd()}"


class MapReads(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def values(self, items: list[int]) -> tp.Iterator[str]:
        import pkg.core

        for _ in items:
            yield f"{pkg.core.VALUE} {os.getcwd()}"


@pytest.mark.parametrize("cluster", ["local", "debug"])
def test_jobs_run_the_code_of_their_submission(project: Path, cluster: str) -> None:
    """Each submission copies the code as it is then (maps too); a relative cache folder
    inside the copied project works, and earlier snapshots are not copied again."""
    infra = {"folder": "cache", "cluster": cluster, "workdir": {"copied": ["."]}}
    seen = []
    for n in range(2):  # (the second round's snapshots are made beside the first's)
        _write(project / "pkg" / "core.py", f"VALUE = {n}\n")
        value, cwd = Reads(n=n, infra=infra).value().split()
        (mapped,) = MapReads(infra=infra).values([n])
        seen.append((value, mapped.split()[0]))
        assert "/code/" in cwd and Path(cwd).is_relative_to(project / "cache")
    if cluster == "local":
        assert seen == [("0", "0"), ("1", "1")]
    else:  # in this process: imported from the first snapshot, then kept by sys.modules
        assert seen == [("0", "0")] * 2
        sys.modules.pop("pkg.core", None)
        sys.modules.pop("pkg", None)
    # 4 snapshots, each with the project's 8 python files once (not the earlier snapshots)
    snapshots = [p for p in (project / "cache").rglob(SNAPSHOT_MARKER)]
    assert len(snapshots) == 4
    assert len(list((project / "cache").rglob("core.py"))) == 4


def test_the_snapshot_and_job_logs_get_the_cache_permissions(project: Path) -> None:
    """A shared cache (permissions=0o775) under a private umask: the code snapshot and the
    job's logs were created 0o700/0o600, unreadable by the colleagues sharing it."""
    infra = {"folder": "cache", "cluster": "local", "permissions": 0o775}
    previous = os.umask(0o077)
    try:
        task = Reads(n=7, infra={**infra, "workdir": {"copied": ["pkg"]}})
        task.value()
    finally:
        os.umask(previous)
    (snapshot,) = [p.parent for p in (project / "cache").rglob(SNAPSHOT_MARKER)]
    log = Path(task.infra.job().paths.stdout)
    shared = [snapshot, snapshot / "pkg" / "core.py", snapshot.parent, log.parent, log]
    assert {p: oct(p.stat().st_mode & 0o777) for p in shared} == dict.fromkeys(shared, "0o775")


def test_a_maps_snapshot_gets_the_cache_permissions(project: Path) -> None:
    """The same for a map: its code snapshot (and the step's code/ folder) were made with
    the umask's mode (0o700 here, 0o755 under 0o022): each call's workdir was copied from
    the infra's own, which does not hold the cache's permissions (the execution's does),
    so the colleagues sharing the cache could neither read it nor add theirs to code/."""
    infra = {"folder": "cache", "cluster": "local", "permissions": 0o775}
    previous = os.umask(0o077)
    try:
        assert len(list(MapReads(infra={**infra, "workdir": {"copied": ["pkg"]}}).values([1]))) == 1
    finally:
        os.umask(previous)
    (snapshot,) = [p.parent for p in (project / "cache").rglob(SNAPSHOT_MARKER)]
    shared = [snapshot, snapshot / "pkg" / "core.py", snapshot.parent]
    assert {p: oct(p.stat().st_mode & 0o777) for p in shared} == dict.fromkeys(shared, "0o775")


@pytest.mark.parametrize("kind", ["task", "map"])
def test_a_code_folder_left_by_a_killed_submitter_gets_the_permissions(
    project: Path, kind: str
) -> None:
    """A submission killed between the mkdir of a step's code/ folder and its chmod left
    it with the umask's mode (0o755 under 0o022), and the next submission made its
    snapshot in it, so it was never given the cache's permissions (the snapshot folder
    was made as one of the user's: repaired only when found empty): the colleagues
    sharing the cache could never add their snapshots there. It now gets them, as the
    other folders of the cache."""
    infra = {"folder": "cache", "cluster": "local", "workdir": {"copied": ["pkg"]}}
    previous = os.umask(0o022)
    try:
        node = Reads(n=3, infra=infra) if kind == "task" else MapReads(infra=infra)
        folder = node.infra.uid_folder()
        assert folder is not None
        code = folder.parent / "code"
        code.mkdir(parents=True)  # (the umask's mode: as a kill before its chmod leaves it)
        assert stat.S_IMODE(code.stat().st_mode) == 0o755
        if isinstance(node, Reads):
            assert node.value().startswith("1 ")
        else:
            assert [v.split()[0] for v in node.values([1])] == ["1"]
    finally:
        os.umask(previous)
    (snapshot,) = code.iterdir()
    assert {p: oct(stat.S_IMODE(p.stat().st_mode)) for p in (code, snapshot)} == {
        code: "0o777",
        snapshot: "0o777",
    }


def test_nodes_of_one_array_share_one_snapshot(project: Path) -> None:
    """Two configs and two map calls run in one graph go out as one array (same cluster,
    resources and workdir), copying the code once (a snapshot folder per node split them
    into an array each)."""
    infra = {"folder": "cache", "cluster": "local", "workdir": {"copied": ["pkg"]}}
    tasks = [Reads(n=n, infra=infra).value.node() for n in range(2)]
    maps = [MapReads(infra=infra).values.node([n]) for n in range(2)]
    plan = exca.graph.plan(*tasks, *maps)
    assert [len(a.nodes) for a in plan.arrays] == [4]
    exca.graph.run(*tasks, *maps)
    cwds = {t.result().split()[1] for t in tasks} | {m.result()[0].split()[1] for m in maps}
    assert len(cwds) == 1 and "/code/" in next(iter(cwds))
    links = {(t.folder / "code").resolve() for t in tasks if t.folder is not None}
    assert links == {Path(c) for c in cwds}


def _code_link_names_the_snapshot_it_ran(task: Reads, cwd: str, relative: bool) -> None:
    folder = task.infra.uid_folder()
    assert folder is not None
    link = folder / "code"
    assert link.resolve() == Path(cwd).resolve(), (os.readlink(link), cwd)
    assert (link / "pkg" / "core.py").exists()
    assert os.path.isabs(os.readlink(link)) is not relative


@pytest.mark.parametrize("where", ["cache", "relative", "absolute"])
def test_the_code_link_names_the_snapshot_the_job_ran_from(project: Path, where: str) -> None:
    """A config folder's `code` link names the snapshot its job ran from (the job's cwd):
    relative in the cache (it survives moving it), absolute elsewhere. A fixed folder
    given relative to the cwd ("snap") was linked as written, relative to the config
    folder: the link named a folder that does not exist (the submission works from the
    snapshot, so the folder was not made absolute either)."""
    workdir: dict[str, tp.Any] = {"copied": ["pkg"]}
    if where != "cache":
        workdir["folder"] = "snap" if where == "relative" else str(project / "snap")
    task = Reads(n=11, infra={"folder": "cache", "cluster": "local", "workdir": workdir})
    _, cwd = task.value().split()
    assert Path(cwd) == (project / "snap" if where != "cache" else Path(cwd))
    _code_link_names_the_snapshot_it_ran(task, cwd, relative=where == "cache")


@pytest.mark.slurm
@pytest.mark.timeout(120)
def test_the_code_link_of_a_slurm_job_run_from_its_snapshot(
    project: Path, slurm_cluster: tp.Any
) -> None:
    """The same for a Slurm job (its record and link written by the submitter, which works
    from the snapshot while it submits): relative, and it resolves from the config folder."""
    infra = {
        "folder": "cache",
        "cluster": "slurm",
        "slurm_partition": slurm_cluster.partition,
        "cpus_per_task": 1,
        "timeout_min": 5,
        "workdir": {"copied": ["pkg"]},
    }
    task = Reads(n=12, infra=infra)
    _, cwd = task.value().split()
    assert "/code/" in cwd and Path(cwd).is_relative_to(project / "cache")
    _code_link_names_the_snapshot_it_ran(task, cwd, relative=True)


class ReadsSrcLayout(pydantic.BaseModel):
    """Reads srclib.VALUE and srclib.linked.VALUE in the job (a src layout package with a
    symlinked sub-package)."""

    model_config = pydantic.ConfigDict(extra="forbid")
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def value(self) -> str:
        import srclib
        import srclib.linked

        return f"{srclib.VALUE} {srclib.linked.VALUE} {srclib.__file__}"


@pytest.mark.parametrize("copied", ["src/srclib", "src", "."])
@pytest.mark.parametrize("cluster", ["local", "debug"])
def test_src_layout_and_symlinked_subpackages_run_from_the_snapshot(
    project: Path, monkeypatch: pytest.MonkeyPatch, cluster: str, copied: str
) -> None:
    """A package under src/ (on sys.path, as an editable install puts it) is imported from
    the snapshot, not from the live tree; a symlinked sub-package is copied too (also when
    its target is copied as well), a symlinked data folder is not walked."""
    _write(project / "src" / "srclib" / "__init__.py", "VALUE = 'snapshot'\n")
    _write(project / "elsewhere" / "linked" / "__init__.py", "VALUE = 'linked'\n")
    (project / "src" / "srclib" / "linked").symlink_to(project / "elsewhere" / "linked")
    _write(project / "datasets" / "huge" / "loader.py")
    (project / "src" / "srclib" / "data").symlink_to(project / "datasets")
    # two packages linking to each other: each copied once (not over and over)
    _write(project / "src" / "srclib" / "a" / "__init__.py")
    _write(project / "src" / "srclib" / "b" / "__init__.py")
    (project / "src" / "srclib" / "a" / "to_b").symlink_to(project / "src" / "srclib" / "b")
    (project / "src" / "srclib" / "b" / "to_a").symlink_to(project / "src" / "srclib" / "a")
    monkeypatch.syspath_prepend(str(project / "src"))
    infra = {"folder": "cache", "cluster": cluster, "workdir": {"copied": [copied]}}
    job = ReadsSrcLayout(infra=infra).infra.job()
    _write(project / "src" / "srclib" / "__init__.py", "VALUE = 'live'\n")  # keep editing
    try:
        value, linked, origin = job.result().split()
    finally:
        sys.modules.pop("srclib.linked", None)
        sys.modules.pop("srclib", None)
    assert (value, linked) == ("snapshot", "linked")
    assert "/code/" in origin and Path(origin).is_relative_to(project / "cache")
    assert not list(Path(origin).parent.rglob("loader.py"))  # (the data link: not walked)
    package = Path(origin).parent
    inits = {p.parent.relative_to(package).as_posix() for p in package.rglob("__init__.py")}
    assert inits == {".", "linked", "a", "a/to_b", "b", "b/to_a"}  # (a/to_b/to_a: a loop)
    assert "PYTHONPATH" not in os.environ or str(project / "cache") not in os.environ["PYTHONPATH"]


class Prepared(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    n: int = 3
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def prepare(self) -> list[int]:
        import pkg.core

        return [pkg.core.VALUE] * self.n


class Fitted(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    data: Prepared
    lr: float = 0.1
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> float:
        return self.lr * sum(self.data.prepare())


def test_a_sub_config_shared_by_a_sweep_with_a_workdir(project: Path) -> None:
    """Each instance of a config gets its own new snapshot folder: two instances of one
    sub-config (clones in a job array, two parents in a graph) are still one node (they
    were refused as 'differing in how they run')."""
    infra = {"folder": "cache", "cluster": "local", "workdir": {"copied": ["pkg"]}}
    base = Fitted(data={"n": 3, "infra": infra}, infra=infra)
    clones = [base.infra.clone_obj({"lr": lr}) for lr in (0.1, 0.2)]
    plan = exca.graph.plan(*(c.fit.node() for c in clones))
    assert len(plan.entries) == 3  # one Prepared node for both
    with base.infra.job_array() as array:
        array.extend(base.infra.clone_obj({"lr": lr}) for lr in (0.5, 1.0))
    assert [t.fit() for t in array] == [1.5, 3.0]
    sys.modules.pop("pkg.core", None)
    sys.modules.pop("pkg", None)
