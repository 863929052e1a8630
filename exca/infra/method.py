"""The decorator side of infras: ``@infra.apply`` returns an ``InfraMethod`` descriptor.

Applying an infra to a method also adapts the owner class once: ``extra="forbid"``
becomes its default, and instance creation / unpickling / copying link every infra of
the instance to its owner (``BaseInfra._link``).
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import typing as tp
import weakref

import pydantic

from . import identity

if tp.TYPE_CHECKING:
    from .base import BaseInfra

_HOOKED = "_exca_owner_hooked"


def check_plain_method(func: tp.Any) -> None:
    """What ``infra.apply`` decorates must be a plain function of ``self``."""
    if (
        isinstance(func, property | classmethod | staticmethod | type)
        or not callable(func)
        or not hasattr(func, "__qualname__")  # (a functools.partial, a callable object)
    ):
        raise TypeError(
            f"infra.apply decorates a plain method (def name(self, ...)), got a "
            f"{type(func).__name__}: put @infra.apply directly above the def, with no "
            "@property, @classmethod or @staticmethod (the method reads its config through self)"
        )
    if inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func):
        raise TypeError(
            f"{func.__qualname__} is async: infra.apply decorates a plain method (its result "
            "would be a coroutine, which cannot be stored). Make it a def (call the async "
            "code with asyncio.run inside it)"
        )


# the classes with an infra method (see autoreload._classes_exca_uses: the classes whose
# edits %autoreload must apply in full)
OWNERS: weakref.WeakSet[type] = weakref.WeakSet()


class InfraMethod(property):
    """Descriptor for a method decorated by an infra (the method itself is never called
    directly: calls build graph nodes that the scheduler runs).

    It subclasses ``property`` so that pydantic leaves it out of the model fields; its
    ``fget`` is the method's function (never called as a getter: ``__get__`` is its own),
    so that IPython's ``%autoreload``, which updates a property's ``fget`` in place, gives
    the method the edited code.
    """

    func: tp.Callable[..., tp.Any]
    shadowed = False  # (see __init__; a default for descriptors unpickled without it)

    @property
    def __isabstractmethod__(self) -> bool:  # type: ignore[override]
        # (its fget is the function: an @abc.abstractmethod below would make the config
        # class abstract, as a property's getter does; it never did)
        return False

    def __init__(self, infra: BaseInfra, func: tp.Callable[..., tp.Any], **options: tp.Any) -> None:
        check_plain_method(func)
        if func.__name__.startswith("__"):
            raise ValueError(f"Cannot apply an infra to a dunder method ({func.__name__})")
        excluded = options.get("exclude_from_cache_uid")
        if isinstance(excluded, str) and not excluded.startswith("method:"):
            raise TypeError(  # (checked again per call; the common slip is caught here)
                f"exclude_from_cache_uid={excluded!r}: use a list of field names "
                f"([{excluded!r}]), a callable, or 'method:<name>'"
            )
        runtime = infra._runtime()
        if runtime.method is not None:
            raise RuntimeError(
                f"Infra was already applied to {runtime.method.func.__qualname__}: "
                f"use one infra instance per decorated method (cannot also decorate {func.__qualname__})"
            )
        super().__init__(fget=func)
        if "IPython.extensions.autoreload" in sys.modules:  # (a notebook: see autoreload.py)
            from . import autoreload

            autoreload.follow()
        runtime.method = self
        self.infra = infra  # the class-level default
        self.func = func
        self.options = options
        self.name = func.__name__
        self.owner: type[pydantic.BaseModel] | None = None
        self.infra_name = ""
        self.private = False
        # whether a class applies this method's infra (by its name) to another method
        # (see overridden_on; set by owner_facts, which every instance's class goes through)
        self.shadowed = False
        functools.update_wrapper(self, func)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.func.__qualname__})"

    def __call__(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        # (reached through the class, ``Class.method()``, or a decorator above
        # @infra.apply, e.g. @property, which passes the instance)
        owner = self.owner.__name__ if self.owner is not None else "Class"
        if not (args and isinstance(args[0], pydantic.BaseModel)):
            raise TypeError(
                f"{self.func.__qualname__} was called on the class: call it on a config, "
                f"{owner}(...).{self.name}(...) (the config defines what is computed and "
                "where it is cached)"
            )
        raise TypeError(
            f"{self.func.__qualname__} was called on the class with the config as first "
            f"argument ({owner}.{self.name}(obj), or a "
            "decorator above @infra.apply, e.g. @property, that passes it): call it on the "
            f"config, obj.{self.name}(...) (remove such a decorator: infra methods do not "
            "support them)"
        )

    def __set_name__(self, owner: type[pydantic.BaseModel], name: str) -> None:
        if not (isinstance(owner, type) and issubclass(owner, pydantic.BaseModel)):
            raise TypeError(
                f"infra.apply decorates methods of pydantic models: {owner.__name__} is not a "
                "pydantic.BaseModel subclass (make it one, with the infra as a field)"
            )
        self.owner = owner
        self.name = name
        self.infra_name, self.private = _find_infra_name(owner, self.infra)
        # pydantic builds the schema from this very dict after __set_name__ returns
        owner.model_config.setdefault("extra", "forbid")
        install_owner_hooks(owner)
        OWNERS.add(owner)

    def __get__(self, obj: tp.Any, objtype: tp.Any = None) -> tp.Any:
        if obj is None:
            return self
        return self.bound(obj)

    def bound(self, obj: tp.Any) -> tp.Any:  # overridden per infra kind
        raise NotImplementedError

    def __reduce__(self) -> tuple[tp.Any, ...]:
        if self.owner is not None and importable(self.owner):
            return (getattr, (self.owner, self.name))  # by name, like functions
        # classes of __main__, notebooks or functions are pickled by value (cloudpickle):
        # their dict holds this descriptor, so rebuild it without touching the class
        return (_rebuild, (type(self), dict(self.__dict__)))

    def overridden_on(self, obj: pydantic.BaseModel) -> bool:
        """Whether the class of ``obj`` applies this method's infra (by its name) to another
        method: a subclass declaring the infra again and decorating its own override,
        which calls this one through ``super()``. This one then runs as a plain method
        (its result is part of the override's, cached by it).
        Callers check ``self.shadowed`` first (no such class: one attribute read)."""
        facts = _FACTS.get(type(obj)) or owner_facts(type(obj))
        applied = facts.applied.get(self.infra_name)
        if applied is None or applied is self:
            return False
        if applied.name != self.name:  # (no override calling it: another method's infra)
            _warn_uncached(type(obj), self, applied)
        return True

    def infra_of(self, obj: pydantic.BaseModel) -> BaseInfra:
        """The (linked) infra instance that this method uses on an owner instance."""
        if self.private:
            infra = obj.__pydantic_private__[self.infra_name]  # type: ignore[index]
        else:
            infra = obj.__dict__[self.infra_name]
        try:
            linked = infra._runtime().owner is obj
        except AttributeError:
            if infra is not None and hasattr(infra, "_runtime"):
                raise
            raise TypeError(
                f"{type(obj).__name__}.{self.name} needs its infra, but "
                f"{type(obj).__name__}.{self.infra_name} is {infra!r}: give it an infra "
                f"(e.g. {self.infra_name}={{'folder': ...}}) to call this method"
            ) from None
        if not linked:
            link_infras(obj, COPIED)
            infra = getattr(obj, self.infra_name)
        return tp.cast("BaseInfra", infra)

    def step_name(self, obj: pydantic.BaseModel) -> str:
        """``<module>.<Class>.<method>``: the class of the instance when it inherits the
        decorated method unchanged, else the class that defines it."""
        cls = type(obj)
        if cls.__dict__.get(self.name) is not self and getattr(cls, self.name, None) is self:
            return f"{cls.__module__}.{cls.__qualname__}.{self.name}"
        owner = self.owner or cls
        return f"{owner.__module__}.{owner.__qualname__}.{self.name}"


def reduce_bound(bound: tp.Any) -> tuple[tp.Any, ...]:
    """``__reduce__`` of a bound infra method (``obj.method``): found again on the
    unpickled instance (the descriptor itself cannot be pickled by name when its class
    lives in __main__: its function is not ``Class.method``); another class's method
    (``super().method``) goes with its descriptor."""
    method, obj = bound.method, bound.obj
    name: str = method.name
    if getattr(type(obj), name, None) is method:
        return (getattr, (obj, name))
    return (type(bound), (method, obj))


def importable(cls: type) -> bool:
    """Whether a class can be found again by module and qualified name."""
    if cls.__module__ == "__main__":
        return False
    obj: tp.Any = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    return obj is cls


def _rebuild(kind: type[InfraMethod], state: dict[str, tp.Any]) -> InfraMethod:
    method = kind.__new__(kind)
    property.__init__(method, fget=state.get("func"))
    method.__dict__.update(state)
    state["infra"]._runtime().method = method
    return method


def _find_infra_name(owner: type, infra: tp.Any) -> tuple[str, bool]:
    for name, value in owner.__dict__.items():
        if value is infra:
            # recent pydantic versions turn `_name = value` into a private attribute only
            # after __set_name__ ran, so the raw value is still in the class dict here
            return name, name.startswith("_")
    for name, private in getattr(owner, "__private_attributes__", {}).items():
        if getattr(private, "default", None) is infra:
            return name, True
    for base in owner.__mro__[1:]:
        for name, field in getattr(base, "model_fields", {}).items():
            if field.default is infra:
                return name, False
    raise RuntimeError(
        f"Could not find the infra used by @apply in class {owner.__qualname__}: declare it as a "
        "field with a default (infra: TaskInfra = TaskInfra()) in the same class"
    )


@functools.cache
def _warn_uncached(cls: type, method: InfraMethod, applied: InfraMethod) -> None:
    logging.getLogger("exca").warning(
        "%s.%s is not cached on %s instances: %s declares %r again for %s only (it runs "
        "as a plain method; decorate an override of %s in %s to cache it there)",
        method.owner.__name__ if method.owner is not None else "?",
        method.name,
        cls.__name__,
        cls.__name__,
        method.infra_name,
        applied.name,
        method.name,
        cls.__name__,
    )


# --- owner classes ------------------------------------------------------------------------
class _OwnerFacts(tp.NamedTuple):
    infras: tuple[tuple[str, bool, BaseInfra], ...]  # (name, private, class default)
    # the method each infra name is applied to in this class (the most derived one)
    applied: dict[str, InfraMethod]


_FACTS: dict[type, _OwnerFacts] = {}
identity.CLASS_FORGETTERS.append(lambda cls: _FACTS.pop(cls, None))


def owner_facts(cls: type[pydantic.BaseModel]) -> _OwnerFacts:
    facts = _FACTS.get(cls)
    if facts is not None:
        return facts
    identity.seen_class(cls)
    from .base import BaseInfra

    applied: dict[str, InfraMethod] = {}
    applied_in: dict[str, type] = {}  # (the class whose method applies it)
    for klass in reversed(cls.__mro__):
        for value in vars(klass).values():
            if isinstance(value, InfraMethod) and value.infra_name:
                applied[value.infra_name] = value
                applied_in[value.infra_name] = klass
    infras: list[tuple[str, bool, BaseInfra]] = []
    for name, field in cls.model_fields.items():
        if isinstance(field.default, BaseInfra):
            infras.append((name, False, field.default))
    for name, private in getattr(cls, "__private_attributes__", {}).items():
        if isinstance(getattr(private, "default", None), BaseInfra):
            infras.append((name, True, private.default))
    for name, _, default in infras:
        method = applied.get(name)
        if (
            method is not None
            and default._runtime().method is None
            # (declared again below the class applying it; else a class rebuilt from a
            # pickle, e.g. a subclass defined in a script, sent to a job: its default
            # infra is a copy, not linked to the method yet)
            and _declared_below(cls, name, applied_in[name])
        ):
            raise RuntimeError(
                f"{cls.__qualname__}.{name} overrides the infra that {method.func.__qualname__} "
                f"is decorated with, without applying it: decorate a method with "
                f"@{name}.apply in {cls.__qualname__} too, or do not override {name!r}"
            )
    for klass in cls.__mro__:  # (methods whose infra this class applies to another one)
        for value in vars(klass).values():
            if isinstance(value, InfraMethod) and applied.get(value.infra_name, value) is not value:
                value.shadowed = True
    facts = _FACTS[cls] = _OwnerFacts(tuple(infras), applied)
    if infras:
        _hook_del(cls)
    return facts


_RELEASES = "_exca_releases_infras"  # set on release_owner and the __del__ wrappers


def _hook_del(cls: type[pydantic.BaseModel]) -> None:
    """Make an owner class's instances release their infras when dropped (a subclass
    defining its own ``__del__``, found here at its first instance, gets it chained)."""
    own = getattr(cls, "__del__", None)
    if getattr(own, _RELEASES, False):
        return
    if own is None:  # (the common case: no wrapper, a call less per instance freed)
        cls.__del__ = release_owner  # type: ignore[attr-defined]
        return

    def __del__(self: pydantic.BaseModel) -> None:
        try:
            release_owner(self)
        finally:
            own(self)

    setattr(__del__, _RELEASES, True)
    __del__.__qualname__ = f"{cls.__qualname__}.__del__"
    cls.__del__ = __del__  # type: ignore[attr-defined]


def release_owner(obj: pydantic.BaseModel) -> None:
    """An owner instance being freed (``__del__``). Its infras hold it weakly (a strong
    link back made a reference cycle: the instance, and all it loaded, lived until a
    full garbage collection). An infra, or its memoized node, still used elsewhere (a
    temporary owner: ``Exp(lr=1).infra.job()``, a node being computed) pins it again
    strongly (a resurrection: the pair is then freed by the garbage collector, as
    before); else the node is dropped, its callbacks of the infra with it (no cycle is
    left: the infra is freed with the instance, by reference counting)."""
    facts = _FACTS.get(type(obj))
    if facts is None:
        return
    for name, private, _ in facts.infras:
        store = obj.__pydantic_private__ if private else obj.__dict__
        infra = None if store is None else store.get(name)
        runtime = getattr(infra, "_rt", None)
        if runtime is None or runtime.pinned is not None:
            continue
        # (None: a dead reference, freed by the garbage collector, which clears them first;
        # compared by identity: an equal config is another owner)
        held = runtime.owner_ref()
        if held is not obj and held is not None:
            continue
        if runtime.forcing:
            runtime.forcing = None  # (may hold this infra: recomputed when needed)
        node = runtime.node
        if node is not None:
            # (references: the runtime's, ``node`` and the argument; its function: the
            # node's field and the argument)
            if sys.getrefcount(node) > 3 or sys.getrefcount(node.function) > 2:
                runtime.pinned = obj
                continue
            runtime.node = node = None
        # (references: the owner's field, ``infra`` and the argument)
        if sys.getrefcount(infra) > 3:
            runtime.pinned = obj


setattr(release_owner, _RELEASES, True)


def _declared_below(cls: type, name: str, applying: type) -> bool:
    """Whether a class strictly below ``applying`` (``cls`` or a parent) declares the
    field ``name`` again."""
    for klass in cls.__mro__:
        if klass is applying:
            return False
        if name in vars(klass).get("__annotations__", {}):
            return True
    return False


COPIED: tp.Any = object()  # link_infras' second argument for copies and unpickled objects


def link_infras(obj: pydantic.BaseModel, context: tp.Any = None, /) -> None:
    """Link each infra of an owner instance to it. ``context``: pydantic's post-init
    context when the instance was just created (class-default settings are then merged,
    and this function is the class's ``model_post_init`` itself: no wrapper call), or
    ``COPIED`` for copies and unpickled instances (nothing to merge)."""
    merge = context is not COPIED
    facts = _FACTS.get(type(obj)) or owner_facts(type(obj))
    values = obj.__dict__
    for name, private, default in facts.infras:
        if not private and default is values.get(name):
            # the common case: the owner was created without this infra
            values[name] = default._copy_linked_to(obj, name)
            continue
        if private:
            store = obj.__pydantic_private__
            if store is None:
                continue
            infra = store.get(name)
            if infra is None:
                continue
            if infra is default or _linked_elsewhere(infra, obj):
                infra = store[name] = infra.__deepcopy__()
        else:
            infra = values.get(name)
            if infra is None or not hasattr(type(infra), "_link"):
                continue  # (a dict given by model_copy(update=...): a call says what is wrong)
            if _linked_elsewhere(infra, obj):
                infra = values[name] = infra.__deepcopy__()
        infra._link(obj, name, default, merge=merge and name in obj.model_fields_set)


def _linked_elsewhere(infra: tp.Any, obj: tp.Any) -> bool:
    owner = infra._runtime().owner
    return owner is not None and owner is not obj


def install_owner_hooks(cls: type[pydantic.BaseModel]) -> None:
    """Wrap instance creation, unpickling and copies of an owner class (once per class)."""
    if cls.__dict__.get(_HOOKED):
        return
    setattr(cls, _HOOKED, True)
    _hook_post_init(cls)
    # (pydantic collects the class's validators after __set_name__, which calls this)
    wrap: tp.Any = pydantic.model_validator(mode="wrap")
    setattr(cls, _NAMING, wrap(classmethod(_name_unknown_fields)))
    if hasattr(pydantic.BaseModel, "__pydantic_on_complete__"):
        # recent pydantic versions replace model_post_init *after* __set_name__ when the
        # class has private attributes: hook it again once the class is complete
        own = cls.__dict__.get("__pydantic_on_complete__")

        def __pydantic_on_complete__(klass: type[pydantic.BaseModel]) -> None:
            if own is not None:
                own.__func__(klass)
            else:
                super(cls, klass).__pydantic_on_complete__()  # type: ignore[misc]
            if not getattr(klass.model_post_init, _LINKS_FLAG, False):
                _hook_post_init(klass)

        __pydantic_on_complete__.__qualname__ = f"{cls.__qualname__}.__pydantic_on_complete__"
        cls.__pydantic_on_complete__ = classmethod(__pydantic_on_complete__)  # type: ignore[assignment,method-assign]

    setstate = cls.__setstate__

    def __setstate__(self: pydantic.BaseModel, state: dict[tp.Any, tp.Any]) -> None:
        setstate(self, state)
        link_infras(self, COPIED)

    shallow = cls.__copy__
    deep = cls.__deepcopy__

    def __copy__(self: pydantic.BaseModel) -> pydantic.BaseModel:
        new = shallow(self)
        link_infras(new, COPIED)  # infras shared with `self` get copied
        return new

    def __deepcopy__(
        self: pydantic.BaseModel, memo: dict[int, tp.Any] | None = None
    ) -> pydantic.BaseModel:
        new = deep(self, memo)
        link_infras(new, COPIED)
        return new

    model_copy = cls.model_copy

    def copy_model(
        self: pydantic.BaseModel,
        *,
        update: tp.Mapping[str, tp.Any] | None = None,
        deep: bool = False,
    ) -> pydantic.BaseModel:
        new = model_copy(self, update=update, deep=deep)
        # (pydantic deep-copies the fields of a deep copy with updates one by one, after
        # __copy__: the infra copies were left unattached)
        link_infras(new, COPIED)
        return new

    copy_model.__name__ = "model_copy"
    for hook in (__setstate__, __copy__, __deepcopy__, copy_model):
        hook.__qualname__ = f"{cls.__qualname__}.{hook.__name__}"
        setattr(cls, hook.__name__, hook)


_NAMING = "_exca_name_unknown_fields"  # (the owner's validator naming its typos' close fields)


def _name_unknown_fields(cls: type[pydantic.BaseModel], value: tp.Any, handler: tp.Any) -> tp.Any:
    """An owner's validation, its typos said as an infra's are (``Experiment(lR=0.1)``:
    pydantic's bare "Extra inputs are not permitted" said no field name): "Experiment has
    no field 'lR': did you mean 'lr'?", the error's type and location unchanged."""
    try:
        return handler(value)
    except pydantic.ValidationError as error:
        from .typos import naming_settings  # (on an error only)

        raise naming_settings(cls, error) from None


_LINKS_FLAG = "_exca_links_infras"  # set on model_post_init hooks (kept by functools.wraps)
setattr(link_infras, _LINKS_FLAG, True)


def _hook_post_init(cls: type[pydantic.BaseModel]) -> None:
    """Make instance creation link the infras of the instance (after model_post_init)."""
    post_init = cls.model_post_init
    if getattr(post_init, _LINKS_FLAG, False):  # inherited from a hooked class: it links
        return
    if post_init is pydantic.BaseModel.model_post_init:  # a no-op: linking is the hook
        cls.model_post_init = link_infras  # type: ignore[method-assign]
        return

    def model_post_init(self: pydantic.BaseModel, context: tp.Any, /) -> None:
        post_init(self, context)
        link_infras(self)

    setattr(model_post_init, _LINKS_FLAG, True)
    model_post_init.__qualname__ = f"{cls.__qualname__}.model_post_init"
    cls.model_post_init = model_post_init  # type: ignore[method-assign]
