"""On-chip buffers and how the units reach them: the buffer bank, field reads, word writes.

Every buffer is simple dual-port memory of ``axi_data_bits`` words (what an FPGA block RAM
offers): one write port and one read port, except the KV buffer, which is two such memories,
its even and its odd words (:data:`BANKED`), so that ATTN reads a key's payload word and the
next key's header word in one cycle. The LOAD unit owns the write side and the STORE unit the
read side whenever they use them; the COMPUTE and SFU sequencers share what is left through
request/grant ports (:func:`read_port`, :func:`write_port`), first come first in a fixed
order (a banked buffer's reads per bank, its writes one a cycle). The dependency tokens keep
the units on different addresses, so sharing the ports costs cycles, never correctness.

The sequencers read the records of :mod:`llmacc.layout`, which are little-endian bit fields
at known bit offsets, through :class:`FieldFetch` (any field of up to 64 bits at any bit
address, served from a two-word cache so that walking a record costs one memory read per
word), and write them through :class:`FieldPacker` (fields appended LSB first, whole words
written, records padded with zeros as the layouts say).
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from llmacc import layout as L
from llmacc.config import AccelConfig
from llmacc.isa import Buffer

FIELD_BITS = 64  #: the widest field a fetch returns (the RMSNorm epsilon)
SLOT_LOG2 = L.SLOT_BITS.bit_length() - 1
#: Buffers held as two memories, the even words and the odd ones, each with its own read port.
BANKED = (Buffer.KV,)


def banks_of(b: Buffer) -> int:
    """The memories buffer ``b`` is held in: two for a :data:`BANKED` buffer, else one."""
    return 2 if b in BANKED else 1


def bank_of(addr):
    """The memory of a banked buffer that holds word ``addr`` (a signal or an int): the even
    words are in the first, the odd ones in the second (:func:`row_of`: the word's row)."""
    return addr % 2 if isinstance(addr, int) else addr[0]


def row_of(addr, banks: int):
    """The row that holds word ``addr`` (a signal or an int) in its memory of ``banks``."""
    return addr >> (banks - 1)


def addr_bits(cfg: AccelConfig) -> int:
    """Bits of a word address into the deepest buffer."""
    return max(cfg.buffer_words(b) for b in Buffer).bit_length()


def read_port(cfg: AccelConfig) -> wiring.Signature:
    """A requester's read port: ``data`` is the word one cycle after ``en & grant``."""
    return wiring.Signature({"en": Out(1), "buf": Out(Buffer), "addr": Out(addr_bits(cfg)),
                             "grant": In(1), "data": In(cfg.axi_data_bits)})


def write_port(cfg: AccelConfig) -> wiring.Signature:
    """A requester's write port: the bytes set in ``mask`` are written when ``en & grant``."""
    return wiring.Signature({"en": Out(1), "buf": Out(Buffer), "addr": Out(addr_bits(cfg)),
                             "data": Out(cfg.axi_data_bits), "mask": Out(cfg.axi_data_bytes),
                             "grant": In(1)})


class BufferBank(wiring.Component):
    """The five buffers with the movers' ports and ``readers``/``writers`` shared ports.

    ``load_*`` writes whole words unconditionally; ``store_*`` reads with ``store_data`` from
    one cycle after ``store_en`` until the next store read. Shared ports are granted in list
    order when the movers leave the port free (a :data:`BANKED` buffer's read port: the
    bank's)."""

    def __init__(self, cfg: AccelConfig, readers: int, writers: int):
        self.cfg = cfg
        #: per buffer, word address -> its memory cell (filled by elaborate; tests use them)
        self.cells: dict[Buffer, list] = {}
        bits = addr_bits(cfg)
        super().__init__({
            "load_en": In(1), "load_buf": In(Buffer), "load_addr": In(bits),
            "load_data": In(cfg.axi_data_bits),
            "store_en": In(1), "store_buf": In(Buffer), "store_addr": In(bits),
            "store_data": Out(cfg.axi_data_bits),
            "rd": In(read_port(cfg)).array(readers),
            "wr": In(write_port(cfg)).array(writers),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        w = cfg.axi_data_bytes
        last_read = {}  # (buffer, bank) -> the word its read port gave
        for b in Buffer:
            banks = banks_of(b)
            depth = cfg.buffer_words(b)
            mems = [Memory(shape=8 * w, depth=-(-(depth - k) // banks), init=[])
                    for k in range(banks)]
            for k, mem in enumerate(mems):
                m.submodules[f"buf_{b.name.lower()}" + (f"_{k}" if banks > 1 else "")] = mem
            self.cells[b] = [mems[bank_of(i) if banks > 1 else 0].data[row_of(i, banks)]
                             for i in range(depth)]
            self._write_side(m, b, mems)
            for k, mem in enumerate(mems):
                last_read[b, k] = self._read_side(m, b, mem, k, banks)
        # The store word stays on store_data until the next store read, whoever else reads
        # the buffer meanwhile.
        store_from, store_fresh = Signal(Buffer), Signal()
        store_bank = Signal()
        store_word, store_held = Signal(8 * w), Signal(8 * w)
        m.d.sync += [store_from.eq(self.store_buf), store_bank.eq(bank_of(self.store_addr)),
                     store_fresh.eq(self.store_en)]
        self._route(m, store_from, store_bank, last_read, store_word)
        with m.If(store_fresh):
            m.d.sync += store_held.eq(store_word)
        m.d.comb += self.store_data.eq(Mux(store_fresh, store_word, store_held))
        for port in self.rd:
            source, bank = Signal(Buffer), Signal()
            with m.If(port.en & port.grant):
                m.d.sync += [source.eq(port.buf), bank.eq(bank_of(port.addr))]
            self._route(m, source, bank, last_read, port.data)
        return m

    def _write_side(self, m: Module, b: Buffer, mems: list) -> None:
        """One write a cycle into buffer ``b``: the LOAD unit's, else the first shared
        writer's; a banked buffer's word goes to its bank's memory."""
        w, banks = self.cfg.axi_data_bytes, banks_of(b)
        addr, data, mask = Signal.like(self.load_addr), Signal(8 * w), Signal(w)
        m.d.comb += [addr.eq(self.load_addr), data.eq(self.load_data),
                     mask.eq(Mux(self.load_en & (self.load_buf == b), (1 << w) - 1, 0))]
        taken = self.load_en & (self.load_buf == b)
        for port in self.wr:
            want = port.en & (port.buf == b)
            with m.If(want & ~taken):
                m.d.comb += [port.grant.eq(1), addr.eq(port.addr), data.eq(port.data),
                             mask.eq(port.mask)]
            taken = taken | want
        for k, mem in enumerate(mems):
            wr = mem.write_port(granularity=8)
            mine = bank_of(addr) == k if banks > 1 else 1
            m.d.comb += [wr.addr.eq(row_of(addr, banks)), wr.data.eq(data),
                         wr.en.eq(Mux(mine, mask, 0))]

    def _read_side(self, m: Module, b: Buffer, mem: Memory, k: int, banks: int) -> Value:
        """Bank ``k`` of buffer ``b``'s read port: the STORE unit's read, else the first
        shared reader's of a word in this bank. Returns the word read."""
        rd = mem.read_port()

        def here(buf, addr):
            return (buf == b) & ((bank_of(addr) == k) if banks > 1 else 1)

        taken = self.store_en & here(self.store_buf, self.store_addr)
        m.d.comb += [rd.addr.eq(row_of(self.store_addr, banks)), rd.en.eq(taken)]
        for port in self.rd:
            want = port.en & here(port.buf, port.addr)
            with m.If(want & ~taken):
                m.d.comb += [port.grant.eq(1), rd.addr.eq(row_of(port.addr, banks)),
                             rd.en.eq(1)]
            taken = taken | want
        return rd.data

    @staticmethod
    def _route(m: Module, source, bank, words: dict, target) -> None:
        """``target`` = the word read from buffer ``source`` (in ``bank`` if it has two)."""
        with m.Switch(source):
            for b in Buffer:
                with m.Case(b):
                    if (b, 1) in words:
                        m.d.comb += target.eq(Mux(bank, words[b, 1], words[b, 0]))
                    else:
                        m.d.comb += target.eq(words[b, 0])


def word_count(nbytes, w: int):
    """Whole ``w``-byte words for ``nbytes`` bytes, as an Amaranth expression
    (``llmacc.layout.words`` in hardware)."""
    return (nbytes + (w - 1)) >> (w - 1).bit_length()


def snoop_writes(m: Module, fetches, port) -> None:
    """Let ``fetches`` see the writes of ``port`` (their unit's own), so that a cached word
    it overwrites is read again."""
    for fx in fetches:
        m.d.comb += [fx.snoop.en.eq(port.en), fx.snoop.grant.eq(port.grant),
                     fx.snoop.buf.eq(port.buf), fx.snoop.addr.eq(port.addr)]


def view(layout: type[data.Struct], value: Value) -> data.View:
    """The low bits of a fetched ``value`` (a :class:`FieldFetch`'s) seen as one ``layout``
    record of ``llmacc.layout``."""
    return data.View(layout, value[:layout.as_shape().size])


FetchRequest = data.StructLayout({"buf": Buffer, "bit": 32})
#: a fetch with runs: ``run`` asks for a whole run (``FieldFetch.run``), every slot as read
RunFetchRequest = data.StructLayout({"buf": Buffer, "bit": 32, "run": 1})


@dataclass
class _Fresh:
    """A slot-snooping :class:`FieldFetch`'s slots as read, per word: now, this cycle after
    the unit's write (``kept``), and for a word read this cycle (``read``); ``hit``."""

    slots: list
    kept: list
    read: list
    hit: Value
    run_hit: Value


class FieldFetch(wiring.Component):
    """Bit fields from the buffers: a request names a buffer and a bit address; while
    ``req.ready``, ``value`` holds the 64 bits from that address (LSB first; the caller takes
    the low bits it needs). Two consecutive words are cached; ``flush`` empties the cache
    (a new instruction), and ``snoop`` (the unit's own writes) invalidates a cached word.

    With ``slot_snoop``, for callers that take at most ``L.SLOT_BITS`` bits of a field: a
    write makes stale only the 32-bit slots whose bytes it sets, and a field is a hit while
    the slots under its first 32 bits are as read. A writer that reads each old value just
    before it writes it (a residual, element by element) keeps its words.

    With ``run_bits`` (a power of two, at most a word), ``run`` holds the ``run_bits`` at a
    run-aligned address as well: a writer of whole runs reads its old values a run at a time
    (a request with ``run`` set is a hit only while every slot of the run is as read).

    With ``read_ahead`` (runs only, no slot snooping), a walk of runs does not stop at a word's
    end: a run in the second word is served from it at once, that word becomes the first and
    the word after it is read behind the walk, asked for in the cycle it moves on (runs in the
    first word are served meanwhile), so a walk that spends two cycles or more in each word
    never waits for the memory (where its read port is not taken by another)."""

    def __init__(self, cfg: AccelConfig, slot_snoop: bool = False, run_bits: int = 0,
                 read_ahead: bool = False):
        self.word_bits = cfg.axi_data_bits
        self.slot_snoop = slot_snoop
        self.run_bits = run_bits
        self.read_ahead = read_ahead
        if read_ahead and (slot_snoop or not run_bits):
            raise ValueError("read-ahead serves runs of a fetch that does not snoop slots")
        if self.word_bits < FIELD_BITS:
            raise ValueError(f"{self.word_bits}-bit buffer words cannot hold a "
                             f"{FIELD_BITS}-bit field in two words")
        if run_bits and (run_bits & (run_bits - 1) or not L.SLOT_BITS <= run_bits <=
                         self.word_bits):
            raise ValueError(f"a run of {run_bits} bits is not a power-of-two number of "
                             f"slots in a {self.word_bits}-bit word")
        super().__init__({
            "req": In(stream.Signature(RunFetchRequest if run_bits else FetchRequest)),
            "value": Out(FIELD_BITS),
            **({"run": Out(run_bits)} if run_bits else {}),
            "flush": In(1),
            "snoop": In(write_port(cfg)),
            "port": Out(read_port(cfg)),
        })

    def elaborate(self, platform):
        m = Module()
        low = (self.word_bits - 1).bit_length()
        words = [Signal(self.word_bits, name=f"word{i}") for i in range(2)]
        base = Signal.like(self.port.addr)  # address of words[0]
        buf = Signal(Buffer)
        held = [Signal(name=f"held{i}") for i in range(2)]  # words[i] holds word base + i
        stale = Signal()  # a flush or a snooped write since the read in flight began
        want = self.req.payload.bit[low:]
        offset = self.req.payload.bit[:low]
        same = buf == self.req.payload.buf
        hit = same & (base == want) & held[0] & held[1]
        s = self.snoop
        wrote = s.en & s.grant & (s.buf == buf)
        ours = (s.addr == base) | (s.addr == base + 1)
        fresh = self._fresh(m, base, offset, wrote)
        # a write makes the words stale (a slot-snooping fetch: only the slots it sets)
        forget = self.flush if fresh is not None else self.flush | (wrote & ours)
        if fresh is not None:
            hit &= Mux(self.req.payload.run, fresh.run_hit, fresh.hit) if self.run_bits \
                else fresh.hit
        first = second = Const(0)
        if self.read_ahead:  # a run needs only the word that holds it
            run = self.req.payload.run
            first = run & same & (base == want) & held[0]
            second = run & same & (base + 1 == want) & held[1]
            hit = Mux(run, first | second, hit)
        m.d.comb += [self.value.eq(Cat(*words).bit_select(offset, FIELD_BITS)),
                     self.port.buf.eq(buf)]
        if self.run_bits:
            m.d.comb += self.run.eq(Mux(second, self._run_of(words[1], offset, self.run_bits),
                                        self._run_of(words[0], offset, self.run_bits)))
        taken = self.req.valid & self.req.ready
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.req.ready.eq(hit & ~self.flush)
                with m.If(taken & second):  # on into the second word; the next read behind,
                    # asked for in this cycle (a write to it now makes it stale)
                    m.d.comb += [self.port.en.eq(1), self.port.addr.eq(base + 2)]
                    m.d.sync += [base.eq(base + 1), words[0].eq(words[1]), held[1].eq(0),
                                 stale.eq(wrote & (s.addr == base + 2))]
                    m.next = "READ1"
                    with m.If(self.port.grant):
                        m.next = "TAKE1"
                with m.If(self.req.valid & ~hit & ~self.flush):
                    m.d.sync += [buf.eq(self.req.payload.buf), base.eq(want), held[0].eq(0),
                                 held[1].eq(0), stale.eq(0)]
                    with m.If(same & held[1] & (base + 1 == want)):  # walking on: keep it
                        m.d.sync += [words[0].eq(words[1]), held[0].eq(self.read_ahead)]
                        if fresh is not None:
                            m.d.sync += fresh.slots[0].eq(fresh.kept[1])
                        m.next = "READ1"
                    with m.Else():
                        m.next = "READ0"
            with m.State("READ0"):
                m.d.comb += [self.port.en.eq(1), self.port.addr.eq(base)]
                with m.If(self.port.grant):
                    m.next = "TAKE0"
            with m.State("TAKE0"):
                m.d.sync += words[0].eq(self.port.data)
                if self.read_ahead:
                    m.d.sync += held[0].eq(~stale)
                if fresh is not None:
                    m.d.sync += fresh.slots[0].eq(fresh.read[0])
                m.d.comb += [self.port.en.eq(1), self.port.addr.eq(base + 1)]
                with m.If(self.port.grant):
                    m.next = "TAKE1"
                with m.Else():
                    m.next = "READ1"
            with m.State("READ1"):
                m.d.comb += [self.req.ready.eq(first & ~self.flush),
                             self.port.en.eq(1), self.port.addr.eq(base + 1)]
                with m.If(self.port.grant):
                    m.next = "TAKE1"
            with m.State("TAKE1"):
                m.d.comb += self.req.ready.eq(first & ~self.flush)
                m.d.sync += [words[1].eq(self.port.data), held[1].eq(~stale)]
                if not self.read_ahead:
                    m.d.sync += held[0].eq(~stale)
                if fresh is not None:
                    m.d.sync += fresh.slots[1].eq(fresh.read[1])
                m.next = "IDLE"
        with m.If(forget):
            m.d.sync += [held[0].eq(0), held[1].eq(0), stale.eq(1)]
        return m

    def _run_of(self, word: Value, offset: Value, width: int) -> Value:
        """The part of ``word`` (a word's bits, or one bit a slot) under the run at bit
        ``offset`` of a word, ``width`` of its bits."""
        runs = len(word) // width
        return word if runs == 1 else word.word_select(offset >> (len(offset) -
                                                                  (runs - 1).bit_length()), width)

    def _fresh(self, m: Module, base, offset, wrote) -> _Fresh | None:
        """With ``slot_snoop``, the slots of the two words as read: each cycle the unit's
        write clears those it sets (``kept``); a word read or carried on sets them (``read``,
        less a write in that cycle); ``hit``: the slots under the first ``L.SLOT_BITS``
        bits from ``offset`` are as read (one slot, two where they straddle)."""
        if not self.slot_snoop:
            return None
        per_word = self.word_bits // L.SLOT_BITS
        slot_bytes = L.SLOT_BITS // 8
        s = self.snoop
        written = Cat(*(s.mask[k * slot_bytes:(k + 1) * slot_bytes].any()
                        for k in range(per_word)))
        slots = [Signal(per_word, name=f"fresh{i}") for i in range(2)]
        clear = [Mux(wrote & (s.addr == base + i), written, 0) for i in range(2)]
        kept = [slots[i] & ~clear[i] for i in range(2)]
        read = [~clear[i] for i in range(2)]
        m.d.sync += [slots[i].eq(kept[i]) for i in range(2)]
        under = Cat(*slots, Const(1, 1)).bit_select(offset >> SLOT_LOG2, 2)
        aligned = offset[:SLOT_LOG2] == 0
        run_hit = Const(0)
        if self.run_bits:
            run_hit = self._run_of(slots[0], offset, self.run_bits // L.SLOT_BITS).all()
        return _Fresh(slots, kept, read, under[0] & (under[1] | aligned), run_hit)


def packer_push(bits: int = FIELD_BITS) -> data.StructLayout:
    """A push of up to ``bits`` bits into a :class:`FieldPacker`."""
    return data.StructLayout({
        "value": bits,
        "width": range(bits + 1),
        "align": 1,  #: after this field, pad to the next word
        "tail": 1,  #: with ``align``: write only the bytes that hold data (no zero padding)
    })


class FieldPacker(wiring.Component):
    """Append fields at a word address: ``start`` (with ``buf``, ``addr`` and ``skip``) begins
    a record ``skip`` bytes into that word (the bytes before it are not written), pushes
    append ``width`` bits LSB first, whole words are written as they fill (a push is taken in
    the cycle its word is written, so a push a cycle never waits for the writes). ``idle``
    when everything pushed is written. A push holds up to ``push_bits`` bits, at most a
    word."""

    def __init__(self, cfg: AccelConfig, push_bits: int = FIELD_BITS):
        self.word_bits = cfg.axi_data_bits
        self.push_bits = push_bits
        if push_bits > self.word_bits:
            raise ValueError(f"a push of {push_bits} bits is wider than a "
                             f"{self.word_bits}-bit word")
        super().__init__({
            "start": In(1), "buf": In(Buffer), "addr": In(addr_bits(cfg)),
            "skip": In(range(cfg.axi_data_bytes)),
            "push": In(stream.Signature(packer_push(push_bits))),
            "idle": Out(1),
            "port": Out(write_port(cfg)),
        })

    def elaborate(self, platform):
        m = Module()
        wb, pb = self.word_bits, self.push_bits
        acc = Signal(wb + pb)
        count = Signal(range(wb + pb + 1))
        aligning, tail = Signal(), Signal()
        full = count >= wb
        flushing = aligning & (count != 0)
        p = self.push.payload
        used = Cat(*(count > 8 * i for i in range(wb // 8)))
        lead = Signal.like(self.skip)  # the first word's bytes before the record
        kept = Cat(*(lead <= i for i in range(wb // 8 - 1)), Const(1, 1))  # the last always
        wrote = self.port.en & self.port.grant
        # what stays after this cycle's write: a push joins it in the same cycle
        left = Mux(wrote, acc >> wb, acc)
        left_count = Signal.like(count)
        m.d.comb += [left_count.eq(Mux(wrote, Mux(full, count - wb, 0), count)),
                     self.port.data.eq(acc[:wb]), self.port.en.eq(full | flushing),
                     self.port.mask.eq(Mux(~full & tail, used, (1 << (wb // 8)) - 1) & kept),
                     self.push.ready.eq(~aligning & (~full | wrote)),
                     self.idle.eq((count == 0) & ~aligning)]
        with m.If(wrote):
            m.d.sync += [self.port.addr.eq(self.port.addr + 1), lead.eq(0)]
        with m.If(self.push.valid & self.push.ready):
            keep = (Const(1, pb + 1) << p.width) - 1
            m.d.sync += [acc.eq(left | ((p.value & keep) << left_count)),
                         count.eq(left_count + p.width), aligning.eq(p.align), tail.eq(p.tail)]
        with m.Elif(wrote):
            m.d.sync += [acc.eq(left), count.eq(left_count)]
        with m.Elif(aligning & (count == 0)):
            m.d.sync += aligning.eq(0)
        with m.If(self.start):
            m.d.sync += [self.port.buf.eq(self.buf), self.port.addr.eq(self.addr), acc.eq(0),
                         count.eq(self.skip << 3), lead.eq(self.skip), aligning.eq(0)]
        return m
