"""The SFU unit sequencer against the emulator: one SFU instruction on random buffers, every
buffer byte compared afterwards; faults where the emulator refuses."""

import random

import numpy as np
import torch

from host.emulator import Emulator, EmulatorError
from hw.controller import Fault
from hw.sfu_unit import SfuUnit, row_limit
from llmacc import isa
from llmacc import layout as L
from llmacc.config import PRESETS
from llmacc.isa import Buffer, Opcode, Reg, SfuFunc
from sim.unit_harness import Case, emulator_images, run_instructions

CFG = PRESETS["sim-small"].replace(act_buffer_bytes=4096, weight_buffer_bytes=1024,
                                   kv_buffer_bytes=2048, meta_buffer_bytes=1024,
                                   table_buffer_bytes=2048)
W = CFG.axi_data_bytes


def place(rng: random.Random, spans: dict[str, tuple[Buffer, int]]) -> dict[str, int]:
    """Word addresses for named regions (buffer, words), disjoint within each buffer."""
    at, free = {}, {b: 0 for b in Buffer}
    for name in rng.sample(list(spans), len(spans)):
        buf, size = spans[name]
        start = free[buf] + rng.randint(0, 3)
        at[name] = start
        free[buf] = start + size
        assert free[buf] <= CFG.buffer_words(buf), f"test regions overflow {buf.name}"
    return at


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def sfu_case(rng: random.Random, func: SfuFunc) -> tuple[Emulator, isa.Instruction, dict]:
    """A random legal SFU instruction with its buffers (random bytes around the records)."""
    emu = Emulator(CFG, [])
    for b in Buffer:
        emu.buf[b][:] = np.frombuffer(rng.randbytes(emu.buf[b].size), np.uint8)
    rows = rng.randint(1, 3)
    length = rng.randint(1, 24)
    f = {"func": func, "rows": rows, "length": length}
    wide = L.wide_pitch(length, W)
    spans = {"src_a": (Buffer.ACT, rows * wide), "dst": (Buffer.ACT, rows * wide)}
    regs = {Reg.POS: rng.randint(0, 30), Reg.SINK: rng.randint(0, 4),
            Reg.WINDOW: rng.choice((0, rng.randint(1, 10)))}
    if func in (SfuFunc.ADD, SfuFunc.MUL):
        bcast = rng.random() < 0.3
        f["imm"] = int(bcast)
        f["shift"] = rng.randint(-6, 40) if func is SfuFunc.ADD else rng.randint(0, 40)
        spans["src_b"] = (Buffer.TABLE, wide) if bcast else (Buffer.ACT, rows * wide)
    elif func is SfuFunc.SILU:
        f["imm"], f["imm2"] = rng.randint(0, 24), rng.randint(0, 24)
    elif func is SfuFunc.ROPE:
        d = rng.choice((2, 4, 6, 8))
        f["length"] = length = d * rng.randint(1, 3)
        wide = L.wide_pitch(length, W)
        spans.update(src_a=(Buffer.ACT, rows * wide), dst=(Buffer.ACT, rows * wide),
                     src_b=(Buffer.TABLE, rows * L.rope_pitch(d, W)))
        f["imm"] = d
    elif func is SfuFunc.RMSNORM:
        f["shift"] = rng.randint(-4, 20)
        spans["src_b"] = (Buffer.TABLE, L.gamma_pitch(length, W))
    elif func is SfuFunc.QUANT8:
        seg = rng.choice(divisors(length))
        f["imm2"] = 0 if seg == length and rng.random() < 0.5 else seg
        f["imm"] = rng.choice((0, seg, seg + rng.randint(1, 9)))
        pad = f["imm"] or seg
        spans["dst"] = (Buffer.ACT, rows * (length // seg) * L.qrow_pitch(pad, W))
    elif func is SfuFunc.KVQUANT:
        group, bits = rng.choice(divisors(length)), rng.choice((4, 8))
        f["imm"], f["imm2"] = group, bits
        spans["dst"] = (Buffer.KV, rows * (length // group) * L.kv_pitch(group, bits, W))
    elif func is SfuFunc.EMBED:
        f["imm"] = group = rng.randint(1, 9)
        f["shift"] = rng.randint(-20, 20)
        spans["src_a"] = (Buffer.ACT, rows * L.embed_pitch(length, group, W))
    at = place(rng, spans)
    f.update(at)
    if func is SfuFunc.RMSNORM:
        gamma = torch.tensor([rng.randint(-32768, 32767) for _ in range(length)])
        eps = rng.choice((0, rng.randint(0, 1 << 20), rng.randint(-(1 << 47), (1 << 47) - 1)))
        emu._put(Buffer.TABLE, at["src_b"], L.encode_gamma(gamma, eps, W))
    if func is SfuFunc.EMBED:  # exponents the contract meets in practice
        for r in range(rows):
            base = (at["src_a"] + r * L.embed_pitch(length, f["imm"], W)) * W
            emu.buf[Buffer.ACT][base:base + 2] = np.frombuffer(
                rng.randint(-30, 40).to_bytes(2, "little", signed=True), np.uint8)
    return emu, isa.make(Opcode.SFU, **f), regs


def run_against_emulator(cases: list[tuple[Emulator, isa.Instruction, dict]],
                         seed: int) -> list[int]:
    """Run every case through the unit (one simulation) and the emulator; the buffers must
    be equal byte for byte, or both must refuse. Returns the unit's fault codes."""
    outcomes = run_instructions(CFG, SfuUnit(CFG), [
        Case(emulator_images(emu), insn, regs) for emu, insn, regs in cases])
    for (emu, insn, regs), out in zip(cases, outcomes, strict=True):
        try:
            emu.run([insn], regs)
        except EmulatorError:
            assert out.fault != Fault.NONE, f"{insn}: the emulator refuses it (seed {seed})"
            continue
        assert out.fault == Fault.NONE, f"{insn}: fault {Fault(out.fault).name} (seed {seed})"
        for b in Buffer:
            want = emulator_images(emu)[b]
            if out.images[b] != want:
                diff = np.flatnonzero(np.frombuffer(out.images[b], np.uint8) !=
                                      np.frombuffer(want, np.uint8))
                raise AssertionError(f"{b.name} differs at {diff.size} bytes, first word "
                                     f"{int(diff[0]) // W} (seed {seed}, {insn})")
    return [out.fault for out in outcomes]


def test_sfu_unit_matches_emulator(seed):
    """Every function, three random instructions each."""
    rng = random.Random(seed)
    run_against_emulator([sfu_case(rng, func) for func in SfuFunc for _ in range(3)], seed)


def _with(insn: isa.Instruction, **fields) -> isa.Instruction:
    return isa.make(insn.opcode, **{**insn.fields, **fields})


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
    cases = []
    for func, fields, _ in BROKEN:
        emu, insn, regs = sfu_case(rng, func)
        cases.append((emu, _with(insn, **fields), regs))
    eps = sfu_case(rng, SfuFunc.RMSNORM)  # an epsilon beyond 48 bits
    eps[0]._put(Buffer.TABLE, eps[1].src_b, L.encode_gamma(torch.zeros(eps[1].length,
                                                                       dtype=torch.int64),
                                                           1 << 50, W))
    faults = run_against_emulator(cases + [eps], seed)
    assert faults == [fault for _, _, fault in BROKEN] + [Fault.PARAM]
