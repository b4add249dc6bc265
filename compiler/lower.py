"""Lowering: the LLaMA decoder onto instructions, one program per length bucket.

A *step* processes ``R`` token rows at positions ``POS .. POS+R-1`` against ``K`` keys (the
bucket's key count; keys past the current length are masked by causality, so padding rows and
keys never change a real row's result). Per layer (the integer reference's order, fused where
the hardware allows):

    RMSNORM, QUANT8, wq/wk/wv (MATVEC or MATMAT per weight tile), ROPE q and k, key transform
    (ADD, MUL, MUL), KVQUANT k and v, STORE the new KV rows at POS, QUANT8 q per head,
    per KV head: LOAD K and V, per query head ATTN SCORE_SOFTMAX then ATTN PV,
    QUANT8, wo (+ residual, fused), RMSNORM, QUANT8, w1 (+ SiLU, fused), w3, MUL, QUANT8,
    w2 (+ residual, fused)

then the final RMSNORM, QUANT8 and the LM head, tile by tile, stored to the logits region.

Programs: ``prefill`` for ``B`` rows (a multiple of the prefill bucket) runs the step in chunks
of ``C`` rows (the largest power of two whose buffers fit), setting POS per chunk; ``decode``
for ``K`` keys (a multiple of the decode bucket) runs one step of one row, with POS and
SEQ_LEN set by the host. Sink and window (Lambda attention) are set by every program.
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.memory_plan import BufPlan, CompileError, Region
from compiler.placement import LinearPlan, Placement, Tile
from compiler.tokens import Access, Op, assign_tokens
from llmacc import isa
from llmacc import layout as L
from llmacc.isa import AttnFunc, Buffer, LenSrc, Opcode, OutMode, Reg, SfuFunc, SysFunc
from quant.intref import SMOOTH_FRAC, IntModel


@dataclass
class Program:
    kind: str  #: "prefill" or "decode"
    length: int  #: prefill rows or decode keys
    chunk: int  #: rows per step
    instructions: list[isa.Instruction]

    @property
    def blob(self) -> bytes:
        return isa.encode_program(self.instructions)


class _Emitter:
    def __init__(self, p: Placement):
        self.p = p
        self.w = p.w
        self.ops: list[Op] = []
        self.tile_count = 0

    def emit(self, opcode: Opcode, reads=(), writes=(), **fields) -> Op:
        op = Op(opcode, fields, list(reads), list(writes))
        self.ops.append(op)
        return op

    def setreg(self, reg: Reg, value: int) -> None:
        self.emit(Opcode.SYS, func=SysFunc.SETREG, reg=reg, imm=value)

    def transfer(self, opcode: Opcode, buf: Buffer, buf_addr: int, region: Region, offset: int,
                 words: int, rows: int = 1, stride: int = 0, seq: bool = False,
                 at_pos: bool = False) -> None:
        """LOAD (ext -> buf) or STORE (buf -> ext) of ``rows`` x ``words``."""
        on_chip = Access(buf, buf_addr, buf_addr + rows * words)
        if at_pos:  # the row lands anywhere in the region
            off_chip = Access(region.chan, region.addr, region.addr + region.nbytes)
        else:
            lo = region.addr + offset
            off_chip = Access(region.chan, lo, lo + max(0, rows - 1) * stride + words * self.w)
        reads, writes = ([off_chip], [on_chip]) if opcode is Opcode.LOAD else ([on_chip],
                                                                                [off_chip])
        self.emit(opcode, reads, writes, buf=buf, chan=region.chan,
                  ext_addr=region.addr + offset, buf_addr=buf_addr, words=words, rows=rows,
                  rows_src=LenSrc.SEQ if seq else LenSrc.IMM, ext_stride=stride,
                  pos_offset=int(at_pos))

    def sfu(self, func: SfuFunc, rows: int, length: int, src: tuple[int, int], dst: tuple[int, int],
            b: tuple[Buffer, int, int] | None = None, out_buf: Buffer = Buffer.ACT,
            **fields) -> None:
        """``src``/``dst``: (address, words); ``b``: (buffer, address, words)."""
        reads = [Access(Buffer.ACT, src[0], src[0] + src[1])]
        if b is not None:
            reads.append(Access(b[0], b[1], b[1] + b[2]))
        self.emit(Opcode.SFU, reads, [Access(out_buf, dst[0], dst[0] + dst[1])], func=func,
                  rows=rows, length=length, src_a=src[0], src_b=0 if b is None else b[1],
                  dst=dst[0], **fields)

    def linear(self, lp: LinearPlan, rows: int, act: int, out: int, out_pitch: int,
               slots: dict[str, list[int]], tiles: tuple[Tile, ...] | None = None) -> None:
        """Tiles of ``lp`` (default all, each writing its columns of rows at ``out``; a given
        ``tiles`` writes at ``out`` itself): LOAD WGT, LOAD META, the matrix instruction."""
        w = self.w
        qp = L.qrow_pitch(lp.k, w)
        for tile in tiles or lp.tiles:
            slot = self.tile_count % 2
            self.tile_count += 1
            wa, ma = slots["wgt"][slot], slots["meta"][slot]
            ww, mw = tile.wgt.nbytes // w, tile.meta.nbytes // w
            self.transfer(Opcode.LOAD, Buffer.WGT, wa, tile.wgt, 0, ww)
            self.transfer(Opcode.LOAD, Buffer.META, ma, tile.meta, 0, mw)
            o = out if tiles else out + tile.n0 * 4 // w
            span = (rows - 1) * out_pitch + L.wide_pitch(tile.n, w)
            reads = [Access(Buffer.WGT, wa, wa + ww), Access(Buffer.META, ma, ma + mw),
                     Access(Buffer.ACT, act, act + rows * qp)]
            if lp.mode is OutMode.ADD:
                reads.append(Access(Buffer.ACT, o, o + span))
            self.emit(Opcode.MATVEC if rows == 1 else Opcode.MATMAT, reads,
                      [Access(Buffer.ACT, o, o + span)], k=lp.k, n=tile.n, m=rows, act_addr=act,
                      wgt_addr=wa, out_addr=o, meta_addr=ma,
                      out_pitch=out_pitch if rows > 1 else 0, out_mode=lp.mode)


class Lowering:
    """Programs for one placed model."""

    def __init__(self, im: IntModel, placement: Placement):
        self.im = im
        self.p = placement
        self.w = placement.w
        mc = im.config
        self.kvp = L.kv_pitch(mc.head_dim, im.kv_bits, self.w)

    def wp(self, n: int) -> int:
        """Words of a wide row of ``n`` elements."""
        return L.wide_pitch(n, self.w)

    def qp(self, n: int) -> int:
        """Words of a quantized row of ``n`` elements."""
        return L.qrow_pitch(n, self.w)

    # -- buffers -------------------------------------------------------------------------
    def allocate(self, rows: int, keys: int) -> dict[str, int | list[int]]:
        """Buffer addresses for a step of ``rows`` rows and ``keys`` keys."""
        mc, w, p, R = self.im.config, self.w, self.p, rows
        lin = p.linears
        wp, qp = self.wp, self.qp
        out_tile = lin["output"].tiles[0].n
        bp = BufPlan(p.cfg)
        A, T, KV = Buffer.ACT, Buffer.TABLE, Buffer.KV
        a: dict[str, int | list[int]] = {
            "xin": bp.alloc(A, R * p.record_words, "embedding records"),
            "x": bp.alloc(A, R * wp(mc.dim), "residual"),
            "h": bp.alloc(A, R * wp(mc.dim), "normed rows"),
            "hq": bp.alloc(A, R * qp(max(lin["layers.0.wq"].k, lin["layers.0.w1"].k,
                                         lin["output"].k)), "quantized normed rows"),
            "q": bp.alloc(A, R * wp(mc.dim), "queries"),
            "k": bp.alloc(A, R * wp(mc.kv_dim), "keys"),
            "v": bp.alloc(A, R * wp(mc.kv_dim), "values"),
            "qq": bp.alloc(A, R * mc.n_heads * qp(mc.head_dim), "quantized queries"),
            "probs": bp.alloc(A, R * wp(keys), f"probabilities ({keys} keys)"),
            "o": bp.alloc(A, R * wp(mc.dim), "attention output"),
            "oq": bp.alloc(A, R * qp(lin["layers.0.wo"].k), "quantized attention output"),
            "s": bp.alloc(A, R * wp(mc.hidden_dim), "SiLU(gate)"),
            "up": bp.alloc(A, R * wp(mc.hidden_dim), "up projection"),
            "pq": bp.alloc(A, R * qp(lin["layers.0.w2"].k), "quantized SwiGLU product"),
            "logit": [bp.alloc(A, R * wp(out_tile), "logits tile") for _ in range(2)],
            "tables": [bp.alloc(T, p.layer_tables.words, "layer tables") for _ in range(2)],
            "final_gamma": bp.alloc(T, p.final_gamma.nbytes // w, "final norm gamma"),
            "rope": bp.alloc(T, R * L.rope_pitch(mc.head_dim, w), "RoPE rows"),
            "kst": bp.alloc(KV, mc.n_kv_heads * R * self.kvp, "new K rows"),
            "vst": bp.alloc(KV, mc.n_kv_heads * R * self.kvp, "new V rows"),
            "kbuf": [bp.alloc(KV, keys * self.kvp, f"K of one head ({keys} keys)")
                     for _ in range(2)],
            "vbuf": [bp.alloc(KV, keys * self.kvp, f"V of one head ({keys} keys)")
                     for _ in range(2)],
            "wgt": [bp.alloc(Buffer.WGT, p.cfg.buffer_words(Buffer.WGT) // 2, "weight tile")
                    for _ in range(2)],
            "meta": [bp.alloc(Buffer.META, p.cfg.buffer_words(Buffer.META) // 2, "META tile")
                     for _ in range(2)],
        }
        return a

    # -- one step -----------------------------------------------------------------------
    def _step(self, e: _Emitter, rows: int, keys: int, row0: int, decode: bool) -> None:
        im, mc, p, w, R = self.im, self.im.config, self.p, self.w, rows
        a = self.allocate(rows, keys)
        wp, qp = self.wp, self.qp
        dim, kvd, hd, hid = mc.dim, mc.kv_dim, mc.head_dim, mc.hidden_dim
        heads, kvh = mc.n_heads, mc.n_kv_heads
        rep = heads // kvh
        fr = im.F["resid"]
        A, T = Buffer.ACT, Buffer.TABLE
        emb_pitch = p.record_words
        kv8 = int(im.kv_bits == 8)
        slots = {"wgt": a["wgt"], "meta": a["meta"]}
        lin = p.linears

        def region(addr: int, count: int, pitch: int) -> tuple[int, int]:
            return addr, count * pitch

        e.transfer(Opcode.LOAD, A, a["xin"], p.inputs, row0 * emb_pitch * w, R * emb_pitch)
        e.sfu(SfuFunc.EMBED, R, dim, region(a["xin"], R, emb_pitch), region(a["x"], R, wp(dim)),
              shift=-fr, imm=im.embedding.group)
        rope_pitch = L.rope_pitch(hd, w)
        e.transfer(Opcode.LOAD, T, a["rope"], p.rope, 0, rope_pitch, R, rope_pitch * w,
                   at_pos=True)
        rope = (T, a["rope"], R * rope_pitch)
        x = region(a["x"], R, wp(dim))
        h = region(a["h"], R, wp(dim))
        for i, layer in enumerate(im.layers):
            F, name = layer.F, f"layers.{i}."
            tb = a["tables"][i % 2]
            lt = p.layer_tables
            e.transfer(Opcode.LOAD, T, tb, p.tables[i], 0, lt.words)
            gp = L.gamma_pitch(dim, w)
            e.sfu(SfuFunc.RMSNORM, R, dim, x, h, (T, tb + lt.attn_gamma, gp),
                  shift=layer.attn_gamma_exp - F["attn_norm"])
            kq = lin[name + "wq"].k
            hq = region(a["hq"], R, qp(kq))
            e.sfu(SfuFunc.QUANT8, R, dim, h, hq, imm=kq)
            for nm, dst, n in (("wq", "q", dim), ("wk", "k", kvd), ("wv", "v", kvd)):
                e.linear(lin[name + nm], R, a["hq"], a[dst], wp(n), slots)
            q, k, v = (region(a[t], R, wp(n)) for t, n in (("q", dim), ("k", kvd), ("v", kvd)))
            e.sfu(SfuFunc.ROPE, R, dim, q, q, rope, imm=hd)
            e.sfu(SfuFunc.ROPE, R, kvd, k, k, rope, imm=hd)
            e.sfu(SfuFunc.ADD, R, kvd, k, k, (T, tb + lt.k_centre, wp(kvd)), imm=1)
            e.sfu(SfuFunc.MUL, R, kvd, k, k, (T, tb + lt.k_recip, wp(kvd)), imm=1,
                  shift=SMOOTH_FRAC)
            e.sfu(SfuFunc.MUL, R, dim, q, q, (T, tb + lt.q_smooth, wp(dim)), imm=1,
                  shift=SMOOTH_FRAC)
            for src, st in ((k, "kst"), (v, "vst")):
                e.sfu(SfuFunc.KVQUANT, R, kvd, src, region(a[st], kvh * R, self.kvp),
                      out_buf=Buffer.KV, imm=hd, imm2=im.kv_bits)
            for g in range(kvh):
                for st, s in (("kst", "k"), ("vst", "v")):
                    e.transfer(Opcode.STORE, Buffer.KV, a[st] + g * R * self.kvp,
                               p.kv[(i, g, s)], 0, self.kvp, R, self.kvp * w, at_pos=True)
            qqp = qp(hd)
            e.sfu(SfuFunc.QUANT8, R, dim, q, region(a["qq"], R * heads, qqp), imm2=hd)
            for g in range(kvh):
                kb, vb = a["kbuf"][g % 2], a["vbuf"][g % 2]
                for buf_addr, s in ((kb, "k"), (vb, "v")):
                    e.transfer(Opcode.LOAD, Buffer.KV, buf_addr, p.kv[(i, g, s)], 0, self.kvp,
                               keys, self.kvp * w, seq=decode)
                for hh in range(g * rep, (g + 1) * rep):
                    qa = a["qq"] + hh * qqp
                    pr = a["probs"]
                    e.emit(Opcode.ATTN,
                           [Access(A, qa, qa + R * heads * qqp),
                            Access(Buffer.KV, kb, kb + keys * self.kvp)],
                           [Access(A, pr, pr + R * wp(keys))],
                           func=AttnFunc.SCORE_SOFTMAX, q_addr=qa, kv_addr=kb, dst=pr,
                           head_dim=hd, keys=keys, rows=R, a_step=heads * qqp, d_step=wp(keys),
                           shift=F["q"] + F["k"] - 16, kv8=kv8)
                    oa = a["o"] + hh * hd * 4 // w
                    e.emit(Opcode.ATTN,
                           [Access(A, pr, pr + R * wp(keys)),
                            Access(Buffer.KV, vb, vb + keys * self.kvp)],
                           [Access(A, oa, oa + (R - 1) * wp(dim) + wp(hd))],
                           func=AttnFunc.PV, q_addr=pr, kv_addr=vb, dst=oa, head_dim=hd,
                           keys=keys, rows=R, a_step=wp(keys), d_step=wp(dim),
                           shift=F["v"] - F["o"], kv8=kv8)
            ko = lin[name + "wo"].k
            e.sfu(SfuFunc.QUANT8, R, dim, region(a["o"], R, wp(dim)), region(a["oq"], R, qp(ko)),
                  imm=ko)
            e.linear(lin[name + "wo"], R, a["oq"], a["x"], wp(dim), slots)
            e.sfu(SfuFunc.RMSNORM, R, dim, x, h, (T, tb + lt.ffn_gamma, gp),
                  shift=layer.ffn_gamma_exp - F["ffn_norm"])
            k1 = lin[name + "w1"].k
            e.sfu(SfuFunc.QUANT8, R, dim, h, region(a["hq"], R, qp(k1)), imm=k1)
            e.linear(lin[name + "w1"], R, a["hq"], a["s"], wp(hid), slots)
            e.linear(lin[name + "w3"], R, a["hq"], a["up"], wp(hid), slots)
            s = region(a["s"], R, wp(hid))
            e.sfu(SfuFunc.MUL, R, hid, s, s, (A, a["up"], R * wp(hid)),
                  shift=F["silu"] + F["up"] - F["prod"])
            k2 = lin[name + "w2"].k
            e.sfu(SfuFunc.QUANT8, R, hid, s, region(a["pq"], R, qp(k2)), imm=k2)
            e.linear(lin[name + "w2"], R, a["pq"], a["x"], wp(dim), slots)
        fg = p.final_gamma.nbytes // w
        e.transfer(Opcode.LOAD, T, a["final_gamma"], p.final_gamma, 0, fg)
        e.sfu(SfuFunc.RMSNORM, R, dim, x, h, (T, a["final_gamma"], fg),
              shift=im.final_gamma_exp - im.F["final_norm"])
        out = lin["output"]
        e.sfu(SfuFunc.QUANT8, R, dim, h, region(a["hq"], R, qp(out.k)), imm=out.k)
        lpitch = wp(mc.vocab_size) * w
        for t, tile in enumerate(out.tiles):
            la = a["logit"][t % 2]
            tp = wp(out.tiles[0].n)
            e.linear(out, R, a["hq"], la, tp, slots, (tile,))
            e.transfer(Opcode.STORE, A, la, p.logits, row0 * lpitch + tile.n0 * 4, tp, R,
                       lpitch)

    # -- programs -------------------------------------------------------------------------
    def _finish(self, e: _Emitter) -> list[isa.Instruction]:
        e.emit(Opcode.SYS, func=SysFunc.HALT)
        assign_tokens(e.ops)
        return [isa.make(op.opcode, wait=op.wait, release=op.release, **op.fields)
                for op in e.ops]

    def _preamble(self, e: _Emitter) -> None:
        e.setreg(Reg.SINK, self.im.sink)
        e.setreg(Reg.WINDOW, self.im.window)

    def chunk_rows(self, rows: int) -> int:
        """The largest power-of-two chunk (dividing ``rows``) whose step fits the buffers."""
        chunk = 1 << (rows.bit_length() - 1)
        while rows % chunk:
            chunk //= 2
        while True:
            try:
                self.allocate(chunk, rows)
                return chunk
            except CompileError:
                if chunk == 1:
                    raise
                chunk //= 2

    def prefill(self, rows: int) -> Program:
        if not 1 <= rows <= self.p.max_len:
            raise CompileError(f"prefill of {rows} rows: the package holds {self.p.max_len}")
        chunk = self.chunk_rows(rows)
        e = _Emitter(self.p)
        self._preamble(e)
        for c in range(rows // chunk):
            e.setreg(Reg.POS, c * chunk)
            self._step(e, chunk, (c + 1) * chunk, c * chunk, decode=False)
        return Program("prefill", rows, chunk, self._finish(e))

    def decode(self, keys: int) -> Program:
        if not 1 <= keys <= self.p.max_len:
            raise CompileError(f"decode over {keys} keys: the package holds {self.p.max_len}")
        e = _Emitter(self.p)
        self._preamble(e)
        self._step(e, 1, keys, 0, decode=True)
        return Program("decode", keys, 1, self._finish(e))
