"""The config of tests/test_job_array.py that its jobs compute.

Kept apart from the test module so that a job's process, which imports the module of the
config it unpickles, imports only exca and this file, not pytest with test_job_array.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pydantic
from filelog import append

import exca


class Square(pydantic.BaseModel):
    """x -> x * x; appends x to <ctl>/calls.txt; blocks while <ctl>/block exists; raises
    ValueError while <ctl>/fail-<x> exists (then its process lingers `linger` seconds, like
    a job winding down after its error was cached)."""

    x: int = 0
    ctl: str
    linger: float = 0.0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def process(self) -> int:
        ctl = Path(self.ctl)
        append(ctl / "calls.txt", str(self.x))
        while (ctl / "block").exists():
            time.sleep(0.05)
        if (ctl / f"fail-{self.x}").exists():
            if self.linger:  # a non-daemon thread: the process ends after it
                threading.Thread(target=time.sleep, args=(self.linger,)).start()
            raise ValueError(f"bad x={self.x}")
        return self.x * self.x
