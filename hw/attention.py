"""ATTN on the COMPUTE unit: a head's elements ``AccelConfig.attention_lanes`` at a time.

The keys are a KV block (``layout.kv_block``): their payloads, then their headers packed
``kv_slots`` to a word. Each is read as whole buffer words: a header word on ``rd_kvh``
(held while its keys run), payload words on ``rd_kv`` (the KV buffer's even and odd words
are two memories, so the two ports read in the same cycle where the words lie in different
banks). A payload word is taken in sub-steps of ``AccelConfig.attention_codes`` codes (the
lanes, at most the word's codes: ``attention_int8_steps`` per INT8 word and twice as many
per INT4 word; with ``attention_wide``, twice a word's bytes of lanes, an INT4 word is one
sub-step and an INT8 one fills half the lanes) from a register that holds the word read at
its first sub-step. A key of head size ``d`` costs ``ceil(d / codes)`` sub-steps, and a
header word a cycle of its own only where it cannot be read ahead: where the next key starts
a header word, that word is read in the last sub-step of a key unless that sub-step reads a
payload word in the same bank (on the u280's head size 128 an INT4 key is one cycle, an
INT8 key two, and one key in eight may wait a cycle for its header word). The reads run a
cycle ahead of the arithmetic (stage A issues a word, stage B uses it), so the keys follow
one another without gaps.

* **SCORE** (``numerics.attention_scores``): the query's codes are read once per row, an
  INT8 sub-step's codes a cycle from whole ACT words (``rd_window``), into the query memory
  and through an adder tree into their sum;
  per sub-step ``lanes`` products of a query code and a key code are summed by an adder
  tree into the key's dot product. The score (dot product and midpoint term, rescaled and
  saturated) leaves through a two-entry queue of registers, to ACT or to the row stage's
  softmax (SCORE_SOFTMAX), while the next keys are read.
* **PV** (``numerics.attention_pv``): a first pass over the header words, ``kv_slots`` keys
  a cycle, finds the largest visible value exponent; the second pass computes per key
  ``x = p * m'`` (the value scale aligned to that exponent, 0 for a masked key; ``p`` read from
  whole ACT words, ``rd_window``) and the midpoint sum, and per sub-step adds ``x * code``
  into ``lanes`` accumulators of the accumulator memory (``numerics.ACC_BITS`` each: the sum
  wraps as the DSP48E2's P register would, exact wherever the reference's range check
  passes; a word read in the cycle it is written is taken from the write); the results leave
  ``row_lanes`` a cycle (one run of a wide row's word), after a cycle to read each word of
  accumulators.

The query and accumulator memories have registered reads (block RAM, not LUTs or
flip-flops): each is read in stage A for the sub-step that stage B uses.

Elements past the head size are zero in the products (SCORE) or never read (PV), so whatever
pads a record does not matter.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Mux, Signal, Value, signed
from amaranth.lib import data
from amaranth.lib.memory import Memory

from hw.buffer_access import view
from hw.fixed_point import round_shift, saturate, tree
from hw.sfu_row import RowFunc, RowSfu, visible
from hw.sfu_unit import row_limit
from llmacc import layout as L
from llmacc import numerics as N
from llmacc.config import AccelConfig
from llmacc.isa import AttnFields, AttnFunc, Buffer, Reg
from llmacc.kernel import Fault

#: The largest head size the instruction can name, and so the query and accumulator memories'
#: elements.
MAX_HEAD = 1 << AttnFields.as_shape()["head_dim"].width


def _prev(sub: Value) -> Value:
    """The sub-step before ``sub``, in ``sub``'s width: a key's sub-steps 1.. read its payload
    words 0.., so a payload sub-step's word index is ``_prev(sub)``."""
    return (sub - 1)[:len(sub)]


@dataclass(frozen=True)
class _Slot:
    """What stage A's slot ``(key, sub)`` does besides its sub-step."""

    fresh: Signal  #: reads its payload word (the first sub-step of that word)
    header: Signal  #: must read a header word: ``sub`` 0, or ``ahead``
    ahead: Signal  #: reads the next key's header word (the next key starts it) now
    nxt: Signal  #: the last sub-step, starting the next key (its header word read or held)
    early: Signal  #: reads the next header word before it is needed (``rd_kvh`` is free)


def _larger_seen(a: tuple[Value, Value], b: tuple[Value, Value]) -> tuple[Value, Value]:
    """Of two (seen, exponent) pairs: whether either is seen, and the larger seen exponent."""
    take_a = a[0] & (~b[0] | (a[1] > b[1]))
    return a[0] | b[0], Mux(take_a, a[1], b[1])


def _log2(x: int) -> int:
    if x & (x - 1) or x < 1:
        raise ValueError(f"{x} is not a power of two")
    return x.bit_length() - 1


@dataclass(frozen=True)
class AttnState:
    """What the ATTN states share: the instruction, the positions of the two stages, the
    registered scales and sums, and the addresses derived from them."""

    fields: data.View  #: the AttnFields of the instruction
    regs: Signal  #: the run-time registers at dispatch
    query: Signal  #: the query (SCORE) or probability (PV) row
    key: Signal  #: stage A: the key read
    sub: Signal  #: stage A: 0 its header word, j + 1 its sub-step j (S_QSUM: sub-step j)
    b_valid: Signal  #: stage B: a slot to process
    b_key: Signal
    b_sub: Signal
    b_fresh: Signal  #: stage B: the word arriving is the sub-step's payload word
    b_ahead: Signal  #: stage B: the word arriving is the next key's header word
    b_next: Signal  #: stage B: the slot starts the next key (its header read ahead or held)
    held: Signal  #: the payload word of stage B's later sub-steps
    heads: Signal  #: the header word that stage B's keys' headers are in
    fetched: Signal  #: stage A: the next header word has been read (into ``next_heads``)
    arriving: Signal  #: the header word read last cycle is the next one, for ``next_heads``
    next_heads: Signal  #: the header word after ``heads``, read while its keys run
    channel: Signal  #: P_OUT: the output element
    steps: Signal  #: sub-steps per key, ceil(head_dim / codes a sub-step)
    kv_payload: Signal  #: payload words per key
    kv_heads: Signal  #: the buffer word of the block's first header word
    in_pitch: Signal  #: words per input row
    out_len: Signal  #: elements per output row
    qm: Signal  #: the query's scale
    qe: Signal
    qsum: Signal  #: the sum of the query's codes (midpoint term)
    dot: Signal
    km: Signal  #: the key's scale and midpoint
    ke: Signal
    kmid: Signal
    emax: Signal  #: PV: the visible values' largest exponent
    seen: Signal  #: PV: a visible value has been seen
    midsum: Signal  #: PV: sum of probability x midpoint
    x: Signal  #: PV: the key's probability times its aligned value scale
    kv_bits: object  #: 4 or 8, from kv8
    is_pv: object
    row: object  #: buffer word of the query (probability) row
    out_row: object  #: buffer word of the output row

    @classmethod
    def signals(cls, cfg: AccelConfig, af, regs) -> AttnState:
        steps = MAX_HEAD // min(cfg.attention_codes(bits) for bits in L.KV_CODE_BITS)
        query = Signal(11, name="query")
        return cls(
            fields=af, regs=regs, query=query, key=Signal(13, name="key"),
            sub=Signal(range(steps + 1), name="sub"), b_valid=Signal(name="b_valid"),
            b_key=Signal(13, name="b_key"), b_sub=Signal(range(steps + 1), name="b_sub"),
            b_fresh=Signal(name="b_fresh"), b_ahead=Signal(name="b_ahead"),
            b_next=Signal(name="b_next"), held=Signal(8 * cfg.axi_data_bytes, name="held"),
            heads=Signal(8 * cfg.axi_data_bytes, name="heads"),
            fetched=Signal(name="fetched"), arriving=Signal(name="next_arriving"),
            next_heads=Signal(8 * cfg.axi_data_bytes, name="next_heads"),
            channel=Signal(9, name="channel"), steps=Signal(range(steps + 1), name="steps"),
            kv_payload=Signal(16, name="kv_payload"), kv_heads=Signal(28, name="kv_heads"),
            in_pitch=Signal(16, name="in_pitch"),
            out_len=Signal(13, name="out_len"),
            qm=Signal(16, name="qm"), qe=Signal(signed(16), name="qe"),
            qsum=Signal(signed(24), name="qsum"), dot=Signal(signed(32), name="dot"),
            km=Signal(16, name="km"), ke=Signal(signed(16), name="ke"),
            kmid=Signal(signed(32), name="kmid"), emax=Signal(signed(16), name="emax"),
            seen=Signal(name="seen"), midsum=Signal(signed(80), name="midsum"),
            x=Signal(signed(N.ACC_BITS), name="x"), kv_bits=Mux(af.kv8, 8, 4),
            is_pv=af.func == AttnFunc.PV, row=af.q_addr + query * af.a_step,
            out_row=af.dst + query * af.d_step)

    def payload_at(self, key):
        """The buffer word of ``key``'s payload."""
        return self.fields.kv_addr + key * self.kv_payload

    def header_at(self, key, slots_log2: int):
        """The buffer word of ``key``'s header."""
        return self.kv_heads + (key >> slots_log2)

    def visible(self, key):
        """``key`` is visible to the query row (the Lambda mask)."""
        regs = self.regs
        return visible(key, regs[Reg.POS.value] + self.query, regs[Reg.SINK.value],
                       regs[Reg.WINDOW.value])


class Attention:
    """The ATTN states of the COMPUTE unit's FSM (``unit`` gives the ports, the field fetch
    helpers, the output writes and the faults)."""

    def __init__(self, unit, cfg: AccelConfig):
        self.unit, self.cfg = unit, cfg
        self.lanes = cfg.attention_lanes
        self.lanes_log2 = _log2(self.lanes)
        self.word_bits = 8 * cfg.axi_data_bytes
        #: INT8 sub-steps fill half the lanes (``attention_wide``): sub-step j is lane word
        #: j // 2, its half j % 2
        self.halves = cfg.attention_codes(8) < self.lanes
        self.slots = L.kv_slots(cfg.axi_data_bytes)  #: headers a word
        self.slots_log2 = _log2(self.slots)
        for bits in L.KV_CODE_BITS:  # a sub-step's place in its word is its low bits
            _log2(cfg.attention_substeps(bits))

    def states(self, m, af, regs, fa) -> None:
        """Add the A_, S_ and P_ states to the FSM being built in ``m``."""
        cfg = self.cfg
        m.submodules.softmax = rs = RowSfu(
            min((1 << AttnFields.as_shape()["keys"].width) - 1, row_limit(cfg)), cfg.row_lanes,
            funcs=(RowFunc.SOFTMAX,))
        st = AttnState.signals(cfg, af, regs)
        depth = MAX_HEAD // self.lanes
        m.submodules.attn_q = qmem = Memory(shape=8 * self.lanes, depth=depth, init=[])
        m.submodules.attn_acc = accmem = Memory(shape=N.ACC_BITS * self.lanes, depth=depth,
                                                init=[])
        self._setup_states(m, st)
        self._score_states(m, st, fa, rs, qmem)
        self._pv_states(m, st, accmem)

    # -- the pieces ---------------------------------------------------------------------
    def _next_query(self, m, st: AttnState):
        m.d.sync += st.query.eq(st.query + 1)
        m.next = "A_ROW"
        with m.If(st.query + 1 == st.fields.rows):
            m.next = "COMPLETE"

    def _chunk(self, word, sub_step, bits: int):
        """The bits of ``sub_step``'s codes of ``bits`` (``attention_codes`` of them) in its
        payload word."""
        per_word, codes = self.cfg.attention_substeps(bits), self.cfg.attention_codes(bits)
        if per_word == 1:
            return word[:bits * codes]
        return word.word_select(sub_step[:_log2(per_word)], bits * codes)

    def _codes(self, st: AttnState, word, sub_step) -> list:
        """The ``lanes`` signed codes of ``sub_step`` in its payload word, each in the lane
        of its element (0 in the other half's lanes where an INT8 sub-step fills half)."""
        chunk4, chunk8 = self._chunk(word, sub_step, 4), self._chunk(word, sub_step, 8)
        codes8 = self.cfg.attention_codes(8)
        return [Mux(st.fields.kv8, Mux(self._active(st, sub_step, i),
                                       chunk8.word_select(i % codes8, 8).as_signed(), 0),
                    chunk4.word_select(i, 4).as_signed()) for i in range(self.lanes)]

    def _active(self, st: AttnState, sub_step, lane: int):
        """Lane ``lane`` takes an element in ``sub_step`` (all do but where an INT8 sub-step
        fills the other half)."""
        if not self.halves:
            return 1
        return ~st.fields.kv8 | (sub_step[0] == lane // self.cfg.attention_codes(8))

    def _lane_word(self, st: AttnState, sub_step):
        """The word of the query and accumulator memories that ``sub_step``'s lanes use."""
        if not self.halves:
            return sub_step
        return Mux(st.fields.kv8, sub_step >> 1, sub_step)

    def _payload_word(self, st: AttnState, key, sub):
        """The buffer word that stage A reads for ``(key, sub)``: the header word or a
        payload word."""
        words4 = _log2(self.cfg.attention_substeps(4))
        words8 = _log2(self.cfg.attention_substeps(8))
        step = _prev(sub)
        return Mux(sub == 0, st.header_at(key, self.slots_log2),
                   st.payload_at(key) + Mux(st.fields.kv8, step >> words8, step >> words4))

    def _starts_word(self, key):
        """``key``'s header is the first of its header word."""
        return key[:self.slots_log2] == 0 if self.slots_log2 else Const(1)

    def _slot(self, m, st: AttnState) -> _Slot:
        """What stage A's slot ``(key, sub)`` reads (:class:`_Slot`): the next header word
        is read in a slot of the keys before it whose payload read (if any) is in the other
        bank of the KV buffer, at the latest in the last sub-step before the key that starts
        it; else that key begins with a slot of its own that reads it."""
        step = _prev(st.sub)
        word_start = Mux(st.fields.kv8, step[:_log2(self.cfg.attention_substeps(8))] == 0,
                         step[:_log2(self.cfg.attention_substeps(4))] == 0)
        following = st.key + 1
        next_word = st.header_at(st.key, self.slots_log2) + 1
        free = ~word_start | (self._payload_word(st, st.key, st.sub) ^ next_word)[0]
        slot = _Slot(*(Signal(name=f"attn_{n}")
                       for n in ("fresh", "header", "ahead", "next", "early")))
        last = (st.sub == st.steps) & (following != st.fields.keys)
        switch = last & self._starts_word(following)  # the next key starts the next word
        exists = (((st.key >> self.slots_log2) + 1) << self.slots_log2) < st.fields.keys
        m.d.comb += [slot.fresh.eq((st.sub != 0) & word_start),
                     slot.ahead.eq(switch & ~st.fetched & free),
                     slot.nxt.eq(last & (slot.ahead | st.fetched | ~switch)),
                     slot.header.eq((st.sub == 0) | slot.ahead),
                     slot.early.eq(~slot.header & ~switch & ~st.fetched & exists & free)]
        return slot

    def _issue(self, m, st: AttnState, slot, can, also=1):
        """Stage A: the slot ``(key, sub)`` while ``can``, reading its words (``slot``, from
        :meth:`_slot`) if it has any; the positions advance when the reads are granted and
        ``also`` holds (else they are read again). Returns whether keys are left to read."""
        unit = self.unit
        issuing = st.key != st.fields.keys
        m.d.comb += [unit.rd_kv.en.eq(issuing & can & slot.fresh), unit.rd_kv.buf.eq(Buffer.KV),
                     unit.rd_kv.addr.eq(self._payload_word(st, st.key, st.sub)),
                     unit.rd_kvh.en.eq(issuing & can & (slot.header | slot.early)),
                     unit.rd_kvh.buf.eq(Buffer.KV),
                     unit.rd_kvh.addr.eq(st.header_at(st.key, self.slots_log2)
                                         + (slot.ahead | slot.early))]
        go, early = Signal(name="attn_go"), Signal(name="attn_early")
        m.d.comb += [go.eq(issuing & can & (unit.rd_kv.grant | ~slot.fresh)
                           & (unit.rd_kvh.grant | ~slot.header) & also),
                     early.eq(issuing & can & slot.early & unit.rd_kvh.grant)]
        m.d.sync += [st.b_valid.eq(go), st.b_key.eq(st.key), st.b_sub.eq(st.sub),
                     st.b_fresh.eq(slot.fresh), st.b_ahead.eq(slot.ahead),
                     st.b_next.eq(slot.nxt), st.arriving.eq(early)]
        with m.If(early):
            m.d.sync += st.fetched.eq(1)
        with m.If(go):
            m.d.sync += st.sub.eq(st.sub + 1)
            with m.If(st.sub == st.steps):
                m.d.sync += [st.sub.eq(slot.nxt), st.key.eq(st.key + 1)]
                with m.If(self._starts_word(st.key + 1)):
                    m.d.sync += st.fetched.eq(0)
        return issuing

    def _header(self, m, st: AttnState) -> tuple[Value, data.View]:
        """Stage B's key start (a header slot, or a last sub-step that starts the next key)
        and that key's header, from the header word arriving, the next one read early or the
        one held (the word used is held from then on)."""
        data_ = self.unit.rd_kvh.data
        arriving = (st.b_sub == 0) | st.b_ahead
        key = st.b_key + st.b_next
        switch = st.b_next & ~st.b_ahead & self._starts_word(key)  # to the word read early
        with m.If(st.arriving):
            m.d.sync += st.next_heads.eq(data_)
        with m.If(st.b_valid & arriving):
            m.d.sync += st.heads.eq(data_)
        with m.Elif(st.b_valid & switch):
            m.d.sync += st.heads.eq(st.next_heads)
        word = Mux(arriving, data_, Mux(switch, st.next_heads, st.heads))
        return st.b_valid & ((st.b_sub == 0) | st.b_next), self._slot_header(
            word, key[:self.slots_log2] if self.slots_log2 else 0)

    @staticmethod
    def _slot_header(word, slot) -> data.View:
        """The header in slot ``slot`` (a signal or an int) of a header word."""
        return view(L.KvHeader, word.word_select(slot, L.KvHeader.as_shape().size))

    def _payload(self, m, st: AttnState, word):
        """Stage B's payload word: the word arriving at a sub-step's first, else the one
        held since."""
        with m.If(st.b_valid & st.b_fresh):
            m.d.sync += st.held.eq(word)
        return Mux(st.b_fresh, word, st.held)

    def _prob_read(self, m, st: AttnState, port, en, key, b_key):
        """Read the ACT word holding the probability of ``key`` (stage A's); returns the
        probability of ``b_key`` (stage B's) from the word that arrives."""
        lb = _log2(self.word_bits)
        m.d.comb += [port.en.eq(en), port.buf.eq(Buffer.ACT),
                     port.addr.eq(st.row + (L.element_bit(key, L.WIDE) >> lb))]
        offset = L.element_bit(b_key, L.WIDE) & (self.word_bits - 1)
        return (port.data >> offset)[:L.WIDE.width].as_signed()

    def _per_codes(self, n, bits: int):
        """Sub-steps of ``bits`` codes for ``n`` elements."""
        codes = self.cfg.attention_codes(bits)
        return (n + codes - 1) >> _log2(codes)

    # -- the states ---------------------------------------------------------------------
    def _setup_states(self, m, st: AttnState):
        """A_CHECK, A_RANGE, A_ROW: the pitches, the faults, and each query row's start."""
        unit = self.unit
        af, words, depth = st.fields, unit._words, unit._depth
        d, keys = af.head_dim, af.keys
        w = self.cfg.axi_data_bytes
        qhdr = L.qrow_header(w)
        with m.State("A_CHECK"):
            m.d.sync += [st.kv_payload.eq(words((d * st.kv_bits + 7) >> 3)),
                         st.in_pitch.eq(Mux(st.is_pv, words(L.element_bit(keys, L.WIDE) >> 3),
                                            qhdr + words(L.element_bit(d, L.QCODE) >> 3))),
                         st.out_len.eq(Mux(st.is_pv, d, keys)), st.query.eq(0),
                         st.steps.eq(Mux(st.fields.kv8, self._per_codes(d, 8),
                                         self._per_codes(d, 4)))]
            m.next = "A_RANGE"
        with m.State("A_RANGE"):
            heads = af.kv_addr + keys * st.kv_payload
            block_end = heads + L.kv_header_words(keys, self.cfg.axi_data_bytes)
            m.d.sync += st.kv_heads.eq(heads)
            off_end = ((keys != 0) & (block_end > depth[Buffer.KV])) | (
                (af.q_addr + (af.rows - 1) * af.a_step + st.in_pitch > depth[Buffer.ACT]) |
                (af.dst + (af.rows - 1) * af.d_step
                 + words(L.element_bit(st.out_len, L.WIDE) >> 3) > depth[Buffer.ACT]))
            with m.If((d == 0) | d[0]):
                unit._fail(m, Fault.PARAM)
            with m.Elif((af.rows != 0) & off_end):
                unit._fail(m, Fault.RANGE)
            with m.Elif(af.rows == 0):
                m.next = "COMPLETE"
            with m.Else():
                m.next = "A_ROW"
        with m.State("A_ROW"):
            m.d.sync += [st.key.eq(0), st.sub.eq(0), st.fetched.eq(0), st.channel.eq(0),
                         st.qsum.eq(0), st.emax.eq(0), st.seen.eq(0), st.midsum.eq(0)]
            with m.If(st.is_pv):
                m.next = "P_SCAN"
            with m.Else():
                m.next = "S_QHDR"

    def _score_states(self, m, st: AttnState, fa, rs: RowSfu, qmem: Memory):
        """SCORE: the query's scale, code sum and codes, then the keys through the two
        stages, each score leaving from the score register (to ACT, or into the softmax and
        drained)."""
        unit = self.unit
        af, regs, lb, get = st.fields, st.regs, _log2(self.word_bits), unit._get
        d, keys = af.head_dim, af.keys
        qw = qmem.write_port(granularity=4 * self.lanes) if self.halves else qmem.write_port()
        qr = qmem.read_port()
        with m.State("S_QHDR"), m.If(get(m, fa, Buffer.ACT, st.row << lb)):
            scale = view(L.QRowHeader, fa.value)
            m.d.sync += [st.qm.eq(scale.m), st.qe.eq(scale.e)]
            m.next = "S_QSUM"
        with m.State("S_QSUM"):  # sub-step `sub`'s codes read in A, kept and summed in B
            self._query_codes(m, st, qw)
        # the scores' two-entry queue (stage C): a key a cycle keeps going while the taker
        # waits a cycle (the softmax's first score, a write port shared)
        entry = data.StructLayout({"key": 13, "dot": signed(32), "km": 16, "ke": signed(16),
                                   "kmid": signed(32)})
        s_head, s_tail = Signal(entry, name="score_head"), Signal(entry, name="score_tail")
        s_count = Signal(range(3), name="score_count")
        shift = af.shift
        part = saturate(round_shift(s_head.dot * s_head.km * st.qm, shift - s_head.ke - st.qe,
                                    N.WIDE_BITS + 1), N.WIDE_BITS)
        mids = round_shift(st.qsum * st.qm * s_head.kmid, shift - st.qe, N.WIDE_BITS + 1)
        score = Signal(signed(N.WIDE_BITS))
        m.d.comb += score.eq(saturate(part + mids, N.WIDE_BITS))
        with m.State("S_KEYS"):
            taken = Signal()
            cmd = rs.i.payload.cmd
            with m.If(s_count != 0):
                with m.If(af.func == AttnFunc.SCORE_SOFTMAX):
                    m.d.comb += [rs.i.valid.eq(1), rs.i.payload.eq(0), rs.i.payload.count.eq(1),
                                 *(a.eq(score) for a in rs.i.payload.a),
                                 cmd.func.eq(RowFunc.SOFTMAX), cmd.length.eq(keys),
                                 cmd.pos.eq(regs[Reg.POS.value] + st.query),
                                 cmd.sink.eq(regs[Reg.SINK.value]),
                                 cmd.window.eq(regs[Reg.WINDOW.value]), taken.eq(rs.i.ready)]
                with m.Else():
                    m.d.comb += taken.eq(unit._write_wide(m, st.out_row, s_head.key, score))
            # stage B's key done: its score joins the queue
            push = Signal(name="score_push")
            m.d.comb += push.eq(st.b_valid & (st.b_sub == st.steps))
            # stage A: a new word only while the queue will have room for its key; the query
            # codes of its sub-step are read with it
            issuing = self._issue(m, st, self._slot(m, st), s_count + push < 2 + taken)
            m.d.comb += qr.addr.eq(self._lane_word(st, _prev(st.sub)))
            # stage B
            word = unit.rd_kv.data
            starts, head = self._header(m, st)
            step = _prev(st.b_sub)
            first = self._lane_word(st, step) << self.lanes_log2
            products = [Mux(first + j < d, qr.data.word_select(j, 8).as_signed() * code, 0)
                        for j, code in enumerate(self._codes(
                            st, self._payload(m, st, word), step))]
            total = Signal(signed(32), name="score_total")
            m.d.comb += total.eq(Mux(st.b_sub == 1, 0, st.dot) + tree(operator.add, products))
            with m.If(starts):
                m.d.sync += [st.km.eq(head.m), st.ke.eq(head.e), st.kmid.eq(head.mid)]
            with m.If(st.b_valid & (st.b_sub != 0)):
                m.d.sync += st.dot.eq(total)
            new = Signal(entry, name="score_new")
            m.d.comb += [new.key.eq(st.b_key), new.dot.eq(total), new.km.eq(st.km),
                         new.ke.eq(st.ke), new.kmid.eq(st.kmid)]
            self._queue(m, s_head, s_tail, s_count, new, push, taken)
            with m.If(~issuing & ~st.b_valid & (s_count == taken)):
                with m.If(af.func == AttnFunc.SCORE_SOFTMAX):
                    m.d.sync += st.key.eq(0)
                    m.next = "S_DRAIN"
                with m.Else():
                    self._next_query(m, st)
        with m.State("S_DRAIN"):  # the probabilities, ``row_lanes`` a cycle
            written, out = Signal(), rs.o.payload
            with m.If(rs.o.valid):
                m.d.comb += written.eq(unit._write_wides(m, st.out_row, st.key, list(out.y),
                                                         out.count))
            with m.If(written):
                m.d.comb += rs.o.ready.eq(1)
                m.d.sync += st.key.eq(st.key + self.cfg.row_lanes)
                with m.If(out.last):
                    self._next_query(m, st)

    @staticmethod
    def _queue(m, head, tail, count, new, push, pop):
        """A two-entry queue of registers (``head`` first): ``new`` joins it on ``push``,
        ``head`` leaves on ``pop``; the caller never pushes into a full one."""
        with m.If(pop & (count == 2)):
            m.d.sync += head.eq(tail)
            with m.If(push):
                m.d.sync += tail.eq(new)
        with m.Elif(push & ((count == 0) | pop)):
            m.d.sync += head.eq(new)
        with m.Elif(push):
            m.d.sync += tail.eq(new)
        m.d.sync += count.eq(count + push - pop)

    def _query_codes(self, m, st: AttnState, qw):
        """S_QSUM: the query's codes, as many a cycle as an INT8 sub-step takes (``lanes``,
        or half of them): stage A reads the ACT word of piece ``sub``, stage B writes its
        codes into the query memory (its half of a word where pieces are half the lanes) and
        adds them (those below the head size) to the code sum."""
        port, lb = self.unit.rd_window, _log2(self.word_bits)
        piece = self.cfg.attention_codes(L.QCODE.width)
        qhdr = L.qrow_header(self.cfg.axi_data_bytes)
        issuing = st.sub != self._per_codes(st.fields.head_dim, L.QCODE.width)
        code_bits = (st.sub << _log2(piece)) * L.QCODE.width
        m.d.comb += [port.en.eq(issuing), port.buf.eq(Buffer.ACT),
                     port.addr.eq(st.row + qhdr + (code_bits >> lb))]
        go = issuing & port.grant
        m.d.sync += [st.b_valid.eq(go), st.b_sub.eq(st.sub)]
        with m.If(go):
            m.d.sync += st.sub.eq(st.sub + 1)
        chunk = self._chunk(port.data, st.b_sub, L.QCODE.width)
        first = st.b_sub << _log2(piece)
        codes = [Mux(first + j < st.fields.head_dim, chunk.word_select(j, 8).as_signed(), 0)
                 for j in range(piece)]
        if self.halves:
            m.d.comb += [qw.addr.eq(st.b_sub >> 1), qw.data.eq(Cat(chunk, chunk)),
                         qw.en.eq(Mux(st.b_valid, Mux(st.b_sub[0], 0b10, 0b01), 0))]
        else:
            m.d.comb += [qw.addr.eq(st.b_sub), qw.data.eq(chunk), qw.en.eq(st.b_valid)]
        with m.If(st.b_valid):
            m.d.sync += st.qsum.eq(st.qsum + tree(operator.add, codes))
        with m.If(~issuing & ~st.b_valid):
            m.d.sync += st.sub.eq(0)
            m.next = "S_KEYS"

    def _pv_states(self, m, st: AttnState, accmem: Memory):
        """PV: the scan for the largest visible exponent, the keys into the accumulators
        (and the midpoint sum), then the results ``row_lanes`` a cycle."""
        unit, acc_bits = self.unit, N.ACC_BITS
        af, kvh, prob_port = st.fields, unit.rd_kvh, unit.rd_window
        keys, i = af.keys, st.channel
        aw, ar = accmem.write_port(), accmem.read_port()
        out_ok = Signal(name="out_ok")  # P_OUT: ar.data holds element i's accumulators
        with m.State("P_SCAN"):  # the largest visible exponent, a header word a cycle
            issuing = st.key < keys
            m.d.comb += [kvh.en.eq(issuing), kvh.buf.eq(Buffer.KV),
                         kvh.addr.eq(st.header_at(st.key, self.slots_log2))]
            go = issuing & kvh.grant
            m.d.sync += [st.b_valid.eq(go), st.b_key.eq(st.key)]
            with m.If(go):
                m.d.sync += st.key.eq(st.key + self.slots)
            with m.If(st.b_valid):
                seen, emax = tree(_larger_seen, [(st.seen, st.emax)] + [
                    self._scan_candidate(st, kvh.data, s, keys) for s in range(self.slots)])
                m.d.sync += [st.seen.eq(seen), st.emax.eq(emax)]
            with m.If(~issuing & ~st.b_valid):
                m.d.sync += [st.key.eq(0), st.sub.eq(0), st.fetched.eq(0)]
                m.next = "P_KEYS"
        with m.State("P_KEYS"):
            slot = self._slot(m, st)
            starting = (st.sub == 0) | slot.nxt  # stage A's slot starts key h_key
            h_key, b_h_key = st.key + slot.nxt, st.b_key + st.b_next  # the starting key, A, B
            prob = self._prob_read(m, st, prob_port, (st.key != keys) & starting, h_key,
                                   b_h_key)
            issuing = self._issue(m, st, slot, 1, prob_port.grant | ~starting)
            starts, head = self._header(m, st)
            aligned = round_shift(Cat(head.m, Const(0, 1)), (st.emax - head.e).as_signed(), 17)
            with m.If(starts):
                m.d.sync += [st.x.eq(prob * Mux(st.visible(b_h_key), aligned[:17], 0)),
                             st.midsum.eq(st.midsum + prob * head.mid)]
            step = _prev(st.b_sub)
            m.d.comb += [ar.addr.eq(self._lane_word(st, _prev(st.sub))),
                         aw.addr.eq(self._lane_word(st, step)),  # read in A, written in B
                         aw.en.eq(st.b_valid & (st.b_sub != 0))]
            # a word read in the cycle it is written (a key a cycle) comes from the write
            fwd, fwd_data = Signal(name="acc_fwd"), Signal.like(aw.data, name="acc_fwd_data")
            m.d.sync += [fwd.eq(aw.en & (aw.addr == ar.addr)), fwd_data.eq(aw.data)]
            accs = Mux(fwd, fwd_data, ar.data)
            payload = self._payload(m, st, unit.rd_kv.data)
            sums = [Mux((st.b_key == 0) & self._active(st, step, j), 0,
                        accs.word_select(j, acc_bits).as_signed())
                    + st.x * code for j, code in enumerate(self._codes(st, payload, step))]
            m.d.comb += aw.data.eq(Cat(*(s[:acc_bits] for s in sums)))
            with m.If(~issuing & ~st.b_valid):
                m.d.sync += [i.eq(0), out_ok.eq(0)]
                m.next = "P_OUT"
        with m.State("P_OUT"):  # a cycle to read each word of accumulators, then its elements
            self._results(m, st, ar, out_ok)

    def _scan_candidate(self, st: AttnState, word, slot: int, keys) -> tuple[Value, Value]:
        """P_SCAN: whether the value exponent in ``slot`` of stage B's header word counts
        (a key of the block, visible, of a non-zero scale) and that exponent."""
        head, key = self._slot_header(word, slot), st.b_key + slot
        return (key < keys) & st.visible(key) & (head.m != 0), head.e

    def _results(self, m, st: AttnState, ar, out_ok):
        """P_OUT: the head's ``d`` results, ``row_lanes`` a cycle, from the accumulator word
        read a cycle before (``out_ok``), each ``acc * 2**(frac - emax) + midsum * 2**frac``
        rounded and saturated."""
        af, i, acc_bits = st.fields, st.channel, N.ACC_BITS
        d, keys = af.head_dim, af.keys
        k = self.cfg.row_lanes
        frac = N.PROB_FRAC + af.shift
        mids = Signal(signed(N.WIDE_BITS + 1), name="pv_mids")  # the same for every result
        m.d.comb += [ar.addr.eq(i >> self.lanes_log2),
                     mids.eq(round_shift(st.midsum, frac, N.WIDE_BITS + 1))]
        m.d.sync += out_ok.eq(1)
        group = ar.data.word_select(i[_log2(k):self.lanes_log2], k * acc_bits)
        values = []
        for j in range(k):
            acc = Mux(keys == 0, 0, group.word_select(j, acc_bits).as_signed())
            value = Signal(signed(N.WIDE_BITS), name=f"pv_result{j}")
            m.d.comb += value.eq(saturate(round_shift(acc, frac - st.emax, N.WIDE_BITS + 1)
                                          + mids, N.WIDE_BITS))
            values.append(value)
        count = Mux(d - i < k, d - i, k)
        with m.If(i == d):
            self._next_query(m, st)
        with m.Elif(out_ok), m.If(self.unit._write_wides(m, st.out_row, i, values, count)):
            m.d.sync += i.eq(i + count)
            with m.If((i + count)[:self.lanes_log2] == 0):
                m.d.sync += out_ok.eq(0)
