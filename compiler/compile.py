"""The compiler's driver: a quantized model in, every bucket's program and the memory image out.

``compile_model(im, cfg)`` places the integer model in external memory, then builds one prefill
program per prefill bucket (rows rounded up to a multiple of ``prefill_bucket``; a prompt
shorter than one bucket rounded up to a power of two, from ``prefill_min`` rows) and one decode
program per decode bucket (keys rounded up to a multiple of ``decode_bucket``). The host picks
the program for the actual length and patches it through the POS and SEQ_LEN registers.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from compiler.lower import Lowering, Program
from compiler.memory_plan import CompileError, LogitSlice, Region
from compiler.placement import place
from llmacc import isa
from llmacc.config import AccelConfig
from quant.intref import IntModel

#: The smallest prefill program by default: a one-token prompt runs a one-row program.
PREFILL_MIN = 1


@dataclass(frozen=True)
class HostInterface:
    """What the runtime needs to drive the programs (stored in the package manifest)."""

    max_len: int
    prefill_bucket: int
    decode_bucket: int
    vocab: int
    embedding: Region  #: one record per token id
    record_bytes: int  #: bytes per embedding record
    inputs: Region
    logits: tuple[LogitSlice, ...]  #: the vocabulary in column slices, one per classifier tile
    channel_bytes: tuple[int, ...]
    #: The smallest prefill program: a prompt shorter than ``prefill_bucket`` runs the
    #: power-of-two program that holds it, from this many rows (``prefill_bucket``: none, as
    #: packages made before short programs existed, whose manifests lack it).
    prefill_min: int = 0

    def __post_init__(self):
        if self.prefill_min == 0:
            object.__setattr__(self, "prefill_min", self.prefill_bucket)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> HostInterface:
        d = dict(d)
        for k in ("embedding", "inputs"):
            d[k] = Region(**d[k])
        d["logits"] = tuple(LogitSlice(**{**p, "region": Region(**p["region"])})
                            for p in d["logits"])
        d["channel_bytes"] = tuple(d["channel_bytes"])
        return cls(**d)

    def _bucket(self, n: int, size: int, what: str) -> int:
        if not 1 <= n <= self.max_len:
            raise ValueError(f"{what} of {n} tokens: the package supports 1..{self.max_len}")
        return min(self.max_len, -(-n // size) * size)

    def prefill_rows(self, tokens: int) -> int:
        """The prefill bucket (rows) for a prompt of ``tokens`` tokens: a multiple of
        ``prefill_bucket``, or under one bucket the power of two that holds the prompt (at
        least ``prefill_min``), so that a short prompt computes few padding rows."""
        rows = self._bucket(tokens, self.prefill_bucket, "prompt")
        short = max(self.prefill_min, 1 << (tokens - 1).bit_length())
        return min(rows, short)

    def decode_keys(self, seq_len: int) -> int:
        """The decode bucket (keys) for a step that leaves ``seq_len`` tokens in the cache."""
        return self._bucket(seq_len, self.decode_bucket, "context")

    def prefill_lengths(self) -> list[int]:
        return sorted({self.prefill_rows(t) for t in range(1, self.max_len + 1)})

    def decode_lengths(self) -> list[int]:
        return sorted({self.decode_keys(t) for t in range(1, self.max_len + 1)})


@dataclass
class CompiledModel:
    config: AccelConfig
    model: IntModel
    host: HostInterface
    image: list[tuple[Region, bytes]]
    programs: dict[tuple[str, int], Program] = field(default_factory=dict)
    seconds: float = 0.0  #: compile time

    def program(self, kind: str, length: int) -> Program:
        try:
            return self.programs[(kind, length)]
        except KeyError:
            raise ValueError(f"no {kind} program for length {length}; have "
                             f"{sorted(n for k, n in self.programs if k == kind)}") from None

    def storage(self) -> dict[str, float]:
        """Instruction bytes stored with buckets, and with one program per length.

        One program per length is counted, not built: a step's instructions do not depend on
        its row or key count, so a prefill of ``L`` rows in chunks of ``C`` is the bucket
        program with ``ceil(L / C)`` steps, and a decode program has the same size at every
        length.
        """
        words = sum(len(p.instructions) for p in self.programs.values())
        per_length = 0
        for t in range(1, self.host.max_len + 1):
            decode = self.programs.get(("decode", self.host.decode_keys(t)))
            if decode is not None:
                per_length += len(decode.instructions)
            prefill = self.programs.get(("prefill", self.host.prefill_rows(t)))
            if prefill is not None:
                steps = prefill.length // prefill.chunk
                # a step, plus its POS; plus SINK, WINDOW and HALT once
                step = (len(prefill.instructions) - 3 - steps) // steps
                per_length += 3 + -(-t // prefill.chunk) * (step + 1)
        wb = isa.WORD_BYTES
        return {"bucket_bytes": words * wb, "per_length_bytes": per_length * wb,
                "ratio": per_length / max(words, 1)}


def compile_model(im: IntModel, cfg: AccelConfig, *, prefill_bucket: int | None = None,
                  decode_bucket: int | None = None, max_len: int | None = None,
                  prefill_min: int = PREFILL_MIN,
                  lengths: dict[str, list[int]] | None = None,
                  stream_weights: bool = True) -> CompiledModel:
    """Every bucket's program (or only ``lengths``' buckets, for tests) for ``im`` on ``cfg``;
    ``prefill_min``: the smallest short prefill program (:meth:`HostInterface.prefill_rows`;
    ``prefill_bucket`` or more: none); ``stream_weights``: the linears as MATSTREAM tiles
    where their formats stream (the others, and all with False, through WGT and META for
    MATVEC/MATMAT)."""
    start = time.perf_counter()
    pb = prefill_bucket or cfg.prefill_bucket
    db = decode_bucket or cfg.decode_bucket
    if pb < 1 or db < 1 or prefill_min < 1:
        raise CompileError(f"bucket sizes must be positive (prefill {pb}, decode {db}, "
                           f"shortest prefill {prefill_min})")
    placement = place(im, cfg, max_len, stream=stream_weights)
    w = cfg.axi_data_bytes
    host = HostInterface(
        placement.max_len, pb, db, im.config.vocab_size, placement.embedding,
        placement.record_words * w,
        placement.inputs, placement.logits, tuple(placement.ext.channel_bytes()),
        min(prefill_min, pb))
    lower = Lowering(im, placement)
    out = CompiledModel(cfg, im, host, placement.ext.image)
    wanted = lengths or {"prefill": host.prefill_lengths(), "decode": host.decode_lengths()}
    for kind, lens in wanted.items():
        build = lower.prefill if kind == "prefill" else lower.decode
        for n in lens:
            out.programs[(kind, n)] = build(n)
    out.seconds = time.perf_counter() - start
    return out
