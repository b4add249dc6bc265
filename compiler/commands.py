"""``llmacc compile``: checkpoint (or ``llmacc quantize`` output) -> model package.

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
from quant import commands as quantize_command


def add_arguments(p: argparse.ArgumentParser) -> None:
    quantize_command.add_source_arguments(p)
    p.add_argument("--quantized", default=None, metavar="FILE",
                   help="a quantized model from llmacc quantize (instead of --model/--scheme)")
    p.add_argument("--config", required=True, help="accelerator preset or JSON file")
    p.add_argument("-o", "--output", required=True, metavar="PACKAGE", help="package directory")
    p.add_argument("--force", action="store_true",
                   help="replace an existing package at --output")
    p.add_argument("--prefill-bucket", type=int, default=None,
                   help="prefill rows round up to a multiple of this (default: the config's)")
    p.add_argument("--decode-bucket", type=int, default=None,
                   help="decode keys round up to a multiple of this (default: the config's)")
    p.add_argument("--max-len", type=int, default=None,
                   help="longest context (default: the smaller of the config's and the model's)")


def run(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    package.check_output(args.output, args.force)  # before minutes of quantization
    start = time.perf_counter()
    if args.quantized:
        if args.model or args.scheme:
            raise ValueError("give either --quantized or --model/--scheme, not both")
        im, scheme = quantize_command.load(args.quantized)
        source = args.quantized
    else:
        im, scheme, source = quantize_command.quantize(args), args.scheme, str(args.model)
    quant_s = time.perf_counter() - start
    cm = compile_model(im, cfg, prefill_bucket=args.prefill_bucket,
                       decode_bucket=args.decode_bucket, max_len=args.max_len)
    out = package.save(cm, args.output, scheme, args.tokenizer, source, force=args.force)
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
