"""Errors raised when cached computations failed, with what users need to act on them."""

from __future__ import annotations

import typing as tp

from ..storage.formats import CachedError, ComputationError


class JobFailedError(RuntimeError):
    """A job ended without writing its result: cancelled, timed out, out of memory, killed."""


class NodeFailures(RuntimeError):
    """Several nodes of one run failed; ``failures`` maps each node uid to its error."""

    def __init__(self, failures: dict[str, BaseException]) -> None:
        self.failures = failures
        lines = [f"{len(failures)} node(s) failed:"]
        for uid, error in failures.items():
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            lines.append(f"  - {uid}: {type(error).__name__}: {first}")
        super().__init__("\n".join(lines))


def raise_from(record: CachedError, where: str) -> tp.NoReturn:
    raise record.to_exception(where)


__all__ = ["ComputationError", "JobFailedError", "NodeFailures", "raise_from"]
