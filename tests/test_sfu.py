"""The SFU element stage and the binary lanes against llmacc.numerics, bit for bit, edge
cases and random."""

import random

import pytest
import torch

from hw.sfu import (
    BINARY_FUNCS,
    BinarySfu,
    ElementIn,
    ElementOut,
    ElementSfu,
    binary_beat,
    binary_out,
)
from llmacc import numerics as N
from llmacc.isa import SFU_FUNCTIONS, SfuFunc, SfuStage, sfu_funcs
from sim import stream_harness as H
from tests.helpers.simulators import SIMULATORS_SLOW_BUILD, run_block

WMAX, WMIN = (1 << 31) - 1, -(1 << 31)


def _trig(c: int) -> tuple[int, int]:
    """The signed cosine and sine packed in the element stage's ``c`` (Q1.14, 16 bits each)."""
    cos, sin = c & 0xFFFF, c >> 16 & 0xFFFF
    return cos - (cos >> 15 << 16), sin - (sin >> 15 << 16)


def _model(f: SfuFunc, a: int, b: int, c: int, shift: int, imm: int, imm2: int):
    t = torch.tensor
    spec = SFU_FUNCTIONS[f]
    reference = getattr(N, spec.reference)
    if spec.operands == "unary":
        return int(reference(t([a]), imm, imm2)[0]), 0
    if spec.operands == "binary":
        return int(reference(t([a]), t([b]), shift)[0]), 0
    if f is SfuFunc.ROPE:
        cos, sin = _trig(c)
        y = N.rope(t([a, b]), t([cos]), t([sin]))
        return int(y[0]), int(y[1])
    if f is SfuFunc.SOFTMAX:
        return int(N.exp2_neg(t([a]))[0]), 0
    if f is SfuFunc.EMBED:
        return int(N.embed_rows(t([[a]]), t([[b]]), t([shift]), 1, 0)[0, 0]), 0
    raise AssertionError(f)


def _case(rng: random.Random, f: SfuFunc, edge: bool) -> dict:
    big = lambda: rng.choice((WMAX, WMIN, 0, 1, -1)) if edge else rng.randint(WMIN, WMAX)  # noqa: E731
    a, b, c, shift, imm, imm2 = big(), big(), 0, rng.randint(-8, 40), 0, 0
    spec = SFU_FUNCTIONS[f]
    drawn = {name: rng.randint(lo, hi) for name, (lo, hi) in spec.ranges.items()}
    shift, imm, imm2 = drawn.get("shift", shift), drawn.get("imm", imm), drawn.get("imm2", imm2)
    if spec.operands == "unary":  # inputs up to 32 in the units of F_in = imm
        a = rng.randint(-(1 << (imm + 5)), 1 << (imm + 5)) if not edge else a
    elif f is SfuFunc.ROPE:
        ang = rng.random() * 6.3
        cos = round(16384 * __import__("math").cos(ang))
        sin = round(16384 * __import__("math").sin(ang))
        c = (cos & 0xFFFF) | (sin & 0xFFFF) << 16
        c -= (c >> 31) << 32
    elif f is SfuFunc.SOFTMAX:
        a = rng.choice((0, 1, 65535, 65536, 32 << 16, (33 << 16) - 1, 33 << 16, WMAX)) \
            if edge else rng.randint(0, 40 << 16)
    elif f is SfuFunc.EMBED:
        a, b = rng.randint(-127, 127), rng.randint(0, N.SCALE_MAX)
    return {"func": f, "a": a, "b": b, "c": c, "shift": shift, "imm": imm, "imm2": imm2}


#: The element stage's functions, and SOFTMAX's exponential step.
FUNCS = [*sfu_funcs(stage=SfuStage.ELEMENT), SfuFunc.SOFTMAX]


def _vectors(seed: int, count: int):
    rng = random.Random(seed)
    inputs, expected = [], []
    for i in range(count):
        f = FUNCS[i % len(FUNCS)]
        case = _case(rng, f, edge=i % 4 == 0)
        y0, y1 = _model(f, case["a"], case["b"], case["c"], case["shift"], case["imm"],
                        case["imm2"])
        inputs.append(H.pack(ElementIn, case))
        expected.append(H.pack(ElementOut, {"y0": y0, "y1": y1}))
    return inputs, expected


@pytest.mark.parametrize("simulator", SIMULATORS_SLOW_BUILD)  # the sigmoid/exp2 ROMs
def test_element_sfu(simulator, seed, request, tmp_path):
    inputs, expected = _vectors(seed, 600 if simulator == "amaranth" else 6000)
    got = run_block(simulator, request, tmp_path, ElementSfu, "element_sfu", inputs,
                    len(expected), seed)
    assert (msg := H.first_mismatch(ElementOut, got, expected)) is None, f"{msg} (seed {seed})"


def _rope_beat(rng: random.Random, lanes: int) -> tuple[list, list, list]:
    """A RoPE beat: ``lanes`` elements, their pairs' cosines and sines as the RoPE row holds
    them (``b[2k]``, ``b[2k + 1]``), and the element stage's results."""
    a, b, ys = [], [], []
    for _ in range(lanes // 2):
        case = _case(rng, SfuFunc.ROPE, edge=rng.random() < 0.25)
        a += [case["a"], case["b"]]
        b += _trig(case["c"])
        ys += _model(SfuFunc.ROPE, case["a"], case["b"], case["c"], 0, 0, 0)
    return a, b, ys


def _binary_vectors(seed: int, count: int, lanes: int):
    """Beats of ADD and MUL, ``count`` pairs of each in the low lanes, garbage above, and
    whole beats of RoPE pairs."""
    rng = random.Random(seed)
    funcs = [*BINARY_FUNCS, SfuFunc.ROPE]
    inputs, expected = [], []
    for i in range(count):
        f = funcs[i % len(funcs)]
        if f is SfuFunc.ROPE:  # the lanes ignore the shift
            a, b, ys = _rope_beat(rng, lanes)
            used, shift = lanes, 0
        else:
            cases = [_case(rng, f, edge=rng.random() < 0.25) for _ in range(lanes)]
            used = rng.randint(1, lanes)
            shift = cases[0]["shift"]
            a, b = [c["a"] for c in cases], [c["b"] for c in cases]
            ys = [_model(f, c["a"], c["b"], 0, shift, 0, 0)[0] for c in cases[:used]]
        inputs.append(H.pack(binary_beat(lanes), {
            "func": f, "a": a, "b": b, "shift": shift, "count": used}))
        expected.append(H.pack(binary_out(lanes), {"y": ys + [0] * (lanes - used),
                                                   "count": used}))
    return inputs, expected


@pytest.mark.parametrize("simulator", SIMULATORS_SLOW_BUILD)
def test_binary_lanes(simulator, seed, request, tmp_path):
    lanes = 4
    inputs, expected = _binary_vectors(seed, 200 if simulator == "amaranth" else 2000, lanes)
    got = run_block(simulator, request, tmp_path, lambda: BinarySfu(lanes), "binary_sfu",
                    inputs, len(expected), seed)
    layout = binary_out(lanes)
    got = H.past_count_zero(layout, got)
    assert (msg := H.first_mismatch(layout, got, expected)) is None, f"{msg} (seed {seed})"
