"""One channel's AXI4 read port shared by several read masters.

On the streaming matrix path a memory channel has two readers: the LOAD unit's
:class:`hw.axi.AxiReadMaster` (activations, tables, KV rows) and the compute unit's
:class:`hw.weight_streamer.WeightStreamer` (MATSTREAM weights), and the kernel has one port
per channel. :class:`ReadPortShare` takes their read address channels in turn and routes
the read data back by order: every burst goes out with the same ID, so memory returns the
bursts in the order of their addresses, and a FIFO of owners (one entry per burst in
flight) names the master of each returning burst.

* **AR**: round robin among the masters with an address waiting, the grant held while the
  address waits for ``arready`` (AXI forbids a valid address from changing). No address
  goes out while the owner FIFO is full.
* **R**: the beats go to the owner at the FIFO's head, under that master's ``rready``; the
  entry leaves with the burst's last beat. A master that stalls its data stalls the port.

The write channels are not shared (each channel keeps one writer).
"""

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.axi import AxiReadMaster, axi_signature, command_layout

#: The read address fields passed from the granted master.
AR_FIELDS = ("araddr", "arlen", "arsize", "arburst")
#: The read data fields passed to every master (each sees them; only the owner is valid).
R_FIELDS = ("rdata", "rresp", "rlast")


class ReadPortShare(wiring.Component):
    """Ports ``up{i}`` (a read master's AXI4 port, for ``masters`` of them) and ``axi`` (the
    channel's port: its read channels). ``bursts`` is the owner FIFO's depth, the most bursts
    in flight on the port."""

    def __init__(self, addr_bits: int, data_bits: int, masters: int = 2, bursts: int = 32):
        if masters < 2:
            raise ValueError(f"{masters} read master: nothing to share")
        self.masters, self.bursts = masters, bursts
        port = axi_signature(addr_bits, data_bits)
        super().__init__({**{f"up{i}": In(port) for i in range(masters)},
                          "axi": Out(port)})

    def elaborate(self, platform):
        m = Module()
        ups = [getattr(self, f"up{i}") for i in range(self.masters)]
        down, n = self.axi, self.masters

        # -- the owner FIFO: one entry per burst whose address went out ---------------------
        owners = Array(Signal(range(n), name=f"owner{j}") for j in range(self.bursts))
        head = Signal(range(self.bursts))
        tail = Signal(range(self.bursts))
        count = Signal(range(self.bursts + 1))
        full = count == self.bursts

        # -- AR: round robin, held while the address waits ----------------------------------
        last = Signal(range(n))  # the master granted last
        held = Signal()  # an address is out and not yet taken
        held_by = Signal(range(n))
        pick = Signal(range(n))
        for k in reversed(range(1, n + 1)):  # the first waiting after ``last`` wins
            for i in range(n):
                with m.If((last == (i - k) % n) & ups[i].arvalid):
                    m.d.comb += pick.eq(i)
        grant = Mux(held, held_by, pick)
        granted = Array(ups)[grant]
        for name in AR_FIELDS:
            m.d.comb += getattr(down, name).eq(getattr(granted, name))
        m.d.comb += [down.arid.eq(0), down.arvalid.eq(granted.arvalid & ~full)]
        for i, up in enumerate(ups):
            m.d.comb += up.arready.eq((grant == i) & down.arready & ~full)
        address = down.arvalid & down.arready
        with m.If(address):
            m.d.sync += [held.eq(0), last.eq(grant), owners[tail].eq(grant),
                         tail.eq(Mux(tail == self.bursts - 1, 0, tail + 1))]
        with m.Elif(down.arvalid):
            m.d.sync += [held.eq(1), held_by.eq(grant)]

        # -- R: to the owner at the head -----------------------------------------------------
        owner = owners[head]
        pending = count != 0
        for i, up in enumerate(ups):
            for name in R_FIELDS:
                m.d.comb += getattr(up, name).eq(getattr(down, name))
            m.d.comb += [up.rid.eq(0), up.rvalid.eq(down.rvalid & pending & (owner == i))]
        m.d.comb += down.rready.eq(pending & Array(u.rready for u in ups)[owner])
        done = down.rvalid & down.rready & down.rlast
        with m.If(done):
            m.d.sync += head.eq(Mux(head == self.bursts - 1, 0, head + 1))
        m.d.sync += count.eq(count + address - done)
        return m


class SharedReaders(wiring.Component):
    """``masters`` :class:`hw.axi.AxiReadMaster` (ports ``cmd{i}``, ``data{i}``) behind one
    :class:`ReadPortShare` (port ``axi``): how the top will share a channel, and the block
    its tests run."""

    def __init__(self, addr_bits: int, data_bits: int, masters: int = 2, bursts: int = 32):
        self.addr_bits, self.data_bits, self.masters, self.bursts = (addr_bits, data_bits,
                                                                     masters, bursts)
        members = {}
        for i in range(masters):
            members[f"cmd{i}"] = In(stream.Signature(command_layout(addr_bits)))
            members[f"data{i}"] = Out(stream.Signature(data_bits))
        super().__init__({**members, "axi": Out(axi_signature(addr_bits, data_bits)),
                          "error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.share = share = ReadPortShare(self.addr_bits, self.data_bits,
                                                   self.masters, self.bursts)
        errors = []
        for i in range(self.masters):
            m.submodules[f"rd{i}"] = rd = AxiReadMaster(self.addr_bits, self.data_bits)
            wiring.connect(m, wiring.flipped(getattr(self, f"cmd{i}")), rd.cmd)
            wiring.connect(m, rd.data, wiring.flipped(getattr(self, f"data{i}")))
            wiring.connect(m, rd.axi, getattr(share, f"up{i}"))
            errors.append(rd.error)
        wiring.connect(m, share.axi, wiring.flipped(self.axi))
        m.d.comb += self.error.eq(Cat(*errors).any())
        return m
