"""The command line: ``python -m exca <command>`` (also installed as ``exca``).

  list    ROOT                  what a cache holds, by step and config
  plan    TARGET [k=v ...]      what running a config would do (dry run)
  explain TARGET [k=v ...]      why each node would compute
  check   TARGET [k=v ...]      resources vs the Slurm cluster, before submitting
  clean   ROOT <what>           free space (preview; --yes to remove); `ROOT node
                                --where k=v`: the configs `list --where k=v` shows
  rename  ROOT OLD NEW          move a renamed class's results (preview; --yes to move)
  logs    FOLDER                stdout/stderr of a node's (or a map item's) job

TARGET is package.module:Class.method (decorated with an infra); its config comes
from --config FILE.yaml and key=value overrides (dotted keys). Or package.module:function,
a function of no argument returning a node or a list of nodes (a pipeline's targets).
`exca COMMAND --help` gives a command's options; docs/cli.md has examples.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import os
import shlex
import sys
import traceback
import types
import typing as tp
from pathlib import Path

from ..confdict import ConfDict
from ..plainyaml import pyyaml
from ..storage import saidonce

if tp.TYPE_CHECKING:  # (the commands import what they use when run: a fast --help)
    from ..graph.registry import QueueLook
    from .clean import CleanPlan

DEFAULT_LOG_DAYS = 30.0  # `clean logs` removes the logs older than this


def _colon_hint(target: str) -> str:
    """A TARGET written with dots only, e.g. a step name copied from `exca list`
    (``myexp.Train.fit,1``): the TARGET it likely means, else ''."""
    if ":" in target:
        return ""
    step, _, version = target.partition(",")
    parts = step.split(".")
    if len(parts) < 2 or not all(p.isidentifier() for p in parts):
        return ""
    if version or len(parts) >= 3:  # (<module>.<Class>.<method>[,<version>])
        if len(parts) < 3:
            return ""
        guess = f"{'.'.join(parts[:-2])}:{parts[-2]}.{parts[-1]}"
    else:  # (<module>.<function>)
        guess = f"{parts[0]}:{parts[1]}"
    said = " (`exca list` names steps <module>.<Class>.<method>,<version>)"
    return f": did you mean {guess!r}?" + (said if version else "")


def _target_nodes(
    target: str, config: str | list[str] | None, overrides: list[str]
) -> list[tp.Any]:
    """The nodes of TARGET: ``module:Class.method`` for a config (yaml file + overrides),
    or ``module:function``, a function of no argument returning a node or a list of nodes
    (a pipeline's targets: nodes with inputs cannot be made from a config alone)."""
    if ":" not in target or not target.split(":", 1)[1]:
        raise ValueError(
            "TARGET must look like package.module:Class.method (or package.module:function "
            f"returning nodes), got {target!r}{_colon_hint(target)}"
        )
    if "." in target.split(":", 1)[1]:
        return [_target_node(target, config, overrides)]
    from ..graph.node import Node

    module_name, _, name = target.partition(":")
    made = getattr(_import_target_module(target, module_name), name, None)
    if made is None:
        raise ValueError(f"{target!r}: {module_name} has no {name} (check TARGET)")
    if isinstance(made, type):
        raise ValueError(
            f"{target!r}: {name} is a class: name its decorated method, "
            f"package.module:{name}.method (or a function returning nodes)"
        )
    # (an option of another command, a typo: not an override given to it; also written
    # with '=': a function takes no override, so --folder=x is no config value either)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        name, _, value = unknown[0].partition("=")
        written = f" (in {unknown[0]!r})" if value else ""
        raise ValueError(
            f"{name!r}{written} is not an option of this command: see --help (a TARGET naming "
            "a function takes no config values: its code builds the nodes, folders included)"
        )
    if config or overrides:
        raise ValueError(
            f"TARGET {target} names a function: it takes no --config nor key=value overrides "
            "(its code builds the nodes)"
        )
    if callable(made) and not isinstance(made, Node):
        try:
            inspect.signature(made).bind()
        except TypeError as error:  # (the user's own TypeErrors keep their traceback)
            raise ValueError(
                f"{target}: the function is called with no argument ({error}): name a "
                "function of no argument that builds the nodes"
            ) from None
        except ValueError:  # (no signature to read: a builtin, say; called as it is)
            pass
        try:
            made = made()
        except Exception as error:
            _raise_from_target(error, f"calling {name}(), the function of TARGET {target}, failed")
        gave = f"{name}() returned"
    else:
        gave = f"{name} holds"
    if isinstance(made, Node):
        return [made]
    kind = type(made).__name__
    if isinstance(made, tp.Mapping):
        # (nodes by name, {"baseline": node, ...}: its values are the targets; iterated,
        # its keys were taken for them, "gave dict holding str ('baseline')")
        keys = {id(value): key for key, value in made.items()}
        other = next((v for v in made.values() if not isinstance(v, Node)), None)
        if other is not None:
            raise ValueError(
                f"{target}: {gave} a {kind} whose value for {keys[id(other)]!r} is "
                f"{type(other).__name__} ({other!r:.80}), not a node: a {kind}'s values are "
                "the nodes to plan (e.g. return {'name': obj.method.node(...), ...}), or "
                "return a list of nodes"
            )
        if not made:
            raise ValueError(
                f"{target}: {gave} no node (an empty {kind}): give the nodes to plan (e.g. "
                "return {'name': obj.method.node(...), ...})"
            )
        return list(made.values())
    if isinstance(made, str | bytes) or not isinstance(made, tp.Iterable):
        raise ValueError(
            f"{target}: gave {type(made).__name__} ({made!r:.80}), expected a node or a list "
            "of nodes (e.g. return [obj.method.node(...), ...])"
        )
    try:  # (any iterable: a generator's body runs now, its errors are the function's)
        nodes = list(made)
    except Exception as error:
        _raise_from_target(error, f"iterating what {gave}, for TARGET {target}, failed")
    if not nodes:
        raise ValueError(
            f"{target}: {gave} no node (an empty {type(made).__name__}): give the nodes to "
            "plan (e.g. return [obj.method.node(...), ...])"
        )
    other = next((n for n in nodes if not isinstance(n, Node)), None)
    if other is not None:
        raise ValueError(
            f"{target}: gave {type(made).__name__} holding {type(other).__name__} "
            f"({other!r:.80}), expected a node or a list of nodes (e.g. return "
            "[obj.method.node(...), ...])"
        )
    return nodes


def _raise_from_target(error: Exception, where: str) -> tp.NoReturn:
    """An error of a TARGET function's code: one of the types main prints as one line
    ("exca: error: ValueError: ...", as if exca refused something) said as raised there,
    where; the others keep their traceback, with a note saying where."""
    if isinstance(error, ImportError | ValueError | RuntimeError | OSError):
        frames = traceback.extract_tb(error.__traceback__)[1:]  # (from its code on)
        at = f" (raised at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
        raise ValueError(f"{where}: {type(error).__name__}: {error}{at}") from error
    error.add_note(where)
    raise error


@contextlib.contextmanager
def _current_folder_on_path() -> tp.Iterator[None]:
    """TARGET modules are found from the current folder (first on sys.path, as for
    ``python -m``) during a command only: main called in a process (a notebook, tests)
    left a copy of it on sys.path per command, for good (a later import in the process
    found the modules of a folder it had left)."""
    folder = str(Path.cwd())
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        if folder in sys.path:  # (the first copy: this one, unless the command put another)
            sys.path.remove(folder)


def _import_target_module(target: str, module_name: str) -> tp.Any:
    try:
        return importlib.import_module(module_name)
    except Exception as error:
        # (main prints these errors as one line: without this, nothing says the TARGET's
        # module failed, e.g. a missing dependency of it)
        where = f"importing {module_name!r}, the module of TARGET {target}, failed"
        if isinstance(error, ModuleNotFoundError) and error.name == module_name:
            where += " (modules are found from the current folder and sys.path)"
        if isinstance(error, ImportError | ValueError | RuntimeError | OSError | SyntaxError):
            frames = traceback.extract_tb(error.__traceback__)
            at = f" (raised at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
            if isinstance(error, SyntaxError) or (
                isinstance(error, ModuleNotFoundError) and error.name == module_name
            ):
                at = ""  # (its message says where; the TARGET's module not found: importlib)
            raise ImportError(f"{where}: {type(error).__name__}: {error}{at}") from error
        error.add_note(where)  # (other errors keep their traceback)
        raise


def _target_node(target: str, config: str | list[str] | None, overrides: list[str]) -> tp.Any:
    """Build the node of ``module:Class.method`` for a config (yaml files, merged in
    order, + overrides)."""
    module_name, _, attr = target.partition(":")
    class_name, _, method = attr.rpartition(".")
    module = _import_target_module(target, module_name)
    cls: tp.Any = module
    parts = class_name.split(".")
    for position, part in enumerate(parts):  # (a nested class: Outer.Inner.method)
        found = getattr(cls, part, None)
        if found is None and cls is not module:
            raise ValueError(
                f"{target!r}: {cls.__name__} has no {part!r} (check TARGET: "
                "package.module:Class.method)"
            )
        if found is not None and not isinstance(found, type) and position < len(parts) - 1:
            raise ValueError(
                f"{target!r}: {part} in {module_name} is not a class (check TARGET: "
                "package.module:Class.method, with nothing after the method)"
            )
        cls = found
        if cls is None:
            break
    if cls is not None and not isinstance(cls, type):
        raise ValueError(
            f"{target!r}: {class_name} in {module_name} is not a class (check TARGET: "
            "package.module:Class.method)"
        )
    from ..infra.method import InfraMethod

    def decorated_methods() -> str:
        assert cls is not None
        names = {n for k in cls.__mro__ for n in vars(k)}
        found = [n for n in names if isinstance(inspect.getattr_static(cls, n, None), InfraMethod)]
        return ", ".join(sorted(found)) or "none"

    if cls is None:
        raise ValueError(f"{target!r}: {module_name} has no {class_name} (check TARGET)")
    if not hasattr(cls, method):
        raise ValueError(
            f"{target!r}: {class_name} has no method {method!r} (check TARGET); decorated "
            f"methods of {class_name}: {decorated_methods()}"
        )
    if not isinstance(inspect.getattr_static(cls, method), InfraMethod):
        parent = next(
            (k for k in cls.__mro__[1:] if isinstance(vars(k).get(method), InfraMethod)), None
        )
        note = (
            f" ({class_name} overrides {parent.__name__}.{method}, which is)"
            if parent is not None
            else ""
        )
        raise ValueError(
            f"{target!r}: {method} is not decorated with an infra (@infra.apply){note}: "
            "only decorated methods have a cache to plan; decorated methods of "
            f"{class_name}: {decorated_methods()}"
        )
    yaml = pyyaml()

    cfg = ConfDict()  # (merging a file applies its "=replace=" markers)
    # (--config given several times: merged in order, each onto what the ones before set)
    for file in [config] if isinstance(config, str) else config or []:
        try:
            # (read and parsed once: a pipe, --config <(make_config), reads empty the
            # second time, and a slow file or a big config is paid once)
            text = Path(file).read_text(encoding="utf8")
            data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            # (a file that is empty or only comments gives no values, as an empty mapping)
            if data is not None:
                cfg.update(ConfDict._from_loaded(data, text))
        except (yaml.YAMLError, TypeError, UnicodeDecodeError) as error:
            raise ValueError(
                f"--config {file}: not a yaml mapping of config values ({error})"
            ) from None
        except OSError as error:  # (a typo, a folder: say which option named it)
            raise ValueError(
                f"--config {file}: cannot read it ({error.strerror or error})"
            ) from None
    for override in overrides:
        key = override.removeprefix("--").partition("=")[0]
        if "=" not in override or not key.strip() or key.startswith("-"):
            hint = " (and not an option of this command: see --help)" if override[:1] == "-" else ""
            raise ValueError(f"override {override!r}: expected key=value, e.g. optim.lr=0.01{hint}")
    retyped: dict[str, str] = {}  # (values yaml did not read as a str: no, on, 123...)
    args = ConfDict()  # the overrides, a patch merged into the file's config at the end
    for override in overrides:  # (in order: "seeds=[1,2,3] seeds.2=5" indexes the new list)
        arg = override if override.startswith("--") else f"--{override}"
        for key, value in ConfDict.from_args([arg]).flat().items():
            if isinstance(value, str) and value:  # values from the command line are strings
                text, value = value, None
                try:
                    value = yaml.safe_load(text)  # (not the file's: yaml typed them already)
                except yaml.YAMLError as error:
                    raise ValueError(
                        f"{key}={text}: the value is not valid yaml (quote it as a string: "
                        f"'{key}=\"{text}\"'): {error}"
                    ) from None
                if not isinstance(value, str):
                    retyped[key] = text
            _put_indexed_lists(cls, cfg, args, key, override)
            args[key] = value
    cfg.update(args)
    import pydantic

    try:
        obj = cls(**cfg)
    except pydantic.ValidationError as error:
        # (a value yaml typed that a str field refused: not an unknown key, nor a number
        # out of its field's range)
        invalid = {
            ".".join(map(str, e["loc"]))
            for e in error.errors()
            if e["type"] in ("string_type", "literal_error", "enum", "path_type")
        }
        quoted = [f"'{k}=\"{v}\"'" for k, v in retyped.items() if k in invalid]
        from ..infra.typos import unknown_keys

        notes = _infra_settings_given(cls, error) + unknown_keys(cls, error)
        if quoted:
            notes.append(f"overrides are read as yaml; for a string, quote it: {', '.join(quoted)}")
        text = _without_python_hints(_as_overrides(str(error), cls, method), cls, error)
        if not notes and text == str(error):
            raise
        raise ValueError("\n".join([text, *(f"({n})" for n in notes)])) from None
    bound = getattr(obj, method)
    try:
        return bound.node()
    except TypeError as error:  # a map (items) or a method with parameters
        raise ValueError(
            f"{target}: cannot build its node from a config alone ({error}); name a "
            "function of your module returning the nodes instead (package.module:function), "
            "or plan it from Python: exca.graph.plan(obj.method.node(...))"
        ) from None


# (what the infra's errors tell a python caller to set, and how to give it here)
_PYTHON_HINTS = ("set infra folder=...", "set folder=...")


def _as_overrides(text: str, cls: type, method: str) -> str:
    """An infra's error as the command line takes its settings: "set infra folder=..."
    (what a python caller writes) says ``infra.folder=PATH``, the override to give, with
    the name of the TARGET method's infra field."""
    import inspect

    name = getattr(inspect.getattr_static(cls, method, None), "infra_name", "") or "infra"
    for hint in _PYTHON_HINTS:
        text = text.replace(hint, f"give {name}.folder=PATH")
    return text


def _infra_settings_given(cls: type, error: tp.Any) -> list[str]:
    """What to write for each key the class refused that is a setting of its infra
    (``--folder=x`` or ``folder=x`` for ``infra.folder=x``)."""
    notes = []
    for key, infras in _infra_settings_in(cls, error):
        written = " or ".join(f"{name}.{key}=VALUE" for name in infras)
        notes.append(f"{key} is a setting of the infra, not of the config: write {written}")
    return notes


def _without_python_hints(text: str, cls: type, error: tp.Any) -> str:
    """The error without how a python caller gives a setting of the infra (the command
    line says its own way, once: _infra_settings_given)."""
    from ..infra.typos import infra_setting_said

    for key, infras in _infra_settings_in(cls, error):
        text = text.replace(infra_setting_said(cls, key, infras), "")
    return text


def _infra_settings_in(cls: type, error: tp.Any) -> list[tuple[str, list[str]]]:
    """The keys the class refused that are settings of its infra fields, with those."""
    from ..infra.typos import infras_with

    found = []
    for e in error.errors():
        if e["type"] == "extra_forbidden" and len(e["loc"]) == 1:
            key = str(e["loc"][0])
            infras = infras_with(cls, key)
            if infras:
                found.append((key, infras))
    return found


_MISSING: tp.Any = object()


def _put_indexed_lists(cls: type, cfg: ConfDict, args: ConfDict, key: str, override: str) -> None:
    """Let the numbers of an override's dotted key index the lists of the config: the
    list indexed (of the overrides before, of the --config file ``cfg``, else of the
    class's defaults) is put whole into the overrides ``args`` (``seeds.0=5`` changes
    item 0 of the default ``seeds``, instead of replacing the list with ``{'0': 5}``).
    An index past the end of such a list is an error naming the key."""
    parts = key.split(".")
    for i in range(1, len(parts)):
        if not parts[i].isdigit():
            continue
        prefix = ".".join(parts[:i])
        merged = cfg | args  # (what the config holds so far)
        held = merged.get(prefix, _MISSING)
        if held is _MISSING:
            current, source = _config_default(cls, merged, parts[:i]), "the class default"
        else:
            current, source = held, "given before (--config or an override)"
        if not isinstance(current, list | tuple):
            continue  # (not a list: a dict with numbered keys, or nothing to index)
        if int(parts[i]) >= len(current):
            shown = repr(_exported(current))
            now = f", now {shown}" if len(shown) <= 80 else ""
            indices = f"indices 0 to {len(current) - 1}" if current else "empty"
            raise ValueError(
                f"override {override!r}: index {parts[i]} is out of range of {prefix!r}, a "
                f"list of {len(current)} item(s) ({indices}; {source}{now}): to change its "
                f"length, give the whole list, e.g. '{prefix}=[...]'"
            )
        if not isinstance(args.get(prefix), list | tuple):
            args[prefix] = _exported(current)  # (whole: merging a patch replaces lists)


def _config_default(cls: type, cfg: ConfDict, parts: list[str]) -> tp.Any:
    """The value building ``cls(**cfg)`` gives at a dotted path that ``cfg`` does not
    hold: field defaults (of a sub-model that ``cfg`` gives as a dict: its class's
    defaults, as pydantic rebuilds it), or ``_MISSING`` when it cannot tell."""
    import pydantic

    from ..infra import identity

    value: tp.Any = cls  # a model class (rebuilt from a dict of cfg), or a value
    given: tp.Any = cfg  # what cfg holds at this level (_MISSING: nothing)
    for index, part in enumerate(parts):
        if isinstance(given, list | tuple):
            return _MISSING  # (cfg's own list: indexed as it is)
        sub = dict.get(given, part, _MISSING) if isinstance(given, dict) else _MISSING
        model = value if isinstance(value, type) else type(value)
        if issubclass(model, pydantic.BaseModel):
            field = model.model_fields.get(part)
            if field is None:
                return _MISSING
            annotated = identity.annotated_models(field.annotation)
            last = index == len(parts) - 1
            if isinstance(sub, dict) or (not last and _is_model_field(field.annotation)):
                # rebuilt from a dict (cfg's, or the one this override makes of it): its
                # class's defaults, not those of the field's default instance
                if len(annotated) != 1:
                    return _MISSING
                value = annotated[0]
            elif isinstance(value, type):
                if field.is_required():
                    return _MISSING
                try:
                    value = field.get_default(call_default_factory=True)
                except Exception:  # (a factory of the validated data...: cannot tell)
                    return _MISSING
            else:
                value = getattr(value, part)
        elif isinstance(value, dict) and not isinstance(sub, dict):
            value = value.get(part, _MISSING)
        elif isinstance(value, list | tuple) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
        given = sub
    return value


def _is_model_field(annotation: tp.Any) -> bool:
    """Whether a field holds a model (or an optional one, or a union of models): not a
    container of them, whose next dotted part is an index or a key."""
    import pydantic

    if tp.get_origin(annotation) is tp.Annotated:
        return _is_model_field(tp.get_args(annotation)[0])
    args = [a for a in tp.get_args(annotation) if a is not type(None)]
    if args and tp.get_origin(annotation) in (tp.Union, types.UnionType):
        return all(_is_model_field(a) for a in args)
    return isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)


def _exported(value: tp.Any) -> tp.Any:
    """A default value as config data (models as their config dicts; containers copied)."""
    import pydantic

    if isinstance(value, pydantic.BaseModel):
        # (every field as it is: a json export masks secrets and drops excluded fields,
        # which then came back as "**********" or their defaults)
        return {name: _exported(field) for name, field in value}
    if isinstance(value, list | tuple):
        return [_exported(v) for v in value]
    if isinstance(value, dict):
        return {k: _exported(v) for k, v in value.items()}
    return value


def _resource_problems(plan: tp.Any) -> list[tuple[str, str]]:
    """Resources of every node going to Slurm that the cluster cannot give (cached nodes
    too: a check is asked before changing or forcing a config)."""
    from ..graph.executors import resolve_cluster
    from ..graph.slurm_check import problems, unreadable

    out: list[tuple[str, str]] = []
    for node in plan.graph.nodes.values():
        if resolve_cluster(node.execution.cluster) == "slurm":
            reason = unreadable()  # (else "Resources fit": nothing was checked)
            if reason is not None:
                return [("", reason)]  # (not a problem of one node)
            out.extend((node.uid, problem) for problem in problems(node.execution))
    return out


def _item_not_cached(folder: Path, item: str) -> str:
    """What ``exca logs FOLDER --item ITEM`` adds when no job computed that item and it
    is not an item of the folder (a typo, an item of another config): say so, with some
    item uids that are there ("" when it is there; a task's folder: that --item is for maps)."""
    from ..graph.node import TASK_KEY
    from ..storage.cachedict import inspecting_view

    try:
        items = sorted(inspecting_view(folder).entries_info())
    except OSError:  # (unreadable: nothing more to say)
        return ""
    if TASK_KEY in items:
        return " (--item selects the chunk job of a map's item: this is a task)"
    if item in items:
        return ""
    some = ", ".join(repr(i) for i in items[:3]) + (", ..." if len(items) > 3 else "")
    held = f"its {len(items)} item(s): {some}" if items else "it holds no item"
    return (
        f"; no item {item!r} is cached there ({held}: item uids, as the map's item_uid gives them)"
    )


def _why_nothing(folder: Path) -> str:
    """What ``exca logs`` adds for a node folder without job nor anything cached: why,
    when an input of it failed (its inputs.yaml tells), else where to look."""
    from ..storage.cachedict import inspecting_view
    from ..storage.claims import Claims
    from .inspect import upstream_problems

    claims = Claims(folder).current()
    computing = [c.owner.describe() for c in claims if not c.hold]
    if computing:  # (where it was called, or by another node's job: no log of its own)
        return (
            f"; it is being computed right now by {computing[0]} (where it was called, or in "
            "another node's job: its output goes there, no log file here)"
        )
    if claims:  # (a removal's hold, `exca clean`: nothing computes it)
        return f"; its folder is being removed or renamed by {claims[0].owner.describe()}"
    if inspecting_view(folder).entries_info():
        # (no job wrote what it holds, or its records are gone: no log to show)
        return (
            ": what it holds was computed where it was called (cluster=None or a pool: no "
            "log), or its job records were removed"
        )
    problems = upstream_problems(folder)
    if problems:  # (where to look next: that input's folder)
        said = "; ".join(f"{text}: `exca logs {shlex.quote(str(path))}`" for text, path in problems)
        return f"; nothing is cached there, not computed: {said}"
    return (
        "; nothing is cached there: `exca explain TARGET` (exca.ops.explain(node) in python) "
        "tells why it is not computed"
    )


def _clean_json(
    what: str,
    dryrun: bool,
    plan: CleanPlan | None = None,
    merges: tp.Sequence[dict[str, tp.Any]] = (),
    freed: int | None = None,
    merged: int | None = None,
) -> dict[str, tp.Any]:
    """What ``clean --json`` prints, one shape for every WHAT (docs/cli.md lists its
    keys): a preview (``dryrun``) has ``freed`` and ``merged`` null, and no ``failed``
    nor ``skipped`` item; ``compact`` lists ``merges`` (its index files, by folder),
    the others ``removals`` and ``kept``; a key of another WHAT is empty (0 once run)."""
    removals = plan.to_dict() if plan is not None else {"bytes": 0, "removals": [], "kept": []}
    failed = plan.failed if plan is not None and not dryrun else []
    skipped = plan.skipped if plan is not None and not dryrun else []
    return {
        "what": what,
        "dryrun": dryrun,
        **removals,
        "merges": list(merges),
        "freed": None if dryrun else (freed or 0),
        "merged": None if dryrun else (merged or 0),
        "failed": [{"path": str(p), "why": why} for p, why in failed],
        "skipped": [{"path": str(p), "why": why} for p, why in skipped],
    }


def _downstream_left(plan: CleanPlan, root: str) -> str:
    """The line saying what a removal without --downstream leaves that was computed from
    it ("" when nothing was): cleaned trainings whose aggregation stays cached are not
    computed again by the next run, which reuses that aggregation."""
    from . import clean

    left = clean.downstream_left(plan, root)
    if not left:
        return ""
    first = os.path.relpath(left[0], os.path.abspath(root))
    more = f" and {len(left) - 1} more" if len(left) > 1 else ""
    return (
        f"\nLeft: {len(left)} node folder(s) computed from these ({first}{more}): they stay "
        "cached, and a run that reuses them does not compute these again; --downstream "
        "removes them too"
    )


def _clean_outcome(plan: CleanPlan, freed: int) -> str:
    """What ``clean --yes`` did, after the preview it prints: how many of the items listed
    "to remove" were removed, and how many were kept (in use since the preview, each
    named) or could not be removed."""
    from .inspect import human_size

    if not plan.removals:
        return ""
    total = len(plan.removals)
    removed = total - len(plan.skipped) - len(plan.failed)
    count = f"{removed}" if removed == total else f"{removed} of {total}"
    done = f"Removed {count} item(s), {human_size(freed)} freed"
    if plan.failed:  # (each named by the error, see _clean_failures)
        done += f"; {len(plan.failed)} could not be removed (said below)"
    if not plan.skipped:
        return done + "."
    kept = "".join(f"\n  - {path}  ({why})" for path, why in plan.skipped)
    return f"{done}; {len(plan.skipped)} kept, in use since the preview:{kept}"


def _clean_failures(plan: CleanPlan) -> str:
    """The error of ``clean --yes`` that could not remove some items: each, and why (with
    what to do: the disk to free, the owner to ask...)."""
    items = "".join(f"\n  - {path}: {why}" for path, why in plan.failed)
    return (
        f"could not remove {len(plan.failed)} of {len(plan.removals)} item(s):{items}\n"
        "Once that is fixed, run the same command again: it lists only what is left"
    )


def _listed(
    root: str,
    step: str | None,
    where: list[str],
    status: str | None,
    filters: str,
    look: QueueLook | None = None,
) -> tuple[list[tp.Any], str]:
    """The nodes `list` shows (inspect's selection: the one of `list` and `clean node
    --where`) and, when there are none, why (a step matching nothing, a key no config
    has...; ``filters``: the options the command takes). Notes on conditions that match
    None only go to stderr. The Slurm queue is asked once (``look``: shared with what the
    caller does next, e.g. a removal), however many times the cache is described."""
    from ..graph import registry

    if look is None:
        look = registry.QueueLook()
    from .inspect import (
        close_keys,
        input_path_problems,
        inspect,
        keys_in_list_items,
        keys_no_config_has,
        keys_outside_uids,
        null_condition_hints,
        path_hint,
        reads_as_null,
        step_selects,
    )

    # (every node of the step, unfiltered: said why nothing matched without describing
    # the cache again, 5k config folders taking seconds)
    described: list[tp.Any] = []
    infos = inspect(root, step=step, where=where, status=status, look=look, described=described)
    if any(reads_as_null(c.partition("=")[2].strip()) for c in where):
        # (configs holding the text "null" are not matched: say how they would be)
        for hint in null_condition_hints(described, where):
            print(f"exca: note: {hint}", file=sys.stderr)
    if infos:
        return infos, ""
    every = described if step is None else inspect(root, look=look)
    if not every:
        return infos, _no_node_found(root)
    text = f"No cached node matches {filters}."
    if step is not None and not described:
        there = sorted({i.step for i in every})
        # (a typo: an error, exit 2, as `clean --step` says it; a step folder holding no
        # node now, all removed, is a step still: nothing matches there)
        empty = [name for name in sorted(_step_folders(root)) if step_selects(step, name)]
        if not empty:
            raise ValueError(f"--step {step!r} matches no step of {root}: {', '.join(there)}")
        text = (
            f"--step {step!r} matches step folders of {root} holding no node: {', '.join(empty)}."
        )
    unknown = keys_no_config_has(every, where)
    hints = []
    for key in unknown:  # (a path into an input naming nothing: an error saying why)
        problems, inputs = input_path_problems(every, key)
        if problems:
            raise ValueError(f"--where {key}: " + "; ".join(problems))
        hints += inputs
    outside = keys_outside_uids(every, unknown)  # (an excluded field, or an infra's)
    absent = [key for key in unknown if key not in outside]
    if absent:
        text += f" No config has a key {', '.join(map(repr, absent))}: see `exca list ROOT`."
    if outside:
        text += (
            f" {', '.join(map(repr, outside))} is in the configs' config.yaml but not in their "
            "uid (excluded from it, e.g. by _exclude_from_cls_uid, or an infra field): --where "
            "matches the uid's values only."
        )
    for key in absent:
        inside = keys_in_list_items(every, key)
        if inside:  # (held by list items: named with the indices only)
            text += f" {key!r} is in list items: give its indices, e.g. {inside[0]}."
        else:
            held = path_hint(every, key)  # (a wrong index or dict key: what there is)
            close = [] if held else close_keys(every, key)
            if held:
                text += f" For {key!r}: {held}."
            elif close:
                text += f" For {key!r}: did you mean {' or '.join(map(repr, close))}?"
    if hints:  # (the steps with inputs: where a key may start with an input's name)
        names = "; ".join(dict.fromkeys(hints))
        text += f" A key may start with the name of an input, to reach into its config: {names}."
    return infos, text


def _step_folders(root: str) -> list[str]:
    """The names of the step folders (``<module>.<Class>.<method>,<version>``) directly
    in ``root``, those holding no node folder too."""
    from .inspect import INPUTS_PREFIX, is_node_folder

    path = Path(os.path.abspath(root))
    if is_node_folder(path) or path.name.startswith(INPUTS_PREFIX):
        return []  # (a node folder: its sub-folders are no steps)
    try:
        entries = list(os.scandir(path))
    except OSError:
        return []
    # (ROOT a step folder: its node folders' names may hold "," too, they are no steps)
    return [
        e.name for e in entries if "," in e.name and e.is_dir() and not is_node_folder(Path(e.path))
    ]


def _no_cache(root: Path, as_json: bool) -> str:
    """What `clean` says of a ROOT holding no node folder ("" when it holds some): no
    cache there (a root given wrong: the project's folder, a parent of the cache...).
    Under --json, said on stderr too."""
    from .inspect import node_folders

    if any(node_folders(root)):
        return ""
    said = _no_node_found(root)
    if as_json:
        print(f"exca: note: {said}", file=sys.stderr)
    return said


def _recent_logs(plan: CleanPlan, days: float) -> str:
    """What `clean logs` adds about the log folders it leaves as too recent: "Nothing to
    remove." alone read as "no logs" to a user whose jobs ended this week (and a --days 0
    leaving some said nothing of them)."""
    said = []
    if plan.recent:
        said.append(
            f"({len(plan.recent)} log folder(s) of jobs that ended less than {days:g} day(s) "
            "ago are left: --days N takes those older than N days, --days 0 those of every "
            "ended job)"
        )
    if plan.starting:
        said.append(
            f"({len(plan.starting)} log folder(s) that no job record names were written to "
            "in the last hour: left, as their job may be being submitted; a clean an hour "
            "after their last write takes them)"
        )
    return "\n".join(said)


def _no_node_found(root: Path | str) -> str:
    """Why a ROOT lists nothing, naming its sub-folders that are caches: a root given one
    level too high (the examples' ./demo-cache holds the caches task/, map/...)."""
    said = (
        f"No cached node found in {root}: it holds no <module>.<Class>.<method>,<version> "
        "folder (give an infra's folder)"
    )
    inside = _caches_inside(Path(root))
    if inside:
        shown = ", ".join(str(Path(root) / name) for name in inside[:_CACHES_SHOWN])
        more = f" and {len(inside) - _CACHES_SHOWN} more" if len(inside) > _CACHES_SHOWN else ""
        said += f"; cache folders inside it: {shown}{more}"
    return said


_CACHES_SHOWN = 5  # sub-folders named by _no_node_found
_SUBFOLDERS_LOOKED_AT = 200  # (a root given far too high, e.g. a home folder: a bound)


def _caches_inside(root: Path) -> list[str]:
    """Names of the sub-folders of ``root`` that hold node folders (sorted)."""
    from .inspect import node_folders

    try:
        subs = sorted(e.name for e in os.scandir(root) if e.is_dir() and "," not in e.name)
    except OSError:  # (no folder, a file, not readable: the message says enough)
        return []
    return [n for n in subs[:_SUBFOLDERS_LOOKED_AT] if any(node_folders(root / n))]


def _print(data: tp.Any, as_json: bool, text: str) -> None:
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(text)


def _result_job(folder: Path) -> tp.Any:
    """The id of the job that computed a task folder's result (None: where it was called;
    for a map, no result, or a result of an older exca: the last job recorded)."""
    from ..graph import registry
    from ..graph.node import TASK_KEY
    from ..storage.cachedict import inspecting_view
    from .inspect import result_job

    entry = inspecting_view(folder).entries_info().get(TASK_KEY)
    job = result_job(entry)
    if not isinstance(job, str | None):  # (unknown)
        records = registry.read_all(folder, copied=True)
        return records[-1].job_id if records else None
    return job


def _not_started(job_id: str, cluster: str) -> str | None:
    """How a Slurm job that wrote no log yet waits (pending in the queue, or starting),
    else None (it ended, or is not a Slurm job)."""
    if cluster != "slurm":
        return None
    from ..graph import registry

    state = registry.queue_state(job_id)
    if state is None:
        return None
    reason = registry.held(job_id)  # (squeue said it, in the call just made)
    if state == "PENDING" and reason is not None:
        return registry.held_words(job_id, reason)
    if state == "PENDING":
        return f"is still pending in Slurm's queue (`squeue -j {job_id}` says why)"
    return f"is {state.lower()} in Slurm's queue and has not written its log yet"


def _holds_task_result(folder: Path) -> bool:
    """Whether a node folder holds a task's result or cached error (computed inline, say:
    then a job whose record was dropped is not what made it)."""
    from ..graph.node import TASK_KEY
    from ..storage.cachedict import inspecting_view

    return TASK_KEY in inspecting_view(folder).entries_info()


def _ended_by_method(job_id: str, log: str) -> str | None:
    """What ``exca logs`` notes of a job whose method raised KeyboardInterrupt or called
    sys.exit (from its log), else None. A task's job cached nothing; a map's job kept the
    items it computed before, which its log counts (a log of an older exca does not)."""
    from ..graph.errors import RAISED_INTERRUPT, exit_said, interrupt_said

    interrupted = interrupt_said(log)
    exited = exit_said(log) if interrupted is None else None
    said = interrupted or exited
    if said is None:
        return None
    if " while computing item " not in said:  # (a task's job: where its method was)
        if interrupted is not None:
            return (
                f"job {job_id}'s method raised KeyboardInterrupt"
                f"{said[len(RAISED_INTERRUPT) :]}: nothing was cached for the task; the "
                "next call computes it"
            )
        return (
            f"job {job_id} ended on a sys.exit of its method: {said}; nothing was cached "
            "for what it left; the next call computes it"
        )
    if interrupted is not None:  # (what follows the words: the item, and what was cached)
        note = f"job {job_id}'s method raised KeyboardInterrupt{said[len(RAISED_INTERRUPT) :]}"
    else:
        note = f"job {job_id} ended on a sys.exit of its method: {said}"
    return f"{note}; the next call computes the items it left"


def _unrecorded_note(job: tp.Any, folder: Path) -> str:
    """What ``exca logs`` says of a job no record names any more (see unrecorded_job)."""
    from ..graph import executors
    from ..graph.errors import RAISED_INTERRUPT, exit_said
    from ..storage.cachedict import inspecting_view

    note = (
        f"no record names job {job.job_id} any more (found through the node's submitit "
        "link): the call that submitted it cancelled it (a Ctrl-C of it stops its local "
        "jobs), or node.clear() dropped its record"
    )
    try:
        if RAISED_INTERRUPT in job.stderr():
            note += "; its method raised KeyboardInterrupt"
        elif exit_said(job.stderr()) is not None:
            note += "; its method called sys.exit"
        elif " was cancelled " in (
            executors._cancelled_local_job(job.job_id, job.stderr_path) or ""
        ):
            note += "; its log ends on the SIGINT that cancelling a job sends"
    except OSError:
        pass
    if not inspecting_view(folder).entries_info():
        note += "; nothing is cached: the next call computes it"
    return note


def _unrecorded_logs_said(folder: Path) -> str:
    """Where the logs of a node's jobs whose records were dropped may be (``exca logs``
    found no job for it): the job log folders no record names in its step folder."""
    from .clean import unrecorded_logs_near

    found = unrecorded_logs_near(folder)
    if not found:
        return ""
    shown = ", ".join(str(f) for f in found[:5]) + (
        f" (and {len(found) - 5} more)" if len(found) > 5 else ""
    )
    return (
        f"; no job record names {len(found)} job log folder(s) near it (records are dropped "
        f"when the call that submitted a job cancels it, e.g. on a Ctrl-C): {shown}"
    )


def _cached_traceback(folder: Path, item: str | None) -> str | None:
    """The traceback of a node's cached error (of an item's, for a map), if it holds one."""
    from ..graph.node import TASK_KEY
    from ..storage.cachedict import inspecting_view

    entry = inspecting_view(folder).entry(TASK_KEY if item is None else item)
    if entry is None or entry.info.get("#type") != "Error":
        return None
    info = entry.info
    return str(info.get("tb") or f"{info.get('t')}: {info.get('m')}").rstrip()


_ERROR_SHOWN = 1000  # characters of a job's error shown after its log (a message, not a log)


def _task_error_footer(folder: Path, given: str, data: dict[str, tp.Any]) -> str:
    """What ``exca logs FOLDER`` adds after the stdout of the job whose error a task
    caches: its stdout ends with submitit's "Submitted job triggered an exception", the
    error itself is in its stderr (and in the cache); '' when the task holds no error."""
    from ..graph.node import TASK_KEY
    from ..storage.cachederror import record_line
    from ..storage.cachedict import inspecting_view

    entry = inspecting_view(folder).entry(TASK_KEY)
    if entry is None or entry.info.get("#type") != "Error":
        return ""
    # (whole: an upstream failure says which input and what computes it again)
    error = record_line(entry.info, width=_ERROR_SHOWN)
    data["job_error"] = error
    command = f"exca logs {shlex.quote(given)} --stderr"
    return f"\n# (the job failed: {error}; its traceback is in its stderr: `{command}`)"


def _failed_items(folder: Path) -> list[str]:
    """The uids of a map's items whose cached error is there (sorted), none for a task."""
    from ..graph.node import TASK_KEY
    from ..storage.cachedict import inspecting_view

    entries = inspecting_view(folder).entries_info()
    if TASK_KEY in entries:
        return []
    return sorted(k for k, info in entries.items() if info.get("#type") == "Error")


def main(argv: list[str] | None = None) -> int:
    try:
        # (what exca says once per process: once per command, as `python -m exca` says
        # it; main called again in one process, a notebook or the tests, said it once)
        with saidonce.afresh():
            return _main(argv)
    except BrokenPipeError:  # `exca list ROOT | head`: the reader left, nothing to report
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # (the interpreter flushes stdout at exit)
        return 1
    except Exception as error:  # config and cache errors: a message, not a traceback
        import pydantic

        if not isinstance(
            error, pydantic.ValidationError | ValueError | RuntimeError | ImportError | OSError
        ):
            raise
        print(f"exca: error: {type(error).__name__}: {error}", file=sys.stderr)
        for note in getattr(error, "__notes__", ()):  # (what it means: a full disk...)
            print(f"exca: note: {note}", file=sys.stderr)
        return 2


def _with_mode(nodes: list[tp.Any], mode: str) -> list[tp.Any]:
    """The targets in another mode (``--mode``), for a plan: only the targets, as a call of
    theirs in that mode would run (their upstream nodes keep their own modes). A target
    that feeds another target keeps its own too: that target's inputs hold its instance
    (two instances of one node in two modes are refused)."""
    from ..graph.decisions import collect

    feeding = {key for node in nodes for upstream in node.upstream for key in collect([upstream])}
    return [n if n.key in feeding else n.with_mode(mode) for n in nodes]


def _script_steps(target: str, nodes: tp.Iterable[tp.Any]) -> list[str]:
    """What to say of TARGET's classes found only under ``__main__``: ``python train.py``
    caches the classes that the script defines as ``__main__``'s, where TARGET
    ``train:Train.fit`` (its module imported) looks for ``train.Train.fit,1``: the plan
    said "missing" of results that are there."""
    module = target.split(":", 1)[0]
    said: set[str] = set()
    out = []
    for node in nodes:
        if node.root is None or not node.step.startswith(module + "."):
            continue
        script_step = "__main__" + node.step[len(module) :]
        if node.step in said or (node.root / node.step).exists():
            continue
        if not (node.root / script_step).is_dir():
            continue
        said.add(node.step)
        cls = node.step[len(module) + 1 :].split(",", 1)[0].rsplit(".", 1)[0]
        out.append(
            f"{node.root / node.step} does not exist, but {script_step} does: what "
            f"`python {module.replace('.', '/')}.py` computed (the classes of a script that "
            f"is run are __main__'s; TARGET {target} imports them as {module}'s, whose "
            "results go to other folders). Define the classes in a module that the script "
            f"imports, and keep their results with `exca rename {node.root} __main__.{cls} "
            f"{module}.{cls} --yes`"
        )
    return out


def _read_only_command(args: argparse.Namespace) -> int:
    """plan, explain and check."""
    from ..graph.planning import Plan

    nodes = _target_nodes(args.target, args.config, args.overrides)
    if args.mode is not None:
        nodes = _with_mode(nodes, args.mode)
    plan = Plan(nodes)
    if args.command != "check":  # (a typo in the folder reads as "nothing cached")
        roots = {n.root for n in plan.graph.nodes.values() if n.root is not None}
        for root in sorted(r for r in roots if not r.is_dir()):
            print(
                f"exca: warning: cache folder {root} does not exist (yet): nothing is cached there",
                file=sys.stderr,
            )
        for warning in _script_steps(args.target, plan.graph.nodes.values()):
            print(f"exca: warning: {warning}", file=sys.stderr)
    if args.command == "plan":
        if args.mermaid:  # (first: a path it cannot write is an error naming the option)
            try:
                Path(args.mermaid).write_text(plan.to_mermaid())
            except OSError as error:
                raise ValueError(
                    f"--mermaid {args.mermaid}: cannot write it ({error.strerror or error})"
                ) from None
        _print(plan.to_dict(), args.json, str(plan))
    elif args.command == "explain":
        from .explain import explain
        from .explain import render as render_explanations

        explanations = explain(*nodes, plan=plan)
        _print([e.to_dict() for e in explanations], args.json, render_explanations(explanations))
    else:
        from ..graph.executors import resolve_cluster

        problems = _resource_problems(plan)
        text = "\n".join(f"{uid}: {p}" if uid else p for uid, p in problems)
        on_slurm = any(
            resolve_cluster(n.execution.cluster) == "slurm" for n in plan.graph.nodes.values()
        )
        fine = "Resources fit the cluster."
        if not on_slurm:  # (only Slurm resources are checked: say so, not "fit")
            fine = "No node goes to Slurm (cluster=slurm or auto with Slurm): nothing to check."
        _print(
            [{"uid": u or None, "problem": p} for u, p in problems],
            args.json,
            text or fine,
        )
        return 1 if problems else 0
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse's parser whose usage errors read as exca's other errors: one line naming
    the bad value, and where the options are listed (argparse printed its usage block
    first, several lines of options the user did not get wrong)."""

    def error(self, message: str) -> tp.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


class _Once(argparse.Action):
    """An option taking one value, refused when given twice: argparse kept the last value
    silently (`--step A --step B` listed B's step only)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: tp.Any,
        option_string: str | None = None,
    ) -> None:
        given: set[str] = getattr(namespace, "_given_once", set())
        if self.dest in given:
            raise argparse.ArgumentError(
                self,
                f"given twice ({getattr(namespace, self.dest)!r}, then {values!r}): give it once",
            )
        namespace._given_once = given | {self.dest}
        setattr(namespace, self.dest, values)


def _no_run_command(command: str, target: list[str]) -> str:
    """Why `exca run TARGET` is refused, and how to run TARGET (argparse said only
    "invalid choice: 'run'")."""
    module, _, name = (target[0] if target else "").partition(":")
    if module and name and "." not in name:  # (a function returning the targets)
        how = f'python -c "import exca, {module}; exca.graph.run({module}.{name}())"'
    elif module and name:
        cls, _, method = name.rpartition(".")
        how = f'python -c "import {module}; {module}.{cls}(...).{method}()"'
    else:
        how = "exca.graph.run(*nodes), or a call of the decorated method"
    return (
        f"exca has no command {command!r}: the command line plans (plan, explain, check) "
        f"and looks after caches (list, clean, rename, logs), it computes nothing. Run from "
        f"Python: {how} (`exca plan` with the same TARGET shows what that would compute)"
    )


def _main(argv: list[str] | None) -> int:
    parser = _Parser(
        prog="exca",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p_list = sub.add_parser(
        "list",
        help="what a cache folder holds",
        description="What a cache holds: one block per step, one line per config (status, "
        "size, last write, uid, job, error). Reads only.",
    )
    p_list.add_argument(
        "root", help="a cache root (an infra's folder), a step folder or a node folder"
    )
    p_list.add_argument(
        "--step",
        action=_Once,
        help="glob or substring of <module>.<Class>.<method>,<version>",
    )
    p_list.add_argument(
        "--where", action="append", default=[], help="config condition key=value (repeatable)"
    )
    p_list.add_argument(
        "--status",
        action=_Once,
        choices=[
            *("success", "error", "running", "computing", "partial", "empty"),
            *("completed", "failed"),  # (infra.status()'s words: inspect.STATUS_ALIASES)
        ],
        help="only the configs of this status (partial: a map with failed or missing items; "
        "empty: a folder holding no result; infra.status()'s completed and failed are "
        "success and error)",
    )
    p_list.add_argument("--json", action="store_true", help="machine-readable output")

    for name, help_text, description in (
        (
            "plan",
            "dry run of a config",
            "What running TARGET would do: each node's status, action, where it would run "
            "and why, and the submissions. Runs nothing, writes nothing.",
        ),
        (
            "explain",
            "why each node would compute",
            "Why each node of TARGET would compute (never computed, a config differing "
            "from the nearest cached one, a cached error, stale upstream...). Reads only.",
        ),
        (
            "check",
            "check resources against the Slurm cluster",
            "The resources of TARGET's Slurm nodes that the cluster cannot give (partition, "
            "CPUs, GPUs, memory, time limit, constraint, account, qos). Exit status 1 if "
            "any, or if no Slurm controller answers.",
        ),
    ):
        p = sub.add_parser(
            name,
            help=help_text,
            description=description
            + " Example: exca "
            + name
            + " mypkg.exp:Train.fit --config exp.yaml optim.lr=0.02 infra.folder=cache",
        )
        p.add_argument(
            "target",
            help="package.module:Class.method (then key=value overrides), or "
            "package.module:function returning nodes",
        )
        p.add_argument(
            "--config",
            action="append",
            default=[],
            help="yaml file of the config (repeatable: merged in order, then the overrides)",
        )
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "plan":
            p.add_argument(
                "--mermaid", action=_Once, help="write the mermaid picture source to this file"
            )
        p.add_argument(
            "--mode",
            action=_Once,
            choices=["cached", "retry", "force", "read-only"],
            help="as if TARGET's nodes had this infra mode (upstream nodes keep theirs), "
            "e.g. what mode='retry' would recompute; computes nothing",
        )

    p_clean = sub.add_parser(
        "clean",
        help="free space (preview unless --yes)",
        description="Free space in a cache: prints what would be removed, and what is kept\n"
        "and why; --yes removes it. Folders being computed or with a queued or running job\n"
        "are never removed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""what:
  node FOLDER...     these node folders (or --where k=v: the configs `list --where` shows)
  versions           results of older numbered versions of each method
  orphans            files no cache entry refers to, dead claims (older than an hour)
  logs               job log folders of jobs that ended more than --days days ago
  compact            merge the index files of finished writers into one""",
    )
    p_clean.add_argument("root", help="the cache root folder")
    p_clean.add_argument(
        "what",
        choices=["node", "versions", "orphans", "logs", "compact"],
        help="what to free (see below)",
    )
    # (a default: argparse then does not list it among the missing required arguments)
    p_clean.add_argument("folders", nargs="*", default=[], help="node folders (for 'node')")
    p_clean.add_argument(
        "--downstream",
        action="store_true",
        help="also what was computed from them (for 'node' and 'versions')",
    )
    p_clean.add_argument(
        "--step",
        action=_Once,
        help="only these steps (for 'node': of the configs --where selects)",
    )
    p_clean.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="for 'node', instead of FOLDERS: the configs `list --where` shows, key=value "
        "(repeatable)",
    )
    p_clean.add_argument(
        "--days",
        action=_Once,
        type=float,
        default=None,
        help=f"logs older than this (for 'logs'; default {DEFAULT_LOG_DAYS:g})",
    )
    p_clean.add_argument("--yes", action="store_true", help="really remove (default: preview)")
    p_clean.add_argument("--json", action="store_true", help="machine-readable output")

    p_rename = sub.add_parser(
        "rename",
        help="migrate a cache after a class was renamed or moved (preview unless --yes)",
        description="After a pure rename of a class, or its move to another module (no "
        "change of behaviour: else bump its version), move its results, and what was "
        "computed from them, to the names the renamed code looks for; prints what it would "
        "do unless --yes. Example: exca rename cache mypkg.models.Train mypkg.train.Trainer",
    )
    p_rename.add_argument("root", help="the cache root folder")
    p_rename.add_argument("old", help="the class's former name: <module>.<Class>")
    p_rename.add_argument("new", help="its new name: <module>.<Class>")
    p_rename.add_argument("--yes", action="store_true", help="really rename (default: preview)")
    p_rename.add_argument("--json", action="store_true", help="machine-readable output")

    p_logs = sub.add_parser(
        "logs",
        help="stdout/stderr of a node's job",
        description="The stdout of the latest job recorded for a node folder (its cached "
        "traceback for a failure computed inline). Exit status 1 when there is no log.",
    )
    p_logs.add_argument("folder", help="node folder (<root>/<step>/<uid>[/inputs-...])")
    p_logs.add_argument(
        "--item", action=_Once, help="map item uid: the log of the job that computed it"
    )
    p_logs.add_argument("--stderr", action="store_true", help="stderr instead of stdout")
    p_logs.add_argument("--json", action="store_true", help="machine-readable output")

    given = sys.argv[1:] if argv is None else argv
    if not given:  # (a bare `exca`: the commands and what each does, not argparse's complaint)
        parser.print_help()
        return 2
    if given[:1] in (["run"], ["compute"]):  # (what one tries after `exca plan TARGET`)
        raise ValueError(_no_run_command(given[0], given[1:2]))
    # overrides are the arguments left: _target_node explains the misformed ones
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("plan", "explain", "check"):
        overrides = [r for r in rest if "=" in r and not r.startswith("-")]
        why = ": only plan, explain and check take key=value overrides" if overrides else ""
        # (said by the command's parser: its options are what `--help` should list)
        sub.choices[args.command].error(f"unrecognized arguments: {' '.join(rest)}{why}")
    args.overrides = rest
    from .inspect import not_a_folder

    for name in ("root", "folder"):
        path = getattr(args, name, None)
        if path is not None and not Path(path).is_dir():
            kind = "a node folder" if name == "folder" else "a cache folder"
            raise ValueError(f"{path}: {not_a_folder(path)} (give {kind})")
    if args.command == "clean" and args.what == "node":
        if not args.folders and not args.where:
            raise ValueError(
                "clean node: give the node folders to remove, or --where key=value to remove "
                "the configs `exca list ROOT --where key=value` lists"
                + (" (--step only restricts those to some steps)" if args.step else "")
            )
        if args.folders and args.where:
            raise ValueError(
                "clean node: give the node folders to remove or --where conditions selecting "
                "them, not both"
            )
        missing = [f for f in args.folders if not Path(f).exists()]
        if missing:
            why = "; ".join(f"{f}: {not_a_folder(f)}" for f in missing)
            raise ValueError(f"clean node: {why}")
        if args.step is not None and not args.where:
            raise ValueError(
                "clean node: --step does not apply to the folders given (with --where, it "
                "restricts the configs selected to some steps)"
            )
    if args.command == "clean" and args.days is not None and not args.days >= 0:
        raise ValueError(  # (nan too: it read as 0 days, every ended job's logs removed)
            f"--days {args.days:g}: give a number of days >= 0 (the logs of jobs that ended "
            "more than that many days ago)"
        )
    if args.command == "clean":  # (an option a command does not use was ignored, silently)
        ignored = [
            shown
            for shown, given, used_by in (
                ("FOLDERS", bool(args.folders), ("node",)),
                ("--downstream", args.downstream, ("node", "versions")),
                ("--days", args.days is not None, ("logs",)),
                ("--where", bool(args.where), ("node",)),
            )
            if given and args.what not in used_by
        ]
        if ignored:
            raise ValueError(
                f"clean {args.what}: {', '.join(ignored)} does not apply (see "
                "`python -m exca clean --help`)"
            )
    if args.command == "list":
        from .inspect import render

        infos, why = _listed(
            args.root, args.step, args.where, args.status, "--step/--where/--status"
        )
        # (each form only when printed: to_dict copies every config, a quarter of the
        # time of listing 5k nodes as text)
        records = [i.to_dict() for i in infos] if args.json else None
        _print(records, args.json, "" if args.json else render(infos) if infos else why)
        if args.json and why:  # (why nothing matched: a typo? said beside the [])
            print(f"exca: note: {why}", file=sys.stderr)
    elif args.command in ("plan", "explain", "check"):
        from ..graph.node import LEGACY_RENAMES

        token = LEGACY_RENAMES.set(False)  # (these commands only read)
        try:
            with _current_folder_on_path():
                return _read_only_command(args)
        finally:
            LEGACY_RENAMES.reset(token)
    elif args.command == "rename":
        from .rename import rename_class

        renaming = rename_class(args.root, args.old, args.new, dryrun=not args.yes)
        text = str(renaming)
        if not args.yes:
            text += "\n(preview: run again with --yes to rename)"
        _print(renaming.to_dict(), args.json, text)
        return 1 if renaming.left else 0
    elif args.command == "clean":
        from . import clean
        from .inspect import node_folders

        args.root = os.path.abspath(args.root)  # (every preview names full paths)
        if args.what == "compact":
            root = clean.cache_root(args.root)
            steps = clean.selected_steps(root, args.step)
            folders = [f for s, _, f in node_folders(root) if steps is None or s in steps]
            look = clean.look_at_jobs(folders)  # (one squeue call, not one per folder)
            said = "" if folders else _no_cache(root, args.json)  # (a root given wrong?)
            if args.yes:
                # (a folder removed since it was listed: nothing to merge there; its index
                # files, named as a preview names them, just before they are merged)
                merges, merged = [], 0
                for folder in folders:
                    names = clean.compactable(folder, look=look) if folder.is_dir() else []
                    count = clean.compact(folder, look=look)[0] if names else 0
                    merged += count
                    if count:
                        merges.append({"folder": str(folder), "index_files": names})
                text = f"merged {merged} index file(s)" + (f". {said}" if said else "")
                _print(_clean_json("compact", False, merges=merges, merged=merged), args.json, text)
                return 0
            previews = {str(f): clean.compactable(f, look=look) for f in folders}
            previews = {f: names for f, names in previews.items() if names}
            lines = [f"{f}: {len(names)} index file(s)" for f, names in previews.items()]
            total = sum(len(names) for names in previews.values())
            lines.append(
                f"preview: {total} index file(s) of finished writers would be merged "
                f"({len(previews)} folder(s)); run with --yes"
                if total
                else "Nothing to merge (no folder holds 2 index files of finished writers "
                "idle for 2 minutes, or it is being computed)."
            )
            if said:
                lines[-1] = f"Nothing to merge. {said}"
            merges = [{"folder": f, "index_files": names} for f, names in previews.items()]
            _print(_clean_json("compact", True, merges=merges), args.json, "\n".join(lines))
            return 0
        if args.what == "node" and args.where:
            # (a step or node folder: the root to give; a --step matching nothing: an
            # error, as for the other clean commands, not "Nothing to remove")
            root = clean.cache_root(args.root)
            clean.selected_steps(root, args.step)
            # (the queue asked once about every job of the root, as the removal's checks
            # ask: shared by the selection and the removal)
            look = clean.look_at_jobs(f for _, _, f in node_folders(root))
            infos, why = _listed(args.root, args.step, args.where, None, "--step/--where", look)
            if not infos:
                nothing = _clean_json("node", not args.yes, clean.CleanPlan(), freed=0)
                _print(nothing, args.json, f"Nothing to remove. {why}")
                if args.json:  # (why nothing matched: said beside the empty plan)
                    print(f"exca: note: {why}", file=sys.stderr)
                return 0
            removal = clean.remove_nodes(
                [i.folder for i in infos],
                downstream=args.downstream,
                root=args.root,
                reason=" ".join(f"--where {shlex.quote(c)}" for c in args.where),
                look=look,
            )
        elif args.what == "node":
            removal = clean.remove_nodes(args.folders, downstream=args.downstream, root=args.root)
        elif args.what == "versions":
            removal = clean.old_versions(args.root, step=args.step, downstream=args.downstream)
        elif args.what == "orphans":
            removal = clean.orphans(args.root, step=args.step)
        else:
            days = DEFAULT_LOG_DAYS if args.days is None else args.days
            removal = clean.logs(args.root, older_than_days=days, step=args.step)
        said = ""  # (nothing found: a root given wrong? said)
        if not removal.removals and not removal.kept:
            said = _no_cache(Path(args.root), args.json)
        left = ""  # (what was computed from them stays, reused by the next run: said)
        if args.what in ("node", "versions") and not args.downstream and not args.json:
            left = _downstream_left(removal, args.root)
        recent = ""  # (`clean logs`: what it left as too recent, said under the preview)
        if args.what == "logs" and (removal.recent or removal.starting) and not said:
            recent = "\n" + _recent_logs(removal, days)
        if args.yes:
            freed = removal.execute(warn=False)  # (said here: the outcome, the error)
            done = _clean_outcome(removal, freed)
            _print(
                _clean_json(args.what, False, removal, freed=freed),
                args.json,
                f"{removal} {said}" if said else f"{removal}\n{done}".strip() + left + recent,
            )
            if removal.failed:
                print(f"exca: error: {_clean_failures(removal)}", file=sys.stderr)
                return 1
        else:
            hint = "\n(preview: run again with --yes to remove)" if removal.removals else ""
            hint = f" {said}" if said else hint
            _print(
                _clean_json(args.what, True, removal), args.json, f"{removal}{left}{hint}{recent}"
            )
    elif args.command == "logs":
        from .clean import is_node_folder
        from .inspect import input_folders
        from .logs import logs, unrecorded_job

        if not is_node_folder(Path(args.folder).resolve()):  # (".": its name tells)
            raise ValueError(
                f"{args.folder} is not a node folder (<root>/<step>/<uid>, holding uid.yaml): "
                "`exca list ROOT` shows them"
            )
        found = logs(args.folder, item=args.item)
        if not found and args.item is None and not _holds_task_result(Path(args.folder)):
            # (no record: dropped when its submitting call cancelled it, a Ctrl-C; its
            # log folder is still linked from the node's folder)
            unrecorded = unrecorded_job(args.folder)
            found = [unrecorded] if unrecorded is not None else []
        if not found:
            message = f"No job recorded in {args.folder}" + (
                f" for item {args.item!r}" if args.item else ""
            )
            if args.item is not None and logs(args.folder):  # (jobs, none for that item)
                from ..graph.node import TASK_KEY
                from ..storage.cachedict import inspecting_view

                if TASK_KEY in inspecting_view(Path(args.folder)).entries_info():
                    message += " (--item selects the chunk job of a map's item: this is a task)"
            traceback = _cached_traceback(Path(args.folder), args.item)
            if traceback is not None:  # (computed by the calling process: no log, but this)
                message += " (computed where it was called)"
            elif args.item is not None and "this is a task" not in message:
                message += _item_not_cached(Path(args.folder), args.item)  # (a typo?)
            failed_items = _failed_items(Path(args.folder)) if args.item is None else []
            if failed_items:  # (a map's items that failed where it was called)
                message += (
                    f"; {len(failed_items)} item(s) failed where it was called: --item UID shows "
                    f"the error (e.g. {shlex.quote('--item=' + failed_items[0])})"
                )
            inputs = sorted(input_folders(Path(args.folder)))
            if inputs:  # (a method with inputs: its calls are nodes of their own)
                message += f"; its calls with inputs have their own: {', '.join(map(str, inputs))}"
            elif traceback is None and not failed_items and args.item is None:
                # (absolute: its root is found from the path, "." has no parent)
                message += _why_nothing(Path(os.path.abspath(args.folder)))
            if args.item is None:  # (logs of jobs whose records were dropped: where)
                message += _unrecorded_logs_said(Path(args.folder))
            data: dict[str, tp.Any] = {"error": message}
            if traceback is not None:
                data["traceback"] = traceback
                message += f"; its cached error:\n{traceback}"
            _print(data, args.json, message)
            return 1
        job = found[-1]
        path = job.stderr_path if args.stderr else job.stdout_path
        if not path.exists():
            waiting = _not_started(job.job_id, job.cluster)
            if waiting is not None:  # (no log yet: not removed)
                message = f"Job {job.job_id} ({job.cluster}) {waiting}: no log yet ({path})"
            else:
                message = (
                    f"The log file of job {job.job_id} ({job.cluster}) is not there: {path} "
                    "(its logs were removed, e.g. by `exca clean ROOT logs`, or the job never "
                    "started)"
                )
            gone = {"error": message, "job_id": job.job_id, "path": str(path)}
            traceback = _cached_traceback(Path(args.folder), args.item)
            if traceback is not None:  # (its failure is in the cache still)
                gone["traceback"] = traceback
                message += f"; its cached error:\n{traceback}"
            _print(gone, args.json, message)
            return 1
        text = job.stderr() if args.stderr else job.stdout()
        data = {"job_id": job.job_id, "cluster": job.cluster, "path": str(path), "text": text}
        header = f"# job {job.job_id} ({job.cluster}): {path}"
        maker = _result_job(Path(args.folder)) if args.item is None else job.job_id
        if job.unrecorded:
            data["note"] = _unrecorded_note(job, Path(args.folder))
            header += f"\n# ({data['note']})"
        elif (ended := _ended_by_method(job.job_id, job.stderr() or "")) is not None:
            data["note"] = ended  # (its record set aside, or not yet)
            header += f"\n# ({data['note']})"
        elif job.refused:  # (its record was set aside: see registry.set_refused)
            data["note"] = (
                f"job {job.job_id} refused its config (its class was edited while it was "
                "queued): nothing was computed; the next call submits it again"
            )
            header += f"\n# ({data['note']})"
        elif maker != job.job_id:
            by = f"by job {maker} (of another node)" if maker else "where it was called"
            data["note"] = (
                f"the current result was not computed by job {job.job_id} (the last job "
                f"recorded here) but {by}"
            )
            header += f"\n# ({data['note']})"
        footer = ""
        # (a map's item failing in a job: its error is cached, the job goes on and logs
        # one line; the traceback is in the cache only)
        traceback = _cached_traceback(Path(args.folder), args.item) if args.item else None
        if traceback is not None:
            data["traceback"] = traceback
            footer = f"\n# item {args.item!r} holds a cached error (its traceback):\n{traceback}"
        elif args.item is None and not args.stderr and maker == job.job_id:
            footer = _task_error_footer(Path(args.folder), args.folder, data)
        erred = _failed_items(Path(args.folder)) if args.item is None else []
        if erred:
            data["failed_items"] = erred
            footer = (
                f"\n# ({len(erred)} item(s) of this map hold a cached error: --item UID shows "
                f"its job's log and its traceback, e.g. {shlex.quote('--item=' + erred[0])})"
            )
        _print(data, args.json, f"{header}\n{text}{footer}")
    return 0
