"""The COMPUTE unit: MATVEC and MATMAT on the matrix engine, ATTN on its lanes of a head, each
as the emulator executes it (``sim/emulator.py``), records from :mod:`llmacc.layout`.

**Matrix instructions.** The tile's META descriptor gives the weight format, sparsity, group
and fusion parameters. The output rows are taken ``lanes`` at a time (one engine lane each)
and the tokens two at a time (one, for INT8 weights); for each such pass the sequencer
assembles the engine's beats exactly as :func:`hw.matrix_engine.beats` schedules them --
activation window, packed codes and sparse indices, per-slot group scales and type ids, row
exponents -- reading the fields through :class:`FieldFetch` ports, then writes the pass's
results: plain (``OutMode.WIDE``), added to what the destination holds (``ADD``, the
residual) or through SiLU (``SILU``), one INT32 element at a time with byte enables (the
emulator leaves the rest of a row's last word alone). This record path is built with
``cfg.record_matrices``; without it MATVEC and MATMAT are :attr:`Fault.UNSUPPORTED` and the
unit is smaller by its beat registers and the select in front of the engine.

**Attention** (``isa.AttnFields``, :mod:`hw.attention`) takes ``cfg.attention_lanes``
elements of a head per cycle from whole KV words: scores of INT8 queries against INT4/INT8
keys with the midpoint term (``numerics.attention_scores``), optionally through the row
stage's softmax under the Lambda mask, and probabilities times values with block-float
aligned value scales (``numerics.attention_pv``).

Faults, before anything is written: a descriptor that does not decode, K not a multiple of
the group or sparse block, a RoPE-style odd head size (:attr:`Fault.PARAM`); records outside
their buffer (:attr:`Fault.RANGE`); tiles the engine's schedule cannot run -- fewer kept
weights per group than the chain's tap spacing, a group smaller than the sparse block (its
kept weights would straddle groups unevenly), or K = 0 (:attr:`Fault.UNSUPPORTED`).
**MATSTREAM** (``isa.StreamFields``) runs on the same engine, its weights from the memory
channels: the unit tells each channel's weight streamer (``stream<c>``, in the top) to read
the tile's stream at ``page * STREAM_PAGE_BYTES`` (its length from
:class:`hw.stream_engine.StreamLength`), and :class:`hw.stream_engine.StreamBeats` turns the
words (``weights<c>``) into the engine's lanes, ``lanes_per_channel`` rows of each channel
per pass (``layout.stream_row``). Per pair of tokens (one, INT8) the weights stream once:
in the first pass each beat's activation window is read from ACT as whole words and kept in
the replay memory (a window per beat), which gives the later passes a beat per cycle; the
results are written while the next pass streams, one element per cycle, out of
``cfg.collector_ways`` collector ways (whole channels' lanes each). Without the record path
the streams come pre-skewed and the lanes keep no skew registers
(``AccelConfig.stream_skew``). A format the streams do not hold is
:attr:`Fault.UNSUPPORTED`, a stream longer than a streamer command :attr:`Fault.RANGE`, an
error response :attr:`Fault.BUS`. Every fault passes through FAULTED before completing:
``stream_abort`` empties the streamers until ``streams_idle`` (no burst left in flight)
while the engine and the beats are cleared, so that the next program's streams start clean.
"""

from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.attention import Attention
from hw.axi import command_layout
from hw.buffer_access import FieldFetch, read_port, snoop_writes, view, word_count, write_port
from hw.controller import IssueLayout, unit_members
from hw.fixed_point import one_of
from hw.matrix_engine import MatrixEngine, engine_layouts
from hw.sfu import add, silu
from hw.sparse_dsp_chain import window
from hw.stream_engine import StreamBeats, StreamLength, geometry_tables
from hw.stream_unpacker import WORD_COUNT_BITS, index_fits_code
from llmacc import layout as L
from llmacc.config import AccelConfig
from llmacc.isa import (
    OUT_MODES,
    AttnFields,
    Buffer,
    MatFields,
    Opcode,
    OutMode,
    Sparsity,
    WeightFormat,
)
from llmacc.kernel import Fault
from llmacc.widths import STREAM_PAGE_BITS, STREAM_PAGE_BYTES


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


def index_in_code(cfg: AccelConfig) -> bool:
    """Whether the engine's lanes take the N:M indices in their codes' high bits
    (``hw.sparse_dsp_chain.INDEX_IN_CODE_AT``): where only weight streams feed them (no
    record path) and no streamable format needs the room."""
    return not cfg.record_matrices and index_fits_code(cfg.chain_len, cfg.axi_data_bits)


def replay_shape(cfg: AccelConfig) -> tuple[int, int]:
    """(bits, depth) of the MATSTREAM replay memory: one beat's activation window of two
    tokens per entry, an entry per beat of the longest row (K < 2**14)."""
    k_max = (1 << MatFields.as_shape()["k"].width) - 1
    head, _, _ = engine_layouts(cfg.mv_rows, cfg.chain_len, cfg.chain_group)
    return head["x"].shape.size, -(-k_max // cfg.chain_len)


MAX_CODE_BITS = max(L.FORMAT_BITS.values())  #: the widest packed weight code
MAX_INDEX_BITS = max(sparse_shape(sp)[2] for sp in Sparsity)  #: the widest in-block index


def fused_results(m: Module, y, old, p0, p1, word_writes: bool | None = None
                  ) -> dict[OutMode, object]:
    """What each output mode of ``isa.OUT_MODES`` writes for the result ``y`` (with
    ``word_writes`` True or False, only the modes whose ``OutSpec.word_writes`` it is),
    given the destination's ``old`` value and the tile's parameters; refuses a mode
    without one."""
    stages = {OutMode.WIDE: lambda: y, OutMode.ADD: lambda: add(old, y, p0),
              OutMode.SILU: lambda: silu(m, y, p0, p1)}
    missing = set(OUT_MODES) - set(stages)
    if missing:
        raise NotImplementedError(f"no result stage for output modes {sorted(missing)}")
    return {mode: stage() for mode, stage in stages.items()
            if word_writes is None or OUT_MODES[mode].word_writes == word_writes}


@dataclass(frozen=True)
class MatrixTile:
    """A matrix instruction's tile as the sequencer holds it: the instruction's fields, the
    META descriptor, and the sizes derived from both (registered in DESC, SHAPE and SIZES)."""

    fields: data.View  #: the MatFields of the instruction
    opcode: Signal
    wfmt: Signal
    sparsity: Signal
    group_log2: Signal
    p0: Signal  #: fusion parameters of the output mode
    p1: Signal
    bits: Signal  #: bits per packed code
    index_bits: Signal  #: bits per in-block index (0: dense)
    keep_log2: Signal  #: log2 of N of N:M
    block_log2: Signal  #: log2 of M of N:M
    groups: Signal  #: quantisation groups per row
    kept: Signal  #: kept weights per row
    wgt_pitch: Signal  #: words per weight row
    meta_pitch: Signal  #: words per row record
    qrow_pitch: Signal  #: words per quantized activation row
    kpg_log2: Signal  #: log2 of kept weights per group
    cover_log2: Signal  #: log2 of the dense columns one beat covers
    nbeats: Signal  #: beats per row
    pack: Signal  #: two tokens per pass
    step: Signal  #: words between result rows (MATMAT)

    @classmethod
    def signals(cls) -> "MatrixTile":
        return cls(
            fields=Signal(MatFields, name="mat"), opcode=Signal(Opcode, name="opcode"),
            wfmt=Signal(WeightFormat, name="wfmt"), sparsity=Signal(Sparsity, name="sparsity"),
            group_log2=Signal(3, name="group_log2"), p0=Signal(signed(8), name="p0"),
            p1=Signal(signed(8), name="p1"), bits=Signal(4, name="bits"),
            index_bits=Signal(3, name="index_bits"), keep_log2=Signal(2, name="keep_log2"),
            block_log2=Signal(3, name="block_log2"), groups=Signal(14, name="groups"),
            kept=Signal(15, name="kept"), wgt_pitch=Signal(16, name="wgt_pitch"),
            meta_pitch=Signal(16, name="meta_pitch"), qrow_pitch=Signal(16, name="qrow_pitch"),
            kpg_log2=Signal(4, name="kpg_log2"), cover_log2=Signal(4, name="cover_log2"),
            nbeats=Signal(15, name="nbeats"), pack=Signal(name="pack"),
            step=Signal(11, name="step"))


@dataclass(frozen=True)
class MatrixPass:
    """A pass of ``lanes`` output rows by one or two tokens: where it is, the beat being
    assembled (its head, its lanes, and the fill position) and the result being written."""

    pass_row: Signal  #: the pass's first output row
    pass_token: Signal  #: the pass's first token
    beat_no: Signal  #: the pass's next beat (cleared for the next pass)
    beat: Signal  #: the beat's head (engine_layouts)
    beat_lanes: list  #: the beat's lane operands, one Signal per lane (the record path)
    x_token: Signal  #: the token within the pass being read
    x_chunk: Signal  #: the 8-column chunk of the activation window
    fill_lane: Signal  #: the beat lane being filled
    code: Signal  #: the code within the beat
    slot: Signal  #: the scale slot
    half: Signal  #: CODES: indices after codes; SLOTS: aux after mant
    result_lane: Signal  #: the result being written: lane (within its collector way)
    result_token: Signal  #: token
    result_way: Signal  #: and way (``cfg.collector_ways``)

    @classmethod
    def signals(cls, cfg: AccelConfig, head_layout, lane_layout) -> "MatrixPass":
        lanes, n_chain = cfg.mv_rows, cfg.chain_len
        return cls(
            pass_row=Signal(15, name="pass_row"), pass_token=Signal(12, name="pass_token"),
            beat_no=Signal(15, name="beat_no"), beat=Signal(head_layout, name="beat"),
            beat_lanes=[Signal(lane_layout, name=f"beat_lane{i}")
                        for i in range(lanes if cfg.record_matrices else 0)],
            x_token=Signal(1, name="x_token"),
            x_chunk=Signal(range(window(n_chain) // 8 + 1), name="x_chunk"),
            fill_lane=Signal(range(lanes + 1), name="fill_lane"),
            code=Signal(range(n_chain + 1), name="code"),
            slot=Signal(range(n_chain // cfg.chain_group + 1), name="slot"),
            half=Signal(name="half"), result_lane=Signal(range(lanes + 1), name="result_lane"),
            result_token=Signal(1, name="result_token"),
            result_way=Signal(range(cfg.collector_ways + 1), name="result_way"))


@dataclass(frozen=True)
class StreamTile:
    """What a MATSTREAM adds to its :class:`MatrixTile`: where its streams start, how long
    they are, and where the sweep (a pair of tokens over every pass) and its results are."""

    streaming: Signal  #: the matrix instruction is a MATSTREAM
    page: Signal
    passes: Signal  #: engine passes over the tile's rows
    words: Signal  #: words of each channel's stream
    wait: Signal  #: cycles left for the stream length
    issued: Signal  #: per channel its streamer command is out, and the beats' (last bit)
    replay_beat: Signal  #: the next beat the replay reads
    replay_pass: Signal  #: passes the replay has read
    replay_valid: Signal  #: the replay memory's output holds a beat not yet taken
    result_row: Signal  #: the first row of the pass whose results are being written
    written: Signal  #: passes of the sweep written

    @classmethod
    def signals(cls, cfg: AccelConfig) -> "StreamTile":
        return cls(
            streaming=Signal(name="streaming"), page=Signal(STREAM_PAGE_BITS, name="page"),
            passes=Signal(16, name="passes"), words=Signal(WORD_COUNT_BITS, name="stream_words"),
            wait=Signal(range(StreamLength.LATENCY + 1), name="length_wait"),
            issued=Signal(cfg.mem_channels + 1, name="issued"),
            replay_beat=Signal(16, name="replay_beat"), replay_pass=Signal(16, name="replay_pass"),
            replay_valid=Signal(name="replay_valid"), result_row=Signal(16, name="result_row"),
            written=Signal(16, name="written"))


class ComputeUnit(wiring.Component):
    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        super().__init__({
            **unit_members(),
            "rd_act": Out(read_port(cfg)),  # activations, queries
            **({"rd_wgt": Out(read_port(cfg))} if cfg.record_matrices else {}),  # weight rows
            "rd_meta": Out(read_port(cfg)),  # descriptors and row records
            "rd_out": Out(read_port(cfg)),  # the destination (ADD)
            # whole ACT words: MATSTREAM's activation windows, PV's probabilities
            "rd_window": Out(read_port(cfg)),
            "rd_kv": Out(read_port(cfg)),  # ATTN: KV payload words
            "rd_kvh": Out(read_port(cfg)),  # ATTN: KV header words (the other bank's, ahead)
            "wr": Out(write_port(cfg)),
            **{f"stream{c}": Out(stream.Signature(command_layout(cfg.axi_addr_bits)))
               for c in range(cfg.mem_channels)},
            **{f"weights{c}": In(stream.Signature(cfg.axi_data_bits))
               for c in range(cfg.mem_channels)},
            "stream_error": In(1),
            "stream_abort": Out(1),
            "streams_idle": In(1),
        })
        w = cfg.axi_data_bytes
        self._bit_log2 = _log2(w) + 3  #: log2 of the bits in a buffer word
        self._depth = {b: cfg.buffer_words(b) for b in Buffer}
        self._dwords = L.descriptor_words(w)
        self._qhdr = L.qrow_header(w)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        lanes, n_chain, tap = cfg.mv_rows, cfg.chain_len, cfg.chain_group
        if n_chain < 8:
            raise ValueError(f"chain_len {n_chain}: the activation window is read 8 columns "
                             "at a time")
        channels = cfg.mem_channels
        in_code = index_in_code(cfg)
        preskewed = cfg.stream_skew != 0  # streams only: no skew registers in the lanes
        m.submodules.engine = engine = MatrixEngine(
            lanes, n_chain, tap, ways=cfg.collector_ways, index_in_code=in_code,
            preskewed=preskewed)
        beats = StreamBeats(channels, cfg.lanes_per_channel, n_chain, tap, cfg.axi_data_bits,
                            in_code, preskewed)
        m.submodules.stream_beats = ResetInserter(self.stream_abort)(beats)
        m.d.comb += engine.clear.eq(self.stream_abort)
        m.submodules.stream_length = length = StreamLength(cfg.lanes_per_channel, n_chain,
                                                           cfg.axi_data_bits, cfg.stream_skew)
        for c in range(channels):
            wiring.connect(m, wiring.flipped(getattr(self, f"weights{c}")), beats.words[c])
        fetch = {}
        for name in ("act", "wgt", "meta", "out") if cfg.record_matrices else ("act", "meta",
                                                                                "out"):
            # the residual's old values: each read (a value or a transfer's run) just
            # before its own write
            out = name == "out"
            fetch[name] = fx = FieldFetch(cfg, slot_snoop=out, run_bits=out * self._run_bits)
            m.submodules[f"fetch_{name}"] = fx
            wiring.connect(m, fx.port, wiring.flipped(getattr(self, f"rd_{name}")))
        snoop_writes(m, fetch.values(), self.wr)
        head_layout, lane_layout, _ = engine_layouts(lanes, n_chain, tap,
                                                     index_in_code=in_code)
        tile = MatrixTile.signals()
        pas = MatrixPass.signals(cfg, head_layout, lane_layout)
        st = StreamTile.signals(cfg)
        af = Signal(AttnFields)
        regs = Signal(IssueLayout["regs"].shape)
        old_beat = Signal()  # the field-serial path sends its beat
        written = Signal()  # a pass's last result is taken
        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += self.issue.ready.eq(1)
                with m.If(self.issue.valid):
                    word = self.issue.payload.word
                    m.d.sync += [tile.fields.eq(word.payload.mat), af.eq(word.payload.attn),
                                 regs.eq(self.issue.payload.regs),
                                 tile.opcode.eq(word.header.opcode), self.fault.eq(0),
                                 st.streaming.eq(word.header.opcode == Opcode.MATSTREAM),
                                 pas.result_lane.eq(0), pas.result_token.eq(0),
                                 pas.result_way.eq(0)]
                    for fx in fetch.values():
                        m.d.comb += fx.flush.eq(1)
                    # without the record path, MATVEC and MATMAT: the weights must stream
                    refused = Const(0) if cfg.record_matrices else \
                        (word.header.opcode == Opcode.MATVEC) \
                        | (word.header.opcode == Opcode.MATMAT)
                    with m.If(word.header.opcode == Opcode.ATTN):
                        m.next = "A_CHECK"
                    with m.Elif(refused):
                        self._fail(m, Fault.UNSUPPORTED)
                    with m.Else():
                        with m.If(word.header.opcode == Opcode.MATSTREAM):
                            self._stream_fields(m, tile, st, word.payload.stream)
                        m.next = "DESC"
            self._tile_states(m, tile, pas, st, fetch["meta"])
            self._activation_states(m, tile, pas, st, fetch["act"])
            if cfg.record_matrices:
                self._weight_states(m, tile, pas, fetch["wgt"], fetch["meta"], engine, old_beat)
                with m.State("RESULTS"), m.If(written):
                    self._next_pass(m, tile, pas)
            self._stream_states(m, tile, pas, st, beats, length,
                                self._replay_memory(m, head_layout))
            self._window_words(m, tile, pas, st)
            Attention(self, cfg).states(m, af, regs, fetch["act"])
            with m.State("FAULTED"):  # streams emptied, engine and beats cleared
                m.d.comb += self.stream_abort.eq(1)
                with m.If(self.streams_idle):
                    m.next = "COMPLETE"
            with m.State("COMPLETE"):
                m.d.comb += self.complete.eq(1)
                m.next = "IDLE"
        writing = st.streaming | (fsm.ongoing("RESULTS") if cfg.record_matrices else 0)
        m.d.comb += written.eq(self._results(m, tile, pas, st, engine, fetch["out"], writing))
        with m.If(st.streaming & written):
            m.d.sync += [st.result_row.eq(st.result_row + lanes), st.written.eq(st.written + 1)]
        self._engine_input(m, engine, beats, pas, st, old_beat)
        return m

    def _replay_memory(self, m, head_layout) -> Memory:
        """A MATSTREAM sweep's activation windows, written in the first pass and read by
        the others (:func:`replay_shape`)."""
        shape = head_layout["x"].shape
        _, depth = replay_shape(self.cfg)
        m.submodules.replay = mem = Memory(shape=shape, depth=depth, init=[])
        return mem

    @staticmethod
    def _stream_fields(m, tile: MatrixTile, st: StreamTile, sf):
        """A MATSTREAM's fields where the matrix states read them (its tile is MATMAT's
        with the weights elsewhere), and its page."""
        f = tile.fields
        m.d.sync += [f.eq(0), st.page.eq(sf.page),
                     *(getattr(f, name).eq(getattr(sf, name))
                       for name in ("k", "n", "m", "act_addr", "out_addr", "meta_addr",
                                    "out_pitch", "out_mode"))]

    def _engine_input(self, m, engine: MatrixEngine, beats: StreamBeats, pas: "MatrixPass",
                      st: StreamTile, old_beat):
        """The engine's one input: the streams' beats on MATSTREAM, else the field-serial
        path's assembled beat (without the record path, always the streams')."""
        streams = [engine.i.valid.eq(beats.beat.valid), engine.i.payload.eq(beats.beat.payload),
                   beats.beat.ready.eq(engine.i.ready),
                   *(p.eq(src) for p, src in zip(engine.lane_in, beats.lane, strict=True))]
        if not self.cfg.record_matrices:
            m.d.comb += [*streams, engine.hold.eq(beats.hold), engine.tail.eq(beats.tail)]
            return
        with m.If(st.streaming):
            m.d.comb += streams
        with m.Else():
            m.d.comb += [engine.i.valid.eq(old_beat), engine.i.payload.eq(pas.beat),
                         *(p.eq(bl) for p, bl in zip(engine.lane_in, pas.beat_lanes,
                                                     strict=True))]

    # -- helpers ---------------------------------------------------------------------------
    def _words(self, nbytes):
        return word_count(nbytes, self.cfg.axi_data_bytes)

    @staticmethod
    def _get(m, fx, buf, bit, when=1, run=0):
        """Request a field (while ``when``), or with ``run`` a run (``FieldFetch.run``);
        true when ``fx.value`` (``fx.run``) holds it."""
        m.d.comb += [fx.req.valid.eq(when), fx.req.payload.buf.eq(buf),
                     fx.req.payload.bit.eq(bit)]
        if fx.run_bits:
            m.d.comb += fx.req.payload.run.eq(run)
        return fx.req.ready

    def _fetch_unless(self, m, skip, fx, buf, bit):
        """A beat field: fetched, or left zero when ``skip``. Returns ``(done, fetched)`` for
        this cycle."""
        fetched = ~skip & self._get(m, fx, buf, bit, ~skip)
        return skip | fetched, fetched

    def _fail(self, m, code):
        m.d.sync += self.fault.eq(code)
        m.next = "FAULTED"

    # -- the tile ------------------------------------------------------------------------
    def _tile_states(self, m, tile: MatrixTile, pas: MatrixPass, st: StreamTile,
                     fm: FieldFetch):
        """DESC, SHAPE, SIZES, CHECK: decode the descriptor, derive the tile's sizes, and
        fault (or finish, for an empty tile) before the first pass (MATSTREAM: before its
        stream length)."""
        f, lb, dwords, depth = tile.fields, self._bit_log2, self._dwords, self._depth
        words, n_chain, tap = self._words, self.cfg.chain_len, self.cfg.chain_group
        lanes, ln = self.cfg.mv_rows, _log2(n_chain)
        with m.State("DESC"):
            outside = f.meta_addr + dwords > depth[Buffer.META]
            fetched = self._get(m, fm, Buffer.META, f.meta_addr << lb, ~outside)
            with m.If(outside):
                self._fail(m, Fault.RANGE)
            with m.Elif(fetched):
                desc = view(L.TileDescriptor, fm.value)
                ok = (desc.wfmt < len(WeightFormat)) & (desc.sparsity < len(Sparsity)) \
                    & (desc.group_log2 >= L.GROUP_LOG2_MIN) \
                    & (desc.group_log2 <= L.GROUP_LOG2_MAX) \
                    & (desc.reserved0 == 0) & (desc.reserved1 == 0)
                m.d.sync += [tile.wfmt.eq(desc.wfmt), tile.sparsity.eq(desc.sparsity),
                             tile.group_log2.eq(desc.group_log2), tile.p0.eq(desc.p0),
                             tile.p1.eq(desc.p1)]
                with m.If(~ok):
                    self._fail(m, Fault.PARAM)
                with m.Else():
                    m.next = "SHAPE"
        with m.State("SHAPE"):
            with m.Switch(tile.wfmt):
                for fmt, nbits in L.FORMAT_BITS.items():
                    with m.Case(fmt):
                        m.d.sync += tile.bits.eq(nbits)
            with m.Switch(tile.sparsity):
                for sp in Sparsity:
                    log_keep, log_block, index_bits = sparse_shape(sp)
                    with m.Case(sp):
                        m.d.sync += [tile.keep_log2.eq(log_keep), tile.block_log2.eq(log_block),
                                     tile.index_bits.eq(index_bits)]
            m.d.sync += [tile.groups.eq(f.k >> tile.group_log2),
                         tile.pack.eq(tile.wfmt != WeightFormat.INT8),
                         tile.step.eq(Mux(tile.opcode == Opcode.MATVEC, 0, f.out_pitch)),
                         tile.qrow_pitch.eq(self._qhdr + words(L.element_bit(f.k, L.QCODE) >> 3))]
            m.next = "SIZES"
        with m.State("SIZES"):
            kept_now = (f.k >> tile.block_log2) << tile.keep_log2
            aux_groups = Mux(tile.wfmt == WeightFormat.INT8, 0, tile.groups)
            m.d.sync += [
                tile.kept.eq(kept_now),
                tile.wgt_pitch.eq(words((kept_now * (tile.bits + tile.index_bits) + 7) >> 3)),
                tile.meta_pitch.eq(words(L.row_aux_bit(tile.groups, aux_groups) >> 3)),
                tile.kpg_log2.eq(tile.group_log2 + tile.keep_log2 - tile.block_log2),
                tile.cover_log2.eq(ln + tile.block_log2 - tile.keep_log2),
                tile.nbeats.eq((kept_now + n_chain - 1) >> ln),
                st.passes.eq((f.n + lanes - 1) // lanes)]
            m.next = "CHECK"
        with m.State("CHECK"):
            misfit = ((f.k & ((Const(1, 9) << tile.group_log2) - 1)) != 0) | \
                ((f.k & ((Const(1, 17) << tile.block_log2) - 1)) != 0)
            work = (f.n != 0) & (f.m != 0)
            weights_off = (f.meta_addr + dwords + f.n * tile.meta_pitch > depth[Buffer.META]) \
                | (f.wgt_addr + f.n * tile.wgt_pitch > depth[Buffer.WGT])
            _, _, _, held = geometry_tables(m, n_chain, self.cfg.axi_data_bits, tile.wfmt,
                                            tile.sparsity)
            entries_log2 = _log2(L.stream_scale_entries(self.cfg.axi_data_bits))
            # a beat's groups must fit a SCALES word, the format a stream's word
            unstreamable = ~held | (tile.kpg_log2 + entries_log2 < ln)
            off_end = work & (
                (~st.streaming & weights_off)
                | (f.act_addr + f.m * tile.qrow_pitch > depth[Buffer.ACT])
                | (f.out_addr + (f.m - 1) * tile.step + words(L.element_bit(f.n, L.WIDE) >> 3)
                   > depth[Buffer.ACT]))
            m.d.sync += [pas.pass_row.eq(0), pas.pass_token.eq(0)]
            with m.If(misfit):
                self._fail(m, Fault.PARAM)
            with m.Elif(off_end):
                self._fail(m, Fault.RANGE)
            with m.Elif(~work):
                m.next = "COMPLETE"
            with m.Elif((tile.kpg_log2 < _log2(tap)) | (tile.group_log2 < tile.block_log2)
                        | (f.k == 0) | (st.streaming & unstreamable)):
                self._fail(m, Fault.UNSUPPORTED)
            with m.Elif(st.streaming):
                m.d.sync += st.wait.eq(StreamLength.LATENCY)
                m.next = "STREAM_LENGTH"
            with m.Else():
                m.d.sync += pas.beat_no.eq(0)
                m.next = "CLEAR"

    # -- one beat ------------------------------------------------------------------------
    def _activation_states(self, m, tile: MatrixTile, pas: MatrixPass, st: StreamTile,
                           fa: FieldFetch):
        """CLEAR, HEADER, X: start a beat as ``matrix_engine.beats`` schedules it, with the
        tokens' scales and their activation window (then its weights, or on MATSTREAM the
        beat goes to the streams' beats; X is the record path's)."""
        f, lb, qhdr = tile.fields, self._bit_log2, self._qhdr
        n_chain = self.cfg.chain_len
        ln = _log2(n_chain)
        beat, x_token, x_chunk = pas.beat, pas.x_token, pas.x_chunk
        first_kept = pas.beat_no << ln  # first kept code of the beat
        last_beat = pas.beat_no + 1 == tile.nbeats
        token = pas.pass_token + x_token
        token_ok = (token < f.m) & (~x_token | tile.pack)
        qrow = f.act_addr + token * tile.qrow_pitch
        with m.State("CLEAR"):
            m.d.sync += [*(bl.eq(0) for bl in pas.beat_lanes),
                         beat.eq(0), beat.fmt.eq(tile.wfmt), beat.sparsity.eq(tile.sparsity),
                         beat.row_end.eq(last_beat),
                         beat.group_end.eq(last_beat | (((first_kept + n_chain) & (
                             (Const(1, 16) << tile.kpg_log2) - 1)) == 0)),
                         x_token.eq(0), x_chunk.eq(0), pas.fill_lane.eq(0), pas.code.eq(0),
                         pas.slot.eq(0), pas.half.eq(0)]
            m.next = "HEADER"
        with m.State("HEADER"):  # the tokens' scales
            fetched = self._get(m, fa, Buffer.ACT, qrow << lb, token_ok)
            with m.If(~token_ok):
                m.d.sync += [x_token.eq(0)]
                self._to_window(m, st)
            with m.Elif(fetched):
                scale = view(L.QRowHeader, fa.value)
                m.d.sync += [beat.xm[x_token].eq(scale.m), beat.xe[x_token].eq(scale.e),
                             x_token.eq(1)]
                with m.If(x_token == 1):
                    m.d.sync += x_token.eq(0)
                    self._to_window(m, st)
        if self.cfg.record_matrices:  # the record path's window
            with m.State("X"):  # the activation window, 8 columns per read
                col = (pas.beat_no << tile.cover_log2) + (x_chunk << 3)
                chunks = (Const(1, 8) << tile.cover_log2) >> 3
                keep = Cat(*(Mux(col + i < f.k, 0xFF, 0) for i in range(8)))
                done, fetched = self._fetch_unless(
                    m, ~token_ok | (col >= f.k), fa, Buffer.ACT,
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

    def _to_window(self, m, st: StreamTile):
        """From HEADER to the beat's window: 8 columns per field fetch (X), or on MATSTREAM
        whole words (STREAM_X)."""
        if not self.cfg.record_matrices:
            m.next = "STREAM_X"
            return
        with m.If(st.streaming):
            m.next = "STREAM_X"
        with m.Else():
            m.next = "X"

    def _window_words(self, m, tile: MatrixTile, pas: MatrixPass, st: StreamTile):
        """STREAM_X: a MATSTREAM beat's activation window of each token read from ACT as
        whole words, a read per cycle (``rd_window``: the word comes a cycle after its
        grant), the columns past K left zero; then the beat goes to the stream beats."""
        f, cfg, port = tile.fields, self.cfg, self.rd_window
        w, wl = cfg.axi_data_bytes, _log2(cfg.axi_data_bytes)
        beat = pas.beat
        token, word = pas.x_token, pas.x_chunk  # the next read
        pending = Signal(name="window_pending")
        at = Signal(data.StructLayout({"token": 1, "word": len(word)}), name="window_at")
        col0 = pas.beat_no << tile.cover_log2  # the beat's first column
        words = Mux(tile.cover_log2 > wl,
                    Const(1, len(word) + 1) << (tile.cover_log2 - wl).as_unsigned(), 1)
        tok = pas.pass_token + token
        token_ok = (tok < f.m) & (~token | tile.pack)
        qrow = f.act_addr + tok * tile.qrow_pitch + self._qhdr
        col = col0 + (word << wl)
        # the word that arrives: its bytes from the beat's first column, past K zero
        got_col = col0 + (at.word << wl)
        shifted = port.data >> ((col0 & (w - 1)) << 3)
        keep = Cat(*(Mux(((at.word << wl) + i < (Const(1, 16) << tile.cover_log2))
                         & (got_col + i < f.k), 0xFF, 0) for i in range(w)))
        done = Signal(name="window_done")  # every word asked for
        # the sweep's second token, if it has one: else the first token's words end the window
        second_ok = (pas.pass_token + 1 < f.m) & tile.pack
        with m.State("STREAM_X"):
            with m.If(pending):
                m.d.sync += beat.x[at.token].as_value().word_select(at.word, 8 * w).eq(
                    shifted & keep)
            last_word = word + 1 == words
            skip = ~token_ok | (col >= f.k)  # no read: the word is zero
            m.d.comb += [port.buf.eq(Buffer.ACT), port.addr.eq(qrow + (col >> wl)),
                         port.en.eq(~done & ~skip)]
            m.d.sync += pending.eq(0)
            with m.If(done):  # the last word is stored as the state is left
                m.d.sync += [done.eq(0), token.eq(0), word.eq(0)]
                m.next = "STREAM_ACT"
            with m.Elif(~token_ok):  # an absent token: no words
                m.d.sync += [token.eq(1), word.eq(0), done.eq(token == 1)]
            with m.Elif(skip | port.grant):
                m.d.sync += [pending.eq(~skip), at.token.eq(token), at.word.eq(word),
                             word.eq(word + 1)]
                with m.If(skip):  # past K: cleared (the window is not, between beats)
                    m.d.sync += beat.x[token].as_value().word_select(word, 8 * w).eq(0)
                with m.If(last_word):
                    m.d.sync += [token.eq(1), word.eq(0), done.eq((token == 1) | ~second_ok)]

    def _weight_states(self, m, tile: MatrixTile, pas: MatrixPass, fw: FieldFetch,
                       fm: FieldFetch, engine: MatrixEngine, old_beat):
        """CODES, SLOTS, SHIFTS, SEND: each lane's codes and indices, slot scales and type
        ids, and row exponent; then the beat goes to the engine (after the pass's last beat,
        RESULTS)."""
        f, lb = tile.fields, self._bit_log2
        lanes, n_chain, tap = self.cfg.mv_rows, self.cfg.chain_len, self.cfg.chain_group
        ln, slots = _log2(n_chain), n_chain // tap
        fill_lane, code, slot, half = pas.fill_lane, pas.code, pas.slot, pas.half

        def set_lane(update):
            """``update(fields)`` on the beat lane ``fill_lane``."""
            with m.Switch(fill_lane):
                for i, fields in enumerate(pas.beat_lanes):
                    with m.Case(i):
                        m.d.sync += update(fields)

        first_kept = pas.beat_no << ln  # first kept code of the beat
        last_beat = pas.beat_no + 1 == tile.nbeats
        row = pas.pass_row + fill_lane
        row_ok = row < f.n
        wrow = f.wgt_addr + row * tile.wgt_pitch
        mrow = f.meta_addr + self._dwords + row * tile.meta_pitch
        with m.State("CODES"):  # packed codes, then (sparse) their in-block indices
            q = first_kept + code
            bits, index_bits = tile.bits, tile.index_bits
            done, fetched = self._fetch_unless(m, ~row_ok | (q >= tile.kept), fw, Buffer.WGT, (
                wrow << lb) + Mux(half, tile.kept * bits + q * index_bits, q * bits))
            with m.If(fetched):
                with m.If(half):
                    set_lane(lambda r: r.idx[code].eq(
                        fw.value[:MAX_INDEX_BITS] & ((Const(1, 5) << index_bits) - 1)))
                with m.Else():
                    set_lane(lambda r: r.codes[code].eq(
                        fw.value[:MAX_CODE_BITS] & ((Const(1, 9) << bits) - 1)))
            with m.If(done):
                m.d.sync += code.eq(code + 1)
                with m.If(code == n_chain - 1):
                    m.d.sync += [code.eq(0), half.eq(~half & (index_bits != 0))]
                    with m.If(half | (index_bits == 0)):
                        m.d.sync += [half.eq(0), fill_lane.eq(fill_lane + 1)]
                        with m.If(fill_lane == lanes - 1):
                            m.d.sync += fill_lane.eq(0)
                            m.next = "SLOTS"
        with m.State("SLOTS"):  # per tap slot: the group's scale, then its type id
            at = first_kept + slot * tap
            groups, kpg_log2 = tile.groups, tile.kpg_log2
            g = Mux((at >> kpg_log2) >= groups, groups - 1, at >> kpg_log2)
            skip = ~row_ok | (at >= tile.kept) | (half & (tile.wfmt == WeightFormat.INT8))
            done, fetched = self._fetch_unless(m, skip, fm, Buffer.META, (mrow << lb) + Mux(
                half, L.row_aux_bit(groups, g), L.row_mant_bit(g)))
            with m.If(fetched):
                with m.If(half):
                    set_lane(lambda r: r.aux[slot].eq(fm.value[:L.AUX.width]))
                with m.Else():
                    set_lane(lambda r: r.mant[slot].eq(fm.value[:L.MANT.width]))
            with m.If(done):
                m.d.sync += half.eq(~half)
                with m.If(half):
                    m.d.sync += slot.eq(slot + 1)
                    with m.If(slot == slots - 1):
                        m.d.sync += [slot.eq(0), fill_lane.eq(fill_lane + 1)]
                        with m.If(fill_lane == lanes - 1):
                            m.d.sync += fill_lane.eq(0)
                            m.next = "SHIFTS"
        with m.State("SHIFTS"):  # the rows' exponents
            done, fetched = self._fetch_unless(m, ~row_ok, fm, Buffer.META, mrow << lb)
            with m.If(fetched):
                set_lane(lambda r: r.shift.eq(view(L.RowRecordHead, fm.value).shift))
            with m.If(done):
                m.d.sync += fill_lane.eq(fill_lane + 1)
                with m.If(fill_lane == lanes - 1):
                    m.d.sync += fill_lane.eq(0)
                    m.next = "SEND"
        with m.State("SEND"):
            m.d.comb += old_beat.eq(1)
            with m.If(engine.i.ready):
                m.d.sync += pas.beat_no.eq(pas.beat_no + 1)
                with m.If(last_beat):
                    m.next = "RESULTS"
                with m.Else():
                    m.next = "CLEAR"

    # -- the pass's results --------------------------------------------------------------
    @property
    def _run_bits(self) -> int:
        """A collector transfer's results side by side: a run of a buffer word."""
        return self.cfg.collector_ways * L.WIDE.width

    def _results(self, m, tile: MatrixTile, pas: MatrixPass, st: StreamTile,
                 engine: MatrixEngine, fetch_out: FieldFetch, active):
        """While ``active``, write the results as the engine gives them: each transfer one
        per collector way (``cfg.lanes_per_way`` lanes: whole channels' rows), taken lane by
        lane, token 0 then 1. A streamed tile's transfer is consecutive rows
        (``layout.pass_row``), written as one run where the output mode has ``word_writes``,
        else ``cfg.elementwise_run`` results a cycle (one result stage each); a field-serial
        tile's ways are ``lanes_per_way`` rows apart, written way by way. The first result
        past the tile's rows (or an absent token: every later way's is too) ends its
        transfer. Returns what is true in the cycle the pass's last result is taken."""
        f, lb = tile.fields, self._bit_log2
        per, ways = self.cfg.lanes_per_way, self.cfg.collector_ways
        lane, token, way = pas.result_lane, pas.result_token, pas.result_way
        first = Mux(st.streaming, st.result_row, pas.pass_row)
        run_row = first + lane * ways  # a streamed transfer's first row
        tok = pas.pass_token + token
        tok_ok = (tok < f.m) & (~token | tile.pack)
        dst = f.out_addr + tok * tile.step
        residual = one_of(f.out_mode, [mode for mode, spec in OUT_MODES.items()
                                       if spec.operands == "residual"])
        word_writes = one_of(f.out_mode, [mode for mode, spec in OUT_MODES.items()
                                          if spec.word_writes])
        ready = active & engine.o.valid
        transfer_done = Signal()
        with m.If(st.streaming & word_writes):
            run_ok = (run_row < f.n) & tok_ok
            want_old = ready & run_ok & residual
            have_old = self._get(m, fetch_out, Buffer.ACT, (dst << lb) + L.element_bit(
                run_row, L.WIDE), want_old, run=1) | ~want_old
            values = self._run_values(m, tile, engine, fetch_out.run)
            count = Mux(f.n - run_row >= ways, ways, f.n - run_row)
            written = Signal()
            with m.If(ready & run_ok & have_old):
                m.d.comb += written.eq(self._write_wides(m, dst, run_row, values, count))
            m.d.comb += transfer_done.eq(ready & (written | ~run_ok))
        with m.Elif(st.streaming):  # `way` counts the transfer's runs
            k = self.cfg.elementwise_run
            at = run_row + way * k
            at_ok = (at < f.n) & tok_ok
            values = [self._result_stage(m, tile, engine.o.payload[way * k + j].y, None,
                                         word_writes=False) for j in range(k)]
            count = Mux(f.n - at >= k, k, f.n - at)
            written = Signal()
            with m.If(ready & at_ok):
                m.d.comb += written.eq(self._write_wides(m, dst, at, values, count))
            with m.If(ready & written):
                m.d.sync += way.eq(way + 1)
            m.d.comb += transfer_done.eq(ready & (~at_ok | written & (
                (way == ways // k - 1) | (at + k >= f.n))))
        if self.cfg.record_matrices:
            with m.Else():
                row = first + way * per + lane
                ok = (row < f.n) & tok_ok
                value = self._result_stage(m, tile, engine.o.payload[way].y,
                                           fetch_out.value[:L.WIDE.width].as_signed())
                needs_old = ready & ok & residual
                have_old = self._get(m, fetch_out, Buffer.ACT, (dst << lb) + L.element_bit(
                    row, L.WIDE), needs_old) | ~needs_old
                written = Signal()
                with m.If(ready & ok & have_old):
                    m.d.comb += written.eq(self._write_wide(m, dst, row, value))
                with m.If(ready & (written | ~ok)):
                    m.d.sync += way.eq(way + 1)
                    m.d.comb += transfer_done.eq((way == ways - 1) | ~ok)
        pass_written = Signal()
        with m.If(transfer_done):
            m.d.comb += engine.o.ready.eq(1)
            m.d.sync += [way.eq(0), token.eq(~token)]
            with m.If(token == 1):
                m.d.sync += lane.eq(lane + 1)
                with m.If(lane == per - 1):
                    m.d.sync += lane.eq(0)
                    m.d.comb += pass_written.eq(1)
        return pass_written

    @staticmethod
    def _result_stage(m, tile: MatrixTile, y, old, word_writes: bool | None = None) -> Signal:
        """``y`` (``old`` the destination's value) through the tile's output mode, one result
        stage of the modes :func:`fused_results` builds for ``word_writes``."""
        value = Signal(signed(L.WIDE.width))
        with m.Switch(tile.fields.out_mode):
            for mode, result in fused_results(m, y, old, tile.p0, tile.p1,
                                              word_writes).items():
                with m.Case(mode):
                    m.d.comb += value.eq(result)
        return value

    def _run_values(self, m, tile: MatrixTile, engine: MatrixEngine, old_run) -> list:
        """A transfer's results, one per way, through the output modes with
        ``word_writes`` (each way its own result stage), ``old_run`` the old values."""
        width = L.WIDE.width
        return [self._result_stage(m, tile, engine.o.payload[w].y,
                                   old_run[w * width:(w + 1) * width].as_signed(),
                                   word_writes=True)
                for w in range(self.cfg.collector_ways)]

    def _next_pass(self, m, tile: MatrixTile, pas: MatrixPass):
        """After a field-serial pass: the next pair of tokens, the next rows, or the end."""
        f, lanes = tile.fields, self.cfg.mv_rows
        next_token = pas.pass_token + Mux(tile.pack, 2, 1)
        m.d.sync += [pas.beat_no.eq(0), pas.pass_token.eq(next_token)]
        m.next = "CLEAR"
        with m.If(next_token >= f.m):
            m.d.sync += [pas.pass_token.eq(0), pas.pass_row.eq(pas.pass_row + lanes)]
            with m.If(pas.pass_row + lanes >= f.n):
                m.next = "COMPLETE"

    # -- MATSTREAM -------------------------------------------------------------------------
    def _stream_states(self, m, tile: MatrixTile, pas: MatrixPass, st: StreamTile,
                       beats: StreamBeats, length: StreamLength, replay: Memory):
        """STREAM_LENGTH, _SWEEP, _ACT, _REPLAY, _DRAIN: the streams' length; per sweep (a
        pair of tokens) every channel's streamer and the beats started, the first pass's
        beats with the activation windows read by STREAM_X (and kept; the sweep's first beat
        goes through CLEAR and HEADER for the tokens' scales), the other passes' from the
        replay memory, and the sweep's results written."""
        f, channels = tile.fields, self.cfg.mem_channels
        beats_bits = command_layout(self.cfg.axi_addr_bits)["beats"].width
        with m.State("STREAM_LENGTH"):  # the tile's registers held while the length is computed
            m.d.comb += [length.i.fmt.eq(tile.wfmt), length.i.sparsity.eq(tile.sparsity),
                         length.i.group_log2.eq(tile.group_log2),
                         length.i.beats.eq(tile.nbeats), length.i.groups.eq(tile.groups),
                         length.i.passes.eq(st.passes)]
            m.d.sync += [st.wait.eq(st.wait - 1), st.words.eq(length.words)]
            with m.If(st.wait == 0):
                with m.If(~length.fits | (length.words >> beats_bits != 0)):
                    self._fail(m, Fault.RANGE)  # longer than one streamer command
                with m.Else():
                    m.d.sync += [pas.pass_token.eq(0), st.issued.eq(0)]
                    m.next = "STREAM_SWEEP"
        with m.State("STREAM_SWEEP"):  # each channel's stream and the beats, once per sweep
            cmd = beats.cmd.payload
            m.d.comb += [beats.cmd.valid.eq(~st.issued[channels]), cmd.fmt.eq(tile.wfmt),
                         cmd.sparsity.eq(tile.sparsity), cmd.group_log2.eq(tile.group_log2),
                         cmd.beats.eq(tile.nbeats), cmd.passes.eq(st.passes),
                         cmd.words.eq(st.words)]
            with m.If(beats.cmd.ready):
                m.d.sync += st.issued[channels].eq(1)
            for c in range(channels):
                port = getattr(self, f"stream{c}")
                m.d.comb += [port.valid.eq(~st.issued[c]),
                             port.payload.addr.eq(st.page * STREAM_PAGE_BYTES),
                             port.payload.beats.eq(st.words)]
                with m.If(port.ready):
                    m.d.sync += st.issued[c].eq(1)
            with m.If(st.issued.all()):
                m.d.sync += [st.issued.eq(0), st.result_row.eq(0), st.written.eq(0),
                             pas.beat_no.eq(0)]
                m.next = "CLEAR"
        act = beats.act.payload
        write, read = replay.write_port(), replay.read_port()
        with m.State("STREAM_ACT"):  # the first pass: the window just read, and kept
            m.d.comb += [beats.act.valid.eq(1), act.x.eq(pas.beat.x), act.xm.eq(pas.beat.xm),
                         act.xe.eq(pas.beat.xe), write.addr.eq(pas.beat_no),
                         write.data.eq(pas.beat.x), write.en.eq(beats.act.ready)]
            with m.If(self.stream_error):
                self._fail(m, Fault.BUS)
            with m.Elif(beats.act.ready):
                # the next beat's window: the sweep's scales and cleared window stay
                m.d.sync += pas.beat_no.eq(pas.beat_no + 1)
                m.next = "STREAM_X"
                with m.If(pas.beat_no + 1 == tile.nbeats):
                    m.d.sync += [st.replay_beat.eq(0), st.replay_pass.eq(1),
                                 st.replay_valid.eq(0)]
                    m.next = "STREAM_REPLAY"
                    with m.If(st.passes == 1):
                        m.next = "STREAM_DRAIN"
        with m.State("STREAM_REPLAY"):  # the other passes, a beat per cycle
            more = st.replay_pass != st.passes
            taken = beats.act.ready
            advance = more & (~st.replay_valid | taken)
            m.d.comb += [beats.act.valid.eq(st.replay_valid), act.x.eq(read.data),
                         act.xm.eq(pas.beat.xm), act.xe.eq(pas.beat.xe),
                         read.addr.eq(st.replay_beat), read.en.eq(advance)]
            with m.If(advance):
                m.d.sync += [st.replay_valid.eq(1), st.replay_beat.eq(st.replay_beat + 1)]
                with m.If(st.replay_beat + 1 == tile.nbeats):
                    m.d.sync += [st.replay_beat.eq(0), st.replay_pass.eq(st.replay_pass + 1)]
            with m.Elif(taken):
                m.d.sync += st.replay_valid.eq(0)
            with m.If(self.stream_error):
                self._fail(m, Fault.BUS)
            with m.Elif(~more & (~st.replay_valid | taken)):
                m.next = "STREAM_DRAIN"
        with m.State("STREAM_DRAIN"):  # the sweep's last results
            next_token = pas.pass_token + Mux(tile.pack, 2, 1)
            with m.If(self.stream_error):
                self._fail(m, Fault.BUS)
            with m.Elif((st.written == st.passes) & ~beats.busy):
                m.d.sync += pas.pass_token.eq(next_token)
                m.next = "STREAM_SWEEP"
                with m.If(next_token >= f.m):
                    m.next = "COMPLETE"

    def _write_wide(self, m, base, index, value):
        """Request the write of INT32 element ``index`` of the wide row at word ``base``
        (byte enables for its four bytes); true when granted."""
        return self._write_wides(m, base, index, [value], 1)

    def _write_wides(self, m, base, index, values: list, count):
        """Request the write of the first ``count`` of ``values``, INT32 elements ``index``
        on of the wide row at word ``base`` (``index`` a multiple of ``len(values)``, which
        a word holds); true when granted."""
        w = self.cfg.axi_data_bytes
        size = L.WIDE.width // 8
        per_word = w // size
        n = len(values)
        if per_word % n:
            raise ValueError(f"{n} INT32 elements do not divide a {w}-byte word")
        run = Cat(*(v.as_unsigned()[:L.WIDE.width] for v in values))
        ones = Cat(*(Mux(k < count, (1 << size) - 1, 0) for k in range(n)))
        m.d.comb += [self.wr.en.eq(1), self.wr.buf.eq(Buffer.ACT),
                     self.wr.addr.eq(base + (index >> _log2(per_word)))]
        if n == per_word:  # a whole word
            m.d.comb += [self.wr.data.eq(run), self.wr.mask.eq(ones)]
        else:  # the run's place in the word
            lane = Cat(Const(0, _log2(n)), index[_log2(n):_log2(per_word)])
            m.d.comb += [self.wr.data.eq(run << L.element_bit(lane, L.WIDE)),
                         self.wr.mask.eq(ones << (lane * size))]
        return self.wr.grant
