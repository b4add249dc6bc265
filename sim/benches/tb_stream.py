"""cocotb bench for any stream-in/stream-out block (see ``sim/stream_harness.py``).

Reads the packed input payloads from ``$LLMACC_VECTORS``, streams them into ``i`` with random
idle cycles, takes ``count`` payloads from ``o`` under random back-pressure, and writes them
back as JSON; the pytest side compares them with the golden model field by field.
"""

import json

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly

from sim.benches.common import load_vectors, seeded_rng, send, start_clock_and_reset


@cocotb.test()
async def stream_block_outputs(dut):
    rng = seeded_rng(dut)
    spec = load_vectors()
    inputs = [int(v, 16) for v in spec["inputs"]]
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    await start_clock_and_reset(dut)
    outputs: list[int] = []

    async def produce():
        for raw in inputs:
            await send(dut.clk, dut.i__valid, dut.i__ready, dut.i__payload, raw, rng=rng,
                       idle=spec["idle"])
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
