"""A random UME-R1-shaped checkpoint with the shape ratios of UME-R1-2B, small enough for a CPU.

UME-R1-2B (Qwen2-VL-2B): hidden 1536, 28 layers, 12 heads of 128 with 2 KV heads (KV width 1/6 of
hidden), MLP 8960 (5.8x), vocabulary 151936 (the LM head is ~15% of a decode step's FLOPs), a
vision tower of 32 blocks x 1280. Here every width is 1/8 and the depth is kept: hidden 192, 28
layers, 6 heads of 32 with 1 KV head (1/6), MLP 1120 (5.8x), 16384 vocabulary rows (the LM head
stays ~15% of a step), a 4-block vision tower of 160. Keeping the depth keeps the ratios that decide
memory: all hidden states vs KV cache per token, (L+1)*H / (2*L*kv) = 3.1, and KV cache vs one
layer's prefill activations, as in the 2B.

Tokenizer, processor, chat template and generation config come from the tiny checkpoint builder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

SHAPE = {
    "hidden_size": 192,
    "intermediate_size": 1120,
    "num_hidden_layers": 28,
    "num_attention_heads": 6,
    "num_key_value_heads": 1,
    "vocab_size": 16384,
}
VISION = {"depth": 4, "embed_dim": 160, "num_heads": 2, "mlp_ratio": 4}
VERSION = 2


def bench_checkpoint_path() -> Path:
    """Build the benchmark checkpoint once (deterministic) and return its folder."""
    import torch
    import transformers
    from transformers import GenerationConfig, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from ume_plugins import build_tiny_checkpoint

    root = Path(os.environ.get("UME_PLUGINS_CACHE", Path.home() / ".cache" / "ume_plugins"))
    target = root / f"ume-r1-bench-v{VERSION}-transformers{transformers.__version__}"
    if (target / "model.safetensors").is_file():
        return target
    staging = root / f".bench-{os.getpid()}"
    build_tiny_checkpoint(staging, seed=0)
    config = json.loads((staging / "config.json").read_text())
    head_dim = SHAPE["hidden_size"] // SHAPE["num_attention_heads"]
    config["text_config"].update(SHAPE)
    config["text_config"]["layer_types"] = ["full_attention"] * SHAPE["num_hidden_layers"]
    # M-RoPE sections (temporal, height, width) scaled from Qwen2-VL's [16, 24, 24] for head_dim 128.
    config["text_config"]["rope_parameters"]["mrope_section"] = [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]
    config["vision_config"].update(VISION, hidden_size=SHAPE["hidden_size"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig.from_dict(config)).eval()
    model.generation_config = GenerationConfig.from_pretrained(staging)
    model.save_pretrained(staging, safe_serialization=True)
    (staging / "ume_r1_config.json").unlink()  # the tiny checkpoint's short demo budget
    if target.exists():  # a concurrent run finished first
        shutil.rmtree(staging)
    else:
        os.replace(staging, target)
    return target
