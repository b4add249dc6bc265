"""The command line: what exists so far, and its one-line errors."""

import argparse
import contextlib
import json
import subprocess
import sys

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


def _modules_after(statements: str) -> set[str]:
    """Top-level packages loaded by a fresh interpreter that runs ``statements``."""
    code = (f"import sys\n{statements}\n"
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return set(run.stdout.splitlines()[-1].split())


def test_help_and_config_load_neither_torch_nor_amaranth():
    """``llmacc --help``, every subcommand's ``--help`` and ``llmacc config`` answer at once:
    they import neither torch nor Amaranth (``--help`` took about 4 s when the argument
    functions lived beside the commands that import torch)."""
    commands = [[name, "--help"] for name, *_ in cli.COMMANDS]
    loaded = _modules_after(
        "from llmacc import cli\n"
        f"for argv in {[['--help'], *commands]!r}:\n"
        "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
        "cli.main(['config', 'sim-small'])")
    assert not loaded & {"torch", "amaranth"}, loaded & {"torch", "amaranth"}


def test_subcommand_help_lists_its_options(capsys):
    try:
        cli.main(["perf", "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    assert "--context" in capsys.readouterr().out


def test_every_option_has_a_help_line_and_shows_its_default(capsys):
    """Options without a help line (--mode, --calib-stories, --no-progress, ...) and help
    without defaults were what a new user met."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.help, (name, action.option_strings or action.dest)
    with contextlib.suppress(SystemExit):
        cli.main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: fake)" in text and "(default: 512)" in text and "(default: 0)" in text
    assert "default: None" not in text
