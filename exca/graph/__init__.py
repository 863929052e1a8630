"""The graph layer: nodes, plans, the scheduler that runs them, executors and the job
registry. Decorated calls build nodes; the scheduler is the only code that runs them.

``exca.graph.plan(*targets)`` (dry run), ``exca.graph.run(*targets, wait=True)``,
``exca.graph.graph(*targets)`` (networkx DAG). networkx and submitit load lazily.
"""

from __future__ import annotations

import typing as tp

from .node import Execution, Node, Value

__all__ = ["Execution", "Node", "Plan", "Value", "graph", "plan", "run"]


def __getattr__(name: str) -> tp.Any:
    if name in ("plan", "run", "graph", "result", "status", "job", "clear"):
        from . import api

        return getattr(api, name)
    if name == "Plan":
        from .planning import Plan

        return Plan
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
