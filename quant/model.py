"""The float reference: a LLaMA decoder in torch (RMSNorm, RoPE, grouped-query attention, SwiGLU).

Prefill (many tokens at once) and incremental decode share one ``forward`` over a KV cache. The
same class is the *fake-quant* model: given dequantized weights and an :class:`ActQuant` spec it
rounds activations (INT8 per token), queries (INT8 per head) and the KV cache (INT4 per token and
channel group) exactly where the integer reference quantizes them, and applies the
Lambda-shaped attention mask. Arithmetic stays float32, so this model measures quality; the
integer reference (``quant.intref``) is the golden model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmacc import numerics as N
from quant.checkpoint import Checkpoint, ModelConfig

Tensor = torch.Tensor
Observer = Callable[[str, Tensor], None]


@dataclass(frozen=True)
class ActQuant:
    """Activation-side quantization of the fake-quant model (None = keep float)."""

    act_bits: int | None = None  #: inputs of every linear layer, per token
    kv_bits: int | None = None  #: KV cache, per token and per ``kv_group`` channels
    kv_group: int | None = None  #: default: one group per head
    sink: int = 0  #: Lambda attention: first ``sink`` tokens always visible
    window: int = 0  #: ... plus the last ``window`` tokens (0 = full causal attention)


def fake_quant_symmetric(x: Tensor, bits: int, group: int | None = None,
                         centred: bool = False) -> Tensor:
    """Round ``x`` to a symmetric ``bits``-bit grid per row (or per ``group`` of the last dim);
    ``centred``: symmetric around each slice's midpoint (the KV cache format)."""
    qmax = (1 << (bits - 1)) - 1
    shape = x.shape
    if group is not None:
        x = x.reshape(*shape[:-1], shape[-1] // group, group)
    if centred:
        mid = (x.amax(-1, keepdim=True) + x.amin(-1, keepdim=True)) / 2
        return (fake_quant_symmetric(x - mid, bits) + mid).reshape(shape)
    scale = x.abs().amax(-1, keepdim=True) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.sign(x) * torch.floor(x.abs() / safe + 0.5), -qmax, qmax)
    out = (q * scale).reshape(shape)
    if x.requires_grad:  # straight-through estimator for quantization-aware fine-tuning
        x = x.reshape(shape)
        return x + (out - x).detach()
    return out


def rope_angles(cfg: ModelConfig, positions: Tensor) -> tuple[Tensor, Tensor]:
    freq = N.rope_frequencies(cfg.head_dim, cfg.rope_theta, **cfg.rope_scaling())
    ang = positions.to(torch.float64).unsqueeze(-1) * freq
    return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs of ``x`` [T, heads, hd] by per-position cos/sin [T, hd/2]."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)


class KVCache:
    def __init__(self, cfg: ModelConfig, max_len: int | None = None):
        n = max_len or cfg.seq_len
        self.k = torch.zeros(cfg.n_layers, n, cfg.n_kv_heads, cfg.head_dim)
        self.v = torch.zeros_like(self.k)
        self.length = 0


class Transformer:
    def __init__(self, ckpt: Checkpoint, quant: ActQuant | None = None,
                 k_center: Tensor | None = None, k_smooth: Tensor | None = None):
        """``k_center``/``k_smooth`` [layers, kv_heads, head_dim]: the static per-channel key
        transform applied before KV quantization (see ``quant.kv_calib``)."""
        self.config = ckpt.config
        self.weights = dict(ckpt.weights)
        self.quant = quant or ActQuant()
        self.k_center, self.k_smooth = k_center, k_smooth

    def _act(self, x: Tensor) -> Tensor:
        b = self.quant.act_bits
        return x if b is None else fake_quant_symmetric(x, b)

    def _kv(self, x: Tensor) -> Tensor:
        b = self.quant.kv_bits
        if b is None:
            return x
        g = self.quant.kv_group or self.config.head_dim
        return fake_quant_symmetric(x.flatten(-2), b, g, centred=True).reshape(x.shape)

    def _norm(self, x: Tensor, w: Tensor) -> Tensor:
        ms = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(ms + self.config.norm_eps) * w

    def linear(self, name: str, x: Tensor, observer: Observer | None = None) -> Tensor:
        if observer is not None:
            observer(name, x)
        return self._act(x) @ self.weights[name].T

    @torch.no_grad()
    def forward(self, tokens: Tensor, cache: KVCache | None = None,
                observer: Observer | None = None) -> Tensor:
        """Logits [T, vocab] for ``tokens`` [T] following what ``cache`` already holds."""
        return self.forward_grad(tokens, cache, observer)

    def forward_grad(self, tokens: Tensor, cache: KVCache | None = None,
                     observer: Observer | None = None) -> Tensor:
        """:meth:`forward` with autograd enabled (quantization-aware fine-tuning)."""
        cfg = self.config
        cache = cache or KVCache(cfg, len(tokens))
        start, t_new = cache.length, len(tokens)
        if start + t_new > cache.k.shape[1]:
            raise ValueError(f"sequence of {start + t_new} tokens exceeds the cache "
                             f"({cache.k.shape[1]})")
        pos = torch.arange(start, start + t_new)
        cos, sin = rope_angles(cfg, pos)
        end = start + t_new
        vis = N.lambda_mask(pos, end, self.quant.sink, self.quant.window)
        hd, group = cfg.head_dim, cfg.n_heads // cfg.n_kv_heads
        x = self.weights["tok_embeddings"][tokens]
        for i in range(cfg.n_layers):
            p = f"layers.{i}."
            h = self._norm(x, self.weights[p + "attention_norm"])
            attn_norm = h
            q = self.linear(p + "wq", h, observer).reshape(t_new, cfg.n_heads, hd)
            k = self.linear(p + "wk", h, observer).reshape(t_new, cfg.n_kv_heads, hd)
            v = self.linear(p + "wv", h, observer).reshape(t_new, cfg.n_kv_heads, hd)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            if observer is not None:
                for name, t in ((":q", q), (":k", k), (":v", v)):
                    observer(p + name, t)
            if self.k_smooth is not None:  # keys (k - c) / s, queries q * s: same scores
                # up to the per-query constant q.c, which softmax ignores
                k = (k - self.k_center[i]) / self.k_smooth[i]
                q = q * self.k_smooth[i].repeat_interleave(group, dim=0)
            cache.k[i, start:end] = self._kv(k)
            cache.v[i, start:end] = self._kv(v)
            keys = cache.k[i, :end].repeat_interleave(group, dim=1)  # [S, H, hd]
            vals = cache.v[i, :end].repeat_interleave(group, dim=1)
            if self.quant.act_bits is not None:
                q = fake_quant_symmetric(q, self.quant.act_bits)  # per head, as for scores
            scores = torch.einsum("thd,shd->hts", q, keys) / math.sqrt(hd)
            scores = scores.masked_fill(~vis, float("-inf"))
            att = torch.softmax(scores, dim=-1)
            o = torch.einsum("hts,shd->thd", att, vals).reshape(t_new, cfg.dim)
            a = self.linear(p + "wo", o, observer)
            x = x + a
            h = self._norm(x, self.weights[p + "ffn_norm"])
            gate = self.linear(p + "w1", h, observer)
            up = self.linear(p + "w3", h, observer)
            act = torch.nn.functional.silu(gate)
            down = self.linear(p + "w2", act * up, observer)
            x = x + down
            if observer is not None:
                for name, t in (("attn_norm", attn_norm), ("o", o), ("wo", a), ("ffn_norm", h),
                        ("gate", gate), ("up", up), ("silu", act), ("prod", act * up),
                        ("down", down), ("resid", x)):
                    observer(f"{p}:{name}", t)
        cache.length = end
        h = self._norm(x, self.weights["norm"])
        logits = self.linear("output", h, observer)
        if observer is not None:
            observer(":final_norm", h)
            observer(":logits", logits)
            observer(":resid", self.weights["tok_embeddings"][tokens])
        return logits

    @torch.no_grad()
    def generate(self, prompt: list[int], steps: int, max_len: int | None = None) -> list[int]:
        """Greedy decoding: prefill ``prompt`` then ``steps`` single-token decode steps."""
        cache = KVCache(self.config, max_len or len(prompt) + steps)
        logits = self.forward(torch.tensor(prompt), cache)
        out = []
        for _ in range(steps):
            nxt = int(torch.argmax(logits[-1]))
            out.append(nxt)
            logits = self.forward(torch.tensor([nxt]), cache)
        return out
