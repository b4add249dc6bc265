"""Cycles of the sequencers as built: the COMPUTE unit's MATVEC, MATMAT, MATSTREAM and ATTN
(``hw/compute_unit.py``, ``hw/attention.py``) and the SFU's instructions
(``hw/sfu_unit.py``), state by state, with the field fetches' two-word caches.

The sequencers read every record field through a :class:`hw.buffer_access.FieldFetch`: a
field starting in the word the fetch holds costs one cycle; one starting in the next word
costs four (the fetch moves on by one word), any other five (two words read). So the cycles
are the fields' count plus the refills, and the refills follow from the fields' bit addresses
alone: :class:`Fetch` keeps the word each fetch holds and prices walks of equally spaced
fields in closed form. The SFU's fetches read ahead (a beat's operands are runs): a run in
the next word waits only for what is left of the read behind the walk (:meth:`Fetch.ahead`).
A matrix pass repeats for every row block and token pair with the same refills as long as
the fetches enter it in the same place relative to its records, so passes are priced once
per such entry (this is what makes LLaMA-sized tiles quick).
Attention reads its KV rows as whole words, a word a cycle, so its keys are priced in
closed form.

Checked against the RTL's busy counters cycle for cycle (``tests/test_cycle_model.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, wraps

from llmacc import isa
from llmacc import layout as L
from llmacc.config import AccelConfig
from llmacc.isa import OutMode, WeightFormat
from llmacc.kernel import RESULT_STAGES, chain_latency
from sim.cycle_model import READ_LATENCY

HIT, WALK, COLD = 0, 3, 4  #: extra cycles of a field in the held word, the next, elsewhere
#: A read-ahead fetch's runs (``FieldFetch(read_ahead=True)``): the cycles that reading the
#: word after the held one takes once the fetch has moved on (asked for as it moves on, taken
#: the cycle after), and the extra cycles of a run elsewhere (two words read, the run served
#: with the second).
BEHIND, RUN_COLD = 1, 3
#: From issue to the first descriptor request, and the COMPLETE state.
MATRIX_SETUP = 3  #: SHAPE, SIZES, CHECK (the descriptor's fetch on top)
COMPLETE = 1
#: From the pass's last beat entering the engine to its first result at the output: the
#: chain's latency, the lanes' row latch and the result collector's stages.
ENGINE_DRAIN_EXTRA = RESULT_STAGES
#: MATSTREAM: the stream length's wait (``StreamLength.LATENCY`` and the state's last
#: cycle), a sweep's start (the commands, then the state that sees them all taken), and a
#: beat's hand-over to the stream beats after its activation window
STREAM_LENGTH = 4 + 1
STREAM_SWEEP = 2
STREAM_ACT = 1
#: From a sweep's streamer commands to its first beat's words in the lanes, past the read
#: latency and the words the first beat needs: the streamer's burst issue and the FIFO and
#: unpacker registers
STREAM_FIRST_EXTRA = 8
#: From the first pass's last beat to the replay memory's first: the state's first read
REPLAY_START = 1


class Fetch:
    """The word a FieldFetch holds (``None``: nothing, as after a flush or a snooped
    write). A slot-snooping fetch (``slots``) keeps its words through the unit's writes and
    forgets them only when a field's first 32 bits fall on a slot written since
    (``stale``: absolute slot numbers, ``bit // L.SLOT_BITS``)."""

    def __init__(self, word_bits: int, slots: bool = False):
        self.word_bits = word_bits
        self.slots = slots
        self.held: int | None = None
        self.stale: frozenset[int] = frozenset()
        #: read-ahead: the cycles a run in the word after the held one would wait now
        self.behind = 0

    def _entry(self, word: int) -> int:
        if self.held == word:
            return HIT
        return WALK if self.held is not None and self.held + 1 == word else COLD

    def walk(self, bit: int, stride: int, count: int) -> int:
        """Cycles of ``count`` fields at ``bit``, ``bit + stride``, ... (``stride`` at most
        a word): one each, a step on per new word, and the entry."""
        if count <= 0:
            return 0
        first = bit // self.word_bits
        last = (bit + (count - 1) * stride) // self.word_bits
        entry = self._entry(first)
        if self.stale:  # keep the stale slots of the words still held
            per_word = self.word_bits // L.SLOT_BITS
            kept = range(last * per_word, (last + 2) * per_word)
            self.stale = (frozenset(x for x in self.stale if x in kept) if entry != COLD
                          else frozenset())
        self.held, self.behind = last, 0
        return count + entry + WALK * (last - first)

    def one(self, bit: int) -> int:
        """A field at ``bit``: a hit while the slots under its first 32 bits are as read."""
        slot = bit // L.SLOT_BITS
        return self._read(bit, {slot, slot + 1} if bit % L.SLOT_BITS else {slot})

    def run(self, bit: int, slots: int) -> int:
        """A run of ``slots`` whole 32-bit slots from ``bit`` (in one word): a hit while none
        of them was written since it was read."""
        first = bit // L.SLOT_BITS
        return self._read(bit, set(range(first, first + slots)))

    def ahead(self, bit: int, count: int = 1, stride: int = 0) -> int:
        """Cycles of ``count`` runs at ``bit``, ``bit + stride``, ... (``stride`` at most a
        word) from a read-ahead fetch, each asked for as soon as the one before is served: a
        cycle each, a run in the word after the held one waits for it (:data:`BEHIND` after
        the fetch moved on), one elsewhere reads two words (:data:`RUN_COLD`) once the read
        behind is done."""
        cycles = 0
        i = 0
        while i < count:
            word = (bit + i * stride) // self.word_bits
            here = count - i if stride == 0 else min(
                count - i, -(-((word + 1) * self.word_bits - bit - i * stride) // stride))
            wait, behind = {HIT: (0, self.behind), WALK: (self.behind, BEHIND + 1),
                            COLD: (self.behind + RUN_COLD, 1)}[self._entry(word)]
            self.held, self.stale = word, frozenset()
            cycles += wait + here
            self.behind = max(0, behind - here)
            i += here
        return cycles

    def idle(self, cycles: int) -> None:
        """``cycles`` pass without a request (a read-ahead fetch's read behind goes on)."""
        self.behind = max(0, self.behind - cycles)

    def _read(self, bit: int, under: set[int]) -> int:
        """Cycles of a read at ``bit`` whose slots ``under`` must be as read."""
        if self.stale & under:
            self.held, self.stale = None, frozenset()  # read again
        return self.walk(bit, 0, 1)

    def written(self, word: int, bit: int = 0) -> None:
        """The unit wrote ``word`` (the slot at ``bit``, a slot-snooping fetch's concern): a
        fetch holding it (as its first or second word) forgets it, or the slot."""
        if self.held is None or word not in (self.held, self.held + 1):
            return
        if self.slots:
            self.stale |= {bit // L.SLOT_BITS}
        else:
            self.held = None

    def state(self) -> tuple:
        return self.held, self.stale, self.behind

    def restore(self, state: tuple) -> None:
        self.held, self.stale, self.behind = state


def _relative(fetches: tuple[Fetch, ...], bases: tuple[int, ...]) -> tuple:
    """Each fetch's held word and stale slots relative to ``bases`` (the words its records
    start at)."""
    out = []
    for f, b in zip(fetches, bases, strict=True):
        origin = b * (f.word_bits // L.SLOT_BITS)
        out.append(None if f.held is None else
                   (f.held - b, frozenset(x - origin for x in f.stale), f.behind))
    return tuple(out)


def _place(fetches: tuple[Fetch, ...], bases: tuple[int, ...], relative: tuple) -> None:
    """Set the fetches to hold ``relative`` words past ``bases`` (the inverse of
    :func:`_relative`)."""
    for f, b, rel in zip(fetches, bases, relative, strict=True):
        if rel is None:
            f.restore((None, frozenset(), 0))
        else:
            origin = b * (f.word_bits // L.SLOT_BITS)
            f.restore((b + rel[0], frozenset(x + origin for x in rel[1]), rel[2]))


def _once_per_entry(memo: dict, fetches: tuple[Fetch, ...], bases: tuple[int, ...],
                    shape: tuple, price, *args) -> int:
    """Cycles of a repeated piece (a matrix pass, an SFU row) of ``shape`` whose fields lie
    at ``bases``: ``price(*args)`` walks it once per place the fetches' caches enter it
    (``memo`` keeps its cycles and where it leaves them); after that it is repeated."""
    key = (*shape, _relative(fetches, bases))
    if key not in memo:
        memo[key] = price(*args), _relative(fetches, bases)
    cycles, after = memo[key]
    _place(fetches, bases, after)
    return cycles


#: The output-mode operand kinds whose fetches the result stage's model follows
#: (``isa.OUT_OPERANDS``).
OUT_OPERAND_FETCHES = ("result", "residual", "elementwise")


@dataclass(frozen=True)
class MatrixShape:
    """What a matrix instruction's cycles depend on: the instruction and its descriptor."""

    k: int
    n: int
    m: int
    desc: L.Descriptor
    out_mode: OutMode = OutMode.WIDE
    step: int = 0  #: words between output rows (MATMAT's out_pitch)
    act_addr: int = 0
    wgt_addr: int = 0
    meta_addr: int = 0
    out_addr: int = 0
    streamed: bool = False  #: MATSTREAM: the weights from the channels' streams

    @classmethod
    def of(cls, insn: isa.Instruction, desc: L.Descriptor) -> MatrixShape:
        streamed = insn.opcode is isa.Opcode.MATSTREAM
        step = 0 if insn.opcode is isa.Opcode.MATVEC else insn.out_pitch
        return cls(insn.k, insn.n, insn.m, desc, insn.out_mode, step, insn.act_addr,
                   0 if streamed else insn.wgt_addr, insn.meta_addr, insn.out_addr, streamed)


class _MatrixClock:
    """One matrix instruction on the compute unit, pass by pass."""

    def __init__(self, cfg: AccelConfig, s: MatrixShape):
        self.cfg, self.s = cfg, s
        w, desc = cfg.axi_data_bytes, s.desc
        self.wb = 8 * w
        keep, block = desc.nm or (1, 1)
        self.int8 = desc.wfmt is WeightFormat.INT8
        self.bits, self.ib = desc.bits, desc.index_bits()
        self.kept = desc.kept(s.k)
        self.groups = s.k // desc.group
        self.kpg = desc.group * keep // block  # kept weights per group
        self.wgt_pitch, self.meta_pitch = desc.wgt_pitch(s.k, w), desc.meta_pitch(s.k, w)
        self.qhdr = L.qrow_header(w)
        self.qrow_pitch = L.qrow_pitch(s.k, w)
        self.cover = cfg.chain_len * block // keep
        self.nbeats = -(-self.kept // cfg.chain_len)
        self.meta_rows = s.meta_addr + L.descriptor_words(w)
        self.fetches = self.fa, self.fw, self.fm, self.fo = (
            Fetch(self.wb), Fetch(self.wb), Fetch(self.wb), Fetch(self.wb, slots=True))

    def run(self) -> int:
        s, cfg = self.s, self.cfg
        cycles = MATRIX_SETUP + self.fm.one(s.meta_addr * self.wb) + COMPLETE
        if not (s.n and s.m):
            return cycles
        tpp = 1 if self.int8 else 2  # tokens per pass
        memo: dict = {}
        for pass_row in range(0, s.n, cfg.mv_rows):
            lanes_ok = min(cfg.mv_rows, s.n - pass_row)
            for pass_token in range(0, s.m, tpp):
                tokens_ok = min(tpp, s.m - pass_token)
                cycles += _once_per_entry(memo, self.fetches, self._bases(pass_row, pass_token),
                                          (lanes_ok, tokens_ok), self._pass, pass_row,
                                          pass_token, lanes_ok, tokens_ok)
        return cycles

    def _bases(self, pass_row: int, pass_token: int) -> tuple[int, ...]:
        """The word each fetch's records of a pass are relative to."""
        s = self.s
        return (s.act_addr + pass_token * self.qrow_pitch, s.wgt_addr + pass_row * self.wgt_pitch,
                self.meta_rows + pass_row * self.meta_pitch, s.out_addr + pass_token * s.step)

    def _pass(self, pass_row: int, pass_token: int, lanes_ok: int, tokens_ok: int) -> int:
        cfg, s, wb = self.cfg, self.s, self.wb
        lanes, n_chain, tap = cfg.mv_rows, cfg.chain_len, cfg.chain_group
        slots = n_chain // tap
        qrows = [s.act_addr + (pass_token + t) * self.qrow_pitch for t in range(tokens_ok)]
        halves = 2 if self.ib else 1
        cycles = 0
        for b in range(self.nbeats):
            lo = b * n_chain
            cycles += self._window(b, qrows)
            kept_here = max(0, min(n_chain, self.kept - lo))

            def codes(lane: int, lo=lo, kept_here=kept_here) -> int:
                row = s.wgt_addr + (pass_row + lane) * self.wgt_pitch
                cycles = self.fw.walk(row * wb + lo * self.bits, self.bits, kept_here)
                if self.ib:  # the kept weights' in-block indices
                    cycles += self.fw.walk(row * wb + self.kept * self.bits + lo * self.ib,
                                           self.ib, kept_here)
                return cycles + (n_chain - kept_here) * halves

            def scales(lane: int, lo=lo) -> int:  # each slot's scale, then its type id
                mrow = self.meta_rows + (pass_row + lane) * self.meta_pitch
                cycles = 0
                for slot in range(slots):
                    at = lo + slot * tap
                    if at >= self.kept:
                        cycles += 2
                        continue
                    g = min(at // self.kpg, self.groups - 1)
                    cycles += self.fm.one(mrow * wb + L.row_mant_bit(g))
                    if self.int8:
                        cycles += 1
                    else:
                        cycles += self.fm.one(mrow * wb + L.row_aux_bit(self.groups, g))
                return cycles

            cycles += self._lanes(self.fw, self.wgt_pitch, lanes_ok, codes,
                                  n_chain * halves)  # CODES
            cycles += self._lanes(self.fm, self.meta_pitch, lanes_ok, scales, 2 * slots)  # SLOTS
            for lane in range(lanes_ok):  # SHIFTS: the rows' exponents
                cycles += self.fm.one((self.meta_rows + (pass_row + lane) * self.meta_pitch) * wb)
            cycles += lanes - lanes_ok
            cycles += 1  # SEND
        cycles += chain_latency(tap) + ENGINE_DRAIN_EXTRA  # RESULTS: the drain
        return cycles + self._results(pass_row, pass_token, lanes_ok, tokens_ok)

    def _scales(self, qrows: list[int]) -> int:
        """CLEAR and HEADER of a beat: the scales of the tokens whose rows ``qrows`` holds,
        a cycle for an absent one."""
        return 1 + 2 - len(qrows) + sum(self.fa.one(q * self.wb) for q in qrows)

    def _window(self, b: int, qrows: list[int]) -> int:
        """CLEAR, HEADER and X of beat ``b``: the tokens' scales and activation window, 8
        columns per read, for the tokens whose rows ``qrows`` holds (the others skipped)."""
        s, wb = self.s, self.wb
        chunks = self.cover // 8
        cycles = self._scales(qrows)
        col0 = b * self.cover
        live = max(0, min(chunks, -(-(s.k - col0) // 8)))
        for t in range(2):  # X
            if t < len(qrows):
                first = (qrows[t] + self.qhdr) * wb + L.element_bit(col0, L.QCODE)
                cycles += self.fa.walk(first, L.element_bit(8, L.QCODE), live)
                cycles += chunks - live
            else:
                cycles += chunks
        return cycles

    def _lanes(self, fetch: Fetch, pitch: int, lanes_ok: int, lane_cycles, idle: int) -> int:
        """One beat state over every lane: ``lane_cycles(lane)`` for the tile's rows (from
        the third on, the second's cycles again, one row further on) and ``idle`` cycles
        for each lane past them (every field skipped)."""
        cycles = last = 0
        for lane in range(min(lanes_ok, 2)):
            last = lane_cycles(lane)
            cycles += last
        if lanes_ok > 2:
            cycles += (lanes_ok - 2) * last
            fetch.held += (lanes_ok - 2) * pitch
        return cycles + (self.cfg.mv_rows - lanes_ok) * idle

    def _results(self, pass_row: int, pass_token: int, lanes_ok: int, tokens_ok: int) -> int:
        """The pass's results as the collector gives them (``hw/compute_unit.py``)."""
        return _collector_writes(self.cfg, self.s, self.fo, self.fa, pass_row, pass_token,
                                 tokens_ok, streamed=False)


def _collector_writes(cfg: AccelConfig, s: MatrixShape, fo: Fetch, fa: Fetch, first_row: int,
                      token: int, tokens_ok: int, streamed: bool) -> int:
    """The writes of one pass's results: per lane of a way and token, a transfer of one
    result per way (``cfg.collector_ways``), with a residual mode the old values read first
    (through ``fo``, which snoops slots: the writes leave the rest of its words); the first
    way without a result (past the tile's rows, or an absent token) ends its transfer in a
    cycle. A streamed tile's transfer is consecutive rows (``layout.pass_row``), written as
    one run in a cycle where the output mode has ``word_writes``, else
    ``cfg.elementwise_run`` a cycle; a field-serial tile's, way by way, one cycle each (its
    ways are ``lanes_per_way`` rows apart)."""
    wb = 8 * cfg.axi_data_bytes
    spec = isa.OUT_MODES[s.out_mode]
    if spec.operands not in OUT_OPERAND_FETCHES:
        raise ValueError(f"out_mode {s.out_mode.name}: the cycle model does not know "
                         f"{spec.operands!r} operands")
    reads_old = spec.operands == "residual"
    per, ways = cfg.lanes_per_way, cfg.collector_ways
    runs = streamed and spec.word_writes
    stages = cfg.elementwise_run
    cycles = 0
    for lane in range(per):
        for t in range(2):
            if streamed:
                rows = [first_row + lane * ways + way for way in range(ways)]
            else:
                rows = [first_row + way * per + lane for way in range(ways)]
            rows = [r for r in rows if r < s.n] if t < tokens_ok else []
            bits = [(s.out_addr + (token + t) * s.step) * wb + L.element_bit(r, L.WIDE)
                    for r in rows]
            if runs and rows:
                cycles += 1 + (fo.run(bits[0], len(rows)) - 1 if reads_old else 0)
            elif streamed:  # ``stages`` results a cycle; a first run without one ends it
                cycles += -(-len(rows) // stages) if rows else 1
            else:
                cycles += min(ways, len(rows) + 1)
            for bit in bits:
                if reads_old and not runs:
                    cycles += fo.one(bit) - 1
                fo.written(bit // wb, bit)
                fa.written(bit // wb)
    return cycles


class _StreamClock(_MatrixClock):
    """One MATSTREAM on the compute unit: per sweep (a pair of tokens) the first pass's
    beats get their tokens' scales as MATVEC's do and their activation windows a whole word
    per cycle (STREAM_X), the other passes' come from the replay memory a beat per cycle,
    unless the weights' words (one a cycle after the read latency) or the collector (a pass
    shorter than its writes) hold them back; each pass's results are written while the next
    one runs, so only the sweep's last pass waits for its drain and writes. A pre-skewed
    stream's tail beats (``StreamGeometry.tail``) advance the chain after the last row."""

    def run(self) -> int:
        s, cfg = self.s, self.cfg
        cycles = MATRIX_SETUP + self.fm.one(s.meta_addr * self.wb) + COMPLETE
        if not (s.n and s.m):
            return cycles
        cycles += STREAM_LENGTH
        tpp = 1 if self.int8 else 2
        passes = -(-s.n // cfg.mv_rows)
        geom = L.stream_geometry(cfg, s.desc, s.k)
        words = L.stream_words(geom, cfg.lanes_per_channel, passes)
        for token in range(0, s.m, tpp):
            qrows = [s.act_addr + (token + t) * self.qrow_pitch
                     for t in range(min(tpp, s.m - token))]
            cycles += STREAM_SWEEP
            first = self._scales(qrows) + self._words_window(qrows)
            pass0 = max(first, self._first_words()) + STREAM_ACT + (self.nbeats - 1) * (
                self._words_window(qrows) + STREAM_ACT)
            # a pass shorter than the one before's writes waits for the collector
            held = self.fo.state(), self.fa.state()
            full = self._written(0, token, len(qrows))
            self.fo.restore(held[0])
            self.fa.restore(held[1])
            sweep = pass0
            if passes > 1:
                sweep += REPLAY_START + (passes - 1) * max(self.nbeats, full)
            # a pre-skewed stream's tail beats follow the last row's, as their words come
            cycles += max(sweep + geom.tail, self._last_word(words))
            cycles += chain_latency(cfg.chain_group) - geom.tail + ENGINE_DRAIN_EXTRA
            cycles += self._written(passes - 1, token, len(qrows))
        return cycles

    def _words_window(self, qrows: list[int]) -> int:
        """STREAM_X of a beat: per token a cycle for each word of its window (read, or past
        K), and the state's last (the sweep's first beat has CLEAR and HEADER before it)."""
        words = max(1, self.cover // self.cfg.axi_data_bytes)
        return len(qrows) * words + 1

    def _first_words(self) -> int:
        """Cycles from the sweep's first window until its first beat's words are in the
        lanes: the read latency, then one word per lane of the first WEIGHTS and SCALES
        words."""
        return READ_LATENCY + STREAM_FIRST_EXTRA + 2 * self.cfg.lanes_per_channel - STREAM_SWEEP

    def _last_word(self, words: int) -> int:
        """Cycles from the sweep's first window until its last beat is taken, were the
        words the only limit: a word per cycle after the read latency."""
        return READ_LATENCY + STREAM_FIRST_EXTRA + words - STREAM_SWEEP + STREAM_ACT

    def _written(self, last_pass: int, token: int, tokens_ok: int) -> int:
        """The sweep's last pass's results (rows as ``layout.pass_row`` places them), and
        STREAM_DRAIN seeing the sweep written."""
        return 1 + _collector_writes(self.cfg, self.s, self.fo, self.fa,
                                     last_pass * self.cfg.mv_rows, token, tokens_ok,
                                     streamed=True)


#: instruction shapes priced per process: a decode step repeats the same program, and
#: walking the sequencers in Python dominated the emulator's time
PRICED_SHAPES = 1 << 16


@lru_cache(maxsize=PRICED_SHAPES)
def matrix_cycles(cfg: AccelConfig, shape: MatrixShape) -> int:
    """Busy cycles of one MATVEC/MATMAT/MATSTREAM on the compute unit (a pure function of
    the configuration and the shape, so it is priced once per process)."""
    return (_StreamClock if shape.streamed else _MatrixClock)(cfg, shape).run()


def _pair(fa: Fetch, bit_a: int, fb: Fetch, bit_b: int, shared: bool = False,
          runs: bool = False) -> int:
    """Two fields (``runs``: two runs of read-ahead fetches) fetched together: the state waits
    for both. On one buffer (``shared``) they share its read port, ``fa`` first: ``fb``'s
    reads wait for ``fa``'s (two for a refill, one for a step on or a read behind)."""
    if not runs:
        a, b = fa.one(bit_a), fb.one(bit_b)
        if shared and a > 1 and b > 1:
            b += 2 if a - 1 == COLD else 1
        return max(a, b)
    entries = {fa._entry(bit_a // fa.word_bits), fb._entry(bit_b // fb.word_bits)}
    a, b = fa.ahead(bit_a), fb.ahead(bit_b)
    if shared and entries == {COLD}:
        b += 2  # both refill: fb's reads wait for fa's
    elif shared and entries == {WALK} and a == b:
        fb.behind += 1  # both read their next words behind in the same cycle
    step = max(a, b)
    fa.idle(step - a)
    fb.idle(step - b)
    return step


#: ATTN: A_CHECK, A_RANGE and COMPLETE (per query row A_ROW)
ATTN_SETUP = 3
#: ATTN's key loops, past a cycle per word read: the last word's arithmetic, and (SCORE) its
#: score leaving the register
ATTN_PIPE = 2
#: SCORE's S_QSUM past a cycle per sub-step of query codes: the last one's sum
ATTN_QSUM_PIPE = 2
#: SCORE_SOFTMAX, per query row after its scores went into the row stage: the fold of the
#: last one, the second pass
#: (exponentials and their sum) and the emission of the probabilities, a cycle per word of
#: ``row_lanes`` keys each, and the reciprocal of the sum on the serial divider with its
#: hand-overs (the first score's wait for the row stage apart: ``first_wait`` in
#: :func:`attention_cycles`).
SOFTMAX_FIXED = 55
SOFTMAX_PER_WORD = 2


def _priced_once(price):
    """``price(cfg, insn)`` cached per configuration and instruction payload (an
    instruction's fields are a dict, so the cache keys on them as sorted pairs)."""
    cached = lru_cache(maxsize=PRICED_SHAPES)(
        lambda cfg, opcode, fields: price(cfg, isa.Instruction(opcode, dict(fields))))

    @wraps(price)
    def priced(cfg: AccelConfig, insn: isa.Instruction) -> int:
        return cached(cfg, insn.opcode, tuple(sorted(insn.fields.items())))
    return priced


def _late_headers(cfg: AccelConfig, kv_addr: int, keys: int, d: int, bits: int,
                  steps: int) -> list[int]:
    """The keys past the first that wait a cycle for their header word: a key that starts a
    header word (of ``kv_slots`` headers) where every sub-step of the keys of the word before
    reads a payload word in that word's bank of the KV buffer (else one of them reads it)."""
    w = cfg.axi_data_bytes
    per_word, slots = cfg.attention_substeps(bits), L.kv_slots(w)
    if steps > 1 and per_word > 1:  # a sub-step that reads no payload word
        return []
    pw = L.kv_payload(d, bits, w)
    reads = [i // per_word for i in range(steps)]  # each sub-step's word in its payload
    heads = kv_addr + keys * pw
    return [k for k in range(slots, keys, slots)
            if all((kv_addr + j * pw + r - heads - k // slots) % 2 == 0
                   for j in range(k - slots, k) for r in reads)]


@_priced_once
def attention_cycles(cfg: AccelConfig, insn: isa.Instruction) -> int:
    """Busy cycles of one ATTN on the compute unit (``hw/attention.py``'s A_/S_/P_ states):
    a key is a cycle per sub-step (``attention_codes`` elements); the first key's header
    word takes a cycle, each later one (of ``kv_slots`` headers) is read during the keys
    before it where a sub-step leaves the KV buffer's bank free, else in a cycle of its own
    (:func:`_late_headers`); the reads run a cycle ahead of the arithmetic."""
    w = cfg.axi_data_bytes
    wb = 8 * w
    d, keys, rows = insn.head_dim, insn.keys, insn.rows
    if d == 0 or d % 2 or rows == 0:
        return ATTN_SETUP
    bits = 8 if insn.kv8 else 4
    steps = -(-d // cfg.attention_codes(bits))
    late = _late_headers(cfg, insn.kv_addr, keys, d, bits, steps)
    key_loop = keys * steps + 1 + len(late) + ATTN_PIPE if keys else 1  # S_KEYS, P_KEYS
    # the softmax's wait for its first score is hidden by the scores' queue unless the first
    # keys come a cycle each
    first_wait = 0 if keys > 1 and (steps > 1 or 1 in late) else 1
    fa = Fetch(wb)
    total = ATTN_SETUP
    for t in range(rows):
        row = insn.q_addr + t * insn.a_step
        out_row = insn.dst + t * insn.d_step
        total += 1  # A_ROW
        if insn.func is isa.AttnFunc.PV:
            # P_SCAN: a header word a cycle
            scan = -(-keys // L.kv_slots(w)) + ATTN_PIPE if keys else 1
            # P_OUT: a read a word of accumulators, `row_lanes` of its results a cycle
            lanes, k = cfg.attention_lanes, cfg.row_lanes
            results = d // lanes * (lanes // k) + -(-(d % lanes) // k)
            total += scan + key_loop + results + -(-d // lanes) + 1
            continue
        # S_QHDR, S_QSUM: the query's codes, an INT8 sub-step's a cycle
        total += fa.one(row * wb) + -(-d // cfg.attention_codes(8)) + ATTN_QSUM_PIPE
        total += key_loop
        if insn.func is isa.AttnFunc.SCORE:  # the scores written next to the query rows
            for key in range(keys):
                fa.written(out_row + L.element_bit(key, L.WIDE) // wb)
        else:
            total += (SOFTMAX_FIXED + first_wait
                      + SOFTMAX_PER_WORD * -(-keys // cfg.row_lanes))
    return total


#: The operand kinds whose fetches the SFU producer's model follows (``isa.SFU_OPERANDS``).
SFU_OPERAND_FETCHES = ("unary", "binary", "gamma", "rope", "embed", "masked", "quant8",
                       "kvquant")


def row_beat(cfg: AccelConfig, insn: isa.Instruction) -> int:
    """Elements the SFU producer feeds a stage a step: ``row_lanes`` to the lanes (ADD, MUL;
    ROPE where a head is whole beats) and to the row stage where its beats stay inside the
    stage's rows (the whole row, or segments and KV groups of whole beats); else one."""
    f, length, lanes = insn.func, insn.length, cfg.row_lanes
    if isa.SFU_FUNCTIONS[f].stage is isa.SfuStage.ELEMENT:
        operands = isa.SFU_FUNCTIONS[f].operands
        rope_beats = operands == "rope" and insn.imm % lanes == 0
        return lanes if operands == "binary" or rope_beats else 1
    seg = {isa.SfuFunc.QUANT8: insn.imm2 or length, isa.SfuFunc.KVQUANT: insn.imm}.get(f, length)
    return lanes if seg == length or seg % lanes == 0 else 1


def _sfu_producer(cfg: AccelConfig, insn: isa.Instruction) -> int:
    """The SFU producer's cycles (``hw/sfu_unit.py``'s ``_produce``): per element (or
    row-stage beat, :func:`row_beat`) its operand fields, fetched together (the slower one
    decides). Rows are alike but for where the
    fetches' caches enter them, so a row is walked once per such entry and then repeated."""
    w = cfg.axi_data_bytes
    wb = 8 * w
    f, length, rows = insn.func, insn.length, insn.rows
    fa, fb = Fetch(wb), Fetch(wb)
    operands = isa.SFU_FUNCTIONS[f].operands
    if operands not in SFU_OPERAND_FETCHES:
        raise ValueError(f"SFU function {f.name}: the cycle model does not know "
                         f"{operands!r} operands")
    wide = L.wide_pitch(length, w)
    bcast = bool(insn.imm & 1) and operands == "binary"
    beat = row_beat(cfg, insn)
    a_pitch = L.embed_pitch(length, insn.imm, w) if operands == "embed" else wide
    if operands == "gamma":
        fb.one(insn.src_b * wb)  # EPS, before the rows

    def row_b(r: int) -> int:
        """The word of row ``r``'s second operand (its record, table entry or gamma)."""
        if operands == "binary":
            return insn.src_b + (0 if bcast else r * wide)
        if operands == "gamma":
            return insn.src_b + L.gamma_header(w)
        if operands == "rope":
            return insn.src_b + r * L.rope_pitch(insn.imm, w)
        return insn.src_a + r * a_pitch  # embed: the row's own record; else unread

    def row(a: int, b: int) -> int:
        """One row's cycles, its operands at words ``a`` and ``b``."""
        runs = beat > 1  # a beat's operands are runs of read-ahead fetches
        if operands == "binary":
            return sum(_pair(fa, a * wb + L.element_bit(i, L.WIDE), fb,
                             b * wb + L.element_bit(i, L.WIDE), not bcast, runs)
                       for i in range(0, length, beat))
        if operands == "gamma":
            return sum(_pair(fa, a * wb + L.element_bit(i, L.WIDE), fb,
                             b * wb + L.element_bit(i, L.GAMMA), runs=runs)
                       for i in range(0, length, beat))
        if operands == "rope":  # a beat's entries from its first pair's cosine on
            half = insn.imm // 2
            return sum(_pair(fa, a * wb + L.element_bit(i, L.WIDE), fb,
                             b * wb + L.element_bit(L.rope_entry((i // 2) % half, i % 2),
                                                    L.TRIG), runs=runs)
                       for i in range(0, length, beat))
        if operands == "embed":
            codes = (a + a_pitch - L.array_words(length, L.QCODE, w)) * wb
            scales = (a + L.embed_header(w)) * wb
            return fb.one(a * wb) + sum(  # the row's exponent, then its elements
                _pair(fa, codes + L.element_bit(i, L.QCODE), fb,
                      scales + L.element_bit(i // insn.imm, L.MANT), True)
                for i in range(length))
        if beat > 1:  # a row-stage beat of operands a step
            return fa.ahead(a * wb, -(-length // beat), beat * L.WIDE.width)
        return fa.walk(a * wb, L.WIDE.width, length)  # unary, masked, quant8, kvquant

    memo: dict = {}
    return sum(_once_per_entry(memo, (fa, fb), bases, (), row, *bases)
               for bases in ((insn.src_a + r * a_pitch, row_b(r)) for r in range(rows)))


#: SFU: SIZES, the serial divider's sixteen steps and hand-over, PITCHES, CHECK, START, the
#: element stage and packer draining after the last element, COMPLETE.
SFU_SETUP = 26
ROPE_EXTRA = 1  #: the last pair's second value
#: The lanes (ADD, MUL, ROPE on ``row_lanes`` elements a step) finish a cycle before the
#: element stage would after the last step (measured on sim-small and sim-wide).
BINARY_LANES_EARLIER = 1
RMSNORM_EPS = 8  #: the epsilon's fetch and check before the rows
#: The row stage per row (segment, KV group) after receiving it: the cycle folding its last
#: beat into the row's reductions, the fixed states and serial
#: divisions (square roots for RMSNORM), and a cycle per word of ``row_lanes`` elements for
#: each pass after the first (SOFTMAX's exponentials, RMSNORM's squares; the emission, a
#: word of results a push), and the row's last word written (the packer takes a push in the
#: cycle it writes a word).
ROW_FIXED = {isa.SfuFunc.SOFTMAX: 53, isa.SfuFunc.RMSNORM: 104}
#: QUANT8 and KVQUANT per segment (KV group): (fixed, per beat of ``row_lanes`` codes, per
#: written word). The emission of one segment overlaps the next one's reception, so these
#: are least-squares fits to the RTL (relative error; 84 random instructions each on
#: sim-small, sim-wide and a 512-bit word of 4 lanes, rows up to 1,200 elements: within
#: 2.5% of each), not counts.
QUANT_SEGMENT = {isa.SfuFunc.QUANT8: (108.09, 1.02, -0.38),
                 isa.SfuFunc.KVQUANT: (109.29, 0.98, -0.32)}


@_priced_once
def sfu_cycles(cfg: AccelConfig, insn: isa.Instruction) -> int:
    """Busy cycles of one SFU instruction (``hw/sfu_unit.py`` and the row stage of
    ``hw/sfu_row.py``)."""
    f, length, rows = insn.func, insn.length, insn.rows
    if not rows or not length:
        return SFU_SETUP
    wb = cfg.axi_data_bits
    cycles = SFU_SETUP + _sfu_producer(cfg, insn)
    if isa.SFU_FUNCTIONS[f].stage is isa.SfuStage.ELEMENT and row_beat(cfg, insn) > 1:
        return cycles - BINARY_LANES_EARLIER
    if f is isa.SfuFunc.ROPE:
        return cycles + ROPE_EXTRA
    if f in ROW_FIXED:
        cycles += rows * (ROW_FIXED[f] + 2 * -(-length // cfg.row_lanes) + 1)
        return cycles + (RMSNORM_EPS if f is isa.SfuFunc.RMSNORM else 0)
    if f in QUANT_SEGMENT:
        if f is isa.SfuFunc.QUANT8:
            seg = insn.imm2 or length
            codes, bits = insn.imm or seg, L.QCODE.width
        else:
            seg = codes = insn.imm
            bits = insn.imm2
        fixed, per_beat, per_word = QUANT_SEGMENT[f]
        words = -(-codes * bits // wb)
        beats = -(-seg // cfg.row_lanes)
        return cycles + round(rows * (length // seg) * (fixed + per_beat * beats +
                                                        per_word * words))
    if isa.SFU_FUNCTIONS[f].stage is not isa.SfuStage.ELEMENT:
        raise ValueError(f"SFU function {f.name}: the cycle model has no row-stage timing")
    return cycles
