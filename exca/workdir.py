"""Public home of WorkDir: ``from exca.workdir import WorkDir``."""

from .infra.workdir import WorkDir

__all__ = ["WorkDir"]
