"""A DSP48E2-shaped multiply-accumulate element and a cascade of them.

Each element has the DSP48E2's registers: A/B input registers (AREG = BREG = 1), the
multiplier register (MREG = 1) and the output register (PREG = 1), a 27 x 18 signed
multiplier and a 48-bit post-adder whose other input is the cascade ``pcin`` (OPMODE Z =
PCIN) or, for the first element of a cascade, zero (Z = 0): a static OPMODE. Written this
way, yosys ``synth_xilinx`` and Vivado map each element onto one DSP48E2
(``tests/test_dsp_chain.py`` counts them).

:class:`DspCascade` is ``n // group`` cascades of ``group`` elements, PCOUT -> PCIN within
each. Operands of element ``i`` must arrive ``i`` cycles after element 0's (the systolic
skew a cascade needs: its users skew only the bits that vary per element, see
:mod:`hw.sparse_dsp_chain`); the reduction node taps each cascade's last element and
re-aligns the taps, so that one beat's ``n // group`` partial sums leave together ``n + 2``
cycles after element 0's operands entered.
"""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.pipeline import delay
from llmacc.kernel import chain_latency

A_BITS, B_BITS, P_BITS = 27, 18, 48


class Dsp48e2(wiring.Component):
    """``p <= m + pcin`` (``cascade``) or ``p <= m``, ``m <= a * b``, with A/B, M and P
    registers. ``ce`` is the clock enable of every register."""

    a: In(signed(A_BITS))
    b: In(signed(B_BITS))
    ce: In(1)
    pcin: In(signed(P_BITS))
    p: Out(signed(P_BITS))

    def __init__(self, cascade: bool):
        self.cascade = cascade
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        a = Signal(signed(A_BITS), reset_less=True)
        b = Signal(signed(B_BITS), reset_less=True)
        prod = Signal(signed(A_BITS + B_BITS), reset_less=True)
        p = Signal(signed(P_BITS), reset_less=True)
        with m.If(self.ce):
            m.d.sync += [a.eq(self.a), b.eq(self.b), prod.eq(a * b),
                         p.eq((prod + self.pcin)[:P_BITS] if self.cascade else prod)]
        m.d.comb += self.p.eq(p)
        return m


class DspCascade(wiring.Component):
    """``n`` elements in cascades of ``group``; ``taps[j]`` is the sum of cascade ``j``
    (elements ``j*group`` to ``(j+1)*group - 1``). Element ``i``'s inputs of a beat (``a``,
    ``b``) come ``i`` cycles after element 0's."""

    def __init__(self, n: int, group: int):
        if n < 1 or group < 1 or n % group:
            raise ValueError(f"cascade of {n} elements cannot tap every {group}")
        self.n, self.group = n, group
        super().__init__({
            "a": In(data.ArrayLayout(signed(A_BITS), n)),
            "b": In(data.ArrayLayout(signed(B_BITS), n)),
            "ce": In(1),
            "taps": Out(data.ArrayLayout(signed(P_BITS), n // group)),
        })

    @property
    def latency(self) -> int:
        return chain_latency(self.n)

    def elaborate(self, platform):
        m = Module()
        pes = []
        for i in range(self.n):
            pe = Dsp48e2(cascade=i % self.group != 0)
            m.submodules[f"pe{i}"] = pe
            m.d.comb += [pe.a.eq(self.a[i]), pe.b.eq(self.b[i]), pe.ce.eq(self.ce)]
            if pe.cascade:
                m.d.comb += pe.pcin.eq(pes[-1].p)
            pes.append(pe)
        for j in range(self.n // self.group):
            last = (j + 1) * self.group - 1
            m.d.comb += self.taps[j].eq(  # output deskew
                delay(m, pes[last].p, self.n - 1 - last, self.ce, f"tap{j}"))
        return m
