"""A test's hook on the start of local jobs' controllers (submitit's local module starts
them through its ``subprocess``, which exca replaces with executors._NewSessionSubprocess)."""

from __future__ import annotations

import subprocess
import typing as tp

import pytest

# the controller's process waits for its stdin to close, then becomes the controller
# (exec: same pid, the job's id; its stdin then /dev/null, as exca gives it)
_HELD = (
    "import os, sys; sys.stdin.buffer.read(); "
    "os.dup2(os.open(os.devnull, os.O_RDONLY), 0); os.execvp(sys.argv[1], sys.argv[1:])"
)


def hook_controller_starts(
    monkeypatch: pytest.MonkeyPatch,
    command: tp.Callable[[list[str]], list[str]] | None = None,
    started: tp.Callable[[tp.Any], None] | None = None,
) -> list[int]:
    """For this test, start each local job's controller from ``command(submitit's
    command)`` (before exca makes it its own), and call ``started(process)`` before the
    controller runs a line (its process waits until then); returns the pids of the
    controllers started so, filled once ``started`` returned: a test checks its hook ran.

    It puts its own object in submitit's local module for the test, an instance of exca's
    class (which exca keeps). Patching ``Popen`` on the object found there instead left it
    an attribute once the test ended (monkeypatch restores an instance's attribute by
    setting it), which hid a later test's patch of the class: that hook never ran."""
    from submitit.local import local

    from exca.graph import executors

    pids: list[int] = []

    class Hooked(executors._NewSessionSubprocess):
        @staticmethod
        def Popen(cmd: list[str], *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
            if command is not None:
                cmd = command(cmd)
            if started is not None:
                held = executors._recording_controller(cmd)
                cmd = [held[0], "-S", "-c", _HELD, *held]
                kwargs["stdin"] = subprocess.PIPE
            process = executors._NewSessionSubprocess.Popen(cmd, *args, **kwargs)
            if started is not None:
                try:
                    started(process)
                finally:
                    process.stdin.close()
            pids.append(process.pid)
            return process

    monkeypatch.setattr(local, "subprocess", Hooked())
    return pids
