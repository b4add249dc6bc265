"""The cycle model (sim/cycle_model.py and sim/compute_timing.py, the emulator's clock)
calibrated against the RTL top's counters, on sim-small (make test) and sim-wide (make sim):

* data movement: every LOAD/STORE's busy cycles exactly, each program's total within 5%;
* compute: random MATVEC/MATMAT/MATSTREAM, ATTN and SFU instructions (every format,
  sparsity, output mode and function; MATSTREAM's streams in every channel), each in a
  program that loads its buffers, runs it and stores the results: the unit's busy cycles
  and the program's total within 5%.
"""

import random

import numpy as np
import pytest

from llmacc import isa
from llmacc.config import preset
from llmacc.isa import Buffer, Opcode
from sim import cycle_model as C
from sim import fuzz
from sim.emulator import Emulator
from sim.top_harness import TopHarness

TOLERANCE = 0.05
CHANNEL_BYTES = 1 << 16

#: (rows, words, byte address): single rows and many, bursts cut at 256 beats and at 4 KiB
TRANSFERS = [(1, 1, 0), (1, 8, 0), (4, 8, 0), (16, 4, 64), (8, 32, 0), (2, 200, 0),
             (1, 600, 0), (3, 300, 4096 - 64), (1, 1024, 0), (5, 3, 4096 - 8)]


def _calibrate(name: str, seed: int) -> list[str]:
    """Every mismatch beyond the tolerance, as lines (empty when the model holds)."""
    cfg = preset(name)
    rng = random.Random(seed)
    w = cfg.axi_data_bytes
    programs = []
    for op in (Opcode.LOAD, Opcode.STORE):
        for rows, words, addr in TRANSFERS:
            addr -= addr % w
            programs.append([isa.make(op, buf=Buffer.ACT, chan=rng.randrange(cfg.mem_channels),
                                      ext_addr=addr, buf_addr=0, words=words, rows=rows,
                                      ext_stride=words * w + rng.choice((0, w)))])
    programs += [fuzz.copy_program(rng, cfg, rng.randint(1, 6)) for _ in range(12)]
    problems = []
    with TopHarness(cfg, [CHANNEL_BYTES] * cfg.mem_channels, 1 << 12, seed=seed) as top:
        for index, body in enumerate(programs):
            program = fuzz.register_preamble() + body
            model = Emulator(cfg, [CHANNEL_BYTES] * cfg.mem_channels).run(program)
            rtl = top.run(isa.encode_program(program))
            for unit in ("LOAD", "STORE"):
                if model.busy[unit] != rtl.counters[f"busy_{unit.lower()}"]:
                    problems.append(f"program {index}: {unit} busy model {model.busy[unit]}, "
                                    f"RTL {rtl.counters[f'busy_{unit.lower()}']}")
            error = model.cycles / rtl.cycles - 1
            if abs(error) > TOLERANCE:
                problems.append(f"program {index}: {model.cycles} cycles modelled, "
                                f"{rtl.cycles} on the RTL ({error:+.1%})")
    return problems


def _calibrate_compute(name: str, seed: int, count: int) -> tuple[list[str], dict]:
    """Mismatches beyond the tolerance of ``count`` random compute programs, and the largest
    busy error seen per opcode."""
    cfg = preset(name)
    rng = random.Random(seed)
    chans, size = cfg.mem_channels, fuzz.CHANNEL_BYTES
    ext, out = fuzz.case_layout(cfg)
    problems, worst = [], {}
    with TopHarness(cfg, [size] * chans, 1 << 12, seed=seed) as top:
        for index in range(count):
            case = fuzz.random_compute_case(cfg, rng)
            images = fuzz.case_images(cfg, case, [bytes(size)] * chans)
            program = fuzz.register_preamble() + fuzz.case_program(cfg, case, ext, out)
            emu = Emulator(cfg, [size] * chans)
            for c, image in enumerate(images):
                emu.write_ext(c, 0, np.frombuffer(image, np.uint8))
                top.write(c, 0, image)
            model = emu.run(program)
            rtl = top.run(isa.encode_program(program))
            unit = case.insn.unit.name
            busy = rtl.counters[f"busy_{unit.lower()}"]
            what = f"{case.insn.opcode.name} {case.insn.fields}"
            for label, got, want in (("busy", model.busy[unit], busy),
                                     ("total", model.cycles, rtl.cycles)):
                error = got / want - 1
                if label == "busy":
                    op = case.insn.opcode.name
                    worst[op] = max(worst.get(op, 0.0), abs(error))
                if abs(error) > TOLERANCE:
                    problems.append(f"program {index} ({what}): {unit} {label} modelled {got}, "
                                    f"RTL {want} ({error:+.1%})")
    return problems, worst


def test_cycle_model_sim_small(sim_small_top, seed):
    problems = _calibrate("sim-small", seed)
    assert not problems, f"seed {seed}:\n" + "\n".join(problems)


def test_compute_cycles_sim_small(sim_small_top, seed):
    problems, worst = _calibrate_compute("sim-small", seed, 60)
    print(f"largest busy error per opcode: {worst}")
    assert not problems, f"seed {seed}:\n" + "\n".join(problems)


@pytest.mark.slow
def test_cycle_model_sim_wide(verilator_env, seed):
    problems = _calibrate("sim-wide", seed)
    assert not problems, f"seed {seed}:\n" + "\n".join(problems)


@pytest.mark.slow
def test_compute_cycles_sim_wide(verilator_env, seed):
    problems, worst = _calibrate_compute("sim-wide", seed, 120)
    print(f"largest busy error per opcode: {worst}")
    assert not problems, f"seed {seed}:\n" + "\n".join(problems)


def test_store_bursts_follow_the_axi_rule():
    cfg = preset("sim-small")  # 8-byte words: 512 per 4 KiB
    assert C.bursts(cfg, 0, 256) == 1 and C.bursts(cfg, 0, 257) == 2
    assert C.bursts(cfg, 4096 - 8, 2) == 2 and C.bursts(cfg, 0, 1024) == 4
    assert C.transfer_cycles(cfg, False, 0, 0, 0, 5) == C.MOVER_SETUP


def test_bandwidth_below_the_port_stretches_the_beats():
    cfg = preset("sim-small").replace(channel_gbps=0.4)  # half a 64-bit word per 100 MHz cycle
    assert C.beat_cycles(cfg, 10) == 20
    assert C.beat_cycles(preset("sim-small"), 10) == 10
