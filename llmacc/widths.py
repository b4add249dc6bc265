"""The instruction-field widths that bound an accelerator configuration, in plain Python.

:mod:`llmacc.isa` declares its fields with these numbers and :mod:`llmacc.config` checks a
configuration against them, so ``llmacc config`` validates a configuration without loading
Amaranth. Every other field width is written only in :mod:`llmacc.isa`.
"""

#: Version of the instruction set; the hardware ID register reports it. 2: MATSTREAM's
#: rows interleaved over the collector ways (``layout.pass_row``); 3: KV blocks with packed
#: headers (``layout.kv_block``, LOAD/STORE ``pos_header``).
ISA_VERSION = 3
#: External-memory channel number (LOAD/STORE ``chan``).
CHANNEL_BITS = 5
#: Byte address inside one channel (LOAD/STORE ``ext_addr``).
EXT_ADDR_BITS = 32
#: Word address inside an on-chip buffer (every ``*_addr``, ``src_*`` and ``dst`` field).
BUF_ADDR_BITS = 16
#: KV rows one ATTN instruction reads (``keys``).
KEY_COUNT_BITS = 12
#: Where MATSTREAM's weight streams start in a channel (``page``), and the unit of it.
STREAM_PAGE_BITS = 16
STREAM_PAGE_BYTES = 4096
#: Quantisation groups a weight tile's descriptor names (``group_log2``): 8 to 128 weights.
GROUP_LOG2_MIN, GROUP_LOG2_MAX = 3, 7


def group_error(group: int) -> str | None:
    """Why ``group`` weights cannot be a quantisation group (None when they can)."""
    lo, hi = 1 << GROUP_LOG2_MIN, 1 << GROUP_LOG2_MAX
    if group & (group - 1) or not lo <= group <= hi:
        return f"must be a power of two in {lo}..{hi}"
    return None


#: Tokens of one MATMAT (``m``), the largest prefill bucket.
TOKEN_COUNT_BITS = 11
#: The on-chip buffers by name (the members of ``isa.Buffer``, in its order).
BUFFER_NAMES = ("ACT", "WGT", "KV", "META", "TABLE")
