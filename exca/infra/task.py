"""TaskInfra: one cached computation per config (``@infra.apply`` on a method taking only self)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import operator
import os
import shutil
import time
import typing as tp
import weakref
from pathlib import Path

import pydantic

from ..confdict import ConfDict
from ..graph import calls, ranks, registry, wiring
from ..graph.jobs import Job
from ..graph.node import INPUTS_PREFIX, TASK_KEY, Group, Input, Node, Value, container_cycle
from ..storage.cachedict import CacheDict, inspecting_view
from ..storage.files import note_write_error
from . import freezing, uidfolder
from .base import _MISSING, BaseInfra
from .method import InfraMethod, check_plain_method, reduce_bound
from .resources import SubmititMixin

logger = logging.getLogger("exca")
# (what a user's type checker sees of a decorated method: the config type, the inputs'
# parameters and the result; obj.method(...) keeps the method's signature and result type)
S = tp.TypeVar("S")
P = tp.ParamSpec("P")
R = tp.TypeVar("R")
R_co = tp.TypeVar("R_co", covariant=True)
INPUTS_FILE = uidfolder.INPUTS_FILE


@functools.cache
def _task_methods(cls: type) -> tuple[TaskMethod, ...]:
    """The no-argument task methods a class uses (inherited ones included)."""
    found: dict[str, TaskMethod] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, TaskMethod) and not value.params:
                found[name] = value
            elif name in found:
                del found[name]  # overridden without a decorator
    return tuple(found.values())


@functools.cache
def _warn_unchained(cls: type, method: TaskMethod) -> None:
    logger.warning(
        "%s.%s has a TaskInfra without folder: it is not computed beforehand nor cached when "
        "a config containing it runs (give its infra a folder to chain it)",
        cls.__name__,
        method.name,
    )


def chained_nodes(owner: pydantic.BaseModel) -> tuple[Node, ...]:
    """Nodes of the no-argument task methods (with a folder) of every sub-config of an
    owner: they are computed before the owner's own task nodes."""
    nodes: dict[tuple[str, str], Node] = {}
    for sub in freezing.iter_models(owner):
        if sub is owner or isinstance(sub, BaseInfra):
            continue
        for method in _task_methods(type(sub)):
            infra = tp.cast("TaskInfra", method.infra_of(sub))
            if infra.folder is None:
                _warn_unchained(type(sub), method)
                continue
            node = infra._node()
            nodes.setdefault(node.key, node)
    return tuple(nodes.values())


class MethodCall:
    """``method(owner, *args)``, picklable (the method is found again by its class and name)."""

    def __init__(self, owner: pydantic.BaseModel, method: InfraMethod, weak: bool = False) -> None:
        # (``weak``: in a node memoized on the owner's infra, which a strong link back
        # would make a reference cycle; the owner is pinned while the node is used
        # elsewhere, see method.release_owner)
        self._owner: tp.Callable[[], pydantic.BaseModel | None] = (
            weakref.ref(owner) if weak else lambda: owner
        )
        self.method = method

    @property
    def owner(self) -> pydantic.BaseModel:
        owner = self._owner()
        if owner is None:  # (cannot be: its owner is pinned while the node is used)
            raise RuntimeError(f"{self!r}: its config instance was garbage-collected")
        return owner

    def __reduce__(self) -> tuple[tp.Any, ...]:
        return (MethodCall, (self.owner, self.method))

    def __call__(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        return self.method.func(self.owner, *args, **kwargs)

    def __repr__(self) -> str:
        return f"MethodCall({self.method.func.__qualname__})"


class TaskMethod(InfraMethod, tp.Generic[S, P, R]):
    """``@infra.apply`` of a TaskInfra: ``obj.method`` is a ``BoundTask``."""

    def __init__(
        self, infra: BaseInfra, func: tp.Callable[tp.Concatenate[S, P], R], **options: tp.Any
    ) -> None:
        check_plain_method(func)
        if inspect.isgeneratorfunction(func):  # (its outputs would be a generator: unstorable)
            raise TypeError(
                f"{func.__qualname__} yields: a TaskInfra method returns one result. Return a "
                "list, or decorate it with a MapInfra (one output per item)"
            )
        self.signature = inspect.signature(func)
        self.params = tuple(self.signature.parameters)[1:]
        _check_named_parameters(func, self.signature)
        super().__init__(infra, func, **options)

    if tp.TYPE_CHECKING:  # (InfraMethod.__get__ at runtime: these say what it returns)

        @tp.overload
        def __get__(self, obj: None, objtype: tp.Any = None) -> TaskMethod[S, P, R]: ...
        @tp.overload
        def __get__(self, obj: S, objtype: tp.Any = None) -> BoundTask[P, R]: ...
        def __get__(self, obj: tp.Any, objtype: tp.Any = None) -> tp.Any: ...

    def bound(self, obj: tp.Any) -> BoundTask[P, R]:
        return BoundTask(self, obj)

    def inputs(
        self,
        args: tuple[tp.Any, ...],
        kwargs: dict[str, tp.Any],
        snapshot: bool = False,
        where: str | None = None,
    ) -> tuple[Input, ...]:
        """Named inputs of a call (nodes stay nodes, values get their uid; ``snapshot``:
        values are copied, see ``Value.of``; ``where``: the node named by errors)."""
        try:
            bound = self.signature.bind(None, *args, **kwargs)
        except TypeError as error:
            message = str(error)
            unknown = [k for k in kwargs if k not in self.params]
            if unknown and not any(
                p.kind is p.VAR_KEYWORD for p in self.signature.parameters.values()
            ):  # (bind names a missing argument first: the misspelt one is the cause)
                message = (
                    f"got an unexpected keyword argument {unknown[0]!r} (its parameters: "
                    f"{', '.join(self.params) or 'none'})"
                )
            raise TypeError(f"{self.func.__qualname__}: {message}") from None
        bound.apply_defaults()
        out: list[Input] = []
        for name in self.params:
            value = bound.arguments[name]
            # (before the walk below: a cycle in such a dict must not hide this error)
            if _dict_of_nodes(value) and not all(isinstance(k, str) for k in value):
                raise TypeError(f"{self.func.__qualname__}: a dict of nodes needs str keys")
            try:
                out.append(self._input(name, value, snapshot))
            except (RecursionError, TypeError) as error:  # (walking a cycle, or what it made of it)
                cycle = container_cycle(value)
                if cycle is None and isinstance(error, TypeError):  # (a value without a uid:
                    # which call and input it is, or a sweep's error named none of them)
                    raise TypeError(
                        f"{where or self.func.__qualname__}: its input {name!r}: {error}"
                    ) from None
                if cycle is None:  # (e.g. nested deeper than Python's recursion limit)
                    raise
                inner, outer = cycle
                raise ValueError(
                    f"{where or self.func.__qualname__}: its input {name!r} holds itself "
                    f"({name}{inner} is {name}{outer}): a list or dict that contains itself "
                    "has no uid (a cycle). Pass a list or dict without cycles"
                ) from None
        return tuple(out)

    def _input(self, name: str, value: tp.Any, snapshot: bool) -> Input:
        """One named input: a node, a group of nodes and values, or a value."""
        if isinstance(value, Node):
            return name, value
        if isinstance(value, list | tuple) and any(isinstance(v, Node) for v in value):
            group = tuple(_source(v, snapshot) for v in value)
            return name, Group(group)  # e.g. a sweep of nodes feeding one evaluation
        if _dict_of_nodes(value):  # (its keys are str: checked by inputs)
            keys = tuple(sorted(value))
            group = tuple(_source(value[k], snapshot) for k in keys)
            return name, Group(group, keys)  # e.g. trainings by name
        return name, Value.of(value, snapshot)


def _inputs_key(inputs: tp.Sequence[Input]) -> str:
    """The names and uids of a call's inputs (a node's force state, its RAM cache)."""
    return "|".join(f"{name}={source.uid}" for name, source in inputs)


def _dict_of_nodes(value: tp.Any) -> bool:
    return isinstance(value, dict) and any(isinstance(v, Node) for v in value.values())


def _check_named_parameters(func: tp.Callable[..., tp.Any], signature: inspect.Signature) -> None:
    """A task's inputs are passed by name (they are part of its identity, and reach its
    job by name): ``*args``, ``**kwargs`` or positional-only parameters would get wrong
    values (``**kw`` received ``kw={...}``), cached as its result."""
    kinds: dict[inspect._ParameterKind, str] = {
        inspect.Parameter.VAR_POSITIONAL: "*{}",
        inspect.Parameter.VAR_KEYWORD: "**{}",
        inspect.Parameter.POSITIONAL_ONLY: "{} (positional-only)",
    }
    for param in list(signature.parameters.values())[1:]:
        shown = kinds.get(param.kind)
        if shown is not None:
            raise TypeError(
                f"{func.__qualname__} has the parameter {shown.format(param.name)}: the "
                "parameters of a TaskInfra method must be named ones (each is an input of "
                "its cached call). Use named parameters; for many values, one list or "
                "dict parameter"
            )


def _source(value: tp.Any, snapshot: bool) -> Node | Value:
    return value if isinstance(value, Node) else Value.of(value, snapshot)


class BoundTask(tp.Generic[P, R_co]):
    """``obj.method``: calling it returns the cached result (computing it if needed);
    ``obj.method.node(...)`` is the lazy graph node of that call."""

    __slots__ = ("method", "obj")

    def __init__(self, method: TaskMethod[tp.Any, P, R_co], obj: pydantic.BaseModel) -> None:
        self.method = method
        self.obj = obj

    __reduce__ = reduce_bound

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        if self.method.shadowed and self.method.overridden_on(self.obj):  # (super().method())
            return self.method.func(self.obj, *args, **kwargs)
        if ranks.ACTIVE:  # (in a multi-task job: a nested call is followed, see ranks.py)
            infra = tp.cast(TaskInfra, self.method.infra_of(self.obj))
            role = ranks.nested_role() if infra.folder is not None else None
            if role is not None:
                what = f"{self.method.func.__qualname__} of {infra.uid()}"
                if role == "lead":
                    with ranks.led(what):
                        return self._call(args, kwargs)
                return self._followed(what, args, kwargs)
        return self._call(args, kwargs)

    def _followed(self, what: str, args: tuple[tp.Any, ...], kwargs: dict[str, tp.Any]) -> tp.Any:
        """Another rank than 0's nested call: it makes the calls rank 0's makes, then
        reads its outcome (see ranks.py)."""
        from ..graph import store, worker

        infra = tp.cast(TaskInfra, self.method.infra_of(self.obj))
        if args or kwargs or self.method.params:
            node = self._node(args, kwargs, snapshot=False)
        else:
            node = infra._node()
        worker.follow_nested(what, node)
        node.cache.reread()  # (what rank 0 wrote meanwhile)
        return store.task_result(node)

    def _call(self, args: tuple[tp.Any, ...], kwargs: dict[str, tp.Any]) -> tp.Any:
        infra = tp.cast(TaskInfra, self.method.infra_of(self.obj))
        runtime = infra._runtime()
        infra._check_unchanged_before_reading()  # (a config with lists changed in place?)
        if args or kwargs or self.method.params:  # (run now: its inputs are not copied)
            node = self._node(args, kwargs, snapshot=False)
            if infra.keep_in_ram:
                return infra._kept_result(node)
            return calls.task_result(node)
        forcing_job = runtime.force_state.get("job")  # (its forcing job may still run)
        missed = False  # (the fast path below found no result to reuse)
        if infra.folder is not None and not forcing_job and not infra._force_pending():
            # fast path: one memoized uid and one index check, no node, no scheduler
            if runtime.ram is not _MISSING:
                # (unless its entry was removed through this instance: node.clear())
                if runtime.cache is not None and runtime.cache.known(TASK_KEY):
                    return runtime.ram
                runtime.ram = _MISSING
            # (a class default changed since the cache was made? Checked first: reading the
            # folder's full-uid.yaml tells that it is there, and _cache() then needs no look
            # for a legacy-named cache to rename to it, see _adopt_legacy)
            settled = infra._check_defaults(restore=True)
            cache = infra._cache()
            if not settled and runtime.legacy_renamed:  # (no full-uid.yaml: a legacy
                infra._check_defaults(restore=True)  # folder renamed just now has one)
            try:
                value = calls.reuse(cache, infra.mode, runtime.uid or infra.uid())
            except Exception as error:
                if self.method.func.__module__ == "__main__":  # (see codeprint)
                    calls.note_if_edited(error, cache, self.method.func)
                raise
            if value is not calls.MISSING:
                infra._restore_listed_files(cache)  # (yaml files removed by hand?)
                if self.method.func.__module__ == "__main__":  # (a notebook's, a script's)
                    calls.check_code(cache, self.method.func, runtime.uid or infra.uid())
                if infra.keep_in_ram:
                    runtime.ram = value
                return value
            missed = True
        if infra.folder is None and infra.keep_in_ram:
            with runtime.ram_lock():  # (the other threads then read what the first computed)
                value = calls.task_result(infra._node())
        else:
            value = calls.task_result(infra._node(), missed)
        if infra.keep_in_ram:
            runtime.ram = value
        return value

    def node(self, *args: tp.Any, **kwargs: tp.Any) -> Node[R_co]:
        """The graph node of this call (nothing runs): inputs may be nodes or values (it
        keeps a copy of the values: changing them afterwards does not change the node)."""
        node: Node[R_co] = self._node(args, kwargs, snapshot=True)
        wiring.check_inputs(self.method.func, node.inputs)  # (a dict fed for a list...)
        return node

    def _node(self, args: tuple[tp.Any, ...], kwargs: dict[str, tp.Any], snapshot: bool) -> Node:
        infra = tp.cast(TaskInfra, self.method.infra_of(self.obj))
        node = infra._node()
        if not self.method.params:
            if args or kwargs:
                raise TypeError(f"{self.method.func.__qualname__} takes no input")
            return node
        return infra._input_node(node, self.method.inputs(args, kwargs, snapshot, node.uid))

    def __repr__(self) -> str:
        return f"<bound {self.method.func.__qualname__} of {type(self.obj).__name__}>"


# how long clear_job() waits for a cancelled job's process to end (a local job gets
# SIGKILL a second after its SIGINT; a Slurm job may linger up to KillWait, 30 s by default)
CANCEL_WAIT_S = 5.0


def _wait_while_computed(node: Node, timeout: float) -> None:
    """Wait (at most ``timeout`` seconds) until no live worker holds the task's claim."""
    deadline = time.monotonic() + timeout
    while calls.being_computed(node) and time.monotonic() < deadline:
        time.sleep(0.05)


class TaskInfra(BaseInfra, SubmititMixin):
    """Cache and run one method of a config: ``infra: TaskInfra = TaskInfra(version="1")``,
    then ``@infra.apply`` on a method taking only ``self``.

    ``folder`` stores results (None: no disk cache); ``cluster`` chooses where a missing
    result is computed: None (this process), "local" (a subprocess), "debug", "slurm",
    or "auto" (Slurm when a controller answers, else local). ``mode``: "cached" (reuse,
    including a cached error), "retry" (recompute errors), "force" (recompute once),
    "read-only" (never compute).
    """

    cluster: tp.Literal["auto", "local", "slurm", "debug"] | None = None

    @tp.overload
    def apply(
        self,
        method: tp.Callable[tp.Concatenate[S, P], R],
        *,
        exclude_from_cache_uid: tp.Any = None,
        chain_subconfigs: bool = True,
    ) -> TaskMethod[S, P, R]: ...
    @tp.overload
    def apply(
        self,
        method: None = None,
        *,
        exclude_from_cache_uid: tp.Any = None,
        chain_subconfigs: bool = True,
    ) -> tp.Callable[[tp.Callable[tp.Concatenate[S, P], R]], TaskMethod[S, P, R]]: ...
    def apply(
        self,
        method: tp.Callable[..., tp.Any] | None = None,
        *,
        exclude_from_cache_uid: tp.Any = None,
        chain_subconfigs: bool = True,
    ) -> tp.Any:
        """Decorate a method (``@infra.apply`` or ``@infra.apply(exclude_from_cache_uid=...)``).

        The method may take inputs (values or graph nodes); each input tuple is cached in
        its own sub-folder. ``chain_subconfigs=False`` stops sub-configs' task methods from
        being computed first (see the pipelines docs)."""

        def decorate(func: tp.Callable[..., tp.Any]) -> TaskMethod[tp.Any, ..., tp.Any]:
            return TaskMethod(
                self,
                func,
                exclude_from_cache_uid=exclude_from_cache_uid,
                chain_subconfigs=chain_subconfigs,
            )

        if method is not None:
            return decorate(method)
        return decorate

    def _check_settings(self) -> None:
        super()._check_settings()
        self._check_resources(self.folder)

    # --- nodes -----------------------------------------------------------------------------
    def _cache(self, adopt: bool = True) -> CacheDict[tp.Any]:
        """The CacheDict of the result (``adopt``: after renaming a legacy-named cache,
        see _adopt_legacy; a node being built only warns of one)."""
        runtime = self._runtime()
        if not runtime.legacy_checked:
            self._adopt_legacy(rename=adopt)
        if runtime.cache is None:
            folder = self.uid_folder()
            if folder is None:
                runtime.cache = CacheDict(None, keep_in_ram=True)
            else:
                runtime.cache = CacheDict(
                    folder,
                    cache_type="Result",
                    permissions=self.permissions,
                    frees_files=self.mode != "read-only",  # (read-only writes nothing)
                )
                runtime.cache._holds_results = True
        cache: CacheDict[tp.Any] = runtime.cache
        return cache

    def _node(self) -> Node:
        runtime = self._runtime()
        node: Node | None = runtime.node
        if node is not None:
            return node
        owner = self._owner()
        method = self._method()
        uid = self.uid()
        step, _, config_uid = uid.rpartition("/")
        mode = self.mode
        memoized = self.folder is not None or self.keep_in_ram
        if not memoized:
            cache: CacheDict[tp.Any] = CacheDict(None, keep_in_ram=True)  # recomputed per call
        else:
            cache = self._cache(adopt=False)  # (a dry run builds nodes too: see Node)
        # (the validated folder is a Path already: Path(path) parses it again, ~5 µs)
        root = self.folder if isinstance(self.folder, Path | None) else Path(self.folder)
        node = Node(
            kind="task",
            step=step,
            config_uid=config_uid,
            root=root,
            function=MethodCall(owner, method, weak=memoized),
            cache=cache,
            mode=mode,
            execution=self._execution(
                logs_folder=None if root is None else root / step,
                job_name=self._default_job_name(uid),
                workdir_folder=self._workdir_folder(step),
            ),
            reuse_note=self._reuse_note if self.folder is not None else None,
            after_store=self._record_versions if self.folder is not None else None,
            label=uid,
            **self._node_folder_hooks(cache),
            force_state=runtime.force_state,
            chained=chained_nodes(owner) if method.options.get("chain_subconfigs", True) else (),
        )
        if memoized:
            runtime.node = node
        return node

    def _input_node(self, base: Node, inputs: tuple[Input, ...]) -> Node:
        """The node of a call with inputs: its own sub-folder ``inputs-<digest>``, and its
        own mode=force state (each node is forced once per instance)."""
        forced = base.force_state
        if base.mode == "force":  # (only then is a state needed: no dict per node else)
            forced = self._runtime().inputs_force.setdefault(_inputs_key(inputs), {})
        node = dataclasses.replace(base, inputs=inputs, force_state=forced)
        folder = node.folder
        if folder is None:
            if not self.keep_in_ram:  # (recomputed per call)
                return dataclasses.replace(node, cache=CacheDict(None, keep_in_ram=True))
            # RAM only: the instance keeps each input tuple's cache, as it keeps the one
            # of a method without inputs (runtime.cache)
            ram_caches = self._runtime().inputs_caches
            key = _inputs_key(inputs)
            ram = ram_caches.get(key)
            if ram is None:
                ram = ram_caches.setdefault(key, CacheDict(None, keep_in_ram=True))
            return dataclasses.replace(node, cache=ram)
        caches = self._runtime().inputs_caches
        cache = caches.get(folder)
        if cache is None:
            cache = caches[folder] = CacheDict(
                folder,
                cache_type="Result",
                permissions=self.permissions,
                frees_files=self.mode != "read-only",  # (read-only writes nothing)
            )
        label = f"{base.label}/{node.inputs_uid}"
        return dataclasses.replace(
            node,
            cache=cache,
            label=label,
            prepare=functools.partial(self._prepare_inputs, folder, inputs),
            check_reuse=functools.partial(
                self._check_defaults,
                result_folder=folder,
                # (to write back removed yaml files: into the folders that are there)
                prepare=functools.partial(self._prepare_inputs, folder, inputs, create=False),
            ),
            reuse_note=functools.partial(self._reuse_note, folder),
            after_store=functools.partial(self._record_versions, folder),
            restore_files=None,  # (its config's yaml files are in the folder above)
        )

    def _kept_result(self, node: Node) -> tp.Any:
        """keep_in_ram for a call with inputs: each input tuple's result is kept in the
        instance as the result of a method without inputs is (later calls read no disk
        and return the same object), unless it was removed through this instance
        (node.clear()) or mode=force has to apply."""
        runtime = self._runtime()
        folder = node.folder
        if folder is None:  # (its cache is the instance's, in RAM: see _input_node)
            with runtime.ram_lock(_inputs_key(node.inputs)):  # (other threads read it then)
                return calls.task_result(node)
        kept = runtime.inputs_ram
        value = kept.get(folder, _MISSING)
        if value is not _MISSING:
            if (
                node.cache.known(TASK_KEY)
                and node.force_state.get("job") is None
                and not any(n.pending_force for n in node.closure)
            ):
                return value
            kept.pop(folder, None)
        value = calls.task_result(node)
        kept[folder] = value
        return value

    def _prepare_inputs(self, folder: Path, inputs: tuple[Input, ...], create: bool = True) -> None:
        """Its config folder's yaml files and its sub-folder's inputs.yaml (``create=False``:
        written back into the folders that are there, FileNotFoundError else)."""
        self._prepare_folder(recheck=not create, create=create)
        if not (folder / INPUTS_FILE).exists():
            try:
                if create:
                    uidfolder.make_folder(folder, self.permissions)
                described = ConfDict({name: source.uid for name, source in inputs})
                uidfolder.write_atomic(folder / INPUTS_FILE, described.to_yaml(), self.permissions)
            except OSError as error:  # (a full disk: the bare errno named no folder)
                note_write_error(error, folder)
                raise

    def _default_job_name(self, uid: str) -> str:
        cls = type(self._owner()).__name__
        index = uid.find(cls)
        return uid[index:] if index >= 0 else uid

    # --- jobs --------------------------------------------------------------------------------
    def job(self) -> Job:
        """The job computing this config (submitting it if needed; does not wait, except for
        cluster=None and "debug", which compute in this process, and for a removal of its
        folder under way, ``exca clean``: it is submitted, or computed, once removed)."""
        self._refuse_inputs("job()", "run it with exca.graph.run (see the pipelines docs)")
        node = self._node()
        if self.mode == "read-only" and not calls.has_job_or_outcome(node):
            raise RuntimeError(
                f"{self.uid()}: mode='read-only' cannot submit jobs, and nothing is cached "
                "or running for this config"
            )
        return calls.task_job(node)

    def _refuse_inputs(self, what: str, instead: str) -> None:
        """infra.job()/status()/clear_job() name one computation of the config: a method
        taking inputs has one per input tuple (its node's)."""
        method = self._method()
        params = getattr(method, "params", ())
        if params:
            name = method.func.__name__
            raise TypeError(
                f"{method.func.__qualname__} takes inputs {list(params)}: infra.{what} cannot "
                f"tell which call. Build obj.{name}.node(...) with the inputs and {instead}"
            )

    def status(self) -> tp.Literal["not submitted", "running", "completed", "failed"]:
        """State of this config's computation, from its cache and its recorded job."""
        self._refuse_inputs("status()", "call its .status()")
        return calls.task_status(self._node())

    def failure(self) -> BaseException | None:
        """Why ``status()`` is "failed" (None when it is not): the error a call raises (the
        method's cached error, or how its job ended: cancelled, killed, timed out...), as
        ``exca list`` says it. Reads only, in any mode: nothing is computed or submitted."""
        self._refuse_inputs("failure()", "call its .failure()")
        return calls.task_failure(self._node())

    def clear_job(self) -> None:
        """Cancel a running job and remove the result (or the cached error), with the job
        records (``jobs/``), the ``submitit`` link, ``code`` and ``config.yaml``; uid.yaml and
        full-uid.yaml are kept. Waits a moment (at most 5 s) for a cancelled job's process
        to end."""
        self._refuse_inputs("clear_job()", "call its .clear()")
        self._adopt_legacy()  # (a cache under its legacy name: what is cleared)
        node = self._node()
        runtime = self._runtime()
        runtime.ram = _MISSING
        folder = node.folder
        if folder is not None and uidfolder.holds_other_config(folder, self._uid_config()):
            # (it removed the result of the other config its uid names too)
            raise RuntimeError(
                f"Inconsistent uid config in {folder}: its {uidfolder.UID_FILE} is another "
                "config's (two configs map to the same folder name): clear_job() removes "
                "nothing there; remove the folder if the cache is obsolete"
            )
        if folder is not None:
            from ..graph.executors import recorded_handle  # (not needed by cache hits)

            records = registry.read_all(folder)
            # records first: a job told to stop whose record is gone stores nothing (one
            # finishing before it is told has its result removed below)
            shutil.rmtree(folder / registry.JOBS_DIR, ignore_errors=True)
            cancelled = False
            for record in records:
                if registry.is_active(record):
                    with contextlib.suppress(Exception):
                        recorded_handle(record).cancel()
                        cancelled = True
            if cancelled:  # (its claim, until its process ends: status() said "running")
                _wait_while_computed(node, CANCEL_WAIT_S)
            busy = None if cancelled else calls.computer(node)
            if busy is not None:  # (a call computing it inline: no job to cancel)
                logger.warning(
                    "clear_job() of %s: %s computes it now, which clear_job() cannot stop "
                    "(no job of it to cancel): its result is stored when it ends; call "
                    "clear_job() again then",
                    node.uid,
                    busy,
                )
        node.cache.refresh()  # (the result may have been rewritten since this instance read it)
        if TASK_KEY in node.cache:
            del node.cache[TASK_KEY]
        if folder is None:
            return
        for name in (registry.LINK_NAME, "code", "config.yaml"):
            path = folder / name
            if path.is_symlink() or path.is_file():
                path.unlink()
        runtime.checked = False

    def executor(self) -> tp.Any:
        """A configured ``submitit.AutoExecutor`` (None for cluster=None)."""
        if self.mode == "read-only":
            raise RuntimeError("mode='read-only' cannot submit jobs: no executor")
        if self.cluster is None:
            return None
        from ..graph.executors import format_logs, submitit_executor

        node = self._node()
        if node.execution.logs_problem is not None:
            raise ValueError(node.execution.logs_problem)
        return submitit_executor(
            node.execution, format_logs(node.execution.logs or "", node.folder)
        )

    def _has_result(self, folder: Path) -> bool:
        # (a peek, as iter_cached's listing: it frees no file of an ended writer, reclaim.py)
        cache = inspecting_view(folder)
        return cache.entry_type(TASK_KEY) is not None  # computed (a result or an error)

    def _holds_results(self, folder: Path) -> bool:
        if self._has_result(folder):
            return True
        # a method taking inputs: one result per input tuple, in inputs-<digest> folders
        try:
            subs = [e.path for e in os.scandir(folder) if e.name.startswith(INPUTS_PREFIX)]
        except OSError:
            return False
        return any(self._has_result(Path(sub)) for sub in subs)

    def _reuses(self, folder: Path) -> bool:
        if self.mode == "force":  # (computed again: what it replaces is not reused)
            return False
        kind = inspecting_view(folder).entry_type(TASK_KEY)  # (a peek: see _has_result)
        return kind is not None and not (kind == "Error" and self.mode == "retry")

    @contextlib.contextmanager
    def job_array(
        self, max_workers: int = 256, allow_empty: bool = False, allow_repeated_tasks: bool = False
    ) -> tp.Iterator[list[tp.Any]]:
        """Collect configs in a list; on exit, submit the ones without a result as ONE array
        (with this infra's cluster, resources, logs and workdir), without waiting
        (cluster=None: they are computed, one after the other, before the block ends)."""
        given = max_workers
        try:  # (before the block runs; numpy ints are ints)
            max_workers = operator.index(max_workers)
        except TypeError:
            max_workers = 0
        if max_workers < 1:
            raise ValueError(
                f"job_array(max_workers={given!r}): give an int >= 1, the number of "
                "array tasks running at once"
            )
        # (before the block: each config's job called the method without its inputs, and
        # cached the TypeError as its result)
        self._refuse_inputs("job_array()", "run them with exca.graph.run (see the pipelines docs)")
        tasks: list[tp.Any] = []
        yield tasks
        from . import arrays

        arrays.submit_array(self, tasks, max_workers, allow_empty, allow_repeated_tasks)
