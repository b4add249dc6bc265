"""Dependency tokens (compiler/tokens.py): every hazard covered, and never more tokens of a
unit pair outstanding than the controller's counters hold."""

import random

import pytest

from compiler.memory_plan import CompileError
from compiler.tokens import Access, Op, assign_tokens, token_limit
from llmacc.config import preset
from llmacc.isa import Buffer, Opcode, Unit


def _fan_out(n: int) -> list[Op]:
    """``n`` LOADs into separate KV words, then ``n`` SFU instructions each writing over one,
    each after a LOAD of other words (as a layer's header LOADs and its KV heads' KVQUANTs,
    each KV head after the loads of the one before, are on a model of many KV heads)."""
    ops = [Op(Opcode.LOAD, {}, [], [Access(Buffer.KV, i, i + 1)]) for i in range(n)]
    for i in range(n):
        ops.append(Op(Opcode.LOAD, {}, [], [Access(Buffer.ACT, i, i + 1)]))
        ops.append(Op(Opcode.SFU, {}, [], [Access(Buffer.KV, i, i + 1)]))
    return ops


def _replay(ops: list[Op]) -> tuple[dict, dict]:
    """Tokens matched in order: for each instruction, the latest position of every other
    unit it has synchronised with; and per unit pair, the most tokens outstanding in
    program order."""
    sent = {(a, b): [] for a in Unit for b in Unit}
    seen = {(a, b): -1 for a in Unit for b in Unit}
    synced, most = {}, dict.fromkeys(sent, 0)
    for j, op in enumerate(ops):
        for other in Unit:
            if op.wait >> other.value & 1:
                seen[(other, op.unit)] = max(seen[(other, op.unit)],
                                             sent[(other, op.unit)].pop(0))
        synced[j] = {v: seen[(v, op.unit)] for v in Unit}
        for other in Unit:
            if op.release >> other.value & 1:
                sent[(op.unit, other)].append(j)
                most[(op.unit, other)] = max(most[(op.unit, other)],
                                             len(sent[(op.unit, other)]))
    return synced, most


def _covered(ops: list[Op], synced: dict) -> list[str]:
    return [f"{j} ({op.opcode.name}) does not wait for {i} ({ops[i].opcode.name})"
            for j, op in enumerate(ops) for i in range(j)
            if ops[i].unit is not op.unit and ops[i].conflicts(op)
            and synced[j][ops[i].unit] < i]


def test_limit_is_the_counter_less_the_queue():
    cfg = preset("u280")
    assert token_limit(cfg) == 63 - cfg.insn_queue_depth - 1


@pytest.mark.parametrize("n, limit", [(6, 8), (64, 54), (20, 4)])
def test_fan_out_keeps_within_the_limit(n, limit):
    ops = _fan_out(n)
    assign_tokens(ops, limit)
    synced, most = _replay(ops)
    assert not _covered(ops, synced)
    assert most[(Unit.LOAD, Unit.SFU)] == min(n, limit)
    if n <= limit:  # under the limit every consumer waits for its own producer only
        assert [op.release for op in ops[:n]] == [1 << Unit.SFU.value] * n


def _random_ops(rng: random.Random, count: int) -> list[Op]:
    """Instructions of every unit over two buffers and two external channels (bytes)."""
    units = (Opcode.LOAD, Opcode.SFU, Opcode.STORE, Opcode.ATTN)
    ops = []
    for _ in range(count):
        space = rng.choice((Buffer.ACT, Buffer.KV, 0, 1))
        lo = rng.randrange(40) * (1 if isinstance(space, Buffer) else 64)
        acc = [Access(space, lo, lo + rng.randint(0, 4) * (1 if isinstance(space, Buffer)
                                                             else 64))]
        ops.append(Op(rng.choice(units), {}, acc if rng.random() < 0.5 else [],
                      acc if rng.random() < 0.7 else []))
    return ops


def test_random_programs_are_covered_and_within_the_limit(seed):
    ops = _random_ops(random.Random(seed), 300)
    assign_tokens(ops, 3)
    synced, most = _replay(ops)
    assert not _covered(ops, synced), f"seed {seed}"
    assert max(most.values()) <= 3, f"seed {seed}: {most}"


def test_a_token_comes_from_the_latest_conflict(seed):
    """Under the limit each instruction waits exactly for the latest earlier instruction of
    each other unit that conflicts with it, unless it has synchronised with one as late."""
    ops = _random_ops(random.Random(seed), 300)
    assign_tokens(ops, len(ops))
    synced, _ = _replay(ops)
    for j, op in enumerate(ops):
        for unit in Unit:
            if unit is op.unit:
                continue
            latest = max((i for i in range(j) if ops[i].unit is unit
                          and ops[i].conflicts(op)), default=-1)
            assert synced[j][unit] >= latest, f"seed {seed}: {j} misses {latest}"
            if op.wait >> unit.value & 1:
                assert synced[j][unit] == latest, f"seed {seed}: {j} waits past {latest}"


def test_a_burst_after_its_producers_takes_one_token():
    ops = [Op(Opcode.LOAD, {}, [], [Access(Buffer.KV, i, i + 1)]) for i in range(3)]
    ops += [Op(Opcode.SFU, {}, [], [Access(Buffer.KV, i, i + 1)]) for i in range(3)]
    assign_tokens(ops, 2)
    synced, most = _replay(ops)
    assert not _covered(ops, synced)
    assert [op.release for op in ops[:3]] == [0, 0, 1 << Unit.SFU.value]
    assert most[(Unit.LOAD, Unit.SFU)] == 1
    with pytest.raises(CompileError, match="more than 0 tokens from LOAD to SFU"):
        assign_tokens(ops, 0)
