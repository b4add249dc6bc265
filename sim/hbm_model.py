"""A bandwidth-faithful model of one HBM pseudo-channel's read path, for RTL benches.

The RTL's memories in the top harness answer after a fixed latency at one beat per cycle.
Whether a read path streams at line rate shows only against memory that behaves like HBM:
:class:`HbmChannel` returns each burst 40-120 cycles (seeded, uniform) after its address, in
order, at most the channel's bytes per cycle (``AccelConfig.channel_gbps`` at the clock, a
token bucket), with refresh bubbles on about 3% of the cycles. :class:`HbmTiming` holds those
numbers; their defaults are the cycle model's (``sim.cycle_model.HBM_EFFICIENCY``, the one
parameter that a board measures later, and ``HBM_LATENCY``).

:func:`stream_bench` drives a :class:`hw.weight_streamer.WeightStreamer` (or anything with
its ports) cycle by cycle against the model through a small :class:`PortIO` adapter, so the
same bench runs in Amaranth's simulator and under cocotb on the Verilated block.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

from amaranth.hdl import Value

from llmacc.config import AccelConfig
from sim.cycle_model import HBM_EFFICIENCY, HBM_LATENCY, channel_bytes_per_cycle


@dataclass(frozen=True)
class HbmTiming:
    """One channel's read timing: peak bytes per cycle, read latency range, refresh share."""

    bytes_per_cycle: float
    latency: tuple[int, int] = HBM_LATENCY
    refresh: float = 1.0 - HBM_EFFICIENCY  #: share of cycles on which no beat can return

    @classmethod
    def of(cls, cfg: AccelConfig, **changes) -> HbmTiming:
        """The timing of one of ``cfg``'s channels (``channel_gbps`` at ``clock_mhz``)."""
        return cls(channel_bytes_per_cycle(cfg), **changes)

    @property
    def efficiency(self) -> float:
        """The share of the peak a perfect reader gets: the refresh bubbles' complement."""
        return 1.0 - self.refresh

    def beats_per_cycle(self, data_bytes: int) -> float:
        """Steady-state beats per cycle a perfect reader gets on a ``data_bytes`` port."""
        return min(1.0, self.bytes_per_cycle / data_bytes) * self.efficiency


class HbmChannel:
    """A seeded read-only AXI4 slave over ``memory``: AR always ready, R in order, paced by
    latency, bandwidth and refresh. Call :meth:`r_channel` for this cycle's R outputs, then
    :meth:`advance` with what handshook at the clock edge."""

    def __init__(self, memory: bytes, data_bytes: int, timing: HbmTiming, rng: random.Random):
        self.memory, self.data_bytes, self.timing, self.rng = memory, data_bytes, timing, rng
        self.now = 0
        self.credit = 0.0
        self.bursts: deque[list[int]] = deque()  # [addr, beats left, first-beat cycle]
        self.last_ready = 0
        self.holding = False  # R valid was offered and not taken: it stays valid
        self.bubble = False

    def request(self, addr: int, beats: int) -> None:
        lo, hi = self.timing.latency
        ready = max(self.now + self.rng.randint(lo, hi), self.last_ready)
        self.last_ready = ready
        self.bursts.append([addr, beats, ready])

    def r_channel(self) -> tuple[bool, int, bool]:
        """(rvalid, rdata, rlast) for this cycle."""
        if not self.bursts:
            return False, 0, False
        addr, left, ready = self.bursts[0]
        valid = self.holding or (ready <= self.now and self.credit >= self.data_bytes
                                 and not self.bubble)
        if not valid:
            return False, 0, False
        if addr + self.data_bytes > len(self.memory):
            raise IndexError(f"read of {addr:#x} beyond the model's {len(self.memory)} bytes")
        word = int.from_bytes(self.memory[addr:addr + self.data_bytes], "little")
        return True, word, left == 1

    def advance(self, offered: bool, taken: bool) -> None:
        """End the cycle: ``offered`` R valid, ``taken`` it handshook."""
        if taken:
            burst = self.bursts[0]
            burst[0] += self.data_bytes
            burst[1] -= 1
            if burst[1] == 0:
                self.bursts.popleft()
            self.credit -= self.data_bytes
        self.holding = offered and not taken
        cap = self.data_bytes + self.timing.bytes_per_cycle
        self.credit = min(cap, self.credit + self.timing.bytes_per_cycle)
        self.now += 1
        self.bubble = self.rng.random() < self.timing.refresh


class PortIO(Protocol):
    """One clock cycle of a block: drive ``inputs`` (port name -> value), return the named
    ``outputs`` as they settle in this cycle, then advance past the clock edge."""

    async def cycle(self, inputs: dict[str, int], outputs: tuple[str, ...]) -> dict[str, int]:
        ...


@dataclass
class StreamReport:
    """What a streaming run did: the words out, the bursts asked, and how fast."""

    words: list[int] = field(default_factory=list)
    bursts: list[tuple[int, int]] = field(default_factory=list)  #: (addr, beats)
    cycles: int = 0  #: from the first command to idle
    first_beat: int | None = None  #: cycle of the first R beat
    last_beat: int = 0
    beats: int = 0
    max_in_flight: int = 0  #: most bursts outstanding at once

    def utilization(self, data_bytes: int, timing: HbmTiming) -> float:
        """Read bytes per cycle in steady state (first to last beat) over the channel's
        peak."""
        span = self.last_beat - (self.first_beat or 0) + 1
        return self.beats * data_bytes / (span * timing.bytes_per_cycle)


class _ChannelDriver:
    """One memory channel of a bench: the command queue into ``{cmd}__*``, the HBM model
    behind ``{axi}__*``, and what the channel did."""

    def __init__(self, cmd: str, axi: str, memory: bytes, commands: list[tuple[int, int]],
                 data_bytes: int, addr_bits: int, timing: HbmTiming, rng: random.Random,
                 ar_stall: float = 0.0):
        self.cmd, self.axi, self.addr_bits = cmd, axi, addr_bits
        self.hbm = HbmChannel(memory, data_bytes, timing, rng)
        self.pending = deque(commands)
        self.report = StreamReport()
        self.r = (False, 0, False)
        #: the address channel refuses with this probability; a refused address must wait
        self.ar_stall, self.rng, self.arready = ar_stall, rng, 1
        self.waiting: tuple[int, int] | None = None

    def outputs(self) -> tuple[str, ...]:
        return (f"{self.cmd}__ready", f"{self.axi}__arvalid", f"{self.axi}__araddr",
                f"{self.axi}__arlen", f"{self.axi}__rready")

    def inputs(self) -> dict[str, int]:
        self.r = rvalid, rdata, rlast = self.hbm.r_channel()
        cmd = self.pending[0] if self.pending else None
        self.arready = int(self.rng.random() >= self.ar_stall) if self.ar_stall else 1
        return {f"{self.cmd}__valid": int(cmd is not None),
                f"{self.cmd}__payload": 0 if cmd is None else cmd[0] | cmd[1] << self.addr_bits,
                f"{self.axi}__arready": self.arready, f"{self.axi}__rvalid": int(rvalid),
                f"{self.axi}__rdata": rdata, f"{self.axi}__rlast": int(rlast),
                f"{self.axi}__rresp": 0}

    def after(self, out: dict[str, int], cycle: int) -> None:
        """Account this cycle's handshakes and end it in the model."""
        report, hbm = self.report, self.hbm
        if self.pending and out[f"{self.cmd}__ready"]:
            self.pending.popleft()
        address = ((out[f"{self.axi}__araddr"], out[f"{self.axi}__arlen"] + 1)
                   if out[f"{self.axi}__arvalid"] else None)
        if self.waiting is not None and address != self.waiting:
            raise AssertionError(f"cycle {cycle}: the waiting address (addr, beats) "
                                 f"{self.waiting} became {address}")
        self.waiting = None
        if address is not None and not self.arready:
            self.waiting = address
        elif address is not None:
            hbm.request(*address)
            report.bursts.append(address)
        rvalid = self.r[0]
        taken = rvalid and bool(out[f"{self.axi}__rready"])
        if taken:
            report.beats += 1
            report.last_beat = cycle
            if report.first_beat is None:
                report.first_beat = cycle
        hbm.advance(rvalid, taken)
        report.max_in_flight = max(report.max_in_flight, len(hbm.bursts))


async def _channel_cycle(io: PortIO, channels: list[_ChannelDriver], inputs: dict[str, int],
                         names: tuple[str, ...], cycle: int) -> dict[str, int]:
    """One cycle of a bench: the block's ``inputs`` and every channel's, its outputs
    ``names`` (which include every channel's and ``error``), each channel's accounting."""
    for ch in channels:
        inputs.update(ch.inputs())
    out = await io.cycle(inputs, names)
    if out["error"]:
        raise AssertionError(f"cycle {cycle}: error flag without an error response")
    for ch in channels:
        ch.after(out, cycle)
    return out


async def _drive(io: PortIO, channels: list[_ChannelDriver], want: int, rng: random.Random,
                 stall: float, max_cycles: int) -> tuple[list[int], int]:
    """Run the channels until the block is idle with ``want`` words out of ``data``;
    returns the words and the cycles."""
    words: list[int] = []
    names = ("data__valid", "data__payload", "idle", "error",
             *(name for ch in channels for name in ch.outputs()))
    cycle = 0
    while True:
        ready = int(rng.random() >= stall)
        out = await _channel_cycle(io, channels, {"data__ready": ready}, names, cycle)
        if out["data__valid"] and ready:
            words.append(out["data__payload"])
        cycle += 1
        if all(not ch.pending for ch in channels) and out["idle"] and len(words) == want:
            return words, cycle
        if cycle > max_cycles:
            raise TimeoutError(f"{len(words)} of {want} words after {cycle} cycles")


async def stream_bench(io: PortIO, memory: bytes, commands: list[tuple[int, int]],
                       data_bytes: int, addr_bits: int, timing: HbmTiming, rng: random.Random,
                       *, stall: float = 0.0, ar_stall: float = 0.0,
                       max_cycles: int = 2_000_000) -> StreamReport:
    """Feed ``commands`` (addr, beats) to one streamer (ports ``cmd``, ``axi``, ``data``),
    serve its reads from the model (refusing an address with probability ``ar_stall``),
    take its words (refusing each with probability ``stall``) until it is idle with every
    word."""
    ch = _ChannelDriver("cmd", "axi", memory, commands, data_bytes, addr_bits, timing, rng,
                        ar_stall)
    want = sum(beats for _, beats in commands)
    ch.report.words, ch.report.cycles = await _drive(io, [ch], want, rng, stall, max_cycles)
    return ch.report


async def abort_bench(io: PortIO, memory: bytes, first: list[tuple[int, int]],
                      then: list[tuple[int, int]], data_bytes: int, addr_bits: int,
                      timing: HbmTiming, rng: random.Random, *, abort_after: int,
                      on_waiting: bool = False, stall: float = 0.3, ar_stall: float = 0.3,
                      max_cycles: int = 500_000) -> tuple[list[int], list[int]]:
    """A stream cut short, then a clean one: ``first``'s commands until ``abort_after`` of
    its words have left (``on_waiting``: and an address waits to be taken, the moment AXI
    makes hardest), then ``abort`` (no more commands) until the streamer is idle, then
    ``then``'s commands. Checks that no word leaves while aborting and that idle comes only
    with no burst left in flight; returns the words before the abort and ``then``'s."""
    ch = _ChannelDriver("cmd", "axi", memory, first, data_bytes, addr_bits, timing, rng,
                        ar_stall)
    names = ("data__valid", "data__payload", "idle", "error", *ch.outputs())
    before: list[int] = []
    words: list[int] = []
    phase = "first"
    want = sum(beats for _, beats in then)
    for cycle in range(max_cycles):
        ready = int(rng.random() >= stall)
        out = await _channel_cycle(io, [ch], {"data__ready": ready,
                                              "abort": int(phase == "abort")}, names, cycle)
        if out["idle"] and ch.hbm.bursts:
            raise AssertionError(f"cycle {cycle}: idle with {len(ch.hbm.bursts)} bursts "
                                 "in flight")
        if out["data__valid"] and ready:
            if phase == "abort":
                raise AssertionError(f"cycle {cycle}: a word left while aborting")
            (before if phase == "first" else words).append(out["data__payload"])
        if phase == "first" and len(before) >= abort_after and (
                ch.waiting is not None or not on_waiting):
            phase = "abort"
            ch.pending.clear()
        elif phase == "abort" and out["idle"]:
            phase = "then"
            ch.pending.extend(then)
        elif phase == "then" and not ch.pending and out["idle"] and len(words) == want:
            return before, words
    raise TimeoutError(f"{phase}: {len(before)} + {len(words)} words after {max_cycles} "
                       "cycles")


async def slice_bench(io: PortIO, memories: list[bytes], commands: list[list[tuple[int, int]]],
                      data_bytes: int, addr_bits: int, timing: HbmTiming, rng: random.Random,
                      *, stall: float = 0.0, max_cycles: int = 2_000_000
                      ) -> tuple[list[int], int, list[StreamReport]]:
    """The same for a channel slice (ports ``cmd{i}``, ``axi{i}`` per channel, one
    ``data`` of every channel's word side by side): its words, cycles and each channel's
    report. Each channel has its own HBM model, with its own latencies and refresh."""
    channels = [_ChannelDriver(f"cmd{i}", f"axi{i}", mem, cmds, data_bytes, addr_bits,
                               timing, random.Random(rng.random()))
                for i, (mem, cmds) in enumerate(zip(memories, commands, strict=True))]
    want = {sum(beats for _, beats in cmds) for cmds in commands}
    if len(want) != 1:
        raise ValueError(f"the channels of a slice stream equal words, not {sorted(want)}")
    words, cycles = await _drive(io, channels, want.pop(), rng, stall, max_cycles)
    return words, cycles, [ch.report for ch in channels]


@dataclass
class EngineRun:
    """What a streaming engine run did: its results, the cycles to the last one, the first
    and last beat the engine took, and each channel's read report."""

    results: list[int]
    cycles: int
    beats: int
    first_beat: int
    last_beat: int
    reports: list[StreamReport]


async def engine_bench(io: PortIO, memories: list[bytes], commands: list[list[tuple[int, int]]],
                       engine_cmd: int, acts: list[int], want: int, data_bytes: int,
                       addr_bits: int, timing: HbmTiming, rng: random.Random, *,
                       max_cycles: int = 5_000_000) -> EngineRun:
    """Drive a :class:`hw.stream_engine.StreamSlice`: the streamers' row reads from the
    channels' HBM models, one engine command, the activation beats as fast as it takes them,
    and its ``want`` results taken as they come."""
    channels = [_ChannelDriver(f"cmd{i}", f"axi{i}", mem, cmds, data_bytes, addr_bits,
                               timing, random.Random(rng.random()))
                for i, (mem, cmds) in enumerate(zip(memories, commands, strict=True))]
    names = ("ecmd__ready", "act__ready", "o__valid", "o__payload", "error",
             *(name for ch in channels for name in ch.outputs()))
    results: list[int] = []
    pending = deque(acts)
    cmd_sent, beats, first, last, cycle = False, 0, -1, -1, 0
    while len(results) < want:
        inputs = {"ecmd__valid": int(not cmd_sent), "ecmd__payload": engine_cmd,
                  "act__valid": int(bool(pending)), "act__payload": pending[0] if pending
                  else 0, "o__ready": 1}
        out = await _channel_cycle(io, channels, inputs, names, cycle)
        cmd_sent |= bool(out["ecmd__ready"])
        if pending and out["act__ready"]:
            pending.popleft()
            beats += 1
            first = cycle if first < 0 else first
            last = cycle
        if out["o__valid"]:
            results.append(out["o__payload"])
        cycle += 1
        if cycle > max_cycles:
            raise TimeoutError(f"{len(results)} of {want} results after {cycle} cycles")
    return EngineRun(results, cycle, beats, first, last, [ch.report for ch in channels])


def expected_words(memory: bytes, commands: list[tuple[int, int]], data_bytes: int) -> list[int]:
    """The words a streamer must give for ``commands``: each command's beats in order."""
    return [int.from_bytes(memory[addr + i * data_bytes:addr + (i + 1) * data_bytes], "little")
            for addr, beats in commands for i in range(beats)]


async def shared_bench(io: PortIO, memory: bytes, commands: list[list[tuple[int, int]]],
                       data_bytes: int, addr_bits: int, timing: HbmTiming, rng: random.Random,
                       *, stall: float = 0.3, ar_stall: float = 0.3,
                       max_cycles: int = 500_000) -> list[list[int]]:
    """Read masters ``i`` (ports ``cmd{i}``, ``data{i}``) sharing one port ``axi`` to one
    HBM model, which takes an address with probability ``1 - ar_stall``; each master's
    data is refused with probability ``stall``. Checks that a waiting address never changes
    and returns each master's words."""
    hbm = HbmChannel(memory, data_bytes, timing, rng)
    pending = [deque(c) for c in commands]
    words: list[list[int]] = [[] for _ in commands]
    want = [sum(beats for _, beats in c) for c in commands]
    masters = range(len(commands))
    names = ("axi__arvalid", "axi__araddr", "axi__arlen", "axi__rready", "error",
             *(f"cmd{i}__ready" for i in masters),
             *(f"{p}{i}__{f}" for i in masters for p, f in (("data", "valid"),
                                                            ("data", "payload"))))
    waiting = None  # the address offered and not taken last cycle
    for cycle in range(max_cycles):
        rvalid, rdata, rlast = hbm.r_channel()
        arready = int(rng.random() >= ar_stall)
        ready = [int(rng.random() >= stall) for _ in masters]
        inputs = {"axi__arready": arready, "axi__rvalid": int(rvalid), "axi__rdata": rdata,
                  "axi__rlast": int(rlast), "axi__rresp": 0}
        for i in masters:
            cmd = pending[i][0] if pending[i] else None
            inputs.update({f"cmd{i}__valid": int(cmd is not None),
                           f"cmd{i}__payload": 0 if cmd is None else cmd[0] | cmd[1] << addr_bits,
                           f"data{i}__ready": ready[i]})
        out = await io.cycle(inputs, names)
        if out["error"]:
            raise AssertionError(f"cycle {cycle}: error flag without an error response")
        address = (out["axi__araddr"], out["axi__arlen"]) if out["axi__arvalid"] else None
        if waiting is not None and address != waiting:
            raise AssertionError(f"cycle {cycle}: the waiting address {waiting} became "
                                 f"{address}")
        waiting = None
        if address is not None:
            if arready:
                hbm.request(address[0], address[1] + 1)
            else:
                waiting = address
        for i in masters:
            if pending[i] and out[f"cmd{i}__ready"]:
                pending[i].popleft()
            if out[f"data{i}__valid"] and ready[i]:
                words[i].append(out[f"data{i}__payload"])
        hbm.advance(rvalid, rvalid and bool(out["axi__rready"]))
        if [len(w) for w in words] == want and not any(pending) and not hbm.bursts:
            return words
    raise TimeoutError(f"{[len(w) for w in words]} of {want} words after {max_cycles} cycles")


class AmaranthIO:
    """:class:`PortIO` over an Amaranth testbench context; port names are the Verilog
    names (``axi__arvalid``: member ``arvalid`` of the interface ``axi``)."""

    def __init__(self, ctx, dut):
        self.ctx, self.dut = ctx, dut
        self._signals: dict[str, object] = {}

    def _signal(self, name: str):
        if name not in self._signals:
            obj = self.dut
            for part in name.split("__"):
                obj = getattr(obj, part)
            self._signals[name] = Value.cast(obj)
        return self._signals[name]

    async def cycle(self, inputs: dict[str, int], outputs: tuple[str, ...]) -> dict[str, int]:
        for name, value in inputs.items():
            self.ctx.set(self._signal(name), value)
        out = {name: self.ctx.get(self._signal(name)) for name in outputs}
        await self.ctx.tick()
        return out


def random_rows(rng: random.Random, data_bytes: int, memory_bytes: int, count: int
                ) -> list[tuple[int, int]]:
    """``count`` row reads (addr, beats) of random length, most contiguous with the one
    before (a weight tile's rows), some jumping (the next tile), some across 4 KiB."""
    rows, addr = [], rng.randrange(0, 64) * data_bytes
    for _ in range(count):
        beats = rng.choice((1, 3, 7, 16, 40, rng.randint(1, 300)))
        if rng.random() < 0.2:
            addr = rng.randrange(0, memory_bytes // 2) // data_bytes * data_bytes
        if addr + beats * data_bytes > memory_bytes:
            addr = 0
        rows.append((addr, beats))
        addr += beats * data_bytes
    return rows


def run_in_amaranth(dut, bench, *args, **kwargs):
    """Run ``bench(io, *args, **kwargs)`` (:func:`stream_bench` or :func:`slice_bench`) on
    ``dut`` in Amaranth's simulator; returns what it returns."""
    from amaranth.sim import Simulator

    result = []

    async def testbench(ctx):
        result.append(await bench(AmaranthIO(ctx, dut), *args, **kwargs))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(testbench)
    sim.run()
    return result[0]
