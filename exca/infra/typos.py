"""What to say of the keys a config refused as unknown (a typo: ``epoch=4``,
``optim.lrr=0.1``): the model that has no such field and its close field names. Read
only once a validation failed (the command line's overrides, ``clone_obj``'s changes)."""

from __future__ import annotations

import typing as tp


def unknown_keys(cls: type, error: tp.Any) -> list[str]:
    """What to say of each key the config refused as unknown (a typo: ``epoch=4``,
    ``optim.lrr=0.1``): the model that has no such field, the close field names, and its
    fields (a key that is a setting of the infra: not said here, the command line says
    how to give it)."""
    import difflib

    from .base import BaseInfra

    notes = []
    for e in error.errors():
        if e["type"] != "extra_forbidden" or not e["loc"] or "has no field" in e["msg"]:
            continue  # (the last: said by the error itself, see naming_settings)
        *path, key = (str(part) for part in e["loc"])
        model = model_at(cls, path)
        if model is None or issubclass(model, BaseInfra):  # (an infra's error says it)
            continue
        fields = list(model.model_fields)
        if not path and infras_with(model, key):
            continue  # (said by the command line: infra.KEY=VALUE)
        close = difflib.get_close_matches(key, fields, n=3, cutoff=0.6)
        said = f"{'.'.join(map(str, e['loc']))}: {model.__name__} has no field {key!r}"
        if close:
            said += f": did you mean {' or '.join(map(repr, close))}?"
        else:
            shown = ", ".join(sorted(fields)[:20]) + (", ..." if len(fields) > 20 else "")
            said += f"; its fields: {shown}"
        notes.append(said)
    return notes


def close_names(given: str, names: tp.Iterable[str], cutoff: float = 0.6) -> list[str]:
    """The names ``given`` likely meant: those equal to it but for case ('Sgd' for
    'SGD'), else the close ones (difflib, case ignored), at most 3."""
    import difflib

    by_lower: dict[str, list[str]] = {}
    for name in sorted(names):
        by_lower.setdefault(name.lower(), []).append(name)
    if given.lower() in by_lower:
        return by_lower[given.lower()]
    close = difflib.get_close_matches(given.lower(), list(by_lower), n=3, cutoff=cutoff)
    return [name for lower in close for name in by_lower[lower]][:3]


def model_at(cls: type, path: list[str]) -> tp.Any:
    """The model class a pydantic error's location leads to from ``cls`` (list indices
    and dict keys skipped, a union's member named by the location), or None when it
    cannot tell."""
    from . import identity

    if not path:
        return cls
    field = getattr(cls, "model_fields", {}).get(path[0])
    if field is None:
        return None
    rest = path[1:]
    found = []
    for model in identity.annotated_models(field.annotation):
        if rest and rest[0] == model.__name__:  # (a union's member, as pydantic names it)
            return model_at(model, rest[1:])
        found.append(model_at(model, rest))  # (an optional or single model field)
        if rest:  # (or an index of a list, a key of a dict, of them)
            found.append(model_at(model, rest[1:]))
    found = [f for f in found if f is not None]
    return found[0] if len(set(found)) == 1 else None


def naming_settings(cls: type, error: tp.Any) -> tp.Any:
    """``error`` (a ValidationError of an infra, of a model holding one, or of a model
    whose validation exca does, a DiscriminatedModel) whose unknown keys of ``cls`` itself
    also say the close field names (and, for an infra, where they are listed): same type
    and location, a caller reading ``errors()`` sees the same. ``error`` itself when it
    has none or cannot be rebuilt."""
    import pydantic
    import pydantic_core

    from .base import BaseInfra

    lines = error.errors()
    refused = [(line, _refused_by(cls, line)) for line in lines]
    if not any(model is not None for _, model in refused):
        return error
    for line, model in refused:
        if model is None:
            if "has no field" in line["msg"]:  # (said by a nested one: kept as it said it)
                line["type"] = pydantic_core.PydanticCustomError(line["type"], line["msg"])
            continue
        key = str(line["loc"][-1])
        fields = sorted(model.model_fields)
        where = f"{model.__name__}.model_fields"
        if issubclass(model, BaseInfra):
            base = next(c for c in model.__mro__ if c.__module__.startswith("exca."))
            where = f"exca.{base.__name__}.model_fields, docs/{base.__name__.lower()}.md"
        # ('gpus' names gpus_per_node, 'slurm' every slurm_*; 0.7: 'fodler' is close to
        # 'folder', not to 'mode'; 'lR' names 'lr')
        close = [f for f in fields if f.startswith(key + "_")]
        close = close or close_names(key, fields, cutoff=0.7)
        top = len(line["loc"]) == 1
        infras = [] if close or not top or issubclass(model, BaseInfra) else infras_with(model, key)
        said = f"{line['msg']}: {model.__name__} has no field {key!r}"
        if infras:  # (folder=...: a setting of its infra; the command line says its own way)
            said = line["msg"] + infra_setting_said(model, key, infras)
        elif close:
            said += f": did you mean {' or '.join(map(repr, close))}? (its fields: {where})"
        else:
            said += f"; its fields: {', '.join(fields)} ({where})"
        # (no context given: the message is said as it is, braces too)
        line["type"] = pydantic_core.PydanticCustomError(line["type"], said)
    try:
        return pydantic.ValidationError.from_exception_data(error.title, lines)
    except Exception:  # (an error pydantic cannot rebuild from its dict: said as it was)
        return error


def infra_setting_said(cls: type, key: str, infras: list[str]) -> str:
    """What pydantic's error of an unknown key of ``cls`` that is a setting of its infra
    fields ``infras`` goes on with: how a python caller gives it."""
    given = " or ".join(f"{cls.__name__}({name}={{{key!r}: ...}})" for name in infras)
    return f": {cls.__name__} has no field {key!r}: {key} is a setting of its infra: {given}"


def infras_with(cls: type, key: str) -> list[str]:
    """The fields of ``cls`` holding an infra that has a field ``key``."""
    from .base import BaseInfra

    return [
        name
        for name, field in cls.model_fields.items()  # type: ignore[attr-defined]
        if isinstance(field.default, BaseInfra) and key in type(field.default).model_fields
    ]


def _refused_by(cls: type, line: tp.Any) -> tp.Any:
    """The model class whose unknown key a line of ``cls``'s ValidationError refuses (a
    key given to its constructor or assigned, ``cls`` itself; or a key of a sub-config,
    ``Experiment(optim={"lrr": 0.1})``: the sub-config's class), or None (another error,
    one said already by a nested validation, or a location that leads to no one model)."""
    if line["type"] not in ("extra_forbidden", "no_such_attribute") or not line["loc"]:
        return None
    if "has no field" in line["msg"]:  # (said already, by a nested validation)
        return None
    if len(line["loc"]) == 1:
        return cls
    if line["type"] != "extra_forbidden":
        return None
    model = model_at(cls, [str(part) for part in line["loc"][:-1]])
    return model if isinstance(getattr(model, "model_fields", None), dict) else None
