"""The matrix engine fed from beat-major weight streams (``hw/stream_engine.py``) against
``numerics.linear_acc`` + ``linear_out``, bit for bit: every streamed format and sparsity,
several groups and row lengths, several passes, two channels of two lanes."""

from __future__ import annotations

import random

import pytest
import torch
from amaranth.hdl import Module, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.matrix_engine import beats, results_layout
from hw.stream_engine import (
    StreamEngine,
    StreamLength,
    StreamSlice,
    activation_layout,
    command_layout,
    command_of,
    length_layout,
)
from hw.stream_unpacker import WORD_COUNT_BITS
from llmacc import layout as L
from llmacc import numerics as N
from llmacc.config import preset
from llmacc.isa import Sparsity, WeightFormat
from sim import bench_rtl
from sim import hbm_model as HBM
from sim import stream_harness as H
from tests.helpers.simulators import SIMULATORS, run_block
from tests.helpers.weights import random_tile

CHANNELS, LANES, CHAIN, TAP, WORD = 2, 2, 16, 4, 128
DEPTH = 128  #: the test wrapper's queue per destination (a whole case fits)


def item_layout(channels: int, n: int, w_bits: int) -> data.StructLayout:
    """One input item of the wrapper: a destination (0 command, 1 activations, 2 + c the
    words of channel c) and its payload."""
    bits = max(command_layout().size, activation_layout(n, TAP).size, w_bits)
    return data.StructLayout({"dest": range(2 + channels), "data": bits})


class PackedStreamEngine(wiring.Component):
    """The stream engine behind one tagged input stream, as the stream harnesses drive it:
    each item goes to its destination's queue."""

    def __init__(self, channels: int, lanes: int, n: int, group: int, w_bits: int):
        self.dut = StreamEngine(channels, lanes, n, group, w_bits)
        self.channels, self.n, self.w_bits = channels, n, w_bits
        super().__init__({"i": In(stream.Signature(item_layout(channels, n, w_bits))),
                          "o": Out(stream.Signature(results_layout(channels)))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        sinks = [dut.cmd, dut.act, *dut.words]
        item = self.i.payload
        readies = []
        for d, sink in enumerate(sinks):
            width = len(sink.payload.as_value()) if hasattr(sink.payload, "as_value") \
                else len(sink.payload)
            m.submodules[f"q{d}"] = q = fifo.SyncFIFOBuffered(width=width, depth=DEPTH)
            m.d.comb += [q.w_data.eq(item.data[:width]),
                         q.w_en.eq(self.i.valid & (item.dest == d)),
                         sink.payload.eq(q.r_data), sink.valid.eq(q.r_rdy),
                         q.r_en.eq(sink.ready)]
            readies.append(q.w_rdy & (item.dest == d))
        m.d.comb += self.i.ready.eq(sum(readies) != 0)
        wiring.connect(m, wiring.flipped(self.o), dut.o)
        return m


def _combos():
    out = []
    for (fmt, sp), _ in L.stream_geometries(CHAIN, WORD).items():
        nm = L.SPARSITY_NM[sp]
        for group in (16, 32, 64):
            keep, block = nm or (1, 1)
            if group >= block and group * keep // block >= TAP:
                out.append((fmt, nm, group))
    return out


def _cases(seed: int, count: int):
    rng = random.Random(seed)
    layout = item_layout(CHANNELS, CHAIN, WORD)
    combos = _combos()
    inputs, expected = [], []
    for c in range(count):
        fmt, nm, group = combos[c] if c < len(combos) else rng.choice(combos)
        k = group * rng.randint(1, 3) * (8 if nm == (2, 16) else 1)
        passes = rng.randint(1, 2)
        geom = L.StreamGeometry(L.Descriptor.of(fmt, nm, group), k, CHAIN, WORD, skew=TAP)
        x = torch.tensor([[rng.randint(-127, 127) for _ in range(k)] for _ in range(2)])
        if fmt is WeightFormat.INT8:
            x[1] = 0
        xm = torch.tensor([rng.randint(1 << 15, N.SCALE_MAX), rng.randint(0, N.SCALE_MAX)])
        xe = torch.tensor([rng.randint(-20, 5) for _ in range(2)])
        streams, outs = [], []
        for _ in range(CHANNELS):
            codes, keep, aux, mant, shift, ops = random_tile(rng, fmt, nm, group, k, LANES * passes)
            streams.append(L.encode_weight_stream(geom, LANES, codes, keep, mant, shift, aux))
            acc = N.linear_acc(x, ops, mant, group)
            outs.append(N.linear_out(acc, xm, xe, shift, 0, 0))  # [2, rows]
        words = {s.shape[0] for s in streams}
        assert len(words) == 1
        cmd = H.pack(command_layout(), command_of(geom, passes, words.pop()))
        inputs.append(H.pack(layout, {"dest": 0, "data": cmd}))
        for ch, s in enumerate(streams):
            inputs += [H.pack(layout, {"dest": 2 + ch, "data": int.from_bytes(w.tobytes(),
                                                                             "little")})
                       for w in s]
        act = activation_layout(CHAIN, TAP)
        lane0 = [None if v is None else v[:1] for v in (codes, keep, aux, mant, shift)]
        for beat in beats(fmt, nm, group, *lane0, x, xm, xe, CHAIN,
                          TAP) * passes:
            raw = H.pack(act, {name: beat[name] for name in ("x", "xm", "xe")})
            inputs.append(H.pack(layout, {"dest": 1, "data": raw}))
        expected += [H.pack(results_layout(CHANNELS),
                            [{"y": int(outs[ch][t, p * LANES + lane])} for ch in range(CHANNELS)])
                     for p in range(passes) for lane in range(LANES) for t in range(2)]
    return inputs, expected


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_stream_engine(simulator, seed, request, tmp_path):
    inputs, expected = _cases(seed, 40 if simulator == "amaranth" else 150)
    got = run_block(simulator, request, tmp_path,
                    lambda: PackedStreamEngine(CHANNELS, LANES, CHAIN, TAP, WORD),
                    "stream_engine", inputs, len(expected), seed)
    assert (msg := H.first_mismatch(results_layout(CHANNELS), got, expected)) is None, \
        f"{msg} (seed {seed})"


#: A small engine slice for the cycle model: 2 channels x 2 lanes of 16, 128-bit words.
SLICE_CONFIG = preset("sim-wide").replace(mv_rows=4, chain_len=16, chain_group=4,
                                           mem_channels=2, axi_data_bits=128)


@pytest.mark.parametrize("fmt", [WeightFormat.W2, WeightFormat.INT8])
def test_engine_cycles_follow_the_rtl(fmt, seed):
    """The streaming engine slice against the HBM channel models in Amaranth: results
    equal to the integer model, cycles within 5% of ``cycle_model.engine_stream_cycles``;
    W2 keeps the lanes busy (compute-bound), INT8 the channels (memory-bound)."""
    cfg = SLICE_CONFIG
    load = bench_rtl.EngineWorkload(f"{fmt.name} 128x512", fmt, Sparsity.DENSE, 128, 512)
    case = bench_rtl.engine_case(cfg, load, cfg.mem_channels, 32, seed)
    dut = StreamSlice(cfg.mem_channels, 2, cfg.chain_len, cfg.chain_group, cfg.axi_addr_bits,
                      cfg.axi_data_bits)
    run = HBM.run_in_amaranth(dut, HBM.engine_bench, case.memories,
                              [[(0, case.words)]] * cfg.mem_channels, case.cmd,
                              case.acts * case.passes, len(case.want), cfg.axi_data_bytes,
                              cfg.axi_addr_bits, HBM.HbmTiming.of(cfg), random.Random(seed))
    result = bench_rtl.engine_result(cfg, load, case, run)
    assert result.model_error <= 0.05, (result, seed)
    if fmt is WeightFormat.W2:
        assert not result.memory_bound(cfg) and result.beat_rate >= 0.9, (result, seed)
    else:
        assert result.memory_bound(cfg) and result.utilization >= 0.85, (result, seed)


class PackedStreamLength(wiring.Component):
    """:class:`hw.stream_engine.StreamLength` as a stream block: a command in, held for the
    length's latency, its word count out."""

    def __init__(self, lanes: int, n: int, w_bits: int, skew: int):
        self.dut = StreamLength(lanes, n, w_bits, skew)
        super().__init__({"i": In(stream.Signature(length_layout())),
                          "o": Out(stream.Signature(WORD_COUNT_BITS))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = dut = self.dut
        held = Signal(length_layout())
        wait = Signal(range(StreamLength.LATENCY + 2))
        m.d.comb += [dut.i.eq(held), self.i.ready.eq(wait == 0),
                     self.o.valid.eq(wait == 1), self.o.payload.eq(dut.words)]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [held.eq(self.i.payload), wait.eq(StreamLength.LATENCY + 1)]
        with m.Elif((wait > 1) | (self.o.valid & self.o.ready)):
            m.d.sync += wait.eq(wait - 1)
        return m


@pytest.mark.parametrize("skew", [0, TAP, CHAIN])
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_stream_length_is_the_layouts(simulator, skew, seed, request, tmp_path):
    """The hardware's stream length equals ``layout.stream_words`` for every streamed
    format and sparsity, groups, row lengths and passes (short rows and one pass included:
    the last word among the queues' first requests), plain and pre-skewed (a tail of 3
    beats: its words among the rows' requests; of 15: after them)."""
    rng = random.Random(seed)
    lanes = 3
    inputs, expected = [], []
    for (fmt, sp), _ in L.stream_geometries(CHAIN, WORD).items():
        keep, block = L.SPARSITY_NM[sp] or (1, 1)
        for _ in range(6):
            glog = rng.randint(max(L.GROUP_LOG2_MIN, block.bit_length() - 1), L.GROUP_LOG2_MAX)
            try:
                geom = L.StreamGeometry(L.Descriptor(fmt, sp, glog),
                                        max(1 << glog, block) * rng.choice((1, 2, 3, 17, 60)),
                                        CHAIN, WORD, skew)
            except L.LayoutError:
                continue  # more groups per beat than a SCALES word holds
            passes = rng.choice((1, 2, 3, 4, rng.randint(5, 300)))
            inputs.append(H.pack(length_layout(), {
                "fmt": fmt, "sparsity": sp, "group_log2": glog, "beats": geom.beats,
                "groups": geom.groups, "passes": passes}))
            expected.append(L.stream_words(geom, lanes, passes))
    got = run_block(simulator, request, tmp_path,
                    lambda: PackedStreamLength(lanes, CHAIN, WORD, skew),
                    f"stream_length_skew{skew}", inputs, len(expected), seed)
    assert got == expected, f"seed {seed}"
