"""Model packages: round trip, and a clear error for every kind of damage; the compile and
verify commands end to end on the shipped model."""

import json

import pytest
import torch

from compiler import package
from compiler.compile import compile_model
from host import device as device_mod
from host.device import EmulatorDevice
from llmacc import cli, isa
from llmacc.config import preset
from tests.helpers.models import TOKENIZER, random_sequences, tiny_checkpoint, tiny_int_model

CFG = preset("sim-small").replace(prefill_bucket=8, decode_bucket=8)


@pytest.fixture(scope="module")
def compiled(request):
    im = tiny_int_model(request.config.llmacc_seed, "w2a8kv4+2:4", layers=1)
    return compile_model(im, CFG, max_len=16)


@pytest.fixture
def saved(compiled, tmp_path):
    return package.save(compiled, tmp_path / "pkg", scheme="w2a8kv4+2:4")


def test_round_trip_runs_the_same(compiled, saved, seed):
    cm, manifest = package.load(saved)
    assert manifest["scheme"] == "w2a8kv4+2:4" and manifest["isa_version"] == isa.ISA_VERSION
    assert cm.programs.keys() == compiled.programs.keys()
    assert cm.host == compiled.host and cm.config == compiled.config
    tokens = random_sequences(seed, 1, 11, compiled.model.config.vocab_size)[0]
    got = EmulatorDevice(cm).prefill(tokens)
    assert torch.equal(got, EmulatorDevice(compiled).prefill(tokens))
    assert torch.equal(got, cm.model.forward(torch.tensor(tokens)))


def _rewrite_manifest(root, edit, resign=True):
    """Edit the manifest; ``resign`` recomputes its digest, as a deliberate forger would, so
    that the checks behind the digest are reached."""
    path = root / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    if resign:
        m["digest"] = package.manifest_digest(m)
    path.write_text(json.dumps(m))


@pytest.mark.parametrize("edit", ["logits region", "vocabulary", "programs swapped"])
def test_an_edited_manifest_is_refused(saved, edit):
    """Host-interface fields and the program index used to be trusted as written: a changed
    logits region or vocabulary, or two program entries swapped, ran and could give other
    text. The manifest's digest covers all of it."""
    def change(m):
        if edit == "logits region":
            m["host"]["logits"][0]["region"]["addr"] += 64
        elif edit == "vocabulary":
            m["host"]["vocab"] -= 1
        else:
            m["programs"][0], m["programs"][1] = m["programs"][1], m["programs"][0]
    _rewrite_manifest(saved, change, resign=False)
    with pytest.raises(package.PackageError, match="digest does not match"):
        package.load(saved)


def test_truncated_file_is_named(saved):
    blob = (saved / "image.bin").read_bytes()
    (saved / "image.bin").write_bytes(blob[:-5])
    with pytest.raises(package.PackageError, match="image.bin: .* bytes, the manifest says"):
        package.load(saved)


def test_corrupted_file_is_named(saved):
    blob = bytearray((saved / "programs.bin").read_bytes())
    blob[100] ^= 1
    (saved / "programs.bin").write_bytes(bytes(blob))
    with pytest.raises(package.PackageError, match="programs.bin: SHA-256 mismatch"):
        package.load(saved)


def test_illegal_instruction_is_named(saved):
    blob = bytearray((saved / "programs.bin").read_bytes())
    blob[isa.WORD_BYTES * 3] = 0x0F  # opcode 15 in the fourth word of the first program
    (saved / "programs.bin").write_bytes(bytes(blob))

    def fix(m):
        m["files"]["programs.bin"] = {"bytes": len(blob), "sha256": package._sha(bytes(blob))}
        first = m["programs"][0]
        first["sha256"] = package._sha(bytes(blob[:first["bytes"]]))
    _rewrite_manifest(saved, fix)
    with pytest.raises(package.PackageError, match="word 3: Header.opcode: unknown opcode 15"):
        package.load(saved)


@pytest.mark.parametrize("key,value,match", [
    ("format_version", 99, "format_version 99"),
    ("isa_version", 0, "isa_version 0"),
    ("fingerprint", 1, "fingerprint mismatch"),
    ("format", "zip", "not an llmacc-package manifest"),
])
def test_version_and_identity_mismatches(saved, key, value, match):
    _rewrite_manifest(saved, lambda m: m.__setitem__(key, value))
    with pytest.raises(package.PackageError, match=match):
        package.load(saved)


def test_missing_and_malformed(tmp_path, saved):
    with pytest.raises(package.PackageError, match="not a package"):
        package.load(tmp_path / "nothing")
    (saved / "manifest.json").write_text("{")
    with pytest.raises(package.PackageError, match="malformed"):
        package.load(saved)


def test_save_refuses_to_overwrite_other_files(compiled, tmp_path):
    other = tmp_path / "important"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(package.PackageError, match="refusing to overwrite"):
        package.save(compiled, other)
    assert (other / "notes.txt").read_text() == "keep me"


def test_compile_and_verify_the_shipped_model(shipped, capsys):
    manifest = json.loads((shipped / "manifest.json").read_text())
    # prefill 1, 2, 4 and 8 rows below its bucket of 16, then 16..64; decode 16..64
    assert len(manifest["programs"]) == 12 and "tokenizer.bin" in manifest["files"]
    # 5 prompt tokens + 30 steps cross the decode edges at 16 and 32 and the 16-token window
    code = cli.main(["verify", "--package", str(shipped), "--backend", "emulator",
                     "--prompt", "Once upon a time", "--tokens", "30"])
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "bit-exact: 31/31"


def test_streamed_package_of_the_shipped_model_verifies(shipped, tmp_path, capsys):
    """``compile --stream-weights``: the shipped model's linears as MATSTREAM tiles, saved,
    loaded and bit-exact on the emulator."""
    pkg = tmp_path / "streamed"
    assert cli.main(["compile", "--quantized", str(shipped.parent / "stories.pt"),
                     "--tokenizer", str(TOKENIZER), "--config", "sim-small", "-o", str(pkg),
                     "--prefill-bucket", "16", "--decode-bucket", "16", "--max-len", "64",
                     "--stream-weights"]) == 0
    cm, _ = package.load(pkg)
    assert any(i.opcode is isa.Opcode.MATSTREAM for p in cm.programs.values()
               for i in p.instructions)
    code = cli.main(["verify", "--package", str(pkg), "--backend", "emulator",
                     "--prompt", "Once upon a time", "--tokens", "12"])
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "bit-exact: 13/13"


def test_verify_reports_the_first_difference(shipped, monkeypatch, capsys):
    """A back end that is off by one in one logit: named, counted, exit status 1."""
    original = device_mod.Device.decode

    def off_by_one(self, token, pos):
        out = original(self, token, pos)
        if pos == 12:
            out[5] += 1
        return out
    monkeypatch.setattr(device_mod.Device, "decode", off_by_one)
    code = cli.main(["verify", "--package", str(shipped), "--prompt", "Once upon a time",
                     "--tokens", "10"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 1
    assert out[-1] == "bit-exact: 10/11"
    assert any(line.startswith("first difference: step 8 (decode), position 12, logit 5")
               for line in out)


def test_cli_errors_are_one_line(saved, shipped, capsys):
    assert cli.main(["verify", "--package", str(saved), "--prompt", "x", "--tokens", "1"]) == 2
    assert "holds no tokenizer" in capsys.readouterr().err
    assert cli.main(["verify", "--package", str(saved.parent / "missing"), "--prompt", "x"]) == 2
    assert "not a package" in capsys.readouterr().err
    assert cli.main(["verify", "--package", str(shipped), "--prompt", "x", "--tokens", "99"]) == 2
    assert "exceed the package's context of 64" in capsys.readouterr().err


@pytest.mark.parametrize("damage,match", [
    ("extra", "tensor model.layers.0.mlp.experts.0.weight is not part of a LLaMA decoder"),
    ("config", "model_type 'mixtral' is not supported"),
])
def test_compile_names_unknown_layer_types(tmp_path, capsys, damage, match):
    from quant import checkpoint

    hf = tmp_path / "hf"
    checkpoint.save_hf(tiny_checkpoint(3, layers=1), hf)
    if damage == "extra":
        tensors = checkpoint.read_safetensors(hf / "model.safetensors")
        tensors["model.layers.0.mlp.experts.0.weight"] = torch.zeros(4, 4)
        checkpoint.write_safetensors(hf / "model.safetensors", tensors)
    else:
        raw = json.loads((hf / "config.json").read_text())
        (hf / "config.json").write_text(json.dumps({**raw, "model_type": "mixtral"}))
    code = cli.main(["compile", "--model", str(hf), "--tokenizer", str(TOKENIZER), "--scheme",
                     "w8a8", "--config", "sim-small", "-o", str(tmp_path / "pkg"),
                     "--no-progress"])
    assert code == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "pkg").exists()
