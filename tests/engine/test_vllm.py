from __future__ import annotations

import re
import sys
import types

import pytest
import torch

import ume_plugins
from tests.conftest import REASONING, ScriptedDecoding, gradient, solid
from ume_plugins.engine import vllm as vllm_backend

INPUTS = [
    "a red fox jumps over the fence",
    gradient((84, 56), seed=1),
    {"text": "compare", "image": [solid((200, 0, 0), (56, 56)), gradient((70, 70), seed=3)]},
    {"video": [solid((40 * i, 50, 60), (56, 56)) for i in range(4)]},
]


def hf_rows(model, module, script: str, **kwargs):
    scripted = ScriptedDecoding(module.tokenizer, script)
    return model.encode(
        INPUTS, batch_size=len(INPUTS), output_value=None, generation_kwargs={"logits_processor": [scripted]}, **kwargs
    )


def reasoning_of(module, script: str) -> list[int]:
    return module.tokenizer(script, add_special_tokens=False)["input_ids"]


def phase_two(module, reasoning: list[int], forced: bool, mode: str = "generative"):
    features = module.preprocess(INPUTS, mode=mode)
    inputs = {key: value for key, value in features.items() if not key.startswith("ume_")}
    with torch.inference_mode():
        return vllm_backend.embed_reasoning(
            module.model,
            inputs,
            [reasoning] * len(INPUTS),
            [forced] * len(INPUTS),
            gen_emb_id=module.gen_emb_id,
            disc_emb_id=module.disc_emb_id if mode == "both" else None,
            num_samples=1,
            pad_token_id=module.tokenizer.pad_token_id,
        )


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def test_phase_two_equals_the_hf_backend_for_the_same_reasoning(model, module):
    hf = hf_rows(model, module, REASONING, mode="both")
    result = phase_two(module, reasoning_of(module, REASONING), forced=False, mode="both")
    gen = torch.nn.functional.normalize(result.states[:, 0], dim=-1)
    assert cosines(gen, torch.stack([row["sentence_embedding"] for row in hf])).min() >= 0.9999
    disc = torch.nn.functional.normalize(result.disc_states, dim=-1)
    assert cosines(disc, torch.stack([row["disc_embedding"] for row in hf])).min() >= 0.9999
    assert torch.equal(result.generated_ids[:, 0], torch.stack([row["generated_ids"] for row in hf]))


def test_phase_two_appends_a_missing_gen_emb_as_the_hf_backend_does(model, module):
    truncated = "<think> one two three"
    hf = hf_rows(model, module, truncated)  # ends with EOS: <gen_emb> is forced
    assert all(bool(row["gen_emb_forced"]) for row in hf)
    result = phase_two(module, reasoning_of(module, truncated), forced=True)
    gen = torch.nn.functional.normalize(result.states[:, 0], dim=-1)
    assert cosines(gen, torch.stack([row["sentence_embedding"] for row in hf])).min() >= 0.9999
    assert result.forced.all()


@pytest.mark.parametrize(
    ("token_ids", "stop_reason", "expected"),
    [
        ([5, 6, 99, 7], None, ([5, 6, 99], False)),  # <gen_emb> kept in the output
        ([5, 6], 99, ([5, 6, 99], False)),  # stopped on <gen_emb>, not kept
        ([5, 6, 1, 8], 1, ([5, 6], True)),  # EOS without <gen_emb>
        ([5, 6, 7], None, ([5, 6, 7], True)),  # token budget
    ],
)
def test_vllm_completions_become_reasoning_ids(token_ids, stop_reason, expected):
    assert vllm_backend.reasoning_ids(token_ids, stop_reason, gen_emb_id=99, eos_ids={1}) == expected


def test_a_missing_vllm_says_what_to_install(monkeypatch):
    monkeypatch.setattr(vllm_backend, "is_vllm_available", lambda: False)
    with pytest.raises(ImportError, match=r'pip install "ume-plugins\[vllm\]"'):
        vllm_backend.import_vllm()


class FakeLLM:
    """Stands in for ``vllm.LLM``: writes a fixed reasoning for every requested rollout."""

    def __init__(self, reasoning: list[int], **kwargs):
        self.reasoning, self.kwargs, self.requests = reasoning, kwargs, []

    def generate(self, requests, params, use_tqdm=False):
        self.requests.extend(requests)
        completion = types.SimpleNamespace(token_ids=self.reasoning, stop_reason=None)
        return [types.SimpleNamespace(outputs=[completion] * params.n) for _ in requests]


@pytest.fixture
def fake_vllm(monkeypatch, module):
    engines = []

    def llm(**kwargs):
        engines.append(FakeLLM(reasoning_of(module, REASONING), **kwargs))
        return engines[-1]

    fake = types.SimpleNamespace(LLM=llm, SamplingParams=lambda **kwargs: types.SimpleNamespace(**kwargs))
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(vllm_backend, "is_vllm_available", lambda: True)
    return engines


def test_the_vllm_backend_runs_both_phases_through_encode(model, module, fake_vllm, tiny_path):
    accelerated = ume_plugins.load("ume-r1-tiny", device="cpu", backend="vllm")
    rows = accelerated.encode(INPUTS, batch_size=len(INPUTS), output_value=None, num_samples=2, seed=0)
    hf = hf_rows(model, module, REASONING)
    for row, expected in zip(rows, hf, strict=True):
        assert row["sample_embeddings"].shape == (2, 64)
        assert cosines(row["sample_embeddings"], expected["sentence_embedding"][None]).min() >= 0.9999
    (engine,) = fake_vllm
    assert engine.kwargs["model"] == str(tiny_path) or engine.kwargs["model"].endswith(tiny_path.name)
    # vLLM's processor resizes as ours does (within 1536² pixels), not with the checkpoint's bounds.
    settings = module.settings
    bounds = {"min_pixels": settings.processor_min_pixels, "max_pixels": settings.processor_max_pixels}
    assert engine.kwargs["mm_processor_kwargs"] == bounds == {"min_pixels": 784, "max_pixels": 1536 * 1536}
    image_pad = "<|image_pad|>"
    prompts = {request["prompt"]: request for request in engine.requests}
    fox = next(prompt for prompt in prompts if "a red fox" in prompt)
    assert fox.count(image_pad) == 1 and len(prompts[fox]["multi_modal_data"]["image"]) == 1  # the blank image
    pair = next(prompt for prompt in prompts if "compare" in prompt)
    assert pair.count(image_pad) == 2 and len(prompts[pair]["multi_modal_data"]["image"]) == 2
    video = next(request for request in engine.requests if "video" in request.get("multi_modal_data", {}))
    assert video["prompt"].count("<|video_pad|>") == 1 and video["multi_modal_data"]["video"].shape[0] == 4


def test_vllm_resizes_with_the_models_bounds_under_the_users_own_processor_kwargs(fake_vllm, tiny_path):
    user = {"mm_processor_kwargs": {"max_pixels": 512 * 512, "fps": 1}, "gpu_memory_utilization": 0.5}
    accelerated = ume_plugins.load("ume-r1-tiny", device="cpu", backend="vllm", vllm_kwargs=user)
    accelerated[0].processor_min_pixels = 56 * 56  # a setting changed after loading reaches vLLM
    accelerated.encode(["a cat"])
    (engine,) = fake_vllm
    assert engine.kwargs["mm_processor_kwargs"] == {"min_pixels": 56 * 56, "max_pixels": 512 * 512, "fps": 1}
    assert engine.kwargs["gpu_memory_utilization"] == 0.5


@pytest.mark.parametrize(
    ("kwargs", "refused"),
    [
        ({"no_repeat_ngram_size": 3}, "no_repeat_ngram_size=3"),
        ({"suppress_tokens": [5]}, "suppress_tokens=[5]"),
        ({"do_sample": True, "typical_p": 0.5}, "typical_p=0.5"),
    ],
)
def test_the_vllm_backend_refuses_generation_fields_it_cannot_honour(fake_vllm, kwargs, refused):
    accelerated = ume_plugins.load("ume-r1-tiny", device="cpu", backend="vllm")
    with pytest.raises(ValueError, match=rf"cannot honour generation config {re.escape(refused)}; use backend='hf'"):
        accelerated.encode(["a cat"], generation_kwargs=kwargs)
    assert not fake_vllm  # refused before vLLM starts


def test_min_new_tokens_becomes_vllms_min_tokens(module):
    fake = types.SimpleNamespace(SamplingParams=lambda **kwargs: types.SimpleNamespace(**kwargs))
    config = module.model.generation_config.__class__(min_new_tokens=5, max_new_tokens=9, eos_token_id=[1, 2])
    params = vllm_backend.sampling_params(fake, config, 1, None, gen_emb_id=7)
    assert (params.min_tokens, params.max_tokens, params.stop_token_ids) == (5, 9, [7, 1, 2])


def test_the_vllm_backend_refuses_hf_logits_processors(fake_vllm, tiny_path, module):
    accelerated = ume_plugins.load("ume-r1-tiny", device="cpu", backend="vllm")
    with pytest.raises(ValueError, match="backend='hf'"):
        accelerated.encode(
            ["a cat"], generation_kwargs={"logits_processor": [ScriptedDecoding(module.tokenizer, REASONING)]}
        )
