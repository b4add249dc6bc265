"""Whole models on the RTL top: one decoder layer for every scheme class (W2A8KV4, mixed data
types, N:M sparse, dense INT8) on sim-small and the wider sim-wide build, and the shipped real
model for a prompt and several decode tokens; the logits of every step equal the integer
reference bit for bit, and the tokens the emulator's."""

import pytest
import torch

from compiler import package
from compiler.compile import compile_model
from host.device import EmulatorDevice
from host.generate import generate
from host.rtl_device import RtlDevice
from llmacc.config import preset
from quant import intref, tokenizer
from tests.helpers.models import (
    TOKENIZER,
    check_run_on_rtl,
    random_sequences,
    tiny_int_model,
)
from tests.helpers.runtime import recorded

SCHEMES = ["w2a8kv4", "w3-mixed-a8kv4", "w4a8+2:4", "w8a8"]
CONFIGS = ["sim-small", "sim-wide"]


def _case(config: str, scheme: str):
    slow = not (config == "sim-small" and scheme == "w2a8kv4")  # the make-test subset
    return pytest.param(config, scheme, id=f"{config}-{scheme}",
                        marks=[pytest.mark.slow] if slow else [])


@pytest.mark.verilator
@pytest.mark.parametrize(("config", "scheme"), [_case(c, s) for c in CONFIGS for s in SCHEMES])
def test_decoder_layer_on_rtl(config, scheme, verilator_env, seed, record_property):
    """A one-layer model: prefill of 3 tokens (the 4-row program below the bucket of 8),
    then 5 decode steps, on the RTL top."""
    im = tiny_int_model(seed, scheme, layers=1)
    cm = compile_model(im, preset(config), prefill_bucket=8, decode_bucket=8, max_len=16)
    assert cm.host.prefill_rows(3) == 4
    tokens = random_sequences(seed + 1, 1, 8, im.config.vocab_size)[0]
    cycles = check_run_on_rtl(im, cm, tokens, 3, f"{config} {scheme} (seed {seed})", seed)
    record_property("rtl_cycles", cycles)


@pytest.mark.slow
@pytest.mark.verilator
def test_shipped_model_on_rtl(shipped, sim_small_top, seed, record_property):
    """The shipped stories260K (w2a8kv4, Lambda attention) from its compiled package: a real
    prompt and four decode tokens on the RTL equal the emulator's tokens and the integer
    reference's logits at every step."""
    cm, _ = package.load(shipped)
    tok = tokenizer.load(TOKENIZER, cm.model.config.vocab_size)
    prompt = tok.encode("Once upon a time, a little dog")
    device = RtlDevice(cm, seed=seed)
    seen = recorded(device)
    try:
        out = generate(device, tok, prompt, 4, stop_tokens=frozenset())
    finally:
        device.close()
    emulated = generate(EmulatorDevice(cm), tok, prompt, 4, stop_tokens=frozenset())
    assert out.tokens == emulated.tokens, f"seed {seed}"
    im = cm.model
    cache = intref.IntKVCache.empty(im.config, len(prompt) + 4)
    steps = [prompt] + [[t] for t in out.tokens[:-1]]
    assert len(seen) == len(steps) == 4
    for index, (tokens, got) in enumerate(zip(steps, seen, strict=True)):
        ref = im.forward(torch.tensor(tokens), cache)
        assert torch.equal(got.reshape(ref.shape), ref), f"step {index} differs (seed {seed})"
    record_property("rtl_cycles", out.prefill_cycles + out.decode_cycles)
