"""A fake ``squeue`` for tests that count the calls exca makes to it (no cluster needed)."""

from __future__ import annotations

import sys
from pathlib import Path


def counting_squeue(folder: Path, running: set[str], move: tuple[Path, Path] | None = None) -> Path:
    """A ``squeue`` (to put first on PATH) listing the jobs of ``running`` it is asked
    about as RUNNING; each call adds a line to the file it returns; the first one moves
    ``move[0]`` to ``move[1]`` (a job recorded right after it)."""
    calls = folder / "squeue-calls"
    script = folder / "squeue"
    moving = "" if move is None else f"os.rename({str(move[0])!r}, {str(move[1])!r})"
    script.write_text(
        f"""#!{sys.executable}
import os, sys
if not os.path.exists({str(calls)!r}):
    {moving or "pass"}
with open({str(calls)!r}, "a") as handle:
    handle.write(" ".join(sys.argv[1:]) + "\\n")
for job in sys.argv[sys.argv.index("-j") + 1].split(","):
    if job in {sorted(running)!r}:
        print(f"{{job}}|RUNNING|{{job}}|None")
"""
    )
    script.chmod(0o755)
    return calls
