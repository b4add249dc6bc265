"""Performance estimates of LLaMA-shaped models on an accelerator configuration (``llmacc
perf``): decode tokens/s per context length, prefill latency, the HBM roofline, and what
bounds each operator.

Everything comes from shapes and the configuration, never from weights: weight bytes per row
are the compiler's own record pitches (``layout.Descriptor.wgt_pitch/meta_pitch`` for the
scheme's format, sparsity and group), KV bytes a key's payload words and its 8-byte header
(``layout.kv_block``: headers packed ``kv_slots`` to a word). Three figures per case:

* **roofline** -- bytes that must cross HBM per token (weights, KV cache of the visible keys)
  over the configuration's aggregate bandwidth (``mem_channels x channel_gbps``, 460 GB/s
  on the U280).
* **design** -- the architecture as specified: each matrix streams its weight rows over all
  channels while the engine takes one beat per cycle (``mv_rows`` rows x ``chain_len`` kept
  weights, two tokens per pass), loads overlapped with compute through the tokens, so an
  operator costs the larger of its memory and engine cycles. Memory cycles follow the data
  mover as built: a channel's AXI port moves ``axi_data_bytes`` per cycle at most, and each
  row is one command that waits ``READ_LATENCY`` cycles for its first beat (the read master
  takes the next command only when the last is done), which is the bandwidth efficiency.
* **RTL as built** -- the matrix and attention sequencers as they are in ``hw/``, priced by
  the calibrated cycle model (:mod:`sim.compute_timing`, equal to the RTL's busy counters on
  every tested instruction): a matrix whose format streams on the configuration is a
  MATSTREAM, as the compiler emits it (its weights from the channels' streams, the first
  pass's activation windows read as whole words and replayed for the other passes); the
  others MATVEC/MATMAT, one buffer field per cycle (codes, indices, scales, exponents,
  activations) with the fetches' refills;
  attention ``attention_lanes`` elements of a head per cycle (a key costs a cycle per
  sub-step, its header word read during the keys before), with the KV
  heads' loads as the LOAD unit moves them; each layer's SFU instructions one element a
  cycle (:func:`sfu`, left out of the design figures). Each matrix is priced as one
  instruction of its full shape (the compiler's tiles add a few cycles of set-up each). It
  says by how much the current RTL misses the design.

The published anchors printed beside ours: FlightLLM 55 tok/s on the U280 for LLaMA2-7B
(FPGA '24), AccLLM 2.98x FlightLLM's throughput (~164 tok/s).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from compiler.memory_plan import CompileError
from compiler.placement import LAYER_OUT_MODES, matrix_geometry, tile_rows
from compiler.step_buffers import StepDims, allocate_step
from llmacc import isa
from llmacc import layout as L
from llmacc.config import AccelConfig
from llmacc.isa import AttnFunc, Opcode, OutMode, SfuFunc, WeightFormat
from quant import schemes
from quant.weight_quant import padded_width
from sim import compute_timing
from sim.cycle_model import TOKEN_EXTRA, load_row_cycles, transfer_cycles
from sim.model_shapes import MODELS as MODELS
from sim.model_shapes import ModelShape as ModelShape
from sim.model_shapes import ModelShapeError as ModelShapeError
from sim.model_shapes import model_shape as model_shape

#: Where :func:`sfu` places an instruction's second operand and its result (ACT words),
#: apart from its first operand at word 0.
SFU_B, SFU_DST = 1 << 13, 1 << 14
FLIGHTLLM_TOK_S = 55.0  #: FlightLLM, U280, LLaMA2-7B decode (FPGA '24)
ACCLLM_SPEEDUP = 2.98  #: AccLLM's throughput over FlightLLM


@dataclass(frozen=True)
class Operator:
    """One operator of a step, with what it moves and computes, and its cycles."""

    name: str
    bytes: int  #: from HBM
    macs: int
    mem_cycles: int
    engine_cycles: int
    rtl_cycles: int  #: the RTL sequencers as built (the calibrated cycle model)

    @property
    def cycles(self) -> int:
        return max(self.mem_cycles, self.engine_cycles)

    @property
    def bound(self) -> str:
        return "memory" if self.mem_cycles >= self.engine_cycles else "engine"


@dataclass(frozen=True)
class Estimate:
    operators: tuple[Operator, ...]
    clock_hz: float
    bandwidth: float  #: bytes/s
    tokens: int  #: tokens the step produces (1 for decode)

    @property
    def bytes(self) -> int:
        return sum(op.bytes for op in self.operators)

    @property
    def cycles(self) -> int:
        return sum(op.cycles for op in self.operators)

    @property
    def seconds(self) -> float:
        return self.cycles / self.clock_hz

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds

    @property
    def roofline_tok_s(self) -> float:
        return self.tokens * self.bandwidth / self.bytes

    @property
    def roofline_fraction(self) -> float:
        return self.tok_s / self.roofline_tok_s

    @property
    def rtl_tok_s(self) -> float:
        return self.tokens / self.rtl_seconds

    @property
    def rtl_seconds(self) -> float:
        return sum(op.rtl_cycles for op in self.operators) / self.clock_hz

    def compute_bound_seconds(self, cfg: AccelConfig) -> float:
        """Every MAC of the step at the engine's peak (``cfg.peak_macs_per_cycle``)."""
        return sum(op.macs for op in self.operators) / cfg.peak_macs_per_cycle / self.clock_hz

    @property
    def rtl_roofline_fraction(self) -> float:
        """The RTL as built against the HBM roofline: the headline figure."""
        return self.rtl_tok_s / self.roofline_tok_s


def _rows_cycles(cfg: AccelConfig, rows: int, words: int) -> int:
    """Memory cycles to stream ``rows`` rows of ``words`` AXI words over every channel."""
    return -(-rows // cfg.mem_channels) * load_row_cycles(cfg, words)


def _padded(scheme: schemes.Scheme, k: int) -> int:
    """A matrix's reduction length ``k`` as the quantizer stores it: padded to the group
    and the sparse block."""
    return padded_width(k, scheme.group, scheme.sparsity[1] if scheme.sparsity else 1)


def linear(cfg: AccelConfig, scheme: schemes.Scheme, name: str, k: int, n: int,
           tokens: int) -> Operator:
    """A weight matrix [n, k] applied to ``tokens`` rows (K zero-padded to the group, as
    the quantizer stores it), with the output the compiler fuses into it
    (``compiler.placement.LAYER_OUT_MODES``: adding into the residual reads each old value)."""
    desc = L.Descriptor.of(scheme.weight_fmt, scheme.sparsity, scheme.group)
    k = _padded(scheme, k)
    w = cfg.axi_data_bytes
    row_words = desc.wgt_pitch(k, w) + desc.meta_pitch(k, w)
    kept = desc.kept(k)
    beats = -(-kept // cfg.chain_len)
    per_pass = 1 if desc.wfmt is WeightFormat.INT8 else 2
    passes = -(-n // cfg.mv_rows) * -(-tokens // per_pass)
    engine = passes * beats
    streamed = matrix_geometry(cfg, desc, k, name) is not None  # as the compiler places it
    rtl = compute_timing.matrix_cycles(cfg, compute_timing.MatrixShape(
        k, n, tokens, desc, LAYER_OUT_MODES.get(name, OutMode.WIDE),
        step=L.wide_pitch(n, w) if streamed else 0, streamed=streamed))
    return Operator(name, n * row_words * w, n * kept * tokens,
                    _rows_cycles(cfg, n, row_words), engine, rtl)


SfuList = tuple[tuple[SfuFunc, int, dict], ...]  #: SFU instructions: (function, length, fields)


def _sfu_rtl(cfg: AccelConfig, instructions: SfuList, rows: int) -> int:
    """Busy cycles of SFU ``instructions`` over ``rows`` rows, as built (a row longer than
    an instruction's ``length`` field is priced as equal pieces)."""
    longest = (1 << isa.SfuFields.as_shape()["length"].width) - 1
    rtl = 0
    for func, length, fields in instructions:
        pieces = -(-length // longest)
        piece = length // pieces
        if "imm" in fields and func is SfuFunc.QUANT8:
            fields = {**fields, "imm": -(-fields["imm"] // pieces)}
        rtl += pieces * compute_timing.sfu_cycles(cfg, isa.make(
            Opcode.SFU, func=func, rows=rows, length=piece, src_a=0, src_b=SFU_B, dst=SFU_DST,
            **fields))
    return rtl


def prepare_sfu(shape: ModelShape, scheme: schemes.Scheme, kv_heads: int) -> SfuList:
    """The SFU instructions that make ``kv_heads`` KV heads and their query heads ready for
    attention, in ``compiler/lower.py``'s order: the keys' RoPE, centring and scaling, the
    keys' and values' KVQUANT (:data:`PREPARE_KV` of them), then the queries' RoPE, smoothing
    and QUANT8 per head."""
    hd = shape.head_dim
    nk, nq = kv_heads * hd, kv_heads * shape.heads // shape.kv_heads * hd
    kv = {"imm": hd, "imm2": scheme.kv_bits or 8}
    return ((SfuFunc.ROPE, nk, {"imm": hd}), (SfuFunc.ADD, nk, {"imm": 1}),
            (SfuFunc.MUL, nk, {"imm": 1}), (SfuFunc.KVQUANT, nk, kv),
            (SfuFunc.KVQUANT, nk, kv), (SfuFunc.ROPE, nq, {"imm": hd}),
            (SfuFunc.MUL, nq, {"imm": 1}), (SfuFunc.QUANT8, nq, {"imm2": hd}))


PREPARE_KV = 5  #: the first instructions of :func:`prepare_sfu` that the KV rows' STOREs wait on


@dataclass(frozen=True)
class KvHeadPaces:
    """What one KV head of a decode step takes on each unit, as built: the compute unit's
    SCORE_SOFTMAX and PV of each of its query heads, the LOAD unit's keys and values, the
    SFU's preparation (its KV part, then its queries'). Each unit works on its own
    instruction stream, the next KV head's beside this one's, so the largest of
    :attr:`compute`, :attr:`loads` and :attr:`prepare` sets a layer's pace."""

    score: int  #: SCORE_SOFTMAX of one query row
    pv: int  #: PV of one query row
    query_rows: int  #: its query heads times the step's tokens
    loads: int
    prepare_kv: int
    prepare_q: int

    @property
    def compute(self) -> int:
        return self.query_rows * (self.score + self.pv)

    @property
    def prepare(self) -> int:
        return self.prepare_kv + self.prepare_q

    @property
    def bound(self) -> str:
        paces = {"compute": self.compute, "loads": self.loads, "SFU preparation": self.prepare}
        return max(paces, key=paces.get)


def kv_head_paces(cfg: AccelConfig, scheme: schemes.Scheme, shape: ModelShape, rows: int,
                  keys: int) -> KvHeadPaces:
    """A KV head's cycles on each unit for ``rows`` query rows over ``keys`` keys (the
    preparation is that of a decode step: one row)."""
    bits = scheme.kv_bits or 8
    w, d = cfg.axi_data_bytes, shape.head_dim
    pw, slots = L.kv_payload(d, bits, w), L.kv_slots(w)
    row = []  # one query row of one head: its scores with softmax, then PV (every row alike)
    for func, a_step, d_step in ((AttnFunc.SCORE_SOFTMAX, L.qrow_pitch(d, w),
                                  L.wide_pitch(keys, w)),
                                 (AttnFunc.PV, L.wide_pitch(keys, w), L.wide_pitch(d, w))):
        insn = isa.make(Opcode.ATTN, func=func, q_addr=0, kv_addr=0, dst=a_step, head_dim=d,
                        keys=keys, rows=1, a_step=a_step, d_step=d_step, kv8=int(bits == 8))
        row.append(compute_timing.attention_cycles(cfg, insn))
    # a KV head's K and V: their payloads, then their header words (as the compiler loads
    # them: SEQ_LEN words where a word holds one header, else the bucket's words)
    headers = (transfer_cycles(cfg, True, 0, w, keys, 1) if slots == 1
               else transfer_cycles(cfg, True, 0, w, 1, -(-keys // slots)))
    load = 2 * (transfer_cycles(cfg, True, 0, pw * w, keys, pw) + headers)
    prepare = prepare_sfu(shape, scheme, 1)
    return KvHeadPaces(row[0], row[1], shape.heads // shape.kv_heads * rows, load,
                       _sfu_rtl(cfg, prepare[:PREPARE_KV], 1),
                       _sfu_rtl(cfg, prepare[PREPARE_KV:], 1))


def attention(cfg: AccelConfig, scheme: schemes.Scheme, shape: ModelShape, rows: int,
              keys: int, visible: int | None = None) -> Operator:
    """Scores and probabilities x values of one layer for ``rows`` queries over ``keys``
    keys, of which the design reads and multiplies only the ``visible`` ones (Lambda
    attention's sink and window; all by default). As built, the compiled program loads and
    runs every key and masks the others, so the RTL's cycles are those of all ``keys``: the
    LOAD unit brings each KV head's keys and values (one command each) while the compute
    unit runs the heads of the one before (the compiler alternates two KV slots), so only
    the first head's load is not hidden, and a head whose loads take longer than its
    attention waits for them.

    A decode step (``rows`` = 1) also holds each KV head's preparation (:func:`prepare_sfu`:
    the compiler emits it just before the head, so the SFU prepares the next head while the
    compute unit runs this one): its STOREs and LOADs wait on it, its heads on those and on
    the queries' QUANT8, each unit in order, as :func:`_decode_heads` follows them."""
    bits = scheme.kv_bits or 8
    w = cfg.axi_data_bytes
    pw, slots = L.kv_payload(shape.head_dim, bits, w), L.kv_slots(w)
    seen = keys if visible is None else visible
    kv_rows = 2 * shape.kv_heads * seen
    macs = 2 * shape.heads * rows * seen * shape.head_dim
    engine = -(-macs // cfg.peak_macs_per_cycle)
    paces = kv_head_paces(cfg, scheme, shape, rows, keys)
    if rows == 1:
        store = 2 * (transfer_cycles(cfg, False, 0, pw * w, 1, pw)
                     + transfer_cycles(cfg, False, 0, w, 1, 1))
        rtl = _decode_heads(shape.kv_heads, paces.prepare_kv, paces.prepare_q, store,
                            paces.loads, paces.compute)
    else:
        rtl = paces.loads + shape.kv_heads * max(paces.compute, paces.loads)
    header_bytes = L.record_bytes(L.KvHeader)
    heads = 2 * shape.kv_heads  # a command for each one's payloads, one for its header words
    memory = (_rows_cycles(cfg, heads, seen * pw)
              + _rows_cycles(cfg, heads, -(-seen // slots)))
    return Operator("attention", kv_rows * (pw * w + header_bytes), macs, memory, engine, rtl)


def _decode_heads(kv_heads: int, prepare_kv: int, prepare_q: int, store: int, load: int,
                  heads: int) -> int:
    """Cycles of a decode step's attention from the end of the V projection: per KV head
    the SFU's preparation (its KV part, then its queries'), the new rows' STOREs, the LOADs
    of its keys and values (into the slot that the heads two KV heads back have finished
    with) and its ``heads`` cycles of attention; each unit runs its own in order, and a wait
    on another unit costs ``TOKEN_EXTRA`` more."""
    sfu = stored = loaded = done = 0
    finished: list[int] = []
    for g in range(kv_heads):
        kv_ready = sfu + prepare_kv
        sfu = kv_ready + prepare_q
        stored = max(stored, kv_ready + TOKEN_EXTRA) + store
        slot_free = finished[g - 2] + TOKEN_EXTRA if g >= 2 else 0
        loaded = max(loaded, stored + TOKEN_EXTRA, slot_free) + load
        done = max(done, loaded + TOKEN_EXTRA, sfu + TOKEN_EXTRA) + heads
        finished.append(done)
    return done


def layer_sfu(shape: ModelShape, scheme: schemes.Scheme,
              rows: int = 1) -> tuple[SfuList, SfuList, SfuList]:
    """A decoder layer's SFU instructions for ``rows`` tokens as ``compiler/lower.py`` emits
    them, in three parts: before attention, the preparation (:func:`prepare_sfu`: once per
    KV head in a decode step, once for all heads otherwise), after attention.
    ``tests/test_perf.py`` checks them against a compiled decode step."""
    d, hid = shape.dim, shape.hidden
    kd, kh = _padded(scheme, d), _padded(scheme, hid)
    before = ((SfuFunc.RMSNORM, d, {}), (SfuFunc.QUANT8, d, {"imm": kd}))
    prepare = prepare_sfu(shape, scheme, 1 if rows == 1 else shape.kv_heads)
    after = ((SfuFunc.QUANT8, d, {"imm": kd}), (SfuFunc.RMSNORM, d, {}),
             (SfuFunc.QUANT8, d, {"imm": kd}), (SfuFunc.MUL, hid, {}),
             (SfuFunc.QUANT8, hid, {"imm": kh}))
    return before, prepare, after


def sfu(cfg: AccelConfig, shape: ModelShape, scheme: schemes.Scheme, rows: int) -> Operator:
    """One layer's SFU instructions (:func:`layer_sfu`) for ``rows`` tokens, as built (one
    element a cycle and the row stage's passes), less a decode step's preparation of the
    heads, which :func:`attention` prices; the design figures leave them out."""
    before, prepare, after = layer_sfu(shape, scheme, rows)
    return Operator("sfu", 0, 0, 0, 0,
                    _sfu_rtl(cfg, before + after + (prepare if rows > 1 else ()), rows))


def step_sfu(shape: ModelShape, scheme: schemes.Scheme) -> tuple[SfuList, SfuList]:
    """A step's SFU instructions outside its layers, as ``compiler/lower.py`` emits them: the
    rows' embedding (first), the final norm and QUANT8 (before the LM head, quantized as the
    embedding is: dense)."""
    d = shape.dim
    k = padded_width(d, scheme.group, 1)
    return (((SfuFunc.EMBED, d, {"imm": scheme.group}),),
            ((SfuFunc.RMSNORM, d, {}), (SfuFunc.QUANT8, d, {"imm": k})))


def visible_keys(scheme: schemes.Scheme, context: int) -> int:
    """Keys a query attends to: all of them, or the Lambda sink plus window."""
    if scheme.window:
        return min(context, scheme.sink + scheme.window)
    return context


def _linears(shape: ModelShape) -> tuple[tuple[str, int, int], ...]:
    """Each decoder layer's weight matrices: (name, K, N)."""
    kv = shape.kv_heads * shape.head_dim
    return (("wq", shape.dim, shape.dim), ("wk", shape.dim, kv), ("wv", shape.dim, kv),
            ("wo", shape.dim, shape.dim), ("w1", shape.dim, shape.hidden),
            ("w3", shape.dim, shape.hidden), ("w2", shape.hidden, shape.dim))


def case_scheme(cfg: AccelConfig, name: str) -> str:
    """The scheme name as the configuration's performance case prices it: a quantized
    scheme that names no group gets the configuration's ``weight_group`` (``+gGROUP``), so
    every printed name says its group."""
    if schemes.names_group(name) or not schemes.parse(name).quantized:
        return name
    return f"{name}+g{cfg.weight_group}"


def step(cfg: AccelConfig, shape: ModelShape, scheme_name: str, rows: int,
         context: int) -> Estimate:
    """One step of ``rows`` new tokens at ``context`` keys: every layer, the embedding and
    the final norm (:func:`step_sfu`), the LM head (``scheme_name`` as :func:`case_scheme`
    resolves it)."""
    scheme = schemes.parse(case_scheme(cfg, scheme_name))
    ops = [linear(cfg, scheme, name, k, n, rows) for name, k, n in _linears(shape)]
    ops.append(attention(cfg, scheme, shape, rows, context, visible_keys(scheme, context)))
    ops.append(sfu(cfg, shape, scheme, rows))
    # the classifier is quantized as the embedding is (quant.quantize), dense
    classifier = replace(scheme, weight_fmt=scheme.embed_fmt, sparsity=None)
    head = linear(cfg, classifier, "lm_head", shape.dim, shape.vocab, 1)
    first, last = step_sfu(shape, scheme)
    ends = Operator("embed_norm", 0, 0, 0, 0, _sfu_rtl(cfg, first + last, rows))
    every = tuple(Operator(o.name, o.bytes * shape.layers, o.macs * shape.layers,
                           o.mem_cycles * shape.layers, o.engine_cycles * shape.layers,
                           o.rtl_cycles * shape.layers) for o in ops) + (ends, head)
    return Estimate(every, cfg.clock_mhz * 1e6, cfg.mem_bandwidth_gbps * 1e9, rows)


def check_fits(cfg: AccelConfig, shape: ModelShape, scheme_name: str, context: int) -> None:
    """Refuse, naming the buffer and by how much, a model the configuration cannot hold: a
    weight row wider than half of the WGT or META buffer, a decode step at ``context`` keys
    (rounded up to the decode bucket) that overflows an on-chip buffer, or weights, embedding
    and KV cache beyond the external memory. The compiler's own plan decides each, from the
    shapes alone."""
    scheme_name = case_scheme(cfg, scheme_name)
    scheme = schemes.parse(scheme_name)
    where = f"{shape.name} under {scheme_name} on config {cfg.name}"
    keys = min(cfg.max_seq_len, -(-context // cfg.decode_bucket) * cfg.decode_bucket)
    try:
        dims = StepDims.of_shape(cfg, scheme, shape.dim, shape.hidden, shape.heads,
                                 shape.kv_heads, shape.vocab)
        desc = L.Descriptor.of(scheme.weight_fmt, scheme.sparsity, scheme.group)
        for name, k, n in _linears(shape):
            width = _padded(scheme, k)
            tile_rows(cfg, desc, width, n, name)
            matrix_geometry(cfg, desc, width, name)
        allocate_step(cfg, dims, 1, keys)
    except CompileError as exc:
        raise ModelShapeError(f"{where}: {exc}") from None
    w = cfg.axi_data_bytes
    need = (decode(cfg, shape, scheme_name, 1).bytes
            + shape.vocab * L.embed_pitch(shape.dim, scheme.group, w) * w
            + 2 * shape.layers * shape.kv_heads * L.kv_block(context, shape.head_dim,
                                                             dims.kv_bits, w) * w)
    have = cfg.mem_channels * cfg.channel_bytes
    if need > have:
        raise ModelShapeError(f"{where}: external memory: weights, embedding and the KV cache "
                              f"of {context} tokens need at least {need / 2**30:.2f} GiB, the "
                              f"{cfg.mem_channels} channels hold {have / 2**30:.2f} GiB "
                              f"({(need - have) / 2**30:.2f} GiB short)")


def decode(cfg: AccelConfig, shape: ModelShape, scheme: str, context: int) -> Estimate:
    return step(cfg, shape, scheme, 1, context)


def prefill(cfg: AccelConfig, shape: ModelShape, scheme: str, tokens: int) -> Estimate:
    return step(cfg, shape, scheme, tokens, tokens)
