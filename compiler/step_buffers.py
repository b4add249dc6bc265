"""One step's on-chip buffers: what they are cut from and where each lies.

:class:`StepDims` holds the widths a step's buffers depend on. The compiler reads them from a
placed model; ``llmacc perf`` derives the same numbers from a model's shapes alone, so that it
can say which buffer a model overflows, and by how much, without any weights.
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.memory_plan import BufPlan
from compiler.placement import LayerTables, Placement, tile_rows
from llmacc import layout as L
from llmacc.config import AccelConfig
from llmacc.isa import Buffer
from quant.intref import IntModel
from quant.schemes import Scheme
from quant.weight_quant import padded_width


@dataclass(frozen=True)
class StepDims:
    """The widths of one step's buffers, in elements and words."""

    dim: int
    kv_dim: int
    hidden_dim: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    kv_bits: int
    record_words: int  #: one embedding record
    norm_k: int  #: the longest padded K that reads the quantized normed rows (wq, w1, output)
    wo_k: int
    w2_k: int
    out_tile: int  #: output rows of the first classifier tile
    table_words: int  #: one layer's TABLE block
    final_gamma_words: int

    @classmethod
    def of_placement(cls, im: IntModel, p: Placement) -> StepDims:
        mc, lin = im.config, p.linears
        return cls(mc.dim, mc.kv_dim, mc.hidden_dim, mc.n_heads, mc.n_kv_heads, mc.head_dim,
                   im.kv_bits, p.record_words,
                   max(lin["layers.0.wq"].k, lin["layers.0.w1"].k, lin["output"].k),
                   lin["layers.0.wo"].k, lin["layers.0.w2"].k, lin["output"].tiles[0].n,
                   p.layer_tables.words, p.final_gamma.nbytes // p.w)

    @classmethod
    def of_shape(cls, cfg: AccelConfig, scheme: Scheme, dim: int, hidden: int, heads: int,
                 kv_heads: int, vocab: int) -> StepDims:
        """The dimensions that quantizing and placing a model of these shapes would give."""
        w, g = cfg.axi_data_bytes, scheme.group
        block = scheme.sparsity[1] if scheme.sparsity else 1
        head_dim = dim // heads
        out_k = padded_width(dim, g)
        out_tile = tile_rows(cfg, L.Descriptor.of("int8", None, g), out_k, vocab, "output")
        return cls(dim, kv_heads * head_dim, hidden, heads, kv_heads, head_dim,
                   scheme.kv_bits or 8, L.embed_pitch(dim, g, w),
                   max(padded_width(dim, g, block), out_k), padded_width(dim, g, block),
                   padded_width(hidden, g, block), out_tile,
                   LayerTables.of(dim, kv_heads * head_dim, w).words, L.gamma_pitch(dim, w))


@dataclass(frozen=True)
class StepBuffers:
    """Word addresses of one step's buffers (:func:`allocate_step`); pairs alternate between
    layers, heads or tiles so that a load overlaps the use of the other."""

    xin: int  #: embedding records (ACT)
    x: int  #: the residual, wide rows
    h: int  #: normed rows
    hq: int  #: quantized normed rows
    q: int
    k: int
    v: int
    qq: int  #: quantized queries, one row per head
    probs: int  #: one head's probabilities
    o: int  #: attention output, all heads
    oq: int  #: quantized attention output
    gate: int  #: w1's output through the fused SiLU, then the SwiGLU product
    up: int  #: w3's output
    pq: int  #: the quantized SwiGLU product
    logit: tuple[int, int]  #: classifier tiles
    tables: tuple[int, int]  #: per-layer tables (TABLE)
    final_gamma: int
    rope: int  #: the rows' RoPE cos/sin (TABLE)
    k_new: int  #: the step's new K rows, a KV block per KV head (KV)
    v_new: int
    k_head: tuple[int, int]  #: one KV head's keys, a KV block
    v_head: tuple[int, int]
    slots: dict[str, tuple[int, int]]  #: weight and META tiles (WGT, META)


def allocate_step(cfg: AccelConfig, d: StepDims, rows: int, keys: int) -> StepBuffers:
    """Buffer addresses for a step of ``rows`` rows and ``keys`` keys; a buffer that cannot
    hold its part is a ``CompileError`` naming the buffer, the part and the words missing."""
    w, R = cfg.axi_data_bytes, rows
    bp = BufPlan(cfg)
    A, T, KV = Buffer.ACT, Buffer.TABLE, Buffer.KV
    new_kv, head_kv = (L.kv_block(n, d.head_dim, d.kv_bits, w) for n in (R, keys))

    def wide_pitch(n: int) -> int:
        return L.wide_pitch(n, w)

    def qrow_pitch(n: int) -> int:
        return L.qrow_pitch(n, w)

    def two(buf: Buffer, words: int, what: str) -> tuple[int, int]:
        return bp.alloc(buf, words, what), bp.alloc(buf, words, what)

    return StepBuffers(
        xin=bp.alloc(A, R * d.record_words, "embedding records"),
        x=bp.alloc(A, R * wide_pitch(d.dim), "residual"),
        h=bp.alloc(A, R * wide_pitch(d.dim), "normed rows"),
        hq=bp.alloc(A, R * qrow_pitch(d.norm_k), "quantized normed rows"),
        q=bp.alloc(A, R * wide_pitch(d.dim), "queries"),
        k=bp.alloc(A, R * wide_pitch(d.kv_dim), "keys"),
        v=bp.alloc(A, R * wide_pitch(d.kv_dim), "values"),
        qq=bp.alloc(A, R * d.n_heads * qrow_pitch(d.head_dim), "quantized queries"),
        probs=bp.alloc(A, R * wide_pitch(keys), f"probabilities ({keys} keys)"),
        o=bp.alloc(A, R * wide_pitch(d.dim), "attention output"),
        oq=bp.alloc(A, R * qrow_pitch(d.wo_k), "quantized attention output"),
        gate=bp.alloc(A, R * wide_pitch(d.hidden_dim), "SiLU(gate)"),
        up=bp.alloc(A, R * wide_pitch(d.hidden_dim), "up projection"),
        pq=bp.alloc(A, R * qrow_pitch(d.w2_k), "quantized SwiGLU product"),
        logit=two(A, R * wide_pitch(d.out_tile), "logits tile"),
        tables=two(T, d.table_words, "layer tables"),
        final_gamma=bp.alloc(T, d.final_gamma_words, "final norm gamma"),
        rope=bp.alloc(T, R * L.rope_pitch(d.head_dim, w), "RoPE rows"),
        k_new=bp.alloc(KV, d.n_kv_heads * new_kv, "new K rows"),
        v_new=bp.alloc(KV, d.n_kv_heads * new_kv, "new V rows"),
        k_head=two(KV, head_kv, f"K of one head ({keys} keys)"),
        v_head=two(KV, head_kv, f"V of one head ({keys} keys)"),
        slots={"wgt": two(Buffer.WGT, cfg.buffer_words(Buffer.WGT) // 2, "weight tile"),
               "meta": two(Buffer.META, cfg.buffer_words(Buffer.META) // 2, "META tile")},
    )
