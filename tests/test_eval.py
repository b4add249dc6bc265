"""Perplexity harness and the ``llmacc eval`` command line."""

import pytest

from llmacc import cli
from quant import eval as quant_eval
from tests.helpers.models import MODEL, TEXT, TOKENIZER, need_shared

ARGS = ["--model", str(MODEL), "--tokenizer", str(TOKENIZER), "--text", str(TEXT)]


def _last_line(capsys) -> str:
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_float_perplexity_line(capsys):
    need_shared()
    assert cli.main(["eval", *ARGS, "--scheme", "float", "--max-stories", "5",
                     "--no-progress"]) == 0
    line = _last_line(capsys)
    ppl, tokens = (kv.split("=")[1] for kv in line.split())
    assert line.startswith("ppl=") and int(tokens) > 100
    assert 2.0 < float(ppl) < 8.0  # the shipped model is good on in-domain text


def test_integer_reference_is_close_to_fake_quant(capsys):
    need_shared()
    common = [*ARGS, "--scheme", "w4-mixed-a8kv4", "--max-stories", "4", "--no-progress",
              "--finetune-steps", "0", "--calib-stories", "32"]
    values = {}
    for mode in ("fake", "int"):
        assert cli.main(["eval", *common, "--mode", mode]) == 0
        values[mode] = float(_last_line(capsys).split()[0].split("=")[1])
    assert abs(values["int"] / values["fake"] - 1) < 0.02, values


def test_story_splitting(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("one story.\r\n\r\ntwo\nlines\n\n\n\nthree\n")
    assert quant_eval.read_stories(path) == ["one story.", "two\nlines", "three"]
    assert quant_eval.read_stories(path, limit=1, skip=1) == ["two\nlines"]


def test_windows_cut_one_token_stream(tmp_path):
    """WikiText-2 style: the whole text as one stream without BOS, its first tokens in
    fixed windows; CRLF line ends read as LF, as the stories are."""
    from quant import tokenizer

    need_shared()
    tok = tokenizer.load(TOKENIZER, 512)
    text = "The cat sat on the mat.\r\nIt was a sunny day, and the dog ran far away.\r\n" * 40
    path = tmp_path / "t.raw"
    path.write_bytes(text.encode())
    stream = tok.encode(text.replace("\r\n", "\n"), bos=False)
    windows = quant_eval.window_sequences(tok, path, 64, 300)
    assert [len(w) for w in windows] == [64, 64, 64, 64, 44]
    assert sum(windows, []) == stream[:300] and tok.bos not in windows[0]
    assert sum(quant_eval.window_sequences(tok, path, 100), []) == stream


def test_bad_inputs_exit_with_one_line_errors(tmp_path, capsys):
    need_shared()
    assert cli.main(["eval", *ARGS, "--scheme", "w9"]) == 2
    assert "unknown scheme" in capsys.readouterr().err
    bad = tmp_path / "m.bin"
    bad.write_bytes(b"\x00" * 10)
    args = ["--model", str(bad), "--tokenizer", str(TOKENIZER), "--text", str(TEXT)]
    assert cli.main(["eval", *args]) == 2
    assert "too short" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(SystemExit):
        cli.main(["eval", "--model", str(MODEL)])  # argparse: missing arguments
    assert cli.main(["eval", *ARGS[:4], "--text", str(empty), "--no-progress"]) == 2
    assert "no text to score" in capsys.readouterr().err
    assert cli.main(["eval", *ARGS, "--max-tokens", "100", "--no-progress"]) == 2
    assert "give --window" in capsys.readouterr().err
    # the table has a row per group it scores; an override used to be dropped silently
    table = tmp_path / "t.md"
    assert cli.main(["eval", *ARGS, "--table", str(table), "--group", "128"]) == 2
    assert "leave out --group" in capsys.readouterr().err and not table.exists()
    assert quant_eval.TABLE_SCHEMES[-1] == "w2a8kv4+g128"


def test_eval_refuses_a_binary_text(capsys):
    """``eval --text`` on a binary file used to score the replacement characters
    (ppl=1996701375); the model file given as text is refused in one line."""
    need_shared()
    assert cli.main(["eval", *ARGS[:4], "--text", str(MODEL), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not UTF-8 text" in err or "NUL bytes" in err, err


def test_quantizing_shows_the_layer_in_hand(capsys, seed):
    from quant import schemes
    from tests.helpers.models import random_sequences, tiny_checkpoint

    ckpt = tiny_checkpoint(seed, layers=2)
    calib = random_sequences(seed, 4, 16, ckpt.config.vocab_size)
    quant_eval.prepare_sequences(ckpt, schemes.parse("w8a8"), calib, progress=True)
    lines = capsys.readouterr().err.split("\r")
    assert any("layer 1/2 layers.0.wq" in line for line in lines), lines
    assert "layer 2/2 layers.1.w3" in lines[-1] and "eta     0s" in lines[-1], lines
