"""The ISA declaration: round trips over random fields, illegal encodings, generated docs."""

from pathlib import Path

import pytest
from amaranth.hdl import Shape
from amaranth.lib import enum
from hypothesis import given, settings
from hypothesis import strategies as st

from llmacc import isa, isa_doc

ROOT = Path(__file__).resolve().parent.parent


def _field_strategy(layout, name, fshape):
    if isinstance(fshape, type) and issubclass(fshape, enum.Enum):
        return st.sampled_from(list(fshape))
    lo, hi = isa._field_range(layout, name, Shape.cast(fshape))
    return st.integers(lo, hi)


@st.composite
def instructions(draw, opcode=None):
    op = draw(st.sampled_from(list(isa.Opcode))) if opcode is None else opcode
    layout = isa.PAYLOAD[op]
    fields = {name: draw(_field_strategy(layout, name, f.shape))
              for name, f in layout.as_shape()}
    if op is isa.Opcode.MATVEC:
        fields.update(m=1)
    return isa.Instruction(op, fields, draw(st.integers(0, 15)), draw(st.integers(0, 15)))


@pytest.mark.parametrize("opcode", list(isa.Opcode), ids=lambda o: o.name)
@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_round_trip_every_class(opcode, data):
    insn = data.draw(instructions(opcode))
    word = isa.encode(insn)
    assert 0 <= word < 1 << isa.WORD_BITS
    back = isa.decode(word)
    assert back == insn
    assert isa.encode(back) == word


@settings(max_examples=100, deadline=None)
@given(st.lists(instructions(), max_size=20))
def test_program_round_trip(program):
    blob = isa.encode_program(program)
    assert len(blob) == isa.WORD_BYTES * len(program)
    assert isa.decode_program(blob) == program


def test_every_layout_fits_the_word():
    for layout in isa.PAYLOAD.values():
        assert layout.as_shape().size <= isa.PAYLOAD_BITS
    assert isa.InstructionWord.as_shape().size == isa.WORD_BITS


def test_fields_are_readable_as_attributes():
    insn = isa.make(isa.Opcode.LOAD, buf=isa.Buffer.KV, rows=7, wait=0b0010)
    assert insn.buf is isa.Buffer.KV and insn.rows == 7 and insn.wait == 2
    assert insn.unit is isa.Unit.LOAD
    with pytest.raises(AttributeError):
        _ = insn.nonexistent


@pytest.mark.parametrize("code", range(len(isa.Opcode), 16))
def test_unknown_opcode_is_an_error(code):
    with pytest.raises(isa.IllegalInstruction, match="unknown opcode"):
        isa.decode(code)


@pytest.mark.parametrize("layout,name", [
    (layout, name) for layout in isa.LAYOUTS
    for name, f in layout.as_shape()
    if not (isinstance(f.shape, type) and issubclass(f.shape, enum.Enum))
], ids=lambda v: getattr(v, "__name__", v))
def test_out_of_range_field_is_an_error(layout, name):
    op = next(op for op, lay in isa.PAYLOAD.items() if lay is layout and op != isa.Opcode.MATVEC)
    lo, hi = isa._field_range(layout, name, Shape.cast(layout.as_shape()[name].shape))
    for bad in (hi + 1, lo - 1):
        with pytest.raises(isa.IllegalInstruction, match=name):
            isa.encode(isa.Instruction(op, {name: bad}))


def test_header_fields_are_checked():
    with pytest.raises(isa.IllegalInstruction, match="wait"):
        isa.encode(isa.Instruction(isa.Opcode.SYS, {}, wait=16))
    with pytest.raises(isa.IllegalInstruction, match="opcode"):
        isa.encode(isa.Instruction(7, {}))


def test_unknown_enum_value_is_an_error():
    sfu_func = isa.SfuFields.as_shape()["func"]
    word = isa.encode(isa.make(isa.Opcode.SFU))
    bad = word | 0xF << (isa.Header.as_shape().size + sfu_func.offset)
    with pytest.raises(isa.IllegalInstruction, match="SfuFunc"):
        isa.decode(bad)
    with pytest.raises(isa.IllegalInstruction, match="Buffer"):
        isa.encode(isa.Instruction(isa.Opcode.LOAD, {"buf": 6}))
    with pytest.raises(isa.IllegalInstruction, match="expected SfuFunc"):
        isa.encode(isa.Instruction(isa.Opcode.SFU, {"func": isa.SysFunc.HALT}))


def test_reserved_bits_must_be_zero():
    word = isa.encode(isa.make(isa.Opcode.SYS, func=isa.SysFunc.HALT))
    with pytest.raises(isa.IllegalInstruction, match="reserved"):
        isa.decode(word | 1 << (isa.WORD_BITS - 1))


def test_bad_values_and_names():
    with pytest.raises(isa.IllegalInstruction, match="unknown fields"):
        isa.encode(isa.Instruction(isa.Opcode.SYS, {"bogus": 1}))
    with pytest.raises(isa.IllegalInstruction, match="integer"):
        isa.encode(isa.Instruction(isa.Opcode.SYS, {"imm": 1.5}))
    with pytest.raises(isa.IllegalInstruction, match="integer"):
        isa.encode(isa.Instruction(isa.Opcode.SYS, {"imm": True}))
    with pytest.raises(isa.IllegalInstruction, match="128-bit"):
        isa.decode(1 << isa.WORD_BITS)
    with pytest.raises(isa.IllegalInstruction, match="out_pitch"):
        isa.make(isa.Opcode.MATMAT, m=4, out_pitch=1 << 11)


def test_matvec_needs_one_token():
    with pytest.raises(isa.IllegalInstruction, match="MATVEC"):
        isa.make(isa.Opcode.MATVEC, m=2, k=64)
    assert isa.make(isa.Opcode.MATVEC, m=1, k=64).m == 1


def test_truncated_program_is_an_error():
    blob = isa.encode_program([isa.make(isa.Opcode.SYS, func=isa.SysFunc.HALT)])
    with pytest.raises(isa.IllegalInstruction, match="whole number"):
        isa.decode_program(blob[:-1])
    with pytest.raises(isa.IllegalInstruction, match="word 1"):
        isa.decode_program(blob + (15).to_bytes(isa.WORD_BYTES, "little"))


def test_isa_doc_is_current():
    text = (ROOT / "docs" / "ISA.md").read_text()
    assert text == isa_doc.render(), "docs/ISA.md is stale: run `make docs`"


@settings(max_examples=30, deadline=None)
@given(st.lists(instructions(), min_size=1, max_size=8))
def test_amaranth_view_decodes_like_python(program):
    """The RTL's typed view of a word (``Signal(InstructionWord)``) sees the same fields."""
    from amaranth.hdl import Module, Signal
    from amaranth.sim import Simulator

    word = Signal(isa.InstructionWord)
    m = Module()
    m.d.comb += Signal().eq(word.as_value()[0])  # keep the signal in the design
    # the union member that views each payload layout, from the declaration itself
    views = {f.shape: name for name, f in isa.Payload.as_shape() if name != "raw"}

    async def bench(ctx):
        for insn in program:
            ctx.set(word.as_value(), isa.encode(insn))
            header = word.header
            assert ctx.get(header.opcode) == insn.opcode
            assert ctx.get(header.wait) == insn.wait and ctx.get(header.release) == insn.release
            payload = getattr(word.payload, views[isa.PAYLOAD[insn.opcode]])
            for name, value in insn.fields.items():
                assert ctx.get(getattr(payload, name)) == value, name

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


def test_sfu_table_names_real_references_and_fields():
    from llmacc import numerics

    for func, spec in isa.SFU_FUNCTIONS.items():
        assert callable(getattr(numerics, spec.reference, None)), (func, spec.reference)
        assert set(spec.fields) | set(spec.ranges) <= {"shift", "imm", "imm2"}, func
        for name, (lo, hi) in spec.ranges.items():
            fld = isa.SfuFields.as_shape()[name]
            assert -(1 << fld.width - 1) <= lo <= hi < 1 << fld.width - 1, (func, name)
    assert isa.sfu_funcs(operands="binary") == (isa.SfuFunc.ADD, isa.SfuFunc.MUL)
