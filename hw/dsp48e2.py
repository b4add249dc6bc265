"""A DSP48E2-shaped multiply-accumulate element and a cascade of them.

Each element has the DSP48E2's registers: A/B input registers (AREG = BREG = 1), the
multiplier register (MREG = 1) and the output register (PREG = 1), a 27 x 18 signed
multiplier and a 48-bit post-adder whose other input is the cascade ``pcin`` (OPMODE Z =
PCIN) or zero (Z = 0): the run-time ``link``. Written this way, yosys ``synth_xilinx`` and
Vivado map each element onto one DSP48E2 (``tests/test_dsp_chain.py`` counts them).

:class:`DspCascade` chains ``n`` elements PCOUT -> PCIN. Operands of element ``i`` must
arrive ``i`` cycles after element 0's (the systolic skew a cascade needs: its users skew
only the bits that vary per element, see :mod:`hw.sparse_dsp_chain`), and the reduction node
taps the cascade after every ``group`` elements and re-aligns the taps, so that one beat's
partial sums leave together ``n + 2`` cycles after element 0's operands entered.
"""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.pipeline import delay
from llmacc.kernel import chain_latency

A_BITS, B_BITS, P_BITS = 27, 18, 48


class Dsp48e2(wiring.Component):
    """``p <= m + (link ? pcin : 0)``, ``m <= a * b``, with A/B, M and P registers.

    ``link`` travels with ``a``/``b`` (like the DSP's registered OPMODE), so a beat and its
    link setting stay aligned. ``ce`` is the clock enable of every register.
    """

    a: In(signed(A_BITS))
    b: In(signed(B_BITS))
    link: In(1)
    ce: In(1)
    pcin: In(signed(P_BITS))
    p: Out(signed(P_BITS))

    def elaborate(self, platform):
        m = Module()
        a = Signal(signed(A_BITS), reset_less=True)
        b = Signal(signed(B_BITS), reset_less=True)
        prod = Signal(signed(A_BITS + B_BITS), reset_less=True)
        link_a = Signal(reset_less=True)
        link_m = Signal(reset_less=True)
        p = Signal(signed(P_BITS), reset_less=True)
        with m.If(self.ce):
            m.d.sync += [a.eq(self.a), b.eq(self.b), link_a.eq(self.link),
                         prod.eq(a * b), link_m.eq(link_a),
                         p.eq((prod + (self.pcin & link_m.replicate(P_BITS)))[:P_BITS])]
        m.d.comb += self.p.eq(p)
        return m


class DspCascade(wiring.Component):
    """``n`` elements cascaded; ``taps[j]`` is the cascade after element ``(j+1)*group - 1``.

    Element ``i``'s inputs of a beat (``a``, ``b``, ``link``) come ``i`` cycles after element
    0's. ``link[i] = 0`` breaks the cascade before element ``i`` (element 0 never links).
    """

    def __init__(self, n: int, group: int):
        if n < 1 or group < 1 or n % group:
            raise ValueError(f"cascade of {n} elements cannot tap every {group}")
        self.n, self.group = n, group
        super().__init__({
            "a": In(data.ArrayLayout(signed(A_BITS), n)),
            "b": In(data.ArrayLayout(signed(B_BITS), n)),
            "link": In(n),
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
            pe = Dsp48e2()
            m.submodules[f"pe{i}"] = pe
            link = self.link[i] if i else 0
            m.d.comb += [pe.a.eq(self.a[i]), pe.b.eq(self.b[i]), pe.link.eq(link),
                         pe.ce.eq(self.ce)]
            if pes:
                m.d.comb += pe.pcin.eq(pes[-1].p)
            pes.append(pe)
        for j in range(self.n // self.group):
            last = (j + 1) * self.group - 1
            m.d.comb += self.taps[j].eq(  # output deskew
                delay(m, pes[last].p, self.n - 1 - last, self.ce, f"tap{j}"))
        return m
