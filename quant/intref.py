"""The integer reference model: the whole decoder in the arithmetic of ``llmacc.numerics``.

This is the golden model for the compiler, the emulator and the RTL. Every operation below is
one of the contract's integer primitives on int64 tensors (exact on any CPU); the only floats
are offline constants computed in :func:`build` and stored in the :class:`IntModel` (static
exponents, INT16 gammas, RoPE tables, the key transform). Per layer, for new tokens at
positions ``pos`` with the residual stream ``x`` (wide, exponent ``F["resid"]``):

1. ``h = rmsnorm(x)``; ``xq = quantize_act(h)``; ``q, k, v = linear(xq)`` (q carries the folded
   score constant ``log2(e) / sqrt(head_dim)``); ``rope(q)``, ``rope(k)``.
2. Key transform: ``k' = mul(add(k, -centre), recip, 12)``, ``q' = mul(q, smooth, 12)``; the
   cache stores ``quantize_kv(k')`` and ``quantize_kv(v)`` per token and head.
3. Per head: ``attention_scores`` (Q15.16, log2 units), ``softmax`` under the Lambda mask,
   ``attention_pv``; ``wo``; residual ``add``.
4. ``rmsnorm``; ``quantize_act``; ``gate, up = linear``; ``silu(gate)``; ``mul``;
   ``quantize_act``; ``down = linear``; residual ``add``.

Static exponents come from calibration: a tensor whose calibrated max is ``A`` gets
``F = top - ceil(log2 A)`` with ``top = 27`` (16x headroom to INT32) or ``21`` for operands of
``mul`` (which saturates them to 24 bits).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from llmacc import numerics as N
from quant.checkpoint import LINEARS, ModelConfig
from quant.qlinear import QLinear
from quant.quantize import Calibration, QuantizedModel, calibrate

Tensor = torch.Tensor
TOP_BITS = 27  #: calibrated maxima land below 2**27
MUL_TOP_BITS = 21  #: ... and below 2**21 for mul operands (saturated to 24 bits)
SMOOTH_FRAC = 12  #: fraction bits of the key transform's per-channel factors
LAYER_TENSORS = ("attn_norm", "q", "k", "v", "o", "wo", "ffn_norm", "gate", "up", "silu",
                 "prod", "down")
MUL_OPERANDS = ("q", "k", "silu", "up")


def exponent_for(absmax: float, top: int = TOP_BITS) -> int:
    """Static exponent so that ``absmax * 2**F < 2**top`` (F in [-16, 40])."""
    if not math.isfinite(absmax):
        raise ValueError("calibration saw a non-finite activation")
    if absmax <= 0:
        return top
    return max(-16, min(40, top - math.floor(math.log2(absmax)) - 1))


@dataclass
class IntLayer:
    wq: QLinear
    wk: QLinear
    wv: QLinear
    wo: QLinear
    w1: QLinear
    w2: QLinear
    w3: QLinear
    attn_gamma: Tensor  #: INT16 RMSNorm weights
    attn_gamma_exp: int
    attn_eps: int
    ffn_gamma: Tensor
    ffn_gamma_exp: int
    ffn_eps: int
    k_centre: Tensor  #: [kv_dim] wide at F["k"], negated (added to k)
    k_recip: Tensor  #: [kv_dim] round(2**12 / s)
    q_smooth: Tensor  #: [dim] round(2**12 * s) per query channel
    F: dict[str, int] = field(default_factory=dict)


@dataclass
class IntKVCache:
    k: Tensor  #: [layers, S, kv_heads, head_dim] codes
    k_m: Tensor  #: [layers, S, kv_heads] SF16 mantissas
    k_e: Tensor
    k_mid: Tensor  #: [layers, S, kv_heads] wide midpoints
    v: Tensor
    v_m: Tensor
    v_e: Tensor
    v_mid: Tensor
    length: int = 0

    @classmethod
    def empty(cls, cfg: ModelConfig, max_len: int) -> IntKVCache:
        codes = torch.zeros(cfg.n_layers, max_len, cfg.n_kv_heads, cfg.head_dim, dtype=N.I64)
        scale = torch.zeros(cfg.n_layers, max_len, cfg.n_kv_heads, dtype=N.I64)
        return cls(codes, scale, scale.clone(), scale.clone(), codes.clone(), scale.clone(),
                   scale.clone(), scale.clone())


def _gamma(w: Tensor) -> tuple[Tensor, int]:
    """Float RMSNorm weights -> INT16 and exponent (largest |g| in [2**14, 2**15))."""
    mx = float(w.abs().max())
    exp = 14 - math.floor(math.log2(mx)) if mx > 0 else 0
    return N.encode_fixed(w, exp, N.GAMMA_BITS), exp


@dataclass
class IntModel:
    config: ModelConfig
    layers: list[IntLayer]
    embedding: QLinear  #: INT8 rows
    output: QLinear
    final_gamma: Tensor
    final_gamma_exp: int
    final_eps: int
    rope_cos: Tensor  #: [max_pos, head_dim / 2] Q1.14
    rope_sin: Tensor
    F: dict[str, int]  #: global exponents: resid, final_norm, logits
    kv_bits: int = 8
    sink: int = 0
    window: int = 0

    def logits_float(self, logits: Tensor) -> Tensor:
        return logits.to(torch.float64) * 2.0 ** -self.F["logits"]

    def _linear(self, q: QLinear, x: Tensor, f_in: int, f_out: int) -> Tensor:
        xq, xm, xe = N.quantize_act(x)
        xq = torch.nn.functional.pad(xq, (0, q.padded_in - xq.shape[-1]))
        acc = N.linear_acc(xq, q.operands(), q.mant, q.group)
        return N.linear_out(acc, xm, xe, q.row_exp, f_in, f_out)

    def embed(self, tokens: Tensor) -> Tensor:
        e = self.embedding
        ops = e.operands()[tokens][:, :self.config.dim]
        return N.embed_rows(ops, e.mant[tokens], e.row_exp[tokens], e.group, self.F["resid"])

    def forward(self, tokens: Tensor, cache: IntKVCache | None = None) -> Tensor:
        """Wide logits [T, vocab] (exponent ``F["logits"]``) for ``tokens`` after ``cache``."""
        cfg = self.config
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        cache = cache or IntKVCache.empty(cfg, len(tokens))
        start, t_new = cache.length, len(tokens)
        end = start + t_new
        if end > cache.k.shape[1] or end > self.rope_cos.shape[0]:
            raise ValueError(f"sequence of {end} tokens exceeds the cache or RoPE table")
        pos = torch.arange(start, end)
        cos, sin = self.rope_cos[pos].unsqueeze(1), self.rope_sin[pos].unsqueeze(1)
        mask = N.lambda_mask(pos, end, self.sink, self.window)
        hd, heads, kvh = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        rep = heads // kvh
        fr = self.F["resid"]
        x = self.embed(tokens)
        for i, layer in enumerate(self.layers):
            F = layer.F
            h = N.rmsnorm(x, layer.attn_gamma, layer.attn_gamma_exp, layer.attn_eps, F["attn_norm"])
            q = self._linear(layer.wq, h, F["attn_norm"], F["q"]).reshape(t_new, heads, hd)
            k = self._linear(layer.wk, h, F["attn_norm"], F["k"]).reshape(t_new, kvh, hd)
            v = self._linear(layer.wv, h, F["attn_norm"], F["v"])
            q, k = N.rope(q, cos, sin), N.rope(k, cos, sin)
            k = N.mul(N.add(k.reshape(t_new, -1), layer.k_centre), layer.k_recip, SMOOTH_FRAC)
            q = N.mul(q.reshape(t_new, -1), layer.q_smooth, SMOOTH_FRAC).reshape(t_new, heads, hd)
            for name, val in (("k", k), ("v", v)):
                codes, m, e, mid = N.quantize_kv(val, hd, self.kv_bits)
                getattr(cache, name)[i, start:end] = codes.reshape(t_new, kvh, hd)
                getattr(cache, name + "_m")[i, start:end] = m
                getattr(cache, name + "_e")[i, start:end] = e
                getattr(cache, name + "_mid")[i, start:end] = mid
            qc, qm, qe = N.quantize_act(q)
            o = torch.empty(t_new, heads, hd, dtype=N.I64)
            for hh in range(heads):
                g = hh // rep
                scores = N.attention_scores(qc[:, hh], qm[:, hh], qe[:, hh],
                                            cache.k[i, :end, g], cache.k_m[i, :end, g],
                                            cache.k_e[i, :end, g], cache.k_mid[i, :end, g],
                                            F["q"], F["k"])
                probs = N.softmax(scores, mask)
                o[:, hh] = N.attention_pv(probs, mask, cache.v[i, :end, g],
                                          cache.v_m[i, :end, g], cache.v_e[i, :end, g],
                                          cache.v_mid[i, :end, g], F["v"], F["o"])
            a = self._linear(layer.wo, o.reshape(t_new, -1), F["o"], F["wo"])
            x = N.add(x, a, F["wo"] - fr)
            h = N.rmsnorm(x, layer.ffn_gamma, layer.ffn_gamma_exp, layer.ffn_eps, F["ffn_norm"])
            gate = self._linear(layer.w1, h, F["ffn_norm"], F["gate"])
            up = self._linear(layer.w3, h, F["ffn_norm"], F["up"])
            s = N.silu(gate, F["gate"], F["silu"])
            prod = N.mul(s, up, F["silu"] + F["up"] - F["prod"])
            down = self._linear(layer.w2, prod, F["prod"], F["down"])
            x = N.add(x, down, F["down"] - fr)
        cache.length = end
        h = N.rmsnorm(x, self.final_gamma, self.final_gamma_exp, self.final_eps,
                      self.F["final_norm"])
        return self._linear(self.output, h, self.F["final_norm"], self.F["logits"])

    def generate(self, prompt: list[int], steps: int) -> list[int]:
        """Greedy decoding in integer arithmetic (argmax of the wide logits)."""
        cache = IntKVCache.empty(self.config, len(prompt) + steps)
        logits = self.forward(torch.tensor(prompt), cache)
        out = []
        for _ in range(steps):
            out.append(int(torch.argmax(logits[-1])))
            logits = self.forward(torch.tensor(out[-1:]), cache)
        return out


def build(qm: QuantizedModel, stats: Calibration | None = None) -> IntModel:
    """Turn a quantized model into the integer reference (exponents from calibration)."""
    cfg = qm.config
    if not qm.scheme.quantized:
        raise ValueError("the integer reference needs a quantized scheme (not 'float')")
    if stats is None:
        if not qm.calib:
            raise ValueError("the integer reference needs calibration text for its exponents")
        stats = calibrate(qm.fake_model(), qm.calib)
    hd = cfg.head_dim
    score_const = math.log2(math.e) / math.sqrt(hd)

    def exp(name: str, scale: float = 1.0, top: int = TOP_BITS) -> int:
        if name not in stats.absmax:
            raise ValueError(f"calibration did not see tensor {name}")
        return exponent_for(stats.absmax[name] * scale, top)

    resid = max(stats.absmax[k] for k in stats.absmax if k.endswith(":resid"))
    Fg = {"resid": exponent_for(resid), "final_norm": exp(":final_norm"),
          "logits": exp(":logits")}
    eps = N.rmsnorm_eps(cfg.norm_eps, cfg.dim, Fg["resid"])  # the rmsnorm input is resid
    if qm.k_center is None:
        k_center = torch.zeros(cfg.n_layers, cfg.n_kv_heads, hd)
        k_smooth = torch.ones_like(k_center)
    else:
        k_center, k_smooth = qm.k_center, qm.k_smooth
    layers = []
    rep = cfg.n_heads // cfg.n_kv_heads
    for i in range(cfg.n_layers):
        p = f"layers.{i}."
        F = {t: exp(p + ":" + t, top=MUL_TOP_BITS if t in MUL_OPERANDS else TOP_BITS)
             for t in LAYER_TENSORS if t != "q"}
        F["q"] = exp(p + ":q", score_const, MUL_TOP_BITS)
        lin = {k: qm.linears[p + k] for k in LINEARS}
        lin["wq"] = lin["wq"].with_scale(score_const)
        centre = k_center[i].reshape(-1).to(torch.float64)
        smooth = k_smooth[i].to(torch.float64)
        ga, gae = _gamma(qm.norms[p + "attention_norm"])
        gf, gfe = _gamma(qm.norms[p + "ffn_norm"])
        layers.append(IntLayer(
            **lin, attn_gamma=ga, attn_gamma_exp=gae, ffn_gamma=gf, ffn_gamma_exp=gfe,
            attn_eps=eps, ffn_eps=eps,
            k_centre=N.encode_fixed(-centre, F["k"]),
            k_recip=N.encode_fixed(1.0 / smooth.reshape(-1), SMOOTH_FRAC),
            q_smooth=N.encode_fixed(smooth.repeat_interleave(rep, dim=0).reshape(-1),
                                    SMOOTH_FRAC),
            F=F))
    fg, fge = _gamma(qm.norms["norm"])
    cos, sin = N.rope_table(cfg.seq_len, hd, cfg.rope_theta, **cfg.rope_scaling())
    return IntModel(cfg, layers, qm.linears["tok_embeddings"], qm.linears["output"], fg, fge,
                    eps, cos, sin, Fg,
                    kv_bits=qm.scheme.kv_bits or 8, sink=qm.scheme.sink,
                    window=qm.scheme.window)


def _qlinear_state(q: QLinear) -> dict:
    return {f.name: getattr(q, f.name) for f in dataclasses.fields(q)}


def _qlinear_from(d: dict) -> QLinear:
    d = dict(d)
    if d.get("sparsity") is not None:
        d["sparsity"] = tuple(d["sparsity"])
    return QLinear(**d)


def to_state(im: IntModel) -> dict:
    """Plain tensors, numbers and strings (``torch.save``-able, loadable with
    ``weights_only=True``)."""
    state = {f.name: getattr(im, f.name) for f in dataclasses.fields(im)}
    state["config"] = dataclasses.asdict(im.config)
    state["embedding"] = _qlinear_state(im.embedding)
    state["output"] = _qlinear_state(im.output)
    state["layers"] = [{f.name: (_qlinear_state(v) if isinstance(v, QLinear) else v)
                        for f in dataclasses.fields(layer)
                        for v in [getattr(layer, f.name)]} for layer in im.layers]
    return state


def from_state(state: dict) -> IntModel:
    """Inverse of :func:`to_state`; a malformed state raises ``ValueError``."""
    try:
        s = dict(state)
        s["config"] = ModelConfig(**s["config"])
        s["embedding"] = _qlinear_from(s["embedding"])
        s["output"] = _qlinear_from(s["output"])
        s["layers"] = [IntLayer(**{k: (_qlinear_from(v) if k in LINEARS else v)
                                   for k, v in layer.items()}) for layer in s["layers"]]
        return IntModel(**s)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed integer model state ({exc})") from None
