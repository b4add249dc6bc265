"""The weight streamer (``hw/weight_streamer.py``) against the HBM channel model
(``sim/hbm_model.py``): every word in order, the burst rules, reads kept in flight, and
line rate when nothing downstream stalls. One test, parametrized by simulator."""

import random

import pytest

from hw.weight_streamer import ChannelSlice, WeightStreamer
from llmacc.config import preset
from llmacc.kernel import BOUNDARY, STREAM_BURSTS_IN_FLIGHT, stream_burst_beats
from sim import bench_rtl, verilator
from sim import hbm_model as H

ADDR_BITS, DATA_BITS = 32, 64
MEMORY = 1 << 18


def _amaranth(memory, rows, timing, seed, stall, ar_stall=0.0):
    return H.run_in_amaranth(WeightStreamer(ADDR_BITS, DATA_BITS), H.stream_bench, memory,
                             rows, DATA_BITS // 8, ADDR_BITS, timing, random.Random(seed),
                             stall=stall, ar_stall=ar_stall)


def _check(report, memory, rows, seed):
    nbytes = DATA_BITS // 8
    want = H.expected_words(memory, rows, nbytes)
    if report.words != want:
        first = next((i for i, (a, b) in enumerate(zip(report.words, want, strict=False))
                      if a != b), min(len(report.words), len(want)))
        raise AssertionError(f"seed {seed}: word {first} of {len(want)} differs "
                             f"({len(report.words)} words given)")
    cap = stream_burst_beats(nbytes)
    for addr, beats in report.bursts:
        assert beats <= cap, (addr, beats, seed)
        assert addr // BOUNDARY == (addr + beats * nbytes - 1) // BOUNDARY, (addr, beats, seed)
    assert report.max_in_flight <= STREAM_BURSTS_IN_FLIGHT, seed


@pytest.mark.parametrize("simulator", ["amaranth", pytest.param(
    "verilator", marks=pytest.mark.verilator)])
def test_streamer_gives_every_word_in_order(simulator, request, seed):
    """Random rows (contiguous runs, jumps, 4 KiB crossings) under consumer back-pressure
    and HBM timing: the words are the rows' words in order, bursts keep the rules (in
    Amaranth, with a refusing address channel: a waiting address never changes)."""
    rng = random.Random(seed)
    memory = bytes(rng.getrandbits(8) for _ in range(MEMORY))
    rows = H.random_rows(rng, DATA_BITS // 8, MEMORY, 30)
    timing = H.HbmTiming(bytes_per_cycle=DATA_BITS // 8)
    if simulator == "amaranth":
        report = _amaranth(memory, rows, timing, seed, stall=0.3, ar_stall=0.3)
        _check(report, memory, rows, seed)
        return
    request.getfixturevalue("verilator_env")
    model = verilator.build(WeightStreamer(ADDR_BITS, DATA_BITS), "weight_streamer")
    tests, failed = model.run("sim.benches.tb_streamer", seed=seed)
    assert failed == 0 and tests == 1, f"seed {seed}"


@pytest.mark.parametrize("on_waiting", [False, True], ids=["any", "address-waiting"])
def test_an_aborted_stream_leaves_nothing_behind(on_waiting, seed):
    """A stream cut short (the compute unit's fault) at a random word, or while an address
    waits to be taken: no word leaves while aborting, the waiting address stays, idle waits
    for every burst in flight, and the next stream's words are its own, in order."""
    rng = random.Random(seed)
    nbytes = DATA_BITS // 8
    memory = bytes(rng.getrandbits(8) for _ in range(MEMORY))
    for _ in range(3):
        first = H.random_rows(rng, nbytes, MEMORY, 20)
        then = H.random_rows(rng, nbytes, MEMORY, 10)
        # few addresses wait (a burst is up to 128 words): abort at the first one that does
        after = 0 if on_waiting else rng.randrange(sum(beats for _, beats in first) // 2)
        before, words = H.run_in_amaranth(
            WeightStreamer(ADDR_BITS, DATA_BITS), H.abort_bench, memory, first, then, nbytes,
            ADDR_BITS, H.HbmTiming(bytes_per_cycle=nbytes), rng, abort_after=after,
            on_waiting=on_waiting, ar_stall=0.6 if on_waiting else 0.3)
        assert len(before) >= after, f"seed {seed}"
        assert before == H.expected_words(memory, first, nbytes)[:len(before)], f"seed {seed}"
        assert words == H.expected_words(memory, then, nbytes), f"seed {seed}"


def test_streamer_keeps_reads_in_flight_at_line_rate(seed):
    """Contiguous rows, a consumer that never stalls, a channel as fast as the port: the
    streamer fills the round trip with bursts and reads within 5% of what HBM allows."""
    rng = random.Random(seed)
    memory = bytes(rng.getrandbits(8) for _ in range(MEMORY))
    nbytes = DATA_BITS // 8
    rows = [(i * 96 * nbytes, 96) for i in range(24)]
    timing = H.HbmTiming(bytes_per_cycle=nbytes)
    report = _amaranth(memory, rows, timing, seed, stall=0.0)
    _check(report, memory, rows, seed)
    assert report.max_in_flight >= 2, (report.max_in_flight, seed)
    utilization = report.utilization(nbytes, timing)
    assert utilization >= 0.95 * timing.efficiency, (utilization, seed)


def test_stream_cycles_follow_the_rtl(seed):
    """The cycle model's weight stream (``cycle_model.stream_cycles``) within 2% of the RTL
    on a U280 channel's W2 rows (512-bit port, HBM timing of the config); long enough that
    the first beat's random latency (40-120 cycles, the model takes the mean) is under 1%."""
    cfg = preset("u280")
    load = bench_rtl.Workload("w2 rows", rows=256, row_words=18)
    result = bench_rtl.run_one(cfg, load, seed)
    assert result.model_error <= 0.02, (result, seed)


def test_channel_slice_reads_channels_in_lockstep(seed):
    """Two channels, each with its own HBM timing, under back-pressure: every output word
    is both channels' words side by side, in order."""
    rng = random.Random(seed)
    nbytes = DATA_BITS // 8
    memories = [rng.randbytes(1 << 14) for _ in range(2)]
    rows = [(i * 40 * nbytes, 40) for i in range(8)]
    words, _, _ = H.run_in_amaranth(ChannelSlice(2, ADDR_BITS, DATA_BITS), H.slice_bench,
                                    memories, [rows, rows], nbytes, ADDR_BITS,
                                    H.HbmTiming(nbytes), rng, stall=0.3)
    low, high = (H.expected_words(mem, rows, nbytes) for mem in memories)
    assert words == [a | b << DATA_BITS for a, b in zip(low, high, strict=True)], seed
