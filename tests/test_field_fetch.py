"""``hw.buffer_access.FieldFetch``: fields from a served buffer, its two-word cache, and what
the unit's own writes do to it -- a whole word forgotten, or (``slot_snoop``) the written
32-bit slot only, its neighbours still hits and the written slot read again."""

import random

import pytest
from amaranth.sim import Simulator

from hw.buffer_access import FieldFetch
from llmacc.config import preset
from llmacc.isa import Buffer

CFG = preset("sim-small")  # 64-bit words: two slots each
WORD = CFG.axi_data_bits


def _run(slot_snoop: bool, seed: int) -> list[tuple[int, int, int]]:
    """Read slot 0 of word 3, write it (and the buffer), then read slots 1, 0 and 1 of word
    3: (slot, value, cycles until ready) per read after the write."""
    rng = random.Random(seed)
    mem = [rng.getrandbits(WORD) for _ in range(8)]
    dut = FieldFetch(CFG, slot_snoop=slot_snoop)
    got = []

    async def memory(ctx):  # grants every read, the word a cycle later
        async for _, _, en, addr in ctx.tick().sample(dut.port.en, dut.port.addr):
            ctx.set(dut.port.grant, 1)
            if en:
                ctx.set(dut.port.data, mem[addr])

    async def read(ctx, bit: int) -> tuple[int, int]:
        ctx.set(dut.req.valid, 1)
        ctx.set(dut.req.payload.buf, Buffer.ACT)
        ctx.set(dut.req.payload.bit, bit)
        cycles = 0
        while not ctx.get(dut.req.ready):
            await ctx.tick()
            cycles += 1
        value = ctx.get(dut.value) & 0xFFFFFFFF
        await ctx.tick()
        ctx.set(dut.req.valid, 0)
        return value, cycles

    async def bench(ctx):
        await read(ctx, 3 * WORD)
        new = rng.getrandbits(32)
        mem[3] = (mem[3] & ~0xFFFFFFFF) | new  # the unit writes slot 0 of word 3
        ctx.set(dut.snoop.en, 1)
        ctx.set(dut.snoop.grant, 1)
        ctx.set(dut.snoop.buf, Buffer.ACT)
        ctx.set(dut.snoop.addr, 3)
        ctx.set(dut.snoop.mask, 0x0F)
        await ctx.tick()
        ctx.set(dut.snoop.en, 0)
        for slot in (1, 0, 1):
            value, cycles = await read(ctx, 3 * WORD + 32 * slot)
            got.append((slot, value, cycles))
            assert value == mem[3] >> (32 * slot) & 0xFFFFFFFF, f"seed {seed}: slot {slot}"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(memory)
    sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("slot_snoop", [False, True])
def test_a_write_forgets_the_word_or_only_its_slot(slot_snoop, seed):
    got = _run(slot_snoop, seed)
    cycles = [c for _, _, c in got]
    if slot_snoop:  # the neighbour is a hit; the written slot is read again, then a hit
        assert cycles[0] == 0 and cycles[1] > 0 and cycles[2] == 0, f"seed {seed}: {got}"
    else:  # the whole word is read again on the first read after the write
        assert cycles[0] > 0 and cycles[1] == 0 and cycles[2] == 0, f"seed {seed}: {got}"
