"""Pickling exceptions so that a cached error is raised again with its original type.

Two kinds of exceptions do not survive a plain ``pickle`` round trip:

- a class defined in the user's script (``__main__``): inside a job, ``__main__`` is
  submitit's module, so pickle cannot name the class. It is pickled as "the attribute of
  ``__main__`` with this name", which the reading process (the user's script) resolves to
  its own class (``except MyError`` matches);
- a class whose ``__init__`` does not take its ``args`` back (``def __init__(self, a, b)``
  calling ``super().__init__(f"{a}-{b}")``): it is rebuilt without calling ``__init__``;
- an exception holding something that cannot be pickled (a lock, a client object in its
  args or attributes): rebuilt the same way, that value replaced by its ``repr``.
"""

from __future__ import annotations

import io
import pickle
import sys
import typing as tp

# classes of ``__main__`` pickled by this process, found by name when this process loads
# them back (a job's ``__main__`` is not the script that defined them)
_MAIN_CLASSES: dict[str, type] = {}


def dumps(exception: BaseException) -> bytes | None:
    """The pickled exception, checked to load back (None when it cannot be)."""
    for rebuild, lossy in ((False, False), (True, False), (True, True)):
        buffer = io.BytesIO()
        try:
            _ExceptionPickler(buffer, rebuild, lossy).dump(exception)
            data = buffer.getvalue()
            pickle.loads(data)  # some exceptions pickle but do not unpickle
        except Exception:
            continue
        return data
    return None


def loads(data: bytes) -> BaseException | None:
    try:
        value = pickle.loads(data)
    except Exception:  # the class is gone (or not in this script): the caller keeps its name
        return None
    return value if isinstance(value, BaseException) else None


class _ExceptionPickler(pickle.Pickler):
    def __init__(self, file: tp.IO[bytes], rebuild: bool, lossy: bool = False) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.rebuild = rebuild
        self.lossy = lossy  # (values that do not pickle become their repr)

    def reducer_override(self, obj: tp.Any) -> tp.Any:
        if isinstance(obj, type) and obj.__module__ == "__main__":
            _MAIN_CLASSES[obj.__qualname__] = obj
            return main_attribute, (obj.__qualname__,)
        if self.rebuild and isinstance(obj, BaseException):
            args, state = obj.args, dict(vars(obj)) or None
            if self.lossy:
                args = tuple(_picklable(a) for a in args)
                state = {k: _picklable(v) for k, v in state.items()} if state else None
            return rebuild_exception, (type(obj), args, state)
        return NotImplemented


def _picklable(value: tp.Any) -> tp.Any:
    try:
        pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        return repr(value)
    return value


def main_attribute(qualname: str) -> tp.Any:
    """A class of ``__main__`` by its qualified name (else one this process pickled)."""
    found: tp.Any = sys.modules.get("__main__")
    try:
        for part in qualname.split("."):
            found = getattr(found, part)
    except AttributeError:
        if qualname in _MAIN_CLASSES:
            return _MAIN_CLASSES[qualname]
        raise
    return found


def rebuild_exception(
    kind: type[BaseException], args: tuple[tp.Any, ...], state: dict[str, tp.Any] | None
) -> BaseException:
    """An exception with its args and attributes, without calling its ``__init__``."""
    exception = kind.__new__(kind, *args)
    exception.args = args
    if state:
        vars(exception).update(state)
    return exception
