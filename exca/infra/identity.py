"""The identity of a pydantic config: its uid config (what defines the result).

``export_model(obj, uid=True, exclude_defaults=True)`` is what names a cache folder:
non-default public fields, minus ``_exclude_from_cls_uid``, minus the fields a class keeps
out of uids (an infra keeps only ``version``). Leaf values come from one
``model_dump(mode="json")`` call; the per-class facts (defaults, exclusions,
discriminators) are computed once per class.
"""

from __future__ import annotations

import collections
import collections.abc
import dataclasses
import enum
import functools
import inspect
import itertools
import re
import sys
import types
import typing as tp
import weakref
from pathlib import PurePath

import pydantic
import pydantic_core

from .. import uidformat
from ..graph.node import memoized  # (cached_property without its lock)

MODEL_UID_FIELDS_ATTR = "_exca_uid_fields"  # ClassVar: only these fields enter a uid ("." = none)
OVERRIDE_HOOK = "_exca_uid_dict_override"
EXCLUDE_ATTR = "_exclude_from_cls_uid"
SCALAR_FIELDS_ATTR = "_exca_scalar_fields"  # class attribute: fields that never hold a model
PREFIX_HOOK = "_exca_uid_prefix"  # method giving keys always exported first (discriminators)
# in a uid export: the class of a sub-model held by a field annotated with another class
# (a base class). Not a field name (pydantic fields never start with "_").
CLASS_KEY = "_class"
_NO_DEFAULT: tp.Any = object()


class _FieldFacts:
    """What a uid needs to know of one field of a class (computed once per class)."""

    # (plain classes, not dataclasses: creating a dataclass costs ~1-3 ms of `import exca`)
    __slots__ = (
        "_annotation",
        "_contained",
        "_dataclasses",
        "_named_models",
        "_nan_default",
        "ambiguous",
        "anything",
        "default",
        "default_json",
        "dump_exclude",
        "keep",
        "model_cls",
        "models",
        "name",
        "plain",
        "required",
        "scalar_default",
    )

    def __init__(
        self,
        name: str,
        required: bool,
        default: tp.Any,
        default_json: tp.Any,
        keep: tuple[str, ...] | _KeepAll,
        plain: bool,
        model_cls: type[pydantic.BaseModel] | None,
        dump_exclude: tp.Any,
        ambiguous: str | None = None,
        models: tuple[type, ...] = (),
        named_models: tuple[type, ...] = (),
        annotation: tp.Any = None,
    ) -> None:
        self.name = name
        self.required = required
        self.default = default  # python default (or _NO_DEFAULT)
        self.default_json = default_json  # json-mode dump of the default
        # fields of a sub-model kept even at their default: its discriminator, or every
        # field under a callable discriminator (which field tells the members apart is unknown)
        self.keep = keep
        self.plain = plain  # the annotation only allows plain values (never a model nor a dict)
        self.model_cls = model_cls  # the annotation's model class, if a single one
        # what a uid dump leaves out of this field's sub-model (when it is of model_cls)
        self.dump_exclude = dump_exclude
        self.ambiguous = ambiguous  # why it cannot enter a uid (see _ambiguity), or None
        # the model classes the annotation names at its top level, and anywhere in it (in
        # lists, dicts...): an instance of another class (a subclass) gets its class in uids
        self.models = models
        self._named_models = named_models  # (``contained`` without the dataclasses)
        self._annotation = annotation
        self._contained: tuple[tp.Any, ...] | None = None  # (see contained)
        self._dataclasses = False
        self._nan_default: bool | None = None  # (see nan_default)
        self.anything = False  # the annotation admits anything (Any, object) somewhere
        # whether the default is an int, str or float equal to its json dump (same type):
        # then a value that is its own dump (the same object) is the default exactly when
        # the dumps are equal
        self.scalar_default = (
            type(default) in _PLAIN_SCALARS
            and type(default_json) is type(default)
            and default_json == default
        )

    @property
    def contained(self) -> tuple[tp.Any, ...]:
        """The models and dataclasses the annotation names anywhere (found when first
        asked: a cache hit of a plain config never does, and a pydantic class lacking an
        attribute, as ``is_dataclass`` asks, costs two AttributeErrors)."""
        contained = self._contained
        if contained is None:
            found = annotated_dataclasses(self._annotation)
            self._dataclasses = bool(found)
            contained = self._contained = (*self._named_models, *found)
        return contained

    @property
    def dataclasses(self) -> bool:
        """Whether the annotation names a dataclass (then in ``contained``): an instance of
        a subclass of it is dumped by the annotated class's schema (its fields lost)."""
        return bool(self.contained) and self._dataclasses

    @property
    def nan_default(self) -> bool:
        """Whether the default holds a nan inside a container or a model (see _nan_equal).
        Only asked once a value differs from the default: found then (walking a default
        infra's ~25 values cost ~1/6 of a fresh process's first cache hit)."""
        held = self._nan_default
        if held is None:
            default = self.default
            held = self._nan_default = default is not _NO_DEFAULT and _holds_nan(default)
        return held


class _ClassFacts:
    """What a uid needs to know of a model class (computed once per class)."""

    def __init__(
        self,
        cls: type[pydantic.BaseModel],
        static_exclusions: frozenset[str] | None,
        uid_fields: frozenset[str] | None,
        has_extra_config: bool,
        has_override: bool,
        has_prefix: bool,
        has_serializer: bool = False,
    ) -> None:
        self.cls = cls
        self.static_exclusions = static_exclusions  # None: computed per instance (callable)
        self.uid_fields = uid_fields  # None: every field
        self.has_extra_config = has_extra_config
        self.has_override = has_override
        self.has_prefix = has_prefix
        # a model_serializer: the dump's keys need not be the fields (its dump is its config)
        self.has_serializer = has_serializer
        # (the class's fields when computed: %autoreload updates a class in place)
        self.fields_of = cls.__pydantic_fields__
        # uid exports made without ``uid_dump_plan`` so far (see export_with_keys)
        self.unplanned_exports = 0

    @memoized
    def dump_keys(self) -> frozenset[str | None]:
        """Keys a serializer's dump may hold without renaming anything: the fields, the
        computed fields, a DiscriminatedModel's key."""
        cls = self.cls
        added = getattr(cls, "_exca_discriminator_key", None)
        return frozenset((*cls.model_fields, *cls.model_computed_fields, added))

    @memoized
    def fields(self) -> tuple[_FieldFacts, ...]:
        return tuple(_field_facts(self.cls, n, f) for n, f in self.cls.__pydantic_fields__.items())

    @memoized
    def fields_in_uid(self) -> tuple[_FieldFacts, ...]:
        """The fields a uid export looks at (all but those the class keeps out of uids;
        an infra's other fields are never analysed for uids)."""
        if self.uid_fields is None:
            return self.fields
        fields = self.cls.__pydantic_fields__
        names: tp.Collection[str] = self.uid_fields & fields.keys()
        if len(names) > 1:  # (in field order; an infra keeps one: its 25 fields not walked)
            names = [n for n in fields if n in names]
        return tuple(_field_facts(self.cls, n, fields[n]) for n in names)

    @memoized
    def uid_dump_exclude(self) -> dict[str, tp.Any] | None:
        """What a uid export need not dump: the fields a sub-model class keeps out of uids
        (an infra's settings), as a pydantic ``exclude`` spec (None: dump everything)."""
        spec: dict[str, tp.Any] = {}
        for field in self.fields_in_uid:
            if field.dump_exclude is not None:
                spec[field.name] = field.dump_exclude
        return spec or None

    @memoized
    def uid_dump_plan(self) -> tuple[tp.Any, tuple[_Fill, ...]] | None:
        """A cheaper uid dump, or None: the sub-models of ``uid_dump_exclude`` whose kept
        fields are plain scalars (an infra's version) left out of the dump whole, their
        dumps made from their values (``_filled``). Pydantic takes ~1.5 us to read the
        exclude spec and ~3 us to dump an infra's 24 fields, a third of a first uid.
        Returns the pydantic ``exclude`` spec to use then, and those sub-models."""
        spec = self.uid_dump_exclude
        cls = self.cls
        if spec is None or self.has_serializer or cls.__pydantic_root_model__:
            return None
        if cls.model_config.get("json_encoders"):  # (may apply to what a sub-model holds)
            return None
        fills = []
        for name, excluded in spec.items():
            fill = _fill_of(cls, name, excluded)
            if fill is not None:
                fills.append(fill)
        if not fills:
            return None
        names = {fill[0] for fill in fills}
        # (a set when every entry is left out whole: pydantic reads it quicker)
        fast: tp.Any = (
            names
            if names == set(spec)
            else {key: True if key in names else value for key, value in spec.items()}
        )
        return fast, tuple(fills)

    @memoized
    def ambiguous(self) -> dict[str, str]:
        """Why fields cannot enter a uid (see ``_ambiguity``), by name."""
        return {f.name: f.ambiguous for f in self.fields_in_uid if f.ambiguous is not None}

    @memoized
    def plain_exclusions(self) -> frozenset[str] | None:
        """The exclusions of the class when a uid export of its instances needs no check
        nor hook (extra set, no uid override or prefix hook, no serializer, no ambiguous
        field, exclusions that do not depend on the instance); None otherwise."""
        if (
            not self.has_extra_config
            or self.has_override
            or self.has_prefix
            or self.has_serializer
            or self.ambiguous
        ):
            return None
        return self.static_exclusions

    @memoized
    def drops_itself(self) -> bool | None:
        """Whether the class excludes itself ("."), when that does not depend on the
        instance (None: it does)."""
        if self.uid_fields == frozenset({"."}):
            return True
        if self.static_exclusions is None:
            return None
        return "." in self.static_exclusions


_FACTS: dict[type, _ClassFacts] = {}
# uid exports of a class made before its ``uid_dump_plan`` (see export_with_keys)
_UNPLANNED_EXPORTS = 2


class _KeepAll:
    """``keep`` of a sub-model under a callable discriminator: ``name in keep`` always."""

    def __contains__(self, name: object) -> bool:
        return True


_KEEP_ALL = _KeepAll()


def _kept_fields(field: pydantic.fields.FieldInfo) -> tuple[str, ...] | _KeepAll:
    """The discriminator field of a discriminated union of the field (also inside
    Optional[...], Annotated[...] and lists/tuples/dicts of the union); every field under a
    callable discriminator; none without a union."""
    disc = _raw_discriminator(field)
    if disc is None:
        return ()
    if isinstance(disc, str):
        return (disc,)
    if isinstance(getattr(disc, "discriminator", None), str):  # pydantic.Discriminator("kind")
        return (disc.discriminator,)
    return _KEEP_ALL


def _raw_discriminator(field: pydantic.fields.FieldInfo) -> tp.Any:
    disc = field.discriminator
    if disc is None:
        for meta in field.metadata:
            disc = getattr(meta, "discriminator", None)
            if disc is not None:
                return disc
        return _annotation_discriminator(field.annotation, depth=0)
    return disc


def _annotation_discriminator(annotation: tp.Any, depth: int) -> tp.Any:
    if depth > 4 or isinstance(annotation, type):  # (a class: no Annotated, no union in it)
        return None
    origin = tp.get_origin(annotation)
    if origin is tp.Annotated:
        for meta in annotation.__metadata__:
            disc = getattr(meta, "discriminator", None)
            if disc is not None:
                return disc
    for arg in tp.get_args(annotation):
        disc = _annotation_discriminator(arg, depth + 1)
        if disc is not None:
            return disc
    return None


def _model_types(annotation: tp.Any) -> list[tp.Any]:
    """Model classes that a field annotation allows at its top level (unions unpacked)."""
    origin = tp.get_origin(annotation)
    if origin is tp.Annotated:
        return _model_types(tp.get_args(annotation)[0])
    if origin is tp.Union or origin is types.UnionType:
        out: list[tp.Any] = []
        for arg in tp.get_args(annotation):
            out.extend(_model_types(arg))
        return out
    if annotation is pydantic.BaseModel:
        return [annotation]
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    return []


def annotated_models(annotation: tp.Any) -> tuple[type[pydantic.BaseModel], ...]:
    """Model classes named anywhere in an annotation (unions, containers, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return (annotation,)
    out: list[type[pydantic.BaseModel]] = []
    for arg in tp.get_args(annotation):
        out.extend(annotated_models(arg))
    return tuple(out)


def annotated_dataclasses(annotation: tp.Any) -> tuple[tp.Any, ...]:
    """Dataclasses (stdlib or pydantic) named anywhere in an annotation; a generic one
    given its arguments as named (``Box[Aug]``: they tell what its fields hold)."""
    if isinstance(annotation, type):
        return (annotation,) if dataclasses.is_dataclass(annotation) else ()
    origin = tp.get_origin(annotation)
    if isinstance(origin, type) and dataclasses.is_dataclass(origin):
        try:
            hash(annotation)  # (a memo key)
        except TypeError:
            return (origin,)
        return (annotation,)
    out: list[tp.Any] = []
    for arg in tp.get_args(annotation):
        out.extend(annotated_dataclasses(arg))
    return tuple(out)


def _ambiguity(
    cls: type, name: str, field: pydantic.fields.FieldInfo, models: list[tp.Any]
) -> str | None:
    """Why a field's annotation cannot define a uid (raised when the field enters one:
    a field kept out of uids may hold anything), or None. ``models``: its _model_types."""
    if pydantic.BaseModel in models:
        return (
            f"Field {cls.__name__}.{name} is annotated as a raw pydantic.BaseModel, so its uid "
            "cannot be defined from its type: use a discriminated union of explicit models "
            "(pydantic.Field(discriminator=...)) or exca.helpers.DiscriminatedModel"
        )
    if len(models) > 1 and _raw_discriminator(field) is None:
        names = ", ".join(m.__name__ for m in models)
        return (
            f"Field {cls.__name__}.{name} is a union of several pydantic models ({names}) without "
            "a discriminator: the uid would be ambiguous. Add pydantic.Field(discriminator=...)"
        )
    nested = _undiscriminated_union(field.annotation, top=True)
    if nested:
        names = ", ".join(m.__name__ for m in nested)
        return (
            f"Field {cls.__name__}.{name} holds a union of several pydantic models ({names}) "
            "without a discriminator, inside a list, tuple or dict: the uid would be ambiguous "
            "(two configs differing only by the class of an element would share a cache "
            "folder). Discriminate the union where it is, e.g. list[tp.Annotated[A | B, "
            "pydantic.Field(discriminator='name')]], or keep the field out of the uid"
        )
    return None


def _undiscriminated_union(annotation: tp.Any, top: bool, depth: int = 0) -> list[type] | None:
    """The model classes of a union of several models nested in an annotation (in a list,
    tuple, dict...) with no discriminator of its own, if any. ``top``: the field's own
    level, whose union the caller checks (with the field's discriminator)."""
    if depth > 8 or isinstance(annotation, type):  # (a class: no union in it)
        return None
    origin = tp.get_origin(annotation)
    if origin is tp.Annotated:
        if any(getattr(m, "discriminator", None) is not None for m in annotation.__metadata__):
            return None  # (a discriminated union: its members are checked as classes)
        return _undiscriminated_union(tp.get_args(annotation)[0], top, depth + 1)
    args = tp.get_args(annotation)
    if (origin is tp.Union or origin is types.UnionType) and not top:
        models = [a for a in args if isinstance(a, type) and issubclass(a, pydantic.BaseModel)]
        if len(models) > 1:
            return models
    for arg in args:  # (the field's own union: Optional[list[A | B]] looks into its members)
        if isinstance(arg, type) or arg is Ellipsis or tp.get_origin(arg) is tp.Literal:
            continue
        found = _undiscriminated_union(arg, False, depth + 1)
        if found:
            return found
    return None


def _has_serializer(cls: type, name: str, field: pydantic.fields.FieldInfo) -> bool:
    """Whether a field's dump goes through a serializer of its own (``field_serializer``,
    ``PlainSerializer``/``WrapSerializer`` in its annotation)."""
    # (pydantic imports these serializer classes on first access, ~3 ms: a field can only
    # hold one once that module was imported)
    module = sys.modules.get("pydantic.functional_serializers")
    if module is not None and any(
        isinstance(m, module.PlainSerializer | module.WrapSerializer) for m in field.metadata
    ):
        return True
    decorators = getattr(cls, "__pydantic_decorators__", None)
    serializers = decorators.field_serializers.values() if decorators is not None else ()
    return any(name in d.info.fields or "*" in d.info.fields for d in serializers)


# a sub-model whose uid dump is made from its values: (field name, its class, (name, type)
# of each field it keeps in uids)
_Fill = tuple[str, type[pydantic.BaseModel], tuple[tuple[str, type], ...]]
_FILL_TYPES = frozenset({str, int, bool})  # (dumped as themselves in json mode)


def _fill_of(cls: type, name: str, excluded: tp.Any) -> _Fill | None:
    """The fill of field ``name`` (see ``_ClassFacts.uid_dump_plan``), or None when its
    dump may be other than its kept fields' values: a field annotated with one model
    class whose kept fields are plain str/int/bool fields, with no serializer, alias-free
    exclusion, computed field or constraint anywhere."""
    field = cls.__pydantic_fields__[name]  # type: ignore[attr-defined]
    sub = field.annotation
    if not isinstance(excluded, set) or not _dumped_as_is(cls, name, field, sub):
        return None
    if not (isinstance(sub, type) and issubclass(sub, pydantic.BaseModel)):
        return None
    if sub.__pydantic_root_model__ or sub.model_computed_fields:
        return None
    if sub.__pydantic_decorators__.model_serializers or sub.model_config.get("json_encoders"):
        return None
    kept = []
    for sub_name, sub_field in sub.__pydantic_fields__.items():
        if sub_name in excluded:
            continue
        kind = sub_field.annotation
        if kind not in _FILL_TYPES or not _dumped_as_is(sub, sub_name, sub_field, kind):
            return None
        kept.append((sub_name, kind))
    return name, sub, tuple(kept)


def _dumped_as_is(cls: type, name: str, field: pydantic.fields.FieldInfo, kind: tp.Any) -> bool:
    """Whether a field is in its model's dump, dumped by its annotation's own serializer."""
    return (
        isinstance(kind, type)
        and not field.metadata
        and not field.exclude
        and getattr(field, "exclude_if", None) is None
        and not _has_serializer(cls, name, field)
    )


def _filled(model: pydantic.BaseModel, fills: tuple[_Fill, ...]) -> dict[str, tp.Any] | None:
    """The uid dumps of the sub-models of ``fills``, as pydantic would make them (None:
    a value that is not what the plan expects, pydantic dumps then)."""
    values = model.__dict__
    out = {}
    for name, cls, kept in fills:
        sub: tp.Any = values.get(name)
        if type(sub) is not cls or sub.__pydantic_extra__:
            return None
        held = sub.__dict__
        dump = {}
        for sub_name, kind in kept:
            value = held.get(sub_name, _NO_DEFAULT)
            if type(value) is not kind:
                return None
            dump[sub_name] = value
        out[name] = dump
    return out


def _json_default(default: tp.Any) -> tp.Any:
    if isinstance(default, pydantic.BaseModel):
        return _NO_DEFAULT  # compared through export_model instead (never equal to a dump)
    try:
        return pydantic_core.to_jsonable_python(default)
    except Exception:  # an exotic default: fall back to python equality
        return default


_ANALYSING: set[type] = set()


def _field_facts(cls: type, name: str, field: pydantic.fields.FieldInfo) -> _FieldFacts:
    annotation = field.annotation
    models: list[tp.Any] = []
    ambiguous: str | None = None
    contained: tuple[tp.Any, ...] = ()  # (the models named anywhere in the annotation)
    if isinstance(annotation, type):  # a class, the common case: no union, no container
        if issubclass(annotation, pydantic.BaseModel):
            models = [annotation]
            ambiguous = _ambiguity(cls, name, field, models)  # (pydantic.BaseModel itself)
            contained = (annotation,)
    else:
        models = _model_types(annotation)
        ambiguous = _ambiguity(cls, name, field, models)
        contained = annotated_models(annotation)
    required = field.is_required()
    default = _NO_DEFAULT
    if not required:
        # (read as is: get_default() would deep-copy it, e.g. a whole infra default)
        default = field.default
        if field.default_factory is not None:
            if getattr(field, "default_factory_takes_validated_data", False):
                default = _NO_DEFAULT  # depends on the other fields: never pruned
            else:
                default = field.get_default(call_default_factory=True, validated_data={})
    model_cls: type[pydantic.BaseModel] | None = None
    if len(models) == 1 and isinstance(models[0], type) and models[0] is not pydantic.BaseModel:
        model_cls = models[0]
    dump_exclude: tp.Any = None
    if model_cls is not None and model_cls not in _ANALYSING:
        sub = class_facts(model_cls)
        if sub.uid_fields is not None and "." not in sub.uid_fields:
            dump_exclude = set(model_cls.__pydantic_fields__) - sub.uid_fields or None
        elif sub.uid_fields is None:
            _ANALYSING.add(cls)  # (recursive models: no spec below a class being analysed)
            try:
                dump_exclude = sub.uid_dump_exclude
            finally:
                _ANALYSING.discard(cls)
    # a serializer may map another value onto the default's json: compare python values
    # then (as pydantic's exclude_defaults does), never the dumps
    compare_json = not required and not _has_serializer(cls, name, field)
    facts = _FieldFacts(
        name=name,
        required=required,
        default=default,
        default_json=_json_default(default) if compare_json else _NO_DEFAULT,
        keep=_kept_fields(field),
        plain=_plain_annotation(annotation),
        model_cls=model_cls,
        dump_exclude=dump_exclude,
        ambiguous=ambiguous,
        models=tuple(models),
        named_models=contained,
        annotation=annotation,
    )
    # (also beside a class it names, ``Net | tp.Any``: a model of another class is unnamed)
    facts.anything = _admits_anything(annotation) or (
        not facts.plain and _hides_classes(annotation)  # (set[str]: no model there)
    )
    return facts


def _admits_anything(annotation: tp.Any, depth: int = 0) -> bool:
    """Whether an annotation holds ``tp.Any`` or ``object`` (at any depth: ``list[tp.Any]``),
    where a value's class is named by nothing: also a container without item types
    (``list``, ``dict``, ``tp.Sequence``: pydantic reads them as of ``tp.Any``) and a type
    variable without bound nor constraints (a generic model used bare); ``Self``: not
    looked at."""
    if annotation is tp.Any or annotation is object:
        return True
    if isinstance(annotation, tp.TypeVar):
        if annotation.__constraints__:
            return any(_admits_anything(arg, depth + 1) for arg in annotation.__constraints__)
        bound = annotation.__bound__
        return bound is None or _admits_anything(bound, depth + 1)
    if isinstance(annotation, type):
        return annotation in _UNTYPED_CONTAINERS
    if depth > 8 or tp.get_origin(annotation) is tp.Literal:
        return False
    args = tp.get_args(annotation)
    if not args and tp.get_origin(annotation) in _UNTYPED_CONTAINERS:
        return True  # (tp.List, tp.Dict: no item type)
    return any(_admits_anything(arg, depth + 1) for arg in args)


def _hides_classes(annotation: tp.Any, depth: int = 0) -> bool:
    """Whether an annotation holds a set, a dataclass or ``pydantic.BaseModel`` inside a
    container: places where a model's uid export names its values, not its class (a set
    and a dataclass keep its defaults, but two classes with the same values share them),
    looked into by _check_no_unnamed_model."""
    if annotation is pydantic.BaseModel:
        return depth > 0  # (a field annotated so is refused: see _ambiguity)
    if isinstance(annotation, type):
        return annotation in _SETS or dataclasses.is_dataclass(annotation)
    if depth > 8 or tp.get_origin(annotation) is tp.Literal:
        return False
    origin = tp.get_origin(annotation)
    if origin in _SETS or (isinstance(origin, type) and dataclasses.is_dataclass(origin)):
        return True
    return any(_hides_classes(arg, depth + 1) for arg in tp.get_args(annotation))


_SETS = frozenset({set, frozenset, collections.abc.Set, collections.abc.MutableSet, tp.AbstractSet})


# containers whose items' classes a bare annotation names not (sets: see _check_no_unnamed_model)
_UNTYPED_CONTAINERS = frozenset(
    {
        list,
        tuple,
        dict,
        collections.OrderedDict,
        collections.abc.Sequence,
        collections.abc.MutableSequence,
        collections.abc.Mapping,
        collections.abc.MutableMapping,
        collections.abc.Iterable,
        collections.abc.Collection,
    }
)


class UnnamedModel(RuntimeError):
    """A model held where no annotation names its class (see _check_no_unnamed_model):
    refused wherever it is, also in a model held by a dataclass (whose other refusals
    fall back to its dump, see _held_export)."""


_ANYTHING = "where its annotation admits anything (tp.Any, object, a bare list or dict, a TypeVar)"
_IN_SET = "in a set whose annotation names not its class (a set holds its models by their values)"


def _check_no_unnamed_model(
    value: tp.Any,
    cls: type,
    name: str,
    here: tp.Any,
    named: tuple[type, ...] = (),
    depth: int = 0,
    where: str = _ANYTHING,
) -> None:
    """Refuse a model held where the annotation admits anything (``tp.Any``, ``object``,
    ``list[tp.Any]``...): its uid export names its values that are not at its class's
    defaults, and not its class, so ``A()`` and ``B()`` (both ``{}``), or ``A(x=1)`` and
    ``B(x=1)`` whose other defaults differ, shared a uid (one's result returned for the
    other). A class that names itself in its export (DiscriminatedModel, an override
    hook) is fine, and so is a model of a class the annotation names at its place
    (``here``, the annotation there, None where nothing is named: ``Net | tp.Any``, not
    ``Net`` in a dict held there, which a plain dict of its values would share a uid with)
    or a strict subclass of a class it names anywhere (``named``: its uid names its
    class). Models in a set or a dataclass keep their defaults in a uid, but not their
    class either: looked into the same way (a dataclass's fields by their annotations;
    ``pydantic.BaseModel`` names no class)."""
    if type(value) in _NO_BOOLS or type(value) is bool or depth > 50:
        return
    if isinstance(value, pydantic.BaseModel):
        if dropped_from_parent(value):
            return  # (in no uid: "." excluded)
        at = _models_at(here)
        # (classes that keep themselves out of uids ("."): not told apart by a uid)
        counted = [m for m in at if class_facts(m).drops_itself is not True]
        if depth and len(counted) > 1 and _undiscriminated_union(here, top=False):
            # (a dataclass field's union: a model field's is refused by _ambiguity)
            raise UnnamedModel(
                f"Field {cls.__name__}.{name} holds a pydantic model ({type(value).__name__}) "
                f"{where}, a union of several models ({', '.join(m.__name__ for m in counted)}) "
                "without a discriminator: the uid would be ambiguous (two configs differing "
                "only by the class of that model would share a cache folder). Discriminate "
                "the union, e.g. tp.Annotated[A | B, pydantic.Field(discriminator='name')]"
            )
        if (
            isinstance(value, at)
            or _subclass_of(type(value), named)
            or _with_class({}, value) == {}
        ):
            return  # (its place or its export names it)
        if value.__pydantic_root_model__:  # (exported as its root: what that holds counts)
            root = tp.cast(tp.Any, value).root
            _check_no_unnamed_model(root, cls, name, None, named, depth + 1, where)
            return
        if _dumped_whole(value):
            return  # (its serializer's dump, defaults included, is its uid: as it chose)
        kind = type(value).__name__
        if where == _ANYTHING and pydantic.BaseModel in _members(here):
            where = "where its annotation names pydantic.BaseModel, which names no class"
        # (held in a list or dict of the field: the annotation of a container of them)
        example = f"{kind} | None" if depth == 0 else f"list[{kind}] or dict[str, {kind}]"
        if where == _IN_SET:
            example = f"set[{kind}]"
        whole = where == _IN_SET or where.startswith(_IN_DATACLASS)  # (defaults kept)
        what = (
            "values (defaults included)" if whole else "values that are not at its class's defaults"
        )
        same = "with the same values" if whole else "at its defaults"
        annotate = (
            "Annotate that dataclass field with the model class"
            if where.startswith(_IN_DATACLASS)
            else f"Annotate the field with the model class (e.g. {name}: {example}"
            "; its uid stays the same)"
        )
        raise UnnamedModel(
            f"Field {cls.__name__}.{name} holds a pydantic model ({kind}) {where}: a uid names "
            f"that model's {what}, and not its class, so {kind}() and another class {same} "
            f"would share a uid (and a cache folder). {annotate}, or with a "
            "discriminated union of the classes it may hold (or exca.helpers."
            "DiscriminatedModel), or keep the field out of the uid (_exclude_from_cls_uid)"
        )
    if isinstance(value, dict):
        items: tp.Iterable[tp.Any] = value.values()
    elif isinstance(value, list | tuple):
        items = value
    elif isinstance(value, set | frozenset):
        where = _IN_SET
        items = value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        _check_dataclass(value, cls, name, depth, here)
        return
    else:
        return
    inner = _items_annotation(here, value)
    for sub in items:
        if type(sub) not in _PLAIN_ITEMS:  # (a long list of numbers: one test each)
            _check_no_unnamed_model(sub, cls, name, inner, named, depth + 1, where)


_IN_DATACLASS = "in the field "


def _check_dataclass(value: tp.Any, cls: type, name: str, depth: int, here: tp.Any) -> None:
    """_check_no_unnamed_model for the fields of a dataclass instance, each by its own
    annotation (the model classes it names: its strict subclasses get their class in a
    uid); in a generic dataclass, a type variable is what the annotation where it is held
    (``here``) gives it (``Box[Net]``), else ``Any``, as its export has it (a model in a
    bare ``Box`` names no class: ``Box(A())`` and ``Box(B())`` shared a uid). Not looked
    into: a dataclass dumped by a serializer of its own."""
    kind = type(value)
    places = _DATACLASS_PLACES.get((kind, cls))
    if places is None:
        places = _dataclass_places(kind, cls)
    for key, hint, named, where in places:
        sub = getattr(value, key, None)
        if type(sub) in _PLAIN_ITEMS:
            continue
        if hint is _GENERIC:  # (resolved where it is held: see _bound_facts)
            hint = _bound_facts(kind, annotated_dataclasses(here), cls).hints[key]
            if _plain_annotation(hint):
                continue
            named = annotated_models(hint)
            if hint is not tp.Any and hint is not object:
                where += f" annotated {_type_name(hint)}"
        _check_no_unnamed_model(sub, cls, name, hint, named, depth + 1, where)


_GENERIC: tp.Any = object()  # (a dataclass field whose annotation holds a type variable)


# (dataclass, model class holding it) -> its fields that may hold a model (see below)
_DATACLASS_PLACES: dict[tuple[type, type], list[tuple[str, tp.Any, tp.Any, str]]] = {}


def _dataclass_places(kind: type, cls: type) -> list[tuple[str, tp.Any, tp.Any, str]]:
    """(name, annotation, model classes it names, how a refusal says its place) of the
    fields of a dataclass _check_dataclass looks into (memoized): none for a dataclass
    dumped by a serializer of its own; not those that hold only plain values. Those whose
    annotation holds a type variable: _GENERIC (resolved where the dataclass is held)."""
    places: list[tuple[str, tp.Any, tp.Any, str]] = []
    if not custom_schema(kind):
        for key, hint in _dataclass_facts(kind, cls).hints.items():
            where = f"{_IN_DATACLASS}{kind.__name__}.{key} of a dataclass"
            if _typevar_in(hint):
                places.append((key, _GENERIC, (), where))
                continue
            if _plain_annotation(hint):
                continue
            if hint is not tp.Any and hint is not object:
                where += f" annotated {_type_name(hint)}"
            places.append((key, hint, annotated_models(hint), where))
    if len(_DATACLASS_PLACES) >= 10_000:
        _DATACLASS_PLACES.clear()
    _DATACLASS_PLACES[kind, cls] = places
    return places


def _type_name(hint: tp.Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "tp.")


def _members(here: tp.Any) -> tuple[tp.Any, ...]:
    """The members of a union annotation (itself if none), ``Annotated`` unwrapped."""
    while tp.get_origin(here) is tp.Annotated:
        here = tp.get_args(here)[0]
    if tp.get_origin(here) in (tp.Union, types.UnionType):
        return tuple(m for member in tp.get_args(here) for m in _members(member))
    return (here,)


def _models_at(here: tp.Any) -> tuple[type, ...]:
    """The model classes an annotation names at its top (``Net | tp.Any``: Net)."""
    if here is None:
        return ()
    return tuple(
        m
        for m in _members(here)
        if isinstance(m, type) and issubclass(m, pydantic.BaseModel) and m is not pydantic.BaseModel
    )


_MAPPINGS = frozenset(
    {dict, collections.OrderedDict, collections.abc.Mapping, collections.abc.MutableMapping}
)
_SEQUENCES = frozenset({list, tuple, collections.abc.Sequence, collections.abc.MutableSequence})


def _items_annotation(here: tp.Any, value: tp.Any) -> tp.Any:
    """The annotation of the items of a dict, list or tuple held where ``here`` is
    annotated (a union of those its container members give them), or None where none
    names them (the container is held by a tp.Any: its items are named by nothing)."""
    if here is None or here is tp.Any or here is object:
        return None
    mapping = 1 if isinstance(value, dict) else 2 if isinstance(value, set | frozenset) else 0
    try:
        return _ITEMS_ANNOTATIONS[here, mapping]
    except KeyError:
        pass
    except TypeError:  # (an unhashable annotation: not remembered)
        return _items_of(here, mapping)
    if len(_ITEMS_ANNOTATIONS) >= 10_000:
        _ITEMS_ANNOTATIONS.clear()
    found = _ITEMS_ANNOTATIONS[here, mapping] = _items_of(here, mapping)
    return found


_ITEMS_ANNOTATIONS: dict[tuple[tp.Any, int], tp.Any] = {}


def _items_of(here: tp.Any, mapping: int) -> tp.Any:
    """_items_annotation, computed (``mapping``: 1 of a dict's values, 2 of a set's items,
    0 of a list's)."""
    found: list[tp.Any] = []
    for member in _members(here):
        origin = tp.get_origin(member) or member
        args = tp.get_args(member)
        if mapping == 1 and origin in _MAPPINGS:
            found.append(args[1] if len(args) == 2 else tp.Any)
        elif mapping == 2 and origin in _SETS:
            found.append(args[0] if args else tp.Any)
        elif mapping == 0 and origin in _SEQUENCES:
            if origin is tuple and len(args) != 1 and not (len(args) == 2 and args[1] is ...):
                found.extend(args)  # (tuple[A, B]: either; tuple[()]: none)
            elif args:
                found.append(args[0])
    if not found or any(f is tp.Any or f is object for f in found):
        return None  # (items anything may be: named by nothing)
    return found[0] if len(found) == 1 else tp.Union[tuple(found)]  # noqa: UP007


_PLAIN_ITEMS = frozenset({str, int, float, bool, type(None)})


def _check_field(value: tp.Any, field: _FieldFacts, cls: type) -> None:
    """_check_no_unnamed_model for the value of a field admitting anything."""
    named = tuple(m for m in (*field.models, *field.contained) if isinstance(m, type))
    if type(value) in _PLAIN_ITEMS:
        return  # (the common case: nothing to look into)
    here = cls.__pydantic_fields__[field.name].annotation  # type: ignore[attr-defined]
    _check_no_unnamed_model(value, cls, field.name, here, named)


def _check_held_fields(model: pydantic.BaseModel, depth: int = 0) -> None:
    """_check_no_unnamed_model for the fields of a model whose dump is its uid (refused
    as a sub-config, held by a dataclass: see _held_export), and of the models its
    fields hold (their checks, as sub-configs, were not made either)."""
    fields = type(model).__pydantic_fields__
    for key, value in model.__dict__.items():
        if type(value) in _PLAIN_ITEMS or key not in fields:
            continue
        hint = fields[key].annotation
        if _admits_anything(hint) or _hides_classes(hint):
            _check_no_unnamed_model(value, type(model), key, hint, annotated_models(hint))
        if depth < 50:
            subs = [value] if isinstance(value, pydantic.BaseModel) else _models_in(value)
            for sub in subs:
                _check_held_fields(sub, depth + 1)


def _dumped_whole(model: pydantic.BaseModel) -> bool:
    """Whether a model's uid is its model_serializer's dump as it is (not a dict of its
    fields: see _renamed), never pruned of its defaults (its serializer names it)."""
    facts = class_facts(type(model))
    if not facts.has_serializer:
        return False
    return _renamed(json_dump(model), facts, True, _exclusions(model, facts))


@functools.lru_cache(maxsize=1024)
def _root_annotation(cls: type) -> tuple[bool, tp.Any, tuple[type, ...]]:
    """Whether the root of a RootModel class admits anything, its annotation and the
    classes it names."""
    hint = cls.__pydantic_fields__["root"].annotation  # type: ignore[attr-defined]
    anything = _admits_anything(hint) or _hides_classes(hint)
    return anything, hint, tuple(annotated_models(hint))


def _check_extra(model: pydantic.BaseModel, key: str, value: tp.Any) -> None:
    """_check_no_unnamed_model for a value given beyond the fields (``extra="allow"``),
    which no annotation names unless ``__pydantic_extra__`` is annotated."""
    anything, here, named = _extra_annotation(type(model))
    if anything:
        where = "given beyond the fields (extra='allow'), where no annotation names its class"
        _check_no_unnamed_model(value, type(model), key, here, named, where=where)


@functools.lru_cache(maxsize=1024)
def _extra_annotation(cls: type) -> tuple[bool, tp.Any, tuple[type, ...]]:
    """Whether the extras of a class admit anything, the annotation of each (None: not
    annotated) and the classes they name."""
    try:
        hint = tp.get_type_hints(cls).get("__pydantic_extra__")
    except Exception:  # (unresolvable names: as if not annotated)
        hint = None
    if hint is None:
        return True, None, ()
    value = _items_annotation(hint, {})  # (dict[str, X]: X)
    return _admits_anything(hint) or _hides_classes(hint), value, tuple(annotated_models(hint))


def class_facts(cls: type[pydantic.BaseModel]) -> _ClassFacts:
    facts = _FACTS.get(cls)
    if facts is not None:
        if not AUTORELOADING[0] or facts.fields_of is cls.__pydantic_fields__:
            return facts
        forget_class(cls)  # (updated in place since, e.g. by IPython's %autoreload)
    seen_class(cls)
    static: frozenset[str] | None = frozenset()
    raw = _declared_exclusions(cls)
    if callable(raw) or isinstance(raw, classmethod | staticmethod):
        static = None
    else:
        static = _validate_exclusions(cls, raw)
    uid_fields = getattr(cls, MODEL_UID_FIELDS_ATTR, None)
    facts = _ClassFacts(
        cls=cls,
        static_exclusions=static,
        uid_fields=None if uid_fields is None else frozenset(uid_fields),
        has_extra_config="extra" in cls.model_config,
        has_override=callable(getattr(cls, OVERRIDE_HOOK, None)),
        has_prefix=callable(getattr(cls, PREFIX_HOOK, None)),
        has_serializer=bool(cls.__pydantic_decorators__.model_serializers),
    )
    _FACTS[cls] = facts
    return facts


# what other modules memoize per class, to forget when a class is updated in place
CLASS_FORGETTERS: list[tp.Callable[[type], object]] = []
# whether IPython's autoreload (which updates classes in place) was taught (autoreload.py):
# until then, the memos of a class are not checked (a cost on every uid)
AUTORELOADING = [False]


# the last class of each name (module, qualified name) whose facts were taken: a class
# defined again under its name (a notebook cell run again, a factory function's class)
# has the memos of the class it replaces forgotten. (Kept, each run of a cell kept its
# class alive for good, with all that hangs on it: ~20 kB a run.)
_BY_NAME: dict[tuple[str, str], weakref.ref[type]] = {}
# (classes forgotten for a newer namesake: used again, they do not evict the newer one)
REPLACED: weakref.WeakSet[type] = weakref.WeakSet()


def seen_class(cls: type) -> None:
    """Note a class whose facts are taken now; forget the one it replaces by name."""
    name = (cls.__module__, cls.__qualname__)
    previous = _BY_NAME.get(name)
    old = previous() if previous is not None else None
    if old is cls or (old is not None and cls in REPLACED):
        return
    _BY_NAME[name] = weakref.ref(cls)
    if old is not None:
        REPLACED.add(old)
        forget_class(old)


def forget_class(cls: type) -> None:
    """Forget what was computed of a class (its fields changed: IPython's %autoreload
    updates an edited class in place, its new fields were out of the uids)."""
    _FACTS.pop(cls, None)
    classes_changed()
    for forget in CLASS_FORGETTERS:
        forget(cls)


# what other modules memoize that depends on the defaults of any class (not only those
# of a config's own class), to forget when a class is updated in place
DEFAULTS_FORGETTERS: list[tp.Callable[[], object]] = []


def classes_changed() -> None:
    """Forget what depends on the defaults of any class (a class updated in place: what
    concerns every class whose defaults hold its instances is stale too; autoreload.py
    calls this for every class %autoreload updates): the exports of field defaults (kept,
    an Inner edited in its module left the export of ``Outer.inner``'s default as it was:
    a value at Inner's new defaults read as Outer's default, the cached result of another
    config), and DEFAULTS_FORGETTERS'."""
    _DEFAULT_EXPORTS.clear()
    _DEFAULT_VALUE_EXPORTS.clear()
    for forget in DEFAULTS_FORGETTERS:
        forget()


def _declared_exclusions(cls: type) -> tp.Any:
    """The ``_exclude_from_cls_uid`` of the closest class declaring one: a list, or a
    method. (pydantic keeps a list as a private attribute, inherited as the same object:
    a subclass's method must win over a parent's list, and a subclass's list too.)"""
    for klass in cls.__mro__:
        own = klass.__dict__
        if EXCLUDE_ATTR in own:
            return own[EXCLUDE_ATTR]
        private = own.get("__private_attributes__", {}).get(EXCLUDE_ATTR)
        if private is not None and all(
            private is not getattr(base, "__private_attributes__", {}).get(EXCLUDE_ATTR)
            for base in klass.__bases__
        ):
            return private.default
    return ()


def _validate_exclusions(cls: type, raw: tp.Any) -> frozenset[str]:
    if isinstance(raw, str) or not isinstance(raw, list | tuple | set | frozenset):
        raise TypeError(
            f"{cls.__name__}.{EXCLUDE_ATTR} must be a list/tuple/set of field names "
            f"(or a method returning one), got {raw!r}"
        )
    names = frozenset(raw)
    fields = cls.__pydantic_fields__  # type: ignore[attr-defined]
    unknown = {name for name in names if name not in fields and name != "."}
    if unknown:
        raise ValueError(
            f"{cls.__name__}.{EXCLUDE_ATTR} names unknown fields {sorted(unknown)}; "
            f"fields are {sorted(cls.model_fields)}"  # type: ignore[attr-defined]
        )
    return names


def _exclusions(model: pydantic.BaseModel, facts: _ClassFacts) -> frozenset[str]:
    if facts.static_exclusions is not None:
        return facts.static_exclusions
    raw = getattr(model, EXCLUDE_ATTR)
    if callable(raw):
        raw = raw()
    return _validate_exclusions(type(model), raw)


def dropped_from_parent(model: pydantic.BaseModel) -> bool:
    """True when the model excludes itself (``"."``) from its parent's uid."""
    facts = class_facts(type(model))
    drops = facts.drops_itself
    if drops is not None:
        return drops
    return "." in _exclusions(model, facts)


# how pydantic reports a KeyboardInterrupt raised in a serializer function
_INTERRUPTED = re.compile(r"Error calling function `[^`]*`: KeyboardInterrupt\b")


def export_model(
    model: pydantic.BaseModel,
    uid: bool = False,
    exclude_defaults: bool = False,
    exclude: tp.Iterable[str] = (),
    optional: tp.Iterable[str] = (),
    skipped: list[tuple[str, ...]] | None = None,
) -> dict[str, tp.Any]:
    """The config of a model as plain (json-mode) nested dicts.

    uid=True drops what does not define the result (see module docstring);
    exclude_defaults=True drops values equal to their default.
    ``exclude`` names top-level fields to drop too (the cache-uid exclusions).
    A value kept out of uids (these, ``_exclude_from_cls_uid``, and the ``optional``
    paths in a uid=False export) is left out when it has no json form (a logger, a
    callback); its path is then added to ``skipped``.
    """
    return export_with_keys(model, uid, exclude_defaults, exclude, optional, skipped)[0]


def export_with_keys(
    model: pydantic.BaseModel,
    uid: bool = False,
    exclude_defaults: bool = False,
    exclude: tp.Iterable[str] = (),
    optional: tp.Iterable[str] = (),
    skipped: list[tuple[str, ...]] | None = None,
) -> tuple[dict[str, tp.Any], bool]:
    """``export_model``, and whether every key of the export is a field name (then no key
    holds a "." that a ConfDict would split: ``ConfDict.uid_of`` needs no check)."""
    optional = tuple(optional)  # (read twice)
    spec = fills = None
    if uid:
        facts = class_facts(type(model))
        spec = facts.uid_dump_exclude
        # (the plan only pays once made: a process's first cache hit makes two exports, its
        # uid's and its full-uid.yaml's, which pydantic dumps quicker than the plan's
        # analysis, run cold then, takes: ~60k instructions)
        if facts.unplanned_exports < _UNPLANNED_EXPORTS:
            facts.unplanned_exports += 1
            plan = None
        else:
            plan = facts.uid_dump_plan
        if plan is not None:
            fills = _filled(model, plan[1])
            if fills is not None:
                spec = plan[0]
    drop = _exclusion_tree(exclude) if exclude else None  # (none: the common case)
    dumped = json_dump(model, spec, _exclusion_tree(optional) if not uid else drop, skipped)
    if fills is not None:
        dumped.update(fills)
    exporter = _Exporter(uid=uid, exclude_defaults=exclude_defaults)
    if not uid:
        exporter.kept_out = frozenset(optional)
    out = exporter.model(model, dumped, keep=(), drop=drop)
    if not isinstance(out, dict):
        raise TypeError(
            f"{type(model).__name__} serializes itself to {type(out).__name__} "
            f"({out!r:.60}): a config must dump to a dict (its model_serializer decides)"
        )
    return out, exporter.field_keys_only


# An exclusion tree: name -> None (drop the whole value) or the tree of what to drop in it.
_Drops = dict[str, tp.Any]


def _exclusion_tree(names: tp.Iterable[str]) -> _Drops | None:
    """``["a", "b.c", "b.d"]`` -> ``{"a": None, "b": {"c": None, "d": None}}``."""
    tree: _Drops = {}
    for name in names:
        node = tree
        *parents, last = name.split(".")
        for part in parents:
            sub = node.setdefault(part, {})
            if sub is None:
                break  # a parent is dropped whole already
            node = sub
        else:
            node[last] = None
    return tree or None


def _without(value: tp.Any, drop: _Drops) -> tp.Any:
    """A copy of an exported value without the paths of an exclusion tree."""
    if isinstance(value, dict):
        out = type(value)() if isinstance(value, collections.OrderedDict) else {}
        for key, sub in value.items():
            if key in drop:
                if drop[key] is None:
                    continue
                sub = _without(sub, drop[key])
            out[key] = sub
        return out
    if isinstance(value, list):
        return [
            sub if str(i) not in drop else _without(sub, drop[str(i)])
            for i, sub in enumerate(value)
            if not (str(i) in drop and drop[str(i)] is None)
        ]
    return value


def export_field(parent: pydantic.BaseModel, name: str) -> dict[str, tp.Any]:
    """The config export of the sub-model in field ``name`` of ``parent``, as it would
    appear in the parent's export if it were not at its field default (defaults pruned,
    a discriminator kept)."""
    value = parent.__dict__[name]
    field = next(f for f in class_facts(type(parent)).fields if f.name == name)
    dumped = value.model_dump(mode="json", warnings=False, by_alias=False)
    return _Exporter(uid=False, exclude_defaults=True).model(value, dumped, keep=field.keep)


_DUMP_ERRORS = (pydantic_core.PydanticSerializationError, UnicodeDecodeError)


# DiscriminatedModel's serializer given a plain value (see discriminated._raw_default_message)
_RAW_DEFAULT = re.compile(
    r"(a field typed as a DiscriminatedModel holds .*validate_default=True\))"
)


class Unexportable(TypeError):
    """A config value with no json form (``where``: its dotted path, with the class)."""

    def __init__(self, message: str, where: str, error: Exception) -> None:
        super().__init__(message)
        self.where = where
        self.error = error


def export_value(value: tp.Any) -> tp.Any:
    """The uid export of a value on its own, defaults kept (a field's default: what a
    config left at it holds), or ``_NO_DEFAULT`` when it has none."""
    try:
        if isinstance(value, pydantic.BaseModel):
            return export_model(value, uid=True)
        dumped = pydantic_core.to_jsonable_python(value)
        return _Exporter(uid=True, exclude_defaults=False).value(value, dumped)
    except Exception:  # (only used to name old values in a message)
        return _NO_DEFAULT


_MODEL_DUMP = pydantic.BaseModel.model_dump


def json_dump(
    model: pydantic.BaseModel,
    exclude: tp.Any = None,
    drop: _Drops | None = None,
    skipped: list[tuple[str, ...]] | None = None,
    **kwargs: tp.Any,
) -> tp.Any:
    """``model.model_dump(mode="json")`` for a config export. A value that has no json form
    is left out when it is kept out of uids (``_exclude_from_cls_uid``, an infra's
    settings, the paths of ``drop``; its path added to ``skipped``): a runtime object (a
    logger, a callback) need not be config. Any other is a TypeError naming its path."""
    try:
        if not kwargs and type(model).model_dump is _MODEL_DUMP:
            # (what pydantic's model_dump calls, without its keyword wrapper: ~0.5 us of
            # a first uid; a class overriding model_dump is asked through it)
            return model.__pydantic_serializer__.to_python(
                model, mode="json", warnings=False, by_alias=False, exclude=exclude
            )
        return model.model_dump(
            mode="json", warnings=False, by_alias=False, exclude=exclude, **kwargs
        )
    except _DUMP_ERRORS as e:  # (the error path only: the values are looked at one by one)
        if _INTERRUPTED.search(str(e)):  # (a Ctrl-C during a serializer: pydantic wraps it)
            raise KeyboardInterrupt from e
        error: Exception = e
        optional: list[tuple[str | int, ...]] = []
        failing: list[tuple[str | int, ...]] = []
        init_only: list[tuple[str | int, ...]] = []  # (not config: left out, not reported)
        _unserializable(model, drop, (), optional, failing, init_only)
        if (optional or init_only) and not failing:
            try:
                dumped = model.model_dump(
                    mode="json",
                    warnings=False,
                    by_alias=False,
                    exclude=_merged_exclude(exclude, optional + init_only),
                    **kwargs,
                )
            except _DUMP_ERRORS as again:
                error = again
            else:
                if skipped is not None:
                    skipped.extend(tuple(str(p) for p in path) for path in optional)
                return dumped
        where = ".".join(str(p) for p in failing[0]) if failing and failing[0] else ""
        where = f"{type(model).__name__}.{where}" if where else type(model).__name__
        raw = _RAW_DEFAULT.search(str(error))
        if raw:  # (a family's field holding its unvalidated default: the hint is its own)
            raise Unexportable(
                f"Cannot export {where} into a config (uid, yaml files): {raw.group(1)}",
                where,
                error,
            ) from error
        hint = _unvalidated_default(model, failing[0] if failing else ()) or (
            "bytes are exported as utf-8 text: set model_config = pydantic.ConfigDict("
            "ser_json_bytes='base64', val_json_bytes='base64') (both: config.yaml and "
            "clone_obj read the base64 text back) or hold them as str"
            if isinstance(error, UnicodeDecodeError)
            else "annotate the field with a type pydantic serializes (convert numpy "
            "scalars and arrays held by an Any field with float()/int()/.tolist()); a "
            "runtime object that does not change results (a logger, a callback) can be kept "
            "out of the uid (_exclude_from_cls_uid, or the method's exclude_from_cache_uid: "
            "then it needs no json form) or out of every config (pydantic.Field(exclude=True))"
        )
        raise Unexportable(
            f"Cannot export {where} into a config (uid, yaml files): "
            f"{error}. Config values must have a json form: {hint}",
            where,
            error,
        ) from error


def _is_default(held: tp.Any, field: pydantic.fields.FieldInfo) -> bool:
    """Whether a field holds its default (pydantic copies a list or dict default; a
    factory makes a new one each time)."""
    default = field.default
    if held is default:
        return True
    if field.default_factory is not None:
        if getattr(field, "default_factory_takes_validated_data", False):
            return False
        try:
            default = field.default_factory()  # type: ignore[call-arg]
        except Exception:
            return False
    if type(held) is not type(default):
        return False
    try:
        return bool(held == default)
    except Exception:  # (arrays inside: no single truth value)
        return False


def _exports_once_validated(held: tp.Any, field: pydantic.fields.FieldInfo) -> bool:
    """Whether a default, validated by its field's annotation, has a json form (a numpy
    int for an ``int``: yes; an arbitrary type such as a numpy dtype: no, validating the
    default would not help)."""
    try:
        adapter: pydantic.TypeAdapter[tp.Any] = pydantic.TypeAdapter(field.annotation or tp.Any)
        pydantic_core.to_jsonable_python(adapter.validate_python(held))
    except Exception:
        return False
    return True


def _unvalidated_default(model: tp.Any, path: tuple[str | int, ...]) -> str | None:
    """A hint when the value that has no json form is in a field's default, as written in
    the class (pydantic validates given values, not defaults: ``n: int = np.prod(shape)``
    holds a numpy int, which the field's annotation would have converted)."""
    value = model
    for part in path:
        if isinstance(value, pydantic.BaseModel) and isinstance(part, str):
            field = type(value).model_fields.get(part)
            held = value.__dict__.get(part)
            if (
                field is not None
                and held is not None
                and _is_default(held, field)
                and _exports_once_validated(held, field)
            ):
                return (
                    f"the default of {type(value).__name__}.{part} ({held!r}) is used as "
                    "written in the class, not validated by pydantic: write it as a plain "
                    "value (float(...), int(...), .tolist()), or declare the field with "
                    "pydantic.Field(<default>, validate_default=True)"
                )
            value = held
        elif isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list | tuple) and isinstance(part, int) and part < len(value):
            value = value[part]
        else:
            return None
    return None


def _unserializable(
    value: tp.Any,
    drop: _Drops | None,
    path: tuple[str | int, ...],
    optional: list[tuple[str | int, ...]],
    failing: list[tuple[str | int, ...]],
    init_only: list[tuple[str | int, ...]],
) -> None:
    """The paths of the values in ``value`` whose json dump fails: in ``optional`` those
    kept out of uids (they can be left out), in ``init_only`` the init=False fields of
    dataclasses (not config: left out of every export), in ``failing`` the others."""
    before = len(optional) + len(failing) + len(init_only)
    if (
        dataclasses.is_dataclass(value)
        and not isinstance(value, type)
        and not custom_schema(type(value))
    ):
        skipped = init_only_fields(type(value))
        for field in dataclasses.fields(value):
            sub = getattr(value, field.name, None)
            try:
                pydantic_core.to_jsonable_python(sub)
            except _DUMP_ERRORS:
                subdrop = drop.get(field.name, {}) if drop is not None else {}
                where = (*path, field.name)
                if field.name in skipped:
                    init_only.append(where)
                elif subdrop is None:  # (kept out of the uid)
                    optional.append(where)
                else:
                    _unserializable(sub, subdrop or None, where, optional, failing, init_only)
            except Exception:  # (a value this probe cannot tell: left to the field)
                pass
        if len(optional) + len(failing) + len(init_only) == before:
            failing.append(path)
        return
    if isinstance(value, pydantic.BaseModel):
        facts = class_facts(type(value))
        excluded = _exclusions(value, facts)
        extra = value.__pydantic_extra__ or {}
        for name in (*type(value).model_fields, *extra):
            try:
                value.model_dump(mode="json", include={name}, warnings=False)
            except _DUMP_ERRORS:
                sub = drop.get(name, False) if drop is not None else False
                kept_out = (
                    name in excluded
                    or sub is None
                    or (facts.uid_fields is not None and name not in facts.uid_fields)
                )
                found = value.__dict__[name] if name in value.__dict__ else extra.get(name)
                if kept_out or (
                    isinstance(found, pydantic.BaseModel) and dropped_from_parent(found)
                ):
                    optional.append((*path, name))
                else:
                    subdrop = sub if isinstance(sub, dict) else None
                    _unserializable(found, subdrop, (*path, name), optional, failing, init_only)
        if len(optional) + len(failing) + len(init_only) == before:
            failing.append(path)  # (no field fails alone: its model_serializer)
        return
    items: tp.Iterable[tuple[tp.Any, tp.Any]] = ()
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    for key, sub in items:  # (a container: its items that fail, by index or key)
        try:
            pydantic_core.to_jsonable_python(sub)
        except _DUMP_ERRORS:
            subdrop = drop.get(str(key), {}) if drop is not None else {}
            if subdrop is None:  # (kept out of the uid)
                optional.append((*path, key))
            else:
                where = (*path, key)
                _unserializable(sub, subdrop or None, where, optional, failing, init_only)
        except Exception:  # (a value this probe cannot tell: left to the field)
            pass
    if len(optional) + len(failing) + len(init_only) == before:
        failing.append(path)  # (the value itself, or its field's serializer)


def _merged_exclude(exclude: tp.Any, paths: list[tuple[str | int, ...]]) -> dict[tp.Any, tp.Any]:
    """A pydantic ``exclude`` spec with these paths excluded too."""
    out: dict[tp.Any, tp.Any] = _exclude_dict(exclude)
    for path in paths:
        node = out
        for part in path[:-1]:
            sub = node.get(part)
            if sub is True:
                break  # (excluded whole already)
            node[part] = _exclude_dict(sub)
            node = node[part]
        else:
            node[path[-1]] = True
    return out


def _exclude_dict(spec: tp.Any) -> dict[tp.Any, tp.Any]:
    if spec is None:
        return {}
    if isinstance(spec, set | frozenset):
        return {name: True for name in spec}
    return {
        k: _exclude_dict(v) if isinstance(v, dict | set | frozenset) else v for k, v in spec.items()
    }


# (keyed by the facts themselves, not their id(): the facts of a class forgotten since
# (updated in place) were freed, and new facts at the same address read its export: a
# test saw another class's default there, now and then)
_DEFAULT_EXPORTS: dict[tuple[_FieldFacts, bool], dict[str, tp.Any]] = {}
# (the same for a default that is not a model: a dataclass, a container; see
# _Exporter._default_export)
_DEFAULT_VALUE_EXPORTS: dict[tuple[_FieldFacts, type, bool], tp.Any] = {}


def _default_export(field: _FieldFacts, uid: bool) -> dict[str, tp.Any]:
    """Export of a field's default model instance with its own defaults pruned, as a
    sub-model is exported (computed once per field)."""
    key = (field, uid)
    found = _DEFAULT_EXPORTS.get(key)
    if found is None:
        default = field.default
        # (a uid export only looks at the fields the class keeps in uids: an infra's
        # 20-odd settings need not be dumped)
        spec = field.dump_exclude if uid and type(default) is field.model_cls else None
        dumped = default.model_dump(mode="json", warnings=False, by_alias=False, exclude=spec)
        found = _DEFAULT_EXPORTS[key] = _Exporter(uid, True).model(default, dumped, field.keep)
    return found


def _renamed(dumped: tp.Any, facts: _ClassFacts, uid: bool, excluded: frozenset[str]) -> bool:
    """Whether a model_serializer's dump is not made of the fields: not a dict, or fields
    missing while keys that are not fields stand in their place (renamed). Then the dump
    is the config as it is. A serializer that adds a key (DiscriminatedModel's) or drops
    some (None values, ``exclude=True`` fields) keeps the others: exported as usual."""
    if type(dumped) is not dict:
        return True
    if dumped.keys() <= facts.dump_keys:
        return False  # (nothing renamed: only fields, maybe fewer, and an added key)
    model_fields = facts.cls.model_fields
    fields = facts.fields_in_uid if uid else facts.fields
    return any(
        f.name not in dumped
        and f.name not in excluded
        and not model_fields[f.name].exclude
        and getattr(model_fields[f.name], "exclude_if", None) is None
        for f in fields
    )


class _Exporter:
    def __init__(self, uid: bool, exclude_defaults: bool) -> None:
        self.uid = uid
        self.exclude_defaults = exclude_defaults
        # whether every key written so far is a field name (not a user dict's key, nor a
        # hook's); containers of containers count as not (conservative)
        self.field_keys_only = True
        # one item per dataclass whose init=False fields were left out (see _sets_ordered)
        self.drops: list[int] = []
        # (the top model's fields kept out of uids in a uid=False export: see _alike)
        self.kept_out: tp.Container[str] = ()

    def _alike(
        self, error: uidformat.KeysAlike | _DottedKeys, model: pydantic.BaseModel, name: str
    ) -> None:
        """A field holding a dict whose keys its dump writes alike (``1`` and ``"1"``: one
        value lost): refused, naming the field, as the uid refuses it (a uid=False export
        kept one value only). Of a field kept out of uids, in a uid=False export (its
        uid was made): left out, as a value with no json form is."""
        if not self.uid and isinstance(error, uidformat.KeysAlike):
            facts = class_facts(type(model))
            if name in self.kept_out or name in _exclusions(model, facts):
                return
        raise _placed(error, type(model), name) from None

    def model(
        self,
        model: pydantic.BaseModel,
        dumped: dict[str, tp.Any],
        keep: tp.Container[str],
        drop: _Drops | None = None,
    ) -> dict[str, tp.Any]:
        """``drop``: the exclusion tree of this model's fields (cache-uid exclusions)."""
        if model.__pydantic_root_model__:  # (not isinstance: importing RootModel costs 1 ms)
            # its value is its root, as pydantic dumps it (and it cannot set `extra`: it
            # has no named fields a typo could miss)
            root = tp.cast(tp.Any, model).root
            if self.uid and type(root) not in _PLAIN_ITEMS:
                anything, here, named = _root_annotation(type(model))
                if anything:  # (RootModel[tp.Any]: as a field admitting anything)
                    _check_no_unnamed_model(root, type(model), "root", here, named)
            return self.value(root, dumped, keep)
        facts = _FACTS.get(type(model))  # (class_facts inlined: a call per model)
        if facts is None or AUTORELOADING[0]:
            facts = class_facts(type(model))
        out: dict[str, tp.Any] = {}
        # (a class none of the checks below concern, the common case: ~0.2 us a model)
        plain = facts.plain_exclusions if self.uid else None
        if plain is not None:
            excluded = plain
        else:
            if self.uid:
                if not facts.has_extra_config:
                    raise RuntimeError(_no_extra_message(type(model)))
                if facts.has_override:
                    self.field_keys_only = False
                    return dict(getattr(model, OVERRIDE_HOOK)())
            excluded = _exclusions(model, facts) if self.uid else frozenset()
            if facts.has_serializer and _renamed(dumped, facts, self.uid, excluded):
                self.field_keys_only = False
                # (maybe not a dict: see export_with_keys; exclusions name the dump's keys)
                return _without(dumped, drop) if drop and type(dumped) is dict else dumped
            if self.uid and facts.ambiguous:  # (a field that cannot enter a uid, unless kept out)
                for name, message in facts.ambiguous.items():
                    if name not in excluded and name in dumped:
                        raise RuntimeError(message)
            if facts.has_prefix:
                self.field_keys_only = False
                out.update(getattr(model, PREFIX_HOOK)())
        values = model.__dict__
        prune = self.exclude_defaults
        for field in facts.fields_in_uid if self.uid else facts.fields:
            name = field.name
            if name in excluded or name not in dumped:
                continue
            if drop is not None and name in drop:
                if drop[name] is not None:
                    self._field_without(out, model, dumped[name], field, drop[name])
                continue
            dval = dumped[name]
            if field.plain:  # the fast path: the json dump is the exported value
                if prune and not field.required and name not in keep:
                    djson = field.default_json
                    if dval == djson:
                        if (
                            type(dval) in _JSON_SCALARS  # (a scalar at its default, inlined)
                            and (type(dval) is bool) is (type(djson) is bool)
                        ) or _equals_default(values.get(name), dval, field):
                            continue
                    elif not (
                        # (another int/str/float than a scalar default, dumped as itself:
                        # not the default, no python comparison needed; ~0.3 us a field)
                        field.scalar_default
                        and type(dval) in _PLAIN_SCALARS
                        and dval is values.get(name)
                    ) and _equals_default(values.get(name), dval, field):
                        continue
                kind = type(dval)
                if dval is None and type(values.get(name)) is float:
                    dval = values[name]  # inf/nan: the json dump says null
                elif kind is list:
                    if isinstance(values.get(name), set | frozenset):
                        dval = _ordered_set(dval)
                    for item in dval:
                        if type(item) is dict or type(item) is list:
                            self.field_keys_only = False  # (a custom serializer's output)
                            break
                elif kind is dict:
                    self.field_keys_only = False
                out[name] = dval
                continue
            value = values.get(name)
            if self.uid and field.anything:
                _check_field(value, field, facts.cls)
            if isinstance(value, pydantic.BaseModel):
                if self.uid:  # (dropped_from_parent, inlined: a call per sub-model)
                    sub_facts = _FACTS.get(type(value))
                    itself = None if sub_facts is None else sub_facts.drops_itself
                    if itself is None or AUTORELOADING[0]:
                        itself = dropped_from_parent(value)
                    if itself:
                        continue
                foreign = False  # (a subclass of the class the annotation names)
                if type(value) is not field.model_cls:
                    if field.model_cls is not None or _member_subclass(value, field):
                        # a subclass instance: the parent's dump followed the annotated
                        # class (without the subclass's own fields, or leaving out what only
                        # the annotated class keeps out of uids): dump it whole (also for a
                        # union's member: BB(z=7) and BB(z=9) in a field `A | B` shared a uid)
                        dval = json_dump(value)
                    foreign = self.uid and _subclass_of(type(value), field.models)
                if prune and name not in keep:
                    if value is field.default:
                        continue  # the class default itself
                    pruned = self.model(value, dval, field.keep)
                    # a sub-model equal to its field's default instance (in uid terms) is
                    # left out: exactly when both exports, with defaults pruned, are equal
                    if not field.required and type(field.default) is type(value):
                        reference = _DEFAULT_EXPORTS.get((field, self.uid))
                        if reference is None:
                            reference = _default_export(field, self.uid)
                        if (pruned == reference and _same_bools(pruned, reference)) or (
                            field.nan_default and _nan_equal(pruned, reference)
                        ):
                            continue  # (_default_equal, inlined)
                    out[name] = _with_class(pruned, value) if foreign else pruned
                else:
                    exporter = _Exporter(self.uid, False)
                    exported = exporter.model(value, dval, keep=())
                    out[name] = _with_class(exported, value) if foreign else exported
                    self.field_keys_only &= exporter.field_keys_only
                continue
            if field.dataclasses and _lost_by_dump(value, field.contained, facts.cls):
                # (the dump followed the annotated class: dumped whole below, with its class)
                try:
                    exported = self.value(value, dval, field.keep, field.contained, facts.cls)
                except (uidformat.KeysAlike, _DottedKeys) as error:
                    self._alike(error, model, name)
                    continue
                if not (
                    prune
                    and not field.required
                    and name not in keep
                    and type(value) is type(field.default)
                    and _default_equal(exported, field.default_json, field)  # (classes: never)
                ):
                    out[name] = exported
                continue
            if (
                prune
                and not field.required
                and name not in keep
                and (
                    # (an OrderedDict's order counts: not its dump)
                    _default_equal(value, field.default, field)
                    if isinstance(value, collections.OrderedDict)
                    else _equals_default(value, dval, field)
                )
                and not (
                    field.contained and self._names_other_classes(value, dval, field, facts.cls)
                )
            ):
                continue
            drops = len(self.drops)
            try:
                exported = self.value(value, dval, field.keep, field.contained, facts.cls)
            except (uidformat.KeysAlike, _DottedKeys) as error:
                self._alike(error, model, name)
                continue
            if (
                prune
                and not field.required
                and name not in keep
                and (
                    len(self.drops) > drops  # (init=False fields left out: their dumps differed)
                    # models inside (in a dataclass, a list, a dict): what they keep out of
                    # uids differed in the dumps, not in the uids (their defaults then)
                    or (self.uid and _holds_model(value))
                )
                and self._default_export_is(exported, field, facts.cls)
            ):
                continue
            out[name] = exported
        extra = model.__pydantic_extra__
        if extra:  # extra="allow": what was given beyond the fields is config too
            self.field_keys_only = False
            if self.uid and any("." in key for key in extra):  # (rare: only then checked)
                _check_dotted_extras(model, extra, excluded)
            for key, sub in extra.items():
                if key in dumped and key not in excluded:
                    if self.uid and type(sub) not in _PLAIN_ITEMS:
                        _check_extra(model, key, sub)
                    if drop is not None and key in drop:
                        if drop[key] is not None:
                            out[key] = _without(self.value(sub, dumped[key]), drop[key])
                        continue
                    out[key] = self.value(sub, dumped[key])
        return out

    def _names_other_classes(
        self, value: tp.Any, dval: tp.Any, field: _FieldFacts, owner: type
    ) -> bool:
        """Whether a value whose dump is its field default's (a dataclass, or a container
        of dataclasses or models) holds models of other classes than the default's (a
        subclass of the class a field names, which its dump loses: ``_class`` in its uid
        tells them apart, in the value or in the default), in a uid."""
        if not self.uid or value is field.default or field.default is _NO_DEFAULT:
            return False
        if not _names_model_classes(field.contained):
            return False  # (no model class named: no _class, see _held_model)
        if _model_classes(value, []) == _model_classes(field.default, []):
            return False  # (the same classes where the default has them: a cheap look)
        exported = _Exporter(self.uid, True).value(value, dval, field.keep, field.contained, owner)
        reference = self._default_export(field, owner)
        if reference is _NO_DEFAULT:
            return _names_a_class(exported)
        if not (_names_a_class(exported) or _names_a_class(reference)):
            return False
        return not _default_equal(exported, reference, field)

    def _default_export_is(self, exported: tp.Any, field: _FieldFacts, owner: type) -> bool:
        """Whether a field's export is that of its default (both without the init=False
        fields of their dataclasses: a memo filled in one of them is no difference)."""
        reference = self._default_export(field, owner)
        return reference is not _NO_DEFAULT and _default_equal(exported, reference, field)

    def _default_export(self, field: _FieldFacts, owner: type) -> tp.Any:
        """The export of a field's default, with defaults pruned (``_NO_DEFAULT``: none,
        or one without a json form; computed once per field, as its json dump is)."""
        key = (field, owner, self.uid)
        found = _DEFAULT_VALUE_EXPORTS.get(key, _NO_DEFAULT)
        if found is not _NO_DEFAULT:
            return found
        default = field.default
        if default is _NO_DEFAULT:
            return _NO_DEFAULT
        try:
            dumped = pydantic_core.to_jsonable_python(default)
        except Exception:  # (no json form: the default's own memo, say)
            return _NO_DEFAULT
        exporter = _Exporter(self.uid, True)
        found = exporter.value(default, dumped, field.keep, field.contained, owner)
        _DEFAULT_VALUE_EXPORTS[key] = found
        return found

    def _field_without(
        self,
        out: dict[str, tp.Any],
        model: pydantic.BaseModel,
        dval: tp.Any,
        field: _FieldFacts,
        drop: _Drops,
    ) -> None:
        """Export a field with some nested values excluded: the default comparison leaves
        them out too (values differing only there are at their default)."""
        name = field.name
        value = model.__dict__.get(name)
        if self.uid and field.anything:  # (what the exclusions leave of it enters the uid)
            kept = value if isinstance(value, pydantic.BaseModel) else _without(value, drop)
            _check_field(kept, field, type(model))
        prune = self.exclude_defaults and not field.required
        if isinstance(value, pydantic.BaseModel):
            if self.uid and dropped_from_parent(value):
                return
            if (
                field.model_cls is not None and type(value) is not field.model_cls
            ) or _member_subclass(value, field):
                dval = json_dump(value)
            exported = self.model(value, dval, keep=field.keep, drop=drop)
            if prune and type(field.default) is type(value):
                default = field.default
                ddump = default.model_dump(mode="json", warnings=False, by_alias=False)
                reference = _Exporter(self.uid, True).model(default, ddump, field.keep, drop)
                if _default_equal(exported, reference, field):
                    return
            if self.uid and _subclass_of(type(value), field.models):
                exported = _with_class(exported, value)
        else:
            contained = field.contained
            try:
                exported = self.value(value, dval, field.keep, contained, type(model))
            except (uidformat.KeysAlike, _DottedKeys) as error:
                self._alike(error, model, name)
                return
            exported = _without(exported, drop)
            default_json = field.default_json
            if prune and default_json is not _NO_DEFAULT:
                # the default exported as the value is (sub-models with defaults pruned)
                exporter = _Exporter(self.uid, True)
                reference = exporter.value(
                    field.default, default_json, field.keep, contained, type(model)
                )
                if _default_equal(exported, _without(reference, drop), field):
                    return
        out[name] = exported

    def value(
        self,
        value: tp.Any,
        dval: tp.Any,
        keep: tp.Container[str] = (),
        declared: tuple[type, ...] = (),
        owner: type | None = None,
    ) -> tp.Any:
        """Export of a field value (``dval``: its json dump); models met inside keep the
        ``keep`` fields (the discriminator of a container of a discriminated union);
        ``declared``: the model classes the field's annotation names (none: unknown);
        ``owner``: the model class whose field holds it."""
        if isinstance(value, pydantic.BaseModel):
            if type(dval) is not dict or len(dval) < len(type(value).__pydantic_fields__):
                # dumped by a base class's schema (a subclass in a container): dump it whole
                dval = json_dump(value)
            exported = self.model(value, dval, keep=keep)
            if self.uid and declared and _subclass_of(type(value), declared):
                return _with_class(exported, value)
            return exported
        if isinstance(dval, dict | list):
            self.field_keys_only = False  # (user keys, or containers in a list)
            if declared and type(dval) is dict and _lost_by_dump(value, declared, owner):
                # a dataclass subclass instance (or one inside): the dump followed the
                # annotated class's schema (its own fields lost): dumped whole, with the
                # class of each such instance in a uid; the models inside exported as
                # held by a dataclass (their uid exclusions left out, their class named)
                exported = _dataclass_export(value, declared, owner, self.drops)
                return _sets_ordered(value, exported, True, self.drops, self._redumped_model)
        if isinstance(value, dict) and isinstance(dval, dict):
            # the dump keeps the order of the keys: the i-th json key is the i-th key's
            # rendering (an Enum key as its value, an int as its text...)
            if len(dval) == len(value):
                keys = list(dval)
            else:
                _dumped_alike(value)  # (keys the dump wrote alike: one value was lost)
                keys = [k if type(k) is str else str(k) for k in value]
            items = {}
            for skey, sub in zip(keys, value.values()):
                if skey not in dval:
                    continue
                if self.uid and isinstance(sub, pydantic.BaseModel) and dropped_from_parent(sub):
                    continue
                items[skey] = self.value(sub, dval[skey], keep, declared, owner)
            if self.uid and self.exclude_defaults and any("." in key for key in items):
                # (only where a uid is made)
                _check_dotted_keys(items, isinstance(value, collections.OrderedDict))
            if isinstance(value, collections.OrderedDict):
                return collections.OrderedDict(items)
            # a plain dict's order is not config: sorted, so the yaml files of two
            # configs that differ only in insertion order are the same text
            return dict(sorted(items.items())) if len(items) > 1 else items
        if isinstance(value, list | tuple) and isinstance(dval, list):
            return [
                self.value(sub, dsub, keep, declared, owner)
                for sub, dsub in zip(value, dval)
                if not (
                    self.uid and isinstance(sub, pydantic.BaseModel) and dropped_from_parent(sub)
                )
            ]
        if isinstance(value, set | frozenset) and isinstance(dval, list):
            if len(dval) == len(value):  # (items in iteration order: the dump's)
                dval = [self._set_item(s, d, declared) for s, d in zip(value, dval)]
            return _sets_ordered(value, dval, drops=self.drops)
        if dval is None and type(value) is float:
            return value  # inf/nan: the json dump says null
        if type(dval) is dict and dataclasses.is_dataclass(value):
            # (a set of strings: in hash order; a model inside: exported as a model, its
            # uid exclusions and infra settings left out)
            return _sets_ordered(value, dval, True, self.drops, self._held_model)
        return dval

    def _held_model(
        self,
        model: pydantic.BaseModel,
        dumped: dict[str, tp.Any],
        declared: tuple[type, ...] = (),
    ) -> tp.Any:
        """A model held by a dataclass: exported as the model it is (its uid exclusions,
        and its infras' settings but ``version``, left out as in any sub-config), with
        its defaults kept, as a dataclass's own fields are (the uids such configs had).
        In a uid: left out (``_DROPPED``) when it excludes itself (``"."``), and with its
        class when it is a strict subclass of a model class its dataclass field names
        (``declared``), as a sub-config held by a model field is."""
        if self.uid and dropped_from_parent(model):
            return _DROPPED
        exported = self._held_export(model, dumped)
        if self.uid and declared and _subclass_of(type(model), declared):
            return _with_class(exported, model)
        return exported

    def _redumped_model(
        self,
        model: pydantic.BaseModel,
        dumped: dict[str, tp.Any],
        declared: tuple[type, ...] = (),
    ) -> tp.Any:
        """``_held_model`` for a model in a dataclass subclass's own export, where it was
        dumped by its aliases (``_dataclass_export``): dumped again by its field names,
        as the dump of a model holding the dataclass has it (else an aliased field was
        lost, from the uid and from config.yaml)."""
        return self._held_model(model, json_dump(model), declared)

    def _held_export(self, model: pydantic.BaseModel, dumped: dict[str, tp.Any]) -> tp.Any:
        as_dumped = dumped
        if model.__pydantic_root_model__:  # (not isinstance: importing RootModel costs 1 ms)
            # (refused as a sub-config until it was exported as its root: held by a
            # dataclass, its dump was its uid, and stays so, with its sets of strings
            # sorted: they were in the hash order of the process)
            return _sets_ordered(tp.cast(tp.Any, model).root, dumped, True, self.drops)
        if (
            len(dumped) < len(type(model).__pydantic_fields__)
            and not class_facts(type(model)).has_serializer
        ):  # (dumped by a base class's schema: its own fields were lost)
            dumped = json_dump(model)
        try:
            exported = _Exporter(self.uid, False).model(model, dumped, keep=())
        except UnnamedModel:
            raise  # (not a refusal of this model: of what it holds, a uid naming no class)
        except RuntimeError:
            # (a model refused as a sub-config: no 'extra' key, a field no uid can be
            # defined from...: held by a dataclass, its dump was its uid, and stays so;
            # a model in it where no annotation names its class is refused still)
            if self.uid:
                _check_held_fields(model)
            return _sets_ordered(model, as_dumped, True, self.drops)
        if type(exported) is not dict or (self.uid and class_facts(type(model)).has_override):
            return exported  # (a uid hook's dict is the uid: its keys are not the fields)
        # the fields it keeps as the dataclass's walk had them (a set of numbers in the
        # order it had: the uids of such configs are kept), models inside exported so,
        # with the model classes their fields name (a subclass's _class, as held by a field)
        fields = model.__dict__
        infos = type(model).__pydantic_fields__
        return {
            key: _sets_ordered(
                fields[key],
                dumped[key],
                True,
                self.drops,
                self._held_model,
                annotated_models(infos[key].annotation) if key in infos else (),
            )
            if key in fields and key in dumped
            else sub
            for key, sub in exported.items()
        }

    def _set_item(self, item: tp.Any, dval: tp.Any, declared: tuple[type, ...]) -> tp.Any:
        """A model in a set is exported as its json dump (defaults kept, as uids always
        had it), but whole when the annotated class's schema dumped it (a subclass: its
        own fields were lost) and with its class in a uid (two subclasses, one uid)."""
        if not isinstance(item, pydantic.BaseModel):
            return dval
        if _holds_subclass(item):  # a subclass instance deeper: its fields were lost
            self.field_keys_only = False
            whole = json_dump(item, serialize_as_any=True)
            dval = _Exporter(self.uid, False).model(item, whole, keep=())
        elif type(dval) is not dict or len(dval) < len(type(item).__pydantic_fields__):
            dval = json_dump(item)
        if self.uid and declared and _subclass_of(type(item), declared):
            return _with_class(dval, item)
        return dval


def _dumped_alike(value: dict[tp.Any, tp.Any]) -> None:
    """Raise KeysAlike for two keys of a dict that its json dump writes alike (``1`` and
    ``"1"``: the dump keeps one value, the other config with the same kept value would
    share the uid)."""
    seen: dict[str, tp.Any] = {}
    for key in value:
        try:
            text = str(next(iter(pydantic_core.to_jsonable_python({key: None}))))
        except Exception:  # (a key json cannot write: as the uid format writes it)
            text = str(key)
        if text in seen:
            raise uidformat.KeysAlike(seen[text], key)
        seen[text] = key


def _no_extra_message(cls: type) -> str:
    """Why a model of a config without an 'extra' key is refused, and the settings that
    are accepted: a user only read "strongly advised", and neither that extra='ignore'
    works nor what to do with a class of a library."""
    return (
        f"{cls.__module__}.{cls.__qualname__} has no 'extra' key in its model_config: it is "
        "strongly advised to forbid extra parameters (model_config = "
        "pydantic.ConfigDict(extra='forbid')) so that a typo cannot silently change a uid. "
        "Every model of a config must set it: extra='forbid', or extra='ignore' to keep "
        "pydantic's default (unknown keys dropped); for a class you cannot edit (a "
        "library's), use a subclass of it that sets it"
    )


def _placed(
    error: uidformat.KeysAlike | _DottedKeys, cls: type, name: str
) -> uidformat.KeysAlike | _DottedKeys:
    """The error naming the field whose value holds the dict (the innermost one)."""
    field = f"field {cls.__name__}.{name}"
    if isinstance(error, _DottedKeys):
        text = str(error)
        return (
            error
            if _DottedKeys.PLACE not in text
            else _DottedKeys(text.replace(_DottedKeys.PLACE, f"of {field}", 1))
        )
    if "field " in str(error).split(" are written", 1)[0]:
        return error
    return uidformat.KeysAlike(*error.keys, where=field)


def _holds_subclass(model: pydantic.BaseModel) -> bool:
    """Whether a field of a model (at any depth, in containers too) holds an instance of a
    strict subclass of the class its annotation names (its schema's dump loses it)."""
    values = model.__dict__
    for field in class_facts(type(model)).fields:
        if field.plain:
            continue
        value = values.get(field.name)
        subs = [value] if isinstance(value, pydantic.BaseModel) else _models_in(value)
        declared = field.models or field.contained
        for sub in subs:
            if (declared and _subclass_of(type(sub), declared)) or _holds_subclass(sub):
                return True
    return False


def _holds_model(value: tp.Any, depth: int = 0) -> bool:
    """Whether a value holds a model, through dataclasses and containers (deeper than a
    few levels: assumed so)."""
    kind = type(value)
    if kind in _NO_BOOLS or kind is bool:
        return False
    if isinstance(value, pydantic.BaseModel) or depth > 8:
        return True
    if hasattr(kind, "__dataclass_fields__"):
        return any(
            _holds_model(getattr(value, name, None), depth + 1)
            for name in kind.__dataclass_fields__
        )
    if isinstance(value, dict):
        value = value.values()
    elif not isinstance(value, list | tuple | set | frozenset):
        return False
    if _NO_BOOLS.issuperset(map(type, value)):
        return False  # (plain values, the common case: no Python loop)
    return any(_holds_model(sub, depth + 1) for sub in value)


def _models_in(value: tp.Any) -> list[pydantic.BaseModel]:
    """The models directly held by a container value (list, tuple, set, dict values)."""
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple | set | frozenset):
        return [v for v in value if isinstance(v, pydantic.BaseModel)]
    return []


def _member_subclass(value: pydantic.BaseModel, field: _FieldFacts) -> bool:
    """Whether a model is a strict subclass of one of the classes its field's annotation
    names (a union of several: the parent's dump followed the member's schema)."""
    return field.model_cls is None and bool(field.models) and type(value) not in field.models


def _subclass_of(cls: type, declared: tuple[type, ...]) -> bool:
    """Whether a sub-model's class is a strict subclass of a class its field's annotation
    names (and not one of them): then its class is not told by its field. Annotations
    naming no class (``Any``, a TypeVar, ``Self``, an alias) keep their uids as they were."""
    if cls in declared:
        return False
    return any(
        issubclass(cls, base)
        for base in declared
        if isinstance(base, type) and base is not pydantic.BaseModel
    )


# The dataclasses an annotation names (see ``annotated_dataclasses``): classes, and
# generic dataclasses given their type arguments (``Box[Aug]``: the arguments tell what
# the type-variable fields of that ``Box`` hold).
_Declared = tuple[tp.Any, ...]


def _lost_by_dump(value: tp.Any, declared: _Declared, owner: type | None = None) -> bool:
    """Whether pydantic's dump of a dataclass value lost fields: the value, or a dataclass
    inside it, is a strict subclass of the dataclass its annotation names (``owner``: the
    model class whose field holds it, whose schema resolves local annotations)."""
    if _subclass_dataclass(type(value), declared):
        return True
    return dataclasses.is_dataclass(value) and _holds_dataclass_subclass(value, declared, owner)


def _subclass_dataclass(cls: type, declared: _Declared) -> bool:
    """Whether ``cls`` is a dataclass and a strict subclass of a dataclass its field's
    annotation names (then its own fields and its class are not in the field's dump)."""
    if cls in declared or not dataclasses.is_dataclass(cls):
        return False  # (the common case first: the annotated class itself)
    bases = _classes(declared)
    return cls not in bases and any(issubclass(cls, base) for base in bases)


_CLASSES: dict[_Declared, tuple[type, ...]] = {}


def _classes(declared: _Declared) -> tuple[type, ...]:
    """The dataclasses ``declared`` names (of ``Box[Aug]``: ``Box``)."""
    known = _CLASSES.get(declared)
    if known is None:
        named: list[tp.Any] = [tp.get_origin(d) or d for d in declared]
        known = _CLASSES[declared] = tuple(
            c for c in named if isinstance(c, type) and dataclasses.is_dataclass(c)
        )
    return known


def _holds_dataclass_subclass(value: tp.Any, enclosing: _Declared, owner: type | None) -> bool:
    """Whether a dataclass instance holds, in one of its fields (also in a list, tuple or
    dict there, at any depth), a dataclass that is a strict subclass of the class that
    field's annotation names: pydantic's dump follows the annotation (its own fields lost).
    ``enclosing``: the classes the annotation of the value names."""
    if type(value) in _NAMES_NO_DATACLASS:
        return False  # (the common case: a dataclass of plain values)
    for name, declared in _field_types(type(value), enclosing, owner):
        if not declared:
            continue  # (no dataclass named: dumped by its values' own classes)
        sub = getattr(value, name, None)
        for item in _contained(sub):
            if not dataclasses.is_dataclass(item) or isinstance(item, type):
                continue
            if _subclass_dataclass(type(item), declared) or _holds_dataclass_subclass(
                item, declared, owner
            ):
                return True
    return False


def _contained(value: tp.Any) -> tp.Iterator[tp.Any]:
    """The value, or the items of a list, tuple, set or dict's values (nested)."""
    if isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _contained(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _contained(item)
    else:
        yield value


_INIT_ONLY: dict[type, frozenset[str]] = {}


def init_only_fields(cls: type) -> frozenset[str]:
    """The ``field(init=False)`` fields of a dataclass (memoized): not config (what the
    class computes for itself, e.g. a memo filled in ``__post_init__`` or lazily; pydantic
    ignores them in the input it validates), so they are in no export (uid, config.yaml)
    and their changes are no change. A class with its own pydantic core schema
    (``__get_pydantic_core_schema__``) has none: its dump is its config, as it writes it."""
    known = _INIT_ONLY.get(cls)
    if known is None:
        known = frozenset()
        if not custom_schema(cls):
            known = frozenset(f.name for f in dataclasses.fields(cls) if not f.init)
        _INIT_ONLY[cls] = known
    return known


def custom_schema(cls: type) -> bool:
    """Whether a class defines its own pydantic core schema: pydantic dumps (and validates)
    its instances as that schema says, not by their fields."""
    return callable(getattr(cls, "__get_pydantic_core_schema__", None)) and not issubclass(
        cls, pydantic.BaseModel
    )


class _DataclassFacts:
    """The annotations of the fields of a dataclass (resolved), and the dataclasses each
    one names (see ``annotated_dataclasses``)."""

    __slots__ = ("generic", "hints", "types")

    def __init__(self, hints: dict[str, tp.Any]) -> None:
        self.hints = hints
        self.types = {name: annotated_dataclasses(hint) for name, hint in hints.items()}
        # (fields whose annotation holds a type variable: see _bound_facts)
        self.generic = frozenset(name for name, hint in hints.items() if _typevar_in(hint))


_DATACLASS_FACTS: dict[type, _DataclassFacts] = {}
# dataclasses whose annotations name no dataclass nor type variable (nothing to walk)
_NAMES_NO_DATACLASS: set[type] = set()
# (a dataclass whose annotations need the schema of the model holding it, by both)
_LOCAL_FACTS: dict[tuple[type, type | None], _DataclassFacts] = {}
# (a generic dataclass, by the annotation holding it: its type variables replaced)
_BOUND_FACTS: dict[tuple[type, _Declared, type | None], _DataclassFacts] = {}
_SCHEMA_CLASSES: dict[type, dict[str, type]] = {}


def _forget_dataclasses(cls: type) -> None:
    """(%autoreload: a class updated in place, maybe a dataclass: all forgotten, rare)"""
    for memo in (
        _DATACLASS_PLACES,
        _DATACLASS_FACTS,
        _LOCAL_FACTS,
        _BOUND_FACTS,
        _SCHEMA_CLASSES,
        _CLASSES,
        _INIT_ONLY,
        _NAMES_MODELS,
    ):
        memo.clear()
    _NAMES_NO_DATACLASS.clear()
    _HOLDS_DATACLASSES.clear()
    _ADAPTERS.clear()
    _SCHEMA_ADAPTERS.clear()


CLASS_FORGETTERS.append(_forget_dataclasses)

_NAMES_MODELS: dict[type, bool] = {}  # (see _names_models)


def _names_model_classes(contained: tuple[tp.Any, ...]) -> bool:
    """Whether the classes an annotation names (``_FieldFacts.contained``) are or hold
    model classes (a model's subclass there gets its ``_class`` in uids)."""
    return any(
        (isinstance(cls, type) and issubclass(cls, pydantic.BaseModel)) or _names_models(cls)
        for cls in contained
    )


def _names_models(cls: type, depth: int = 0) -> bool:
    """Whether the annotations of a dataclass name a model class, through the dataclasses
    they name (a type variable, or annotations that cannot be read: maybe), memoized."""
    known = _NAMES_MODELS.get(cls)
    if known is not None:
        return known
    try:
        hints = _dataclass_facts(cls, None).hints
    except Exception:
        return True
    names = depth > 8 or any(
        annotated_models(hint)
        or _typevar_in(hint)
        or any(
            isinstance(sub, type) and sub is not cls and _names_models(sub, depth + 1)
            for sub in annotated_dataclasses(hint)
        )
        for hint in hints.values()
    )
    _NAMES_MODELS[cls] = names
    return names


def _dataclass_facts(cls: type, owner: type | None) -> _DataclassFacts:
    """The field annotations of a dataclass (memoized). Those that cannot be resolved
    from its module (a class defined in a function, under ``from __future__ import
    annotations``) are read with the classes pydantic resolved them to in the schema of
    the model class holding it (``owner``); one still unresolved is ``Any``: it names no
    class, nothing under it is walked (its uid stays what it was)."""
    facts = _DATACLASS_FACTS.get(cls)
    if facts is not None:
        return facts
    local = _LOCAL_FACTS.get((cls, owner))
    if local is not None:
        return local
    skipped = init_only_fields(cls)  # (not config: never walked)
    fields = [f for f in dataclasses.fields(cls) if f.name not in skipped]
    try:
        hints = tp.get_type_hints(cls)
    except Exception:  # (a forward reference that cannot be resolved)
        names = _schema_classes(owner)
        resolved = {field.name: _resolved_hint(cls, field, names) for field in fields}
        local = _LOCAL_FACTS[(cls, owner)] = _DataclassFacts(resolved)
        return local
    facts = _DATACLASS_FACTS[cls] = _DataclassFacts(
        {field.name: hints.get(field.name, field.type) for field in fields}
    )
    if not facts.generic and not any(facts.types.values()):
        _NAMES_NO_DATACLASS.add(cls)
    return facts


def _bound_facts(cls: type, enclosing: _Declared, owner: type | None) -> _DataclassFacts:
    """``_dataclass_facts`` of a dataclass held where the annotation names ``enclosing``:
    in a generic one, each type variable is what ``Box[Aug]`` gives in its place (by
    position in ``Box.__parameters__``, as pydantic dumps it), or ``Any`` when not given
    (a bare ``Box``, ``Box[Any]``: its value is dumped by its own class)."""
    facts = _dataclass_facts(cls, owner)
    if not facts.generic:
        return facts
    key = (cls, enclosing, None if cls in _DATACLASS_FACTS else owner)
    bound = _BOUND_FACTS.get(key)
    if bound is None:
        given = _type_arguments(cls, enclosing)
        bound = _BOUND_FACTS[key] = _DataclassFacts(
            {
                name: _substituted(hint, given) if name in facts.generic else hint
                for name, hint in facts.hints.items()
            }
        )
    return bound


def _field_types(
    cls: type, enclosing: _Declared, owner: type | None
) -> tp.Iterable[tuple[str, _Declared]]:
    """The dataclasses each field of a dataclass names (see ``_bound_facts``)."""
    return _bound_facts(cls, enclosing, owner).types.items()


def _type_arguments(cls: type, enclosing: _Declared) -> dict[tp.Any, tp.Any]:
    """The type arguments ``enclosing`` gives the type variables of a dataclass: those of
    the one generic dataclass it names that ``cls`` is (or inherits), by position (none
    when it names none, or several: unknown)."""
    given = [d for d in enclosing if d not in _classes((d,)) and issubclass(cls, _classes((d,)))]
    if len(given) != 1:
        return {}
    origin = tp.get_origin(given[0])
    return dict(zip(getattr(origin, "__parameters__", ()), tp.get_args(given[0])))


def _substituted(hint: tp.Any, given: dict[tp.Any, tp.Any]) -> tp.Any:
    """An annotation with its type variables replaced by their arguments (``Any`` for
    one not given: pydantic dumps its value by its own class, even under a bound; under
    constraints it does not, a known limit: such a value names no class)."""
    if isinstance(hint, tp.TypeVar):
        return given.get(hint, tp.Any)
    params = getattr(hint, "__parameters__", ())
    if not params or tp.get_origin(hint) is None:
        return hint
    try:
        return hint[tuple(given.get(p, tp.Any) for p in params)]
    except Exception:  # (a ParamSpec, say)
        return tp.Any


def _typevar_in(hint: tp.Any) -> bool:
    if isinstance(hint, tp.TypeVar):
        return True
    return any(_typevar_in(arg) for arg in tp.get_args(hint))


def _schema_classes(owner: type | None) -> dict[str, type]:
    """The classes the core schema of a model class names (at any depth), by name (none
    for a name two of them share): those pydantic resolved local annotations to."""
    if owner is None:
        return {}
    known = _SCHEMA_CLASSES.get(owner)
    if known is None:
        found: dict[str, type | None] = {}
        seen: set[int] = set()
        # (a mock, not a dict, while the class is not fully defined: nothing known)
        stack: list[tp.Any] = [owner.__dict__.get("__pydantic_core_schema__")]
        while stack:
            node = stack.pop()
            if isinstance(node, list | tuple):
                stack.extend(node)
            elif isinstance(node, dict) and id(node) not in seen:
                seen.add(id(node))
                cls = node.get("cls")
                if isinstance(cls, type):
                    name = cls.__name__
                    found[name] = cls if found.get(name, cls) is cls else None
                stack.extend(node.values())
        known = _SCHEMA_CLASSES[owner] = {n: c for n, c in found.items() if c is not None}
    return known


def _resolved_hint(cls: type, field: dataclasses.Field[tp.Any], names: dict[str, type]) -> tp.Any:
    """A dataclass field's annotation: a string evaluated with ``names`` and the module of
    the class declaring it (``Any`` if it cannot be)."""
    if not isinstance(field.type, str):
        return field.type
    declaring = next(
        (base for base in cls.__mro__ if field.name in inspect.get_annotations(base)), cls
    )
    module = sys.modules.get(declaring.__module__)
    try:
        return eval(field.type, vars(module) if module is not None else {}, names)
    except Exception:  # (a name known neither there nor in the schema)
        return tp.Any


def _dataclass_export(
    value: tp.Any, declared: _Declared, owner: type | None, drops: list[int] | None = None
) -> tp.Any:
    """The json dump of a dataclass instance by its own fields, and those of each
    dataclass inside it (pydantic's follows the annotations: a subclass's own fields are
    lost), with the class of each instance that is a strict subclass of the class its
    annotation names (``declared``: the annotation's classes for ``value``), in a uid and
    in config.yaml alike (``with_dataclass_instances`` reads it back). Without their
    ``init=False`` fields (``drops``: see ``_sets_ordered``)."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        if isinstance(value, list | tuple):
            return [_dataclass_export(item, declared, owner, drops) for item in value]
        if isinstance(value, dict):
            keys = pydantic_core.to_jsonable_python(dict.fromkeys(value))  # (as json names them)
            return {
                key: _dataclass_export(item, declared, owner, drops)
                for key, item in zip(keys, value.values())
            }
        return pydantic_core.to_jsonable_python(value)
    cls = type(value)
    subclass = _subclass_dataclass(cls, declared)
    if not subclass and custom_schema(cls):
        # dumped by its own schema, as pydantic dumps it there: a serializer of its own
        # writes what its validator reads back (its fields would not be: a Size dumped
        # "3x4" came back from {w: 3, h: 4} wrong, or failed); a schema that dumps its
        # fields (wrapping the dataclass's) is walked as any dataclass
        adapter = _schema_adapter(cls, declared)
        try:  # (no adapter, or one that cannot dump it: walked by its fields, as before)
            dumped = (
                _NO_DUMP
                if adapter is None
                else adapter.dump_python(value, mode="json", warnings=False)
            )
        except Exception:  # (a serializer needing what the bare class does not give)
            dumped = _NO_DUMP
        if dumped is not _NO_DUMP:
            names = {f.name for f in dataclasses.fields(cls)}
            if type(dumped) is not dict or not dumped.keys() <= names:
                return dumped
    if drops is not None and init_only_fields(cls):
        drops.append(1)
    out = {
        name: _dataclass_export(getattr(value, name, None), held, owner, drops)
        for name, held in _field_types(cls, declared, owner)
    }
    if subclass:
        return {CLASS_KEY: f"{cls.__module__}.{cls.__qualname__}", **out}
    return out


class ClassNotRebuilt(ValueError):
    """An exported config names the class of a dataclass (``_class``) that cannot be
    built here (not defined in this process, or its fields do not validate as it)."""


def with_dataclass_instances(
    cls: type[pydantic.BaseModel], data: dict[str, tp.Any]
) -> dict[str, tp.Any]:
    """An exported config of a model class (``config()``, config.yaml) with each dict
    naming its dataclass (``_class``: a strict subclass of the dataclass its annotation
    names) replaced by an instance of that class: validated as the annotated class, it
    would lose its class and its own fields (or refuse them). Only where the annotation
    admits nothing but dataclasses (see ``_rebuildable``): a user dict holding that key
    stays a dict. ClassNotRebuilt when a named class cannot be built (not a subclass of
    the annotated one defined in this process: its module not imported)."""
    if not _holds_dataclasses(cls):
        return data
    return _model_data(cls, data)


def with_dotted_keys(cls: type[pydantic.BaseModel], data: dict[str, tp.Any]) -> dict[str, tp.Any]:
    """An exported config with the dotted keys of its dicts of plain values made whole
    again: a ConfDict (config.yaml, clone_obj's merge) reads ``{"enc.bias": 0.1}`` as
    ``{"enc": {"bias": 0.1}}``, which a ``dict[str, float]`` field refuses. A dict there
    cannot be a value, so it can only be the split of a dotted key (e.g. the parameter
    names of a torch model). Fields that may hold a dict are left as they are."""
    plan = _model_plan(cls)
    return _planned_model(plan, data) if plan else data


# What to do with a value to join its dotted keys back, from its annotation (compiled once
# per model class): ("flat",) a dict of plain values; ("model", cls) a sub-config;
# ("family", base) a DiscriminatedModel, by the member its key names; ("union", ((cls,
# spec), ...)) a union of models, by the members a value fits; ("dict", spec) / ("list", spec) the values / items of a container, each by ``spec``.
_Spec = tuple[tp.Any, ...]
_PLANS: dict[type, dict[str, _Spec]] = {}
# (a class updated in place, by %autoreload: what holds it may need another plan)
CLASS_FORGETTERS.append(lambda cls: _PLANS.clear())
_PLANNING: set[type] = set()  # (classes whose plan is being made: recursive ones)
_MAX_DEPTH = 50  # (annotations or values nested deeper: left as they are)


def _model_plan(cls: type[pydantic.BaseModel]) -> dict[str, _Spec]:
    """The specs of the fields of a model class that may hold such dicts (memoized; a
    recursive class sees its own plan, filled in place)."""
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = {}
        _PLANNING.add(cls)
        try:
            for name, field in cls.model_fields.items():
                spec = _spec(field.annotation, 0)
                if spec is not None:
                    plan[name] = spec
        finally:
            _PLANNING.discard(cls)
    return plan


def _spec(hint: tp.Any, depth: int) -> _Spec | None:
    hint = _unannotated(hint)
    if depth > _MAX_DEPTH:
        return None
    if isinstance(hint, type) and issubclass(hint, pydantic.BaseModel):
        if getattr(hint, "_exca_discriminator_key", None) is not None:
            # (a DiscriminatedModel: the member its key names, maybe defined later, may
            # hold such dicts where the base holds none)
            return ("family", hint)
        return ("model", hint) if _model_plan(hint) or hint in _PLANNING else None
    origin = tp.get_origin(hint)
    args = tp.get_args(hint)
    if origin is tp.Union or origin is types.UnionType:
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            return _spec(members[0], depth + 1)
        return _union_spec([_unannotated(m) for m in members], depth)
    if not isinstance(origin, type):
        return None
    if issubclass(origin, collections.abc.Mapping) and len(args) == 2:
        if not _admits_dict(args[1]):
            return ("flat",)
        inner = _spec(args[1], depth + 1)
        return None if inner is None else ("dict", inner)
    if issubclass(origin, collections.abc.Iterable) and args and (len(args) == 1 or args[1] is ...):
        inner = _spec(args[0], depth + 1)
        return None if inner is None else ("list", inner)
    return None


def _union_spec(members: list[tp.Any], depth: int) -> _Spec | None:
    """A union of models (``A | B``, maybe with a discriminator field): each value read
    by the members it fits. Unions of other types: which member a dict is for is unknown."""
    if not all(isinstance(m, type) and issubclass(m, pydantic.BaseModel) for m in members):
        return None
    specs = tuple((m, _spec(m, depth + 1)) for m in members)
    return ("union", specs) if any(spec is not None for _, spec in specs) else None


def _fits(cls: type[pydantic.BaseModel], value: dict[str, tp.Any]) -> bool:
    """Whether an exported model ``value`` may be of ``cls``: its keys are fields of it
    (or it allows extras) and its values of Literal fields (a tag) are allowed ones."""
    fields = cls.model_fields
    if cls.model_config.get("extra") != "allow" and not set(value) <= set(fields):
        return False
    for name, field in fields.items():
        hint = _unannotated(field.annotation)
        tagged = name in value and tp.get_origin(hint) is tp.Literal
        if tagged and value[name] not in tp.get_args(hint):
            return False
    return True


def _unannotated(hint: tp.Any) -> tp.Any:
    while tp.get_origin(hint) is tp.Annotated:
        hint = tp.get_args(hint)[0]
    return hint


def _admits_dict(hint: tp.Any, depth: int = 0) -> bool:
    """Whether a value of this annotation may be a dict (conservative: unknown, yes)."""
    hint = _unannotated(hint)
    if depth > _MAX_DEPTH or hint is tp.Any or hint is object or isinstance(hint, tp.TypeVar):
        return True
    origin = tp.get_origin(hint)
    if origin is tp.Union or origin is types.UnionType:
        return any(_admits_dict(arg, depth + 1) for arg in tp.get_args(hint))
    if origin is tp.Literal or hint is None or hint is type(None):
        return False
    cls = origin if origin is not None else hint
    if not isinstance(cls, type):
        return True
    if issubclass(cls, collections.abc.Mapping | pydantic.BaseModel):
        return True
    if dataclasses.is_dataclass(cls) or tp.is_typeddict(cls):
        return True
    return hasattr(cls, "__get_pydantic_core_schema__")  # (its own schema: may take one)


def _planned_model(plan: dict[str, _Spec], data: tp.Any, depth: int = 0) -> tp.Any:
    if not isinstance(data, dict) or depth > _MAX_DEPTH:
        return data
    out = data
    for name, spec in plan.items():
        sub = data.get(name)
        if sub is None:
            continue
        new = _planned(spec, sub, depth + 1)
        if new is not sub:
            out = dict(data) if out is data else out  # (plain: a ConfDict splits keys)
            out[name] = new
    return out


def _planned(spec: _Spec, value: tp.Any, depth: int) -> tp.Any:
    kind = spec[0]
    if kind == "flat":
        return _flattened(value) if isinstance(value, dict) else value
    if kind == "model":
        return _planned_model(_model_plan(spec[1]), value, depth)
    if kind == "family":
        return _planned_model(_model_plan(_member(spec[1], value)), value, depth)
    if kind == "union" and isinstance(value, dict):
        # (joined only when every member it fits joins it the same way)
        outs = [
            value if sub is None else _planned(sub, value, depth)
            for cls, sub in spec[1]
            if _fits(cls, value)
        ]
        return outs[0] if outs and all(out == outs[0] for out in outs) else value
    if kind == "dict" and isinstance(value, dict):
        return _mapped(value, lambda _, sub: _planned(spec[1], sub, depth + 1))
    if kind == "list" and isinstance(value, list):
        return _mapped(value, lambda _, sub: _planned(spec[1], sub, depth + 1))
    return value


def _member(base: tp.Any, value: tp.Any) -> type[pydantic.BaseModel]:
    """The class of a DiscriminatedModel's family that exported ``value`` names under its
    key (the base when it names none, as validation builds it)."""
    name = value.get(base._exca_discriminator_key) if isinstance(value, dict) else None
    found = base._exca_family().get(name) if isinstance(name, str) else None
    return tp.cast(type[pydantic.BaseModel], found if found is not None else base)


def _flattened(value: dict[str, tp.Any]) -> dict[str, tp.Any]:
    """A dict with its nested (non-empty) dicts as dotted keys."""
    if not any(isinstance(sub, dict) and sub for sub in value.values()):
        return value
    out: dict[str, tp.Any] = {}
    for key, sub in value.items():
        if isinstance(sub, dict) and sub:
            for inner, leaf in _flattened(sub).items():
                out[f"{key}.{inner}"] = leaf
        else:
            out[key] = sub
    return out


_HOLDS_DATACLASSES: dict[type, bool] = {}


def _holds_dataclasses(cls: type[pydantic.BaseModel], visiting: set[type] | None = None) -> bool:
    """Whether a field of a model class, or of a model its annotations name (at any
    depth), names a dataclass, or may (a DiscriminatedModel's members) (memoized)."""
    known = _HOLDS_DATACLASSES.get(cls)
    if known is not None:
        return known
    top = visiting is None
    visiting = set() if visiting is None else visiting
    if cls in visiting:
        return False  # (a recursive model: its other fields answer for it)
    visiting.add(cls)
    found = _family(cls) or any(
        field.dataclasses
        or any(
            _holds_dataclasses(m, visiting)
            for m in field.contained
            if isinstance(m, type) and issubclass(m, pydantic.BaseModel)
        )
        for field in class_facts(cls).fields
    )
    # (a "no" found while a class that calls back was being looked at may be a "yes"
    # once that class is known: only the first asked is sure)
    if found or top:
        _HOLDS_DATACLASSES[cls] = found
    return found


def _mapped(data: tp.Any, func: tp.Callable[[tp.Any, tp.Any], tp.Any]) -> tp.Any:
    """A list or dict with ``func(key, item)`` in place of each item (key None in a
    list): the same object when nothing changed (most configs hold no dataclass)."""
    if isinstance(data, list):
        items = [func(None, item) for item in data]
        return data if all(a is b for a, b in zip(items, data)) else items
    if not isinstance(data, dict):
        return data
    out = data
    for key, sub in data.items():
        new = func(key, sub)
        if new is not sub:
            out = dict(data) if out is data else out
            out[key] = new
    return out


def _model_data(cls: type[pydantic.BaseModel], data: dict[str, tp.Any]) -> dict[str, tp.Any]:
    fields = {field.name: field for field in class_facts(cls).fields}

    def rebuilt(name: str, sub: tp.Any) -> tp.Any:
        field = fields.get(name)
        if field is None or not isinstance(sub, dict | list):
            return sub
        if field.dataclasses:
            if not _rebuildable(cls.model_fields[name].annotation):
                return sub
            return _dataclass_data(sub, field.contained, cls)
        models = tuple(
            m for m in field.contained if isinstance(m, type) and issubclass(m, pydantic.BaseModel)
        )
        return _models_data(sub, models) if any(map(_holds_dataclasses, models)) else sub

    return tp.cast(dict[str, tp.Any], _mapped(data, rebuilt))


def _models_data(data: tp.Any, models: tuple[type[pydantic.BaseModel], ...]) -> tp.Any:
    """``_model_data`` of the models of a field (a model, or a list or dict of them)."""
    if isinstance(data, dict):
        for family in models:  # (a DiscriminatedModel's key names its class: any of a family)
            key = getattr(family, "_exca_discriminator_key", None)
            if key is not None and _family(family) and type(data.get(key)) is str:
                try:
                    return _model_data(family._exca_lookup(data[key]), data)  # type: ignore[attr-defined]
                except ValueError:  # (an unknown name: its validation says so)
                    pass
        keys = data.keys()
        model = next((m for m in models if keys <= m.model_fields.keys()), None)
        if model is not None:
            return _model_data(model, data)
    return _mapped(data, lambda _, sub: _models_data(sub, models))  # (a list or dict of them)


def _family(model: type) -> bool:
    """Whether a model class is a DiscriminatedModel (its subclasses' fields are unknown)."""
    return callable(getattr(model, "_exca_lookup", None))


def _rebuildable(annotation: tp.Any, in_dict: bool = False) -> bool:
    """Whether an annotation admits dataclasses and no value that exports as a dict
    holding a string ``_class`` otherwise (a dict, ``Any``, a model...): only there is a
    dict naming its class a dataclass's export (``in_dict``: in a dict's values, where a
    string is such a key's value)."""
    if annotation is None or annotation is type(None):
        return True
    if isinstance(annotation, type):
        if dataclasses.is_dataclass(annotation):
            return True
        scalar = issubclass(annotation, int | float | bool | enum.Enum | PurePath)
        return scalar or (annotation is str and not in_dict)
    origin = tp.get_origin(annotation)
    args = tp.get_args(annotation)
    if isinstance(origin, type) and dataclasses.is_dataclass(origin):
        return True  # (Box[Aug])
    if origin is tp.Annotated:
        return _rebuildable(args[0], in_dict)
    if origin is tp.Literal:
        return not in_dict or not any(isinstance(a, str) for a in args)
    if origin is tp.Union or origin is types.UnionType:
        return all(_rebuildable(arg, in_dict) for arg in args)
    if origin in (list, tuple, set, frozenset, collections.abc.Sequence):
        return all(_rebuildable(arg) for arg in args if arg is not Ellipsis)
    if origin in (dict, collections.abc.Mapping) and len(args) == 2:
        return _rebuildable(args[1], True)
    return False


def _dataclass_data(data: tp.Any, declared: _Declared, owner: type | None) -> tp.Any:
    """The export of a value whose annotation names the ``declared`` dataclasses, with
    each dict naming its class built as that class (see ``with_dataclass_instances``)."""
    if not isinstance(data, dict):
        return _mapped(data, lambda _, item: _dataclass_data(item, declared, owner))
    name = data.get(CLASS_KEY)
    if type(name) is str:
        found = _named_dataclass(name, declared)
        fields = {key: sub for key, sub in data.items() if key != CLASS_KEY}
        return _built(found, _dataclass_fields_data(found, fields, declared, owner), name)
    keys = data.keys()
    kind = next(
        (c for c in _classes(declared) if keys <= {f.name for f in dataclasses.fields(c)}),
        None,
    )
    if kind is not None:  # (of the annotated class: the config's validation builds it)
        return _dataclass_fields_data(kind, data, declared, owner)
    return _mapped(data, lambda _, sub: _dataclass_data(sub, declared, owner))  # (a dict of them)


def _dataclass_fields_data(
    cls: type, data: dict[str, tp.Any], enclosing: _Declared, owner: type | None
) -> dict[str, tp.Any]:
    facts = _bound_facts(cls, enclosing, owner)

    def rebuilt(name: str, sub: tp.Any) -> tp.Any:
        declared = facts.types.get(name)
        if not declared or not isinstance(sub, dict | list):
            return sub
        if not _rebuildable(facts.hints[name]):
            return sub
        return _dataclass_data(sub, declared, owner)

    return tp.cast(dict[str, tp.Any], _mapped(data, rebuilt))


def _named_dataclass(name: str, declared: _Declared) -> type:
    """The strict subclass of a declared dataclass that ``<module>.<qualname>`` names,
    among the subclasses defined in this process (no module is imported)."""
    bases = _classes(declared)
    stack: list[type] = list(bases)
    seen: set[type] = set()
    while stack:
        subs: list[type] = stack.pop().__subclasses__()
        for sub in subs:
            if sub not in seen:
                seen.add(sub)
                if f"{sub.__module__}.{sub.__qualname__}" == name:
                    return sub
                stack.append(sub)
    names = ", ".join(c.__name__ for c in bases)
    raise ClassNotRebuilt(
        f"The config names the dataclass {name} (_class), which is not a subclass of "
        f"{names or 'its annotated dataclass'} defined in this process: import its module first"
    )


_ADAPTERS: dict[type, pydantic.TypeAdapter[tp.Any]] = {}
_NO_DUMP: tp.Any = object()
# (a dataclass with its own schema, by the annotation naming it: None if none builds)
_SCHEMA_ADAPTERS: dict[tuple[type, _Declared], pydantic.TypeAdapter[tp.Any] | None] = {}


def _schema_adapter(cls: type, declared: _Declared) -> pydantic.TypeAdapter[tp.Any] | None:
    """The adapter that dumps a dataclass with its own pydantic schema as its field's
    annotation does: of ``Grid[int]`` when the annotation says so (a schema may read its
    type arguments, ``get_args(source)``), else of the class. None when the annotation
    names several of its parametrizations (which one dumped it is not known) or when it
    cannot be built (such a schema given the bare class): the instance is then exported
    by its fields."""
    key = (cls, declared)
    if key in _SCHEMA_ADAPTERS:
        return _SCHEMA_ADAPTERS[key]
    named = []  # (once each: tuple[Opt[int], Opt[int]] names one)
    for annotation in declared:
        if (tp.get_origin(annotation) or annotation) is cls and annotation not in named:
            named.append(annotation)
    source: tp.Any = named[0] if len(named) == 1 else cls
    adapter: pydantic.TypeAdapter[tp.Any] | None = None
    if len(named) < 2:  # (Opt[int] | Opt[str]: which one dumped it is not known)
        try:
            adapter = pydantic.TypeAdapter(source)
        except Exception:  # (a schema needing what the annotation does not give)
            adapter = None
    _SCHEMA_ADAPTERS[key] = adapter
    return adapter


def _adapter(cls: type) -> pydantic.TypeAdapter[tp.Any]:
    adapter = _ADAPTERS.get(cls)
    if adapter is None:
        adapter = _ADAPTERS[cls] = pydantic.TypeAdapter(cls)
    return adapter


def _built(cls: type, fields: dict[str, tp.Any], name: str) -> tp.Any:
    """An instance of a dataclass from its exported fields (validated as pydantic does;
    models inside name their fields, not their aliases, as in any export)."""
    validate = _adapter(cls).validate_python
    try:
        if "by_name" in inspect.signature(validate).parameters:  # (pydantic >= 2.11)
            return validate(fields, by_name=True)
        return validate(fields)
    except Exception as error:  # (invalid values, or annotations it cannot resolve)
        raise ClassNotRebuilt(
            f"Cannot build the dataclass {name} of the config: {error}"
        ) from error


def _with_class(exported: tp.Any, model: pydantic.BaseModel) -> tp.Any:
    """The uid export of a sub-model whose class its field does not name (a subclass of
    the annotated class), with its class: two subclasses at their defaults would otherwise
    share a uid (``model={}``), and so would a subclass that only overrides methods and
    its base. Classes that name themselves (DiscriminatedModel), replace their export
    (the override hook) or keep most fields out of uids (infras) are left as they are."""
    facts = class_facts(type(model))
    if type(exported) is not dict or facts.has_prefix or facts.has_override:
        return exported
    if facts.uid_fields is not None:
        return exported
    cls = type(model)
    return {CLASS_KEY: f"{cls.__module__}.{cls.__qualname__}", **exported}


class _DottedKeys(ValueError):
    """Two keys of a dict naming one path (see _check_dotted_keys): its message says
    ``of a config`` (PLACE) until the field holding the dict is known."""

    PLACE = "of a config"


def _check_dotted_keys(items: dict[str, tp.Any], ordered: bool) -> None:
    """Configs read a "." in a key as a path (``{"enc.bias": 3}`` is ``bias`` inside
    ``enc``): in a uid, a value under a key that is also the path of another key's value
    would be lost (two different configs, one cache folder)."""
    if not ordered:  # (an OrderedDict's keys are kept as they are: not merged)
        for key in items:
            parts = key.split(".")
            for end in range(1, len(parts)):
                prefix = ".".join(parts[:end])
                if prefix not in items:
                    continue
                # ({"enc": {"w": 1}, "enc.bias": 2} reads as {"enc": {"w": 1, "bias": 2}})
                raise _DottedKeys(
                    f"The dict keys {prefix!r} and {key!r} of a config both name values "
                    f"inside {prefix!r}: exca's configs read '.' in a key as a path "
                    f"separator, so this config would share its uid (and cache folder) with "
                    f"the one that nests them in one dict under {prefix!r}. Use one form "
                    f"(nested dicts, or keys without '.'), or keep the field out of the uid "
                    f"(_exclude_from_cls_uid) if it does not change results"
                )
    paths = sorted(_leaf_paths(items, ()))
    for short, long in itertools.pairwise(paths):
        if long[: len(short)] == short:
            raise _DottedKeys(
                f"The dict keys {'.'.join(short)!r} and {'.'.join(long)!r} of a config name "
                f"the same value: exca's configs read '.' in a key as a path separator, so "
                f"one would hide the other in the uid (two different configs, one cache "
                f"folder). Use another separator in these keys (e.g. '/' or '_'), or keep "
                f"the field out of the uid (_exclude_from_cls_uid) if it does not change results"
            )


def _check_dotted_extras(
    model: pydantic.BaseModel, extra: dict[str, tp.Any], excluded: frozenset[str]
) -> None:
    """An extra key (``extra="allow"``) holding a "." reads as a path in uids and yaml
    files: ``M(**{"opt.lr": 0.5})`` had the uid of ``M(opt={"lr": 0.5})`` while its field
    ``opt`` kept its default (two computations, one cache folder)."""
    cls = type(model)
    kept = {key: sub for key, sub in extra.items() if key not in excluded}
    for key in kept:
        head, _, rest = key.partition(".")
        if rest and head in cls.model_fields:
            raise ValueError(
                f"{cls.__name__} was given the extra key {key!r} (its model_config allows "
                f"extra keys): it does not set {key!r} (field {head!r} keeps its value), yet "
                f"exca's configs read '.' in a key as a path, so this config would share its "
                f"uid (and cache folder) with the one that sets {key!r}. Set the nested value "
                f"instead ({head}={{{rest!r}: ...}}), or use a key without '.'"
            )
    _check_dotted_keys(kept, ordered=False)  # (extras naming one another's values)


def _leaf_paths(value: tp.Any, prefix: tuple[str, ...]) -> tp.Iterator[tuple[str, ...]]:
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            yield from _leaf_paths(sub, (*prefix, *str(key).split(".")))
    else:
        yield prefix


def _model_classes(value: tp.Any, out: list[type], depth: int = 0) -> list[type]:
    """The classes of the models a value holds, in order, through dataclasses, models
    and containers, added to ``out`` (deeper than a few levels, an object is named by
    its class alone)."""
    kind = type(value)
    if kind in _JSON_SCALARS or value is None:
        return out
    if depth > 8:
        out.append(kind)
    elif isinstance(value, pydantic.BaseModel):
        out.append(kind)
        for sub in value.__dict__.values():
            _model_classes(sub, out, depth + 1)
    elif hasattr(kind, "__dataclass_fields__"):
        for name in kind.__dataclass_fields__:
            _model_classes(getattr(value, name, None), out, depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for sub in value:
            _model_classes(sub, out, depth + 1)
    elif isinstance(value, dict):
        for sub in value.values():
            _model_classes(sub, out, depth + 1)
    return out


def _names_a_class(exported: tp.Any) -> bool:
    """Whether an export holds a ``_class`` key, at any depth."""
    if isinstance(exported, dict):
        return CLASS_KEY in exported or any(_names_a_class(v) for v in exported.values())
    if isinstance(exported, list):
        return any(_names_a_class(v) for v in exported)
    return False


def _equals_default(value: tp.Any, dval: tp.Any, field: _FieldFacts) -> bool:
    """Whether a field value (``dval``: its json dump) is its default, as a uid sees it."""
    if dval is None and type(value) is float:  # inf/nan: the json dump says null
        return value == field.default
    if dval == field.default_json:
        return _same_bools(dval, field.default_json)
    try:
        if bool(value == field.default) and _same_bools(value, field.default):
            return True
    except Exception:  # (a dataclass holding an array memo: its == fails)
        return False
    return field.nan_default and _nan_equal(dval, field.default_json)


def _default_equal(exported: tp.Any, reference: tp.Any, field: _FieldFacts) -> bool:
    """``_uid_equal`` of an export and its field's default export (nan equal to nan
    inside them: see ``_nan_equal``)."""
    if _uid_equal(exported, reference):
        return True
    return field.nan_default and _nan_equal(exported, reference)


_NAN = float("nan")  # (the one nan of _nan_canonical: equal to itself in containers)


def _holds_nan(value: tp.Any, depth: int = 0) -> bool:
    """Whether a default holds a float nan inside a container or a model (at any depth)."""
    if type(value) is float:
        return depth > 0 and value != value
    if depth > 50:  # (a deep or self-holding value: not worth it)
        return False
    if isinstance(value, pydantic.BaseModel):
        subs: tp.Iterable[tp.Any] = [
            *value.__dict__.values(),
            *(value.__pydantic_extra__ or {}).values(),
        ]
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        subs = [getattr(value, f.name, None) for f in dataclasses.fields(value)]
    elif isinstance(value, dict):
        subs = [*value, *value.values()]
    elif isinstance(value, list | tuple | set | frozenset):
        subs = value
    else:
        return False
    return any(_holds_nan(sub, depth + 1) for sub in subs)


def _nan_canonical(value: tp.Any) -> tp.Any:
    """A value (an export, a json dump, plain containers) with every float nan in it
    replaced by the one ``_NAN`` object."""
    if type(value) is float:
        return _NAN if value != value else value
    if isinstance(value, dict):  # (an OrderedDict's order counts in ==: kept one)
        kind: type = collections.OrderedDict if isinstance(value, collections.OrderedDict) else dict
        return kind((_nan_canonical(k), _nan_canonical(v)) for k, v in value.items())
    for kind in (list, tuple, set, frozenset):
        if isinstance(value, kind):
            return kind(_nan_canonical(sub) for sub in value)
    return value


def _nan_equal(a: tp.Any, b: tp.Any) -> bool:
    """``_uid_equal`` with a nan equal to a nan inside containers. Python compares the
    items of containers by identity first: a default holding a nan ([nan], a sub-model
    whose field is nan) was pruned when the value held that same nan object, and not
    when it held another nan (given, or read back from a yaml file: config.yaml rebuilt
    by ``iter_cached`` named another uid than the live config). Both render "nan" in a
    uid: they are equal. A top-level nan field stays unequal to its default (Python's
    ``nan != nan``, never identity): always in the uid, as before."""
    return _uid_equal(_nan_canonical(a), _nan_canonical(b))


def _uid_equal(a: tp.Any, b: tp.Any) -> bool:
    """``a == b`` as a uid sees it: True == 1 == 1.0 for Python, but a uid renders "True"
    and "1" differently (at any depth: ``[True]`` is not ``[1]``)."""
    return a == b and _same_bools(a, b)


_JSON_SCALARS = frozenset({str, int, float, bool})
_PLAIN_SCALARS = frozenset({str, int, float})
_NO_BOOLS = frozenset({str, int, float, type(None)})
_STR = frozenset({str})


def _same_bools(a: tp.Any, b: tp.Any) -> bool:
    """Given ``a == b``: whether the booleans sit at the same places in both."""
    kind_a, kind_b = type(a), type(b)
    if kind_a is bool or kind_b is bool:
        return kind_a is kind_b
    if kind_a in _NO_BOOLS:
        return True
    if kind_a is dict and kind_b is dict:  # (an export: str keys, few values; a plain loop)
        for key, sub in a.items():
            if type(key) is not str:
                break  # (keys {True: x} == {1: x}: below)
            other = b[key]
            if (type(sub) not in _NO_BOOLS or type(other) not in _NO_BOOLS) and not _same_bools(
                sub, other
            ):
                return False
        else:
            return True
    if isinstance(a, dict) and isinstance(b, dict):
        if not _STR.issuperset(map(type, a)) and _typed_items(a) != _typed_items(b):
            return False  # keys: {True: x} == {1: x}
        if _NO_BOOLS.issuperset(map(type, a.values())) and _NO_BOOLS.issuperset(
            map(type, b.values())
        ):
            return True  # (the common case, a flat export: no Python loop)
        return _all_same_bools((sub, b[key]) for key, sub in a.items())
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return _all_same_bools(zip(a, b))
    if isinstance(a, set | frozenset) and isinstance(b, set | frozenset):
        return _typed_items(a) == _typed_items(b)
    return True


def _all_same_bools(pairs: tp.Iterable[tuple[tp.Any, tp.Any]]) -> bool:
    return all(
        (type(sub) in _NO_BOOLS and type(other) in _NO_BOOLS) or _same_bools(sub, other)
        for sub, other in pairs
    )


def _typed_items(items: tp.Iterable[tp.Any]) -> set[tuple[bool, tp.Any]]:
    """Set items or dict keys, each with whether it is a bool (they are hashable)."""
    return {(type(item) is bool, item) for item in items}


def _sets_ordered(
    value: tp.Any,
    dumped: tp.Any,
    only_seeded: bool = False,
    drops: list[int] | None = None,
    models: tp.Callable[..., tp.Any] | None = None,
    declared: tuple[type, ...] = (),
) -> tp.Any:
    """The json dump of a value with every set in it, at any depth, in a fixed order
    (the rest of the dump as it is), and without the ``init=False`` fields of its
    dataclasses (see ``init_only_fields``; ``drops`` counts the dataclasses that had
    some). ``only_seeded``: sets whose order is the same in every process (numbers only)
    keep it (inside dataclasses, whose sets were not ordered until strings in them were
    found to change uids between processes). ``models``: exports a model met inside
    (with its dump and ``declared``: the model classes the annotation of the dataclass
    field holding it names), in place of its dump; what it returns as ``_DROPPED`` is
    left out (a model excluding itself from uids)."""
    if dumped is None and type(value) is float:
        return value  # inf/nan: the json dump says null (None itself stays None)
    if type(dumped) is dict:
        if isinstance(value, pydantic.BaseModel):  # (its fields, by name: they may hold sets)
            if models is not None:
                return models(value, dumped, declared) if declared else models(value, dumped)
            fields = value.__dict__
            return {
                k: _sets_ordered(fields[k], d, only_seeded, drops) if k in fields else d
                for k, d in dumped.items()
            }
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            skipped = _INIT_ONLY.get(type(value))  # (the memo read inline: a hot path)
            if skipped is None:
                skipped = init_only_fields(type(value))
            if skipped and drops is not None:  # (also when the dump had left them out)
                drops.append(1)
            if models is not None:  # (models inside: the classes their fields name)
                hints = _dataclass_facts(type(value), None).hints
                return _kept(
                    {
                        k: _sets_ordered(
                            getattr(value, k),
                            d,
                            only_seeded,
                            drops,
                            models,
                            annotated_models(hints.get(k)),
                        )
                        if hasattr(value, k)
                        else d
                        for k, d in dumped.items()
                        if k not in skipped
                    }
                )
            return {
                k: _sets_ordered(getattr(value, k), d, only_seeded, drops, models)
                if hasattr(value, k)
                else d
                for k, d in dumped.items()
                if k not in skipped
            }
        if isinstance(value, dict) and len(value) == len(dumped):  # (keys in the same order)
            return _kept(
                {
                    k: _sets_ordered(v, d, only_seeded, drops, models, declared)
                    for v, (k, d) in zip(value.values(), dumped.items())
                }
            )
        return dumped
    if (
        type(dumped) is not list
        or not isinstance(value, collections.abc.Sized)
        or len(dumped) != len(value)
    ):
        return dumped  # (a list dump of something else: a dataclass's own serializer's)
    if isinstance(value, set | frozenset):  # (items in iteration order: the dump's)
        items = [
            _sets_ordered(s, d, only_seeded, drops, models, declared) for s, d in zip(value, dumped)
        ]
        if models is not None:
            items = [item for item in items if item is not _DROPPED]
        if only_seeded and not any(_hash_seeded(item) for item in value):
            return items
        return _ordered_set(items)
    if isinstance(value, list | tuple):
        items = [
            _sets_ordered(s, d, only_seeded, drops, models, declared) for s, d in zip(value, dumped)
        ]
        return [item for item in items if item is not _DROPPED] if models is not None else items
    return dumped


# what _sets_ordered's ``models`` returns for a model left out of a uid (see _held_model)
_DROPPED: tp.Any = object()


def _kept(items: dict[str, tp.Any]) -> dict[str, tp.Any]:
    """A dict without the values left out (``_DROPPED``)."""
    if any(item is _DROPPED for item in items.values()):
        return {key: item for key, item in items.items() if item is not _DROPPED}
    return items


def _hash_seeded(item: tp.Any) -> bool:
    """Whether the hash of a set item may change from process to process (PYTHONHASHSEED:
    strings, bytes, enums...; numbers never, and so neither do tuples of them)."""
    if isinstance(item, tuple | frozenset):
        return any(_hash_seeded(sub) for sub in item)
    if isinstance(item, enum.Enum):
        return True  # (hashed by its name)
    return item is not None and not isinstance(item, int | float | complex)


def _ordered_set(dumped: list[tp.Any]) -> list[tp.Any]:
    """The json items of a set in a fixed order (as a uid sorts them): a json dump lists a
    set in hash order, which changes from process to process for strings."""
    return sorted(dumped, key=uidformat.set_order)


_SCALARS = (str, int, float, bool, type(None), bytes, PurePath)


def _scalar_annotation(annotation: tp.Any) -> bool:
    """Whether a field annotation can only hold plain values (never a model)."""
    if isinstance(annotation, type):  # (a class, the common case: no typing call)
        return issubclass(annotation, _SCALARS)
    if type(annotation) is types.UnionType:  # X | Y
        return all(_scalar_annotation(arg) for arg in annotation.__args__)
    origin = tp.get_origin(annotation)
    if origin is tp.Literal:
        return True
    if origin is tp.Annotated:
        return _scalar_annotation(tp.get_args(annotation)[0])
    if origin is tp.Union or origin is types.UnionType:
        return all(_scalar_annotation(arg) for arg in tp.get_args(annotation))
    return isinstance(annotation, type) and issubclass(annotation, _SCALARS)


def _plain_annotation(annotation: tp.Any) -> bool:
    """Whether a field annotation only allows values whose json dump is their export:
    scalars, and lists/tuples/sets of them (dicts are not: an OrderedDict keeps its type)."""
    if _scalar_annotation(annotation):
        return True
    origin = tp.get_origin(annotation)
    if origin in (list, tuple, set, frozenset):
        args = tp.get_args(annotation)
        return bool(args) and all(arg is Ellipsis or _scalar_annotation(arg) for arg in args)
    return False
