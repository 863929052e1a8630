"""The scheduler: the one path from "these nodes are wanted" to results in the cache.

It carries out the decisions (``decisions.py``) in waves: ready work is grouped by where
it runs, each group goes out as ONE array (inline work runs in the caller's thread,
while another thread submits the job work that jobs ending meanwhile make ready), and
finished nodes unlock their dependents. A failure stops its dependents only; the other
branches finish and stay cached; one final error lists every failed node.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import random
import threading
import time
import typing as tp
from pathlib import Path

from ..storage import interrupts, process
from ..storage.index import CacheFolderRemoved, folder_marker
from . import callers, executors, registry, store, submitting
from .calls import being_computed, claimed_here, keys_being_computed
from .decisions import (
    RETRIED_IF_LOST,
    Graph,
    Key,
    NodeRun,
    collect,
    gets_own_job,
    read_only_missing,
    say_items_left,
    to_chunks,
    unreachable_inputs,
    wait_for_claims,
)
from .errors import (
    JobFailedError,
    NodeFailures,
    class_changed,
    failed_upstreams,
    first_named,
    items_not_computed,
    not_cached,
    pool_interrupt,
    read_only_error,
    retried_error,
    retry_hint,
    same_endings,
)
from .node import (
    POOL_CLUSTERS,
    SUBMITIT_CLUSTERS,
    TASK_KEY,
    Group,
    Node,
    reading_only,
    restoring_files,
    single_item_here,
)
from .progress import Progress
from .worker import (
    STOP,
    UNSTORED,
    Action,
    JobWait,
    Unit,
    UpstreamFailed,
    computing_any_items,
    computing_items,
    give_up_unstarted,
)

logger = logging.getLogger("exca")
_HERE = (None, "debug", *POOL_CLUSTERS)  # (clusters computing in this process or its pools)
# (its own generator: the user's `random` state stays as it was, cached or not; seeded
# again in a forked child: processes forked from one driver shuffle differently, as
# `random` does. Not SystemRandom: 2.5x slower to shuffle a million items)
_SHUFFLER = random.Random()
os.register_at_fork(after_in_child=_SHUFFLER.seed)


def _chunk(values: list[tp.Any], start: int, stop: int) -> list[tp.Any]:
    """values[start:stop], not copied when that is all of them (a unit of all the items:
    one list of n fewer for the cyclic GC to walk while they are computed). Nobody
    changes a unit's lists, nor the lists they are taken from."""
    return values if start == 0 and stop == len(values) else values[start:stop]


def _shuffled(todo: list[str], chunks: list[tuple[int, int]]) -> list[str]:
    """The items for these chunks: random ones in each chunk (overlapping runs start on
    different items), in the call's order within it. A job then computes its items in
    that order, so what its method keeps when it stops at an item (sys.exit, a
    KeyboardInterrupt: the outputs before it are written) is the items before it in the
    call, as in the calling process; a chunk of all the items is not shuffled."""
    if len(chunks) < 2:
        return todo
    # (each item's chunk drawn by shuffling the chunks' places: no sort, one pass)
    labels = [c for c, (a, b) in enumerate(chunks) for _ in range(b - a)]
    _SHUFFLER.shuffle(labels)
    buckets: list[list[str]] = [[] for _ in chunks]
    appends = [bucket.append for bucket in buckets]
    for label, uid in zip(labels, todo):
        appends[label](uid)
    return [uid for bucket in buckets for uid in bucket]


POLL_START = 0.05
POLL_MAX = 2.0
LOCAL_POLL_MAX = 0.2  # (while local jobs run: polling one costs a process check)
# ready Slurm work waits at most this long for running jobs to make more of its array
# group ready (a branch's long training must not hold back another branch's work for hours)
HOLD_BACK_MAX_S = 30.0

__all__ = ["NodeRun", "Scheduler", "collect", "run", "to_chunks"]


def _reads_only(run: NodeRun) -> bool:
    """A read-only node waiting for a job that computes what it misses: its upstream, not
    decided (nothing of it is needed here), does not hold it back."""
    return run.action == "wait" and run.reads_only


def held_elsewhere(run: NodeRun) -> bool:
    """A nested call of a thread computing map items, of a map some of whose missing items
    other workers hold (e.g. jobs of debug, which records no job to wait for): computed in
    this thread, waiting for each item they hold (a job sent for them, waited for whole,
    would wait for those workers, whose items may need the items this thread holds)."""
    return computing_any_items() and bool(
        keys_being_computed(run.node, run.todo or (), others_only=True)
    )


class Scheduler:
    """Runs the nodes some targets need (see module docstring)."""

    def __init__(
        self,
        targets: tp.Sequence[Node],
        item_uids: dict[Key, list[str]] | None = None,
        progress: bool | None = None,
        item_missing: dict[Key, list[str]] | None = None,
    ) -> None:
        """``item_missing``: of ``item_uids``, those the caller found missing on the read its
        thread relies on (see decisions.Graph)."""
        # (before deciding: a computation started since then answers this run's request)
        self.asked_at = time.time()
        self.graph = Graph(targets, item_uids, item_missing=item_missing)
        with reading_only(targets):  # (a plan only warns of legacy names, and so does
            for node in self.graph.nodes.values():  # a call of read-only targets)
                if node.adopt_legacy is not None:
                    node.adopt_legacy()
        self._targets, self._item_uids = targets, item_uids
        self.progress_requested = progress
        self._requeued: list[NodeRun] = []
        self._counted: set[Key] = set()  # the maps whose items the progress total holds
        self._follow_ups: dict[Key, int] = {}  # withdrawn jobs seen, per node
        self._recorded: set[str] = set()  # ids of the jobs whose record this run wrote
        self.run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{process.random_hex(3)}"
        # a task another worker computes (live claim) is waited for, not submitted: only
        # when this scheduler waits and can submit once that worker ends without a result
        # (job() submits: the job waits for the claim, then computes if needed)
        self.claim_waits = True
        # map nodes of one config (one folder) with overlapping items: each item goes to
        # the jobs of one of them, the others wait for those jobs (see _take_items)
        self._shared_folders: set[tuple[str, str]] | None = None
        self._map_folders: collections.Counter[str] | None = None
        self._item_owners: dict[tuple[str, str], dict[str, NodeRun]] = {}
        self._item_handles: dict[tuple[str, str], dict[str, executors.Handle]] = {}
        self._borrowed: list[tuple[NodeRun, tuple[str, str], list[str]]] = []
        # (not for a detached run: what follows a node starts after that node's own jobs)
        self.shares_items = True
        # (a call of one node: of several failures, the one the others only follow is raised)
        self.root_cause = False
        self._settled: list[Key] = []  # nodes that left the running ones since the last wave
        self._held_since: dict[Key, float] = {}  # ready work held back, since when (monotonic)
        self._positions: tuple[Graph, dict[Key, int]] | None = None
        self._loop: _Loop | None = None  # (a waiting run's state: see _run_inline)
        # job work the thread submitting during inline work left to the busy thread (the
        # submission would have hidden variables the inline code had set since its look)
        self._left: list[list[tuple[NodeRun, Unit]]] = []

    def _position(self) -> dict[Key, int]:
        """Each node's place in the topological order (of the current graph: submit()
        decides a new one)."""
        if self._positions is None or self._positions[0] is not self.graph:
            self._positions = (self.graph, {k: i for i, k in enumerate(self.graph.order)})
        return self._positions[1]

    @property
    def runs(self) -> dict[Key, NodeRun]:
        return self.graph.runs

    def decide(self) -> dict[Key, NodeRun]:
        return self.graph.decide()

    def __repr__(self) -> str:  # (a notebook cell ending with run(...) shows it)
        states: dict[str, int] = {}
        for run in self.runs.values():
            states[run.state] = states.get(run.state, 0) + 1
        counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        return f"<exca run of {len(self.graph.nodes)} node(s): {counts or 'not decided'}>"

    def _read_only_failures(self, runs: dict[Key, NodeRun]) -> list[NodeRun]:
        """The read-only nodes refusing to compute, and the nodes failing only below them
        (by the graph: a cached error's message may hold the words "read-only")."""
        failing: set[Key] = set()
        for key in self.graph.order:  # (topological: upstream first)
            run = runs[key]
            if run.action != "fail":
                continue
            if run.blocked:  # (fails because of an upstream node: one of those?)
                refused = any(u in failing for u in self.graph.upstream[key])
            else:
                refused = run.reason.startswith("read-only")
            if refused:
                failing.add(key)
        return [runs[k] for k in self.graph.order if k in failing]

    def start(
        self,
        detached: bool = False,
        refuse: tp.Callable[[list[NodeRun]], None] | None = None,
    ) -> list[NodeRun]:
        """Decide, settle what needs no work, prepare the folders of what does
        (``detached``: for a run that submits everything and returns; ``refuse``: raises
        if the run refuses that work). A run refused changes nothing on disk: what it
        removes (damaged upstream outputs) and prepares comes after every refusal."""
        runs = self.graph.decide()
        read_only = self._read_only_failures(runs)
        roots = [r for r in read_only if not r.blocked]  # (the others fail only below them)
        if self.root_cause and len(roots) == 1:
            raise self.graph.decision_error(roots[0])  # (as a call of that node raises)
        if read_only:  # read-only never computes: refuse before anything runs or is submitted
            raise (
                self.graph.decision_error(read_only[0])
                if len(read_only) == 1
                else NodeFailures({r.node.uid: self.graph.decision_error(r) for r in read_only})
            )
        for run in runs.values():
            if run.action == "fail":
                run.state = "failed"
                run.error = self.graph.decision_error(run)
            elif not run.needs_work:
                run.state = "done" if run.action == "reuse" else "skipped"
        work = [runs[k] for k in self.graph.order if runs[k].needs_work]
        for run in work:  # (before anything is queued)
            unreachable = run.action != "wait" and unreachable_inputs(run.node, detached)
            if unreachable:
                raise ValueError(f"Cannot submit {run.node.uid}: {unreachable}")
        bad_logs = [
            f"{r.node.uid}: {r.node.execution.logs_problem}"
            for r in work
            if r.action != "wait"
            and r.node.execution.logs_problem is not None
            and r.node.execution.cluster in SUBMITIT_CLUSTERS
        ]
        if bad_logs:  # (a job of a later wave: found now, not hours later)
            raise ValueError("Cannot submit: " + "; ".join(bad_logs))
        slurm = [
            (r.node.uid, r.node.execution, 1)
            for r in work
            if r.action != "wait" and executors.resolve_cluster(r.node.execution.cluster) == "slurm"
        ]
        if slurm:
            from .slurm_check import check

            check(slurm)  # every problem at once, before anything is queued
        if refuse is not None:
            refuse(work)
        for source, error in self.graph.damaged_reads:  # (decided to be computed again)
            store.drop_damaged(source, error)
        for run in work:
            if run.node.prepare is not None and run.action != "wait":
                run.node.prepare()
        return work

    # --- waiting runs ------------------------------------------------------------------------
    def run(self, root_cause: bool = False) -> None:
        """Compute what the targets need and wait for it (raises on failure: NodeFailures
        when several nodes failed; ``root_cause``: the error of the one node that failed
        when the others only could not run because of it, as a call of that node raises)."""
        self.root_cause = root_cause
        with reading_only(self._targets):
            with restoring_files():
                work = self.start()
            callers.refuse_waiting_on_caller_jobs(work)  # (a wait that would never end)
            if work:
                markers = {n.key: folder_marker(n.folder) for n in self._targets}
                try:
                    self._execute(work)
                finally:
                    self.graph.share_force_states()
                self._say_removed_folders(markers)
        self._raise_failures(root_cause)

    def _say_removed_folders(self, markers: dict[tp.Any, int | None]) -> None:
        """A target that failed while its folder was removed (an ``rm -rf``, ``exca
        clean`` in another shell): its error says so (items its workers had written,
        gone with the folder, were said "not computed: the worker ended without writing
        it")."""
        for node in self._targets:
            run = self.runs.get(node.key)
            # (only "not computed": a method's error stays; a removal by `exca clean` is
            # said with who removed it, see removed_by)
            if run is None or run.state != "failed" or run.removed_by:
                continue
            if not isinstance(run.error, JobFailedError):
                continue
            before = markers.get(node.key)
            if before is not None and folder_marker(node.folder) != before:
                removed = CacheFolderRemoved.at(str(node.folder), f"{node.uid} was computed")
                removed.__cause__ = run.error
                run.error = removed

    def run_detached(self) -> None:
        """Submit every missing node at once and return (see ``detached.py``)."""
        from .detached import submit_all

        self.shares_items = False
        with reading_only(self._targets):
            submit_all(self)

    def submit(
        self, parallelism: int | None = None, keep_going: bool = False
    ) -> dict[Key, list[executors.Handle]]:
        """Submit the nodes that need work (none may depend on another's work) without
        waiting (inline nodes run now). Returns the handles per node key. ``keep_going``:
        an upstream node that fails (cached) fails only the nodes that need it."""
        with reading_only(self._targets):
            return self._submit(parallelism, keep_going)

    def _say_waiting_first(self, order: list[Key]) -> None:
        """Say that a submission (a job array's block, a job()) waits for the jobs of
        what its work needs first: on a busy queue, as long as they queue and run (it was
        silent, and the block looked stuck)."""
        sent = [k for k in order if self.graph.nodes[k].execution.cluster not in _HERE]
        if not sent:
            return
        first = self.graph.nodes[sent[0]]
        logger.info(
            "Computing first what the work to submit needs (%d node(s), e.g. %s on %s), "
            "then submitting it: this waits for their job(s) to queue and run (compute "
            "them beforehand, or give their infra cluster=None, for a submission that "
            "returns at once)",
            len(sent),
            first.uid,
            first.execution.cluster,
        )

    def _submit(
        self, parallelism: int | None, keep_going: bool
    ) -> dict[Key, list[executors.Handle]]:
        with restoring_files():
            work = self.start()
        needed = {
            u for r in work for u in self.graph.upstream[r.node.key] if self.runs[u].needs_work
        }
        if needed:
            # a job can start only once what it needs exists (e.g. the task of a sub-config
            # it calls): that is computed first, waiting for it, then the job goes out
            order = [k for k in self.graph.order if k in needed]
            self._say_waiting_first(order)
            # (forced by an upstream node computed now: still forced once that is done)
            forced = {r.node.key for r in work if r.action == "force"} - needed
            upstream = Scheduler([self.graph.nodes[k] for k in order], self._item_uids)
            try:
                upstream.run(root_cause=True)
            except Exception:
                if not keep_going:
                    raise  # (else the cached failure is decided below: "upstream failed")
                for run in upstream.runs.values():  # (their force was tried: not again now)
                    if run.state == "failed" and run.action == "force":
                        run.node.force_state["done"] = True
            self.graph = Graph(self._targets, self._item_uids, forced=forced)
            work = self.start()
        for run in work:  # (a job: not the one this instance's force came after)
            follow_own_job(run, off_slurm=True)
        pools = executors.Pools()
        running: dict[Key, NodeRun] = {}
        progress = Progress(0, "exca", requested=False)
        try:
            self.launch(work, running, pools, progress, parallelism, waiting=False)
        except KeyboardInterrupt:
            _stop_local_jobs(work, pools)
            raise
        except BaseException:
            _stop_pools(work, pools)
            raise
        self.finish_done(running, progress)  # the inline ones ran already
        pools.shutdown()
        self.graph.share_force_states()
        return {r.node.key: r.handles for r in work}

    def _execute(self, work: list[NodeRun]) -> None:
        # (a task computed here counts nothing: the bar would sit at 0 until it ends, for
        # every call of a cached method in a notebook)
        total = sum(
            len(r.todo or ())
            if r.node.kind == "map"
            else int(r.node.execution.cluster is not None or r.action == "wait")
            for r in work
        )
        progress = Progress(total, desc="exca", requested=self.progress_requested)
        self._counted = {r.node.key for r in work if r.node.kind == "map" and r.uids is not None}
        pools = executors.Pools(progress.update)  # (a threadpool's items, as they are written)
        pending = {r.node.key: r for r in work}
        running: dict[Key, NodeRun] = {}
        # the pending nodes that may have become ready (or blocked): each wave checks only
        # these, not every pending node (a chain of n nodes has n waves: linear, not n^2)
        loop = self._loop = _Loop(pending, running, set(pending), pools, progress)
        self._settled.clear()
        try:
            while True:
                # finish what is done BEFORE holding back: a group whose last job just ended
                # must not hold its next level back (that left the level unlaunched)
                self.finish_done(running, progress)
                self._take_requeued(loop)
                if not pending and not running:
                    break
                ready_keys = self._ready_candidates(loop)
                ready, release_at = self._hold_back(
                    [pending[k] for k in ready_keys], running, pending
                )
                for run in ready:
                    del pending[run.node.key]
                # (held back: ready still, checked again next wave; the others wait for an
                # upstream node to settle, which makes them candidates again)
                loop.candidates = set(ready_keys) - {r.node.key for r in ready}
                self.launch(ready, running, pools, progress)
                if running:
                    self.wait_some(running, progress, until=release_at)
                elif not ready:
                    break
            for run in pending.values():  # never return silently with requested work undone
                run.state = "failed"
                run.error = RuntimeError(
                    f"{run.node.uid} was never started (its upstreams did not finish): "
                    "please report this as an exca bug"
                )
        except KeyboardInterrupt:
            # (a copy at once: a thread submitting meanwhile, let go by a second Ctrl-C,
            # may still add its jobs, see _run_inline)
            runs = list(running.values())
            cancelled = [r for r in runs if r.action != "wait"]  # not others' jobs
            _log_interruption(cancelled, [r for r in runs if r.action == "wait"])
            # (a second Ctrl-C waits for this: stopped half-way, some jobs it named ran on,
            # or a cancelled one kept its record and the next call raised "cancelled"; a
            # third one stops the wait, e.g. for a Slurm controller that does not answer:
            # a job whose cancellation it stopped keeps its record)
            _cancel(cancelled, pools)
            raise
        except BaseException as error:
            # (failing in this process, e.g. an OSError writing: its pools' workers went
            # on writing items after the error reached the user)
            runs = list(running.values())
            _stop_pools(runs, pools)
            _say_jobs_left_running(error, runs)
            raise
        finally:
            self._loop = None
            progress.close()
        pools.shutdown()

    def _take_requeued(self, loop: _Loop) -> None:
        """Runs that waited for others' jobs: pending again, to compute what they left."""
        for run in self._requeued:
            loop.pending[run.node.key] = run
            loop.candidates.add(run.node.key)
        self._requeued.clear()

    def _ready_candidates(self, loop: _Loop) -> list[Key]:
        """The pending nodes that are ready now, in topological order (those following
        nodes settled since the last look are candidates; those below a failure are
        skipped)."""
        pending = loop.pending
        for key in self._settled:
            loop.candidates.update(d for d in self.graph.downstream[key] if d in pending)
        self._settled.clear()
        self._skip_blocked(pending, loop.candidates)
        checked = sorted(loop.candidates & pending.keys(), key=self._position().__getitem__)
        return [k for k in checked if self._ready(k)]

    @staticmethod
    def _group(run: NodeRun) -> str | None:
        """The array group of a node's work (None: runs here, no array)."""
        cluster = run.node.execution.cluster
        if cluster is None or cluster in POOL_CLUSTERS or run.action == "wait":
            return None
        return f"{cluster}|{run.node.execution.group_key}"

    def _hold_back(
        self, ready: list[NodeRun], running: dict[Key, NodeRun], pending: dict[Key, NodeRun]
    ) -> tuple[list[NodeRun], float | None]:
        """Ready Slurm work waits while running jobs will soon make more work of its array
        group ready (then a level of the DAG goes out as ONE array, not one sbatch per
        finished job), at most HOLD_BACK_MAX_S. Other clusters gain nothing from waiting:
        their work starts now. Also gives when the earliest held work is released."""
        downstream = self.graph.downstream
        waiting = {d for k in running for d in downstream[k] if d in pending}
        soon = {self._group(pending[k]) for k in waiting if executors.on_slurm(pending[k].node)} - {
            None
        }
        if not soon:
            self._held_since.clear()
            return ready, None
        now = time.monotonic()
        out, release_at = [], None
        for run in ready:
            key = run.node.key
            since = self._held_since.setdefault(key, now)
            if self._group(run) not in soon or now - since >= HOLD_BACK_MAX_S:
                out.append(run)
                self._held_since.pop(key, None)
            else:
                at = since + HOLD_BACK_MAX_S
                release_at = at if release_at is None else min(release_at, at)
        return out, release_at

    def _ready(self, key: Key) -> bool:
        if _reads_only(self.runs[key]):
            return True
        return all(self.runs[up].state == "done" for up in self.graph.upstream[key])

    def _skip_blocked(
        self, pending: dict[Key, NodeRun], candidates: tp.Iterable[Key] | None = None
    ) -> None:
        """Skip the pending nodes (``candidates``: only those, and what follows them) that
        an upstream node failed (or was skipped) for, in topological order."""
        keys = [k for k in (pending if candidates is None else candidates) if k in pending]
        if not any(self._failed_upstream(k) for k in keys):
            return  # (the common case: heapq is not even imported)
        import heapq

        position = self._position()
        heap = [(position[k], k) for k in keys]
        heapq.heapify(heap)
        while heap:
            key = heapq.heappop(heap)[1]
            if key not in pending or _reads_only(pending[key]):
                continue
            failed = self._failed_upstream(key)
            if failed:
                run = pending.pop(key)
                for down in self.graph.downstream[key]:
                    if down in pending:
                        heapq.heappush(heap, (position[down], down))
                run.state = "skipped"
                run.blocked = True
                run.error = self._upstream_error(run, [self.runs[u] for u in failed])

    def _failed_upstream(self, key: Key) -> list[Key]:
        """The upstream nodes of this one that failed or were skipped (or maps that
        computed, with item errors: their outputs cannot be read; a job sent now would
        fail), in the order of its inputs."""
        runs = self.runs
        return [
            u
            for u in self.graph.upstream[key]
            if runs[u].state in ("failed", "skipped")
            or (runs[u].state == "done" and runs[u].item_errors)
        ]

    @staticmethod
    def _upstream_error(run: NodeRun, failed: list[NodeRun]) -> BaseException:
        """Why a node was not computed, as a call reading the failed upstream's outputs
        would have said (for a map with item errors: the first one), naming every failed
        upstream node."""
        if len(failed) == 1 and failed[0].state == "done":
            error = store.item_errors_failure(run.node, failed[0].node, failed[0].uids or [])
            if error is not None:
                return error
        uids = [f.node.uid for f in failed]
        through = _through(run.node, uids)
        return UpstreamFailed(f"{run.node.uid} was not computed{through}: {failed_upstreams(uids)}")

    # --- launching ---------------------------------------------------------------------------
    def units(self, run: NodeRun) -> list[Unit]:
        """The units of a node's work (maps: chunks of the missing items)."""
        node = run.node
        if node.kind == "task":
            action = tp.cast(Action, run.action)
            return [
                Unit(node, action, after_running_job=run.after_running_job, asked_at=self.asked_at)
            ]
        if run.uids is None:  # items known now that the upstream is done
            self.graph.decide_items(run, store.map_item_uids(node), run.action == "force")
            if run.action == "fail":  # (e.g. read-only with missing items: say so)
                raise self.graph.decision_error(run)
            if not run.needs_work:
                return []
        action = tp.cast(Action, run.action)
        todo = run.todo or []  # (only read: a single chunk's unit shares it, see below)
        cluster = node.execution.cluster
        if cluster in POOL_CLUSTERS or cluster in SUBMITIT_CLUSTERS:
            todo = self._take_items(run, todo)
        if cluster in POOL_CLUSTERS and len(todo) > 1:
            workers = executors.Pools.workers(len(todo), node.execution.max_jobs)
            chunks = to_chunks(len(todo), 3 * workers, 1)
            todo = _shuffled(todo, chunks)
        elif cluster in SUBMITIT_CLUSTERS:
            limit = executors.max_jobs(node.execution)
            chunks = to_chunks(len(todo), limit, node.execution.min_items_per_job)
            todo = _shuffled(todo, chunks)
        else:
            chunks = [(0, len(todo))] if todo else []
        items = self._items_of(run, todo)
        shipped = node.shipped()
        # (shared items: forced once; what a node of the folder computes in this run is
        # marked too: a forced node of it then does not compute it again)
        forced_by = self.run_id if action == "force" or self._forced_here(run) else ""
        if forced_by and node.mode == "force":  # (another call of the instance: its force)
            # (a call made by the method in a job of a forced run forces under that run:
            # the run's other jobs count what it computes as forced, see worker)
            forced_by = node.force_state.get("job_run", forced_by)
            node.add_forcing_run(forced_by)
        return [
            Unit(
                shipped,
                action,
                items=_chunk(items, a, b),
                uids=_chunk(todo, a, b),
                forced_by=forced_by,
                asked_at=self.asked_at,
            )
            for a, b in chunks
        ]

    def _item_key(self, run: NodeRun) -> tuple[str, str] | None:
        """Where a map node's items may be shared with another map node of this run (None:
        no other map node has its folder, the usual case)."""
        node = run.node
        if self._shared_folders is None:
            seen: set[tuple[str, str]] = set()
            self._shared_folders = set()
            for other in self.graph.nodes.values():
                if other.kind == "map" and other.folder is not None:
                    place = (str(other.folder), str(other.execution.cluster))
                    (self._shared_folders if place in seen else seen).add(place)
        place = (str(node.folder), str(node.execution.cluster))
        # (whatever their modes: an item another node computes now is fresh, as forced)
        return place if place in self._shared_folders else None

    def _forced_here(self, run: NodeRun) -> bool:
        """Whether another map node of this run, of the same folder (on any cluster), is
        forced."""
        if self._map_folders is None:
            self._map_folders = collections.Counter(
                str(n.folder) for n in self.graph.nodes.values() if n.kind == "map"
            )
        folder = run.node.folder
        if self._map_folders[str(folder)] < 2:
            return False
        return any(
            r is not run
            and r.action == "force"
            and r.node.kind == "map"
            and r.node.folder == folder
            for r in self.runs.values()
        )

    def _take_items(self, run: NodeRun, todo: list[str]) -> list[str]:
        """The items a map node's own jobs compute: those no other running map node of its
        folder took (each job of theirs would compute its share of the overlap, or wait
        for the other's claims: jobs doing nothing). It waits for the others' jobs for the
        rest (their handles are added to its own once submitted, see _add_borrowed)."""
        key = self._item_key(run) if self.shares_items else None
        if key is None:
            return todo
        owners = self._item_owners.setdefault(key, {})
        handles = self._item_handles.setdefault(key, {})
        own, borrowed = [], []
        for uid in todo:
            owner = owners.get(uid)
            handle = handles.get(uid)
            if (
                owner is not None
                and owner is not run
                and owner.state == "running"
                and (handle is None or not handle.done())
            ):
                borrowed.append(uid)
            else:
                owners[uid] = run
                handles.pop(uid, None)
                own.append(uid)
        if borrowed:
            self._borrowed.append((run, key, borrowed))
            run.borrowed = run.borrowed | set(borrowed)  # (a new set: see NodeRun)
            if run.action == "force":  # (replaced by the other node's jobs? see _finish)
                run.replaced.update(store.output_places(run.node.cache, borrowed))
        return own

    def _note_handles(self, members: list[tuple[NodeRun, Unit]], handles: list[tp.Any]) -> None:
        """Which job computes each item of the map nodes sharing a folder."""
        for (run, unit), handle in zip(members, handles):
            key = self._item_key(run) if unit.uids else None
            if key is not None:
                found = self._item_handles.setdefault(key, {})
                for uid in unit.uids or ():
                    found[uid] = handle

    def _add_borrowed(self) -> None:
        """Runs whose items other runs' jobs compute wait for those jobs too."""
        for run, key, uids in self._borrowed:
            handles = self._item_handles.get(key, {})
            owners = self._item_owners.get(key, {})
            for uid in uids:
                handle = handles.get(uid)
                # (not submitted here after all, e.g. found running elsewhere: its owner's)
                found = [handle] if handle is not None else list(owners[uid].handles)
                for other in found:
                    if not any(other is mine for mine in run.handles):
                        run.handles.append(other)
        self._borrowed.clear()

    @staticmethod
    def _items_of(run: NodeRun, todo: list[str]) -> list[tp.Any]:
        """The items of these uids of a map node, in their order."""
        items = run.node.items
        if isinstance(items, Node):
            from .worker import load_output

            items = load_output(items)
        assert run.uids is not None and items is not None
        items = list(items)
        if len(items) == len(todo) and todo == run.uids:
            return items  # (all of them, each once, in order: a first call; no dict built)
        # items with one uid: the first one is computed (the others read its output)
        by_uid = dict(zip(reversed(run.uids), reversed(items)))
        return [by_uid[u] for u in todo]

    def launch(
        self,
        ready: list[NodeRun],
        running: dict[Key, NodeRun],
        pools: executors.Pools,
        progress: Progress,
        parallelism: int | None = None,
        waiting: bool = True,
        later: list[tuple[NodeRun, Unit]] | None = None,
    ) -> None:
        """Start ready nodes: the ones with a cluster go out grouped in arrays, then the
        inline ones run (here: jobs first, so that they run meanwhile). ``waiting``: the
        caller then waits for them (not a submission that returns). ``later``: the inline
        units are added there, not run (by a thread submitting for a busy one)."""
        self.graph.share_force_states()  # (before instances are pickled into jobs)
        groups: dict[str, list[tuple[NodeRun, Unit]]] = {}
        inline: list[tuple[NodeRun, Unit]] = []
        _log_waits([r for r in ready if r.action == "wait"], waiting)
        for run in ready:
            run.state = "running"
            running[run.node.key] = run
            if run.action == "wait":  # already submitted by someone: just wait for it
                continue
            try:
                units = self.units(run)
            except Exception as error:  # e.g. item_uid failing on items made upstream:
                del running[run.node.key]  # this node fails, the other branches go on
                run.state, run.error = "failed", error
                self._settled.append(run.node.key)
                continue
            # (items known only now, fed by a node: counted now, or the bar went past its
            # total and lost it, "20it" after "4/4")
            if (
                run.node.kind == "map"
                and run.uids is not None
                and run.node.key not in self._counted
            ):
                self._counted.add(run.node.key)
                progress.add_total(len(run.todo or []))
            if not units:
                continue
            cluster = run.node.execution.cluster
            single_item = single_item_here(cluster) and len(units) == 1 and len(units[0].keys) == 1
            # (items an enclosing call of this very thread computes, e.g. in its job: a
            # job would wait for this thread; computed here too, as without a job)
            if (
                cluster is None
                or single_item
                or (
                    run.node.kind == "map"
                    and (
                        run.by_items
                        or claimed_here(run.node, run.todo or ())
                        or computing_items(run.node.folder)
                        or held_elsewhere(run)
                    )
                )
            ):
                inline.extend((run, unit) for unit in units)
                continue
            key = f"{cluster}|{run.array_key}"
            groups.setdefault(key, []).extend((run, u) for u in units)
        if waiting and (
            any(r.action == "wait" for r in ready)
            or any(members[0][0].node.execution.cluster != "debug" for members in groups.values())
        ):
            # (a thread computing map items about to wait for jobs whole: they may need its
            # items not started, given back first, before its jobs go out: a job whose
            # callers hold what it needs refuses it, see callers.py; a debug job runs here)
            give_up_unstarted()
        for members in groups.values():
            self._submit_group(members, pools, parallelism, waiting)
        self._add_borrowed()
        if later is not None:
            later.extend(inline)
        else:
            self._run_inline(inline, progress)

    def _run_inline(self, inline: list[tuple[NodeRun, Unit]], progress: Progress) -> None:
        """Run inline units in this thread. In a waiting run with job work pending, a
        thread meanwhile finishes the jobs that end and submits the job work they make
        ready (an inline node of one branch held back another branch's Slurm work until
        it ended: a long one for hours); inline units it comes across run here after."""
        while inline:
            meanwhile = _Meanwhile.wanted(self, {run.node.key for run, _ in inline})
            try:
                # (started in the try: a Ctrl-C right after its start left it running, the
                # run's state its own while the run cancelled, and after)
                if meanwhile is not None:
                    meanwhile.start()
                for run, unit in _others_first(inline):
                    on_items = progress.update if unit.uids is not None else None
                    run.handles.append(executors.run_inline(unit, on_items))
                later = meanwhile.stop() if meanwhile is not None else []
            except BaseException:
                if meanwhile is not None:
                    meanwhile.stop(raising=False)  # (its jobs are in the running ones)
                self._left.clear()  # (the run ends: nothing more goes out)
                raise
            left, self._left = self._left, []
            for members in left:  # (running ones without handles yet: submitted now)
                assert self._loop is not None  # (left by a thread of a waiting run)
                self._submit_group(members, self._loop.pools, None)
            inline = later

    @staticmethod
    def _sent_away(run: NodeRun, submits: bool) -> bool:
        """Work that another thread may start while this one computes inline work: a job
        followed, or jobs submitted (Slurm, local; not pools, whose processes it would
        fork while this thread runs user code, nor the debug cluster, which runs here).
        Not a submission that changes what this process's user code sees: one with a
        workdir (it works from the snapshot: cwd, sys.path, PYTHONPATH), or any while
        ``submits`` is False (see executors.submission_hides_environ)."""
        if run.action == "wait":
            return True
        execution = run.node.execution
        return (
            submits
            and execution.cluster in ("slurm", "auto", "local")
            and execution.workdir is None
        )

    @staticmethod
    def _computed_by_busy(run: NodeRun) -> bool:
        """Work a call of the busy thread computes (around the run or in its inline work,
        see _run_inline): left to that thread. A task: it refuses it, or finds it done. A
        map: any of its items (its items may not be decided yet), decided by that thread
        once its inline work ended, jobs for the rest (sent to the busy thread as work of
        its own, all its items were computed there, in the caller's process)."""
        node = run.node
        if node.kind == "task":
            return claimed_here(node, [TASK_KEY])
        return run.action != "wait" and claimed_here(node, None)

    def _submit_meanwhile(
        self, loop: _Loop, busy: set[Key], later: list[tuple[NodeRun, Unit]]
    ) -> bool:
        """One look of the thread submitting while ``busy`` nodes compute inline (see
        _run_inline): finish the other running nodes whose jobs ended, and start the job
        work that is ready, as the run's loop does. Whether anything changed."""
        # (a debug job runs when its end is asked for: in the busy thread, not this one)
        debug = {k for k, r in loop.running.items() if any(h.cluster == "debug" for h in r.handles)}
        # (a node whose units it left to the busy thread has no handle until they ran: all
        # of none ended, it was finished as lost, "not computed")
        deferred = {run.node.key for run, _ in later}
        deferred |= {run.node.key for members in self._left for run, _ in members}
        changed = self.finish_done(loop.running, loop.progress, busy | debug | deferred)
        self._take_requeued(loop)
        ready_keys = self._ready_candidates(loop)
        pending = loop.pending
        submits = not executors.submission_hides_environ()
        sendable = [
            pending[k]
            for k in ready_keys
            if self._sent_away(pending[k], submits) and not self._computed_by_busy(pending[k])
        ]
        ready, _ = self._hold_back(sendable, loop.running, pending)
        for run in ready:
            del pending[run.node.key]
            loop.candidates.discard(run.node.key)
        self.launch(ready, loop.running, loop.pools, loop.progress, later=later)
        return changed or bool(ready)

    def _submit_group(
        self,
        members: list[tuple[NodeRun, Unit]],
        pools: executors.Pools,
        parallelism: int | None,
        waiting: bool = True,
    ) -> None:
        first = members[0][0].node
        cluster = first.execution.cluster
        units = [unit for _, unit in members]
        handles: list[executors.Handle]
        if cluster in POOL_CLUSTERS:
            _note_replaced(members)
            handles = list(pools.submit(units, str(cluster), first.execution.max_jobs))
            for (run, _), handle in zip(members, handles):
                run.handles.append(handle)
        else:
            logs = executors.format_logs(
                first.execution.logs or "{folder}/logs/{user}/%j", first.folder
            )
            exclusive = submitting.exclusive(members, self.run_id, self.claim_waits, waiting)
            with exclusive as members:
                if not members:
                    return  # (submitted or computed by another process meanwhile)
                if waiting:  # (a job waited for here: its waits on this thread never end)
                    chain = callers.for_job()
                    members = [(run, unit._replace(callers=chain)) for run, unit in members]
                units = [unit for _, unit in members]
                outdated = store.outdated_outcomes(members)
                _note_replaced(members)
                after = sorted({job for run, _ in members for job in run.after})
                # (a Ctrl-C meanwhile is raised once the jobs are this run's, which cancels
                # them: between sbatch and there, they ran on with no record, or half of one)
                with interrupts.deferred():
                    # (a kill between sbatch and the records: the next run adopts the jobs)
                    marked = submitting.mark(members, logs, self.run_id, code=_code(first))
                    try:
                        handles = list(
                            executors.submit_array(
                                units,
                                first.execution,
                                logs,
                                parallelism or len(units),
                                after,
                                permissions=first.cache.permissions,
                                token=None if marked is None else marked[0],
                            )
                        )
                    except executors.SubmissionLeft:  # (nothing went out)
                        submitting.unmark(marked)
                        self._left.append(members)  # (submitted once the inline work ended)
                        return
                    except Exception as error:  # (sbatch refused it: no job to adopt later)
                        submitting.unmark_if_unsent(marked, error)
                        raise
                    for (run, unit), handle in zip(members, handles):
                        if unit.action == "force" and unit.uids is not None:
                            # (before its record: a call of this instance that sees the job
                            # knows it carries out this instance's force of these items)
                            # (with where the old outputs were: see _finish)
                            jobs = run.node.force_state.setdefault("jobs", {})
                            places = {u: run.replaced.get(u) for u in unit.uids}
                            jobs[handle.job_id] = (self.run_id, places)
                        self.record(run.node, unit, handle, code=_code(first))
                    submitting.unmark(marked)
                    # forced: its old result is not read from now on (after the records: a
                    # job of another process needing it then sees a job recomputing it)
                    store.drop_outcomes(outdated)
                    for (run, _), handle in zip(members, handles):
                        run.handles.append(handle)
        self._note_handles(members, handles)

    def record(self, node: Node, unit: Unit, handle: executors.Handle, code: tp.Any = None) -> None:
        """Write the job of a unit in its node's registry (and the ``submitit`` link;
        ``code``: the workdir snapshot of its array, when not the node's own)."""
        folder = node.folder
        job = handle.submitit_job
        if folder is None or job is None:
            return
        from ..storage.process import hostname, process_start_time

        local = handle.cluster == "local" and handle.job_id.isdigit()
        record = registry.JobRecord(
            job_id=handle.job_id,
            cluster=str(handle.cluster),
            logs=str(job.paths.folder),
            submitted=time.time(),
            run=self.run_id,
            keys=unit.uids,
            host=hostname(),
            pid=os.getpid(),
            folder=os.path.abspath(folder),
            start=process_start_time(int(handle.job_id)) if local else None,
        )
        if local:  # (before its record: no reader takes an older job's result for its)
            registry.set_aside_older_results(Path(job.paths.folder), int(handle.job_id))
        try:
            registry.write(
                folder, record, link=unit.uids is None, permissions=node.cache.permissions
            )
            self._recorded.add(record.job_id)
            workdir = code or getattr(node.execution.workdir, "folder", None)
            if workdir is not None and unit.uids is None:
                # the code snapshot the job ran (relative in the cache, as its logs)
                registry.link(folder, "code", registry.link_target(folder, str(workdir)))
        except OSError as e:
            logger.warning("Could not record job %s in %s: %s", handle.job_id, folder, e)

    # --- waiting -------------------------------------------------------------------------------
    def wait_some(
        self, running: dict[Key, NodeRun], progress: Progress, until: float | None = None
    ) -> None:
        """Block until at least one running node finishes (or time.monotonic() reaches
        ``until``: held-back work is due)."""
        job_wait = JobWait("")  # (in a nested call: a cycle through those jobs is refused)
        try:
            self._wait_some(running, progress, until, job_wait)
        finally:
            job_wait.end()

    def _wait_some(
        self,
        running: dict[Key, NodeRun],
        progress: Progress,
        until: float | None,
        job_wait: JobWait,
    ) -> None:
        delay = POLL_START
        # (a local job's end is seen soon after it happens: what follows it starts then)
        local = any(h.cluster == "local" for r in running.values() for h in r.handles)
        longest = LOCAL_POLL_MAX if local else POLL_MAX
        stop = STOP.event  # (this run waits in a pool's thread or process)
        while not self.finish_done(running, progress):
            if job_wait.wanted():
                job_wait(_computed_by_jobs(running))
            if until is not None and time.monotonic() >= until:
                return
            if stop is not None and stop.is_set():
                # (its caller was interrupted: a map calling a map with a pool of its own
                # went on with all its items)
                raise KeyboardInterrupt("the run calling this one was interrupted")
            futures = [
                h.future
                for r in running.values()
                for h in r.handles
                if isinstance(h, executors.FutureHandle) and not h.future.done()
            ]
            if futures:  # (a pool: woken as soon as one of its units ends, not at a poll)
                import concurrent.futures

                concurrent.futures.wait(futures, delay, concurrent.futures.FIRST_COMPLETED)
            else:
                time.sleep(delay)
            delay = min(delay * 1.5, longest)

    def finish_done(
        self,
        running: dict[Key, NodeRun],
        progress: Progress,
        busy: tp.Collection[Key] = (),
    ) -> bool:
        """Finish the running nodes whose jobs all ended; whether there was any (not the
        ``busy`` ones: computed inline right now, see _run_inline)."""
        finished = [
            k for k, r in running.items() if k not in busy and all(h.done() for h in r.handles)
        ]
        for key in finished:
            self._finish(running.pop(key), progress)
        self._settled.extend(finished)  # (requeued ones too: their downstream stays unready)
        return bool(finished)

    def _finish(self, run: NodeRun, progress: Progress) -> None:
        node = run.node
        inline = all(isinstance(h, executors.DoneHandle) for h in run.handles)
        if not inline:
            # (inline, a task or a map wrote through this very cache, after reading it
            # fresh: a map's items missing from it are read again below, on that miss)
            node.cache.refresh()
        if node.kind == "task":
            if not inline:
                progress.update(1)
            state = store.task_state(node)
            if node.mode == "read-only" and state != "done":  # (waited for a job: never
                self._read_only_left(run, state)  # computes, never writes)
                return
            if state == "missing" and self._refused_changed_class(run):
                return
            resume = run.resume
            if state == "error" and run.action == "wait":
                again = self._retry_after_wait(run)
                if again is not None:  # (None: not in mode retry)
                    resume = "retry" if again else None
            # (waited for another worker's computation: compute only what it left missing)
            if resume is not None and (
                resume == "force" or state == "missing" or (state == "error" and resume == "retry")
            ):
                run.seen_job = next((h.job_id for h in run.handles), run.seen_job)
                run.action, run.resume, run.handles = resume, None, []
                run.state = "pending"
                self._requeued.append(run)  # waited for someone else's job: now retry/force
                return
            if state == "done":
                failed = self._force_failed(run)
                if failed is not None:  # (the result there is the one it was to replace)
                    run.state, run.error = "failed", failed
                    return
                run.state = "done"
                if run.action == "force":
                    node.force_state["done"] = True
                return
            if state == "error" and self._upstream_dropped(run):
                return  # requeued after that upstream node
            run.state = "failed"
            if state == "error":
                error = next((h.error() for h in run.handles if h.error() is not None), None)
                if inline and error is not None:
                    run.error = error  # the original exception, with its live traceback
                else:
                    try:
                        store.task_result(node)
                    except Exception as cached:
                        run.error = cached
                return
            if self._job_withdrawn(run) or self._result_removed_since(run):
                return  # requeued: that job is not this config's failure
            if self._computed_elsewhere_now(run):
                return  # requeued: its outcome is that computation's
            if self._retry_lost_job(run):
                return  # requeued: mode retry computes it again
            run.error = self._lost(run)
            # (not while another worker computes it: e.g. this job only waited for that
            # worker's claim; its result is the outcome, not this job's end)
            if (
                isinstance(run.error, JobFailedError)
                and node.folder is not None
                and not being_computed(node)
                # (a job Slurm never starts is still queued: updated, it may run yet)
                and not any(h.never_starts() for h in run.handles)
            ):
                _cache_error(node, run.error)
            if node.mode == "retry":  # (cached as any failure; the caller retried already)
                run.error = retried_error(run.error)
            return
        if run.action == "wait":  # someone else's chunk jobs ended: decide what is left
            # (this instance's own forcing jobs, of another call, ended: their items are
            # forced; its mode=force still applies to the rest, see wait_for_map_jobs)
            # (an old output still in its place was not replaced: the job died first)
            own = node.force_state.get("jobs", {})
            for handle in run.handles:
                job = own.get(handle.job_id)
                if job is not None:
                    run_id, places = job
                    kept = set(store.not_replaced(node.cache, places, node.forcing_runs(run_id)))
                    forced = (u for u in places if u not in kept)
                    node.force_state.setdefault("uids", set()).update(forced)
            self._redecide_items(run, forced=node.pending_force)
            return
        todo = run.todo or []
        missing = node.cache.missing(todo)
        if run.replaced:  # (forced: an old output its jobs did not replace is missing too)
            missing += store.not_replaced(node.cache, run.replaced, node.forcing_runs(self.run_id))
            run.replaced = {}
        if not inline and node.execution.cluster not in POOL_CLUSTERS:
            progress.update(len(todo) - len(missing))
        # (a pool's items were counted as they were written)
        if not missing and run.action == "retry":
            failed = _retry_not_done(run, todo)
            if failed is not None:
                run.state, run.error = "failed", failed
                return
        if not missing:
            run.state = "done"
            if run.action == "force":
                node.force_state["done"] = True
                node.force_state.setdefault("uids", set()).update(todo)
            if self.graph.downstream[node.key]:  # (they cannot read outputs holding errors)
                run.item_errors = node.cache.count_errors(run.uids or ())
            return
        if self._recomputed_elsewhere(run, missing):
            return
        if missing and set(missing) <= run.borrowed:
            # (the other node's job died before computing them: computed here after all,
            # once, as they were before items were shared)
            if run.action == "force":  # (the others are forced: the rerun computes these)
                lost = set(missing)
                node.force_state.setdefault("uids", set()).update(u for u in todo if u not in lost)
            run.borrowed = set()
            run.todo, run.handles, run.replaced = list(missing), [], {}
            run.state = "pending"
            self._requeued.append(run)
            return
        run.state = "failed"
        run.error = self._lost(run, missing)

    def _upstream_dropped(self, run: NodeRun) -> bool:
        """A task that could not read an upstream output this run reused: an upstream in
        mode retry whose payload its reader found damaged (changed outside exca in a way
        no stat tells), removed then (see store.drop_damaged). That upstream is computed
        again, then this node (the run is requeued), as a call in mode retry does."""
        node = run.node
        if not store.cache_upstream_failed(node.cache):
            return False
        dropped = []
        for key in self.graph.upstream[node.key]:
            up = self.runs[key]
            if up.state != "done" or up.action != "reuse" or up.node.mode != "retry":
                continue
            up.node.cache.refresh()
            if up.node.kind == "task":
                gone = store.task_state(up.node) == "missing"
            else:
                gone = bool(up.node.cache.missing(up.uids or []))
            if gone:
                dropped.append(up)
        if not dropped:
            return False
        follow_ups = self._follow_ups[node.key] = self._follow_ups.get(node.key, 0) + 1
        if follow_ups > MAX_FOLLOW_UPS:
            return False
        for up in dropped:
            if up.node.kind == "map":
                self._redecide_items(up)
            else:
                up.state, up.action, up.handles = "pending", "retry", []
                up.reason = f"its cached result could not be read by {node.uid}"
                self._requeued.append(up)
        run.state, run.action, run.handles, run.resume = "pending", "retry", [], None
        self._requeued.append(run)
        return True

    @staticmethod
    def _read_only_left(run: NodeRun, state: str) -> None:
        """A read-only task whose job (waited for) ended without a result."""
        run.state = "failed"
        if state == "error":
            try:
                store.task_result(run.node)
            except Exception as cached:
                run.error = cached
                return
        how = _waited_job_ending(run, run.handles) if run.removed_by is None else None
        if how is not None:  # (said as a default call and the other read-only paths say it)
            run.error = JobFailedError(f"{run.node.uid}: {retry_hint(how)}")
            return
        if run.removed_by is not None:  # (waited for a removal: `exca clean`)
            ended = f"its folder was removed or renamed by {run.removed_by} meanwhile"
        elif any(isinstance(h, executors.ClaimHandle) for h in run.handles):
            ended = "the worker that was computing it ended without writing it"
        else:
            jobs = ", ".join(h.job_id for h in run.handles) or "its job"
            ended = f"job {jobs} ended without a result"
        run.error = read_only_error(run.node, f"read-only and missing ({ended})")

    def _retry_after_wait(self, run: NodeRun) -> bool | None:
        """After waiting for another worker's computation (a job, or an inline call's
        claim) that ended with an error, in mode retry: whether to compute it again, as an
        error that predates this run's request (None: not in mode retry). An error of a
        computation started since the request (another call asking at the same time) is
        the answer: computed once, not once per caller."""
        if run.node.mode != "retry" and run.resume != "retry":
            return None
        entry = run.node.cache.entry(TASK_KEY)
        if entry is not None and (entry.file, entry.offset) == run.seen_outcome:
            return True  # (the error seen before waiting: no clock to trust, it steps)
        return not store.computed_since(run.node.cache, self.asked_at)

    def _redecide_items(self, run: NodeRun, forced: bool = False) -> None:
        """Decide again what a map still needs (requeued if anything)."""
        waited = run.handles
        run.handles, run.resume = [], None
        run.node.cache.refresh()  # (what others wrote meanwhile: e.g. retried item errors)
        self.graph.decide_items(run, store.map_item_uids(run.node), forced=forced)
        if read_only_missing(run):  # (still being computed by another worker: waits again)
            wait_for_claims(run)
        if run.needs_work:
            run.state = "pending"
            self._requeued.append(run)
        else:
            run.state = "done" if run.action == "reuse" else "failed"
            if run.state == "failed":
                run.error = self.graph.decision_error(run)
                if read_only_missing(run):
                    _say_waited_job_ended(run, waited)

    def _recomputed_elsewhere(self, run: NodeRun, missing: list[str]) -> bool:
        """Items this run computed, deleted since by another process that recomputes
        them (mode force or retry there: it holds their claims): wait for them (the run is
        requeued) instead of calling them lost."""
        node = run.node
        if node.folder is None or any(h.error() is not None for h in run.handles):
            return False
        follow_ups = self._follow_ups[node.key] = self._follow_ups.get(node.key, 0) + 1
        if follow_ups > MAX_FOLLOW_UPS:
            return False
        from ..storage.claims import Claims

        claims = Claims(node.folder, job_alive=registry.slurm_job_alive)
        if not claims.holders(missing):
            return False
        self._redecide_items(run)
        return True

    @staticmethod
    def _refused_changed_class(run: NodeRun) -> bool:
        """The job of a task refused its config, whose class was edited while it was
        queued (see jobprocess.ClassChangedError): fail with that error, not cached (the
        job set its record aside: the next call submits the config again) and not submitted
        again here (the config of this process is of the class the job refused)."""
        hows = {
            h.job_id: h.ended_how()
            for h in run.handles
            if not isinstance(h, executors.DoneHandle | executors.FutureHandle)
            # (another process's local job, followed here, tells its error by how it ended
            # only: taken for withdrawn, it was submitted again, to be refused again; a job
            # ending on a KeyboardInterrupt writes no error: its log tells)
            and (
                h.error() is not None
                or isinstance(h, executors.RecordedLocalHandle)
                or not h.finished_ok()
            )
        }
        # (or whose method raised KeyboardInterrupt: not cached either, see INTERRUPT_HINT;
        # nor a full disk met storing its result, see STORAGE_HINT)
        refusing = [job_id for job_id, how in hows.items() if class_changed(how) or not_cached(how)]
        if not refusing:
            return False
        refused = hows[refusing[0]]
        for job_id in refusing:  # (the job did; unless it refused before it was recorded)
            registry.set_refused(run.node.folder, job_id)
        run.state = "failed"
        run.error = JobFailedError(f"{run.node.uid} not computed: {retry_hint(refused)}")
        return True

    def _job_withdrawn(self, run: NodeRun) -> bool:
        """The job of a task ended without a result, and its record is gone (its submitter
        was interrupted, or someone called clear_job) or names another job (resubmitted):
        it was withdrawn, not failed. Then wait for the new job (the run is requeued), or
        fail without caching the failure."""
        if run.node.folder is None or not run.handles:
            return False
        if any(isinstance(h, executors.DoneHandle | executors.FutureHandle) for h in run.handles):
            return False  # (ran here: no job record)
        follow_ups = self._follow_ups[run.node.key] = self._follow_ups.get(run.node.key, 0) + 1
        if follow_ups > MAX_FOLLOW_UPS:
            return False
        ids = {h.job_id for h in run.handles}
        if run.action != "wait" and not ids <= self._recorded:
            return False  # (its record could not be written: nobody removed it)
        if any(registry.recorded(run.node.folder, job_id) for job_id in ids):
            return False  # still recorded: it failed
        latest = registry.latest(run.node.folder)
        if latest is not None and registry.is_active(latest):
            run.action, run.handles = "wait", [executors.recorded_handle(latest)]
            run.reason, run.resume = registry.as_jobs([latest.job_id]), None
            run.seen_job = latest.job_id
            run.state = "pending"
            self._requeued.append(run)
            return True
        if run.action == "wait" and run.node.mode != "read-only":
            # (another call's job, followed here: computed here now; read-only never does)
            resume = run.resume
            self._requeue(run, None, f"job {', '.join(sorted(ids))} of another call was withdrawn")
            run.action = resume or "compute"
            return True
        # its own job, cancelled on purpose (clear_job from elsewhere): not submitted again
        # here, and no failure cached (the next call computes it)
        run.state = "failed"
        run.error = JobFailedError(
            f"{run.node.uid}: job {', '.join(sorted(ids))} was withdrawn before writing its "
            "result: its record was removed (clear_job, its submitter was interrupted, or "
            "it met a full disk or a folder it cannot write to, and could not say so). "
            "Nothing is cached: the next call computes it"
        )
        return True

    def _result_removed_since(self, run: NodeRun) -> bool:
        """The jobs of a task ended well, and its result is missing: removed since they
        wrote it (another process forcing it, a clear()). Not their failure: follow the
        job that computes it again, or compute it again (the run is requeued)."""
        node = run.node
        if node.folder is None or not run.handles:
            return False
        if not all(h.finished_ok() for h in run.handles):
            return False  # (inline handles, or a job that did not end well)
        follow_ups = self._follow_ups[node.key] = self._follow_ups.get(node.key, 0) + 1
        if follow_ups > MAX_FOLLOW_UPS:
            return False
        ids = {h.job_id for h in run.handles}
        if run.action == "force":
            node.force_state["done"] = True  # (its jobs computed it: forced once, as asked)
        latest = self._newer_active_job(run)
        self._requeue(run, latest, f"the result of job {', '.join(sorted(ids))} was removed since")
        return True

    @staticmethod
    def _newer_active_job(run: NodeRun) -> registry.JobRecord | None:
        """The latest job of a task, if it is another than the run's and still active."""
        ids = {h.job_id for h in run.handles}
        latest = registry.latest(run.node.folder)
        if latest is not None and latest.job_id not in ids and registry.is_active(latest):
            return latest
        return None

    def _requeue(self, run: NodeRun, job: registry.JobRecord | None, reason: str) -> None:
        """Requeue a task: waiting for ``job``, or computing it (then ``reason`` says why)."""
        run.state, run.resume = "pending", None
        if job is not None:
            run.action, run.handles = "wait", [executors.recorded_handle(job)]
            run.reason, run.seen_job = registry.as_jobs([job.job_id]), job.job_id
        else:
            run.action, run.handles, run.reason = "compute", [], reason
        self._requeued.append(run)

    def _retry_lost_job(self, run: NodeRun) -> bool:
        """A task in mode retry that followed a job it did not submit (another call's, or
        one still listed after a scancel), which ended without a result (cancelled,
        killed, timed out): the user asked for a retry, that job's end is not its
        answer. Computed again, once per run (its own job's end is the answer); another
        process retrying it too submits first, then the other follows that job (the
        submission is claimed, see submitting.py)."""
        if not run.retry_if_lost or run.action != "wait" or run.node.mode != "retry":
            return False
        if any(h.never_starts() for h in run.handles):  # (still queued: its own advice)
            return False
        run.retry_if_lost = False
        jobs = ", ".join(sorted(h.job_id for h in run.handles))
        logger.info(
            "%s: job %s, followed, ended without a result: computed again (mode retry)",
            run.node.uid,
            jobs,
        )
        run.seen_job = next((h.job_id for h in run.handles), run.seen_job)
        self._requeue(run, None, f"retry: job {jobs} ended without a result")
        run.action, run.holds_error = "retry", True
        return True

    def _computed_elsewhere_now(self, run: NodeRun) -> bool:
        """A task's jobs ended, its outcome is missing, and another worker computes it
        right now (e.g. a call in mode retry replaced the error this job wrote): not this
        job's failure to report, but that computation's outcome (the run is requeued: it
        waits for that worker's claim, then reads)."""
        node = run.node
        if node.folder is None or not run.handles:
            return False
        newer = self._newer_active_job(run)
        if newer is None and not being_computed(node):
            return False
        follow_ups = self._follow_ups[node.key] = self._follow_ups.get(node.key, 0) + 1
        if follow_ups > MAX_FOLLOW_UPS:
            return False
        self._requeue(run, newer, "being computed by another worker (its claim is live)")
        return True

    @staticmethod
    def _force_failed(run: NodeRun) -> BaseException | None:
        """The error of a forced task computed here (inline or in a pool) that raised
        before its computation was done, e.g. an OSError removing the old result: that old
        result, still in the cache, was read as the forced one, without a word."""
        if run.action != "force" or run.node.force_state.get("done"):
            return None
        for handle in run.handles:
            if isinstance(handle, executors.DoneHandle | executors.FutureHandle):
                error = handle.error()
                if error is not None:
                    return error
        return None

    @staticmethod
    def _lost(run: NodeRun, missing: list[str] | None = None) -> BaseException:
        what = (
            items_not_computed(missing, run.node.uid) if missing else f"{run.node.uid} not computed"
        )
        missing = missing or []
        descriptions: list[tuple[str, str]] = []
        slurm = [h.job_id for h in run.handles if getattr(h, "cluster", None) == "slurm"]
        known = registry.slurm_endings(slurm) if len(slurm) > 1 else {}  # (chunk jobs)
        for handle in run.handles:
            error = handle.error()
            if isinstance(handle, executors.DoneHandle | executors.FutureHandle):
                if type(error).__name__ == "BrokenProcessPool":
                    signal_name = executors.pool_signal(error)
                    how = (
                        "(killed, out of memory, a crash such as a segfault, or os._exit/"
                        "sys.exit in the method)"
                        if signal_name is None
                        else registry.killed_words(signal_name).partition(" died ")[2]
                    )
                    return JobFailedError(
                        f"{what}: a process of the pool died {how}: {error}", missing
                    )
                pool = getattr(handle, "cluster", None)
                if isinstance(error, KeyboardInterrupt | SystemExit) and pool in POOL_CLUSTERS:
                    # (the method's: the caller's own Ctrl-C stops the caller, not here; a
                    # sys.exit in a pool's thread must not end the caller's script silently)
                    return pool_interrupt(error, what, pool, missing)
                if error is not None:
                    _note_all_unstored(error, run)
                    return error
                continue
            if error is None and handle.finished_ok():
                continue  # (a chunk job that did its share: not the one to blame)
            descriptions.append((handle.job_id, handle.ended_how(known.get(handle.job_id))))
        endings = same_endings(descriptions)  # (many chunk jobs ending alike: said once)
        # (a description quoting its log's end spans lines: the next one starts its own)
        multiline = any("\n" in d for d in endings)
        detail = ("\n" if multiline else "; ").join(endings)
        if detail:  # (a map's missing items: not recorded as failed, unlike a task)
            detail = retry_hint(detail, items=bool(missing) and run.node.kind == "map")
        else:
            detail = "the worker ended without writing it"
        lost = JobFailedError(f"{what}: {detail}", missing)
        if missing and run.node.kind == "map":
            # a chunk job stops at the method's exception (cached for its item): that
            # exception, of its own type, as an inline call raises it
            raised = store.first_item_error(run.node, list(run.todo or []))
            first = str(raised).partition("\n")[0] if raised is not None else ""
            said = f"{type(raised).__name__}: {first}"
            # (only the error its job raised: not one item's error, in a job killed later)
            if raised is not None and any(said in _raised_said(h.error()) for h in run.handles):
                raised.add_note(f"exca: {lost}")
                return raised
        return lost

    def failures(self) -> dict[str, BaseException]:
        """The error of every node that failed (or could not run), by uid."""
        return {
            r.node.uid: r.error
            for k in self.graph.order
            if (r := self.runs[k]).state in ("failed", "skipped") and r.error is not None
        }

    def _raise_failures(self, root_cause: bool = False) -> None:
        failures = self.failures()
        if not failures:
            return
        if len(failures) == 1:
            raise next(iter(failures.values()))
        if root_cause:
            causes = [
                failures[r.node.uid]
                for k in self.graph.order
                if (r := self.runs[k]).node.uid in failures and not r.blocked
            ]
            if len(causes) == 1:
                raise causes[0]
        raise NodeFailures(failures)


def _raised_said(error: BaseException | None) -> str:
    """What a job's error says it raised: submitit's error quotes the job's traceback
    ("Type: message"); a debug job's is the exception itself (run in this process)."""
    if error is None:
        return ""
    return f"{error}\n{type(error).__name__}: {error}"


def _through(node: Node, uids: tp.Sequence[str]) -> str:
    """`` (its input scores['lr=0.1'])``: which of a node's inputs the failed upstream
    nodes feed (an aggregation named the failed evaluation by its uid only, which said
    nothing of the entry of its dict it was); "" when none is one (a sub-config's task)."""
    failed = set(uids)
    names: list[str] = []
    if node.kind == "map" and isinstance(node.items, Node) and node.items.uid in failed:
        names.append("items")
    for name, source in node.inputs:
        if isinstance(source, Node) and source.uid in failed:
            names.append(name)
        elif isinstance(source, Group):
            keys = source.keys or range(len(source.sources))
            names += [
                f"{name}[{key!r}]"
                for key, member in zip(keys, source.sources)
                if isinstance(member, Node) and member.uid in failed
            ]
    if not names:
        return ""
    if names == ["items"]:
        return " (its items)"
    return f" (its input{'s' if len(names) > 1 else ''} {first_named(names)})"


class _Loop:
    """The state of a waiting run's loop (see Scheduler._execute), shared with the thread
    that submits while inline work runs (never at the same time as the loop itself)."""

    def __init__(
        self,
        pending: dict[Key, NodeRun],
        running: dict[Key, NodeRun],
        candidates: set[Key],
        pools: executors.Pools,
        progress: Progress,
    ) -> None:
        self.pending, self.running, self.candidates = pending, running, candidates
        self.pools, self.progress = pools, progress


class _Meanwhile:
    """The thread that, while a waiting run's thread computes inline work, finishes the
    jobs that end and submits the job work they make ready (see Scheduler._run_inline).

    Only it touches the run's state until it is stopped (the busy thread only computes its
    inline units, whose nodes it leaves alone). It submits as the busy thread would: that
    thread is the caller of its jobs and the holder of the claims it checks (its own are
    none). Ctrl-C reaches the busy thread: it stops this one, which finishes the
    submission it is making (its jobs then belong to the run, which cancels them)."""

    def __init__(self, scheduler: Scheduler, loop: _Loop, busy: set[Key]) -> None:
        self.scheduler, self.loop, self.busy = scheduler, loop, busy
        self.caller = callers.current()  # (before the inline work takes its claims)
        self.later: list[tuple[NodeRun, Unit]] = []  # inline work it came across
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="exca-submit", daemon=True)

    @classmethod
    def wanted(cls, scheduler: Scheduler, busy: set[Key]) -> _Meanwhile | None:
        """The thread (not started) if, in a waiting run, something could end meanwhile (a
        job running, or work held back) and job work is pending (None: nothing it could
        do, e.g. a run of inline nodes only; each wave of an inline chain looked at every
        pending node: n^2 for a chain of n)."""
        loop = scheduler._loop
        if loop is None or not (scheduler._held_since or any(k not in busy for k in loop.running)):
            return None
        submits = not executors.submission_hides_environ()
        if not any(scheduler._sent_away(r, submits) for r in loop.pending.values()):
            return None
        return cls(scheduler, loop, busy)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        delay = POLL_START
        try:
            with callers.acting_for(self.caller):
                while not self._stop.wait(delay):
                    if self.scheduler._submit_meanwhile(self.loop, self.busy, self.later):
                        delay = POLL_START
                    else:
                        delay = min(delay * 1.5, POLL_MAX)
        except BaseException as error:  # (raised by the busy thread once its work ended)
            self.error = error
            if isinstance(error, Exception):  # (said now: the inline work may last hours)
                logger.warning(
                    "Submitting the jobs made ready while work runs here failed (%s: %s): "
                    "no more are submitted until that work ends, then the run raises it",
                    type(error).__name__,
                    error,
                )

    def stop(self, raising: bool = True) -> list[tuple[NodeRun, Unit]]:
        """Stop the thread (once its submission in progress ended); the inline work it
        came across, for the busy thread to run. ``raising``: its error, if any, is
        raised (as the run's loop raised it)."""
        self._stop.set()
        # (a Ctrl-C meanwhile is said, then raised once it ended; another one stops the
        # wait: the jobs it submits then run on, as those a run's cancel leaves, _cancel)
        with interrupts.deferred(escape=_still_submitting):
            try:
                self._thread.join()
            except RuntimeError:  # (not started: a Ctrl-C in its start; if it starts
                pass  # now, it sees the stop at once)
        if raising and self.error is not None:
            raise self.error
        return self.later


def _computed_by_jobs(running: dict[Key, NodeRun]) -> dict[str, set[str]]:
    """What the running nodes a run waits for compute (keys by folder): a task's result,
    a map's missing items."""
    out: dict[str, set[str]] = {}
    for run in running.values():
        node = run.node
        if node.folder is not None:
            keys = (run.todo or ()) if node.kind == "map" else (TASK_KEY,)
            out.setdefault(os.fspath(node.folder), set()).update(keys)
    return out


def _others_first(
    inline: list[tuple[NodeRun, Unit]],
) -> tp.Iterator[tuple[NodeRun, Unit]]:
    """Inline units in order, but a task another worker (process or thread) computes
    right now is put after the others, once: two drivers of one sweep of inline tasks
    took each task in the same order, the second waiting for every task the first
    computed, and neither taking the tasks the other had not started. (Looked at when
    its turn comes, only while other units are left: a single call reads no claims.)"""
    queue = collections.deque(inline)
    put_back: set[int] = set()
    while queue:
        run, unit = queue.popleft()
        if (
            queue
            and run.node.kind == "task"
            and id(unit) not in put_back
            and keys_being_computed(run.node, (TASK_KEY,), others_only=True)
        ):
            put_back.add(id(unit))
            queue.append((run, unit))
            continue
        yield run, unit


def _still_submitting() -> None:
    logger.warning(
        "Interrupted while a submission is in progress: cancelling once it ends (Ctrl-C "
        "again stops waiting: the jobs it submits then keep running)"
    )


def follow_own_job(run: NodeRun, off_slurm: bool) -> bool:
    """A node forced or retried (its own mode, not yet applied by this instance) while
    its earlier job is queued or running gets a new job now instead of following that
    one (whose result predates the force): on Slurm it starts after that job; off Slurm
    (``off_slurm``), or after a local job (Slurm cannot start after a process), it starts
    at once and waits for that computation's claim."""
    if not gets_own_job(run, off_slurm) or run.resume is None:
        return False
    if executors.on_slurm(run.node):  # (Slurm jobs only: a local job's id is a pid)
        run.after = [h.job_id for h in run.handles if getattr(h, "cluster", None) == "slurm"]
    run.after_running_job = run.resume == "force"
    run.action, run.resume, run.handles = run.resume, None, []
    run.reason += " (submitted now, to start after it)"
    return True


def _job_ids(runs: list[NodeRun]) -> list[str]:
    """The ids of real jobs (not pools, claims or inline work) behind these runs."""
    ids = {h.job_id for run in runs for h in run.handles}
    return sorted(i for i in ids if i and not i.startswith("#"))


# Slurm arrays whose elements a call of this process waited for -> when it was said:
# the calls of a loop reading an array's results one by one say it once, not per config
_ARRAYS_WAITED: dict[str, float] = {}
_ARRAY_WAIT_SAID_S = 600.0
_ARRAYS_WAITED_PRUNED_AT = 1000  # (arrays: those said long ago go then)


def _array_wait_said(run: NodeRun) -> bool:
    """Whether this wait is for elements of Slurm arrays a call waited for a moment ago
    (then noted for the next ones)."""
    arrays = {h.job_id.partition("_")[0] for h in run.handles if "_" in h.job_id}
    if not arrays or len(arrays) != len(run.handles):
        return False
    now = time.monotonic()
    said = all(
        now - _ARRAYS_WAITED.get(a, -_ARRAY_WAIT_SAID_S) < _ARRAY_WAIT_SAID_S for a in arrays
    )
    if len(_ARRAYS_WAITED) >= _ARRAYS_WAITED_PRUNED_AT:  # (an array per wait ever, else)
        for array, when in list(_ARRAYS_WAITED.items()):
            if now - when >= _ARRAY_WAIT_SAID_S:
                _ARRAYS_WAITED.pop(array, None)
    _ARRAYS_WAITED.update(dict.fromkeys(arrays, now))
    return said


def _waited_job_ending(run: NodeRun, handles: list[executors.Handle]) -> str | None:
    """How the last job a read-only node waited for ended without its outcome (died,
    cancelled...), as decisions.Graph._check_registry says it of a job found ended; None
    when none did (all ran to their end, their outcome removed since: only missing), or
    when the wait was for another worker's claim, or the job was withdrawn (its record
    removed: clear_job, its submitter interrupted; no failure, as a default call takes
    it), or its method raised KeyboardInterrupt or called sys.exit (see INTERRUPT_HINT)."""
    folder = run.node.folder
    if folder is None or any(isinstance(h, executors.ClaimHandle) for h in handles):
        return None
    ended = [h for h in handles if not h.finished_ok()]
    if not ended or not registry.recorded(folder, ended[-1].job_id):
        return None
    how = ended[-1].ended_how()
    return None if not_cached(how) else how


def _say_waited_job_ended(run: NodeRun, waited: list[executors.Handle]) -> None:
    """A read-only map still missing items once the jobs it waited for ended: its error
    names the job that left them, as a read-only call finding that job ended does."""
    how = _waited_job_ending(run, waited)
    if how is not None:
        say_items_left(run, how)


def _log_waits(runs: list[NodeRun], waiting: bool, shown: int = 3) -> None:
    """Say what others compute: what this call waits for (else a call following another
    process's jobs stays silent until they end), or does not submit again (``waiting``
    False: a submission that returns, e.g. a job array)."""
    then = "waiting for it" if waiting else "not submitted again"
    for run in runs[:shown]:
        if run.removed_by is not None:  # (nothing computes it: not "computed elsewhere")
            logger.info("%s is not computed, %s", run.node.uid, run.reason)
            continue
        said = f"{then}, {RETRIED_IF_LOST}" if waiting and run.retry_if_lost else then
        repeated = waiting and len(runs) == 1 and _array_wait_said(run)
        logger.log(
            logging.DEBUG if repeated else logging.INFO,
            "%s is computed elsewhere (%s): %s",
            run.node.uid,
            run.reason,
            said,
        )
    if len(runs) > shown:
        then = "waiting for them" if waiting else "not submitted again"
        logger.info("... and %d more node(s) computed elsewhere: %s", len(runs) - shown, then)


def _stop_local_jobs(work: list[NodeRun], pools: executors.Pools) -> None:
    """A submission interrupted (Ctrl-C): the local jobs it started are stopped (the
    interrupt is held back while jobs are submitted and recorded, then raised: nothing
    cancelled them, they all ran on); Slurm jobs queued stay (the same submission
    follows them)."""
    stopped = [
        run
        for run in work
        if run.action != "wait" and any(h.cluster == "local" for h in run.handles)
    ]
    _cancel(stopped, pools, only_local=True)


def _cancel(runs: list[NodeRun], pools: executors.Pools, only_local: bool = False) -> None:
    """Cancel the jobs of these runs (forgetting their records), and the pools' work."""
    with interrupts.deferred(escape=_still_cancelling):
        for run in runs:
            for handle in run.handles:
                if not only_local or handle.cluster == "local":
                    handle.cancel()
                    if handle.cluster != "debug":  # (in this process: its call notes it)
                        _note_cancelled(run.node, handle.job_id)
                    registry.forget(run.node.folder, handle.job_id)
        pools.shutdown(cancel=True)
        _release_dead_claims(runs)


def _note_all_unstored(error: BaseException, run: NodeRun) -> None:
    """The storage error of one unit of a map (a full disk) names the items it could not
    store; the others' errors, not raised, were not said: the call's total is added."""
    here = (executors.DoneHandle, executors.FutureHandle)  # (errors already in hand)
    counts = [getattr(h.error(), UNSTORED, 0) for h in run.handles if isinstance(h, here)]
    total = sum(counts)
    if getattr(error, UNSTORED, 0) and total > getattr(error, UNSTORED):
        error.add_note(
            f"in all, {total} item(s) computed by this call could not be stored in "
            f"{run.node.folder}, none of them is cached"
        )


def _retry_not_done(run: NodeRun, todo: list[str]) -> BaseException | None:
    """The error of a map's unit run here (inline, in a pool) that failed before it
    computed its cached errors again (e.g. a full disk as it claimed them): they are
    still there, so nothing is missing, and the call raised the old cached error as if
    it had been retried, saying nothing of this one."""
    if not run.node.cache.error_keys(todo):
        return None
    for handle in run.handles:
        if isinstance(handle, executors.DoneHandle | executors.FutureHandle):
            error = handle.error()
            if isinstance(error, Exception):
                return error
    return None


def _say_jobs_left_running(error: BaseException, runs: list[NodeRun]) -> None:
    """A wait stopped by another error than Ctrl-C (raised by a signal handler of the
    caller: an alarm's TimeoutError, a SIGTERM's sys.exit; or met by exca): the jobs it
    waited for, its own included, run on (their results are cached, the next call
    follows them), as they did before without a word; said now, on the error (what an
    except clause sees) and in the log (a SystemExit's notes are never shown). Only a
    Ctrl-C cancels the jobs a call submitted."""
    ids = sorted({h.job_id for run in runs for h in run.handles if _may_run(h)})
    if not ids:
        return
    said = (
        f"job(s) {', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''} keep running: "
        f"this error stops no job (only a Ctrl-C cancels those a call submitted); their "
        f"results are cached, calling again waits for them, {_how_to_stop(runs)} stops them"
    )
    logger.warning("Stopped waiting (%s): %s", type(error).__name__, said)
    if isinstance(error, Exception):
        error.add_note(f"exca: {said}")


def _may_run(handle: executors.Handle) -> bool:
    """Whether a handle is a job that may still run (a local one is looked at: its
    process; a Slurm one is not asked, which is a command)."""
    if not handle.job_id or handle.cluster not in ("local", "slurm"):
        return False
    if handle.cluster == "slurm":
        return True
    try:
        return not handle.done()
    except Exception:  # (the error being raised says more)
        return True


def _stop_pools(runs: list[NodeRun], pools: executors.Pools) -> None:
    """A call failing in this process (not a Ctrl-C: its jobs elsewhere stay, a new call
    follows them): the work of its pools stops before the error is raised (see
    Pools.shutdown), and the claims of the pool processes terminated are dropped (a call
    at once waited for them)."""
    from ..storage.claims import Claims

    with interrupts.deferred(escape=_still_cancelling):
        pools.shutdown(cancel=True)
        pooled = {
            r.node.folder
            for r in runs
            if r.node.folder is not None and any(h.cluster in POOL_CLUSTERS for h in r.handles)
        }
        for folder in pooled:
            with contextlib.suppress(OSError):  # (the error raised says more)
                Claims(folder).prune_dead()


def _note_cancelled(node: Node, job_id: str) -> None:
    """The record of a job cancelled by Ctrl-C goes (the next call submits it again): a
    note says what happened to it instead (else ``exca list`` showed a bare "empty")."""
    folder = node.folder
    if folder is None or not job_id or job_id.startswith("#"):
        return
    keys: list[str] | None = [TASK_KEY]
    if node.kind == "map":
        record = next((r for r in registry.read_all(folder) if r.job_id == job_id), None)
        keys = None if record is None else registry.items_of(folder, record)
    if keys:
        how = f"Ctrl-C, which cancelled its job {job_id}"
        registry.note_interrupted(folder, keys, how, None, node.cache.permissions)


def _still_cancelling() -> None:
    logger.warning(
        "Still cancelling the jobs of this call: Ctrl-C again stops waiting (the jobs not "
        "cancelled yet keep running)"
    )


# job id -> the jobs of the job_array() that submitted it in this process: a call waiting
# for one of them and interrupted named that one only, not the others, running on too
_ARRAY_JOBS: dict[str, list[executors.Handle]] = {}
_ARRAY_JOBS_BOUND = 100_000
# (let go before the interpreter tears its modules down: a submitit LocalJob deleted then
# printed "Exception ignored in: <function LocalJob.__del__ ...>" at each exit)
atexit.register(_ARRAY_JOBS.clear)


def note_array_jobs(handles: list[executors.Handle]) -> None:
    """Remember the jobs one job_array() submitted (see ``_array_siblings``)."""
    jobs = [h for h in handles if h.job_id and not h.job_id.startswith("#")]
    if len(jobs) < 2:
        return
    if len(_ARRAY_JOBS) + len(jobs) > _ARRAY_JOBS_BOUND:
        _ARRAY_JOBS.clear()  # (a bounded memo)
    _ARRAY_JOBS.update(dict.fromkeys((h.job_id for h in jobs), jobs))


def _array_siblings(ids: list[str]) -> list[str]:
    """The ids of the other jobs not ended yet of the arrays these jobs belong to."""
    siblings: set[str] = set()
    for handle in {id(h): h for i in ids for h in _ARRAY_JOBS.get(i, ())}.values():
        if handle.job_id in ids:
            continue
        with contextlib.suppress(Exception):  # (a look: an ended one is left out)
            if handle.cluster == "local" and handle.done():
                continue
        siblings.add(handle.job_id)
    return sorted(siblings)


def _log_interruption(cancelled: list[NodeRun], followed: list[NodeRun]) -> None:
    """Say which jobs Ctrl-C cancels (those this call submitted) and which keep running
    (submitted earlier, by another call: a new call follows them again; so do the other
    jobs of their job_array(), which nothing cancels)."""
    if ids := _job_ids(cancelled):
        logger.warning("Interrupted: cancelling the job(s) this call submitted: %s", ", ".join(ids))
    pools = sorted({h.job_id.strip("#") for r in cancelled for h in r.handles if h.job_id})
    if pools := [p for p in pools if p in POOL_CLUSTERS]:
        logger.warning("Interrupted: cancelling this call's work in its %s", " and ".join(pools))
    if ids := _job_ids(followed):
        logger.warning(
            "Interrupted: job(s) %s keep running (not submitted by this call; calling "
            "again waits for them, %s stops them)",
            ", ".join(ids),
            _how_to_stop(followed),
        )
        if siblings := _array_siblings(ids):
            logger.warning(
                "Interrupted: the %d other job(s) of the same job_array(), not ended yet, "
                "keep running too: %s%s",
                len(siblings),
                ", ".join(siblings[:10]),
                " ..." if len(siblings) > 10 else "",  # (an array of thousands)
            )
        else:  # (another process submitted them: what its records and the ids tell)
            _log_foreign_siblings(followed, ids)


def _log_foreign_siblings(followed: list[NodeRun], ids: list[str]) -> None:
    """Ctrl-C while following jobs another process submitted (a job_array() of it, say):
    this process knows none of their other jobs, and named the followed ones only. A
    Slurm array element (``123_4``) names its array, which one scancel stops; the local
    jobs submitted along with them (recorded under the same run in the configs of the
    same step) are named, those not ended yet."""
    arrays = sorted({i.partition("_")[0] for i in ids if "_" in i})
    if arrays:
        logger.warning(
            "Interrupted: job(s) %s are elements of Slurm job array(s) %s, submitted by "
            "another call: the array's other jobs keep running too (scancel %s stops all "
            "of them)",
            ", ".join(i for i in ids if "_" in i),
            ", ".join(arrays),
            " ".join(arrays),
        )
    siblings = _recorded_siblings(followed, set(ids))
    if siblings:
        logger.warning(
            "Interrupted: the %d other local job(s) submitted along with them by another "
            "call (a job_array()?), not ended yet, keep running too: %s%s",
            len(siblings),
            ", ".join(siblings[:10]),
            " ..." if len(siblings) > 10 else "",
        )


def _recorded_siblings(followed: list[NodeRun], ids: set[str]) -> list[str]:
    """The local jobs not ended yet recorded under the run of a followed local job (by
    the same process) in the config folders of its step (a scan of their job records:
    at an interruption only)."""
    found: set[str] = set()
    steps: set[tuple[str, str, int, str]] = set()
    for run in followed:
        if run.node.folder is None:
            continue
        for record in registry.read_all(run.node.folder):
            if record.job_id in ids and record.cluster == "local" and record.run:
                step = os.path.dirname(os.path.abspath(run.node.folder))
                steps.add((step, record.run, record.pid, record.host))
    for step, run_id, pid, host in steps:
        with contextlib.suppress(OSError):
            for entry in os.scandir(step):
                if not entry.is_dir():
                    continue
                for record in registry.read_all(Path(entry.path)):
                    same = (record.run, record.pid, record.host) == (run_id, pid, host)
                    if same and record.job_id not in ids and registry.is_active(record):
                        found.add(record.job_id)
    return sorted(found)


def _how_to_stop(runs: list[NodeRun]) -> str:
    """What stops the jobs of these runs, for their clusters (scancel knows no local job:
    its id is the pid of its controller process)."""
    clusters = {h.cluster for run in runs for h in run.handles}
    # (a map has no clear_job(): its jobs are stopped from the shell only)
    ways = ["clear_job()"] if any(run.node.kind == "task" for run in runs) else []
    if "slurm" in clusters:
        ways.append("scancel")
    if "local" in clusters:
        ways.append("kill -9 <job id> (a local job's id is its process id)")
    return " or ".join(ways)


def _release_dead_claims(runs: list[NodeRun], timeout: float = 3.0) -> None:
    """After cancelling: wait a little for the jobs to end, then drop the claims their
    killed workers could not release (a later run would discard them anyway)."""
    from ..storage.claims import Claims

    folders = [r.node.folder for r in runs if r.node.folder is not None]
    deadline = time.monotonic() + timeout
    here = (process.hostname(), os.getpid())
    while True:
        remaining = 0
        for folder in folders:
            claims = Claims(folder)
            claims.prune_dead()
            # (this process's own claims are given back as the interrupt unwinds its calls:
            # waiting for them only delayed every Ctrl-C by the whole timeout)
            remaining += sum(c.owner[:2] != here for c in claims._all_files())
        if not remaining or time.monotonic() > deadline:
            return
        time.sleep(0.1)  # killed workers may take a moment to exit


MAX_FOLLOW_UPS = 3  # resubmissions of one node a run follows before calling it failed


def _cache_error(node: Node, error: BaseException) -> None:
    """Remember that the job of a task failed (status 'failed'; mode retry recomputes)."""
    from ..storage.cachederror import CachedError

    try:
        with node.cache.write():
            if TASK_KEY not in node.cache:
                node.cache[TASK_KEY] = CachedError.from_exception(error)
    except (OSError, ValueError) as e:
        logger.warning("Could not cache the failure of %s: %s", node.uid, e)


def run(
    targets: tp.Sequence[Node],
    item_uids: dict[Key, list[str]] | None = None,
    progress: bool | None = None,
) -> Scheduler:
    """Compute what the targets need (waiting for it); return the scheduler (decisions)."""
    scheduler = Scheduler(targets, item_uids=item_uids, progress=progress)
    scheduler.run()
    return scheduler


def _note_replaced(members: list[tuple[NodeRun, Unit]]) -> None:
    """Where the old outputs of the items forcing units recompute are (see NodeRun)."""
    for run, unit in members:
        if unit.action == "force" and unit.uids:
            run.replaced.update(store.output_places(run.node.cache, unit.uids))


def _code(node: Node) -> tp.Any:
    """The workdir snapshot an array of this node's execution runs from."""
    return getattr(node.execution.workdir, "folder", None)
