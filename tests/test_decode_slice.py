"""A LLaMA2-7B decoder layer's decode step on a slice of the u280 (issue 24, item 5).

The slice is the u280 with two of its 32 memory channels and their six lanes of 64 DSPs
(:func:`helpers.models.channel_slice`): a channel's datapath as on the card (512-bit ports,
pre-skewed weight streams, three lanes per channel), the attention unit, the SFU and the
buffers whole. The model is one decoder layer of LLaMA2-7B's shapes (dim 4096, 32 heads of
128, FFN 11008) with random weights, W2 in groups of 128 rounded to nearest (the clipping
search and GPTQ change no shape and take a quarter of an hour here), its vocabulary cut to
512 entries. The emulator runs the prompt (the keys before the step: context 512), the
Verilated top starts from the emulator's memories, whose reads answer after the HBM model's
mean latency and stall on its share of refresh cycles (``sim.cycle_model.HBM_LATENCY``,
``HBM_EFFICIENCY``, the figures the cycle model prices the weight streams with), and both
run one decode step: every
byte of external memory equal afterwards (logits, the KV cache's new row, every
intermediate the program stores), the logits equal to the integer reference's, and the
step's cycles on the RTL within 2% of the cycle model's. With Lambda attention (sink 4,
window 252) ATTN masks the keys outside the sink and the window; the program still loads
and runs them all.
"""

import dataclasses
import functools

import numpy as np
import pytest
import torch

from compiler.compile import compile_model
from host.device import EmulatorDevice
from llmacc.config import preset
from quant import intref, schemes
from quant.quantize import QuantizedModel, quantize
from sim.cycle_model import HBM_EFFICIENCY, HBM_LATENCY
from sim.model_shapes import MODELS
from tests.helpers.models import channel_slice, random_sequences, tiny_checkpoint

CONTEXT = 512  #: keys the decode step attends to (its position is CONTEXT - 1)
VOCAB = 512
TOLERANCE = 0.02  #: the step's cycles, RTL against the cycle model
SCHEMES = ("w2a8kv4+g128", "w2a8kv4+lambda4:252+g128")


def rounded(scheme: str) -> schemes.Scheme:
    """``scheme`` rounded to nearest: no GPTQ, no clipping search, no fine-tuning."""
    return dataclasses.replace(schemes.parse(scheme, finetune_steps=0), gptq=False, clip=False)


@functools.lru_cache(maxsize=1)
def llama2_7b_layer(seed: int) -> QuantizedModel:
    """One random decoder layer of LLaMA2-7B's shapes, quantized with the first of
    :data:`SCHEMES` (the others differ in attention only: they share its weights)."""
    shape = MODELS["llama2-7b"]
    ckpt = tiny_checkpoint(seed, dim=shape.dim, hidden=shape.hidden, layers=1,
                           heads=shape.heads, kv_heads=shape.kv_heads, vocab=VOCAB,
                           seq_len=CONTEXT)
    return quantize(ckpt, rounded(SCHEMES[0]), random_sequences(seed, 2, 16, VOCAB))


def copy_memories(source, target) -> None:
    """Every channel's external memory from device ``source`` into ``target``."""
    for chan, size in enumerate(source.host.channel_bytes):
        target.write(chan, 0, source.read(chan, 0, size))


def memories_differ(a, b) -> list[str]:
    """The channels whose external memories differ, with the first differing byte."""
    found = []
    for chan, size in enumerate(a.host.channel_bytes):
        x, y = a.read(chan, 0, size), b.read(chan, 0, size)
        if not np.array_equal(x, y):
            found.append(f"channel {chan} from byte {int(np.flatnonzero(x != y)[0]):#x}")
    return found


@pytest.mark.slow
@pytest.mark.verilator
@pytest.mark.parametrize("scheme", SCHEMES)
def test_llama2_7b_layer_decode_on_u280_slice(scheme, verilator_env, seed, record_property):
    from host.rtl_device import RtlDevice

    where = f"LLaMA2-7B layer, {scheme}, u280 slice (seed {seed})"
    im = intref.build(dataclasses.replace(llama2_7b_layer(seed), scheme=rounded(scheme)))
    cfg = channel_slice(preset("u280"), 2)
    cm = compile_model(im, cfg, prefill_bucket=CONTEXT, decode_bucket=CONTEXT,
                       max_len=CONTEXT, lengths={"prefill": [CONTEXT], "decode": [CONTEXT]})
    tokens = random_sequences(seed + 1, 1, CONTEXT, VOCAB)[0]
    emu = EmulatorDevice(cm)
    emu.prefill(tokens[:-1])
    rtl = RtlDevice(cm, seed=seed, latency=sum(HBM_LATENCY) // 2, stall=1 - HBM_EFFICIENCY)
    try:
        copy_memories(emu, rtl)
        want = emu.decode(tokens[-1], CONTEXT - 1)
        got = rtl.decode(tokens[-1], CONTEXT - 1)
        assert torch.equal(got, want), f"{where}: the RTL's logits differ from the emulator's"
        differ = memories_differ(emu, rtl)
        assert not differ, f"{where}: external memory differs: {', '.join(differ)}"
        modelled, rtl_stats = emu.stats[-1], rtl.stats[-1]
    finally:
        rtl.close()
    cache = intref.IntKVCache.empty(im.config, CONTEXT)
    im.forward(torch.tensor(tokens[:-1]), cache)
    ref = im.forward(torch.tensor(tokens[-1:]), cache)[0]
    assert torch.equal(want, ref), f"{where}: the emulator's logits differ from the reference"
    record_property("rtl_cycles", rtl_stats.cycles)
    record_property("model_cycles", modelled.cycles)
    print(f"{where}: RTL {rtl_stats.cycles} cycles, model {modelled.cycles}; busy RTL "
          f"{rtl_stats.busy}, model {modelled.busy}")
    error = modelled.cycles / rtl_stats.cycles - 1
    assert abs(error) <= TOLERANCE, (f"{where}: {modelled.cycles} cycles modelled, "
                                     f"{rtl_stats.cycles} on the RTL ({error:+.2%})")
