"""The options of ``llmacc verify``, ``run`` and ``sim``, in plain Python (the command line
loads neither torch nor the simulators to build them; :mod:`host.verify` and :mod:`host.run`
run the commands)."""

from __future__ import annotations

import argparse

BACKENDS = ("emulator", "rtl", "xrt")  #: the back ends of :func:`host.device.open_device`


def add_device_arguments(p: argparse.ArgumentParser, default: str = "emulator") -> None:
    """The package, tokenizer and back-end options of verify, run and sim."""
    p.add_argument("--package", required=True, help="package directory from llmacc compile")
    p.add_argument("--backend", choices=BACKENDS, default=default,
                   help="emulator: instruction-level emulator; rtl: the Verilated RTL; xrt: "
                        "an Alveo card")
    p.add_argument("--xclbin", default=None, help="the board flow's xclbin (xrt back end)")
    p.add_argument("--card", type=int, default=0, help="XRT device index (xrt back end)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer (default: the one stored in the package)")


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    add_device_arguments(p)
    p.add_argument("--prompt", required=True, help="prompt text (BOS is prepended)")
    p.add_argument("--tokens", type=int, default=16, help="decode steps after the prefill")


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    add_device_arguments(p)
    p.add_argument("--prompt", default="", help="prompt text (BOS is prepended where the "
                                                 "vocabulary asks for it)")
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt in the model's chat template as one user turn, and "
                        "print only the answer")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (the default)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when the text contains TEXT (repeatable)")
    p.add_argument("--stop-token", action="append", type=int, default=None, metavar="ID",
                   help="stop at this token id (repeatable; default: BOS and EOS)")
    p.add_argument("--config", default=None,
                   help="the accelerator configuration you expect the package to be built for "
                        "(refused if it is not)")
    p.add_argument("--no-stream", action="store_true", help="print the text at the end")


def add_sim_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--package", required=True, help="package directory from llmacc compile")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer (default: the one stored in the package)")
    p.add_argument("--prompt", default="", help="prompt text (BOS is prepended)")
    p.add_argument("--tokens", type=int, default=2, help="decode steps after the prefill")
