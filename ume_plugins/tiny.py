"""Offline, deterministic, tiny random checkpoint shaped like UME-R1.

Real weights cannot be downloaded everywhere (CI, air-gapped machines), so tests, examples and
benchmarks run on a few-hundred-kilobyte Qwen2-VL whose tokenizer, special tokens, chat template,
processor and generation config are laid out like the real checkpoints. Its weights are random:
its vectors mean nothing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ume_plugins.prompts import GEN_PROMPT, SYSTEM_PROMPT

logger = logging.getLogger(__name__)

# The chat template shipped with Qwen2-VL-Instruct (and so with UME-R1): a default system turn,
# images and videos rendered as vision spans, text items verbatim.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2-VL's special tokens, in the order (and so the relative ids) of the real vocabulary.
QWEN2_VL_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# UME-R1 adds these as plain (non-special) tokens right after Qwen2-VL's.
UME_ADDED_TOKENS = ("<gen_emb>", "<disc_emb>")

_TOKENIZER_CORPUS = (
    SYSTEM_PROMPT,
    GEN_PROMPT,
    "<think> The input shows a small picture of a cat on a red sofa. </think>"
    "<answer> A cat resting on a sofa. </answer>",
    "Find a video that contains the following visual content: a man is cooking pasta.",
    "Understand the content of the provided document image.",
    "Represent the given image with the following question: What is in the image?",
    "0123456789 the quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX!",
)
_TOKENIZER_VOCAB_SIZE = 640
_VOCAB_ROW_MULTIPLE = 64
TINY_HIDDEN_SIZE = 64
TINY_MAX_NEW_TOKENS = 32
# Bumped whenever the builder's output changes, so stale caches are never reused.
TINY_FORMAT_VERSION = 2
# Marks the checkpoint's config.json, so that every load of it (and of anything saved from it)
# can say that its weights are random.
RANDOM_WEIGHTS_KEY = "ume_plugins_random_weights"
RANDOM_WEIGHTS_WARNING = (
    "This UME-R1 checkpoint (ume-r1-tiny) has RANDOM weights: its vectors and reasoning are "
    "meaningless and only show that the pipeline runs. Load ume-r1 or ume-r1-7b for real embeddings."
)


def _train_tokenizer():
    """A byte-level BPE tokenizer with Qwen2's pre-tokenizer, trained on a fixed corpus."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TOKENIZER_VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(list(_TOKENIZER_CORPUS) * 4, trainer)
    trained = json.loads(bpe.to_str())["model"]
    merges = [tuple(pair) if isinstance(pair, list) else tuple(pair.split(" ")) for pair in trained["merges"]]

    tokenizer = Qwen2Tokenizer(vocab=trained["vocab"], merges=merges, model_max_length=32768)
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN2_VL_SPECIAL_TOKENS)})
    tokenizer.add_tokens(list(UME_ADDED_TOKENS))
    # Set after the tokens exist, so that they keep Qwen2-VL's order.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.padding_side = "left"
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tokenizer


def _model_config(tokenizer, vocab_rows: int):
    from transformers import Qwen2VLConfig

    token_id = tokenizer.convert_tokens_to_ids
    head_dim = 16
    return Qwen2VLConfig(
        text_config={
            "vocab_size": vocab_rows,
            "hidden_size": TINY_HIDDEN_SIZE,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": TINY_HIDDEN_SIZE // head_dim,
            "num_key_value_heads": 2,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            # mrope sections (temporal, height, width) must sum to head_dim / 2.
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
            "bos_token_id": token_id("<|endoftext|>"),
            "eos_token_id": token_id("<|im_end|>"),
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": TINY_HIDDEN_SIZE,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        tie_word_embeddings=True,
        **vision_token_ids(tokenizer),
    )


def vision_token_ids(tokenizer: Any) -> dict[str, int]:
    """``Qwen2VLConfig``'s image/video placeholder and vision-span token ids, read from ``tokenizer``."""
    token_id = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": token_id("<|image_pad|>"),
        "video_token_id": token_id("<|video_pad|>"),
        "vision_start_token_id": token_id("<|vision_start|>"),
        "vision_end_token_id": token_id("<|vision_end|>"),
    }


def build_tiny_checkpoint(output_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write a tiny random UME-R1-shaped checkpoint.

    The checkpoint is a real ``Qwen2VLForConditionalGeneration`` (2 text layers of width 64, a
    2-block vision tower) saved as safetensors, with a Qwen2 byte-level BPE tokenizer holding every
    Qwen2-VL special token plus ``<gen_emb>`` and ``<disc_emb>``, Qwen2-VL's chat template, its
    image/video processors and a generation config whose EOS is ``<|im_end|>``. Its config is
    marked (:data:`RANDOM_WEIGHTS_KEY`) so that loading it warns. The same seed always gives
    byte-identical files.

    Args:
        output_dir: Directory to write; created if missing, existing files are overwritten.
        seed: Seed of the random weights.

    Returns:
        The checkpoint directory.
    """
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    output_dir = Path(output_dir)
    tokenizer = _train_tokenizer()
    vocab_rows = -(-len(tokenizer) // _VOCAB_ROW_MULTIPLE) * _VOCAB_ROW_MULTIPLE
    config = _model_config(tokenizer, vocab_rows)

    # Fork the RNG so building a checkpoint never perturbs the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config).eval()
    setattr(model.config, RANDOM_WEIGHTS_KEY, True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        pad_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=28 * 28 * 16384),
        video_processor=Qwen2VLVideoProcessor(),
        tokenizer=tokenizer,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    processor.save_pretrained(output_dir)
    # Random weights rarely write <gen_emb>: a short budget keeps demos on this checkpoint quick.
    settings = {"max_new_tokens": TINY_MAX_NEW_TOKENS}
    (output_dir / "ume_r1_config.json").write_text(json.dumps(settings, indent=4) + "\n", encoding="utf-8")
    return output_dir


def tiny_checkpoint_path(seed: int = 0) -> Path:
    """Return the cached tiny checkpoint, building it once.

    The cache lives under ``$UME_PLUGINS_CACHE`` (default ``~/.cache/ume_plugins``), keyed by the
    seed and the transformers version that wrote it. It is built in a temporary directory and
    renamed into place, so concurrent first calls never see a half-written checkpoint.

    Args:
        seed: Seed of the random weights.

    Returns:
        Path of the checkpoint directory.
    """
    import transformers

    root = Path(os.environ.get("UME_PLUGINS_CACHE", Path.home() / ".cache" / "ume_plugins"))
    target = root / f"ume-r1-tiny-v{TINY_FORMAT_VERSION}-seed{seed}-transformers{transformers.__version__}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=root))
    try:
        build_tiny_checkpoint(staging, seed=seed)
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("Built the tiny random UME-R1 checkpoint at %s", target)
    return target
