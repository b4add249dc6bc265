"""N:M structured pruning masks: magnitude or activation-aware (Wanda, Sun et al., 2024).

A mask keeps exactly ``n`` of every ``m`` consecutive weights along K in each output row: the
pattern the sparse DSP chain's multiplexer consumes (numerics.nm_compress). Magnitude pruning
ranks ``|w|``; Wanda ranks ``|w| * ||x_k||_2`` with the input channel norms from calibration,
so a small weight on a loud channel survives.
"""

from __future__ import annotations

import torch

from llmacc import numerics as N

Tensor = torch.Tensor
METHODS = ("magnitude", "wanda")


def nm_mask(score: Tensor, n: int, m: int) -> Tensor:
    """Keep the ``n`` highest scores of every ``m`` along the last dim (ties: lower index)."""
    if (n, m) not in N.SPARSITY_PATTERNS:
        raise ValueError(f"unsupported sparsity {n}:{m}; supported "
                         f"{sorted(N.SPARSITY_PATTERNS)}")
    rows, k = score.shape
    if k % m:
        raise ValueError(f"K = {k} is not a multiple of the sparse block {m}")
    blocks = score.reshape(rows, k // m, m)
    order = torch.argsort(blocks, dim=-1, descending=True, stable=True)
    keep = torch.zeros_like(blocks, dtype=torch.bool)
    keep.scatter_(-1, order[..., :n], True)
    return keep.reshape(rows, k)


def prune_mask(w: Tensor, n: int, m: int, method: str = "wanda",
               act_norm: Tensor | None = None) -> Tensor:
    """N:M keep mask for a weight [N, K] (K already padded to a multiple of ``m``)."""
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose from {METHODS}")
    score = w.abs().to(torch.float64)
    if method == "wanda":
        if act_norm is None:
            raise ValueError("Wanda pruning needs calibration activation norms")
        score = score * act_norm.to(torch.float64).unsqueeze(0)
    return nm_mask(score, n, m)
