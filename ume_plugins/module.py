"""UME-R1 as a sentence-transformers input module."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from sentence_transformers.base.modules import InputModule

from ume_plugins.device import model_load_kwargs, preferred_attention, preferred_dtype
from ume_plugins.errors import UMEInputError
from ume_plugins.fetch import FetchPolicy
from ume_plugins.generation import OnMissing, Rollout, build_generation_config, last_position, rollout
from ume_plugins.inputs import InputPolicy, Item, describe, load, origin_of
from ume_plugins.media import PixelPolicy, blank_image
from ume_plugins.prompts import DISC_EMB_TOKEN, GEN_EMB_TOKEN, build_message, cut_after_disc_token

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

Mode = Literal["generative", "discriminative", "both"]
MODES: tuple[str, ...] = ("generative", "discriminative", "both")
_COUNT_KEYS = ("images_per_row", "videos_per_row")


class UMER1Embedder(InputModule):
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
        on_missing_gen_emb: When a rollout ends without ``<gen_emb>``: ``"force"`` appends it after
            the truncated reasoning and flags the row (``gen_emb_forced``, plus a warning);
            ``"raise"`` raises :class:`~ume_plugins.generation.GenEmbMissingError`.
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
        "on_missing_gen_emb",
        "allow_network",
        "allow_file_urls",
        "url_timeout",
        "max_url_bytes",
        "max_decoded_pixels",
    ]
    forward_kwargs = {"mode", "generation_kwargs"}
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
        on_missing_gen_emb: OnMissing = "force",
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
        self.on_missing_gen_emb = on_missing_gen_emb
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
        self.model = Qwen2VLForConditionalGeneration.from_pretrained(model_name_or_path, **hub_kwargs, **load_kwargs)
        self.model.eval()
        self.processor = AutoProcessor.from_pretrained(model_name_or_path, **hub_kwargs, **(processor_kwargs or {}))
        self.processor.tokenizer.padding_side = "left"
        self.gen_emb_id = self._token_id(GEN_EMB_TOKEN, model_name_or_path)
        self.disc_emb_id = self._token_id(DISC_EMB_TOKEN, model_name_or_path)

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
        if self.on_missing_gen_emb not in ("force", "raise"):
            raise ValueError(f"on_missing_gen_emb must be 'force' or 'raise', got {self.on_missing_gen_emb!r}")
        if not 0 < self.min_pixels <= self.max_pixels or not 0 < self.processor_min_pixels <= self.processor_max_pixels:
            raise ValueError("pixel bounds must satisfy 0 < min_pixels <= max_pixels")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"num_frames must be positive or None, got {self.num_frames}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens}")

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
        return self.tokenize_items(items, prompt, mode)

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
                item = load(describe(raw, policy), policy)
            except UMEInputError as error:
                raise error.at(origin_of(raw, position)) from None
            if item.is_text_only and self.blank_image_for_text:
                item = Item(text=item.text, images=(blank_image(policy.pixels),), video=None)
            items.append(item)
        return items

    def tokenize_items(self, items: list[Item], instruction: str | None, mode: Mode) -> dict[str, Any]:
        """Render the chat prompts and run the processor over a batch of items."""
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
        features = dict(
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
        features["images_per_row"] = torch.tensor([len(item.images) for item in items])
        features["videos_per_row"] = torch.tensor([int(item.video is not None) for item in items])
        features["ume_mode"] = mode
        return features

    def forward(
        self,
        features: dict[str, Any],
        mode: str | None = None,
        generation_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, torch.Tensor]:
        """Embed a preprocessed batch.

        Args:
            features: Output of :meth:`preprocess` (its mode wins over ``mode``).
            mode: Embedding mode, when ``features`` do not carry one.
            generation_kwargs: Generative mode only: overrides for ``generate`` (``max_new_tokens``,
                ``do_sample``, ``temperature``, ``logits_processor``, ``stopping_criteria``, ...).
            **kwargs: Ignored.

        Returns:
            ``sentence_embedding`` (``[batch, dim]``, L2-normalised float32); in generative mode also
            ``generated_ids`` and ``gen_emb_forced``; in ``"both"`` mode also ``disc_embedding``.
        """
        mode = self.resolve_mode(features.get("ume_mode", mode))
        model_inputs = {key: value for key, value in features.items() if key != "ume_mode"}
        if mode == "discriminative":
            return {"sentence_embedding": self._normalised(self._disc_states(model_inputs))}
        result = self._rollout(model_inputs, dict(generation_kwargs or {}), with_disc=mode == "both")
        output = {
            "sentence_embedding": self._normalised(result.states),
            "generated_ids": result.generated_ids,
            "gen_emb_forced": result.forced,
        }
        if result.disc_states is not None:
            output["disc_embedding"] = self._normalised(result.disc_states)
        return output

    def decode_reasoning(self, generated_ids: torch.Tensor) -> str:
        """The reasoning text of one row of ``generated_ids``."""
        return self.tokenizer.decode(generated_ids.tolist(), skip_special_tokens=True)

    def _disc_states(self, model_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {key: value for key, value in model_inputs.items() if key not in _COUNT_KEYS}
        hidden = self.model.model(**inputs, use_cache=False).last_hidden_state
        positions = last_position(inputs["input_ids"], self.disc_emb_id)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), positions]

    def _rollout(
        self, model_inputs: dict[str, torch.Tensor], generation_kwargs: dict[str, Any], with_disc: bool
    ) -> Rollout:
        hooks = {
            key: generation_kwargs.pop(key)
            for key in ("logits_processor", "stopping_criteria")
            if key in generation_kwargs
        }
        config = build_generation_config(
            self.model.generation_config,
            max_new_tokens=self.max_new_tokens,
            pad_token_id=self.tokenizer.pad_token_id,
            overrides=generation_kwargs,
        )
        eos = config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        return rollout(
            self.model,
            model_inputs,
            gen_emb_id=self.gen_emb_id,
            disc_emb_id=self.disc_emb_id,
            eos_token_ids=eos_ids,
            generation_config=config,
            generation_kwargs=hooks,
            on_missing=self.on_missing_gen_emb,
            with_disc=with_disc,
        )

    def _normalised(self, states: torch.Tensor) -> torch.Tensor:
        vectors = torch.nn.functional.normalize(states.float(), p=2, dim=-1)
        bad = (~torch.isfinite(vectors).all(dim=-1)).nonzero().flatten().tolist()
        if bad:
            raise FloatingPointError(
                f"non-finite embedding for batch rows {bad} (dtype {self.model.dtype}); "
                "try model_kwargs={'dtype': 'float32'}"
            )
        return vectors.to(self.model.device)

    def _token_id(self, token: str, source: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"{source} is not a UME-R1 checkpoint: its tokenizer has no {token} token")
        return token_id

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
        """Write the model (safetensors), the processor and the UME-R1 settings to ``output_path``."""
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
        versions are skipped with a warning.
        """
        hub_kwargs = {
            "token": token,
            "cache_folder": cache_folder,
            "revision": revision,
            "local_files_only": local_files_only,
        }
        config = cls.load_config(model_name_or_path, subfolder=subfolder, **hub_kwargs)
        unknown = sorted(set(config) - set(cls.config_keys))
        if unknown:
            logger.warning("Ignoring unknown UME-R1 settings %s in %s", unknown, model_name_or_path)
        settings = {key: value for key, value in config.items() if key in cls.config_keys}
        path = f"{model_name_or_path}/{subfolder}" if subfolder else model_name_or_path
        return cls(path, **settings, **hub_kwargs, model_kwargs=model_kwargs, processor_kwargs=processor_kwargs)


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
    rows = model.encode(list(inputs), output_value=None, **kwargs)
    module = model[0]
    return ReasonedEmbeddings(
        embeddings=np.stack([row["sentence_embedding"].float().cpu().numpy() for row in rows]),
        reasoning=[module.decode_reasoning(row["generated_ids"]) for row in rows],
        forced=[bool(row["gen_emb_forced"]) for row in rows],
    )
