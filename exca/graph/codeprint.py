"""Which code computed a cached result, for methods of classes defined in ``__main__``.

A cache folder is named after ``<module>.<Class>.<method>,<version>``: two notebooks (or
scripts) defining a class of the same name share it, and so does a method edited and
run again. Both then get what the other cached, silently. The result of such a method
records a short digest of its code (line numbers aside); a call reusing a result that
another code computed warns once. Methods of importable modules record nothing: their
code is versioned with the infra's ``version``, as the docs say.
"""

from __future__ import annotations

import hashlib
import logging
import types
import typing as tp

logger = logging.getLogger("exca")
CODE_KEY = "code"  # in a task entry's #meta
_DIGESTS: dict[tp.Any, str] = {}  # code object -> digest (memoized: the hit path asks)
_WARNED: set[tuple[str, str]] = set()  # (where, recorded digest)


def method_function(function: tp.Any) -> tp.Callable[..., tp.Any] | None:
    """The user's function behind a node's callable (a bound decorated method)."""
    method = getattr(function, "method", None)
    return getattr(method, "func", None)


def digest(func: tp.Callable[..., tp.Any] | None) -> str | None:
    """The code digest of a function of ``__main__`` (None for others, or no code)."""
    code = getattr(func, "__code__", None)
    if code is None or getattr(func, "__module__", None) != "__main__":
        return None
    found = _DIGESTS.get(code)
    if found is None:
        text = repr(_stable(code)).encode("utf8", "surrogatepass")
        found = _DIGESTS[code] = hashlib.md5(text).hexdigest()[:8]
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


def check(meta: tp.Any, func: tp.Callable[..., tp.Any], where: str) -> None:
    """Warn (once) when a result reused for ``where`` was computed by other code."""
    recorded = meta.get(CODE_KEY) if isinstance(meta, dict) else None
    if not isinstance(recorded, str):
        return  # (computed by a method of a module, or by an older exca)
    current = digest(func)
    if current is None or current == recorded or (where, recorded) in _WARNED:
        return
    _WARNED.add((where, recorded))
    logger.warning(
        "%s: reusing a result computed by other code of %s (the method was edited since, "
        "or a class of the same name, e.g. of another notebook or script, shares this cache "
        "folder): bump the infra's version (or use another folder) to compute it anew",
        where,
        func.__qualname__,
    )
