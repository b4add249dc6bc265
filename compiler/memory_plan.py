"""Memory planning: external-memory regions spread over the channels, and buffer allocation.

:class:`ExtPlan` lays out the model package's image (packed weights, META records, tables) and
the run-time regions (KV cache, inputs, logits) in external memory. Regions go round-robin over
the channels (HBM pseudo-channels on the u280 config), so consecutive weight tiles stream from
different channels. :class:`BufPlan` hands out word ranges of the on-chip buffers for one
program and names what did not fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from llmacc.config import AccelConfig
from llmacc.isa import Buffer

ALIGN = 64  #: external regions start on 64-byte boundaries (an HBM burst)


class CompileError(ValueError):
    """A model, shape or configuration the compiler cannot map; the message says what."""


@dataclass(frozen=True)
class Region:
    chan: int
    addr: int
    nbytes: int


@dataclass(frozen=True)
class LogitSlice:
    """Logits ``n0 .. n0 + n`` of every position: one output tile's rows of ``pitch`` bytes.

    The classifier's logits are split by tile, each slice on its tile's channel, so that a
    large vocabulary at a long context never has to fit one channel."""

    region: Region
    n0: int
    n: int
    pitch: int


@dataclass
class ExtPlan:
    """External memory: per-channel bump allocation with initial contents (the image)."""

    cfg: AccelConfig
    used: list[int] = field(default_factory=list)
    image: list[tuple[Region, bytes]] = field(default_factory=list)
    _next: int = 0

    def __post_init__(self) -> None:
        self.used = [0] * self.cfg.mem_channels

    def alloc(self, name: str, nbytes: int, data: np.ndarray | None = None,
              chan: int | None = None, context_row: int = 0) -> Region:
        """A region of ``nbytes`` (on the next channel round-robin unless ``chan`` is given);
        ``context_row``: the bytes per token of context of a region sized by ``--max-len``,
        so that a refusal can say that a shorter context shrinks it."""
        if chan is None:
            chan = self.take_channel()
        align = max(ALIGN, self.cfg.axi_data_bytes)
        addr = -(-self.used[chan] // align) * align
        if addr + nbytes > self.cfg.channel_bytes:
            hint = ""
            if context_row:
                hint = (f"; it holds {nbytes // context_row} tokens of context: a shorter "
                        "--max-len shrinks it, the KV cache and the inputs")
            raise CompileError(f"external memory: {name} ({nbytes} B) does not fit channel "
                               f"{chan} ({self.cfg.channel_bytes} B, {addr} B used){hint}")
        self.used[chan] = addr + nbytes
        region = Region(chan, addr, nbytes)
        if data is not None:
            blob = np.ascontiguousarray(data, dtype=np.uint8).tobytes()
            if len(blob) != nbytes:
                raise CompileError(f"{name}: {len(blob)} bytes of data for a {nbytes}-byte region")
            self.image.append((region, blob))
        return region

    def alloc_striped(self, name: str, data: list[np.ndarray], align: int) -> tuple[Region, ...]:
        """The same byte range of every channel, each holding its own ``data`` (as long as
        each other), at a multiple of ``align``: a MATSTREAM tile's weight streams."""
        nbytes = data[0].size
        if len(data) != self.cfg.mem_channels or any(d.size != nbytes for d in data):
            raise CompileError(f"{name}: {len(data)} streams of unequal length for "
                               f"{self.cfg.mem_channels} channels")
        addr = -(-max(self.used) // align) * align
        if addr + nbytes > self.cfg.channel_bytes:
            raise CompileError(f"external memory: {name} ({nbytes} B per channel) does not fit "
                               f"the channels ({self.cfg.channel_bytes} B, {addr} B used)")
        regions = []
        for chan, d in enumerate(data):
            self.used[chan] = addr + nbytes
            regions.append(Region(chan, addr, nbytes))
            self.image.append((regions[-1], np.ascontiguousarray(d, np.uint8).tobytes()))
        return tuple(regions)

    def take_channel(self) -> int:
        """The next channel round-robin."""
        chan, self._next = self._next, (self._next + 1) % self.cfg.mem_channels
        return chan

    def channel_bytes(self) -> list[int]:
        """Bytes the emulator must map per channel (up to the last used one)."""
        last = max((c for c, u in enumerate(self.used) if u), default=0)
        return self.used[:last + 1]


class BufPlan:
    """Bump allocation of buffer words for one program body."""

    def __init__(self, cfg: AccelConfig):
        self.cfg = cfg
        self.size = {b: cfg.buffer_words(b) for b in Buffer}
        self.top = dict.fromkeys(Buffer, 0)
        self.names: dict[Buffer, list[str]] = {b: [] for b in Buffer}

    def alloc(self, buf: Buffer, nwords: int, what: str) -> int:
        addr = self.top[buf]
        if addr + nwords > self.size[buf]:
            raise CompileError(
                f"{buf.name} buffer: {what} needs {nwords} words but only "
                f"{self.size[buf] - addr} of {self.size[buf]} are free "
                f"(holding {', '.join(self.names[buf]) or 'nothing'})")
        self.top[buf] = addr + nwords
        self.names[buf].append(what)
        return addr
