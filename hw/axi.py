"""AXI4 memory masters and the AXI4-Lite control slave of a Vitis RTL kernel.

* :class:`AxiReadMaster` / :class:`AxiWriteMaster`: a command stream ``(addr, beats)`` becomes
  INCR bursts of at most 256 beats that never cross a 4 KiB boundary (the AXI rule), with
  the data as a stream. One pair per external-memory channel (HBM pseudo-channel on U280).
* :class:`ControlSlave`: the ``ap_ctrl_hs`` block at 0x00 that Vitis and XRT expect
  (ap_start, ap_done clear-on-read, ap_idle, ap_ready; GIE/IER/ISR at 0x04/0x08/0x0C) and the
  kernel arguments from 0x10 (``llmacc.kernel.register_map``, the one register map that the
  host runtime and the board flow's kernel.xml read too).
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from llmacc.kernel import BOUNDARY, BURST_MAX, CONTROL, GIE, IER, ISR, LITE_ADDR_BITS, register_map


def axi_signature(addr_bits: int, data_bits: int, id_bits: int = 1) -> wiring.Signature:
    """An AXI4 master port (manager side), signal names as in the AXI specification."""
    strb = data_bits // 8
    return wiring.Signature({
        "awid": Out(id_bits), "awaddr": Out(addr_bits), "awlen": Out(8), "awsize": Out(3),
        "awburst": Out(2), "awvalid": Out(1), "awready": In(1),
        "wdata": Out(data_bits), "wstrb": Out(strb), "wlast": Out(1), "wvalid": Out(1),
        "wready": In(1),
        "bid": In(id_bits), "bresp": In(2), "bvalid": In(1), "bready": Out(1),
        "arid": Out(id_bits), "araddr": Out(addr_bits), "arlen": Out(8), "arsize": Out(3),
        "arburst": Out(2), "arvalid": Out(1), "arready": In(1),
        "rid": In(id_bits), "rdata": In(data_bits), "rresp": In(2), "rlast": In(1),
        "rvalid": In(1), "rready": Out(1),
    })


def join_port(m: Module, port, reader=None, writer=None) -> None:
    """Drive one AXI4 ``port`` from a read master (AR and R channels) and a write master
    (AW, W and B); a missing master leaves its channels idle."""
    for name, member in port.signature.members.items():
        master = reader if name.startswith(("ar", "r")) else writer
        if master is None:
            continue
        if member.flow == Out:
            m.d.comb += getattr(port, name).eq(getattr(master.axi, name))
        else:
            m.d.comb += getattr(master.axi, name).eq(getattr(port, name))


def command_layout(addr_bits: int) -> data.StructLayout:
    return data.StructLayout({"addr": addr_bits, "beats": 20})


def burst_len(m: Module, addr, remaining, data_bytes: int, cap: int = BURST_MAX):
    """Beats of the next burst: at most ``cap`` (256 by AXI), the rest, and up to the 4 KiB
    boundary."""
    to_boundary = Signal(range(BOUNDARY // data_bytes + 1))
    m.d.comb += to_boundary.eq((BOUNDARY - (addr & (BOUNDARY - 1))) // data_bytes)
    cap = min(cap, BURST_MAX, BOUNDARY // data_bytes)
    first = Signal(range(cap + 1))
    m.d.comb += first.eq(Mux(to_boundary < cap, to_boundary, cap))
    n = Signal(range(cap + 1))
    m.d.comb += n.eq(Mux(remaining < first, remaining, first))
    return n


class _BurstMaster(wiring.Component):
    """What the read and write masters share: the ports, and turning a command into
    bursts on the address channel (AR or AW)."""

    def __init__(self, addr_bits: int, data_bits: int, data_flow):
        self.addr_bits, self.data_bits = addr_bits, data_bits
        super().__init__({
            "cmd": In(stream.Signature(command_layout(addr_bits))),
            "data": data_flow(stream.Signature(data_bits)),
            "axi": Out(axi_signature(addr_bits, data_bits)),
            "idle": Out(1),
            "error": Out(1),
        })

    def _address_channel(self, m: Module, prefix: str, may_send):
        """Drive the ``prefix`` ("ar"/"aw") channel from the accepted command; returns
        ``(remaining, n, sent)``: beats not yet requested, this burst's beats, handshake."""
        nbytes = self.data_bits // 8
        channel = {f: getattr(self.axi, prefix + f)
                   for f in ("addr", "len", "size", "burst", "valid", "ready")}
        addr = Signal(self.addr_bits, name=f"{prefix}_next")
        remaining = Signal(21, name=f"{prefix}_remaining")
        n = burst_len(m, addr, remaining, nbytes)
        sent = channel["valid"] & channel["ready"]
        m.d.comb += [channel["size"].eq((nbytes - 1).bit_length()), channel["burst"].eq(1),
                     channel["addr"].eq(addr), channel["len"].eq(n - 1),
                     channel["valid"].eq((remaining != 0) & may_send)]
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [addr.eq(self.cmd.payload.addr), remaining.eq(self.cmd.payload.beats)]
        with m.If(sent):
            m.d.sync += [addr.eq(addr + n * nbytes), remaining.eq(remaining - n)]
        return remaining, n, sent


class AxiReadMaster(_BurstMaster):
    """``cmd`` (addr, beats) -> read bursts -> ``data`` stream (one word per beat).

    ``addr`` must be aligned to the data width. A read error (RRESP != OKAY) sets ``error``.
    """

    def __init__(self, addr_bits: int = 32, data_bits: int = 64):
        super().__init__(addr_bits, data_bits, Out)

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        outstanding = Signal(21)  # beats requested, not yet received
        remaining, n, sent = self._address_channel(m, "ar", 1)
        got = axi.rvalid & axi.rready
        m.d.sync += outstanding.eq(outstanding + (sent * n) - got)
        m.d.comb += [self.idle.eq((remaining == 0) & (outstanding == 0)),
                     self.cmd.ready.eq(self.idle),
                     self.data.payload.eq(axi.rdata), self.data.valid.eq(axi.rvalid),
                     axi.rready.eq(self.data.ready)]
        with m.If(got & (axi.rresp != 0)):
            m.d.sync += self.error.eq(1)
        return m


class AxiWriteMaster(_BurstMaster):
    """``cmd`` (addr, beats) + ``data`` stream -> write bursts; ``idle`` once every burst's
    response is back. A write error (BRESP != OKAY) sets ``error``."""

    def __init__(self, addr_bits: int = 32, data_bits: int = 64):
        super().__init__(addr_bits, data_bits, In)

    def elaborate(self, platform):
        m = Module()
        axi = self.axi
        burst_left = Signal(9)  # beats of the current burst still to send on W
        bursts_open = Signal(16)  # bursts whose response has not arrived
        remaining, n, aw = self._address_channel(m, "aw", burst_left == 0)
        w = axi.wvalid & axi.wready
        b = axi.bvalid & axi.bready
        with m.If(aw):
            m.d.sync += burst_left.eq(n)
        with m.Elif(w):
            m.d.sync += burst_left.eq(burst_left - 1)
        m.d.sync += bursts_open.eq(bursts_open + aw - b)
        m.d.comb += [self.idle.eq((remaining == 0) & (burst_left == 0) & (bursts_open == 0)),
                     self.cmd.ready.eq(self.idle),
                     axi.wdata.eq(self.data.payload), axi.wstrb.eq(-1),
                     axi.wlast.eq(burst_left == 1),
                     axi.wvalid.eq(self.data.valid & (burst_left != 0)),
                     self.data.ready.eq(axi.wready & (burst_left != 0)),
                     axi.bready.eq(1)]
        with m.If(b & (axi.bresp != 0)):
            m.d.sync += self.error.eq(1)
        return m


def lite_signature(addr_bits: int = LITE_ADDR_BITS) -> wiring.Signature:
    """An AXI4-Lite port seen from the slave (subordinate)."""
    return wiring.Signature({
        "awaddr": In(addr_bits), "awvalid": In(1), "awready": Out(1),
        "wdata": In(32), "wstrb": In(4), "wvalid": In(1), "wready": Out(1),
        "bresp": Out(2), "bvalid": Out(1), "bready": In(1),
        "araddr": In(addr_bits), "arvalid": In(1), "arready": Out(1),
        "rdata": Out(32), "rresp": Out(2), "rvalid": Out(1), "rready": In(1),
    })


class ControlSlave(wiring.Component):
    """AXI4-Lite slave with the Vitis ``ap_ctrl_hs`` protocol and :func:`register_map`.

    ``ap_start`` rises when the host writes bit 0 of 0x00 and falls when the kernel takes the
    start (``start`` pulse); ``finish`` from the kernel sets ``ap_done`` (cleared when 0x00 is
    read) and ``ap_idle``, and raises the interrupt when enabled (GIE and IER bit 0).
    """

    def __init__(self, hw_id: int, channels: int = 1):
        self.hw_id = hw_id
        self.registers = register_map(channels)
        members = {"s_axi": Out(lite_signature()), "start": Out(1), "finish": In(1),
                   "interrupt": Out(1)}
        for reg in self.registers:
            members[reg.name] = Out(32) if reg.access == "rw" else In(32)
        members.pop("hw_id")
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        bus = self.s_axi
        ap_start, ap_done, ap_idle = Signal(), Signal(), Signal(init=1)
        gie, ier, isr = Signal(), Signal(2), Signal(2)
        # write channel: take address and data together, answer OKAY
        wa = Signal(LITE_ADDR_BITS)
        m.d.comb += [bus.awready.eq(bus.awvalid & bus.wvalid & ~bus.bvalid),
                     bus.wready.eq(bus.awvalid & bus.wvalid & ~bus.bvalid)]
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += bus.bvalid.eq(0)
        m.d.comb += wa.eq(bus.awaddr)
        with m.If(bus.awready):
            m.d.sync += bus.bvalid.eq(1)
            with m.Switch(wa):
                with m.Case(CONTROL), m.If(bus.wdata[0]):
                    m.d.sync += [ap_start.eq(1), ap_idle.eq(0)]
                with m.Case(GIE):
                    m.d.sync += gie.eq(bus.wdata[0])
                with m.Case(IER):
                    m.d.sync += ier.eq(bus.wdata[:2])
                with m.Case(ISR):
                    m.d.sync += isr.eq(isr ^ bus.wdata[:2])
                for reg in self.registers:
                    if reg.access == "rw":
                        with m.Case(reg.offset):
                            m.d.sync += getattr(self, reg.name).eq(bus.wdata)
        with m.If(ap_start):
            m.d.comb += self.start.eq(1)
            m.d.sync += ap_start.eq(0)
        with m.If(self.finish):
            m.d.sync += [ap_done.eq(1), ap_idle.eq(1)]
            with m.If(ier[0]):
                m.d.sync += isr[0].eq(1)
        m.d.comb += self.interrupt.eq(gie & (isr & ier).any())
        # read channel
        m.d.comb += bus.arready.eq(~bus.rvalid)
        with m.If(bus.rvalid & bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        with m.If(bus.arvalid & bus.arready):
            m.d.sync += bus.rvalid.eq(1)
            with m.Switch(bus.araddr):
                with m.Case(CONTROL):
                    # ap_ready (bit 3): a new start would be taken now
                    m.d.sync += bus.rdata.eq(ap_start | ap_done << 1 | ap_idle << 2
                                             | ap_idle << 3)
                    with m.If(~self.finish):
                        m.d.sync += ap_done.eq(0)  # clear on read
                with m.Case(GIE):
                    m.d.sync += bus.rdata.eq(gie)
                with m.Case(IER):
                    m.d.sync += bus.rdata.eq(ier)
                with m.Case(ISR):
                    m.d.sync += bus.rdata.eq(isr)
                for reg in self.registers:
                    with m.Case(reg.offset):
                        value = self.hw_id if reg.name == "hw_id" else getattr(self, reg.name)
                        m.d.sync += bus.rdata.eq(value)
                with m.Default():
                    m.d.sync += bus.rdata.eq(0)
        return m
