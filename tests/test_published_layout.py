"""A checkpoint folder laid out as the published UME-R1 ones (saved by transformers 4.49) loads and
gives the vectors of the same weights in today's layout.

The tiny checkpoint is rewritten the way the published folders look: a flat config with
``rope_scaling: {"type": "mrope"}``, an ``lm_head.weight`` beside the tied embeddings, an
image-only ``preprocessor_config.json``, a separate ``chat_template.json``, no video processor
config, no ume-plugins settings, and Qwen2-VL-Instruct's generation config (near-greedy sampling,
a repetition penalty, two EOS ids).
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import ume_plugins
from tests.conftest import gradient, solid

INPUTS = [
    "a red fox",
    gradient((150, 100), seed=4),
    {"text": "a fox", "image": gradient((56, 84), seed=5)},
    {"video": [solid((40 * i, 90, 20), (84, 56)) for i in range(3)]},
]


def published_layout(tiny: Path, folder: Path) -> Path:
    """``tiny``'s weights and tokenizer in the published checkpoints' file layout, written to ``folder``."""
    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny / name, folder / name)
    weights = load_file(tiny / "model.safetensors")
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"].clone()
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})

    config = json.loads((tiny / "config.json").read_text())
    config.pop("ume_plugins_random_weights")
    text = config.pop("text_config")
    rope = text.pop("rope_parameters")
    flat = {key: value for key, value in text.items() if key not in ("model_type", "layer_types")}
    flat.update(config, rope_theta=rope["rope_theta"], transformers_version="4.49.0")
    flat["rope_scaling"] = {"type": "mrope", "mrope_section": rope["mrope_section"]}
    flat["torch_dtype"] = flat.pop("dtype")
    vision = flat["vision_config"]
    vision.pop("rope_parameters", None)  # written by newer transformers only
    vision.update(in_chans=vision.pop("in_channels"), model_type="qwen2_vl")
    (folder / "config.json").write_text(json.dumps(flat, indent=2))

    image_processor = json.loads((tiny / "processor_config.json").read_text())["image_processor"]
    bounds = image_processor.pop("size")
    image_processor.update(
        min_pixels=bounds["shortest_edge"], max_pixels=bounds["longest_edge"], processor_class="Qwen2VLProcessor"
    )
    (folder / "preprocessor_config.json").write_text(json.dumps(image_processor, indent=2))
    template = (tiny / "chat_template.jinja").read_text()
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))

    generation = json.loads((tiny / "generation_config.json").read_text())
    eos, end_of_text = generation["eos_token_id"], generation["pad_token_id"]
    generation.update(
        eos_token_id=[eos, end_of_text],
        do_sample=True,
        temperature=0.1,
        top_p=0.001,
        top_k=1,
        repetition_penalty=1.05,
        transformers_version="4.49.0",
    )
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return folder


@pytest.fixture(scope="module")
def published(tiny_path, tmp_path_factory):
    folder = published_layout(tiny_path, tmp_path_factory.mktemp("published") / "UME-R1-tiny")
    return ume_plugins.load(str(folder), device="cpu", max_new_tokens=8)


@pytest.fixture(scope="module")
def modern(tiny_path, published):
    """The tiny checkpoint, decoding under the published folder's generation config."""
    model = ume_plugins.load("ume-r1-tiny", device="cpu", max_new_tokens=8)
    model[0].model.generation_config = copy.deepcopy(published[0].model.generation_config)
    return model


def test_the_published_layout_is_read_as_written(published):
    module = published[0]
    assert module.model.config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    generation = module.model.generation_config
    assert sorted(generation.eos_token_id) == sorted(
        module.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    )
    assert generation.repetition_penalty == 1.05
    assert torch.equal(module.model.lm_head.weight, module.model.model.language_model.embed_tokens.weight)


@pytest.mark.parametrize("mode", ["discriminative", "generative"])
def test_the_published_layout_gives_the_vectors_of_todays(published, modern, mode):
    expected, actual = (
        model.encode(INPUTS, mode=mode, batch_size=2, output_value=None) for model in (modern, published)
    )
    for want, got in zip(expected, actual, strict=True):
        torch.testing.assert_close(got["sentence_embedding"], want["sentence_embedding"], rtol=0, atol=1e-6)
        if mode == "generative":  # the same reasoning, under the same repetition penalty and EOS ids
            assert torch.equal(got["generated_ids"], want["generated_ids"])
