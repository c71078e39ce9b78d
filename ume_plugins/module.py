"""UME-R1 as a sentence-transformers input module: load, save, preprocess, forward."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from sentence_transformers.base.modules import InputModule

from ume_plugins.adapters import ADAPTERS_KEY, AdapterMixin, load_saved_adapters, per_call_adapter, save_weights
from ume_plugins.checkpoints import HubOptions, add_requirements
from ume_plugins.decoding import decode
from ume_plugins.device import DeviceChoice
from ume_plugins.engine import BACKENDS, Backend, Engine, EngineSpec
from ume_plugins.inputs import parse
from ume_plugins.policy import InputPolicy
from ume_plugins.processing import PROCESSING_KWARGS_REFUSED, UMEProcessor
from ume_plugins.reasoning import ForcedGenEmbWarning
from ume_plugins.settings import DEFAULT_SETTINGS, SETTING_NAMES, EmbeddingSettings, SettingsAttributes, check_mode
from ume_plugins.tiny import RANDOM_WEIGHTS_KEY, RANDOM_WEIGHTS_WARNING
from ume_plugins.vectors import generative_outputs, normalised

logger = logging.getLogger(__name__)


class UMER1Embedder(SettingsAttributes, AdapterMixin, InputModule):
    """UME-R1 (Qwen2-VL) embeddings; the mode decides which token's last-layer state is the vector.

    ``"generative"`` (default; every reported UME-R1 score) reasons and reads the ``<gen_emb>`` it
    writes (a rollout of up to ``max_new_tokens``); ``"discriminative"`` reads ``<disc_emb>`` after
    one forward pass; ``"both"`` adds the discriminative vector of the same prefill
    (``disc_embedding``). The modes' spaces differ: never mix them in one index. The settings
    (:class:`~ume_plugins.settings.EmbeddingSettings`) are saved and read as attributes
    (``module.mode``); assigning one checks it. Vectors are L2-normalised float32.

    Args:
        model_name_or_path: Local checkpoint directory or hub id of a UME-R1 (Qwen2-VL) checkpoint.
        settings: The embedding settings.
        policy: What the caller allows inputs to do (never saved; see :mod:`ume_plugins.policy`).
        backend: Generative engine, never saved: ``"hf"`` (KV-cached decoding loop) or ``"vllm"``
            (vLLM writes the reasoning; needs ``pip install "ume-plugins[vllm]"`` and a GPU).
        vllm_kwargs: Extra arguments for ``vllm.LLM``; never saved.
        model_kwargs: Passed to the model's ``from_pretrained``; dtype and attention default to
            the device's (see :mod:`ume_plugins.device`).
        processor_kwargs: Passed to ``AutoProcessor.from_pretrained``.
        hub: Revision, token, cache folder and offline switch for the hub.
        device: Device the model is loaded for (precision follows it); defaults to the best available.
    """

    config_file_name = "ume_r1_config.json"
    config_keys = list(SETTING_NAMES)
    forward_kwargs = {"mode", "generation_kwargs", "adapter", "num_samples", "seed"}
    save_in_root = True

    def __init__(
        self,
        model_name_or_path: str,
        *,
        settings: EmbeddingSettings = DEFAULT_SETTINGS,
        policy: InputPolicy | None = None,
        backend: Backend = "hf",
        vllm_kwargs: dict[str, Any] | None = None,
        model_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        hub: HubOptions | None = None,
        device: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import Qwen2VLForConditionalGeneration

        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.settings, self.policy = settings, policy or InputPolicy()
        self.backend, self.vllm_kwargs = backend, vllm_kwargs
        hub = hub or HubOptions()
        self._device_choice = DeviceChoice.pick(device, model_kwargs)
        self.name_or_path, self.revision = model_name_or_path, hub.revision
        self.model = Qwen2VLForConditionalGeneration.from_pretrained(
            model_name_or_path, **hub.for_transformers(), **self._device_choice.load_kwargs
        ).eval()
        max_positions = self.model.config.text_config.max_position_embeddings
        self.ume_processor = UMEProcessor.from_pretrained(self.name_or_path, max_positions, hub, processor_kwargs)
        self.processor = self.ume_processor.processor
        spec = EngineSpec.from_tokenizer(self.tokenizer, model_name_or_path, revision=hub.revision)
        self._engine = Engine(spec, self.tokenizer)
        self.gen_emb_id, self.disc_emb_id = self._engine.spec.gen_emb_id, self._engine.spec.disc_emb_id
        self.forced_gen_emb = ForcedGenEmbWarning()
        if getattr(self.model.config, RANDOM_WEIGHTS_KEY, False):
            logger.warning(RANDOM_WEIGHTS_WARNING)

    def settings_changed(self) -> None:
        """Rebuild the engine now, so that its settings are checked at once, not at the next encode."""
        if "_engine" in self.__dict__:
            self.engine()

    @property
    def tokenizer(self) -> Any:
        """The checkpoint's tokenizer."""
        return self.processor.tokenizer

    @property
    def modalities(self) -> list[str]:
        """Text, images and videos, alone or combined, and chat messages (see :mod:`ume_plugins.inputs`)."""
        return ["text", "image", "video", "message"]

    @property
    def max_seq_length(self) -> int:
        """The longest prompt in tokens, as sentence-transformers reads it (:attr:`prompt_token_limit`).

        Setting it sets ``max_length``; ``None`` gives back the room the reasoning budget leaves.
        """
        return self.prompt_token_limit

    @max_seq_length.setter
    def max_seq_length(self, value: int | None) -> None:
        self.max_length = value

    @property
    def prompt_token_limit(self) -> int:
        """The longest prompt accepted (see :meth:`EmbeddingSettings.prompt_token_limit`)."""
        return self.settings.prompt_token_limit(self.ume_processor.max_positions)

    def get_embedding_dimension(self) -> int:
        """Size of the vectors: the decoder's hidden size."""
        return self.model.config.text_config.hidden_size

    def preprocess(
        self,
        inputs: Sequence[Any],
        prompt: str | None = None,
        *,
        mode: str | None = None,
        processing_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Parse (unless parsed already), decode and process a batch (see :mod:`ume_plugins.processing`).

        Args:
            inputs: Raw inputs (:mod:`ume_plugins.inputs`; errors name their position here) or
                :class:`~ume_plugins.inputs.InputSpec`, as the model's ``encode`` passes them.
            prompt: Task instruction placed before each input's text (joined by one space).
            mode: Embedding mode; discriminative prompts stop right after ``<disc_emb>``.
            processing_kwargs: Refused: pixel bounds and frames are settings of this module.
            **kwargs: Ignored (``task``, ``generation_kwargs``, ...).

        Raises:
            UMEInputError: An input could not be read; names its index.
            ValueError: An unknown mode, or ``processing_kwargs``.
        """
        if processing_kwargs:
            raise ValueError(PROCESSING_KWARGS_REFUSED)
        mode = check_mode(mode or self.settings.mode)
        specs = [parse(raw, index, self.policy) for index, raw in enumerate(inputs)]
        items = [decode(spec, self.policy, self.settings) for spec in specs]
        return self.ume_processor(items, prompt, mode, self.settings)

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
            generation_kwargs: Generative only: ``generate`` overrides (``max_new_tokens``,
                ``do_sample``, ``temperature``, ``logits_processor``, ``stopping_criteria``, ...).
            num_samples: Generative only: sampled rollouts per input (k); the vector is the
                L2-normalised mean of their k unit vectors (all k in ``sample_embeddings``).
            seed: Generative only: seed of sampled rollouts; a rollout depends only on its input,
                the seed and its index. None draws it from torch's global generator.
            **kwargs: Ignored, but for ``adapter=`` (the adapters to run for this call only; see
                :func:`~ume_plugins.adapters.per_call_adapter`).

        Returns:
            ``sentence_embedding`` (``[batch, dim]``, L2-normalised float32, on the model's device);
            in generative and ``"both"`` modes, the outputs of :func:`~ume_plugins.vectors.generative_outputs`.
        """
        mode = check_mode(features.get("ume_mode", mode) or self.settings.mode)
        model_inputs = {key: value for key, value in features.items() if not key.startswith("ume_")}
        generation_kwargs = dict(generation_kwargs or {})
        if mode == "discriminative":
            if num_samples != 1:
                raise ValueError("num_samples needs generative mode: discriminative mode has nothing to sample")
            return {"sentence_embedding": normalised(self.engine().disc_states(self.model, model_inputs), self.model)}
        result = self.engine().rollouts(
            self.model,
            model_inputs,
            generation_kwargs=generation_kwargs,
            with_disc=mode == "both",
            num_samples=num_samples,
            seed=seed,
            items=features.get("ume_items"),
        )
        self.forced_gen_emb.add(result.forced, generation_kwargs.get("max_new_tokens", self.settings.max_new_tokens))
        return generative_outputs(result, num_samples, self.model)

    def decode_reasoning(self, generated_ids: torch.Tensor) -> str:
        """The reasoning text of one row of ``generated_ids``."""
        return self.tokenizer.decode(generated_ids.tolist(), skip_special_tokens=True)

    def engine(self) -> Engine:
        """The engine, rebuilt when a setting it reads changed (settings may be set after loading).

        Raises:
            ValueError: An engine setting out of range.
        """
        spec = self._engine.spec  # the checkpoint's token ids and name are kept
        wanted = replace(spec, backend=self.backend, vllm_kwargs=self.vllm_kwargs, **self.settings.engine_options())
        if wanted != spec:
            self._engine = Engine(wanted, self.tokenizer)
        return self._engine

    def on_model_ready(self, model: Any) -> None:
        """Re-pick precision and attention when the model landed on another device than guessed."""
        self._device_choice.follow(self.model)

    def save(self, output_path: str, *args: Any, safe_serialization: bool = True, **kwargs: Any) -> None:
        """Write the model (safetensors), the processor, the settings and the package requirements.

        With adapters loaded, the base weights are written as a plain checkpoint and each adapter
        under ``adapters/<name>/``.
        """
        save_weights(self.model, output_path)
        self.processor.save_pretrained(output_path)
        self.save_config(output_path)
        add_requirements(output_path, self.requirements())

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
        """Load from a saved folder or a raw UME-R1 checkpoint, with its saved settings and adapters.

        Keys this version does not save (such as a security setting an older version saved) are
        skipped with a warning; saved LoRA adapters are reloaded and checked.
        """
        hub = HubOptions(revision, token, cache_folder, local_files_only)
        config = cls.load_config(model_name_or_path, subfolder=subfolder, **hub.for_sentence_transformers())
        adapters = config.pop(ADAPTERS_KEY, None)
        settings = EmbeddingSettings.from_config(config, model_name_or_path)
        path = f"{model_name_or_path}/{subfolder}" if subfolder else model_name_or_path
        module = cls(path, settings=settings, hub=hub, model_kwargs=model_kwargs, processor_kwargs=processor_kwargs)
        if adapters:
            load_saved_adapters(module.model, adapters, model_name_or_path, subfolder, hub)
        return module
