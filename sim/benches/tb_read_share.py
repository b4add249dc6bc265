"""cocotb bench for hw/read_share.py: two read masters sharing one port, the same random
rows and HBM channel model as the Amaranth test (``sim.hbm_model.shared_bench``)."""

import cocotb

from sim import hbm_model as H
from sim.benches.common import seeded_rng, start_clock_and_reset
from sim.benches.tb_streamer import CocotbIO

MEMORY = 1 << 16


@cocotb.test()
async def shared_reads_reach_their_masters(dut):
    rng = seeded_rng(dut)
    await start_clock_and_reset(dut)
    nbytes = len(dut.axi__rdata) // 8
    addr_bits = len(dut.axi__araddr)
    memory = bytes(rng.getrandbits(8) for _ in range(MEMORY))
    rows = [H.random_rows(rng, nbytes, MEMORY, 40) for _ in range(2)]
    timing = H.HbmTiming(bytes_per_cycle=nbytes)
    words = await H.shared_bench(CocotbIO(dut), memory, rows, nbytes, addr_bits, timing, rng)
    for i, got in enumerate(words):
        assert got == H.expected_words(memory, rows[i], nbytes), f"master {i}"
