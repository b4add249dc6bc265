"""The ``llmacc`` command line (also ``python -m host``).

Every subcommand has ``--help``. Bad input (a missing file, a wrong format, an unknown scheme,
a package built for another configuration, a missing tool or card) ends with one line,
``llmacc: error: ...``, and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable

from llmacc import __version__


def _cmd_config(args: argparse.Namespace) -> int:
    from llmacc import config

    cfg = config.load(args.name)
    print(json.dumps({**cfg.to_dict(), "fingerprint": f"{cfg.fingerprint():#010x}"}, indent=2))
    return 0


def _cmd_isa(args: argparse.Namespace) -> int:
    from llmacc import isa_doc

    print(isa_doc.render(), end="")
    return 0


#: The subcommands that live with their code: (name, help, the plain-Python function that
#: adds the arguments, the function that runs the command), each as ``module:function``. The
#: argument functions load no torch, so every parser, and ``--help``, is quick; the running
#: module is imported only when its command runs.
COMMANDS = (
    ("eval", "perplexity of the float, fake-quant or integer model",
     "quant.arguments:add_eval_arguments", "quant.eval:run"),
    ("quantize", "quantize a checkpoint to the integer reference model",
     "quant.arguments:add_quantize_arguments", "quant.commands:run"),
    ("compile", "quantize a checkpoint and compile it to a package",
     "compiler.arguments:add_compile_arguments", "compiler.commands:run"),
    ("verify", "check a back end against the integer reference",
     "host.arguments:add_verify_arguments", "host.verify:run"),
    ("run", "generate text from a prompt on a back end",
     "host.arguments:add_run_arguments", "host.run:run"),
    ("sim", "a package on the Verilated RTL beside the emulator: bit-exactness and counted "
     "against modelled cycles", "host.arguments:add_sim_arguments", "host.verify:run_sim"),
    ("perf", "performance estimates: decode tokens/s, prefill latency, HBM roofline, "
     "published anchors; SVG plots", "sim.arguments:add_perf_arguments", "sim.perf_report:run"),
    ("bitstream", "the Vitis build tree for a board; runs Vivado/v++ when they are on PATH",
     "boards.arguments:add_bitstream_arguments", "boards.vitis_flow:run"),
)


def _function(name: str) -> Callable:
    """The function ``module:function`` names (importing its module)."""
    module, function = name.split(":")
    return getattr(importlib.import_module(module), function)


def _runner(name: str) -> Callable[[argparse.Namespace], int]:
    """A command that imports its module (torch, the simulators) only when it runs."""
    def run(args: argparse.Namespace) -> int:
        return _function(name)(args)
    return run


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` with each option's default, where it has one that its line does not
    already say (argparse's ArgumentDefaultsHelpFormatter also prints "default: None")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS or "default" in text:
            return text
        if action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text + " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand; building it loads neither torch nor the simulators."""
    parser = argparse.ArgumentParser(prog="llmacc", description="LLM-on-FPGA co-design stack")
    parser.add_argument("--version", action="version", version=f"llmacc {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("config", help="print a configuration (preset name or JSON file)")
    p.add_argument("name", help="preset (sim-small, sim-wide, u280) or a JSON file")
    p.set_defaults(func=_cmd_config)
    p = sub.add_parser("isa", help="print the instruction-set reference (docs/ISA.md)")
    p.set_defaults(func=_cmd_isa)
    for name, text, add_arguments, run in COMMANDS:
        p = sub.add_parser(name, help=text, description=text,
                           formatter_class=DefaultsHelpFormatter)
        _function(add_arguments)(p)
        p.set_defaults(func=_runner(run))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, RuntimeError, ArithmeticError) as exc:
        # ConfigError, PackageError, CheckpointError are ValueErrors; DeviceError and
        # EmulatorError RuntimeErrors; NumericsError an ArithmeticError
        if args.debug:
            raise
        print(f"llmacc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmacc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
