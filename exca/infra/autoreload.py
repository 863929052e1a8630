"""IPython's ``%autoreload`` (notebooks) and exca's objects: taught, when autoreload is
loaded, to update an edited module's config classes in place as exca needs (their infra
methods, with their class default infra and options; the freeze guard of their configs)."""

from __future__ import annotations

import sys
import typing as tp

from . import freezing, identity
from .method import InfraMethod


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
