"""cocotb bench for the accelerator top (``hw/accelerator.py``) as the host drives a kernel.

Every external-memory channel and the instruction port are cocotbext-axi ``AxiRam`` models
whose channels pause at random; the host side is an ``AxiLiteMaster`` on the control slave.
Channel ``c``'s image lies at ``spec["bases"][c]`` in its RAM and the program at
``spec["program_base"]``, as XRT would place buffers; the kernel arguments carry the bases.
For each run of the spec (``$LLMACC_VECTORS``): load the run's channel images if it has
any, write the program into the instruction RAM, set the arguments, enable the ap_done
interrupt, start, wait for the interrupt, and record ``status``, ``cycles``, the
performance counters and every channel's bytes. The pytest side compares them with the
emulator.
"""

import json

import cocotb
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

from hw.axi import COUNTER_PREFIXES, register_map
from sim.benches.common import (
    CONTROL,
    GIE,
    IER,
    ISR,
    load_vectors,
    seeded_rng,
    start_clock_and_reset,
    wait_high,
)


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
    nchan, size = len(spec["channels"]), spec["channel_bytes"]
    bases, pbase = spec.get("bases", [0] * nchan), spec.get("program_base", 0)
    reg = {r.name: r.offset for r in register_map(nchan)}
    insn = _ram(dut, "m_axi_insn_", pbase + spec["insn_bytes"], rng, spec["pause"])
    chans = [_ram(dut, f"m_axi_ch{c}_", bases[c] + size, rng, spec["pause"])
             for c in range(nchan)]
    for ram, base, image in zip(chans, bases, spec["channels"], strict=True):
        ram.write(base, bytes.fromhex(image))
    assert await lite.read_dword(reg["hw_id"]) == spec["hw_id"], "hw_id register"
    for c, base in enumerate(bases):
        await lite.write_dword(reg[f"ch{c}_lo"], base & 0xFFFFFFFF)
        await lite.write_dword(reg[f"ch{c}_hi"], base >> 32)
    await lite.write_dword(GIE, 1)
    await lite.write_dword(IER, 1)
    results = []
    for index, run in enumerate(spec["runs"]):
        for ram, base, image in zip(chans, bases, run.get("channels", []), strict=False):
            ram.write(base, bytes.fromhex(image))  # the run's own starting memory
        program = bytes.fromhex(run["program"])
        insn.write(pbase, program)
        await lite.write_dword(reg["program_lo"], pbase & 0xFFFFFFFF)
        await lite.write_dword(reg["program_hi"], pbase >> 32)
        await lite.write_dword(reg["program_words"], len(program) // 16)
        await lite.write_dword(CONTROL, 1)
        if not await wait_high(dut.interrupt, spec["max_cycles"]):
            raise AssertionError(f"run {index}: no ap_done after {spec['max_cycles']} cycles")
        assert await lite.read_dword(CONTROL) & 0x2, f"run {index}: ap_done not set"
        await lite.write_dword(ISR, 1)  # toggle-on-write: clear the ap_done interrupt
        status = await lite.read_dword(reg["status"])
        cycles = await lite.read_dword(reg["cycles_lo"]) | await lite.read_dword(
            reg["cycles_hi"]) << 32
        counters = {name: await lite.read_dword(offset) for name, offset in reg.items()
                    if name.startswith(COUNTER_PREFIXES)}
        results.append({"status": status, "cycles": cycles, "counters": counters,
                        "channels": [ram.read(base, size).hex()
                                     for ram, base in zip(chans, bases, strict=True)]})
        dut._log.info("run %d: status %#x after %d cycles", index, status, cycles)
    with open(spec["out"], "w") as f:
        json.dump(results, f)
