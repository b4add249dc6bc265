"""The numerics contract at its edges: rounding ties, saturation, scales, grids, tables."""

import math
import random

import pytest
import torch

from llmacc import numerics as N

T = torch.tensor


def naive_round_shift(x: int, s: int) -> int:
    """Deliberately naive: exact rational arithmetic, half away from zero."""
    if s <= 0:
        return x << -s
    q, r = divmod(abs(x), 1 << s)
    if 2 * r >= 1 << s:
        q += 1
    return q if x >= 0 else -q


def test_round_shift_ties_go_away_from_zero():
    x = T([1, -1, 3, -3, 5, -5, 2, -2, 6, -6, 7, -7])
    assert N.round_shift(x, 1).tolist() == [1, -1, 2, -2, 3, -3, 1, -1, 3, -3, 4, -4]
    assert N.round_shift(T([2, -2, 6, -6]), 2).tolist() == [1, -1, 2, -2]  # 0.5, 1.5


def test_round_shift_matches_naive_model(seed):
    rng = random.Random(seed)
    xs = [rng.randint(-(1 << 50), 1 << 50) for _ in range(2000)] + [0, 1, -1]
    ss = [rng.randint(-8, 40) for _ in xs]
    got = N.round_shift(T(xs), T(ss)).tolist()
    assert got == [naive_round_shift(x, s) for x, s in zip(xs, ss, strict=True)]
    right = [rng.randint(1, 70) for _ in xs]  # right shifts only, some past MAX_RIGHT_SHIFT
    got = N.round_shift(T(xs), T(right)).tolist()
    assert got == [naive_round_shift(x, s) for x, s in zip(xs, right, strict=True)]
    for s in (1, 2, 7, 31, 62, 70):  # one shift for the whole tensor
        assert N.round_shift(T(xs), s).tolist() == [naive_round_shift(x, s) for x in xs]


def test_round_shift_zero_and_left():
    assert N.round_shift(T([5, -5]), 0).tolist() == [5, -5]
    assert N.round_shift(T([5, -5]), -3).tolist() == [40, -40]


def test_saturation_bounds():
    x = T([-1000, -128, -127, 0, 127, 128, 1000])
    assert N.saturate(x, 8).tolist() == [-128, -128, -127, 0, 127, 127, 127]
    assert N.saturate(x, 8, symmetric=True).tolist() == [-127, -127, -127, 0, 127, 127, 127]
    assert N.saturate(T([1 << 40, -(1 << 40)]), 32).tolist() == [(1 << 31) - 1, -(1 << 31)]


def test_div_ceil():
    assert N.div_ceil(T([0, 1, 127, 128]), 127).tolist() == [0, 1, 1, 2]


def test_isqrt_exact(seed):
    rng = random.Random(seed)
    xs = [0, 1, 2, 3, 4, (1 << 62) - 1, (1 << 52) + 1]
    xs += [rng.randrange(1 << 62) for _ in range(500)]
    xs += [k * k for k in (3, 1 << 30, (1 << 31) - 1)] + [k * k - 1 for k in (5, 1 << 30)]
    assert N.isqrt(T(xs)).tolist() == [math.isqrt(x) for x in xs]
    with pytest.raises(N.NumericsError):
        N.isqrt(T([-1]))


@pytest.mark.parametrize("top", [52, 61], ids=["float64-exact", "rounded"])
def test_bit_length(top):
    xs = [0, 1, -1, 2, 255, -256, (1 << 40)]
    near = [(1 << b) + d for b in range(50, top + 1) for d in (-1, 0, 1)]  # float64 rounds
    xs += near + [-x for x in near]
    assert N.bit_length(T(xs)).tolist() == [abs(x).bit_length() for x in xs]


def test_check_range_raises_instead_of_wrapping():
    N.check_range(T([(1 << 47) - 1, -(1 << 47)]), 48, "acc")
    with pytest.raises(N.NumericsError, match="acc"):
        N.check_range(T([1 << 47]), 48, "acc")


# -- SF16 scales and dynamic quantisation ------------------------------------------------------
def test_sf16_ceil_ratio_is_normalised_and_tight(seed):
    rng = random.Random(seed)
    values = [1, 2, 126, 127, 128, (1 << 31) - 1, 1 << 31]
    values += [rng.randint(1, 1 << 40) for _ in range(300)]
    for d in (127, 7):
        m, e = N.sf16_ceil_ratio(T(values), d)
        for a, mi, ei in zip(values, m.tolist(), e.tolist(), strict=True):
            assert 1 << 15 <= mi < 1 << 16, (a, mi)
            scale = mi * 2.0**ei
            assert scale >= a / d  # no saturation from the scale itself
            assert (mi - 1) * 2.0**ei < a / d  # and the smallest such mantissa
    assert [t.tolist() for t in N.sf16_ceil_ratio(T([0]), 127)] == [[0], [0]]


def test_quantize_act_all_zero_row():
    q, m, e = N.quantize_act(torch.zeros(2, 8, dtype=torch.int64))
    assert q.abs().sum() == 0 and m.tolist() == [0, 0] and e.tolist() == [0, 0]


@pytest.mark.parametrize("big", [1, 127, 1 << 20, (1 << 31) - 1])
def test_quantize_act_extremes(big):
    v = T([[big, -big, 0, big // 2]])
    q, m, e = N.quantize_act(v)
    assert q[0, 0] == 127 and q[0, 1] == -127 and q[0, 2] == 0
    assert q.abs().max() <= 127


def test_quantize_act_error_is_half_a_step(seed):
    g = torch.Generator().manual_seed(seed)
    v = (torch.randn(16, 256, generator=g) * 3000).long()
    q, m, e = N.quantize_act(v)
    scale = N.sf16_to_float(m, e).unsqueeze(-1)
    err = (q.double() * scale - v.double()).abs()
    assert bool((err <= scale * 0.5 + 1e-3 * scale).all())
    assert q.abs().max() <= N.ACT_MAX


def test_quantize_kv_groups():
    v = torch.arange(-16, 16, dtype=torch.int64).reshape(1, 32) * 100
    q, m, e, mid = N.quantize_kv(v, 8)
    assert q.shape == v.shape and m.shape == mid.shape == (1, 4)
    assert q.abs().max() == N.KV_MAX
    # symmetric around each group's midpoint: both ends of every group reach +-7
    assert mid.tolist() == [[-1250, -450, 350, 1150]]
    assert (q.reshape(4, 8)[:, 0] == -N.KV_MAX).all() and (q.reshape(4, 8)[:, -1] == 7).all()
    back = mid.repeat_interleave(8, -1) + q * N.sf16_to_float(m, e).repeat_interleave(8, -1)
    assert (back - v).abs().max() <= N.sf16_to_float(m, e).max() / 2 + 1
    with pytest.raises(N.NumericsError, match="multiple of the group"):
        N.quantize_kv(v[:, :30], 8)


def test_align_sf16():
    m, e = T([[40000, 50000, 0]]), T([[3, 5, 0]])
    aligned, emax = N.align_sf16(m, e)
    assert emax.tolist() == [5] and aligned.tolist() == [[10000, 50000, 0]]


# -- weight scales ---------------------------------------------------------------------------
def test_encode_scales_zero_and_max():
    mant, E = N.encode_scales(torch.tensor([[0.0, 0.0], [1.0, 0.5], [3.0e-7, 1.0e-9]]))
    assert mant[0].tolist() == [0, 0] and E[0] == 0
    assert mant[1].tolist() == [32768, 16384] and E[1] == 15
    assert 1 << 15 <= mant[2, 0] <= N.SCALE_MAX
    rel = (N.decode_scales(mant, E) - torch.tensor([[0, 0], [1.0, 0.5], [3.0e-7, 1e-9]]).double())
    assert rel[2, 0].abs() / 3.0e-7 < 2.0**-15


def test_encode_scales_rounding_up_to_2_16_saturates():
    mant, E = N.encode_scales(torch.tensor([[1.0 - 2.0**-20]]))
    assert mant.item() == N.SCALE_MAX


def test_encode_scales_rejects_nan():
    with pytest.raises(N.NumericsError, match="finite"):
        N.encode_scales(torch.tensor([[float("nan")]]))


# -- data types --------------------------------------------------------------------------------
EXPECTED_GRIDS = {
    N.WDType.INT3: [-3, -2, -1, 0, 1, 2, 3],
    N.WDType.FP3: [-4, -2, -1, 0, 1, 2, 4],
    N.WDType.FP3_ER_POS: [-4, -2, -1, 0, 1, 2, 3, 4],
    N.WDType.FP3_ER_NEG: [-4, -3, -2, -1, 0, 1, 2, 4],
    N.WDType.FP3_EA_POS: [-4, -2, -1, 0, 1, 2, 4, 6],
    N.WDType.FP3_EA_NEG: [-6, -4, -2, -1, 0, 1, 2, 4],
    N.WDType.INT4: list(range(-7, 8)),
    N.WDType.FP4: [-12, -8, -6, -4, -3, -2, -1, 0, 1, 2, 3, 4, 6, 8, 12],
    N.WDType.FP4_ER_POS: [-12, -8, -6, -4, -3, -2, -1, 0, 1, 2, 3, 4, 6, 8, 10, 12],
    N.WDType.FP4_ER_NEG: [-12, -10, -8, -6, -4, -3, -2, -1, 0, 1, 2, 3, 4, 6, 8, 12],
    N.WDType.FP4_EA_POS: [-12, -8, -6, -4, -3, -2, -1, 0, 1, 2, 3, 4, 6, 8, 12, 16],
    N.WDType.FP4_EA_NEG: [-16, -12, -8, -6, -4, -3, -2, -1, 0, 1, 2, 3, 4, 6, 8, 12],
}


@pytest.mark.parametrize("dtype", list(EXPECTED_GRIDS), ids=lambda t: t.name)
def test_every_grid_value_of_every_type(dtype):
    assert list(N.grid(dtype)) == EXPECTED_GRIDS[dtype]
    table = N.code_table(dtype)
    assert len(table) == 1 << dtype.bits
    assert max(abs(v) for v in table) <= N.W_OPERAND_MAX
    # every grid value round-trips through quantisation and the decode ROM
    family = N.MIXED3_TYPES if dtype.bits == 3 else N.MIXED4_TYPES
    fmt = "mixed3" if dtype.bits == 3 else "mixed4"
    values = torch.tensor(EXPECTED_GRIDS[dtype], dtype=torch.float64)
    w = values * 0.25  # scale 0.25: max|grid| * 0.25 is the absmax
    codes, scale = N.quantize_to_grid(w.unsqueeze(0), dtype)
    assert scale.item() == 0.25
    ids = torch.full((1, 1), dtype.type_id)
    decoded = N.decode_weights(codes, ids, fmt, group=len(values))
    assert decoded[0].tolist() == EXPECTED_GRIDS[dtype]
    assert dtype in family


def test_w2_asymmetric_codes_and_zero_point():
    w = torch.tensor([[-0.3, -0.1, 0.1, 0.3], [0.0, 0.2, 0.4, 0.6], [0.0, 0.0, 0.0, 0.0]])
    codes, zero, scale = N.quantize_w2(w)
    assert codes.min() >= 0 and codes.max() <= 3 and zero.min() >= 0 and zero.max() <= 3
    assert zero[1] == 0 and scale[2] == 0
    ops = N.decode_weights(codes, None, "w2", group=4, zero_points=zero.unsqueeze(-1))
    rec = ops.double() * scale.unsqueeze(-1)
    assert (rec - w.double()).abs().max() <= scale.max() / 2 + 1e-12


def test_int8_weights_saturate_symmetric():
    assert N.decode_weights(T([[-128, 127, 5]]), None, "int8", 3).tolist() == [[-127, 127, 5]]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_pack_unpack(bits, seed):
    rng = random.Random(seed)
    codes = torch.tensor([rng.randrange(1 << bits) for _ in range(37)])
    blob = N.pack_codes(codes, bits)
    assert len(blob) == (37 * bits + 7) // 8
    assert N.unpack_codes(blob, bits, 37).tolist() == codes.tolist()
    with pytest.raises(N.NumericsError):
        N.unpack_codes(blob[:-1], bits, 37)
    with pytest.raises(N.NumericsError):
        N.pack_codes(torch.tensor([1 << bits]), bits)


def test_pack_bit_order_is_lsb_first():
    assert N.pack_codes(torch.tensor([1, 2, 3, 0]), 2) == bytes([0b00111001])


# -- sparsity ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n,m", sorted(N.SPARSITY_PATTERNS))
def test_nm_round_trip(n, m, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, 4 * m, generator=g)
    order = w.abs().reshape(3, 4, m).argsort(dim=-1, descending=True)
    keep = torch.zeros(3, 4, m, dtype=torch.bool).scatter_(-1, order[..., :n], True).reshape(3, -1)
    vals, idx = N.nm_compress(w, keep, n, m)
    assert vals.shape == (3, 4 * n) and idx.max() < m
    assert bool((idx.reshape(3, 4, n).diff(dim=-1) > 0).all())  # ascending inside a block
    assert torch.equal(N.nm_expand(vals, idx, n, m, 4 * m), torch.where(keep, w, 0.0))


def test_nm_errors():
    with pytest.raises(N.NumericsError, match="unsupported sparsity"):
        N.nm_compress(torch.zeros(1, 16), torch.ones(1, 16), 3, 16)
    with pytest.raises(N.NumericsError, match="exactly 2 of every 4"):
        N.nm_compress(torch.zeros(1, 8), torch.ones(1, 8), 2, 4)
    with pytest.raises(N.NumericsError, match="multiple of the sparse block"):
        N.nm_compress(torch.zeros(1, 10), torch.ones(1, 10), 2, 4)


# -- matrix engine -----------------------------------------------------------------------------
def test_linear_matches_float(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-127, 128, (3, 64), generator=g)
    w = torch.randint(-16, 17, (5, 64), generator=g)
    mant = torch.randint(0, 1 << 16, (5, 2), generator=g)
    acc = N.linear_acc(x, w, mant, 32)
    ref = sum((x[:, i * 32:(i + 1) * 32] @ w[:, i * 32:(i + 1) * 32].T) * mant[:, i]
              for i in range(2))
    assert torch.equal(acc, ref)


def test_linear_accumulator_overflow_is_detected():
    groups = 140_000  # 140k groups of 8 at full scale pass 2**47
    x = torch.full((1, 8 * groups), 127)
    w = torch.full((1, 8 * groups), 16)
    mant = torch.full((1, groups), N.SCALE_MAX)
    with pytest.raises(N.NumericsError, match="accumulator"):
        N.linear_acc(x, w, mant, 8)


def test_linear_out_scales():
    acc = T([[1000, -1000]])
    # x scale 0.5 (m = 2**15, e = -16), rows E = 0 and 1, f_in = 0, f_out = 4
    out = N.linear_out(acc, T([1 << 15]), T([-16]), T([0, 1]), 0, 4)
    assert out.tolist() == [[1000 * 0.5 * 16, -1000 * 0.5 * 16 / 2]]


# -- special functions -------------------------------------------------------------------------
def test_exp2_table_ends():
    assert N.EXP2_LUT[0] == 1 << 16 and N.EXP2_LUT[-1] == 1 << 15 and len(N.EXP2_LUT) == 257
    assert N.exp2_neg(T([0, 1 << 16, 1 << 40])).tolist() == [1 << 16, 1 << 15, 0]
    with pytest.raises(N.NumericsError):
        N.exp2_neg(T([-1]))


def test_sigmoid_table_ends():
    assert N.SIGMOID_LUT[0] == 0 and N.SIGMOID_LUT[-1] == 1 << 16
    assert N.SIGMOID_LUT[len(N.SIGMOID_LUT) // 2] == 1 << 15


def test_softmax_close_to_float_and_masked(seed):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(4, 50, generator=g).double() * 4
    mask = N.lambda_mask(T([49, 30, 10, 0]), 50, sink=2, window=8)
    probs = N.softmax(N.encode_fixed(s * math.log2(math.e), N.SCORE_FRAC), mask)
    ref = torch.softmax(s.masked_fill(~mask, -math.inf), -1)
    assert (probs.double() / (1 << N.PROB_FRAC) - ref).abs().max() < 2e-4
    assert bool((probs[~mask] == 0).all())
    assert probs.max() <= 1 << N.PROB_FRAC


def test_softmax_single_key_is_one():
    assert N.softmax(T([[123456]]), torch.tensor([[True]])).item() == 1 << N.PROB_FRAC


def test_lambda_mask_shape():
    mask = N.lambda_mask(T([9]), 12, sink=2, window=3)
    assert mask[0].nonzero().flatten().tolist() == [0, 1, 7, 8, 9]
    assert N.lambda_mask(T([9]), 12, 0, 0)[0].sum() == 10


def test_silu_close_to_float_and_saturating():
    x = torch.linspace(-30, 30, 2001, dtype=torch.float64)
    out = N.silu(N.encode_fixed(x, 12), 12, 12).double() / 4096
    assert (out - torch.nn.functional.silu(x)).abs().max() < 1e-3
    big = N.silu(T([(1 << 31) - 1]), 0, 0)
    assert big.item() == (1 << 31) - 1


def test_gelu_close_to_both_gelu_forms_and_saturating():
    x = torch.linspace(-30, 30, 6001, dtype=torch.float64)
    out = N.gelu(N.encode_fixed(x, 12), 12, 12).double() / 4096
    assert (out - torch.nn.functional.gelu(x, approximate="tanh")).abs().max() < 5e-4
    assert (out - torch.nn.functional.gelu(x)).abs().max() < 1e-3
    top, bottom = (1 << 31) - 1, -(1 << 31)
    assert N.gelu(T([top, bottom]), 0, 0).tolist() == [top, 0]  # x beyond the clamp: x, 0
    assert N.gelu(T([0]), 12, 12).item() == 0
    # the clamp's edges in Q.13: the cubic stays within the argument's range there
    edge = N.GELU_CLAMP << N.SIGMOID_IN_FRAC
    near = N.gelu(T([edge - 1, -edge]), N.SIGMOID_IN_FRAC, N.SIGMOID_IN_FRAC)
    assert near.tolist() == [edge - 1, 0]


def test_rmsnorm_close_to_float(seed):
    g = torch.Generator().manual_seed(seed)
    for scale, f_in in ((3.0, 12), (1e-3, 20), (200.0, 8)):
        x = torch.randn(3, 172, generator=g).double() * scale
        gamma = torch.rand(172, generator=g).double() + 0.5
        out = N.rmsnorm(N.encode_fixed(x, f_in), N.encode_fixed(gamma, 14, 16), 14,
                        N.rmsnorm_eps(1e-5, 172, f_in), 12).double() / 4096
        ref = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * gamma
        assert (out - ref).abs().max() < 2e-3, scale


def test_rmsnorm_zero_row_is_zero():
    out = N.rmsnorm(torch.zeros(1, 16, dtype=torch.int64), torch.full((16,), 1 << 14), 14,
                    N.rmsnorm_eps(1e-5, 16, 10), 12)
    assert out.abs().sum() == 0


def test_rope_table_and_rotation():
    cos, sin = N.rope_table(8, 4)
    assert cos[0].tolist() == [1 << 14, 1 << 14] and sin[0].tolist() == [0, 0]
    x = T([1000, 0, 0, 1000])
    y = N.rope(x, cos[1], sin[1])
    ref = [1000 * math.cos(1), 1000 * math.sin(1), -1000 * math.sin(0.01), 1000 * math.cos(0.01)]
    assert all(abs(a - b) <= 1 for a, b in zip(y.tolist(), ref, strict=True))


def test_mul_and_add_saturate():
    assert N.add(T([(1 << 31) - 10]), T([100])).item() == (1 << 31) - 1
    assert N.add(T([1]), T([8]), b_shift=2).item() == 3
    assert N.mul(T([1 << 30]), T([1 << 30]), 0).item() == (1 << 31) - 1  # operands sat to 24 bits
    assert N.mul(T([3]), T([-5]), 1).item() == -8  # -7.5 rounds away from zero


def test_encode_fixed_rejects_nan():
    with pytest.raises(N.NumericsError, match="NaN"):
        N.encode_fixed(torch.tensor([float("nan")]), 8)


def test_rmsnorm_epsilon_must_fit_48_bits():
    v = torch.tensor([[1, -2, 3, 4]])
    gamma = torch.ones(4, dtype=torch.int64)
    N.rmsnorm(v, gamma, 0, (1 << 47) - 1, 0)  # the largest epsilon term the SFU holds
    with pytest.raises(N.NumericsError, match="RMSNorm epsilon"):
        N.rmsnorm(v, gamma, 0, 1 << 47, 0)
    with pytest.raises(N.NumericsError, match="RMSNorm epsilon"):
        N.rmsnorm_eps(1.0, 1 << 20, 16)


def _int64_paths(monkeypatch) -> None:
    """Every product in int64, as before the float64 path existed."""
    monkeypatch.setattr(N, "FLOAT_MIN_MACS", 1 << 62)


@pytest.mark.parametrize("extreme", [False, True])
def test_float64_products_equal_int64(monkeypatch, seed, extreme):
    """linear_acc and attention_pv take float64 BLAS for large products where every partial
    sum is an integer below 2**53: the same integers as int64, at the operands' extremes too
    (INT8 x INT8, 16-bit mantissas, K = 4096, a 48-bit accumulator near its limit)."""
    g = torch.Generator().manual_seed(seed)
    t, k, n, group = 64, 4096, 96, 128
    if extreme:
        x = torch.full((t, k), -127, dtype=torch.int64)
        w = torch.full((n, k), -127, dtype=torch.int64)
        mant = torch.full((n, k // group), 3, dtype=torch.int64)  # |acc| = 3 * 4096 * 127**2
    else:
        x = torch.randint(-127, 128, (t, k), generator=g)
        w = torch.randint(-127, 128, (n, k), generator=g)
        mant = torch.randint(0, 1 << 16, (n, k // group), generator=g)
    assert t * n * k >= N.FLOAT_MIN_MACS, "the float64 path must be the one under test"
    fast = N.linear_acc(x, w, mant, group)
    keys, d = 2048, 128
    probs = torch.randint(0, 1 << 15, (64, keys), generator=g)
    mask = torch.rand((64, keys), generator=g) < 0.9
    v = torch.randint(-7, 8, (keys, d), generator=g)
    v_m = torch.randint(1, 1 << 16, (keys,), generator=g)
    v_e = torch.randint(-8, 8, (keys,), generator=g)
    v_mid = torch.randint(-(1 << 20), 1 << 20, (keys,), generator=g)
    pv = N.attention_pv(probs, mask, v, v_m, v_e, v_mid, 10, 10)
    _int64_paths(monkeypatch)
    assert torch.equal(fast, N.linear_acc(x, w, mant, group)), f"seed {seed}"
    assert torch.equal(pv, N.attention_pv(probs, mask, v, v_m, v_e, v_mid, 10, 10)), f"seed {seed}"


def test_float64_path_still_checks_the_accumulator(monkeypatch):
    """An accumulator past 48 bits raises on the float64 path as on int64."""
    k, group = 1 << 18, 1 << 18
    x = torch.full((8, k), 127, dtype=torch.int64)
    w = torch.full((8, k), 127, dtype=torch.int64)
    mant = torch.full((8, 1), 65535, dtype=torch.int64)  # 127**2 * 2**18 * 65535 > 2**47
    assert 8 * 8 * k >= N.FLOAT_MIN_MACS
    with pytest.raises(N.NumericsError):
        N.linear_acc(x, w, mant, group)
