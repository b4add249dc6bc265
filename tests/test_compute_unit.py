"""The COMPUTE unit sequencer against the emulator: matrix instructions of every weight
format, sparsity and output mode (MATSTREAM's weights from the channels' streams), and every
attention function, on random buffers (``sim/instruction_cases.py``), every buffer byte
compared afterwards; faults where the emulator refuses or the engine's schedule cannot
run."""

import random
import sys

import pytest

from hw.compute_unit import ComputeUnit, index_in_code
from llmacc import isa
from llmacc import layout as L
from llmacc.config import PRESETS
from llmacc.isa import AttnFunc, Buffer, Opcode, OutMode, Sparsity, WeightFormat
from llmacc.kernel import Fault
from sim.instruction_cases import InstructionCase, attn_case, mat_case
from sim.unit_harness import check_against_emulator, run_instructions

CFG = PRESETS["sim-small"].replace(act_buffer_bytes=4096, weight_buffer_bytes=4096,
                                   kv_buffer_bytes=2048, meta_buffer_bytes=2048,
                                   table_buffer_bytes=1024)
W = CFG.axi_data_bytes
#: 128-bit words: a beat-major stream holds every format and sparsity (64-bit words, four);
#: 256-bit: a beat's activation window (16 columns, dense) is part of an ACT word
CFG_128 = CFG.replace(axi_data_bits=128)
CFG_256 = CFG.replace(axi_data_bits=256)


def test_matrix_instructions_match_emulator(seed):
    """Every weight format and sparsity, MATVEC and MATMAT, every output mode."""
    rng = random.Random(seed)
    cases = []
    for fmt in WeightFormat:
        for sparsity in Sparsity:
            opcode = rng.choice((Opcode.MATVEC, Opcode.MATMAT))
            cases.append(mat_case(CFG, rng, fmt, sparsity, rng.choice(list(OutMode)), opcode))
    check_against_emulator(CFG, ComputeUnit(CFG), cases, seed)


@pytest.mark.parametrize("cfg", [CFG, CFG_128, CFG_256], ids=["64-bit", "128-bit", "256-bit"])
def test_matstream_matches_emulator(cfg, seed):
    """MATSTREAM in every format and sparsity a stream of the config's words holds, every
    output mode, one to three passes over the lanes (the later ones replayed), one to five
    tokens; activation windows of several ACT words and of part of one."""
    rng = random.Random(seed)
    cases = [mat_case(cfg, rng, fmt, sparsity, rng.choice(list(OutMode)), Opcode.MATSTREAM)
             for fmt, sparsity in L.stream_geometries(cfg.chain_len, cfg.axi_data_bits)]
    check_against_emulator(cfg, ComputeUnit(cfg), cases, seed)


@pytest.mark.parametrize("stages", [2, 4])
def test_streamed_results_in_runs(stages, seed):
    """Four collector ways (four channels, 128-bit words): every output mode, WIDE and ADD a
    whole transfer a cycle, SILU ``elementwise_stages`` results a cycle; random tile sizes
    (a last pass cut short, absent second tokens)."""
    cfg = CFG_128.replace(mem_channels=4, elementwise_stages=stages)
    assert (cfg.collector_ways, cfg.elementwise_run) == (4, stages)
    rng = random.Random(seed)
    cases = [mat_case(cfg, rng, WeightFormat.W2, Sparsity.DENSE, mode, Opcode.MATSTREAM)
             for mode in OutMode for _ in range(2)]
    check_against_emulator(cfg, ComputeUnit(cfg), cases, seed)


def test_without_the_record_path_every_matrix_streams(seed):
    """A build without the record path (``record_matrices=False``, as u280): MATSTREAM as
    before, its lanes taking the N:M indices in the codes' high bits (INT8's own bits
    there); MATVEC and MATMAT refused by the emulator and UNSUPPORTED on the unit."""
    cfg = CFG_128.replace(record_matrices=False)
    assert index_in_code(cfg)
    rng = random.Random(seed)
    held = list(L.stream_geometries(cfg.chain_len, cfg.axi_data_bits))
    combos = [(WeightFormat.INT8, Sparsity.DENSE),
              *rng.sample([c for c in held if c[1] is not Sparsity.DENSE], 2)]
    cases = [mat_case(cfg, rng, fmt, sparsity, rng.choice(list(OutMode)), Opcode.MATSTREAM)
             for fmt, sparsity in combos]
    cases += [mat_case(cfg, rng, WeightFormat.W2, Sparsity.DENSE, OutMode.WIDE, op)
              for op in (Opcode.MATVEC, Opcode.MATMAT)]
    faults = [out.fault for out in check_against_emulator(cfg, ComputeUnit(cfg), cases, seed)]
    assert faults == [Fault.NONE] * 3 + [Fault.UNSUPPORTED] * 2, f"seed {seed}"


def test_collector_ways_span_channels(seed):
    """Four channels of one lane on 64-bit words: two INT32 results a word, so two collector
    ways of two channels' lanes each (``collector_ways``, as u280's 16 ways of 6 lanes);
    without the record path, its streams pre-skewed. MATSTREAM equal to the emulator."""
    cfg = CFG.replace(mem_channels=4, record_matrices=False)
    assert (cfg.collector_ways, cfg.lanes_per_way, cfg.stream_skew) == (2, 2, cfg.chain_group)
    rng = random.Random(seed)
    cases = [mat_case(cfg, rng, fmt, sparsity, rng.choice(list(OutMode)), Opcode.MATSTREAM)
             for fmt, sparsity in L.stream_geometries(cfg.chain_len, cfg.axi_data_bits)]
    faults = [out.fault for out in check_against_emulator(cfg, ComputeUnit(cfg), cases, seed)]
    assert faults == [Fault.NONE] * len(cases), f"seed {seed}"


@pytest.mark.parametrize(("cfg", "max_keys"), [
    (CFG, 12), (CFG.replace(attention_int8_steps=1), 12),
    (CFG.replace(attention_int8_steps=1, attention_wide=True), 12),
    (CFG.replace(axi_data_bits=128, attention_int8_steps=1, attention_wide=True), 20),
    (CFG.replace(axi_data_bits=512, attention_int8_steps=1, attention_wide=True,
                 sfu_lanes=PRESETS["u280"].sfu_lanes, kv_buffer_bytes=8192), 40)],
    ids=["half-word", "whole-word", "wide", "128-bit", "512-bit"])
def test_attention_matches_emulator(cfg, max_keys, seed):
    """Every ATTN function, INT4 and INT8 keys, on half a word of codes a cycle (INT8 keys
    in two sub-steps), on whole words (one sub-step: a key a cycle where its header is in
    the other bank of the KV buffer than its payload word) and on twice a word's bytes of
    lanes (as u280 and sim-wide: an INT4 word a sub-step, an INT8 one in half the lanes);
    on 128-bit words (two KV headers a header word) and on 512-bit words (eight), the
    u280's 128 lanes and its softmax lanes (Amaranth's simulator compiles the 512-bit unit's
    expressions recursively, deeper than Python's default limit)."""
    rng = random.Random(seed)
    cases = [attn_case(cfg, rng, f, max_keys) for f in AttnFunc for _ in range(3)]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 20_000))
    try:
        check_against_emulator(cfg, ComputeUnit(cfg), cases, seed)
    finally:
        sys.setrecursionlimit(limit)


def test_compute_unit_faults(seed):
    """A descriptor that does not decode, K off the group, records off the buffers, an odd
    head size, a MATSTREAM format that the streams do not hold: the emulator refuses, the
    unit faults. A tile the engine cannot schedule runs in the emulator and is UNSUPPORTED
    here (the compiler never emits one)."""
    rng = random.Random(seed)
    cases, want = [], []

    def broken(case, fault, **fields):
        insn = isa.make(case.insn.opcode, **{**case.insn.fields, **fields})
        cases.append(InstructionCase(case.emu, insn, case.regs))
        want.append(fault)

    case = mat_case(CFG, rng, WeightFormat.W2, Sparsity.DENSE, OutMode.WIDE, Opcode.MATVEC)
    case.emu.buf[Buffer.META][case.insn.meta_addr * W + 2] = 9  # group_log2 out of range
    broken(case, Fault.PARAM)
    case = mat_case(CFG, rng, WeightFormat.MIXED4, Sparsity.DENSE, OutMode.WIDE, Opcode.MATVEC)
    broken(case, Fault.PARAM, k=case.insn.k + 8)
    case = mat_case(CFG, rng, WeightFormat.INT8, Sparsity.DENSE, OutMode.ADD, Opcode.MATMAT)
    broken(case, Fault.RANGE, out_addr=CFG.buffer_words(Buffer.ACT) - 1)
    broken(attn_case(CFG, rng, AttnFunc.SCORE), Fault.PARAM, head_dim=5)
    broken(attn_case(CFG, rng, AttnFunc.PV), Fault.RANGE,
           kv_addr=CFG.buffer_words(Buffer.KV) - 1)
    case = mat_case(CFG, rng, WeightFormat.W2, Sparsity.DENSE, OutMode.WIDE, Opcode.MATSTREAM)
    at = case.insn.meta_addr * W
    int8 = L.Descriptor(WeightFormat.INT8, Sparsity.DENSE, 5)  # 8 planes: not in 64 bits
    assert (WeightFormat.INT8, Sparsity.DENSE) not in L.stream_geometries(CFG.chain_len,
                                                                           CFG.axi_data_bits)
    case.emu.buf[Buffer.META][at:at + W] = int8.encode(W)[0]
    broken(case, Fault.UNSUPPORTED, k=64)
    assert [out.fault for out in
            check_against_emulator(CFG, ComputeUnit(CFG), cases, seed)] == want

    case = mat_case(CFG, rng, WeightFormat.W2, Sparsity.DENSE, OutMode.WIDE, Opcode.MATVEC)
    desc = L.Descriptor(WeightFormat.W2, Sparsity.N2M16, 4)  # 2 kept per group of 16 < 4 taps
    assert desc.schedule_error(CFG.chain_group)
    at = case.insn.meta_addr * W
    case.emu.buf[Buffer.META][at:at + W] = desc.encode(W)[0]
    insn = isa.make(case.insn.opcode, **{**case.insn.fields, "k": 32})  # whole groups, blocks
    out = run_instructions(CFG, ComputeUnit(CFG), [InstructionCase(case.emu, insn, case.regs)])
    assert [o.fault for o in out] == [Fault.UNSUPPORTED]


def test_a_stream_cut_short_leaves_nothing_behind(seed):
    """An error response in the middle of a MATSTREAM's weights: BUS, and the next
    MATSTREAM is the emulator's byte for byte (FAULTED emptied the streams and cleared the
    engine's partial rows and the beats' queues)."""
    rng = random.Random(seed)
    fmt, sparsity = rng.choice(list(L.stream_geometries(CFG_128.chain_len,
                                                        CFG_128.axi_data_bits)))
    cut = mat_case(CFG_128, rng, fmt, sparsity, OutMode.WIDE, Opcode.MATSTREAM)
    clean = mat_case(CFG_128, rng, fmt, sparsity, rng.choice(list(OutMode)), Opcode.MATSTREAM)
    out = run_instructions(CFG_128, ComputeUnit(CFG_128), [cut, clean], seed=seed,
                           bus_errors={0: rng.randint(1, 2)})
    assert out[0].fault == Fault.BUS, f"{Fault(out[0].fault).name} (seed {seed})"
    clean.emu.run([clean.insn], clean.regs)
    assert out[1].fault == Fault.NONE, f"seed {seed}"
    for b, want in clean.images.items():
        assert out[1].images[b] == want, f"{b.name} differs (seed {seed}, {clean.insn})"
