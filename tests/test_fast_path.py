"""A cache hit is nearly free: no networkx, no submitit, no claim, no Slurm command.
And the progress display: shown on request, quiet otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import typing as tp
from pathlib import Path

import pydantic
import pytest

import exca

SCRIPT = textwrap.dedent(
    """
    import sys, typing as tp
    import numpy as np, pydantic
    import exca

    class Task(pydantic.BaseModel):
        x: int = 1
        infra: exca.TaskInfra = exca.TaskInfra(version="1", cluster="slurm")

        @infra.apply
        def process(self) -> int:
            return self.x * 2

    class Map(pydantic.BaseModel):
        infra: exca.MapInfra = exca.MapInfra(version="1", cluster="slurm")

        @infra.apply(item_uid=str)
        def process(self, items: tp.Sequence[int]) -> tp.Iterator[np.ndarray]:
            for item in items:
                yield np.zeros(3) + item

    folder = sys.argv[1]
    if sys.argv[2] == "compute":  # fill the cache inline (cluster=None) first
        Task(infra={"folder": folder, "cluster": None}).process()
        list(Map(infra={"folder": folder, "cluster": None}).process([1, 2, 3]))
        # (pydantic's serializer classes: ~3 ms to import, only needed if a field uses one)
        print("COMPUTED", "pydantic.functional_serializers" in sys.modules)
        raise SystemExit
    import subprocess as sp
    import exca.storage.claims as claims

    def no_claim(*args, **kwargs):
        raise AssertionError("a cache hit took a claim")

    def no_command(*args, **kwargs):
        raise AssertionError(f"a cache hit ran a command: {args}")

    claims.Claims.claim = no_claim
    sp.run = sp.Popen = no_command
    assert Task(infra={"folder": folder}).process() == 2
    out = list(Map(infra={"folder": folder}).process([1, 2, 3]))
    assert [float(o[0]) for o in out] == [1.0, 2.0, 3.0]
    loaded = sorted(m for m in ("networkx", "submitit") if m in sys.modules)
    print("LOADED", loaded)
    """
)


def _run(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, code: str = SCRIPT
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(code)
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_cache_hit_imports_no_networkx_nor_submitit_and_takes_no_claim(tmp_path: Path) -> None:
    folder = str(tmp_path / "cache")
    first = _run(tmp_path, folder, "compute")
    assert first.returncode == 0, first.stderr
    assert "COMPUTED False" in first.stdout
    hit = _run(tmp_path, folder, "hit")
    assert hit.returncode == 0, hit.stderr
    assert "LOADED []" in hit.stdout


GRAPH_SCRIPT = textwrap.dedent(
    """
    import sys
    import pydantic
    import exca, exca.graph

    class Step(pydantic.BaseModel):
        k: int = 1
        infra: exca.TaskInfra = exca.TaskInfra(version="1")

        @infra.apply
        def process(self, x: int = 0) -> int:
            return x + self.k

    folder = sys.argv[1]
    first = Step(k=1, infra={"folder": folder}).process.node()
    second = Step(k=2, infra={"folder": folder}).process.node(first)
    print("PLAN", exca.graph.plan(second).counts())
    exca.graph.run(second, progress=False)
    print("RESULT", exca.graph.result(second))
    print("LOADED", "networkx" in sys.modules)
    """
)


def test_plan_and_run_of_a_graph_do_not_import_networkx(tmp_path: Path) -> None:
    # (its import takes ~110 ms, a third of a small graph's run in a fresh process;
    # only exca.graph.graph(), which returns a networkx DiGraph, needs it)
    out = _run(tmp_path, str(tmp_path / "cache"), code=GRAPH_SCRIPT)
    assert out.returncode == 0, out.stderr
    assert "PLAN {'missing': 2}" in out.stdout
    assert "RESULT 3" in out.stdout
    assert "LOADED False" in out.stdout


PROGRESS_SCRIPT = textwrap.dedent(
    """
    import sys, typing as tp
    import pydantic
    import exca

    class Map(pydantic.BaseModel):
        infra: exca.MapInfra = exca.MapInfra(version="1")

        @infra.apply(item_uid=str)
        def process(self, items: tp.Sequence[int]) -> tp.Iterator[int]:
            for item in items:
                yield item

    class Task(pydantic.BaseModel):
        infra: exca.TaskInfra = exca.TaskInfra(version="1")

        @infra.apply
        def compute(self) -> int:
            print("TASK-START", file=sys.stderr, flush=True)
            return 1

    class Data(pydantic.BaseModel):
        infra: exca.TaskInfra = exca.TaskInfra(version="1")

        @infra.apply
        def make(self) -> list[int]:
            return list(range(1000, 1050))

    assert Task(infra={"folder": sys.argv[1]}).compute() == 1
    print("TASK-END", file=sys.stderr, flush=True)
    # a map whose items come from a task computed here: its items counted once known
    fed = Map(infra={"folder": sys.argv[1]}).process.node(Data(infra={"folder": sys.argv[1]}).make.node())
    exca.graph.run(fed)
    print("GRAPH-END", file=sys.stderr, flush=True)
    print(sum(Map(infra={"folder": sys.argv[1]}).process(list(range(300)))))
    """
)


def _progress_run(tmp_path: Path, value: str | None) -> str:
    script = tmp_path / "progress.py"
    script.write_text(PROGRESS_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "EXCA_PROGRESS"}
    if value is not None:
        env["EXCA_PROGRESS"] = value
    folder = tmp_path / f"cache-{value}"
    result = subprocess.run(
        [sys.executable, str(script), str(folder)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(sum(range(300)))
    return result.stderr


def test_progress_is_shown_on_request_and_quiet_otherwise(tmp_path: Path) -> None:
    forced = _progress_run(tmp_path, "1")
    assert "300/300" in forced  # the bar reached the number of items
    assert "it/s" in forced or "s/it" in forced
    # a task computed in the calling process: no bar (it sat at 0/1 until the task ended,
    # at every call of a cached method in a notebook)
    assert "0/1" not in forced.split("TASK-END")[0]
    assert "50/50" in forced.split("TASK-END")[1].split("GRAPH-END")[0]
    quiet = _progress_run(tmp_path, None)  # stderr is not a terminal here
    assert "300/300" not in quiet
    off = _progress_run(tmp_path, "0")
    assert "300/300" not in off


def test_progress_shows_in_a_notebook(monkeypatch: pytest.MonkeyPatch) -> None:
    """A notebook cell's standard error is not a terminal: the bar was never shown there
    (and forced on, tqdm.auto warned "IProgress not found" without ipywidgets)."""
    import io
    import types
    import warnings

    from exca.graph import progress

    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    kernel_stream = type("OutStream", (io.StringIO,), {"__module__": "ipykernel.iostream"})
    stream = kernel_stream()
    monkeypatch.setattr(sys, "stderr", stream)
    assert not progress.enabled()  # (ipykernel not loaded: a stream that only looks like it)
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # (not installed: the text bar)
    assert progress.enabled() and not progress.enabled(False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no TqdmWarning)
        bar = progress.Progress(3, desc="items")
        bar.update(3)
        bar.close()
    assert "3/3" in stream.getvalue()


def test_a_module_imported_by_another_thread_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """exca looks numpy up in sys.modules (never importing it for the user): a thread
    importing it meanwhile put a half-made module there, and a map in a thread pool
    failed with "partially initialized module 'numpy' has no attribute 'ndarray'"."""
    import threading
    import time

    from exca.storage.modules import imported

    (tmp_path / "slowly_made.py").write_text("import time\ntime.sleep(0.5)\nVALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "slowly_made", raising=False)
    assert imported("slowly_made") is None  # (not imported: not imported for the user)
    thread = threading.Thread(target=__import__, args=("slowly_made",))
    thread.start()
    while "slowly_made" not in sys.modules:
        time.sleep(0.005)
    module = imported("slowly_made")
    assert module is not None and module.VALUE == 1
    thread.join()
    sys.modules.pop("slowly_made", None)


NEW_ITEMS_SCRIPT = textwrap.dedent(
    """
    import sys, typing as tp
    import pydantic
    import exca

    class Map(pydantic.BaseModel):
        infra: exca.MapInfra = exca.MapInfra(version="1")

        @infra.apply(item_uid=str)
        def process(self, items: tp.Sequence[int]) -> tp.Iterator[int]:
            for item in items:
                yield item * 2

    out = list(Map(infra={"folder": sys.argv[1]}).process(list(range(int(sys.argv[2])))))
    assert out == [2 * i for i in range(int(sys.argv[2]))]
    print("YAML", "yaml" in sys.modules)
    """
)


def test_new_items_in_an_existing_folder_need_no_yaml_parsing(tmp_path: Path) -> None:
    """The first call of a process writing into an existing uid folder checks its yaml
    files by their text: PyYAML (~20 ms to import) is not loaded."""
    script = tmp_path / "new_items.py"
    script.write_text(NEW_ITEMS_SCRIPT)
    folder = str(tmp_path / "cache")
    for count in ("3", "6"):  # (creates the folder; then 3 new items in it)
        result = subprocess.run(
            [sys.executable, str(script), folder, count],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "YAML False" in result.stdout
    [config] = (tmp_path / "cache").glob("*/*/config.yaml")
    config.write_text(config.read_text() + "\n")  # (the same config, another text: parsed)
    result = subprocess.run(
        [sys.executable, str(script), folder, "7"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "YAML True" in result.stdout


def _recorded_bars(monkeypatch: pytest.MonkeyPatch) -> list[tp.Any]:
    """Progress shown, through bars with tqdm's interface that record the count they show
    (the list of bars made, the last one last)."""
    from exca.graph import progress

    monkeypatch.setenv(progress.PROGRESS_ENV, "1")
    bars: list[tp.Any] = []

    class Bar:
        def __init__(self, total: int, **kwargs: tp.Any) -> None:
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, count: int) -> None:
            self.n += count

        def refresh(self) -> None:
            pass

        def close(self) -> None:
            pass

    monkeypatch.setattr(progress, "_tqdm", lambda: Bar)
    return bars


def test_a_threadpool_map_counts_its_items_as_they_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A map on cluster='threadpool' counted its items only when its unit ended: with one
    worker (a 2-CPU machine) the bar sat at 0/n until the whole map was done, then jumped
    to n/n (seen in a notebook), where cluster=None counts each item. It counts them as
    they are written now."""
    import pydantic

    import exca

    bars = _recorded_bars(monkeypatch)
    seen: list[int] = []

    class Lists(pydantic.BaseModel):
        infra: exca.MapInfra = exca.MapInfra(version="1", max_jobs=1)

        @infra.apply(item_uid=str)
        def run(self, items: list[int]) -> tp.Iterator[list[int]]:
            for item in items:
                seen.append(bars[-1].n)  # what the bar shows as this item starts
                yield [item]  # (not a small immutable output: written as it is yielded)

    for cluster in (None, "threadpool"):
        seen.clear()
        obj = Lists(infra={"folder": tmp_path / str(cluster), "cluster": cluster})
        assert [x[0] for x in obj.run([1, 2, 3])] == [1, 2, 3]
        assert seen == [0, 1, 2], cluster
        assert bars[-1].n == 3  # (counted once)


def test_a_processpool_map_counts_its_items_as_they_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A map on cluster='processpool' counted its items only when its unit (a chunk) ended:
    with one worker (a 2-CPU machine) the bar sat at 0/n until the whole map was done. Its
    processes count the items they write (a count shared with the caller, which polls it)."""
    import threading
    import time

    import pydantic

    import exca

    bars = _recorded_bars(monkeypatch)
    flags = tmp_path / "flags"
    flags.mkdir()

    class Gated(pydantic.BaseModel):
        flags: str
        infra: exca.MapInfra = exca.MapInfra(version="1", max_jobs=1)

        @infra.apply(item_uid=str)
        def run(self, items: list[int]) -> tp.Iterator[list[int]]:
            at = Path(self.flags) / "at-last"
            for index, item in enumerate(items):
                if index == len(items) - 1 and not at.exists():
                    # (the last item of the first chunk: waits until the caller looked)
                    at.touch()
                    while not (Path(self.flags) / "go").exists():
                        time.sleep(0.02)
                yield [item]

    shown: list[int] = []

    def look() -> None:  # (what the bar shows while that item waits, once polled)
        deadline = time.monotonic() + 60
        while not (flags / "at-last").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        deadline = time.monotonic() + 10  # (the caller polls at least every 2 s)
        while time.monotonic() < deadline and (not bars or bars[-1].n < 1):
            time.sleep(0.05)
        shown.append(bars[-1].n if bars else -1)
        (flags / "go").touch()

    looker = threading.Thread(target=look)
    looker.start()
    obj = Gated(flags=str(flags), infra={"folder": tmp_path / "cache", "cluster": "processpool"})
    items = list(range(30))  # (one process: max_jobs=1; chunks of several items)
    assert [x[0] for x in obj.run(items)] == items
    looker.join()
    assert shown and shown[0] >= 1, shown  # (the items its chunk wrote before it)
    assert bars[-1].n == 30  # (counted once)


class Prepared(pydantic.BaseModel):
    n: int = 3
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def prepare(self) -> int:
        return self.n


class Trained(pydantic.BaseModel):
    data: Prepared = Prepared()
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def fit(self) -> int:
        return self.data.prepare() * 2


class Unrelated(pydantic.BaseModel):
    x: int = 0
    infra: exca.TaskInfra = exca.TaskInfra(version="1")

    @infra.apply
    def run(self) -> int:
        return self.x


def test_a_sub_config_version_change_found_elsewhere_costs_other_hits_no_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a plan of this process found a cached result computed with other sub-config
    versions (not told yet: a call reusing it warns), every cache hit of every other
    folder looked at its own result again (one more folder listing per call: 2 instead of
    1, strace: 4 getdents64 instead of 2). Only the folders where it was found pay now."""
    from exca.infra import base as infra_base

    folder = tmp_path / "cache"
    trained = Trained(data={"infra": {"folder": folder}}, infra={"folder": folder})
    trained.fit()
    full = tp.cast(Path, trained.infra.uid_folder()) / "full-uid.yaml"
    # (as written when the class Prepared was at version "0", by another process)
    full.write_text(full.read_text().replace("  infra.version: '1'", "  infra.version: '0'"))
    infra_base._DEFAULTS_CHECKED.clear()
    others = [Unrelated(x=x, infra={"folder": folder}) for x in range(10)]
    assert [o.run() for o in others] == list(range(10))  # (computed; once-per-instance checks)
    listed: list[str] = []
    scandir = os.scandir

    def counted(path: tp.Any = ".") -> tp.Any:
        listed.append(str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counted)
    assert [o.run() for o in others] == list(range(10))
    before = len(listed)
    again = Trained(data={"infra": {"folder": folder}}, infra={"folder": folder})
    entries = exca.graph.plan(again.fit.node()).entries
    [entry] = [e for e in entries if ".Trained.fit," in e.uid]
    assert "other sub-config versions" in entry.reason  # (found, not told yet)
    listed.clear()
    assert [o.run() for o in others] == list(range(10))
    assert len(listed) == before


def _modules_after_import_exca(*names: str) -> str:
    code = f"import sys, exca; print(sorted(m for m in {names!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_exca_leaves_out_what_a_task_does_not_need() -> None:
    # (each job process and `python -m exca` command pays `import exca`; MapInfra's module
    # and model are built on first use, e.g. `exca.MapInfra` or `from exca import MapInfra`;
    # pickletools only checks a payload that failed to read, subprocess only runs git)
    assert _modules_after_import_exca("exca.infra.map", "pickletools", "subprocess") == "[]"
    assert exca.MapInfra is exca.infra.MapInfra
    assert exca.MapInfra.__module__ == "exca.infra.map"
