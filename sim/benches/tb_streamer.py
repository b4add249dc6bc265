"""cocotb bench for hw/weight_streamer.py: the same random rows and HBM channel model as the
Amaranth test (``sim.hbm_model.stream_bench``), through the Verilated block."""

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from sim import hbm_model as H
from sim.benches.common import seeded_rng, start_clock_and_reset

MEMORY = 1 << 18


class CocotbIO:
    """:class:`sim.hbm_model.PortIO` over the Verilated ports: inputs after the falling
    edge (only those that changed: a wide payload costs a conversion), outputs read settled,
    then the rising edge."""

    def __init__(self, dut):
        self.dut = dut
        self.driven: dict[str, int] = {}

    async def cycle(self, inputs, outputs):
        await FallingEdge(self.dut.clk)
        for name, value in inputs.items():
            if self.driven.get(name) != value:
                getattr(self.dut, name).value = value
                self.driven[name] = value
        await ReadOnly()
        out = {name: int(getattr(self.dut, name).value) for name in outputs}
        await RisingEdge(self.dut.clk)
        return out


@cocotb.test()
async def streamer_words_in_order(dut):
    rng = seeded_rng(dut)
    await start_clock_and_reset(dut)
    nbytes = len(dut.axi__rdata) // 8
    addr_bits = len(dut.axi__araddr)
    memory = bytes(rng.getrandbits(8) for _ in range(MEMORY))
    rows = H.random_rows(rng, nbytes, MEMORY, 30)
    timing = H.HbmTiming(bytes_per_cycle=nbytes)
    report = await H.stream_bench(CocotbIO(dut), memory, rows, nbytes, addr_bits, timing, rng,
                                  stall=0.3)
    want = H.expected_words(memory, rows, nbytes)
    assert report.words == want, f"{len(report.words)} words, {len(want)} expected"
    dut._log.info("%d words in %d cycles, %d bursts", len(want), report.cycles,
                  len(report.bursts))
