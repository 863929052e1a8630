"""What to do with every node of a graph, and why: reuse, compute, force, retry, wait,
fail, or nothing (not needed). Plans show these decisions; runs carry them out.

Deciding only reads: caches, job records and the queue; it may call ``item_uid``.
"""

from __future__ import annotations

import graphlib
import math
import typing as tp

from ..storage import gcpause
from ..storage.cachederror import record_line, shorten
from ..storage.dumping import is_damaged_payload
from . import callers, codeprint, executors, registry, store
from .errors import (
    LOG_QUOTE,
    JobFailedError,
    UpstreamFailed,
    ending_line,
    failed_upstreams,
    legacy_cache,
    legacy_not_renamed,
    named_items,
    not_cached,
    read_only_error,
    retry_hint,
)
from .node import TASK_KEY, Group, Node

Key = tuple[str, str]
_NOTHING: frozenset[str] = frozenset()


class NodeRun:
    """The decision for a node, and how carrying it out went."""

    # (a plain class, not a dataclass: creating that one cost ~2 ms, at the first call of
    # each process that computes something)
    def __init__(self, node: Node) -> None:
        self.node = node
        # reuse | compute | force | retry | wait | fail | not-needed
        self.action = "not-needed"
        self.reason = "not needed"
        self.uids: list[str] | None = None  # maps: uids of the items (None: known at run time)
        self.todo: list[str] | None = None  # maps: uids to compute
        self.handles: list[executors.Handle] = []
        self.error: BaseException | None = None
        self.state = "pending"  # pending | running | done | failed | skipped
        self.resume: str | None = None  # action to take after waiting for someone else's job
        self.blocked = False  # failed only because an upstream node failed
        # its own failure is on record: a cached error (not "upstream failed"), or its last
        # job ended without a result (the plan's "cached error")
        self.holds_error = False
        self.item_errors = 0  # maps reused as they are: how many items hold a cached error
        self.seen_job: str | None = None  # tasks: the latest recorded job when this was decided
        # tasks in mode retry following a job they did not submit (another call's, or one
        # winding down after a scancel): computed again, once, if it ends without a result
        self.retry_if_lost = False
        # tasks: where their cached outcome was (index file, offset) when the run chose to
        # wait for another worker: the same outcome after the wait predates the request
        self.seen_outcome: tuple[str, int] | None = None
        # (the two below and `borrowed` are replaced, never changed in place: their empty
        # defaults are shared; a container per run is one more object that the collector
        # walks after a plan, which pauses it: 10,000 nodes made 165k)
        self.seen_jobs: tp.AbstractSet[str] = _NOTHING  # maps: the recorded jobs
        self.after: tp.Sequence[str] = ()  # jobs its new job starts after
        # forced while an earlier job computes it: that job's result does not count as forced
        self.after_running_job = False
        # read-only with something missing, waiting for the job that computes it (its
        # upstream was not decided: it does not hold the wait back)
        self.reads_only = False
        # read-only tasks waiting for the removal of their folder (`exca clean`'s hold, see
        # wait_for_claims): who removes it (nothing computes it)
        self.removed_by: str | None = None
        # a task whose folder did not exist when decided: no job record nor claim to look for
        self.folder_absent = False
        # a forcing map sent to jobs or a pool: where each item's old output was when they
        # went out (an output still there when they end was not recomputed: e.g. a job that
        # died before starting its worker)
        self.replaced: dict[str, tuple[str, int]] = {}
        # map items another node of the run computes (its jobs are waited for); emptied
        # once they were missing after those jobs: computed by this node then
        self.borrowed: tp.AbstractSet[str] = _NOTHING
        # in a job: a job of its callers that computes this node (waited for by a run, each
        # would wait for the other: see callers.py)
        self.caller_job: str | None = None
        # maps: a nested call of a thread computing map items, whose items live jobs
        # compute: computed here, waiting for each item they hold, not for their whole jobs
        self.by_items = False

    def __repr__(self) -> str:
        return f"NodeRun({self.node.uid}, action={self.action!r}, state={self.state!r})"

    @property
    def array_key(self) -> str:
        """Runs with equal keys can share one array: same resources, and the same jobs to
        start after (a run's own earlier job would hold the others back). An array starts
        after whole jobs (an element's id gives its array's): configs forced while the
        elements of one earlier array run share one new array."""
        after = sorted({job.split("_")[0] for job in self.after})
        return f"{self.node.execution.group_key}|{after}"

    @property
    def needs_work(self) -> bool:
        return self.action in ("compute", "force", "retry", "wait")

    @property
    def check_only(self) -> bool:
        """A read-only map whose items come from an upstream node that has not run: it
        is checked once they are known (it never computes; a missing item fails)."""
        node = self.node
        return (
            node.kind == "map"
            and self.uids is None
            and node.mode == "read-only"
            and self.action == "compute"
        )


def _read_only_task_left(run: NodeRun, record: registry.JobRecord) -> bool:
    """A read-only task missing its result, whose last job ended without writing it
    (killed, cancelled, timed out...): that job's ending is what a call in another mode
    says, and what it says too (rather than a mere "read-only and missing")."""
    return (
        run.node.kind == "task"
        and read_only_missing(run)
        and run.reason == READ_ONLY_MISSING
        and not registry.wrote_outcome(record)  # (its result removed since: only missing)
    )


def _read_only_items_left(
    run: NodeRun, records: list[registry.JobRecord], queued: set[str]
) -> registry.JobRecord | None:
    """A read-only map missing items, the last job sent some of which ended without
    writing its outcome (killed, cancelled, timed out...): status() says "failed", and a
    call in another mode names that job's ending; so does the read-only call."""
    if not read_only_missing(run) or run.node.kind != "map" or not run.todo:
        return None
    if run.node.folder is None:
        return None
    todo, folder = set(run.todo), run.node.folder
    left = [
        r
        for r in records
        if r.cluster != "debug"  # (run by its submitting process: nothing of a job)
        # (items from an upstream node: noted by the job when it started, as status() reads)
        and todo.intersection(registry.items_of(folder, r) or todo)
        and not registry.is_active(r, queued)
        and not registry.wrote_outcome(r)
        and not executors.ended_not_cached(r)  # (no failure: INTERRUPT_HINT, STORAGE_HINT)
    ]
    return left[-1] if left else None


def say_items_left(run: NodeRun, how: str) -> None:
    """A read-only map's reason and error name the job that left its items missing."""
    said, quote, log_end = how.partition(LOG_QUOTE)
    hint = f"mode='read-only' never computes; cache folder: {run.node.folder}"
    run.error = JobFailedError(
        f"{run.node.uid}: {run.reason}: {said} ({hint}){quote}{log_end}", run.todo or ()
    )
    run.reason = f"{run.reason}: {ending_line(how)}"  # (a plan's, on one line)


def read_only_missing(run: NodeRun) -> bool:
    """A read-only node with something missing: it fails, unless a job computes it now
    (then it waits for that job: read-only never computes, but may wait)."""
    return run.action == "fail" and run.reason.startswith("read-only and")


def wait_for_claims(run: NodeRun) -> bool:
    """A read-only node whose missing results other workers compute right now, holding
    their claims with no job (e.g. a forced call recomputing them, inline or in a pool):
    it waits for those workers, then reads (read-only never computes, but may wait)."""
    node = run.node
    if run.folder_absent or node.folder is None:
        return False
    from .calls import keys_being_computed, removal_holder

    keys = [TASK_KEY] if node.kind == "task" else list(dict.fromkeys(run.todo or ()))
    busy = keys_being_computed(node, keys) if keys else set()
    if len(busy) < len(keys):
        # (written meanwhile? a worker forcing them holds their claims from removing them
        # to writing them again: it may have ended since they were found missing)
        node.cache.refresh()
        keys = node.cache.missing(keys)
        if not keys:
            if node.kind == "map":
                run.todo = []
                if _reuse(run):
                    run.item_errors = node.cache.count_errors(run.uids or ())
            else:
                _reuse(run)
            return True
        busy = keys_being_computed(node, keys)
        if len(busy) < len(keys):  # (what nobody computes stays missing: it fails now)
            return False
    run.action, run.reads_only, run.error = "wait", True, None
    # (the hold of a removal, `exca clean`, is the only claim there: nothing computes it)
    run.removed_by = removal_holder(node) if node.kind == "task" else None
    if run.removed_by is not None:
        run.reason = (
            f"read-only: its folder is being removed or renamed by {run.removed_by}, which "
            "computes nothing (waited for: read after, if still there)"
        )
    else:
        run.reason = "read-only: being computed right now by another worker (waited for)"
    run.handles = [executors.ClaimHandle(node, None if node.kind == "task" else keys)]
    return True


def check_node(target: tp.Any) -> None:
    """TypeError, saying what to pass, for a target that is not a graph node."""
    if not isinstance(target, Node):
        many = isinstance(target, list | tuple | set | frozenset | dict) or (
            hasattr(target, "__next__") and hasattr(target, "__iter__")  # (a generator)
        )
        hint = (
            "pass them one by one: run(*nodes), plan(*nodes)"
            if many
            else "get one with obj.method.node(...)"
        )
        raise TypeError(
            f"Targets must be graph nodes, got {type(target).__name__} {target!r:.80}: {hint}"
        )


def collect(
    targets: tp.Sequence[Node], aliases: dict[Key, list[Node]] | None = None
) -> dict[Key, Node]:
    """Every node the targets need, deduplicated by key (conflicting duplicates raise);
    ``aliases`` receives the duplicates that are other objects (other config instances)."""
    for target in targets:
        check_node(target)
    nodes: dict[Key, Node] = {}
    stack = list(reversed(targets))  # depth-first, targets in the order given
    while stack:
        node = stack.pop()
        known = nodes.get(node.key)
        if known is node:  # (met again through another path: a diamond)
            continue
        if known is not None:
            same = known.mode == node.mode and known.execution.runs_like(node.execution)
            if known is not node and not same:
                raise ValueError(
                    f"Two nodes with uid {node.uid} differ in how they run "
                    f"({known.mode}, {known.execution.describe()}) vs "
                    f"({node.mode}, {node.execution.describe()}): give them the same infra "
                    "settings (mode, cluster, resources, workdir)"
                )
            if known is not node:
                _check_same_code(known, node)
                if aliases is not None:
                    aliases.setdefault(node.key, []).append(node)
            continue
        nodes[node.key] = node
        stack.extend(reversed(node.upstream))
    return nodes


def _check_same_code(known: Node, node: Node) -> None:
    """ValueError for two nodes of one uid whose methods are other code: two classes of one
    name (a class defined twice in a script, say). A graph holds a uid once: it would
    compute one of them and hand its result to the readers of both."""
    funcs = [getattr(getattr(n.function, "method", None), "func", None) for n in (known, node)]
    codes = [getattr(f, "__code__", None) for f in funcs]
    if None in codes or codes[0] == codes[1]:  # (a class redefined unchanged: same work)
        return
    where = " and ".join(f"{c.co_filename}:{c.co_firstlineno}" for c in codes)  # type: ignore
    raise ValueError(
        f"Two nodes with uid {node.uid} run different code (its method is defined at "
        f"{where}): two classes of the same name? A graph computes a uid once, so one of "
        "them would get the other's result. Rename one of the classes, or give it "
        "another infra version (a class edited and defined again, in a notebook: build "
        "the nodes made from its former definition again)"
    )


def unreachable_inputs(node: Node, detached: bool) -> str | None:
    """Why a job of this node could not read an input computed upstream: an input kept in
    RAM only (no folder) does not reach another process. A map's items are read where the
    run is, except by a detached run, whose jobs read them when they start."""
    cluster = node.execution.cluster
    if cluster not in ("local", "slurm", "auto") or (node.kind == "map" and not detached):
        return None
    for name, given in node.inputs:
        sources = given.sources if isinstance(given, Group) else (given,)
        for source in sources:
            held = _held_in_ram(source) if isinstance(source, Node) else None
            if held is None:
                continue
            through = "" if held is source else f" (through the items of {source.uid})"
            return (
                f"its input {name!r} comes from {held.uid}{through}, which has no folder "
                f"(kept in RAM only): a job on cluster={cluster!r} runs in another process "
                "and cannot read it. Give that config an infra folder, or run this one with "
                "cluster=None"
            )
    return None


def _held_in_ram(source: Node) -> Node | None:
    """The node without a folder that reading ``source``'s output needs, if any: itself,
    or for a map, the node its items come from (its outputs are found by item uid)."""
    while source.folder is not None:
        if source.kind != "map" or not isinstance(source.items, Node):
            return None
        source = source.items
    return source


def to_chunks(count: int, max_chunks: int | None, min_per_chunk: int) -> list[tuple[int, int]]:
    """Contiguous (start, stop) chunks: min(max_chunks, ceil(n/min)) chunks of equal size."""
    if count == 0:
        return []
    splits = math.ceil(count / max(1, min_per_chunk))
    if max_chunks:
        splits = min(splits, max_chunks)
    size = math.ceil(count / splits)
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def upstream_failed(node: Node) -> bool:
    """Whether a task's cached error only says that its upstream had failed."""
    return store.cache_upstream_failed(node.cache)


def _upstream_failure_said(node: Node) -> str:
    """What a task's cached UpstreamFailed says of its upstream, e.g. " (upstream X is
    missing)": which node it was (removed by ``exca clean`` meanwhile, say), when its
    own state no longer tells (its error gone, its result computed since)."""
    entry = node.cache.entry(TASK_KEY)
    message = " ".join(str(entry.info.get("m") or "").split()) if entry is not None else ""
    _, found, why = message.partition(" did not run: ")
    if not found or why in ("", "its upstream failed"):
        return ""
    return f" ({shorten(why, 150)})"


def static_order(upstream: dict[Key, list[Key]]) -> list[Key] | None:
    """``list(graphlib.TopologicalSorter(upstream).static_order())``, the same order, in
    one pass without its cycle search and node objects (~1.5% of a 10,000-node plan);
    None for a graph with a cycle."""
    waiting: dict[Key, int] = {}  # how many upstream nodes each one waits for
    downstream: dict[Key, list[Key]] = {}
    for key, ups in upstream.items():  # (the sorter's order of first sight: each node,
        if key not in waiting:  # then its upstream nodes)
            waiting[key], downstream[key] = 0, []
        waiting[key] += len(ups)
        for up in ups:
            if up not in waiting:
                waiting[up], downstream[up] = 0, []
            downstream[up].append(key)
    ready = [key for key, count in waiting.items() if count == 0]
    order: list[Key] = []
    while ready:  # (as the sorter's waves: each node done, in order, frees its successors)
        order += ready
        wave, ready = ready, []
        for key in wave:
            for down in downstream[key]:
                waiting[down] -= 1
                if not waiting[down]:
                    ready.append(down)
    return order if len(order) == len(waiting) else None


class Graph:
    """The nodes some targets need, their edges, and the decision for each node."""

    def __init__(
        self,
        targets: tp.Sequence[Node],
        item_uids: dict[Key, list[str]] | None = None,
        forced: tp.Collection[Key] = (),
        checks_payloads: bool = False,
        dry_run: bool = False,
        item_missing: dict[Key, list[str]] | None = None,
    ) -> None:
        """``forced``: nodes forced whatever their upstream's state now (forced by an
        upstream node that was forced, and computed, since). ``checks_payloads``: whether
        cached map items' payload files are checked in every mode, not only in mode retry:
        a plan does (a stat per data file, ~0.5 us per item); a run finds a damaged item
        when it reads it, and says what to do then. ``dry_run``: a plan's (it removes
        nothing, see ``_damaged_source``, and sets no job record aside, see
        ``_check_registry``). ``item_missing``: of the ``item_uids`` of a map, those its
        caller found missing on the read this thread still relies on (its cache's
        ``read_just_now``): not looked up again, and kept as they are (the caller hands
        the lists over: changes them no more)."""
        with gcpause.paused():
            self.targets = list(targets)
            self.forced_before = set(forced)
            self.aliases: dict[Key, list[Node]] = {}  # other instances of the same nodes
            self.nodes = collect(self.targets, self.aliases)
            self.item_uids = item_uids or {}
            self.item_missing = item_missing or {}
            self.upstream: dict[Key, list[Key]] = {
                # (a node given twice, or two equal nodes, is one edge)
                k: list(dict.fromkeys(n.key for n in node.upstream))
                for k, node in self.nodes.items()
            }
            self.downstream: dict[Key, list[Key]] = {k: [] for k in self.nodes}
            for key, ups in self.upstream.items():
                for up in ups:
                    self.downstream[up].append(key)
            self.order = self._topological()
            self.runs: dict[Key, NodeRun] = {}
            self.checks_payloads = checks_payloads
            self.dry_run = dry_run
            # tasks and maps in mode retry whose outputs a map reading its items from them
            # could not decode (see _damaged_source): computed again first; of a map, the
            # items found damaged, where they were read (see _still_undecodable)
            self.undecodable: set[Key] = set()
            self.undecodable_items: dict[Key, dict[str, tuple[str, int]]] = {}
            # those results, with the error reading them: removed when the run starts
            # (Scheduler.start, once nothing refuses it: a run refused changes nothing)
            self.damaged_reads: list[tuple[Node, BaseException]] = []

    def share_force_states(self) -> None:
        """What a node's mode=force did, told to the other instances of the same config
        in the graph (a sub-config copied into several configs): forced once for all."""
        for key, others in self.aliases.items():
            state = self.nodes[key].force_state
            if not state.get("done"):
                continue
            for other in others:
                if other.force_state is state:
                    continue
                other.force_state["done"] = True
                for name in ("uids", "sources"):
                    if name in state:
                        other.force_state.setdefault(name, set()).update(state[name])

    def _topological(self) -> list[Key]:
        # (the standard library's sorter: importing networkx takes ~110 ms, a third of a
        # fresh process's run of a small graph; exca.graph.graph() still returns networkx)
        if len(self.nodes) < 2:  # (a node of its own upstream is still a cycle)
            for key, ups in self.upstream.items():
                if key in ups:
                    raise ValueError(f"The graph has a cycle: {[self.nodes[key].uid]}")
            return list(self.nodes)
        order = static_order(self.upstream)
        if order is not None:
            return order
        sorter = graphlib.TopologicalSorter(self.upstream)
        try:  # (a cycle: the standard library names it)
            return list(sorter.static_order())
        except graphlib.CycleError as error:
            cycle = error.args[1]
            raise ValueError(
                f"The graph has a cycle: {[self.nodes[k].uid for k in cycle[:-1]]}"
            ) from None

    # --- deciding ---------------------------------------------------------------------------
    def decide(self) -> dict[Key, NodeRun]:
        """Decide every node; what a reusable node needs is "not needed" (pruning)."""
        with gcpause.paused():
            return self._decide()

    def _decide(self) -> dict[Key, NodeRun]:
        forced = self._forced()
        # (found anew by each decision)
        self.undecodable, self.undecodable_items, self.damaged_reads = set(), {}, []
        runs = {key: NodeRun(node) for key, node in self.nodes.items()}
        self.runs = runs
        visited: set[Key] = set()
        stack = [t.key for t in self.targets]
        while stack:
            key = stack.pop()
            if key in visited:
                continue
            visited.add(key)
            run = runs[key]
            if run.node.kind == "map":
                self._decide_map(run, key in forced)
                # (an upstream node decided before, e.g. another target, found undecodable
                # by this map: decided again)
                visited -= self.undecodable
            else:
                self._decide_task(run, key in forced)
            # (a map reused with item errors may wait for a job retrying them, after
            # which what it misses is computed from its upstream)
            if run.needs_work or run.item_errors:
                stack.extend(self.upstream[key])
        self._check_registry(
            [
                r
                for r in runs.values()
                if r.action in ("compute", "retry", "force")
                or read_only_missing(r)
                or (r.action == "reuse" and r.item_errors > 0)  # (a retry job sent since?)
                or (r.action == "reuse" and bool(r.node.force_state.get("jobs")))  # (see below)
            ]
        )
        for run in runs.values():
            if read_only_missing(run):
                wait_for_claims(run)
        self._check_config_folders()
        self._refuse_legacy_caches()
        self._block_on_failures()
        return runs

    def _refuse_legacy_caches(self) -> None:
        """Targets all read-only: an upstream node whose cache has its legacy (v2) name,
        which such a call does not rename (it writes nothing), fails rather than being
        computed again beside it (see Scheduler.__init__)."""
        if not self.targets or any(t.mode != "read-only" for t in self.targets):
            return
        for run in self.runs.values():
            if run.action not in ("compute", "retry", "force"):
                continue
            legacy = legacy_cache(run.node)
            if legacy is None:
                continue
            run.action = "fail"
            run.reason = "missing here; " + legacy_not_renamed(
                run.node, legacy, "a call of read-only nodes"
            )
            run.error = RuntimeError(f"{run.node.uid}: {run.reason}")

    def _check_config_folders(self) -> None:
        """Work to compute into a config folder whose full-uid.yaml records other class
        defaults than today's fails now, before anything runs, as a cached result of other
        defaults does: a run's ``prepare`` of that folder refuses it (a new inputs folder
        or new items under an existing config folder, a cleared or forced result). One
        check per config folder, not per node (a config feeds thousands of nodes)."""
        checked: dict[tuple[str, str, str], RuntimeError | None] = {}
        for run in self.runs.values():
            node = run.node
            # (waiting for another worker: nothing is prepared here)
            if run.action not in ("compute", "retry", "force") or node.check_folder is None:
                continue
            if run.folder_absent and not node.inputs:
                continue  # (its config folder is not there: a syscall saved per new config)
            key = (str(node.root), node.step, node.config_uid)
            if key not in checked:
                try:
                    node.check_folder()
                    checked[key] = None
                except RuntimeError as error:
                    checked[key] = error
            refused = checked[key]
            if refused is None:
                continue
            # (its own result cached, e.g. forced: "cached with other defaults", as reused)
            told = OTHER_DEFAULTS if _all_cached(run) else CONFIG_OTHER_DEFAULTS
            run.action, run.reason, run.error = "fail", f"{told}: {refused}", refused

    def _forced(self) -> set[Key]:
        """Nodes in mode force, and everything downstream of them in this graph."""
        forced = {k for k, n in self.nodes.items() if n.pending_force}
        forced |= self.forced_before & set(self.nodes)
        stack = list(forced)
        while stack:
            for down in self.downstream[stack.pop()]:
                if down not in forced and self.nodes[down].mode != "read-only":
                    # (a read-only node reuses its result: nothing below it changes)
                    forced.add(down)
                    stack.append(down)
        return forced

    def _decide_task(self, run: NodeRun, forced: bool) -> None:
        node = run.node
        # refresh: nodes may be long-lived, see what others wrote since (unless the call
        # just read it: its fast path's miss, see calls.task_result)
        state = store.task_state(node, refresh=not node.cache.read_just_now)
        run.folder_absent = node.cache.folder_absent and node.cache.folder == node.folder
        read_only = node.mode == "read-only"  # (never computes, even below a forced node)
        own = forcing_job(node)  # (this instance's forcing job, running or ended)
        if forced and not read_only:
            run.action = "force"
            run.reason = "mode=force" if node.pending_force else "forced by upstream"
        elif node.key in self.undecodable:  # (mode retry: see _damaged_source)
            run.action = "retry"
            run.reason = UNDECODABLE
        elif own is not None and not own[1]:
            # (what is cached is not the forced result: an earlier job's, or nothing)
            run.action, run.holds_error = "fail", True
            run.reason = f"its forcing job {own[0].job_id} ended without computing it"
            run.error = force_failure(node, own[0])
        elif state == "done" and node.mode == "retry" and store.result_damaged(node):
            run.action = "retry"
            run.reason = "its cached result cannot be read (removed or damaged outside exca)"
        elif (
            state == "done"
            and node.mode != "retry"  # (checked just above)
            and (error := _unreadable_result(node)) is not None
        ):
            # (reused, its readers failed, later, one by one)
            run.action, run.error = "fail", error
            run.reason = (
                "its cached result cannot be read (its file was removed or damaged outside "
                f"exca){RETRY_COMPUTES} it again"
            )
        elif state == "done" and own is None:
            _reuse(run)
        elif state == "done" and own is not None:  # (waits for this instance's forcing job)
            run.action, run.reason = "wait", f"forced: {registry.as_jobs([own[0].job_id])}"
            run.handles = [executors.recorded_handle(own[0])]
        elif state == "error" and upstream_failed(node) and not read_only:
            run.action = "retry"
            run.reason = f"its upstream failed last time{_upstream_failure_said(node)}"
        elif state == "error":
            run.holds_error = True
            if node.mode == "retry":
                run.action, run.reason = "retry", "retry of a cached error"
            else:  # (the error itself, as `exca list` shows it: the reason to look at)
                entry = node.cache.entry(TASK_KEY)
                told = f" ({record_line(entry.info, 120)})" if entry is not None else ""
                # (a notebook's cell fixed and run again: the error is still the old code's)
                func = codeprint.method_function(node.function)
                edited = codeprint.edited_error(entry.info.get("#meta"), func) if entry else None
                told += f", {edited}" if edited is not None else ""
                run.action = "fail"
                run.reason = f"cached error{told}{RETRY_COMPUTES} it again"
        elif node.mode == "read-only":
            run.action, run.reason = "fail", READ_ONLY_MISSING
        else:
            run.action, run.reason = "compute", "missing"

    def _decide_map(self, run: NodeRun, forced: bool) -> None:
        with run.node.cache.frozen_cache_folder():  # (read once: misses need no second read)
            self._decide_map_items(run, forced)

    def _decide_map_items(self, run: NodeRun, forced: bool) -> None:
        node = run.node
        # nodes may be long-lived: what others retried, forced or deleted since this
        # instance read its folder (as a map call does)
        node.cache.reread()
        node.cache.drop_stale_ram()
        uids = self.item_uids.get(node.key)
        if uids is None:
            if isinstance(node.items, Node) and not self._readable(node.items):
                _items_later(run, forced)
                return
            try:
                uids = store.map_item_uids(node)
            except Exception as error:  # (item_uid failing on an item: this node fails)
                if self._damaged_source(node, error):  # (its upstream is computed again first)
                    _items_later(run, forced)
                    return
                run.action, run.reason = "fail", f"{type(error).__name__}: {error}"
                run.error = error
                return
        self.decide_items(run, uids, forced)

    def _missing(self, node: Node, uids: list[str]) -> list[str]:
        """The items of a map missing from its cache (as its caller found them just now,
        when it did, on the read its thread relies on)."""
        known = self.item_missing.get(node.key)
        if known is not None and uids is self.item_uids.get(node.key) and node.cache.read_just_now:
            return known  # (handed over by the caller: not copied, see item_missing)
        return node.cache.missing(uids)

    def _damaged_source(self, node: Node, error: BaseException) -> bool:
        """Whether the items of a map could not be read because its upstream node, in mode
        retry, holds a result (a task) or items (a map) whose payload no longer decodes
        (changed outside exca in a way no stat tells, or removed or cut short): that node
        is then computed again first (a map: those items), as its own call in mode retry
        does (a run removes them when it starts, only if unchanged, see
        ``damaged_reads``; a plan only says so)."""
        source = node.items
        cause = error.__cause__ if isinstance(error, UpstreamFailed) else None
        if (
            not isinstance(source, Node)
            or source.mode != "retry"
            or cause is None
            or not is_damaged_payload(cause)
        ):
            return False
        if source.kind == "map":
            try:  # (each item read again: the damaged ones, where they are)
                damaged = store.damaged_outputs(source)
            except Exception:  # (its own items cannot be read: it fails, decided with them)
                return False
            self.undecodable_items.setdefault(source.key, {}).update(damaged)
        if not self.dry_run:
            self.damaged_reads.append((source, cause))
        self.undecodable.add(source.key)
        return True

    def _still_undecodable(self, node: Node, uids: list[str], known: set[str]) -> list[str]:
        """The items of a map that a map below it could not decode (see _damaged_source),
        still where they were read (not removed, nor written again, since), and not
        ``known`` already to be computed."""
        places = self.undecodable_items.get(node.key)
        if not places:
            return []
        still = []
        for uid in dict.fromkeys(uids):
            entry = node.cache.entry(uid) if uid in places and uid not in known else None
            if entry is not None and (entry.file, entry.offset) == places[uid]:
                still.append(uid)
        return still

    def _damaged_items(self, run: NodeRun, uids: list[str], missing: list[str]) -> bool:
        """Whether cached items of a map cannot be read (their payload file was removed or
        cut short outside exca): the map then fails, as a task whose result cannot be read."""
        absent = set(missing)
        damaged = run.node.cache.damaged(u for u in uids if u not in absent)
        if not damaged:
            return False
        shown = ", ".join(repr(u) for u in damaged[:3]) + (", ..." if len(damaged) > 3 else "")
        unreadable = absent.union(damaged)  # (the items column counts both)
        run.action, run.todo = "fail", [u for u in dict.fromkeys(uids) if u in unreadable]
        run.reason = (
            f"{len(damaged)} cached item(s) cannot be read ({shown}: their payload file was "
            f"removed or damaged outside exca){RETRY_COMPUTES} them again"
        )
        return True

    def _readable(self, node: Node) -> bool:
        """Whether a node's outputs can be read now (items of a map are then known)."""
        if node.pending_force:
            return False
        if node.kind == "task":
            return store.task_state(node) == "done"
        if isinstance(node.items, Node) and not self._readable(node.items):
            return False  # (a map fed by a map: readable when that one is, recursively)
        try:
            uids = store.map_item_uids(node)
        except Exception:  # (item_uid failing: decided, and reported, with that map)
            return False
        return not node.cache.missing(uids) and not node.cache.count_errors(uids)

    def decide_items(self, run: NodeRun, uids: list[str], forced: bool) -> None:
        """Decide a map node once its item uids are known."""
        node = run.node
        state = node.force_state
        forced = forced and node.mode != "read-only"  # (never computes)
        # mode=force on an instance that forced other items already (items from an
        # upstream node are known only now): the items it has not forced yet
        if (
            isinstance(node.items, Node)
            and node.items.key in state.get("sources", ())
            and node.folder is not None
            and not any(registry.is_active(r) for r in registry.read_all(node.folder))
        ):
            # a detached run's split jobs forced what this upstream node yields (they
            # ended: until then, the old items must not be read)
            state.setdefault("uids", set()).update(uids)
        partial = (
            not forced
            and node.mode == "force"
            and state.get("done", False)
            and not set(state.get("uids", ())).issuperset(uids)
        )
        forced = forced or partial
        run.uids = uids
        run.item_errors = 0  # (decided again after a wait: counted anew)
        done = state.get("uids") if node.pending_force or partial else None
        if forced and done:  # forced by its own mode: once per item uid and instance
            absent = set(node.cache.missing(uids))
            run.todo = [u for u in dict.fromkeys(uids) if u not in done or u in absent]
            run.action, run.reason = "force", "mode=force"
        elif forced:
            run.todo = list(dict.fromkeys(uids))
            run.action = "force"
            run.reason = "mode=force" if node.pending_force or partial else "forced by upstream"
        else:
            if node.mode == "retry":
                missing, errors = store.item_states(node, uids)
                errors += self._still_undecodable(node, uids, {*missing, *errors})
            else:
                missing, errors = self._missing(node, uids), []
                if self.checks_payloads and self._damaged_items(run, uids, missing):
                    return
            if errors:
                erred = node.cache.error_keys(errors)  # (the others: damaged)
                cached_errors = len(erred)
                run.holds_error = cached_errors > 0
                wanted = set(missing) | set(errors)
                run.todo = [u for u in dict.fromkeys(uids) if u in wanted]
                run.action = "retry"
                # (named: which items a retry computes again, as a failure names them)
                parts = [f"{cached_errors} cached error(s) ({named_items(erred)})"] if erred else []
                if len(errors) > cached_errors:
                    parts.append(
                        f"{len(errors) - cached_errors} whose payload file was removed or "
                        "damaged outside exca"
                    )
                if missing:
                    parts.append(f"{len(missing)} missing")
                run.reason = "retry of " + " and ".join(parts)
            elif missing:
                run.todo = missing
                # (missing holds each uid once: as many as the uids, all are distinct)
                total = len(uids) if len(missing) == len(uids) else len(set(uids))
                if node.mode == "read-only":
                    run.action = "fail"
                    shown = ", ".join(repr(u) for u in missing[:3])
                    more = ", ..." if len(missing) > 3 else ""
                    run.reason = (
                        f"read-only and {len(missing)}/{total} items missing ({shown}{more})"
                    )
                else:
                    run.action, run.reason = "compute", f"{len(missing)}/{total} missing"
                    # (its cached item errors stay: its outputs cannot be read after it)
                    reused = []  # (every item missing: nothing reused, no set built)
                    if len(missing) < total:
                        absent = set(missing)
                        reused = [u for u in uids if u not in absent]
                    _check_reused_code(node, reused)
                    failed = node.cache.count_errors(reused)
                    if failed:
                        run.item_errors = failed
                        run.reason += (
                            f", and {failed} cached item error(s) (mode='retry' recomputes them)"
                        )
            else:
                run.todo = []
                failed = node.cache.count_errors(uids) if _reuse(run) else 0
                if failed:
                    run.item_errors = failed
                    run.reason = (
                        f"cached, with {failed} item error(s) (mode='retry' recomputes them)"
                    )
        if (
            run.needs_work
            and node.forbid_single_item
            and len(run.todo) == 1
            and len(set(uids)) == 1
        ):
            run.action = "fail"
            run.reason = (
                "single item computation is forbidden (forbid_single_item_computation): "
                f"item {run.todo[0]!r}; pass it with other items in one call, or set "
                "forbid_single_item_computation=False"
            )

    def _check_registry(self, candidates: list[NodeRun]) -> None:
        """Nodes whose jobs were already submitted: wait for them if they are queued or
        running (unless they were queued before work this run redoes upstream); a task
        whose job ended without a result failed (cancelled, timed out, killed)."""
        records = {}
        chunks: dict[Key, list[registry.JobRecord]] = {}
        for run in candidates:
            if run.folder_absent:
                continue  # (most missing nodes of a large graph: a syscall each saved)
            if run.node.kind == "task" and run.node.folder is not None:
                record = registry.latest(run.node.folder)
                if record is not None:
                    run.seen_job = record.job_id
                    # (debug jobs run by their submitter: claims tell; the job this
                    # process runs in is not waited for: see runs_here)
                    if record.cluster != "debug" and not registry.runs_here(record):
                        run.caller_job = callers.caller_job(record.job_id)
                        records[run.node.key] = record
            else:
                found = registry.read_all(run.node.folder)
                run.seen_jobs = {r.job_id for r in found}
                found = [r for r in found if not registry.runs_here(r)]
                if run.action == "reuse":
                    # (its cached item errors: a retry job sent since; or this instance's
                    # own forcing jobs, still writing: what is cached is not their outputs)
                    own = run.node.force_state.get("jobs", {})
                    forcing = [r for r in found if r.job_id in own]
                    found = (
                        retrying_jobs(run.node, run.uids or (), found) if run.item_errors else []
                    )
                    found += [r for r in forcing if r not in found]
                todo = set(run.todo or ())
                for record in found:
                    if registry.covers(record, todo):
                        run.caller_job = run.caller_job or callers.caller_job(record.job_id)
                if found:
                    chunks[run.node.key] = found
        if not records and not chunks:
            return
        from .calls import being_computed

        slurm_ids = [r.job_id for r in records.values() if r.cluster == "slurm"]
        slurm_ids += [r.job_id for found in chunks.values() for r in found if r.cluster == "slurm"]
        confirmed = registry.confirmed_queued(slurm_ids)
        # (squeue not answering: they may still run, never resubmitted twice)
        queued = set(slurm_ids) if confirmed is None else set(confirmed)
        gone = [  # missing results whose job squeue does not list: ended, unless...
            r.job_id
            for key, r in records.items()
            if r.cluster == "slurm"
            and r.job_id not in queued
            and self.runs[key].action == "compute"
        ]
        if gone:  # (...a second look lists it: squeue can miss a job for an instant)
            queued |= registry.queued_jobs(gone)
        readers = [k for k in (*records, *chunks) if read_only_missing(self.runs[k])]
        for key in readers:
            self.runs[key].reads_only = True
        if readers and confirmed is None:  # read-only waits only for jobs squeue lists
            queued -= {
                r.job_id
                for k in readers
                for r in ([records[k]] if k in records else chunks[k])
                if r.cluster == "slurm"
            }
        # (mode retry: the jobs listed COMPLETING, maybe ending without a result, that
        # Slurm may be requeuing instead: ONE squeue call, see retry_ending_job)
        requeued = registry.maybe_requeued(
            [
                r.job_id
                for k, r in records.items()
                if r.cluster == "slurm"
                and r.job_id in queued
                and self.runs[k].action == "compute"
                and self.runs[k].node.mode == "retry"
                and registry.last_queue_state(r.job_id) == "COMPLETING"
            ]
        )
        ended: list[tuple[NodeRun, registry.JobRecord]] = []
        for key in self.order:  # (upstream first: whether it is redone is known)
            if key in chunks:
                run = self.runs[key]
                self._attach_map_jobs(run, chunks[key], queued)
                # (squeue not answering: a Slurm job may still run, not said to have ended)
                left = _read_only_items_left(run, chunks[key], queued)
                if left is not None and (left.cluster != "slurm" or confirmed is not None):
                    ended.append((run, left))  # (said as another mode says it)
                continue
            record = records.get(key)
            if record is None:
                continue
            run = self.runs[key]
            # (an outcome since that job was queued: not waited for; an "upstream failed"
            # error is not one: that job computes it again)
            computed = (
                run.action in ("retry", "force")
                and store.task_state(run.node) != "missing"
                and not upstream_failed(run.node)
            )
            active = registry.is_active(record, queued) and not computed
            # (mode retry: a job Slurm lists as COMPLETING without its result, e.g. right
            # after a scancel, for KillWait and the epilog, ends without one: retried now,
            # its worker's claim, while it lives, is waited for by the new computation)
            ending = (
                active and run.action == "compute" and retry_ending_job(run.node, record, requeued)
            )
            if active and not ending:
                if self._redone_upstream(run, record.job_id):
                    continue
                run.reason = registry.as_jobs([record.job_id])
                if run.action in ("retry", "force"):
                    run.resume = run.action  # retry/force once that job has ended
                    forced_here = run.action == "retry" or run.node.pending_force
                    why = f"mode {run.action}" if forced_here else "forced by upstream"
                    run.reason += f", then computed again once it ends ({why})"
                elif run.action == "compute" and run.node.mode == "retry":
                    run.retry_if_lost = True  # (a run waiting for it: see _retry_lost_job)
                run.action = "wait"
                run.handles = [executors.recorded_handle(record)]
            elif run.action == "compute" and registry.wrote_outcome(record):
                pass  # its result was removed since (forced, then interrupted): computed
            elif run.action == "compute" and run.node.mode == "retry":
                run.action, run.holds_error = "retry", True
                how = "is ending (Slurm lists it COMPLETING)" if ending else "ended"
                run.reason = f"retry: job {record.job_id} {how} without a result"
            elif run.action == "compute" and not being_computed(run.node):
                ended.append((run, record))
            elif (
                _read_only_task_left(run, record)
                # (squeue not answering: a Slurm job may still run, not said to have ended)
                and (record.cluster != "slurm" or confirmed is not None)
                and not being_computed(run.node)
            ):
                ended.append((run, record))  # (said as another mode says it, moving nothing)
            # (else its worker lives on, e.g. a local job whose controller was killed, or
            # another worker computes it now: computed as any task being computed elsewhere,
            # its claim waited for)
        slurm_ended = [r.job_id for _, r in ended if r.cluster == "slurm"]
        known = registry.slurm_endings(slurm_ended) if slurm_ended else {}  # (one sacct call)
        for run, record in ended:
            how = executors.recorded_handle(record).ended_how(known.get(record.job_id))
            if run.node.kind == "map":
                say_items_left(run, how)
                continue
            if not_cached(how):  # (not its failure: computed, see INTERRUPT_HINT)
                # (a plan, explain, a read-only call: read only, they move nothing)
                if not self.dry_run and run.node.mode != "read-only":
                    registry.set_refused(run.node.folder, record.job_id)  # (as the job does)
                continue
            run.action, run.holds_error = "fail", True
            run.reason = ending_line(how)  # (as the call says it)
            # (what to do, as for a cached error; not where its own words say it)
            if run.node.mode != "read-only" and retry_hint(how) != how:
                run.reason += f"{RETRY_COMPUTES} it again"
            run.error = JobFailedError(f"{run.node.uid}: {retry_hint(how)}")

    def _redone_upstream(self, run: NodeRun, jobs: str) -> bool:
        """Whether this run computes an upstream node anew: a job of this node queued
        earlier cannot use that result (it depends on the upstream's previous job, and
        caches "upstream failed" if it starts first), so it is not waited for: this
        node is computed again after its upstream (the claim keeps them one at a time)."""
        redo = ("compute", "retry", "force")
        runs = self.runs
        redone = next(
            (
                u
                for u in self.upstream[run.node.key]
                # (or forced once its own earlier job ends: computed anew all the same)
                if runs[u].action in redo
                or (runs[u].action == "wait" and runs[u].resume == "force")
            ),
            None,
        )
        if redone is None:
            return False
        run.reason = (
            f"{run.reason}; job {jobs} predates the new computation of upstream "
            f"{self.nodes[redone].uid}: computed again after it"
        )
        return True

    def _attach_map_jobs(
        self, run: NodeRun, records: list[registry.JobRecord], queued: set[str]
    ) -> None:
        """A map whose chunk jobs are still queued or running: wait for them (what they
        leave missing is computed afterwards) instead of submitting the items again."""
        from .worker import computing_any_items, computing_items

        if computing_items(run.node.folder):
            # (a nested call of a thread computing items of this map, e.g. a chunk job: it
            # computes here, waiting for each item another worker holds, not for whole jobs,
            # whose items may need the items this thread holds)
            return
        todo = set(run.todo or ())
        # (jobs computing other items than the missing ones: nothing to wait for)
        active = [r for r in records if registry.is_active(r, queued) and registry.covers(r, todo)]
        if active and computing_any_items():
            # (likewise, in a thread computing items of another map: the items of those
            # jobs may need the items this thread holds, e.g. jobs of two maps whose items
            # need each other's)
            run.by_items = True
            return
        if active and not self._redone_upstream(run, ", ".join(r.job_id for r in active[:5])):
            wait_for_map_jobs(run, active)
            run.handles = [executors.recorded_handle(r) for r in active]

    def _block_on_failures(self) -> None:
        """Work whose upstream fails cannot run: it fails too (and says why)."""
        for key in self.order:
            run = self.runs[key]
            if not run.needs_work or run.action == "wait":
                continue
            failing = [u for u in self.upstream[key] if self._fails(u)]
            if not failing:
                continue
            run.action = "fail"
            run.blocked = True
            up = self.runs[failing[0]]
            # (the others named too: an aggregation over evaluations, two failing, named
            # the first only)
            others = [self.runs[u].node.uid for u in failing[1:]]
            also = f"; also {failed_upstreams(others, 'fail' if others[1:] else 'fails')}"
            also = also if others else ""
            if up.action == "fail":  # (named by the root failure, not a chain of them)
                # (a retry of this node alone left it failing: whose mode retries is said)
                told = up.reason.replace(RETRY_COMPUTES, UPSTREAM_RETRY_COMPUTES)
                reason = up.reason if up.blocked else f"upstream {up.node.uid} fails ({told})"
                run.reason = reason + also
                continue
            # a map kept with cached item errors: its outputs cannot be read (said as a run
            # that computed the map says it)
            failed = up.node.cache.error_keys(up.uids or [])
            run.reason = store.item_errors(up.node, failed) + also
            if not others:  # (else its reason, naming them all, is its error)
                run.error = store.item_errors_failure(run.node, up.node, up.uids or [])

    def _fails(self, key: Key) -> bool:
        """Whether what a node gives its downstream nodes cannot be read."""
        run = self.runs[key]
        return run.action == "fail" or (run.action in ("reuse", "compute") and run.item_errors > 0)

    def decision_error(self, run: NodeRun) -> BaseException:
        """The exception a node that fails at decision time raises."""
        node = run.node
        if run.error is not None:
            return run.error
        if run.reason.startswith("cached error"):
            try:
                store.task_result(node)
            except Exception as error:
                func = codeprint.method_function(node.function)
                if func is not None:  # (edited since it raised: say so, as an eager call)
                    from .calls import note_if_edited

                    note_if_edited(error, node.cache, func)
                return error
        if node.mode == "read-only" and "read-only" in run.reason:
            return read_only_error(node, run.reason)
        if run.blocked:  # (not its own failure)
            return UpstreamFailed(f"{node.uid}: {run.reason}")
        return RuntimeError(f"{node.uid}: {run.reason}")


# the remedy a failing node's reason ends with ("cached error (...): mode='retry' computes
# it again"), and how a node below it words it: in parentheses after the upstream's uid,
# and naming whose mode that is (the node's own mode retries nothing upstream)
RETRY_COMPUTES = ": mode='retry' computes"
READ_ONLY_MISSING = "read-only and missing"  # (a read-only task's reason, see _decide_task)
UPSTREAM_RETRY_COMPUTES = "; mode='retry' on that upstream config's own infra computes"

# what a run waiting for a job it did not submit, in mode retry, says of it (see
# NodeRun.retry_if_lost; a submission that returns, e.g. a job array, only follows it)
RETRIED_IF_LOST = "computed again if it ends without a result (mode retry)"

OTHER_DEFAULTS = "cached with other defaults"
# a node to compute in a config folder computed with other class defaults (see
# Graph._check_config_folders)
CONFIG_OTHER_DEFAULTS = "its config was cached with other defaults"

# a forced map whose items come from an upstream node that runs first: every item it then
# gets is computed anew, cached or not (explain counts the cached ones)
FORCED_ITEMS_LATER = "items known at run time, the cached ones are computed again too"

# a task in mode retry whose result could not be read by a map taking its items from it
UNDECODABLE = (
    "its cached result cannot be read (its payload was removed or damaged outside exca), "
    "found reading the items of a map below it"
)

_ABSENT = object()


def _unreadable_result(node: Node) -> BaseException | None:
    """The error reading a cached task result gives, when a stat of its payload file says
    it was removed or cut short outside exca (None: it looks whole; nothing is loaded)."""
    if node.cache.payload_present(TASK_KEY) is not False:
        return None
    try:
        store.task_result(node, missing=_ABSENT)
    except Exception as error:
        return error
    return None  # (it read fine after all: e.g. written again meanwhile)


def forcing_job(node: Node) -> tuple[registry.JobRecord, bool] | None:
    """The job carrying out this instance's mode=force (submitted by its ``job()`` or a
    detached run), and whether it is queued or running (what is cached meanwhile is not
    its result: an earlier job may write one after it was submitted); ended, it is
    returned while what is cached is not a forced result (``jobs.not_forced``: the force
    did not happen, see ``force_failure``). None once it ended having computed, or once
    the cache holds a result computed since: calls take the fast path again."""
    job_id = node.force_state.get("job")
    if job_id is None or node.folder is None:
        return None
    from .jobs import not_forced  # (after the common case: an import per node costs ~2 µs)

    records = registry.read_all(node.folder)
    own = next((r for r in records if r.job_id == job_id), None)
    if own is not None and store.computed_by(node) == job_id:
        own = None  # (its outcome is cached: the job may still be ending, not waited for)
    if own is not None:
        later = [r for r in records if r.submitted > own.submitted]
        slurm = [r.job_id for r in [own, *later] if r.cluster == "slurm"]
        queued = registry.queued_jobs(slurm) if slurm else set()  # (one squeue look)
        if registry.is_active(own, queued):
            return own, True
        if any(registry.is_active(r, queued) for r in later):
            return None  # (a later job computes it: followed as any job; then judged)
        # (mode retry set since: that mode's rules apply)
        if (
            node.mode != "retry"
            and not registry.wrote_outcome(own)
            and not_forced(node, job_id, own.cluster, records) is not None
        ):
            return own, False
    node.force_state.pop("job", None)
    return None


def force_failure(node: Node, record: registry.JobRecord) -> JobFailedError:
    """The error of a forced instance whose forcing job ended without computing."""
    from .jobs import force_failure

    return force_failure(node, executors.recorded_handle(record))


def retrying_jobs(
    node: Node, uids: tp.Iterable[str], records: list[registry.JobRecord]
) -> list[registry.JobRecord]:
    """The jobs sent items of a map after those items' errors were cached (e.g. by a
    detached run in mode retry): they compute them again, a run waits for them."""
    cache = node.cache
    cached_at: dict[str, float] = {}
    for uid in dict.fromkeys(uids):
        entry = cache.entry(uid)
        if entry is not None and entry.info.get("#type") == "Error":
            # (an error without a time, of an older exca: any job holding its item counts,
            # even the one that cached it: waiting for it is safer than raising an error
            # a retry job is replacing)
            cached_at[uid] = store.started_at(entry) or 0.0
    if not cached_at:
        return []
    earliest = min(cached_at.values())
    return [
        r
        for r in records
        if (r.keys is None and earliest < r.submitted)  # (items known in the job only)
        or any(cached_at.get(u, r.submitted) < r.submitted for u in r.keys or ())
    ]


def wait_for_map_jobs(run: NodeRun, active: list[registry.JobRecord]) -> None:
    """A map waits for chunk jobs that compute its missing items. In its own mode force,
    it computes them again once they end (``resume``: their outputs predate the force),
    unless they are this instance's own forcing jobs (another call of it, e.g. in
    another thread: forced once)."""
    run.reason = registry.as_jobs([r.job_id for r in active])
    own = run.node.force_state.get("jobs", {})
    if (
        run.action == "force"
        and run.node.pending_force
        and any(r.job_id not in own for r in active)
    ):
        run.resume = "force"
        run.reason += ", then computed again once they end (mode force)"
    elif run.action == "retry":  # (its cached errors: retried once they end, see gets_own_job)
        run.resume = "retry"
    run.action = "wait"


def retry_ending_job(
    node: Node, record: registry.JobRecord, requeued: tp.AbstractSet[str] | None = None
) -> bool:
    """Whether a task in mode retry, its result missing, finds its job ending without
    one: Slurm lists it COMPLETING (after a scancel, a time limit, a failure: for
    KillWait and the epilog) and its python did not end well (the result would be
    cached). Its squeue state comes from the look that found it queued. Not a job that
    may be requeued, listed COMPLETING too while Slurm stops its run: it runs again
    (followed, then computed again if it ends without a result, see _retry_lost_job).
    ``requeued``: ``registry.maybe_requeued`` of the jobs asked about (else asked now)."""
    if not (
        node.mode == "retry"
        and record.cluster == "slurm"
        and registry.last_queue_state(record.job_id) == "COMPLETING"
        and not registry.wrote_outcome(record)
    ):
        return False
    if requeued is None:
        requeued = registry.maybe_requeued([record.job_id])
    return record.job_id not in requeued


def gets_own_job(run: NodeRun, off_slurm: bool) -> bool:
    """Whether a node waiting for its earlier job, in its own mode force or retry, gets a
    new job instead (see ``scheduler.follow_own_job``)."""
    node = run.node
    if run.action != "wait" or run.resume is None:
        return False
    if not (node.pending_force if run.resume == "force" else node.mode == "retry"):
        return False  # (forced by upstream, or an "upstream failed" error: that job redoes it)
    if executors.on_slurm(node):
        # (it starts after the earlier Slurm job; after a local job, which Slurm cannot
        # start after, at once: it waits for that job's claims, as off Slurm)
        return True
    # (off Slurm: a map's new job waits for the items the earlier job holds the claims of,
    # then computes what is left, as a task's waits for its claim)
    return off_slurm


def _items_later(run: NodeRun, forced: bool) -> None:
    """A map whose items come from an upstream node that runs first: decided once they are
    known."""
    node = run.node
    run.action, run.reason = "compute", "items known at run time"
    if node.mode == "read-only":  # (checked once its upstream, in its own mode, ran)
        run.reason = "read-only: items known at run time (a missing item fails)"
    elif forced:  # (decide_items then forces every item it gets, cached or not)
        why = "mode=force" if node.pending_force else "forced by upstream"
        run.action = "force"
        run.reason = f"{why}: {FORCED_ITEMS_LATER}"


def _reuse(run: NodeRun) -> bool:
    """Decide to reuse what a node has cached, unless it was computed with other class
    defaults than today's (then the node fails with the check's error)."""
    run.action, run.reason = "reuse", "cached"
    try:
        run.node.check_defaults()
    except RuntimeError as error:
        run.action, run.reason, run.error = "fail", f"{OTHER_DEFAULTS}: {error}", error
        return False
    _check_reused_code(run.node, run.uids if run.node.kind == "map" else None)
    return True


def _check_reused_code(node: Node, uids: tp.Sequence[str] | None) -> None:
    """Warn here when what a run reuses of a ``__main__`` method was computed by other
    code (a notebook's cell edited): the job that reads it warned in its log only."""
    func = codeprint.method_function(node.function)
    if func is None or func.__module__ != "__main__":  # (see codeprint)
        return
    if uids is not None:
        codeprint.check_items(node.cache, uids, func, node.uid)
    elif (entry := node.cache.entry(TASK_KEY)) is not None:
        codeprint.check(entry.info.get("#meta"), func, node.uid)


def _all_cached(run: NodeRun) -> bool:
    """Whether everything a node would compute is cached (a forced node)."""
    node = run.node
    if node.kind == "task":
        return store.task_state(node) == "done"
    return bool(run.uids) and not node.cache.missing(run.uids or ())
