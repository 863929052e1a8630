"""exca: turn a pydantic config into a cached, distributable, composable computation."""

import logging
import typing as tp

from . import cachedict
from .confdict import ConfDict
from .infra import TaskInfra

__version__ = "0.1.0"

# the "exca" logger says what runs where (INFO), on its own handler, like the reference;
# that handler stays quiet once the application configures logging (handlers on the root
# logger, e.g. logging.basicConfig): the records then go through those only, not twice
logger = logging.getLogger("exca")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(name)s - %(message)s"))
    _handler.addFilter(lambda record: not logging.getLogger().handlers)
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)

if tp.TYPE_CHECKING:  # (loaded lazily by __getattr__ below; seen by type checkers)
    from . import graph as graph
    from . import helpers
    from . import ops as ops
    from . import slurm as slurm
    from . import workdir as workdir
    from .infra import MapInfra

__all__ = ["ConfDict", "MapInfra", "TaskInfra", "__version__", "cachedict", "helpers"]


def __getattr__(name: str) -> object:
    # heavier or optional parts load on first use (keeps `import exca` fast)
    if name in ("helpers", "graph", "workdir", "slurm", "ops"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    if name == "MapInfra":  # (built on first use: see exca.infra)
        from .infra import MapInfra

        return MapInfra
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
