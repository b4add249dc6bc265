"""cocotb bench for the accelerator top (``hw/accelerator.py``) as the host drives a kernel.

Every external-memory channel and the instruction port are cocotbext-axi ``AxiRam`` models
whose channels pause at random; the host side is an ``AxiLiteMaster`` on the control slave.
For each run of the spec (``$LLMACC_VECTORS``): load the run's channel images if it has
any, write the program into the instruction RAM, set the arguments, enable the ap_done
interrupt, start, wait for the interrupt, and record ``status``, ``cycles``, the
performance counters and every channel's bytes. The pytest side compares them with the
emulator.
"""

import json

import cocotb
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

from hw.axi import ARGS
from sim.benches.common import load_vectors, seeded_rng, start_clock_and_reset, wait_high

CONTROL, PROGRAM_LO, PROGRAM_HI, PROGRAM_WORDS, STATUS, CYCLES_LO, CYCLES_HI, HW_ID = (
    0x00, 0x10, 0x14, 0x18, 0x1C, 0x20, 0x24, 0x28)
GIE, IER, ISR = 0x04, 0x08, 0x0C


def _pauses(rng, p):
    while True:
        yield int(rng.random() < p)


def _ram(dut, prefix: str, size: int, rng, pause: float) -> AxiRam:
    ram = AxiRam(AxiBus.from_prefix(dut, prefix), dut.clk, dut.rst, size=size)
    for ch in (ram.write_if.aw_channel, ram.write_if.w_channel, ram.write_if.b_channel,
               ram.read_if.ar_channel, ram.read_if.r_channel):
        ch.set_pause_generator(_pauses(rng, pause))
    return ram


@cocotb.test()
async def accelerator_runs(dut):
    rng = seeded_rng(dut)
    spec = load_vectors()
    await start_clock_and_reset(dut)
    lite = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control_"), dut.clk, dut.rst)
    insn = _ram(dut, "m_axi_insn_", spec["insn_bytes"], rng, spec["pause"])
    chans = [_ram(dut, f"m_axi_ch{c}_", spec["channel_bytes"], rng, spec["pause"])
             for c in range(len(spec["channels"]))]
    for ram, image in zip(chans, spec["channels"], strict=True):
        ram.write(0, bytes.fromhex(image))
    assert await lite.read_dword(HW_ID) == spec["hw_id"], "hw_id register"
    await lite.write_dword(GIE, 1)
    await lite.write_dword(IER, 1)
    results = []
    for index, run in enumerate(spec["runs"]):
        for ram, image in zip(chans, run.get("channels", []), strict=False):
            ram.write(0, bytes.fromhex(image))  # the run's own starting memory
        program = bytes.fromhex(run["program"])
        insn.write(0, program)
        await lite.write_dword(PROGRAM_LO, 0)
        await lite.write_dword(PROGRAM_HI, 0)
        await lite.write_dword(PROGRAM_WORDS, len(program) // 16)
        await lite.write_dword(CONTROL, 1)
        if not await wait_high(dut.interrupt, spec["max_cycles"]):
            raise AssertionError(f"run {index}: no ap_done after {spec['max_cycles']} cycles")
        assert await lite.read_dword(CONTROL) & 0x2, f"run {index}: ap_done not set"
        await lite.write_dword(ISR, 1)  # toggle-on-write: clear the ap_done interrupt
        status = await lite.read_dword(STATUS)
        cycles = await lite.read_dword(CYCLES_LO) | await lite.read_dword(CYCLES_HI) << 32
        counters = {name: await lite.read_dword(offset) for name, offset, _ in ARGS
                    if name.startswith(("busy_", "stall_", "dispatched"))}
        results.append({"status": status, "cycles": cycles, "counters": counters,
                        "channels": [ram.read(0, spec["channel_bytes"]).hex() for ram in chans]})
        dut._log.info("run %d: status %#x after %d cycles", index, status, cycles)
    with open(spec["out"], "w") as f:
        json.dump(results, f)
