"""cocotb bench: hw.controller.Controller with unit models of random latency.

Reads the program words from ``$LLMACC_VECTORS``, feeds them (with idle cycles), lets each
unit accept issues and complete them after a random delay, and writes the issue and
completion log and the final status registers for ``tests/test_controller.py`` to check
against the ISA's token semantics.
"""

import json

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from sim.benches.common import load_vectors, seeded_rng, send, start_clock_and_reset

UNITS = ("load", "compute", "sfu", "store")


@cocotb.test()
async def controller_schedule(dut):
    rng = seeded_rng(dut)
    spec = load_vectors()
    words = [int(w, 16) for w in spec["words"]]
    dut.insn__valid.value = 0
    dut.start.value = 0
    for u in UNITS:
        getattr(dut, f"issue_{u}__ready").value = 0
        getattr(dut, f"complete_{u}").value = 0
    await start_clock_and_reset(dut)
    log = {"issues": [], "completions": []}
    clock = {"cycle": 0}

    async def count():
        while True:
            await RisingEdge(dut.clk)
            clock["cycle"] += 1

    async def feed():
        await FallingEdge(dut.clk)
        dut.start.value = 1
        await FallingEdge(dut.clk)
        dut.start.value = 0
        for w in words:
            if not await send(dut.clk, dut.insn__valid, dut.insn__ready, dut.insn__payload, w,
                              rng=rng, idle=0.2, abort=dut.error):
                return
        await FallingEdge(dut.clk)
        dut.insn__valid.value = 0

    async def unit(index, name):
        port_ready = getattr(dut, f"issue_{name}__ready")
        port_valid = getattr(dut, f"issue_{name}__valid")
        payload = getattr(dut, f"issue_{name}__payload")
        complete = getattr(dut, f"complete_{name}")
        while True:
            await FallingEdge(dut.clk)
            port_ready.value = 1
            await ReadOnly()
            if not port_valid.value:
                continue
            raw = int(payload.value)
            await RisingEdge(dut.clk)
            log["issues"].append([clock["cycle"], index, hex(raw)])
            await FallingEdge(dut.clk)
            port_ready.value = 0
            for _ in range(rng.randint(0, 6)):
                await FallingEdge(dut.clk)
            complete.value = 1
            await FallingEdge(dut.clk)
            complete.value = 0
            log["completions"].append([clock["cycle"], index, hex(raw)])

    cocotb.start_soon(count())
    cocotb.start_soon(feed())
    for i, u in enumerate(UNITS):
        cocotb.start_soon(unit(i, u))
    for _ in range(spec["max_cycles"]):
        await RisingEdge(dut.clk)
        await ReadOnly()
        if dut.done.value or dut.error.value:
            break
    state = {name: int(getattr(dut, name).value) for name in
             ("done", "error", "status", "fault_pc", "cycles", "dispatched")}
    for u in UNITS:
        for kind in ("busy", "stall"):
            state[f"{kind}_cycles_{u}"] = int(getattr(dut, f"{kind}_cycles_{u}").value)
    log["state"] = state
    with open(spec["out"], "w") as f:
        json.dump(log, f)
