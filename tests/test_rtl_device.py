"""The ``rtl`` back end: a compiled model on the Verilated accelerator top gives exactly the
integer reference's logits (and so the emulator's), prefill and decode."""

import pytest

from compiler.compile import compile_model
from host.rtl_device import RtlDevice
from llmacc.config import preset
from tests.quant_helpers import check_run, random_sequences, tiny_int_model

SMALL = preset("sim-small").replace(prefill_bucket=8, decode_bucket=8, max_seq_len=512)


@pytest.mark.verilator
def test_rtl_backend_is_bit_exact(verilator_env, seed):
    im = tiny_int_model(seed, "w4a8", layers=1)
    cm = compile_model(im, SMALL, max_len=16)
    tokens = random_sequences(seed + 1, 1, 4, im.config.vocab_size)[0]
    device = RtlDevice(cm, seed=seed)
    try:
        check_run(im, device, tokens, 3, f"rtl seed {seed}")  # a prefill and a decode step
    finally:
        device.close()
    assert len(device.stats) == 2
    for stats in device.stats:  # the top's counters came back
        assert stats.cycles > 0 and stats.instructions > 0
        assert 0 < stats.busy["COMPUTE"] < stats.cycles and stats.busy["SFU"] > 0
