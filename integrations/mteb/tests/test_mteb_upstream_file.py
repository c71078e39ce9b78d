"""The diff-ready mteb model file (upstream/ume_r1.py) gives the vectors ume-mteb gives."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import mteb
import numpy as np
import pytest
import torch
import ume_mteb
from datasets import Dataset
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.types import PromptType
from PIL import Image
from transformers import LogitsProcessor
from ume_mteb.model_meta import UME_R1_2B_META

UPSTREAM_FILE = Path(__file__).parents[1] / "upstream" / "ume_r1.py"
SCRIPT = ("<|box_start|>", "<|quad_start|>", "<gen_emb>", "<|im_end|>")


@pytest.fixture(scope="module")
def upstream():
    spec = importlib.util.spec_from_file_location("upstream_ume_r1", UPSTREAM_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Scripted(LogitsProcessor):
    def __init__(self, tokenizer):
        self.ids = tokenizer.convert_tokens_to_ids(list(SCRIPT))

    def __call__(self, input_ids, scores):
        forced = torch.full_like(scores, float("-inf"))
        for row, ids in enumerate(input_ids.tolist()):
            written = next((k for k in range(len(self.ids), 0, -1) if ids[-k:] == self.ids[:k]), 0)
            forced[row, self.ids[min(written, len(self.ids) - 1)]] = 0.0
        return forced


def image(seed: int, size: tuple[int, int]) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def task(**prompt) -> TaskMetadata:
    return TaskMetadata(
        name="UMEUpstreamFileCheck",
        description="same inputs through both",
        dataset={"path": "NA", "revision": "NA"},
        type="Any2AnyRetrieval",
        modalities=["image", "text", "video"],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10",
        prompt=prompt or None,
    )


BATCHES = {
    "text": {"text": ["a cat sleeping on a red sofa", "dog"]},
    "image": {"image": [image(0, (100, 70)), image(1, (30, 30))]},  # resized by both
    "text+images": {
        "text": ["two views", "one"],
        "image": [[image(2, (56, 84)), image(3, (64, 64))], [image(4, (90, 60))]],
    },
    "video frames": {
        "video": [[image(5 + i, (64, 48)) for i in range(11)], [image(20 + i, (64, 48)) for i in range(3)]]
    },
}


@pytest.mark.parametrize("mode", ["discriminative", "generative"])
@pytest.mark.parametrize("kind", list(BATCHES))
def test_upstream_file_matches_ume_mteb(upstream, tiny_path, mode, kind):
    from mteb._create_dataloaders import create_dataloader

    ours = ume_mteb.load_model(str(tiny_path), mode=mode, device="cpu")
    theirs = upstream.UMER1Wrapper(str(tiny_path), device="cpu", mode=mode, dtype=torch.float32, max_new_tokens=32)
    if mode == "generative":
        script = Scripted(ours.model[0].tokenizer)
        ours.generation_kwargs = {"logits_processor": [script]}
        generate = theirs.model.generate
        theirs.model.generate = lambda **kwargs: generate(**kwargs, logits_processor=[script])
    metadata = task(query="Find the matching item:")
    columns = {"id": [str(i) for i in range(2)], **BATCHES[kind]}
    kwargs = {"task_metadata": metadata, "hf_split": "test", "hf_subset": "default", "prompt_type": PromptType.query}
    vectors = [
        np.asarray(
            encoder.encode(
                create_dataloader(Dataset.from_dict(columns), task_metadata=metadata, batch_size=2), **kwargs
            )
        )
        for encoder in (ours, theirs)
    ]
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-4)


@pytest.mark.parametrize("size", [(2131, 1421), (1600, 1600), (3000, 2)], ids=["two-resizes", "square", "too-thin"])
def test_upstream_file_resizes_large_images_as_the_official_eval(upstream, tiny_path, size):
    # The eval resizes twice (qwen-vl-utils within 12,845,056 pixels, then the processor within
    # 1536 * 1536): sides are rounded to multiples of 28 before the cap, so one resize to the cap
    # lands elsewhere for some sizes (2131x1421: 1876x1232 in one step, 1848x1232 in two).
    ours = ume_mteb.load_model(str(tiny_path), mode="discriminative", device="cpu").model[0]
    theirs = upstream.UMER1Wrapper(str(tiny_path), device="cpu", mode="discriminative", dtype=torch.float32)
    picture = image(30, size)
    if max(size) / min(size) > 200:
        with pytest.raises(ValueError, match="aspect ratio"):
            theirs._model_inputs({"image": [picture]}, "")
        return
    for key, value in (("image", picture), ("video", [picture, image(31, size)])):
        expected = ours.preprocess([{key: value}], mode="discriminative")
        actual = theirs._model_inputs({key: [value]}, "")
        prefix = "pixel_values_videos" if key == "video" else "pixel_values"
        grid = "video_grid_thw" if key == "video" else "image_grid_thw"
        assert torch.equal(actual[grid], expected[grid]), key
        torch.testing.assert_close(actual[prefix], expected[prefix], rtol=0, atol=1e-6)


def test_upstream_metas_match_ours_and_replace_mtebs(upstream):
    for upstream_meta in (upstream.ume_r1_2b, upstream.ume_r1_7b):
        ours = UME_R1_2B_META if upstream_meta.name.endswith("2B") else ume_mteb.UME_R1_7B_META
        mtebs = mteb.get_model_meta(upstream_meta.name)
        for field in ("name", "revision", "embed_dim", "n_parameters", "training_datasets", "citation", "modalities"):
            assert getattr(upstream_meta, field) == getattr(ours, field) == getattr(mtebs, field), field
        assert upstream_meta.use_instructions and upstream_meta.loader is upstream.UMER1Wrapper


def torchcodec_or_skip() -> None:
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception as error:  # missing, or present without FFmpeg libraries
        pytest.skip(f"mteb's video extra (torchcodec) is not usable here: {type(error).__name__}")


@pytest.mark.parametrize("mode", ["discriminative", "generative"])
def test_upstream_file_matches_ume_mteb_on_mteb_video_tasks(upstream, tiny_path, mode):
    """mteb decodes videos with torchcodec for the model file; ume-mteb hands the file to the core (PyAV)."""
    torchcodec_or_skip()
    from mteb._create_dataloaders import create_dataloader
    from mteb.mocks import MockVideoRetrievalT2V

    task = MockVideoRetrievalT2V()
    task.load_data()
    corpus = task.dataset["default"]["test"]["corpus"]
    ours = ume_mteb.load_model(str(tiny_path), mode=mode, device="cpu", generation_kwargs={"max_new_tokens": 2})
    theirs = upstream.UMER1Wrapper(str(tiny_path), device="cpu", mode=mode, dtype=torch.float32, max_new_tokens=2)
    kwargs = {"task_metadata": task.metadata, "hf_split": "test", "hf_subset": "default"}
    vectors = [
        np.asarray(
            encoder.encode(
                create_dataloader(corpus, task_metadata=task.metadata, prompt_type=PromptType.document, batch_size=2),
                prompt_type=PromptType.document,
                **kwargs,
            )
        )
        for encoder in (ours, theirs)
    ]
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-4)
