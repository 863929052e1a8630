"""How a unit of work travels to a job or a process pool: pickled by cloudpickle, except
that code pickled by value keeps its file name.

cloudpickle pickles the functions and classes of a script or a notebook (``__main__``) by
value, and names their code ``<dynamic-code>`` (for reproducible payloads): a job's
traceback then said ``File "<dynamic-code>", line 10, in train``, not which file. A unit
pickles its content with a cloudpickle pickler that keeps code objects whole through
``marshal``, file name included (``marshal`` needs the same Python on both sides, as
pickled code objects already do).
"""

from __future__ import annotations

import collections
import functools
import io
import marshal
import pickle
import sys
import threading
import types
import typing as tp

PYTHON = (sys.version_info.major, sys.version_info.minor)  # (bytecode changes with it)
_DEPTH = threading.local()  # units pickled right now by this thread (see ``dumps``)


def _code_reduce(code: types.CodeType) -> tuple[tp.Any, ...]:
    return load_code, (marshal.dumps(code), PYTHON)


def load_code(data: bytes, python: tuple[int, int]) -> types.CodeType:
    """A code object sent by ``_code_reduce``, with a clear error on another Python (its
    bytecode differs: marshal says "bad marshal data", or worse, loads what then crashes)."""
    here = PYTHON
    if tuple(python) != here:
        raise RuntimeError(
            "This work was sent by Python {}.{} and is loaded by Python {}.{} (in {}): code "
            "travels as bytecode, which differs between versions. Run the jobs with the "
            "same Python as the submitting process (the same environment on the cluster "
            "nodes, or an infra conda_env holding that Python)".format(
                *python, *here, sys.executable
            )
        )
    return marshal.loads(data)


@functools.cache
def _pickler() -> type[pickle.Pickler]:
    import cloudpickle  # (a dependency of submitit: imported only to send work away)

    class CodeKeepingPickler(cloudpickle.Pickler):
        dispatch_table = collections.ChainMap(
            {types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table
        )

    return CodeKeepingPickler


def reduce(obj: tp.Any, plain: tp.Callable[[], tuple[tp.Any, ...]]) -> tuple[tp.Any, ...]:
    """A ``__reduce__`` for an object sent to a job: ``plain()`` is how it pickles without
    this module (used when this module pickles it)."""
    if getattr(_DEPTH, "value", 0):
        return plain()
    return pickle.loads, (dumps(obj),)


def dumps(obj: tp.Any) -> bytes:
    buffer = io.BytesIO()
    _dump(obj, buffer)
    return buffer.getvalue()


class _Discard:
    """A file keeping nothing written to it (a check of what pickles needs no bytes)."""

    def write(self, data: tp.Any) -> int:
        # (a large buffer comes as a PickleBuffer, which has no len(): a config holding an
        # array of 64 KB or more was said not to pickle)
        return memoryview(data).nbytes


def check_pickles(obj: tp.Any) -> None:
    """Pickle ``obj`` as ``dumps`` does (raising what it raises), keeping no bytes: a
    config holding large data costs no memory to check."""
    _dump(obj, _Discard())


def _dump(obj: tp.Any, file: tp.Any) -> None:
    _DEPTH.value = getattr(_DEPTH, "value", 0) + 1
    try:
        _pickler()(file, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    finally:
        _DEPTH.value -= 1
