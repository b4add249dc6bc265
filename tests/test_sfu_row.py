"""The SFU row stage (softmax under the Lambda mask, RMSNorm, INT8/KV quantisation), one
lane and four (input beats of random sizes, results four a beat), and built for the softmax
alone (ATTN's on the u280), and the bit-serial divider and square root, against
llmacc.numerics, bit for bit."""

import random

import pytest
import torch
from amaranth.sim import Simulator

from hw.serial_arith import SerialDivider, SerialSqrt
from hw.sfu_row import RowFunc, RowSfu, row_cmd, row_in, row_out
from llmacc import numerics as N
from sim import stream_harness as H
from tests.helpers.simulators import SIMULATORS_SLOW_BUILD, run_block

WMAX, WMIN = (1 << 31) - 1, -(1 << 31)
MAX_LEN = 48


def _row_values(rng: random.Random, length: int, edge: bool) -> list[int]:
    if edge:
        kind = rng.choice(("zero", "const", "extreme", "tiny"))
        if kind == "zero":
            return [0] * length
        if kind == "const":
            return [rng.randint(WMIN, WMAX)] * length
        if kind == "extreme":
            return [rng.choice((WMAX, WMIN, 0, 1, -1)) for _ in range(length)]
        return [rng.randint(-2, 2) for _ in range(length)]
    bits = rng.randint(1, 31)
    return [rng.randint(-(1 << bits), (1 << bits) - 1) for _ in range(length)]


def _row_case(rng: random.Random, func: RowFunc, edge: bool) -> tuple[dict, list[int],
                                                                      list[int], list[dict]]:
    """One row: (command, values, gammas, expected outputs)."""
    length = rng.choice((1, 2, MAX_LEN)) if edge else rng.randint(1, MAX_LEN)
    v = _row_values(rng, length, edge)
    gamma = [0] * length
    t = torch.tensor(v)
    zero = {"m": 0, "e": 0, "mid": 0}
    if func is RowFunc.SOFTMAX:
        pos = rng.choice((0, length - 1, length + 5, rng.randint(0, 2 * length)))
        window = rng.choice((0, 0, 1, rng.randint(1, length + 2)))
        sink = rng.choice((0, 1, rng.randint(0, length)))
        cmd = row_cmd(func, length, pos=pos, sink=sink, window=window)
        mask = N.lambda_mask(torch.tensor([pos]), length, sink, window)
        y = N.softmax(t[None], mask)[0]
        outs = [{"y": int(a), **zero} for a in y]
    elif func is RowFunc.RMSNORM:
        gamma = [rng.randint(-(1 << 15), (1 << 15) - 1) for _ in range(length)]
        gexp = rng.randint(-4, 24)
        eps = rng.choice((0, 1, (1 << 47) - 1, -(1 << 47), rng.randint(0, 1 << 40)))
        cmd = row_cmd(func, length, gamma_exp=gexp, eps=eps)
        y = N.rmsnorm(t[None], torch.tensor(gamma), gexp, eps, 0)[0]
        outs = [{"y": int(a), **zero} for a in y]
    else:
        bits, centre = rng.choice(((8, 0), (4, 1), (8, 1)))
        qmax = (1 << (bits - 1)) - 1
        cmd = row_cmd(func, length, qmax=qmax, centre=centre)
        if centre:
            q, m, e, mid = N.quantize_kv(t[None], length, bits)
        else:
            q, m, e = N.quantize_symmetric(t[None], qmax)
            mid = torch.zeros(1, dtype=torch.int64)
        scale = {"m": int(m[0]), "e": int(e[0]), "mid": int(mid[0])}
        outs = [{"y": int(a), **scale} for a in q[0]]
    for index, o in enumerate(outs):
        o["last"] = int(index == length - 1)
    return cmd, v, gamma, outs


def _beats(outs: list[dict], lanes: int) -> list[dict]:
    """A row's outputs as the row stage's beats of ``lanes`` elements."""
    beats = []
    for first in range(0, len(outs), lanes):
        part = outs[first:first + lanes]
        ys = [o["y"] for o in part]
        beats.append({**{k: part[-1][k] for k in ("m", "e", "mid", "last")},
                      "y": ys + [0] * (lanes - len(ys)), "count": len(ys)})
    return beats


def _in_beats(rng: random.Random, cmd: dict, v: list[int], gamma: list[int],
              lanes: int) -> list[dict]:
    """A row as input beats of random sizes, each inside one word of the row memory, its
    elements in their lanes and random values in the others."""
    beats, index = [], 0
    while index < len(v):
        lane = index % lanes
        count = rng.randint(1, min(lanes - lane, len(v) - index))
        a = [rng.randint(WMIN, WMAX) for _ in range(lanes)]
        g = [rng.randint(-(1 << 15), (1 << 15) - 1) for _ in range(lanes)]
        a[lane:lane + count] = v[index:index + count]
        g[lane:lane + count] = gamma[index:index + count]
        beats.append({"cmd": cmd, "a": a, "gamma": g, "count": count})
        index += count
    return beats


def _vectors(seed: int, rows: int, lanes: int, funcs: tuple) -> tuple[list[int], list[int]]:
    rng = random.Random(seed)
    inputs, expected = [], []
    for r in range(rows):
        func = funcs[r % len(funcs)]
        cmd, v, gamma, outs = _row_case(rng, func, edge=r % 4 == 0)
        inputs += [H.pack(row_in(lanes), b) for b in _in_beats(rng, cmd, v, gamma, lanes)]
        expected += [H.pack(row_out(lanes), b) for b in _beats(outs, lanes)]
    return inputs, expected


ALL = (RowFunc.SOFTMAX, RowFunc.RMSNORM, RowFunc.QUANT)


@pytest.mark.parametrize(("lanes", "funcs"), [(1, ALL), (4, ALL), (4, (RowFunc.SOFTMAX,))],
                         ids=["1-lane", "4-lane", "4-lane-softmax-only"])
@pytest.mark.parametrize("simulator", SIMULATORS_SLOW_BUILD)
def test_row_sfu(simulator, lanes, funcs, seed, request, tmp_path):
    inputs, expected = _vectors(seed, 60 if simulator == "amaranth" else 150, lanes, funcs)
    got = run_block(simulator, request, tmp_path, lambda: RowSfu(MAX_LEN, lanes, funcs),
                    f"row_sfu_{lanes}_{len(funcs)}", inputs, len(expected), seed)
    got = H.past_count_zero(row_out(lanes), got)
    assert (msg := H.first_mismatch(row_out(lanes), got, expected)) is None, \
        f"{msg} (seed {seed})"


def _run_serial(dut, start_args: list[dict], result: str, cycles: int) -> list[int]:
    out = []

    async def bench(ctx):
        for args in start_args:
            for name, value in args.items():
                ctx.set(getattr(dut, name), value)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            await ctx.tick().repeat(cycles)
            assert not ctx.get(dut.busy)
            out.append(ctx.get(getattr(dut, result)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


def test_serial_divider_and_sqrt(seed):
    rng = random.Random(seed)
    nums = [rng.randrange(1 << rng.randint(1, 40)) for _ in range(40)] + [0, (1 << 40) - 1]
    dens = [rng.randrange(1, 1 << rng.randint(1, 20)) for _ in range(40)] + [1, (1 << 20) - 1]
    pairs = list(zip(nums, dens, strict=True))
    got = _run_serial(SerialDivider(40, 20), [{"num": a, "den": b} for a, b in pairs],
                      "quotient", 40)
    assert got == [a // b for a, b in pairs], f"seed {seed}"
    xs = [rng.randrange(1 << rng.randint(1, 44)) for _ in range(40)] + [0, 1, (1 << 44) - 1]
    got = _run_serial(SerialSqrt(44), [{"x": x} for x in xs], "root", 22)
    assert got == [int(N.isqrt(x)) for x in xs], f"seed {seed}"
