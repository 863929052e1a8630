"""What a user's type checker sees of exca: mypy --strict on tests/typing_usage.py.

That file uses the public API as the docs do; each ``# revealed: <type>`` comment is the
type mypy must reveal on the next line (a decorator that lost the method's signature reveals
Any), and any error fails (a false error on documented usage, or a ``# type: ignore``
no longer needed: a wrong call no longer flagged).
"""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import exca

USAGE = Path(__file__).with_name("typing_usage.py")
_REVEALED = re.compile(r"^\s*# revealed: (.+?)\s*$")
_NOTE = re.compile(r"^[^:]+:(\d+): note: Revealed type is \"(.*)\"$")


def expected_reveals() -> dict[int, str]:
    """{line number of a reveal_type call: the type the comment above it says}"""
    lines = USAGE.read_text().splitlines()
    expected = {}
    for number, line in enumerate(lines, start=1):
        if "reveal_type(" in line:
            match = _REVEALED.match(lines[number - 2])
            assert match, f"typing_usage.py:{number}: no '# revealed: <type>' line above"
            expected[number] = match.group(1)
    return expected


def run_mypy(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (a dev dependency: pip install -e '.[dev]')")
    config = tmp_path / "mypy.ini"  # (no plugin: what any user gets; the same types with
    config.write_text("[mypy]\n")  # pydantic's plugin, which only types the models' __init__)
    # exca from this checkout, checked as an installed package is: its own modules'
    # errors are not the user's (--follow-imports=silent)
    env = {**os.environ, "MYPYPATH": str(Path(exca.__file__).parent.parent)}
    command = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent"]
    # (a cache kept in the checkout: a cold mypy run checks exca, pydantic and the stdlib
    # stubs, ~8 CPU-s, a warm one ~0.5; mypy checks again whatever changed since)
    cache = Path(__file__).resolve().parent.parent / ".mypy_cache" / "test_typing_usage"
    command += ["--config-file", str(config), "--cache-dir", str(cache)]
    command += ["--no-error-summary", "--hide-error-context", str(USAGE)]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)


def test_public_api_types_for_users(tmp_path: Path) -> None:
    expected = expected_reveals()
    assert len(expected) >= 10  # (the comments are found)
    done = run_mypy(tmp_path)
    lines = done.stdout.splitlines()
    revealed = {}
    for line in lines:
        match = _NOTE.match(line)
        if match:
            revealed[int(match.group(1))] = match.group(2)
    problems = [line for line in lines if ": error:" in line]
    problems += [
        f"line {number}: expected {want!r}, mypy says {revealed.get(number)!r}"
        for number, want in expected.items()
        if revealed.get(number) != want
    ]
    assert not problems, "\n".join(problems) + "\n" + done.stderr
