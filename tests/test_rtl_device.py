"""The ``rtl`` back end: a compiled model on the Verilated accelerator top gives exactly the
integer reference's logits (and so the emulator's), and the generation loop the same tokens,
prefill and decode. The configuration is the sim-small preset itself, so the Verilated top is
the one ``test_accelerator.py`` builds (one build per session)."""

import pytest
import torch

from compiler.compile import compile_model
from host.device import EmulatorDevice
from host.generate import Sampler, generate
from host.rtl_device import RtlDevice
from llmacc.config import preset
from quant import intref
from tests.helpers.models import random_sequences, tiny_int_model
from tests.helpers.runtime import recorded, tiny_tokenizer


@pytest.mark.verilator
def test_rtl_backend_generates_like_the_reference(sim_small_top, seed):
    im = tiny_int_model(seed, "w4a8", layers=1)
    cm = compile_model(im, preset("sim-small"), prefill_bucket=8, decode_bucket=8, max_len=16)
    prompt = random_sequences(seed + 1, 1, 3, im.config.vocab_size)[0]
    tok, sampler = tiny_tokenizer(im.config.vocab_size), Sampler(0.7, seed=seed)
    device = RtlDevice(cm, seed=seed)
    try:
        on_rtl = recorded(device)
        out = generate(device, tok, prompt, 2, sampler=sampler, stop_tokens=frozenset())
    finally:
        device.close()
    emulated = generate(EmulatorDevice(cm), tok, prompt, 2, sampler=sampler,
                        stop_tokens=frozenset())
    assert out.tokens == emulated.tokens, f"seed {seed}"
    cache = intref.IntKVCache.empty(im.config, 4)
    steps = [prompt, out.tokens[:1]]  # a prefill and one decode step
    assert len(on_rtl) == len(steps)
    for index, (tokens, got) in enumerate(zip(steps, on_rtl, strict=True)):
        ref = im.forward(torch.tensor(tokens), cache)
        assert torch.equal(got.reshape(ref.shape), ref), f"step {index} differs (seed {seed})"
    for stats in device.stats:  # the top's counters came back
        assert stats.cycles > 0 and stats.instructions > 0
        assert 0 < stats.busy["COMPUTE"] < stats.cycles and stats.busy["SFU"] > 0
    assert out.decode_cycles == device.stats[-1].cycles
