from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor

from tests.conftest import REASONING, ScriptedDecoding


class ScriptPerInput(LogitsProcessor):
    """Forces a row to write the script of the first key token found in its prompt."""

    def __init__(self, tokenizer, scripts: dict[str, str]):
        self.scripted = {
            tokenizer.convert_tokens_to_ids(key): ScriptedDecoding(tokenizer, script) for key, script in scripts.items()
        }

    def __call__(self, input_ids, scores):
        out = scores.clone()
        for row, ids in enumerate(input_ids):
            key = next(token for token in self.scripted if token in ids)
            out[row] = self.scripted[key](ids[None], scores[row : row + 1])[0]
        return out


def decoder_batch_sizes(module, run):
    sizes = []
    handle = module.model.model.language_model.register_forward_hook(
        lambda mod, args, kwargs, output: sizes.append(output.last_hidden_state.shape), with_kwargs=True
    )
    try:
        run()
    finally:
        handle.remove()
    return sizes


def test_a_finished_rollout_leaves_the_batch_at_once(model, module):
    scripts = ScriptPerInput(module.tokenizer, {"<|box_start|>": "<gen_emb>", "<|box_end|>": REASONING})
    inputs = ["<|box_start|>", "<|box_end|>"]
    shapes = decoder_batch_sizes(
        module, lambda: model.encode(inputs, batch_size=2, generation_kwargs={"logits_processor": [scripts]})
    )
    decode_rows = [shape[0] for shape in shapes[1:]]  # shapes[0] is the prefill
    assert decode_rows[0] == 2 and set(decode_rows[1:]) == {1}
    assert len(decode_rows) == len(module.tokenizer(REASONING, add_special_tokens=False)["input_ids"])


def test_generate_and_per_step_hidden_states_are_never_used(model, module, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("generate() must not be called")

    monkeypatch.setattr(module.model, "generate", refuse)
    seen = []
    handle = module.model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs.get("output_hidden_states")), with_kwargs=True
    )
    try:
        model.encode(["a cat", "a dog"], generation_kwargs={"max_new_tokens": 6})
    finally:
        handle.remove()
    assert seen and not any(seen)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_length": 20}, "use max_new_tokens"),
        ({"num_return_sequences": 2}, "use num_samples"),
        ({"use_cache": False}, "KV cache"),
    ],
)
def test_generation_kwargs_the_engine_cannot_honour_are_rejected(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.encode(["a cat"], generation_kwargs=kwargs)


def test_config_processors_apply_as_in_generate(model, module):
    """A generation-config field (here a repetition penalty) changes the rollout as it would in generate."""

    def rollout(**kwargs):
        row = model.encode(["a cat"], output_value=None, generation_kwargs={"max_new_tokens": 12, **kwargs})[0]
        return row["generated_ids"].tolist()

    plain, penalised = rollout(), rollout(repetition_penalty=1e6)
    assert len(set(plain)) < len(plain)  # the random tiny model repeats itself
    assert len(set(penalised)) == len(penalised)


class ScriptPerRow(LogitsProcessor):
    """Forces batch row ``i`` to write ``scripts[i]``: it indexes rows, as a caller of generate may."""

    def __init__(self, tokenizer, scripts: list[str]):
        self.rows = [ScriptedDecoding(tokenizer, script) for script in scripts]

    def __call__(self, input_ids, scores):
        assert input_ids.shape[0] == len(self.rows), "a user processor must see the whole batch"
        return torch.cat(
            [script(ids[None], row[None]) for script, ids, row in zip(self.rows, input_ids, scores, strict=True)]
        )


def test_user_processors_see_the_whole_batch_and_match_generate(module):
    scripts = ["<gen_emb>", REASONING, "<think> x </think><gen_emb>"]
    features = module.preprocess(["first", "second input", "third"], mode="generative")
    ours = module.forward(
        dict(features), generation_kwargs={"logits_processor": [ScriptPerRow(module.tokenizer, scripts)]}
    )
    assert not ours["gen_emb_forced"].any()
    inputs = {key: value for key, value in features.items() if not key.startswith(("ume_", "images_per", "videos_per"))}
    with torch.no_grad():
        out = module.model.generate(
            **inputs,
            max_new_tokens=40,
            do_sample=False,
            logits_processor=[ScriptPerRow(module.tokenizer, scripts)],
            output_hidden_states=True,
            return_dict_in_generate=True,
        )
    prompt_len = inputs["input_ids"].shape[1]
    for row in range(len(scripts)):
        written = out.sequences[row, prompt_len:].tolist()
        step = written.index(module.gen_emb_id) + 1
        expected = torch.nn.functional.normalize(out.hidden_states[step][-1][row, 0].float(), dim=-1)
        assert module.decode_reasoning(ours["generated_ids"][row]) == module.tokenizer.decode(written[:step])
        assert torch.dot(ours["sentence_embedding"][row], expected) >= 0.9999
