"""Text generation on a device: prefill, decode with the device's INT4/INT8 KV cache, sampling.

The device returns wide integer logits; :class:`Sampler` turns them into the next token. Greedy
decoding (temperature 0) takes the argmax of the integers themselves, so it matches
``IntModel.generate`` exactly. Otherwise the logits are scaled to floats (the package's logits
exponent), divided by the temperature, cut to the top-k tokens and to the smallest set whose
probability reaches top-p, and one token is drawn with a seeded ``numpy`` generator: the same
seed, prompt and package give the same text on every back end.

Bucket selection and length patching happen in :class:`host.device.Device`: each step runs the
program of its length bucket with POS and SEQ_LEN set for the step.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from host.device import Device
from quant.tokenizer import Tokenizer


@dataclass(frozen=True)
class Sampler:
    """How the next token is chosen from one row of wide logits."""

    temperature: float = 0.0  #: 0 is greedy
    top_k: int = 0  #: 0 keeps every token
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top-k must be >= 0, not {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top-p must lie in (0, 1], not {self.top_p}")

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def choose(self, wide: torch.Tensor, scale_exp: int, rng: np.random.Generator) -> int:
        """The next token from ``wide`` (integer logits with ``scale_exp`` fraction bits)."""
        if self.temperature == 0:
            return int(torch.argmax(wide))
        logits = wide.to(torch.float64).numpy() * 2.0 ** -scale_exp / self.temperature
        order = np.argsort(-logits, kind="stable")
        if self.top_k:
            order = order[:self.top_k]
        probs = np.exp(logits[order] - logits[order[0]])
        probs /= probs.sum()
        if self.top_p < 1:
            keep = int(np.searchsorted(np.cumsum(probs), self.top_p)) + 1
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        pick = int(np.searchsorted(np.cumsum(probs), rng.random(), side="right"))
        return int(order[min(pick, len(order) - 1)])


@dataclass
class Generation:
    """The result of :func:`generate`."""

    prompt: list[int]
    tokens: list[int] = field(default_factory=list)  #: generated, the stop token excluded
    text: str = ""
    stop: str = "length"  #: "token", "text", "length" (max tokens) or "context"
    prefill_s: float = 0.0
    decode_s: float = 0.0  #: wall time of the decode steps on this machine
    prefill_cycles: int = 0  #: device cycles (modelled by the emulator, counted by the RTL)
    decode_cycles: int = 0
    decode_steps: int = 0  #: decode programs run

    def tokens_per_s(self) -> float:
        """Decode steps per second of wall time on this machine."""
        return self.decode_steps / self.decode_s if self.decode_s else 0.0

    def device_tokens_per_s(self, clock_mhz: float) -> float:
        """Decode steps per second at ``clock_mhz`` from the device's cycle counts."""
        return self.decode_steps * clock_mhz * 1e6 / self.decode_cycles \
            if self.decode_cycles else 0.0


class _TextStream:
    """Pieces to text, one UTF-8 decoder across tokens (a character may span byte pieces)."""

    def __init__(self, tok: Tokenizer, prev: int):
        self.tok, self.prev = tok, prev
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        piece = self.tok.decode_piece(self.prev, token)
        self.prev = token
        return self.decoder.decode(piece)


def generate(device: Device, tok: Tokenizer, prompt: list[int], max_tokens: int, *,
             sampler: Sampler = Sampler(), stop_tokens: frozenset[int] | None = None,
             stop_text: tuple[str, ...] = (), on_text: Callable[[str], None] | None = None
             ) -> Generation:
    """Generate up to ``max_tokens`` tokens after ``prompt`` on ``device``.

    Stops at a token in ``stop_tokens`` (default: BOS and EOS, which end a story in llama2.c
    models), when the text contains one of ``stop_text``, after ``max_tokens`` tokens, or at
    the package's context length. ``on_text`` receives the text as it is generated.
    """
    host = device.host
    if not prompt:
        raise ValueError("the prompt is empty (it needs at least the BOS token)")
    if len(prompt) > host.max_len:
        raise ValueError(f"the prompt has {len(prompt)} tokens; the package's context is "
                         f"{host.max_len}")
    if max_tokens < 0:
        raise ValueError(f"max tokens must be >= 0, not {max_tokens}")
    stops = frozenset((tok.bos, tok.eos)) if stop_tokens is None else stop_tokens
    exp = device.compiled.model.F["logits"]
    rng = sampler.rng()
    out = Generation(list(prompt))
    stream = _TextStream(tok, prompt[-1])
    start = time.perf_counter()
    logits = device.prefill(prompt)[-1]
    out.prefill_s = time.perf_counter() - start
    out.prefill_cycles = device.stats[-1].cycles
    if max_tokens == 0:
        return out
    decode_start = time.perf_counter()
    while True:
        token = sampler.choose(logits, exp, rng)
        if token in stops:
            out.stop = "token"
            break
        out.tokens.append(token)
        piece = stream.push(token)
        out.text += piece
        if on_text and piece:
            on_text(piece)
        if any(s in out.text for s in stop_text):
            out.stop = "text"
            break
        if len(out.tokens) == max_tokens:
            break
        pos = len(prompt) + len(out.tokens) - 1
        if pos + 1 > host.max_len:
            out.stop = "context"
            break
        logits = device.decode(token, pos)
        out.decode_steps += 1
        out.decode_cycles += device.stats[-1].cycles
    out.decode_s = time.perf_counter() - decode_start
    return out
