"""Tiny random checkpoints of every supported architecture convert, load in llama.cpp and
generate; with transformers installed, their logits match llama.cpp's on the F32 GGUF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tiny_checkpoints import KINDS
from typer.testing import CliRunner

from sovcli.cli.main import app

EXPECTED_ARCH = {
    "llama2": "llama",
    "llama3": "llama",
    "mistral": "llama",
    "ministral": "llama",
    "mixtral": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "phi3": "phi3",
}
BPE_PRE = {"llama3": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2", "ministral": "tekken"}
SPM_IDS = [
    1,
    259,
    286,
    289,
    306,
    307,
    308,
    305,
    297,
]  # "<s> The quick brown fox" in the tiny SPM vocab

MULTILINGUAL = [
    "The quick brown fox jumps over the lazy dog. It's 2024!",
    "Héllo wörld, ça va? Der Fuchs springt über den Hund.",
    "東京は日本の首都です。Быстрая лиса 12345 numbers   and\n\n  spaces",
    "def main():\n\treturn 42  # it'll work, we've CHECKED",
]


def _field(path: Path, key: str):
    import gguf

    f = gguf.GGUFReader(path).fields.get(key)
    return None if f is None else f.contents()


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_checkpoint_loads_and_generates(kind: str, tiny_gguf) -> None:
    from llama_helpers import LlamaModel

    path = tiny_gguf(kind)
    assert _field(path, "general.architecture") == EXPECTED_ARCH[kind]
    model = LlamaModel(path, n_ctx=64)
    try:
        tokens = model.tokenize("The quick brown fox", add_special=True)
        assert tokens
        generated = model.greedy(tokens, 8, stop_at_eog=False)
        assert len(generated) == 8 and all(0 <= t < model.n_vocab for t in generated)
        assert np.isfinite(model.logits(tokens)).all()
        assert model.detokenize(model.tokenize("The quick brown fox")) == "The quick brown fox"
    finally:
        model.close()


@pytest.mark.parametrize("kind", sorted(BPE_PRE))
def test_bpe_pre_tokenizer_identified_and_matches_hf(kind: str, tiny_checkpoint, tiny_gguf) -> None:
    from llama_helpers import LlamaModel
    from tokenizers import Tokenizer

    path = tiny_gguf(kind)
    assert _field(path, "tokenizer.ggml.pre") == BPE_PRE[kind]
    hf = Tokenizer.from_file(str(tiny_checkpoint(kind) / "tokenizer.json"))
    model = LlamaModel(path, n_ctx=64)
    try:
        for text in MULTILINGUAL:
            assert model.tokenize(text) == hf.encode(text, add_special_tokens=False).ids, text
    finally:
        model.close()


def test_mixtral_experts_are_stacked(tiny_gguf) -> None:
    import gguf

    reader = gguf.GGUFReader(tiny_gguf("mixtral"))
    shapes = {t.name: [int(d) for d in reversed(t.shape)] for t in reader.tensors}
    assert shapes["blk.0.ffn_gate_exps.weight"] == [4, 128, 64]
    assert shapes["blk.0.ffn_down_exps.weight"] == [4, 64, 128]
    assert shapes["blk.1.ffn_up_exps.weight"] == [4, 128, 64]
    assert shapes["blk.0.ffn_gate_inp.weight"] == [4, 64]
    assert _field(tiny_gguf("mixtral"), "llama.expert_count") == 4
    assert _field(tiny_gguf("mixtral"), "llama.expert_used_count") == 2


def test_llama3_rope_scaling_becomes_rope_freqs(tiny_gguf) -> None:
    import gguf

    reader = gguf.GGUFReader(tiny_gguf("llama3"))
    freqs = next(t for t in reader.tensors if t.name == "rope_freqs.weight")
    values = np.asarray(freqs.data, dtype=np.float32)
    assert values.shape == (8,) and values[0] == 1.0 and values[-1] == 8.0


@pytest.mark.parametrize(
    ("dtype", "outtype", "expected_ftype"),
    [("BF16", "bf16", 32), ("F16", "q8_0", 7), ("BF16", "f16", 1)],
)
def test_source_dtypes_and_outtypes(
    dtype, outtype, expected_ftype, tiny_checkpoint, tmp_path
) -> None:
    from llama_helpers import LlamaModel

    folder = tiny_checkpoint("llama3", dtype)
    out = tmp_path / f"tiny-{outtype}.gguf"
    result = CliRunner().invoke(
        app, ["convert", str(folder), "--outtype", outtype, "-o", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["outtype"] == outtype and report["tokenizer"]["pre"] == "llama-bpe"
    assert _field(out, "general.file_type") == expected_ftype
    model = LlamaModel(out, n_ctx=64)
    try:
        assert np.isfinite(model.logits(model.tokenize("The quick brown fox"))).all()
    finally:
        model.close()


def test_bf16_passthrough_is_bit_exact(tiny_checkpoint, tmp_path) -> None:
    import gguf

    from sovcli.convert.checkpoint import open_checkpoint, read_tensor

    folder = tiny_checkpoint("qwen2", "BF16")
    out = tmp_path / "q.gguf"
    assert (
        CliRunner()
        .invoke(app, ["convert", str(folder), "-t", "bf16", "-o", str(out), "-q"])
        .exit_code
        == 0
    )
    ckpt = open_checkpoint(folder)
    source = read_tensor(ckpt.tensors["model.layers.1.mlp.up_proj.weight"])
    written = next(t for t in gguf.GGUFReader(out).tensors if t.name == "blk.1.ffn_up.weight")
    assert written.tensor_type == gguf.GGMLQuantizationType.BF16
    assert (
        np.asarray(written.data).view(np.uint16).reshape(source.shape).tobytes() == source.tobytes()
    )


# ----------------------------------------------------------------------------- reference


@pytest.fixture(scope="module")
def transformers_mod():
    return pytest.importorskip(
        "transformers",
        reason="reference tests need the `reference` extra (transformers + torch)",
    )


@pytest.mark.reference
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.slow  # seconds, not milliseconds: kept out of the fast tier
def test_logits_match_transformers(kind: str, tiny_checkpoint, tiny_gguf, transformers_mod) -> None:
    import torch
    from llama_helpers import LlamaModel

    transformers_mod.logging.set_verbosity_error()
    model = LlamaModel(tiny_gguf(kind, "f32"), n_ctx=64)
    try:
        tokens = (
            SPM_IDS
            if kind not in BPE_PRE
            else model.tokenize("The quick brown fox jumps", add_special=True)
        )
        ours = model.all_logits(tokens)
    finally:
        model.close()
    hf = transformers_mod.AutoModelForCausalLM.from_pretrained(
        tiny_checkpoint(kind), dtype=torch.float32, attn_implementation="eager"
    )
    hf.eval()
    with torch.no_grad():
        theirs = hf(torch.tensor([tokens])).logits[0].numpy()
    # At every position, within 2e-3 of the logits' scale (measured: at most half of that).
    tolerance = 2e-3 * np.maximum(1.0, np.abs(theirs).max(axis=1))
    assert (np.abs(ours - theirs).max(axis=1) <= tolerance).all(), kind
    # Two sets of kernels: the top-1 token must agree wherever transformers' top-2 gap exceeds
    # twice the tolerance; a closer tie may go either way (random tiny models have ties of 0.004
    # against a tolerance of 0.016). Measured: agreement at 104/104 positions over the 10 kinds.
    want, got = np.argmax(theirs, axis=1), np.argmax(ours, axis=1)
    best2 = np.sort(theirs, axis=1)[:, -2:]
    clear = best2[:, 1] - best2[:, 0] > 2 * tolerance
    assert clear[-1] and (got == want)[clear].all(), kind
    assert np.mean(got == want) >= 0.75, f"{kind}: top-1 agreement {np.mean(got == want):.2f}"


def _bytes_of(token: str) -> bytes:
    """The bytes behind a byte-level BPE token string (GPT-2's byte -> unicode table)."""
    from sovcli.convert.tokenizer import _bytes_to_unicode

    decode = {ch: b for b, ch in _bytes_to_unicode().items()}
    return bytes(decode[ch] for ch in token)


def test_tekken_json_is_read_like_tokenizer_json(tiny_checkpoint, tmp_path) -> None:
    """A Mistral tekken.json (no tokenizer.json) gives the same splits as the HF tokenizer."""
    import base64
    import shutil

    from llama_helpers import LlamaModel
    from tokenizers import Tokenizer

    from sovcli.convert.converter import convert_checkpoint

    source = tiny_checkpoint("ministral")
    folder = tmp_path / "tekken-model"
    shutil.copytree(source, folder)
    hf_json = json.loads((folder / "tokenizer.json").read_text())
    specials = {t["id"] for t in hf_json["added_tokens"]}
    ordinary = sorted((i, t) for t, i in hf_json["model"]["vocab"].items() if i not in specials)
    n_special = 3
    tekken = {
        "config": {
            "pattern": "",
            "num_vocab_tokens": len(ordinary),
            "default_vocab_size": n_special + len(ordinary),
            "default_num_special_tokens": n_special,
            "version": "v7",
        },
        "vocab": [
            {"rank": r, "token_bytes": base64.b64encode(_bytes_of(t)).decode(), "token_str": None}
            for r, (_i, t) in enumerate(ordinary)
        ],
        "special_tokens": [
            {"rank": 0, "token_str": "<unk>", "is_control": True},
            {"rank": 1, "token_str": "<s>", "is_control": True},
            {"rank": 2, "token_str": "</s>", "is_control": True},
        ],
    }
    (folder / "tekken.json").write_text(json.dumps(tekken))
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer_config.json").unlink()
    config = json.loads((folder / "config.json").read_text())
    config.update(bos_token_id=1, eos_token_id=2)
    (folder / "config.json").write_text(json.dumps(config))
    # Embedding rows follow the tekken ids: specials first, then the ranked vocabulary.
    out = tmp_path / "tekken.gguf"
    from tiny_checkpoints import write_safetensors

    from sovcli.convert.checkpoint import open_checkpoint, read_tensor

    ckpt = open_checkpoint(folder)
    tensors = {name: read_tensor(ref) for name, ref in ckpt.tensors.items()}
    order = sorted(specials) + [i for i, _t in ordinary]
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        tensors[name] = tensors[name][order]
    write_safetensors(folder / "model.safetensors", tensors)

    result = convert_checkpoint(folder, out, outtype="f32")
    assert result.tokenizer["source"] == "tekken.json" and result.tokenizer["pre"] == "tekken"
    hf = Tokenizer.from_file(str(source / "tokenizer.json"))
    to_tekken = {hf_id: n_special + rank for rank, (hf_id, _t) in enumerate(ordinary)}
    model = LlamaModel(out, n_ctx=64)
    try:
        for text in MULTILINGUAL:
            expected = [to_tekken[i] for i in hf.encode(text, add_special_tokens=False).ids]
            assert model.tokenize(text) == expected, text
    finally:
        model.close()


def test_generation_config_and_model_card_metadata(tiny_checkpoint, tmp_path) -> None:
    import shutil

    from sovcli.convert.converter import convert_checkpoint

    folder = tmp_path / "card"
    shutil.copytree(tiny_checkpoint("qwen3"), folder)
    (folder / "README.md").write_text(
        "---\nlicense: other\nlicense_name: acme-community\nbase_model: Acme/Base-1B\n"
        "language: [en, fr]\ntags:\n  - chat\n  - 'tiny'\n---\n# Card\n",
        encoding="utf-8",
    )
    out = tmp_path / "card.gguf"
    result = convert_checkpoint(folder, out, outtype="f16", source_repo="acme/card-instruct")
    assert result.general["name"] == "card-instruct"
    assert _field(out, "general.license") == "other"
    assert _field(out, "general.license.name") == "acme-community"
    assert _field(out, "general.base_model.0.repo_url") == "https://huggingface.co/Acme/Base-1B"
    assert _field(out, "general.source.repo_url") == "https://huggingface.co/acme/card-instruct"
    assert _field(out, "general.languages") == ["en", "fr"]
    assert _field(out, "general.tags") == ["chat", "tiny"]
    assert _field(out, "general.sampling.temp") == pytest.approx(0.6)
    assert _field(out, "general.sampling.top_p") == pytest.approx(0.9)
    assert "im_start" in _field(out, "tokenizer.chat_template")


def test_real_sentencepiece_model_tokenizes_like_sentencepiece(tiny_checkpoint, tmp_path) -> None:
    """A tokenizer.model trained by the sentencepiece library (identity normalizer, byte
    fallback, as Llama 2 / Mistral ship) is decoded here and splits text as sentencepiece does."""
    spm = pytest.importorskip(
        "sentencepiece", reason="needs the sentencepiece package (test extra)"
    )
    import io
    import shutil

    from llama_helpers import LlamaModel
    from tiny_checkpoints import CORPUS, write_safetensors

    from sovcli.convert.checkpoint import open_checkpoint, read_tensor
    from sovcli.convert.converter import convert_checkpoint
    from sovcli.convert.tokenizer import parse_sentencepiece

    model_bytes = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines() * 20),
        model_writer=model_bytes,
        vocab_size=420,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        split_digits=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    processor = spm.SentencePieceProcessor(model_proto=model_bytes.getvalue())
    parsed = parse_sentencepiece(model_bytes.getvalue())
    assert [p for p, _s, _t in parsed.pieces] == [processor.id_to_piece(i) for i in range(420)]
    assert [s for _p, s, _t in parsed.pieces] == pytest.approx(
        [processor.get_score(i) for i in range(420)]
    )

    folder = tmp_path / "spm-model"
    shutil.copytree(tiny_checkpoint("llama2"), folder)
    (folder / "tokenizer.model").write_bytes(model_bytes.getvalue())
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = 420
    (folder / "config.json").write_text(json.dumps(config))
    tensors = {n: read_tensor(r) for n, r in open_checkpoint(folder).tensors.items()}
    rng = np.random.default_rng(1)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        tensors[name] = (rng.standard_normal((420, tensors[name].shape[1])) * 0.3).astype(
            np.float32
        )
    write_safetensors(folder / "model.safetensors", tensors)

    out = tmp_path / "spm.gguf"
    convert_checkpoint(folder, out, outtype="f16")
    model = LlamaModel(out, n_ctx=64)
    try:
        for text in [*MULTILINGUAL, "Zoë's café: 3 crème brûlées"]:
            assert model.tokenize(text) == processor.encode(text), text
    finally:
        model.close()
