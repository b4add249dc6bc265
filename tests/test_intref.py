"""The integer reference: exact prefill/decode agreement, closeness to the fake-quant model,
and the attention primitives it adds to the numerics contract."""

import math

import pytest
import torch

from llmacc import numerics as N
from quant import intref, schemes
from quant.finetune import finetune
from quant.model import KVCache
from quant.quantize import quantize
from tests.helpers.models import random_sequences, tiny_checkpoint

SCHEMES = ["w2a8kv4", "w3-mixed-a8kv4", "w4-mixed-a8kv4+2:4", "w4a8+lambda2:4", "w8a8"]


def _quantized(seed, name):
    ckpt = tiny_checkpoint(seed)
    calib = random_sequences(seed, 6, 24, ckpt.config.vocab_size)
    return ckpt, quantize(ckpt, schemes.parse(name, group=16), calib)


@pytest.mark.parametrize("name", SCHEMES)
def test_prefill_and_decode_are_bit_identical(seed, name):
    ckpt, qm = _quantized(seed, name)
    im = intref.build(qm)
    tokens = torch.tensor(random_sequences(seed + 1, 1, 12, ckpt.config.vocab_size)[0])
    full = im.forward(tokens)
    assert full.dtype == torch.int64
    cache = intref.IntKVCache.empty(ckpt.config, len(tokens))
    parts = [im.forward(tokens[:5], cache)] + [im.forward(tokens[i:i + 1], cache)
                                               for i in range(5, len(tokens))]
    assert torch.equal(torch.cat(parts), full)
    assert torch.equal(im.forward(tokens), full)  # deterministic


@pytest.mark.parametrize("name", SCHEMES)
def test_integer_model_tracks_the_fake_quant_model(seed, name):
    ckpt, qm = _quantized(seed, name)
    im = intref.build(qm)
    tokens = torch.tensor(random_sequences(seed + 2, 1, 16, ckpt.config.vocab_size)[0])
    fake = qm.fake_model().forward(tokens)
    integer = im.logits_float(im.forward(tokens)).float()
    rel = float((integer - fake).norm() / fake.norm())
    assert rel < 0.05, f"{name}: relative logit error {rel:.4f}"
    agree = (integer.argmax(-1) == fake.argmax(-1)).float().mean()
    assert agree >= 0.8


def test_fake_quant_kv_cache_stores_transformed_keys(seed):
    ckpt, qm = _quantized(seed, "w4-mixed-a8kv4")
    cache = KVCache(ckpt.config, 8)
    qm.fake_model().forward(torch.arange(1, 9), cache)
    k = cache.k[0].flatten(-2)  # per token and head: 15 levels around the midpoint
    per_head = k.reshape(8, ckpt.config.n_kv_heads, -1)
    mid = (per_head.amax(-1, keepdim=True) + per_head.amin(-1, keepdim=True)) / 2
    scale = (per_head - mid).abs().amax(-1, keepdim=True) / 7
    steps = (per_head - mid) / scale
    assert torch.allclose(steps, steps.round(), atol=1e-4)


def test_build_rejects_unquantized_or_uncalibrated(seed):
    ckpt = tiny_checkpoint(seed)
    calib = random_sequences(seed, 2, 8, ckpt.config.vocab_size)
    with pytest.raises(ValueError, match="quantized scheme"):
        intref.build(quantize(ckpt, schemes.parse("float"), calib))
    with pytest.raises(ValueError, match="calibration"):
        quantize(ckpt, schemes.parse("w4a8"), None)


def test_finetune_lowers_the_distillation_loss(seed):
    ckpt, qm = _quantized(seed, "w2a8kv4")
    seqs = random_sequences(seed + 3, 4, 16, ckpt.config.vocab_size)
    tuned = finetune(qm, ckpt, seqs, schemes.Finetune(40), seed=seed)
    from quant.model import Transformer

    def kl(m):
        total = 0.0
        for s in seqs:
            t = torch.log_softmax(Transformer(ckpt).forward(torch.tensor(s)), -1)
            p = torch.log_softmax(m.forward(torch.tensor(s)), -1)
            total += float(torch.nn.functional.kl_div(p, t, log_target=True,
                                                      reduction="batchmean"))
        return total
    assert kl(tuned.fake_model()) < kl(qm.fake_model())
    for name, q in tuned.linears.items():  # same format: only codes and norms moved
        assert torch.equal(q.mant, qm.linears[name].mant)
        assert int(q.codes.min()) >= 0 and int(q.codes.max()) <= 3 or q.fmt == "int8"


def test_attention_primitives_match_float(seed):
    g = torch.Generator().manual_seed(seed)
    d, s, fq, fk, fv, fo = 16, 12, 20, 18, 19, 16
    q = torch.randn(3, d, generator=g, dtype=torch.float64)
    k = torch.randn(s, d, generator=g, dtype=torch.float64) * 2
    v = torch.randn(s, d, generator=g, dtype=torch.float64)
    qc, qm, qe = N.quantize_act(N.encode_fixed(q, fq))
    k = k + 3.0  # off-centre keys exercise the midpoint term
    kc, km, ke, kmid = (t.squeeze(-1) if t.dim() == 2 and t.shape[-1] == 1 else t
                        for t in N.quantize_kv(N.encode_fixed(k, fk), d))
    vc, vm, ve, vmid = (t.squeeze(-1) if t.dim() == 2 and t.shape[-1] == 1 else t
                        for t in N.quantize_kv(N.encode_fixed(v, fv), d, bits=8))
    scores = N.attention_scores(qc, qm, qe, kc, km, ke, kmid, fq, fk)
    k_real = (kmid.unsqueeze(-1) + kc * N.sf16_to_float(km, ke).unsqueeze(-1)) * 2.0 ** -fk
    q_real = qc * N.sf16_to_float(qm, qe).unsqueeze(-1) * 2.0 ** -fq
    ref = q_real @ k_real.T
    assert (scores * 2.0 ** -N.SCORE_FRAC - ref).abs().max() < 1e-4
    mask = N.lambda_mask(torch.tensor([5, 8, 11]), s, 0, 0)
    probs = N.softmax(scores, mask)
    out = N.attention_pv(probs, mask, vc, vm, ve, vmid, fv, fo) * 2.0 ** -fo
    v_real = (vmid.unsqueeze(-1) + vc * N.sf16_to_float(vm, ve).unsqueeze(-1)) * 2.0 ** -fv
    p_ref = torch.softmax(torch.where(mask, ref * math.log(2), -torch.inf), -1)
    assert (out - p_ref @ v_real).abs().max() < 2e-3


def test_embed_rows_dequantizes_int8_tables(seed):
    q = quantize(tiny_checkpoint(seed), schemes.parse("w8a8"),
                 random_sequences(seed, 1, 4, 64)).linears["tok_embeddings"]
    rows = torch.tensor([0, 3, 7])
    wide = N.embed_rows(q.operands()[rows], q.mant[rows], q.row_exp[rows], q.group, 20)
    assert torch.allclose(wide.double() * 2.0 ** -20, q.dequant()[rows].double(), atol=2e-6)
