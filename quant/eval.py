"""Perplexity: stories (blank-line separated paragraphs) each scored from BOS, truncated at seq_len;
or, with ``--window``, the text as one token stream in fixed windows (WikiText-2).

``python -m quant.eval`` (= ``llmacc eval``) scores one model/scheme/mode and prints
``ppl=<value> tokens=<count>`` as its last line; ``--table`` scores every preset in every mode
and writes a markdown table.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from llmacc.paths import check_output_file
from quant import checkpoint, schemes, tokenizer
from quant.arguments import CALIB_STORIES, MODES, add_eval_arguments
from quant.quantize import QuantizedModel, compute_device, quantize

Tensor = torch.Tensor


def read_text(path: str | Path) -> str:
    """A UTF-8 text file with ``\n`` line ends; one line error for anything else."""
    try:
        blob = Path(path).read_bytes()
    except OSError as exc:
        raise checkpoint.CheckpointError(f"{path}: cannot read text ({exc.strerror})") from exc
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise checkpoint.CheckpointError(f"{path}: not UTF-8 text (byte {exc.start}); a text "
                                         "file of stories is expected") from None
    if "\0" in text:
        raise checkpoint.CheckpointError(f"{path}: holds NUL bytes, so it is not a text file "
                                         "(a model or tokenizer given as --text?)")
    return text.replace("\r\n", "\n")


def read_stories(path: str | Path, limit: int | None = None, skip: int = 0) -> list[str]:
    text = read_text(path)
    stories = [s.strip() for s in text.split("\n\n") if s.strip()]
    stories = stories[skip:]
    return stories if limit is None else stories[:limit]


def perplexity(score: Callable[[list[int]], Tensor], sequences: list[list[int]],
               progress: bool = False) -> tuple[float, int]:
    """exp(mean negative log-likelihood) of every next token; ``score`` returns logits."""
    nll, count = 0.0, 0
    start = time.time()
    for i, seq in enumerate(sequences):
        if len(seq) < 2:
            continue
        logits = score(seq).to(torch.float64)
        logp = torch.log_softmax(logits[:-1], dim=-1)
        nll -= float(logp.gather(1, torch.tensor(seq[1:]).unsqueeze(-1)).sum())
        count += len(seq) - 1
        if progress:
            _bar(i + 1, len(sequences), start)
    if progress:
        print(file=sys.stderr)
    if count == 0:
        raise ValueError("no text to score: every story is shorter than two tokens")
    return math.exp(nll / count), count


def _bar(done: int, total: int, start: float, what: str = "scoring", where: str = "") -> None:
    """One progress line; the ETA extrapolates the rate of the work done since ``start``
    (nothing is estimated before the first unit is done); ``where``: the unit in hand."""
    width = 30
    fill = width * done // max(total, 1)
    eta = f"eta {(time.time() - start) / done * (total - done):5.0f}s" if done else "eta    ?"
    where = f" {where:<30}" if where else ""  # padded: a shorter name overwrites a longer
    print(f"\r{what} [{'#' * fill}{'.' * (width - fill)}] {done}/{total} {eta}{where}",
          end="", file=sys.stderr, flush=True)


def _progress(what: str):
    """A progress callback ``(done, total[, where])`` whose clock starts at its ``done == 0``
    call (or its first call), so set-up before the work does not inflate the ETA."""
    start = [time.time()]

    def bar(done: int, total: int, where: str = "") -> None:
        if done == 0:
            start[0] = time.time()
        _bar(done, total, start[0], what, where)
    return bar


def calibration_sequences(tok: tokenizer.Tokenizer, text: str | Path, count: int,
                          seq_len: int) -> list[list[int]]:
    """The *last* ``count`` stories of ``text`` (evaluation takes the first ones)."""
    stories = read_stories(text)
    return encode_stories(tok, stories[-count:], seq_len)


def encode_stories(tok: tokenizer.Tokenizer, stories: list[str], seq_len: int) -> list[list[int]]:
    """Each story from BOS, truncated at ``seq_len`` tokens."""
    return [tok.encode(s)[:seq_len] for s in stories]


def window_sequences(tok: tokenizer.Tokenizer, path: str | Path, window: int,
                     max_tokens: int | None = None) -> list[list[int]]:
    """The text as one token stream (no BOS, no story split), its first ``max_tokens``
    tokens cut into windows of ``window``, each scored from its own start: the usual way
    to score WikiText-2."""
    if window < 2:
        raise ValueError(f"--window {window}: a window needs at least two tokens")
    text = read_text(path)
    chars = len(text) if max_tokens is None else 8 * max_tokens
    while True:  # encode only as much text as the tokens asked for need
        ids = tok.encode(text[:chars], bos=False)
        if chars >= len(text) or (max_tokens is not None and len(ids) > max_tokens):
            break
        chars *= 2
    ids = ids[:max_tokens]
    return [ids[i:i + window] for i in range(0, len(ids), window)]


def scoring_sequences(tok: tokenizer.Tokenizer, text: str | Path, seq_len: int,
                      max_stories: int | None = None, skip_stories: int = 0,
                      window: int | None = None,
                      max_tokens: int | None = None) -> list[list[int]]:
    """What perplexity scores: stories from BOS, or with ``window`` the text's windows."""
    if window is not None:
        return window_sequences(tok, text, min(window, seq_len), max_tokens)
    return encode_stories(tok, read_stories(text, max_stories, skip_stories), seq_len)


def scorer(mode: str, qm: QuantizedModel, ckpt: checkpoint.Checkpoint):
    """``seq -> logits`` for the float, fake-quant or integer model."""
    from quant.model import Transformer

    if mode == "float":
        model = Transformer(ckpt)
        return lambda seq: model.forward(torch.tensor(seq))
    if mode == "fake":
        model = qm.fake_model()
        return lambda seq: model.forward(torch.tensor(seq))
    if mode == "int":
        from quant import intref

        im = intref.build(qm)
        return lambda seq: im.logits_float(im.forward(torch.tensor(seq)))
    raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")


def prepare(ckpt: checkpoint.Checkpoint, tok: tokenizer.Tokenizer, scheme: schemes.Scheme,
            calib_text: str | Path, calib_stories: int = CALIB_STORIES,
            progress: bool = False, device: str = "cpu") -> QuantizedModel:
    """Calibrate on the last ``calib_stories`` stories of ``calib_text``, quantize, fine-tune."""
    calib = calibration_sequences(tok, calib_text, calib_stories, ckpt.config.seq_len)
    return prepare_sequences(ckpt, scheme, calib, progress, device)


def prepare_sequences(ckpt: checkpoint.Checkpoint, scheme: schemes.Scheme,
                      calib: list[list[int]], progress: bool = False,
                      device: str = "cpu") -> QuantizedModel:
    """Quantize (GPTQ on the last quarter of ``calib``, on ``device``) and fine-tune on all
    of it."""
    from quant.finetune import finetune

    if not calib:
        raise ValueError("no calibration sequences")
    bar = _progress("quantizing") if progress else None
    qm = quantize(ckpt, scheme, calib[-max(1, len(calib) // 4):], bar, device)
    if scheme.finetune.steps:
        bar = _progress("fine-tuning") if progress else None
        qm = finetune(qm, ckpt, calib, scheme.finetune, progress=bar)
    if progress:
        print(file=sys.stderr)
    return qm


def sampled_sequences(ckpt: checkpoint.Checkpoint, count: int, length: int, seed: int = 0,
                      bos: int = 1) -> list[list[int]]:
    """Calibration text sampled from the float model itself (temperature 1, from BOS), for
    when no calibration text is given."""
    from quant.model import KVCache, Transformer

    model = Transformer(ckpt)
    g = torch.Generator().manual_seed(seed)
    length = min(length, ckpt.config.seq_len)
    out = []
    for _ in range(count):
        cache = KVCache(ckpt.config, length)
        seq = [bos]
        with torch.no_grad():
            while len(seq) < length:
                logits = model.forward(torch.tensor(seq[-1:]), cache)[-1]
                probs = torch.softmax(logits.double(), -1)
                seq.append(int(torch.multinomial(probs, 1, generator=g)))
        out.append(seq)
    return out


def evaluate(model_path: str, tokenizer_path: str, text: str, scheme_name: str, mode: str,
             max_stories: int | None = None, group: int | None = None,
             calib_text: str | None = None, calib_stories: int = CALIB_STORIES,
             finetune_steps: int | None = None, progress: bool = True,
             skip_stories: int = 0, device: str = "cpu", window: int | None = None,
             max_tokens: int | None = None) -> tuple[float, int]:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    ckpt = checkpoint.load(model_path)
    tok = tokenizer.load(tokenizer_path, ckpt.config.vocab_size)
    scheme = schemes.parse(scheme_name, group, finetune_steps)
    if scheme.name == "float":
        mode = "float"
    qm = None if mode == "float" else prepare(ckpt, tok, scheme, calib_text or text,
                                               calib_stories, progress, device)
    seqs = scoring_sequences(tok, text, ckpt.config.seq_len, max_stories, skip_stories,
                             window, max_tokens)
    return perplexity(scorer(mode, qm, ckpt), seqs, progress)


#: The rows of ``--table``: every quantized preset, and W2 with groups of 128 (the u280
#: performance case, ``llmacc perf``) beside its default 32.
TABLE_SCHEMES = (*(n for n in schemes.PRESETS if n != "float"), "w2a8kv4+g128")


def table(model_path: str, tokenizer_path: str, text: str, names: list[str],
          max_stories: int | None, calib_text: str | None = None,
          calib_stories: int = CALIB_STORIES, progress: bool = True,
          skip_stories: int = 0, device: str = "cpu", window: int | None = None,
          max_tokens: int | None = None) -> str:
    """Markdown table: every scheme's perplexity in fake-quant and integer mode."""
    ckpt = checkpoint.load(model_path)
    tok = tokenizer.load(tokenizer_path, ckpt.config.vocab_size)
    seqs = scoring_sequences(tok, text, ckpt.config.seq_len, max_stories, skip_stories,
                             window, max_tokens)
    base, count = perplexity(scorer("float", None, ckpt), seqs)
    rows = [f"| float (fp32) | 32 | {base:.3f} | - | - | - |"]
    for name in names:
        scheme = schemes.parse(name)
        start = time.time()
        qm = prepare(ckpt, tok, scheme, calib_text or text, calib_stories, progress, device)
        fake, _ = perplexity(scorer("fake", qm, ckpt), seqs)
        integer, _ = perplexity(scorer("int", qm, ckpt), seqs)
        rows.append(f"| {name} | {qm.weight_bits():.2f} | {fake:.3f} | {integer:.3f} | "
                    f"{integer / base:.3f}x | {100 * (integer / fake - 1):+.2f}% |")
        if progress:
            print(f"{name}: fake {fake:.3f} int {integer:.3f} ({time.time() - start:.0f}s)",
                  file=sys.stderr)
    head = ("| scheme | bits/weight | ppl fake-quant | ppl integer | integer / float | "
            "integer vs fake |\n|---|---|---|---|---|---|")
    what = "stories" if window is None else f"windows of {window} tokens"
    return "\n".join([head, *rows]) + f"\n\n{count} scored tokens, {len(seqs)} {what}.\n"


def run(args: argparse.Namespace) -> int:
    progress = not args.no_progress
    if args.max_tokens is not None and args.window is None:
        raise ValueError("--max-tokens counts the tokens of --window scoring: give --window")
    args.tokenizer = tokenizer.path_for(args.tokenizer, args.model)  # before any work
    compute_device(args.device)
    if args.table:
        if args.group is not None or args.scheme != "float":
            raise ValueError("--table scores every preset and w2a8kv4+g128 with their own "
                             "groups: leave out --group and --scheme")
        check_output_file(args.table, " (.md)")  # before hours of scoring
        md = table(args.model, args.tokenizer, args.text, list(TABLE_SCHEMES), args.max_stories,
                   args.calib_text, args.calib_stories, progress, args.skip_stories,
                   args.device, args.window, args.max_tokens)
        Path(args.table).write_text(md)
        print(md, end="")
        return 0
    ppl, count = evaluate(args.model, args.tokenizer, args.text, args.scheme, args.mode,
                          args.max_stories, args.group, args.calib_text, args.calib_stories,
                          args.finetune_steps, progress, args.skip_stories, args.device,
                          args.window, args.max_tokens)
    print(f"ppl={ppl:.4f} tokens={count}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="llmacc eval", description=__doc__)
    add_eval_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
