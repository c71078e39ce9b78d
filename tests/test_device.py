from __future__ import annotations

import pytest
import torch

from ume_plugins.device import model_load_kwargs


@pytest.mark.parametrize(
    ("device", "dtype"),
    [("cuda", torch.bfloat16), ("cuda:1", torch.bfloat16), ("mps", torch.float16), ("cpu", torch.float32)],
)
def test_precision_follows_the_device(device, dtype):
    kwargs = model_load_kwargs(device, None)
    assert kwargs["dtype"] == dtype
    assert kwargs["attn_implementation"] in ("sdpa", "flash_attention_2")


def test_flash_attention_only_when_installed_on_cuda(monkeypatch):
    import transformers.utils

    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    assert model_load_kwargs("cuda", None)["attn_implementation"] == "flash_attention_2"
    assert model_load_kwargs("cpu", None)["attn_implementation"] == "sdpa"
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    assert model_load_kwargs("cuda", None)["attn_implementation"] == "sdpa"


def test_user_model_kwargs_win():
    kwargs = model_load_kwargs("cuda", {"torch_dtype": "float32", "attn_implementation": "eager", "revision": "x"})
    assert kwargs == {"dtype": torch.float32, "attn_implementation": "eager", "revision": "x"}
    assert model_load_kwargs("cpu", {"dtype": "auto"})["dtype"] == "auto"
    with pytest.raises(ValueError, match="unknown dtype"):
        model_load_kwargs("cpu", {"dtype": "float33"})


def test_a_pinned_dtype_survives_loading(tiny_path):
    import ume_plugins

    model = ume_plugins.load("ume-r1-tiny", device="cpu", model_kwargs={"dtype": torch.bfloat16})
    assert model[0].model.dtype == torch.bfloat16
    vectors = model.encode(["a cat"], mode="discriminative")
    assert vectors.dtype.name == "float32"
