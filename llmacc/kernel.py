"""The kernel's host-visible facts, declared once for the RTL, the simulators, the host and
the board flow.

* the AXI4 burst rules that the masters (``hw/axi.py``) and the cycle model follow, and the
  weight streamers' burst size, reads in flight and FIFO depth;
* the AXI4-Lite control slave's register map (the ``ap_ctrl_hs`` block, the kernel
  arguments, the performance counters) and the Vitis kernel arguments derived from it;
* the status word and its :class:`Fault` codes, which the controller and the units raise, the
  emulator mirrors and the host reports;
* the pipeline latency of the DSP cascade, which the RTL builds and the cycle model prices.
"""

from dataclasses import dataclass
from typing import NamedTuple

from amaranth.lib import data, enum

from llmacc.config import AccelConfig

# -- AXI4 bursts -----------------------------------------------------------------------------
BURST_MAX = 256  #: beats in one INCR burst
BOUNDARY = 4096  #: bytes a burst may not cross


# -- weight streams ---------------------------------------------------------------------------
STREAM_BURST_BYTES = 1024  #: bytes in one weight-stream read burst (HBM's efficient size)
#: Bursts a weight streamer keeps in flight. HBM returns the first beat 40-120 cycles after
#: the address, 7.5 KiB at 64 B per cycle, and a burst counts until its last beat is back:
#: 8 bursts of 1 KiB read at 0.947 of the peak in the HBM model, 16 at 0.958-0.975
#: (``make bench-rtl``, attn shapes).
STREAM_BURSTS_IN_FLIGHT = 16


def stream_burst_beats(data_bytes: int) -> int:
    """Beats of one full weight-stream burst on a port of ``data_bytes`` per beat."""
    return max(1, min(BURST_MAX, STREAM_BURST_BYTES // data_bytes))


def stream_fifo_words(data_bytes: int) -> int:
    """Words of a weight streamer's FIFO: room for every beat in flight, twice over, so the
    read channel never waits on the consumer's jitter (a power of two)."""
    words = 2 * STREAM_BURSTS_IN_FLIGHT * stream_burst_beats(data_bytes)
    return 1 << (words - 1).bit_length()


# -- faults and the status word --------------------------------------------------------------
class Fault(enum.IntEnum, shape=8):
    """Why a program stopped (the ``fault`` field of :class:`Status`)."""

    NONE = 0
    OPCODE = 1  #: unknown opcode
    FIELD = 2  #: a field holds a value its enum does not define
    RESERVED = 3  #: non-zero reserved payload bits
    SEMANTICS = 4  #: e.g. MATVEC with m != 1
    DEADLOCK = 5  #: no unit can issue and none is busy
    TOKENS_LEFT = 6  #: HALT with unconsumed tokens
    # reported by the units (``fault_<unit>``), with the pc of the faulting instruction
    ALIGN = 7  #: external address or stride not a whole number of AXI words
    RANGE = 8  #: buffer words or memory channel out of range
    BUS = 9  #: an AXI error response
    UNSUPPORTED = 10  #: an instruction class or size this build cannot run
    PARAM = 11  #: a parameter or record the function refuses (the emulator raises too)


PC_BITS = 16  #: program counter, as the status word reports it


class Status(data.Struct):
    """The ``status`` register: whether the last run stopped on an error, why, and where."""

    error: 1
    reserved: 7
    fault: Fault
    pc: PC_BITS


def status_word(fault: Fault = Fault.NONE, pc: int = 0) -> int:
    """The status register's value for ``fault`` at instruction ``pc``."""
    fields = {"error": int(fault != Fault.NONE), "reserved": 0, "fault": int(fault), "pc": pc}
    word = 0
    for name, fld in Status.as_shape():
        value = fields[name]
        if not 0 <= value < 1 << fld.width:
            raise ValueError(f"Status.{name}: {value} does not fit {fld.width} bits")
        word |= value << fld.offset
    return word


def read_status(word: int) -> tuple[bool, int, int]:
    """``(error, fault code, pc)`` of a status register value (the code may be one this
    version does not know)."""
    layout = Status.as_shape()

    def field(name: str) -> int:
        return word >> layout[name].offset & (1 << layout[name].width) - 1

    return bool(field("error")), field("fault"), field("pc")


def fault_name(code: int) -> str:
    """The :class:`Fault` member's name of ``code``, or the number for an unknown one."""
    try:
        return Fault(code).name
    except ValueError:
        return str(code)


# -- the control slave's registers -----------------------------------------------------------
#: the ap_ctrl_hs block: control (ap_start/done/idle/ready), global interrupt enable,
#: interrupt enable and interrupt status (toggle-on-write) registers
CONTROL, GIE, IER, ISR = 0x00, 0x04, 0x08, 0x0C


class Register(NamedTuple):
    """One 32-bit register of the control slave after the ap_ctrl block."""

    name: str
    offset: int
    access: str  #: "rw" (the host writes it) or "r"
    arg: str = ""  #: the Vitis kernel argument it belongs to ("" for none)
    port: str = ""  #: the AXI master a pointer argument addresses ("" for a scalar)


#: Fixed registers: (name, offset, access[, kernel argument, port]).
ARGS = (
    Register("program_lo", 0x10, "rw", "program", "m_axi_insn"),  #: byte address of the program
    Register("program_hi", 0x14, "rw", "program", "m_axi_insn"),
    Register("program_words", 0x18, "rw", "program_words"),  #: instruction words to run
    Register("status", 0x1C, "r"),  #: a :class:`Status`
    Register("cycles_lo", 0x20, "r"),
    Register("cycles_hi", 0x24, "r"),
    Register("hw_id", 0x28, "r"),  #: AccelConfig.fingerprint()
    Register("dispatched", 0x2C, "r"),  #: instructions dispatched in the last run
    # per unit (isa.Unit order), cycles of the last run: busy, and waiting for tokens
    Register("busy_load", 0x30, "r"), Register("stall_load", 0x34, "r"),
    Register("busy_compute", 0x38, "r"), Register("stall_compute", 0x3C, "r"),
    Register("busy_sfu", 0x40, "r"), Register("stall_sfu", 0x44, "r"),
    Register("busy_store", 0x48, "r"), Register("stall_store", 0x4C, "r"),
)
#: the performance counters' names begin so (read back after every run)
COUNTER_PREFIXES = ("dispatched", "busy_", "stall_")
CHANNEL_BASE = 0x50  #: the first channel's base address; 8 bytes per channel
LITE_ADDR_BITS = 12  #: the control slave decodes 4 KiB


def register_map(channels: int) -> tuple[Register, ...]:
    """Every register of a kernel with ``channels`` memory channels.

    Each channel ``c`` has a 64-bit base address (``ch<c>_lo``/``ch<c>_hi``, kernel argument
    ``ch<c>`` on port ``m_axi_ch<c>``) that the kernel adds to every address it issues on that
    channel: XRT places each buffer where it likes, and the programs stay position-free.
    """
    if channels < 1 or CHANNEL_BASE + 8 * channels > 1 << LITE_ADDR_BITS:
        raise ValueError(f"{channels} channels do not fit the control slave's register space")
    bases = tuple(Register(f"ch{c}_{half}", CHANNEL_BASE + 8 * c + 4 * i, "rw", f"ch{c}",
                           f"m_axi_ch{c}")
                  for c in range(channels) for i, half in enumerate(("lo", "hi")))
    return ARGS + bases


# -- the Vitis kernel's arguments ------------------------------------------------------------
KERNEL_NAME = "llmacc"
CONTROL_PORT = "s_axi_control"
CONTROL_RANGE = 1 << LITE_ADDR_BITS


@dataclass(frozen=True)
class KernelArg:
    """One kernel argument: a 64-bit buffer pointer on an AXI master, or a 32-bit scalar."""

    index: int
    name: str
    offset: int
    size: int  #: bytes in the register space (8 for a pointer, 4 for a scalar)
    port: str  #: the AXI master a pointer addresses; "" for a scalar

    @property
    def is_pointer(self) -> bool:
        return bool(self.port)


def kernel_args(cfg: AccelConfig) -> list[KernelArg]:
    """The kernel's arguments in XRT order (by register offset), one list for the board
    flow (``kernel.xml``, the ``package_xo`` Tcl, the v++ connectivity) and the host's
    ``xrt`` back end, so neither can disagree with the registers the control slave decodes."""
    grouped: dict[str, list[Register]] = {}
    for reg in register_map(cfg.mem_channels):
        if reg.arg:
            grouped.setdefault(reg.arg, []).append(reg)
    args = []
    for index, (name, regs) in enumerate(grouped.items()):
        offsets = [r.offset for r in regs]
        if offsets != list(range(offsets[0], offsets[0] + 4 * len(regs), 4)):
            raise ValueError(f"kernel argument {name}: registers {offsets} are not contiguous")
        args.append(KernelArg(index, name, offsets[0], 4 * len(regs), regs[0].port))
    return args


def master_ports(cfg: AccelConfig) -> list[str]:
    """The AXI4 master ports of the top (``hw/accelerator.py``), instruction port first."""
    return ["m_axi_insn"] + [f"m_axi_ch{c}" for c in range(cfg.mem_channels)]


# -- pipeline latencies ----------------------------------------------------------------------
#: Registers of a DSP cascade beyond one per element (the A/B input and the M stage).
CASCADE_LATENCY_EXTRA = 2


#: The matrix engine's result collector: pick a lane's row, multiply, round, saturate.
RESULT_STAGES = 4


def chain_latency(group: int) -> int:
    """Beats from a chain's input to its taps: its cascades of ``group`` elements run side
    by side (``hw/dsp48e2.py``), so the depth is one cascade's."""
    return group + CASCADE_LATENCY_EXTRA
