"""Byte layouts of everything the accelerator keeps in buffers and external memory, declared once.

The compiler writes these records, the emulator (and the RTL) read them. Buffers are addressed
in words of ``W = AccelConfig.axi_data_bytes`` bytes; every record starts on a word and is
padded with zero bytes to whole words. All multi-byte fields are little-endian.

* **wide row** (INT32): ``length`` int32, ``wide_pitch(length)`` words.
* **quantized row** (QUANT8 output, matrix input): header ``m: u16, e: i16`` (the SF16 scale),
  padded to a word, then ``length`` int8 codes.
* **KV row** (KVQUANT output, ATTN input): header ``m: u16, e: i16, mid: i32``, padded to a
  word, then ``head_dim`` codes of 4 bits (two's complement nibbles, low nibble first) or 8 bits.
* **weight tile**: ``n`` rows in WGT, each the kept codes at ``bits`` each, then (N:M sparse)
  the kept codes' in-block indices at ``log2(M)`` bits each, bit-packed LSB-first. In META: a
  descriptor ``wfmt: u8, sparsity: u8, group_log2: u8, 0: u8, p0: i8, p1: i8, 0: u16`` then
  ``n`` row records ``shift: i16, mant: u16 x G, aux: u8 x G`` (aux: W2 zero-point or mixed
  type id; absent for INT8). ``shift`` is the row's scale exponent plus ``F_in - F_out``.
* **gamma record** (RMSNORM, TABLE): ``eps: i64``, padded, then ``gamma: i16 x length``.
* **RoPE row** (TABLE, one per position): ``cos: i16 x D/2, sin: i16 x D/2``.
* **embedding record** (EMBED input): ``E: i16``, padded, ``mant: u16 x G``, padded,
  ``codes: i8 x dim``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmacc import numerics as N
from llmacc.isa import Sparsity, WeightFormat

Tensor = torch.Tensor

FORMAT_BITS = {WeightFormat.W2: 2, WeightFormat.MIXED3: 3, WeightFormat.MIXED4: 4,
               WeightFormat.INT8: 8}
FORMAT_NAMES = {WeightFormat.W2: "w2", WeightFormat.MIXED3: "mixed3",
                WeightFormat.MIXED4: "mixed4", WeightFormat.INT8: "int8"}
FORMAT_OF = {name: fmt for fmt, name in FORMAT_NAMES.items()}  #: QLinear.fmt -> WeightFormat
SPARSITY_NM = {Sparsity.DENSE: None, Sparsity.N2M16: (2, 16), Sparsity.N4M16: (4, 16),
               Sparsity.N8M16: (8, 16), Sparsity.N2M4: (2, 4)}


class LayoutError(ValueError):
    """A record that cannot be encoded or a buffer that does not decode."""


def words(nbytes: int, w: int) -> int:
    """Whole words for ``nbytes`` bytes."""
    return -(-nbytes // w)


def wide_pitch(length: int, w: int) -> int:
    return words(4 * length, w)


def qrow_header(w: int) -> int:
    return words(4, w)


def qrow_pitch(length: int, w: int) -> int:
    return qrow_header(w) + words(length, w)


def kv_header(w: int) -> int:
    return words(8, w)


def kv_pitch(head_dim: int, bits: int, w: int) -> int:
    return kv_header(w) + words((head_dim * bits + 7) // 8, w)


def gamma_pitch(length: int, w: int) -> int:
    return words(8, w) + words(2 * length, w)


def rope_pitch(head_dim: int, w: int) -> int:
    return words(2 * head_dim, w)


def embed_pitch(dim: int, group: int, w: int) -> int:
    return words(4, w) + words(2 * -(-dim // group), w) + words(dim, w)


def descriptor_words(w: int) -> int:
    return words(8, w)


# -- bit packing (vectorised) ----------------------------------------------------------------
def _bitplanes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Rows of unsigned codes [R, C] -> their bits [R, C * bits], LSB first."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.size and (codes.min() < 0 or codes.max() >> bits):
        raise LayoutError(f"codes do not fit {bits} bits")
    r, c = codes.shape
    return ((codes[..., None] >> np.arange(bits)) & 1).reshape(r, c * bits).astype(np.uint8)


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Rows of unsigned codes [R, C] -> bytes [R, ceil(C * bits / 8)], LSB-first per row."""
    return np.packbits(_bitplanes(codes, bits), axis=1, bitorder="little")


def unpack_bits(data: np.ndarray, bits: int, count: int, offset_bits: int = 0) -> np.ndarray:
    """Inverse of :func:`pack_bits` for rows of bytes [R, B]: codes [R, count] (int64)."""
    flat = np.unpackbits(data, axis=1, bitorder="little")
    flat = flat[:, offset_bits:offset_bits + count * bits].reshape(data.shape[0], count, bits)
    return (flat.astype(np.int64) << np.arange(bits)).sum(-1)


def _pad_rows(rows: np.ndarray, pitch_bytes: int) -> np.ndarray:
    out = np.zeros((rows.shape[0], pitch_bytes), dtype=np.uint8)
    out[:, :rows.shape[1]] = rows
    return out


def _le(values, dtype: str) -> np.ndarray:
    """Little-endian bytes of ``values`` [R, C] as uint8 [R, C * size]."""
    a = np.ascontiguousarray(np.asarray(values).astype(np.dtype(dtype).newbyteorder("<")))
    return a.view(np.uint8).reshape(a.shape[0], -1)


def _from_le(data: np.ndarray, dtype: str, count: int, offset: int = 0) -> np.ndarray:
    size = np.dtype(dtype).itemsize
    chunk = np.ascontiguousarray(data[:, offset:offset + count * size])
    return chunk.view(np.dtype(dtype).newbyteorder("<")).astype(np.int64)


# -- wide and quantized rows -------------------------------------------------------------------
def encode_wide(values: Tensor, w: int) -> np.ndarray:
    """Wide rows [R, L] -> bytes [R, pitch * W]."""
    v = np.asarray(N.check_range(torch.as_tensor(values), N.WIDE_BITS, "wide value"))
    return _pad_rows(_le(v, "i4"), wide_pitch(v.shape[1], w) * w)


def decode_wide(data: np.ndarray, length: int) -> Tensor:
    return torch.from_numpy(_from_le(data, "i4", length))


def encode_qrows(codes: Tensor, m: Tensor, e: Tensor, w: int) -> np.ndarray:
    """Quantized rows: codes [R, L] int8 with SF16 scales (m, e) [R]."""
    c, m, e = np.asarray(codes), np.asarray(m), np.asarray(e)
    hdr = _pad_rows(np.concatenate([_le(m[:, None], "u2"), _le(e[:, None], "i2")], 1),
                    qrow_header(w) * w)
    body = _pad_rows(_le(c, "i1"), words(c.shape[1], w) * w)
    return np.concatenate([hdr, body], 1)


def decode_qrows(data: np.ndarray, length: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
    m = _from_le(data, "u2", 1)[:, 0]
    e = _from_le(data, "i2", 1, 2)[:, 0]
    codes = _from_le(data, "i1", length, qrow_header(w) * w)
    return torch.from_numpy(codes), torch.from_numpy(m), torch.from_numpy(e)


def encode_kv(codes: Tensor, m: Tensor, e: Tensor, mid: Tensor, bits: int, w: int) -> np.ndarray:
    """KV rows: codes [R, D] in [-(2**(bits-1)-1), ...] with (m, e, mid) [R]."""
    c = np.asarray(codes)
    hdr = np.concatenate([_le(np.asarray(m)[:, None], "u2"), _le(np.asarray(e)[:, None], "i2"),
                          _le(np.asarray(mid)[:, None], "i4")], 1)
    body = pack_bits(c & ((1 << bits) - 1), bits)
    return np.concatenate([_pad_rows(hdr, kv_header(w) * w),
                           _pad_rows(body, (kv_pitch(c.shape[1], bits, w) - kv_header(w)) * w)], 1)


def decode_kv(data: np.ndarray, head_dim: int, bits: int,
              w: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    m = _from_le(data, "u2", 1)[:, 0]
    e = _from_le(data, "i2", 1, 2)[:, 0]
    mid = _from_le(data, "i4", 1, 4)[:, 0]
    raw = unpack_bits(np.ascontiguousarray(data[:, kv_header(w) * w:]), bits, head_dim)
    codes = raw - ((raw >> (bits - 1)) << bits)  # sign-extend
    return tuple(torch.from_numpy(x) for x in (codes, m, e, mid))


# -- weight tiles ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Descriptor:
    """The META descriptor of one weight tile."""

    wfmt: WeightFormat
    sparsity: Sparsity
    group_log2: int
    p0: int = 0
    p1: int = 0

    @property
    def group(self) -> int:
        return 1 << self.group_log2

    @property
    def bits(self) -> int:
        return FORMAT_BITS[self.wfmt]

    @property
    def nm(self) -> tuple[int, int] | None:
        return SPARSITY_NM[self.sparsity]

    def kept(self, k: int) -> int:
        return k if self.nm is None else k // self.nm[1] * self.nm[0]

    def index_bits(self) -> int:
        return 0 if self.nm is None else (self.nm[1] - 1).bit_length()

    def wgt_pitch(self, k: int, w: int) -> int:
        kept = self.kept(k)
        return words((kept * (self.bits + self.index_bits()) + 7) // 8, w)

    def meta_pitch(self, k: int, w: int) -> int:
        groups = k // self.group
        aux = 0 if self.wfmt is WeightFormat.INT8 else groups
        return words(2 + 2 * groups + aux, w)

    def schedule_error(self, chain_group: int) -> str | None:
        """Why the matrix engine cannot run this tile (``None`` when it can): every tap
        slot of ``chain_group`` kept weights must lie in one quantisation group, so a group
        must hold whole sparse blocks and at least ``chain_group`` kept weights."""
        block, keep = (self.nm[1], self.nm[0]) if self.nm else (1, 1)
        if self.group < block:
            return (f"group {self.group} is smaller than the sparse block {block}: a block's "
                    "kept weights would straddle groups unevenly")
        if self.group * keep // block < chain_group:
            return (f"{self.group * keep // block} kept weights per group are fewer than the "
                    f"chain's tap spacing {chain_group}")
        return None

    @classmethod
    def of(cls, fmt: WeightFormat | str, nm: tuple[int, int] | None, group: int, p0: int = 0,
           p1: int = 0) -> Descriptor:
        """The descriptor of a tile in ``fmt`` (or its ``QLinear.fmt`` name) with N:M
        sparsity ``nm`` (None: dense) and quantisation groups of ``group`` weights."""
        fmt = FORMAT_OF[fmt] if isinstance(fmt, str) else fmt
        return cls(fmt, sparsity_of(nm), group.bit_length() - 1, p0, p1)

    def encode(self, w: int) -> np.ndarray:
        raw = np.array([[self.wfmt.value, self.sparsity.value, self.group_log2, 0,
                         self.p0 & 0xFF, self.p1 & 0xFF, 0, 0]], dtype=np.uint8)
        return _pad_rows(raw, descriptor_words(w) * w)

    @classmethod
    def decode(cls, data: np.ndarray) -> Descriptor:
        b = [int(x) for x in data[0, :8]]
        try:
            wfmt, sparsity = WeightFormat(b[0]), Sparsity(b[1])
        except ValueError as exc:
            raise LayoutError(f"weight descriptor: {exc}") from None
        if not 3 <= b[2] <= 7 or b[3] or b[6] or b[7]:
            raise LayoutError(f"weight descriptor: bad group or reserved bytes {b}")
        signed = [x - 256 if x > 127 else x for x in b[4:6]]
        return cls(wfmt, sparsity, b[2], *signed)


def sparsity_of(nm: tuple[int, int] | None) -> Sparsity:
    for key, val in SPARSITY_NM.items():
        if val == (None if nm is None else tuple(nm)):
            return key
    raise LayoutError(f"unsupported sparsity {nm}")


def encode_weight_rows(desc: Descriptor, codes: Tensor, keep: Tensor | None, mant: Tensor,
                       shift: Tensor, aux: Tensor | None, w: int) -> tuple[np.ndarray, np.ndarray]:
    """One tile's WGT rows and META row records (bytes [n, pitch * W] each)."""
    c = torch.as_tensor(codes)
    n, k = c.shape
    if desc.wfmt is WeightFormat.INT8:
        c = c & 0xFF
    if desc.nm is not None:
        vals, idx = N.nm_compress(c, keep, *desc.nm)
        planes = [_bitplanes(vals.numpy(), desc.bits), _bitplanes(idx.numpy(), desc.index_bits())]
        body = np.packbits(np.concatenate(planes, 1), axis=1, bitorder="little")
    else:
        body = pack_bits(c.numpy(), desc.bits)
    wgt = _pad_rows(body, desc.wgt_pitch(k, w) * w)
    parts = [_le(np.asarray(shift)[:, None], "i2"), _le(np.asarray(mant), "u2")]
    if desc.wfmt is not WeightFormat.INT8:
        parts.append(_le(np.asarray(aux), "u1"))
    meta = _pad_rows(np.concatenate(parts, 1), desc.meta_pitch(k, w) * w)
    return wgt, meta


def decode_weight_rows(desc: Descriptor, wgt: np.ndarray, meta: np.ndarray,
                       k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The on-chip weight decoder: (operands [n, k], mant [n, G], shift [n])."""
    if k % desc.group or (desc.nm is not None and k % desc.nm[1]):
        raise LayoutError(f"K = {k} is not a multiple of the group {desc.group} / sparse block")
    groups = k // desc.group
    n = wgt.shape[0]
    shift = _from_le(meta, "i2", 1)[:, 0]
    mant = _from_le(meta, "u2", groups, 2)
    aux = None if desc.wfmt is WeightFormat.INT8 else _from_le(meta, "u1", groups, 2 + 2 * groups)
    kept = desc.kept(k)
    codes = unpack_bits(wgt, desc.bits, kept)
    if desc.wfmt is WeightFormat.INT8:
        codes = codes - ((codes >> 7) << 8)  # sign-extend
    pos = np.broadcast_to(np.arange(kept), codes.shape)
    if desc.nm is not None:
        idx = unpack_bits(wgt, desc.index_bits(), kept, kept * desc.bits)
        kn, km = desc.nm
        pos = (pos // kn) * km + idx  # each kept code's column
    per_code = None if aux is None else torch.from_numpy(np.take_along_axis(
        aux, pos // desc.group, 1))
    fmt = FORMAT_NAMES[desc.wfmt]
    ops = N.decode_weights(torch.from_numpy(codes), per_code, fmt, 1, per_code)
    if desc.nm is not None:
        ops = N.nm_expand(ops, torch.from_numpy(idx), kn, km, k)
    if n != mant.shape[0]:
        raise LayoutError("weight rows and META records differ in count")
    return ops, torch.from_numpy(mant), torch.from_numpy(shift)


# -- tables ----------------------------------------------------------------------------------
def encode_gamma(gamma: Tensor, eps: int, w: int) -> np.ndarray:
    head = _pad_rows(_le(np.array([[eps]]), "i8"), words(8, w) * w)
    body = _pad_rows(_le(np.asarray(gamma)[None, :], "i2"), words(2 * len(gamma), w) * w)
    return np.concatenate([head, body], 1)


def decode_gamma(data: np.ndarray, length: int, w: int) -> tuple[Tensor, int]:
    eps = int(_from_le(data, "i8", 1)[0, 0])
    return torch.from_numpy(_from_le(data, "i2", length, words(8, w) * w)[0]), eps


def encode_rope(cos: Tensor, sin: Tensor, w: int) -> np.ndarray:
    """RoPE rows [P, D/2] each -> bytes [P, pitch * W]."""
    raw = np.concatenate([_le(np.asarray(cos), "i2"), _le(np.asarray(sin), "i2")], 1)
    return _pad_rows(raw, rope_pitch(2 * cos.shape[1], w) * w)


def decode_rope(data: np.ndarray, head_dim: int) -> tuple[Tensor, Tensor]:
    half = head_dim // 2
    return (torch.from_numpy(_from_le(data, "i2", half)),
            torch.from_numpy(_from_le(data, "i2", half, 2 * half)))


def encode_embedding(codes: Tensor, mant: Tensor, row_exp: Tensor, dim: int,
                     w: int) -> np.ndarray:
    """INT8 table rows -> embedding records [R, pitch * W]."""
    groups = mant.shape[1]
    parts = [_pad_rows(_le(np.asarray(row_exp)[:, None], "i2"), words(4, w) * w),
             _pad_rows(_le(np.asarray(mant), "u2"), words(2 * groups, w) * w),
             _pad_rows(_le(np.asarray(codes)[:, :dim], "i1"), words(dim, w) * w)]
    return np.concatenate(parts, 1)


def decode_embedding(data: np.ndarray, dim: int, group: int,
                     w: int) -> tuple[Tensor, Tensor, Tensor]:
    groups = -(-dim // group)
    e = _from_le(data, "i2", 1)[:, 0]
    mant = _from_le(data, "u2", groups, words(4, w) * w)
    codes = _from_le(data, "i1", dim, (words(4, w) + words(2 * groups, w)) * w)
    return torch.from_numpy(codes), torch.from_numpy(mant), torch.from_numpy(e)
