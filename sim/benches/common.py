"""Helpers every cocotb bench shares: the seed, clock and reset, the vectors the pytest side
wrote, and driving one transfer into a valid/ready port."""

import json
import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge


def seeded_rng(dut) -> random.Random:
    """A ``random.Random`` from ``LLMACC_SEED``; the seed is logged so failures reproduce."""
    seed = int(os.environ.get("LLMACC_SEED", "1"))
    dut._log.info("LLMACC_SEED=%d (rerun with this seed to reproduce)", seed)
    return random.Random(seed)


PERIOD_NS = 10


async def start_clock_and_reset(dut, period_ns: int = PERIOD_NS, cycles: int = 2) -> None:
    cocotb.start_soon(Clock(dut.clk, period_ns, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, cycles)
    dut.rst.value = 0


def load_vectors() -> dict:
    """The JSON spec the pytest side wrote to ``$LLMACC_VECTORS``."""
    with open(os.environ["LLMACC_VECTORS"]) as f:
        return json.load(f)


async def send(clk, valid, ready, payload, value: int, *, rng: random.Random | None = None,
               idle: float = 0.0, abort=None) -> bool:
    """Transfer ``value`` into a valid/ready port: after the next falling edge (and random
    idle cycles with ``valid`` low), present it and wait for ``ready``, read settled
    (ReadOnly) before the rising edge that takes it. Returns after that edge (True), or as
    soon as the signal ``abort`` is high while waiting (False). ``valid`` stays high."""
    await FallingEdge(clk)
    while rng is not None and rng.random() < idle:
        valid.value = 0
        await FallingEdge(clk)
    payload.value = value
    valid.value = 1
    await ReadOnly()
    while not ready.value:
        if abort is not None and abort.value:
            return False
        await FallingEdge(clk)
        await ReadOnly()
    await RisingEdge(clk)
    return True
