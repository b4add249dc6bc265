"""The quantization pipeline: calibrate on text, prune, quantize every linear layer.

``quantize(ckpt, scheme, calib)`` returns a :class:`QuantizedModel`: a :class:`QLinear` per
linear layer (GPTQ with the per-group type/clipping search, optional N:M pruning), the
embedding and classifier at INT8, and the float norm weights. ``fake_model()`` is the float
model with exactly these weights and the scheme's activation/KV rounding; ``quant.intref``
turns the same object into the integer golden model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmacc import numerics as N
from quant.checkpoint import LINEARS, Checkpoint, ModelConfig
from quant.model import ActQuant, Transformer
from quant.qlinear import QLinear
from quant.schemes import Scheme
from quant.smooth import smooth_checkpoint
from quant.sparsity import prune_mask
from quant.weight_quant import padded_width, quantize_matrix

Tensor = torch.Tensor


@dataclass
class InputStats:
    """Second moments of one linear layer's inputs over the calibration tokens."""

    hessian: Tensor  #: X^T X, [K, K] float64
    tokens: int = 0
    absmax: Tensor | None = None  #: per-channel max |X| [K] (quant.smooth)

    @property
    def channel_norm(self) -> Tensor:
        return torch.sqrt(torch.diagonal(self.hessian))


@dataclass
class Calibration:
    inputs: dict[str, InputStats] = field(default_factory=dict)  #: per linear layer
    absmax: dict[str, float] = field(default_factory=dict)  #: per tapped tensor ("layers.0.:q")
    count: dict[str, int] = field(default_factory=dict)  #: per-channel moments of the taps
    total: dict[str, Tensor] = field(default_factory=dict)
    squares: dict[str, Tensor] = field(default_factory=dict)

    def observe(self, name: str, x: Tensor) -> None:
        x = x.detach().to(torch.float64)
        if ":" in name:  # a tapped intermediate tensor
            self.absmax[name] = max(self.absmax.get(name, 0.0), float(x.abs().max()))
            self.count[name] = self.count.get(name, 0) + x.shape[0]
            self.total[name] = self.total.get(name, 0.0) + x.sum(0)
            self.squares[name] = self.squares.get(name, 0.0) + (x * x).sum(0)
            return
        x = x.reshape(-1, x.shape[-1])
        s = self.inputs.setdefault(name, InputStats(torch.zeros(x.shape[-1], x.shape[-1],
                                                                dtype=torch.float64)))
        s.hessian += x.T @ x
        s.tokens += x.shape[0]
        peak = x.abs().amax(0)
        s.absmax = peak if s.absmax is None else torch.maximum(s.absmax, peak)


def calibrate(model: Transformer, calib: list[list[int]]) -> Calibration:
    """Run ``model`` over the calibration sequences and collect input and tensor statistics."""
    stats = Calibration()
    for seq in calib:
        model.forward(torch.tensor(seq[:model.config.seq_len]), observer=stats.observe)
    return stats


SMOOTH_MIN = 2.0 ** -8  #: smallest key smoothing factor (bounds the integer reciprocal)


def key_transform(cfg: ModelConfig, stats: Calibration) -> tuple[Tensor, Tensor]:
    """Static per-channel key centre and smoothing factor [layers, kv_heads, head_dim].

    Keys are stored as ``(k - c) / s`` before per-token KV quantization, queries multiplied by
    ``s``: scores change only by the per-query constant ``q . c``, to which softmax is blind.
    ``c`` is each channel's calibrated mean and ``s`` its standard deviation relative to the
    head's widest channel, so every channel of a head spans about the same INT4 grid. (Post-
    RoPE keys of LLaMA models carry a few large, same-signed channels in the slow-rotating
    pairs; per-token INT4 alone loses every other channel to them.) Moments beat min/max
    here: on the shipped model the min/max range gives 4.13 perplexity, mean/std 4.04.
    """
    centre, smooth = [], []
    for i in range(cfg.n_layers):
        name = f"layers.{i}.:k"
        n = stats.count[name]
        mean = stats.total[name] / n
        std = torch.sqrt(torch.clamp(stats.squares[name] / n - mean * mean, min=0.0))
        centre.append(mean)
        rel = std / std.amax(-1, keepdim=True).clamp(min=1e-30)
        smooth.append(rel.clamp(min=SMOOTH_MIN))
    return torch.stack(centre).float(), torch.stack(smooth).float()


@dataclass
class QuantizedModel:
    config: ModelConfig
    scheme: Scheme
    linears: dict[str, QLinear]  #: "layers.{i}.wq" ... and "tok_embeddings", "output"
    norms: dict[str, Tensor]  #: float RMSNorm weights ("layers.{i}.attention_norm", "norm")
    source: str = ""
    k_center: Tensor | None = None  #: key transform (see key_transform), with a KV cache width
    k_smooth: Tensor | None = None
    calib: list[list[int]] | None = None  #: the calibration sequences used

    def act_quant(self) -> ActQuant:
        s = self.scheme
        return ActQuant(s.act_bits, s.kv_bits, None, s.sink, s.window)

    def fake_weights(self) -> dict[str, Tensor]:
        w = {name: q.dequant() for name, q in self.linears.items()}
        w.update(self.norms)
        return w

    def fake_model(self) -> Transformer:
        ckpt = Checkpoint(self.config, self.fake_weights(), self.source)
        return Transformer(ckpt, self.act_quant(), self.k_center, self.k_smooth)

    def weight_bits(self) -> float:
        """Average stored bits per weight of the decoder's linear layers."""
        bits = params = 0
        for name, q in self.linears.items():
            if name.startswith("layers."):
                bits += q.storage_bits()
                params += q.out_features * q.in_features
        return bits / max(params, 1)


def compute_device(name: str) -> torch.device:
    """The torch device ``--device`` names, or a one-line error where this machine has none."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r}: not a device (cpu, cuda or cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: the quantizer runs on cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no CUDA device "
                         "(torch.cuda.is_available() is False); use --device cpu")
    return device


def _int8(w: Tensor, group: int, device: torch.device) -> QLinear:
    return quantize_matrix(w, "int8", (N.WDType.INT8,), group, gptq=False, clip=False,
                           device=device)


def quantize(ckpt: Checkpoint, scheme: Scheme, calib: list[list[int]] | None = None,
             progress=None, device: str | torch.device = "cpu") -> QuantizedModel:
    """Quantize ``ckpt`` with ``scheme``; ``calib`` token sequences enable GPTQ and Wanda.
    The weight quantizer (type and clipping search, GPTQ) runs on ``device``; ``progress``
    is called as ``progress(weights_done, weights_total, where)``."""
    device = compute_device(str(device))
    cfg = ckpt.config
    stats = calibrate(Transformer(ckpt), calib) if calib else Calibration()
    if scheme.smooth:
        if not calib:
            raise ValueError(f"scheme {scheme.name}: smoothing needs calibration text")
        ckpt = smooth_checkpoint(ckpt, {n: st.absmax for n, st in stats.inputs.items()},
                                 scheme.smooth)
        stats = calibrate(Transformer(ckpt), calib)  # the smoothed layers' inputs
    norms = {k: v for k, v in ckpt.weights.items() if k.endswith("norm")}
    qm = QuantizedModel(cfg, scheme, {}, norms, ckpt.source, calib=calib)
    if scheme.kv_bits is not None:
        if not calib:
            raise ValueError(f"scheme {scheme.name}: KV quantization needs calibration text")
        qm.k_center, qm.k_smooth = key_transform(cfg, stats)
    if not scheme.quantized:
        return qm
    names = [f"layers.{i}.{k}" for i in range(cfg.n_layers) for k in LINEARS]
    # progress in weights, not matrices (wk/wv are a fraction of w1 under GQA), from the
    # start of this loop (the calibration before it is not quantization)
    total = sum(ckpt.weights[name].numel() for name in names)
    done_weights = 0
    if progress is not None:
        progress(0, total, f"layer 1/{cfg.n_layers}")
    for name in names:
        w = ckpt.weights[name]
        st = stats.inputs.get(name)
        keep = None
        if scheme.sparsity is not None:
            n, m = scheme.sparsity
            kp = padded_width(w.shape[1], scheme.group, m)
            norm = None if st is None else torch.nn.functional.pad(st.channel_norm,
                                                                   (0, kp - w.shape[1]))
            method = scheme.prune_method if norm is not None else "magnitude"
            keep = prune_mask(torch.nn.functional.pad(w, (0, kp - w.shape[1])), n, m, method,
                              norm)
        qm.linears[name] = quantize_matrix(
            w, scheme.weight_fmt, scheme.dtypes, scheme.group,
            hessian=None if st is None else st.hessian, keep=keep, sparsity=scheme.sparsity,
            gptq=scheme.gptq, clip=scheme.clip, device=device)
        done_weights += w.numel()
        if progress is not None:  # the layer just done (the next one's share is on its way)
            layer = int(name.split(".")[1])
            progress(done_weights, total, f"layer {layer + 1}/{cfg.n_layers} {name}")
    emb = _int8(ckpt.weights["tok_embeddings"], scheme.group, device)
    qm.linears["tok_embeddings"] = emb
    qm.linears["output"] = emb if cfg.shared_classifier else _int8(ckpt.weights["output"],
                                                                   scheme.group, device)
    return qm
