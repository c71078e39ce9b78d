from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

import ume_plugins
from tests.conftest import REASONING, ScriptedDecoding, gradient
from ume_plugins.checkpoints import UME_R1_2B, UME_R1_7B, resolve_name
from ume_plugins.loading import MODULE_CLASS_REF

HUB_NAMES = {
    "ume-r1": UME_R1_2B,
    "UME-R1-2B": UME_R1_2B,
    "ume-r1-7b": UME_R1_7B,
    "zhibinlan/UME-R1-2B": UME_R1_2B,
    "zhibinlan/UME-R1-7B": UME_R1_7B,
}
INPUTS = ["a red fox", gradient((84, 56), seed=7), {"text": "a fox", "image": gradient((56, 56), seed=8)}]


def run_python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300
    )


@pytest.mark.parametrize(("name", "checkpoint"), list(HUB_NAMES.items()))
def test_aliases_and_hub_ids_resolve_to_the_pinned_revision(name, checkpoint):
    resolved = resolve_name(name)
    assert (resolved.path, resolved.revision) == (checkpoint.hub_id, checkpoint.revision)
    assert resolve_name(name, revision="main").revision == "main"


def test_other_names_are_left_alone():
    assert resolve_name("sentence-transformers/all-MiniLM-L6-v2") is None


def test_tiny_alias_builds_the_ume_module_not_mean_pooling(model):
    assert len(model) == 1 and isinstance(model[0], ume_plugins.UMER1Embedder)
    assert model.get_embedding_dimension() == 64


def test_hub_names_load_the_ume_module_at_the_pinned_revision(tmp_path, tiny_path):
    """Every hub name, offline, against a hub cache holding the checkpoints at their pinned revisions."""
    cache = tmp_path / "hub"
    for checkpoint in (UME_R1_2B, UME_R1_7B):
        repo = cache / f"models--{checkpoint.hub_id.replace('/', '--')}"
        shutil.copytree(tiny_path, repo / "snapshots" / checkpoint.revision)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("0" * 40)  # "main" moved on: only the pin is cached
    code = (
        "import ume_plugins\n"
        "from sentence_transformers import SentenceTransformer\n"
        f"for name in {list(HUB_NAMES)!r}:\n"
        "    model = SentenceTransformer(name, device='cpu')\n"
        "    print(name, type(model[0]).__name__, model.encode('a cat', mode='discriminative').shape)\n"
        "print(type(ume_plugins.load('ume-r1-7b', device='cpu')[0]).__name__)\n"
    )
    result = run_python(code, env={"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert lines == [f"{name} UMER1Embedder (64,)" for name in HUB_NAMES] + ["UMER1Embedder"]


def test_load_takes_a_raw_checkpoint_and_module_settings(tmp_path, tiny_path):
    raw = shutil.copytree(tiny_path, tmp_path / "raw")
    model = ume_plugins.load(str(raw), mode="discriminative", device="cpu", num_frames=4)
    assert model[0].mode == "discriminative" and model[0].num_frames == 4
    with pytest.raises(ValueError, match="mode must be one of"):
        ume_plugins.load(str(raw), mode="fast", device="cpu")


def test_a_missing_folder_or_an_unknown_device_is_named_before_anything_loads(tmp_path):
    with pytest.raises(ValueError, match="model folder ./no-such-model does not exist"):
        ume_plugins.load("./no-such-model")
    with pytest.raises(ValueError, match=f"model folder {tmp_path / 'gone'} does not exist"):
        ume_plugins.load(str(tmp_path / "gone"))
    with pytest.raises(ValueError, match=r"device 'gpu' is not a torch device"):
        ume_plugins.load("ume-r1-tiny", device="gpu")


def test_a_misspelt_option_is_refused_naming_the_closest_one():
    with pytest.raises(TypeError, match=r"unknown option\(s\): max_new_token \(did you mean max_new_tokens\?\)"):
        ume_plugins.load("ume-r1-tiny", device="cpu", max_new_token=3)


def test_the_vllm_backend_without_vllm_is_refused_at_load(monkeypatch):
    from ume_plugins.engine import vllm

    monkeypatch.setattr(vllm, "is_vllm_available", lambda: False)
    with pytest.raises(ImportError, match=r'pip install "ume-plugins\[vllm\]"'):
        ume_plugins.load("ume-r1-tiny", device="cpu", backend="vllm")


def test_a_qwen2_vl_without_ume_tokens_is_refused(tmp_path, tiny_path):
    raw = shutil.copytree(tiny_path, tmp_path / "plain")
    tokenizer_file = raw / "tokenizer.json"
    text = tokenizer_file.read_text().replace("<gen_emb>", "<gen_xxx>").replace("<disc_emb>", "<disc_xxx>")
    tokenizer_file.write_text(text)
    assert not ume_plugins.is_ume_r1_checkpoint(str(raw))
    with pytest.raises(ValueError, match="not a UME-R1 checkpoint"):
        ume_plugins.load(str(raw), device="cpu")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_path):
    model = ume_plugins.load("ume-r1-tiny", device="cpu", mode="discriminative", num_frames=6)
    folder = tmp_path_factory.mktemp("saved") / "ume"
    model.save(str(folder))
    return model, folder


def test_saved_folder_is_safetensors_with_our_settings(saved):
    _, folder = saved
    modules = json.loads((folder / "modules.json").read_text())
    assert [entry["type"] for entry in modules] == [MODULE_CLASS_REF]
    settings = json.loads((folder / "ume_r1_config.json").read_text())
    assert settings["mode"] == "discriminative" and settings["num_frames"] == 6
    assert json.loads((folder / "config.json").read_text())["model_type"] == "qwen2_vl"
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))


def test_round_trip_gives_identical_vectors_without_trust_remote_code(saved, module):
    model, folder = saved
    reloaded = SentenceTransformer(str(folder), device="cpu")
    assert isinstance(reloaded[0], ume_plugins.UMER1Embedder)
    assert reloaded[0].mode == "discriminative" and reloaded[0].num_frames == 6
    np.testing.assert_array_equal(reloaded.encode(INPUTS), model.encode(INPUTS))
    scripted = {"generation_kwargs": {"logits_processor": [ScriptedDecoding(module.tokenizer, REASONING)]}}
    np.testing.assert_array_equal(
        reloaded.encode(INPUTS, mode="generative", **scripted), model.encode(INPUTS, mode="generative", **scripted)
    )


def test_without_the_import_the_folder_needs_trust_remote_code(saved):
    model, folder = saved
    code = (
        "import sys, numpy as np\n"
        "from sentence_transformers import SentenceTransformer\n"
        f"folder = {str(folder)!r}\n"
        "try:\n"
        "    SentenceTransformer(folder, device='cpu')\n"
        "except ValueError as error:\n"
        "    print('refused:', 'trust_remote_code=True' in str(error))\n"
        "assert 'ume_plugins' not in sys.modules\n"
        "model = SentenceTransformer(folder, device='cpu', trust_remote_code=True)\n"
        "np.save(sys.argv[1] if len(sys.argv) > 1 else 'out.npy', model.encode(['a red fox']))\n"
        "print(type(model[0]).__name__)\n"
    )
    out = folder.parent / "untrusted.npy"
    result = subprocess.run(
        [sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=300, cwd=folder.parent
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["refused:", "True", "UMER1Embedder"]
    np.testing.assert_array_equal(np.load(out), model.encode(["a red fox"]))


def test_only_our_class_is_trusted(saved, tmp_path):
    _, folder = saved
    other = shutil.copytree(folder, tmp_path / "other")
    (other / "modules.json").write_text(
        json.dumps([{"idx": 0, "name": "0", "path": "", "type": "some_package.Backdoor"}])
    )
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        SentenceTransformer(str(other), device="cpu")


def test_a_non_ume_checkpoint_still_gets_sentence_transformers_defaults(tmp_path, tiny_path):
    plain = shutil.copytree(tiny_path, tmp_path / "plain")
    (plain / "tokenizer.json").write_text((plain / "tokenizer.json").read_text().replace("<gen_emb>", "<gen_xxx>"))
    model = SentenceTransformer(str(plain), device="cpu")
    assert not isinstance(model[0], ume_plugins.UMER1Embedder)


def test_the_tiny_cache_is_reused(tiny_path):
    stamp = (Path(tiny_path) / "model.safetensors").stat().st_mtime_ns
    assert ume_plugins.tiny_checkpoint_path() == tiny_path
    assert (Path(tiny_path) / "model.safetensors").stat().st_mtime_ns == stamp
