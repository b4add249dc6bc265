"""``llmacc compile``: checkpoint -> quantized integer model -> model package.

Prints the programs, the instruction storage with buckets against one program per length, and
the compile time; the last line is ``package=<dir> programs=<n> bytes=<b>
per_length_bytes=<p> ratio=<r> compile_s=<t>``.
"""

from __future__ import annotations

import argparse
import time

from compiler import package
from compiler.compile import compile_model
from llmacc import config
from quant import checkpoint, intref, schemes, tokenizer
from quant.eval import (
    CALIB_STORIES,
    calibration_sequences,
    prepare_sequences,
    sampled_sequences,
)

SAMPLED_CALIB = 64  #: self-generated calibration sequences when no text is given


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="llama2.c .bin or Hugging Face directory")
    p.add_argument("--tokenizer", required=True, help="llama2.c tokenizer .bin or .model")
    p.add_argument("--scheme", required=True, help="quantization scheme (see llmacc eval)")
    p.add_argument("--config", required=True, help="accelerator preset or JSON file")
    p.add_argument("-o", "--output", required=True, metavar="PACKAGE", help="package directory")
    p.add_argument("--calib-text", default=None,
                   help="calibration text (its last stories); default: text sampled from the "
                        "float model itself")
    p.add_argument("--calib-stories", type=int, default=None)
    p.add_argument("--group", type=int, default=None, help="weight group size override")
    p.add_argument("--finetune-steps", type=int, default=None)
    p.add_argument("--prefill-bucket", type=int, default=None,
                   help="prefill rows round up to a multiple of this (default: the config's)")
    p.add_argument("--decode-bucket", type=int, default=None,
                   help="decode keys round up to a multiple of this (default: the config's)")
    p.add_argument("--max-len", type=int, default=None,
                   help="longest context (default: the smaller of the config's and the model's)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampled calibration text")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    cfg = config.load(args.config)
    ckpt = checkpoint.load(args.model)
    tok = tokenizer.load(args.tokenizer, ckpt.config.vocab_size)
    scheme = schemes.parse(args.scheme, args.group, args.finetune_steps)
    if not scheme.quantized:
        raise ValueError("the accelerator runs quantized schemes; 'float' cannot be compiled")
    start = time.perf_counter()
    if args.calib_text:
        calib = calibration_sequences(tok, args.calib_text, args.calib_stories or CALIB_STORIES,
                                      ckpt.config.seq_len)
    else:
        calib = sampled_sequences(ckpt, args.calib_stories or SAMPLED_CALIB, 256, args.seed)
    qm = prepare_sequences(ckpt, scheme, calib, progress)
    im = intref.build(qm)
    quant_s = time.perf_counter() - start
    cm = compile_model(im, cfg, prefill_bucket=args.prefill_bucket,
                       decode_bucket=args.decode_bucket, max_len=args.max_len)
    out = package.save(cm, args.output, args.scheme, args.tokenizer, str(args.model))
    st = cm.storage()
    for kind in ("prefill", "decode"):
        lens = sorted(n for k, n in cm.programs if k == kind)
        print(f"{kind}: {len(lens)} programs for lengths {lens[0]}..{lens[-1]}")
    print(f"quantization {quant_s:.1f} s, compilation {cm.seconds:.2f} s; instruction storage "
          f"{st['bucket_bytes']} B with buckets, {st['per_length_bytes']} B with one program "
          f"per length ({st['ratio']:.0f}x)")
    print(f"package={out} programs={len(cm.programs)} bytes={st['bucket_bytes']} "
          f"per_length_bytes={st['per_length_bytes']} ratio={st['ratio']:.1f} "
          f"compile_s={cm.seconds:.2f}")
    return 0
