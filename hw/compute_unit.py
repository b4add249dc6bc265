"""The COMPUTE unit: MATVEC and MATMAT on the matrix engine, ATTN on a serial datapath, each
as the emulator executes it (``sim/emulator.py``), records from :mod:`llmacc.layout`.

**Matrix instructions.** The tile's META descriptor gives the weight format, sparsity, group
and fusion parameters. The output rows are taken ``lanes`` at a time (one engine lane each)
and the tokens two at a time (one, for INT8 weights); for each such pass the sequencer
assembles the engine's beats exactly as :func:`hw.matrix_engine.beats` schedules them --
activation window, packed codes and sparse indices, per-slot group scales and type ids, row
exponents -- reading the fields through :class:`FieldFetch` ports, then writes the pass's
results: plain (``OutMode.WIDE``), added to what the destination holds (``ADD``, the
residual) or through SiLU (``SILU``), one INT32 element at a time with byte enables (the
emulator leaves the rest of a row's last word alone).

**Attention** (``isa.AttnFields``) runs on one multiplier, element by element: scores of
INT8 queries against INT4/INT8 keys with the midpoint term (``numerics.attention_scores``),
optionally through the row stage's softmax under the Lambda mask, and probabilities times
values with block-float aligned value scales (``numerics.attention_pv``).

Faults, before anything is written: a descriptor that does not decode, K not a multiple of
the group or sparse block, a RoPE-style odd head size (:attr:`Fault.PARAM`); records outside
their buffer (:attr:`Fault.RANGE`); tiles the engine's schedule cannot run -- fewer kept
weights per group than the chain's tap spacing, a group smaller than the sparse block (its
kept weights would straddle groups unevenly), or K = 0 (:attr:`Fault.UNSUPPORTED`).
"""

from collections.abc import Callable
from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import Out

from hw.buffer_access import FieldFetch, read_port, snoop_writes, view, word_count, write_port
from hw.controller import IssueLayout, unit_members
from hw.fixed_point import round_shift, saturate
from hw.matrix_engine import MatrixEngine, engine_layouts
from hw.sfu import add, silu
from hw.sfu_row import RowFunc, RowSfu, visible
from hw.sfu_unit import row_limit
from hw.sparse_dsp_chain import window
from llmacc import layout as L
from llmacc import numerics as N
from llmacc.config import AccelConfig
from llmacc.isa import (
    OUT_MODES,
    AttnFields,
    AttnFunc,
    Buffer,
    MatFields,
    Opcode,
    OutMode,
    Reg,
    Sparsity,
    WeightFormat,
)
from llmacc.kernel import Fault


def _log2(x: int) -> int:
    if x <= 0 or x & (x - 1):
        raise ValueError(f"{x} is not a power of two")
    return x.bit_length() - 1


def sparse_shape(sparsity: Sparsity) -> tuple[int, int, int]:
    """(log2 keep, log2 block, index bits) of ``sparsity`` (``layout.SPARSITY_NM``)."""
    nm = L.SPARSITY_NM[sparsity]
    if nm is None:
        return 0, 0, 0
    keep, block = nm
    return _log2(keep), _log2(block), L.Descriptor(WeightFormat.W2, sparsity, 3).index_bits()


MAX_CODE_BITS = max(L.FORMAT_BITS.values())  #: the widest packed weight code
MAX_INDEX_BITS = max(sparse_shape(sp)[2] for sp in Sparsity)  #: the widest in-block index


def fused_results(m: Module, y, old, p0, p1) -> dict[OutMode, object]:
    """What each output mode of ``isa.OUT_MODES`` writes for the result ``y``, given the
    destination's ``old`` value and the tile's parameters; refuses a mode without one."""
    results = {OutMode.WIDE: y, OutMode.ADD: add(old, y, p0), OutMode.SILU: silu(m, y, p0, p1)}
    missing = set(OUT_MODES) - set(results)
    if missing:
        raise NotImplementedError(f"no result stage for output modes {sorted(missing)}")
    return results


@dataclass(frozen=True)
class MatrixPass:
    """What a matrix pass's result states read and advance: the instruction, the engine,
    the destination's fetch, the pass (its first output row and token), the result being
    written (lane and token), and the tile's output parameters."""

    fields: data.View  #: the MatFields of the instruction
    engine: MatrixEngine
    fetch_out: FieldFetch  #: reads the destination (ADD)
    get: Callable  #: requests a field; true when the fetch holds it
    pass_row: Signal
    pass_token: Signal
    result_lane: Signal
    result_token: Signal
    beat_no: Signal  #: the pass's next beat (cleared for the next pass)
    pack: Signal  #: two tokens per pass
    step: Signal  #: words between result rows (MATMAT)
    p0: Signal  #: fusion parameters of the tile
    p1: Signal


class ComputeUnit(wiring.Component):
    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        super().__init__({
            **unit_members(),
            "rd_act": Out(read_port(cfg)),  # activations, queries, probabilities
            "rd_wgt": Out(read_port(cfg)),  # weight rows, KV rows
            "rd_meta": Out(read_port(cfg)),  # descriptors and row records
            "rd_out": Out(read_port(cfg)),  # the destination (ADD)
            "wr": Out(write_port(cfg)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        w = cfg.axi_data_bytes
        lw = _log2(w)
        lb = lw + 3
        lanes, n_chain, tap = cfg.mv_rows, cfg.chain_len, cfg.chain_group
        ln = _log2(n_chain)
        if n_chain < 8:
            raise ValueError(f"chain_len {n_chain}: the activation window is read 8 columns "
                             "at a time")
        slots = n_chain // tap
        m.submodules.engine = engine = MatrixEngine(lanes, n_chain, tap)
        fetch = {}
        for name in ("act", "wgt", "meta", "out"):
            fetch[name] = fx = FieldFetch(cfg)
            m.submodules[f"fetch_{name}"] = fx
            wiring.connect(m, fx.port, wiring.flipped(getattr(self, f"rd_{name}")))
        snoop_writes(m, fetch.values(), self.wr)
        fa, fw, fm, fo = fetch["act"], fetch["wgt"], fetch["meta"], fetch["out"]
        depth = {b: cfg.buffer_words(b) for b in Buffer}

        def words(nbytes):
            return word_count(nbytes, w)

        def get(fx, buf, bit, when=1):
            """Request a field (while ``when``); true when ``fx.value`` holds it."""
            m.d.comb += [fx.req.valid.eq(when), fx.req.payload.buf.eq(buf),
                         fx.req.payload.bit.eq(bit)]
            return fx.req.ready

        def fetch_unless(skip, fx, buf, bit):
            """A beat field: fetched, or left zero when ``skip``. Returns ``(done, fetched)``
            for this cycle."""
            fetched = ~skip & get(fx, buf, bit, ~skip)
            return skip | fetched, fetched

        f = Signal(MatFields)
        af = Signal(AttnFields)
        regs = Signal(IssueLayout["regs"].shape)
        opcode = Signal(Opcode)
        # descriptor and tile sizes
        wfmt, sparsity = Signal(WeightFormat), Signal(Sparsity)
        glog = Signal(3)
        p0, p1 = Signal(signed(8)), Signal(signed(8))
        bits, ib = Signal(4), Signal(3)
        lkeep, lblock = Signal(2), Signal(3)
        groups = Signal(14)  # G
        kept = Signal(15)
        wgt_pitch, meta_pitch, qrow_pitch = Signal(16), Signal(16), Signal(16)
        kpg_log2 = Signal(4)  # log2 of kept weights per group
        lcover = Signal(4)  # log2 of dense columns per beat
        nbeats = Signal(15)
        pack = Signal()  # two tokens per pass
        step = Signal(11)
        dwords = L.descriptor_words(w)
        qhdr = L.qrow_header(w)
        # pass and beat state
        pass_row, pass_token = Signal(15), Signal(12)
        beat_no = Signal(15)
        head_layout, lane_layout, _ = engine_layouts(lanes, n_chain, tap)
        beat = Signal(head_layout)
        beat_lanes = [Signal(lane_layout, name=f"beat_lane{i}") for i in range(lanes)]
        x_token = Signal(1)  # token within the pass
        x_chunk = Signal(range(window(n_chain) // 8 + 1))  # 8-column chunk
        fill_lane = Signal(range(lanes + 1))  # the beat lane being filled
        c = Signal(range(n_chain + 1))  # code within the beat
        s = Signal(range(slots + 1))  # scale slot
        half = Signal()  # slot: aux after mant
        result_lane, result_token = Signal(range(lanes + 1)), Signal(1)  # the result written

        def set_lane(update):
            """``update(fields)`` on the beat lane ``fill_lane``."""
            with m.Switch(fill_lane):
                for i, fields in enumerate(beat_lanes):
                    with m.Case(i):
                        m.d.sync += update(fields)

        first_kept = beat_no << ln  # first kept code of the beat
        last_beat = beat_no + 1 == nbeats
        token = pass_token + x_token
        token_ok = (token < f.m) & (~x_token | pack)
        qrow = f.act_addr + token * qrow_pitch
        row = pass_row + fill_lane
        row_ok = row < f.n
        wrow = f.wgt_addr + row * wgt_pitch
        mrow = f.meta_addr + dwords + row * meta_pitch

        def fail(code):
            m.d.sync += self.fault.eq(code)
            m.next = "COMPLETE"

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.issue.ready.eq(1)
                with m.If(self.issue.valid):
                    word = self.issue.payload.word
                    m.d.sync += [f.eq(word.payload.mat), af.eq(word.payload.attn),
                                 regs.eq(self.issue.payload.regs),
                                 opcode.eq(word.header.opcode), self.fault.eq(0)]
                    for fx in fetch.values():
                        m.d.comb += fx.flush.eq(1)
                    with m.If(word.header.opcode == Opcode.ATTN):
                        m.next = "A_CHECK"
                    with m.Else():
                        m.next = "DESC"
            # -- the descriptor ---------------------------------------------------------------
            with m.State("DESC"):
                outside = f.meta_addr + dwords > depth[Buffer.META]
                fetched = get(fm, Buffer.META, f.meta_addr << lb, ~outside)
                with m.If(outside):
                    fail(Fault.RANGE)
                with m.Elif(fetched):
                    desc = view(L.TileDescriptor, fm.value)
                    ok = (desc.wfmt < len(WeightFormat)) & (desc.sparsity < len(Sparsity)) \
                        & (desc.group_log2 >= L.GROUP_LOG2_MIN) \
                        & (desc.group_log2 <= L.GROUP_LOG2_MAX) \
                        & (desc.reserved0 == 0) & (desc.reserved1 == 0)
                    m.d.sync += [wfmt.eq(desc.wfmt), sparsity.eq(desc.sparsity),
                                 glog.eq(desc.group_log2), p0.eq(desc.p0), p1.eq(desc.p1)]
                    with m.If(~ok):
                        fail(Fault.PARAM)
                    with m.Else():
                        m.next = "SHAPE"
            with m.State("SHAPE"):
                with m.Switch(wfmt):
                    for fmt, nbits in L.FORMAT_BITS.items():
                        with m.Case(fmt):
                            m.d.sync += bits.eq(nbits)
                with m.Switch(sparsity):
                    for sp in Sparsity:
                        log_keep, log_block, index_bits = sparse_shape(sp)
                        with m.Case(sp):
                            m.d.sync += [lkeep.eq(log_keep), lblock.eq(log_block),
                                         ib.eq(index_bits)]
                m.d.sync += [groups.eq(f.k >> glog), pack.eq(wfmt != WeightFormat.INT8),
                             step.eq(Mux(opcode == Opcode.MATMAT, f.out_pitch, 0)),
                             qrow_pitch.eq(qhdr + words(L.element_bit(f.k, L.QCODE) >> 3))]
                m.next = "SIZES"
            with m.State("SIZES"):
                kept_now = (f.k >> lblock) << lkeep
                aux_groups = Mux(wfmt == WeightFormat.INT8, 0, groups)
                m.d.sync += [kept.eq(kept_now),
                             wgt_pitch.eq(words((kept_now * (bits + ib) + 7) >> 3)),
                             meta_pitch.eq(words(L.row_aux_bit(groups, aux_groups) >> 3)),
                             kpg_log2.eq(glog + lkeep - lblock), lcover.eq(ln + lblock - lkeep),
                             nbeats.eq((kept_now + n_chain - 1) >> ln)]
                m.next = "CHECK"
            with m.State("CHECK"):
                misfit = ((f.k & ((Const(1, 9) << glog) - 1)) != 0) | \
                    ((f.k & ((Const(1, 17) << lblock) - 1)) != 0)
                work = (f.n != 0) & (f.m != 0)
                off_end = work & (
                    (f.meta_addr + dwords + f.n * meta_pitch > depth[Buffer.META])
                    | (f.wgt_addr + f.n * wgt_pitch > depth[Buffer.WGT])
                    | (f.act_addr + f.m * qrow_pitch > depth[Buffer.ACT])
                    | (f.out_addr + (f.m - 1) * step + words(L.element_bit(f.n, L.WIDE) >> 3)
                       > depth[Buffer.ACT]))
                m.d.sync += [pass_row.eq(0), pass_token.eq(0)]
                with m.If(misfit):
                    fail(Fault.PARAM)
                with m.Elif(off_end):
                    fail(Fault.RANGE)
                with m.Elif(~work):
                    m.next = "COMPLETE"
                with m.Elif((kpg_log2 < _log2(tap)) | (glog < lblock) | (f.k == 0)):
                    fail(Fault.UNSUPPORTED)
                with m.Else():
                    m.d.sync += beat_no.eq(0)
                    m.next = "CLEAR"
            # -- one beat --------------------------------------------------------------------
            with m.State("CLEAR"):
                seg_log2 = Mux(kpg_log2 < ln, kpg_log2, ln)
                m.d.sync += [*(bl.eq(0) for bl in beat_lanes),
                             beat.eq(0), beat.fmt.eq(wfmt), beat.sparsity.eq(sparsity),
                             beat.seg_log2.eq(seg_log2), beat.row_end.eq(last_beat),
                             beat.group_end.eq(last_beat | (((first_kept + n_chain) & (
                                 (Const(1, 16) << kpg_log2) - 1)) == 0)),
                             x_token.eq(0), x_chunk.eq(0), fill_lane.eq(0), c.eq(0), s.eq(0),
                             half.eq(0)]
                m.next = "HEADER"
            with m.State("HEADER"):  # the tokens' scales
                fetched = get(fa, Buffer.ACT, qrow << lb, token_ok)
                with m.If(~token_ok):
                    m.d.sync += [x_token.eq(0)]
                    m.next = "X"
                with m.Elif(fetched):
                    scale = view(L.QRowHeader, fa.value)
                    m.d.sync += [beat.xm[x_token].eq(scale.m), beat.xe[x_token].eq(scale.e),
                                 x_token.eq(1)]
                    with m.If(x_token == 1):
                        m.d.sync += x_token.eq(0)
                        m.next = "X"
            with m.State("X"):  # the activation window, 8 columns per read
                col = (beat_no << lcover) + (x_chunk << 3)
                chunks = (Const(1, 8) << lcover) >> 3
                keep = Cat(*(Mux(col + i < f.k, 0xFF, 0) for i in range(8)))
                done, fetched = fetch_unless(~token_ok | (col >= f.k), fa, Buffer.ACT,
                                             ((qrow + qhdr) << lb) + L.element_bit(col, L.QCODE))
                with m.If(fetched):
                    m.d.sync += beat.x[x_token].as_value().word_select(x_chunk, 64).eq(
                        fa.value & keep)
                with m.If(done):
                    m.d.sync += x_chunk.eq(x_chunk + 1)
                    with m.If(x_chunk + 1 == chunks):
                        m.d.sync += [x_chunk.eq(0), x_token.eq(1)]
                        with m.If(x_token == 1):
                            m.d.sync += x_token.eq(0)
                            m.next = "CODES"
            with m.State("CODES"):  # packed codes, then (sparse) their in-block indices
                q = first_kept + c
                done, fetched = fetch_unless(~row_ok | (q >= kept), fw, Buffer.WGT, (
                    wrow << lb) + Mux(half, kept * bits + q * ib, q * bits))
                with m.If(fetched):
                    with m.If(half):
                        set_lane(lambda r: r.idx[c].eq(
                            fw.value[:MAX_INDEX_BITS] & ((Const(1, 5) << ib) - 1)))
                    with m.Else():
                        set_lane(lambda r: r.codes[c].eq(
                            fw.value[:MAX_CODE_BITS] & ((Const(1, 9) << bits) - 1)))
                with m.If(done):
                    m.d.sync += c.eq(c + 1)
                    with m.If(c == n_chain - 1):
                        m.d.sync += [c.eq(0), half.eq(~half & (ib != 0))]
                        with m.If(half | (ib == 0)):
                            m.d.sync += [half.eq(0), fill_lane.eq(fill_lane + 1)]
                            with m.If(fill_lane == lanes - 1):
                                m.d.sync += fill_lane.eq(0)
                                m.next = "SLOTS"
            with m.State("SLOTS"):  # per tap slot: the group's scale, then its type id
                at = first_kept + s * tap
                g = Mux((at >> kpg_log2) >= groups, groups - 1, at >> kpg_log2)
                skip = ~row_ok | (at >= kept) | (half & (wfmt == WeightFormat.INT8))
                done, fetched = fetch_unless(skip, fm, Buffer.META, (mrow << lb) + Mux(
                    half, L.row_aux_bit(groups, g), L.row_mant_bit(g)))
                with m.If(fetched):
                    with m.If(half):
                        set_lane(lambda r: r.aux[s].eq(fm.value[:L.AUX.width]))
                    with m.Else():
                        set_lane(lambda r: r.mant[s].eq(fm.value[:L.MANT.width]))
                with m.If(done):
                    m.d.sync += half.eq(~half)
                    with m.If(half):
                        m.d.sync += s.eq(s + 1)
                        with m.If(s == slots - 1):
                            m.d.sync += [s.eq(0), fill_lane.eq(fill_lane + 1)]
                            with m.If(fill_lane == lanes - 1):
                                m.d.sync += fill_lane.eq(0)
                                m.next = "SHIFTS"
            with m.State("SHIFTS"):  # the rows' exponents
                done, fetched = fetch_unless(~row_ok, fm, Buffer.META, mrow << lb)
                with m.If(fetched):
                    set_lane(lambda r: r.shift.eq(view(L.RowRecordHead, fm.value).shift))
                with m.If(done):
                    m.d.sync += fill_lane.eq(fill_lane + 1)
                    with m.If(fill_lane == lanes - 1):
                        m.d.sync += fill_lane.eq(0)
                        m.next = "SEND"
            with m.State("SEND"):
                m.d.comb += [engine.i.valid.eq(1), engine.i.payload.eq(beat),
                             *(p.eq(bl) for p, bl in zip(engine.lane_in, beat_lanes,
                                                         strict=True))]
                with m.If(engine.i.ready):
                    m.d.sync += beat_no.eq(beat_no + 1)
                    with m.If(last_beat):
                        m.d.sync += [result_lane.eq(0), result_token.eq(0)]
                        m.next = "RESULTS"
                    with m.Else():
                        m.next = "CLEAR"
            # -- the pass's results ----------------------------------------------------------
            with m.State("RESULTS"):
                self._results(m, MatrixPass(f, engine, fo, get, pass_row, pass_token, result_lane,
                                            result_token, beat_no, pack, step, p0, p1))
            self._attention(m, af, regs, fa, fw, get, words, fail)
            with m.State("COMPLETE"):
                m.d.comb += self.complete.eq(1)
                m.next = "IDLE"
        return m

    def _results(self, m, state: "MatrixPass"):
        """Write ``y[lane][token]`` of the pass; then the next pass or the end."""
        f, engine, lanes = state.fields, state.engine, self.cfg.mv_rows
        lb = _log2(self.cfg.axi_data_bytes) + 3
        lane, token = state.result_lane, state.result_token
        row, tok = state.pass_row + lane, state.pass_token + token
        ok = (row < f.n) & (tok < f.m) & (~token | state.pack)
        y = engine.o.payload.y[lane][token]
        dst = f.out_addr + tok * state.step
        old = state.fetch_out.value[:L.WIDE.width].as_signed()
        value = Signal(signed(L.WIDE.width))
        with m.Switch(f.out_mode):
            for mode, result in fused_results(m, y, old, state.p0, state.p1).items():
                with m.Case(mode):
                    m.d.comb += value.eq(result)
        residual = [mode for mode, spec in OUT_MODES.items() if spec.operands == "residual"]
        needs_old = engine.o.valid & ok & Cat(*(f.out_mode == mode for mode in residual)).any()
        have_old = state.get(state.fetch_out, Buffer.ACT,
                             (dst << lb) + L.element_bit(row, L.WIDE), needs_old) | ~needs_old
        written = Signal()
        with m.If(engine.o.valid & ok & have_old):
            m.d.comb += written.eq(self._write_wide(m, dst, row, value))
        with m.If(engine.o.valid & (written | ~ok)):
            m.d.sync += token.eq(~token)
            with m.If(token == 1):
                m.d.sync += lane.eq(lane + 1)
                with m.If(lane == lanes - 1):  # the pass is written: the next one
                    m.d.comb += engine.o.ready.eq(1)
                    tokens_per_pass = Mux(state.pack, 2, 1)
                    next_token = state.pass_token + tokens_per_pass
                    m.d.sync += [state.beat_no.eq(0), state.pass_token.eq(next_token)]
                    m.next = "CLEAR"
                    with m.If(next_token >= f.m):
                        m.d.sync += [state.pass_token.eq(0),
                                     state.pass_row.eq(state.pass_row + lanes)]
                        with m.If(state.pass_row + lanes >= f.n):
                            m.next = "COMPLETE"

    def _write_wide(self, m, base, index, value):
        """Request the write of INT32 element ``index`` of the wide row at word ``base``
        (byte enables for its four bytes); true when granted."""
        w = self.cfg.axi_data_bytes
        size = L.WIDE.width // 8
        per_word = w // size
        lane = index[:_log2(per_word)] if per_word > 1 else Const(0, 1)
        m.d.comb += [self.wr.en.eq(1), self.wr.buf.eq(Buffer.ACT),
                     self.wr.addr.eq(base + (index >> _log2(per_word))),
                     self.wr.data.eq(value.as_unsigned() << L.element_bit(lane, L.WIDE)),
                     self.wr.mask.eq(Const((1 << size) - 1, w) << (lane * size))]
        return self.wr.grant

    def _attention(self, m, af, regs, fa, fw, get, words, fail):
        """The ATTN states: per query row, SCORE (optionally through the row stage's
        softmax) or PV, one multiply-accumulate per step."""
        cfg = self.cfg
        w = cfg.axi_data_bytes
        lb = _log2(w) + 3
        depth = {b: cfg.buffer_words(b) for b in Buffer}
        m.submodules.softmax = rs = RowSfu(min((1 << AttnFields.as_shape()["keys"].width) - 1,
                                               row_limit(cfg)))
        qhdr, kvhdr = L.qrow_header(w), L.kv_header(w)
        d, keys = af.head_dim, af.keys
        t, key, i = Signal(11), Signal(13), Signal(9)  # query row, key, channel
        kv_bits = Mux(af.kv8, 8, 4)
        kvp, in_pitch, out_len = Signal(16), Signal(16), Signal(13)
        is_pv = af.func == AttnFunc.PV
        qm, qe = Signal(16), Signal(signed(16))
        qsum, dot = Signal(signed(24)), Signal(signed(32))
        km, ke, kmid = Signal(16), Signal(signed(16)), Signal(signed(32))
        emax, seen = Signal(signed(16)), Signal()  # PV: the visible values' largest exponent
        midsum, acc = Signal(signed(80)), Signal(signed(80))
        prob, m_al = Signal(signed(32)), Signal(17)
        row = af.q_addr + t * af.a_step  # the query (SCORE) or probability (PV) row
        rec = af.kv_addr + key * kvp  # the key's (value's) KV row
        out_row = af.dst + t * af.d_step
        vis = visible(key, regs[Reg.POS.value] + t, regs[Reg.SINK.value],
                      regs[Reg.WINDOW.value])
        code = Mux(af.kv8, fw.value[:L.KV_CODE[8].width].as_signed(),
                   fw.value[:L.KV_CODE[4].width].as_signed())
        kv_head = view(L.KvHeader, fw.value)
        kv_m, kv_e, kv_mid = kv_head.m, kv_head.e, kv_head.mid

        def next_row():
            m.d.sync += t.eq(t + 1)
            m.next = "A_ROW"
            with m.If(t + 1 == af.rows):
                m.next = "COMPLETE"

        with m.State("A_CHECK"):
            m.d.sync += [kvp.eq(kvhdr + words((d * kv_bits + 7) >> 3)),
                         in_pitch.eq(Mux(is_pv, words(L.element_bit(keys, L.WIDE) >> 3),
                                         qhdr + words(L.element_bit(d, L.QCODE) >> 3))),
                         out_len.eq(Mux(is_pv, d, keys)), t.eq(0)]
            m.next = "A_RANGE"
        with m.State("A_RANGE"):
            off_end = ((keys != 0) & (af.kv_addr + keys * kvp > depth[Buffer.KV])) | (
                (af.q_addr + (af.rows - 1) * af.a_step + in_pitch > depth[Buffer.ACT]) |
                (af.dst + (af.rows - 1) * af.d_step + words(L.element_bit(out_len, L.WIDE) >> 3)
                 > depth[Buffer.ACT]))
            with m.If((d == 0) | d[0]):
                fail(Fault.PARAM)
            with m.Elif((af.rows != 0) & off_end):
                fail(Fault.RANGE)
            with m.Elif(af.rows == 0):
                m.next = "COMPLETE"
            with m.Else():
                m.next = "A_ROW"
        with m.State("A_ROW"):
            m.d.sync += [key.eq(0), i.eq(0), qsum.eq(0), emax.eq(0), seen.eq(0),
                         midsum.eq(0)]
            with m.If(is_pv):
                m.next = "P_SCAN"
            with m.Else():
                m.next = "S_QHDR"
        # -- SCORE ----------------------------------------------------------------------------
        with m.State("S_QHDR"), m.If(get(fa, Buffer.ACT, row << lb)):
            scale = view(L.QRowHeader, fa.value)
            m.d.sync += [qm.eq(scale.m), qe.eq(scale.e)]
            m.next = "S_QSUM"
        q_code = ((row + qhdr) << lb) + L.element_bit(i, L.QCODE)  # the query's code i
        with m.State("S_QSUM"), m.If(get(fa, Buffer.ACT, q_code)):
            m.d.sync += [qsum.eq(qsum + fa.value[:L.QCODE.width].as_signed()), i.eq(i + 1)]
            with m.If(i + 1 == d):
                m.next = "S_KHDR"
        with m.State("S_KHDR"):
            fetched = get(fw, Buffer.KV, rec << lb, key != keys)
            with m.If(key == keys):
                with m.If(af.func == AttnFunc.SCORE_SOFTMAX):
                    m.d.sync += key.eq(0)
                    m.next = "S_DRAIN"
                with m.Else():
                    next_row()
            with m.Elif(fetched):
                m.d.sync += [km.eq(kv_m), ke.eq(kv_e), kmid.eq(kv_mid), dot.eq(0), i.eq(0)]
                m.next = "S_DOT"
        with m.State("S_DOT"):
            q_ok = get(fa, Buffer.ACT, q_code)
            k_ok = get(fw, Buffer.KV, ((rec + kvhdr) << lb) + i * kv_bits)
            with m.If(q_ok & k_ok):
                m.d.sync += [dot.eq(dot + fa.value[:L.QCODE.width].as_signed() * code), i.eq(i + 1)]
                with m.If(i + 1 == d):
                    m.next = "S_OUT"
        with m.State("S_OUT"):
            shift = af.shift
            part = saturate(round_shift(dot * km * qm, shift - ke - qe, N.WIDE_BITS + 1),
                            N.WIDE_BITS)
            mids = round_shift(qsum * qm * kmid, shift - qe, N.WIDE_BITS + 1)
            score = Signal(signed(N.WIDE_BITS))
            m.d.comb += score.eq(saturate(part + mids, N.WIDE_BITS))
            cmd = rs.i.payload.cmd
            m.d.comb += [rs.i.payload.eq(0), rs.i.payload.a.eq(score), cmd.func.eq(RowFunc.SOFTMAX),
                         cmd.length.eq(keys), cmd.pos.eq(regs[Reg.POS.value] + t),
                         cmd.sink.eq(regs[Reg.SINK.value]),
                         cmd.window.eq(regs[Reg.WINDOW.value])]
            done = Signal()
            with m.If(af.func == AttnFunc.SCORE_SOFTMAX):
                m.d.comb += [rs.i.valid.eq(1), done.eq(rs.i.ready)]
            with m.Else():
                m.d.comb += done.eq(self._write_wide(m, out_row, key, score))
            with m.If(done):
                m.d.sync += key.eq(key + 1)
                m.next = "S_KHDR"
        with m.State("S_DRAIN"):
            written = Signal()
            with m.If(rs.o.valid):
                m.d.comb += written.eq(self._write_wide(m, out_row, key, rs.o.payload.y))
            with m.If(written):
                m.d.comb += rs.o.ready.eq(1)
                m.d.sync += key.eq(key + 1)
                with m.If(rs.o.payload.last):
                    next_row()
        # -- PV -------------------------------------------------------------------------------
        with m.State("P_SCAN"):  # the largest visible exponent, the midpoint sum
            p_ok = get(fa, Buffer.ACT, (row << lb) + L.element_bit(key, L.WIDE), key != keys)
            h_ok = get(fw, Buffer.KV, rec << lb, key != keys)
            with m.If(key == keys):
                m.d.sync += i.eq(0)
                m.next = "P_CHANNEL"
            with m.Elif(p_ok & h_ok):
                m.d.sync += [midsum.eq(midsum + fa.value[:L.WIDE.width].as_signed() * kv_mid),
                             key.eq(key + 1)]
                with m.If(vis & (kv_m != 0) & (~seen | (kv_e > emax))):
                    m.d.sync += [emax.eq(kv_e), seen.eq(1)]
        with m.State("P_CHANNEL"):
            m.d.sync += [acc.eq(0), key.eq(0)]
            with m.If(i == d):
                next_row()
            with m.Elif(keys == 0):
                m.next = "P_OUT"
            with m.Else():
                m.next = "P_SCALE"
        with m.State("P_SCALE"):  # the key's probability and aligned value scale
            p_ok = get(fa, Buffer.ACT, (row << lb) + L.element_bit(key, L.WIDE))
            h_ok = get(fw, Buffer.KV, rec << lb)
            with m.If(p_ok & h_ok):
                aligned = round_shift(Cat(kv_m, Const(0, 1)), (emax - kv_e).as_signed(), 17)
                m.d.sync += [prob.eq(fa.value[:L.WIDE.width]), m_al.eq(Mux(vis, aligned, 0))]
                m.next = "P_MAC"
        with m.State("P_MAC"), m.If(get(fw, Buffer.KV, ((rec + kvhdr) << lb) + i * kv_bits)):
            m.d.sync += [acc.eq(acc + prob * m_al * code), key.eq(key + 1)]
            m.next = "P_SCALE"
            with m.If(key + 1 == keys):
                m.next = "P_OUT"
        with m.State("P_OUT"):
            frac = N.PROB_FRAC + af.shift
            value = Signal(signed(N.WIDE_BITS))
            m.d.comb += value.eq(saturate(
                round_shift(acc, frac - emax, N.WIDE_BITS + 1) +
                round_shift(midsum, frac, N.WIDE_BITS + 1), N.WIDE_BITS))
            with m.If(self._write_wide(m, out_row, i, value)):
                m.d.sync += i.eq(i + 1)
                m.next = "P_CHANNEL"
