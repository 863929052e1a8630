"""Public home of the cache dictionary: ``from exca import cachedict; cachedict.CacheDict``."""

from .storage import formats as handlers  # (the format classes: handlers.MemmapArray...)
from .storage.cachedict import CacheDict, CacheDictWriter
from .storage.dumping import DamagedPayload, DamagedRecord
from .storage.formats import (
    MEMMAP_ARRAY_FILE_MAX_CACHE,
    CachedError,
    DumpContext,
    DumpInfo,
    DumpOptions,
)
from .storage.process import hostname

METADATA_TAG = "metadata="


def host_pid() -> str:
    """``<host>-<pid>``: the prefix writers of this process use."""
    import os

    return f"{hostname()}-{os.getpid()}"


class DumperLoader:
    """Base for user formats: subclass, define ``__dump_info__``/``__load_from_info__``
    and register with ``@DumpContext.register``."""


StaticDumperLoader = DumperLoader

__all__ = [
    "MEMMAP_ARRAY_FILE_MAX_CACHE",
    "METADATA_TAG",
    "CacheDict",
    "CacheDictWriter",
    "CachedError",
    "DamagedPayload",
    "DamagedRecord",
    "DumpContext",
    "DumpInfo",
    "DumpOptions",
    "DumperLoader",
    "StaticDumperLoader",
    "handlers",
    "host_pid",
]
