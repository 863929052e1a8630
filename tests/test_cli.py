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


class Data(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    n: int = 5
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def prepare(self) -> list[int]:
        if self.n < 0:
            raise ValueError("n must be >= 0")
        return list(range(self.n))


class Fit(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    data: Data = Data()
    extra: list[Data] = []
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> int:
        return sum(self.data.prepare()) + sum(sum(d.prepare()) for d in self.extra)


def test_list_and_logs_say_which_sub_config_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A node whose sub-config's task (chained: computed first) failed holds nothing:
    `exca list` showed it `empty` with no reason, `exca logs` pointed to `exca explain`.
    Both say it was not computed as that sub-config failed, naming its folder and error,
    as they do for a task whose input failed; at any depth (a list item's sub-config)."""
    root = tmp_path / "cache"
    infra = {"folder": root}
    fits = {
        "data": Fit(data={"n": -1, "infra": infra}, infra=infra),
        "extra.1": Fit(extra=[{"n": 2, "infra": infra}, {"n": -2, "infra": infra}], infra=infra),
    }
    for fit in fits.values():
        with pytest.raises(ValueError, match="n must be >= 0"):
            fit.fit()
    assert Fit(data={"n": 2, "infra": infra}, infra=infra).fit() == 1  # (nothing to say)
    data_step = f"{__name__}.Data.prepare,1"
    status, out, _ = run(capsys, "list", root, "--step", "Fit", "--json")
    assert status == 0
    notes = {row["uid"]: row["note"] for row in json.loads(out)}
    assert len(notes) == 3 and list(notes.values()).count(None) == 1, notes
    for path, fit in fits.items():
        folder = fit.infra.uid_folder()
        assert folder is not None
        bad = next(d for d in (fit.data, *fit.extra) if d.n < 0).infra.uid_folder()
        assert bad is not None
        said = (
            f"not computed: its sub-config {path!r} ({data_step}/{bad.name}) failed "
            "(ValueError: n must be >= 0)"
        )
        assert notes[folder.name] == said, notes
        status, out, _ = run(capsys, "list", root)  # (the text output: on its line)
        line = next(li for li in out.splitlines() if folder.name in li)
        assert line.split()[0] == "empty" and said in line, line
        status, out, _ = run(capsys, "logs", folder)
        assert status == 1 and said in out and f"`exca logs {bad}`" in out, out
