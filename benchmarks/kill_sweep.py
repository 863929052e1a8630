"""Fault-injection sweep: a kill at any instant never leaves a cache entry that reads back
wrong (DESIGN "Storage": crash safety).

For each operation (a task's first call, a map's call with new items inline and in a
process pool, ``mode="force"`` on a task and a map, ``clear_job()``, ``exca clean node``,
a pipeline run, ``with_infra``; ``exca clean compact``, ``orphans``, ``clean.garbage``, a
map whose index chunks are read packed, a local ``job_array()``, a threadpool map whose
caller fails feeding it, CacheDict ``set_many`` and other ``cache_type``s: see OPS) the
sweep counts the file-system steps the operation takes in the calling thread (``open`` for
writing, ``os.open`` for writing, ``os.write``, ``os.replace``, ``os.rename``, ``os.link``,
``os.symlink``, ``os.mkdir``/``makedirs``, ``os.unlink``/``remove``/``rmdir``,
``os.truncate``/``ftruncate``, ``pickle.dump``), then, for every N, runs the operation
again in a forked child stopped at its N-th step:

- ``kill``: SIGKILL before the step (an ``os.write`` of more than
  4 KiB writes half its bytes first);
- ``int``: SIGINT sent to the process just before the step (Ctrl-C: its handler raises
  ``KeyboardInterrupt`` there, unless exca holds it back);
- ``exc``: ``OSError(EIO)`` raised by the step (a big ``os.write`` writes half first);
- ``nospc``: ``OSError(ENOSPC)`` the same way (a full disk, a quota), at the steps that
  write to a file or make one (a removal, a write to a pipe go on): the error raised must
  say more than the kernel's "No space left on device" (what was not stored, what to do).

Then a fresh forked process (the parent imported exca and touched no cache) checks: every
entry that ``status()``, ``exca list`` (``exca.ops.inspect``) or ``iter_cached`` call done
reads back right without being computed again, every value read is a right one, and a
call computes what is missing. After ``int``/``exc`` the child itself checks too (the same
process goes on after the error).

Run: ``PYTHONPATH=. python benchmarks/kill_sweep.py [--ops task_first,...] [--kinds kill]``
(about 0.3 s per run; a few minutes for all). Prints the failures and the counts.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import errno
import io
import json
import os
import pickle
import shutil
import signal
import stat
import sys
import tempfile
import threading
import time
import traceback
import typing as tp
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
# (the jobs of cluster="local" import kill_models too)
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in [str(Path(__file__).parent), os.environ.get("PYTHONPATH")] if p
)

import kill_models as km
import numpy as np

import exca
import exca.helpers
import exca.ops
import exca.ops.clean
from exca.cachedict import CacheDict
from exca.ops.cli import main as cli_main

TORN_MIN_BYTES = 4096
NO_SPACE = "No space left on device"
REMOVING = ("unlink", "remove", "rmdir")
THEN_KILL_AT = [0]  # (--then-kill: the step where a run is killed after its fault)
RUN_TIMEOUT_S = 60.0  # a run or a check taking longer hangs (each takes < 2 s)
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT
PATCHED: list[tuple[tp.Any, str]] = [
    (os, "replace"),
    (os, "rename"),
    (os, "link"),
    (os, "symlink"),
    (os, "mkdir"),
    (os, "makedirs"),
    (os, "unlink"),
    (os, "remove"),
    (os, "rmdir"),
    (os, "truncate"),
    (os, "ftruncate"),
    (os, "write"),
    (os, "open"),
    (builtins, "open"),
    (io, "open"),
    (pickle, "dump"),
]


class Injector:
    """Counts the steps of the main thread of this process; fires at step ``n`` (0: never,
    a dry run listing them)."""

    def __init__(self, n: int, kind: str, where: str = "main") -> None:
        # (where: "main", the main thread of this process; "workers", the main threads of
        # the processes forked from this one, each from the count at its fork: a process
        # pool's workers; "threads", the other threads of this one but the heartbeat's,
        # all counted together: a thread pool's)
        self.n, self.kind, self.count, self.where = n, kind, 0, where
        self.lock = threading.Lock()
        self.trace: list[str] = []
        self.fired: str | None = None
        self.pid, self.thread = os.getpid(), threading.main_thread().ident
        self.originals: dict[tuple[int, str], tp.Any] = {}
        self.active = False

    def install(self) -> None:
        for module, name in PATCHED:
            original = getattr(module, name)
            self.originals[(id(module), name)] = (module, original)
            setattr(module, name, self._wrap(name, original))
        self.active = True

    def uninstall(self) -> None:
        self.active = False
        for (_, name), (module, original) in self.originals.items():
            setattr(module, name, original)

    def _counts(self, name: str, args: tuple[tp.Any, ...], kwargs: dict[str, tp.Any]) -> bool:
        if not self.active or (os.getpid() != self.pid) != (self.where == "workers"):
            return False
        thread = threading.current_thread()
        if self.where == "threads":  # (a thread pool's: not the heartbeat's)
            if thread is threading.main_thread() or thread.name == "exca-heartbeat":
                return False
        elif thread is not threading.main_thread():
            return False
        if name == "open" and args and isinstance(args[0], (str, Path, bytes)):
            if len(args) > 1 and isinstance(args[1], int):  # os.open(path, flags)
                return bool(args[1] & WRITE_FLAGS)
            mode = args[1] if len(args) > 1 else kwargs.get("mode", "r")
            return any(c in str(mode) for c in "wax+")
        return True

    def _wrap(self, name: str, original: tp.Callable[..., tp.Any]) -> tp.Callable[..., tp.Any]:
        def step(*args: tp.Any, **kwargs: tp.Any) -> tp.Any:
            if not self._counts(name, args, kwargs):
                return original(*args, **kwargs)
            with self.lock:
                self.count += 1
                count = self.count
            what = f"{name}({_short(args[0]) if args else ''})"
            if self.n == 0 and self.where == "workers":
                with km._raw_open(km.ROOT[0].parent / "worker-trace.log", "a") as handle:
                    handle.write(f"{os.getpid()} {count} {what}\n")
            elif self.n == 0:
                self.trace.append(what)
            elif count == self.n:
                self.fired = what
                self._fire(name, original, args)
            elif count == THEN_KILL_AT[0]:  # (a second fault: a kill after an OSError)
                os.kill(os.getpid(), signal.SIGKILL)
            return original(*args, **kwargs)

        return step

    def _fire(
        self, name: str, original: tp.Callable[..., tp.Any], args: tuple[tp.Any, ...]
    ) -> None:
        if name == "write" and self.kind in ("kill", "exc", "nospc") and len(args) == 2:
            data = bytes(args[1])
            # a torn write: half of it lands (of a big write only: the kernel completes a
            # small one before a SIGKILL; a torn lock token makes the waiters wait a minute)
            if len(data) > TORN_MIN_BYTES:
                original(args[0], data[: len(data) // 2])
        if self.kind == "int" and self.where == "threads":  # (a signal goes to the main one)
            raise KeyboardInterrupt(f"injected at {name}")
        if self.kind == "kill":
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kind == "int":  # (a real SIGINT: its handler, or exca's holding it back)
            os.kill(os.getpid(), signal.SIGINT)
            return
        if self.kind == "nospc" and (name in REMOVING or _to_a_pipe(name, args)):
            self.fired = None  # (a full disk lets files go; a pipe never says ENOSPC)
            return
        if self.kind == "nospc":  # (as the kernel says it: exca must say more)
            raise OSError(errno.ENOSPC, NO_SPACE)
        raise OSError(errno.EIO, f"injected at {name}")


def _to_a_pipe(name: str, args: tuple[tp.Any, ...]) -> bool:
    """A write to a pipe or a socket (a process pool's wakeup pipe...), not to a file."""
    if name != "write" or not args or not isinstance(args[0], int):
        return False
    try:
        mode = os.fstat(args[0]).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _short(value: tp.Any) -> str:
    text = str(value)
    return text if len(text) < 70 else "..." + text[-67:]


# --- operations ---------------------------------------------------------------------------
def task(root: Path, mode: str = "cached", fail: bool = False) -> km.Task:
    return km.Task(x=3, fail=fail, infra={"folder": root, "mode": mode})


def local_task(root: Path) -> km.Task:
    return km.Task(x=3, infra={"folder": root, "cluster": "local"})


def squares(
    root: Path, cluster: str | None = None, mode: str = "cached", fail: int = -1
) -> km.Squares:
    infra: dict[str, tp.Any] = {"folder": root, "mode": mode, "cluster": cluster}
    if cluster is not None:
        infra["max_jobs"] = 2
    return km.Squares(offset=7, fail=fail, infra=infra)


FAILING_ITEM = 4


def _expect_error(call: tp.Callable[[], tp.Any], message: str) -> None:
    try:
        call()
    except ValueError as e:
        if message not in str(e):
            raise
    else:
        raise AssertionError(f"no error, expected {message!r}")


def _setup_errors(root: Path) -> None:
    _expect_error(lambda: task(root, fail=True).compute(), "cannot compute")
    _expect_error(lambda: list(squares(root, fail=FAILING_ITEM).square(ITEMS)), "cannot square")
    set_generation(root, 2)


def _run_errors_first(root: Path) -> None:
    _expect_error(lambda: task(root, fail=True).compute(), "cannot compute")
    _expect_error(lambda: list(squares(root, fail=FAILING_ITEM).square(ITEMS)), "cannot square")


def _run_retry(root: Path) -> None:
    task(root, "retry", fail=True).compute()
    list(squares(root, mode="retry", fail=FAILING_ITEM).square(ITEMS))


ITEMS = list(range(6))


def pipeline_node(root: Path) -> exca.graph.Node:
    source = km.Source(n=4, infra={"folder": root})
    return km.Total(scale=3, infra={"folder": root}).total.node(source.make.node())


def set_generation(root: Path, gen: int) -> None:
    (root / "gen.txt").write_text(str(gen))


class Op(tp.NamedTuple):
    setup: tp.Callable[[Path], None]
    run: tp.Callable[[Path], tp.Any]


def _nothing(root: Path) -> None:
    pass


def _setup_task(root: Path) -> None:
    task(root).compute()
    set_generation(root, 2)


def _setup_map(root: Path) -> None:
    list(squares(root).square(ITEMS[:2]))
    set_generation(root, 2)


def _setup_both(root: Path) -> None:
    _setup_task(root)
    _setup_map(root)


def cli(args: list[str]) -> None:
    """``exca ARGS`` (exca.ops.cli.main); its exit status and what it printed on stderr
    in the error raised when it fails."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli_main(args)
    sys.stderr.write(err.getvalue())
    if code:
        said = err.getvalue().strip()
        raise RuntimeError(f"exca {' '.join(args[:1] + args[2:3])} exited with {code}: {said}")


def _run_clean(root: Path) -> None:
    folders = [str(task(root).infra.uid_folder()), str(squares(root).infra.uid_folder())]
    cli(["clean", str(root), "node", *folders, "--yes"])


def _setup_renamed(root: Path) -> None:
    source = km.OldSource(n=4, infra={"folder": root})
    total = km.Total(scale=3, infra={"folder": root}).total.node(source.make.node())
    exca.graph.run(total)


def _run_rename(root: Path) -> None:
    cli(["rename", str(root), "kill_models.OldSource", "kill_models.Source", "--yes"])


def _setup_versions(root: Path) -> None:
    task(root).compute()
    km.Task(x=3, infra={"folder": root, "version": "2"}).compute()


def _run_clean_versions(root: Path) -> None:
    cli(["clean", str(root), "versions", "--yes"])


def check_versions(root: Path, problems: list[str]) -> None:
    check_task(root, problems)
    newer = km.Task(x=3, infra={"folder": root, "version": "2"})
    status = newer.infra.status()
    before = len(calls(root))
    check_value(newer.compute(), [task_value(1)])
    if len(calls(root)) > before and status == "completed":
        problems.append("version 2: status() said completed, yet the call computed again")


def forced_pipeline(root: Path, mode: str = "cached") -> exca.graph.Node:
    source = km.GenSource(infra={"folder": root, "mode": mode})
    return km.Total(scale=5, infra={"folder": root}).total.node(source.make.node())


def _setup_forced_pipeline(root: Path) -> None:
    exca.graph.run(forced_pipeline(root))
    set_generation(root, 2)


def check_forced_pipeline(root: Path, problems: list[str]) -> None:
    """The total read is computed from the source read, or a plan says it is stale."""
    node = forced_pipeline(root)
    source = km.GenSource(infra={"folder": root})
    source_node = source.make.node()
    gen = source.make()[0]
    plan = exca.graph.plan(node, source_node)
    statuses = {entry.uid: entry.status for entry in plan.entries}
    total = node.result()["total"]
    if total != 5 * 4 * gen and statuses.get(node.uid) != "stale":
        problems.append(
            f"total {total} computed from another source than {[gen] * 4}, yet the plan "
            f"says {statuses.get(node.uid)!r}"
        )


def _run_pipeline(root: Path) -> None:
    exca.graph.run(pipeline_node(root))


# --- the operations added after the first sweep: compaction, cleanings, packed indexes,
# job arrays, a pool stopped by its caller's error, CacheDict writes of other formats
def in_child(do: tp.Callable[[], tp.Any]) -> None:
    """do() in a forked process that then ends: a writer session of a dead process."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            do()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise RuntimeError(f"a setup child failed ({os.waitstatus_to_exitcode(status)})")


def age(root: Path, hours: float = 2.0) -> None:
    """Every file of the cache written ``hours`` ago (what orphans and compact wait for)."""
    past = time.time() - hours * 3600
    for path in root.rglob("*"):
        if path.name not in ("calls.log", "gen.txt") and not path.is_symlink():
            os.utime(path, (past, past))


DELETED = "1"  # (deleted by a writer of the compacted map: it must stay deleted)


def _setup_compact(root: Path) -> None:
    in_child(lambda: list(squares(root).square(ITEMS[:3])))
    in_child(lambda: list(squares(root).square(ITEMS[3:])))
    folder = squares(root).infra.uid_folder()

    def delete() -> None:
        cd: CacheDict[tp.Any] = CacheDict(folder)
        with cd.write():
            del cd[DELETED]

    in_child(delete)
    set_generation(root, 2)
    in_child(lambda: list(squares(root, mode="force").square([2])))
    age(root)


def _run_compact(root: Path) -> None:
    cli(["clean", str(root), "compact", "--yes"])


def check_compact(root: Path, problems: list[str]) -> None:
    """Every entry of the merged files as it was: the deleted one gone, the forced one new."""
    folder = squares(root).infra.uid_folder()
    cd: CacheDict[tp.Any] = CacheDict(folder)
    keys = set(cd.keys())
    expected = {str(x) for x in ITEMS} - {DELETED}
    if keys - {DELETED} != expected:
        problems.append(f"compact: keys {sorted(keys)}, expected {sorted(expected)}")
    # (the deleted item computed again is of generation 2: one of 1 came back)
    for key in sorted(keys & {DELETED, "2"}):
        if not same(cd[key], km.item_value(int(key), 7, 2)):
            problems.append(f"compact: item {key} reads a value deleted before the merge")
    check_map(root, problems)


def _setup_garbage(root: Path) -> None:
    _run_pipeline(root)
    _setup_both(root)


def _run_garbage(root: Path) -> None:
    plan = exca.ops.clean.garbage(root, pipeline_node(root))
    plan.execute()
    if plan.failed:
        raise RuntimeError(f"clean.garbage failed to remove {plan.failed}")


def check_garbage(root: Path, problems: list[str]) -> None:
    """The pipeline's nodes are kept whole (never computed again); the others read right."""
    before = len(calls(root))
    check_pipeline(root, problems)
    again = [c for c in calls(root)[before:] if c.startswith(("total", "source"))]
    if again:
        problems.append(f"garbage: kept nodes computed again: {again}")
    check_task(root, problems)
    check_map(root, problems)


def killed_at_index(do: tp.Callable[[], tp.Any]) -> tp.Callable[[], tp.Any]:
    """``do`` killed as it opens an index file: its payloads and claims are left behind."""

    def killed() -> None:
        original = os.open

        def opening(path: tp.Any, flags: int, *args: tp.Any, **kwargs: tp.Any) -> int:
            if str(path).endswith("-info.jsonl") and flags & WRITE_FLAGS:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(path, flags, *args, **kwargs)

        os.open = opening  # type: ignore[assignment]
        do()

    return killed


def _setup_orphans(root: Path) -> None:
    """Payloads no entry reads (of a task and of map items whose writers were killed),
    claims of dead owners, among entries written by finished writers and forced ones."""
    _setup_both(root)
    in_child(lambda: task(root, "force").compute())
    in_child(lambda: list(squares(root, mode="force").square(ITEMS[:2])))
    in_child(lambda: list(squares(root).square(ITEMS)))
    for do in (
        lambda: km.Task(x=9, infra={"folder": root}).compute(),
        lambda: list(squares(root).square([6, 7])),
    ):
        try:
            in_child(killed_at_index(do))
        except RuntimeError:
            pass  # (killed, as meant)
    age(root)


def _run_orphans(root: Path) -> None:
    cli(["clean", str(root), "orphans", "--yes"])


def check_no_recompute(root: Path, problems: list[str]) -> None:
    """What was cached before the operation reads back without being computed again."""
    before = len(calls(root))
    check_task(root, problems)
    check_map(root, problems)
    again = calls(root)[before:]
    if again:
        problems.append(f"computed again, though nothing was to be removed: {again}")


def packed(do: tp.Callable[[Path], tp.Any]) -> tp.Callable[[Path], tp.Any]:
    """``do`` with every index chunk read packed (see exca/storage/index.py PACKED_FROM)."""

    def packing(root: Path, *args: tp.Any) -> tp.Any:
        from exca.storage import index

        index.PACKED_FROM = 0
        return do(root, *args)

    return packing


def _run_map_packed(root: Path) -> None:
    list(squares(root).square(ITEMS))
    list(squares(root, mode="force").square(ITEMS[:3]))


ARRAY_XS = [3, 4, 5]


def _run_job_array(root: Path) -> None:
    with local_task(root).infra.job_array() as tasks:
        tasks.extend(km.Task(x=x, infra={"folder": root, "cluster": "local"}) for x in ARRAY_XS)


def check_job_array(root: Path, problems: list[str]) -> None:
    for x in ARRAY_XS:
        obj = km.Task(x=x, infra={"folder": root})
        status = obj.infra.status()
        before = len(calls(root))
        check_value(obj.compute(), [km.task_value(x, 1)])
        if len(calls(root)) > before and status == "completed":
            problems.append(f"task x={x}: status() said completed, yet computed again")


def _run_pool_stopped(root: Path) -> None:
    """A threadpool map whose caller fails feeding its pool (its second submission)."""
    import concurrent.futures

    executor = concurrent.futures.ThreadPoolExecutor
    submit, submitted = executor.submit, [0]

    def failing(self: tp.Any, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        submitted[0] += 1
        if submitted[0] == 2:
            raise OSError(errno.ENOSPC, "No space left on device (injected in submit)")
        return submit(self, *args, **kwargs)

    executor.submit = failing  # type: ignore[method-assign]
    try:
        list(squares(root, "threadpool").square(ITEMS))
    except OSError as error:
        if "injected in submit" not in str(error):
            raise
    finally:
        executor.submit = submit  # type: ignore[method-assign]


def cd_values(kind: str) -> dict[str, tp.Any]:
    """The values written by the CacheDict operations, per cache_type (None: chosen)."""
    if kind in ("NumpyArray", "MemmapArray"):
        return {f"a{i}": np.arange(1000, dtype=np.float32) * i for i in range(4)}
    if kind == "Json":
        return {f"j{i}": {"i": i, "name": f"n{i}", "xs": [1.5, i]} for i in range(4)}
    if kind == "AutoPickle":
        return {f"p{i}": {"i": i, "arr": np.full(3000, i, dtype=np.int64)} for i in range(4)}
    return {
        **{f"a{i}": np.full(60, i, dtype=np.int64) for i in range(4)},
        **{f"d{i}": {"i": i, "text": "x" * 5000 * (i % 2)} for i in range(4)},
    }


CD_TYPES = ["NumpyArray", "Json", "AutoPickle"]


def cd_of(root: Path, kind: str | None) -> CacheDict[tp.Any]:
    return CacheDict(root / f"cd-{kind}", cache_type=kind)


def _setup_set_many(root: Path) -> None:
    cd = cd_of(root, None)
    with cd.write():
        cd.set_many(list(cd_values("default").items())[:2])


def _run_set_many(root: Path) -> None:
    cd = cd_of(root, None)
    with cd.write():
        cd.set_many(list(cd_values("default").items())[2:])


def _run_cd_types(root: Path) -> None:
    for kind in CD_TYPES:
        cd = cd_of(root, kind)
        with cd.write():
            for key, value in cd_values(kind).items():
                cd[key] = value


def check_cd(root: Path, problems: list[str], kinds: list[str | None], kept: int = 0) -> None:
    """Each entry readable reads its value, in a new CacheDict and in ``exca``'s view of
    it; the first ``kept`` ones (written before the operation) are there."""
    for kind in kinds:
        values = cd_values(kind or "default")
        cd = cd_of(root, kind)
        keys = list(cd.keys())
        for key in keys:
            if key not in values:
                problems.append(f"{kind}: an unknown key {key!r}")
            elif not same(cd[key], values[key]):
                problems.append(f"{kind}: {key!r} reads {_short(repr(cd[key]))}")
        lost = [k for k in list(values)[:kept] if k not in keys]
        if lost:
            problems.append(f"{kind}: entries written before the operation lost: {lost}")
        with cd.write():  # (what is missing can be written)
            cd.set_many((k, v) for k, v in values.items() if k not in cd)
        again = cd_of(root, kind)
        if set(again.keys()) != set(values):
            problems.append(f"{kind}: keys after writing the missing: {sorted(again.keys())}")


OPS: dict[str, Op] = {
    "task_first": Op(_nothing, lambda r: check_value(task(r).compute(), [task_value(1)])),
    "map_inline": Op(_setup_map, lambda r: list(squares(r).square(ITEMS))),
    "map_pool": Op(_setup_map, lambda r: list(squares(r, "processpool").square(ITEMS))),
    "map_threads": Op(_setup_map, lambda r: list(squares(r, "threadpool").square(ITEMS))),
    "task_local": Op(_nothing, lambda r: check_value(local_task(r).compute(), [task_value(1)])),
    "task_force": Op(_setup_task, lambda r: task(r, "force").compute()),
    "map_force": Op(_setup_map, lambda r: list(squares(r, mode="force").square(ITEMS[:3]))),
    "clear_job": Op(_setup_task, lambda r: task(r).infra.clear_job()),
    "clean_node": Op(_setup_both, _run_clean),
    "pipeline": Op(_nothing, _run_pipeline),
    "with_infra": Op(_nothing, lambda r: km.with_infra_function(r)(rows=2, cols=3)),
    "errors_first": Op(_nothing, lambda r: _run_errors_first(r)),
    "retry": Op(_setup_errors, _run_retry),
    "pipeline_force": Op(
        _setup_forced_pipeline, lambda r: exca.graph.run(forced_pipeline(r, "force"))
    ),
    "rename": Op(_setup_renamed, _run_rename),
    "clean_versions": Op(_setup_versions, _run_clean_versions),
    "compact": Op(_setup_compact, _run_compact),
    "clean_garbage": Op(_setup_garbage, _run_garbage),
    "clean_orphans": Op(_setup_orphans, _run_orphans),
    "map_packed": Op(packed(_setup_map), packed(_run_map_packed)),
    "job_array": Op(_nothing, _run_job_array),
    "pool_stopped": Op(_setup_map, _run_pool_stopped),
    "set_many": Op(_setup_set_many, _run_set_many),
    "cd_types": Op(_nothing, _run_cd_types),
}


# --- checks ---------------------------------------------------------------------------------
def task_value(gen: int) -> dict[str, tp.Any]:
    return km.task_value(3, gen)


def same(a: tp.Any, b: tp.Any) -> bool:
    if isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and a.shape == b.shape and bool(np.array_equal(a, b))
    if isinstance(b, dict):
        return isinstance(a, dict) and set(a) == set(b) and all(same(a[k], b[k]) for k in b)
    return type(a) is type(b) and a == b


def check_value(value: tp.Any, allowed: list[tp.Any]) -> None:
    if not any(same(value, a) for a in allowed):
        raise AssertionError(f"wrong value: {_short(repr(value))}")


def calls(root: Path) -> list[str]:
    path = root / "calls.log"
    return path.read_text().splitlines() if path.exists() else []


def check_task(root: Path, problems: list[str]) -> None:
    obj = task(root)
    status = obj.infra.status()
    listed: dict[tp.Any, str] = {i.folder: i.status for i in exca.ops.inspect(root)}
    iterated = [c.x for c in obj.infra.iter_cached()]
    before = len(calls(root))
    check_value(obj.compute(), [task_value(1), task_value(2)])
    recomputed = len(calls(root)) > before
    folder = obj.infra.uid_folder()
    if recomputed and status == "completed":
        problems.append("task: status() said completed, yet the call computed again")
    if recomputed and listed.get(folder) == "success":
        problems.append("task: exca list said success, yet the call computed again")
    if recomputed and iterated:
        problems.append("task: iter_cached yielded it, yet the call computed again")
    if obj.infra.status() != "completed":
        problems.append(f"task: status {obj.infra.status()!r} after a call")


def check_map(root: Path, problems: list[str], items: list[int] = ITEMS) -> None:
    obj = squares(root)
    folder = obj.infra.uid_folder()
    listed: dict[tp.Any, tp.Any] = {i.folder: i for i in exca.ops.inspect(root)}
    cached: set[str] = set()
    if folder is not None and folder.exists():
        cd: CacheDict[tp.Any] = CacheDict(folder)
        for key in list(cd.keys()):
            x = int(key)
            check_value(cd[key], [km.item_value(x, 7, g) for g in (1, 2)])
            cached.add(key)
    info = listed.get(folder)
    if info is not None and info.entries != len(cached):
        problems.append(f"map: exca list says {info.entries} entries, {len(cached)} read")
    before = len(calls(root))
    values = list(obj.square(items))
    for x, value in zip(items, values):
        check_value(value, [km.item_value(x, 7, g) for g in (1, 2)])
    again = [line for line in calls(root)[before:] if line.startswith("item")]
    for line in again:
        key = line.split("x=")[1].split()[0]
        if key in cached:
            problems.append(f"map: item {key} was readable in the cache, yet computed again")


def check_pipeline(root: Path, problems: list[str]) -> None:
    node = pipeline_node(root)
    status = node.status()
    listed: dict[tp.Any, str] = {i.folder: i.status for i in exca.ops.inspect(root)}
    before = len(calls(root))
    check_value(node.result(), [km.total_value(3, 4)])
    recomputed = [c for c in calls(root)[before:] if c.startswith("total")]
    if recomputed and (status == "completed" or listed.get(node.folder) == "success"):
        problems.append(f"pipeline: total said {status}/{listed.get(node.folder)}, recomputed")
    source = km.Source(n=4, infra={"folder": root})
    check_value(source.make(), [list(range(4))])


def check_with_infra(root: Path, problems: list[str]) -> None:
    listed: dict[tp.Any, str] = {i.folder: i.status for i in exca.ops.inspect(root)}
    before = len(calls(root))
    check_value(km.with_infra_function(root)(rows=2, cols=3), [km.noise_value(2, 3)])
    recomputed = len(calls(root)) > before
    if recomputed and "success" in listed.values():
        problems.append("with_infra: exca list said success, yet the call computed again")


def check_errors(root: Path, problems: list[str]) -> None:
    """Generation 1: a cached error or a computation raising it again; 2 (retry): values."""
    gen = km.generation()
    obj = task(root, fail=True)
    status = obj.infra.status()
    before = len(calls(root))
    if gen == 1:
        _expect_error(obj.compute, "cannot compute")
    else:
        outcome: list[tp.Any] = []
        try:
            outcome.append(obj.compute())
        except ValueError as e:  # (its cached error, left by a retry killed before)
            if "cannot compute" not in str(e):
                raise
        if outcome:
            check_value(outcome[0], [task_value(2)])
    recomputed = len(calls(root)) > before
    if recomputed and status in ("completed", "failed"):
        problems.append(f"task: status() said {status}, yet the call computed again")
    mapped = squares(root, fail=FAILING_ITEM)
    folder = mapped.infra.uid_folder()
    readable: set[int] = set()
    if folder is not None and folder.exists():
        cd: CacheDict[tp.Any] = CacheDict(folder)
        for key in list(cd.keys()):
            try:
                value = cd[key]
            except ValueError as e:  # (a cached error)
                if int(key) != FAILING_ITEM or "cannot square" not in str(e):
                    raise
            else:
                if type(value).__name__ == "CachedError":  # (how a CacheDict gives one)
                    if int(key) != FAILING_ITEM or "cannot square" not in repr(value):
                        raise AssertionError(f"wrong cached error: {value!r}")
                else:
                    check_value(value, [km.item_value(int(key), 7, g) for g in (1, 2)])
            readable.add(int(key))
    before = len(calls(root))
    try:
        values = list(mapped.square(ITEMS))
    except ValueError as e:
        if "cannot square" not in str(e):
            raise
    else:
        for x, value in zip(ITEMS, values):
            check_value(value, [km.item_value(x, 7, g) for g in (1, 2)])
    for line in calls(root)[before:]:
        x = int(line.split("x=")[1].split()[0])
        if x in readable:
            problems.append(f"map: item {x} was readable in the cache, yet computed again")


CHECKS: dict[str, tp.Callable[[Path, list[str]], None]] = {
    "errors_first": check_errors,
    "retry": check_errors,
    "task_first": check_task,
    "map_inline": check_map,
    "map_pool": check_map,
    "map_threads": check_map,
    "task_local": check_task,
    "task_force": check_task,
    "map_force": check_map,
    "clear_job": check_task,
    "clean_node": lambda r, p: (check_task(r, p), check_map(r, p)),  # type: ignore
    "pipeline": check_pipeline,
    "rename": check_pipeline,
    "pipeline_force": check_forced_pipeline,
    "clean_versions": check_versions,
    "with_infra": check_with_infra,
    "compact": check_compact,
    "clean_garbage": check_garbage,
    "clean_orphans": check_no_recompute,
    "map_packed": packed(check_map),
    "job_array": check_job_array,
    "pool_stopped": check_map,
    "set_many": lambda r, p: check_cd(r, p, [None], kept=2),
    "cd_types": lambda r, p: check_cd(r, p, list(CD_TYPES)),
}


def run_check(op: str, root: Path) -> list[str]:
    problems: list[str] = []
    try:
        CHECKS[op](root, problems)
    except BaseException as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        problems.append(
            f"check raised {type(e).__name__}: {_short(str(e))} ({where.filename}:{where.lineno})"
        )
    return problems


# --- processes ----------------------------------------------------------------------------
def forked(target: tp.Callable[[], dict[str, tp.Any]], log: Path) -> dict[str, tp.Any]:
    """target() in a forked child; its return value (json) or how it died."""
    out = log.with_suffix(".json")
    pid = os.fork()
    if pid == 0:
        os.setpgid(0, 0)  # (its own group: a hung run is stopped with its pool's workers)
        code = 0
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            result = target()
            out.write_text(json.dumps(result))
        except BaseException:
            traceback.print_exc()
            code = 3
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {"hung": RUN_TIMEOUT_S}
        time.sleep(0.01)
    if out.exists():
        return json.loads(out.read_text())
    return {"died": os.waitstatus_to_exitcode(status)}


def clean_orphans(root: Path) -> list[str]:
    """What a kill left, two hours later, cleaned by ``exca clean orphans --yes``."""
    past = time.time() - 7200
    for path in root.rglob("*"):
        if path.name not in ("calls.log", "gen.txt") and not path.is_symlink():
            os.utime(path, (past, past))
    try:
        code = cli_main(["clean", str(root), "orphans", "--yes"])
    except BaseException as e:
        return [f"exca clean orphans raised {type(e).__name__}: {_short(str(e))}"]
    return [f"exca clean orphans exited with {code}"] if code else []


def says_space(error: BaseException) -> bool:
    """Whether an error (its message, notes and causes) says more of a full disk than the
    kernel's "No space left on device": what was not stored, what to do."""
    texts: list[str] = []
    seen: BaseException | None = error
    while seen is not None and len(texts) < 20:
        texts += [str(seen), *getattr(seen, "__notes__", ())]
        seen = seen.__cause__ or seen.__context__
    return "space" in " ".join(texts).replace(NO_SPACE, "").lower()


def one_run(
    op: str,
    n: int,
    kind: str,
    root: Path,
    where: str = "main",
    orphans: bool = False,
    twice: bool = False,
) -> dict[str, tp.Any]:
    def child(setup: bool = True) -> dict[str, tp.Any]:
        km.ROOT[:] = [root]
        os.environ["KILL_SWEEP_ROOT"] = str(root)
        if setup:
            OPS[op].setup(root)
        injector = Injector(n, kind, where)
        injector.install()
        error, said_space = None, False
        try:
            OPS[op].run(root)
        except BaseException as e:
            error = f"{type(e).__name__}: {_short(str(e))}"
            said_space = says_space(e)
        finally:
            injector.uninstall()
        same_process = run_check(op, root) if error is not None else []
        return {
            "count": injector.count,
            "trace": injector.trace,
            "fired": injector.fired,
            "error": error,
            "said_space": said_space,
            "same_process": same_process,
        }

    def checker() -> dict[str, tp.Any]:
        km.ROOT[:] = [root]
        os.environ["KILL_SWEEP_ROOT"] = str(root)
        problems = clean_orphans(root) if orphans else []
        return {"problems": problems + run_check(op, root)}

    ran = forked(child, root.parent / "child.log")
    if twice:  # (the same operation again, on what the first left, stopped at its N-th step)
        again = forked(lambda: child(setup=False), root.parent / "child2.log")
        ran["same_process"] = ran.get("same_process", []) + again.get("same_process", [])
        if "hung" in again:
            ran["hung"] = again["hung"]
    checked = forked(checker, root.parent / "checker.log")
    return {"run": ran, "check": checked}


def fresh_root(base: Path, name: str) -> Path:
    where = base / name
    shutil.rmtree(where, ignore_errors=True)
    (where / "cache").mkdir(parents=True)
    return where / "cache"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", default=",".join(OPS))
    parser.add_argument("--kinds", default="kill,int,exc")
    parser.add_argument("--only", type=int, default=0, help="this step only (with --ops one)")
    parser.add_argument(
        "--twice", action="store_true", help="run the operation again, stopped at the same step"
    )
    parser.add_argument(
        "--then-kill", type=int, default=0, help="kill each run at this step too, after N"
    )
    parser.add_argument("--keep", action="store_true", help="keep the folders of every run")
    parser.add_argument("--trace", action="store_true", help="print the steps of each op")
    parser.add_argument(
        "--orphans",
        action="store_true",
        help="check after an `exca clean orphans --yes` of what the run left, aged 2 hours",
    )
    parser.add_argument(
        "--where",
        default="main",
        choices=["main", "workers", "threads"],
        help="inject in the main thread, a process pool's workers or the other threads",
    )
    args = parser.parse_args(argv)
    THEN_KILL_AT[0] = args.then_kill
    base = Path(tempfile.mkdtemp(prefix="kill_sweep-"))
    failures = 0
    total = 0
    start = time.time()
    for op in args.ops.split(","):
        dry_root = fresh_root(base, f"{op}-dry")
        dry = one_run(op, 0, "kill", dry_root, args.where)
        if "count" not in dry["run"] or dry["check"].get("problems"):
            print(f"{op}: dry run failed: {dry}")
            failures += 1
            continue
        steps = dry["run"]["count"]
        if args.where == "workers":  # (the steps of the busiest worker)
            lines = (dry_root.parent / "worker-trace.log").read_text().splitlines()
            dry["run"]["trace"] = [line.split(" ", 2)[2] for line in lines]
            steps = max(int(line.split()[1]) for line in lines)
        if args.trace:
            for i, what in enumerate(dry["run"]["trace"], 1):
                print(f"  {op} {i:3d} {what}")
        counted = 0
        outcomes: dict[str, int] = {}  # (how the runs ended: killed, an error, ok)
        swallowed: list[str] = []  # (the steps whose OSError the operation went past)
        for n in [args.only] if args.only else range(1, steps + 1):
            for kind in args.kinds.split(","):
                root = fresh_root(base, f"{op}-{n}-{kind}")
                result = one_run(op, n, kind, root, args.where, args.orphans, args.twice)
                counted += 1
                run, check = result["run"], result["check"]
                outcome = "hung" if "hung" in run else "killed" if "died" in run else "ok"
                if run.get("error"):
                    outcome = run["error"].split(":")[0]
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                if kind == "exc" and outcome == "ok" and run.get("fired"):
                    swallowed.append(f"{n}:{run['fired']}")
                problems = list(check.get("problems", [f"checker died: {check}"]))
                if "hung" in run:
                    problems.append(f"the operation hung ({RUN_TIMEOUT_S:.0f} s)")
                problems += [f"(same process) {p}" for p in run.get("same_process", [])]
                if kind == "nospc" and run.get("error") and not run.get("said_space"):
                    problems.append(f"a full disk said as bare as the kernel: {run['error']}")
                if (
                    kind == "kill"
                    and args.where != "workers"
                    and "died" in run
                    and run["died"] != -signal.SIGKILL
                ):
                    problems.append(f"child ended with {run['died']}")
                if problems:
                    failures += 1
                    fired = run.get("fired") or (dry["run"]["trace"][n - 1] + "?")
                    print(f"FAIL {op} n={n} {kind} at {fired}: {problems} [{root}]")
                elif not args.keep:
                    shutil.rmtree(root.parent, ignore_errors=True)
        total += counted
        print(f"{op}: {steps} steps x {args.kinds}: {counted} runs {outcomes}", flush=True)
        if swallowed and args.trace:
            print(f"  {op}: OSError gone past at {swallowed}")
    print(f"{total} runs, {failures} failing, {time.time() - start:.0f} s (kept in {base})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
