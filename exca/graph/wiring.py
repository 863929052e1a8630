"""Checks of how nodes are wired, made when a node is built (before anything runs): an
input whose annotation says one kind of value (a list, a dict) fed by a node whose
output is, by its own annotation, another kind."""

from __future__ import annotations

import collections.abc
import functools
import numbers
import types
import typing as tp

from .codeprint import method_function
from .node import Group, Input, Node

# kinds of values that no function reads as one another (a dict given for a list...);
# a number given for a text, or anything for an unannotated or abstract parameter
# (Iterable, Any, a union, np.ndarray), is not checked
_CONTAINERS = ("mapping", "collection")
_SAID = {"mapping": "a dict", "collection": "a list", "text": "a str", "number": "a number"}


def kind(hint: tp.Any) -> str | None:
    """The kind of value an annotation says: mapping, collection, text, number, or None
    (anything else, or unknown)."""
    origin = tp.get_origin(hint) or hint
    if not isinstance(origin, type) or origin in (object, tp.Any, types.UnionType):
        return None
    if issubclass(origin, str | bytes):
        return "text"
    if issubclass(origin, collections.abc.Mapping):
        return "mapping"
    if issubclass(origin, collections.abc.Sequence | collections.abc.Set):
        return "collection"
    if issubclass(origin, numbers.Number):
        return "number"
    return None


@functools.lru_cache(maxsize=1024)  # (get_type_hints costs ~50 us: once per method)
def hints(func: tp.Any) -> dict[str, tp.Any]:
    """A function's resolved annotations ({} when they do not resolve here)."""
    try:
        return tp.get_type_hints(func) if func is not None else {}
    except Exception:  # (a name defined elsewhere, a forward reference...: not checked)
        return {}


def _given(source: Node | Group) -> tuple[str | None, str]:
    """The kind of value an input gets, and what it is, in words."""
    if isinstance(source, Group):
        shape = "dict" if source.keys is not None else "list"
        return ("mapping" if source.keys is not None else "collection"), f"a {shape} of nodes"
    if source.kind == "map":
        return "collection", f"the list of the outputs of the map {source.uid}"
    returned = hints(method_function(source.function)).get("return")
    text = getattr(returned, "__name__", None) if not tp.get_args(returned) else None
    return kind(returned), f"the output of {source.uid}, annotated {text or returned}"


def check_inputs(func: tp.Any, inputs: tp.Sequence[Input]) -> None:
    """TypeError for an input fed by a node (or a list or dict of nodes) whose output is
    not the kind of value its parameter is annotated with (a dict for a list, say): the
    run would compute the upstream nodes, then fail in the method."""
    wanted = None
    for name, source in inputs:
        if not isinstance(source, Node | Group):
            continue  # (a value: a call takes what python takes)
        wanted = hints(func) if wanted is None else wanted
        param = kind(wanted.get(name))
        got, what = _given(source)
        if param is None or got is None or param == got:
            continue
        if param in _CONTAINERS or got in _CONTAINERS:
            hint = wanted[name]
            shown = getattr(hint, "__name__", None) if not tp.get_args(hint) else None
            raise TypeError(
                f"{func.__qualname__}: its input {name!r}, annotated {shown or hint}, gets "
                f"{what}: feed it a node whose output is {_SAID[param]}, or fix the annotation"
            )
