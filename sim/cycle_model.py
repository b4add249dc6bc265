"""First-order cycle model of one instruction on one unit (the emulator's clock).

Each instruction's latency is its work divided by the unit's throughput plus a fixed pipeline
or memory latency; units overlap as far as the dependency tokens allow (the emulator keeps one
timeline per unit). The constants are first estimates; the performance model calibrates them
against the RTL's cycle counters.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmacc.config import AccelConfig

MEM_LATENCY = 64  #: cycles from an AXI read request to the first beat (HBM/DDR)
#: The read latency of the RTL harness's memories (sim/top_harness.py) and of the performance
#: model (sim/perf_model.py): the AXI interconnect and HBM controller of a U280 answer in some
#: tens of cycles at 225 MHz. The emulator's first-order MEM_LATENCY above is not yet
#: calibrated against it.
READ_LATENCY = 32
SFU_LATENCY = 16  #: SFU pipeline depth (LUTs, multipliers, normalisation)
ROW_LATENCY = 4  #: per-row setup of a row-wise SFU function
REDUCE_LATENCY = 8  #: cascade drain + per-group dequantisation of a matrix tile


@dataclass(frozen=True)
class Work:
    """What one instruction does, counted by the emulator."""

    macs: int = 0  #: multiply-accumulates on the matrix engine (after sparsity)
    elements: int = 0  #: SFU element operations
    rows: int = 0  #: rows (SFU) or output rows (matrix)
    bytes: int = 0  #: bytes moved over AXI


def transfer_cycles(cfg: AccelConfig, nbytes: int) -> int:
    """One channel's AXI port: one beat per cycle, capped by the channel's bandwidth."""
    beats = -(-nbytes // cfg.axi_data_bytes)
    bytes_per_cycle = cfg.channel_gbps * 1e9 / (cfg.clock_mhz * 1e6)
    return MEM_LATENCY + max(beats, int(nbytes / bytes_per_cycle + 0.999))


def matrix_cycles(cfg: AccelConfig, work: Work) -> int:
    return REDUCE_LATENCY + cfg.chain_len + -(-work.macs // cfg.peak_macs_per_cycle)


def sfu_cycles(cfg: AccelConfig, work: Work) -> int:
    return SFU_LATENCY + ROW_LATENCY * work.rows + -(-work.elements // cfg.sfu_lanes)
