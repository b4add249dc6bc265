"""``llmacc run``, ``quantize`` and ``python -m host`` on the shipped model (emulator back
end), and the one-line errors of bad input."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compiler import package
from llmacc import cli
from quant import tokenizer
from tests.helpers.models import MODEL, TEXT, TOKENIZER

LAST = re.compile(r"^tokens=(\d+) stop=(\w+) host_tok_s=([\d.]+) device_tok_s=([\d.]+)$")


def _run(capsys, *argv) -> tuple[int, list[str], str]:
    code = cli.main(["run", *argv])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def test_run_prints_the_integer_models_text(shipped, capsys):
    code, out, err = _run(capsys, "--package", str(shipped), "--prompt", "Once upon a time",
                          "--max-tokens", "12", "--stop-token", "2")
    assert code == 0
    # a short prompt runs the power-of-two prefill program that holds it, and run says so
    assert re.search(r"the 5-token prompt runs the 8-row prefill program", err), err
    m = LAST.match(out[-1])
    assert m and m.group(1, 2) == ("12", "length"), out[-1]
    assert float(m.group(4)) > 0  # the modelled device rate
    cm, _ = package.load(shipped)
    tok = tokenizer.load(TOKENIZER, cm.model.config.vocab_size)
    prompt = tok.encode("Once upon a time")
    generated = cm.model.generate(prompt, 12)
    pieces = [tok.decode_piece(prev, t)
              for prev, t in zip(prompt[-1:] + generated[:-1], generated, strict=True)]
    assert out[0] == "Once upon a time" + b"".join(pieces).decode()


def test_sampling_is_reproducible(shipped, capsys):
    argv = ("--package", str(shipped), "--prompt", "One day", "--max-tokens", "10",
            "--temperature", "0.9", "--top-p", "0.9", "--top-k", "40", "--seed", "7",
            "--no-stream")
    first = _run(capsys, *argv)
    second = _run(capsys, *argv)
    assert first[0] == 0 and first[1][0] == second[1][0]


def test_stop_text_ends_the_text(shipped, capsys):
    code, out, _ = _run(capsys, "--package", str(shipped), "--max-tokens", "40", "--stop", ".")
    assert code == 0 and LAST.match(out[-1]).group(2) in ("text", "token")


@pytest.mark.parametrize("extra,match", [
    (["--config", "u280"], "compiled for configuration 'sim-small', not 'u280'"),
    (["--backend", "xrt"], "needs --xclbin"),
    (["--temperature", "-1"], "temperature must be >= 0"),
    (["--stop-token", "9999"], "stop tokens must lie in 0..511"),
    (["--max-tokens", "-3"], "max tokens must be >= 0"),
    (["--chat", "--prompt", "Hi"], "has no chat template (GGUF models carry one"),
])
def test_run_errors_are_one_line(shipped, capsys, extra, match):
    code, out, err = _run(capsys, "--package", str(shipped), *extra)
    assert code == 2
    assert err.startswith("llmacc: error: ") and match in err and "Traceback" not in err


def test_xrt_without_xrt_names_what_is_missing(shipped, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyxrt", None)
    fake = tmp_path / "k.xclbin"
    fake.write_bytes(b"x")
    code, _, err = _run(capsys, "--package", str(shipped), "--backend", "xrt", "--xclbin",
                        str(fake))
    assert code == 2 and "pyxrt" in err


def test_quantize_and_compile_errors(tmp_path, capsys):
    bad = tmp_path / "notes.pt"
    bad.write_text("not a model")
    cases = [
        (["compile", "--quantized", str(bad), "--tokenizer", str(TOKENIZER), "--config",
          "sim-small", "-o", str(tmp_path / "p")], "not a quantized model file"),
        (["compile", "--quantized", str(bad), "--model", str(MODEL), "--tokenizer",
          str(TOKENIZER), "--config", "sim-small", "-o", str(tmp_path / "p")], "not both"),
        (["quantize", "--model", str(MODEL), "--tokenizer", str(TOKENIZER), "--scheme", "w9",
          "-o", str(tmp_path / "q.pt")], "unknown scheme 'w9'"),
        (["quantize", "--model", str(tmp_path / "none.bin"), "--tokenizer", str(TOKENIZER),
          "--scheme", "w8a8", "-o", str(tmp_path / "q.pt")], "none.bin"),
        (["compile", "--tokenizer", str(TOKENIZER), "--config", "sim-small", "-o",
          str(tmp_path / "p")], "give --model and --scheme"),
    ]
    for argv, match in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert match in err and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "p").exists() and not (tmp_path / "q.pt").exists()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="not a quantized model file"):
        bad = tmp_path / "x.pt"
        torch.save({"format": "something-else"}, bad)
        cli.main(["--debug", "compile", "--quantized", str(bad), "--tokenizer", str(TOKENIZER),
                  "--config", "sim-small", "-o", str(tmp_path / "p")])


@pytest.mark.parametrize("command", ["quantize", "compile", "verify", "run", "sim", "eval"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code == 0 and "usage: llmacc" in capsys.readouterr().out


def test_python_dash_m_host():
    done = subprocess.run([sys.executable, "-m", "host", "--help"], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0 and "run" in done.stdout and "quantize" in done.stdout


@pytest.mark.parametrize("where, match", [
    ("file", "output path exists and is a file"),
    ("package", "a package is there already; give --force to replace it"),
    ("proc", "cannot create the output directory under /proc"),
])
def test_compile_checks_its_output_before_quantizing(tmp_path, capsys, monkeypatch, shipped,
                                                     where, match):
    """``compile -o EXISTING_FILE`` used to quantize for minutes and only then refuse the
    path; now the output is checked first (quantization would raise here)."""
    from quant import commands as quantize_command

    def must_not_run(args):
        raise AssertionError("quantization started before the output path was checked")
    monkeypatch.setattr(quantize_command, "quantize", must_not_run)
    out = {"file": tmp_path / "taken", "package": shipped, "proc": Path("/proc/llmacc/p")}[where]
    if where == "file":
        out.write_text("keep me")
    code = cli.main(["compile", "--model", str(MODEL), "--tokenizer", str(TOKENIZER),
                     "--scheme", "w8a8", "--config", "sim-small", "-o", str(out),
                     "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and match in err and "Errno" not in err, err
    if where == "file":
        assert out.read_text() == "keep me"


def test_compile_force_replaces_a_package(tmp_path, capsys, shipped):
    """An existing package is replaced only with --force (it used to be replaced without a
    word)."""
    pkg = tmp_path / "pkg"
    shutil.copytree(shipped, pkg)
    (pkg / "stale.txt").write_text("from the old package")
    argv = ["compile", "--quantized", str(shipped.parent / "stories.pt"), "--tokenizer",
            str(TOKENIZER), "--config", "sim-small", "-o", str(pkg), "--prefill-bucket", "16",
            "--decode-bucket", "16", "--max-len", "64"]
    assert cli.main(argv) == 2
    assert "give --force" in capsys.readouterr().err and (pkg / "stale.txt").exists()
    assert cli.main([*argv, "--force"]) == 0
    assert not (pkg / "stale.txt").exists() and (pkg / "manifest.json").is_file()


def test_quantize_checks_its_output_first(tmp_path, capsys):
    for out, match in ((tmp_path, "output path is a directory"),
                       (tmp_path / "no" / "q.pt", "does not exist")):
        assert cli.main(["quantize", "--model", str(MODEL), "--tokenizer", str(TOKENIZER),
                         "--scheme", "w8a8", "-o", str(out), "--no-progress"]) == 2
        assert match in capsys.readouterr().err


@pytest.mark.parametrize("command", ["eval", "perf", "bitstream"])
def test_eval_perf_and_bitstream_check_their_output_first(tmp_path, capsys, monkeypatch,
                                                          command):
    """The output of eval's table, perf's plots and the bitstream tree is checked before any
    work (it used to be written, or refused, at the end): a file where a directory goes, a
    missing directory where a file goes."""
    taken = tmp_path / "taken"
    taken.write_text("keep me")
    argv, match = {
        "eval": (["eval", "--model", str(MODEL), "--tokenizer", str(TOKENIZER), "--text",
                  str(MODEL), "--table", str(tmp_path / "no" / "t.md")], "does not exist"),
        "perf": (["perf", "--config", "u280", "--out", str(taken)], "exists and is a file"),
        "bitstream": (["bitstream", "--config", "sim-small", "-o", str(taken / "tree")],
                      "is a file"),
    }[command]
    from boards import vitis_flow
    from quant import eval as eval_command
    from sim import perf_model

    def must_not_run(*args, **kwargs):
        raise AssertionError(f"{command} started its work before checking its output")
    monkeypatch.setattr(eval_command, "table", must_not_run)
    monkeypatch.setattr(perf_model, "model_shape", must_not_run)
    monkeypatch.setattr(vitis_flow, "generate", must_not_run)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Errno" not in err, err
    assert taken.read_text() == "keep me"


def test_a_compile_that_fails_after_quantizing_keeps_the_quantization(tmp_path, capsys):
    """SmolLM2 on u280 quantized for 8 minutes, then its logits (4096 rows of 98 KB) did not
    fit a 256 MiB channel and the work was lost. The refusal now says that the region grows
    with --max-len, and the integer model is kept for compile --quantized."""
    import json

    from llmacc.config import preset

    small = {**preset("sim-small").to_dict(), "name": "small-hbm", "channel_bytes": 1 << 19}
    cfg = tmp_path / "small.json"
    cfg.write_text(json.dumps(small))
    pkg = tmp_path / "pkg"
    argv = ["compile", "--model", str(MODEL), "--tokenizer", str(TOKENIZER), "--scheme", "w8a8",
            "--config", str(cfg), "--calib-text", str(TEXT), "--calib-stories", "4",
            "--no-progress", "-o", str(pkg)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    kept = tmp_path / "pkg.quantized.pt"
    assert err.count("\n") == 1 and "logits" in err and "a shorter --max-len" in err, err
    assert f"compile --quantized {kept}" in err and kept.is_file() and not pkg.exists()
    assert cli.main(["compile", "--quantized", str(kept), "--tokenizer", str(TOKENIZER),
                     "--config", "sim-small", "-o", str(pkg), "--max-len", "64"]) == 0
