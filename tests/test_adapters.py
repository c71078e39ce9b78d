"""LoRA / DoRA adapters through peft, on the tiny checkpoint, with adapters made here by peft."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import peft
import pytest
import torch
from safetensors.torch import load_file, save_file

import ume_plugins
from tests.conftest import REASONING, ScriptedDecoding, gradient, solid
from ume_plugins import adapters
from ume_plugins.adapters import AdapterMismatchError

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

INPUTS = ["a red fox jumps over a fence", {"text": "a cat", "image": solid((200, 30, 30))}, gradient()]
DISC = {"mode": "discriminative"}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=-1)


def load(adapter=None, **kwargs):
    return ume_plugins.load("ume-r1-tiny", device="cpu", mode="discriminative", adapter=adapter, **kwargs)


def make_adapter(tiny_path, folder: Path, config, seed: int) -> Path:
    """Train nothing: peft's random (non-zero B) initialisation makes the adapter change vectors."""
    from transformers import Qwen2VLForConditionalGeneration

    torch.manual_seed(seed)
    base = Qwen2VLForConditionalGeneration.from_pretrained(tiny_path)
    peft.get_peft_model(base, config).save_pretrained(folder)
    return folder


def rewrite(source: Path, target: Path, rename) -> Path:
    """Copy an adapter folder, renaming the keys of its weights."""
    target.mkdir()
    shutil.copy(source / "adapter_config.json", target)
    state = load_file(source / "adapter_model.safetensors")
    save_file({rename(key): value for key, value in state.items()}, target / "adapter_model.safetensors")
    return target


def to_legacy(key: str) -> str:
    """transformers 4.x layout: the decoder at `model.`, the vision tower at `visual.`."""
    key = key.replace("base_model.model.model.language_model.", "base_model.model.model.")
    return key.replace("base_model.model.model.visual.", "base_model.model.visual.")


def merged_by_peft(tiny_path, adapter: Path, folder: Path) -> Path:
    """A plain UME-R1 checkpoint with ``adapter`` merged by peft's own loader: an independent reference."""
    from transformers import Qwen2VLForConditionalGeneration

    shutil.copytree(tiny_path, folder)
    base = Qwen2VLForConditionalGeneration.from_pretrained(tiny_path)
    peft.PeftModel.from_pretrained(base, adapter).merge_and_unload().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tiny_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    retrieval = make_adapter(
        tiny_path,
        root / "retrieval",
        peft.LoraConfig(
            r=4,
            lora_alpha=8,
            lora_dropout=0.1,  # must be inactive at inference
            target_modules=["q_proj", "v_proj", "qkv", "fc1"],
            init_lora_weights=False,
        ),
        seed=1,
    )
    classify = make_adapter(
        tiny_path,
        root / "classify",
        peft.LoraConfig(r=2, target_modules=["o_proj", "down_proj", "fc2"], use_dora=True, init_lora_weights=False),
        seed=2,
    )
    return {
        "retrieval": retrieval,
        "classify": classify,
        "legacy": rewrite(retrieval, root / "legacy", to_legacy),
        "mismatched": rewrite(retrieval, root / "mismatched", lambda key: key.replace(".layers.1.", ".layers.7.")),
        "retrieval_reference": merged_by_peft(tiny_path, retrieval, root / "retrieval_reference"),
        "classify_reference": merged_by_peft(tiny_path, classify, root / "classify_reference"),
    }


@pytest.fixture(scope="module")
def base_vectors(model):
    return model.encode(INPUTS, **DISC)


@pytest.fixture(scope="module")
def expected(folders):
    """Each adapter's vectors, from checkpoints merged by peft itself (not by our loader)."""
    return {
        name: ume_plugins.load(str(folders[f"{name}_reference"]), device="cpu", mode="discriminative").encode(INPUTS)
        for name in ("retrieval", "classify")
    }


@pytest.fixture(scope="module")
def both(folders):
    """One model with two named adapters; tests restore its adapter state."""
    return load({"retrieval": folders["retrieval"], "classify": folders["classify"]})


def test_adapters_give_their_own_vectors_and_disabling_gives_the_base(both, base_vectors, expected):
    assert both[0].adapter_names == ["retrieval", "classify"]
    assert both[0].active_adapters() == ["retrieval"]
    vectors = both.encode(INPUTS)
    assert cosines(vectors, base_vectors).max() < 0.99
    assert cosines(vectors, expected["retrieval"]).min() >= 0.9999
    np.testing.assert_array_equal(both.encode(INPUTS), vectors)  # dropout stays off

    both[0].disable_adapters()
    try:
        np.testing.assert_allclose(both.encode(INPUTS), base_vectors, atol=1e-6)
    finally:
        both[0].enable_adapters()
    np.testing.assert_array_equal(both.encode(INPUTS), vectors)


def test_adapter_per_call_runs_that_adapter_and_restores_the_active_one(both, base_vectors, expected):
    classify = both.encode(INPUTS, adapter="classify")  # DoRA: magnitudes must load too
    assert cosines(classify, expected["classify"]).min() >= 0.9999
    assert cosines(classify, base_vectors).max() < 0.99
    assert both[0].active_adapters() == ["retrieval"]
    assert cosines(both.encode(INPUTS), expected["retrieval"]).min() >= 0.9999

    both[0].set_adapter("classify")
    try:
        np.testing.assert_array_equal(both.encode(INPUTS), classify)
    finally:
        both[0].set_adapter("retrieval")

    both[0].disable_adapters()
    try:
        np.testing.assert_array_equal(both.encode(INPUTS, adapter="classify"), classify)
        np.testing.assert_allclose(both.encode(INPUTS), base_vectors, atol=1e-6)  # still disabled
    finally:
        both[0].enable_adapters()

    with pytest.raises(ValueError, match=r"unknown adapter\(s\) \['nope'\]"):
        both.encode(INPUTS, adapter="nope")
    assert both[0].active_adapters() == ["retrieval"]


def test_adapter_per_call_in_generative_mode(model, both):
    scripted = {"mode": "generative"}
    hooks = {"logits_processor": [ScriptedDecoding(model.tokenizer, REASONING)], "max_new_tokens": 64}
    inputs = INPUTS[:2]
    base = model.encode(inputs, generation_kwargs=hooks, **scripted)
    retrieval = both.encode(inputs, generation_kwargs=hooks, **scripted)
    classify = both.encode(inputs, generation_kwargs=hooks, adapter="classify", **scripted)
    assert cosines(retrieval, base).max() < 0.99
    assert cosines(classify, retrieval).max() < 0.99
    both[0].set_adapter("classify")
    try:
        np.testing.assert_allclose(both.encode(inputs, generation_kwargs=hooks, **scripted), classify, atol=1e-6)
    finally:
        both[0].set_adapter("retrieval")


def test_the_cuda_step_paths_leave_adapted_layers_to_peft(both):
    # The fused projections and the GEMV kernels would compute the base weights only: every layer
    # peft wrapped (q/v by one adapter, o/down by the other) keeps its modules.
    from ume_plugins.engine.step import _gemv_eligible, fused_projections, gemv_units

    decoder = both[0].model.model.language_model
    assert all(projection is None for projection in fused_projections(decoder))
    assert all(_gemv_eligible(layer) == frozenset({"qkv"}) for layer in decoder.layers)
    assert gemv_units(decoder, torch.device("cpu"), torch.float32) is None


def test_legacy_keys_load_like_their_modern_twin(folders, expected):
    legacy_keys = load_file(folders["legacy"] / "adapter_model.safetensors")
    assert any(key.startswith("base_model.model.model.layers.") for key in legacy_keys)
    assert any(key.startswith("base_model.model.visual.") for key in legacy_keys)
    legacy = load(folders["legacy"])
    modern = load(folders["retrieval"])
    np.testing.assert_array_equal(legacy.encode(INPUTS), modern.encode(INPUTS))
    assert cosines(legacy.encode(INPUTS), expected["retrieval"]).min() >= 0.9999


def test_mismatched_adapter_raises_listing_keys_and_leaves_the_model_untouched(folders, base_vectors):
    fresh = load()
    with pytest.raises(AdapterMismatchError, match=r"layers\.7\.self_attn\.q_proj\.lora_A") as error:
        fresh[0].load_adapter(str(folders["mismatched"]), adapter_name="bad")
    assert any(".layers.1." in key for key in error.value.not_in_file)
    assert fresh[0].adapter_names == []
    assert not any("lora" in name for name, _ in fresh.named_parameters())
    np.testing.assert_array_equal(fresh.encode(INPUTS), base_vectors)

    adapted = load(folders["retrieval"])
    before = adapted.encode(INPUTS)
    with pytest.raises(AdapterMismatchError):
        adapted[0].load_adapter(str(folders["mismatched"]), adapter_name="bad")
    assert adapted[0].adapter_names == ["default"]
    np.testing.assert_array_equal(adapted.encode(INPUTS), before)


def test_pickled_adapter_is_refused(folders, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(folders["retrieval"] / "adapter_config.json", folder)
    torch.save(load_file(folders["retrieval"] / "adapter_model.safetensors"), folder / "adapter_model.bin")
    with pytest.raises(ValueError, match="pickled adapter_model.bin"):
        load(str(folder))


def test_save_records_adapters_and_reloads_identical_vectors(both, folders, tmp_path):
    both[0].set_adapter("classify")
    try:
        vectors = both.encode(INPUTS)
        retrieval = both.encode(INPUTS, adapter="retrieval")
        both.save(str(tmp_path))
    finally:
        both[0].set_adapter("retrieval")

    for name in ("retrieval", "classify"):
        assert sorted(p.name for p in (tmp_path / "adapters" / name).iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
        ]
    assert not any("lora" in key for key in load_file(tmp_path / "model.safetensors"))
    settings = json.loads((tmp_path / "ume_r1_config.json").read_text())
    assert settings["adapters"] == {"names": ["retrieval", "classify"], "active": ["classify"], "enabled": True}
    requirements = json.loads((tmp_path / "config_sentence_transformers.json").read_text())["requirements"]
    assert requirements["peft"]["specifier"] and requirements["transformers"]["specifier"]

    from sentence_transformers import SentenceTransformer

    reloaded = SentenceTransformer(str(tmp_path), device="cpu")
    assert reloaded[0].active_adapters() == ["classify"]
    np.testing.assert_allclose(reloaded.encode(INPUTS, **DISC), vectors, atol=1e-6)
    np.testing.assert_allclose(reloaded.encode(INPUTS, adapter="retrieval", **DISC), retrieval, atol=1e-6)
    np.testing.assert_allclose(ume_plugins.load(str(tmp_path), device="cpu").encode(INPUTS, **DISC), vectors, atol=1e-6)


def test_merge_and_unload_matches_and_saves_a_plain_checkpoint(folders, tmp_path):
    merged = load({"retrieval": folders["retrieval"], "classify": folders["classify"]})
    unmerged = merged.encode(INPUTS)
    assert merged[0].merge_and_unload() == ["retrieval"]
    assert merged[0].adapter_names == []
    assert not any("lora" in name for name, _ in merged.named_parameters())
    vectors = merged.encode(INPUTS)
    assert cosines(vectors, unmerged).min() >= 0.9999

    merged.save(str(tmp_path))
    assert not (tmp_path / "adapters").exists()
    assert "adapters" not in json.loads((tmp_path / "ume_r1_config.json").read_text())
    requirements = json.loads((tmp_path / "config_sentence_transformers.json").read_text())["requirements"]
    assert "peft" not in requirements
    np.testing.assert_allclose(ume_plugins.load(str(tmp_path), device="cpu").encode(INPUTS, **DISC), vectors, atol=1e-6)


def test_deleting_every_adapter_gives_back_the_base_and_saves_it_plain(folders, base_vectors, tmp_path):
    adapted = load(folders["retrieval"])
    adapted[0].delete_adapter("default")
    assert adapted[0].adapter_names == []
    np.testing.assert_allclose(adapted.encode(INPUTS), base_vectors, atol=1e-6)
    adapted.save(str(tmp_path))
    assert not any("base_layer" in key or "lora" in key for key in load_file(tmp_path / "model.safetensors"))
    reloaded = ume_plugins.load(str(tmp_path), device="cpu")
    np.testing.assert_allclose(reloaded.encode(INPUTS, **DISC), base_vectors, atol=1e-6)


def test_missing_peft_fails_with_the_install_line(monkeypatch, folders):
    monkeypatch.setattr(adapters.source, "is_peft_available", lambda: False)
    with pytest.raises(ImportError, match=r"pip install 'ume-plugins\[peft\]'"):
        load(str(folders["retrieval"]))


def test_core_imports_and_encodes_without_peft():
    code = (
        "import sys; sys.modules['peft'] = None\n"
        "import ume_plugins\n"
        "model = ume_plugins.load('ume-r1-tiny', device='cpu', mode='discriminative')\n"
        "assert model.encode(['a fox']).shape == (1, 64)\n"
        "try:\n"
        "    model[0].load_adapter('unused')\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "pip install 'ume-plugins[peft]'" in result.stdout


def test_module_adapter_methods_refuse_clearly_without_adapters(module):
    for call in (
        lambda: module.set_adapter("retrieval"),
        module.disable_adapters,
        module.enable_adapters,
        lambda: module.delete_adapter("retrieval"),
        module.merge_and_unload,
    ):
        with pytest.raises(ValueError, match="the model has no adapter; load one with load_adapter first"):
            call()
    assert module.active_adapters() == []


def test_deleting_one_adapter_keeps_the_other_active(folders, expected):
    adapted = load({"retrieval": folders["retrieval"], "classify": folders["classify"]})
    with pytest.raises(ValueError, match=r"unknown adapter\(s\) \['nope'\]"):
        adapted[0].set_adapter("nope")
    adapted[0].delete_adapter("retrieval")
    assert adapted[0].adapter_names == ["classify"]
    assert adapted[0].active_adapters() == ["classify"]
    assert cosines(adapted.encode(INPUTS), expected["classify"]).min() >= 0.9999
    assert not any(".retrieval." in name for name, _ in adapted.named_parameters())


def test_adapter_life_cycle_needs_neither_transformers_peft_integration_nor_deprecated_calls(
    folders, expected, monkeypatch, tmp_path
):
    """transformers 5.24 refuses peft < 0.22 in its own integration; ours must not route through it."""
    import transformers.integrations.peft as transformers_peft

    def refuse(min_version: str) -> None:
        raise AssertionError(f"went through transformers' peft integration (needs peft >= {min_version})")

    monkeypatch.setattr(transformers_peft, "check_peft_version", refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        adapted = load({"retrieval": folders["retrieval"], "classify": folders["classify"]})
        classify = adapted.encode(INPUTS, adapter="classify")
        adapted[0].set_adapter("classify")
        adapted[0].disable_adapters()
        adapted[0].enable_adapters()
        np.testing.assert_array_equal(adapted.encode(INPUTS), classify)
        adapted.save(str(tmp_path / "saved"))
        reloaded = ume_plugins.load(str(tmp_path / "saved"), device="cpu")
        assert reloaded[0].active_adapters() == ["classify"]
        np.testing.assert_allclose(reloaded.encode(INPUTS, **DISC), classify, atol=1e-6)
        assert adapted[0].merge_and_unload() == ["classify"]
        assert cosines(adapted.encode(INPUTS), expected["classify"]).min() >= 0.9999
    ours = [
        f"{warning.filename}:{warning.lineno}: {warning.message}"
        for warning in caught
        if issubclass(warning.category, (DeprecationWarning, FutureWarning))
        and Path(warning.filename).is_relative_to(Path(ume_plugins.__file__).parent)
    ]
    assert ours == []


def test_peft_contract_injected_adapters_are_recorded_and_switched_on_the_plain_model():
    """The peft seams ume_plugins.adapters relies on; a failure names the peft release that changed them."""
    from peft.functional import inject_adapter_in_model, set_adapter
    from peft.tuners.tuners_utils import BaseTunerLayer

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = torch.nn.Linear(4, 4)

    model = Block()
    for name in ("one", "two"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(peft.LoraConfig(r=2, target_modules=["q_proj"]), model, name)
    changed = f"peft {peft.__version__} changed a seam ume_plugins.adapters uses:"
    assert list(vars(model).get("peft_config", {})) == ["one", "two"], f"{changed} model.peft_config"
    assert isinstance(model.q_proj, BaseTunerLayer), f"{changed} adapter layers are no longer BaseTunerLayer"
    set_adapter(model, ["two"], inference_mode=True)
    model.q_proj.enable_adapters(False)
    assert model.q_proj.active_adapters == ["two"], f"{changed} active_adapters"
    assert model.q_proj.disable_adapters, f"{changed} enable_adapters / disable_adapters"
    assert "lora_A" in model.q_proj.adapter_layer_names, f"{changed} adapter_layer_names"
    assert isinstance(model.q_proj.get_base_layer(), torch.nn.Linear), f"{changed} get_base_layer"
