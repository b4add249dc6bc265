"""The controller against the ISA: legality exactly as isa.decode, dispatch in program order,
token-ordered issue, register snapshots, faults and counters."""

import json
import random
from pathlib import Path

import pytest
from amaranth.hdl import Module, Signal, Value
from amaranth.sim import Simulator

from hw.controller import Controller, IssueLayout, legality
from llmacc import isa
from llmacc.isa import Opcode, Reg, SysFunc, Unit
from llmacc.kernel import Fault
from sim import stream_harness as H
from sim import verilator

UNITS = list(Unit)


def random_program(rng: random.Random, length: int) -> list[isa.Instruction]:
    """Valid programs with random tokens that never deadlock: every wait on (src -> dst)
    is covered by an earlier release of src to dst that no earlier wait consumed."""
    program = [isa.make(Opcode.SYS, func=SysFunc.SETREG, reg=Reg.POS, imm=rng.randrange(100))]
    pending = {(a, b): 0 for a in UNITS for b in UNITS}
    ops = [Opcode.LOAD, Opcode.STORE, Opcode.MATVEC, Opcode.MATMAT, Opcode.SFU, Opcode.ATTN]
    for _ in range(length):
        if rng.random() < 0.1:
            program.append(isa.make(Opcode.SYS, func=SysFunc.SETREG, reg=rng.choice(list(Reg)),
                                    imm=rng.randrange(1 << 32)))
            continue
        if rng.random() < 0.03:
            program.append(isa.make(Opcode.SYS, func=SysFunc.SYNC))
            continue
        op = rng.choice(ops)
        unit = isa.UNIT_OF[op]
        wait = 0
        for src in UNITS:
            if pending[(src, unit)] and rng.random() < 0.6:
                wait |= 1 << src.value
                pending[(src, unit)] -= 1
        release = 0
        for dst in UNITS:
            if rng.random() < 0.3:
                release |= 1 << dst.value
                pending[(unit, dst)] += 1
        fields = {"m": 1} if op is Opcode.MATVEC else {}
        program.append(isa.make(op, wait=wait, release=release, **fields))
    # consume every leftover token so that HALT finds none
    for (src, dst), count in pending.items():
        for _ in range(count):
            op = next(o for o in ops if isa.UNIT_OF[o] is dst)
            fields = {"m": 1} if op is Opcode.MATVEC else {}
            program.append(isa.make(op, wait=1 << src.value, **fields))
    program.append(isa.make(Opcode.SYS, func=SysFunc.HALT))
    return program


def run_controller(words: list[int], seed: int, max_cycles: int = 20000):
    """Simulate with unit models of random latency; returns (issues, final state)."""
    rng = random.Random(seed)
    dut = Controller(queue_depth=4)
    issues: list[tuple[int, int, int, dict]] = []  # (cycle, unit, pc, regs)
    completions: list[tuple[int, int, int]] = []  # (cycle, unit, pc)
    state = {}

    async def feeder(ctx):
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for w in words:
            ctx.set(Value.cast(dut.insn.payload), w)
            ctx.set(dut.insn.valid, 1)
            await ctx.tick().until(dut.insn.ready | dut.error)
            if ctx.get(dut.error):
                break
        ctx.set(dut.insn.valid, 0)

    def unit_model(u: Unit):
        port = getattr(dut, f"issue_{u.name.lower()}")
        complete = getattr(dut, f"complete_{u.name.lower()}")

        async def run(ctx):
            cycle = 0
            while True:
                ctx.set(port.ready, 1)
                _, _, valid, payload = await ctx.tick().sample(port.valid,
                                                               Value.cast(port.payload))
                cycle += 1
                if valid:
                    ctx.set(port.ready, 0)
                    entry = H.unpack(IssueLayout, payload)
                    issues.append((cycle, u.value, entry["pc"], entry["regs"]))
                    for _ in range(rng.randint(0, 6)):
                        await ctx.tick()
                        cycle += 1
                    ctx.set(complete, 1)
                    await ctx.tick()
                    cycle += 1
                    ctx.set(complete, 0)
                    completions.append((cycle, u.value, entry["pc"]))
        return run

    async def watcher(ctx):
        for _ in range(max_cycles):
            await ctx.tick()
            if ctx.get(dut.done) or ctx.get(dut.error):
                break
        for name in ("done", "error", "status", "fault_pc", "cycles", "dispatched"):
            state[name] = ctx.get(getattr(dut, name))
        for u in UNITS:
            for kind in ("busy", "stall"):
                key = f"{kind}_cycles_{u.name.lower()}"
                state[key] = ctx.get(getattr(dut, key))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(feeder, background=True)
    for u in UNITS:
        sim.add_testbench(unit_model(u), background=True)
    sim.add_testbench(watcher)
    sim.run()
    return issues, completions, state


def check_schedule(program, issues, completions):
    """Every unit instruction issued once, in program order per unit, after its tokens, with
    the registers of its dispatch point."""
    regs = dict.fromkeys(Reg, 0)
    expected = {}
    for pc, insn in enumerate(program):
        if insn.opcode is Opcode.SYS:
            if insn.func is SysFunc.SETREG:
                regs[insn.reg] = insn.imm
            continue
        expected[pc] = (insn, [regs[r] for r in Reg])
    assert sorted(pc for _, _, pc, _ in issues) == sorted(expected)
    for u in UNITS:
        mine = [pc for _, unit, pc, _ in issues if unit == u.value]
        assert mine == sorted(mine), f"{u.name} issued out of order: {mine}"
    done_at = {pc: cycle for cycle, _, pc in completions}
    for cycle, unit, pc, got_regs in issues:
        insn, want_regs = expected[pc]
        assert got_regs == want_regs, f"pc {pc}: registers {got_regs} != {want_regs}"
        for src in UNITS:
            if insn.wait >> src.value & 1:
                # the k-th wait on (src -> unit) needs the k-th release of src to unit done
                waits = [p for p in sorted(expected) if p <= pc and expected[p][0].unit is
                         Unit(unit) and expected[p][0].wait >> src.value & 1]
                rels = [p for p in sorted(expected) if expected[p][0].unit is src and
                        expected[p][0].release >> unit & 1]
                producer = rels[len(waits) - 1]
                assert done_at[producer] <= cycle, (
                    f"pc {pc} issued at {cycle} before its token from pc {producer} "
                    f"(done at {done_at[producer]})")


@pytest.mark.parametrize("length", [30, 120])
def test_random_programs_issue_in_token_order(seed, length):
    rng = random.Random(seed + length)
    program = random_program(rng, length)
    words = [isa.encode(i) for i in program]
    issues, completions, state = run_controller(words, seed)
    assert state["done"] == 1 and state["error"] == 0, (state, f"seed {seed}")
    check_schedule(program, issues, completions)
    assert state["dispatched"] == len(program)
    # busy counters: one cycle per issue plus the model's latency, summed per unit
    for u in UNITS:
        spans = [done - start for start, unit, pc, _ in issues if unit == u.value
                 for done, unit2, pc2 in completions if pc2 == pc]
        assert state[f"busy_cycles_{u.name.lower()}"] == sum(spans), u.name


def _decode_log(log):
    issues, completions = [], []
    for cycle, unit, raw in log["issues"]:
        entry = H.unpack(IssueLayout, int(raw, 16))
        issues.append((cycle, unit, entry["pc"], entry["regs"]))
    for cycle, unit, raw in log["completions"]:
        completions.append((cycle, unit, H.unpack(IssueLayout, int(raw, 16))["pc"]))
    return issues, completions, log["state"]


@pytest.fixture(scope="module")
def controller_model(verilator_env):
    return verilator.build(Controller(queue_depth=4), "controller")


def run_verilator(model, words, seed, work: Path, max_cycles=50000):
    work.mkdir(parents=True, exist_ok=True)
    out = work / "log.json"
    (work / "program.json").write_text(json.dumps({
        "words": [hex(w) for w in words], "max_cycles": max_cycles, "out": str(out)}))
    model.run("sim.benches.tb_controller", seed=seed, test_dir=work,
              extra_env={"LLMACC_VECTORS": str(work / "program.json")})
    return _decode_log(json.loads(out.read_text()))


@pytest.mark.verilator
def test_controller_verilator(controller_model, seed, tmp_path):
    for trial in range(4):
        rng = random.Random(seed * 10 + trial)
        program = random_program(rng, 150)
        issues, completions, state = run_verilator(
            controller_model, [isa.encode(i) for i in program], seed + trial,
            tmp_path / f"t{trial}")
        assert state["done"] == 1 and state["error"] == 0, (state, f"seed {seed}")
        check_schedule(program, issues, completions)
    # an illegal word: error, status and pc
    words = [isa.encode(isa.make(Opcode.LOAD)), isa.encode(isa.make(Opcode.LOAD)) | 1 << 127]
    _, _, state = run_verilator(controller_model, words, seed, tmp_path / "illegal", 500)
    assert (state["error"], state["status"], state["fault_pc"]) == (1, Fault.RESERVED, 1)


def random_word(rng: random.Random) -> int:
    """Mostly near-legal words: a legal instruction with a few random bits flipped."""
    op = rng.choice([o for o in Opcode if o is not Opcode.SYS])
    word = isa.encode(isa.make(op, **({"m": 1} if op is Opcode.MATVEC else {})))
    for _ in range(rng.randint(0, 3)):
        word ^= 1 << rng.randrange(isa.WORD_BITS)
    return word


def python_fault(word: int):
    try:
        isa.decode(word)
        return None
    except isa.IllegalInstruction:
        return True


def test_legality_equals_the_python_decoder(seed):
    rng = random.Random(seed)
    sig = Signal(isa.InstructionWord)
    fault, illegal = legality(sig)
    out_f, out_i = Signal(8), Signal()
    m = Module()
    m.d.comb += [out_f.eq(fault), out_i.eq(illegal)]
    words = [random_word(rng) for _ in range(3000)] + [rng.getrandbits(128) for _ in range(500)]

    async def bench(ctx):
        for w in words:
            ctx.set(Value.cast(sig), w)
            got = bool(ctx.get(out_i))
            assert got == bool(python_fault(w)), f"word {w:#034x}: RTL illegal={got} (seed {seed})"

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()


def test_illegal_word_stops_with_error_and_pc(seed):
    program = [isa.make(Opcode.SYS, func=SysFunc.SETREG, reg=Reg.POS, imm=3),
               isa.make(Opcode.LOAD)]
    words = [isa.encode(i) for i in program] + [0xF]  # opcode 15
    issues, _, state = run_controller(words, seed, max_cycles=200)
    assert state["error"] == 1 and state["status"] == Fault.OPCODE and state["fault_pc"] == 2
    assert state["done"] == 0


def test_deadlock_and_leftover_tokens_are_faults(seed):
    stuck = [isa.make(Opcode.SFU, wait=1 << Unit.LOAD.value),
             isa.make(Opcode.SYS, func=SysFunc.HALT)]
    _, _, state = run_controller([isa.encode(i) for i in stuck], seed, max_cycles=200)
    assert state["error"] == 1 and state["status"] == Fault.DEADLOCK
    left = [isa.make(Opcode.LOAD, release=1 << Unit.SFU.value),
            isa.make(Opcode.SYS, func=SysFunc.HALT)]
    _, _, state = run_controller([isa.encode(i) for i in left], seed, max_cycles=200)
    assert state["error"] == 1 and state["status"] == Fault.TOKENS_LEFT
