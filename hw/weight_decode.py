"""On-chip weight decode: packed codes -> sign-magnitude multiplier operands.

Exactly :func:`llmacc.numerics.decode_weights`: W2 codes minus the group's zero-point, the
BitMoD mixed 3/4-bit types (``MIXED3_LUT``/``MIXED4_LUT``, rows indexed by the group's type
id), and symmetric INT8. The operand leaves as a magnitude and a sign, ``neg``: the DSP48E2
subtracts a negated product from the cascade (ALUMODE ``Z - (X + Y)``, :mod:`hw.dsp48e2`), so
no element spends LUTs on negation, and the decode splits by who can share it:

* :func:`slot_decode`, once per group and lane (a slot of the chain): the group's magnitude
  class (``MAG_CLASSES``: INT3, FP3, INT4/INT8, FP4 and W2 under each zero-point), its
  special value (BitMoD's extra value replaces "negative zero") and where the code's sign
  bit sits;
* :func:`element_decode`, once per weight: the class's magnitude of the code's low three
  bits, the special value, the sign; INT8 passes its code through. Each magnitude bit is
  one 6-input function of the class and three code bits: about 19 LUTs per weight where
  one 16-row table per operand bit took 41 (yosys ``synth_xilinx``, 16 weights and their
  group).

A mixed type id that names no type decodes its whole group to zero: :func:`slot_decode`
flags it and the lane zeroes the group's scale instead (exact: its sum counts ``0 *``).
"""

from __future__ import annotations

import functools

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from llmacc import numerics as N
from llmacc.isa import WeightFormat

OPERAND_BITS = 8  #: decoded operands: INT8 needs 8 bits (sign included)
CODE_BITS = 8  #: a weight code as the lanes take it (the widest format's)
MAG_BITS = N.W_OPERAND_MAX.bit_length()  #: magnitudes of the low-bit formats (up to 16)
LOW_CODE = 3  #: a magnitude class reads the code's low three bits


def _sign_magnitude(lut, sign_bit: int) -> list[tuple[tuple[int, ...], int]]:
    """Per type of a mixed family: (magnitudes over the code's low 3 bits, special value),
    checked to be sign-magnitude (the negative half mirrors the positive but for the
    special value at "negative zero")."""
    half = 1 << sign_bit
    rows = []
    for row in lut.tolist():
        pos = row[:half]
        if pos[0] != 0 or any(row[half + i] != -pos[i] for i in range(1, half)):
            raise AssertionError(f"decode row {row} is not sign-magnitude")
        rows.append((tuple(pos[c % half] for c in range(1 << LOW_CODE)), row[half]))
    return rows


_M3 = _sign_magnitude(N.MIXED3_LUT[:len(N.MIXED3_TYPES)], 2)
_M4 = _sign_magnitude(N.MIXED4_LUT[:len(N.MIXED4_TYPES)], 3)
_W2_ZPS = 4
#: W2 under zero-point z: |(c & 3) - z| and the sign (c & 3) < z
_W2 = [tuple(abs((c & 3) - z) for c in range(1 << LOW_CODE)) for z in range(_W2_ZPS)]
_W2_NEG = [tuple(int((c & 3) < z) for c in range(1 << LOW_CODE)) for z in range(_W2_ZPS)]
_INT8_LOW = tuple(range(1 << LOW_CODE))  #: INT8 passes its low bits through

#: The distinct magnitude tables (over a code's low 3 bits) of every format, each with the
#: sign table it needs (only W2's sign depends on the code's low bits).
MAG_CLASSES: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = tuple(dict.fromkeys(
    [(mags, (0,) * 8) for mags, _ in _M3 + _M4] + list(zip(_W2, _W2_NEG, strict=True))
    + [(_INT8_LOW, (0,) * 8)]))
CLASS_BITS = (len(MAG_CLASSES) - 1).bit_length()
assert CLASS_BITS <= 3, "a class and a code's low three bits must fit one 6-input LUT"
assert max(v for m, _ in MAG_CLASSES for v in m) < 1 << MAG_BITS
assert max(abs(special) for _, special in _M3 + _M4) < 1 << MAG_BITS


#: Where a code's sign bit is: none (W2, INT8), bit 2 (MIXED3), bit 3 (MIXED4).
SIGN_NONE, SIGN_BIT2, SIGN_BIT3 = 0, 1, 2

#: What a group tells each of its weights' decode (:func:`slot_decode`).
SLOT_DECODE = data.StructLayout({
    "cls": CLASS_BITS,  #: index into MAG_CLASSES
    "sign_at": 2,  #: SIGN_NONE, SIGN_BIT2 or SIGN_BIT3
    "smag": MAG_BITS,  #: the special value's magnitude (0: no special value)
    "sneg": 1,  #: and its sign
    "int8": 1,
    "zero": 1,  #: a mixed type id that names no type: the group decodes to zero
})

#: Every class's magnitudes and signs, one after another: the tables element_decode reads
_MAG_TABLE = [v for mags, _ in MAG_CLASSES for v in mags]
_NEG_TABLE = [v for _, negs in MAG_CLASSES for v in negs]


@functools.cache
def _slot_entries():
    """(format, aux) -> the SLOT_DECODE field values, every valid combination."""
    cls = {key: i for i, key in enumerate(MAG_CLASSES)}
    out = {}
    for fmt, rows, sign_at in ((WeightFormat.MIXED3, _M3, SIGN_BIT2),
                               (WeightFormat.MIXED4, _M4, SIGN_BIT3)):
        for tid, (mags, special) in enumerate(rows):
            out[fmt, tid] = {"cls": cls[mags, (0,) * 8], "sign_at": sign_at,
                             "smag": abs(special), "sneg": int(special < 0)}
    for z in range(_W2_ZPS):
        out[WeightFormat.W2, z] = {"cls": cls[_W2[z], _W2_NEG[z]]}
    out[WeightFormat.INT8, 0] = {"cls": cls[_INT8_LOW, (0,) * 8], "int8": 1}
    return out


def slot_fields(fmt: WeightFormat, aux: int) -> dict:
    """The SLOT_DECODE field values :func:`slot_decode` gives a group (for test feeders)."""
    entries = _slot_entries()
    if fmt is WeightFormat.INT8:
        return entries[fmt, 0]
    key = (fmt, aux & (_W2_ZPS - 1) if fmt is WeightFormat.W2 else aux)
    return entries.get(key, {"zero": 1})


def slot_decode(m: Module, fmt, aux, name: str) -> data.View:
    """A group's SLOT_DECODE from the beat's ``fmt`` and the group's ``aux`` (W2 zero-point
    or mixed type id), combinational: once per slot, shared by its weights. One table of
    (format, low 3 aux bits): each field bit is one 5-input function."""
    aux_bits = max(a for _, a in _slot_entries()).bit_length()
    table = []
    for f in WeightFormat:
        for a in range(1 << aux_bits):
            table.append(SLOT_DECODE.const(slot_fields(f, a)).as_value().value)
    s = Signal(SLOT_DECODE, name=name)
    index = Cat(aux[:aux_bits], fmt)
    m.d.comb += s.as_value().eq(Cat(_table_bit(table, b, index)
                                    for b in range(SLOT_DECODE.size)))
    return s


def _table_bit(table: list[int], bit: int, index):
    """Bit ``bit`` of ``table[index]`` (a constant table read by a bit select)."""
    return Const(sum((v >> bit & 1) << i for i, v in enumerate(table)),
                 len(table)).bit_select(index, 1)


def element_decode(code, slot: data.View) -> dict:
    """One code's operand under its group's ``slot`` (:func:`slot_decode`): ``mag``
    (``OPERAND_BITS``, signed) and ``neg``, the operand being ``(-1)**neg * mag`` (INT8:
    ``mag`` is the signed code, ``neg`` 0). Code bits above the format's width are
    ignored."""
    low = Cat(code[:LOW_CODE], slot.cls)  # one 6-input function per magnitude bit
    mag = Cat(_table_bit(_MAG_TABLE, b, low) for b in range(MAG_BITS))
    sign = Mux(slot.sign_at == SIGN_BIT3, code[3], Mux(slot.sign_at == SIGN_BIT2, code[2], 0))
    zero_low = Mux(slot.sign_at == SIGN_BIT3, code[:3] == 0, code[:2] == 0)
    special = sign & zero_low  # "negative zero" holds the type's special value
    low_mag = Mux(special, slot.smag, mag)
    neg = Mux(special, slot.sneg, sign | _table_bit(_NEG_TABLE, 0, low))
    wide = code[:8]
    int8_mag = Cat(wide[0] | (wide == 0x80), wide[1:8])  # INT8 -128 reads as -127
    return {"mag": Mux(slot.int8, int8_mag, low_mag), "neg": neg}


def decode_operand(m: Module, code, fmt, aux, name: str = "slot"):
    """The signed operand of one ``code`` under ``fmt`` and ``aux`` (0 for a zero group):
    the reference composition of :func:`slot_decode` and :func:`element_decode`."""
    slot = slot_decode(m, fmt, aux, name)
    op = element_decode(code, slot)
    mag = op["mag"].as_signed()
    return Mux(slot.zero, 0, Mux(op["neg"], -mag, mag))


def decoder_layouts(lanes: int) -> tuple[data.StructLayout, data.StructLayout]:
    inp = data.StructLayout({"fmt": WeightFormat, "codes": data.ArrayLayout(8, lanes),
                             "aux": data.ArrayLayout(8, lanes)})
    out = data.StructLayout({"ops": data.ArrayLayout(signed(OPERAND_BITS), lanes)})
    return inp, out


class WeightDecoder(wiring.Component):
    """``lanes`` codes per cycle -> signed operands, one register stage, stream in and out:
    the decode on its own, tested against ``numerics.decode_weights``."""

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
                    m, self.i.payload.codes[lane], self.i.payload.fmt,
                    self.i.payload.aux[lane], f"slot{lane}"))
        return m
