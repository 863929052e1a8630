"""Which code computed a cached result, for methods of classes defined in ``__main__``.

A cache folder is named after ``<module>.<Class>.<method>,<version>``: two notebooks (or
scripts) defining a class of the same name share it, and so does a method edited and
run again. Both then get what the other cached, silently. The task result (or map item)
of such a method records a short digest of its code (line numbers and docstring aside);
a call reusing a result that other code computed warns, once per method. Methods of importable
modules record nothing: their code is versioned with the infra's ``version``, as the
docs say.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import types
import typing as tp

from ..storage import saidonce
from ..storage.index import meta_of

logger = logging.getLogger("exca")
CODE_KEY = "code"  # in the #meta of a task entry, or of a map item
_DIGESTS: dict[tp.Any, str] = {}  # code object -> digest (memoized: the hit path asks)
# (cache folder, current digest) -> how far its index files were read when its reused map
# items were checked, and which items: a later call of the same code checks only items not
# looked at yet, unless a writer (another process, other code) appended since (a scan per
# call doubled the cost of a warm map call). The set of items grows in place: a new one per
# call made a loop reading items one by one quadratic (3.5 ms per call at 40k items)
_ITEMS_CHECKED: dict[tuple[str, str], tuple[frozenset[tuple[str, int]] | None, set[str]]] = {}
# (bounded: a sweep making a map config per call added a folder each; one forgotten only
# has its items of a later call checked again)
_ITEMS_CHECKED_FOLDERS = 256
_BYTECODE = importlib.util.MAGIC_NUMBER[:2].hex()  # (the interpreter's bytecode version)
# on a generated method (with_infra's build): the user's function whose code it runs
CODE_OF_ATTR = "__exca_code_of__"


def code_owner(func: tp.Callable[..., tp.Any]) -> tp.Callable[..., tp.Any]:
    """The function whose code a method runs: itself, or what a generated one calls."""
    return getattr(func, CODE_OF_ATTR, None) or func


def method_function(function: tp.Any) -> tp.Callable[..., tp.Any] | None:
    """The user's function behind a node's callable (a bound decorated method)."""
    method = getattr(function, "method", None)
    return getattr(method, "func", None)


def digest(func: tp.Callable[..., tp.Any] | None) -> str | None:
    """The code digest of a function of ``__main__`` (None for others, or no code),
    prefixed with the bytecode's version: code compiled by another Python differs, and
    says nothing of an edit."""
    return None if func is None else _code_digest(code_owner(func))


def _code_digest(func: tp.Callable[..., tp.Any]) -> str | None:
    if getattr(func, "__module__", None) != "__main__":
        return None
    func = inspect.unwrap(func)  # (not a decorator's wrapper)
    code = getattr(func, "__code__", None)
    if code is None:
        return None
    found = _DIGESTS.get(code)
    if found is None:
        stable = _stable(code)
        first = code.co_consts[:1]
        if first == (None,) or (func.__doc__ is not None and first == (func.__doc__,)):
            # (the docstring's place: a docstring edited, added or removed changes nothing)
            stable = (stable[0], stable[1][1:], *stable[2:])
        text = repr(stable).encode("utf8", "surrogatepass")
        found = _DIGESTS[code] = f"{_BYTECODE}-{hashlib.md5(text).hexdigest()[:8]}"
    return found


def _stable(value: tp.Any) -> tp.Any:
    """What a code object does, the same in every process (line numbers, file names and
    set orders left out)."""
    if isinstance(value, types.CodeType):
        return (
            value.co_code,
            tuple(_stable(c) for c in value.co_consts),
            value.co_names,
            value.co_varnames,
        )
    if isinstance(value, frozenset):
        return tuple(sorted(repr(_stable(v)) for v in value))
    if isinstance(value, tuple):
        return tuple(_stable(v) for v in value)
    return repr(value)


def edited_since(meta: tp.Any, func: tp.Callable[..., tp.Any]) -> bool:
    """Whether a cached outcome was computed by other code than ``func``'s today (known
    for methods of ``__main__`` only)."""
    recorded = meta.get(CODE_KEY) if isinstance(meta, dict) else None
    if not isinstance(recorded, str):
        return False  # (computed by a method of a module, or by an older exca)
    current = digest(func)
    if current is None or current == recorded:
        return False
    if current.partition("-")[0] != recorded.partition("-")[0]:
        return False  # (compiled by another Python: its bytecode tells nothing)
    # (recorded by an older exca: the digest of with_infra's own wrapper)
    return code_owner(func) is func or recorded != _code_digest(func)


EDITED_ERROR = "raised by other code of {} (edited since)"  # (a cached error's note, reason)


def edited_error(meta: tp.Any, func: tp.Any) -> str | None:
    """What to say of a cached error of ``func`` (a node's method) that other code raised:
    "raised by other code of Class.method (edited since)", or None (the same code, or a
    method of an importable module)."""
    if func is None or getattr(func, "__module__", None) != "__main__":
        return None
    if not edited_since(meta, func):
        return None
    return EDITED_ERROR.format(code_owner(func).__qualname__)


EDITED_RESULT = (
    "computed by other code of {} (edited since, or a namesake's): bump the infra's version "
    "to compute it again"
)  # (a plan's reason for a result it reuses: what the call reusing it warns)


def edited_result(
    cache: tp.Any, func: tp.Any, key: str, uids: tp.Sequence[str] | None = None
) -> str | None:
    """What a plan says of a result of ``func`` (a node's method) that it reuses and other
    code computed: the task entry ``key``, or, for a map, one of its items ``uids``
    (stopping at the first one that other code computed). None: the same code, or a method
    of an importable module (which records nothing)."""
    if func is None or getattr(func, "__module__", None) != "__main__":
        return None
    if uids is None:
        entry = cache.entry(key)
        metas: tp.Iterable[tp.Any] = [entry.info.get("#meta")] if entry is not None else []
    elif not _unchecked(cache, digest(func), uids):
        return None  # (check_items read them in this process: all of this code)
    else:
        metas = (meta_of(info) for info in cache.records(uids) if info is not None)
    last: tp.Any = None
    for meta in metas:
        if meta is last or meta == last:
            continue  # (the items of one writer share their code)
        last = meta
        if edited_since(meta, func):
            return EDITED_RESULT.format(code_owner(func).__qualname__)
    return None


def _edited_key(step: str, current: str) -> tuple[str, str, str]:
    """The ``saidonce`` key of "reusing a result computed by other code" (once per
    method and code)."""
    return ("computed by other code", step, current)


def check(meta: tp.Any, func: tp.Callable[..., tp.Any], where: str) -> None:
    """Warn when a result reused for ``where`` was computed by other code (once per
    method and code: a sweep of configs warns once, not once per config)."""
    if not edited_since(meta, func):  # (first: free for results without a code digest)
        return
    current = digest(func) or ""  # (edited_since: there is one)
    owner = code_owner(func)
    step = where.partition("/")[0]
    if not saidonce.first(_edited_key(step, current)):
        return
    what = "function" if owner is not func else "method"
    namesake = "a function" if owner is not func else "a class"
    logger.warning(
        "%s: reusing a result computed by other code of %s (the %s was edited since, "
        "or %s of the same name, e.g. of another notebook or script, shares this cache "
        "folder; other results of %s may be too): bump the infra's version (or use another "
        "folder) to compute them anew",
        where,
        owner.__qualname__,
        what,
        namesake,
        step,
    )


def check_items(
    cache: tp.Any, uids: tp.Iterable[str], func: tp.Callable[..., tp.Any], where: str
) -> None:
    """``check`` for the items of a map that a call reuses: the first call reusing items of
    a folder checks them (stopping at the first item made by other code), later calls of
    the same code in this process only the items not checked yet, unless something was
    written in the folder since (then all of theirs)."""
    current = digest(func)
    if current is None or cache.folder is None:
        return
    if saidonce.said(_edited_key(where.partition("/")[0], current)):
        return
    positions = cache.index_positions()
    todo = _unchecked(cache, current, uids, positions)
    if not todo:
        return
    python = current.partition("-")[0]
    last: tp.Any = None
    for info in cache.records(todo):
        meta = meta_of(info) if info is not None else None
        # (the items of one writer share their code: one look for a run of equal ones)
        if meta is last or meta == last:
            continue
        last = meta
        recorded = meta.get(CODE_KEY) if isinstance(meta, dict) else None
        # (an item of another Python says nothing: the next ones are looked at)
        same_python = isinstance(recorded, str) and recorded.partition("-")[0] == python
        if same_python and recorded != current:
            check(meta, func, where)
            return
    key = (str(cache.folder), current)
    known = _ITEMS_CHECKED.pop(key, None)  # (put back last: the least recently checked go)
    if known is not None and known[0] == positions:
        known[1].update(todo)  # (in place: the cost of this call's items only)
    else:
        known = (positions, set(todo))
        while len(_ITEMS_CHECKED) >= _ITEMS_CHECKED_FOLDERS:
            _ITEMS_CHECKED.pop(next(iter(_ITEMS_CHECKED), ("", "")), None)
    _ITEMS_CHECKED[key] = known


def _unchecked(
    cache: tp.Any,
    current: str | None,
    uids: tp.Iterable[str],
    positions: frozenset[tuple[str, int]] | None = None,
) -> list[str]:
    """Those of ``uids`` that check_items has not found of this code: all of them once a
    writer appended to the folder's index since its last check (items another process
    wrote later may be of other code)."""
    uids = list(uids)
    known = _ITEMS_CHECKED.get((str(cache.folder), current or ""))
    if known is None:
        return uids
    if known[0] != (cache.index_positions() if positions is None else positions):
        return uids
    checked = known[1]
    return [u for u in uids if u not in checked]
