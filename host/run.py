"""``llmacc run``: a prompt in, generated text out, on any back end.

The text streams to stdout as it is generated. The last line is ``tokens=<n> stop=<why>
host_tok_s=<decode steps per second on this machine> device_tok_s=<decode steps per second of
the device at the configuration's clock>``; the device figure comes from the emulator's cycle
model, or from the cycles the RTL or the card counted.
"""

from __future__ import annotations

import argparse
import sys

from compiler import package
from host.device import open_device
from host.generate import Sampler, generate
from host.verify import load_tokenizer, prompt_tokens
from llmacc import config


def run(args: argparse.Namespace) -> int:
    sampler = Sampler(args.temperature, args.top_k, args.top_p, args.seed)
    cm, manifest = package.load(args.package)
    if args.config is not None:
        want = config.load(args.config)
        if want.fingerprint() != cm.config.fingerprint():
            raise ValueError(f"{args.package} was compiled for configuration "
                             f"{cm.config.name!r}, not {want.name!r}: recompile it with "
                             f"--config {args.config}")
    tok = load_tokenizer(args, cm)
    prompt = prompt_tokens(tok, args.prompt, args.chat, args.package)
    stops = None if args.stop_token is None else frozenset(args.stop_token)
    if stops is not None and any(not 0 <= t < cm.host.vocab for t in stops):
        raise ValueError(f"stop tokens must lie in 0..{cm.host.vocab - 1}")
    device = open_device(args.backend, cm, xclbin=args.xclbin, card=args.card)
    stream = None if args.no_stream else lambda text: print(text, end="", flush=True)
    try:
        if stream and not args.chat:
            print(args.prompt, end="", flush=True)
        out = generate(device, tok, prompt, args.max_tokens, sampler=sampler,
                       stop_tokens=stops, stop_text=tuple(args.stop), on_text=stream)
    finally:
        device.close()
    shown = "" if args.chat else args.prompt
    print(shown + out.text if args.no_stream else "")
    clock = cm.config.clock_mhz
    rows = cm.host.prefill_rows(len(prompt))
    if rows != len(prompt):
        print(f"{args.backend}: the {len(prompt)}-token prompt runs the {rows}-row prefill "
              f"program: prefill programs are compiled per bucket of {cm.host.prefill_bucket} "
              f"rows and below it in powers of two from {cm.host.prefill_min} (llmacc compile "
              "--prefill-bucket, --prefill-min), the padding rows are computed and discarded",
              file=sys.stderr)
    print(f"{args.backend}: prompt {len(prompt)} tokens, prefill {out.prefill_s:.2f} s; "
          f"{out.decode_steps} decode steps in {out.decode_s:.2f} s; device at {clock:g} MHz "
          f"({cm.config.name}, {manifest.get('scheme', '?')}): prefill "
          f"{out.prefill_cycles} cycles, decode {out.decode_cycles} cycles", file=sys.stderr)
    print(f"tokens={len(out.tokens)} stop={out.stop} host_tok_s={out.tokens_per_s():.2f} "
          f"device_tok_s={out.device_tokens_per_s(clock):.1f}")
    return 0
