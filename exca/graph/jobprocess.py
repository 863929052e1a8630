"""The setup of a submitit job's process (local or Slurm) before it runs its unit: die
with a local job's controller, share its logs with the cache's users, and make the
submitted config and the script's classes fit the code imported in the job."""

from __future__ import annotations

import contextlib
import os
import sys
import types
import typing as tp
from pathlib import Path

if tp.TYPE_CHECKING:
    from .node import Node


def start(permissions: int | None) -> None:
    """Once per job process."""
    _end_with_local_controller()
    _share_job_logs(permissions)


def prepare(node: Node) -> None:
    """Before each unit the job runs."""
    _refuse_changed_classes(node)
    _main_names_findable(node)


SOURCES_MAX = 256 * 1024  # the bytes of in-memory source lines a job is sent at most


def memory_sources(node: Node) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The source lines this process holds in memory only (``linecache``: a notebook's
    cells, code given to exec with its lines registered, as IPython does) of the node's
    method and of the functions and classes of its module it names (e.g. a cell's
    helpers, and theirs): a job's process cannot read them, and the traceback of an error
    there showed no line of them (at most SOURCES_MAX bytes, by file name)."""
    import linecache

    function = node.function
    func = getattr(getattr(function, "method", None), "func", function)
    code = getattr(func, "__code__", None)
    if code is None:
        return ()
    space = getattr(func, "__globals__", {})
    names: set[str] = set()
    todo: list[types.CodeType] = [code]
    seen: set[types.CodeType] = set()
    while todo and len(seen) < 200:  # (the code it runs, through the names it uses)
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        names.add(current.co_filename)
        for const in current.co_consts:  # (nested functions, comprehensions, classes)
            if isinstance(const, types.CodeType):
                todo.append(const)
        for used in current.co_names:
            todo.extend(_codes_of(space.get(used), func.__module__))
    out: list[tuple[str, tuple[str, ...]]] = []
    total = 0
    for name in sorted(names):
        entry = linecache.cache.get(name)
        if entry is None or len(entry) != 4 or os.path.exists(name):
            continue  # (not known, or a file: read in the job as here)
        lines = tuple(entry[2])
        total += sum(len(line) for line in lines)
        if total > SOURCES_MAX:
            break
        out.append((name, lines))
    return tuple(out)


def _codes_of(value: tp.Any, module: str) -> list[types.CodeType]:
    """The code of a function, or of the methods of a class, of ``module``."""
    if isinstance(value, types.FunctionType):
        return [value.__code__] if value.__module__ == module else []
    if not isinstance(value, type) or value.__module__ != module:
        return []
    codes = []
    for attr in list(vars(value).values()):
        attr = getattr(attr, "__func__", attr)  # (staticmethod, classmethod)
        inner = getattr(getattr(attr, "method", None), "func", None)  # (a decorated one)
        for candidate in (attr, inner):
            if isinstance(candidate, types.FunctionType):
                codes.append(candidate.__code__)
    return codes


def known_sources(sources: tp.Iterable[tuple[str, tp.Sequence[str]]]) -> None:
    """In a job's process: the in-memory source lines of its submitting process (see
    memory_sources), for its tracebacks."""
    import linecache

    for name, lines in sources:
        if name not in linecache.cache:
            size = sum(len(line) for line in lines)
            linecache.cache[name] = (size, None, list(lines), name)


def _share_job_logs(permissions: int | None) -> None:
    """Apply the cache's permissions to this job's log folder and files (submitit and
    Slurm create them with the user's umask: colleagues sharing the cache could not read
    the logs behind ``job.stdout()``), and, as the process exits, to the result file
    submitit writes once the job's function returned (its outcome, which `exca list`,
    `exca clean` and status() read: a job that ran to its end is not taken for dead)."""
    if permissions is None:
        return
    try:
        import submitit

        env = submitit.JobEnvironment()
        folder = Path(env.paths.folder)
        prefix = str(env.job_id).split("_")[0]
        names = [e.name for e in os.scandir(folder) if e.name.startswith(prefix + "_")]
    except Exception:  # (no log folder to share: not a submitit job after all)
        return
    from ..storage.files import chmod, chmod_folder

    chmod_folder(folder, permissions)
    for name in names:
        chmod(folder / name, permissions)
    import atexit

    atexit.register(_share_result, Path(env.paths.result_pickle), permissions)


def _share_result(path: Path, permissions: int) -> None:
    """The cache's permissions on the result file submitit wrote (see _share_job_logs)."""
    from ..storage.files import chmod

    if path.exists():  # (none: killed, requeued... nothing to share)
        chmod(path, permissions)


def _end_with_local_controller() -> None:
    """In a local job's task process: die with the controller process that started it.
    Its pid is the job id users see; killed (``kill -9 <job id>``), it must take its task
    along: else the task runs on as an orphan that the job's status cannot see, and its
    live claim makes later calls wait for it."""
    if "SUBMITIT_LOCAL_JOB_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    # the controller died before the request (no signal will come): this process was
    # adopted, by init or by a subreaper (systemd --user, a container's init...)
    if os.environ.get("SUBMITIT_LOCAL_WITH_SHELL"):  # (the job id is then its shell's)
        controller = _parent_command().find("submitit") >= 0
    else:
        controller = str(os.getppid()) == os.environ["SUBMITIT_LOCAL_JOB_ID"]
    if not controller:
        os.kill(os.getpid(), signal.SIGKILL)


def _parent_command() -> str:
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as handle:
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _main_names_findable(node: Node) -> None:
    """Put the classes and functions of the submitting script (``__main__``, sent by value)
    that the method uses into this job's ``__main__`` (submitit's): a result holding
    them (an Enum, a dataclass, a model) then pickles them by name, as a call without a
    job does, and a new run of the script reads back instances of its own classes (not
    copies made by cloudpickle, which neither compare equal nor pass ``isinstance``)."""
    main = sys.modules.get("__main__")
    function = node.function
    func = getattr(getattr(function, "method", None), "func", function)
    if main is None or not hasattr(func, "__globals__"):
        return
    found: list[tp.Any] = list(func.__globals__.values())
    found.extend(type(model) for model in _models_in(getattr(function, "owner", None), 0))
    for value in found:
        if not isinstance(value, type | types.FunctionType):
            continue
        name = getattr(value, "__qualname__", "")
        if value.__module__ == "__main__" and name.isidentifier() and not hasattr(main, name):
            setattr(main, name, value)


class ClassChangedError(RuntimeError):
    """A job's config was pickled with a class that gained a required field since (edited
    while the job was queued): computing would fail on the missing attribute, and cache
    that. Refused instead: not a failure of the computation (the job sets its record aside,
    its caller caches nothing: see worker.run_job_unit, Scheduler._refused_changed_class)."""


class ConfigImportError(ImportError):
    """A job could not import its config's module (or a module of what the config holds),
    or that module lacks the class there (renamed or removed): an environment problem (the
    job's PYTHONPATH, its python, its code), not the config's outcome.
    Refused as a changed class is: see worker.load_unit, Scheduler._refused_changed_class."""


def _refuse_changed_classes(node: Node) -> None:
    """Before computing, for a config of this job that lacks a field its class (as
    imported in the job) has, the class being edited since submission: a field with a
    default gets it (the uid leaves defaults out: the same config, as a new submission
    would send it); a required one is refused (nothing is computed nor cached)."""
    owner = getattr(node.function, "owner", None)
    for model in _models_in(owner, depth=0):
        cls = type(model)
        if cls.__module__.startswith("exca."):  # (exca's own: not the user's config)
            continue
        values, extra = model.__dict__, model.__pydantic_extra__ or {}
        missing = [n for n in cls.model_fields if n not in values and n not in extra]
        required = [n for n in missing if cls.model_fields[n].is_required()]
        if required:
            raise ClassChangedError(
                f"{node.uid}: {cls.__module__}.{cls.__qualname__} has the required field(s) "
                f"{', '.join(map(repr, required))} that the submitted config lacks: was the "
                "class edited while this job waited in the queue? Nothing was computed nor "
                "cached (not a failure: the next call submits it again): submit the config "
                "again, with the current code"
            )
        for name in missing:  # (set as pydantic sets fields: no validation, no freezing)
            field = cls.model_fields[name]
            try:  # (a default factory may take the other fields: pydantic >= 2.10)
                values[name] = field.get_default(call_default_factory=True, validated_data=values)
            except TypeError:
                values[name] = field.get_default(call_default_factory=True)


def _models_in(value: tp.Any, depth: int) -> tp.Iterator[tp.Any]:
    """The pydantic models in a config: itself and its sub-configs (in lists and dicts too)."""
    import pydantic

    if depth > 50:
        return
    if isinstance(value, pydantic.BaseModel):
        yield value
        children: tp.Iterable[tp.Any] = value.__dict__.values()
    elif isinstance(value, list | tuple):
        children = value
    elif isinstance(value, dict):
        children = value.values()
    else:
        return
    for child in children:
        if isinstance(child, pydantic.BaseModel | list | tuple | dict):
            yield from _models_in(child, depth + 1)
