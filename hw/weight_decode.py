"""On-chip weight decode: packed low-bit codes -> signed multiplier operands.

Exactly :func:`llmacc.numerics.decode_weights`: W2 codes minus the group's zero-point, the
BitMoD mixed 3/4-bit types through the decode ROMs that the numerics module generates
(``MIXED3_LUT``/``MIXED4_LUT``, rows indexed by the group's type id), and symmetric INT8.
The three low-bit formats share one ROM of 16 rows: a group's row is chosen once
(:func:`decode_row`), so that each element's decode is one 8-input table per bit.
The per-group rescale of partial sums happens after the DSP chain (``hw/matrix_engine.py``).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from llmacc import numerics as N
from llmacc.isa import WeightFormat

OPERAND_BITS = 8  #: decoded operands: INT8 needs 8 bits, the low-bit formats 6


#: The low-bit formats' operands fit 6 bits (``|w| <= 16``); INT8 needs all 8.
LOW_BITS = N.W_OPERAND_MAX.bit_length() + 1
ROM_CODE_BITS = 4  #: the decode ROM reads a code's low 4 bits (the widest low-bit code)
#: The one decode ROM of the low-bit formats, a row of 16 operands per (format, aux): the six
#: mixed 3-bit types (a 3-bit code's fourth bit is ignored), the six mixed 4-bit types, and
#: W2 under each of its four zero-points (``code - z``, the code's low 2 bits).
ROM_ROWS = (
    [(WeightFormat.MIXED3, t, [int(N.MIXED3_LUT[t][c & 7]) for c in range(16)])
     for t in range(len(N.MIXED3_TYPES))]
    + [(WeightFormat.MIXED4, t, [int(N.MIXED4_LUT[t][c]) for c in range(16)])
       for t in range(len(N.MIXED4_TYPES))]
    + [(WeightFormat.W2, z, [(c & 3) - z for c in range(16)]) for z in range(4)])
ROW_BITS = (len(ROM_ROWS) - 1).bit_length()
assert len(ROM_ROWS) == 1 << ROW_BITS, "the decode rows fill a power of two"


def decode_row(fmt, aux) -> tuple[Signal, Signal]:
    """The ROM row of a group's ``aux`` (W2 zero-point or mixed type id) under ``fmt``, and
    whether the group decodes to zero (a mixed type id that names no type). Once per group:
    every element of the group shares it."""
    first = {f: min(i for i, (g, _, _) in enumerate(ROM_ROWS) if g is f)
             for f in (WeightFormat.MIXED3, WeightFormat.MIXED4, WeightFormat.W2)}
    tid = aux[:3]
    row = Mux(fmt == WeightFormat.W2, first[WeightFormat.W2] + aux[:2],
              Mux(fmt == WeightFormat.MIXED3, first[WeightFormat.MIXED3] + tid,
                  first[WeightFormat.MIXED4] + tid))
    mixed = (fmt == WeightFormat.MIXED3) | (fmt == WeightFormat.MIXED4)
    return row[:ROW_BITS], mixed & (tid >= len(N.MIXED3_TYPES))


def decode_code(code, int8, row, zero) -> Signal:
    """One code's operand: the ROM at (``row``, the code's low bits), 0 for a ``zero``
    group, or under ``int8`` the code itself as symmetric INT8 (-128 reads as -127)."""
    index = Cat(code[:ROM_CODE_BITS], row)
    entries = [v & ((1 << LOW_BITS) - 1) for _, _, ops in ROM_ROWS for v in ops]
    # one 256-entry table per operand bit, read by a bit select (a part-select of
    # non-power-of-two words would multiply the index)
    low = Cat(Const(sum((e >> b & 1) << i for i, e in enumerate(entries)), len(entries))
              .bit_select(index, 1) for b in range(LOW_BITS)).as_signed()
    wide = code[:8].as_signed()
    return Mux(int8, Mux(wide == -128, -127, wide), Mux(zero, 0, low))


def decode_operand(code, fmt, aux) -> Signal:
    """Combinational decode of one 8-bit ``code`` under ``fmt`` with the group's ``aux``
    (W2 zero-point or mixed type id)."""
    row, zero = decode_row(fmt, aux)
    return decode_code(code, fmt == WeightFormat.INT8, row, zero)


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
