"""IPython's %autoreload (notebooks): an edited module's config classes are updated in
place; their cached methods must run the new code and their uids see the new fields."""

from __future__ import annotations

import importlib
import os
import sys
import typing as tp
from pathlib import Path

import pydantic
import pytest

import exca

autoreload = pytest.importorskip("IPython.extensions.autoreload")

MODULE = """
import pydantic, exca


class Exp(pydantic.BaseModel):
    lr: float = 0.1
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def train(self) -> float:
        return self.lr * 10
"""

EDITED = MODULE.replace("lr: float = 0.1", "lr: float = 0.1\n    wd: float = 0.0").replace(
    "self.lr * 10", "self.lr * 7 + self.wd"
)


OLD: dict[tp.Any, tp.Any] = {}  # (autoreload's record of the earlier versions of objects)


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tp.Iterator[tp.Any]:
    (tmp_path / "reloaded_exp.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("reloaded_exp")
    sys.modules.pop("reloaded_exp", None)
    OLD.clear()


@pytest.mark.parametrize("used_before", [False, True])
def test_autoreload_of_an_edited_config_class(
    module: tp.Any, tmp_path: Path, used_before: bool
) -> None:
    """The method kept its old code (the wrong value cached under the new config's uid);
    once a uid had been computed, the reload failed half-way ("__setattr__() requires a
    code object with 1 free vars"): the new field stayed out of the uids."""
    Exp = module.Exp
    folder = tmp_path / "cache"
    if used_before:  # (a uid computed: the class's attribute changes are guarded)
        assert Exp(lr=0.5, infra={"folder": folder}).train() == 5.0
    (tmp_path / "reloaded_exp.py").write_text(EDITED)
    autoreload.superreload(module, old_objects=OLD)  # what %autoreload does with an edited module
    # (a notebook keeps using the class it imported: updated in place)
    exp = Exp(lr=0.5, wd=1.0, infra={"folder": folder})
    assert "wd=1" in exp.infra.uid()
    assert exp.train() == pytest.approx(4.5)
    with pytest.raises(RuntimeError, match="frozen"):  # still guarded
        exp.lr = 2.0


def test_autoreload_of_a_version_bump_and_of_options(module: tp.Any, tmp_path: Path) -> None:
    """The old method was kept with its old class default infra and options: a version
    bump (how a cache is invalidated after a code edit) still served the old results."""
    Exp = module.Exp
    folder = tmp_path / "cache"
    assert Exp(lr=0.5, infra={"folder": folder}).train() == 5.0
    edited = MODULE.replace('version="1"', 'version="2"').replace("* 10", "* 100")
    (tmp_path / "reloaded_exp.py").write_text(edited)
    autoreload.superreload(module, old_objects=OLD)
    exp = Exp(lr=0.5, infra={"folder": folder})
    assert exp.infra.uid() == "reloaded_exp.Exp.train,2/lr=0.50-bc03f631"
    assert exp.train() == 50.0
    options = edited.replace("@infra.apply", '@infra.apply(exclude_from_cache_uid=["lr"])')
    (tmp_path / "reloaded_exp.py").write_text(options)
    autoreload.superreload(module, old_objects=OLD)
    assert Exp(lr=0.5, infra={"folder": folder}).infra.uid() == "reloaded_exp.Exp.train,2/default"


def test_autoreload_of_an_edited_default_checks_the_cache_again(
    module: tp.Any, tmp_path: Path
) -> None:
    """lr's default edited (0.1 -> 0.2) and reloaded: Exp() is still "default", whose
    folder holds the result of lr=0.1. A new process says the default changed (its
    full-uid.yaml); this one had checked that folder already (for the same class and uid)
    and returned 1.0, the result of lr=0.1, for lr=0.2."""
    Exp = module.Exp
    folder = tmp_path / "cache"
    assert Exp(infra={"folder": folder}).train() == pytest.approx(1.0)
    (tmp_path / "reloaded_exp.py").write_text(MODULE.replace("lr: float = 0.1", "lr: float = 0.2"))
    autoreload.superreload(module, old_objects=OLD)
    exp = Exp(infra={"folder": folder})
    assert exp.lr == 0.2 and exp.infra.uid().endswith("/default")
    with pytest.raises(RuntimeError, match=r"Default lr=0.2 seems incompatible"):
        exp.train()


OWN_SETATTR = MODULE.replace(
    "    @infra.apply",
    "    def __setattr__(self, name, value):  # edited: v1\n"
    "        super().__setattr__(name, value)\n\n    @infra.apply",
)


def test_autoreload_keeps_frozen_configs_of_a_class_with_its_own_setattr(
    module: tp.Any, tmp_path: Path
) -> None:
    """The freeze guard around the class's own __setattr__ was replaced by the new one:
    frozen configs could change, their uid (and cache folder) then describing another."""
    (tmp_path / "reloaded_exp.py").write_text(OWN_SETATTR)
    autoreload.superreload(module, old_objects=OLD)
    Exp = module.Exp
    exp = Exp(lr=0.5, infra={"folder": tmp_path / "cache"})
    exp.infra.uid()  # (frozen)
    (tmp_path / "reloaded_exp.py").write_text(OWN_SETATTR.replace("v1", "v2"))
    autoreload.superreload(module, old_objects=OLD)
    with pytest.raises(RuntimeError, match="frozen"):
        exp.lr = 2.0
    unfrozen = Exp(lr=0.5)
    unfrozen.lr = 0.7  # (its own __setattr__, the new one, runs)
    assert unfrozen.lr == 0.7


LATE = """
import sys, pathlib
folder = pathlib.Path(sys.argv[1]); sys.path.insert(0, str(folder))
import late_exp  # its classes defined before autoreload is loaded
import IPython.extensions.autoreload as autoreload
Exp, old = late_exp.Exp, {}
assert Exp(lr=0.5, infra={"folder": folder / "cache"}).train() == 5.0
edited = (folder / "late_exp.py").read_text().replace(
    "@infra.apply", '@infra.apply(exclude_from_cache_uid=["lr"])'
)
(folder / "late_exp.py").write_text(edited)
autoreload.superreload(late_exp, old_objects=old)
print(Exp(lr=0.5, infra={"folder": folder / "cache"}).infra.uid())
"""


def test_autoreload_loaded_after_the_classes_were_defined(tmp_path: Path) -> None:
    """exca teaches autoreload when an infra method is defined while it is loaded: the
    reloaded module's new classes do that before autoreload updates the old ones."""
    import subprocess

    (tmp_path / "late_exp.py").write_text(MODULE)
    out = subprocess.run(
        [sys.executable, "-c", LATE, str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "late_exp.Exp.train,1/default"  # (the new options)


INNER = """
import pydantic


class Inner(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    x: int = 1
"""

OUTER = """
import pydantic, exca
from reloaded_inner import Inner

CALLS = []


class Outer(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    inner: Inner = Inner()
    items: list[Inner] = [Inner()]
    infra: exca.TaskInfra = exca.TaskInfra()

    @infra.apply
    def total(self) -> int:
        CALLS.append(1)
        return self.inner.x * 100 + sum(item.x for item in self.items)
"""


@pytest.fixture
def inner_and_outer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tp.Iterator[tuple[tp.Any, tp.Any]]:
    """The modules reloaded_inner (INNER) and reloaded_outer (OUTER, holding Inner), in
    tmp_path, imported; forgotten afterwards (with autoreload's record of old objects)."""
    (tmp_path / "reloaded_inner.py").write_text(INNER)
    (tmp_path / "reloaded_outer.py").write_text(OUTER)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield importlib.import_module("reloaded_inner"), importlib.import_module("reloaded_outer")
    finally:
        for name in ("reloaded_inner", "reloaded_outer"):
            sys.modules.pop(name, None)
        OLD.clear()


def test_autoreload_of_a_class_held_by_another_modules_defaults(
    tmp_path: Path, inner_and_outer: tuple[tp.Any, tp.Any]
) -> None:
    """Only Inner's module edited (Inner's default x 1 -> 2) and reloaded: Outer, in
    another module (or a notebook), kept the exports of its field defaults made with
    Inner's old defaults. Outer(items=[Inner(x=2)]), now at Inner's default, read as
    Outer's default [Inner(x=1)]: it took the "default" folder, computed by Outer()
    before, and returned its result (1 for 2); and Outer(), unchanged, was no longer
    "default" (computed again under another uid)."""
    inner_module, outer_module = inner_and_outer
    Outer, folder = outer_module.Outer, tmp_path / "cache"
    assert Outer(infra={"folder": folder}).total() == 101
    # (uids of values differing from the defaults: their exports are compared)
    assert "items=({x=3})" in Outer(items=[{"x": 3}]).infra.uid()
    assert "inner.x=3" in Outer(inner={"x": 3}).infra.uid()
    (tmp_path / "reloaded_inner.py").write_text(INNER.replace("x: int = 1", "x: int = 2"))
    autoreload.superreload(inner_module, old_objects=OLD)
    outer = Outer(items=[{"x": 2}], infra={"folder": folder})
    assert outer.infra.uid() != Outer().infra.uid()
    assert outer.total() == 102
    assert len(outer_module.CALLS) == 2
    default = Outer(infra={"folder": folder})
    assert default.infra.uid().endswith("/default")  # (its values are Outer's defaults)
    assert default.total() == 101
    assert len(outer_module.CALLS) == 2  # (read from the cache)


def test_autoreload_2_of_an_edited_field_default(module: tp.Any, tmp_path: Path) -> None:
    """IPython >= 9's %autoreload 2 (its "deduperreload") ran the edited line
    ``lr: float = 0.2`` again in the old class, which pydantic never sees: the edit was
    silently ignored, Exp() keeping lr=0.1 (its uid "default" and its cached result),
    until a kernel restart. Such a module is now reloaded in full."""
    deduper = getattr(autoreload, "DeduperReloader", None)
    if deduper is None:
        pytest.skip("an IPython without deduperreload (< 9)")
    reloader = autoreload.ModuleReloader()  # (what %autoreload 2 uses; it notes the mtimes)
    reloader.enabled = True
    reloader.deduper_reloader.enabled = True
    reloader.check()  # (the deduper notes the sources)
    Exp = module.Exp
    folder = tmp_path / "cache"
    assert Exp(infra={"folder": folder}).train() == pytest.approx(1.0)
    path = tmp_path / "reloaded_exp.py"
    path.write_text(MODULE.replace("lr: float = 0.1", "lr: float = 0.2"))
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 5))  # (a later edit)
    reloader.check()  # what %autoreload 2 does before a cell runs
    exp = Exp(infra={"folder": folder})
    assert exp.lr == 0.2 and exp.infra.uid().endswith("/default")
    assert "lr=0.10" in Exp(lr=0.1).infra.uid()
    with pytest.raises(RuntimeError, match=r"Default lr=0.2 seems incompatible"):
        exp.train()  # (as in a new process: the result of lr=0.1 is there)


def _deduper_reloader() -> tp.Any:
    """IPython's reloader as %autoreload 2 uses it (its deduper on), the sources noted."""
    if getattr(autoreload, "DeduperReloader", None) is None:
        pytest.skip("an IPython without deduperreload (< 9)")
    reloader = autoreload.ModuleReloader()
    reloader.enabled = True
    reloader.deduper_reloader.enabled = True
    reloader.check()  # (the deduper notes the sources)
    return reloader


def _edit(path: Path, text: str) -> None:
    path.write_text(text)
    stat = path.stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 5))  # (a later edit)


def test_autoreload_2_of_a_default_of_a_class_a_config_holds(
    tmp_path: Path, inner_and_outer: tuple[tp.Any, tp.Any]
) -> None:
    """Inner (no infra, in a module of its own) edited (x 1 -> 2) under %autoreload 2:
    a class whose defaults exca's uids depend on (Outer's fields hold it), reloaded in
    full, not by the deduper (which left Inner().x at 1)."""
    inner_module, outer_module = inner_and_outer
    reloader = _deduper_reloader()
    _edit(tmp_path / "reloaded_inner.py", INNER.replace("x: int = 1", "x: int = 2"))
    reloader.check()
    assert inner_module.Inner().x == 2
    Outer = outer_module.Outer
    assert Outer(items=[{"x": 2}]).infra.uid() != Outer().infra.uid()


PLAIN = """
import dataclasses
import pydantic

STATE = []  # (a module-level cache)


@dataclasses.dataclass
class Point:
    x: int = 1


class Settings(pydantic.BaseModel):
    y: int = 1


def value():
    return 1
"""


class AnyModel(pydantic.BaseModel):
    """A config holding any pydantic model (its field's class says nothing of which)."""

    model: pydantic.BaseModel | None = None
    infra: exca.TaskInfra = exca.TaskInfra()

    @infra.apply
    def run(self) -> int:
        return 1


def test_autoreload_2_keeps_the_state_of_modules_exca_does_not_use(
    module: tp.Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module of the user's defining a dataclass and a pydantic model that no config
    holds, its function edited under %autoreload 2 (exca imported, configs defined, one
    with a field of any pydantic model): the deduper updates it and keeps its state
    (STATE), as without exca. Every module defining such classes was reloaded in full,
    its body run again: STATE was a new list (a module-level cache emptied, a client or
    model made anew at each edit)."""
    (tmp_path / "plain_module.py").write_text(PLAIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    plain = importlib.import_module("plain_module")
    try:
        reloader = _deduper_reloader()
        state = plain.STATE
        _edit(tmp_path / "plain_module.py", PLAIN.replace("return 1", "return 2"))
        reloader.check()
        assert plain.value() == 2
        assert plain.STATE is state
    finally:
        sys.modules.pop("plain_module", None)


def test_autoreload_of_a_class_imported_by_name_warns(
    tmp_path: Path, inner_and_outer: tuple[tp.Any, tp.Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Inner's module edited (a new field y, x's default 1 -> 2) and reloaded, Outer's
    (``from reloaded_inner import Inner``) not: Outer's validation and defaults were built
    by the old Inner, which autoreload cannot redo in place: Outer() kept x=1 (computed
    and cached so), Outer(inner={"y": 3}) was refused as extra, silently. It is said."""
    inner_module, outer_module = inner_and_outer
    Outer = outer_module.Outer
    (tmp_path / "reloaded_inner.py").write_text(INNER + "\n# a comment\n")
    with caplog.at_level("WARNING", logger="exca"):
        autoreload.superreload(inner_module, old_objects=OLD)
    assert "autoreload" not in caplog.text  # (Inner itself unchanged: nothing said)
    edited = INNER.replace("x: int = 1", "x: int = 2\n    y: int = 0")
    (tmp_path / "reloaded_inner.py").write_text(edited)
    with caplog.at_level("WARNING", logger="exca"):
        autoreload.superreload(inner_module, old_objects=OLD)
    assert Outer().inner.x == 1  # (the limit: the class body made that default)
    with pytest.raises(pydantic.ValidationError, match="y"):
        Outer(inner={"y": 3})
    said = caplog.text
    assert "reloaded reloaded_inner.Inner, which reloaded_outer.Outer holds" in said
    assert "reload reloaded_outer too" in said
    assert said.count("%autoreload") == 1


def test_autoreload_of_an_unchanged_class_with_a_default_factory_says_nothing(
    tmp_path: Path, inner_and_outer: tuple[tp.Any, tp.Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A held class reloaded unchanged is not warned of: one with a lambda (or any
    function defined in its module) as a field's default_factory was, as its repr names
    the function's address, new at each reload."""
    inner_module, _ = inner_and_outer
    factory = "\n    tags: list[int] = pydantic.Field(default_factory=lambda: [1])\n"
    (tmp_path / "reloaded_inner.py").write_text(INNER + factory)
    autoreload.superreload(inner_module, old_objects=OLD)  # (the field added: said)
    (tmp_path / "reloaded_inner.py").write_text("# a comment\n" + INNER + factory)
    caplog.clear()
    with caplog.at_level("WARNING", logger="exca"):
        autoreload.superreload(inner_module, old_objects=OLD)
    assert "autoreload" not in caplog.text
    edited = factory.replace("[1]", "[2]")  # (the factory's code edited: said)
    (tmp_path / "reloaded_inner.py").write_text(INNER + edited)
    caplog.clear()
    with caplog.at_level("WARNING", logger="exca"):
        autoreload.superreload(inner_module, old_objects=OLD)
    assert "reloaded reloaded_inner.Inner, which reloaded_outer.Outer holds" in caplog.text
