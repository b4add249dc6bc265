"""The accelerator top on a direct Verilator harness: the fast way to run programs on the RTL.

cocotb drives a design from Python once per clock edge per coroutine, which held the whole top
to about 1,800 cycles/s. Here the memory ports are served in C++ (``sim/harness/
top_harness.cpp``: one beat per cycle per port after a fixed read latency, optional seeded
random stalls) and Python only sends commands: memory contents, AXI4-Lite register accesses
and "run until the interrupt". The model is built once per configuration, with waveform
tracing compiled in (FST, or VCD where liblz4 is missing) and switched on per run. It is
cached under ``build/verilator/harness-<config>-<digest>`` beside the cocotb builds and shared
by pytest-xdist workers through a file lock.

:class:`TopHarness` runs programs as the host runs a kernel: program words into the
instruction memory, the channel bases and the program's address into the control registers,
``ap_start``, wait for the interrupt, then status, cycles and the performance counters.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmacc import isa
from llmacc.config import AccelConfig
from llmacc.kernel import CONTROL, COUNTER_PREFIXES, GIE, IER, ISR, register_map
from sim import toolchain
from sim.cycle_model import READ_LATENCY
from sim.verilator import BUILD_JOBS, BUILD_ROOT, PROJECT_ROOT

SOURCE = Path(__file__).resolve().parent / "harness" / "top_harness.cpp"
TOP = "llmacc_top"


class HarnessError(RuntimeError):
    """The harness could not be built, or a command failed (the message says which)."""


def lz4_library() -> Path | None:
    """The liblz4 runtime library Verilator's FST writer needs, if this machine has one."""
    for pattern in ("/usr/lib/*/liblz4.so*", "/usr/lib/liblz4.so*", "/lib/*/liblz4.so*",
                    "/usr/lib64/liblz4.so*"):
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    return None


def waveform_suffix() -> str:
    """".fst" where the harness can write FST, ".vcd" otherwise."""
    return ".fst" if lz4_library() else ".vcd"


def _ports_header(cfg: AccelConfig, fst: bool) -> str:
    ports = [f"m_axi_ch{c}" for c in range(cfg.mem_channels)] + ["m_axi_insn"]
    entries = " ".join(f"X({i}, {p})" for i, p in enumerate(ports))
    return (f"#define LLMACC_PORTS(X) {entries}\n#define LLMACC_NPORTS {len(ports)}\n"
            f"#define LLMACC_DATA_BYTES {cfg.axi_data_bytes}\n#define LLMACC_FST {int(fst)}\n")


def _sources_digest(cfg: AccelConfig, header: str) -> str:
    """A digest of everything the build depends on: the hardware's and the shared
    declarations' Python sources, the configuration and the harness. Hashing sources, not the
    generated Verilog, saves converting the top (about 40 s) when the build exists."""
    h = hashlib.sha256()
    for package in ("hw", "llmacc"):
        for path in sorted((PROJECT_ROOT / package).glob("*.py")):
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    for path in sorted(SOURCE.parent.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    h.update(json.dumps(cfg.to_dict(), sort_keys=True).encode() + header.encode())
    return h.hexdigest()[:12]


def build(cfg: AccelConfig) -> Path:
    """The harness executable for ``cfg`` (built now, or reused)."""
    from hw import hierarchy
    from hw.accelerator import Accelerator

    toolchain.apply()
    lz4 = lz4_library()
    header = _ports_header(cfg, lz4 is not None)
    digest = _sources_digest(cfg, header)
    build_dir = BUILD_ROOT / f"harness-{cfg.name}-{digest}"
    exe = build_dir / "obj" / "harness"
    BUILD_ROOT.mkdir(parents=True, exist_ok=True)
    with open(BUILD_ROOT / f"harness-{cfg.name}-{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if exe.exists():
            return exe
        build_dir.mkdir(parents=True, exist_ok=True)
        sources = hierarchy.write(Accelerator(cfg), TOP, build_dir)  # the board flow's files
        (build_dir / "harness_ports.h").write_text(header)
        env = dict(os.environ)
        # the wheel's verilated.mk leaves the precompiled-header include flag empty
        env["MAKEFLAGS"] = f"{env.get('MAKEFLAGS', '')} CFG_CXXFLAGS_PCH_I=-include".strip()
        trace = ["--trace"]
        if lz4 is not None:  # headers from the shim, -llz4 through a link beside the build
            link = build_dir / "liblz4.so"
            link.unlink(missing_ok=True)
            link.symlink_to(lz4)
            trace = ["--trace-fst", "-CFLAGS", f"-I{SOURCE.parent / 'lz4'}",
                     "-LDFLAGS", f"-L{build_dir}"]
        cmd = ["verilator", "--cc", "--exe", "--build", "-j", str(BUILD_JOBS), "-Wno-fatal",
               *trace, "--top-module", TOP, "-Mdir", "obj", "-o", "harness",
               "-CFLAGS", f"-I{build_dir}", *map(str, sources), str(SOURCE)]
        print(f"building the Verilated RTL of {cfg.name} in {build_dir} (once per "
              "configuration and hardware version; minutes on 2 cores) ...", file=sys.stderr,
              flush=True)
        start = time.perf_counter()
        stdout, stderr, code = _run_build(cmd, build_dir, env)
        if code or not exe.exists():
            shutil.rmtree(build_dir, ignore_errors=True)
            raise HarnessError(f"building the Verilator harness for {cfg.name} failed:\n"
                               f"{stdout[-2000:]}\n{stderr[-4000:]}")
        print(f"built in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return exe


def _run_build(cmd: list[str], build_dir: Path, env: dict) -> tuple[str, str, int]:
    """Run the Verilator build in its own process group. Ctrl-C stops the whole build at
    once (make and every compiler it started) and removes the half-built directory."""
    proc = subprocess.Popen(cmd, cwd=build_dir, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(build_dir, ignore_errors=True)
        raise
    return stdout, stderr, proc.returncode


@dataclass
class RunResult:
    """What the control slave reports after one program."""

    status: int
    cycles: int  #: the kernel's cycle counter (start to done)
    counters: dict[str, int] = field(default_factory=dict)
    simulated: int = 0  #: clock cycles the harness stepped for this run (incl. register I/O)


class TopHarness:
    """One running simulation of the top for ``cfg`` (a subprocess)."""

    def __init__(self, cfg: AccelConfig, channel_bytes: list[int], insn_bytes: int, *,
                 stall: float = 0.0, seed: int = 1, latency: int = READ_LATENCY):
        if len(channel_bytes) > cfg.mem_channels:
            raise HarnessError(f"{len(channel_bytes)} channels; {cfg.name} has "
                               f"{cfg.mem_channels}")
        self.cfg = cfg
        self.insn_port = cfg.mem_channels
        self.insn_bytes = insn_bytes
        self.registers = {r.name: r.offset for r in register_map(cfg.mem_channels)}
        self.wall_s = 0.0  #: seconds spent waiting for the simulation
        self._proc = subprocess.Popen([str(build(cfg))], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True, bufsize=1)
        for c, n in enumerate(channel_bytes):
            self._call(f"mem {c} {n}")
        self._call(f"mem {self.insn_port} {insn_bytes}")
        self._call(f"latency {latency}")
        self._call(f"stall {stall} {seed}")
        self.lite_write(GIE, 1)
        self.lite_write(IER, 1)

    # -- commands --------------------------------------------------------------------------
    def _call(self, line: str) -> str:
        if self._proc.poll() is not None:
            raise HarnessError(f"the harness exited with code {self._proc.returncode}")
        start = time.perf_counter()
        self._proc.stdin.write(line + "\n")
        self._proc.stdin.flush()
        answer = self._proc.stdout.readline().strip()
        self.wall_s += time.perf_counter() - start
        if not answer:
            raise HarnessError(f"the harness ended during {line.split()[0]!r} "
                               f"(exit {self._proc.wait()})")
        if answer.startswith("error"):
            raise HarnessError(answer[6:])
        return answer

    def write(self, chan: int, addr: int, data: bytes) -> None:
        step = 1 << 20
        for at in range(0, len(data), step):
            self._call(f"write {chan} {addr + at} {data[at:at + step].hex()}")

    def read(self, chan: int, addr: int, nbytes: int) -> bytes:
        return bytes.fromhex(self._call(f"read {chan} {addr} {nbytes}")) if nbytes else b""

    def lite_write(self, offset: int, value: int) -> None:
        self._call(f"lw {offset} {value & 0xFFFFFFFF}")

    def lite_read(self, offset: int) -> int:
        return int(self._call(f"lr {offset}"))

    def cycles(self) -> int:
        """Clock cycles simulated since the harness started."""
        return int(self._call("cycles"))

    def trace(self, path: Path | None) -> None:
        """Write a waveform of what follows to ``path`` (FST or VCD, see
        :func:`waveform_suffix`; None: stop)."""
        self._call(f"trace {path if path is not None else 'off'}")

    # -- a kernel run ----------------------------------------------------------------------
    def run(self, program: bytes, *, max_cycles: int = 1 << 40, bases: list[int] | None = None,
            program_base: int = 0) -> RunResult:
        """Run ``program`` (instruction words) as the host runs the kernel."""
        if program_base + len(program) > self.insn_bytes:
            raise HarnessError(f"program of {len(program)} bytes at {program_base:#x} exceeds "
                               f"the {self.insn_bytes}-byte instruction memory")
        before = self.cycles()
        reg = self.registers
        self.write(self.insn_port, program_base, program)
        for c, base in enumerate(bases or [0] * self.cfg.mem_channels):
            self.lite_write(reg[f"ch{c}_lo"], base)
            self.lite_write(reg[f"ch{c}_hi"], base >> 32)
        self.lite_write(reg["program_lo"], program_base)
        self.lite_write(reg["program_hi"], program_base >> 32)
        self.lite_write(reg["program_words"], len(program) // isa.WORD_BYTES)
        self.lite_write(CONTROL, 1)
        took, high = self._call(f"wait {max_cycles}").split()
        if high != "1":
            raise HarnessError(f"no ap_done after {took} cycles")
        if not self.lite_read(CONTROL) & 0x2:  # reading clears ap_done
            raise HarnessError("the interrupt rose without ap_done")
        self.lite_write(ISR, 1)  # toggle-on-write: clear the interrupt
        status = self.lite_read(reg["status"])
        cycles = self.lite_read(reg["cycles_lo"]) | self.lite_read(reg["cycles_hi"]) << 32
        counters = {name: self.lite_read(offset) for name, offset in reg.items()
                    if name.startswith(COUNTER_PREFIXES)}
        return RunResult(status, cycles, counters, self.cycles() - before)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.write("quit\n")
            self._proc.stdin.flush()
            self._proc.wait()

    def __enter__(self) -> TopHarness:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
