"""Lowering: the LLaMA decoder onto instructions, one program per length bucket.

A *step* processes ``R`` token rows at positions ``POS .. POS+R-1`` against ``K`` keys (the
bucket's key count; keys past the current length are masked by causality, so padding rows and
keys never change a real row's result). Per layer (the integer reference's order, fused where
the hardware allows):

    LOAD the cache's header words the new rows' headers join (words of ``kv_slots``
    headers), RMSNORM, QUANT8, wq/wk/wv (MATVEC or MATMAT per weight tile), then per KV head
    (a decode step; a prefill chunk does the SFU part for every head first): ROPE k, the key
    transform (ADD, MUL), KVQUANT k and v, STORE the new KV rows and header words at POS,
    ROPE q, MUL q (smoothing), QUANT8 q per head, LOAD K and V (payloads, then header words:
    a KV block), per query head ATTN SCORE_SOFTMAX then ATTN PV; then QUANT8, wo
    (+ residual, fused), RMSNORM, QUANT8, w1 (+ SiLU, fused), w3, MUL, QUANT8, w2
    (+ residual, fused)

then the final RMSNORM, QUANT8 and the LM head, tile by tile, stored to the logits region.

Programs: ``prefill`` for ``B`` rows (a multiple of the prefill bucket) runs the step in chunks
of ``C`` rows (the largest power of two whose buffers fit), setting POS per chunk; ``decode``
for ``K`` keys (a multiple of the decode bucket) runs one step of one row, with POS and
SEQ_LEN set by the host. Sink and window (Lambda attention) are set by every program.
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.memory_plan import CompileError, Region
from compiler.placement import LinearPlan, Placement, Tile
from compiler.step_buffers import StepBuffers, StepDims, allocate_step
from compiler.tokens import Access, Op, assign_tokens, token_limit
from llmacc import isa
from llmacc import layout as L
from llmacc.isa import AttnFunc, Buffer, LenSrc, Opcode, OutMode, Reg, SfuFunc, SysFunc
from llmacc.widths import STREAM_PAGE_BYTES
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
                 at_pos: bool = False, pos_header: bool = False) -> None:
        """LOAD (ext -> buf) or STORE (buf -> ext) of ``rows`` x ``words``; ``at_pos``: at
        ``offset + POS * stride`` (``pos_header``: ``POS // kv_slots``)."""
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
                  pos_offset=int(at_pos), pos_header=int(pos_header))

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
        ``tiles`` writes at ``out`` itself): LOAD WGT, LOAD META, the matrix instruction; a
        MATSTREAM tile LOADs its descriptor only."""
        w = self.w
        qrow_pitch = L.qrow_pitch(lp.k, w)
        for tile in tiles or lp.tiles:
            slot = self.tile_count % 2
            self.tile_count += 1
            wa, ma = slots["wgt"][slot], slots["meta"][slot]
            mw = tile.meta.nbytes // w
            reads = [Access(Buffer.META, ma, ma + mw),
                     Access(Buffer.ACT, act, act + rows * qrow_pitch)]
            if tile.wgt is not None:
                ww = tile.wgt.nbytes // w
                self.transfer(Opcode.LOAD, Buffer.WGT, wa, tile.wgt, 0, ww)
                reads.append(Access(Buffer.WGT, wa, wa + ww))
            self.transfer(Opcode.LOAD, Buffer.META, ma, tile.meta, 0, mw)
            o = out if tiles else out + tile.n0 * 4 // w
            span = (rows - 1) * out_pitch + L.wide_pitch(tile.n, w)
            if lp.mode is OutMode.ADD:
                reads.append(Access(Buffer.ACT, o, o + span))
            fields = {"k": lp.k, "n": tile.n, "m": rows, "act_addr": act, "out_addr": o,
                      "meta_addr": ma, "out_pitch": out_pitch if rows > 1 else 0,
                      "out_mode": lp.mode}
            if tile.streams:
                op, fields["page"] = Opcode.MATSTREAM, tile.streams[0].addr // STREAM_PAGE_BYTES
            else:
                op, fields["wgt_addr"] = Opcode.MATVEC if rows == 1 else Opcode.MATMAT, wa
            self.emit(op, reads, [Access(Buffer.ACT, o, o + span)], **fields)


class Lowering:
    """Programs for one placed model."""

    def __init__(self, im: IntModel, placement: Placement):
        self.im = im
        self.p = placement
        self.w = placement.w
        mc = im.config
        self.kv_payload = L.kv_payload(mc.head_dim, im.kv_bits, self.w)
        #: where a KV head's header words start in its cache region (a KV block of max_len)
        self.kv_headers = placement.max_len * self.kv_payload * self.w
        self.dims = StepDims.of_placement(im, placement)

    def wide_pitch(self, n: int) -> int:
        """Words of a wide row of ``n`` elements."""
        return L.wide_pitch(n, self.w)

    def qrow_pitch(self, n: int) -> int:
        """Words of a quantized row of ``n`` elements."""
        return L.qrow_pitch(n, self.w)

    # -- buffers -------------------------------------------------------------------------
    def allocate(self, rows: int, keys: int) -> StepBuffers:
        """Buffer addresses for a step of ``rows`` rows and ``keys`` keys."""
        return allocate_step(self.p.cfg, self.dims, rows, keys)

    # -- one step -----------------------------------------------------------------------
    def _step(self, e: _Emitter, rows: int, keys: int, row0: int, decode: bool) -> None:
        """One prefill chunk or decode step: embed, every layer, the head."""
        buf = self.allocate(rows, keys)
        self._embed(e, buf, rows, row0)
        for i, layer in enumerate(self.im.layers):
            table = buf.tables[i % 2]
            e.transfer(Opcode.LOAD, Buffer.TABLE, table, self.p.tables[i], 0,
                       self.p.layer_tables.words)
            self._attention(e, buf, rows, keys, i, layer, table, decode)
            self._ffn(e, buf, rows, i, layer, table)
        self._head(e, buf, rows, row0)

    def _rows(self, addr: int, rows: int, pitch: int) -> tuple[int, int]:
        """A region of ``rows`` records of ``pitch`` words at ``addr``."""
        return addr, rows * pitch

    def _embed(self, e: _Emitter, buf: StepBuffers, rows: int, row0: int) -> None:
        """The rows' embedding records to the residual, and their RoPE rows."""
        im, p, w = self.im, self.p, self.w
        record = p.record_words
        e.transfer(Opcode.LOAD, Buffer.ACT, buf.xin, p.inputs, row0 * record * w, rows * record)
        e.sfu(SfuFunc.EMBED, rows, im.config.dim, self._rows(buf.xin, rows, record),
              self._rows(buf.x, rows, self.wide_pitch(im.config.dim)), shift=-im.F["resid"],
              imm=im.embedding.group)
        rope_pitch = L.rope_pitch(im.config.head_dim, w)
        e.transfer(Opcode.LOAD, Buffer.TABLE, buf.rope, p.rope, 0, rope_pitch, rows,
                   rope_pitch * w, at_pos=True)

    def _attention(self, e: _Emitter, buf: StepBuffers, rows: int, keys: int, i: int, layer,
                   table: int, decode: bool) -> None:
        """Layer ``i``'s attention block: norm, Q/K/V, RoPE and the key transform, the new
        KV rows appended, every head's scores and values, the output projection added to the
        residual. A decode step prepares each KV head just before its heads run, so the SFU
        prepares the next one while the compute unit runs this one (the tokens follow the
        slices each instruction touches)."""
        mc, p, w, R = self.im.config, self.p, self.w, rows
        wide_pitch, qrow_pitch, region = self.wide_pitch, self.qrow_pitch, self._rows
        dim, kvd, kv_heads = mc.dim, mc.kv_dim, mc.n_kv_heads
        F, name, lin, lt = layer.F, f"layers.{i}.", p.linears, p.layer_tables
        T = Buffer.TABLE
        self._load_joined_headers(e, buf, R, i)
        x, h = region(buf.x, R, wide_pitch(dim)), region(buf.h, R, wide_pitch(dim))
        e.sfu(SfuFunc.RMSNORM, R, dim, x, h, (T, table + lt.attn_gamma, L.gamma_pitch(dim, w)),
              shift=layer.attn_gamma_exp - F["attn_norm"])
        kq = lin[name + "wq"].k
        e.sfu(SfuFunc.QUANT8, R, dim, h, region(buf.hq, R, qrow_pitch(kq)), imm=kq)
        for proj, dst, n in (("wq", buf.q, dim), ("wk", buf.k, kvd), ("wv", buf.v, kvd)):
            e.linear(lin[name + proj], R, buf.hq, dst, wide_pitch(n), buf.slots)
        for g in range(kv_heads):
            if R == 1:  # decode: each KV head prepared just before its heads run
                self._prepare(e, buf, R, i, table, g, g + 1)
            elif g == 0:  # the rows' heads are not contiguous: every head, whole rows, first
                self._prepare(e, buf, R, i, table, 0, kv_heads)
            self._heads(e, buf, R, keys, i, layer, g, decode)
        ko = lin[name + "wo"].k
        e.sfu(SfuFunc.QUANT8, R, dim, region(buf.o, R, wide_pitch(dim)),
              region(buf.oq, R, qrow_pitch(ko)), imm=ko)
        e.linear(lin[name + "wo"], R, buf.oq, buf.x, wide_pitch(dim), buf.slots)

    def _wide_words(self, elements: int) -> int:
        """Words from a wide row's start to its element ``elements`` (a head's slice starts
        on a word: the placement requires ``head_dim`` x 4 B to be whole words)."""
        return L.element_bit(elements, L.WIDE) // (8 * self.w)

    def _load_joined_headers(self, e: _Emitter, buf: StepBuffers, rows: int, i: int) -> None:
        """Layer ``i``'s new KV rows join the header words of their cache that hold older
        headers (``kv_slots`` > 1): the word at POS // kv_slots is loaded into each KV head's
        new block before KVQUANT writes the rows' slots of it, while the layer's first
        instructions run."""
        mc, w = self.im.config, self.w
        if L.kv_slots(w) == 1:
            return
        block = L.kv_block(rows, mc.head_dim, self.im.kv_bits, w)
        for g in range(mc.n_kv_heads):
            for new, s in ((buf.k_new, "k"), (buf.v_new, "v")):
                e.transfer(Opcode.LOAD, Buffer.KV, new + g * block + rows * self.kv_payload,
                           self.p.kv[(i, g, s)], self.kv_headers, 1, stride=w, at_pos=True,
                           pos_header=True)

    def _prepare(self, e: _Emitter, buf: StepBuffers, rows: int, i: int, table: int, g0: int,
                 g1: int) -> None:
        """KV heads ``g0 .. g1 - 1`` of layer ``i`` made ready for their attention: their
        keys' RoPE, centring and scaling, their keys' and values' KVQUANT and STOREs at POS
        (first: the loads that follow wait on them), then their query heads' RoPE, smoothing
        and QUANT8. A slice of the heads is one row of each (``rows`` = 1) or all of them."""
        im, mc, p, w, R = self.im, self.im.config, self.p, self.w, rows
        assert R == 1 or (g0, g1) == (0, mc.n_kv_heads), "a slice of heads is one row"
        hd, per_group, lt = mc.head_dim, mc.n_heads // mc.n_kv_heads, p.layer_tables
        T, wide_pitch = Buffer.TABLE, self.wide_pitch
        nk, nq = (g1 - g0) * hd, (g1 - g0) * per_group * hd
        ok, oq = self._wide_words(g0 * hd), self._wide_words(g0 * per_group * hd)
        k = (buf.k + ok, R * wide_pitch(nk))
        v = (buf.v + ok, R * wide_pitch(nk))
        q = (buf.q + oq, R * wide_pitch(nq))
        rope = (T, buf.rope, R * L.rope_pitch(hd, w))
        e.sfu(SfuFunc.ROPE, R, nk, k, k, rope, imm=hd)
        e.sfu(SfuFunc.ADD, R, nk, k, k, (T, table + lt.k_centre + ok, wide_pitch(nk)), imm=1)
        e.sfu(SfuFunc.MUL, R, nk, k, k, (T, table + lt.k_recip + ok, wide_pitch(nk)), imm=1,
              shift=SMOOTH_FRAC)
        block, pw = L.kv_block(R, hd, im.kv_bits, w), self.kv_payload
        heads_at, staged = R * pw, L.kv_header_words(R, w)  # a block's header words
        news = ((buf.k_new, "k"), (buf.v_new, "v"))
        for src, new in ((k, buf.k_new), (v, buf.v_new)):
            e.sfu(SfuFunc.KVQUANT, R, nk, src, (new + g0 * block, (g1 - g0) * block),
                  out_buf=Buffer.KV, imm=hd, imm2=im.kv_bits)  # after the header LOADs (WAW)
        for g in range(g0, g1):
            for new, s in news:
                e.transfer(Opcode.STORE, Buffer.KV, new + g * block, p.kv[(i, g, s)], 0,
                           pw, R, pw * w, at_pos=True)
                e.transfer(Opcode.STORE, Buffer.KV, new + g * block + heads_at, p.kv[(i, g, s)],
                           self.kv_headers, staged, 1, stride=w, at_pos=True, pos_header=True)
        e.sfu(SfuFunc.ROPE, R, nq, q, q, rope, imm=hd)
        e.sfu(SfuFunc.MUL, R, nq, q, q, (T, table + lt.q_smooth + oq, wide_pitch(nq)), imm=1,
              shift=SMOOTH_FRAC)
        qqp = self.qrow_pitch(hd)
        heads = (g1 - g0) * per_group
        e.sfu(SfuFunc.QUANT8, R, nq, q, (buf.qq + g0 * per_group * qqp, R * heads * qqp),
              imm2=hd)

    def _heads(self, e: _Emitter, buf: StepBuffers, rows: int, keys: int, i: int, layer,
               g: int, decode: bool) -> None:
        """KV head ``g`` of layer ``i``: its keys and values loaded (two slots alternate, so
        a load overlaps the heads before), then each of its query heads' scores with softmax
        and probabilities x values, into the attention output."""
        mc, p, w, R, A = self.im.config, self.p, self.w, rows, Buffer.ACT
        hd, heads, F = mc.head_dim, mc.n_heads, layer.F
        wide_pitch, qqp = self.wide_pitch, self.qrow_pitch(hd)
        kv8 = int(self.im.kv_bits == 8)
        kb, vb = buf.k_head[g % 2], buf.v_head[g % 2]
        pw, block = self.kv_payload, L.kv_block(keys, hd, self.im.kv_bits, w)
        one_slot = L.kv_slots(w) == 1  # then a header word per key: SEQ_LEN of them
        for buf_addr, s in ((kb, "k"), (vb, "v")):
            e.transfer(Opcode.LOAD, Buffer.KV, buf_addr, p.kv[(i, g, s)], 0, pw, keys, pw * w,
                       seq=decode)
            if one_slot:
                e.transfer(Opcode.LOAD, Buffer.KV, buf_addr + keys * pw, p.kv[(i, g, s)],
                           self.kv_headers, 1, keys, w, seq=decode)
            else:
                e.transfer(Opcode.LOAD, Buffer.KV, buf_addr + keys * pw, p.kv[(i, g, s)],
                           self.kv_headers, -(-keys // L.kv_slots(w)))
        per_group = heads // mc.n_kv_heads
        for head in range(g * per_group, (g + 1) * per_group):
            qa, pr = buf.qq + head * qqp, buf.probs
            e.emit(Opcode.ATTN,
                   [Access(A, qa, qa + (R - 1) * heads * qqp + qqp),
                    Access(Buffer.KV, kb, kb + block)],
                   [Access(A, pr, pr + R * wide_pitch(keys))],
                   func=AttnFunc.SCORE_SOFTMAX, q_addr=qa, kv_addr=kb, dst=pr,
                   head_dim=hd, keys=keys, rows=R, a_step=heads * qqp, d_step=wide_pitch(keys),
                   shift=F["q"] + F["k"] - 16, kv8=kv8)
            oa = buf.o + self._wide_words(head * hd)
            e.emit(Opcode.ATTN,
                   [Access(A, pr, pr + R * wide_pitch(keys)),
                    Access(Buffer.KV, vb, vb + block)],
                   [Access(A, oa, oa + (R - 1) * wide_pitch(mc.dim) + wide_pitch(hd))],
                   func=AttnFunc.PV, q_addr=pr, kv_addr=vb, dst=oa, head_dim=hd,
                   keys=keys, rows=R, a_step=wide_pitch(keys), d_step=wide_pitch(mc.dim),
                   shift=F["v"] - F["o"], kv8=kv8)

    def _ffn(self, e: _Emitter, buf: StepBuffers, rows: int, i: int, layer,
             table: int) -> None:
        """Layer ``i``'s SwiGLU block: norm, gate (fused SiLU) and up, their product, the
        down projection added to the residual."""
        mc, p, R = self.im.config, self.p, rows
        wide_pitch, qrow_pitch, region = self.wide_pitch, self.qrow_pitch, self._rows
        dim, hid = mc.dim, mc.hidden_dim
        F, name, lin, lt = layer.F, f"layers.{i}.", p.linears, p.layer_tables
        x, h = region(buf.x, R, wide_pitch(dim)), region(buf.h, R, wide_pitch(dim))
        e.sfu(SfuFunc.RMSNORM, R, dim, x, h,
              (Buffer.TABLE, table + lt.ffn_gamma, L.gamma_pitch(dim, self.w)),
              shift=layer.ffn_gamma_exp - F["ffn_norm"])
        k1 = lin[name + "w1"].k
        e.sfu(SfuFunc.QUANT8, R, dim, h, region(buf.hq, R, qrow_pitch(k1)), imm=k1)
        e.linear(lin[name + "w1"], R, buf.hq, buf.gate, wide_pitch(hid), buf.slots)
        e.linear(lin[name + "w3"], R, buf.hq, buf.up, wide_pitch(hid), buf.slots)
        gate = region(buf.gate, R, wide_pitch(hid))
        e.sfu(SfuFunc.MUL, R, hid, gate, gate, (Buffer.ACT, buf.up, R * wide_pitch(hid)),
              shift=F["silu"] + F["up"] - F["prod"])
        k2 = lin[name + "w2"].k
        e.sfu(SfuFunc.QUANT8, R, hid, gate, region(buf.pq, R, qrow_pitch(k2)), imm=k2)
        e.linear(lin[name + "w2"], R, buf.pq, buf.x, wide_pitch(dim), buf.slots)

    def _head(self, e: _Emitter, buf: StepBuffers, rows: int, row0: int) -> None:
        """The final norm and the classifier, tile by tile, the logits stored per row."""
        im, mc, p, w, R = self.im, self.im.config, self.p, self.w, rows
        wide_pitch, qrow_pitch, region = self.wide_pitch, self.qrow_pitch, self._rows
        final = p.final_gamma.nbytes // w
        e.transfer(Opcode.LOAD, Buffer.TABLE, buf.final_gamma, p.final_gamma, 0, final)
        x, h = region(buf.x, R, wide_pitch(mc.dim)), region(buf.h, R, wide_pitch(mc.dim))
        e.sfu(SfuFunc.RMSNORM, R, mc.dim, x, h, (Buffer.TABLE, buf.final_gamma, final),
              shift=im.final_gamma_exp - im.F["final_norm"])
        out = p.linears["output"]
        e.sfu(SfuFunc.QUANT8, R, mc.dim, h, region(buf.hq, R, qrow_pitch(out.k)), imm=out.k)
        for t, (tile, part) in enumerate(zip(out.tiles, p.logits, strict=True)):
            logits, tile_pitch = buf.logit[t % 2], part.pitch // w
            e.linear(out, R, buf.hq, logits, tile_pitch, buf.slots, (tile,))
            e.transfer(Opcode.STORE, Buffer.ACT, logits, part.region, row0 * part.pitch,
                       tile_pitch, R, part.pitch)

    # -- programs -------------------------------------------------------------------------
    def _finish(self, e: _Emitter) -> list[isa.Instruction]:
        e.emit(Opcode.SYS, func=SysFunc.HALT)
        assign_tokens(e.ops, token_limit(self.p.cfg))
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
