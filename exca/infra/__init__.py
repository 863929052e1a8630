"""The user-facing skin: infras (pydantic configs of caching and execution) and identity."""

import typing as tp

from .base import BaseInfra
from .resources import SubmititMixin
from .task import TaskInfra
from .workdir import WorkDir

if tp.TYPE_CHECKING:  # (loaded on first use by __getattr__ below; seen by type checkers)
    from .map import MapInfra

__all__ = ["BaseInfra", "MapInfra", "SubmititMixin", "TaskInfra", "WorkDir"]


def __getattr__(name: str) -> object:
    # MapInfra (its module and pydantic model) is built on first use: a TaskInfra user, a
    # task's job process and `import exca` do without it
    if name == "MapInfra":
        from .map import MapInfra

        return MapInfra
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
