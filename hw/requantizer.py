"""Requantizer: ``y = clamp(round_shift(x * mult, shift), -limit, limit)``, one pipeline stage.

The element step of QUANT8/KVQUANT (``llmacc.numerics.quantize_symmetric``): a wide value
times the reciprocal of its slice's scale mantissa, rounded half away from zero and saturated
symmetrically. Also the toolchain smoke test's device (Amaranth -> Verilog -> Verilator).
"""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.fixed_point import round_shift_right, saturate
from llmacc import numerics


class Requantizer(wiring.Component):
    """Pipelined requantizer.

    Parameters
    ----------
    in_bits : width of the signed input ``x``.
    mult_bits : width of the unsigned multiplier ``mult``.
    out_bits : width of the signed output ``y``; saturation is symmetric.
    """

    def __init__(self, *, in_bits: int = numerics.WIDE_BITS,
                 mult_bits: int = numerics.RECIP_BITS - numerics.SCALE_BITS + 2,
                 out_bits: int = numerics.ACT_BITS):
        if in_bits < 2 or mult_bits < 1 or not 2 <= out_bits <= in_bits:
            raise ValueError(f"bad widths in={in_bits} mult={mult_bits} out={out_bits}")
        self._in_bits, self._mult_bits, self._out_bits = in_bits, mult_bits, out_bits
        self._shift_bits = (in_bits + mult_bits).bit_length()
        super().__init__({
            "x": In(signed(in_bits)),
            "mult": In(mult_bits),
            "shift": In(self._shift_bits),
            "valid_in": In(1),
            "y": Out(signed(out_bits)),
            "valid_out": Out(1),
        })

    @property
    def in_bits(self) -> int:
        return self._in_bits

    @property
    def mult_bits(self) -> int:
        return self._mult_bits

    @property
    def out_bits(self) -> int:
        return self._out_bits

    @property
    def shift_bits(self) -> int:
        return self._shift_bits

    def elaborate(self, platform):
        m = Module()
        prod = Signal(signed(self._in_bits + self._mult_bits + 1))
        m.d.comb += prod.eq(self.x * self.mult)
        m.d.sync += [
            self.y.eq(saturate(round_shift_right(prod, self.shift), self._out_bits,
                               symmetric=True)),
            self.valid_out.eq(self.valid_in),
        ]
        return m


def model(x: int, mult: int, shift: int, out_bits: int = numerics.ACT_BITS) -> int:
    """Golden model, from the numerics contract."""
    y = numerics.saturate(numerics.round_shift(x * mult, shift), out_bits, symmetric=True)
    return int(y)
