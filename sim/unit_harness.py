"""Run one instruction on one unit sequencer in Amaranth's simulator, against buffer images.

The unit (``hw/sfu_unit.py``, ``hw/compute_unit.py``) is attached to a
:class:`hw.buffer_access.BufferBank`; for each case (``sim/instruction_cases.py``) the
harness loads the emulator's buffer bytes, issues the instruction with the run-time
registers, waits for completion and returns the fault code and every buffer's bytes, for the
tests to compare with the emulator's. A unit with weight-stream ports (``stream<c>`` commands,
``weights<c>`` words: the COMPUTE unit's MATSTREAM) reads them from the case's channel
memories, as the top's weight streamers would, with random pauses; ``stream_abort`` cuts the
command short and ``streams_idle`` says when no channel is in one. An error response can be
made to come after a given number of a case's words (``bus_errors``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Elaboratable, Module, Value
from amaranth.lib import wiring
from amaranth.sim import Simulator

from hw.buffer_access import BufferBank
from llmacc import isa
from llmacc.config import AccelConfig
from llmacc.isa import Buffer
from llmacc.kernel import Fault
from sim.emulator import EmulatorError
from sim.instruction_cases import InstructionCase


class UnitHarness(Elaboratable):
    """``unit`` with its ``rd_*`` ports on the bank's shared read ports and ``wr*`` on the
    shared write ports, in declaration order."""

    def __init__(self, cfg: AccelConfig, unit: wiring.Component):
        self.unit = unit
        names = list(unit.signature.members)
        self.reads = [n for n in names if n.startswith("rd_")]
        self.writes = [n for n in names if n.startswith("wr")]
        self.bank = BufferBank(cfg, len(self.reads), len(self.writes))

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit, m.submodules.bank = self.unit, self.bank
        for i, name in enumerate(self.reads):
            wiring.connect(m, getattr(self.unit, name), self.bank.rd[i])
        for i, name in enumerate(self.writes):
            wiring.connect(m, getattr(self.unit, name), self.bank.wr[i])
        return m


@dataclass
class Outcome:
    fault: int
    images: dict[Buffer, bytes]
    cycles: int


def run_instructions(cfg: AccelConfig, unit: wiring.Component, cases: list[InstructionCase],
                     max_cycles: int = 200_000, seed: int = 0,
                     bus_errors: dict[int, int] | None = None) -> list[Outcome]:
    """Each case on ``unit`` in one simulation (building the simulator is the slow part):
    load its images, issue, wait for completion, read the buffers back. ``bus_errors``:
    case index -> the words channel 0 gives in that case before an error response."""
    dut = UnitHarness(cfg, unit)
    w = cfg.axi_data_bytes
    outcomes = []
    running: list[InstructionCase] = []  # the case being run, for the stream channels
    rng = random.Random(seed)
    busy = [False] * cfg.mem_channels  # a channel in a command
    given = [0]  # channel 0's words in the running case

    def channel(c: int):
        """Channel ``c``'s weight streamer: each command's words from the running case's
        channel memory, in order, pausing at random, until ``stream_abort``."""
        cmd, out = getattr(unit, f"stream{c}"), getattr(unit, f"weights{c}")

        def mark(ctx, now: bool):
            busy[c] = now
            ctx.set(unit.streams_idle, int(not any(busy)))

        async def streamer(ctx):
            ctx.set(cmd.ready, 1)
            mark(ctx, False)
            while True:
                if not ctx.get(cmd.valid):
                    await ctx.tick()
                    continue
                addr, beats = ctx.get(cmd.payload.addr), ctx.get(cmd.payload.beats)
                mark(ctx, True)
                await ctx.tick()
                mem = running[-1].emu.ext[c]
                for i in range(beats):
                    while rng.random() < 0.2 and not ctx.get(unit.stream_abort):
                        ctx.set(out.valid, 0)
                        await ctx.tick()
                    if ctx.get(unit.stream_abort):
                        break
                    word = mem[addr + i * w:addr + (i + 1) * w]
                    ctx.set(out.payload, int.from_bytes(word.tobytes(), "little"))
                    ctx.set(out.valid, 1)
                    while True:
                        taken = ctx.get(out.ready)
                        await ctx.tick()
                        if taken or ctx.get(unit.stream_abort):
                            break
                    if c == 0 and taken:  # a word an abort cut off was never given
                        given[0] += 1
                        errors = (bus_errors or {}).get(len(running) - 1)
                        ctx.set(unit.stream_error, int(errors is not None
                                                       and given[0] >= errors))
                ctx.set(out.valid, 0)
                mark(ctx, False)
        return streamer

    async def bench(ctx):
        cells = dut.bank.cells
        issue = unit.issue
        for case in cases:
            running.append(case)
            given[0] = 0
            if "stream_error" in unit.signature.members:  # sticky until the next start
                ctx.set(unit.stream_error, 0)
            for b, img in case.images.items():
                for i, cell in enumerate(cells[b]):
                    ctx.set(cell, int.from_bytes(img[i * w:(i + 1) * w], "little"))
            ctx.set(Value.cast(issue.payload.word), isa.encode(case.insn))
            for r in isa.Reg:
                ctx.set(issue.payload.regs[r.value], case.regs.get(r, 0) & 0xFFFFFFFF)
            ctx.set(issue.valid, 1)
            await ctx.tick().until(issue.ready)
            ctx.set(issue.valid, 0)
            fault, cycles = ctx.get(unit.fault), 0
            while not ctx.get(unit.complete):
                cycles += 1
                if cycles > max_cycles:
                    raise TimeoutError(f"{case.insn} did not complete in {max_cycles} cycles")
                await ctx.tick()
                fault = fault or ctx.get(unit.fault)
            await ctx.tick()
            images = {b: b"".join(ctx.get(cell).to_bytes(w, "little") for cell in words)
                      for b, words in cells.items()}
            outcomes.append(Outcome(fault, images, cycles))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    for c in range(cfg.mem_channels):
        if f"stream{c}" in unit.signature.members:
            sim.add_testbench(channel(c), background=True)
    sim.run()
    return outcomes


def check_against_emulator(cfg: AccelConfig, unit: wiring.Component,
                           cases: list[InstructionCase], seed: int) -> list[Outcome]:
    """Run every case on ``unit`` (one simulation) and on its emulator: the buffers must be
    equal byte for byte, or both must refuse the instruction. Returns the unit's outcomes
    (fault code and busy cycles)."""
    outcomes = run_instructions(cfg, unit, cases, seed=seed)
    w = cfg.axi_data_bytes
    for case, out in zip(cases, outcomes, strict=True):
        try:
            case.emu.run([case.insn], case.regs)
        except EmulatorError:
            assert out.fault != Fault.NONE, f"{case.insn}: the emulator refuses it (seed {seed})"
            continue
        assert out.fault == Fault.NONE, \
            f"{case.insn}: fault {Fault(out.fault).name} (seed {seed})"
        for b, want in case.images.items():
            if out.images[b] != want:
                diff = np.flatnonzero(np.frombuffer(out.images[b], np.uint8) !=
                                      np.frombuffer(want, np.uint8))
                raise AssertionError(f"{b.name} differs at {diff.size} bytes, first word "
                                     f"{int(diff[0]) // w} (seed {seed}, {case.insn})")
    return outcomes
