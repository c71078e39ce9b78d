"""UME-R1 as a sentence-transformers input module."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from sentence_transformers.base.modules import InputModule

from ume_plugins.adapters import (
    ADAPTERS_KEY,
    AdapterMixin,
    has_adapter_layers,
    load_saved_adapters,
    per_call_adapter,
    save_adapted_model,
)
from ume_plugins.device import model_load_kwargs, preferred_attention, preferred_dtype
from ume_plugins.engine import Backend, Engine, EngineSpec, OnMissing, Rollout, forced_warning
from ume_plugins.errors import UMEInputError
from ume_plugins.fetch import FetchPolicy
from ume_plugins.inputs import InputPolicy, Item, origin_of, read
from ume_plugins.media import PixelPolicy, blank_image
from ume_plugins.prompts import build_message, cut_after_disc_token

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

Mode = Literal["generative", "discriminative", "both"]
MODES: tuple[str, ...] = ("generative", "discriminative", "both")


class UMER1Embedder(AdapterMixin, InputModule):
    """UME-R1 (Qwen2-VL) embeddings in two modes.

    - ``"generative"`` (default, the mode of every reported UME-R1 score): the model reasons
      (``<think>...</think><answer>...</answer>``) and the vector is the last-layer state at the
      ``<gen_emb>`` it writes. Costly: a rollout of up to ``max_new_tokens`` per input.
    - ``"discriminative"``: one forward pass; the vector is the last-layer state at ``<disc_emb>``.
    - ``"both"``: the generative vector, plus the discriminative one read from the same prefill
      (output key ``"disc_embedding"``).

    The two modes' vectors live in different spaces: never mix them in one index. The mode is a
    saved setting; ``encode(..., mode=...)`` overrides it per call. Vectors are L2-normalised
    float32.

    Args:
        model_name_or_path: Local checkpoint directory or hub id of a UME-R1 (Qwen2-VL) checkpoint.
        mode: Default embedding mode.
        blank_image_for_text: Give text-only inputs the blank white image of the official eval.
        min_pixels: Lower pixel bound of the first resize (qwen-vl-utils ``fetch_image``).
        max_pixels: Upper pixel bound of the first resize.
        processor_min_pixels: Lower pixel bound of the processor's resize.
        processor_max_pixels: Upper pixel bound of the processor's resize.
        num_frames: Frames sampled uniformly from each video (None keeps all).
        max_new_tokens: Reasoning budget of generative mode.
        max_length: Longest prompt in tokens (chat scaffolding, vision tokens and text), measured on
            the full generative prompt in every mode; a longer input text is cut to fit, with a
            warning. None: the decoder's ``max_position_embeddings`` minus ``max_new_tokens`` (at
            least half the positions), so that prompt and reasoning fit (24576 for UME-R1).
        on_missing_gen_emb: When a rollout ends without ``<gen_emb>``: ``"force"`` appends it after
            the truncated reasoning and flags the row (``gen_emb_forced``, plus a warning);
            ``"raise"`` raises :class:`~ume_plugins.engine.GenEmbMissingError`.
        backend: Engine of generative mode: ``"hf"`` (the built-in slot engine with continuous
            batching, see :mod:`ume_plugins.engine`) or ``"vllm"`` (vLLM writes the reasoning, one
            forward of this model reads ``<gen_emb>``; needs ``pip install "ume-plugins[vllm]"`` and a
            GPU; see :mod:`ume_plugins.engine.vllm`).
        vllm_kwargs: Extra arguments for ``vllm.LLM`` (e.g. ``gpu_memory_utilization``).
        max_slots: Most rollouts decoded at once; a larger ``batch_size`` keeps the slots full as
            rollouts finish (continuous batching). Bounds the KV-cache memory.
        thinking_budget: Reasoning tokens after which an unclosed ``<think>`` is closed by feeding
            ``</think><answer>`` (flagged ``answer_forced``); None never closes it. Faster, at a
            quality cost that is unmeasured (see :mod:`ume_plugins.engine.stages`).
        answer_budget: Tokens the model may answer after a forced ``</think><answer>`` before
            ``<gen_emb>`` is forced.
        decode_compile: How the slot engine runs a decode step: ``"auto"`` (CUDA graphs on CUDA,
            else eager), ``"eager"``, ``"cuda_graphs"`` or ``"torch_compile"``.
        allow_network: Let http(s) URL inputs be fetched.
        allow_file_urls: Accept ``file://`` URLs as paths.
        url_timeout: Seconds allowed for URL connections and reads.
        max_url_bytes: Largest URL body accepted.
        max_decoded_pixels: Largest image decoded (decompression-bomb guard).
        model_kwargs: Passed to ``from_pretrained`` of the model (``dtype``,
            ``attn_implementation``, ...); defaults follow the device (see :mod:`ume_plugins.device`).
        processor_kwargs: Passed to ``AutoProcessor.from_pretrained``.
        revision: Hub revision.
        token: Hub token.
        cache_folder: Hub cache directory.
        local_files_only: Never reach the hub.
        device: Device the model is loaded for (precision follows it); defaults to the best available.
    """

    config_file_name = "ume_r1_config.json"
    config_keys = [
        "mode",
        "blank_image_for_text",
        "min_pixels",
        "max_pixels",
        "processor_min_pixels",
        "processor_max_pixels",
        "num_frames",
        "max_new_tokens",
        "max_length",
        "on_missing_gen_emb",
        "backend",
        "vllm_kwargs",
        "max_slots",
        "thinking_budget",
        "answer_budget",
        "decode_compile",
        "allow_network",
        "allow_file_urls",
        "url_timeout",
        "max_url_bytes",
        "max_decoded_pixels",
    ]
    forward_kwargs = {"mode", "generation_kwargs", "adapter", "num_samples", "seed"}
    save_in_root = True

    def __init__(
        self,
        model_name_or_path: str,
        *,
        mode: Mode = "generative",
        blank_image_for_text: bool = True,
        min_pixels: int = 4 * 28 * 28,
        max_pixels: int = 16384 * 28 * 28,
        processor_min_pixels: int = 28 * 28,
        processor_max_pixels: int = 1536 * 1536,
        num_frames: int | None = 8,
        max_new_tokens: int = 8192,
        max_length: int | None = None,
        on_missing_gen_emb: OnMissing = "force",
        backend: Backend = "hf",
        vllm_kwargs: dict[str, Any] | None = None,
        max_slots: int = 32,
        thinking_budget: int | None = None,
        answer_budget: int = 64,
        decode_compile: str = "auto",
        allow_network: bool = True,
        allow_file_urls: bool = False,
        url_timeout: float = 10.0,
        max_url_bytes: int = 64 * 1024 * 1024,
        max_decoded_pixels: int = 128 * 1024 * 1024,
        model_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        revision: str | None = None,
        token: bool | str | None = None,
        cache_folder: str | None = None,
        local_files_only: bool = False,
        device: str | None = None,
    ) -> None:
        super().__init__()
        from sentence_transformers.util import get_device_name
        from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

        self.mode = mode
        self.blank_image_for_text = blank_image_for_text
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.processor_min_pixels = processor_min_pixels
        self.processor_max_pixels = processor_max_pixels
        self.num_frames = num_frames
        self.max_new_tokens = max_new_tokens
        self.max_length = max_length
        self.on_missing_gen_emb = on_missing_gen_emb
        self.backend = backend
        self.vllm_kwargs = vllm_kwargs
        self.max_slots = max_slots
        self.thinking_budget = thinking_budget
        self.answer_budget = answer_budget
        self.decode_compile = decode_compile
        self.allow_network = allow_network
        self.allow_file_urls = allow_file_urls
        self.url_timeout = url_timeout
        self.max_url_bytes = max_url_bytes
        self.max_decoded_pixels = max_decoded_pixels
        self.validate_settings()

        hub_kwargs = {
            "revision": revision,
            "token": token,
            "cache_dir": cache_folder,
            "local_files_only": local_files_only,
        }
        self._dtype_pinned = bool(model_kwargs) and ("dtype" in model_kwargs or "torch_dtype" in model_kwargs)
        self._attention_pinned = bool(model_kwargs) and "attn_implementation" in model_kwargs
        load_kwargs = model_load_kwargs(device or get_device_name(), model_kwargs)
        # Kept for backends that load the checkpoint themselves (vLLM).
        self.name_or_path, self.revision = model_name_or_path, revision
        self.model = Qwen2VLForConditionalGeneration.from_pretrained(model_name_or_path, **hub_kwargs, **load_kwargs)
        self.model.eval()
        self.processor = AutoProcessor.from_pretrained(model_name_or_path, **hub_kwargs, **(processor_kwargs or {}))
        self.processor.tokenizer.padding_side = "left"
        spec = EngineSpec.from_tokenizer(self.tokenizer, model_name_or_path, revision=revision)
        self._engine = Engine(spec, self.tokenizer)
        spec = self.engine().spec
        self.gen_emb_id, self.disc_emb_id = spec.gen_emb_id, spec.disc_emb_id

    @property
    def tokenizer(self):
        """The checkpoint's tokenizer."""
        return self.processor.tokenizer

    @property
    def modalities(self) -> list[str]:
        """Text, images and videos, alone or combined (``message`` admits mixed batches)."""
        return ["text", "image", "video", "message"]

    @property
    def max_seq_length(self) -> int | None:
        """Longest token sequence the decoder is configured for."""
        return self.model.config.text_config.max_position_embeddings

    def get_embedding_dimension(self) -> int:
        """Size of the vectors: the decoder's hidden size."""
        return self.model.config.text_config.hidden_size

    def validate_settings(self) -> None:
        """Check the settings' values.

        Raises:
            ValueError: A setting out of range or not one of its choices.
        """
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if hasattr(self, "_engine"):
            self.engine()  # its spec checks the engine's settings (backend, budgets, slots, ...)
        if not 0 < self.min_pixels <= self.max_pixels or not 0 < self.processor_min_pixels <= self.processor_max_pixels:
            raise ValueError("pixel bounds must satisfy 0 < min_pixels <= max_pixels")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"num_frames must be positive or None, got {self.num_frames}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be positive or None, got {self.max_length}")

    def input_policy(self) -> InputPolicy:
        """How raw inputs are read under the current settings."""
        return InputPolicy(
            pixels=PixelPolicy(
                min_pixels=self.min_pixels,
                max_pixels=self.max_pixels,
                num_frames=self.num_frames,
                max_decoded_pixels=self.max_decoded_pixels,
            ),
            fetch=FetchPolicy(allow_network=self.allow_network, timeout=self.url_timeout, max_bytes=self.max_url_bytes),
            allow_file_urls=self.allow_file_urls,
        )

    def resolve_mode(self, mode: str | None) -> Mode:
        """The per-call mode, else the configured default.

        Raises:
            ValueError: An unknown mode.
        """
        mode = mode or self.mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        return mode

    def preprocess(
        self,
        inputs: Sequence[Any],
        prompt: str | None = None,
        *,
        mode: str | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Parse, validate and tokenise a batch.

        Args:
            inputs: Raw inputs (see :mod:`ume_plugins.inputs`), mixed freely.
            prompt: Task instruction placed before each input's text (joined by one space).
            mode: Embedding mode; discriminative prompts stop right after ``<disc_emb>``.
            **kwargs: Ignored (``task``, ``generation_kwargs``, ...).

        Returns:
            Processor outputs plus per-row image/video counts and the mode.

        Raises:
            UMEInputError: An input could not be read; names its index.
        """
        mode = self.resolve_mode(mode)
        items = self.load_items(inputs)
        indices = [origin_of(raw, position) for position, raw in enumerate(inputs)]
        features = self.tokenize_items(items, prompt, mode, indices=indices)
        if self.backend == "vllm":
            features["ume_items"] = items  # vLLM reads the media itself
        return features

    def load_items(self, inputs: Sequence[Any]) -> list[Item]:
        """Decode a batch of raw inputs, adding the blank image to text-only ones when configured.

        Raises:
            UMEInputError: An input could not be read; names its index in the caller's list when
                known (see :func:`ume_plugins.inputs.origin_of`).
        """
        policy = self.input_policy()
        items = []
        for position, raw in enumerate(inputs):
            try:
                item = read(raw, policy)
            except UMEInputError as error:
                raise error.at(origin_of(raw, position)) from None
            if item.is_text_only:
                if not (item.text or "").strip():
                    logger.warning(
                        "Input %d: empty or blank text, embedded as an input without text", origin_of(raw, position)
                    )
                if self.blank_image_for_text:
                    item = Item(text=item.text, images=(blank_image(policy.pixels),), video=None)
            items.append(item)
        return items

    @property
    def prompt_token_limit(self) -> int:
        """The longest prompt accepted: ``max_length``, else positions left after the reasoning budget."""
        if self.max_length is not None:
            return self.max_length
        positions = self.max_seq_length
        return max(positions - self.max_new_tokens, positions // 2)

    def tokenize_items(
        self, items: list[Item], instruction: str | None, mode: Mode, indices: Sequence[int] | None = None
    ) -> dict[str, Any]:
        """Render the chat prompts and run the processor over a batch of items.

        An input whose full generative prompt exceeds :attr:`prompt_token_limit` loses tokens from
        the end of its own text, with a warning; the instruction, the vision tokens and the chat
        scaffolding (``<disc_emb>``, the generation prompt) are always kept. The limit is measured
        on the generative prompt in every mode, so both modes see the same text.

        Args:
            items: Decoded inputs.
            instruction: Task instruction for the ``TEXT`` slot.
            mode: Embedding mode; discriminative prompts stop right after ``<disc_emb>``.
            indices: The caller's index of each item, named in warnings and errors (default: positions).

        Returns:
            Processor outputs plus per-row image/video counts and the mode.

        Raises:
            UMEInputError: A prompt too long even without its text (too many or too large images,
                or a too long instruction); names the item's index.
        """
        indices = list(range(len(items))) if indices is None else list(indices)
        # Tokens after <disc_emb> that a discriminative prompt leaves out but the limit counts.
        tail = self._generation_tail_length() if mode == "discriminative" else 0
        original_texts: dict[int, str] = {}
        features = self._run_processor(items, instruction, mode)
        # Each round shortens every over-long text, so this ends.
        while over := self._over_limit(features, tail):
            items = list(items)
            for row, excess in over:
                original_texts.setdefault(row, items[row].text or "")
                items[row] = replace(items[row], text=self._cut_text(items[row].text or "", excess, indices[row]))
            features = self._run_processor(items, instruction, mode)
        for row, text in original_texts.items():
            logger.warning(
                "Input %d: text of %d tokens truncated to %d to fit max_length=%d",
                indices[row],
                self._count_tokens(text),
                self._count_tokens(items[row].text),
                self.prompt_token_limit,
            )
        features["images_per_row"] = torch.tensor([len(item.images) for item in items])
        features["videos_per_row"] = torch.tensor([int(item.video is not None) for item in items])
        features["ume_mode"] = mode
        return features

    def _run_processor(self, items: list[Item], instruction: str | None, mode: Mode) -> dict[str, Any]:
        texts = [
            self.processor.apply_chat_template(
                build_message(item, instruction), tokenize=False, add_generation_prompt=True
            )
            for item in items
        ]
        if mode == "discriminative":
            texts = [cut_after_disc_token(text) for text in texts]
        images = [image for item in items for image in item.images]
        videos = [list(item.video) for item in items if item.video is not None]
        size = {"shortest_edge": self.processor_min_pixels, "longest_edge": self.processor_max_pixels}
        return dict(
            self.processor(
                text=texts,
                images=images or None,
                videos=videos or None,
                padding=True,
                return_tensors="pt",
                images_kwargs={"size": size},
                videos_kwargs={"size": size, "do_sample_frames": False, "cap_pixels_per_frame": False},
            )
        )

    def _over_limit(self, features: dict[str, Any], tail: int) -> list[tuple[int, int]]:
        """``(row, tokens too many)`` for each row whose full prompt exceeds the limit."""
        excess = (features["attention_mask"].sum(dim=1) + tail - self.prompt_token_limit).tolist()
        return [(row, tokens) for row, tokens in enumerate(excess) if tokens > 0]

    def _generation_tail_length(self) -> int:
        rendered = self.processor.apply_chat_template(
            build_message(Item(text=None, images=(), video=None), None), tokenize=False, add_generation_prompt=True
        )
        tail = rendered[len(cut_after_disc_token(rendered)) :]
        return self._count_tokens(tail)

    def _count_tokens(self, text: str | None) -> int:
        return len(self.tokenizer(text or "", add_special_tokens=False)["input_ids"])

    def _cut_text(self, text: str, excess: int, index: int) -> str:
        """A prefix of ``text`` about ``excess`` tokens shorter, ending on a token boundary.

        Tokens counted alone may merge differently inside the prompt, so the caller measures again.
        """
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        if not offsets:
            raise UMEInputError(
                f"prompt exceeds max_length={self.prompt_token_limit} tokens even without its text: "
                "use fewer or smaller images or frames, or a shorter instruction"
            ).at(index)
        first_dropped = offsets[max(len(offsets) - excess, 0)][0]
        # At least one character goes, so every round makes progress.
        return text[: min(first_dropped, len(text) - 1)]

    @per_call_adapter
    def forward(
        self,
        features: dict[str, Any],
        mode: str | None = None,
        generation_kwargs: dict[str, Any] | None = None,
        num_samples: int = 1,
        seed: int | None = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """Embed a preprocessed batch.

        Args:
            features: Output of :meth:`preprocess` (its mode wins over ``mode``).
            mode: Embedding mode, when ``features`` do not carry one.
            generation_kwargs: Generative mode only: overrides for ``generate`` (``max_new_tokens``,
                ``do_sample``, ``temperature``, ``logits_processor``, ``stopping_criteria``, ...).
            num_samples: Generative mode only: rollouts per input (k). k > 1 samples (temperature,
                top-p, ... from ``generation_kwargs`` or the checkpoint); ``sentence_embedding`` is
                then the L2-normalised mean of the k unit vectors, and ``sample_embeddings`` holds
                all k (``encode(..., output_value="sample_embeddings")`` returns one ``[k, dim]``
                tensor per input).
            seed: Generative mode only: seed of sampled rollouts. A rollout depends only on its
                input, the seed and its sample index, never on its batch-mates; None draws the
                seed from torch's global generator (so ``torch.manual_seed`` works too).
            **kwargs: Ignored. (``adapter=``, a loaded adapter's name or several, runs those adapters
                for this call only: see :func:`~ume_plugins.adapters.per_call_adapter`.)

        Returns:
            ``sentence_embedding`` (``[batch, dim]``, L2-normalised float32); in generative mode also
            ``sample_embeddings`` (``[batch, k, dim]``), ``generated_ids``, ``gen_emb_forced`` and
            ``answer_forced`` (``[batch, steps]``, ``[batch]``, ``[batch]``; with a k axis when
            k > 1); in ``"both"`` mode also ``disc_embedding``.
        """
        mode = self.resolve_mode(features.get("ume_mode", mode))
        model_inputs = {key: value for key, value in features.items() if not key.startswith("ume_")}
        if mode == "discriminative":
            if num_samples != 1:
                raise ValueError("num_samples needs generative mode: discriminative mode has nothing to sample")
            return {"sentence_embedding": self._normalised(self._disc_states(model_inputs))}
        result = self._rollout(
            model_inputs,
            dict(generation_kwargs or {}),
            with_disc=mode == "both",
            num_samples=num_samples,
            seed=seed,
            items=features.get("ume_items"),
        )
        samples = self._normalised(result.states)
        single = num_samples == 1
        output = {
            "sentence_embedding": samples[:, 0] if single else self._normalised(samples.mean(dim=1)),
            "sample_embeddings": samples,
            "generated_ids": result.generated_ids[:, 0] if single else result.generated_ids,
            "gen_emb_forced": result.forced[:, 0] if single else result.forced,
            "answer_forced": result.answer_forced[:, 0] if single else result.answer_forced,
        }
        if result.disc_states is not None:
            output["disc_embedding"] = self._normalised(result.disc_states)
        return output

    def decode_reasoning(self, generated_ids: torch.Tensor) -> str:
        """The reasoning text of one row of ``generated_ids``."""
        return self.tokenizer.decode(generated_ids.tolist(), skip_special_tokens=True)

    def _disc_states(self, model_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.engine().disc_states(self.model, model_inputs)

    def _rollout(
        self,
        model_inputs: dict[str, torch.Tensor],
        generation_kwargs: dict[str, Any],
        with_disc: bool,
        num_samples: int = 1,
        seed: int | None = None,
        items: list[Item] | None = None,
    ) -> Rollout:
        result = self.engine().rollouts(
            self.model,
            model_inputs,
            generation_kwargs=generation_kwargs,
            with_disc=with_disc,
            num_samples=num_samples,
            seed=seed,
            items=items,
        )
        if result.forced_count:
            budget = generation_kwargs.get("max_new_tokens", self.max_new_tokens)
            logger.warning(forced_warning(result.forced_count, result.forced.numel(), budget))
        return result

    def engine(self) -> Engine:
        """The generative engine, rebuilt when a setting it reads changed (settings may be set after loading).

        Raises:
            ValueError: An engine setting out of range.
        """
        spec = replace(
            self._engine.spec,
            max_new_tokens=self.max_new_tokens,
            on_missing=self.on_missing_gen_emb,
            backend=self.backend,
            vllm_kwargs=self.vllm_kwargs,
            max_slots=self.max_slots,
            thinking_budget=self.thinking_budget,
            answer_budget=self.answer_budget,
            compile=self.decode_compile,
        )
        if spec != self._engine.spec:
            self._engine = Engine(spec, self.tokenizer)
        return self._engine

    def _normalised(self, states: torch.Tensor) -> torch.Tensor:
        vectors = torch.nn.functional.normalize(states.float(), p=2, dim=-1)
        bad = (~torch.isfinite(vectors).all(dim=-1)).nonzero().flatten().tolist()
        if bad:
            raise FloatingPointError(
                f"non-finite embedding for batch rows {bad} (dtype {self.model.dtype}); "
                "try model_kwargs={'dtype': 'float32'}"
            )
        return vectors.to(self.model.device)

    def on_model_ready(self, model: Any) -> None:
        """Re-pick precision and attention when the model landed on another device than guessed."""
        device = self.model.device
        if not self._dtype_pinned and self.model.dtype != preferred_dtype(device):
            self.model.to(preferred_dtype(device))
        if not self._attention_pinned:
            attention = preferred_attention(device, self.model.dtype)
            if self.model.config._attn_implementation != attention:
                self.model.set_attn_implementation(attention)

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """Write the model (safetensors), the processor and the UME-R1 settings to ``output_path``.

        With adapters loaded, the base weights are written as a plain checkpoint and each adapter
        under ``adapters/<name>/``.
        """
        if has_adapter_layers(self.model):
            save_adapted_model(self.model, output_path)
        else:
            self.model.save_pretrained(output_path, safe_serialization=True)
        self.processor.save_pretrained(output_path)
        self.save_config(output_path)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> UMER1Embedder:
        """Load from a saved sentence-transformers folder or a raw UME-R1 checkpoint.

        Saved settings (``ume_r1_config.json``) are applied when present; unknown keys from newer
        versions are skipped with a warning. Saved LoRA adapters are reloaded (and checked) with
        their active and enabled state.
        """
        hub_kwargs = {
            "token": token,
            "cache_folder": cache_folder,
            "revision": revision,
            "local_files_only": local_files_only,
        }
        config = cls.load_config(model_name_or_path, subfolder=subfolder, **hub_kwargs)
        adapters = config.pop(ADAPTERS_KEY, None)
        unknown = sorted(set(config) - set(cls.config_keys))
        if unknown:
            logger.warning("Ignoring unknown UME-R1 settings %s in %s", unknown, model_name_or_path)
        settings = {key: value for key, value in config.items() if key in cls.config_keys}
        path = f"{model_name_or_path}/{subfolder}" if subfolder else model_name_or_path
        module = cls(path, **settings, **hub_kwargs, model_kwargs=model_kwargs, processor_kwargs=processor_kwargs)
        if adapters:
            load_saved_adapters(module.model, adapters, model_name_or_path, subfolder, **hub_kwargs)
        return module


@dataclass(frozen=True)
class ReasonedEmbeddings:
    """Generative vectors with the reasoning that produced them.

    Attributes:
        embeddings: ``[n, dim]`` L2-normalised float32 vectors.
        reasoning: Per input, the generated text up to and including ``<gen_emb>``.
        forced: Per input, True where ``<gen_emb>`` had to be appended (budget exhausted).
    """

    embeddings: np.ndarray
    reasoning: list[str]
    forced: list[bool]


def encode_with_reasoning(model: SentenceTransformer, inputs: Sequence[Any], **kwargs: Any) -> ReasonedEmbeddings:
    """Encode in generative mode and return the reasoning text too.

    Args:
        model: A SentenceTransformer whose module is :class:`UMER1Embedder`.
        inputs: Raw inputs.
        **kwargs: Passed to ``model.encode`` (``prompt``, ``batch_size``, ``generation_kwargs``, ...).

    Returns:
        Vectors, reasoning texts and forced-``<gen_emb>`` flags, in input order.
    """
    if kwargs.get("mode") == "discriminative":
        raise ValueError("discriminative mode writes no reasoning; use mode='generative' or 'both'")
    if kwargs.get("num_samples", 1) > 1:
        raise ValueError("encode_with_reasoning reads one rollout per input; use output_value=None for k rollouts")
    rows = model.encode(list(inputs), output_value=None, **kwargs)
    module = model[0]
    return ReasonedEmbeddings(
        embeddings=np.stack([row["sentence_embedding"].float().cpu().numpy() for row in rows]),
        reasoning=[module.decode_reasoning(row["generated_ids"]) for row in rows],
        forced=[bool(row["gen_emb_forced"]) for row in rows],
    )
