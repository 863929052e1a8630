"""TaskInfra: one cached computation per config (``@infra.apply`` on a method taking only self)."""

from __future__ import annotations

import contextlib
import datetime
import inspect
import logging
import os
import shutil
import typing as tp
from pathlib import Path

import pydantic

from ..graph import calls, registry, store
from ..graph.jobs import Job
from ..graph.node import TASK_KEY, Node
from ..storage.cachedict import CacheDict
from .base import _MISSING, BaseInfra
from .method import InfraMethod
from .resources import SubmititMixin

logger = logging.getLogger("exca")
C = tp.TypeVar("C", bound=tp.Callable[..., tp.Any])


class MethodCall:
    """``method(owner, *args)``, picklable (the method is found again by its class and name)."""

    def __init__(self, owner: pydantic.BaseModel, method: InfraMethod) -> None:
        self.owner = owner
        self.method = method

    def __call__(self, *args: tp.Any) -> tp.Any:
        return self.method.func(self.owner, *args)

    def __repr__(self) -> str:
        return f"MethodCall({self.method.func.__qualname__})"


class TaskMethod(InfraMethod):
    def __init__(self, infra: BaseInfra, func: tp.Callable[..., tp.Any], **options: tp.Any) -> None:
        params = list(inspect.signature(func).parameters.values())[1:]
        if params:
            raise ValueError(
                f"TaskInfra can only decorate methods taking no parameter but self, "
                f"{func.__qualname__} takes {[p.name for p in params]} (use a MapInfra for "
                "per-item computations)"
            )
        super().__init__(infra, func, **options)

    def bound(self, obj: tp.Any) -> BoundTask:
        return BoundTask(self, obj)


class BoundTask:
    """``obj.method``: calling it returns the cached result (computing it if needed)."""

    __slots__ = ("method", "obj")

    def __init__(self, method: TaskMethod, obj: pydantic.BaseModel) -> None:
        self.method = method
        self.obj = obj

    def __call__(self) -> tp.Any:
        infra = tp.cast(TaskInfra, self.method.infra_of(self.obj))
        runtime = infra._rt
        if runtime.ram is not _MISSING:
            return runtime.ram
        value = calls.task_result(infra._node())
        if infra.mode == "force" and not runtime.forced:
            runtime.forced = True
            runtime.node = None  # next calls reuse what was just forced
        if infra.keep_in_ram:
            runtime.ram = value
        return value

    def __repr__(self) -> str:
        return f"<bound {self.method.func.__qualname__} of {type(self.obj).__name__}>"


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

    def apply(
        self,
        method: C | None = None,
        *,
        exclude_from_cache_uid: tp.Any = None,
    ) -> tp.Any:
        """Decorate a method (``@infra.apply`` or ``@infra.apply(exclude_from_cache_uid=...)``)."""

        def decorate(func: C) -> TaskMethod:
            return TaskMethod(self, func, exclude_from_cache_uid=exclude_from_cache_uid)

        if method is not None:
            return decorate(method)
        return decorate

    def _check_settings(self) -> None:
        self._check_resources(self.folder)

    # --- nodes -----------------------------------------------------------------------------
    def _cache(self) -> CacheDict[tp.Any]:
        runtime = self._runtime()
        if runtime.cache is None:
            folder = self.uid_folder()
            if folder is None:
                runtime.cache = CacheDict(None, keep_in_ram=True)
            else:
                runtime.cache = CacheDict(folder, cache_type="Result", permissions=self.permissions)
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
        mode = "cached" if (self.mode == "force" and runtime.forced) else self.mode
        if self.folder is None and not self.keep_in_ram:
            cache: CacheDict[tp.Any] = CacheDict(None, keep_in_ram=True)  # recomputed per call
        else:
            cache = self._cache()
        node = Node(
            kind="task",
            step=step,
            config_uid=config_uid,
            root=None if self.folder is None else Path(self.folder),
            function=MethodCall(owner, method),
            cache=cache,
            mode=mode,
            execution=self._execution(
                logs_folder=None if self.folder is None else Path(self.folder) / step,
                job_name=self._default_job_name(uid),
                workdir_folder=self._workdir_folder(step),
            ),
            prepare=self._prepare_folder if self.folder is not None else None,
            label=uid,
        )
        if self.folder is not None or self.keep_in_ram:
            runtime.node = node
        return node

    def _default_job_name(self, uid: str) -> str:
        cls = type(self._owner()).__name__
        index = uid.find(cls)
        return uid[index:] if index >= 0 else uid

    def _workdir_folder(self, step: str) -> Path | None:
        if self.workdir is None or self.folder is None:
            return None
        stamp = datetime.date.today().isoformat()
        return Path(self.folder) / step / "code" / f"{stamp}-{os.urandom(3).hex()}"

    # --- jobs --------------------------------------------------------------------------------
    def job(self) -> Job:
        """The job computing this config (submitting it if needed; does not wait, except for
        cluster=None, which computes in this process)."""
        if self.mode == "read-only":
            raise RuntimeError(f"{self.uid()}: mode='read-only' cannot submit jobs")
        node = self._node()
        return calls.task_job(node)

    def status(self) -> tp.Literal["not submitted", "running", "completed", "failed"]:
        """State of this config's computation, from its cache and its recorded job."""
        node = self._node()
        node.cache.refresh()
        state = store.task_state(node)
        if state == "done":
            return "completed"
        if state == "error":
            return "failed"
        record = registry.latest(node.folder)
        if record is None:
            return "not submitted"
        return "running" if registry.is_active(record) else "failed"

    def clear_job(self) -> None:
        """Cancel a running job and remove the result (uid.yaml/full-uid.yaml are kept)."""
        node = self._node()
        runtime = self._runtime()
        runtime.ram = _MISSING
        folder = node.folder
        if folder is not None:
            for record in registry.read_all(folder):
                if registry.is_active(record):
                    with contextlib.suppress(Exception):
                        registry.submitit_job(record).cancel(check=False)
        if TASK_KEY in node.cache:
            del node.cache[TASK_KEY]
        if folder is None:
            return
        shutil.rmtree(folder / registry.JOBS_DIR, ignore_errors=True)
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
        return submitit_executor(node.execution, format_logs(node.execution.logs or "", node.folder))

    def _has_result(self, folder: Path) -> bool:
        cache: CacheDict[tp.Any] = CacheDict(folder, permissions=None)
        return cache.entry_type(TASK_KEY) == "Result"

    @contextlib.contextmanager
    def job_array(
        self, max_workers: int = 256, allow_empty: bool = False, allow_repeated_tasks: bool = False
    ) -> tp.Iterator[list[tp.Any]]:
        """Collect configs in a list; on exit, submit the ones without a result as ONE array
        (with this infra's cluster, resources, logs and workdir), without waiting."""
        tasks: list[tp.Any] = []
        yield tasks
        from . import arrays

        arrays.submit_array(self, tasks, max_workers, allow_empty, allow_repeated_tasks)
