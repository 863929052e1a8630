"""WorkDir: run a job from a snapshot of the code, so that editing files while jobs are
queued does not change what they run.

The copy and the ``chdir`` happen when jobs are submitted (not at import): files matching
``includes`` under each ``copied`` name are copied into ``folder`` (once), then the
submitting process works from there while it submits.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.util
import logging
import os
import shutil
import sys
import sysconfig
import typing as tp
from pathlib import Path

import pydantic

from ..storage.files import chmod, chmod_folder, make_folder

logger = logging.getLogger("exca")


SNAPSHOT_MARKER = ".exca-snapshot"  # in every snapshot folder
DOT_COPIED = ".exca-copied"  # a copy of "." completed (entries moved in one by one)


def _move_unless_there(staged: Path, destination: Path) -> None:
    """Rename a staged copy into place; one already there (another submission's, at the
    same time) is kept."""
    if destination.exists():
        return
    try:
        os.rename(staged, destination)  # (a folder onto a non-empty one fails: kept)
    except OSError:
        if not destination.exists():
            raise


def _is_environment(path: Path, name: str) -> bool:
    """A virtual env, a conda env or an installation folder: installed packages, never the
    project's own code (copying "." with a ``.venv`` inside would copy thousands of files
    that jobs import from the environment anyway)."""
    if name in ("site-packages", "dist-packages"):
        return True
    return (path / "pyvenv.cfg").is_file() or (path / "conda-meta").is_dir()


class WorkDir(pydantic.BaseModel):
    """Code snapshot settings (``copied`` names folders/files to copy, see module doc)."""

    model_config = pydantic.ConfigDict(extra="forbid", defer_build=True)
    copied: tp.Sequence[str | Path]
    folder: Path | str | None = None
    log_commit: bool = False
    includes: tp.Sequence[str] = ("*.py",)
    excludes: tp.Sequence[str] = ("__pycache__", ".git")
    _active: int = pydantic.PrivateAttr(default=0)
    # the infra's permissions (set by it, not a setting): applied to the snapshot
    _permissions: int | None = pydantic.PrivateAttr(default=None)
    # how many folders at the end of ``folder`` are exca's (2: the snapshot and its code/
    # folder, when the infra names it under its step folder), given the permissions when
    # found without them (files.make_folder: a kill between a mkdir and its chmod)
    _exca_levels: int = pydantic.PrivateAttr(default=0)

    @pydantic.field_validator("copied")
    @classmethod
    def _not_empty(cls, value: tp.Sequence[str | Path]) -> tp.Sequence[str | Path]:
        if not value:
            raise ValueError("WorkDir.copied must name at least one folder or file to copy")
        return value

    @pydantic.field_validator("folder")
    @classmethod
    def _absolute(cls, value: Path | str | None) -> Path | None:
        # (the submission works from the snapshot, so a folder relative to the cwd it
        # left would name another place: e.g. the job's `code` link, written then)
        return None if value is None else Path(value).absolute()

    def resolve(self, name: str | Path) -> Path:
        """Find what a copied name refers to: cwd, PYTHONPATH, sys.path, then editable packages."""
        path = Path(name)
        if path.is_absolute():
            if not path.exists():
                raise ValueError(f"WorkDir: {path} does not exist")
            return path
        candidates = [Path.cwd()]
        candidates += [Path(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        stdlib = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")}
        candidates += [
            Path(p) for p in sys.path if p and p not in stdlib and "site-packages" not in p
        ]
        for base in candidates:
            if (base / path).exists():
                return base / path
        spec = importlib.util.find_spec(str(name))
        if spec is not None and str(name).split(".")[0] in sys.stdlib_module_names:
            raise ValueError(
                f"WorkDir: {name!r} is a module of Python's standard library, not your code: "
                "jobs have it already (remove it from copied, or give the path of a folder "
                "of yours with that name)"
            )
        if spec is not None and spec.origin:
            origin = Path(spec.origin)
            root = origin.parent if origin.name == "__init__.py" else origin
            if "site-packages" in str(root) or "dist-packages" in str(root):
                raise ValueError(
                    f"WorkDir: package {name!r} is installed in {root}, it is not editable "
                    "(install it with pip install -e, or copy a folder path instead)"
                )
            return root
        raise ValueError(f"WorkDir: could not find {name!r} in cwd, PYTHONPATH or sys.path")

    def _copy_tree(self, source: Path, destination: Path, skip: Path) -> None:
        """Copy the included files of ``source`` (``skip``: the snapshot itself, when it
        lies inside the source, e.g. a cache folder under a copied ".")."""

        def excluded(name: str) -> bool:
            return any(fnmatch.fnmatch(name, pattern) for pattern in self.excludes)

        if source.is_file():
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
            return
        skipped = skip.resolve()
        # the real folders from the top down to each walked one: a symlink back to one of
        # them is a loop (packages linking to each other included)
        chains = {str(source): {source.resolve()}}
        environments: list[Path] = []
        for root, dirs, files in os.walk(source, followlinks=True):
            chain = chains.pop(root, set())
            kept = []
            for d in dirs:
                path = Path(root) / d
                real = path.resolve()
                # never a snapshot (this one, or earlier ones when the cache is in the
                # project); a symlinked folder only if it is a package (not a link to a
                # data set)
                if excluded(d) or real == skipped or (path / SNAPSHOT_MARKER).exists():
                    continue
                if _is_environment(path, d):
                    environments.append(path)
                    continue
                if path.is_symlink() and not (path / "__init__.py").exists():
                    continue
                if real in chain:
                    continue
                chains[os.path.join(root, d)] = chain | {real}
                kept.append(d)
            dirs[:] = kept
            rel = Path(root).relative_to(source)
            for name in files:
                if excluded(name) or not any(fnmatch.fnmatch(name, p) for p in self.includes):
                    continue
                target = destination / rel / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(root) / name, target)
        if environments:
            shown = ", ".join(str(p) for p in environments[:3])
            logger.info("WorkDir: not copying the Python environment(s) in %s", shown)

    def _copy_staged(self, source: Path, destination: Path, folder: Path) -> None:
        """Copy ``source`` to ``destination`` (inside the snapshot ``folder``) through a
        staging folder, then a rename: what another submission finds there is complete.
        (Copied in place, a copy that failed half-way, or one still running while another
        submission to a fixed folder looked, left a partial package that every later job
        of the snapshot imported.)"""
        staging = folder / f".staging-{os.getpid()}-{os.urandom(4).hex()}"
        try:
            staged = staging / "copy"
            self._copy_tree(source, staged, skip=folder)
            if destination == folder:  # (".": its content, entry by entry)
                for entry in staged.iterdir() if staged.is_dir() else ():
                    _move_unless_there(entry, folder / entry.name)
            elif staged.exists():
                destination.parent.mkdir(parents=True, exist_ok=True)
                _move_unless_there(staged, destination)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _copies(
        self, relative: Path, source: Path | None = None, envs: dict[Path, bool] | None = None
    ) -> bool:
        """Whether a file (relative to a copied folder ``source``) is copied: its name
        included, and neither it nor a folder above it excluded, nor in a Python
        environment or a code snapshot (``envs``: memo of the folders looked at)."""
        name = relative.name
        if not any(fnmatch.fnmatch(name, p) for p in self.includes):
            return False
        if any(fnmatch.fnmatch(part, p) for part in relative.parts for p in self.excludes):
            return False
        if source is None:
            return True
        memo = {} if envs is None else envs
        folder = source
        for part in relative.parts[:-1]:
            folder = folder / part
            found = memo.get(folder)
            if found is None:
                skipped = _is_environment(folder, part) or (folder / SNAPSHOT_MARKER).exists()
                found = memo[folder] = skipped
            if found:
                return False  # (environments and snapshots are never copied: _copy_tree)
        return True

    def _commit_lines(self) -> list[str]:
        """``<source>: <commit>`` per copied name (RuntimeError if one is not committed)."""
        import subprocess  # (only log_commit needs it: kept out of `import exca`)

        lines = []
        for name in self.copied:
            source = self.resolve(name)
            cwd = source if source.is_dir() else source.parent
            head = subprocess.run(
                ["git", "rev-parse", "--verify", "HEAD"], cwd=cwd, capture_output=True, text=True
            )
            if head.returncode:  # (git diff would fail too: not "uncommitted changes")
                reason = head.stderr.strip().splitlines()[-1:] or ["git rev-parse failed"]
                raise RuntimeError(
                    f"WorkDir(log_commit=True): {source} is not in a git repository with a "
                    f"commit ({reason[0]}); commit it in a repository, or set log_commit=False"
                )
            # only what is copied counts (another folder of the repository may be dirty,
            # and so may files the filters leave out: a data file, an excluded folder)
            dirty = subprocess.run(
                [
                    "git",
                    "diff",
                    "HEAD",
                    "--no-renames",
                    "--name-only",
                    "-z",
                    "--relative",
                    "--",
                    str(source),
                ],
                cwd=cwd,
                capture_output=True,
                text=True,
            )
            # (a copied file is copied whatever the filters say; --no-renames: a rename
            # lists the old name too)
            whole = source.is_file()
            envs: dict[Path, bool] = {}
            changed = [
                f
                for f in dirty.stdout.split("\0")
                if f and (whole or self._copies(Path(f), source, envs))
            ]
            if dirty.returncode or changed:
                raise RuntimeError(
                    f"WorkDir(log_commit=True): {source} has uncommitted changes in what "
                    f"would be copied ({', '.join(changed[:5]) or dirty.stderr.strip()}); "
                    "commit them first"
                )
            untracked = subprocess.run(  # (-z: names as they are, not quoted)
                ["git", "ls-files", "-z", "--others", "--exclude-standard", "--", str(source)],
                cwd=cwd,
                capture_output=True,
                text=True,
            ).stdout.split("\0")
            copied = [f for f in untracked if f and (whole or self._copies(Path(f), source, envs))]
            if copied:
                raise RuntimeError(
                    f"WorkDir(log_commit=True): {source} has files git does not track, which "
                    f"would be copied ({', '.join(copied[:5])}); commit them (or ignore them) first"
                )
            lines.append(f"{source}: {head.stdout.strip()}")
        return lines

    def populate(self) -> Path:
        """Copy the code into ``folder`` (only what is not there yet); return the folder."""
        if self.folder is None:
            raise RuntimeError("WorkDir.folder is not set (the infra sets it from its own folder)")
        folder = Path(self.folder).absolute()  # (activate() changes the cwd)
        log = folder / "git-hashes.log"
        # checked before copying: a refused (dirty) copy must not stay in a fixed folder,
        # where a later submission would log a commit next to that uncommitted code
        commits = self._commit_lines() if self.log_commit and not log.exists() else None
        permissions = self._permissions
        created = not folder.exists()
        make_folder(folder, permissions, levels=self._exca_levels)  # (0: maybe the user's)
        (folder / SNAPSHOT_MARKER).touch()  # (a later copy of "." skips this folder)
        copied = False
        try:
            # (a folder before what is inside it: copied first, "mylib/sub" would make
            # "mylib" exist, and the rest of mylib would be skipped)
            for source, relative in sorted(self._sources(), key=lambda pair: len(pair[1].parts)):
                destination = folder / relative  # "." copies the content into the snapshot
                done = folder / DOT_COPIED if destination == folder else destination
                if done.exists():
                    continue  # never recopied: jobs of this snapshot keep the same code
                self._copy_staged(source, destination, folder)
                if destination == folder:  # (what was there is kept: only added to)
                    done.touch()
                copied = True
        except BaseException:
            # only a folder holding nothing but its marker: anything moved in may be in
            # use by another submission to the same folder already
            if created and {p.name for p in folder.iterdir()} <= {SNAPSHOT_MARKER}:
                with contextlib.suppress(OSError):
                    (folder / SNAPSHOT_MARKER).unlink()
                    folder.rmdir()
            raise
        if commits is not None:
            log.write_text("\n".join(commits) + "\n", encoding="utf8")
        if permissions is not None and (copied or commits is not None):
            _chmod_tree(folder, permissions)  # (users of a shared cache read the code too)
        return folder

    @contextlib.contextmanager
    def activate(self) -> tp.Iterator[Path]:
        """Copy if needed, then work from the copy (cwd and sys.path) within the context."""
        folder = self.populate()
        if self._active:
            self._active += 1
            try:
                yield folder
            finally:
                self._active -= 1
            return
        previous = Path.cwd()
        self._active = 1
        roots = [str(root) for root in self.import_roots(folder)]
        previous_pythonpath = os.environ.get("PYTHONPATH")
        os.chdir(folder)
        sys.path[0:0] = roots
        # jobs are new processes (local, Slurm): they find the copied packages through
        # PYTHONPATH, read when they are submitted (the cwd alone covers only the root)
        if len(roots) > 1:
            paths = roots[1:] + ([previous_pythonpath] if previous_pythonpath else [])
            os.environ["PYTHONPATH"] = os.pathsep.join(paths)
        try:
            yield folder
        finally:
            self._active = 0
            os.chdir(previous)
            if previous_pythonpath is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = previous_pythonpath
            for root in roots:
                with contextlib.suppress(ValueError):
                    sys.path.remove(root)

    def _sources(self) -> tp.Iterator[tuple[Path, Path]]:
        """What each copied name resolves to, and its path relative to the snapshot."""
        for name in self.copied:
            source = self.resolve(name)
            relative = Path(os.path.normpath(name))
            if relative.is_absolute() or relative.parts[:1] == ("..",):
                relative = Path(source.name)  # (never outside the snapshot)
            yield source, relative

    def import_roots(self, folder: Path) -> list[Path]:
        """The folders of the snapshot that imports start from: the snapshot itself, the
        folder holding each copied package (``src`` for ``src/mylib``), and each copied
        folder that was itself on ``sys.path`` (``src`` of a src layout)."""
        on_path = []
        stdlib = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")}
        for text in sys.path:  # (installed packages stay where they are, e.g. a .venv copied)
            if text in stdlib or "site-packages" in text or "dist-packages" in text:
                continue
            with contextlib.suppress(OSError, ValueError):
                on_path.append(Path(text or ".").resolve())
        folder = Path(folder).absolute()  # (the cwd changes: relative paths would not hold)
        roots = [folder]
        for source, relative in self._sources():
            found = []
            if source.is_dir() and (source / "__init__.py").exists():
                found.append(folder / relative.parent)  # a package: imported from its parent
            elif source.suffix == ".py":
                found.append(folder / relative.parent)  # a module file
            if source.is_dir():  # path entries inside the copy: "src" of a src layout
                real = source.resolve()
                for entry in on_path:
                    if entry == real or real in entry.parents:
                        found.append(folder / relative / entry.relative_to(real))
            for root in found:
                root = Path(os.path.normpath(root))
                if root not in roots:
                    roots.append(root)
        return roots


def _chmod_tree(folder: Path, permissions: int) -> None:
    """Apply a cache's permissions to a snapshot: its folders and files (not what symlinks
    point to)."""
    chmod_folder(folder, permissions)
    for root, dirs, files in os.walk(folder):
        for names, change in ((dirs, chmod_folder), (files, chmod)):
            for name in names:
                path = os.path.join(root, name)
                if not os.path.islink(path):
                    change(path, permissions)
