r"""Prompt building, and the task instructions UME-R1 was evaluated with.

Layout of one input (official eval collator), rendered by the checkpoint's Qwen2-VL chat template::

    <|im_start|>system\nYou are a helpful assistant.<|im_end|>\n
    <|im_start|>user\n{visual content}{TEXT}\n<disc_emb>\n{GEN_PROMPT}<|im_end|>\n
    <|im_start|>assistant\n

``TEXT`` is the task instruction (sentence-transformers' ``prompt``) and the input's text joined by
one space. :data:`MMEB_V2_INSTRUCTIONS` is the one table of MMEB-V2 instructions; the named
prompts of every loaded model (:data:`NAMED_PROMPTS`, ``encode(..., prompt_name=...)``) and the
mteb integration's MMEB-V2 tasks read it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from ume_plugins.decoding import Item

SYSTEM_PROMPT = "You are a helpful assistant."
GEN_PROMPT = (
    "Represent the above input text, images, videos, or any combination of the three as embeddings. "
    "First output the thinking process in <think> </think> tags and then summarize the entire input "
    "in a word or sentence. Finally, use the <gen_emb> tag to represent the entire input."
)
GEN_EMB_TOKEN = "<gen_emb>"
DISC_EMB_TOKEN = "<disc_emb>"
_STRAY_PLACEHOLDERS = ("<|image_pad|>", "<|video_pad|>")


def compose_text(instruction: str | None, text: str | None) -> str:
    r"""The ``TEXT`` slot: instruction and input text joined by one space, placeholders removed.

    Args:
        instruction: Task instruction, or None / "" for none.
        text: The input's own text, or None.

    Returns:
        The stripped text that precedes ``\n<disc_emb>``.
    """
    combined = " ".join(part for part in (instruction, text) if part)
    for placeholder in _STRAY_PLACEHOLDERS:
        combined = combined.replace(placeholder, "")
    return combined.strip()


def build_message(item: Item, instruction: str | None) -> list[dict[str, Any]]:
    """One user turn: visual content first (images in order, then the video), then the text.

    The images and frames themselves are handed to the processor separately; the message only
    carries their placeholders, so the chat template renders the vision spans.

    Args:
        item: The validated input (its blank image for text-only inputs already added).
        instruction: Task instruction for the ``TEXT`` slot.

    Returns:
        A one-message conversation for ``apply_chat_template``.
    """
    content: list[dict[str, Any]] = [{"type": "image"} for _ in item.images]
    if item.video is not None:
        content.append({"type": "video"})
    text = compose_text(instruction, item.text)
    content.append({"type": "text", "text": f"{text}\n{DISC_EMB_TOKEN}\n{GEN_PROMPT}"})
    return [{"role": "user", "content": content}]


def cut_after_disc_token(rendered: str) -> str:
    """Drop everything after the last ``<disc_emb>``.

    Causal attention makes the ``<disc_emb>`` state independent of what follows it, so the
    discriminative pass can skip the generation prompt.
    """
    return rendered[: rendered.rindex(DISC_EMB_TOKEN) + len(DISC_EMB_TOKEN)]


class TaskInstructions(NamedTuple):
    """The instructions of one MMEB-V2 task: "" means none; None, one carried by each sample."""

    query: str | None
    document: str | None


_VIDEO = "Understand the content of the provided video."
_VISDOC_QUERY = "Find a document image that matches the given query:"
_VISDOC = "Understand the content of the provided document image."
_NO_INSTRUCTION = TaskInstructions("", "")

# Query/document instructions of the MMEB-V2 tasks (UME-R1's evaluation, following VLM2Vec): the
# video and visual-document tasks, and one image task of each family (classification, VQA,
# retrieval both ways, grounding); the other image tasks carry theirs per sample.
MMEB_V2_INSTRUCTIONS: dict[str, TaskInstructions] = {
    "ImageNet-1K": TaskInstructions("Represent the given image for classification", ""),
    "DocVQA": TaskInstructions("Represent the given image with the following question:", ""),
    "MSCOCO_t2i": TaskInstructions(
        "Find me an everyday image that matches the given caption:", "Represent the given image."
    ),
    "MSCOCO_i2t": TaskInstructions("Find an image caption describing the given everyday image.", ""),
    "MSCOCO": TaskInstructions(
        "Select the portion of the image that isolates the object of the given label:",
        "Represent the given cropped image of the object.",
    ),
    "K700": TaskInstructions("Recognize the category of the video content.", None),
    "MSR-VTT": TaskInstructions("Find a video that contains the following visual content:", _VIDEO),
    "MSVD": TaskInstructions("Find the video snippet that corresponds to the given summary:", _VIDEO),
    "DiDeMo": TaskInstructions("Find a video that includes the following described scenes:", _VIDEO),
    "YouCook2": TaskInstructions("Find a video that demonstrates the following action while making a recipe:", _VIDEO),
    "VATEX": TaskInstructions("Select a video that fits the description provided:", _VIDEO),
    **{
        f"VisRAG_{name}": TaskInstructions(_VISDOC_QUERY, _VISDOC)
        for name in ("ArxivQA", "ChartQA", "MP-DocVQA", "SlideVQA", "InfoVQA", "PlotQA")
    },
    **{
        f"ViDoRe_{name}": _NO_INSTRUCTION
        for name in (
            "arxivqa",
            "docvqa",
            "infovqa",
            "tabfquad",
            "tatdqa",
            "shiftproject",
            "syntheticDocQA_artificial_intelligence",
            "syntheticDocQA_energy",
            "syntheticDocQA_government_reports",
            "syntheticDocQA_healthcare_industry",
            "esg_reports_human_labeled_v2",
            "biomedical_lectures_v2",
            "biomedical_lectures_v2_multilingual",
            "economics_reports_v2",
            "economics_reports_v2_multilingual",
            "esg_reports_v2",
            "esg_reports_v2_multilingual",
        )
    },
    **{name: _NO_INSTRUCTION for name in ("ViDoSeek-page", "ViDoSeek-doc", "MMLongBench-doc", "MMLongBench-page")},
}

# Named prompts: each names the instruction of one MMEB-V2 task of its family. Retrieval families
# have a query and a document side, e.g. encode_query(..., prompt_name="video_retrieval_query")
# with encode_document(..., prompt_name="video_retrieval_document"); the others a query side only.
_RETRIEVAL_FAMILIES = {
    "image_retrieval": "MSCOCO_t2i",
    "image_grounding": "MSCOCO",
    "video_retrieval": "MSR-VTT",
    "visdoc_retrieval": "VisRAG_ArxivQA",
}
_QUERY_PROMPTS = {
    "image_classification": "ImageNet-1K",
    "image_vqa": "DocVQA",
    "image_caption_query": "MSCOCO_i2t",
    "video_classification": "K700",
}
NAMED_PROMPTS: dict[str, str] = {
    **{name: MMEB_V2_INSTRUCTIONS[task].query for name, task in _QUERY_PROMPTS.items()},
    **{f"{family}_query": MMEB_V2_INSTRUCTIONS[task].query for family, task in _RETRIEVAL_FAMILIES.items()},
    **{f"{family}_document": MMEB_V2_INSTRUCTIONS[task].document for family, task in _RETRIEVAL_FAMILIES.items()},
}
