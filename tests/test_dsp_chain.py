"""The DSP48E2-shaped cascade and the sparse DSP chain, bit for bit against numpy models,
and the DSP inference yosys finds for the cascade."""

import random

import numpy as np
import pytest
import torch

from boards.synth_report import yosys_cells
from hw.dsp48e2 import DspCascade, DspPrimitives
from hw.pipeline import StreamedCore
from hw.sparse_dsp_chain import INDEX_IN_CODE_AT, SparseDspChain, chain_layouts, window
from hw.weight_decode import slot_fields
from llmacc import layout as L
from llmacc import numerics as NU
from llmacc.isa import Sparsity, WeightFormat
from llmacc.layout import SPARSITY_NM
from sim import stream_harness as H
from tests.helpers.simulators import LANE_VARIANTS, run_block

N, GROUP = 16, 4


def chain_model(ops, idx, x, sparsity, pack, n=N, group=GROUP):
    """Per-slot partial sums of one beat, from the weights' columns (numpy)."""
    nm = SPARSITY_NM[sparsity]
    lanes = np.arange(n)
    cols = lanes if nm is None else lanes // nm[0] * nm[1] + np.asarray(idx)
    out = []
    for j in range(n // group):
        start, end = j * group, (j + 1) * group
        sums = []
        for t in range(2):
            xt = np.asarray(x[t])[cols] if (t == 0 or pack) else np.zeros(n, dtype=int)
            sums.append(int(np.dot(np.asarray(ops)[start:end], xt[start:end])))
        out.append(sums)
    return out


def _weights(rng, pack: bool, edge: bool, int8: bool, n=N, group=GROUP):
    """A beat's codes, its slots' group decode and the operands they stand for: low-bit
    formats when two tokens share the DSPs, INT8 too when not (and ``int8``)."""
    formats = [f for f in WeightFormat if f is not WeightFormat.INT8 or not pack and int8]
    fmt = rng.choice(formats)
    bits = L.FORMAT_BITS[fmt]
    aux = [0 if fmt is WeightFormat.INT8 else rng.randrange(
        4 if fmt is WeightFormat.W2 else len(NU.MIXED3_TYPES)) for _ in range(n // group)]
    codes = [rng.choice((0x81, 0x7F, 0x80)) if edge and fmt is WeightFormat.INT8
             else rng.randrange(1 << bits) for _ in range(n)]
    signed = torch.tensor([[c - 256 * (c > 127) if fmt is WeightFormat.INT8 else c
                            for c in codes]])
    ids = torch.tensor([aux])
    ops = NU.decode_weights(signed, ids, L.FORMAT_NAMES[fmt], group, ids)[0].tolist()
    return codes, [slot_fields(fmt, a) for a in aux], ops


def _beats(seed: int, index_in_code: bool, count: int = 120):
    """Beats of every sparsity and format (the indices in the codes' high bits with
    ``index_in_code``, where INT8 beats are dense) and the sums they give."""
    rng = random.Random(seed)
    inp, out = chain_layouts(N, GROUP, index_in_code)
    w = window(N)
    inputs, expected = [], []
    for b in range(count):
        sparsity = list(Sparsity)[b % len(Sparsity)] if b < 40 else rng.choice(list(Sparsity))
        nm = SPARSITY_NM[sparsity]
        edge = b % 7 == 3  # extreme operands and activations: the packed split at its bound
        pack = int(rng.random() < 0.8)
        codes, slots, ops = _weights(rng, bool(pack), edge, nm is None or not index_in_code)
        if nm is None:
            idx = [0] * N
        else:
            keep, block = nm
            idx = []
            for _ in range(N // keep):
                idx += sorted(rng.sample(range(block), keep))
        x = [[rng.choice((-127, 127)) if edge else rng.randint(-127, 127) for _ in range(w)]
             for _ in range(2)]
        fields = {"codes": [c | i << INDEX_IN_CODE_AT for c, i in zip(codes, idx, strict=True)]}\
            if index_in_code else {"codes": codes, "idx": idx}
        inputs.append(H.pack(inp, {**fields, "slot": slots, "x": x, "sparsity": sparsity,
                                   "pack": pack}))
        expected.append(H.pack(out, {"sums": chain_model(ops, idx, x, sparsity, pack)}))
    return inputs, expected, out


@pytest.mark.parametrize(("simulator", "index_in_code"), LANE_VARIANTS)
def test_sparse_chain(simulator, index_in_code, seed, request, tmp_path):
    count = 120 if simulator == "amaranth" else 400
    inputs, expected, out = _beats(seed, index_in_code, count)
    got = run_block(simulator, request, tmp_path,
                    lambda: StreamedCore(SparseDspChain(N, GROUP, index_in_code)),
                    f"sparse_dsp_chain{'_icode' if index_in_code else ''}", inputs,
                    len(expected), seed)
    assert (msg := H.first_mismatch(out, got, expected)) is None, f"{msg} (seed {seed})"


def test_bad_chain_shapes_are_refused():
    with pytest.raises(ValueError, match="multiple of 16"):
        SparseDspChain(24, 4)
    with pytest.raises(ValueError, match="up to 64"):
        SparseDspChain(128, 16)


@pytest.mark.slow  # yosys' DSP mapping, about a minute
def test_yosys_maps_each_chain_element_to_one_dsp48e2(tmp_path):
    cells = yosys_cells(DspCascade(8, 4), "cascade8", tmp_path, stop="begin:map_memory")
    assert cells.get("DSP48E2") == 8, cells
    assert not any(name.startswith("$mul") or name == "$__soft_mul" for name in cells), cells


def test_the_dsp_primitive_keeps_registers_and_cascade_inside(tmp_path):
    """Elaborated for DspPrimitives (the resource report), each element is one DSP48E2
    instance whose ports yosys' own DSP48E2 cell accepts at their widths: no register,
    adder or multiplier is left in the fabric, and no register: the cascades run side by
    side, so their taps need no deskew."""
    cells = yosys_cells(DspCascade(8, 4), "cascade8", tmp_path, stop="begin:map_memory",
                        platform=DspPrimitives())
    assert cells.get("DSP48E2") == 8, cells
    assert not any(name.startswith(("$mul", "$alu", "$add", "$__soft_mul", "$dff"))
                   for name in cells), cells
