"""``llmacc verify``: a back end against the integer reference, logit by logit.

Runs the prompt's prefill and ``--tokens`` greedy decode steps on the back end and on the
package's integer reference, compares every wide logit of every step and prints
``bit-exact: <matching steps>/<steps>`` as its last line. The first differing element (step,
row, vocabulary index, both values) is printed when it is found; any mismatch exits 1.
"""

from __future__ import annotations

import argparse
import time

import torch

from compiler import package
from host.device import Device, EmulatorDevice
from quant import intref, tokenizer

BACKENDS = ("emulator", "rtl")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--package", required=True, help="package directory from llmacc compile")
    p.add_argument("--backend", choices=BACKENDS, default="emulator")
    p.add_argument("--prompt", required=True, help="prompt text (BOS is prepended)")
    p.add_argument("--tokens", type=int, default=16, help="decode steps after the prefill")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer (default: the one stored in the package)")


def make_device(backend: str, cm) -> Device:
    if backend == "emulator":
        return EmulatorDevice(cm)
    if backend == "rtl":
        from host.rtl_device import RtlDevice

        return RtlDevice(cm)
    raise ValueError(f"unknown back end {backend!r}; choose from {', '.join(BACKENDS)}")


def first_difference(got: torch.Tensor, ref: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in (got != ref).nonzero()[0])


def run(args: argparse.Namespace) -> int:
    cm, _ = package.load(args.package)
    tok_path = args.tokenizer or package.tokenizer_path(args.package)
    if tok_path is None:
        raise ValueError(f"{args.package} holds no tokenizer; pass --tokenizer")
    tok = tokenizer.load(tok_path, cm.model.config.vocab_size)
    prompt = tok.encode(args.prompt)
    if args.tokens < 0:
        raise ValueError("--tokens must be >= 0")
    total = len(prompt) + args.tokens
    if total > cm.host.max_len:
        raise ValueError(f"{len(prompt)} prompt tokens + {args.tokens} steps exceed the "
                         f"package's context of {cm.host.max_len}")
    device = make_device(args.backend, cm)
    try:
        return _compare(args, cm, tok, prompt, device)
    finally:
        device.close()


def _compare(args: argparse.Namespace, cm, tok, prompt: list[int], device: Device) -> int:
    total = len(prompt) + args.tokens
    cache = intref.IntKVCache.empty(cm.model.config, total)
    steps = matches = 0
    reported = False
    tokens = list(prompt)
    dev_s = 0.0
    for step in range(1 + args.tokens):
        start = time.perf_counter()
        if step == 0:
            got = device.prefill(prompt)
        else:
            got = device.decode(tokens[-1], len(tokens) - 1).unsqueeze(0)
        dev_s += time.perf_counter() - start
        ref = cm.model.forward(torch.tensor(prompt if step == 0 else tokens[-1:]), cache)
        steps += 1
        if torch.equal(got, ref):
            matches += 1
        elif not reported:
            pos = first_difference(got, ref)
            row = pos[0] if step == 0 else len(tokens) - 1
            print(f"first difference: step {step} ({'prefill' if step == 0 else 'decode'}), "
                  f"position {row}, logit {pos[1]}: {args.backend} {int(got[pos])} != "
                  f"reference {int(ref[pos])}")
            reported = True
        tokens.append(int(torch.argmax(ref[-1])))
    cycles = sum(s.cycles for s in device.stats)
    print(f"{args.backend}: {steps} steps ({len(prompt)} prompt tokens) in {dev_s:.2f} s, "
          f"{cycles} modelled cycles; text: {tok.decode(tokens[len(prompt):])!r}")
    print(f"bit-exact: {matches}/{steps}")
    return 0 if matches == steps else 1
