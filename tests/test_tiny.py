from __future__ import annotations

import json

import pytest
from transformers import AutoProcessor, GenerationConfig, Qwen2VLForConditionalGeneration

from ume_plugins.tiny import QWEN2_VL_SPECIAL_TOKENS, UME_ADDED_TOKENS, build_tiny_checkpoint


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return [build_tiny_checkpoint(root / name, seed=seed) for name, seed in (("a", 0), ("b", 0), ("c", 1))]


def test_same_seed_gives_byte_identical_files(built):
    first, second, _ = built
    names = sorted(path.name for path in first.iterdir())
    assert names == sorted(path.name for path in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_another_seed_gives_other_weights(built):
    first, _, other = built
    assert (first / "model.safetensors").read_bytes() != (other / "model.safetensors").read_bytes()
    assert (first / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_it_is_a_real_small_qwen2_vl(built):
    path = built[0]
    model = Qwen2VLForConditionalGeneration.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) < 250_000
    assert (path / "model.safetensors").stat().st_size < 1_500_000
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["Qwen2VLForConditionalGeneration"]


def test_special_tokens_follow_qwen2_vl_order_then_ume_tokens(built):
    tokenizer = AutoProcessor.from_pretrained(built[0]).tokenizer
    ids = [tokenizer.convert_tokens_to_ids(token) for token in QWEN2_VL_SPECIAL_TOKENS + UME_ADDED_TOKENS]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert ids[0] == len(tokenizer) - len(ids)  # right after the byte-level BPE vocabulary
    specials = {token.content: token.special for token in tokenizer.added_tokens_decoder.values()}
    assert specials["<gen_emb>"] is False and specials["<disc_emb>"] is False
    assert specials["<|im_end|>"] is True
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer("<think> x </think><gen_emb>", add_special_tokens=False)["input_ids"][-1] == ids[-2]


def test_generation_config_ends_on_im_end(built):
    config = GenerationConfig.from_pretrained(built[0])
    tokenizer = AutoProcessor.from_pretrained(built[0]).tokenizer
    assert config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_chat_template_adds_the_default_system_turn(built):
    processor = AutoProcessor.from_pretrained(built[0])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "hi"}]}]
    rendered = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|video_pad|><|vision_end|>hi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    with_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert processor.apply_chat_template(with_system, tokenize=False).startswith("<|im_start|>system\nBe brief.")
