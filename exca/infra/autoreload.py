"""IPython's ``%autoreload`` (notebooks) and exca's objects: taught, when autoreload is
loaded, to update an edited module's config classes in place as exca needs (their infra
methods, with their class default infra and options; the freeze guard of their configs)."""

from __future__ import annotations

import dataclasses
import logging
import sys
import types
import typing as tp

import pydantic

from . import freezing, identity
from .method import OWNERS, InfraMethod

logger = logging.getLogger("exca")


def follow() -> None:
    """Teach IPython's %autoreload (when loaded) to update exca's objects of an edited
    class in place: it keeps the old infra method, a property, swapping only its getter
    (a version bump or new options were ignored), and replaced the freeze guard of a class
    with its own __setattr__ by the new function (frozen configs could change)."""
    module = sys.modules.get("IPython.extensions.autoreload")
    rules = getattr(module, "UPDATE_RULES", None)
    if not isinstance(rules, list) or any(getattr(r, "exca", False) for r in rules):
        return
    identity.AUTORELOADING[0] = True

    class Rule(tuple):  # (a rule autoreload reads as a pair)
        exca = True

    def classes(old: tp.Any, new: tp.Any) -> bool:
        # (any class updated in place, a config's or one its defaults hold (a model, a
        # dataclass, in another module): the exports of field defaults may have changed;
        # never a match, the update is the next rule's)
        if isinstance(old, type) and isinstance(new, type):
            identity.classes_changed()
            _warn_stale_holders(old, new)
        return False

    def infra_methods(old: tp.Any, new: tp.Any) -> bool:
        return isinstance(old, InfraMethod) and isinstance(new, InfraMethod)

    def guards(old: tp.Any, new: tp.Any) -> bool:
        return freezing.is_guard(old) and callable(new)

    def guarded_classes(old: tp.Any, new: tp.Any) -> bool:
        return isinstance(old, type) and isinstance(new, type) and freezing.guarded_class(old)

    def update_class(old: type, new: type) -> None:
        freezing.update_guarded_class(old, new, module.update_class)  # type: ignore[union-attr]

    def update_guard(guard: tp.Any, new: tp.Callable[..., None]) -> None:
        # (the guard stays: the function it wraps takes the new code, as autoreload
        # updates any function; replaced, its super() would name the new class)
        new = getattr(new, "original", new)  # (the new class guarded already: its function)
        if new is not guard.original and not module.update_generic(guard.original, new):  # type: ignore[union-attr]
            guard.original = new

    _skip_deduper(module)
    rules[0:0] = [
        Rule((classes, _update_method)),  # (never called: see classes)
        Rule((infra_methods, _update_method)),
        Rule((guards, update_guard)),
        Rule((guarded_classes, update_class)),
    ]


def _update_method(old: InfraMethod, new: InfraMethod) -> None:
    """%autoreload: the old class's infra method (kept in place) takes the new one's
    function, class default infra and options (the old class, updated, stays its owner)."""
    owner = old.owner
    old.__dict__.update({k: v for k, v in new.__dict__.items() if k != "owner"})
    new.infra._runtime().method = old
    if owner is not None:
        identity.forget_class(owner)


def _skip_deduper(module: tp.Any) -> None:
    """IPython >= 9's ``%autoreload 2`` first tries its "deduperreload": it runs a class
    body's edited lines again in the old class (``setattr``), which a pydantic model (or a
    dataclass) never sees: a field default edited in a module (``seed: int = 1`` -> ``2``)
    was silently ignored, the configs keeping the old default (its uid and results
    too), until the kernel restarted (where the cache then said "Default seed=2 seems
    incompatible"); nor did exca's rules run. A module defining such classes that exca's
    uids depend on (``_classes_exca_uses``) is reloaded by autoreload's full reload instead
    (what ``%autoreload 2 --full`` does for all). Not the other modules, even defining
    models or dataclasses: a full reload runs a module's body again, so its state (a
    module-level cache, a client, a model loaded at import) is made anew, which the
    deduper keeps, and their classes are not exca's concern."""
    deduper: tp.Any = getattr(module, "DeduperReloader", None)
    original = getattr(deduper, "maybe_reload_module", None)
    if original is None or getattr(original, "exca", False):
        return

    def maybe_reload_module(self: tp.Any, reloaded: types.ModuleType) -> bool:
        if _defines_config_classes(reloaded):
            return False  # (autoreload then calls its superreload)
        return bool(original(self, reloaded))

    maybe_reload_module.exca = True  # type: ignore[attr-defined]
    deduper.maybe_reload_module = maybe_reload_module


def _defines_config_classes(module: types.ModuleType) -> bool:
    """Whether a module defines a pydantic model or a dataclass (classes built from their
    body once: a line of it run again changes nothing) that exca's uids depend on."""
    name = getattr(module, "__name__", None)
    defined = [
        value
        for value in list(vars(module).values())
        if isinstance(value, type)
        and getattr(value, "__module__", None) == name
        and _built_once(value)
    ]
    if not defined:
        return False
    used = _classes_exca_uses()
    return any(cls in used for cls in defined)


def _built_once(cls: type) -> bool:
    return issubclass(cls, pydantic.BaseModel) or dataclasses.is_dataclass(cls)


def _classes_exca_uses() -> set[type]:
    """The configs (classes with an infra method, and their subclasses) and the pydantic
    models and dataclasses their fields may hold (by their annotations or their defaults,
    at any depth, and their subclasses): those whose field defaults are in exca's uids. A
    field of any model (``pydantic.BaseModel``) names none, as one of ``tp.Any``: its
    subclasses are every model, of every module."""
    seen: set[type] = set()
    todo: list[type] = list(OWNERS)
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        found: list[tp.Any] = list(cls.__subclasses__())
        try:
            if issubclass(cls, pydantic.BaseModel):
                for field in cls.model_fields.values():
                    found += [field.annotation, type(field.default)]
            elif dataclasses.is_dataclass(cls):
                hints = tp.get_type_hints(cls)
                for dc_field in dataclasses.fields(cls):
                    found += [hints.get(dc_field.name), type(dc_field.default)]
        except Exception:  # (an annotation that cannot be resolved: its fields unknown)
            pass
        todo += [
            c
            for c in _classes_in(found)
            if c not in seen and c is not pydantic.BaseModel and _built_once(c)
        ]
    return seen


def _classes_in(annotations: list[tp.Any]) -> tp.Iterator[type]:
    """The classes an annotation names (list[Inner] | None: list, Inner, NoneType)."""
    stack, done = list(annotations), set()
    while stack:
        annotation = stack.pop()
        if id(annotation) in done:
            continue
        done.add(id(annotation))
        if isinstance(annotation, type) and not tp.get_args(annotation):
            yield annotation
        stack += tp.get_args(annotation)
        origin = tp.get_origin(annotation)
        if origin is not None:
            stack.append(origin)


def _warn_stale_holders(old: type, new: type) -> None:
    """A model of a reloaded module held by the fields of a model of another module (or
    a notebook cell) that was not reloaded (``from inner import Inner``): that model's
    validation was built from the old class and its defaults were made by it, so it keeps
    them (its default still the old values, the new fields refused as extra, new instances
    refused). Nothing in place can rebuild what its module's body made: say so."""
    if not issubclass(old, pydantic.BaseModel) or not issubclass(new, pydantic.BaseModel):
        return
    if _definition(old) == _definition(new):  # (another part of its module edited)
        return
    for holder in sorted(_classes_exca_uses(), key=lambda c: (c.__module__, c.__qualname__)):
        if holder.__module__ == old.__module__ or not issubclass(holder, pydantic.BaseModel):
            continue
        annotations = [field.annotation for field in holder.model_fields.values()]
        if old in set(_classes_in(annotations)):
            where = (
                "run the cell defining it again"
                if holder.__module__ == "__main__"
                else f"reload {holder.__module__} too (importlib.reload), or restart the kernel"
            )
            logger.warning(
                "%%autoreload reloaded %s.%s, which %s.%s holds in its fields: unless its "
                "module is reloaded too, it keeps the old %s (its field defaults and their "
                "validation: new fields refused, edited defaults not seen), and so do its "
                "configs' uids and results: %s",
                old.__module__,
                old.__qualname__,
                holder.__module__,
                holder.__qualname__,
                old.__name__,
                where,
            )


def _definition(cls: type[pydantic.BaseModel]) -> tp.Any:
    """What a model's holders were built from: its fields' annotations and defaults."""
    try:
        return {
            name: (repr(field.annotation), repr(field.default), _stable(field.default_factory))
            for name, field in cls.model_fields.items()
        } | {"#config": repr(cls.model_config)}
    except Exception:  # (a field whose repr fails: taken as changed)
        return object()


def _stable(value: tp.Any) -> tp.Any:
    """What a default factory is, the same in each reload of its unchanged module: a
    function (a lambda...) by its name and code (its repr names its address, new at
    each reload: an unchanged class was said changed)."""
    code = getattr(value, "__code__", None)
    if not isinstance(code, types.CodeType):
        return repr(value)
    return (getattr(value, "__qualname__", ""), _code_key(code))


def _code_key(code: types.CodeType) -> tuple[tp.Any, ...]:
    """A code object's bytecode, names and constants (nested code alike), not its lines."""
    consts = tuple(
        _code_key(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts
    )
    return (code.co_code, code.co_names, consts)
