"""cocotb benches for hw/axi.py against cocotbext-axi models, with random back-pressure.

``axi_copy``: a read master and a write master joined by a FIFO copy seeded random regions
of a cocotbext-axi ``AxiRam`` whose every channel pauses at random; the copy must equal the
source byte for byte, including bursts split at 4 KiB boundaries.
``control_slave``: the ap_ctrl protocol and argument registers through ``AxiLiteMaster``.
"""

import os

import cocotb
from cocotb.triggers import ClockCycles, FallingEdge
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

from sim.benches.common import seeded_rng, send, start_clock_and_reset


def _pauses(rng, p):
    while True:
        yield int(rng.random() < p)


@cocotb.test()
async def axi_copy(dut):
    rng = seeded_rng(dut)
    await start_clock_and_reset(dut)
    ram = AxiRam(AxiBus.from_prefix(dut, "m_axi_"), dut.clk, dut.rst, size=1 << 16)
    for ch in (ram.write_if.aw_channel, ram.write_if.w_channel, ram.write_if.b_channel,
               ram.read_if.ar_channel, ram.read_if.r_channel):
        ch.set_pause_generator(_pauses(rng, 0.3))
    nbytes = len(dut.m_axi__wdata) // 8
    dut.cmd__valid.value = 0
    copies = 0
    for trial in range(25):
        beats = rng.choice([1, 2, 255, 256, 257, 600, rng.randint(1, 700)])
        src = rng.randrange(0, (1 << 15) - beats * nbytes) // nbytes * nbytes
        dst = (1 << 15) + rng.randrange(0, (1 << 15) - beats * nbytes) // nbytes * nbytes
        payload = bytes(rng.getrandbits(8) for _ in range(beats * nbytes))
        ram.write(src, payload)
        await send(dut.clk, dut.cmd__valid, dut.cmd__ready, dut.cmd__payload,
                   src | dst << 32 | beats << 64)
        await FallingEdge(dut.clk)
        dut.cmd__valid.value = 0
        await ClockCycles(dut.clk, 2)
        for _ in range(100000):
            await FallingEdge(dut.clk)
            if dut.idle.value:
                break
        assert not dut.error.value, f"trial {trial}: AXI error response"
        got = ram.read(dst, len(payload))
        if got != payload:
            first = next(i for i in range(len(got)) if got[i] != payload[i])
            raise AssertionError(f"trial {trial}: copy of {beats} beats {src:#x} -> {dst:#x} "
                                 f"differs first at byte {first}")
        copies += 1
    dut._log.info("%d copies checked", copies)


@cocotb.test()
async def control_slave(dut):
    rng = seeded_rng(dut)
    dut.finish.value = 0
    await start_clock_and_reset(dut)
    lite = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_"), dut.clk, dut.rst)
    assert await lite.read_dword(0x00) & 0x4, "ap_idle after reset"
    values = {0x10: rng.getrandbits(32), 0x14: rng.getrandbits(32), 0x18: rng.getrandbits(32)}
    for addr, v in values.items():
        await lite.write_dword(addr, v)
    for addr, v in values.items():
        assert await lite.read_dword(addr) == v
    assert int(dut.program_lo.value) == values[0x10]
    assert await lite.read_dword(0x28) == int(os.environ["LLMACC_HW_ID"])
    await lite.write_dword(0x04, 1)  # GIE
    await lite.write_dword(0x08, 1)  # IER: ap_done
    starts = []

    async def watch_start():
        while True:
            await FallingEdge(dut.clk)
            if dut.start.value:
                starts.append(1)

    cocotb.start_soon(watch_start())
    await lite.write_dword(0x00, 1)  # ap_start
    await ClockCycles(dut.clk, 3)
    assert len(starts) == 1, f"ap_start reached the kernel {len(starts)} times"
    ctrl = await lite.read_dword(0x00)
    assert not ctrl & 0x4, "not idle while running"
    await FallingEdge(dut.clk)
    dut.status.value = 0x00050101
    dut.finish.value = 1
    await FallingEdge(dut.clk)
    dut.finish.value = 0
    assert dut.interrupt.value == 1
    ctrl = await lite.read_dword(0x00)
    assert ctrl & 0x2 and ctrl & 0x4, f"ap_done/ap_idle after finish: {ctrl:#x}"
    assert not await lite.read_dword(0x00) & 0x2, "ap_done is clear-on-read"
    assert await lite.read_dword(0x1C) == 0x00050101
    await lite.write_dword(0x0C, 1)  # acknowledge the interrupt (toggle)
    await FallingEdge(dut.clk)
    assert dut.interrupt.value == 0
