"""cocotb bench: hw.requantizer.Requantizer against the numerics contract, bit for bit.

Edge cases (rounding ties of both signs, saturation at both ends, shift 0, extreme inputs)
then seeded random vectors, streamed one per cycle; every output is checked.
"""

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from hw.requantizer import model
from sim.benches.common import seeded_rng, start_clock_and_reset


def _vectors(rng, in_bits, mult_bits, shift_bits, out_bits, count):
    lo, hi = -(1 << (in_bits - 1)), (1 << (in_bits - 1)) - 1
    mmax, smax = (1 << mult_bits) - 1, (1 << shift_bits) - 1
    edges = [(3, 1, 1), (-3, 1, 1), (1, 1, 1), (-1, 1, 1), (-2, 1, 2), (2, 1, 2),
             (hi, mmax, 0), (lo, mmax, 0), (hi, mmax, smax), (lo, mmax, smax),
             (0, mmax, 7), (127, 1, 0), (-128, 1, 0), (255, 1, 1), (-255, 1, 1),
             (253, 1, 1), (-253, 1, 1), (lo, 1, 0), (hi, 1, in_bits - 1)]
    yield from edges
    for _ in range(count):
        yield (rng.randint(lo, hi), rng.randint(0, mmax), rng.randint(0, smax))
        # values near the saturation and rounding boundaries
        shift = rng.randint(1, 20)
        mult = rng.randint(1, mmax)
        target = rng.randint(-(1 << out_bits), 1 << out_bits) << shift
        x = max(lo, min(hi, target // mult + rng.randint(-2, 2)))
        yield (x, mult, shift)


@cocotb.test()
async def requantizer_matches_model(dut):
    rng = seeded_rng(dut)
    widths = len(dut.x), len(dut.mult), len(dut.shift), len(dut.y)
    await start_clock_and_reset(dut)
    checked = 0
    for x, mult, shift in _vectors(rng, *widths, count=2000):
        await FallingEdge(dut.clk)
        dut.x.value = x
        dut.mult.value = mult
        dut.shift.value = shift
        dut.valid_in.value = 1
        await RisingEdge(dut.clk)
        await ReadOnly()
        want = model(x, mult, shift, widths[3])
        got = dut.y.value.to_signed()
        assert dut.valid_out.value == 1
        assert got == want, f"x={x} mult={mult} shift={shift}: RTL {got} != model {want}"
        checked += 1
    dut._log.info("checked %d vectors", checked)
