"""The generation loop, the sampler and the xrt back end (against a fake XRT that runs the
emulator behind the kernel.xml and the RTL register map)."""

import sys

import numpy as np
import pytest
import torch

from boards import kernel_xml
from compiler.compile import compile_model
from compiler.lower import Program
from host.device import DeviceError, EmulatorDevice, kernel_stats
from host.generate import Sampler, generate
from host.xrt_device import XrtDevice
from llmacc.config import preset
from llmacc.kernel import Fault, status_word
from tests.helpers.fake_xrt import FakeXrt
from tests.helpers.models import check_run, random_sequences, tiny_int_model
from tests.helpers.runtime import tiny_tokenizer

CFG = preset("sim-small").replace(prefill_bucket=8, decode_bucket=8)
MAX_LEN = 24


@pytest.fixture(scope="module")
def model(request):
    im = tiny_int_model(request.config.llmacc_seed, "w4a8", layers=1)
    return im, compile_model(im, CFG, max_len=MAX_LEN)


def test_greedy_generation_is_the_integer_models(model, seed):
    im, cm = model
    prompt = random_sequences(seed, 1, 5, im.config.vocab_size)[0]
    tok, pieces = tiny_tokenizer(im.config.vocab_size), []
    out = generate(EmulatorDevice(cm), tok, prompt, 6, stop_tokens=frozenset(),
                   on_text=pieces.append)
    assert out.tokens == im.generate(prompt, 6), f"seed {seed}"
    assert (out.stop, out.decode_steps) == ("length", 5)
    assert out.text == "".join(pieces) == tok.decode(out.tokens)
    assert out.decode_cycles > 0 and out.device_tokens_per_s(CFG.clock_mhz) > 0


def test_generation_stops_at_tokens_text_and_context(model, seed):
    im, cm = model
    tok = tiny_tokenizer(im.config.vocab_size)
    prompt = random_sequences(seed, 1, 4, im.config.vocab_size)[0]
    greedy = im.generate(prompt, 10)
    device = EmulatorDevice(cm)
    new = next((i for i in range(1, len(greedy)) if greedy[i] not in greedy[:i]), None)
    if new is not None:  # the first token not generated before stops the loop there
        out = generate(device, tok, prompt, 10, stop_tokens=frozenset({greedy[new]}))
        assert (out.tokens, out.stop) == (greedy[:new], "token"), f"seed {seed}"
    out = generate(device, tok, prompt, 10, stop_tokens=frozenset(),
                   stop_text=(tok.decode(greedy[:2]),))
    assert (out.tokens, out.stop) == (greedy[:2], "text")
    long_prompt = random_sequences(seed, 1, MAX_LEN - 2, im.config.vocab_size)[0]
    out = generate(device, tok, long_prompt, 10, stop_tokens=frozenset())
    assert out.stop == "context" and len(long_prompt) + len(out.tokens) == MAX_LEN + 1
    assert generate(device, tok, prompt, 0).tokens == []
    with pytest.raises(ValueError, match="context"):
        generate(device, tok, [1] * (MAX_LEN + 1), 1)
    with pytest.raises(ValueError, match="empty"):
        generate(device, tok, [], 1)


def test_sampler_is_seeded_and_filtered(seed):
    rng = np.random.default_rng(seed)
    wide = torch.from_numpy(rng.integers(-3 << 12, 3 << 12, 50))
    best = int(torch.argmax(wide))
    draws = lambda s, n=400: [s.choose(wide, 12, r) for r in [s.rng()] for _ in range(n)]  # noqa: E731
    assert draws(Sampler(0.0), 5) == [best] * 5
    assert set(draws(Sampler(2.0, top_k=1, seed=seed), 50)) == {best}
    assert set(draws(Sampler(2.0, top_p=1e-9, seed=seed), 50)) == {best}
    top3 = set(torch.topk(wide, 3).indices.tolist())
    assert set(draws(Sampler(1.0, top_k=3, seed=seed))) <= top3
    s = Sampler(1.5, seed=seed)
    assert draws(s) == draws(s), f"seed {seed}: same seed, same draws"
    # frequencies follow softmax(logits / T)
    p = torch.softmax(wide.double() / 4096 / 1.5, 0).numpy()
    freq = np.bincount(draws(s, 4000), minlength=50) / 4000
    assert np.abs(freq - p).max() < 0.04, f"seed {seed}"
    for bad in ({"temperature": -1}, {"top_k": -2}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ValueError):
            Sampler(**bad)


def test_kernel_status_names_the_fault():
    prog = Program("decode", 8, 8, [])
    status = status_word(Fault.RANGE, 2 + 5)
    with pytest.raises(DeviceError, match="fault RANGE at instruction 5 of decode 8"):
        kernel_stats(prog, {0: 0, 1: 0}, status, 10, {})


@pytest.fixture
def xclbin(tmp_path):
    path = tmp_path / "llmacc.xclbin"
    path.write_bytes(b"xclbin2\0")
    return path


def test_xrt_backend_runs_through_the_kernel_xml(model, xclbin, seed):
    """Buffers in the banks kernel.xml's arguments name, arguments in its order, registers
    from the RTL map: the card (emulated) computes exactly the integer reference."""
    im, cm = model
    xrt = FakeXrt(CFG)
    device = XrtDevice(cm, xclbin, xrt=xrt)
    tokens = random_sequences(seed, 1, 7, im.config.vocab_size)[0]
    check_run(im, device, tokens, 4, f"xrt seed {seed}")
    _, args = kernel_xml.parse(xrt.kernel_xml)
    pointers = [a for a in args if a.pointer]
    allocated = [entry for entry in xrt.log if entry[0] == "bo"]
    assert [g for _, _, g in allocated] == [10 + a.index for a in pointers][:len(allocated)]
    runs = [entry[1] for entry in xrt.log if entry[0] == "run"]
    assert len(runs) == 4 and all(len(r) == len(args) for r in runs)
    tok = tiny_tokenizer(im.config.vocab_size)
    sampler = Sampler(0.8, top_k=10, seed=seed)
    on_xrt = generate(device, tok, tokens[:3], 5, sampler=sampler)
    on_emu = generate(EmulatorDevice(cm), tok, tokens[:3], 5, sampler=sampler)
    assert on_xrt.tokens == on_emu.tokens
    assert on_xrt.decode_cycles == on_emu.decode_cycles  # the counters came back
    device.close()


def test_xrt_backend_errors_are_clear(model, xclbin, monkeypatch):
    _, cm = model
    with pytest.raises(DeviceError, match="needs --xclbin"):
        XrtDevice(cm, None, xrt=FakeXrt(CFG))
    with pytest.raises(DeviceError, match="no such xclbin"):
        XrtDevice(cm, xclbin.parent / "missing.xclbin", xrt=FakeXrt(CFG))
    with pytest.raises(DeviceError, match="no Alveo card 0"):
        XrtDevice(cm, xclbin, xrt=FakeXrt(CFG, cards=0))
    with pytest.raises(DeviceError, match="built for another configuration"):
        XrtDevice(cm, xclbin, xrt=FakeXrt(CFG, hw_id=0x1234))
    monkeypatch.setitem(sys.modules, "pyxrt", None)  # import fails as without XRT
    with pytest.raises(DeviceError, match="pyxrt"):
        XrtDevice(cm, xclbin)
