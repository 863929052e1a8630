"""Operating a cache: what it holds (inspect), why things will run (explain), what can
go (clean), and logs. All of it is also a command line: ``python -m exca --help``."""

from . import clean
from .explain import Explanation, explain
from .inspect import NodeInfo, inspect
from .logs import JobLogs, logs

__all__ = ["Explanation", "JobLogs", "NodeInfo", "clean", "explain", "inspect", "logs"]
