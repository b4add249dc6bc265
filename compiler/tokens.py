"""Dependency tokens: make decoupled units safe by construction.

Every emitted instruction lists the buffer and external-memory ranges it reads and writes.
Units run their own instructions in program order and complete in order, so instruction ``j``
on unit ``U`` only has to wait for the *latest* earlier instruction ``i`` on each other unit
``V`` whose accesses conflict with its own (read-after-write, write-after-read,
write-after-write) and that ``U`` has not already synchronised with: ``i`` releases a token
to ``U`` and ``j`` waits for one from ``V``. Tokens are counted, and per-unit in-order
completion means the ``n``-th token ``j`` consumes is the one its ``n``-th producer sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmacc.isa import UNIT_OF, Buffer, Opcode, Unit

Space = Buffer | int  #: a buffer, or an external-memory channel number


@dataclass(frozen=True)
class Access:
    space: Space
    lo: int  #: words (buffers) or bytes (external memory)
    hi: int

    def overlaps(self, other: Access) -> bool:
        return self.space == other.space and self.lo < other.hi and other.lo < self.hi


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


def assign_tokens(ops: list[Op]) -> None:
    """Set ``wait``/``release`` on ``ops`` (in place) for every cross-unit hazard."""
    history: dict[Unit, list[int]] = {u: [] for u in Unit}
    synced = {(a, b): -1 for a in Unit for b in Unit}  # position in history[a]
    for j, op in enumerate(ops):
        unit = op.unit
        if unit is None:
            continue
        for other in Unit:
            if other is unit:
                continue
            past = history[other]
            for pos in range(len(past) - 1, synced[(other, unit)], -1):
                if ops[past[pos]].conflicts(op):
                    ops[past[pos]].release |= 1 << unit.value
                    op.wait |= 1 << other.value
                    synced[(other, unit)] = pos
                    break
        history[unit].append(j)
