"""AXI4 masters and the AXI4-Lite ap_ctrl slave against cocotbext-axi models (Verilator),
plus a fast Amaranth check of the burst rule."""

import pytest
from amaranth.hdl import Module
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.data import StructLayout
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.axi import AxiReadMaster, AxiWriteMaster, ControlSlave, axi_signature, join_port
from sim import verilator

HW_ID = 0x1234ABCD


class CopyTop(wiring.Component):
    """Test top: read ``beats`` words at ``src`` and write them at ``dst`` on one port."""

    def __init__(self, data_bits: int = 64):
        self.data_bits = data_bits
        super().__init__({
            "cmd": In(stream.Signature(StructLayout({"src": 32, "dst": 32, "beats": 20}))),
            "m_axi": Out(axi_signature(32, data_bits)),
            "idle": Out(1), "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.rd = rd = AxiReadMaster(32, self.data_bits)
        m.submodules.wr = wr = AxiWriteMaster(32, self.data_bits)
        m.submodules.q = q = fifo.SyncFIFOBuffered(width=self.data_bits, depth=16)
        cmd = self.cmd
        m.d.comb += [rd.cmd.payload.addr.eq(cmd.payload.src), rd.cmd.payload.beats.eq(
            cmd.payload.beats), wr.cmd.payload.addr.eq(cmd.payload.dst),
            wr.cmd.payload.beats.eq(cmd.payload.beats),
            cmd.ready.eq(rd.cmd.ready & wr.cmd.ready),
            rd.cmd.valid.eq(cmd.valid & cmd.ready), wr.cmd.valid.eq(cmd.valid & cmd.ready),
            q.w_data.eq(rd.data.payload), q.w_en.eq(rd.data.valid), rd.data.ready.eq(q.w_rdy),
            wr.data.payload.eq(q.r_data), wr.data.valid.eq(q.r_rdy), q.r_en.eq(wr.data.ready),
            self.idle.eq(rd.idle & wr.idle & ~q.r_rdy), self.error.eq(rd.error | wr.error)]
        join_port(m, self.m_axi, rd, wr)
        return m


def test_read_bursts_respect_4k_and_256(seed):
    dut = AxiReadMaster(32, 64)
    bursts = []

    async def bench(ctx):
        ctx.set(dut.cmd.payload.addr, 4096 - 64)
        ctx.set(dut.cmd.payload.beats, 600)
        ctx.set(dut.cmd.valid, 1)
        await ctx.tick()
        ctx.set(dut.cmd.valid, 0)
        ctx.set(dut.axi.arready, 1)
        for _ in range(20):
            _, _, v, a, ln = await ctx.tick().sample(dut.axi.arvalid, dut.axi.araddr,
                                                     dut.axi.arlen)
            if v:
                bursts.append((a, ln + 1))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert bursts[:4] == [(4032, 8), (4096, 256), (4096 + 2048, 256), (8192, 80)], bursts


@pytest.mark.verilator
def test_axi_masters_copy_under_backpressure(verilator_env, seed):
    model = verilator.build(CopyTop(), "axi_copy")
    tests, failed = model.run("sim.benches.tb_axi", seed=seed,
                              extra_env={"COCOTB_TEST_FILTER": "axi_copy"})
    assert failed == 0 and tests == 1, f"seed {seed}"


@pytest.mark.verilator
def test_control_slave_ap_ctrl(verilator_env, seed):
    model = verilator.build(ControlSlave(HW_ID), "control_slave")
    tests, failed = model.run("sim.benches.tb_axi", seed=seed,
                              extra_env={"COCOTB_TEST_FILTER": "control_slave",
                                         "LLMACC_HW_ID": str(HW_ID)})
    assert failed == 0 and tests == 1, f"seed {seed}"
