"""The matrix engine fed from weight streams: ``channels`` memory channels, each with a
:class:`hw.stream_unpacker.StreamUnpacker` for its ``lanes`` lanes, and one activation
stream shared by all lanes.

A command (:func:`command_layout`) starts one tile's stream: its format, sparsity and group,
the beats of a row, the passes (rows per lane) and the words each channel sends. The engine
counts the beats as :func:`hw.matrix_engine.beats` schedules them (group and row ends), tells
the unpackers which words each beat finishes and which SCALES entries its slots read, and
takes a beat whenever the activations and every channel's operands are there. Its results
leave as the :class:`hw.matrix_engine.MatrixEngine`'s do, with a collector way per channel:
per pass, each transfer a result of every channel (``o.payload[c]``), lane by lane, token 0
then 1, so a pass drains in ``2 * lanes`` cycles however many channels there are.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.axi import axi_signature
from hw.axi import command_layout as command_layout_axi
from hw.matrix_engine import MatrixEngine, engine_layouts, results_layout
from hw.stream_unpacker import WORD_COUNT_BITS, StreamUnpacker, index_fits_code, slot_bits
from hw.weight_streamer import WeightStreamer
from llmacc import layout as L
from llmacc.isa import Sparsity, WeightFormat

ROW_BEATS_BITS = 16  #: beats of one row (K up to 2**16 kept weights per beat of the chain)
PASS_BITS = 16


def command_layout() -> data.StructLayout:
    """One tile's stream: what every channel's unpacker and the beat counter need."""
    return data.StructLayout({
        "fmt": WeightFormat, "sparsity": Sparsity,
        "group_log2": range(L.GROUP_LOG2_MAX + 1),
        "beats": ROW_BEATS_BITS, "passes": PASS_BITS, "words": WORD_COUNT_BITS})


def activation_layout(n: int, chain_group: int) -> data.StructLayout:
    """One beat's activations of two tokens with their scales: the matrix engine's beat
    fields that the weights do not set."""
    head = engine_layouts(1, n, chain_group)[0]
    return data.StructLayout({name: head[name].shape for name in ("x", "xm", "xe")})


def command_of(geom: L.StreamGeometry, passes: int, words: int) -> dict:
    """The command of a stream of ``geom`` over ``passes`` rows per lane, ``words`` per
    channel (as :func:`llmacc.layout.encode_weight_stream` wrote them)."""
    return {"fmt": geom.desc.wfmt, "sparsity": geom.desc.sparsity,
            "group_log2": geom.desc.group_log2, "beats": geom.beats, "passes": passes,
            "words": words}


def geometry_tables(m: Module, n: int, w_bits: int, fmt, sparsity):
    """A stream's format and sparsity, looked up: ``(per_word_mask, drop, per_word_log2,
    held)``: beats per WEIGHTS word less one (a mask) and its log2, log2 of the sparse block
    over the kept weights of a block (kept per group = group >> drop), and whether a stream
    of ``w_bits`` words holds the combination at all (``layout.stream_geometries``)."""
    combos = L.stream_geometries(n, w_bits)
    per_word_mask = Signal(slot_bits(n, w_bits))
    per_word_log2 = Signal(range(max(1, slot_bits(n, w_bits)) + 1))
    held = Signal()
    with m.Switch(fmt):
        for f in WeightFormat:
            with m.Case(f), m.Switch(sparsity):
                for (cf, cs), g in combos.items():
                    if cf is f:
                        with m.Case(cs):
                            m.d.comb += [per_word_mask.eq(g.beats_per_word - 1),
                                         per_word_log2.eq(g.beats_per_word.bit_length() - 1),
                                         held.eq(1)]
    drop = Signal(range(5))  # log2(block) - log2(keep)
    with m.Switch(sparsity):
        for s, nm in L.SPARSITY_NM.items():
            keep, block = nm or (1, 1)
            with m.Case(s):
                m.d.comb += drop.eq((block.bit_length() - 1) - (keep.bit_length() - 1))
    return per_word_mask, drop, per_word_log2, held


def length_layout() -> data.StructLayout:
    """What a stream's length depends on: its format, sparsity and group, the beats and
    groups of a row, and the passes (rows per lane)."""
    return data.StructLayout({
        "fmt": WeightFormat, "sparsity": Sparsity,
        "group_log2": range(L.GROUP_LOG2_MAX + 1),
        "beats": ROW_BEATS_BITS, "groups": ROW_BEATS_BITS, "passes": PASS_BITS})


class StreamLength(wiring.Component):
    """The words of one channel's stream, :func:`llmacc.layout.stream_words` in closed form:
    for each part the position of the request that takes a lane's last word of it (among
    the queues' first requests, in the last rows: the ``i``-th word of a part in a row is
    asked for at the beat that finishes it, behind the other part's words of the earlier
    beats, or, for a pre-skewed stream's WEIGHTS (``skew``), at one of the tail's beats),
    the larger of the two plus one, times the lanes. Pipelined: ``words`` is valid
    :attr:`LATENCY` cycles after ``i`` (held meanwhile); ``fits`` when it fits
    ``WORD_COUNT_BITS``."""

    LATENCY = 4

    def __init__(self, lanes: int, n: int, w_bits: int, skew: int = 0):
        self.lanes, self.n, self.w_bits, self.skew = lanes, n, w_bits, skew
        super().__init__({"i": In(length_layout()), "words": Out(WORD_COUNT_BITS),
                          "fits": Out(1)})

    def elaborate(self, platform):
        m = Module()
        i, q, parts = self.i, L.STREAM_QUEUE_WORDS, len(L.StreamPart)
        weights = L.StreamPart.WEIGHTS
        entries = L.stream_scale_entries(self.w_bits)
        le, ln = entries.bit_length() - 1, self.n.bit_length() - 1
        tail = max(0, self.skew - 1)
        _, drop, lbpw, _ = geometry_tables(m, self.n, self.w_bits, i.fmt, i.sparsity)
        wide = ROW_BEATS_BITS + PASS_BITS + 2
        # 1: the words of each part in a row, the tail's WEIGHTS words, and the beats
        # between two SCALES words (log2)
        row_words = [Signal(ROW_BEATS_BITS + 1, name=f"row_words{p}") for p in range(parts)]
        tail_words = Signal(range(max(2, tail + 1)))  # a bit even without a tail (lint)
        lps = Signal(range(L.GROUP_LOG2_MAX + le + 1))
        m.d.sync += [row_words[weights].eq((i.beats + (1 << lbpw) - 1) >> lbpw),
                     row_words[L.StreamPart.SCALES].eq((i.groups + entries - 1) >> le),
                     lps.eq(i.group_log2 - drop + le - ln)]
        if tail:
            m.d.sync += tail_words.eq((tail + (1 << lbpw) - 1) >> lbpw)
        # 2: per part, the lane's words, the last one's row and its place in the row: the
        # pop that asks for it is the ``c``-th from the rows' end (c = q + 1 - tail words;
        # none of the rows' if c < 1)
        need = [Signal(wide, name=f"need{p}") for p in range(parts)]
        last_row = [Signal(PASS_BITS, name=f"last_row{p}") for p in range(parts)]
        place = [Signal(ROW_BEATS_BITS, name=f"place{p}") for p in range(parts)]
        in_tail = Signal()
        if tail:
            m.d.sync += in_tail.eq(tail_words > q)
        for p in range(parts):
            rw = row_words[p]
            extra = tail_words if p == weights and tail else 0
            m.d.sync += need[p].eq(i.passes * rw + extra)
            # divmod(P rw - c, rw), which is (P - ceil(c / rw), ceil(c / rw) rw - c)
            cs = range(q + 1 - tail, q + 2) if p == weights else [q + 1]
            c = Signal(range(q + 2), name=f"c{p}")
            m.d.comb += c.eq(q + 1 - extra)
            with m.Switch(rw):
                for r in range(1, q + 1):
                    with m.Case(r), m.Switch(c):
                        for cv in (v for v in cs if v >= 1):
                            back = -(-cv // r)
                            with m.Case(cv):
                                m.d.sync += [last_row[p].eq(i.passes - back),
                                             place[p].eq(back * r - cv)]
                with m.Default():
                    m.d.sync += [last_row[p].eq(i.passes - 1), place[p].eq(rw - c)]
        row_len = Signal(ROW_BEATS_BITS + 2)
        m.d.sync += row_len.eq(row_words[0] + row_words[1])
        # 3: the word's request among its row's (the other part's words of earlier beats)
        last_beat = i.beats - 1
        at_w = Mux(((place[0] + 1) << lbpw) - 1 < last_beat, ((place[0] + 1) << lbpw) - 1,
                   last_beat)
        at_s = Mux(((place[1] + 1) << lps) - 1 < last_beat, ((place[1] + 1) << lps) - 1,
                   last_beat)
        tail_pop = (at_s == last_beat) & ((i.beats & ((1 << lbpw) - 1)) != 0)
        at = [Signal(wide + ROW_BEATS_BITS, name=f"at{p}") for p in range(parts)]
        for p, pos in enumerate((place[0] + (at_w >> lps),
                                 place[1] + ((at_s + 1) >> lbpw) + tail_pop)):
            rows_at = parts * q + last_row[p] * row_len + pos
            if p == weights and tail:  # the tail's pops follow the last row's
                rows_at = Mux(in_tail, parts * q + i.passes * row_len + tail_words - (q + 1),
                              rows_at)
            m.d.sync += at[p].eq(Mux(need[p] <= q, parts * (need[p] - 1) + p, rows_at))
        # 4: the larger, plus one, per lane
        last = Mux(at[0] > at[1], at[0], at[1])
        total = self.lanes * (last + 1)
        m.d.sync += [self.words.eq(total), self.fits.eq(total < (1 << WORD_COUNT_BITS))]
        return m


class StreamBeats(wiring.Component):
    """The engine's beats from weight streams: ``cmd`` (one stream at a time; taken when the
    last one's beats are all out), ``act`` (one beat's activations per beat) and ``words``
    per channel in; ``beat`` (the beat's shared fields, as :class:`MatrixEngine` takes them)
    with ``lane`` (every lane's operands, channel by channel) out. The COMPUTE unit feeds
    its engine from here on MATSTREAM; :class:`StreamEngine` is the two together.

    ``preskewed``: the streams are pre-skewed for the chain's taps
    (``llmacc.layout.StreamGeometry.skew``); after the last row come ``chain_group - 1``
    ``tail`` beats (WEIGHTS words, no activations), and ``hold`` asks a
    ``MatrixEngine(preskewed=True)`` to stop while a stream that has begun owes a beat (not
    before its first: the chain then drains the last stream's results, whatever keeps the
    next one's words back)."""

    def __init__(self, channels: int, lanes: int, n: int, chain_group: int, w_bits: int,
                 index_in_code: bool = False, preskewed: bool = False):
        self.channels, self.lanes, self.n, self.chain_group = channels, lanes, n, chain_group
        self.w_bits, self.index_in_code, self.preskewed = w_bits, index_in_code, preskewed
        head, lane, _ = engine_layouts(channels * lanes, n, chain_group,
                                       index_in_code=index_in_code)
        flow = {"hold": Out(1), "tail": Out(1)} if preskewed else {}
        super().__init__({
            "cmd": In(stream.Signature(command_layout())),
            "act": In(stream.Signature(activation_layout(n, chain_group))),
            "words": In(stream.Signature(w_bits)).array(channels),
            "beat": Out(stream.Signature(head)),
            "lane": Out(lane).array(channels * lanes),
            "busy": Out(1), **flow})

    def elaborate(self, platform):
        m = Module()
        n, entries = self.n, L.stream_scale_entries(self.w_bits)
        cmd = Signal(command_layout())
        running = Signal()
        in_tail = Signal()  # the tail beats after the last row (pre-skewed streams)
        tail = self.chain_group - 1 if self.preskewed else 0
        beat = Signal(ROW_BEATS_BITS)
        done_passes = Signal(PASS_BITS)
        start = self.cmd.valid & ~running
        m.d.comb += [self.cmd.ready.eq(~running), self.busy.eq(running)]
        with m.If(start):
            m.d.sync += [cmd.eq(self.cmd.payload), running.eq(1), beat.eq(0),
                         done_passes.eq(0), in_tail.eq(0)]

        mask, drop, _, _ = geometry_tables(m, n, self.w_bits, cmd.fmt, cmd.sparsity)
        lkpg = Signal(range(L.GROUP_LOG2_MAX + 1))  # log2 of the kept weights per group
        m.d.comb += lkpg.eq(cmd.group_log2 - drop)
        slot = Signal(slot_bits(n, self.w_bits))
        m.d.comb += slot.eq(beat & mask)
        row_end = beat == cmd.beats - 1
        end = Signal(ROW_BEATS_BITS + 7)
        m.d.comb += end.eq((beat + 1) * n)
        group_end = row_end | ((end & ((1 << lkpg) - 1)) == 0)
        done_group = (end - 1) >> lkpg
        pops = Signal(len(L.StreamPart))
        tail_end = beat == tail - 1
        with m.If(in_tail):  # WEIGHTS words only
            m.d.comb += pops[L.StreamPart.WEIGHTS].eq(tail_end | (slot == mask))
        with m.Else():
            m.d.comb += [
                pops[L.StreamPart.WEIGHTS].eq(row_end | (slot == mask)),
                pops[L.StreamPart.SCALES].eq(
                    row_end | (group_end & ((done_group & (entries - 1)) == entries - 1)))]
        slots = n // self.chain_group
        entry = Signal(data.ArrayLayout(range(entries), slots))
        for j in range(slots):
            m.d.comb += entry[j].eq(((beat * n + j * self.chain_group) >> lkpg)
                                    & (entries - 1))

        unpackers = []
        for c in range(self.channels):
            m.submodules[f"unpack{c}"] = u = StreamUnpacker(self.lanes, n, self.chain_group,
                                                            self.w_bits, self.index_in_code)
            wiring.connect(m, wiring.flipped(self.words[c]), u.words)
            m.d.comb += [u.start.eq(start), u.total.eq(self.cmd.payload.words),
                         u.fmt.eq(cmd.fmt), u.sparsity.eq(cmd.sparsity), u.slot.eq(slot),
                         u.entry.eq(entry), u.pop.eq(pops), u.tail.eq(in_tail)]
            for lane in range(self.lanes):
                m.d.comb += self.lane[c * self.lanes + lane].eq(u.lane[lane])
            unpackers.append(u)
        operands = Cat(*(u.ready for u in unpackers)).all()
        go = running & (self.act.valid | in_tail) & operands
        fire = go & self.beat.ready
        act, head = self.act.payload, self.beat.payload
        m.d.comb += [self.beat.valid.eq(go), self.act.ready.eq(fire & ~in_tail),
                     head.fmt.eq(cmd.fmt), head.sparsity.eq(cmd.sparsity),
                     head.group_end.eq(group_end & ~in_tail),
                     head.row_end.eq(row_end & ~in_tail),
                     head.x.eq(act.x), head.xm.eq(act.xm), head.xe.eq(act.xe),
                     *(u.fire.eq(fire) for u in unpackers)]
        if self.preskewed:  # held from its first beat on: before it, the last one drains
            started = Signal()
            with m.If(start):
                m.d.sync += started.eq(0)
            with m.Elif(fire):
                m.d.sync += started.eq(1)
            m.d.comb += [self.hold.eq(running & started & ~go), self.tail.eq(in_tail)]
        with m.If(fire & in_tail):
            m.d.sync += beat.eq(beat + 1)
            with m.If(tail_end):
                m.d.sync += [running.eq(0), in_tail.eq(0)]
        with m.Elif(fire):
            m.d.sync += beat.eq(Mux(row_end, 0, beat + 1))
            with m.If(row_end):
                m.d.sync += done_passes.eq(done_passes + 1)
                with m.If(done_passes == cmd.passes - 1):
                    m.d.sync += running.eq(0) if not tail else in_tail.eq(1)
        return m


class StreamEngine(wiring.Component):
    """:class:`StreamBeats` into a :class:`MatrixEngine` with a collector way per channel,
    fed by streams only: the streams pre-skewed (``layout.StreamGeometry.skew`` =
    ``chain_group``), the N:M indices in the codes where the streams leave them room.
    Ports: ``cmd``, ``act``, ``words`` per channel (as :class:`StreamBeats`), ``o`` the
    results."""

    def __init__(self, channels: int, lanes: int, n: int, chain_group: int, w_bits: int):
        self.channels, self.lanes = channels, lanes
        index_in_code = index_fits_code(n, w_bits)
        self.beats = StreamBeats(channels, lanes, n, chain_group, w_bits, index_in_code,
                                 preskewed=True)
        self.engine = MatrixEngine(channels * lanes, n, chain_group, ways=channels,
                                   index_in_code=index_in_code, preskewed=True)
        super().__init__({
            "cmd": In(stream.Signature(command_layout())),
            "act": In(stream.Signature(activation_layout(n, chain_group))),
            "words": In(stream.Signature(w_bits)).array(channels),
            "o": Out(stream.Signature(results_layout(channels))),
            "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.beats = beats = self.beats
        m.submodules.engine = engine = self.engine
        wiring.connect(m, wiring.flipped(self.cmd), beats.cmd)
        wiring.connect(m, wiring.flipped(self.act), beats.act)
        for c in range(self.channels):
            wiring.connect(m, wiring.flipped(self.words[c]), beats.words[c])
        wiring.connect(m, beats.beat, engine.i)
        m.d.comb += [engine.hold.eq(beats.hold), engine.tail.eq(beats.tail)]
        for lane in range(self.channels * self.lanes):
            m.d.comb += engine.lane_in[lane].eq(beats.lane[lane])
        wiring.connect(m, wiring.flipped(self.o), engine.o)
        m.d.comb += self.busy.eq(beats.busy)
        return m


class StreamSlice(wiring.Component):
    """A channel slice of the streaming matrix path: per channel a
    :class:`hw.weight_streamer.WeightStreamer` (ports ``cmd{c}``, ``axi{c}``) whose words go
    straight into a :class:`StreamEngine` (ports ``ecmd``, ``act``, ``o``)."""

    def __init__(self, channels: int, lanes: int, n: int, chain_group: int, addr_bits: int,
                 w_bits: int):
        self.channels, self.addr_bits, self.w_bits = channels, addr_bits, w_bits
        self.engine = StreamEngine(channels, lanes, n, chain_group, w_bits)
        members = {}
        for c in range(channels):
            members[f"cmd{c}"] = In(stream.Signature(command_layout_axi(addr_bits)))
            members[f"axi{c}"] = Out(axi_signature(addr_bits, w_bits))
        super().__init__({**members, "ecmd": In(stream.Signature(command_layout())),
                          "act": In(stream.Signature(activation_layout(n, chain_group))),
                          "o": Out(stream.Signature(results_layout(channels))), "busy": Out(1),
                          "idle": Out(1), "error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = engine = self.engine
        wiring.connect(m, wiring.flipped(self.ecmd), engine.cmd)
        wiring.connect(m, wiring.flipped(self.act), engine.act)
        wiring.connect(m, wiring.flipped(self.o), engine.o)
        idle, error = [], []
        for c in range(self.channels):
            m.submodules[f"ch{c}"] = s = WeightStreamer(self.addr_bits, self.w_bits)
            wiring.connect(m, wiring.flipped(getattr(self, f"cmd{c}")), s.cmd)
            wiring.connect(m, s.axi, wiring.flipped(getattr(self, f"axi{c}")))
            wiring.connect(m, s.data, engine.words[c])
            idle.append(s.idle)
            error.append(s.error)
        m.d.comb += [self.busy.eq(engine.busy), self.idle.eq(Cat(*idle).all()),
                     self.error.eq(Cat(*error).any())]
        return m
