"""Two read masters sharing one channel's AXI port (``hw/read_share.py``) against the HBM
channel model: each gets exactly its own rows' words in order, under address and data
back-pressure, and a waiting address never changes. One test, parametrized by simulator."""

import random

import pytest

from hw.read_share import SharedReaders
from sim import hbm_model as H
from sim import verilator

ADDR_BITS, DATA_BITS = 32, 64
MEMORY = 1 << 16


@pytest.mark.parametrize("simulator", ["amaranth", pytest.param(
    "verilator", marks=pytest.mark.verilator)])
def test_shared_reads_reach_their_masters(simulator, request, seed):
    if simulator == "verilator":
        request.getfixturevalue("verilator_env")
        model = verilator.build(SharedReaders(ADDR_BITS, DATA_BITS, bursts=2), "read_share")
        tests, failed = model.run("sim.benches.tb_read_share", seed=seed)
        assert failed == 0 and tests == 1, f"seed {seed}"
        return
    rng = random.Random(seed)
    memory = bytes(rng.getrandbits(8) for _ in range(MEMORY))
    rows = [H.random_rows(rng, DATA_BITS // 8, MEMORY, 40) for _ in range(2)]
    timing = H.HbmTiming(bytes_per_cycle=DATA_BITS // 8)
    # a small owner FIFO, so that it fills and holds the addresses back
    words = H.run_in_amaranth(SharedReaders(ADDR_BITS, DATA_BITS, bursts=2), H.shared_bench,
                              memory, rows, DATA_BITS // 8, ADDR_BITS, timing, rng)
    for i, got in enumerate(words):
        want = H.expected_words(memory, rows[i], DATA_BITS // 8)
        assert got == want, f"master {i}: {len(got)} words, {len(want)} wanted (seed {seed})"

