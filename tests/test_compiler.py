"""Compile -> emulate equals the integer reference bit for bit: random small models in every
scheme, across prefill and decode bucket edges, and the shipped model; compile-time errors."""

import pytest
import torch

from compiler.compile import HostInterface, compile_model
from compiler.memory_plan import CompileError
from host.device import EmulatorDevice
from llmacc import isa
from llmacc.config import preset
from quant import intref
from tests.helpers.models import check_run, random_sequences, tiny_int_model

SCHEMES = ["w2a8kv4", "w3-mixed-a8kv4+2:16", "w4-mixed-a8kv4+2:4", "w4a8+lambda2:6", "w8a8"]
#: small buckets so that short tests cross several edges: prefill 8, decode 8, 32 tokens
SMALL = preset("sim-small").replace(prefill_bucket=8, decode_bucket=8, max_seq_len=512)


@pytest.mark.parametrize("name", SCHEMES)
def test_random_model_is_bit_exact_across_bucket_edges(request, name):
    seed = request.config.llmacc_seed
    # N:16 tiles need groups of 32 on this engine: 4 kept weights per tap slot of 4 DSPs
    im = tiny_int_model(seed, name, group=32 if name.endswith(":16") else 16)
    cm = compile_model(im, SMALL, max_len=32)
    assert sorted(n for k, n in cm.programs if k == "prefill") == [1, 2, 4, 8, 16, 24, 32]
    assert sorted(n for k, n in cm.programs if k == "decode") == [8, 16, 24, 32]
    tokens = random_sequences(seed + 1, 1, 26, im.config.vocab_size)[0]
    for prompt in (3, 8, 9):  # a short program's padding, at and above the first edge
        device = EmulatorDevice(cm)
        check_run(im, device, tokens[:prompt + 17], prompt,
                   f"{name} seed {seed} prompt {prompt}")
        assert len(device.stats) == 18 and all(s.cycles > 0 for s in device.stats)


def test_short_prompts_run_short_programs(request):
    """A prompt under one prefill bucket runs the power-of-two program that holds it (one
    row for one token), exact against the integer reference; a package whose manifest
    predates short programs keeps its buckets."""
    seed = request.config.llmacc_seed
    im = tiny_int_model(seed, "w4a8", layers=1)
    cm = compile_model(im, SMALL, max_len=24)
    tokens = random_sequences(seed + 2, 1, 9, im.config.vocab_size)[0]
    for prompt, rows in ((1, 1), (2, 2), (3, 4), (5, 8)):
        assert cm.host.prefill_rows(prompt) == rows
        check_run(im, EmulatorDevice(cm), tokens[:prompt + 3], prompt,
                  f"seed {seed} prompt {prompt}")
    old = {k: v for k, v in cm.host.to_dict().items() if k != "prefill_min"}
    assert HostInterface.from_dict(old).prefill_lengths() == [8, 16, 24]
    assert compile_model(im, SMALL, max_len=24, prefill_min=8,
                         lengths={"decode": []}).host.prefill_lengths() == [8, 16, 24]
    with pytest.raises(CompileError, match="shortest prefill 0"):
        compile_model(im, SMALL, max_len=24, prefill_min=0)


def test_sharing_devices_and_reusing_buckets(request):
    """One device runs two prompts back to back: stale cache rows past the new length are
    masked, so the second run is exact too."""
    seed = request.config.llmacc_seed
    im = tiny_int_model(seed, "w4a8", layers=1)
    cm = compile_model(im, SMALL, max_len=24)
    device = EmulatorDevice(cm)
    long = random_sequences(seed + 3, 1, 20, im.config.vocab_size)[0]
    short = random_sequences(seed + 4, 1, 12, im.config.vocab_size)[0]
    check_run(im, device, long, 11, "first prompt")
    check_run(im, device, short, 5, "second prompt")


def test_u280_config_places_weights_over_many_channels(request):
    seed = request.config.llmacc_seed
    im = tiny_int_model(seed, "w2a8kv4", dim=64, heads=4, kv_heads=2, hidden=172)
    cm = compile_model(im, preset("u280"), max_len=64, lengths={"prefill": [64],
                                                        "decode": [16]})
    channels = {region.chan for region, _ in cm.image}
    assert len(channels) > 8
    device = EmulatorDevice(cm)
    tokens = random_sequences(seed + 5, 1, 40, im.config.vocab_size)[0]
    cache = intref.IntKVCache.empty(im.config, len(tokens))
    assert torch.equal(device.prefill(tokens), im.forward(torch.tensor(tokens), cache))


U280_SHAPE = {"dim": 64, "heads": 4, "kv_heads": 2, "hidden": 172}


@pytest.mark.parametrize("name, cfg, shape", [
    ("w2a8kv4", SMALL, {}), ("w3-mixed-a8kv4", SMALL, {}), ("w2a8kv4+2:4", SMALL, {}),
    ("w8a8", preset("u280"), U280_SHAPE),
    ("w4-mixed-a8kv4+2:4", preset("u280"), {**U280_SHAPE, "group": 32}),
    # the u280 performance case: W2 in groups of 128 (K = 64 and 172 padded to 128 and 256)
    ("w2a8kv4", preset("u280"), {**U280_SHAPE, "group": 128})])
def test_streamed_weights_are_bit_exact(request, name, cfg, shape):
    """``stream_weights``: every linear whose format streams on the config becomes MATSTREAM
    tiles (weight streams in every channel, the descriptor alone in META); the emulator
    runs the model equal to the integer reference, prefill and decode."""
    seed = request.config.llmacc_seed
    im = tiny_int_model(seed, name, layers=1, **shape)
    cm = compile_model(im, cfg, max_len=16, stream_weights=True)
    ops = [i.opcode for p in cm.programs.values() for i in p.instructions]
    assert ops.count(isa.Opcode.MATSTREAM) >= 7 * len(cm.programs), name  # every layer linear
    streams = [r for r, _ in cm.image if r.nbytes and r.addr % 4096 == 0]
    assert {r.chan for r in streams} == set(range(cfg.mem_channels))
    tokens = random_sequences(seed + 6, 1, 14, im.config.vocab_size)[0]
    check_run(im, EmulatorDevice(cm), tokens, 5, f"{name} on {cfg.name} streamed, seed {seed}")


def test_storage_with_buckets_is_much_smaller(request):
    im = tiny_int_model(request.config.llmacc_seed, "w8a8", layers=1)
    cm = compile_model(im, SMALL.replace(prefill_bucket=16, decode_bucket=8), max_len=64,
                       prefill_min=16)  # the buckets alone, no short prefill programs
    st = cm.storage()
    assert len(cm.programs) == 4 + 8
    assert st["per_length_bytes"] > 10 * st["bucket_bytes"]


@pytest.mark.parametrize("change,match", [
    ({"axi_data_bits": 512}, "head_dim 8 x 4 B is not a multiple of the 64-byte"),
    ({"weight_buffer_bytes": 64}, "does not fit half of the buffers"),
    ({"act_buffer_bytes": 1024}, "ACT buffer: .* needs"),
])
def test_unsupported_shapes_fail_at_compile_time(request, change, match):
    im = tiny_int_model(request.config.llmacc_seed, "w8a8", layers=1)
    with pytest.raises(CompileError, match=match):
        compile_model(im, SMALL.replace(**change), max_len=16)


def test_context_longer_than_the_model_is_refused(request):
    im = tiny_int_model(request.config.llmacc_seed, "w8a8", layers=1)
    with pytest.raises(CompileError, match="at most 64"):
        compile_model(im, SMALL, max_len=65)


def test_tiles_the_engine_cannot_schedule_are_refused(request):
    """2:16 sparsity in groups of 16 leaves 2 kept weights per group: fewer than the 4 DSPs of
    a sim-small tap slot, so the RTL could not run it; the compiler says so."""
    im = tiny_int_model(request.config.llmacc_seed, "w3-mixed-a8kv4+2:16", layers=1)
    with pytest.raises(CompileError, match="tap spacing 4"):
        compile_model(im, SMALL, max_len=16)


@pytest.mark.parametrize("name, stream, match", [
    ("w8a8", False, "config u280 has no record path .*drop --no-stream-weights"),
    ("w8a8+2:4", True, "INT8 weights with N2M4 sparsity do not fit a 512-bit weight stream")])
def test_without_the_record_path_what_does_not_stream_is_refused(request, name, stream, match):
    """u280 has no MATVEC/MATMAT (``record_matrices``): the record path asked for, or a
    format its streams do not hold (INT8 with N:M), is a compile error."""
    im = tiny_int_model(request.config.llmacc_seed, name, layers=1, **U280_SHAPE, group=64)
    with pytest.raises(CompileError, match=match):
        compile_model(im, preset("u280"), max_len=16, stream_weights=stream)


@pytest.mark.parametrize("name", ["w2a8kv4", "w4-mixed-a8kv4+2:4", "w8a8+4:16"])
def test_the_step_plan_from_shapes_equals_the_placed_models(request, name):
    """``llmacc perf`` checks a model's buffers from its shapes alone (StepDims.of_shape):
    they must be the numbers that quantizing and placing the model gives."""
    from compiler.placement import place
    from compiler.step_buffers import StepDims
    from quant import schemes

    seed = request.config.llmacc_seed
    group = 32 if name.endswith(":16") else 16
    im = tiny_int_model(seed, name, group=group)
    mc = im.config
    from_shapes = StepDims.of_shape(SMALL, schemes.parse(name, group=group), mc.dim,
                                    mc.hidden_dim, mc.n_heads, mc.n_kv_heads, mc.vocab_size)
    assert from_shapes == StepDims.of_placement(im, place(im, SMALL)), f"seed {seed}"


def test_decode_prepares_the_next_kv_head_while_the_heads_run(request):
    """A decode step emits each KV head's preparation (RoPE, key transform, KVQUANT, the new
    rows' STOREs, the queries' QUANT8) just before its heads, and each instruction touches
    its heads' slices only: so between a layer's first and last ATTN no SFU instruction
    waits on the compute unit, and the SFU runs ahead while the heads before run."""
    seed = request.config.llmacc_seed
    im = tiny_int_model(seed, "w2a8kv4", heads=4, kv_heads=4, layers=2)
    program = compile_model(im, SMALL, max_len=16).program("decode", 8).instructions
    compute = 1 << isa.Unit.COMPUTE.value
    attn = [j for j, i in enumerate(program) if i.opcode is isa.Opcode.ATTN]
    per_layer = 2 * im.config.n_heads
    for layer in range(im.config.n_layers):
        lo, hi = attn[layer * per_layer], attn[(layer + 1) * per_layer - 1]
        block = program[lo:hi]
        kvquant = [i for i in block if i.opcode is isa.Opcode.SFU
                   and i.func is isa.SfuFunc.KVQUANT]
        assert len(kvquant) == 2 * (im.config.n_kv_heads - 1), f"layer {layer}"
        waiting = [j for j, i in enumerate(block, lo)
                   if i.opcode is isa.Opcode.SFU and i.wait & compute]
        assert not waiting, f"seed {seed}: SFU instructions {waiting} wait on ATTN"
