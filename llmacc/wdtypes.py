"""The weight data types, weight formats and sparsity patterns, in plain Python.

:mod:`llmacc.numerics` (the decoders and quantisers, in torch) and :mod:`quant.schemes` read
them from here, so that the schemes, and the command line's ``--help`` that lists them, load
without torch (as :mod:`llmacc.widths` does for the instruction fields).
"""

from __future__ import annotations

from enum import IntEnum

#: The stored weight formats (``isa.WeightFormat``) and their code widths.
FORMATS = ("w2", "mixed3", "mixed4", "int8")
FORMAT_BITS = {"w2": 2, "mixed3": 3, "mixed4": 4, "int8": 8}


class WDType(IntEnum):
    """Per-group weight data types. Values are the ids stored in the META buffer."""

    # 3-bit family (WeightFormat.MIXED3): type id = value - INT3
    INT3 = 0
    FP3 = 1
    FP3_ER_POS = 2
    FP3_ER_NEG = 3
    FP3_EA_POS = 4
    FP3_EA_NEG = 5
    # 4-bit family (WeightFormat.MIXED4): type id = value - INT4
    INT4 = 8
    FP4 = 9
    FP4_ER_POS = 10
    FP4_ER_NEG = 11
    FP4_EA_POS = 12
    FP4_EA_NEG = 13
    # fixed formats
    W2 = 16  #: 2-bit asymmetric: operand = code - zero_point
    INT8 = 17  #: symmetric 8-bit (embedding, classifier)

    @property
    def bits(self) -> int:
        return 3 if self < 8 else 4 if self < 16 else 2 if self is WDType.W2 else 8

    @property
    def type_id(self) -> int:
        """Id within its family (what a group's META entry stores)."""
        return int(self) & 7


#: Magnitudes of the sign-magnitude families; code = sign << (bits-1) | index.
_MAGNITUDES = {
    WDType.INT3: (0, 1, 2, 3),
    WDType.FP3: (0, 1, 2, 4),
    WDType.INT4: (0, 1, 2, 3, 4, 5, 6, 7),
    WDType.FP4: (0, 1, 2, 3, 4, 6, 8, 12),  # E2M1 x 2
}
#: The special value that replaces negative zero (BitMoD: ER = extra resolution, EA = extra
#: asymmetry; POS/NEG variants).
_SPECIAL = {
    WDType.FP3_ER_POS: (WDType.FP3, 3), WDType.FP3_ER_NEG: (WDType.FP3, -3),
    WDType.FP3_EA_POS: (WDType.FP3, 6), WDType.FP3_EA_NEG: (WDType.FP3, -6),
    WDType.FP4_ER_POS: (WDType.FP4, 10), WDType.FP4_ER_NEG: (WDType.FP4, -10),
    WDType.FP4_EA_POS: (WDType.FP4, 16), WDType.FP4_EA_NEG: (WDType.FP4, -16),
}

MIXED3_TYPES = tuple(t for t in WDType if t < 8)
MIXED4_TYPES = tuple(t for t in WDType if 8 <= t < 16)


def code_table(dtype: WDType) -> tuple[int, ...]:
    """Decoded operand for every code of a sign-magnitude data type (the decode ROM row)."""
    base, special = _SPECIAL.get(dtype, (dtype, 0))
    mags = _MAGNITUDES[base]
    half = len(mags)
    table = [m for m in mags] + [-m for m in mags]
    table[half] = special  # negative zero carries the special value (0 for INT/plain FP)
    return tuple(table)


#: The N:M patterns the lanes run (dense is 16:16).
SPARSITY_PATTERNS = {(16, 16), (2, 16), (4, 16), (8, 16), (2, 4)}
