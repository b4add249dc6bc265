"""One test of a stream block, parametrized by simulator: Amaranth's simulator in every run,
the Verilated block where its parameter is selected (``verilator`` marker; ``slow`` too
where the build takes minutes on 2 cores)."""

from collections.abc import Callable

import pytest
from amaranth.lib import wiring

from sim import stream_harness as H
from sim import verilator

SIMULATORS = ["amaranth", pytest.param("verilator", marks=pytest.mark.verilator)]
#: the same, for a block whose Verilator build is long (``make sim`` only)
SIMULATORS_SLOW_BUILD = ["amaranth", pytest.param(
    "verilator", marks=[pytest.mark.verilator, pytest.mark.slow])]


def run_block(simulator: str, request: pytest.FixtureRequest, tmp_path, block: Callable[
        [], wiring.Component], name: str, inputs: list, count: int, seed: int) -> list:
    """The payloads the block ``block()`` gives for ``inputs`` in ``simulator``, with random
    idle cycles and back-pressure from ``seed``; the Verilated model is built once per
    configuration under ``name``, its C++ compiled without optimization (block runs are
    short next to the build)."""
    if simulator == "amaranth":
        return H.run_amaranth(block(), inputs, count, seed)
    request.getfixturevalue("verilator_env")
    model = verilator.build(block(), name, optimize=False)
    return H.run_verilator(model, inputs, count, seed, tmp_path)
