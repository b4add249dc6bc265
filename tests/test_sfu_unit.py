"""The SFU unit sequencer against the emulator: SFU instructions on random buffers
(``sim/instruction_cases.py``), every buffer byte compared afterwards; faults where the
emulator refuses; on the u280's words and lanes, the beats at the read-ahead fetches' pace
and their cycles as the cycle model prices them."""

import random

import torch

from hw.sfu_unit import SfuUnit, row_limit
from llmacc import isa
from llmacc import layout as L
from llmacc.config import PRESETS
from llmacc.isa import Buffer, SfuFunc
from llmacc.kernel import Fault
from sim.compute_timing import sfu_cycles
from sim.instruction_cases import InstructionCase, sfu_case
from sim.unit_harness import check_against_emulator

CFG = PRESETS["sim-small"].replace(act_buffer_bytes=4096, weight_buffer_bytes=1024,
                                   kv_buffer_bytes=2048, meta_buffer_bytes=1024,
                                   table_buffer_bytes=2048)
W = CFG.axi_data_bytes


def test_sfu_unit_matches_emulator(seed):
    """Every function, three random instructions each."""
    rng = random.Random(seed)
    cases = [sfu_case(CFG, rng, func) for func in SfuFunc for _ in range(3)]
    check_against_emulator(CFG, SfuUnit(CFG), cases, seed)


#: The u280's 512-bit words and four lanes (a word holds four beats of a row), small buffers.
WIDE_WORDS = PRESETS["sim-small"].replace(
    axi_data_bits=PRESETS["u280"].axi_data_bits, sfu_lanes=PRESETS["u280"].sfu_lanes,
    act_buffer_bytes=256 * 1024, weight_buffer_bytes=4096, kv_buffer_bytes=256 * 1024,
    meta_buffer_bytes=4096, table_buffer_bytes=16 * 1024)
BEAT_FUNCTIONS = (SfuFunc.ADD, SfuFunc.MUL, SfuFunc.RMSNORM, SfuFunc.QUANT8, SfuFunc.KVQUANT,
                  SfuFunc.SOFTMAX)


def test_sfu_unit_beats_on_wide_words(seed):
    """The functions that take beats, rows up to 160 elements, on 512-bit words: equal to the
    emulator, and (rows of two words or more) busy within 5% of ``sfu_cycles`` (the
    calibration tests run sim-small and sim-wide, whose beats are whole words)."""
    rng = random.Random(seed)
    cases = [sfu_case(WIDE_WORDS, rng, func, max_length=160) for func in BEAT_FUNCTIONS
             for _ in range(2)]
    outcomes = check_against_emulator(WIDE_WORDS, SfuUnit(WIDE_WORDS), cases, seed)
    long_row = 2 * WIDE_WORDS.axi_data_bits // L.WIDE.width
    for case, out in zip(cases, outcomes, strict=True):
        if case.insn.length < long_row:
            continue
        model = sfu_cycles(WIDE_WORDS, case.insn)
        assert abs(model / out.cycles - 1) <= 0.05, \
            f"seed {seed}: {case.insn}: {out.cycles} cycles, modelled {model}"


def test_kvquant_writes_only_its_rows_header_slots(seed):
    """KVQUANT on 128- and 512-bit words (two and eight headers a word): each row's header
    goes into slot ``POS % kv_slots + r`` of its block's header words, every other byte of
    them as it was (the buffers hold random bytes), as in the emulator."""
    rng = random.Random(seed)
    for bits in (128, 512):
        cfg = CFG.replace(axi_data_bits=bits, kv_buffer_bytes=16 * 1024,
                          act_buffer_bytes=16 * 1024, table_buffer_bytes=8192)
        cases = [sfu_case(cfg, rng, SfuFunc.KVQUANT) for _ in range(6)]
        check_against_emulator(cfg, SfuUnit(cfg), cases, seed)


def _with(case: InstructionCase, **fields) -> InstructionCase:
    insn = isa.make(case.insn.opcode, **{**case.insn.fields, **fields})
    return InstructionCase(case.emu, insn, case.regs)


BROKEN = [  # (function, fields that break it, the fault)
    (SfuFunc.ROPE, {"imm": 3}, Fault.PARAM),
    (SfuFunc.ROPE, {"imm": 0}, Fault.PARAM),
    (SfuFunc.QUANT8, {"imm2": 5, "length": 12}, Fault.PARAM),
    (SfuFunc.QUANT8, {"imm2": 4, "imm": 3, "length": 12}, Fault.PARAM),
    (SfuFunc.KVQUANT, {"imm2": 5}, Fault.PARAM),
    (SfuFunc.EMBED, {"imm": 0}, Fault.PARAM),
    (SfuFunc.ADD, {"dst": CFG.buffer_words(Buffer.ACT) - 1, "length": 20}, Fault.RANGE),
    (SfuFunc.RMSNORM, {"src_b": CFG.buffer_words(Buffer.TABLE) - 1, "length": 16},
     Fault.RANGE),
    (SfuFunc.SOFTMAX, {"length": row_limit(CFG) + 1, "rows": 1}, Fault.RANGE),
]


def test_sfu_unit_faults_where_the_emulator_refuses(seed):
    rng = random.Random(seed)
    cases = [_with(sfu_case(CFG, rng, func), **fields) for func, fields, _ in BROKEN]
    eps = sfu_case(CFG, rng, SfuFunc.RMSNORM)  # an epsilon beyond 48 bits
    zeros = torch.zeros(eps.insn.length, dtype=torch.int64)
    eps.emu._put(Buffer.TABLE, eps.insn.src_b, L.encode_gamma(zeros, 1 << 50, W))
    faults = [out.fault for out in
              check_against_emulator(CFG, SfuUnit(CFG), cases + [eps], seed)]
    assert faults == [fault for _, _, fault in BROKEN] + [Fault.PARAM]
