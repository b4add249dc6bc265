"""One channel's weight stream into its lanes' beat operands, with fixed wiring per format.

The stream is :mod:`llmacc.layout`'s beat-major weight stream: words of two parts (WEIGHTS:
whole beats of codes and N:M indices as bit planes; SCALES: a row's shift and a run of
groups' mantissas and aux bytes), one word per lane for each request of the lanes' queues.
:class:`StreamUnpacker` holds, for each of its ``lanes`` lanes and each part, a queue of
``STREAM_QUEUE_WORDS`` words (the current one and those after it), and

* **loads** the channel's words in the order the queues ask for them: a request is recorded
  when a beat finishes a word (``pop``), answered by the next ``lanes`` words of the stream,
  one per lane. The order depends only on the beats, so the compiler writes it and no word
  carries a tag; a new stream (``start``) asks ``STREAM_QUEUE_WORDS`` times for each part;
* **unpacks** the current words into each lane's operands of the beat: code bit ``p`` of
  element ``e`` is bit ``e`` of one of a few word planes, chosen by the format, the sparsity
  and the beat's slot in its word (the same choice for every lane, made once); the slots'
  scales are entries of the SCALES word named by the engine (``entry``).

It is ``ready`` when every lane holds both parts' current words (a pre-skewed stream's
``tail`` beats need WEIGHTS words only). The engine
(:mod:`hw.stream_engine`) counts the beats and says which words a beat finishes.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.matrix_engine import engine_layouts
from hw.pipeline import select
from hw.sparse_dsp_chain import INDEX_BITS, INDEX_IN_CODE_AT
from hw.weight_decode import CODE_BITS
from llmacc import layout as L
from llmacc.isa import Sparsity, WeightFormat

WORD_COUNT_BITS = 24  #: words one stream may hold (per channel)


def slot_bits(n: int, w_bits: int) -> int:
    """Bits of a beat's slot number in its WEIGHTS word."""
    most = max(g.beats_per_word for g in L.stream_geometries(n, w_bits).values())
    return max(1, (most - 1).bit_length())


def plane_sources(n: int, w_bits: int, plane_of: str, planes: int
                  ) -> list[dict[int, list[tuple[WeightFormat, Sparsity, int]]]]:
    """For each operand bit ``p`` below ``planes``: the word planes it can come from, each
    with the (format, sparsity, slot) that take it there (``plane_of``: ``code_plane`` or
    ``index_plane`` of :class:`llmacc.layout.StreamGeometry`)."""
    out: list[dict] = [{} for _ in range(planes)]
    for (fmt, sp), g in L.stream_geometries(n, w_bits).items():
        count = g.desc.bits if plane_of == "code_plane" else g.index_planes
        for slot in range(g.beats_per_word):
            for p in range(count):
                out[p].setdefault(getattr(g, plane_of)(slot, p), []).append((fmt, sp, slot))
    return out


def index_fits_code(n: int, w_bits: int) -> bool:
    """Whether every beat streamed on words of ``w_bits`` to chains of ``n`` leaves its N:M
    index room in its codes' high bits (``hw.sparse_dsp_chain.INDEX_IN_CODE_AT``): no
    format of more code bits than that carries an index."""
    return all(g.index_planes == 0 or g.desc.bits <= INDEX_IN_CODE_AT
               for g in L.stream_geometries(n, w_bits).values())


def operand_sources(n: int, w_bits: int, index_in_code: bool
                    ) -> dict[str, list[dict[int, list[tuple[WeightFormat, Sparsity, int]]]]]:
    """:func:`plane_sources` of a lane's ``codes`` bits and ``idx`` bits; with
    ``index_in_code`` the index bits are codes bits from ``INDEX_IN_CODE_AT`` on."""
    codes = plane_sources(n, w_bits, "code_plane", CODE_BITS)
    idx = plane_sources(n, w_bits, "index_plane", INDEX_BITS)
    if not index_in_code:
        return {"codes": codes, "idx": idx}
    if not index_fits_code(n, w_bits):
        raise ValueError(f"a {w_bits}-bit stream to chains of {n} holds INT8 with an N:M "
                         "index: no room for the index in the codes")
    for p, sources in enumerate(idx):
        for plane, takers in sources.items():
            codes[INDEX_IN_CODE_AT + p].setdefault(plane, []).extend(takers)
    return {"codes": codes}


class WordQueue(wiring.Component):
    """``depth`` words in a row: ``push`` writes ``word`` into the back, and every word moves
    one place forward whenever the place ahead is free or being freed, up to the front
    (``cur``, valid ``cur_valid``), which ``pop`` frees; ``clear`` empties the queue. No word
    passes a multiplexer (registers with clock enables only). Pushes only come when a place
    is free (the requests guarantee it), and then the back is free or moving."""

    def __init__(self, bits: int, depth: int = L.STREAM_QUEUE_WORDS):
        self.depth = depth
        super().__init__({"push": In(1), "word": In(bits), "pop": In(1), "clear": In(1),
                          "cur": Out(bits), "cur_valid": Out(1)})

    def elaborate(self, platform):
        m = Module()
        words = [self.cur, *(Signal.like(self.word, name=f"word{i}")
                             for i in range(1, self.depth))]
        valid = [self.cur_valid, *(Signal(name=f"valid{i}") for i in range(1, self.depth))]
        leaving = self.pop  # the place ahead is being freed
        moves = []
        for i in range(1, self.depth):
            move = Signal(name=f"move{i}")
            m.d.comb += move.eq(valid[i] & (~valid[i - 1] | leaving))
            with m.If(move):
                m.d.sync += words[i - 1].eq(words[i])
            moves.append(move)
            leaving = move
        with m.If(self.push):
            m.d.sync += words[-1].eq(self.word)
        arriving = [*moves, self.push]  # what enters place i
        leaves = [self.pop, *moves]  # what leaves place i
        with m.If(self.clear):
            m.d.sync += [v.eq(0) for v in valid]
        with m.Else():
            m.d.sync += [v.eq(arriving[i] | (v & ~leaves[i])) for i, v in enumerate(valid)]
        return m


class RequestQueue(wiring.Component):
    """The parts whose words the lanes wait for, in order (one bit each: a
    :class:`llmacc.layout.StreamPart`); up to two pushed per cycle (WEIGHTS first), one
    taken. ``start`` empties it and asks ``STREAM_QUEUE_WORDS`` times for each part."""

    DEPTH = L.STREAM_QUEUE_WORDS * len(L.StreamPart)

    def __init__(self):
        super().__init__({"start": In(1), "push": In(len(L.StreamPart)), "take": In(1),
                          "head": Out(1), "valid": Out(1)})

    def elaborate(self, platform):
        m = Module()
        depth = self.DEPTH
        parts = Signal(depth)
        count = Signal(range(depth + 1))
        m.d.comb += [self.head.eq(parts[0]), self.valid.eq(count != 0)]
        kept = Mux(self.take, parts >> 1, parts)
        base = count - self.take
        second = self.push[L.StreamPart.WEIGHTS]  # a SCALES request after a WEIGHTS one
        new = Signal(depth)
        for i in range(depth):
            scales_here = self.push[L.StreamPart.SCALES] & (base + second == i)
            weights_here = self.push[L.StreamPart.WEIGHTS] & (base == i)
            m.d.comb += new[i].eq(Mux(scales_here, 1, Mux(weights_here, 0, kept[i])))
        initial = Cat(*(Const(int(part), 1) for _ in range(L.STREAM_QUEUE_WORDS)
                        for part in L.StreamPart))
        with m.If(self.start):
            m.d.sync += [parts.eq(initial), count.eq(depth)]
        with m.Else():
            m.d.sync += [parts.eq(new), count.eq(base + self.push[0] + self.push[1])]
        return m


class StreamUnpacker(wiring.Component):
    """``lanes`` lanes' operands out of one channel's weight stream (``words``); see the
    module's docstring. Ports from the engine, the same for every channel: the stream's
    ``fmt`` and ``sparsity``; ``start`` with ``total`` (the stream's words); per beat its
    ``slot`` in its WEIGHTS word, the SCALES ``entry`` of each chain slot, which parts the
    beat finishes (``pop``) and whether it is taken (``fire``)."""

    def __init__(self, lanes: int, n: int, chain_group: int, w_bits: int,
                 index_in_code: bool = False):
        self.lanes, self.n, self.w_bits = lanes, n, w_bits
        self.slots = n // chain_group
        self.entries = L.stream_scale_entries(w_bits)
        self.sources = operand_sources(n, w_bits, index_in_code)
        # a lane's operands of a beat
        lane = engine_layouts(1, n, chain_group, index_in_code=index_in_code)[1]
        super().__init__({
            "words": In(stream.Signature(w_bits)),
            "start": In(1), "total": In(WORD_COUNT_BITS),
            "fmt": In(WeightFormat), "sparsity": In(Sparsity),
            "slot": In(slot_bits(n, w_bits)),
            "entry": In(data.ArrayLayout(range(self.entries), self.slots)),
            "pop": In(len(L.StreamPart)), "fire": In(1), "tail": In(1),
            "ready": Out(1), "lane": Out(lane).array(lanes)})

    def _choices(self, m, field: str) -> list[tuple[list[int], Signal]]:
        """Per bit of a lane's operand ``field``: the word planes it can come from and which
        one this beat's is (an index into them), the same for every lane."""
        out = []
        for p, sources in enumerate(self.sources[field]):
            planes_p = sorted(sources)
            pick = Signal(range(max(2, len(planes_p))), name=f"{field}{p}_pick")
            for i, q in enumerate(planes_p):
                with m.If(Cat(*((self.fmt == f) & (self.sparsity == s) & (self.slot == j)
                                for f, s, j in sources[q])).any()):
                    m.d.comb += pick.eq(i)
            out.append((planes_p, pick))
        return out

    def _planes(self, word, choices) -> list:
        """Each operand bit's ``n`` bits out of ``word``: a multiplexer of its few word
        planes."""
        n = self.n
        return [Cat(*(word[q * n:(q + 1) * n] for q in planes)).word_select(pick, n)
                for planes, pick in choices]

    def elaborate(self, platform):
        m = Module()
        n, parts = self.n, list(L.StreamPart)
        m.submodules.requests = req = RequestQueue()
        queues = [[WordQueue(self.w_bits) for _ in parts] for _ in range(self.lanes)]
        for lane, row in enumerate(queues):
            for part, q in zip(parts, row, strict=True):
                m.submodules[f"lane{lane}_{part.name.lower()}"] = q

        # loading: the next `lanes` words answer the oldest request, one per lane
        left = Signal(WORD_COUNT_BITS)
        lane_at = Signal(range(max(2, self.lanes)))  # one bit even for one lane (lint)
        take = self.words.valid & self.words.ready
        m.d.comb += self.words.ready.eq(req.valid & (left != 0) & ~self.start)
        last_lane = lane_at == self.lanes - 1
        with m.If(self.start):
            m.d.sync += [left.eq(self.total), lane_at.eq(0)]
        with m.Elif(take):
            m.d.sync += [left.eq(left - 1), lane_at.eq(Mux(last_lane, 0, lane_at + 1))]
        m.d.comb += [req.start.eq(self.start), req.take.eq(take & last_lane),
                     req.push.eq(Mux(self.fire, self.pop, 0))]
        ready = {part: [] for part in parts}
        for lane, row in enumerate(queues):
            for part, q in zip(parts, row, strict=True):
                m.d.comb += [q.word.eq(self.words.payload),
                             q.push.eq(take & (lane_at == lane) & (req.head == part)),
                             q.pop.eq(self.fire & self.pop[part]), q.clear.eq(self.start)]
                ready[part].append(q.cur_valid)
        scales_ready = Cat(*ready[L.StreamPart.SCALES]).all() | self.tail
        m.d.comb += self.ready.eq(Cat(*ready[L.StreamPart.WEIGHTS]).all() & scales_ready
                                  & ~self.start)

        # unpacking: fixed wiring per format, chosen once for every lane
        choices = {field: self._choices(m, field) for field in self.sources}
        scale = L.stream_scale_layout(self.w_bits)
        for lane, row in enumerate(queues):
            out = self.lane[lane]
            weights = row[L.StreamPart.WEIGHTS].cur
            scales = data.View(scale, row[L.StreamPart.SCALES].cur)
            for field, field_choices in choices.items():
                planes = self._planes(weights, field_choices)
                for e in range(n):
                    m.d.comb += out[field][e].eq(Cat(*(pl[e] for pl in planes)))
            for j in range(self.slots):
                m.d.comb += [
                    out.mant[j].eq(select(m, scales.mant, self.entry[j], f"mant{lane}_{j}")),
                    out.aux[j].eq(select(m, scales.aux, self.entry[j], f"aux{lane}_{j}"))]
            m.d.comb += out.shift.eq(scales.shift)
        return m
