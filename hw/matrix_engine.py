"""The matrix engine: ``lanes`` sparse DSP chains side by side, one weight row each.

A beat carries the activation window of two tokens (shared by every lane) and, per lane,
``n`` packed weight codes with their sparse indices, the group's aux byte (W2 zero-point or
mixed type id) per ``group`` elements, and the group scale mantissas. Each lane

1. decodes the codes (:mod:`hw.weight_decode`),
2. runs them through the sparse DSP chain (:mod:`hw.sparse_dsp_chain`), two tokens per DSP,
3. accumulates each quantisation group's partial sums exactly, and at the group's end adds
   ``mant * group_sum`` into the 48-bit accumulator (BitMoD's per-group rescale),
4. at the row's end applies :func:`llmacc.numerics.linear_out`:
   ``sat32(round_shift(acc * m_x, shift - e_x))`` per token.

MATVEC is a beat stream with one token (the second token's scale is 0); MATMAT streams token
pairs. :func:`beats` is the schedule the buffer address generator follows, and the golden
feeder of the tests. The engine equals ``numerics.linear_acc`` + ``linear_out`` bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.fixed_point import round_shift, saturate
from hw.hierarchy import shared
from hw.pipeline import delay
from hw.sparse_dsp_chain import SUM_BITS, ActivationRouter, LaneChain, router_layouts, window
from hw.weight_decode import decode_operand
from llmacc import numerics as N
from llmacc.isa import Sparsity, WeightFormat
from llmacc.kernel import chain_latency
from llmacc.layout import Descriptor, sparsity_of


class EngineError(ValueError):
    """A tile the engine's schedule cannot run (names the reason)."""


def engine_layouts(lanes: int, n: int, group: int):
    """``(head, lane, out)``: a beat's shared fields, one lane's fields, the results.

    The lanes are separate ports: a U280 beat is some 90,000 bits, more than one signal can
    carry through Amaranth's netlist (65,536)."""
    slots = n // group
    head = data.StructLayout({
        "fmt": WeightFormat,
        "sparsity": Sparsity,
        "group_end": 1,
        "row_end": 1,
        "x": data.ArrayLayout(data.ArrayLayout(signed(8), window(n)), 2),
        "xm": data.ArrayLayout(N.SCALE_BITS, 2),
        "xe": data.ArrayLayout(signed(16), 2),
    })
    lane = data.StructLayout({
        "codes": data.ArrayLayout(8, n),
        "idx": data.ArrayLayout(4, n),
        "aux": data.ArrayLayout(8, slots),
        "mant": data.ArrayLayout(N.SCALE_BITS, slots),
        "shift": signed(16),
    })
    out = data.StructLayout({
        "y": data.ArrayLayout(data.ArrayLayout(signed(N.WIDE_BITS), 2), lanes)})
    return head, lane, out


def lane_layouts(n: int, group: int) -> dict[str, data.StructLayout]:
    """Ports of one lane: its weights of a beat (``inp``, at the chain's input), the
    activations the engine's router gives its elements (``feed``), and the beat's fields that
    meet the chain's taps ``latency`` beats later (``tap``)."""
    slots = n // group
    return {
        "inp": data.StructLayout({
            "fmt": WeightFormat, "sparsity": Sparsity,
            "codes": data.ArrayLayout(8, n), "idx": data.ArrayLayout(4, n),
            "aux": data.ArrayLayout(8, slots)}),
        "feed": router_layouts(n)[1],
        "tap": data.StructLayout({
            "valid": 1, "pack": 1, "group_end": 1, "row_end": 1,
            "mant": data.ArrayLayout(N.SCALE_BITS, slots), "shift": signed(16),
            "xe": data.ArrayLayout(signed(16), 2)}),
    }


class EngineLane(wiring.Component):
    """One weight row's datapath: decode, sparse DSP chain, exact group sums, the 48-bit
    accumulator and the row's requantisation. ``y`` is registered one beat after the row's
    accumulator, scaled by ``xm`` (held by the engine for that beat). The engine's lanes are
    identical: board builds convert this module once (:mod:`hw.hierarchy`)."""

    def __init__(self, n: int, group: int):
        self.n, self.group = n, group
        ports = lane_layouts(n, group)
        super().__init__({
            "en": In(1), "inp": In(ports["inp"]), "feed": In(ports["feed"]),
            "tap": In(ports["tap"]),
            "xm": In(data.ArrayLayout(N.SCALE_BITS, 2)),
            "y": Out(data.ArrayLayout(signed(N.WIDE_BITS), 2))})

    @property
    def latency(self) -> int:
        return chain_latency(self.n)

    def elaborate(self, platform):
        m = Module()
        m.submodules.chain = chain = LaneChain(self.n, self.group)
        inp, tap, en = self.inp, self.tap, self.en
        m.d.comb += [chain.ce.eq(en), chain.inp.sparsity.eq(inp.sparsity),
                     chain.inp.idx.eq(inp.idx), chain.feed.eq(self.feed),
                     chain.pack.eq(tap.pack)]
        for k in range(self.n):
            m.d.comb += chain.inp.ops[k].eq(decode_operand(
                inp.codes[k], inp.fmt, inp.aux[k // self.group]))
        slots = self.n // self.group
        gsum = Signal(data.ArrayLayout(data.ArrayLayout(signed(SUM_BITS), 2), slots))
        acc = Signal(data.ArrayLayout(signed(N.ACC_BITS), 2))
        r_acc = Signal(data.ArrayLayout(signed(N.ACC_BITS), 2))  # the row, to requantise
        r_shift = Signal(data.ArrayLayout(signed(18), 2))
        step = en & tap.valid
        for t in range(2):
            total = 0
            for j in range(slots):
                new = Signal(signed(SUM_BITS), name=f"g{j}_{t}")
                m.d.comb += new.eq(gsum[j][t] + chain.out.sums[j][t])
                total = total + tap.mant[j] * new
                with m.If(step):
                    m.d.sync += gsum[j][t].eq(Mux(tap.group_end, 0, new))
            new_acc = Signal(signed(N.ACC_BITS), name=f"acc_new{t}")
            m.d.comb += new_acc.eq(acc[t] + Mux(tap.group_end, total, 0))
            with m.If(step):
                m.d.sync += acc[t].eq(new_acc)
                with m.If(tap.row_end):
                    m.d.sync += [acc[t].eq(0), r_acc[t].eq(new_acc),
                                 r_shift[t].eq(tap.shift - tap.xe[t])]
            with m.If(en):
                m.d.sync += self.y[t].eq(saturate(
                    round_shift(r_acc[t] * self.xm[t], r_shift[t], N.WIDE_BITS + 1),
                    N.WIDE_BITS))
        return m


class MatrixEngine(wiring.Component):
    """``lanes`` chains of ``n`` DSPs tapped every ``group``; stream of beats in (the shared
    fields as ``i``'s payload, each lane's in ``lane_in``, taken with it), one result per lane
    and token out at every row end."""

    def __init__(self, lanes: int, n: int, group: int):
        self.lanes, self.n, self.group = lanes, n, group
        self.units = [EngineLane(n, group) for _ in range(lanes)]
        head, lane, out = engine_layouts(lanes, n, group)
        super().__init__({"i": In(stream.Signature(head)), "lane_in": In(lane).array(lanes),
                          "o": Out(stream.Signature(out))})

    def elaborate(self, platform):
        m = Module()
        en = ~self.o.valid | self.o.ready
        beat = self.i.payload
        m.d.comb += self.i.ready.eq(en)
        slots = self.n // self.group
        latency = self.units[0].latency
        # What the taps' consumers need of a beat travels alongside the chain (not the codes
        # and activations, which the chain consumes: delaying the whole beat would cost a
        # register per bit and pipeline stage).
        m.submodules.router = router = ActivationRouter(self.n)
        pack = beat.fmt != WeightFormat.INT8
        m.d.comb += [router.ce.eq(en), router.inp.x.eq(beat.x),
                     router.inp.sparsity.eq(beat.sparsity), router.inp.pack.eq(pack)]
        side_in = Signal(data.StructLayout({
            "pack": 1, "group_end": 1, "row_end": 1,
            "xm": data.ArrayLayout(N.SCALE_BITS, 2), "xe": data.ArrayLayout(signed(16), 2),
            "mant": data.ArrayLayout(data.ArrayLayout(N.SCALE_BITS, slots), self.lanes),
            "shift": data.ArrayLayout(signed(16), self.lanes)}))
        m.d.comb += [side_in.pack.eq(pack), side_in.group_end.eq(beat.group_end),
                     side_in.row_end.eq(beat.row_end), side_in.xm.eq(beat.xm),
                     side_in.xe.eq(beat.xe)]
        for lane in range(self.lanes):
            m.d.comb += [side_in.mant[lane].eq(self.lane_in[lane].mant),
                         side_in.shift[lane].eq(self.lane_in[lane].shift)]
        side = delay(m, side_in, latency, en, "side")
        valid = delay(m, self.i.valid, latency, en, "valid", reset_less=False)
        r_valid = Signal()
        r_xm = Signal(data.ArrayLayout(N.SCALE_BITS, 2))
        for lane, unit in enumerate(self.units):
            m.submodules[f"lane{lane}"] = shared(platform, unit, f"engine_lane_{self.n}_"
                                                 f"{self.group}")
            src = self.lane_in[lane]
            m.d.comb += [unit.en.eq(en), unit.xm.eq(r_xm),
                         unit.inp.fmt.eq(beat.fmt), unit.inp.sparsity.eq(beat.sparsity),
                         unit.inp.codes.eq(src.codes), unit.inp.idx.eq(src.idx),
                         unit.inp.aux.eq(src.aux), unit.feed.eq(router.feed),
                         unit.tap.valid.eq(valid), unit.tap.pack.eq(side.pack),
                         unit.tap.group_end.eq(side.group_end),
                         unit.tap.row_end.eq(side.row_end),
                         unit.tap.mant.eq(side.mant[lane]), unit.tap.shift.eq(side.shift[lane]),
                         unit.tap.xe.eq(side.xe),
                         self.o.payload.y[lane].eq(unit.y)]
        with m.If(en):
            m.d.sync += [r_valid.eq(valid & side.row_end), r_xm.eq(side.xm),
                         self.o.valid.eq(r_valid)]
        return m


def beats(fmt: WeightFormat, nm: tuple[int, int] | None, group: int, codes, keep, aux, mant,
          shift, x, xm, xe, n: int, chain_group: int) -> list[dict]:
    """The beats of one tile of ``lanes`` rows against two tokens (the engine's schedule).

    ``codes`` [lanes, K] stored codes (INT8 as bytes), ``keep`` [lanes, K] bool (N:M) or None,
    ``aux``/``mant`` [lanes, K/group], ``shift`` [lanes], ``x`` [2, K] INT8 codes with scales
    ``xm``/``xe`` [2]. INT8 tiles take one token (``x[1]`` must be zero).
    """
    codes = np.asarray(codes)
    lanes, k = codes.shape
    keep_n, block = nm or (1, 1)
    kept_per_group = group * keep_n // block
    why = Descriptor.of(fmt, nm, group).schedule_error(chain_group)
    if why:
        raise EngineError(why)
    if fmt is WeightFormat.INT8 and np.any(np.asarray(x)[1]):
        raise EngineError("INT8 weights run one token per beat (x[1] must be zero)")
    if nm is None:
        kept_codes = codes
        idx = np.zeros_like(codes)
    else:
        vals, ind = N.nm_compress(torch.as_tensor(codes), torch.as_tensor(keep), *nm)
        kept_codes, idx = vals.numpy(), ind.numpy()
    kept = kept_codes.shape[1]
    cover = n * block // keep_n  # dense columns per beat
    nbeats = -(-kept // n)
    xpad = np.zeros((2, nbeats * cover), dtype=np.int64)
    xpad[:, :k] = np.asarray(x)
    out = []
    for b in range(nbeats):
        lo = b * n
        lane_recs = []
        for r in range(lanes):
            c = np.zeros(n, dtype=np.int64)
            ix = np.zeros(n, dtype=np.int64)
            take = min(n, kept - lo)
            c[:take] = kept_codes[r, lo:lo + take]
            ix[:take] = idx[r, lo:lo + take]
            slot_groups = [min((lo + s * chain_group) // kept_per_group, k // group - 1)
                           for s in range(n // chain_group)]
            valid = [lo + s * chain_group < kept for s in range(n // chain_group)]
            lane_recs.append({
                "codes": c.tolist(), "idx": ix.tolist(),
                "aux": [int(aux[r][g]) if aux is not None else 0 for g in slot_groups],
                "mant": [int(mant[r][g]) if v else 0 for g, v in zip(slot_groups, valid,
                                                                     strict=True)],
                "shift": int(shift[r]),
            })
        last = b == nbeats - 1
        out.append({
            "fmt": fmt, "sparsity": sparsity_of(nm),
            "group_end": int(last or ((b + 1) * n) % kept_per_group == 0),
            "row_end": int(last),
            "x": xpad[:, b * cover:(b + 1) * cover].tolist(),
            "xm": [int(v) for v in xm], "xe": [int(v) for v in xe], "lanes": lane_recs,
        })
    for beat in out:  # pad the window to the engine's width
        beat["x"] = [row + [0] * (window(n) - len(row)) for row in beat["x"]]
    return out

