"""MapInfra: a per-item cache for a method ``method(self, items) -> Iterator[output]``."""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import hashlib
import inspect
import logging
import operator
import os
import types
import typing as tp
from pathlib import Path

import pydantic

from ..graph import calls, codeprint, ranks, store, wiring
from ..graph.node import DEFAULT_MAX_JOBS, Node
from ..storage.cachedict import CacheDict, MissingKey
from ..storage.dumping import PAYLOAD_ERRORS
from ..storage.index import INDEX_SUFFIX
from ..storage.keytext import check_utf8
from . import uidfolder
from .base import BaseInfra
from .method import InfraMethod, check_plain_method, reduce_bound
from .resources import SubmititMixin
from .task import MethodCall, chained_nodes

logger = logging.getLogger("exca")
# (what a user's type checker sees of a decorated method: the config type, the type of
# one item and of one output; obj.method(items) takes any iterable of such items, as a
# call does, and is an Iterator of those outputs)
S = tp.TypeVar("S")
I = tp.TypeVar("I")  # noqa: E741
O = tp.TypeVar("O")  # noqa: E741
O_co = tp.TypeVar("O_co", covariant=True)
# (lower case: a string annotation, under `from __future__ import annotations`, may say
# "List[int]" or "tp.Tuple[...]")
_SEQUENCE_HINTS = ("list", "tuple", "sequence", "iterable", "iterator", "collection")


class ItemUid:
    """``item_uid`` wrapped so that uids longer than ``max_length`` are shortened:
    ``uid[:c]..<cut>..uid[-c:]-<md5[:8]>`` (idempotent; None disables)."""

    def __init__(self, func: tp.Callable[[tp.Any], str], max_length: int | None) -> None:
        if max_length is not None and max_length < 32:
            raise ValueError(f"item_uid_max_length={max_length} is too small (minimum 32)")
        self.func = func
        self.max_length = max_length
        self.warned = False  # (about uids holding a memory address)

    def shorten(self, uid: str) -> str:
        limit = self.max_length
        if limit is None or len(uid) <= limit:
            return uid
        size = len(uid)
        keep = (limit - 13 - len(str(size))) // 2
        check_utf8(uid)  # (its digest needs its bytes)
        digest = hashlib.md5(uid.encode("utf8")).hexdigest()[:8]
        return f"{uid[:keep]}..{size - 2 * keep}..{uid[-keep:]}-{digest}"

    def __call__(self, item: tp.Any) -> str:
        uid = self.func(item)
        if type(uid) is not str:
            if not isinstance(uid, str):
                raise TypeError(f"item_uid must return a str, got {uid!r} for item {item!r}")
            uid = str.__str__(uid)
        return self.shorten(uid)

    def many(self, items: tp.Sequence[tp.Any]) -> list[str]:
        """Uids of many items (the common case runs at C speed: no per-item Python call)."""
        return self.shorten_all(self.unshortened(items))

    def unshortened(self, items: tp.Sequence[tp.Any]) -> list[str]:
        """The item_uid function's strings (checked), before any shortening."""
        try:
            uids = list(map(self.func, items))
        except Exception as error:
            raise self._failed(items, error) from error
        if uids and self.func is not str and set(map(type, uids)) != {str}:
            for uid, item in zip(uids, items):
                if not isinstance(uid, str):
                    raise TypeError(f"item_uid must return a str, got {uid!r} for item {item!r}")
            # str subclasses (a str Enum, numpy.str_): their text, as plain str
            uids = [u if type(u) is str else str.__str__(u) for u in uids]
        if uids and not self.warned and " at 0x" in uids[0]:
            self.warned = True  # (the first item only: this runs on every call)
            logger.warning(
                "item_uid %s gives %r: a memory address changes with every run, so nothing "
                "would ever be reused. Make item_uid return what identifies the item (a "
                "name, an id, a path)",
                getattr(self.func, "__qualname__", repr(self.func)),
                uids[0][:200],
            )
        return uids

    def _failed(self, items: tp.Sequence[tp.Any], error: Exception) -> Exception:
        """The error of item_uid on the first item it fails on, naming that item."""
        for item in items:
            try:
                self.func(item)
            except Exception as found:
                error = found
                break
        else:
            item = "?"
        name = getattr(self.func, "__qualname__", repr(self.func))
        message = f"item_uid {name} failed on item {item!r:.200}: {type(error).__name__}: {error}"
        try:
            return type(error)(message)  # (the same type: except clauses keep working)
        except Exception:
            return RuntimeError(message)

    def shorten_all(self, uids: list[str]) -> list[str]:
        if uids and self.max_length is not None and max(map(len, uids)) > self.max_length:
            return [self.shorten(u) for u in uids]
        return uids


class MapMethod(InfraMethod, tp.Generic[S, I, O]):
    """``@infra.apply(item_uid=...)`` of a MapInfra: ``obj.method`` is a ``BoundMap``."""

    def __init__(
        self,
        infra: BaseInfra,
        func: tp.Callable[[S, tp.Any], tp.Iterable[O]],
        **options: tp.Any,
    ) -> None:
        check_plain_method(func)
        params = list(inspect.signature(func).parameters.values())
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        if len(params) != 2 or any(p.kind not in positional for p in params):
            shown = str(inspect.signature(func))
            raise TypeError(
                f"MapInfra methods must have the signature (self, items), with items a plain "
                f"positional parameter: {func.__qualname__} has {shown}"
            )
        annotation = params[1].annotation
        text = (
            annotation
            if isinstance(annotation, str)
            else getattr(annotation, "__name__", str(annotation))
        )
        text = str(text) + str(getattr(annotation, "__origin__", ""))
        if annotation is inspect.Parameter.empty or not any(
            h in text.lower() for h in _SEQUENCE_HINTS
        ):
            got = "no annotation" if annotation is inspect.Parameter.empty else repr(annotation)
            name = params[1].name
            raise TypeError(
                f"The items parameter of {func.__qualname__} must be annotated as a list, tuple, "
                f"Sequence or Iterable (got {got}), e.g. def {func.__name__}(self, "
                f"{name}: list[str])"
            )
        item_uid, max_length = options.get("item_uid"), options.get("item_uid_max_length", 256)
        if not callable(item_uid):
            raise TypeError(
                f"item_uid of {func.__qualname__} must be a function of one item returning a "
                f"str (e.g. item_uid=str), got {item_uid!r}"
            )
        given = max_length
        if max_length is not None:
            try:
                max_length = operator.index(max_length)  # (numpy ints are ints)
            except TypeError:
                max_length = 0
        if max_length is not None and max_length < 32:
            raise ValueError(
                f"item_uid_max_length of {func.__qualname__} must be an int >= 32, or None "
                f"(no shortening), got {given!r}"
            )
        super().__init__(infra, func, **options)
        self.param_name = params[1].name
        self.item_uid = ItemUid(item_uid, max_length)

    if tp.TYPE_CHECKING:  # (InfraMethod.__get__ at runtime: these say what it returns)

        @tp.overload
        def __get__(self, obj: None, objtype: tp.Any = None) -> MapMethod[S, I, O]: ...
        @tp.overload
        def __get__(self, obj: S, objtype: tp.Any = None) -> BoundMap[I, O]: ...
        def __get__(self, obj: tp.Any, objtype: tp.Any = None) -> tp.Any: ...

    def bound(self, obj: tp.Any) -> BoundMap[I, O]:
        return BoundMap(self, obj)


class BoundMap(tp.Generic[I, O_co]):
    """``obj.method``: ``obj.method(items)`` computes every missing item, then returns a lazy
    iterator over the outputs in input order (duplicates repeated)."""

    __slots__ = ("method", "obj")

    def __init__(self, method: MapMethod[tp.Any, I, O_co], obj: pydantic.BaseModel) -> None:
        self.method = method
        self.obj = obj

    __reduce__ = reduce_bound

    @tp.overload
    def __call__(self, items: tp.Iterable[I] | Node, /) -> tp.Iterator[O_co]: ...
    @tp.overload  # (by the name of the method's parameter, which a checker cannot see)
    def __call__(self, **items: tp.Iterable[I] | Node) -> tp.Iterator[O_co]: ...
    def __call__(self, *args: tp.Any, **kwargs: tp.Any) -> tp.Iterator[O_co]:
        method = self.method
        if method.shadowed and method.overridden_on(self.obj):  # (super().method(items))
            return iter(method.func(self.obj, *args, **kwargs))
        if kwargs:
            if args or len(kwargs) != 1 or method.param_name not in kwargs:
                if len(kwargs) == 1 and not args:
                    raise NameError(
                        f"{method.func.__qualname__} takes its items as {method.param_name!r}, "
                        f"not {next(iter(kwargs))!r}"
                    )
                raise ValueError(
                    f"{method.func.__qualname__} takes exactly one argument (the items)"
                )
            items = kwargs[method.param_name]
        elif len(args) != 1:
            raise ValueError(
                f"{method.func.__qualname__} takes exactly one argument (the items), got {len(args)}"
            )
        else:
            items = args[0]
        if ranks.ACTIVE:  # (in a multi-task job: a nested call is followed, see ranks.py)
            infra = tp.cast(MapInfra, method.infra_of(self.obj))
            role = ranks.nested_role() if infra.folder is not None else None
            if role is not None:
                what = f"{method.func.__qualname__} of {infra.uid()}"
                if role == "lead":
                    with ranks.led(what):
                        return self._call(items)
                return self._followed(what, items)
        return self._call(items)

    def _followed(self, what: str, items: tp.Any) -> tp.Iterator[tp.Any]:
        """Another rank than 0's nested call: it makes the calls rank 0's makes, then
        reads its outputs (see ranks.py)."""
        from ..graph import worker

        method = self.method
        if isinstance(items, Node):
            node = self.node(items)
            worker.follow_nested(what, node)
            node.cache.reread()  # (what rank 0 wrote meanwhile)
            return iter(store.map_outputs(node))
        if not isinstance(items, list | tuple):
            items = as_items(items, method.func.__qualname__)
        infra = tp.cast(MapInfra, method.infra_of(self.obj))
        uids = method.item_uid.shorten_all(method.item_uid.unshortened(items))
        node = infra._map_node(items, uids)
        worker.follow_nested(what, node)
        node.cache.reread()
        return node.cache.values_of(uids, where=node.uid)

    def _call(self, items: tp.Any) -> tp.Iterator[tp.Any]:
        method = self.method
        if isinstance(items, Node):  # items produced by an upstream node
            node = self.node(items)
            calls.run_nodes([node])
            return iter(store.map_outputs(node))
        if not isinstance(items, list | tuple):
            items = as_items(items, method.func.__qualname__)
        infra = tp.cast(MapInfra, method.infra_of(self.obj))
        try:
            uids = method.item_uid.unshortened(items)
        except Exception:  # (nodes among the items: said so, not item_uid's own error)
            _refuse_node_items(method, items)
            raise
        cache = infra.cache_dict
        infra._check_unchanged_before_reading()
        reusing = infra.mode in calls.REUSING_MODES
        if reusing:  # warm path: the keys in RAM are short enough, so these need no shortening
            values = cache.ram_values(uids)
            if values is not None:
                return iter(values)
        uids = method.item_uid.shorten_all(uids)
        missing = None
        if reusing:
            with cache.frozen_cache_folder():  # (read once: misses need no second read)
                cache.reread()  # what other processes retried, forced or deleted meanwhile
                cache.drop_stale_ram()
                missing = cache.missing(uids)
            # (a forced sub-config task, chained: computed again with what follows it)
            if not missing and not infra._force_pending():  # fast path: no scheduler
                infra._check_defaults(
                    restore=True
                )  # (a class default changed since they were made?)
                infra._restore_listed_files(cache)  # (yaml files removed by hand?)
                codeprint.check_items(cache, uids, method.func, infra.uid())
                return _refilled(infra, items, uids, cache.values_of(uids, where=infra.uid()))
        node = infra._map_node(items, uids)
        calls.map_items(node, uids, missing)
        codeprint.check_items(node.cache, uids, method.func, node.uid)
        return _refilled(infra, items, uids, node.cache.values_of(uids, where=node.uid))

    def node(self, items: tp.Iterable[I] | Node) -> Node[list[O_co]]:
        """The graph node of this map over items (a list, or an upstream node producing the
        list); nothing runs. It shares its per-item cache with eager calls. It keeps a copy
        of the list: adding or removing items afterwards does not change the node."""
        infra = tp.cast(MapInfra, self.method.infra_of(self.obj))
        if isinstance(items, list | tuple):
            items = list(items)
        elif not isinstance(items, Node):
            items = as_items(items, self.method.func.__qualname__)
        return infra._map_node(items)

    def __repr__(self) -> str:
        return f"<bound {self.method.func.__qualname__} of {type(self.obj).__name__}>"


def _refuse_node_items(method: InfraMethod, items: tp.Sequence[tp.Any]) -> None:
    """TypeError if nodes are among the items of a map (a call's or a node's)."""
    if Node in set(map(type, items)):  # (C speed)
        raise TypeError(
            f"{method.func.__qualname__}: the items of a map are values, or one node whose "
            "output is the list of items, not a list of nodes (a task taking the list of "
            "nodes can return the list of their outputs)"
        )


def _refuse_unlisted_output(map_uid: str, source: Node) -> None:
    """TypeError, before anything runs, for a map fed by a task whose return annotation
    says that its output is no list of items (a number, a text, a dict, None): the run
    would fail only once that task was computed (``store.check_items_output``)."""
    if source.kind != "task":
        return
    hint = wiring.hints(codeprint.method_function(source.function)).get("return")
    said = wiring.kind(hint)
    if said in ("number", "text", "mapping") or hint is type(None):
        shown = getattr(hint, "__name__", None) if not tp.get_args(hint) else None
        raise TypeError(
            f"The items of {map_uid} would come from {source.uid}, whose method returns "
            f"{shown or hint} (its annotation): a map needs a list of items. Feed the map "
            "a node returning a list"
            + (" (a dict: return list(d.values()))" if said == "mapping" else "")
        )


def as_items(items: tp.Any, name: str) -> list[tp.Any]:
    """The items of a map call as a list (a string is refused: its characters would be
    the items)."""
    if isinstance(items, str | bytes):
        raise TypeError(
            f"{name} takes a list of items, got the {type(items).__name__} {items!r:.80}: "
            "wrap one item in a list ([item])"
        )
    if isinstance(items, collections.abc.Mapping):  # (its keys would be the items, silently)
        raise TypeError(
            f"{name} takes a list of items, got a {type(items).__name__}: give list(d) for "
            "its keys, or list(d.values()) for its values"
        )
    try:
        return list(items)
    except TypeError:
        raise TypeError(
            f"{name} takes a list (or any iterable) of items, got {type(items).__name__}: "
            "wrap one item in a list ([item])"
        ) from None


MAX_REFILLS = 3  # items deleted while read, computed again, before the call gives up


def _refilled(
    infra: MapInfra, items: tp.Sequence[tp.Any], uids: list[str], values: tp.Iterator[tp.Any]
) -> tp.Iterator[tp.Any]:
    """The outputs of a call, read lazily; an item deleted since the call found it (mode
    force or retry in another process: deleted, then written again) is waited for, or
    computed again, instead of raising KeyError."""
    if not isinstance(values, types.GeneratorType):
        return values  # (outputs held in memory: nothing can be deleted under them)
    return _refilling(infra, items, uids, values)


def _refilling(
    infra: MapInfra, items: tp.Sequence[tp.Any], uids: list[str], values: tp.Iterator[tp.Any]
) -> tp.Iterator[tp.Any]:
    position = refills = 0
    while True:
        try:
            for value in values:
                yield value
                position += 1
            return
        except Exception as error:
            if infra.cache_dict.entry_type(uids[position]) == "Error":
                # a cached item error (a KeyError of the method's too): a job sent since
                # to retry it is waited for
                node = infra._map_node(items[position:], uids[position:])
                if refills >= MAX_REFILLS or not calls.wait_for_retried_items(
                    node, uids[position:]
                ):
                    raise
                refills += 1
                values = node.cache.values_of(uids[position:], where=node.uid)
                continue
            if isinstance(error, KeyError):
                key = uids[position]
                cache = infra.cache_dict
                cache.refresh()
                if (
                    refills >= MAX_REFILLS
                    or not isinstance(error, MissingKey)
                    or error.args != (key,)
                    or cache.count_errors([key])
                ):
                    raise  # (a KeyError raised loading the value)
            elif isinstance(error, PAYLOAD_ERRORS):  # (a payload removed or damaged outside exca?)
                retry = infra.mode == "retry" and refills < MAX_REFILLS
                store.drop_damaged_or_raise(
                    error, infra.cache_dict, uids[position:], infra.uid(), retry
                )
            else:
                if store.class_not_found(error):  # (as a task's result says)
                    error.add_note(
                        f"exca: the cached item {uids[position]!r} of {infra.uid()} "
                        f"{store.CLASS_NOT_FOUND}"
                    )
                raise
        refills += 1
        node = infra._map_node(items[position:], uids[position:])
        calls.map_items(node, uids[position:])
        values = node.cache.values_of(uids[position:], where=node.uid)


if tp.TYPE_CHECKING:

    class MapDecorator(tp.Protocol):
        """What ``@infra.apply(item_uid=...)`` is for a type checker: the item type is
        read from the items parameter's annotation (a list, tuple, Sequence, Iterable or
        Iterator of items, as the runtime check asks; no catch-all: with one, an output
        type holding Any, e.g. np.ndarray, made mypy type the method Any)."""

        @tp.overload
        def __call__(
            self, func: tp.Callable[[S, list[I]], tp.Iterable[O]], /
        ) -> MapMethod[S, I, O]: ...
        @tp.overload
        def __call__(
            self, func: tp.Callable[[S, tuple[I, ...]], tp.Iterable[O]], /
        ) -> MapMethod[S, I, O]: ...
        @tp.overload
        def __call__(
            self, func: tp.Callable[[S, tp.Iterator[I]], tp.Iterable[O]], /
        ) -> MapMethod[S, I, O]: ...


class MapInfra(BaseInfra, SubmititMixin):
    """Per-item cache of a method ``(self, items) -> Iterator[output]``:
    ``@infra.apply(item_uid=str)``. A call computes the missing items (in this process, a
    thread/process pool, or submitit jobs packed by ``max_jobs`` / ``min_samples_per_job``),
    then returns the outputs lazily, in input order."""

    cluster: tp.Literal["auto", "local", "slurm", "debug", "threadpool", "processpool"] | None = (
        None
    )
    keep_in_ram: bool = True
    max_jobs: int | None = pydantic.Field(default=DEFAULT_MAX_JOBS, ge=1)  # None: no limit
    min_samples_per_job: int = pydantic.Field(default=1, ge=1)
    forbid_single_item_computation: bool = False

    def apply(
        self,
        method: None = None,  # (refused: `@infra.apply` without arguments has no item_uid)
        *,
        item_uid: tp.Callable[[tp.Any], str] | None = None,
        item_uid_max_length: int | None = 256,
        exclude_from_cache_uid: tp.Any = (),
        cache_type: str | None = None,
        chain_subconfigs: bool = True,
    ) -> MapDecorator:
        """Decorate a map method; ``item_uid(item) -> str`` names each item's cache entry.
        ``chain_subconfigs=False`` stops sub-configs' task methods from being computed first
        (see the pipelines docs)."""
        if method is not None:
            raise TypeError(
                "MapInfra.apply takes keyword arguments only: @infra.apply(item_uid=str)"
            )
        if item_uid is None:
            raise TypeError("MapInfra.apply requires item_uid (a function item -> unique str)")

        def decorate(func: tp.Callable[[S, tp.Any], tp.Iterable[O]]) -> MapMethod[S, tp.Any, O]:
            return MapMethod(
                self,
                func,
                item_uid=item_uid,
                item_uid_max_length=item_uid_max_length,
                exclude_from_cache_uid=exclude_from_cache_uid or None,
                cache_type=cache_type,
                chain_subconfigs=chain_subconfigs,
            )

        return tp.cast("MapDecorator", decorate)

    def _check_settings(self) -> None:
        super()._check_settings()
        self._check_resources(self.folder)

    def _prepare_reuses(self, folder: Path) -> bool:
        # (items cached before, read by the call about to compute the missing ones; a
        # forced call computes its items again: it reuses none, and warned twice that it
        # was "Reusing the cache" computed under other sub-config versions)
        return self.mode != "force" and self._has_result(folder)

    def _reuses(self, folder: Path) -> bool:
        return self._prepare_reuses(folder)

    def _versions_mark(self) -> str | None:
        """What the items computed now are marked with when the folder's full-uid.yaml
        records other sub-config versions (see uidfolder.versions_mark)."""
        if self.folder is None or self._runtime().full_uid_current:
            return None  # (this instance found the folder's file current: no file read)
        return uidfolder.versions_mark(
            os.path.join(self.folder, self.uid()),
            functools.partial(self.config, uid=True, exclude_defaults=False),
            self._full_uid_yaml,
            self._sub_configs,
        )

    def _has_result(self, folder: Path) -> bool:
        # A folder without any item index is being made (its creator writes the yaml
        # files next, before any item): its missing yaml files were not removed by hand
        try:
            return any(e.name.endswith(INDEX_SUFFIX) for e in os.scandir(folder))
        except FileNotFoundError:
            return False

    def _holds_results(self, folder: Path) -> bool:
        return True  # (iter_cached lists every map folder with a uid.yaml, items or not)

    def _check_disk(self) -> None:
        if self.folder is not None and not Path(self.folder).parent.exists():
            # (a TaskInfra makes missing parents: say why this one did not, and what to do)
            parent = Path(self.folder).parent
            raise ValueError(
                f"MapInfra folder {self.folder} cannot be created: its parent {parent} does "
                "not exist (a MapInfra makes its own folder only, not missing parents as a "
                f"TaskInfra does): create it first (mkdir -p {parent}), or fix a typo in the "
                "path"
            )

    def executor(self) -> tp.Any:
        """A configured ``submitit.AutoExecutor`` (None when items are computed in this
        process: cluster None, threadpool or processpool)."""
        if self.mode == "read-only":
            raise RuntimeError("mode='read-only' cannot submit jobs: no executor")
        if self.cluster in (None, "threadpool", "processpool"):
            return None
        from ..graph.executors import format_logs, submitit_executor

        node = self._map_node([])
        if node.execution.logs_problem is not None:
            raise ValueError(node.execution.logs_problem)
        return submitit_executor(
            node.execution, format_logs(node.execution.logs or "", node.folder)
        )

    # TaskInfra's per-config calls: a map has one computation per item (its node's)
    def job(self) -> tp.NoReturn:
        """Not for a map (an AttributeError): ``obj.method.node(items).job()`` sends the
        missing items of those items."""
        self._per_item("job()", "call its .job() (it sends the missing items)")

    def status(self) -> tp.NoReturn:
        """Not for a map (an AttributeError): ``obj.method.node(items).status()``."""
        self._per_item("status()", "call its .status()")

    def failure(self) -> tp.NoReturn:
        """Not for a map (an AttributeError): ``obj.method.node(items).failure()``."""
        self._per_item("failure()", "call its .failure()")

    def clear_job(self) -> tp.NoReturn:
        """Not for a map (an AttributeError): ``obj.method.node(items).clear()`` removes
        those items' outputs."""
        self._per_item("clear_job()", "call its .clear() (it removes those items' outputs)")

    def job_array(self, *args: tp.Any, **kwargs: tp.Any) -> tp.NoReturn:
        """Not for a map (an AttributeError): a call, or ``exca.graph.run`` of its node,
        sends its missing items as one job array (``max_jobs``)."""
        self._per_item(
            "job_array()", "run it: its missing items go out as one job array (max_jobs)"
        )

    def _per_item(self, what: str, instead: str) -> tp.NoReturn:
        """The calls of a TaskInfra that name the one computation of a config: a user
        switching a method to a MapInfra got a bare "'MapInfra' object has no attribute
        'status'". An AttributeError still (what it was), saying what to call instead."""
        method = self._runtime().method
        if method is None:
            where, build = "a MapInfra", "obj.method.node(items)"
        else:
            name = method.func.__name__
            where, build = (
                f"{method.func.__qualname__} is a map (MapInfra): it",
                f"obj.{name}.node(items)",
            )
        raise AttributeError(
            f"{where} has no infra.{what}: which items would it be about? Build "
            f"{build} with the items and {instead}"
        )

    @property
    def item_uid(self) -> ItemUid:
        """The decorated method's ``item_uid``, shortened past ``item_uid_max_length``:
        ``infra.item_uid(item)`` is the key of an item in ``cache_dict``."""
        return tp.cast(MapMethod, self._method()).item_uid

    @property
    def cache_dict(self) -> CacheDict[tp.Any]:
        """The CacheDict of this config's items (in the uid folder)."""
        return self._items_cache()

    def _items_cache(self, adopt: bool = True) -> CacheDict[tp.Any]:
        """(``adopt``: after renaming a legacy-named cache, see _adopt_legacy; a node being
        built only warns of one)"""
        runtime = self._runtime()
        if not runtime.legacy_checked:
            self._adopt_legacy(rename=adopt)
        if runtime.cache is None:
            folder = self.uid_folder()
            if folder is None and not self.keep_in_ram:
                return CacheDict(None, keep_in_ram=True)  # nothing kept: recomputed every call
            method = self._method()
            try:
                runtime.cache = CacheDict(
                    folder,
                    keep_in_ram=self.keep_in_ram,
                    cache_type=method.options.get("cache_type"),
                    permissions=self.permissions,
                    frees_files=self.mode != "read-only",  # (read-only writes nothing)
                )
                runtime.cache._holds_results = True
            except ValueError as error:  # (an unknown cache_type: say whose)
                name = getattr(method.func, "__qualname__", repr(method.func))
                raise ValueError(f"@infra.apply of {name}: {error}") from None
        cache: CacheDict[tp.Any] = runtime.cache
        return cache

    def _map_node(
        self, items: tp.Sequence[tp.Any] | Node, uids: tp.Sequence[str] | None = None
    ) -> Node:
        if not isinstance(items, Node):
            _refuse_node_items(self._method(), items)
        else:
            _refuse_unlisted_output(self.uid(), items)
        runtime = self._runtime()
        base: Node | None = runtime.node
        if base is None:
            owner = self._owner()
            method = tp.cast(MapMethod, self._method())
            uid = self.uid()
            step, _, config_uid = uid.rpartition("/")
            folder = self.uid_folder()
            cache = self._items_cache(adopt=False)  # (a dry run builds nodes too)
            memoized = self.folder is not None or self.keep_in_ram
            base = Node(
                kind="map",
                step=step,
                config_uid=config_uid,
                root=None if self.folder is None else Path(self.folder),
                function=MethodCall(owner, method, weak=memoized),
                cache=cache,
                mode=self.mode,
                force_state=runtime.force_state,
                execution=self._execution(
                    logs_folder=folder,
                    job_name=uid[uid.find(type(owner).__name__) :],
                    workdir_folder=None,  # (a new snapshot per call: below)
                    max_jobs=self.max_jobs,
                    min_items_per_job=self.min_samples_per_job,
                ),
                label=uid,
                # (a plan says "cached, computed with other sub-config versions" of a map
                # too, as of a task: the warning alone was easy to miss)
                reuse_note=self._reuse_note if self.folder is not None else None,
                # (its items share one full-uid.yaml: renewed once each is of today's
                # sub-config versions, see worker._renew_versions)
                versions_mark=self._versions_mark if self.folder is not None else None,
                after_store=self._record_versions if self.folder is not None else None,
                **self._node_folder_hooks(cache),
                item_uid=method.item_uid,
                forbid_single_item=self.forbid_single_item_computation,
                # (a sub-config's task computed first, as for a task: not inside each
                # chunk job, where a nested Slurm job would wait on a held allocation)
                chained=chained_nodes(owner)
                if method.options.get("chain_subconfigs", True)
                else (),
            )
            if memoized:
                runtime.node = base
        if self.workdir is not None and self.workdir.folder is None and self.folder is not None:
            # each call that submits copies the code as it is now (the copy is made only
            # when a job is submitted)
            # (from the execution's: it holds the cache's permissions, see _execution; the
            # snapshot and its code/ folder were made with the umask's mode)
            source = base.execution.workdir or self.workdir
            workdir = source.model_copy(update={"folder": self._workdir_folder(base.step)})
            workdir._exca_levels = 2  # (<step>/code/<date>-<random>: see _workdir_folder)
            execution = dataclasses.replace(base.execution, workdir=workdir)
            return dataclasses.replace(base, items=items, item_uids=uids, execution=execution)
        return dataclasses.replace(base, items=items, item_uids=uids)
