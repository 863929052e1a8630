"""The uid string format: a readable part plus an 8-hex digest of the typed content.

A value is rendered recursively into a pair ``(display, typed hash)``. The display is
cleaned and truncated at every level so that uids stay short and safe as folder names;
the typed hash is never truncated, so two configs whose displays collide still get
different digests. ``v3`` is the default; ``v2`` is the legacy format, kept so that
existing cache folders can be found (see the SPEC appendix for the exact rules).
"""

from __future__ import annotations

import collections
import decimal
import enum
import fractions
import hashlib
import logging
import os
import re
import sys
import typing as tp
from pathlib import PurePath

from .storage.modules import imported

logger = logging.getLogger(__name__)

UID_VERSION_ENV = "CONFDICT_UID_VERSION"
TYPE_BYPASS_ENV = "CONFDICT_UID_TYPE_BYPASS"
DEFAULT_UID_VERSION = 3
MAX_DISPLAY_V3 = 128
MAX_DISPLAY_V2 = 82
V2_ELISION_KEEP = 35

# v3 keeps A-Z a-z 0-9 { } - = , _ . ( ) ; "/ \ newline tab space" first become "-"
_V3_ALLOWED = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789{}-=,_.()")
_V2_ALLOWED = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789{}[]-=,.")
_DASHED = "/\\\n\t "


def _ascii_table(allowed: set[str]) -> dict[int, str | None]:
    table: dict[int, str | None] = {}
    for code in range(128):
        char = chr(code)
        if char in _DASHED:
            table[code] = "-"
        elif char not in allowed:
            table[code] = None
    return table


_V3_TABLE = _ascii_table(_V3_ALLOWED)
_V2_TABLE = _ascii_table(_V2_ALLOWED)
try:  # CPython's own md5, for short texts: OpenSSL's first md5 of a process costs ~50 us
    from _md5 import md5 as _small_md5  # type: ignore[import-not-found]  # same digests
except ImportError:  # (an interpreter built without it)
    _small_md5 = hashlib.md5
_V3_FORBIDDEN = re.compile(r"[^A-Za-z0-9{}\-=,_.()]")
_V2_FORBIDDEN = re.compile(r"[^A-Za-z0-9{}\[\]\-=,.]")


def uid_version(version: int | None = None) -> int:
    """The uid format version to use: explicit, else the environment, else 3."""
    if version is not None:
        if version not in (2, 3):
            raise ValueError(f"Unknown uid version {version!r}: use 2 (legacy) or 3")
        return version
    env = environ_value(UID_VERSION_ENV)
    if not env:
        return DEFAULT_UID_VERSION
    if env not in ("2", "3"):
        raise ValueError(f"{UID_VERSION_ENV}={env!r} is not a uid version: use 2 or 3")
    return int(env)


# os.environ's own store and key encoding (CPython's os._Environ), when there: a look for
# an unset variable there costs ~30 ns, os.environ.get ~700 ns (it raises and catches a
# KeyError), and every uid looks (os.environ changes update that store as well; an
# os.environ replaced by another mapping, as mock.patch.object(os, "environ", ...) does,
# is asked its own way).
_ENVIRON = os.environ
_ENVIRON_STORE: tp.Any = getattr(_ENVIRON, "_data", None)
_ENVIRON_KEYS: dict[str, tp.Any] = {}  # name -> its key in that store


def environ_value(name: str) -> str | None:
    """``os.environ.get(name)``, quicker when the variable is unset (the common case)."""
    environ = os.environ
    if environ is _ENVIRON and _ENVIRON_STORE is not None:
        key = _ENVIRON_KEYS.get(name)
        if key is None:
            try:
                key = _ENVIRON_KEYS[name] = _ENVIRON.encodekey(name)
            except Exception:  # (another os.environ than CPython's: asked its own way)
                key = _ENVIRON_KEYS[name] = False
        if key is not False and key not in _ENVIRON_STORE:
            return None
    return environ.get(name)


def _clean(text: str, table: dict[int, str | None], forbidden: re.Pattern[str]) -> str:
    if text.isascii():
        return text.translate(table)
    return forbidden.sub("", text.translate(table))


def _clean_v3(text: str) -> str:
    return _cut_v3(_clean(text, _V3_TABLE, _V3_FORBIDDEN))


def _cut_v3(text: str) -> str:
    """The 128-character cut of a clean display: the first 128 and "...<number cut>"."""
    if len(text) > MAX_DISPLAY_V3:
        return f"{text[:MAX_DISPLAY_V3]}...{len(text) - MAX_DISPLAY_V3}"
    return text


def _number_hash(value: tp.Any) -> str:
    """Python's numeric hash (deterministic), except NaN whose hash depends on the object."""
    if value != value:
        return "nan"
    return str(hash(value))


def _float_display(value: float) -> str:
    magnitude = abs(value)
    if 1e-3 <= magnitude <= 1e4:
        return f"{value:.2f}"
    return f"{value:.2e}"


_LEAVES = frozenset({str, int, float, bool, type(None)})


def collapse(data: tp.Any) -> tp.Any:
    """Collapse chains of single-key dicts into dotted keys: {"a": {"b": 1}} -> {"a.b": 1}.

    An OrderedDict is never collapsed into its parent (its order is meaningful and kept);
    the chains inside it are. Lists/tuples are walked so that dicts inside them collapse too.
    """
    if isinstance(data, dict):
        ordered = isinstance(data, collections.OrderedDict)
        out: dict[str, tp.Any] = collections.OrderedDict() if ordered else {}
        for key, value in data.items():
            if type(value) in _LEAVES:
                out[key] = value
                continue
            value = collapse(value)
            while (
                isinstance(value, dict)
                and len(value) == 1
                and not isinstance(value, collections.OrderedDict)
            ):
                ((subkey, value),) = value.items()
                key = f"{key}.{subkey}"
            out[key] = value
        return out
    if isinstance(data, list | tuple):
        return type(data)(collapse(item) for item in data) if type(data) in (list, tuple) else data
    return data


def is_tensor(value: tp.Any) -> bool:
    torch = sys.modules.get("torch")
    tensor_cls = getattr(torch, "Tensor", None) if torch is not None else None
    return isinstance(tensor_cls, type) and isinstance(value, tensor_cls)


def _numpy() -> tp.Any:
    return imported("numpy")


_Rendered = tuple[str, str]  # (display, typed hash)


def _float_v3(value: float) -> tuple[str, str]:
    """(display, typed hash) of a float; integral values render as ints."""
    if value.is_integer():
        text = str(int(value))
        return _cut_v3(text), "int:" + text
    # (cleaning would drop the "+" of exponents: done here)
    fixed = 1e-3 <= abs(value) <= 1e4
    display = f"{value:.2f}" if fixed else f"{value:.2e}".replace("+", "")
    return display, f"float:{_number_hash(value)}"


# Renderings of leaf values, memoized (configs repeat the same values and keys), bounded.
_MEMO_MAX = 20_000
_STR_RENDERS: dict[str, _Rendered] = {}
_INT_RENDERS: dict[int, _Rendered] = {}
_FLOAT_RENDERS: dict[float, _Rendered] = {}
_CLEAN_KEYS: set[str] = set()  # dict keys known to be unchanged by cleaning


def _memo(store: dict[tp.Any, _Rendered], value: tp.Any, rendered: _Rendered) -> _Rendered:
    if len(store) >= _MEMO_MAX:
        store.clear()
    store[value] = rendered
    return rendered


def _str_v3(value: str) -> _Rendered:
    return _STR_RENDERS.get(value) or _memo(_STR_RENDERS, value, (_clean_v3(value), "str:" + value))


def _int_v3(value: int) -> _Rendered:
    found = _INT_RENDERS.get(value)
    if found is None:
        text = str(value)
        found = _memo(_INT_RENDERS, value, (_cut_v3(text), "int:" + text))
    return found


def _float_v3_memo(value: float) -> _Rendered:
    # (NaN never equals itself: it is simply rendered again each time)
    return _FLOAT_RENDERS.get(value) or _memo(_FLOAT_RENDERS, value, _float_v3(value))


_DictItem = tuple[int, str, str, str]  # (len(display), key, "key=display", "key=hash")
# the items of str/int/float values in dicts, by (key, value): configs repeat the same
# keys with the same values. (Equal values of these types render alike: a str equals no
# number, and a float equal to an int is integral, rendered as that int. Not so for
# bool, True == 1: bools are not kept here.)
_LEAF_ITEMS: dict[tuple[str, tp.Any], _DictItem] = {}
_LEAF_ITEM_MAX_TEXT = 256  # (longer items are not kept: the memo stays small)
_LEAF_RENDERS: dict[type, tp.Callable[[tp.Any], _Rendered]] = {}  # filled below


def _leaf_item(key: str, value: tp.Any, kind: type) -> _DictItem:
    """The sort-and-join item of ``key=value`` in a dict (memoized in _LEAF_ITEMS)."""
    rendered = _LEAF_RENDERS[kind](value)
    display = f"{key}={rendered[0]}"
    item = (len(display), key, display, f"{key}={rendered[1]}")
    if len(item[3]) <= _LEAF_ITEM_MAX_TEXT:
        if len(_LEAF_ITEMS) >= _MEMO_MAX:
            _LEAF_ITEMS.clear()
        _LEAF_ITEMS[key, value] = item
    return item


def _clean_key(key: str) -> bool:
    """Whether a dict key is unchanged by cleaning (then a display made of it and of
    cleaned values needs no cleaning again, only the length cut)."""
    if key in _CLEAN_KEYS:
        return True
    if len(key) <= MAX_DISPLAY_V3 and _clean(key, _V3_TABLE, _V3_FORBIDDEN) == key:
        if len(_CLEAN_KEYS) >= _MEMO_MAX:
            _CLEAN_KEYS.clear()
        _CLEAN_KEYS.add(key)
        return True
    return False


_LEAF_RENDERS.update({str: _str_v3, int: _int_v3, float: _float_v3_memo})


class _DictKinds(dict[type, bool]):
    """type -> whether its values are dicts whose single-key chains collapse (any dict but
    an OrderedDict), filled on first sight: cheaper than two isinstance calls per value."""

    def __missing__(self, kind: type) -> bool:
        if len(self) >= _MEMO_MAX:
            self.clear()
            _PLAIN_DICTS.clear()
        found = self[kind] = issubclass(kind, dict) and not issubclass(
            kind, collections.OrderedDict
        )
        if found and all(getattr(kind, name) is getattr(dict, name) for name in _DICT_READS):
            _PLAIN_DICTS.add(kind)
        return found


_COLLAPSIBLE = _DictKinds()
# the collapsible dict types read as dict's own (what _snapshot reads), filled above
_PLAIN_DICTS: set[type] = set()
_DICT_READS = ("items", "values", "keys", "__iter__", "__len__")

# Renderings of whole dicts of leaves (or of single-key dicts of leaves: a ConfDict of
# dotted keys), by a snapshot of their content: configs repeat the same sub-configs, and
# a snapshot costs a few C-level passes where rendering runs Python code for each item.
_DICT_RENDERS: dict[tuple[tp.Any, ...], _Rendered] = {}
_DICT_MEMO_MAX = 4096  # entries, each of at most:
_DICT_MEMO_ITEMS = 64
_DICT_MEMO_TEXT = 4096  # characters of hash
_STR_KIND = {str}
_LEAF_KINDS = frozenset({str, int, float})  # (equal values of these types render alike)


def _snapshot(value: dict[tp.Any, tp.Any]) -> tuple[tp.Any, ...] | None:
    """A hashable copy of a plain dict whose keys are all str and whose values are all
    str/int/float, or all single-key dicts of a str key and such a value; else None.
    (Exact types only: a bool, a str subclass or a numpy number may equal a value it
    does not render as.)"""
    if len(value) > _DICT_MEMO_ITEMS:
        return None
    values = value.values()
    kinds = set(map(type, values))
    if kinds <= _LEAF_KINDS:
        keys = tuple(value)
        return (keys, tuple(values)) if _STR_KIND.issuperset(map(type, keys)) else None
    # (as many keys inside as dicts, and none empty: one key in each; counted first, a
    # dict of bigger dicts is told without listing their keys)
    if not kinds <= _PLAIN_DICTS or sum(map(len, values)) != len(value):
        return None
    try:
        subkeys = next(zip(*values))  # (the first key of each: its only one)
    except StopIteration:  # (an empty dict among them)
        return None
    keys = tuple(value)
    leaves = tuple(map(dict.__getitem__, values, subkeys))
    if _STR_KIND.issuperset(map(type, keys + subkeys)) and _LEAF_KINDS.issuperset(
        map(type, leaves)
    ):
        return (keys, subkeys, leaves)  # (3 parts: never equal to a snapshot of leaves)
    return None


# dict classes whose keys never hold a dot (ConfDict, which splits them: added there): a
# collapsed key cannot be another key of theirs
DOTLESS_DICTS: set[type] = set()


class _SameKeyTwice(ValueError):
    """A dict giving one key twice once chains collapse (``{"a.b": 1, "a": {"b": 2}}``):
    both values were named (``a.b=1,a.b=2``, the uid of ``{"a.b": 2, "a": {"b": 1}}``
    too), where a ConfDict, and the v2 format, keep the last."""


class KeysAlike(ValueError):
    """Two keys of a dict, of different types, whose texts are the same (``1`` and
    ``"1"``): a uid names keys by their text, so ``{1: "x", "1": "y"}`` and
    ``{1: "y", "1": "x"}`` would share it."""

    def __init__(self, first: tp.Any, second: tp.Any, where: str = "") -> None:
        self.keys = (first, second)
        place = f" of {where}" if where else ""
        super().__init__(
            f"The dict keys {first!r} ({type(first).__name__}) and {second!r} "
            f"({type(second).__name__}){place} are written alike in a uid "
            f"({str(second)!r}): two configs swapping their values would share a uid (and "
            "a cache folder). Use keys of one type (e.g. all str)"
        )


def _keys_alike(value: dict[tp.Any, tp.Any]) -> None:
    """Raise KeysAlike for two keys of a dict written alike (see _render_dict)."""
    seen: dict[str, tp.Any] = {}
    for key in value:
        text = str(key)
        if text in seen:
            raise KeysAlike(seen[text], key)
        seen[text] = key


def _twice(items: list[tuple[tp.Any, ...]], key: str) -> bool:
    return sum(1 for item in items if item[1] == key) > 1


class _UidMakerV3:
    """Renders values in the v3 format (see module docstring) as (display, typed hash)."""

    def render(self, value: tp.Any) -> _Rendered:
        kind = type(value)
        if kind is str:
            return _str_v3(value)
        if kind is int:
            return _int_v3(value)
        if kind is bool or value is None:
            text = str(value)
            return text, "int:" + text
        if kind is float:
            return _float_v3_memo(value)
        if kind is dict or isinstance(value, dict):
            return self._render_dict(value)
        if kind is list or kind is tuple or isinstance(value, list | tuple | set | frozenset):
            return self._render_seq(value)
        return self._render_other(value)

    def _render_dict(self, value: dict[tp.Any, tp.Any]) -> _Rendered:
        snapshot = _snapshot(value) if type(value) in _PLAIN_DICTS else None
        if snapshot is None:
            return self._render_items(value)
        found = _DICT_RENDERS.get(snapshot)
        if found is None:
            found = self._render_items(value)
            if len(found[1]) <= _DICT_MEMO_TEXT:
                if len(_DICT_RENDERS) >= _DICT_MEMO_MAX:
                    _DICT_RENDERS.clear()
                _DICT_RENDERS[snapshot] = found
        return found

    def _render_items(self, value: dict[tp.Any, tp.Any]) -> _Rendered:
        ordered = isinstance(value, collections.OrderedDict)
        items: list[_DictItem] = []
        append, render = items.append, self.render
        item_memo, clean_memo, collapsible = _LEAF_ITEMS, _CLEAN_KEYS, _COLLAPSIBLE
        renamed = False  # (a key collapsed: it may be another key's text)
        typed = False  # (a key that is not a str: its text may be another key's)
        for key, sub in value.items():
            if type(key) is not str:
                key, typed = str(key), True
            kind = type(sub)
            # (memo lookups inlined: this loop is the hot path of every uid)
            if kind is str or kind is int or kind is float:
                append(item_memo.get((key, sub)) or _leaf_item(key, sub, kind))
                continue
            # chains of single-key dicts collapse into dotted keys (the loop of
            # collapse(), inlined: a call per value costs ~5% of a uid)
            while collapsible[kind] and len(sub) == 1:
                ((subkey, sub),) = sub.items()
                key, renamed = f"{key}.{subkey}", True
                kind = type(sub)
            if kind is str or kind is int or kind is float:  # (the value ending a chain)
                append(item_memo.get((key, sub)) or _leaf_item(key, sub, kind))
                continue
            # (a dict of many keys: rendered without the dispatch call)
            rendered = self._render_dict(sub) if collapsible[kind] else render(sub)
            display = f"{key}={rendered[0]}"
            # ordered by (len(value display + key), key): short first, NOT alphabetical
            append((len(display), key, display, f"{key}={rendered[1]}"))
        if not items:
            return "{}", "dict:{}"
        if not ordered:
            items.sort()
        _, keys, displays, hashes = zip(*items)  # (no Python code per item)
        if typed and len({str(key) for key in value}) < len(value):
            _keys_alike(value)
        # (an OrderedDict keeps its order: its values are told apart by their places; a
        # ConfDict splits its keys: none holds a dot, none can be another collapsed)
        if (
            renamed
            and not ordered
            and type(value) not in DOTLESS_DICTS
            and len(set(keys)) < len(keys)
        ):
            raise _SameKeyTwice(next(k for k in keys if _twice(items, k)))
        # (whether every key is clean: one set check when all are known)
        clean_keys = clean_memo.issuperset(keys) or all(map(_clean_key, keys))
        display, hashed = ",".join(displays), ",".join(hashes)
        # (keys and values clean: only the cut)
        display = _cut_v3(display) if clean_keys else _clean_v3(display)
        return f"{{{display}}}", f"dict:{{{hashed}}}"

    def _render_seq(self, value: tp.Iterable[tp.Any]) -> tuple[str, str]:
        render, floats = self.render, _FLOAT_RENDERS
        # (a float's memo looked up here: two calls less per item)
        rendered = [(type(item) is float and floats.get(item)) or render(item) for item in value]
        if type(value) is not tuple and isinstance(value, set | frozenset):
            rendered.sort()  # by display; ties (e.g. ":" and ";" both clean to "") by hash
        if rendered:
            displays, hashes = zip(*rendered)
        else:
            displays = hashes = ()
        # (displays are clean, and so is "," between them: only the cut)
        return "(" + _cut_v3(",".join(displays)) + ")", "seq:(" + ",".join(hashes) + ")"

    def _render_other(self, value: tp.Any) -> _Rendered:
        if isinstance(value, enum.Enum):  # by value, as a model's export writes it
            return self.render(value.value)
        if isinstance(value, PurePath):
            return self.render(str(value))
        if isinstance(value, str):
            return self.render(str(value))
        if isinstance(value, bool):
            return self.render(bool(value))
        np = _numpy()
        if is_tensor(value):
            value = value.detach().cpu().numpy()
        if np is not None:
            if isinstance(value, np.ndarray):
                # (the shape of the C-contiguous array: a 0-d array counts as (1,))
                data = hashlib.md5(_array_bytes(np, value)).hexdigest()[:8]
                array = np.ascontiguousarray(value)
                core = ",".join(str(dim) for dim in array.shape) + "-" + data
                return (_clean_v3("data-" + core), "array:" + core)
            if isinstance(value, np.bool_):
                return self.render(bool(value))
            if isinstance(value, np.integer):
                return self.render(int(value))
            if isinstance(value, np.floating):
                if float(value).is_integer():
                    return self.render(int(value))
                return (_clean_v3(_float_display(float(value))), f"float:{_number_hash(value)}")
        if isinstance(value, int):
            return self.render(int(value))
        if isinstance(value, float | decimal.Decimal | fractions.Fraction):
            if isinstance(value, float) and value.is_integer():
                return self.render(int(value))
            return (_clean_v3(_float_display(float(value))), f"float:{_number_hash(value)}")
        return _bypass(value, version=3)


def _array_bytes(np: tp.Any, array: tp.Any) -> bytes:
    if array.dtype.hasobject:  # its bytes are object addresses: another uid every run
        raise TypeError(
            f"Unsupported numpy array of dtype {array.dtype} in a uid (value {array!r}): its "
            "bytes are memory addresses; use a list, or an array of numbers or fixed-size strings"
        )
    return bytes(np.ascontiguousarray(array).data)


def _bypass(value: tp.Any, version: int) -> _Rendered:
    if not os.environ.get(TYPE_BYPASS_ENV):
        raise TypeError(
            f"Unsupported type {type(value)!r} in a uid (value {value!r}): use a str, number, "
            f"bool, None, Path, list, dict or numpy array, or set {TYPE_BYPASS_ENV}=1 to use str()"
        )
    logger.warning("Using str() for unsupported type %s in a uid", type(value))
    text = str(value)
    try:
        hashed = str(hash(value))
    except TypeError:
        hashed = text
    if version == 2:
        return (_clean(text, _V2_TABLE, _V2_FORBIDDEN), hashed)
    return (_clean_v3(text), "unknown:" + hashed)


class _UidMakerV2:
    """Renders values in the legacy v2 format (alphabetical keys, untyped hashes)."""

    @staticmethod
    def _finish(display: str, brackets: str = "") -> str:
        display = _clean(display, _V2_TABLE, _V2_FORBIDDEN)
        if brackets:
            display = brackets[0] + display + brackets[1]
        if len(display) > MAX_DISPLAY_V2:
            display = display[:V2_ELISION_KEEP] + "[.]" + display[-V2_ELISION_KEEP:]
        return display

    def render(self, value: tp.Any) -> _Rendered:
        np = _numpy()
        if is_tensor(value):
            value = value.detach().cpu().numpy()
        if isinstance(value, PurePath):
            value = str(value)
        if np is not None and isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, dict):
            keys = sorted(value)  # (an OrderedDict too: v2 sorts every dict)
            pairs = [(str(key), self.render(value[key])) for key in keys]
            display = ",".join(f"{key}={r[0]}" for key, r in pairs)
            hashed = ",".join(r[1] for _, r in pairs)
            return (self._finish(display, "{}"), hashed)
        if isinstance(value, list | tuple | set | frozenset):
            items = [self.render(item) for item in value]
            if isinstance(value, set | frozenset):
                items.sort()  # by display, then hash: independent of PYTHONHASHSEED
            display = ",".join(r[0] for r in items)
            return (self._finish(display, "[]"), ",".join(r[1] for r in items))
        if np is not None and isinstance(value, np.ndarray):
            digest = hashlib.md5(_array_bytes(np, value)).hexdigest()
            return (self._finish("data-" + digest[:8]), digest)
        if value is None or isinstance(value, str | int):
            return (self._finish(str(value)), str(value))
        if isinstance(value, float | decimal.Decimal | fractions.Fraction):
            return (self._finish(_float_display(float(value))), _number_hash(value))
        return _bypass(value, version=2)


_MAKERS: dict[int, _UidMakerV3 | _UidMakerV2] = {3: _UidMakerV3(), 2: _UidMakerV2()}


def set_order(value: tp.Any) -> _Rendered:
    """The sort key of a set item in a uid: its v3 (display, typed hash)."""
    return _MAKERS[3].render(value)


# The digests of typed hashes, by their text: a config whose uid is asked again (the same
# or an equal ConfDict) hashes its text (a few instructions a character, cached in a text
# a memo gave back) where md5 costs ~11 a character. Bounded: 512 texts of at most 16k.
_DIGESTS: dict[str, str] = {}
_DIGEST_MEMO_MAX = 512
_DIGEST_MEMO_TEXT = 16_384


def to_uid(data: tp.Any, version: int | None = None, empty: str = "", merge: bool = True) -> str:
    """The uid string of a (nested) dict of config values ("" when empty). ``empty``: the
    text standing for an empty display, followed by the digest (a value whose display
    cleans to nothing, "λ", is not the empty config). ``merge=False``: a dict giving a
    key twice once chains collapse is refused (ValueError), not read as its ConfDict
    (which keeps the last: right for a config, not for a plain value)."""
    version = uid_version(version)
    # v3 collapses single-key chains while rendering; v2 on a collapsed copy
    try:
        rendered = _MAKERS[version].render(data if version == 3 else collapse(data))
    except _SameKeyTwice as error:
        if not merge:
            raise ValueError(_twice_said(str(error)) + ": both values are inputs") from None
        return _merged_uid(data, str(error), empty)
    display = rendered[0]
    if not display or display in ("{}", "()", "[]"):
        if not empty:
            return ""
        display = empty
    if display[0] in "{([" and display[-1] in "})]":
        display = display[1:-1]
    digest = _DIGESTS.get(rendered[1])
    if digest is None:
        try:
            digest = _small_md5(rendered[1].encode("utf8")).hexdigest()[:8]
        except UnicodeEncodeError:
            raise ValueError(not_utf8(data)) from None
        if len(rendered[1]) <= _DIGEST_MEMO_TEXT:
            if len(_DIGESTS) >= _DIGEST_MEMO_MAX:
                _DIGESTS.clear()
            _DIGESTS[rendered[1]] = digest
    return f"{display}-{digest}"


def _merged_uid(data: tp.Any, key: str, empty: str) -> str:
    """The uid of a dict giving a key twice (see _SameKeyTwice): its ConfDict's, which
    keeps the last value (as the v2 format does); refused where no ConfDict can be
    made of it (a list holding such a dict, a key a ConfDict cannot take)."""
    from .confdict import ConfDict  # (the error path only: confdict imports this module)

    said = _twice_said(key)
    if not isinstance(data, dict) or isinstance(data, ConfDict):
        raise ValueError(said + " (a ConfDict keeps the last)")
    try:
        merged = ConfDict(data)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{said} ({error})") from None
    try:
        return to_uid(merged, version=3, empty=empty)
    except _SameKeyTwice:  # (inside an OrderedDict, kept as is by a ConfDict)
        raise ValueError(said) from None


def _twice_said(key: str) -> str:
    return (
        f"The key {key!r} is given twice in a dict once nested single-key dicts read as "
        "dotted keys (e.g. {'a.b': 1, 'a': {'b': 2}}): give it once"
    )


def not_utf8(data: tp.Any, path: str = "", use: str = "be part of a uid") -> str:
    """What to say of a config holding text that is not valid unicode (lone surrogates)
    (``use``: what such text cannot do)."""
    from .storage.formats import _utf8 as utf8_text  # (the error path only)

    items: tp.Iterable[tuple[tp.Any, tp.Any]] = ()
    if isinstance(data, dict):
        items = data.items()
    elif isinstance(data, list | tuple | set | frozenset):
        items = enumerate(data)
    for key, value in items:
        where = f"{path}.{key}" if path else str(key)
        for text, what in ((key, "key"), (value, "value")):
            if isinstance(text, str | PurePath) and not utf8_text(str(text)):
                return (
                    f"The {what} of {where!r} ({text!r}) is not valid unicode (lone surrogates, "
                    f"e.g. a file name decoded by os.listdir): it cannot {use}. Make it valid "
                    "text, e.g. os.fsencode(name).decode('utf8', 'replace')"
                )
        found = not_utf8(value, where, use)
        if found:
            return found
    return "" if path else "The config holds text that is not valid unicode (lone surrogates)"
