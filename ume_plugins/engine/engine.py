"""The engine a UME-R1 module owns: its settings (:class:`EngineSpec`) and which decoder runs a call.

- Discriminative states: one forward pass (:mod:`ume_plugins.engine.discriminative`).
- Generative rollouts, ``backend="hf"``: the slot engine (:mod:`ume_plugins.engine.slots`), or the
  reference loop (:mod:`ume_plugins.engine.reference`) where only it gives ``generate``'s semantics:
  user ``logits_processor`` / ``stopping_criteria`` (they see the whole batch in input order),
  generation-config fields that read each row's token order, and sliding-window checkpoints.
  A logits processor whose ``per_row`` attribute is True declares that it reads each row on its
  own (a row's tokens, left-padded, its latest token last); it runs on the slot engine, where
  rows are rollouts at different steps in slot order. One that also has ``capturable = True``
  declares that its call only queues device arithmetic (no host reads, no Python state changing
  between calls): the slot engine then replays it inside the step's CUDA graph instead of running
  it eagerly before each step.
- ``backend="vllm"``: vLLM writes the reasoning, one forward pass reads ``<gen_emb>``
  (:mod:`ume_plugins.engine.vllm`).

The engine never logs per batch: a :class:`~ume_plugins.engine.base.Rollout` carries its forced
flags, and the caller warns once per call (:func:`~ume_plugins.engine.base.forced_warning`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ume_plugins.engine import reference
from ume_plugins.engine.base import ON_MISSING, OnMissing, Rollout, eos_token_ids
from ume_plugins.engine.discriminative import disc_states
from ume_plugins.engine.generation_config import build_generation_config, order_fields
from ume_plugins.engine.hf_model import full_attention_only
from ume_plugins.engine.processors import ScoreProcessors
from ume_plugins.engine.slot_state import COMPILE_MODES, SlotOptions
from ume_plugins.engine.slots import SlotRun
from ume_plugins.engine.stages import Budget, closer_ids
from ume_plugins.engine.vllm import VllmBackend

Backend = Literal["hf", "vllm"]
BACKENDS: tuple[str, ...] = ("hf", "vllm")
Decoder = Literal["auto", "slots", "reference"]
_HOOKS = ("logits_processor", "stopping_criteria")


@dataclass(frozen=True)
class EngineSpec:
    """What the engine is told once: token ids, the checkpoint, and the saved decoding settings.

    Attributes:
        gen_emb_id: Id of ``<gen_emb>``.
        disc_emb_id: Id of ``<disc_emb>``.
        pad_token_id: The tokenizer's pad id (when the generation config has none).
        answer_open: Ids of ``</think><answer>`` (fed when the thinking budget is reached).
        think_closers: Id sequences that show a rollout closed its thinking (``</think``, ``<answer``).
        checkpoint: Checkpoint the model was loaded from (vLLM loads it again).
        revision: Its hub revision.
        max_new_tokens: Reasoning budget: the hard cap on tokens fed before ``<gen_emb>``.
        on_missing: ``"force"`` appends ``<gen_emb>`` to rollouts that lack it (flagged), ``"raise"``
            raises :class:`~ume_plugins.engine.base.GenEmbMissingError`.
        backend: ``"hf"`` (built-in decoders) or ``"vllm"``.
        vllm_kwargs: Extra arguments for ``vllm.LLM``.
        processor_pixels: The processor's resize bounds ``(min, max)`` in pixels, which vLLM's own
            processor is given too, so that its reasoning sees the images our processor gives the
            model (None: vLLM keeps the checkpoint's bounds).
        max_slots: Most rollouts the slot engine decodes at once; a larger batch waits and fills
            slots as rollouts finish.
        thinking_budget: Tokens after which an unclosed ``<think>`` is closed with
            ``</think><answer>`` (None: never; slot engine only).
        answer_budget: Tokens the model may answer after a forced ``</think><answer>``.
        compile: Slot engine step: ``"auto"``, ``"eager"``, ``"cuda_graphs"`` or ``"torch_compile"``.
        compile_backend: ``torch.compile`` backend for ``compile="torch_compile"`` (None: inductor).
    """

    gen_emb_id: int
    disc_emb_id: int
    pad_token_id: int
    answer_open: tuple[int, ...] = ()
    think_closers: tuple[tuple[int, ...], ...] = ()
    checkpoint: str = ""
    revision: str | None = None
    max_new_tokens: int = 8192
    on_missing: OnMissing = "force"
    backend: Backend = "hf"
    vllm_kwargs: dict[str, Any] | None = field(default=None, hash=False)
    processor_pixels: tuple[int, int] | None = None
    max_slots: int = 32
    thinking_budget: int | None = None
    answer_budget: int = 64
    compile: str = "auto"
    compile_backend: str | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.backend in BACKENDS, f"backend must be one of {BACKENDS}, got {self.backend!r}"),
            (self.on_missing in ON_MISSING, f"on_missing_gen_emb must be 'force' or 'raise', got {self.on_missing!r}"),
            (self.max_new_tokens >= 1, f"max_new_tokens must be positive, got {self.max_new_tokens}"),
            (self.max_slots >= 1, f"max_slots must be positive, got {self.max_slots}"),
            (self.compile in COMPILE_MODES, f"decode_compile must be one of {COMPILE_MODES}, got {self.compile!r}"),
            (self.answer_budget >= 0, f"answer_budget must be >= 0, got {self.answer_budget}"),
            (
                self.thinking_budget is None or self.thinking_budget >= 1,
                f"thinking_budget must be positive or None, got {self.thinking_budget}",
            ),
            (
                self.thinking_budget is None or self.backend == "hf",
                "thinking_budget needs backend='hf' (vLLM cannot feed </think><answer> mid-rollout)",
            ),
        ]
        for valid, message in checks:
            if not valid:
                raise ValueError(message)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, checkpoint: str, **settings: Any) -> EngineSpec:
        """The spec of a checkpoint, its token ids looked up by name in its tokenizer.

        Raises:
            ValueError: The tokenizer lacks ``<gen_emb>`` or ``<disc_emb>`` (not a UME-R1 checkpoint).
        """
        ids = {}
        for name, token in (("gen_emb_id", "<gen_emb>"), ("disc_emb_id", "<disc_emb>")):
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or token_id == tokenizer.unk_token_id:
                raise ValueError(f"{checkpoint} is not a UME-R1 checkpoint: its tokenizer has no {token} token")
            ids[name] = token_id
        return cls(
            **ids,
            pad_token_id=tokenizer.pad_token_id,
            answer_open=tuple(tokenizer("</think><answer>", add_special_tokens=False)["input_ids"]),
            think_closers=closer_ids(tokenizer),
            checkpoint=checkpoint,
            **settings,
        )


class Engine:
    """Runs discriminative passes and generative rollouts for a model, as its spec says.

    Args:
        spec: Token ids and settings.
        tokenizer: The checkpoint's tokenizer (only ``backend="vllm"`` reads it).
    """

    def __init__(self, spec: EngineSpec, tokenizer: Any = None) -> None:
        self.spec = spec
        self.vllm = VllmBackend(
            spec.checkpoint,
            spec.revision,
            tokenizer,
            gen_emb_id=spec.gen_emb_id,
            disc_emb_id=spec.disc_emb_id,
            on_missing=spec.on_missing,
            vllm_kwargs=spec.vllm_kwargs,
            processor_pixels=spec.processor_pixels,
        )

    def disc_states(self, model: torch.nn.Module, features: dict[str, Any]) -> torch.Tensor:
        """``[batch, hidden]`` last-layer states at each input's ``<disc_emb>``."""
        return disc_states(model, features, self.spec.disc_emb_id)

    @torch.inference_mode()
    def rollouts(
        self,
        model: torch.nn.Module,
        features: dict[str, Any],
        *,
        generation_kwargs: dict[str, Any] | None = None,
        with_disc: bool = False,
        num_samples: int = 1,
        seed: int | None = None,
        items: Sequence[Any] | None = None,
        decoder: Decoder = "auto",
    ) -> Rollout:
        """Reason over each input ``num_samples`` times and read every rollout's ``<gen_emb>`` state.

        Args:
            model: A ``Qwen2VLForConditionalGeneration``.
            features: Left-padded processor outputs with per-row image/video counts.
            generation_kwargs: Overrides of the generation config (``max_new_tokens``, ``do_sample``,
                ``temperature``, ...), plus ``logits_processor`` / ``stopping_criteria`` lists.
            with_disc: Also return the ``<disc_emb>`` states of the same prefill.
            num_samples: Rollouts per input (k > 1 samples).
            seed: Seed of sampled rollouts; None draws one from torch's global generator.
            items: The decoded inputs (vLLM reads their media).
            decoder: ``"auto"`` (see the module docstring), or force ``"slots"`` or ``"reference"``.
                With ``"slots"``, user logits processors see each rollout's own sequence per row
                (left-padded, rows in slot order, rows at different steps).

        Raises:
            ValueError: Settings that cannot be honoured (see
                :func:`~ume_plugins.engine.generation_config.build_generation_config`), or a
                thinking budget where only the reference loop can run the call.
            GenEmbMissingError: A rollout ended without ``<gen_emb>`` and ``on_missing="raise"``.
        """
        spec = self.spec
        overrides = dict(generation_kwargs or {})
        hooks = {key: list(value) for key in _HOOKS if (value := overrides.pop(key, None))}
        config = build_generation_config(
            model.generation_config, spec.max_new_tokens, spec.pad_token_id, overrides, num_samples
        )
        if spec.backend == "vllm":
            return self.vllm.rollout(
                model, features, items, config, hooks, with_disc=with_disc, num_samples=num_samples, seed=seed
            )
        decoder = self.decoder_for(model, config, hooks) if decoder == "auto" else decoder
        if decoder == "reference":
            if spec.thinking_budget is not None:
                reasons = ", ".join(_reference_reasons(model, config, hooks))
                raise ValueError(
                    f"thinking_budget needs the slot engine; this call needs the reference loop ({reasons})"
                )
            return reference.rollout(
                model,
                features,
                gen_emb_id=spec.gen_emb_id,
                disc_emb_id=spec.disc_emb_id,
                generation_config=config,
                on_missing=spec.on_missing,
                with_disc=with_disc,
                num_samples=num_samples,
                seed=seed,
                **hooks,
            )
        blockers = _reference_reasons(model, config, {"stopping_criteria": hooks.get("stopping_criteria")})
        if blockers:
            raise ValueError(f"the slot engine cannot run {', '.join(blockers)}; use the reference loop")
        eos = eos_token_ids(config)
        budget = Budget(
            gen_emb_id=spec.gen_emb_id,
            eos_ids=eos,
            max_new_tokens=config.max_new_tokens,
            thinking_budget=spec.thinking_budget,
            answer_budget=spec.answer_budget,
            answer_open=spec.answer_open,
            think_closers=spec.think_closers,
        )
        processors = ScoreProcessors(config, eos, hooks.get("logits_processor", ()), device=model.device)
        run = SlotRun(
            model,
            features,
            budget=budget,
            config=config,
            processors=processors,
            on_missing=spec.on_missing,
            options=SlotOptions(spec.max_slots, spec.compile, spec.compile_backend),
            disc_emb_id=spec.disc_emb_id if with_disc else None,
            num_samples=num_samples,
            seed=seed,
        )
        return run.run()

    @staticmethod
    def decoder_for(model: torch.nn.Module, config: Any, hooks: dict[str, Any]) -> Decoder:
        """``"reference"`` where only the reference loop gives ``generate``'s semantics, else ``"slots"``."""
        return "reference" if _reference_reasons(model, config, hooks) else "slots"


def _reference_reasons(model: torch.nn.Module, config: Any, hooks: dict[str, Any]) -> list[str]:
    """What in a call only the reference loop runs."""
    per_row = all(getattr(processor, "per_row", False) for processor in hooks.get("logits_processor") or ())
    reasons = [f"user {key}" for key in _HOOKS if hooks.get(key) and not (key == "logits_processor" and per_row)]
    reasons += [f"generation config field {key}" for key in order_fields(config)]
    if not full_attention_only(model):
        reasons.append("sliding-window attention")
    return reasons
