"""The shapes of LLaMA-family models, by name or read from a model file without its weights.

``llmacc perf`` prices these shapes (:mod:`sim.perf_model`); this module is plain Python (the
GGUF reader, :mod:`quant.gguf_import`, is imported only for a GGUF file), so the command line
lists the known models in ``--help`` without loading torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelShape:
    name: str
    dim: int
    layers: int
    heads: int
    kv_heads: int
    hidden: int
    vocab: int

    @property
    def head_dim(self) -> int:
        return self.dim // self.heads


#: The shapes of the LLaMA-family models people run (their published configurations).
MODELS = {m.name: m for m in (
    ModelShape("llama2-7b", 4096, 32, 32, 32, 11008, 32000),
    ModelShape("llama2-13b", 5120, 40, 40, 40, 13824, 32000),
    ModelShape("llama2-70b", 8192, 80, 64, 8, 28672, 32000),
    ModelShape("llama3-8b", 4096, 32, 32, 8, 14336, 128256),
    ModelShape("llama3-70b", 8192, 80, 64, 8, 28672, 128256),
    ModelShape("mistral-7b", 4096, 32, 32, 8, 14336, 32000),
    ModelShape("smollm2-135m", 576, 30, 9, 3, 1536, 49152),
)}


class ModelShapeError(ValueError):
    """A model file or name whose shapes cannot be read (names the file and the field)."""


def _shape_from_hf_config(path: Path) -> ModelShape:
    try:
        raw = json.loads(path.read_text())
        heads = int(raw["num_attention_heads"])
        return ModelShape(path.parent.name or path.stem, int(raw["hidden_size"]),
                          int(raw["num_hidden_layers"]), heads,
                          int(raw.get("num_key_value_heads", heads)),
                          int(raw["intermediate_size"]), int(raw["vocab_size"]))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelShapeError(f"{path}: not a readable config.json ({exc})") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelShapeError(f"{path}: config.json lacks or mistypes {exc}") from None


def _shape_from_gguf(path: Path) -> ModelShape:
    """The shapes in a GGUF file's metadata (``quant.gguf_import``; no tensor is read)."""
    from quant.checkpoint import CheckpointError
    from quant.gguf_import import gguf_shape

    try:
        s = gguf_shape(path)
    except CheckpointError as exc:
        raise ModelShapeError(str(exc)) from None
    return ModelShape(path.stem, s["dim"], s["layers"], s["heads"], s["kv_heads"], s["hidden"],
                      s["vocab"])


def model_shape(name_or_path: str) -> ModelShape:
    """A known model's shapes (:data:`MODELS`), or those of a Hugging Face ``config.json``
    (or the directory holding one) or a GGUF file, read without loading weights."""
    if name_or_path in MODELS:
        return MODELS[name_or_path]
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if not path.exists():
        raise ModelShapeError(f"--model {name_or_path}: neither a known model "
                              f"({', '.join(MODELS)}) nor a file")
    if path.suffix == ".gguf":
        return _shape_from_gguf(path)
    return _shape_from_hf_config(path)
