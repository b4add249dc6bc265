"""Weight quantizer speed (``make bench``): seconds per matrix of a 7B layer's shape.

A 4096 x 4096 matrix (LLaMA2-7B's attention projections) with LLaMA-like statistics (small
weights, a few loud input channels) and a Hessian from correlated random inputs, quantized by
:func:`quant.weight_quant.quantize_matrix` as ``llmacc quantize`` does: every scheme's type and
clipping search, round-to-nearest and with GPTQ. The last column scales the time to the
linear layers of LLaMA2-7B (6.48e9 weights).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from llmacc import numerics as N
from llmacc.paths import publish_table
from quant.quantize import compute_device
from quant.weight_quant import quantize_matrix

LLAMA2_7B_LINEAR_WEIGHTS = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
#: (label, stored format, data types the search tries, group)
CASES = (("w3 mixed g128", "mixed3", N.MIXED3_TYPES, 128),
         ("w4 mixed g128", "mixed4", N.MIXED4_TYPES, 128),
         ("w2 g32", "w2", (N.WDType.W2,), 32),
         ("int8 g128", "int8", (N.WDType.INT8,), 128))


def synthetic_layer(rows: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight [rows, k] and an input Hessian [k, k] shaped like a LLaMA projection's."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, k, generator=g) * 0.02
    w[:, torch.randperm(k, generator=g)[:k // 64]] *= 6  # outlier input channels
    x = torch.randn(2 * k, k, generator=g, dtype=torch.float64)
    x[:, torch.randperm(k, generator=g)[:k // 128]] *= 10
    return w, x.T @ x


def bench(rows: int, k: int, device: str, cases=CASES) -> str:
    w, hessian = synthetic_layer(rows, k)
    lines = [f"Weight quantizer on a {rows} x {k} matrix, device {device}, "
             f"{torch.get_num_threads()} torch threads.", "",
             "| scheme | search | seconds | weights/s | LLaMA2-7B linears (h) |",
             "|---|---|---|---|---|"]
    for label, fmt, dtypes, group in cases:
        for gptq in (False, True):
            start = time.perf_counter()
            quantize_matrix(w, fmt, dtypes, group, hessian=hessian, gptq=gptq, device=device)
            seconds = time.perf_counter() - start
            rate = w.numel() / seconds
            lines.append(f"| {label} | {'GPTQ' if gptq else 'RTN'} + type/clip | "
                         f"{seconds:.1f} | {rate:,.0f} | "
                         f"{LLAMA2_7B_LINEAR_WEIGHTS / rate / 3600:.2f} |")
            print(lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m quant.bench", description=__doc__)
    p.add_argument("--rows", type=int, default=4096)
    p.add_argument("--k", type=int, default=4096)
    p.add_argument("--device", default="cpu")
    p.add_argument("--table", default=None, metavar="OUT.md")
    args = p.parse_args(argv)
    try:
        device = compute_device(args.device)
    except ValueError as exc:
        p.error(str(exc))
    md = bench(args.rows, args.k, str(device))
    publish_table(md, args.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
