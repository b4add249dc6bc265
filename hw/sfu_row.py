"""SFU row stage: the row-wise functions, each exactly the numerics contract.

* SOFTMAX: ``numerics.softmax`` of one row of Q15.16 scores under the Lambda mask
  (``numerics.lambda_mask`` for the query at ``pos``, with ``sink`` and ``window``);
* RMSNORM: ``numerics.rmsnorm(v, gamma, gamma_exp, eps, 0)``;
* QUANT: ``numerics.quantize_symmetric`` to ``[-qmax, qmax]`` with an SF16 scale; with
  ``centre`` set, around the row's midpoint as ``numerics.quantize_kv`` does (one KV group
  per row). QUANT8 is ``qmax = 127``, KVQUANT ``qmax = 2**(bits-1) - 1``.

A row is received once into a row memory, up to ``lanes`` elements a beat, while the first
reductions run (max, min, max over the visible keys: a beat's lanes reduced in one cycle,
folded into the row's in the next, so a row ends with a cycle to fold its last beat); a
second pass over the memory computes what needs
those (the softmax exponentials, written back, and their sum; the RMSNorm sum of squares);
the per-row scalars come from the bit-serial divider and square root
(``hw/serial_arith.py``); the last pass streams the results out with back-pressure. The
memory holds ``lanes`` elements a word, and the two passes take a word a cycle: ``lanes``
results a beat (the last beat of a row says how many it holds).

The unified-max softmax (FlashDecoding++) would skip the max pass but round differently from
the reference, so it is not used: the contract is the exact max.
"""

from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.fixed_point import (
    bit_length,
    clamp,
    larger,
    round_shift,
    round_shift_right,
    saturate,
    smaller,
    tree,
)
from hw.serial_arith import SerialDivider, SerialSqrt
from hw.sfu import exp2_neg
from llmacc import numerics as N
from llmacc.isa import SfuFields

W = N.WIDE_BITS
#: Elements per row that the instruction set can name.
LEN_BITS = SfuFields.as_shape()["length"].width
DIV_NUM_BITS = N.SOFTMAX_RECIP_BITS + 2  #: also holds isqrt(L << 32) << RSQRT_NUM_SHIFT
DIV_DEN_BITS = LEN_BITS + N.PROB_FRAC + 3  #: the softmax sum of up to 2**LEN_BITS Q16 values
SQRT_BITS = 50  #: RMSNorm denominators: sum of L squares below 2**30 plus a 48-bit epsilon


class RowFunc(enum.Enum, shape=2):
    SOFTMAX = 0
    RMSNORM = 1
    QUANT = 2


RowCmd = data.StructLayout({
    "func": RowFunc,
    "length": LEN_BITS,
    "qmax": 8,  #: QUANT: largest code
    "centre": 1,  #: QUANT: quantise around the row's midpoint (KV cache)
    "pos": 32, "sink": 32, "window": 32,  #: SOFTMAX: the query's position and the mask
    "gamma_exp": signed(8),  #: RMSNORM: gamma's exponent (the instruction's shift)
    "eps": signed(N.EPS_BITS),  #: RMSNORM: the epsilon term of the gamma record
})


def row_in(lanes: int) -> data.StructLayout:
    """A beat of ``count`` elements of a row, from element ``index`` (the stage counts them):
    they sit in lanes ``index % lanes`` on of ``a`` and ``gamma``, inside one word of the row
    memory (``index % lanes + count <= lanes``). The row's command is read on its first beat."""
    return data.StructLayout({
        "cmd": RowCmd,
        "a": data.ArrayLayout(signed(W), lanes),
        "gamma": data.ArrayLayout(signed(N.GAMMA_BITS), lanes),
        "count": range(lanes + 1),
    })


def row_out(lanes: int) -> data.StructLayout:
    """A beat of results: ``count`` elements of the row in ``y`` (``lanes`` but on a row's
    last beat), with the row's scale."""
    return data.StructLayout({
        "y": data.ArrayLayout(signed(W), lanes),  #: the result elements
        "count": range(lanes + 1),
        "m": N.SCALE_BITS, "e": signed(8), "mid": signed(W),  #: QUANT: the row's scale
        "last": 1,
    })


def visible(t, pos, sink, window):
    """``numerics.lambda_mask`` for key ``t`` and the query at ``pos``."""
    return (t <= pos) & ((window == 0) | (t < sink) | (t + window > pos))


@dataclass(frozen=True)
class _Beat:
    """The row stage's beat: ``lanes`` it fills (combinational) and its registered
    reductions."""

    lanes: Signal
    valid: Signal
    max: Signal
    min: Signal
    smax: Signal
    any_visible: Signal


class RowSfu(wiring.Component):
    """One row at a time: ``length`` elements in beats on ``i`` (the command is taken from
    the first), ``ceil(length / lanes)`` beats leave on ``o``, the last with ``last``.
    ``max_len`` is the row memory's elements; longer rows are the SFU unit's error to
    report. Only the functions in ``funcs`` are built (a command for another is the user's
    error); with one, the command's ``func`` is not looked at."""

    def __init__(self, max_len: int, lanes: int = 1, funcs=tuple(RowFunc)):
        if not 1 <= max_len < 1 << LEN_BITS:
            raise ValueError(f"max_len {max_len} out of range [1, {(1 << LEN_BITS) - 1}]")
        if lanes < 1 or lanes & (lanes - 1):
            raise ValueError(f"lanes {lanes} is not a power of two")
        if not funcs:
            raise ValueError("a row stage needs at least one function")
        self.max_len, self.lanes, self.funcs = max_len, lanes, frozenset(funcs)
        super().__init__({"i": In(stream.Signature(row_in(lanes))),
                          "o": Out(stream.Signature(row_out(lanes)))})

    def elaborate(self, platform):  # noqa: C901 -- one state machine
        m = Module()
        lanes = self.lanes
        lg = lanes.bit_length() - 1
        depth = -(-self.max_len // lanes)
        m.submodules.values = values = Memory(shape=W * lanes, depth=depth, init=[])
        m.submodules.gammas = gammas = Memory(shape=N.GAMMA_BITS * lanes, depth=depth, init=[])
        has = self.funcs.__contains__
        m.submodules.div = div = SerialDivider(DIV_NUM_BITS, DIV_DEN_BITS)
        if has(RowFunc.RMSNORM):
            m.submodules.sqrt = sqrt = SerialSqrt(SQRT_BITS)
        wr, wr_g = values.write_port(granularity=W), gammas.write_port(granularity=N.GAMMA_BITS)
        rd, rd_g = values.read_port(), gammas.read_port()

        c = Signal(RowCmd)
        func = c.func if len(self.funcs) > 1 else Const(next(iter(self.funcs)).value, 2)
        index = Signal(LEN_BITS)  # next element to receive, or next word to read
        words = Signal(LEN_BITS)  # the row's words
        held = Signal(LEN_BITS)  # the word rd.data holds
        pending = Signal()  # rd.data holds a word not yet used
        at_end = index == words

        # pass-1 reductions
        vmax, vmin, smax = Signal(signed(W)), Signal(signed(W)), Signal(signed(W))
        any_visible = Signal()
        # row scalars
        mid = Signal(signed(W))
        amax = Signal(W + 1)
        sh = Signal(range(W + 1))
        total = Signal(DIV_DEN_BITS + 2 * N.NORM_IN_BITS)
        den = Signal(signed(SQRT_BITS + 1))
        norm = Signal(range(N.RSQRT_NORM_BITS + 2))
        root = Signal(SQRT_BITS // 2)
        recip = Signal(DIV_NUM_BITS)  # softmax 2**46/S, QUANT 2**31/m, RMSNORM inv
        scale_m, scale_e = Signal(N.SCALE_BITS + 2), Signal(signed(8))

        m.d.comb += [rd.addr.eq(index), rd_g.addr.eq(index), wr_g.addr.eq(index >> lg),
                     wr_g.data.eq(self.i.payload.gamma.as_value())]
        beat = self._beat_reductions(m, index, c)
        with m.If(beat.valid):  # fold the beat received a cycle ago
            m.d.sync += [vmax.eq(larger(beat.max, vmax)),
                         vmin.eq(smaller(beat.min, vmin))]
            with m.If(beat.any_visible & (~any_visible | (beat.smax > smax))):
                m.d.sync += [smax.eq(beat.smax), any_visible.eq(1)]

        # element functions of the word read back (rd.data, word `held`), lane by lane
        rms_shift = (16 + N.RSQRT_NUM_SHIFT - (norm >> 1) + c.gamma_exp)
        q_shift = (N.RECIP_BITS + scale_e).as_unsigned()[:6]
        expos, squares, sm_outs, rms_outs, q_outs = [], [], [], [], []
        for j in range(lanes):
            element = (held << lg) | j
            inside = element < c.length
            v = rd.data.word_select(j, W).as_signed()
            u = round_shift_right(v, sh) + 0
            vis = inside & visible(element, c.pos, c.sink, c.window)
            gamma = rd_g.data.word_select(j, N.GAMMA_BITS).as_signed()
            if has(RowFunc.SOFTMAX):
                expos.append(Mux(vis, exp2_neg(m, smax - v), 0))
                sm_outs.append(round_shift_right(v * recip,
                                                 Const(N.SOFTMAX_RECIP_BITS - N.PROB_FRAC, 6)))
            if has(RowFunc.RMSNORM):
                squares.append(Mux(inside, u * u, 0))
                rms_outs.append(saturate(round_shift(u * gamma * recip, rms_shift, W + 1), W))
            if has(RowFunc.QUANT):
                q_outs.append(clamp(round_shift_right((v - mid) * recip, q_shift),
                                    -c.qmax, c.qmax))

        # QUANT scale: e0 = bitlen(a) - bitlen(qmax) - 16, m = ceil(a 2**-e0 / qmax), then
        # halve (rounding up) while m needs 17 bits -- ceil(ceil(x) / 2) == ceil(x / 2).
        e0 = Signal(signed(8))
        m.d.comb += e0.eq(bit_length(amax) - bit_length(c.qmax) - N.SCALE_BITS)
        q_num = Mux(e0 < 0, amax << (-e0).as_unsigned()[:5], amax)
        q_den = c.qmax << Mux(e0 > 0, e0, 0).as_unsigned()[:5]
        m1 = Mux(div.quotient > N.SCALE_MAX, (div.quotient + 1) >> 1, div.quotient)
        m2 = Mux(m1 > N.SCALE_MAX, (m1 + 1) >> 1, m1)
        e2 = e0 + (div.quotient > N.SCALE_MAX) + (m1 > N.SCALE_MAX)

        def start_div(num, den_):
            m.d.comb += [div.start.eq(1), div.num.eq(num), div.den.eq(den_)]

        def start_sqrt(x):
            m.d.comb += [sqrt.start.eq(1), sqrt.x.eq(x)]

        def read_pass(en):
            """Walk the row memory: address ``index``; ``rd.data`` is element ``held`` while
            ``pending``."""
            m.d.comb += [rd.en.eq(en), rd_g.en.eq(en)]
            with m.If(en):
                m.d.sync += [held.eq(index), pending.eq(~at_end), index.eq(index + ~at_end)]

        out = self.o.payload
        m.d.comb += [out.m.eq(scale_m), out.e.eq(scale_e), out.mid.eq(mid)]
        with m.FSM():
            with m.State("IDLE"):
                empty = self.i.payload.cmd.length == 0
                m.d.comb += self.i.ready.eq(empty)  # a row of length 0 is dropped
                with m.If(self.i.valid & ~empty):
                    length = self.i.payload.cmd.length
                    m.d.sync += [c.eq(self.i.payload.cmd), index.eq(0), vmax.eq(-(1 << (W - 1))),
                                 words.eq((length + (lanes - 1)) >> lg),
                                 vmin.eq((1 << (W - 1)) - 1), any_visible.eq(0), total.eq(0),
                                 pending.eq(0), mid.eq(0), scale_m.eq(0), scale_e.eq(0)]
                    m.next = "RECEIVE"
            with m.State("RECEIVE"):
                count = self.i.payload.count
                taken = Mux(self.i.valid, beat.lanes, 0)
                m.d.comb += [self.i.ready.eq(1), wr.addr.eq(index >> lg),
                             wr.data.eq(self.i.payload.a.as_value()), wr.en.eq(taken),
                             wr_g.en.eq(taken)]
                m.d.sync += beat.valid.eq(self.i.valid)
                with m.If(self.i.valid):
                    m.d.sync += index.eq(index + count)
                    with m.If(index + count == c.length):
                        m.d.sync += index.eq(0)
                        m.next = "FOLD"
            with m.State("FOLD"), m.Switch(func):  # the last beat joins the row's reductions
                for f, state in ((RowFunc.QUANT, "Q_MID"), (RowFunc.SOFTMAX, "PASS2"),
                                 (RowFunc.RMSNORM, "RMS_SHIFT")):
                    if has(f):
                        with m.Case(f):
                            m.next = state
            # -- QUANT -----------------------------------------------------------------
            if has(RowFunc.QUANT):
                with m.State("Q_MID"):
                    mid_next = Mux(c.centre, round_shift_right(vmax + vmin, Const(1, 1)), 0)
                    m.d.sync += mid.eq(mid_next)
                    m.next = "Q_ABSMAX"
                with m.State("Q_ABSMAX"):
                    hi, lo = vmax - mid, mid - vmin
                    m.d.sync += amax.eq(Mux(hi > lo, hi, lo))
                    m.next = "Q_MANT"
                with m.State("Q_MANT"):
                    start_div(q_num + q_den - 1, q_den)
                    m.next = "Q_MANT_WAIT"
                with m.State("Q_MANT_WAIT"), m.If(~div.busy):
                    zero = amax == 0
                    m.d.sync += [scale_m.eq(Mux(zero, 0, m2)), scale_e.eq(Mux(zero, 0, e2))]
                    m.next = "RECIP"
            # -- RMSNORM shift / SOFTMAX (second pass) ---------------------------------
            if has(RowFunc.RMSNORM):
                with m.State("RMS_SHIFT"):
                    absmax = Mux(vmax > -vmin, vmax, -vmin)
                    bl = bit_length(absmax.as_unsigned()[:W + 1])
                    m.d.sync += sh.eq(Mux(bl > N.NORM_IN_BITS - 1, bl - (N.NORM_IN_BITS - 1), 0))
                    m.next = "PASS2"
            with m.State("PASS2"):
                read_pass(1)
                with m.If(pending):
                    is_sm = func == RowFunc.SOFTMAX
                    m.d.comb += [wr.addr.eq(held),
                                 wr.data.eq(Cat(*(e.as_unsigned()[:W] for e in expos))),
                                 wr.en.eq(Mux(is_sm, (1 << lanes) - 1, 0))]
                    m.d.sync += total.eq(total + Mux(is_sm, sum(expos), sum(squares)))
                with m.If(~pending & at_end & (index != 0)):
                    m.d.sync += index.eq(0)
                    with m.If(func == RowFunc.SOFTMAX):
                        m.next = "RECIP"
                    if has(RowFunc.RMSNORM):
                        with m.Else():
                            m.next = "RMS_DEN"
            if has(RowFunc.RMSNORM):
                with m.State("RMS_DEN"):
                    eps = round_shift_right(c.eps, (sh << 1).as_unsigned()[:7])
                    d = total.as_signed() + eps
                    m.d.sync += den.eq(Mux(d < 1, 1, d))
                    m.next = "RMS_ROOT"
                with m.State("RMS_ROOT"):
                    p = N.RSQRT_NORM_BITS + 1 - bit_length(den.as_unsigned())
                    p_even = Mux(p > 0, p + (p & 1), 0).as_unsigned()[:7]
                    m.d.sync += norm.eq(p_even)
                    start_sqrt(den.as_unsigned() << p_even)
                    m.next = "RMS_ROOT_WAIT"
                with m.State("RMS_ROOT_WAIT"), m.If(~sqrt.busy):
                    m.d.sync += root.eq(sqrt.root)
                    start_sqrt(c.length << 32)
                    m.next = "RMS_NUM_WAIT"
                with m.State("RMS_NUM_WAIT"), m.If(~sqrt.busy & ~sqrt.start):
                    start_div(sqrt.root << N.RSQRT_NUM_SHIFT, root)
                    m.next = "RECIP_WAIT"
            # -- reciprocal (softmax sum, QUANT mantissa) ---------------------------------
            with m.State("RECIP"):
                with m.If(func == RowFunc.SOFTMAX):
                    start_div(1 << N.SOFTMAX_RECIP_BITS, Mux(total == 0, 1, total))
                with m.Else():
                    start_div(1 << N.RECIP_BITS, scale_m)
                m.next = "RECIP_WAIT"
            with m.State("RECIP_WAIT"), m.If(~div.busy & ~div.start):
                zero = (func == RowFunc.QUANT) & (scale_m == 0)
                m.d.sync += [recip.eq(Mux(zero, 0, div.quotient)), pending.eq(0)]
                m.next = "EMIT"
            # -- results -----------------------------------------------------------------
            with m.State("EMIT"):
                advance = ~self.o.valid | self.o.ready
                read_pass(advance)
                with m.If(advance):
                    results = ((RowFunc.SOFTMAX, sm_outs), (RowFunc.RMSNORM, rms_outs),
                               (RowFunc.QUANT, q_outs))
                    for j in range(lanes):
                        with m.Switch(func):
                            for f, outs in results:
                                if has(f):
                                    with m.Case(f):
                                        m.d.sync += out.y[j].eq(outs[j])
                    last = held == words - 1
                    m.d.sync += [self.o.valid.eq(pending), out.last.eq(last),
                                 out.count.eq(Mux(last, c.length - (held << lg), lanes))]
                    with m.If(~pending & at_end & (index != 0)):
                        m.next = "IDLE"
        return m

    def _beat_reductions(self, m: Module, index: Signal, c: Signal) -> _Beat:
        """The lanes the beat on ``i`` fills (element ``index`` on), and the registered max,
        min and visible max of the last beat received (``valid``)."""
        lanes, p = self.lanes, self.i.payload
        lg = lanes.bit_length() - 1
        first = index[:lg] if lanes > 1 else Const(0, 1)
        low, high = -(1 << (W - 1)), (1 << (W - 1)) - 1
        mask = Signal(lanes, name="beat_mask")
        m.d.comb += mask.eq(((Const(1, lanes + 1) << p.count) - 1) << first)
        filled = list(mask)
        seen = [f & visible(Cat(Const(j, lg), index[lg:]) if lanes > 1 else index,
                            c.pos, c.sink, c.window) for j, f in enumerate(filled)]
        beat = _Beat(mask, Signal(name="beat_valid"),
                     Signal(signed(W), name="beat_max"), Signal(signed(W), name="beat_min"),
                     Signal(signed(W), name="beat_smax"), Signal(name="beat_any_visible"))
        values = list(p.a)

        def reduced(pick, keep: list, neutral: int):
            return tree(pick, [Mux(k, a, neutral) for k, a in zip(keep, values, strict=True)])
        m.d.sync += [beat.valid.eq(0), beat.any_visible.eq(Cat(*seen).any()),
                     beat.max.eq(reduced(larger, filled, low)),
                     beat.min.eq(reduced(smaller, filled, high)),
                     beat.smax.eq(reduced(larger, seen, low))]
        return beat


def row_cmd(func: RowFunc, length: int, **params) -> dict:
    """A :data:`RowCmd` as a dict with every field (unnamed parameters zero)."""
    fields = dict.fromkeys(("qmax", "centre", "pos", "sink", "window", "gamma_exp", "eps"), 0)
    unknown = set(params) - set(fields)
    if unknown:
        raise ValueError(f"unknown RowCmd fields {sorted(unknown)}")
    return {**fields, **params, "func": func, "length": length}

