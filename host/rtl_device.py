"""The ``rtl`` back end: the Verilator-built accelerator top as a device.

The top (``hw/accelerator.py``) for the package's configuration is built once (cached under
``build/verilator/``) and simulated in a cocotb process (``sim/benches/tb_server.py``) whose
AXI ports are served by ``cocotbext-axi`` RAM models, one per memory channel. This process
listens on a local socket; the bench connects and executes the device operations one JSON
line at a time, so the external memory persists across programs just as on a card.

A program runs as the host would run it on the board: the run-time registers become SETREG
words in front of it, the words go to the instruction memory, and ``ap_start`` is written
through the AXI4-Lite control slave. A fault raises :class:`DeviceError` with the fault name
and the instruction index; cycles and the per-unit counters come back in :class:`RunStats`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import numpy as np

from compiler.compile import CompiledModel
from compiler.lower import Program
from host.device import Device, DeviceError, kernel_program, kernel_program_bytes, kernel_stats
from host.emulator import RunStats
from llmacc.isa import Reg

CONNECT_TIMEOUT_S = 1800  #: the first use may convert and Verilate the top (minutes)


class RtlDevice(Device):
    """A compiled model on the Verilated accelerator top."""

    def __init__(self, compiled: CompiledModel, *, seed: int = 1):
        super().__init__(compiled)
        from hw.accelerator import Accelerator
        from sim import verilator

        cfg = compiled.config
        model = verilator.build(Accelerator(cfg), "llmacc_top")
        self._insn_bytes = kernel_program_bytes(compiled)
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(1.0)
        env = {"LLMACC_SERVER": f"127.0.0.1:{listener.getsockname()[1]}",
               "LLMACC_CHANNELS": json.dumps(list(compiled.host.channel_bytes)),
               "LLMACC_INSN_BYTES": str(self._insn_bytes)}
        self._failure: BaseException | None = None

        def simulate():
            try:
                model.run("sim.benches.tb_server", seed=seed, extra_env=env)
            except BaseException as exc:  # reported on the next call
                self._failure = exc

        self._thread = threading.Thread(target=simulate, daemon=True)
        self._thread.start()
        try:
            self._conn = self._accept(listener)
        finally:
            listener.close()
        self._stream = self._conn.makefile("rw", encoding="ascii")
        self.load_image()

    def _accept(self, listener: socket.socket) -> socket.socket:
        """The bench's connection, or the reason the simulation ended without one."""
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                return listener.accept()[0]
            except TimeoutError:
                if not self._thread.is_alive():
                    break
        raise DeviceError(f"the RTL simulation did not connect: {self._failure}")

    def _call(self, **cmd) -> dict:
        self._stream.write(json.dumps(cmd) + "\n")
        self._stream.flush()
        line = self._stream.readline()
        if not line:
            raise DeviceError(f"the RTL simulation ended: {self._failure}")
        answer = json.loads(line)
        if "error" in answer:
            raise DeviceError(answer["error"])
        return answer

    def write(self, chan: int, addr: int, data: np.ndarray) -> None:
        data = np.asarray(data, dtype=np.uint8).reshape(-1)
        step = 1 << 20
        for at in range(0, data.size, step):
            self._call(op="write", chan=chan, addr=addr + at, data=data[at:at + step].tobytes()
                       .hex())

    def read(self, chan: int, addr: int, nbytes: int) -> np.ndarray:
        data = bytes.fromhex(self._call(op="read", chan=chan, addr=addr, nbytes=nbytes)["data"])
        return np.frombuffer(data, dtype=np.uint8).copy()

    def execute(self, program: Program, regs: dict[Reg, int]) -> RunStats:
        answer = self._call(op="run", program=kernel_program(program, regs).hex())
        return kernel_stats(program, regs, answer["status"], answer["cycles"],
                            answer["counters"])

    def close(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(DeviceError, OSError):  # the bench quits without answer
                self._call(op="quit")
            self._thread.join()
        self._stream.close()
        self._conn.close()
