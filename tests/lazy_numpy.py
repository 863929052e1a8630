"""numpy, imported at its first use: ``np`` for test modules whose classes jobs import.

Each job of such a class (a local process, a Slurm job) imports the test module, and most
never use numpy: its import took ~0.15 s of CPU in each. Use::

    if tp.TYPE_CHECKING:
        import numpy as np
    else:
        from lazy_numpy import np

(``np.ndarray`` in a method's annotations resolves through it too: exca reads them with
``typing.get_type_hints``.) Code run by every job tells an array with ``is_array``, which
imports nothing."""

from __future__ import annotations

import sys
import typing as tp


class _Numpy:
    def __getattr__(self, name: str) -> tp.Any:
        import numpy

        return getattr(numpy, name)


np = _Numpy()


def is_array(value: tp.Any) -> bool:
    """Whether ``value`` is a numpy array (an array given was unpickled by numpy, which is
    then imported)."""
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.ndarray)
