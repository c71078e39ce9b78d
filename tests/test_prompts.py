from __future__ import annotations

from tests.conftest import solid
from ume_plugins.decoding import Item
from ume_plugins.prompts import GEN_PROMPT, build_message, compose_text, cut_after_disc_token


def test_instruction_and_text_are_joined_by_one_space_and_stripped():
    assert compose_text("Find a video:", "a dog runs") == "Find a video: a dog runs"
    assert compose_text("Find a video:", None) == "Find a video:"
    assert compose_text(None, "  a dog  ") == "a dog"
    assert compose_text("", "a dog") == "a dog"
    assert compose_text(None, None) == ""


def test_stray_vision_placeholders_are_removed():
    assert compose_text(None, "<|image_pad|> a cat <|video_pad|>") == "a cat"


def test_gen_prompt_is_the_official_single_line():
    assert "\n" not in GEN_PROMPT and "  " not in GEN_PROMPT
    assert GEN_PROMPT.startswith("Represent the above input text, images, videos")
    assert GEN_PROMPT.endswith("use the <gen_emb> tag to represent the entire input.")


def test_rendered_prompt_matches_the_official_layout(module):
    item = Item(index=0, text="two shapes", images=(solid((255, 0, 0)), solid((0, 0, 255))), video=None)
    rendered = module.processor.apply_chat_template(
        build_message(item, "Represent the given image:"), tokenize=False, add_generation_prompt=True
    )
    vision = "<|vision_start|><|image_pad|><|vision_end|>"
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{vision}{vision}Represent the given image: two shapes\n<disc_emb>\n{GEN_PROMPT}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_video_comes_after_images_and_before_text(module):
    frames = (solid((1, 2, 3)),) * 2
    item = Item(index=0, text="clip", images=(solid((9, 9, 9)),), video=frames)
    rendered = module.processor.apply_chat_template(
        build_message(item, None), tokenize=False, add_generation_prompt=True
    )
    assert "<|vision_end|><|vision_start|><|video_pad|><|vision_end|>clip\n<disc_emb>" in rendered


def test_discriminative_prompt_stops_right_after_disc_token():
    rendered = f"user\nx\n<disc_emb>\n{GEN_PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    assert cut_after_disc_token(rendered) == "user\nx\n<disc_emb>"
