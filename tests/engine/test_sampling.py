from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

SAMPLING = {"temperature": 1.5, "max_new_tokens": 8}


def sample(model, inputs, **kwargs):
    kwargs.setdefault("generation_kwargs", SAMPLING)
    return model.encode(inputs, output_value=None, **kwargs)


def test_k_rollouts_come_back_as_k_unit_vectors_per_input(model):
    vectors = model.encode(["a cat", "a dog"], num_samples=3, seed=0, generation_kwargs=SAMPLING)
    assert vectors.shape == (2, 64)
    samples = model.encode(
        ["a cat", "a dog"], num_samples=3, seed=0, generation_kwargs=SAMPLING, output_value="sample_embeddings"
    )
    assert [tuple(row.shape) for row in samples] == [(3, 64), (3, 64)]
    np.testing.assert_allclose(torch.stack(samples).norm(dim=-1).numpy(), 1.0, atol=1e-5)
    rows = sample(model, ["a cat"], num_samples=3, seed=0)
    assert rows[0]["generated_ids"].shape[0] == 3 and rows[0]["gen_emb_forced"].shape == (3,)


def test_the_vector_of_k_rollouts_is_their_normalised_mean(model):
    row = sample(model, ["a cat"], num_samples=4, seed=1)[0]
    samples = row["sample_embeddings"]
    expected = torch.nn.functional.normalize(samples.mean(dim=0), dim=-1)
    assert torch.allclose(row["sentence_embedding"], expected, atol=1e-6)
    assert row["sentence_embedding"].norm().item() == pytest.approx(1.0, abs=1e-5)


def test_sampled_rollouts_differ_from_each_other(model, module):
    row = sample(model, ["a cat"], num_samples=4, seed=2)[0]
    texts = {module.decode_reasoning(ids) for ids in row["generated_ids"]}
    assert len(texts) > 1


def test_a_seed_reproduces_every_rollout(model):
    first = sample(model, ["a cat", "a red fox"], num_samples=3, seed=3)
    again = sample(model, ["a cat", "a red fox"], num_samples=3, seed=3)
    other = sample(model, ["a cat", "a red fox"], num_samples=3, seed=4)
    for a, b, c in zip(first, again, other, strict=True):
        assert torch.equal(a["generated_ids"], b["generated_ids"])
        assert torch.equal(a["sample_embeddings"], b["sample_embeddings"])
        assert not torch.equal(a["generated_ids"], c["generated_ids"])


def test_a_seeded_rollout_does_not_depend_on_its_batch_mates(model):
    alone = sample(model, ["a cat"], num_samples=2, seed=5)[0]
    batched = sample(model, ["a much longer text about foxes", "a cat", "x"], num_samples=2, seed=5, batch_size=3)[1]
    assert torch.equal(alone["generated_ids"], batched["generated_ids"])
    cosine = torch.nn.functional.cosine_similarity(alone["sample_embeddings"], batched["sample_embeddings"], dim=-1)
    assert cosine.min().item() >= 0.9999


def test_torch_manual_seed_reproduces_calls_without_a_seed(model):
    torch.manual_seed(0)
    first = sample(model, ["a cat"], num_samples=2)[0]
    torch.manual_seed(0)
    again = sample(model, ["a cat"], num_samples=2)[0]
    assert torch.equal(first["generated_ids"], again["generated_ids"])


def test_several_greedy_rollouts_are_refused(model):
    with pytest.raises(ValueError, match="num_samples > 1 needs sampling"):
        model.encode(["a cat"], num_samples=2, generation_kwargs={"do_sample": False})


def test_k_rollouts_refuse_top_k_one_and_name_the_checkpoints_other_sampling_fields(model, module, monkeypatch):
    # The published checkpoints carry Qwen2-VL-Instruct's near-greedy sampling; as for generate, its
    # fields apply unless overridden, and with top_k=1 all k rollouts would be one rollout k times.
    config = copy.deepcopy(module.model.generation_config)
    config.update(do_sample=True, temperature=0.1, top_p=0.001, top_k=1, repetition_penalty=1.05)
    monkeypatch.setattr(module.model, "generation_config", config)
    expected = r"top_k=1 \(from the checkpoint's generation config\).* also sets top_p=0.001 \(override"
    with pytest.raises(ValueError, match=expected):
        model.encode(["a cat"], num_samples=2, generation_kwargs={"temperature": 0.7, "max_new_tokens": 8})
    with pytest.raises(ValueError, match=r"top_k=1 \(from generation_kwargs\)"):
        model.encode(["a cat"], num_samples=2, generation_kwargs={**SAMPLING, "top_p": 1.0, "top_k": 1})
    overridden = {**SAMPLING, "top_p": 1.0, "top_k": 0}
    rows = sample(model, ["a cat"], num_samples=4, seed=2, generation_kwargs=overridden)
    assert len({tuple(ids.tolist()) for ids in rows[0]["generated_ids"]}) > 1


def test_num_samples_needs_generative_mode(model):
    with pytest.raises(ValueError, match="num_samples needs generative mode"):
        model.encode(["a cat"], mode="discriminative", num_samples=2)


def test_k_rollouts_share_one_prefill(model, module):
    prefills = []
    handle = module.model.model.register_forward_hook(lambda *args: prefills.append(1))
    try:
        model.encode(["a cat", "a dog"], batch_size=2, num_samples=4, seed=0, generation_kwargs=SAMPLING)
    finally:
        handle.remove()
    assert prefills == [1]
