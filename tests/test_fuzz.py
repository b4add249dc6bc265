"""Instruction fuzzing on the RTL top against the emulator (:mod:`sim.fuzz`): random legal
programs of every instruction class and random illegal words. ``make test`` runs a quick
subset; ``make sim`` runs 10,000 programs on sim-small in shards (one per pytest-xdist
worker) and 1,000 on sim-wide."""

import random

import pytest

from llmacc import isa
from llmacc.config import preset
from sim import fuzz

FULL_PROGRAMS, SHARDS = 10_000, 4
WIDE_PROGRAMS = 1_000


def _record(record_property, report: fuzz.FuzzReport) -> None:
    record_property("fuzz_programs", sum(report.programs.values()))
    record_property("fuzz_instructions", report.instructions)
    record_property("sim_cycles", report.cycles)
    record_property("sim_wall_s", round(report.wall_s, 3))


def test_illegal_words_are_refused_by_the_decoder(seed):
    """Each drawn illegal word has the one kind of fault it was drawn for."""
    rng = random.Random(seed)
    for kind in fuzz.DECODE_FAULTS:
        for _ in range(50):
            word = fuzz.illegal_word(rng, kind)
            with pytest.raises(isa.IllegalInstruction):
                isa.decode(word)
            assert fuzz._fault_of(word) is kind, (kind, hex(word), seed)


@pytest.mark.verilator
def test_fuzz_quick(sim_small_top, seed, record_property):
    report = fuzz.run(preset("sim-small"), seed, 150, name="fuzz-quick")
    assert set(report.programs) == set(fuzz.KINDS), report.programs
    _record(record_property, report)


@pytest.mark.slow
@pytest.mark.verilator
@pytest.mark.parametrize("shard", range(SHARDS))
def test_fuzz_sim_small(shard, sim_small_top, seed, record_property):
    report = fuzz.run(preset("sim-small"), seed * SHARDS + shard, FULL_PROGRAMS // SHARDS,
                      name=f"fuzz-sim-small-{shard}")
    assert sum(report.programs.values()) == FULL_PROGRAMS // SHARDS
    _record(record_property, report)


@pytest.mark.slow
@pytest.mark.verilator
def test_fuzz_sim_wide(verilator_env, seed, record_property):
    report = fuzz.run(preset("sim-wide"), seed, WIDE_PROGRAMS, name="fuzz-sim-wide")
    assert sum(report.programs.values()) == WIDE_PROGRAMS, report.programs
    assert set(report.programs) == set(fuzz.KINDS), report.programs
    _record(record_property, report)


@pytest.mark.verilator
def test_a_mismatch_names_the_first_differing_element(sim_small_top, seed, tmp_path,
                                                      monkeypatch):
    """Corrupt what the emulator expects of a matrix output: the report names the buffer
    word, the output row and element with both values, the instruction, and writes a
    waveform of the failing program."""
    monkeypatch.setattr(fuzz, "WAVES_DIR", tmp_path)
    real_draw = fuzz.draw

    def corrupted(cfg, rng, kind):
        prog = real_draw(cfg, rng, "compute")
        while prog.focus.opcode not in (isa.Opcode.MATVEC, isa.Opcode.MATMAT):
            prog = real_draw(cfg, rng, "compute")
        w = cfg.axi_data_bytes
        _, out = fuzz.case_layout(cfg)
        at = out[isa.Buffer.ACT] + prog.focus.fields["out_addr"] * w  # row 0, element 0
        wrong = bytearray(prog.expected[1])
        wrong[at] ^= 0x01
        prog.expected[1] = bytes(wrong)
        return prog

    monkeypatch.setattr(fuzz, "draw", corrupted)
    with pytest.raises(fuzz.FuzzMismatch) as info:
        fuzz.run(preset("sim-small"), seed, 1, name="broken")
    text = str(info.value)
    assert "output row 0 element 0" in text and "written by Instruction(opcode=<Opcode.MAT" \
        in text, text
    assert f"seed {seed}" in text
    waves = list(tmp_path.iterdir())
    assert len(waves) == 1 and waves[0].stat().st_size > 0 and waves[0].name in text
