"""The command line: what exists so far, and its one-line errors."""

import json

from llmacc import cli, isa_doc


def test_config_prints_preset(capsys):
    assert cli.main(["config", "sim-small"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["name"] == "sim-small" and out["fingerprint"].startswith("0x")


def test_config_error_is_one_line(capsys):
    assert cli.main(["config", "no-such-config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmacc: error:") and err.count("\n") == 1 and "sim-small" in err


def test_isa_prints_reference(capsys):
    assert cli.main(["isa"]) == 0
    assert capsys.readouterr().out == isa_doc.render()
