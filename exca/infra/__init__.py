"""The user-facing skin: infras (pydantic configs of caching and execution) and identity."""

from .base import BaseInfra
from .map import MapInfra
from .resources import SubmititMixin
from .task import TaskInfra
from .workdir import WorkDir

__all__ = ["BaseInfra", "MapInfra", "SubmititMixin", "TaskInfra", "WorkDir"]
