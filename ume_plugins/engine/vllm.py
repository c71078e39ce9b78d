"""Accelerated generative mode (``backend="vllm"``): the two-phase recipe of the UME-R1 maintainers.

1. vLLM writes the reasoning (continuous batching, paged KV cache, CUDA graphs), stopping at
   ``<gen_emb>``.
2. One forward pass of our model over prompt + reasoning + ``<gen_emb>`` reads the embedding
   (:func:`~ume_plugins.engine.continuation.states_after`): the same state the built-in decoders
   capture while decoding, so for the same reasoning both backends give the same vector.

vLLM is an optional extra imported only here, and only when this backend runs:
``pip install "ume-plugins[vllm]"`` (it needs a CUDA GPU). Phase 1 gets the prompt exactly as our
processor tokenised it (image/video pad runs collapsed back to one placeholder each, which vLLM
expands itself) and the images and frames after the first resize; vLLM's processor does the second
with our processor's bounds.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig

from ume_plugins.engine.base import OnMissing, Rollout, assemble, eos_token_ids, missing_gen_emb_error
from ume_plugins.engine.continuation import states_after
from ume_plugins.engine.generation_config import order_fields
from ume_plugins.engine.sampling import call_seed

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "ume-plugins[vllm]"'
# Next to the HF model that runs phase 2, vLLM must not claim the default 90% of GPU memory; several
# images per input (document pages) need more than one image slot per prompt.
DEFAULT_VLLM_KWARGS: dict[str, Any] = {"gpu_memory_utilization": 0.7, "limit_mm_per_prompt": {"image": 4, "video": 1}}


@functools.cache
def is_vllm_available() -> bool:
    """True when the ``vllm`` package can be imported."""
    return importlib.util.find_spec("vllm") is not None


def require_vllm() -> None:
    """Say at once, without importing it (seconds), that vLLM is missing.

    Raises:
        ImportError: vLLM is not installed; says what to install.
    """
    if not is_vllm_available():
        raise ImportError(f"backend='vllm' needs vLLM, which is not installed: {INSTALL_HINT}")


def import_vllm() -> Any:
    """The ``vllm`` module.

    Raises:
        ImportError: vLLM is not installed; says what to install.
    """
    require_vllm()
    import vllm

    return vllm


class VllmBackend:
    """Phase 1 in vLLM (started on first use with the checkpoint the model was loaded from), phase 2 here.

    Args:
        checkpoint: The checkpoint vLLM loads (local folder or hub id).
        revision: Its hub revision.
        tokenizer: The checkpoint's tokenizer (phase-1 prompts are our tokenised prompts as text).
        gen_emb_id: Id of ``<gen_emb>``.
        disc_emb_id: Id of ``<disc_emb>``.
        on_missing: ``"raise"`` raises when a rollout lacks ``<gen_emb>``.
        vllm_kwargs: Extra arguments for ``vllm.LLM``.
        processor_pixels: Our processor's resize bounds ``(min, max)``, given to vLLM's processor
            (its ``mm_processor_kwargs``; the user's own keys there win). Without them it would
            resize with the checkpoint's bounds, up to 12,845,056 pixels per image instead of
            1536², and reason over other images than the model is shown in phase 2.
    """

    def __init__(
        self,
        checkpoint: str,
        revision: str | None,
        tokenizer: Any,
        *,
        gen_emb_id: int,
        disc_emb_id: int,
        on_missing: OnMissing,
        vllm_kwargs: dict[str, Any] | None = None,
        processor_pixels: tuple[int, int] | None = None,
    ) -> None:
        self.checkpoint, self.revision, self.tokenizer = checkpoint, revision, tokenizer
        self.gen_emb_id, self.disc_emb_id, self.on_missing = gen_emb_id, disc_emb_id, on_missing
        self.vllm_kwargs = vllm_kwargs or {}
        self.processor_pixels = processor_pixels
        self.llm: Any = None

    def processor_kwargs(self) -> dict[str, Any]:
        """The ``mm_processor_kwargs`` for vLLM: our processor's pixel bounds, under the user's own keys."""
        bounds = {}
        if self.processor_pixels is not None:
            bounds = {"min_pixels": self.processor_pixels[0], "max_pixels": self.processor_pixels[1]}
        return {**bounds, **(self.vllm_kwargs.get("mm_processor_kwargs") or {})}

    def rollout(
        self,
        model: torch.nn.Module,
        features: dict[str, torch.Tensor],
        items: Sequence[Any] | None,
        config: GenerationConfig,
        hooks: dict[str, Any],
        *,
        with_disc: bool,
        num_samples: int,
        seed: int | None,
    ) -> Rollout:
        """Both phases for one batch: vLLM writes k rollouts per input, ``model`` reads their states.

        Raises:
            ImportError: vLLM is not installed.
            ValueError: HF ``logits_processor`` / ``stopping_criteria`` hooks, or generation config
                fields (:func:`unsupported_fields`), which vLLM cannot run.
            GenEmbMissingError: A rollout lacks ``<gen_emb>`` and ``on_missing="raise"``.
        """
        if hooks:
            raise ValueError(f"backend='vllm' cannot run transformers {sorted(hooks)}; use backend='hf'")
        unsupported = unsupported_fields(config)
        if unsupported:
            fields = ", ".join(unsupported)
            raise ValueError(f"backend='vllm' cannot honour generation config {fields}; use backend='hf'")
        if items is None:
            raise ValueError("backend='vllm' needs the decoded items: run preprocess with backend='vllm'")
        vllm = import_vllm()
        if self.llm is None:
            kwargs = {
                "model": self.checkpoint,
                "revision": self.revision,
                "dtype": str(model.dtype).removeprefix("torch."),
                **DEFAULT_VLLM_KWARGS,
                **self.vllm_kwargs,
                "mm_processor_kwargs": self.processor_kwargs(),
            }
            logger.info("Starting vLLM for %s", self.checkpoint)
            self.llm = vllm.LLM(**kwargs)
        if config.do_sample:
            seed = call_seed(seed)
        params = sampling_params(vllm, config, num_samples, seed, self.gen_emb_id)
        outputs = self.llm.generate(phase_one_requests(self.tokenizer, features, items), params, use_tqdm=False)
        eos_ids = set(eos_token_ids(config))
        reasoning, forced = [], []
        for request in outputs:
            for completion in request.outputs:
                ids, was_forced = reasoning_ids(
                    list(completion.token_ids), completion.stop_reason, self.gen_emb_id, eos_ids
                )
                reasoning.append(ids)
                forced.append(was_forced)
        return embed_reasoning(
            model,
            features,
            reasoning,
            forced,
            gen_emb_id=self.gen_emb_id,
            disc_emb_id=self.disc_emb_id if with_disc else None,
            num_samples=num_samples,
            pad_token_id=config.pad_token_id,
            on_missing=self.on_missing,
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
        The same :class:`~ume_plugins.engine.base.Rollout` the built-in decoders return.
    """
    if on_missing == "raise" and any(forced):
        raise missing_gen_emb_error([row for row, flag in enumerate(forced) if flag], num_samples, max_new_tokens)
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
    return assemble(
        torch.stack(states, dim=1).flatten(0, 1),
        reasoning,
        forced,
        num_samples=num_samples,
        pad_token_id=pad_token_id,
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


def phase_one_requests(tokenizer: Any, features: dict[str, torch.Tensor], items: Sequence[Any]) -> list[dict[str, Any]]:
    """Phase-1 prompts: our tokenised prompts as text with one placeholder per image/video, plus the media.

    ``items`` are the decoded inputs (``images``: PIL images, ``video``: frames or None), in batch order.
    """
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


def unsupported_fields(config: GenerationConfig) -> list[str]:
    """The config's score-changing fields, set, that :func:`sampling_params` has no vLLM equivalent for."""
    fields = dict.fromkeys(order_fields(config), True)
    fields.update(suppress_tokens=config.suppress_tokens is not None, min_length=bool(config.min_length))
    if config.do_sample:
        fields.update(
            typical_p=config.typical_p is not None and config.typical_p < 1.0,
            epsilon_cutoff=config.epsilon_cutoff is not None and 0.0 < config.epsilon_cutoff < 1.0,
            eta_cutoff=config.eta_cutoff is not None and 0.0 < config.eta_cutoff < 1.0,
        )
    return [f"{name}={getattr(config, name)!r}" for name, is_set in fields.items() if is_set]


def sampling_params(vllm: Any, config: GenerationConfig, num_samples: int, seed: int | None, gen_emb_id: int) -> Any:
    """The ``vllm.SamplingParams`` equivalent to the generation config (greedy unless it samples)."""
    stop = [gen_emb_id, *eos_token_ids(config)]
    kwargs: dict[str, Any] = {
        "n": num_samples,
        "max_tokens": config.max_new_tokens,
        "stop_token_ids": stop,
        "min_tokens": config.min_new_tokens or 0,
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
