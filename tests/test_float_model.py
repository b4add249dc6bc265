"""The float reference against an independent numpy port of llama2.c's ``run.c`` forward."""

import numpy as np
import pytest
import torch

from quant import checkpoint, tokenizer
from quant.model import ActQuant, KVCache, Transformer
from tests.helpers.models import MODEL, MODEL_V1, TOKENIZER, need_shared, tiny_checkpoint

KNOWN_START = ("Once upon a time, there was a little girl named Lily. She loved to play outside "
               "in the park.")


def run_c_generate(ckpt, steps: int) -> list[int]:
    """Greedy decoding from BOS, one token at a time, transcribed from llama2.c run.c."""
    c = ckpt.config
    W = {k: v.numpy().astype(np.float32) for k, v in ckpt.weights.items()}
    hd, kv_mul = c.head_dim, c.n_heads // c.n_kv_heads
    kc = np.zeros((c.n_layers, steps + 1, c.kv_dim), np.float32)
    vc = np.zeros_like(kc)

    def rmsnorm(x, w):
        return w * (x / np.sqrt(np.mean(x * x) + 1e-5))

    token, out = 1, []
    for pos in range(steps):
        x = W["tok_embeddings"][token].copy()
        for layer in range(c.n_layers):
            p = f"layers.{layer}."
            xb = rmsnorm(x, W[p + "attention_norm"])
            q, k, v = W[p + "wq"] @ xb, W[p + "wk"] @ xb, W[p + "wv"] @ xb
            for i in range(0, c.dim, 2):
                freq = 1.0 / 10000.0 ** ((i % hd) / hd)
                cr, ci = np.cos(pos * freq), np.sin(pos * freq)
                for vec in ((q, k) if i < c.kv_dim else (q,)):
                    v0, v1 = vec[i], vec[i + 1]
                    vec[i], vec[i + 1] = v0 * cr - v1 * ci, v0 * ci + v1 * cr
            kc[layer, pos], vc[layer, pos] = k, v
            xb = np.zeros(c.dim, np.float32)
            for h in range(c.n_heads):
                g = h // kv_mul
                qh = q[h * hd:(h + 1) * hd]
                att = kc[layer, :pos + 1, g * hd:(g + 1) * hd] @ qh / np.sqrt(hd)
                att = np.exp(att - att.max())
                att /= att.sum()
                xb[h * hd:(h + 1) * hd] = att @ vc[layer, :pos + 1, g * hd:(g + 1) * hd]
            x = x + W[p + "wo"] @ xb
            xb = rmsnorm(x, W[p + "ffn_norm"])
            h1, h3 = W[p + "w1"] @ xb, W[p + "w3"] @ xb
            x = x + W[p + "w2"] @ (h1 / (1 + np.exp(-h1)) * h3)
        logits = W["output"] @ rmsnorm(x, W["norm"])
        token = int(np.argmax(logits))
        out.append(token)
    return out


@pytest.mark.parametrize("path", [MODEL, MODEL_V1], ids=["legacy", "v1"])
def test_greedy_generation_matches_llama2c(path):
    need_shared()
    ckpt = checkpoint.load(path)
    ours = Transformer(ckpt).generate([1], 64)
    assert ours == run_c_generate(ckpt, 64)
    tok = tokenizer.load(TOKENIZER, ckpt.config.vocab_size)
    assert tok.decode(ours).startswith(KNOWN_START)


def test_prefill_equals_incremental_decode(seed):
    ckpt = tiny_checkpoint(seed)
    model = Transformer(ckpt)
    tokens = torch.tensor([1, 7, 3, 60, 22, 9, 41])
    full = model.forward(tokens)
    cache = KVCache(ckpt.config, len(tokens))
    parts = [model.forward(tokens[:4], cache), model.forward(tokens[4:5], cache),
             model.forward(tokens[5:], cache)]
    torch.testing.assert_close(torch.cat(parts), full, rtol=1e-5, atol=1e-5)


def test_lambda_window_only_changes_long_contexts(seed):
    ckpt = tiny_checkpoint(seed)
    tokens = torch.tensor([1, *range(5, 25)])
    full = Transformer(ckpt).forward(tokens)
    lam = Transformer(ckpt, ActQuant(sink=2, window=4)).forward(tokens)
    torch.testing.assert_close(lam[:4], full[:4])  # every key still visible
    assert not torch.allclose(lam[-1], full[-1])


def test_cache_overflow_is_an_error(seed):
    ckpt = tiny_checkpoint(seed)
    with pytest.raises(ValueError, match="exceeds the cache"):
        Transformer(ckpt).forward(torch.arange(5), KVCache(ckpt.config, 4))
