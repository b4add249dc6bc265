"""Pipeline plumbing shared by the datapath blocks: enabled delay lines and the stream
handshake around a fixed-latency core."""

from amaranth.hdl import Module, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out


def delay(m: Module, value, cycles: int, ce, name: str, *, reset_less: bool = True):
    """``value`` after ``cycles`` registers that advance while ``ce`` (a layout view stays
    a view). Data registers need no reset; pass ``reset_less=False`` for valid bits."""
    shape = value.shape() if isinstance(value, data.View) else Value.cast(value).shape()
    for d in range(cycles):
        nxt = Signal(shape, name=f"{name}_d{d}", reset_less=reset_less)
        with m.If(ce):
            m.d.sync += nxt.eq(value)
        value = nxt
    return value


def select(m: Module, values, index, name: str) -> Signal:
    """``values[index]`` (an array view or a list of values of one shape) as a multiplexer:
    a case statement, which synthesis maps onto LUTs and the slice's MUXF7/MUXF8 (a 16:1
    one is four LUTs per bit), where a shifter (``word_select``) costs five."""
    shape = (values.shape().elem_shape if isinstance(values, data.View)
             else Value.cast(values[0]).shape())
    out = Signal(shape, name=name)
    with m.Switch(index):
        for i in range(len(values)):
            with m.Case(i):
                m.d.comb += out.eq(values[i])
    return out


class StreamedCore(wiring.Component):
    """Stream handshake around a fixed-latency core with a clock enable (ports ``inp``,
    ``out``, ``ce``, attribute ``latency``): every beat gives one output, and the whole
    pipeline stalls while a result waits on ``o.ready``."""

    def __init__(self, core: wiring.Component):
        self.core = core
        members = core.signature.members
        super().__init__({"i": In(stream.Signature(members["inp"].shape)),
                          "o": Out(stream.Signature(members["out"].shape))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        en = ~self.o.valid | self.o.ready
        valid = delay(m, self.i.valid, core.latency, en, "valid", reset_less=False)
        m.d.comb += [self.i.ready.eq(en), core.ce.eq(en), core.inp.eq(self.i.payload),
                     self.o.payload.eq(core.out), self.o.valid.eq(valid)]
        return m
