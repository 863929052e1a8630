"""The graph layer: nodes, the scheduler that runs them, executors and the job registry.

Decorated calls build nodes; the scheduler is the only code that runs them.
"""

from .node import Execution, Node, Value

__all__ = ["Execution", "Node", "Value"]
