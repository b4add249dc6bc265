"""Random weight tiles for the matrix-path tests: stored codes, their decode parameters and
the dense operands the numerics model sees."""

from __future__ import annotations

import random

import torch

from llmacc import layout as L
from llmacc import numerics as N
from llmacc.isa import WeightFormat


def random_tile(rng: random.Random, fmt: WeightFormat, nm: tuple[int, int] | None,
                group: int, k: int, rows: int, edge: bool = False):
    """``(codes, keep, aux, mant, shift, ops)`` of ``rows`` random rows of ``k`` weights:
    ``keep`` None when dense, ``aux`` None for INT8; ``edge`` takes the largest scale."""
    bits = L.FORMAT_BITS[fmt]
    g = k // group
    codes = torch.tensor([[rng.randrange(1 << bits) for _ in range(k)] for _ in range(rows)])
    aux = None
    if fmt is WeightFormat.W2:
        aux = torch.tensor([[rng.randrange(4) for _ in range(g)] for _ in range(rows)])
    elif fmt in (WeightFormat.MIXED3, WeightFormat.MIXED4):
        # now and then a type id that names no type: its group decodes to zero
        types = len(N.MIXED3_TYPES)
        aux = torch.tensor([[rng.randrange(types + 2) if rng.random() < 0.1
                             else rng.randrange(types) for _ in range(g)] for _ in range(rows)])
    keep = None
    if nm:
        kn, km = nm
        keep = torch.zeros(rows, k, dtype=torch.bool)
        for r in range(rows):
            for b in range(0, k, km):
                for j in rng.sample(range(km), kn):
                    keep[r, b + j] = True
    signed = codes - 256 * (codes > 127) if fmt is WeightFormat.INT8 else codes
    ops = N.decode_weights(signed, aux, L.FORMAT_NAMES[fmt], group, aux)
    if keep is not None:
        ops = torch.where(keep, ops, 0)
    mmax = N.SCALE_MAX if edge else rng.randint(1, N.SCALE_MAX)
    mant = torch.tensor([[rng.choice((0, mmax, rng.randint(0, mmax))) for _ in range(g)]
                         for _ in range(rows)])
    shift = torch.tensor([rng.randint(-4, 30) for _ in range(rows)])
    return codes, keep, aux, mant, shift, ops
