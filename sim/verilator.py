"""Build Amaranth components into Verilator models once, and run cocotb benches on them.

A model is keyed by its generated Verilog and build flags: the build directory is
``build/verilator/<name>-<digest>``, built under a file lock so that pytest-xdist workers share
one build instead of racing, and reused until the design changes. ``WAVES=1`` builds with
FST tracing and makes every bench write a waveform.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import verilog
from amaranth.lib import wiring

from sim import toolchain

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUILD_ROOT = PROJECT_ROOT / "build" / "verilator"
BUILD_JOBS = int(os.environ.get("LLMACC_BUILD_JOBS", "2"))


def waves_requested() -> bool:
    return os.environ.get("WAVES", "0") not in ("", "0")


@dataclass(frozen=True)
class VerilatedModel:
    """A built Verilator model: where it is and how to run benches on it."""

    name: str
    build_dir: Path
    verilog_path: Path
    waves: bool

    def run(self, test_module: str, *, seed: int, extra_env: dict[str, str] | None = None,
            test_dir: Path | None = None) -> tuple[int, int]:
        """Run a cocotb bench module; returns (tests, failures) from its results XML.

        ``seed`` goes to cocotb (``COCOTB_RANDOM_SEED``) and to the bench as ``LLMACC_SEED``.
        """
        from cocotb_tools.check_results import get_results
        from cocotb_tools.runner import get_runner

        toolchain.apply()
        runner = get_runner("verilator")
        run_dir = test_dir or self.build_dir / f"run-{test_module.rsplit('.', 1)[-1]}-{seed}"
        try:
            results = runner.test(
                test_module=test_module,
                hdl_toplevel=self.name,
                hdl_toplevel_lang="verilog",
                build_dir=self.build_dir,
                test_dir=run_dir,
                seed=seed,
                extra_env={"LLMACC_SEED": str(seed), **(extra_env or {})},
                waves=self.waves,
            )
        except SystemExit as exc:  # cocotb's runner exits when a bench fails
            raise AssertionError(
                f"cocotb bench {test_module} on {self.name} failed (seed {seed}, exit "
                f"{exc.code}); the first mismatch is in the simulator log above, results in "
                f"{run_dir}"
            ) from None
        return get_results(results)


#: make variables of a build that compiles fast and runs slower: the C++ of a big block's
#: model takes 2.4x longer to compile at the default -Os than at -O0 (a 16-element, 2-lane
#: matrix engine: 188 s against 77 s on 2 cores), while its tests run a few thousand cycles
QUICK_BUILD = ("OPT_FAST=-O0",)


def build(component: wiring.Component, name: str, *, waves: bool | None = None,
          extra_args: tuple[str, ...] = (), optimize: bool = True) -> VerilatedModel:
    """Convert ``component`` to Verilog and Verilate it (or reuse an identical build).

    ``optimize=False`` compiles the model's C++ without optimization (:data:`QUICK_BUILD`),
    for tests whose runs are short next to the build."""
    from cocotb_tools.runner import get_runner

    toolchain.apply()
    waves = waves_requested() if waves is None else waves
    text = verilog.convert(component, name=name, emit_src=False)
    args = ("-Wno-fatal", "-j", str(BUILD_JOBS), *(("--trace-fst",) if waves else ()),
            *extra_args)
    make_vars = ("CFG_CXXFLAGS_PCH_I=-include", *(() if optimize else QUICK_BUILD))
    digest = hashlib.sha256("\0".join([text, *args, *make_vars]).encode()).hexdigest()[:12]
    build_dir = BUILD_ROOT / f"{name}-{digest}"
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    with open(BUILD_ROOT / f"{name}-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = build_dir / "llmacc-built"
        vpath = build_dir / f"{name}.v"
        if not stamp.exists():
            build_dir.mkdir(parents=True, exist_ok=True)
            vpath.write_text(text)
            # The PyPI wheel's verilated.mk leaves the precompiled-header include flag empty,
            # which breaks models large enough to be split into several C++ files; make takes
            # variable overrides from MAKEFLAGS.
            saved = os.environ.get("MAKEFLAGS")
            os.environ["MAKEFLAGS"] = " ".join([*filter(None, [saved]), *make_vars])
            try:
                get_runner("verilator").build(
                    sources=[vpath], hdl_toplevel=name, build_dir=build_dir,
                    build_args=list(args), waves=waves, always=True,
                )
            finally:
                if saved is None:
                    os.environ.pop("MAKEFLAGS")
                else:
                    os.environ["MAKEFLAGS"] = saved
            stamp.touch()
    return VerilatedModel(name, build_dir, vpath, waves)


#: The commented waivers every lint run of generated Verilog uses (and nothing else).
LINT_WAIVERS = PROJECT_ROOT / "hw" / "lint_waivers.vlt"


def lint(component: wiring.Component, name: str, work: Path) -> subprocess.CompletedProcess:
    """``verilator --lint-only -Wall`` on ``component``'s Verilog files, as the board flow and
    the harness write them (:func:`hw.hierarchy.write`, into ``work``)."""
    from hw import hierarchy

    toolchain.apply()
    return lint_files(hierarchy.write(component, name, work), name, work)


def lint_files(sources: list[Path], top: str, work: Path) -> subprocess.CompletedProcess:
    """``verilator --lint-only -Wall`` on Verilog files, with the project's waivers."""
    toolchain.apply()
    return subprocess.run(["verilator", "--lint-only", "-Wall", str(LINT_WAIVERS),
                           "--top-module", top, *map(str, sources)], capture_output=True,
                          text=True, cwd=work)
