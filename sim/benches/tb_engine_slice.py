"""cocotb bench for hw/stream_engine.py's StreamSlice: one workload (the channels' weight
streams, the engine command, one pass's activation beats, the results expected) from
``$LLMACC_VECTORS``, served by the HBM channel model (``sim.hbm_model.engine_bench``);
writes what it measured to the spec's ``out`` file."""

import json
import random
from pathlib import Path

import cocotb

from sim import hbm_model as H
from sim.benches.common import load_vectors, start_clock_and_reset
from sim.benches.tb_streamer import CocotbIO


@cocotb.test()
async def engine_slice_workload(dut):
    spec = load_vectors()
    await start_clock_and_reset(dut)
    memories = [Path(p).read_bytes() for p in spec["memories"]]
    words = len(memories[0]) // spec["data_bytes"]
    acts = [int(v, 16) for v in spec["acts"]] * spec["passes"]
    want = [int(v, 16) for v in spec["want"]]
    timing = H.HbmTiming(spec["bytes_per_cycle"])
    run = await H.engine_bench(CocotbIO(dut), memories, [[(0, words)]] * len(memories),
                               int(spec["cmd"], 16), acts, len(want), spec["data_bytes"],
                               spec["addr_bits"], timing, random.Random(spec["seed"]))
    Path(spec["out"]).write_text(json.dumps({
        "equal": run.results == want, "cycles": run.cycles, "beats": run.beats,
        "first_beat": run.first_beat, "last_beat": run.last_beat,
        "utilization": [r.utilization(spec["data_bytes"], timing) for r in run.reports]}))
    assert run.results == want, "the engine's results differ from the integer model"
