"""The ``llmacc`` command line (also ``python -m host``).

Every subcommand has ``--help``. Bad input (a missing file, a wrong format, an unknown scheme,
a package built for another configuration, a missing tool or card) ends with one line,
``llmacc: error: ...``, and exit code 2; ``--debug`` shows the traceback instead.
"""

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


def _cmd_quantize(args: argparse.Namespace) -> int:
    from quant import commands

    return commands.run(args)


def _cmd_run(args: argparse.Namespace) -> int:
    from host import run

    return run.run(args)


def _cmd_sim(args: argparse.Namespace) -> int:
    from host import verify

    return verify.run_sim(args)


def _cmd_perf(args: argparse.Namespace) -> int:
    from sim import perf_report

    return perf_report.run(args)


def _cmd_bitstream(args: argparse.Namespace) -> int:
    from boards import vitis_flow

    return vitis_flow.run(args)


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
    p = sub.add_parser("quantize", help="quantize a checkpoint to the integer reference model")
    from quant.commands import add_arguments as quantize_arguments

    quantize_arguments(p)
    p.set_defaults(func=_cmd_quantize)
    p = sub.add_parser("compile", help="quantize a checkpoint and compile it to a package")
    from compiler.commands import add_arguments as compile_arguments

    compile_arguments(p)
    p.set_defaults(func=_cmd_compile)
    p = sub.add_parser("verify", help="check a back end against the integer reference")
    from host.verify import add_arguments as verify_arguments

    verify_arguments(p)
    p.set_defaults(func=_cmd_verify)
    p = sub.add_parser("run", help="generate text from a prompt on a back end")
    from host.run import add_arguments as run_arguments

    run_arguments(p)
    p.set_defaults(func=_cmd_run)
    p = sub.add_parser("sim", help="a package on the Verilated RTL beside the emulator: "
                                   "bit-exactness and counted against modelled cycles")
    from host.verify import add_sim_arguments

    add_sim_arguments(p)
    p.set_defaults(func=_cmd_sim)
    p = sub.add_parser("perf", help="performance estimates: decode tokens/s, prefill latency, "
                                    "HBM roofline, published anchors; SVG plots")
    from sim.perf_report import add_arguments as perf_arguments

    perf_arguments(p)
    p.set_defaults(func=_cmd_perf)
    p = sub.add_parser("bitstream", help="the Vitis build tree for a board; runs Vivado/v++ "
                                         "when they are on PATH")
    from boards.vitis_flow import add_arguments as bitstream_arguments

    bitstream_arguments(p)
    p.set_defaults(func=_cmd_bitstream)
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
