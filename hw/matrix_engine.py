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
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.fixed_point import round_shift, saturate
from hw.pipeline import delay
from hw.sparse_dsp_chain import SparseDspChain, window
from hw.weight_decode import decode_operand
from llmacc import numerics as N
from llmacc.isa import Sparsity, WeightFormat
from llmacc.layout import Descriptor, sparsity_of

GROUP_SUM_BITS = 32


class EngineError(ValueError):
    """A tile the engine's schedule cannot run (names the reason)."""


def engine_layouts(lanes: int, n: int, group: int):
    slots = n // group
    lane = data.StructLayout({
        "codes": data.ArrayLayout(8, n),
        "idx": data.ArrayLayout(4, n),
        "aux": data.ArrayLayout(8, slots),
        "mant": data.ArrayLayout(N.SCALE_BITS, slots),
        "shift": signed(16),
    })
    inp = data.StructLayout({
        "fmt": WeightFormat,
        "sparsity": Sparsity,
        "seg_log2": 3,
        "group_end": 1,
        "row_end": 1,
        "x": data.ArrayLayout(data.ArrayLayout(signed(8), window(n)), 2),
        "xm": data.ArrayLayout(N.SCALE_BITS, 2),
        "xe": data.ArrayLayout(signed(16), 2),
        "lanes": data.ArrayLayout(lane, lanes),
    })
    out = data.StructLayout({
        "y": data.ArrayLayout(data.ArrayLayout(signed(N.WIDE_BITS), 2), lanes)})
    return inp, out


class MatrixEngine(wiring.Component):
    """``lanes`` chains of ``n`` DSPs tapped every ``group``; stream of beats in, one result
    per lane and token out at every row end."""

    def __init__(self, lanes: int, n: int, group: int):
        self.lanes, self.n, self.group = lanes, n, group
        self.chains = [SparseDspChain(n, group) for _ in range(lanes)]
        inp, out = engine_layouts(lanes, n, group)
        super().__init__({"i": In(stream.Signature(inp)), "o": Out(stream.Signature(out))})

    def elaborate(self, platform):
        m = Module()
        en = ~self.o.valid | self.o.ready
        beat = self.i.payload
        m.d.comb += self.i.ready.eq(en)
        slots = self.n // self.group
        latency = self.chains[0].latency
        # Side information travels alongside the chain: the beat as it reaches the taps.
        side = delay(m, beat, latency, en, "side")
        valid = delay(m, self.i.valid, latency, en, "valid", reset_less=False)
        pack = beat.fmt != WeightFormat.INT8
        # Row results waiting for requantisation.
        r_valid = Signal()
        r_acc = Signal(data.ArrayLayout(data.ArrayLayout(signed(N.ACC_BITS), 2), self.lanes))
        r_xm = Signal(data.ArrayLayout(N.SCALE_BITS, 2))
        r_shift = Signal(data.ArrayLayout(data.ArrayLayout(signed(18), 2), self.lanes))
        seg_end_every = (1 << side.seg_log2) // self.group
        for lane, chain in enumerate(self.chains):
            m.submodules[f"chain{lane}"] = chain
            src = beat.lanes[lane]
            m.d.comb += [chain.ce.eq(en), chain.inp.sparsity.eq(beat.sparsity),
                         chain.inp.seg_log2.eq(beat.seg_log2), chain.inp.pack.eq(pack),
                         chain.inp.x.eq(beat.x), chain.inp.idx.eq(src.idx)]
            for k in range(self.n):
                m.d.comb += chain.inp.ops[k].eq(decode_operand(
                    src.codes[k], beat.fmt, src.aux[k // self.group]))
            gsum = Signal(data.ArrayLayout(data.ArrayLayout(signed(GROUP_SUM_BITS), 2), slots),
                          name=f"gsum{lane}")
            acc = Signal(data.ArrayLayout(signed(N.ACC_BITS), 2), name=f"acc{lane}")
            info = side.lanes[lane]
            for t in range(2):
                total = 0
                for j in range(slots):
                    is_end = ((j + 1) % seg_end_every) == 0
                    new = Signal(signed(GROUP_SUM_BITS), name=f"g{lane}_{j}_{t}")
                    m.d.comb += new.eq(gsum[j][t] + (chain.out.sums[j][t] & is_end.replicate(
                        GROUP_SUM_BITS)))
                    total = total + info.mant[j] * new
                    with m.If(en & valid):
                        m.d.sync += gsum[j][t].eq(new)
                        with m.If(side.group_end):
                            m.d.sync += gsum[j][t].eq(0)
                new_acc = Signal(signed(N.ACC_BITS), name=f"acc_new{lane}_{t}")
                m.d.comb += new_acc.eq(acc[t] + (total & side.group_end.replicate(N.ACC_BITS)))
                with m.If(en & valid):
                    m.d.sync += acc[t].eq(new_acc)
                    with m.If(side.row_end):
                        m.d.sync += [acc[t].eq(0), r_acc[lane][t].eq(new_acc),
                                     r_shift[lane][t].eq(info.shift - side.xe[t])]
        with m.If(en):
            m.d.sync += [r_valid.eq(valid & side.row_end), r_xm.eq(side.xm)]
            m.d.sync += self.o.valid.eq(r_valid)
            for lane in range(self.lanes):
                for t in range(2):
                    scaled = r_acc[lane][t] * r_xm[t]
                    m.d.sync += self.o.payload.y[lane][t].eq(saturate(
                        round_shift(scaled, r_shift[lane][t], N.WIDE_BITS + 1), N.WIDE_BITS))
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
    seg = min(kept_per_group, n)
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
            "fmt": fmt, "sparsity": sparsity_of(nm), "seg_log2": seg.bit_length() - 1,
            "group_end": int(last or ((b + 1) * n) % kept_per_group == 0),
            "row_end": int(last),
            "x": xpad[:, b * cover:(b + 1) * cover].tolist(),
            "xm": [int(v) for v in xm], "xe": [int(v) for v in xe], "lanes": lane_recs,
        })
    for beat in out:  # pad the window to the engine's width
        beat["x"] = [row + [0] * (window(n) - len(row)) for row in beat["x"]]
    return out

