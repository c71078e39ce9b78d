"""UME-R1: reasoning-driven generative multimodal embeddings (Qwen2-VL), both embedding modes.

Drop-in replacement for ``mteb/models/model_implementations/ume_r1.py`` (see SUBMITTING.md). It
adds, over the generative-only wrapper:

- ``mode="discriminative"``: one forward pass, the last-layer state at ``<disc_emb>``;
- task instructions (``get_instruction``) before the input's text on the query side; documents get
  only an instruction their task declares for documents;
- the official eval's input handling: every image and video frame resized as qwen-vl-utils does
  (multiples of 28 within [3136, 12,845,056] pixels), then by the processor within 1536 * 1536
  pixels; 8 frames sampled with ``linspace(0, n - 1, 8)`` cast to int;
- the ``<gen_emb>`` state read by one forward pass over prompt + reasoning (the maintainers'
  equivalent definition), so no per-step hidden states are kept; a rollout that never writes
  ``<gen_emb>`` gets it appended after its reasoning, with a warning (no silent fallback).

Self-contained (transformers only); ``ume-plugins`` on PyPI implements the same for
sentence-transformers, and its ``ume-mteb`` package holds the tests this file is checked with.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import OutputDType, PromptType
from tqdm.auto import tqdm

if TYPE_CHECKING:
    import torch
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.types import Array, BatchedInput
    from PIL import Image
    from torch.utils.data import DataLoader

logger = logging.getLogger(__name__)

UME_R1_EMBED_PROMPT = (
    "Represent the above input text, images, videos, or any combination of the three as embeddings. "
    "First output the thinking process in <think> </think> tags and then summarize the entire input "
    "in a word or sentence. "
    "Finally, use the <gen_emb> tag to represent the entire input."
)
MODES = ("generative", "discriminative")
# the official eval resizes twice, video frames as images: qwen-vl-utils' fetch_image within
# FETCH_PIXELS, then the processor within PROCESSOR_PIXELS; sides are rounded to multiples of 28
# before each cap, so one resize to the tighter bounds lands elsewhere for some sizes
FETCH_PIXELS = (4 * 28 * 28, 16384 * 28 * 28)
PROCESSOR_PIXELS = (28 * 28, 1536 * 1536)
PATCH = 28
MAX_ASPECT_RATIO = 200
# the official eval gives text-only inputs a white 28x28 image (56x56 after resizing)
BLANK_IMAGE_SIDE = 28


class UMER1Wrapper(AbsEncoder):
    """UME-R1 in generative (reasoning, the mode of the reported scores) or discriminative mode."""

    def __init__(
        self,
        model: str,
        revision: str | None = None,
        device: str | None = None,
        mode: str = "generative",
        num_frames: int = 8,
        max_new_tokens: int = 8192,
        **kwargs: Any,
    ) -> None:
        import torch
        from transformers import AutoProcessor, Qwen2VLForConditionalGeneration
        from transformers.utils.import_utils import is_flash_attn_2_available

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.num_frames = num_frames
        self.max_new_tokens = max_new_tokens
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        kwargs.setdefault("attn_implementation", "flash_attention_2" if is_flash_attn_2_available() else "sdpa")
        kwargs.setdefault("dtype", torch.bfloat16)
        self.model = Qwen2VLForConditionalGeneration.from_pretrained(model, revision=revision, **kwargs)
        self.model = self.model.to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(model, revision=revision)
        self.processor.tokenizer.padding_side = "left"
        vocab = self.processor.tokenizer.get_vocab()
        self.gen_emb_id, self.disc_emb_id = vocab["<gen_emb>"], vocab["<disc_emb>"]

    def encode(
        self,
        inputs: DataLoader[BatchedInput],
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        show_progress_bar: bool = True,
        **kwargs: Any,
    ) -> Array:
        """Embed each row (its text, images and video fused) under the task's instruction."""
        import torch

        instruction = self._instruction(task_metadata, prompt_type)
        if "video" in getattr(inputs.dataset, "features", {}):
            inputs.collate_fn = _FrameSampler(self.num_frames, inputs.collate_fn)
        embeddings = []
        with torch.inference_mode():
            for batch in tqdm(inputs, desc="Encoding", disable=not show_progress_bar):
                model_inputs = self._model_inputs(batch, instruction)
                if self.mode == "discriminative":
                    embeddings.append(self._state_at_last(model_inputs, self.disc_emb_id))
                else:
                    embeddings.append(self._generative(model_inputs))
        return torch.nn.functional.normalize(torch.cat(embeddings).float(), dim=-1).cpu().numpy()

    def _instruction(self, task_metadata: TaskMetadata, prompt_type: PromptType | None) -> str:
        if prompt_type == PromptType.document:
            prompt = task_metadata.prompt
            return (prompt.get("document") or "") if isinstance(prompt, dict) else ""
        return self.get_instruction(task_metadata, prompt_type)

    def _model_inputs(self, batch: dict[str, list[Any]], instruction: str) -> dict[str, torch.Tensor]:
        """Chat prompts (visual content first, then instruction and text) and processor features."""
        texts, images, videos = [], [], []
        size = len(next(iter(batch[key] for key in ("text", "image", "video") if key in batch)))
        for row in range(size):
            text = (batch.get("text") or [""] * size)[row] or ""
            row_images = batch.get("image", [None] * size)[row]
            row_images = [_fit(image) for image in (row_images if isinstance(row_images, list) else [row_images])]
            row_images = [image for image in row_images if image is not None]
            video = batch.get("video", [None] * size)[row]
            frames = _frames(video) if video is not None else None
            if not row_images and frames is None:
                from PIL import Image

                row_images = [_fit(Image.new("RGB", (BLANK_IMAGE_SIDE, BLANK_IMAGE_SIDE), (255, 255, 255)))]
            combined = " ".join(part for part in (instruction, text) if part)
            combined = combined.replace("<|image_pad|>", "").replace("<|video_pad|>", "").strip()
            content = [{"type": "image"} for _ in row_images] + ([{"type": "video"}] if frames else [])
            content.append({"type": "text", "text": f"{combined}\n<disc_emb>\n{UME_R1_EMBED_PROMPT}"})
            texts.append(
                self.processor.apply_chat_template(
                    [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
                )
            )
            images += row_images
            videos += [frames] if frames else []
        bounds = {"shortest_edge": PROCESSOR_PIXELS[0], "longest_edge": PROCESSOR_PIXELS[1]}
        return self.processor(
            text=texts,
            images=images or None,
            videos=videos or None,
            padding=True,
            return_tensors="pt",
            images_kwargs={"size": bounds},
            videos_kwargs={"size": bounds, "do_sample_frames": False, "cap_pixels_per_frame": False},
        ).to(self.device)

    def _state_at_last(self, model_inputs: dict[str, torch.Tensor], token_id: int) -> torch.Tensor:
        """Last-layer state at each row's last ``token_id``."""
        import torch

        hidden = self.model.model(**model_inputs, use_cache=False).last_hidden_state
        ids = model_inputs["input_ids"]
        positions = torch.where(ids == token_id, torch.arange(ids.shape[1], device=ids.device), -1).max(dim=1).values
        return hidden[torch.arange(ids.shape[0], device=ids.device), positions]

    def _generative(self, model_inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Greedy reasoning, then one forward pass over prompt + reasoning up to ``<gen_emb>``."""
        import torch

        # greedy: the 7B generation_config samples, which made embeddings random on every call
        sequences = self.model.generate(**model_inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        prompt_ids, mask = model_inputs["input_ids"], model_inputs["attention_mask"].bool()
        types = model_inputs.get("mm_token_type_ids")
        eos = self.model.generation_config.eos_token_id
        stops = set(eos if isinstance(eos, list) else [eos]) | {self.processor.tokenizer.pad_token_id}
        sequences_ids, sequences_types = [], []
        for row, generated in enumerate(sequences[:, prompt_ids.shape[1] :].tolist()):
            if self.gen_emb_id in generated:
                reasoning = generated[: generated.index(self.gen_emb_id) + 1]
            else:
                end = next((i for i, token in enumerate(generated) if token in stops), len(generated))
                reasoning = [*generated[:end], self.gen_emb_id]
                logger.warning(
                    "no <gen_emb> before an end-of-sequence token or the %d-token budget: appended after the reasoning",
                    self.max_new_tokens,
                )
            reasoning_ids = prompt_ids.new_tensor(reasoning)
            sequences_ids.append(torch.cat([prompt_ids[row][mask[row]], reasoning_ids]))
            if types is not None:  # the reasoning is text (type 0)
                sequences_types.append(torch.cat([types[row][mask[row]], torch.zeros_like(reasoning_ids)]))
        visual = ("pixel_values", "image_grid", "video_grid")
        full = {key: value for key, value in model_inputs.items() if key.startswith(visual)}
        full["input_ids"] = _left_pad(sequences_ids)
        full["attention_mask"] = _left_pad([torch.ones_like(ids) for ids in sequences_ids])
        if types is not None:
            full["mm_token_type_ids"] = _left_pad(sequences_types)
        return self.model.model(**full, use_cache=False).last_hidden_state[:, -1]


def _left_pad(rows: list[torch.Tensor]) -> torch.Tensor:
    import torch

    width = max(len(row) for row in rows)
    return torch.stack([torch.cat([row.new_zeros(width - len(row)), row]) for row in rows])


class _FrameSampler:
    """Collate videos as ``num_frames`` frames at ``linspace(0, n - 1, num_frames)`` cast to int."""

    def __init__(self, num_frames: int, collate_fn: Any) -> None:
        self.num_frames = num_frames
        self.collate_fn = collate_fn

    def __call__(self, rows: list[dict[str, Any]]) -> BatchedInput:
        import numpy as np

        for row in rows:
            video = row.get("video")
            if video is None:
                continue
            total = video.metadata.num_frames if hasattr(video, "get_frames_at") else len(video)
            indices = range(total) if total <= self.num_frames else np.linspace(0, total - 1, self.num_frames)
            indices = [int(index) for index in indices]
            if hasattr(video, "get_frames_at"):
                row["video"] = video.get_frames_at(indices).data
            else:
                row["video"] = [video[index] for index in indices]
        return self.collate_fn(rows)


def _frames(video: Any) -> list[Image.Image]:
    """RGB frames under the image rules, padded to an even count (2 frames per temporal patch)."""
    from PIL import Image

    frames = [
        frame if isinstance(frame, Image.Image) else Image.fromarray(frame.permute(1, 2, 0).cpu().numpy())
        for frame in video
    ]
    frames = [_fit(frame) for frame in frames]
    return frames + frames[-1:] * (len(frames) % 2)


def _fit(image: Image.Image | None) -> Image.Image | None:
    """qwen-vl-utils' first resize: bicubic to sides that are multiples of 28 within the pixel bounds."""
    if image is None:
        return None
    from PIL import Image

    image = image.convert("RGB")
    if max(image.size) / min(image.size) > MAX_ASPECT_RATIO:
        raise ValueError(f"image aspect ratio exceeds {MAX_ASPECT_RATIO} ({image.width}x{image.height})")
    min_pixels, max_pixels = FETCH_PIXELS
    height = max(PATCH, round(image.height / PATCH) * PATCH)
    width = max(PATCH, round(image.width / PATCH) * PATCH)
    if height * width > max_pixels:
        beta = math.sqrt(image.height * image.width / max_pixels)
        height = math.floor(image.height / beta / PATCH) * PATCH
        width = math.floor(image.width / beta / PATCH) * PATCH
    elif height * width < min_pixels:
        beta = math.sqrt(min_pixels / (image.height * image.width))
        height = math.ceil(image.height * beta / PATCH) * PATCH
        width = math.ceil(image.width * beta / PATCH) * PATCH
    if (width, height) == image.size:
        return image
    return image.resize((width, height), Image.Resampling.BICUBIC)


_UME_R1_CITATION = """@article{lan2025ume,
  title={UME-R1: Exploring Reasoning-Driven Generative Multimodal Embeddings},
  author={Lan, Zhibin and Niu, Liqiang and Meng, Fandong and Zhou, Jie and Su, Jinsong},
  journal={arXiv preprint arXiv:2511.00405},
  year={2025}
}"""

_UME_R1_TRAINING = {
    "Kinetics700V",
    "Kinetics700VA",
    "Kinetics700VZeroShot",
    "Kinetics700VAZeroShot",
    "SomethingSomethingV2Classification",
    "HMDB51Classification",
    "HMDB51Clustering",
    "HMDB51ZeroShot",
    "UCF101",
    "UCF101VideoClassification",
    "UCF101VideoAudioClassification",
    "UCF101VideoClustering",
    "UCF101AudioVideoClustering",
    "BreakfastClassification",
    *(f"DiDeMo{pair}Retrieval" for pair in ("A2V", "AT2V", "T2V", "T2VA", "V2A", "V2T", "VA2T", "VT2A")),
    *(f"MSRVTT{pair}" for pair in ("A2V", "AT2V", "T2V", "T2VA", "V2A", "V2T", "VA2T", "VT2A")),
    "MSVDT2VRetrieval",
    "MSVDV2TRetrieval",
    *(f"VATEX{pair}Retrieval" for pair in ("A2V", "AT2V", "T2V", "T2VA", "V2A", "V2T", "VA2T", "VT2A")),
    *(f"YouCook2{pair}Retrieval" for pair in ("A2V", "AT2V", "T2V", "T2VA", "V2A", "V2T", "VA2T", "VT2A")),
    "Imagenet1k",
    "Imagenet1kZeroShot",
}

_UME_R1_BASE_KWARGS = dict(
    loader=UMER1Wrapper,
    model_type=["dense"],
    languages=["eng-Latn"],
    release_date="2025-11-10",
    modalities=["image", "text", "video"],
    license="apache-2.0",
    open_weights=True,
    public_training_code="https://github.com/XMUDeepLIT/UME-R1",
    public_training_data="https://huggingface.co/datasets/zhibinlan/UME-sft-train",
    framework=["PyTorch", "Transformers", "safetensors"],
    similarity_fn_name=ScoringFunction.COSINE,
    extra_requirements_groups=["qwen-vl"],
    use_instructions=True,
    training_datasets=_UME_R1_TRAINING,
    citation=_UME_R1_CITATION,
    max_tokens=32768,
    output_dtypes=OutputDType.BF16,
)

ume_r1_2b = ModelMeta(
    name="zhibinlan/UME-R1-2B",
    revision="e7aaa253cd315be20bd15c8704ad281b4fdf82c9",
    n_parameters=2_208_985_600,
    n_embedding_parameters=233_373_696,
    memory_usage_mb=8427,
    embed_dim=1536,
    reference="https://huggingface.co/zhibinlan/UME-R1-2B",
    adapted_from="Qwen/Qwen2-VL-2B-Instruct",
    **_UME_R1_BASE_KWARGS,
)

ume_r1_7b = ModelMeta(
    name="zhibinlan/UME-R1-7B",
    revision="b5c08e3273d979e0f22445306717c39ca8d45df0",
    n_parameters=8_291_375_616,
    n_embedding_parameters=544_997_376,
    memory_usage_mb=31629,
    embed_dim=3584,
    reference="https://huggingface.co/zhibinlan/UME-R1-7B",
    adapted_from="Qwen/Qwen2-VL-7B-Instruct",
    **_UME_R1_BASE_KWARGS,
)
