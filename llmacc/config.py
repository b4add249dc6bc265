"""One accelerator configuration, read by hw, compiler, host, perf model and board flows.

A :class:`AccelConfig` fixes every size the hardware is built with. Presets:

* ``sim-small`` — tiny arrays and buffers, quick to simulate in Verilator;
* ``sim-wide`` — twice the engine, 128-bit AXI, four channels: the regression's wider build;
* ``u280`` — sized for an Alveo U280 (HBM2, 32 pseudo-channels, 9,024 DSP48E2, 3 SLRs).

Every check names the field and the bad value (:class:`ConfigError`). The runtime compares
:meth:`AccelConfig.fingerprint` with the hardware's ID register.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmacc.widths import (
    BUF_ADDR_BITS,
    BUFFER_NAMES,
    CHANNEL_BITS,
    EXT_ADDR_BITS,
    ISA_VERSION,
    KEY_COUNT_BITS,
    TOKEN_COUNT_BITS,
    group_error,
)

if TYPE_CHECKING:
    from llmacc.isa import Buffer

#: The size field of each on-chip buffer.
BUFFER_FIELDS = dict(zip(BUFFER_NAMES, ("act_buffer_bytes", "weight_buffer_bytes",
                                        "kv_buffer_bytes", "meta_buffer_bytes",
                                        "table_buffer_bytes"), strict=True))


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field and the value."""


def _is_pow2(x: int) -> bool:
    return x > 0 and x & (x - 1) == 0


@dataclass(frozen=True)
class AccelConfig:
    """Sizes of one accelerator build.

    The matrix engine has ``mv_rows`` DSP chains side by side; each chain has ``chain_len``
    DSP48E2-shaped elements, cascaded in groups of ``chain_group`` (links between groups are
    configurable at run time). Each element takes two low-bit products per cycle when the
    weight format allows packing (``pack_products``). ``record_matrices``: the COMPUTE unit
    also runs MATVEC/MATMAT, assembling the engine's beats a field at a time from the WGT and
    META records; without it every linear streams (MATSTREAM), and the unit is smaller by
    the record path's beat registers and the select in front of the engine.
    """

    name: str
    clock_mhz: float
    # Matrix engine.
    mv_rows: int
    chain_len: int
    chain_group: int
    pack_products: int = 2
    record_matrices: bool = True
    # Special-function unit lanes (elements per cycle).
    sfu_lanes: int = 8
    #: Result stages of the elementwise output modes (SILU) on a streamed matrix: a
    #: collector transfer takes ``collector_ways / elementwise_run`` cycles.
    elementwise_stages: int = 1
    #: ATTN's sub-steps per INT8 KV payload word (twice as many per INT4 word): 2 takes half
    #: a word of codes a cycle, 1 a whole one (``attention_lanes``, twice the products).
    attention_int8_steps: int = 2
    #: ATTN's lanes are twice a word's bytes (with ``attention_int8_steps`` = 1): an INT4 KV
    #: payload word is a single sub-step, an INT8 one fills half the lanes.
    attention_wide: bool = False
    # On-chip buffers, in bytes.
    act_buffer_bytes: int = 64 * 1024
    weight_buffer_bytes: int = 64 * 1024
    kv_buffer_bytes: int = 64 * 1024
    meta_buffer_bytes: int = 16 * 1024
    table_buffer_bytes: int = 8 * 1024
    # External memory.
    mem_channels: int = 1
    axi_data_bits: int = 64
    axi_addr_bits: int = 32
    channel_bytes: int = 1 << 24
    channel_gbps: float = 1.0
    # Controller.
    insn_queue_depth: int = 8
    # Length adaptivity (FlightLLM buckets).
    max_seq_len: int = 512
    prefill_bucket: int = 128
    decode_bucket: int = 16
    # Device capacity, for the resource check.
    device_dsps: int = 9024
    #: The quantisation group of this configuration's performance case: ``llmacc perf``
    #: prices the schemes that name no group (``+gGROUP``) at it.
    weight_group: int = 128

    def __post_init__(self) -> None:
        self.validate()

    # -- derived sizes -------------------------------------------------------------------
    @property
    def dsps(self) -> int:
        """DSP48E2 elements in the matrix engine."""
        return self.mv_rows * self.chain_len

    @property
    def lanes_per_channel(self) -> int:
        """The streaming matrix path's lanes per memory channel (its channel-to-lane map:
        each channel's weight stream feeds these lanes and their collector way)."""
        return self.mv_rows // self.mem_channels

    @property
    def collector_ways(self) -> int:
        """Ways of the COMPUTE unit's result collector, each requantising a result per
        cycle for ``mv_rows / collector_ways`` lanes (whole channels): as many as INT32
        results fill an AXI word (what a writer at line rate takes per cycle), at most one
        per channel (``layout.collector_ways``). 16 on the u280: a pass's 96 rows leave in
        6 words, under its beats."""
        from llmacc.layout import collector_ways  # the stream layout's, which loads Amaranth
        return collector_ways(self.mem_channels, self.axi_data_bits)

    @property
    def elementwise_run(self) -> int:
        """Results of an elementwise output mode written per cycle: a run of
        ``elementwise_stages``, at most a transfer's."""
        return min(self.elementwise_stages, self.collector_ways)

    @property
    def lanes_per_way(self) -> int:
        return self.mv_rows // self.collector_ways

    @property
    def stream_skew(self) -> int:
        """Beats by which weight streams delay a chain element's weights (its place in its
        cascade, ``llmacc.layout.StreamGeometry.skew``): the cascade spacing where only
        streams feed the lanes (no record path), which then keep no skew registers; else 0."""
        return 0 if self.record_matrices else self.chain_group

    @property
    def attention_lanes(self) -> int:
        """ATTN's lanes, the elements of a head it takes per cycle (``hw/attention.py``): a
        buffer word's bytes over ``attention_int8_steps``, so that an INT8 KV word is that
        many sub-steps and an INT4 one twice as many; or twice a word's bytes
        (``attention_wide``)."""
        if self.attention_wide:
            return 2 * self.axi_data_bytes
        return self.axi_data_bytes // self.attention_int8_steps

    def attention_codes(self, kv_bits: int) -> int:
        """Codes of ``kv_bits`` that one ATTN sub-step takes: its lanes, at most a payload
        word's (``hw/attention.py`` and its cycle model, ``sim/compute_timing.py``)."""
        return min(self.attention_lanes, 8 * self.axi_data_bytes // kv_bits)

    def attention_substeps(self, kv_bits: int) -> int:
        """Sub-steps in one KV payload word of ``kv_bits`` codes."""
        return 8 * self.axi_data_bytes // (kv_bits * self.attention_codes(kv_bits))

    @property
    def row_lanes(self) -> int:
        """Elements a cycle of the second pass and the emission of ATTN's softmax (its row
        stage, ``hw/sfu_row.py``): ``sfu_lanes``, at most the INT32 values of a buffer word
        (the probabilities leave a word's share at a time). The SFU unit's own row stage
        takes one element a cycle."""
        return min(self.sfu_lanes, self.axi_data_bytes // 4)

    @property
    def axi_data_bytes(self) -> int:
        return self.axi_data_bits // 8

    def buffer_words(self, buf: Buffer) -> int:
        """Words of ``axi_data_bytes`` in an on-chip buffer."""
        return getattr(self, BUFFER_FIELDS[buf.name]) // self.axi_data_bytes

    @property
    def peak_macs_per_cycle(self) -> int:
        return self.dsps * self.pack_products

    @property
    def mem_bandwidth_gbps(self) -> float:
        return self.mem_channels * self.channel_gbps

    # -- checks --------------------------------------------------------------------------
    def _fail(self, name: str, why: str) -> None:
        raise ConfigError(f"AccelConfig.{name} = {getattr(self, name)!r}: {why} ({self.name})")

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field."""
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"AccelConfig.name = {self.name!r}: must be a non-empty string")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", "float") and (
                isinstance(value, bool) or not isinstance(value, (int, float))
            ):
                self._fail(f.name, f"must be a number, not {type(value).__name__}")
            if f.type == "int" and not isinstance(value, int):
                self._fail(f.name, "must be an integer")
            if f.type == "bool" and not isinstance(value, bool):
                self._fail(f.name, "must be true or false")
            if f.type in ("int", "float") and not value > 0:
                self._fail(f.name, "must be positive")
        if not _is_pow2(self.chain_group):
            self._fail("chain_group", "must be a power of two")
        if self.chain_len % self.chain_group:
            self._fail("chain_len", f"must be a multiple of chain_group ({self.chain_group})")
        if self.chain_len % 16:
            self._fail("chain_len", "must be a multiple of 16 (N:16 sparse blocks)")
        if self.pack_products not in (1, 2):
            self._fail("pack_products", "must be 1 or 2 products per DSP")
        if not _is_pow2(self.sfu_lanes):
            self._fail("sfu_lanes", "must be a power of two")
        if not _is_pow2(self.elementwise_stages):
            self._fail("elementwise_stages", "must be a power of two")
        if self.attention_int8_steps not in (1, 2):
            self._fail("attention_int8_steps", "must be 1 or 2 sub-steps per INT8 KV word")
        if self.attention_wide and self.attention_int8_steps != 1:
            self._fail("attention_wide", "needs attention_int8_steps = 1")
        if self.axi_data_bits not in (64, 128, 256, 512):  # a word holds a KV header
            self._fail("axi_data_bits", "must be one of 64, 128, 256, 512")
        if not 32 <= self.axi_addr_bits <= 64:
            self._fail("axi_addr_bits", "must be between 32 and 64")
        mem_max_chan = 1 << CHANNEL_BITS
        if self.mem_channels > mem_max_chan:
            self._fail("mem_channels", f"the ISA addresses at most {mem_max_chan} channels")
        if self.channel_bytes > 1 << EXT_ADDR_BITS:
            self._fail("channel_bytes", "exceeds the ISA's 32-bit channel byte address")
        for name in BUFFER_FIELDS.values():
            size = getattr(self, name)
            if size % self.axi_data_bytes:
                self._fail(name, f"must be a multiple of the AXI word ({self.axi_data_bytes} B)")
            words = size // self.axi_data_bytes
            if words > 1 << BUF_ADDR_BITS:
                self._fail(name, "has more words than the ISA's 16-bit buffer address reaches")
        if self.max_seq_len >= 1 << KEY_COUNT_BITS:
            self._fail("max_seq_len", "exceeds the ISA's key count field")
        if self.max_seq_len % self.decode_bucket or self.max_seq_len % self.prefill_bucket:
            self._fail("max_seq_len", "must be a multiple of both bucket sizes")
        if self.prefill_bucket >= 1 << TOKEN_COUNT_BITS:
            self._fail("prefill_bucket", "exceeds the ISA's token count field")
        if (why := group_error(self.weight_group)) is not None:
            self._fail("weight_group", why)
        if self.dsps > self.device_dsps:
            self._fail("mv_rows", f"{self.dsps} DSPs exceed the device's {self.device_dsps}")
        if self.mv_rows % self.mem_channels:
            self._fail("mv_rows", f"must be a multiple of mem_channels ({self.mem_channels}): "
                       "each channel's weight stream feeds the same number of lanes")

    # -- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AccelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"AccelConfig: unknown fields {unknown}")
        missing = sorted(
            f.name for f in dataclasses.fields(cls)
            if f.name not in values and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ConfigError(f"AccelConfig: missing fields {missing}")
        return cls(**values)

    def replace(self, **changes: Any) -> AccelConfig:
        return dataclasses.replace(self, **changes)

    def fingerprint(self) -> int:
        """32-bit hash of the configuration and ISA version (the hardware ID register)."""
        text = json.dumps({"isa": ISA_VERSION, **self.to_dict()}, sort_keys=True)
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


PRESETS: dict[str, AccelConfig] = {
    "sim-small": AccelConfig(
        name="sim-small",
        clock_mhz=100.0,
        mv_rows=4,
        chain_len=16,
        chain_group=4,
        sfu_lanes=4,
        act_buffer_bytes=64 * 1024,
        weight_buffer_bytes=16 * 1024,
        kv_buffer_bytes=64 * 1024,
        meta_buffer_bytes=4 * 1024,
        table_buffer_bytes=8 * 1024,
        mem_channels=2,
        axi_data_bits=64,
        axi_addr_bits=32,
        channel_bytes=1 << 24,
        channel_gbps=0.8,
        max_seq_len=512,
        weight_group=32,
    ),
    # Alveo U280: 32 HBM2 pseudo-channels of 256 MiB at 14.375 GB/s each (460 GB/s),
    # 512-bit AXI per channel at 225 MHz user clock (64 B per cycle: the whole channel).
    # 96 chains x 64 DSPs = 6,144 of the 9,024 DSP48E2 (68%), leaving room for the SFU and
    # address generation. Every linear streams: no field-serial record path.
    "u280": AccelConfig(
        name="u280",
        clock_mhz=225.0,
        mv_rows=96,
        chain_len=64,
        chain_group=16,
        record_matrices=False,
        sfu_lanes=8,  # `row_lanes`: the SFU's beats and the softmax's exponentials, 8 a cycle
        elementwise_stages=4,  # SiLU on a transfer of 16 results in 4 cycles (under 64 beats)
        attention_int8_steps=1,
        attention_wide=True,  # 128 lanes: an INT4 key of head size 128 a cycle
        act_buffer_bytes=1 << 20,
        weight_buffer_bytes=2 << 20,
        kv_buffer_bytes=2 << 20,
        meta_buffer_bytes=256 * 1024,
        table_buffer_bytes=256 * 1024,  # LLaMA2-70B's layer tables, twice, and the RoPE rows
        mem_channels=32,
        axi_data_bits=512,
        axi_addr_bits=64,
        channel_bytes=256 << 20,
        channel_gbps=14.375,
        max_seq_len=2048,
        weight_group=128,
        device_dsps=9024,
    ),
}


# Twice sim-small's engine and SFU, 128-bit AXI and four channels: the wider configuration of
# the RTL regression (`make sim`); its table buffer holds a SmolLM2-135M layer's tables twice.
# Its attention takes whole words of INT4 codes a cycle, as the u280's does.
PRESETS["sim-wide"] = PRESETS["sim-small"].replace(
    name="sim-wide", mv_rows=8, chain_len=32, chain_group=8, sfu_lanes=8, attention_int8_steps=1,
    attention_wide=True,
    elementwise_stages=2,
    act_buffer_bytes=128 * 1024, weight_buffer_bytes=32 * 1024, meta_buffer_bytes=8 * 1024,
    table_buffer_bytes=32 * 1024, mem_channels=4, axi_data_bits=128, channel_gbps=1.6)


def preset(name: str) -> AccelConfig:
    """The preset called ``name``; the error lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"unknown config {name!r}; known: {', '.join(sorted(PRESETS))}"
        ) from None


def load(path_or_name: str | Path) -> AccelConfig:
    """A preset name or a JSON file with every field of :class:`AccelConfig`."""
    if str(path_or_name) in PRESETS:
        return PRESETS[str(path_or_name)]
    path = Path(path_or_name)
    if not path.is_file():
        raise ConfigError(
            f"{path_or_name!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a file"
        )
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return AccelConfig.from_dict(values)
