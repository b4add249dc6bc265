"""``hw.buffer_access.FieldFetch``: fields from a served buffer, its two-word cache, and what
the unit's own writes do to it -- a whole word forgotten, or (``slot_snoop``) the written
32-bit slot only, its neighbours still hits and the written slot read again; a read-ahead
fetch's walks of runs, each run's value and cycles as the cycle model prices them."""

import random

import pytest
from amaranth.sim import Simulator

from hw.buffer_access import FieldFetch
from llmacc.config import preset
from llmacc.isa import Buffer
from sim.compute_timing import Fetch

CFG = preset("sim-small")  # 64-bit words: two slots each
WORD = CFG.axi_data_bits


def _run(slot_snoop: bool, seed: int) -> list[tuple[int, int, int]]:
    """Read slot 0 of word 3, write it (and the buffer), then read slots 1, 0 and 1 of word
    3: (slot, value, cycles until ready) per read after the write."""
    rng = random.Random(seed)
    mem = [rng.getrandbits(WORD) for _ in range(8)]
    dut = FieldFetch(CFG, slot_snoop=slot_snoop)
    got = []

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

    _simulate(dut, mem, bench)
    return got


def _simulate(dut: FieldFetch, mem: list[int], bench) -> None:
    """Run ``bench`` against ``dut`` over ``mem``, a memory that grants every read and
    gives the word a cycle later."""
    async def memory(ctx):
        async for _, _, en, addr in ctx.tick().sample(dut.port.en, dut.port.addr):
            ctx.set(dut.port.grant, 1)
            if en:
                ctx.set(dut.port.data, mem[addr])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(memory)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize("slot_snoop", [False, True])
def test_a_write_forgets_the_word_or_only_its_slot(slot_snoop, seed):
    got = _run(slot_snoop, seed)
    cycles = [c for _, _, c in got]
    if slot_snoop:  # the neighbour is a hit; the written slot is read again, then a hit
        assert cycles[0] == 0 and cycles[1] > 0 and cycles[2] == 0, f"seed {seed}: {got}"
    else:  # the whole word is read again on the first read after the write
        assert cycles[0] > 0 and cycles[1] == 0 and cycles[2] == 0, f"seed {seed}: {got}"


def _walk(cfg, run_bits: int, walks: list[tuple[int, int, int]], seed: int) -> list[int]:
    """Cycles of each run of ``walks`` (bit, stride, count) on a read-ahead fetch over a
    memory that grants every read, each run asked for as soon as the one before is served;
    every run's value is checked."""
    rng = random.Random(seed)
    wb = cfg.axi_data_bits
    mem = [rng.getrandbits(wb) for _ in range(64)]
    dut = FieldFetch(cfg, run_bits=run_bits, read_ahead=True)
    got = []

    async def bench(ctx):
        ctx.set(dut.port.grant, 1)
        ctx.set(dut.req.payload.buf, Buffer.ACT)
        ctx.set(dut.req.payload.run, 1)
        for bit0, stride, count in walks:
            for i in range(count):
                bit = bit0 + i * stride
                ctx.set(dut.req.valid, 1)
                ctx.set(dut.req.payload.bit, bit)
                cycles = 1
                while not ctx.get(dut.req.ready):
                    await ctx.tick()
                    cycles += 1
                word, offset = divmod(bit, wb)
                want = mem[word] >> (offset - offset % run_bits) & ((1 << run_bits) - 1)
                assert ctx.get(dut.run) == want, f"seed {seed}: run at bit {bit}"
                got.append(cycles)
                await ctx.tick()
        ctx.set(dut.req.valid, 0)

    _simulate(dut, mem, bench)
    return got


@pytest.mark.parametrize("runs_per_word", [1, 2, 4])
def test_read_ahead_walks_cost_what_the_model_says(runs_per_word, seed):
    """Walks of runs (one to four a word; on, back, and far away) on a read-ahead fetch:
    the cycles of every run equal ``Fetch.ahead``'s, and no walk waits at a word's end once
    the word holds three runs or more."""
    cfg = preset("sim-wide").replace(axi_data_bits=512)
    wb = cfg.axi_data_bits
    run_bits = wb // runs_per_word
    rng = random.Random(seed)
    walks = []
    at = 2 * wb
    for _ in range(6):
        count = rng.randint(1, 3 * runs_per_word + 2)
        walks.append((at, run_bits, count))
        at = rng.choice((at + count * run_bits, at + count * run_bits + wb, wb, 20 * wb))
    got = _walk(cfg, run_bits, walks, seed)
    model, want = Fetch(wb), []
    for bit, stride, count in walks:
        want += [model.ahead(bit + i * stride) for i in range(count)]
    assert got == want, f"seed {seed}: {walks}"
    if runs_per_word >= 3:
        assert max(got[1:walks[0][2]]) == 1, f"seed {seed}: {got}"
