"""CacheDict under concurrency, SIGKILL, corrupted index files and fork (DESIGN "Storage").

Values are derived from their keys (``value_for``), so any reader can check what it reads.
"""

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
import typing as tp
import warnings
from pathlib import Path

import numpy as np
import orjson
import pytest
from racing import race

from exca.cachedict import CacheDict
from exca.storage import index as index_module

# shared by the test process and the writer subprocesses (exec'd in both)
VALUES_SRC = """
import zlib
import numpy as np


def kind_of(key):
    i = int(key.rsplit("-", 1)[1])
    return i % 6 if key.startswith("r") else i % 2


def value_for(key):
    i = int(key.rsplit("-", 1)[1])
    seed = zlib.crc32(key.encode("utf8"))
    kind = kind_of(key)
    if kind == 0:  # small array
        size = 1 + seed % 7
        return np.arange(size, dtype=np.float32) + np.float32(seed % 1000)
    if kind == 1:  # small dict (inline json)
        return {"key": key, "seed": seed, "l": [i, str(i)]}
    if kind == 2:  # big array: 200k floats, so that kills land inside payload writes
        return np.arange(200_000, dtype=np.float64) + seed
    if kind == 3:  # Auto tree: json with a nested memmap array
        return {"key": key, "text": key * 50, "arr": np.full(1000, seed % 97, dtype=np.int64)}
    if kind == 4:  # pickled (one file per entry)
        return {"set": {seed, i}, "key": key}
    return key * 100  # Text in the shared text file
"""
namespace: dict[str, tp.Any] = {}
exec(VALUES_SRC, namespace)
value_for: tp.Callable[[str], tp.Any] = namespace["value_for"]
kind_of: tp.Callable[[str], int] = namespace["kind_of"]


def assert_same(value: tp.Any, expected: tp.Any) -> None:
    if isinstance(expected, np.ndarray):
        assert isinstance(value, np.ndarray), type(value)
        assert value.dtype == expected.dtype and value.shape == expected.shape
        assert np.array_equal(value, expected)
    elif isinstance(expected, dict):
        assert isinstance(value, dict) and set(value) == set(expected), value
        for key in expected:
            assert_same(value[key], expected[key])
    else:
        assert type(value) is type(expected) and value == expected, (value, expected)


def check_all(cd: CacheDict[tp.Any], keys: tp.Iterable[str]) -> None:
    for key in keys:
        assert_same(cd[key], value_for(key))


def index_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*-info.jsonl"))


def keys_per_file(folder: Path) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in index_files(folder):
        records = [orjson.loads(line) for line in f.read_bytes().splitlines() if line]
        out[f.name] = {r["#key"] for r in records if "#key" in r}
    return out


# --- (a) concurrent writers ----------------------------------------------------------------
CONCURRENT_WRITER = (
    VALUES_SRC
    + """
import sys, threading, time
from pathlib import Path
from exca.cachedict import CacheDict

folder, proc = Path(sys.argv[1]), int(sys.argv[2])
cd = CacheDict(folder)
errors = []


def work(thread):
    try:
        with cd.write():
            for i in range(5000):
                key = f"p{proc}-t{thread}-{i}"
                cd[key] = value_for(key)
    except BaseException as e:
        errors.append(e)
        raise


(folder.parent / f"ready-{proc}").touch()
while not (folder.parent / "go").exists():
    time.sleep(0.005)
threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
sys.exit(1 if errors else 0)
"""
)


def test_concurrent_processes_and_threads(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    script = tmp_path / "writer.py"
    script.write_text(CONCURRENT_WRITER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(folder), str(p)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for p in range(4)
    ]
    deadline = time.time() + 60
    while not all((tmp_path / f"ready-{p}").exists() for p in range(4)):
        assert time.time() < deadline, "writers did not start"
        assert all(proc.poll() is None for proc in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    (tmp_path / "go").touch()  # all writers start together
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    expected = {f"p{p}-t{t}-{i}" for p in range(4) for t in range(2) for i in range(5000)}
    fresh: CacheDict[tp.Any] = CacheDict(folder)
    keys = fresh.keys()
    assert len(keys) == 40_000
    assert set(keys) == expected
    check_all(fresh, expected)
    # one index file per (process, thread): writers never shared a file
    per_file = keys_per_file(folder)
    assert len(per_file) == 8
    for names in per_file.values():
        assert len({name.rsplit("-", 1)[0] for name in names}) == 1
        assert len(names) == 5000


# --- (b) writers killed at random moments -----------------------------------------------------
KILLED_WRITER = (
    VALUES_SRC
    + """
import sys, warnings
from exca.cachedict import CacheDict

warnings.simplefilter("ignore")
folder, run = sys.argv[1], int(sys.argv[2])
cd = CacheDict(folder)
pickled = CacheDict(folder, cache_type="Pickle")
out = sys.stdout
out.write("ready\\n")
out.flush()
with cd.write(), pickled.write():
    i = 0
    while True:
        key = f"r{run}-{i}"
        target = pickled if kind_of(key) == 4 else cd
        target[key] = value_for(key)
        out.write(key + "\\n")  # reported only once the write returned
        out.flush()
        i += 1
"""
)


def test_writers_killed_at_random_moments(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    rng = random.Random(12)
    watcher: CacheDict[tp.Any] = CacheDict(folder)  # reads incrementally between runs
    reported: set[str] = set()
    checked: set[str] = set()
    kills = 0
    for run in range(24):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(folder), str(run)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n", proc.communicate()
        for _ in range(rng.randint(0, 14)):
            line = proc.stdout.readline()
            assert line.endswith(b"\n"), proc.communicate()
            reported.add(line.decode().strip())
        time.sleep(rng.uniform(0, 0.004))
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err.decode()
        kills += 1
        # only complete lines were reported as done
        reported.update(line.decode() for line in rest.split(b"\n")[:-1])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # reading never warns nor raises
            keys = set(watcher.keys())
        assert reported <= keys, reported - keys
        check_all(watcher, keys - checked)
        checked |= keys
    assert kills >= 20
    assert len({kind_of(k) for k in reported}) == 6  # every kind was written
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh: CacheDict[tp.Any] = CacheDict(folder)
        keys = set(fresh.keys())
        assert reported <= keys
        check_all(fresh, keys)  # unreported entries may exist: they are right too
        assert set(fresh.missing(sorted(reported))) == set()


# --- (c) corrupted index files ---------------------------------------------------------------
def _make_cache(folder: Path) -> tuple[CacheDict[tp.Any], Path]:
    cd: CacheDict[tp.Any] = CacheDict(folder)
    pickled: CacheDict[tp.Any] = CacheDict(folder, cache_type="Pickle")
    with cd.write():
        for i in range(5):
            cd[f"d-{i}"] = {"i": i}
        cd["arr-0"] = np.arange(100.0)
        cd["txt-0"] = "t" * 2000
    with pickled.write():
        pickled["pk-0"] = {"p": 1}
    files = [f for f in index_files(folder) if b"txt-0" in f.read_bytes()]
    return cd, files[0]


EXPECTED = {
    **{f"d-{i}": {"i": i} for i in range(5)},
    "arr-0": np.arange(100.0),
    "txt-0": "t" * 2000,
    "pk-0": {"p": 1},
}


def _check_expected(cd: CacheDict[tp.Any], extra: tp.Iterable[str] = ()) -> None:
    assert set(cd.keys()) == set(EXPECTED) | set(extra)
    for key, value in EXPECTED.items():
        assert_same(cd[key], value)


def test_truncated_last_line_is_ignored(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    _, index = _make_cache(folder)
    line = b'{"#key":"late","#type":"Json","v":{"x":1}}\n'
    with index.open("ab") as handle:
        handle.write(line[:20])  # a writer in the middle of its line (or killed there)
    reader: CacheDict[tp.Any] = CacheDict(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _check_expected(reader)
        assert "late" not in reader
        _check_expected(CacheDict(folder))
    with index.open("ab") as handle:
        handle.write(line[20:])  # the line completes: the incremental reader now sees it
    assert reader["late"] == {"x": 1}
    _check_expected(reader, extra=["late"])


@pytest.mark.parametrize(
    "garbage",
    [b"garbage{{", b'{"#key":"half", "#ty', b"[1, 2]", b'{"#key": 12, "#type": "Json"}'],
    ids=str,
)
def test_garbage_line_in_the_middle(tmp_path: Path, garbage: bytes) -> None:
    folder = tmp_path / "cache"
    _, index = _make_cache(folder)
    lines = index.read_bytes().split(b"\n")
    assert len(lines) > 4
    index.write_bytes(b"\n".join([*lines[:2], garbage, *lines[2:]]))
    with pytest.warns(RuntimeWarning, match="unreadable index line"):
        reader: CacheDict[tp.Any] = CacheDict(folder)
        keys = reader.keys()
    assert set(keys) == set(EXPECTED)
    _check_expected(reader)


def test_garbage_line_at_the_end(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    cd, index = _make_cache(folder)
    reader: CacheDict[tp.Any] = CacheDict(folder)
    _check_expected(reader)
    with index.open("ab") as handle:
        handle.write(b'{"#key":"x","#type":"Js\x00\xff\n')
    with pytest.warns(RuntimeWarning, match="unreadable index line"):
        assert set(CacheDict(folder).keys()) == set(EXPECTED)
    with pytest.warns(RuntimeWarning):  # the incremental reader too
        assert set(reader.keys()) == set(EXPECTED)
    _check_expected(reader)
    with cd.write():  # the folder stays writable
        cd["after"] = {"a": 1}
    with warnings.catch_warnings():  # (a new instance starts where this process's last
        warnings.simplefilter("error")  # reader stopped: that line was said already)
        assert CacheDict(folder)["after"] == {"a": 1}
    index_module.unshare(folder)  # (a reader of another process reads it, and says so)
    with pytest.warns(RuntimeWarning):
        assert CacheDict(folder)["after"] == {"a": 1}


def test_index_line_past_the_end_of_a_data_file(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    _, index = _make_cache(folder)
    records = [orjson.loads(line) for line in index.read_bytes().splitlines()]
    array = next(r for r in records if r["#key"] == "arr-0")
    text = next(r for r in records if r["#key"] == "txt-0")
    data_size = (folder / array["f"]).stat().st_size
    bad_array = {**array, "#key": "bad-arr", "o": data_size + 4096}
    bad_text = {**text, "#key": "bad-txt", "o": (folder / text["f"]).stat().st_size - 10}
    bad_file = {**array, "#key": "bad-file", "f": "data/does-not-exist.data"}
    with index.open("ab") as handle:
        for record in (bad_array, bad_text, bad_file):
            handle.write(orjson.dumps(record) + b"\n")
    reader: CacheDict[tp.Any] = CacheDict(folder)
    with pytest.raises(OSError, match="shorter than its index says"):
        reader["bad-arr"]
    with pytest.raises(OSError, match="shorter than its index says"):
        reader["bad-txt"]
    with pytest.raises(FileNotFoundError):
        reader["bad-file"]
    _check_expected(reader, extra=["bad-arr", "bad-txt", "bad-file"])


def test_missing_payload_file_is_a_load_error(tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    _make_cache(folder)
    (pkl,) = (folder / "data").glob("*.pkl")
    pkl.unlink()
    reader: CacheDict[tp.Any] = CacheDict(folder)
    with pytest.raises(FileNotFoundError):
        reader["pk-0"]
    assert reader["d-1"] == {"i": 1}


# --- (d) fork of a writing process -------------------------------------------------------------
def _child_writes(cd: CacheDict[tp.Any]) -> None:
    for i in range(300):
        key = f"c-{i}"
        cd[key] = value_for(key)


def _run_child(cd: CacheDict[tp.Any], method: str) -> None:
    if method == "os.fork":
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            code = 1
            try:
                _child_writes(cd)
                code = 0
            finally:
                os._exit(code)
        # the parent keeps writing while the child writes
        for i in range(300, 600):
            cd[f"f-{i}"] = value_for(f"f-{i}")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    else:
        proc = multiprocessing.get_context("fork").Process(target=_child_writes, args=(cd,))
        proc.start()
        for i in range(300, 600):
            cd[f"f-{i}"] = value_for(f"f-{i}")
        proc.join(60)
        assert proc.exitcode == 0


@pytest.mark.parametrize("method", ["os.fork", "multiprocessing"])
def test_fork_of_a_writing_process(tmp_path: Path, method: str) -> None:
    folder = tmp_path / "cache"
    cd: CacheDict[tp.Any] = CacheDict(folder)
    threading.Thread(target=lambda: None).start()  # a process that has used threads
    with cd.write():
        for i in range(300):
            cd[f"f-{i}"] = value_for(f"f-{i}")  # the parent session is open and has data files
        _run_child(cd, method)
        for i in range(600, 700):
            cd[f"f-{i}"] = value_for(f"f-{i}")
    parent_keys = {f"f-{i}" for i in range(700)}
    child_keys = {f"c-{i}" for i in range(300)}
    # separate index files, each holding one process's keys
    per_file = keys_per_file(folder)
    assert len(per_file) == 2
    assert sorted(per_file.values(), key=len) == [child_keys, parent_keys]
    # separate data files
    fresh: CacheDict[tp.Any] = CacheDict(folder)
    assert set(fresh.keys()) == parent_keys | child_keys

    def data_file_names(keys: set[str]) -> set[str]:
        names = set()
        for key in keys:
            entry = fresh.entry(key)
            assert entry is not None
            names |= {v for v in orjson.dumps(entry.info).decode().split('"') if "data/" in v}
        return names

    parent_data, child_data = data_file_names(parent_keys), data_file_names(child_keys)
    assert parent_data and child_data
    assert not parent_data & child_data
    check_all(fresh, parent_keys | child_keys)
    check_all(cd, parent_keys | child_keys)  # the parent's own instance sees the child's keys


def test_short_writes_of_index_lines_are_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel may write fewer bytes than asked: lines are finished, never torn."""
    real_write = os.write
    shortened = []

    def short_write(fd: int, data: tp.Any) -> int:
        if isinstance(data, bytes) and len(data) > 40:  # index lines (payloads are arrays)
            shortened.append(len(data))
            return real_write(fd, data[:40])
        return real_write(fd, data)

    cd: CacheDict[tp.Any] = CacheDict(tmp_path)
    values = {f"key-{i}": {"text": "x" * (50 + i), "i": i} for i in range(20)}
    values["array"] = np.arange(64.0)
    monkeypatch.setattr(os, "write", short_write)
    with cd.write():
        for key, value in values.items():
            cd[key] = value
    monkeypatch.setattr(os, "write", real_write)
    assert len(shortened) >= 20
    fresh: CacheDict[tp.Any] = CacheDict(tmp_path)
    assert set(fresh.keys()) == set(values)
    for key, value in values.items():
        if key == "array":
            np.testing.assert_array_equal(fresh[key], value)
        else:
            assert fresh[key] == value


# --- short and failed writes ------------------------------------------------------------------
def test_short_writes_are_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Linux writes at most ~2 GiB per call, and a signal can cut a write short: every
    write must still land whole (simulated: at most 1000 bytes per call)."""
    real_write = os.write

    def short_write(fd: int, data: tp.Any) -> int:
        return real_write(fd, memoryview(data).cast("B")[:1000])

    def short_writev(fd: int, buffers: tp.Sequence[tp.Any]) -> int:
        return short_write(fd, memoryview(buffers[0]).cast("B"))

    monkeypatch.setattr(os, "write", short_write)
    monkeypatch.setattr(os, "writev", short_writev)
    values = {f"a{i}": np.arange(1000 + i) * 1.5 for i in range(5)}
    values["text"] = "x" * 5000
    values["dict"] = {"a": np.ones((40, 30)), "b": list(range(400))}
    cd: CacheDict[tp.Any] = CacheDict(tmp_path)
    with cd.write():
        for key, value in list(values.items())[:4]:
            cd[key] = value
        cd.set_many(list(values.items())[4:])
    monkeypatch.undo()
    reread: CacheDict[tp.Any] = CacheDict(tmp_path)
    assert sorted(reread) == sorted(values)
    for key, value in values.items():
        if key == "dict":
            np.testing.assert_array_equal(reread[key]["a"], value["a"])
            assert reread[key]["b"] == value["b"]
        elif key == "text":
            assert reread[key] == value
        else:
            np.testing.assert_array_equal(reread[key], value)


def test_failed_data_write_does_not_shift_later_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails half-way (disk full) leaves bytes in the data file: the entries
    written after it must not point into them."""
    real_write, real_writev = os.write, os.writev
    failing = {"on": False}

    def write(fd: int, data: tp.Any) -> int:
        if failing["on"] and memoryview(data).nbytes > 4000:
            real_write(fd, memoryview(data).cast("B")[:1234])
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    def writev(fd: int, buffers: tp.Sequence[tp.Any]) -> int:
        if failing["on"]:
            return write(fd, b"".join(memoryview(b).cast("B") for b in buffers))
        return real_writev(fd, buffers)

    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "writev", writev)
    cd: CacheDict[tp.Any] = CacheDict(tmp_path)
    with cd.write():
        cd["before"] = np.arange(10.0)
        failing["on"] = True
        with pytest.raises(OSError, match="No space"):
            cd["big"] = np.ones(1000)
        failing["on"] = False
        cd["after"] = np.arange(16) + 100
        cd["after-big"] = np.arange(1000) * 2
    monkeypatch.undo()
    reread: CacheDict[tp.Any] = CacheDict(tmp_path)
    assert sorted(reread) == ["after", "after-big", "before"]
    np.testing.assert_array_equal(reread["before"], np.arange(10.0))
    np.testing.assert_array_equal(reread["after"], np.arange(16) + 100)
    np.testing.assert_array_equal(reread["after-big"], np.arange(1000) * 2)


@pytest.mark.timeout(60)
def test_fork_while_another_thread_reads_the_index(tmp_path: Path) -> None:
    """A thread is reading the index (holding the reader's lock) when another thread forks:
    the child must be able to read the cache (the lock's owner does not exist there)."""
    cd: CacheDict[int] = CacheDict(tmp_path)
    with cd.write():
        cd["k"] = 1
    reader: CacheDict[int] = CacheDict(tmp_path)
    assert reader.keys() == ["k"]
    index_reader = reader._reader
    assert index_reader is not None
    # (a thread in the middle of refresh() at the fork)
    status = forked_while_held(
        index_reader.locked, lambda: reader.keys() == ["k"] and reader["k"] == 1
    )
    assert status == 0, status


def forked_while_held(
    lock: tp.Callable[[], tp.ContextManager[tp.Any]], child: tp.Callable[[], bool]
) -> int:
    """Fork while another thread holds ``lock()``; the child runs ``child`` (an alarm
    kills it after 10 s: a deadlock) and exits 0 if it returned True. Its exit code."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock():
            held.set()
            release.wait()

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait()
    pid = os.fork()
    if pid == 0:
        signal.alarm(10)
        os._exit(0 if child() else 1)
    release.set()
    thread.join()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


_BOTH_WRITING = threading.Barrier(2)


class BarrierText:
    """A format whose dump waits until two threads are dumping (to force the race)."""

    @classmethod
    def __dump_info__(cls, ctx: tp.Any, value: str) -> dict[str, tp.Any]:
        _BOTH_WRITING.wait(timeout=10)
        return {"v": value}

    @classmethod
    def __load_from_info__(cls, ctx: tp.Any, v: str) -> str:
        return v


def test_two_threads_writing_one_key_then_delete(tmp_path: Path) -> None:
    """Two threads of one instance write the same key at the same time (both pass the
    existence check): a delete must then remove both copies, for every reader."""
    from exca.cachedict import DumpContext

    if "BarrierText" not in DumpContext.HANDLERS:
        DumpContext.register(BarrierText)
    cd: CacheDict[str] = CacheDict(tmp_path, cache_type="BarrierText")

    def write(value: str) -> None:
        with cd.write():
            cd["k"] = value

    threads = [threading.Thread(target=write, args=(f"from-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert CacheDict(tmp_path)["k"] in ("from-0", "from-1")
    del cd["k"]
    assert "k" not in cd and cd.keys() == []
    assert "k" not in CacheDict(tmp_path) and CacheDict(tmp_path).keys() == []


FAILED_APPEND_SCRIPT = """
import glob, os, resource, signal, sys
from exca.cachedict import CacheDict

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (over the limit: EFBIG, not a kill)
folder = sys.argv[1]
cache = CacheDict(folder)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
with cache.write():
    cache["a"] = "first"
    (index,) = glob.glob(folder + "/*-info.jsonl")
    resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(index) + 20, hard))
    try:
        cache["b"] = "y" * 100  # its index line is cut by the limit (a full disk)
    except OSError:
        pass
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    cache["c"] = "third"
    del cache["a"]
print(sorted(cache.keys()))
"""


def test_an_append_that_failed_half_way_loses_nothing_after_it(tmp_path: Path) -> None:
    """A full disk cut an index line: the next line was glued to the fragment, and every
    other reader skipped it (and the writer's offsets were wrong after it)."""
    out = subprocess.run(
        [sys.executable, "-c", FAILED_APPEND_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "['c']"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # (the fragment of "b" is skipped)
        fresh: CacheDict[tp.Any] = CacheDict(tmp_path)
        assert sorted(fresh.keys()) == ["c"] and fresh["c"] == "third"


@pytest.mark.parametrize("how", ["put", "set_many", "delete"])
def test_one_instance_written_and_read_by_two_threads(tmp_path: Path, how: str) -> None:
    """A thread writes (or deletes) while another lists the same instance: the reader
    never raises, never misses a key written before its call, and never reads past the
    end of the writer's index file (which made later refreshes drop the file's keys)."""
    cd: CacheDict[int] = CacheDict(tmp_path / "cache")
    count = 4000
    if how == "delete":
        with cd.write():
            cd.set_many((f"k{i}", i) for i in range(count))
    done = [0]
    stop = threading.Event()
    problems: list[str] = []

    def write() -> None:
        try:
            with cd.write():
                for i in range(count):
                    if how == "put":
                        cd[f"k{i}"] = i
                    elif how == "set_many":
                        cd.set_many([(f"k{i}", i)])
                    else:
                        del cd[f"k{i}"]
                    done[0] = i + 1
        finally:
            stop.set()

    def read() -> None:
        while not stop.is_set():
            settled = done[0]
            try:
                keys = set(cd.keys())
            except Exception as error:  # the failure this test looks for
                problems.append(repr(error))
                return
            expected = {f"k{i}" for i in range(settled)}
            if how == "delete" and keys & expected:
                problems.append(f"deleted keys listed: {sorted(keys & expected)[:3]}")
            elif how != "delete" and not expected <= keys:
                problems.append(f"written keys missing: {sorted(expected - keys)[:3]}")

    race(read, write)  # (many thread switches: the window shows at once)
    assert problems == []
    again: CacheDict[int] = CacheDict(tmp_path / "cache")
    assert len(again) == (0 if how == "delete" else count)
    assert len(cd) == len(again)


@pytest.mark.timeout(60)  # (a FIFO made readers wait forever)
@pytest.mark.parametrize("kind", ["directory", "fifo"])
def test_a_non_file_named_like_an_index_file_is_ignored(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory named like an index file made every read of the cache fail with a bare
    IsADirectoryError (everything cached unreachable); a FIFO made readers wait forever.
    It is now ignored, with a warning naming it; the entries read back."""
    folder = tmp_path / "cache"
    cache: CacheDict[tp.Any] = CacheDict(folder)
    with cache.write():
        cache["a"] = np.arange(3.0)
    odd = folder / "host-1-2-0123456789ab-abcdef-info.jsonl"
    if kind == "directory":
        odd.mkdir()
    else:
        os.mkfifo(odd)
    fresh: CacheDict[tp.Any] = CacheDict(folder)
    assert list(fresh.keys()) == ["a"] and fresh["a"].tolist() == [0.0, 1.0, 2.0]
    assert f"{odd} is named like an index file but is not a file" in caplog.text
    with fresh.write():
        fresh["b"] = 1
    assert CacheDict(folder)["b"] == 1
    fresh.clear()
    assert not list(CacheDict(folder).keys()) and odd.exists()


@pytest.mark.timeout(60)
def test_a_child_forked_while_a_thread_maps_a_file_reads_arrays(tmp_path: Path) -> None:
    """The lock of the reader's file maps was the parent's in a forked child: a thread in
    the middle of mapping a file at the fork (a DataLoader's workers start so) left it
    held for good, and the child's first array read waited forever."""
    cache: CacheDict[tp.Any] = CacheDict(tmp_path / "cache")
    with cache.write():
        cache["a"] = np.arange(3.0)
    reader: CacheDict[tp.Any] = CacheDict(tmp_path / "cache")
    loader = reader._loader
    assert loader is not None
    # (a thread inside memmap() at the fork)
    status = forked_while_held(loader._locked, lambda: reader["a"].tolist() == [0.0, 1.0, 2.0])
    assert status == 0, "the forked child's array read waited forever" if status < 0 else status


@pytest.mark.parametrize(
    "line",
    [
        b'{"#key":"b","#type":"Pickle","filename":"../precious.txt"}',
        b'{"#key":"b","#type":"Result","filename":"data/../../precious.txt"}',
        b'{"#key":"b","#type":"NumpyArray","filename":"/tmp/precious.txt"}',
        b'{"#key":"b","#type":"MemmapArray","f":"../precious.txt","o":0,"d":"<f8","s":[1]}',
    ],
)
def test_an_index_line_naming_a_file_outside_the_cache_touches_nothing_there(
    tmp_path: Path, line: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """An index line edited by hand (or by another user of a shared cache: index files
    are writable by all by default) naming ``../precious.txt``: deleting its key removed
    that file, outside the cache. Reading it now fails as a damaged payload (mode retry
    computes such an entry again) and deleting it removes the entry only."""
    from exca.storage.dumping import is_damaged_payload

    folder = tmp_path / "cache"
    precious = tmp_path / "precious.txt"
    precious.write_bytes(b"keep me")
    if line.count(b"/tmp/precious.txt"):
        precious = Path("/tmp/precious.txt")  # (an absolute name)
        if precious.exists():
            pytest.skip("/tmp/precious.txt exists: not this test's to touch")
        precious.write_bytes(b"keep me")
    try:
        cache: CacheDict[tp.Any] = CacheDict(folder)
        with cache.write():
            cache["a"] = 1
        (index,) = folder.glob("*-info.jsonl")
        with index.open("ab") as handle:
            handle.write(line + b"\n")
        fresh: CacheDict[tp.Any] = CacheDict(folder)
        with pytest.raises(OSError, match="not inside the cache folder") as info:
            fresh["b"]
        assert is_damaged_payload(info.value)
        assert fresh.payload_present("b") is False and fresh.damaged(["a", "b"]) == ["b"]
        with fresh.write():
            del fresh["b"]
        assert precious.read_bytes() == b"keep me"
        if b"MemmapArray" not in line:  # (a shared file's bytes are never deleted)
            assert "not inside the cache folder: refused" in caplog.text
        assert list(CacheDict(folder).keys()) == ["a"]
    finally:
        if precious.parent == Path("/tmp"):
            precious.unlink()


def test_an_empty_index_file_another_user_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer of a shared cache (permissions 0o777) under a private umask (0o077) makes
    its index file 0o600, then chmods it: killed in between (here: os._exit at the chmod),
    it left an empty file that no other user may open, and every read of the folder by
    another user failed with PermissionError (a reader looking in right between the two
    steps failed the same way). The other user is played by refusing to open a file that
    others may not read. The empty file holds nothing: it is skipped."""
    import stat

    folder = tmp_path / "cache"
    cache: CacheDict[tp.Any] = CacheDict(folder, permissions=0o777)
    with cache.write():
        cache["a"] = {"x": 1}
    code = f"""
import os
os.umask(0o077)
from exca.storage import index
index.chmod = lambda *args: os._exit(3)
from exca.cachedict import CacheDict
cache = CacheDict({str(folder)!r}, permissions=0o777)
with cache.write():
    cache["b"] = 2
"""
    assert subprocess.run([sys.executable, "-c", code]).returncode == 3
    modes = sorted(stat.S_IMODE(p.stat().st_mode) for p in index_files(folder))
    assert modes == [0o600, 0o777]  # (the killed writer's, empty; the first one's)
    real_open = os.open

    def as_another_user(path: tp.Any, flags: int, *args: tp.Any, **kwargs: tp.Any) -> int:
        if str(path).endswith("-info.jsonl") and not os.stat(path).st_mode & stat.S_IROTH:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", as_another_user)
    fresh: CacheDict[tp.Any] = CacheDict(folder)
    assert list(fresh.keys()) == ["a"] and fresh["a"] == {"x": 1}


@pytest.mark.parametrize("how", ["del", "delete_many"])
def test_a_deletion_on_a_full_disk_says_the_entry_is_still_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A deletion (a forced task's or map item's old entry, clear_job, del) whose line
    could not be written on a full disk raised a bare "[Errno 28] No space left on
    device": not which folder, nor whether the entry was gone. It now says the deletion
    was not written and the entry is still there (it reads back), and what to do."""
    import errno

    cd: CacheDict[tp.Any] = CacheDict(tmp_path)
    with cd.write():
        cd["kept"] = {"a": 1}
    deleter: CacheDict[tp.Any] = CacheDict(tmp_path)

    def full(fd: int, data: tp.Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError, match="No space left") as info:
        if how == "del":
            del deleter["kept"]
        else:
            deleter.delete_many(["kept"])
    monkeypatch.undo()
    notes = getattr(info.value, "__notes__", [])
    said = [n for n in notes if str(tmp_path) in n and "'kept' was not written" in n]
    assert said and "the entry is still there" in said[0] and "free space" in said[0], notes
    assert CacheDict(tmp_path)["kept"] == {"a": 1}
    assert deleter["kept"] == {"a": 1}
    del deleter["kept"]  # (space is back)
    assert "kept" not in CacheDict(tmp_path)


@pytest.mark.parametrize("what", ["inline", "array", "many"])
def test_a_full_disk_names_the_folder_and_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """Writes on a full disk: the error was a bare "[Errno 28] No space left on device"
    (a value inline in its index line: no word of the folder; others "while storing" it,
    but not what to do). It now names the folder and says to free space; what was
    written before still reads back, nothing of the failed entry does, and once space is
    back the same write works."""
    import errno

    cd: CacheDict[tp.Any] = CacheDict(tmp_path)
    with cd.write():
        cd["before"] = np.arange(3)

    def full(fd: int, data: tp.Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def store(cache: CacheDict[tp.Any]) -> None:
        with cache.write():
            if what == "inline":
                cache["new"] = 12
            elif what == "array":
                cache["new"] = np.arange(1000)
            else:
                cache.set_many([("new", np.arange(1000)), ("other", 3)])

    monkeypatch.setattr(os, "write", full)
    monkeypatch.setattr(os, "writev", full)
    with pytest.raises(OSError, match="No space left") as info:
        store(CacheDict(tmp_path))
    monkeypatch.undo()
    notes = getattr(info.value, "__notes__", [])
    said = [n for n in notes if str(tmp_path) in n and "free space there" in n]
    assert said, notes
    reread: CacheDict[tp.Any] = CacheDict(tmp_path)
    assert sorted(reread) == ["before"]
    np.testing.assert_array_equal(reread["before"], np.arange(3))
    store(reread)  # (space is back)
    assert "new" in CacheDict(tmp_path)


def test_a_folder_it_may_not_write_to_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing into a cache folder this process may not write to (a read-only mount,
    another user's folder): the bare "Read-only file system: '.../<session>-info.jsonl'"
    said nothing of what to do. It now does, naming the folder; what is there still
    reads."""
    import errno

    cd: CacheDict[tp.Any] = CacheDict(tmp_path)
    with cd.write():
        cd["before"] = 1
    open_ = os.open

    def read_only(path: tp.Any, flags: int, *args: tp.Any, **kwargs: tp.Any) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return open_(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    for value in (2, np.arange(1000)):  # (inline in its index line, or in data/)
        with pytest.raises(OSError, match="Read-only file system") as info:
            other: CacheDict[tp.Any] = CacheDict(tmp_path)
            with other.write():
                other["new"] = value
        notes = getattr(info.value, "__notes__", [])
        said = f"this process cannot write into {tmp_path} (Read-only file system)"
        assert any(n.startswith(said) for n in notes), notes
        assert CacheDict(tmp_path)["before"] == 1


@pytest.mark.parametrize("many", [False, True])
def test_a_cache_folder_it_may_not_make_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, many: bool
) -> None:
    """A cache folder not made yet whose mkdir is refused (a read-only mount, a full disk):
    set_many said what to do, a put said the bare "[Errno 30] Read-only file system"."""
    import errno

    def refused(path: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(os, "mkdir", refused)
    cd: CacheDict[tp.Any] = CacheDict(tmp_path / "cache")
    with pytest.raises(OSError, match="Read-only file system") as info, cd.write():
        if many:
            cd.set_many([("a", 1)])
        else:
            cd["a"] = 1
    notes = getattr(info.value, "__notes__", [])
    said = f"this process cannot write into {tmp_path / 'cache'} (Read-only file system)"
    assert any(n.startswith(said) for n in notes), notes


def test_a_full_disk_at_the_first_index_line_leaves_no_empty_index_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer whose first index line met a full disk (a job's submitter caching how
    its job ended, on a 2 MB tmpfs) left its empty ``*-info.jsonl`` in the node folder
    for good: no clean removes it (orphans reads no index file; compact merges two or
    more). The writer removes the file it made, holding nothing; the same writer writes
    once space is back, and what it wrote reads back."""
    import errno

    def full(fd: int, data: tp.Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    cd: CacheDict[tp.Any] = CacheDict(tmp_path)
    with cd.write():
        monkeypatch.setattr(os, "write", full)
        with pytest.raises(OSError, match="No space left"):
            cd["first"] = 1
        monkeypatch.undo()
        assert list(tmp_path.glob("*-info.jsonl")) == []
        cd["second"] = 2  # (space is back)
        assert "second" in cd
    assert len(list(tmp_path.glob("*-info.jsonl"))) == 1
    assert dict(CacheDict(tmp_path).items()) == {"second": 2}
    with cd.write():  # (a file holding lines stays when a later line fails)
        monkeypatch.setattr(os, "write", full)
        with pytest.raises(OSError, match="No space left"):
            cd["third"] = 3
        monkeypatch.undo()
        cd["fourth"] = 4
    assert len(list(tmp_path.glob("*-info.jsonl"))) == 1
    assert dict(CacheDict(tmp_path).items()) == {"second": 2, "fourth": 4}


def test_an_index_line_cut_by_a_full_disk_is_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk cutting an index line short (its first bytes written, then ENOSPC):
    the entries before and after it read back, and readers skipping the fragment said "a
    writer was probably killed while writing it", while none was: they now say a full
    disk may be why."""
    import errno

    cd: CacheDict[tp.Any] = CacheDict(tmp_path)
    real_write = os.write

    def half(fd: int, data: tp.Any) -> int:
        real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with cd.write():
        cd["before"] = 1
        monkeypatch.setattr(os, "write", half)
        with pytest.raises(OSError, match="No space left"):
            cd["cut"] = 2
        monkeypatch.undo()
        cd["after"] = 3
    index_module.unshare(tmp_path)  # (a reader of another process: it reads every line)
    with pytest.warns(RuntimeWarning, match="or its disk was full"):
        reread = dict(CacheDict(tmp_path).items())
    assert reread == {"before": 1, "after": 3}


def test_a_folder_it_may_not_read_is_named_with_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CacheDict (a map's folder) of a shared cache that another user made private: the
    bare "Permission denied: '<folder>'" said neither whose it was nor what to do (real
    users, a probe; this test runs as root, whom modes do not stop)."""
    import errno

    folder = tmp_path / "cd"
    cd: CacheDict[tp.Any] = CacheDict(folder)
    with cd.write():
        cd["a"] = 1
    scandir = os.scandir

    def refused(path: tp.Any = ".") -> tp.Any:
        if str(path) == str(folder):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refused)
    with pytest.raises(PermissionError) as info:
        "a" in CacheDict(folder)  # noqa: B015
    monkeypatch.undo()
    (note,) = getattr(info.value, "__notes__", [])
    assert note.startswith(f"this process may not read {folder} (owner uid {os.getuid()}, ")
    assert "or use a cache folder of your own" in note


# (said to a CacheDict's user, who may know no infra: what was removed, what is lost)
_REMOVED = "The folder of this CacheDict was removed while .* write them again"


def test_a_folder_cleared_by_another_cachedict_is_said_to_a_cachedict_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer whose folder another CacheDict cleared (or an ``rm -rf``) was told that
    "what was computed is not cached ... the next call computes it again (`exca clean` in
    another shell?)": words of an infra's caller, not of a CacheDict's. It now says the
    folder of the CacheDict was removed, that these entries are not stored, and to write
    them again; an infra's caller keeps its words (test_map_execution.py)."""
    from exca.storage import index

    monkeypatch.setattr(index, "BUSY_CHECK_SECONDS", 0.0)  # (the writer checks each write)
    folder = tmp_path / "cache"
    cache: CacheDict[tp.Any] = CacheDict(folder)
    with cache.write():
        cache["before"] = 1
        CacheDict(folder).clear()
        with pytest.raises(FileNotFoundError, match=_REMOVED) as raised:
            cache["lost"] = 2
        assert "clear() by another CacheDict" in str(raised.value)
        assert "call" not in str(raised.value) and "exca clean" not in str(raised.value)
        cache["after"] = 3
    assert sorted(CacheDict(folder).keys()) == ["after"]


@pytest.mark.parametrize("value", [{"x": 1}, np.arange(3)])
def test_a_batch_written_after_the_folder_was_removed_is_said_lost(
    tmp_path: Path, value: tp.Any
) -> None:
    """The folder removed (rm -rf) under a writer busy in a write() context: its next
    batch's index lines went into the unlinked index file, without a word, and the
    entries were never found. It raises a FileNotFoundError naming the folder; a later
    write works, in a new session of the folder made anew."""
    import shutil

    folder = tmp_path / "cache"
    cache: CacheDict[tp.Any] = CacheDict(folder)
    with cache.write():
        cache.set_many([("before", value)])
        shutil.rmtree(folder)
        with pytest.raises(FileNotFoundError, match=_REMOVED) as raised:
            cache.set_many([("lost", value)])
        assert raised.value.filename == str(folder)
        cache.set_many([("after", value)])
    assert sorted(CacheDict(folder).keys()) == ["after"]
    assert not [path for path in folder.rglob("*") if "lost" in path.name]  # (no payload)


@pytest.mark.parametrize("value", [{"x": 1}, 3, np.arange(3)])
def test_a_write_after_the_folder_was_removed_is_said_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: tp.Any
) -> None:
    """The folder removed (rm -rf) under a writer busy in a write() context: ``cd[k] = v``
    went on appending to the unlinked index file for up to a minute, without a word, and
    the entries were never found. A write after the removal raises the FileNotFoundError
    naming the folder (at its writer's next check, BUSY_CHECK_SECONDS after the last one,
    at the latest when the write() block ends); a later write works, in the folder made
    anew."""
    import shutil

    from exca.storage import index

    folder = tmp_path / "cache"
    cache: CacheDict[tp.Any] = CacheDict(folder)
    # the block ends soon after the removal: said then
    removed = pytest.raises(FileNotFoundError, match=_REMOVED)
    with removed as raised, cache.write():
        cache["before"] = value
        shutil.rmtree(folder)
        cache["lost"] = value
    assert raised.value.filename == str(folder)
    assert not folder.exists() and "lost" not in cache
    # the writer's check is due (as BUSY_CHECK_SECONDS later): said by the write itself
    monkeypatch.setattr(index, "BUSY_CHECK_SECONDS", 0.0)
    with cache.write():
        cache["first"] = value
        shutil.rmtree(folder)
        with pytest.raises(FileNotFoundError, match=_REMOVED) as raised:
            cache["lost"] = value
        assert raised.value.filename == str(folder)
        cache["after"] = value
    assert sorted(CacheDict(folder).keys()) == ["after"]
    assert not [path for path in folder.rglob("*") if "lost" in path.name]  # (no payload)
