"""Tokenizers: the shipped llama2.c file, and a sentencepiece protobuf written here."""

import struct

import pytest

from quant import tokenizer
from quant.checkpoint import CheckpointError
from tests.helpers.models import TOKENIZER, need_shared


def test_round_trip_and_merges():
    need_shared()
    tok = tokenizer.load(TOKENIZER, 512)
    text = "Once upon a time, Lily saw a big red ball. Ünïcode ✓ works too!"
    ids = tok.encode(text)
    assert ids[0] == tokenizer.BOS
    assert tok.decode(ids) == text
    assert len(tok.encode("Once upon a time")) < len("Once upon a time") // 2  # merges
    assert tok.encode("") == [tokenizer.BOS]


def _field(num: int, wire: int, payload: bytes) -> bytes:
    def varint(v):
        out = b""
        while True:
            b, v = v & 0x7F, v >> 7
            out += bytes([b | (0x80 if v else 0)])
            if not v:
                return out
    key = varint(num << 3 | wire)
    return key + (varint(len(payload)) + payload if wire == 2 else payload)


def test_sentencepiece_model_matches_equivalent_llama2c_vocab(tmp_path):
    pieces = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)],
              "\u2581", "a", "b", "c", "\u2581a", "ab", "\u2581ab", "abc"]
    scores = [0.0] * 259 + [-1.0, -2.0, -3.0, -4.0, -0.5, -0.7, -0.2, -0.1]
    blob = b"".join(_field(1, 2, _field(1, 2, p.encode()) + _field(2, 5, struct.pack("<f", s)))
                    for p, s in zip(pieces, scores, strict=True))
    blob += _field(2, 2, b"")  # trainer spec: ignored
    path = tmp_path / "tokenizer.model"
    path.write_bytes(blob)
    sp = tokenizer.load(path, len(pieces))
    ref = tokenizer.Tokenizer([p.replace("\u2581", " ") for p in pieces], scores)
    for text in ("abc", "ab ab", "cab", "a\u00e9"):
        assert sp.encode(text) == ref.encode(text)
        assert sp.decode(sp.encode(text)) == text
    assert sp.encode("ab")[1:] == [pieces.index("\u2581ab")]
    with pytest.raises(CheckpointError, match="267 pieces, the model 2"):
        tokenizer.load(path, 2)
    path.write_bytes(blob[:-7] + b"\xff")
    with pytest.raises(CheckpointError, match="truncated|wire type"):
        tokenizer.load(path, len(pieces))


def test_truncated_llama2c_tokenizer(tmp_path):
    need_shared()
    blob = TOKENIZER.read_bytes()
    path = tmp_path / "tok.bin"
    path.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(CheckpointError, match="truncated|runs past"):
        tokenizer.load(path, 512)


def _llama2c_tokenizer(pieces: list[bytes]) -> bytes:
    body = b"".join(struct.pack("<fi", -float(i), len(p)) + p for i, p in enumerate(pieces))
    return struct.pack("<i", max(len(p) for p in pieces)) + body


def test_tokenizer_of_another_vocabulary_is_refused(tmp_path):
    """A 1,024-piece tokenizer with a 512-vocab model used to load its first 512 pieces and
    run; both sizes are named now, and so are bytes that are no tokenizer record."""
    pieces = [b"<unk>", b"<s>", b"</s>"] + [f"p{i}".encode() for i in range(3, 1024)]
    path = tmp_path / "tok1024.bin"
    path.write_bytes(_llama2c_tokenizer(pieces))
    assert tokenizer.load(path, 1024).vocab_size == 1024
    with pytest.raises(CheckpointError, match="tokenizer has 1024 pieces, the model 512"):
        tokenizer.load(path, 512)
    path.write_bytes(_llama2c_tokenizer(pieces[:512]) + b"\xff" * 7)
    with pytest.raises(CheckpointError, match="has 512 pieces and 7 bytes that are no piece, the"):
        tokenizer.load(path, 512)
