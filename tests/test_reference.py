"""Our vectors against a reference written straight from the spec with the official tooling.

The reference builds messages by hand, fits pixels with qwen-vl-utils' ``fetch_image`` (the
official eval's loader), runs the processor with the eval's bounds and reads hidden states the plain
way (``output_hidden_states``); none of ume_plugins' prompt or input code is used. Video frames go
through ``fetch_image`` one by one and are padded to an even count, as qwen-vl-utils 0.0.11 (the
eval's version) did for frame lists; newer releases re-budget frame lists with video pixel bounds.
"""

from __future__ import annotations

import pytest
import qwen_vl_utils
import torch
from PIL import Image

from tests.conftest import REASONING, ScriptedDecoding, gradient, solid

OFFICIAL_GEN_PROMPT = (
    "Represent the above input text, images, videos, or any combination of the three as embeddings. "
    "First output the thinking process in <think> </think> tags and then summarize the entire input in a "
    "word or sentence. Finally, use the <gen_emb> tag to represent the entire input."
)
INSTRUCTION = "Represent the given input:"
SAMPLES = {
    "text": {"text": "a red fox jumps over the fence"},
    "image": {"image": gradient((84, 56), seed=3)},
    "text+image": {"text": "what is shown?", "image": gradient((64, 64), seed=4)},
    "several images": {"text": "compare", "image": [gradient((56, 84), seed=5), solid((0, 90, 200), (70, 70))]},
    "video": {"video": [solid((30 * i, 60, 90), (56, 56)) for i in range(5)]},
}


def reference_inputs(processor, sample: dict, instruction: str | None):
    images = sample.get("image")
    images = [] if images is None else images if isinstance(images, list) else [images]
    content = [{"type": "image", "image": image} for image in images]
    if "video" in sample:
        content.append({"type": "video", "video": sample["video"]})
    if not content:
        content.append({"type": "image", "image": Image.new("RGB", (28, 28), (255, 255, 255))})
    text = " ".join(part for part in (instruction, sample.get("text")) if part)
    text = text.replace("<|image_pad|>", "").replace("<|video_pad|>", "").strip()
    content.append({"type": "text", "text": f"{text}\n<disc_emb>\n{OFFICIAL_GEN_PROMPT}"})
    messages = [{"role": "user", "content": content}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    image_inputs = [qwen_vl_utils.fetch_image(entry) for entry in content if entry["type"] == "image"] or None
    video_inputs = None
    if "video" in sample:
        frames = [qwen_vl_utils.fetch_image({"image": frame}) for frame in sample["video"]]
        video_inputs = [frames + frames[-1:] * (len(frames) % 2)]
    bounds = {"shortest_edge": 784, "longest_edge": 2359296}
    return processor(
        text=[prompt],
        images=image_inputs,
        videos=video_inputs,
        return_tensors="pt",
        images_kwargs={"size": bounds},
        videos_kwargs={"size": bounds, "do_sample_frames": False, "cap_pixels_per_frame": False},
    )


def reference_disc(model, processor, sample, instruction):
    inputs = reference_inputs(processor, sample, instruction)
    disc_id = processor.tokenizer.convert_tokens_to_ids("<disc_emb>")
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states[-1][0]
    position = (inputs["input_ids"][0] == disc_id).nonzero().max()
    return torch.nn.functional.normalize(hidden[position].float(), dim=-1)


def reference_gen(model, processor, sample, instruction, scripted):
    inputs = reference_inputs(processor, sample, instruction)
    gen_id = processor.tokenizer.convert_tokens_to_ids("<gen_emb>")
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=40,
            do_sample=False,
            logits_processor=[scripted],
            output_hidden_states=True,
            return_dict_in_generate=True,
        )
    generated = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    step = generated.index(gen_id) + 1  # hidden_states[0] is the prefill
    return torch.nn.functional.normalize(out.hidden_states[step][-1][0, 0].float(), dim=-1)


@pytest.fixture(scope="module")
def scripted(module):
    return ScriptedDecoding(module.tokenizer, REASONING)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_discriminative_vector_matches_the_reference(model, module, name):
    expected = reference_disc(module.model, module.processor, SAMPLES[name], INSTRUCTION)
    ours = model.encode(SAMPLES[name], prompt=INSTRUCTION, mode="discriminative", convert_to_tensor=True)
    assert torch.dot(ours, expected).item() >= 0.9999


@pytest.mark.parametrize("name", list(SAMPLES))
def test_generative_vector_matches_the_reference(model, module, scripted, name):
    expected = reference_gen(module.model, module.processor, SAMPLES[name], INSTRUCTION, scripted)
    ours = model.encode(
        SAMPLES[name],
        prompt=INSTRUCTION,
        mode="generative",
        convert_to_tensor=True,
        generation_kwargs={"logits_processor": [scripted], "max_new_tokens": 40},
    )
    assert torch.dot(ours, expected).item() >= 0.9999


def test_one_mixed_batch_matches_the_reference_item_by_item(model, module, scripted):
    samples = list(SAMPLES.values())
    disc = model.encode(samples, prompt=INSTRUCTION, mode="discriminative", convert_to_tensor=True)
    gen = model.encode(
        samples,
        prompt=INSTRUCTION,
        convert_to_tensor=True,
        generation_kwargs={"logits_processor": [scripted], "max_new_tokens": 40},
    )
    for row, sample in enumerate(samples):
        assert torch.dot(disc[row], reference_disc(module.model, module.processor, sample, INSTRUCTION)) >= 0.9999
        expected = reference_gen(module.model, module.processor, sample, INSTRUCTION, scripted)
        assert torch.dot(gen[row], expected) >= 0.9999
