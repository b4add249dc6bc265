"""``llmacc verify``: a back end against the integer reference, logit by logit.

Runs the prompt's prefill and ``--tokens`` greedy decode steps on the back end and on the
package's integer reference, compares every wide logit of every step and prints
``bit-exact: <matching steps>/<steps>`` as its last line. The first differing element (step,
row, vocabulary index, both values) is printed when it is found; any mismatch exits 1.

``llmacc sim`` does the same on the Verilated RTL with the emulator beside it, and prints each
step's cycles as the RTL counted them and as the cycle model estimates them.
"""

from __future__ import annotations

import argparse
import time

import torch

from compiler import package
from host.device import Device, open_device
from quant import intref, tokenizer


def load_tokenizer(args: argparse.Namespace, cm) -> tokenizer.Tokenizer:
    tok_path = args.tokenizer or package.tokenizer_path(args.package)
    if tok_path is None:
        raise ValueError(f"{args.package} holds no tokenizer; pass --tokenizer")
    return tokenizer.load(tok_path, cm.model.config.vocab_size)


def prompt_tokens(tok, text: str, chat: bool, package: str) -> list[int]:
    """The prompt's ids: ``text`` itself (BOS first where the vocabulary asks for it), or
    with ``chat`` the model's chat template around it as one user turn."""
    if chat:
        template = tok.chat_template
        if template is None:
            raise ValueError(f"--chat: the tokenizer of {package} has no chat template (GGUF "
                             "models carry one; llama2.c vocabularies do not)")
        ids = tok.encode(template.user_prompt(text), bos=False)
    else:
        ids = tok.encode(text)
    if not ids:
        raise ValueError("the prompt is empty and this vocabulary adds no BOS token: give "
                         "--prompt TEXT")
    return ids


def first_difference(got: torch.Tensor, ref: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in (got != ref).nonzero()[0])


def _prompt(args: argparse.Namespace, cm, tok) -> list[int]:
    prompt = prompt_tokens(tok, args.prompt, False, args.package)
    if args.tokens < 0:
        raise ValueError("--tokens must be >= 0")
    if len(prompt) + args.tokens > cm.host.max_len:
        raise ValueError(f"{len(prompt)} prompt tokens + {args.tokens} steps exceed the "
                         f"package's context of {cm.host.max_len}")
    return prompt


def run(args: argparse.Namespace) -> int:
    cm, _ = package.load(args.package)
    tok = load_tokenizer(args, cm)
    prompt = _prompt(args, cm, tok)
    device = open_device(args.backend, cm, xclbin=args.xclbin, card=args.card)
    try:
        return _compare(args.backend, args.tokens, cm, tok, prompt, device)
    finally:
        device.close()


def run_sim(args: argparse.Namespace) -> int:
    """``llmacc sim``: the package on the Verilated RTL, the emulator beside it; every step's
    logits against the integer reference and the RTL's counted cycles against the model's."""
    cm, _ = package.load(args.package)
    tok = load_tokenizer(args, cm)
    prompt = _prompt(args, cm, tok)
    model = open_device("emulator", cm)
    device = open_device("rtl", cm)
    try:
        return _compare("rtl", args.tokens, cm, tok, prompt, device, model)
    finally:
        device.close()


def _compare(backend: str, decode_steps: int, cm, tok, prompt: list[int], device: Device,
             model: Device | None = None) -> int:
    """Prefill and ``decode_steps`` greedy steps on ``device`` (and on ``model``, the
    emulator, whose cycles are printed beside the device's) against the integer reference."""
    cache = intref.IntKVCache.empty(cm.model.config, len(prompt) + decode_steps)
    steps = matches = 0
    reported = False
    tokens = list(prompt)
    dev_s = 0.0
    for step in range(1 + decode_steps):
        args = (prompt,) if step == 0 else (tokens[-1], len(tokens) - 1)
        start = time.perf_counter()
        got = device.prefill(*args) if step == 0 else device.decode(*args).unsqueeze(0)
        dev_s += time.perf_counter() - start
        ref = cm.model.forward(torch.tensor(prompt if step == 0 else tokens[-1:]), cache)
        results = [(backend, got)]
        if model is not None:
            modelled = model.prefill(*args) if step == 0 else model.decode(*args).unsqueeze(0)
            results.append(("emulator", modelled))
            counted, est = device.stats[-1].cycles, model.stats[-1].cycles
            print(f"step {step}: {backend} {counted} cycles, cycle model {est} "
                  f"({est / counted - 1:+.1%})")
        steps += 1
        if all(torch.equal(r, ref) for _, r in results):
            matches += 1
        elif not reported:
            name, bad = next((n, r) for n, r in results if not torch.equal(r, ref))
            pos = first_difference(bad, ref)
            row = pos[0] if step == 0 else len(tokens) - 1
            print(f"first difference: step {step} ({'prefill' if step == 0 else 'decode'}), "
                  f"position {row}, logit {pos[1]}: {name} {int(bad[pos])} != "
                  f"reference {int(ref[pos])}")
            reported = True
        tokens.append(int(torch.argmax(ref[-1])))
    cycles = sum(s.cycles for s in device.stats)
    kind = "counted" if backend != "emulator" else "modelled"
    print(f"{backend}: {steps} steps ({len(prompt)} prompt tokens) in {dev_s:.2f} s, "
          f"{cycles} {kind} cycles; text: {tok.decode(tokens[len(prompt):])!r}")
    print(f"bit-exact: {matches}/{steps}")
    return 0 if matches == steps else 1
