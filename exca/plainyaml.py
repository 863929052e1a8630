"""The YAML text PyYAML writes for a simple config, without importing PyYAML.

Importing ``yaml`` costs ~13 ms, more than a whole cache hit: the uid folder's yaml files
are written and compared on the first call of every process. Most configs hold only
plain keys, numbers, booleans, None, simple strings and lists/dicts of them; for those
:func:`dump` returns exactly what ``yaml.dump(data, Dumper=<ConfDict's dumper>,
sort_keys=False)`` returns (the test suite checks it against PyYAML). Anything else
(quoted or unicode strings, long keys, other types) returns None: the caller then uses
PyYAML.
"""

from __future__ import annotations

import collections
import string
import sys
import typing as tp


def pyyaml() -> tp.Any:
    """The PyYAML module, imported with Ctrl-C held back: an import interrupted half-way
    leaves its submodules behind, and every later import of it in the process then
    failed ("partially initialized module 'yaml'")."""
    module = sys.modules.get("yaml")
    # (being imported by another thread: the import statement waits for it to finish)
    if module is None or getattr(getattr(module, "__spec__", None), "_initializing", False):
        from .storage import interrupts

        with interrupts.deferred():
            import yaml as module
    return module


# (plain string tests instead of regexes: compiling three regexes took ~0.7 ms, paid by
# the first cache hit of every process, which compares full-uid.yaml's text)

# strings PyYAML writes unquoted and reads back as the same string: a letter, "_" or "/"
# first, then letters, digits and "_-./"; but the words YAML reads as booleans or null,
# like numbers, are single-quoted
_PLAIN_FIRST = frozenset(string.ascii_letters + "_/")
_PLAIN_REST = string.ascii_letters + string.digits + "_-./"
_RESERVED = frozenset(
    form
    for word in ("yes", "no", "true", "false", "on", "off", "null")
    for form in (word, word.title(), word.upper())
)
# printable ASCII without spaces whose first character is a YAML indicator: never plain,
# and PyYAML writes it single-quoted (spaces are left out: quoted text may be folded)
_INDICATORS = frozenset("#,[]{}&*!|>'\"%@`")
_PRINTABLE = "".join(chr(c) for c in range(ord("!"), ord("~") + 1))


def _is_plain(text: str) -> bool:
    return bool(text) and text[0] in _PLAIN_FIRST and not text.strip(_PLAIN_REST)


def _is_number(text: str) -> bool:
    """Whether YAML would read the text as a number: ``[-+]?(0|[1-9][0-9]{0,30})(\\.[0-9]{0,30})?``
    (leading zeros excluded: PyYAML's resolvers treat some of them as strings)."""
    if text[:1] in ("-", "+"):
        text = text[1:]
    whole, _, fraction = text.partition(".")
    if not (whole.isascii() and whole.isdigit()) or len(whole) > 31:
        return False
    if len(whole) > 1 and whole[0] == "0":
        return False
    return not fraction or (fraction.isascii() and fraction.isdigit() and len(fraction) <= 30)


def _is_indicator_first(text: str) -> bool:
    return (
        bool(text)
        and len(text) <= 301
        and text[0] in _INDICATORS
        and not text[1:].strip(_PRINTABLE)
    )


_MAX_KEY = 128  # longer keys are written as "? key" by PyYAML


class _Unsupported(Exception):
    """A value this module does not write (the caller falls back to PyYAML)."""


def dump(data: tp.Mapping[str, tp.Any]) -> str | None:
    """The block-style YAML text of a mapping, or None when PyYAML is needed."""
    if not data:
        return "{}\n"
    lines: list[str] = []
    try:
        _mapping(data, "", lines)
    except _Unsupported:
        return None
    return "\n".join(lines) + "\n"


def _string(text: str) -> str:
    if len(text) <= 1000 and _is_plain(text):
        return f"'{text}'" if text in _RESERVED else text
    if not text or _is_number(text):  # e.g. version: '1'
        return f"'{text}'"
    if _is_indicator_first(text):  # e.g. logs: '{folder}/logs/{user}/%j'
        return "'" + text.replace("'", "''") + "'"
    raise _Unsupported


_STRINGS: dict[str, str] = {}  # renderings of keys and values (configs repeat them), bounded
_MEMO_MAX = 20_000


def _string_memo(text: str) -> str:
    found = _STRINGS.get(text)
    if found is None:
        found = _string(text)  # (raises for unsupported strings: never memoized)
        if len(_STRINGS) >= _MEMO_MAX:
            _STRINGS.clear()
        _STRINGS[text] = found
    return found


def _scalar(value: tp.Any) -> str:
    kind = type(value)
    if kind is str:
        return _string_memo(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is float:
        if value != value:
            return ".nan"
        if value in (float("inf"), float("-inf")):
            return ".inf" if value > 0 else "-.inf"
        text = repr(value).lower()
        if "." not in text and "e" in text:
            text = text.replace("e", ".0e", 1)
        return text
    if value is None:
        return "null"
    if (kind is dict or kind is list or kind is tuple) and not value:
        return "{}" if kind is dict else "[]"
    raise _Unsupported


def _is_block(value: tp.Any) -> bool:
    return isinstance(value, dict | list | tuple) and bool(value)


def _mapping(data: tp.Mapping[tp.Any, tp.Any], indent: str, lines: list[str]) -> None:
    if type(data) is not dict and type(data) is not collections.OrderedDict:
        raise _Unsupported  # (other mappings may have their own representer)
    for key, value in data.items():
        if type(key) is not str or len(key) > _MAX_KEY or not key:
            raise _Unsupported  # (an empty key is written `? ''` by PyYAML)
        key = _STRINGS.get(key) or _string_memo(key)
        kind = type(value)
        if kind is str:
            lines.append(f"{indent}{key}: {_STRINGS.get(value) or _string_memo(value)}")
        elif value is None:
            lines.append(f"{indent}{key}: null")
        elif not _is_block(value):
            lines.append(f"{indent}{key}: {_scalar(value)}")
        elif isinstance(value, dict):
            lines.append(f"{indent}{key}:")
            _mapping(value, indent + "  ", lines)
        else:  # a sequence in a mapping is not indented
            lines.append(f"{indent}{key}:")
            _sequence(value, indent, lines)


def _sequence(items: tp.Sequence[tp.Any], indent: str, lines: list[str]) -> None:
    inner = indent + "  "
    for item in items:
        if not _is_block(item):
            lines.append(f"{indent}- {_scalar(item)}")
            continue
        start = len(lines)
        if isinstance(item, dict):
            _mapping(item, inner, lines)
        else:
            _sequence(item, inner, lines)
        lines[start] = f"{indent}- {lines[start][len(inner) :]}"  # first line on the dash


def load(text: str) -> dict[str, tp.Any] | None:
    """The mapping of a YAML text as :func:`dump` writes it, or None when PyYAML is
    needed. Parsed line by line, then kept only if dump() writes that mapping back as the
    same text: dump() writing what PyYAML does, PyYAML reads that text as this mapping
    (so a text this parse misreads is never returned: dump() differs)."""
    try:
        data = _parse(text)
    except (_Unsupported, ValueError):
        return None
    return data if dump(data) == text else None


def _parse(text: str) -> dict[str, tp.Any]:
    if text == "{}\n":
        return {}
    if not text.endswith("\n"):
        raise _Unsupported
    root: dict[str, tp.Any] = {}
    stack: list[tuple[int, dict[str, tp.Any]]] = [(0, root)]  # (indent, mapping)
    for line in text[:-1].split("\n"):
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        while stack[-1][0] > indent:
            stack.pop()
        if stack[-1][0] != indent or stripped[:2] == "- ":
            raise _Unsupported  # (a sequence: PyYAML reads it)
        mapping = stack[-1][1]
        if stripped[-1:] == ":":  # (a mapping below)
            child: dict[str, tp.Any] = {}
            mapping[_unquoted(stripped[:-1])] = child
            stack.append((indent + 2, child))
            continue
        key, sep, value = stripped.partition(": ")
        if not sep:
            raise _Unsupported
        mapping[_unquoted(key)] = _parsed_scalar(value)
    return root


def _unquoted(text: str) -> str:
    if len(text) > 1 and text[0] == "'" and text[-1] == "'":
        return text[1:-1].replace("''", "'")
    return text


_WORDS: dict[str, tp.Any] = {"null": None, "true": True, "false": False}
_WORDS.update({".nan": float("nan"), ".inf": float("inf"), "-.inf": float("-inf")})


def _parsed_scalar(text: str) -> tp.Any:
    """The value of a scalar as _scalar writes it (a text it would not write gives some
    value: load() then finds dump() differing)."""
    if text in _WORDS:
        return _WORDS[text]
    if text[:1] == "'":
        return _unquoted(text)
    if text == "{}":
        return {}
    if text == "[]":
        return []
    first = text[:1]
    if first.isdigit() or (first == "-" and text[1:2].isdigit()):
        if text.lstrip("-").isdigit():
            return int(text)
        return float(text)
    return text
