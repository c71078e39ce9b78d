from __future__ import annotations

import numpy as np

from tests.conftest import gradient
from ume_plugins.engine.batching import length_groups, sub_batch


def test_length_groups_keep_padding_within_bounds_and_cover_every_row():
    lengths = [130, 50, 52, 128, 60, 118, 55, 49]
    groups = length_groups(lengths, max_padding=0.25)
    assert sorted(row for group in groups for row in group) == list(range(len(lengths)))
    for group in groups:
        width = max(lengths[row] for row in group)
        assert width * len(group) <= 1.25 * sum(lengths[row] for row in group)
    assert len(groups) == 2  # the long texts, then the short prompts


def test_similar_lengths_stay_one_group():
    assert length_groups([100, 98, 97, 99]) == [[0, 3, 1, 2]]


def test_a_sub_batch_drops_the_padding_its_rows_do_not_need(module):
    inputs = ["a much longer text " * 20, gradient((56, 56), seed=1), "short"]
    features = module.preprocess(inputs, mode="discriminative")
    rows = sub_batch(features, [1, 2])
    assert rows["input_ids"].shape[1] == int(features["attention_mask"][1:].sum(dim=1).max())
    assert rows["attention_mask"][:, -1].all() and rows["images_per_row"].tolist() == [1, 1]
    assert rows["pixel_values"].shape[0] == features["image_grid_thw"][1:].prod(dim=1).sum()


def test_a_mixed_discriminative_batch_runs_in_length_groups_with_unchanged_vectors(model, module):
    inputs = ["a much longer text about a fox " * 12, gradient((56, 56), seed=1), "short", "tiny"]
    calls = []
    handle = module.model.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        batched = model.encode(inputs, mode="discriminative", batch_size=len(inputs))
    finally:
        handle.remove()
    assert len(calls) == 2
    single = np.stack([model.encode(item, mode="discriminative") for item in inputs])
    assert np.sum(batched * single, axis=1).min() >= 0.9999
