"""The scheduler: the one path from "these nodes are wanted" to results in the cache.

It decides per node what to do (reuse, compute, force, retry, fail, not needed), then
walks the DAG in waves: ready work is grouped by where it runs, each group goes out as one
array (inline work runs in the caller's thread), and finished nodes unlock their
dependents. A failure stops its dependents only; other branches finish and stay cached.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
import typing as tp

from . import executors, registry, store
from .errors import JobFailedError, NodeFailures
from .node import POOL_CLUSTERS, SUBMITIT_CLUSTERS, TASK_KEY, Node
from .progress import Progress
from .worker import Action, Unit

logger = logging.getLogger("exca")
POLL_START = 0.05
POLL_MAX = 2.0


@dataclasses.dataclass
class NodeRun:
    """What the scheduler decided for a node, and how it went."""

    node: Node
    action: str = "reuse"  # reuse | compute | force | retry | fail | not-needed
    reason: str = ""
    uids: list[str] | None = None  # maps: uids of the requested items (in order)
    todo: list[str] | None = None  # maps: uids to compute
    handles: list[executors.Handle] = dataclasses.field(default_factory=list)
    error: BaseException | None = None
    state: str = "pending"  # pending | running | done | failed | skipped

    @property
    def needs_work(self) -> bool:
        return self.action in ("compute", "force", "retry", "wait")


def _upstream_failed(node: Node) -> bool:
    """Whether a task's cached error only says that its upstream had failed."""
    entry = node.cache.entry(TASK_KEY)
    return entry is not None and str(entry.info.get("t", "")).endswith("UpstreamFailed")


def collect(targets: tp.Sequence[Node]) -> dict[tuple[str, str], Node]:
    """Every node the targets need, deduplicated by key (conflicting duplicates raise)."""
    nodes: dict[tuple[str, str], Node] = {}
    stack = list(reversed(targets))  # depth-first, targets in the order given
    while stack:
        node = stack.pop()
        known = nodes.get(node.key)
        if known is not None:
            if known is not node and (
                known.execution != node.execution or known.mode != node.mode
            ):
                raise ValueError(
                    f"Two nodes with uid {node.uid} differ in how they run "
                    f"({known.mode}, {known.execution.describe()}) vs "
                    f"({node.mode}, {node.execution.describe()}): give them the same infra "
                    "settings (mode, cluster, resources)"
                )
            continue
        nodes[node.key] = node
        stack.extend(reversed(node.upstream))
    return nodes


def to_chunks(count: int, max_chunks: int | None, min_per_chunk: int) -> list[tuple[int, int]]:
    """Contiguous (start, stop) chunks: min(max_chunks, ceil(n/min)) chunks of equal size."""
    if count == 0:
        return []
    splits = math.ceil(count / max(1, min_per_chunk))
    if max_chunks:
        splits = min(splits, max_chunks)
    size = math.ceil(count / splits)
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def _topological(
    nodes: dict[tuple[str, str], Node], upstream: dict[tuple[str, str], list[tuple[str, str]]]
) -> list[tuple[str, str]]:
    if len(nodes) < 2:
        return list(nodes)
    import networkx as nx

    graph = nx.DiGraph()
    graph.add_nodes_from(nodes)
    graph.add_edges_from((up, key) for key, ups in upstream.items() for up in ups)
    return list(nx.topological_sort(graph))


class Scheduler:
    """Runs the nodes needed by some targets (see module docstring)."""

    def __init__(
        self,
        targets: tp.Sequence[Node],
        item_uids: dict[tuple[str, str], list[str]] | None = None,
        progress: bool | None = None,
    ) -> None:
        self.targets = list(targets)
        self.nodes = collect(self.targets)
        self.item_uids = item_uids or {}
        self.runs: dict[tuple[str, str], NodeRun] = {}
        self.progress_requested = progress
        self.run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(3).hex()}"
        self._upstream = {key: [n.key for n in node.upstream] for key, node in self.nodes.items()}
        self._downstream: dict[tuple[str, str], list[tuple[str, str]]] = {k: [] for k in self.nodes}
        for key, ups in self._upstream.items():
            for up in ups:
                self._downstream[up].append(key)
        self._check_acyclic()

    # --- planning ---------------------------------------------------------------------------
    def _check_acyclic(self) -> None:
        if len(self.nodes) < 2:
            return
        import networkx as nx

        graph = nx.DiGraph()
        graph.add_nodes_from(self.nodes)
        graph.add_edges_from((up, key) for key, ups in self._upstream.items() for up in ups)
        if not nx.is_directed_acyclic_graph(graph):
            cycle = nx.find_cycle(graph)
            raise ValueError(f"The graph has a cycle: {[self.nodes[a].uid for a, _ in cycle]}")

    def _forced_keys(self) -> set[tuple[str, str]]:
        """Nodes in mode force, and everything downstream of them in this graph."""
        forced = {k for k, n in self.nodes.items() if n.mode == "force"}
        stack = list(forced)
        while stack:
            for down in self._downstream[stack.pop()]:
                if down not in forced:
                    forced.add(down)
                    stack.append(down)
        return forced

    def decide(self) -> dict[tuple[str, str], NodeRun]:
        """Action and reason for every node (pruning: what a cached node needs is not needed)."""
        forced = self._forced_keys()
        runs = {key: NodeRun(node, action="not-needed", reason="not needed") for key, node in self.nodes.items()}
        visited: set[tuple[str, str]] = set()
        stack = [t.key for t in self.targets]
        while stack:
            key = stack.pop()
            if key in visited:
                continue
            visited.add(key)
            run = runs[key]
            self._decide_node(run, key in forced)
            if run.needs_work:
                stack.extend(self._upstream[key])
        self.runs = runs
        self._check_registry([r for r in runs.values() if r.action in ("compute", "retry")])
        return runs

    def _check_registry(self, candidates: list[NodeRun]) -> None:
        """Task nodes whose job was already submitted: wait for it if it is queued or
        running; if it ended without a result, it failed (cancelled, timed out, killed)."""
        records = {}
        for run in candidates:
            if run.node.kind == "task":
                record = registry.latest(run.node.folder)
                if record is not None:
                    records[run.node.key] = record
        if not records:
            return
        slurm_ids = [r.job_id for r in records.values() if r.cluster == "slurm"]
        queued = registry.queued_jobs(slurm_ids) if slurm_ids else set()
        for key, record in records.items():
            run = self.runs[key]
            if registry.is_active(record, queued):
                run.action = "wait"
                run.reason = f"running as job {record.job_id}"
                run.handles = [executors.SubmititHandle(registry.submitit_job(record), record.cluster)]
            elif run.action == "compute":
                how = executors.SubmititHandle(registry.submitit_job(record), record.cluster).ended_how()
                run.action = "fail"
                run.reason = f"job {record.job_id} ended without a result"
                run.error = JobFailedError(f"{run.node.uid}: {how} (use mode='retry' to recompute)")

    def _decide_node(self, run: NodeRun, forced: bool) -> None:
        node = run.node
        if node.kind == "map":
            self._decide_map(run, forced)
            return
        state = store.task_state(node) if node.folder is not None or TASK_KEY in node.cache else "missing"
        if forced:
            run.action = "force"
            run.reason = "mode=force" if node.mode == "force" else "forced by upstream"
        elif state == "done":
            run.action, run.reason = "reuse", "cached"
        elif state == "error" and _upstream_failed(node):
            run.action, run.reason = "retry", "its upstream failed last time"
        elif state == "error":
            if node.mode == "retry":
                run.action, run.reason = "retry", "retry of a cached error"
            else:
                run.action, run.reason = "fail", "cached error"
        elif node.mode == "read-only":
            run.action, run.reason = "fail", "read-only and missing"
        else:
            run.action, run.reason = "compute", "missing"

    def _decide_map(self, run: NodeRun, forced: bool) -> None:
        node = run.node
        uids = self.item_uids.get(node.key)
        if uids is None:
            if isinstance(node.items, Node) and not self._is_done(node.items):
                run.action = "force" if forced else "compute"
                run.reason = "items known at run time"
                return
            uids = store.map_item_uids(node)
        self._decide_items(run, uids, forced)

    def _is_done(self, node: Node) -> bool:
        """Whether a node's outputs can be read now (used to resolve items early)."""
        if node.kind == "task":
            return node.mode != "force" and store.task_state(node) == "done"
        if isinstance(node.items, Node):
            return False
        return node.mode != "force" and not node.cache.missing(store.map_item_uids(node))

    def _decide_items(self, run: NodeRun, uids: list[str], forced: bool) -> None:
        node = run.node
        run.uids = uids
        if forced:
            run.todo = list(dict.fromkeys(uids))
            run.action = "force"
            run.reason = "mode=force" if node.mode == "force" else "forced by upstream"
        else:
            missing, errors = store.item_states(node, uids) if node.mode == "retry" else (node.cache.missing(uids), [])
            if node.mode == "retry" and errors:
                wanted = set(missing) | set(errors)
                run.todo = [u for u in dict.fromkeys(uids) if u in wanted]
                run.action, run.reason = "retry", f"{len(missing)} missing, {len(errors)} cached errors"
            elif missing:
                run.todo = missing
                if node.mode == "read-only":
                    run.action = "fail"
                    run.reason = f"read-only and {len(missing)}/{len(set(uids))} items missing"
                else:
                    run.action = "compute"
                    run.reason = f"{len(missing)}/{len(set(uids))} missing"
            else:
                run.todo = []
                run.action, run.reason = "reuse", "cached"
        if run.needs_work and node.forbid_single_item and len(set(uids)) == 1 and len(run.todo) == 1:
            run.action = "fail"
            run.reason = "single item computation is forbidden (forbid_single_item_computation)"

    # --- running ----------------------------------------------------------------------------
    def run(self) -> None:
        """Compute what the targets need and wait for it (raises on failure)."""
        runs = self.decide()
        for run in runs.values():
            if run.action == "fail":
                run.state = "failed"
                run.error = run.error or self._decision_error(run)
            elif not run.needs_work:
                run.state = "done" if run.action == "reuse" else "skipped"
        work = [r for r in runs.values() if r.needs_work]
        if work:
            for run in work:
                if run.node.prepare is not None:
                    run.node.prepare()
            self._execute(work)
        self._raise_failures()

    def submit(self, parallelism: int | None = None) -> dict[tuple[str, str], list[executors.Handle]]:
        """Submit every node that needs work and has no upstream work (no waiting; inline
        nodes run now). Returns the handles per node key."""
        runs = self.decide()
        work = [r for r in runs.values() if r.needs_work]
        blocked = [r for r in work if any(self.runs[u].needs_work for u in self._upstream[r.node.key])]
        if blocked:
            raise NotImplementedError(
                f"{blocked[0].node.uid} depends on uncomputed upstream nodes: use run() to wait"
            )
        for run in work:
            if run.node.prepare is not None:
                run.node.prepare()
        running: dict[tuple[str, str], NodeRun] = {}
        pools = executors.Pools()
        progress = Progress(0, desc="exca", requested=False)
        self._launch(work, running, pools, progress, parallelism=parallelism)
        pools.shutdown()
        return {r.node.key: r.handles for r in work}

    def run_detached(self) -> None:
        """Submit every node that needs work at once and return without waiting: each
        array depends (afterany) on the jobs of its upstream nodes, and its elements check
        at start that their upstream results exist. Work that runs in this process
        (cluster=None, pools) is done first when its upstream is ready."""
        runs = self.decide()
        for run in runs.values():
            if run.action == "fail":
                run.state = "failed"
                run.error = run.error or self._decision_error(run)
            elif not run.needs_work:
                run.state = "done" if run.action == "reuse" else "skipped"
        order = [k for k in _topological(self.nodes, self._upstream) if runs[k].needs_work]
        for key in order:
            blocked = [u for u in self._upstream[key] if runs[u].state == "failed"]
            if blocked:
                runs[key].state = "skipped"
                runs[key].error = RuntimeError(f"{runs[key].node.uid}: upstream {runs[blocked[0]].node.uid} failed")
        order = [k for k in order if runs[k].state != "skipped"]
        for key in order:
            if runs[key].node.prepare is not None:
                runs[key].node.prepare()
        pools = executors.Pools()
        progress = Progress(0, desc="exca", requested=False)
        submitted: list[tuple[NodeRun, executors.Handle]] = []
        try:
            for wave in self._waves(order):
                groups: dict[str, list[tuple[NodeRun, Unit]]] = {}
                for key in wave:
                    run = runs[key]
                    if run.action == "wait":
                        continue
                    cluster = run.node.execution.cluster
                    deps = self._dependencies(key)
                    if cluster not in ("slurm", "auto") or executors.resolve_cluster(cluster) != "slurm":
                        if deps:
                            raise ValueError(
                                f"Cannot submit {run.node.uid} without waiting: it runs on "
                                f"{run.node.execution.describe()} after upstream jobs, and only "
                                "Slurm can start work after other jobs (give it cluster='slurm', "
                                "or use wait=True)"
                            )
                        running: dict[tuple[str, str], NodeRun] = {}
                        self._launch([run], running, pools, progress)
                        if running:
                            self._wait_some(running, progress)
                        continue
                    for unit in self._detached_units(run):
                        groups.setdefault(f"{cluster}|{run.node.execution.group_key}", []).append((run, unit))
                for members in groups.values():
                    deps = sorted({d for run, _ in members for d in self._dependencies(run.node.key)})
                    first = members[0][0].node
                    logs = executors.format_logs(first.execution.logs or "{folder}/logs/{user}/%j", first.folder)
                    handles = executors.submit_array(
                        [u for _, u in members], first.execution, logs, len(members), dependencies=deps
                    )
                    for (run, unit), handle in zip(members, handles):
                        run.handles.append(handle)
                        run.state = "running"
                        submitted.append((run, handle))
                        self._record(run.node, unit, handle)
        except BaseException:
            for run, handle in submitted:  # a half-made submission is cancelled, not left behind
                handle.cancel()
                registry.forget(run.node.folder, handle.job_id)
            raise
        finally:
            pools.shutdown()

    def _waves(self, order: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
        level: dict[tuple[str, str], int] = {}
        for key in order:
            level[key] = max((level[u] + 1 for u in self._upstream[key] if u in level), default=0)
        waves: dict[int, list[tuple[str, str]]] = {}
        for key in order:
            waves.setdefault(level[key], []).append(key)
        return [waves[i] for i in sorted(waves)]

    def _dependencies(self, key: tuple[str, str]) -> list[str]:
        """Job ids this node must start after: its upstream nodes' queued/running jobs."""
        deps: list[str] = []
        for up in self._upstream[key]:
            run = self.runs[up]
            if run.state == "running" or run.action == "wait":
                deps.extend(h.job_id for h in run.handles if isinstance(h, executors.SubmititHandle))
        return deps

    def _detached_units(self, run: NodeRun) -> list[Unit]:
        node = run.node
        action = tp.cast(Action, run.action)
        if node.kind == "map" and run.uids is None:  # items known at run time
            count = node.execution.max_jobs or 1
            return [Unit(node, action, split=(i, count)) for i in range(count)]
        return self._units(run)

    def _decision_error(self, run: NodeRun) -> BaseException:
        node = run.node
        if run.reason == "cached error":
            try:
                store.task_result(node)
            except Exception as error:
                return error
        if run.action == "fail" and node.mode == "read-only":
            return RuntimeError(f"{node.uid}: {run.reason} (mode='read-only' never computes)")
        return RuntimeError(f"{node.uid}: {run.reason}")

    def _execute(self, work: list[NodeRun]) -> None:
        total = sum(len(r.todo or ()) if r.node.kind == "map" else 1 for r in work)
        progress = Progress(total, desc="exca", requested=self.progress_requested)
        pools = executors.Pools()
        pending = {r.node.key: r for r in work}
        running: dict[tuple[str, str], NodeRun] = {}
        try:
            while pending or running:
                ready = [r for k, r in pending.items() if self._ready(k)]
                for run in ready:
                    del pending[run.node.key]
                self._launch(ready, running, pools, progress)
                self._propagate_failures(pending)
                if not running:
                    if pending and not ready:
                        break  # blocked: upstream failed
                    continue
                self._wait_some(running, progress)
                self._propagate_failures(pending)
        except KeyboardInterrupt:
            logger.warning("Interrupted: cancelling the jobs this run submitted")
            for run in running.values():
                if run.action == "wait":
                    continue  # not ours
                for handle in run.handles:
                    handle.cancel()
                    registry.forget(run.node.folder, handle.job_id)
            pools.shutdown(cancel=True)
            raise
        finally:
            progress.close()
        pools.shutdown()

    def _ready(self, key: tuple[str, str]) -> bool:
        return all(self.runs[up].state == "done" for up in self._upstream[key])

    def _propagate_failures(self, pending: dict[tuple[str, str], NodeRun]) -> None:
        for key, run in list(pending.items()):
            failed = [self.runs[up] for up in self._upstream[key] if self.runs[up].state in ("failed", "skipped")]
            failed = [f for f in failed if f.state == "failed" or f.action != "not-needed"]
            if failed:
                run.state = "skipped"
                run.error = RuntimeError(f"{run.node.uid} was not computed: upstream {failed[0].node.uid} failed")
                del pending[key]

    def _units(self, run: NodeRun) -> list[Unit]:
        node = run.node
        action = tp.cast(Action, run.action)
        if node.kind == "task":
            return [Unit(node, action)]
        if run.uids is None:  # items known now that the upstream is done
            forced = run.action == "force"
            self._decide_items(run, store.map_item_uids(node), forced)
            if not run.needs_work:
                return []
            action = tp.cast(Action, run.action)
        todo = list(run.todo or [])
        by_uid = self._items_by_uid(run)
        cluster = node.execution.cluster
        if cluster in POOL_CLUSTERS and len(todo) > 1:
            random.shuffle(todo)  # overlapping runs start on different items
            workers = executors.Pools.workers(len(todo), node.execution.max_jobs)
            chunks = to_chunks(len(todo), 3 * workers, 1)
        elif cluster in SUBMITIT_CLUSTERS:
            random.shuffle(todo)
            chunks = to_chunks(len(todo), node.execution.max_jobs, node.execution.min_items_per_job)
        else:
            chunks = [(0, len(todo))]
        return [
            Unit(node, action, items=[by_uid[u] for u in todo[a:b]], uids=todo[a:b]) for a, b in chunks
        ]

    def _items_by_uid(self, run: NodeRun) -> dict[str, tp.Any]:
        items = run.node.items
        if isinstance(items, Node):
            from .worker import load_output

            items = load_output(items)
        assert run.uids is not None and items is not None
        return dict(zip(run.uids, items))

    def _launch(
        self,
        ready: list[NodeRun],
        running: dict[tuple[str, str], NodeRun],
        pools: executors.Pools,
        progress: Progress,
        parallelism: int | None = None,
    ) -> None:
        groups: dict[str, list[tuple[NodeRun, Unit]]] = {}
        for run in ready:
            run.state = "running"
            if run.action == "wait":  # already submitted by someone: just wait for it
                running[run.node.key] = run
                continue
            units = self._units(run)
            if not units:
                run.state = "done"
                continue
            running[run.node.key] = run
            cluster = run.node.execution.cluster
            single_pool_item = cluster in POOL_CLUSTERS and len(units) == 1 and len(units[0].keys) == 1
            if cluster is None or single_pool_item:
                for unit in units:
                    item_progress = progress.update if unit.uids is not None else None
                    handle = executors.run_inline(unit, item_progress)
                    if unit.uids is None:
                        progress.update(1)
                    run.handles.append(handle)
                continue
            key = f"{cluster}|{run.node.execution.group_key}"
            groups.setdefault(key, []).extend((run, u) for u in units)
        for members in groups.values():
            self._submit_group(members, pools, parallelism)
        for key in [k for k, r in running.items() if r.handles and all(h.done() for h in r.handles)]:
            self._finish(running.pop(key), progress)

    def _submit_group(
        self, members: list[tuple[NodeRun, Unit]], pools: executors.Pools, parallelism: int | None
    ) -> None:
        first = members[0][0].node
        cluster = first.execution.cluster
        units = [unit for _, unit in members]
        if cluster in POOL_CLUSTERS:
            handles: list[executors.Handle] = list(pools.submit(units, str(cluster), first.execution.max_jobs))
        else:
            logs = executors.format_logs(first.execution.logs or "{folder}/logs/{user}/%j", first.folder)
            handles = list(
                executors.submit_array(units, first.execution, logs, parallelism or len(units))
            )
            for (run, unit), handle in zip(members, handles):
                self._record(run.node, unit, handle)
        for (run, _), handle in zip(members, handles):
            run.handles.append(handle)

    def _record(self, node: Node, unit: Unit, handle: executors.Handle) -> None:
        folder = node.folder
        job = handle.submitit_job
        if folder is None or job is None:
            return
        from ..storage.process import hostname

        record = registry.JobRecord(
            job_id=handle.job_id,
            cluster=str(handle.cluster),
            logs=str(job.paths.folder),
            submitted=time.time(),
            run=self.run_id,
            keys=unit.uids,
            host=hostname(),
            pid=os.getpid(),
        )
        try:
            registry.write(folder, record, link=unit.uids is None)
        except OSError as e:
            logger.warning("Could not record job %s in %s: %s", handle.job_id, folder, e)

    def _wait_some(self, running: dict[tuple[str, str], NodeRun], progress: Progress) -> None:
        """Block until at least one running node finishes."""
        delay = POLL_START
        while True:
            finished = [k for k, r in running.items() if all(h.done() for h in r.handles)]
            if finished:
                for key in finished:
                    self._finish(running.pop(key), progress)
                return
            time.sleep(delay)
            delay = min(delay * 1.5, POLL_MAX)

    def _finish(self, run: NodeRun, progress: Progress) -> None:
        node = run.node
        node.cache.refresh()
        if node.kind == "task":
            if any(h.cluster not in (None, "threadpool", "processpool") for h in run.handles):
                progress.update(1)
            state = store.task_state(node)
            if state == "done":
                run.state = "done"
                return
            if state == "error":
                handle_error = next((h.error() for h in run.handles if h.error() is not None), None)
                run.state = "failed"
                inline = all(isinstance(h, executors.DoneHandle) for h in run.handles)
                if inline and handle_error is not None:
                    run.error = handle_error  # the original exception, with its live traceback
                else:
                    try:
                        store.task_result(node)
                    except Exception as error:
                        run.error = error
                return
            run.state = "failed"
            run.error = self._lost(run)
            if isinstance(run.error, JobFailedError) and node.folder is not None:
                self._cache_error(node, run.error)
            return
        missing = node.cache.missing(run.todo or [])
        if node.execution.cluster not in (None,):
            progress.update(len(run.todo or []) - len(missing) if node.execution.cluster not in POOL_CLUSTERS else len(run.todo or []))
        if not missing:
            run.state = "done"
            return
        run.state = "failed"
        run.error = self._lost(run, missing)

    @staticmethod
    def _cache_error(node: Node, error: BaseException) -> None:
        """Remember that the job of a task failed (status 'failed'; mode retry recomputes)."""
        from ..storage.formats import CachedError

        try:
            with node.cache.write():
                if TASK_KEY not in node.cache:
                    node.cache[TASK_KEY] = CachedError.from_exception(error)
        except (OSError, ValueError) as e:
            logger.warning("Could not cache the failure of %s: %s", node.uid, e)

    def _lost(self, run: NodeRun, missing: list[str] | None = None) -> BaseException:
        descriptions = []
        for handle in run.handles:
            error = handle.error()
            if isinstance(handle, executors.DoneHandle | executors.FutureHandle):
                if error is not None:
                    return error
                continue
            descriptions.append(handle.ended_how())
        what = f"{len(missing)} item(s) of " if missing else ""
        detail = "; ".join(descriptions) or "the worker ended without writing it"
        return JobFailedError(f"{what}{run.node.uid} not computed: {detail}")

    def _raise_failures(self) -> None:
        failures = {
            r.node.uid: r.error for r in self.runs.values() if r.state in ("failed", "skipped") and r.error is not None
        }
        if not failures:
            return
        target_keys = [t.key for t in self.targets]
        if len(failures) == 1:
            raise next(iter(failures.values())) from None  # type: ignore[misc]
        for key in target_keys:
            run = self.runs[key]
            if run.state == "failed" and run.error is not None and len(self.targets) == 1 and not any(
                self.runs[k].state == "failed" for k in self.runs if k != key
            ):
                raise run.error
        raise NodeFailures(tp.cast(dict[str, BaseException], failures))


def run(
    targets: tp.Sequence[Node],
    item_uids: dict[tuple[str, str], list[str]] | None = None,
    progress: bool | None = None,
) -> Scheduler:
    """Compute what the targets need (waiting for it); return the scheduler (decisions)."""
    scheduler = Scheduler(targets, item_uids=item_uids, progress=progress)
    scheduler.run()
    return scheduler
