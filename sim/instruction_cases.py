"""Random legal instructions with the buffers they start from, for the unit sequencer tests,
the accelerator-top tests and the ``make sim`` fuzz: every SFU function, every weight format,
sparsity, output mode and matrix opcode, every attention function.

Each case is an :class:`InstructionCase`: an emulator whose buffers hold random bytes around
the instruction's records (so that a wrong read shows), the instruction, and the run-time
registers. Values stay where the integer reference is defined (no 48-bit accumulator
overflow), which the compiler guarantees for real programs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from llmacc import isa
from llmacc import layout as L
from llmacc.config import AccelConfig
from llmacc.isa import AttnFunc, Buffer, Opcode, OutMode, Reg, SfuFunc, Sparsity, WeightFormat
from llmacc.widths import STREAM_PAGE_BYTES
from sim.emulator import Emulator


@dataclass
class InstructionCase:
    emu: Emulator  #: holds the starting buffers; running the instruction on it gives the result
    insn: isa.Instruction
    regs: dict[Reg, int] = field(default_factory=dict)

    @property
    def images(self) -> dict[Buffer, bytes]:
        return {b: np.asarray(self.emu.buf[b]).tobytes() for b in Buffer}


def place(cfg: AccelConfig, rng: random.Random,
          spans: dict[str, tuple[Buffer, int]]) -> dict[str, int]:
    """Word addresses for named regions (buffer, words), disjoint within each buffer."""
    at, free = {}, {b: 0 for b in Buffer}
    for name in rng.sample(list(spans), len(spans)):
        buf, size = spans[name]
        start = free[buf] + rng.randint(0, 3)
        at[name] = start
        free[buf] = start + size
        if free[buf] > cfg.buffer_words(buf):
            raise ValueError(f"the regions overflow the {buf.name} buffer of {cfg.name}")
    return at


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def random_buffers(cfg: AccelConfig, rng: random.Random) -> Emulator:
    """An emulator whose buffers hold random bytes."""
    emu = Emulator(cfg, [])
    for b in Buffer:
        emu.buf[b][:] = np.frombuffer(rng.randbytes(emu.buf[b].size), np.uint8)
    return emu


def sfu_case(cfg: AccelConfig, rng: random.Random, func: SfuFunc,
             max_length: int = 24) -> InstructionCase:
    """A random legal SFU instruction with its buffers (random bytes around the records),
    rows of 1 to ``max_length`` elements."""
    w = cfg.axi_data_bytes
    emu = random_buffers(cfg, rng)
    rows = rng.randint(1, 3)
    length = rng.randint(1, max_length)
    f = {"func": func, "rows": rows, "length": length}
    wide = L.wide_pitch(length, w)
    spans = {"src_a": (Buffer.ACT, rows * wide), "dst": (Buffer.ACT, rows * wide)}
    regs = {Reg.POS: rng.randint(0, 30), Reg.SINK: rng.randint(0, 4),
            Reg.WINDOW: rng.choice((0, rng.randint(1, 10)))}
    spec = isa.SFU_FUNCTIONS[func]
    f.update({name: rng.randint(lo, hi) for name, (lo, hi) in spec.ranges.items()})
    operands = spec.operands
    if operands == "binary":
        bcast = rng.random() < 0.3
        f["imm"] = int(bcast)
        spans["src_b"] = (Buffer.TABLE, wide) if bcast else (Buffer.ACT, rows * wide)
    elif operands == "rope":
        d = rng.choice((2, 4, 6, 8, 16, 24))  # heads of whole beats go to the lanes
        f["length"] = length = d * rng.randint(1, 3)
        wide = L.wide_pitch(length, w)
        spans.update(src_a=(Buffer.ACT, rows * wide), dst=(Buffer.ACT, rows * wide),
                     src_b=(Buffer.TABLE, rows * L.rope_pitch(d, w)))
        f["imm"] = d
    elif operands == "gamma":
        spans["src_b"] = (Buffer.TABLE, L.gamma_pitch(length, w))
    elif operands == "quant8":
        seg = rng.choice(divisors(length))
        f["imm2"] = 0 if seg == length and rng.random() < 0.5 else seg
        f["imm"] = rng.choice((0, seg, seg + rng.randint(1, 9)))
        pad = f["imm"] or seg
        spans["dst"] = (Buffer.ACT, rows * (length // seg) * L.qrow_pitch(pad, w))
    elif operands == "kvquant":
        group, bits = rng.choice(divisors(length)), rng.choice(L.KV_CODE_BITS)
        f["imm"], f["imm2"] = group, bits
        spans["dst"] = (Buffer.KV, length // group * L.kv_block(rows, group, bits, w))
    elif operands == "embed":
        f["imm"] = group = rng.randint(1, 9)
        spans["src_a"] = (Buffer.ACT, rows * L.embed_pitch(length, group, w))
    at = place(cfg, rng, spans)
    f.update(at)
    if operands == "gamma":
        gamma = torch.tensor([rng.randint(-32768, 32767) for _ in range(length)])
        eps = rng.choice((0, rng.randint(0, 1 << 20), rng.randint(-(1 << 47), (1 << 47) - 1)))
        emu._put(Buffer.TABLE, at["src_b"], L.encode_gamma(gamma, eps, w))
    if operands == "embed":  # exponents the contract meets in practice
        for r in range(rows):
            base = (at["src_a"] + r * L.embed_pitch(length, f["imm"], w)) * w
            emu.buf[Buffer.ACT][base:base + 2] = np.frombuffer(
                rng.randint(-30, 40).to_bytes(2, "little", signed=True), np.uint8)
    return InstructionCase(emu, isa.make(Opcode.SFU, **f), regs)


def mat_case(cfg: AccelConfig, rng: random.Random, fmt: WeightFormat, sparsity: Sparsity,
             mode: OutMode, opcode: Opcode, streamable: bool = False) -> InstructionCase:
    """A random legal tile: codes, N:M keep masks, scales, type ids, and INT8 rows; for
    MATSTREAM (or with ``streamable``) with groups a weight stream's SCALES words hold.
    The weights come from torch's generator, the rest from ``rng``."""
    w = cfg.axi_data_bytes
    emu = random_buffers(cfg, rng)
    nm = L.SPARSITY_NM[sparsity]
    block = nm[1] if nm else 1
    keep_n = nm[0] if nm else 1
    # the engine needs at least `chain_group` kept weights per quantisation group
    glog = max(3, (cfg.chain_group * block // keep_n).bit_length() - 1, block.bit_length() - 1)
    if streamable or opcode is Opcode.MATSTREAM:  # a beat's groups fit a SCALES word
        most = L.stream_scale_entries(cfg.axi_data_bits)
        glog = max(glog, (-(-cfg.chain_len * block // (keep_n * most))).bit_length() - 1)
    glog = rng.randint(glog, min(glog + 2, 7))
    group = 1 << glog
    unit = max(group, block)
    k = unit * rng.randint(1, max(1, 96 // unit))
    n = rng.randint(1, 9)
    m = 1 if opcode is Opcode.MATVEC else rng.randint(1, 5)
    ranges = isa.OUT_MODES[mode].ranges
    desc = L.Descriptor(fmt, sparsity, glog, rng.randint(*ranges["p0"]),
                        rng.randint(*ranges["p1"]))
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
    wgt, meta = L.encode_weight_rows(desc, codes, keep, mant, shift, aux, w)
    x = torch.randint(-127, 128, (m, k))
    x[:, rng.randrange(k)] = 127
    xm, xe = torch.randint(1, 1 << 16, (m,)), torch.randint(-8, 8, (m,))
    act = L.encode_qrows(x, xm, xe, w)
    qrow_pitch, wgt_pitch = L.qrow_pitch(k, w), desc.wgt_pitch(k, w)
    desc_words, meta_pitch = L.descriptor_words(w), desc.meta_pitch(k, w)
    out_pitch = L.wide_pitch(n, w) + rng.randint(0, 2)
    out_words = (m - 1) * out_pitch + L.wide_pitch(n, w)
    act_addr = rng.randint(0, 8)
    out_addr = act_addr + m * qrow_pitch + rng.randint(0, 8)
    if rng.random() < 0.5:  # output below the activations
        out_addr, act_addr = rng.randint(0, 4), out_addr + out_words
    stream = opcode is Opcode.MATSTREAM
    fields = {"k": k, "n": n, "m": m, "act_addr": act_addr, "out_addr": out_addr,
              "out_pitch": 0 if opcode is Opcode.MATVEC else out_pitch, "out_mode": mode}
    # MATSTREAM draws its page where the others draw wgt_addr: the same seed gives the same
    # tile in both forms
    if stream:
        fields["page"] = rng.randint(0, 3)
    else:
        fields["wgt_addr"] = rng.randint(0, cfg.buffer_words(Buffer.WGT) - n * wgt_pitch)
    fields["meta_addr"] = rng.randint(0, cfg.buffer_words(Buffer.META) - desc_words
                                      - n * meta_pitch)
    emu._put(Buffer.ACT, act_addr, act)
    emu._put(Buffer.META, fields["meta_addr"], desc.encode(w))
    if stream:
        geom = L.stream_geometry(cfg, desc, k)
        streams = L.encode_tile_streams(geom, cfg.mem_channels, cfg.lanes_per_channel, codes,
                                        keep, mant, shift, aux)
        at = fields["page"] * STREAM_PAGE_BYTES
        emu.ext = [np.frombuffer(rng.randbytes(at + s.size + w), np.uint8).copy()
                   for s in streams]
        for mem, s in zip(emu.ext, streams, strict=True):
            mem[at:at + s.size] = s.reshape(-1)
    else:
        emu._put(Buffer.WGT, fields["wgt_addr"], wgt)
        emu._put(Buffer.META, fields["meta_addr"] + desc_words, meta)
    if isa.OUT_MODES[mode].operands == "residual":  # residuals of a sensible size
        old = torch.randint(-(1 << 24), 1 << 24, (m, n))
        emu._put_wide(out_addr, old, fields["out_pitch"])
    return InstructionCase(emu, isa.make(opcode, **fields), {})


def attn_case(cfg: AccelConfig, rng: random.Random, func: AttnFunc,
              max_keys: int = 12) -> InstructionCase:
    """A random ATTN instruction: INT8 query rows or Q0.15 probability rows, INT4/INT8 KV
    rows (one to ``max_keys`` keys), the Lambda mask from random registers."""
    w = cfg.axi_data_bytes
    emu = random_buffers(cfg, rng)
    d = rng.choice((2, 4, 6, 8, 16, 24, 40))  # one to three KV words, part-filled sub-steps
    keys, rows = rng.randint(1, max_keys), rng.randint(1, 3)
    kv8 = rng.random() < 0.3
    bits = 8 if kv8 else 4
    qmax = (1 << (bits - 1)) - 1
    kv_codes = torch.randint(-qmax, qmax + 1, (keys, d))
    kv = L.encode_kv(kv_codes, torch.randint(0, 1 << 16, (keys,)), torch.randint(-6, 6, (keys,)),
                     torch.randint(-(1 << 20), 1 << 20, (keys,)), bits, w).reshape(1, -1)
    if func is AttnFunc.PV:  # Q0.15, 1.0 included
        probs = torch.randint(0, (1 << 15) + 1, (rows, keys))
        rows_in = L.encode_wide(probs, w)
        d_len = d
    else:
        q = torch.randint(-127, 128, (rows, d))
        rows_in = L.encode_qrows(q, torch.randint(1, 1 << 16, (rows,)),
                                 torch.randint(-8, 8, (rows,)), w)
        d_len = keys
    a_step = rows_in.shape[1] // w + rng.randint(0, 2)
    d_step = L.wide_pitch(d_len, w) + rng.randint(0, 2)
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
    return InstructionCase(emu, insn, regs)


