"""The options of ``llmacc bitstream``, in plain Python (the command line loads no Amaranth to
build them; :mod:`boards.vitis_flow` runs the command)."""

from __future__ import annotations

import argparse
import os


def add_bitstream_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--board", default="u280", help="u280, u55c or u250")
    p.add_argument("--config", default="u280", help="accelerator preset or JSON file")
    p.add_argument("-o", "--output", default=None,
                   help="build directory (default build/bitstream/<board>-<config>)")
    p.add_argument("--require-vivado", action="store_true",
                   default=os.environ.get("REQUIRE_VIVADO", "") not in ("", "0"),
                   help="fail when Vivado/v++ are missing (also REQUIRE_VIVADO=1)")
    p.add_argument("--convert-memory-gb", type=float, default=None,
                   help="memory limit of the Verilog conversion (default: 80%% of this "
                        "machine's)")
    p.add_argument("--convert-timeout", type=float, default=3600.0,
                   help="seconds the Verilog conversion may take")
