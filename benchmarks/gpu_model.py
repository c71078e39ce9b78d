"""What ``gpu.py`` runs on: UME-R1-2B's architecture with random weights, its prompts and mteb's wrapper.

Only torch and transformers are needed (no processor, so no torchvision, no hub): the prompts are
rendered with the tiny tokenizer's chat template and the image pads expanded by hand; pixel values
are random patches derived from each image's bytes, so every contender gets the same prompts, the
same pixels and therefore the same scripted lengths.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if "ume_plugins" not in sys.modules:
    # The engine needs only torch and transformers: skip the package's own imports (sentence-transformers).
    package = types.ModuleType("ume_plugins")
    package.__path__ = [str(ROOT / "ume_plugins")]
    sys.modules["ume_plugins"] = package

from ume_plugins.engine.hf_model import decoder_shape  # noqa: E402
from ume_plugins.prompts import GEN_PROMPT  # noqa: E402
from ume_plugins.tiny import _train_tokenizer, vision_token_ids  # noqa: E402

# Qwen2-VL-2B (UME-R1-2B): see the spec's cost and shape facts.
TEXT_2B = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
}
VISION_2B = {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4}
TEXT_QUICK = {
    "hidden_size": 128,
    "intermediate_size": 448,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 2048,
    "max_position_embeddings": 32768,
}
VISION_QUICK = {"depth": 1, "embed_dim": 64, "num_heads": 2, "mlp_ratio": 4}
PATCH, MERGE, TEMPORAL = 14, 2, 2
BLANK_SIZE = (56, 56)  # the official eval's blank image for text-only inputs, as resized


def tokenizer() -> Any:
    """The tiny checkpoint's tokenizer: Qwen2-VL's special tokens and chat template, a small vocabulary."""
    return _train_tokenizer()


def build_model(tok: Any, device: torch.device, dtype: torch.dtype, quick: bool) -> torch.nn.Module:
    """Qwen2-VL-2B's architecture (``quick``: a small one) with random weights, built on ``device``."""
    from transformers import GenerationConfig, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    text, vision = (TEXT_QUICK, VISION_QUICK) if quick else (TEXT_2B, VISION_2B)
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    ids = tok.convert_tokens_to_ids
    special = {"bos_token_id": ids("<|endoftext|>"), "eos_token_id": ids("<|im_end|>"), "pad_token_id": None}
    config = Qwen2VLConfig(
        text_config={
            **text,
            **special,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e6,
                "mrope_section": [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16],
            },
            "layer_types": ["full_attention"] * text["num_hidden_layers"],
        },
        vision_config={
            **vision,
            "hidden_size": text["hidden_size"],
            "patch_size": PATCH,
            "spatial_merge_size": MERGE,
            "temporal_patch_size": TEMPORAL,
            "in_channels": 3,
        },
        tie_word_embeddings=True,
        **special,
        **vision_token_ids(tok),
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), torch.random.fork_rng(devices=[0] if device.type == "cuda" else []):
            torch.manual_seed(0)
            model = Qwen2VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model.set_attn_implementation("sdpa")
    model.generation_config = GenerationConfig(
        bos_token_id=ids("<|endoftext|>"), pad_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>")
    )
    return model


def decode_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """Bytes a decode step must read: the decoder's weights, and the KV cache per cached position.

    The weights are the layers', the final norm's and the LM head's (a tied embedding counted once;
    of an untied one a step reads a single row). The KV bytes cover every layer's keys and values.
    """
    decoder = model.model.language_model
    tensors = [*decoder.layers.parameters(), *decoder.norm.parameters(), model.lm_head.weight]
    weights = sum(tensor.numel() * tensor.element_size() for tensor in {t.data_ptr(): t for t in tensors}.values())
    layers, _, kv_heads, head_dim = decoder_shape(model)
    return weights, 2 * layers * kv_heads * head_dim * model.dtype.itemsize


class Prompts:
    """UME-R1 prompts as the engine's features: the spec's layout, image pads expanded, random patches.

    Also stands in for the processor mteb's wrapper calls (``apply_chat_template``), so its prompts
    are built the same way.
    """

    def __init__(self, tok: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.tok, self.device, self.dtype = tok, device, dtype
        self.image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
        self.built: list[list[int]] = []  # prompts built for mteb's wrapper, to check they are ours

    def message(self, text: str, image: Any | None) -> list[dict[str, Any]]:
        """One user turn: the image (a blank one for text-only inputs), then the text and the generation prompt."""
        from PIL import Image

        image = image if image is not None else Image.new("RGB", BLANK_SIZE, (255, 255, 255))
        content = [{"type": "image", "image": image}, {"type": "text", "text": f"{text}\n<disc_emb>\n{GEN_PROMPT}"}]
        return [{"role": "user", "content": content}]

    def features(self, messages: list[list[dict[str, Any]]]) -> dict[str, torch.Tensor]:
        """Left-padded features of a batch of conversations (with per-row image and video counts)."""
        rows, pixels, grids, counts = [], [], [], []
        for conversation in messages:
            images = [part["image"] for turn in conversation for part in turn["content"] if part["type"] == "image"]
            parts = self.tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True).split(
                "<|image_pad|>"
            )
            text = parts[0]
            for image, part in zip(images, parts[1:], strict=True):
                width, height = image.size
                grid = (1, height // PATCH, width // PATCH)
                text += "<|image_pad|>" * (grid[1] * grid[2] // MERGE**2) + part
                generator = torch.Generator().manual_seed(zlib.crc32(image.tobytes()))
                pixels.append(torch.randn(grid[1] * grid[2], 3 * TEMPORAL * PATCH * PATCH, generator=generator))
                grids.append(grid)
            rows.append(self.tok(text, add_special_tokens=False)["input_ids"])
            counts.append(len(images))
        width = max(len(row) for row in rows)
        pad = self.tok.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows])
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
        features = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "mm_token_type_ids": (input_ids == self.image_pad).long(),
            "pixel_values": torch.cat(pixels).to(self.dtype),
            "image_grid_thw": torch.tensor(grids),
            "images_per_row": torch.tensor(counts),
            "videos_per_row": torch.zeros(len(rows), dtype=torch.long),
        }
        return {key: value.to(self.device) for key, value in features.items()}

    def apply_chat_template(self, messages: list[list[dict[str, Any]]], **kwargs: Any) -> Any:
        """The processor call of mteb's wrapper: the same features, without the per-row counts."""
        from transformers import BatchFeature

        features = self.features(messages)
        self.built += [
            ids[mask.bool()].tolist()
            for ids, mask in zip(features["input_ids"], features["attention_mask"], strict=True)
        ]
        return BatchFeature({key: value for key, value in features.items() if not key.endswith("_per_row")})


def mteb_wrapper(wheel: str | None) -> tuple[type | None, str]:
    """mteb's ``UMER1Wrapper`` class and where it came from, or None and why not.

    Importing mteb needs datasets, polars, pyarrow and more; the wrapper's own file needs none of
    them. When the package does not import, its ``ume_r1.py`` is read from the installed package
    (``pip install --no-deps``) or from the wheel, and run with stand-ins for the four base names it
    imports (an encoder base class and metadata records), which its ``encode`` never uses.
    """
    try:
        import mteb
        from mteb.models.model_implementations.ume_r1 import UMER1Wrapper

        return UMER1Wrapper, f"mteb {mteb.__version__}"
    except ImportError as error:
        reason = f"{type(error).__name__}: {error}"
    name = "mteb/models/model_implementations/ume_r1.py"
    spec = importlib.util.find_spec("mteb") if "mteb" not in sys.modules else None
    source, origin = None, None
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))).parent / name
        if path.is_file():
            source, origin = path.read_text(encoding="utf-8"), "the installed package"
    if source is None and wheel:
        with zipfile.ZipFile(wheel) as archive:
            source, origin = archive.read(name).decode("utf-8"), Path(wheel).name
    if source is None:
        return None, f"mteb not importable ({reason}) and no --mteb-wheel"
    stand_ins = {
        "mteb": types.ModuleType("mteb"),
        "mteb.models": types.ModuleType("mteb.models"),
        "mteb.models.abs_encoder": types.SimpleNamespace(AbsEncoder=object),
        "mteb.models.model_meta": types.SimpleNamespace(
            ModelMeta=lambda **kwargs: types.SimpleNamespace(**kwargs),
            ScoringFunction=types.SimpleNamespace(COSINE="cosine"),
        ),
        "mteb.types": types.SimpleNamespace(OutputDType=types.SimpleNamespace(BF16="bf16")),
    }
    saved = {key: sys.modules.get(key) for key in stand_ins}
    sys.modules.update(stand_ins)
    try:
        module = types.ModuleType("mteb_ume_r1")
        exec(compile(source, name, "exec"), module.__dict__)  # noqa: S102 - mteb's own file, run as is
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
    return module.UMER1Wrapper, f"mteb's ume_r1.py from {origin} (package not importable: {reason})"


def mteb_encoder(cls: type, model: torch.nn.Module, prompts: Prompts, device: torch.device) -> Any:
    """mteb's wrapper around an already built model (its ``__init__`` would load a checkpoint)."""
    wrapper = cls.__new__(cls)
    wrapper.model, wrapper.processor, wrapper.device = model, prompts, str(device)
    wrapper.fps, wrapper.max_frames, wrapper.num_frames = None, None, 8
    wrapper.gen_emb_id = prompts.tok.convert_tokens_to_ids("<gen_emb>")
    return wrapper
