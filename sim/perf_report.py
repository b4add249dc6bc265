"""``llmacc perf``: the performance table of :mod:`sim.perf_model` for one configuration and
model, with the published anchors, and two SVG plots (tokens/s against context length; the
roofline with each operator of a decoder layer placed on it).

The last line is ``decode_tok_s=<v> roofline_fraction=<v>`` for ``--scheme`` at
``--context`` (the design estimate).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from llmacc import config as C
from sim import perf_model as P
from sim.cycle_model import READ_LATENCY

CONTEXTS = (128, 256, 512, 1024, 2048)
PREFILLS = (128, 256, 512, 1024)
SCHEMES = ("w2a8kv4", "w2a8kv4+4:16", "w2a8kv4+lambda4:252", "w3-mixed-a8kv4", "w4a8",
           "w4a8+2:4", "w8a8")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="u280", help="accelerator preset or JSON file")
    p.add_argument("--model", default="llama2-7b",
                   help="model shapes of the estimate: one of " + ", ".join(P.MODELS)
                        + ", or a Hugging Face config.json (or its directory) or a GGUF file, "
                        "read without loading weights")
    p.add_argument("--scheme", default="w2a8kv4", help="the case of the last line")
    p.add_argument("--context", type=int, default=512, help="context length of the last line")
    p.add_argument("--out", default="build/perf", help="directory for the plots")


def run(args: argparse.Namespace) -> int:
    cfg = C.load(args.config)
    shape = P.model_shape(args.model)
    if not 1 <= args.context <= cfg.max_seq_len:
        raise ValueError(f"--context {args.context}: {cfg.name} supports 1..{cfg.max_seq_len}")
    schemes = list(dict.fromkeys([args.scheme, *SCHEMES]))
    print(f"{shape.name} on {cfg.name}: {cfg.clock_mhz:g} MHz, {cfg.mem_channels} channels x "
          f"{cfg.channel_gbps:g} GB/s = {cfg.mem_bandwidth_gbps:g} GB/s, "
          f"{cfg.axi_data_bits}-bit AXI ports, read latency {READ_LATENCY} cycles per row, "
          f"engine {cfg.mv_rows}x{cfg.chain_len} DSPs")
    print("\ndecode tokens/s (design estimate / HBM roofline / fraction; RTL as built, from the "
          "calibrated cycle model)")
    print("| scheme | " + " | ".join(f"ctx {c}" for c in CONTEXTS) + " | GB/token @512 | "
          "RTL tok/s @512 |")
    print("|---" * (len(CONTEXTS) + 3) + "|")
    curves = {}
    for s in schemes:
        cells, curve = [], []
        for c in CONTEXTS:
            e = P.decode(cfg, shape, s, min(c, cfg.max_seq_len))
            curve.append((c, e.tok_s, e.roofline_tok_s))
            cells.append(f"{e.tok_s:.1f} / {e.roofline_tok_s:.1f} / {e.roofline_fraction:.2f}")
        curves[s] = curve
        at512 = P.decode(cfg, shape, s, min(512, cfg.max_seq_len))
        print(f"| {s} | " + " | ".join(cells) + f" | {at512.bytes / 1e9:.2f} | "
              f"{at512.rtl_tok_s:.3g} |")
    print(f"\npublished anchors (U280, LLaMA2-7B): FlightLLM {P.FLIGHTLLM_TOK_S:g} tok/s; "
          f"AccLLM {P.ACCLLM_SPEEDUP:g}x FlightLLM = "
          f"{P.FLIGHTLLM_TOK_S * P.ACCLLM_SPEEDUP:.0f} tok/s")
    print("\nprefill latency in ms (design estimate)")
    print("| scheme | " + " | ".join(f"{t} tokens" for t in PREFILLS) + " |")
    print("|---" * (len(PREFILLS) + 1) + "|")
    for s in schemes:
        cells = [f"{P.prefill(cfg, shape, s, t).seconds * 1e3:.1f}" for t in PREFILLS
                 if t <= cfg.max_seq_len]
        print(f"| {s} | " + " | ".join(cells) + " |")
    e = P.decode(cfg, shape, args.scheme, args.context)
    print(f"\n{args.scheme} at context {args.context}, per operator (all layers):")
    for op in e.operators:
        print(f"  {op.name:10s} {op.bytes / 1e6:9.1f} MB  {op.cycles:>10d} cycles  "
              f"{op.bound}-bound")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode_tok_s.svg").write_text(_lines_svg(curves, cfg.name, shape.name))
    (out / "roofline.svg").write_text(_roofline_svg(cfg, e))
    print(f"plots: {out / 'decode_tok_s.svg'}, {out / 'roofline.svg'}")
    print(f"decode_tok_s={e.tok_s:.2f} roofline_fraction={e.roofline_fraction:.3f}")
    return 0


# -- SVG -----------------------------------------------------------------------------------
W, H, M = 640, 400, 60
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")


def _svg(body: list[str], title: str, xlabel: str, ylabel: str) -> str:
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
        f'font-family="sans-serif" font-size="11">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="13">{title}</text>',
        f'<text x="{W / 2}" y="{H - 10}" text-anchor="middle">{xlabel}</text>',
        f'<text x="15" y="{H / 2}" transform="rotate(-90 15 {H / 2})" '
        f'text-anchor="middle">{ylabel}</text>',
        f'<rect x="{M}" y="{M}" width="{W - 2 * M}" height="{H - 2 * M}" fill="none" '
        'stroke="black"/>', *body, "</svg>"])


def _lines_svg(curves: dict, cfg_name: str, model: str) -> str:
    xs = [c for c, _, _ in next(iter(curves.values()))]
    top = max(max(r for _, t, r in v) for v in curves.values()) * 1.1
    top = max(top, P.FLIGHTLLM_TOK_S * P.ACCLLM_SPEEDUP * 1.1)

    def px(i, y):
        return (M + i * (W - 2 * M) / (len(xs) - 1), H - M - y / top * (H - 2 * M))

    body = []
    for i, x in enumerate(xs):
        cx, _ = px(i, 0)
        body.append(f'<text x="{cx}" y="{H - M + 15}" text-anchor="middle">{x}</text>')
    for anchor, name in ((P.FLIGHTLLM_TOK_S, "FlightLLM"),
                         (P.FLIGHTLLM_TOK_S * P.ACCLLM_SPEEDUP, "AccLLM")):
        _, y = px(0, anchor)
        body.append(f'<line x1="{M}" x2="{W - M}" y1="{y}" y2="{y}" stroke="grey" '
                    f'stroke-dasharray="4"/><text x="{M + 4}" y="{y - 3}">{name} {anchor:.0f}'
                    '</text>')
    for n, (name, curve) in enumerate(curves.items()):
        colour = COLOURS[n % len(COLOURS)]
        points = " ".join("{:.1f},{:.1f}".format(*px(i, t)) for i, (_, t, _) in
                          enumerate(curve))
        body.append(f'<polyline points="{points}" fill="none" stroke="{colour}" '
                    'stroke-width="2"/>')
        body.append(f'<text x="{W - M - 150}" y="{M + 15 + 13 * n}" fill="{colour}">{name}'
                    '</text>')
    return _svg(body, f"{model} decode on {cfg_name} (design estimate)", "context length",
                "tokens/s")


def _roofline_svg(cfg: C.AccelConfig, e: P.Estimate) -> str:
    """log-log: MACs per byte against MACs/s; the bandwidth slope and the engine's peak."""
    peak = cfg.peak_macs_per_cycle * e.clock_hz
    bw = e.bandwidth
    lo_x, hi_x = 0.01, 1000.0
    lo_y, hi_y = peak / 1e5, peak * 2

    def px(x, y):
        fx = (math.log10(x) - math.log10(lo_x)) / (math.log10(hi_x) - math.log10(lo_x))
        fy = (math.log10(y) - math.log10(lo_y)) / (math.log10(hi_y) - math.log10(lo_y))
        return M + fx * (W - 2 * M), H - M - fy * (H - 2 * M)

    ridge = peak / bw
    x0, y0 = px(lo_x, max(lo_y, lo_x * bw))
    x1, y1 = px(ridge, peak)
    x2, _ = px(hi_x, peak)
    body = [f'<polyline points="{x0:.1f},{y0:.1f} {x1:.1f},{y1:.1f} {x2:.1f},{y1:.1f}" '
            'fill="none" stroke="black" stroke-width="2"/>',
            f'<text x="{x1 + 5:.1f}" y="{y1 - 5:.1f}">peak {peak / 1e12:.2f} TMAC/s, '
            f'{bw / 1e9:.0f} GB/s</text>']
    for n, op in enumerate(e.operators):
        if not op.bytes or not op.macs:
            continue
        x = op.macs / op.bytes
        y = op.macs / (op.cycles / e.clock_hz)
        cx, cy = px(min(max(x, lo_x), hi_x), min(max(y, lo_y), hi_y))
        colour = COLOURS[n % len(COLOURS)]
        body.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{colour}"/>'
                    f'<text x="{cx + 6:.1f}" y="{cy + 4 + 10 * (n % 3 - 1):.1f}" '
                    f'fill="{colour}">{op.name}</text>')
    return _svg(body, f"roofline, {cfg.name}: the operators of one decode step",
                "operational intensity (MACs / byte)", "MACs / s (log)")
