"""A DSP48E2-shaped multiply-accumulate element and a cascade of them.

Each element has the DSP48E2's registers: A/B input registers (AREG = BREG = 1), the
multiplier register (MREG = 1) and the output register (PREG = 1), a 27 x 18 signed
multiplier and a 48-bit post-adder whose other input is the cascade ``pcin`` (OPMODE Z =
PCIN) or, for the first element of a cascade, zero (Z = 0): a static OPMODE. The product is
added or, under ``sub``, subtracted (ALUMODE, registered beside M): the weight decode hands
sign-magnitude operands, so no LUT negates one (:mod:`hw.weight_decode`). Written this
way, yosys ``synth_xilinx`` and Vivado map each element onto one DSP48E2
(``tests/test_dsp_chain.py`` counts them).

:class:`DspCascade` is ``n // group`` cascades of ``group`` elements, PCOUT -> PCIN within
each. The cascades are independent, so they run side by side: operands of element ``i``
must arrive ``i % group`` cycles after the first element's of its cascade (the systolic
skew, at most ``group - 1`` deep: its users skew only the bits that vary per element, see
:mod:`hw.sparse_dsp_chain`), and one beat's ``n // group`` partial sums leave together
``group + 2`` cycles after its first operands entered, with no deskew.
"""

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from llmacc.kernel import chain_latency

A_BITS, B_BITS, P_BITS = 27, 18, 48


class DspPrimitives:
    """A platform under which every DSP element is a ``DSP48E2`` instance, configured as the
    behavioural model below describes it: what Vivado makes of the model, written out, so
    that a synthesis that cannot pack DSP48E2 registers and post-adders itself (yosys) counts
    them inside the DSP, as Vivado places them. Simulation never uses it (Amaranth cannot
    simulate a vendor primitive); the behavioural model is the tested design."""


#: OPMODE (W, Z, Y, X): X = Y = M (the product), W = 0, Z = PCIN or 0 (UG579, table 2-7)
OPMODE_M, OPMODE_M_PLUS_PCIN = 0b00_000_01_01, 0b00_001_01_01
A_PORT_BITS = 30  #: the DSP48E2's A port (the multiplier takes its low 27 bits)
INMODE_D_PLUS_A2 = 0b00100  #: the pre-adder adds D and A2, B2 to the multiplier (UG579)


class Dsp48e2(wiring.Component):
    """``p <= pcin +- m`` (``cascade``) or ``p <= +-m``, ``m <= (a + d) * b`` (the
    pre-adder), with A/B/D, M and P registers. ``sub`` (ALUMODE ``Z - (X + Y)``) negates
    the product; like the DSP48E2's ALUMODE register, which sits beside MREG, it comes one
    cycle after ``a``, ``d`` and ``b``.
    ``ce`` is the clock enable of every register; ``pcout`` (equal to ``p``) feeds the next
    element's ``pcin`` over the dedicated cascade path."""

    a: In(signed(A_BITS))
    d: In(signed(A_BITS))
    b: In(signed(B_BITS))
    sub: In(1)
    ce: In(1)
    pcin: In(signed(P_BITS))
    p: Out(signed(P_BITS))
    pcout: Out(signed(P_BITS))

    def __init__(self, cascade: bool):
        self.cascade = cascade
        super().__init__()

    def elaborate(self, platform):
        if isinstance(platform, DspPrimitives):
            return self._primitive()
        m = Module()
        a = Signal(signed(A_BITS), reset_less=True)
        b = Signal(signed(B_BITS), reset_less=True)
        d = Signal(signed(A_BITS), reset_less=True)
        prod = Signal(signed(A_BITS + B_BITS), reset_less=True)
        sub = Signal(reset_less=True)
        p = Signal(signed(P_BITS), reset_less=True)
        z = self.pcin if self.cascade else 0
        with m.If(self.ce):
            m.d.sync += [a.eq(self.a), b.eq(self.b), d.eq(self.d),
                         prod.eq((a + d)[:A_BITS].as_signed() * b), sub.eq(self.sub),
                         p.eq(Mux(sub, z - prod, z + prod)[:P_BITS])]
        m.d.comb += [self.p.eq(p), self.pcout.eq(p)]
        return m

    def _primitive(self) -> Module:
        """The element as one DSP48E2: AREG = BREG = DREG = MREG = PREG = ALUMODEREG = 1,
        the pre-adder ``D + A`` unregistered (ADREG = 0, INMODE = D + A2), no C register, a
        static OPMODE and ALUMODE ``Z + X + Y`` or, under ``sub``, ``Z - (X + Y)``."""
        m = Module()
        ce = self.ce
        regs = {f"p_{name}": 1 for name in ("AREG", "BREG", "ACASCREG", "BCASCREG", "MREG",
                                            "PREG", "ALUMODEREG", "DREG")}
        regs.update({f"p_{name}": 0 for name in ("ADREG", "CREG", "OPMODEREG",
                                                 "INMODEREG", "CARRYINREG", "CARRYINSELREG")})
        enables = {f"i_{name}": ce for name in ("CEA2", "CEB2", "CEM", "CEP", "CEALUMODE", "CED")}
        enables.update({f"i_{name}": 0 for name in (
            "CEA1", "CEB1", "CEC", "CEAD", "CECTRL", "CEINMODE", "CECARRYIN")})
        resets = {f"i_{name}": 0 for name in (
            "RSTA", "RSTB", "RSTC", "RSTD", "RSTM", "RSTP", "RSTALLCARRYIN", "RSTALUMODE",
            "RSTCTRL", "RSTINMODE")}
        m.submodules.dsp = Instance(
            "DSP48E2", **regs, **enables, **resets,
            p_A_INPUT="DIRECT", p_B_INPUT="DIRECT", p_AMULTSEL="AD", p_BMULTSEL="B",
            p_PREADDINSEL="A", p_USE_MULT="MULTIPLY", p_USE_SIMD="ONE48",
            p_USE_PATTERN_DETECT="NO_PATDET",
            i_CLK=ClockSignal(), i_A=Cat(self.a, self.a[-1].replicate(A_PORT_BITS - A_BITS)),
            i_B=self.b, i_C=Const(0, P_BITS), i_D=self.d,
            i_PCIN=self.pcin if self.cascade else Const(0, P_BITS),
            i_ACIN=Const(0, A_PORT_BITS), i_BCIN=Const(0, B_BITS),
            i_CARRYIN=0, i_CARRYCASCIN=0, i_MULTSIGNIN=0, i_CARRYINSEL=Const(0, 3),
            i_OPMODE=Const(OPMODE_M_PLUS_PCIN if self.cascade else OPMODE_M, 9),
            i_ALUMODE=Cat(self.sub, self.sub, Const(0, 2)), i_INMODE=Const(INMODE_D_PLUS_A2, 5),
            o_P=self.p, o_PCOUT=self.pcout)
        return m


class DspCascade(wiring.Component):
    """``n`` elements in cascades of ``group``; ``taps[j]`` is the sum of cascade ``j``
    (elements ``j*group`` to ``(j+1)*group - 1``). Element ``i``'s inputs of a beat (``a``,
    ``d``, ``b``) come ``i % group`` cycles after the first's of its cascade, its ``sub`` one
    cycle later still."""

    def __init__(self, n: int, group: int):
        if n < 1 or group < 1 or n % group:
            raise ValueError(f"cascade of {n} elements cannot tap every {group}")
        self.n, self.group = n, group
        super().__init__({
            "a": In(data.ArrayLayout(signed(A_BITS), n)),
            "d": In(data.ArrayLayout(signed(A_BITS), n)),
            "b": In(data.ArrayLayout(signed(B_BITS), n)),
            "sub": In(data.ArrayLayout(1, n)),
            "ce": In(1),
            "taps": Out(data.ArrayLayout(signed(P_BITS), n // group)),
        })

    @property
    def latency(self) -> int:
        return chain_latency(self.group)

    def elaborate(self, platform):
        m = Module()
        pes = []
        for i in range(self.n):
            pe = Dsp48e2(cascade=i % self.group != 0)
            m.submodules[f"pe{i}"] = pe
            m.d.comb += [pe.a.eq(self.a[i]), pe.d.eq(self.d[i]), pe.b.eq(self.b[i]),
                         pe.sub.eq(self.sub[i]), pe.ce.eq(self.ce)]
            if pe.cascade:
                m.d.comb += pe.pcin.eq(pes[-1].pcout)
            pes.append(pe)
        for j in range(self.n // self.group):
            m.d.comb += self.taps[j].eq(pes[(j + 1) * self.group - 1].p)
        return m
