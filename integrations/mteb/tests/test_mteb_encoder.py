"""The mteb encoder: a generative mock run, batch reading, instructions, model metadata."""

from __future__ import annotations

import mteb
import numpy as np
import pytest
import ume_mteb
from datasets import Dataset
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.mocks import ALL_MOCK_TASK_TEST_GRID
from mteb.results.task_result import TaskError, TaskResult
from mteb.types import PromptType
from PIL import Image
from ume_mteb.model_meta import REGISTRY_NAMES, UME_R1_2B_META, UME_R1_7B_META

import ume_plugins

MODALITY_OF = {task.metadata.name: set(task.metadata.modalities) for task in ALL_MOCK_TASK_TEST_GRID}


def assert_mock_run_green(results: mteb.MockRunResults) -> None:
    failures = {name: status.exception for name, status in results.items() if isinstance(status, TaskError)}
    assert not failures, failures
    passed = {name for name, status in results.items() if isinstance(status, TaskResult)}
    for modality in ("text", "image", "video"):
        assert any(modality in MODALITY_OF[name] for name in passed), f"no {modality} mock task ran"
    compatible = [name for name, modalities in MODALITY_OF.items() if modalities <= {"text", "image", "video"}]
    assert set(compatible) == passed  # every compatible task ran, video ones included (PyAV, no torchcodec)


# The discriminative mock run goes through the ume-mteb command: tests/test_mteb_cli.py.
def test_mock_run_generative(gen_encoder):
    assert_mock_run_green(mteb.mock_run(gen_encoder))


def metadata(prompt=None) -> TaskMetadata:
    return TaskMetadata(
        name="UMEEncoderCheck",
        description="rows of every shape",
        dataset={"path": "NA", "revision": "NA"},
        type="Any2AnyRetrieval",
        modalities=["image", "text"],
        eval_langs=["eng-Latn"],
        main_score="ndcg_at_10",
        prompt=prompt,
    )


def loader(columns: dict):
    from mteb._create_dataloaders import create_dataloader

    return create_dataloader(Dataset.from_dict(columns), task_metadata=metadata(), batch_size=2)


def test_rows_fuse_text_and_images_and_keep_order(disc_encoder):
    red, blue = Image.new("RGB", (56, 56), "red"), Image.new("RGB", (84, 56), "blue")
    columns = {
        "id": ["fused", "several", "text"],
        "text": ["a red square", "two shapes", "only words"],
        "image": [[red], [red, blue], []],
    }
    vectors = disc_encoder.encode(
        loader(columns), task_metadata=metadata(), hf_split="test", hf_subset="default", prompt_type=PromptType.document
    )
    expected = disc_encoder.model.encode(
        [{"text": "a red square", "image": [red]}, {"text": "two shapes", "image": [red, blue]}, {"text": "only words"}]
    )
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_query_instruction_from_task_and_none_for_documents(disc_encoder):
    task = metadata(prompt={"query": "Find an image that matches the given text:"})
    columns = {"id": ["q"], "text": ["a red square"]}
    kwargs = {"task_metadata": task, "hf_split": "test", "hf_subset": "default"}
    query = disc_encoder.encode(loader(columns), prompt_type=PromptType.query, **kwargs)
    document = disc_encoder.encode(loader(columns), prompt_type=PromptType.document, **kwargs)
    instructed = disc_encoder.model.encode(["a red square"], prompt="Find an image that matches the given text:")
    np.testing.assert_allclose(query, instructed, atol=1e-5)
    np.testing.assert_allclose(document, disc_encoder.model.encode(["a red square"]), atol=1e-5)
    both_sides = metadata(prompt={"query": "Q:", "document": "Understand the content of the provided video."})
    assert disc_encoder.instruction(both_sides, PromptType.document) == "Understand the content of the provided video."


def test_modes_are_separate_experiments(disc_encoder, gen_encoder):
    assert disc_encoder.mteb_model_meta.experiment_kwargs == {"mode": "discriminative"}
    assert gen_encoder.mteb_model_meta.experiment_kwargs == {"max_new_tokens": 1}
    assert disc_encoder.mteb_model_meta.name == f"ume-plugins/{ume_plugins.tiny_checkpoint_path().name}"
    assert disc_encoder.mteb_model_meta.embed_dim == disc_encoder.model.get_embedding_dimension()
    with pytest.raises(ValueError, match="mode must be one of"):
        ume_mteb.UMER1Encoder(disc_encoder.model, mode="both")


def test_metas_match_mteb_entries_and_pinned_checkpoints():
    for ours, checkpoint in ((UME_R1_2B_META, ume_plugins.UME_R1_2B), (UME_R1_7B_META, ume_plugins.UME_R1_7B)):
        upstream = mteb.get_model_meta(checkpoint.hub_id)
        assert (ours.name, ours.revision) == (checkpoint.hub_id, checkpoint.revision)
        assert (ours.embed_dim, ours.n_parameters) == (checkpoint.embed_dim, checkpoint.n_parameters)
        for field in ("training_datasets", "citation", "license", "release_date", "max_tokens", "memory_usage_mb"):
            assert getattr(ours, field) == getattr(upstream, field), field
        assert set(ours.modalities) == {"text", "image", "video"} and ours.use_instructions
    default, disc = UME_R1_2B_META, UME_R1_2B_META.model_copy(update={"experiment_kwargs": {"mode": "discriminative"}})
    cache = mteb.ResultCache("/nonexistent")
    assert cache.get_task_result_path("T", default).parent.name == UME_R1_2B_META.revision
    assert cache.get_task_result_path("T", disc).parent.parts[-2:] == ("experiments", "mode_discriminative")


def test_register_adds_ours_without_clobbering_mteb():
    from mteb.models.model_implementations import MODEL_REGISTRY
    from mteb.models.model_implementations.ume_r1 import UMER1Wrapper

    added = ume_mteb.register()
    assert set(REGISTRY_NAMES) <= set(added) | set(MODEL_REGISTRY)
    assert mteb.get_model_meta("ume-plugins/UME-R1-2B") is UME_R1_2B_META
    assert mteb.get_model_meta("zhibinlan/UME-R1-2B").loader is UMER1Wrapper
    assert ume_mteb.register() == list(REGISTRY_NAMES)  # idempotent
