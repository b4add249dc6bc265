"""Helpers of the runtime tests: a tiny tokenizer for tiny models, and a recorder of the
logits a device returns."""

import torch

from quant.tokenizer import Tokenizer


def tiny_tokenizer(vocab: int) -> Tokenizer:
    """A character tokenizer of ``vocab`` pieces (special pieces first)."""
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [
        chr(c) for c in range(ord("A"), ord("Z") + 1)] + list("0123456789 ")
    pieces = ["<unk>", "<s>", "</s>", *chars][:vocab]
    return Tokenizer(pieces, [0.0] * len(pieces))


def recorded(device) -> list[torch.Tensor]:
    """The logits of every step the device runs, in order."""
    seen = []
    for name in ("prefill", "decode"):
        step = getattr(device, name)
        setattr(device, name, lambda *a, step=step: seen.append(step(*a)) or seen[-1])
    return seen
