"""Shared helpers of the quant tests: the shipped model's paths and a tiny random LLaMA."""

from pathlib import Path

import pytest
import torch

from host.device import Device
from llmacc.config import AccelConfig
from quant import intref
from quant.checkpoint import Checkpoint, ModelConfig

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
STORIES = SHARED / "models" / "stories260K"
MODEL, MODEL_V1, TOKENIZER = (STORIES / "stories260K.bin", STORIES / "stories260K_v1.bin",
                              STORIES / "tok512.bin")
TEXT = SHARED / "data" / "tinystories_val_dev.txt"


def need_shared() -> None:
    if not MODEL.exists():
        pytest.skip(f"shipped model not found at {MODEL}")


def tiny_checkpoint(seed: int, dim: int = 32, hidden: int = 44, layers: int = 2,
                    heads: int = 4, kv_heads: int = 2, vocab: int = 64,
                    seq_len: int = 64) -> Checkpoint:
    """A random LLaMA with an awkward hidden size (not a multiple of common groups)."""
    cfg = ModelConfig(dim, hidden, layers, heads, kv_heads, vocab, seq_len)
    g = torch.Generator().manual_seed(seed)
    w = {}
    for name, shape in cfg.shapes().items():
        if name.endswith("norm"):
            w[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            w[name] = torch.randn(shape, generator=g) / shape[-1] ** 0.5
    w["output"] = w["tok_embeddings"]
    return Checkpoint(cfg, w, f"tiny-{seed}").validate()


def smollm2_slice(full: Checkpoint, layers: int = 1, vocab: int | None = None) -> Checkpoint:
    """SmolLM2-135M's first ``layers`` decoder layers as a model of their own (its real
    shapes: dim 576 = 9 x 64, 3 KV heads, FFN 1536, RoPE base 100,000), optionally with only
    the first ``vocab`` rows of its tied embedding."""
    import dataclasses

    cfg = dataclasses.replace(full.config, n_layers=layers,
                              vocab_size=vocab or full.config.vocab_size, seq_len=64)
    w = {k: v for k, v in full.weights.items()
         if not k.startswith("layers.") or int(k.split(".")[1]) < layers}
    w["tok_embeddings"] = w["output"] = full.weights["tok_embeddings"][:cfg.vocab_size]
    return Checkpoint(cfg, w, f"{full.source} (first {layers} layers)").validate()


def random_sequences(seed: int, count: int, length: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[1, *torch.randint(3, vocab, (length - 1,), generator=g).tolist()]
            for _ in range(count)]


def tiny_int_model(seed: int, scheme: str, group: int = 16, **shape):
    """The integer reference of a tiny random model quantized with ``scheme``."""
    from quant import intref, schemes
    from quant.quantize import quantize

    ckpt = tiny_checkpoint(seed, **shape)
    calib = random_sequences(seed, 6, 24, ckpt.config.vocab_size)
    return intref.build(quantize(ckpt, schemes.parse(scheme, group=group), calib))


def check_run(im: intref.IntModel, device: Device, tokens: list[int], prompt: int,
              where: str) -> None:
    """Prefill ``prompt`` tokens, then decode the rest; every logit must match."""
    cache = intref.IntKVCache.empty(im.config, len(tokens))
    ref = im.forward(torch.tensor(tokens[:prompt]), cache)
    got = device.prefill(tokens[:prompt])
    assert torch.equal(got, ref), f"{where}: prefill of {prompt} differs"
    for pos in range(prompt, len(tokens)):
        ref = im.forward(torch.tensor(tokens[pos:pos + 1]), cache)[0]
        got = device.decode(tokens[pos], pos)
        assert torch.equal(got, ref), f"{where}: decode at position {pos} differs"


def check_run_on_rtl(im: intref.IntModel, cm, tokens: list[int], prompt: int, where: str,
                     seed: int) -> int:
    """:func:`check_run` on the Verilated top of ``cm``'s configuration, its memories
    stalling at random; returns the device cycles of every step."""
    from host.rtl_device import RtlDevice

    device = RtlDevice(cm, seed=seed, stall=0.05)
    try:
        check_run(im, device, tokens, prompt, where)
        return sum(s.cycles for s in device.stats)
    finally:
        device.close()


def channel_slice(cfg: AccelConfig, channels: int) -> AccelConfig:
    """``cfg`` cut to its first ``channels`` memory channels and their lanes: each channel's
    datapath as in ``cfg``, the attention unit, the SFU and the buffers whole."""
    sliced = cfg.replace(name=f"{cfg.name}-slice{channels}", mem_channels=channels,
                         mv_rows=cfg.lanes_per_channel * channels)
    sliced.validate()
    return sliced
