"""The controller: decode, check and dispatch instruction words; dependency tokens per unit.

Everything is derived from the ISA declaration (:mod:`llmacc.isa`): the word is viewed
through ``InstructionWord``, and the legality check walks the same payload layouts as the
Python decoder, so a word is legal in hardware exactly when ``isa.decode`` accepts it.

* **Dispatch** (program order): SYS instructions run here (SETREG writes a run-time
  register, SYNC waits until every unit is idle, HALT drains and raises ``done``); the
  others enter their unit's queue with a snapshot of the registers (registers resolve at
  dispatch, as the ISA says).
* **Issue** (per unit, in order): the head of a queue issues when every unit named in its
  ``wait`` mask has sent a token; on completion (``done`` pulse) it sends a token to every
  unit in ``release``. Tokens are counters per (source, destination) pair, as in FlightLLM.
* **Errors**: an illegal word stops dispatch and sets ``error`` with ``status`` (the
  :class:`Fault` code) and ``fault_pc``; so does a deadlock (every unit idle, a queue head
  waiting for a token nobody can send), tokens left over at HALT, and a unit's fault
  (``fault_<unit>``, non-zero while busy). After an error nothing more issues; ``start``
  empties the queues and token counters.
* **Counters** (cleared by ``start``): cycles, dispatched instructions, and per unit the
  cycles busy and the cycles its queue head waited for tokens.
"""

import enum

from amaranth.hdl import Cat, Module, Mux, ResetInserter, Signal, Value
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.fixed_point import one_of
from llmacc import isa
from llmacc.kernel import PC_BITS, Fault

TOKEN_BITS = 6
COUNTER_BITS = 48


IssueLayout = data.StructLayout({
    "word": isa.InstructionWord,
    "pc": PC_BITS,
    "regs": data.ArrayLayout(32, len(isa.Reg)),
})


def unit_members() -> dict:
    """What every execution unit has towards the controller: the issue stream, a completion
    pulse, and a fault code (non-zero while busy: the instruction failed)."""
    return {"issue": In(stream.Signature(IssueLayout)), "complete": Out(1), "fault": Out(8)}


def legality(word) -> tuple:
    """``(fault, any)``: the first :class:`Fault` of a word (as the Python decoder orders
    them) and whether there is one, as Amaranth expressions."""
    opcode = Value.cast(word.header.opcode)
    known = one_of(opcode, [op.value for op in isa.Opcode])
    payload = word.payload.raw
    field_bad, reserved_bad, semantic_bad = [], [], []
    for op, layout in isa.PAYLOAD.items():
        is_op = opcode == op.value
        view = data.View(layout, payload[:layout.as_shape().size])
        for name, fld in layout.as_shape():
            if isinstance(fld.shape, type) and issubclass(fld.shape, enum.Enum):
                raw = Value.cast(view[name])
                ok = one_of(raw, [member.value for member in fld.shape])
                field_bad.append(is_op & ~ok)
        size = layout.as_shape().size
        if size < isa.PAYLOAD_BITS:
            reserved_bad.append(is_op & payload[size:].any())
        if op is isa.Opcode.MATVEC:
            semantic_bad.append(is_op & (view.m != 1))
    f_field = Cat(*field_bad).any()
    f_res = Cat(*reserved_bad).any()
    f_sem = Cat(*semantic_bad).any()
    fault = Mux(~known, Fault.OPCODE, Mux(f_field, Fault.FIELD, Mux(
        f_res, Fault.RESERVED, Mux(f_sem, Fault.SEMANTICS, Fault.NONE))))
    return fault, ~known | f_field | f_res | f_sem


class Controller(wiring.Component):
    """Dispatch from the ``insn`` stream to one issue stream per :class:`isa.Unit`."""

    def __init__(self, queue_depth: int = 8):
        self.queue_depth = queue_depth
        members = {
            "insn": In(stream.Signature(isa.InstructionWord)),
            "start": In(1),
            "busy": Out(1),
            "done": Out(1),
            "error": Out(1),
            "status": Out(Fault),
            "fault_pc": Out(PC_BITS),
            "regs": Out(data.ArrayLayout(32, len(isa.Reg))),
            "cycles": Out(COUNTER_BITS),
            "dispatched": Out(COUNTER_BITS),
        }
        for u in isa.Unit:
            name = u.name.lower()
            members[f"issue_{name}"] = Out(stream.Signature(IssueLayout))
            members[f"complete_{name}"] = In(1)
            members[f"fault_{name}"] = In(8)
            members[f"busy_cycles_{name}"] = Out(COUNTER_BITS)
            members[f"stall_cycles_{name}"] = Out(COUNTER_BITS)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        units = list(isa.Unit)
        running = Signal()
        pc = Signal(PC_BITS)
        word = self.insn.payload
        opcode = word.header.opcode
        fault, illegal = legality(word)
        tokens = {(a, b): Signal(TOKEN_BITS, name=f"tok_{a.name}_{b.name}")
                  for a in units for b in units}
        take = {(a, b): Signal(name=f"take_{a.name}_{b.name}") for a in units for b in units}
        give = {(a, b): Signal(name=f"give_{a.name}_{b.name}") for a in units for b in units}
        restart = self.start & ~running
        for key, count in tokens.items():
            m.d.sync += count.eq(Mux(restart, 0, count + give[key] - take[key]))
        queues, busy, can_issue = {}, {}, {}
        for u in units:
            q = fifo.SyncFIFOBuffered(width=IssueLayout.size, depth=self.queue_depth)
            m.submodules[f"queue_{u.name.lower()}"] = ResetInserter(restart)(q)
            queues[u] = q
            busy[u] = Signal(name=f"busy_{u.name.lower()}")
        all_idle = Cat(*(~busy[u] & (queues[u].level == 0) for u in units)).all()

        # -- issue and completion, per unit ------------------------------------------------
        unit_faults = []
        for u in units:
            name = u.name.lower()
            q, port = queues[u], getattr(self, f"issue_{name}")
            head = data.View(IssueLayout, q.r_data)
            wait = head.word.header.wait
            ready = Cat(*(~wait[a.value] | (tokens[(a, u)] != 0) for a in units)).all()
            can_issue[u] = q.r_rdy & ready & ~busy[u] & running
            release = Signal(4, name=f"release_{name}")
            issued_pc = Signal(PC_BITS, name=f"issued_pc_{name}")
            m.d.comb += [port.payload.eq(head), port.valid.eq(can_issue[u]),
                         q.r_en.eq(port.valid & port.ready)]
            with m.If(port.valid & port.ready):
                m.d.sync += [busy[u].eq(1), release.eq(head.word.header.release),
                             issued_pc.eq(head.pc)]
                m.d.comb += [take[(a, u)].eq(wait[a.value]) for a in units]
            unit_fault = getattr(self, f"fault_{name}")
            unit_faults.append((busy[u] & (unit_fault != 0), unit_fault, issued_pc))
            with m.If(getattr(self, f"complete_{name}") & busy[u]):
                m.d.sync += busy[u].eq(0)
                m.d.comb += [give[(u, b)].eq(release[b.value]) for b in units]
            counter_busy = getattr(self, f"busy_cycles_{name}")
            counter_stall = getattr(self, f"stall_cycles_{name}")
            with m.If(busy[u]):
                m.d.sync += counter_busy.eq(counter_busy + 1)
            with m.If(q.r_rdy & ~busy[u] & ~ready):
                m.d.sync += counter_stall.eq(counter_stall + 1)

        any_issue = Cat(*can_issue.values()).any()
        stuck = ~Cat(*busy.values()).any() & Cat(*(q.level != 0 for q in queues.values())).any() \
            & ~any_issue
        tokens_left = Cat(*(c != 0 for c in tokens.values())).any()
        # A completion updates the token counters one cycle after the unit turns idle, so
        # a deadlock is only declared when nothing could issue for two cycles in a row.
        stuck_before = Signal()
        m.d.sync += stuck_before.eq(stuck & running)

        # -- dispatch, in program order ----------------------------------------------------
        def fail(code, at):
            m.d.sync += [self.error.eq(1), self.status.eq(code), self.fault_pc.eq(at),
                         running.eq(0)]

        with m.If(self.start & ~running):
            m.d.sync += [running.eq(1), pc.eq(0), self.done.eq(0), self.error.eq(0),
                         self.status.eq(Fault.NONE), self.fault_pc.eq(0), self.cycles.eq(0),
                         self.dispatched.eq(0)]
            for u in units:
                name = u.name.lower()
                m.d.sync += [getattr(self, f"busy_cycles_{name}").eq(0),
                             getattr(self, f"stall_cycles_{name}").eq(0)]
        with m.If(running):
            m.d.sync += self.cycles.eq(self.cycles + 1)
            with m.If(Cat(*(f for f, _, _ in unit_faults)).any()):
                for faulty, code, at in reversed(unit_faults):  # the first unit wins
                    with m.If(faulty):
                        fail(code, at)
            with m.Elif(stuck & stuck_before):
                fail(Fault.DEADLOCK, pc)
            with m.Elif(self.insn.valid):
                with m.If(illegal):
                    fail(fault, pc)
                    m.d.comb += self.insn.ready.eq(1)
                with m.Elif(opcode == isa.Opcode.SYS):
                    sys = word.payload.sys
                    with m.Switch(sys.func):
                        with m.Case(isa.SysFunc.SETREG):
                            m.d.comb += self.insn.ready.eq(1)
                            m.d.sync += self.regs[sys.reg.as_value()].eq(sys.imm)
                        with m.Case(isa.SysFunc.SYNC, isa.SysFunc.HALT):
                            m.d.comb += self.insn.ready.eq(all_idle)
                            with m.If(all_idle & (sys.func == isa.SysFunc.HALT)):
                                with m.If(tokens_left):
                                    fail(Fault.TOKENS_LEFT, pc)
                                with m.Else():
                                    m.d.sync += [self.done.eq(1), running.eq(0)]
                        with m.Default():
                            m.d.comb += self.insn.ready.eq(1)
                with m.Else():
                    entry = Signal(IssueLayout)
                    m.d.comb += [entry.word.eq(word), entry.pc.eq(pc), entry.regs.eq(self.regs)]
                    for u in units:
                        ops = [op.value for op, unit in isa.UNIT_OF.items() if unit is u]
                        mine = one_of(Value.cast(opcode), ops)
                        with m.If(mine):
                            m.d.comb += [queues[u].w_data.eq(entry),
                                         queues[u].w_en.eq(queues[u].w_rdy),
                                         self.insn.ready.eq(queues[u].w_rdy)]
                with m.If(self.insn.ready & ~illegal):
                    m.d.sync += [pc.eq(pc + 1), self.dispatched.eq(self.dispatched + 1)]
        m.d.comb += self.busy.eq(running)
        return m
