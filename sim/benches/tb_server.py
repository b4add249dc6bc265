"""cocotb bench that serves the accelerator top to the host runtime's RTL back end.

The host (``host/rtl_device.py``) listens on ``$LLMACC_SERVER`` (``host:port``); this bench
connects and executes one JSON command per line, answering each with one JSON line:

* ``{"op": "write", "chan", "addr", "data": hex}`` -- into the channel's AXI RAM model;
* ``{"op": "read", "chan", "addr", "nbytes"}`` -- answers ``{"data": hex}``;
* ``{"op": "run", "program": hex}`` -- writes the program to the instruction RAM, starts the
  kernel through the AXI4-Lite control slave, waits for the interrupt and answers
  ``{"status", "cycles", "counters"}`` (the performance counters of ``hw.axi.register_map``);
* ``{"op": "quit"}``.

Simulated time only advances inside ``run``; while the host thinks, the simulator waits in
the blocking read of the next command.
"""

import json
import logging
import os
import socket

import cocotb
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

from hw.axi import ARGS, COUNTER_PREFIXES
from sim.benches.common import CONTROL, GIE, IER, ISR, start_clock_and_reset, wait_high

REG = {r.name: r.offset for r in ARGS}  #: the channel bases stay 0: each RAM starts at 0


@cocotb.test()
async def serve(dut):
    host, port = os.environ["LLMACC_SERVER"].rsplit(":", 1)
    sizes = json.loads(os.environ["LLMACC_CHANNELS"])
    insn_bytes = int(os.environ["LLMACC_INSN_BYTES"])
    max_cycles = int(os.environ.get("LLMACC_MAX_CYCLES", str(1 << 31)))
    await start_clock_and_reset(dut)
    lite = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control_"), dut.clk, dut.rst)
    insn = AxiRam(AxiBus.from_prefix(dut, "m_axi_insn_"), dut.clk, dut.rst, size=insn_bytes)
    chans = [AxiRam(AxiBus.from_prefix(dut, f"m_axi_ch{c}_"), dut.clk, dut.rst, size=size)
             for c, size in enumerate(sizes)]
    for ram in (insn, *chans):  # one log line per burst would dominate a long run
        ram.read_if.log.setLevel(logging.WARNING)
        ram.write_if.log.setLevel(logging.WARNING)
    await lite.write_dword(GIE, 1)
    await lite.write_dword(IER, 1)
    with socket.create_connection((host, int(port))) as conn, \
            conn.makefile("rw", encoding="ascii") as stream:
        for line in stream:
            cmd = json.loads(line)
            op = cmd["op"]
            if op == "quit":
                break
            if op == "write":
                chans[cmd["chan"]].write(cmd["addr"], bytes.fromhex(cmd["data"]))
                answer = {}
            elif op == "read":
                answer = {"data": chans[cmd["chan"]].read(cmd["addr"], cmd["nbytes"]).hex()}
            elif op == "run":
                program = bytes.fromhex(cmd["program"])
                if len(program) > insn_bytes:
                    answer = {"error": f"program of {len(program)} bytes exceeds the "
                                       f"{insn_bytes}-byte instruction memory"}
                else:
                    answer = await _run(dut, lite, insn, program, max_cycles)
            else:
                answer = {"error": f"unknown command {op!r}"}
            stream.write(json.dumps(answer) + "\n")
            stream.flush()


async def _run(dut, lite, insn, program: bytes, max_cycles: int) -> dict:
    insn.write(0, program)
    await lite.write_dword(REG["program_lo"], 0)
    await lite.write_dword(REG["program_hi"], 0)
    await lite.write_dword(REG["program_words"], len(program) // 16)
    await lite.write_dword(CONTROL, 1)
    if not await wait_high(dut.interrupt, max_cycles):
        return {"error": f"no ap_done after {max_cycles} cycles"}
    await lite.read_dword(CONTROL)  # clears ap_done
    await lite.write_dword(ISR, 1)
    status = await lite.read_dword(REG["status"])
    cycles = await lite.read_dword(REG["cycles_lo"]) | await lite.read_dword(
        REG["cycles_hi"]) << 32
    counters = {name: await lite.read_dword(offset) for name, offset in REG.items()
                if name.startswith(COUNTER_PREFIXES)}
    return {"status": status, "cycles": cycles, "counters": counters}
