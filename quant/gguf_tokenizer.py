"""The tokenizer a GGUF file carries in its metadata.

Two vocabulary kinds: ``gpt2`` (byte-level BPE with merges, as SmolLM2 and LLaMA-3 use), built
on the HF ``tokenizers`` library the way transformers converts a GGUF file; and ``llama``
(sentencepiece pieces with scores, LLaMA 1/2), which is :class:`quant.tokenizer.Tokenizer`'s
own algorithm. Both answer :class:`~quant.tokenizer.Tokenizer`'s interface.
"""

from __future__ import annotations

from pathlib import Path

from quant.chat import ChatTemplate, ChatTemplateError
from quant.checkpoint import CheckpointError
from quant.gguf_import import GGUF_CONTROL, metadata
from quant.tokenizer import Tokenizer


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class ByteLevelTokenizer:
    """Byte-level BPE (``tokenizers``) with the vocabulary's control tokens kept whole."""

    def __init__(self, tokens: list[str], merges: list[str], control: list[int], bos: int,
                 eos: int, add_bos: bool):
        from tokenizers import AddedToken, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        try:
            pairs = [tuple(m.split(" ", 1)) for m in merges]
            bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=pairs)
        except Exception as exc:  # noqa: BLE001 - the library's errors are plain Exceptions
            raise CheckpointError(f"byte-level BPE vocabulary does not build ({exc})") from None
        self.hf = HFTokenizer(bpe)
        self.hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        self.hf.add_special_tokens([AddedToken(tokens[i], special=True) for i in control])
        self.tokens, self.bos, self.eos, self.add_bos = tokens, bos, eos, add_bos
        self.control = set(control)
        self._bytes = _byte_alphabet()
        self.chat_template: ChatTemplate | None = None

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """``text``'s ids; ``bos`` adds BOS only where the vocabulary asks for it
        (``tokenizer.ggml.add_bos_token``)."""
        ids = self.hf.encode(text, add_special_tokens=False).ids
        return ([self.bos] if bos and self.add_bos else []) + ids + ([self.eos] if eos else [])

    def decode_piece(self, prev: int, token: int) -> bytes:
        piece = self.tokens[token]
        if token in self.control:
            return piece.encode("utf-8")
        return bytes(self._bytes.get(ch, 0x3F) for ch in piece)

    def decode(self, ids: list[int]) -> str:
        out = b"".join(self.decode_piece(0, t) for t in ids if t not in (self.bos, self.eos))
        return out.decode("utf-8", errors="replace")


def load_gguf_tokenizer(path: str | Path) -> Tokenizer | ByteLevelTokenizer:
    path = Path(path)
    meta = metadata(path)
    kind = meta.get("tokenizer.ggml.model")
    tokens = list(meta.get("tokenizer.ggml.tokens"))
    bos = int(meta.get("tokenizer.ggml.bos_token_id", 1))
    eos = int(meta.get("tokenizer.ggml.eos_token_id", 2))
    if kind == "llama":
        scores = [float(s) for s in meta.get("tokenizer.ggml.scores")]
        tok = Tokenizer([t.replace("\u2581", " ") for t in tokens], scores, bos, eos)
    elif kind == "gpt2":
        types = list(meta.get("tokenizer.ggml.token_type", [1] * len(tokens)))
        control = [i for i, t in enumerate(types) if t in GGUF_CONTROL]
        tok = ByteLevelTokenizer(tokens, list(meta.get("tokenizer.ggml.merges", [])), control,
                                 bos, eos, bool(meta.get("tokenizer.ggml.add_bos_token", False)))
    else:
        raise CheckpointError(f"{path}: GGUF tokenizer {kind!r} is not supported (gpt2, llama)")
    source = meta.get("tokenizer.chat_template", "")
    if source:
        try:
            tok.chat_template = ChatTemplate(str(source), tokens[bos], tokens[eos])
        except ChatTemplateError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
    return tok


def tokenizer_only_gguf(path: str | Path) -> bytes:
    """A GGUF file holding just ``path``'s tokenizer metadata (what a package stores instead
    of the whole model file)."""
    import tempfile

    from gguf import GGUFValueType, GGUFWriter

    meta = metadata(path)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tokenizer.gguf"
        w = GGUFWriter(str(out), str(meta.get("general.architecture")))
        for key, field in meta.fields.items():
            if key.startswith("tokenizer."):
                vtype = field.types[0]
                sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
                w.add_key_value(key, field.contents(), vtype, sub_type=sub)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return out.read_bytes()

