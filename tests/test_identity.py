"""Config identity (SPEC §3): which fields enter a uid, the uid folder and its yaml files,
freezing, class-default infra inheritance, subclassing and pickling of owners."""

from __future__ import annotations

import collections
import copy
import dataclasses
import decimal
import enum
import functools
import logging
import os
import pickle
import re
import subprocess
import sys
import typing as tp
from pathlib import Path

import pydantic
import pytest
import yaml

from exca import ConfDict, MapInfra, TaskInfra
from exca.graph.node import TASK_KEY
from exca.helpers import DiscriminatedModel
from exca.infra import base as infra_base
from exca.infra import identity

MODULE = __name__
FORBID = pydantic.ConfigDict(extra="forbid")
CALLS: list[str] = []  # every decorated method below appends its owner's name here


def _calls(name: str) -> int:
    return sum(1 for c in CALLS if c == name)


def _cfg(obj: tp.Any) -> dict[str, tp.Any]:
    """The uid config of an owner, as plain nested dicts."""
    return _plain(obj.infra.config(uid=True, exclude_defaults=True))


def _plain(value: tp.Any) -> tp.Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _read(path: Path) -> tp.Any:
    return yaml.safe_load(path.read_text())


# --- basic owners ---------------------------------------------------------------------------
class Basic(pydantic.BaseModel):
    p: int = 1
    s: str = "hello"
    f: float = 0.5
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        CALLS.append("Basic")
        return f"{self.p}-{self.s}"


class Whatever(pydantic.BaseModel):
    param1: int = 12
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return self.param1


def test_only_non_default_fields() -> None:
    assert _cfg(Basic()) == {}
    assert _cfg(Basic(p=1, s="hello")) == {}  # explicitly set, but equal to the default
    assert _cfg(Basic(p=2)) == {"p": 2}
    assert _cfg(Basic(s="x", f=0.25)) == {"s": "x", "f": 0.25}
    full = _plain(Basic(p=2).infra.config(uid=True, exclude_defaults=False))
    assert full == {"p": 2, "s": "hello", "f": 0.5, "infra": {"version": "1"}}


def test_uid_golden_and_hand_computed() -> None:
    # the example of SPEC §3 (byte-identical to the reference)
    assert Whatever(param1=13).infra.uid() == f"{MODULE}.Whatever.process,1/param1=13-4c541560"
    obj = Basic(p=3, s="a b/c", f=0.1)
    expected = ConfDict({"p": 3, "s": "a b/c", "f": 0.1}).to_uid()
    assert obj.infra.uid() == f"{MODULE}.Basic.process,1/{expected}"
    assert Basic().infra.uid() == f"{MODULE}.Basic.process,1/default"


class Labelled(pydantic.BaseModel):
    """A hashable model holding a set (a set of them: sets at two depths)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    tags: frozenset[str] = frozenset()


class Tagged(pydantic.BaseModel):
    """Sets are dumped in hash order, which changes between processes for strings."""

    model_config = pydantic.ConfigDict(extra="forbid")
    tags: set[str] = set()
    anything: tp.Any = None
    groups: set[frozenset[str]] = {frozenset({"alpha", "beta", "gamma", "delta"})}
    labelled: frozenset[Labelled] = frozenset()  # (a model in a set: its class named here)
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return len(self.tags)


TAGS = {"alpha", "beta", "gamma", "delta", "epsilon", "zeta"}
GROUPS = {frozenset({"gamma", "alpha", "beta"}), frozenset({"epsilon", "delta"})}


@dataclasses.dataclass
class SpecTags:
    tags: set[str] = dataclasses.field(default_factory=set)
    nested: list[frozenset[str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class SpecTagsMore(SpecTags):
    more: set[str] = dataclasses.field(default_factory=set)


class TaggedSpec(pydantic.BaseModel):
    """Sets inside a dataclass (dumped by pydantic, in hash order)."""

    model_config = pydantic.ConfigDict(extra="forbid")
    spec: SpecTags = SpecTags()
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return len(self.spec.tags)


def test_uid_stable_across_processes() -> None:
    code = (
        "import test_identity as t; "
        "print(t.Basic(p=3, s='some text', f=0.1).infra.uid()); "
        "print(t.Whatever(param1=13).infra.uid()); "
        "print(t.Tagged(tags=t.TAGS, anything=frozenset(t.TAGS)).infra.uid()); "
        "print(t.Tagged(groups=t.GROUPS, anything=[t.GROUPS]).infra.uid()); "
        "print(t.Tagged(labelled=frozenset({t.Labelled(tags=frozenset(t.TAGS))})).infra.uid()); "
        "print(repr(t.Tagged().infra.config(uid=True, exclude_defaults=False).to_yaml())); "
        "print(t.TaggedSpec(spec=t.SpecTags(t.TAGS, [frozenset(t.TAGS)])).infra.uid()); "
        "print(t.TaggedSpec(spec=t.SpecTagsMore(more=t.TAGS)).infra.uid())"
    )
    tests_dir = str(Path(__file__).parent)
    env = dict(os.environ, PYTHONHASHSEED="1234")
    env["PYTHONPATH"] = os.pathsep.join([tests_dir, env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    # sets inside sets too: their order is fixed at every depth (the full-uid.yaml of a
    # default included: a hit in another process compares it)
    here = [
        Basic(p=3, s="some text", f=0.1).infra.uid().replace(MODULE, "test_identity"),
        Whatever(param1=13).infra.uid().replace(MODULE, "test_identity"),
        Tagged(tags=TAGS, anything=frozenset(TAGS)).infra.uid().replace(MODULE, "test_identity"),
        Tagged(groups=GROUPS, anything=[GROUPS]).infra.uid().replace(MODULE, "test_identity"),
        Tagged(labelled=frozenset({Labelled(tags=frozenset(TAGS))}))
        .infra.uid()
        .replace(MODULE, "test_identity"),
        repr(Tagged().infra.config(uid=True, exclude_defaults=False).to_yaml()),
        TaggedSpec(spec=SpecTags(TAGS, [frozenset(TAGS)]))
        .infra.uid()
        .replace(MODULE, "test_identity"),
        TaggedSpec(spec=SpecTagsMore(more=TAGS)).infra.uid().replace(MODULE, "test_identity"),
    ]
    assert out == here
    # numbers in a set inside a dataclass: the same order in every process, kept as it
    # was (those uids did not change from process to process: their caches stay theirs).
    # (Built from a list: a set display of constants is a frozenset constant, which the
    # bytecode file of this module stores sorted, so its order, 33 2 10 then, would depend
    # on whether the module was compiled or read from a .pyc)
    numbers = TaggedSpec(spec=SpecTags(nested=[frozenset([33, 10, 2])])).infra.uid()
    assert numbers.endswith("/spec={tags=(),nested=((33,10,2))}-e3a1fe07"), numbers
    assert "groups=((alpha,beta,gamma),(delta,epsilon))" in here[3]
    assert "tags=(alpha,beta,delta,epsilon,gamma,zeta)" in here[2]


# --- _exclude_from_cls_uid ------------------------------------------------------------------
class ExclList(pydantic.BaseModel):
    model_config = FORBID
    _exclude_from_cls_uid = ["b"]
    a: int = 1
    b: int = 2


class ExclTuple(pydantic.BaseModel):
    model_config = FORBID
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("b",)
    a: int = 1
    b: int = 2


class ExclSet(pydantic.BaseModel):
    model_config = FORBID
    _exclude_from_cls_uid = {"b"}
    a: int = 1
    b: int = 2


class ExclMethod(pydantic.BaseModel):
    model_config = FORBID
    a: int = 1
    b: int = 2

    def _exclude_from_cls_uid(self) -> list[str]:
        return ["b"]


class ExclClassMethod(pydantic.BaseModel):
    model_config = FORBID
    a: int = 1
    b: int = 2

    @classmethod
    def _exclude_from_cls_uid(cls) -> tuple[str, ...]:
        return ("b",)


def _excl_owner(cls: type[pydantic.BaseModel]) -> type[pydantic.BaseModel]:
    class Owner(pydantic.BaseModel):
        sub: cls = cls()  # type: ignore[valid-type]
        infra: TaskInfra = TaskInfra()

        @infra.apply
        def process(self) -> int:
            return 1

    return Owner


class ExclMethodOverListParent(ExclList):
    """A subclass's method wins over the parent's list (pydantic keeps the list as a
    private attribute that the subclass inherits)."""

    @classmethod
    def _exclude_from_cls_uid(cls) -> list[str]:
        return ["a"]


class ExclListOverMethodParent(ExclMethodOverListParent):
    _exclude_from_cls_uid = ["b"]


class ExclInherited(ExclMethodOverListParent):
    pass


def test_exclude_from_cls_uid_closest_declaration_wins() -> None:
    assert _cfg(_excl_owner(ExclMethodOverListParent)(sub={"a": 3, "b": 4})) == {"sub": {"b": 4}}
    assert _cfg(_excl_owner(ExclInherited)(sub={"a": 3, "b": 4})) == {"sub": {"b": 4}}
    assert _cfg(_excl_owner(ExclListOverMethodParent)(sub={"a": 3, "b": 4})) == {"sub": {"a": 3}}


@pytest.mark.parametrize("cls", [ExclList, ExclTuple, ExclSet, ExclMethod, ExclClassMethod])
def test_exclude_from_cls_uid_forms(cls: type[pydantic.BaseModel]) -> None:
    owner = _excl_owner(cls)
    assert _cfg(owner(sub={"a": 3, "b": 4})) == {"sub": {"a": 3}}
    assert _cfg(owner(sub={"b": 4})) == {}
    full = _plain(owner(sub={"b": 4}).infra.config(uid=True, exclude_defaults=False))  # type: ignore[attr-defined]
    assert full == {"sub": {"a": 1}, "infra": {"version": "0"}}
    # the non-uid config keeps everything
    cfg = owner(sub={"b": 4}).infra.config(uid=False)  # type: ignore[attr-defined]
    assert cfg["sub"] == {"a": 1, "b": 4}


class ExclOnOwner(pydantic.BaseModel):
    _exclude_from_cls_uid = ("workers",)
    x: int = 1
    workers: int = 4
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return self.x


def test_exclude_from_cls_uid_on_owner() -> None:
    assert _cfg(ExclOnOwner(workers=12)) == {}
    assert ExclOnOwner(workers=12).infra.uid() == ExclOnOwner().infra.uid()
    assert _cfg(ExclOnOwner(x=2, workers=12)) == {"x": 2}


def test_exclude_from_cls_uid_string_is_type_error() -> None:
    with pytest.raises(TypeError):

        class ExclStr(pydantic.BaseModel):
            model_config = FORBID
            _exclude_from_cls_uid = "b"
            b: int = 2

        _excl_owner(ExclStr)(sub={"b": 3}).infra.uid()  # type: ignore[attr-defined]


def test_exclude_from_cls_uid_unknown_field_is_value_error() -> None:
    with pytest.raises(ValueError, match="unknown"):

        class ExclUnknown(pydantic.BaseModel):
            model_config = FORBID
            _exclude_from_cls_uid = ("nope",)
            b: int = 2

        _excl_owner(ExclUnknown)(sub={"b": 3}).infra.uid()  # type: ignore[attr-defined]


class SelfDropped(pydantic.BaseModel):
    model_config = FORBID
    _exclude_from_cls_uid = (".",)
    x: int = 1


class HoldsDropped(pydantic.BaseModel):
    sub: SelfDropped = SelfDropped()
    subs: list[SelfDropped] = []
    y: int = 1
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return 1


def test_dot_drops_submodel_from_parent_uid() -> None:
    obj = HoldsDropped(sub={"x": 5}, y=2)
    assert _cfg(obj) == {"y": 2}
    full = _plain(obj.infra.config(uid=True, exclude_defaults=False))
    assert "sub" not in full
    assert obj.infra.uid() == HoldsDropped(y=2).infra.uid()
    assert obj.infra.config(uid=False)["sub"] == {"x": 5}  # still in the full config


# --- infra fields -----------------------------------------------------------------------------
class DefaultInfra(pydantic.BaseModel):
    x: int = 1
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return self.x


def test_infra_fields_excluded_except_version(tmp_path: Path) -> None:
    base = Basic(infra={"folder": tmp_path})
    other = Basic(
        infra={
            "folder": tmp_path / "other",
            "mode": "force",
            "keep_in_ram": True,
            "gpus_per_node": 3,
            "timeout_min": 12,
            "job_name": "x",
        }
    )
    assert base.infra.uid() == other.infra.uid() == f"{MODULE}.Basic.process,1/default"
    full = _plain(other.infra.config(uid=True, exclude_defaults=False))
    assert full["infra"] == {"version": "1"}


class Settings(pydantic.BaseModel):
    """A sub-model that, like an infra, keeps all but one field out of uids."""

    model_config = pydantic.ConfigDict(extra="forbid")
    _exca_uid_fields: tp.ClassVar[tuple[str, ...]] = ("size",)
    size: int = 1
    verbose: bool = False


class WiderSettings(Settings):
    _exca_uid_fields: tp.ClassVar[tuple[str, ...]] = ("size", "verbose")


class HoldsSettings(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    settings: Settings = Settings()


def test_uid_dump_skips_what_a_sub_model_keeps_out_but_not_for_a_subclass() -> None:
    # the uid dump leaves out Settings.verbose (out of Settings' uid)...
    assert ConfDict.from_model(HoldsSettings(settings=Settings(verbose=True)), uid=True) == {
        "settings": {"size": 1}
    }
    # ...but a subclass instance keeping more fields is dumped whole
    held = HoldsSettings(settings=WiderSettings(verbose=True))
    exported = ConfDict.from_model(held, uid=True, exclude_defaults=True)
    assert exported == {"settings": {"verbose": True}}


class TreeNode(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    value: int = 0
    child: TreeNode | None = None
    settings: Settings = Settings()


def test_recursive_models_have_uids() -> None:
    tree = TreeNode(value=1, child=TreeNode(value=2, settings=Settings(size=3, verbose=True)))
    assert ConfDict.from_model(tree, uid=True, exclude_defaults=True) == {
        "value": 1,
        "child": {"value": 2, "settings": {"size": 3}},
    }


def test_version_in_uid_only_when_differing_from_class_default() -> None:
    assert _cfg(Basic(infra={"version": "1"})) == {}  # class default is TaskInfra(version="1")
    assert _cfg(Basic(infra={"folder": None})) == {}  # inherits version "1"
    assert _cfg(Basic(infra={"version": "2"})) == {"infra": {"version": "2"}}
    assert Basic(infra={"version": "2"}).infra.uid().startswith(f"{MODULE}.Basic.process,2/")
    assert _cfg(DefaultInfra(infra={"version": "0"})) == {}
    assert _cfg(DefaultInfra(infra={"version": "1"})) == {"infra": {"version": "1"}}


# --- exclude_from_cache_uid -------------------------------------------------------------------
class CacheExclNames(pydantic.BaseModel):
    a: int = 1
    b: int = 2
    infra: TaskInfra = TaskInfra()

    @infra.apply(exclude_from_cache_uid=("b",))
    def process(self) -> int:
        return self.a


class CacheExclCallable(pydantic.BaseModel):
    a: int = 1
    b: int = 2
    infra: TaskInfra = TaskInfra()

    @infra.apply(exclude_from_cache_uid=lambda obj: ["b"] if obj.a > 0 else ["a"])
    def process(self) -> int:
        return self.a


class CacheExclMethod(pydantic.BaseModel):
    a: int = 1
    b: int = 2
    infra: TaskInfra = TaskInfra()

    @infra.apply(exclude_from_cache_uid="method:_cache_excluded")
    def process(self) -> int:
        return self.a

    def _cache_excluded(self) -> list[str]:
        return ["b"]


class CacheExclMethodSub(CacheExclMethod):
    def _cache_excluded(self) -> list[str]:
        return ["a"]


class CacheExclMissing(pydantic.BaseModel):
    a: int = 1
    infra: TaskInfra = TaskInfra()

    @infra.apply(exclude_from_cache_uid="method:does_not_exist")
    def process(self) -> int:
        return self.a


def test_exclude_from_cache_uid_names_and_callable() -> None:
    assert _cfg(CacheExclNames(a=3, b=4)) == {"a": 3}
    assert CacheExclNames(b=4).infra.uid() == CacheExclNames().infra.uid()
    # only the cache uid: the full config keeps the field
    assert CacheExclNames(b=4).infra.config(uid=False)["b"] == 4
    assert _cfg(CacheExclCallable(a=3, b=4)) == {"a": 3}
    assert _cfg(CacheExclCallable(a=-1, b=4)) == {"b": 4}


def test_exclude_from_cache_uid_method_resolved_late() -> None:
    assert _cfg(CacheExclMethod(a=3, b=4)) == {"a": 3}
    sub = CacheExclMethodSub(a=3, b=4)
    assert _cfg(sub) == {"b": 4}  # the subclass override is used
    assert sub.infra.uid() == f"{MODULE}.CacheExclMethodSub.process,0/{ConfDict(b=4).to_uid()}"


def test_exclude_from_cache_uid_missing_method() -> None:
    obj = CacheExclMissing(a=2)  # fine at construction
    with pytest.raises(RuntimeError, match="does_not_exist"):
        obj.infra.config()


class _ExclSub(pydantic.BaseModel):
    model_config = FORBID
    x: int = 1


class CacheExclTypo(pydantic.BaseModel):
    a: int = 1
    sub: _ExclSub = _ExclSub()
    infra: TaskInfra = TaskInfra()

    @infra.apply(exclude_from_cache_uid=lambda obj: ["sub.x"] if obj.a > 0 else ["sub.nope"])
    def process(self) -> int:
        return self.a


class CacheExclTypoTop(pydantic.BaseModel):
    a: int = 1
    infra: TaskInfra = TaskInfra()

    @infra.apply(exclude_from_cache_uid=("nonexistent",))
    def process(self) -> int:
        return self.a


def test_exclude_from_cache_uid_names_fields_only() -> None:
    """A typo would silently exclude nothing: it is an error naming the fields."""
    assert _cfg(CacheExclTypo(a=2, sub={"x": 5})) == {"a": 2}  # sub.x excluded
    with pytest.raises(ValueError, match=r"'sub.nope'.*_ExclSub has no field 'nope'"):
        CacheExclTypo(a=-1).infra.uid()
    with pytest.raises(ValueError, match=r"'nonexistent'.*fields: \['a', 'infra'\]"):
        CacheExclTypoTop(a=2).infra.uid()


class CacheExclInList(pydantic.BaseModel):
    subs: list[_ExclSub] = []
    infra: TaskInfra = TaskInfra()

    @infra.apply(exclude_from_cache_uid=lambda obj: obj.names)
    def process(self) -> int:
        return len(self.subs)

    names: tp.ClassVar[list[str]] = []


def test_exclude_from_cache_uid_names_list_items_by_index(monkeypatch: tp.Any) -> None:
    """'subs.x' (meaning the x of every item) excluded nothing, silently: the uid kept
    the items' x. Items are named by index ('subs.0.x'), whose fields are checked too."""
    config = CacheExclInList(subs=[{"x": 5}])
    monkeypatch.setattr(CacheExclInList, "names", ["subs.x"])
    with pytest.raises(ValueError, match=r"'subs\.x', but subs is a list.*subs\.0\.x"):
        config.infra.uid()
    monkeypatch.setattr(CacheExclInList, "names", ["subs.0.nope"])
    with pytest.raises(ValueError, match=r"'subs\.0\.nope'.*_ExclSub has no field 'nope'"):
        CacheExclInList(subs=[{"x": 5}]).infra.uid()
    monkeypatch.setattr(CacheExclInList, "names", ["subs.0.x", "subs.3.x"])  # (3: no item)
    assert _cfg(CacheExclInList(subs=[{"x": 5}])) == {"subs": [{}]}


class _Loader(pydantic.BaseModel):
    model_config = FORBID
    workers: int = 1
    path: str = "data"


class _LoadsData(pydantic.BaseModel):
    model_config = FORBID
    loader: _Loader = _Loader(workers=4)
    options: dict[str, int] = {"threads": 2, "seed": 0}
    loaders: list[_Loader] = [_Loader(), _Loader(path="other")]
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply(exclude_from_cache_uid=("loader.workers", "options.threads", "loaders.0.workers"))
    def process(self) -> str:
        return self.loader.path


def test_nested_exclusions_do_not_change_the_uid() -> None:
    """Configs that differ only by excluded values share a uid, also when a sub-config's
    field default differs from its class default (workers=1 made `loader={}` before)."""
    default = _LoadsData().infra.uid()
    assert default.endswith("/default")  # (a list of sub-configs at its default: nothing)
    assert _LoadsData(loaders=[{"workers": 7}, {"path": "other"}]).infra.uid() == default
    for workers in (1, 4, 8):
        assert _LoadsData(loader={"workers": workers}).infra.uid() == default
    assert _LoadsData(options={"threads": 9, "seed": 0}).infra.uid() == default
    changed = _LoadsData(loader={"workers": 1, "path": "other"})
    assert changed.infra.config(uid=True, exclude_defaults=True) == {"loader": {"path": "other"}}
    assert "options.seed=1" in _LoadsData(options={"threads": 9, "seed": 1}).infra.uid()


def test_exclude_from_cache_uid_bad_string() -> None:
    with pytest.raises(TypeError):

        class BadExcl(pydantic.BaseModel):
            a: int = 1
            infra: TaskInfra = TaskInfra()

            @infra.apply(exclude_from_cache_uid="a")
            def process(self) -> int:
                return self.a

        BadExcl(a=2).infra.config()


# --- nested defaults --------------------------------------------------------------------------
class A(pydantic.BaseModel):
    model_config = FORBID
    x: int = 12
    y: str = "y"


class HoldsA(pydantic.BaseModel):
    a: A = A(x=13)
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return self.a.x


class RequiredFields(pydantic.BaseModel):
    a: A
    n: int
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return self.n


def test_nested_defaults_compare_with_field_default_instance() -> None:
    assert _cfg(HoldsA()) == {}
    assert _cfg(HoldsA(a={"x": 13})) == {}
    assert _cfg(HoldsA(a={"x": 12})) == {"a": {}}  # class default of A.x, not the field default
    assert _cfg(HoldsA(a={"x": 11})) == {"a": {"x": 11}}
    # a surviving sub-model compares its own fields with its class defaults
    assert _cfg(HoldsA(a={"x": 13, "y": "z"})) == {"a": {"x": 13, "y": "z"}}
    assert HoldsA(a={"x": 12}).infra.uid() != HoldsA().infra.uid()


def test_required_fields_never_pruned() -> None:
    assert _cfg(RequiredFields(a=A(), n=0)) == {"a": {}, "n": 0}
    assert _cfg(RequiredFields(a=A(x=3), n=0)) == {"a": {"x": 3}, "n": 0}


# --- discriminated unions ---------------------------------------------------------------------
class D1(pydantic.BaseModel):
    model_config = FORBID
    kind: tp.Literal["d1"] = "d1"
    x: int = 1


class D2(pydantic.BaseModel):
    model_config = FORBID
    kind: tp.Literal["d2"] = "d2"
    y: int = 2


class HoldsDisc(pydantic.BaseModel):
    inst: D1 | D2 = pydantic.Field(D1(), discriminator="kind")
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return 1


class TopDisc(pydantic.BaseModel):
    kind: tp.Literal["top"] = "top"
    z: int = 3
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return self.z


class HoldsTopDisc(pydantic.BaseModel):
    inst: TopDisc | D1 = pydantic.Field(D1(), discriminator="kind")
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return 1


def test_discriminated_union_uids() -> None:
    assert _cfg(HoldsDisc()) == {}
    assert _cfg(HoldsDisc(inst={"kind": "d1"})) == {}  # equal to the default: dropped whole
    assert _cfg(HoldsDisc(inst={"kind": "d1", "x": 3})) == {"inst": {"kind": "d1", "x": 3}}
    # the surviving sub-model keeps its discriminator, even at its default value
    assert _cfg(HoldsDisc(inst={"kind": "d2"})) == {"inst": {"kind": "d2"}}
    assert _cfg(HoldsDisc(inst={"kind": "d2", "y": 5})) == {"inst": {"kind": "d2", "y": 5}}
    assert HoldsDisc(inst={"kind": "d2"}).infra.uid() != HoldsDisc().infra.uid()


def test_top_model_discriminator_ignored() -> None:
    assert _cfg(TopDisc()) == {}
    assert _cfg(TopDisc(z=4)) == {"z": 4}
    # the same class inside a discriminated union keeps it
    assert _cfg(HoldsTopDisc(inst={"kind": "top"})) == {"inst": {"kind": "top"}}


def test_union_of_models_without_discriminator() -> None:
    with pytest.raises(RuntimeError, match="discriminator"):

        class Ambiguous(pydantic.BaseModel):
            inst: D1 | D2 = D1()
            infra: TaskInfra = TaskInfra()

            @infra.apply
            def process(self) -> int:
                return 1

        Ambiguous(inst=D2(y=3)).infra.uid()


@pytest.mark.parametrize(
    "annotation",
    [list[D1 | D2], dict[str, D1 | D2], tuple[D1 | D2, ...], tp.Optional[list[D1 | D2]]],  # noqa: UP045
)
def test_union_of_models_without_discriminator_in_a_container(annotation: tp.Any) -> None:
    """[D1()] and [D2()] had one uid (their defaults pruned): the second config read the
    first one's result. Refused like a field holding the union itself."""

    class HoldsUnions(pydantic.BaseModel):
        model_config = FORBID
        models: annotation = None  # type: ignore[valid-type]
        infra: TaskInfra = TaskInfra()

        @infra.apply
        def process(self) -> int:
            return 1

    with pytest.raises(RuntimeError, match=r"HoldsUnions\.models .*\(D1, D2\) without a discrim"):
        HoldsUnions().infra.uid()


class KeepsUnionsOut(pydantic.BaseModel):
    model_config = FORBID
    callbacks: list[D1 | D2] = []  # (kept out of the uid: no discriminator needed)
    hooks: D1 | D2 | None = pydantic.Field(None, exclude=True)
    x: int = 0
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("callbacks",)
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return self.x


def test_unions_of_models_in_fields_kept_out_of_the_uid_are_fine() -> None:
    obj = KeepsUnionsOut(callbacks=[D1(), D2()], hooks=D2(), x=2)
    assert obj.infra.uid().split("/")[-1].startswith("x=2-")
    assert KeepsUnionsOut(callbacks=[D2()], x=2).infra.uid() == obj.infra.uid()


class HoldsDiscList(pydantic.BaseModel):
    model_config = FORBID
    insts: list[tp.Annotated[D1 | D2, pydantic.Field(discriminator="kind")]] = []
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return len(self.insts)


def test_discriminated_unions_in_a_container_keep_the_class_in_the_uid() -> None:
    uids = {HoldsDiscList(insts=[inst]).infra.uid() for inst in (D1(), D2())}
    assert len(uids) == 2
    assert _cfg(HoldsDiscList(insts=[D2()])) == {"insts": [{"kind": "d2"}]}


def test_raw_basemodel_annotation() -> None:
    with pytest.raises(RuntimeError, match="discriminat"):

        class Raw(pydantic.BaseModel):
            inst: pydantic.BaseModel = D1()
            infra: TaskInfra = TaskInfra()

            @infra.apply
            def process(self) -> int:
                return 1

        Raw(inst=D1(x=3)).infra.uid()


class NoExtra(pydantic.BaseModel):
    x: int = 1


class HoldsNoExtra(pydantic.BaseModel):
    sub: NoExtra = NoExtra()
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return 1


def test_submodel_without_extra_is_refused() -> None:
    with pytest.raises(RuntimeError, match="extra"):
        HoldsNoExtra(sub={"x": 2}).infra.uid()


class _IgnoresExtra(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="ignore")
    x: int = 1


class _ForbidsExtra(NoExtra):  # (the way out for a class one cannot edit)
    model_config = FORBID


class _HoldsSettled(pydantic.BaseModel):
    ignores: _IgnoresExtra = _IgnoresExtra()
    forbids: _ForbidsExtra = _ForbidsExtra()
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return 1


def test_the_refusal_of_a_submodel_without_extra_says_which_settings_are_accepted() -> None:
    """The error said extra='forbid' was 'strongly advised', naming the bare class: not
    that it is required, that extra='ignore' is accepted too, nor what to do with a
    library's class. It names the class with its module and offers each way out, and
    each way out is accepted."""
    with pytest.raises(RuntimeError) as info:
        HoldsNoExtra(sub={"x": 2}).infra.uid()
    message = str(info.value)
    assert f"{__name__}.NoExtra has no 'extra' key" in message
    assert "extra='forbid'" in message and "extra='ignore'" in message
    assert "subclass" in message
    settled = _HoldsSettled(ignores={"x": 2, "typo": 3}, forbids={"x": 4})
    uid = settled.infra.uid()
    assert "ignores.x=2" in uid and "forbids.x=4" in uid and "typo" not in uid


class _Lr(pydantic.BaseModel):
    model_config = FORBID
    lr: float = 0.01


class _Layers(pydantic.RootModel[list[int]]):  # (a RootModel cannot set `extra`)
    pass


class _Free(pydantic.RootModel[dict[str, tp.Any]]):
    pass


class _Weights(pydantic.RootModel[dict[str, float]]):
    pass


class _Subs(pydantic.RootModel[list[_Lr]]):
    pass


class HoldsRootModels(pydantic.BaseModel):
    layers: _Layers = _Layers([1, 2])
    weights: _Weights = _Weights({})
    subs: _Subs = _Subs([_Lr()])
    many: list[_Layers] = []
    named: dict[str, _Weights] = {}
    maybe: _Layers | None = None
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return 1


@dataclasses.dataclass
class _HeldRoots:
    layers: _Layers = dataclasses.field(default_factory=lambda: _Layers([1]))
    free: _Free = dataclasses.field(default_factory=lambda: _Free({}))


class HoldsHeldRoots(pydantic.BaseModel):
    held: _HeldRoots = _HeldRoots()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return 1


def test_root_models_are_sub_configs_with_their_root_as_value(tmp_path: Path) -> None:
    """A RootModel sub-config was refused (no 'extra' key: set extra='forbid', which
    pydantic refuses for a RootModel). It is its root value, as pydantic dumps it."""
    configs: list[dict[str, tp.Any]] = [
        dict(layers=[1, 2, 3]),
        dict(layers=[]),
        dict(weights={"b": 1.0, "a": 0.5}),
        dict(subs=[{"lr": 0.1}]),
        dict(subs=[]),
        dict(many=[[1], [2]]),
        dict(named={"x": {"a": 1.0}}),
        dict(maybe=[1]),
    ]
    uids = {HoldsRootModels(**c).infra.uid().split("/")[-1]: c for c in configs}
    assert len(uids) == len(configs)  # all different
    assert "layers=(1,2,3)-" in HoldsRootModels(**configs[0]).infra.uid()
    assert "weights={b=1,a=0.50}-" in HoldsRootModels(**configs[2]).infra.uid()
    # equal to the defaults (also given as a dict, or as the instance): the default uid
    for same in [dict(layers=[1, 2]), dict(subs=[{}]), dict(subs=_Subs([_Lr(lr=0.01)]))]:
        assert HoldsRootModels(**same).infra.uid().endswith("/default"), same
    for config in configs:  # written and read back: the same uid
        obj = HoldsRootModels(**config, infra={"folder": tmp_path})
        obj.process()
        assert obj.infra.clone_obj().infra.uid() == obj.infra.uid()
    listed = sorted(
        o.infra.uid() for o in HoldsRootModels(infra={"folder": tmp_path}).infra.iter_cached()
    )
    assert listed == sorted(HoldsRootModels(**c).infra.uid() for c in configs)


def test_root_models_held_by_a_dataclass_keep_their_values_in_config_yaml(tmp_path: Path) -> None:
    """Held by a dataclass, a RootModel's dump was its uid (kept), but config.yaml left
    out its values (a dict root was written {}): iter_cached() skipped the config and
    clone_obj() rebuilt another one. Its sets of strings were in hash order."""
    obj = HoldsHeldRoots(held=_HeldRoots(layers=_Layers([1, 2])), infra={"folder": tmp_path})
    assert obj.infra.uid().endswith("/held={free={},layers=(1,2)}-bf93efef"), obj.infra.uid()
    kept = HoldsHeldRoots(held=_HeldRoots(free=_Free({"z": 1, "a": [1]}))).infra.uid()
    assert kept.endswith("/held={layers=(1),free={z=1,a=(1)}}-60920723"), kept
    free = _Free({"z": 1, "a": [1], "tags": {"beta", "alpha", "gamma"}})
    other = HoldsHeldRoots(held=_HeldRoots(free=free), infra={"folder": tmp_path})
    for config in (obj, other):
        config.process()
        assert config.infra.clone_obj().infra.uid() == config.infra.uid()
    assert "tags=(alpha,beta,gamma)" in other.infra.uid()
    assert _read(other.infra.uid_folder() / "config.yaml")["held"]["free"]["z"] == 1
    listed = sorted(o.infra.uid() for o in obj.infra.iter_cached())
    assert listed == sorted([obj.infra.uid(), other.infra.uid()])


# --- owner model_config ---------------------------------------------------------------------
class AllowsExtra(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    x: int = 1
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return self.x


def test_infra_makes_extra_forbid_the_default() -> None:
    with pytest.raises(pydantic.ValidationError):
        Basic(unknown=12)  # type: ignore[call-arg]
    assert Basic.model_config.get("extra") == "forbid"
    obj = AllowsExtra(unknown=12)  # type: ignore[call-arg]
    assert obj.unknown == 12  # type: ignore[attr-defined]


class _Optim(pydantic.BaseModel):
    model_config = FORBID
    lr: float = 0.01


class _FreeData(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")  # (free-form metadata)
    optim: _Optim = _Optim()


class _ExtraOwner(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    optim: _Optim = _Optim()
    data: _FreeData = _FreeData()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> float:
        return self.optim.lr + self.data.optim.lr


class _Scaled(pydantic.BaseModel):
    model_config = FORBID
    mult: dict[str, float] = {}


class _DottedKeys(pydantic.BaseModel):
    lr_mult: dict[str, float] = {}  # (by parameter name: "encoder.layer1")
    scaled: list[_Scaled] = []
    maybe: tp.Annotated[dict[str, list[int]], "doc"] | None = None
    free: dict[str, tp.Any] = {}
    epochs: int = 1
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return self.epochs


def test_dotted_keys_of_dicts_of_plain_values_are_read_back(tmp_path: Path) -> None:
    """config.yaml and clone_obj's merge read {"encoder.layer1": 0.1} as
    {"encoder": {"layer1": 0.1}}, which a dict[str, float] refuses: clone_obj() of such a
    config raised a ValidationError (to change any field), and iter_cached() skipped it."""
    config = _DottedKeys(
        lr_mult={"encoder.layer1": 0.1, "head": 2.0},
        scaled=[{"mult": {"a.b.c": 0.5}}],
        maybe={"x.y": [1]},
        free={"k.v": 1},
        infra={"folder": tmp_path},
    )
    config.process()
    clone = config.infra.clone_obj()
    assert clone.lr_mult == config.lr_mult and clone.scaled == config.scaled
    assert clone.maybe == {"x.y": [1]}
    assert clone.free == {"k": {"v": 1}}  # (values that may be dicts: cannot tell)
    assert clone.infra.uid() == config.infra.uid()
    assert config.infra.clone_obj({"epochs": 2}).lr_mult == config.lr_mult
    changed = config.infra.clone_obj({"lr_mult.encoder.layer1": 0.2})
    assert changed.lr_mult == {"encoder.layer1": 0.2, "head": 2.0}
    assert [c.infra.uid() for c in config.infra.iter_cached()] == [config.infra.uid()]


class _DottedOptim(DiscriminatedModel):
    pass


class _DottedAdam(_DottedOptim):
    lr_mult: dict[str, float] = {}


class _DottedFamily(pydantic.BaseModel):
    optim: _DottedOptim
    optims: list[_DottedOptim] = []
    epochs: int = 1
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return self.epochs


def test_dotted_keys_in_a_member_of_a_discriminated_family_are_read_back(
    tmp_path: Path,
) -> None:
    """A field typed as a DiscriminatedModel base whose member holds the dict of dotted
    keys (optim: Optim = Adam(lr_mult={"encoder.layer1": 0.1})): the base's fields hold
    none, so the keys were left split: clone_obj() raised a ValidationError and
    iter_cached() skipped the folder."""
    config = _DottedFamily(
        optim=_DottedAdam(lr_mult={"encoder.layer1": 0.1}),
        optims=[_DottedAdam(lr_mult={"a.b": 0.5}), _DottedOptim()],
        infra={"folder": tmp_path},
    )
    config.process()
    clone = config.infra.clone_obj({"epochs": 2})
    assert isinstance(clone.optim, _DottedAdam)
    assert clone.optim.lr_mult == {"encoder.layer1": 0.1}
    assert [type(o) for o in clone.optims] == [_DottedAdam, _DottedOptim]
    assert clone.optims[0].lr_mult == {"a.b": 0.5}  # type: ignore[attr-defined]
    assert [c.optim for c in config.infra.iter_cached()] == [config.optim]


class _DottedA(pydantic.BaseModel):
    model_config = FORBID
    kind: tp.Literal["a"] = "a"
    lr_mult: dict[str, float] = {}


class _DottedB(pydantic.BaseModel):
    model_config = FORBID
    kind: tp.Literal["b"] = "b"
    lr_mult: dict[str, tp.Any] = {}  # (may hold dicts: left as read)


class _DottedUnion(pydantic.BaseModel):
    optim: _DottedA | _DottedB = pydantic.Field(discriminator="kind")
    maybe: list[tp.Annotated[_DottedA | _DottedB, pydantic.Field(discriminator="kind")]] = []
    epochs: int = 1
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return self.epochs


def test_dotted_keys_in_a_member_of_a_union_of_models_are_read_back(tmp_path: Path) -> None:
    """A field holding a union of models (A | B, with a discriminator) whose member
    holds the dict of dotted keys: its keys were left split (a union: which member?), so
    clone_obj() raised a ValidationError and iter_cached() skipped the folder. Each value
    is read by the member its tag names."""
    config = _DottedUnion(
        optim=_DottedA(lr_mult={"encoder.layer1": 0.1}),
        maybe=[_DottedB(), _DottedA(lr_mult={"a.b": 0.5})],
        infra={"folder": tmp_path},
    )
    config.process()
    clone = config.infra.clone_obj({"epochs": 2})
    assert clone.optim == config.optim and clone.maybe == config.maybe
    assert [c.optim for c in config.infra.iter_cached()] == [config.optim]
    other = _DottedUnion(optim=_DottedB(lr_mult={"k.v": 1}), infra={"folder": tmp_path})
    assert other.infra.clone_obj().optim == _DottedB(lr_mult={"k": {"v": 1}})


def test_dotted_extra_keys_naming_a_field_are_refused(tmp_path: Path) -> None:
    """An extra key "optim.lr" left the field optim at its default, yet had the uid of
    optim={"lr": 0.5} (read as a path): the two configs shared one cache folder, the
    second read the first one's result (top-level and in a sub-config)."""
    folder = {"folder": tmp_path}
    real = _ExtraOwner(optim={"lr": 0.5}, data={"optim": {"lr": 0.5}}, infra=folder)
    assert real.process() == 1.0
    for fake in (
        _ExtraOwner(infra=folder, **{"optim.lr": 0.5}),
        _ExtraOwner(data={"optim.lr": 0.5}, infra=folder),
    ):
        with pytest.raises(ValueError, match=r"extra key 'optim\.lr'.*optim=\{'lr': \.\.\.\}"):
            fake.process()
    # extras naming one another's values, as dict keys do
    with pytest.raises(ValueError, match=r"'meta' and 'meta\.x'"):
        _ExtraOwner(**{"meta": {"y": 1}, "meta.x": 2}).infra.uid()
    # other extras keep their uids
    assert _ExtraOwner(**{"meta.x": 2}).infra.uid().endswith("/meta.x=2-e8d4d653")


# --- hooks and dict order -------------------------------------------------------------------
class Overridden(pydantic.BaseModel):
    model_config = FORBID
    x: int = 1
    noise: int = 0

    def _exca_uid_dict_override(self) -> dict[str, tp.Any]:
        return {"custom": self.x * 10}


class HoldsOverridden(pydantic.BaseModel):
    sub: Overridden = Overridden()
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return 1


def test_uid_dict_override_hook() -> None:
    assert _cfg(HoldsOverridden(sub={"x": 3, "noise": 5})) == {"sub": {"custom": 30}}
    assert (
        HoldsOverridden(sub={"x": 3, "noise": 5}).infra.uid()
        == HoldsOverridden(sub={"x": 3, "noise": 6}).infra.uid()
    )
    assert _cfg(HoldsOverridden(sub={"noise": 5})) == {}  # same override as the default


class Dicts(pydantic.BaseModel):
    od: collections.OrderedDict[str, int] = collections.OrderedDict()
    d: dict[str, int] = {}
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return 1


def test_ordered_dict_order_matters_plain_dict_not() -> None:
    od1 = Dicts(od=collections.OrderedDict([("a", 1), ("bb", 2)]))
    od2 = Dicts(od=collections.OrderedDict([("bb", 2), ("a", 1)]))
    assert od1.infra.uid() != od2.infra.uid()
    assert list(od2.infra.config()["od"]) == ["bb", "a"]
    d1 = Dicts(d={"a": 1, "bb": 2})
    d2 = Dicts(d={"bb": 2, "a": 1})
    assert d1.infra.uid() == d2.infra.uid()
    # SPEC: plain dicts are sorted in the exported configs (the yaml files are one text)
    assert list(d2.infra.config()["d"]) == ["a", "bb"]
    assert list(d2.infra.config(uid=False)["d"]) == ["a", "bb"]
    assert d1.infra.config().to_yaml() == d2.infra.config().to_yaml()


class Weights(pydantic.BaseModel):
    weights: dict[str, float] = {}
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return 1


class Logging(pydantic.BaseModel):
    levels: dict[str, str] = {}
    infra: TaskInfra = TaskInfra()
    _exclude_from_cls_uid = ("levels",)

    @infra.apply
    def process(self) -> int:
        return 1


class Params(pydantic.BaseModel):
    params: dict[str, tp.Any] = {}
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return 1


class ParamsOrdered(pydantic.BaseModel):
    params: collections.OrderedDict[str, tp.Any] = collections.OrderedDict()
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return 1


def test_dict_keys_naming_the_same_path_are_refused() -> None:
    """ "enc.bias" is read as a path: next to "enc", one value would hide the other in the
    uid, and {"enc": 1, ...} and {"enc": 2, ...} would share one cache folder. The
    refusal names the field holding the dict (it said "of a config")."""
    for weights in ({"enc": 1.0, "enc.bias": 3.0}, {"enc.bias": 3.0, "enc": 2.0}):
        with pytest.raises(
            ValueError, match=r"'enc' and 'enc\.bias' of field Weights\.weights both name"
        ):
            Weights(weights=weights).infra.uid()
    # "enc" holding a dict: "enc.bias" merged into it, and the uid was that of the config
    # nesting both ({"enc": {"w": 1, "bias": 2}}): the other's cached result came back
    nested = Params(params={"enc": {"w": 1, "bias": 2}})
    with pytest.raises(ValueError, match=r"both name values inside 'enc'.* Use one form"):
        Params(params={"enc": {"w": 1}, "enc.bias": 2}).infra.uid()
    with pytest.raises(ValueError, match=r"'a\.b' and 'a\.b\.c' of field Params\.params both name"):
        Params(params={"a.b": {"x": 1}, "a.b.c": 2}).infra.uid()  # (as {"a": {"b": ...}})
    # an OrderedDict's keys are kept as they are (not merged): no twin, accepted
    ordered = collections.OrderedDict([("enc", {"w": 1}), ("enc.bias", 2)])
    assert (
        ParamsOrdered(params=ordered).infra.uid().endswith("/params={enc.w=1,enc.bias=2}-372a1dd2")
    )
    assert nested.infra.uid().endswith("/params.enc={w=1,bias=2}-0a8cf66e")
    # ... only where they make a uid: a field kept out of the uid may hold such keys
    levels = {"exca": "INFO", "exca.graph": "DEBUG"}
    assert Logging(levels=levels).infra.uid() == Logging().infra.uid()
    assert Logging(levels=levels).infra.config(uid=False)["levels.exca.graph"] == "DEBUG"
    # dotted keys that do not collide keep their (dotted) uid
    assert (
        "weights={dec=1,enc.bias=3}" in Weights(weights={"enc.bias": 3.0, "dec": 1.0}).infra.uid()
    )


def test_plain_dict_order_of_a_cache_written_before_reads_back(tmp_path: Path) -> None:
    """A uid.yaml written in insertion order (before plain dicts were sorted) is the
    same config: no "Inconsistent uid config", and the result is reused."""
    first = Dicts(d={"bb": 2, "a": 1}, infra={"folder": tmp_path})
    assert first.process() == 1
    uid_yaml = first.infra.uid_folder() / "uid.yaml"
    uid_yaml.write_text("d:\n  bb: 2\n  a: 1\n")
    again = Dicts(d={"bb": 2, "a": 1}, infra={"folder": tmp_path, "mode": "read-only"})
    assert again.process() == 1


# --- folder names -----------------------------------------------------------------------------
def test_uid_folder(tmp_path: Path) -> None:
    obj = Basic(p=2, infra={"folder": tmp_path})
    expected = tmp_path / f"{MODULE}.Basic.process,1" / ConfDict(p=2).to_uid()
    assert obj.infra.uid_folder() == expected
    assert not expected.exists()  # create=False
    assert Basic(infra={"folder": tmp_path}).infra.uid_folder() == expected.with_name("default")
    assert Basic().infra.uid_folder() is None
    created = obj.infra.uid_folder(create=True)
    assert created == expected and (expected / "uid.yaml").exists()


class CustomUidInfra(TaskInfra):
    _uid_string = "{method}-v{version}/{uid}"


class BadUidInfra(TaskInfra):
    _uid_string = "{method}/{uid}"


class BadUidInfraAnnotated(TaskInfra):
    _uid_string: str = "{uid}/{method}/{version}/{uid}"


class CustomUid(pydantic.BaseModel):
    x: int = 1
    infra: CustomUidInfra = CustomUidInfra(version="2")

    @infra.apply
    def process(self) -> int:
        return self.x


class BadUid(pydantic.BaseModel):
    infra: BadUidInfra = BadUidInfra()

    @infra.apply
    def process(self) -> int:
        return 1


class BadUidAnnotated(pydantic.BaseModel):
    infra: BadUidInfraAnnotated = BadUidInfraAnnotated()

    @infra.apply
    def process(self) -> int:
        return 1


def test_uid_string_customisation() -> None:
    assert CustomUid(x=3).infra.uid() == f"{MODULE}.CustomUid.process-v2/{ConfDict(x=3).to_uid()}"
    with pytest.raises(ValueError, match="_uid_string"):
        BadUid().infra.uid()


def test_uid_string_annotated_override_is_checked() -> None:
    with pytest.raises(ValueError, match="_uid_string"):
        BadUidAnnotated().infra.uid()


# --- yaml files -------------------------------------------------------------------------------
class WithSub(pydantic.BaseModel):
    p: int = 1
    a: A = A()
    infra: TaskInfra = TaskInfra(version="1", gpus_per_node=2)

    @infra.apply
    def process(self) -> int:
        CALLS.append("WithSub")
        return self.p


def test_yaml_files_written_when_computing(tmp_path: Path) -> None:
    obj = WithSub(p=2, a={"y": "z"}, infra={"folder": tmp_path, "cpus_per_task": 3})
    folder = obj.infra.uid_folder()
    assert folder is not None
    assert not folder.exists()  # nothing written at construction or by uid()
    assert obj.process() == 2
    assert ConfDict(_read(folder / "uid.yaml")) == {"p": 2, "a": {"y": "z"}}
    assert ConfDict(_read(folder / "full-uid.yaml")) == {
        "p": 2,
        "a": {"x": 12, "y": "z"},
        "infra": {"version": "1"},
    }
    config = ConfDict(_read(folder / "config.yaml"))
    assert config["p"] == 2 and config["a"] == {"x": 12, "y": "z"}
    infra = config["infra"]
    assert "permissions" not in infra
    assert infra["version"] == "1"
    assert infra["gpus_per_node"] == 2  # inherited from the class default
    assert infra["cpus_per_task"] == 3
    assert infra["folder"] == str(tmp_path)
    for name in ("cluster", "mode", "keep_in_ram", "logs", "timeout_min", "slurm_partition"):
        assert name in infra
    # the config round-trips into an equal object
    assert WithSub(**config).infra.uid() == obj.infra.uid()


def test_config_yaml_written_once(tmp_path: Path) -> None:
    WithSub(p=3, infra={"folder": tmp_path, "cpus_per_task": 3}).process()
    other = WithSub(p=3, infra={"folder": tmp_path, "cpus_per_task": 5, "keep_in_ram": True})
    assert other.process() == 3
    folder = other.infra.uid_folder()
    assert folder is not None
    assert _read(folder / "config.yaml")["infra"]["cpus_per_task"] == 3


def test_inconsistent_uid_yaml(tmp_path: Path) -> None:
    obj = WithSub(p=4, infra={"folder": tmp_path})
    folder = obj.infra.uid_folder()
    assert folder is not None
    folder.mkdir(parents=True)
    (folder / "uid.yaml").write_text("p: 5\n")
    before = _calls("WithSub")
    with pytest.raises(RuntimeError, match="Inconsistent uid config"):
        obj.process()
    assert _calls("WithSub") == before  # checked before computing


def test_changed_default_in_full_uid_yaml(tmp_path: Path) -> None:
    obj = WithSub(p=4, infra={"folder": tmp_path})
    folder = obj.infra.uid_folder()
    assert folder is not None
    folder.mkdir(parents=True)
    # as if the cache had been written when the class default of A.x was 99
    stale = {"p": 4, "a": {"x": 99, "y": "y"}, "infra": {"version": "1"}}
    (folder / "full-uid.yaml").write_text(yaml.safe_dump(stale))
    before = _calls("WithSub")
    with pytest.raises(RuntimeError, match=r"full-uid\.yaml"):
        obj.process()
    assert _calls("WithSub") == before
    # the status says what a call does, once a result is cached there
    fresh = WithSub(p=4, infra={"folder": tmp_path})
    assert fresh.infra.status() == "not submitted"
    cache = fresh.process.node().cache  # (a result cached with the old default)
    with cache.write():
        cache[TASK_KEY] = 4
    assert fresh.infra.status() == "failed"
    with pytest.raises(RuntimeError, match=r"full-uid\.yaml"):
        fresh.process()
    del cache[TASK_KEY]
    # removing full-uid.yaml is the documented way out
    (folder / "full-uid.yaml").unlink()
    assert WithSub(p=4, infra={"folder": tmp_path}).process() == 4
    assert ConfDict(_read(folder / "full-uid.yaml"))["a.x"] == 12


class Trainer(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    lr: float = 0.1
    epochs: int = 3
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def fit(self) -> float:
        return self.lr * self.epochs


class Color(str, enum.Enum):  # noqa: UP042  (str() of a key is "Color.RED", not its value)
    RED = "red"


class Sweep(pydantic.BaseModel):
    """Sub-configs in a list, a dict, dicts in a list, a dict with enum keys."""

    trainers: list[Trainer] = []
    named: dict[str, Trainer] = {}
    groups: list[dict[str, Trainer]] = []
    by_color: dict[Color, Trainer] = {}
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def best(self) -> float:
        CALLS.append("Sweep")
        held = [*self.trainers, *self.named.values(), *self.by_color.values()]
        return max(t.lr for t in held + [t for group in self.groups for t in group.values()])


def _expanded(value: tp.Any) -> tp.Any:
    """A yaml mapping with its dotted keys made nested plain dicts (in lists too)."""
    if isinstance(value, list):
        return [_expanded(item) for item in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, tp.Any] = {}
    for key, sub in value.items():
        *heads, last = str(key).split(".")
        place = out
        for head in heads:
            place = place.setdefault(head, {})
        place[last] = _expanded(sub)
    return out


@pytest.mark.parametrize(
    "path", [("trainers", 0), ("named", "a"), ("groups", 0, "a"), ("by_color", "red")]
)
def test_defaults_check_of_sub_configs_in_lists_and_dicts(
    tmp_path: Path, path: tuple[tp.Any, ...], caplog: pytest.LogCaptureFixture
) -> None:
    """full-uid.yaml as written by an older class of a sub-config held in a list, a dict,
    dicts in a list, a dict with enum keys: a field added since, or another class version
    of the sub-config, reuses the cache (the latter with a warning); another default
    fails; another value the uid encodes is a collision. A list is compared item by item,
    as a dict is (a whole list compared at once took any added field for a collision)."""
    trainer: tp.Any = Trainer(lr=0.5)
    for part in reversed(path[1:]):
        trainer = [trainer] if part == 0 else {Color(part) if part == "red" else part: trainer}
    field, key = path[0], ".".join(str(p) for p in path)
    obj = Sweep(**{field: trainer}, infra={"folder": tmp_path})
    assert obj.best() == 0.5
    folder = obj.infra.uid_folder()
    assert folder is not None
    full = folder / "full-uid.yaml"
    written = full.read_text()

    def located(old: tp.Any) -> tuple[tp.Any, tp.Any]:
        container: tp.Any = old[field]
        for part in path[1:-1]:
            container = container[part]
        return container, path[-1]

    container, last = located(ConfDict(yaml.safe_load(written)))
    assert ConfDict(container[last]) == {"lr": 0.5, "epochs": 3, "infra": {"version": "1"}}

    def cached_with(changes: dict[str, tp.Any], remove: str = "") -> tp.Any:
        old = _expanded(yaml.safe_load(written))  # (plain dicts: edited in place)
        container, last = located(old)
        target = container[last]
        for name, value in changes.items():
            target[name] = value
        if remove:
            del target[remove]
        full.write_text(ConfDict(old).to_yaml())
        infra_base._DEFAULTS_CHECKED.clear()  # (as in a new process)
        calls = _calls("Sweep")
        try:
            return Sweep(**{field: trainer}, infra={"folder": tmp_path}).best()
        finally:
            assert _calls("Sweep") == calls  # (reused or refused: never computed again)

    assert cached_with({}, remove="epochs") == 0.5  # (Trainer.epochs added since)
    container, last = located(_expanded(yaml.safe_load(full.read_text())))
    assert container[last]["epochs"] == 3  # (recorded by the reuse)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="exca"):
        assert cached_with({"infra.version": "0"}) == 0.5
    assert f"{key}.infra.version '0' -> '1'" in caplog.text
    with pytest.raises(RuntimeError, match=rf"Default {key}.epochs=3 seems incompatible"):
        cached_with({"epochs": 4})
    with pytest.raises(RuntimeError, match=rf"Inconsistent uid config .*{key}.lr=0.5 here"):
        cached_with({"lr": 0.25})


class PlainData(pydantic.BaseModel):
    specs: list[dict[str, int]] = [{"a": 1}]
    table: dict[str, int] = {"a": 1}
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        CALLS.append("PlainData")
        return len(self.specs) + len(self.table)


class _Rate(pydantic.BaseModel):
    lr: float = 0.05
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def run(self) -> float:
        return self.lr * 2


def test_a_changed_default_says_what_removing_full_uid_yaml_does(tmp_path: Path) -> None:
    """The changed-default error began its advice with "to ignore, remove full-uid.yaml":
    a newcomer took it for the harmless way out, and the results of lr=0.01 then read
    back as those of lr=0.05. The safe ways come first, and the removal says what it
    does: only if the results also hold for the new default, and they are then read for
    it."""
    rate = _Rate(infra={"folder": tmp_path})
    assert rate.run() == 0.1
    full = rate.infra.uid_folder() / "full-uid.yaml"
    full.write_text(full.read_text().replace("0.05", "0.01"))  # (computed with 0.01)
    infra_base._DEFAULTS_CHECKED.clear()  # (as in a new process)
    with pytest.raises(RuntimeError, match="seems incompatible") as info:
        _Rate(infra={"folder": tmp_path}).run()
    message = str(info.value)
    assert "to ignore" not in message
    said = "only if the cached results also hold for lr=0.05, remove full-uid.yaml: they are"
    assert said in message and message.index("bump the infra version") < message.index(said)


@pytest.mark.parametrize(
    "cached",
    [{"specs": [{"a": 1, "b": 2}]}, {"specs": [{}]}, {"table": {"a": 1, "b": 2}}, {"table": {}}],
)
def test_defaults_check_of_plain_dicts_sees_added_keys(tmp_path: Path, cached: dict) -> None:
    """In plain data (not models), a key added to or removed from a default dict, in a
    list too, is a changed default (only a model's fields may be added since)."""
    obj = PlainData(infra={"folder": tmp_path})
    assert obj.run() == 2
    computed = _calls("PlainData")
    folder = obj.infra.uid_folder()
    assert folder is not None
    written = {"specs": [{"a": 1}], "table": {"a": 1}, "infra": {"version": "1"}}
    assert ConfDict(yaml.safe_load((folder / "full-uid.yaml").read_text())) == written
    (folder / "full-uid.yaml").write_text(yaml.safe_dump({**written, **cached}))
    infra_base._DEFAULTS_CHECKED.clear()  # (as in a new process)
    (name,) = cached
    with pytest.raises(RuntimeError, match=f"Default {name}[.=].* seems incompatible"):
        PlainData(infra={"folder": tmp_path}).run()
    assert _calls("PlainData") == computed


class Noisy(pydantic.BaseModel):
    n: int = 3
    noise: float = 0.0
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def load(self) -> list[float]:
        CALLS.append("Noisy")
        return [i + self.noise for i in range(self.n)]


def test_a_reuse_records_the_default_of_a_field_added_since(tmp_path: Path) -> None:
    """A field added to the class since the cache was written reuses it, and its default
    was never recorded: a later change of that default went unnoticed (the old results
    came back). The reuse records it now; plans and read-only calls write nothing."""
    import exca

    obj = Noisy(infra={"folder": tmp_path})
    assert obj.load() == [0, 1, 2]
    folder = obj.infra.uid_folder()
    assert folder is not None
    full = folder / "full-uid.yaml"
    written = full.read_text()
    older = ConfDict(yaml.safe_load(written))
    del older["noise"]
    full.write_text(older.to_yaml())  # (as written before the class had `noise`)
    computed = _calls("Noisy")
    infra_base._DEFAULTS_CHECKED.clear()  # (as in a new process)
    reader = Noisy(infra={"folder": tmp_path, "mode": "read-only"})
    assert "cached" in str(exca.graph.plan(reader.load.node()))
    assert reader.load() == [0, 1, 2]
    assert full.read_text() == older.to_yaml()  # (read-only: nothing written)
    # a plan, status() or a read-only call first (same process, same instance or node):
    # checked without recording, the reuse that follows recorded nothing (a review)
    for first in ("plan", "status", "node"):
        full.write_text(older.to_yaml())
        infra_base._DEFAULTS_CHECKED.clear()
        again = Noisy(infra={"folder": tmp_path})
        node = again.load.node()
        if first == "status":
            assert again.infra.status() == "completed"
        else:
            assert "cached" in str(exca.graph.plan(node))
        assert full.read_text() == older.to_yaml()  # (nothing written)
        assert Noisy(infra={"folder": tmp_path, "mode": "read-only"}).load() == [0, 1, 2]
        assert full.read_text() == older.to_yaml()
        assert (node.result() if first == "node" else again.load()) == [0, 1, 2]
        assert full.read_text() == written, first  # the reuse recorded noise=0.0
    assert _calls("Noisy") == computed


def test_a_field_renamed_with_another_default_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A field renamed (jitter -> noise) reads as one removed and one added: the results are
    reused, taken as computed with the new field's default. When that default is another
    value than the removed field had (the default changed with the rename, before this
    folder was reused), they were computed with the old value: the reuse says so, naming
    both, and what to do, once per step folder (a sweep's configs: not one warning each).
    A rename at the same value is silent."""
    from exca.storage import saidonce

    saidonce._SAID.clear()  # (as in a new process)
    configs = [Noisy(n=n, infra={"folder": tmp_path}) for n in (3, 4)]
    fulls = []
    for obj in configs:
        obj.load()
        folder = obj.infra.uid_folder()
        assert folder is not None
        fulls.append(folder / "full-uid.yaml")
    for old_value, warned in ((0.5, True), (0.0, False)):
        for full in fulls:
            older = ConfDict(yaml.safe_load(full.read_text()))
            del older["noise"]
            older["jitter"] = old_value  # (as written when the field was `jitter`)
            full.write_text(older.to_yaml())
        infra_base._DEFAULTS_CHECKED.clear()  # (as in a new process)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="exca"):
            assert Noisy(infra={"folder": tmp_path}).load() == [0, 1, 2]
            assert Noisy(n=4, infra={"folder": tmp_path}).load() == [0, 1, 2, 3]
        shown = "jitter=0.5, which is no field now, and before noise (default 0.0) was added"
        assert caplog.text.count(shown) == int(warned), caplog.text
        assert ("bump the infra version" in caplog.text) is warned
        assert all("noise: 0.0" in full.read_text() for full in fulls)  # (recorded)


class NoisyWithInputs(pydantic.BaseModel):
    n: int = 3
    noise: float = 0.0
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def load(self, offset: int) -> float:
        CALLS.append("NoisyWithInputs")
        return self.n + offset + self.noise


def _as_when_noise_was_jitter(full: Path) -> None:
    """Rewrite a full-uid.yaml as written when the field ``noise`` was ``jitter=0.5``."""
    older = ConfDict(yaml.safe_load(full.read_text()))
    del older["noise"]
    older["jitter"] = 0.5
    full.write_text(older.to_yaml())


def test_a_field_renamed_with_another_default_is_warned_of_once_per_step_with_inputs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A task with inputs keeps each result in a sub-folder of its config folder, with a
    full-uid.yaml of its own when it differs from the config folder's: the warning of a
    renamed field, "once per step folder", was once per folder above the one read, i.e.
    once per config (a sweep of 2 configs x 2 inputs: 2 warnings). Once per step now."""
    from exca.storage import saidonce

    configs = [NoisyWithInputs(n=n, infra={"folder": tmp_path}) for n in (3, 4)]
    for obj in configs:
        for offset in (10, 20):
            assert obj.load(offset) == obj.n + offset
    subs = sorted(tmp_path.glob("*/*/inputs-*"))
    assert len(subs) == 4, subs
    for sub in subs:  # (their own records: as written when the sub-configs' versions differed)
        (sub / "full-uid.yaml").write_text((sub.parent / "full-uid.yaml").read_text())
        _as_when_noise_was_jitter(sub / "full-uid.yaml")
    infra_base._DEFAULTS_CHECKED.clear()  # (as in a new process)
    saidonce._SAID.clear()
    with caplog.at_level(logging.WARNING, logger="exca"):
        for n in (3, 4):
            for offset in (10, 20):
                assert NoisyWithInputs(n=n, infra={"folder": tmp_path}).load(offset) == n + offset
    shown = "jitter=0.5, which is no field now, and before noise (default 0.0) was added"
    assert caplog.text.count(shown) == 1, caplog.text
    assert all("noise: 0.0" in (sub / "full-uid.yaml").read_text() for sub in subs)


def test_a_plan_says_a_field_renamed_with_another_default_before_the_reuse(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A field renamed with another default was said only by the call recording the
    reuse: a plan (``exca plan``) said "cached" and nothing of it, the user learnt it once
    the work ran, and a read-only call never. The plan says it in its table (writing
    nothing, logging nothing: a plan of many nodes is silent, as for other sub-config
    versions); the reuse after it says it once, and records the field's default; a
    read-only call says it too, after a plan as well."""
    import exca
    from exca.storage import saidonce

    obj = Noisy(infra={"folder": tmp_path})
    assert obj.load() == [0, 1, 2]
    folder = obj.infra.uid_folder()
    assert folder is not None
    full = folder / "full-uid.yaml"
    _as_when_noise_was_jitter(full)
    older = full.read_text()
    infra_base._DEFAULTS_CHECKED.clear()  # (as in a new process)
    saidonce._SAID.clear()
    shown = "jitter=0.5, which is no field now, and before noise (default 0.0) was added"
    with caplog.at_level(logging.WARNING, logger="exca"):
        for _ in range(2):  # (the second plan: the check is not done again)
            (entry,) = exca.graph.plan(Noisy(infra={"folder": tmp_path}).load.node()).entries
            assert entry.status == "cached" and shown in entry.reason, entry.reason
        assert shown not in caplog.text  # (the table says it: the plan is silent)
        assert full.read_text() == older  # (a plan writes nothing)
        assert Noisy(infra={"folder": tmp_path}).load() == [0, 1, 2]
        assert caplog.text.count(shown) == 1, caplog.text  # (the reuse says it)
        caplog.clear()
        assert Noisy(infra={"folder": tmp_path}).load() == [0, 1, 2]
        (entry,) = exca.graph.plan(Noisy(infra={"folder": tmp_path}).load.node()).entries
    assert shown not in caplog.text  # (said once)
    assert entry.reason == "cached", entry.reason  # (recorded since: nothing to say)
    assert "noise: 0.0" in full.read_text()  # (recorded by the reuse)
    # a read-only call reuses them too (recording nothing): it said nothing at all; it
    # says it, after a plan too
    for plan_first in (False, True):
        full.write_text(older)
        infra_base._DEFAULTS_CHECKED.clear()
        saidonce._SAID.clear()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="exca"):
            read_only = Noisy(infra={"folder": tmp_path, "mode": "read-only"})
            if plan_first:
                exca.graph.plan(read_only.load.node())
                assert shown not in caplog.text
            assert read_only.load() == [0, 1, 2]
        assert caplog.text.count(shown) == 1, caplog.text
        assert full.read_text() == older


class Relabelled(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    a: float = 0.2
    b: float = 1.0
    sub: Noisy = Noisy()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def load(self) -> float:
        CALLS.append("Relabelled")
        return self.a + self.b


def _reuse_with_older(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, renames: dict[str, tp.Any]
) -> str:
    """The warnings of reusing Relabelled's folder after its full-uid.yaml is rewritten as
    if the fields (flat keys) had other names and values then: {name now: (then, value)}."""
    from exca.storage import saidonce

    obj = Relabelled(infra={"folder": tmp_path})
    obj.load()
    folder = obj.infra.uid_folder()
    assert folder is not None
    full = folder / "full-uid.yaml"
    older = ConfDict(yaml.safe_load(full.read_text())).flat()
    for name, (then, value) in renames.items():
        del older[name]
        older[then] = value
    full.write_text(ConfDict(older).to_yaml())
    infra_base._DEFAULTS_CHECKED.clear()  # (as in a new process)
    saidonce._SAID.clear()  # (as in a new process)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="exca"):
        assert Relabelled(infra={"folder": tmp_path}).load() == 1.2
    return caplog.text


def test_a_renamed_field_with_another_default_beside_one_renamed_as_is_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two fields renamed, one at its old value (b: 1.0), one with another default (a: 0.5
    then, 0.2 now): the results hold a=0.5. The value matched by the other rename hid it
    (no warning at all)."""
    text = _reuse_with_older(tmp_path, caplog, {"a": ("old_a", 0.5), "b": ("old_b", 1.0)})
    assert "computed with old_a=0.5, which is no field now, and before a (default 0.2)" in text
    assert "old_b" not in text  # (renamed as is: not named)


def test_a_sub_config_field_renamed_as_is_is_not_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A sub-config field renamed with the same sub-config values is a rename at the same
    value: silent (it warned, a dict value never being 'the same')."""
    renames = {"sub.n": ("data.n", 3), "sub.noise": ("data.noise", 0.0)}
    renames["sub.infra.version"] = ("data.infra.version", "1")
    assert "Reusing the results" not in _reuse_with_older(tmp_path, caplog, renames)


CHANGING_DEFAULT = """
import sys, typing as tp
import pydantic, exca

class Task(pydantic.BaseModel):
    x: int = int(sys.argv[2])  # the class default of this run
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def value(self) -> int:
        print("computing the task", flush=True)
        return self.x

class Items(pydantic.BaseModel):
    x: int = int(sys.argv[2])
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        print("computing items", flush=True)
        yield from (i * self.x for i in items)

class Down(pydantic.BaseModel):
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def twice(self, value: int) -> int:
        print("computing downstream", flush=True)
        return 2 * value

folder = sys.argv[1]
down = lambda: Down(infra={"folder": folder}).twice.node(Task(infra={"folder": folder}).value.node())
calls = {
    "task": lambda: Task(infra={"folder": folder}).value(),
    "node": lambda: Task(infra={"folder": folder}).value.node().result(),
    "job": lambda: Task(infra={"folder": folder}).value.node().job().result(),
    "down": lambda: down().result(),
    "read-only": lambda: Task(infra={"folder": folder, "mode": "read-only"}).value(),
    "map": lambda: list(Items(infra={"folder": folder}).process([1, 2])),
    "run": lambda: exca.graph.run(Task(infra={"folder": folder}).value.node()),
}
for name in sys.argv[3:]:
    try:
        print(name, "->", calls[name]())
    except RuntimeError as error:
        print(name, "-> RuntimeError", str(error).split(" in ")[0])
if sys.argv[3:] == ["task"]:
    print(exca.graph.plan(Task(infra={"folder": folder}).value.node()))
if sys.argv[3:] == ["down"]:
    print(exca.graph.plan(down()))
"""


def test_cached_results_of_another_default_are_not_reused(tmp_path: Path) -> None:
    """A class default changed between two runs: the results cached with the old default
    are not returned (the uid, made of non-defaults, is the same): calls, read-only,
    maps, run() and plans say so."""
    script = tmp_path / "changing.py"
    script.write_text(CHANGING_DEFAULT)

    def run(default: int, *calls: str, cache: str = "cache", **env: str) -> str:
        argv = [sys.executable, str(script), str(tmp_path / cache), str(default), *calls]
        environ = {**os.environ, **env}
        return subprocess.run(argv, capture_output=True, text=True, check=True, env=environ).stdout

    first = run(1, "task", "map", "down")
    assert "task -> 1" in first and "map -> [1, 2]" in first and "down -> 2" in first
    assert run(1, "task", "map", "down").count("computing") == 0  # same defaults: reused
    changed = run(2, "node", "job", "task", "read-only", "map", "run")
    assert "computing" not in changed
    expected = "-> RuntimeError Default x=2 seems incompatible with the cached x=1"
    for name in ("node", "job", "task", "read-only", "map", "run"):
        assert f"{name} {expected}" in changed, changed
    plan = run(2, "task").splitlines()
    (line,) = [line for line in plan if "Task.value,1/default" in line]
    assert line.split()[:2] == ["cached", "fail"] and "x=2 seems incompatible" in line
    # what was computed from an output made with the old default (its uid did not change)
    changed = run(2, "down")
    assert "computing" not in changed
    assert "down -> RuntimeError" in changed and "was computed from" in changed, changed
    (line,) = [line for line in changed.splitlines() if line.startswith("  cached ")]
    assert "Down.twice,1/default" in line
    assert line.split()[:2] == ["cached", "fail"] and "x=2 seems incompatible" in line
    # a cache under legacy (v2) folder names is renamed by the first call, then checked
    assert "task -> 1" in run(1, "task", cache="legacy", CONFDICT_UID_VERSION="2")
    assert f"task {expected}" in run(2, "task", cache="legacy")


class _Upstream(pydantic.BaseModel):
    x: int = 1
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def value(self) -> int:
        return self.x


class _Downstream(pydantic.BaseModel):
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def twice(self, value: int) -> int:
        return 2 * value


def test_a_defaults_check_with_nothing_to_check_yet_is_made_again(tmp_path: Path) -> None:
    """A downstream result reused while its upstream's folder is gone: nothing to check
    then; once another process computed the upstream with another class default, the
    same node refuses its result (the first check was remembered as passed)."""
    import shutil

    def down() -> tp.Any:
        up = _Upstream(infra={"folder": tmp_path}).value.node()
        return _Downstream(infra={"folder": tmp_path}).twice.node(up), up

    def in_another_process(call: str) -> None:
        code = f"import test_identity as t; folder = {str(tmp_path)!r}; {call}"
        subprocess.run([sys.executable, "-c", code], check=True)

    in_another_process(
        "t._Downstream(infra={'folder': folder}).twice(t._Upstream(infra={'folder': folder}).value.node())"
    )
    node, up = down()
    assert up.folder is not None
    shutil.rmtree(up.folder)  # (cleaned, or removed by another user)
    assert node.result() == 2  # nothing to check against
    # another process, whose class default is x=2, computes the upstream again
    in_another_process("t._Upstream(infra={'folder': folder}).value()")
    full = up.folder / "full-uid.yaml"
    full.write_text(full.read_text().replace("x: 1", "x: 2"))
    with pytest.raises(RuntimeError, match=r"was computed from .*Default x=1 seems incompatible"):
        node.result()
    # a downstream node not computed yet does not say it was computed from it
    other = _Downstream(infra={"folder": tmp_path / "other"}).twice.node(up)
    with pytest.raises(RuntimeError, match=r"needs .*, whose cached result no longer applies"):
        other.result()


@pytest.mark.parametrize("content", ["p: [unclosed\n", "- 1\n- 2\n", ""])
def test_unreadable_yaml_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str
) -> None:
    obj = WithSub(p=6, infra={"folder": tmp_path})
    folder = obj.infra.uid_folder()
    assert folder is not None
    folder.mkdir(parents=True)
    (folder / "uid.yaml").write_text(content)
    (folder / "config.yaml").write_text(content)
    with caplog.at_level(logging.WARNING, logger="exca"):
        assert obj.process() == 6
    assert any(r.levelno >= logging.WARNING for r in caplog.records)
    assert ConfDict(_read(folder / "uid.yaml")) == {"p": 6}
    assert _read(folder / "config.yaml")["p"] == 6  # (SPEC §10: rewritten too)
    assert WithSub(p=6, infra={"folder": tmp_path}).process() == 6


# --- freezing -------------------------------------------------------------------------------
class Frozen(pydantic.BaseModel):
    p: int = 1
    a: A = A()
    _note: str = pydantic.PrivateAttr("")
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return self.p


def test_freeze_after_uid() -> None:
    obj = Frozen()
    obj.p = 2  # not frozen yet
    obj.a.x = 3
    uid = obj.infra.uid()
    with pytest.raises(RuntimeError, match="frozen"):
        obj.p = 3
    with pytest.raises(RuntimeError, match="frozen"):
        obj.a.x = 4
    obj._note = "private attributes can still be set"
    assert obj._note.startswith("private")
    assert obj.p == 2 and obj.a.x == 3 and obj.infra.uid() == uid
    clone = obj.infra.clone_obj()
    clone.p = 5
    clone.a.x = 5
    assert clone.infra.uid() != uid
    # freezing one instance does not freeze others
    other = Frozen()
    other.p = 7
    other.a.x = 7


class _Revalidated(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", revalidate_instances="always")
    x: int = 1


class _HoldsRevalidated(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    sub: _Revalidated = _Revalidated()
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return self.sub.x


def test_copies_of_a_frozen_config_are_not_frozen() -> None:
    obj = _HoldsRevalidated(sub={"x": 2})
    obj.infra.uid()
    with pytest.raises(RuntimeError, match="frozen"):
        obj.sub.x = 3
    copies = [
        copy.copy(obj.sub),
        copy.deepcopy(obj.sub),
        pickle.loads(pickle.dumps(obj.sub)),
        obj.sub.model_copy(),
        # (pydantic gives a revalidated instance the very set of fields set of the original)
        _Revalidated.model_validate(obj.sub),
        _HoldsRevalidated(sub=obj.sub).sub,
    ]
    for number, other in enumerate(copies):
        assert other is not obj.sub
        other.x = 10 + number  # not frozen
        assert other.model_fields_set == {"x"} and other.x == 10 + number
    assert obj.sub.x == 2 and obj.sub.model_dump(exclude_unset=True) == {"x": 2}
    with pytest.raises(RuntimeError, match="frozen"):
        obj.sub.x = 4


def _may_hold_a_model(annotation: tp.Any) -> bool:
    if annotation is tp.Any or annotation is object:
        return True
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return True
    return any(_may_hold_a_model(arg) for arg in tp.get_args(annotation))


@pytest.mark.parametrize("cls", [TaskInfra, MapInfra])
def test_infra_fields_skipped_by_freezing_hold_no_model(cls: type, tmp_path: Path) -> None:
    """Freezing does not look into an infra's scalar settings: none can hold a model."""
    scalars = cls._exca_scalar_fields
    assert scalars <= set(TaskInfra.model_fields) | set(MapInfra.model_fields)  # (no stale name)
    scalars &= set(cls.model_fields)
    for name in scalars:
        assert not _may_hold_a_model(cls.model_fields[name].annotation), name
    assert not _may_hold_a_model(int | None) and _may_hold_a_model(list[tp.Any])
    walked = set(cls.model_fields) - scalars
    assert walked == {"workdir"}
    obj = Frozen(infra={"workdir": {"copied": ["."]}, "folder": tmp_path})
    obj.infra.uid()
    with pytest.raises(RuntimeError, match="frozen"):
        obj.infra.workdir.copied = []  # type: ignore[union-attr]


class _InfraWithModel(TaskInfra):
    """A user's infra subclass: its own fields are walked by freezing."""

    helper: A = A()


class _UsesInfraWithModel(pydantic.BaseModel):
    p: int = 1
    infra: _InfraWithModel = _InfraWithModel()

    @infra.apply
    def process(self) -> int:
        return self.p


def test_fields_of_a_user_infra_subclass_are_frozen() -> None:
    obj = _UsesInfraWithModel()
    obj.infra.uid()
    with pytest.raises(RuntimeError, match="frozen"):
        obj.infra.helper.x = 5


def test_freeze_after_first_call() -> None:
    obj = Frozen(p=3)
    assert obj.process() == 3
    with pytest.raises(
        RuntimeError,
        match=r"Cannot set Frozen\.p: the instance was frozen.*"
        r"obj\.infra\.clone_obj\(\{'p': 4\}\)",
    ):
        obj.p = 4
    clone = obj.infra.clone_obj(p=4)
    assert clone.process() == 4
    with pytest.raises(RuntimeError, match=r"Cannot set Frozen\.p"):
        clone.p = 5
    # a sub-config has no infra: the hint names the config holding one
    holder = WithSub()
    holder.infra.uid()
    with pytest.raises(RuntimeError, match=r"config\.infra\.clone_obj\(\{'<path to it>\.x'"):
        holder.a.x = 3


# --- class-default inheritance and infra instances ----------------------------------------
class Gpus(pydantic.BaseModel):
    x: int = 1
    infra: TaskInfra = TaskInfra(version="1", gpus_per_node=12)

    @infra.apply
    def process(self) -> int:
        return self.x


def test_class_default_infra_seeds_instances(tmp_path: Path) -> None:
    obj = Gpus(infra={"folder": tmp_path})
    assert obj.infra.gpus_per_node == 12 and obj.infra.version == "1"
    assert obj.infra.folder == tmp_path
    over = Gpus(infra={"folder": tmp_path, "gpus_per_node": 2, "version": "3"})
    assert over.infra.gpus_per_node == 2 and over.infra.version == "3"
    explicit = Gpus(infra=TaskInfra(folder=tmp_path))
    assert explicit.infra.gpus_per_node == 12 and explicit.infra.version == "1"
    # an explicitly set field equal to the field default still overrides the class default
    assert Gpus(infra={"version": "0"}).infra.version == "0"
    assert Gpus().infra.gpus_per_node == 12


class GpusWithPrivate(pydantic.BaseModel):
    x: int = 1
    _scratch: dict[str, int] = pydantic.PrivateAttr(default_factory=dict)
    infra: TaskInfra = TaskInfra(version="1", gpus_per_node=12)

    @infra.apply
    def process(self) -> int:
        return self.x


def test_owner_with_private_attributes_links_its_infra(tmp_path: Path) -> None:
    # regression: pydantic replaced the linking hook of owners having private attributes
    obj = GpusWithPrivate(x=2, infra={"folder": tmp_path})
    assert obj.infra.gpus_per_node == 12 and obj.infra.version == "1"
    assert obj.infra.uid() == f"{MODULE}.GpusWithPrivate.process,1/{ConfDict(x=2).to_uid()}"
    assert obj._scratch == {}
    assert obj.process() == 2


def test_passed_infra_is_copied(tmp_path: Path) -> None:
    infra = TaskInfra(folder=tmp_path, version="1")
    one = Gpus(x=1, infra=infra)
    two = Gpus(x=2, infra=infra)
    assert one.infra is not two.infra
    assert one.infra is not infra
    assert one.infra.uid() != two.infra.uid()
    assert one.process() == 1 and two.process() == 2
    assert one.infra.gpus_per_node == 12
    # the class-level default is not modified either
    assert Gpus.model_fields["infra"].default.folder is None


def test_infra_repr_shows_non_defaults() -> None:
    assert repr(TaskInfra()) == "TaskInfra()"
    text = repr(TaskInfra(version="1", gpus_per_node=12))
    assert "version='1'" in text and "gpus_per_node=12" in text
    for name in ("cluster", "mode", "folder", "keep_in_ram", "logs", "nodes", "permissions"):
        assert f"{name}=" not in text
    assert repr(MapInfra()) == "MapInfra()"


# --- subclassing -------------------------------------------------------------------------
class Parent(pydantic.BaseModel):
    p: int = 1
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def func(self) -> int:
        CALLS.append("Parent")
        return self.p


class Inherits(Parent):
    q: int = 0


class OverridesUndecorated(Parent):
    def func(self) -> int:  # type: ignore[override]
        return super().func() + 100


class OverridesInfra(Parent):
    infra: TaskInfra = TaskInfra(version="2")


def test_subclass_inheriting_method_gets_own_folder(tmp_path: Path) -> None:
    obj = Inherits(p=2, infra={"folder": tmp_path})
    assert obj.infra.uid() == f"{MODULE}.Inherits.func,1/{ConfDict(p=2).to_uid()}"
    assert obj.func() == 2
    assert (tmp_path / f"{MODULE}.Inherits.func,1").is_dir()
    assert not (tmp_path / f"{MODULE}.Parent.func,1").exists()


def test_subclass_overriding_method_uses_parent_cache(tmp_path: Path) -> None:
    parent = Parent(p=5, infra={"folder": tmp_path})
    assert parent.func() == 5
    before = _calls("Parent")
    child = OverridesUndecorated(p=5, infra={"folder": tmp_path})
    assert child.infra.uid() == parent.infra.uid()
    assert child.func() == 105
    assert _calls("Parent") == before  # read from the parent's cache
    assert [p.name for p in tmp_path.iterdir()] == [f"{MODULE}.Parent.func,1"]


def test_overriding_infra_without_apply() -> None:
    with pytest.raises(RuntimeError, match="infra"):
        OverridesInfra()


class OverridesInfraAndMethod(Parent):
    infra: TaskInfra = TaskInfra(version="2")  # (e.g. a version bump in a subclass)

    @infra.apply
    def func(self) -> int:
        CALLS.append("OverridesInfraAndMethod")
        return super().func() * 10


class MapParent(pydantic.BaseModel):
    infra: MapInfra = MapInfra(version="1")

    @infra.apply(item_uid=str)
    def each(self, items: list[int]) -> tp.Iterator[int]:
        CALLS.extend(f"MapParent{item}" for item in items)
        for item in items:
            yield item + 1


class MapOverridesInfraAndMethod(MapParent):
    infra: MapInfra = MapInfra(version="2")

    @infra.apply(item_uid=str)
    def each(self, items: list[int]) -> tp.Iterator[int]:
        for output in super().each(items):
            yield output * 10


class InfraForAnotherMethod(Parent):
    infra: TaskInfra = TaskInfra(version="2")

    @infra.apply
    def other(self) -> int:
        CALLS.append("InfraForAnotherMethod")
        return -1


def test_a_method_whose_infra_a_subclass_applies_to_another_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A subclass declaring the infra again for another method: the parent's method on
    its instances returned the other method's result (read from its cache, 11b796b). It
    runs as a plain method (the infra is the other method's), said once."""
    obj = InfraForAnotherMethod(p=4, infra={"folder": tmp_path})
    with caplog.at_level(logging.WARNING, logger="exca"):
        assert obj.func() == 4 and obj.func() == 4
    assert _calls("InfraForAnotherMethod") == 0
    said = [r.getMessage() for r in caplog.records if "is not cached" in r.message]
    assert said == [
        "Parent.func is not cached on InfraForAnotherMethod instances: InfraForAnotherMethod "
        "declares 'infra' again for other only (it runs as a plain method; decorate an "
        "override of func in InfraForAnotherMethod to cache it there)"
    ]
    assert list(tmp_path.iterdir()) == []
    assert obj.other() == -1


def test_subclass_overriding_infra_and_method_calls_the_parent_uncached(tmp_path: Path) -> None:
    """A subclass declaring the infra again and decorating its override, which calls
    super().func(): the parent's method found the subclass's infra, applied to the
    override, and raised 'already being computed by this very thread' (a map cached a
    RecursionError per item). The parent's method is part of the override: it runs
    inside the override's computation, cached in the override's folder only."""
    obj = OverridesInfraAndMethod(p=3, infra={"folder": tmp_path})
    assert obj.func() == 30
    assert obj.infra.uid().startswith(f"{MODULE}.OverridesInfraAndMethod.func,2/")
    assert [p.name for p in tmp_path.iterdir()] == [f"{MODULE}.OverridesInfraAndMethod.func,2"]
    before = (_calls("Parent"), _calls("OverridesInfraAndMethod"))
    assert OverridesInfraAndMethod(p=3, infra={"folder": tmp_path}).func() == 30
    assert (_calls("Parent"), _calls("OverridesInfraAndMethod")) == before  # cached
    assert Parent(p=3, infra={"folder": tmp_path}).func() == 3  # the parent's own cache
    # a map
    mapper = MapOverridesInfraAndMethod(infra={"folder": tmp_path / "map"})
    (tmp_path / "map").mkdir()
    assert list(mapper.each([1, 2])) == [20, 30]
    assert sorted(mapper.infra.cache_dict.keys()) == ["1", "2"]
    assert [p.name for p in (tmp_path / "map").iterdir()] == [
        f"{MODULE}.MapOverridesInfraAndMethod.each,2"
    ]
    before_map = _calls("MapParent1")
    assert list(MapOverridesInfraAndMethod(infra={"folder": tmp_path / "map"}).each([1])) == [20]
    assert _calls("MapParent1") == before_map


# --- several infras, decorator errors, private infra ---------------------------------------
class TwoInfras(pydantic.BaseModel):
    x: int = 1
    task: TaskInfra = TaskInfra(version="1")
    mapper: MapInfra = MapInfra(version="2")

    @task.apply
    def total(self) -> int:
        return self.x * 10

    @mapper.apply(item_uid=str)
    def each(self, items: list[int]) -> tp.Iterator[int]:
        for item in items:
            yield item * self.x


def test_two_infras_on_one_class(tmp_path: Path) -> None:
    obj = TwoInfras(x=3, task={"folder": tmp_path}, mapper={"folder": tmp_path})
    cfg_uid = ConfDict(x=3).to_uid()
    assert obj.task.uid() == f"{MODULE}.TwoInfras.total,1/{cfg_uid}"
    assert obj.mapper.uid() == f"{MODULE}.TwoInfras.each,2/{cfg_uid}"
    assert obj.total() == 30
    assert list(obj.each([1, 2])) == [3, 6]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{MODULE}.TwoInfras.each,2",
        f"{MODULE}.TwoInfras.total,1",
    ]
    assert set(obj.task.obj_infras()) == {"task", "mapper"}


def test_apply_twice_refused() -> None:
    with pytest.raises(RuntimeError, match="already applied"):

        class Twice(pydantic.BaseModel):
            infra: TaskInfra = TaskInfra()

            @infra.apply
            def one(self) -> int:
                return 1

            @infra.apply
            def two(self) -> int:
                return 2


def test_apply_refuses_dunders() -> None:
    # (methods with parameters are allowed: SPEC [ours] "Tasks with inputs")
    with pytest.raises(ValueError):

        class Dunder(pydantic.BaseModel):
            infra: TaskInfra = TaskInfra()

            @infra.apply
            def __call__(self) -> int:
                return 1


class PrivateInfra(pydantic.BaseModel):
    model_config = FORBID
    x: int = 1
    _infra: TaskInfra = TaskInfra(version="3", keep_in_ram=True)

    @_infra.apply
    def process(self) -> int:
        CALLS.append("PrivateInfra")
        return self.x * 2


def test_private_infra() -> None:
    obj = PrivateInfra(x=4)
    assert obj._infra.uid() == f"{MODULE}.PrivateInfra.process,3/{ConfDict(x=4).to_uid()}"
    before = _calls("PrivateInfra")
    assert obj.process() == 8
    assert obj.process() == 8
    assert _calls("PrivateInfra") == before + 1  # keep_in_ram
    assert obj.model_dump() == {"x": 4}
    assert "_infra" in obj._infra.obj_infras()
    other = PrivateInfra(x=5)
    assert other._infra is not obj._infra
    assert other.process() == 10


def test_private_infra_with_folder(tmp_path: Path) -> None:
    class LocalPrivate(pydantic.BaseModel):
        model_config = FORBID
        x: int = 1
        _infra: TaskInfra = TaskInfra(folder=tmp_path)

        @_infra.apply
        def process(self) -> int:
            CALLS.append("LocalPrivate")
            return self.x

    before = _calls("LocalPrivate")
    assert LocalPrivate(x=2).process() == 2
    assert LocalPrivate(x=2).process() == 2
    assert _calls("LocalPrivate") == before + 1
    folder = LocalPrivate(x=2)._infra.uid_folder()
    assert folder is not None and (folder / "uid.yaml").exists()


# --- pickling and copies --------------------------------------------------------------------
def test_pickle_and_copies_keep_working_infra(tmp_path: Path) -> None:
    obj = Basic(p=7, infra={"folder": tmp_path})
    assert obj.process() == "7-hello"
    uid = obj.infra.uid()
    before = _calls("Basic")
    for other in (
        pickle.loads(pickle.dumps(obj)),
        copy.deepcopy(obj),
        copy.copy(obj),
        obj.model_copy(),
        obj.model_copy(deep=True),
    ):
        assert other.infra is not obj.infra
        assert other.infra.uid() == uid
        assert other.process() == "7-hello"
        assert other.infra.folder == tmp_path
    assert _calls("Basic") == before  # all read from the cache
    # an unfrozen object can be pickled before its uid is computed too
    fresh = pickle.loads(pickle.dumps(Basic(p=8, infra={"folder": tmp_path})))
    assert fresh.process() == "8-hello"
    assert fresh.infra.uid() == Basic(p=8).infra.uid()


class _DottedInside(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    params: dict[str, int] = {}
    anything: tp.Any = None
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return 1


@pytest.mark.parametrize(
    "values",
    [
        {"params": {"a.b": 1, "a.c": 2}},  # split and merged by a ConfDict
        {"anything": [{"x.y": 1, "x.z": 2}]},  # inside a list
        {"anything": {"k": {"=replace=": True, "v": 3}}},
        {"params": {"a": 1, "b": 2}},
    ],
)
def test_uid_of_user_keys_matches_confdict(values: dict[str, tp.Any]) -> None:
    """Keys that are not field names may hold dots: the uid is the ConfDict's uid of the
    export, whatever shortcut the uid computation takes."""
    obj = _DottedInside(**values)
    exported = identity.export_model(obj, uid=True, exclude_defaults=True)
    expected = ConfDict(exported).to_uid()
    assert obj.infra.uid().rsplit("/", 1)[1] == expected


class _SerializedAsDict(pydantic.BaseModel):
    """Plain annotations whose serializers dump dicts with dotted and override keys."""

    model_config = pydantic.ConfigDict(extra="forbid")
    x: tp.Annotated[int, pydantic.PlainSerializer(lambda v: {"a.b": v, "a.c": 2, "d": 3})] = 0
    y: int = 0
    infra: TaskInfra = TaskInfra(version="1")

    @pydantic.field_serializer("y")
    def _serialize_y(self, value: int) -> tp.Any:
        return [{"=replace=": True, "k": value, "k2.z": 1}]

    @infra.apply
    def process(self) -> int:
        return 1


def test_uid_of_serializer_output_matches_confdict() -> None:
    obj = _SerializedAsDict(x=5, y=4)
    exported = identity.export_model(obj, uid=True, exclude_defaults=True)
    assert obj.infra.uid().rsplit("/", 1)[1] == ConfDict(exported).to_uid()


class _Helper(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    counter: int = 0


class _WithCachedHelper(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    p: int = 1
    infra: TaskInfra = TaskInfra(version="1")

    @functools.cached_property
    def helper(self) -> _Helper:  # runtime state kept in __dict__, not config
        return _Helper()

    @infra.apply
    def process(self) -> int:
        return self.p


def test_cached_property_models_are_not_frozen() -> None:
    obj = _WithCachedHelper()
    helper = obj.helper
    obj.infra.uid()
    helper.counter += 1  # not part of the config: stays mutable
    assert obj.helper.counter == 1
    with pytest.raises(RuntimeError, match="frozen"):
        obj.p = 2


# --- configs that used to share a uid with a different config (found by a bug hunt) ---------
class _Adam(pydantic.BaseModel):
    model_config = FORBID
    name: tp.Literal["adam"] = "adam"
    lr: float = 1e-3


class _SGD(pydantic.BaseModel):
    model_config = FORBID
    name: tp.Literal["sgd"] = "sgd"
    lr: float = 0.1


_Optim = tp.Annotated[_Adam | _SGD, pydantic.Field(discriminator="name")]


def _optim_name(value: tp.Any) -> str:
    return str(value.get("name") if isinstance(value, dict) else value.name)


# a callable discriminator: which field tells the members apart is unknown to exca
_CalledOptim = tp.Annotated[
    tp.Annotated[_Adam, pydantic.Tag("adam")] | tp.Annotated[_SGD, pydantic.Tag("sgd")],
    pydantic.Discriminator(_optim_name),
]


class _Encoder(pydantic.BaseModel):
    model_config = FORBID
    dim: int = 10


class _DeepEncoder(_Encoder):
    depth: int = 2


class _Kwargs(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    lr: float = 0.1


class _Split(enum.Enum):
    TRAIN = "train"
    VALID = "valid"


class _Band(enum.StrEnum):
    ALPHA = "alpha"


class _Aliased(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", serialize_by_alias=True)
    lr: float = pydantic.Field(0.1, alias="learning_rate")


class _AnyHolder(pydantic.BaseModel):
    model_config = FORBID
    value: tp.Any = None


class _Hunted(pydantic.BaseModel):
    model_config = FORBID
    optims: list[_Optim] = []
    called: _CalledOptim = _Adam()
    called_list: list[_CalledOptim] = []
    by_name: dict[str, _Optim] = {}
    maybe: _Optim | None = None
    augment: _Encoder | None = _Encoder()
    encoder: _Encoder = _Encoder()
    kwargs: _Kwargs = _Kwargs()
    weights: dict[_Split, float] = {}
    gains: dict[_Band, float] = {}
    anything: tp.Any = None
    scale: float = 1.0
    flag_or_scale: bool | float = 1.0
    anything_default: tp.Any = 1
    steps: collections.OrderedDict[str, int] = collections.OrderedDict(a=1, b=2)
    aliased: _Aliased = _Aliased()
    dim: int = 8
    hidden: int = pydantic.Field(default_factory=lambda data: 4 * data["dim"])
    flags: list[tp.Any] = [1, 2]
    ceiling: float = float("inf")
    options: dict[str, tp.Any] = {"a": 1}
    tags: set[tp.Any] = {1, 3}
    holder: _AnyHolder = _AnyHolder(value=[1])
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return 1


@pytest.mark.parametrize(
    "first,second",
    [
        ({"optims": [{"name": "adam"}]}, {"optims": [{"name": "sgd"}]}),
        ({"by_name": {"x": {"name": "adam"}}}, {"by_name": {"x": {"name": "sgd"}}}),
        ({"maybe": {"name": "adam"}}, {"maybe": {"name": "sgd"}}),
        ({}, {"augment": None}),
        ({"encoder": _DeepEncoder(depth=2)}, {"encoder": _DeepEncoder(depth=5)}),
        ({"kwargs": {}}, {"kwargs": {"momentum": 0.9}}),
        ({"kwargs": {"momentum": 0.5}}, {"kwargs": {"momentum": 0.9}}),
        ({"weights": {"train": 1.0}}, {"weights": {"train": 1.0, "valid": 2.0}}),
        ({"anything": {"max_norm": None}}, {"anything": {"max_norm": float("inf")}}),
        ({"anything": [float("nan")]}, {"anything": [float("-inf")]}),
        ({"scale": float("inf")}, {"scale": float("nan")}),
        ({}, {"steps": collections.OrderedDict(b=2, a=1)}),
        ({}, {"aliased": {"learning_rate": 0.5}}),
        ({"dim": 8}, {"dim": 8, "hidden": 64}),
        ({}, {"flag_or_scale": True}),  # True == 1.0, but not in a uid
        ({"anything_default": 1}, {"anything_default": True}),
        # ... at any depth: [True] == [1] for Python
        ({}, {"flags": [True, 2]}),
        ({}, {"options": {"a": True}}),
        ({}, {"tags": {True, 3}}),
        ({}, {"holder": {"value": [True]}}),
        ({}, {"ceiling": float("nan")}),  # (inf and nan both dump to null)
        ({}, {"ceiling": float("-inf")}),
        # a callable discriminator keeps every field of the member
        ({"called": _Adam(lr=0.5)}, {"called": _SGD(lr=0.5)}),
        ({"called_list": [_Adam()]}, {"called_list": [_SGD()]}),
        ({"called_list": [{"name": "adam"}]}, {"called_list": [{"name": "sgd"}]}),
    ],
)
def test_different_configs_get_different_uids(
    first: dict[str, tp.Any], second: dict[str, tp.Any]
) -> None:
    uids = [_Hunted(**values).infra.uid() for values in (first, second)]
    assert uids[0] != uids[1]


def test_clone_keeps_subclass_instances() -> None:
    """A sub-model of a subclass of its field's class comes back as that subclass (a dict
    would give the annotated class, or fail on the subclass's fields)."""
    obj = _Hunted(encoder=_DeepEncoder(depth=5), by_name={"x": {"name": "adam"}})
    clone = obj.infra.clone_obj({"encoder.dim": 3, "dim": 9})
    assert type(clone.encoder) is _DeepEncoder
    assert (clone.encoder.depth, clone.encoder.dim, clone.dim) == (5, 3, 9)
    assert clone.by_name == obj.by_name
    same = obj.infra.clone_obj()
    assert same.infra.uid() == obj.infra.uid() and same.encoder is not obj.encoder
    replaced = obj.infra.clone_obj(encoder=_Encoder(dim=4))
    assert type(replaced.encoder) is _Encoder and replaced.encoder.dim == 4


def test_values_equal_in_uid_terms_share_the_default_uid() -> None:
    """1.0 renders as 1 in a uid: a value equal to the default that way is pruned."""
    default = _Hunted().infra.uid()
    assert _Hunted(flags=[1, 2.0], options={"a": 1.0}, tags={1.0, 3}).infra.uid() == default
    assert _Hunted(holder={"value": [1.0]}).infra.uid() == default
    assert _Hunted(ceiling=float("inf")).infra.uid() == default
    assert _Hunted(called=_Adam()).infra.uid() == default


class _Amounts(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    price: decimal.Decimal = decimal.Decimal("1.00")
    count: int = 3
    ratio: tp.Annotated[float | int, pydantic.PlainSerializer(repr)] = 1
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def total(self) -> decimal.Decimal:
        return self.price * self.count


def test_a_value_equal_to_the_default_with_another_dump_is_the_default() -> None:
    """Decimal("1.0") == Decimal("1.00") though they dump as "1.0" and "1.00", and 1.0 == 1
    though a serializer dumps them as "1.0" and "1": pruned as the default (Python
    equality decides, as pydantic's exclude_defaults). A scalar of the default's type
    dumped otherwise is not the default."""
    default = _Amounts().infra.uid()
    assert _Amounts(price=decimal.Decimal("1.0")).infra.uid() == default
    assert _Amounts(ratio=1.0).infra.uid() == default
    assert _Amounts(ratio=2).infra.uid() != default
    assert _Amounts(count=4).infra.uid().split("/")[-1].startswith("count=4-")
    assert _Amounts(price=decimal.Decimal("1.5")).infra.uid() != default


_Lower = tp.Annotated[str, pydantic.PlainSerializer(str.lower, return_type=str)]


class _Formatted(pydantic.BaseModel):
    """A sub-model whose serializer reformats a value (its keys are the fields)."""

    model_config = pydantic.ConfigDict(extra="forbid")
    lr: float = 0.1
    depth: int = 3

    @pydantic.model_serializer(mode="wrap")
    def _dump(self, handler: tp.Any) -> dict[str, tp.Any]:
        out = handler(self)
        out["lr"] = f"{out['lr']:.3e}"
        return tp.cast(dict[str, tp.Any], out)


class _Serialized(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    optimizer: tp.Optional[_Lower] = "Adam"  # noqa: UP045  (a serializer inside a Union)
    sub: _Formatted = _Formatted()
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> int:
        return 1


def test_defaults_whose_dump_a_serializer_changes_stay_out_of_the_uid() -> None:
    """A default dumped otherwise by a serializer (nested in an Optional, or a sub-model's
    model_serializer) is still the default: the value is compared, not the dump."""
    default = _Serialized().infra.uid()
    assert default.endswith("/default")
    assert _Serialized(optimizer="Adam").infra.uid() == default
    changed = _Serialized(sub=_Formatted(lr=0.1, depth=4)).infra.uid()
    assert changed.split("/")[-1].startswith("sub.depth=4-")


def test_uid_renders_enum_keys_by_value_and_keeps_discriminators() -> None:
    obj = _Hunted(
        weights={"train": 0.5},
        gains={"alpha": 2.0},
        optims=[{"name": "adam"}],
        maybe={"name": "sgd"},
    )
    uid = obj.infra.uid()
    assert "weights.train=0.50" in uid and "gains.alpha=2" in uid
    assert "optims=({name=adam})" in uid and "maybe.name=sgd" in uid
    config = obj.infra.config(uid=False)
    assert config["gains"] == {"alpha": 2.0}


def test_hunted_configs_cache_and_reload(tmp_path: Path) -> None:
    """Such configs write their uid folder, read it back in the same and in a new
    instance, and iter_cached rebuilds them from config.yaml."""
    values: dict[str, tp.Any] = {
        "augment": None,
        "kwargs": {"momentum": 0.9},
        "weights": {"valid": 2.0},
        "anything": {"max_norm": float("inf")},
        "steps": collections.OrderedDict(b=2, a=1),
    }
    obj = _Hunted(**values, infra={"folder": tmp_path})
    assert obj.process() == 1
    again = _Hunted(**values, infra={"folder": tmp_path})
    assert again.infra.uid() == obj.infra.uid() and again.process() == 1
    found = list(obj.infra.iter_cached())
    assert [f.infra.uid() for f in found] == [obj.infra.uid()]
    assert found[0].augment is None and found[0].steps == values["steps"]


class _HoldsAny(pydantic.BaseModel):
    model_config = FORBID
    extra: tp.Any = None


class _WithNumpyInside(pydantic.BaseModel):
    model_config = FORBID
    sub: _HoldsAny = _HoldsAny()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return 1


def test_value_without_json_form_names_its_field() -> None:
    np = pytest.importorskip("numpy")
    obj = _WithNumpyInside(sub={"extra": np.float32(0.5)})
    with pytest.raises(TypeError, match=r"_WithNumpyInside\.sub\.extra.*float\(\)"):
        obj.infra.uid()
    assert "sub.extra=0.50" in _WithNumpyInside(sub={"extra": 0.5}).infra.uid()


class _NumpyDefaults(pydantic.BaseModel):
    size: int = __import__("numpy").prod((3, 4))
    grid: list[float] = pydantic.Field(
        default_factory=lambda: list(__import__("numpy").linspace(0, 1, 3, dtype="float32"))
    )
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return self.size


class _NumpyDefaultsValidated(pydantic.BaseModel):
    size: int = pydantic.Field(
        default_factory=lambda: __import__("numpy").prod((3, 4)), validate_default=True
    )
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return self.size


class _DtypeDefault(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    dtype: tp.Any = pydantic.Field(
        default_factory=lambda: __import__("numpy").dtype("float32"), validate_default=True
    )
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return 1


def test_a_numpy_default_gets_a_hint_about_defaults() -> None:
    """A default written with numpy (``size: int = np.prod(shape)``) is not validated
    by pydantic: the field holds a numpy int. The error said to annotate the field with a
    type pydantic serializes (it is: ``int``), or to convert values held by an Any field.
    It names the default now, and the two ways out."""
    pytest.importorskip("numpy")
    with pytest.raises(TypeError, match=r"_NumpyDefaults\.size.*default of _NumpyDefaults\.size"):
        _NumpyDefaults().infra.uid()
    with pytest.raises(TypeError, match=r"default of _NumpyDefaults\.grid .*validate_default"):
        _NumpyDefaults(size=12).infra.uid()
    message = r"_WithNumpyInside\.sub\.extra.*float\(\)"  # (a given value: as before)
    with pytest.raises(TypeError, match=message) as error:
        _WithNumpyInside(sub={"extra": __import__("numpy").float32(0.5)}).infra.uid()
    assert "default" not in str(error.value).split("json form:")[1]
    # a default that validation would not give a json form: the hint for any value
    with pytest.raises(TypeError, match=r"_DtypeDefault\.dtype.*annotate the field") as error:
        _DtypeDefault().infra.uid()
    assert "validate_default" not in str(error.value)
    # the advice followed: the default is validated, and it is the default
    assert _NumpyDefaultsValidated().infra.uid().endswith("/default")
    assert "size=13" in _NumpyDefaultsValidated(size=13).infra.uid()


class _Signed(pydantic.BaseModel):
    model_config = FORBID
    key: bytes = b""
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return len(self.key)


class _Signed64(_Signed):
    model_config = pydantic.ConfigDict(
        extra="forbid", ser_json_bytes="base64", val_json_bytes="base64"
    )


def test_bytes_that_are_not_utf8_get_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"_Signed\.key.*ser_json_bytes") as error:
        _Signed(key=b"\x89PNG").infra.uid()
    assert "key=abc" in _Signed(key=b"abc").infra.uid()
    # the advice, followed, gives configs that read back: the advice was ser_json_bytes
    # alone, and then config.yaml and clone_obj read the base64 text as the bytes
    # (key=b"iVBORw==" for b"\x89PNG": another config, silently)
    assert "val_json_bytes='base64'" in str(error.value)
    obj = _Signed64(key=b"\x89PNG", infra={"folder": tmp_path})
    assert obj.process() == 4
    assert obj.infra.clone_obj().key == b"\x89PNG"
    assert [c.key for c in obj.infra.iter_cached()] == [b"\x89PNG"]


# --- serializers ------------------------------------------------------------------------------
Rounded = tp.Annotated[float, pydantic.PlainSerializer(lambda x: round(x, 2), return_type=float)]


class Serialized(pydantic.BaseModel):
    """Fields whose dump maps other values onto the default's json form."""

    model_config = FORBID
    lr: Rounded = 0.01
    name: str = "adam"
    infra: TaskInfra = TaskInfra()

    @pydantic.field_serializer("name")
    def _lower(self, value: str) -> str:
        return value.lower()

    @infra.apply
    def process(self) -> tuple[float, str]:
        return self.lr, self.name


def test_a_value_dumped_as_the_default_is_not_the_default(tmp_path: Path) -> None:
    """lr=0.012 dumps as 0.01, the default's dump: it is still not the default (python
    values decide, as pydantic's exclude_defaults), so it does not share the default's
    cache folder and its result. What the dump renders is the serializer's choice."""
    default = Serialized(infra={"folder": tmp_path})
    assert default.infra.uid().endswith("/default")
    assert default.process() == (0.01, "adam")
    for changes in ({"lr": 0.012}, {"name": "ADAM"}):
        other = Serialized(**changes, infra={"folder": tmp_path})
        assert other.infra.uid() != default.infra.uid()
        assert other.process() == (changes.get("lr", 0.01), changes.get("name", "adam"))
    assert ConfDict.from_model(Serialized(lr=0.012), uid=True, exclude_defaults=True) == {
        "lr": 0.01
    }


class Renamed(pydantic.BaseModel):
    """A model_serializer whose keys are not the field names."""

    model_config = FORBID
    lr: float = 0.1

    @pydantic.model_serializer(mode="plain")
    def _dump(self) -> dict[str, tp.Any]:
        return {"learning_rate": self.lr}


class HoldsRenamed(pydantic.BaseModel):
    model_config = FORBID
    optim: Renamed = Renamed()
    x: int = 0
    infra: TaskInfra = TaskInfra()

    @infra.apply
    def process(self) -> float:
        return self.optim.lr


def test_a_model_serializer_output_is_the_sub_config(tmp_path: Path) -> None:
    """The fields of a model dumped under other names were all skipped: every optim.lr
    had the uid of the default (one folder, one result for all)."""
    uids = {
        HoldsRenamed(optim=Renamed(lr=lr), infra={"folder": tmp_path}).infra.uid()
        for lr in (0.1, 0.5, 0.9)
    }
    assert len(uids) == 3
    assert HoldsRenamed().infra.uid().endswith("/default")  # (lr=0.1: the field's default)
    obj = HoldsRenamed(optim=Renamed(lr=0.5), infra={"folder": tmp_path})
    assert obj.process() == 0.5
    assert obj.infra.config(uid=True, exclude_defaults=True) == {"optim": {"learning_rate": 0.5}}
    assert HoldsRenamed(optim=Renamed(lr=0.9), infra={"folder": tmp_path}).process() == 0.9


class TwoTexts(pydantic.BaseModel):
    model_config = FORBID
    a: str = ""
    b: str = ""
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        return f"{self.a}|{self.b}"


def test_configs_whose_uids_collide_do_not_share_a_result(tmp_path: Path) -> None:
    """The v3 format (SPEC) does not escape separators inside strings: once the display
    is cut, a value holding ",b=str:..." has the uid of a config setting b. A cache hit
    reads full-uid.yaml (not uid.yaml): the values the uid encodes are compared there too,
    also for a second config of the same class in the same process."""
    text = "str" * 42
    first = TwoTexts(a="AAA,b=str:" + text, infra={"folder": tmp_path})
    second = TwoTexts(a="AAA", b=text, infra={"folder": tmp_path})
    assert first.infra.uid() == second.infra.uid()  # (the format's collision)
    assert first.process() == f"AAA,b=str:{text}|"
    with pytest.raises(RuntimeError, match="Inconsistent uid config"):
        second.process()
    again = TwoTexts(a="AAA,b=str:" + text, infra={"folder": tmp_path})
    assert again.process() == f"AAA,b=str:{text}|"  # (the cached result is intact)


class DropsNone(pydantic.BaseModel):
    """A wrap serializer leaving out None values: the other fields keep their names."""

    model_config = FORBID
    a: int = 1
    b: str | None = None
    c: float = 0.5

    @pydantic.model_serializer(mode="wrap")
    def _dump(self, handler: tp.Any) -> dict[str, tp.Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class Backbone(DiscriminatedModel):
    pass


class Wide(Backbone):
    layers: int = 2
    width: int = 8
    cache_dir: str = pydantic.Field("/tmp", exclude=True)  # (never dumped: a path)
    note: str | None = pydantic.Field(None, exclude_if=lambda v: v is None)


class Item(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    a: int = 1
    b: str = "x"


class KeepsItsUids(pydantic.BaseModel):
    model_config = FORBID
    sub: DropsNone = DropsNone()
    model: Backbone = Wide()
    items: frozenset[Item] = frozenset()
    anything: tp.Any = None
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return 1


@pytest.mark.parametrize(
    "changes, uid",
    [
        # (uids computed before serializers and nested sets were handled: caches on disk
        # keep their folders)
        ({"sub": DropsNone(a=2)}, "sub.a=2-d364c196"),
        ({"sub": DropsNone(a=2, b="z")}, "sub={a=2,b=z}-bd875bc2"),
        ({"model": Wide(layers=3)}, "model={layers=3,type=Wide}-913311ae"),
        (
            {"items": frozenset({Item(a=2, b="x"), Item(a=1, b="y")})},
            "items=({a=1,b=y},{a=2,b=x})-98fb9b42",
        ),
        # (not kept: inf, -inf, nan and None in a set all rendered None, one folder)
        ({"anything": {float("inf"), 2.0}}, "anything=(2,inf)-291c3cb4"),
        ({"anything": {float("-inf"), 2.0}}, "anything=(-inf,2)-75fb98f3"),
    ],
)
def test_serializers_and_sets_keep_earlier_uids(changes: dict[str, tp.Any], uid: str) -> None:
    assert KeepsItsUids(**changes).infra.uid() == f"{MODULE}.KeepsItsUids.process,1/{uid}"


class _Net(pydantic.BaseModel):
    model_config = FORBID
    layers: int = 1


class _ConvNet(_Net):
    kernel: int = 3


class _TransNet(_Net):
    heads: int = 3


class _SameNet(_Net):
    """Only its behaviour differs (a method), not its fields."""

    def forward(self) -> str:
        return "same"


class _Trains(pydantic.BaseModel):
    model_config = FORBID
    net: _Net = _Net()
    nets: list[_Net] = []
    maybe: _Net | None = None
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        return ",".join(type(n).__name__ for n in [self.net, *self.nets, self.maybe] if n)


def test_subclass_instances_of_an_annotated_base_class_do_not_share_a_uid(tmp_path: Path) -> None:
    """Two subclasses at their defaults both exported as `net={}`: one cache folder, the
    second config read the first one's result (and a subclass that only overrides methods
    had its base class's uid). Their class now enters the uid."""
    configs = [
        _Trains(net=_ConvNet()),
        _Trains(net=_TransNet()),
        _Trains(net=_SameNet()),
        _Trains(net=_Net(layers=1)),  # (the annotated class at its default: the default uid)
        _Trains(nets=[_ConvNet()]),
        _Trains(nets=[_TransNet()]),
        _Trains(nets=[_Net()]),
        _Trains(maybe=_ConvNet()),
        _Trains(maybe=_Net()),
    ]
    uids = [c.infra.uid() for c in configs]
    assert len(set(uids)) == len(uids)
    assert uids[3] == _Trains().infra.uid()
    assert _cfg(configs[0]) == {"net": {"_class": f"{MODULE}._ConvNet"}}
    assert _cfg(_Trains(net=_ConvNet(kernel=5))) == {
        "net": {"_class": f"{MODULE}._ConvNet", "kernel": 5}
    }
    assert _cfg(configs[4]) == {"nets": [{"_class": f"{MODULE}._ConvNet"}]}
    # each computes its own result
    for config in configs[:3]:
        own = _Trains(net=config.net, infra={"folder": tmp_path})
        assert own.process() == type(config.net).__name__
    # the class is a uid matter only: the config (config.yaml, clones) stays loadable
    config = configs[0].infra.config(uid=False, exclude_defaults=True)
    assert "_class" not in str(dict(config))
    assert type(configs[0].infra.clone_obj().net) is _ConvNet


@dataclasses.dataclass
class _Aug:
    p: float = 0.5


@dataclasses.dataclass
class _Crop(_Aug):
    size: int = 32


@dataclasses.dataclass
class _SameAug(_Aug):
    """Only its behaviour differs (a method), not its fields."""


@pydantic.dataclasses.dataclass
class _PydAug:
    p: float = 0.5


@pydantic.dataclasses.dataclass
class _PydCrop(_PydAug):
    size: int = 32


class _Augments(pydantic.BaseModel):
    model_config = FORBID
    aug: _Aug = _Aug()
    augs: list[_Aug] = []
    paug: _PydAug = _PydAug()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        return repr((self.aug, self.augs, self.paug))


class _UnionA(pydantic.BaseModel):
    model_config = FORBID
    kind: tp.Literal["a"] = "a"
    x: int = 1


class _UnionB(pydantic.BaseModel):
    model_config = FORBID
    kind: tp.Literal["b"] = "b"
    y: int = 1


class _UnionBB(_UnionB):
    z: int = 5


class _HoldsUnion(pydantic.BaseModel):
    model_config = FORBID
    u: _UnionA | _UnionB = pydantic.Field(default_factory=_UnionA, discriminator="kind")
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        return repr(self.u)


def test_subclass_of_a_union_member_counts_with_its_own_fields(tmp_path: Path) -> None:
    """BB(z=7) and BB(z=9) in a field `A | B`: the dump followed B's schema, both had
    the uid u={kind=b,_class=...BB} and the second read the first one's result (a review).
    A member itself keeps its uid."""
    folder = {"folder": tmp_path}
    assert "z=7" in _HoldsUnion(u=_UnionBB(z=7), infra=folder).process()
    assert "z=9" in _HoldsUnion(u=_UnionBB(z=9), infra=folder).process()
    uid = _HoldsUnion(u=_UnionBB(z=9)).infra.uid()
    assert uid.split("/")[1].startswith("u={z=9,kind=b,_class=")
    # (the uids they had: a member, and a subclass at its defaults)
    assert _HoldsUnion(u=_UnionBB()).infra.uid().endswith(f"{MODULE}._UnionBB}}-5bd75a86")
    assert _HoldsUnion(u=_UnionB(y=2)).infra.uid().endswith("/u={y=2,kind=b}-c6e14ba8")


def test_dataclass_subclass_instances_do_not_share_a_uid(tmp_path: Path) -> None:
    """A dataclass subclass instance in a field annotated with its base dataclass was
    dumped by the base's schema: Crop(size=64), Crop(size=128) and Aug() all had the uid
    `default`, and size=128 read size=64's result. It counts with its fields and class."""
    configs = [
        _Augments(aug=_Crop(size=64)),
        _Augments(aug=_Crop(size=128)),
        _Augments(aug=_Crop()),
        _Augments(aug=_SameAug()),
        _Augments(augs=[_Crop(size=64)]),
        _Augments(augs=[_Crop(size=128)]),
        _Augments(augs=[_Aug()]),
        _Augments(paug=_PydCrop(size=64)),
        _Augments(paug=_PydCrop(size=128)),
        _Augments(),
    ]
    uids = [c.infra.uid() for c in configs]
    assert len(set(uids)) == len(uids), uids
    assert _cfg(configs[0]) == {"aug": {"_class": f"{MODULE}._Crop", "p": 0.5, "size": 64}}
    # values of exactly the annotated class keep their uids
    assert _Augments(aug=_Aug()).infra.uid() == _Augments().infra.uid()
    assert _Augments(aug=_Aug(p=0.7)).infra.uid().endswith("/aug.p=0.70-b08d7832")
    assert _Augments(augs=[_Aug()]).infra.uid().endswith("/augs=({p=0.50})-4717c29f")
    # each computes its own result
    folder = {"folder": tmp_path}
    assert "size=64" in _Augments(aug=_Crop(size=64), infra=folder).process()
    assert "size=128" in _Augments(aug=_Crop(size=128), infra=folder).process()


@dataclasses.dataclass(frozen=True)
class _AugPipeline:
    aug: _Aug = dataclasses.field(default_factory=_Aug)
    more: list[_Aug] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Resize(_Aug):
    size: int = 32


@pydantic.dataclasses.dataclass
class _PydPipeline:
    aug: _Aug = dataclasses.field(default_factory=_Aug)


class _HoldsPipeline(pydantic.BaseModel):
    model_config = FORBID
    pipe: _AugPipeline = _AugPipeline()
    pipes: list[_AugPipeline] = []
    ppipe: _PydPipeline = _PydPipeline()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        return repr((self.pipe, self.pipes))


def test_dataclass_subclass_inside_a_dataclass_does_not_share_a_uid(tmp_path: Path) -> None:
    """A dataclass subclass instance in a field of a dataclass (itself in a config field)
    was dumped by its annotated base's schema: Pipeline(aug=Crop(size=128)) had the uid
    `default` and read the default pipeline's result (a review)."""
    configs = [
        _HoldsPipeline(),
        _HoldsPipeline(pipe=_AugPipeline(aug=_Crop(size=64))),
        _HoldsPipeline(pipe=_AugPipeline(aug=_Crop(size=128))),
        _HoldsPipeline(pipe=_AugPipeline(more=[_Aug()])),
        _HoldsPipeline(pipe=_AugPipeline(more=[_Crop(size=128)])),
        _HoldsPipeline(pipes=[_AugPipeline(aug=_Crop(size=64))]),
        _HoldsPipeline(pipes=[_AugPipeline(aug=_Crop(size=128))]),
        # (a review:) only a method differs; the same fields, two classes; a pydantic
        # dataclass holding the subclass
        _HoldsPipeline(pipe=_AugPipeline(aug=_SameAug())),
        _HoldsPipeline(pipe=_AugPipeline(aug=_Resize(size=64))),
        _HoldsPipeline(ppipe=_PydPipeline(aug=_Crop(size=64))),
        _HoldsPipeline(ppipe=_PydPipeline(aug=_Crop(size=128))),
    ]
    uids = [c.infra.uid() for c in configs]
    assert len(set(uids)) == len(uids), uids
    assert f"_class={MODULE}._Resize" in uids[8]
    # without a subclass inside, the uids are the ones they had
    assert uids[0].endswith("/default")
    assert uids[3].endswith("/pipe={aug.p=0.50,more=({p=0.50})}-15a576da"), uids[3]
    folder = {"folder": tmp_path}
    assert "size=64" in _HoldsPipeline(pipe=_AugPipeline(_Crop(size=64)), infra=folder).process()
    assert "size=128" in _HoldsPipeline(pipe=_AugPipeline(_Crop(size=128)), infra=folder).process()


def _local_augments() -> tuple[tp.Any, ...]:
    """Dataclasses and a config defined in a function: under `from __future__ import
    annotations` (this module), their annotations are strings naming local classes."""

    @dataclasses.dataclass
    class Aug:
        p: float = 0.5

    @dataclasses.dataclass
    class Crop(Aug):
        size: int = 32

    @dataclasses.dataclass
    class Flip(Aug):
        """Only its behaviour differs."""

    @dataclasses.dataclass
    class Pipe:
        aug: Aug = dataclasses.field(default_factory=Aug)
        augs: list[Aug] = dataclasses.field(default_factory=list)

    class Holds(pydantic.BaseModel):
        model_config = FORBID
        pipe: Pipe = Pipe()

    return Aug, Crop, Flip, Pipe, Holds


def test_local_dataclass_subclasses_inside_a_dataclass_do_not_share_a_uid() -> None:
    """A dataclass defined in a function holding another: its annotation ("Aug") could not
    be resolved, no subclass was seen inside, and Pipe(aug=Crop(size=64)), Crop(size=128)
    and Flip() all had the uid `default`. The names around the config class resolve it,
    as pydantic did; values of the annotated class keep their uids."""
    aug, crop, flip, pipe, holds = _local_augments()
    configs = [
        holds(),
        holds(pipe=pipe(aug=crop(size=64))),
        holds(pipe=pipe(aug=crop(size=128))),
        holds(pipe=pipe(aug=flip())),
        holds(pipe=pipe(augs=[flip()])),
        holds(pipe=pipe(augs=[aug()])),
    ]
    uids = [ConfDict.from_model(c, uid=True, exclude_defaults=True).to_uid() for c in configs]
    assert len(set(uids)) == len(uids), uids
    assert "size=128,_class=" in uids[2]
    # (the uids they had)
    assert uids[0] == "" and uids[5] == "pipe={aug.p=0.50,augs=({p=0.50})}-58d37b28"
    loaded = holds(pipe=pipe(aug=aug(p=0.3)))
    assert ConfDict.from_model(loaded, uid=True, exclude_defaults=True).to_uid() == (
        "pipe={augs=(),aug.p=0.30}-a6bb149e"
    )


@dataclasses.dataclass
class _Inner:
    k: int = 1


class _HoldsAug(pydantic.BaseModel):
    model_config = FORBID
    aug: _Aug = _Aug()


def _plugin_crop() -> tuple[tp.Any, ...]:
    """A subclass defined in a function whose own field names a class local to it: its
    annotation cannot be resolved anywhere (the config class is defined elsewhere)."""

    @dataclasses.dataclass
    class Inner(_Inner):
        pass

    @dataclasses.dataclass
    class OtherInner(_Inner):
        pass

    @dataclasses.dataclass
    class Crop(_Aug):
        inner: Inner = dataclasses.field(default_factory=Inner)

    return Crop, Inner, OtherInner


def test_an_unresolvable_annotation_keeps_the_uid_it_had() -> None:
    """Which class the annotation of Crop.inner names is unknown (a class local to another
    function than the config's): the dataclasses under it get no class in the uid, which
    stays what it was (a known limit: two classes with the same fields there share it).
    Putting every class there in the uid changed the uids of such configs."""
    crop, inner, other = _plugin_crop()
    uids = {
        ConfDict.from_model(_HoldsAug(aug=crop(inner=value)), uid=True).to_uid()
        for value in (inner(), other())
    }
    assert uids == {"aug={p=0.50,inner.k=1,_class=test_identity._plugin_crop.locals.Crop}-c5a4e765"}


_Item = tp.TypeVar("_Item")


@dataclasses.dataclass
class _Box(tp.Generic[_Item]):
    item: _Item
    n: int = 0


@dataclasses.dataclass
class _SubBox(_Box[_Item]):
    extra: int = 0


class _HoldsBox(pydantic.BaseModel):
    model_config = FORBID
    box: _Box[_Aug] = _Box(_Aug())
    boxes: list[_Box[_Aug]] = []
    bare: _Box = _Box(1)  # type: ignore[type-arg]
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        return repr(self.box)


def test_dataclass_subclasses_in_a_generic_dataclass_do_not_share_a_uid(tmp_path: Path) -> None:
    """`box: Box[Aug]` holding Box(Crop(size=64)) was dumped by Aug's schema and its
    fields were not walked (`item: T`): it shared the uid `default` with Box(Crop(128)),
    Box(Aug()) and SubBox(...), and a change of the Crop in place after a cached call read
    the old values' result. Values without a subclass keep their uids."""
    configs = [
        _HoldsBox(),
        _HoldsBox(box=_Box(_Crop(size=64))),
        _HoldsBox(box=_Box(_Crop(size=128))),
        _HoldsBox(box=_Box(_SameAug())),
        _HoldsBox(box=_SubBox(_Aug(), extra=3)),
        _HoldsBox(boxes=[_Box(_Crop(size=64))]),
        _HoldsBox(boxes=[_Box(_Crop(size=128))]),
    ]
    uids = [c.infra.uid() for c in configs]
    assert len(set(uids)) == len(uids), uids
    assert f"item={{p=0.50,size=64,_class={MODULE}._Crop}}" in uids[1]
    # (the uids they had: a value of the annotated class, a bare generic holding anything)
    assert _HoldsBox(box=_Box(_Aug(p=0.1))).infra.uid().endswith("/box={n=0,item.p=0.10}-8886d65a")
    assert (
        _HoldsBox(boxes=[_Box(_Aug())]).infra.uid().endswith("/boxes=({n=0,item.p=0.50})-46ceeab4")
    )
    assert (
        _HoldsBox(bare=_Box(_Crop(size=3)))
        .infra.uid()
        .endswith("/bare={n=0,item={p=0.50,size=3}}-a67b9c90")
    )
    # the first uid of a process too (the generic's fields were not known yet)
    code = "import test_identity as t; print(t._HoldsBox(box=t._Box(t._Crop(size=64))).infra.uid())"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), *sys.path]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == uids[1].replace(MODULE, "test_identity"), out.stderr
    crop = _Crop(size=64)
    config = _HoldsBox(box=_Box(crop), infra={"folder": tmp_path})
    assert "size=64" in config.process()
    crop.size = 128
    with pytest.raises(RuntimeError, match="changed in place"):
        config.process()


_Left = tp.TypeVar("_Left")
_Right = tp.TypeVar("_Right")


@dataclasses.dataclass
class _Pair(tp.Generic[_Left, _Right]):
    a: _Left
    b: _Right


class _HoldsPairs(pydantic.BaseModel):
    model_config = FORBID
    pair: _Pair[_Aug, tp.Any] = _Pair(_Aug(), None)
    crops: _Pair[_Aug, _Crop] = _Pair(_Aug(), _Crop())
    bare: _Box = _Box(0)  # type: ignore[type-arg]
    anyb: _Box[tp.Any] = _Box(0)


def test_a_type_variable_field_names_only_its_own_argument() -> None:
    """A type-variable field of a generic dataclass took every class of the annotation
    holding it (`Pair[Aug, Any]`: b counted as annotated Aug, `Box` as Box): values dumped
    whole by pydantic (Any) got a class, and their uids changed; and with `Pair[Aug,
    Crop]`, a Crop in `a` (dumped as an Aug) counted as annotated and shared the uid of the
    default. Each one now takes the argument at its position only."""
    assert ConfDict.from_model(
        _HoldsPairs(pair=_Pair(_Aug(), _Crop(size=3))), uid=True, exclude_defaults=True
    ).to_uid() == ("pair={a.p=0.50,b={p=0.50,size=3}}-fafe61c8")  # (as before)
    for name in ("bare", "anyb"):
        config = _HoldsPairs(**{name: _Box(_SubBox(1, extra=2))})
        uid = ConfDict.from_model(config, uid=True, exclude_defaults=True).to_uid()
        assert uid.startswith(f"{name}={{n=0,item={{n=0,item=1,extra=2}}}}-"), uid
    assert ConfDict.from_model(
        _HoldsPairs(bare=_Box(_SubBox(1, extra=2))), uid=True, exclude_defaults=True
    ).to_uid() == ("bare={n=0,item={n=0,item=1,extra=2}}-4ab4bf99")
    uids = {
        ConfDict.from_model(
            _HoldsPairs(crops=_Pair(_Crop(size=size), _Crop())), uid=True, exclude_defaults=True
        ).to_uid()
        for size in (1, 2)
    }
    assert len(uids) == 2 and "" not in uids, uids
    assert all("a={p=0.50,size=" in uid and f"_class={MODULE}._Crop" in uid for uid in uids)


def _rebuilt_local_config() -> tuple[tp.Any, ...]:
    """A config defined before the dataclasses it names, resolved by model_rebuild()
    (this module has `from __future__ import annotations`)."""

    class Cfg(pydantic.BaseModel):
        model_config = FORBID
        pipe: Pipe | None = None
        infra: TaskInfra = TaskInfra(version="1")

        @infra.apply
        def process(self) -> str:
            return repr(self.pipe)

    @dataclasses.dataclass
    class Aug:
        p: float = 0.5

    @dataclasses.dataclass
    class Crop(Aug):
        size: int = 32

    @dataclasses.dataclass
    class Pipe:
        aug: Aug = dataclasses.field(default_factory=Aug)
        n: int = 0

    Cfg.model_rebuild()
    return Cfg, Pipe, Aug, Crop


def test_local_annotations_do_not_need_pydantic_private_helpers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The names around a local config class were read from pydantic's private parent
    namespace, through a private helper unwrapping its weak references: without it, the
    local annotations named weak references, and subclasses shared a uid again."""
    aug, crop, _, pipe, holds = _local_augments()
    module = sys.modules["pydantic._internal._model_construction"]
    monkeypatch.delattr(module, "unpack_lenient_weakvaluedict", raising=False)
    uids = [
        ConfDict.from_model(holds(pipe=pipe(aug=a)), uid=True, exclude_defaults=True).to_uid()
        for a in (crop(size=64), crop(size=128), aug(p=0.3))
    ]
    assert len(set(uids)) == 3 and "size=128,_class=" in uids[1], uids
    assert uids[2] == "pipe={augs=(),aug.p=0.30}-a6bb149e"  # (as before)


def test_local_annotations_resolved_by_model_rebuild_keep_their_uid(tmp_path: Path) -> None:
    """Local dataclasses named by a config resolved with model_rebuild(): their names were
    not found (only those around the config class were looked up), so every dataclass
    there got its class in the uid (uids changed, a default was no longer pruned) and
    clone_obj() raised. pydantic's schema names the classes it resolved them to."""
    cfg, pipe, _, crop = _rebuilt_local_config()
    config = cfg(pipe=pipe(n=1), infra={"folder": tmp_path})
    assert config.infra.uid().endswith("/pipe={n=1,aug.p=0.50}-d1b6bf7f")  # (as before)
    config.process()
    assert config.infra.clone_obj().pipe == pipe(n=1)
    uids = {cfg(pipe=pipe(aug=crop(size=s))).infra.uid() for s in (64, 128)}
    assert len(uids) == 2 and all("_class=" in uid for uid in uids), uids


class _SpecOrDict(pydantic.BaseModel):
    model_config = FORBID
    spec: _Aug | dict[str, tp.Any] = _Aug()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        return repr(self.spec)


def test_a_user_dict_naming_a_class_stays_a_dict(tmp_path: Path) -> None:
    """Under `spec: Aug | dict[str, Any]`, a user dict holding a `_class` key was built as
    the class it names by clone_obj() and iter_cached() (or refused: the entry skipped):
    only where the annotation admits no dict is a dict naming its class a dataclass."""
    specs = ({"_class": "torch.optim.Adam", "lr": 0.1}, {"_class": f"{MODULE}._Crop", "size": 3})
    for k, spec in enumerate(specs):
        config = _SpecOrDict(spec=spec, infra={"folder": tmp_path / str(k)})
        config.process()
        clone = config.infra.clone_obj()
        assert clone.spec == spec and clone.infra.uid() == config.infra.uid()
        listed = [c.spec for c in config.infra.iter_cached()]
        assert listed == [spec]


def test_a_rebuilt_dataclass_is_a_subclass_of_the_annotated_one(tmp_path: Path) -> None:
    """A `_class` naming a loaded dataclass that is not a subclass of the annotated one
    (under an annotation that could not be resolved, any was accepted and built) is
    refused, and no module attribute is looked up (a module's lazy imports)."""
    config = _Augments(aug=_Crop(size=3), infra={"folder": tmp_path})
    with pytest.raises(identity.ClassNotRebuilt, match="not a subclass of _Aug"):
        config.infra.clone_obj({"aug._class": f"{MODULE}._Inner"})
    assert config.infra.clone_obj().aug == _Crop(size=3)


class _RecA(pydantic.BaseModel):
    model_config = FORBID
    b: _RecB | None = None
    aug: _Aug = _Aug()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        return repr(self)


class _RecB(pydantic.BaseModel):
    model_config = FORBID
    a: _RecA | None = None


_RecA.model_rebuild()


def test_mutually_recursive_models_rebuild_their_dataclasses(tmp_path: Path) -> None:
    """Whether a model holds dataclasses was remembered as "no" for a class looked at
    while its caller was being looked at (recursive models: B, asked about A first), so
    clone_obj() of A lost a dataclass subclass under B (pydantic refused its fields)."""
    identity._HOLDS_DATACLASSES.pop(_RecA, None)
    identity._HOLDS_DATACLASSES.pop(_RecB, None)
    assert identity._holds_dataclasses(_RecA) and identity._holds_dataclasses(_RecB)
    config = _RecA(b=_RecB(a=_RecA(aug=_Crop(size=3))), infra={"folder": tmp_path})
    clone = config.infra.clone_obj()
    assert clone.b is not None and clone.b.a is not None and clone.b.a.aug == _Crop(size=3)


class _AugmentsAndDicts(_Augments):
    pipes: list[_AugPipeline] = []
    box: _Box[_Aug] = _Box(_Aug())
    user: dict[str, tp.Any] = {}


def test_config_yaml_names_the_class_of_a_dataclass_subclass(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """config() and config.yaml dropped the _class of a dataclass subclass value that the
    uid holds: read back, a config was built with the annotated class (or refused its
    fields): iter_cached() skipped it, and clone_obj() of such a config raised. They now
    name the class, and both build it back as that class."""
    from exca.ops.inspect import inspect

    config = _AugmentsAndDicts(
        aug=_Crop(size=64),
        augs=[_Aug(), _SameAug()],
        pipes=[_AugPipeline(aug=_Resize(size=8))],
        box=_Box(_Crop(size=3)),
        user={"x": {"_class": f"{MODULE}._Crop", "size": 1}},  # (a user dict: stays one)
        infra={"folder": tmp_path},
    )
    config.process()
    exported = config.infra.config(uid=False)
    assert exported["aug"] == {"_class": f"{MODULE}._Crop", "p": 0.5, "size": 64}
    assert exported["augs"] == [{"p": 0.5}, {"_class": f"{MODULE}._SameAug", "p": 0.5}]
    assert exported["pipes"][0]["aug"]["_class"] == f"{MODULE}._Resize"
    assert exported["box"]["item"]["_class"] == f"{MODULE}._Crop"
    folder = config.infra.uid_folder()
    assert folder is not None
    written = ConfDict.from_yaml(folder / "config.yaml")
    assert written == exported and written["aug._class"] == f"{MODULE}._Crop"
    assert ConfDict.from_yaml(folder / "uid.yaml")["aug"] == exported["aug"]
    # read back: the same classes (and so the same uid: listed as it is, not read-only)
    (listed,) = list(config.infra.iter_cached())
    assert listed.aug == _Crop(size=64) and type(listed.augs[1]) is _SameAug
    assert type(listed.pipes[0].aug) is _Resize and type(listed.box.item) is _Crop
    assert listed.user == config.user and listed.infra.mode == "cached"
    assert listed.infra.uid() == config.infra.uid()
    clone = config.infra.clone_obj({"aug.size": 128})
    assert clone.aug == _Crop(size=128) and type(clone.augs[1]) is _SameAug
    assert "size=128" in clone.process()
    assert sorted(info.config.get("aug.size") for info in inspect(tmp_path)) == [64, 128]
    # a class this process does not define: the entry is skipped, said
    path = folder / "config.yaml"
    path.write_text(path.read_text().replace("._Crop", "._Gone"))
    caplog.clear()
    assert [c.aug for c in config.infra.iter_cached()] == [_Crop(size=128)]
    assert f"{MODULE}._Gone" in caplog.text
    assert "not a subclass of _Aug defined in this process" in caplog.text


class _AugFamily(DiscriminatedModel):
    pass


class _AugMember(_AugFamily):
    model_config = FORBID
    aug: _Aug = _Aug()


class _HoldsAugFamily(pydantic.BaseModel):
    model_config = FORBID
    member: _AugFamily = _AugMember()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        return repr(self.member)


def test_a_dataclass_subclass_in_a_discriminated_model_is_rebuilt(tmp_path: Path) -> None:
    """(the class of a DiscriminatedModel's member is told by its key, not its fields)"""
    config = _HoldsAugFamily(member=_AugMember(aug=_SameAug()), infra={"folder": tmp_path})
    config.process()
    assert type(config.infra.clone_obj().member.aug) is _SameAug
    (listed,) = config.infra.iter_cached()
    assert type(listed.member.aug) is _SameAug and listed.infra.uid() == config.infra.uid()


@dataclasses.dataclass(frozen=True)
class _Size:
    """A dataclass with its own pydantic schema: dumped (and read back) as "3x4"."""

    w: int = 1
    h: int = 1

    @classmethod
    def __get_pydantic_core_schema__(cls, source: tp.Any, handler: tp.Any) -> tp.Any:
        from pydantic_core import core_schema

        def parse(value: tp.Any) -> _Size:
            if isinstance(value, _Size):
                return value
            if isinstance(value, dict):  # (as pydantic would take its fields; h first)
                return cls(value["h"], value["w"])
            w, h = str(value).split("x")
            return cls(int(w), int(h))

        def dump(value: _Size) -> str:
            return f"{value.w}x{value.h}"

        serializer = core_schema.plain_serializer_function_ser_schema(dump)
        return core_schema.no_info_plain_validator_function(parse, serialization=serializer)


@dataclasses.dataclass(frozen=True)
class _SizedPipeline:
    size: _Size = _Size()
    aug: _Aug = dataclasses.field(default_factory=_Aug)


class _HoldsSizedPipeline(pydantic.BaseModel):
    model_config = FORBID
    pipe: _SizedPipeline = _SizedPipeline()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        return repr(self.pipe)


def test_a_dataclass_with_its_own_schema_next_to_a_subclass_is_dumped_by_it(
    tmp_path: Path,
) -> None:
    """A dataclass with its own pydantic schema next to a dataclass subclass value (in a
    dataclass: the whole is dumped by its fields, for the subclass) was dumped by its
    fields, not its schema: its uid said size={h=4,w=3} (size=3x4 without the subclass
    next to it), and clone_obj() / iter_cached() built it back from {w: 3, h: 4}, which
    its validator reads otherwise (here: Size(4, 3))."""
    pipe = _SizedPipeline(size=_Size(3, 4), aug=_Crop(size=128))
    config = _HoldsSizedPipeline(pipe=pipe, infra={"folder": tmp_path})
    uid = config.infra.uid()
    assert "size=3x4," in uid and f"_class={MODULE}._Crop" in uid, uid
    # (without a subclass next to it: the dump it had)
    alone = _HoldsSizedPipeline(pipe=_SizedPipeline(size=_Size(3, 4), aug=_Aug(p=0.1)))
    assert alone.infra.uid().endswith("/pipe={size=3x4,aug.p=0.10}-6e86e61e"), alone.infra.uid()
    assert config.infra.config(uid=False)["pipe"]["size"] == "3x4"
    clone = config.infra.clone_obj()
    assert clone.pipe == pipe and type(clone.pipe.aug) is _Crop
    assert config.infra.clone_obj({"pipe.aug.size": 64}).pipe == _SizedPipeline(
        _Size(3, 4), _Crop(size=64)
    )
    config.process()
    (listed,) = config.infra.iter_cached()
    assert listed.pipe == pipe and listed.infra.uid() == uid


@dataclasses.dataclass(frozen=True)
class _Grid(tp.Generic[_Item]):
    """A generic dataclass with its own pydantic schema, which reads its type argument."""

    cells: tuple[tp.Any, ...] = ()

    @classmethod
    def __get_pydantic_core_schema__(cls, source: tp.Any, handler: tp.Any) -> tp.Any:
        from pydantic_core import core_schema

        (item,) = tp.get_args(source)  # (given by a field annotated _Grid[int])
        return core_schema.no_info_after_validator_function(
            lambda v: v if isinstance(v, cls) else cls(tuple(v)),
            handler.generate_schema(tuple[item, ...]),
        )


@dataclasses.dataclass
class _GridPipeline:
    grid: _Grid[int] = _Grid()
    aug: _Aug = dataclasses.field(default_factory=_Aug)


class _HoldsGridPipeline(pydantic.BaseModel):
    model_config = FORBID
    pipe: _GridPipeline = _GridPipeline()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        return repr(self.pipe)


def test_a_generic_dataclass_with_its_own_schema_next_to_a_subclass_has_a_uid(
    tmp_path: Path,
) -> None:
    """A generic dataclass with its own schema next to a dataclass subclass value was
    dumped by an adapter of its bare class, whose schema then failed ('not enough values
    to unpack' from get_args): no uid. It is dumped as its field's annotation (_Grid[int])
    says, or by its fields when no adapter can be built."""
    pipe = _GridPipeline(grid=_Grid((1, 2)), aug=_Crop(size=3))
    config = _HoldsGridPipeline(pipe=pipe, infra={"folder": tmp_path})
    uid = config.infra.uid()
    assert "grid.cells=(1,2)" in uid and f"_class={MODULE}._Crop" in uid, uid
    assert config.process() == repr(pipe)
    clone = config.infra.clone_obj()
    assert clone.pipe == pipe and type(clone.pipe.aug) is _Crop
    (listed,) = config.infra.iter_cached()
    assert listed.pipe == pipe and listed.infra.uid() == uid


@dataclasses.dataclass(frozen=True)
class _Cells(tp.Generic[_Item]):
    """A generic dataclass with its own schema whose serializer converts the cells to its
    type argument (none given: it fails)."""

    cells: tuple[tp.Any, ...] = ()

    @classmethod
    def __get_pydantic_core_schema__(cls, source: tp.Any, handler: tp.Any) -> tp.Any:
        from pydantic_core import core_schema

        args = tp.get_args(source)
        item = args[0] if args else None
        return core_schema.no_info_after_validator_function(
            lambda v: v if isinstance(v, cls) else cls(tuple(v)),
            handler.generate_schema(tuple[item or tp.Any, ...]),
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda value: [item(cell) for cell in value.cells]  # type: ignore[misc]
            ),
        )


@dataclasses.dataclass(frozen=True)
class _Point:
    """A dataclass with its own schema dumping it as a list [x, y]."""

    x: int = 0
    y: int = 0

    @classmethod
    def __get_pydantic_core_schema__(cls, source: tp.Any, handler: tp.Any) -> tp.Any:
        from pydantic_core import core_schema

        return core_schema.no_info_plain_validator_function(
            lambda v: v if isinstance(v, cls) else cls(*v),
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda value: [value.x, value.y]
            ),
        )


@dataclasses.dataclass
class _CellsPipeline:
    pair: tuple[_Cells[int], _Cells[int]] = (_Cells(), _Cells())
    either: _Cells[int] | _Cells[float] = _Cells()
    point: _Point = _Point()
    aug: _Aug = dataclasses.field(default_factory=_Aug)


class _HoldsCellsPipeline(pydantic.BaseModel):
    model_config = FORBID
    pipe: _CellsPipeline = _CellsPipeline()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        return repr(self.pipe)


def test_dataclasses_with_their_own_schema_next_to_a_subclass_in_other_shapes(
    tmp_path: Path,
) -> None:
    """Next to a dataclass subclass value (a review): a generic dataclass with its own
    schema named twice (tuple[_Cells[int], _Cells[int]]) was dumped by an adapter of its
    bare class, whose serializer failed (no type argument); one in a union of two of its
    parametrizations too; and one dumping itself as a list raised 'object of type ...
    has no len()'. The first two are exported by their fields (their dump is not known),
    the last as its schema dumps it."""
    pipe = _CellsPipeline(
        pair=(_Cells((1, 2)), _Cells((3,))),
        either=_Cells((4,)),
        point=_Point(5, 6),
        aug=_Crop(size=3),
    )
    config = _HoldsCellsPipeline(pipe=pipe, infra={"folder": tmp_path})
    uid = config.infra.uid()
    for part in ("pair=({cells=(1,2)},{cells=(3)})", "either.cells=(4)", "point=(5,6)"):
        assert part in uid, uid
    assert config.process() == repr(pipe)
    clone = config.infra.clone_obj()
    assert clone.pipe == pipe and type(clone.pipe.aug) is _Crop
    (listed,) = config.infra.iter_cached()
    assert listed.pipe == pipe and listed.infra.uid() == uid


class _Logger:
    """A runtime object with no json form."""


class _Step(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    size: int = 1
    logger: tp.Any = None


class _QuietStep(_Step):
    _exclude_from_cls_uid = ("logger",)


class _WithRuntime(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    lr: float = 0.1
    callback: tp.Callable[[float], None] | None = None
    logger: tp.Any = None
    steps: list[_Step] = []
    quiet: list[_QuietStep] = []
    infra: TaskInfra = TaskInfra(version="1")

    _exclude_from_cls_uid = ("callback",)

    @infra.apply(exclude_from_cache_uid=("logger",))
    def process(self) -> float:
        return self.lr


def test_values_kept_out_of_the_uid_need_no_json_form(tmp_path: Path) -> None:
    """A logger or a callback in a field kept out of the uid made uid() raise a TypeError
    (whose hint spoke of numpy); a value in a list was named by its field only."""
    logger = _Logger()
    obj = _WithRuntime(
        callback=print, logger=logger, quiet=[_QuietStep(logger=logger)], infra={"folder": tmp_path}
    )
    assert obj.infra.uid() == _WithRuntime(quiet=[_QuietStep()]).infra.uid()
    assert obj.process() == 0.1
    config = _read(obj.infra.uid_folder() / "config.yaml")  # (written without them)
    assert "callback" not in config and "logger" not in config and config["lr"] == 0.1
    assert "logger" not in config["quiet"][0]
    clone = obj.infra.clone_obj({"lr": 0.2})  # (they are passed on as they are)
    assert clone.logger is logger and clone.callback is print and clone.quiet[0].logger is logger
    # a value that enters the uid: named by its path, with the ways out
    bad = _WithRuntime(steps=[_Step(), _Step(logger=logger)])
    with pytest.raises(
        TypeError, match=r"Cannot export _WithRuntime\.steps\.1\.logger into"
    ) as info:
        bad.infra.uid()
    assert "_exclude_from_cls_uid" in str(info.value)
    assert "pydantic.Field(exclude=True)" in str(info.value)


class _Frozen(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    layers: int = 1


class _FrozenConv(_Frozen):
    kernel: int = 3


class _FrozenHolder(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    net: _Frozen = _Frozen()


_NETS = [_FrozenConv(kernel=5), _FrozenConv(kernel=7), _Frozen(), _Frozen(layers=1)]


class _Device(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    layers: int = 1
    device: str = "cpu"
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("device",)


class _DeviceHolder(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    d: _Device = _Device()
    f: float = 0.0


class _NetSet(pydantic.BaseModel):
    """Sets of models: of a class with a subclass, holding one, holding an excluded field."""

    model_config = FORBID
    nets: frozenset[_Frozen] = frozenset()
    holders: frozenset[_FrozenHolder] = frozenset()
    devices: frozenset[_DeviceHolder] = frozenset()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        return ",".join(sorted(type(n).__name__ for n in self.nets))


def test_subclass_instances_in_a_set_do_not_share_a_uid(tmp_path: Path) -> None:
    """A set holding a subclass instance was exported by the annotated class's schema:
    its own fields and its class were lost, `{_FrozenConv(kernel=5)}` had the uid of
    `{_Frozen()}` and read its cached result (as lists did before their class entered)."""
    configs = [
        _NetSet(nets={_Frozen()}),
        _NetSet(nets={_FrozenConv()}),
        _NetSet(nets={_FrozenConv(kernel=5)}),
        _NetSet(nets={_Frozen(), _FrozenConv()}),
    ]
    uids = [c.infra.uid() for c in configs]
    assert len(set(uids)) == len(uids), uids
    assert _cfg(configs[0]) == {"nets": [{"layers": 1}]}  # (as before: dumped whole)
    assert _cfg(configs[2]) == {
        "nets": [{"_class": f"{MODULE}._FrozenConv", "kernel": 5, "layers": 1}]
    }
    full = configs[2].infra.config(uid=False)
    assert dict(full)["nets"] == [{"kernel": 5, "layers": 1}]  # (no class: still loadable)
    results = [_NetSet(nets=c.nets, infra={"folder": tmp_path}).process() for c in configs]
    assert results == ["_Frozen", "_FrozenConv", "_FrozenConv", "_Frozen,_FrozenConv"]
    clone = configs[3].infra.clone_obj()  # (the subclass instance found by its dump)
    assert sorted(type(n).__name__ for n in clone.nets) == ["_Frozen", "_FrozenConv"]
    # deeper: a set item holding a subclass instance (a review: still one uid for all)
    held = [_NetSet(holders={_FrozenHolder(net=net)}) for net in _NETS]
    assert len({h.infra.uid() for h in held}) == len(held) - 1  # (the last two: equal)
    assert held[0].infra.clone_obj().holders == held[0].holders
    assert type(next(iter(held[0].infra.clone_obj().holders)).net) is _FrozenConv
    # exact classes keep the uids they had: dumped whole (an inf in it read as a change
    # and re-exported the item without its excluded fields: a review)
    kept = _NetSet(devices={_DeviceHolder(f=float("inf"))}).infra.uid()
    assert kept.endswith("devices=({f=inf,d={layers=1,device=cpu}})-" + kept[-8:])


class _DefaultNets(pydantic.BaseModel):
    model_config = FORBID
    lr: float = 0.1
    nets: list[_Net] = [_ConvNet()]
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        CALLS.append("_DefaultNets")
        return ",".join(type(n).__name__ for n in self.nets)


def test_caches_written_before_classes_entered_uids_are_reused(tmp_path: Path) -> None:
    """A list default holding a subclass instance: its full-uid.yaml, written before
    `_class` entered uids, has the list without it. The defaults check compared the whole
    list and refused every cached result of the method (a review)."""
    assert _DefaultNets(lr=0.2, infra={"folder": tmp_path}).process() == "_ConvNet"
    full = tmp_path / _DefaultNets(lr=0.2).infra.uid() / "full-uid.yaml"
    assert "_class" in full.read_text()
    older = re.sub(r"- _class: [^\n]*\n  ", "- ", full.read_text())  # (as written then)
    assert "_class" not in older and "- layers: 1" in older
    full.write_text(older)
    infra_base._DEFAULTS_CHECKED.clear()  # (as in a new process: checked again)
    before = CALLS.count("_DefaultNets")
    assert _DefaultNets(lr=0.2, infra={"folder": tmp_path}).process() == "_ConvNet"
    assert CALLS.count("_DefaultNets") == before
    # a default whose class changed is still told apart from the one cached (its own key)
    assert _DefaultNets(lr=0.2, nets=[_TransNet()]).infra.uid() != _DefaultNets(lr=0.2).infra.uid()


_NetVar = tp.TypeVar("_NetVar", bound=_Net)


class _Generic(pydantic.BaseModel, tp.Generic[_NetVar]):
    model_config = FORBID
    net: _NetVar


class _Loose(pydantic.BaseModel):
    """Annotations naming no class of the value: their uids stay as they were (a model in
    a field admitting anything is refused: see test_a_model_where_anything_goes_is_refused)."""

    model_config = FORBID
    anything: tp.Any = None
    many: list[tp.Any] = []
    generic: _Generic[_ConvNet] | None = None
    bound: _Generic | None = None  # type: ignore[type-arg]
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return 1


class _Named(pydantic.BaseModel):
    """_Loose's anything and many, annotated with the class they hold."""

    model_config = FORBID
    anything: _ConvNet | None = None
    many: list[_ConvNet] = []
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return 1


def test_classes_enter_uids_only_for_subclasses_of_the_annotated_class() -> None:
    """(a review: tp.Any, TypeVar-bound generics, ... gained `_class`, changing the uids
    of caches where no subclass is involved)"""
    loose = _Loose(
        generic=_Generic[_ConvNet](net=_ConvNet(kernel=5)),
        bound=_Generic(net=_ConvNet(kernel=5)),
    )
    assert "_class" not in str(_cfg(loose))


def test_a_model_where_anything_goes_is_refused() -> None:
    """A model in a tp.Any field (or list[tp.Any]...) entered its uid by its values off
    its class's defaults, without its class: _ConvNet() and _TransNet() both gave
    `anything={}`, one uid, one cache folder (one's result returned for the other).
    Refused at the first uid; annotated with its class, the uid is the one it had."""
    for values in (
        {"anything": _ConvNet()},
        {"many": [1, _TransNet(heads=4)]},
        {"anything": {"nets": [_ConvNet(kernel=5)]}},
    ):
        with pytest.raises(RuntimeError, match=r"_Loose\.\w+ holds a pydantic model.*Annotate"):
            _Loose(**values).infra.uid()  # type: ignore[arg-type]
    named = _Named(anything=_ConvNet(kernel=5), many=[_ConvNet(kernel=5)])
    assert _cfg(named) == {"anything": {"kernel": 5}, "many": [{"kernel": 5}]}
    # in a set too (its defaults are named there, not its class): refused, see
    # test_a_model_in_a_set_or_a_dataclass_field_naming_not_its_class_is_refused
    loose = _Loose(anything=frozenset({1}), many=[{"net": {"kernel": 5}}])
    assert loose.infra.uid() != _Loose().infra.uid()
    assert _Loose(anything=_Named()).infra.config(uid=False)["anything"]["many"] == []


class _SameFields(pydantic.BaseModel):
    """_Frozen's fields and defaults, another class."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)
    layers: int = 1


@dataclasses.dataclass(frozen=True)
class _AnyBox:
    held: tp.Any = None


@dataclasses.dataclass(frozen=True)
class _UnionBox:
    held: _Frozen | _SameFields | None = None
    log: list[_Frozen | _InNoUid] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class _NamedBox:
    held: _Frozen | None = None
    many: list[_Frozen] = dataclasses.field(default_factory=list)


class _Holders(pydantic.BaseModel):
    """Sets and dataclasses holding models, annotated with or without their classes."""

    model_config = FORBID
    loose_set: set[tp.Any] = set()
    bare_set: frozenset = frozenset()  # type: ignore[type-arg]
    base_set: set[pydantic.BaseModel] = set()
    bases: list[pydantic.BaseModel] = []
    named_set: frozenset[_Frozen] = frozenset()
    box: _AnyBox = _AnyBox()
    union_box: _UnionBox = _UnionBox()
    named_box: _NamedBox = _NamedBox()
    anything: tp.Any = None
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return 1


def test_a_model_in_a_set_or_a_dataclass_field_naming_not_its_class_is_refused() -> None:
    """A model in a set (set[tp.Any], a bare frozenset, set[pydantic.BaseModel]), in a
    list[pydantic.BaseModel], or in a dataclass field typed tp.Any (or an undiscriminated
    union) entered its uid by its values, not its class: _Frozen() and _SameFields() (same
    fields) gave one uid, one cache folder. Refused, naming the field and the place; a
    class the annotation names keeps the uid it had."""
    cases = {
        "loose_set": lambda m: {m},
        "bare_set": lambda m: frozenset({m}),
        "base_set": lambda m: {m},
        "bases": lambda m: [m],
        "box": lambda m: _AnyBox(m),
        "union_box": lambda m: _UnionBox(m),
        "anything": lambda m: _AnyBox([m]),
    }
    places = {
        "loose_set": "in a set whose annotation names not its class",
        "bare_set": "in a set whose annotation names not its class",
        "base_set": "in a set whose annotation names not its class",
        "bases": "where its annotation names pydantic.BaseModel",
        "box": "in the field _AnyBox.held of a dataclass",
        "union_box": "_UnionBox.held of a dataclass annotated .* union of several models",
        "anything": "in the field _AnyBox.held of a dataclass",
    }
    for name, make in cases.items():
        for model in (_Frozen(), _SameFields()):
            with pytest.raises(RuntimeError, match=rf"_Holders\.{name} holds a .*{places[name]}"):
                _Holders(**{name: make(model)}).infra.uid()
    # where the annotation names the class: taken, uids as they were
    named = _Holders(
        named_set=frozenset({_Frozen(layers=2)}),
        named_box=_NamedBox(_Frozen(), [_FrozenConv()]),
        union_box=_UnionBox(log=[_Frozen(layers=3), _InNoUid()]),  # (one counts in uids)
        box=_AnyBox(5),
    )
    uid = named.infra.uid().replace(MODULE, "test_identity")
    assert uid.endswith(
        "/box.held=5,named_set=({layers=2}),union_box={held=None,log=({layers=3})},"
        "named_box={held.layers=1,many=({kernel=3,layers=1,_clas...30-fddf928a"
    ), uid


class _AnyInside(pydantic.BaseModel):
    model_config = FORBID
    held: tp.Any = None


class _AnyInsideNoExtra(pydantic.BaseModel):  # (refused as a sub-config: no 'extra' key)
    held: tp.Any = None


@dataclasses.dataclass
class _DataclassOfModels:
    inner: _AnyInside | None = None
    loose: _AnyInsideNoExtra | None = None


_Held = tp.TypeVar("_Held")


@dataclasses.dataclass
class _GenericBox(tp.Generic[_Held]):
    held: _Held | None = None


class _DeepHolders(pydantic.BaseModel):
    """Models held where no annotation names their class, one level deeper."""

    model_config = FORBID
    box: _DataclassOfModels | None = None
    generic: _GenericBox | None = None  # type: ignore[type-arg]
    generic_any: _GenericBox[tp.Any] | None = None
    generic_named: _GenericBox[_Frozen] | None = None
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return 1


def test_a_model_held_by_a_generic_dataclass_or_inside_a_model_in_a_dataclass_is_refused() -> None:
    """Two ways left for _Frozen() and _SameFields() (same fields) to get one uid: in the
    tp.Any field of a model held by a dataclass (its refusal was caught by the fallback
    that exports a refused sub-config by its dump), and in a field of a generic
    dataclass annotated with a type variable (never looked into). Refused, naming the
    field; what an annotation names keeps its uid."""
    cases = {
        "box": (lambda m: _DataclassOfModels(inner=_AnyInside(held=m)), r"_AnyInside\.held holds"),
        "box ": (
            lambda m: _DataclassOfModels(loose=_AnyInsideNoExtra(held=[m])),
            r"NoExtra\.held holds",
        ),
        "generic": (lambda m: _GenericBox(m), r"generic holds .* _GenericBox\.held of a"),
        "generic_any": (lambda m: _GenericBox(m), r"generic_any holds .* _GenericBox\.held"),
        "generic_named": (
            lambda m: _GenericBox(m),
            r"generic_named holds a pydantic model \(_SameFields\) .*annotated .*_Frozen",
        ),
    }
    for name, (make, message) in cases.items():
        for model in (_Frozen(), _SameFields()):
            if name == "generic_named" and isinstance(model, _Frozen):
                continue  # (named: see below)
            with pytest.raises(RuntimeError, match=message):
                _DeepHolders(**{name.strip(): make(model)}).infra.uid()
    # named by the annotation, or not a model: uids as they were
    named = _DeepHolders(
        generic_named=_GenericBox(_Frozen(layers=2)),
        generic=_GenericBox(3),
        box=_DataclassOfModels(inner=_AnyInside(held={"a": 1})),
    )
    uid = named.infra.uid().replace(MODULE, "test_identity")
    assert uid.endswith(
        "/generic.held=3,generic_named.held.layers=2,box={loose=None,inner.held.a=1}-5c09e534"
    ), uid


class _IntKeys(pydantic.BaseModel):
    model_config = FORBID
    table: dict[tp.Any, str] = {}
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return 1


def test_dict_keys_written_alike_are_refused_naming_the_field() -> None:
    """{1: "x", "1": "y"} was dumped as {"1": "y"} (one value lost): the uid of
    {"1": "y"}, and {1: "y", "1": "x"} had the uid of {"1": "x"}. Refused, naming the
    field and both keys; keys of one type keep their uids."""
    for table in ({1: "x", "1": "y"}, {"1": "y", 1: "x"}, {True: "a", "true": "b"}):
        with pytest.raises(ValueError, match=r"keys .* of field _IntKeys\.table are written alike"):
            _IntKeys(table=table).infra.uid()
    uid = _IntKeys(table={1: "y", 2: "x"}).infra.uid()
    assert uid.endswith("/table={1=y,2=x}-6ad3c521"), uid


class _IntKeysKeptOut(pydantic.BaseModel):
    model_config = FORBID
    table: dict[tp.Any, str] = {}
    notes: dict[tp.Any, str] = {}
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("notes",)
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return len(self.notes)


def test_config_without_uid_refuses_dict_keys_written_alike(tmp_path: Path) -> None:
    """config(uid=False) of {1: "x", "1": "y"} (which the uid refuses) gave {"1": "y"}:
    a value silently lost. Refused too, naming the field; such a dict in a field kept out
    of the uid (its uid works, the task runs) is left out of it, as a value with no json
    form is, not written half into config.yaml."""
    for kwargs in ({"uid": False}, {"uid": False, "exclude_defaults": True}):
        with pytest.raises(ValueError, match=r"keys 1 \(int\) and '1' \(str\) of field _IntKeys\."):
            _IntKeys(table={1: "x", "1": "y"}).infra.config(**kwargs)
    assert _IntKeys(table={1: "y", 2: "x"}).infra.config(uid=False)["table"] == {"1": "y", "2": "x"}
    kept = _IntKeysKeptOut(notes={1: "x", "1": "y"}, infra={"folder": tmp_path})
    assert kept.process() == 2
    assert "notes" not in kept.infra.config(uid=False)
    config = (tmp_path / kept.infra.uid() / "config.yaml").read_text("utf8")
    assert "notes" not in config and "table" in config
    with pytest.raises(ValueError, match=r"of field _IntKeysKeptOut\.table are written alike"):
        _IntKeysKeptOut(table={1: "x", "1": "y"}).infra.config(uid=False)
    assert _IntKeys(table={"1": "y"}).infra.uid() == _IntKeys(table={1: "y"}).infra.uid()


class _InNoUid(pydantic.BaseModel):
    """A model keeping itself out of its parent's uid (a runtime helper's settings)."""

    model_config = FORBID
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = (".",)
    level: int = 1


def test_a_model_in_no_uid_where_anything_goes_is_taken() -> None:
    """(a review: the refusal of a model in a tp.Any field also refused one excluding
    itself from its parent's uid ("."), which enters no uid: its config worked before)"""
    assert _Loose(anything=_InNoUid(level=3)).infra.uid() == _Loose().infra.uid()
    in_dict = _Loose(anything={"log": _InNoUid(level=3)})
    assert in_dict.infra.uid() == _Loose(anything={}).infra.uid()
    assert _Loose(many=[1, _InNoUid()]).infra.uid() == _Loose(many=[1]).infra.uid()


class _HalfNamed(pydantic.BaseModel):
    """Fields naming a class beside tp.Any."""

    model_config = FORBID
    net: _ConvNet | tp.Any = None
    nets: list[_ConvNet | tp.Any] = []
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return 1


def test_a_model_of_another_class_where_a_class_or_anything_goes_is_refused() -> None:
    """(a review: the refusal of a model in a tp.Any field skipped fields naming a class
    beside tp.Any: _TransNet() and _Frozen() in `net: _ConvNet | tp.Any` both gave
    `net={}`, one uid, one cache folder)"""
    for values, example in (
        ({"net": _TransNet()}, "net: _TransNet | None;"),
        ({"nets": [_Frozen()]}, "nets: list[_Frozen] or dict[str, _Frozen];"),  # (a container)
    ):
        with pytest.raises(RuntimeError, match=r"_HalfNamed\.\w+ holds a pydantic model") as info:
            _HalfNamed(**values).infra.uid()  # type: ignore[arg-type]
        assert f"(e.g. {example} its uid stays the same)" in str(info.value)
    # the class it names (or a subclass: its class named) keeps the uid it had
    named = _HalfNamed(net=_ConvNet(kernel=5), nets=[_ConvNet()])
    assert _cfg(named) == {"net": {"kernel": 5}, "nets": [{}]}


_AnyVar = tp.TypeVar("_AnyVar")


class _ModelBox(pydantic.BaseModel, tp.Generic[_AnyVar]):
    model_config = FORBID
    item: _AnyVar | None = None


class _Untyped(pydantic.BaseModel):
    """Annotations pydantic reads as of tp.Any: bare containers, a bare generic model."""

    model_config = FORBID
    items: list = []  # type: ignore[type-arg]
    table: dict = {}  # type: ignore[type-arg]
    pair: tuple = ()  # type: ignore[type-arg]
    seq: tp.List = []  # type: ignore[type-arg]  # noqa: UP006
    ordered: collections.OrderedDict = collections.OrderedDict()  # type: ignore[type-arg]
    box: _ModelBox | None = None  # type: ignore[type-arg]
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return 1


def test_a_model_in_a_bare_container_or_type_variable_is_refused() -> None:
    """(a review: the refusal of models where anything goes missed annotations naming no
    item type, `list`, `dict`, `tuple`, `tp.List`, and a bare generic model's type
    variable: _ConvNet() and _TransNet() there both gave `items=({})`, one uid)"""
    for values in (
        {"items": [_ConvNet()]},
        {"table": {"a": _TransNet()}},
        {"pair": (_ConvNet(),)},
        {"seq": [_ConvNet()]},
        {"ordered": collections.OrderedDict(a=_ConvNet())},
        {"box": _ModelBox(item=_ConvNet())},
    ):
        with pytest.raises(RuntimeError, match=r"\.\w+ holds a pydantic model.*a bare list"):
            _Untyped(**values).infra.uid()  # type: ignore[arg-type]
    # plain values there keep their uids; a bound type variable names its class
    plain = _Untyped(items=[1], table={"a": [2]}, pair=(3,), box=_ModelBox(item=4))
    assert _cfg(plain) == {"items": [1], "table": {"a": [2]}, "pair": [3], "box": {"item": 4}}
    assert "_class" not in str(_cfg(_Loose(bound=_Generic(net=_ConvNet(kernel=5)))))


class _Open(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    x: int = 0
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return 1


class _OpenToNets(_Open):
    __pydantic_extra__: dict[str, _Net] = pydantic.Field(init=False)  # type: ignore[assignment]


def test_a_model_given_beyond_the_fields_is_refused() -> None:
    """(a review: the refusal of models where anything goes missed the values of an
    extra="allow" model, which no annotation names: _ConvNet() and _TransNet() given as
    `net` both gave `net={}`, one uid, one cache folder)"""
    for value in (_ConvNet(), [_TransNet()], {"a": _ConvNet(kernel=5)}):
        with pytest.raises(
            RuntimeError, match=r"_Open\.net holds a pydantic model \(\w+\) given beyond the fields"
        ):
            _Open(net=value).infra.uid()
    assert _cfg(_Open(net={"kernel": 5}, n=[1])) == {"net": {"kernel": 5}, "n": [1]}
    # extras annotated with a class: its models are taken, as in a field naming it
    assert _cfg(_OpenToNets(net=_Net(layers=5))) == {"net": {"layers": 5}}


class _Tagged(pydantic.BaseModel):
    """Dumps itself as a string: its serializer names it (no defaults pruned)."""

    model_config = FORBID
    size: int = 1

    @pydantic.model_serializer
    def _tag(self) -> str:
        return f"tag{self.size}"


class _AnyRoot(pydantic.RootModel[tp.Any]):
    pass


class _HoldsRoot(pydantic.BaseModel):
    model_config = FORBID
    root: _AnyRoot | None = None
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return 1


def test_where_anything_goes_a_model_exported_whole_is_taken_a_root_looked_into() -> None:
    """(a review: the refusal of models where anything goes refused a model whose
    model_serializer dumps it whole (a string), and a RootModel of a number, whose uids
    were `anything=tag1` and `anything=5` before: nothing of them was pruned away; and it
    let a model through inside a RootModel[tp.Any], exported as its root, without class)"""
    assert _cfg(_Loose(anything=_Tagged())) == {"anything": "tag1"}
    assert _cfg(_Loose(many=[_Tagged(size=2)])) == {"many": ["tag2"]}
    assert _cfg(_Loose(anything=_AnyRoot(5))) == {"anything": 5}
    assert _cfg(_HoldsRoot(root=_AnyRoot([5]))) == {"root": [5]}
    for config in (_Loose(anything=_AnyRoot(_ConvNet())), _HoldsRoot(root=_AnyRoot(_ConvNet()))):
        with pytest.raises(RuntimeError, match=r"holds a pydantic model \(_ConvNet\)"):
            config.infra.uid()


class _PartlyCached(pydantic.BaseModel):
    model_config = FORBID
    parts: dict[str, tp.Any] = {}
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply(exclude_from_cache_uid=("parts.log",))
    def process(self) -> int:
        return 1


def test_a_model_where_anything_goes_is_refused_beside_a_cache_uid_exclusion() -> None:
    """(a review: a field with a path kept out of the cache uid was exported apart, where
    the refusal of models where anything goes did not look: {"net": _ConvNet()} and
    {"net": _TransNet()} both gave `parts.net={}`, one uid, one cache folder)"""
    for net in (_ConvNet(), _TransNet()):
        with pytest.raises(RuntimeError, match=r"_PartlyCached\.parts holds a pydantic model"):
            _PartlyCached(parts={"net": net, "log": 1}).infra.uid()
    # a model at the path kept out is in no uid: taken
    config = _PartlyCached(parts={"log": _ConvNet(), "n": 2})
    assert config.infra.uid() == _PartlyCached(parts={"n": 2}).infra.uid()


def test_a_named_class_in_a_container_held_where_anything_goes_is_refused() -> None:
    """(a review: a model of the class a field names beside tp.Any was taken anywhere in
    the value, also in a list or dict held by the tp.Any, where nothing names it: [_ConvNet()]
    in `net: _ConvNet | tp.Any` and the plain [{}] both gave `net=({})`, one uid)"""
    assert _cfg(_HalfNamed(net=[{}])) == {"net": [{}]}  # (a plain value: its uid as before)
    for values in ({"net": [_ConvNet()]}, {"nets": [{"a": _ConvNet(kernel=5)}]}):
        with pytest.raises(RuntimeError, match=r"holds a pydantic model \(_ConvNet\)"):
            _HalfNamed(**values).infra.uid()  # type: ignore[arg-type]
    # where the annotation names it (or a subclass, which names its class): taken
    config = _HalfNamed(net=_ConvNet(kernel=5), nets=[_ConvNet(), {"a": _SubConv()}])
    assert _cfg(config)["nets"][1]["a"]["_class"].endswith("_SubConv")


class _SubConv(_ConvNet):
    pass


class _SlowSerializer(pydantic.BaseModel):
    model_config = FORBID
    path: str = "a"
    infra: TaskInfra = TaskInfra(version="1")

    @pydantic.field_serializer("path")
    def _ser(self, value: str) -> str:
        raise KeyboardInterrupt  # (Ctrl-C while it runs)

    @infra.apply
    def process(self) -> int:
        return 1


def test_ctrl_c_during_a_serializer_is_a_keyboard_interrupt() -> None:
    """(pydantic wraps it: it came out as a TypeError "Cannot export ... into a config")"""
    with pytest.raises(KeyboardInterrupt):
        _SlowSerializer(path="b").infra.uid()


class _SaysInterrupt(pydantic.BaseModel):
    model_config = FORBID
    path: str = "a"

    @pydantic.field_serializer("path")
    def _ser(self, value: str) -> str:
        raise ValueError("cannot handle a KeyboardInterrupt marker")


def test_an_export_error_mentioning_keyboard_interrupt_stays_an_export_error() -> None:
    """(a review: a text search turned it into a KeyboardInterrupt)"""
    with pytest.raises(TypeError, match="Cannot export"):
        ConfDict.from_model(_SaysInterrupt(path="b"), uid=True)


class WithSecret(pydantic.BaseModel):
    token: pydantic.SecretStr = pydantic.SecretStr("a")
    n: int = 1
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        return self.n


def test_a_secret_does_not_enter_the_uid_nor_the_files(tmp_path: Path) -> None:
    """As docs/uids.md says: a SecretStr dumps as ********** (the same uid whatever the
    secret), and no secret is written to the config folder's files."""
    one = WithSecret(token="first-secret", infra={"folder": tmp_path})
    two = WithSecret(token="second-secret", infra={"folder": tmp_path})
    assert one.infra.uid() == two.infra.uid()
    assert one.run() == 1
    folder = one.infra.uid_folder()
    assert folder is not None
    written = "".join(p.read_text() for p in folder.glob("*.yaml"))
    assert "first-secret" not in written and "**" in written


# --- a sub-config held by a dataclass ----------------------------------------------------
class _HeldData(pydantic.BaseModel):
    model_config = FORBID
    _exclude_from_cls_uid = ("device", "log")
    n: int = 3
    device: str = "cpu"
    log: tp.Any = None
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def prepare(self) -> int:
        return self.n


@dataclasses.dataclass
class _DataBox:
    data: _HeldData
    more: list[_HeldData] = dataclasses.field(default_factory=list)


class _HoldsDataBox(pydantic.BaseModel):
    model_config = FORBID
    box: _DataBox
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return self.box.data.n


def test_a_sub_config_held_by_a_dataclass_keeps_its_exclusions_out(tmp_path: Path) -> None:
    """A model in a dataclass (in a config field) was in the uid as pydantic dumps it:
    its _exclude_from_cls_uid fields (device: a new cache folder per device; a logger
    left out but None in it) and its infra's settings (folder, cluster, mode...: moving
    the cache or running on Slurm changed the uid) were there. They are left out as for
    any sub-config (its defaults are kept, as for a dataclass's own fields: the uids of
    the other such configs are unchanged); the model is frozen with the config."""

    def uid(data: _HeldData, *more: _HeldData) -> str:
        return _HoldsDataBox(box=_DataBox(data=data, more=list(more))).infra.uid()

    base = uid(_HeldData())
    assert base.endswith("/box={more=(),data={n=3,infra.version=1}}-2f6bb459"), base
    others = [
        _HeldData(device="cuda"),
        _HeldData(log=logging.getLogger("exca")),
        _HeldData(infra={"folder": tmp_path, "cluster": "local", "mode": "force"}),
    ]
    assert [uid(d) for d in others] == [base] * 3
    assert uid(_HeldData(), _HeldData(device="cuda")) == uid(_HeldData(), _HeldData())
    assert uid(_HeldData(n=4)) != base
    config = _HoldsDataBox(box=_DataBox(data=_HeldData()), infra={"folder": tmp_path})
    assert config.process() == 3
    with pytest.raises(RuntimeError, match="frozen"):
        config.box.data.n = 5


class _ThirdParty(pydantic.BaseModel):  # (no 'extra' key: a library's model, say)
    a: int = 1
    b: str = "x"


class _LooseField(pydantic.BaseModel):
    model_config = FORBID
    anything: pydantic.BaseModel | None = None  # (no uid can be defined from it)
    k: int = 2


@dataclasses.dataclass
class _LibBox:
    lib: _ThirdParty
    loose: _LooseField


class _HoldsLibBox(pydantic.BaseModel):
    model_config = FORBID
    held: _LibBox
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        return self.held.lib.a


def test_a_model_no_sub_config_may_be_keeps_its_uid_when_held_by_a_dataclass() -> None:
    """Models held by dataclasses are exported as sub-configs now: one without an 'extra'
    key, or with a field no uid can be defined from, raised on every call where its
    dump had been its uid (a review). Such a model keeps that uid (the code of 11b796b's)."""
    config = _HoldsLibBox(held=_LibBox(_ThirdParty(a=5), _LooseField(k=3)))
    uid = config.infra.uid()
    assert uid.endswith("/held={lib={a=5,b=x},loose={k=3,anything=None}}-9af77887"), uid


class _HookedNet(pydantic.BaseModel):
    model_config = FORBID
    name: str = "resnet"
    depth: int = 18

    def _exca_uid_dict_override(self) -> dict[str, tp.Any]:
        return {"name": f"{self.name}{self.depth}"}


@dataclasses.dataclass
class _NetBox:
    net: _HookedNet


class _HoldsNetBox(pydantic.BaseModel):
    model_config = FORBID
    box: _NetBox
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return self.box.net.depth


def test_a_uid_hook_of_a_sub_config_held_by_a_dataclass_is_its_uid(tmp_path: Path) -> None:
    """A model held by a dataclass with a _exca_uid_dict_override: the hook's dict is its
    uid (as for any sub-config). Its keys that are field names took the fields' values
    instead (name=resnet for depths 18 and 50): two configs shared a uid, the second
    read the result of the first."""

    def config(depth: int) -> _HoldsNetBox:
        return _HoldsNetBox(box=_NetBox(_HookedNet(depth=depth)), infra={"folder": tmp_path})

    assert config(18).infra.uid().endswith("/box.net.name=resnet18-08cb9f66")
    assert config(18).process() == 18
    assert config(50).process() == 50


class _SelfExcluded(pydantic.BaseModel):
    model_config = FORBID
    _exclude_from_cls_uid = (".",)  # (the whole model: a logger's settings, say)
    level: int = 0


class _Optim(pydantic.BaseModel):
    model_config = FORBID
    lr: float = 0.1


class _Renamed(_Optim):  # (overrides methods only: its fields are its base's)
    pass


@dataclasses.dataclass
class _OptimBox:
    optim: _Optim
    log: _SelfExcluded = dataclasses.field(default_factory=_SelfExcluded)
    more: list[_Optim | _SelfExcluded] = dataclasses.field(default_factory=list)


class _HoldsOptimBox(pydantic.BaseModel):
    model_config = FORBID
    box: _OptimBox
    optim: _Optim = _Optim()  # (the same shapes held directly, for comparison)
    log: _SelfExcluded = _SelfExcluded()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> float:
        return self.box.optim.lr


def test_a_sub_config_held_by_a_dataclass_is_excluded_and_named_as_a_direct_one(
    tmp_path: Path,
) -> None:
    """A model held by a dataclass with _exclude_from_cls_uid = (".",) counted in the
    uid (box.log.level: a folder per logger level), where a field holding it leaves it
    out; and a subclass of the model class the dataclass field names had no _class: one
    that only overrides methods shared its base's uid (and read its result). Both are
    as for a model held by a field now."""

    def config(optim: _Optim, level: int = 0, *more: tp.Any) -> _HoldsOptimBox:
        box = _OptimBox(optim, _SelfExcluded(level=level), list(more))
        return _HoldsOptimBox(box=box, infra={"folder": tmp_path})

    base = config(_Optim()).infra.uid()
    assert base.endswith("/box={more=(),optim.lr=0.10}-4d32ab66"), base
    assert config(_Optim(), 3).infra.uid() == base
    assert config(_Optim(), 0, _SelfExcluded(level=2)).infra.uid() == base
    assert _HoldsOptimBox(box=_OptimBox(_Optim()), log=_SelfExcluded(level=2)).infra.uid() == base
    renamed = config(_Renamed()).infra.uid()
    assert "optim={lr=0.10,_class=test_identity._Renamed}" in renamed, renamed
    assert config(_Optim(), 0, _Renamed()).infra.uid() != config(_Optim(), 0, _Optim()).infra.uid()
    direct = _HoldsOptimBox(box=_OptimBox(_Optim()), optim=_Renamed(lr=0.5)).infra.uid()
    assert "optim={lr=0.50,_class=test_identity._Renamed}" in direct, direct
    assert config(_Optim(lr=0.2), 5).process() == 0.2
    assert config(_Renamed(lr=0.3)).process() == 0.3
    assert "level" not in "".join(p.read_text() for p in tmp_path.glob("*/*/uid.yaml"))


class _Workers(pydantic.BaseModel):
    model_config = FORBID
    _exclude_from_cls_uid = ("workers",)  # (how fast, not what)
    lr: float = 0.1
    workers: int = 1


class _FastWorkers(_Workers):  # (overrides methods only)
    pass


class _HoldsWorkers(pydantic.BaseModel):
    model_config = FORBID
    optim: _Workers = _Workers()
    n: int = 0


@dataclasses.dataclass
class _WorkersBox:
    optim: _Workers = dataclasses.field(default_factory=_Workers)
    holder: _HoldsWorkers = dataclasses.field(default_factory=_HoldsWorkers)
    size: int = 1


@dataclasses.dataclass
class _BiggerBox(_WorkersBox):
    extra: int = 0


class _HoldsWorkersBox(pydantic.BaseModel):
    model_config = FORBID
    box: _WorkersBox
    holder: _HoldsWorkers = _HoldsWorkers()  # (the same shapes held directly)
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        return f"{self.box.optim.workers}-{type(self.box.holder.optim).__name__}"


def test_models_in_a_dataclass_subclass_or_in_a_held_model_are_exported_as_held_directly(
    tmp_path: Path,
) -> None:
    """(a) A dataclass subclass instance (in a field annotated with its base) was exported
    by its json dump: the models it holds kept their _exclude_from_cls_uid fields
    (workers=4 and workers=1, two folders for one result), where its base class's
    instance leaves them out. (b) A model held by a model that a dataclass holds had no
    _class when it is a subclass of its field's class (the same uid as its base's),
    where held by a model field it has one. Both are exported as the same models held
    by the dataclass's base, or by fields."""

    def uid(box: _WorkersBox, **fields: tp.Any) -> str:
        return _HoldsWorkersBox(box=box, infra={"folder": tmp_path}, **fields).infra.uid()

    base = uid(_WorkersBox(size=2))
    assert base.endswith("/box={size=2,optim.lr=0.10,holder={n=0,optim.lr=0.10}}-90dbe5bc"), base
    bigger = uid(_BiggerBox())
    assert "workers" not in bigger, bigger
    assert "_class=test_identity._BiggerBox" in bigger
    assert uid(_BiggerBox(optim=_Workers(workers=4))) == bigger
    assert uid(_BiggerBox(holder=_HoldsWorkers(optim=_Workers(workers=4)))) == bigger
    assert uid(_WorkersBox(size=2, optim=_Workers(workers=4))) == base
    fast = uid(_WorkersBox(size=2, holder=_HoldsWorkers(optim=_FastWorkers())))
    assert fast != base
    assert "holder={n=0,optim={lr=0.10,_class=test_identity._FastWorkers}}" in fast, fast
    direct = uid(_WorkersBox(size=2), holder=_HoldsWorkers(optim=_FastWorkers()))
    assert "holder.optim._class=test_identity._FastWorkers" in direct, direct
    in_bigger = uid(_BiggerBox(holder=_HoldsWorkers(optim=_FastWorkers())))
    assert "_class=test_identity._FastWorkers" in in_bigger, in_bigger
    config = _HoldsWorkersBox(box=_BiggerBox(optim=_Workers(workers=4)), infra={"folder": tmp_path})
    assert config.process() == "4-_Workers"
    config = _HoldsWorkersBox(box=_BiggerBox(optim=_Workers(workers=2)), infra={"folder": tmp_path})
    assert config.process() == "4-_Workers"  # (the same config: its cached result)
    holder = _HoldsWorkers(optim=_FastWorkers())
    fast_config = _HoldsWorkersBox(
        box=_WorkersBox(size=2, holder=holder), infra={"folder": tmp_path}
    )
    assert fast_config.process() == "1-_FastWorkers"
    plain = _HoldsWorkersBox(box=_WorkersBox(size=2), infra={"folder": tmp_path})
    assert plain.process() == "1-_Workers"


class _HoldsDefaultBox(pydantic.BaseModel):
    model_config = FORBID
    box: _WorkersBox = pydantic.Field(default_factory=_WorkersBox)
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        return f"{self.box.optim.workers}-{type(self.box.holder.optim).__name__}"


def test_a_dataclass_at_its_default_but_for_a_model_subclass_is_not_the_default(
    tmp_path: Path,
) -> None:
    """A dataclass field whose value equals its default but for the class of a model it
    holds (a subclass of the class its field names, directly or in a model it holds) was
    taken for its default (its json dump follows the annotations: the same as the
    default's): the config shared the uid of the one without it ("default"), and read its
    result. It counts with the subclass's _class, as the same model held by a field."""

    def uid(box: _WorkersBox) -> str:
        return _HoldsDefaultBox(box=box, infra={"folder": tmp_path}).infra.uid()

    default = uid(_WorkersBox())
    assert default.endswith("/default"), default
    fast = uid(_WorkersBox(optim=_FastWorkers()))
    assert "optim={lr=0.10,_class=test_identity._FastWorkers}" in fast, fast
    held = uid(_WorkersBox(holder=_HoldsWorkers(optim=_FastWorkers())))
    assert "holder={n=0,optim={lr=0.10,_class=test_identity._FastWorkers}}" in held, held
    assert len({default, fast, held}) == 3
    box = _WorkersBox(holder=_HoldsWorkers(optim=_FastWorkers()))
    assert _HoldsDefaultBox(infra={"folder": tmp_path}).process() == "1-_Workers"
    assert _HoldsDefaultBox(box=box, infra={"folder": tmp_path}).process() == "1-_FastWorkers"


class _HoldsBoxes(pydantic.BaseModel):
    model_config = FORBID
    fast: _WorkersBox = pydantic.Field(default_factory=lambda: _WorkersBox(optim=_FastWorkers()))
    boxes: list[_WorkersBox] = pydantic.Field(default_factory=lambda: [_WorkersBox()])
    named: dict[str, _WorkersBox] = pydantic.Field(default_factory=lambda: {"a": _WorkersBox()})
    optims: list[_Workers] = [_Workers()]
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> str:
        boxes = [self.fast, *self.boxes, *self.named.values()]
        return ",".join(type(m).__name__ for m in [*(b.optim for b in boxes), *self.optims])


def test_a_default_holding_a_model_subclass_or_a_container_of_them_is_told_apart(
    tmp_path: Path,
) -> None:
    """The other ways round of a dataclass at its default but for a model subclass: a
    default holding the subclass and a value holding the base class, and a list or a dict
    of dataclasses (or of models) equal to their default but for a subclass inside, were
    taken for their default (their dumps are the default's): "default", and its result."""

    def config(**fields: tp.Any) -> _HoldsBoxes:
        return _HoldsBoxes(infra={"folder": tmp_path}, **fields)

    default = config().infra.uid()
    assert default.endswith("/default"), default
    uids = {
        "base": config(fast=_WorkersBox()).infra.uid(),
        "list": config(boxes=[_WorkersBox(optim=_FastWorkers())]).infra.uid(),
        "dict": config(named={"a": _WorkersBox(optim=_FastWorkers())}).infra.uid(),
        "models": config(optims=[_FastWorkers()]).infra.uid(),
    }
    assert len({default, *uids.values()}) == 5, uids
    assert "fast={size=1,optim.lr=0.10" in uids["base"], uids
    for key in ("list", "dict", "models"):
        assert "_class=test_identity._FastWorkers" in uids[key], uids
    assert config().process() == "_FastWorkers,_Workers,_Workers,_Workers"
    assert config(fast=_WorkersBox()).process() == "_Workers,_Workers,_Workers,_Workers"
    assert (
        config(optims=[_FastWorkers()]).process() == "_FastWorkers,_Workers,_Workers,_FastWorkers"
    )


def test_a_default_differing_only_in_what_its_models_keep_out_of_uids_is_the_default(
    tmp_path: Path,
) -> None:
    """A dataclass field (or a list or dict of dataclasses or of models) whose value
    differs from its default only in a field a model inside keeps out of uids (workers,
    in _exclude_from_cls_uid) was not taken for its default (its json dump differs from
    the default's): its own uid (box={size=1,optim.lr=0.10,...}), a new folder and a
    new computation for the same config, where a model held by a field is the default.
    They are the default, as the same model held by a field."""
    slow = _Workers(workers=4)

    def box_uid(box: _WorkersBox) -> str:
        return _HoldsDefaultBox(box=box, infra={"folder": tmp_path}).infra.uid()

    default = box_uid(_WorkersBox())
    assert default.endswith("/default"), default
    assert box_uid(_WorkersBox(optim=slow)) == default
    assert box_uid(_WorkersBox(holder=_HoldsWorkers(optim=slow))) == default
    assert box_uid(_WorkersBox(optim=_Workers(lr=0.2, workers=4))) != default
    assert _HoldsDefaultBox(infra={"folder": tmp_path}).process() == "1-_Workers"
    config = _HoldsDefaultBox(box=_WorkersBox(optim=slow), infra={"folder": tmp_path})
    assert config.process() == "1-_Workers"  # (the default's result: the same config)
    direct = _HoldsWorkersBox(box=_WorkersBox(), holder=_HoldsWorkers(optim=slow)).infra.uid()
    assert direct == _HoldsWorkersBox(box=_WorkersBox()).infra.uid()  # (as held by a field)

    def config_uid(**fields: tp.Any) -> str:
        return _HoldsBoxes(infra={"folder": tmp_path}, **fields).infra.uid()

    default = config_uid()
    for fields in [
        {"boxes": [_WorkersBox(optim=slow)]},
        {"named": {"a": _WorkersBox(holder=_HoldsWorkers(optim=slow))}},
        {"optims": [slow]},
        {"fast": _WorkersBox(optim=_FastWorkers(workers=4))},
    ]:
        assert config_uid(**fields) == default, fields
    assert config_uid(optims=[_Workers(lr=0.2, workers=4)]) != default
    assert config_uid(optims=[slow, slow]) != default


class _AliasedWorkers(pydantic.BaseModel):
    model_config = FORBID
    _exclude_from_cls_uid = ("workers",)
    rate: float = pydantic.Field(0.1, alias="Rate")
    workers: int = 1


@dataclasses.dataclass
class _AliasedBox:
    optim: _AliasedWorkers = dataclasses.field(default_factory=_AliasedWorkers)


@dataclasses.dataclass
class _BiggerAliasedBox(_AliasedBox):
    extra: int = 0


class _HoldsAliasedBox(pydantic.BaseModel):
    model_config = FORBID
    box: _AliasedBox
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> float:
        return self.box.optim.rate


def test_an_aliased_field_of_a_model_in_a_dataclass_subclass_is_config(tmp_path: Path) -> None:
    """A model held by a dataclass subclass instance was exported from that instance's
    own dump, which names fields by their aliases: a field with an alias was lost, from
    the uid (Rate=0.5 and Rate=0.7: one folder, the first one's result) and from
    config.yaml. It counts, by its name, as in the base dataclass's instance."""

    def config(box: _AliasedBox) -> _HoldsAliasedBox:
        return _HoldsAliasedBox(box=box, infra={"folder": tmp_path})

    half = config(_BiggerAliasedBox(optim=_AliasedWorkers(Rate=0.5, workers=4)))
    assert "rate=0.50" in half.infra.uid(), half.infra.uid()
    assert "workers" not in half.infra.uid()
    seven = config(_BiggerAliasedBox(optim=_AliasedWorkers(Rate=0.7)))
    assert half.infra.uid() != seven.infra.uid()
    base = config(_AliasedBox(optim=_AliasedWorkers(Rate=0.5)))
    assert "optim.rate=0.50" in base.infra.uid(), base.infra.uid()  # (as the base has it)
    assert half.process() == 0.5
    assert seven.process() == 0.7
    assert _plain(half.infra.config(uid=False))["box"]["optim"]["rate"] == 0.5
    (read,) = [c for c in half.infra.iter_cached() if c.box.optim.rate == 0.5]
    assert read.infra.uid() == half.infra.uid()


def test_a_forced_sub_config_held_by_a_dataclass_does_not_slow_every_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model held by a dataclass is frozen with the config, but not chained before it
    (its infra never runs with it): its mode="force" left a force pending for ever, and
    every call of the config went through the scheduler instead of its fast path."""
    from exca.graph import calls

    held = _HeldData(infra={"folder": tmp_path, "mode": "force"})
    config = _HoldsDataBox(box=_DataBox(data=held), infra={"folder": tmp_path})
    assert config.process() == 3
    through: list[int] = []
    task_result = calls.task_result
    monkeypatch.setattr(
        calls, "task_result", lambda *a, **k: through.append(1) or task_result(*a, **k)
    )
    assert [config.process() for _ in range(3)] == [3] * 3
    assert not through  # (read through the fast path)
    assert not (tmp_path / f"{__name__}._HeldData.prepare,1").exists()  # (never run)


class _NanHolder(pydantic.BaseModel):
    model_config = FORBID
    ceiling: float = float("nan")


class _NanDefaults(pydantic.BaseModel):
    model_config = FORBID
    xs: list[float] = [float("nan"), 1.0]
    by_name: dict[str, float] = {"a": float("nan")}
    holder: _NanHolder = _NanHolder()
    top: float = float("nan")
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        CALLS.append("_NanDefaults")
        return 1


def test_nan_in_defaults_gives_the_same_uid_read_back(tmp_path: Path) -> None:
    """A default holding a nan (in a list, a dict, a sub-model) was pruned from the uid
    only while the value held that very nan object (Python compares container items by
    identity first): the config rebuilt from its config.yaml by iter_cached (fresh nans)
    named another folder, was listed read-only and missed its cached result."""
    obj = _NanDefaults(infra={"folder": tmp_path})
    assert obj.infra.uid().rpartition("/")[2].startswith("top=nan-")  # (kept, as before)
    same = _NanDefaults(
        xs=[float("nan"), 1.0], by_name={"a": float("nan")}, holder={"ceiling": float("nan")}
    )
    assert same.infra.uid() == obj.infra.uid()
    assert _NanDefaults(xs=[float("inf"), 1.0]).infra.uid() != obj.infra.uid()
    obj.process()
    listed = list(obj.infra.iter_cached())
    assert [(c.infra.uid(), c.infra.mode) for c in listed] == [(obj.infra.uid(), "cached")]
    before = _calls("_NanDefaults")
    assert listed[0].process() == 1 and _calls("_NanDefaults") == before


class _NoisyFailing(pydantic.BaseModel):
    """Raises while the file ``flag`` exists (its error cached)."""

    model_config = FORBID
    flag: str
    noise: float = 0.0
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def load(self) -> float:
        CALLS.append("_NoisyFailing")
        if Path(self.flag).exists():
            raise ValueError("flagged")
        return self.noise


@pytest.mark.parametrize("mode", ["retry", "force"])
def test_a_call_computing_again_does_not_say_it_reuses_results(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    """A call in mode retry over a cached error (or force) computes again, reusing nothing:
    with a field renamed since (jitter -> noise, another default) it warned "Reusing the
    results in ... computed with jitter=0.5" all the same, and told to bump the version."""
    from exca.storage import saidonce

    flag = tmp_path / "flag"
    flag.touch()
    with pytest.raises(ValueError, match="flagged"):
        _NoisyFailing(flag=str(flag), infra={"folder": tmp_path / "cache"}).load()
    flag.unlink()
    obj = _NoisyFailing(flag=str(flag), infra={"folder": tmp_path / "cache", "mode": mode})
    folder = obj.infra.uid_folder()
    assert folder is not None
    _as_when_noise_was_jitter(folder / "full-uid.yaml")
    infra_base._DEFAULTS_CHECKED.clear()  # (as in a new process)
    saidonce._SAID.clear()
    before = _calls("_NoisyFailing")
    with caplog.at_level(logging.WARNING, logger="exca"):
        assert obj.load() == 0.0
        assert _NoisyFailing(flag=str(flag), infra={"folder": tmp_path / "cache"}).load() == 0.0
    assert _calls("_NoisyFailing") == before + 1
    assert "Reusing the results" not in caplog.text, caplog.text
    assert "noise: 0.0" in (folder / "full-uid.yaml").read_text()  # (its own defaults)


# --- the uid dump of sub-models kept in uids by a few scalar fields (an infra's version) ---
class _Settings(pydantic.BaseModel):
    """Kept in uids by two scalar fields only, as an infra by its version."""

    model_config = FORBID
    _exca_uid_fields: tp.ClassVar[tuple[str, ...]] = ("level", "name")
    level: int = 1
    name: str = "a"
    path: str = "/somewhere"
    flag: bool = False


class _LooseSettings(_Settings):
    model_config = pydantic.ConfigDict(extra="allow")


class _SerializedSettings(_Settings):
    @pydantic.field_serializer("name")
    def _upper(self, value: str) -> str:
        return value.upper()


class _MoreSettings(_Settings):
    _exca_uid_fields: tp.ClassVar[tuple[str, ...]] = ("level", "name", "flag")


class _WithSettings(pydantic.BaseModel):
    model_config = FORBID
    x: int = 0
    settings: _Settings = _Settings()
    loose: _LooseSettings = _LooseSettings()
    serialized: _SerializedSettings = _SerializedSettings()
    infra: TaskInfra = TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        return self.x


def test_sub_models_kept_by_scalar_fields_export_as_pydantic_dumps_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A uid leaves such sub-models out of pydantic's dump and reads their kept fields
    from the instance (quicker): the exports are those of pydantic's dump, for values
    the shortcut takes and for those it leaves to pydantic (another class, extras,
    values of another type, a serializer)."""
    assert identity.class_facts(_WithSettings).uid_dump_plan is not None
    for _ in range(identity._UNPLANNED_EXPORTS):  # (a class's first exports do without it)
        identity.export_with_keys(_WithSettings(), True, True)
    makers: list[tp.Callable[[], _WithSettings]] = [
        lambda: _WithSettings(),
        lambda: _WithSettings(x=3, infra={"version": "2", "folder": "/tmp/a"}),
        lambda: _WithSettings(settings={"level": 2, "path": "/elsewhere", "flag": True}),
        lambda: _WithSettings(settings=_MoreSettings(flag=True)),  # (a subclass: its own dump)
        lambda: _WithSettings(settings=_Settings.model_construct(level="2", name="a")),
        lambda: _WithSettings(loose=_LooseSettings(level=3, other=5)),
        lambda: _WithSettings(serialized={"name": "b"}),
    ]
    exports = [identity.export_with_keys(make(), True, True) for make in makers]
    uids = [make().infra.uid() for make in makers]
    monkeypatch.setattr(identity, "_filled", lambda model, fills: None)  # (pydantic's dump)
    assert [identity.export_with_keys(make(), True, True) for make in makers] == exports
    assert [make().infra.uid() for make in makers] == uids
    assert exports[0] == ({}, True)
    assert exports[1][0] == {"x": 3, "infra": {"version": "2"}}
    assert exports[2][0] == {"settings": {"level": 2}}
    assert exports[3][0]["settings"]["flag"] is True
    assert exports[5][0]["loose"] == {"level": 3, "other": 5}
    assert exports[6][0]["serialized"] == {"name": "B"}


class _RoundedDump(pydantic.BaseModel):
    """A config whose class overrides model_dump (rounding a value)."""

    model_config = pydantic.ConfigDict(extra="forbid")
    x: float = 0.0
    infra: TaskInfra = TaskInfra(version="1")

    def model_dump(self, **kwargs: tp.Any) -> dict[str, tp.Any]:  # type: ignore[override]
        out = super().model_dump(**kwargs)
        if isinstance(out.get("x"), float):
            out["x"] = round(out["x"], 1)
        return out

    @infra.apply
    def process(self) -> float:
        return self.x


def test_a_class_overriding_model_dump_is_exported_through_it() -> None:
    """The uid export calls pydantic's serializer directly for classes that keep
    BaseModel.model_dump (its keyword wrapper costs ~1% of a first uid); a class of its
    own model_dump is exported through it, as before."""
    first, second = _RoundedDump(x=0.12), _RoundedDump(x=0.14)
    assert first.infra.uid() == second.infra.uid()
    assert first.infra.uid().endswith("/x=0.10-0e545be5")
