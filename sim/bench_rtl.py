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
relative difference.

Then the engine slice (:class:`hw.stream_engine.StreamSlice`, Verilated once per channel
count): each workload's rows as beat-major weight streams (``llmacc.layout``) through the
streamers, the unpackers, ``mv_rows / mem_channels`` lanes per channel and the collector,
every result checked against the integer model; per workload the RTL's cycles, the cycle
model's (``sim.cycle_model.engine_stream_cycles``), the least channel's read utilisation and
the engine's beats per cycle. A workload whose beats outnumber its words per channel is
compute-bound (the lanes take less than the line) and is not counted in
``read_utilization``; the line before the last says how many there are.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from hw.weight_streamer import ChannelSlice, WeightStreamer
from llmacc import config
from llmacc import layout as L
from llmacc import numerics as N
from llmacc.isa import Sparsity, WeightFormat
from sim import cycle_model as C
from sim import hbm_model as H
from sim.stream_harness import pack

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


#: The engine slice: a channel's share of every MATVEC on 1 channel, these on 2 and 4 too.
ENGINE_CHANNELS = (1, 2, 4)
ENGINE_SLICE_WORKLOADS = ("attn 4096x4096 W2 DENSE", "attn 4096x4096 INT8 DENSE")


@dataclass(frozen=True)
class EngineWorkload:
    """One MATVEC of ``rows`` x ``k`` in a format and sparsity, spread over the channels."""

    name: str
    fmt: WeightFormat
    sparsity: Sparsity
    rows: int
    k: int


@dataclass(frozen=True)
class EngineResult:
    workload: EngineWorkload
    channels: int
    words: int  #: per channel
    beats: int
    rtl_cycles: int
    model_cycles: int
    utilization: float  #: the least utilised channel's read bytes per cycle over its peak
    beat_rate: float  #: beats per cycle between the engine's first and last beat
    record_words: int  #: the same rows as the compiler's WGT + META records (per channel)

    @property
    def model_error(self) -> float:
        return abs(self.model_cycles - self.rtl_cycles) / self.rtl_cycles

    def memory_bound(self, cfg: config.AccelConfig) -> bool:
        """Whether the channel's words, not the lanes' beats, set the pace (the model's
        larger term)."""
        return C.stream_cycles(cfg, self.words) > self.beats


def engine_workloads(cfg: config.AccelConfig, group: int) -> list[EngineWorkload]:
    """Every shape x format x sparsity that a weight stream of ``cfg`` holds."""
    held = L.stream_geometries(cfg.chain_len, cfg.axi_data_bits)
    return [EngineWorkload(f"{shape} {fmt.name} {sp.name}", fmt, sp, n, k)
            for shape, (n, k) in SHAPES.items() for fmt in FORMATS for sp in SPARSITIES
            if (fmt, sp) in held]


def _random_rows(gen: torch.Generator, fmt: WeightFormat, nm, group: int, rows: int, k: int):
    """Random stored codes, keep mask, aux, scales and shifts of ``rows`` rows, and their
    decoded operands (vectorised: a channel's rows of a 7B layer)."""
    bits = L.FORMAT_BITS[fmt]
    codes = torch.randint(0, 1 << bits, (rows, k), generator=gen)
    keep = None
    if nm:
        kn, km = nm
        pick = torch.rand(rows, k // km, km, generator=gen).argsort(-1)[..., :kn]
        keep = torch.zeros(rows, k // km, km, dtype=torch.bool).scatter_(-1, pick, True)
        keep = keep.reshape(rows, k)
    aux = torch.randint(0, 4 if fmt is WeightFormat.W2 else 6, (rows, k // group), generator=gen)
    mant = torch.randint(0, N.SCALE_MAX + 1, (rows, k // group), generator=gen)
    shift = torch.randint(0, 24, (rows,), generator=gen)
    signed = codes - 256 * (codes > 127) if fmt is WeightFormat.INT8 else codes
    ops = N.decode_weights(signed, aux, L.FORMAT_NAMES[fmt], group, aux)
    if keep is not None:
        ops = torch.where(keep, ops, 0)
    return codes, keep, aux, mant, shift, ops


@dataclass(frozen=True)
class EngineCase:
    """One workload's input to the engine slice and what the integer model gives."""

    geometry: L.StreamGeometry
    passes: int
    memories: list[bytes]  #: each channel's weight stream
    cmd: int  #: the engine command
    acts: list[int]  #: one pass's activation beats (every pass takes the same)
    want: list[int]  #: the results, in the engine's order

    @property
    def words(self) -> int:
        return len(self.memories[0]) * 8 // self.geometry.w_bits


def engine_case(cfg: config.AccelConfig, load: EngineWorkload, channels: int, group: int,
                seed: int) -> EngineCase:
    """Random rows of ``load`` on ``channels`` channels of ``cfg`` (``mv_rows /
    mem_channels`` lanes each), as streams, with the results of the integer model."""
    from hw.matrix_engine import beats, results_layout
    from hw.stream_engine import activation_layout, command_layout, command_of

    n, w = cfg.chain_len, cfg.axi_data_bits
    lanes = cfg.lanes_per_channel
    nm = L.SPARSITY_NM[load.sparsity]
    geom = L.StreamGeometry(L.Descriptor.of(load.fmt, nm, group), load.k, n, w,
                            skew=cfg.chain_group)  # the slice's engine takes streams only
    share = -(-load.rows // cfg.mem_channels)  # the channel's rows, as the compiler splits
    passes = -(-share // lanes)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-127, 128, (2, load.k), generator=gen)
    if load.fmt is WeightFormat.INT8:
        x[1] = 0
    xm, xe = torch.tensor([40000, 30000]), torch.tensor([-12, -14])
    memories, outs = [], []
    for _ in range(channels):
        codes, keep, aux, mant, shift, ops = _random_rows(gen, load.fmt, nm, group,
                                                          passes * lanes, load.k)
        memories.append(L.encode_weight_stream(geom, lanes, codes, keep, mant, shift,
                                               aux).tobytes())
        outs.append(N.linear_out(N.linear_acc(x, ops, mant, group), xm, xe, shift, 0, 0))
    act = activation_layout(n, cfg.chain_group)
    one = [None if v is None else v[:1] for v in (codes, keep, aux, mant, shift)]
    acts = [pack(act, {f: b[f] for f in ("x", "xm", "xe")})
            for b in beats(load.fmt, nm, group, *one, x, xm, xe, n, cfg.chain_group)]
    want = [pack(results_layout(channels), [{"y": int(outs[c][t, p * lanes + lane])}
                                            for c in range(channels)])
            for p in range(passes) for lane in range(lanes) for t in range(2)]
    words = len(memories[0]) // cfg.axi_data_bytes
    return EngineCase(geom, passes, memories,
                      pack(command_layout(), command_of(geom, passes, words)), acts, want)


def engine_result(cfg: config.AccelConfig, load: EngineWorkload, case: EngineCase,
                  run: H.EngineRun, utilization: float | None = None) -> EngineResult:
    """What a run of ``case`` measured, beside the cycle model (``utilization``: the least
    channel's, where ``run`` does not hold the channels' reports)."""
    if run.results != case.want:
        raise AssertionError(f"{load.name} on {len(case.memories)} channels: results differ")
    timing = H.HbmTiming.of(cfg)
    channels = len(case.memories)
    lanes = cfg.lanes_per_channel
    return EngineResult(load, channels, case.words, run.beats, run.cycles,
                        C.engine_stream_cycles(cfg, case.geometry, case.passes, case.words),
                        utilization if utilization is not None else min(
                            r.utilization(cfg.axi_data_bytes, timing) for r in run.reports),
                        run.beats / (run.last_beat - run.first_beat + 1),
                        case.passes * lanes * (
                            case.geometry.desc.wgt_pitch(load.k, cfg.axi_data_bytes)
                            + case.geometry.desc.meta_pitch(load.k, cfg.axi_data_bytes)))


def build_slice(cfg: config.AccelConfig, channels: int):
    """The Verilated channel slice of ``cfg``'s engine shape on ``channels`` channels
    (built once per configuration; its C++ unoptimised: the bench's time is cocotb's)."""
    from hw.stream_engine import StreamSlice
    from sim import verilator

    return verilator.build(StreamSlice(channels, cfg.lanes_per_channel, cfg.chain_len,
                                       cfg.chain_group, cfg.axi_addr_bits, cfg.axi_data_bits),
                           f"stream_slice_{cfg.name}_{channels}", optimize=False)


def run_engine(cfg: config.AccelConfig, load: EngineWorkload, channels: int, group: int,
               seed: int, model, work: Path) -> EngineResult:
    """One workload on the Verilated slice against the HBM channel models; the results
    are checked against the integer model."""
    work = work.resolve()  # the bench runs in its own directory
    work.mkdir(parents=True, exist_ok=True)
    case = engine_case(cfg, load, channels, group, seed)
    paths = []
    for c, memory in enumerate(case.memories):
        paths.append(work / f"channel{c}.bin")
        paths[-1].write_bytes(memory)
    out = work / "measured.json"
    out.unlink(missing_ok=True)
    vectors = work / "spec.json"
    vectors.write_text(json.dumps({
        "memories": [str(p) for p in paths], "passes": case.passes,
        "acts": [hex(v) for v in case.acts], "want": [hex(v) for v in case.want],
        "cmd": hex(case.cmd), "seed": seed, "data_bytes": cfg.axi_data_bytes,
        "addr_bits": cfg.axi_addr_bits, "bytes_per_cycle": C.channel_bytes_per_cycle(cfg),
        "out": str(out)}))
    model.run("sim.benches.tb_engine_slice", seed=seed, test_dir=work,
              extra_env={"LLMACC_VECTORS": str(vectors)})
    got = json.loads(out.read_text())
    run = H.EngineRun(case.want if got["equal"] else [], got["cycles"], got["beats"],
                      got["first_beat"], got["last_beat"], [])
    return engine_result(cfg, load, case, run, utilization=min(got["utilization"]))


def engine_table(cfg: config.AccelConfig, results: list[EngineResult]) -> str:
    lines = [f"Engine slice of {cfg.name}: streamers, unpackers, "
             f"{cfg.lanes_per_channel} lanes of {cfg.chain_len} per channel and the "
             "collector (Verilator)", "",
             "| workload | channels | words/channel | vs records | beats | RTL cycles | "
             "model cycles | model error | read utilisation | beats/cycle |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.workload.name} | {r.channels} | {r.words} | "
                     f"{r.words / r.record_words:.3f} | {r.beats} | "
                     f"{r.rtl_cycles} | {r.model_cycles} | {r.model_error:.4f} | "
                     f"{r.utilization:.4f} | {r.beat_rate:.4f} |")
    return "\n".join(lines) + "\n"


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
    spread = max(abs(r.cycles / next(b.cycles for b in slices if b.workload == r.workload
                                     and b.channels == 1) - 1) for r in slices)
    print(f"slice_spread={spread:.4f} (cycles per channel, 1 to {SLICE_CHANNELS[-1]} channels)")
    engine = run_engines(cfg, args.group, args.seed, args.quick)
    text += "\n" + engine_table(cfg, engine)
    print(engine_table(cfg, engine))
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text(text)
    base = {r.workload.name: r.rtl_cycles for r in engine if r.channels == 1}
    engine_spread = max(abs(r.rtl_cycles / base[r.workload.name] - 1) for r in engine)
    memory = [r for r in engine if r.memory_bound(cfg)]
    compute = [r for r in engine if not r.memory_bound(cfg)]
    print(f"engine_spread={engine_spread:.4f} (cycles per channel, 1 to "
          f"{ENGINE_CHANNELS[-1]} channels)")
    if compute:
        print(f"compute_bound={len(compute)} workloads (the lanes take less than the line): "
              f"least beats/cycle {min(r.beat_rate for r in compute):.4f}")
    utilization = min(r.utilization for r in [*results, *slices, *memory])
    error = max(r.model_error for r in [*results, *engine])
    print(f"read_utilization={utilization:.4f} model_error={error:.4f}")
    return 0


def run_engines(cfg: config.AccelConfig, group: int, seed: int, quick: bool
                ) -> list[EngineResult]:
    """Every engine workload on one channel, the slice's on 2 and 4, each slice Verilated
    once (``quick``: the attention shape only)."""
    out = []
    loads = engine_workloads(cfg, group)
    if quick:
        loads = [load for load in loads if load.name.startswith("attn")]
    work = Path("build/bench-rtl/engine")
    for channels in ENGINE_CHANNELS:
        model = build_slice(cfg, channels)
        for i, load in enumerate(loads):
            if channels == 1 or load.name in ENGINE_SLICE_WORKLOADS:
                out.append(run_engine(cfg, load, channels, group, seed + i, model,
                                      work / f"{channels}" / load.name.replace(" ", "_")))
                print(engine_table(cfg, out[-1:]).splitlines()[-1], flush=True)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
