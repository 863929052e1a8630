"""The uid string format (SPEC appendix): goldens, ordering, truncation, typed hashes."""

import collections
import decimal
import fractions
import hashlib
import os
import pickle
import random
import subprocess
import sys
import typing as tp
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exca import uidformat
from exca.confdict import ConfDict
from exca.uidformat import to_uid


def md5_8(text: str) -> str:
    return hashlib.md5(text.encode("utf8")).hexdigest()[:8]


def display(uid: str) -> str:
    """The readable part of a uid (everything before the final '-<8 hex>')."""
    assert uid[-9] == "-", uid
    return uid[:-9]


# --- checked examples of the SPEC appendix ------------------------------------------------------
SPEC_EXAMPLES = [
    ({"training.optim.lr": 0.01}, "training.optim.lr=0.01-0f8936b4"),
    (
        {"x": 12, "y": {"stuff": 13, "thing": 12, "what": {"hello": 11}}},
        "x=12,y={stuff=13,thing=12,what.hello=11}-3466db1c",
    ),
    (
        {"a": None, "b": True, "c": [1, 2.5], "d": "x y/z"},
        "a=None,b=True,d=x-y-z,c=(1,2.50)-dc1ed06b",
    ),
]


@pytest.mark.parametrize("data,expected", SPEC_EXAMPLES)
def test_spec_examples_v3(data: dict[str, tp.Any], expected: str) -> None:
    assert to_uid(data) == expected
    assert to_uid(data, version=3) == expected
    assert ConfDict(data).to_uid() == expected


def test_spec_example_v2_explicit() -> None:
    assert to_uid({"training.optim.lr": 0.01}, version=2) == "training.optim.lr=0.01-346ce994"
    assert ConfDict({"training.optim.lr": 0.01}).to_uid(version=2) == (
        "training.optim.lr=0.01-346ce994"
    )


def test_spec_example_v2_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONFDICT_UID_VERSION", "2")
    assert to_uid({"training.optim.lr": 0.01}) == "training.optim.lr=0.01-346ce994"
    assert ConfDict({"training.optim.lr": 0.01}).to_uid() == "training.optim.lr=0.01-346ce994"
    # explicit version wins over the environment
    assert to_uid({"training.optim.lr": 0.01}, version=3) == "training.optim.lr=0.01-0f8936b4"
    monkeypatch.setenv("CONFDICT_UID_VERSION", "3")
    assert to_uid({"training.optim.lr": 0.01}) == "training.optim.lr=0.01-0f8936b4"
    # (read at each call: set again, then removed)
    monkeypatch.setenv("CONFDICT_UID_VERSION", "2")
    assert to_uid({"training.optim.lr": 0.01}) == "training.optim.lr=0.01-346ce994"
    monkeypatch.delenv("CONFDICT_UID_VERSION")
    assert to_uid({"training.optim.lr": 0.01}) == "training.optim.lr=0.01-0f8936b4"


def test_uid_version_read_from_a_replaced_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """An os.environ replaced by another mapping (mock.patch.object(os, "environ", ...),
    monkeypatch.setattr) is the one read, as os.environ.get reads it: not the store of the
    os.environ there was at import."""
    monkeypatch.delenv("CONFDICT_UID_VERSION", raising=False)
    monkeypatch.setattr(os, "environ", {**os.environ, "CONFDICT_UID_VERSION": "2"})
    assert uidformat.uid_version() == 2
    assert to_uid({"training.optim.lr": 0.01}) == "training.optim.lr=0.01-346ce994"
    assert ConfDict({"training.optim.lr": 0.01}).to_uid() == "training.optim.lr=0.01-346ce994"
    assert ConfDict.uid_of({"training.optim.lr": 0.01}) == "training.optim.lr=0.01-346ce994"
    monkeypatch.undo()
    monkeypatch.delenv("CONFDICT_UID_VERSION", raising=False)
    assert to_uid({"training.optim.lr": 0.01}) == "training.optim.lr=0.01-0f8936b4"


@pytest.mark.parametrize("env,expected", [("2", "2"), ("3", "3"), ("", "3"), ("7", "3")])
def test_confdict_uid_version_follows_the_environment(env: str, expected: str) -> None:
    """ConfDict.UID_VERSION is the version in force at import (a bad value fails the uid
    calls, not the import)."""
    code = "import exca; print(exca.ConfDict.UID_VERSION)"
    environ = {**os.environ, "CONFDICT_UID_VERSION": env}
    out = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_bad_uid_version(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError):
        to_uid({"a": 1}, version=4)
    monkeypatch.setenv("CONFDICT_UID_VERSION", "7")
    with pytest.raises(ValueError, match="CONFDICT_UID_VERSION"):
        to_uid({"a": 1})


def test_digest_formula_v3() -> None:
    """The digest is md5 of the typed hash string, as described in the appendix."""
    assert to_uid({"a": 1}) == "a=1-" + md5_8("dict:{a=int:1}")
    assert to_uid({"lr": 0.01}) == "lr=0.01-" + md5_8(f"dict:{{lr=float:{hash(0.01)}}}")
    assert to_uid({"s": "x y", "l": [1, "b"]}) == "s=x-y,l=(1,b)-" + md5_8(
        "dict:{s=str:x y,l=seq:(int:1,str:b)}"
    )


def test_v2_format_details() -> None:
    # alphabetical keys, [] lists on the display, untyped hash of the values only
    assert to_uid({"b": 1, "a": [1, 2]}, version=2) == "a=[1,2],b=1-" + md5_8("1,2,1")
    # v2 cleaning removes "_" and parentheses
    assert display(to_uid({"my_key": "(x)"}, version=2)) == "mykey=x"
    # v2 elides a display longer than 82 characters into 35 + [.] + 35
    # at every level: the string first...
    assert display(to_uid({"a": "y" * 100}, version=2)) == "a=" + "y" * 35 + "[.]" + "y" * 35
    # ... then the dict display (with its brackets, which the top level then strips)
    uid = to_uid({"a": "y" * 70, "b": "z" * 70}, version=2)
    assert display(uid) == "a=" + "y" * 32 + "[.]" + "z" * 34
    assert to_uid({}, version=2) == ""


# --- ordering -------------------------------------------------------------------------------
def test_order_short_first_not_alphabetical() -> None:
    # (len(display + key), key): c=1 (2), then a=22 and bb=1 (3, tie broken by key)
    assert display(to_uid({"bb": 1, "a": 22, "c": 1})) == "c=1,a=22,bb=1"
    assert display(to_uid({"aaaa": 1, "z": 1})) == "z=1,aaaa=1"


def test_order_counts_brackets_of_the_final_display() -> None:
    # "x" + "{p=1,q=2}" has 10 characters, "yyyyyyyy" + "1" has 9
    assert display(to_uid({"x": {"p": 1, "q": 2}, "yyyyyyyy": 1})) == "yyyyyyyy=1,x={p=1,q=2}"
    # "a" + "(1)" has 4 characters, like "bbb" + "1": tie broken by the key
    assert display(to_uid({"bbb": 1, "a": [1]})) == "a=(1),bbb=1"


def test_order_uses_raw_key_elan() -> None:
    # "Élan0" counts 5 characters (not 6 bytes, not the 4 of its cleaned form "lan0")
    assert display(to_uid({"abcdef": 1, "Élan0": 1})) == "lan0=1,abcdef=1"
    assert display(to_uid({"Élan0": 1, "abcde": 1})) == "abcde=1,lan0=1"
    # on a tie, "É" sorts after "z"
    assert display(to_uid({"Élan0": 1, "zzzzz": 1})) == "zzzzz=1,lan0=1"
    # the hash keeps the raw key
    assert to_uid({"Élan0": 1}) == "lan0=1-" + md5_8("dict:{Élan0=int:1}")


def test_ordereddict_keeps_order_and_is_not_collapsed() -> None:
    forward = to_uid(collections.OrderedDict([("bbbbb", 1), ("a", 2)]))
    backward = to_uid(collections.OrderedDict([("a", 2), ("bbbbb", 1)]))
    assert display(forward) == "bbbbb=1,a=2"
    assert display(backward) == "a=2,bbbbb=1"
    assert forward != backward
    assert display(to_uid({"a": collections.OrderedDict(b=1)})) == "a={b=1}"
    # ... but the chains inside it are collapsed (the reference's uids)
    nested = collections.OrderedDict([("a", {"b": 2})])
    assert to_uid({"o": nested}) == "o={a.b=2}-69504f6b"
    # v2 sorts every dict, an OrderedDict too
    assert to_uid({"o": collections.OrderedDict([("z", 1), ("a", 2)])}, version=2) == (
        "o={a=2,z=1}-3bfeaa70"
    )
    # a plain dict is collapsed and ignores insertion order
    assert display(to_uid({"a": {"b": 1}})) == "a.b=1"
    assert to_uid({"bbbbb": 1, "a": 2}) == to_uid({"a": 2, "bbbbb": 1})


def test_chains_ending_in_each_kind_of_value() -> None:
    """A chain of single-key dicts collapses whatever value ends it (uids of 2026-12-07)."""
    data = {
        "a": {"b": "x y"},
        "c": {"d": {"e": 7}},
        "f": {"g": 0.25},
        "h": {"i": True},
        "j": {"k": None},
        "l": {"m": [1, "z"]},
        "n": {"o": {"p": 1, "q": 2.0}},
        "r": {"s": collections.OrderedDict(b=1, a=2)},
    }
    expected = "a.b=x-y,c.d.e=7,f.g=0.25,h.i=True,j.k=None,l.m=(1,z),n.o={p=1,q=2},r.s={b=1,a=2}"
    assert to_uid(data) == expected + "-1c926bb4"
    assert ConfDict(data).to_uid() == expected + "-1c926bb4"


# uids of {"a": value} and {"k": {"a": value}} (2026-12-07, before the items memo)
EQUAL_VALUES_OF_SEVERAL_TYPES = [
    (1, "a=1-49f4cfa0", "k.a=1-5cc3c020"),
    (True, "a=True-d5f2536f", "k.a=True-77f7acb5"),
    (1.0, "a=1-49f4cfa0", "k.a=1-5cc3c020"),
    ("1", "a=1-3f88643c", "k.a=1-0a1fbe6d"),
    (0.0, "a=0-feb2985e", "k.a=0-5b44378b"),
    (-0.0, "a=0-feb2985e", "k.a=0-5b44378b"),
    (False, "a=False-c728afb9", "k.a=False-17d5772c"),
    ("True", "a=True-c5532e28", "k.a=True-3289323c"),
    (0.5, "a=0.50-1ca528f7", "k.a=0.50-ff665974"),
]


def test_memoized_items_keep_the_type_of_equal_values() -> None:
    """1, 1.0, True and "1" are equal or alike: a memo of rendered items must not give
    one the other's uid, in whatever order they come (twice: the second from the memo)."""
    for _ in range(2):
        for cases in (EQUAL_VALUES_OF_SEVERAL_TYPES, EQUAL_VALUES_OF_SEVERAL_TYPES[::-1]):
            for value, flat, chained in cases:
                assert to_uid({"a": value}) == flat, value
                assert to_uid({"k": {"a": value}}) == chained, value
                assert ConfDict({"k.a": value}).to_uid() == chained, value


def test_memoized_items_stay_bounded() -> None:
    """The rendered items are memoized for repeated configs, not kept without end."""
    for index in range(uidformat._MEMO_MAX + 10):
        assert to_uid({"key": index, "other": {"x": float(index) + 0.5}}).startswith(
            f"key={index},other.x="
        )
    assert len(uidformat._LEAF_ITEMS) <= uidformat._MEMO_MAX
    assert to_uid({"key": 3, "other": {"x": 3.5}}) == to_uid({"other.x": 3.5, "key": 3})


class _OtherKey(str):
    """A key equal to "a" written otherwise in a uid."""

    def __str__(self) -> str:
        return "other"


# uids of {"a": v, "b": 2}, {"x": {"a": v}, "y": {"b": 2}} and a ConfDict of k.x.a, k.y.b
# (2026-12-07, before whole dicts were memoized)
EQUAL_VALUES_IN_DICTS = [
    (1, "a=1,b=2-2a6b467f", "x.a=1,y.b=2-d14dc2fa", "k={x.a=1,y.b=2}-c02a6b9d"),
    (True, "b=2,a=True-66006cd9", "y.b=2,x.a=True-ee674e3f", "k={y.b=2,x.a=True}-55ca6cc2"),
    (1.0, "a=1,b=2-2a6b467f", "x.a=1,y.b=2-d14dc2fa", "k={x.a=1,y.b=2}-c02a6b9d"),
    (np.int64(1), "a=1,b=2-2a6b467f", "x.a=1,y.b=2-d14dc2fa", "k={x.a=1,y.b=2}-c02a6b9d"),
    ("1", "a=1,b=2-ba9cf760", "x.a=1,y.b=2-feabce0b", "k={x.a=1,y.b=2}-1b979002"),
    (0.5, "b=2,a=0.50-31c4e2c8", "y.b=2,x.a=0.50-2f43cd5d", "k={y.b=2,x.a=0.50}-0c9124ed"),
    (None, "b=2,a=None-ffab836b", "y.b=2,x.a=None-f52a3d19", "k={y.b=2,x.a=None}-ed2aae4a"),
]


def test_memoized_dicts_keep_the_types_of_equal_keys_and_values() -> None:
    """Whole dicts of leaves (and of single-key dicts of leaves) are memoized by their
    content: equal content of other types (True == 1, a str subclass key == "a") keeps
    its own uid, in whatever order they come (twice: the second from the memo)."""
    for _ in range(2):
        for cases in (EQUAL_VALUES_IN_DICTS, EQUAL_VALUES_IN_DICTS[::-1]):
            for value, flat, chained, nested in cases:
                assert to_uid({"a": value, "b": 2}) == flat, value
                assert to_uid({"x": {"a": value}, "y": {"b": 2}}) == chained, value
                assert ConfDict({"k.x.a": value, "k.y.b": 2}).to_uid() == nested, value
        for keys, expected in [
            (("a", "x"), ("a=1,b=2-2a6b467f", "x.a=1,y.b=2-d14dc2fa")),
            ((_OtherKey("a"), "x"), ("b=2,other=1-e9cefb2b", "y.b=2,x.other=1-f73def2a")),
            (("a", _OtherKey("x")), ("a=1,b=2-2a6b467f", "y.b=2,other.a=1-bb38deec")),
        ]:
            assert to_uid({keys[0]: 1, "b": 2}) == expected[0]
            assert to_uid({keys[1]: {keys[0]: 1}, "y": {"b": 2}}) == expected[1]


def test_memoized_dicts_stay_bounded() -> None:
    """Whole dicts are memoized for repeated configs, not kept without end."""
    for index in range(uidformat._DICT_MEMO_MAX + 10):
        assert to_uid({"a": {"key": index, "other": 0.5}}).startswith(f"a={{key={index},")
    assert len(uidformat._DICT_RENDERS) <= uidformat._DICT_MEMO_MAX
    assert to_uid({"a": {"key": 3, "other": 0.5}}) == to_uid({"a": {"other": 0.5, "key": 3}})


def test_memoized_dicts_of_an_empty_and_a_two_key_dict_are_not_chains() -> None:
    """Sub-dicts holding as many keys in all as there are sub-dicts (one empty, one of
    two keys) are not a dict of single-key chains (twice: the second from the memo)."""
    for _ in range(2):
        assert to_uid({"a": {}, "b": {"x": 1, "y": 2}}) == "a={},b={x=1,y=2}-116f4978"
        assert to_uid({"a": {"x": 1, "y": 2}, "b": {}}) == "b={},a={x=1,y=2}-e6e97ff0"
        assert to_uid({"a": {}, "b": {"q": 1}}) == "a={},b.q=1-10927f4d"
        assert ConfDict({"a": {"p": 1}, "b": {"q": "z"}}).to_uid() == "a.p=1,b.q=z-1f7fc642"


def test_collapse() -> None:
    assert uidformat.collapse({"a": {"b": {"c": 1}}, "d": [{"e": {"f": 2}}]}) == {
        "a.b.c": 1,
        "d": [{"e.f": 2}],
    }
    assert uidformat.collapse({"a": {"b": 1, "c": 2}}) == {"a": {"b": 1, "c": 2}}


# --- truncation -----------------------------------------------------------------------------
def test_truncation_top_level() -> None:
    uid = to_uid({"a": "x" * 300})
    # the string is cut first (128 + "...172"), then the whole display (136 chars) again
    assert display(uid) == "a=" + "x" * 126 + "...8"
    assert uid.endswith("-" + md5_8("dict:{a=str:" + "x" * 300 + "}"))


def test_truncation_nested_levels() -> None:
    uid = to_uid({"a": {"b": "x" * 200, "c": 1}})
    s_b = "x" * 128 + "...72"
    inner = "c=1,b=" + s_b
    assert len(inner) == 139
    inner = inner[:128] + "...11"
    outer = "a={" + inner + "}"
    assert len(outer) == 137
    assert display(uid) == outer[:128] + "...9"


def test_truncation_of_lists() -> None:
    uid = to_uid({"l": list(range(100))})
    full = ",".join(str(i) for i in range(100))
    inner = full[:128] + f"...{len(full) - 128}"
    outer = "l=(" + inner + ")"
    assert display(uid) == outer[:128] + f"...{len(outer) - 128}"


def test_short_strings_are_not_truncated() -> None:
    assert display(to_uid({"a": "x" * 126})) == "a=" + "x" * 126  # exactly 128


# --- typed hash -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "first,second",
    [
        ({"a": "1"}, {"a": 1}),
        ({"a": "None"}, {"a": None}),
        ({"a": "True"}, {"a": True}),
        ({"a": "(1,2)"}, {"a": [1, 2]}),
        ({"a": 0.1}, {"a": decimal.Decimal("0.1")}),
        ({"a": 0.1}, {"a": fractions.Fraction(1, 10)}),
        ({"a": decimal.Decimal("0.1")}, {"a": decimal.Decimal("0.1000001")}),
        ({"a": 0.1}, {"a": 0.1000001}),
        ({"a b": 1}, {"a-b": 1}),  # same cleaned key
        ({"a": "x" * 200 + "a"}, {"a": "x" * 200 + "b"}),  # same 128-char prefix and length
        ({"a": "x/y"}, {"a": "x y"}),
    ],
)
def test_typed_hash_distinguishes_colliding_displays(
    first: dict[str, tp.Any], second: dict[str, tp.Any]
) -> None:
    uid1, uid2 = to_uid(first), to_uid(second)
    assert display(uid1) == display(uid2)
    assert uid1 != uid2


def test_decimal_and_fraction_are_floats() -> None:
    # same typestr and numeric hash for equal rationals (documented), displayed like floats
    assert to_uid({"a": decimal.Decimal("0.25")}) == to_uid({"a": fractions.Fraction(1, 4)})
    assert to_uid({"a": fractions.Fraction(1, 4)}) == to_uid({"a": 0.25})  # 1/4 is exact
    assert display(to_uid({"a": decimal.Decimal("0.1")})) == "a=0.10"


def test_float_display() -> None:
    assert display(to_uid({"a": 0.01})) == "a=0.01"
    assert display(to_uid({"a": 1e-5})) == "a=1.00e-05"
    assert display(to_uid({"a": 12345.6})) == "a=1.23e04"  # "+" is removed
    assert display(to_uid({"a": -0.5})) == "a=-0.50"


def test_integral_floats_become_ints() -> None:
    assert to_uid({"a": 2.0}) == to_uid({"a": 2})
    assert to_uid({"a": np.float32(3.0)}) == to_uid({"a": 3})
    assert to_uid({"a": np.float64(0.5)}) == to_uid({"a": 0.5})
    assert to_uid({"a": np.int64(4)}) == to_uid({"a": 4})
    assert to_uid({"a": [1.0, 2.0]}) == to_uid({"a": [1, 2]})


def test_path_is_str() -> None:
    assert to_uid({"p": Path("/a/b c")}) == to_uid({"p": "/a/b c"})
    assert display(to_uid({"p": Path("/a/b c")})) == "p=-a-b-c"


def test_numpy_array_display() -> None:
    array = np.arange(6, dtype=np.float64).reshape(2, 3)
    h8 = hashlib.md5(array.tobytes()).hexdigest()[:8]
    uid = to_uid({"a": array})
    assert display(uid) == f"a=data-2,3-{h8}"
    assert uid == f"a=data-2,3-{h8}-" + md5_8(f"dict:{{a=array:2,3-{h8}}}")
    # a non-contiguous view hashes its C-contiguous content
    transposed = array.T
    h8t = hashlib.md5(np.ascontiguousarray(transposed).tobytes()).hexdigest()[:8]
    assert display(to_uid({"a": transposed})) == f"a=data-3,2-{h8t}"
    assert to_uid({"a": transposed}) == to_uid({"a": transposed.copy()})
    assert to_uid({"a": array}) != to_uid({"a": array + 1})


def test_sets_sorted_by_display() -> None:
    assert display(to_uid({"s": {3, 1, 2}})) == "s=(1,2,3)"
    assert display(to_uid({"s": {10, 9}})) == "s=(10,9)"  # display order, not numeric
    assert to_uid({"s": {"b", "a", "c"}}) == to_uid({"s": {"c", "a", "b"}})
    assert display(to_uid({"s": frozenset({"b", "a"})})) == "s=(a,b)"


def test_tuple_and_list_same() -> None:
    assert to_uid({"a": (1, 2)}) == to_uid({"a": [1, 2]})


class Gadget:
    def __str__(self) -> str:
        return "my thing"


def test_unsupported_type_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONFDICT_UID_TYPE_BYPASS", raising=False)
    with pytest.raises(TypeError, match="Gadget"):
        to_uid({"a": Gadget()})
    with pytest.raises(TypeError, match="Gadget"):
        to_uid({"a": Gadget()}, version=2)


def test_object_arrays_are_refused() -> None:
    """Their bytes are object addresses: the uid would change with every process."""
    splits = np.array(["train", "valid", None], dtype=object)
    for version in (2, 3):
        with pytest.raises(TypeError, match="dtype object"):
            to_uid({"splits": splits}, version=version)
    assert to_uid({"splits": np.array(["train", "valid"])})  # fixed-size strings: fine


def test_unsupported_type_bypass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONFDICT_UID_TYPE_BYPASS", "1")
    obj = Gadget()
    uid = to_uid({"a": obj})
    assert display(uid) == "a=my-thing"
    assert uid == "a=my-thing-" + md5_8(f"dict:{{a=unknown:{hash(obj)}}}")
    assert display(to_uid({"a": obj}, version=2)) == "a=my-thing"


def test_empty() -> None:
    assert to_uid({}) == ""
    assert ConfDict().to_uid() == ""
    assert to_uid({}, version=2) == ""


# --- properties -----------------------------------------------------------------------------
keys = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="."), min_size=1, max_size=8
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False),  # hash(nan) depends on the object identity
    st.text(max_size=40),
    st.frozensets(st.text(max_size=5), max_size=4),
    st.sets(st.integers(-100, 100), max_size=4),
)
configs = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=20,
)
top_configs = st.dictionaries(keys, configs, max_size=6)


def _check_glob_safe(data: dict[str, tp.Any]) -> None:
    uid = to_uid(data)
    assert not set(uid) & set("[]*?/\\ \n\t"), uid
    assert set(uid) <= set(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789{}-=,_.()"
    )


def test_long_uid_truncation_is_glob_safe() -> None:
    uid = to_uid({"a": "[x]*?" * 100, "b": {"c": list(range(200))}})
    assert "..." in uid
    assert not set(uid) & set("[]*?")


def _reorder(value: tp.Any, rng: random.Random) -> tp.Any:
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _reorder(v, rng) for k, v in items}
    if isinstance(value, list):
        return [_reorder(v, rng) for v in value]
    return value


def _check_stable_across_insertion_orders(data: dict[str, tp.Any], rng: random.Random) -> None:
    assert to_uid(_reorder(data, rng)) == to_uid(data)
    assert to_uid(_reorder(data, rng), version=2) == to_uid(data, version=2)


def _dotted(value: dict[str, tp.Any], prefix: str = "") -> dict[str, tp.Any]:
    out: dict[str, tp.Any] = {}
    for key, sub in value.items():
        full = f"{prefix}.{key}" if prefix else key
        if isinstance(sub, dict) and sub:
            out.update(_dotted(sub, full))
        else:
            out[full] = sub
    return out


def _check_dotted_and_nested_input_give_the_same_uid(data: dict[str, tp.Any]) -> None:
    dotted = _dotted(data)
    expected = to_uid(data)
    assert ConfDict(dotted).to_uid() == expected
    assert ConfDict(data).to_uid() == expected
    assert ConfDict(dotted).to_uid(version=2) == to_uid(data, version=2)


# (one test for the three properties of a drawn config: drawing the nested configs is ~90%
# of the CPU, and three tests drew 200 each; each property still sees 200 configs a run)
@settings(max_examples=200, deadline=None)
@given(top_configs, st.randoms(use_true_random=False))
def test_uids_are_glob_safe_and_stable_across_insertion_orders_and_dotted_keys(
    data: dict[str, tp.Any], rng: random.Random
) -> None:
    _check_glob_safe(data)
    _check_stable_across_insertion_orders(data, rng)
    _check_dotted_and_nested_input_give_the_same_uid(data)


_CHILD = """
import pickle, sys
from exca.uidformat import to_uid
batch = pickle.loads(sys.stdin.buffer.read())
sys.stdout.write("\\n".join(f"{to_uid(d)} {to_uid(d, version=2)}" for d in batch))
"""


@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(top_configs, min_size=30, max_size=30))
def test_uid_stable_across_processes(batch: list[dict[str, tp.Any]]) -> None:
    batch.append({"s": {"alpha", "beta", "gamma", "delta"}, "f": 0.3, "d": {"x": -1.5e-7}})
    expected = "\n".join(f"{to_uid(d)} {to_uid(d, version=2)}" for d in batch)
    for seed in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        env.pop("CONFDICT_UID_VERSION", None)
        out = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=pickle.dumps(batch),
            capture_output=True,
            env=env,
            check=True,
        )
        assert out.stdout.decode("utf8") == expected


dotted_keys = st.one_of(keys, st.sampled_from(["a.b", "a", "b.0", "=replace=", "x.y.z"]))
mixed_configs = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(dotted_keys, children, max_size=3)
        | st.builds(collections.OrderedDict, st.dictionaries(dotted_keys, children, max_size=3))
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(dotted_keys, mixed_configs, max_size=5))
def test_uid_of_is_the_uid_of_the_confdict(data: dict[str, tp.Any]) -> None:
    """The shortcut used for model uids (no ConfDict built when no key would be split
    or merged) gives what building the ConfDict gives."""
    try:
        expected = ConfDict(data).to_uid()
    except (TypeError, ValueError, KeyError, IndexError) as error:  # not a valid ConfDict
        with pytest.raises(type(error)):
            ConfDict.uid_of(data)
        return
    assert ConfDict.uid_of(data) == expected


def test_memoized_leaf_renders_are_kept_apart_by_type() -> None:
    """Leaf renderings are memoized per type: equal values of other types keep their own
    rendering, in any order of first use."""
    for _ in range(2):  # second round: every rendering comes from the memo
        assert to_uid({"a": True}) != to_uid({"a": 1})
        assert to_uid({"a": 1.0}) == to_uid({"a": 1})  # integral floats are ints (spec)
        assert to_uid({"a": 0.0}) == to_uid({"a": -0.0}) == to_uid({"a": 0})
        assert to_uid({"a": "1"}) != to_uid({"a": 1})
        assert to_uid({"a": 0.5}).startswith("a=0.50-")
        assert to_uid({"a": float("nan")}).startswith("a=nan-")


def test_0d_arrays_and_huge_numbers_as_the_appendix_says() -> None:
    """A 0-d array's shape is that of its C-contiguous array, (1,); the display of an int
    is cut at 128 characters like any value (the hash keeps every digit)."""
    np = pytest.importorskip("numpy")
    assert to_uid({"a": np.array(3.0)}) == "a=data-1-c5ff9de9-9b7309c6"
    uid = to_uid({"i": 10**130})
    assert uid == "i=1" + "0" * 125 + "...6-97f16d64"  # (cut as a value, then in the dict)
    assert to_uid({"f": 1e200}) == to_uid({"f": int(1e200)})  # an integral float is an int


def test_text_that_is_not_unicode_is_a_clear_error() -> None:
    """A file name decoded with surrogates (os.listdir) in a config: a raw
    UnicodeEncodeError naming neither the key nor the value."""
    with pytest.raises(ValueError, match=r"'a\.b\.1' \('y\\udcff'\) is not valid unicode"):
        ConfDict({"a": {"b": ["x", "y\udcff"]}}).to_uid()
    with pytest.raises(ValueError, match=r"'k' .* is not valid unicode"):
        ConfDict({"k": "\udcff"}).to_uid(version=2)


def test_a_key_given_twice_keeps_the_last_as_a_confdict_does() -> None:
    """(seen last session: `to_uid({"a.b": 1, "a": {"b": 2}})` named both values,
    `a.b=1,a.b=2`, also the uid of `{"a.b": 2, "a": {"b": 1}}`, where a ConfDict and the
    v2 format keep the last) Its uid is its ConfDict's; refused where no ConfDict can be
    made; other dotted keys keep the uids they had."""
    first, second = {"a.b": 1, "a": {"b": 2}}, {"a.b": 2, "a": {"b": 1}}
    assert to_uid(first) == ConfDict(first).to_uid() == "a.b=2-be5fe505"
    assert to_uid(second) == ConfDict(second).to_uid() == "a.b=1-c628d77f"
    nested = {"x": 3, "k": {"a": {"b": 2}, "a.b": 1}}
    assert to_uid(nested) == ConfDict(nested).to_uid()
    assert to_uid(first, version=2) == ConfDict(first).to_uid(version=2)
    with pytest.raises(ValueError, match=r"The key 'a\.b' is given twice .*give it once"):
        to_uid([first])  # (a list: no ConfDict)
    # (unchanged: no key given twice; an OrderedDict keeps its order, its values apart)
    assert to_uid({"a.b": 1, "a": {"c": 2}}) == "a.b=1,a.c=2-36a1beb6"
    assert to_uid({"a": 1, "a.b": 2}) == "a=1,a.b=2-9e3690dd"
    ordered = {"o": collections.OrderedDict([("a.b", 1), ("a", {"b": 2})])}
    assert to_uid(ordered) == "o={a.b=1,a.b=2}-254b9734"


def test_dict_keys_of_several_types_written_alike_are_refused() -> None:
    """{1: "x", "1": "y"} and {1: "y", "1": "x"} were both 'd={1=x,1=y}-89037336' (keys
    are written by their text, in the display and the hash): refused, naming both keys.
    Keys of several types written differently keep their uids."""
    for data in ({"d": {1: "x", "1": "y"}}, {"d": {1: "y", "1": "x"}}, {None: 1, "None": 2}):
        with pytest.raises(ValueError, match=r"The dict keys .* are written alike"):
            to_uid(data)
    assert to_uid({"d": {1: "x", "2": "y"}}) == "d={1=x,2=y}-12e76edf"


def test_memoized_uids_follow_a_confdict_changed_after_its_uid() -> None:
    """A uid asked again after a nested value changed is the new content's, and the
    memoized digests stay bounded."""
    flat = {f"block{i // 10}.layer{i % 10}.param": i * 0.5 for i in range(40)}
    config = ConfDict(flat)
    first = config.to_uid()
    assert config.to_uid() == first
    config["block2.layer3.param"] = "changed"
    changed = config.to_uid()
    assert changed != first
    assert changed == ConfDict({**flat, "block2.layer3.param": "changed"}).to_uid()
    config["block2"]["layer3"]["param"] = 11.5  # (through the nested ConfDict)
    assert config.to_uid() == first
    for index in range(uidformat._DIGEST_MEMO_MAX + 10):
        assert to_uid({"a": index, "b": 0.5}).startswith(f"a={index},")
    assert len(uidformat._DIGESTS) <= uidformat._DIGEST_MEMO_MAX
