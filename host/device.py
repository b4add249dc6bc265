"""One device interface for every back end: load a compiled model, prefill, decode.

The host's part of a step is data movement and register writes only: it copies the embedding
records of the step's tokens into the input region, sets POS and SEQ_LEN, starts the bucket's
program and reads the wide logits back. All arithmetic happens on the device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from compiler.compile import CompiledModel
from compiler.lower import Program
from host.arguments import BACKENDS
from llmacc import isa
from llmacc.isa import Opcode, Reg, SysFunc
from llmacc.kernel import fault_name, read_status
from sim.emulator import Emulator, RunStats

Tensor = torch.Tensor


class DeviceError(RuntimeError):
    """The device ended a program with a fault, or the device is missing or failed."""


def kernel_program(program: Program, regs: dict[Reg, int]) -> bytes:
    """The words a kernel runs: SETREG for each run-time register, then the program."""
    words = [isa.make(Opcode.SYS, func=SysFunc.SETREG, reg=r, imm=v) for r, v in regs.items()]
    return isa.encode_program(words + list(program.instructions))


def kernel_program_bytes(compiled: CompiledModel) -> int:
    """Instruction memory for the longest program with its SETREG words (a power of two)."""
    longest = max(len(p.instructions) for p in compiled.programs.values())
    return 1 << max(12, ((longest + len(Reg) + 1) * isa.WORD_BYTES - 1).bit_length())


def kernel_stats(program: Program, regs: dict[Reg, int], status: int, cycles: int,
                 counters: dict[str, int]) -> RunStats:
    """A kernel run's statistics from its status and counter registers (``llmacc/kernel.py``);
    a fault raises :class:`DeviceError` naming the fault and the program's instruction."""
    error, fault, pc = read_status(status)
    if error:
        raise DeviceError(f"the accelerator stopped with fault {fault_name(fault)} at instruction "
                          f"{pc - len(regs)} of {program.kind} {program.length}")
    busy = {u.name: counters[f"busy_{u.name.lower()}"] for u in isa.Unit}
    return RunStats(instructions=counters["dispatched"], cycles=cycles, busy=busy)


class Device(ABC):
    """A back end that runs a compiled model's programs."""

    def __init__(self, compiled: CompiledModel):
        self.compiled = compiled
        self.host = compiled.host
        self.stats: list[RunStats] = []

    @abstractmethod
    def write(self, chan: int, addr: int, data: np.ndarray) -> None: ...

    @abstractmethod
    def read(self, chan: int, addr: int, nbytes: int) -> np.ndarray: ...

    @abstractmethod
    def execute(self, program: Program, regs: dict[Reg, int]) -> RunStats: ...

    @abstractmethod
    def close(self) -> None:
        """Release the back end (a simulation process, a card)."""

    def load_image(self) -> None:
        for region, blob in self.compiled.image:
            self.write(region.chan, region.addr, np.frombuffer(blob, dtype=np.uint8))

    def _stage_tokens(self, tokens: list[int]) -> None:
        h = self.host
        if any(not 0 <= t < h.vocab for t in tokens):
            raise ValueError(f"token ids must lie in 0..{h.vocab - 1}")
        for row, t in enumerate(tokens):  # only the records of these tokens, not the table
            record = self.read(h.embedding.chan, h.embedding.addr + t * h.record_bytes,
                               h.record_bytes)
            self.write(h.inputs.chan, h.inputs.addr + row * h.record_bytes, record)

    def _logits(self, rows: int) -> Tensor:
        """The first ``rows`` positions' wide logits, gathered from every vocabulary slice."""
        parts = []
        for part in self.host.logits:
            raw = self.read(part.region.chan, part.region.addr, rows * part.pitch)
            parts.append(raw.reshape(rows, part.pitch)[:, :4 * part.n])
        raw = np.ascontiguousarray(np.concatenate(parts, axis=1))
        return torch.from_numpy(raw.view("<i4").astype(np.int64))

    def prefill(self, tokens: list[int]) -> Tensor:
        """Wide logits [T, vocab] of a prompt (from position 0)."""
        rows = self.host.prefill_rows(len(tokens))
        self._stage_tokens(tokens)
        self.stats.append(self.execute(self.compiled.program("prefill", rows),
                                       {Reg.POS: 0, Reg.SEQ_LEN: len(tokens)}))
        return self._logits(len(tokens))

    def decode(self, token: int, pos: int) -> Tensor:
        """Wide logits [vocab] of ``token`` at position ``pos`` (the cache holds 0..pos-1)."""
        keys = self.host.decode_keys(pos + 1)
        self._stage_tokens([token])
        self.stats.append(self.execute(self.compiled.program("decode", keys),
                                       {Reg.POS: pos, Reg.SEQ_LEN: pos + 1}))
        return self._logits(1)[0]


class EmulatorDevice(Device):
    """The instruction-level emulator as a device."""

    def __init__(self, compiled: CompiledModel):
        super().__init__(compiled)
        self.emu = Emulator(compiled.config, list(compiled.host.channel_bytes))
        self.load_image()

    def write(self, chan: int, addr: int, data: np.ndarray) -> None:
        self.emu.write_ext(chan, addr, data)

    def read(self, chan: int, addr: int, nbytes: int) -> np.ndarray:
        return self.emu.read_ext(chan, addr, nbytes)

    def execute(self, program: Program, regs: dict[Reg, int]) -> RunStats:
        return self.emu.run(program.instructions, regs)

    def close(self) -> None:
        """Nothing to release: the emulator lives in this process."""


def open_device(backend: str, compiled: CompiledModel, *, xclbin: str | None = None,
                card: int = 0) -> Device:
    """A device of ``backend`` (one of :data:`BACKENDS`) with ``compiled`` loaded."""
    if backend == "emulator":
        return EmulatorDevice(compiled)
    if backend == "rtl":
        from host.rtl_device import RtlDevice

        return RtlDevice(compiled)
    if backend == "xrt":
        from host.xrt_device import XrtDevice

        return XrtDevice(compiled, xclbin, card)
    raise ValueError(f"unknown back end {backend!r}; choose from {', '.join(BACKENDS)}")
