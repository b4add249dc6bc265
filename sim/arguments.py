"""The options of ``llmacc perf``, in plain Python (the command line loads no torch to build
them; :mod:`sim.perf_report` runs the command)."""

from __future__ import annotations

import argparse

from sim.model_shapes import MODELS


def add_perf_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="u280", help="accelerator preset or JSON file")
    p.add_argument("--model", default="llama2-7b",
                   help="model shapes of the estimate: one of " + ", ".join(MODELS)
                        + ", or a Hugging Face config.json (or its directory) or a GGUF file, "
                        "read without loading weights")
    p.add_argument("--scheme", default="w2a8kv4", help="the case of the last line")
    p.add_argument("--context", type=int, default=512, help="context length of the last line")
    p.add_argument("--out", default="build/perf", help="directory for the plots")
