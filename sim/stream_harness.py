"""Drive a stream-in/stream-out block with packed vectors, in Amaranth's simulator or Verilator.

Every datapath block of ``hw/`` has one input stream ``i`` and one output stream ``o``
(``amaranth.lib.stream``) whose payloads are ``lib.data`` layouts. A test is then just a list
of input payloads and the payloads its golden model expects, in order. :func:`pack` and
:func:`unpack` convert between field dicts and the raw payload integers; :func:`run_amaranth`
is the fast tier, :func:`run_verilator` runs the same vectors through the generated Verilog
with cocotb (``sim/benches/tb_stream.py``). Both insert random idle cycles on the input and
random back-pressure on the output, from the test's seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from amaranth.hdl import Shape, Value
from amaranth.lib import data, wiring
from amaranth.sim import Simulator


class VectorError(ValueError):
    """A payload value that does not fit its field (never truncated silently)."""


def pack(shape: Any, value: Any, where: str = "payload") -> int:
    """Raw bits of ``value`` (an int, a dict for a struct, a list for an array) in ``shape``."""
    if isinstance(shape, data.ArrayLayout):
        if len(value) != shape.length:
            raise VectorError(f"{where}: {len(value)} elements, layout has {shape.length}")
        size = Shape.cast(shape.elem_shape).width if not isinstance(
            shape.elem_shape, data.Layout) else shape.elem_shape.size
        return sum(pack(shape.elem_shape, v, f"{where}[{i}]") << (i * size)
                   for i, v in enumerate(value))
    if isinstance(shape, data.Layout):
        unknown = set(value) - {name for name, _ in shape}
        if unknown:
            raise VectorError(f"{where}: unknown fields {sorted(unknown)}")
        return sum(pack(f.shape, value.get(name, 0), f"{where}.{name}") << f.offset
                   for name, f in shape)
    if hasattr(shape, "__members__"):  # an enum shape
        value = value.value if hasattr(value, "value") else value
        shape = Shape.cast(shape)
    s = Shape.cast(shape)
    lo = -(1 << (s.width - 1)) if s.signed else 0
    hi = (1 << (s.width - (1 if s.signed else 0))) - 1
    if not isinstance(value, int) or not lo <= value <= hi:
        raise VectorError(f"{where}: {value!r} does not fit {s}")
    return value & ((1 << s.width) - 1)


def unpack(shape: Any, raw: int) -> Any:
    """Inverse of :func:`pack` (enums come back as their integer values)."""
    if isinstance(shape, data.ArrayLayout):
        elem = shape.elem_shape
        size = elem.size if isinstance(elem, data.Layout) else Shape.cast(elem).width
        return [unpack(elem, (raw >> (i * size)) & ((1 << size) - 1))
                for i in range(shape.length)]
    if isinstance(shape, data.Layout):
        return {name: unpack(f.shape, (raw >> f.offset) & ((1 << f.width) - 1))
                for name, f in shape}
    s = Shape.cast(shape)
    if s.signed and raw >> (s.width - 1):
        return raw - (1 << s.width)
    return raw


def past_count_zero(layout: Any, beats: list[int], lanes: str = "y") -> list[int]:
    """Each beat of ``layout`` with its ``lanes`` past its ``count`` zero: what a lane beyond
    the count holds is not defined, so outputs compare without it."""
    def blank(beat: dict) -> dict:
        return {**beat, lanes: [y if i < beat["count"] else 0
                                for i, y in enumerate(beat[lanes])]}
    return [pack(layout, blank(unpack(layout, raw))) for raw in beats]


def first_mismatch(layout: Any, got: list[int], want: list[int]) -> str | None:
    """A message naming the first differing output and field, or None if equal."""
    for index, (g, w) in enumerate(zip(got, want, strict=False)):
        if g != w:
            gf, wf = unpack(layout, g), unpack(layout, w)
            diff = {k: (gf[k], wf[k]) for k in wf if gf[k] != wf[k]} if isinstance(wf, dict) \
                else (gf, wf)
            return f"output {index}: (RTL, model) differ in {diff}"
    if len(got) != len(want):
        return f"RTL produced {len(got)} outputs, the model {len(want)}"
    return None


def run_amaranth(dut: wiring.Component, inputs: list[int], count: int, seed: int,
                 idle: float = 0.25, stall: float = 0.25, max_cycles: int = 1_000_000
                 ) -> list[int]:
    """Stream ``inputs`` into ``dut.i`` and collect ``count`` payloads from ``dut.o``."""
    rng = random.Random(seed)
    out: list[int] = []

    async def producer(ctx):
        for raw in inputs:
            while rng.random() < idle:
                await ctx.tick()
            ctx.set(Value.cast(dut.i.payload), raw)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        cycles = 0
        while len(out) < count:
            ready = rng.random() >= stall
            ctx.set(dut.o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid,
                                                           Value.cast(dut.o.payload))
            if ready and valid:
                out.append(int(payload))
            cycles += 1
            if cycles > max_cycles:
                raise TimeoutError(f"{len(out)} of {count} outputs after {cycles} cycles")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer, background=True)
    sim.add_testbench(consumer)
    sim.run()
    return out


def run_verilator(model, inputs: list[int], count: int, seed: int, work: Path,
                  idle: float = 0.25, stall: float = 0.25) -> list[int]:
    """The same, through a built Verilator model (``sim.verilator.build``) and cocotb."""
    work.mkdir(parents=True, exist_ok=True)
    vectors = work / "vectors.json"
    result = work / "outputs.json"
    vectors.write_text(json.dumps({"inputs": [hex(v) for v in inputs], "count": count,
                                   "idle": idle, "stall": stall, "out": str(result)}))
    result.unlink(missing_ok=True)
    model.run("sim.benches.tb_stream", seed=seed, test_dir=work,
              extra_env={"LLMACC_VECTORS": str(vectors)})
    return [int(v, 16) for v in json.loads(result.read_text())]
