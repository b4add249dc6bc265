"""The matrix engine: ``lanes`` sparse DSP chains side by side, one weight row each.

A beat carries the activation window of two tokens (shared by every lane) and, per lane,
``n`` packed weight codes with their sparse indices, the group's aux byte (W2 zero-point or
mixed type id) per ``group`` elements, and the group scale mantissas. Each lane

1. decodes the codes (:mod:`hw.weight_decode`),
2. runs them through the sparse DSP chain (:mod:`hw.sparse_dsp_chain`), two tokens per DSP,
3. accumulates each quantisation group's partial sums exactly, and at the group's end adds
   ``mant * group_sum`` into the 48-bit accumulator (BitMoD's per-group rescale),
4. at the row's end latches the row, which the engine's :class:`ResultCollector` turns
   into :func:`llmacc.numerics.linear_out`'s ``sat32(round_shift(acc * m_x, shift - e_x))``
   per token, one lane and token per cycle in each of its ``ways`` (a way per memory
   channel on the streaming path: a channel's lanes drain in the same cycles, however many
   channels there are).

MATVEC is a beat stream with one token (the second token's scale is 0); MATMAT streams token
pairs. :func:`beats` is the schedule the buffer address generator follows, and the golden
feeder of the tests. The engine equals ``numerics.linear_acc`` + ``linear_out`` bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
from amaranth.hdl import Cat, Module, Mux, ResetInserter, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.fixed_point import round_shift, saturate
from hw.hierarchy import shared
from hw.pipeline import delay, select
from hw.sparse_dsp_chain import (
    INDEX_BITS,
    INDEX_IN_CODE_AT,
    SUM_BITS,
    ActivationRouter,
    LaneChain,
    router_layouts,
    skewed_sparsity_layout,
    window,
)
from hw.weight_decode import slot_decode
from llmacc import numerics as N
from llmacc.isa import Sparsity, WeightFormat
from llmacc.kernel import RESULT_STAGES, chain_latency
from llmacc.layout import Descriptor, sparsity_of


class EngineError(ValueError):
    """A tile the engine's schedule cannot run (names the reason)."""


#: One result of the engine: a lane's row for one token, requantised (``linear_out``).
RESULT = data.StructLayout({"y": signed(N.WIDE_BITS)})


def results_layout(ways: int) -> data.ArrayLayout:
    """One transfer of the engine's results: a result from each of the collector's ways."""
    return data.ArrayLayout(RESULT, ways)


def engine_layouts(lanes: int, n: int, group: int, ways: int = 1,
                   index_in_code: bool = False):
    """``(head, lane, out)``: a beat's shared fields, one lane's fields (no ``idx`` where
    the N:M index rides in the codes' high bits, ``hw.sparse_dsp_chain.INDEX_IN_CODE_AT``),
    one transfer of results (:func:`results_layout`).

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
        **({} if index_in_code else {"idx": data.ArrayLayout(INDEX_BITS, n)}),
        "aux": data.ArrayLayout(8, slots),
        **{name: field.shape for name, field in lane_side(slots)},
    })
    return head, lane, results_layout(ways)


def lane_side(slots: int) -> data.StructLayout:
    """A lane's fields of a beat that wait for the beat's slot sums: the slots' group scales
    and the row's exponent (delayed in the lane, so that a lane's cost is all in its
    module)."""
    return data.StructLayout({"mant": data.ArrayLayout(N.SCALE_BITS, slots),
                              "shift": signed(16)})


def lane_layouts(n: int, group: int, index_in_code: bool = False
                 ) -> dict[str, data.StructLayout]:
    """Ports of one lane: its weights of a beat (``inp``, at the chain's input), the
    activations the engine's router gives its elements (``feed``) with the sparsity at each
    skew depth (``sparsity``), and the beat's fields that meet the chain's taps ``latency``
    beats later (``tap``)."""
    _, lane, _ = engine_layouts(1, n, group, index_in_code=index_in_code)
    return {
        "inp": data.StructLayout({"fmt": WeightFormat,
                                  **{name: field.shape for name, field in lane}}),
        "feed": router_layouts(n)[1],
        "sparsity": skewed_sparsity_layout(group),
        "tap": data.StructLayout({"valid": 1, "pack": 1, "group_end": 1, "row_end": 1}),
    }


class EngineLane(wiring.Component):
    """One weight row's datapath: decode, sparse DSP chain, exact group sums and the 48-bit
    accumulator. At the row's end it latches the row (``acc`` per token, and its exponent
    ``shift``) for the :class:`ResultCollector`, and starts the next. The engine's lanes are
    identical: board builds convert this module once (:mod:`hw.hierarchy`)."""

    def __init__(self, n: int, group: int, index_in_code: bool = False,
                 preskewed: bool = False):
        self.n, self.group, self.index_in_code = n, group, index_in_code
        self.preskewed = preskewed
        ports = lane_layouts(n, group, index_in_code)
        super().__init__({
            "en": In(1), "inp": In(ports["inp"]), "feed": In(ports["feed"]),
            "sparsity": In(ports["sparsity"]), "tap": In(ports["tap"]),
            "acc": Out(data.ArrayLayout(signed(N.ACC_BITS), 2)), "shift": Out(signed(16))})

    @property
    def latency(self) -> int:
        return chain_latency(self.group)

    def elaborate(self, platform):
        m = Module()
        m.submodules.chain = chain = LaneChain(self.n, self.group, self.index_in_code,
                                               self.preskewed)
        inp, tap, en = self.inp, self.tap, self.en
        m.d.comb += [chain.ce.eq(en), chain.feed.eq(self.feed),
                     chain.sparsity.eq(self.sparsity), chain.pack.eq(tap.pack)]
        if not self.index_in_code:
            m.d.comb += chain.inp.idx.eq(inp.idx)
        slots = self.n // self.group
        groups = [slot_decode(m, inp.fmt, inp.aux[j], f"slot{j}") for j in range(slots)]
        m.d.comb += [chain.inp.codes.eq(inp.codes),
                     *(chain.inp.slot[j].eq(groups[j]) for j in range(slots))]
        side_in = Signal(lane_side(slots))
        m.d.comb += side_in.shift.eq(inp.shift)
        for j in range(slots):  # a group whose type id names no type counts zero
            m.d.comb += side_in.mant[j].eq(Mux(groups[j].zero, 0, inp.mant[j]))
        side = delay(m, side_in, self.latency, en, "side")  # meets the beat's slot sums
        gsum = Signal(data.ArrayLayout(data.ArrayLayout(signed(SUM_BITS), 2), slots))
        acc = Signal(data.ArrayLayout(signed(N.ACC_BITS), 2))
        step = en & tap.valid
        with m.If(step & tap.row_end):
            m.d.sync += self.shift.eq(side.shift)
        for t in range(2):
            total = 0
            for j in range(slots):
                new = Signal(signed(SUM_BITS), name=f"g{j}_{t}")
                m.d.comb += new.eq(gsum[j][t] + chain.out.sums[j][t])
                total = total + side.mant[j] * new
                with m.If(step):
                    m.d.sync += gsum[j][t].eq(Mux(tap.group_end, 0, new))
            new_acc = Signal(signed(N.ACC_BITS), name=f"acc_new{t}")
            m.d.comb += new_acc.eq(acc[t] + Mux(tap.group_end, total, 0))
            with m.If(step):
                m.d.sync += acc[t].eq(new_acc)
                with m.If(tap.row_end):
                    m.d.sync += [acc[t].eq(0), self.acc[t].eq(new_acc)]
        return m


class ResultCollector(wiring.Component):
    """The rows the lanes latched, requantised one lane and token per cycle in each of
    ``ways`` ways (way ``w`` takes lanes ``w * lanes / ways`` on), in the order the compute
    unit writes them (lane by lane, token 0 then 1): ``linear_out``'s
    ``sat32(round_shift(acc * xm, shift - xe))`` once per way, pipelined (pick, multiply,
    round, saturate), instead of once per lane and token. Each transfer of ``o`` carries
    the ways' results of one lane index and token.

    ``start`` (one cycle, when the lanes latch a row) takes the row's token scales ``xm`` and
    ``xe``; ``busy`` is high while the lanes' rows are still to be read, so the engine holds
    back the next row end (not the beats before it: the next pass streams while this one
    drains). ``o`` stalls the whole pipeline while its results wait.
    """

    STAGES = RESULT_STAGES  #: pick, multiply, round, saturate

    def __init__(self, lanes: int, ways: int = 1):
        if lanes % ways:
            raise ValueError(f"{lanes} lanes do not split into {ways} ways")
        self.lanes, self.ways = lanes, ways
        super().__init__({
            "start": In(1),
            "acc": In(data.ArrayLayout(data.ArrayLayout(signed(N.ACC_BITS), 2), lanes)),
            "shift": In(data.ArrayLayout(signed(16), lanes)),
            "xm": In(data.ArrayLayout(N.SCALE_BITS, 2)), "xe": In(data.ArrayLayout(signed(16), 2)),
            "busy": Out(1),
            "o": Out(stream.Signature(results_layout(ways)))})

    def elaborate(self, platform):
        m = Module()
        per = self.lanes // self.ways
        items = 2 * per
        index = Signal(range(items))
        xm = Signal.like(self.xm)
        xe = Signal.like(self.xe)
        with m.If(self.start):
            m.d.sync += [self.busy.eq(1), index.eq(0), xm.eq(self.xm), xe.eq(self.xe)]
        ce = ~self.o.valid | self.o.ready
        token = index[0]
        token_xm, token_xe = Mux(token, xm[1], xm[0]), Mux(token, xe[1], xe[0])  # all ways'
        valid = Signal(self.STAGES - 1)
        with m.If(ce):
            with m.If(self.busy):
                m.d.sync += index.eq(index + 1)
                with m.If(index == items - 1):
                    m.d.sync += self.busy.eq(0)
            m.d.sync += [valid.eq(Cat(self.busy, valid[:-1])), self.o.valid.eq(valid[-1])]
        for w in range(self.ways):
            lanes = range(w * per, (w + 1) * per)
            acc = select(m, [a for lane in lanes for a in self.acc[lane]], index, f"acc{w}")
            row_shift = select(m, [self.shift[lane] for lane in lanes], index >> 1,
                               f"row_shift{w}")
            self._requantise(m, ce, acc, row_shift, token_xm, token_xe, self.o.payload[w].y, w)
        return m

    @staticmethod
    def _requantise(m, ce, acc, row_shift, xm, xe, y, way: int):
        """One way's pipeline behind its pick: multiply, round, saturate into ``y``."""
        picked = Signal(data.StructLayout({"acc": signed(N.ACC_BITS), "xm": N.SCALE_BITS,
                                           "shift": signed(18)}), name=f"picked{way}")
        product = Signal(signed(N.ACC_BITS + N.SCALE_BITS + 1), name=f"product{way}")
        shift = Signal(signed(18), name=f"shift{way}")
        rounding = round_shift(product, shift, N.WIDE_BITS + 1)
        rounded = Signal(rounding.shape(), name=f"rounded{way}")
        with m.If(ce):
            m.d.sync += [picked.acc.eq(acc), picked.xm.eq(xm), picked.shift.eq(row_shift - xe),
                         product.eq(picked.acc * picked.xm), shift.eq(picked.shift),
                         rounded.eq(rounding), y.eq(saturate(rounded, N.WIDE_BITS))]


class MatrixEngine(wiring.Component):
    """``lanes`` chains of ``n`` DSPs tapped every ``group``; stream of beats in (the shared
    fields as ``i``'s payload, each lane's in ``lane_in``, taken with it); out, after every
    row end, its ``2 * lanes`` results, ``ways`` per transfer (:class:`ResultCollector`):
    in each way lane by lane, token 0, then 1. ``clear`` (a cycle is enough) drops a
    stream cut short: the engine's state is reset and every lane's partial sums zeroed
    (a row and group end forced on the lanes, which board builds share as one module
    outside the reset).

    ``preskewed``: the lanes' weights come pre-skewed (``llmacc.layout.StreamGeometry.skew``)
    and the chain advances by beats, not cycles: ``hold`` stops it while a stream owes the
    next beat, so that a weight and its activation meet whatever the stalls; a ``tail`` beat
    (the stream's last weights, no activations) advances it without reaching the taps.
    Between streams the chain runs free and drains."""

    def __init__(self, lanes: int, n: int, group: int, ways: int = 1,
                 index_in_code: bool = False, preskewed: bool = False):
        self.lanes, self.n, self.group, self.ways = lanes, n, group, ways
        self.index_in_code, self.preskewed = index_in_code, preskewed
        self.units = [EngineLane(n, group, index_in_code, preskewed) for _ in range(lanes)]
        head, lane, out = engine_layouts(lanes, n, group, ways, index_in_code)
        flow = {"hold": In(1), "tail": In(1)} if preskewed else {}
        super().__init__({"i": In(stream.Signature(head)), "lane_in": In(lane).array(lanes),
                          "o": Out(stream.Signature(out)), "clear": In(1), **flow})

    def elaborate(self, platform):
        m = Module()
        m.submodules.collector = collector = ResultCollector(self.lanes, self.ways)
        wiring.connect(m, wiring.flipped(self.o), collector.o)
        en = Signal()  # the chain advances unless a row end waits for the collector
        beat = self.i.payload
        m.d.comb += self.i.ready.eq(en)
        latency = self.units[0].latency
        # What the taps' consumers share of a beat travels alongside the chain (not the codes
        # and activations, which the chain consumes: delaying the whole beat would cost a
        # register per bit and pipeline stage; each lane delays its own scales).
        m.submodules.router = router = ActivationRouter(self.n, self.group)
        pack = beat.fmt != WeightFormat.INT8
        m.d.comb += [router.ce.eq(en), router.inp.x.eq(beat.x),
                     router.inp.sparsity.eq(beat.sparsity), router.inp.pack.eq(pack)]
        side_in = Signal(data.StructLayout({
            "pack": 1, "group_end": 1, "row_end": 1,
            "xm": data.ArrayLayout(N.SCALE_BITS, 2), "xe": data.ArrayLayout(signed(16), 2)}))
        m.d.comb += [side_in.pack.eq(pack), side_in.group_end.eq(beat.group_end),
                     side_in.row_end.eq(beat.row_end), side_in.xm.eq(beat.xm),
                     side_in.xe.eq(beat.xe)]
        side = delay(m, side_in, latency, en, "side")
        real = self.i.valid & ~self.tail if self.preskewed else self.i.valid
        valid = delay(m, real, latency, en, "valid", reset_less=False)
        row_end = valid & side.row_end
        blocked = row_end & collector.busy
        m.d.comb += [en.eq(~(blocked | self.hold) if self.preskewed else ~blocked),
                     collector.start.eq(row_end & en),
                     collector.xm.eq(side.xm), collector.xe.eq(side.xe)]
        for lane, unit in enumerate(self.units):
            m.submodules[f"lane{lane}"] = shared(
                platform, unit, f"engine_lane_{self.n}_{self.group}"
                f"{'_icode' if self.index_in_code else ''}{'_pre' if self.preskewed else ''}")
            src = self.lane_in[lane]
            m.d.comb += [unit.en.eq(en | self.clear), unit.inp.fmt.eq(beat.fmt),
                         *(unit.inp[name].eq(src[name]) for name, _ in src.shape()),
                         unit.feed.eq(router.feed), unit.sparsity.eq(router.sparsity),
                         unit.tap.valid.eq(valid | self.clear), unit.tap.pack.eq(side.pack),
                         unit.tap.group_end.eq(side.group_end | self.clear),
                         unit.tap.row_end.eq(side.row_end | self.clear),
                         collector.acc[lane].eq(unit.acc),
                         collector.shift[lane].eq(unit.shift)]
        return ResetInserter(self.clear)(m)


def beats(fmt: WeightFormat, nm: tuple[int, int] | None, group: int, codes, keep, aux, mant,
          shift, x, xm, xe, n: int, chain_group: int, index_in_code: bool = False
          ) -> list[dict]:
    """The beats of one tile of ``lanes`` rows against two tokens (the engine's schedule).

    ``codes`` [lanes, K] stored codes (INT8 as bytes), ``keep`` [lanes, K] bool (N:M) or None,
    ``aux``/``mant`` [lanes, K/group], ``shift`` [lanes], ``x`` [2, K] INT8 codes with scales
    ``xm``/``xe`` [2]. INT8 tiles take one token (``x[1]`` must be zero). ``index_in_code``:
    the indices ride in the codes' bits 4-7, as such an engine takes them.
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
    if index_in_code and fmt is WeightFormat.INT8 and nm is not None:
        raise EngineError("INT8 codes leave no room for an N:M index in their high bits")
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
            fields = {"codes": (c | ix << INDEX_IN_CODE_AT).tolist()} if index_in_code else \
                {"codes": c.tolist(), "idx": ix.tolist()}
            lane_recs.append({
                **fields,
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

