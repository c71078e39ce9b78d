"""Our generative vectors against mteb's own ``UMER1Wrapper`` on the same checkpoint and inputs.

Both are run on the tiny checkpoint in bf16 (mteb's wrapper always loads bf16; ours is given
``model_kwargs={"dtype": torch.bfloat16}``), with the same batches, and with the same scripted
greedy decoding (a logits processor writes ``... <gen_emb><|im_end|>``), because a random model
never writes ``<gen_emb>`` by itself and there the two intentionally differ: mteb falls back to the
last step, we append ``<gen_emb>`` and flag the row (spec: upstream "silently falls back to the last
token"; nothing here may fall back silently). Inputs are where both follow the spec: no instruction
(mteb ignores instructions), images whose sides are multiples of 28 within both pixel bounds (so
neither resizes), and no video (mteb samples frames with rounding and resizes each frame to
128-768 patches, the spec reads every frame under the image rules).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import ume_mteb
from datasets import Dataset
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.types import PromptType
from PIL import Image
from transformers import LogitsProcessor

SCRIPT = ("<|box_start|>", "<|box_end|>", "<|quad_start|>", "<gen_emb>", "<|im_end|>")


class Scripted(LogitsProcessor):
    """Greedy decoding that writes SCRIPT: the next token continues the script already written."""

    def __init__(self, tokenizer):
        self.ids = tokenizer.convert_tokens_to_ids(list(SCRIPT))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        forced = torch.full_like(scores, float("-inf"))
        for row, ids in enumerate(input_ids.tolist()):
            written = next((k for k in range(len(self.ids), 0, -1) if ids[-k:] == self.ids[:k]), 0)
            forced[row, self.ids[min(written, len(self.ids) - 1)]] = 0.0
        return forced


@pytest.fixture(scope="module")
def pair(tiny_path):
    from mteb.models.model_implementations.ume_r1 import UMER1Wrapper

    theirs = UMER1Wrapper(str(tiny_path), device="cpu")
    ours = ume_mteb.load_model(str(tiny_path), mode="generative", device="cpu", model_kwargs={"dtype": torch.bfloat16})
    script = Scripted(ours.model[0].tokenizer)
    theirs.model.generate = functools.partial(theirs.model.generate, logits_processor=[script])
    ours.generation_kwargs = {"logits_processor": [script]}
    return ours, theirs


def image(seed: int, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


TASK = TaskMetadata(
    name="UMEWrapperComparison",
    description="same inputs through both wrappers",
    dataset={"path": "NA", "revision": "NA"},
    type="Any2AnyRetrieval",
    modalities=["image", "text"],
    eval_langs=["eng-Latn"],
    main_score="ndcg_at_10",
)
BATCHES = {
    "text": {"text": ["a cat sleeping on a red sofa", "the quick brown fox", "dog", "two words here"]},
    "image": {"image": [image(0, (56, 56)), image(1, (112, 84)), image(2, (84, 140))]},
    "text+image": {
        "text": ["a red square", "what is in the image?"],
        "image": [image(3, (56, 56)), image(4, (84, 56))],
    },
    "several images": {"image": [[image(5, (56, 56)), image(6, (56, 84))], [image(7, (84, 84)), image(8, (56, 56))]]},
}


@pytest.mark.parametrize("kind", list(BATCHES))
def test_generative_vectors_agree_with_mteb_wrapper(pair, kind):
    from mteb._create_dataloaders import create_dataloader

    ours, theirs = pair
    columns = {"id": [str(i) for i in range(len(next(iter(BATCHES[kind].values()))))], **BATCHES[kind]}
    kwargs = {"task_metadata": TASK, "hf_split": "test", "hf_subset": "default", "prompt_type": PromptType.document}
    vectors = {}
    for name, encoder in (("ours", ours), ("mteb", theirs)):
        loader = create_dataloader(Dataset.from_dict(columns), task_metadata=TASK, batch_size=2)
        vectors[name] = np.asarray(encoder.encode(loader, show_progress_bar=False, **kwargs), dtype=np.float32)
    cosine = (vectors["ours"] * vectors["mteb"]).sum(axis=1)
    assert cosine.min() > 0.9999, cosine


def test_script_makes_the_model_write_gen_emb(pair):
    import ume_plugins

    ours, _ = pair
    rows = ume_plugins.encode_with_reasoning(ours.model, ["dog"], generation_kwargs=ours.generation_kwargs)
    assert rows.forced == [False]
