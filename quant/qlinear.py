"""A quantized linear layer in the stored format the hardware reads.

``QLinear`` holds codes, per-group scale mantissas with one exponent per output row, the W2
zero points or the mixed-type ids, and an optional N:M keep mask. ``operands()`` is the on-chip
weight decoder (numerics.decode_weights); ``dequant()`` is the real-valued matrix the
fake-quant model multiplies by, so the fake-quant and integer models use identical weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from llmacc import numerics as N
from llmacc.wdtypes import FORMAT_BITS as FORMAT_BITS
from llmacc.wdtypes import FORMATS as FORMATS

Tensor = torch.Tensor


@dataclass
class QLinear:
    fmt: str  #: one of FORMATS (isa.WeightFormat)
    group: int  #: weights per scale group (power of two >= 8)
    in_features: int  #: K before padding to a multiple of the group
    codes: Tensor  #: [N, Kp] codes (int8: the signed operand itself)
    mant: Tensor  #: [N, Kp / group] uint16 scale mantissas
    row_exp: Tensor  #: [N] scale exponents: real scale = mant * 2**-row_exp
    zero_points: Tensor | None = None  #: w2: [N, G] in 0..3
    dtype_ids: Tensor | None = None  #: mixed3/mixed4: [N, G] family type ids
    keep: Tensor | None = None  #: bool [N, Kp] N:M mask (None = dense)
    sparsity: tuple[int, int] | None = None  #: (n, m) when ``keep`` is set

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    @property
    def padded_in(self) -> int:
        return self.codes.shape[1]

    def operands(self) -> Tensor:
        """Decoded signed weight operands [N, Kp] (pruned weights are 0); decoded once per
        layer object, so callers must not modify the result in place."""
        return self._operands

    @cached_property
    def _operands(self) -> Tensor:
        w = N.decode_weights(self.codes, self.dtype_ids, self.fmt, self.group, self.zero_points)
        return w if self.keep is None else torch.where(self.keep, w, 0)

    def scales(self) -> Tensor:
        """Real per-group scales [N, G] as stored (mantissa * 2**-E)."""
        return N.decode_scales(self.mant, self.row_exp)

    def dequant(self) -> Tensor:
        """The real float32 weight [N, K] this layer stands for."""
        s = self.scales().repeat_interleave(self.group, dim=-1)
        return (self.operands().to(torch.float64) * s)[:, :self.in_features].float()

    def with_scale(self, factor: float) -> QLinear:
        """The same codes with every scale multiplied by ``factor`` (re-encoded)."""
        mant, exp = N.encode_scales(self.scales() * factor)
        return QLinear(self.fmt, self.group, self.in_features, self.codes, mant, exp,
                       self.zero_points, self.dtype_ids, self.keep, self.sparsity)

    def storage_bits(self) -> int:
        """Bits this layer occupies off chip: codes (kept ones), scales, per-group metadata."""
        n, kp = self.codes.shape
        kept = kp if self.sparsity is None else kp // self.sparsity[1] * self.sparsity[0]
        bits = n * kept * FORMAT_BITS[self.fmt] + self.mant.numel() * N.SCALE_BITS
        if self.sparsity is not None:
            bits += n * kept * (self.sparsity[1] - 1).bit_length()
        if self.fmt != "int8":
            bits += self.mant.numel() * (2 if self.fmt == "w2" else 3)
        return bits
