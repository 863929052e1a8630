"""Entry points used by decorated calls: a cache hit returns at once (no claim, no
networkx, no submitit); anything else goes through the scheduler."""

from __future__ import annotations

import typing as tp

from . import registry, store
from .jobs import Job
from .node import Node


def task_result(node: Node) -> tp.Any:
    """The result of a task node: from the cache when it can be reused, else computed."""
    mode = node.mode
    if not any(n.pending_force for n in node.closure):
        node.cache.refresh()  # incremental: sees a result another process cleared or wrote
        state = store.task_state(node)
        if state == "done" or (state == "error" and mode != "retry" and not _upstream_failed(node)):
            return store.task_result(node)
    from .scheduler import Scheduler

    Scheduler([node]).run()
    return store.task_result(node)


def _upstream_failed(node: Node) -> bool:
    from .decisions import upstream_failed

    return upstream_failed(node)


def task_job(node: Node) -> Job:
    """The job of a task node, submitting it when there is none (does not wait)."""
    from .executors import recorded_handle
    from .scheduler import Scheduler

    node.cache.refresh()
    state = store.task_state(node)
    record = registry.latest(node.folder)
    reusable = state == "done" or (state == "error" and node.mode != "retry")
    if node.mode != "force" and (reusable or (record is not None and registry.is_active(record))):
        return Job(node, recorded_handle(record) if record is not None else None)
    if node.execution.cluster is None:
        try:
            Scheduler([node]).run()
        except Exception:  # cached with the result: job.result() raises it
            pass
        return Job(node, None)
    handles = Scheduler([node]).submit().get(node.key) or []
    return Job(node, handles[0] if handles else None)


def map_items(node: Node, uids: list[str]) -> None:
    """Make sure every item of a map node is in its cache (computing the missing ones)."""
    if node.mode != "retry" and not any(n.pending_force for n in node.closure):
        if not node.cache.missing(uids):
            return
    from .scheduler import Scheduler

    Scheduler([node], item_uids={node.key: uids}).run()


def run_nodes(targets: tp.Sequence[Node]) -> None:
    """Compute whatever the targets need (waiting for it)."""
    from .scheduler import Scheduler

    Scheduler(targets).run()
