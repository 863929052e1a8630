"""Conveniences on top of infras: cached functions, config models of functions, finding a
Slurm job's config, uid folder migration, and discriminated models."""

from __future__ import annotations

import errno
import functools
import importlib
import inspect
import logging
import os
import subprocess
import sys
import types
import typing as tp
import warnings
from pathlib import Path

import pydantic

from .confdict import ConfDict
from .graph import codeprint
from .infra import TaskInfra, identity
from .infra.discriminated import DiscriminatedModel
from .infra.uidfolder import CONFIG_FILE, UID_FILE, read_yaml

if tp.TYPE_CHECKING:
    import exca.ops.rename

logger = logging.getLogger("exca")
_CONFIG_CACHE_SIZE = 1024
# (with_infra keeps the decorated function's parameters and return type for type checkers)
P = tp.ParamSpec("P")
R = tp.TypeVar("R")


class FuncConfig(pydantic.BaseModel):
    """Base of the config models built from functions (``to_config_model``):
    one field per parameter, an ``infra`` field, and ``build()``, the cached call."""

    model_config = pydantic.ConfigDict(extra="forbid")
    if tp.TYPE_CHECKING:  # (a field of each generated model, not of this base)
        infra: TaskInfra

    def build(self) -> tp.Any:  # replaced by the cached call in each generated model
        raise NotImplementedError

    def __reduce__(self) -> tp.Any:
        # (its class is made by to_config_model, so pickle cannot find it by name in the
        # function's module: it is made again from the function, which pickles by name)
        func: tp.Any = _FUNC_OF.get(type(self))
        if func is None:  # (a class of its own, deriving from FuncConfig)
            return super().__reduce__()
        named = _lookup(func.__module__, func.__qualname__)
        if isinstance(named, FunctionWithInfra) and named.func is func:
            func = named  # (decorated by with_infra: its name is the decorated function's)
        return (_rebuild_config, (func, self.__getstate__()))


_FUNC_OF: dict[type, tp.Callable[..., tp.Any]] = {}  # generated model -> its function


def _rebuild_config(func: tp.Callable[..., tp.Any], state: dict[str, tp.Any]) -> FuncConfig:
    if isinstance(func, FunctionWithInfra):
        func = func.func
    cls = to_config_model(func)
    config = cls.__new__(cls)
    config.__setstate__(state)
    return config


_ANY = (tp.Any, "Any", "tp.Any", "typing.Any")  # (unresolved string annotations too)


def _check_parameters(func: tp.Callable[..., tp.Any]) -> None:
    """Every parameter can become a config field (checked at decoration, cheaply: the
    config model is built at the first call)."""
    for param in inspect.signature(func).parameters.values():
        name = param.name
        if name in ("infra", "build") or name.startswith(("_", "model_")):
            raise ValueError(
                f"{func.__qualname__} has a parameter named {name!r}, which cannot be a "
                "config field (reserved: 'infra', 'build', names starting with '_' or "
                "'model_'): rename it"
            )
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ValueError(f"{func.__qualname__}: *args/**kwargs cannot become config fields")
        if param.kind is param.POSITIONAL_ONLY:  # (the cached call passes fields by name)
            raise ValueError(
                f"{func.__qualname__}: the positional-only parameter {name!r} cannot become a "
                "config field (the function is called with its fields by name): remove the '/'"
            )
        if param.annotation is inspect.Parameter.empty or any(
            param.annotation is a or param.annotation == a for a in _ANY
        ):
            raise _imprecise(func, name)


def _imprecise(func: tp.Callable[..., tp.Any], name: str) -> ValueError:
    return ValueError(
        f"Parameter {name!r} of {func.__qualname__} needs a precise type annotation (not "
        "missing, not Any) to become a config field"
    )


def _as_keywords(
    func: tp.Callable[..., tp.Any], args: tuple[tp.Any, ...], kwargs: dict[str, tp.Any]
) -> str:
    """The call of ``func`` with these positional arguments given by name (what a
    function decorated by with_infra takes), as a hint; '' when they do not bind."""
    try:
        bound = inspect.signature(func).bind_partial(*args, **kwargs)
    except (TypeError, ValueError):
        return ""
    given = ", ".join(f"{name}={value!r:.40}" for name, value in bound.arguments.items())
    return f": {func.__name__}({given})"


# function -> its model (a function defined again, e.g. a notebook cell run again, makes a
# model of the same name: the old one is forgotten then, see identity.seen_class)
_MODELS: dict[tp.Callable[..., tp.Any], type[FuncConfig]] = {}


def _forget_model(cls: type) -> None:
    if cls in identity.REPLACED:  # (not a class %autoreload updates: its function lives on)
        func = _FUNC_OF.pop(cls, None)
        if func is not None and _MODELS.get(func) is cls:
            del _MODELS[func]


identity.CLASS_FORGETTERS.append(_forget_model)


def to_config_model(func: tp.Callable[..., tp.Any]) -> type[FuncConfig]:
    """A pydantic model ``<func>_FuncConfig`` whose ``build()`` is the cached call of func."""
    model = _MODELS.get(func)
    if model is None:
        model = _MODELS.setdefault(func, _config_model(func))
    return model


def _config_model(func: tp.Callable[..., tp.Any]) -> type[FuncConfig]:
    annotations: dict[str, tp.Any] = {}
    namespace: dict[str, tp.Any] = {}
    _check_parameters(func)
    hints = tp.get_type_hints(func)
    for param in inspect.signature(func).parameters.values():
        hint = hints.get(param.name, param.annotation)
        if hint is tp.Any:  # (an alias of Any, resolved)
            raise _imprecise(func, param.name)
        annotations[param.name] = hint
        if param.default is not inspect.Parameter.empty:
            namespace[param.name] = param.default
    names = list(annotations)
    infra = TaskInfra(version="1")

    def build(self: tp.Any) -> tp.Any:
        return func(**{name: getattr(self, name) for name in names})

    name = f"{func.__name__}_FuncConfig"
    # (a method's qualified name: Audio.load and Video.load shared one cache folder, and
    # returned each other's results; a module's function keeps its folder name)
    qualname = f"{_qualified(func)}_FuncConfig"
    build.__qualname__ = f"{qualname}.build"
    build.__module__ = func.__module__
    # (a script's function edited between runs: its cached results are of other code)
    setattr(build, codeprint.CODE_OF_ATTR, func)
    annotations["infra"] = TaskInfra
    namespace.update(
        __annotations__=annotations,
        __module__=func.__module__,
        __qualname__=qualname,
        infra=infra,
        build=infra.apply(build),
    )
    metaclass: tp.Any = type(pydantic.BaseModel)
    try:
        model = tp.cast(type[FuncConfig], metaclass(name, (FuncConfig,), namespace))
        _FUNC_OF[model] = func
        return model
    except pydantic.PydanticSchemaGenerationError:
        bad = [n for n in names if not _has_schema(annotations[n])]
        shown = ", ".join(f"{n!r} ({annotations[n]!r})" for n in bad) or "?"
        raise TypeError(
            f"Parameter(s) {shown} of {func.__qualname__} cannot become config fields: "
            "their type has no pydantic schema (a config holds values: pass a list, a "
            "number, a string or a path instead, e.g. the path of an array's file)"
        ) from None


def _qualified(func: tp.Callable[..., tp.Any]) -> str:
    """A function's name in its module: ``Class.method`` for a method (also of a class
    defined in a function), its name for a module's function or one defined in a
    function (``<locals>`` names no folder)."""
    qualname = getattr(func, "__qualname__", func.__name__)
    return qualname.rsplit("<locals>.", 1)[-1]


def _has_schema(annotation: tp.Any) -> bool:
    try:
        pydantic.TypeAdapter(annotation)
    except pydantic.PydanticSchemaGenerationError:
        return False
    return True


def to_config(func: tp.Callable[..., tp.Any], **kwargs: tp.Any) -> FuncConfig:
    """An instance of ``to_config_model(func)``."""
    return to_config_model(func)(**kwargs)


_MEMO_TYPES = frozenset({str, int, float, bool, type(None)})


class FunctionWithInfra(tp.Generic[P, R]):
    """A function whose calls are cached (see ``with_infra``). Call it with keywords only."""

    def __init__(self, func: tp.Callable[P, R], **infra: tp.Any) -> None:
        from .infra.task import TaskInfra

        TaskInfra(**infra)  # (a typo or a bad value: refused now, not at the first call)
        _check_parameters(func)  # (at decoration: a call would fail less clearly)
        self.func = func
        self.infra = infra
        functools.update_wrapper(self, func)
        self._configs: dict[tp.Any, FuncConfig] = {}
        _check_one_definition_per_folder(func, infra)
        if infra.get("folder") is None and infra.get("cluster") is None:
            warnings.warn(
                f"with_infra on {func.__qualname__} without folder nor cluster: nothing is cached "
                "on disk and everything runs here",
                stacklevel=3,
            )

    def config(self, **kwargs: tp.Any) -> FuncConfig:
        """The config (pydantic model instance) of a call."""
        return to_config(self.func, **kwargs, infra=self.infra)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if args:
            raise RuntimeError(
                f"{self.func.__qualname__} has an infra: call it with keyword arguments only"
                + _as_keywords(self.func, args, kwargs)
            )
        key: tp.Any = None
        # (mode force/retry: each call gets a new config, which forces (retries) once, as
        # every call of the function should; a kept config would force only the first)
        if self.infra.get("mode") not in ("force", "retry") and all(
            type(v) in _MEMO_TYPES for v in kwargs.values()
        ):
            # (with the types: True == 1 == 1.0 for a dict key, not for a config's uid;
            # containers are not memoized: (True,) == (1,) too)
            key = tuple((k, type(v), v) for k, v in sorted(kwargs.items()))
        config = self._configs.get(key) if key is not None else None
        if config is None:
            config = self.config(**kwargs)
            if key is not None:
                if len(self._configs) >= _CONFIG_CACHE_SIZE:
                    self._configs.pop(next(iter(self._configs)))
                self._configs[key] = config
        return config.build()

    def __reduce__(self) -> tuple[tp.Any, ...]:
        # decorated at module level, the module attribute is this object (not self.func,
        # which pickle would then refuse as "not the same object"): pickle it by name;
        # not in a script (__main__), which a job's process does not run: by value then
        module = self.func.__module__
        if module == "__main__":
            import cloudpickle  # (a dependency of submitit)

            return (_from_script, (cloudpickle.dumps(self.func), self.infra))
        if _lookup(module, self.func.__qualname__) is self:
            return (_lookup, (module, self.func.__qualname__))
        return (object.__new__, (type(self),), self.__getstate__())

    def __getstate__(self) -> dict[str, tp.Any]:
        return {"func": self.func, "infra": self.infra}

    def __setstate__(self, state: dict[str, tp.Any]) -> None:
        self.func = state["func"]
        self.infra = state["infra"]
        functools.update_wrapper(self, self.func)
        self._configs = {}


# (folder, module, name, version) -> the function last decorated with that cache folder,
# and the plain values of the module globals it read then
_DEFINITIONS: dict[tuple[str, str, str, str], tuple[tp.Callable[..., tp.Any], dict[str, tp.Any]]]
_DEFINITIONS = {}
_DEFINITIONS_KEPT = 1024
_PLAIN_TYPES = frozenset({int, float, str, bool, bytes, type(None)})


def _check_one_definition_per_folder(
    func: tp.Callable[..., tp.Any], infra: dict[str, tp.Any]
) -> None:
    """Warn when a function with another body, or other captured values, takes the cache
    folder of one decorated before in this process (a cell edited and run again, a
    closure made in a loop): they share the cached results."""
    version = str(infra.get("version", "1"))
    folder = infra.get("folder")
    if folder is None:
        return  # (nothing shared on disk)
    key = (str(Path(folder).absolute()), func.__module__, _qualified(func), version)
    previous, read_before = _DEFINITIONS.get(key, (None, {}))
    read_now = _plain_globals(func)
    _DEFINITIONS.pop(key, None)  # (put back last: the least recently decorated go)
    while len(_DEFINITIONS) >= _DEFINITIONS_KEPT:  # (a loop decorating per folder: bounded)
        _DEFINITIONS.pop(next(iter(_DEFINITIONS), key), None)
    _DEFINITIONS[key] = (func, read_now)
    if previous is None or previous is func:
        return
    if _same_definition(previous, func) and all(
        _same_value(value, read_now.get(name, _EMPTY_CELL)) or _both_nan(value, read_now.get(name))
        for name, value in read_before.items()
    ):
        return
    warnings.warn(
        f"with_infra: {func.__qualname__} (module {func.__module__}) differs from a function "
        f"decorated before under the same name (another body, or other values captured from "
        f"its enclosing scope or read from its module's globals), and both use the cache folder "
        f"{func.__module__}.{_qualified(func)}_FuncConfig.build,{version}: each gets what the "
        f"other cached. Give this one its own version (with_infra(version=...)), rename it, "
        "or clear that folder",
        stacklevel=4,
    )


def _same_definition(first: tp.Callable[..., tp.Any], second: tp.Callable[..., tp.Any]) -> bool:
    """Same code (line numbers aside) and the same captured values."""
    code_a, code_b = getattr(first, "__code__", None), getattr(second, "__code__", None)
    if code_a is None or code_b is None:
        return True  # (not plain functions: nothing to compare)
    if _code_key(code_a) != _code_key(code_b):
        return False
    cells = zip(first.__closure__ or (), second.__closure__ or ())
    return all(_same_value(_cell_value(a), _cell_value(b)) for a, b in cells)


def _plain_globals(func: tp.Callable[..., tp.Any]) -> dict[str, tp.Any]:
    """The module globals a function reads that hold plain values (numbers, strings...):
    a notebook loop decorating it once per value of such a global makes functions that
    differ by it alone."""
    code = getattr(func, "__code__", None)
    space = getattr(func, "__globals__", None)
    if code is None or not isinstance(space, dict):
        return {}
    import dis  # (at decoration only)

    names: set[str] = set()
    stack = [code]
    while stack:
        current = stack.pop()
        # (names read as globals, not attributes: ``Path(p).name`` reads no global "name")
        names.update(i.argval for i in dis.get_instructions(current) if i.opname in _GLOBAL_READS)
        stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    return {n: space[n] for n in names if n in space and type(space[n]) in _PLAIN_TYPES}


_GLOBAL_READS = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})


def _both_nan(a: tp.Any, b: tp.Any) -> bool:
    return type(a) is float and type(b) is float and a != a and b != b


def _code_key(code: types.CodeType) -> tuple[tp.Any, ...]:
    consts = tuple(_code_key(c) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return (code.co_code, consts, code.co_names, code.co_varnames, code.co_freevars)


def _cell_value(cell: tp.Any) -> tp.Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell (a name assigned after the function is made)
        return _EMPTY_CELL


_EMPTY_CELL = object()


def _same_value(a: tp.Any, b: tp.Any) -> bool:
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:  # (arrays: ambiguous truth value)
        return False


def _from_script(func: bytes, infra: dict[str, tp.Any]) -> FunctionWithInfra[..., tp.Any]:
    """A function of a script, pickled by value (as cloudpickle does for its classes)."""
    import cloudpickle

    rebuilt = object.__new__(FunctionWithInfra)
    rebuilt.__setstate__({"func": cloudpickle.loads(func), "infra": infra})
    return rebuilt


def _lookup(module: str, qualname: str) -> tp.Any:
    """The object named ``module.qualname`` (None when it cannot be found)."""
    obj: tp.Any = sys.modules.get(module)
    if obj is None:
        try:
            obj = importlib.import_module(module)
        except ImportError:
            return None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj


def with_infra(**infra: tp.Any) -> tp.Callable[[tp.Callable[P, R]], FunctionWithInfra[P, R]]:
    """Cache a function's calls: ``@with_infra(folder=...)`` then ``f(a=1, b=2)`` (a type
    checker sees the function's own parameters and return type)."""

    def decorate(func: tp.Callable[P, R]) -> FunctionWithInfra[P, R]:
        return FunctionWithInfra(func, **infra)

    return decorate


def validate_kwargs(func: tp.Callable[..., tp.Any], kwargs: dict[str, tp.Any]) -> None:
    """Check that kwargs fit func's signature (missing, unexpected, basic types) before a
    job runs it; raises ValueError/TypeError naming the problem."""
    signature = inspect.signature(func)
    params = signature.parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        extra = sorted(set(kwargs) - set(params))
        if extra:
            raise ValueError(
                f"{func.__qualname__} got unexpected arguments {extra}; it takes {list(params)}"
            )
    missing = [
        name
        for name, p in params.items()
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and name not in kwargs
    ]
    if missing:
        raise ValueError(f"{func.__qualname__} is missing arguments {missing}")
    hints = tp.get_type_hints(func)
    for name, value in kwargs.items():
        hint = hints.get(name)
        if hint in (int, float, str, bool) and not isinstance(value, hint):
            if hint is float and isinstance(value, int) and not isinstance(value, bool):
                continue
            raise TypeError(
                f"{func.__qualname__}: argument {name}={value!r} should be "
                f"{'an' if hint.__name__[:1].lower() in 'aeiou' else 'a'} {hint.__name__}"
            )


def find_slurm_job(job_id: str, folder: str | Path | None = None) -> tp.Any:
    """The submitit job of a Slurm job id, with ``.config`` and ``.uid_config`` (ConfDict)
    of the config it computes; searched in ``folder`` (recursively) or, when None, in the
    closest cache folder above the job's log (its path given by scontrol)."""
    import submitit

    from .graph import registry

    job_id = str(job_id)
    if folder is None:
        out = subprocess.run(
            ["scontrol", "show", "job", job_id.split("_")[0]],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        paths = [part.split("=", 1)[1] for part in out.split() if part.startswith("StdOut=")]
        if not paths:
            raise RuntimeError(
                f"scontrol does not know job {job_id} (give the cache folder instead)"
            )
        folder = _cache_above(Path(paths[0]), job_id)
    name = job_id.replace("/", "-")
    # (a job that refused its config too: its record was set aside, see registry.set_refused)
    for record_path in _job_record_files(Path(folder), name):
        if record_path.suffix not in (".json", registry.REFUSED_SUFFIX):
            continue
        node_folder = record_path.parent.parent
        if node_folder.name.startswith("."):  # (a folder being removed: see ops.clean)
            continue
        records = registry.read_all(node_folder, copied=True, refused=True)
        record = next((r for r in records if r.job_id == job_id), None)
        if record is None:  # (set aside meanwhile: found under its other name)
            continue
        job: tp.Any = submitit.SlurmJob(folder=record.logs_folder(), job_id=job_id)
        # (a task with inputs computes into an inputs-<digest> folder of its config's)
        config_folder = (
            node_folder.parent if node_folder.name.startswith("inputs-") else node_folder
        )
        job.config = ConfDict(read_yaml(config_folder / CONFIG_FILE) or {})
        job.uid_config = ConfDict(read_yaml(config_folder / UID_FILE) or {})
        return job
    raise RuntimeError(f"No record of job {job_id} under {folder}")


# How far above a job's log its cache may be: the default logs are <root>/<method>/logs/
# <user>/<id>/ for a task, one level deeper for a map (its uid folder's logs).
_LOG_DEPTH = 8


def _cache_above(log: Path, job_id: str) -> Path:
    """The cache folder a Slurm job's log is in: the closest folder above it holding node
    folders with job records. Only a few levels are looked at, never the filesystem's root:
    a job whose log is elsewhere (not sent by exca, or logs set outside the cache) would
    have had the whole filesystem searched."""
    from .graph import registry

    for folder in list(log.parents)[:_LOG_DEPTH]:
        if folder == folder.parent:
            break
        if any(
            os.path.isdir(os.path.join(node, registry.JOBS_DIR))
            for step in _subfolders(str(folder))
            for node in _subfolders(step)
        ):
            return folder
    raise RuntimeError(
        f"No exca cache found above the log of job {job_id} ({log}): it was not sent by "
        "exca, or its logs are outside its cache. Give the cache folder: "
        f"find_slurm_job({job_id!r}, folder=...)"
    )


def _subfolders(folder: str) -> list[str]:
    """The folders in a folder; none when it cannot be listed (removed meanwhile, e.g.
    by a cleaning, or not readable): a search goes on with the others."""
    try:
        with os.scandir(folder) as entries:
            return [e.path for e in entries if e.is_dir()]
    except OSError:
        return []


def _job_record_files(folder: Path, name: str) -> tp.Iterator[Path]:
    """The job record files named ``name.*`` in the jobs folders under a folder. A folder
    removed while this walks (a cleaning, another program's) is skipped: rglob raised
    FileNotFoundError then."""
    from .graph import registry

    prefix = name + "."
    for root, dirs, files in os.walk(folder):
        if os.path.basename(root) == registry.JOBS_DIR:
            dirs.clear()  # (records only)
            yield from (Path(root, f) for f in sorted(files) if f.startswith(prefix))


_NOT_NODE_DIRS = frozenset({"data", "claims", "jobs", "logs", "code", "submitit"})


def _uid_files(folder: Path) -> list[Path]:
    """Every uid.yaml under a folder (a cache root, a method folder, a parent of roots...),
    without walking into data, claims, logs or code folders."""
    found = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in _NOT_NODE_DIRS)
        if UID_FILE in files:
            found.append(Path(current) / UID_FILE)
    return found


def _rename_idle(current: Path, target: Path, look: tp.Any = None) -> bool:
    """Rename a legacy-named node folder, unless it is being computed or its job is queued
    or running (a process still using v2 names: renamed under it, its result went into a
    folder made again under the old name, without its yaml files, and the new name
    computed it again). Whether it was renamed (``look``: a registry.QueueLook shared by
    the folders of a run, else squeue is asked for this folder's jobs)."""
    from .ops.clean import held

    try:
        with held(current, look) as hold:
            if hold.busy is not None:
                logger.warning(
                    "Not renaming %s: %s (rename it once it is done)", current, hold.busy
                )
                return False
            # (processes meeting a legacy cache at once rename it at once, e.g. the jobs
            # of an array: another one may have renamed this folder, or made its target)
            try:
                os.rename(current, target)
            finally:  # (renamed meanwhile, by a process not waiting for the hold: there)
                hold.moved_to = target
    except FileNotFoundError:  # (renamed meanwhile, by another process)
        return False
    except OSError as error:
        if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        logger.warning("Not renaming %s: %s already exists", current, target)
        return False
    return True


def update_uids(folder: str | Path, dryrun: bool = True) -> list[tuple[Path, Path]]:
    """Rename cache folders named with the legacy v2 uid format to the v3 names (reports
    what it would do when dryrun=True). Returns the (old, new) pairs."""
    if not Path(folder).is_dir():
        raise FileNotFoundError(f"update_uids: {folder} is not a folder (a cache folder to scan)")
    renames: list[tuple[Path, Path]] = []
    legacy: list[tuple[Path, Path]] = []
    for uid_file in _uid_files(Path(folder)):
        current = uid_file.parent
        config = read_yaml(uid_file)  # (unreadable: skipped, left alone)
        if config is None:
            continue
        cfg = ConfDict(config)
        old, new = cfg.to_uid(version=2) or "default", cfg.to_uid(version=3) or "default"
        if current.name != old or old == new:
            continue
        target = current.with_name(new)
        if target.exists():
            logger.warning("Not renaming %s: %s already exists", current, target)
            continue
        legacy.append((current, target))
    look = None
    if not dryrun and legacy:
        # the Slurm queue looked at once for the jobs of every folder to rename (a call
        # per folder made 500 folders take 7x longer), see registry.QueueLook
        from .graph import registry
        from .ops.inspect import input_folders

        look = registry.QueueLook()
        look.ask(
            record.job_id
            for current, _ in legacy
            for node_folder in (current, *input_folders(current))
            for record in registry.read_all(node_folder, copied=True)
            if record.cluster == "slurm"
        )
    for current, target in legacy:
        if not dryrun and not _rename_idle(current, target, look):
            continue
        renames.append((current, target))
    for old_path, new_path in renames:
        logger.info("%s %s -> %s", "Would rename" if dryrun else "Renamed", old_path, new_path.name)
    return renames


def rename_class(
    folder: str | Path, old: str, new: str, dryrun: bool = True
) -> exca.ops.rename.Renaming:
    """Migrate a cache root after a pure rename or move of a class, ``old`` and ``new``
    being ``<module>.<Class>`` names: its results, and everything computed from them, are
    found again under the new name (reports what it would do when dryrun=True). Returns
    an ``exca.ops.rename.Renaming`` (``moves``: the (old, new) folder pairs, ``rewrites``:
    the inputs.yaml files rewritten, ``left``: folders busy now). See docs/operating.md."""
    from .ops.rename import rename_class as _rename_class

    return _rename_class(folder, old, new, dryrun=dryrun)


__all__ = [
    "DiscriminatedModel",
    "FuncConfig",
    "FunctionWithInfra",
    "find_slurm_job",
    "rename_class",
    "to_config",
    "to_config_model",
    "update_uids",
    "validate_kwargs",
    "with_infra",
]
