"""The ``rtl`` back end: the Verilator-built accelerator top as a device.

The top (``hw/accelerator.py``) for the package's configuration runs on the direct Verilator
harness (:mod:`sim.top_harness`, built once per configuration and cached under
``build/verilator/``), whose C++ memory models serve the AXI ports, one per memory channel
plus the instruction port. External memory persists across programs just as on a card.

A program runs as the host would run it on the board: the run-time registers become SETREG
words in front of it, the words go to the instruction memory, and ``ap_start`` is written
through the AXI4-Lite control slave. A fault raises :class:`DeviceError` with the fault name
and the instruction index; cycles and the per-unit counters come back in :class:`RunStats`.
"""

from __future__ import annotations

import numpy as np

from compiler.compile import CompiledModel
from compiler.lower import Program
from host.device import Device, DeviceError, kernel_program, kernel_program_bytes, kernel_stats
from llmacc.isa import Reg
from sim.cycle_model import READ_LATENCY
from sim.emulator import RunStats
from sim.top_harness import HarnessError, TopHarness


class RtlDevice(Device):
    """A compiled model on the Verilated accelerator top."""

    def __init__(self, compiled: CompiledModel, *, seed: int = 1, stall: float = 0.0,
                 latency: int = READ_LATENCY):
        super().__init__(compiled)
        try:
            self._top = TopHarness(compiled.config, list(compiled.host.channel_bytes),
                                   kernel_program_bytes(compiled), stall=stall, seed=seed,
                                   latency=latency)
        except HarnessError as exc:
            raise DeviceError(f"the RTL simulation could not start: {exc}") from None
        self.load_image()

    def write(self, chan: int, addr: int, data: np.ndarray) -> None:
        data = np.asarray(data, dtype=np.uint8).reshape(-1)
        try:
            self._top.write(chan, addr, data.tobytes())
        except HarnessError as exc:
            raise DeviceError(str(exc)) from None

    def read(self, chan: int, addr: int, nbytes: int) -> np.ndarray:
        try:
            data = self._top.read(chan, addr, nbytes)
        except HarnessError as exc:
            raise DeviceError(str(exc)) from None
        return np.frombuffer(data, dtype=np.uint8).copy()

    def execute(self, program: Program, regs: dict[Reg, int]) -> RunStats:
        try:
            got = self._top.run(kernel_program(program, regs))
        except HarnessError as exc:
            raise DeviceError(str(exc)) from None
        return kernel_stats(program, regs, got.status, got.cycles, got.counters)

    def close(self) -> None:
        self._top.close()
