"""Static placement of a model in external memory: weight tiles, tables, KV cache, I/O regions.

Each linear layer is cut along its output rows into tiles that fit half of the WGT and META
buffers (the other half holds the next tile while this one computes). A tile's WGT rows and its
META descriptor and row records go to one channel, consecutive tiles to consecutive channels.
Operator fusion is decided here because it lives in the META descriptor
(:data:`LAYER_OUT_MODES`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from compiler.memory_plan import CompileError, ExtPlan, LogitSlice, Region
from llmacc import layout as L
from llmacc.config import AccelConfig
from llmacc.isa import Buffer, MatFields, OutMode, StreamFields
from llmacc.widths import STREAM_PAGE_BITS, STREAM_PAGE_BYTES
from quant.checkpoint import LINEARS
from quant.intref import IntModel
from quant.qlinear import QLinear

#: The fused output of the decoder layers' linears (the others write WIDE results): ``wo`` and
#: ``w2`` add into the residual, ``w1`` applies SiLU. ``sim/perf_model.py`` prices them so.
LAYER_OUT_MODES = {"wo": OutMode.ADD, "w1": OutMode.SILU, "w2": OutMode.ADD}


@dataclass(frozen=True)
class Tile:
    """Rows ``n0 .. n0 + n`` of a linear: WGT rows and META records on one channel, or (a
    MATSTREAM tile) weight streams in every channel and META holding the descriptor only."""

    n0: int  #: first output row
    n: int
    wgt: Region | None
    meta: Region
    streams: tuple[Region, ...] = ()


@dataclass(frozen=True)
class LinearPlan:
    name: str
    k: int  #: padded reduction length (the quantized input row's length)
    n: int
    mode: OutMode
    tiles: tuple[Tile, ...]


@dataclass(frozen=True)
class LayerTables:
    """Word offsets inside one layer's TABLE block."""

    attn_gamma: int
    ffn_gamma: int
    k_centre: int
    k_recip: int
    q_smooth: int
    words: int

    @classmethod
    def of(cls, dim: int, kv_dim: int, w: int) -> LayerTables:
        """Both gamma records, the key centre and reciprocal rows, the query smoothing row."""
        gp, kp = L.gamma_pitch(dim, w), L.wide_pitch(kv_dim, w)
        offs = [0, gp, 2 * gp, 2 * gp + kp, 2 * gp + 2 * kp]
        return cls(*offs, offs[-1] + L.wide_pitch(dim, w))


@dataclass
class Placement:
    cfg: AccelConfig
    ext: ExtPlan
    max_len: int  #: longest context (prefill + decode) the package supports
    linears: dict[str, LinearPlan]
    layer_tables: LayerTables
    tables: list[Region]  #: per layer
    final_gamma: Region
    rope: Region
    embedding: Region  #: one record per vocabulary entry (the host gathers from it)
    record_words: int  #: words per embedding record
    inputs: Region  #: max_len records written by the host
    logits: tuple[LogitSlice, ...]  #: per classifier tile: max_len wide rows of its logits
    kv: dict[tuple[int, int, str], Region]  #: (layer, kv head, "k" | "v")
    kv_bits: int

    @property
    def w(self) -> int:
        return self.cfg.axi_data_bytes


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise CompileError(what)


def check_model(im: IntModel, cfg: AccelConfig) -> None:
    """Shapes the accelerator cannot run, named with where they come from."""
    mc = im.config
    w = cfg.axi_data_bytes
    hd = mc.head_dim
    _check(hd % 2 == 0, f"model: head_dim {hd} is odd (RoPE rotates pairs)")
    _check(hd <= 254, f"model: head_dim {hd} exceeds the ATTN field (254)")
    _check(hd * 4 % w == 0, f"model: head_dim {hd} x 4 B is not a multiple of the "
           f"{w}-byte buffer word of config {cfg.name} (attention writes whole words)")
    _check(mc.n_heads % mc.n_kv_heads == 0,
           f"model: {mc.n_heads} heads are not a multiple of {mc.n_kv_heads} KV heads")
    limit = (1 << MatFields.as_shape()["k"].width) - 1
    for name, q in _linears(im):
        _check(q.padded_in <= limit, f"{name}: K = {q.padded_in} exceeds the ISA's {limit}")
        _check(q.fmt in L.FORMAT_OF, f"{name}: unknown weight format {q.fmt!r}")
        _check(q.group & (q.group - 1) == 0 and 8 <= q.group <= 128,
               f"{name}: group {q.group} is not a power of two in 8..128")
    _check(im.kv_bits in (4, 8), f"model: KV cache of {im.kv_bits} bits (4 or 8 supported)")


def _linears(im: IntModel) -> list[tuple[str, QLinear]]:
    out = []
    for i, layer in enumerate(im.layers):
        out += [(f"layers.{i}.{n}", getattr(layer, n)) for n in LINEARS]
    return out + [("output", im.output)]


def tile_rows(cfg: AccelConfig, desc: L.Descriptor, k: int, n: int, name: str) -> int:
    """Output rows of one weight tile of ``name`` [n, k]: what fits half of the WGT and META
    buffers (the other half holds the next tile)."""
    w = cfg.axi_data_bytes
    wgt_half = cfg.buffer_words(Buffer.WGT) // 2
    meta_half = cfg.buffer_words(Buffer.META) // 2 - L.descriptor_words(w)
    rows = min(n, wgt_half // desc.wgt_pitch(k, w), meta_half // desc.meta_pitch(k, w))
    if rows < n:
        rows -= rows % max(1, w // 4)  # tiles after the first start on a word of the output
    if rows < 1:
        raise CompileError(f"{name}: one weight row of K = {k} ({desc.wgt_pitch(k, w)} WGT, "
                           f"{desc.meta_pitch(k, w)} META words) does not fit half of the "
                           f"buffers of config {cfg.name}")
    return rows


def stream_geometry(cfg: AccelConfig, desc: L.Descriptor, k: int) -> L.StreamGeometry | None:
    """The weight streams of a ``desc`` tile of K = ``k`` on ``cfg``, or None where its
    format does not fit a stream's words (it goes through WGT and META instead)."""
    try:
        return L.stream_geometry(cfg, desc, k)
    except L.LayoutError:
        return None


def matrix_geometry(cfg: AccelConfig, desc: L.Descriptor, k: int,
                    name: str) -> L.StreamGeometry | None:
    """How a streamed ``desc`` tile of K = ``k`` runs on ``cfg``: its weight streams
    (MATSTREAM), or None where its format does not fit a stream's words (MATVEC/MATMAT from
    WGT and META); refuses it where ``cfg`` has no such record path."""
    geom = stream_geometry(cfg, desc, k)
    if geom is None and not cfg.record_matrices:
        raise CompileError(
            f"{name}: {desc.wfmt.name} weights with {desc.sparsity.name} sparsity do not fit "
            f"a {cfg.axi_data_bits}-bit weight stream, and config {cfg.name} has no record "
            "path for MATVEC/MATMAT (record_matrices is false)")
    return geom


def stream_tile_rows(cfg: AccelConfig, n: int) -> int:
    """Rows of one MATSTREAM tile: all of them, up to what the ``n`` field holds, in whole
    passes of the engine and whole words of the output."""
    unit = math.lcm(cfg.mem_channels * cfg.lanes_per_channel, max(1, cfg.axi_data_bytes // 4))
    limit = (1 << StreamFields.as_shape()["n"].width) - 1
    return min(n, limit // unit * unit)


def place_linear(ext: ExtPlan, cfg: AccelConfig, name: str, q: QLinear, f_in: int, f_out: int,
                 mode: OutMode = OutMode.WIDE, p0: int = 0, p1: int = 0,
                 stream: bool = False) -> LinearPlan:
    """The tiles of one linear in external memory; with ``stream``, as MATSTREAM tiles
    where its format streams (:func:`stream_geometry`)."""
    w = cfg.axi_data_bytes
    k, n = q.padded_in, q.out_features
    desc = L.Descriptor.of(q.fmt, q.sparsity, q.group, p0, p1)
    why = desc.schedule_error(cfg.chain_group)
    if why:
        raise CompileError(f"{name}: the matrix engine of config {cfg.name} cannot run this "
                           f"layer: {why}")
    aux = q.zero_points if q.fmt == "w2" else q.dtype_ids
    shift = q.row_exp + f_in - f_out
    if int(shift.abs().max()) >= 1 << 15:
        raise CompileError(f"{name}: row shift {int(shift.abs().max())} exceeds 16 bits")
    geom = matrix_geometry(cfg, desc, k, name) if stream else None
    if geom is not None:
        return _place_streams(ext, cfg, name, q, geom, shift, aux, mode)
    rows = tile_rows(cfg, desc, k, n, name)
    tiles = []
    for t, n0 in enumerate(range(0, n, rows)):
        sl = slice(n0, min(n, n0 + rows))
        wgt, meta = L.encode_weight_rows(
            desc, q.codes[sl], None if q.keep is None else q.keep[sl], q.mant[sl], shift[sl],
            None if aux is None else aux[sl], w)
        meta = np.concatenate([desc.encode(w).reshape(-1), meta.reshape(-1)])
        chan = ext.take_channel()
        wr = ext.alloc(f"{name}.tile{t}.wgt", wgt.size, wgt, chan)
        mr = ext.alloc(f"{name}.tile{t}.meta", meta.size, meta, chan)
        tiles.append(Tile(n0, sl.stop - n0, wr, mr))
    return LinearPlan(name, k, n, mode, tuple(tiles))


def _place_streams(ext: ExtPlan, cfg: AccelConfig, name: str, q: QLinear,
                   geom: L.StreamGeometry, shift, aux, mode: OutMode) -> LinearPlan:
    """MATSTREAM tiles: per tile, every channel's weight stream at one page-aligned offset
    and the descriptor on the next channel round-robin. The classifier keeps the record
    path's tile rows, so that its logit slices spread over the channels."""
    w, n = cfg.axi_data_bytes, q.out_features
    rows = tile_rows(cfg, geom.desc, geom.k, n, name) if name == "output" else \
        stream_tile_rows(cfg, n)
    tiles = []
    for t, n0 in enumerate(range(0, n, rows)):
        sl = slice(n0, min(n, n0 + rows))
        streams = L.encode_tile_streams(
            geom, cfg.mem_channels, cfg.lanes_per_channel, q.codes[sl],
            None if q.keep is None else q.keep[sl], q.mant[sl], shift[sl],
            None if aux is None else aux[sl])
        regions = ext.alloc_striped(f"{name}.tile{t}.streams", streams, STREAM_PAGE_BYTES)
        if regions[0].addr // STREAM_PAGE_BYTES >= 1 << STREAM_PAGE_BITS:
            raise CompileError(f"{name}: its weight streams start past the {STREAM_PAGE_BITS}-bit "
                               "page field")
        desc = geom.desc.encode(w).reshape(-1)
        mr = ext.alloc(f"{name}.tile{t}.desc", desc.size, desc)
        tiles.append(Tile(n0, sl.stop - n0, None, mr, regions))
    return LinearPlan(name, geom.k, n, mode, tuple(tiles))


def _logit_slice(ext: ExtPlan, tile: Tile, max_len: int, w: int) -> LogitSlice:
    """``max_len`` rows of one classifier tile's logits, on the tile's own channel."""
    pitch = L.wide_pitch(tile.n, w) * w
    region = ext.alloc(f"logits[{tile.n0}:{tile.n0 + tile.n}]", max_len * pitch,
                       chan=tile.meta.chan, context_row=pitch)
    return LogitSlice(region, tile.n0, tile.n, pitch)


def place(im: IntModel, cfg: AccelConfig, max_len: int | None = None,
          stream: bool = False) -> Placement:
    """The whole model in external memory; ``stream``: the linears as MATSTREAM tiles
    where their formats stream."""
    check_model(im, cfg)
    if not stream and not cfg.record_matrices:
        raise CompileError(f"config {cfg.name} has no record path for MATVEC/MATMAT "
                           "(record_matrices is false): its weights must stream (drop "
                           "--no-stream-weights)")
    mc = im.config
    w = cfg.axi_data_bytes
    longest = min(cfg.max_seq_len, mc.seq_len, im.rope_cos.shape[0])
    max_len = longest if max_len is None else max_len
    if not 1 <= max_len <= longest:
        raise CompileError(f"context of {max_len} tokens: config {cfg.name}, the model and its "
                           f"RoPE table allow at most {longest}")
    ext = ExtPlan(cfg)
    fr = im.F["resid"]
    linears: dict[str, LinearPlan] = {}
    for i, layer in enumerate(im.layers):
        F, p = layer.F, f"layers.{i}."
        for nm, f_in, f_out in (("wq", "attn_norm", "q"), ("wk", "attn_norm", "k"),
                                ("wv", "attn_norm", "v"), ("w3", "ffn_norm", "up")):
            linears[p + nm] = place_linear(ext, cfg, p + nm, getattr(layer, nm), F[f_in],
                                           F[f_out], stream=stream)
        linears[p + "wo"] = place_linear(ext, cfg, p + "wo", layer.wo, F["o"], F["wo"],
                                         LAYER_OUT_MODES["wo"], F["wo"] - fr, stream=stream)
        linears[p + "w1"] = place_linear(ext, cfg, p + "w1", layer.w1, F["ffn_norm"], F["gate"],
                                         LAYER_OUT_MODES["w1"], F["gate"], F["silu"], stream=stream)
        linears[p + "w2"] = place_linear(ext, cfg, p + "w2", layer.w2, F["prod"], F["down"],
                                         LAYER_OUT_MODES["w2"], F["down"] - fr, stream=stream)
    linears["output"] = place_linear(ext, cfg, "output", im.output, im.F["final_norm"],
                                     im.F["logits"], stream=stream)
    # Per-layer TABLE block: both gamma records and the key transform rows.
    dim = mc.dim
    lt = LayerTables.of(dim, mc.kv_dim, w)
    tables = []
    for i, layer in enumerate(im.layers):
        block = np.concatenate([
            L.encode_gamma(layer.attn_gamma, layer.attn_eps, w).reshape(-1),
            L.encode_gamma(layer.ffn_gamma, layer.ffn_eps, w).reshape(-1),
            L.encode_wide(layer.k_centre.unsqueeze(0), w).reshape(-1),
            L.encode_wide(layer.k_recip.unsqueeze(0), w).reshape(-1),
            L.encode_wide(layer.q_smooth.unsqueeze(0), w).reshape(-1)])
        tables.append(ext.alloc(f"layers.{i}.tables", block.size, block))
    fg = L.encode_gamma(im.final_gamma, im.final_eps, w).reshape(-1)
    final_gamma = ext.alloc("norm.table", fg.size, fg)
    rope = L.encode_rope(im.rope_cos[:max_len], im.rope_sin[:max_len], w)
    rope_r = ext.alloc("rope", rope.size, rope)
    e = im.embedding
    groups = -(-dim // e.group)
    emb = L.encode_embedding(e.operands()[:, :dim], e.mant[:, :groups], e.row_exp, dim, w)
    emb_r = ext.alloc("embedding", emb.size, emb)
    inputs = ext.alloc("inputs", max_len * emb.shape[1], context_row=emb.shape[1])
    logits = tuple(_logit_slice(ext, t, max_len, w) for t in linears["output"].tiles)
    # a KV head's cache: a KV block of max_len rows (a step's header words, stored at
    # POS // kv_slots, end inside it whatever POS)
    kvb = L.kv_block(max_len, mc.head_dim, im.kv_bits, w) * w
    kv = {(i, g, s): ext.alloc(f"kv.{i}.{g}.{s}", kvb, context_row=kvb // max_len)
          for i in range(mc.n_layers) for g in range(mc.n_kv_heads) for s in "kv"}
    return Placement(cfg, ext, max_len, linears, lt, tables, final_gamma, rope_r, emb_r,
                     emb.shape[1] // w, inputs, logits, kv, im.kv_bits)

