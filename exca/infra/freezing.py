"""Freezing a config once its uid is computed: public attribute changes then raise (the
uid, hence the cache folder, would no longer describe the object).

A frozen model carries its mark: its set of explicitly set fields
(``__pydantic_fields_set__``) is replaced by an equal set of the type ``_FrozenFieldSet``,
which copies, deep copies and pickles as a plain set (copies are not frozen). Its class's
``__setattr__`` is patched once to check that mark. (A mark on the object costs less than
a record by id: no weak reference, no registry to purge, no id reused by a new object.)
"""

from __future__ import annotations

import dataclasses
import types
import typing as tp
from pathlib import Path, PurePath

import pydantic

from .identity import CLASS_FORGETTERS, SCALAR_FIELDS_ATTR

_FIELDS_SET = "__pydantic_fields_set__"


class _FrozenFieldSet(set[str]):
    """The fields set of a frozen model (the mark of freezing): a copy is a plain set.
    ``owner``: the id of the model it marks (pydantic gives the same set object to a
    model revalidated from it, with ``revalidate_instances="always"``: not frozen)."""

    __slots__ = ("owner",)
    owner: int  # (set after creation: a Python __init__ would cost more than the rest)

    def __copy__(self) -> set[str]:
        return set(self)

    def __deepcopy__(self, memo: dict[int, tp.Any]) -> set[str]:
        return set(self)

    def __reduce__(self) -> tuple[type, tuple[list[str]]]:
        return (set, (list(self),))


def is_frozen(model: tp.Any) -> bool:
    mark = getattr(model, _FIELDS_SET, None)
    return type(mark) is _FrozenFieldSet and mark.owner == id(model)


_PATCHED: set[type] = set()


class _FreezeGuard:
    """A class's ``__setattr__`` refusing public changes on frozen instances, around the
    class's own. Not a function: IPython's ``%autoreload`` swaps the code of the functions
    of a reloaded class, and failed on this one (another closure), leaving the class half
    updated (a new field out of its uids). To autoreload, it equals the function it wraps
    (kept: the same pydantic function in the new class); around a class's own
    ``__setattr__``, it takes the new one (a rule exca gives autoreload: autoreload.py)."""

    __slots__ = ("original",)

    def __init__(self, original: tp.Callable[..., None]) -> None:
        self.original = getattr(original, "original", original)  # (never a guard's guard)

    def __get__(self, obj: tp.Any, objtype: tp.Any = None) -> tp.Any:
        return self if obj is None else types.MethodType(self, obj)

    def __eq__(self, other: object) -> bool:
        return other is self or other is self.original

    __hash__ = object.__hash__

    def __call__(self, obj: tp.Any, name: str, value: tp.Any) -> None:
        if not name.startswith("_") and is_frozen(obj):
            # (a sub-config has no infra: the config holding one clones it with the change)
            hint = f"(or config.infra.clone_obj({{'<path to it>.{name}': {value!r}}}))"
            if hasattr(obj, "clone_obj"):  # an infra's setting: a clone with another value
                hint = f"(or obj.infra.clone_obj({{'infra.{name}': {value!r}}}))"
            elif any(hasattr(v, "clone_obj") for v in obj.__dict__.values()):
                hint = f"(or obj.infra.clone_obj({{'{name}': {value!r}}}))"
            raise RuntimeError(
                f"Cannot set {type(obj).__name__}.{name}: the instance was frozen when its uid "
                "was computed, you can create an unfrozen instance with "
                f"type(obj)(**obj.model_dump()) {hint}"
            )
        self.original(obj, name, value)


def is_guard(obj: tp.Any) -> bool:
    return isinstance(obj, _FreezeGuard)


def guarded_class(cls: type) -> bool:
    return cls in _PATCHED


def update_guarded_class(old: type, new: type, update: tp.Callable[[type, type], None]) -> None:
    """%autoreload of a guarded class: its instances move to the new class (frozen ones
    too), which gets the guard."""
    update(old, new)
    _patch_setattr(new)


def _patch_setattr(cls: type) -> None:
    if not _guarded(cls):  # (guarded already: by itself, or by a base class)
        cls.__setattr__ = _FreezeGuard(cls.__setattr__)  # type: ignore[assignment,method-assign]
    _PATCHED.add(cls)


def _guarded(cls: type) -> bool:
    """Whether the class's __setattr__ is the guard (%autoreload may have replaced a
    class's own __setattr__ by its new version)."""
    return isinstance(getattr(cls, "__setattr__", None), _FreezeGuard)


def freeze(model: pydantic.BaseModel) -> list[pydantic.BaseModel]:
    """Forbid public attribute changes on a model and on every model nested in it (returns
    them all), those held by dataclass fields too."""
    return iter_models(model, freeze=True, in_dataclasses=True)


_LEAF_TYPES = frozenset({str, int, float, bool, type(None), bytes, type(Path()), type(PurePath())})
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
# (a class updated in place: its __setattr__ may be new, the guard is checked again)
CLASS_FORGETTERS.extend([lambda cls: _FIELD_NAMES.pop(cls, None), _PATCHED.discard])


def _field_names(cls: type[pydantic.BaseModel]) -> tuple[str, ...]:
    """The fields of a class that may hold models (an infra's settings never do)."""
    scalars = getattr(cls, SCALAR_FIELDS_ATTR, ())
    fields = cls.__pydantic_fields__
    names = _FIELD_NAMES[cls] = tuple(name for name in fields if name not in scalars)
    return names


def iter_models(
    value: tp.Any, freeze: bool = False, in_dataclasses: bool = False
) -> list[pydantic.BaseModel]:
    """The model itself and every pydantic model nested in its fields, lists and dicts
    (``freeze=True``: each one frozen on the way, in the same walk; ``in_dataclasses``:
    and in the fields of dataclasses, which the sub-configs chained before a task are
    not looked for in).

    Field values are looked at, not annotations: a type check per value is cheaper than
    analysing a class's annotations once per process (an infra has 24 fields). Only
    fields: ``__dict__`` may also hold cached properties, which are not config."""
    found: list[pydantic.BaseModel] = []
    stack = [value]
    seen: set[int] = set()
    leaves, base, field_names = _LEAF_TYPES, pydantic.BaseModel, _FIELD_NAMES
    patched, marked, set_attribute = _PATCHED, _FrozenFieldSet, object.__setattr__
    while stack:
        item = stack.pop()
        ident = id(item)
        if ident in seen:
            continue
        seen.add(ident)
        kind = type(item)
        # (a class met before is a model class: no isinstance check, slow on a metaclass)
        names = field_names.get(kind)
        if kind is tuple or kind is list:  # (before the isinstance checks: ~0.4 us less)
            stack += [v for v in item if type(v) not in leaves]
        elif names is not None or isinstance(item, base):
            found.append(item)
            if freeze:
                if kind not in patched:
                    _patch_setattr(kind)
                fields_set = item.__pydantic_fields_set__
                if type(fields_set) is not marked or fields_set.owner != ident:
                    mark = marked(fields_set)
                    mark.owner = ident
                    set_attribute(item, _FIELDS_SET, mark)
            if names is None:
                names = _field_names(kind)
            values = item.__dict__
            if len(values) == len(names):  # every field, nothing else (no cached property)
                stack += [sub for sub in values.values() if type(sub) not in leaves]
            else:
                for name in names:
                    sub = values.get(name)
                    if type(sub) not in leaves:
                        stack.append(sub)
            if item.__pydantic_extra__:
                stack.extend(item.__pydantic_extra__.values())
        elif kind is dict or isinstance(item, dict):
            stack += [v for v in item.values() if type(v) not in leaves]
        elif isinstance(item, list | tuple | set | frozenset):
            stack += [v for v in item if type(v) not in leaves]
        elif (
            in_dataclasses and hasattr(kind, "__dataclass_fields__") and not isinstance(item, type)
        ):
            # (a dataclass holding sub-configs: its fields, not its init=False memos)
            stack += [
                v
                for f in dataclasses.fields(item)
                if f.init and type(v := getattr(item, f.name, None)) not in leaves
            ]
    return found
