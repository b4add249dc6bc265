"""Unit tests of every quantization pass: grids, clipping search, GPTQ, mixed types, N:M."""

import pytest
import torch

from llmacc import numerics as N
from quant import schemes
from quant.sparsity import nm_mask, prune_mask
from quant.weight_quant import Grid, fit_group, quantize_matrix

T = N.WDType


def _weighted_error(w, q, h):
    return float(((w - q) ** 2 * h).sum())


def _tables():
    """Every grid the search rounds to: the mixed types (unsorted, a repeated zero), INT8 and
    W2 under each zero point."""
    yield from (torch.tensor(N.code_table(t), dtype=torch.float64) for t in N.MIXED4_TYPES)
    yield from (torch.tensor(N.code_table(t), dtype=torch.float64) for t in N.MIXED3_TYPES)
    yield torch.arange(-N.ACT_MAX, N.ACT_MAX + 1, dtype=torch.float64)
    yield from (torch.arange(4, dtype=torch.float64) - z for z in range(4))


def test_grid_search_equals_the_argmin_of_distances(seed):
    """The binary search names the entry argmin(|x - v|) names, ties included (exact
    midpoints, table values, a repeated zero), for one table and for a table per row."""
    g = torch.Generator().manual_seed(seed)
    tables = list(_tables())
    for table in tables:
        mids = (table.sort().values[1:] + table.sort().values[:-1]) / 2
        x = torch.cat([torch.randn(300, generator=g, dtype=torch.float64) * table.abs().max(),
                       mids, table, mids + 1e-12, mids - 1e-12]).reshape(1, -1)
        want = torch.argmin((x.unsqueeze(-1) - table).abs(), dim=-1)
        assert torch.equal(Grid.of(table.reshape(1, -1)).index(x), want), table.tolist()
    per_row = torch.stack([t for t in tables if len(t) == 8])
    x = torch.randn(len(per_row), 50, generator=g, dtype=torch.float64) * 4
    x[:, :10] = torch.round(x[:, :10] * 2) / 2  # on the grids and their midpoints
    want = torch.argmin((x.unsqueeze(-1) - per_row.unsqueeze(1)).abs(), dim=-1)
    assert torch.equal(Grid.of(per_row).index(x), want)


def test_mixed_search_picks_the_type_a_group_was_drawn_from(seed):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for dtype in N.MIXED4_TYPES:
        table = torch.tensor(N.code_table(dtype), dtype=torch.float64)
        # use every value once (so the absmax and the special value are present), shuffled
        vals = table[torch.randperm(len(table), generator=g)]
        rows.append(torch.cat([vals, vals]) * 0.01)
    w = torch.stack(rows)
    p = fit_group(w, N.MIXED4_TYPES)
    val, _ = p.round(w)
    assert torch.allclose(val, w, atol=1e-12)  # every row representable exactly
    # the FP types with a special value are not confused with plain FP4 / INT4
    assert p.dtype.tolist()[2:] == [int(t) for t in N.MIXED4_TYPES[2:]]


def test_clipping_search_lowers_error_on_heavy_tails(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(64, 32, generator=g, dtype=torch.float64)
    w[:, 0] *= 8  # one outlier per row
    h = torch.ones(32, dtype=torch.float64)
    for dtypes, gain in (((T.W2,), 0.9), ((T.INT3,), 0.9), ((T.INT4,), 1.0)):
        plain = fit_group(w, dtypes, clip=False)
        searched = fit_group(w, dtypes, clip=True)
        e_plain = _weighted_error(w, plain.round(w)[0], h)
        e_search = _weighted_error(w, searched.round(w)[0], h)
        assert e_search < gain * e_plain, dtypes


def test_w2_codes_and_zero_points_stay_in_range(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, 100, generator=g) + 0.5  # skewed, K not a multiple of the group
    q = quantize_matrix(w, "w2", (T.W2,), 32, gptq=False)
    assert q.codes.shape == (16, 128) and q.padded_in == 128
    assert int(q.codes.min()) >= 0 and int(q.codes.max()) <= 3
    assert int(q.zero_points.min()) >= 0 and int(q.zero_points.max()) <= 3
    assert bool((q.operands()[:, 100:] == 0).all())  # padding decodes to zero
    assert q.dequant().shape == w.shape
    rel = float((q.dequant() - w).norm() / w.norm())
    assert rel < 0.5


def test_gptq_lowers_output_error_against_rtn(seed):
    g = torch.Generator().manual_seed(seed)
    k = 64
    mix = torch.randn(k, k, generator=g) / k ** 0.5 + torch.eye(k)
    x = torch.randn(512, k, generator=g) @ mix  # correlated inputs
    w = torch.randn(48, k, generator=g)
    hessian = x.T.double() @ x.double()
    for fmt, dtypes in (("w2", (T.W2,)), ("mixed3", N.MIXED3_TYPES)):
        rtn = quantize_matrix(w, fmt, dtypes, 16, hessian=hessian, gptq=False)
        gptq = quantize_matrix(w, fmt, dtypes, 16, hessian=hessian, gptq=True)
        e_rtn = float((x @ (rtn.dequant() - w).T).norm())
        e_gptq = float((x @ (gptq.dequant() - w).T).norm())
        assert e_gptq < 0.95 * e_rtn, fmt


def test_mixed_type_ids_decode_through_the_hardware_lut(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 64, generator=g)
    q = quantize_matrix(w, "mixed3", N.MIXED3_TYPES, 16, gptq=False)
    assert q.dtype_ids.shape == (8, 4) and int(q.dtype_ids.max()) < len(N.MIXED3_TYPES)
    assert int(q.operands().abs().max()) <= N.W_OPERAND_MAX
    back = q.operands().double() * q.scales().repeat_interleave(16, -1)
    assert torch.allclose(back.float(), q.dequant())


def test_quantize_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        quantize_matrix(torch.tensor([[float("nan")] * 8]), "w2", (T.W2,), 8)
    with pytest.raises(ValueError, match="power of two"):
        quantize_matrix(torch.ones(2, 24), "w2", (T.W2,), 12)


@pytest.mark.parametrize("n,m", [(2, 4), (2, 16), (4, 16), (8, 16), (16, 16)])
def test_nm_masks_keep_exactly_n_of_m(seed, n, m):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 64, generator=g)
    keep = nm_mask(w.abs(), n, m)
    assert bool((keep.reshape(6, -1, m).sum(-1) == n).all())
    # magnitude: every kept weight is at least as large as every pruned one in its block
    blocks = w.abs().reshape(6, -1, m)
    kb = keep.reshape(6, -1, m)
    kept_min = torch.where(kb, blocks, torch.inf).amin(-1)
    pruned_max = torch.where(kb, -torch.inf, blocks).amax(-1)
    assert bool((kept_min >= pruned_max).all())


def test_wanda_keeps_small_weights_on_loud_channels():
    w = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    norm = torch.tensor([100.0, 1.0, 1.0, 1.0])
    assert prune_mask(w, 2, 4, "magnitude").tolist() == [[False, False, True, True]]
    assert prune_mask(w, 2, 4, "wanda", norm).tolist() == [[True, False, False, True]]
    with pytest.raises(ValueError, match="needs calibration"):
        prune_mask(w, 2, 4, "wanda")
    with pytest.raises(ValueError, match="unsupported sparsity"):
        nm_mask(w, 3, 4)


def test_sparse_quantization_zeroes_pruned_weights_and_compresses(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 40, generator=g)
    wp = torch.nn.functional.pad(w, (0, 24))
    keep = prune_mask(wp, 2, 4, "magnitude")
    for fmt, dtypes in (("w2", (T.W2,)), ("mixed4", N.MIXED4_TYPES)):
        q = quantize_matrix(w, fmt, dtypes, 32, keep=keep, sparsity=(2, 4), gptq=False)
        ops = q.operands()
        assert bool((ops[~keep] == 0).all())
        vals, idx = N.nm_compress(ops, keep, 2, 4)
        assert torch.equal(N.nm_expand(vals, idx, 2, 4, 64), ops)
        # pruned slots store the code that decodes to zero, also for W2's zero point
        raw = N.decode_weights(q.codes, q.dtype_ids, fmt, 32, q.zero_points)
        assert bool((raw[~keep] == 0).all())


def test_scheme_names_and_modifiers():
    s = schemes.parse("w4a8+2:4+lambda4:64")
    assert s.sparsity == (2, 4) and (s.sink, s.window) == (4, 64) and s.kv_bits == 8
    assert schemes.parse("w2a8kv4", group=64).group == 64
    g = schemes.parse("w2a8kv4+lambda4:64+g128")
    assert (g.group, g.window, g.name) == (128, 64, "w2a8kv4+lambda4:64+g128")
    assert schemes.parse("w2a8kv4+g128", group=128).group == 128
    assert schemes.names_group("w4a8+2:4+g64") and not schemes.names_group("w4a8+2:4")
    assert set(schemes.PRESETS) >= {"w2a8kv4", "w3-mixed-a8kv4", "w4-mixed-a8kv4", "w4a8",
                                    "w8a8", "float"}
    for bad, msg in (("w5", "unknown scheme"), ("w4a8+3:4", "unsupported sparsity"),
                     ("w4a8+foo", "unknown modifier"), ("float+2:4", "needs a quantized"),
                     # used to be accepted: a no-op window, and the last of two sparsities won
                     ("w4a8+lambda0:0", "window of 0 keys, which is full attention"),
                     ("w4a8+2:4+4:16", r"sparsity given twice \(\+2:4 and \+4:16\)"),
                     ("w4a8+lambda4:64+lambda1:8", "Lambda attention given twice"),
                     # a group the descriptor cannot name (48 was read as 32)
                     ("w2a8kv4+g48", "group 48 must be a power of two in 8..128"),
                     ("w2a8kv4+g256", "group 256 must be"), ("w2a8kv4+g4", "group 4 must be"),
                     ("w2a8kv4+g64+g128", r"group given twice \(\+g64 and \+g128\)")):
        with pytest.raises(ValueError, match=msg):
            schemes.parse(bad)
    with pytest.raises(ValueError, match="names group 128, --group says 32"):
        schemes.parse("w2a8kv4+g128", group=32)
    with pytest.raises(ValueError, match="group 48 must be"):
        schemes.parse("w2a8kv4", group=48)


def test_progress_counts_weights_from_the_start_of_quantization(seed):
    """The quantize ETA started at 2,585 s for a 399 s step: it counted matrices (wk, wv are
    small under GQA) and its clock included calibration. Progress now counts weights from
    a done=0 call at the loop's start."""
    from quant.quantize import quantize
    from tests.helpers.models import tiny_checkpoint

    ckpt = tiny_checkpoint(seed)
    calls = []
    quantize(ckpt, schemes.parse("w4a8"), [list(range(1, 17))],
             lambda done, total, where: calls.append((done, total)))
    total = sum(ckpt.layer(i, k).numel() for i in range(ckpt.config.n_layers)
                for k in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"))
    assert calls[0] == (0, total) and calls[-1] == (total, total), (calls[:2], calls[-1])
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_device_names_are_checked_before_any_work():
    from quant.quantize import compute_device

    assert compute_device("cpu").type == "cpu"
    for bad, msg in (("bogus", "not a device"), ("meta", "runs on cpu or cuda")):
        with pytest.raises(ValueError, match=msg):
            compute_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            compute_device("cuda")


def _loud_checkpoint(seed):
    """A tiny model whose norms make three loud channels (LLaMA's activation outliers)."""
    from tests.helpers.models import tiny_checkpoint

    ckpt = tiny_checkpoint(seed)
    for i in range(ckpt.config.n_layers):
        for norm in ("attention_norm", "ffn_norm"):
            ckpt.weights[f"layers.{i}.{norm}"][[1, 7, 20]] *= 40.0
    return ckpt


def test_smoothing_keeps_the_float_model_and_helps_a8(seed):
    """SmoothQuant moves each norm's outlier channels into the layers it feeds: the float
    model is the same function, and per-token INT8 inputs lose less of those layers."""
    from quant.model import Transformer, fake_quant_symmetric
    from quant.quantize import calibrate
    from quant.smooth import NORM_FEEDS, smooth_checkpoint
    from tests.helpers.models import random_sequences

    ckpt = _loud_checkpoint(seed)
    calib = random_sequences(seed, 4, 24, ckpt.config.vocab_size)
    stats = calibrate(Transformer(ckpt), calib)
    absmax = {n: st.absmax for n, st in stats.inputs.items()}
    smoothed = smooth_checkpoint(ckpt, absmax, 0.5)
    assert set(NORM_FEEDS) == {"attention_norm", "ffn_norm"}
    tokens = torch.tensor(random_sequences(seed + 1, 1, 48, ckpt.config.vocab_size)[0])
    ref = Transformer(ckpt).forward(tokens)
    diff = float((Transformer(smoothed).forward(tokens) - ref).abs().max() / ref.abs().max())
    assert diff < 1e-3, (diff, seed)  # float32 rounding (a wrong fold moves logits by ~1)
    # the inputs of wq are flatter across channels: max over median channel peak
    after = calibrate(Transformer(smoothed), calib).inputs["layers.0.wq"].absmax
    spread = {n: float(a.max() / a.median()) for n, a in (("before", absmax["layers.0.wq"]),
                                                          ("after", after))}
    assert spread["after"] < spread["before"] / 3, (spread, seed)
    # each layer the norms feed loses less to per-token INT8 inputs (here the A8 error of
    # the whole model is the w2 inputs', which no norm feeds)
    inputs = {}
    for tag, c in (("plain", ckpt), ("smoothed", smoothed)):
        Transformer(c).forward(tokens, observer=lambda n, x, t=tag: inputs.setdefault((t, n), x))
    for name in (f"layers.{i}.{n}" for i in range(2) for feeds in NORM_FEEDS.values()
                 for n in feeds):
        err = {}
        for tag, c in (("plain", ckpt), ("smoothed", smoothed)):
            x, w = inputs[tag, name], c.weights[name]
            err[tag] = float((fake_quant_symmetric(x, 8) @ w.T - x @ w.T).pow(2).mean())
        assert err["smoothed"] < err["plain"] / 3, (name, err, seed)
    with pytest.raises(ValueError, match="must lie in"):
        smooth_checkpoint(ckpt, absmax, 1.0)


def test_w8a8_is_smoothed_and_smoothing_needs_calibration(seed):
    from quant.quantize import quantize

    assert schemes.parse("w8a8").smooth == 0.5 and schemes.parse("w4a8").smooth == 0.0
    with pytest.raises(ValueError, match="smoothing needs calibration text"):
        quantize(_loud_checkpoint(seed), schemes.parse("w8a8"), None)
