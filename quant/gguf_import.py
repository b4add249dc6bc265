"""GGUF checkpoints (llama.cpp's format) read with the ``gguf`` package, llama.cpp's own reader.

The LLaMA architecture's metadata gives the :class:`~quant.checkpoint.ModelConfig`; every
tensor the library can dequantize (F32, F16, BF16, Q8_0, Q4_0, Q4_1, the K-quants) becomes
float32 under our names. llama.cpp stores q and k rows with RoPE pairs interleaved, as
llama2.c and Meta's checkpoints do and as :mod:`quant.checkpoint` keeps them, so no row is
permuted. The tokenizer in the metadata is read elsewhere.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from quant.checkpoint import Checkpoint, CheckpointError, ModelConfig

#: Our names for a decoder layer's tensors -> GGUF's ``blk.{i}.NAME.weight``.
GGUF_NAMES = {"wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output",
              "w1": "ffn_gate", "w2": "ffn_down", "w3": "ffn_up",
              "attention_norm": "attn_norm", "ffn_norm": "ffn_norm"}


#: GGUF token types kept whole by a tokenizer: control and user-defined tokens.
GGUF_CONTROL = (3, 4)


class _Metadata:
    """The GGUF key-value metadata, each read refused with the file and the key."""

    def __init__(self, reader, path: Path):
        self.fields, self.path = reader.fields, path

    def get(self, key: str, default=None):
        field = self.fields.get(key)
        if field is None:
            if default is None:
                raise CheckpointError(f"{self.path}: GGUF metadata has no {key}")
            return default
        return field.contents()


def _reader(path: Path):
    """The file's reader, shared while the file is unchanged: the model and its tokenizer
    read the same file, and parsing SmolLM2's metadata and tensor index takes about 10 s."""
    try:
        from gguf import GGUFReader  # noqa: F401 - asked for here to say what is missing
    except ImportError:
        raise CheckpointError(f"{path}: reading GGUF needs the gguf package "
                              "(pip install gguf)") from None
    try:
        stat = path.stat()
        return _open_reader(path.resolve(), stat.st_mtime_ns, stat.st_size)
    except Exception as exc:  # noqa: BLE001 - the reader raises many kinds on a bad file
        raise CheckpointError(f"{path}: not a readable GGUF file ({exc})") from None


@functools.lru_cache(maxsize=4)
def _open_reader(path: Path, mtime_ns: int, size: int):
    from gguf import GGUFReader

    return GGUFReader(path)


def metadata(path: str | Path) -> _Metadata:
    """The key-value metadata of a GGUF file."""
    return _Metadata(_reader(Path(path)), Path(path))


def _shape(meta: _Metadata, tensors: dict) -> dict[str, int]:
    """The LLaMA shapes in the metadata (the vocabulary, if unsaid, from the embedding's
    rows); anything but the LLaMA architecture refused."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise CheckpointError(f"{meta.path}: GGUF architecture {arch!r} is not supported "
                              "(LLaMA decoders only)")
    if "token_embd.weight" not in tensors:
        raise CheckpointError(f"{meta.path}: tensor token_embd.weight is missing")
    heads = int(meta.get("llama.attention.head_count"))
    return {"dim": int(meta.get("llama.embedding_length")),
            "hidden": int(meta.get("llama.feed_forward_length")),
            "layers": int(meta.get("llama.block_count")), "heads": heads,
            "kv_heads": int(meta.get("llama.attention.head_count_kv", heads)),
            "vocab": int(meta.get("llama.vocab_size",
                                  int(tensors["token_embd.weight"].shape[-1])))}


def gguf_shape(path: str | Path) -> dict[str, int]:
    """A LLaMA GGUF file's shapes (dim, hidden, layers, heads, kv_heads, vocab), read
    without any tensor's data (``llmacc perf --model FILE.gguf``)."""
    reader = _reader(Path(path))
    return _shape(_Metadata(reader, Path(path)), {t.name: t for t in reader.tensors})


def _config(meta: _Metadata, tensors: dict) -> ModelConfig:
    shape = _shape(meta, tensors)
    dim, heads = shape["dim"], shape["heads"]
    rope_dims = int(meta.get("llama.rope.dimension_count", dim // heads))
    if rope_dims != dim // heads:
        raise CheckpointError(f"{meta.path}: RoPE over {rope_dims} of {dim // heads} head "
                              "dimensions (partial rotary) is not supported")
    scaling = str(meta.get("llama.rope.scaling.type", "none"))
    if scaling not in ("none", "linear"):
        raise CheckpointError(f"{meta.path}: RoPE scaling {scaling!r} is not supported "
                              "(none, linear)")
    rope = {"rope_type": "linear", "rope_factor": float(meta.get(
        "llama.rope.scaling.factor"))} if scaling == "linear" else {}
    return ModelConfig(
        dim=dim, hidden_dim=shape["hidden"], n_layers=shape["layers"], n_heads=heads,
        n_kv_heads=shape["kv_heads"], vocab_size=shape["vocab"],
        seq_len=int(meta.get("llama.context_length")),
        norm_eps=float(meta.get("llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
        shared_classifier="output.weight" not in tensors, **rope,
    ).validate(str(meta.path))


def _tensor(t, path: Path) -> torch.Tensor:
    """One GGUF tensor as float32, rows first (GGUF lists the fastest dimension first)."""
    from gguf.quants import dequantize

    try:
        values = dequantize(t.data, t.tensor_type)
    except NotImplementedError:
        raise CheckpointError(f"{path}: tensor {t.name} has type {t.tensor_type.name}, which "
                              "the gguf package cannot dequantize") from None
    shape = [int(n) for n in reversed(t.shape)]
    if values.size != int(np.prod(shape)):
        raise CheckpointError(f"{path}: tensor {t.name} holds {values.size} values for the "
                              f"shape {shape} (truncated file?)")
    values = np.ascontiguousarray(values, dtype=np.float32).reshape(shape)
    # F32 tensors come back as views of the read-only memory map
    return torch.from_numpy(values if values.flags.writeable else values.copy())


def load_gguf(path: str | Path) -> Checkpoint:
    """A LLaMA GGUF file as a float checkpoint (dequantized; the file's own quantization
    is then the float reference)."""
    path = Path(path)
    reader = _reader(path)
    tensors = {t.name: t for t in reader.tensors}
    if "rope_freqs.weight" in tensors:
        raise CheckpointError(f"{path}: per-frequency RoPE factors (rope_freqs.weight, as "
                              "LLaMA-3.1 GGUF files carry) are not supported")
    cfg = _config(_Metadata(reader, path), tensors)
    used: set[str] = set()

    def get(name: str) -> torch.Tensor:
        if name not in tensors:
            raise CheckpointError(f"{path}: tensor {name} is missing")
        used.add(name)
        return _tensor(tensors[name], path)

    w = {"tok_embeddings": get("token_embd.weight"), "norm": get("output_norm.weight")}
    for i in range(cfg.n_layers):
        for ours, theirs in GGUF_NAMES.items():
            w[f"layers.{i}.{ours}"] = get(f"blk.{i}.{theirs}.weight")
    w["output"] = w["tok_embeddings"] if cfg.shared_classifier else get("output.weight")
    unknown = sorted(set(tensors) - used)
    if unknown:
        raise CheckpointError(f"{path}: tensor {unknown[0]} is not part of a LLaMA decoder "
                              f"({len(unknown)} such tensors)")
    return Checkpoint(cfg, w, str(path)).validate()
