"""Decoded weight tiles, kept across instructions while their bytes stay the same.

A model's weight tiles are LOADed from external memory into WGT and META for every step, and a
matrix instruction then decodes them (codes, N:M indices, type ids, scale mantissas) before it
multiplies. Decoding is most of the emulator's time on a real model, and it always gives the
same operands for the same bytes. :class:`WeightCache` remembers where each buffer range was
loaded from and keeps the decoded, multiply-ready tile per source, so that a tile is decoded once
per run rather than once per token.

The cache never changes a result:

* a buffer range has a known source only while nothing else has written it;
* a MATSTREAM tile is kept per stream (:class:`StreamSource`: its bytes in every channel);
* a write to external memory (a STORE, or the host) drops every source and every decoded tile
  it overlaps, so stale bytes are never taken for the new ones;
* :func:`grouped_acc` equals :func:`llmacc.numerics.linear_acc` exactly (checked in the tests):
  it multiplies in float32 and rescales the group sums in float64 only where the tile's
  operand bounds keep every partial sum an integer below ``2**24`` and ``2**53``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from llmacc import numerics as N
from llmacc.isa import Buffer

Tensor = torch.Tensor

#: Exact integer range of the float formats' significands.
F32_EXACT = 1 << 24
#: Decoded tiles kept at most (bytes of their float32 operands); the oldest go first.
DEFAULT_BUDGET = 4 << 30


@dataclass(frozen=True)
class Source:
    """Where a buffer range came from: one LOAD's external rows."""

    chan: int
    addr: int
    rows: int
    words: int
    stride: int

    def end(self, w: int) -> int:
        """One past its last external byte."""
        return self.addr + max(0, self.rows - 1) * self.stride + self.words * w

    def overlaps(self, chan: int, lo: int, hi: int, w: int) -> bool:
        return chan == self.chan and lo < self.end(w) and self.addr < hi


@dataclass(frozen=True)
class StreamSource:
    """Where a MATSTREAM tile came from: the same bytes of every one of ``channels``."""

    channels: int
    addr: int
    nbytes: int

    def overlaps(self, chan: int, lo: int, hi: int, w: int) -> bool:
        return chan < self.channels and lo < self.addr + self.nbytes and self.addr < hi


@dataclass(frozen=True)
class PreparedTile:
    """A decoded tile in the shapes :func:`grouped_acc` multiplies."""

    ops: Tensor  #: float32 [groups, n, group] when exact in float32, else int64 [n, k]
    mant: Tensor  #: float64 [groups, n, 1] (or int64 [n, groups] with int64 ops)
    shift: Tensor  #: int64 [n]
    group: int
    exact_f32: bool

    @classmethod
    def of(cls, ops: Tensor, mant: Tensor, shift: Tensor, group: int) -> PreparedTile:
        n, k = ops.shape
        bound = max(int(ops.max()), -int(ops.min())) if ops.numel() else 0  # no |ops| copy
        scale_max = int(mant.max()) if mant.numel() else 0
        group_sum = bound * 128 * group  # |x| <= 128 (any INT8 byte) bounds a group's sum
        # float32 group sums, and float64 sums of every group's rescaled term, stay exact
        if group_sum < F32_EXACT and group_sum * scale_max * (k // group) < N.F64_EXACT:
            f32 = ops.to(torch.float32).reshape(n, k // group, group).transpose(0, 1)
            scale = mant.to(torch.float64).t().unsqueeze(-1)
            return cls(f32.contiguous(), scale.contiguous(), shift, group, True)
        return cls(ops, mant, shift, group, False)

    @property
    def nbytes(self) -> int:
        return self.ops.numel() * self.ops.element_size()


def grouped_acc(x: Tensor, tile: PreparedTile) -> Tensor:
    """``numerics.linear_acc(x, ops, mant, group)`` of a prepared tile, exactly."""
    if not tile.exact_f32:
        return N.linear_acc(x, tile.ops, tile.mant, tile.group)
    groups, _, group = tile.ops.shape
    t = x.shape[0]
    xg = x.to(torch.float32).reshape(t, groups, group).permute(1, 2, 0)  # [G, group, T]
    psum = torch.bmm(tile.ops, xg).to(torch.float64)  # [G, n, T], exact integers < 2**24
    # all G terms together stay below 2**53 (PreparedTile.of): the float64 sum is exact
    acc = (psum * tile.mant).sum(0).t()
    return N.check_range(acc.to(N.I64), N.ACC_BITS, "matrix accumulator")


class WeightCache:
    """Sources of the WGT and META buffers' ranges, and the decoded tiles they hold."""

    TRACKED = (Buffer.WGT, Buffer.META)

    def __init__(self, w: int, budget: int = DEFAULT_BUDGET):
        self.w = w
        self.budget = budget
        self._sources: dict[Buffer, list[tuple[int, int, Source]]] = {b: [] for b in
                                                                     self.TRACKED}
        self._tiles: OrderedDict[tuple, PreparedTile] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0
        #: per channel, bytes that a source may come from (grows only): most external writes
        #: (KV rows, logits) fall outside it and need no search
        self._watched: dict[int, tuple[int, int]] = {}

    def __len__(self) -> int:
        """Decoded tiles kept."""
        return len(self._tiles)

    def buffer_written(self, buf: Buffer, lo: int, hi: int, source: Source | None = None) -> None:
        """Words ``[lo, hi)`` of ``buf`` were written (by a LOAD from ``source``, or else)."""
        if buf not in self._sources:
            return
        kept = [(a, b, s) for a, b, s in self._sources[buf] if b <= lo or hi <= a]
        if source is not None:
            kept.append((lo, hi, source))
            a, b = self._watched.get(source.chan, (source.addr, source.addr))
            self._watched[source.chan] = (min(a, source.addr), max(b, source.end(self.w)))
        self._sources[buf] = kept

    def external_written(self, chan: int, lo: int, hi: int) -> None:
        """Bytes ``[lo, hi)`` of channel ``chan`` changed: forget what was read from them."""
        a, b = self._watched.get(chan, (0, 0))
        if hi <= a or b <= lo:
            return
        w = self.w
        for buf, ranges in self._sources.items():
            if any(s.overlaps(chan, lo, hi, w) for _, _, s in ranges):
                self._sources[buf] = [r for r in ranges if not r[2].overlaps(chan, lo, hi, w)]
        stale = [key for key in self._tiles if any(
            isinstance(part, Source | StreamSource) and part.overlaps(chan, lo, hi, w)
            for part in key)]
        for key in stale:
            self._bytes -= self._tiles.pop(key).nbytes

    def key(self, wgt: tuple[int, int], meta: tuple[int, int], k: int) -> tuple | None:
        """The cache key of a tile read from WGT words ``wgt`` and META words ``meta``
        (``(lo, hi)`` each), or None when either range has no single known source."""
        ws, ms = self._source_of(Buffer.WGT, *wgt), self._source_of(Buffer.META, *meta)
        if ws is None or ms is None:
            return None
        return (ws[0], wgt[0] - ws[1], ms[0], meta[0] - ms[1], wgt[1] - wgt[0], k)

    def stream_key(self, channels: int, addr: int, nbytes: int, geom: object, n: int) -> tuple:
        """The cache key of a MATSTREAM tile of ``n`` rows in the streams of ``geom`` (a
        ``layout.StreamGeometry``) at bytes ``[addr, addr + nbytes)`` of every channel."""
        return (StreamSource(channels, addr, nbytes), geom, n)

    def _source_of(self, buf: Buffer, lo: int, hi: int) -> tuple[Source, int] | None:
        for a, b, s in self._sources[buf]:
            if a <= lo and hi <= b:
                return s, a
        return None

    def get(self, key: tuple) -> PreparedTile | None:
        tile = self._tiles.get(key)
        if tile is None:
            self.misses += 1
        else:
            self.hits += 1
            self._tiles.move_to_end(key)
        return tile

    def put(self, key: tuple, tile: PreparedTile) -> None:
        """Keep ``tile`` (none at all with a zero budget; the oldest go when over it)."""
        if self.budget <= 0:
            return
        if isinstance(key[0], StreamSource):  # its bytes are read straight from the channels
            src = key[0]
            for chan in range(src.channels):
                a, b = self._watched.get(chan, (src.addr, src.addr))
                self._watched[chan] = (min(a, src.addr), max(b, src.addr + src.nbytes))
        self._tiles[key] = tile
        self._bytes += tile.nbytes
        while self._bytes > self.budget and len(self._tiles) > 1:
            self._bytes -= self._tiles.popitem(last=False)[1].nbytes
