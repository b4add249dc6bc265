"""The accelerator top: whole-top lint, and programs run through the Verilated kernel (AXI RAM
models, the AXI4-Lite host) against the emulator, byte for byte, faults included."""

import random

import numpy as np
import pytest
from amaranth.hdl import Value
from amaranth.sim import Simulator

from hw.accelerator import HALT_WORD, Accelerator, ProgramFetch
from llmacc import isa
from llmacc import layout as L
from llmacc.config import PRESETS
from llmacc.isa import (
    AttnFunc,
    Opcode,
    OutMode,
    SfuFunc,
    Sparsity,
    SysFunc,
    WeightFormat,
)
from llmacc.kernel import Fault, status_word
from sim import verilator
from sim.emulator import Emulator, EmulatorError
from sim.fuzz import (
    CHANNEL_BYTES,
    case_config,
    case_images,
    case_layout,
    case_program,
    copy_program,
    register_preamble,
)
from sim.instruction_cases import InstructionCase, attn_case, mat_case, sfu_case
from sim.top_harness import RunResult, TopHarness

CFG = PRESETS["sim-small"]
CASE_CFG = case_config(CFG)


#: The U280 top with 32 of its 96 engine lanes (instances of one module), one per channel:
#: Verilator's lint of the whole top needs more than 14 GB and 12 minutes. Channels, data
#: widths, buffers and chain length are the U280's.
U280_LINT = PRESETS["u280"].replace(name="u280-lint", mv_rows=32)


# Both in `make sim`: the U280 top takes minutes to convert (its 5.5 MiB of buffers are
# written out word by word as zero initial values), and sim-small's lint about two minutes of
# the 15 that `make test` may take (its Verilator build runs there, in the tests below).
@pytest.mark.slow
@pytest.mark.parametrize("cfg", [CFG, U280_LINT], ids=["sim-small", "u280"])
def test_top_lints_clean(cfg, verilator_env, tmp_path):
    """``verilator --lint-only -Wall`` on the whole top, with only the commented waivers."""
    run = verilator.lint(Accelerator(cfg), "llmacc_top", tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]


def _faulty(rng: random.Random, program: list[isa.Instruction], kind: Fault) -> tuple[
        list[isa.Instruction], int]:
    """``program`` made to raise ``kind``; returns it and the faulting pc. ALIGN and RANGE
    break one LOAD/STORE; PARAM inserts a SYNC (so that everything before has run), a RoPE
    of an odd head size and another SYNC (so that nothing after it runs while the SFU checks
    the parameters) before one LOAD."""
    if kind is Fault.PARAM:
        at = rng.choice([i for i, insn in enumerate(program) if insn.opcode is Opcode.LOAD])
        sync = isa.make(Opcode.SYS, func=SysFunc.SYNC)
        stop = [sync, isa.make(Opcode.SFU, func=SfuFunc.ROPE, rows=1, length=6, imm=3), sync]
        return program[:at] + stop + program[at:], at + 1
    at = rng.choice([i for i, insn in enumerate(program)
                     if insn.opcode in (Opcode.LOAD, Opcode.STORE)])
    insn = program[at]
    fields = dict(insn.fields)
    if kind is Fault.ALIGN:
        fields["ext_addr"] += 4
    else:
        fields["buf_addr"] = CFG.buffer_words(insn.buf) - 1
        fields["words"] = 2
    broken = isa.make(insn.opcode, wait=insn.wait, release=insn.release, **fields)
    return program[:at] + [broken] + program[at + 1:], at


@pytest.mark.verilator
def test_top_runs_programs_like_the_emulator(sim_small_top, seed):
    """Runs in one simulation: good programs, one per fault kind (each must stop at the
    faulting instruction with the right status, having done exactly what the emulator did
    before it), an illegal word, and a good program after them (start clears the faults)."""
    rng = random.Random(seed)
    emu = Emulator(CFG, [CHANNEL_BYTES] * CFG.mem_channels)
    images = [bytes(rng.getrandbits(8) for _ in range(CHANNEL_BYTES))
              for _ in range(CFG.mem_channels)]
    for c, image in enumerate(images):
        emu.write_ext(c, 0, image)
    runs, expected = [], []

    def add_run(program, status, words=None):
        blob = isa.encode_program(program) if words is None else b"".join(
            w.to_bytes(16, "little") for w in words)
        runs.append({"program": blob.hex()})
        snapshot = [emu.read_ext(c, 0, CHANNEL_BYTES).tobytes()
                    for c in range(CFG.mem_channels)]
        expected.append((status, snapshot))

    def copies(pairs: int) -> list[isa.Instruction]:
        """A copy program that sets every register first: a faulting run's SETREGs issued
        before its fault shows are not the emulator's, and the registers persist."""
        return register_preamble() + copy_program(rng, CFG, pairs)

    def good_run():
        program = copies(rng.randint(3, 8))
        emu.run(program)
        add_run(program, status_word())

    good_run()
    for kind in (Fault.ALIGN, Fault.RANGE, Fault.PARAM):
        program, at = _faulty(rng, copies(4), kind)
        if kind is not Fault.PARAM:
            with pytest.raises(EmulatorError, match=f"instruction {at} "):
                emu.run(program)
        else:  # what runs before the RoPE (the last STORE's token is left over)
            try:
                emu.run(program[:at])
            except EmulatorError as exc:
                assert "unconsumed tokens" in str(exc)
        add_run(program, status_word(kind, at))
    # An illegal word: the word before it may be a SETREG or the first LOAD, so no STORE
    # runs and the channels stay as they are.
    words = [isa.encode(i) for i in copy_program(rng, CFG, 2)]
    words[1] = min(set(range(16)) - {o.value for o in isa.Opcode})  # an opcode with no class
    add_run(None, status_word(Fault.OPCODE, 1), words=words)
    good_run()
    good_run()

    _run_top(seed, images, runs, expected, max_cycles=200_000)


def _run_top(seed: int, images: list[bytes], runs: list[dict],
             expected: list[tuple[int, list[bytes]]], max_cycles: int) -> list[RunResult]:
    """Run the programs of ``runs`` one after another on the Verilated top, starting from
    the channel ``images``, with the memories pausing at random; each must end with its
    expected status and channel bytes. Returns the runs' status, cycles and counters."""
    bases = [0x1040 + 0x1000 * c for c in range(len(images))]  # off the 4 KiB grid, as XRT
    results = []
    with TopHarness(CFG, [b + CHANNEL_BYTES for b in bases], 0x2010 + (1 << 12), stall=0.2,
                    seed=seed) as top:
        for c, image in enumerate(images):
            top.write(c, bases[c], image)
        for index, (run, (status, channels)) in enumerate(zip(runs, expected, strict=True)):
            for c, image in enumerate(run.get("channels", [])):
                top.write(c, bases[c], bytes.fromhex(image))
            got = top.run(bytes.fromhex(run["program"]), max_cycles=max_cycles, bases=bases,
                          program_base=0x2010)
            results.append(got)
            assert got.status == status, (f"run {index}: status {got.status:#x}, expected "
                                          f"{status:#x} (seed {seed})")
            for c, want in enumerate(channels):
                have = top.read(c, bases[c], CHANNEL_BYTES)
                if have != want:
                    diff = np.flatnonzero(np.frombuffer(have, np.uint8)
                                          != np.frombuffer(want, np.uint8))
                    raise AssertionError(
                        f"run {index}: channel {c} differs from the emulator at {diff.size} "
                        f"bytes, first {int(diff[0]):#x} (seed {seed})")
            assert got.cycles > 0
    return results


@pytest.mark.verilator
def test_top_runs_compute_instructions_like_the_emulator(sim_small_top, seed):
    """Every SFU function, matrix instructions of every format and mode (MATSTREAM's
    weights streamed from every channel through its read-port share), every attention
    function, and faulting ones, through the whole top (AXI in, units, AXI out) in one
    simulation; channel bytes and status equal the emulator's after each program."""
    rng = random.Random(seed)
    cases = [sfu_case(CASE_CFG, rng, f) for f in SfuFunc]
    cases += [mat_case(CASE_CFG, rng, fmt, rng.choice(list(Sparsity)), rng.choice(list(OutMode)),
                       rng.choice((Opcode.MATVEC, Opcode.MATMAT))) for fmt in WeightFormat]
    cases += [mat_case(CASE_CFG, rng, fmt, sparsity, rng.choice(list(OutMode)), Opcode.MATSTREAM)
              for fmt, sparsity in L.stream_geometries(CFG.chain_len, CFG.axi_data_bits)]
    cases += [attn_case(CASE_CFG, rng, f) for f in AttnFunc]
    broken = sfu_case(CASE_CFG, rng, SfuFunc.ROPE)
    cases.append(InstructionCase(broken.emu, isa.make(Opcode.SFU, **{
        **broken.insn.fields, "imm": 3}), broken.regs))
    ext, out = case_layout(CFG)
    emu = Emulator(CFG, [CHANNEL_BYTES] * CFG.mem_channels)
    runs, expected, lengths = [], [], []
    for case in cases:
        for b, image in case.images.items():
            emu.write_ext(0, ext[b], image[:CASE_CFG.buffer_words(b) * CFG.axi_data_bytes])
        start = [emu.read_ext(c, 0, CHANNEL_BYTES).tobytes() for c in range(CFG.mem_channels)]
        start = case_images(CFG, case, start)
        for c, image in enumerate(start):
            emu.write_ext(c, 0, np.frombuffer(image, np.uint8))
        program = case_program(CFG, case, ext, out)
        lengths.append(len(program))
        status = status_word()
        try:
            emu.run(program)
        except EmulatorError as exc:
            pc = int(str(exc).split()[1])
            status = status_word(Fault.PARAM, pc)
        runs.append({"program": isa.encode_program(program).hex(),
                     "channels": [image.hex() for image in start]})
        expected.append((status, [emu.read_ext(c, 0, CHANNEL_BYTES).tobytes()
                                  for c in range(CFG.mem_channels)]))
    results = _run_top(seed, [bytes(CHANNEL_BYTES)] * CFG.mem_channels, runs, expected,
                       max_cycles=400_000)
    for case, got, length in zip(cases, results, lengths, strict=True):  # the counters
        c = got.counters
        unit = case.insn.unit.name.lower()
        assert 0 < c[f"busy_{unit}"] < got.cycles, (case.insn, c)
        assert c["busy_load"] > 0 and c["stall_" + unit] > 0, (case.insn, c)
        if got.status == status_word():  # every word, HALT included, was dispatched
            assert c["busy_store"] > 0 and c["dispatched"] == length, (case.insn, c)


@pytest.mark.parametrize("data_bits", [64, 128, 256])
def test_program_fetch_word_widths(data_bits, seed):
    """The fetch turns AXI beats of any width into instruction words, then one HALT; data
    past the program's end (a wide last beat) is dropped."""
    rng = random.Random(seed)
    cfg = CFG.replace(axi_data_bits=data_bits)
    dut = ProgramFetch(cfg)
    words = [rng.getrandbits(128) for _ in range(rng.randint(1, 9))]
    w = data_bits // 8
    blob = b"".join(x.to_bytes(16, "little") for x in words)
    blob += bytes(rng.getrandbits(8) for _ in range(-len(blob) % w))
    beats = [int.from_bytes(blob[i:i + w], "little") for i in range(0, len(blob), w)]
    got, commands = [], []

    async def bench(ctx):
        ctx.set(dut.words, len(words))
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.cmd.ready, 1)
        pending = list(beats)
        for _ in range(200):
            ctx.set(dut.insn.ready, rng.random() < 0.7)
            ctx.set(dut.data.valid, bool(pending))
            if pending:
                ctx.set(dut.data.payload, pending[0])
            _, _, cmd, beats_asked, took, valid, word = await ctx.tick().sample(
                dut.cmd.valid, dut.cmd.payload.beats, dut.data.ready, dut.insn.valid,
                Value.cast(dut.insn.payload))
            if cmd:
                commands.append(beats_asked)
            if pending and took:
                pending.pop(0)
            if valid and ctx.get(dut.insn.ready):
                got.append(word)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert commands == [len(beats)], f"seed {seed}"
    assert got == [*words, HALT_WORD], f"seed {seed}"
