"""The readings of an input's uid as an ``inputs.yaml`` records it (for ``exca rename``).

An input's uid is a node's uid (``<step>/<config>[/inputs-<digest>][/items-<digest>]``), a
value's (``<text>-<digest>``: never a ``/``) or a group of them: ``[a,b]`` for a list,
``{key=a,key=b}`` for a dict, whose keys are written as given (any text: ``/``, ``,``,
``=``, ``}`` too). So a group's uid may read several ways: the key ``"s/c,k"`` of
``{other=s/c,s/c,k=s/c}`` could be a key ``"other=s/c,s/c,k"``, and its first ``s/c`` a
node or part of a key. ``Readings`` lists what each reading is made of, and counts the
readings that use each node's uid (a span of the text), so a migration renames only the
references every reading has.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import re
import typing as tp

Span = tuple[int, int]  # (start, end) of a node's uid in the text
_STEP = re.compile(r"[A-Za-z_][\w.<>]*,[^/]+")  # <module>.<Class>.<method>,<version>
_HEX8 = re.compile(r"[0-9a-f]{8}")
_END = -1  # (the state after the last source of the text)
Move = tuple[Span | None, int]  # (a node's span or None for a value, the next state)


class Readings:
    """Every way ``text`` (an input's uid) parses into the uids of nodes and values.
    ``configs(step)``: the config folder names a step has (None: a step this cache does
    not have, e.g. of another root; then any name without ``/``). ``spans``: the node
    uids some reading has."""

    def __init__(self, text: str, configs: tp.Callable[[str], tp.Collection[str] | None]) -> None:
        self.text = text
        self._configs = configs
        self._commas = [i for i, c in enumerate(text) if c == ","]
        self._ends: dict[int, list[tuple[int, bool]]] = {}
        n = len(text)
        self._keyed = n >= 2 and text[0] + text[-1] == "{}"
        if n >= 2 and text[0] + text[-1] in ("[]", "{}"):
            self._close, self._first = n - 1, 1
        else:  # (one node; a value has no "/": nothing to read)
            self._close, self._first = n, 0
        self.spans = sorted(span for span, used in self.count()[1].items() if used)

    def count(self, required: tp.Collection[Span] = ()) -> tuple[int, dict[Span, int]]:
        """How many readings there are, and how many use each node's uid (a span),
        counting only the readings that have each ``required`` span as a node's uid (a
        reading covers the text: one that has not has a key or another source over it)."""
        spans = sorted(required)
        if any(a[1] > b[0] for a, b in itertools.pairwise(spans)):
            return 0, {}  # (overlapping: no reading has both)
        if self._keyed:
            return self._count_dict(spans)
        if self._close == len(self.text):  # (one node: the whole text)
            whole = (0, len(self.text))
            one = any(node and end == whole[1] for end, node in self._sources(0))
            return (1, {whole: 1}) if one and spans in ([], [whole]) else (0, {})
        return self._count_list(spans)

    def _count_list(self, required: list[Span]) -> tuple[int, dict[Span, int]]:
        """``count`` for ``[a,b]``: each source starts where the one before ended."""
        moves: dict[int, list[Move]] = {}  # (from each state, in order)
        todo, seen = [self._first], {self._first}
        while todo:
            state = heapq.heappop(todo)
            moves[state] = []
            for end, node in self._sources(state):
                span = (state, end)
                if required and self._over(span, required) and span not in required:
                    continue
                nxt = _END if end == self._close else end + 1
                moves[state].append((span if node else None, nxt))
                if nxt != _END and nxt not in seen:
                    seen.add(nxt)
                    heapq.heappush(todo, nxt)
        after: dict[int, int] = {_END: 1}  # readings of the rest of the text from a state
        for state in sorted(moves, reverse=True):
            after[state] = sum(after.get(nxt, 0) for _, nxt in moves[state])
        before: dict[int, int] = {self._first: 1}
        uses: dict[Span, int] = {}
        for state in sorted(moves):
            ways = before.get(state, 0)
            for used, nxt in moves[state]:
                if nxt != _END:
                    before[nxt] = before.get(nxt, 0) + ways
                if used is not None:
                    uses[used] = uses.get(used, 0) + ways * after.get(nxt, 0)
        return after.get(self._first, 0), uses

    def _count_dict(self, required: list[Span]) -> tuple[int, dict[Span, int]]:
        """``count`` for ``{key=a,key=b}``: a key runs from a state (the start, or after
        a ``,``) to any ``=`` (a key may hold ``=`` and ``,``), its source from there. The
        moves of a state are those of any ``=`` after it: summed along the text (linear,
        not one move per state and ``=``). A key may not run over a required span: the
        sums restart at each one."""
        text, close = self.text, self._close
        starts = [a for a, _ in required]

        def gap(at: int) -> int | None:  # (between which required spans; None: inside one)
            k = bisect.bisect_right(starts, at)
            return None if k and at < required[k - 1][1] else k

        def sources(q: int) -> list[tuple[Span | None, int]]:  # (after the "=" at q)
            k = gap(q)
            if k is None:
                return []
            limit = starts[k] if k < len(starts) else close
            out: list[tuple[Span | None, int]] = []
            for end, node in self._sources(q + 1):
                span = (q + 1, end)
                if end > limit and span not in required:
                    continue  # (over a required span)
                out.append((span if node else None, _END if end == close else end + 1))
            return out

        states = [self._first, *(c + 1 for c in self._commas if c + 1 < close)]
        # (position, 0: a state, 1: an "=") in text order; a state may be an "=" (empty key)
        points = sorted(
            [(p, 0) for p in states]
            + [(q, 1) for q, c in enumerate(text) if c == "=" and q < close]
        )
        after: dict[int, int] = {_END: 1}
        ahead, in_gap = 0, -1  # (sum of the "=" moves after, in this gap)
        for at, kind in reversed(points):
            k = gap(at)
            if k != in_gap:
                ahead, in_gap = 0, k if k is not None else -2
            if k is None:
                continue
            if kind:
                ahead += sum(after.get(nxt, 0) for _, nxt in sources(at))
            else:
                after[at] = ahead
        before: dict[int, int] = {self._first: 1}
        uses: dict[Span, int] = {}
        behind, in_gap = 0, -1  # (sum of the states before, in this gap)
        for at, kind in points:
            k = gap(at)
            if k != in_gap:
                behind, in_gap = 0, k if k is not None else -2
            if k is None:
                continue
            if not kind:
                behind += before.get(at, 0)
                continue
            for span, nxt in sources(at):
                if nxt != _END:
                    before[nxt] = before.get(nxt, 0) + behind
                if span is not None:
                    uses[span] = uses.get(span, 0) + behind * after.get(nxt, 0)
        return after.get(self._first, 0), uses

    def _sources(self, start: int) -> list[tuple[int, bool]]:
        """Where a source starting at ``start`` may end (followed by ``,`` or by the end
        of the group or text), and whether it is a node's uid there (else a value's)."""
        if start in self._ends:
            return self._ends[start]
        text, close = self.text, self._close
        out: list[tuple[int, bool]] = []
        slash = text.find("/", start)
        region = slash if slash >= 0 else len(text)
        for end in self._stops(start, min(region, close)):  # (a value: no "/")
            if end != close and text[end] != ",":
                continue
            if end - start >= 9 and text[end - 9] == "-" and _HEX8.fullmatch(text, end - 8, end):
                out.append((end, False))
        step = text[start:slash] if slash >= 0 else ""
        if slash >= 0 and _STEP.fullmatch(step):
            configs = self._configs(step)
            after = text.find("/", slash + 1)
            limit = after if after >= 0 else len(text)
            for end in [*self._stops(slash + 1, min(limit, close)), limit]:
                config = text[slash + 1 : end]
                if not config or (configs is not None and config not in configs):
                    continue
                if end == after:  # (then /inputs-<digest>, /items-<digest>)
                    end = self._suffix(end, "/inputs-")
                    end = self._suffix(end, "/items-")
                    if end == after:
                        continue
                if end == close or (end < close and text[end] == ","):
                    out.append((end, True))
        self._ends[start] = out = sorted(set(out))
        return out

    def _stops(self, start: int, limit: int) -> list[int]:
        """The positions in ``(start, limit]`` a source may end at: a ``,`` or ``limit``."""
        commas = self._commas
        inside = commas[bisect.bisect_right(commas, start) : bisect.bisect_left(commas, limit)]
        return [*inside, limit]

    def _suffix(self, at: int, name: str) -> int:
        end = at + len(name) + 8
        if self.text.startswith(name, at) and _HEX8.fullmatch(self.text, at + len(name), end):
            return end
        return at

    @staticmethod
    def _over(span: Span, required: list[Span]) -> bool:
        """Whether ``span`` overlaps one of ``required`` (sorted, not overlapping)."""
        at = bisect.bisect_left(required, (span[1],))  # (those starting before its end)
        return at > 0 and required[at - 1][1] > span[0]
