"""Contract tests: each non-public host name we rely on (docs/host-contracts.md) still means what we use it for.

Each failure names the host version and what changed, so that a host release that breaks us is
caught here and not inside a user's call.
"""

from __future__ import annotations

import inspect
import json

import pytest
import sentence_transformers
import transformers
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.model import BaseModel

import ume_plugins
from ume_plugins.checkpoints import MODULE_CLASS_REF
from ume_plugins.inputs import parse
from ume_plugins.model import UMESentenceTransformer
from ume_plugins.module import UMER1Embedder

ST = f"sentence-transformers {sentence_transformers.__version__}"


def broken(what: str) -> None:
    pytest.fail(f"{what} (see docs/host-contracts.md)")


def test_the_module_class_reference_is_the_class():
    assert f"{UMER1Embedder.__module__}.{UMER1Embedder.__qualname__}" == MODULE_CLASS_REF


def test_sentence_transformer_new_routes_our_names(tiny_path):
    if "__new__" in vars(BaseModel) or not getattr(SentenceTransformer.__new__, "_ume_plugins_route", False):
        broken(f"{ST}: SentenceTransformer.__new__ is not ume_plugins' routing one; drop-in loading is off")
    if type(SentenceTransformer(str(tiny_path), device="cpu")) is not UMESentenceTransformer:
        broken(f"{ST}: SentenceTransformer(name) no longer creates its instance through __new__(cls, name, ...)")


def test_module_classes_resolve_saved_class_references_without_trust_remote_code():
    if "_module_classes" not in vars(BaseModel):
        broken(f"{ST}: BaseModel._module_classes is gone; saved UME-R1 folders need trust_remote_code=True")
    instance = UMESentenceTransformer.__new__(UMESentenceTransformer)
    resolved = instance._load_module_class_from_ref(MODULE_CLASS_REF, "folder", False, None, None)
    if resolved is not UMER1Embedder:
        broken(f"{ST}: _load_module_class_from_ref no longer consults _module_classes")


def test_encode_batches_inputs_by_input_length(model, monkeypatch):
    order = []
    preprocess = model[0].preprocess
    monkeypatch.setattr(
        model[0], "preprocess", lambda inputs, **kw: order.append(inputs[0].index) or preprocess(inputs, **kw)
    )
    model.encode(["a", "a much longer text", "medium text"], batch_size=1, mode="discriminative")
    if order != [1, 2, 0]:
        broken(f"{ST}: encode no longer sorts inputs by _input_length before batching (batches: {order})")


def test_encode_passes_parsed_inputs_and_its_arguments_through(model):
    parameters = inspect.signature(SentenceTransformer.encode).parameters
    if "output_value" not in parameters or inspect.Parameter.VAR_KEYWORD not in {p.kind for p in parameters.values()}:
        broken(f"{ST}: encode's signature changed: {list(parameters)}")
    features = BaseModel.preprocess(model, [parse("a cat", 0, model[0].policy)], mode="discriminative")
    if "input_ids" not in features:
        broken(f"{ST}: BaseModel.preprocess no longer hands inputs of its unknown types to the module")


def test_saved_requirements_are_written_before_our_module_and_checked_before_loading(tmp_path):
    folder = tmp_path / "model"
    ume_plugins.load("ume-r1-tiny", device="cpu").save(str(folder))
    config_file = folder / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text())
    if "transformers" not in config.get("requirements", {}):
        broken(f"{ST}: config_sentence_transformers.json is no longer written before the modules save")
    config["requirements"]["transformers"] = ">=999"
    config_file.write_text(json.dumps(config))
    with pytest.raises(ImportError):
        SentenceTransformer(str(folder), device="cpu")


def test_the_qwen2_pre_tokenizer_regex_is_where_the_tiny_builder_reads_it():
    from transformers.models.qwen2 import tokenization_qwen2

    if not isinstance(getattr(tokenization_qwen2, "PRETOKENIZE_REGEX", None), str):
        broken(f"transformers {transformers.__version__}: qwen2's PRETOKENIZE_REGEX moved; ume_plugins.tiny needs it")
