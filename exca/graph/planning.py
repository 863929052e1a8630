"""Plans (dry runs): what a run would do for every node, and why, without running it.

A plan never calls a decorated method (it may call ``item_uid``) and never writes,
deletes or repairs anything: it only reads caches, job records and the queue.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import json
import re
import typing as tp
from pathlib import Path

from ..storage import gcpause
from ..storage.cachedict import keeping_files
from . import codeprint, executors, registry, store
from .decisions import (
    OTHER_DEFAULTS,
    READ_ONLY_MISSING,
    Graph,
    Key,
    NodeRun,
    gets_own_job,
    to_chunks,
    unreachable_inputs,
)
from .errors import as_bool, ending_line, shortened
from .node import POOL_CLUSTERS, SUBMITIT_CLUSTERS, TASK_KEY, Group, Node, single_item_here

# a map computing some items whose cached ones other code computed (see codeprint)
EDITED_ITEMS = "; its cached items were "
STATUS_ORDER = ("running", "missing", "forced", "cached error", "stale", "cached", "not needed")
_MERMAID_STYLE = {
    "cached": "fill:#d4f4d4,stroke:#2e7d32",
    "stale": "fill:#fff3cd,stroke:#b8860b",
    "missing": "fill:#fde0dc,stroke:#c62828",
    "forced": "fill:#ffe0b2,stroke:#ef6c00",
    "cached error": "fill:#f8bbd0,stroke:#ad1457",
    "running": "fill:#d0e4ff,stroke:#1565c0",
    "not needed": "fill:#eeeeee,stroke:#9e9e9e",
}


@dataclasses.dataclass
class PlanEntry:
    """What a run would do for one node."""

    uid: str
    kind: str
    status: str  # cached | cached error | running | missing | forced | stale | not needed
    action: str  # reuse | compute | wait | fail | skip
    reason: str
    where: str
    upstream: list[str]
    items: str | None = None  # maps: "812/10000 missing" or "items known at run time"
    job_id: str | None = None
    array: int | None = None  # index of the array this node's work would go into
    folder: str | None = None
    problems: list[str] = dataclasses.field(default_factory=list)  # a run would not submit
    # a call with inputs: what feeds it, e.g. "w=Train.fit,1/lr=0.20-3d9814eb" (its uid
    # says inputs-<digest> only: the evaluations of a sweep looked all alike); a map fed by
    # a node: that node, named as its method's items parameter (its uid: items-<digest>)
    inputs: str | None = None
    # ... the same for scripts, whole: each input's name mapped to the uid of what feeds it
    # (a node's uid, as in ``uid`` and ``upstream``, or a value's uid), or to a list (a
    # dict, by key) of them (the display text above cuts them: "..., +4 more}")
    input_uids: dict[str, tp.Any] | None = None
    # a target map that computes its missing items, then raises one of its cached item
    # errors (mode cached): counted among those that would fail
    fails_after: bool = False

    def to_dict(self) -> dict[str, tp.Any]:
        out = dataclasses.asdict(self)
        if self.action not in WORKING_ACTIONS:  # (as the table's "-": nothing runs there)
            out["where"] = None
        return out


WORKING_ACTIONS = ("compute", "wait")  # the actions of a node whose work runs somewhere


@dataclasses.dataclass
class PlannedArray:
    """One submission the run would make: where, and how many elements."""

    index: int
    where: str
    elements: int
    nodes: list[str]
    wave: int
    at_most: bool = False  # a map's items are known at run time: elements is a bound
    # below a job submitted earlier (still running), or a computation of another process:
    # goes out when that ends, on its own
    after_running: bool = False
    # a map of at_most has max_jobs=None: no bound (one job per chunk of items)
    open_ended: bool = False
    # on Slurm, more elements than its MaxArraySize: sent as that many arrays
    slurm_arrays: int = 1


class Plan:
    """The dry run of some targets (see module docstring); ``str(plan)`` is a table,
    ``plan.to_dict()`` is JSON-able, ``plan.to_mermaid()`` is a picture source."""

    def __init__(self, targets: tp.Sequence[Node], wait: bool = True) -> None:
        """``wait``: the plan of ``run(*targets, wait=wait)`` (False: a detached run, which
        refuses work that would have to wait for a job here: listed in its problems)."""
        flag = as_bool(wait)
        if flag is None:  # (as run() checks it)
            raise TypeError(f"plan(wait={wait!r}): give True or False")
        self.wait = flag
        with gcpause.paused(), keeping_files():  # (a dry run: reads only)
            self.graph = Graph(targets, checks_payloads=True, dry_run=True)
            self._by_uid: dict[str, Node] | None = None
            self._stale: set[Key] = set()  # stale nodes seen so far (topological order)
            runs = self.graph.decide()
            # (as the run decided them: before the plan marks work computed elsewhere)
            self._refused = {} if wait else self._detached_refusals(runs)
            _note_computed_elsewhere(runs)
            self._unsendable = self._unpicklable(runs)
            order = self.graph.order
            self.entries = [self._entry(runs[key]) for key in order]
            self._shared: dict[str, int] = {}  # map items another node of the run computes
            self._overlaps: dict[str, int] = {}  # ... that are sent to this node's work too
            self.arrays = self._pack(order)
        by_uid = {e.uid: e for e in self.entries}
        for uid, count in self._shared.items():
            by_uid[uid].items = f"{by_uid[uid].items}, {count} by another node of this run"
        for uid, count in self._overlaps.items():
            by_uid[
                uid
            ].items = (
                f"{by_uid[uid].items}, {count} also in another node of this run (computed once)"
            )
        for array in self.arrays:
            for uid in array.nodes:
                by_uid[uid].array = array.index

    # --- building -------------------------------------------------------------------------
    def _entry(self, run: NodeRun) -> PlanEntry:
        node = run.node
        status, action = _status(run)
        if run.action == "reuse" and run.item_errors and self._is_target(node):
            status, action = "cached error", "fail"  # (run() raises an item's error)
        reason = run.reason
        if status == "cached":
            stale = self._stale_reason(node) if node.kind == "task" else None
            if stale is None:  # computed from a stale result is stale too
                ups = self.graph.upstream[node.key]
                up = next((u for u in ups if u in self._stale), None)
                if up is not None:
                    stale = f"stale: upstream {self.graph.nodes[up].uid} is stale"
            if stale is not None:
                status, reason = "stale", stale
                self._stale.add(node.key)
            else:
                note = node.reuse_note() if node.reuse_note is not None else None
                if note:
                    reason = f"{reason}, {note}"
                # (a notebook's cell edited: the call reusing it warns, the plan says so)
                edited = codeprint.edited_result(
                    node.cache,
                    codeprint.method_function(node.function),
                    TASK_KEY,
                    run.uids if node.kind == "map" else None,
                )
                if edited:
                    reason = f"{reason}, {edited}"
        elif status == "not needed" and node.reuse_note is not None:
            # (a cached target's check walked its upstream: one computed with other
            # sub-config versions is what a bumped version left behind it, said in the
            # table, not only in the log)
            note = node.reuse_note()
            if note:
                reason = f"{reason}, {note}"
        elif status == "missing" and run.reason in ("missing", READ_ONLY_MISSING):
            copied = _copied_job(run)
            if copied is not None:
                reason = f"{reason} ({copied})"
        elif node.kind == "map" and run.action == "compute" and run.uids is not None:
            # (the items it reuses, as a cached map's: the call warns of other code)
            todo = set(run.todo or ())
            reused = [u for u in dict.fromkeys(run.uids) if u not in todo]
            edited = (
                codeprint.edited_result(
                    node.cache, codeprint.method_function(node.function), TASK_KEY, reused
                )
                if reused
                else None
            )
            if edited:
                reason = f"{reason}{EDITED_ITEMS}{edited}"
        items = None
        if node.kind == "map" and run.action != "not-needed":
            if run.uids is None:  # (failing: its items could not be read, the reason says why)
                items = None if run.action == "fail" else "items known at run time"
            else:
                total = len(set(run.uids))
                what = (
                    "missing"
                    if run.action in ("compute", "reuse", "fail", "wait")
                    else "to compute"
                )
                items = f"{len(run.todo or [])}/{total} {what}"
        job_id = None
        if run.action == "wait" and run.handles:
            job_id = run.handles[0].job_id
        problems: list[str] = []
        if run.needs_work and not _waits(run):  # (a check-only map's job too: checked)
            cluster = executors.resolve_cluster(node.execution.cluster)
            if cluster == "slurm":
                from .slurm_check import problems as check_problems

                problems = check_problems(node.execution)
            if cluster in SUBMITIT_CLUSTERS:
                problems = [*problems, *_logs_problems(node)]
            unreachable = unreachable_inputs(node, detached=not self.wait)
            if unreachable:
                problems = [*problems, unreachable]
            unsendable = self._unsendable.get(node.key)
            if unsendable is not None:
                problems = [*problems, unsendable]
        refused = self._refused.get(node.key)
        if refused is not None:
            problems = [*problems, refused]
        return PlanEntry(
            uid=node.uid,
            kind=node.kind,
            status=status,
            action=action,
            reason=reason,
            where=_where(node, run),
            upstream=[self.graph.nodes[k].uid for k in self.graph.upstream[node.key]],
            items=items,
            job_id=job_id,
            folder=None if node.folder is None else str(node.folder),
            problems=problems,
            inputs=describe_inputs(node) if fed(node) else None,
            input_uids=input_uids(node) if fed(node) else None,
            fails_after=run.action == "compute" and run.item_errors > 0 and self._is_target(node),
        )

    def _unpicklable(self, runs: dict[Key, NodeRun]) -> dict[Key, str]:
        """The work a run would send to another process (a job, a process pool) that cannot
        be pickled: why, in the words of the run's error (its config or method, or those of
        a node it reads: a unit carries them; each config pickled once, alone, no bytes kept).
        Map items are not pickled here (they may be large): a run names one that fails."""
        from .executors import pickling_errors, sent_to, unpicklable_reason

        sent = {}
        for key, run in runs.items():
            if run.needs_work and not _waits(run):
                where = sent_to(run.node, _single_pool_item(run.node, run))
                if where is not None:
                    sent[key] = where
        if not sent:
            return {}
        # (each node carried by a unit sent away once: a walk of the graph, not of each
        # node's closure, quadratic for a chain)
        nodes, upstream = self.graph.nodes, self.graph.upstream
        carried: set[Key] = set()
        stack = list(sent)
        while stack:
            key = stack.pop()
            if key not in carried:
                carried.add(key)
                stack.extend(upstream[key])
        errors = pickling_errors(nodes[k].function for k in carried)
        if not errors:
            return {}
        # (the node failing to pickle in each one's closure: itself, else its upstream's)
        failing: dict[Key, Node | None] = {}
        for key in self.graph.order:  # (upstream first)
            if key in carried:
                node = nodes[key]
                own = node if id(node.function) in errors else None
                failing[key] = own or next(
                    (f for u in upstream[key] if (f := failing[u]) is not None), None
                )
        out: dict[Key, str] = {}
        parts: dict[int, str | None] = {}  # (each failing config looked at once)
        for key, where in sent.items():
            culprit = failing[key]
            if culprit is not None:
                error = errors[id(culprit.function)]
                node = runs[key].node
                out[key] = unpicklable_reason(node, error, where, failing=culprit, parts=parts)
        return out

    def _detached_refusals(self, runs: dict[Key, NodeRun]) -> dict[Key, str]:
        """The work a detached run refuses to submit, in the words of its error."""
        from .detached import refusal
        from .executors import on_slurm

        out = {}
        upstream = self.graph.upstream
        for key, run in runs.items():
            if not run.needs_work:
                continue
            if on_slurm(run.node) and run.action == "wait" and not gets_own_job(run, False):
                continue  # (its job is followed: nothing submitted for it)
            refused = refusal(run, [runs[u] for u in upstream[key]])
            if refused is not None:
                out[key] = refused
        return out

    def _is_target(self, node: Node) -> bool:
        return any(t.key == node.key for t in self.graph.targets)

    def _stale_reason(self, node: Node) -> str | None:
        """A cached task whose recorded upstream entries were replaced since (forced)."""
        entry = node.cache.entry(TASK_KEY)
        meta = entry.info.get("#meta") if entry is not None else None
        if not isinstance(meta, dict):
            return None
        if self._by_uid is None:
            self._by_uid = {n.uid: n for n in self.graph.nodes.values()}
        for uid, recorded, upstream in self._recorded_upstream(node, meta.get("up") or {}):
            if self.graph.runs[upstream.key].action == "not-needed":
                upstream.cache.refresh()  # not read by decide (the others were, just now)
            current = upstream.cache.entry(TASK_KEY)
            if current is None:
                continue
            # (older versions recorded where the index line was)
            if recorded not in (store.entry_ref(current), f"{current.file}:{current.offset}"):
                when = (current.info.get("#meta") or {}).get("t")
                stamp = (
                    datetime.datetime.fromtimestamp(when).isoformat(timespec="seconds")
                    if isinstance(when, int | float)
                    else "an unknown time"
                )
                return f"stale: upstream {uid} recomputed at {stamp}"
        return None

    def _recorded_upstream(
        self, node: Node, recorded: dict[str, tp.Any]
    ) -> list[tuple[str, tp.Any, Node]]:
        """The upstream tasks a result's provenance names (uid, recorded entry, node). A
        uid no node has is one from before a class was renamed (exca rename migrates the
        folders, not the provenance): it is paired with an upstream task the record does
        not name whose uid has the same shape (store.uid_shape: the same method, version
        and config), when only one has."""
        assert self._by_uid is not None
        out = []
        unknown: dict[tuple[str, ...], list[str]] = {}
        for uid, entry in recorded.items():
            upstream = self._by_uid.get(uid)
            if upstream is None:
                from .worker import MAP_REF  # (here: an import per cached node costs ~2 µs)

                if entry == MAP_REF:  # (a map's folder: no entry of its own to compare)
                    continue
                unknown.setdefault(store.uid_shape(uid), []).append(uid)
            elif upstream.kind == "task":
                out.append((uid, entry, upstream))
        if unknown:
            unnamed: dict[tuple[str, ...], list[Node]] = {}
            for up in node.upstream:
                up = self._by_uid.get(up.uid, up)
                if up.kind == "task" and up.uid not in recorded:
                    unnamed.setdefault(store.uid_shape(up.uid), []).append(up)
            for shape, uids in unknown.items():
                ups = list({u.uid: u for u in unnamed.get(shape, ())}.values())
                if len(uids) == 1 and len(ups) == 1:
                    out.append((ups[0].uid, recorded[uids[0]], ups[0]))
        return out

    def _pack(self, order: list[Key]) -> list[PlannedArray]:
        """How missing work would be grouped: per topological wave of work, one array per
        executor and resources (maps: one element per chunk of missing items)."""
        runs = self.graph.runs
        upstream = self.graph.upstream
        # (each run asked once, not once per edge: 10,000 nodes)
        waiting = {key for key, run in runs.items() if _waits(run)}
        sent = {
            key
            for key, run in runs.items()
            if run.needs_work and key not in waiting and not run.check_only
        }
        wave: dict[Key, int] = {}
        for key in order:
            ups = [wave[u] + 1 for u in upstream[key] if u in wave]
            if key in sent:
                wave[key] = max(ups, default=0)
            elif ups:
                wave[key] = max(ups) - 1
        # below a running job (waited for, not submitted now): off Slurm, it goes out when
        # that job ends, on its own; on Slurm, a waiting run holds back the ready work of its
        # array until then (a detached one sends both with the dependency): one array
        from .executors import on_slurm

        behind: set[Key] = set()
        for key in order if waiting else ():  # (nothing waited for: nothing behind)
            if any(u in waiting or u in behind for u in upstream[key]):
                behind.add(key)
        behind = {k for k in behind if not on_slurm(runs[k].node)}
        groups: dict[tuple[int, str, bool], PlannedArray] = {}
        # (map nodes of one config launched together: each item goes to one node's jobs)
        taken: dict[tuple[int, str, str], set[str]] = {}
        # (... otherwise, on another cluster or later: sent to both, computed once, the
        # second waiting for the first's claims, or finding them cached)
        planned: dict[str, set[str]] = {}
        for key in order:
            if key not in sent:  # (then in wave too)
                continue
            run = runs[key]
            node = run.node
            cluster = node.execution.cluster
            elements = 1
            todo = None
            if node.kind == "map":
                if run.uids is not None:
                    place = (wave[key], str(node.folder), str(cluster))
                    seen = taken.setdefault(place, set())
                    own = [u for u in run.todo or [] if u not in seen]
                    seen.update(own)
                    todo = len(own)
                    if todo < len(run.todo or ()):
                        self._shared[node.uid] = len(run.todo or ()) - todo
                    before = planned.setdefault(str(node.folder), set())
                    again = sum(u in before for u in own)
                    if again:
                        self._overlaps[node.uid] = again
                    before.update(own)
                if cluster in SUBMITIT_CLUSTERS:
                    limit = _max_jobs(node)
                    chunks = (
                        to_chunks(todo, limit, node.execution.min_items_per_job) if todo else []
                    )
                    elements = len(chunks) if todo is not None else (limit or 1)
                elif cluster in POOL_CLUSTERS:
                    from .executors import Pools

                    # (items known at run time: as many chunks as there may be)
                    workers = Pools.workers(
                        1 << 30 if todo is None else todo, node.execution.max_jobs
                    )
                    elements = 3 * workers if todo is None else len(to_chunks(todo, 3 * workers, 1))
            if todo == 0:
                continue  # (every item computed by another node: nothing sent for it)
            # (one item of a thread pool's map, its own: computed here, no pool)
            here = cluster is None or (
                node.kind == "map" and single_item_here(cluster) and todo == 1
            )
            where = "inline" if here else f"{cluster}|{node.execution.group_key}"
            group = (wave[key], where, key in behind)
            array = groups.get(group)
            if array is None:
                shown = "inline" if here else _where(node, run)  # (auto: what it resolves to)
                array = groups[group] = PlannedArray(
                    len(groups), shown, 0, [], wave[key], False, key in behind
                )
            array.elements += elements
            # (max_jobs chunks at most: how many depends on the items)
            unknown_items = node.kind == "map" and run.uids is None
            array.at_most |= unknown_items and cluster in (*SUBMITIT_CLUSTERS, *POOL_CLUSTERS)
            array.open_ended |= (
                unknown_items and cluster in SUBMITIT_CLUSTERS and not _max_jobs(node)
            )
            array.nodes.append(node.uid)
        for array in groups.values():
            if array.where.startswith("slurm") and array.elements > 1:
                from .executors import max_array_size

                # (MaxArraySize 0: arrays disabled, each element a plain job)
                array.slurm_arrays = -(-array.elements // max(1, max_array_size()))
        return list(groups.values())

    # --- rendering --------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for entry in self.entries:
            out[entry.status] = out.get(entry.status, 0) + 1
        return out

    def to_dict(self) -> dict[str, tp.Any]:
        return {
            "nodes": [e.to_dict() for e in self.entries],
            "arrays": [dataclasses.asdict(a) for a in self.arrays],
            "counts": self.counts(),
        }

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def __str__(self) -> str:
        with gcpause.paused():  # a table of 10k rows: many small strings, no cycles
            return self._table()

    def _repr_pretty_(self, printer: tp.Any, cycle: bool) -> None:
        """The table, for a notebook cell ending with a plan (IPython's display hook)."""
        printer.text(str(self))

    def _table(self) -> str:
        if not self.entries:  # (a sweep filtered to nothing, say: not an empty table)
            return "Plan: 0 node(s): no target given (nothing would run)"
        counts = ", ".join(
            f"{n} {s}"
            for s, n in sorted(self.counts().items(), key=lambda x: STATUS_ORDER.index(x[0]))
        )
        failing = sum(e.action == "fail" or e.fails_after for e in self.entries)
        counts += f"; {failing} would fail (see their reason)" if failing else ""
        lines = [f"Plan: {len(self.entries)} node(s): {counts}"]
        headers = ("status", "action", "node", "where", "reason")
        rows = []
        seen: dict[str, int] = {}
        for e in self.entries:
            seen[e.uid] = seen.get(e.uid, 0) + 1
        for e in self.entries:
            items = e.items or ""
            if items.startswith(e.reason):  # (the reason says the counts already)
                items = items[len(e.reason) :].lstrip(", ")
            reason = e.reason + (f" [{items}]" if items and items not in e.reason else "")
            if seen[e.uid] > 1 and e.folder:  # (one uid under two cache roots: two nodes)
                reason += f" (cache root {_root_of(e.folder, e.uid)})"
            if e.inputs:
                reason += f" (inputs: {e.inputs})"
            rows.append(
                (
                    e.status,
                    e.action,
                    e.uid,
                    e.where if e.action in WORKING_ACTIONS else "-",
                    reason,
                )
            )
        widths = [
            max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
            for i, h in enumerate(headers)
        ]
        widths[2] = min(widths[2], 80)
        fmt = "  ".join(f"{{:{w}}}" for w in widths[:-1]) + "  {}"
        lines.append("  " + fmt.format(*headers))
        for row in rows:
            node = row[2] if len(row[2]) <= 80 else "..." + row[2][-77:]
            lines.append("  " + fmt.format(row[0], row[1], node, row[3], row[4]))
        problems = [(e.uid, p) for e in self.entries for p in e.problems]
        if problems:
            lines.append("Problems (a run would refuse to submit):")
            lines.extend(f"  - {uid}: {p}" for uid, p in problems)
        if self.arrays:
            lines.append("Submissions:")
            for a in self.arrays:
                count = (
                    f"{a.elements} or more element(s) (max_jobs=None: one per chunk of items)"
                    if a.open_ended
                    else f"{'at most ' if a.at_most else ''}{a.elements} element(s)"
                )
                if a.slurm_arrays > 1:
                    from .executors import max_array_size

                    limit = max_array_size()
                    count += (
                        f" in {'at most ' if a.at_most else ''}{a.slurm_arrays} arrays "
                        f"(Slurm's MaxArraySize is {limit})"
                        if limit > 1
                        else f" as separate jobs (Slurm's MaxArraySize is {limit}: job arrays "
                        "are disabled)"
                    )
                lines.append(
                    f"  wave {a.wave}: {count} on {a.where} for {len(a.nodes)} node(s)"
                    + (" (once the running work they need ends)" if a.after_running else "")
                )
        return "\n".join(lines)

    def to_mermaid(self) -> str:
        """Mermaid flowchart source of the DAG, colored by status."""
        ids = {e.uid: f"n{i}" for i, e in enumerate(self.entries)}
        lines = ["flowchart TD"]
        for e in self.entries:
            step, _, rest = e.uid.partition("/")
            short = step.rsplit(".", 2)
            title = ".".join(short[-2:]) if len(short) >= 2 else step
            label = f"{title}<br/>{rest[:40]}<br/><b>{e.status}</b>"
            if e.items:
                label += f"<br/>{e.items}"
            lines.append(f'  {ids[e.uid]}["{_escape(label)}"]:::{e.status.replace(" ", "_")}')
        for e in self.entries:
            for up in e.upstream:
                lines.append(f"  {ids[up]} --> {ids[e.uid]}")
        for status, style in _MERMAID_STYLE.items():
            lines.append(f"  classDef {status.replace(' ', '_')} {style}")
        return "\n".join(lines) + "\n"


def _where(node: Node, run: NodeRun) -> str:
    """Where work would run; ``auto`` says what it resolves to here."""
    if node.folder is None and run.needs_work:
        # (no folder: the result stays in this process's memory, nothing is cached)
        return (
            "inline"
            if _single_pool_item(node, run)
            else f"{node.execution.describe()} (no folder: RAM only)"
        )
    if _single_pool_item(node, run):
        return "inline"
    where = node.execution.describe()
    if node.execution.cluster == "auto" and run.needs_work:
        from .executors import resolve_cluster

        resources = where[len("auto") :]  # ("(timeout_min=10, ...)" or nothing)
        resolved = resolve_cluster("auto")
        where = f"{resolved}(auto, {resources[1:]}" if resources else f"{resolved} (auto)"
    return where


def _logs_problems(node: Node) -> list[str]:
    """A log folder a job could not be sent with (an environment variable not set...)."""
    problem = node.execution.logs_problem
    return [] if problem is None else [problem]


def _single_pool_item(node: Node, run: NodeRun) -> bool:
    """A map of a thread pool with one item to compute: the run computes it here, no
    pool (a process pool's item still goes to a process of its own: see node.py)."""
    return (
        single_item_here(node.execution.cluster)
        and run.uids is not None
        and len(set(run.todo or ())) == 1
    )


def _escape(text: str) -> str:
    return text.replace('"', "#quot;")


def _note_computed_elsewhere(runs: dict[Key, NodeRun]) -> None:
    """Missing tasks, and map items, that another process computes right now without a
    job (inline, in a pool, on the debug cluster): run() would wait for them (status()
    says "running" too), whatever this node's cluster: a task is not submitted then (see
    submitting.exclusive). Map items that would go to a job still show as computed: their
    job waits for them, then computes what is left."""
    from .calls import keys_being_computed, removal_holder

    for run in runs.values():
        node = run.node
        if run.action != "compute":
            continue
        if run.folder_absent:
            continue  # (no claim without a folder)
        keys = (TASK_KEY,) if node.kind == "task" else (run.todo or ())
        if not keys:
            continue
        # (a removal's hold, `exca clean`: nothing computes it, it is computed once removed)
        elsewhere = keys_being_computed(node, keys, holds=False)
        remover = removal_holder(node) if node.kind == "task" and not elsewhere else None
        if remover is not None:
            run.reason += f" (its folder is being removed or renamed by {remover}: computed after)"
        waited = node.kind == "task" or node.execution.cluster in (None, "debug", *POOL_CLUSTERS)
        if waited and len(elsewhere) == len(set(keys)):
            run.action = "wait"
            what = "its result" if node.kind == "task" else "its items"
            run.reason = f"computed right now by another process: run() waits for {what}"
        elif elsewhere:
            run.reason += f" ({len(elsewhere)} of them computed right now by another process)"


def _copied_job(run: NodeRun) -> str | None:
    """A task missing here whose folder was copied (or moved) holding the record of a job
    of the original folder (its last one: ``registry.read_all``'s foreign records): how
    that job is, or ended, as far as it can be known here (its process, on this host, by
    pid and start time; Slurm's queue; its logs, copied along), said as a plan on the
    original says it. It computed (or computes) into the original folder, not this one:
    this one computes it anew, and its failure is not this folder's (None: no such job)."""
    node = run.node
    if node.kind != "task" or node.folder is None or run.folder_absent or run.seen_job:
        return None
    foreign = [r for r in registry.read_all(node.folder, copied=True) if r.foreign]
    if not foreign:
        return None
    return copied_job_said(foreign[-1])[1]


def copied_job_said(record: registry.JobRecord) -> tuple[bool, str]:
    """How the job of a copied (or moved) folder's record (a foreign one, see
    ``registry.read_all``) is, or ended, in the original folder it writes into: (whether
    it still runs there, what the plan and `exca list` of the copy say of it)."""
    # (as read in the original folder, where it writes, when that is still there: its
    # logs there end as it ended, not where the copy caught them)
    there = Path(record.folder)
    own = dataclasses.replace(
        record, foreign=False, node_folder=there if there.is_dir() else record.node_folder
    )
    copied = f"its folder was copied from {record.folder}, where"
    if registry.still_running(own):
        now = f"{copied} job {record.job_id} computes it now (not waited for: it writes there)"
        return True, now
    if registry.wrote_outcome(own):
        return False, f"{copied} job {record.job_id} computed it since"
    known = registry.slurm_endings([record.job_id]) if record.cluster == "slurm" else {}
    how = ending_line(executors.recorded_handle(own).ended_how(known.get(record.job_id)))
    return False, f"{copied} {how}; not a failure of this folder"


def _waits(run: NodeRun) -> bool:
    """Whether a run only waits for an earlier job (a node forced or retried in its own
    mode while that job runs gets a job of its own: a submission)."""
    return run.action == "wait" and not gets_own_job(run, off_slurm=True)


def _status(run: NodeRun) -> tuple[str, str]:
    action = run.action
    if action == "reuse":
        return "cached", "reuse"
    if action == "not-needed":
        return "not needed", "skip"
    if action == "force":
        return "forced", "compute"
    if action == "retry":  # (an "upstream failed" error is not this node's)
        return ("cached error" if run.holds_error else "missing"), "compute"
    if action == "wait":  # (a removal's hold computes nothing: missing meanwhile)
        return ("missing" if run.removed_by is not None else "running"), "wait"
    if run.check_only:
        return "missing", "check"
    if action == "fail":
        if run.holds_error:
            return "cached error", "fail"
        if run.reason.startswith(OTHER_DEFAULTS):
            return "cached", "fail"
        return "missing", "fail"
    return "missing", "compute"


def plan(*targets: Node, wait: bool = True) -> Plan:
    """The dry run of some target nodes (see ``Plan``)."""
    return Plan(list(targets), wait=wait)


INPUT_SHOWN = 80  # characters of each input of a call in a plan's table


def listed_inputs(texts: tp.Sequence[str], total: int) -> str:
    """A list of ``total`` inputs, short, from its first entries' ``texts``: those that fit
    whole in INPUT_SHOWN characters (the first one at least, cut in its middle when it
    alone is too long), then how many more. (The whole list cut in its middle read
    "[Features.embed,2/infra.version=2-3c4536 [...] sion=2-3c45369e/items-16c1992f, +1
    more]": neither entry could be told.)"""
    shown = list(texts[:1])
    for text in texts[1:]:
        more = total - len(shown) - 1
        tail = f", +{more} more" if more else ""
        if len("[" + ", ".join([*shown, text]) + tail + "]") > INPUT_SHOWN:
            break
        shown.append(text)
    more = total - len(shown)
    tail = f", +{more} more" if more else ""
    body = ", ".join(shown)
    if len(shown) == 1:
        body = shortened(body, INPUT_SHOWN - len(tail) - 2)
    return "[" + body + tail + "]"


def value_text(uid: str) -> str:
    """A value input, short: its display, and its digest only when the display is cut."""
    display = re.sub(r"-[0-9a-f]{8}$", "", uid)
    return display if len(display) <= INPUT_SHOWN else shortened(uid, INPUT_SHOWN)


def fed(node: Node) -> tuple[tuple[str, tp.Any], ...]:
    """What feeds a node, by name: a call's inputs, or the node giving a map its items
    (named as its method's parameter: the evaluation maps of a sweep looked all alike)."""
    if node.kind == "map" and isinstance(node.items, Node):
        func = codeprint.method_function(node.function)
        names = list(inspect.signature(func).parameters)[1:2] if func is not None else []
        return ((names[0] if names else "items", node.items),)
    return node.inputs


def describe_inputs(node: Node) -> str:
    """What feeds a call with inputs (or a map its items), short: each input's name and its
    node (step without its module, and config uid), value, or list of them."""

    def short(source: tp.Any) -> str:
        if isinstance(source, Node):
            method, _, version = source.step.partition(",")  # (a version may hold dots)
            name = ".".join(method.rsplit(".", 2)[-2:])  # (Class.method)
            return f"{name},{version}/{source.uid.split('/', 1)[1]}"
        if isinstance(source, Group):
            shown = [short(s) for s in source.sources[:2]]
            more = len(source.sources) - len(shown)
            if source.keys is not None:  # (a dict: its keys tell its inputs apart)
                # (each cut on its own: a cut of the whole would hide the second key)
                half = INPUT_SHOWN // 2
                shown = [
                    f"{shortened(key, half)}: {shortened(text, half)}"
                    for key, text in zip(source.keys, shown)
                ]
                return "{" + ", ".join(shown) + (f", +{more} more" if more else "") + "}"
            return listed_inputs(shown, len(source.sources))
        return value_text(str(source.uid))

    def bounded(source: tp.Any) -> str:
        text = short(source)
        if isinstance(source, Group):
            return text  # (its entries are cut one by one)
        return shortened(text, INPUT_SHOWN)

    return ", ".join(f"{name}={bounded(source)}" for name, source in fed(node))


def input_uids(node: Node) -> dict[str, tp.Any]:
    """What feeds a call with inputs, whole: each input's name and the uid of its node or
    value, or the list (dict, by key) of them."""

    def uids(source: tp.Any) -> tp.Any:
        if isinstance(source, Group):
            if source.keys is not None:
                return {key: s.uid for key, s in zip(source.keys, source.sources)}
            return [s.uid for s in source.sources]
        return str(source.uid)

    return {name: uids(source) for name, source in fed(node)}


def _root_of(folder: str, uid: str) -> str:
    """The cache root of a node folder (a map's uid ends with ``/items-...``, which is
    not a folder)."""
    parts = uid.split("/")
    for count in (len(parts), len(parts) - 1):
        suffix = "/" + "/".join(parts[:count])
        if folder.endswith(suffix):
            return folder[: -len(suffix)]
    return folder


def _max_jobs(node: Node) -> int | None:
    from .executors import max_jobs

    return max_jobs(node.execution)
