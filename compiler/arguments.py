"""The options of ``llmacc compile``, in plain Python (the command line loads no torch to build
them; :mod:`compiler.commands` runs the command)."""

from __future__ import annotations

import argparse

from quant.arguments import add_source_arguments


def add_compile_arguments(p: argparse.ArgumentParser) -> None:
    add_source_arguments(p)
    p.add_argument("--quantized", default=None, metavar="FILE",
                   help="a quantized model from llmacc quantize (instead of --model/--scheme)")
    p.add_argument("--config", required=True, help="accelerator preset or JSON file")
    p.add_argument("-o", "--output", required=True, metavar="PACKAGE", help="package directory")
    p.add_argument("--force", action="store_true",
                   help="replace an existing package at --output")
    p.add_argument("--prefill-bucket", type=int, default=None,
                   help="prefill rows round up to a multiple of this (default: the config's)")
    p.add_argument("--prefill-min", type=int, default=None,
                   help="a prompt shorter than one prefill bucket runs the power-of-two "
                        "program that holds it, from this many rows (default: "
                        "compiler.compile.PREFILL_MIN, one row; the prefill bucket or more: "
                        "no short programs)")
    p.add_argument("--decode-bucket", type=int, default=None,
                   help="decode keys round up to a multiple of this (default: the config's)")
    p.add_argument("--max-len", type=int, default=None,
                   help="longest context (default: the smaller of the config's and the model's)")
    p.add_argument("--stream-weights", action=argparse.BooleanOptionalAction, default=True,
                   help="weights as beat-major streams in every channel, read by MATSTREAM "
                        "(the channels' weight streamers feed the matrix engine; the "
                        "default); --no-stream-weights loads them into WGT and META for "
                        "MATVEC/MATMAT")
