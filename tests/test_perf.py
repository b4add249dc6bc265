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
    e = P.decode(preset("u280"), SHAPE, "w2a8kv4", 512)
    assert float(m.group(1)) == pytest.approx(e.tok_s, abs=0.01)
    assert 0 < float(m.group(2)) <= 1
    assert "FlightLLM 55 tok/s" in out and "AccLLM" in out
    for name in ("decode_tok_s.svg", "roofline.svg"):
        text = (tmp_path / name).read_text()
        assert text.startswith("<svg") and text.rstrip().endswith("</svg>")


@pytest.mark.parametrize("scheme", ["w2a8kv4", "w4a8", "w8a8", "w2a8kv4+4:16"])
def test_no_estimate_beats_the_roofline(scheme):
    for context in (128, 2048):
        e = P.decode(preset("u280"), SHAPE, scheme, context)
        assert e.tok_s <= e.roofline_tok_s
        assert e.rtl_tok_s < e.tok_s  # the sequencers as built are slower than the design


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
