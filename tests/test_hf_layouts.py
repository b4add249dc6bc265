"""Hugging Face checkpoints as transformers itself writes them (5.x: ``rope_parameters``,
sharded safetensors with an index), against transformers' own logits; the layouts we refuse
are refused with one line naming the field."""

import json

import pytest
import torch

from quant import checkpoint
from quant.checkpoint import CheckpointError
from quant.model import Transformer

transformers = pytest.importorskip("transformers")

ROPES = {
    "default-theta-500k": {"rope_type": "default", "rope_theta": 500000.0},
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    "llama3": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32},
}


def _hf_model(seed: int, rope: dict, **changes):
    """A tiny random LlamaForCausalLM (fp32) with ``rope`` as transformers 5.x stores it."""
    cfg = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=128, max_position_embeddings=256,
        rope_parameters=dict(rope), tie_word_embeddings=False, **changes)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


def _logits_match(model, directory):
    tokens = torch.tensor([1, 7, 99, 3, 42, 5, 17, 64, 2, 11] * 6)  # 60 positions
    with torch.no_grad():
        want = model(tokens.unsqueeze(0)).logits[0]
    got = Transformer(checkpoint.load(directory)).forward(tokens)
    err = (got - want).abs().max().item()
    assert err < 1e-4, err


@pytest.mark.parametrize("rope", sorted(ROPES))
def test_transformers_5_checkpoints_give_transformers_logits(tmp_path, seed, rope):
    model = _hf_model(seed, ROPES[rope])
    model.save_pretrained(tmp_path)
    assert "rope_parameters" in json.loads((tmp_path / "config.json").read_text())
    _logits_match(model, tmp_path)


def test_sharded_checkpoint_follows_its_index(tmp_path, seed):
    """Shards and index as save_pretrained writes them; a stray safetensors file beside
    them is not merged in; without the index, several files are refused."""
    model = _hf_model(seed, ROPES["llama3"])
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / checkpoint.INDEX).exists()
    checkpoint.write_safetensors(tmp_path / "stray.safetensors",
                                 {"model.layers.0.mlp.extra.weight": torch.ones(3)})
    _logits_match(model, tmp_path)
    (tmp_path / checkpoint.INDEX).unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors.index.json"):
        checkpoint.load(tmp_path)


def test_index_naming_a_missing_shard_or_tensor(tmp_path, seed):
    model = _hf_model(seed, ROPES["default-theta-500k"])
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / checkpoint.INDEX).read_text())
    name = next(iter(index["weight_map"]))
    broken = dict(index, weight_map={**index["weight_map"], "model.norm.weight": "gone.st"})
    (tmp_path / checkpoint.INDEX).write_text(json.dumps(broken))
    with pytest.raises(CheckpointError, match="shard 'gone.st' is not a file"):
        checkpoint.load(tmp_path)
    other = sorted(set(index["weight_map"].values()) - {index["weight_map"][name]})[0]
    moved = dict(index, weight_map={**index["weight_map"], name: other})
    (tmp_path / checkpoint.INDEX).write_text(json.dumps(moved))
    with pytest.raises(CheckpointError, match=f"tensor {name} is not in the file"):
        checkpoint.load(tmp_path)


@pytest.mark.parametrize("change, message", [
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0}},
     "RoPE type 'yarn' is not supported"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "RoPE type 'dynamic'"),
    ({"head_dim": 32}, "head_dim 32 is not hidden_size / num_attention_heads = 16"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e4}}},
     "per-layer-type RoPE is not supported"),
])
def test_unsupported_layouts_are_refused_by_name(tmp_path, seed, change, message):
    _hf_model(seed, ROPES["default-theta-500k"]).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw.update(change)
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=message):
        checkpoint.load(tmp_path)


def test_transformers_4_layout_and_our_export_round_trip(tmp_path, seed):
    """``rope_theta`` / ``rope_scaling`` at the top level (4.x) load as the same model, and
    save_hf keeps the scaling."""
    model = _hf_model(seed, ROPES["llama3"])
    model.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    params = raw.pop("rope_parameters")
    raw["rope_theta"] = params.pop("rope_theta")
    raw["rope_scaling"] = params
    (tmp_path / "config.json").write_text(json.dumps(raw))
    _logits_match(model, tmp_path)
    ckpt = checkpoint.load(tmp_path)
    checkpoint.save_hf(ckpt, tmp_path / "again")
    assert checkpoint.load(tmp_path / "again").config == ckpt.config
