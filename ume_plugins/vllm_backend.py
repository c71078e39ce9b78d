"""Accelerated generative mode (``backend="vllm"``): the two-phase recipe of the UME-R1 maintainers.

1. vLLM writes the reasoning (continuous batching, paged KV cache, CUDA graphs), stopping at
   ``<gen_emb>``.
2. One forward pass of our model over prompt + reasoning + ``<gen_emb>`` reads the embedding
   (:func:`~ume_plugins.continuation.states_after`): the same state the HF engine captures while
   decoding, so for the same reasoning both backends give the same vector.

vLLM is an optional extra imported only here, and only when this backend runs:
``pip install "ume-plugins[vllm]"`` (it needs a CUDA GPU). Phase 1 gets the prompt exactly as our
processor tokenised it (image/video pad runs collapsed back to one placeholder each, which vLLM
expands itself) and the already-resized images and frames.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import GenerationConfig

from ume_plugins.continuation import states_after
from ume_plugins.generation import GenEmbMissingError, Rollout

if TYPE_CHECKING:
    from ume_plugins.decoding import Item
    from ume_plugins.module import UMER1Embedder

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "ume-plugins[vllm]"'
# Next to the HF model that runs phase 2, vLLM must not claim the default 90% of GPU memory; several
# images per input (document pages) need more than one image slot per prompt.
DEFAULT_VLLM_KWARGS: dict[str, Any] = {"gpu_memory_utilization": 0.7, "limit_mm_per_prompt": {"image": 4, "video": 1}}


@functools.cache
def is_vllm_available() -> bool:
    """True when the ``vllm`` package can be imported."""
    return importlib.util.find_spec("vllm") is not None


def import_vllm() -> Any:
    """The ``vllm`` module.

    Raises:
        ImportError: vLLM is not installed; says what to install.
    """
    if not is_vllm_available():
        raise ImportError(f"backend='vllm' needs vLLM, which is not installed: {INSTALL_HINT}")
    import vllm

    return vllm


def vllm_rollout(
    module: UMER1Embedder,
    features: dict[str, torch.Tensor],
    items: list[Item] | None,
    config: GenerationConfig,
    hooks: dict[str, Any],
    *,
    with_disc: bool,
    num_samples: int,
    seed: int | None,
) -> Rollout:
    """Both phases for one batch: vLLM writes k rollouts per input, our model reads their states.

    Raises:
        ImportError: vLLM is not installed.
        ValueError: HF ``logits_processor`` / ``stopping_criteria`` hooks, which vLLM cannot run.
        GenEmbMissingError: A rollout lacks ``<gen_emb>`` and ``on_missing_gen_emb="raise"``.
    """
    if hooks:
        raise ValueError(f"backend='vllm' cannot run transformers {sorted(hooks)}; use backend='hf'")
    if items is None:
        raise ValueError("backend='vllm' needs the decoded items: run preprocess with backend='vllm'")
    vllm = import_vllm()
    engine = _engine(module, vllm)
    if seed is None and config.do_sample:
        seed = int(torch.randint(2**62, (1,)).item())
    params = sampling_params(vllm, config, num_samples, seed, module.gen_emb_id)
    requests = phase_one_requests(module.tokenizer, features, items)
    outputs = engine.generate(requests, params, use_tqdm=False)
    eos = config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
    reasoning, forced = [], []
    for request in outputs:
        for completion in request.outputs:
            ids, was_forced = reasoning_ids(
                list(completion.token_ids), completion.stop_reason, module.gen_emb_id, eos_ids
            )
            reasoning.append(ids)
            forced.append(was_forced)
    return embed_reasoning(
        module.model,
        features,
        reasoning,
        forced,
        gen_emb_id=module.gen_emb_id,
        disc_emb_id=module.disc_emb_id if with_disc else None,
        num_samples=num_samples,
        pad_token_id=config.pad_token_id,
        on_missing=module.on_missing_gen_emb,
        max_new_tokens=config.max_new_tokens,
    )


def embed_reasoning(
    model: torch.nn.Module,
    features: dict[str, torch.Tensor],
    reasoning: list[list[int]],
    forced: list[bool],
    *,
    gen_emb_id: int,
    disc_emb_id: int | None,
    num_samples: int,
    pad_token_id: int,
    on_missing: str = "force",
    max_new_tokens: int | None = None,
) -> Rollout:
    """Phase 2: one forward pass over each prompt + reasoning (+ ``<gen_emb>`` where forced).

    Args:
        model: A ``Qwen2VLForConditionalGeneration``.
        features: The batch's prompt features (processor outputs with per-row image/video counts).
        reasoning: Per rollout (input-major: input i's k rollouts are rows i*k .. i*k+k-1), the
            generated ids, ending with ``<gen_emb>`` unless forced.
        forced: Per rollout, True where ``<gen_emb>`` must be appended.
        gen_emb_id: Id of ``<gen_emb>``.
        disc_emb_id: When given, also read the ``<disc_emb>`` states (``mode="both"``).
        num_samples: Rollouts per input (k).
        pad_token_id: Right padding of ``generated_ids``.
        on_missing: ``"raise"`` raises when a rollout is forced.
        max_new_tokens: The budget, for the error message.

    Returns:
        The same :class:`~ume_plugins.generation.Rollout` the HF engine returns.
    """
    if on_missing == "raise" and any(forced):
        inputs = sorted({row // num_samples for row, flag in enumerate(forced) if flag})
        raise GenEmbMissingError(
            f"batch rows {inputs} did not write <gen_emb> within {max_new_tokens} new tokens; "
            "raise max_new_tokens or use on_missing_gen_emb='force'"
        )
    batch = features["input_ids"].shape[0]
    continuations = [ids + [gen_emb_id] if flag else ids for ids, flag in zip(reasoning, forced, strict=True)]
    states, disc = [], None
    # One forward per sample index keeps the activations at one batch's worth.
    for sample in range(num_samples):
        rows = [row * num_samples + sample for row in range(batch)]
        sample_states, sample_disc = states_after(
            model, features, [continuations[row] for row in rows], disc_emb_id=disc_emb_id if sample == 0 else None
        )
        states.append(sample_states)
        disc = sample_disc if sample == 0 else disc
    width = max((len(ids) for ids in reasoning), default=0)
    generated_ids = torch.full((len(reasoning), width), pad_token_id, dtype=torch.long)
    for row, ids in enumerate(reasoning):
        generated_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return Rollout(
        states=torch.stack(states, dim=1),
        generated_ids=generated_ids.view(batch, num_samples, width),
        forced=torch.tensor(forced, dtype=torch.bool).view(batch, num_samples),
        disc_states=disc,
    )


def reasoning_ids(
    token_ids: list[int], stop_reason: int | str | None, gen_emb_id: int, eos_ids: set[int]
) -> tuple[list[int], bool]:
    """A vLLM completion's reasoning up to and including ``<gen_emb>``, and whether it must be forced.

    vLLM stops at ``<gen_emb>`` (a stop token id); depending on its version the stop token is or
    is not part of ``token_ids``, so ``stop_reason`` decides.
    """
    if gen_emb_id in token_ids:
        return token_ids[: token_ids.index(gen_emb_id) + 1], False
    if stop_reason == gen_emb_id:
        return [*token_ids, gen_emb_id], False
    end = next((i for i, token in enumerate(token_ids) if token in eos_ids), len(token_ids))
    return token_ids[:end], True


def phase_one_requests(tokenizer: Any, features: dict[str, torch.Tensor], items: list[Item]) -> list[dict[str, Any]]:
    """Phase-1 prompts: our tokenised prompts as text with one placeholder per image/video, plus the media."""
    pads = {tokenizer.convert_tokens_to_ids("<|image_pad|>"), tokenizer.convert_tokens_to_ids("<|video_pad|>")}
    requests = []
    for ids, mask, item in zip(features["input_ids"], features["attention_mask"], items, strict=True):
        tokens = ids[mask.bool()].tolist()
        collapsed = [token for i, token in enumerate(tokens) if token not in pads or i == 0 or token != tokens[i - 1]]
        request: dict[str, Any] = {"prompt": tokenizer.decode(collapsed, skip_special_tokens=False)}
        media: dict[str, Any] = {}
        if item.images:
            media["image"] = list(item.images)
        if item.video is not None:
            media["video"] = np.stack([np.asarray(frame.convert("RGB")) for frame in item.video])
        if media:
            request["multi_modal_data"] = media
        requests.append(request)
    return requests


def sampling_params(vllm: Any, config: GenerationConfig, num_samples: int, seed: int | None, gen_emb_id: int) -> Any:
    """The ``vllm.SamplingParams`` equivalent to the generation config (greedy unless it samples)."""
    eos = config.eos_token_id
    stop = [gen_emb_id, *(eos if isinstance(eos, list) else [eos] if eos is not None else [])]
    kwargs: dict[str, Any] = {
        "n": num_samples,
        "max_tokens": config.max_new_tokens,
        "stop_token_ids": stop,
        "repetition_penalty": config.repetition_penalty or 1.0,
        "seed": seed,
    }
    if config.do_sample:
        kwargs.update(
            temperature=config.temperature if config.temperature is not None else 1.0,
            top_p=config.top_p if config.top_p is not None else 1.0,
            top_k=config.top_k or -1,
            min_p=config.min_p or 0.0,
        )
    else:
        kwargs["temperature"] = 0.0
    return vllm.SamplingParams(**kwargs)


def _engine(module: UMER1Embedder, vllm: Any) -> Any:
    """The module's vLLM engine, created on first use with the checkpoint the module loaded."""
    engine = getattr(module, "_vllm_engine", None)
    if engine is None:
        kwargs = {
            "model": module.name_or_path,
            "revision": module.revision,
            "dtype": str(module.model.dtype).removeprefix("torch."),
            **DEFAULT_VLLM_KWARGS,
            **(module.vllm_kwargs or {}),
        }
        logger.info("Starting vLLM for %s", module.name_or_path)
        engine = vllm.LLM(**kwargs)
        module._vllm_engine = engine
    return engine
