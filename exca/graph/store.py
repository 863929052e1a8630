"""Reading a node's state and results from its CacheDict (no computation, no claims)."""

from __future__ import annotations

import logging
import typing as tp

from ..storage.cachederror import CachedError
from ..storage.cachedict import UNREADABLE_NOTE, CacheDict, MissingKey
from ..storage.dumping import PAYLOAD_ERRORS, is_damaged_payload, mark_if_damaged
from ..storage.index import Entry
from . import codeprint
from .errors import UpstreamFailed, named_items, raise_from
from .node import TASK_KEY, Node

logger = logging.getLogger("exca")
State = tp.Literal["missing", "done", "error"]


def task_state(node: Node, refresh: bool = False) -> State:
    """``refresh``: first read what other writers added (long-lived nodes, waiting)."""
    kind = node.cache.entry_type(TASK_KEY, refresh=refresh)
    if kind is None:
        return "missing"
    return "error" if kind == "Error" else "done"


def entry_ref(entry: Entry) -> str:
    """What identifies one computation of a result, as provenance records it: the time it
    was computed (kept when ``clean compact`` moves index lines; recomputing changes it),
    else where its index line is (results written without provenance, older caches)."""
    meta = entry.info.get("#meta")
    when = meta.get("t") if isinstance(meta, dict) else None
    return f"t={when}" if isinstance(when, int | float) else f"{entry.file}:{entry.offset}"


def uid_shape(uid: str) -> tuple[str, ...]:
    """A node uid (``<module>.<Class>.<method>,<version>/<config>[/inputs-<digest>]``)
    without its class's name nor its inputs' digest (which names its upstream classes):
    what provenance recorded before a class was renamed or moved (``exca rename``) has
    the same shape as the uid of the same node today."""
    step, _, rest = uid.partition("/")
    name, _, version = step.partition(",")
    config, _, more = rest.partition("/")
    return (name.rsplit(".", 1)[-1], version, config, more.split("-", 1)[0])


def computed_by(node: Node) -> str | None:
    """The job whose worker wrote a task's cached outcome (None: nothing cached, or
    written without a job)."""
    entry = node.cache.entry(TASK_KEY)
    meta = entry.info.get("#meta") if entry is not None else None
    job = meta.get("job") if isinstance(meta, dict) else None
    return None if job is None else str(job)


def computed_by_cluster(node: Node) -> str | None:
    """The kind of the job whose worker wrote a task's cached outcome ("slurm", "local"...;
    None: unknown, e.g. written without a job, or by an older exca)."""
    entry = node.cache.entry(TASK_KEY)
    meta = entry.info.get("#meta") if entry is not None else None
    cluster = meta.get("cl") if isinstance(meta, dict) else None
    return cluster if isinstance(cluster, str) else None


def started_at(entry: Entry | None) -> float | None:
    """When the computation of a cached entry started (its provenance time; None: an entry
    without one, e.g. of an older exca)."""
    meta = entry.info.get("#meta") if entry is not None else None
    started = meta.get("t") if isinstance(meta, dict) else None
    return float(started) if isinstance(started, int | float) else None


def computed_since(cache: CacheDict[tp.Any], when: float, key: str = TASK_KEY) -> bool:
    """Whether a cached outcome (a task's, or a map item's) comes from a computation
    started at ``when`` or later (an entry without a provenance time is older)."""
    started = started_at(cache.entry(key))
    # (recorded unrounded since; older exca rounded it to the ms: such a start is compared
    # at that precision, as before)
    if started is None:
        return False
    if started == round(started, 3):  # (rounded: the same ms as ``when`` counts as since)
        return started >= round(when, 3)
    return started >= when


def outdated_outcome(cache: CacheDict[tp.Any], mode: str) -> tuple[str, int] | None:
    """Where the outcome a new job of a task replaces is: any result under mode="force",
    a cached error under mode="retry" (None: nothing to replace)."""
    if mode not in ("force", "retry"):
        return None
    cache.refresh()
    entry = cache.entry(TASK_KEY)
    if entry is None or (mode == "retry" and entry.info.get("#type") != "Error"):
        return None
    return entry.file, entry.offset


def drop_outcome(cache: CacheDict[tp.Any], outdated: tuple[str, int] | None) -> bool:
    """Remove an outdated outcome right after its replacing job was submitted, unless that
    job already replaced it (a synchronous executor). Not before submitting: the scheduler
    would then wait for the old job if it is still winding down, instead of submitting.
    Until then (or without it), status() and result() showed the old outcome. Returns
    whether it was removed here (not: replaced or removed meanwhile by another writer)."""
    if outdated is None:
        return False
    # (one read for the check and the deletion: an outcome the new job wrote since stays;
    # a copy of the outdated one, written by a writer that raced with it, goes with it)
    copies = cache.copy_places([TASK_KEY])
    entry = cache.entry(TASK_KEY)
    if entry is None or (entry.file, entry.offset) != outdated:
        return False
    return bool(cache.delete_at(copies))


def output_places(cache: CacheDict[tp.Any], uids: tp.Iterable[str]) -> dict[str, tuple[str, int]]:
    """Where the current output of each item is (items without one are left out)."""
    places = {}
    with cache.frozen_cache_folder():  # (misses: one folder read, not one each)
        for uid in uids:
            entry = cache.entry(uid)
            if entry is not None:
                places[uid] = (entry.file, entry.offset)
    return places


def not_replaced(
    cache: CacheDict[tp.Any],
    places: tp.Mapping[str, tuple[str, int] | None],
    runs: tp.Container[str],
) -> list[str]:
    """The items whose output is still where ``output_places`` saw it (None: none then),
    unless that output was forced by one of ``runs`` (by another node of the run, once
    for both: its jobs skip it; or by another call of the same instance)."""
    kept = []
    with cache.frozen_cache_folder():
        for uid, place in places.items():
            entry = cache.entry(uid) if place is not None else None
            if entry is None or (entry.file, entry.offset) != place:
                continue
            if not forced_by(entry, runs):
                kept.append(uid)
    return kept


def forced_by(entry: tp.Any, runs: tp.Container[str]) -> bool:
    """Whether a cache entry (an item's output or error) was written under one of these
    forcing runs."""
    meta = entry.info.get("#meta") if entry is not None else None
    return isinstance(meta, dict) and meta.get("forced") in runs


def outdated_outcomes(members: tp.Sequence[tuple[tp.Any, tp.Any]]) -> list[tuple[Node, tp.Any]]:
    """``outdated_outcome`` of each forced or retried task among (run, unit) members."""
    out = []
    for run, unit in members:
        if unit.uids is None and run.action in ("force", "retry"):
            found = outdated_outcome(run.node.cache, run.action)
            if found is not None:
                out.append((run.node, found))
    return out


def drop_outcomes(outdated: list[tuple[Node, tp.Any]]) -> None:
    for node, found in outdated:
        drop_outcome(node.cache, found)


def cached_outcome(cache: CacheDict[tp.Any], missing: tp.Any) -> tp.Any:
    """A task's cached result or CachedError, or ``missing`` when there is none (removed,
    e.g. by another process forcing it, since it was seen): a KeyError raised loading it
    is raised."""
    try:
        return read_outcome(cache)
    except MissingKey:  # (a KeyError raised loading it is raised)
        return missing


def read_outcome(cache: CacheDict[tp.Any]) -> tp.Any:
    """A task's cached result or CachedError (MissingKey when there is none); an error
    reading it says what to do."""
    try:
        return cache[TASK_KEY]
    except MissingKey:
        raise
    except FileNotFoundError as error:
        raise unreadable_result(cache, error) from None
    except Exception as error:
        if class_not_found(error):
            error.add_note(f"exca: the cached result in {cache.folder} {CLASS_NOT_FOUND}")
        elif UNREADABLE_NOTE in getattr(error, "__notes__", ()):
            pass  # (intact, a file of the cache: its note says what to do)
        elif is_damaged_payload(error):
            error.add_note(
                f"exca: the cached result in {cache.folder} cannot be read (its file was "
                "damaged outside exca?): mode='retry' or mode='force' computes it again"
            )
        else:  # (its file changed in a way not told apart from the value's own error)
            error.add_note(
                f"exca: the cached result in {cache.folder} cannot be read; if its file was "
                "changed outside exca, mode='force' computes it again (or clear it: "
                "infra.clear_job(), node.clear())"
            )
        raise


# what pickle says of a class it cannot find (an object of the result), and what to do
CLASS_NOT_FOUND = (
    "holds an object whose class cannot be found now: renamed or moved since it was "
    "computed (restore it, or compute the result again with mode='force'), or its package "
    "is not installed here"
)


def class_not_found(error: BaseException) -> bool:
    """Whether a loading error is pickle's for a class (or module) that cannot be found."""
    return isinstance(error, ModuleNotFoundError) or (
        isinstance(error, AttributeError) and str(error).startswith("Can't get attribute")
    )


def result_damaged(node: Node) -> bool:
    """Whether a task's cached result cannot be read because its payload was removed or
    cut short outside exca (for mode retry, which computes such a result again). Its
    files are looked at, not loaded, when its format's record says what they are."""
    present = node.cache.payload_present(TASK_KEY)
    if present is not None:
        return not present
    try:
        cached_outcome(node.cache, None)
    except PAYLOAD_ERRORS as error:
        return is_damaged_payload(error)
    return False


def unreadable_result(cache: CacheDict[tp.Any], error: FileNotFoundError) -> FileNotFoundError:
    """The error of a task result whose payload file is gone (removed outside exca)."""
    new = FileNotFoundError(
        error.errno,
        f"The cached result in {cache.folder} cannot be read: its file {error.filename} is "
        "missing (removed by hand?). mode='retry' or mode='force' computes it again",
        error.filename,
    )
    mark_if_damaged(new, cache.folder)
    return new


def task_result(node: Node, missing: tp.Any = None) -> tp.Any:
    """The cached result of a task node (re-raises a cached error). ``missing``: returned
    when there is none (else KeyError)."""
    value = read_outcome(node.cache) if missing is None else cached_outcome(node.cache, missing)
    if isinstance(value, CachedError):
        raise_from(value, node.uid)
    return value


def item_states(node: Node, uids: tp.Sequence[str]) -> tuple[list[str], list[str]]:
    """(missing uids, uids to compute again: holding a cached error, or whose payload was
    removed or cut short outside exca), in order, deduplicated (what mode retry redoes)."""
    cache = node.cache
    with cache.frozen_cache_folder():
        missing = cache.missing(uids)
        missing_set = set(missing)
        present = [u for u in dict.fromkeys(uids) if u not in missing_set]
        damaged = set(cache.damaged(present))
        redo = [u for u in present if u in damaged or cache.entry_type(u) == "Error"]
    return missing, redo


def item_result(node: Node, uid: str) -> tp.Any:
    value = node.cache[uid]
    if isinstance(value, CachedError):
        raise_from(value, f"{node.uid} item {uid!r}")
    return value


def check_items_output(node: Node, source: Node, items: tp.Any) -> None:
    """TypeError unless ``items``, the output of ``source``, is a list of items for the map
    ``node`` (not a text, a dict, nor a single value)."""
    if isinstance(items, str | bytes | tp.Mapping) or not isinstance(items, tp.Iterable):
        raise TypeError(
            f"The items of {node.uid} come from {source.uid}, whose output is not a "
            f"list of items: {type(items).__name__} {items!r:.80}"
            + (
                " (a dict: its method may return list(d.values()))"
                if isinstance(items, tp.Mapping)
                else ""
            )
        )


def map_item_uids(node: Node) -> list[str]:
    """Uids of a map node's items (its items come from a list, or an upstream's output)."""
    from .worker import load_output

    items = node.items
    if isinstance(items, Node):
        source = items
        try:
            items = load_output(source)
        except UpstreamFailed:
            raise
        except Exception as error:  # (e.g. an upstream item's cached error: not this node's)
            raise UpstreamFailed(
                f"{node.uid}: its items could not be read from {source.uid} "
                f"{unreadable_input(error, named=True)}"
            ) from error
        check_items_output(node, source, items)
    elif node.item_uids is not None:
        return list(node.item_uids)
    assert node.item_uid is not None
    many = getattr(node.item_uid, "many", None)
    items = () if items is None else items  # (not `items or ()`: an array has no truth value)
    return many(list(items)) if many is not None else [node.item_uid(i) for i in items]


def drop_damaged_or_raise(
    error: BaseException, cache: CacheDict[tp.Any], uids: tp.Sequence[str], where: str, retry: bool
) -> None:
    """An error reading a map's outputs: if it says a payload was removed or damaged
    outside exca and ``retry`` (mode retry), the damaged items are deleted (to compute
    again); else it is raised (a damaged payload with a note saying what to do)."""
    if not is_damaged_payload(error):
        raise error  # (e.g. a cached error of the method, raised again)
    damaged = _damaged_items(cache, uids) if retry else {}
    if not damaged:
        error.add_note(
            f"exca: a cached item of {where} cannot be read (its payload file is missing or "
            "damaged): mode='retry' computes it again"
        )
        raise error
    removed = _delete_if_unchanged(cache, damaged)
    if removed:  # (the others were written again meanwhile by another process: read)
        logger.warning(
            "%d cached item(s) of %s cannot be read (%s: %s): computed again (mode=retry)",
            len(removed),
            where,
            type(error).__name__,
            error,
        )


def damaged_outputs(node: Node) -> dict[str, tuple[str, int]]:
    """The items of a map whose payload no longer decodes (each read again), with where
    they were read (raises when its item uids cannot be read)."""
    return _damaged_items(node.cache, map_item_uids(node))


def _damaged_items(cache: CacheDict[tp.Any], uids: tp.Iterable[str]) -> dict[str, tuple[str, int]]:
    """The items whose payload is damaged (read again), with the entry read: a good
    output written meanwhile by another process is at another place."""
    damaged = {}
    for uid in dict.fromkeys(uids):
        entry = cache.entry(uid)
        try:
            cache[uid]
        except Exception as failure:  # (a deleted key...: not a damaged payload)
            if entry is not None and is_damaged_payload(failure):
                damaged[uid] = (entry.file, entry.offset)
    return damaged


def _delete_if_unchanged(
    cache: CacheDict[tp.Any], places: tp.Mapping[str, tuple[str, int]]
) -> list[str]:
    """Delete the entries still where they were read (not one written meanwhile); returns
    the uids of those deleted here."""
    copies = cache.copy_places(places)  # (one read: see drop_outcome)
    with cache.write():
        return cache.delete_at({uid: copies[uid] for uid in not_replaced(cache, places, ())})


# set on a damaged payload error by drop_damaged: what became of that payload, "removed"
# (by this reader), "rewritten" or "gone" (by another process, between the read and the
# removal: this reader removed nothing)
_DROPPED = "_exca_payload_dropped"


def payload_dropped(error: BaseException) -> str | None:
    """What ``drop_damaged`` did about the payload of this error (None: not called)."""
    return getattr(error, _DROPPED, None)


def drop_damaged(node: Node, error: BaseException) -> None:
    """A node in mode retry whose output a task of a run could not decode (its payload
    was changed outside exca in a way no ``stat`` tells, e.g. overwritten at the same
    size): its damaged outputs are removed, so that the run computes them again (as a
    call in mode retry does on reading them). Only the entries read, found damaged when
    read again: not a good one another process wrote meanwhile."""
    node.cache.refresh()
    uids = [TASK_KEY]
    if node.kind != "task":
        try:
            uids = map_item_uids(node)
        except Exception:  # (its items cannot be read: nothing removed)
            return
    damaged = _damaged_items(node.cache, uids)
    removed: list[str] = []
    if node.kind == "task" and damaged:
        removed = [TASK_KEY] if drop_outcome(node.cache, damaged[TASK_KEY]) else []
    elif damaged:
        removed = _delete_if_unchanged(node.cache, damaged)
    if not removed:  # (written again, or removed, by another process in between)
        node.cache.refresh()
        # (a map: every item was there when read; one missing now was removed meanwhile)
        present = all(node.cache.entry(uid) is not None for uid in uids)
        setattr(error, _DROPPED, "rewritten" if present else "gone")
        return
    logger.warning(
        "%d cached output(s) of %s cannot be read (%s: %s): removed, to compute again (mode=retry)",
        len(removed),
        node.uid,
        type(error).__name__,
        error,
    )
    setattr(error, _DROPPED, "removed")


# set on an error raised reading an upstream node's output (see worker.load_output): that
# node, for the downstream node's message
INPUT_SOURCE = "_exca_input_source"


def unreadable_input(error: BaseException, named: bool = False) -> str:
    """Why an upstream output could not be read, for a downstream node's error: the error,
    the upstream node it came from (unless the message ``named`` it), and what to do (the
    downstream node's retry does not recompute its upstream: the upstream node's own mode
    does)."""
    text = f"({type(error).__name__}: {error})"
    source: Node | None = getattr(error, INPUT_SOURCE, None)
    if source is None:
        return text
    dropped = payload_dropped(error)
    if dropped == "rewritten":
        return (
            f"{text}; the payload of upstream {source.uid} did not decode when read, and "
            "another process wrote that output again meanwhile (kept: nothing removed); "
            "the next run reads it"
        )
    if dropped == "gone":
        return (
            f"{text}; the payload of upstream {source.uid} did not decode when read, and "
            "another process removed it meanwhile (a waiting run computes it again, then "
            "this node; else the next run does)"
        )
    if dropped == "removed":
        return (
            f"{text}; the payload of upstream {source.uid} was damaged outside exca: "
            "removed, as that node is in mode='retry' (a waiting run computes it again, "
            "then this node; else the next run does)"
        )
    if is_damaged_payload(error) and not _stat_damaged(source):
        return (
            f"{text}; the payload of upstream {source.uid} no longer decodes (changed "
            f"outside exca: found on reading it, never by a plan){UPSTREAM_DECODE_FIX}"
        )
    if is_damaged_payload(error):
        return (
            f"{text}; the payload of upstream {source.uid} was removed or damaged outside "
            "exca: that node in mode='retry' computes it again (a run with it in that mode, "
            "its call, or node.result())"
        )
    if class_not_found(error):
        return f"{text}; upstream {source.uid} {CLASS_NOT_FOUND}"
    if source.kind == "map":
        try:
            failed = source.cache.error_keys(map_item_uids(source))
        except Exception:  # (its items cannot be read: nothing more to say)
            failed = []
        if failed:
            return f"{text}; {item_errors(source, failed)}"
    return text if named else f"{text}; reading the output of upstream {source.uid}"


# what computes again an upstream output that no longer decodes (a plan removes nothing:
# a run reading it removes it, a task its input, a map its items, or a call of that node
# in mode retry)
UPSTREAM_DECODE_FIX = (
    "; mode='retry' on that upstream config's own infra computes it again in a run where a "
    "node reads it, or in its own call; mode='force' on it always does"
)


def _stat_damaged(source: Node) -> bool:
    """Whether a node's damaged outputs are found by a stat (removed, cut short), as a
    plan in mode retry finds them (not bytes overwritten in place)."""
    try:
        if source.kind == "task":
            return source.cache.payload_present(TASK_KEY) is False
        return bool(source.cache.damaged(map_item_uids(source)))
    except Exception:  # (cannot tell)
        return True


def item_errors(source: Node, failed: tp.Sequence[str]) -> str:
    """What a node reading a map whose items hold cached errors is told (the same
    wording at plan time and at run time): which map, which items, what to do."""
    named = f" ({named_items(failed)})" if failed else ""  # (none: retried meanwhile)
    return (
        f"upstream {source.uid} has {len(failed)} cached item error(s){named}: "
        "mode='retry' on it recomputes them"
    )


def item_errors_failure(node: Node, source: Node, uids: tp.Sequence[str]) -> UpstreamFailed | None:
    """The error of ``node``, which cannot read the outputs of the map ``source`` for
    ``uids`` because some hold cached errors (None: none does). Found through the
    index, and the first error loaded, as reading the outputs would raise it."""
    failed = source.cache.error_keys(uids)
    error = first_item_error(source, failed)
    if error is None:
        return None
    return UpstreamFailed(
        f"{node.uid} did not run: an input could not be read ({type(error).__name__}: "
        f"{error}); {item_errors(source, failed)}"
    )


def first_item_error(node: Node, uids: tp.Sequence[str]) -> BaseException | None:
    """The exception of a map's first item holding a cached error (found through the
    index: no output is loaded but that error's; None: none, e.g. retried meanwhile)."""
    key = next(iter(node.cache.error_keys(uids)), None)
    if key is None:
        return None
    value = node.cache[key]
    if not isinstance(value, CachedError):  # (retried meanwhile by another process)
        return None
    return value.to_exception(f"{node.uid} item {key!r}")


def map_outputs(node: Node) -> list[tp.Any]:
    """The outputs of a map node for its items, in order (a cached error raises)."""
    uids = map_item_uids(node)
    # (another instance of its config may have computed them since this one read its
    # folder: e.g. a retry of cached errors, by another process or this run)
    node.cache.reread()
    node.cache.drop_stale_ram()
    func = codeprint.method_function(node.function)
    if func is not None:  # (checked for methods of __main__ only: see codeprint)
        codeprint.check_items(node.cache, uids, func, node.uid)
    return list(node.cache.values_of(uids, where=node.uid))


def upstream_failed_type(type_name: tp.Any) -> bool:
    """Whether a cached error's type (its ``"t"``: module and name) is exca's
    UpstreamFailed (not a user's class of a name ending alike)."""
    name = str(type_name)
    return name.startswith("exca.") and name.endswith(f".{UpstreamFailed.__qualname__}")


def cache_upstream_failed(cache: CacheDict[tp.Any]) -> bool:
    """Whether a task's cached error only says that its upstream had failed (not an
    error of its own: computed again once the upstream is there)."""
    entry = cache.entry(TASK_KEY)
    return entry is not None and upstream_failed_type(entry.info.get("t", ""))
