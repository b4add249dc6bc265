"""The SFU unit sequencer against the emulator: SFU instructions on random buffers
(``sim/instruction_cases.py``), every buffer byte compared afterwards; faults where the
emulator refuses."""

import random

import torch

from hw.sfu_unit import SfuUnit, row_limit
from llmacc import isa
from llmacc import layout as L
from llmacc.config import PRESETS
from llmacc.isa import Buffer, SfuFunc
from llmacc.kernel import Fault
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
    faults = check_against_emulator(CFG, SfuUnit(CFG), cases + [eps], seed)
    assert faults == [fault for _, _, fault in BROKEN] + [Fault.PARAM]
