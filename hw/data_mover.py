"""LOAD and STORE units: two-level strided transfers between external memory and a buffer.

One instruction (``isa.MemFields``) moves ``rows`` rows of ``words`` buffer words: row ``r``
is at ``ext_addr + P * ext_stride * pos_offset + r * ext_stride`` in channel ``chan`` (``P``
is POS, or with ``pos_header`` POS // ``layout.kv_slots``: a KV head's header words)
and at ``buf_addr + r * words`` in buffer ``buf``; ``rows`` is the immediate or SEQ_LEN
(length patching), as the emulator (``sim/emulator.py``) executes it.

Each row is one command to the channel's AXI master (``hw/axi.py``, which splits it into
bursts); rows that follow one another in external memory (``ext_stride`` = the row's bytes,
as the KV cache's rows of a head are) are one command for all of them, so the read latency
is paid once per instruction instead of once per row. The units check what the bus cannot:
external addresses and strides must be whole AXI words (:attr:`Fault.ALIGN`), the rows
must fit the buffer and the channel must exist (:attr:`Fault.RANGE`); an AXI error
response during the instruction is :attr:`Fault.BUS`.
A faulting instruction moves nothing and still completes.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.axi import command_layout
from hw.controller import unit_members
from llmacc import isa
from llmacc import layout as L
from llmacc.config import AccelConfig
from llmacc.kernel import Fault


class _Mover(wiring.Component):
    """What LOAD and STORE share: the instruction, its checks, and the row loop; the
    subclass moves one row's words (``_row``)."""

    def __init__(self, cfg: AccelConfig, data_flow, members: dict):
        self.cfg = cfg
        self.word_bytes = cfg.axi_data_bytes
        self.depth = {b: cfg.buffer_words(b) for b in isa.Buffer}
        self.addr_bits = max(self.depth.values()).bit_length()
        super().__init__({
            **unit_members(),
            "chan": Out(range(max(2, cfg.mem_channels))),  #: channel of the instruction
            "cmd": Out(stream.Signature(command_layout(cfg.axi_addr_bits))),
            "data": data_flow(stream.Signature(8 * self.word_bytes)),
            "bus_error": In(1),  #: the selected channel's master saw an error response
            "buf": Out(isa.Buffer),
            "buf_addr": Out(self.addr_bits),
            **members,
        })

    def elaborate(self, platform):
        m = Module()
        cfg, w = self.cfg, self.word_bytes
        f = Signal(isa.MemFields)
        rows = Signal(32)
        ext = Signal(32 + isa.MemFields.as_shape()["ext_stride"].width + 1)
        row = Signal.like(rows)
        runs = Signal.like(rows)  # commands: the rows, or one for contiguous rows
        run_words = Signal(command_layout(cfg.axi_addr_bits)["beats"].shape)  # per command
        beat = Signal(len(run_words) + 1)
        row_ext = Signal(cfg.axi_addr_bits)
        row_buf = Signal(self.addr_bits + 1)
        depth = Signal(range(max(self.depth.values()) + 1))
        with m.Switch(f.buf):
            for b, words in self.depth.items():
                with m.Case(b):
                    m.d.comb += depth.eq(words)
        low = (w - 1).bit_length()
        misaligned = (ext[:low] != 0) | (f.ext_stride[:low] != 0)
        out_of_range = ((f.buf_addr + rows * f.words > depth) | (f.chan >= cfg.mem_channels)
                        | (ext >> cfg.axi_addr_bits != 0))
        issue = self.issue.payload
        mem = issue.word.payload.mem
        bus_error = Signal()
        with m.If(self.bus_error):
            m.d.sync += bus_error.eq(1)
        m.d.comb += [self.chan.eq(f.chan), self.buf.eq(f.buf),
                     self.cmd.payload.addr.eq(row_ext), self.cmd.payload.beats.eq(run_words),
                     self.buf_addr.eq(row_buf + beat)]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.issue.ready.eq(1)
                with m.If(self.issue.valid):
                    seq = issue.regs[isa.Reg.SEQ_LEN.value]
                    pos = issue.regs[isa.Reg.POS.value]
                    slots_log2 = (L.kv_slots(w) - 1).bit_length()
                    pos = Mux(mem.pos_header, pos >> slots_log2, pos)
                    m.d.sync += [f.eq(mem),
                                 rows.eq(Mux(mem.rows_src == isa.LenSrc.SEQ, seq, mem.rows)),
                                 ext.eq(mem.ext_addr + Mux(mem.pos_offset,
                                                           pos * mem.ext_stride, 0)),
                                 bus_error.eq(0), self.fault.eq(0)]
                    m.next = "CHECK"
            with m.State("CHECK"):
                contiguous = f.ext_stride == f.words * w
                m.d.sync += [row.eq(0), row_ext.eq(ext), row_buf.eq(f.buf_addr),
                             runs.eq(Mux(contiguous, 1, rows)),
                             run_words.eq(Mux(contiguous, rows * f.words, f.words))]
                with m.If(misaligned):
                    m.d.sync += self.fault.eq(Fault.ALIGN)
                    m.next = "COMPLETE"
                with m.Elif(out_of_range):
                    m.d.sync += self.fault.eq(Fault.RANGE)
                    m.next = "COMPLETE"
                with m.Elif((rows == 0) | (f.words == 0)):
                    m.next = "COMPLETE"
                with m.Else():
                    m.next = "COMMAND"
            with m.State("COMMAND"):
                m.d.comb += self.cmd.valid.eq(1)
                with m.If(self.cmd.ready):
                    m.d.sync += beat.eq(0)
                    m.next = "ROW"
            with m.State("ROW"), m.If(self._row(m, beat, run_words)):
                m.d.sync += [row.eq(row + 1), row_ext.eq(row_ext + f.ext_stride),
                             row_buf.eq(row_buf + run_words)]
                with m.If(row + 1 == runs):
                    m.next = "DRAIN"
                with m.Else():
                    m.next = "COMMAND"
            with m.State("DRAIN"), m.If(self.cmd.ready):  # the last write's response
                m.next = "COMPLETE"
            with m.State("COMPLETE"):
                with m.If((bus_error | self.bus_error) & (self.fault == 0)):
                    m.d.sync += self.fault.eq(Fault.BUS)
                    m.next = "FAULT"
                with m.Else():
                    m.d.comb += self.complete.eq(1)
                    m.next = "IDLE"
            with m.State("FAULT"):  # report the bus fault while busy, then complete
                m.d.comb += self.complete.eq(1)
                m.next = "IDLE"
        return m


class LoadUnit(_Mover):
    """LOAD: read bursts from the channel into buffer words (``wr_en`` strobes ``buf``,
    ``buf_addr``, ``wr_data``)."""

    def __init__(self, cfg: AccelConfig):
        super().__init__(cfg, In, {"wr_en": Out(1), "wr_data": Out(8 * cfg.axi_data_bytes)})

    def _row(self, m: Module, beat, words):
        m.d.comb += [self.data.ready.eq(1), self.wr_en.eq(self.data.valid),
                     self.wr_data.eq(self.data.payload)]
        with m.If(self.data.valid):
            m.d.sync += beat.eq(beat + 1)
        return self.data.valid & (beat == words - 1)


class StoreUnit(_Mover):
    """STORE: buffer words (``rd_en``/``buf_addr`` -> ``rd_data`` one cycle later) into write
    bursts on the channel."""

    def __init__(self, cfg: AccelConfig):
        super().__init__(cfg, Out, {"rd_en": Out(1), "rd_data": In(8 * cfg.axi_data_bytes)})

    def _row(self, m: Module, beat, words):
        # Read ahead by one word: rd_data holds word `beat - 1` while `held`.
        held = Signal()
        advance = ~self.data.valid | self.data.ready
        more = beat != words
        m.d.comb += [self.rd_en.eq(advance & more), self.data.payload.eq(self.rd_data),
                     self.data.valid.eq(held)]
        with m.If(advance):
            m.d.sync += held.eq(more)
            with m.If(more):
                m.d.sync += beat.eq(beat + 1)
        return advance & ~more & ~held & (beat == words)
