"""Errors stored in a cache (a failed task or map item): type, message, traceback, and
the exception itself when it pickles, re-raised with its original type."""

from __future__ import annotations

import base64
import traceback
import typing as tp

from .dumping import DumpContext


def record_line(record: dict[str, tp.Any], width: int = 200) -> str:
    """``ValueError: its message`` from a cached error's index record, on one line."""
    kind = str(record.get("t") or "error").rpartition(".")[2]
    message = " ".join(str(record.get("m") or "").split())
    line = f"{kind}: {message}" if message else kind
    return shorten(line, width)


ADVICE_KEPT = 100  # the longest advice (a closing "(...)") kept whole when a line is cut


def shorten(line: str, width: int) -> str:
    """A line cut to ``width`` characters, keeping its closing parenthesis whole when it
    is short (the advice a message ends with: "(use mode='retry' to recompute)"), the cut
    in its middle marked ``...``."""
    if len(line) <= width:
        return line
    advice = ""
    if line.endswith(")"):
        start = line.rfind(" (")
        if start > 0 and len(line) - start <= min(ADVICE_KEPT, width // 2):
            advice = line[start:]
    return line[: width - 4 - len(advice)].rstrip() + " ..." + advice


class ComputationError(RuntimeError):
    """A cached error whose original exception type could not be restored."""


class CachedError:
    """An exception stored in a cache: type, message, traceback, and the exception itself
    when it pickles (so it can be re-raised with its original type)."""

    # (what its index record holds: see dumping.record_problem)
    _record_shapes: tp.ClassVar = (("t", "m", "tb"),)
    _record_fields: tp.ClassVar = {"t": str, "m": str, "tb": str, "p": str}

    def __init__(
        self,
        type_name: str,
        message: str,
        traceback_text: str,
        exception: BaseException | None = None,
    ) -> None:
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text
        self.exception = exception

    @classmethod
    def from_exception(cls, exc: BaseException) -> CachedError:
        kind = type(exc)
        text = "".join(traceback.format_exception(kind, exc, exc.__traceback__))
        return cls(f"{kind.__module__}.{kind.__qualname__}", str(exc), text, _detached(exc))

    def __repr__(self) -> str:
        return f"CachedError({self.type_name}: {self.message})"

    def to_exception(self, where: str) -> BaseException:
        """The exception to raise for this cached error: the original type when it could be
        restored, with where it happened and its original traceback attached as a note."""
        import copy

        note = (
            f"exca: cached error of {where} (mode='retry' computes it again); original "
            f"traceback:\n{self.traceback_text}"
        )
        if self.exception is not None:
            try:
                exc = copy.copy(self.exception)
            except Exception:
                exc = self.exception
            exc.__notes__ = [note]
            return exc
        error = ComputationError(f"{self.type_name}: {self.message}")
        error.add_note(note)
        return error

    def __dump_info__(self, ctx: DumpContext) -> dict[str, tp.Any]:
        info: dict[str, tp.Any] = {
            "t": self.type_name,
            "m": self.message[:20_000],
            "tb": self.traceback_text[-50_000:],
        }
        if self.exception is not None:
            from . import exceptions

            data = exceptions.dumps(self.exception)
            if data is not None:
                info["p"] = base64.b64encode(data).decode("ascii")
        return info

    @classmethod
    def __load_from_info__(
        cls, ctx: DumpContext, t: str, m: str, tb: str, p: str | None = None
    ) -> CachedError:
        exception = None
        if p is not None:
            from . import exceptions

            exception = exceptions.loads(base64.b64decode(p))
        return cls(t, m, tb, exception)


DumpContext.register(CachedError, name="Error")
DumpContext.DEFAULTS[CachedError] = "Error"


def _detached(exc: BaseException) -> BaseException:
    """A copy of an exception without its traceback (kept as text): held in RAM by a
    cache, the traceback's frames kept their locals alive (a map's remaining items, per
    failed item: a GB for 1000 failures among 200k items). The raised one keeps its own."""
    import copy

    try:
        detached = copy.copy(exc)
    except Exception:
        return exc
    if type(detached) is not type(exc) or detached is exc:
        return exc
    detached.__traceback__ = None
    return detached
