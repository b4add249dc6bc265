"""The Vitis kernel's interface, derived from the RTL's register map (``hw/axi.py``).

One list of :class:`KernelArg` serves the board flow (``kernel.xml``, the ``package_xo`` Tcl,
the v++ connectivity) and the host's ``xrt`` back end (argument order and buffers), so the
three cannot disagree with the registers the control slave decodes.
"""

from __future__ import annotations

from dataclasses import dataclass

from hw.axi import LITE_ADDR_BITS, register_map
from llmacc.config import AccelConfig

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
    """The kernel's arguments in XRT order (by register offset)."""
    grouped: dict[str, list] = {}
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
