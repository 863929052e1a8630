"""Progress display while maps compute and arrays are waited on (tqdm; shown on a terminal
or in a notebook, quiet otherwise; ``EXCA_PROGRESS=0`` turns it off, ``EXCA_PROGRESS=1``
forces it on)."""

from __future__ import annotations

import os
import sys
import threading
import typing as tp

PROGRESS_ENV = "EXCA_PROGRESS"


def enabled(requested: bool | None = None) -> bool:
    if requested is not None:
        return requested
    env = os.environ.get(PROGRESS_ENV)
    if env is not None:
        return env not in ("0", "false", "False", "")
    return sys.stderr.isatty() or in_notebook()


def in_notebook() -> bool:
    """Whether the standard error is a Jupyter kernel's (a cell's output: not a terminal,
    but shown to the user as one)."""
    return "ipykernel" in sys.modules and type(sys.stderr).__module__.startswith("ipykernel")


class Progress:
    """A counter that shows a bar only when enabled; cheap no-op otherwise."""

    def __init__(self, total: int, desc: str, requested: bool | None = None) -> None:
        self.total = total
        self.count = 0
        self.desc = desc
        self.requested = requested
        self._bar: tp.Any = None
        # (a run's thread computing inline work counts its items while another one counts
        # the jobs that end meanwhile: see Scheduler._run_inline)
        self._lock = threading.Lock()
        if total > 0:
            self._show()

    def _show(self) -> None:
        if enabled(self.requested):
            self._bar = _tqdm()(
                total=self.total, desc=self.desc, leave=False, dynamic_ncols=True, file=sys.stderr
            )
            if self.count:
                self._bar.update(self.count)

    def update(self, count: int = 1) -> None:
        with self._lock:
            self.count += count
            if self._bar is not None:
                self._bar.update(count)

    def add_total(self, count: int) -> None:
        with self._lock:
            self.total += count
            if self._bar is not None:
                self._bar.total = self.total
                self._bar.refresh()
            elif self.total > 0 and self.requested is not False:  # (work known only now)
                self._show()

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.refresh()  # show the final count (logs keep it; terminals clear it)
            self._bar.close()
            self._bar = None


def _tqdm() -> tp.Any:
    """tqdm's class: its notebook widget where it can be drawn (ipywidgets installed),
    else the text bar (tqdm.auto then warns "IProgress not found" at every bar)."""
    import importlib.util

    if in_notebook() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm as notebook_bar

        return notebook_bar
    from tqdm.std import tqdm as text_bar

    return text_bar
