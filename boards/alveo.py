"""Alveo board definitions: what the v++ link and the placement need to know about a card.

Only data differs between boards. Memory channel ``c`` of an accelerator configuration goes to
bank ``c % len(banks)``; the instruction port gets its own bank where the card has one to
spare (the U280's DDR), so that program fetch does not take HBM bandwidth from the weights.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Board:
    name: str
    part: str
    platform: str  #: the Vitis target platform (XSA) name
    memory: str  #: "HBM" or "DDR"
    banks: tuple[str, ...]  #: v++ memory resources the channels go to, in channel order
    insn_bank: str  #: where the instruction port goes
    kernel_mhz: float  #: the kernel clock the link asks for
    slrs: int
    kernel_slr: str  #: placement hint: the SLR next to the memory controllers
    bandwidth_gbps: float  #: peak external-memory bandwidth, all banks together

    def bank(self, chan: int) -> str:
        return self.banks[chan % len(self.banks)]


BOARDS: dict[str, Board] = {
    "u280": Board("u280", "xcu280-fsvh2892-2L-e", "xilinx_u280_gen3x16_xdma_1_202211_1", "HBM",
                  tuple(f"HBM[{i}]" for i in range(32)), "DDR[0]", 225.0, 3, "SLR0", 460.0),
    "u55c": Board("u55c", "xcu55c-fsvh2892-2L-e", "xilinx_u55c_gen3x16_xdma_3_202210_1", "HBM",
                  tuple(f"HBM[{i}]" for i in range(32)), "HBM[31]", 225.0, 3, "SLR0", 460.0),
    "u250": Board("u250", "xcu250-figd2104-2L-e", "xilinx_u250_gen3x16_xdma_4_1_202210_1",
                  "DDR", tuple(f"DDR[{i}]" for i in range(4)), "DDR[0]", 225.0, 4, "SLR1",
                  77.0),
}


def board(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise ValueError(f"unknown board {name!r}; boards: {', '.join(BOARDS)}") from None
