"""GGUF checkpoints (llama.cpp's format): tiny random LLaMAs written with the ``gguf``
package in several tensor types, loaded by us and by transformers' own GGUF loader; the
logits must agree. Files we cannot read are refused with one line."""

import numpy as np
import pytest
import torch

from quant import checkpoint
from quant.checkpoint import CheckpointError
from quant.gguf_import import GGUF_NAMES
from quant.model import Transformer
from tests.helpers.models import tiny_checkpoint

gguf = pytest.importorskip("gguf")


def _write(path, ckpt, qtype, tied: bool = True, arch: str = "llama", drop: str = ""):
    """``ckpt`` as llama.cpp's converter writes it: q/k rows already interleaved, linear
    weights in ``qtype``, norms in F32."""
    c = ckpt.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(c.seq_len)
    w.add_embedding_length(c.dim)
    w.add_block_count(c.n_layers)
    w.add_feed_forward_length(c.hidden_dim)
    w.add_head_count(c.n_heads)
    w.add_head_count_kv(c.n_kv_heads)
    w.add_rope_freq_base(c.rope_theta)
    w.add_rope_dimension_count(c.head_dim)
    w.add_layer_norm_rms_eps(c.norm_eps)
    w.add_vocab_size(c.vocab_size)
    tensors = {"token_embd.weight": ckpt.weights["tok_embeddings"],
               "output_norm.weight": ckpt.weights["norm"]}
    if not tied:
        tensors["output.weight"] = ckpt.weights["output"]
    for i in range(c.n_layers):
        for ours, theirs in GGUF_NAMES.items():
            tensors[f"blk.{i}.{theirs}.weight"] = ckpt.weights[f"layers.{i}.{ours}"]
    for name, t in tensors.items():
        if name == drop:
            continue
        a = t.numpy().astype(np.float32)
        if a.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, a)
        else:
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _transformers_logits(path, tokens):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers needs it to load GGUF
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens.unsqueeze(0)).logits[0]


@pytest.mark.parametrize("qtype,tied", [("F32", False), ("F16", True), ("Q8_0", False),
                                        ("Q4_0", True), ("Q4_1", False)])
def test_gguf_gives_transformers_logits(tmp_path, seed, qtype, tied):
    ckpt = tiny_checkpoint(seed, dim=64, hidden=96, heads=4, kv_heads=2, vocab=128)
    path = tmp_path / "tiny.gguf"
    _write(path, ckpt, gguf.GGMLQuantizationType[qtype], tied)
    ours = checkpoint.load(path)
    assert ours.config.shared_classifier == tied
    assert (ours.config.dim, ours.config.n_kv_heads, ours.config.vocab_size) == (64, 2, 128)
    tokens = torch.tensor([1, 7, 99, 3, 42, 5, 17, 64, 2, 11] * 4)
    got = Transformer(ours).forward(tokens)
    want = _transformers_logits(path, tokens)
    err = (got - want).abs().max().item()
    assert err < 1e-4, f"{qtype}: {err} (seed {seed})"


def test_bad_gguf_files_are_refused_with_one_line(tmp_path, seed):
    ckpt = tiny_checkpoint(seed, dim=64, hidden=96, heads=4, kv_heads=2, vocab=128)
    f32 = gguf.GGMLQuantizationType.F32
    cases = {"gpt2.gguf": ({"arch": "gpt2"}, "GGUF architecture 'gpt2' is not supported"),
             "missing.gguf": ({"drop": "blk.1.ffn_up.weight"},
                              "tensor blk.1.ffn_up.weight is missing")}
    for name, (change, match) in cases.items():
        _write(tmp_path / name, ckpt, f32, **change)
        with pytest.raises(CheckpointError, match=match):
            checkpoint.load(tmp_path / name)
    _write(tmp_path / "whole.gguf", ckpt, f32)
    blob = (tmp_path / "whole.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(blob[:len(blob) // 2])
    (tmp_path / "text.gguf").write_bytes(b"not a gguf file at all\n" * 10)
    for name in ("cut.gguf", "text.gguf"):
        with pytest.raises(CheckpointError, match="not a readable GGUF file|truncated") as exc:
            checkpoint.load(tmp_path / name)
        assert "\n" not in str(exc.value)
