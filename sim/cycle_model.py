"""Cycle model of one instruction on one unit (the emulator's clock, and ``llmacc perf``'s
memory cycles).

LOAD and STORE follow the data movers as built (``hw/data_mover.py`` and the AXI masters of
``hw/axi.py``), term by term, and are calibrated against the RTL's busy counters
(``tests/test_cycle_model.py``): a LOAD row is one read command whose first beat comes
``READ_LATENCY`` cycles after its address, then one beat per cycle; a STORE row streams its
words and waits for the last burst's response; bursts split at 4 KiB and 256 beats. Rows
that follow one another in external memory are one command.

The compute unit's and SFU's sequencers are priced in :mod:`sim.compute_timing`. Units
overlap as far as the dependency tokens allow (the emulator keeps one timeline per unit).
"""

from __future__ import annotations

from llmacc import isa
from llmacc import layout as L
from llmacc.config import AccelConfig
from llmacc.kernel import BOUNDARY, BURST_MAX, RESULT_STAGES, chain_latency

#: Cycles from a read address to its first data beat: the RTL harness's memories
#: (sim/top_harness.py), the emulator and the performance model. The AXI interconnect and HBM
#: controller of a U280 answer in some tens of cycles at 225 MHz.
READ_LATENCY = 32
MOVER_SETUP = 3  #: a LOAD/STORE's cycles outside its rows: decode, checks, completion
LOAD_ROW_EXTRA = 2  #: a LOAD row's command and address handshake, before the read latency
#: a STORE row's command, its read-ahead word, the last beat's write response (one cycle in
#: the harness) and the drain
STORE_ROW_EXTRA = 4
STORE_BURST_EXTRA = 1  #: each further write burst of a row: its address handshake
#: A program's cycles outside its instructions: the instruction fetch's read latency and the
#: completion after the last instruction (the first word's beats come on top).
PROGRAM_EXTRA = 35
ISSUE_CYCLES = 2  #: the controller decodes and dispatches one instruction per 2 cycles
TOKEN_EXTRA = 2  #: from a unit's completion to the start of the instruction waiting on it


#: The HBM efficiency parameter: the share of a channel's peak bandwidth that a reader
#: which never lets the channel wait gets (refresh; page and bank effects on a board). The
#: channel model of the RTL benches (``sim/hbm_model.py``) draws its refresh bubbles from it;
#: a board measures it.
HBM_EFFICIENCY = 0.97
#: The HBM channel model's read latency: uniform over this range, in cycles.
HBM_LATENCY = (40, 120)
#: A weight stream's cycles outside its beats: the command into the queue, the first
#: address, and the first word through the FIFO to the consumer.
STREAM_EXTRA = 4


def channel_bytes_per_cycle(cfg: AccelConfig) -> float:
    """One channel's peak bytes per cycle (``channel_gbps`` at ``clock_mhz``)."""
    return cfg.channel_gbps * 1e3 / cfg.clock_mhz


def stream_cycles(cfg: AccelConfig, words: int, efficiency: float = HBM_EFFICIENCY) -> int:
    """Cycles for one weight streamer (``hw/weight_streamer.py``) to deliver ``words``
    contiguous words to a consumer that never stalls: the mean round trip, then the words at
    the port's rate or the channel's, whichever is lower, times ``efficiency``."""
    if words <= 0:
        return 0
    rate = min(1.0, channel_bytes_per_cycle(cfg) / cfg.axi_data_bytes) * efficiency
    return STREAM_EXTRA + sum(HBM_LATENCY) // 2 + round(words / rate)


def engine_stream_cycles(cfg: AccelConfig, geom: L.StreamGeometry, passes: int,
                         words: int) -> int:
    """Cycles of one MATVEC on the streaming matrix path (``hw/stream_engine.py``): each
    channel streams its ``words`` (:func:`stream_cycles`) while the engine takes a beat per
    cycle once its lanes hold their first WEIGHTS and SCALES words; a pass lasts its beats,
    or the collector's two results per lane of a channel (each channel has its way) if that
    is longer; a pre-skewed stream's tail beats after the last (``geom.tail``, taken as
    their words come, the chain advancing with them); then the last beat's way through the
    chain and the collector. Nothing in it grows with the channels: a slice of a few stands
    for all of them."""
    lanes = cfg.lanes_per_channel  # one collector way's
    first = STREAM_EXTRA + sum(HBM_LATENCY) // 2 + 2 * lanes
    compute = first + passes * max(geom.beats, 2 * lanes + 1) + geom.tail
    drain = chain_latency(cfg.chain_group) - geom.tail + RESULT_STAGES + 2 * lanes
    return max(stream_cycles(cfg, words), compute) + drain


def fetch_beats(cfg: AccelConfig) -> int:
    """AXI beats per instruction word on the instruction port (at least one)."""
    return -(-isa.WORD_BYTES // cfg.axi_data_bytes)


def issue_cycles(cfg: AccelConfig) -> int:
    """Cycles between two instructions leaving the controller. The fetch holds one word: it
    takes the next word's beats only after handing the last word over, one cycle, so a word
    of several beats costs its beats plus one. Ports of two or more words per beat are not
    calibrated: there the controller's own ISSUE_CYCLES is assumed."""
    if cfg.axi_data_bytes > isa.WORD_BYTES:
        return ISSUE_CYCLES
    return fetch_beats(cfg) + 1


def beat_cycles(cfg: AccelConfig, words: int) -> int:
    """Cycles to move ``words`` AXI words through one port: one per cycle, or fewer when the
    channel's bandwidth is below the port's."""
    bytes_per_cycle = channel_bytes_per_cycle(cfg)
    return max(words, -(-int(words * cfg.axi_data_bytes * 1000) // int(bytes_per_cycle * 1000)))


def bursts(cfg: AccelConfig, addr: int, words: int) -> int:
    """AXI bursts of one row of ``words`` words at byte ``addr`` (4 KiB / 256-beat rule)."""
    w, count = cfg.axi_data_bytes, 0
    while words > 0:
        n = min(words, BURST_MAX, (BOUNDARY - addr % BOUNDARY) // w)
        addr, words, count = addr + n * w, words - n, count + 1
    return count


def load_row_cycles(cfg: AccelConfig, words: int) -> int:
    """One LOAD row: the next row's command waits for this row's last beat."""
    return LOAD_ROW_EXTRA + READ_LATENCY + beat_cycles(cfg, words)


def store_row_cycles(cfg: AccelConfig, addr: int, words: int) -> int:
    return (STORE_ROW_EXTRA + STORE_BURST_EXTRA * (bursts(cfg, addr, words) - 1)
            + beat_cycles(cfg, words))


def transfer_cycles(cfg: AccelConfig, load: bool, addr: int, stride: int, rows: int,
                    words: int) -> int:
    """A LOAD (``load``) or STORE of ``rows`` rows of ``words`` words from byte ``addr``."""
    if not rows or not words:
        return MOVER_SETUP
    if stride == words * cfg.axi_data_bytes:  # contiguous rows: one command
        rows, words = 1, rows * words
    if load:
        return MOVER_SETUP + rows * load_row_cycles(cfg, words)
    return MOVER_SETUP + sum(store_row_cycles(cfg, addr + r * stride, words)
                             for r in range(rows))
