"""cocotb bench for any stream-in/stream-out block (see ``sim/stream_harness.py``).

Reads the packed input payloads from ``$LLMACC_VECTORS``, streams them into ``i`` with random
idle cycles, takes ``count`` payloads from ``o`` under random back-pressure, and writes them
back as JSON; the pytest side compares them with the golden model field by field.
"""

import json
import os

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from sim.benches.common import seeded_rng, start_clock_and_reset


@cocotb.test()
async def stream_block_outputs(dut):
    rng = seeded_rng(dut)
    with open(os.environ["LLMACC_VECTORS"]) as f:
        spec = json.load(f)
    inputs = [int(v, 16) for v in spec["inputs"]]
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    await start_clock_and_reset(dut)
    outputs: list[int] = []

    async def produce():
        # Signals change on the falling edge and are sampled settled (ReadOnly) before the
        # rising edge on which a transfer happens.
        for raw in inputs:
            await FallingEdge(dut.clk)
            while rng.random() < spec["idle"]:
                dut.i__valid.value = 0
                await FallingEdge(dut.clk)
            dut.i__payload.value = raw
            dut.i__valid.value = 1
            await ReadOnly()
            while not dut.i__ready.value:
                await FallingEdge(dut.clk)
                await ReadOnly()
            await RisingEdge(dut.clk)
        await FallingEdge(dut.clk)
        dut.i__valid.value = 0

    cocotb.start_soon(produce())
    cycles = 0
    while len(outputs) < spec["count"]:
        await FallingEdge(dut.clk)
        dut.o__ready.value = int(rng.random() >= spec["stall"])
        await ReadOnly()
        if dut.o__ready.value and dut.o__valid.value:
            outputs.append(int(dut.o__payload.value))
        cycles += 1
        assert cycles < 2_000_000, f"only {len(outputs)} of {spec['count']} outputs"
    with open(spec["out"], "w") as f:
        json.dump([hex(v) for v in outputs], f)
    dut._log.info("%d inputs, %d outputs in %d cycles", len(inputs), len(outputs), cycles)
