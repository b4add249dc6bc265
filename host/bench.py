"""Compiler and emulator benchmark (``make bench``): a markdown table.

For each accelerator config: compile time of every bucket's program, instruction bytes with
buckets against one program per length, and tokens/s of the emulator (prefill and decode,
every step checked against the integer reference) next to the float torch model and the
integer reference on the same machine. Quantization here is GPTQ without fine-tuning: the
table measures the tool chain's speed, not model quality (see ``llmacc eval`` for that).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from compiler.compile import compile_model
from compiler.memory_plan import CompileError
from host.device import EmulatorDevice
from llmacc import config
from llmacc.paths import publish_table
from quant import checkpoint, intref, schemes, tokenizer
from quant.eval import calibration_sequences, prepare_sequences, read_stories
from quant.model import KVCache, Transformer

#: The table's columns.
COLUMNS = ("config", "programs", "compile s", "instruction MB (buckets)", "MB (one per length)",
           "ratio", "emulator prefill tok/s (x float)", "emulator decode tok/s (x float)",
           "modelled cycles / decode token", "bit-exact")


def _float_tok_s(model: Transformer, prompt: list[int], steps: int) -> tuple[float, float]:
    cache = KVCache(model.config, len(prompt) + steps)
    with torch.no_grad():
        start = time.perf_counter()
        logits = model.forward(torch.tensor(prompt), cache)
        mid = time.perf_counter()
        for _ in range(steps):
            logits = model.forward(torch.tensor([int(torch.argmax(logits[-1]))]), cache)
        end = time.perf_counter()
    return len(prompt) / (mid - start), steps / (end - mid)


def _int_tok_s(im: intref.IntModel, prompt: list[int],
               steps: int) -> tuple[float, float, list[int], list[torch.Tensor]]:
    cache = intref.IntKVCache.empty(im.config, len(prompt) + steps)
    start = time.perf_counter()
    logits = [im.forward(torch.tensor(prompt), cache)]
    mid = time.perf_counter()
    tokens = list(prompt)
    for _ in range(steps):
        tokens.append(int(torch.argmax(logits[-1][-1])))
        logits.append(im.forward(torch.tensor(tokens[-1:]), cache))
    end = time.perf_counter()
    return len(prompt) / (mid - start), steps / (end - mid), tokens, logits


def bench(model: str, tok_path: str | None, text: str, configs: list[str], scheme: str,
          prompt_tokens: int, steps: int) -> str:
    ckpt = checkpoint.load(model)
    tok = tokenizer.load(tok_path or checkpoint.model_path(model), ckpt.config.vocab_size)
    calib = calibration_sequences(tok, text, 64, ckpt.config.seq_len)
    qm = prepare_sequences(ckpt, schemes.parse(scheme, finetune_steps=0), calib)
    im = intref.build(qm)
    prompt = tok.encode(read_stories(text, 1)[0])[:prompt_tokens]
    fp, fd = _float_tok_s(Transformer(ckpt), prompt, steps)
    ip, idec, tokens, ref = _int_tok_s(im, prompt, steps)
    rows, max_len = [], None
    for name in configs:
        cfg = config.load(name)
        try:
            cm = compile_model(im, cfg)
        except CompileError as err:  # a config that cannot hold the model gets a row saying so
            rows.append(f"| {name} | does not fit: {err} |" + " |" * (len(COLUMNS) - 2))
            continue
        max_len = cm.host.max_len
        st = cm.storage()
        dev = EmulatorDevice(cm)
        start = time.perf_counter()
        exact = torch.equal(dev.prefill(prompt), ref[0])
        mid = time.perf_counter()
        for i in range(steps):
            pos = len(prompt) + i
            exact &= torch.equal(dev.decode(tokens[pos], pos), ref[i + 1][0])
        end = time.perf_counter()
        cycles = sum(s.cycles for s in dev.stats[1:]) / steps
        ep, ed = len(prompt) / (mid - start), steps / (end - mid)
        rows.append(
            f"| {name} | {len(cm.programs)} | {cm.seconds:.1f} | {st['bucket_bytes'] / 1e6:.2f} | "
            f"{st['per_length_bytes'] / 1e6:.1f} | {st['ratio']:.0f}x | "
            f"{ep:.1f} ({ep / fp:.4f}x) | {ed:.2f} ({ed / fd:.4f}x) | "
            f"{cycles:,.0f} | {'yes' if exact else 'NO'} |")
    head = [
        f"Model {Path(model).name}, scheme {scheme} (GPTQ, no fine-tuning), "
        f"{len(prompt)}-token prompt + {steps} decode steps, max context "
        f"{max_len if max_len is not None else 'n/a (no config holds it)'}.",
        "",
        f"Float torch model: prefill {fp:.0f} tok/s, decode {fd:.1f} tok/s. "
        f"Integer reference: prefill {ip:.0f} tok/s, decode {idec:.1f} tok/s "
        f"({idec / fd:.4f}x float), {torch.get_num_threads()} torch threads.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    return "\n".join(head + rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m host.bench", description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--tokenizer", default=None,
                   help="the model's tokenizer (default: the one in a GGUF --model)")
    p.add_argument("--text", required=True)
    p.add_argument("--configs", default="sim-small,u280")
    p.add_argument("--scheme", default="w2a8kv4")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--table", default=None, metavar="OUT.md")
    args = p.parse_args(argv)
    md = bench(args.model, args.tokenizer, args.text, args.configs.split(","), args.scheme,
               args.prompt_tokens, args.steps)
    publish_table(md, args.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
