"""The emulator: dependency tokens protect every hazard (random unit interleavings give the
in-order result; without tokens they do not), and bad programs fail with clear errors."""

import dataclasses
import random

import pytest
import torch

from compiler.compile import compile_model
from host.device import EmulatorDevice
from llmacc import isa
from llmacc.config import preset
from llmacc.isa import Buffer, Opcode, Reg, SysFunc, Unit
from sim.emulator import Emulator, EmulatorError, _DecodedRecords, _query_head_pairs
from tests.helpers.models import random_sequences, tiny_int_model

CFG = preset("sim-small").replace(prefill_bucket=8, decode_bucket=8)


@pytest.fixture(scope="module")
def compiled(request):
    im = tiny_int_model(request.config.llmacc_seed, "w4-mixed-a8kv4", layers=1)
    return compile_model(im, CFG, max_len=24)


def _interleaved_logits(cm, program, tokens, regs, rng, strip=False):
    dev = EmulatorDevice(cm)
    dev._stage_tokens(tokens)
    insns = program.instructions
    if strip:
        insns = [dataclasses.replace(i, wait=0, release=0) for i in insns]
    dev.emu.run_interleaved(insns, regs, rng)
    return dev._logits(len(tokens))


def test_random_interleavings_match_program_order(compiled, seed):
    tokens = random_sequences(seed, 1, 13, compiled.model.config.vocab_size)[0]
    ref = EmulatorDevice(compiled).prefill(tokens)
    program = compiled.program("prefill", 16)
    for k in range(3):
        rng = random.Random(seed + k)
        got = _interleaved_logits(compiled, program, tokens, {Reg.POS: 0, Reg.SEQ_LEN: 13}, rng)
        assert torch.equal(got, ref), f"seed {seed + k}"


def test_without_tokens_interleavings_break(compiled, seed):
    tokens = random_sequences(seed, 1, 13, compiled.model.config.vocab_size)[0]
    ref = EmulatorDevice(compiled).prefill(tokens)
    program = compiled.program("prefill", 16)
    broken = 0
    for k in range(4):
        try:
            got = _interleaved_logits(compiled, program, tokens, {Reg.POS: 0, Reg.SEQ_LEN: 13},
                                      random.Random(seed + k), strip=True)
            broken += not torch.equal(got, ref)
        except EmulatorError:
            broken += 1
    assert broken >= 3


def _sys(func, **kw):
    return isa.make(Opcode.SYS, func=func, **kw)


def _load(**kw):
    fields = dict(buf=Buffer.ACT, chan=0, ext_addr=0, buf_addr=0, words=1, rows=1)
    fields.update(kw)
    return isa.make(Opcode.LOAD, **fields)


def test_wait_without_release_is_a_deadlock(seed):
    emu = Emulator(CFG, [1024])
    store = isa.make(Opcode.STORE, wait=1 << Unit.LOAD.value, buf=Buffer.ACT, words=1, rows=1)
    with pytest.raises(EmulatorError, match="instruction 0 .*deadlock"):
        emu.run([store])
    with pytest.raises(EmulatorError, match="deadlock"):
        emu.run_interleaved([store], None, random.Random(seed))


def test_unconsumed_tokens_are_an_error():
    emu = Emulator(CFG, [1024])
    with pytest.raises(EmulatorError, match="unconsumed tokens"):
        emu.run([_load(release=1 << Unit.COMPUTE.value), _sys(SysFunc.HALT)])


def test_more_tokens_than_the_counters_hold_is_an_error():
    """A unit may owe another at most ``token_limit`` tokens in program order; one more
    could wrap the controller's counter (a deadlock on the RTL, none on the emulator)."""
    emu = Emulator(CFG, [1024])
    n = emu.token_limit
    loads = [_load(release=1 << Unit.STORE.value)] * n
    stores = [isa.make(Opcode.STORE, buf=Buffer.ACT, words=1, rows=1, ext_addr=0,
                       wait=1 << Unit.LOAD.value)] * n
    emu.run(loads + stores + [_sys(SysFunc.HALT)])
    emu.run_interleaved(loads + stores + [_sys(SysFunc.HALT)], None, random.Random(1))
    over = loads + loads[:1] + stores + stores[:1] + [_sys(SysFunc.HALT)]
    with pytest.raises(EmulatorError, match=f"more than {n} tokens from LOAD to STORE"):
        emu.run(over)
    with pytest.raises(EmulatorError, match=f"instruction {n} .*more than {n} tokens"):
        emu.run_interleaved(over, None, random.Random(1))


def test_out_of_range_accesses_are_errors():
    emu = Emulator(CFG, [1024])
    words = CFG.buffer_words(Buffer.ACT)
    with pytest.raises(EmulatorError, match="ACT buffer: words"):
        emu.run([_load(buf_addr=words - 1, words=2)])
    with pytest.raises(EmulatorError, match="leaves channel 0"):
        emu.run([_load(ext_addr=1016, words=2)])
    with pytest.raises(EmulatorError, match="whole number of 8-byte AXI words"):
        emu.run([_load(ext_addr=1020, words=1)])
    with pytest.raises(EmulatorError, match="whole number of 8-byte AXI words"):
        emu.run([_load(ext_addr=0, words=1, rows=2, ext_stride=12)])
    with pytest.raises(EmulatorError, match="channel 1 is not mapped"):
        emu.run([_load(chan=1)])


def test_registers_and_seq_rows():
    emu = Emulator(CFG, [4096])
    emu.write_ext(0, 0, bytes(range(256)) * 16)
    prog = [_sys(SysFunc.SETREG, reg=Reg.SEQ_LEN, imm=3),
            _load(words=1, rows=100, rows_src=isa.LenSrc.SEQ, ext_stride=16),
            _sys(SysFunc.HALT)]
    emu.run(prog)
    act = emu.buf[Buffer.ACT]
    w = CFG.axi_data_bytes
    assert emu.regs[Reg.SEQ_LEN] == 3
    assert list(act[:3 * w]) == [b for r in range(3) for b in range(16 * r, 16 * r + w)]
    assert not act[3 * w:].any()


def test_matvec_without_the_record_path_is_refused():
    emu = Emulator(preset("u280"), [1024])
    with pytest.raises(EmulatorError, match="instruction 0 \\(MATVEC\\): config u280 has no "
                       "record path"):
        emu.run([isa.make(Opcode.MATVEC, k=16, n=1, m=1)])


def test_empty_weight_descriptor_is_reported():
    emu = Emulator(CFG, [1024])
    mat = isa.make(Opcode.MATVEC, k=16, n=1, m=1)
    with pytest.raises(EmulatorError, match="instruction 0 \\(MATVEC\\): weight descriptor"):
        emu.run([mat])


@pytest.mark.parametrize("name", ["sim-small", "u280"])
def test_matstream_equals_matmat_on_the_same_tile(name, seed):
    """MATSTREAM, its weights read from every channel's beat-major stream, writes what
    MATMAT writes from the WGT and META records of the same tile, in every format and
    sparsity a stream holds and every output mode; the streams' bytes live in the cache
    until a write to them (u280 with the record path it is built without, for MATMAT)."""
    from llmacc import layout as L
    from sim.instruction_cases import mat_case

    cfg = preset(name).replace(record_matrices=True)
    rng = random.Random(seed)
    combos = list(L.stream_geometries(cfg.chain_len, cfg.axi_data_bits))
    assert len(combos) >= 4
    for fmt, sp in combos:
        mode = rng.choice(list(isa.OutMode))
        case_seed = rng.randrange(1 << 30)
        got = []
        for op in (Opcode.MATMAT, Opcode.MATSTREAM):
            torch.manual_seed(case_seed)
            case = mat_case(cfg, random.Random(case_seed), fmt, sp, mode, op, streamable=True)
            stats = case.emu.run([case.insn, _sys(SysFunc.HALT)])
            got.append(case.emu.buf[Buffer.ACT].copy())
        assert (got[0] == got[1]).all(), (fmt, sp, mode, seed)
        assert stats.cycles > 0 and stats.macs > 0
        # the stream changes under the cache: the next run decodes the new bytes
        emu, insn = case.emu, case.insn
        at = insn.page * 4096
        emu.write_ext(0, at, bytes(emu.ext[0][at:at + cfg.axi_data_bytes] ^ 0xFF))
        assert emu.weights.misses == 1 and not len(emu.weights)


def test_decode_interleavings_match_program_order(compiled, seed):
    """A decode step prepares each KV head just before its heads run; its tokens alone keep
    the SFU working ahead from breaking it: random interleavings give the in-order logits."""
    tokens = random_sequences(seed, 1, 12, compiled.model.config.vocab_size)[0]
    ref = EmulatorDevice(compiled)
    ref.prefill(tokens[:-1])
    want = ref.decode(tokens[-1], len(tokens) - 1)
    program = compiled.program("decode", 16)
    for k in range(3):
        dev = EmulatorDevice(compiled)
        dev.prefill(tokens[:-1])
        dev._stage_tokens(tokens[-1:])
        regs = {Reg.POS: len(tokens) - 1, Reg.SEQ_LEN: len(tokens)}
        dev.emu.run_interleaved(program.instructions, regs, random.Random(seed + k))
        assert torch.equal(dev._logits(1)[0], want), f"seed {seed + k}"


def test_query_heads_group_only_where_no_write_meets_a_read(compiled):
    """A decode step's SCORE_SOFTMAX/PV pairs of one KV head run together (two query heads
    a KV head here; the interleaving test above checks the grouped ``run`` against one
    instruction at a time); a pair whose queries lie where an earlier pair wrote does not."""
    program = compiled.program("decode", 16).instructions
    w = CFG.axi_data_bytes
    starts = [i for i in range(len(program)) if len(_query_head_pairs(program, i, w)) == 2]
    assert len(starts) == compiled.model.config.n_kv_heads * compiled.model.config.n_layers
    i = starts[0]
    (_, first_pv), (second, _) = _query_head_pairs(program, i, w)
    clash = dataclasses.replace(second, fields={**second.fields, "q_addr": first_pv.dst})
    assert len(_query_head_pairs([*program[:i + 2], clash, *program[i + 3:]], i, w)) == 1


def test_decoded_records_follow_the_bytes(seed):
    """A decode is kept under the bytes it came from: new bytes at the same place are decoded
    again, equal bytes anywhere are not, and the budget drops the oldest."""
    calls = []

    def decode(raw, scale):
        calls.append(raw.tobytes())
        return (torch.from_numpy(raw.astype("int64")) * scale,)

    gen = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (4, 16), generator=gen, dtype=torch.uint8).numpy()
    memo = _DecodedRecords(budget=3 * (64 + 64 * 8))
    first = memo(decode, raw, 3)[0]
    assert memo(decode, raw.copy(), 3)[0] is first and len(calls) == 1, f"seed {seed}"
    assert torch.equal(memo(decode, raw, 5)[0], first // 3 * 5) and len(calls) == 2
    raw[0, 0] ^= 1
    assert torch.equal(memo(decode, raw, 3)[0], torch.from_numpy(raw.astype("int64")) * 3)
    assert len(calls) == 3
    memo(decode, raw[::-1].copy(), 3)  # a fourth record: the budget drops the oldest
    memo(decode, raw, 3)
    raw[0, 0] ^= 1
    memo(decode, raw, 3)
    assert len(calls) == 5 and memo.used <= memo.budget
