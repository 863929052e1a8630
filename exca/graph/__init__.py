"""The graph layer: nodes, plans, the scheduler that runs them, executors and the job
registry. Decorated calls build nodes; the scheduler is the only code that runs them.

``exca.graph.plan(*targets)`` (dry run), ``exca.graph.run(*targets, wait=True)``,
``exca.graph.graph(*targets)`` (networkx DAG). networkx and submitit load lazily.
"""

from __future__ import annotations

import typing as tp

from .node import Execution, Node, Value

if tp.TYPE_CHECKING:  # (loaded lazily by __getattr__ below; seen by type checkers)
    from .api import clear as clear
    from .api import graph, plan, run
    from .api import job as job
    from .api import result as result
    from .api import status as status
    from .planning import Plan

__all__ = ["Execution", "Node", "Plan", "Value", "graph", "plan", "run"]


def __getattr__(name: str) -> tp.Any:
    if name in ("plan", "run", "graph", "result", "status", "job", "clear"):
        from . import api

        return getattr(api, name)
    if name == "Plan":
        from .planning import Plan

        return Plan
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
