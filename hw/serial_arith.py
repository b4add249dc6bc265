"""Bit-serial divider and square root: one result bit per cycle, for the per-row scalars of
the SFU (softmax reciprocal, RMSNorm ``isqrt`` and inverse, quantisation scales).

These run once per row, so a small iterative circuit beats a wide combinational one. Both
are exact: the divider gives ``floor(num / den)`` (all ones for ``den == 0``), the square root
``floor(sqrt(x))`` (``llmacc.numerics.isqrt``).
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


class SerialDivider(wiring.Component):
    """Restoring division of ``num_bits``-bit ``num`` by ``den_bits``-bit ``den``.

    Pulse ``start`` with the operands; ``busy`` is high for ``num_bits`` cycles, after which
    ``quotient`` holds until the next start.
    """

    def __init__(self, num_bits: int, den_bits: int):
        self.num_bits, self.den_bits = num_bits, den_bits
        super().__init__({"start": In(1), "num": In(num_bits), "den": In(den_bits),
                          "busy": Out(1), "quotient": Out(num_bits)})

    def elaborate(self, platform):
        m = Module()
        rem = Signal(self.den_bits + 1)
        den = Signal(self.den_bits)
        count = Signal(range(self.num_bits + 1))
        trial = Cat(self.quotient[-1], rem)
        fits = trial >= den
        m.d.comb += self.busy.eq(count != 0)
        with m.If(self.start):
            m.d.sync += [rem.eq(0), den.eq(self.den), self.quotient.eq(self.num),
                         count.eq(self.num_bits)]
        with m.Elif(self.busy):
            m.d.sync += [rem.eq(trial - (fits * den)),
                         self.quotient.eq(Cat(fits, self.quotient[:-1])), count.eq(count - 1)]
        return m


class SerialSqrt(wiring.Component):
    """Digit-by-digit integer square root of an ``in_bits``-bit ``x`` (``in_bits`` even):
    ``busy`` for ``in_bits // 2`` cycles after ``start``, then ``root`` holds."""

    def __init__(self, in_bits: int):
        if in_bits % 2:
            raise ValueError(f"SerialSqrt needs an even input width, got {in_bits}")
        self.in_bits = in_bits
        super().__init__({"start": In(1), "x": In(in_bits), "busy": Out(1),
                          "root": Out(in_bits // 2)})

    def elaborate(self, platform):
        m = Module()
        half = self.in_bits // 2
        x = Signal(self.in_bits)
        rem = Signal(half + 2)
        count = Signal(range(half + 1))
        shifted = Cat(x[-2:], rem)  # rem * 4 + next two bits
        trial = Cat(1, 0, self.root)  # root * 4 + 1
        fits = shifted >= trial
        m.d.comb += self.busy.eq(count != 0)
        with m.If(self.start):
            m.d.sync += [x.eq(self.x), rem.eq(0), self.root.eq(0), count.eq(half)]
        with m.Elif(self.busy):
            m.d.sync += [x.eq(x << 2), rem.eq(shifted - fits * trial),
                         self.root.eq(Cat(fits, self.root[:-1])), count.eq(count - 1)]
        return m
