"""Helpers every cocotb bench shares: the seed, clock and reset."""

import os
import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles


def seeded_rng(dut) -> random.Random:
    """A ``random.Random`` from ``LLMACC_SEED``; the seed is logged so failures reproduce."""
    seed = int(os.environ.get("LLMACC_SEED", "1"))
    dut._log.info("LLMACC_SEED=%d (rerun with this seed to reproduce)", seed)
    return random.Random(seed)


async def start_clock_and_reset(dut, period_ns: int = 10, cycles: int = 2) -> None:
    cocotb.start_soon(Clock(dut.clk, period_ns, unit="ns").start())
    dut.rst.value = 1
    await ClockCycles(dut.clk, cycles)
    dut.rst.value = 0
