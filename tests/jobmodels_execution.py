"""The configs of tests/test_execution.py that most of its jobs compute.

Kept apart from the test module so that a job's process, which imports the module of the
config it unpickles, imports only exca and this file: importing test_execution (pytest,
unittest.mock, its 5000 lines and 50 other models) cost each of the module's ~90 local
jobs about as much CPU as submitit and exca together.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pydantic
from filelog import append

import exca


class Counted(pydantic.BaseModel):
    """process() -> 2 * x; raises ValueError while the file `fail_flag` exists, blocks while
    the file `block_flag` exists."""

    x: int = 1
    log: str
    fail_flag: str = ""
    block_flag: str = ""
    linger: float = 0.0  # after a failure, the process lives on this long (winding down)
    offset_file: str = ""  # a number added to the result (a recomputation then differs)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        append(self.log, f"x={self.x} pid={os.getpid()}")
        offset = Path(self.offset_file) if self.offset_file else None
        print(f"computing x={self.x}", flush=True)
        while self.block_flag and Path(self.block_flag).exists():
            time.sleep(0.05)
        if self.fail_flag and Path(self.fail_flag).exists():
            if self.linger:  # a non-daemon thread: the process ends after it
                threading.Thread(target=time.sleep, args=(self.linger,)).start()
            raise ValueError(f"bad x={self.x}")
        return 2 * self.x + (int(offset.read_text()) if offset and offset.exists() else 0)


class Listed(pydantic.BaseModel):
    """Returns a fresh list (identity shows whether a value came from RAM)."""

    x: int = 1
    log: str
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> list[int]:
        append(self.log, f"x={self.x}")
        return [self.x, self.x]
