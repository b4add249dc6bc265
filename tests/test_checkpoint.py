"""Model loading: both llama2.c exports, the Hugging Face layout, and every error path."""

import json
import struct

import pytest
import torch

from quant import checkpoint
from quant.checkpoint import CheckpointError
from quant.model import Transformer
from tests.helpers.models import MODEL, MODEL_V1, need_shared, tiny_checkpoint


def test_legacy_and_v1_exports_hold_the_same_model():
    need_shared()
    a, b = checkpoint.load(MODEL), checkpoint.load(MODEL_V1)
    assert a.config == b.config
    assert a.config.n_kv_heads == 4 and a.config.hidden_dim == 172
    assert all(torch.equal(a.weights[k], b.weights[k]) for k in a.weights)


def test_hf_round_trip_preserves_weights_and_logits(tmp_path, seed):
    ckpt = tiny_checkpoint(seed)
    checkpoint.save_hf(ckpt, tmp_path / "hf")
    back = checkpoint.load(tmp_path / "hf")
    assert back.config == ckpt.config
    for k, v in ckpt.weights.items():
        assert torch.equal(back.weights[k], v), k
    # the q/k rows really are stored half-split on disk (HF convention), not interleaved
    raw = checkpoint.read_safetensors(tmp_path / "hf" / "model.safetensors")
    assert not torch.equal(raw["model.layers.0.self_attn.q_proj.weight"], ckpt.layer(0, "wq"))
    tokens = torch.tensor([1, 5, 9, 33, 2])
    assert torch.equal(Transformer(back).forward(tokens), Transformer(ckpt).forward(tokens))


def test_hf_untied_classifier(tmp_path, seed):
    ckpt = tiny_checkpoint(seed)
    cfg = checkpoint.ModelConfig(**{**ckpt.config.__dict__, "shared_classifier": False})
    w = dict(ckpt.weights, output=torch.randn(cfg.vocab_size, cfg.dim))
    checkpoint.save_hf(checkpoint.Checkpoint(cfg, w), tmp_path)
    back = checkpoint.load(tmp_path)
    assert torch.equal(back.weights["output"], w["output"])


def _legacy_bytes(ckpt) -> bytes:
    c = ckpt.config
    head = struct.pack("<7i", c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
                       c.vocab_size, c.seq_len)
    names = ["tok_embeddings"] + [f"layers.{i}.{k}" for k in (
        "attention_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3")
        for i in range(c.n_layers)] + ["norm"]
    body = b"".join(ckpt.weights[n].numpy().tobytes() for n in names)
    return head + body + bytes(4 * c.seq_len * c.head_dim)


@pytest.mark.parametrize("export", ["legacy", "v1"])
def test_trailing_bytes_are_refused(tmp_path, export):
    """A model file longer than its header implies (garbage appended) is refused at once,
    naming the extra bytes."""
    need_shared()
    path = tmp_path / "m.bin"
    path.write_bytes((MODEL if export == "legacy" else MODEL_V1).read_bytes() + b"junk" * 5)
    with pytest.raises(CheckpointError, match="20 bytes after the end that its header implies"):
        checkpoint.load(path)


def test_legacy_writer_round_trip(tmp_path, seed):
    ckpt = tiny_checkpoint(seed)
    path = tmp_path / "m.bin"
    path.write_bytes(_legacy_bytes(ckpt))
    back = checkpoint.load(path)
    assert all(torch.equal(back.weights[k], ckpt.weights[k]) for k in ckpt.weights)


@pytest.mark.parametrize("cut", [10, 1000, -100])
def test_truncated_llama2c_file(tmp_path, seed, cut):
    blob = _legacy_bytes(tiny_checkpoint(seed))
    path = tmp_path / "m.bin"
    path.write_bytes(blob[:cut])
    with pytest.raises(CheckpointError, match="truncated|too short"):
        checkpoint.load(path)


def test_nan_weights_are_rejected(tmp_path, seed):
    ckpt = tiny_checkpoint(seed)
    ckpt.weights["layers.1.w2"][3, 4] = float("nan")
    path = tmp_path / "m.bin"
    path.write_bytes(_legacy_bytes(ckpt))
    with pytest.raises(CheckpointError, match="layers.1.w2 holds 1 NaN/Inf"):
        checkpoint.load(path)


def test_bad_header_and_version(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(struct.pack("<7i", 64, 0, 1, 1, 1, 10, 8) + bytes(100))
    with pytest.raises(CheckpointError, match="implausible"):
        checkpoint.load(path)
    path.write_bytes(struct.pack("<Ii", checkpoint.V1_MAGIC, 2) + bytes(300))
    with pytest.raises(CheckpointError, match="version 2"):
        checkpoint.load(path)
    path.write_bytes(struct.pack("<7i", 30, 8, 1, 4, 4, 10, 8) + bytes(100))
    with pytest.raises(CheckpointError, match="head size"):
        checkpoint.load(path)


def test_missing_paths(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        checkpoint.load(tmp_path / "nope.bin")
    with pytest.raises(CheckpointError, match="config.json"):
        checkpoint.load(tmp_path)


def test_malformed_safetensors(tmp_path, seed):
    ckpt = tiny_checkpoint(seed)
    checkpoint.save_hf(ckpt, tmp_path)
    st = tmp_path / "model.safetensors"
    blob = st.read_bytes()
    st.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(CheckpointError, match="malformed or truncated safetensors file"):
        checkpoint.load(tmp_path)
    st.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(CheckpointError, match="malformed or truncated safetensors file"):
        checkpoint.load(tmp_path)
    # a well-formed file with one tensor of the wrong shape
    checkpoint.save_hf(ckpt, tmp_path)
    tensors = checkpoint.read_safetensors(st)
    tensors["model.norm.weight"] = torch.ones(3)
    checkpoint.write_safetensors(st, tensors)
    with pytest.raises(CheckpointError, match="norm has shape"):
        checkpoint.load(tmp_path)
    del tensors["model.norm.weight"]
    checkpoint.write_safetensors(st, tensors)
    with pytest.raises(CheckpointError, match="model.norm.weight is missing"):
        checkpoint.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 32}))
    with pytest.raises(CheckpointError, match="missing or bad field"):
        checkpoint.load(tmp_path)
