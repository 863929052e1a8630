"""BaseInfra: what every infra shares (cache folder, mode, version) and its owner link.

An infra is a field of a user's pydantic config (its *owner*). Its ``version`` is the only
field that enters the owner's uid. Runtime state (owner link, memoized uid, RAM results)
lives in a ``__slots__`` attribute, so it never enters dumps, equality or pickles.
"""

from __future__ import annotations

import collections.abc
import contextlib
import copy
import dataclasses
import enum
import errno
import functools
import inspect
import logging
import operator
import os
import stat
import sys
import threading
import types
import typing as tp
import weakref
from pathlib import Path

import pydantic
import pydantic_core

from .. import uidformat
from ..confdict import ConfDict
from ..graph.node import LEGACY_RENAMES, RESTORES_FILES, reads_only
from ..storage import saidonce
from ..storage.files import (
    check_name_lengths,
    name_too_long,
    note_write_error,
    parse_permissions,
    whose,
)
from . import freezing, identity, uidfolder
from .resources import UNSET_VARIABLE, expand_path_text

if tp.TYPE_CHECKING:
    from ..storage.cachedict import CacheDict
    from .method import InfraMethod

logger = logging.getLogger("exca")
Mode = tp.Literal["cached", "retry", "force", "read-only"]
_UID_FIELDS = ("method", "version", "uid")


_MISSING: tp.Any = object()


_RAM_LOCKS_GUARD = threading.Lock()
# _Runtime's containers, made on first use
_CONTAINERS = frozenset(
    ("force_state", "models", "inputs_caches", "inputs_force", "inputs_checked", "inputs_ram")
)


class _Runtime:
    """Per-instance runtime state of an infra (reset on pickling and copies).

    Plain values default to class attributes and the containers are made on first use:
    a runtime is created for every config instance, most of which never compute.
    """

    # the owner instance, held weakly (it holds this infra: a strong link back made a
    # reference cycle, freed only by a full GC, see method.release_owner), or strongly
    # once pinned (a temporary owner dropped while its infra is still in use)
    owner_ref: tp.Callable[[], pydantic.BaseModel | None] = staticmethod(lambda: None)
    pinned: pydantic.BaseModel | None = None
    name = ""
    method: InfraMethod | None = None
    uid: str | None = None
    uid_export: tp.Any = None  # config(uid=True, exclude_defaults=True) as uid() exported it
    uid_export_plain = False  # ...and whether its keys are all field names (see yaml_of)
    checked = False  # uid folder yaml files checked/written
    full_uid_current = False  # ...and its full-uid.yaml was this config's (versions too)
    defaults_checked = False  # full-uid.yaml checked before reusing cached results
    # ...by a plan, status() or a read-only call only: a call reusing them checks again,
    # once (it records there the defaults of fields added since, see verify_defaults)
    defaults_read = False
    legacy_checked = False  # its cache looked for under its legacy (v2) name (a run renames)
    legacy_renamed = False  # ...and found, renamed to its v3 name
    # whether the config holds a list, dict, set or array (changed in place, a frozen
    # config names other values than its uid): None until a cached read asks
    holds_mutables: bool | None = None
    # (when it holds none) the field values of its frozen dataclasses when last compared:
    # object.__setattr__ changes one in place
    frozen_dataclasses: _FrozenFields | None = None
    ram: tp.Any = _MISSING
    cache: tp.Any = None
    folder: Path | None = None  # memoized uid folder
    node: tp.Any = None  # memoized graph node (configs are frozen once they have a uid)
    # on a class default: its settings passed _check_settings, and which of its container
    # fields are set (copied per owner instance); reset when the default is changed
    settings_checked = False
    # on an owner's infra: a field was assigned since its settings were checked (checked
    # again before its first uid: assignments may pass through invalid combinations)
    assigned = False
    mutable_fields: tuple[str, ...] = ()
    force_state: dict[str, tp.Any]  # shared with this instance's nodes (see Node)
    # the config tree, walked when frozen, but the owner and this infra (no cycle)
    models: list[pydantic.BaseModel]
    forcing: tuple[tp.Any, ...] | None = None  # its infras in mode force (_force_pending)
    inputs_caches: dict[tp.Any, tp.Any]  # CacheDicts of input sub-folders
    inputs_force: dict[str, dict[str, tp.Any]]  # force_state of each inputs node (mode=force)
    # input sub-folders whose defaults check is settled (False: by a check that could not
    # record, see defaults_read)
    inputs_checked: dict[Path, bool]
    inputs_ram: dict[Path, tp.Any]  # keep_in_ram: results of calls with inputs, by folder

    @property
    def owner(self) -> pydantic.BaseModel | None:
        pinned = self.pinned
        return pinned if pinned is not None else self.owner_ref()

    def ram_lock(self, inputs: str | None = None) -> threading.RLock:
        """Held while this instance computes a result kept in RAM only (no folder, hence
        no claim): threads calling it at once compute it once (``inputs``: the key of a
        call with inputs, each has its own lock)."""
        if inputs is None:
            lock = self.__dict__.get("_ram_lock")
            if lock is None:
                with _RAM_LOCKS_GUARD:
                    lock = self.__dict__.setdefault("_ram_lock", threading.RLock())
            return tp.cast(threading.RLock, lock)
        with _RAM_LOCKS_GUARD:  # (the dict too: two threads must not make one each)
            locks = self.__dict__.setdefault("_inputs_ram_locks", {})
            return tp.cast(threading.RLock, locks.setdefault(inputs, threading.RLock()))

    def __getattr__(self, name: str) -> tp.Any:
        if name not in _CONTAINERS:
            raise AttributeError(name)
        value: tp.Any = [] if name == "models" else {}
        setattr(self, name, value)
        return value


_FORCED_KEY = "__exca_forced__"
# uid folders whose full-uid.yaml this process found consistent with a class's defaults,
# with the uid export checked (another config with the same folder name, whose uid
# collides, is checked again), and whether by a check that records the defaults of fields
# added since (not a plan's, status()'s or a read-only call's: a call checks again)
_DEFAULTS_CHECKED: dict[str, tuple[type, tp.Any, bool]] = {}
# (a class updated in place, by %autoreload: its defaults, or those of a class its
# defaults hold, may have changed, the uid export not; kept, the "default" folder of
# lr=0.1 was reused for lr=0.2, the default since, without the check a new process makes)
identity.DEFAULTS_FORGETTERS.append(_DEFAULTS_CHECKED.clear)
# (its checks say once what they find: renamed fields, sub-configs' versions changed)
saidonce.FORGET_CHECKS.append(_DEFAULTS_CHECKED.clear)


_UNRESTORABLE: set[str] = set()  # folders whose missing yaml files could not be written
# config folders whose yaml files a hit with inputs saw (looked at once per process)
_YAML_SEEN: set[str] = set()
_YAML_FILES = (uidfolder.UID_FILE, uidfolder.FULL_UID_FILE, uidfolder.CONFIG_FILE)
_PREPARE_ATTEMPTS = 5  # (a folder removed that often meanwhile: the error is raised)
# method folders missing when this process first looked for a legacy (v2) folder in them:
# what they hold was written since, with v3 names, so each new config of such a folder
# skips the look (its v2 name, ~4% of a first call's instructions, and two stats)
_FOLDERS_MADE_SINCE: set[str] = set()


def _remember_checked_defaults(
    folder: str, owner_cls: type, export: tp.Any, recorded: bool = True
) -> None:
    if len(_DEFAULTS_CHECKED) >= 10_000:
        _DEFAULTS_CHECKED.clear()  # (a bounded memo)
    _DEFAULTS_CHECKED[folder] = (owner_cls, export, recorded)


def _strictly_in(path: str, folder: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder under ``folder`` (not it)."""
    top = os.path.abspath(folder)
    return bool(path) and os.path.abspath(path).startswith(top.rstrip(os.sep) + os.sep)


def _record_folder(folder: str, result_folder: Path | None) -> str:
    """The folder whose full-uid.yaml records what a result was computed with: the result's
    sub-folder (a call with inputs), if it has its own, else the config's ``folder``."""
    if result_folder is not None and os.path.exists(result_folder / uidfolder.FULL_UID_FILE):
        return str(result_folder)
    return folder


class BaseInfra(pydantic.BaseModel):
    """Shared settings of TaskInfra and MapInfra (see their docstrings)."""

    # defer_build: schemas are built on first use, which keeps `import exca` light
    # validate_assignment: `obj.infra.mode = "forc"` is refused as in the constructor
    model_config = pydantic.ConfigDict(
        extra="forbid", revalidate_instances="always", defer_build=True, validate_assignment=True
    )
    __slots__ = ("_rt",)
    _exca_uid_fields: tp.ClassVar[tuple[str, ...]] = ("version",)
    _uid_string: tp.ClassVar[str] = "{method},{version}/{uid}"
    # fields that never hold a pydantic model: freezing does not look into them (the
    # settings of exca's own infra classes, all but workdir: set below, per class;
    # tests/test_identity.py checks them against the annotations)
    _exca_scalar_fields: tp.ClassVar[frozenset[str]] = frozenset()

    folder: Path | None = None
    permissions: int | None = pydantic.Field(default=0o777, exclude=True)
    mode: Mode = "cached"
    keep_in_ram: bool = False
    version: str = "0"

    @pydantic.field_validator("folder", mode="before")
    @classmethod
    def _folder_text(cls, value: tp.Any) -> tp.Any:
        if isinstance(value, str | os.PathLike):
            text = os.fspath(value)
            if isinstance(text, str) and not text.strip():
                # (Path("") is the current folder: a cache there is never what was meant)
                raise ValueError(
                    f"folder={text!r} is empty: give a folder path, or None to cache in RAM only"
                )
            if isinstance(text, str):
                try:
                    return expand_path_text("folder", text)
                except ValueError:
                    if not UNSET_VARIABLE.search(text):
                        raise
                    # resolved (or refused) when linked to an owner instance: a shared class
                    # default "$SCRATCH/cache" on a laptop without $SCRATCH made the module
                    # impossible to import, even to give another folder
                    return _UnresolvedFolder(text)
        return value

    @pydantic.field_validator("folder")
    @classmethod
    def _absolute_folder(cls, value: Path | None) -> Path | None:
        if value is None or isinstance(value, _UnresolvedFolder):
            return value
        # (before exists(), which raises "File name too long", naming no field)
        check_name_lengths(value, "folder", "give the cache a folder with shorter names")
        if _is_there_but_no_folder(value):  # (a device too: /dev/null)
            raise ValueError(f"folder={str(value)!r} is a file: give the cache a folder")
        # jobs may run elsewhere (a workdir snapshot is their current folder)
        return value if value.is_absolute() else value.absolute()

    @pydantic.field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: tp.Any) -> tp.Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # `version: 2` in a yaml file
        if isinstance(value, float):
            # (yaml reads `version: 1.10` as 1.1: it would share version 1.1's cache)
            raise ValueError(
                f"version={value!r} is a float, whose text loses digits (1.10 reads as "
                f"1.1): give a string, e.g. version='{value}' (quote it in yaml files)"
            )
        return value

    @pydantic.field_validator("version")
    @classmethod
    def _version_as_folder_name(cls, value: str) -> str:
        # (it names the method's cache folder: nothing may lead outside it)
        # (',' may be in it: the folder <method>,<version> is split at its first ',')
        if not value or value != value.strip() or "/" in value or "\\" in value:
            raise ValueError(
                f"version={value!r} names a cache folder: give a non-empty name without "
                "'/', '\\' or surrounding spaces, e.g. '1' or '2.1'"
            )
        if value in (".", "..") or not value.isprintable():
            raise ValueError(
                f"version={value!r} names a cache folder: use printable text other than "
                "'.' and '..', e.g. '1'"
            )
        return value

    @pydantic.model_validator(mode="wrap")
    @classmethod
    def _name_unknown_settings(cls, value: tp.Any, handler: tp.Any) -> tp.Any:
        # (a typo, infra={"fodler": ...}: pydantic's "Extra inputs are not permitted" said
        # nothing of the settings there are; type and location are kept, as callers and
        # _without_removed_fields read them)
        try:
            return handler(value)
        except pydantic.ValidationError as error:
            from .typos import naming_settings

            raise naming_settings(cls, error) from None

    @pydantic.field_validator("permissions", mode="before")
    @classmethod
    def _parse_permissions(cls, value: tp.Any) -> tp.Any:
        if isinstance(value, str | int):
            return parse_permissions(value)
        return value

    def _resolve_folder(self) -> None:
        """Expands a folder whose environment variable was unset when this infra was built
        (ValueError naming it if it still is)."""
        folder = self.__dict__.get("folder")
        if isinstance(folder, _UnresolvedFolder):
            resolved = self._absolute_folder(Path(expand_path_text("folder", str(folder))))
            self.__dict__["folder"] = resolved

    def __repr_args__(self) -> tp.Iterable[tuple[str | None, tp.Any]]:
        defaults = type(self).model_fields
        for name, value in self.__dict__.items():
            field = defaults.get(name)
            if field is not None and value != field.default:
                yield name, value

    # --- copies and runtime state -------------------------------------------------------
    # hashable by identity: pydantic then leaves class-level defaults alone instead of
    # deep-copying them per instance; linking the owner makes the one copy needed
    __hash__ = object.__hash__

    def __deepcopy__(self, memo: dict[int, tp.Any] | None = None) -> tp.Self:
        """A copy without runtime state (fast: only container fields are copied)."""
        return self._bare_copy(_container_fields(type(self)), memo)

    def _bare_copy(self, mutable_fields: tp.Iterable[str], memo: tp.Any = None) -> tp.Self:
        """A copy of the field values (deep for ``mutable_fields``) without runtime state."""
        new = object.__new__(type(self))
        values = self.__dict__.copy()
        for name in mutable_fields:
            values[name] = copy.deepcopy(values[name], memo)
        _SET_DICT(new, values)
        _SET_FIELDS_SET(new, self.__pydantic_fields_set__.copy())
        _SET_EXTRA(new, None)
        _SET_PRIVATE(new, None)
        return new  # (its "_rt" slot stays unset: _runtime() makes one when needed)

    def __copy__(self) -> tp.Self:
        return self.__deepcopy__()

    # Pickled into a job, an instance stays the same instance for mode=force: what the
    # submitting process already forced (e.g. a sub-config's task, computed before the
    # job that calls it) is not forced again in the job.
    def __getstate__(self) -> dict[tp.Any, tp.Any]:
        state = super().__getstate__()
        runtime = getattr(self, "_rt", None)
        if runtime is not None and runtime.force_state.get("done"):
            state[_FORCED_KEY] = True
        return state

    def __setstate__(self, state: dict[tp.Any, tp.Any]) -> None:
        forced = state.pop(_FORCED_KEY, False)
        super().__setstate__(state)
        if forced:
            self._runtime().force_state["done"] = True

    def _runtime(self) -> _Runtime:
        try:
            runtime: _Runtime = self._rt  # type: ignore[attr-defined]
        except AttributeError:  # created by validation, a copy or unpickling: never set
            runtime = _Runtime()
            _SET_RUNTIME(self, runtime)
        return runtime

    def _link(self, owner: pydantic.BaseModel, name: str, default: BaseInfra, merge: bool) -> None:
        """Attach to an owner instance; take the class default's explicitly set fields."""
        unpickled = getattr(self, "_rt", None)  # (see __setstate__)
        runtime = _Runtime()
        if unpickled is not None and unpickled.owner is None and "force_state" in vars(unpickled):
            runtime.force_state = unpickled.force_state
        runtime.owner_ref = weakref.ref(owner)
        runtime.name = name
        default_runtime = default._runtime()
        runtime.method = default_runtime.method
        _SET_RUNTIME(self, runtime)
        if merge and default is not self:
            missing = default.__pydantic_fields_set__ - self.__pydantic_fields_set__
            for field in missing:
                self.__dict__[field] = copy.deepcopy(default.__dict__[field])
        self._check_settings()
        if self._checks_disk:
            self._check_disk()

    def _copy_linked_to(self, owner: pydantic.BaseModel, name: str) -> tp.Self:
        """A copy of this class default attached to an owner instance: ``__deepcopy__`` +
        ``_link`` for the common case (nothing to merge, and the settings are the
        default's, checked once)."""
        try:
            default_runtime: _Runtime = self._rt  # type: ignore[attr-defined]
        except AttributeError:
            default_runtime = self._runtime()
        if not default_runtime.settings_checked:
            self._check_settings()
            default_runtime.mutable_fields = tuple(
                field for field in _container_fields(type(self)) if self.__dict__[field] is not None
            )
            default_runtime.settings_checked = True
        new = self._bare_copy(default_runtime.mutable_fields)
        runtime = _Runtime()
        runtime.owner_ref = weakref.ref(owner)
        runtime.name = name
        runtime.method = default_runtime.method
        _SET_RUNTIME(new, runtime)
        if self._checks_disk:
            new._check_disk()
        return new

    def __setattr__(self, name: str, value: tp.Any) -> None:
        runtime = getattr(self, "_rt", None)
        if name == "folder" and runtime is not None and runtime.owner is not None:
            before = self.__dict__.get("folder")
            super().__setattr__(name, value)
            try:
                self._resolve_folder()
            except ValueError:
                self.__dict__["folder"] = before
                raise
        else:
            super().__setattr__(name, value)
        if runtime is not None:
            runtime.settings_checked = False  # a class default changed: check copies again
            runtime.assigned = True

    def _check_settings(self) -> None:
        """Cross-field checks, done once the class-default settings are merged (a function
        of the field values only: done once per class default)."""
        self._resolve_folder()

    _checks_disk: tp.ClassVar[bool] = False  # whether _check_disk is overridden (set below)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: tp.Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._checks_disk = cls._check_disk is not BaseInfra._check_disk  # (skip a no-op call)
        if cls.__module__.startswith("exca."):  # (a user's subclass may add model fields)
            cls._exca_scalar_fields = frozenset(cls.model_fields) - {"workdir"}

    def _check_disk(self) -> None:
        """Checks of the file system, done each time an infra is linked to an owner."""

    def _owner(self) -> pydantic.BaseModel:
        owner = self._runtime().owner
        if owner is None:
            raise RuntimeError(
                f"This {type(self).__name__} is not attached to a config instance: use it as "
                "a field of a pydantic model and decorate a method with @infra.apply"
            )
        return owner

    def _method(self) -> InfraMethod:
        method = self._runtime().method
        if method is None:
            name = self._runtime().name or "infra"
            raise RuntimeError(
                f"{type(self).__name__} field {name!r} was not applied to any method "
                f"(decorate one with @{name}.apply)"
            )
        return method

    # --- identity -------------------------------------------------------------------------
    def _cache_exclusions(self) -> list[str]:
        raw = self._method().options.get("exclude_from_cache_uid")
        if raw is None:
            return []
        owner = self._owner()
        if isinstance(raw, str):
            if not raw.startswith("method:"):
                raise TypeError(
                    f"exclude_from_cache_uid={raw!r}: use a list of field names, a callable, "
                    "or 'method:<name>'"
                )
            method_name = raw[len("method:") :]
            func = getattr(owner, method_name, None)
            if func is None:
                raise RuntimeError(
                    f"exclude_from_cache_uid names method {method_name!r} which "
                    f"{type(owner).__name__} does not have"
                )
            raw = func()
        elif callable(raw):
            raw = raw(owner)
        if isinstance(raw, str) or not isinstance(raw, tp.Iterable):
            raise TypeError(f"exclude_from_cache_uid must give field names, got {raw!r}")
        names = list(raw)
        for name in names:
            _check_field_path(owner, name)
        return names

    def config(self, uid: bool = True, exclude_defaults: bool = False) -> ConfDict:
        """The owner's config (uid=True: only what defines the cached result)."""
        owner = self._owner()
        exclusions = self._cache_exclusions()
        # (uid=False: the whole config, but a value kept out of the uid needs no json form)
        exclude, optional = (exclusions, ()) if uid else ((), exclusions)
        out = identity.export_model(
            owner, uid=uid, exclude_defaults=exclude_defaults, exclude=exclude, optional=optional
        )
        return ConfDict(out)

    def _config_uid(self, runtime: _Runtime, owner: pydantic.BaseModel) -> str:
        """``config(uid=True, exclude_defaults=True).to_uid()``, with fewer copies."""
        exclude = self._cache_exclusions()
        out, plain = identity.export_with_keys(owner, True, True, exclude)
        runtime.uid_export = out  # (the config is frozen from then on)
        runtime.uid_export_plain = plain
        return ConfDict.uid_of(out, plain_keys=plain)

    def _uid_yaml(self) -> str:
        """``_uid_config().to_yaml()``, from the export uid() made, with no ConfDict."""
        self.uid()
        runtime = self._runtime()
        out = runtime.uid_export
        if out is None:
            return self._uid_config().to_yaml()
        return ConfDict.yaml_of(out, plain_keys=runtime.uid_export_plain)

    def _full_uid_yaml(self) -> str:
        """``config(uid=True, exclude_defaults=False).to_yaml()``, with fewer copies."""
        out, plain = identity.export_with_keys(self._owner(), True, False, self._cache_exclusions())
        return ConfDict.yaml_of(out, plain_keys=plain)

    def _config_yaml(self) -> str:
        """``config(uid=False, exclude_defaults=False).to_yaml()``, with fewer copies."""
        optional = self._cache_exclusions()  # (see config: no json form needed for those)
        out, plain = identity.export_with_keys(self._owner(), False, False, (), optional)
        return ConfDict.yaml_of(out, plain_keys=plain)

    def _uid_config(self) -> ConfDict:
        """``config(uid=True, exclude_defaults=True)`` from the export uid() made (for
        internal reads: uid.yaml, the legacy name)."""
        self.uid()
        out = self._runtime().uid_export
        return ConfDict(out) if out is not None else self.config(uid=True, exclude_defaults=True)

    def _step_name(self) -> str:
        """``<module>.<Class>.<method>,<version>``: the folder of all configs of a method."""
        method = self._method()
        return f"{method.step_name(self._owner())},{self.version}"

    def uid(self) -> str:
        """``<module>.<Class>.<method>,<version>/<config uid or 'default'>`` (memoized; the
        first call freezes the config)."""
        runtime = self._runtime()
        if runtime.uid is None:
            if runtime.assigned:  # (e.g. infra.cluster = "local" with no folder)
                self._check_settings()
                if self._checks_disk:
                    self._check_disk()
                runtime.assigned = False
            owner = self._owner()
            cfg_uid = self._config_uid(runtime, owner) or "default"
            key = (type(self), runtime.method, type(owner), self.version)  # (checked)
            around = _UID_AROUND.get(key) or self._uid_around(key)
            runtime.uid = around[0] + cfg_uid + around[1]
            runtime.models = [m for m in freezing.freeze(owner) if m is not owner and m is not self]
        return runtime.uid

    def _uid_around(self, key: tuple[tp.Any, ...]) -> tuple[str, str]:
        """What comes before and after the config uid in ``uid()`` (the template with
        the method and version filled in), remembered per class, method and version."""
        template = _TEMPLATES.get(type(self)) or _uid_template(type(self))
        before, _, after = template.partition("{uid}")
        values = {"method": self._method().step_name(self._owner()), "version": self.version}
        around = (before.format(**values), after.format(**values))
        if name_too_long(around[0]):
            if self.folder is not None:  # (no folder: no file is named after it)
                check_name_lengths(
                    around[0],
                    "The cache step folder <module>.<Class>.<method>,<version>",
                    f"use a shorter infra.version ({len(self.version)} characters) or class name",
                )
            return around  # (not remembered: a folder set later is checked)
        if len(_UID_AROUND) >= 10_000:
            _UID_AROUND.clear()
        _UID_AROUND[key] = around
        return around

    def uid_folder(self, create: bool = False) -> Path | None:
        """``folder / uid()``, or None without a folder (create=True writes the yaml files)."""
        if self.folder is None:
            return None
        folder = self.folder / self.uid()
        if create:
            self._prepare_folder()
        return folder

    def _adopt_legacy(self, rename: bool = True) -> None:
        """Rename this config's cache from its legacy (v2) name when only that one exists
        (a cache written by an older exca): once per instance, by what runs or reads
        results (a call, ``exca.graph.run``). ``rename=False``: building a node (for a
        plan, a status...) only warns, as a read-only command does."""
        runtime = self._runtime()
        if runtime.legacy_checked:
            return
        renames = rename and LEGACY_RENAMES.get() and self.mode != "read-only"
        # (a str: a Path costs ~10 µs, and the folder is there but for a legacy cache)
        folder = None if self.folder is None else os.path.join(self.folder, self.uid())
        if folder is not None and not os.path.isdir(folder):
            token = LEGACY_RENAMES.set(renames)
            try:
                self._adopt_v2_folder(folder)
            finally:
                LEGACY_RENAMES.reset(token)
        # (a read-only config never renames: told once, its mode cannot change)
        if renames or self.mode == "read-only" or folder is None or os.path.isdir(folder):
            runtime.legacy_checked = True

    def _legacy_name(self) -> str | None:
        """This config's folder name in the legacy (v2) uid format (None: a value that
        format cannot render, so no v2 folder to find)."""
        try:
            return self._uid_config().to_uid(version=2) or "default"
        except Exception:
            return None

    def _adopt_v2_folder(self, path: str) -> None:
        # (str paths until a legacy folder is found: each new config of a call looks)
        parent, name = os.path.split(path)
        if uidformat.environ_value(uidformat.UID_VERSION_ENV) == "2":
            _FOLDERS_MADE_SINCE.clear()  # (v2 names asked for: v2 folders may come now)
            return
        if parent in _FOLDERS_MADE_SINCE:
            return
        if not os.path.isdir(parent):  # (no folder of this method at all)
            _FOLDERS_MADE_SINCE.add(parent)
            return
        legacy = self._legacy_name()
        if (
            legacy is None
            or legacy == name
            or not os.path.isfile(os.path.join(parent, legacy, uidfolder.UID_FILE))
        ):
            return
        folder = Path(path)
        if not LEGACY_RENAMES.get():  # (a read-only command, or mode read-only)
            logger.warning(
                "The cache of %s has its legacy (v2) name %s, which a read-only command or "
                "mode does not rename: it shows as missing here. A run in another mode "
                "renames it, or rename the whole cache first with "
                "exca.helpers.update_uids(%r, dryrun=False)",
                folder.name,
                legacy,
                str(folder.parent.parent),
            )
            return
        from .. import helpers

        self._runtime().legacy_renamed = True
        logger.warning(
            "The cache of %s has its legacy (v2) name %s: renaming the v2-named folders of "
            "%s to v3 names (exca.helpers.update_uids)",
            folder.name,
            legacy,
            folder.parent,
        )
        # this config's own folder first, to the name its live config gives (uid.yaml
        # does not say that a dict was an OrderedDict, whose order is in the v3 name);
        # only if it holds this very config: v2 names are untyped ("1" and 1 share one)
        source = self._legacy_folder()
        if source is not None and not folder.exists():
            with contextlib.suppress(OSError):  # (renamed by another process meanwhile)
                helpers._rename_idle(source, folder)  # (not while computed there)
        helpers.update_uids(folder.parent, dryrun=False)

    def _legacy_folder(self) -> Path | None:
        """This config's cache under its legacy (v2) name: the folder of that name if its
        uid.yaml (a file) holds this very config, else None (v2 names are untyped: 1 and
        "1" share one, which may be another config's cache)."""
        folder = self.uid_folder()
        legacy = self._legacy_name()
        if folder is None or legacy is None or legacy == folder.name:
            return None
        source = folder.parent / legacy
        if not (source / uidfolder.UID_FILE).is_file():
            return None
        return source if uidfolder.holds_uid_config(source, self._uid_config()) else None

    def _prepare_folder(self, recheck: bool = False, create: bool = True) -> None:
        """Create the uid folder and check/write uid.yaml, full-uid.yaml, config.yaml
        (before computing: the config must still be the one its uid names; ``recheck``:
        even if this instance did, e.g. to write back a file removed since; ``create=False``:
        into the folder only if it is there, FileNotFoundError else)."""
        runtime = self._runtime()
        if self.folder is None:
            return
        self._check_unchanged()
        folder = os.path.join(self.folder, self.uid())
        # (the folder may have been deleted since, or its config.yaml by clear_job() of
        # another instance, which iter_cached() then skipped: the yaml files are written again)
        if (
            runtime.checked
            and not recheck
            and os.path.exists(os.path.join(folder, uidfolder.CONFIG_FILE))
            and os.path.exists(os.path.join(folder, uidfolder.UID_FILE))
        ):
            return
        try:
            settled = self._prepare_uid_folder(Path(folder), create)
        except (PermissionError, OSError) as error:
            # (ENOENT: a folder that cannot be made there, e.g. under /proc; not a uid
            # folder removed meanwhile, by a clean say, under a cache folder that is there)
            # (ENOTDIR: a path under a file, e.g. a typo)
            denied = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.ENOTDIR)
            if error.errno not in denied or (
                error.errno == errno.ENOENT and os.path.isdir(self.folder)
            ):
                note_write_error(error, folder)  # (its yaml files: a full disk says nothing)
                raise
            strerror = error.strerror or str(error)
            if error.errno == errno.ENOENT and os.path.islink(self.folder):
                strerror += f" (it is a symlink to {os.readlink(self.folder)}, not there)"
            refused = os.path.dirname(error.filename or "")
            if error.errno in (errno.EACCES, errno.EPERM) and _strictly_in(refused, self.folder):
                # (the root is writable: another user's folder in it refused the write)
                strerror += (
                    f" in {refused}{whose(refused)}, another user's folder made "
                    "without the cache's permissions? (its owner may open it: chmod -R a+rwX)"
                )
            raise type(error)(
                error.errno,
                f"Cannot write into the cache folder {self.folder} (infra.folder) for "
                f"{self.uid()}: {strerror}. Use a folder you can write to, or "
                "mode='read-only' to only read what is cached there",
                error.filename,
            ) from error
        runtime.checked = True
        runtime.full_uid_current = settled
        if settled:  # (else the versions are told where a result is reused)
            _remember_checked_defaults(folder, type(self._owner()), runtime.uid_export)

    def _prepare_uid_folder(self, folder: Path, create: bool) -> bool:
        """uidfolder.prepare, made again when the folder vanished under it: an idle folder
        (no claim yet) may be removed by a clean between its mkdir and its yaml files,
        which is no error of this call (it computes it anew, as after the removal)."""
        for attempt in range(_PREPARE_ATTEMPTS):
            try:
                return uidfolder.prepare(
                    folder,
                    uid_config=functools.cache(self._uid_config),
                    full_uid_config=functools.cache(
                        functools.partial(self.config, uid=True, exclude_defaults=False)
                    ),
                    config=functools.partial(self.config, uid=False, exclude_defaults=False),
                    permissions=self.permissions,
                    sub_configs=self._sub_configs,
                    reuses=functools.partial(self._prepare_reuses, folder),
                    create=create,
                    texts=uidfolder.ConfigTexts(
                        self._uid_yaml, self._full_uid_yaml, self._config_yaml
                    ),
                )
            except FileNotFoundError:
                root = self.folder  # (missing: no cache there, said by the caller)
                if not create or root is None or not os.path.isdir(root):
                    raise
                if attempt == _PREPARE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")  # (the last attempt returns or raises)

    def _force_pending(self) -> bool:
        """Whether this infra, or one of the sub-configs' infras, still has to apply
        mode=force (then the call goes through the scheduler: a map's cached items too)."""
        self.uid()  # walks the config tree once (freezing it) and keeps the models
        runtime = self._runtime()
        forcing = runtime.forcing
        if forcing is None:  # (once: modes are frozen with the config)
            forcing = ()
            if self.mode == "force" or any(
                isinstance(m, BaseInfra) and m.mode == "force" for m in runtime.models
            ):
                # those of the sub-configs that run before it only: not the infras of
                # models held by dataclasses (frozen with it, not chained: never forced)
                owner = self._owner()
                forcing = tuple(
                    m
                    for m in freezing.iter_models(owner)
                    if isinstance(m, BaseInfra) and m.mode == "force"
                )
            runtime.forcing = forcing
        return any(not infra._runtime().force_state.get("done", False) for infra in forcing)

    def _config_models(self) -> list[pydantic.BaseModel]:
        """The models of the frozen config tree: the owner, this infra, the rest."""
        return [self._owner(), self, *self._runtime().models]

    def _check_unchanged_before_reading(self) -> None:
        """``_check_unchanged`` for a cached read, where the config holds containers that
        can change in place (the read returned the old values' result); free otherwise."""
        runtime = self._runtime()
        if runtime.uid_export is None:
            return  # (no uid yet: nothing to compare with)
        mutables = runtime.holds_mutables
        if mutables is None:
            mutables = runtime.holds_mutables = any(
                _mutable(value)
                for model in self._config_models()
                for value in model.__dict__.values()
            )
        if mutables:
            self._check_unchanged()
            return
        frozen = runtime.frozen_dataclasses
        # (the first read, or a field set since: the export compared, then their fields)
        if frozen is None or ((frozen.values or frozen.described) and frozen.changed()):
            held: list[tp.Any] = []
            for model in self._config_models():
                for value in model.__dict__.values():
                    _frozen_dataclasses(value, held)
            if held:
                self._check_unchanged()  # (a change that matters to the uid raises)
            runtime.frozen_dataclasses = _FrozenFields(held)

    def _check_unchanged(self) -> None:
        """RuntimeError if a list, dict or dataclass of the config was changed in place
        since its uid was computed (assignments are refused once frozen; in-place changes
        cannot be): the result would be cached under the uid of the old values."""
        runtime = self._runtime()
        if runtime.uid_export is None:
            return
        exclude = self._cache_exclusions()
        owner = self._owner()
        try:
            now, _ = identity.export_with_keys(owner, True, True, exclude)
        except identity.Unexportable as error:  # (it exported when its uid was computed)
            raise RuntimeError(
                f"The config of {self.uid()} was changed in place after its uid was computed: "
                f"{error.where} now holds a value with no json form ({error.error}), and "
                "its result would be cached under the uid of the old values. A value a "
                "dataclass computes for itself (a memo, a cached array) is not config: "
                "declare it dataclasses.field(init=False) (left out of uids and of this "
                "check), or keep it in an attribute that is not a field. Else build a new "
                "config, e.g. infra.clone_obj({...}) with the new values"
            ) from error
        if now == runtime.uid_export:
            return
        before, after = ConfDict(runtime.uid_export).flat(), ConfDict(now).flat()
        olds: dict[str, tp.Any] = {}  # (the old values of keys then at their default)
        for key in after.keys() - before.keys():
            olds[key] = _default_at(owner, key, before)
        keys = before.keys() | after.keys()

        def differs(key: str, old: tp.Any) -> bool:
            return not identity._uid_equal(old, after.get(key, _MISSING))

        changed = sorted(k for k in keys if differs(k, before.get(k, olds.get(k, _MISSING))))
        if not changed:  # (a value now exported that was left out at its default: named)
            changed = sorted(k for k in keys if differs(k, before.get(k, _MISSING)))
            olds = {}

        def value(flat: dict[str, tp.Any], key: str) -> str:
            if key in flat:
                return repr(flat[key])
            old = olds.get(key, _MISSING)
            return f"its default {old!r}" if old is not _MISSING else "its default"

        shown = ", ".join(f"{k}: {value(before, k)} -> {value(after, k)}" for k in changed[:5])
        if not changed:  # (never an empty list: the exports themselves)
            shown = f"{_short(runtime.uid_export)} -> {_short(now)}"
        raise RuntimeError(
            f"The config of {self.uid()} was changed in place after its uid was computed "
            f"({shown}): its result would be cached under the uid of the old values. "
            "Build a new config instead, e.g. infra.clone_obj({...}) with the new values"
            + _one_pass_iterators(self._config_models())
        )

    def _check_defaults(
        self,
        restore: bool = False,
        result_folder: Path | None = None,
        prepare: tp.Callable[[], None] | None = None,
    ) -> bool:
        """See ``_check_defaults_once``; a call reusing the result then warns of the
        sub-configs' version changes that only a plan found (it checks nothing again)."""
        settled = self._check_defaults_once(restore, result_folder, prepare)
        untold = uidfolder.any_untold_versions() or uidfolder.any_untold_swaps()
        if untold and self.folder is not None and self._tells(restore):
            folder = self._config_folder()
            result = Path(folder) if result_folder is None else result_folder
            # (this folder's: another's change costs this call no look at its result)
            if uidfolder.untold_at({folder, result}) and self._reuses(result):
                record = _record_folder(folder, result_folder)
                uidfolder.tell_untold_versions(record)
                uidfolder.tell_untold_swaps(record)  # (fields maybe renamed, as these)
        return settled

    def _config_folder(self) -> str:
        """The folder of this config in the cache (the infra has a folder)."""
        assert self.folder is not None
        return os.path.join(self.folder, self._runtime().uid or self.uid())

    def _tells(self, restore: bool) -> bool:
        """Whether this check is a call's that reuses the result (a read-only one too),
        not a plan's, status()'s or explain's: it warns of sub-configs' version changes."""
        return self._restores(restore) or reads_only()

    def _check_defaults_once(
        self,
        restore: bool = False,
        result_folder: Path | None = None,
        prepare: tp.Callable[[], None] | None = None,
    ) -> bool:
        """Before reusing cached results (once per instance, nothing written): they were
        computed with the class defaults of now (RuntimeError if a default changed).
        Whether that is settled (False: no full-uid.yaml yet, to check again later).
        ``restore``: a call about to reuse them writes back yaml files that are gone
        (plans and status() only read). ``result_folder`` (a call with inputs: its
        sub-folder) holds the result, made by ``prepare`` (default: the config folder's);
        its own full-uid.yaml, if any, records what it was computed with."""
        runtime = self._runtime()
        if self.folder is None:
            return True
        if result_folder is None and (runtime.checked or runtime.defaults_checked):
            return True
        restores = self._restores(restore)
        # (a check that records the defaults of fields added since: not a plan's, nor
        # status()'s, nor a read-only call's, which a reusing call does not take for its own)
        record = restores and self.mode != "read-only"
        if result_folder is None and runtime.defaults_read and not record:
            return True
        inputs_checked = (
            None if result_folder is None else runtime.inputs_checked.get(result_folder)
        )
        if inputs_checked is not None and (inputs_checked or not record):
            return True  # (a sub-folder's result is checked on its own)
        folder = self._config_folder()

        def result() -> Path:  # (the folder holding the result; a Path only if asked)
            return Path(folder) if result_folder is None else result_folder

        if result_folder is not None and restores and prepare is not None:
            self._restore_inputs_file(folder, result_folder, prepare)
        verified = _record_folder(folder, result_folder)  # (once restored)
        owner_cls = type(self._owner())
        known = _DEFAULTS_CHECKED.get(verified)
        # (once per folder, class and config: the export of two configs whose uids collide
        # differs)
        if (
            known is None
            or known[0] is not owner_cls
            or known[1] != runtime.uid_export
            or (record and not known[2])
        ):
            unrecorded: set[str] = set()  # (by a plan: the call after it records them)
            checked = uidfolder.verify_defaults(
                verified,
                uid_config=self._uid_config,
                full_uid_config=functools.partial(self.config, uid=True, exclude_defaults=False),
                full_uid_text=self._full_uid_yaml,
                sub_configs=self._sub_configs,
                reused=lambda: self._reuses(result()),
                record=record,
                permissions=self.permissions,
                unrecorded=unrecorded,
                tell=self._tells(restore),
            )
            if checked is not False and result_folder is None:
                # (its full-uid.yaml was read, so its folder is there: no legacy-named cache
                # to look for, see _adopt_legacy)
                runtime.legacy_checked = True
            if checked is False and not (
                restores and self._restore_files(folder, result_folder, prepare)
            ):
                return False  # no full-uid.yaml (yet): another process may write one later
            if checked is None:
                return True  # (other sub-config versions, nothing reused: told when it is)
            done = not unrecorded
            _remember_checked_defaults(verified, owner_cls, runtime.uid_export, done)
        else:
            done = known[2]
        if result_folder is None:
            if done:
                runtime.defaults_checked = True
            else:
                runtime.defaults_read = True
        else:
            runtime.inputs_checked[result_folder] = done
        return True

    def _reuse_note(self, result_folder: Path | None = None) -> str | None:
        """What a plan says next to "cached": the sub-configs' versions changed since the
        result was computed (found by ``_check_defaults``, which reads the full-uid.yaml of
        the result's folder, or of its config folder)."""
        assert self.folder is not None
        if not uidfolder.any_version_changes() and not uidfolder.any_swaps():
            return None
        config_folder = self._config_folder()
        if not uidfolder.noted_at({config_folder, result_folder or config_folder}):
            return None  # (found at other folders: nothing to look up for this one)
        folder = _record_folder(config_folder, result_folder)
        # (fields maybe renamed: said here, not logged by the plan, see verify_defaults)
        swaps = uidfolder.swaps_note(folder)
        changed = uidfolder.version_changes(folder)
        if changed is None:
            return swaps
        # (computed again since, maybe by another process: its record says today's versions)
        current = uidfolder.read_text(Path(folder) / uidfolder.FULL_UID_FILE)
        if current == self._full_uid_yaml():
            uidfolder.forget_version_changes(folder)
            return None
        note = (
            f"computed with other sub-config versions ({changed}): bump this class's infra "
            "version to compute it again"
        )
        return note if swaps is None else f"{note}, {swaps}"

    def _prepare_reuses(self, folder: Path) -> bool:
        """Whether a call about to compute in ``folder`` also reuses what it holds (a
        task's one result: no)."""
        return False

    def _reuses(self, folder: Path) -> bool:
        """Whether a call would reuse what ``folder`` holds (its sub-configs' versions are
        then told about, if they changed)."""
        return self._has_result(folder)

    def _record_versions(self, result_folder: Path | None = None) -> None:
        """After a result is stored: full-uid.yaml says what it was computed with, its
        sub-configs' versions included (else a version changed since the config folder's
        file was written is told again at every reuse). A result in a sub-folder (a call
        with inputs) gets its own file when it differs from the config folder's (the
        other sub-folders hold results of their own versions)."""
        if self.folder is None:
            return
        own = None if result_folder is None else result_folder / uidfolder.FULL_UID_FILE
        if self._runtime().full_uid_current and (own is None or not os.path.exists(own)):
            return  # (this instance found the config folder's file current: it tells)
        config_folder = os.path.join(self.folder, self.uid())
        text = self._full_uid_yaml()
        current = uidfolder.read_text(Path(config_folder) / uidfolder.FULL_UID_FILE)
        target = config_folder if result_folder is None else str(result_folder)
        if own is not None and current == text:
            if not os.path.exists(own):
                return  # (the config folder's file tells)
            current = uidfolder.read_text(own)
        if current != text:
            uidfolder.write_atomic(f"{target}/{uidfolder.FULL_UID_FILE}", text, self.permissions)
            _DEFAULTS_CHECKED.pop(target, None)
            uidfolder.forget_version_changes(target)

    def _restore_inputs_file(
        self, folder: str, result_folder: Path, prepare: tp.Callable[[], None]
    ) -> None:
        """Before a result in a sub-folder is reused: its inputs.yaml and its config
        folder's (``folder``) yaml files, gone (removed by hand), are written again (``prepare``, into
        the folders that are there). A stat once per instance and sub-folder, and 3 once per
        process and config folder (a hit of a new instance each time paid them all)."""
        if self.mode == "read-only":
            return
        if os.path.exists(result_folder / uidfolder.INPUTS_FILE) and (
            folder in _YAML_SEEN
            or all(os.path.exists(os.path.join(folder, n)) for n in _YAML_FILES)
        ):
            if len(_YAML_SEEN) >= 10_000:
                _YAML_SEEN.clear()
            _YAML_SEEN.add(folder)
            return
        _YAML_SEEN.discard(folder)
        self._restore_files(folder, result_folder, prepare)

    @staticmethod
    def _restores(restore: bool) -> bool:
        return restore or RESTORES_FILES.get()

    def _restore_files(
        self, folder: str, result: Path | None = None, prepare: tp.Callable[[], None] | None = None
    ) -> bool:
        """The yaml files of a config folder holding results (``result``: it, the default,
        or its sub-folder holding the result of a call with inputs), removed by hand (else
        ``exca list``, inspect and iter_cached miss its results): written again (by
        ``prepare`` for a sub-folder's result), in the folders that are there (a clean may
        have just removed them: not made again). Not in mode read-only. Never raises (the
        result is what the call asked for): a folder where they cannot be written is told
        once, and not tried again in this process. Whether they were written."""
        if self.mode == "read-only" or folder in _UNRESTORABLE or not os.path.isdir(folder):
            return False
        if not self._has_result(Path(folder) if result is None else result):
            return False  # (being made: its creator writes them)
        # (its creator writes them before any result: found now, they were being written
        # when looked for, by another thread or process; prepare checks them)
        gone = [n for n in _YAML_FILES if not os.path.exists(os.path.join(folder, n))]
        try:
            if prepare is not None:
                prepare()
            else:
                self._prepare_folder(recheck=True, create=False)
        except FileNotFoundError:
            return False  # (removed meanwhile: nothing to restore)
        except Exception as error:  # (a cache shared read-only, a uid.yaml edited...)
            _UNRESTORABLE.add(folder)
            logger.warning("Could not restore the yaml files of %s: %s", folder, error)
            return False
        if gone:
            logger.warning("Restored the missing yaml files of %s (%s)", folder, ", ".join(gone))
        return True

    def _restore_listed_files(self, cache: CacheDict[tp.Any]) -> None:
        """After a cache hit: the yaml files of the folder that the index read of this hit
        did not list (removed by hand) are written again, as a computation writes them.
        Free when they are there: that listing is made anyway, no stat is added to a hit."""
        names = cache.listed_names()
        if not names or names.issuperset(_YAML_FILES):
            return
        assert self.folder is not None
        folder = os.path.join(self.folder, self.uid())
        self._restore_files(folder)

    def _node_folder_hooks(self, cache: CacheDict[tp.Any]) -> dict[str, tp.Any]:
        """The fields a task's and a map's node share: how they prepare, adopt and check
        their folder (None without a cache folder), and how their uid config is exported."""
        on_disk = self.folder is not None
        return dict(
            prepare=self._prepare_folder if on_disk else None,
            adopt_legacy=self._adopt_legacy if on_disk else None,
            legacy_name=self._legacy_name,
            legacy_folder=self._legacy_folder,
            check_reuse=self._check_defaults if on_disk else None,
            check_folder=self._check_defaults if on_disk else None,
            restore_files=self._listed_files_restorer(cache),
            uid_config=functools.partial(self.config, uid=True, exclude_defaults=False),
        )

    def _listed_files_restorer(self, cache: CacheDict[tp.Any]) -> tp.Callable[[], None] | None:
        """A node's ``restore_files`` (None without a cache folder)."""
        if self.folder is None:
            return None
        return functools.partial(self._restore_listed_files, cache)

    def _sub_configs(self) -> uidfolder.Structure:
        """Where the owner's plain dicts (holding no model) are in its uid export, and the
        keys holding the versions of sub-configs' infras (``data.infra.version``: not part
        of this config's identity). Paths as the export writes them (dict keys as JSON
        writes them: an enum's value, ``true``)."""
        found = uidfolder.Structure(plain=set(), versions=set())

        def walk(value: tp.Any, path: str) -> bool:
            """Whether the value holds a model."""
            if isinstance(value, pydantic.BaseModel):
                if isinstance(value, BaseInfra):
                    if path.count(".") > 0:  # (not this config's own infra)
                        found.versions.add(f"{path}.version")
                    return True
                for name in type(value).model_fields:
                    walk(getattr(value, name, None), f"{path}.{name}" if path else name)
                return True
            if isinstance(value, list | tuple):  # (indexed as exported: without dropped items)
                kept = [
                    v
                    for v in value
                    if not (isinstance(v, pydantic.BaseModel) and identity.dropped_from_parent(v))
                ]
                holds = [walk(item, f"{path}.{index}") for index, item in enumerate(kept)]
                return any(holds) or len(kept) < len(value)
            if isinstance(value, dict):
                holds = [walk(item, f"{path}.{_json_key(key)}") for key, item in value.items()]
                if not any(holds):
                    found.plain.add(path)
                return any(holds)
            return False

        walk(self._owner(), "")
        return found

    def clone_obj(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Any:
        """A new, unfrozen owner with some values changed (dotted keys allowed):
        ``infra.clone_obj({"model.layers": 12})`` or ``infra.clone_obj(**{"infra.mode": "force"})``."""
        if len(args) > 1:
            raise ValueError(
                f"clone_obj takes one dict of changes, got {len(args)} positional arguments: "
                "merge them into one dict (dotted keys allowed)"
            )
        if args and kwargs:
            raise ValueError("clone_obj takes one dict or keyword arguments, not both")
        owner = self._owner()
        changes = args[0] if args else kwargs
        if not isinstance(changes, tp.Mapping):
            raise TypeError(
                f"clone_obj takes a dict of changes (dotted keys allowed), got "
                f"{type(changes).__name__}: e.g. clone_obj({{'model.layers': 12}})"
            )
        changes = _field_names(owner, changes)
        skipped: list[tuple[str, ...]] = []  # (values with no json form: passed as they are)
        cfg = ConfDict(
            identity.export_model(
                owner, False, True, optional=self._cache_exclusions(), skipped=skipped
            )
        )
        paths = set(_changed_parents(changes, ()))
        # an infra's settings that the instance set (they win over the class default's
        # settings, even when equal to BaseInfra's own defaults, which the export drops)
        overrides: dict[tuple[str, ...], dict[str, tp.Any]] = {}
        for name, infra in self.obj_infras().items():
            parts = tuple(name.split("."))
            if any(part.startswith("_") for part in parts):
                continue  # a private infra: not config
            paths.update(parts[:i] for i in range(1, len(parts)))
            dumped = infra.model_dump(mode="json", include=infra.model_fields_set, warnings=False)
            for key in infra.model_fields_set - dumped.keys():  # (kept out of dumps: permissions)
                dumped[key] = getattr(infra, key)
            overrides[parts] = dumped
        switched = _switched_classes(owner, changes)
        for path in sorted(paths, key=len):
            if not any(path[: len(s)] == s for s in switched):
                _fill_sub_model(owner, path, cfg)
        for parts, dumped in overrides.items():
            if len(parts) > 1 and ".".join(parts[:-1]) not in cfg:
                continue  # inside a container left at its default: nothing to keep
            for key, value in dumped.items():
                dotted = ".".join((*parts, key))
                if dotted not in cfg:
                    cfg[dotted] = value
        for path in skipped:  # (kept out of the uid, no json form: the value itself)
            if not any("." in part for part in path):
                cfg[".".join(path)] = _value_at(owner, path)
        cfg.update(changes)
        try:
            return _from_config(type(owner), _with_subclass_instances(owner, cfg))
        except pydantic.ValidationError as error:  # (a typo of a key: the close field names)
            from .typos import unknown_keys

            for note in unknown_keys(type(owner), error):
                error.add_note(note)
            raise

    def obj_infras(self) -> dict[str, BaseInfra]:
        """Every infra in the owner's config tree, by dotted name."""
        out: dict[str, BaseInfra] = {}
        _collect_infras(self._owner(), "", out)
        return out

    # (Any, as clone_obj's: instances of the owner's class, which the infra field's type
    # does not know; BaseModel made the documented `config.infra.uid()` a type error)
    def iter_cached(self) -> tp.Iterator[tp.Any]:
        """Configs of this method/version whose folder holds a result or a cached error
        (rebuilt from its config.yaml; each has that folder's root as its infra.folder)."""
        if self.folder is None:
            return
        step = Path(self.folder) / self._step_name()
        if not step.is_dir():
            return
        owner = self._owner()
        cls = type(owner)
        # (config.yaml names the folder it was written in: a cache moved since would make
        # its configs compute again, in the old place; they belong where they were found.
        # A private infra is not in config.yaml: nothing to move)
        name = next((n for n in cls.model_fields if getattr(owner, n, None) is self), None)
        for sub in sorted(step.iterdir()):
            if sub.name.startswith("."):  # (a folder being removed: see ops.clean)
                continue
            if not (sub / uidfolder.UID_FILE).exists() or not self._holds_results(sub):
                continue
            cfg = uidfolder.read_yaml(sub / uidfolder.CONFIG_FILE)
            if cfg is None:
                continue
            data = dict(ConfDict(cfg))  # (config.yaml has dotted keys)
            own = data.get(name) if name is not None else None
            written = own.get("folder") if isinstance(own, dict) else None
            build = functools.partial(_cached_config, cls, written=written, folder=self.folder)
            try:
                obj = build(data)
            except identity.ClassNotRebuilt as error:
                logger.warning("Skipping %s: its config.yaml cannot be rebuilt: %s", sub, error)
                continue
            except pydantic.ValidationError as error:
                found = self._without_removed_fields(build, data, error, sub)
                if found is None:
                    # e.g. a config written by another version of the class, or a dict key
                    # holding a "." (read back as nesting): the other folders still come
                    logger.warning("Skipping %s: its config.yaml does not validate: %s", sub, error)
                    continue
                obj = found
            if not self._names_folder(obj, sub):
                obj = self._read_only_elsewhere(obj, sub)
            yield obj

    def _names_folder(self, obj: pydantic.BaseModel, folder: Path) -> bool:
        """Whether a config's uid names this folder, today's or its legacy (v2) name (its
        folder setting aside: a private infra is not in config.yaml, a moved cache is
        handled apart). Checked on a copy: the listed config stays unfrozen."""
        try:
            # (a deep copy: a dump would rebuild a dataclass subclass as its base class)
            probe = self._method().infra_of(copy.deepcopy(obj))
            if probe.uid().rpartition("/")[2] == folder.name:
                return True
        except Exception:  # (its uid cannot be told here: listed as it was; a call tells)
            return True
        try:  # (a call renames a v2-named folder, then reads it)
            return (probe._uid_config().to_uid(version=2) or "default") == folder.name
        except Exception:  # (a value the legacy format cannot render)
            return False

    def _read_only_elsewhere(self, obj: pydantic.BaseModel, folder: Path) -> pydantic.BaseModel:
        """A config rebuilt from config.yaml that names another folder: a class default
        changed since (config.yaml holds every value: the old default is now a value set).
        Its values are those it was computed with (what a table of results wants), but its
        call would compute it again elsewhere, silently: listed in mode read-only, said."""
        logger.warning(
            "Listing %s in mode read-only: rebuilt from its config.yaml, the config now has "
            "another uid (a class default changed since it was computed; its full-uid.yaml "
            "holds the defaults of then): calling it would compute it again in another "
            "folder. A direct call of today's config there raises the changed-default error",
            folder,
        )
        infra = self._method().infra_of(obj)
        infra.mode = "read-only"
        return obj

    def _without_removed_fields(
        self,
        build: tp.Callable[[dict[str, tp.Any]], pydantic.BaseModel],
        data: dict[str, tp.Any],
        error: pydantic.ValidationError,
        folder: Path,
    ) -> pydantic.BaseModel | None:
        """The config of a folder whose config.yaml holds fields removed from the class
        since: when they were at their defaults (out of its uid), a call of today's class
        reuses that folder, so it is listed too (checked: its uid folder is that one)."""
        errors = error.errors()
        if not errors or any(e["type"] != "extra_forbidden" for e in errors):
            return None
        in_uid = set(ConfDict(uidfolder.read_yaml(folder / uidfolder.UID_FILE) or {}).flat())
        trimmed = copy.deepcopy(data)
        for found in errors:
            loc = [str(part) for part in found["loc"]]
            dotted = ".".join(loc)
            if any(key == dotted or key.startswith(dotted + ".") for key in in_uid):
                return None  # (its value made this uid: today's class cannot make it)
            parent: tp.Any = trimmed
            for part in loc[:-1]:
                parent = parent.get(part) if isinstance(parent, dict) else None
            if not isinstance(parent, dict) or loc[-1] not in parent:
                return None
            del parent[loc[-1]]
        try:
            obj = build(trimmed)
        except pydantic.ValidationError:
            return None
        method = self._method()
        rebuilt = method.infra_of(obj).uid_folder()
        return obj if rebuilt is not None and rebuilt.name == folder.name else None

    def _has_result(self, folder: Path) -> bool:
        return True

    def _holds_results(self, folder: Path) -> bool:
        """Whether a config folder holds results of this method (iter_cached lists it)."""
        return self._has_result(folder)


class _UnresolvedFolder(type(Path())):  # type: ignore[misc]
    """A folder text naming an environment variable unset when its class default was built
    (e.g. at import on a laptop); expanded, or refused, when an owner instance is created."""

    def __fspath__(self) -> str:
        # (an infra never linked to an owner, e.g. in a model without @apply: used as a
        # path, it made a folder literally named "$SCRATCH")
        return expand_path_text("folder", str(self))


@functools.cache
def _container_fields(cls: type[pydantic.BaseModel]) -> tuple[str, ...]:
    """Fields whose values may be mutable containers (copied by ``__deepcopy__``)."""
    out = []
    for name, field in cls.model_fields.items():
        text = str(field.annotation)
        if any(marker in text for marker in ("dict", "list", "Sequence", "WorkDir", "set")):
            out.append(name)
    return tuple(out)


def _slot_setter(cls: type, name: str) -> tp.Callable[[tp.Any, tp.Any], None]:
    """The setter of a slot of ``cls`` (faster than ``object.__setattr__`` on the hot path
    of config creation), or a plain setattr if a pydantic version lays it out otherwise."""
    descriptor = cls.__dict__.get(name)
    if descriptor is not None and hasattr(descriptor, "__set__"):
        return tp.cast(tp.Callable[[tp.Any, tp.Any], None], descriptor.__set__)
    return lambda obj, value: object.__setattr__(obj, name, value)


_SET_DICT = _slot_setter(pydantic.BaseModel, "__dict__")
_SET_FIELDS_SET = _slot_setter(pydantic.BaseModel, "__pydantic_fields_set__")
_SET_EXTRA = _slot_setter(pydantic.BaseModel, "__pydantic_extra__")
_SET_PRIVATE = _slot_setter(pydantic.BaseModel, "__pydantic_private__")
_SET_RUNTIME = _slot_setter(BaseInfra, "_rt")
_TEMPLATES: dict[type, str] = {}
identity.CLASS_FORGETTERS.extend(
    [lambda cls: _TEMPLATES.pop(cls, None), lambda cls: _container_fields.cache_clear()]
)
_UID_AROUND: dict[tuple[tp.Any, ...], tuple[str, str]] = {}
# (its keys hold the owner class: a forgotten class is not kept alive by them)
identity.CLASS_FORGETTERS.append(
    lambda cls: [_UID_AROUND.pop(k, None) for k in [k for k in _UID_AROUND if k[2] is cls]]
)


# exported configs use field names, not aliases (pydantic >= 2.11 can validate them as such)
_BY_NAME = "by_name" in inspect.signature(pydantic.BaseModel.model_validate).parameters


def _json_key(key: tp.Any) -> str:
    """A dict key as the uid export (``model_dump(mode="json")``) writes it."""
    if isinstance(key, enum.Enum):
        key = key.value
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


_MUTABLE_TYPES = (list, dict, set, bytearray)


def _mutable(value: tp.Any) -> bool:
    """Whether a field value can change in place (a list, dict, a dataclass that is not
    frozen... also inside a tuple)."""
    if isinstance(value, _MUTABLE_TYPES):
        return True
    if isinstance(value, tuple):
        return any(_mutable(item) for item in value)
    params = getattr(type(value), "__dataclass_params__", None)
    if params is not None and not isinstance(value, type):
        # (a frozen one's fields may hold lists, or configs, which are not frozen in there;
        # its init=False fields are no config: a memo there may be anything)
        skipped = identity.init_only_fields(type(value))
        return not params.frozen or any(
            _mutable(held) or isinstance(held, pydantic.BaseModel)
            for field in dataclasses.fields(value)
            if field.name not in skipped
            for held in [getattr(value, field.name, None)]
        )
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.ndarray)


def _frozen_dataclasses(value: tp.Any, out: list[tp.Any]) -> None:
    """The frozen dataclass instances in a value that cannot change in place otherwise
    (see ``_mutable``), nested ones and those in tuples too."""
    if isinstance(value, tuple | frozenset):
        for item in value:
            _frozen_dataclasses(item, out)
        return
    params = getattr(type(value), "__dataclass_params__", None)
    if params is not None and params.frozen and not isinstance(value, type):
        out.append(value)
        skipped = identity.init_only_fields(type(value))
        for field in dataclasses.fields(value):
            if field.name not in skipped:
                _frozen_dataclasses(getattr(value, field.name, None), out)


_DESCRIBED: dict[type, frozenset[str]] = {}
identity.CLASS_FORGETTERS.append(lambda cls: _DESCRIBED.clear())


def _described_fields(cls: type) -> frozenset[str]:
    """The fields of a dataclass whose class attribute is a data descriptor (memoized):
    reading one calls it, which may return a new object each time (a float it computes,
    a property-like field). Not the slots of a ``slots=True`` dataclass (member
    descriptors too, but a read gives the value stored: told by identity, as any field)."""
    known = _DESCRIBED.get(cls)
    if known is None:
        names = []
        for field in dataclasses.fields(cls):
            attribute = inspect.getattr_static(cls, field.name, None)
            kind = type(attribute)
            if kind is types.MemberDescriptorType:
                continue
            if hasattr(kind, "__get__") and (
                hasattr(kind, "__set__") or hasattr(kind, "__delete__")
            ):
                names.append(field.name)
        known = _DESCRIBED[cls] = frozenset(names)
    return known


_SCALARS = frozenset({bool, int, float, str, bytes, type(None)})


def _same_config(a: tp.Any, b: tp.Any, depth: int = 0) -> bool:
    """Whether a descriptor field read twice gave the same config: the same types all
    the way down and equal scalars, dataclasses compared by their fields (not by their
    ``__eq__``, which may leave out fields their dump holds; init=False fields are not
    config), other values by their json form. Anything else counts as a change (the
    export comparison then settles it): it can only cost a re-export, never miss one."""
    if a is b:
        return True
    kind = type(a)
    if kind is not type(b) or depth > 20:
        return False
    if kind in _SCALARS:
        return bool(a == b)
    if kind is list or kind is tuple:
        return len(a) == len(b) and all(_same_config(x, y, depth + 1) for x, y in zip(a, b))
    if kind is dict:
        return len(a) == len(b) and all(
            _same_config(ka, kb, depth + 1) and _same_config(va, vb, depth + 1)
            for (ka, va), (kb, vb) in zip(a.items(), b.items())
        )
    if dataclasses.is_dataclass(kind):
        skipped = identity.init_only_fields(kind)
        return all(
            _same_config(getattr(a, f.name, _MISSING), getattr(b, f.name, _MISSING), depth + 1)
            for f in dataclasses.fields(kind)
            if f.name not in skipped
        )
    if isinstance(a, pydantic.BaseModel | set | frozenset):
        return False  # (rare there: the export compares)
    try:
        dumped = pydantic_core.to_jsonable_python(a), pydantic_core.to_jsonable_python(b)
        return identity._uid_equal(*dumped)
    except Exception:  # (no json form: the export compares)
        return False


class _FrozenFields:
    """The field values of frozen dataclass instances, one entry per field. Setting one
    (object.__setattr__) replaces the value: told by identity, in one pass without
    copies, and without comparing values (their ``__eq__`` may fail, an array's say).
    Fields that are data descriptors (not slots) are compared by value, field by field
    (``_same_config``): each read may build a new object (then told by identity, every
    cached read took the config for changed and exported it again). init=False fields
    are no config: left out."""

    __slots__ = ("described", "instances", "names", "values")

    def __init__(self, held: list[tp.Any]) -> None:
        self.instances: list[tp.Any] = []
        self.names: list[str] = []
        self.values: list[tp.Any] = []
        # (instance, field name, value) of the data descriptor fields
        self.described: list[tuple[tp.Any, str, tp.Any]] = []
        for instance in held:
            cls = type(instance)
            skipped = identity.init_only_fields(cls)
            described = _described_fields(cls)
            for field in dataclasses.fields(instance):
                name = field.name
                if name in skipped or not hasattr(instance, name):
                    continue
                if name in described:
                    self.described.append((instance, name, getattr(instance, name)))
                    continue
                self.instances.append(instance)
                self.names.append(name)
                self.values.append(getattr(instance, name))

    def changed(self) -> bool:
        try:
            now = map(getattr, self.instances, self.names)
            if any(map(operator.is_not, now, self.values)):
                return True
            if not self.described:
                return False
            return any(
                not _same_config(getattr(instance, name), value)
                for instance, name, value in self.described
            )
        except AttributeError:  # (a field deleted since)
            return True


def _short(value: tp.Any) -> str:
    text = repr(value)
    return text if len(text) <= 300 else text[:300] + "..."


def _default_at(owner: pydantic.BaseModel, key: str, before: dict[str, tp.Any]) -> tp.Any:
    """The value at ``key`` (a flat export key) of a config whose uid export ``before``
    left out: the value there in the default of the first field on its path that the
    export left out whole (then at its default: a dataclass changed in place since).
    ``_MISSING`` when it cannot be told (through a list, a dict...). For the message
    only: a field the change left as it was is not listed, the others show their old
    value."""
    parts = tuple(key.split("."))
    for depth in range(1, len(parts)):
        prefix = ".".join(parts[:depth])
        if any(k == prefix or k.startswith(prefix + ".") for k in before):
            continue  # (not left out whole)
        found = _field_at(owner, parts[:depth])
        if found is None:
            return _MISSING
        parent = found[0]
        field = type(parent).model_fields[parts[depth - 1]]
        if field.is_required():
            return _MISSING
        default = field.get_default(call_default_factory=True, validated_data={})
        exported = identity.export_value(default)
        if not isinstance(exported, dict):
            return _MISSING
        return ConfDict(exported).flat().get(".".join(parts[depth:]), _MISSING)
    return _MISSING


def _cached_config(
    cls: type[pydantic.BaseModel], data: dict[str, tp.Any], written: tp.Any, folder: tp.Any
) -> pydantic.BaseModel:
    """A config read from a cache folder's config.yaml (its folder as written there)."""
    obj, data = _in_mode_cached(_from_config(cls, data), data)
    if written is not None and Path(written) != Path(folder):
        obj = _moved(obj, data, Path(written), folder)
    return obj


def _in_mode_cached(
    obj: pydantic.BaseModel, data: dict[str, tp.Any]
) -> tuple[pydantic.BaseModel, dict[str, tp.Any]]:
    """A config read from a cache, with mode "cached" where it (or a sub-config) was
    written in mode force or retry: the mode of the call that made it. Calling a listed
    config would compute it again, replacing what is listed."""
    found: dict[str, BaseInfra] = {}
    _collect_infras(obj, "", found)
    names = [
        n
        for n, i in found.items()
        if getattr(i, "mode", None) in ("force", "retry") and not n.split(".")[-1].startswith("_")
    ]
    if not names:
        return obj, data
    changed = ConfDict(data)
    for name in names:
        changed[f"{name}.mode"] = "cached"
    data = dict(changed)
    return tp.cast(pydantic.BaseModel, _from_config(type(obj), data)), data


def _moved(
    obj: pydantic.BaseModel, data: dict[str, tp.Any], old: Path, new: str | Path
) -> pydantic.BaseModel:
    """A config read from a cache moved from ``old`` to ``new``: its infras whose folder
    was ``old`` (every one of them: of other methods, of sub-configs) have ``new``."""
    found: dict[str, BaseInfra] = {}
    _collect_infras(obj, "", found)
    names = [
        n
        for n, i in found.items()
        if i.folder is not None and Path(i.folder) == old and not n.split(".")[-1].startswith("_")
    ]
    if not names:
        return obj
    moved = ConfDict(data)
    for name in names:
        moved[f"{name}.folder"] = str(new)
    return tp.cast(pydantic.BaseModel, _from_config(type(obj), dict(moved)))


def _from_config(cls: type[pydantic.BaseModel], data: dict[str, tp.Any]) -> tp.Any:
    """A config instance from an exported config (field names, not aliases; a dataclass
    naming its class, a subclass of the annotated one, built as that class)."""
    data = identity.with_dataclass_instances(cls, identity.with_dotted_keys(cls, data))
    if _BY_NAME:
        return cls.model_validate(data, by_name=True)
    return cls.model_validate(data)


def _value_at(value: tp.Any, path: tuple[str, ...]) -> tp.Any:
    """The value at a path of an export (fields, list indices, dict keys) in a config."""
    for part in path:
        if isinstance(value, pydantic.BaseModel):
            value = getattr(value, part)
        elif isinstance(value, list | tuple):
            value = value[int(part)]
        else:
            value = next(v for k, v in value.items() if str(k) == part)
    return value


def _one_pass_iterators(models: tp.Iterable[pydantic.BaseModel]) -> str:
    """What to say of the fields of a config holding one-pass iterators: a value given to
    a ``tp.Iterable`` field is validated lazily by pydantic, and the dump that made the
    uid consumed it (the config seems changed in place, by no code of the user's)."""
    names = [
        f"{type(model).__name__}.{name}"
        for model in models
        for name, value in model.__dict__.items()
        if isinstance(value, collections.abc.Iterator)
    ]
    if not names:
        return ""
    return (
        f". Here {', '.join(names)} is a one-pass iterator: pydantic validates a value given "
        "to a tp.Iterable field lazily, and computing the uid consumed it (not your code). "
        "Annotate the field as a container (tp.Sequence[int], list[int], tuple[int, ...])"
    )


def _check_field_path(owner: pydantic.BaseModel, name: str) -> None:
    """An exclude_from_cache_uid name must name a field (a typo would silently exclude
    nothing); dotted names are checked as far as they go through sub-models."""
    if not isinstance(name, str):
        raise TypeError(f"exclude_from_cache_uid must give field names, got {name!r}")
    value: tp.Any = owner
    parts = name.split(".")
    for i, part in enumerate(parts):
        if isinstance(value, list | tuple):
            if not part.isdigit():  # (what it names is in no list: it excluded nothing)
                where = ".".join(parts[:i])
                raise ValueError(
                    f"exclude_from_cache_uid names {name!r}, but {where} is a list: its "
                    f"items are named by their index ({where}.0.{'.'.join(parts[i:])} for "
                    "the first one)"
                )
            value = value[int(part)] if int(part) < len(value) else None
            continue
        if not isinstance(value, pydantic.BaseModel):
            return  # inside a dict (keys vary from config to config): not checked further
        if part not in type(value).model_fields and part not in (value.__pydantic_extra__ or {}):
            raise ValueError(
                f"exclude_from_cache_uid names {name!r}, but {type(value).__name__} has no "
                f"field {part!r} (fields: {sorted(type(value).model_fields)})"
            )
        value = getattr(value, part, None)


def _field_names(model: tp.Any, changes: tp.Mapping[str, tp.Any]) -> dict[str, tp.Any]:
    """``clone_obj`` changes with field aliases (``lr`` for ``learning_rate``) renamed to
    the field names of the config they merge into (else both would be there, and
    validation would refuse one as an extra input)."""
    out: dict[str, tp.Any] = {}
    for key, value in changes.items():
        current, parts = model, []
        for part in str(key).split("."):
            if isinstance(current, pydantic.BaseModel):
                part = _aliases(type(current)).get(part, part)
                current = getattr(current, part, None)
            else:
                current = None  # (inside a dict or a list: names are data)
            parts.append(part)
        if isinstance(value, tp.Mapping) and isinstance(current, pydantic.BaseModel):
            value = _field_names(current, value)
        out[".".join(parts)] = value
    return out


@functools.cache
def _aliases(cls: type[pydantic.BaseModel]) -> dict[str, str]:
    """A model class's field aliases (validation ones too) -> field names."""
    out: dict[str, str] = {}
    for name, field in cls.model_fields.items():
        for alias in (field.alias, field.validation_alias):
            if isinstance(alias, str) and alias != name and alias not in cls.model_fields:
                out[alias] = name
    return out


def _changed_parents(
    changes: tp.Mapping[str, tp.Any], base: tuple[str, ...]
) -> tp.Iterator[tuple[str, ...]]:
    """The dotted paths that a ``clone_obj`` change writes into (its parents)."""
    for key, value in changes.items():
        if key == ConfDict.OVERRIDE:
            continue
        parts = base + tuple(str(key).split("."))
        yield from (parts[:i] for i in range(1, len(parts)))
        if isinstance(value, dict) and not value.get(ConfDict.OVERRIDE):
            yield parts  # merged into what is there
            yield from _changed_parents(value, parts)


def _field_at(owner: pydantic.BaseModel, path: tuple[str, ...]) -> tuple[tp.Any, tp.Any] | None:
    """(the model holding the field, the field's value) at a dotted path of fields through
    sub-models, or None (an empty path, or one through a dict or a list)."""
    parent: tp.Any = None
    value: tp.Any = owner
    for part in path:
        if not isinstance(value, pydantic.BaseModel) or part not in type(value).model_fields:
            return None
        parent, value = value, value.__dict__.get(part)
    return None if parent is None else (parent, value)


def _switched_classes(
    owner: pydantic.BaseModel, changes: tp.Mapping[str, tp.Any]
) -> set[tuple[str, ...]]:
    """Paths of sub-models whose discriminator a ``clone_obj`` change sets to another value
    (another class: the default instance's values are not carried over)."""
    out: set[tuple[str, ...]] = set()
    for key, value in ConfDict(dict(changes)).flat().items():
        *prefix, last = key.split(".")
        found = _field_at(owner, tuple(prefix))
        if found is None or not isinstance(found[1], pydantic.BaseModel):
            continue
        parent, model = found
        field = next(f for f in identity.class_facts(type(parent)).fields if f.name == prefix[-1])
        keys: set[str] = set(field.keep) if isinstance(field.keep, tuple) else set()
        keys.add(str(getattr(type(model), "_exca_discriminator_key", "")))
        if last in keys and getattr(model, last, None) != value:
            out.add(tuple(prefix))
    return out


def _fill_sub_model(owner: pydantic.BaseModel, path: tuple[str, ...], cfg: ConfDict) -> None:
    """Put the sub-model (or list, dict) at ``path`` into ``cfg`` when the export left it
    out (at its field default): a change inside it then keeps the default's other values
    instead of rebuilding it from its class defaults (or failing on a list index)."""
    found = _field_at(owner, path)
    if found is None:
        return  # (through a dict or a list: not filled)
    parent, value = found
    key = ".".join(path)
    if key in cfg or isinstance(value, BaseInfra):
        return
    if isinstance(value, pydantic.BaseModel):
        cfg[key] = identity.export_field(parent, path[-1])
    elif isinstance(value, list | tuple | dict):  # a change at an index or key inside it
        cfg[key] = identity.export_model(parent)[path[-1]]


def _with_subclass_instances(
    model: pydantic.BaseModel, data: dict[str, tp.Any]
) -> dict[str, tp.Any]:
    """The input rebuilding ``model`` from its exported config ``data`` (values changed or
    not): a sub-model of a subclass of its field's annotated class would come back from a
    dict as the annotated class (or fail on its extra fields), so it is rebuilt by its own
    class and passed as an instance."""
    out = dict(data)
    values = model.__dict__
    for name, field in type(model).model_fields.items():
        if name in out and name in values:
            annotated = identity.annotated_models(field.annotation)
            if annotated:
                out[name] = _rebuilt(values[name], out[name], annotated)
    return out


def _rebuilt(value: tp.Any, data: tp.Any, annotated: tuple[type, ...]) -> tp.Any:
    if isinstance(value, pydantic.BaseModel) and isinstance(data, dict):
        data = _with_subclass_instances(value, data)
        kind = type(value)
        key = getattr(kind, "_exca_discriminator_key", None)  # (a DiscriminatedModel)
        if key is not None and key in data:
            return data  # its key names the class (possibly another one now)
        if kind not in annotated and issubclass(kind, annotated):
            return _from_config(kind, data)
        return data
    if isinstance(value, list | tuple) and isinstance(data, list) and len(value) == len(data):
        return [_rebuilt(sub, item, annotated) for sub, item in zip(value, data)]
    if isinstance(value, dict) and isinstance(data, dict):
        return {
            k: _rebuilt(value[k], sub, annotated) if k in value else sub for k, sub in data.items()
        }
    if isinstance(value, set | frozenset) and isinstance(data, list):
        # (a set's export lists its items in uid order: an item is found by its dump;
        # one the changes replaced is left to validation)
        by_dump = [
            (
                sub.model_dump(mode="json", warnings=False, by_alias=False, serialize_as_any=True),
                sub,
            )
            for sub in value
            if isinstance(sub, pydantic.BaseModel)
        ]
        out = []
        for item in data:
            found = next((sub for dumped, sub in by_dump if dumped == item), None)
            out.append(item if found is None else _rebuilt(found, item, annotated))
        return out
    return data


def _uid_template(cls: type) -> str:
    """``_uid_string`` of an infra class (a plain/ClassVar attribute or a private attribute),
    checked, and remembered for the class."""
    private = getattr(cls, "__private_attributes__", {}).get("_uid_string")
    if private is not None and isinstance(getattr(private, "default", None), str):
        template = str(private.default)
    else:
        template = str(cls._uid_string)  # type: ignore[attr-defined]
    fields = {f for f in _UID_FIELDS if "{" + f + "}" in template}
    if fields != set(_UID_FIELDS) or template.count("{") != len(_UID_FIELDS):
        raise ValueError(
            f"_uid_string={template!r} must contain exactly {{method}}, {{version}} and {{uid}}"
        )
    _TEMPLATES[cls] = template
    return template


def _collect_infras(value: tp.Any, prefix: str, out: dict[str, BaseInfra]) -> None:
    if isinstance(value, BaseInfra):
        out[prefix] = value
        return
    if isinstance(value, pydantic.BaseModel):
        names = list(type(value).model_fields)
        private = value.__pydantic_private__ or {}
        for name in names:
            _collect_infras(value.__dict__.get(name), f"{prefix}.{name}" if prefix else name, out)
        for name, sub in private.items():
            if isinstance(sub, BaseInfra):
                out[f"{prefix}.{name}" if prefix else name] = sub
    elif isinstance(value, dict):
        for key, sub in value.items():
            _collect_infras(sub, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list | tuple):
        for index, sub in enumerate(value):
            _collect_infras(sub, f"{prefix}.{index}" if prefix else str(index), out)


def _is_there_but_no_folder(path: Path) -> bool:
    """``path.exists() and not path.is_dir()`` in one stat (each infra given a folder
    checks it)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EBADF):
            return False  # (as Path.exists: nothing there, or not reachable as a path)
        raise
    return not stat.S_ISDIR(mode)
