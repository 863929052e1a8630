"""Nodes: immutable descriptions of one cached computation (a task, or a map over items).

A node knows what to call, where its results live (its folder and CacheDict), how its
missing work should run (``Execution``), and which nodes must be done before it
(``inputs`` feed it values; ``chained`` only order it). Its identity is its folder:
``<root>/<step>/<config uid>[/inputs-<digest>]``; equal identity means the same node.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import hashlib
import re
import typing as tp
from pathlib import Path

from ..storage.cachedict import CacheDict, keeping_files
from ..storage.modules import imported
from ..uidformat import is_tensor

# True while a call (not a plan, not status()) decides to reuse cached results: a folder
# that lost its yaml files gets them back (see BaseInfra._restore_files)
RESTORES_FILES: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "exca_restores_files", default=False
)


# False while a read-only command builds nodes (exca plan/explain/check) or read-only
# targets are read: a config found under its legacy (v2) name is then reported, not
# renamed (defined here, though infra reads it: the graph layer imports no infra module)
LEGACY_RENAMES: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "exca_legacy_renames", default=True
)
# True while a call of read-only targets runs (see reading_only)
_READING_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "exca_reading_only", default=False
)


def reads_only() -> bool:
    """Whether a call of read-only targets runs (it reuses results, writing nothing)."""
    return _READING_ONLY.get()


@contextlib.contextmanager
def restoring_files() -> tp.Iterator[None]:
    token = RESTORES_FILES.set(not _READING_ONLY.get())
    try:
        yield
    finally:
        RESTORES_FILES.reset(token)


@contextlib.contextmanager
def reading_only(targets: tp.Sequence[Node]) -> tp.Iterator[None]:
    """Targets all in mode read-only: their upstream nodes, in their own modes, are read
    too (deciding and feeding them), and as the targets' own reads, those write nothing:
    they free no file of an ended writer (reclaim.py), write back no yaml file (see
    BaseInfra._restore_files) and rename no cache from its legacy (v2) name. What an
    upstream node must compute, if any, is written as ever."""
    if not targets or not all(n.mode == "read-only" for n in targets):
        yield
        return
    token = _READING_ONLY.set(True)
    restores = RESTORES_FILES.set(False)
    renames = LEGACY_RENAMES.set(False)  # (a legacy-named upstream cache: see decisions)
    try:
        with keeping_files():
            yield
    finally:
        LEGACY_RENAMES.reset(renames)
        RESTORES_FILES.reset(restores)
        _READING_ONLY.reset(token)


TASK_KEY = "result"  # the CacheDict key of a task node's result
CLAIM_JOB_ID = "#claim#"  # the job id of a job following another worker's computation
# a call with inputs: its node is <config folder>/inputs-<digest of the inputs' uids>
INPUTS_PREFIX = "inputs-"
Mode = tp.Literal["cached", "retry", "force", "read-only"]
INLINE_CLUSTERS = (None, "inline")
POOL_CLUSTERS = ("threadpool", "processpool")
SUBMITIT_CLUSTERS = ("local", "debug", "slurm", "auto")


def single_item_here(cluster: str | None) -> bool:
    """Whether a pool's map computes a single missing item here, in the caller's thread
    (a pool for it alone costs more than the item): a thread pool's. Not a process
    pool's: it is chosen to keep the caller alive when an item crashes (a segfault, an
    out-of-memory kill; once such an item was the only one missing it killed the caller;
    a pool process costs ~20 ms more), unless this process cannot start one (a daemonic
    process: a multiprocessing.Pool or DataLoader worker, calling it item by item)."""
    if cluster == "threadpool":
        return True
    if cluster != "processpool":
        return False
    import multiprocessing

    return bool(multiprocessing.current_process().daemon)


_SNAPSHOT_NAME = re.compile(r"\d{4}-\d\d-\d\d-[0-9a-f]{6}")


def is_new_snapshot(folder: tp.Any) -> bool:
    """Whether a workdir folder is one made for a submission (``code/<date>-<random>``)."""
    path = Path(folder)
    return path.parent.name == "code" and bool(_SNAPSHOT_NAME.fullmatch(path.name))


# (in a node's __dict__: it and its upstream passed; "read": in a plan or status(), which
# record nothing: a call reusing them checks again, once, see BaseInfra._check_defaults;
# "reused": by a read-only call, which records nothing either)
_DEFAULTS_OK = "_defaults_ok"


def _passed(passed: bool | str | None, mark: bool | str) -> bool:
    """Whether a node's defaults check that passed (``passed``) is enough for a check
    that marks ``mark``: a plan takes any, a read-only call a call's (a plan's told
    nothing: changed sub-configs' versions are said by the call), a reusing call its own."""
    return passed is True or (bool(passed) and mark == "read") or passed == mark


DEFAULT_MAX_JOBS = 128  # a map's default bound on its jobs (for clusters: executors.max_jobs)


@dataclasses.dataclass(frozen=True)
class Execution:
    """How and where missing work of a node runs (never part of any uid)."""

    cluster: str | None = None
    params: tuple[tuple[str, tp.Any], ...] = ()  # submitit parameters (name, value)
    logs: str | None = None  # submitit log folder, with %j
    logs_setting: str | None = None  # (the infra's logs as given, {folder} not filled in)
    max_jobs: int | None = None  # maps: at most this many jobs/chunks (see executors.max_jobs)
    min_items_per_job: int = 1
    conda_env: str | None = None
    max_pickle_size_gb: float | None = None
    workdir: tp.Any = None  # an object with an ``activate()`` context manager
    job_name: str | None = None
    # why no job can be sent with these logs (an environment variable not set): raised
    # before anything of a run is submitted, listed by its plan
    logs_problem: str | None = None

    @property
    def group_key(self) -> str:
        """Nodes whose missing work can share one array have equal group keys."""
        workdir = self.workdir
        if workdir is not None:  # (one snapshot per array: the first node's new folder)
            folder = getattr(workdir, "folder", None)
            workdir = (repr(workdir.model_copy(update={"folder": None})), None)
            if folder is not None and not is_new_snapshot(folder):
                workdir = (workdir[0], str(folder))  # a folder the user chose
        # (the logs setting as given: nodes of the default, or of one naming {folder}, share
        # an array, in the first node's folder; one set otherwise keeps its own folder)
        settings = (self.cluster, self.params, self.conda_env, self.max_pickle_size_gb)
        return repr((*settings, workdir, self.logs_setting))

    def runs_like(self, other: Execution) -> bool:
        """Same settings, the new snapshot folder of each instance's workdir aside (two
        instances of one config each get one; an array uses the first node's)."""
        if self == other:
            return True
        bare = dataclasses.replace(self, workdir=None)
        return (
            bare == dataclasses.replace(other, workdir=None) and self.group_key == other.group_key
        )

    def describe(self) -> str:
        """Where work would run, e.g. ``slurm(cpus_per_task=2, slurm_partition=debug)``."""
        where = self.cluster or "inline"
        defaults = {"nodes": 1, "tasks_per_node": 1, "slurm_use_srun": False}
        shown = [
            f"{k}={v}"
            for k, v in self.params
            if v is not None and k != "name" and defaults.get(k, ...) != v
        ]
        return f"{where}({', '.join(shown)})" if shown and where not in ("inline",) else where


T = tp.TypeVar("T")


class memoized(tp.Generic[T]):
    """``functools.cached_property`` without its lock (Python 3.11 takes one per first
    access, ~1 µs: a 10,000-node plan makes 24,000 of them). Nodes and groups are
    immutable: two threads computing a value at once compute the same value."""

    def __init__(self, func: tp.Callable[[tp.Any], T]) -> None:
        self.func = func
        self.name = func.__name__
        self.__doc__ = func.__doc__

    @tp.overload
    def __get__(self, obj: None, owner: type | None = None) -> memoized[T]: ...

    @tp.overload
    def __get__(self, obj: object, owner: type | None = None) -> T: ...

    def __get__(self, obj: object | None, owner: type | None = None) -> T | memoized[T]:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.func(obj)
        return value


@dataclasses.dataclass(frozen=True)
class Value:
    """A concrete input value of a task node, with the uid that identifies it."""

    value: tp.Any
    uid: str

    @classmethod
    def of(cls, value: tp.Any, snapshot: bool = False) -> Value:
        """Wrap a value; its uid comes from the uid format (arrays are hashed: md5 of bytes).
        ``snapshot``: keep a copy of its lists, dicts, sets and arrays (a node built now and
        run later: the caller may change them meanwhile, e.g. a list reused in a loop)."""
        from ..uidformat import to_uid

        if snapshot:
            value = _snapshot(value)

        try:
            # ("λ", "", [] are different inputs; {"a.b": 1, "a": {"b": 2}} is refused: a
            # ConfDict's merge, keeping the last, gave {"a.b": 5, ...} the same uid)
            uid = to_uid(value, empty="empty", merge=False)
            keys = _typed_keys(value, "")
        except TypeError:
            if _holds_node(value):  # a node nested deeper than a list or dict of nodes
                raise TypeError(
                    f"A node inside {type(value).__name__} value {value!r:.80} is not an "
                    "input: pass a node, or a list or dict whose items are nodes or values"
                ) from None
            if type(value).__name__ in ("BoundTask", "BoundMap") and hasattr(value, "node"):
                hint = "to pass its output, pass its node: obj.method.node()"
            elif hasattr(type(value), "model_fields"):  # (a pydantic model: a config)
                hint = (
                    "a config is given as a field of the config of the method taking it (its "
                    "values then count in that config's uid), not as an input; or pass the "
                    "node of one of its methods (obj.method.node()), or its values "
                    "(obj.model_dump())"
                )
            else:  # (not the str() bypass: an object's text often holds its memory address)
                hint = (
                    "pass a node, or a value of a type the uid format supports (str, number, "
                    "bool, None, Path, list, dict, numpy array): e.g. a path or a name "
                    "instead of an object"
                )
            raise TypeError(
                f"Cannot use {type(value).__name__} value {value!r:.80} as a node input: "
                f"its type has no uid; {hint}"
            ) from None
        if keys:  # the format renders keys as text ({1: x} reads as {"1": x}), arrays
            # without their dtype: these count in the digest (inputs without such keys or
            # arrays keep the format's uid)
            salted = hashlib.md5(f"{uid[-8:]}|{'|'.join(sorted(keys))}".encode()).hexdigest()
            uid = uid[:-8] + salted[:8]
        return cls(value, uid)


def _typed_keys(value: tp.Any, path: str) -> list[str]:
    """What the uid format does not tell apart, at any depth: ``<path>/<key>:<type>`` of
    every dict key that is not a str, or holds a "." (the format writes a chain of
    single-key dicts as a dotted key: {"a.b": 1} read as {"a": {"b": 1}}), and
    ``<path>:dtype=<dtype>`` of every array that is not of float64 (the format hashes an
    array's bytes and shape: a bool mask and uint8 indices [1, 0, 1] shared a uid, and a
    result; float64 arrays, the common case, keep the format's uid)."""
    kind = type(value)
    if kind is str or kind is int or kind is float:
        return []
    out: list[str] = []
    if _is_array(value):  # (not numpy scalars: np.int64(3) is 3, as in a config's uid)
        # (a tensor's dtype is "torch.int64": the format reads tensors as numpy arrays, and
        # a numpy '>f8' is named float64)
        dtype = getattr(value.dtype, "name", None) or str(value.dtype).removeprefix("torch.")
        if dtype != "float64":
            out.append(f"{path}:dtype={dtype}")
    elif isinstance(value, dict):
        for key, sub in value.items():
            if type(key) is not str:
                out.append(f"{path}/{key!s}:{type(key).__qualname__}")
            elif "." in key:
                out.append(f"{path}/{key}:dotted")
            if type(sub) not in _IMMUTABLE:
                out.extend(_typed_keys(sub, f"{path}/{key!s}"))
    elif isinstance(value, list | tuple):  # (sets hold no dicts: unhashable)
        for index, sub in enumerate(value):
            if type(sub) not in _IMMUTABLE:
                out.extend(_typed_keys(sub, f"{path}/{index}"))
    return out


def _is_array(value: tp.Any) -> bool:
    """Whether a value is a numpy array or a torch tensor (without importing either)."""
    np = imported("numpy")
    return (np is not None and isinstance(value, np.ndarray)) or is_tensor(value)


def _snapshot(value: tp.Any) -> tp.Any:
    """A copy of a value's mutable parts (lists, dicts, sets, numpy arrays; the rest of what
    has a uid is immutable): what a node computes stays what its uid names."""
    kind = type(value)
    if kind is list or kind is tuple or kind is set or kind is frozenset:
        if set(map(type, value)) <= _IMMUTABLE:  # (the common case: a shallow copy)
            return kind(value)
        return kind(_snapshot(v) for v in value)
    if kind is dict:
        return {k: _snapshot(v) for k, v in value.items()}
    np = imported("numpy")
    if np is not None and isinstance(value, np.ndarray):
        return value if _read_only(value, np) else value.copy()
    if isinstance(value, list | tuple | dict | set):  # (subclasses: as deepcopy copies them)
        return copy.deepcopy(value)
    return value


_IMMUTABLE = frozenset({int, float, str, bool, bytes, type(None), Path, type(Path())})


def _read_only(array: tp.Any, np: tp.Any) -> bool:
    """Whether nobody can change an array's data (then a copy is for nothing): no array
    of its chain is writeable and the memory at its end is bytes. (Not a read-only map
    of a file: its file may be rewritten, and a map of a cache's data file cannot be
    told from a user's. An owner can make its array writeable again.)"""
    while isinstance(array, np.ndarray):
        if array.flags.writeable:
            return False
        array = array.base
    if isinstance(array, memoryview):  # (np.frombuffer's base: what it views)
        array = array.obj
    return isinstance(array, bytes)


def container_cycle(value: tp.Any) -> tuple[str, str] | None:
    """Where a list, tuple or dict holds itself, at any depth: (the path of the inner
    reference, the path of the container it is), e.g. ``("[1]", "")`` for a list whose
    second item is the list itself; None when it holds no cycle. Walked without recursion
    (what it explains is a RecursionError)."""

    def children(item: tp.Any) -> tp.Iterator[tuple[str, tp.Any]]:
        if isinstance(item, dict):
            return ((f"[{key!r}]", sub) for key, sub in item.items())
        return ((f"[{index}]", sub) for index, sub in enumerate(item))

    if not isinstance(value, list | tuple | dict):
        return None
    ids = [id(value)]  # the containers from the value down to the one walked now
    labels = [""]
    stack = [children(value)]
    while stack:
        label, sub = next(stack[-1], ("", None))
        if sub is None and not label:  # (this container is done)
            stack.pop(), ids.pop(), labels.pop()
            continue
        if not isinstance(sub, list | tuple | dict):
            continue
        if id(sub) in ids:
            return "".join(labels[1:]) + label, "".join(labels[1 : ids.index(id(sub)) + 1])
        ids.append(id(sub))
        labels.append(label)
        stack.append(children(sub))
    return None


def _holds_node(value: tp.Any) -> bool:
    if isinstance(value, Node):
        return True
    if isinstance(value, dict):
        return any(_holds_node(v) for v in value.values())
    if isinstance(value, list | tuple | set | frozenset):
        return any(_holds_node(v) for v in value)
    return False


@dataclasses.dataclass(frozen=True)
class Group:
    """A list (or dict) input mixing nodes and values: the method receives the list (dict)
    of their outputs."""

    sources: tuple[Node | Value, ...]
    keys: tuple[str, ...] | None = None  # a dict's keys, sorted (None: a list)

    @memoized
    def uid(self) -> str:
        if self.keys is not None:
            pairs = zip(self.keys, self.sources)
            return "{" + ",".join(f"{key}={source.uid}" for key, source in pairs) + "}"
        return "[" + ",".join(source.uid for source in self.sources) + "]"

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(s for s in self.sources if isinstance(s, Node))


Input = tuple[str, "Node | Value | Group"]  # (parameter name, what feeds it)


if tp.TYPE_CHECKING:  # (a default: a bare `Node` annotation is a Node[Any])
    from typing_extensions import TypeVar

    from .jobs import Job

    Out = TypeVar("Out", default=tp.Any)
else:
    Out = tp.TypeVar("Out")


@dataclasses.dataclass(frozen=True, eq=False)
class Node(tp.Generic[Out]):
    """One cached computation (see module docstring).

    Task nodes call ``function(*input values)``; map nodes call ``function(items)`` and
    store one entry per item, keyed by ``item_uid(item)``.
    """

    kind: tp.Literal["task", "map"]
    step: str  # "<module>.<Class>.<method>,<version>"
    config_uid: str  # "default" when the config uid is empty
    root: Path | None  # the cache root folder (None: RAM only or no cache)
    function: tp.Callable[..., tp.Any]
    cache: CacheDict[tp.Any]
    mode: Mode = "cached"
    execution: Execution = Execution()
    inputs: tuple[Input, ...] = ()
    chained: tuple[Node, ...] = ()
    prepare: tp.Callable[[], None] | None = None  # checks/writes the uid folder's yaml files
    # renames the config's cache from its legacy (v2) name: by a run, not a plan
    adopt_legacy: tp.Callable[[], None] | None = None
    legacy_name: tp.Callable[[], str | None] | None = None  # that name (explanations)
    # the config's folder of that name if it holds this config (cleaning: a v2 name does
    # not record types, another config's folder may have it)
    legacy_folder: tp.Callable[[], Path | None] | None = None
    # before cached results are reused: raises if they were made with other class defaults
    # (returns whether that is settled: False while nothing is on disk to check against)
    check_reuse: tp.Callable[[], bool] | None = None
    # before computing into its folder: raises if its config's folder records other class
    # defaults (what ``prepare`` refuses; for a call with inputs, the config folder above
    # its own); returns whether that is settled, as ``check_reuse``
    check_folder: tp.Callable[[], bool] | None = None
    # what a plan adds to "cached" once check_reuse passed (tasks: the sub-configs'
    # versions changed since the result was computed; they are not part of its uid)
    reuse_note: tp.Callable[[], str | None] | None = None
    # after a task's outcome is stored (in the worker): records what it was computed with
    # (a map's: once each of its items was computed under today's sub-config versions)
    after_store: tp.Callable[[], None] | None = None
    # maps: a digest of today's sub-configs' versions when its folder's full-uid.yaml
    # records others (None else): each item computed is marked with it
    versions_mark: tp.Callable[[], str | None] | None = None
    # when its cached results are reused (by a call, not a plan): writes back the yaml
    # files that the last read of its folder did not list (removed by hand)
    restore_files: tp.Callable[[], None] | None = None
    label: str = ""
    uid_config: tp.Callable[[], dict[str, tp.Any]] | None = None  # full uid config (explanations)
    # maps only
    item_uid: tp.Callable[[tp.Any], str] | None = None
    items: tp.Sequence[tp.Any] | Node | None = None
    item_uids: tp.Sequence[str] | None = None  # of ``items`` when already computed
    forbid_single_item: bool = False
    # shared by every node of one infra instance: mode=force applies once per instance
    # ("done"), and once per item uid for maps ("uids": the item uids it forced)
    force_state: dict[str, tp.Any] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def pending_force(self) -> bool:
        """mode=force that this instance has not applied yet (to these items, for a map)."""
        if self.mode != "force":
            return False
        state = self.force_state
        if not state.get("done", False):
            return True
        if self.kind != "map" or self.items is None or isinstance(self.items, Node):
            return False
        return not state.get("uids", set()).issuperset(self.listed_item_uids)

    def forcing_runs(self, run: str) -> frozenset[str]:
        """The forcing runs of this instance's calls (``run`` and those registered with
        ``add_forcing_run``): an item output forced by any of them is forced for it."""
        return frozenset((run, *self.force_state.get("runs", ())))

    def add_forcing_run(self, run: str) -> None:
        # (a tuple replaced whole: a thread reading it meanwhile sees the old or the new)
        runs = self.force_state.get("runs", ())
        if run not in runs:
            self.force_state["runs"] = (*runs, run)

    def shipped(self) -> Node:
        """This node as a unit of work carries it into a job or a pool process: a map's
        items and their uids travel with each unit (its chunk) instead (a copy of all of
        them in every chunk's pickle made 100k items weigh GBs). Its identity is kept."""
        if self.kind != "map" or self.items is None or isinstance(self.items, Node):
            return self
        _ = self.uid, self.key, self.folder  # (computed from the items: kept as they are)
        slim = copy.copy(self)
        state = vars(slim)
        state.update(items=None, item_uids=None)
        state.pop("listed_item_uids", None)  # (it holds the items too)
        return slim

    @property
    def closure(self) -> tuple[Node, ...]:
        """This node and every node upstream of it."""
        return (self, *self._upstream_closure)

    @memoized
    def _upstream_closure(self) -> tuple[Node, ...]:
        # (memoized without this node itself: a node holding itself is a reference cycle,
        # freed only by the cyclic collector, with its items, once a call drops it)
        seen: dict[tuple[str, str], Node] = {self.key: self}
        stack: list[Node] = list(self.upstream)
        while stack:
            node = stack.pop()
            if node.key not in seen:
                seen[node.key] = node
                stack.extend(node.upstream)
        return tuple(seen.values())[1:]

    def check_defaults(self, upstream_only: bool = False) -> None:
        """Before a cached result is reused: raise if this node, or a node it was computed
        from, was cached with other class defaults than today's (an upstream's changed
        default leaves every uid as it was, and its old output behind this result).
        ``upstream_only``: this node's own check was just made (by a call's fast path)."""
        # (each node once: a node and its upstream that passed are not walked again)
        todo: list[Node] = []
        seen: set[tuple[str, str]] = {self.key} if upstream_only else set()
        stack: list[Node] = list(self.upstream) if upstream_only else [self]
        restores = RESTORES_FILES.get()
        # (what this check marks: a read-only call reuses results as a call does, but
        # records nothing; after a plan, it warns of changed sub-configs' versions)
        mark = True if restores else "reused" if _READING_ONLY.get() else "read"
        while stack:
            node = stack.pop()
            passed = node.__dict__.get(_DEFAULTS_OK)
            if node.key in seen or _passed(passed, mark):
                continue
            seen.add(node.key)
            todo.append(node)
            stack.extend(node.upstream)
        settled = True
        for node in todo:
            if node.check_reuse is None:
                continue
            try:
                settled = node.check_reuse() and settled
            except RuntimeError as error:
                if node is self:
                    raise
                if self.kind == "task" and self.cache.entry_type(TASK_KEY) is not None:
                    raise RuntimeError(
                        f"{self.uid} was computed from {node.uid}: {error}"
                    ) from None
                raise RuntimeError(
                    f"{self.uid} needs {node.uid}, whose cached result no longer applies: {error}"
                ) from None
        if restores:
            for node in todo:
                if node.restore_files is not None:
                    node.restore_files()
        if settled:  # (else checked again next time: another process may compute one)
            for node in todo:
                node.__dict__[_DEFAULTS_OK] = mark

    @memoized
    def inputs_uid(self) -> str | None:
        """``inputs-<md5[:8]>`` of the inputs' names and uids (None without inputs): a
        fixed length whatever the depth of the DAG."""
        if not self.inputs:
            return None
        text = "|".join(f"{name}={source.uid}" for name, source in self.inputs)
        return INPUTS_PREFIX + hashlib.md5(text.encode("utf8")).hexdigest()[:8]

    @memoized
    def path(self) -> str:
        """``<step>/<config uid>[/inputs-<digest>]``: the node's folder under its root."""
        base = f"{self.step}/{self.config_uid}"
        extra = self.inputs_uid
        return f"{base}/{extra}" if extra else base

    @memoized
    def listed_item_uids(self) -> tp.Sequence[str]:
        """The uids of a map node's items given as a list (not from an upstream node)."""
        if self.item_uids is not None:
            return self.item_uids
        assert self.item_uid is not None and not isinstance(self.items, Node)
        many = getattr(self.item_uid, "many", None)
        items = [] if self.items is None else list(self.items)  # (an array: no truth value)
        return many(items) if many is not None else [self.item_uid(i) for i in items]

    @memoized
    def items_uid(self) -> str | None:
        """``items-<md5[:8]>`` of a map node's items (their uids, or the upstream node that
        produces them): what a map node outputs depends on its items, not only its config."""
        if self.kind != "map" or self.items is None:
            return None
        if isinstance(self.items, Node):
            text = "from:" + self.items.uid
        else:
            uids = self.listed_item_uids
            text = "|".join(uids)
            if (
                (uids and text.count("|") != len(uids) - 1)  # a uid holds "|"
                # (an empty uid, found in the text: no uid holds "|" then; no compare each)
                or (uids and (not text or "||" in text or text[0] == "|" or text[-1] == "|"))
                or "\x00" in text
                or text.startswith("from:")
            ):  # the joined text is ambiguous: ["a|b"] and ["a", "b"] have the same
                import json

                text = "\x00" + json.dumps(list(uids))
        return "items-" + hashlib.md5(text.encode("utf8", "surrogatepass")).hexdigest()[:8]

    @memoized
    def uid(self) -> str:
        """The node's identity: its path, plus ``/items-<digest>`` for a map (map nodes of one
        config share their folder and per-item cache, whatever their items)."""
        items = self.items_uid
        return f"{self.path}/{items}" if items else self.path

    @memoized
    def folder(self) -> Path | None:
        root = self.root
        if root is None:
            return None
        # (the cache's own Path when it is this folder, as for most tasks: no new Path to
        # parse, ~3 µs, for each of a plan's thousands of nodes; a root "/" or a path not
        # in normal form never matches the text of a Path)
        held = self.cache.folder
        if held is not None:
            base = str(root)
            if not base.endswith("/") and str(held) == f"{base}/{self.path}":
                return held
        return root / self.path

    @memoized
    def key(self) -> tuple[str, str]:
        """Deduplication key: equal keys are the same node."""
        return (str(self.root), self.uid)

    @memoized
    def upstream(self) -> tuple[Node, ...]:
        """Every node that must be done before this one (inputs, map items, chained)."""
        nodes: list[Node] = []
        for _, source in self.inputs:
            if isinstance(source, Node):
                nodes.append(source)
            elif isinstance(source, Group):
                nodes.extend(source.nodes)
        if isinstance(self.items, Node):
            nodes.append(self.items)
        nodes.extend(self.chained)
        return tuple(nodes)

    @property
    def name(self) -> str:
        return self.label or self.uid

    def with_mode(self, mode: Mode) -> Node[Out]:
        return dataclasses.replace(self, mode=mode)

    # conveniences (see exca.graph.api); Out, for a type checker: what result() returns
    # (a task's result, or a map's list of outputs)
    def result(self) -> Out:
        """The output of this node, computing what is missing (upstream first)."""
        from .api import result

        return result(self)

    def status(self) -> str:
        from .api import status

        return status(self)

    def failure(self) -> BaseException | None:
        """Why ``status()`` is "failed" (None otherwise): see ``exca.graph.api.failure``."""
        from .api import failure

        return failure(self)

    def job(self) -> Job[Out]:
        from .api import job

        return job(self)

    def clear(self) -> None:
        from .api import clear

        clear(self)

    def __repr__(self) -> str:
        return f"Node({self.kind} {self.uid})"
