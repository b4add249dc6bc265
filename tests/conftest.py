"""Shared fixtures: the seed every random test uses, and the Verilator environment.

Random tests take the ``seed`` fixture: a per-test seed derived from the session seed
(``--seed N`` or ``LLMACC_SEED=N``, default 1) and the test's id. A failing test's report
shows both, so ``pytest --seed N path::test`` reproduces it.
"""

import os
import random
from pathlib import Path

import pytest
import torch

from llmacc import cli
from llmacc.config import preset
from sim import toolchain
from tests.helpers.models import MODEL, TEXT, TOKENIZER, need_shared


def pytest_addoption(parser):
    parser.addoption("--seed", type=int, default=None,
                     help="session seed for random tests (default: LLMACC_SEED or 1)")
    parser.addoption("--sim-summary", default=None, metavar="FILE",
                     help="also write the per-block summary table to FILE (Markdown)")


#: (module, outcome, seconds, user properties) of every test, gathered from all workers
_RESULTS: list[tuple[str, str, float, dict]] = []


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and not report.passed):
        module = report.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
        _RESULTS.append((module, report.outcome, report.duration,
                         dict(report.user_properties)))


def summary_table(results: list[tuple[str, str, float, dict]]) -> list[str]:
    """Markdown lines: per test module (block or model test) the outcomes and time, then the
    RTL totals the tests recorded (fuzzed programs and instructions, simulated cycles/s)."""
    rows: dict[str, list] = {}
    totals = dict.fromkeys(("fuzz_programs", "fuzz_instructions", "sim_cycles", "sim_wall_s",
                            "rtl_cycles"), 0)
    for module, outcome, seconds, props in results:
        row = rows.setdefault(module, [0, 0, 0, 0.0])
        row[("passed", "failed", "skipped").index(outcome)] += 1
        row[3] += seconds
        for key in totals:
            totals[key] += props.get(key, 0)
    lines = ["| block | passed | failed | skipped | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {p} | {f} | {s} | {t:.1f} |" for m, (p, f, s, t) in sorted(rows.items())]
    if totals["fuzz_programs"]:
        rate = totals["sim_cycles"] / max(totals["sim_wall_s"], 1e-9)
        lines += ["", f"fuzzed programs: {totals['fuzz_programs']}, fuzzed instructions: "
                  f"{totals['fuzz_instructions']}, simulated cycles: {totals['sim_cycles']} "
                  f"at {rate:,.0f} cycles/s (harness wall time)"]
    if totals["rtl_cycles"]:
        lines += [f"whole-model RTL tests: {totals['rtl_cycles']} device cycles"]
    return lines


def pytest_terminal_summary(terminalreporter, config):
    if not _RESULTS:
        return
    lines = summary_table(_RESULTS)
    terminalreporter.write_sep("=", "llmacc summary per block")
    for line in lines:
        terminalreporter.write_line(line)
    path = config.getoption("--sim-summary")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("\n".join(lines) + "\n")


def pytest_configure(config):
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:  # each worker's torch on its share of the cores: oversubscribed, the
        # small ops of the emulator and the integer model wait on descheduled threads
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    seed = config.getoption("--seed")
    config.llmacc_seed = int(os.environ.get("LLMACC_SEED", "1")) if seed is None else seed


def pytest_report_header(config):
    return f"llmacc session seed: {config.llmacc_seed} (reproduce with --seed N)"


@pytest.fixture
def seed(request) -> int:
    """Per-test seed; recorded so that a failure report prints it."""
    base = request.config.llmacc_seed
    value = random.Random(f"{base}:{request.node.nodeid}").randrange(1 << 31)
    request.node.user_properties.append(("seed", (base, value)))
    return value


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for base, value in (v for k, v in item.user_properties if k == "seed"):
            report.sections.append(
                ("seed", f"test seed {value}; reproduce with --seed {base} {item.nodeid}")
            )
    return report


@pytest.fixture(scope="session")
def verilator_env():
    """Point this process at the pinned Verilator; fail (not skip) if it is missing or old."""
    toolchain.apply()


@pytest.fixture(scope="session")
def sim_small_top(verilator_env):
    """The sim-small top on the direct Verilator harness, built once per session (and
    reused across sessions until the hardware changes)."""
    from sim.top_harness import build

    return build(preset("sim-small"))


@pytest.fixture(scope="session")
def shipped(tmp_path_factory):
    """The shipped model through ``llmacc quantize`` then ``llmacc compile --quantized``
    (short buckets and context); the package directory."""
    need_shared()
    root = tmp_path_factory.mktemp("shipped")
    quantized, pkg = root / "stories.pt", root / "stories"
    assert cli.main(["quantize", "--model", str(MODEL), "--tokenizer", str(TOKENIZER),
                     "--scheme", "w2a8kv4+lambda4:16", "-o", str(quantized),
                     "--calib-text", str(TEXT), "--calib-stories", "16",
                     "--finetune-steps", "0", "--no-progress"]) == 0
    assert cli.main(["compile", "--quantized", str(quantized), "--tokenizer", str(TOKENIZER),
                     "--config", "sim-small", "-o", str(pkg), "--prefill-bucket", "16",
                     "--decode-bucket", "16", "--max-len", "64"]) == 0
    return pkg
