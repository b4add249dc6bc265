"""``llmacc perf``: the performance table of :mod:`sim.perf_model` for one configuration and
model, with the published anchors, and two plots made with matplotlib, each as PNG and SVG
(tokens/s against context length: design estimate, roofline and RTL as built; the roofline
with each operator of a decode step placed on it).

The last line is ``decode_tok_s=<v> roofline_fraction=<v>`` for ``--scheme`` at
``--context``: the RTL as built (the calibrated cycle model of its sequencers) and its
fraction of the HBM roofline. The design estimate is a labelled column, never that line.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from llmacc import config as C
from llmacc.paths import check_output_dir
from quant import schemes
from sim import perf_model as P
from sim.cycle_model import READ_LATENCY

CONTEXTS = (128, 256, 512, 1024, 2048)
PREFILLS = (128, 256, 512, 1024)
PREFILL_TOKENS = 512  #: the prompt of the prefill line above the last
SCHEMES = ("w2a8kv4", "w2a8kv4+g32", "w2a8kv4+4:16", "w2a8kv4+lambda4:252", "w3-mixed-a8kv4",
           "w4a8", "w4a8+2:4", "w8a8")


def run(args: argparse.Namespace) -> int:
    cfg = C.load(args.config)
    check_output_dir(args.out)  # the plots come last
    shape = P.model_shape(args.model)
    if not 1 <= args.context <= cfg.max_seq_len:
        raise ValueError(f"--context {args.context}: {cfg.name} supports 1..{cfg.max_seq_len}")
    args.scheme = P.case_scheme(cfg, args.scheme)
    P.check_fits(cfg, shape, args.scheme, args.context)
    schemes = list(dict.fromkeys(P.case_scheme(cfg, s) for s in [args.scheme, *SCHEMES]))
    print(f"{shape.name} on {cfg.name}: {cfg.clock_mhz:g} MHz, {cfg.mem_channels} channels x "
          f"{cfg.channel_gbps:g} GB/s = {cfg.mem_bandwidth_gbps:g} GB/s, "
          f"{cfg.axi_data_bits}-bit AXI ports, read latency {READ_LATENCY} cycles per row, "
          f"engine {cfg.mv_rows}x{cfg.chain_len} DSPs; weight groups of {cfg.weight_group} "
          "where a scheme names none (the configuration's weight_group)")
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
    print("\nprefill latency in ms (design estimate / RTL as built / compute bound: every MAC "
          f"on the engine's {cfg.peak_macs_per_cycle:,} per cycle)")
    print("| scheme | " + " | ".join(f"{t} tokens" for t in PREFILLS) + " |")
    print("|---" * (len(PREFILLS) + 1) + "|")
    for s in schemes:
        cells = []
        for t in PREFILLS:
            if t <= cfg.max_seq_len:
                e = P.prefill(cfg, shape, s, t)
                cells.append(f"{e.seconds * 1e3:.1f} / {e.rtl_seconds * 1e3:,.0f} / "
                             f"{e.compute_bound_seconds(cfg) * 1e3:.1f}")
        print(f"| {s} | " + " | ".join(cells) + " |")
    e = P.decode(cfg, shape, args.scheme, args.context)
    print(f"\n{args.scheme} at context {args.context}, per operator (all layers):")
    print("  (bytes from HBM; cycles of the design estimate and of the RTL as built)")
    for op in e.operators:
        design = f"{op.cycles:>10d} design ({op.bound}-bound)" if op.cycles else \
            f"{'':>10s} design: not counted"
        print(f"  {op.name:10s} {op.bytes / 1e6:9.1f} MB  {design:34s} "
              f"{op.rtl_cycles:>11d} as built")
    print(_kv_head_line(cfg, shape, args.scheme, args.context))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rtl = [(c, P.decode(cfg, shape, args.scheme, min(c, cfg.max_seq_len)).rtl_tok_s)
           for c in CONTEXTS]
    plots = _decode_plot(curves, rtl, args.scheme, cfg.name, shape.name, out)
    plots += _roofline_plot(cfg, e, args.scheme, args.context, shape.name, out)
    print("plots: " + ", ".join(str(p) for p in plots))
    pre = P.prefill(cfg, shape, args.scheme, min(PREFILL_TOKENS, cfg.max_seq_len))
    bound = pre.compute_bound_seconds(cfg)
    print(f"{args.scheme} prefill of {pre.tokens} tokens: RTL as built {pre.rtl_seconds:.4g} s "
          f"(design estimate {pre.seconds:.3g} s, compute bound {bound:.3g} s)")
    print(f"{args.scheme} at context {args.context}: RTL as built {e.rtl_tok_s:.3g} tok/s "
          f"(design estimate {e.tok_s:.3g}, HBM roofline {e.roofline_tok_s:.3g})")
    print(f"decode_tok_s={_fixed(e.rtl_tok_s)} "
          f"roofline_fraction={_fixed(e.rtl_roofline_fraction)}")
    return 0


def _kv_head_line(cfg: C.AccelConfig, shape: P.ModelShape, scheme: str, context: int) -> str:
    """What paces a decode step's attention: one KV head's cycles on each unit."""
    s = schemes.parse(P.case_scheme(cfg, scheme))
    h = P.kv_head_paces(cfg, s, shape, 1, context)  # as built: every key, masked
    return (f"  a KV head of a decode step, per unit as built: compute {h.compute} "
            f"({h.query_rows} x (SCORE_SOFTMAX {h.score} + PV {h.pv})), K and V loads "
            f"{h.loads}, SFU preparation {h.prepare}; each unit runs beside the others, "
            f"so the {h.bound} sets the pace")


def _fixed(value: float, digits: int = 3) -> str:
    """``value`` in plain decimals with ``digits`` significant digits (no exponent: the last
    line is read by scripts)."""
    places = max(2, digits - math.floor(math.log10(value)) - 1) if value > 0 else 2
    return f"{value:.{places}f}"


# -- plots (matplotlib) ------------------------------------------------------------------------
def _decode_plot(curves: dict, rtl: list[tuple[int, float]], scheme: str, cfg_name: str,
                 model: str, out: Path) -> list[Path]:
    """Tokens/s against context: each scheme's design estimate (solid) and HBM roofline
    (dashed), the RTL as built for ``scheme``, and the published anchors; log axes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    for n, (name, curve) in enumerate(curves.items()):
        colour = f"C{n % 10}"
        xs = [c for c, _, _ in curve]
        ax.plot(xs, [t for _, t, _ in curve], "-o", color=colour, ms=3, label=name)
        ax.plot(xs, [r for _, _, r in curve], "--", color=colour, lw=1)
    ax.plot([c for c, _ in rtl], [t for _, t in rtl], "-s", color="black", ms=3,
            label=f"{scheme}, RTL as built")
    for value, name in ((P.FLIGHTLLM_TOK_S, "FlightLLM (U280, LLaMA2-7B)"),
                        (P.FLIGHTLLM_TOK_S * P.ACCLLM_SPEEDUP, "AccLLM (claimed)")):
        ax.axhline(value, color="grey", ls=":", lw=1)
        ax.annotate(f"{name} {value:.0f}", (curves[scheme][-1][0], value), xytext=(-4, 3),
                    textcoords="offset points", fontsize=8, color="dimgrey", ha="right")
    ax.set_xscale("log", base=2)
    ax.set_xticks(CONTEXTS, [str(c) for c in CONTEXTS])
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(f"{model} decode on {cfg_name}: design estimate (solid), HBM roofline "
                 f"(dashed), RTL as built ({scheme})", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, ncols=2, loc="lower left")
    return _save(fig, out / "decode_tok_s")


def _roofline_plot(cfg: C.AccelConfig, e: P.Estimate, scheme: str, context: int,
                   model: str, out: Path) -> list[Path]:
    """Log-log roofline: MACs per byte against MACs/s, with each operator of the decode
    step placed on it; operators at the same point share one label."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    peak, bw = cfg.peak_macs_per_cycle * e.clock_hz, e.bandwidth
    points: dict[tuple[float, float], list[str]] = {}
    for op in e.operators:
        if op.bytes and op.macs:
            key = (round(op.macs / op.bytes, 4), round(op.macs * e.clock_hz / op.cycles, -6))
            points.setdefault(key, []).append(op.name)
    xs = [x for x, _ in points] + [peak / bw]
    lo_x, hi_x = min(xs) / 4, max(xs) * 16
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    ridge = peak / bw
    ax.plot([lo_x, ridge, hi_x], [lo_x * bw, peak, peak], color="black", lw=2,
            label=f"roofline: {bw / 1e9:.0f} GB/s, peak {peak / 1e12:.2f} TMAC/s")
    for n, ((x, y), names) in enumerate(sorted(points.items())):
        ax.plot([x], [y], "o", color=f"C{n % 10}")
        ax.annotate(", ".join(names), (x, y), xytext=(6, -12 + 9 * (n % 4)),
                    textcoords="offset points", fontsize=8, color=f"C{n % 10}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo_x, hi_x)
    ax.set_xlabel("operational intensity (MACs / byte)")
    ax.set_ylabel("MACs / s")
    ax.set_title(f"{model} {scheme} at context {context} on {cfg.name}: the operators of one "
                 "decode step (design estimate)", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, out / "roofline")


def _save(fig, stem: Path) -> list[Path]:
    from matplotlib import pyplot as plt

    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths
