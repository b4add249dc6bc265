"""The COMPUTE unit sequencer against the emulator: matrix instructions of every weight
format, sparsity and output mode, on random buffers, every buffer byte compared afterwards;
faults where the emulator refuses or the engine's schedule cannot run."""

import random

import numpy as np
import torch

from host.emulator import Emulator, EmulatorError
from hw.compute_unit import ComputeUnit
from hw.controller import Fault
from llmacc import isa
from llmacc import layout as L
from llmacc.config import PRESETS
from llmacc.isa import AttnFunc, Buffer, Opcode, OutMode, Reg, Sparsity, WeightFormat
from sim.unit_harness import Case, emulator_images, run_instructions

CFG = PRESETS["sim-small"].replace(act_buffer_bytes=4096, weight_buffer_bytes=4096,
                                   kv_buffer_bytes=2048, meta_buffer_bytes=2048,
                                   table_buffer_bytes=1024)
W = CFG.axi_data_bytes


def _random_buffers(rng: random.Random) -> Emulator:
    emu = Emulator(CFG, [])
    for b in Buffer:
        emu.buf[b][:] = np.frombuffer(rng.randbytes(emu.buf[b].size), np.uint8)
    return emu


def mat_case(rng: random.Random, fmt: WeightFormat, sparsity: Sparsity, mode: OutMode,
             opcode: Opcode) -> tuple[Emulator, isa.Instruction, dict]:
    """A random legal tile: codes, N:M keep masks, scales, type ids, and INT8 rows."""
    emu = _random_buffers(rng)
    nm = L.SPARSITY_NM[sparsity]
    block = nm[1] if nm else 1
    keep_n = nm[0] if nm else 1
    # the engine needs at least `chain_group` kept weights per quantisation group
    glog = max(3, (CFG.chain_group * block // keep_n).bit_length() - 1, block.bit_length() - 1)
    glog = rng.randint(glog, min(glog + 2, 7))
    group = 1 << glog
    unit = max(group, block)
    k = unit * rng.randint(1, max(1, 96 // unit))
    n = rng.randint(1, 9)
    m = rng.randint(1, 5) if opcode is Opcode.MATMAT else 1
    desc = L.Descriptor(fmt, sparsity, glog, rng.randint(-4, 12), rng.randint(0, 12))
    bits = L.FORMAT_BITS[fmt]
    if fmt is WeightFormat.INT8:
        codes = torch.randint(-127, 128, (n, k))
    else:
        codes = torch.randint(0, 1 << bits, (n, k))
    keep = None
    if nm:
        keep = torch.zeros(n, k, dtype=torch.bool)
        for r in range(n):
            for b0 in range(0, k, block):
                keep[r, b0 + torch.randperm(block)[:keep_n]] = True
    groups = k // group
    mant = torch.randint(0, 1 << 12, (n, groups))
    shift = torch.randint(14, 30, (n,))
    aux = None
    if fmt is WeightFormat.W2:
        aux = torch.randint(0, 4, (n, groups))
    elif fmt is not WeightFormat.INT8:
        aux = torch.randint(0, 6, (n, groups))
    wgt, meta = L.encode_weight_rows(desc, codes, keep, mant, shift, aux, W)
    x = torch.randint(-127, 128, (m, k))
    x[:, rng.randrange(k)] = 127
    xm, xe = torch.randint(1, 1 << 16, (m,)), torch.randint(-8, 8, (m,))
    act = L.encode_qrows(x, xm, xe, W)
    qp, wp = L.qrow_pitch(k, W), desc.wgt_pitch(k, W)
    dw, mp = L.descriptor_words(W), desc.meta_pitch(k, W)
    out_pitch = L.wide_pitch(n, W) + rng.randint(0, 2)
    out_words = (m - 1) * out_pitch + L.wide_pitch(n, W)
    act_addr = rng.randint(0, 8)
    out_addr = act_addr + m * qp + rng.randint(0, 8)
    if rng.random() < 0.5:  # output below the activations
        out_addr, act_addr = rng.randint(0, 4), out_addr + out_words
    fields = {"k": k, "n": n, "m": m, "act_addr": act_addr, "out_addr": out_addr,
              "wgt_addr": rng.randint(0, CFG.buffer_words(Buffer.WGT) - n * wp),
              "meta_addr": rng.randint(0, CFG.buffer_words(Buffer.META) - dw - n * mp),
              "out_pitch": out_pitch if opcode is Opcode.MATMAT else 0, "out_mode": mode}
    emu._put(Buffer.ACT, act_addr, act)
    emu._put(Buffer.WGT, fields["wgt_addr"], wgt)
    emu._put(Buffer.META, fields["meta_addr"], desc.encode(W))
    emu._put(Buffer.META, fields["meta_addr"] + dw, meta)
    if mode is OutMode.ADD:  # residuals of a sensible size
        old = torch.randint(-(1 << 24), 1 << 24, (m, n))
        emu._put_wide(out_addr, old, fields["out_pitch"])
    return emu, isa.make(opcode, **fields), {}


def run_against_emulator(cases, seed: int) -> list[int]:
    outcomes = run_instructions(CFG, ComputeUnit(CFG), [
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


def test_matrix_instructions_match_emulator(seed):
    """Every weight format and sparsity, MATVEC and MATMAT, every output mode."""
    rng = random.Random(seed)
    cases = []
    for fmt in WeightFormat:
        for sparsity in Sparsity:
            opcode = rng.choice((Opcode.MATVEC, Opcode.MATMAT))
            cases.append(mat_case(rng, fmt, sparsity, rng.choice(list(OutMode)), opcode))
    run_against_emulator(cases, seed)


def attn_case(rng: random.Random, func: AttnFunc) -> tuple[Emulator, isa.Instruction, dict]:
    """A random ATTN instruction: INT8 query rows or Q0.15 probability rows, INT4/INT8 KV
    rows, the Lambda mask from random registers."""
    emu = _random_buffers(rng)
    d = rng.choice((2, 4, 8, 16))
    keys, rows = rng.randint(1, 12), rng.randint(1, 3)
    kv8 = rng.random() < 0.3
    bits = 8 if kv8 else 4
    qmax = (1 << (bits - 1)) - 1
    kv_codes = torch.randint(-qmax, qmax + 1, (keys, d))
    kv = L.encode_kv(kv_codes, torch.randint(0, 1 << 16, (keys,)), torch.randint(-6, 6, (keys,)),
                     torch.randint(-(1 << 20), 1 << 20, (keys,)), bits, W)
    if func is AttnFunc.PV:
        probs = torch.randint(0, 1 << 15, (rows, keys))
        rows_in = L.encode_wide(probs, W)
        d_len = d
    else:
        q = torch.randint(-127, 128, (rows, d))
        rows_in = L.encode_qrows(q, torch.randint(1, 1 << 16, (rows,)),
                                 torch.randint(-8, 8, (rows,)), W)
        d_len = keys
    a_step = rows_in.shape[1] // W + rng.randint(0, 2)
    d_step = L.wide_pitch(d_len, W) + rng.randint(0, 2)
    q_addr = rng.randint(0, 4)
    dst = q_addr + rows * a_step + rng.randint(0, 4)
    kv_addr = rng.randint(0, 16)
    emu._put(Buffer.KV, kv_addr, kv)
    emu._put(Buffer.ACT, q_addr, rows_in, a_step)
    insn = isa.make(Opcode.ATTN, func=func, q_addr=q_addr, kv_addr=kv_addr, dst=dst,
                    head_dim=d, keys=keys, rows=rows, a_step=a_step, d_step=d_step,
                    shift=rng.randint(-4, 4), kv8=int(kv8))
    regs = {Reg.POS: rng.randint(0, keys + 2), Reg.SINK: rng.randint(0, 3),
            Reg.WINDOW: rng.choice((0, rng.randint(1, 6)))}
    return emu, insn, regs


def test_attention_matches_emulator(seed):
    rng = random.Random(seed)
    run_against_emulator([attn_case(rng, f) for f in AttnFunc for _ in range(3)], seed)


def test_compute_unit_faults(seed):
    """A descriptor that does not decode, K off the group, records off the buffers, an odd
    head size: the emulator refuses, the unit faults. A tile the engine cannot schedule runs
    in the emulator and is UNSUPPORTED here (the compiler never emits one)."""
    rng = random.Random(seed)
    cases, want = [], []

    def broken(case, fault, **fields):
        emu, insn, regs = case
        cases.append((emu, isa.make(insn.opcode, **{**insn.fields, **fields}), regs))
        want.append(fault)

    emu, insn, regs = mat_case(rng, WeightFormat.W2, Sparsity.DENSE, OutMode.WIDE,
                               Opcode.MATVEC)
    emu.buf[Buffer.META][insn.meta_addr * W + 2] = 9  # group_log2 out of range
    broken((emu, insn, regs), Fault.PARAM)
    case = mat_case(rng, WeightFormat.MIXED4, Sparsity.DENSE, OutMode.WIDE, Opcode.MATVEC)
    broken(case, Fault.PARAM, k=case[1].k + 8)
    case = mat_case(rng, WeightFormat.INT8, Sparsity.DENSE, OutMode.ADD, Opcode.MATMAT)
    broken(case, Fault.RANGE, out_addr=CFG.buffer_words(Buffer.ACT) - 1)
    broken(attn_case(rng, AttnFunc.SCORE), Fault.PARAM, head_dim=5)
    broken(attn_case(rng, AttnFunc.PV), Fault.RANGE, kv_addr=CFG.buffer_words(Buffer.KV) - 1)
    faults = run_against_emulator(cases, seed)
    assert faults == want

    emu, insn, regs = mat_case(rng, WeightFormat.W2, Sparsity.DENSE, OutMode.WIDE,
                               Opcode.MATVEC)
    desc = L.Descriptor(WeightFormat.W2, Sparsity.N2M16, 4)  # 2 kept per group of 16 < 4 taps
    assert desc.schedule_error(CFG.chain_group)
    emu.buf[Buffer.META][insn.meta_addr * W:insn.meta_addr * W + W] = desc.encode(W)[0]
    insn = isa.make(insn.opcode, **{**insn.fields, "k": 32})  # whole groups and blocks
    out = run_instructions(CFG, ComputeUnit(CFG), [Case(emulator_images(emu), insn, regs)])
    assert out[0].fault == Fault.UNSUPPORTED
