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
#: ``(simulator, index_in_code)`` for the blocks built in both lane variants: the lanes with
#: an index field (sim-small's record path) run Verilated in ``make sim`` only, as the
#: sim-small top's tests run them Verilated in ``make test``; the u280's lanes (indices in
#: the codes) are Verilated only here, so in both
LANE_VARIANTS = [
    pytest.param("amaranth", False, id="amaranth-index"),
    pytest.param("amaranth", True, id="amaranth-index_in_code"),
    pytest.param("verilator", False, id="verilator-index",
                 marks=[pytest.mark.verilator, pytest.mark.slow]),
    pytest.param("verilator", True, id="verilator-index_in_code", marks=pytest.mark.verilator),
]


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
