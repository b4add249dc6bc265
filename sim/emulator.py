"""The instruction-level emulator: executes programs with the exact semantics of the ISA.

State: external memory (one byte array per channel), the five on-chip buffers (bytes, word
addressed), the run-time registers. Every instruction is executed in program order as a
handful of vectorised calls into :mod:`llmacc.numerics` on the records of :mod:`llmacc.layout`,
so the emulator equals the integer reference by construction wherever the compiler lays the
model out correctly -- which is what the whole-model tests check.

Dependency tokens are checked as the hardware would see them: a ``wait`` with no token
released by an earlier instruction is a deadlock, and tokens left over at the end of a program
are an error. Cycles come from :mod:`sim.cycle_model`, with one timeline per unit, so
overlap between loads, compute and stores is counted as far as the tokens allow.
"""

from __future__ import annotations

import functools
import random
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from compiler.tokens import token_limit
from llmacc import layout as L
from llmacc import numerics as N
from llmacc.config import AccelConfig
from llmacc.isa import (
    OUT_MODES,
    SFU_FUNCTIONS,
    AttnFunc,
    Buffer,
    Instruction,
    LenSrc,
    Opcode,
    Reg,
    SysFunc,
    Unit,
)
from llmacc.widths import STREAM_PAGE_BYTES
from sim import compute_timing as T
from sim import cycle_model as C
from sim.weight_cache import PreparedTile, Source, WeightCache, grouped_acc

Tensor = torch.Tensor


#: Buffer views kept at most (:meth:`Emulator._records`); a few hundred per program.
MAX_VIEWS = 1 << 16
#: Bytes of decoded records kept at most (:class:`_DecodedRecords`): a decode step's KV
#: blocks, descriptors and tables; the oldest go first.
DECODED_BUDGET = 256 << 20


class EmulatorError(RuntimeError):
    """An instruction that cannot execute (out-of-range address, bad record, deadlock)."""


#: What executing one instruction may raise; reported with the instruction's index.
_INSTRUCTION_ERRORS = (EmulatorError, L.LayoutError, N.NumericsError)


def _at(index: int, insn: Instruction, exc: Exception) -> EmulatorError:
    return EmulatorError(f"instruction {index} ({insn.opcode.name}): {exc}")


def _rows(mem: np.ndarray, start: int, count: int, stride: int, width: int) -> np.ndarray:
    """A view [count, width] of ``mem``: rows of ``width`` bytes, ``stride`` bytes apart
    (bounds checked by the caller; rows may overlap, as with a stride of 0)."""
    if count == 0:
        return mem[:0].reshape(0, width)
    if count == 1 or stride == width:  # one run of bytes: a plain slice
        return mem[start:start + count * width].reshape(count, width)
    return np.lib.stride_tricks.as_strided(mem[start:], (count, width), (stride, 1))


def _assign(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst[...] = src`` where ``dst``'s rows may overlap: rows are written in order, so a
    later row's bytes win, as the hardware writes them."""
    if dst.shape[0] > 1 and dst.strides[0] < dst.shape[1]:
        for row in range(dst.shape[0]):
            dst[row] = src[row]
    else:
        dst[...] = src


class _DecodedRecords:
    """Pure decodes of buffer bytes, kept by those bytes.

    A decode step reads the same records again and again: a KV block for SCORE and for PV
    and for every query head of its group, a tile's descriptor, a layer's tables. A decode
    is a function of the record's bytes and shape alone, so a result kept under the bytes
    it came from is the result a fresh decode would give. Callers must not modify what
    they get.
    """

    def __init__(self, budget: int = DECODED_BUDGET):
        self.budget = budget
        self.used = 0
        self._kept: OrderedDict[tuple, tuple[object, int]] = OrderedDict()

    def __call__(self, decode: Callable, raw: np.ndarray, *args):
        key = (decode, raw.shape, raw.tobytes(), args)
        kept = self._kept.get(key)
        if kept is not None:
            self._kept.move_to_end(key)
            return kept[0]
        out = decode(raw, *args)
        size = len(key[2]) + sum(x.nbytes for x in out if isinstance(x, Tensor)) \
            if isinstance(out, tuple) else len(key[2])
        self._kept[key] = (out, size)
        self.used += size
        while self.used > self.budget:
            self.used -= self._kept.popitem(last=False)[1][1]
        return out


@functools.lru_cache(maxsize=64)
def _units(mask: int) -> tuple[Unit, ...]:
    """The units whose bits a wait or release mask sets."""
    return tuple(u for u in Unit if mask >> u.value & 1)


@functools.lru_cache(maxsize=1024)
def _visible(pos: int, rows: int, keys: int, sink: int, window: int) -> Tensor:
    """The keys that rows at ``pos`` and after see (``numerics.lambda_mask``), per shape."""
    return N.lambda_mask(pos + torch.arange(rows), keys, sink, window)


def _act_words(addr: int, rows: int, step: int, pitch: int) -> range:
    """The ACT words of ``rows`` records of ``pitch`` words from ``addr``, ``step`` apart."""
    return range(addr, addr + max(rows - 1, 0) * step + pitch)


def _prob_words(score: Instruction, w: int) -> range:
    """The ACT words a SCORE_SOFTMAX writes its probabilities to."""
    return _act_words(score.dst, score.rows, score.d_step, L.wide_pitch(score.keys, w))


def _query_head_pairs(program: list[Instruction], index: int,
                      w: int) -> list[tuple[Instruction, Instruction]]:
    """The SCORE_SOFTMAX/PV pairs from ``index`` on that ``Emulator._query_heads`` may run
    together: the same K and V blocks, probability rows and shapes, and no pair's queries in
    the words a pair writes (its probabilities and its outputs, all apart)."""
    pairs: list[tuple[Instruction, Instruction]] = []
    outs: list[range] = []
    for j in range(index, len(program) - 1, 2):
        s, p = program[j], program[j + 1]
        if not (s.opcode is Opcode.ATTN and s.func is AttnFunc.SCORE_SOFTMAX
                and p.opcode is Opcode.ATTN and p.func is AttnFunc.PV):
            break
        if p.q_addr != s.dst or p.a_step != s.d_step or p.rows != s.rows or \
                p.keys != s.keys or p.head_dim != s.head_dim or p.kv8 != s.kv8:
            break
        if pairs:
            s0, p0 = pairs[0]
            if (s.fields, p.kv_addr, p.shift, p.d_step) != (
                    {**s0.fields, "q_addr": s.q_addr}, p0.kv_addr, p0.shift, p0.d_step):
                break
        out = _act_words(p.dst, s.rows, p.d_step, L.wide_pitch(s.head_dim, w))
        if _overlaps(out, _prob_words(s, w)) or any(_overlaps(out, r) for r in outs):
            break
        outs.append(out)
        pairs.append((s, p))
    if not pairs:
        return pairs
    written = [_prob_words(pairs[0][0], w), *outs]  # one probability range for every pair
    queries = [_act_words(s.q_addr, s.rows, s.a_step, L.qrow_pitch(s.head_dim, w))
               for s, _ in pairs]
    while pairs and any(_overlaps(q, r) for q in queries for r in written):
        pairs.pop()
        written.pop()
        queries.pop()
    return pairs


def _overlaps(a: range, b: range) -> bool:
    return a.start < b.stop and b.start < a.stop


@dataclass
class RunStats:
    instructions: int = 0
    cycles: int = 0  #: with overlap between units (token-constrained)
    busy: dict[str, int] = field(default_factory=dict)  #: cycles busy per unit
    macs: int = 0


class Emulator:
    """One accelerator instance: ``run(program)`` executes a decoded program.

    Decoded weight tiles are kept between instructions (:mod:`sim.weight_cache`), which follows
    every write the emulator makes; bytes poked into ``buf`` from outside must be written
    before the first program runs.
    """

    def __init__(self, cfg: AccelConfig, channel_bytes: list[int]):
        if len(channel_bytes) > cfg.mem_channels:
            raise EmulatorError(f"{len(channel_bytes)} memory channels; the config has "
                                f"{cfg.mem_channels}")
        self.cfg = cfg
        self.w = cfg.axi_data_bytes
        self.ext = [np.zeros(n, dtype=np.uint8) for n in channel_bytes]
        self.buf = {b: np.zeros(cfg.buffer_words(b) * self.w, dtype=np.uint8) for b in Buffer}
        self.regs = dict.fromkeys(Reg, 0)
        self.weights = WeightCache(self.w)
        self._views: dict[tuple, np.ndarray] = {}
        self._decoded = _DecodedRecords()
        self.token_limit = token_limit(cfg)  #: tokens of a unit pair owed in program order

    # -- memory access ---------------------------------------------------------------------
    def _ext(self, chan: int) -> np.ndarray:
        if chan >= len(self.ext):
            raise EmulatorError(f"memory channel {chan} is not mapped ({len(self.ext)} are)")
        return self.ext[chan]

    def write_ext(self, chan: int, addr: int, data: bytes | np.ndarray) -> None:
        mem = self._ext(chan)
        data = np.frombuffer(bytes(data), dtype=np.uint8) if isinstance(data, bytes) else data
        if addr < 0 or addr + data.size > mem.size:
            raise EmulatorError(f"write of {data.size} B at {addr:#x} leaves channel {chan} "
                                f"({mem.size} B)")
        mem[addr:addr + data.size] = data.reshape(-1)
        self.weights.external_written(chan, addr, addr + data.size)

    def read_ext(self, chan: int, addr: int, nbytes: int) -> np.ndarray:
        mem = self._ext(chan)
        if addr < 0 or addr + nbytes > mem.size:
            raise EmulatorError(f"read of {nbytes} B at {addr:#x} leaves channel {chan} "
                                f"({mem.size} B)")
        return mem[addr:addr + nbytes].copy()

    def _records(self, buf: Buffer, addr: int, count: int, pitch: int, step: int | None = None,
                 width: int | None = None) -> np.ndarray:
        """A view [count, width*W] of ``count`` records of ``pitch`` words starting at word
        ``addr``, ``step`` words apart (default: ``pitch``).

        The buffers never move, so a view is made and checked once per shape and kept: a
        program asks for the same few hundred again at every step.
        """
        key = (buf, addr, count, pitch, step, width)
        view = self._views.get(key)
        if view is None:
            step = pitch if step is None else step
            width = pitch if width is None else width
            size = self.buf[buf].size // self.w
            last = addr + (count - 1) * step + width
            if count < 0 or addr < 0 or step < 0 or (count and last > size):
                raise EmulatorError(f"{buf.name} buffer: words [{addr}, {last}) exceed its "
                                    f"{size} words")
            if len(self._views) >= MAX_VIEWS:
                self._views.clear()
            view = _rows(self.buf[buf], addr * self.w, count, step * self.w, width * self.w)
            self._views[key] = view
        return view

    def _get(self, buf: Buffer, addr: int, count: int, pitch: int, step: int | None = None,
             width: int | None = None) -> np.ndarray:
        return self._records(buf, addr, count, pitch, step, width).copy()

    def _put(self, buf: Buffer, addr: int, data: np.ndarray, step: int | None = None) -> None:
        pitch = data.shape[1] // self.w
        _assign(self._records(buf, addr, data.shape[0], pitch, step), data)
        self.weights.buffer_written(buf, addr, addr + (data.shape[0] - 1) * (step or pitch)
                                    + pitch)

    def _put_wide(self, addr: int, values: Tensor, step: int) -> None:
        """Write ``values`` [R, n] as int32 at ``addr + r*step`` (only n*4 bytes per row)."""
        raw = np.ascontiguousarray(values.numpy().astype("<i4")).view(np.uint8)
        rows = self._records(Buffer.ACT, addr, raw.shape[0], step, step,
                             L.wide_pitch(values.shape[1], self.w))
        _assign(rows[:, :raw.shape[1]], raw)

    def _wide(self, buf: Buffer, addr: int, rows: int, length: int,
              step: int | None = None) -> Tensor:
        pitch = L.wide_pitch(length, self.w)
        return L.decode_wide(self._get(buf, addr, rows, pitch, step), length)

    # -- execution -------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, program: list[Instruction], regs: dict[Reg, int] | None = None) -> RunStats:
        """Execute ``program`` from its first word to HALT (or its end). ``regs`` are set as
        a kernel run sets them, by a SETREG word each before the program, and cost their
        issue cycles (:func:`host.device.kernel_program`). Torch runs without autograd's
        bookkeeping (``inference_mode``): nothing made here leaves but bytes and counts."""
        if regs:
            self.regs.update(regs)
        stats = RunStats(busy={u.name: 0 for u in Unit})
        free = dict.fromkeys(Unit, 0)
        tokens: dict[tuple[Unit, Unit], deque[int]] = {(a, b): deque() for a in Unit
                                                       for b in Unit}
        # The controller's clock: in order, one instruction per issue_cycles, from the first
        # word's arrival.
        step = C.issue_cycles(self.cfg)
        issue = C.fetch_beats(self.cfg) + step * len(regs or {})
        ran = 0  # instructions before this index have run with a group (``_query_heads``)
        for index, insn in enumerate(program):
            try:
                if insn.opcode is Opcode.SYS:
                    if self._sys(insn, free):
                        break
                    issue += step
                    if insn.func is SysFunc.SYNC:  # waits for every unit
                        issue = max(issue, *free.values())
                    continue
                unit = insn.unit
                issue += step
                start = max(free[unit], issue)
                for src in _units(insn.wait):
                    queue = tokens[(src, unit)]
                    if not queue:
                        raise EmulatorError(
                            f"waits for a token from {src.name} that no earlier "
                            "instruction released (deadlock)")
                    start = max(start, queue.popleft() + C.TOKEN_EXTRA)
                if index >= ran and insn.opcode is Opcode.ATTN:
                    ran = index + self._query_heads(program, index)
                if index < ran:  # its data moved with its group: only its cost is left
                    macs, cycles = self._attn_price(insn)
                    stats.macs += macs
                else:
                    cycles = self._execute(insn, stats)
                free[unit] = start + cycles
                stats.busy[unit.name] += cycles
                for dst in _units(insn.release):
                    tokens[(unit, dst)].append(free[unit])
                    self._check_owed(unit, dst, len(tokens[(unit, dst)]))
            except _INSTRUCTION_ERRORS as exc:
                raise _at(index, insn, exc) from None
            stats.instructions += 1
        left = {f"{a.name}->{b.name}": len(q) for (a, b), q in tokens.items() if q}
        if left:
            raise EmulatorError(f"program ended with unconsumed tokens {left}")
        stats.cycles = C.PROGRAM_EXTRA + max(issue, *free.values())
        return stats

    @torch.inference_mode()
    def run_interleaved(self, program: list[Instruction], regs: dict[Reg, int] | None,
                        rng: random.Random) -> None:
        """Execute with the units interleaved at random, as far as the tokens allow.

        The controller dispatches in program order (SETREG takes effect there; SYNC and HALT
        drain every unit); each unit then runs its own instructions in order, but which unit
        goes next is random. Equal results with :meth:`run` show that the tokens, not program
        order, protect every hazard.
        """
        if regs:
            self.regs.update(regs)
        dispatched = dict(self.regs)
        queues: dict[Unit, deque] = {u: deque() for u in Unit}
        tokens = {(a, b): 0 for a in Unit for b in Unit}
        stats = RunStats()

        def drain() -> None:
            while any(queues.values()):
                ready = [u for u in Unit if queues[u] and all(
                    tokens[(v, u)] > 0 for v in Unit if queues[u][0][1].wait >> v.value & 1)]
                if not ready:
                    heads = {u.name: i for u in Unit if queues[u] for i in [queues[u][0][0]]}
                    raise EmulatorError(f"deadlock: no unit can issue (queue heads {heads})")
                unit = rng.choice(ready)
                index, insn, snapshot = queues[unit].popleft()
                for v in Unit:
                    tokens[(v, unit)] -= insn.wait >> v.value & 1
                self.regs = snapshot
                try:
                    self._execute(insn, stats)
                except _INSTRUCTION_ERRORS as exc:
                    raise _at(index, insn, exc) from None
                for v in Unit:
                    tokens[(unit, v)] += insn.release >> v.value & 1

        owed = dict.fromkeys(tokens, 0)  # in program order, as ``run`` counts them
        for index, insn in enumerate(program):
            if insn.opcode is Opcode.SYS:
                if insn.func is SysFunc.SETREG:
                    dispatched[insn.reg] = insn.imm
                elif insn.func in (SysFunc.SYNC, SysFunc.HALT):
                    drain()
                    if insn.func is SysFunc.HALT:
                        break
                continue
            for v in Unit:  # its waits, then its releases, as run takes them
                owed[(v, insn.unit)] -= insn.wait >> v.value & 1
                if insn.release >> v.value & 1:
                    owed[(insn.unit, v)] += 1
                    try:
                        self._check_owed(insn.unit, v, owed[(insn.unit, v)])
                    except EmulatorError as exc:
                        raise _at(index, insn, exc) from None
            queues[insn.unit].append((index, insn, dict(dispatched)))
        drain()
        self.regs = dispatched

    def _check_owed(self, src: Unit, dst: Unit, owed: int) -> None:
        """Refuse a program in which ``src`` owes ``dst`` more tokens than the limit."""
        if owed > self.token_limit:
            raise EmulatorError(
                f"more than {self.token_limit} tokens from {src.name} to {dst.name} "
                "outstanding: the controller's counters could overflow "
                "(compiler/tokens.py: token_limit)")

    def _sys(self, insn: Instruction, free: dict[Unit, int]) -> bool:
        """Run a controller instruction; True for HALT."""
        if insn.func is SysFunc.SETREG:
            self.regs[insn.reg] = insn.imm
        elif insn.func is SysFunc.SYNC:
            t = max(free.values())
            free.update(dict.fromkeys(free, t))
        return insn.func is SysFunc.HALT

    def _execute(self, insn: Instruction, stats: RunStats) -> int:
        op = insn.opcode
        if op in (Opcode.LOAD, Opcode.STORE):
            return self._mem(insn)
        if op in (Opcode.MATVEC, Opcode.MATMAT, Opcode.MATSTREAM):
            macs, cycles = self._matrix(insn)
        elif op is Opcode.ATTN:
            macs, cycles = self._attn(insn)
        else:
            self._sfu(insn)
            macs, cycles = 0, T.sfu_cycles(self.cfg, insn)
        stats.macs += macs
        return cycles

    def _mem(self, insn: Instruction) -> int:
        rows = self.regs[Reg.SEQ_LEN] if insn.rows_src is LenSrc.SEQ else insn.rows
        pos = self.regs[Reg.POS] // (L.kv_slots(self.w) if insn.pos_header else 1)
        addr = insn.ext_addr + (pos * insn.ext_stride if insn.pos_offset else 0)
        nbytes = insn.words * self.w
        if addr % self.w or insn.ext_stride % self.w:
            raise EmulatorError(f"external address {addr:#x} / stride {insn.ext_stride} is not "
                                f"a whole number of {self.w}-byte AXI words")
        mem = self._ext(insn.chan)
        end = addr + max(0, rows - 1) * insn.ext_stride + nbytes
        if rows and (addr < 0 or end > mem.size):
            raise EmulatorError(f"external range {addr:#x}+{rows}x{insn.ext_stride} leaves "
                                f"channel {insn.chan} ({mem.size} B)")
        on_chip = self._records(insn.buf, insn.buf_addr, rows, insn.words)
        off_chip = _rows(mem, addr, rows, insn.ext_stride, nbytes)
        if insn.opcode is Opcode.LOAD:
            _assign(on_chip, off_chip)
            self.weights.buffer_written(insn.buf, insn.buf_addr, insn.buf_addr + rows * insn.words,
                                        Source(insn.chan, addr, rows, insn.words, insn.ext_stride))
        else:
            _assign(off_chip, on_chip)
            if rows:
                self.weights.external_written(insn.chan, addr, end)
        return C.transfer_cycles(self.cfg, insn.opcode is Opcode.LOAD, addr, insn.ext_stride,
                                 rows, insn.words)

    def _matrix(self, insn: Instruction) -> tuple[int, int]:
        """Run a matrix instruction: its multiply-accumulates and cycles."""
        w, k, n, m = self.w, insn.k, insn.n, insn.m
        if insn.opcode is not Opcode.MATSTREAM and not self.cfg.record_matrices:
            raise EmulatorError(f"config {self.cfg.name} has no record path for MATVEC/MATMAT "
                                "(record_matrices is false): its weights stream (MATSTREAM)")
        dwords = L.descriptor_words(w)
        desc = self._decoded(L.Descriptor.decode, self._records(Buffer.META, insn.meta_addr, 1,
                                                                dwords))
        if insn.opcode is Opcode.MATSTREAM:
            geom = L.stream_geometry(self.cfg, desc, k)
            tile = self._stream_tile(insn, geom)
        else:
            tile = self._weight_tile(insn, desc)
        cycles = T.matrix_cycles(self.cfg, T.MatrixShape.of(insn, desc))
        x, xm, xe = L.decode_qrows(self._get(Buffer.ACT, insn.act_addr, m,
                                             L.qrow_pitch(k, w)), k, w)
        out = N.linear_out(grouped_acc(x, tile), xm, xe, tile.shift, 0, 0)
        step = 0 if insn.opcode is Opcode.MATVEC else insn.out_pitch
        spec = OUT_MODES[insn.out_mode]
        if spec.operands == "residual":
            old = self._wide(Buffer.ACT, insn.out_addr, m, n, step)
            out = getattr(N, spec.reference)(old, out, desc.p0)
        elif spec.operands == "elementwise":
            out = getattr(N, spec.reference)(out, desc.p0, desc.p1)
        elif spec.operands != "result":
            raise EmulatorError(f"out_mode {insn.out_mode.name}: operands {spec.operands!r}")
        self._put_wide(insn.out_addr, out, step)
        return m * n * desc.kept(k), cycles

    def _stream_tile(self, insn: Instruction, geom: L.StreamGeometry) -> PreparedTile:
        """A MATSTREAM's decoded weights: every channel's stream at the instruction's page,
        from the cache while no write has touched those bytes."""
        cfg = self.cfg
        why = geom.desc.schedule_error(cfg.chain_group)
        if why:
            raise EmulatorError(f"the engine cannot run this tile: {why}")
        channels, lanes = cfg.mem_channels, cfg.lanes_per_channel
        passes = L.stream_passes(insn.n, channels, lanes)
        words = L.stream_words(geom, lanes, passes)
        addr, nbytes = insn.page * STREAM_PAGE_BYTES, words * self.w
        key = self.weights.stream_key(channels, addr, nbytes, geom, insn.n)
        tile = self.weights.get(key)
        if tile is None:
            streams = []
            for chan in range(channels):
                mem = self._ext(chan)
                if addr + nbytes > mem.size:
                    raise EmulatorError(f"weight stream {addr:#x}+{nbytes} leaves channel "
                                        f"{chan} ({mem.size} B)")
                streams.append(mem[addr:addr + nbytes].reshape(words, self.w))
            tile = PreparedTile.of(*L.decode_tile_streams(geom, channels, lanes, insn.n,
                                                          streams), geom.desc.group)
            self.weights.put(key, tile)
        return tile

    def _weight_tile(self, insn: Instruction, desc: L.Descriptor) -> PreparedTile:
        """The matrix instruction's decoded weights: from the cache while its WGT and META
        words hold the bytes of the same LOADs, else decoded here."""
        w, k, n = self.w, insn.k, insn.n
        wpitch, mpitch = desc.wgt_pitch(k, w), desc.meta_pitch(k, w)
        rows0 = insn.meta_addr + L.descriptor_words(w)
        key = self.weights.key((insn.wgt_addr, insn.wgt_addr + n * wpitch),
                               (insn.meta_addr, rows0 + n * mpitch), k)
        tile = None if key is None else self.weights.get(key)
        if tile is None:
            wgt = self._get(Buffer.WGT, insn.wgt_addr, n, wpitch)
            meta = self._get(Buffer.META, rows0, n, mpitch)
            tile = PreparedTile.of(*L.decode_weight_rows(desc, wgt, meta, k), desc.group)
            if key is not None:
                self.weights.put(key, tile)
        return tile

    def _mask(self, rows: int, keys: int) -> Tensor:
        return _visible(self.regs[Reg.POS], rows, keys, self.regs[Reg.SINK],
                        self.regs[Reg.WINDOW])

    def _attn(self, insn: Instruction) -> tuple[int, int]:
        """Run an ATTN: its multiply-accumulates and cycles."""
        rows, keys = insn.rows, insn.keys
        kv = self._kv_block(insn)
        mask = self._mask(rows, keys)
        if insn.func in (AttnFunc.SCORE, AttnFunc.SCORE_SOFTMAX):
            qc, qm, qe = self._queries(insn)
            out = N.attention_scores(qc, qm, qe, *kv, insn.shift + N.SCORE_FRAC, 0)
            if insn.func is AttnFunc.SCORE_SOFTMAX:
                out = N.softmax(out, mask)
        elif insn.func is AttnFunc.PV:
            probs = self._wide(Buffer.ACT, insn.q_addr, rows, keys, insn.a_step)
            out = N.attention_pv(probs, mask, *kv, insn.shift, 0)
        else:
            raise EmulatorError(f"ATTN function {insn.func.name} is reserved")
        self._put_wide(insn.dst, out, insn.d_step)
        return self._attn_price(insn)

    def _attn_price(self, insn: Instruction) -> tuple[int, int]:
        """An ATTN's multiply-accumulates and cycles."""
        return insn.rows * insn.keys * insn.head_dim, T.attention_cycles(self.cfg, insn)

    def _kv_block(self, insn: Instruction) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The codes, scale mantissas and exponents and midpoints of an ATTN's KV block."""
        w, d, keys = self.w, insn.head_dim, insn.keys
        if d % 2 or d == 0:
            raise EmulatorError(f"head_dim {d} must be even and positive")
        bits = 8 if insn.kv8 else 4
        return self._decoded(L.decode_kv, self._records(
            Buffer.KV, insn.kv_addr, 1, L.kv_block(keys, d, bits, w)), keys, d, bits, w)

    def _queries(self, insn: Instruction) -> tuple[Tensor, Tensor, Tensor]:
        """A SCORE's query rows: codes and SF16 scales."""
        pitch = L.qrow_pitch(insn.head_dim, self.w)
        return L.decode_qrows(self._get(Buffer.ACT, insn.q_addr, insn.rows, pitch, insn.a_step),
                              insn.head_dim, self.w)

    def _query_heads(self, program: list[Instruction], index: int) -> int:
        """Run the query heads that share a KV head together: the instructions from ``index``
        that it ran (0 where it ran none).

        A grouped-query model's decode step runs, for each query head of a KV head, a
        SCORE_SOFTMAX into one probability row and a PV from it, one after the other. Where
        the pairs read the same K and V blocks with the same shape and no pair's queries lie
        where a pair writes, their scores, softmax and P x V are each one call over every
        head's rows: row-wise operations, so each row is what its own instruction gives. The
        probability rows still pass through ACT between SCORE_SOFTMAX and PV, head by head,
        as the instructions move them.
        """
        pairs = _query_head_pairs(program, index, self.w)
        if len(pairs) < 2:
            return 0
        first, pv = pairs[0]
        rows, keys = first.rows, first.keys
        try:
            queries = [self._queries(s) for s, _ in pairs]
            qc, qm, qe = (torch.cat(parts) for parts in zip(*queries, strict=True))
            mask = self._mask(rows, keys).repeat(len(pairs), 1)
            scores = N.attention_scores(qc, qm, qe, *self._kv_block(first),
                                        first.shift + N.SCORE_FRAC, 0)
            probs = N.softmax(scores, mask)
            moved = []
            for h, (s, _) in enumerate(pairs):
                self._put_wide(s.dst, probs[h * rows:(h + 1) * rows], s.d_step)
                moved.append(self._wide(Buffer.ACT, pv.q_addr, rows, keys, pv.a_step))
            out = N.attention_pv(torch.cat(moved), mask, *self._kv_block(pv), pv.shift, 0)
        except _INSTRUCTION_ERRORS:
            return 0  # one at a time, so that the error names its instruction
        for h, (_, p) in enumerate(pairs):
            self._put_wide(p.dst, out[h * rows:(h + 1) * rows], p.d_step)
        return 2 * len(pairs)

    def _sfu(self, insn: Instruction) -> None:
        """One SFU instruction, by its function's operand kind (``isa.SFU_FUNCTIONS``)."""
        spec = SFU_FUNCTIONS[insn.func]
        handler = getattr(self, f"_sfu_{spec.operands}", None)
        if handler is None:
            raise EmulatorError(f"SFU function {insn.func.name}: no emulation of "
                                f"{spec.operands!r} operands")
        reference = getattr(N, spec.reference)
        out = handler(insn, reference)
        if out is not None:
            self._put(Buffer.ACT, insn.dst, L.encode_wide(out, self.w))

    def _sfu_a(self, insn: Instruction) -> Tensor:
        return self._wide(Buffer.ACT, insn.src_a, insn.rows, insn.length)

    def _sfu_unary(self, insn: Instruction, reference) -> Tensor:
        return reference(self._sfu_a(insn), insn.imm, insn.imm2)

    def _sfu_binary(self, insn: Instruction, reference) -> Tensor:
        if insn.imm & 1:
            b = self._wide(Buffer.TABLE, insn.src_b, 1, insn.length)
        else:
            b = self._wide(Buffer.ACT, insn.src_b, insn.rows, insn.length)
        return reference(self._sfu_a(insn), b, insn.shift)

    def _sfu_gamma(self, insn: Instruction, reference) -> Tensor:
        length = insn.length
        gamma, eps = self._decoded(L.decode_gamma, self._records(
            Buffer.TABLE, insn.src_b, 1, L.gamma_pitch(length, self.w)), length, self.w)
        return reference(self._sfu_a(insn), gamma, insn.shift, eps, 0)

    def _sfu_masked(self, insn: Instruction, reference) -> Tensor:
        return reference(self._sfu_a(insn), self._mask(insn.rows, insn.length))

    def _sfu_rope(self, insn: Instruction, reference) -> Tensor:
        d, rows, length = insn.imm, insn.rows, insn.length
        if d <= 0 or d % 2 or length % d:
            raise EmulatorError(f"ROPE: head_dim {d} does not divide length {length}")
        cos, sin = self._decoded(L.decode_rope, self._records(
            Buffer.TABLE, insn.src_b, rows, L.rope_pitch(d, self.w)), d)
        x = self._sfu_a(insn).reshape(rows, length // d, d)
        return reference(x, cos.unsqueeze(1), sin.unsqueeze(1)).reshape(rows, length)

    def _sfu_quant8(self, insn: Instruction, reference) -> None:
        length = insn.length
        seg = insn.imm2 or length
        pad = insn.imm or seg
        if seg <= 0 or length % seg or pad < seg:
            raise EmulatorError(f"QUANT8: segment {seg} / padding {pad} do not fit "
                                f"length {length}")
        q, m, e = reference(self._sfu_a(insn).reshape(-1, seg))
        q = torch.nn.functional.pad(q, (0, pad - seg))
        self._put(Buffer.ACT, insn.dst, L.encode_qrows(q, m, e, self.w))

    def _sfu_kvquant(self, insn: Instruction, reference) -> None:
        group, bits, rows, length = insn.imm, insn.imm2, insn.rows, insn.length
        if bits not in L.KV_CODE_BITS or group <= 0 or length % group:
            raise EmulatorError(f"KVQUANT: group {group} / bits {bits} unsupported for "
                                f"length {length}")
        codes, m, e, mid = reference(self._sfu_a(insn), group, bits)
        w, groups = self.w, length // group
        payload, block = L.kv_payload(group, bits, w), L.kv_block(rows, group, bits, w)
        first = self.regs[Reg.POS] % L.kv_slots(w)
        slot = L.record_bytes(L.KvHeader)
        for g in range(groups):  # the payloads, then only the rows' header slots
            base = insn.dst + g * block
            self._put(Buffer.KV, base, L.encode_kv_payload(codes[:, g * group:(g + 1) * group],
                                                           bits, w))
            heads = self._records(Buffer.KV, base + rows * payload, 1,
                                  L.kv_header_words(rows, w))
            heads[0, first * slot:(first + rows) * slot] = L.encode_kv_headers(
                m[:, g], e[:, g], mid[:, g]).reshape(-1)
            self.weights.buffer_written(Buffer.KV, base, base + block)

    def _sfu_embed(self, insn: Instruction, reference) -> Tensor:
        group, rows, length = insn.imm, insn.rows, insn.length
        if group <= 0:
            raise EmulatorError(f"EMBED: scale group {group} must be positive")
        pitch = L.embed_pitch(length, group, self.w)
        codes, mant, e = L.decode_embedding(self._get(Buffer.ACT, insn.src_a, rows, pitch),
                                            length, group, self.w)
        return reference(codes, mant, e, group, -insn.shift)
