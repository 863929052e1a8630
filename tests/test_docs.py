"""Every python block of the docs runs: the seed documents (../shared/seeds/*.md), docs/*.md
and README.md, with the conventions of pytest-markdown-docs (its own block extractor is
used): a block starts a new script unless marked ``continuation``; ``fixture:tmp_path``
provides ``tmp_path``; ``notest`` blocks are skipped. Scripts get the globals the seeds
expect, run in a temporary working directory, and their cluster resources are adapted to
the test cluster."""

from __future__ import annotations

import io
import os
import sys
import tokenize
import types
import typing as tp
from pathlib import Path

import numpy as np
import pydantic
import pytest
import yaml
from markdown_it import MarkdownIt
from pytest_markdown_docs.plugin import extract_fence_tests

import exca
import seed_globals

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT.parent / "shared" / "seeds"


def _documents() -> list[Path]:
    docs = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
    if SEEDS.is_dir():
        docs = [*sorted(SEEDS.glob("*.md")), *docs]
    return [d for d in docs if d.exists()]


def _without_comments(source: str) -> str:
    """The block's code without its comments: a comment naming Slurm ("add cluster='slurm'
    to run as a job") made the README's Quick start a Slurm test, skipped where none runs."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return source
    return " ".join(t.string for t in tokens if t.type != tokenize.COMMENT)


def _blocks() -> list[tp.Any]:
    parser = MarkdownIt("commonmark")
    params = []
    for path in _documents():
        text = path.read_text(encoding="utf8")
        for fence in extract_fence_tests(parser, text, 0, path):
            rel = path.relative_to(ROOT.parent) if path.is_relative_to(ROOT.parent) else path
            marks = []
            code = _without_comments(fence.source)
            if "slurm" in code or '"auto"' in code or "'auto'" in code:
                marks.append(pytest.mark.slurm)
            params.append(pytest.param(fence, id=f"{rel}:{fence.start_line}", marks=marks))
    return params


def test_seed_documents_are_available() -> None:
    if not SEEDS.is_dir():
        pytest.skip(f"seed documents not found at {SEEDS} (they live in ../shared/seeds)")
    assert sorted(SEEDS.glob("*.md")), "no seed markdown file"


def _clamp_resources(monkeypatch: pytest.MonkeyPatch, cluster: tp.Any) -> None:
    """Rewrite resources the docs ask for into what the one-node test cluster offers
    (where executions are built, so checks and submissions see the same values)."""
    from exca.infra.resources import SubmititMixin

    original = SubmititMixin._submitit_params

    def adapted(self: tp.Any) -> tuple[tuple[str, tp.Any], ...]:
        params = dict(original(self))
        if params.get("cpus_per_task"):
            params["cpus_per_task"] = min(
                params["cpus_per_task"], getattr(cluster, "cpus_per_node", 1) or 1
            )
        for name in ("gpus_per_node", "slurm_constraint"):
            params[name] = None
        if params.get("slurm_partition") is not None:
            params["slurm_partition"] = getattr(cluster, "partition", None)
        return tuple(params.items())

    monkeypatch.setattr(SubmititMixin, "_submitit_params", adapted)


@pytest.mark.parametrize("fence", _blocks())
def test_doc_block(
    fence: tp.Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    cluster = request.getfixturevalue("slurm_cluster") if "slurm" in request.keywords else None
    _clamp_resources(monkeypatch, cluster)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setattr(sys, "path", list(sys.path))  # (a block may add its project folder)
    torch = seed_globals.torch_module()
    monkeypatch.setitem(sys.modules, "torch", torch)
    if "346ce994" in fence.source:  # seed 003 checks the legacy v2 uid string
        monkeypatch.setenv("CONFDICT_UID_VERSION", "2")
    module = types.ModuleType("fence")
    namespace = module.__dict__
    # (the seeds' blocks expect these names; a block of our docs imports what it uses,
    # as a reader who copies it must: a forgotten import went unseen)
    # (both resolved: ../shared may be a symbolic link)
    injected = SEEDS.resolve() in Path(fence.source_path).resolve().parents
    if injected:
        namespace.update(
            np=np,
            pydantic=pydantic,
            yaml=yaml,
            torch=torch,
            exca=exca,
            TaskInfra=exca.TaskInfra,
            MapInfra=exca.MapInfra,
            TutorialTask=seed_globals.TutorialTask,
            TutorialMap=seed_globals.TutorialMap,
        )
    for name in fence.fixture_names:
        namespace[name] = request.getfixturevalue(name)
    code = compile(fence.source, str(fence.source_path), "exec", dont_inherit=True)
    exec(code, namespace)
    os.chdir(ROOT)


def _imports(path: Path) -> set[str]:
    """The modules a file imports, lazy imports inside functions included."""
    import ast

    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize(
    "layer,forbidden",
    [
        (
            "storage",
            ("exca.graph", "exca.infra", "exca.ops", "exca.helpers", "pydantic", "networkx"),
        ),
        ("graph", ("exca.infra", "exca.ops", "exca.helpers")),
    ],
)
def test_imports_go_one_way(layer: str, forbidden: tuple[str, ...]) -> None:
    """README: 'Storage knows nothing of pydantic nor of graphs; the graph layer knows
    infras only through nodes [...] Imports go one way: infra -> graph -> storage'."""
    wrong = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / "exca" / layer).rglob("*.py"))
        for name in _imports(path)
        if any(name == f or name.startswith(f"{f}.") for f in forbidden)
    }
    assert not wrong, sorted(wrong)
