"""The SentenceTransformer of a UME-R1 model: what ``ume_plugins.load`` and ``SentenceTransformer("ume-r1")`` return.

A plain subclass, so that everything UME-R1 adds to the host stays in one visible place:

- loading: our aliases and pinned revisions, raw UME-R1 checkpoints (built with the public
  ``modules=[...]`` argument) and saved folders (our module class is trusted without
  ``trust_remote_code``, and only for this class);
- ``encode``: every input is parsed once, before any batch runs, so a bad input fails the call
  at once, naming its index in the caller's list; ``output_value`` is checked against the mode;
  the forced-``<gen_emb>`` warning is said once per call;
- the MMEB-V2 task instructions as named prompts (:data:`ume_plugins.prompts.NAMED_PROMPTS`);
- ``load_adapter`` checks that every weight of the adapter landed (the module's own loader).

The private host names used here (``_module_classes``, ``_input_length``) are listed, with their
contract tests, in ``docs/host-contracts.md``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import load_file_path

from ume_plugins.checkpoints import MODULE_CLASS_REF, HubOptions, is_ume_r1_checkpoint, resolve_name
from ume_plugins.inputs import InputSpec, parse
from ume_plugins.module import UMER1Embedder
from ume_plugins.prompts import NAMED_PROMPTS
from ume_plugins.settings import OUTPUT_KEYS, check_mode

_ENCODE = inspect.signature(SentenceTransformer.encode)


class UMESentenceTransformer(SentenceTransformer):
    """A SentenceTransformer whose module is :class:`~ume_plugins.module.UMER1Embedder`.

    Args:
        model_name_or_path: An alias (``"ume-r1"``, ``"ume-r1-2b"``, ``"ume-r1-7b"``,
            ``"ume-r1-tiny"``), a hub id, a saved UME-R1 folder or a raw UME-R1 checkpoint.
        modules: Modules to use instead of loading (``model_name_or_path`` must then be None).
        prompts: Named prompts, added to (and overriding) :data:`~ume_plugins.prompts.NAMED_PROMPTS`.
        revision: Hub revision; UME-R1 hub ids default to their pinned one.
        token: Hub token.
        cache_folder: Hub cache directory.
        local_files_only: Never reach the hub.
        model_kwargs: Passed to the model's ``from_pretrained``.
        processor_kwargs: Passed to ``AutoProcessor.from_pretrained``.
        **kwargs: Other ``SentenceTransformer`` arguments (``device``, ``default_prompt_name``, ...).

    Raises:
        ValueError: The checkpoint is not UME-R1.
    """

    # sentence-transformers resolves modules.json class references here first.
    _module_classes = MappingProxyType({MODULE_CLASS_REF: UMER1Embedder})

    def __init__(
        self,
        model_name_or_path: str | None = None,
        *,
        modules: Any = None,
        prompts: Mapping[str, str] | None = None,
        revision: str | None = None,
        token: bool | str | None = None,
        cache_folder: str | None = None,
        local_files_only: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        name = model_name_or_path
        resolved = resolve_name(name, revision) if isinstance(name, str) else None
        if resolved is not None:
            name, revision = resolved.path, resolved.revision
        cache_folder = cache_folder or os.getenv("SENTENCE_TRANSFORMERS_HOME")
        hub = HubOptions(revision, token, cache_folder, local_files_only)
        if name and modules is None and load_file_path(name, "modules.json", **hub.for_sentence_transformers()) is None:
            if not is_ume_r1_checkpoint(name, hub):
                raise ValueError(
                    f"{model_name_or_path} is not a UME-R1 checkpoint (a Qwen2-VL with <gen_emb> and <disc_emb>)"
                )
            load = hub.for_sentence_transformers()
            modules = [UMER1Embedder.load(name, **load, model_kwargs=model_kwargs, processor_kwargs=processor_kwargs)]
            name = None
        super().__init__(
            name,
            modules=modules,
            prompts={**NAMED_PROMPTS, **(prompts or {})},
            **hub.for_sentence_transformers(),
            model_kwargs=model_kwargs,
            processor_kwargs=processor_kwargs,
            **kwargs,
        )
        if not isinstance(self[0], UMER1Embedder):
            raise ValueError(
                f"{model_name_or_path} did not load as a UME-R1 model (first module: {type(self[0]).__name__})"
            )

    def load_adapter(self, *args: Any, **kwargs: Any) -> str:
        """Load a LoRA/DoRA adapter with every weight checked: :meth:`UMER1Embedder.load_adapter`."""
        return self[0].load_adapter(*args, **kwargs)

    @staticmethod
    def _input_length(sample: Any) -> int:
        # sentence-transformers batches inputs of similar length together; ours arrive parsed.
        if isinstance(sample, InputSpec):
            return sample.size
        return SentenceTransformer._input_length(sample)

    def encode(self, inputs: Any = None, *args: Any, **kwargs: Any) -> Any:
        """``SentenceTransformer.encode``, with every input checked before any batch runs.

        Arguments are those of ``SentenceTransformer.encode`` (sentence-transformers 6.2), plus the
        module's ``mode``, ``generation_kwargs``, ``num_samples``, ``seed`` and ``adapter``.
        ``output_value`` may be ``None`` (every output per input) or one of the mode's outputs
        (:data:`~ume_plugins.settings.OUTPUT_KEYS`); ``token_embeddings`` is refused.

        Raises:
            UMEInputError: An input cannot be read; names its index in ``inputs``.
            ValueError: An ``output_value`` the mode does not produce, or another bad argument.
        """
        if inputs is None and "sentences" in kwargs:  # sentence-transformers' deprecated name
            inputs = kwargs.pop("sentences")
        module: UMER1Embedder = self[0]
        call = _ENCODE.bind_partial(self, inputs, *args, **kwargs).arguments
        mode = check_mode(call.get("kwargs", {}).get("mode") or module.settings.mode)
        _check_output_value(call.get("output_value", "sentence_embedding"), mode, call.get("normalize_embeddings"))
        single = self.is_singular_input(inputs)
        batch = [inputs] if single else inputs.tolist() if isinstance(inputs, np.ndarray) else list(inputs)
        specs = [parse(raw, index, module.policy) for index, raw in enumerate(batch)]
        with module.forced_gen_emb.once_per_call():
            return super().encode(specs[0] if single else specs, *args, **kwargs)


def _check_output_value(output_value: str | None, mode: str, normalize: bool | None) -> None:
    if normalize and output_value not in (None, "sentence_embedding", "disc_embedding"):
        # sentence-transformers normalises along dim 1: the sample axis of [batch, k, dim] outputs.
        raise ValueError(
            f"normalize_embeddings applies to sentence_embedding and disc_embedding, not {output_value!r}: "
            "every UME-R1 vector is L2-normalised already"
        )
    if output_value is None or output_value in OUTPUT_KEYS[mode]:
        return
    if output_value == "token_embeddings":
        raise ValueError(
            "output_value='token_embeddings' is not supported: a UME-R1 vector is the state of one token "
            "(<gen_emb> or <disc_emb>), not a pooling of token embeddings; use output_value=None for every "
            f"output of each input, or one of {list(OUTPUT_KEYS[mode])}"
        )
    raise ValueError(
        f"output_value={output_value!r} is not an output of {mode} mode; use None or one of {list(OUTPUT_KEYS[mode])}"
    )
