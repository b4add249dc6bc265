"""``llmacc perf`` and the performance model: the last line's format, the roofline never
beaten, the model's dependence on bytes (formats, sparsity, Lambda attention), and bad
input."""

import re

import pytest

from llmacc import cli
from llmacc.config import preset
from sim import perf_model as P

SHAPE = P.MODELS["llama2-7b"]


def test_perf_prints_the_table_and_writes_the_plots(tmp_path, capsys):
    assert cli.main(["perf", "--config", "u280", "--model", "llama2-7b", "--scheme", "w2a8kv4",
                     "--context", "512", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    m = re.fullmatch(r"decode_tok_s=([\d.]+) roofline_fraction=([\d.]+)", last)
    assert m, last
    e = P.decode(preset("u280"), SHAPE, "w2a8kv4", 512)  # the RTL as built, not the design
    assert float(m.group(1)) == pytest.approx(e.rtl_tok_s, rel=0.01)
    assert float(m.group(2)) == pytest.approx(e.rtl_tok_s / e.roofline_tok_s, rel=0.01)
    assert f"design estimate {e.tok_s:.3g}" in out
    assert "FlightLLM 55 tok/s" in out and "AccLLM" in out
    pre = P.prefill(preset("u280"), SHAPE, "w2a8kv4", 512)
    assert f"prefill of 512 tokens: RTL as built {pre.rtl_seconds:.4g} s" in out
    # what paces attention: a KV head's cycles on each unit, the largest named
    from quant import schemes
    h = P.kv_head_paces(preset("u280"), schemes.parse(P.case_scheme(preset("u280"), "w2a8kv4")),
                        SHAPE, 1, 512)
    paces = {"compute": h.compute, "loads": h.loads, "SFU preparation": h.prepare}
    assert (f"compute {h.compute} " in out and f"K and V loads {h.loads}," in out
            and f"SFU preparation {h.prepare};" in out)
    assert f"the {max(paces, key=paces.get)} sets the pace" in out
    for name in ("decode_tok_s", "roofline"):
        svg = (tmp_path / f"{name}.svg").read_text()
        assert "<svg" in svg and svg.rstrip().endswith("</svg>")
        assert (tmp_path / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    # the axes carry numbers (matplotlib tick labels), and the decode plot the RTL curve
    decode = (tmp_path / "decode_tok_s.svg").read_text()
    assert "RTL as built" in decode and "2048" in decode and "FlightLLM" in decode


@pytest.mark.parametrize("scheme", ["w2a8kv4", "w4a8", "w8a8", "w2a8kv4+4:16"])
def test_no_estimate_beats_the_roofline(scheme):
    """Neither the design estimate nor the RTL as built passes the HBM roofline (the RTL
    may pass the design, which reads weights a command a row where MATSTREAM streams them:
    W4 and W8 at short contexts)."""
    for context in (128, 2048):
        e = P.decode(preset("u280"), SHAPE, scheme, context)
        assert e.tok_s <= e.roofline_tok_s
        assert e.rtl_tok_s <= e.roofline_tok_s


@pytest.mark.parametrize("scheme", ["w2a8kv4", "w8a8", "w2a8kv4+4:16"])
def test_no_prefill_beats_the_compute_bound(scheme):
    """Prefill is priced three ways: the design, the RTL as built, and every MAC at the
    engine's peak (2 per DSP per cycle); neither of the first two is under the third."""
    cfg = preset("u280")
    e = P.prefill(cfg, SHAPE, scheme, 512)
    bound = e.compute_bound_seconds(cfg)
    assert bound == pytest.approx(sum(o.macs for o in e.operators) / (6144 * 2) / 225e6)
    assert bound <= e.seconds <= e.rtl_seconds


def test_bytes_follow_the_format_sparsity_and_window():
    cfg = preset("u280")
    by = {s: P.decode(cfg, SHAPE, s, 2048).bytes for s in
          ("w2a8kv4", "w4a8", "w8a8", "w2a8kv4+4:16", "w2a8kv4+lambda4:252")}
    assert by["w2a8kv4"] < by["w4a8"] < by["w8a8"]
    assert by["w2a8kv4+4:16"] < by["w2a8kv4"]
    assert by["w2a8kv4+lambda4:252"] < by["w2a8kv4"]
    # a longer context moves more KV bytes, except under the Lambda window
    assert P.decode(cfg, SHAPE, "w2a8kv4", 256).bytes < by["w2a8kv4"]
    assert P.decode(cfg, SHAPE, "w2a8kv4+lambda4:252", 256).bytes == by["w2a8kv4+lambda4:252"]


def test_perf_refuses_bad_input(capsys):
    assert cli.main(["perf", "--config", "u280", "--context", "99999"]) == 2
    assert "--context" in capsys.readouterr().err
    assert cli.main(["perf", "--config", "u280", "--scheme", "w9"]) == 2
    assert "unknown scheme" in capsys.readouterr().err


@pytest.mark.parametrize("model", sorted(P.MODELS))
def test_perf_knows_the_models_people_use(model):
    """Every built-in model gets an estimate under its roofline (the command itself runs
    on llama3-8b in the next test)."""
    e = P.decode(preset("u280"), P.MODELS[model], "w2a8kv4", 512)
    assert 0 < e.tok_s <= e.roofline_tok_s and 0 < e.roofline_fraction <= 1


def test_perf_reads_shapes_from_a_config_or_gguf_without_weights(tmp_path, capsys):
    """An HF config.json (no weights beside it) and a GGUF file's metadata give the shapes;
    a LLaMA3-8B config.json gives the built-in llama3-8b's shape, so its figures."""
    gguf = pytest.importorskip("gguf")
    import dataclasses
    import json

    import numpy as np

    hf = tmp_path / "llama3"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({
        "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256}))
    assert cli.main(["perf", "--model", str(hf), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^decode_tok_s=[\d.]+ roofline_fraction=[\d.]+$", out.strip(), re.M)
    # the figures are a function of the shape: equal shapes, equal figures
    assert dataclasses.replace(P.model_shape(str(hf)), name="llama3-8b") == P.model_shape(
        "llama3-8b")
    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_embedding_length(256)
    w.add_block_count(2)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_feed_forward_length(512)
    w.add_vocab_size(1000)
    w.add_tensor("token_embd.weight", np.zeros((1000, 256), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert P.model_shape(str(path)) == P.ModelShape("tiny", 256, 2, 4, 2, 512, 1000)
    assert cli.main(["perf", "--model", str(tmp_path / "none.gguf")]) == 2
    assert "neither a known model" in capsys.readouterr().err
    (hf / "config.json").write_text("{}")
    assert cli.main(["perf", "--model", str(hf)]) == 2
    assert "config.json lacks or mistypes 'num_attention_heads'" in capsys.readouterr().err


def test_a_model_the_config_cannot_hold_names_the_buffer_and_by_how_much(tmp_path, capsys):
    """perf priced LLaMA2-7B on sim-small, and LLaMA2-70B on a U280 (8 GiB of HBM), without a
    word; the compiler would refuse both."""
    u280 = preset("u280")
    P.check_fits(u280, SHAPE, "w2a8kv4", 2048)  # the reference case fits
    with pytest.raises(P.ModelShapeError, match=r"w2: one weight row of K = 11008 .* does "
                                                r"not fit half of the buffers of config sim-small"):
        P.check_fits(preset("sim-small"), SHAPE, "w2a8kv4", 512)
    small_table = u280.replace(table_buffer_bytes=128 * 1024)
    with pytest.raises(P.ModelShapeError, match=r"TABLE buffer: layer tables needs 1026 words "
                                                r"but only 1022 of 2048 are free"):
        P.check_fits(small_table, SHAPE, "w2a8kv4", 512)
    assert cli.main(["perf", "--model", "llama2-70b", "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "external memory" in err and "GiB short" in err, err
    assert not (tmp_path / "p").exists()


def test_the_lm_head_is_priced_as_the_quantizer_makes_it():
    """The classifier is INT8 and dense under every scheme (quant.quantize); perf priced it in
    the scheme's format, so W2's roofline was 184.5 tok/s at context 512, not 177.8."""
    u280 = preset("u280")
    heads = {s: P.decode(u280, SHAPE, s, 512).operators[-1]
             for s in ("w2a8kv4", "w4a8", "w2a8kv4+4:16", "w8a8")}
    assert len({(op.name, op.bytes, op.mem_cycles) for op in heads.values()}) == 1, heads
    w8a8 = P.schemes.parse(P.case_scheme(u280, "w8a8"))
    assert heads["w8a8"] == P.linear(u280, w8a8, "lm_head", SHAPE.dim, SHAPE.vocab, 1)


def test_schemes_without_a_group_take_the_configs_and_say_so(tmp_path, capsys):
    """The u280 performance case is W2 at groups of 128 (``weight_group``), whose scales cost
    0.19 bits a weight instead of 0.75 at the presets' 32; a scheme's ``+gGROUP`` wins, and
    every printed name says its group."""
    u280 = preset("u280")
    assert u280.weight_group == 128 and preset("sim-small").weight_group == 32
    assert P.case_scheme(u280, "w2a8kv4") == "w2a8kv4+g128"
    assert P.case_scheme(u280, "w2a8kv4+g32") == "w2a8kv4+g32"
    assert P.case_scheme(preset("sim-small"), "w4a8+2:4") == "w4a8+2:4+g32"
    assert P.case_scheme(u280, "float") == "float"
    at = {s: P.decode(u280, SHAPE, s, 512) for s in ("w2a8kv4", "w2a8kv4+g128", "w2a8kv4+g32")}
    assert at["w2a8kv4"].bytes == at["w2a8kv4+g128"].bytes < at["w2a8kv4+g32"].bytes
    assert at["w2a8kv4+g128"].roofline_tok_s > 1.2 * at["w2a8kv4+g32"].roofline_tok_s
    assert cli.main(["perf", "--config", "u280", "--model", "llama2-7b", "--scheme", "w2a8kv4",
                     "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| w2a8kv4+g128 |" in out and "| w2a8kv4+g32 |" in out and "| w8a8+g128 |" in out
    assert "w2a8kv4+g128 at context 512: RTL as built" in out


def test_the_sfu_work_priced_is_what_the_compiler_emits(seed):
    """``perf_model.step_sfu`` and ``layer_sfu`` list a decode step's SFU instructions as
    the compiler emits them: the same functions, lengths and segment fields, in order (a
    layer's preparation once per KV head)."""
    from compiler.compile import compile_model
    from llmacc.isa import Opcode
    from quant import schemes
    from tests.helpers.models import tiny_int_model

    im = tiny_int_model(seed, "w2a8kv4", group=16)
    mc = im.config
    cm = compile_model(im, preset("sim-small"), lengths={"decode": [16]})
    emitted = [(i.func, i.length, i.fields.get("imm", 0), i.fields.get("imm2", 0))
               for i in cm.program("decode", 16).instructions if i.opcode is Opcode.SFU]
    shape = P.ModelShape("tiny", mc.dim, mc.n_layers, mc.n_heads, mc.n_kv_heads,
                         mc.hidden_dim, mc.vocab_size)
    scheme = schemes.parse("w2a8kv4+g16")
    before, prepare, after = P.layer_sfu(shape, scheme)
    first, last = P.step_sfu(shape, scheme)
    priced = [(f, n, fields.get("imm", 0), fields.get("imm2", 0))
              for f, n, fields in first + (before + prepare * mc.n_kv_heads + after)
              * mc.n_layers + last]
    assert mc.n_kv_heads > 1 and emitted == priced, f"seed {seed}"


@pytest.mark.parametrize("cfg_name, scheme, shape", [
    ("u280", "w2a8kv4+g128", {"dim": 384, "hidden": 512, "heads": 6, "kv_heads": 2}),
    ("sim-small", "w2a8kv4+g16", {"dim": 64, "hidden": 96, "heads": 8, "kv_heads": 8})])
def test_the_decode_step_priced_is_the_emulators(seed, cfg_name, scheme, shape):
    """``perf_model.decode``, from shapes alone, against the emulator's cycles for the
    compiled decode step of a random model of those shapes at a full bucket of keys (the
    emulator's clock follows the RTL's counters: tests/test_cycle_model.py): within 5%. The
    fused outputs (the residual's reads), the SFU preparing a KV head while the one before
    runs, and the step's own SFU work all count."""
    from compiler.compile import compile_model
    from host.device import EmulatorDevice
    from quant import schemes
    from tests.helpers.models import random_sequences, tiny_int_model

    keys = 64
    im = tiny_int_model(seed, scheme.split("+")[0], group=schemes.parse(scheme).group,
                        layers=2, vocab=256, seq_len=keys, **shape)
    cm = compile_model(im, preset(cfg_name), prefill_bucket=keys, decode_bucket=keys,
                       max_len=keys)
    tokens = random_sequences(seed, 1, keys, 256)[0]
    device = EmulatorDevice(cm)
    device.prefill(tokens[:-1])
    device.decode(tokens[-1], keys - 1)
    mc = im.config
    model = P.decode(preset(cfg_name), P.ModelShape("random", mc.dim, mc.n_layers, mc.n_heads,
                                                    mc.n_kv_heads, mc.hidden_dim,
                                                    mc.vocab_size), scheme, keys)
    priced = sum(op.rtl_cycles for op in model.operators)
    emulated = device.stats[-1].cycles
    assert abs(priced / emulated - 1) <= 0.05, (
        f"seed {seed}: {cfg_name} decode step priced {priced}, emulated {emulated}")
