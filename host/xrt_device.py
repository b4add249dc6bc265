"""The ``xrt`` back end: an Alveo card through XRT's Python bindings (``pyxrt``).

The card must hold the xclbin from the board flow (``make bitstream``). Each memory channel of
the package becomes one XRT buffer object in the memory bank that the xclbin connects to the
channel's AXI port (``kernel.group_id``); the kernel receives the buffers' device addresses as
its pointer arguments and adds them to every address it issues, so the compiled programs stay
position-free. Arguments are passed in the order of ``llmacc.kernel.kernel_args``,
derived from the RTL's register map; after a run the status and performance counters are read
from the same registers the RTL back end reads.

``pyxrt`` is imported when the back end is opened, never before: on a machine without XRT or
without a card, opening it raises :class:`DeviceError` saying which is missing.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import numpy as np

from compiler.compile import CompiledModel
from compiler.lower import Program
from host.device import Device, DeviceError, kernel_program, kernel_program_bytes, kernel_stats
from llmacc import isa
from llmacc.isa import Reg
from llmacc.kernel import COUNTER_PREFIXES, KERNEL_NAME, kernel_args, register_map
from sim.emulator import RunStats

RUN_TIMEOUT_MS = 60_000


def import_pyxrt() -> ModuleType:
    """XRT's Python module, or a :class:`DeviceError` that says how to get it."""
    try:
        return importlib.import_module("pyxrt")
    except ImportError:
        raise DeviceError("the xrt back end needs XRT's Python bindings (pyxrt), which are not "
                          "installed: install XRT and `source /opt/xilinx/xrt/setup.sh`, or "
                          "use --backend emulator or rtl") from None


class XrtDevice(Device):
    """A compiled model on an Alveo card programmed with the board flow's xclbin."""

    def __init__(self, compiled: CompiledModel, xclbin: str | Path | None, card: int = 0, *,
                 xrt: ModuleType | None = None):
        super().__init__(compiled)
        if xclbin is None:
            raise DeviceError("the xrt back end needs --xclbin (build it with `make bitstream`)")
        if not Path(xclbin).is_file():
            raise DeviceError(f"{xclbin}: no such xclbin")
        self.xrt = xrt or import_pyxrt()
        cfg = compiled.config
        self._offsets = {r.name: r.offset for r in register_map(cfg.mem_channels)}
        try:
            self.card = self.xrt.device(card)
        except Exception as exc:  # noqa: BLE001 - XRT raises RuntimeError or its own types
            raise DeviceError(f"no Alveo card {card} through XRT ({exc})") from None
        uuid = self.card.load_xclbin(str(xclbin))
        self.kernel = self.xrt.kernel(self.card, uuid, KERNEL_NAME,
                                      self.xrt.kernel.cu_access_mode.exclusive)
        hw_id = self._register("hw_id")
        if hw_id != cfg.fingerprint():
            raise DeviceError(f"the card's kernel was built for another configuration "
                              f"(hw_id {hw_id:#010x}, the package needs "
                              f"{cfg.fingerprint():#010x}): rebuild the xclbin or recompile")
        self.args = kernel_args(cfg)
        sizes = {"program": kernel_program_bytes(compiled)}
        sizes.update({f"ch{c}": n for c, n in enumerate(compiled.host.channel_bytes)})
        self.buffers = {a.name: self.xrt.bo(self.card, sizes[a.name], self.xrt.bo.normal,
                                            self.kernel.group_id(a.index))
                        for a in self.args if a.is_pointer and a.name in sizes}
        self.load_image()

    def _register(self, name: str) -> int:
        return int(self.kernel.read_register(self._offsets[name]))

    def _sync(self, name: str, to_device: bool, nbytes: int, offset: int) -> None:
        d = self.xrt.xclBOSyncDirection
        self.buffers[name].sync(d.XCL_BO_SYNC_BO_TO_DEVICE if to_device
                                else d.XCL_BO_SYNC_BO_FROM_DEVICE, nbytes, offset)

    def write(self, chan: int, addr: int, data: np.ndarray) -> None:
        data = np.asarray(data, dtype=np.uint8).reshape(-1)
        self.buffers[f"ch{chan}"].write(data, addr)
        self._sync(f"ch{chan}", True, data.size, addr)

    def read(self, chan: int, addr: int, nbytes: int) -> np.ndarray:
        self._sync(f"ch{chan}", False, nbytes, addr)
        return np.asarray(self.buffers[f"ch{chan}"].read(nbytes, addr), dtype=np.uint8).copy()

    def call_arguments(self, words: int) -> list:
        """The kernel call's arguments in order: buffers for pointers, numbers for scalars."""
        scalars = {"program_words": words}
        return [self.buffers[a.name] if a.is_pointer else scalars[a.name] for a in self.args]

    def execute(self, program: Program, regs: dict[Reg, int]) -> RunStats:
        blob = np.frombuffer(kernel_program(program, regs), dtype=np.uint8)
        self.buffers["program"].write(blob, 0)
        self._sync("program", True, blob.size, 0)
        run = self.kernel(*self.call_arguments(blob.size // isa.WORD_BYTES))
        state = run.wait(RUN_TIMEOUT_MS)
        if state != self.xrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED:
            raise DeviceError(f"{program.kind} {program.length}: the kernel run ended in "
                              f"state {state}")
        cycles = self._register("cycles_lo") | self._register("cycles_hi") << 32
        counters = {name: self._register(name) for name in self._offsets
                    if name.startswith(COUNTER_PREFIXES)}
        return kernel_stats(program, regs, self._register("status"), cycles, counters)

    def close(self) -> None:
        """Release the buffers and the kernel (XRT frees them with the last reference)."""
        self.buffers.clear()
        self.kernel = None
