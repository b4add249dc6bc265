"""Special-function unit, element stage: the per-element arithmetic of the SFU functions.

One element (or, for RoPE, one interleaved pair) per cycle, selected by :class:`SfuFunc`,
each exactly the numerics contract:

* ADD: ``add(a, b, shift)``; MUL: ``mul(a, b, shift)`` (residual add, SwiGLU product, key
  transform);
* SILU: ``silu(a, imm, imm2)`` with the sigmoid ROM ``numerics.SIGMOID_LUT`` and its
  interpolation; GELU: ``gelu(a, imm, imm2)``, a cubic into the same kind of sigmoid;
* ROPE: the pair ``(a, b)`` rotated by ``cos = c[0:16]``, ``sin = c[16:32]`` (Q1.14);
* SOFTMAX: the exponential step ``exp2_neg(a)`` with ``numerics.EXP2_LUT`` (``a = max - s``);
* EMBED: ``sat32(round_shift(a * b, shift))`` (INT8 code times its group mantissa).

The row reductions around these steps (softmax max/sum/reciprocal, RMSNorm, QUANT8/KVQUANT
scales) are not in this block.
"""

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.fixed_point import clamp, round_shift, saturate
from llmacc import layout as L
from llmacc import numerics as N
from llmacc.isa import SfuFunc, SfuStage, sfu_funcs

W = N.WIDE_BITS

ElementIn = data.StructLayout({
    "func": SfuFunc, "a": signed(W), "b": signed(W), "c": signed(W),
    "shift": signed(18), "imm": signed(16), "imm2": signed(12),
})
ElementOut = data.StructLayout({"y0": signed(W), "y1": signed(W)})


def _interp(m: Module, lut, idx, frac, frac_bits: int):
    """Linear interpolation between ROM entries ``idx`` and ``idx + 1``. The ROM is a memory
    with two asynchronous read ports (LUT ROM on an FPGA; compact Verilog, unlike a mux)."""
    rom = Memory(shape=signed(20), depth=len(lut), init=[int(v) for v in lut.tolist()])
    m.submodules += rom
    lo_port, hi_port = rom.read_port(domain="comb"), rom.read_port(domain="comb")
    last = len(lut) - 1
    m.d.comb += [lo_port.addr.eq(idx), hi_port.addr.eq(Mux(idx >= last, last, idx + 1))]
    lo, hi = lo_port.data, hi_port.data
    return lo + round_shift((hi - lo) * frac, Const(frac_bits, 5), 0)


def exp2_neg(m: Module, d):
    """``numerics.exp2_neg`` for ``d >= 0`` (Q15.16 in, Q16 out)."""
    low_bits = N.SCORE_FRAC - N.EXP2_LUT_BITS
    k = d >> N.SCORE_FRAC
    f = d[:N.SCORE_FRAC]
    y = _interp(m, N.EXP2_LUT, f[low_bits:], f[:low_bits], low_bits)
    return Mux(k > 32, 0, round_shift(y, Mux(k > 32, 32, k)[:7].as_signed(), 0))


def add(a, b, shift):
    """``numerics.add(a, b, shift)``: ``sat32(a + round_shift(b, shift))``."""
    return saturate(a + round_shift(b, shift, W + 1), W)


def mul(a, b, shift):
    """``numerics.mul(a, b, shift)``: ``sat32(round_shift(sat24(a) * sat24(b), shift))``."""
    prod = saturate(a, N.MUL_IN_BITS) * saturate(b, N.MUL_IN_BITS)
    return saturate(round_shift(prod, shift, W + 1), W)


def sigmoid_q16(m: Module, x):
    """``numerics.sigmoid_q16(x)`` (Q.13 in, Q16 out) from the sigmoid ROM."""
    lo = -N.SIGMOID_RANGE << N.SIGMOID_IN_FRAC
    xq = (clamp(x, lo, -lo - 1) - lo)[:N.SIGMOID_IN_FRAC + 6]
    return _interp(m, N.SIGMOID_LUT, xq[N.SIGMOID_INTERP_BITS:], xq[:N.SIGMOID_INTERP_BITS],
                   N.SIGMOID_INTERP_BITS)


def silu(m: Module, v, f_in, f_out):
    """``numerics.silu(v, f_in, f_out)``."""
    sig = sigmoid_q16(m, round_shift(v, (f_in - N.SIGMOID_IN_FRAC), W + 1))
    return saturate(round_shift(v * sig, 16 + f_in - f_out, W + 1), W)


def gelu(m: Module, v, f_in, f_out):
    """``numerics.gelu(v, f_in, f_out)``: the cubic of the clamped Q.13 input, then the
    sigmoid gate as SiLU's."""
    limit = N.GELU_CLAMP << N.SIGMOID_IN_FRAC
    frac = Const(N.SIGMOID_IN_FRAC, 5)
    # named steps: each is used more than once, and a signal keeps its expression shared
    x = Signal(signed(limit.bit_length() + 1), name="gelu_x")
    square = Signal(signed(2 * limit.bit_length() + 1), name="gelu_square")
    cube = Signal(signed(3 * limit.bit_length() + 1), name="gelu_cube")
    argument = Signal(signed(W), name="gelu_argument")
    m.d.comb += [
        x.eq(clamp(round_shift(v, (f_in - N.SIGMOID_IN_FRAC), W + 1), -limit, limit - 1)),
        square.eq(round_shift(x * x, frac, 0)),
        cube.eq(round_shift(square * x, frac, 0)),
        argument.eq(round_shift(N.GELU_C1 * x + N.GELU_C3 * cube,
                                Const(N.GELU_COEF_FRAC, 5), 0)),
    ]
    return saturate(round_shift(v * sigmoid_q16(m, argument), 16 + f_in - f_out, W + 1), W)


def element_results(m: Module, p) -> dict[SfuFunc, tuple]:
    """What each function computes from the element stage's input ``p``: ``(y0, y1)``, the
    second only for RoPE's pair."""
    cos, sin = p.c[:16].as_signed(), p.c[16:].as_signed()
    trig = Const(N.TRIG_FRAC, 5)
    return {
        SfuFunc.ADD: (add(p.a, p.b, p.shift), 0),
        SfuFunc.MUL: (mul(p.a, p.b, p.shift), 0),
        SfuFunc.SILU: (silu(m, p.a, p.imm, p.imm2), 0),
        SfuFunc.GELU: (gelu(m, p.a, p.imm, p.imm2), 0),
        SfuFunc.ROPE: (saturate(round_shift(p.a * cos - p.b * sin, trig, 0), W),
                       saturate(round_shift(p.a * sin + p.b * cos, trig, 0), W)),
        SfuFunc.SOFTMAX: (exp2_neg(m, p.a), 0),  # the row stage's exponential step
        SfuFunc.EMBED: (saturate(round_shift(p.a * p.b, p.shift, W + 1), W), 0),
    }


class ElementSfu(wiring.Component):
    """The element stage as a stream block (one register stage). Every element-stage
    function of ``isa.SFU_FUNCTIONS`` must have a result here (checked when elaborated)."""

    i: In(stream.Signature(ElementIn))
    o: Out(stream.Signature(ElementOut))

    def elaborate(self, platform):
        m = Module()
        p = self.i.payload
        en = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(en)
        y0, y1 = Signal(signed(W)), Signal(signed(W))
        results = element_results(m, p)
        missing = set(sfu_funcs(stage=SfuStage.ELEMENT)) - set(results)
        if missing:
            names = sorted(f.name for f in missing)
            raise ValueError(f"the element stage does not compute {names}")
        with m.Switch(p.func):
            for func, (first, second) in results.items():
                with m.Case(func):
                    m.d.comb += [y0.eq(first), y1.eq(second)]
        with m.If(en):
            m.d.sync += [self.o.valid.eq(self.i.valid), self.o.payload.y0.eq(y0),
                         self.o.payload.y1.eq(y1)]
        return m


#: The functions :class:`BinarySfu` computes lane by lane, each as the element stage does.
BINARY_FUNCS = {SfuFunc.ADD: add, SfuFunc.MUL: mul}


def rope_lanes(a, b) -> list:
    """RoPE on a beat, as the element stage rotates a pair: lanes ``2k`` and ``2k + 1`` hold
    pair ``k``'s elements, ``b[2k]`` its cosine and ``b[2k + 1]`` its sine (the RoPE row's
    TRIG entries in their order, ``layout.rope_entry``), so each lane reads its neighbour."""
    trig, t = Const(N.TRIG_FRAC, 5), L.TRIG.width
    ys = []
    for k in range(0, len(a), 2):
        x0, x1 = a[k], a[k + 1]
        cos, sin = b[k][:t].as_signed(), b[k + 1][:t].as_signed()
        ys += [saturate(round_shift(x0 * cos - x1 * sin, trig, 0), W),
               saturate(round_shift(x0 * sin + x1 * cos, trig, 0), W)]
    return ys


def binary_beat(lanes: int) -> data.StructLayout:
    """A beat of ``count`` element pairs in the low lanes (:class:`BinarySfu`'s input)."""
    return data.StructLayout({
        "func": SfuFunc, "a": data.ArrayLayout(signed(W), lanes),
        "b": data.ArrayLayout(signed(W), lanes), "shift": signed(18),
        "count": range(lanes + 1),
    })


def binary_out(lanes: int) -> data.StructLayout:
    """A beat of ``count`` results in the low lanes."""
    return data.StructLayout({"y": data.ArrayLayout(signed(W), lanes),
                              "count": range(lanes + 1)})


class BinarySfu(wiring.Component):
    """ADD and MUL on ``lanes`` element pairs a beat, and ROPE on ``lanes / 2`` interleaved
    pairs with their cosines and sines in ``b`` (:func:`rope_lanes`); one register stage:
    the SFU unit's path for the functions whose operands it reads a run at a time."""

    def __init__(self, lanes: int):
        if lanes % 2:
            raise ValueError(f"{lanes} lanes do not hold whole RoPE pairs")
        self.lanes = lanes
        super().__init__({"i": In(stream.Signature(binary_beat(lanes))),
                          "o": Out(stream.Signature(binary_out(lanes)))})

    def elaborate(self, platform):
        missing = set(sfu_funcs(operands="binary")) - set(BINARY_FUNCS)
        if missing:
            raise ValueError(f"the binary lanes do not compute {sorted(f.name for f in missing)}")
        m = Module()
        p, out = self.i.payload, self.o.payload
        en = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(en)
        with m.If(en):
            m.d.sync += [self.o.valid.eq(self.i.valid), out.count.eq(p.count)]
            with m.Switch(p.func):
                for func, result in BINARY_FUNCS.items():
                    with m.Case(func):
                        m.d.sync += [y.eq(result(a, b, p.shift))
                                     for y, a, b in zip(out.y, p.a, p.b, strict=True)]
                with m.Case(SfuFunc.ROPE):
                    m.d.sync += [y.eq(r) for y, r in zip(out.y, rope_lanes(p.a, p.b),
                                                         strict=True)]
        return m
