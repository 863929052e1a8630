"""plainyaml writes exactly the text PyYAML writes (with ConfDict's dumper), or declines."""

from __future__ import annotations

import collections
import typing as tp

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from exca import plainyaml
from exca.confdict import _dumper_class

words = st.one_of(
    st.from_regex(r"[A-Za-z_/][A-Za-z0-9_\-./]{0,12}", fullmatch=True),
    st.sampled_from(["yes", "No", "null", "on", "y", "n", "~", "1", "0x1f", "1e3", ".5", "-a"]),
    st.from_regex(r"[-+]?[0-9]{1,4}(\.[0-9]{0,3})?", fullmatch=True),  # numbers as strings
    st.from_regex(r"""[#,\[\]{}&*!|>'"%@`][!-~ ]{0,12}""", fullmatch=True),  # quoted
    st.text(max_size=6),
    st.sampled_from(["k" * 128, "k" * 129]),  # 129: too long for a simple key
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    words,
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.tuples(children, children)
        | st.dictionaries(words, children, max_size=3)
        | st.builds(collections.OrderedDict, st.dictionaries(words, children, max_size=3))
    ),
    max_leaves=15,
)


simple_words = st.one_of(
    st.from_regex(r"[A-Za-z_/][A-Za-z0-9_\-./]{0,12}", fullmatch=True),
    st.from_regex(r"[-+]?(0|[1-9][0-9]{0,3})(\.[0-9]{0,3})?", fullmatch=True),
    st.sampled_from(["yes", "Off", "null", "", "{folder}/logs/{user}/%j", "'a'", "%j"]),
)
simple_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), simple_words),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(simple_words, children, max_size=3)
    ),
    max_leaves=15,
)


def _pyyaml(data: tp.Any) -> str:
    return str(yaml.dump(data, Dumper=_dumper_class(), sort_keys=False, allow_unicode=False))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(words, values, max_size=5))
def test_same_text_as_pyyaml_or_none(data: dict[str, tp.Any]) -> None:
    text = plainyaml.dump(data)
    if text is not None:
        assert text == _pyyaml(data)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(simple_words, simple_values, max_size=5))
def test_simple_configs_are_written_as_pyyaml_does(data: dict[str, tp.Any]) -> None:
    text = plainyaml.dump(data)
    if text is not None:  # (None only for the reserved words: yes, null...)
        assert text == _pyyaml(data)
        assert yaml.safe_load(text) == data


def test_typical_configs_need_no_pyyaml() -> None:
    data = {
        "seed": 3,
        "dataset": "cifar10",
        "network": {"depth": 6, "encoder": {"width": 131, "dropout": 0.2}, "norm": "layer"},
        "optim.betas": [0.8, 0.99],
        "folder": "/tmp/some-dir/cache_1",
        "lr": 1e-05,
        "flags": [{"a": None, "b": [True, [1, 2]]}, []],
        "empty": {},
        "version": "1",
        "answer": "no",
        "logs": "{folder}/logs/{user}/%j",
    }
    text = plainyaml.dump(data)
    assert text is not None
    assert text == _pyyaml(data)
    assert yaml.safe_load(text) == {**data, "flags": [{"a": None, "b": [True, [1, 2]]}, []]}


def test_declines_what_needs_quotes() -> None:
    for value in ["a b", "é", "x: y", "#x y", "007", "1e3"]:
        assert plainyaml.dump({"key": value}) is None, value
    assert plainyaml.dump({"k" * 200: 1}) is None
    assert plainyaml.dump({1: 1}) is None  # type: ignore[dict-item]
