"""On-chip weight decode: packed low-bit codes -> signed multiplier operands.

Exactly :func:`llmacc.numerics.decode_weights`: W2 codes minus the group's zero-point, the
BitMoD mixed 3/4-bit types through the decode ROMs that the numerics module generates
(``MIXED3_LUT``/``MIXED4_LUT``, rows indexed by the group's type id), and symmetric INT8.
The per-group rescale of partial sums happens after the DSP chain (``hw/matrix_engine.py``).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from llmacc import numerics as N
from llmacc.isa import WeightFormat

OPERAND_BITS = 8  #: decoded operands: INT8 needs 8 bits, the low-bit formats 6


def _rom(lut, type_id, code):
    """``lut[type_id][code]`` for an [8, 2**len(code)] table. The table is one constant read
    by one part-select: an :class:`Array` of constants would copy every use of the result into
    each of its entries."""
    flat = Cat(Const(int(v), signed(OPERAND_BITS)) for v in lut.reshape(-1).tolist())
    return flat.word_select(Cat(code, type_id), OPERAND_BITS).as_signed()


def decode_operand(code, fmt, aux) -> Signal:
    """Combinational decode of one 8-bit ``code`` under ``fmt`` with the group's ``aux``
    (W2 zero-point or mixed type id)."""
    w2 = (code[:2] - aux[:2]).as_signed()
    mixed3 = _rom(N.MIXED3_LUT, aux[:3], code[:3])
    mixed4 = _rom(N.MIXED4_LUT, aux[:3], code[:4])
    int8 = code[:8].as_signed()
    int8 = Mux(int8 == -128, -127, int8)  # symmetric INT8
    return Mux(fmt == WeightFormat.W2, w2,
               Mux(fmt == WeightFormat.MIXED3, mixed3,
                   Mux(fmt == WeightFormat.MIXED4, mixed4, int8)))


def decoder_layouts(lanes: int) -> tuple[data.StructLayout, data.StructLayout]:
    inp = data.StructLayout({"fmt": WeightFormat, "codes": data.ArrayLayout(8, lanes),
                             "aux": data.ArrayLayout(8, lanes)})
    out = data.StructLayout({"ops": data.ArrayLayout(signed(OPERAND_BITS), lanes)})
    return inp, out


class WeightDecoder(wiring.Component):
    """``lanes`` codes per cycle -> operands, one register stage, stream in and out."""

    def __init__(self, lanes: int):
        self.lanes = lanes
        inp, out = decoder_layouts(lanes)
        super().__init__({"i": In(stream.Signature(inp)), "o": Out(stream.Signature(out))})

    def elaborate(self, platform):
        m = Module()
        en = ~self.o.valid | self.o.ready
        m.d.comb += self.i.ready.eq(en)
        with m.If(en):
            m.d.sync += self.o.valid.eq(self.i.valid)
            for lane in range(self.lanes):
                m.d.sync += self.o.payload.ops[lane].eq(decode_operand(
                    self.i.payload.codes[lane], self.i.payload.fmt, self.i.payload.aux[lane]))
        return m
