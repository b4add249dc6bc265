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

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from amaranth.hdl import Shape, signed
from amaranth.lib import data, enum

from llmacc.widths import (
    BUF_ADDR_BITS,
    BUFFER_NAMES,
    CHANNEL_BITS,
    EXT_ADDR_BITS,
    KEY_COUNT_BITS,
    STREAM_PAGE_BITS,
    TOKEN_COUNT_BITS,
)
from llmacc.widths import ISA_VERSION as ISA_VERSION  # the hardware ID register's version

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
    ATTN = 6  #: attention against the INT4/INT8 KV cache (on the matrix engine)
    MATSTREAM = 7  #: matrix x tokens, the weights streamed from every memory channel


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
    Opcode.ATTN: Unit.COMPUTE,
    Opcode.MATSTREAM: Unit.COMPUTE,
}


class Buffer(enum.Enum, shape=3):
    """On-chip buffers addressed by LOAD/STORE."""

    ACT = 0  #: activations (INT8 and wide INT32)
    WGT = 1  #: packed low-bit weights
    KV = 2  #: INT4 KV cache window
    META = 3  #: group scales, zero-points, data-type ids, sparse indices
    TABLE = 4  #: RoPE cos/sin rows and other per-position tables


assert tuple(b.name for b in Buffer) == BUFFER_NAMES, "llmacc.widths.BUFFER_NAMES"

class LenSrc(enum.Enum, shape=1):
    """Where a transfer's row count comes from: patched at run time for length adaptivity."""

    IMM = 0  #: the immediate field of the instruction
    SEQ = 1  #: the SEQ_LEN run-time register (see :class:`Reg`)


class WeightFormat(enum.Enum, shape=2):
    """How packed weight codes decode (numerics: ``llmacc.numerics``); stored in the weight
    tile's META descriptor (``llmacc.layout``)."""

    W2 = 0  #: 2-bit asymmetric codes with a per-group zero-point
    MIXED3 = 1  #: 3-bit codes, per-group data type (BitMoD)
    MIXED4 = 2  #: 4-bit codes, per-group data type (BitMoD)
    INT8 = 3  #: 8-bit symmetric (embedding / classifier)


class Sparsity(enum.Enum, shape=3):
    """N:M structured sparsity of the weight operand (META descriptor)."""

    DENSE = 0
    N2M16 = 1
    N4M16 = 2
    N8M16 = 3
    N2M4 = 4


class OutMode(enum.Enum, shape=2):
    """What a matrix instruction does with its result (operator fusion); each is one entry of
    :data:`OUT_MODES`. The parameters ``p0``/``p1`` come from the tile's META descriptor."""

    WIDE = 0  #: write INT32 fixed-point results
    ADD = 1  #: ``dst = add(dst, result, p0)`` (linear + residual)
    SILU = 2  #: ``dst = silu(result, p0, p1)`` (linear + SiLU; p0, p1 = exponents in, out)


@dataclass(frozen=True)
class OutSpec:
    """One fused output mode: what the emulator, the timing model, the RTL result stage, the
    random instruction cases and docs/ISA.md read about it.

    ``operands`` is one of :data:`OUT_OPERANDS`; ``reference`` names the function in
    ``llmacc.numerics`` (None: the result as it is); ``params`` says what the descriptor's
    ``p0``/``p1`` mean; ``ranges`` are the values random legal tiles draw for them;
    ``word_writes``: a streamed matrix's collector transfer (one result per way, consecutive
    rows) is written as one run of a word in a cycle (each way has its own result stage),
    else element by element through one result stage.
    """

    operands: str
    reference: str | None
    summary: str
    params: Mapping[str, str]
    ranges: Mapping[str, tuple[int, int]]
    word_writes: bool


#: How a fused output mode combines the result (``docs/ISA.md``, Output modes).
OUT_OPERANDS = {
    "result": "the INT32 result is written as it is",
    "residual": "f(dst, result, p0): the destination's old value is read first",
    "elementwise": "f(result, p0, p1), one element at a time",
}

#: The fused output modes, one entry each (OutMode order). Ignored parameters are still
#: drawn in random cases, so a result stage that reads them is caught.
OUT_MODES: dict[OutMode, OutSpec] = {
    OutMode.WIDE: OutSpec("result", None, "INT32 fixed-point results", {},
                          {"p0": (-4, 12), "p1": (0, 12)}, word_writes=True),
    OutMode.ADD: OutSpec("residual", "add", "linear + residual", {"p0": "the result's shift"},
                         {"p0": (-4, 12), "p1": (0, 12)}, word_writes=True),
    OutMode.SILU: OutSpec("elementwise", "silu", "linear + SiLU",
                          {"p0": "F_in", "p1": "F_out"}, {"p0": (-4, 12), "p1": (0, 12)},
                          word_writes=False),
}
assert set(OUT_MODES) == set(OutMode), "every OutMode has an OUT_MODES entry"
assert all(spec.word_writes for spec in OUT_MODES.values() if spec.operands == "residual"), \
    "a residual mode reads its old values as a word's run (word_writes)"


class SfuFunc(enum.Enum, shape=4):
    """Special functions over ``rows`` rows of ``length`` elements; each is one entry of
    :data:`SFU_FUNCTIONS` (docs/ISA.md, SFU functions)."""

    RMSNORM = 0
    SOFTMAX = 1
    SILU = 2
    ROPE = 3
    ADD = 4
    MUL = 5
    QUANT8 = 6
    KVQUANT = 7
    EMBED = 8
    GELU = 9


class SfuStage(enum.Enum, shape=1):
    """Which stage of the SFU computes a function."""

    ELEMENT = 0  #: one element (or RoPE pair) per cycle, no state across a row
    ROW = 1  #: a reduction over the row (or segment, or KV group) first


@dataclass(frozen=True)
class SfuSpec:
    """One SFU function: everything the emulator, the timing model, the RTL sequencer, the
    random instruction cases, the tests and docs/ISA.md read about it.

    ``operands`` names how the instruction's rows are read and written (one of
    :data:`SFU_OPERANDS`); ``reference`` is the name of its function in
    ``llmacc.numerics`` (looked up there, so this module loads no torch); ``fields`` says what
    ``shift``, ``imm`` and ``imm2`` mean; ``ranges`` are the values random legal cases draw
    for the fields their operand kind does not fix.
    """

    stage: SfuStage
    operands: str
    reference: str
    summary: str
    fields: Mapping[str, str] = field(default_factory=dict)
    ranges: Mapping[str, tuple[int, int]] = field(default_factory=dict)


#: How an SFU function's operands are laid out (``docs/ISA.md``, SFU).
SFU_OPERANDS = {
    "unary": "wide rows at src_a -> wide rows at dst; imm, imm2 as parameters",
    "binary": "wide rows at src_a and src_b (imm = 1: one broadcast TABLE row) -> wide rows",
    "rope": "wide rows at src_a, one cos/sin TABLE row per row at src_b -> wide rows",
    "gamma": "wide rows at src_a, one gamma record at TABLE[src_b] -> wide rows",
    "masked": "Q15.16 score rows at src_a under the Lambda mask -> Q0.15 rows",
    "quant8": "wide rows at src_a -> quantized rows at dst",
    "kvquant": "wide rows at src_a -> one KV block (layout.kv_block) of `rows` rows per "
               "group at KV[dst], group-major, row r's header at slot POS % kv_slots + r "
               "(only the rows' slots are written)",
    "embed": "embedding records at src_a -> wide rows",
}

#: The SFU functions, one entry each (SfuFunc order).
SFU_FUNCTIONS: dict[SfuFunc, SfuSpec] = {
    SfuFunc.RMSNORM: SfuSpec(SfuStage.ROW, "gamma", "rmsnorm", "RMSNorm with a gain",
                             {"shift": "gamma_exp - F_out"}, {"shift": (-4, 20)}),
    SfuFunc.SOFTMAX: SfuSpec(SfuStage.ROW, "masked", "softmax",
                             "Q15.16 scores -> Q0.15 probabilities under the Lambda mask "
                             "(POS + row, SINK, WINDOW)"),
    SfuFunc.SILU: SfuSpec(SfuStage.ELEMENT, "unary", "silu", "SiLU, x * sigmoid(x)",
                          {"imm": "F_in", "imm2": "F_out"}, {"imm": (0, 24), "imm2": (0, 24)}),
    SfuFunc.ROPE: SfuSpec(SfuStage.ELEMENT, "rope", "rope", "rotary embedding of pairs",
                          {"imm": "head_dim"}),
    SfuFunc.ADD: SfuSpec(SfuStage.ELEMENT, "binary", "add", "add(a, b, shift)",
                         {"shift": "b's shift", "imm": "1: b is one broadcast TABLE row"},
                         {"shift": (-6, 40)}),
    SfuFunc.MUL: SfuSpec(SfuStage.ELEMENT, "binary", "mul", "mul(a, b, shift)",
                         {"shift": "the product's shift",
                          "imm": "1: b is one broadcast TABLE row"},
                         {"shift": (0, 40)}),
    SfuFunc.QUANT8: SfuSpec(SfuStage.ROW, "quant8", "quantize_act",
                            "wide -> INT8 rows per segment, zero-padded",
                            {"imm": "codes per output row (0: the segment)",
                             "imm2": "segment (0: the row)"}),
    SfuFunc.KVQUANT: SfuSpec(SfuStage.ROW, "kvquant", "quantize_kv",
                             "wide -> KV blocks per group of channels",
                             {"imm": "channels per group", "imm2": "bits (4 or 8)"}),
    SfuFunc.EMBED: SfuSpec(SfuStage.ELEMENT, "embed", "embed_rows",
                           "INT8 embedding records -> wide",
                           {"imm": "scale group", "shift": "-F_out"}, {"shift": (-20, 20)}),
    SfuFunc.GELU: SfuSpec(SfuStage.ELEMENT, "unary", "gelu",
                          "GELU, tanh form (GPT-2 gelu_new, Gemma gelu_pytorch_tanh)",
                          {"imm": "F_in", "imm2": "F_out"}, {"imm": (0, 24), "imm2": (0, 24)}),
}


def sfu_funcs(*, operands: str | None = None, stage: SfuStage | None = None) -> tuple[SfuFunc, ...]:
    """The SFU functions with ``operands`` and/or on ``stage``, in SfuFunc order."""
    return tuple(func for func, spec in SFU_FUNCTIONS.items()
                 if operands in (None, spec.operands) and stage in (None, spec.stage))


class AttnFunc(enum.Enum, shape=2):
    """Attention of one query head against one KV head held in the KV buffer."""

    SCORE = 0  #: Q x K^T -> Q15.16 scores (numerics.attention_scores)
    SCORE_SOFTMAX = 1  #: the same, then softmax under the Lambda mask (fused)
    PV = 2  #: Q0.15 probabilities x V -> wide (numerics.attention_pv)


class SysFunc(enum.Enum, shape=3):
    """Controller functions."""

    NOP = 0
    HALT = 1  #: end of program: wait for all units, raise done
    SYNC = 2  #: wait until every unit is idle
    SETREG = 3  #: run-time register ``reg`` := ``imm``


class Reg(enum.Enum, shape=4):
    """Run-time registers that length-adaptive programs read. The controller resolves them when
    it dispatches an instruction (program order), so SETREG affects only later instructions."""

    SEQ_LEN = 0  #: tokens in the KV cache after this step (LenSrc.SEQ row counts)
    POS = 1  #: position of the first row of this step (RoPE rows, KV append, masks)
    SINK = 2  #: Lambda attention: leading tokens every query sees
    WINDOW = 3  #: Lambda attention: recent tokens each query sees (0 = full attention)


class Header(data.Struct):
    """Common to every instruction."""

    opcode: Opcode
    wait: 4
    release: 4


class MemFields(data.Struct):
    """LOAD and STORE: a two-level strided transfer between external memory and a buffer."""

    buf: Buffer
    chan: CHANNEL_BITS
    ext_addr: EXT_ADDR_BITS
    buf_addr: BUF_ADDR_BITS
    words: 16
    rows: 12
    rows_src: LenSrc
    ext_stride: 24
    pos_offset: 1
    pos_header: 1


class MatFields(data.Struct):
    """MATVEC and MATMAT: ``out[m, n] = sum_k act[m, k] * W[n, k]`` with grouped dequant.

    The weight tile's format, sparsity, group size and fusion parameters are in its META
    descriptor (``llmacc.layout``); ``m`` is fixed per length bucket (rows are padded).
    """

    k: 14
    n: 14
    m: TOKEN_COUNT_BITS
    act_addr: BUF_ADDR_BITS
    wgt_addr: BUF_ADDR_BITS
    out_addr: BUF_ADDR_BITS
    meta_addr: BUF_ADDR_BITS
    out_pitch: 11
    out_mode: OutMode


class StreamFields(data.Struct):
    """MATSTREAM: ``out[m, n] = sum_k act[m, k] * W[n, k]`` as MATMAT computes it, the weight
    rows read from the memory channels as beat-major weight streams (``llmacc.layout``), not
    from WGT and META.

    Every channel holds its share of the rows (:func:`llmacc.layout.stream_row`) as one
    stream at byte ``page * STREAM_PAGE_BYTES`` of the channel; the META descriptor at
    ``meta_addr`` gives the format, sparsity, group and fusion parameters.
    """

    k: 14
    n: 14
    m: TOKEN_COUNT_BITS
    act_addr: BUF_ADDR_BITS
    out_addr: BUF_ADDR_BITS
    meta_addr: BUF_ADDR_BITS
    out_pitch: 11
    out_mode: OutMode
    page: STREAM_PAGE_BITS


class SfuFields(data.Struct):
    """SFU: a row-wise function over ``rows`` rows of ``length`` elements."""

    func: SfuFunc
    src_a: BUF_ADDR_BITS
    src_b: BUF_ADDR_BITS
    dst: BUF_ADDR_BITS
    length: 14
    rows: 12
    shift: signed(8)
    imm: signed(16)
    imm2: signed(12)


class AttnFields(data.Struct):
    """ATTN: ``rows`` query rows (row ``r`` at position POS + r) of one head against ``keys``
    KV rows in the KV buffer; masked keys (numerics.lambda_mask) get probability 0."""

    func: AttnFunc
    q_addr: BUF_ADDR_BITS
    kv_addr: BUF_ADDR_BITS
    dst: BUF_ADDR_BITS
    head_dim: 8
    keys: KEY_COUNT_BITS
    rows: 11
    a_step: 12
    d_step: 12
    shift: signed(8)
    kv8: 1


class SysFields(data.Struct):
    """SYS: control of the program and the run-time registers."""

    func: SysFunc
    reg: Reg
    imm: 32


HEADER_BITS = Header.as_shape().size
PAYLOAD_BITS = WORD_BITS - HEADER_BITS

#: The payload layout of each opcode.
PAYLOAD: dict[Opcode, type[data.Struct]] = {
    Opcode.SYS: SysFields,
    Opcode.LOAD: MemFields,
    Opcode.STORE: MemFields,
    Opcode.MATVEC: MatFields,
    Opcode.MATMAT: MatFields,
    Opcode.SFU: SfuFields,
    Opcode.ATTN: AttnFields,
    Opcode.MATSTREAM: StreamFields,
}


#: The distinct payload layouts, in opcode order.
LAYOUTS: tuple[type[data.Struct], ...] = tuple(dict.fromkeys(PAYLOAD.values()))


class Payload(data.Union):
    sys: SysFields
    mem: MemFields
    mat: MatFields
    stream: StreamFields
    sfu: SfuFields
    attn: AttnFields
    raw: PAYLOAD_BITS


class InstructionWord(data.Struct):
    """The whole 128-bit word, for ``Signal(InstructionWord)`` in the RTL decoder."""

    header: Header
    payload: Payload


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
    "pos_header": "with pos_offset: POS // layout.kv_slots instead of POS (a KV head's "
                  "header words)",
    "k": "reduction length (elements)",
    "n": "output rows",
    "m": "tokens (MATMAT); must be 1 for MATVEC",
    "act_addr": "ACT buffer address of the quantized INT8 input rows",
    "wgt_addr": "WGT buffer address of the packed weight rows",
    "out_addr": "ACT buffer address of the INT32 result",
    "meta_addr": "META buffer address of the tile descriptor and row records",
    "out_pitch": "words between result rows (MATMAT)",
    "out_mode": "result handling (fusion)",
    "page": "the weight streams' start in every channel, in pages of STREAM_PAGE_BYTES",
    "q_addr": "ACT address of the first query (SCORE) or probability (PV) row",
    "kv_addr": "KV buffer address of a KV block of `keys` rows (layout.kv_block)",
    "head_dim": "channels per head",
    "keys": "KV rows (the bucket's key count; masked keys contribute nothing)",
    "a_step": "words between input rows",
    "d_step": "words between output rows",
    "kv8": "0: INT4 KV rows; 1: INT8 KV rows",
    "func": "function",
    "src_a": "ACT address of the first operand",
    "src_b": "ACT address of the second operand (or gamma/table address)",
    "dst": "ACT address of the result",
    "length": "elements per row",
    "shift": "fixed-point shift (signed), per function",
    "imm": "immediate parameter (signed), per function",
    "imm2": "second immediate parameter (signed), per function",
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
    if shape.signed:
        return -(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1
    return 0, (1 << shape.width) - 1


@dataclass(frozen=True)
class _Field:
    """How one field is checked, placed in a word and read back: derived once from its
    layout (reading the Amaranth layout, shape casts and widths, for every field of every
    word was most of a compile's and a package load's time: SmolLM2-135M has 287,708
    instructions)."""

    name: str
    where: str  #: "Layout.field", for messages
    offset: int
    mask: int
    enum_type: type[enum.Enum] | None
    members: Mapping[int, enum.Enum] | None = None  #: an enum field's members by value
    sign_bit: int = 0  #: a signed field's top bit (0 for unsigned)
    lo: int = 0
    hi: int = 0

    def bits(self, value) -> int:
        """Check the value and return its raw bits, shifted to the field's place."""
        fshape = self.enum_type
        if fshape is not None:
            if isinstance(value, fshape):
                return value.value << self.offset
            if isinstance(value, enum.Enum) or not isinstance(value, int):
                raise IllegalInstruction(f"{self.where}: expected {fshape.__name__}, got "
                                         f"{value!r}")
            try:
                return fshape(value).value << self.offset
            except ValueError:
                raise IllegalInstruction(f"{self.where}: {value} is not a "
                                         f"{fshape.__name__}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise IllegalInstruction(f"{self.where}: expected an integer, got {value!r}")
        self._check(value)
        return (value & self.mask) << self.offset

    def read(self, word: int):
        """The field's value in ``word``."""
        raw = (word >> self.offset) & self.mask
        if self.members is not None:
            try:
                return self.members[raw]
            except KeyError:
                raise IllegalInstruction(f"{self.where}: {raw} is not a "
                                         f"{self.enum_type.__name__}") from None
        value = raw - (self.mask + 1) if raw & self.sign_bit else raw
        self._check(value)
        return value

    def _check(self, value: int) -> None:
        if not self.lo <= value <= self.hi:
            raise IllegalInstruction(f"{self.where}: {value} out of range [{self.lo}, "
                                     f"{self.hi}]")


@functools.cache
def _fields(layout: type[data.Struct]) -> dict[str, _Field]:
    """The fields of ``layout`` by name, in layout order."""
    out = {}
    for name, fld in layout.as_shape():
        where, fshape = f"{layout.__name__}.{name}", fld.shape
        mask = (1 << fld.width) - 1
        if isinstance(fshape, type) and issubclass(fshape, enum.Enum):
            out[name] = _Field(name, where, fld.offset, mask, fshape, {m.value: m for m in fshape})
            continue
        shape = Shape.cast(fshape)
        lo, hi = _field_range(layout, name, shape)
        out[name] = _Field(name, where, fld.offset, mask, None,
                           sign_bit=1 << (shape.width - 1) if shape.signed else 0, lo=lo, hi=hi)
    return out


def _pack(layout: type[data.Struct], values: Mapping[str, object]) -> int:
    known = _fields(layout)
    unknown = values.keys() - known.keys()
    if unknown:
        raise IllegalInstruction(f"{layout.__name__}: unknown fields {sorted(unknown)}")
    word = 0
    for name, f in known.items():
        word |= f.bits(values.get(name, 0))
    return word


def _unpack(layout: type[data.Struct], word: int) -> dict[str, object]:
    return {name: f.read(word) for name, f in _fields(layout).items()}


def _check_semantics(opcode: Opcode, fields: Mapping[str, object]) -> None:
    """What the fields' ranges do not say (``fields``: an omitted one is zero)."""
    if opcode is Opcode.MATVEC and fields.get("m", 0) != 1:
        raise IllegalInstruction("MatFields.m: MATVEC needs m == 1")


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
    _check_semantics(insn.opcode, insn.fields)
    return header | payload << HEADER_BITS


@functools.cache
def _layout_bits(layout) -> int:
    """A layout's (or an enum's) width in bits."""
    shape = layout.as_shape()
    return shape.size if isinstance(shape, data.Layout) else shape.width


_OPCODES = {op.value: op for op in Opcode}


def decode(word: int) -> Instruction:
    """Decode a 128-bit word; raises :class:`IllegalInstruction` on any illegal encoding."""
    if not 0 <= word < 1 << WORD_BITS:
        raise IllegalInstruction(f"instruction word {word:#x} is not a {WORD_BITS}-bit value")
    header_bits = _layout_bits(Header)
    try:
        opcode = _OPCODES[word & ((1 << _layout_bits(Opcode)) - 1)]
    except KeyError:
        raise IllegalInstruction(
            f"Header.opcode: unknown opcode {word & 0xF} in word {word:#034x}"
        ) from None
    header = _unpack(Header, word & ((1 << header_bits) - 1))
    payload = word >> header_bits
    layout = PAYLOAD[opcode]
    used = _layout_bits(layout)
    if payload >> used:
        raise IllegalInstruction(
            f"{opcode.name}: reserved payload bits [{used + header_bits}:{WORD_BITS}) are not zero"
        )
    insn = Instruction(opcode, _unpack(layout, payload), header["wait"], header["release"])
    _check_semantics(opcode, insn.fields)
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


assert set(SFU_FUNCTIONS) == set(SfuFunc), "every SfuFunc has one SFU_FUNCTIONS entry"
assert all(spec.operands in SFU_OPERANDS for spec in SFU_FUNCTIONS.values())
