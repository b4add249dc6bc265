"""The accelerator top: the board kernel and the RTL the simulator runs, one design.

Ports, as a Vitis RTL kernel has them: the AXI4-Lite control slave (``ap_ctrl_hs`` at 0x00,
arguments from 0x10: ``llmacc/kernel.py`` ``ARGS``), an AXI4 read port for the instruction stream
(``m_axi_insn``), one AXI4 port per external-memory channel (``m_axi_ch<c>``: HBM
pseudo-channels on a U280), and the interrupt.

Inside: the program fetch (instruction words from ``program`` onwards, ``program_words`` of
them, then an implicit HALT) feeds the controller (``hw/controller.py``), which dispatches
to one unit per :class:`isa.Unit`. LOAD and STORE (``hw/data_mover.py``) move rows between
the channels and the five on-chip buffers (``hw/buffer_access.py``: one simple dual-port
memory each, ``AccelConfig.buffer_words`` words of ``axi_data_bits``); the COMPUTE unit
(``hw/compute_unit.py``: matrix engine and attention) and the SFU unit (``hw/sfu_unit.py``)
read and write the buffers through shared request/grant ports. Each channel also has a
weight streamer (``hw/weight_streamer.py``) that reads MATSTREAM's weights straight into the
COMPUTE unit; it shares the channel's read port with the LOAD unit's reader
(``hw/read_share.py``).

``status`` (0x1C): a ``llmacc.kernel.Status`` (error, the ``Fault``, its pc); ``cycles``
(0x20/0x24): cycles of the last run; ``hw_id`` (0x28): ``AccelConfig.fingerprint()``;
``dispatched`` (0x2C) and per unit the cycles busy and waiting for tokens (0x30..0x4C, the
performance counters the cycle model is calibrated against).
"""

from amaranth.hdl import Cat, Const, Module, Mux, ResetInserter, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.axi import (
    AxiReadMaster,
    AxiWriteMaster,
    ControlSlave,
    axi_signature,
    command_layout,
    join_port,
    lite_signature,
)
from hw.buffer_access import BufferBank
from hw.compute_unit import ComputeUnit
from hw.controller import Controller
from hw.data_mover import LoadUnit, StoreUnit
from hw.read_share import ReadPortShare
from hw.sfu_unit import SfuUnit
from hw.weight_streamer import WeightStreamer
from llmacc import isa
from llmacc.config import AccelConfig
from llmacc.kernel import Status

#: The word the fetch appends after the program: a program without HALT ends as if it had one.
HALT_WORD = isa.encode(isa.make(isa.Opcode.SYS, func=isa.SysFunc.HALT))


class ProgramFetch(wiring.Component):
    """On ``start``, read ``words`` instruction words at ``addr`` (one AXI command) and
    stream them, then :data:`HALT_WORD`, to ``insn``. While ``stop``, read data is dropped
    (a program that ended early). ``addr`` must be a whole number of AXI words."""

    def __init__(self, cfg: AccelConfig):
        self.word_bytes = cfg.axi_data_bytes
        super().__init__({
            "start": In(1), "stop": In(1), "addr": In(cfg.axi_addr_bits), "words": In(32),
            "cmd": Out(stream.Signature(command_layout(cfg.axi_addr_bits))),
            "data": In(stream.Signature(8 * cfg.axi_data_bytes)),
            "insn": Out(stream.Signature(isa.InstructionWord)),
        })

    def elaborate(self, platform):
        m = Module()
        w, bits = self.word_bytes, isa.WORD_BITS
        total = Signal(32)
        sent = Signal(32)  # program words handed to the controller
        halted = Signal()  # the HALT word has been handed over
        pending_cmd = Signal()
        m.d.comb += [self.cmd.valid.eq(pending_cmd), self.cmd.payload.addr.eq(self.addr),
                     self.cmd.payload.beats.eq((total * isa.WORD_BYTES + w - 1) // w)]
        with m.If(self.cmd.ready & self.cmd.valid):
            m.d.sync += pending_cmd.eq(0)
        have = Signal()  # a program word is ready to hand over
        at_end = sent == total
        taken = self.insn.valid & self.insn.ready
        word_taken = taken & ~at_end
        received = self.data.valid & self.data.ready
        m.d.comb += self.data.ready.eq(~have | self.stop)
        if w <= isa.WORD_BYTES:  # several beats per instruction word
            per_word = isa.WORD_BYTES // w
            word = Signal(bits)
            count = Signal(range(per_word))
            with m.If(received):
                m.d.sync += [word.eq(Cat(word[8 * w:], self.data.payload)),
                             count.eq(Mux(count == per_word - 1, 0, count + 1))]
                with m.If(count == per_word - 1):
                    m.d.sync += have.eq(~self.stop)
            with m.If(word_taken):
                m.d.sync += have.eq(0)
            with m.If(self.start):
                m.d.sync += count.eq(0)
            current = word
        else:  # several instruction words per beat
            per_beat = w // isa.WORD_BYTES
            beat = Signal(8 * w)
            index = Signal(range(per_beat))
            with m.If(received):
                m.d.sync += [beat.eq(self.data.payload), have.eq(~self.stop), index.eq(0)]
            with m.If(word_taken):
                m.d.sync += index.eq(index + 1)
                with m.If((index == per_beat - 1) | (sent + 1 == total)):
                    m.d.sync += have.eq(0)
            current = beat.word_select(index, bits)
        m.d.comb += [self.insn.valid.eq(~self.stop & Mux(at_end, ~halted, have)),
                     self.insn.payload.eq(Mux(at_end, Const(HALT_WORD, bits), current))]
        with m.If(taken):
            with m.If(at_end):
                m.d.sync += halted.eq(1)
            with m.Else():
                m.d.sync += sent.eq(sent + 1)
        with m.If(self.start):
            m.d.sync += [total.eq(self.words), sent.eq(0), halted.eq(0), have.eq(0),
                         pending_cmd.eq(1)]
        return m


class Accelerator(wiring.Component):
    """The whole kernel for one :class:`AccelConfig`."""

    def __init__(self, cfg: AccelConfig):
        cfg.validate()
        self.cfg = cfg
        port = axi_signature(cfg.axi_addr_bits, cfg.axi_data_bits)
        members = {"s_axi_control": Out(lite_signature()), "m_axi_insn": Out(port),
                   "interrupt": Out(1)}
        members.update({f"m_axi_ch{c}": Out(port) for c in range(cfg.mem_channels)})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        addr_bits, data_bits = cfg.axi_addr_bits, cfg.axi_data_bits
        m.submodules.control = ctrl = ControlSlave(cfg.fingerprint(), cfg.mem_channels)
        wiring.connect(m, wiring.flipped(self.s_axi_control), ctrl.s_axi)
        m.d.comb += self.interrupt.eq(ctrl.interrupt)
        m.submodules.controller = controller = Controller(cfg.insn_queue_depth)

        # -- AXI masters; cleared by a start (sticky error flags) --------------------------
        idle = Signal()
        restart = ctrl.start & idle

        def master(name, cls):
            unit = cls(addr_bits, data_bits)
            m.submodules[name] = ResetInserter(restart)(unit)
            return unit

        insn_rd = master("insn_rd", AxiReadMaster)
        join_port(m, self.m_axi_insn, reader=insn_rd)
        readers = [master(f"ch{c}_rd", AxiReadMaster) for c in range(cfg.mem_channels)]
        writers = [master(f"ch{c}_wr", AxiWriteMaster) for c in range(cfg.mem_channels)]
        streamers = [master(f"ch{c}_stream", WeightStreamer) for c in range(cfg.mem_channels)]
        for c in range(cfg.mem_channels):  # LOAD's reader and the streamer share the reads
            share = ReadPortShare(addr_bits, data_bits)
            m.submodules[f"ch{c}_share"] = ResetInserter(restart)(share)
            wiring.connect(m, readers[c].axi, share.up0)
            wiring.connect(m, streamers[c].axi, share.up1)
            join_port(m, getattr(self, f"m_axi_ch{c}"), share, writers[c])

        # -- program fetch -> controller ----------------------------------------------------
        m.submodules.fetch = fetch = ProgramFetch(cfg)
        m.d.comb += [fetch.start.eq(restart), fetch.stop.eq(~controller.busy),
                     fetch.addr.eq(Cat(ctrl.program_lo, ctrl.program_hi)),
                     fetch.words.eq(ctrl.program_words), controller.start.eq(restart)]
        wiring.connect(m, fetch.cmd, insn_rd.cmd)
        wiring.connect(m, insn_rd.data, fetch.data)
        wiring.connect(m, fetch.insn, controller.insn)

        # -- units and buffers -----------------------------------------------------------------
        m.submodules.load = load = LoadUnit(cfg)
        m.submodules.store = store = StoreUnit(cfg)
        m.submodules.compute = compute = ComputeUnit(cfg)
        m.submodules.sfu = sfu = SfuUnit(cfg)
        units = {isa.Unit.LOAD: load, isa.Unit.STORE: store, isa.Unit.COMPUTE: compute,
                 isa.Unit.SFU: sfu}
        for u, unit in units.items():
            name = u.name.lower()
            wiring.connect(m, getattr(controller, f"issue_{name}"), unit.issue)
            m.d.comb += [getattr(controller, f"complete_{name}").eq(unit.complete),
                         getattr(controller, f"fault_{name}").eq(unit.fault)]
        bases = [Cat(getattr(ctrl, f"ch{c}_lo"), getattr(ctrl, f"ch{c}_hi"))[:addr_bits]
                 for c in range(cfg.mem_channels)]
        self._route(m, load, readers, bases)
        self._route(m, store, writers, bases)
        for c, (streamer, base) in enumerate(zip(streamers, bases, strict=True)):
            cmd = getattr(compute, f"stream{c}")
            m.d.comb += [streamer.cmd.payload.eq(cmd.payload),
                         streamer.cmd.payload.addr.eq(cmd.payload.addr + base),
                         streamer.cmd.valid.eq(cmd.valid), cmd.ready.eq(streamer.cmd.ready)]
            wiring.connect(m, streamer.data, getattr(compute, f"weights{c}"))
            m.d.comb += streamer.abort.eq(compute.stream_abort)
        m.d.comb += [compute.stream_error.eq(Cat(*(s.error for s in streamers)).any()),
                     compute.streams_idle.eq(Cat(*(s.idle for s in streamers)).all())]
        reads = [getattr(unit, name) for unit in (compute, sfu)
                 for name in unit.signature.members if name.startswith("rd_")]
        writes = [compute.wr, sfu.wr]
        m.submodules.buffers = bank = BufferBank(cfg, len(reads), len(writes))
        m.d.comb += [bank.load_en.eq(load.wr_en), bank.load_buf.eq(load.buf),
                     bank.load_addr.eq(load.buf_addr), bank.load_data.eq(load.wr_data),
                     bank.store_en.eq(store.rd_en), bank.store_buf.eq(store.buf),
                     bank.store_addr.eq(store.buf_addr), store.rd_data.eq(bank.store_data)]
        for port, shared in zip(reads, bank.rd, strict=True):
            wiring.connect(m, port, shared)
        for port, shared in zip(writes, bank.wr, strict=True):
            wiring.connect(m, port, shared)

        # -- run state, status, finish ------------------------------------------------------
        units_idle = load.issue.ready & store.issue.ready & compute.issue.ready & \
            sfu.issue.ready
        masters_idle = Cat(insn_rd.idle, *(r.idle for r in readers),
                           *(w.idle for w in writers), *(s.idle for s in streamers)).all()
        m.d.comb += idle.eq(~controller.busy & units_idle & masters_idle & ~fetch.cmd.valid)
        active = Signal()
        status = Signal(Status)
        with m.If(restart):
            m.d.sync += active.eq(1)
        with m.Elif(active & idle):
            m.d.sync += active.eq(0)
            m.d.comb += ctrl.finish.eq(1)
        m.d.comb += [
            status.error.eq(controller.error), status.fault.eq(controller.status),
            status.pc.eq(controller.fault_pc), ctrl.status.eq(status),
            ctrl.cycles_lo.eq(controller.cycles[:32]), ctrl.cycles_hi.eq(controller.cycles[32:]),
            ctrl.dispatched.eq(controller.dispatched[:32]),
        ]
        for u in isa.Unit:
            name = u.name.lower()
            m.d.comb += [getattr(ctrl, f"busy_{name}").eq(
                             getattr(controller, f"busy_cycles_{name}")[:32]),
                         getattr(ctrl, f"stall_{name}").eq(
                             getattr(controller, f"stall_cycles_{name}")[:32])]
        return m

    def _route(self, m: Module, unit, masters, bases) -> None:
        """Connect a mover's command and data streams to the master of its channel; the
        channel's base address (a kernel argument) is added to the command's address."""
        for c, (port, base) in enumerate(zip(masters, bases, strict=True)):
            mine = unit.chan == c
            m.d.comb += [port.cmd.payload.eq(unit.cmd.payload),
                         port.cmd.payload.addr.eq(unit.cmd.payload.addr + base),
                         port.cmd.valid.eq(unit.cmd.valid & mine)]
            data_in, data_out = (port.data, unit.data) if isinstance(port, AxiReadMaster) \
                else (unit.data, port.data)
            with m.If(mine):
                m.d.comb += [unit.cmd.ready.eq(port.cmd.ready), unit.bus_error.eq(port.error),
                             data_out.payload.eq(data_in.payload),
                             data_out.valid.eq(data_in.valid), data_in.ready.eq(data_out.ready)]
