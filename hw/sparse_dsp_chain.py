"""FlightLLM's configurable sparse DSP chain, with two products per DSP.

One beat feeds ``n`` kept weights (decoded operands) to ``n`` DSP48E2-shaped elements. For
N:M sparse weights each element's **sparse multiplexer** picks, by the weight's in-block
index, the matching activation out of its block of M (``i // N`` is the element's block), so
every DSP does useful work every cycle whatever the pattern: dense, N:16 with N in
{2, 4, 8} and 2:4. The cascade is cut into segments of ``2**seg_log2`` elements at run time
(links of the DSP cascade, multiples of ``group``); the **reduction node** emits one partial
sum per segment, so that each segment can carry one quantisation group.

Two tokens share each multiplier: ``A = x1 * 2**18 + x0``, ``B = w``, so the 48-bit cascade
carries ``S1 * 2**18 + S0``. The reduction node splits it (``S0`` = the low 18 bits, sign
extended; ``S1 = (P - S0) >> 18``). This is exact while ``|S0| < 2**17`` per beat: with
low-bit operands (``|w| <= 16``) and INT8 activations, ``n * 16 * 127 < 2**17`` for
``n <= 64``. INT8 weights (up to 127) would not fit, so ``pack = 0`` runs them one token per
beat.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.dsp48e2 import DspCascade
from hw.pipeline import delay
from hw.weight_decode import OPERAND_BITS
from llmacc.isa import Sparsity
from llmacc.kernel import chain_latency
from llmacc.layout import SPARSITY_NM

PACK_SHIFT = 18  #: bit position of the second token's product in the cascade
SUM_BITS = 32  #: per-segment partial sums after the split
MAX_CHAIN = 64  #: longest chain for which two packed products stay exact


def window(n: int) -> int:
    """Activations one beat can reach: n kept weights of the sparsest pattern (2:16)."""
    return max(n * m // k for k, m in (v for v in SPARSITY_NM.values() if v)) if n else 0


def chain_layouts(n: int, group: int) -> tuple[data.StructLayout, data.StructLayout]:
    inp = data.StructLayout({
        "ops": data.ArrayLayout(signed(OPERAND_BITS), n),
        "idx": data.ArrayLayout(4, n),
        "x": data.ArrayLayout(data.ArrayLayout(signed(8), window(n)), 2),
        "sparsity": Sparsity,
        "seg_log2": 3,
        "pack": 1,
    })
    out = data.StructLayout({
        "sums": data.ArrayLayout(data.ArrayLayout(signed(SUM_BITS), 2), n // group)})
    return inp, out


class SparseDspChain(wiring.Component):
    """The chain as a pipelined core: ``ce`` advances it; ``out`` is ``latency`` beats behind
    ``inp``. ``out.sums[j]`` is the partial sum of the segment ending at tap ``j`` (taps that
    do not end a segment carry the running cascade and are ignored downstream)."""

    def __init__(self, n: int, group: int):
        if n % 16 or n > MAX_CHAIN or n % group:
            raise ValueError(f"chain of {n} (group {group}): need a multiple of 16 up to "
                             f"{MAX_CHAIN}, divisible by the group")
        self.n, self.group = n, group
        inp, out = chain_layouts(n, group)
        super().__init__({"inp": In(inp), "out": Out(out), "ce": In(1)})

    @property
    def latency(self) -> int:
        return chain_latency(self.n)

    def _select(self, lane: int, x, sparsity, idx):
        """The sparse multiplexer of one element: its activation under each pattern."""
        options = {Sparsity.DENSE: x[lane]}
        for sp, nm in SPARSITY_NM.items():
            if nm:
                keep, block = nm
                base = lane // keep * block
                block_x = Cat(x[base + j] for j in range(block))
                options[sp] = block_x.word_select(idx[:(block - 1).bit_length()], 8).as_signed()
        value = options[Sparsity.DENSE]
        for sp, sel in options.items():
            value = Mux(sparsity == sp, sel, value)
        return value

    def elaborate(self, platform):
        m = Module()
        m.submodules.cascade = cas = DspCascade(self.n, self.group)
        inp = self.inp
        seg_mask = ((1 << inp.seg_log2) - 1)[:8]
        for lane in range(self.n):
            x0 = self._select(lane, inp.x[0], inp.sparsity, inp.idx[lane])
            x1 = self._select(lane, inp.x[1], inp.sparsity, inp.idx[lane])
            a = Mux(inp.pack, (x1 << PACK_SHIFT) + x0, x0)
            m.d.comb += [cas.a[lane].eq(a), cas.b[lane].eq(inp.ops[lane])]
            m.d.comb += cas.link[lane].eq((lane & seg_mask) != 0)
        m.d.comb += cas.ce.eq(self.ce)
        pack = delay(m, inp.pack, self.latency, self.ce, "pack")  # travels with its beat
        for j in range(self.n // self.group):
            p = cas.taps[j]
            low = p[:PACK_SHIFT].as_signed()
            high = (p - low) >> PACK_SHIFT
            m.d.comb += [self.out.sums[j][0].eq(Mux(pack, low, p)),
                         self.out.sums[j][1].eq(Mux(pack, high, 0))]
        return m

