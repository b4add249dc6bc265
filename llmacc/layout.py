"""Byte layouts of everything the accelerator keeps in buffers and external memory, declared once.

The compiler writes these records, the emulator and the RTL read them, the cycle model prices
their fields' fetches. The fixed-size parts (descriptor, row headers, KV header, the first
field of a row record, the gamma and embedding headers) are ``data.Struct`` layouts below;
the variable-length parts are arrays of the element shapes below. Encoders and decoders go
through :func:`encode_record` / :func:`decode_record`; the RTL views fetched bits through
the same layouts and takes element addresses from :func:`element_bit`, :func:`row_mant_bit`
and :func:`row_aux_bit`, so no other file holds a record's offsets. Buffers are addressed
in words of ``W = AccelConfig.axi_data_bytes`` bytes; every record starts on a word and is
padded with zero bytes to whole words. All multi-byte fields are little-endian.

* **wide row** (INT32): ``length`` int32, ``wide_pitch(length)`` words.
* **quantized row** (QUANT8 output, matrix input): header ``m: u16, e: i16`` (the SF16 scale),
  padded to a word, then ``length`` int8 codes.
* **KV block** (KVQUANT output, ATTN input, a KV head's cache in external memory): ``rows``
  payloads, each ``head_dim`` codes of 4 bits (two's complement nibbles, low nibble first) or
  8 bits padded to whole words, then the rows' headers ``m: u16, e: i16, mid: i32`` packed
  :func:`kv_slots` to a word (8 on 512-bit words), row ``r``'s in slot ``first + r`` of the
  header words (``first``: the position of the block's first row modulo the slots, so that a
  header lands where it lies in the head's cache). A key then costs its payload and 8 bytes.
* **weight tile**: ``n`` rows in WGT, each the kept codes at ``bits`` each, then (N:M sparse)
  the kept codes' in-block indices at ``log2(M)`` bits each, bit-packed LSB-first. In META: a
  descriptor ``wfmt: u8, sparsity: u8, group_log2: u8, 0: u8, p0: i8, p1: i8, 0: u16`` then
  ``n`` row records ``shift: i16, mant: u16 x G, aux: u8 x G`` (aux: W2 zero-point or mixed
  type id; absent for INT8). ``shift`` is the row's scale exponent plus ``F_in - F_out``.
* **gamma record** (RMSNORM, TABLE): ``eps: i64``, padded, then ``gamma: i16 x length``.
* **RoPE row** (TABLE, one per position): ``cos: i16 x D/2, sin: i16 x D/2``.
* **embedding record** (EMBED input): ``E: i16``, padded, ``mant: u16 x G``, padded,
  ``codes: i8 x dim``.
* **weight stream** (the streaming matrix path, ``hw/stream_engine.py``): a channel's weight
  rows beat-major, in WEIGHTS words (whole beats of code and index bit planes) and SCALES
  words (:func:`stream_scale_layout`), in the order its lanes ask for them; see the section
  "beat-major weight streams" below.
"""

import contextlib
import functools
import math
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

import numpy as np
import torch
from amaranth.hdl import Shape, signed
from amaranth.lib import data

from llmacc import numerics as N
from llmacc.isa import Sparsity, WeightFormat
from llmacc.widths import GROUP_LOG2_MAX as GROUP_LOG2_MAX
from llmacc.widths import GROUP_LOG2_MIN as GROUP_LOG2_MIN

if TYPE_CHECKING:
    from llmacc.config import AccelConfig

Tensor = torch.Tensor


# -- the fixed-size records, as Amaranth layouts -------------------------------------------------
# The compiler encodes through these, the emulator decodes through them, the RTL views the
# fetched bits through them (``data.View``) and the cycle model takes the fields' bit
# addresses from them. Every field is whole bytes, so a record is a little-endian byte string.
class TileDescriptor(data.Struct):
    """The META descriptor of one weight tile (then the tile's row records)."""

    wfmt: 8  #: a WeightFormat
    sparsity: 8  #: a Sparsity
    group_log2: 8  #: GROUP_LOG2_MIN .. GROUP_LOG2_MAX
    reserved0: 8
    p0: signed(8)  #: fusion parameters of the output mode
    p1: signed(8)
    reserved1: 16


class QRowHeader(data.Struct):
    """A quantized row's SF16 scale, before its INT8 codes."""

    m: 16
    e: signed(16)


class KvHeader(data.Struct):
    """A KV row's scale and midpoint: one slot of a KV block's header words."""

    m: 16
    e: signed(16)
    mid: signed(32)


class RowRecordHead(data.Struct):
    """A weight row's META record begins with its exponent, then ``mant: MANT x G`` and (not
    for INT8) ``aux: AUX x G``."""

    shift: signed(16)


class GammaHeader(data.Struct):
    """An RMSNorm gamma record's epsilon, before ``gamma: GAMMA x length``."""

    eps: signed(64)


class EmbedHeader(data.Struct):
    """An embedding record's exponent, before ``mant: MANT x G`` and ``codes: QCODE x dim``."""

    e: signed(16)
    reserved: 16


#: The elements of the variable-length parts.
WIDE = signed(32)  #: a wide row's element
QCODE = signed(8)  #: an INT8 code (quantized rows, embedding codes)
MANT = Shape(16)  #: a group scale's mantissa
AUX = Shape(8)  #: a group's W2 zero-point or mixed type id
KV_CODE = {4: signed(4), 8: signed(8)}  #: a KV row's code, by its bits
KV_CODE_BITS = tuple(KV_CODE)  #: the widths of a KV record's codes (KVQUANT's ``imm2``)
GAMMA = signed(16)  #: an RMSNorm gain
#: What a slot-snooping field fetch marks stale when the unit writes (``hw.buffer_access``,
#: followed by ``sim.compute_timing``): an element of a wide row.
SLOT_BITS = WIDE.width
TRIG = signed(16)  #: a RoPE cos or sin


@functools.cache
def record_bytes(layout: type[data.Struct]) -> int:
    return layout.as_shape().size // 8


@functools.cache
def _byte_fields(layout: type[data.Struct]) -> dict[str, tuple[int, Shape]]:
    """Each field's byte offset and shape (the layouts never change: computed once)."""
    return {name: (fld.offset // 8, Shape.cast(fld.shape)) for name, fld in layout.as_shape()}


def record_words(layout: type[data.Struct], w: int) -> int:
    """Whole words of one ``layout`` record (records start on a word)."""
    return words(record_bytes(layout), w)


def field_bit(layout: type[data.Struct], name: str) -> int:
    """The bit offset of ``layout.name`` within its record."""
    return layout.as_shape()[name].offset


def element_bit(index, shape: Shape):
    """The bit offset of element ``index`` of an array of ``shape`` elements; ``index`` may
    be an int or an Amaranth value (the RTL's addresses), so the widths stay declared here."""
    width = Shape.cast(shape).width
    if width & (width - 1):
        raise ValueError(f"{width}-bit elements are not addressed by a shift")
    return index << (width.bit_length() - 1)


def row_mant_bit(g):
    """Bit offset of group ``g``'s mantissa within a weight row's META record."""
    return RowRecordHead.as_shape().size + element_bit(g, MANT)


def row_aux_bit(groups, g):
    """Bit offset of group ``g``'s aux byte within a row record of ``groups`` groups."""
    return row_mant_bit(groups) + element_bit(g, AUX)


def _record_dtype(shape: Shape) -> str:
    return f"{'i' if shape.signed else 'u'}{shape.width // 8}"


def encode_record(layout: type[data.Struct], rows: int, **values) -> np.ndarray:
    """``rows`` records of ``layout`` as bytes [rows, record_bytes]; a field not named is
    zero; values are per row or one for all rows."""
    out = np.zeros((rows, record_bytes(layout)), dtype=np.uint8)
    fields = _byte_fields(layout)
    unknown = set(values) - set(fields)
    if unknown:
        raise LayoutError(f"{layout.__name__}: unknown fields {sorted(unknown)}")
    for name, value in values.items():
        start, shape = fields[name]
        column = np.broadcast_to(np.asarray(value, dtype=np.int64), (rows,))
        lo, hi = (-(1 << shape.width - 1), (1 << shape.width - 1) - 1) if shape.signed \
            else (0, (1 << shape.width) - 1)
        if column.size and (column.min() < lo or column.max() > hi):
            raise LayoutError(f"{layout.__name__}.{name}: values outside [{lo}, {hi}]")
        out[:, start:start + shape.width // 8] = _le(column[:, None], _record_dtype(shape))
    return out


def decode_record(layout: type[data.Struct], data_: np.ndarray,
                  offset: int = 0) -> dict[str, np.ndarray]:
    """The fields of the records at byte ``offset`` of rows of bytes [R, B], each [R]."""
    return {name: _from_le(data_, _record_dtype(shape), 1, offset + start)[:, 0]
            for name, (start, shape) in _byte_fields(layout).items()}


def _check_byte_fields(layout: type[data.Struct]) -> None:
    for name, fld in layout.as_shape():
        if fld.offset % 8 or Shape.cast(fld.shape).width not in (8, 16, 32, 64):
            raise AssertionError(f"{layout.__name__}.{name} is not a whole little-endian field")

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


def array_words(count: int, shape: Shape, w: int) -> int:
    """Whole words of ``count`` elements of ``shape`` (bit-packed, LSB first)."""
    return words((count * Shape.cast(shape).width + 7) // 8, w)


def wide_pitch(length: int, w: int) -> int:
    return array_words(length, WIDE, w)


def qrow_header(w: int) -> int:
    return record_words(QRowHeader, w)


def qrow_pitch(length: int, w: int) -> int:
    return qrow_header(w) + array_words(length, QCODE, w)


def kv_slots(w: int) -> int:
    """KV headers a word holds."""
    return w // record_bytes(KvHeader)


def kv_payload(head_dim: int, bits: int, w: int) -> int:
    """Words of a KV row's codes."""
    return array_words(head_dim, Shape(bits), w)


def kv_header_words(rows, w: int):
    """The header words of a KV block of ``rows`` rows whatever its first slot (``ceil((rows
    + kv_slots - 1) / kv_slots)``; a block whose first row is at slot 0, ATTN's, uses
    ``ceil(rows / kv_slots)`` of them). ``rows`` an int or an Amaranth value: the units
    bound their blocks with the same expression."""
    b = kv_slots(w)  # a power of two
    return (rows + 2 * b - 2) >> (b - 1).bit_length()


def kv_block(rows: int, head_dim: int, bits: int, w: int) -> int:
    """Words of a KV block of ``rows`` rows: their payloads, then their header words."""
    return rows * kv_payload(head_dim, bits, w) + kv_header_words(rows, w)


def gamma_header(w: int) -> int:
    return record_words(GammaHeader, w)


def gamma_pitch(length: int, w: int) -> int:
    return gamma_header(w) + array_words(length, GAMMA, w)


def rope_pitch(head_dim: int, w: int) -> int:
    return array_words(head_dim, TRIG, w)


def embed_header(w: int) -> int:
    return record_words(EmbedHeader, w)


def embed_scale_words(dim: int, group: int, w: int) -> int:
    return array_words(-(-dim // group), MANT, w)


def embed_pitch(dim: int, group: int, w: int) -> int:
    return embed_header(w) + embed_scale_words(dim, group, w) + array_words(dim, QCODE, w)


def descriptor_words(w: int) -> int:
    return record_words(TileDescriptor, w)


def row_record_bytes(groups: int, wfmt: WeightFormat) -> int:
    """Bytes of one weight row's META record (before padding to words)."""
    aux = 0 if wfmt is WeightFormat.INT8 else groups
    return row_aux_bit(groups, aux) // 8


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
    c = np.asarray(codes)
    hdr = _pad_rows(encode_record(QRowHeader, c.shape[0], m=m, e=e), qrow_header(w) * w)
    body = _pad_rows(_le(c, "i1"), array_words(c.shape[1], QCODE, w) * w)
    return np.concatenate([hdr, body], 1)


def decode_qrows(data: np.ndarray, length: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
    head = decode_record(QRowHeader, data)
    codes = _from_le(data, "i1", length, qrow_header(w) * w)
    return torch.from_numpy(codes), torch.from_numpy(head["m"]), torch.from_numpy(head["e"])


def encode_kv_payload(codes: Tensor, bits: int, w: int) -> np.ndarray:
    """KV payloads: codes [R, D] in [-(2**(bits-1)-1), ...] as bytes [R, kv_payload * W]."""
    c = np.asarray(codes)
    return _pad_rows(pack_bits(c & ((1 << bits) - 1), bits), kv_payload(c.shape[1], bits, w) * w)


def encode_kv_headers(m: Tensor, e: Tensor, mid: Tensor) -> np.ndarray:
    """KV headers: (m, e, mid) [R] as bytes [R, 8], one slot each."""
    return encode_record(KvHeader, len(np.asarray(m)), m=np.asarray(m), e=np.asarray(e),
                         mid=np.asarray(mid))


def encode_kv(codes: Tensor, m: Tensor, e: Tensor, mid: Tensor, bits: int, w: int,
              first: int = 0) -> np.ndarray:
    """A KV block: codes [R, D] with (m, e, mid) [R], row ``r``'s header at slot
    ``first + r``; the header words' other slots are zero. Bytes [kv_block * W]."""
    c = np.asarray(codes)
    rows, slot = c.shape[0], record_bytes(KvHeader)
    heads = np.zeros(kv_header_words(rows, w) * w, dtype=np.uint8)
    heads[first * slot:(first + rows) * slot] = encode_kv_headers(m, e, mid).reshape(-1)
    return np.concatenate([encode_kv_payload(c, bits, w).reshape(-1), heads])


def decode_kv(data: np.ndarray, rows: int, head_dim: int, bits: int,
              w: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A KV block's ``rows`` rows (first slot 0) from its bytes: codes [R, D], m, e, mid [R]."""
    flat = np.asarray(data).reshape(-1)
    body = rows * kv_payload(head_dim, bits, w) * w
    slot = record_bytes(KvHeader)
    head = decode_record(KvHeader, flat[body:body + rows * slot].reshape(rows, slot))
    raw = unpack_bits(np.ascontiguousarray(flat[:body].reshape(rows, -1)), bits, head_dim)
    codes = raw - ((raw >> (bits - 1)) << bits)  # sign-extend
    return tuple(torch.from_numpy(x) for x in (codes, head["m"], head["e"], head["mid"]))


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
        return words(row_record_bytes(k // self.group, self.wfmt), w)

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
           p1: int = 0) -> "Descriptor":
        """The descriptor of a tile in ``fmt`` (or its ``QLinear.fmt`` name) with N:M
        sparsity ``nm`` (None: dense) and quantisation groups of ``group`` weights."""
        fmt = FORMAT_OF[fmt] if isinstance(fmt, str) else fmt
        return cls(fmt, sparsity_of(nm), group.bit_length() - 1, p0, p1)

    def encode(self, w: int) -> np.ndarray:
        raw = encode_record(TileDescriptor, 1, wfmt=self.wfmt.value,
                            sparsity=self.sparsity.value, group_log2=self.group_log2,
                            p0=self.p0, p1=self.p1)
        return _pad_rows(raw, descriptor_words(w) * w)

    @classmethod
    def decode(cls, data: np.ndarray) -> "Descriptor":
        d = {name: int(v[0]) for name, v in decode_record(TileDescriptor, data[:1]).items()}
        try:
            wfmt, sparsity = WeightFormat(d["wfmt"]), Sparsity(d["sparsity"])
        except ValueError as exc:
            raise LayoutError(f"weight descriptor: {exc}") from None
        if not GROUP_LOG2_MIN <= d["group_log2"] <= GROUP_LOG2_MAX or d["reserved0"] \
                or d["reserved1"]:
            raise LayoutError(f"weight descriptor: bad group or reserved bytes {d}")
        return cls(wfmt, sparsity, d["group_log2"], d["p0"], d["p1"])


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
    parts = [encode_record(RowRecordHead, n, shift=np.asarray(shift)),
             _le(np.asarray(mant), _record_dtype(MANT))]
    if desc.wfmt is not WeightFormat.INT8:
        parts.append(_le(np.asarray(aux), _record_dtype(AUX)))
    meta = _pad_rows(np.concatenate(parts, 1), desc.meta_pitch(k, w) * w)
    return wgt, meta


def decode_weight_rows(desc: Descriptor, wgt: np.ndarray, meta: np.ndarray,
                       k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The on-chip weight decoder: (operands [n, k], mant [n, G], shift [n])."""
    _check_k(desc, k)
    groups = k // desc.group
    shift = decode_record(RowRecordHead, meta)["shift"]
    mant = _from_le(meta, _record_dtype(MANT), groups, row_mant_bit(0) // 8)
    aux = None if desc.wfmt is WeightFormat.INT8 else _from_le(
        meta, _record_dtype(AUX), groups, row_aux_bit(groups, 0) // 8)
    kept = desc.kept(k)
    codes = unpack_bits(wgt, desc.bits, kept)
    idx = None if desc.nm is None else unpack_bits(wgt, desc.index_bits(), kept,
                                                   kept * desc.bits)
    if wgt.shape[0] != mant.shape[0]:
        raise LayoutError("weight rows and META records differ in count")
    return weight_operands(desc, codes, idx, aux, k), torch.from_numpy(mant), \
        torch.from_numpy(shift)


def _check_k(desc: Descriptor, k: int) -> None:
    if k % desc.group or (desc.nm is not None and k % desc.nm[1]):
        raise LayoutError(f"K = {k} is not a multiple of the group {desc.group} / sparse block")


def weight_operands(desc: Descriptor, codes: np.ndarray, idx: np.ndarray | None,
                    aux: np.ndarray | None, k: int) -> Tensor:
    """The operands [n, k] of kept ``codes`` [n, kept] (INT8 as bytes), their in-block
    ``idx`` (N:M) and the groups' type ids ``aux`` [n, G] (not INT8), however they were
    stored."""
    kept = desc.kept(k)
    if desc.wfmt is WeightFormat.INT8:  # the bytes as two's complement
        codes = np.asarray(codes).astype(np.uint8, copy=False).view(np.int8)
    codes = np.asarray(codes).astype(np.int64, copy=False)
    pos = np.broadcast_to(np.arange(kept), codes.shape)
    if desc.nm is not None:
        kn, km = desc.nm
        pos = (pos // kn) * km + idx  # each kept code's column
    per_code = None if aux is None else torch.from_numpy(np.take_along_axis(
        np.asarray(aux), pos // desc.group, 1))
    ops = N.decode_weights(torch.from_numpy(np.ascontiguousarray(codes)), per_code,
                           FORMAT_NAMES[desc.wfmt], 1, per_code)
    if desc.nm is not None:
        ops = N.nm_expand(ops, torch.from_numpy(np.ascontiguousarray(idx)), kn, km, k)
    return ops


# -- tables ----------------------------------------------------------------------------------
def encode_gamma(gamma: Tensor, eps: int, w: int) -> np.ndarray:
    head = _pad_rows(encode_record(GammaHeader, 1, eps=eps), gamma_header(w) * w)
    body = _pad_rows(_le(np.asarray(gamma)[None, :], _record_dtype(GAMMA)),
                     array_words(len(gamma), GAMMA, w) * w)
    return np.concatenate([head, body], 1)


def decode_gamma(data: np.ndarray, length: int, w: int) -> tuple[Tensor, int]:
    eps = int(decode_record(GammaHeader, data[:1])["eps"][0])
    gamma = _from_le(data, _record_dtype(GAMMA), length, gamma_header(w) * w)[0]
    return torch.from_numpy(gamma), eps


def rope_entry(pair, sin):
    """The TRIG element of a RoPE row holding pair ``pair``'s cosine (``sin`` = 0) or sine
    (1): the two side by side, so that a head's elements walk the row in order (one
    fetch refill a head, not one an element). ``pair``/``sin`` may be ints or Amaranth
    values."""
    return (pair << 1) | sin


def encode_rope(cos: Tensor, sin: Tensor, w: int) -> np.ndarray:
    """RoPE rows [P, D/2] each -> bytes [P, pitch * W], entries at :func:`rope_entry`."""
    pairs = np.stack([np.asarray(cos), np.asarray(sin)], -1).reshape(cos.shape[0], -1)
    raw = _le(pairs, _record_dtype(TRIG))
    return _pad_rows(raw, rope_pitch(2 * cos.shape[1], w) * w)


def decode_rope(data: np.ndarray, head_dim: int) -> tuple[Tensor, Tensor]:
    entries = _from_le(data, _record_dtype(TRIG), head_dim)
    pairs = np.arange(head_dim // 2)
    return (torch.from_numpy(entries[:, rope_entry(pairs, 0)]),
            torch.from_numpy(entries[:, rope_entry(pairs, 1)]))


def encode_embedding(codes: Tensor, mant: Tensor, row_exp: Tensor, dim: int,
                     w: int) -> np.ndarray:
    """INT8 table rows -> embedding records [R, pitch * W]."""
    groups = mant.shape[1]
    rows = mant.shape[0]
    parts = [_pad_rows(encode_record(EmbedHeader, rows, e=np.asarray(row_exp)),
                       embed_header(w) * w),
             _pad_rows(_le(np.asarray(mant), _record_dtype(MANT)),
                       array_words(groups, MANT, w) * w),
             _pad_rows(_le(np.asarray(codes)[:, :dim], _record_dtype(QCODE)),
                       array_words(dim, QCODE, w) * w)]
    return np.concatenate(parts, 1)


def decode_embedding(data: np.ndarray, dim: int, group: int,
                     w: int) -> tuple[Tensor, Tensor, Tensor]:
    groups = -(-dim // group)
    e = decode_record(EmbedHeader, data)["e"]
    mant = _from_le(data, _record_dtype(MANT), groups, embed_header(w) * w)
    codes = _from_le(data, _record_dtype(QCODE), dim,
                     (embed_header(w) + embed_scale_words(dim, group, w)) * w)
    return torch.from_numpy(codes), torch.from_numpy(mant), torch.from_numpy(e)


for _record in (TileDescriptor, QRowHeader, KvHeader, RowRecordHead, GammaHeader, EmbedHeader):
    _check_byte_fields(_record)


# -- beat-major weight streams (the streaming matrix path) -----------------------------------
# A weight stream is what one memory channel sends its lanes during a MATVEC/MATMAT: every
# row of the channel's share, cut into the engine's beats of ``n`` kept weights and stored in
# the order the lanes consume them, so that a lane takes its operands out of an AXI word with
# fixed wiring per format. Two kinds of words (:class:`StreamPart`), each one lane's:
#
# * **WEIGHTS**: ``beats_per_word`` beats of one row. A beat fills a slot of
#   ``slot_planes`` planes of ``n`` bits (the smallest power of two holding its planes): the
#   code planes first (plane ``p`` holds bit ``p`` of the beat's ``n`` codes, INT8 as bytes),
#   the N:M index planes (``log2 M`` of them) at the top of the slot. Slot ``j`` of a word
#   starts at plane ``j * slot_planes``.
# * **SCALES**: :func:`stream_scale_layout`, the row's ``shift`` and the mantissa and aux
#   byte of ``stream_scale_entries`` consecutive groups (entry ``g % E`` holds group ``g``).
#
# A row starts a new word of each part. **Pre-skewed streams** (``skew``, the chain's tap
# spacing, where only streams feed the lanes): a lane's beats, row after row, are shifted
# element by element, element ``e`` of the stream's beat ``t`` holding that of the lane's
# beat ``t - e % skew`` (zero before the first), so that each weight reaches its DSP when
# the cascade does and the lanes keep no skew registers; ``skew - 1`` tail beats after the
# last row carry what is left (WEIGHTS words only, starting a new word).
#
# The channel's lanes (``lanes``, one row each per pass) share one word stream: the words
# come in the order in which the lanes' queues (STREAM_QUEUE_WORDS per part) ask for them,
# each request answered with one word per lane, lane 0 first. The queues ask that many
# times per part at the start (WEIGHTS, SCALES, ...), then once for each word a beat
# finishes (:meth:`StreamGeometry.pops`, WEIGHTS before SCALES; a tail beat finishes
# WEIGHTS words only): the order depends only on the beats, never on timing. A request
# that no row needs any more is answered with a zero word while later words follow, and
# not at all after the last.
class StreamPart(IntEnum):
    """The kinds of words of a weight stream, in the order one beat's requests are made."""

    WEIGHTS = 0
    SCALES = 1


#: Words a lane's queue holds per part: the current one and two more, so that a part's refill
#: waits behind the other part's without stalling the beats (``make bench-rtl``).
STREAM_QUEUE_WORDS = 3


def stream_scale_entries(w_bits: int) -> int:
    """Groups per SCALES word on a port of ``w_bits``: the most (a power of two) that fit
    beside the row's shift."""
    fit = (w_bits - RowRecordHead.as_shape().size) // (MANT.width + AUX.width)
    return 1 << (fit.bit_length() - 1)


def stream_scale_layout(w_bits: int) -> data.StructLayout:
    """One SCALES word: the row's ``shift`` (as its row record's) and ``E`` groups' ``mant``
    and ``aux``, padded to the word."""
    e = stream_scale_entries(w_bits)
    fields = {"shift": RowRecordHead.as_shape()["shift"].shape,
              "mant": data.ArrayLayout(MANT, e), "aux": data.ArrayLayout(AUX, e)}
    return data.StructLayout({**fields,
                              "reserved": w_bits - data.StructLayout(fields).size})


@dataclass(frozen=True)
class StreamGeometry:
    """Where everything of one tile's rows lies in its weight stream: ``k`` inputs per row,
    ``n`` kept weights per beat (the chain), words of ``w_bits``; ``skew``: the chain's tap
    spacing where the stream is pre-skewed for it, else 0."""

    desc: Descriptor
    k: int
    n: int
    w_bits: int
    skew: int = 0

    def __post_init__(self) -> None:
        d = self.desc
        _check_k(d, self.k)
        if self.skew < 0 or (self.skew and self.n % self.skew):
            raise LayoutError(f"a skew of {self.skew} does not divide a chain of {self.n}")
        if self.w_bits % self.n:
            raise LayoutError(f"a {self.w_bits}-bit word holds no whole planes of {self.n}")
        if self.beat_planes > self.word_planes:
            raise LayoutError(
                f"{FORMAT_NAMES[d.wfmt]} {d.sparsity.name}: a beat's {self.beat_planes} "
                f"planes of {self.n} bits do not fit a {self.w_bits}-bit word")
        if self.groups_per_beat > stream_scale_entries(self.w_bits):
            raise LayoutError(f"{self.groups_per_beat} groups per beat exceed a SCALES word's "
                              f"{stream_scale_entries(self.w_bits)}")

    @property
    def index_planes(self) -> int:
        return self.desc.index_bits()

    @property
    def beat_planes(self) -> int:
        return self.desc.bits + self.index_planes

    @property
    def slot_planes(self) -> int:
        return 1 << (self.beat_planes - 1).bit_length()

    @property
    def word_planes(self) -> int:
        return self.w_bits // self.n

    @property
    def beats_per_word(self) -> int:
        return self.word_planes // self.slot_planes

    @property
    def kept(self) -> int:
        return self.desc.kept(self.k)

    @property
    def beats(self) -> int:
        """Beats of one row."""
        return -(-self.kept // self.n)

    @property
    def groups(self) -> int:
        return self.k // self.desc.group

    @property
    def kept_per_group(self) -> int:
        keep, block = self.desc.nm or (1, 1)
        return self.desc.group * keep // block

    @property
    def groups_per_beat(self) -> int:
        return max(1, self.n // self.kept_per_group)

    def code_plane(self, slot: int, p: int) -> int:
        """The word plane of code bit ``p`` of the beat in slot ``slot``."""
        return slot * self.slot_planes + p

    def index_plane(self, slot: int, p: int) -> int:
        """The word plane of index bit ``p`` of the beat in slot ``slot``."""
        return (slot + 1) * self.slot_planes - self.index_planes + p

    @property
    def tail(self) -> int:
        """Beats after a pre-skewed stream's last row: what its later elements still need."""
        return max(0, self.skew - 1)

    @property
    def tail_words(self) -> int:
        """WEIGHTS words of a lane's tail beats."""
        return -(-self.tail // self.beats_per_word)

    def row_words(self, part: StreamPart) -> int:
        """Words of ``part`` in one row."""
        if part is StreamPart.WEIGHTS:
            return -(-self.beats // self.beats_per_word)
        return -(-self.groups // stream_scale_entries(self.w_bits))

    def lane_words(self, part: StreamPart, passes: int) -> int:
        """Words of ``part`` a lane takes over ``passes`` rows (the tail's included)."""
        return passes * self.row_words(part) + (self.tail_words
                                               if part is StreamPart.WEIGHTS else 0)

    def pops(self, beat: int) -> tuple[StreamPart, ...]:
        """The parts whose current word beat ``beat`` of a row finishes."""
        last = beat == self.beats - 1
        entries = stream_scale_entries(self.w_bits)
        end = (beat + 1) * self.n
        group_end = last or end % self.kept_per_group == 0
        done_group = (end - 1) // self.kept_per_group
        return tuple(part for part, done in (
            (StreamPart.WEIGHTS, last or beat % self.beats_per_word == self.beats_per_word - 1),
            (StreamPart.SCALES, last or (group_end and done_group % entries == entries - 1)))
            if done)

    def row_requests(self) -> list[StreamPart]:
        """The requests one row's beats make, in order."""
        return [part for beat in range(self.beats) for part in self.pops(beat)]

    def requests(self, passes: int) -> list[StreamPart]:
        """Every request of the lanes' queues over ``passes`` rows each, in order."""
        out = [part for _ in range(STREAM_QUEUE_WORDS) for part in StreamPart]
        return out + self.row_requests() * passes + [StreamPart.WEIGHTS] * self.tail_words


def stream_geometry(cfg: "AccelConfig", desc: Descriptor, k: int) -> StreamGeometry:
    """The streams of a ``desc`` tile of K = ``k`` on the engine of ``cfg`` (pre-skewed
    where its lanes take nothing else, ``AccelConfig.stream_skew``)."""
    return StreamGeometry(desc, k, cfg.chain_len, cfg.axi_data_bits, cfg.stream_skew)


@functools.cache
def stream_geometries(n: int, w_bits: int) -> dict[tuple[WeightFormat, Sparsity], StreamGeometry]:
    """Every format and sparsity that a beat-major stream of ``w_bits`` words holds for a
    chain of ``n`` (their planes and slots do not depend on K or the group)."""
    out = {}
    for fmt in WeightFormat:
        for sp in Sparsity:
            # a combination that does not fit is not streamed: the layout says why
            with contextlib.suppress(LayoutError):
                out[fmt, sp] = StreamGeometry(Descriptor(fmt, sp, GROUP_LOG2_MAX),
                                              16 << GROUP_LOG2_MAX, n, w_bits)
    return out


def _kept_beats(geom: StreamGeometry, codes: Tensor, keep: Tensor | None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Each row's kept codes (INT8 as bytes) and N:M indices by beat, [rows, beats, n]."""
    d, n = geom.desc, geom.n
    c = torch.as_tensor(codes)
    rows = c.shape[0]
    if d.wfmt is WeightFormat.INT8:
        c = c & 0xFF
    idx = torch.zeros_like(c)
    if d.nm is not None:
        c, idx = N.nm_compress(c, keep, *d.nm)
    out = []
    for t in (c, idx):
        kept = np.zeros((rows, geom.beats * n), dtype=np.int64)
        kept[:, :geom.kept] = t.numpy()
        out.append(kept.reshape(rows, geom.beats, n))
    return out[0], out[1]


def _skew(beats: np.ndarray, skew: int, back: bool = False) -> np.ndarray:
    """A lane's beats [..., T, n] with element ``e`` moved ``e % skew`` beats later (zero
    before its first), or, ``back``, earlier again."""
    if not skew:
        return beats
    t = beats.shape[-2]
    out = np.zeros_like(beats)
    for d in range(1, min(skew, t)):  # the elements d, d + skew, ...: d beats
        if back:
            out[..., :t - d, d::skew] = beats[..., d:, d::skew]
        else:
            out[..., d:, d::skew] = beats[..., :t - d, d::skew]
    out[..., :, ::skew] = beats[..., :, ::skew]
    return out


def _beat_words(geom: StreamGeometry, codes: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Beats of codes and indices [..., B, n] packed as WEIGHTS words, bytes [..., words,
    W]: ``beats_per_word`` beats a word, the last word's unused slots zero."""
    d, n, per_word = geom.desc, geom.n, geom.beats_per_word
    lead, count = codes.shape[:-2], codes.shape[-2]
    nwords = -(-count // per_word)
    planes = np.zeros((*lead, nwords * per_word, geom.slot_planes, n), np.uint8)
    for p in range(d.bits):
        planes[..., :count, geom.code_plane(0, p), :] = (codes >> p) & 1
    for p in range(geom.index_planes):
        planes[..., :count, geom.index_plane(0, p), :] = (idx >> p) & 1
    return np.packbits(planes.reshape(*lead, nwords, -1), axis=-1, bitorder="little")


def _scale_words(geom: StreamGeometry, rows: int, mant: Tensor, shift: Tensor,
                 aux: Tensor | None) -> np.ndarray:
    """Each row's SCALES words, bytes [rows, row_words, W]."""
    d, w_bytes = geom.desc, geom.w_bits // 8
    entries = stream_scale_entries(geom.w_bits)
    layout = stream_scale_layout(geom.w_bits)
    swords = geom.row_words(StreamPart.SCALES)
    scales = np.zeros((rows, swords, w_bytes), np.uint8)
    pad = swords * entries
    m = np.zeros((rows, pad), np.int64)
    a = np.zeros((rows, pad), np.int64)
    m[:, :geom.groups] = np.asarray(mant)
    if aux is not None and d.wfmt is not WeightFormat.INT8:
        a[:, :geom.groups] = np.asarray(aux)
    head = encode_record(RowRecordHead, rows, shift=np.asarray(shift))  # in every word
    for word in range(swords):
        scales[:, word, :head.shape[1]] = head
        lo = layout["mant"].offset // 8
        scales[:, word, lo:lo + 2 * entries] = _le(m[:, word * entries:(word + 1) * entries],
                                                   _record_dtype(MANT))
        lo = layout["aux"].offset // 8
        scales[:, word, lo:lo + entries] = _le(a[:, word * entries:(word + 1) * entries],
                                               _record_dtype(AUX))
    return scales


def _lane_queues(geom: StreamGeometry, lanes: int, codes: Tensor, keep: Tensor | None,
                 mant: Tensor, shift: Tensor, aux: Tensor | None) -> dict[StreamPart, np.ndarray]:
    """Each lane's words of each part in the order it takes them, bytes [lanes, words, W]:
    its rows' (row ``r`` on lane ``r % lanes``), pre-skewed with the tail's where ``skew``."""
    rows = torch.as_tensor(codes).shape[0]
    passes, w_bytes, beats, n = rows // lanes, geom.w_bits // 8, geom.beats, geom.n

    def by_lane(x: np.ndarray) -> np.ndarray:  # [rows, ...] -> [lanes, passes, ...]
        return x.reshape(passes, lanes, *x.shape[1:]).swapaxes(0, 1)

    beat_arrays = []
    for b in _kept_beats(geom, codes, keep):
        seq = by_lane(b).reshape(lanes, passes * beats, n)
        seq = np.concatenate([seq, np.zeros((lanes, geom.tail, n), np.int64)], axis=1)
        beat_arrays.append(_skew(seq, geom.skew))
    (c, i) = beat_arrays
    body = _beat_words(geom, c[:, :passes * beats].reshape(lanes, passes, beats, n),
                       i[:, :passes * beats].reshape(lanes, passes, beats, n))
    weights = [body.reshape(lanes, -1, w_bytes)]
    if geom.tail:
        weights.append(_beat_words(geom, c[:, passes * beats:], i[:, passes * beats:]))
    scales = by_lane(_scale_words(geom, rows, mant, shift, aux)).reshape(lanes, -1, w_bytes)
    return {StreamPart.WEIGHTS: np.concatenate(weights, axis=1), StreamPart.SCALES: scales}


def encode_weight_stream(geom: StreamGeometry, lanes: int, codes: Tensor, keep: Tensor | None,
                         mant: Tensor, shift: Tensor, aux: Tensor | None) -> np.ndarray:
    """One channel's weight stream, bytes [words, W]: its rows (codes [R, K] as
    :func:`encode_weight_rows` takes them) on ``lanes`` lanes, row ``r`` on lane
    ``r % lanes`` in pass ``r // lanes``. ``R`` must be a multiple of ``lanes``."""
    rows = torch.as_tensor(codes).shape[0]
    if rows % lanes:
        raise LayoutError(f"{rows} rows do not fill passes of {lanes} lanes")
    passes = rows // lanes
    w_bytes = geom.w_bits // 8
    queues = _lane_queues(geom, lanes, codes, keep, mant, shift, aux)
    taken = dict.fromkeys(StreamPart, 0)
    left = sum(q.shape[1] for q in queues.values())
    out = []
    for part in geom.requests(passes):
        if not left:
            break
        q = queues[part]
        if taken[part] < q.shape[1]:  # else no row needs it: a zero word per lane
            out.append(q[:, taken[part]])
            taken[part] += 1
            left -= 1
        else:
            out.append(np.zeros((lanes, w_bytes), np.uint8))
    return np.concatenate(out) if out else np.zeros((0, w_bytes), np.uint8)


@functools.cache
def _stream_requests(geom: StreamGeometry, lanes: int, passes: int, words: int
                     ) -> dict[StreamPart, np.ndarray]:
    """Per part, the stream words [lanes, count] each lane takes of it in order, its rows'
    and tail's (``count = geom.lane_words(part, passes)``), for a stream of ``words``
    words: the request order, a word per lane per request, worked out once per shape."""
    taken: dict[StreamPart, list[range]] = {part: [] for part in StreamPart}
    at = 0
    for part in geom.requests(passes):
        if at >= words:
            break
        if at + lanes > words:
            raise LayoutError(f"weight stream: a request for {lanes} lanes past its end")
        taken[part].append(range(at, at + lanes))
        at += lanes
    if at != words:
        raise LayoutError(f"weight stream: {words - at} words past the last request")
    out = {}
    for part, got in taken.items():
        count = geom.lane_words(part, passes)
        if len(got) < count:
            raise LayoutError(f"weight stream: too few {part.name} words")
        out[part] = np.array(got[:count], dtype=np.int64).reshape(count, lanes).T
    return out


def _transpose_bytes(x: np.ndarray) -> np.ndarray:
    """Each uint64 as an 8 x 8 bit matrix (byte ``i`` a row, bit ``j`` of it a column)
    transposed: bit ``8i + j`` moves to ``8j + i`` (Hacker's Delight, transpose8)."""
    for shift, mask in ((7, 0x00AA00AA00AA00AA), (14, 0x0000CCCC0000CCCC),
                        (28, 0x00000000F0F0F0F0)):
        t = (x ^ (x >> np.uint64(shift))) & np.uint64(mask)
        x = x ^ t ^ (t << np.uint64(shift))
    return x


def _beat_values(geom: StreamGeometry, words_w: np.ndarray, count: int
                 ) -> dict[str, np.ndarray]:
    """The first ``count`` beats' ``codes`` and, with N:M sparsity, ``idx`` [..., count, n]
    (uint8) of WEIGHTS words [..., words, W]. A beat's planes are ``n``-bit rows; eight
    elements' bits in up to eight planes are an 8 x 8 bit matrix, transposed into the
    elements' bytes."""
    n = geom.n
    if n % 8:
        raise LayoutError(f"a beat of {n} elements: its planes do not start on bytes")
    lead = words_w.shape[:-2]
    planes_ = np.ascontiguousarray(words_w).reshape(*lead, -1, geom.slot_planes, n // 8)[
        ..., :count, :, :]

    def value(planes: list[int]) -> np.ndarray:
        rows = np.zeros((*planes_.shape[:-2], n // 8, 8), np.uint8)  # [..., byte, plane]
        for p, plane in enumerate(planes):
            rows[..., p] = planes_[..., plane, :]
        out = _transpose_bytes(rows.view("<u8")).astype("<u8", copy=False)
        return out.view(np.uint8).reshape(*planes_.shape[:-2], n)

    out = {"codes": value([geom.code_plane(0, p) for p in range(geom.desc.bits)])}
    if geom.index_planes:
        out["idx"] = value([geom.index_plane(0, p) for p in range(geom.index_planes)])
    return out


def decode_weight_streams(geom: StreamGeometry, lanes: int, passes: int, streams: np.ndarray
                          ) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode_weight_stream` for channels' streams of one shape at once
    (bytes [C, words, W]), the way the lanes read them: per channel and row (``R = lanes *
    passes``) the kept ``codes`` and (N:M) ``idx`` [C, R, kept] (uint8; INT8 as bytes),
    ``mant`` and ``aux`` [C, R, G] and ``shift`` [C, R]."""
    chans, words, w_bytes = streams.shape
    req = _stream_requests(geom, lanes, passes, words)
    rows = lanes * passes
    beats, n, rw = geom.beats, geom.n, geom.row_words(StreamPart.WEIGHTS)

    def row_major(x: np.ndarray) -> np.ndarray:  # [C, lanes, passes, ...] -> [C, rows, ...]
        return x.swapaxes(1, 2).reshape(chans, rows, *x.shape[3:])

    weights = streams[:, req[StreamPart.WEIGHTS]]  # [C, lanes, words, W]
    body = _beat_values(geom, weights[:, :, :passes * rw].reshape(
        chans, lanes, passes, rw, w_bytes), beats)
    tail = _beat_values(geom, weights[:, :, passes * rw:], geom.tail)
    kept = {}
    for name, b in body.items():
        seq = np.concatenate([b.reshape(chans, lanes, passes * beats, n), tail[name]], axis=2)
        seq = _skew(seq, geom.skew, back=True)[:, :, :passes * beats]
        kept[name] = row_major(seq.reshape(chans, lanes, passes, beats * n))[..., :geom.kept]

    swords = geom.row_words(StreamPart.SCALES)
    scales = row_major(streams[:, req[StreamPart.SCALES]].reshape(
        chans, lanes, passes, swords, w_bytes))
    layout = stream_scale_layout(geom.w_bits)
    entries = stream_scale_entries(geom.w_bits)
    flat = scales.reshape(chans * rows * swords, w_bytes)
    mant = _from_le(flat, _record_dtype(MANT), entries, layout["mant"].offset // 8)
    aux = _from_le(flat, _record_dtype(AUX), entries, layout["aux"].offset // 8)
    shift = decode_record(RowRecordHead, scales[:, :, 0].reshape(chans * rows, w_bytes))
    return {**kept,
            "mant": mant.reshape(chans, rows, -1)[..., :geom.groups],
            "aux": aux.reshape(chans, rows, -1)[..., :geom.groups],
            "shift": shift["shift"].reshape(chans, rows)}


def decode_weight_stream(geom: StreamGeometry, lanes: int, passes: int, stream: np.ndarray
                         ) -> dict[str, np.ndarray]:
    """One channel's :func:`decode_weight_streams`: per row the kept ``codes`` and (N:M)
    ``idx`` [R, kept], ``mant`` and ``aux`` [R, G] and ``shift`` [R]."""
    got = decode_weight_streams(geom, lanes, passes, stream[None])
    return {name: v[0] for name, v in got.items()}


# -- a tile's rows over the memory channels (MATSTREAM) --------------------------------------
# A MATSTREAM tile's rows are spread over every channel: a pass of the engine takes
# ``channels * lanes`` consecutive rows, ``lanes`` of them from each channel, so each channel
# holds one weight stream (above) of its rows, and the streams of all channels start at the
# same byte (the instruction's ``page``). The engine's lanes are channel-major and form
# ``ways`` collector ways of whole channels; a collector transfer (one result per way) takes
# consecutive rows, so that it is one run of a buffer word. Rows past the tile's last fill the
# last pass with zeros; their results are not written.
def collector_ways(channels: int, word_bits: int) -> int:
    """Ways of the result collector: as many INT32 results as fill a word (what a writer at
    line rate takes per cycle), at most one per channel (a way holds whole channels)."""
    return math.gcd(channels, word_bits // WIDE.width)


def pass_row(lane: int, lanes: int, ways: int) -> int:
    """The row within its pass that engine lane ``lane`` (of ``lanes``) computes: its way's
    transfers are ``ways`` consecutive rows."""
    per_way = lanes // ways
    return lane % per_way * ways + lane // per_way


def stream_row(row: int, channels: int, lanes: int, ways: int) -> tuple[int, int, int]:
    """(pass, channel, lane) of a tile's output row ``row`` (the inverse of
    :func:`pass_row`)."""
    per_pass = channels * lanes
    p, q = divmod(row, per_pass)
    engine_lane = q % ways * (per_pass // ways) + q // ways
    return p, engine_lane // lanes, engine_lane % lanes


def stream_passes(n: int, channels: int, lanes: int) -> int:
    """Passes of the engine over a tile of ``n`` rows."""
    return -(-n // (channels * lanes))


@functools.cache
def stream_words(geom: StreamGeometry, lanes: int, passes: int) -> int:
    """Words of one channel's stream of ``passes`` rows per lane (the length of
    :func:`encode_weight_stream`): every request up to the one that takes the last word a
    lane needs (of its rows or its tail), answered with a word per lane."""
    q = STREAM_QUEUE_WORDS
    row = geom.row_requests()
    last = 0
    for part in StreamPart:
        need = geom.lane_words(part, passes)  # the lane's words of ``part``
        pop = need - q - 1  # the pop of ``part`` that asks for the last of them
        if need <= q:  # among the queues' first requests: part, other part, ...
            at = len(StreamPart) * (need - 1) + part
        elif pop < passes * geom.row_words(part):
            rows, i = divmod(pop, geom.row_words(part))
            at = len(StreamPart) * q + rows * len(row) + \
                [j for j, p in enumerate(row) if p is part][i]
        else:  # a tail beat's (WEIGHTS only)
            at = len(StreamPart) * q + passes * len(row) + pop - passes * geom.row_words(part)
        last = max(last, at)
    return lanes * (last + 1)


def _channel_rows(n: int, channels: int, lanes: int, ways: int) -> np.ndarray:
    """[channels, passes * lanes]: the tile row behind each of a channel's stream rows, in
    the stream's order (pass, then lane)."""
    passes = stream_passes(n, channels, lanes)
    p, e = np.meshgrid(np.arange(passes), np.arange(channels * lanes), indexing="ij")
    rows = p * channels * lanes + pass_row(e, channels * lanes, ways)
    return rows.reshape(passes, channels, lanes).transpose(1, 0, 2).reshape(channels, -1)


def encode_tile_streams(geom: StreamGeometry, channels: int, lanes: int, codes: Tensor,
                        keep: Tensor | None, mant: Tensor, shift: Tensor, aux: Tensor | None
                        ) -> list[np.ndarray]:
    """Each channel's weight stream (bytes [words, W]) of a tile's rows (codes [n, K] and
    the rest as :func:`encode_weight_rows` takes them)."""
    c = torch.as_tensor(codes)
    n, k = c.shape
    rows = _channel_rows(n, channels, lanes, collector_ways(channels, geom.w_bits))
    total = rows.size

    def padded(t: Tensor | None, fill: Tensor | None = None) -> Tensor | None:
        if t is None:
            return None
        t = torch.as_tensor(t)
        extra = fill if fill is not None else torch.zeros((total - n, *t.shape[1:]), dtype=t.dtype)
        return torch.cat([t, extra.to(t.dtype)])

    pad_keep = None
    if keep is not None:  # the first N of every block of M: a legal mask for zero rows
        kn, km = geom.desc.nm
        pad_keep = (torch.arange(k) % km < kn).expand(total - n, k)
    parts = [padded(c), padded(keep, pad_keep), padded(mant), padded(shift), padded(aux)]
    out = []
    for chan in range(channels):
        pick = torch.from_numpy(rows[chan])
        mine = [None if t is None else t[pick] for t in parts]
        out.append(encode_weight_stream(geom, lanes, *mine))
    return out


#: Bits of weight streams :func:`decode_tile_streams` unpacks at once (bounds its memory).
DECODE_BITS = 1 << 26


def decode_tile_streams(geom: StreamGeometry, channels: int, lanes: int, n: int,
                        streams: list[np.ndarray]) -> tuple[Tensor, Tensor, Tensor]:
    """The weights of a tile of ``n`` rows from its channels' streams, as
    :func:`decode_weight_rows` gives them: (operands [n, K], mant [n, G], shift [n])."""
    passes = stream_passes(n, channels, lanes)
    if len(streams) != channels:
        raise LayoutError(f"{len(streams)} weight streams for {channels} channels")
    # channels at once, in groups whose unpacked bits stay near DECODE_BITS
    per_channel = 8 * max(1, streams[0].size)
    step = max(1, DECODE_BITS // per_channel)
    got = [decode_weight_streams(geom, lanes, passes, np.stack(streams[c:c + step]))
           for c in range(0, channels, step)]
    ways = collector_ways(channels, geom.w_bits)
    order = np.argsort(_channel_rows(n, channels, lanes, ways).reshape(-1))[:n]

    def rows(name: str) -> np.ndarray:
        return np.concatenate([g[name].reshape(-1, *g[name].shape[2:]) for g in got])[order]

    aux = None if geom.desc.wfmt is WeightFormat.INT8 else rows("aux")
    idx = rows("idx") if geom.desc.nm is not None else None
    ops = weight_operands(geom.desc, rows("codes"), idx, aux, geom.k)
    return ops, torch.from_numpy(rows("mant")), torch.from_numpy(rows("shift"))
