"""Byte-fallback BPE tokenizer: llama2.c ``tokenizer.bin`` files and sentencepiece ``.model``.

Encoding follows llama2.c (``run.c``): a dummy-prefix space, one piece per UTF-8 character
(``<0xNN>`` byte pieces when a character is not in the vocabulary), then repeatedly merge the
adjacent pair whose merged piece has the highest score. Sentencepiece BPE models use the same
pieces and scores, read here from the protobuf directly (no sentencepiece dependency).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from quant import checkpoint
from quant.chat import ChatTemplate
from quant.checkpoint import CheckpointError

BOS, EOS = 1, 2
_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


class Tokenizer:
    def __init__(self, pieces: list[str], scores: list[float], bos: int = BOS, eos: int = EOS):
        if len(pieces) != len(scores) or not pieces:
            raise CheckpointError("tokenizer needs one score per piece")
        self.pieces, self.scores, self.bos, self.eos = pieces, scores, bos, eos
        self.chat_template: ChatTemplate | None = None  #: where the vocabulary's file has one
        self.index = {}
        for i, p in enumerate(pieces):
            self.index.setdefault(p, i)
        self.byte_ids = {}
        for i, p in enumerate(pieces):
            m = _BYTE_PIECE.match(p)
            if m:
                self.byte_ids.setdefault(int(m.group(1), 16), i)

    @property
    def vocab_size(self) -> int:
        return len(self.pieces)

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        ids: list[int] = []
        if text and " " in self.index:
            ids.append(self.index[" "])
        for ch in text:
            if ch in self.index:
                ids.append(self.index[ch])
                continue
            for b in ch.encode("utf-8"):
                if b not in self.byte_ids:
                    raise CheckpointError(f"tokenizer has no piece for byte {b:#04x}")
                ids.append(self.byte_ids[b])
        while True:
            best, best_i = None, -1
            for i in range(len(ids) - 1):
                j = self.index.get(self.pieces[ids[i]] + self.pieces[ids[i + 1]])
                if j is not None and (best is None or self.scores[j] > self.scores[best]):
                    best, best_i = j, i
            if best is None:
                break
            ids[best_i:best_i + 2] = [best]
        return ([self.bos] if bos else []) + ids + ([self.eos] if eos else [])

    def decode_piece(self, prev: int, token: int) -> bytes:
        piece = self.pieces[token]
        if prev == self.bos and piece.startswith(" "):
            piece = piece[1:]
        m = _BYTE_PIECE.match(piece)
        return bytes([int(m.group(1), 16)]) if m else piece.encode("utf-8")

    def decode(self, ids: list[int]) -> str:
        out, prev = b"", self.bos
        for t in ids:
            if t not in (self.bos, self.eos):
                out += self.decode_piece(prev, t)
            prev = t
        return out.decode("utf-8", errors="replace")


def load_llama2c_tokenizer(path: str | Path, vocab_size: int) -> Tokenizer:
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read tokenizer ({exc.strerror})") from exc
    pieces, scores, off = [], [], 4
    for i in range(vocab_size):
        if off + 8 > len(blob):
            raise CheckpointError(f"{path}: truncated at token {i} of {vocab_size}")
        score, n = struct.unpack_from("<fi", blob, off)
        off += 8
        if n < 0 or off + n > len(blob):
            raise CheckpointError(f"{path}: token {i} length {n} runs past the file")
        pieces.append(blob[off:off + n].decode("utf-8", errors="replace"))
        scores.append(score)
        off += n
    if off != len(blob):
        raise CheckpointError(f"{path}: tokenizer has {_count_pieces(blob, vocab_size, off)}, "
                              f"the model {vocab_size}: they do not belong together")
    return Tokenizer(pieces, scores)


def _count_pieces(blob: bytes, count: int, off: int) -> str:
    """How many llama2.c tokenizer records ``blob`` holds, ``count`` of them before ``off``
    (for the mismatch message; bytes that are no record are said as such)."""
    while off + 8 <= len(blob):
        n = struct.unpack_from("<i", blob, off + 4)[0]
        if n < 0 or off + 8 + n > len(blob):
            break
        off, count = off + 8 + n, count + 1
    extra = f" and {len(blob) - off} bytes that are no piece" if off != len(blob) else ""
    return f"{count} pieces{extra}"


def _varint(blob: bytes, off: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if off >= len(blob):
            raise CheckpointError("truncated protobuf varint")
        b = blob[off]
        off += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, off
        shift += 7


def _fields(blob: bytes):
    """(field number, wire type, value) of one protobuf message; value bytes for LEN fields."""
    off = 0
    while off < len(blob):
        key, off = _varint(blob, off)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, off = _varint(blob, off)
        elif wire == 1:
            value, off = blob[off:off + 8], off + 8
        elif wire == 2:
            n, off = _varint(blob, off)
            value, off = blob[off:off + n], off + n
        elif wire == 5:
            value, off = blob[off:off + 4], off + 4
        else:
            raise CheckpointError(f"unsupported protobuf wire type {wire}")
        if off > len(blob):
            raise CheckpointError("truncated protobuf field")
        yield num, wire, value


def load_sentencepiece(path: str | Path) -> Tokenizer:
    """A sentencepiece ``tokenizer.model`` (ModelProto: repeated pieces {piece, score, type})."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read tokenizer ({exc.strerror})") from exc
    pieces, scores = [], []
    try:
        for num, wire, value in _fields(blob):
            if num != 1 or wire != 2:
                continue
            piece, score = "", 0.0
            for n2, w2, v2 in _fields(value):
                if n2 == 1 and w2 == 2:
                    piece = v2.decode("utf-8", errors="replace")
                elif n2 == 2 and w2 == 5:
                    score = struct.unpack("<f", v2)[0]
            pieces.append(piece.replace("\u2581", " "))
            scores.append(score)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    if not pieces:
        raise CheckpointError(f"{path}: no sentencepiece pieces found")
    return Tokenizer(pieces, scores)


def load(path: str | Path, vocab_size: int) -> Tokenizer:
    """A llama2.c ``.bin`` tokenizer, a sentencepiece ``.model``, or the one in a GGUF
    model file."""
    path = Path(path)
    if path.suffix == ".gguf":
        from quant.gguf_tokenizer import load_gguf_tokenizer  # it builds on this module

        tok = load_gguf_tokenizer(path)
    elif path.suffix == ".model":
        tok = load_sentencepiece(path)
    else:
        tok = load_llama2c_tokenizer(path, vocab_size)
    if tok.vocab_size != vocab_size:
        raise CheckpointError(f"{path}: tokenizer has {tok.vocab_size} pieces, the model "
                              f"{vocab_size}")
    return tok


def path_for(tokenizer: str | Path | None, model: str | Path | None) -> Path:
    """The tokenizer to use: ``tokenizer`` when given, else the one a GGUF ``model`` (or a
    shipped model named so) holds."""
    if tokenizer:
        return Path(tokenizer)
    path = checkpoint.model_path(model) if model else None
    if path is not None and path.suffix == ".gguf":
        return path
    raise CheckpointError("give --tokenizer (only a GGUF --model carries its own)")


#: The tokenizer files a package may hold: ``tokenizer`` with one of these suffixes.
STORED_SUFFIXES = (".bin", ".model", ".gguf")


def stored_form(path: str | Path) -> tuple[str, bytes]:
    """The file name and bytes under which a package keeps the tokenizer at ``path``: the
    file itself, or for a GGUF model a GGUF file of its tokenizer metadata alone."""
    path = Path(path)
    if path.suffix == ".gguf":
        from quant.gguf_tokenizer import tokenizer_only_gguf

        return "tokenizer.gguf", tokenizer_only_gguf(path)
    try:
        suffix = path.suffix if path.suffix in STORED_SUFFIXES else ".bin"  # llama2.c's
        return f"tokenizer{suffix}", path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the tokenizer ({exc.strerror})") from None

