"""A stand-in for XRT's ``pyxrt`` that runs the kernel on the emulator.

It behaves as XRT and the card do, from what the board flow's ``kernel.xml`` says: a kernel
call writes each argument at the offset kernel.xml gives (a buffer's device address for a
pointer, the value for a scalar); the "card" then reads the program address, its length and the
channel bases from the RTL register map (``hw/axi.py``), runs the program on the emulator over
the device-side contents of the buffers at those addresses, and sets the status, cycle and
counter registers. Buffers have separate host and device copies, so a missing ``sync`` shows.
"""

from __future__ import annotations

import enum
from types import SimpleNamespace

import numpy as np

from boards import kernel_xml
from llmacc import isa
from llmacc.config import AccelConfig
from llmacc.kernel import Fault, register_map, status_word
from sim.emulator import Emulator, EmulatorError

PAGE = 1 << 32  #: device addresses: one 4 GiB page per buffer, so bases need the high word


class SyncDirection(enum.Enum):
    XCL_BO_SYNC_BO_TO_DEVICE = 0
    XCL_BO_SYNC_BO_FROM_DEVICE = 1


class CmdState(enum.Enum):
    ERT_CMD_STATE_COMPLETED = 4
    ERT_CMD_STATE_ERROR = 5


class Card:
    def __init__(self, xrt: FakeXrt, index: int):
        if index >= xrt.cards:
            raise RuntimeError(f"no device {index}")
        self.xrt, self.buffers, self.xclbin = xrt, {}, None

    def load_xclbin(self, path: str) -> str:
        self.xclbin = path
        return "uuid-" + path


class Bo:
    normal = "normal"

    def __init__(self, card: Card, size: int, flags: str, group: int):
        self.size, self.group = size, group
        self.host = np.zeros(size, np.uint8)
        self.device = np.zeros(size, np.uint8)
        self.addr = PAGE * (len(card.buffers) + 1) + 0x1000 * group
        card.buffers[self.addr] = self
        card.xrt.log.append(("bo", size, group))

    def address(self) -> int:
        return self.addr

    def write(self, data, seek: int) -> None:
        data = np.asarray(data, np.uint8)
        self.host[seek:seek + data.size] = data

    def read(self, size: int, skip: int) -> np.ndarray:
        return self.host[skip:skip + size].copy()

    def sync(self, direction: SyncDirection, size: int, offset: int) -> None:
        span = slice(offset, offset + size)
        if direction is SyncDirection.XCL_BO_SYNC_BO_TO_DEVICE:
            self.device[span] = self.host[span]
        else:
            self.host[span] = self.device[span]


class Kernel:
    cu_access_mode = SimpleNamespace(exclusive="exclusive", shared="shared")

    def __init__(self, card: Card, uuid: str, name: str, mode: str):
        xrt = card.xrt
        if name != xrt.kernel_name or mode != "exclusive":
            raise RuntimeError(f"no kernel {name} ({mode})")
        self.card, self.cfg = card, xrt.cfg
        self.ports, self.xml_args = kernel_xml.parse(xrt.kernel_xml)
        self.names = {r.name: r.offset for r in register_map(xrt.cfg.mem_channels)}
        self.regs = {self.names["hw_id"]: xrt.hw_id}

    def group_id(self, index: int) -> int:
        return 10 + self.xml_args[index].index  # a memory bank per argument

    def read_register(self, offset: int) -> int:
        return self.regs.get(offset, 0)

    def __call__(self, *args):
        if len(args) != len(self.xml_args):
            raise TypeError(f"kernel takes {len(self.xml_args)} arguments, got {len(args)}")
        for value, arg in zip(args, self.xml_args, strict=True):
            word = value.address() if arg.pointer else int(value)
            for i in range(arg.size // 4):
                self.regs[arg.offset + 4 * i] = word >> 32 * i & 0xFFFFFFFF
        self.card.xrt.log.append(("run", [a.address() if isinstance(a, Bo) else a
                                          for a in args]))
        return SimpleNamespace(wait=lambda timeout_ms: self._run())

    def _reg64(self, name: str) -> int:
        return self.regs.get(self.names[name + "_lo"], 0) | self.regs.get(
            self.names[name + "_hi"], 0) << 32

    def _run(self) -> CmdState:
        bufs = self.card.buffers
        program = bufs[self._reg64("program")]
        words = self.regs[self.names["program_words"]]
        chans = [bufs[self._reg64(f"ch{c}")] for c in range(self.cfg.mem_channels)
                 if self._reg64(f"ch{c}") in bufs]
        emu = Emulator(self.cfg, [b.size for b in chans])
        for c, bo in enumerate(chans):
            emu.write_ext(c, 0, bo.device)
        insns = isa.decode_program(program.device[:words * isa.WORD_BYTES].tobytes())
        try:
            stats = emu.run(insns)
            status = 0
        except EmulatorError:
            stats, status = None, status_word(Fault.PARAM)
        for c, bo in enumerate(chans):
            bo.device[:] = emu.read_ext(c, 0, bo.size)
        cycles = stats.cycles if stats else 0
        self.regs.update({self.names["status"]: status,
                          self.names["cycles_lo"]: cycles & 0xFFFFFFFF,
                          self.names["cycles_hi"]: cycles >> 32,
                          self.names["dispatched"]: stats.instructions if stats else 0})
        for unit, busy in (stats.busy if stats else {}).items():
            self.regs[self.names[f"busy_{unit.lower()}"]] = busy
        return CmdState.ERT_CMD_STATE_COMPLETED


class FakeXrt(SimpleNamespace):
    """The ``pyxrt`` module as :class:`host.xrt_device.XrtDevice` uses it."""

    def __init__(self, cfg: AccelConfig, *, kernel_xml_text: str | None = None,
                 hw_id: int | None = None, cards: int = 1):
        super().__init__(device=lambda i: Card(self, i), kernel=Kernel, bo=Bo,
                         xclBOSyncDirection=SyncDirection, ert_cmd_state=CmdState)
        self.cfg, self.cards, self.log = cfg, cards, []
        self.kernel_name = "llmacc"
        self.kernel_xml = kernel_xml_text or kernel_xml.render(cfg)
        self.hw_id = cfg.fingerprint() if hw_id is None else hw_id
