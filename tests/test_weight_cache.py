"""Decoded weight tiles kept by the emulator: the fast product equals the contract's, and a
tile is never reused once its bytes may have changed (a host write, a STORE over them)."""

import random

import numpy as np
import pytest
import torch

from llmacc import isa
from llmacc import layout as L
from llmacc import numerics as N
from llmacc.config import preset
from llmacc.isa import Buffer, Opcode, OutMode, Sparsity, SysFunc, WeightFormat
from sim.emulator import Emulator
from sim.instruction_cases import mat_case
from sim.weight_cache import PreparedTile, WeightCache, grouped_acc

CFG = preset("sim-small")


@pytest.mark.parametrize("group", [8, 32, 128])
def test_grouped_product_equals_the_contract(seed, group):
    """At the extremes of every operand (|w| = 16, x = -128, mantissas near 2**16), float32
    group sums and float64 rescaling give linear_acc's integers."""
    gen = torch.Generator().manual_seed(seed)
    t, n, k = 3, 17, group * 5
    ops = torch.randint(-16, 17, (n, k), generator=gen)
    ops[0] = 16
    x = torch.randint(-128, 128, (t, k), generator=gen)
    x[0] = -128
    mant = torch.randint(0, 1 << 16, (n, k // group), generator=gen)
    mant[0] = (1 << 16) - 1
    tile = PreparedTile.of(ops, mant, torch.zeros(n, dtype=torch.int64), group)
    assert tile.exact_f32, f"seed {seed}"
    assert torch.equal(grouped_acc(x, tile), N.linear_acc(x, ops, mant, group)), f"seed {seed}"


def test_operands_beyond_float32_take_the_integer_product(seed):
    gen = torch.Generator().manual_seed(seed)
    ops = torch.randint(-2000, 2000, (4, 256), generator=gen)
    x = torch.randint(-128, 128, (2, 256), generator=gen)
    mant = torch.randint(0, 1 << 16, (4, 2), generator=gen)
    tile = PreparedTile.of(ops, mant, torch.zeros(4, dtype=torch.int64), 128)
    assert not tile.exact_f32
    assert torch.equal(grouped_acc(x, tile), N.linear_acc(x, ops, mant, 128)), f"seed {seed}"


def _staged(seed, budget):
    """A random INT8 tile placed in external memory, an emulator whose buffers hold the
    tile case's bytes, and a program that loads the tile and multiplies."""
    with torch.random.fork_rng():  # mat_case draws its tensors from torch's generator
        torch.manual_seed(seed)
        case = mat_case(CFG, random.Random(seed), WeightFormat.INT8, Sparsity.DENSE,
                        OutMode.WIDE, Opcode.MATVEC)
    insn, w = case.insn, CFG.axi_data_bytes
    desc = L.Descriptor.decode(case.emu.buf[Buffer.META][insn.meta_addr * w:][:w][None])
    wwords = insn.n * desc.wgt_pitch(insn.k, w)
    mwords = L.descriptor_words(w) + insn.n * desc.meta_pitch(insn.k, w)
    wgt = case.emu.buf[Buffer.WGT][insn.wgt_addr * w:][:wwords * w].copy()
    meta = case.emu.buf[Buffer.META][insn.meta_addr * w:][:mwords * w].copy()
    emu = Emulator(CFG, [1 << 16])
    emu.weights = WeightCache(w, budget)
    for b in Buffer:
        emu.buf[b][:] = case.emu.buf[b]
    emu.write_ext(0, 0, wgt)
    emu.write_ext(0, 1 << 15, meta)

    def load(buf, addr, words, at):
        return isa.make(Opcode.LOAD, buf=buf, chan=0, ext_addr=at, buf_addr=addr, words=words,
                        rows=1)
    loads = [load(Buffer.WGT, insn.wgt_addr, wwords, 0),
             load(Buffer.META, insn.meta_addr, mwords, 1 << 15)]
    return emu, loads, insn, wwords


def _result(emu):
    return emu.buf[Buffer.ACT].copy()


@pytest.mark.parametrize("change", ["host write", "store over the weights"])
def test_a_changed_tile_is_decoded_again(seed, change):
    """The same loads and product run twice, the weight bytes changed in between: the second
    product must follow the new bytes, as an emulator without the cache computes it."""
    out = []
    for budget in (0, 1 << 30):
        emu, loads, insn, wwords = _staged(seed, budget)
        halt = isa.make(Opcode.SYS, func=SysFunc.HALT)
        emu.run(loads + [insn, halt])
        first = _result(emu)
        if change == "host write":
            emu.write_ext(0, 0, np.full(wwords * CFG.axi_data_bytes, 0x5A, np.uint8))
            store = []
        else:  # ACT bytes (results, activations) over the first weight words
            store = [isa.make(Opcode.STORE, buf=Buffer.ACT, chan=0, ext_addr=0, buf_addr=0,
                              words=min(wwords, 4), rows=1)]
        emu.run(store + loads + [insn, halt])
        out.append((first, _result(emu)))
    (cold_first, cold_second), (warm_first, warm_second) = out
    assert np.array_equal(cold_first, warm_first), f"seed {seed}"
    assert np.array_equal(cold_second, warm_second), f"seed {seed}"
    assert not np.array_equal(cold_first, cold_second), f"seed {seed}: the change changed nothing"


def test_a_reloaded_tile_is_decoded_once(seed):
    emu, loads, insn, _ = _staged(seed, 1 << 30)
    halt = isa.make(Opcode.SYS, func=SysFunc.HALT)
    emu.run(loads + [insn, halt])
    first = _result(emu)
    emu.run(loads + [insn, halt])
    assert (len(emu.weights), emu.weights.misses, emu.weights.hits) == (1, 1, 1)
    assert np.array_equal(first, _result(emu)), f"seed {seed}"
