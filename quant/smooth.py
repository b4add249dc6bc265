"""SmoothQuant: per-channel activation outliers moved into the weights, before quantization.

Per-token INT8 activations lose the small channels of a token to its few large ones. Each
RMSNorm's output feeds linear layers only (``attention_norm``: wq, wk, wv; ``ffn_norm``: w1,
w3), so dividing channel ``j`` of the norm's gain by ``s_j`` and multiplying column ``j`` of
those layers by ``s_j`` leaves the float model's function unchanged while the activations the
A8 rounding sees are flatter. ``s_j = max|X_j|**alpha / max|W_j|**(1 - alpha)`` (Xiao et
al., SmoothQuant, 2023), ``X_j`` over the calibration tokens, ``W_j`` over the column of every
layer the norm feeds; ``alpha`` is the scheme's ``smooth``.

On SmolLM2-135M, w8a8 fake-quantized, WikiText-2 perplexity goes from 30.593 to 30.111 at
alpha 0.5 (float 29.52; docs/QUANT.md, with the command).
"""

from __future__ import annotations

import torch

from quant.checkpoint import Checkpoint

Tensor = torch.Tensor

#: Each RMSNorm (by suffix) and the linear layers its output feeds.
NORM_FEEDS = {"attention_norm": ("wq", "wk", "wv"), "ffn_norm": ("w1", "w3")}
FLOOR = 1e-5  #: smallest activation or weight maximum a factor is taken from


def smoothing_factors(act_absmax: Tensor, weights: list[Tensor], alpha: float) -> Tensor:
    """``s`` [K] for one norm: ``act_absmax`` [K] over the calibration tokens, ``weights``
    the [N, K] layers the norm feeds."""
    w_absmax = torch.stack([w.abs().amax(0).double() for w in weights]).amax(0)
    return (act_absmax.double().clamp(min=FLOOR) ** alpha
            / w_absmax.clamp(min=FLOOR) ** (1 - alpha))


def smooth_checkpoint(ckpt: Checkpoint, act_absmax: dict[str, Tensor],
                      alpha: float) -> Checkpoint:
    """``ckpt`` with every norm's outliers moved into the layers it feeds. ``act_absmax``
    maps each linear layer's name (``layers.{i}.wq``) to the per-channel maximum of its
    input's magnitude over the calibration tokens."""
    if not 0 < alpha < 1:
        raise ValueError(f"smoothing strength {alpha} must lie in (0, 1)")
    w = dict(ckpt.weights)
    for i in range(ckpt.config.n_layers):
        p = f"layers.{i}."
        for norm, feeds in NORM_FEEDS.items():
            s = smoothing_factors(act_absmax[p + feeds[0]], [w[p + n] for n in feeds], alpha)
            w[p + norm] = (w[p + norm].double() / s).to(w[p + norm].dtype)
            for n in feeds:
                w[p + n] = (w[p + n].double() * s).to(w[p + n].dtype)
    return Checkpoint(ckpt.config, w, ckpt.source)
