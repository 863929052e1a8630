"""What the command line (``exca ...``, exca/ops/cli.py) tells a user who would
otherwise be left guessing: an unknown step, a node not computed because a sub-config
failed. Commands run in this process through ``main`` (its exit status is returned)."""

from __future__ import annotations

import json
import typing as tp
from pathlib import Path

import pydantic
import pytest

import exca
from exca.ops.cli import main

STEP = f"{__name__}.Train.fit,1"


class Train(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    epochs: int = 3
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> int:
        return self.epochs


def run(capsys: pytest.CaptureFixture[str], *args: tp.Any) -> tuple[int, str, str]:
    """``exca ARGS``: (exit status, stdout, stderr)."""
    capsys.readouterr()
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def test_list_step_matching_no_step_is_an_error_naming_the_steps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`exca list ROOT --step Typo` exited 0 (with --json: `[]` and a note), while
    `exca clean ROOT ... --step Typo` exits 2: a typo looked like an empty answer to a
    script. It is an error (exit 2) naming the step given and the steps there are,
    whatever the other filters; a step folder holding no node is a step still."""
    root = tmp_path / "cache"
    Train(infra={"folder": root}).fit()
    for extra in ([], ["--json"], ["--status", "error"], ["--where", "epochs=3"]):
        status, out, err = run(capsys, "list", root, "--step", "Trian", *extra)
        assert status == 2 and out == "", (extra, out)
        assert f"--step 'Trian' matches no step of {root}: {STEP}" in err, err
    # given a step folder as ROOT: its own step is the one there
    status, _, err = run(capsys, "list", root / STEP, "--step", "Trian")
    assert status == 2 and f"matches no step of {root / STEP}: {STEP}" in err, err
    # a step that exists, nothing of it matching the other filters: no error (exit 0)
    status, out, _ = run(capsys, "list", root, "--step", "Train", "--status", "error")
    assert status == 0 and "No cached node matches" in out
    status, out, _ = run(capsys, "list", root, "--step", "Train", "--json", "--where", "epochs=4")
    assert status == 0 and json.loads(out) == []
    # a step folder whose nodes were all removed: said, not an error
    (root / f"{__name__}.Other.run,2").mkdir()
    status, out, _ = run(capsys, "list", root, "--step", "Other")
    assert status == 0, out
    assert f"holding no node: {__name__}.Other.run,2" in out
    # clean says the same of a typo (it did already)
    status, _, err = run(capsys, "clean", root, "logs", "--step", "Trian")
    assert status == 2 and "--step 'Trian' matches no step of the root" in err
