"""The ``llmacc`` command line. Subcommands arrive with the issues that build them."""

from __future__ import annotations

import argparse
import json
import sys

from llmacc import __version__, config, isa_doc


def _cmd_config(args: argparse.Namespace) -> int:
    cfg = config.load(args.name)
    print(json.dumps({**cfg.to_dict(), "fingerprint": f"{cfg.fingerprint():#010x}"}, indent=2))
    return 0


def _cmd_isa(args: argparse.Namespace) -> int:
    print(isa_doc.render(), end="")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from quant import eval as quant_eval

    return quant_eval.run(args)


def _cmd_compile(args: argparse.Namespace) -> int:
    from compiler import commands

    return commands.run(args)


def _cmd_verify(args: argparse.Namespace) -> int:
    from host import verify

    return verify.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmacc", description="LLM-on-FPGA co-design stack")
    parser.add_argument("--version", action="version", version=f"llmacc {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("config", help="print a configuration (preset name or JSON file)")
    p.add_argument("name", help="preset (sim-small, u280) or a JSON file")
    p.set_defaults(func=_cmd_config)
    p = sub.add_parser("isa", help="print the instruction-set reference (docs/ISA.md)")
    p.set_defaults(func=_cmd_isa)
    p = sub.add_parser("eval", help="perplexity of the float, fake-quant or integer model")
    from quant.eval import add_arguments as eval_arguments

    eval_arguments(p)
    p.set_defaults(func=_cmd_eval)
    p = sub.add_parser("compile", help="quantize a checkpoint and compile it to a package")
    from compiler.commands import add_arguments as compile_arguments

    compile_arguments(p)
    p.set_defaults(func=_cmd_compile)
    p = sub.add_parser("verify", help="check a back end against the integer reference")
    from host.verify import add_arguments as verify_arguments

    verify_arguments(p)
    p.set_defaults(func=_cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, RuntimeError) as exc:  # ConfigError is a ValueError
        if args.debug:
            raise
        print(f"llmacc: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
