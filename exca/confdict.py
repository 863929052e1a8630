"""ConfDict: a dict of config values whose keys split on "." into sub-dicts.

``ConfDict({"a.b": 1}) == {"a": {"b": 1}}``; numeric parts index lists (``"layers.0.size"``).
Setting a dict merges it into the existing sub-dict unless it holds ``ConfDict.OVERRIDE``.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import io
import re
import typing as tp
from pathlib import Path, PurePath

from . import plainyaml, uidformat
from .storage.modules import imported

if tp.TYPE_CHECKING:
    import pydantic

_MISSING: tp.Any = object()


def _to_confdict_value(value: tp.Any) -> tp.Any:
    """Plain dicts become ConfDicts (recursively, also inside lists); OrderedDicts are kept
    (copied). Containers are never the caller's: a dotted write would change them."""
    if isinstance(value, dict) and not isinstance(value, ConfDict | collections.OrderedDict):
        return ConfDict(value)
    if type(value) is list:
        if any(isinstance(item, dict | list) for item in value):
            return [_to_confdict_value(item) for item in value]  # also lists of lists of dicts
        return list(value)
    if isinstance(value, collections.OrderedDict | tuple | set):
        return _deep_copy(value)
    return value


# values a dotted key sets as they are (no copy, no merge): what _set_leaf may write
_LEAF_TYPES = frozenset({str, int, float, bool, type(None)})


def _set_leaf(root: ConfDict, key: str, value: tp.Any) -> bool:
    """``root[key] = value`` for a dotted key whose value is a leaf (see _LEAF_TYPES) and
    whose existing parents are all ConfDicts (missing ones are made): the result of
    ``__setitem__``'s general path at a fraction of its cost. Returns False, having
    changed nothing, when a part already holds anything else (a leaf it replaces, a list
    it indexes, a tuple, another mapping): the caller takes the general path then."""
    parts = key.split(".")
    last = parts.pop()
    node = root
    for part in parts:
        sub = dict.get(node, part, _MISSING)
        if type(sub) is not ConfDict:
            if sub is not _MISSING:
                return False  # (nothing made yet: below a made part, all parts are missing)
            sub = dict.__new__(ConfDict)  # (an empty one, without __init__'s call)
            dict.__setitem__(node, part, sub)
        node = sub
    dict.__setitem__(node, last, value)
    return True


def _plain_keys(data: dict[tp.Any, tp.Any]) -> bool:
    """Whether a ConfDict made of these nested dicts/lists would hold the same keys and
    structure (no dotted key, no override marker; lists of lists are not looked into)."""
    for key, value in data.items():
        if type(key) is not str or "." in key or key == ConfDict.OVERRIDE:
            return False
        kind = type(value)
        if kind is dict:
            if not _plain_keys(value):
                return False
        elif kind is list:
            for item in value:
                kind = type(item)
                if kind is list or (kind is dict and not _plain_keys(item)):
                    return False
        elif isinstance(value, dict) and not isinstance(value, collections.OrderedDict):
            return False  # another mapping type: ConfDict converts it
    return True


def _yaml_text(collapsed: tp.Any) -> str:
    text = plainyaml.dump(collapsed)  # simple configs: the same text, no yaml import
    if text is None:
        yaml = plainyaml.pyyaml()

        # (libyaml writes an empty key as a plain one, `'': 1`: PyYAML's own emitter
        # writes `? ''`, the text safe_dump gives)
        dumper = _dumper_class(libyaml=not _has_empty_key(collapsed))
        text = yaml.dump(collapsed, Dumper=dumper, sort_keys=False, allow_unicode=False)
    return text


def _surrogate_said(text: str) -> str:
    """What to say of yaml text holding a lone surrogate (not valid unicode)."""
    found = re.search("[\ud800-\udfff]", text)
    if found is None:  # (not expected: libyaml refused it for that)
        return "The yaml text is not valid unicode (lone surrogates)"
    line = text.count("\n", 0, found.start()) + 1
    start = text.rfind("\n", 0, found.start()) + 1
    end = text.find("\n", found.start())
    shown = text[start : end if end >= 0 else len(text)]
    return (
        f"The yaml text holds {found.group()!r}, a lone surrogate (not valid unicode), at "
        f"line {line}, column {found.start() - start + 1}: {shown!r} (e.g. a file name decoded "
        "by os.listdir). Make it valid text, e.g. os.fsencode(name).decode('utf8', 'replace')"
    )


def _has_empty_key(value: tp.Any) -> bool:
    if isinstance(value, dict):
        return "" in value or any(_has_empty_key(sub) for sub in value.values())
    if isinstance(value, list | tuple):
        return any(_has_empty_key(sub) for sub in value)
    return False


def _indices_patch(value: tp.Mapping[str, tp.Any]) -> bool:
    """Whether a dict merged into a list is a patch of its items by index."""
    return (
        bool(value)
        and not _wants_replace(value)
        and all(isinstance(k, str) and k.isascii() and k.isdigit() for k in value)
    )


def _set_in(container: tp.Any, key: str, value: tp.Any) -> None:
    """``container[key] = value`` without a ConfDict's key splitting (an OrderedDict
    keeps its order bookkeeping: dict's own methods would bypass it)."""
    if isinstance(container, ConfDict):
        dict.__setitem__(container, key, value)
    else:
        container[key] = value


def _wants_replace(mapping: tp.Mapping[str, tp.Any]) -> bool:
    """Whether a dict asks to replace rather than merge (``"=replace=": true``)."""
    return _flag_set(mapping.get(ConfDict.OVERRIDE, False))


def _flag_set(flag: tp.Any) -> bool:
    """A replace marker's value (the text "false" of a command line is not set; a text
    that is neither true nor false is refused: a typo, "ture", replaced a whole
    sub-config)."""
    if isinstance(flag, str):
        text = flag.strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("", "false", "0", "no", "off"):
            return False
    elif flag is None or isinstance(flag, int):  # (bool, and YAML's 0/1)
        return bool(flag)
    # (a dict or list there was read as true: the sub-config cleared, the dict's keys lost)
    raise ValueError(
        f"{ConfDict.OVERRIDE} is {flag!r}: give true (replace the sub-config) or false "
        "(merge into it)"
    )


class _NotAnIndex(TypeError):
    pass


def _index(container: tp.Sequence[tp.Any], part: str, full_key: str) -> int:
    if not part.isdigit():
        raise _NotAnIndex(f"Cannot index a list with {part!r} in key {full_key!r}: use a number")
    return int(part)


def _out_of_range(
    container: tp.Sequence[tp.Any], part: str, full_key: str, at: str | None = None
) -> IndexError:
    """The IndexError of a dotted key indexing past the end of a list (naming the key, and
    ``at``: the key of that list, when known)."""
    size = len(container)
    indices = f"indices 0 to {size - 1}" if size else "no index"
    where = f"{at!r} is a list of" if at is not None else "the list there has"
    whole = f" ({at!r}: [...])" if at is not None else ""
    return IndexError(
        f"Index {part} of key {full_key!r} is out of range: {where} {size} item(s) "
        f"({indices}); to change its length, set the whole list{whole}"
    )


def _import_uid_version() -> int:
    try:
        return uidformat.uid_version(None)
    except ValueError:  # (a bad CONFDICT_UID_VERSION fails the uid calls, not the import)
        return uidformat.DEFAULT_UID_VERSION


class ConfDict(dict[str, tp.Any]):
    """Dictionary that splits keys on "." into nested sub-dictionaries.

    Examples: ``cd["a.b"] = 1`` is ``cd["a"]["b"] = 1``; ``cd["a.0"]`` indexes a list;
    ``cd.flat()`` goes back to dotted keys; ``cd.to_uid()`` gives the uid string.
    """

    OVERRIDE = "=replace="
    # the version in force when exca was imported (the environment is read again by
    # each to_uid call: it wins over this attribute when set)
    UID_VERSION = _import_uid_version()

    def __init__(self, mapping: tp.Mapping[str, tp.Any] | None = None, **kwargs: tp.Any) -> None:
        super().__init__()
        if mapping is None and not kwargs:
            return  # (an empty one: made for each part of every dotted key set)
        if type(mapping) is dict and not kwargs and self.OVERRIDE not in mapping:
            self._fill(mapping)  # the common case: an exported config, no dotted keys
        else:
            self.update(mapping, **kwargs)

    def _fill(self, mapping: dict[str, tp.Any]) -> None:
        marker = "." + self.OVERRIDE
        for key, value in mapping.items():
            if type(key) is not str or "." in key or dict.__contains__(self, key):
                if isinstance(key, str) and key.endswith(marker):
                    dict.clear(self)  # a flat replace marker: update() orders the keys
                    self.update(mapping)
                    return
                self[key] = value  # dotted keys (and repeats) merge into what is there
            elif type(value) is dict:
                dict.__setitem__(self, key, ConfDict(value))
            else:
                dict.__setitem__(self, key, _to_confdict_value(value))

    # --- dotted access ------------------------------------------------------------------
    @staticmethod
    def _check_key(key: tp.Any) -> str:
        if not isinstance(key, str):
            raise TypeError(f"ConfDict keys must be strings, got {key!r} ({type(key).__name__})")
        return key

    @staticmethod
    def _step(container: tp.Any, part: str, full_key: str) -> tp.Any:
        """One step down a dotted path (raises KeyError/IndexError/TypeError as dict/list would)."""
        if isinstance(container, dict):
            try:
                return dict.__getitem__(container, part)
            except KeyError:  # (the whole key, as a dict says: 'c' alone named no place)
                raise KeyError(full_key) from None
        if isinstance(container, list | tuple):
            if not part.isdigit():
                raise TypeError(
                    f"Cannot index a list with {part!r} in key {full_key!r}: use a number"
                )
            try:
                return container[int(part)]
            except IndexError:
                raise _out_of_range(container, part, full_key) from None
        raise KeyError(f"{full_key!r}: {part!r} cannot index a {type(container).__name__}")

    def _parent(self, key: str, create: bool) -> tuple[tp.Any, str]:
        """The container holding the last part of a dotted key, and that last part."""
        parts = key.split(".")
        node: tp.Any = self
        for i, part in enumerate(parts[:-1]):
            if create and isinstance(node, dict):
                sub = dict.get(node, part, _MISSING)
                if type(sub) is ConfDict:  # (the common case, first)
                    node = sub
                    continue
                if not isinstance(sub, dict | list | tuple):
                    sub = ConfDict()
                    _set_in(node, part, sub)
                node = sub
            elif create and isinstance(node, list | tuple) and part.isdigit():
                if int(part) >= len(node):  # (naming the list: a write may give it whole)
                    raise _out_of_range(node, part, key, at=".".join(parts[:i]))
                node = node[int(part)]
            else:
                node = self._step(node, part, key)
        return node, parts[-1]

    def __getitem__(self, key: str) -> tp.Any:
        if "." not in self._check_key(key):
            return dict.__getitem__(self, key)
        node: tp.Any = self
        for part in key.split("."):
            node = self._step(node, part, key)
        return node

    def get(self, key: str, default: tp.Any = None) -> tp.Any:
        try:
            return self[key]
        except (KeyError, IndexError, TypeError):  # (TypeError: a dotted key into a list)
            return default

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        try:
            self[key]
        except (KeyError, IndexError, TypeError):
            return False
        return True

    def __setitem__(self, key: str, value: tp.Any) -> None:
        if type(key) is str and type(value) in _LEAF_TYPES and _set_leaf(self, key, value):
            return  # (the common case of from_args and of dotted updates)
        self._check_key(key)
        parent, last = self._parent(key, create=True) if "." in key else (self, key)
        if isinstance(parent, list | tuple):
            index = _index(parent, last, key)
            if index >= len(parent):
                raise _out_of_range(parent, last, key, at=key.rsplit(".", 1)[0])
            existing = parent[index]
            if isinstance(existing, list | tuple) and _mergeable(value) and _indices_patch(value):
                for sub, item in value.items():  # (a list in a list: by index too)
                    self[f"{key}.{sub}"] = item
                return
            if _mergeable(value) and isinstance(existing, dict) and not _wants_replace(value):
                patch = {k: v for k, v in value.items() if k != ConfDict.OVERRIDE}
                if isinstance(existing, ConfDict):
                    existing.update(patch)
                    return
                value = ConfDict(existing)  # (a plain dict in a tuple: merged too, then set)
                value.update(patch)
            if _mergeable(value):
                value = ConfDict({k: v for k, v in value.items() if k != ConfDict.OVERRIDE})
            if isinstance(parent, list):
                parent[index] = _to_confdict_value(value)
            else:  # a tuple: replaced by a copy with the new item
                items = list(parent)
                items[index] = _to_confdict_value(value)
                self[key.rsplit(".", 1)[0]] = tuple(items)
            return
        self._merge_into(parent, last, value)

    @staticmethod
    def _merge_into(parent: dict[str, tp.Any], key: str, value: tp.Any) -> None:
        if _mergeable(value):
            existing = dict.get(parent, key, _MISSING)
            if isinstance(existing, list | tuple) and _indices_patch(value):
                # ({"0": 0.5}: a patch read from "betas.0" by from_args or from_yaml, where
                # no list was there to index) items set by index, as cd["betas.0"] = 0.5
                # does (it replaced the list with a dict)
                holder = ConfDict()
                dict.__setitem__(holder, key, existing)
                for index, item in value.items():
                    holder[f"{key}.{index}"] = item
                _set_in(parent, key, dict.__getitem__(holder, key))
                return
            if _wants_replace(value) or not isinstance(existing, ConfDict):
                existing = ConfDict()
                _set_in(parent, key, existing)
            existing.update({k: v for k, v in value.items() if k != ConfDict.OVERRIDE})
            return
        _set_in(parent, key, _to_confdict_value(value))

    def setdefault(self, key: str, default: tp.Any = None) -> tp.Any:
        """``self[key]`` if there (dotted keys allowed), else set it to ``default``."""
        if key not in self:
            self[key] = default
        return self[key]

    def __ior__(self, other: tp.Any) -> tp.Self:  # type: ignore[override]
        self.update(other)
        return self

    def __or__(self, other: tp.Any) -> ConfDict:  # type: ignore[override]
        if not isinstance(other, collections.abc.Mapping):
            return NotImplemented
        out = self.copy()
        out.update(other)
        return out

    def update(  # type: ignore[override]
        self, mapping: tp.Mapping[str, tp.Any] | None = None, **kwargs: tp.Any
    ) -> None:
        """Merge values in (dotted keys allowed); ``{ConfDict.OVERRIDE: True}`` clears first."""
        for source in (mapping or {}, kwargs):
            if not isinstance(source, collections.abc.Mapping):
                try:  # key/value pairs, as dict.update takes (dataclasses.asdict gives those)
                    source = dict(source)
                except (TypeError, ValueError):
                    raise TypeError(
                        f"ConfDict.update expects a mapping or key/value pairs, "
                        f"got {type(source).__name__}"
                    ) from None
            if _wants_replace(source):
                dict.clear(self)
            # a flat patch ({"model.=replace=": True, "model.kind": ...}, e.g. a patch's
            # flat()) replaces as its nested form does, whatever the order of its keys
            suffix = "." + self.OVERRIDE
            markers = [k for k in source if isinstance(k, str) and k.endswith(suffix)]
            for key in markers:
                if _flag_set(source[key]):
                    self[key[: -len(suffix)]] = {self.OVERRIDE: True}
            for key, value in source.items():
                if key != self.OVERRIDE and not (markers and key in markers):
                    self[key] = value

    def __delitem__(self, key: str) -> None:
        self.pop(key)

    def pop(self, key: str, default: tp.Any = _MISSING) -> tp.Any:
        """Remove a (dotted) key and return its value; empty parent dicts are pruned."""
        self._check_key(key)
        parts = key.split(".")
        chain: list[tuple[tp.Any, str]] = []
        node: tp.Any = self
        try:
            for part in parts[:-1]:
                chain.append((node, part))
                node = self._step(node, part, key)
            if isinstance(node, list):
                value = node.pop(_index(node, parts[-1], key))
            elif isinstance(node, tuple):
                index = _index(node, parts[-1], key)
                value = node[index]
                self[".".join(parts[:-1])] = node[:index] + node[index + 1 :]
            elif isinstance(node, ConfDict) or not isinstance(node, dict):
                value = dict.pop(node, parts[-1])  # (TypeError on a non-dict: not found)
            else:  # (an OrderedDict: its own pop keeps its order bookkeeping)
                value = node.pop(parts[-1])
        except (KeyError, IndexError, TypeError, ValueError) as error:
            if default is not _MISSING:
                return default  # (as get does)
            if isinstance(error, _NotAnIndex):
                raise  # (as cd[key] does: "a.x" or "a.-1" on a list is not a missing key)
            raise KeyError(key) from None
        for parent, part in reversed(chain):  # prune empty parents
            child = self._step(parent, part, key)
            if isinstance(child, dict) and not child and isinstance(parent, dict):
                if isinstance(parent, ConfDict):
                    dict.__delitem__(parent, part)
                else:
                    del parent[part]
            else:
                break
        return value

    # --- conversions ----------------------------------------------------------------------
    def flat(self) -> dict[str, tp.Any]:
        """Dotted keys down to the leaves: {"a": {"b": 1}} -> {"a.b": 1}."""
        out: dict[str, tp.Any] = {}
        _flatten(self, None, out)
        return out

    def copy(self) -> ConfDict:
        return ConfDict(_deep_copy(self))

    def to_uid(self, version: int | None = None) -> str:
        """The uid string of this config (v3 by default, v2 with version=2 or the env)."""
        if version is None and not uidformat.environ_value(uidformat.UID_VERSION_ENV):
            version = self.UID_VERSION
        return uidformat.to_uid(self, version=version)

    @classmethod
    def uid_of(cls, data: dict[str, tp.Any], plain_keys: bool = False) -> str:
        """``ConfDict(data).to_uid()``, without building the ConfDict when ``data`` has no
        key that it would split or merge (the common case of an exported config).
        ``plain_keys=True``: the caller knows it has none (no check)."""
        if not plain_keys and not _plain_keys(data):
            return cls(data).to_uid()
        version = None if uidformat.environ_value(uidformat.UID_VERSION_ENV) else cls.UID_VERSION
        return uidformat.to_uid(data, version=version)

    @classmethod
    def yaml_of(cls, data: dict[str, tp.Any], plain_keys: bool = False) -> str:
        """``ConfDict(data).to_yaml()``, without building the ConfDict when ``data`` has
        no key that it would split or merge (see ``uid_of``)."""
        if not plain_keys and not _plain_keys(data):
            return cls(data).to_yaml()
        try:
            return _yaml_text(uidformat.collapse(data))
        except UnicodeEncodeError:
            raise ValueError(uidformat.not_utf8(data, use="be written as yaml")) from None

    def to_yaml(self, filepath: Path | str | None = None) -> str:
        """YAML text with chains of single-key dicts collapsed (``a.b.c: 1``)."""
        try:
            text = _yaml_text(uidformat.collapse(self))
        except UnicodeEncodeError:  # (libyaml's bare "surrogates not allowed" named nothing)
            raise ValueError(uidformat.not_utf8(self, use="be written as yaml")) from None
        if filepath is not None:
            Path(filepath).write_text(text, encoding="utf8")
        return text

    @classmethod
    def from_yaml(cls, yaml_text: str | Path | tp.IO[str]) -> ConfDict:
        """Load from YAML text, a path, or an open file (a one-line existing path is read)."""
        yaml = plainyaml.pyyaml()

        if isinstance(yaml_text, PurePath):
            yaml_text = Path(yaml_text).read_text(encoding="utf8")
        elif isinstance(yaml_text, str):
            if "\n" not in yaml_text.strip() and _is_existing_file(yaml_text):
                yaml_text = Path(yaml_text.strip()).read_text(encoding="utf8")
        elif isinstance(yaml_text, io.IOBase) or hasattr(yaml_text, "read"):
            yaml_text = yaml_text.read()
        # (libyaml's C parser when PyYAML has it: ~6x faster on a big config; the same
        # constructor and resolver as safe_load, so the same values and types)
        try:
            data = yaml.load(yaml_text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except UnicodeEncodeError:  # (libyaml's bare "surrogates not allowed" named nothing)
            raise ValueError(_surrogate_said(str(yaml_text))) from None
        return cls._from_loaded(data, yaml_text)

    @classmethod
    def _from_loaded(cls, data: tp.Any, yaml_text: tp.Any) -> ConfDict:
        """``from_yaml`` of yaml already loaded: ``data`` (``yaml_text``: its text)."""
        if not isinstance(data, dict):
            text = str(yaml_text).strip()
            if isinstance(data, str) and "\n" not in text and text.endswith((".yaml", ".yml")):
                raise FileNotFoundError(
                    f"No such yaml file: {text!r} (a path is read when the file exists; "
                    "any other text is parsed as yaml)"
                )
            raise TypeError(
                f"YAML config must hold a mapping, got {type(data).__name__}: {str(yaml_text)[:200]!r}"
            )
        out = cls(data)
        _keep_markers(out, data)
        return out

    @classmethod
    def from_model(
        cls, model: pydantic.BaseModel, uid: bool = False, exclude_defaults: bool = False
    ) -> ConfDict:
        """Export a pydantic model (uid=True keeps only what identifies the computation)."""
        import pydantic

        from .infra import identity

        if not isinstance(model, pydantic.BaseModel):
            raise TypeError(
                f"from_model takes a pydantic model instance, got {type(model).__name__} "
                "(for a dict, use ConfDict(the_dict))"
            )
        return cls(identity.export_model(model, uid=uid, exclude_defaults=exclude_defaults))

    @classmethod
    def from_args(cls, args: tp.Sequence[str]) -> ConfDict:
        """Parse ``["--a.b=1", "--c=x"]`` into a ConfDict (values stay strings)."""
        if isinstance(args, str):
            raise TypeError(
                f"from_args takes a list of arguments (e.g. sys.argv[1:]), got a string "
                f"{args[:80]!r}: use from_args({args.split()[:3]!r})"
            )
        out = cls()
        for arg in args:
            if not arg.startswith("--") or "=" not in arg:
                raise ValueError(f"Cannot parse argument {arg!r}: expected the form --key=value")
            text = arg[2:]
            marker = text.find(cls.OVERRIDE)
            if marker >= 0 and "=" not in text[:marker]:  # --model.=replace==true
                end = marker + len(cls.OVERRIDE)
                key, value = text[:end], text[end + 1 :]
                if text[end : end + 1] != "=":
                    raise ValueError(
                        f"Cannot parse argument {arg!r}: expected --key.{cls.OVERRIDE}=true"
                    )
            else:
                key, value = text.split("=", 1)
            if not key:
                raise ValueError(f"Empty key in argument {arg!r}: expected the form --key=value")
            # (a typo: "optim..lr" made a key ""; a last part "" is the key "" of a dict,
            # as flat() writes it: {"weights": {"": 1.0}} -> "weights.")
            if "" in key.split(".")[:-1]:
                raise ValueError(
                    f"Key {key!r} of argument {arg!r} has an empty part: expected names "
                    "separated by single dots, e.g. --optim.lr=0.1"
                )
            out[key] = value
        return out


# (its keys are split on "."; what a uid need not check: see uidformat.DOTLESS_DICTS)
uidformat.DOTLESS_DICTS.add(ConfDict)


def _mergeable(value: tp.Any) -> tp.TypeGuard[dict[str, tp.Any]]:
    """A dict value merges into what is there (an OrderedDict replaces: its order counts)."""
    return isinstance(value, dict) and not isinstance(value, collections.OrderedDict)


def _keep_markers(target: ConfDict, source: dict[str, tp.Any]) -> None:
    """Put back the ``=replace=`` markers of ``source`` that building ``target`` applied:
    a ConfDict read from yaml is a patch that replaces when merged, as ``from_args``'s."""
    if ConfDict.OVERRIDE in source:
        dict.__setitem__(target, ConfDict.OVERRIDE, source[ConfDict.OVERRIDE])
    for key, value in source.items():
        if _mergeable(value) and isinstance(key, str) and key != ConfDict.OVERRIDE:
            node = target.get(key)
            if isinstance(node, ConfDict):
                _keep_markers(node, value)


def _is_existing_file(text: str) -> bool:
    try:
        return Path(text.strip()).is_file()
    except OSError:
        return False


def _flatten(value: tp.Any, prefix: str | None, out: dict[str, tp.Any]) -> None:
    """``prefix``: the dotted key of ``value`` (None at the top: "" is a key like others)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            _flatten(sub, str(key) if prefix is None else f"{prefix}.{key}", out)
    elif prefix is not None:
        out[prefix] = value
    # an empty top-level dict flattens to {}


def _deep_copy(value: tp.Any) -> tp.Any:
    if isinstance(value, collections.OrderedDict):
        return collections.OrderedDict((k, _deep_copy(v)) for k, v in value.items())
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    if type(value) is tuple:  # (a tuple of dicts: dotted writes go into its dicts)
        return tuple(_deep_copy(v) for v in value)
    if type(value) is set:
        return set(value)
    return value


_DUMPERS: dict[bool, tp.Any] = {}


def _sorted_items(items: tp.Iterable[tp.Any]) -> list[tp.Any]:
    """The items of a set in an order that is the same in every process."""
    try:
        return sorted(items)
    except TypeError:  # (items of several types: each type's items together)
        return sorted(items, key=lambda item: (type(item).__name__, repr(item)))


def _dumper_class(libyaml: bool = True) -> tp.Any:
    """A SafeDumper that also writes ConfDict, OrderedDict, tuples, Paths and numpy scalars
    (``libyaml``: on libyaml's C emitter when available, much faster)."""
    found = _DUMPERS.get(libyaml)
    if found is not None:
        return found
    yaml = plainyaml.pyyaml()
    base = getattr(yaml, "CSafeDumper", yaml.SafeDumper) if libyaml else yaml.SafeDumper

    class Dumper(base):  # type: ignore[misc,valid-type]
        pass

    def mapping(dumper: tp.Any, data: dict[str, tp.Any]) -> tp.Any:
        return dumper.represent_dict(data.items())

    def sequence(dumper: tp.Any, data: tuple[tp.Any, ...]) -> tp.Any:
        return dumper.represent_list(list(data))

    def unordered(dumper: tp.Any, data: set[tp.Any] | frozenset[tp.Any]) -> tp.Any:
        # sorted: a set of strings iterates in another order in each process (the yaml
        # text of one config would differ); a frozenset is written as a set too
        return dumper.represent_set(_sorted_items(data))

    def path(dumper: tp.Any, data: PurePath) -> tp.Any:
        return dumper.represent_str(str(data))

    def fallback(dumper: tp.Any, data: tp.Any) -> tp.Any:
        if isinstance(data, enum.Enum):  # by value, as a model's export writes it
            return dumper.represent_data(data.value)
        np = imported("numpy")
        if np is not None:
            if isinstance(data, np.bool_):
                return dumper.represent_bool(bool(data))
            if isinstance(data, np.integer):
                return dumper.represent_int(int(data))
            if isinstance(data, np.floating):
                return dumper.represent_float(float(data))
        if isinstance(data, str):
            return dumper.represent_str(str(data))
        # (PyYAML's own error, "cannot represent an object", said neither which type nor
        # what to do; a Decimal or a Fraction has no yaml form that reads back as itself)
        raise TypeError(
            f"ConfDict.to_yaml cannot write a value of type {type(data).__name__} "
            f"({data!r:.80}): convert it first to a str, int, float, list or dict (a model's "
            "export writes a Decimal as its str, e.g. through ConfDict.from_model)"
        )

    Dumper.add_representer(ConfDict, mapping)
    Dumper.add_representer(collections.OrderedDict, mapping)
    Dumper.add_representer(tuple, sequence)
    Dumper.add_representer(set, unordered)
    Dumper.add_representer(frozenset, unordered)
    Dumper.add_multi_representer(PurePath, path)
    Dumper.add_multi_representer(object, fallback)
    _DUMPERS[libyaml] = Dumper
    return Dumper


def env_uid_version() -> int:
    """The uid version in force (``CONFDICT_UID_VERSION``, default 3)."""
    return uidformat.uid_version(None)


__all__ = ["ConfDict", "env_uid_version"]
