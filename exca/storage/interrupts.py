"""Holding Ctrl-C back for the few system calls that take or give back a claim.

A ``KeyboardInterrupt`` raised between creating a claim (or the claims folder's lock) and
the code that removes it leaves the file behind; its owner, a process that lives on (a
notebook kernel, code that catches the interrupt), keeps every other worker of that folder
waiting until it exits. Within ``deferred()``, a Ctrl-C of the main thread is recorded and
raised when the block ends, after the cleanups the block registered (``on_interrupt``):
the claim is then given back before the interrupt goes up.

Only the interpreter's default SIGINT handler is replaced (a handler of the user's own, or
an ignored SIGINT, is left alone), only in the main thread (the only one Python interrupts),
and only for the outermost block of nested ones.
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
import types
import typing as tp

T = tp.TypeVar("T")
# signal's C functions: its wrappers turn each handler into an enum (~2 µs a call, 4-6
# calls a claim); the handlers they return are the same objects (SIG_DFL/SIG_IGN as ints)
_C_SIGNAL = importlib.import_module("_signal")
_getsignal: tp.Callable[[int], tp.Any] = _C_SIGNAL.getsignal
_setsignal: tp.Callable[[int, tp.Any], tp.Any] = _C_SIGNAL.signal
_SIGINT = int(signal.SIGINT)
_DEFAULT = signal.default_int_handler


class deferred:  # (lower case: used like a function, ``with deferred() as window:``)
    """``with deferred() as window: ...; window.on_interrupt(release)``.

    ``deferred(hold=False)``: nothing is held back until ``hold()`` (e.g. once a lock
    waited for is taken: Ctrl-C still stops the wait)."""

    __slots__ = (
        "_active",
        "_cleaned",
        "_cleanups",
        "_escape",
        "_hold_on_enter",
        "_pending",
        "_previous",
    )

    def __init__(self, hold: bool = True, escape: tp.Callable[[], object] | None = None) -> None:
        """``escape``: a second Ctrl-C held back is not held (raised at once), and the
        first calls ``escape`` (e.g. to say that one more stops the wait)."""
        self._hold_on_enter = hold
        self._escape = escape
        self._active = False
        self._pending = False
        self._cleaned = False
        self._cleanups: list[tp.Callable[[], object]] = []
        self._previous: tp.Any = None

    def __enter__(self) -> deferred:
        if self._hold_on_enter:
            self.hold()
        return self

    def hold(self) -> None:
        """Hold Ctrl-C back from now on (in the main thread, under the default handler)."""
        if (
            not self._active
            and threading.current_thread() is threading.main_thread()  # (a forked child's too)
            and _getsignal(_SIGINT) is _DEFAULT
        ):
            self._previous = _setsignal(_SIGINT, self._record)
            self._active = True

    def _record(self, signum: int, frame: types.FrameType | None) -> None:
        if self._escape is not None:
            if self._pending:
                self._pending = False
                raise KeyboardInterrupt  # (the block's work is left as it is)
            self._escape()
        self._pending = True

    def on_interrupt(self, cleanup: tp.Callable[[], object]) -> None:
        """Run ``cleanup`` if a Ctrl-C came during the block (before raising it), or if the
        block raised after registering it."""
        self._cleanups.append(cleanup)

    def allow(self) -> None:
        """Let Ctrl-C in again before the block ends (raising one that came meanwhile):
        once what the block took is guarded (e.g. by a try/finally), or nothing was taken."""
        if self._active:
            self._restore()
            if self._pending:
                self._pending = False
                raise KeyboardInterrupt

    def guard(self, taken: tp.Any, body: tp.Callable[[], T]) -> T:
        """Run ``body`` with Ctrl-C allowed, then give back ``taken`` (``taken.release()``)
        with it held back again. (A ``with taken:`` is not enough: the interpreter runs
        the handler of a pending signal on entering ``__exit__``, before its release.)"""
        if not self._active:
            with taken:
                return body()
        try:
            self.allow()
            return body()
        finally:
            try:
                self.hold()  # (a Ctrl-C raised on entering it is pending no more)
            finally:
                taken.release()

    def _restore(self) -> None:
        # (a signal that arrived in the block runs its Python handler at the interpreter's
        # next check: let it happen here, while ours is installed, not after the block;
        # recorded, never raised from here: the handler must be given back)
        self._escape = None
        _checkpoint()
        _setsignal(_SIGINT, self._previous)
        self._active = False

    def _clean(self) -> None:
        if not self._cleaned:
            self._cleaned = True
            for cleanup in reversed(self._cleanups):
                cleanup()

    def __exit__(self, kind: tp.Any, error: tp.Any, trace: tp.Any) -> None:
        if not self._active:
            return
        self._escape = None  # (the block is over: a late Ctrl-C is raised below, once)
        _checkpoint()
        if self._pending or kind is not None:  # (what the block took is not handed on)
            self._clean()  # (still held back: a second Ctrl-C waits for it)
        self._restore()
        if self._pending and kind is None:
            self._clean()  # (a Ctrl-C between the check above and the restore)
            raise KeyboardInterrupt


def _default_handler_in_child() -> None:
    """A process forked while a block held Ctrl-C back (by another thread) must not keep
    the recording handler: nothing would ever raise what it records."""
    handler = signal.getsignal(signal.SIGINT)
    if isinstance(getattr(handler, "__self__", None), deferred):
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        except ValueError:  # (not the main thread of the child: nothing to do there)
            pass


os.register_at_fork(after_in_child=_default_handler_in_child)


def _checkpoint() -> None:
    """A Python call: the interpreter runs the handlers of pending signals on entering it."""
