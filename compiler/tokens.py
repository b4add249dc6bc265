"""Dependency tokens: make decoupled units safe by construction.

Every emitted instruction lists the buffer and external-memory ranges it reads and writes.
Units run their own instructions in program order and complete in order, so instruction ``j``
on unit ``U`` only has to wait for the *latest* earlier instruction ``i`` on each other unit
``V`` whose accesses conflict with its own (read-after-write, write-after-read,
write-after-write) and that ``U`` has not already synchronised with: ``i`` releases a token
to ``U`` and ``j`` waits for one from ``V``. Tokens are counted, and per-unit in-order
completion means the ``n``-th token ``j`` consumes is the one its ``n``-th producer sent.

The controller counts each unit pair's tokens in ``hw.controller.TOKEN_BITS`` bits, so no
more than :func:`token_limit` may be outstanding between a release and its wait in program
order (the waiting unit's queue lets it lag that many instructions more). Where a token
would pass the limit (LLaMA2-7B's 32 KV heads: a layer's 64 header LOADs, each for a later
KVQUANT), ``j`` syncs with a later instruction of ``V`` instead, the earliest that keeps
the count: as safe, since ``V`` completes in order, and it waits a little longer.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np

from compiler.memory_plan import CompileError
from hw.controller import TOKEN_BITS
from llmacc.config import AccelConfig
from llmacc.isa import UNIT_OF, Buffer, Opcode, Unit

Space = Buffer | int  #: a buffer, or an external-memory channel number


@dataclass(frozen=True)
class Access:
    space: Space
    lo: int  #: words (buffers) or bytes (external memory)
    hi: int

    def overlaps(self, other: Access) -> bool:
        """Whether both touch a common word (byte): an empty access touches none."""
        return (self.space == other.space and max(self.lo, other.lo) < min(self.hi, other.hi))


@dataclass
class Op:
    """An instruction being built: fields, token masks, and its memory accesses."""

    opcode: Opcode
    fields: dict
    reads: list[Access] = field(default_factory=list)
    writes: list[Access] = field(default_factory=list)
    wait: int = 0
    release: int = 0

    @property
    def unit(self) -> Unit | None:
        return UNIT_OF.get(self.opcode)

    def conflicts(self, later: Op) -> bool:
        return (any(w.overlaps(a) for w in self.writes for a in later.reads + later.writes)
                or any(r.overlaps(w) for r in self.reads for w in later.writes))


def token_limit(cfg: AccelConfig) -> int:
    """Tokens one unit may owe another in program order: the controller's counter less the
    waits that the owing unit's queue (``insn_queue_depth``) and its running instruction
    may still hold back."""
    return (1 << TOKEN_BITS) - 1 - cfg.insn_queue_depth - 1


def assign_tokens(ops: list[Op], limit: int) -> None:
    """Set ``wait``/``release`` on ``ops`` (in place) for every cross-unit hazard, with at
    most ``limit`` tokens of a unit pair outstanding in program order. A pair whose
    consumers come in a burst after all their producers (a prefill chunk's STOREs of every
    KV head after the layer's header LOADs) syncs each consumer with the latest instruction
    of the producing unit instead: one token then stands for all of them."""
    latest: set[tuple[Unit, Unit]] = set()
    while True:
        for op in ops:
            op.wait = op.release = 0
        try:
            return _assign(ops, limit, latest)
        except _OverLimit as over:
            if over.pair in latest:
                raise CompileError(f"more than {limit} tokens from {over.pair[0].name} to "
                                   f"{over.pair[1].name} outstanding") from None
            latest.add(over.pair)


class _OverLimit(Exception):
    """No producer keeps ``pair``'s tokens within the limit."""

    def __init__(self, pair: tuple[Unit, Unit]):
        self.pair = pair


class _LastTouch:
    """Per unit, the latest of its instructions (a position in its own history) that read
    and that wrote each buffer word, and its external-memory accesses in order: the latest
    earlier instruction of each unit that conflicts with a new one, without walking back over
    every instruction in between (a SmolLM2 program has thousands)."""

    def __init__(self, ops: list[Op]):
        size: dict[Buffer, int] = {}
        for op in ops:
            for a in op.reads + op.writes:
                if isinstance(a.space, Buffer):
                    size[a.space] = max(size.get(a.space, 0), a.hi)
        self.words = {(b, write): np.full((len(Unit), n), -1, dtype=np.int64)
                      for b, n in size.items() for write in (False, True)}
        self.external: dict[tuple[Unit, int], list[tuple[int, Access, bool]]] = {}

    def record(self, unit: Unit, pos: int, op: Op) -> None:
        for accesses, write in ((op.reads, False), (op.writes, True)):
            for a in accesses:
                if isinstance(a.space, Buffer):
                    self.words[(a.space, write)][unit.value, a.lo:a.hi] = pos
                else:
                    self.external.setdefault((unit, a.space), []).append((pos, a, write))

    def latest_conflicts(self, op: Op, after: list[int]) -> list[int]:
        """Per unit (by value), the latest position past ``after[unit]`` of its instructions
        that conflicts with ``op`` (read after write, write after read or write), else
        ``after[unit]``."""
        best = np.array(after, dtype=np.int64)
        for accesses, write in ((op.reads, False), (op.writes, True)):
            for a in accesses:
                if a.lo >= a.hi:
                    continue
                if isinstance(a.space, Buffer):
                    for kind in (True, False) if write else (True,):
                        np.maximum(best, self.words[(a.space, kind)][:, a.lo:a.hi].max(1),
                                   out=best)
                    continue
                for unit in Unit:
                    for pos, b, was_write in reversed(self.external.get((unit, a.space), ())):
                        if pos <= best[unit.value]:
                            break
                        if (write or was_write) and a.overlaps(b):
                            best[unit.value] = pos
                            break
        return best.tolist()


def _assign(ops: list[Op], limit: int, latest: set[tuple[Unit, Unit]]) -> None:
    units = list(Unit)  # indexed by value: tables of enum keys hash in Python, slowly
    history: list[list[int]] = [[] for _ in units]
    synced = [[-1] * len(units) for _ in units]  # [a][b]: position in history[a]
    waits: list[list[list[int]]] = [[[] for _ in units] for _ in units]
    touched = _LastTouch(ops)
    for j, op in enumerate(ops):
        unit = op.unit
        if unit is None:
            continue
        u = unit.value
        own = len(history[u])  # a unit needs no token from itself: nothing lies past it
        found = touched.latest_conflicts(
            op, [own if v == u else synced[v][u] for v in range(len(units))])
        for v, pos in enumerate(found):
            if v != u and pos > synced[v][u]:
                past, pair = history[v], (units[v], unit)
                pos = _within_limit(past, len(past) - 1 if pair in latest else pos,
                                    waits[v][u], limit, pair)
                ops[past[pos]].release |= 1 << u
                op.wait |= 1 << v
                synced[v][u] = pos
                waits[v][u].append(j)
        touched.record(unit, own, op)
        history[u].append(j)


def _within_limit(past: list[int], pos: int, waits: list[int], limit: int,
                  pair: tuple[Unit, Unit]) -> int:
    """The earliest producer at or after ``past[pos]`` whose token keeps the pair's tokens
    outstanding at any point of its way (those waited for after it: ``waits`` is sorted)
    within ``limit``; :class:`_OverLimit` where none does."""
    def fits(k: int) -> bool:
        return len(waits) - bisect_right(waits, past[k]) < limit

    if fits(pos):
        return pos
    lo, hi = pos + 1, len(past) - 1
    if not fits(hi):
        raise _OverLimit(pair)
    while lo < hi:  # the outstanding count falls as the producer moves later
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid + 1, hi)
    return lo
