"""The buffer records of ``llmacc/layout.py``: the byte images the docstring documents, the
field checks, and round trips through the declared layouts."""

import random

import numpy as np
import pytest
import torch

from llmacc import layout as L
from llmacc import numerics as N
from llmacc.isa import Sparsity, WeightFormat
from tests.helpers.weights import random_tile

W = 16  #: sim-small's word


def test_quantized_row_header_is_m_then_e_little_endian():
    row = L.encode_qrows(torch.tensor([[1, -1]]), torch.tensor([0x1234]), torch.tensor([-2]), W)
    assert row[0, :4].tolist() == [0x34, 0x12, 0xFE, 0xFF]
    assert row[0, W:W + 2].tolist() == [1, 0xFF] and row.shape == (1, 2 * W)


def test_kv_block_is_payloads_then_packed_m_e_mid():
    """Three rows from slot 1 on 16-byte words (two headers a word): three payload words,
    then the headers in slots 1, 2, 3 of two header words, slot 0 left zero."""
    codes = torch.tensor([[1, -1, 0, 0], [0, 0, 0, 0], [7, 0, 0, -7]])
    block = L.encode_kv(codes, torch.tensor([7, 8, 9]), torch.tensor([-1, 0, 1]),
                        torch.tensor([-3, 0, 3]), 4, W, first=1)
    assert L.kv_slots(W) == 2 and L.kv_block(3, 4, 4, W) == 3 + 2 and block.size == 5 * W
    assert block[:2].tolist() == [0xF1, 0] and block[2 * W:2 * W + 2].tolist() == [7, 0x90]
    heads = block[3 * W:]
    assert heads[:8].tolist() == [0] * 8
    assert heads[8:16].tolist() == [7, 0, 0xFF, 0xFF, 0xFD, 0xFF, 0xFF, 0xFF]
    assert heads[24:32].tolist() == [9, 0, 1, 0, 3, 0, 0, 0]
    first_slot = L.encode_kv(codes, torch.tensor([7, 8, 9]), torch.tensor([-1, 0, 1]),
                             torch.tensor([-3, 0, 3]), 4, W)
    got = L.decode_kv(first_slot, 3, 4, 4, W)
    assert [x.tolist() for x in got] == [codes.tolist(), [7, 8, 9], [-1, 0, 1], [-3, 0, 3]]


def test_descriptor_bytes_and_refusals():
    desc = L.Descriptor(WeightFormat.MIXED3, Sparsity.N2M4, 5, p0=-1, p1=3)
    raw = desc.encode(W)
    assert raw[0, :8].tolist() == [1, 4, 5, 0, 0xFF, 3, 0, 0] and raw.shape == (1, W)
    assert L.Descriptor.decode(raw) == desc
    for byte, value in ((2, L.GROUP_LOG2_MAX + 1), (3, 1), (7, 1), (0, 9)):
        bad = raw.copy()
        bad[0, byte] = value
        with pytest.raises(L.LayoutError, match="weight descriptor"):
            L.Descriptor.decode(bad)


def test_row_record_offsets_follow_the_layout():
    """shift, then G mantissas, then G aux bytes (none for INT8)."""
    assert L.row_mant_bit(0) == 16 and L.row_mant_bit(3) == 16 + 3 * 16
    assert L.row_aux_bit(4, 1) == 16 + 4 * 16 + 8
    assert L.row_record_bytes(4, WeightFormat.W2) == 2 + 8 + 4
    assert L.row_record_bytes(4, WeightFormat.INT8) == 2 + 8


def test_record_fields_are_range_checked():
    with pytest.raises(L.LayoutError, match="QRowHeader.m"):
        L.encode_record(L.QRowHeader, 1, m=1 << 16)
    with pytest.raises(L.LayoutError, match="unknown fields"):
        L.encode_record(L.KvHeader, 1, scale=1)


def test_records_round_trip(seed):
    rng = np.random.default_rng(seed)
    values = {"m": rng.integers(0, 1 << 16, 5), "e": rng.integers(-(1 << 15), 1 << 15, 5),
              "mid": rng.integers(-(1 << 31), 1 << 31, 5)}
    got = L.decode_record(L.KvHeader, L.encode_record(L.KvHeader, 5, **values))
    assert all((got[k] == v).all() for k, v in values.items()), f"seed {seed}"


@pytest.mark.parametrize("n, w_bits, skew", [(16, 128, 0), (64, 512, 0), (32, 512, 0),
                                             (16, 128, 4), (64, 512, 16), (16, 512, 16)])
def test_stream_round_trip(n, w_bits, skew, seed):
    """Every streamed format and sparsity, plain and pre-skewed: the lanes' reading of a
    stream gives back the rows' kept codes, indices, scales, aux bytes and shifts."""
    rng = random.Random(seed)
    for (fmt, sp), _ in L.stream_geometries(n, w_bits).items():
        nm = L.SPARSITY_NM[sp]
        keep_n, block = nm or (1, 1)
        group = rng.choice([g for g in (16, 32, 128) if g >= block and n // (
            g * keep_n // block) <= L.stream_scale_entries(w_bits)])
        k = group * rng.randint(1, 4) * (8 if nm == (2, 16) else 1)
        geom = L.StreamGeometry(L.Descriptor.of(fmt, nm, group), k, n, w_bits, skew)
        lanes, passes = rng.randint(1, 3), rng.randint(1, 3)
        codes, keep, aux, mant, shift, _ = random_tile(rng, fmt, nm, group, k, lanes * passes)
        stream = L.encode_weight_stream(geom, lanes, codes, keep, mant, shift, aux)
        assert len(stream) == L.stream_words(geom, lanes, passes), (fmt, sp, seed)
        got = L.decode_weight_stream(geom, lanes, passes, stream)
        kept = codes if nm is None else N.nm_compress(codes, keep, *nm)[0]
        assert np.array_equal(got["codes"], kept.numpy()), (fmt, sp, seed)
        if nm:
            assert np.array_equal(got["idx"], N.nm_compress(codes, keep, *nm)[1].numpy())
        assert np.array_equal(got["mant"], mant.numpy()), (fmt, sp, seed)
        if fmt is not WeightFormat.INT8:
            assert np.array_equal(got["aux"], aux.numpy()), (fmt, sp, seed)
        assert np.array_equal(got["shift"], shift.numpy()), (fmt, sp, seed)


@pytest.mark.parametrize("n, w_bits, skew", [(16, 128, 0), (64, 512, 0), (64, 512, 16)])
def test_tile_streams_hold_what_the_records_hold(n, w_bits, skew, seed):
    """A tile spread over the channels' streams decodes to the operands, scales and shifts
    of its WGT and META records, every stream as long as ``stream_words`` says."""
    rng = random.Random(seed)
    for (fmt, sp), _ in L.stream_geometries(n, w_bits).items():
        nm = L.SPARSITY_NM[sp]
        keep_n, block = nm or (1, 1)
        group = rng.choice([g for g in (16, 32, 128) if g >= block and n // (
            g * keep_n // block) <= L.stream_scale_entries(w_bits) and g * keep_n // block >= 8])
        k = group * rng.randint(1, 3) * (8 if nm == (2, 16) else 1)
        desc = L.Descriptor.of(fmt, nm, group)
        geom = L.StreamGeometry(desc, k, n, w_bits, skew)
        channels, lanes = rng.randint(1, 3), rng.randint(1, 3)
        rows = rng.randint(1, 2 * channels * lanes + 1)
        codes, keep, aux, mant, shift, _ = random_tile(rng, fmt, nm, group, k, rows)
        streams = L.encode_tile_streams(geom, channels, lanes, codes, keep, mant, shift, aux)
        passes = L.stream_passes(rows, channels, lanes)
        assert [len(s) for s in streams] == [L.stream_words(geom, lanes, passes)] * channels, \
            (fmt, sp, seed)
        got = L.decode_tile_streams(geom, channels, lanes, rows, streams)
        want = L.decode_weight_rows(desc, *L.encode_weight_rows(
            desc, codes, keep, mant, shift, aux, w_bits // 8), k)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b), (fmt, sp, channels, lanes, rows, seed)


def test_a_pre_skewed_stream_delays_each_element_by_its_place_in_the_cascade():
    """W2 dense on 16-element beats, 4 to a 128-bit word, skew 4: the first word holds beats
    0-3, where element ``e`` carries row beat ``t - e % 4`` (zero before the first); three
    tail beats follow the last row in a word of their own."""
    desc = L.Descriptor.of(WeightFormat.W2, None, 16)
    geom = L.StreamGeometry(desc, 64, 16, 128, skew=4)
    assert (geom.beats, geom.tail, geom.tail_words) == (4, 3, 1)
    codes = torch.arange(64).remainder(4).reshape(1, 64) - 2  # beat b, element e: e % 4 - 2
    codes[0, 16:] = torch.arange(48) // 16  # beats 1, 2, 3: their beat number
    stream = L.encode_weight_stream(geom, 1, codes, None, torch.ones(1, 4, dtype=torch.int64),
                                    torch.zeros(1, dtype=torch.int64),
                                    torch.zeros(1, 4, dtype=torch.int64))
    first = stream[0]  # the first request: WEIGHTS
    planes = np.unpackbits(first, bitorder="little").reshape(4, 2, 16)  # beat, plane, element
    stored = (planes[:, 0] + 2 * planes[:, 1]).astype(np.int64)
    plain = L.encode_weight_stream(L.StreamGeometry(desc, 64, 16, 128), 1, codes, None,
                                   torch.ones(1, 4, dtype=torch.int64),
                                   torch.zeros(1, dtype=torch.int64),
                                   torch.zeros(1, 4, dtype=torch.int64))[0]
    row = np.unpackbits(plain, bitorder="little").reshape(4, 2, 16)
    row = (row[:, 0] + 2 * row[:, 1]).astype(np.int64)
    for t in range(4):
        for e in range(16):
            want = row[t - e % 4, e] if t >= e % 4 else 0
            assert stored[t, e] == want, (t, e)


def test_stream_rows_fill_a_pass_channel_by_channel():
    """With one collector way a pass's rows go channel by channel."""
    assert [L.stream_row(r, 2, 3, 1) for r in (0, 2, 3, 5, 6, 13)] == [
        (0, 0, 0), (0, 0, 2), (0, 1, 0), (0, 1, 2), (1, 0, 0), (2, 0, 1)]
    assert L.stream_passes(13, 2, 3) == 3 and L.stream_passes(12, 2, 3) == 2


@pytest.mark.parametrize("channels, lanes, word_bits", [(2, 3, 64), (4, 2, 128), (32, 3, 512),
                                                        (2, 4, 512), (8, 1, 128)])
def test_collector_transfers_take_consecutive_rows(channels, lanes, word_bits):
    """Engine lane ``e`` (channel-major) is in way ``e // per_way``; the ways' lanes ``j``
    (one transfer) compute consecutive rows, and stream_row inverts pass_row."""
    ways = L.collector_ways(channels, word_bits)
    per_pass, per_way = channels * lanes, channels * lanes // ways
    assert per_way % lanes == 0  # a way holds whole channels
    for j in range(per_way):
        rows = [L.pass_row(way * per_way + j, per_pass, ways) for way in range(ways)]
        assert rows == list(range(rows[0], rows[0] + ways)) and rows[0] % ways == 0
    for e in range(per_pass):
        row = 5 * per_pass + L.pass_row(e, per_pass, ways)
        assert L.stream_row(row, channels, lanes, ways) == (5, e // lanes, e % lanes)


def test_stream_refuses_what_a_word_cannot_hold():
    with pytest.raises(L.LayoutError, match="12 planes of 64 bits do not fit a 512-bit word"):
        L.StreamGeometry(L.Descriptor.of(WeightFormat.INT8, (8, 16), 128), 4096, 64, 512)
