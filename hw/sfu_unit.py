"""The SFU unit: executes SFU instructions (``isa.SfuFields``) from the buffers, as the
emulator does (``sim/emulator.py``), record layouts from :mod:`llmacc.layout`.

A producer walks the instruction's ``rows`` x ``length`` input elements, reads each one's
fields through two :class:`FieldFetch` ports (operand ``a``; operand ``b`` or the table entry)
and feeds the element stage (:class:`hw.sfu.ElementSfu`: SILU, EMBED; ROPE where a head is
not whole beats; ADD and MUL where ``cfg.row_lanes`` is 1), the binary lanes
(:class:`hw.sfu.BinarySfu`: ADD and MUL, ``cfg.row_lanes`` pairs a beat; ROPE, a beat of
elements with their cosines and sines, one run of TRIG entries) or the row stage
(:class:`hw.sfu_row.RowSfu`: SOFTMAX, RMSNORM, QUANT8 per segment, KVQUANT per channel
group; ``cfg.row_lanes`` elements a cycle in each pass, the producer reading a beat of them
as one run of each fetch wherever the beats stay inside the stage's rows: a row of one
segment, or segments of whole beats; else an element a cycle). A
consumer turns the results into records with a :class:`FieldPacker`, a row-stage beat of
``row_lanes`` results a push: wide rows, INT8 rows with their scale header (zero-padded to
``imm`` codes), KV blocks (``layout.kv_block``, one per group: its rows' payloads, then
each row's header written alone into its slot, ``POS % kv_slots + r``, of the block's
header words: the packer starts it at that byte and writes only its bytes).

Before anything runs, the unit checks what the emulator refuses (:attr:`Fault.PARAM`):
RoPE head sizes that are odd or do not divide the row, segments and KV groups that do not
divide it, KV widths other than 4 and 8 bits, an embedding group below 1, an RMSNorm epsilon
beyond ``EPS_BITS``; records outside their buffer are :attr:`Fault.RANGE`; rows longer than
the row stage's memory are :attr:`Fault.UNSUPPORTED`. A faulting instruction writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import Out

from hw.buffer_access import (
    FIELD_BITS,
    FieldFetch,
    FieldPacker,
    read_port,
    snoop_writes,
    view,
    word_count,
    write_port,
)
from hw.controller import unit_members
from hw.fixed_point import one_of
from hw.serial_arith import SerialDivider
from hw.sfu import BinarySfu, ElementSfu
from hw.sfu_row import LEN_BITS, RowFunc, RowSfu
from llmacc import layout as L
from llmacc import numerics as N
from llmacc.config import AccelConfig
from llmacc.isa import Buffer, Reg, SfuFields, SfuFunc, SfuStage, sfu_funcs
from llmacc.kernel import Fault

ELEMENT_FUNCS = sfu_funcs(stage=SfuStage.ELEMENT)


def row_limit(cfg: AccelConfig) -> int:
    """The longest row (or segment, or KV group) the row stage holds: a whole ACT buffer of
    wide values, or what the ``length`` field can name."""
    return min(cfg.buffer_words(Buffer.ACT) * cfg.axi_data_bytes // 4, (1 << LEN_BITS) - 1)


@dataclass(frozen=True)
class _KvSlots:
    """KVQUANT's header slot: row ``r``'s header is at slot ``POS % kv_slots + r`` of its
    block's header words; ``word`` follows the groups' blocks, ``row`` the first group's."""

    row: Signal  #: the first group's header word of the current row
    word: Signal  #: the current group's
    slot: Signal | Const  #: 0 where a word holds one header

    @classmethod
    def signals(cls, slots: int) -> _KvSlots:
        return cls(Signal(28, name="kvh_row"), Signal(28, name="kvh"),
                   Signal(range(slots), name="kvh_slot") if slots > 1 else Const(0, 1))

    def start(self, m, headers, pos) -> None:
        """The first row: slot ``POS % kv_slots`` of the first header word at ``headers``."""
        m.d.sync += [self.row.eq(headers), self.word.eq(headers)]
        if isinstance(self.slot, Signal):
            m.d.sync += self.slot.eq(pos[:len(self.slot)])

    def next_row(self, m) -> None:
        """The next row's slot: the next one, or the first of the next word."""
        if isinstance(self.slot, Signal):
            row = self.row + (self.slot == (1 << len(self.slot)) - 1)
            m.d.sync += self.slot.eq(self.slot + 1)
        else:
            row = self.row + 1
        m.d.sync += [self.row.eq(row), self.word.eq(row)]


class SfuUnit(wiring.Component):
    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        super().__init__({
            **unit_members(),
            "rd_a": Out(read_port(cfg)),
            "rd_b": Out(read_port(cfg)),
            "wr": Out(write_port(cfg)),
        })

    def elaborate(self, platform):  # noqa: C901 -- one sequencer, one state machine
        m = Module()
        cfg = self.cfg
        w = cfg.axi_data_bytes
        lw = (w - 1).bit_length()  # log2 of the word in bytes
        lb = lw + 3  # log2 of the word in bits
        max_len = row_limit(cfg)
        lanes = cfg.row_lanes
        run = lanes * L.WIDE.width if lanes > 1 else 0  # a beat of operands, one fetch
        # a beat's operands are runs, walked with the next word read behind them
        m.submodules.fetch_a = fa = FieldFetch(cfg, run_bits=run, read_ahead=bool(run))
        m.submodules.fetch_b = fb = FieldFetch(cfg, run_bits=run, read_ahead=bool(run))
        m.submodules.packer = pk = FieldPacker(cfg, push_bits=max(FIELD_BITS,
                                                                  lanes * L.WIDE.width))
        m.submodules.element = el = ElementSfu()
        bs = None
        if lanes > 1:
            m.submodules.binary = bs = BinarySfu(lanes)
        m.submodules.row = rs = RowSfu(max_len, lanes)
        m.submodules.div = div = SerialDivider(16, 16)
        wiring.connect(m, fa.port, wiring.flipped(self.rd_a))
        wiring.connect(m, fb.port, wiring.flipped(self.rd_b))
        wiring.connect(m, pk.port, wiring.flipped(self.wr))
        snoop_writes(m, (fa, fb), pk.port)

        def words(nbytes):
            return word_count(nbytes, w)

        f = Signal(SfuFields)
        pos, sink, window = Signal(32), Signal(32), Signal(32)
        length, rows = f.length, f.rows
        func = f.func
        is_element = one_of(func, ELEMENT_FUNCS)
        binary, rope = one_of(func, sfu_funcs(operands="binary")), one_of(func, sfu_funcs(
            operands="rope"))
        gamma = one_of(func, sfu_funcs(operands="gamma"))
        # sizes, fixed per instruction
        wide = Signal(16)  # wide row pitch
        quot = Signal(16)  # segments / KV groups per row; ROPE heads; EMBED scale groups
        seg = Signal(16)  # elements per row-stage row (QUANT8 segment, KV group)
        pad = Signal(16)  # QUANT8: codes per output row
        kv_bits = Signal(4)
        in_pitch, b_pitch, out_pitch = Signal(16), Signal(16), Signal(16)
        a_off = Signal(16)  # EMBED: words from a record to its codes
        out_recs = Signal(28)  # records (or rows) the consumer writes
        group_stride = Signal(28)  # KVQUANT: words between a row's groups
        eps = Signal(N.EPS_BITS)
        e_row = Signal(16)  # EMBED: the record's exponent
        # counters
        pr, pi = Signal(12), Signal(LEN_BITS + 1)  # producer row, element
        pj = Signal(16)  # ROPE: pair within head; EMBED: element within scale group
        gi = Signal(16)  # EMBED: scale group
        phase = Signal()  # ROPE: second half of a pair; EMBED: exponent read
        x0, cos = Signal(32), Signal(16)
        row_a, row_b = Signal(28), Signal(28)
        ci = Signal(LEN_BITS + 1)  # consumer element within row
        cr, cg = Signal(28), Signal(16)  # consumer records done; KV group within row
        rec_row, rec = Signal(28), Signal(28)  # KVQUANT payload addresses
        kvh = _KvSlots.signals(L.kv_slots(w))  # KVQUANT's header slots
        produced, consumed = Signal(), Signal()
        beats = Signal()  # the producer feeds `lanes` elements a step (the last of a row fewer)
        to_lanes = beats & is_element if bs is not None else Const(0)  # to the binary lanes
        # consumer: 0 body, 1 header, 2 KV header start, 3 padding, 4 KV payload start
        cstate = Signal(range(5))
        pad_left = Signal(16)

        depth = {b: cfg.buffer_words(b) for b in Buffer}
        half = f.imm[1:]  # ROPE: pairs per head

        def fail(code):
            m.d.sync += self.fault.eq(code)
            m.next = "COMPLETE"

        def push(value, width, align=0, tail=0):
            m.d.comb += [pk.push.valid.eq(1), pk.push.payload.value.eq(value),
                         pk.push.payload.width.eq(width), pk.push.payload.align.eq(align),
                         pk.push.payload.tail.eq(tail)]
            return pk.push.ready

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.issue.ready.eq(1)
                with m.If(self.issue.valid):
                    regs = self.issue.payload.regs
                    m.d.sync += [f.eq(self.issue.payload.word.payload.sfu), self.fault.eq(0),
                                 pos.eq(regs[Reg.POS.value]), sink.eq(regs[Reg.SINK.value]),
                                 window.eq(regs[Reg.WINDOW.value])]
                    m.d.comb += [fa.flush.eq(1), fb.flush.eq(1)]
                    m.next = "SIZES"
            with m.State("SIZES"):
                q8_seg = Mux(f.imm2 == 0, length, f.imm2)
                m.d.sync += [wide.eq(words(L.element_bit(length, L.WIDE) >> 3)),
                             kv_bits.eq(f.imm2[:4]),
                             seg.eq(Mux(func == SfuFunc.QUANT8, q8_seg, Mux(
                                 func == SfuFunc.KVQUANT, f.imm, length))),
                             pad.eq(Mux(f.imm == 0, q8_seg, f.imm))]
                num = Mux(func == SfuFunc.EMBED, length + f.imm - 1, length)
                den = Mux(func == SfuFunc.QUANT8, q8_seg, f.imm)
                m.d.comb += [div.start.eq(1), div.num.eq(num), div.den.eq(den)]
                m.next = "DIVIDE"
            with m.State("DIVIDE"), m.If(~div.busy & ~div.start):
                m.d.sync += quot.eq(div.quotient)
                m.next = "PITCHES"
            with m.State("PITCHES"):
                with m.Switch(func):
                    with m.Case(SfuFunc.EMBED):
                        scales = L.embed_header(w) + words(L.element_bit(quot, L.MANT) >> 3)
                        m.d.sync += [in_pitch.eq(scales + words(
                                         L.element_bit(length, L.QCODE) >> 3)),
                                     a_off.eq(scales)]
                    with m.Default():
                        m.d.sync += in_pitch.eq(wide)
                with m.Switch(func):
                    with m.Case(SfuFunc.QUANT8):
                        m.d.sync += [out_pitch.eq(L.qrow_header(w) + words(
                                         L.element_bit(pad, L.QCODE) >> 3)),
                                     out_recs.eq(rows * quot)]
                    with m.Case(SfuFunc.KVQUANT):  # payload words
                        m.d.sync += [out_pitch.eq(words((seg * kv_bits + 7) >> 3)),
                                     out_recs.eq(rows * quot)]
                    with m.Default():
                        m.d.sync += [out_pitch.eq(wide), out_recs.eq(rows)]
                m.d.sync += b_pitch.eq(Mux(func == SfuFunc.ROPE, words(
                    L.element_bit(f.imm, L.TRIG) >> 3), Mux(
                    f.imm[0] | (func == SfuFunc.RMSNORM), 0, wide)))
                m.next = "CHECK"
            with m.State("CHECK"):
                remainder = length - quot * Mux(func == SfuFunc.QUANT8, seg, f.imm)
                bad = Signal()
                with m.Switch(func):
                    with m.Case(SfuFunc.ROPE):
                        m.d.comb += bad.eq((f.imm <= 0) | f.imm[0] | (remainder != 0))
                    with m.Case(SfuFunc.QUANT8):
                        m.d.comb += bad.eq((seg.as_signed() <= 0) | (remainder != 0) |
                                           (pad.as_signed() < seg.as_signed()))
                    with m.Case(SfuFunc.KVQUANT):
                        m.d.comb += bad.eq((f.imm <= 0) | (remainder != 0) |
                                           ~one_of(f.imm2, L.KV_CODE_BITS))
                    with m.Case(SfuFunc.EMBED):
                        m.d.comb += bad.eq(f.imm <= 0)
                b_buf = Mux(f.imm[0] | gamma | rope, Buffer.TABLE, Buffer.ACT)
                b_rows = Mux(f.imm[0] & binary, 1, rows)
                b_end = Mux(gamma, f.src_b + L.gamma_header(w) +
                            words(L.element_bit(length, L.GAMMA) >> 3), f.src_b + b_rows * b_pitch)
                uses_b = binary | rope | gamma
                is_kv = func == SfuFunc.KVQUANT
                block = rows * out_pitch + L.kv_header_words(rows, w)
                out_buf_end = Mux(is_kv, depth[Buffer.KV], depth[Buffer.ACT])
                off_end = (f.src_a + rows * in_pitch > depth[Buffer.ACT]) | (uses_b & (
                    b_end > Mux(b_buf == Buffer.TABLE, depth[Buffer.TABLE],
                                depth[Buffer.ACT]))) | (f.dst + Mux(
                                    is_kv, quot * block, out_recs * out_pitch) > out_buf_end)
                too_long = ~is_element & (seg > max_len)
                if lanes > 1:  # the lanes (binary, or RoPE where heads are whole beats), or
                    # beats inside the row stage's rows (one segment a row, or segments of
                    # whole beats)
                    lane_bits = (lanes - 1).bit_length()
                    whole = (seg == length) | (seg[:lane_bits] == 0)
                    rope_beats = rope & (f.imm[:lane_bits] == 0)
                    m.d.sync += beats.eq(Mux(is_element, binary | rope_beats, whole))
                kvh.start(m, f.dst + rows * out_pitch, pos)
                m.d.sync += [row_a.eq(f.src_a), row_b.eq(f.src_b),
                             rec_row.eq(f.dst), rec.eq(f.dst),
                             group_stride.eq(block), pr.eq(0), pi.eq(0), pj.eq(0),
                             gi.eq(0), phase.eq(func == SfuFunc.EMBED), ci.eq(0), cr.eq(0),
                             cg.eq(0), cstate.eq(Mux(func == SfuFunc.QUANT8, 1, Mux(
                                 func == SfuFunc.KVQUANT, 2, 0))),
                             produced.eq(0), consumed.eq(0)]
                with m.If(bad):
                    fail(Fault.PARAM)
                with m.Elif((rows != 0) & off_end):
                    fail(Fault.RANGE)
                with m.Elif(too_long):
                    fail(Fault.UNSUPPORTED)
                with m.Elif((rows == 0) | (length == 0)):
                    m.next = "COMPLETE"
                with m.Elif(func == SfuFunc.RMSNORM):
                    m.next = "EPS"
                with m.Else():
                    m.next = "START"
            with m.State("EPS"):
                m.d.comb += [fb.req.valid.eq(1), fb.req.payload.buf.eq(Buffer.TABLE),
                             fb.req.payload.bit.eq(f.src_b << lb)]
                value = view(L.GammaHeader, fb.value).eps
                with m.If(fb.req.ready):
                    m.d.sync += eps.eq(value)
                    limit = 1 << (N.EPS_BITS - 1)
                    with m.If((value >= limit) | (value < -limit)):
                        fail(Fault.PARAM)
                    with m.Else():
                        m.next = "START"
            with m.State("START"):
                m.d.comb += [pk.start.eq(1), pk.addr.eq(f.dst),
                             pk.buf.eq(Mux(func == SfuFunc.KVQUANT, Buffer.KV, Buffer.ACT))]
                m.next = "RUN"
            with m.State("RUN"):
                self._produce(m, f, fa, fb, el, bs, rs, lb, a_off, in_pitch, b_pitch, seg, kv_bits,
                              eps, pos, sink, window, e_row, pr, pi, pj, gi, phase, x0, cos,
                              row_a, row_b, half, is_element, beats, to_lanes, produced)
                self._consume(m, f, el, bs, rs, pk, push, kv_bits, seg, pad, quot, out_pitch,
                              group_stride, ci, cr, cg, rec_row, rec, kvh, cstate, pad_left,
                              out_recs, is_element, to_lanes, consumed)
                with m.If(produced & consumed & pk.idle):
                    m.next = "COMPLETE"
            with m.State("COMPLETE"):
                m.d.comb += self.complete.eq(1)
                m.next = "IDLE"
        return m

    def _produce(self, m, f, fa, fb, el, bs, rs, lb, a_off, in_pitch, b_pitch, seg, kv_bits, eps,
                 pos, sink, window, e_row, pr, pi, pj, gi, phase, x0, cos, row_a, row_b, half,
                 is_element, beats, to_lanes, produced):
        """Feed one element (or RoPE half-pair, or EMBED exponent) per step, or with
        ``beats`` a beat of ``row_lanes`` elements of the row stage (the last of a row
        shorter), its operands each one run of a fetch."""
        w = self.cfg.axi_data_bytes
        func, length = f.func, f.length
        a_req, b_req = fa.req.payload, fb.req.payload
        need_b = Signal()
        go = Signal()  # the fetched fields are here and the stage takes them
        if self.cfg.row_lanes > 1:  # the fetches have runs (`run` matters only when snooping)
            m.d.comb += [a_req.run.eq(beats), b_req.run.eq(beats)]
        m.d.comb += [a_req.buf.eq(Buffer.ACT), b_req.buf.eq(Buffer.ACT),
                     a_req.bit.eq((row_a << lb) + L.element_bit(pi, L.WIDE)),
                     b_req.bit.eq((row_b << lb) + L.element_bit(pi, L.WIDE))]
        with m.Switch(func):
            with m.Case(*sfu_funcs(operands="binary")):
                m.d.comb += need_b.eq(1)
                with m.If(f.imm[0]):
                    m.d.comb += b_req.buf.eq(Buffer.TABLE)
            with m.Case(SfuFunc.RMSNORM):
                m.d.comb += [need_b.eq(1), b_req.buf.eq(Buffer.TABLE),
                             b_req.bit.eq(((f.src_b + L.gamma_header(w)) << lb) +
                                          L.element_bit(pi, L.GAMMA))]
            with m.Case(SfuFunc.ROPE):
                m.d.comb += [need_b.eq(1), b_req.buf.eq(Buffer.TABLE),
                             b_req.bit.eq((row_b << lb) +
                                          L.element_bit(L.rope_entry(pj, phase), L.TRIG))]
            with m.Case(SfuFunc.EMBED):
                m.d.comb += [need_b.eq(1),
                             a_req.bit.eq(((row_a + a_off) << lb) + L.element_bit(pi, L.QCODE)),
                             b_req.bit.eq(Mux(phase, row_a << lb, ((row_a + L.embed_header(w))
                                                                   << lb) +
                                              L.element_bit(gi, L.MANT)))]
        need_a = ~((func == SfuFunc.EMBED) & phase)
        fetched = (~need_a | fa.req.ready) & (~need_b | fb.req.ready)
        m.d.comb += [fa.req.valid.eq(~produced & need_a), fb.req.valid.eq(~produced & need_b)]
        a_val = Mux(func == SfuFunc.EMBED, fa.value[:L.QCODE.width].as_signed(),
                    fa.value[:L.WIDE.width].as_signed())
        # element stage
        ep = el.i.payload
        m.d.comb += [ep.func.eq(func), ep.a.eq(a_val), ep.b.eq(fb.value[:L.WIDE.width].as_signed()),
                     ep.shift.eq(f.shift), ep.imm.eq(f.imm), ep.imm2.eq(f.imm2)]
        with m.Switch(func):
            with m.Case(SfuFunc.ROPE):
                m.d.comb += [ep.a.eq(x0.as_signed()), ep.b.eq(a_val),
                             ep.c.eq(Cat(cos, fb.value[:L.TRIG.width]))]
            with m.Case(SfuFunc.EMBED):
                m.d.comb += [ep.b.eq(fb.value[:L.MANT.width]),
                             ep.shift.eq(e_row.as_signed() + f.shift)]
        # row stage and binary lanes
        rp, lanes = rs.i.payload, self.cfg.row_lanes
        count = Signal(range(lanes + 1))
        m.d.comb += count.eq(1)
        for j in range(lanes):
            m.d.comb += [rp.a[j].eq(a_val), rp.gamma[j].eq(fb.value[:L.GAMMA.width].as_signed())]
        if bs is not None:
            gammas = fb.run.word_select(pi[(lanes - 1).bit_length()], lanes * L.GAMMA.width)
            # RoPE: the beat's TRIG entries, from pair pj's cosine on (a run holds two beats:
            # the bit of entry rope_entry(pj, 0) that picks the beat, as a bit of pj)
            pair_shift = L.rope_entry(1, 0).bit_length() - 1
            trigs = fb.run.word_select(pj[(lanes - 1).bit_length() - pair_shift],
                                       lanes * L.TRIG.width)
            bp = bs.i.payload
            m.d.comb += [bp.func.eq(func), bp.shift.eq(f.shift), bp.count.eq(count)]
            with m.If(beats):
                m.d.comb += count.eq(Mux(length - pi < lanes, length - pi, lanes))
                for j in range(lanes):
                    a_j = fa.run.word_select(j, L.WIDE.width)
                    m.d.comb += [rp.a[j].eq(a_j), bp.a[j].eq(a_j),
                                 rp.gamma[j].eq(gammas.word_select(j, L.GAMMA.width)),
                                 bp.b[j].eq(Mux(func == SfuFunc.ROPE,
                                                trigs.word_select(j, L.TRIG.width).as_signed(),
                                                fb.run.word_select(j, L.WIDE.width)))]
        m.d.comb += [rp.count.eq(count),
                     rp.cmd.length.eq(seg), rp.cmd.pos.eq(pos + pr), rp.cmd.sink.eq(sink),
                     rp.cmd.window.eq(window), rp.cmd.gamma_exp.eq(f.shift),
                     rp.cmd.eps.eq(eps.as_signed())]
        with m.Switch(func):
            with m.Case(SfuFunc.SOFTMAX):
                m.d.comb += rp.cmd.func.eq(RowFunc.SOFTMAX)
            with m.Case(SfuFunc.RMSNORM):
                m.d.comb += rp.cmd.func.eq(RowFunc.RMSNORM)
            with m.Case(SfuFunc.QUANT8):
                m.d.comb += [rp.cmd.func.eq(RowFunc.QUANT), rp.cmd.qmax.eq(N.ACT_MAX)]
            with m.Case(SfuFunc.KVQUANT):
                m.d.comb += [rp.cmd.func.eq(RowFunc.QUANT), rp.cmd.centre.eq(1),
                             rp.cmd.qmax.eq(Mux(kv_bits == 8, 127, 7))]
        rope_first = (func == SfuFunc.ROPE) & ~phase & ~beats
        embed_head = (func == SfuFunc.EMBED) & phase
        to_stage = ~rope_first & ~embed_head
        stage_ready = Mux(is_element, Mux(to_lanes, bs.i.ready if bs else 0, el.i.ready),
                          rs.i.ready)
        feed = ~produced & fetched & to_stage
        m.d.comb += [go.eq(~produced & fetched & (stage_ready | ~to_stage)),
                     el.i.valid.eq(feed & is_element & ~to_lanes),
                     rs.i.valid.eq(feed & ~is_element)]
        if bs is not None:
            m.d.comb += bs.i.valid.eq(feed & to_lanes)
        with m.If(go):
            with m.If(rope_first):
                m.d.sync += [x0.eq(a_val), cos.eq(fb.value[:L.TRIG.width]), phase.eq(1),
                             pi.eq(pi + 1)]
            with m.Elif(embed_head):
                m.d.sync += [e_row.eq(view(L.EmbedHeader, fb.value).e), phase.eq(0)]
            with m.Else():
                row_end = pi + count == length
                m.d.sync += pi.eq(pi + count)
                with m.If(func == SfuFunc.ROPE):  # a pair, or a beat's pairs
                    step = Mux(beats, lanes // 2, 1)
                    m.d.sync += [phase.eq(0), pj.eq(Mux(pj + step == half, 0, pj + step))]
                with m.If(func == SfuFunc.EMBED):
                    with m.If(pj + 1 == f.imm):
                        m.d.sync += [pj.eq(0), gi.eq(gi + 1)]
                    with m.Else():
                        m.d.sync += pj.eq(pj + 1)
                with m.If(row_end):
                    m.d.sync += [pi.eq(0), pj.eq(0), gi.eq(0), pr.eq(pr + 1),
                                 row_a.eq(row_a + in_pitch), row_b.eq(row_b + b_pitch),
                                 phase.eq(func == SfuFunc.EMBED)]
                    with m.If(pr + 1 == f.rows):
                        m.d.sync += produced.eq(1)

    def _consume(self, m, f, el, bs, rs, pk, push, kv_bits, seg, pad, quot, out_pitch,
                 group_stride, ci, cr, cg, rec_row, rec, kvh, cstate, pad_left, out_recs,
                 is_element, to_lanes, consumed):
        """Write the stage outputs as records."""
        func = f.func
        record_done = Signal()
        with m.If(record_done):
            m.d.sync += cr.eq(cr + 1)
            with m.If(cr + 1 == out_recs):
                m.d.sync += consumed.eq(1)
        # -- binary lanes: a beat of wide results, one push -----------------------------------
        with m.If(to_lanes):
            out = bs.o.payload
            row_end = ci + out.count == f.length
            with m.If(bs.o.valid):
                taken = push(Cat(*out.y), out.count * L.WIDE.width, align=row_end)
                m.d.comb += bs.o.ready.eq(taken)
                with m.If(taken):
                    m.d.sync += ci.eq(Mux(row_end, 0, ci + out.count))
                    m.d.comb += record_done.eq(row_end)
        # -- element stage: wide rows, two values per RoPE beat -----------------------------
        with m.Elif(is_element):
            rope = func == SfuFunc.ROPE
            second = cstate == 1
            value = Mux(second, el.o.payload.y1, el.o.payload.y0)
            row_end = ci + 1 == f.length
            with m.If(el.o.valid):
                taken = push(value, L.WIDE.width, align=row_end)
                m.d.comb += el.o.ready.eq(taken & (second | ~rope))
                with m.If(taken):
                    m.d.sync += [ci.eq(Mux(row_end, 0, ci + 1)), cstate.eq(rope & ~second)]
                    m.d.comb += record_done.eq(row_end)
        # -- row stage ------------------------------------------------------------------------
        with m.Else():
            out = rs.o.payload
            kv_head, q_head = Signal(L.KvHeader), Signal(L.QRowHeader)
            m.d.comb += [kv_head.m.eq(out.m), kv_head.e.eq(out.e), kv_head.mid.eq(out.mid),
                         q_head.m.eq(out.m), q_head.e.eq(out.e)]
            is_kv = func == SfuFunc.KVQUANT
            with m.Switch(cstate):
                with m.Case(2), m.If(rs.o.valid & pk.idle):  # KVQUANT: the header's slot
                    slot_bytes = L.record_bytes(L.KvHeader)
                    m.d.comb += [pk.start.eq(1), pk.buf.eq(Buffer.KV), pk.addr.eq(kvh.word),
                                 pk.skip.eq(kvh.slot * slot_bytes)]
                    m.d.sync += cstate.eq(1)
                with m.Case(1), m.If(rs.o.valid):  # the scale header
                    header = Mux(is_kv, kv_head.as_value(), q_head.as_value())
                    width = Mux(is_kv, L.KvHeader.as_shape().size, L.QRowHeader.as_shape().size)
                    with m.If(push(header, width, align=1, tail=is_kv)):
                        m.d.sync += cstate.eq(Mux(is_kv, 4, 0))
                with m.Case(4), m.If(pk.idle):  # KVQUANT: the payload at `rec`
                    m.d.comb += [pk.start.eq(1), pk.buf.eq(Buffer.KV), pk.addr.eq(rec)]
                    m.d.sync += cstate.eq(0)
                with m.Case(0):  # a beat of ``count`` results, one push
                    padded = (func == SfuFunc.QUANT8) & (pad != seg)
                    with m.If(rs.o.valid):
                        value, width = self._beat_field(m, func, kv_bits, out)
                        taken = push(value, width, align=out.last & ~padded)
                        m.d.comb += rs.o.ready.eq(taken)
                        with m.If(taken & out.last):
                            with m.If(padded):
                                m.d.sync += [cstate.eq(3), pad_left.eq(pad - seg)]
                            with m.Else():
                                m.d.comb += record_done.eq(1)
                                self._next_record(m, func, cstate, cg, quot, rec_row, rec,
                                                  kvh, out_pitch, group_stride)
                with m.Case(3):  # QUANT8: zero codes up to `imm`, a push's worth at a time
                    most = pk.push_bits // L.QCODE.width
                    codes = Mux(pad_left > most, most, pad_left)
                    last = pad_left == codes
                    with m.If(push(0, codes * L.QCODE.width, align=last)):
                        m.d.sync += pad_left.eq(pad_left - codes)
                        with m.If(last):
                            m.d.comb += record_done.eq(1)
                            self._next_record(m, func, cstate, cg, quot, rec_row, rec,
                                              kvh, out_pitch, group_stride)

    def _beat_field(self, m, func, kv_bits, out):
        """A row-stage beat's ``count`` results side by side as one field: INT8 codes
        (QUANT8), ``kv_bits`` codes (KVQUANT) or wide values; and its width in bits."""
        value = Signal(self.cfg.row_lanes * L.WIDE.width)
        bits = Signal(range(L.WIDE.width + 1))  # of a result

        def results(b: int):
            m.d.comb += [value.eq(Cat(*(y[:b] for y in out.y))), bits.eq(b)]
        widths = {SfuFunc.QUANT8: L.QCODE.width, SfuFunc.RMSNORM: L.WIDE.width,
                  SfuFunc.SOFTMAX: L.WIDE.width}
        with m.Switch(func):
            for f, b in widths.items():
                with m.Case(f):
                    results(b)
            with m.Case(SfuFunc.KVQUANT), m.Switch(kv_bits):
                for b in L.KV_CODE_BITS:
                    with m.Case(b):
                        results(b)
        return value, out.count * bits

    @staticmethod
    def _next_record(m, func, cstate, cg, quot, rec_row, rec, kvh, out_pitch, group_stride):
        """After a row-stage record: QUANT8 writes the next header; KVQUANT moves to the next
        group of the row (its block, ``group_stride`` on) or to the next row's first group."""
        with m.Switch(func):
            with m.Case(SfuFunc.QUANT8):
                m.d.sync += cstate.eq(1)
            with m.Case(SfuFunc.KVQUANT):
                m.d.sync += cstate.eq(2)
                with m.If(cg + 1 == quot):
                    m.d.sync += [cg.eq(0), rec_row.eq(rec_row + out_pitch),
                                 rec.eq(rec_row + out_pitch)]
                    kvh.next_row(m)
                with m.Else():
                    m.d.sync += [cg.eq(cg + 1), rec.eq(rec + group_stride),
                                 kvh.word.eq(kvh.word + group_stride)]
