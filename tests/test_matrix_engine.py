"""The matrix engine against numerics.linear_acc + linear_out, bit for bit: every weight
format, every sparsity pattern, several group sizes, two tokens per pass."""

import random
import re

import pytest
import torch
from amaranth.hdl import Module
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw import hierarchy
from hw.matrix_engine import EngineError, MatrixEngine, beats, engine_layouts
from llmacc import numerics as N
from llmacc.isa import WeightFormat
from sim import stream_harness as H
from tests.helpers.simulators import LANE_VARIANTS, run_block
from tests.helpers.weights import random_tile

LANES, CHAIN, TAP = 2, 16, 4


def beat_layout(lanes: int, n: int, group: int, index_in_code: bool = False
                ) -> data.StructLayout:
    """A whole beat as :func:`beats` writes it: the shared fields and ``lanes``."""
    head, lane, _ = engine_layouts(lanes, n, group, index_in_code=index_in_code)
    return data.StructLayout({**{name: f.shape for name, f in head},
                             "lanes": data.ArrayLayout(lane, lanes)})


class PackedEngine(wiring.Component):
    """The engine with one stream of whole beats, as the stream harnesses drive it."""

    def __init__(self, lanes: int, n: int, group: int, index_in_code: bool = False):
        self.engine = MatrixEngine(lanes, n, group, index_in_code=index_in_code)
        out = engine_layouts(lanes, n, group)[2]
        super().__init__({"i": In(stream.Signature(beat_layout(lanes, n, group,
                                                               index_in_code))),
                          "o": Out(stream.Signature(out))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = engine = self.engine
        beat = self.i.payload
        m.d.comb += [engine.i.valid.eq(self.i.valid), self.i.ready.eq(engine.i.ready),
                     *(engine.i.payload[name].eq(beat[name]) for name, _ in
                       engine.i.payload.shape()),
                     *(p.eq(beat.lanes[i]) for i, p in enumerate(engine.lane_in))]
        wiring.connect(m, wiring.flipped(self.o), engine.o)
        return m


def _cases(seed: int, count: int, index_in_code: bool = False):
    """Tiles of every format, sparsity and group as beats (INT8 only dense where the
    indices ride in the codes) and the results they give."""
    rng = random.Random(seed)
    inp = beat_layout(LANES, CHAIN, TAP, index_in_code)
    out = engine_layouts(LANES, CHAIN, TAP)[2]
    combos = [(fmt, nm, group) for fmt in WeightFormat
              for nm in [None, (2, 16), (4, 16), (8, 16), (2, 4)]
              for group in (16, 32, 64)
              if group * (nm[0] if nm else 1) // (nm[1] if nm else 1) >= TAP
              and not (index_in_code and fmt is WeightFormat.INT8 and nm)]
    inputs, expected = [], []
    for c in range(count):
        fmt, nm, group = combos[c % len(combos)] if c < len(combos) else rng.choice(combos)
        k = group * rng.randint(1, 3) * (max(1, 128 // group) if nm == (2, 16) else 1)
        edge = c % 5 == 0
        codes, keep, aux, mant, shift, ops = random_tile(rng, fmt, nm, group, k, LANES, edge)
        x = torch.tensor([[rng.choice((-127, 127)) if edge else rng.randint(-127, 127)
                           for _ in range(k)] for _ in range(2)])
        if fmt is WeightFormat.INT8:
            x[1] = 0
        xm = torch.tensor([rng.randint(1 << 15, N.SCALE_MAX), rng.randint(0, N.SCALE_MAX)])
        xe = torch.tensor([rng.randint(-20, 5) for _ in range(2)])
        acc = N.linear_acc(x, ops, mant, group)
        want = N.linear_out(acc, xm, xe, shift, 0, 0)  # [2 tokens, lanes]
        for beat in beats(fmt, nm, group, codes, keep, aux, mant, shift, x, xm, xe, CHAIN,
                          TAP, index_in_code):
            inputs.append(H.pack(inp, beat))
        expected += [H.pack(out, [{"y": int(want[t, lane])}]) for lane in range(LANES)
                     for t in range(2)]  # lane by lane, token 0 then 1
    return inputs, expected, out


@pytest.mark.parametrize(("simulator", "index_in_code"), LANE_VARIANTS)
def test_matrix_engine(simulator, index_in_code, seed, request, tmp_path):
    inputs, expected, out = _cases(seed, 70 if simulator == "amaranth" else 300, index_in_code)
    got = run_block(simulator, request, tmp_path,
                    lambda: PackedEngine(LANES, CHAIN, TAP, index_in_code),
                    f"matrix_engine{'_icode' if index_in_code else ''}", inputs,
                    len(expected), seed)
    assert (msg := H.first_mismatch(out, got, expected)) is None, f"{msg} (seed {seed})"


def test_schedule_refuses_groups_shorter_than_the_tap_spacing():
    codes = torch.zeros(1, 128, dtype=torch.long)
    keep = torch.zeros(1, 128, dtype=torch.bool)
    keep[:, ::8] = True
    with pytest.raises(EngineError, match="fewer than the chain's tap spacing"):
        beats(WeightFormat.W2, (2, 16), 16, codes, keep, torch.zeros(1, 8), torch.zeros(1, 8),
              [0], torch.zeros(2, 128), [1, 1], [0, 0], CHAIN, TAP)


def test_lanes_convert_to_one_shared_module():
    """Board builds convert the lanes once (hw/hierarchy.py): one lane module, instanced per
    lane, and its ports are the lane's signature."""
    files = hierarchy.convert(MatrixEngine(3, CHAIN, TAP), "engine")
    assert list(files) == ["engine.v", f"engine_lane_{CHAIN}_{TAP}.v"]
    top, lane = files.values()
    assert len(re.findall(rf"^\s*engine_lane_{CHAIN}_{TAP} lane\d ", top, re.M)) == 3
    assert "module engine_lane" not in top and "module \\engine.lane" not in top
    header = lane[lane.index(f"module engine_lane_{CHAIN}_{TAP}("):].split(";")[0]
    assert sorted(re.findall(r"\\?([\w$]+)\s*[,)]", header)) == sorted(
        ["clk", "rst", "en", "inp", "feed", "sparsity", "tap", "acc", "shift"])


@pytest.mark.slow  # two yosys runs, about a minute each
def test_the_synth_report_counts_what_other_rows_do_not(tmp_path):
    """A report row leaves out what other rows count: the shared lanes as port-only black
    boxes (hierarchy.blackbox_stub) and the named submodules (here the collector, whose
    requantising DSPs would otherwise show), so that no resource is counted twice."""
    from boards.synth_report import Block, _block_cells

    # the smallest engines that show it (yosys time grows with the lanes): one lane's DSPs
    # counted in the whole, two lanes' black boxes in the rest
    whole = _block_cells(Block("engine", MatrixEngine(1, CHAIN, TAP), 1), "whole", tmp_path,
                         mapped=False, options="")
    rest = _block_cells(Block("engine", MatrixEngine(LANES, CHAIN, TAP), 1, ("collector",)),
                        "rest", tmp_path, mapped=False, options="")
    assert whole.get("DSP48E2", 0) > 0, whole
    assert rest.get(f"engine_lane_{CHAIN}_{TAP}") == LANES, rest
    assert rest.get("DSP48E2", 0) == 0 and rest.get("rest.collector") == 1, rest


def test_a_block_past_its_time_is_a_row_not_a_traceback(monkeypatch, capsys):
    """A block that yosys does not finish in ``--timeout`` seconds is printed as not
    synthesised, the others still are, and the report exits 1 naming it (the estimate
    without it would be too low)."""
    import subprocess

    from boards import synth_report

    def cells(block, top, workdir, mapped, options, timeout_s):
        if block.name.startswith("LOAD"):
            raise subprocess.TimeoutExpired("yosys", timeout_s)
        return {"LUT6": 7, "DSP48E2": 1}

    monkeypatch.setattr(synth_report, "_block_cells", cells)
    assert synth_report.main(["--config", "sim-small", "--only", "", "--timeout", "5",
                              "--unmapped"]) == 1
    out, err = capsys.readouterr()
    rows = [line for line in out.splitlines() if line.startswith("| LOAD")]
    assert rows and all("not synthesised: yosys ran past 5 s" in r for r in rows), out
    assert "| controller" in out and err.startswith("synth_report: not synthesised in 5 s: LOAD")
