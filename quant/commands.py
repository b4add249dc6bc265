"""``llmacc quantize``: checkpoint -> the integer reference model, saved for ``llmacc compile``.

The quantized model file holds the integer model's tensors (``intref.to_state``), the scheme
and the checkpoint it came from. It loads with ``torch.load(weights_only=True)``; anything else
is refused with a message naming the file.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import torch

from llmacc.paths import check_output_file
from quant import checkpoint, intref, schemes, tokenizer
from quant.arguments import CALIB_STORIES, SAMPLED_CALIB
from quant.eval import calibration_sequences, prepare_sequences, sampled_sequences
from quant.quantize import compute_device

FORMAT = "llmacc-intmodel"
FORMAT_VERSION = 1


def quantize(args: argparse.Namespace) -> intref.IntModel:
    """The integer model of ``args.model`` under ``args.scheme`` (both required)."""
    if not args.model or not args.scheme:
        raise ValueError("give --model and --scheme (or --quantized FILE to llmacc compile)")
    compute_device(args.device)  # before minutes of calibration
    tok_path = tokenizer.path_for(args.tokenizer, args.model)
    ckpt = checkpoint.load(args.model)
    tok = tokenizer.load(tok_path, ckpt.config.vocab_size)
    scheme = schemes.parse(args.scheme, args.group, args.finetune_steps)
    if not scheme.quantized:
        raise ValueError("the accelerator runs quantized schemes; 'float' cannot be quantized "
                         "to an integer model")
    if args.calib_text:
        calib = calibration_sequences(tok, args.calib_text, args.calib_stories or CALIB_STORIES,
                                      ckpt.config.seq_len)
    else:
        calib = sampled_sequences(ckpt, args.calib_stories or SAMPLED_CALIB, 256, args.seed)
    return intref.build(prepare_sequences(ckpt, scheme, calib, not args.no_progress,
                                          args.device))


def save(im: intref.IntModel, path: str | Path, scheme: str, source: str) -> None:
    blob = io.BytesIO()
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "scheme": scheme,
                "source": source, "state": intref.to_state(im)}, blob)
    try:
        Path(path).write_bytes(blob.getvalue())
    except OSError as exc:
        raise ValueError(f"{path}: cannot write the quantized model ({exc.strerror})") from None


def load(path: str | Path) -> tuple[intref.IntModel, str]:
    """The integer model in a quantized model file, and its scheme."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        saved = torch.load(io.BytesIO(blob), weights_only=True)
    except Exception:  # noqa: BLE001 - any unpickling failure means a wrong file
        raise ValueError(f"{path}: not a quantized model file (llmacc quantize -o)") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ValueError(f"{path}: not a quantized model file (llmacc quantize -o)")
    if saved.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {saved.get('format_version')}, this llmacc "
                         f"reads {FORMAT_VERSION}; quantize again")
    try:
        return intref.from_state(saved["state"]), str(saved.get("scheme", ""))
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    check_output_file(args.output, " (.pt)")  # before minutes of quantization
    start = time.perf_counter()
    im = quantize(args)
    save(im, args.output, args.scheme, str(args.model))
    c = im.config
    print(f"model: dim {c.dim}, {c.n_layers} layers, vocab {c.vocab_size}; scheme {args.scheme}; "
          f"{time.perf_counter() - start:.1f} s")
    print(f"quantized={args.output} scheme={args.scheme}")
    return 0
