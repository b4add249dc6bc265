"""``llmacc compile``: checkpoint (or ``llmacc quantize`` output) -> model package.

Prints the programs, the instruction storage with buckets against one program per length, and
the compile time; the last line is ``package=<dir> programs=<n> bytes=<b>
per_length_bytes=<p> ratio=<r> compile_s=<t>``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from compiler import package
from compiler.compile import PREFILL_MIN, compile_model
from compiler.memory_plan import CompileError
from llmacc import config
from quant import commands as quantize_command
from quant import tokenizer


def _keep_quantized(im, args: argparse.Namespace) -> Path:
    """Save the integer model of a compile that failed after quantizing, beside the
    package it would have made, so that nothing is lost."""
    path = Path(f"{Path(args.output).resolve()}.quantized.pt")
    quantize_command.save(im, path, args.scheme, str(args.model))
    return path


def run(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    package.check_output(args.output, args.force)  # before minutes of quantization
    args.tokenizer = tokenizer.path_for(args.tokenizer, args.model)
    start = time.perf_counter()
    if args.quantized:
        if args.model or args.scheme:
            raise ValueError("give either --quantized or --model/--scheme, not both")
        im, scheme = quantize_command.load(args.quantized)
        source = args.quantized
    else:
        im, scheme, source = quantize_command.quantize(args), args.scheme, str(args.model)
    quant_s = time.perf_counter() - start
    shortest = PREFILL_MIN if args.prefill_min is None else args.prefill_min
    try:
        cm = compile_model(im, cfg, prefill_bucket=args.prefill_bucket,
                           decode_bucket=args.decode_bucket, max_len=args.max_len,
                           prefill_min=shortest,
                           stream_weights=args.stream_weights)
    except CompileError as exc:
        if args.quantized:
            raise
        kept = _keep_quantized(im, args)
        raise CompileError(f"{exc}. The quantization ({quant_s:.0f} s) is kept: compile "
                           f"--quantized {kept}") from None
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
