"""The numerics contract: every rounding, saturation, format and lookup table, defined once.

The integer reference model, the emulator and the RTL golden models all import this module;
``docs/NUMERICS.md`` explains the choices. Everything here is integer arithmetic on
``torch.int64`` tensors (exact and deterministic on any CPU); floats appear only in the
offline helpers that turn real numbers into the stored formats (``encode_*``, ``*_table``),
whose results are stored in the model package and read by the hardware.

Formats
-------
* **wide**: INT32 fixed point with a static per-tensor exponent ``F`` (real = v * 2**-F).
  Residual stream, matrix results and special-function inputs/outputs.
* **act**: INT8 in [-127, 127] per token, with a dynamic SF16 scale in wide units.
* **kv**: INT4 in [-7, 7] per token and per group of channels, with an SF16 scale.
* **SF16 scale**: ``(m, e)`` meaning ``m * 2**e``, ``m`` unsigned 16-bit normalised into
  [2**15, 2**16) (or 0 for an all-zero vector).
* **weights**: small signed integer operands (|w| <= 16) decoded from 2/3/4/8-bit codes, with
  per-group scale mantissas (uint16) sharing one exponent per output row.
"""

from __future__ import annotations

import math

import torch

from llmacc.wdtypes import MIXED3_TYPES as MIXED3_TYPES
from llmacc.wdtypes import MIXED4_TYPES as MIXED4_TYPES
from llmacc.wdtypes import SPARSITY_PATTERNS as SPARSITY_PATTERNS
from llmacc.wdtypes import WDType as WDType
from llmacc.wdtypes import code_table as code_table

Tensor = torch.Tensor
I64 = torch.int64
F64_EXACT = 1 << 53  #: integers below this magnitude convert to float64 exactly

# -- widths --------------------------------------------------------------------------------
ACC_BITS = 48  #: DSP48E2 accumulator
WIDE_BITS = 32  #: wide activations
MUL_IN_BITS = 24  #: element-wise multiplier operands saturate to this before multiplying
ACT_BITS = 8
ACT_MAX = 127  #: INT8 activations are symmetric: -128 is never produced
KV_BITS = 4
KV_MAX = 7  #: INT4 KV cache is symmetric: -8 is never produced
SCALE_BITS = 16  #: scale mantissas (weights, activations, KV)
SCALE_MAX = (1 << SCALE_BITS) - 1
GAMMA_BITS = 16  #: RMSNorm weights
TRIG_FRAC = 14  #: RoPE cos/sin in Q1.14
SCORE_FRAC = 16  #: attention scores enter softmax in log2 units, Q15.16
PROB_FRAC = 15  #: softmax output probabilities in Q0.15 (unsigned, <= 2**15)
EXP2_LUT_BITS = 8  #: 2**-f table: 256 intervals, linearly interpolated
EXP2_ONE = 1 << 16  #: exp2 results in Q16
SIGMOID_RANGE = 16  #: sigmoid table covers [-16, 16)
SIGMOID_STEP_LOG2 = 5  #: table step 2**-5
SIGMOID_INTERP_BITS = 8  #: interpolation fraction bits
SIGMOID_IN_FRAC = SIGMOID_STEP_LOG2 + SIGMOID_INTERP_BITS  #: SiLU input is first cast to Q.13
SIGMOID_ONE = 1 << 16  #: sigmoid in Q16
GELU_CLAMP = 8  #: GELU's cubic is taken on [-8, 8): beyond, its sigmoid is saturated anyway
GELU_COEF_FRAC = 12  #: fraction bits of the coefficients of GELU's sigmoid argument
#: 2 sqrt(2/pi) and 2 sqrt(2/pi) 0.044715 (tanh(u) = 2 sigmoid(2u) - 1), rounded
GELU_C1 = math.floor(2 * math.sqrt(2 / math.pi) * (1 << GELU_COEF_FRAC) + 0.5)
GELU_C3 = math.floor(2 * math.sqrt(2 / math.pi) * 0.044715 * (1 << GELU_COEF_FRAC) + 0.5)
NORM_IN_BITS = 16  #: RMSNorm squares 16-bit values (15 magnitude bits) after a dynamic shift
RSQRT_NORM_BITS = 40  #: the RMSNorm denominator is normalised to [2**40, 2**42) before isqrt
RSQRT_NUM_SHIFT = 24  #: extra fraction bits of the RMSNorm reciprocal
EPS_BITS = 48  #: the RMSNorm epsilon term is a signed 48-bit constant
RECIP_BITS = 31  #: reciprocals of scale mantissas: floor(2**31 / m)
SOFTMAX_RECIP_BITS = 46  #: softmax reciprocal: floor(2**46 / sum)


class NumericsError(ArithmeticError):
    """A value left the range the contract guarantees (e.g. accumulator overflow)."""


def _t(x) -> Tensor:
    return torch.as_tensor(x, dtype=I64)


# -- rounding and saturation ---------------------------------------------------------------
#: Right shifts saturate here: every value the contract shifts is below 2**60 in magnitude,
#: so a shift of 62 already gives 0, as any larger one must (int64 shifts of 64 or more are
#: not defined).
MAX_RIGHT_SHIFT = 62
#: Left shifts whose exact result reaches 2**60 give +-2**60 instead. Every caller saturates
#: the result (or a sum of two such) to at most 48 bits, so this is the exact arithmetic's
#: outcome without int64 overflow; the hardware shifts exactly and saturates.
LEFT_LIMIT_LOG2 = 60


def _shift_left(x: Tensor, left) -> Tensor:
    left = torch.clamp(_t(left), max=LEFT_LIMIT_LOG2)
    limit = torch.bitwise_left_shift(torch.ones_like(left), LEFT_LIMIT_LOG2 - left)
    big = x.abs() >= limit
    return torch.where(big, torch.sign(x) << LEFT_LIMIT_LOG2,
                       torch.bitwise_left_shift(torch.where(big, 0, x), left))


def _minus_one_if_negative(x: Tensor) -> Tensor:
    """-1 where ``x < 0``, else 0: the sign bit, spread by an arithmetic shift (one op)."""
    return x >> 63


def round_shift(x, s) -> Tensor:
    """``x / 2**s`` rounded half away from zero; ``s <= 0`` is a left shift (exact below
    ``2**LEFT_LIMIT_LOG2``).

    Hardware: add ``2**(s-1) - (x < 0)`` then arithmetic shift right (one adder, the sign bit
    as carry-in). Ties are symmetric, so rounding adds no bias to sums of signed values.
    """
    x = _t(x)
    if isinstance(s, int):  # one shift for the whole tensor (the common case)
        if s <= 0:
            return _shift_left(x, -s)
        s = min(s, MAX_RIGHT_SHIFT)
        return (x + _minus_one_if_negative(x)).add_(1 << (s - 1)) >> s
    s = _t(s)
    if bool((s > 0).all()):  # right shifts only (a linear layer's rows): the same sums
        pos = torch.clamp(s, max=MAX_RIGHT_SHIFT)
        half = torch.bitwise_left_shift(torch.ones_like(pos), pos - 1)
        return torch.bitwise_right_shift(x + _minus_one_if_negative(x) + half, pos)
    pos = torch.clamp(s, min=0, max=MAX_RIGHT_SHIFT)
    left = torch.clamp(-s, min=0)
    half = torch.where(pos > 0, torch.bitwise_left_shift(torch.ones_like(pos), pos - 1), 0)
    bias = torch.where(pos > 0, half + _minus_one_if_negative(x), 0)
    right = torch.bitwise_right_shift(x + bias, pos)
    return torch.where(s > 0, right, _shift_left(x, left))


def saturate(x, bits: int, symmetric: bool = False) -> Tensor:
    """Clamp to signed ``bits``; ``symmetric`` excludes the most negative code."""
    hi = (1 << (bits - 1)) - 1
    lo = -hi if symmetric else -hi - 1
    return torch.clamp(_t(x), lo, hi)


def div_ceil(num, den) -> Tensor:
    """Ceiling of ``num / den`` for ``num >= 0``, ``den > 0``."""
    num, den = _t(num), _t(den)
    return torch.div(num + den - 1, den, rounding_mode="floor")


def isqrt(x) -> Tensor:
    """Exact ``floor(sqrt(x))`` for ``0 <= x < 2**62`` (bit-serial square root in hardware)."""
    x = _t(x)
    if bool((x < 0).any()):
        raise NumericsError("isqrt of a negative value")
    r = torch.sqrt(x.to(torch.float64)).to(I64)
    for _ in range(2):  # float64 is within 1 of the answer here: correct both ways
        r = torch.where(r * r > x, r - 1, r)
        r = torch.where((r + 1) * (r + 1) <= x, r + 1, r)
    return r


def bit_length(x) -> Tensor:
    """Bits needed for ``|x|`` (0 for 0): the leading-zero counter.

    The float64 exponent is within one of the answer (rounding near a power of two); one
    integer comparison each way makes it exact.
    """
    x = _t(x).abs()
    n = torch.frexp(x.to(torch.float64)).exponent.to(I64)
    if x.numel() == 0 or int(x.max()) < F64_EXACT:  # every value converts exactly
        return n
    n = torch.where((n > 0) & (torch.bitwise_right_shift(x, torch.clamp(n - 1, min=0)) == 0),
                    n - 1, n)
    n = torch.where(torch.bitwise_right_shift(x, n) > 0, n + 1, n)
    return torch.where(x == 0, 0, n)


def check_range(x: Tensor, bits: int, what: str) -> Tensor:
    """Raise :class:`NumericsError` if ``x`` does not fit signed ``bits`` (no silent wrap)."""
    limit = 1 << (bits - 1)
    if bool(((x >= limit) | (x < -limit)).any()):
        raise NumericsError(f"{what}: value {int(x.abs().max())} does not fit {bits} bits")
    return x


# -- SF16 scales -----------------------------------------------------------------------------
def sf16_ceil_ratio(a, d: int) -> tuple[Tensor, Tensor]:
    """SF16 ``(m, e)`` with ``m * 2**e >= a / d``, as small as that allows.

    ``a >= 0`` integer (an absmax), ``d`` a positive constant (127 or 7). Start from
    ``e = bitlen(a) - bitlen(d) - 16`` and ``m = ceil(a * 2**-e / d)`` (then in (2**15, 2**17));
    while ``m >= 2**16``, ``e += 1`` (at most twice). ``a == 0`` gives ``(0, 0)``.
    """
    a = _t(a)

    def mantissa(e: Tensor) -> Tensor:
        num = torch.bitwise_left_shift(a, torch.clamp(-e, min=0))
        den = torch.bitwise_left_shift(torch.full_like(a, d), torch.clamp(e, min=0))
        return div_ceil(num, den)

    e = bit_length(a) - d.bit_length() - SCALE_BITS
    m = mantissa(e)
    for _ in range(2):
        over = m > SCALE_MAX
        if not bool(over.any()):
            break
        e = torch.where(over, e + 1, e)
        m = mantissa(e)
    zero = a == 0
    return torch.where(zero, 0, m), torch.where(zero, 0, e)


def sf16_recip(m) -> Tensor:
    """``floor(2**31 / m)`` for a normalised mantissa (17 bits); 0 for ``m == 0``."""
    m = _t(m)
    return torch.where(m > 0, torch.div(1 << RECIP_BITS, torch.clamp(m, min=1),
                                        rounding_mode="floor"), 0)


def sf16_to_float(m, e) -> Tensor:
    return _t(m).to(torch.float64) * torch.pow(2.0, _t(e).to(torch.float64))


def quantize_symmetric(v, qmax: int, dim: int = -1) -> tuple[Tensor, Tensor, Tensor]:
    """Dynamic symmetric quantisation of wide ``v`` along ``dim`` (per token / per group).

    Returns ``(q, m, e)``: codes in [-qmax, qmax] and the SF16 scale per slice, in units of the
    input's LSB. ``q = sat(round_shift(v * floor(2**31 / m), 31 + e))``.
    """
    v = _t(v)
    absmax = v.abs().amax(dim=dim, keepdim=True)
    m, e = sf16_ceil_ratio(absmax, qmax)
    q = round_shift(v * sf16_recip(m), RECIP_BITS + e)
    q = torch.clamp(q, -qmax, qmax)
    return q, m.squeeze(dim), e.squeeze(dim)


def quantize_act(v, dim: int = -1) -> tuple[Tensor, Tensor, Tensor]:
    """QUANT8: wide INT32 rows -> INT8 per token with SF16 scales."""
    return quantize_symmetric(v, ACT_MAX, dim)


def quantize_kv(v, group: int, bits: int = KV_BITS) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """KVQUANT: wide rows [..., C] -> INT4 (or INT8) per token and per ``group`` channels,
    symmetric around the group's midpoint.

    ``mid = round_shift(max + min, 1)`` (wide), then :func:`quantize_symmetric` of ``v - mid``:
    ``v ~= mid + code * m * 2**e``. Returns codes [..., C] and ``(m, e, mid)`` of shape
    [..., C // group].
    """
    v = _t(v)
    if v.shape[-1] % group:
        raise NumericsError(f"KV width {v.shape[-1]} is not a multiple of the group {group}")
    g = v.reshape(*v.shape[:-1], v.shape[-1] // group, group)
    mid = round_shift(g.amax(-1) + g.amin(-1), 1)
    q, m, e = quantize_symmetric(g - mid.unsqueeze(-1), (1 << (bits - 1)) - 1, dim=-1)
    return q.reshape(v.shape), m, e, mid


def align_sf16(m, e, dim: int = -1) -> tuple[Tensor, Tensor]:
    """Block-float alignment: mantissas shifted to the largest exponent along ``dim``."""
    m, e = _t(m), _t(e)
    emax = torch.where(m > 0, e, torch.iinfo(I64).min).amax(dim=dim, keepdim=True)
    emax = torch.where(emax == torch.iinfo(I64).min, 0, emax)
    return round_shift(m, emax - e), emax.squeeze(dim)


# -- weight scales: uint16 mantissas, one exponent per output row ----------------------------
def encode_scales(scales: Tensor) -> tuple[Tensor, Tensor]:
    """Real per-group scales [N, G] -> (mantissa uint16 [N, G], exponent [N]).

    Row exponent ``E`` puts the row's largest scale in [2**15, 2**16):
    real ~= mant * 2**-E. Rounding is half away from zero; an all-zero row has E = 0.
    """
    s = torch.as_tensor(scales, dtype=torch.float64)
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise NumericsError("weight scales must be finite and non-negative")
    rowmax = s.amax(dim=-1)
    _, exp2 = torch.frexp(torch.where(rowmax > 0, rowmax, 1.0))  # rowmax = f * 2**exp2
    E = torch.where(rowmax > 0, 16 - exp2.to(I64), 0)
    mant = torch.floor(s * torch.pow(2.0, E.to(torch.float64)).unsqueeze(-1) + 0.5).to(I64)
    return torch.clamp(mant, 0, SCALE_MAX), E


def decode_scales(mant: Tensor, E: Tensor) -> Tensor:
    return _t(mant).to(torch.float64) * torch.pow(2.0, -_t(E).to(torch.float64)).unsqueeze(-1)


# -- weight data types (declared in llmacc.wdtypes) ---------------------------------------
W_OPERAND_MAX = 16  #: decoded weight operands lie in [-16, 16]: 6-bit signed


def grid(dtype: WDType) -> tuple[int, ...]:
    """Sorted distinct values a data type can represent."""
    if dtype is WDType.W2:
        return (0, 1, 2, 3)
    if dtype is WDType.INT8:
        return tuple(range(-ACT_MAX, ACT_MAX + 1))
    return tuple(sorted(set(code_table(dtype))))


def decode_lut(family: tuple[WDType, ...]) -> Tensor:
    """[8, 2**bits] decode ROM for a family, rows indexed by type id (unused rows zero)."""
    bits = family[0].bits
    lut = torch.zeros(8, 1 << bits, dtype=I64)
    for t in family:
        lut[t.type_id] = torch.tensor(code_table(t), dtype=I64)
    return lut


MIXED3_LUT = decode_lut(MIXED3_TYPES)
MIXED4_LUT = decode_lut(MIXED4_TYPES)


def decode_weights(codes: Tensor, dtype_ids: Tensor | None, fmt: str, group: int,
                   zero_points: Tensor | None = None) -> Tensor:
    """Codes [N, K] -> signed operands [N, K] (the on-chip weight decoder).

    ``fmt`` is ``"w2"`` (needs ``zero_points`` [N, K/group]), ``"mixed3"``/``"mixed4"`` (needs
    ``dtype_ids`` [N, K/group], family type ids) or ``"int8"`` (codes are the operands).
    """
    codes = _t(codes)
    if fmt == "int8":
        return saturate(codes, 8, symmetric=True)
    if fmt == "w2":
        z = _t(zero_points).repeat_interleave(group, dim=-1)
        return codes - z
    lut = {"mixed3": MIXED3_LUT, "mixed4": MIXED4_LUT}[fmt]
    ids = _t(dtype_ids).repeat_interleave(group, dim=-1)
    return lut[ids, codes]


def quantize_to_grid(w: Tensor, dtype: WDType) -> tuple[Tensor, Tensor]:
    """Round-to-nearest symmetric group quantisation to a sign-magnitude type (offline).

    ``w`` [..., G] real; scale = absmax / max|grid|. Returns (codes, scale [...]). Ties go to
    the code listed first in :func:`code_table` order.
    """
    table = torch.tensor(code_table(dtype), dtype=torch.float64)
    w = torch.as_tensor(w, dtype=torch.float64)
    scale = w.abs().amax(dim=-1) / table.abs().max()
    safe = torch.where(scale > 0, scale, 1.0).unsqueeze(-1)
    codes = torch.argmin((w.unsqueeze(-1) / safe.unsqueeze(-1) - table).abs(), dim=-1)
    return codes.to(I64), scale


def quantize_w2(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Round-to-nearest 2-bit asymmetric group quantisation (offline), ``w`` [..., G].

    Returns (codes in 0..3, zero point in 0..3, scale): real ~= scale * (code - zero).
    The range always includes 0 so that the zero point is representable.
    """
    w = torch.as_tensor(w, dtype=torch.float64)
    lo = torch.clamp(w.amin(dim=-1), max=0.0)
    hi = torch.clamp(w.amax(dim=-1), min=0.0)
    scale = (hi - lo) / 3
    safe = torch.where(scale > 0, scale, 1.0)
    zero = torch.clamp(torch.floor(-lo / safe + 0.5), 0, 3)
    codes = torch.clamp(torch.floor(w / safe.unsqueeze(-1) + 0.5) + zero.unsqueeze(-1), 0, 3)
    return codes.to(I64), zero.to(I64), scale


# -- packing -----------------------------------------------------------------------------------
def pack_codes(codes: Tensor, bits: int) -> bytes:
    """Pack unsigned codes LSB-first into a little-endian byte stream (code i at bit i*bits)."""
    flat = _t(codes).flatten().tolist()
    if any(c < 0 or c >> bits for c in flat):
        raise NumericsError(f"codes do not fit {bits} bits")
    acc = 0
    for i, c in enumerate(flat):
        acc |= c << (i * bits)
    return acc.to_bytes((len(flat) * bits + 7) // 8, "little")


def unpack_codes(blob: bytes, bits: int, count: int) -> Tensor:
    if len(blob) * 8 < count * bits:
        raise NumericsError(f"{len(blob)} bytes hold fewer than {count} {bits}-bit codes")
    acc = int.from_bytes(blob, "little")
    mask = (1 << bits) - 1
    return torch.tensor([(acc >> (i * bits)) & mask for i in range(count)], dtype=I64)


# -- N:M structured sparsity -------------------------------------------------------------------


def nm_compress(w: Tensor, keep: Tensor, n: int, m: int) -> tuple[Tensor, Tensor]:
    """Dense [R, K] and a keep mask -> kept values [R, K/m*n] and block indices (ascending).

    ``keep`` must select exactly ``n`` of every ``m`` consecutive weights along K. Indices are
    log2(m)-bit offsets inside the block; the hardware's sparse multiplexer uses them to pick
    the matching activations.
    """
    if (n, m) not in SPARSITY_PATTERNS:
        raise NumericsError(f"unsupported sparsity {n}:{m}; supported {sorted(SPARSITY_PATTERNS)}")
    w, keep = torch.as_tensor(w), torch.as_tensor(keep, dtype=torch.bool)
    rows, k = w.shape
    if k % m:
        raise NumericsError(f"K = {k} is not a multiple of the sparse block {m}")
    kb = keep.reshape(rows, k // m, m)
    if bool((kb.sum(-1) != n).any()):
        raise NumericsError(f"keep mask does not select exactly {n} of every {m}")
    order = torch.argsort((~kb).to(torch.int8) * m + torch.arange(m), dim=-1, stable=True)
    idx = order[..., :n]
    vals = torch.gather(w.reshape(rows, k // m, m), -1, idx)
    return vals.reshape(rows, -1), idx.reshape(rows, -1).to(I64)


def nm_expand(values: Tensor, indices: Tensor, n: int, m: int, k: int) -> Tensor:
    """Inverse of :func:`nm_compress`: the dense [R, K] matrix with zeros elsewhere."""
    rows = values.shape[0]
    dense = torch.zeros(rows, k // m, m, dtype=values.dtype)
    dense.scatter_(-1, _t(indices).reshape(rows, k // m, n), values.reshape(rows, k // m, n))
    return dense.reshape(rows, k)


# -- matrix engine -----------------------------------------------------------------------------
FLOAT_EXACT = 1 << 53  #: integers below this are exact in float64, and so are their sums
#: Products of at least this many multiplies go to float64 BLAS; smaller ones stay int64,
#: cheaper than waking BLAS' threads.
FLOAT_MIN_MACS = 1 << 24


def _float64_exact(macs: int, k: int, *operands: Tensor) -> bool:
    """A product of ``macs`` multiplies, sums of ``k`` terms of ``operands``' products, taken
    in float64: worth it (:data:`FLOAT_MIN_MACS`) and exact (every partial sum an integer
    below :data:`FLOAT_EXACT`)."""
    if macs < FLOAT_MIN_MACS:
        return False
    bound = k
    for x in operands:
        bound *= int(x.abs().max()) if x.numel() else 0
    return bound < FLOAT_EXACT


def linear_acc(x: Tensor, w: Tensor, mant: Tensor, group: int) -> Tensor:
    """Grouped integer matmul: ``acc[t, n] = sum_g mant[n, g] * sum_{k in g} w[n, k] x[t, k]``.

    ``x`` INT8 [T, K], ``w`` decoded operands [N, K], ``mant`` uint16 [N, K/group]. Group partial
    sums are exact; the per-group rescale and the sum over groups are the 48-bit DSP
    accumulator, which must not overflow (the compiler guarantees it; here it is checked).
    Where ``K |x| |w| mant`` is below :data:`FLOAT_EXACT`, every product and partial sum of
    ``x @ (w * mant)`` is an integer below it, so one float64 matrix product gives ``acc``
    exactly: large products (:data:`FLOAT_MIN_MACS`) take it, many times faster than the
    int64 einsum, group by group, that the others take.
    """
    x, w, mant = _t(x), _t(w), _t(mant)
    t, k = x.shape
    n = w.shape[0]
    if k % group:
        raise NumericsError(f"K = {k} is not a multiple of the group {group}")
    if _float64_exact(t * n * k, k, x, w, mant):
        scaled = w.double() * mant.double().repeat_interleave(group, dim=-1)
        acc = (x.double() @ scaled.t()).to(I64)
    else:
        psum = torch.einsum("tgk,ngk->tng", x.reshape(t, k // group, group),
                            w.reshape(n, k // group, group))
        acc = (psum * mant.unsqueeze(0)).sum(-1)
    return check_range(acc, ACC_BITS, "matrix accumulator")


def linear_out(acc: Tensor, x_m: Tensor, x_e: Tensor, row_exp: Tensor,
               f_in: int, f_out: int) -> Tensor:
    """Accumulator [T, N] -> wide INT32 with exponent ``f_out``.

    ``out = sat32(round_shift(acc * m_x, E[n] + f_in - f_out - e_x))`` with the token's SF16
    scale ``(x_m, x_e)`` [T] (in units of the wide input with exponent ``f_in``) and the weight
    rows' exponents ``E`` [N].
    """
    acc = _t(acc)
    shift = _t(row_exp).unsqueeze(0) + f_in - f_out - _t(x_e).unsqueeze(-1)
    return saturate(round_shift(acc * _t(x_m).unsqueeze(-1), shift), WIDE_BITS)


def embed_rows(operands: Tensor, mant: Tensor, row_exp: Tensor, group: int,
               f_out: int) -> Tensor:
    """Dequantize INT8 table rows (embedding lookup) to wide: ``sat32(round_shift(w * mant,
    E[row] - f_out))`` per element, ``mant`` [R, K/group], ``row_exp`` [R]."""
    w = _t(operands)
    scale = _t(mant).repeat_interleave(group, dim=-1)[..., :w.shape[-1]]
    return saturate(round_shift(w * scale, _t(row_exp).unsqueeze(-1) - f_out), WIDE_BITS)


# -- attention ---------------------------------------------------------------------------------
def attention_scores(q_codes: Tensor, q_m: Tensor, q_e: Tensor, k_codes: Tensor, k_m: Tensor,
                     k_e: Tensor, k_mid: Tensor, f_q: int, f_k: int) -> Tensor:
    """Q x K^T of one head: INT8 queries [T, D] (SF16 scale per row) against the INT4 cache
    [S, D] (SF16 scale and wide midpoint per key) -> scores [T, S] in Q15.16 (``SCORE_FRAC``).

    Codes: a matrix instruction with the keys as weight rows (group = D, the key's mantissa as
    the group scale, ``f_k - e_k`` as its row exponent; :func:`linear_acc`, :func:`linear_out`).
    Midpoints: ``round_shift(sum(q_codes) * q_m * mid, f_q + f_k - q_e - 16)``. The two add
    with 32-bit saturation. ``log2(e) / sqrt(D)`` is folded into the query projection offline.
    """
    acc = linear_acc(q_codes, k_codes, _t(k_m).unsqueeze(-1), _t(k_codes).shape[-1])
    codes = linear_out(acc, q_m, q_e, f_k - _t(k_e), f_q, SCORE_FRAC)
    qs = _t(q_codes).sum(-1) * _t(q_m)
    shift = (f_q + f_k - SCORE_FRAC - _t(q_e)).unsqueeze(-1)
    mids = round_shift(qs.unsqueeze(-1) * _t(k_mid).unsqueeze(0), shift)
    return saturate(codes + mids, WIDE_BITS)


def attention_pv(probs: Tensor, mask: Tensor, v_codes: Tensor, v_m: Tensor, v_e: Tensor,
                 v_mid: Tensor, f_v: int, f_out: int) -> Tensor:
    """P x V of one head: Q0.15 probabilities [T, S] against the INT4 value cache [S, D] with
    per-token SF16 scales and wide midpoints [S] -> wide [T, D] with exponent ``f_out``.

    Per query, the visible tokens' scales are aligned to their largest exponent ``emax``
    (:func:`align_sf16`); ``x[t, s] = p[t, s] * m'[t, s]`` (< 2**31) and
    ``acc = x @ v_codes`` (48-bit, checked); ``out = sat32(round_shift(acc, 15 + f_v - emax -
    f_out) + round_shift(p @ mid, 15 + f_v - f_out))``.
    """
    mask = torch.as_tensor(mask, dtype=torch.bool)
    m = torch.where(mask, _t(v_m).unsqueeze(0), 0)
    e = _t(v_e).unsqueeze(0).expand_as(m)
    m_al, emax = align_sf16(m, e, dim=-1)
    x, v_codes = _t(probs) * m_al, _t(v_codes)
    if _float64_exact(x.numel() * v_codes.shape[-1], x.shape[-1], x, v_codes):
        acc = (x.double() @ v_codes.double()).to(I64)  # exact, as in linear_acc
    else:
        acc = x @ v_codes
    acc = check_range(acc, ACC_BITS, "attention P x V accumulator")
    shift = (PROB_FRAC + f_v - f_out - emax).unsqueeze(-1)
    mids = round_shift(_t(probs) @ _t(v_mid), PROB_FRAC + f_v - f_out).unsqueeze(-1)
    return saturate(round_shift(acc, shift) + mids, WIDE_BITS)


# -- element-wise ------------------------------------------------------------------------------
def add(a, b, b_shift: int = 0) -> Tensor:
    """Residual add: ``sat32(a + round_shift(b, b_shift))`` (aligns b's exponent to a's)."""
    return saturate(_t(a) + round_shift(b, b_shift), WIDE_BITS)


def mul(a, b, shift: int) -> Tensor:
    """``sat32(round_shift(sat24(a) * sat24(b), shift))``."""
    return saturate(round_shift(saturate(a, MUL_IN_BITS) * saturate(b, MUL_IN_BITS), shift),
                    WIDE_BITS)


# -- lookup tables -----------------------------------------------------------------------------
def _round_half_away(x: Tensor) -> Tensor:
    return (torch.sign(x) * torch.floor(x.abs() + 0.5)).to(I64)


def exp2_table() -> Tensor:
    """``round(2**16 * 2**(-i/256))`` for i in 0..256 (257 entries, Q16)."""
    i = torch.arange((1 << EXP2_LUT_BITS) + 1, dtype=torch.float64)
    return _round_half_away(EXP2_ONE * torch.pow(2.0, -i / (1 << EXP2_LUT_BITS)))


def sigmoid_table() -> Tensor:
    """``round(2**16 * sigmoid(x))`` on x = -16 .. 16 step 2**-5 (1025 entries, Q16)."""
    n = 2 * SIGMOID_RANGE << SIGMOID_STEP_LOG2
    x = (torch.arange(n + 1, dtype=torch.float64) - n // 2) / (1 << SIGMOID_STEP_LOG2)
    return _round_half_away(SIGMOID_ONE * torch.sigmoid(x))


EXP2_LUT = exp2_table()
SIGMOID_LUT = sigmoid_table()


def _interp(lut: Tensor, idx: Tensor, frac: Tensor, frac_bits: int) -> Tensor:
    lo, hi = lut[idx], lut[idx + 1]
    return lo + round_shift((hi - lo) * frac, frac_bits)


def exp2_neg(d) -> Tensor:
    """``2**(-d / 2**16)`` in Q16 for ``d >= 0`` (Q15.16): table + linear interpolation."""
    d = _t(d)
    if bool((d < 0).any()):
        raise NumericsError("exp2_neg takes non-negative arguments")
    k = torch.bitwise_right_shift(d, SCORE_FRAC)
    f = d & ((1 << SCORE_FRAC) - 1)
    low_bits = SCORE_FRAC - EXP2_LUT_BITS
    y = _interp(EXP2_LUT, torch.bitwise_right_shift(f, low_bits), f & ((1 << low_bits) - 1),
                low_bits)
    return torch.where(k > 32, 0, round_shift(y, torch.clamp(k, max=32)))


def lambda_mask(q_pos, kv_len: int, sink: int, window: int) -> Tensor:
    """Which keys each query sees: causal, and (if ``window > 0``) Lambda-shaped.

    Key ``t`` is visible to the query at position ``p`` when ``t <= p`` and either
    ``window == 0`` (full attention), ``t < sink``, or ``t > p - window``.
    """
    p = _t(q_pos).unsqueeze(-1)
    t = torch.arange(kv_len, dtype=I64)
    visible = t <= p
    if window > 0:
        visible &= (t < sink) | (t > p - window)
    return visible


def softmax(scores, mask: Tensor) -> Tensor:
    """Row softmax of Q15.16 log2-domain scores -> probabilities in Q0.15 (masked -> 0).

    ``mx = max(visible)``; ``p = exp2_neg(mx - s)`` (Q16); ``S = sum p``;
    ``prob = round_shift(p * floor(2**46 / S), 31)``.
    """
    s = _t(scores)
    low = torch.iinfo(I64).min
    mx = torch.where(mask, s, low).amax(dim=-1, keepdim=True)
    p = torch.where(mask, exp2_neg(torch.where(mask, mx - s, 0)), 0)
    total = p.sum(dim=-1, keepdim=True)
    recip = torch.div(1 << SOFTMAX_RECIP_BITS, torch.clamp(total, min=1), rounding_mode="floor")
    return round_shift(p * recip, SOFTMAX_RECIP_BITS - PROB_FRAC)


def sigmoid_q16(x) -> Tensor:
    """``sigmoid(x)`` in Q16 for ``x`` in Q.13: clamped to [-16, 16), looked up in steps of
    2**-5 and interpolated over the low 8 bits (SiLU's and GELU's gate)."""
    lo = -SIGMOID_RANGE << SIGMOID_IN_FRAC
    xq = torch.clamp(_t(x), lo, -lo - 1) - lo
    return _interp(SIGMOID_LUT, torch.bitwise_right_shift(xq, SIGMOID_INTERP_BITS),
                   xq & ((1 << SIGMOID_INTERP_BITS) - 1), SIGMOID_INTERP_BITS)


def silu(v, f_in: int, f_out: int) -> Tensor:
    """SiLU of wide ``v``: ``sat32(round_shift(v * sigmoid_q16(x), 16 + f_in - f_out))`` with
    ``x`` = ``v`` cast to Q.13 (round_shift by ``f_in - 13``)."""
    v = _t(v)
    sig = sigmoid_q16(round_shift(v, f_in - SIGMOID_IN_FRAC))
    return saturate(round_shift(v * sig, 16 + f_in - f_out), WIDE_BITS)


def gelu(v, f_in: int, f_out: int) -> Tensor:
    """GELU of wide ``v`` in the tanh form that GPT-2 (``gelu_new``) and Gemma
    (``gelu_pytorch_tanh``) use, ``x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, written as
    ``x sigmoid(C1 x + C3 x^3)``: ``x`` is ``v`` cast to Q.13 and clamped to [-8, 8), the cube
    rounded to Q.13 in two steps, the argument ``round_shift(C1 x + C3 x^3, 12)``; then as
    SiLU, ``sat32(round_shift(v * sigmoid_q16(argument), 16 + f_in - f_out))``."""
    v = _t(v)
    limit = GELU_CLAMP << SIGMOID_IN_FRAC
    x = torch.clamp(round_shift(v, f_in - SIGMOID_IN_FRAC), -limit, limit - 1)
    cube = round_shift(round_shift(x * x, SIGMOID_IN_FRAC) * x, SIGMOID_IN_FRAC)
    argument = round_shift(GELU_C1 * x + GELU_C3 * cube, GELU_COEF_FRAC)
    return saturate(round_shift(v * sigmoid_q16(argument), 16 + f_in - f_out), WIDE_BITS)


def rmsnorm(v, gamma, gamma_exp: int, eps_fixed: int, f_out: int) -> Tensor:
    """RMSNorm of wide rows ``v`` [..., L] with INT16 ``gamma`` (real g * 2**-gamma_exp).

    1. ``sh = max(0, bitlen(max|v|) - 15)``; ``u = round_shift(v, sh)`` (|u| <= 2**15).
    2. ``den = sum u**2 + round_shift(eps_fixed, 2 sh)`` with
       ``eps_fixed = round(eps * L * 2**(2 F_in))`` (see :func:`rmsnorm_eps`).
    3. Normalise: even ``p`` with ``den * 2**p`` in [2**40, 2**42); ``root = isqrt(den << p)``.
    4. ``inv = floor(isqrt(L << 32) * 2**24 / root)``  (~ sqrt(L) * 2**(40 - p/2) / sqrt(den)).
    5. ``out = sat32(round_shift(u * gamma * inv, 40 - p/2 + gamma_exp - f_out))``.
    The result does not depend on ``F_in`` except through ``eps_fixed``.
    """
    v, gamma = _t(v), _t(gamma)
    length = v.shape[-1]
    sh = torch.clamp(bit_length(v.abs().amax(-1, keepdim=True)) - (NORM_IN_BITS - 1), min=0)
    u = round_shift(v, sh)
    eps_fixed = check_range(_t(eps_fixed), EPS_BITS, "RMSNorm epsilon")
    den = (u * u).sum(-1, keepdim=True) + round_shift(eps_fixed, 2 * sh)
    den = torch.clamp(den, min=1)
    p = torch.clamp(RSQRT_NORM_BITS - bit_length(den) + 1, min=0)
    p = p + (p & 1)
    root = isqrt(torch.bitwise_left_shift(den, p))
    num = int(isqrt(length << 32))
    inv = torch.div(num << RSQRT_NUM_SHIFT, root, rounding_mode="floor")
    t = u * saturate(gamma, GAMMA_BITS)
    shift = 16 + RSQRT_NUM_SHIFT - p // 2 + gamma_exp - f_out
    return saturate(round_shift(t * inv, shift), WIDE_BITS)


def rmsnorm_eps(eps: float, length: int, f_in: int) -> int:
    """The integer epsilon term of :func:`rmsnorm` (computed offline, stored as a constant)."""
    fixed = _round_half_away(torch.tensor(eps * length * 2.0 ** (2 * f_in)))
    return int(check_range(fixed, EPS_BITS, "RMSNorm epsilon"))


#: The RoPE frequency scalings :func:`rope_frequencies` implements (Hugging Face's
#: ``rope_type`` names).
ROPE_TYPES = ("default", "linear", "llama3")


def rope_frequencies(head_dim: int, theta: float = 10000.0, rope_type: str = "default",
                     factor: float = 1.0, low_freq_factor: float = 1.0,
                     high_freq_factor: float = 4.0, original_max_pos: int = 8192) -> Tensor:
    """The angular frequency of each pair, float64 [head_dim/2]: ``theta**(-2i/head_dim)``,
    then scaled. ``linear`` divides every frequency by ``factor``; ``llama3`` (LLaMA 3.1)
    divides the low frequencies (wavelength above ``original_max_pos / low_freq_factor``) by
    ``factor``, keeps the high ones (below ``original_max_pos / high_freq_factor``) and blends
    in between, as Meta's reference and Hugging Face do."""
    i = torch.arange(head_dim // 2, dtype=torch.float64)
    freq = theta ** (-2 * i / head_dim)
    if rope_type == "default":
        return freq
    if rope_type == "linear":
        return freq / factor
    if rope_type != "llama3":
        raise NumericsError(f"RoPE type {rope_type!r} is not one of {', '.join(ROPE_TYPES)}")
    wavelen = 2 * math.pi / freq
    low_wavelen = original_max_pos / low_freq_factor
    high_wavelen = original_max_pos / high_freq_factor
    smooth = (original_max_pos / wavelen - low_freq_factor) / (high_freq_factor
                                                               - low_freq_factor)
    blended = (1 - smooth) * freq / factor + smooth * freq
    out = torch.where(wavelen > low_wavelen, freq / factor, freq)
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, blended, out)


def rope_table(max_pos: int, head_dim: int, theta: float = 10000.0,
               **scaling) -> tuple[Tensor, Tensor]:
    """cos/sin [max_pos, head_dim/2] in Q1.14 for interleaved pairs (2i, 2i+1).

    The frequencies are :func:`rope_frequencies` (``scaling``: its keyword arguments).
    Generated offline in float64, stored in the model package; hardware and reference read
    the same table.
    """
    freq = rope_frequencies(head_dim, theta, **scaling)
    angle = torch.arange(max_pos, dtype=torch.float64).unsqueeze(-1) * freq
    one = 1 << TRIG_FRAC
    return _round_half_away(torch.cos(angle) * one), _round_half_away(torch.sin(angle) * one)


def rope(x, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate interleaved pairs of wide ``x`` [..., D] by Q1.14 ``cos``/``sin`` [..., D/2]."""
    x = _t(x)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    y0 = round_shift(x0 * cos - x1 * sin, TRIG_FRAC)
    y1 = round_shift(x0 * sin + x1 * cos, TRIG_FRAC)
    return saturate(torch.stack((y0, y1), dim=-1).reshape(x.shape), WIDE_BITS)


def encode_fixed(x, frac: int, bits: int = WIDE_BITS) -> Tensor:
    """Real -> saturated fixed point with ``frac`` fraction bits (offline boundary only)."""
    x = torch.as_tensor(x, dtype=torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise NumericsError("cannot encode NaN or Inf as fixed point")
    return saturate(_round_half_away(x * 2.0**frac), bits)

