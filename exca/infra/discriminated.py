"""DiscriminatedModel: a base model whose subclasses are chosen by name from a key.

``Base(type="Child", x=1)`` (or ``{"type": "Child", ...}`` in a parent's field typed
``Base``) builds a ``Child``; dumps always carry the key and the subclass's own fields, so
configs written to yaml come back as the same classes. The key defaults to ``"type"``;
``class Base(DiscriminatedModel, discriminator_key="kind")`` changes it.
"""

from __future__ import annotations

import contextvars
import sys
import typing as tp

import pydantic

_SERIALIZING: contextvars.ContextVar[int] = contextvars.ContextVar("exca_serializing", default=0)


class DiscriminatedModel(pydantic.BaseModel):
    """Base of a family of models chosen by class name: ``Base(type="Child", x=1)``, or
    ``{"type": "Child", ...}`` (or just ``"Child"``) in a field typed ``Base``, builds a
    ``Child``; dumps, uids and yaml files carry the key. The key defaults to ``"type"``
    (``class Base(DiscriminatedModel, discriminator_key="kind")`` changes it)."""

    model_config = pydantic.ConfigDict(extra="forbid")
    _exca_discriminator_key: tp.ClassVar[str] = "type"
    _exca_subclasses: tp.ClassVar[dict[str, type[DiscriminatedModel]]] = {}

    def __init_subclass__(cls, discriminator_key: str | None = None, **kwargs: tp.Any) -> None:
        super().__init_subclass__(**kwargs)
        if discriminator_key is not None or DiscriminatedModel in cls.__bases__:
            cls._exca_discriminator_key = discriminator_key or cls._exca_discriminator_key
            cls._exca_subclasses = {}  # a new family
        registry = cls._exca_subclasses
        known = registry.get(cls.__name__)
        if known is not None and _other_class(known, cls):
            raise RuntimeError(
                f"Two DiscriminatedModel classes are named {cls.__name__!r} "
                f"({known.__module__}.{known.__qualname__} and "
                f"{cls.__module__}.{cls.__qualname__}): names select subclasses and name "
                "them in uids, rename one"
            )
        registry[cls.__name__] = cls

    def __new__(cls, *args: tp.Any, **kwargs: tp.Any) -> tp.Self:
        # Base(type="Child", ...) must build a Child: __init__ cannot change the class of
        # the instance, so pick it here (unknown names are reported by the validator)
        name = kwargs.get(cls._exca_discriminator_key)
        if isinstance(name, str) and name != cls.__name__:
            sub = cls._exca_family().get(name)
            if sub is not None:
                return super().__new__(sub)  # type: ignore[return-value]
        return super().__new__(cls)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: tp.Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if cls._exca_discriminator_key in cls.model_fields:
            family = cls._exca_subclasses
            if family.get(cls.__name__) is cls:  # (refused: not selectable by its name)
                del family[cls.__name__]
            raise RuntimeError(
                f"{cls.__name__} has a field named {cls._exca_discriminator_key!r}, which is the "
                "discriminator key of its family: rename the field or the key"
            )

    @classmethod
    def _exca_family(cls) -> dict[str, type[DiscriminatedModel]]:
        return {n: c for n, c in cls._exca_subclasses.items() if issubclass(c, cls)}

    @classmethod
    def _exca_lookup(cls, name: tp.Any) -> type[DiscriminatedModel]:
        family = cls._exca_family()
        found = family.get(name) if isinstance(name, str) else None
        if found is None:
            from .typos import close_names  # (on an error only)

            close = close_names(name, family) if isinstance(name, str) else []
            said = f"Unknown {cls.__name__} {cls._exca_discriminator_key}={name!r}"
            if close:
                said += f": did you mean {' or '.join(map(repr, close))}? Options"
            else:
                said += "; options"
            raise ValueError(f"{said} are {sorted(family)}")
        return found

    @pydantic.model_validator(mode="wrap")
    @classmethod
    def _exca_dispatch(cls, value: tp.Any, handler: tp.Any) -> tp.Any:
        key = cls._exca_discriminator_key
        if isinstance(value, str):
            return cls._exca_lookup(value)()
        if isinstance(value, dict) and key in value:
            sub = cls._exca_lookup(value[key])
            data = {k: v for k, v in value.items() if k != key}
            try:
                return handler(data) if sub is cls else sub.model_validate(data)
            except pydantic.ValidationError as error:
                raise cls._exca_switched(sub, data, error) from None
        try:
            return handler(value)
        except pydantic.ValidationError as error:
            if isinstance(value, dict):
                own = set(cls.model_fields)
                elsewhere = [
                    name
                    for name, sub in cls._exca_family().items()
                    if set(value) - own and set(value) - own <= set(sub.model_fields)
                ]
                if elsewhere:
                    raise ValueError(
                        f"{error}\nSummary: fields {sorted(set(value) - own)} belong to "
                        f"{elsewhere}: did you forget the discriminator "
                        f"{key}={elsewhere[0]!r}?"
                    ) from None
            from .typos import naming_settings

            raise naming_settings(cls, error) from None

    @classmethod
    def _exca_switched(
        cls, sub: type[DiscriminatedModel], data: dict[str, tp.Any], error: Exception
    ) -> Exception:
        """The error of a dict naming a class but holding fields of other classes of the
        family only: likely the old class's, kept by a merge that switched the key (a
        yaml config holding a Mlp, then --net.type=Conv): pydantic's "Extra inputs are
        not permitted" did not say so."""
        key = cls._exca_discriminator_key
        extra = sorted(set(data) - set(sub.model_fields))
        owners = [
            name
            for name, other in cls._exca_family().items()
            if other is not sub and extra and set(extra) <= set(other.model_fields)
        ]
        if not owners:  # (a typo: the close field names)
            from .typos import naming_settings

            return tp.cast(Exception, naming_settings(sub, error))
        return ValueError(
            f"{error}\nSummary: fields {extra} belong to {owners}, not to "
            f"{key}={sub.__name__!r}: a merge that switches the {key} (ConfDict.update, a "
            f"command line's --<field>.{key}={sub.__name__} onto a config holding another "
            "class) keeps the old class's fields; replace the sub-config whole "
            f"(--<field>.=replace==true --<field>.{key}={sub.__name__}, see "
            "docs/confdict.md)"
        )

    @pydantic.model_serializer(mode="wrap")
    def _exca_serialize(self, handler: tp.Any, info: pydantic.SerializationInfo) -> tp.Any:
        if not isinstance(self, DiscriminatedModel):
            raise TypeError(_raw_default_message(self))
        if _SERIALIZING.get() == id(self):
            data = handler(self)
        else:  # a field typed as the base holds a subclass: dump the subclass's fields
            token = _SERIALIZING.set(id(self))
            try:
                data = type(self).__pydantic_serializer__.to_python(
                    self,
                    mode=info.mode,
                    by_alias=bool(info.by_alias),
                    exclude_unset=info.exclude_unset,
                    exclude_defaults=info.exclude_defaults,
                    exclude_none=info.exclude_none,
                    round_trip=info.round_trip,
                    warnings=False,
                )
            finally:
                _SERIALIZING.reset(token)
        if isinstance(data, dict):
            data = {self._exca_discriminator_key: type(self).__name__, **data}
        return data

    def _exca_uid_prefix(self) -> dict[str, tp.Any]:
        """Always part of a uid: the discriminator selects the class."""
        return {self._exca_discriminator_key: type(self).__name__}


def _raw_default_message(value: tp.Any) -> str:
    """Why a field typed as a family holds a plain value: pydantic does not validate field
    defaults, so ``optim: Optim = "Adam"`` (or a dict) stays a string in every instance."""
    names = [value] if isinstance(value, str) else []
    if isinstance(value, dict):  # (the class named under the key, whichever key it is)
        names = [v for v in value.values() if isinstance(v, str) and v.isidentifier()]
    example = names[0] if names else "Child"
    return (
        f"a field typed as a DiscriminatedModel holds {value!r} "
        f"({type(value).__name__}), not a model: pydantic does not validate field defaults; "
        f"write an instance as default ({example}()), pydantic.Field(default_factory="
        f"{example}), or pydantic.Field({value!r}, validate_default=True)"
    )


def _other_class(known: type, new: type) -> bool:
    """Whether a class of the same name is another class than the one ``new`` replaces:
    not one defined again (a notebook cell run again, a module reloaded, a function run
    again: the same module and qualified name, or a class of a function's body, e.g. the
    same name in two tests), and still reachable by its qualified name in its module."""
    if known.__module__ != new.__module__:
        return True
    if known.__qualname__ == new.__qualname__ or "<locals>" in known.__qualname__:
        return False
    found: tp.Any = sys.modules.get(known.__module__)
    for part in known.__qualname__.split("."):
        found = getattr(found, part, None)
    return found is known
