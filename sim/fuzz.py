"""Instruction fuzzing: random programs on the emulator and on the RTL top, compared byte for
byte (every channel), with the status word (error flag, fault code, faulting pc).

Three kinds of program, drawn at random:

* ``compute`` -- the buffers LOADed with random bytes around one random legal SFU, MATVEC/
  MATMAT/MATSTREAM or ATTN instruction (:mod:`sim.instruction_cases`: every function, weight
  format, sparsity, output mode; MATSTREAM's weight streams in every channel), then ACT and
  KV STOREd;
* ``copy`` -- token-ordered LOAD/STORE pairs through random buffers, with strided, reshaped,
  ``SEQ_LEN``-row and ``POS``-offset transfers and SETREGs between them;
* ``illegal`` -- a copy program, a SYNC, then one word the decoder must refuse (an unknown
  opcode, an enum field no member has, non-zero reserved bits, or a MATVEC with m != 1),
  then more legal words that must not run.

On a mismatch, :class:`FuzzMismatch` names the program, its seed, the first differing byte
as a buffer word and, for wide (INT32) outputs, the row and element of the instruction that
wrote it, both values, and the instruction; the failing program is run again with a
waveform written under ``build/sim/waves/`` (``WAVES=1`` writes one of every run).
"""

from __future__ import annotations

import enum
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from amaranth.lib import data

from llmacc import isa
from llmacc import layout as L
from llmacc.config import AccelConfig
from llmacc.isa import (
    AttnFunc,
    Buffer,
    LenSrc,
    Opcode,
    OutMode,
    Reg,
    SfuFunc,
    Sparsity,
    SysFunc,
    Unit,
    WeightFormat,
)
from llmacc.kernel import Fault, status_word
from llmacc.widths import STREAM_PAGE_BYTES
from sim.emulator import Emulator, EmulatorError
from sim.instruction_cases import InstructionCase, attn_case, mat_case, sfu_case
from sim.top_harness import TopHarness, waveform_suffix
from sim.verilator import PROJECT_ROOT, waves_requested

WAVES_DIR = PROJECT_ROOT / "build" / "sim" / "waves"
CHANNEL_BYTES = 1 << 15  #: each channel of a fuzz run
#: where a compute case's MATSTREAM weight streams start in every channel: past the buffer
#: images of channel 0 and the stores of channel 1 (:func:`case_layout`)
STREAM_PAGE = CHANNEL_BYTES // 2 // STREAM_PAGE_BYTES
LOAD_BIT, STORE_BIT = 1 << Unit.LOAD.value, 1 << Unit.STORE.value  #: token masks
KINDS = ("compute", "copy", "illegal")


#: KV words a compute case may need: KVQUANT writes up to 3 rows of 24 two-word records
#: (sim/instruction_cases.py), placed up to 3 words in.
KV_CASE_WORDS = 3 * 24 * 2 + 3


def case_config(cfg: AccelConfig) -> AccelConfig:
    """``cfg`` with buffers small enough that a compute case's images fit one channel."""
    kv = max(2048, -(-KV_CASE_WORDS * cfg.axi_data_bytes // 512) * 512)
    return cfg.replace(act_buffer_bytes=4096, weight_buffer_bytes=4096, kv_buffer_bytes=kv,
                       meta_buffer_bytes=2048, table_buffer_bytes=2048)


def register_preamble() -> list[isa.Instruction]:
    """SETREG of every run-time register (SEQ_LEN 1, the others 0). The registers persist
    across kernel runs on the RTL, as in one emulator, so each program sets them all."""
    return [isa.make(Opcode.SYS, func=SysFunc.SETREG, reg=r, imm=int(r is Reg.SEQ_LEN))
            for r in Reg]


# -- programs ------------------------------------------------------------------------------
def _transfer(rng: random.Random, opcode: Opcode, cfg: AccelConfig, buf: Buffer, buf_addr: int,
              words: int, rows: int, seq: bool, regs: dict, **tokens) -> isa.Instruction:
    """A LOAD/STORE of rows x words at a random aligned place in a random channel."""
    w = cfg.axi_data_bytes
    stride = w * rng.randint(words, words + 3)
    at_pos = rng.random() < 0.25
    header = at_pos and rng.random() < 0.5  # POS // kv_slots
    n = regs[Reg.SEQ_LEN] if seq else rows
    lead = regs[Reg.POS] // (L.kv_slots(w) if header else 1) * stride if at_pos else 0
    span = lead + (n - 1) * stride + words * w
    ext = rng.randrange(0, (CHANNEL_BYTES - span) // w) * w
    return isa.make(opcode, buf=buf, chan=rng.randrange(cfg.mem_channels), ext_addr=ext,
                    buf_addr=buf_addr, words=words, rows=rows,
                    rows_src=LenSrc.SEQ if seq else LenSrc.IMM, ext_stride=stride,
                    pos_offset=int(at_pos), pos_header=int(header), **tokens)


def copy_program(rng: random.Random, cfg: AccelConfig, pairs: int) -> list[isa.Instruction]:
    """LOAD/STORE pairs through random buffers, ordered by tokens (each STORE waits for its
    LOAD, each LOAD for the previous STORE), with run-time registers for SEQ rows and POS
    offsets; ends with HALT."""
    program, regs = [], {Reg.SEQ_LEN: 1, Reg.POS: 0}
    for p in range(pairs):
        if rng.random() < 0.4:
            reg = rng.choice((Reg.SEQ_LEN, Reg.POS))
            regs[reg] = rng.randint(1, 4) if reg is Reg.SEQ_LEN else rng.randint(0, 19)
            program.append(isa.make(Opcode.SYS, func=SysFunc.SETREG, reg=reg, imm=regs[reg]))
        buf = rng.choice(list(Buffer))
        words, rows, seq = rng.randint(1, 5), rng.randint(1, 4), rng.random() < 0.25
        n = max(rows, regs[Reg.SEQ_LEN])
        buf_addr = rng.randrange(0, cfg.buffer_words(buf) - n * words + 1)
        last = p == pairs - 1
        program.append(_transfer(rng, Opcode.LOAD, cfg, buf, buf_addr, words, rows, seq, regs,
                                 wait=STORE_BIT if p else 0, release=STORE_BIT))
        # the STORE moves exactly the words its LOAD brought in, as the same rows or
        # reshaped (one word per row, or one long row), so buffer addressing shows
        if not seq:
            words, rows = rng.choice(((words, rows), (1, rows * words), (rows * words, 1)))
        program.append(_transfer(rng, Opcode.STORE, cfg, buf, buf_addr, words, rows, seq, regs,
                                 wait=LOAD_BIT, release=0 if last else LOAD_BIT))
    program.append(isa.make(Opcode.SYS, func=SysFunc.HALT))
    return program


def case_program(cfg: AccelConfig, case: InstructionCase, ext: dict[Buffer, int],
                 out: dict[Buffer, int]) -> list[isa.Instruction]:
    """LOAD the case's buffers from channel 0, run its instruction, STORE ``out``'s buffers
    to channel 1: the registers first, tokens from the last LOAD to the instruction's unit and
    from it to the first STORE."""
    small = case_config(cfg)
    unit = 1 << case.insn.unit.value
    program = [isa.make(Opcode.SYS, func=SysFunc.SETREG, reg=r, imm=v)
               for r, v in case.regs.items()]
    for i, b in enumerate(Buffer):
        last = i == len(Buffer) - 1
        program.append(isa.make(Opcode.LOAD, buf=b, chan=0, ext_addr=ext[b], buf_addr=0,
                                words=small.buffer_words(b), rows=1,
                                release=unit if last else 0))
    insn = case_insn(case)
    program.append(isa.make(insn.opcode, wait=LOAD_BIT, release=STORE_BIT, **insn.fields))
    for i, b in enumerate(out):
        program.append(isa.make(Opcode.STORE, buf=b, chan=1, ext_addr=out[b], buf_addr=0,
                                words=small.buffer_words(b), rows=1,
                                wait=unit if i == 0 else 0))
    return program + [isa.make(Opcode.SYS, func=SysFunc.HALT)]


def case_layout(cfg: AccelConfig) -> tuple[dict[Buffer, int], dict[Buffer, int]]:
    """Where a compute case's buffer images lie in channel 0, and where ACT and KV are
    stored in channel 1 (byte addresses)."""
    small = case_config(cfg)
    w = cfg.axi_data_bytes
    ext, at = {}, 0
    for b in Buffer:
        ext[b], at = at, at + small.buffer_words(b) * w
    return ext, {Buffer.ACT: 0, Buffer.KV: small.buffer_words(Buffer.ACT) * w}


def case_insn(case: InstructionCase) -> isa.Instruction:
    """The case's instruction as a program runs it: a MATSTREAM's page at
    :data:`STREAM_PAGE`."""
    if case.insn.opcode is not Opcode.MATSTREAM:
        return case.insn
    return isa.make(Opcode.MATSTREAM, **{**case.insn.fields, "page": STREAM_PAGE})


def case_images(cfg: AccelConfig, case: InstructionCase, channels: list[bytes]) -> list[bytes]:
    """``channels`` with the case's buffer images in channel 0 (:func:`case_image`) and a
    MATSTREAM's weight streams (the case's channel bytes from its page on) at
    :data:`STREAM_PAGE` of every channel."""
    out = [case_image(cfg, case, channels[0]), *channels[1:]]
    if case.insn.opcode is not Opcode.MATSTREAM:
        return out
    src, dst = case.insn.page * STREAM_PAGE_BYTES, STREAM_PAGE * STREAM_PAGE_BYTES
    for c, ext in enumerate(case.emu.ext):
        stream = np.asarray(ext[src:]).tobytes()
        if dst + len(stream) > CHANNEL_BYTES:
            raise ValueError(f"a {len(stream)}-byte weight stream does not fit channel {c} "
                             f"past byte {dst:#x}")
        out[c] = out[c][:dst] + stream + out[c][dst + len(stream):]
    return out


def case_image(cfg: AccelConfig, case: InstructionCase, channel: bytes) -> bytes:
    """``channel`` (channel 0's bytes) with the case's buffer images where
    :func:`case_layout` puts them."""
    ext, _ = case_layout(cfg)
    small = case_config(cfg)
    image = bytearray(channel)
    for b, raw in case.images.items():
        raw = raw[:small.buffer_words(b) * cfg.axi_data_bytes]
        image[ext[b]:ext[b] + len(raw)] = raw
    return bytes(image)


def random_compute_case(cfg: AccelConfig, rng: random.Random) -> InstructionCase:
    """One random legal SFU, matrix or attention instruction with its buffers."""
    small = case_config(cfg)
    kind = rng.choices(("sfu", "mat", "attn"), weights=(3, 4, 2))[0]
    if kind == "sfu":
        return sfu_case(small, rng, rng.choice(list(SfuFunc)))
    if kind == "attn":
        return attn_case(small, rng, rng.choice(list(AttnFunc)))
    if rng.random() < 0.4:  # MATSTREAM, in a format and sparsity the streams hold
        fmt, sparsity = rng.choice(list(L.stream_geometries(cfg.chain_len, cfg.axi_data_bits)))
        return mat_case(small, rng, fmt, sparsity, rng.choice(list(OutMode)), Opcode.MATSTREAM)
    return mat_case(small, rng, rng.choice(list(WeightFormat)), rng.choice(list(Sparsity)),
                    rng.choice(list(OutMode)), rng.choice((Opcode.MATVEC, Opcode.MATMAT)))


#: the faults of words the decoder refuses, in the controller's priority (hw/controller.py)
DECODE_FAULTS = (Fault.OPCODE, Fault.FIELD, Fault.RESERVED, Fault.SEMANTICS)


def _enum_fields() -> list[tuple[Opcode, data.Field]]:
    """Every enum field of every payload that has encodings no member uses."""
    return [(op, fld) for op, layout in isa.PAYLOAD.items() for _, fld in layout.as_shape()
            if isinstance(fld.shape, type) and issubclass(fld.shape, enum.Enum)
            and len(fld.shape) < 1 << fld.width]


def illegal_word(rng: random.Random, kind: Fault) -> int:
    """A word with exactly one illegality, of ``kind`` (one of :data:`DECODE_FAULTS`),
    which the Python decoder refuses."""
    header = isa.Header.as_shape().size
    opcode_bits = Opcode.as_shape().width
    while True:
        if kind is Fault.OPCODE:
            used = {op.value for op in Opcode}
            opcode = rng.choice([v for v in range(1 << opcode_bits) if v not in used])
            word = rng.getrandbits(isa.WORD_BITS) & ~((1 << opcode_bits) - 1) | opcode
        elif kind is Fault.SEMANTICS:
            word = isa.encode(isa.make(Opcode.MATVEC, m=1)) ^ (
                rng.randint(2, 255) ^ 1) << (header + isa.MatFields.as_shape()["m"].offset)
        else:
            op, fld = rng.choice(_enum_fields())
            word = isa.encode(isa.make(op, **({"m": 1} if op is Opcode.MATVEC else {})))
            if kind is Fault.FIELD:
                bad = rng.choice([v for v in range(1 << fld.width)
                                  if v not in {m.value for m in fld.shape}])
                word |= bad << (header + fld.offset)
            else:
                used = isa.PAYLOAD[op].as_shape().size
                spare = isa.WORD_BITS - header - used
                if spare <= 0:
                    continue
                word |= rng.getrandbits(spare) << (header + used) | 1 << (header + used)
        try:
            isa.decode(word)
        except isa.IllegalInstruction:
            return word


@dataclass
class FuzzProgram:
    """One program with its starting channels and what the emulator made of it."""

    kind: str
    words: list[int]
    start: list[bytes]
    status: int
    expected: list[bytes]
    focus: isa.Instruction | None = None  #: the fuzzed instruction (compute programs)
    fuzzed: int = 0  #: fuzzed instructions in it (not counting a compute case's set-up)

    @property
    def blob(self) -> bytes:
        return b"".join(w.to_bytes(isa.WORD_BYTES, "little") for w in self.words)


def draw(cfg: AccelConfig, rng: random.Random, kind: str) -> FuzzProgram:
    """A random program of ``kind`` run on the emulator."""
    chans = cfg.mem_channels
    emu = Emulator(cfg, [CHANNEL_BYTES] * chans)
    start = [rng.randbytes(CHANNEL_BYTES) for _ in range(chans)]
    focus, status = None, status_word()
    if kind == "compute":
        case = random_compute_case(cfg, rng)
        ext, out = case_layout(cfg)
        start = case_images(cfg, case, start)
        program = case_program(cfg, case, ext, out)
        focus, fuzzed = case_insn(case), 1
    else:
        program = copy_program(rng, cfg, rng.randint(2, 6))  # SEQ_LEN 1 and POS 0 at first
        fuzzed = sum(i.opcode in (Opcode.LOAD, Opcode.STORE) for i in program)
    program = register_preamble() + program
    for c, image in enumerate(start):
        emu.write_ext(c, 0, np.frombuffer(image, np.uint8))
    words = [isa.encode(i) for i in program]
    if kind == "illegal":
        bad = illegal_word(rng, rng.choice(DECODE_FAULTS))
        at = len(words) - 1  # before HALT, after a SYNC: everything before it has run
        words = words[:at] + [isa.encode(isa.make(Opcode.SYS, func=SysFunc.SYNC)), bad] + \
            words[at:]
        status = status_word(_fault_of(bad), at + 1)
        program, fuzzed = program[:at], fuzzed + 1
    try:
        emu.run(program)
    except EmulatorError as exc:
        status = status_word(Fault.PARAM, int(str(exc).split()[1]))
    expected = [emu.read_ext(c, 0, CHANNEL_BYTES).tobytes() for c in range(chans)]
    return FuzzProgram(kind, words, start, status, expected, focus, fuzzed)


def _fault_of(word: int) -> Fault:
    """The fault the controller raises for an illegal word, in its priority: unknown
    opcode, then an enum field no member has, then reserved bits, then semantics."""
    op = word & ((1 << Opcode.as_shape().width) - 1)
    if op not in {o.value for o in Opcode}:
        return Fault.OPCODE
    payload = word >> isa.Header.as_shape().size
    layout = isa.PAYLOAD[Opcode(op)]
    for _, fld in layout.as_shape():
        if isinstance(fld.shape, type) and issubclass(fld.shape, enum.Enum):
            raw = payload >> fld.offset & ((1 << fld.width) - 1)
            if raw not in {m.value for m in fld.shape}:
                return Fault.FIELD
    if payload >> layout.as_shape().size:
        return Fault.RESERVED
    return Fault.SEMANTICS


# -- reporting -----------------------------------------------------------------------------
def _output_of(insn: isa.Instruction, w: int) -> tuple[int, int, int] | None:
    """(first word, row pitch in words, elements per row) of an instruction's INT32 output,
    for the instructions that write one."""
    f = insn.fields
    if insn.opcode in (Opcode.MATMAT, Opcode.MATSTREAM):
        return f["out_addr"], f["out_pitch"], f["n"]
    if insn.opcode is Opcode.MATVEC:
        return f["out_addr"], L.wide_pitch(f["n"], w), f["n"]
    if insn.opcode is Opcode.ATTN:
        n = f["head_dim"] if f["func"] is AttnFunc.PV else f["keys"]
        return f["dst"], f["d_step"], n
    if insn.opcode is Opcode.SFU and f["func"] not in (SfuFunc.QUANT8, SfuFunc.KVQUANT):
        return f["dst"], L.wide_pitch(f["length"], w), f["length"]
    return None


def first_difference(cfg: AccelConfig, prog: FuzzProgram, got: list[bytes]) -> str:
    """The first differing byte of the channels, as a buffer word (and output element)."""
    w = cfg.axi_data_bytes
    for c, (have, want) in enumerate(zip(got, prog.expected, strict=True)):
        diff = np.flatnonzero(np.frombuffer(have, np.uint8) != np.frombuffer(want, np.uint8))
        if not diff.size:
            continue
        at = int(diff[0])
        text = (f"channel {c} differs at {diff.size} bytes; first at byte {at:#x}: "
                f"RTL {have[at]:#04x}, emulator {want[at]:#04x}")
        if prog.kind == "compute" and c == 1:
            _, out = case_layout(cfg)
            buf = max((b for b in out if out[b] <= at), key=lambda b: out[b])
            word, byte = divmod(at - out[buf], w)
            text += f"; that is {buf.name} word {word} byte {byte}"
            where = _output_of(prog.focus, w) if buf is Buffer.ACT else None
            if where is not None and where[1] > 0 and word >= where[0]:
                row, rest = divmod(word - where[0], where[1])
                element = (rest * w + byte) // 4
                if element < where[2]:
                    lo = out[buf] + (where[0] + row * where[1]) * w + 4 * element
                    pair = [int.from_bytes(x[lo:lo + 4], "little", signed=True)
                            for x in (have, want)]
                    text += (f", output row {row} element {element}: RTL {pair[0]}, "
                             f"emulator {pair[1]}")
            text += f"; written by {prog.focus}"
        return text
    return "channels equal"


class FuzzMismatch(AssertionError):
    """The RTL and the emulator disagree on a fuzz program."""


@dataclass
class FuzzReport:
    programs: Counter = field(default_factory=Counter)  #: per kind
    instructions: int = 0  #: fuzzed instructions compared
    cycles: int = 0  #: clock cycles simulated
    wall_s: float = 0.0  #: seconds in the simulation
    gen_s: float = 0.0  #: seconds drawing programs and running the emulator


def run(cfg: AccelConfig, seed: int, count: int, *, name: str = "fuzz",
        stall: float = 0.1, waves: bool | None = None) -> FuzzReport:
    """``count`` random programs on the emulator and the RTL top; raises
    :class:`FuzzMismatch` at the first difference (after writing its waveform)."""
    rng = random.Random(seed)
    waves = waves_requested() if waves is None else waves
    report = FuzzReport()
    with TopHarness(cfg, [CHANNEL_BYTES] * cfg.mem_channels, 1 << 12, stall=stall,
                    seed=seed) as top:
        if waves:
            WAVES_DIR.mkdir(parents=True, exist_ok=True)
            top.trace(WAVES_DIR / f"{name}-seed{seed}{waveform_suffix()}")
        for index in range(count):
            start = time.perf_counter()
            prog = draw(cfg, rng, rng.choices(KINDS, weights=(6, 3, 1))[0])
            report.gen_s += time.perf_counter() - start
            got = _run_on(top, prog)
            report.cycles += got[0]
            if (got[1], got[2]) != (prog.status, prog.expected):
                wave = _waveform(cfg, prog, name, seed, index, stall)
                raise FuzzMismatch(
                    f"{name} program {index} ({prog.kind}, seed {seed}): status RTL "
                    f"{got[1]:#x}, emulator {prog.status:#x}; "
                    f"{first_difference(cfg, prog, got[2])}. Waveform: {wave}")
            report.programs[prog.kind] += 1
            report.instructions += prog.fuzzed
        report.wall_s = top.wall_s
    return report


def _run_on(top: TopHarness, prog: FuzzProgram) -> tuple[int, int, list[bytes]]:
    for c, image in enumerate(prog.start):
        top.write(c, 0, image)
    got = top.run(prog.blob, max_cycles=2_000_000)
    channels = [top.read(c, 0, CHANNEL_BYTES) for c in range(len(prog.start))]
    return got.simulated, got.status, channels


def _waveform(cfg: AccelConfig, prog: FuzzProgram, name: str, seed: int, index: int,
              stall: float) -> Path:
    """Run ``prog`` again on a fresh top with tracing on; the waveform's path."""
    WAVES_DIR.mkdir(parents=True, exist_ok=True)
    path = WAVES_DIR / f"{name}-seed{seed}-program{index}{waveform_suffix()}"
    with TopHarness(cfg, [CHANNEL_BYTES] * cfg.mem_channels, 1 << 12, stall=stall,
                    seed=seed) as top:
        top.trace(path)
        _run_on(top, prog)
        top.trace(None)
    return path
