"""Run one instruction on one unit sequencer in Amaranth's simulator, against buffer images.

The unit (``hw/sfu_unit.py``, ``hw/compute_unit.py``) is attached to a
:class:`hw.buffer_access.BufferBank` preloaded with the emulator's buffer bytes; the harness
issues the instruction with the run-time registers, waits for completion and returns the
fault code and every buffer's bytes, for the tests to compare with the emulator's.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Elaboratable, Module, Value
from amaranth.lib import wiring
from amaranth.sim import Simulator

from hw.buffer_access import BufferBank
from llmacc import isa
from llmacc.config import AccelConfig
from llmacc.isa import Buffer


class UnitHarness(Elaboratable):
    """``unit`` with its ``rd_*`` ports on the bank's shared read ports and ``wr*`` on the
    shared write ports, in declaration order."""

    def __init__(self, cfg: AccelConfig, unit: wiring.Component, images: dict[Buffer, bytes]):
        self.unit = unit
        names = list(unit.signature.members)
        self.reads = [n for n in names if n.startswith("rd_")]
        self.writes = [n for n in names if n.startswith("wr")]
        w = cfg.axi_data_bytes
        init = {b: [int.from_bytes(img[i:i + w], "little") for i in range(0, len(img), w)]
                for b, img in images.items()}
        self.bank = BufferBank(cfg, len(self.reads), len(self.writes), init)

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit, m.submodules.bank = self.unit, self.bank
        for i, name in enumerate(self.reads):
            wiring.connect(m, getattr(self.unit, name), self.bank.rd[i])
        for i, name in enumerate(self.writes):
            wiring.connect(m, getattr(self.unit, name), self.bank.wr[i])
        return m


def run_instruction(cfg: AccelConfig, unit: wiring.Component, images: dict[Buffer, bytes],
                    insn: isa.Instruction, regs: dict[isa.Reg, int],
                    max_cycles: int = 200_000) -> tuple[int, dict[Buffer, bytes], int]:
    """``(fault, buffer images after, cycles)`` of one instruction on ``unit``."""
    dut = UnitHarness(cfg, unit, images)
    w = cfg.axi_data_bytes
    result = {}

    async def bench(ctx):
        issue = unit.issue
        ctx.set(Value.cast(issue.payload.word), isa.encode(insn))
        for r, value in regs.items():
            ctx.set(issue.payload.regs[r.value], value & 0xFFFFFFFF)
        ctx.set(issue.valid, 1)
        await ctx.tick().until(issue.ready)
        ctx.set(issue.valid, 0)
        fault = 0
        for cycle in range(max_cycles):
            fault = fault or ctx.get(unit.fault)
            if ctx.get(unit.complete):
                break
            await ctx.tick()
        else:
            raise TimeoutError(f"{insn.opcode.name} did not complete in {max_cycles} cycles")
        await ctx.tick()
        result["fault"], result["cycles"] = fault, cycle
        result["images"] = {
            b: b"".join(ctx.get(mem.data[i]).to_bytes(w, "little") for i in range(mem.depth))
            for b, mem in dut.bank.memories.items()}

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return result["fault"], result["images"], result["cycles"]


def emulator_images(emu) -> dict[Buffer, bytes]:
    return {b: np.asarray(emu.buf[b]).tobytes() for b in Buffer}
