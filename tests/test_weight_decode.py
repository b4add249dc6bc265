"""On-chip weight decode against numerics.decode_weights: every format, type id and code."""

import random

import pytest
import torch

from hw.weight_decode import WeightDecoder, decoder_layouts
from llmacc import layout as L
from llmacc import numerics as N
from llmacc.isa import WeightFormat
from sim import stream_harness as H
from tests.helpers.simulators import SIMULATORS, run_block

LANES = 8


def _vectors(seed: int):
    """Every (format, aux, code) combination once, then random ones."""
    cases = []
    for fmt in WeightFormat:
        bits = L.FORMAT_BITS[fmt]
        auxes = range(4) if fmt is WeightFormat.W2 else range(8) if bits in (3, 4) else [0]
        cases += [(fmt, a, c) for a in auxes for c in range(1 << bits)]
    rng = random.Random(seed)
    for _ in range(200):
        fmt = rng.choice(list(WeightFormat))
        bits = L.FORMAT_BITS[fmt]
        cases.append((fmt, rng.randrange(4 if fmt is WeightFormat.W2 else 8),
                      rng.randrange(1 << bits)))
    inputs, expected = [], []
    inp, out = decoder_layouts(LANES)
    for start in range(0, len(cases), LANES):
        chunk = cases[start:start + LANES]
        fmt = chunk[0][0]
        chunk = [c for c in chunk if c[0] is fmt]
        chunk += [chunk[-1]] * (LANES - len(chunk))
        aux = [a for _, a, _ in chunk]
        codes = [c for _, _, c in chunk]
        # INT8 codes are stored as bytes and sign-extended by the decoder (layout).
        ct = torch.tensor([[c - 256 * (c > 127) if fmt is WeightFormat.INT8 else c
                            for c in codes]])
        at = torch.tensor([aux])
        name = L.FORMAT_NAMES[fmt]
        want = N.decode_weights(ct, at, name, 1, at)[0].tolist()
        inputs.append(H.pack(inp, {"fmt": fmt, "codes": codes, "aux": aux}))
        expected.append(H.pack(out, {"ops": want}))
    return inputs, expected, out


@pytest.mark.parametrize("simulator", SIMULATORS)
def test_weight_decoder(simulator, seed, request, tmp_path):
    inputs, expected, out = _vectors(seed)
    got = run_block(simulator, request, tmp_path, lambda: WeightDecoder(LANES),
                    "weight_decoder", inputs, len(expected), seed)
    assert (msg := H.first_mismatch(out, got, expected)) is None, f"{msg} (seed {seed})"
