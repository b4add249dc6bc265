"""The numerics contract's rounding and saturation as Amaranth expressions, defined once, and
the few expression shapes every block builds the same way (balanced trees, the larger and
smaller of two values, "one of these values").

``round_shift`` and ``saturate`` mirror :func:`llmacc.numerics.round_shift` and
:func:`llmacc.numerics.saturate` (half away from zero: minus one for a negative value, an
arithmetic shift by ``s - 1``, add one and halve). Every block that rounds or saturates uses these.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Mux, Shape, Value


def clamp(x: Value, lo, hi) -> Value:
    """``x`` limited to ``[lo, hi]`` (constants or run-time values)."""
    return Mux(x > hi, hi, Mux(x < lo, lo, x))


def saturate(x: Value, bits: int, symmetric: bool = False) -> Value:
    """Clamp signed ``x`` to ``bits`` (``symmetric`` excludes the most negative code)."""
    hi = (1 << (bits - 1)) - 1
    lo = -hi if symmetric else -hi - 1
    return clamp(x, lo, hi)[:bits].as_signed()


def round_shift_right(x: Value, s: Value) -> Value:
    """``x / 2**s`` rounded half away from zero, for an unsigned shift ``s``.

    As ``((x - (x < 0)) >> (s - 1)) + 1 >> 1`` for ``s > 0``: the rounding bit is the last
    one shifted out, so the adders are as wide as ``x`` (not as the largest shift, as an
    added ``2**(s-1)`` would need), and large shifts give 0 (not -1).
    """
    if Shape.cast(x.shape()).signed:
        xv = x.as_signed()
        biased = xv - (xv < 0)
    else:  # a non-negative value: no sign to take off
        xv = biased = Cat(x, Const(0, 1)).as_signed()
    halved = biased >> Mux(s == 0, 0, s - 1)[:len(s)]
    return Mux(s == 0, xv, (halved + 1) >> 1).as_signed()


def round_shift(x: Value, s: Value, max_left: int) -> Value:
    """``round_shift(x, s)`` for a signed shift ``s``: ``s <= 0`` shifts left by ``-s``
    (clamped to ``max_left``, enough that any non-zero ``x`` saturates the caller's output);
    right shifts beyond ``x``'s width give 0, as in the contract."""
    xw = Shape.cast(x.shape()).width
    left_bits = max(1, max_left.bit_length())
    right_bits = (xw + 1).bit_length()
    left = Mux(s < 0, Mux(-s > max_left, max_left, -s), 0)[:left_bits]
    right = Mux(s > xw + 1, xw + 1, Mux(s > 0, s, 0))[:right_bits]
    signed_x = x.as_signed() if Shape.cast(x.shape()).signed else Cat(x, Const(0, 1)).as_signed()
    shifted = signed_x << left
    return Mux(s < 0, shifted, round_shift_right(x, right)).as_signed()


def bit_length(x: Value) -> Value:
    """Bits needed for a non-negative ``x`` (0 for 0): ``numerics.bit_length``, a priority
    encoder."""
    x = Value.cast(x)
    width = Shape.cast(x.shape()).width
    n = Const(0, width.bit_length())
    for i in range(width):  # one-hot leading bit; a flat OR (no deep Mux chain)
        top = x[i] if i == width - 1 else x[i] & ~x[i + 1:].any()
        n = n | Mux(top, i + 1, 0)
    return n


def one_of(value, choices) -> Value:
    """Whether the run-time ``value`` equals one of ``choices``."""
    return Cat(*(value == c for c in choices)).any()


def larger(a: Value, b: Value) -> Value:
    """The larger of two signed values."""
    return Mux(a > b, a, b)


def smaller(a: Value, b: Value) -> Value:
    """The smaller of two signed values."""
    return Mux(a < b, a, b)


def tree(combine, values: list) -> Value:
    """``values`` combined pairwise by ``combine`` as a balanced tree (an adder tree with
    ``operator.add``, a max tree with :func:`larger`)."""
    while len(values) > 1:
        values = [combine(a, b) for a, b in zip(values[::2], values[1::2], strict=False)] + (
            [values[-1]] if len(values) % 2 else [])
    return values[0]
