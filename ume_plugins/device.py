"""Numeric precision and attention kernel for the device a model runs on.

CUDA runs bf16 with flash-attention 2 when it is installed (else SDPA), MPS runs fp16 and the CPU
fp32; whatever the user puts in ``model_kwargs`` wins. Only precision follows the device: the
embedding mode never does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

_PREFERRED_DTYPE = {"cuda": torch.bfloat16, "mps": torch.float16}


def check_device(device: str | torch.device | None) -> None:
    """Refuse, before anything loads, a device torch cannot name or this machine does not have.

    Raises:
        ValueError: Names the device and what is wrong with it.
    """
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, mps, ...)") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: torch finds no CUDA device on this machine")
        if (parsed.index or 0) >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA device(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: torch finds no MPS device on this machine")


def preferred_dtype(device: str | torch.device) -> torch.dtype:
    """The dtype UME-R1 runs in on ``device``."""
    return _PREFERRED_DTYPE.get(torch.device(device).type, torch.float32)


def preferred_attention(device: str | torch.device, dtype: torch.dtype) -> str:
    """flash_attention_2 on CUDA in half precision when installed, else SDPA."""
    from transformers.utils import is_flash_attn_2_available

    if torch.device(device).type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        if is_flash_attn_2_available():
            return "flash_attention_2"
    return "sdpa"


def resolve_dtype(value: Any) -> torch.dtype | str | None:
    """Accept ``torch.bfloat16``, ``"bfloat16"`` or ``"auto"`` alike."""
    if isinstance(value, str) and value != "auto":
        resolved = getattr(torch, value, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"unknown dtype {value!r}")
        return resolved
    return value


def model_load_kwargs(device: str | torch.device, model_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """``from_pretrained`` kwargs for ``device``, the user's ``model_kwargs`` taking precedence."""
    kwargs = dict(model_kwargs or {})
    if "torch_dtype" in kwargs:
        kwargs.setdefault("dtype", kwargs.pop("torch_dtype"))
    kwargs["dtype"] = resolve_dtype(kwargs.get("dtype")) or preferred_dtype(device)
    if "attn_implementation" not in kwargs:
        dtype = kwargs["dtype"] if isinstance(kwargs["dtype"], torch.dtype) else torch.float32
        kwargs["attn_implementation"] = preferred_attention(device, dtype)
    return kwargs


@dataclass
class DeviceChoice:
    """Precision and attention picked for a model's device, and which of them the user pinned.

    Attributes:
        load_kwargs: ``from_pretrained`` kwargs (see :func:`model_load_kwargs`).
        attention: The attention implementation in use.
        dtype_pinned: The user chose the dtype (``model_kwargs``).
        attention_pinned: The user chose the attention implementation.
    """

    load_kwargs: dict[str, Any]
    attention: str
    dtype_pinned: bool
    attention_pinned: bool

    @classmethod
    def pick(cls, device: str | torch.device | None, model_kwargs: dict[str, Any] | None) -> DeviceChoice:
        """The choice for ``device`` (None: the best available), the user's ``model_kwargs`` taking precedence."""
        from sentence_transformers.util import get_device_name

        pinned = model_kwargs or {}
        load_kwargs = model_load_kwargs(device or get_device_name(), model_kwargs)
        return cls(
            load_kwargs,
            load_kwargs["attn_implementation"],
            dtype_pinned="dtype" in pinned or "torch_dtype" in pinned,
            attention_pinned="attn_implementation" in pinned,
        )

    def follow(self, model: Any) -> None:
        """Re-pick precision and attention for the device ``model`` landed on, unless the user pinned them."""
        device = model.device
        if not self.dtype_pinned and model.dtype != preferred_dtype(device):
            model.to(preferred_dtype(device))
        preferred = preferred_attention(device, model.dtype)
        if not self.attention_pinned and preferred != self.attention:
            model.set_attn_implementation(preferred)
            self.attention = preferred
