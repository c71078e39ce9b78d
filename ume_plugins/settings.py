"""The saved embedding settings: one frozen object, each default declared once.

These settings decide what a vector is (mode, pixel bounds, frames, reasoning budget, prompt
length, what happens without ``<gen_emb>``); they are saved with a model (``ume_r1_config.json``)
and reloaded with it. What a caller allows at run time (network, file URLs, size caps) is not
here: see :mod:`ume_plugins.policy`, which a saved folder can never set.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger(__name__)

Mode = Literal["generative", "discriminative", "both"]
MODES: tuple[str, ...] = ("generative", "discriminative", "both")
OnMissing = Literal["force", "raise"]
ON_MISSING: tuple[str, ...] = ("force", "raise")
# What encode(..., output_value=...) may ask for in each mode (None gives every key per row).
_GENERATIVE_KEYS = ("sentence_embedding", "sample_embeddings", "generated_ids", "gen_emb_forced", "answer_forced")
OUTPUT_KEYS: dict[str, tuple[str, ...]] = {
    "discriminative": ("sentence_embedding",),
    "generative": _GENERATIVE_KEYS,
    "both": (*_GENERATIVE_KEYS, "disc_embedding"),
}
# Keys older versions saved that are runtime choices now: read back, they could loosen the loading
# user's security (URL and pixel limits) or start code of the folder's choosing (vllm_kwargs).
RUNTIME_KEYS = frozenset(
    {"allow_network", "allow_file_urls", "url_timeout", "max_url_bytes", "max_decoded_pixels", "backend", "vllm_kwargs"}
)


@dataclass(frozen=True)
class EmbeddingSettings:
    """How inputs become vectors; saved with the model.

    Attributes:
        mode: ``"generative"`` (the mode of every reported UME-R1 score), ``"discriminative"`` or
            ``"both"``; see :class:`~ume_plugins.module.UMER1Embedder`.
        blank_image_for_text: Give text-only inputs the blank white image of the official eval.
        min_pixels: Lower pixel bound of the first resize (qwen-vl-utils ``fetch_image``).
        max_pixels: Upper pixel bound of the first resize.
        processor_min_pixels: Lower pixel bound of the processor's resize.
        processor_max_pixels: Upper pixel bound of the processor's resize.
        num_frames: Frames sampled uniformly from each video (None keeps all).
        max_new_tokens: Reasoning budget of generative mode (upstream's eval budget).
        max_length: Longest prompt in tokens, measured on the full generative prompt in every mode;
            a longer input text is cut to fit, with a warning. None: the decoder's positions minus
            ``max_new_tokens`` (at least half the positions), so prompt and reasoning fit.
        on_missing_gen_emb: When a rollout ends without ``<gen_emb>``: ``"force"`` appends it after
            the truncated reasoning and flags the row; ``"raise"`` raises
            :class:`~ume_plugins.engine.GenEmbMissingError`.
        max_slots: Most rollouts decoded at once; a larger ``batch_size`` keeps the slots full as
            rollouts finish (continuous batching). Bounds the KV-cache memory.
        thinking_budget: Reasoning tokens after which an unclosed ``<think>`` is closed by feeding
            ``</think><answer>`` (flagged ``answer_forced``); None never closes it. Faster, at a
            quality cost that is unmeasured (see :mod:`ume_plugins.engine.stages`).
        answer_budget: Tokens the model may answer after a forced ``</think><answer>`` before
            ``<gen_emb>`` is forced.
        decode_compile: How the slot engine runs a decode step: ``"auto"`` (CUDA graphs on CUDA,
            else eager), ``"eager"``, ``"cuda_graphs"`` or ``"torch_compile"``.

    The engine's settings (the last four) are range-checked by
    :class:`~ume_plugins.engine.EngineSpec` when the module builds its engine.
    """

    mode: Mode = "generative"
    blank_image_for_text: bool = True
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 16384 * 28 * 28
    processor_min_pixels: int = 28 * 28
    processor_max_pixels: int = 1536 * 1536
    num_frames: int | None = 8
    max_new_tokens: int = 8192
    max_length: int | None = None
    on_missing_gen_emb: OnMissing = "force"
    max_slots: int = 32
    thinking_budget: int | None = None
    answer_budget: int = 64
    decode_compile: str = "auto"

    def __post_init__(self) -> None:
        """Check every value, so that no invalid settings object ever exists.

        Raises:
            ValueError: A setting out of range or not one of its choices.
        """
        check_mode(self.mode)
        if self.on_missing_gen_emb not in ON_MISSING:
            raise ValueError(f"on_missing_gen_emb must be one of {ON_MISSING}, got {self.on_missing_gen_emb!r}")
        if not 0 < self.min_pixels <= self.max_pixels or not 0 < self.processor_min_pixels <= self.processor_max_pixels:
            raise ValueError("pixel bounds must satisfy 0 < min_pixels <= max_pixels")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"num_frames must be positive or None, got {self.num_frames}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be positive, got {self.max_new_tokens}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be positive or None, got {self.max_length}")

    def replace(self, **changes: Any) -> EmbeddingSettings:
        """A copy with ``changes`` applied (and checked).

        Raises:
            ValueError: An unknown setting or an invalid value.
        """
        unknown = sorted(set(changes) - set(SETTING_NAMES))
        if unknown:
            raise ValueError(f"unknown UME-R1 setting(s) {unknown}; known: {list(SETTING_NAMES)}")
        return dataclasses.replace(self, **changes)

    def to_config(self) -> dict[str, Any]:
        """The settings as saved in ``ume_r1_config.json``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], source: str) -> EmbeddingSettings:
        """Settings read from a saved folder; keys this version does not save are skipped with a warning.

        Args:
            config: The saved settings (without the adapters' record).
            source: The folder or hub id, named in warnings.
        """
        runtime = sorted(RUNTIME_KEYS & set(config))
        if runtime:
            logger.warning(
                "Ignoring %s saved in %s: these are the caller's choices, never a saved folder's; "
                "pass them to ume_plugins.load instead",
                runtime,
                source,
            )
        unknown = sorted(set(config) - set(SETTING_NAMES) - RUNTIME_KEYS)
        if unknown:
            logger.warning("Ignoring unknown UME-R1 settings %s in %s", unknown, source)
        return cls(**{key: value for key, value in config.items() if key in SETTING_NAMES})

    def engine_options(self) -> dict[str, Any]:
        """The settings the generative engine reads, under :class:`~ume_plugins.engine.EngineSpec`'s names."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "on_missing": self.on_missing_gen_emb,
            "max_slots": self.max_slots,
            "thinking_budget": self.thinking_budget,
            "answer_budget": self.answer_budget,
            "compile": self.decode_compile,
            "processor_pixels": (self.processor_min_pixels, self.processor_max_pixels),
        }

    def prompt_token_limit(self, max_positions: int) -> int:
        """The longest prompt accepted: ``max_length``, else the positions the reasoning budget leaves."""
        if self.max_length is not None:
            return self.max_length
        return max(max_positions - self.max_new_tokens, max_positions // 2)


class SettingsAttributes:
    """Each setting of ``self.settings`` read and assigned as an attribute (``module.mode``).

    sentence-transformers reads a module's ``config_keys`` as attributes. The settings object is
    frozen: assigning one setting replaces it with a checked copy, then calls :meth:`settings_changed`.
    """

    settings: EmbeddingSettings

    def __getattr__(self, name: str) -> Any:
        if name in SETTING_NAMES and "settings" in self.__dict__:
            return getattr(self.__dict__["settings"], name)
        return super().__getattr__(name)  # type: ignore[misc]

    def __setattr__(self, name: str, value: Any) -> None:
        if name in SETTING_NAMES:
            name, value = "settings", self.settings.replace(**{name: value})
        super().__setattr__(name, value)
        if name == "settings":
            self.settings_changed()

    def settings_changed(self) -> None:
        """Called after ``settings`` was assigned (nothing by default)."""


def check_mode(mode: str) -> Mode:
    """Return ``mode`` if it is one of :data:`MODES`.

    Raises:
        ValueError: An unknown mode.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


SETTING_NAMES: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(EmbeddingSettings))
DEFAULT_SETTINGS = EmbeddingSettings()
