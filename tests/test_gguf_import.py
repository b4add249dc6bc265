"""GGUF checkpoints (llama.cpp's format): tiny random LLaMAs written with the ``gguf``
package in several tensor types, loaded by us and by transformers' own GGUF loader; the
logits must agree. Files we cannot read are refused with one line."""

import numpy as np
import pytest
import torch

from quant import checkpoint
from quant.checkpoint import CheckpointError
from quant.gguf_import import GGUF_NAMES
from quant.model import Transformer
from tests.helpers.models import tiny_checkpoint

gguf = pytest.importorskip("gguf")


def _write(path, ckpt, qtype, tied: bool = True, arch: str = "llama", drop: str = "",
           tokens: list[str] | None = None, chat_template: str = ""):
    """``ckpt`` as llama.cpp's converter writes it: q/k rows already interleaved, linear
    weights in ``qtype``, norms in F32; ``tokens``: a byte-level vocabulary with no merges."""
    c = ckpt.config
    w = gguf.GGUFWriter(str(path), arch)
    if tokens is not None:
        w.add_tokenizer_model("gpt2")
        w.add_token_list(tokens)
        w.add_token_types([3] * 3 + [1] * (len(tokens) - 3))
        w.add_token_merges([])
        w.add_bos_token_id(0)
        w.add_eos_token_id(1)
        w.add_add_bos_token(True)
        if chat_template:
            w.add_chat_template(chat_template)
    w.add_context_length(c.seq_len)
    w.add_embedding_length(c.dim)
    w.add_block_count(c.n_layers)
    w.add_feed_forward_length(c.hidden_dim)
    w.add_head_count(c.n_heads)
    w.add_head_count_kv(c.n_kv_heads)
    w.add_rope_freq_base(c.rope_theta)
    w.add_rope_dimension_count(c.head_dim)
    w.add_layer_norm_rms_eps(c.norm_eps)
    w.add_vocab_size(c.vocab_size)
    tensors = {"token_embd.weight": ckpt.weights["tok_embeddings"],
               "output_norm.weight": ckpt.weights["norm"]}
    if not tied:
        tensors["output.weight"] = ckpt.weights["output"]
    for i in range(c.n_layers):
        for ours, theirs in GGUF_NAMES.items():
            tensors[f"blk.{i}.{theirs}.weight"] = ckpt.weights[f"layers.{i}.{ours}"]
    for name, t in tensors.items():
        if name == drop:
            continue
        a = t.numpy().astype(np.float32)
        if a.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, a)
        else:
            w.add_tensor(name, gguf.quants.quantize(a, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _transformers_logits(path, tokens):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # transformers needs it to load GGUF
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(tokens.unsqueeze(0)).logits[0]


@pytest.mark.parametrize("qtype,tied", [("F32", False), ("F16", True), ("Q8_0", False),
                                        ("Q4_0", True), ("Q4_1", False)])
def test_gguf_gives_transformers_logits(tmp_path, seed, qtype, tied):
    ckpt = tiny_checkpoint(seed, dim=64, hidden=96, heads=4, kv_heads=2, vocab=128)
    path = tmp_path / "tiny.gguf"
    _write(path, ckpt, gguf.GGMLQuantizationType[qtype], tied)
    ours = checkpoint.load(path)
    assert ours.config.shared_classifier == tied
    assert (ours.config.dim, ours.config.n_kv_heads, ours.config.vocab_size) == (64, 2, 128)
    tokens = torch.tensor([1, 7, 99, 3, 42, 5, 17, 64, 2, 11] * 4)
    got = Transformer(ours).forward(tokens)
    want = _transformers_logits(path, tokens)
    err = (got - want).abs().max().item()
    assert err < 1e-4, f"{qtype}: {err} (seed {seed})"


def test_bad_gguf_files_are_refused_with_one_line(tmp_path, seed):
    ckpt = tiny_checkpoint(seed, dim=64, hidden=96, heads=4, kv_heads=2, vocab=128)
    f32 = gguf.GGMLQuantizationType.F32
    cases = {"gpt2.gguf": ({"arch": "gpt2"}, "GGUF architecture 'gpt2' is not supported"),
             "missing.gguf": ({"drop": "blk.1.ffn_up.weight"},
                              "tensor blk.1.ffn_up.weight is missing")}
    for name, (change, match) in cases.items():
        _write(tmp_path / name, ckpt, f32, **change)
        with pytest.raises(CheckpointError, match=match):
            checkpoint.load(tmp_path / name)
    _write(tmp_path / "whole.gguf", ckpt, f32)
    blob = (tmp_path / "whole.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(blob[:len(blob) // 2])
    (tmp_path / "text.gguf").write_bytes(b"not a gguf file at all\n" * 10)
    for name in ("cut.gguf", "text.gguf"):
        with pytest.raises(CheckpointError, match="not a readable GGUF file|truncated") as exc:
            checkpoint.load(tmp_path / name)
        assert "\n" not in str(exc.value)


def _tokenizer_gguf(path, kind: str, tokens, types, **extra):
    """A GGUF file holding only a tokenizer's metadata (and one tiny tensor)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model(kind)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_bos_token_id(extra.pop("bos", 1))
    w.add_eos_token_id(extra.pop("eos", 2))
    if "merges" in extra:
        w.add_token_merges(extra.pop("merges"))
        w.add_add_bos_token(False)
    if "scores" in extra:
        w.add_token_scores(extra.pop("scores"))
    if "chat_template" in extra:
        w.add_chat_template(extra.pop("chat_template"))
    w.add_tensor("token_embd.weight", np.zeros((len(tokens), 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


TEXTS = ["the theme then", " the  in a\tthe\n", "<|im_start|>user\nthe<|im_end|>", "",
         "caf\u00e9 na\u00efve \u65e5\u672c \U0001f642"]


def test_byte_level_gguf_tokenizer_equals_transformers(tmp_path):
    """A GPT-2-style vocabulary (bytes, merges, control tokens) encodes as transformers'
    own GGUF tokenizer does, and decodes back to the text."""
    from quant import tokenizer
    from quant.gguf_tokenizer import _byte_alphabet

    transformers = pytest.importorskip("transformers")
    control = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["\u0120 t", "h e", "\u0120t he", "i n", "\u0120 a", "t he", "\u0120the m", "e n"]
    tokens = control + sorted(_byte_alphabet(), key=_byte_alphabet().get)
    tokens += [m.replace(" ", "") for m in merges]
    path = tmp_path / "bpe.gguf"
    _tokenizer_gguf(path, "gpt2", tokens, [3] * 3 + [1] * (len(tokens) - 3), merges=merges)
    ours = tokenizer.load(path, len(tokens))
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in TEXTS:
        ids = ours.encode(text, bos=False)
        assert ids == theirs(text, add_special_tokens=False)["input_ids"], text
        if "<|" not in text:
            assert ours.decode(ids) == text
    assert ours.encode("the")[:1] != [ours.bos]  # this vocabulary adds no BOS
    with pytest.raises(CheckpointError, match=f"tokenizer has {len(tokens)} pieces, the model 999"):
        tokenizer.load(path, 999)


CHATML = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
          "{{ '<|im_start|>system\\nBe brief.<|im_end|>\\n' }}{% endif %}"
          "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
#: block tags on their own lines (trim_blocks / lstrip_blocks), BOS/EOS, a filter, a refusal
TAGGED = """{% for m in messages %}
  {% if m['role'] not in ['system', 'user', 'assistant'] %}
    {{ raise_exception('unknown role ' + m['role']) }}
  {% endif %}
{{ bos_token }}[{{ m['role'] | upper }}] {{ m['content'] | trim }}{{ eos_token }}
{% endfor %}
{% if add_generation_prompt %}[ASSISTANT]{% endif %}"""


@pytest.mark.parametrize("template", [CHATML, TAGGED], ids=["chatml", "tagged"])
def test_chat_template_renders_as_transformers_does(tmp_path, template):
    """The GGUF's ``tokenizer.chat_template`` gives the text transformers'
    ``apply_chat_template`` gives, for one user turn and for a conversation."""
    from quant import tokenizer
    from quant.chat import ChatTemplateError
    from quant.gguf_tokenizer import _byte_alphabet

    transformers = pytest.importorskip("transformers")
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + sorted(
        _byte_alphabet(), key=_byte_alphabet().get) + ["he"]
    path = tmp_path / "chat.gguf"
    _tokenizer_gguf(path, "gpt2", tokens, [3] * 3 + [1] * (len(tokens) - 3), merges=["h e"],
                    bos=0, eos=2, chat_template=template)
    ours = tokenizer.load(path, len(tokens)).chat_template
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    talk = [{"role": "system", "content": "Answer in French."},
            {"role": "user", "content": " What is the capital of France? "},
            {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And Spain?"}]
    for messages in (talk[1:2], talk):
        for opened in (True, False):
            want = theirs.apply_chat_template(messages, tokenize=False,
                                              add_generation_prompt=opened)
            assert ours.render(messages, opened) == want
    assert ours.user_prompt("hi") == ours.render([{"role": "user", "content": "hi"}])
    if template is TAGGED:
        with pytest.raises(ChatTemplateError, match="refuses: unknown role tool"):
            ours.render([{"role": "tool", "content": "x"}])


def test_a_vocabulary_without_a_template_has_none_and_a_broken_one_is_refused(tmp_path):
    from quant import tokenizer

    tokens = ["<s>", "</s>", "a", "b"]
    _tokenizer_gguf(tmp_path / "plain.gguf", "llama", tokens, [1] * 4, scores=[0.0] * 4,
                    bos=0, eos=1)
    assert tokenizer.load(tmp_path / "plain.gguf", 4).chat_template is None
    _tokenizer_gguf(tmp_path / "bad.gguf", "llama", tokens, [1] * 4, scores=[0.0] * 4,
                    bos=0, eos=1, chat_template="{% for m in messages %}")
    with pytest.raises(CheckpointError, match="bad.gguf: the chat template does not parse"):
        tokenizer.load(tmp_path / "bad.gguf", 4)


def test_sentencepiece_gguf_tokenizer_equals_llama2c(tmp_path):
    """A LLaMA-style vocabulary (pieces and scores, ``\u2581`` for spaces) in GGUF encodes as
    the same vocabulary does from llama2.c's tokenizer file."""
    from quant import tokenizer
    from tests.helpers.models import TEXT, TOKENIZER, need_shared

    need_shared()
    ref = tokenizer.load(TOKENIZER, 512)
    path = tmp_path / "spm.gguf"
    _tokenizer_gguf(path, "llama", [p.replace(" ", "\u2581") for p in ref.pieces],
                    [1] * len(ref.pieces), scores=ref.scores)
    ours = tokenizer.load(path, 512)
    text = TEXT.read_text()[:4000]
    assert ours.encode(text) == ref.encode(text)
    assert ours.decode(ours.encode(text)) == ref.decode(ref.encode(text))


def test_a_gguf_model_needs_no_tokenizer_flag_and_packages_keep_its_tokenizer(tmp_path, seed,
                                                                              capsys):
    """quantize and compile take a GGUF --model alone; the package keeps the tokenizer's
    metadata (not the model's weights) and loads it back; without a GGUF model, --tokenizer
    is asked for before any work."""
    from compiler import package
    from llmacc import cli
    from quant import tokenizer
    from quant.gguf_tokenizer import _byte_alphabet

    ckpt = tiny_checkpoint(seed, dim=64, hidden=96, heads=4, kv_heads=2, vocab=259)
    path = tmp_path / "tiny.gguf"
    _write(path, ckpt, gguf.GGMLQuantizationType.F32, tokens=["<s>", "</s>", "<pad>", *sorted(
        _byte_alphabet(), key=_byte_alphabet().get)], chat_template=(
        "{% for m in messages %}<pad>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}:{% endif %}"))
    pkg = tmp_path / "pkg"
    assert cli.main(["compile", "--model", str(path), "--scheme", "w8a8", "--config",
                     "sim-small", "-o", str(pkg), "--calib-stories", "2", "--finetune-steps",
                     "0", "--no-progress", "--prefill-bucket", "16", "--decode-bucket", "16",
                     "--max-len", "32"]) == 0
    stored = package.tokenizer_path(pkg)
    assert stored.name == "tokenizer.gguf" and stored.stat().st_size < path.stat().st_size / 4
    text = "caf\u00e9 \U0001f642 ok"
    assert tokenizer.load(stored, 259).encode(text) == tokenizer.load(path, 259).encode(text)
    # the package keeps the chat template: --chat sends <pad> h i : (no BOS, the template's
    # own control token kept whole) and prints the answer alone
    assert cli.main(["run", "--package", str(pkg), "--chat", "--prompt", "hi",
                     "--max-tokens", "2", "--stop-token", "9", "--no-stream"]) == 0
    out, err = capsys.readouterr()
    assert "emulator: prompt 4 tokens" in err and not out.startswith("hi"), (out, err)
    model = tmp_path / "model.bin"
    model.write_bytes(b"")
    assert cli.main(["quantize", "--model", str(model), "--scheme", "w8a8",
                     "-o", str(tmp_path / "q.pt")]) == 2
    assert "give --tokenizer" in capsys.readouterr().err  # not the empty model file
