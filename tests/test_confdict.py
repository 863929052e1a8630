"""ConfDict (SPEC §4): dotted access, merge semantics, flat/copy, yaml and args."""

import collections
import dataclasses
import decimal
import io
import subprocess
import sys
import typing as tp
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from exca.confdict import ConfDict


# --- construction and dotted access -----------------------------------------------------------
def test_init_dotted_nested_and_kwargs_equal() -> None:
    nested = ConfDict({"a": {"b": {"c": 1}}, "d": 2})
    dotted = ConfDict({"a.b.c": 1, "d": 2})
    kwargs = ConfDict(d=2, **{"a.b.c": 1})
    mixed = ConfDict({"a.b": {"c": 1}}, d=2)
    assert nested == dotted == kwargs == mixed == {"a": {"b": {"c": 1}}, "d": 2}
    assert isinstance(nested["a"], ConfDict)
    assert isinstance(nested["a.b"], ConfDict)
    assert nested.to_uid() == dotted.to_uid() == mixed.to_uid()
    assert nested.to_uid(version=2) == dotted.to_uid(version=2)


def test_dotted_get_set_in() -> None:
    cd = ConfDict()
    cd["a.b.c"] = 1
    cd["a.b.d"] = 2
    assert cd == {"a": {"b": {"c": 1, "d": 2}}}
    assert cd["a.b.c"] == 1
    assert cd["a"]["b"]["d"] == 2
    assert "a.b.c" in cd
    assert "a.b" in cd
    assert "a.x" not in cd
    assert "a.b.c.d" not in cd  # cannot go below a leaf
    assert "x" not in cd
    assert cd.get("a.b.c") == 1
    assert cd.get("a.x") is None
    assert cd.get("a.x.y", 12) == 12
    with pytest.raises(KeyError):
        cd["a.x"]
    # a leaf replaced by a dotted set below it
    cd["a.b.c.e"] = 3
    assert cd["a.b.c"] == {"e": 3}


def _shape(value: tp.Any) -> tp.Any:
    """A value with the type of each container and the order of each dict's keys."""
    if isinstance(value, dict):
        return (type(value).__name__, [(k, _shape(v)) for k, v in value.items()])
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_shape(v) for v in value])
    return (type(value).__name__, value)


@pytest.mark.parametrize(
    "flat,nested",
    [  # dotted keys with leaf values, over every kind of parent (the constructor's fast path)
        (
            {"b.x": 1, "a.y": "s", "b.z": 0.5, "b.x.w": None},
            {"b": {"x": {"w": None}, "z": 0.5}, "a": {"y": "s"}},
        ),
        ({"a": 1, "a.b": True}, {"a": {"b": True}}),  # a dotted key over a leaf replaces it
        ({"a.b": 1, "a": {"c": 2}, "a.d": 3}, {"a": {"b": 1, "c": 2, "d": 3}}),
        ({"a": [1, {"x": 1}], "a.0": 5, "a.1.x": 2, "a.1.y": 3}, {"a": [5, {"x": 2, "y": 3}]}),
        ({"t": (1, {"x": 1}), "t.0": 5, "t.1.x": 2}, {"t": (5, {"x": 2})}),
        ({"o": collections.OrderedDict(x=1), "o.y": 2}, {"o": collections.OrderedDict(x=1, y=2)}),
        (
            {"a..b": 1, ".a": 2, "c.": 3},  # empty parts: keys ""
            {"a": {"": {"b": 1}}, "": {"a": 2}, "c": {"": 3}},
        ),
        (
            {"m.a": 1, "m.=replace=": True, "m.b": 2, "n.a": 1},
            {"m": {"a": 1, "b": 2}, "n": {"a": 1}},
        ),
        ({"a.b": 1, "a.c": 2, "a.b.d": None}, {"a": {"b": {"d": None}, "c": 2}}),
    ],
)
def test_dotted_leaves_build_as_nested(
    flat: dict[tp.Any, tp.Any], nested: dict[str, tp.Any]
) -> None:
    cd = ConfDict(flat)
    expected = ConfDict(nested)
    assert _shape(cd) == _shape(expected)
    assert cd.to_uid() == expected.to_uid()
    assert cd.to_yaml() == expected.to_yaml()


def test_dotted_leaves_bad_keys_fail_as_before() -> None:
    with pytest.raises(TypeError, match=r"keys must be strings, got 2 \(int\)"):
        ConfDict({"a.b": 1, 2: 3})
    with pytest.raises(IndexError, match=r"Index 3 of key 'a\.3' is out of range"):
        ConfDict({"a": [1], "a.3": 1})
    with pytest.raises(TypeError, match=r"Cannot index a list with 'x' in key 'a\.x'"):
        ConfDict({"a": [1], "a.x": 1})
    with pytest.raises(TypeError, match=r"Cannot index a list with 'x' in key 'a\.x\.y'"):
        ConfDict({"a": [1], "a.x.y": 1})


def test_dotted_leaf_writes_into_every_kind_of_parent() -> None:
    cd = ConfDict({"a": 1, "l": [1, {"x": 1}], "t": (1, {"x": 1}), "n": {"k": 0}})
    cd["o"] = collections.OrderedDict(x=1)
    cd["a.b"] = True  # over a leaf: replaces it
    cd["l.0"] = 5
    cd["l.1.y"] = "s"
    cd["t.1.x"] = 2
    cd["o.y"] = 2
    cd["n.k"] = None
    cd["n.m.p"] = 0.5
    cd["..z"] = 1  # empty parts: keys ""
    expected = {
        "a": {"b": True},
        "l": [5, {"x": 1, "y": "s"}],
        "t": (1, {"x": 2}),
        "n": {"k": None, "m": {"p": 0.5}},
        "o": collections.OrderedDict(x=1, y=2),
        "": {"": {"z": 1}},
    }
    assert _shape(cd) == _shape(ConfDict(expected))
    with pytest.raises(TypeError, match=r"keys must be strings, got 2 \(int\)"):
        cd[2] = 1  # type: ignore[index]
    with pytest.raises(IndexError, match=r"Index 5 of key 'l\.5' is out of range"):
        cd["l.5"] = 1
    with pytest.raises(TypeError, match=r"Cannot index a list with 'x' in key 'l\.x'"):
        cd["l.x"] = 1
    assert _shape(cd) == _shape(ConfDict(expected))  # (nothing changed by the failures)


def test_del_and_pop_prune_empty_parents() -> None:
    cd = ConfDict({"a.b.c": 1, "a.b.d": 2, "x": 0})
    del cd["a.b.c"]
    assert cd == {"a": {"b": {"d": 2}}, "x": 0}
    assert cd.pop("a.b.d") == 2
    assert cd == {"x": 0}  # a.b and then a became empty: removed
    cd = ConfDict({"a.b.c": 1, "a.e": 5})
    assert cd.pop("a.b.c") == 1
    assert cd == {"a": {"e": 5}}  # only the empty level goes
    with pytest.raises(KeyError):
        cd.pop("a.nope")
    with pytest.raises(KeyError):
        del cd["nope"]
    assert cd.pop("a.nope", "default") == "default"
    assert cd.pop("a.e.f", None) is None  # below a leaf
    assert cd.pop("a") == {"e": 5}
    assert cd == {}


def test_list_indices() -> None:
    cd = ConfDict({"a": [1, {"b": 2}]})
    assert cd["a.0"] == 1
    assert cd["a.1.b"] == 2
    assert isinstance(cd["a.1"], ConfDict)  # lists of dicts hold ConfDicts
    assert "a.1.b" in cd
    assert "a.5" not in cd
    assert cd.get("a.5", "d") == "d"
    with pytest.raises(IndexError):
        cd["a.5"]
    cd["a.0"] = 13
    cd["a.1.b"] = 12
    cd["a.1.c"] = 14
    assert cd == {"a": [13, {"b": 12, "c": 14}]}
    assert cd.pop("a.1.c") == 14
    assert cd.pop("a.0") == 13
    assert cd == {"a": [{"b": 12}]}


def test_index_past_the_end_of_a_list_names_the_key() -> None:
    """cd["a.2"] = 1 on a 2-item list raised "list index out of range", naming nothing."""
    cd = ConfDict({"a": [1, {"b": 2}], "x": {"l": []}})
    message = (
        r"Index 2 of key 'a.2' is out of range: 'a' is a list of 2 item\(s\) "
        r"\(indices 0 to 1\); to change its length, set the whole list \('a': \[...\]\)"
    )
    with pytest.raises(IndexError, match=message):
        cd["a.2"] = 1
    with pytest.raises(IndexError, match=r"Index 3 of key 'a.3.b' is out of range: 'a' is a"):
        cd["a.3.b"] = 1
    with pytest.raises(IndexError, match=r"'x.l' is a list of 0 item\(s\) \(no index\)"):
        cd.update({"x.l.0": 1})
    with pytest.raises(IndexError, match=r"Index 5 of key 'a\.5' is out of range"):
        cd["a.5"]
    assert cd == {"a": [1, {"b": 2}], "x": {"l": []}}  # (nothing written)


def test_non_digit_key_on_a_list() -> None:
    cd = ConfDict({"a": [1, 2]})
    with pytest.raises(TypeError, match="list"):
        cd["a.x"]
    with pytest.raises(TypeError, match="list"):
        cd["a.x"] = 3
    assert "a.x" not in cd
    # pop and del read the key as cd[key] does: a negative index is not a number either
    # (it removed the last element, which "a.-1" in cd denies exists)
    for key in ("a.x", "a.-1"):
        with pytest.raises(TypeError, match="list"):
            cd.pop(key)
        with pytest.raises(TypeError, match="list"):
            del cd[key]
        assert cd.pop(key, "default") == "default"  # (as get does)
    assert cd == {"a": [1, 2]}


def test_non_str_keys() -> None:
    cd = ConfDict({"a": 1})
    with pytest.raises(TypeError):
        cd[1] = 2  # type: ignore[index]
    with pytest.raises(TypeError):
        ConfDict({1: 2})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        cd[1]  # type: ignore[index]
    with pytest.raises(TypeError):
        cd.pop(1)  # type: ignore[arg-type]
    assert 1 not in cd
    assert cd == {"a": 1}


# --- merge semantics --------------------------------------------------------------------------
def test_setting_a_dict_merges() -> None:
    cd = ConfDict({"a": {"b": 1, "c": 2}})
    cd["a"] = {"b": 3, "d.e": 4}
    assert cd == {"a": {"b": 3, "c": 2, "d": {"e": 4}}}
    cd.update({"a": {"c": 5}})
    assert cd == {"a": {"b": 3, "c": 5, "d": {"e": 4}}}
    cd.update(a={"b": 6})
    assert cd["a.b"] == 6 and cd["a.c"] == 5


def test_override_replaces() -> None:
    assert ConfDict.OVERRIDE == "=replace="
    cd = ConfDict({"a": {"b": 1, "c": 2}, "x": 1})
    cd["a"] = {"b": 4, ConfDict.OVERRIDE: True}
    assert cd == {"a": {"b": 4}, "x": 1}
    cd.update({"a": {"=replace=": True, "z": 1}})
    assert cd == {"a": {"z": 1}, "x": 1}
    cd["a"] = {"=replace=": False, "y": 2}  # False: a plain merge, key dropped
    assert cd == {"a": {"z": 1, "y": 2}, "x": 1}


def test_override_at_top_level() -> None:
    cd = ConfDict({"a": {"b": 1}, "x": 1})
    cd.update({ConfDict.OVERRIDE: True, "y": 2})
    assert cd == {"y": 2}
    cd.update({"=replace=": True})
    assert cd == {}


def test_non_dicts_replace() -> None:
    cd = ConfDict({"a": {"b": 1}})
    cd["a"] = 12
    assert cd == {"a": 12}
    cd["a"] = {"b": 2}  # a dict on a non-dict: replaces too
    assert cd == {"a": {"b": 2}}


def test_update_on_none() -> None:
    cd = ConfDict({"a": {"b": None}})
    cd.update({"a": {"b": {"c": 12}}})
    assert cd == {"a": {"b": {"c": 12}}}
    cd["a.b"] = None
    assert cd == {"a": {"b": None}}
    cd["a.b.d"] = 1
    assert cd == {"a": {"b": {"d": 1}}}


def test_update_on_lists() -> None:
    cd = ConfDict({"a": [1, 2], "b": {"c": 1}})
    cd.update({"a": [3]})  # lists are replaced, not merged
    assert cd == {"a": [3], "b": {"c": 1}}
    cd["b"] = [{"d": 1}]
    assert cd == {"a": [3], "b": [{"d": 1}]}
    assert isinstance(cd["b"][0], ConfDict)
    cd.update({"b.0.e": 2})
    assert cd == {"a": [3], "b": [{"d": 1, "e": 2}]}


def test_ordereddict_values_replace_and_keep_their_type() -> None:
    cd = ConfDict({"a": {"b": 1}})
    cd["a"] = collections.OrderedDict([("d", 1), ("c", 2)])
    assert type(cd["a"]) is collections.OrderedDict
    assert cd == {"a": {"d": 1, "c": 2}}
    cd["a"] = collections.OrderedDict(e=3)
    assert cd == {"a": {"e": 3}}  # replaced, not merged


# --- flat / copy ------------------------------------------------------------------------------
@dataclasses.dataclass
class Point:
    x: int = 1
    y: tuple[int, int] = (2, 3)


def test_flat_keeps_an_empty_key() -> None:
    cfg = ConfDict({"": 1, "a": {"": 2, "b": 3}})
    assert cfg.flat() == {"": 1, "a.": 2, "a.b": 3}
    assert ConfDict(cfg.flat()) == cfg


def test_flat() -> None:
    cd = ConfDict(
        {"a": {"b": 1, "c": (1, 2)}, "p": Path("/x/y"), "d": Point(), "e": {}, "l": [1, {"z": 1}]}
    )
    flat = cd.flat()
    assert flat == {
        "a.b": 1,
        "a.c": (1, 2),
        "p": Path("/x/y"),
        "d.x": 1,
        "d.y": (2, 3),
        "e": {},
        "l": [1, {"z": 1}],
    }
    assert isinstance(flat["a.c"], tuple)
    assert isinstance(flat["p"], Path)
    assert ConfDict(flat) == ConfDict({k: v for k, v in cd.items() if k != "d"}) | {
        "d": {"x": 1, "y": (2, 3)}
    }
    assert ConfDict().flat() == {}


def test_copy_is_deep() -> None:
    cd = ConfDict({"a": {"b": [1, {"c": 2}]}, "o": collections.OrderedDict(x=1)})
    copied = cd.copy()
    assert isinstance(copied, ConfDict)
    assert copied == cd
    copied["a.b.1.c"] = 3
    copied["a.b"].append(4)
    copied["o"]["y"] = 2
    assert cd == {"a": {"b": [1, {"c": 2}]}, "o": {"x": 1}}
    assert type(copied["o"]) is collections.OrderedDict


# --- yaml ----------------------------------------------------------------------------------
def test_to_yaml_collapses_chains() -> None:
    cd = ConfDict({"data": {"default": {"stuff": {"duration": 1.0}}}, "b": {"c": 12, "d": 13}})
    assert cd.to_yaml() == "data.default.stuff.duration: 1.0\nb:\n  c: 12\n  d: 13\n"


@pytest.mark.parametrize(
    "data",
    [
        {"a": {"b": {"c": 1}}, "d": [1, {"e": 2.5}], "f": None},
        {"a.b": 1, "a": {"c": 2}},  # dotted keys merge: the ConfDict's text
        {"x": collections.OrderedDict(b=1, a=2), "y": (1, 2), "z": "text: with colon"},
        {"=replace=": True, "k": 1},
    ],
)
def test_yaml_of_is_the_text_of_the_confdict(data: dict[str, tp.Any]) -> None:
    """ConfDict.yaml_of(data) (no ConfDict built when the keys are plain) writes what
    ConfDict(data).to_yaml() writes: full-uid.yaml checks compare these texts."""
    assert ConfDict.yaml_of(data) == ConfDict(data).to_yaml()


@pytest.mark.parametrize(
    "data",
    [
        {"": 1},
        {"a": {"": [1, 2], "x": 1}, "b": 3},
        {"l": [{"": "x", "y": 2}]},
        {"a": 1, "b": {"c": "d", "e": [1.5, None]}},
    ],
)
def test_to_yaml_is_the_text_of_safe_dump(data: dict[str, tp.Any]) -> None:
    """An empty key: libyaml wrote `'': 1` where safe_dump writes `? ''` (an audit)."""
    assert ConfDict(data).to_yaml() == yaml.safe_dump(data, sort_keys=False)


def test_to_yaml_keeps_insertion_order() -> None:
    cd = ConfDict({"z": 1, "a": {"y": 2, "b": 3}})
    cd["m.q"] = 4
    cd["a.a"] = 5
    assert cd.to_yaml() == "z: 1\na:\n  y: 2\n  b: 3\n  a: 5\nm.q: 4\n"


def test_to_yaml_types(tmp_path: Path) -> None:
    cd = ConfDict(
        {
            "p": Path("/x/y"),
            "t": (1, 2),
            "n": np.float32(1.5),
            "i": np.int64(3),
            "l": [{"a": {"b": 1}}],
            "s": "x y",
            "none": None,
        }
    )
    text = cd.to_yaml()
    assert text == "p: /x/y\nt:\n- 1\n- 2\nn: 1.5\ni: 3\nl:\n- a.b: 1\ns: x y\nnone: null\n"
    assert "!!" not in text
    filepath = tmp_path / "conf.yaml"
    assert cd.to_yaml(filepath) == text
    assert filepath.read_text() == text


def test_sets_in_yaml_are_sorted_and_frozensets_written() -> None:
    """A frozenset made to_yaml() raise a RepresenterError ("cannot represent an
    object"), though to_uid() took it; a set of strings was written in the hash order of
    the process, so the yaml text of one config changed from process to process."""
    tags = {"zeta", "alpha", "epsilon", "beta", "gamma", "delta", "eta", "theta"}
    cd = ConfDict({"tags": tags, "frozen": frozenset({"y", "x"}), "mixed": {2, "a", 1}})
    lines = [f"  {tag}: null" for tag in sorted(tags)]
    expected = "\n".join(["tags: !!set", *lines, "frozen: !!set", "  x: null", "  y: null"])
    expected += "\nmixed: !!set\n  1: null\n  2: null\n  a: null\n"
    assert cd.to_yaml() == expected
    assert ConfDict.yaml_of(dict(cd)) == expected
    assert ConfDict.from_yaml(expected) == cd  # read back as sets, equal


def test_yaml_of_a_decimal_says_what_to_do() -> None:
    """A Decimal in a ConfDict (to_uid renders it as a float) made to_yaml raise PyYAML's
    "cannot represent an object", naming neither the type nor a way out."""
    cd = ConfDict({"price": decimal.Decimal("2.50")})
    assert cd.to_uid().startswith("price=2.50-")
    with pytest.raises(TypeError, match=r"type Decimal \(Decimal\('2.50'\)\): convert it"):
        cd.to_yaml()
    assert ConfDict({"price": "2.50"}).to_yaml() == "price: '2.50'\n"


def test_ordereddict_yaml() -> None:
    cd = ConfDict({"o": collections.OrderedDict([("b", 1), ("a", {"c": 2})])})
    text = cd.to_yaml()
    # order kept, the OrderedDict not collapsed into its parent (the chains inside it are),
    # no python tags
    assert text == "o:\n  b: 1\n  a.c: 2\n"
    assert ConfDict.from_yaml(text) == {"o": {"b": 1, "a": {"c": 2}}}
    top = collections.OrderedDict([("z", 1), ("a", 2)])
    assert ConfDict({"t": top}).to_yaml() == "t:\n  z: 1\n  a: 2\n"


_TRICKY_YAML = """
small: 1e-5
small_dotted: 1.0e-5
neg: -2.5E+3
inf: .inf
minus_inf: -.Inf
nan: .nan
yes_word: yes
no_word: 'no'
null_word: 'null'
null_value: null
tilde: ~
switch: on
date_like: 2024-01-02
date_text: '2024-01-02'
time_like: 2024-01-02 10:20:30
under: 1_000
octal: 0o17
old_octal: 017
hex: 0x1F
sexagesimal: 1:30
quoted_int: '12'
empty: ''
unicode: "caf\\u00e9 \\U0001F600"
multi: |
  two
  lines
nested.deep.key: [1, 2.5, 'x', null, true]
'': empty key
"""


def _typed(value: tp.Any) -> tp.Any:
    """A value with its type at every level (nan equal to nan)."""
    if isinstance(value, dict):
        return {_typed(k): _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    return (type(value).__name__, repr(value))


def test_from_yaml_reads_as_pyyaml_safe_load_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """from_yaml used PyYAML's pure-python parser (~30 ms for a 200-key config, ~2 ms
    with libyaml's): it uses the C one when PyYAML has it, and reads every value as
    safe_load does (the same types), with it or without it; and back from its yaml."""
    assert getattr(yaml, "CSafeLoader", None) is not None, "PyYAML without libyaml here"
    expected = ConfDict(yaml.safe_load(_TRICKY_YAML))
    used: list[str] = []

    class Counted(yaml.CSafeLoader):  # type: ignore[name-defined,misc]
        def __init__(self, stream: tp.Any) -> None:
            used.append("C")
            super().__init__(stream)

    monkeypatch.setattr(yaml, "CSafeLoader", Counted)
    loaded = ConfDict.from_yaml(_TRICKY_YAML)
    assert used == ["C"]  # (the pure-python parser before)
    assert _typed(loaded) == _typed(expected)
    assert loaded["small"] == "1e-5" and loaded["small_dotted"] == 1e-5  # (YAML 1.1)
    assert loaded["yes_word"] is True and loaded["no_word"] == "no" and loaded["under"] == 1000
    back = ConfDict.from_yaml(loaded.to_yaml())
    assert _typed(back) == _typed(expected)
    monkeypatch.delattr(yaml, "CSafeLoader")  # (a PyYAML built without libyaml)
    assert _typed(ConfDict.from_yaml(_TRICKY_YAML)) == _typed(expected)
    assert _typed(ConfDict.from_yaml(loaded.to_yaml())) == _typed(expected)


def test_from_yaml_sources(tmp_path: Path) -> None:
    text = "a.b: 1\nc:\n  d: [1, 2]\n"
    expected = {"a": {"b": 1}, "c": {"d": [1, 2]}}
    assert ConfDict.from_yaml(text) == expected
    assert isinstance(ConfDict.from_yaml(text), ConfDict)
    filepath = tmp_path / "conf.yaml"
    filepath.write_text(text)
    assert ConfDict.from_yaml(filepath) == expected
    assert ConfDict.from_yaml(str(filepath)) == expected  # a one-line existing path
    with filepath.open() as handle:
        assert ConfDict.from_yaml(handle) == expected
    assert ConfDict.from_yaml(io.StringIO(text)) == expected
    # a one-line string that is not an existing path is yaml
    assert ConfDict.from_yaml("x: 1") == {"x": 1}


@pytest.mark.parametrize("text", ["- 1\n- 2\n", "12", "just a string", ""])
def test_from_yaml_non_dict(text: str, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="must hold a mapping"):
        ConfDict.from_yaml(text)
    filepath = tmp_path / "conf.yaml"
    filepath.write_text(text)
    with pytest.raises(TypeError, match="must hold a mapping"):
        ConfDict.from_yaml(filepath)


def test_empty_yaml_file(tmp_path: Path) -> None:
    filepath = tmp_path / "empty.yaml"
    filepath.touch()
    with pytest.raises(TypeError, match="must hold a mapping"):
        ConfDict.from_yaml(filepath)
    with pytest.raises(TypeError, match="must hold a mapping"):
        ConfDict.from_yaml(str(filepath))


# --- from_args -------------------------------------------------------------------------------
def test_from_args() -> None:
    cd = ConfDict.from_args(["--a.b=1", "--a.c=x=y", "--d=", "--e.0=no"])
    assert cd == {"a": {"b": "1", "c": "x=y"}, "d": "", "e": {"0": "no"}}
    assert ConfDict.from_args([]) == {}


@pytest.mark.parametrize("arg", ["a.b=1", "-a=1", "--ab", "--=1"])
def test_from_args_bad_format(arg: str) -> None:
    with pytest.raises(ValueError):
        ConfDict.from_args([arg])


@pytest.mark.parametrize("arg", ["--optim..lr=0.1", "--.lr=0.1", "--a..b.=1"])
def test_from_args_refuses_a_key_with_an_empty_part(arg: str) -> None:
    """A doubled or stray dot made a key "" (``{'optim': {'': {'lr': ...}}}``), then a
    confusing error of the model, or a config with a field nobody asked for."""
    with pytest.raises(ValueError, match="empty part"):
        ConfDict.from_args([arg])


def test_a_replace_marker_neither_true_nor_false_is_refused() -> None:
    """Any text but "false"/"0"/"no"/"off" replaced: a typo ("ture") wiped the whole
    sub-config it meant to patch."""
    base = ConfDict({"model": {"layers": 4, "width": 64}})
    with pytest.raises(ValueError, match="'ture'"):
        base.update(ConfDict.from_args(["--model.=replace==ture", "--model.kind=mlp"]))
    assert base == {"model": {"layers": 4, "width": 64}}
    base.update(ConfDict.from_args(["--model.=replace==TRUE", "--model.kind=mlp"]))
    assert base == {"model": {"kind": "mlp"}}


@pytest.mark.parametrize("flag", [{"d": 4}, ["d"], 0.5])
def test_a_replace_marker_that_is_a_dict_or_list_is_refused(flag: tp.Any) -> None:
    """A dict given as the marker's value (meant as the new sub-config) was read as true:
    the sub-config cleared and the dict's keys lost, silently."""
    base = ConfDict({"a": {"b": 1, "c": 2}})
    with pytest.raises(ValueError, match="=replace= is"):
        base.update({"a": {"=replace=": flag}})
    assert base == {"a": {"b": 1, "c": 2}}
    base.update({"a": {"=replace=": 1, "d": 4}})
    assert base == {"a": {"d": 4}}


def test_a_missing_dotted_key_is_named_whole() -> None:
    cd = ConfDict({"a": {"b": 1}})
    with pytest.raises(KeyError) as missing:
        cd["a.c"]
    assert missing.value.args == ("a.c",)


# --- yaml round trip (property) ----------------------------------------------------------------
keys = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="."), min_size=1, max_size=8
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=20),
)
values = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=15,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, values, max_size=5))
def test_yaml_round_trip(data: dict[str, tp.Any]) -> None:
    cd = ConfDict(data)
    text = cd.to_yaml()
    loaded = ConfDict.from_yaml(text)
    assert loaded == cd
    assert loaded.to_uid() == cd.to_uid()
    assert loaded.to_yaml() == text
    assert isinstance(yaml.safe_load(text) if text.strip() != "{}" else {}, dict)


def test_replace_from_the_command_line_and_get_through_a_list() -> None:
    cfg = ConfDict({"model": {"kind": "cnn", "depth": 3}, "layers": [1, 2]})
    args = ConfDict.from_args(["--model.=replace==true", "--model.kind=mlp"])
    cfg.update(args)
    assert cfg == {"model": {"kind": "mlp"}, "layers": [1, 2]}  # depth gone: replaced
    with pytest.raises(ValueError, match="replace"):
        ConfDict.from_args(["--model.=replace=true"])
    assert cfg.get("layers.x", "default") == "default" and "layers.x" not in cfg


def test_replace_marker_in_flat_form() -> None:
    """A flat patch (a patch's flat(), or dotted keys) replaces as its nested form does,
    also when the marker comes after the keys it guards, and leaves no marker key."""
    base = {"model": {"kind": "cnn", "depth": 3}, "lr": 0.1}
    patch = ConfDict.from_args(["--model.=replace==true", "--model.kind=mlp"])
    for flat in (patch.flat(), {"model.kind": "mlp", "model.=replace=": True}):
        cfg = ConfDict(base)
        cfg.update(flat)
        assert cfg == {"model": {"kind": "mlp"}, "lr": 0.1}
    kept = ConfDict(base)
    kept.update({"model.=replace=": "false", "model.kind": "mlp"})
    assert kept == {"model": {"kind": "mlp", "depth": 3}, "lr": 0.1}
    assert ConfDict({"a.=replace=": True}) == {"a": {}}


def test_replace_marker_from_yaml_and_a_false_flag() -> None:
    """A patch read from yaml replaces as the same patch from the command line does; the
    text "false" on a command line merges."""
    base_text = "model:\n  kind: cnn\n  width: 64\n"
    patch = ConfDict.from_yaml("model:\n  =replace=: true\n  kind: mlp\n")
    merged = ConfDict.from_yaml(base_text)
    merged.update(patch)
    assert merged == {"model": {"kind": "mlp"}}
    top = ConfDict.from_yaml(base_text)
    top.update(ConfDict.from_yaml("=replace=: true\nlr: 0.1\n"))
    assert top == {"lr": 0.1}
    kept = ConfDict.from_yaml(base_text)
    kept.update(ConfDict.from_args(["--model.=replace==false", "--model.kind=mlp"]))
    assert kept == {"model": {"kind": "mlp", "width": 64}}


def test_dotted_writes_inside_an_ordereddict() -> None:
    """An OrderedDict value keeps its order bookkeeping: what a dotted set adds is seen by
    iteration, yaml and uid; a dotted pop leaves it readable."""
    cd = ConfDict({"layers": collections.OrderedDict(first=1)})
    cd["layers.second"] = 2
    assert list(cd["layers"]) == ["first", "second"]
    assert cd.flat() == {"layers.first": 1, "layers.second": 2}
    assert "second" in cd.to_yaml()
    without = ConfDict({"layers": collections.OrderedDict(first=1)})
    assert cd.to_uid() != without.to_uid()
    assert cd.pop("layers.first") == 1
    assert list(cd["layers"].items()) == [("second", 2)]
    assert repr(cd)  # (a bypassed pop broke the OrderedDict's repr)


def test_dict_at_a_list_index_merges() -> None:
    cd = ConfDict({"layers": [{"size": 8, "act": "relu"}]})
    cd["layers.0"] = {"size": 16}
    assert cd["layers.0"] == {"size": 16, "act": "relu"}
    cd["layers.0"] = {ConfDict.OVERRIDE: True, "size": 4}
    assert cd["layers"] == [{"size": 4}]
    assert isinstance(cd["layers.0"], ConfDict)


def test_tuple_items_by_index() -> None:
    cd = ConfDict({"shape": (3, 224, 224), "nested": {"pair": (1, 2)}})
    cd["shape.0"] = 1
    assert cd["shape"] == (1, 224, 224) and type(cd["shape"]) is tuple
    assert cd.pop("nested.pair.0") == 1
    assert cd["nested.pair"] == (2,)
    with pytest.raises(KeyError):
        cd.pop("shape.7")


def test_setdefault_and_union_operators_split_dotted_keys() -> None:
    cfg = ConfDict({"optim": {"lr": 0.5}})
    assert cfg.setdefault("optim.lr", 0.1) == 0.5
    assert cfg.setdefault("optim.momentum", 0.9) == 0.9
    assert cfg == {"optim": {"lr": 0.5, "momentum": 0.9}}
    cfg |= {"data.path": "x"}
    assert cfg["data"] == {"path": "x"} and "data.path" in cfg
    union = ConfDict({"a": {"x": 1}}) | {"a": {"y": 2}}
    assert type(union) is ConfDict and union == {"a": {"x": 1, "y": 2}}
    assert cfg.to_uid() == ConfDict(dict(cfg)).to_uid()


def test_enum_members_are_written_by_value() -> None:
    """As a model's export writes them: yaml and uid agree with the plain value."""
    import enum

    class Mode(str, enum.Enum):  # noqa: UP042 (what users write; str() is not the value)
        train = "train"

    class Level(enum.IntEnum):
        high = 2

    for member, plain in ((Mode.train, "train"), (Level.high, 2)):
        cd = ConfDict({"v": member})
        assert cd.to_yaml() == ConfDict({"v": plain}).to_yaml()
        assert cd.to_uid() == ConfDict({"v": plain}).to_uid()
        assert ConfDict.from_yaml(cd.to_yaml()) == {"v": plain}


def test_from_yaml_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"No such yaml file: .*missing\.yaml"):
        ConfDict.from_yaml(str(tmp_path / "missing.yaml"))
    with pytest.raises(TypeError, match="must hold a mapping"):
        ConfDict.from_yaml("just text")


def test_from_model_of_something_else() -> None:
    with pytest.raises(TypeError, match="from_model takes a pydantic model instance, got dict"):
        ConfDict.from_model({"a": 1})  # type: ignore[arg-type]


def test_a_confdict_never_shares_containers_with_its_source() -> None:
    """Dotted writes into a ConfDict (or its copy) changed the caller's lists and
    OrderedDicts, and the dicts inside a copied tuple (the original's uid changed)."""
    user_list, user_od = [1, 2, 3], collections.OrderedDict(a=1)
    cd = ConfDict({"l": user_list, "od": user_od})
    cd["l.0"] = 100
    cd["od.b"] = 2
    assert user_list == [1, 2, 3] and user_od == collections.OrderedDict(a=1)
    orig = ConfDict({"layers": ({"size": 1}, {"size": 2}), "s": {1, 2}})
    uid = orig.to_uid()
    copy = orig.copy()
    copy["layers.0.size"] = 99
    copy["s"].add(3)
    assert orig.to_uid() == uid and orig["layers"][0] == {"size": 1} and orig["s"] == {1, 2}


INTERRUPTED_YAML_IMPORT = """
import importlib.abc, signal, sys

fired = []


class Interrupt(importlib.abc.MetaPathFinder):  # Ctrl-C half-way through importing PyYAML
    def find_spec(self, name, path, target=None):
        if name == "yaml.nodes" and not fired:
            fired.append(1)
            signal.raise_signal(signal.SIGINT)
        return None


sys.meta_path.insert(0, Interrupt())
from exca import ConfDict

try:
    ConfDict({"a": "\\u00e9"}).to_yaml()  # (not plain text: PyYAML writes it)
except KeyboardInterrupt:
    print("interrupted")
print(ConfDict({"a": "\\u00e9"}).to_yaml(), end="")
"""


def test_a_ctrl_c_while_pyyaml_is_imported_breaks_no_later_call() -> None:
    """PyYAML is imported on first need, with Ctrl-C held back: an import interrupted
    half-way made every later import of it fail ("partially initialized module")."""
    out = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_YAML_IMPORT], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == 'interrupted\na: "\\xE9"\n'


SLOW_YAML_IMPORT_IN_A_THREAD = """
import importlib.abc, sys, threading, time


class Slow(importlib.abc.MetaPathFinder):  # a slow disk: PyYAML takes a while to import
    def find_spec(self, name, path, target=None):
        if name == "yaml.nodes":
            time.sleep(0.5)
        return None


sys.meta_path.insert(0, Slow())
from exca.confdict import ConfDict

worker = threading.Thread(target=lambda: ConfDict.from_yaml("a: 1"))
worker.start()
time.sleep(0.2)  # (the worker thread is importing PyYAML)
print(dict(ConfDict.from_yaml("b: 2")))
worker.join()
"""


def test_pyyaml_imported_by_another_thread_meanwhile_is_waited_for() -> None:
    """The module half-imported by another thread is not used (it raised 'partially
    initialized module')."""
    out = subprocess.run(
        [sys.executable, "-c", SLOW_YAML_IMPORT_IN_A_THREAD],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout == "{'b': 2}\n"


def test_a_patch_of_list_items_by_index_sets_them() -> None:
    """from_args / from_yaml read "optim.betas.0" with no list to index: a dict {"0": ...}.
    Merged into a config, it replaced the list with that dict; it sets the items, as
    cd["optim.betas.0"] = ... does (and an index past the end is an IndexError)."""
    base = ConfDict({"optim": {"betas": [0.9, 0.999], "layers": [{"w": 1}, {"w": 2}]}})
    patched = ConfDict(base)
    patched.update(ConfDict.from_args(["--optim.betas.0=0.5"]))
    assert patched["optim.betas"] == ["0.5", 0.999]
    patched = ConfDict(base)
    patched.update(ConfDict.from_yaml("optim.betas.1: 0.5\noptim.layers.1.w: 5\n"))
    assert patched["optim.betas"] == [0.9, 0.5]
    assert patched["optim.layers"] == [{"w": 1}, {"w": 5}]
    with pytest.raises(IndexError, match=r"Index 7 of key 'betas.7' is out of range"):
        ConfDict(base).update(ConfDict.from_args(["--optim.betas.7=0.5"]))
    # nested lists by index too; a dict in a tuple merges (its other keys were dropped)
    nested = ConfDict({"a": [[1, 2], [3, 4]], "t": ({"w": 1, "b": 2},)})
    nested.update(ConfDict.from_yaml("a.0.1: 5\n"))
    nested.update({"t": {"0": {"w": 9}}})
    assert nested["a"] == [[1, 5], [3, 4]] and nested["t"] == ({"w": 9, "b": 2},)
    # a dict of other keys, or one asking to replace, still replaces the list
    replaced = ConfDict(base)
    replaced.update({"optim": {"betas": {ConfDict.OVERRIDE: True, "0": 1}}})
    assert replaced["optim.betas"] == {"0": 1}


def test_from_args_sets_the_empty_key_of_a_dict_as_flat_writes_it() -> None:
    cfg = ConfDict({"weights": {"": 1.0, "en": 2.0}})
    assert list(cfg.flat()) == ["weights.", "weights.en"]
    cfg.update(ConfDict.from_args(["--weights.=5"]))
    assert cfg == {"weights": {"": "5", "en": 2.0}}


def test_yaml_of_text_that_is_not_unicode_is_a_clear_error() -> None:
    """(seen last session: a lone surrogate, e.g. a file name decoded by os.listdir, raised
    libyaml's bare UnicodeEncodeError "surrogates not allowed", naming neither the key
    nor the value) A ValueError names them (where the text is)."""
    with pytest.raises(ValueError, match=r"line 2, column 5: 'a: x\\ud800y'"):
        ConfDict.from_yaml("b: 1\na: x\ud800y")
    with pytest.raises(ValueError, match=r"value of 'a\.0' \('x\\udcff'\) .* written as yaml"):
        ConfDict({"a": ["x\udcff"]}).to_yaml()
    with pytest.raises(ValueError, match=r"key of 'k\\ud800' .* written as yaml"):
        ConfDict.yaml_of({"k\ud800": {"x": 1, "y": 2}})
    assert ConfDict.from_yaml(ConfDict({"a": ["é"]}).to_yaml()) == {"a": ["é"]}
