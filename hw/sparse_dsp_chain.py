"""FlightLLM's configurable sparse DSP chain, with two products per DSP, built lean.

One beat feeds ``n`` kept weights (decoded operands) to ``n`` DSP48E2-shaped elements. Every
sparsity is run as **N:16**: dense is 16:16 (the index is the element's column), 2:4 is 8:16
(the block of 4 is placed in its block of 16), so each element reads its activation out of
one block of 16 with **one 16:1 multiplexer per operand**, registered by the DSP's A input
register. The DSPs form cascades of ``group`` elements (a static OPMODE: the first of each
starts from zero); the **reduction node** emits one partial sum per cascade (a *slot*). A
quantisation group holds whole slots, so its sum is the sum of its slots' sums: the lane adds
them up after its group rescale (``hw/matrix_engine.py``), which lets one beat carry several
groups with no run-time cascade setting.

The work is split by who can share it:

* :class:`ActivationRouter`, once per engine: the activations are the same for every lane, so
  picking each element's block of 16 for the beat's sparsity, packing the two tokens and
  the systolic skew (element ``i`` is ``i % group`` beats late: the cascades run side by
  side) happen once, not once per lane;
* :class:`LaneChain`, once per lane: the operand and index skew (at most ``group - 1``
  deep: 12 bits per element, or 8 where the index rides in the code's high bits,
  :data:`INDEX_IN_CODE_AT`; none where the weight stream comes pre-skewed,
  ``llmacc.layout.StreamGeometry.skew``), the 16:1 selects and the cascade. The router
  hands each skew depth its beat's sparsity, so a lane finds a weight's column after the
  skew, from the few bits it delays.

Two tokens share each multiplier: the DSP48E2's pre-adder forms ``x1 * 2**18 + x0`` from
``A = x1 * 2**18`` (wiring) and ``D = x0``, ``B = w``, so the 48-bit cascade carries
``S1 * 2**18 + S0``: each element selects two 8-bit activations, no fabric adder. The
reduction node splits each slot's sum (``S0`` = the low 18 bits, sign
extended; ``S1 = (P - S0) >> 18``, which is ``P >> 18`` plus the sign bit of ``S0``). This
is exact while ``|S0| < 2**17``: with low-bit operands (``|w| <= 16``) and INT8 activations
(``|x| <= 127``), ``group * 16 * 127 < 2**17`` for slots of up to 64. INT8 weights (up to
127) would not fit, so ``pack = 0`` runs them one token per beat (the router then hands
``x1 = 0``).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.dsp48e2 import DspCascade
from hw.fixed_point import one_of
from hw.pipeline import delay, select
from hw.weight_decode import CODE_BITS, OPERAND_BITS, SLOT_DECODE, element_decode
from llmacc.isa import Sparsity
from llmacc.kernel import chain_latency
from llmacc.layout import GROUP_LOG2_MAX, SPARSITY_NM

PACK_SHIFT = 18  #: bit position of the second token's product in the cascade
#: A slot never spans more than one quantisation group, and no group sum of 8-bit operands
#: and INT8 activations exceeds ``2**GROUP_LOG2_MAX * 128 * 128`` in magnitude: the width of
#: every partial and group sum (one DSP's 27-bit A port takes it for the rescale).
SUM_BITS = ((1 << GROUP_LOG2_MAX) << (2 * (OPERAND_BITS - 1))).bit_length() + 1
MAX_CHAIN = 64  #: longest chain: slots of up to 64 keep two packed products exact
BLOCK = 16  #: every sparsity runs as N:16: one block of 16 activations per element
INDEX_BITS = (BLOCK - 1).bit_length()


#: Where a lane's N:M index rides when it rides in the code (``index_in_code``): bits 4-7
#: hold the index under every format but INT8, whose beats then never carry one (the low-bit
#: formats' decode reads only bits 0-3), so a lane delays 8 bits per weight, not 12.
INDEX_IN_CODE_AT = CODE_BITS - INDEX_BITS


def window(n: int) -> int:
    """Activations one beat can reach: n kept weights of the sparsest pattern (2:16)."""
    return max(n * m // k for k, m in (v for v in SPARSITY_NM.values() if v)) if n else 0


def _as_n16(sparsity: Sparsity) -> tuple[int, int]:
    """``(keep, block)`` of a pattern, dense as 1:1: its kept weights per block of 16 are
    ``keep * 16 // block``."""
    return SPARSITY_NM[sparsity] or (1, 1)


def block_of(element: int, sparsity: Sparsity) -> int:
    """The block of 16 activations element ``element`` reads under ``sparsity``."""
    keep, block = _as_n16(sparsity)
    return element // (keep * BLOCK // block)


def index_in_block(element: int, sparsity: Sparsity, idx):
    """Element ``element``'s column in its block of 16 from its N:M index ``idx``: plain
    wiring, the index's bits under the place of its block of ``block`` (dense: the column)."""
    keep, block = _as_n16(sparsity)
    low = (block - 1).bit_length()
    offset = element // keep % (BLOCK // block)
    return Cat(idx[:low], Const(offset, INDEX_BITS - low))


#: What one element receives of a beat's activations from the router (already skewed).
ELEMENT_FEED = data.StructLayout({
    "x0": data.ArrayLayout(signed(8), BLOCK),
    "x1": data.ArrayLayout(signed(8), BLOCK),  # 0 when the beat is not packed
})


def skewed_sparsity_layout(group: int) -> data.ArrayLayout:
    """The beat's sparsity ``k`` beats late, for each skew depth ``k`` below ``group``."""
    return data.ArrayLayout(Sparsity, group)


def router_layouts(n: int) -> tuple[data.StructLayout, data.ArrayLayout]:
    """The router's input (a beat's activation window, sparsity and packing) and output
    (one :data:`ELEMENT_FEED` per element)."""
    inp = data.StructLayout({
        "x": data.ArrayLayout(data.ArrayLayout(signed(8), window(n)), 2),
        "sparsity": Sparsity,
        "pack": 1,
    })
    return inp, data.ArrayLayout(ELEMENT_FEED, n)


class ActivationRouter(wiring.Component):
    """Per element, the block of 16 activations of both tokens that its pattern reads (the
    second token's zeroed when the beat is not packed), ``i % group`` beats late for element
    ``i`` (its cascade's systolic skew), and the beat's sparsity at every skew depth
    (``sparsity``). Shared by every lane of an engine."""

    def __init__(self, n: int, group: int):
        self.n, self.group = n, group
        inp, feed = router_layouts(n)
        super().__init__({"inp": In(inp), "feed": Out(feed),
                          "sparsity": Out(skewed_sparsity_layout(group)), "ce": In(1)})

    def elaborate(self, platform):
        m = Module()
        inp = self.inp
        x0 = inp.x[0]
        x1s = [Mux(inp.pack, inp.x[1][k], 0) for k in range(window(self.n))]
        for e in range(self.n):
            blocks = {}
            for sp in Sparsity:
                blocks.setdefault(block_of(e, sp), []).append(sp)
            x0_block = x1_block = None
            for b, patterns in blocks.items():  # the first block found is the default
                x0_here = Cat(x0[b * BLOCK + j] for j in range(BLOCK))
                x1_here = Cat(x1s[b * BLOCK + j][:8] for j in range(BLOCK))
                if x0_block is None:
                    x0_block, x1_block = x0_here, x1_here
                else:
                    hit = one_of(inp.sparsity, patterns)
                    x0_block = Mux(hit, x0_here, x0_block)
                    x1_block = Mux(hit, x1_here, x1_block)
            now = Signal(ELEMENT_FEED, name=f"feed{e}")
            m.d.comb += [now.x0.eq(x0_block), now.x1.eq(x1_block)]
            m.d.comb += self.feed[e].eq(delay(m, now, e % self.group, self.ce, f"feed{e}"))
        for k in range(self.group):
            m.d.comb += self.sparsity[k].eq(delay(m, inp.sparsity, k, self.ce, f"sparsity{k}"))
        return m


def lane_chain_layouts(n: int, group: int, index_in_code: bool = False
                       ) -> tuple[data.StructLayout, data.StructLayout]:
    """One lane's chain input (weight codes, each slot's group decode and, unless they ride
    in the codes, the N:M indices) and its per-slot partial sums."""
    inp = data.StructLayout({
        "codes": data.ArrayLayout(CODE_BITS, n),
        "slot": data.ArrayLayout(SLOT_DECODE, n // group),  # hw.weight_decode.slot_decode
        **({} if index_in_code else {"idx": data.ArrayLayout(INDEX_BITS, n)}),
    })
    out = data.StructLayout({
        "sums": data.ArrayLayout(data.ArrayLayout(signed(SUM_BITS), 2), n // group)})
    return inp, out


class LaneChain(wiring.Component):
    """One lane's chain: ``feed`` from the :class:`ActivationRouter` (element ``i``
    ``i % group`` beats late), ``inp`` this lane's weights of the same beat; ``out`` is
    ``latency`` beats behind ``inp``, split by ``pack`` (the beat's packing, given at the
    taps). ``out.sums[j]`` is the partial sum of slot ``j`` (elements ``j*group`` to
    ``(j+1)*group - 1``) for each token.

    Each weight's code and index are delayed to meet its feed (12 bits per element, 8 with
    ``index_in_code``; with ``preskewed`` they come that late already: element ``i`` of
    ``inp`` belongs to the beat ``i % group`` beats before, as pre-skewed streams hold them),
    and decoded there (:func:`hw.weight_decode.element_decode`) from its
    slot's group decode, which runs down one tapped register line per slot: the decode sits
    between registers, and synthesis cannot copy the group's logic into every weight's. Its
    column comes out of the delayed index under the router's ``sparsity`` of the same depth.
    """

    def __init__(self, n: int, group: int, index_in_code: bool = False,
                 preskewed: bool = False):
        if n % BLOCK or n > MAX_CHAIN or n % group:
            self._MustUse__silence = True  # refused: never to be elaborated
            raise ValueError(f"chain of {n} (group {group}): need a multiple of 16 up to "
                             f"{MAX_CHAIN}, divisible by the group")
        self.n, self.group, self.index_in_code = n, group, index_in_code
        self.preskewed = preskewed
        inp, out = lane_chain_layouts(n, group, index_in_code)
        _, feed = router_layouts(n)
        super().__init__({"inp": In(inp), "feed": In(feed),
                          "sparsity": In(skewed_sparsity_layout(group)), "pack": In(1),
                          "out": Out(out), "ce": In(1)})

    @property
    def latency(self) -> int:
        return chain_latency(self.group)

    def _column(self, e: int, idx):
        """Element ``e``'s column in its block of 16 from its delayed index ``idx``, under
        the sparsity of the beat it is working on."""
        sparsity = self.sparsity[e % self.group]
        value = index_in_block(e, Sparsity.DENSE, idx)
        for sp in Sparsity:
            if sp is not Sparsity.DENSE:
                value = Mux(sparsity == sp, index_in_block(e, sp, idx), value)
        return value

    def _slot_line(self, m: Module, j: int) -> list[data.View]:
        """Slot ``j``'s group decode ``k`` beats late for its ``k``-th element."""
        value, taps = self.inp.slot[j], []
        for k in range(self.group):
            taps.append(value)
            value = delay(m, value, 1, self.ce, f"slot{j}_d{k}")
        return taps

    def elaborate(self, platform):
        m = Module()
        m.submodules.cascade = cas = DspCascade(self.n, self.group)
        lines = [self._slot_line(m, j) for j in range(self.n // self.group)]
        for e in range(self.n):
            code = self.inp.codes[e]
            operand = code if self.index_in_code else Cat(code, self.inp.idx[e])
            late = operand if self.preskewed else \
                delay(m, operand, e % self.group, self.ce, f"op{e}")  # meets its feed
            op = element_decode(late[:CODE_BITS], lines[e // self.group][e % self.group])
            col = self._column(e, late[INDEX_IN_CODE_AT if self.index_in_code else CODE_BITS:])
            sub = delay(m, op["neg"], 1, self.ce, f"neg{e}")  # beside the product
            feed = self.feed[e]
            x0 = select(m, feed.x0, col, f"x0_{e}")
            x1 = select(m, feed.x1, col, f"x1_{e}")
            m.d.comb += [cas.a[e].eq(Cat(Const(0, PACK_SHIFT), x1).as_signed()),
                         cas.d[e].eq(x0), cas.b[e].eq(op["mag"].as_signed()),
                         cas.sub[e].eq(sub)]
        m.d.comb += cas.ce.eq(self.ce)
        for j in range(self.n // self.group):
            p = cas.taps[j]
            low = p[:PACK_SHIFT].as_signed()
            high = p[PACK_SHIFT:].as_signed() + low[-1]  # (p - low) >> 18, without a subtractor
            m.d.comb += [self.out.sums[j][0].eq(Mux(self.pack, low, p)),
                         self.out.sums[j][1].eq(Mux(self.pack, high, 0))]
        return m


def chain_layouts(n: int, group: int, index_in_code: bool = False
                  ) -> tuple[data.StructLayout, data.StructLayout]:
    """The whole chain's input (a lane's operands with the beat's activations) and output."""
    lane_inp, out = lane_chain_layouts(n, group, index_in_code)
    router_inp, _ = router_layouts(n)
    inp = data.StructLayout({**{name: f.shape for name, f in lane_inp},
                             **{name: f.shape for name, f in router_inp}})
    return inp, out


class SparseDspChain(wiring.Component):
    """One lane with its own router: the chain as a pipelined core (``ce`` advances it;
    ``out`` is ``latency`` beats behind ``inp``)."""

    def __init__(self, n: int, group: int, index_in_code: bool = False):
        try:
            self.lane = LaneChain(n, group, index_in_code)
        except ValueError:
            self._MustUse__silence = True  # refused with its lane
            raise
        self.n, self.group = n, group
        inp, out = chain_layouts(n, group, index_in_code)
        super().__init__({"inp": In(inp), "out": Out(out), "ce": In(1)})

    @property
    def latency(self) -> int:
        return self.lane.latency

    def elaborate(self, platform):
        m = Module()
        m.submodules.router = router = ActivationRouter(self.n, self.group)
        m.submodules.lane = lane = self.lane
        inp = self.inp
        m.d.comb += [router.ce.eq(self.ce), lane.ce.eq(self.ce),
                     router.inp.x.eq(inp.x), router.inp.sparsity.eq(inp.sparsity),
                     router.inp.pack.eq(inp.pack),
                     lane.inp.codes.eq(inp.codes), lane.inp.slot.eq(inp.slot),
                     lane.feed.eq(router.feed), lane.sparsity.eq(router.sparsity),
                     self.out.eq(lane.out),
                     lane.pack.eq(delay(m, inp.pack, self.latency, self.ce, "pack"))]
        if not self.lane.index_in_code:
            m.d.comb += lane.inp.idx.eq(inp.idx)
        return m
