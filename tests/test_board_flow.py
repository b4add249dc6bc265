"""The board flow without vendor tools: the generated tree, its consistency with the RTL
register map, Verilator lint of the kernel wrapper, and the tool calls (with stand-in tools)."""

import json
import os
import re

import pytest
from amaranth.sim import Simulator

from boards import kernel_xml, vitis_flow
from boards.alveo import BOARDS
from hw.axi import ControlSlave
from llmacc.config import preset
from llmacc.kernel import kernel_args, master_ports, register_map
from sim import verilator

SMALL = preset("sim-small")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """``llmacc bitstream`` for the U280 board with the sim-small configuration."""
    out = tmp_path_factory.mktemp("bitstream") / "u280-sim-small"
    info = vitis_flow.generate(BOARDS["u280"], "sim-small", out, memory_bytes=8 << 30,
                               timeout_s=900)
    return out, info


def test_tree_is_complete(tree):
    out, info = tree
    assert info["verilog_problem"] is None
    for name in ("rtl/llmacc_top.v", "rtl/engine_lane_16_4.v", "rtl/llmacc.v", "kernel.xml",
                 "package_xo.tcl", "link.cfg", "build.sh", "flow.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert json.loads((out / "flow.json").read_text())["fingerprint"] == \
        f"{SMALL.fingerprint():#010x}"
    assert os.access(out / "build.sh", os.X_OK)


@pytest.mark.parametrize("name", ["sim-small", "u280"])
def test_kernel_xml_matches_the_register_map(name):
    """Every argument covers the writable registers at its offset, pointers address the
    port whose base register it is, and each master port appears once."""
    cfg = preset(name)
    ports, args = kernel_xml.parse(kernel_xml.render(cfg))
    assert list(ports) == master_ports(cfg) and set(ports.values()) == {cfg.axi_data_bits}
    writable = {r.offset: r for r in register_map(cfg.mem_channels) if r.access == "rw"}
    covered = set()
    for index, arg in enumerate(args):
        assert arg.index == index
        offsets = range(arg.offset, arg.offset + arg.size, 4)
        assert all(o in writable and writable[o].arg == arg.name for o in offsets), arg
        assert arg.pointer == (arg.size == 8) == bool(writable[arg.offset].port)
        if arg.pointer:
            assert arg.port == writable[arg.offset].port
        covered.update(offsets)
    assert covered == set(writable)
    assert [a.name for a in args] == [a.name for a in kernel_args(cfg)]


def test_control_slave_decodes_every_kernel_argument(seed):
    """Write each kernel.xml argument over AXI4-Lite as XRT would; the RTL's argument
    outputs and read-back hold the values."""
    import random

    rng = random.Random(seed)
    _, args = kernel_xml.parse(kernel_xml.render(SMALL))
    dut = ControlSlave(SMALL.fingerprint(), SMALL.mem_channels)
    regs = {r.offset: r for r in register_map(SMALL.mem_channels)}
    values = {o: rng.getrandbits(32) for a in args for o in range(a.offset, a.offset + a.size,
                                                                   4)}
    seen = {}

    async def bench(ctx):
        bus = dut.s_axi
        for offset, value in values.items():
            ctx.set(bus.awaddr, offset)
            ctx.set(bus.wdata, value)
            ctx.set(bus.awvalid, 1)
            ctx.set(bus.wvalid, 1)
            ctx.set(bus.bready, 1)
            await ctx.tick().until(bus.awready)
            ctx.set(bus.awvalid, 0)
            ctx.set(bus.wvalid, 0)
            await ctx.tick()
        for offset in values:
            seen[offset] = ctx.get(getattr(dut, regs[offset].name))
            ctx.set(bus.araddr, offset)
            ctx.set(bus.arvalid, 1)
            ctx.set(bus.rready, 1)
            await ctx.tick().until(bus.arready)
            ctx.set(bus.arvalid, 0)
            await ctx.tick().until(bus.rvalid)
            assert ctx.get(bus.rdata) == values[offset], f"read back {offset:#x}"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen == values, f"seed {seed}"


def test_link_config_connects_every_port(tree):
    out, _ = tree
    text = (out / "link.cfg").read_text()
    sps = dict(re.findall(r"^sp=llmacc_1\.(\w+):(\S+)$", text, re.M))
    assert list(sps) == master_ports(SMALL)
    assert sps["m_axi_ch0"] == "HBM[0]" and sps["m_axi_insn"] == "DDR[0]"
    assert "platform=xilinx_u280_gen3x16_xdma_1_202211_1" in text
    assert re.search(r"^freqHz=100000000:llmacc_1\.ap_clk$", text, re.M)  # the config's clock
    tcl = (out / "package_xo.tcl").read_text()
    for port in ("s_axi_control", *master_ports(SMALL)):
        assert f"-busif {port} -clock ap_clk" in tcl
    assert "-kernel_xml $root/kernel.xml" in tcl and "xcu280-fsvh2892-2L-e" in tcl


@pytest.mark.verilator
def test_kernel_wrapper_lints_clean(tree, verilator_env):
    out, _ = tree
    done = verilator.lint_files(sorted((out / "rtl").glob("*.v")), "llmacc", out)
    assert done.returncode == 0, done.stderr[-3000:]


def _flow(tmp_path, monkeypatch, capsys, *extra) -> tuple[int, str]:
    monkeypatch.setattr(vitis_flow, "generate", lambda b, c, out, **kw: (
        out.mkdir(parents=True, exist_ok=True),
        (out / "build.sh").write_text("#!/bin/sh\necho built > \"$(dirname \"$0\")/ran\"\n"),
        (out / "build.sh").chmod(0o755),
        {"files": ["build.sh"], "fingerprint": "0x0", "verilog_problem": None})[-1])
    code = vitis_flow.main(["--board", "u280", "--config", "sim-small", "-o",
                            str(tmp_path / "tree"), *extra])
    return code, capsys.readouterr().out


def test_missing_tools_stop_with_a_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("REQUIRE_VIVADO", raising=False)
    code, out = _flow(tmp_path, monkeypatch, capsys)
    assert code == 0 and "vivado and v++ not on PATH" in out and "build.sh" in out
    code, out = _flow(tmp_path, monkeypatch, capsys, "--require-vivado")
    assert code == 1 and not (tmp_path / "tree" / "ran").exists()


def test_tools_on_path_run_the_build(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("vivado", "v++"):
        (bin_dir / tool).write_text("#!/bin/sh\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    code, out = _flow(tmp_path, monkeypatch, capsys)
    assert code == 0 and (tmp_path / "tree" / "ran").read_text() == "built\n"
    assert "xclbin=" in out


def test_unknown_board_is_refused():
    with pytest.raises(ValueError, match="unknown board 'u9'"):
        vitis_flow.main(["--board", "u9", "--config", "sim-small"])
