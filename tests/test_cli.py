"""What the command line (``exca ...``, exca/ops/cli.py) tells a user who would
otherwise be left guessing: an unknown step, a node not computed because a sub-config
failed. Commands run in this process through ``main`` (its exit status is returned)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import typing as tp
from pathlib import Path

import pydantic
import pytest
import yaml

import exca
from exca.ops.cli import main
from exca.storage import saidonce

STEP = f"{__name__}.Train.fit,1"
WAIT_S = 60.0  # bound on any wait (never reached when things work)


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


def test_run_is_refused_saying_how_to_run_the_target(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`exca run TARGET`, what a researcher tries after `exca plan TARGET`, ended in
    argparse's "invalid choice: 'run'" (a SystemExit); it now says that the command line
    computes nothing and gives the python line that runs that TARGET."""
    status, out, err = run(capsys, "run", "mypipe:targets")
    assert status == 2 and out == ""
    assert err.startswith("exca: error: ValueError: exca has no command 'run'"), err
    assert 'python -c "import exca, mypipe; exca.graph.run(mypipe.targets())"' in err
    status, _, err = run(capsys, "run", "myexp:Train.fit", "epochs=2")
    assert status == 2 and "import myexp; myexp.Train(...).fit()" in err, err


def test_a_usage_error_is_one_line_naming_the_bad_value(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An option given wrong (twice, an unknown choice, an unknown option, an override
    given to `list`) printed argparse's usage block of every option first, the error on
    its last line. It is one line, naming the bad value, with where the options are
    listed (exit status 2, as before)."""
    cases = {
        ("list", ".", "--step", "a", "--step", "b"): "exca list: error: argument --step: "
        "given twice ('a', then 'b'): give it once (see `exca list --help`)",
        ("list", ".", "--status", "bad"): "exca list: error: argument --status: invalid "
        "choice: 'bad'",
        ("list", ".", "--bogus"): "exca list: error: unrecognized arguments: --bogus (see",
        ("list", ".", "seed=1"): "unrecognized arguments: seed=1: only plan, explain and "
        "check take key=value overrides",
        ("frob",): "exca: error: argument command: invalid choice: 'frob'",
    }
    for argv, said in cases.items():
        with pytest.raises(SystemExit) as stop:
            main(list(argv))
        assert stop.value.code == 2, argv
        err = capsys.readouterr().err
        assert "usage:" not in err and len(err.splitlines()) == 1, (argv, err)
        assert said in err, (argv, err)


def test_where_giving_a_key_two_values_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--where epochs=3 --where epochs=4`: every condition must hold, so nothing could
    match; `list` said "No cached node matches" (exit 0), as of an empty answer. Refused
    naming both; the same value twice is one condition."""
    Train(infra={"folder": tmp_path}).fit()
    for command in (["list", tmp_path], ["clean", tmp_path, "node"]):
        status, out, err = run(capsys, *command, "--where", "epochs=3", "--where", "epochs=4")
        assert status == 2 and out == "", (command, out)
        assert "--where epochs=3 and --where epochs=4: every condition must hold" in err, err
    status, out, _ = run(capsys, "list", tmp_path, "--where", "epochs=3", "--where", "epochs=3")
    assert status == 0 and "(1 config(s))" in out, out


def test_where_on_a_misspelled_key_says_the_close_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--where epoch=3` (the field is epochs) said "No config has a key 'epoch'" and no
    more: the close keys of the configs are now said (a dotted key keeps its hint of
    what its start holds)."""
    Train(infra={"folder": tmp_path}).fit()
    status, out, _ = run(capsys, "list", tmp_path, "--where", "epoch=3")
    assert status == 0 and "For 'epoch': did you mean 'epochs'?" in out, out
    status, out, _ = run(capsys, "list", tmp_path, "--where", "zzz=3")
    assert status == 0 and "No config has a key 'zzz'" in out and "did you" not in out, out


def test_a_bare_exca_lists_the_commands_and_what_each_does(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, out, err = run(capsys)
    assert status == 2
    assert "required" not in err  # (argparse said only "the following arguments are required")
    for does in ["what a cache holds", "what running a config would do", "free space"]:
        assert does in out


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


class Slow(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    seconds: float = 60.0
    interrupt: bool = False  # (the method raises KeyboardInterrupt itself)
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> float:
        print("slow method started", flush=True)
        if self.interrupt:
            raise KeyboardInterrupt
        time.sleep(self.seconds)
        return self.seconds


def _wait_for(check: tp.Callable[[], bool], what: str) -> None:
    end = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_logs_of_a_job_cancelled_by_a_ctrl_c_of_its_submitter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Ctrl-C of the process that submitted a local job cancels the job and drops its
    record: `exca logs FOLDER` said "No job recorded" and pointed to `exca explain`,
    though the job's log is there, linked from the node folder. It shows that log, saying
    that no record names the job any more, why, and that nothing is cached; without the
    link, the error names the log folders no record names near the node."""
    root = tmp_path / "cache"
    code = f"""
        import signal
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import test_cli
        test_cli.Slow(infra={{"folder": {str(root)!r}, "cluster": "local"}}).run()
    """
    submitter = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        folder = Slow(infra={"folder": root}).infra.uid_folder()
        assert folder is not None
        outs = lambda: list(root.glob("*/logs/*/*/*_log.out"))  # noqa: E731
        _wait_for(lambda: any("slow method started" in p.read_text() for p in outs()), "the job")
        submitter.send_signal(signal.SIGINT)
        _, err = submitter.communicate(timeout=WAIT_S)
    finally:
        if submitter.poll() is None:
            submitter.kill()
            submitter.wait()
    assert submitter.returncode != 0 and "KeyboardInterrupt" in err, err
    assert not list((folder / "jobs").glob("*.json"))  # (its record was dropped)
    (log,) = outs()
    job_id = log.parent.name
    status, out, _ = run(capsys, "logs", folder)
    assert status == 0, out
    assert out.startswith(f"# job {job_id} (no record): {log}\n"), out
    assert f"no record names job {job_id} any more" in out
    assert "nothing is cached: the next call computes it" in out
    assert "slow method started" in out
    status, out, _ = run(capsys, "logs", folder, "--stderr", "--json")
    shown = json.loads(out)
    assert status == 0 and shown["job_id"] == job_id and "KeyboardInterrupt" in shown["text"]
    assert shown["path"] == str(log.with_name(f"{job_id}_0_log.err"))
    # explain said only "interrupted": it names the job, and where its log is
    status, out, _ = run(capsys, "explain", f"{__name__}:Slow.run", f"infra.folder={root}")
    assert status == 0 and f"its job {job_id} ended without a result" in out, out
    assert f"`exca logs {folder}` shows its log" in out
    # the link removed (by hand): the error says where such logs are
    (folder / "submitit").unlink()
    status, out, _ = run(capsys, "logs", folder)
    assert status == 1 and "No job recorded" in out
    assert "no job record names 1 job log folder(s) near it" in out and str(log.parent) in out


def test_logs_note_a_method_interrupt_before_its_record_is_set_aside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job whose method raised KeyboardInterrupt caches nothing; `exca logs` said so
    only once its record was set aside (as a refusal): before that (the job killed first,
    the next call not made yet), its log was shown with no note, as a job that computed
    the node. It is said from the log whether the record is set aside or not."""
    slow = Slow(interrupt=True, infra={"folder": tmp_path, "cluster": "local"})
    with pytest.raises(Exception, match="KeyboardInterrupt was raised"):
        slow.run()
    folder = slow.infra.uid_folder()
    assert folder is not None
    said = "method raised KeyboardInterrupt: nothing was cached for the task; the next call computes it"
    status, out, _ = run(capsys, "logs", folder)
    assert status == 0 and said in out, out  # (set aside by the job)
    (aside,) = (folder / "jobs").glob("*.refused")
    aside.rename(aside.with_name(aside.name.replace(".refused", ".json")))  # (not yet)
    status, out, _ = run(capsys, "logs", folder)
    assert status == 0 and said in out, out


class Fails(pydantic.BaseModel):
    x: int = 0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        if self.x < 0:
            raise ValueError(f"bad x={self.x}")
        return self.x


def test_list_status_takes_the_words_of_infra_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """infra.status() says "completed" and "failed"; `exca list --status failed` was an
    argparse error (the list's words are "success" and "error"). Both words now select
    the same configs, from the command line and from exca.ops.inspect."""
    from exca.ops.inspect import inspect

    root = tmp_path / "cache"
    Fails(x=1, infra={"folder": root}).run()
    failing = Fails(x=-1, infra={"folder": root})
    with pytest.raises(ValueError, match="bad x=-1"):
        failing.run()
    assert failing.infra.status() == "failed"
    for word, alias, x in (("error", "failed", -1), ("success", "completed", 1)):
        listed = []
        for status_word in (word, alias):
            status, out, _ = run(capsys, "list", root, "--status", status_word, "--json")
            assert status == 0
            listed.append([info["config"]["x"] for info in json.loads(out)])
        assert listed == [[x], [x]], (word, listed)
        assert [i.config["x"] for i in inspect(root, status=alias)] == [x]


def test_each_command_in_one_process_warns_of_a_symlink_loop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """A loop of symlinks in a cache is named once per process (a scan meets it often): a
    second command run through ``main`` in one process (a notebook, the tests) said
    nothing of it, where a second ``python -m exca`` warns again. Each command warns once;
    the library's own memo is kept (a later scan of the process says nothing again)."""
    root = tmp_path / "cache"
    Train(infra={"folder": root}).fit()
    (root / STEP / "x").symlink_to("y")  # (a loop in the step folder)
    (root / STEP / "y").symlink_to("x")
    said = f"Skipping {root / STEP / 'x'}: a symlink loop"
    for command in (["clean", root, "orphans"], ["clean", root, "orphans"], ["list", root]):
        caplog.clear()
        assert run(capsys, *command)[0] == 0, command
        told = [r for r in caplog.records if r.getMessage().startswith(said)]
        assert len(told) == 1, (command, caplog.text)
    caplog.clear()
    assert len(exca.ops.inspect(root)) == 1  # (the library: already said in this process)
    assert said not in caplog.text
    loop_key = sys.modules["exca.ops.inspect"].loop_key  # (exca.ops.inspect: a function)
    assert saidonce.said(loop_key(root / STEP / "x"))  # (the memo kept)


def test_each_command_in_one_process_says_what_exca_says_once_per_process(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """What exca says once per process (a loop of symlinks, an unreadable job record, an
    index file of another package, an index name that is no file) is said by each command
    run through ``main`` in one process, as by each ``python -m exca``: the command line
    emptied the memos it listed by name, and the index file of another package was not
    listed (the second command said nothing of it). One memo now, emptied per command."""
    root = tmp_path / "cache"
    task = Train(infra={"folder": root})
    task.fit()
    folder = task.infra.uid_folder()
    assert folder is not None
    foreign = folder / "vm-140245-info.jsonl"  # (as the reference package names them)
    foreign.write_text('{"#key": "x", "#type": "PickleDump", "filename": "x-abcdef12.pkl"}\n')
    (folder / "host-123-456-0123456789ab-abcdef-info.jsonl").mkdir()  # (no file)
    (folder / "jobs").mkdir(exist_ok=True)
    (folder / "jobs" / "12345.json").write_text("{damaged")
    (root / STEP / "x").symlink_to("y")
    (root / STEP / "y").symlink_to("x")
    said = {
        "loop": f"Skipping {root / STEP / 'x'}: a symlink loop",
        "record": f"Ignoring the unreadable job record {folder / 'jobs' / '12345.json'}",
        "foreign": f"remove {foreign}",
        "no file": "-info.jsonl is named like an index file but is not a file",
    }
    for _ in range(2):
        caplog.clear()
        assert run(capsys, "list", root)[0] == 0
        told = {k: sum(t in r.getMessage() for r in caplog.records) for k, t in said.items()}
        assert told == dict.fromkeys(said, 1), (told, caplog.text)


def test_each_command_in_one_process_warns_of_an_unreadable_index_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unreadable index line (a writer killed while writing it) is said by a Python
    warning, which Python says once per place and text in a process: a second command
    run through ``main`` in one process (a notebook, the tests) said nothing of it, where
    a second ``python -m exca`` warns again. Each command warns now."""
    import warnings

    root = tmp_path / "cache"
    task = Train(infra={"folder": root})
    task.fit()
    folder = task.infra.uid_folder()
    assert folder is not None
    (index,) = folder.glob("*-info.jsonl")
    with index.open("ab") as handle:
        handle.write(b'{"#key": "broken\n')  # (a line cut short)
    with warnings.catch_warnings(record=True) as log:
        warnings.simplefilter("default")  # (Python's own: once per place and text)
        for _ in range(2):
            assert run(capsys, "list", root)[0] == 0
    said = [w for w in log if "unreadable index line" in str(w.message)]
    assert len(said) == 2, [str(w.message) for w in log]


def test_each_plan_command_says_a_field_renamed_with_another_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """`exca plan` of results computed with a field renamed since with another default
    said "cached" only (the call reusing them warned); it says it now, in its table (not
    in the log: a plan is silent), in each command run through ``main`` in one process,
    as in each ``python -m exca``."""
    root = tmp_path / "cache"
    task = Train(infra={"folder": root})
    task.fit()
    folder = task.infra.uid_folder()
    assert folder is not None
    older = exca.ConfDict(yaml.safe_load((folder / "full-uid.yaml").read_text()))
    del older["epochs"]
    older["rounds"] = 5  # (as written when the field was `rounds`, 5 by default)
    (folder / "full-uid.yaml").write_text(older.to_yaml())
    shown = "computed with rounds=5, which is no field now, and before epochs (default 3)"
    for _ in range(2):
        caplog.clear()
        status, out, err = run(capsys, "plan", f"{__name__}:Train.fit", f"infra.folder={root}")
        assert status == 0 and "cached" in out, (out, err)
        assert " ".join(out.split()).count(shown) == 1, out
        assert shown not in caplog.text and shown not in err
    assert "rounds" in (folder / "full-uid.yaml").read_text()  # (a plan writes nothing)


def test_plan_of_a_script_s_class_says_its_results_are_under_main(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python myscript.py` caches the classes the script defines as __main__'s; `exca
    plan myscript:Train.fit` (the module imported) looked for myscript.Train.fit,1 and
    said "missing", silently. It now warns that __main__.Train.fit,1 holds them, and what
    to do."""
    script = tmp_path / "exca_cli_script.py"
    script.write_text(
        textwrap.dedent(
            """
            import pydantic
            import exca

            class Train(pydantic.BaseModel):
                epochs: int = 3
                infra: exca.TaskInfra = exca.TaskInfra(version="1")

                @infra.apply
                def fit(self) -> int:
                    return self.epochs

            if __name__ == "__main__":
                Train(infra={"folder": "cache"}).fit()
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(Path(exca.__file__).parents[1])}
    subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, check=True)
    assert (tmp_path / "cache" / "__main__.Train.fit,1" / "default").is_dir()
    monkeypatch.chdir(tmp_path)
    try:
        for command in ("plan", "explain"):
            status, out, err = run(
                capsys, command, "exca_cli_script:Train.fit", "infra.folder=cache"
            )
            assert status == 0, (command, out, err)
            assert "exca_cli_script.Train.fit,1 does not exist, but __main__.Train.fit,1" in err
            rename = f"exca rename {tmp_path / 'cache'} __main__.Train exca_cli_script.Train"
            assert rename in err, err
        status, out, err = run(
            capsys, "rename", "cache", "__main__.Train", "exca_cli_script.Train", "--yes"
        )
        assert status == 0, (out, err)
        status, out, err = run(capsys, "plan", "exca_cli_script:Train.fit", "infra.folder=cache")
        assert "cached" in out and "__main__" not in err, (out, err)  # (as it said)
    finally:  # (a module of this test's folder: not left to later tests)
        sys.modules.pop("exca_cli_script", None)


def test_a_command_leaves_sys_path_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """TARGET modules are found from the current folder: each plan/explain/check command
    run through ``main`` put that folder first on sys.path and left it there (one more
    copy per command), so that a later import of the process found the modules of a
    folder it had left. The folder is there during the command only."""
    (tmp_path / "exca_cli_path_probe.py").write_text(
        textwrap.dedent(
            f"""
            import sys
            import test_cli

            def targets():
                assert sys.path[0] == {str(tmp_path)!r}  # (during the command: first)
                return test_cli.Train(infra={{"folder": {str(tmp_path / "cache")!r}}}).fit.node()
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    try:
        for command in ("plan", "explain", "check", "plan"):
            status, out, err = run(capsys, command, "exca_cli_path_probe:targets")
            assert status == 0, (command, out, err)
            assert sys.path == before, command
        assert "missing" in run(capsys, "plan", "exca_cli_path_probe:targets")[1]
    finally:  # (a module of this test's folder: not left to later tests)
        sys.modules.pop("exca_cli_path_probe", None)
