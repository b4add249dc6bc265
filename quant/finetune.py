"""Quantization-aware fine-tuning: distil the float model into the quantized one.

After GPTQ has chosen every group's data type and zero point, those stay fixed; the latent
float weights (initialised to the GPTQ result, in units of the group scale), the RMSNorm
weights and optionally the group scales (log domain) are trained so
that the fake-quant model's next-token distribution matches the float model's (KL divergence)
on calibration text. Rounding to the fixed grids uses the straight-through estimator, as do the
INT8 activation and KV roundings. The result has the same format as before (new codes, same
scales), so the integer reference and the hardware are unchanged. Used for the low-bit presets,
where a tiny model cannot absorb the rounding error otherwise.
"""

from __future__ import annotations

import random
from dataclasses import replace

import torch

from llmacc import numerics as N
from quant.checkpoint import Checkpoint
from quant.model import Transformer
from quant.qlinear import QLinear
from quant.quantize import QuantizedModel
from quant.schemes import Finetune

Tensor = torch.Tensor


def _grid(q: QLinear) -> Tensor:
    """Per-group operand tables [N, G, V] of a W2 or mixed-type layer."""
    if q.fmt == "w2":
        return (torch.arange(4) - q.zero_points.unsqueeze(-1)).to(torch.float32)
    lut = N.MIXED3_LUT if q.fmt == "mixed3" else N.MIXED4_LUT
    return lut[q.dtype_ids].to(torch.float32)


def _round(u: Tensor, grid: Tensor, group: int) -> tuple[Tensor, Tensor]:
    """Nearest grid entry for padded weights [N, Kp] in units of their group's scale
    -> (grid value, table index = code)."""
    n, kp = u.shape
    ug = u.reshape(n, kp // group, group, 1)
    idx = torch.argmin((ug - grid.unsqueeze(2)).abs(), dim=-1)
    return torch.gather(grid, 2, idx).reshape(n, kp), idx.reshape(n, kp)


def finetune(qm: QuantizedModel, ckpt: Checkpoint, seqs: list[list[int]],
             settings: Finetune, seed: int = 0, progress=None) -> QuantizedModel:
    """Fine-tune ``qm``'s W2/mixed layers for ``settings.steps`` sequences (a new model).

    The latent weights are kept in units of their group's scale, so their learning rate is in
    grid steps and means the same for every format and layer.
    """
    steps = settings.steps
    names = [k for k, q in qm.linears.items() if k.startswith("layers.")
             and q.fmt in ("w2", "mixed3", "mixed4")]
    if not names or steps <= 0:
        return qm
    torch.manual_seed(seed)
    rng = random.Random(seed)
    teacher = Transformer(ckpt)
    latent, scales = {}, {}  # start on the GPTQ solution: rounding reproduces its codes
    for k in names:
        q = qm.linears[k]
        scales[k] = torch.log(q.scales().clamp(min=1e-30)).float()
        scales[k].requires_grad_(settings.lr_scale > 0)
        latent[k] = q.operands().to(torch.float32).requires_grad_(True)
    grids = {k: _grid(qm.linears[k]) for k in names}
    norms = {k: v.clone().requires_grad_(True) for k, v in qm.norms.items()}
    student = qm.fake_model()
    groups = [{"params": list(latent.values()), "lr": settings.lr_grid},
              {"params": list(norms.values()), "lr": settings.lr_norm}]
    if settings.lr_scale > 0:
        groups.append({"params": list(scales.values()), "lr": settings.lr_scale})
    opt = torch.optim.Adam(groups)

    def quantized(k: str) -> Tensor:
        q = qm.linears[k]
        val, _ = _round(latent[k], grids[k], q.group)
        if q.keep is not None:
            val = val * q.keep
        u = latent[k] + (val - latent[k]).detach()
        scale = torch.exp(scales[k]).repeat_interleave(q.group, dim=-1)
        return (u * scale)[:, :q.in_features]

    order = list(range(len(seqs)))
    if progress is not None:
        progress(0, steps)  # the set-up above is not a step
    for step in range(steps):
        if step % len(order) == 0:
            rng.shuffle(order)
        i = order[step % len(order)]
        student.weights.update({k: quantized(k) for k in names})
        student.weights.update(norms)
        tokens = torch.tensor(seqs[i])
        target = torch.log_softmax(teacher.forward(tokens), -1)  # on the fly: O(1) memory
        logp = torch.log_softmax(student.forward_grad(tokens), -1)
        loss = torch.nn.functional.kl_div(logp, target, log_target=True, reduction="batchmean")
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress is not None:
            progress(step + 1, steps)
    linears = dict(qm.linears)
    with torch.no_grad():
        for k in names:
            q = qm.linears[k]
            _, codes = _round(latent[k], grids[k], q.group)
            if q.keep is not None:
                zero = torch.argmin(grids[k].abs(), dim=-1).repeat_interleave(q.group, dim=-1)
                codes = torch.where(q.keep, codes, zero)
            if settings.lr_scale > 0:
                mant, row_exp = N.encode_scales(torch.exp(scales[k].double()))
                q = replace(q, mant=mant, row_exp=row_exp)
            linears[k] = replace(q, codes=codes.to(torch.int64))
    return replace(qm, linears=linears, norms={k: v.detach() for k, v in norms.items()})
