"""``make bench-rtl``: the streaming read path as built, on one channel's share of real work.

For each workload -- one LLaMA2-7B MATVEC (K = 4096 or 11008) in a weight format, dense or
8:16 sparse -- a channel's rows (``ceil(N / mem_channels)`` of them, one contiguous weight
record each: codes, indices and row record, as ``llmacc.layout`` sizes them) stream through
:class:`hw.weight_streamer.WeightStreamer` from the HBM channel model
(``sim/hbm_model.py``) in Amaranth's simulator, to a consumer that never stalls. Printed per
workload: the words, the RTL's cycles, the cycle model's (``sim.cycle_model.stream_cycles``),
and the read channel's utilisation in steady state (bytes per cycle over the channel's peak).
The last line is ``read_utilization=<min over workloads> model_error=<max |model - RTL| /
RTL>``.

Then the channel slice: two of the workloads on 1, 2 and 4 channels at once, read in
lockstep as the lanes will (:class:`hw.weight_streamer.ChannelSlice`, each channel with its
own HBM model), with the cycles against one channel's; ``slice_spread`` is the largest
relative difference. What it does not yet cover: the lanes behind the FIFOs (the consumer
always takes).
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path

from hw.weight_streamer import ChannelSlice, WeightStreamer
from llmacc import config
from llmacc import layout as L
from llmacc.isa import Sparsity, WeightFormat
from sim import cycle_model as C
from sim import hbm_model as H

#: LLaMA2-7B's MATVEC shapes (N output rows, K inputs): q/k/v/o, gate/up, down.
SHAPES = {"attn 4096x4096": (4096, 4096), "ffn-up 11008x4096": (11008, 4096),
          "ffn-down 4096x11008": (4096, 11008)}
FORMATS = (WeightFormat.W2, WeightFormat.MIXED3, WeightFormat.MIXED4, WeightFormat.INT8)
SPARSITIES = (Sparsity.DENSE, Sparsity.N8M16)


@dataclass(frozen=True)
class Workload:
    name: str
    rows: int  #: the channel's share of the output rows
    row_words: int  #: words of one row's weight record


@dataclass(frozen=True)
class Result:
    workload: Workload
    rtl_cycles: int
    model_cycles: int
    utilization: float

    @property
    def model_error(self) -> float:
        return abs(self.model_cycles - self.rtl_cycles) / self.rtl_cycles


def workloads(cfg: config.AccelConfig, group: int) -> list[Workload]:
    """Every shape x format x sparsity, as one channel's rows of ``cfg``."""
    w, out = cfg.axi_data_bytes, []
    for shape, (n, k) in SHAPES.items():
        for fmt in FORMATS:
            for sparsity in SPARSITIES:
                desc = L.Descriptor.of(fmt, L.SPARSITY_NM[sparsity], group)
                words = desc.wgt_pitch(k, w) + desc.meta_pitch(k, w)
                out.append(Workload(f"{shape} {fmt.name} {sparsity.name}",
                                    -(-n // cfg.mem_channels), words))
    return out


def run_one(cfg: config.AccelConfig, load: Workload, seed: int) -> Result:
    """One workload through the streamer; its words are checked against memory."""
    w = cfg.axi_data_bytes
    rng = random.Random(seed)
    memory = rng.randbytes(load.rows * load.row_words * w)
    rows = [(r * load.row_words * w, load.row_words) for r in range(load.rows)]
    timing = H.HbmTiming.of(cfg)
    dut = WeightStreamer(cfg.axi_addr_bits, cfg.axi_data_bits)
    report = H.run_in_amaranth(dut, H.stream_bench, memory, rows, w, cfg.axi_addr_bits,
                               timing, rng)
    if report.words != H.expected_words(memory, rows, w):
        raise AssertionError(f"{load.name}: the streamed words differ from memory")
    model = C.stream_cycles(cfg, load.rows * load.row_words)
    return Result(load, report.cycles, model, report.utilization(w, timing))


#: The slice runs: these workloads on 1, 2 and 4 channels in lockstep.
SLICE_WORKLOADS = ("attn 4096x4096 W2 DENSE", "attn 4096x4096 INT8 DENSE")
SLICE_CHANNELS = (1, 2, 4)


@dataclass(frozen=True)
class SliceResult:
    workload: Workload
    channels: int
    cycles: int
    utilization: float  #: the least utilised channel's


def run_slice(cfg: config.AccelConfig, load: Workload, channels: int, seed: int) -> SliceResult:
    """One workload on each of ``channels`` channels at once, the lanes taking a word of
    every channel per cycle (:class:`hw.weight_streamer.ChannelSlice`); words checked."""
    w = cfg.axi_data_bytes
    rng = random.Random(seed)
    memories = [rng.randbytes(load.rows * load.row_words * w) for _ in range(channels)]
    rows = [(r * load.row_words * w, load.row_words) for r in range(load.rows)]
    timing = H.HbmTiming.of(cfg)
    dut = ChannelSlice(channels, cfg.axi_addr_bits, cfg.axi_data_bits)
    words, cycles, reports = H.run_in_amaranth(dut, H.slice_bench, memories, [rows] * channels,
                                               w, cfg.axi_addr_bits, timing, rng)
    per_channel = [H.expected_words(mem, rows, w) for mem in memories]
    want = [sum(ch[i] << (8 * w * c) for c, ch in enumerate(per_channel))
            for i in range(len(per_channel[0]))]
    if words != want:
        raise AssertionError(f"{load.name} on {channels} channels: the words differ")
    return SliceResult(load, channels, cycles, min(r.utilization(w, timing) for r in reports))


def slice_table(results: list[SliceResult]) -> str:
    lines = ["Channel slice: the channels in lockstep (the lanes take a word of each per cycle)",
             "", "| workload | channels | cycles | vs 1 channel | least channel's utilisation |",
             "|---|---|---|---|---|"]
    first = {}
    for r in results:
        base = first.setdefault(r.workload.name, r.cycles)
        lines.append(f"| {r.workload.name} | {r.channels} | {r.cycles} | "
                     f"{r.cycles / base - 1:+.4f} | {r.utilization:.4f} |")
    return "\n".join(lines) + "\n"


def table(cfg: config.AccelConfig, results: list[Result]) -> str:
    lines = [f"Weight streamer, one channel of {cfg.name} ({cfg.axi_data_bits}-bit port, "
             f"{C.channel_bytes_per_cycle(cfg):.1f} B/cycle peak, HBM efficiency "
             f"{C.HBM_EFFICIENCY})", "",
             "| workload | rows | words | RTL cycles | model cycles | model error | "
             "read utilisation |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.workload.name} | {r.workload.rows} | "
                     f"{r.workload.rows * r.workload.row_words} | {r.rtl_cycles} | "
                     f"{r.model_cycles} | {r.model_error:.4f} | {r.utilization:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.bench_rtl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="u280", help="preset or JSON file (default u280)")
    parser.add_argument("--group", type=int, default=128,
                        help="quantisation group of the weights (default 128)")
    parser.add_argument("--seed", type=int, default=1, help="seed of memory and timing")
    parser.add_argument("--quick", action="store_true",
                        help="one shape only (attn 4096x4096)")
    parser.add_argument("--table", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    cfg = config.load(args.config)
    loads = workloads(cfg, args.group)
    if args.quick:
        loads = [load for load in loads if load.name.startswith("attn")]
    results = [run_one(cfg, load, args.seed + i) for i, load in enumerate(loads)]
    text = table(cfg, results)
    print(text, flush=True)
    slices = [run_slice(cfg, load, n, args.seed) for load in loads
              if load.name in SLICE_WORKLOADS for n in SLICE_CHANNELS]
    text += "\n" + slice_table(slices)
    print(slice_table(slices))
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text)
    spread = max(abs(r.cycles / next(b.cycles for b in slices if b.workload == r.workload
                                     and b.channels == 1) - 1) for r in slices)
    print(f"slice_spread={spread:.4f} (cycles per channel, 1 to {SLICE_CHANNELS[-1]} channels)")
    utilization = min(r.utilization for r in [*results, *slices])
    print(f"read_utilization={utilization:.4f} "
          f"model_error={max(r.model_error for r in results):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
