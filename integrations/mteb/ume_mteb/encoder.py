"""The behavioural half: one thin mteb encoder over the UME-R1 SentenceTransformer.

Each row of an mteb batch becomes one core input (:mod:`ume_mteb.batches`) and the task instruction
goes to the core as ``prompt``; prompt layout, frame sampling, pixel bounds and both modes live in
:mod:`ume_plugins`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
from mteb.models.abs_encoder import AbsEncoder
from mteb.types import PromptType

from ume_mteb.batches import rows_of, undecoded_videos
from ume_mteb.model_meta import meta_for
from ume_mteb.modes import DEFAULT_MODE, MODES

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.types import BatchedInput
    from sentence_transformers import SentenceTransformer
    from torch.utils.data import DataLoader

logger = logging.getLogger(__name__)


class UMER1Encoder(AbsEncoder):
    """UME-R1 for mteb, in generative or discriminative mode.

    Instructions (UME-R1 was trained with task instructions): queries and symmetric tasks get
    ``get_instruction(task_metadata, prompt_type)``; documents get only an instruction their task
    declares for documents (``prompt={"document": ...}``), as MMEB gives targets their own
    instruction or none.

    Args:
        model: A SentenceTransformer whose module is ``ume_plugins.UMER1Embedder``.
        mode: ``"generative"`` (reasoning, the mode of the reported scores) or ``"discriminative"``.
        generation_kwargs: Generative mode only: overrides for ``generate`` (e.g. ``max_new_tokens``).
    """

    def __init__(
        self,
        model: SentenceTransformer,
        mode: str = DEFAULT_MODE,
        generation_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.model = model
        self.mode = mode
        self.generation_kwargs = dict(generation_kwargs or {})

    def instruction(self, task_metadata: TaskMetadata, prompt_type: PromptType | None) -> str:
        """The instruction placed before each input's text for this task and side."""
        if prompt_type == PromptType.document:
            prompt = task_metadata.prompt
            return (prompt.get(PromptType.document.value) or "") if isinstance(prompt, dict) else ""
        return self.get_instruction(task_metadata, prompt_type)

    def encode(
        self,
        inputs: DataLoader[BatchedInput],
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Embed every row of ``inputs``; L2-normalised float32, one row per input."""
        from tqdm.auto import tqdm

        instruction = self.instruction(task_metadata, prompt_type) or None
        hide_progress = not kwargs.get("show_progress_bar", True)
        vectors = []
        for batch in tqdm(undecoded_videos(inputs), desc=f"UME-R1 ({self.mode})", disable=hide_progress):
            rows = rows_of(batch)
            vectors.append(
                self.model.encode(
                    rows,
                    prompt=instruction,
                    mode=self.mode,
                    batch_size=len(rows),
                    show_progress_bar=False,
                    generation_kwargs=self.generation_kwargs or None,
                )
            )
        dim = self.model.get_embedding_dimension()
        return np.concatenate(vectors) if vectors else np.zeros((0, dim), dtype=np.float32)


def load_model(
    name_or_path: str = "ume-r1",
    mode: str = DEFAULT_MODE,
    device: str | None = None,
    *,
    revision: str | None = None,
    generation_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> UMER1Encoder:
    """Load a UME-R1 checkpoint as an mteb encoder with its ``ModelMeta``.

    Args:
        name_or_path: ``"ume-r1"`` / ``"ume-r1-2b"``, ``"ume-r1-7b"``, ``"ume-r1-tiny"`` (offline,
            random), a hub id, or a local UME-R1 checkpoint folder.
        mode: ``"generative"`` or ``"discriminative"``.
        device: Device to run on (precision follows it unless ``model_kwargs`` pins a dtype).
        revision: Hub revision; defaults to the pinned one of the published checkpoints.
        generation_kwargs: Generative mode only: overrides for ``generate``.
        **kwargs: Passed to ``ume_plugins.load`` (``max_new_tokens``, ``model_kwargs``, ...).

    Returns:
        The encoder; pass it to ``mteb.evaluate`` or ``mteb.mock_run``.
    """
    import ume_plugins
    from ume_plugins.tiny import RANDOM_WEIGHTS_KEY

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if revision is not None:
        kwargs["revision"] = revision
    model = ume_plugins.load(name_or_path, mode=mode, device=device, **kwargs)
    encoder = UMER1Encoder(model, mode=mode, generation_kwargs=generation_kwargs)
    module = model[0]
    encoder.mteb_model_meta = meta_for(
        name_or_path,
        mode=mode,
        revision=revision,
        embed_dim=module.get_embedding_dimension(),
        n_parameters=sum(parameter.numel() for parameter in module.model.parameters()),
        generation={"max_new_tokens": module.max_new_tokens, **(generation_kwargs or {})},
    )
    if getattr(module.model.config, RANDOM_WEIGHTS_KEY, False):
        logger.warning(
            "%s has RANDOM weights: its scores, reported as %s, are meaningless and only show that the "
            "pipeline runs. Use ume-r1 or ume-r1-7b for real scores.",
            name_or_path,
            encoder.mteb_model_meta.name,
        )
    return encoder
