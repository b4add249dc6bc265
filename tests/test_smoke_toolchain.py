"""Toolchain smoke test: Amaranth -> Verilog -> Verilator, driven by cocotb from pytest.

The device is the INT8 requantizer (hw/requantizer.py), checked bit for bit against the
numerics contract, first in Amaranth's simulator (fast tier), then in Verilator (this is
never skipped: a missing or old Verilator fails the test).
"""

import random

import pytest
from amaranth.sim import Simulator

from hw.requantizer import Requantizer, model
from sim import toolchain, verilator


def test_pinned_verilator_is_on_path(verilator_env):
    assert toolchain.verilator_version() >= toolchain.MIN_VERILATOR


def test_old_system_verilator_is_refused(tmp_path):
    fake = tmp_path / "verilator"
    fake.write_text("#!/bin/sh\necho 'Verilator 5.006 2023-01-22 rev (Debian 5.006-3)'\n")
    fake.chmod(0o755)
    env = {"PATH": str(tmp_path)}
    with pytest.raises(toolchain.ToolchainError, match="too old"):
        toolchain.check(env)


def test_requantizer_amaranth_sim(seed):
    rng = random.Random(seed)
    dut = Requantizer()
    vectors = [(3, 1, 1), (-3, 1, 1), (-(1 << 31), (1 << 17) - 1, 0), ((1 << 31) - 1, 1, 40)]
    vectors += [(rng.randint(-(1 << 31), (1 << 31) - 1), rng.randint(0, (1 << 17) - 1),
                 rng.randint(0, 63)) for _ in range(200)]

    async def bench(ctx):
        for x, mult, shift in vectors:
            ctx.set(dut.x, x)
            ctx.set(dut.mult, mult)
            ctx.set(dut.shift, shift)
            ctx.set(dut.valid_in, 1)
            await ctx.tick()
            assert ctx.get(dut.y) == model(x, mult, shift), (x, mult, shift)
            assert ctx.get(dut.valid_out) == 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


@pytest.fixture(scope="session")
def requantizer_model(verilator_env):
    return verilator.build(Requantizer(), "requantizer")


@pytest.mark.verilator
def test_requantizer_verilator_cocotb(requantizer_model, seed):
    tests, failed = requantizer_model.run("sim.benches.tb_requantizer", seed=seed)
    assert tests == 1 and failed == 0, f"{failed} of {tests} cocotb tests failed (seed {seed})"
