"""The instruction set, declared once.

Every instruction is one 128-bit word: a 12-bit header (opcode and the dependency-token masks)
and a 116-bit payload whose layout depends on the opcode. The layouts below are Amaranth
``data.Struct`` classes, so the same declaration gives

* the compiler's encoder and the emulator's decoder (:func:`encode`, :func:`decode`), which
  walk the layouts' field offsets and widths;
* the RTL decoder, which views a ``Signal(InstructionWord)`` through the same layouts;
* ``docs/ISA.md`` (``python -m llmacc.isa_doc``), checked for staleness by a test.

Out-of-range fields, unknown opcodes, unknown enum values and non-zero reserved bits are
errors (:class:`IllegalInstruction`), never silent wraps.

Dependency tokens (as in FlightLLM): each instruction runs on one :class:`Unit`. Before it
issues, it consumes one token from every unit set in ``wait``; when it completes, it sends one
token to every unit set in ``release``. Units otherwise run decoupled, in program order per
unit.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from amaranth.hdl import Shape, signed
from amaranth.lib import data, enum

#: Version of the instruction set; the hardware ID register reports it.
ISA_VERSION = 1
#: Bits in one instruction word.
WORD_BITS = 128
WORD_BYTES = WORD_BITS // 8


class Opcode(enum.Enum, shape=4):
    """Instruction classes."""

    SYS = 0  #: system: nop, halt, sync, run-time registers
    LOAD = 1  #: external memory -> on-chip buffer
    STORE = 2  #: on-chip buffer -> external memory
    MATVEC = 3  #: matrix x vector (decode)
    MATMAT = 4  #: matrix x matrix (prefill)
    SFU = 5  #: special-function unit


class Unit(enum.Enum, shape=2):
    """Decoupled execution units; bit ``i`` of ``wait``/``release`` names unit ``i``."""

    LOAD = 0
    COMPUTE = 1
    SFU = 2
    STORE = 3


#: The unit each opcode runs on (SYS runs in the controller and names no unit).
UNIT_OF = {
    Opcode.LOAD: Unit.LOAD,
    Opcode.STORE: Unit.STORE,
    Opcode.MATVEC: Unit.COMPUTE,
    Opcode.MATMAT: Unit.COMPUTE,
    Opcode.SFU: Unit.SFU,
}


class Buffer(enum.Enum, shape=3):
    """On-chip buffers addressed by LOAD/STORE."""

    ACT = 0  #: activations (INT8 and wide INT32)
    WGT = 1  #: packed low-bit weights
    KV = 2  #: INT4 KV cache window
    META = 3  #: group scales, zero-points, data-type ids, sparse indices
    TABLE = 4  #: RoPE cos/sin rows and other per-position tables


class LenSrc(enum.Enum, shape=1):
    """Where a length-like field comes from: patched at run time for length adaptivity."""

    IMM = 0  #: the immediate field of the instruction
    SEQ = 1  #: the SEQ_LEN run-time register (see :class:`Reg`)


class WeightFormat(enum.Enum, shape=2):
    """How packed weight codes decode (numerics: ``llmacc.numerics``)."""

    W2 = 0  #: 2-bit asymmetric codes with a per-group zero-point
    MIXED3 = 1  #: 3-bit codes, per-group data type (BitMoD)
    MIXED4 = 2  #: 4-bit codes, per-group data type (BitMoD)
    INT8 = 3  #: 8-bit symmetric (embedding / classifier)


class Sparsity(enum.Enum, shape=3):
    """N:M structured sparsity of the weight operand."""

    DENSE = 0
    N2M16 = 1
    N4M16 = 2
    N8M16 = 3
    N2M4 = 4


class OutMode(enum.Enum, shape=2):
    """What a matrix instruction does with its result (operator fusion)."""

    WIDE = 0  #: write INT32 fixed-point results
    ADD = 1  #: add into the INT32 destination (linear + residual)
    SILU = 2  #: apply SiLU before writing (linear + SiLU)


class SfuFunc(enum.Enum, shape=4):
    """Special functions."""

    RMSNORM = 0
    SOFTMAX = 1  #: with sink + window (Lambda-shaped) masking from imm/imm2
    SILU_MUL = 2  #: SwiGLU: silu(a) * b
    ROPE = 3
    ADD = 4
    MUL = 5
    QUANT8 = 6  #: wide INT32 -> INT8 per token, with its scale
    KVQUANT = 7  #: wide INT32 -> INT4 per token and head group, with its scales


class SysFunc(enum.Enum, shape=3):
    NOP = 0
    HALT = 1  #: end of program: wait for all units, raise done
    SYNC = 2  #: wait until every unit is idle
    SETREG = 3  #: run-time register ``reg`` := ``imm``


class Reg(enum.Enum, shape=4):
    """Run-time registers that length-adaptive programs read."""

    SEQ_LEN = 0  #: tokens in the KV cache after this step
    POS = 1  #: position of the first token of this step
    TOKENS = 2  #: tokens processed in this step (prefill length)


class Header(data.Struct):
    """Common to every instruction."""

    opcode: Opcode
    wait: 4
    release: 4


class MemFields(data.Struct):
    """LOAD and STORE: a two-level strided transfer between external memory and a buffer."""

    buf: Buffer
    chan: 5
    ext_addr: 32
    buf_addr: 16
    words: 16
    rows: 12
    rows_src: LenSrc
    ext_stride: 24
    pos_offset: 1


class MatFields(data.Struct):
    """MATVEC and MATMAT: ``out[m, n] = sum_k act[m, k] * W[n, k]`` with grouped dequant."""

    k: 14
    n: 14
    m: 11
    m_src: LenSrc
    act_addr: 16
    wgt_addr: 16
    out_addr: 16
    meta_addr: 16
    wfmt: WeightFormat
    sparsity: Sparsity
    group_log2: 3
    out_mode: OutMode


class SfuFields(data.Struct):
    """SFU: a row-wise function over ``rows`` rows of ``length`` elements."""

    func: SfuFunc
    src_a: 16
    src_b: 16
    dst: 16
    length: 14
    rows: 12
    rows_src: LenSrc
    shift: signed(8)
    imm: 16
    imm2: 12


class SysFields(data.Struct):
    """SYS: control of the program and the run-time registers."""

    func: SysFunc
    reg: Reg
    imm: 32


PAYLOAD_BITS = WORD_BITS - Header.as_shape().size

#: The payload layout of each opcode.
PAYLOAD: dict[Opcode, type[data.Struct]] = {
    Opcode.SYS: SysFields,
    Opcode.LOAD: MemFields,
    Opcode.STORE: MemFields,
    Opcode.MATVEC: MatFields,
    Opcode.MATMAT: MatFields,
    Opcode.SFU: SfuFields,
}


#: The distinct payload layouts, in opcode order.
LAYOUTS: tuple[type[data.Struct], ...] = tuple(dict.fromkeys(PAYLOAD.values()))


class Payload(data.Union):
    sys: SysFields
    mem: MemFields
    mat: MatFields
    sfu: SfuFields
    raw: PAYLOAD_BITS


class InstructionWord(data.Struct):
    """The whole 128-bit word, for ``Signal(InstructionWord)`` in the RTL decoder."""

    header: Header
    payload: Payload


#: Field constraints beyond the bit width, checked by encode and decode alike.
CONSTRAINTS: dict[tuple[type[data.Struct], str], tuple[int, int]] = {
    (MatFields, "group_log2"): (3, 7),  # group sizes 8 .. 128
}

#: One line per field for docs/ISA.md.
FIELD_DOCS: dict[str, str] = {
    "opcode": "instruction class",
    "wait": "consume one token from each unit whose bit is set before issuing",
    "release": "send one token to each unit whose bit is set on completion",
    "buf": "on-chip buffer",
    "chan": "external-memory channel (HBM pseudo-channel or DDR bank)",
    "ext_addr": "byte address in the channel",
    "buf_addr": "buffer word address",
    "words": "buffer words per row",
    "rows": "rows (outer loop count)",
    "rows_src": "IMM: `rows` as encoded; SEQ: the SEQ_LEN register (length patching)",
    "ext_stride": "bytes between rows in external memory",
    "pos_offset": "add POS * ext_stride to ext_addr (KV-cache append)",
    "k": "reduction length (elements)",
    "n": "output rows",
    "m": "tokens (MATMAT); must be 1 for MATVEC",
    "m_src": "IMM: `m` as encoded; SEQ: the TOKENS register",
    "act_addr": "ACT buffer address of the INT8 input rows",
    "wgt_addr": "WGT buffer address of the packed weights",
    "out_addr": "ACT buffer address of the INT32 result",
    "meta_addr": "META buffer address of scales, zero-points, type ids, indices",
    "wfmt": "weight code format",
    "sparsity": "N:M structured sparsity of the weights",
    "group_log2": "log2 of the quantization group size (3..7)",
    "out_mode": "result handling (fusion)",
    "func": "function",
    "src_a": "ACT address of the first operand",
    "src_b": "ACT address of the second operand (or gamma/table address)",
    "dst": "ACT address of the result",
    "length": "elements per row",
    "shift": "fixed-point shift (signed), per function",
    "imm": "immediate parameter, per function",
    "imm2": "second immediate parameter, per function",
    "reg": "run-time register",
}


class IllegalInstruction(ValueError):
    """An instruction that cannot be encoded or a word that does not decode."""


@dataclass(frozen=True)
class Instruction:
    """A decoded instruction: opcode, token masks, and the payload fields by name."""

    opcode: Opcode
    fields: Mapping[str, int | enum.Enum] = field(default_factory=dict)
    wait: int = 0
    release: int = 0

    def __getattr__(self, name: str) -> int | enum.Enum:
        try:
            return self.__dict__["fields"][name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def unit(self) -> Unit | None:
        return UNIT_OF.get(self.opcode)


def _field_range(layout: type[data.Struct], name: str, shape: Shape) -> tuple[int, int]:
    if (layout, name) in CONSTRAINTS:
        return CONSTRAINTS[(layout, name)]
    if shape.signed:
        return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    return 0, (1 << shape.width) - 1


def _pack_field(layout: type[data.Struct], name: str, fshape, value) -> int:
    """Check one field value and return its raw bits."""
    where = f"{layout.__name__}.{name}"
    if isinstance(fshape, type) and issubclass(fshape, enum.Enum):
        if isinstance(value, fshape):
            return value.value
        if isinstance(value, enum.Enum) or not isinstance(value, int):
            raise IllegalInstruction(f"{where}: expected {fshape.__name__}, got {value!r}")
        try:
            return fshape(value).value
        except ValueError:
            raise IllegalInstruction(f"{where}: {value} is not a {fshape.__name__}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise IllegalInstruction(f"{where}: expected an integer, got {value!r}")
    shape = Shape.cast(fshape)
    lo, hi = _field_range(layout, name, shape)
    if not lo <= value <= hi:
        raise IllegalInstruction(f"{where}: {value} out of range [{lo}, {hi}]")
    return value & ((1 << shape.width) - 1)


def _unpack_field(layout: type[data.Struct], name: str, fshape, raw: int):
    where = f"{layout.__name__}.{name}"
    if isinstance(fshape, type) and issubclass(fshape, enum.Enum):
        try:
            return fshape(raw)
        except ValueError:
            raise IllegalInstruction(f"{where}: {raw} is not a {fshape.__name__}") from None
    shape = Shape.cast(fshape)
    value = raw - (1 << shape.width) if shape.signed and raw >> (shape.width - 1) else raw
    lo, hi = _field_range(layout, name, shape)
    if not lo <= value <= hi:
        raise IllegalInstruction(f"{where}: {value} out of range [{lo}, {hi}]")
    return value


def _pack(layout: type[data.Struct], values: Mapping[str, object]) -> int:
    fields = dict(layout.as_shape())
    unknown = set(values) - set(fields)
    if unknown:
        raise IllegalInstruction(f"{layout.__name__}: unknown fields {sorted(unknown)}")
    word = 0
    for name, fld in fields.items():
        word |= _pack_field(layout, name, fld.shape, values.get(name, 0)) << fld.offset
    return word


def _unpack(layout: type[data.Struct], word: int) -> dict[str, object]:
    return {
        name: _unpack_field(layout, name, fld.shape, (word >> fld.offset) & ((1 << fld.width) - 1))
        for name, fld in layout.as_shape()
    }


def _check_semantics(insn: "Instruction") -> None:
    fields = insn.fields
    if insn.opcode is Opcode.MATVEC and (fields["m"] != 1 or fields["m_src"] is not LenSrc.IMM):
        raise IllegalInstruction("MatFields.m: MATVEC needs m == 1 and m_src == IMM")


def make(opcode: Opcode, *, wait: int = 0, release: int = 0, **fields) -> Instruction:
    """Build and validate an instruction; omitted payload fields are zero."""
    insn = Instruction(opcode, fields, wait, release)
    return decode(encode(insn))


def encode(insn: Instruction) -> int:
    """The 128-bit word of ``insn`` as an int; raises :class:`IllegalInstruction`."""
    if not isinstance(insn.opcode, Opcode):
        raise IllegalInstruction(f"Header.opcode: {insn.opcode!r} is not an Opcode")
    header = _pack(Header, {"opcode": insn.opcode, "wait": insn.wait, "release": insn.release})
    layout = PAYLOAD[insn.opcode]
    payload = _pack(layout, insn.fields)
    _check_semantics(Instruction(insn.opcode, _unpack(layout, payload)))
    return header | payload << Header.as_shape().size


def decode(word: int) -> Instruction:
    """Decode a 128-bit word; raises :class:`IllegalInstruction` on any illegal encoding."""
    if not 0 <= word < 1 << WORD_BITS:
        raise IllegalInstruction(f"instruction word {word:#x} is not a {WORD_BITS}-bit value")
    header_bits = Header.as_shape().size
    try:
        opcode = Opcode(word & ((1 << Opcode.as_shape().width) - 1))
    except ValueError:
        raise IllegalInstruction(
            f"Header.opcode: unknown opcode {word & 0xF} in word {word:#034x}"
        ) from None
    header = _unpack(Header, word & ((1 << header_bits) - 1))
    payload = word >> header_bits
    layout = PAYLOAD[opcode]
    used = layout.as_shape().size
    if payload >> used:
        raise IllegalInstruction(
            f"{opcode.name}: reserved payload bits [{used + header_bits}:{WORD_BITS}) are not zero"
        )
    insn = Instruction(opcode, _unpack(layout, payload), header["wait"], header["release"])
    _check_semantics(insn)
    return insn


def encode_program(program: Iterable[Instruction]) -> bytes:
    """Little-endian 16-byte words, in order."""
    return b"".join(encode(i).to_bytes(WORD_BYTES, "little") for i in program)


def decode_program(blob: bytes) -> list[Instruction]:
    if len(blob) % WORD_BYTES:
        raise IllegalInstruction(
            f"program of {len(blob)} bytes is not a whole number of {WORD_BYTES}-byte words"
        )
    program = []
    for index in range(0, len(blob), WORD_BYTES):
        word = int.from_bytes(blob[index : index + WORD_BYTES], "little")
        try:
            program.append(decode(word))
        except IllegalInstruction as exc:
            raise IllegalInstruction(f"word {index // WORD_BYTES}: {exc}") from None
    return program


for _layout in LAYOUTS:
    assert _layout.as_shape().size <= PAYLOAD_BITS, _layout.__name__
