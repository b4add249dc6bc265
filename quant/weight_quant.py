"""Group-wise weight quantization: W2 (asymmetric), BitMoD mixed types, INT4/INT8; RTN or GPTQ.

Per group of ``group`` weights along K, :func:`fit_group` tries every allowed data type and
every clipping ratio and keeps, per output row, the candidate with the least *weighted*
squared error ``sum_k h_k (w_k - q_k)**2``. The weights ``h`` are the diagonal of the layer's
input Hessian ``X^T X`` from calibration text (ones without calibration), so the clipping search
spends resolution on the input channels that carry large activations.

:func:`quantize_matrix` walks the groups either round-to-nearest or with GPTQ (Frantar et al.,
2023): columns are quantized left to right and each column's rounding error is compensated on the
not-yet-quantized columns through the inverse Hessian. The group's type and scale are fitted when
GPTQ reaches the group's first column, on the already-compensated weights. With an N:M keep mask,
pruned weights are forced to exactly zero and their error is compensated the same way
(SparseGPT with a fixed mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmacc import numerics as N
from quant.qlinear import QLinear

Tensor = torch.Tensor
F64 = torch.float64
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)
W2_CLIP_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4)  #: searched independently for min and max


@dataclass
class GroupParams:
    """The chosen grid of one group for every row: real value = scale * values[idx]."""

    values: Tensor  #: [R, V] representable operands
    codes: Tensor  #: [R, V] the code of each entry
    scale: Tensor  #: [R]
    zero: Tensor  #: [R] W2 zero point (0 for symmetric types)
    dtype: Tensor  #: [R] WDType value

    def round(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest grid value for ``w`` [R] or [R, g] -> (real value, code)."""
        squeeze = w.dim() == 1
        w2 = w.unsqueeze(-1) if squeeze else w
        safe = torch.where(self.scale > 0, self.scale, 1.0).unsqueeze(-1)
        dist = (w2.unsqueeze(-1) / safe.unsqueeze(-1) - self.values.unsqueeze(1)).abs()
        idx = torch.argmin(dist, dim=-1)  # ties: first entry, as numerics.quantize_to_grid
        val = torch.gather(self.values, 1, idx) * self.scale.unsqueeze(-1)
        code = torch.gather(self.codes, 1, idx)
        return (val[:, 0], code[:, 0]) if squeeze else (val, code)

    def zero_code(self) -> Tensor:
        """Per row, the code whose operand is 0 (what a pruned weight stores)."""
        idx = torch.argmin(self.values.abs(), dim=1, keepdim=True)
        return torch.gather(self.codes, 1, idx)[:, 0]


def _candidates(w: Tensor, dtype: N.WDType):
    """Yield GroupParams candidates of one data type for group weights ``w`` [R, g]."""
    rows = w.shape[0]
    if dtype is N.WDType.W2:
        lo0 = torch.clamp(w.amin(-1), max=0.0)
        hi0 = torch.clamp(w.amax(-1), min=0.0)
        base = torch.arange(4, dtype=F64)
        for a in W2_CLIP_RATIOS:
            for b in W2_CLIP_RATIOS:
                # the contract's min/max rule on the clipped group gives its scale and zero
                clipped = torch.clamp(w, (lo0 * a).unsqueeze(-1), (hi0 * b).unsqueeze(-1))
                _, zero, scale = N.quantize_w2(clipped)
                yield GroupParams(base - zero.unsqueeze(-1), base.expand(rows, 4).to(torch.int64),
                                  scale, zero, torch.full((rows,), int(dtype), dtype=torch.int64))
        return
    if dtype is N.WDType.INT8:
        table = torch.arange(-N.ACT_MAX, N.ACT_MAX + 1, dtype=F64)
        codes = table.to(torch.int64)
    else:
        table = torch.tensor(N.code_table(dtype), dtype=F64)
        codes = torch.arange(len(table), dtype=torch.int64)
    absmax = w.abs().amax(-1)
    for r in CLIP_RATIOS:
        yield GroupParams(table.expand(rows, -1), codes.expand(rows, -1),
                          r * absmax / table.abs().max(), torch.zeros(rows, dtype=torch.int64),
                          torch.full((rows,), int(dtype), dtype=torch.int64))


def _select(best: GroupParams | None, best_err: Tensor | None, cand: GroupParams,
            err: Tensor) -> tuple[GroupParams, Tensor]:
    if best is None:
        return cand, err
    better = err < best_err
    pick = lambda a, b: torch.where(better.view(-1, *([1] * (a.dim() - 1))), b, a)  # noqa: E731
    return GroupParams(pick(best.values, cand.values), pick(best.codes, cand.codes),
                       pick(best.scale, cand.scale), pick(best.zero, cand.zero),
                       pick(best.dtype, cand.dtype)), torch.minimum(best_err, err)


def fit_group(w: Tensor, dtypes: tuple[N.WDType, ...], importance: Tensor | None = None,
              clip: bool = True) -> GroupParams:
    """Best data type and clipping per row for group weights ``w`` [R, g].

    ``importance`` [R, g] (or [g]) weights the squared error; zero-importance entries (pruned
    weights) do not influence the fit.
    """
    w = w.to(F64)
    imp = torch.ones_like(w) if importance is None else importance.to(F64).expand_as(w)
    fitted = torch.where(imp > 0, w, 0.0)
    best, best_err = None, None
    for dtype in dtypes:
        for cand in _candidates(fitted, dtype):
            val, _ = cand.round(fitted)
            err = (imp * (fitted - val) ** 2).sum(-1)
            best, best_err = _select(best, best_err, cand, err)
            if not clip:
                break
    return best


def _pad(t: Tensor, k: int, value: float = 0.0) -> Tensor:
    return torch.nn.functional.pad(t, (0, k - t.shape[-1]), value=value)


def padded_width(k: int, group: int, block: int = 1) -> int:
    step = max(group, block)
    return -(-k // step) * step


def quantize_matrix(w: Tensor, fmt: str, dtypes: tuple[N.WDType, ...], group: int,
                    hessian: Tensor | None = None, keep: Tensor | None = None,
                    sparsity: tuple[int, int] | None = None, gptq: bool = True,
                    clip: bool = True, damp: float = 0.01) -> QLinear:
    """Quantize a real weight [N, K] to a :class:`QLinear` (K zero-padded to the group).

    With ``hessian`` ([K, K], ``X^T X`` of calibration inputs) and ``gptq``, errors are
    compensated GPTQ-style; otherwise each group is rounded to nearest after the clipping
    search. ``keep`` is an N:M mask over the padded width.
    """
    if not bool(torch.isfinite(w).all()):
        raise ValueError("cannot quantize a weight holding NaN/Inf")
    if group < 8 or group & (group - 1):
        raise ValueError(f"group {group} must be a power of two >= 8")
    n, k = w.shape
    kp = padded_width(k, group, sparsity[1] if sparsity else 1)
    W = _pad(w.to(F64), kp)
    if keep is not None and keep.shape != (n, kp):
        raise ValueError(f"keep mask shape {tuple(keep.shape)} != {(n, kp)}")
    G = kp // group
    codes = torch.zeros(n, kp, dtype=torch.int64)
    scale = torch.zeros(n, G, dtype=F64)
    zero = torch.zeros(n, G, dtype=torch.int64)
    dtype = torch.zeros(n, G, dtype=torch.int64)
    kmask = torch.ones(n, kp, dtype=torch.bool) if keep is None else keep

    def record(g: int, p: GroupParams) -> None:
        scale[:, g], zero[:, g], dtype[:, g] = p.scale, p.zero, p.dtype

    if hessian is None or not gptq:
        diag = torch.ones(kp, dtype=F64) if hessian is None else \
            _pad(torch.diagonal(hessian).to(F64), kp)
        for g in range(G):
            sl = slice(g * group, (g + 1) * group)
            p = fit_group(W[:, sl], dtypes, diag[sl] * kmask[:, sl], clip)
            record(g, p)
            _, c = p.round(W[:, sl])
            codes[:, sl] = torch.where(kmask[:, sl], c, p.zero_code().unsqueeze(-1))
    else:
        H = torch.zeros(kp, kp, dtype=F64)
        H[:k, :k] = hessian.to(F64)
        dead = torch.diagonal(H) == 0
        H[dead, dead] = 1.0
        W[:, dead] = 0.0
        H += damp * torch.diagonal(H).mean() * torch.eye(kp, dtype=F64)
        diag = torch.diagonal(H).clone()
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)),
                                     upper=True)
        block = group * max(1, 128 // group)
        for i1 in range(0, kp, block):
            i2 = min(i1 + block, kp)
            W1 = W[:, i1:i2].clone()
            err1 = torch.zeros_like(W1)
            h1 = hinv[i1:i2, i1:i2]
            p = None
            for i in range(i2 - i1):
                col = i1 + i
                if col % group == 0:
                    sl = slice(col, col + group)
                    p = fit_group(W1[:, i:i + group], dtypes, diag[sl] * kmask[:, sl], clip)
                    record(col // group, p)
                q, c = p.round(W1[:, i])
                q = torch.where(kmask[:, col], q, 0.0)
                codes[:, col] = torch.where(kmask[:, col], c, p.zero_code())
                e = (W1[:, i] - q) / h1[i, i]
                W1[:, i:] -= e.unsqueeze(-1) * h1[i, i:].unsqueeze(0)
                err1[:, i] = e
            W[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    mant, row_exp = N.encode_scales(scale)
    family = fmt in ("mixed3", "mixed4")
    ids = torch.tensor([N.WDType(int(v)).type_id for v in dtype.flatten()],
                       dtype=torch.int64).reshape(dtype.shape) if family else None
    return QLinear(fmt, group, k, codes, mant, row_exp,
                   zero_points=zero if fmt == "w2" else None, dtype_ids=ids,
                   keep=keep, sparsity=sparsity if keep is not None else None)
