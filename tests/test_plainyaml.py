"""plainyaml writes exactly the text PyYAML writes (with ConfDict's dumper), or declines."""

from __future__ import annotations

import collections
import typing as tp
from pathlib import Path

import pydantic
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import exca
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


# (one test for both properties of a drawn config: drawing them is most of the CPU, and
# two tests drew 300 each; each property still sees 300 configs a run)
@settings(max_examples=300, deadline=None)
@given(st.dictionaries(simple_words, simple_values, max_size=5))
def test_simple_configs_are_written_as_pyyaml_does_and_read_back(data: dict[str, tp.Any]) -> None:
    _check_written_as_pyyaml_does(data)
    _check_load_reads_what_dump_writes(data)


def _check_written_as_pyyaml_does(data: dict[str, tp.Any]) -> None:
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


# texts near what dump() writes: keys, values and indents of every kind it declines too
_pieces = st.sampled_from(
    ["a", "b.c", "'1'", "'yes'", "yes", "1", "-2", "007", "1.5", "1.0e-05", ".nan", "-.inf",
     "null", "~", "true", "True", "{}", "[]", "'it''s'", "''", "0x1f", "a: b", "- x", "#c"]
)  # fmt: skip
_lines = st.tuples(st.sampled_from(["", "  ", "    ", " "]), _pieces, st.sampled_from([": ", ":"]))
_texts = st.lists(st.tuples(_lines, _pieces), max_size=6).map(
    lambda lines: "".join(
        f"{indent}{key}{sep}{value if sep == ': ' else ''}\n" for (indent, key, sep), value in lines
    )
)


@settings(max_examples=500, deadline=None)
@given(_texts)
def test_load_reads_as_pyyaml_or_declines(text: str) -> None:
    data = plainyaml.load(text)
    if data is not None:
        # (repr: the types too, 1 vs 1.0 vs True; nan equal to nan)
        assert repr(data) == repr(yaml.load(text, Loader=yaml.CSafeLoader)), text


def _check_load_reads_what_dump_writes(data: dict[str, tp.Any]) -> None:
    text = plainyaml.dump(data)
    if text is not None and "- " not in text:  # (sequences: read by PyYAML)
        loaded = plainyaml.load(text)
        assert loaded is not None, text
        assert repr(loaded) == repr(yaml.safe_load(text)), text


class _Listed(pydantic.BaseModel):
    seed: int = 0
    tag: str = "a-b"
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        return self.seed


def test_exca_list_reads_its_yaml_files_without_pyyaml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`exca list` of 5k configs spent most of its time in PyYAML's constructor reading
    uid.yaml and full-uid.yaml (pure Python, even with CSafeLoader): the files exca
    writes are now read by plainyaml.load."""
    from exca.ops.inspect import inspect

    root = tmp_path / "cache"
    for seed in range(3):
        _Listed(seed=seed, tag="a-b", infra={"folder": root}).run()

    def refused(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        raise AssertionError("PyYAML's loader called")

    monkeypatch.setattr(yaml, "load", refused)
    infos = inspect(root)
    assert sorted(i.config.get("seed", 0) for i in infos) == [0, 1, 2], infos
    assert [i.full_config["tag"] for i in infos] == ["a-b"] * 3, infos
