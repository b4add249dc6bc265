"""One memory channel's weight stream: row reads in, a FIFO of words out, at line rate.

The matrix engine consumes weights at the channel's full rate, so the read path may neither
wait for one burst to return before asking for the next nor let the read data channel stall.
:class:`WeightStreamer` therefore

* queues several commands ``(addr, beats)`` (one per weight row or tile) and **coalesces**
  each with the next when that starts where it ends, so that rows shorter than a burst still
  travel in full bursts of ``kernel.STREAM_BURST_BYTES``;
* keeps up to ``kernel.STREAM_BURSTS_IN_FLIGHT`` bursts outstanding (16), enough to cover
  HBM's 40-120 cycle round trip at one beat per cycle;
* issues a burst only when the FIFO has room for it and for everything already requested
  (credits), so ``rready`` never falls: the channel runs at whatever rate memory gives.

Bursts follow the AXI rules of :func:`hw.axi.burst_len` (256 beats, 4 KiB). Data leaves in
request order (AXI returns same-ID reads in order). An error response sets ``error``.
``abort`` ends the stream early (the compute unit's fault): the queue and the FIFO are
emptied, no burst is asked for (an address already shown is held until taken, as AXI
requires), and the bursts in flight are received and dropped; ``idle`` once they are in.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.axi import axi_signature, burst_len, command_layout
from llmacc.kernel import STREAM_BURSTS_IN_FLIGHT, stream_burst_beats, stream_fifo_words

#: beats one command may ask for (``command_layout``'s field)
COMMAND_BEATS_BITS = 20


class WeightStreamer(wiring.Component):
    """``cmd`` (addr, beats) -> coalesced full bursts, several in flight -> ``data`` words.

    ``addr`` must be aligned to the data width. ``idle`` when no command is queued or
    running and every word has left through ``data`` (or, on ``abort``, been dropped).
    """

    def __init__(self, addr_bits: int, data_bits: int, *, queue_depth: int = 4):
        self.addr_bits, self.data_bits, self.queue_depth = addr_bits, data_bits, queue_depth
        self.data_bytes = data_bits // 8
        self.burst_beats = stream_burst_beats(self.data_bytes)
        self.fifo_words = stream_fifo_words(self.data_bytes)
        super().__init__({
            "cmd": In(stream.Signature(command_layout(addr_bits))),
            "data": Out(stream.Signature(data_bits)),
            "axi": Out(axi_signature(addr_bits, data_bits)),
            "abort": In(1),
            "idle": Out(1),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        axi, nbytes = self.axi, self.data_bytes
        layout = command_layout(self.addr_bits)
        m.submodules.queue = queue = fifo.SyncFIFOBuffered(width=layout.size,
                                                           depth=self.queue_depth)
        m.submodules.words = words = fifo.SyncFIFOBuffered(width=self.data_bits,
                                                           depth=self.fifo_words)
        m.d.comb += [queue.w_data.eq(self.cmd.payload), queue.w_en.eq(self.cmd.valid),
                     self.cmd.ready.eq(queue.w_rdy)]

        # the running (coalesced) command: next address and beats not yet requested
        addr = Signal(self.addr_bits)
        remaining = Signal(COMMAND_BEATS_BITS + 1)
        head = data.View(layout, queue.r_data)
        end = Signal(self.addr_bits)
        m.d.comb += end.eq(addr + remaining * nbytes)
        # an address shown last cycle and not taken stays as it is (AXI): nothing absorbed
        shown = Signal()
        absorb = ~self.abort & ~shown & queue.r_rdy & ((remaining == 0) | (head.addr == end)) & \
            (remaining < (1 << COMMAND_BEATS_BITS))
        n = burst_len(m, addr, remaining, nbytes, self.burst_beats)

        # credits: the FIFO holds what is in it and what is on its way
        in_flight = Signal(range(self.fifo_words + 1))  # beats requested, not yet received
        bursts_open = Signal(range(STREAM_BURSTS_IN_FLIGHT + 1))
        room = in_flight + words.level + n <= self.fifo_words
        tail_waits = (n == remaining) & absorb  # a short tail that the next row extends
        ask = (remaining != 0) & ~tail_waits & room & (bursts_open < STREAM_BURSTS_IN_FLIGHT)
        m.d.comb += [axi.arid.eq(0), axi.araddr.eq(addr), axi.arlen.eq(n - 1),
                     axi.arsize.eq((nbytes - 1).bit_length()), axi.arburst.eq(1),
                     axi.arvalid.eq(Mux(self.abort, shown, ask))]
        sent = axi.arvalid & axi.arready
        got = axi.rvalid & axi.rready
        m.d.comb += queue.r_en.eq(absorb | self.abort)
        left = remaining - Mux(sent, n, 0) + Mux(absorb, head.beats, 0)
        m.d.sync += [
            shown.eq(axi.arvalid & ~axi.arready),
            remaining.eq(Mux(self.abort & ~shown, 0, left)),
            addr.eq(Mux(absorb & (remaining == 0), head.addr, addr + Mux(sent, n * nbytes, 0))),
            in_flight.eq(in_flight + Mux(sent, n, 0) - got),
            bursts_open.eq(bursts_open + sent - (got & axi.rlast)),
        ]

        m.d.comb += [words.w_data.eq(axi.rdata), words.w_en.eq(axi.rvalid & ~self.abort),
                     axi.rready.eq(words.w_rdy | self.abort), axi.bready.eq(1),
                     self.data.payload.eq(words.r_data),
                     self.data.valid.eq(words.r_rdy & ~self.abort),
                     words.r_en.eq(self.data.ready | self.abort),
                     self.idle.eq(~queue.r_rdy & (remaining == 0) & (in_flight == 0)
                                  & ~words.r_rdy)]
        with m.If(got & (axi.rresp != 0)):
            m.d.sync += self.error.eq(1)
        return m


class ChannelSlice(wiring.Component):
    """``channels`` weight streamers side by side, read in lockstep.

    The lanes take one word of every channel per cycle (a pass's weight rows are spread over
    the channels), so the slowest channel sets the pace: each channel's FIFO absorbs its own
    memory's jitter. Ports ``cmd{i}`` and ``axi{i}`` per channel; ``data`` carries every
    channel's word side by side, channel 0 in the low bits.
    """

    def __init__(self, channels: int, addr_bits: int, data_bits: int):
        self.channels, self.addr_bits, self.data_bits = channels, addr_bits, data_bits
        members = {}
        for i in range(channels):
            members[f"cmd{i}"] = In(stream.Signature(command_layout(addr_bits)))
            members[f"axi{i}"] = Out(axi_signature(addr_bits, data_bits))
        super().__init__({**members, "data": Out(stream.Signature(channels * data_bits)),
                          "idle": Out(1), "error": Out(1)})

    def elaborate(self, platform):
        m = Module()
        streamers = []
        for i in range(self.channels):
            m.submodules[f"ch{i}"] = s = WeightStreamer(self.addr_bits, self.data_bits)
            wiring.connect(m, wiring.flipped(getattr(self, f"cmd{i}")), s.cmd)
            wiring.connect(m, s.axi, wiring.flipped(getattr(self, f"axi{i}")))
            streamers.append(s)
        all_valid = Cat(*(s.data.valid for s in streamers)).all()
        m.d.comb += [self.data.valid.eq(all_valid),
                     self.data.payload.eq(Cat(*(s.data.payload for s in streamers))),
                     self.idle.eq(Cat(*(s.idle for s in streamers)).all()),
                     self.error.eq(Cat(*(s.error for s in streamers)).any())]
        for s in streamers:
            m.d.comb += s.data.ready.eq(self.data.ready & all_valid)
        return m
