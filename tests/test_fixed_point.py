"""The Amaranth rounding of ``hw/fixed_point.py`` against ``numerics.round_shift`` and
``saturate``, bit for bit: signed and unsigned values, ties, left and right shifts, shifts
past the value's width."""

import random

import pytest
import torch
from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.fixed_point import round_shift, saturate
from hw.pipeline import StreamedCore
from llmacc import numerics as N
from sim import stream_harness as H
from tests.helpers.simulators import SIMULATORS, run_block

X_BITS, S_BITS, OUT_BITS = 20, 8, 16
OUT = data.StructLayout({"y": signed(OUT_BITS)})


def operands(x_signed: bool) -> data.StructLayout:
    return data.StructLayout({"x": signed(X_BITS) if x_signed else X_BITS,
                              "s": signed(S_BITS)})


class RoundCore(wiring.Component):
    """``saturate(round_shift(x, s), OUT_BITS)`` registered once, as a
    :class:`hw.pipeline.StreamedCore` core."""

    latency = 1

    def __init__(self, x_signed: bool):
        super().__init__({"inp": In(operands(x_signed)), "ce": In(1),
                          "out": Out(OUT)})

    def elaborate(self, platform):
        m = Module()
        y = Signal(signed(OUT_BITS))
        m.d.comb += y.eq(saturate(round_shift(self.inp.x, self.inp.s, OUT_BITS + 1), OUT_BITS))
        with m.If(self.ce):
            m.d.sync += self.out.y.eq(y)
        return m


def _cases(rng: random.Random, x_signed: bool, count: int):
    lo, hi = (-(1 << (X_BITS - 1)), (1 << (X_BITS - 1)) - 1) if x_signed else (0, (1 << X_BITS) - 1)
    xs, ss = [], []
    for c in range(count):
        s = rng.randint(-(1 << (S_BITS - 1)), (1 << (S_BITS - 1)) - 1) if c % 3 else \
            rng.randint(-3, X_BITS + 3)
        x = rng.randint(lo, hi)
        if c % 4 == 0 and 0 < s < X_BITS:  # a tie: exactly half of the last kept bit
            x = max(lo, min(hi, (rng.randint(lo >> s, hi >> s) << s) | (1 << (s - 1))))
        xs.append(x)
        ss.append(s)
    want = N.saturate(N.round_shift(torch.tensor(xs), torch.tensor(ss)), OUT_BITS)
    return xs, ss, want.tolist()


@pytest.mark.parametrize("x_signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("simulator", SIMULATORS)
def test_round_shift_matches_numerics(simulator, x_signed, seed, request, tmp_path):
    xs, ss, want = _cases(random.Random(seed), x_signed, 400 if simulator == "amaranth" else 4000)
    layout = operands(x_signed)
    inputs = [H.pack(layout, {"x": x, "s": s}) for x, s in zip(xs, ss, strict=True)]
    expected = [H.pack(OUT, {"y": y}) for y in want]
    got = run_block(simulator, request, tmp_path, lambda: StreamedCore(RoundCore(x_signed)),
                    f"round_shift_{'s' if x_signed else 'u'}", inputs, len(expected), seed)
    assert (msg := H.first_mismatch(OUT, got, expected)) is None, \
        f"{msg} (seed {seed})"
