"""The config of tests/test_map_execution.py that most of its jobs compute.

Kept apart from the test module so that a job's process, which imports the module of the
config it unpickles, imports only exca and this file, not test_map_execution (pytest, its
4000 lines and 50 other models: about as much CPU as submitit and exca together).
"""

from __future__ import annotations

import time
import typing as tp
from pathlib import Path

import pydantic
from filelog import append

import exca


class Mapper(pydantic.BaseModel):
    """item -> 10 * item; an item raises ValueError while the file <fail_dir>/<item> exists.
    With `short`, the method yields one output less than it got items (the last item's);
    with `extra`, one more (the first item's output twice); item 0 waits while the file
    `block_flag` exists, item 2 while `slow_flag` exists."""

    log: str
    fail_dir: str = ""
    block_flag: str = ""
    slow_flag: str = ""
    short: bool = False
    extra: bool = False
    raised: str = "ValueError"  # (or "KeyError", "KeyboardInterrupt", "SystemExit")
    factor_file: str = ""  # a file holding the factor (10 without it)
    _exclude_from_cls_uid: tp.ClassVar[tuple[str, ...]] = ("factor_file",)
    infra: exca.MapInfra = exca.MapInfra(version="1")

    @infra.apply(item_uid=str)
    def process(self, items: list[int]) -> tp.Iterator[int]:
        todo = items[:-1] if self.short else items
        factor = int(Path(self.factor_file).read_text()) if self.factor_file else 10
        for item in todo:
            append(self.log, str(item))
            while item == 0 and self.block_flag and Path(self.block_flag).exists():
                time.sleep(0.05)
            while item == 2 and self.slow_flag and Path(self.slow_flag).exists():
                time.sleep(0.05)
            if self.fail_dir and (Path(self.fail_dir) / str(item)).exists():
                raised = {
                    "KeyError": KeyError,
                    "KeyboardInterrupt": KeyboardInterrupt,
                    "SystemExit": SystemExit,  # (sys.exit("bad item 2"))
                }
                raise raised.get(self.raised, ValueError)(f"bad item {item}")
            yield factor * item
            if self.extra and item == items[0]:
                yield 10 * item
