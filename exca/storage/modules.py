"""Modules exca uses only when the user's values need them (numpy, torch): looked up in
``sys.modules``, never imported for the user."""

from __future__ import annotations

import importlib
import sys
import types


def imported(name: str) -> types.ModuleType | None:
    """The module if something imported it, else None. A module another thread is still
    importing is in ``sys.modules`` half made (``numpy.ndarray`` missing): this waits for
    that import to end (importlib takes the module's lock)."""
    module = sys.modules.get(name)
    if module is None:
        return None
    if getattr(getattr(module, "__spec__", None), "_initializing", False):
        try:
            return importlib.import_module(name)
        except ImportError:  # (that import failed: the module is not there after all)
            return None
    return module
