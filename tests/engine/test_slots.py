from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch
from transformers import LogitsProcessor

from tests.conftest import REASONING, ScriptedDecoding, gradient, solid
from ume_plugins.engine import Engine
from ume_plugins.engine.step import StepPaths, decode_step, fused_projections, gemv_units, rms_norm

TEXT = "a red fox jumps over the fence"
IMAGE = gradient((84, 56), seed=3)
VIDEO = {"video": [solid((40 * i, 50, 60), (56, 56)) for i in range(4)]}
PAIR = {"text": "compare", "image": [solid((200, 0, 0), (56, 56)), gradient((70, 70), seed=3)]}
INPUTS = {"text": [TEXT], "image": [IMAGE], "video": [VIDEO], "mixed": [TEXT, IMAGE, PAIR, VIDEO, "a cat"]}
# A huge repetition penalty makes every greedy step pick a token the rollout has not used yet.
GREEDY = {"generation_kwargs": {"max_new_tokens": 10, "repetition_penalty": 1e6}}
SAMPLED = {"generation_kwargs": {"max_new_tokens": 10, "temperature": 1.5}, "num_samples": 2, "seed": 7}


def rollouts(module, inputs, decoder, *, spec=None, **kwargs):
    features = module.preprocess(inputs, mode="generative")
    engine = Engine(replace(module.engine().spec, **(spec or {})))
    return engine.rollouts(module.model, features, decoder=decoder, **kwargs)


def cosines(a, b):
    return torch.nn.functional.cosine_similarity(a.float().flatten(0, -2), b.float().flatten(0, -2), dim=-1)


def assert_same(expected, actual):
    assert torch.equal(expected.generated_ids, actual.generated_ids)
    assert torch.equal(expected.forced, actual.forced)
    assert cosines(expected.states, actual.states).min() >= 0.9999


def adjust_runs(monkeypatch, adjust):
    """Call ``adjust(run)`` on every slot-engine run right after it is set up: CUDA's choices on the CPU."""
    from ume_plugins.engine import slots as slot_engine

    init = slot_engine.SlotRun.__init__

    def adjusted(self, *args, **kwargs):
        init(self, *args, **kwargs)
        adjust(self)

    monkeypatch.setattr(slot_engine.SlotRun, "__init__", adjusted)


@pytest.mark.parametrize("name", list(INPUTS))
@pytest.mark.parametrize("kwargs", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_the_slot_engine_matches_the_reference_loop(module, name, kwargs):
    reference = rollouts(module, INPUTS[name], "reference", with_disc=True, **kwargs)
    slots = rollouts(module, INPUTS[name], "slots", with_disc=True, **kwargs)
    assert_same(reference, slots)
    assert cosines(reference.disc_states, slots.disc_states).min() >= 0.9999


def test_user_processors_see_each_rollout_as_its_own_row(module):
    script = {"generation_kwargs": {"logits_processor": [ScriptedDecoding(module.tokenizer, REASONING)]}}
    reference = rollouts(module, INPUTS["mixed"], "reference", **script)
    slots = rollouts(module, INPUTS["mixed"], "slots", spec={"max_slots": 2}, **script)
    assert_same(reference, slots)
    assert slots.generated_ids[2, 0].tolist() == module.tokenizer(REASONING, add_special_tokens=False)["input_ids"]


class RowScript(ScriptedDecoding):
    per_row = True  # reads each row on its own: may run on the slot engine


def test_a_per_row_processor_runs_on_the_slot_engine_through_encode(model, module):
    calls = []
    handle = module.model.model.language_model.register_forward_hook(lambda *args: calls.append(1))
    try:
        rows = model.encode(
            ["a cat", "a dog"],
            batch_size=2,
            output_value=None,
            generation_kwargs={"logits_processor": [RowScript(module.tokenizer, REASONING)]},
        )
    finally:
        handle.remove()
    assert calls == [1]  # the prefill only: the slot engine decodes without the decoder's forward
    expected = module.tokenizer(REASONING, add_special_tokens=False)["input_ids"]
    assert all(row["generated_ids"].tolist() == expected for row in rows)


class TensorScript(LogitsProcessor):
    """``ScriptedDecoding`` in device arithmetic alone, so it may declare itself ``capturable``."""

    per_row = True
    capturable = True

    def __init__(self, tokenizer, script: str):
        ids = tokenizer(script, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
        self.script = torch.tensor(ids)
        self.im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
        self.header = len(tokenizer("assistant\n", add_special_tokens=False)["input_ids"])

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        width = input_ids.shape[1]
        positions = torch.arange(width, device=input_ids.device)
        start = torch.where(input_ids == self.im_start, positions, -1).amax(dim=1) + 1 + self.header
        step = (width - start).clamp(max=len(self.script) - 1)
        token = self.script.to(input_ids.device)[step]
        return torch.full_like(scores, float("-inf")).scatter_(1, token[:, None], 0.0)


def test_a_capturable_processor_joins_the_step_and_changes_no_result(module):
    from transformers import GenerationConfig

    from ume_plugins.engine.processors import ScoreProcessors

    tokenizer = module.tokenizer
    assert not ScoreProcessors(GenerationConfig(), [1], [RowScript(tokenizer, REASONING)]).capturable
    assert ScoreProcessors(GenerationConfig(), [1], [TensorScript(tokenizer, REASONING)]).capturable
    assert not ScoreProcessors(GenerationConfig(no_repeat_ngram_size=2), [1]).capturable  # reads ids on the host
    eager = {"generation_kwargs": {"logits_processor": [RowScript(tokenizer, REASONING)]}}
    captured = {"generation_kwargs": {"logits_processor": [TensorScript(tokenizer, REASONING)]}}
    expected = rollouts(module, INPUTS["mixed"], "slots", spec={"max_slots": 2}, **eager)
    actual = rollouts(module, INPUTS["mixed"], "slots", spec={"max_slots": 2}, **captured)
    assert torch.equal(expected.generated_ids, actual.generated_ids)
    assert torch.equal(expected.states, actual.states)
    assert actual.generated_ids[2, 0].tolist() == tokenizer(REASONING, add_special_tokens=False)["input_ids"]


def test_the_compiled_engine_equals_the_eager_engine(module):
    eager = rollouts(module, INPUTS["mixed"], "slots", spec={"max_slots": 2, "compile": "eager"}, **GREEDY)
    compiled_spec = {"max_slots": 2, "compile": "torch_compile", "compile_backend": "aot_eager"}
    compiled = rollouts(module, INPUTS["mixed"], "slots", spec=compiled_spec, **GREEDY)
    assert_same(eager, compiled)


class GenEmbAfterPrompt(LogitsProcessor):
    """Leaves the model free, but makes each row write ``<gen_emb>`` after a number of tokens set by its prompt."""

    def __init__(self, tokenizer):
        self.gen_emb = tokenizer.convert_tokens_to_ids("<gen_emb>")
        self.im_start = tokenizer.convert_tokens_to_ids("<|im_start|>")
        self.pad = tokenizer.pad_token_id
        self.header = len(tokenizer("assistant\n", add_special_tokens=False)["input_ids"])

    def length(self, ids: list[int], start: int) -> int:
        return 2 + sum(token != self.pad for token in ids[:start]) % 9

    def __call__(self, input_ids, scores):
        out = scores.clone()
        for row, ids in enumerate(input_ids.tolist()):
            start = len(ids) - ids[::-1].index(self.im_start) + self.header
            if len(ids) - start == self.length(ids, start) - 1:
                out[row] = float("-inf")
                out[row, self.gen_emb] = 0.0
        return out


MANY = [TEXT, IMAGE, "a cat", PAIR, "two dogs play in the snow", VIDEO, "x"]


@pytest.fixture(scope="module")
def one_at_a_time(module):
    kwargs = {
        "generation_kwargs": {"logits_processor": [GenEmbAfterPrompt(module.tokenizer)], "repetition_penalty": 1e6}
    }
    return kwargs, [rollouts(module, [item], "slots", **kwargs) for item in MANY]


@pytest.mark.parametrize("slots", [1, 2, 3, 8])
def test_continuous_batching_gives_each_input_what_it_gets_alone(module, one_at_a_time, slots):
    kwargs, alone = one_at_a_time
    batched = rollouts(module, MANY, "slots", spec={"max_slots": slots}, **kwargs)
    lengths = []
    for row, single in enumerate(alone):
        written = single.generated_ids[0, 0]
        assert torch.equal(batched.generated_ids[row, 0, : len(written)], written)
        assert cosines(batched.states[row], single.states[0]).min() >= 0.9999
        lengths.append(len(written))
    assert len(set(lengths)) > 2  # rollouts of different lengths: slots were refilled at different steps
    total = sum(lengths)
    # One step per token; continuous batching keeps the slots busy until the last rollouts.
    assert math.ceil(total / slots) <= batched.decode_steps <= math.ceil(total / slots) + max(lengths)
    if slots == 1:
        assert batched.decode_steps == total


def filler_processor(token: int, after: tuple[int, ...] = (), then: int | None = None):
    """Proposes ``token`` at every step; proposes ``then`` right after a row's ids end with ``after``."""

    class Filler(LogitsProcessor):
        def __call__(self, input_ids, scores):
            out = torch.full_like(scores, float("-inf"))
            for row, ids in enumerate(input_ids.tolist()):
                ends = after and tuple(ids[-len(after) :]) == after
                out[row, then if ends else token] = 0.0
            return out

    return Filler()


def graceful(module, processor, max_new_tokens=40, thinking_budget=4):
    spec = {"thinking_budget": thinking_budget, "answer_budget": 3}
    kwargs = {"logits_processor": [processor], "max_new_tokens": max_new_tokens}
    result = rollouts(module, ["a cat"], "slots", spec=spec, generation_kwargs=kwargs)
    return result.generated_ids[0, 0].tolist(), bool(result.forced[0, 0]), bool(result.answer_forced[0, 0])


def test_the_thinking_budget_closes_the_reasoning_then_the_answer_budget_forces_gen_emb(module):
    spec = module.engine().spec
    x = module.tokenizer.convert_tokens_to_ids("x")
    written, forced, answer_forced = graceful(module, filler_processor(x))
    assert written == [x] * 4 + list(spec.answer_open) + [x] * 3
    assert forced and answer_forced


def test_an_answer_that_writes_gen_emb_within_its_budget_is_not_forced(module):
    spec = module.engine().spec
    x = module.tokenizer.convert_tokens_to_ids("x")
    written, forced, answer_forced = graceful(module, filler_processor(x, spec.answer_open, spec.gen_emb_id))
    assert written == [x] * 4 + list(spec.answer_open) + [spec.gen_emb_id]
    assert answer_forced and not forced


def test_max_new_tokens_stays_the_hard_cap_under_the_thinking_budget(module):
    spec = module.engine().spec
    x = module.tokenizer.convert_tokens_to_ids("x")
    written, forced, answer_forced = graceful(module, filler_processor(x), max_new_tokens=6)
    assert written == [x] * 4 + list(spec.answer_open[:2])
    assert forced and answer_forced


def test_a_reasoning_closed_within_the_budget_is_left_alone(module):
    script = "<think> a </think><answer> b </answer><gen_emb>"
    ids = module.tokenizer(script, add_special_tokens=False)["input_ids"]
    closed_at = ids.index(module.tokenizer.convert_tokens_to_ids("think")) + 1  # "... </" "think": closed
    processor = ScriptedDecoding(module.tokenizer, script)
    written, forced, answer_forced = graceful(module, processor, thinking_budget=closed_at)
    assert written == ids and not forced and not answer_forced
    written, _, answer_forced = graceful(module, processor, thinking_budget=closed_at - 1)
    assert answer_forced and written[: closed_at - 1] == ids[: closed_at - 1]


def test_the_thinking_budget_refuses_calls_only_the_reference_loop_can_run(module):
    processor = ScriptedDecoding(module.tokenizer, REASONING)
    with pytest.raises(ValueError, match="thinking_budget needs the slot engine"):
        rollouts(
            module, ["a cat"], "auto", spec={"thinking_budget": 4}, generation_kwargs={"logits_processor": [processor]}
        )


def test_a_compiled_step_equals_the_eager_step(module):
    decoder = module.model.model.language_model
    config = decoder.config
    shape = (3, config.num_key_value_heads, 64, config.hidden_size // config.num_attention_heads)
    generator = torch.Generator().manual_seed(0)
    keys = [torch.randn(shape, generator=generator) for _ in decoder.layers]
    values = [torch.randn(shape, generator=generator) for _ in decoder.layers]
    step = {
        "tokens": torch.tensor([5, 9, 11]),
        "lengths": torch.tensor([10, 40, 3]),
        "offsets": torch.tensor([0, 2, -1]),
        "fed": torch.tensor([True, True, False]),
    }
    compiled = torch.compile(decode_step, backend="aot_eager", fullgraph=True)  # no graph break: capturable
    with torch.inference_mode():
        eager_cache = [tensor.clone() for tensor in keys + values]
        compiled_cache = [tensor.clone() for tensor in keys + values]
        half = len(keys)
        expected = decode_step(decoder, **step, keys=eager_cache[:half], values=eager_cache[half:])
        actual = compiled(decoder, **step, keys=compiled_cache[:half], values=compiled_cache[half:])
    assert torch.allclose(expected, actual, atol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(eager_cache, compiled_cache, strict=True))


def test_a_compiled_one_slot_step_with_every_kernel_equals_the_eager_step(module):
    from ume_plugins.engine.attention import triton_available

    if not triton_available(torch.device("cpu")):
        pytest.skip("the kernels need Triton (its interpreter on the CPU)")
    decoder = module.model.model.language_model
    config = decoder.config
    shape = (1, config.num_key_value_heads, 64, config.hidden_size // config.num_attention_heads)
    generator = torch.Generator().manual_seed(0)
    cache = [torch.randn(shape, generator=generator) for _ in range(2 * len(decoder.layers))]
    step = {"tokens": torch.tensor([5]), "lengths": torch.tensor([10]), "offsets": torch.tensor([2])}
    step["fed"] = torch.tensor([True])
    units = gemv_units(decoder, torch.device("cpu"), torch.float32)
    paths = StepPaths(fused_projections(decoder), True, units, True, True)
    step.update(paths._asdict())
    # As the engine compiles it (dynamic shapes), and in one graph: capturable.
    compiled = torch.compile(decode_step, backend="aot_eager", dynamic=True, fullgraph=True)
    half = len(decoder.layers)
    results = []
    for forward in (decode_step, compiled):
        copies = [tensor.clone() for tensor in cache]
        with torch.inference_mode():
            results.append((forward(decoder, **step, keys=copies[:half], values=copies[half:]), copies))
    (expected, expected_cache), (actual, actual_cache) = results
    assert torch.equal(expected, actual)
    assert all(torch.equal(a, b) for a, b in zip(expected_cache, actual_cache, strict=True))


def test_a_resized_slot_keeps_its_cache_its_tokens_and_penalty_neutral_padding(module):
    from ume_plugins.engine.slot_state import SlotTensors
    from ume_plugins.engine.stages import Budget

    model = module.model
    budget = Budget(gen_emb_id=module.engine().spec.gen_emb_id, eos_ids=(1,), max_new_tokens=8)
    small = SlotTensors(model, budget, slots=3, capacity=64, sampling=False)
    for slot, first in enumerate((7, 8, 9)):
        small.ids[slot] = first
        small.ids[slot, 1:5] = torch.arange(20, 24)
        small.keys[0][slot] = float(slot + 1)
    grown = small.resized(model, rows=[2, 0], slots=2, capacity=192)
    assert grown.ids[:, :5].tolist() == [[9, 20, 21, 22, 23], [7, 20, 21, 22, 23]]
    assert set(grown.ids[0, 5:].tolist()) == {9} and set(grown.ids[1, 5:].tolist()) == {7}
    assert torch.all(grown.keys[0][0, :, :64] == 3.0) and torch.all(grown.keys[0][1, :, :64] == 1.0)


class GenEmbByPromptLength(GenEmbAfterPrompt):
    """Ends long prompts' rollouts at once and lets short ones reason on: long idle slots beside short live ones."""

    per_row = True

    def length(self, ids: list[int], start: int) -> int:
        return 2 if sum(token != self.pad for token in ids[:start]) > 200 else 40

    def __call__(self, input_ids, scores):
        rows = [row for row, ids in enumerate(input_ids.tolist()) if self.im_start in ids]  # idle slots hold none
        out = scores.clone()
        out[rows] = super().__call__(input_ids[rows], scores[rows])
        return out


def test_idle_slots_keep_no_length_when_graph_buckets_shrink_the_cache(module, monkeypatch):
    # CUDA graphs keep power-of-two slot counts and shrink the cache eagerly; run that policy on the CPU
    # (steps stay eager) so a finished long rollout's slot sits idle beside short live ones.
    from ume_plugins.engine import slots as slot_engine

    adjust_runs(monkeypatch, lambda run: setattr(run, "graphs", True))
    monkeypatch.setattr(slot_engine, "StepRunner", lambda step, *graph_args: step)
    inputs = [{"text": "word " * 300}, "a cat", "a dog", "two birds", "a fish", "a horse"]  # 8 slots, 5 live
    kwargs = {"generation_kwargs": {"logits_processor": [GenEmbByPromptLength(module.tokenizer)], "max_new_tokens": 60}}
    batched = rollouts(module, inputs, "slots", spec={"max_slots": 8}, **kwargs)
    for row, item in enumerate(inputs):
        alone = rollouts(module, [item], "slots", **kwargs)
        written = alone.generated_ids[0, 0]
        assert torch.equal(batched.generated_ids[row, 0, : len(written)], written)
        assert cosines(batched.states[row], alone.states[0]).min() >= 0.9999


def test_the_step_norms_round_where_transformers_rounds_and_hooks_still_see_them(module):
    decoder = module.model.model.language_model
    generator = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        norm = copy.deepcopy(decoder.layers[0].post_attention_layernorm).to(dtype)
        norm.weight.data.uniform_(0.5, 1.5, generator=generator)
        hidden = (torch.randn(3, 1, norm.weight.shape[0], generator=generator) * 4).to(dtype)
        with torch.inference_mode():
            assert torch.equal(rms_norm(norm, hidden), norm(hidden))
    seen = []
    handle = decoder.layers[-1].post_attention_layernorm.register_forward_hook(lambda *args: seen.append(1))
    config = decoder.config
    shape = (1, config.num_key_value_heads, 64, config.hidden_size // config.num_attention_heads)
    cache = [torch.zeros(shape) for _ in decoder.layers]
    one = torch.ones(1, dtype=torch.long)
    try:
        with torch.inference_mode():
            decode_step(decoder, one, one, one * 0, one.bool(), cache, [c.clone() for c in cache])
    finally:
        handle.remove()
    assert seen == [1]


# (fused projections, decode attention kernel, GEMV kernels, rotary kernel, rotary inside the GEMV kernel)
PATHS = {
    "fused": (True, False, False, False, False),
    "kernel": (False, True, False, False, False),
    "rotary": (False, False, False, True, False),
    "all": (True, True, True, True, True),
}


@pytest.mark.parametrize("paths, max_slots", [(name, 3) for name in PATHS] + [("all", 1)])
def test_the_cuda_step_paths_decode_like_the_modules_and_sdpa(module, monkeypatch, paths, max_slots):
    # The engine takes these paths on CUDA only; take them on the CPU here (the kernels in Triton's
    # interpreter), where the arithmetic can be compared. The GEMV kernels run at one slot only.
    from ume_plugins.engine.attention import triton_available

    fused, kernel, gemv, rotary, rotary_in_gemv = PATHS[paths]
    if (kernel or gemv or rotary) and not triton_available(torch.device("cpu")):
        pytest.skip("the kernels need Triton (its interpreter on the CPU)")

    def on_cuda_paths(run):
        decoder = run.model.model.language_model
        units = gemv_units(decoder, run.model.device, run.model.dtype) if gemv else None
        assert units is None or all(layer == frozenset({"qkv", "output", "mlp"}) for layer in units)
        run.paths = StepPaths(fused_projections(decoder) if fused else None, kernel, units, rotary, rotary_in_gemv)

    from ume_plugins.engine import step

    calls = {"decode_linear": [], "project_rotate_and_cache": []}

    def counted(name):
        op = getattr(step, name)

        def call(*args, **kwargs):
            calls[name].append(1)
            return op(*args, **kwargs)

        return call

    inputs = INPUTS["mixed"] if max_slots > 1 else INPUTS["mixed"][:3]
    plain = rollouts(module, inputs, "slots", spec={"max_slots": max_slots}, **GREEDY)
    adjust_runs(monkeypatch, on_cuda_paths)
    for name in calls:
        monkeypatch.setattr(step, name, counted(name))
    assert_same(plain, rollouts(module, inputs, "slots", spec={"max_slots": max_slots}, **GREEDY))
    assert bool(calls["decode_linear"]) == (gemv and max_slots == 1)
    assert bool(calls["project_rotate_and_cache"]) == (rotary_in_gemv and max_slots == 1)


def test_the_gemv_kernels_leave_hooked_and_adapted_modules_to_themselves(module):
    from ume_plugins.engine.step import _gemv_eligible

    layers = module.model.model.language_model.layers
    assert all(_gemv_eligible(layer) == frozenset({"qkv", "output", "mlp"}) for layer in layers)
    handles = [
        layers[0].mlp.act_fn.register_forward_hook(lambda *args: None),
        layers[0].self_attn.o_proj.register_forward_pre_hook(lambda *args: None),
        layers[-1].input_layernorm.register_forward_hook(lambda *args: None),
    ]
    try:
        assert _gemv_eligible(layers[0]) == frozenset({"qkv"})
        assert _gemv_eligible(layers[-1]) == frozenset({"output", "mlp"})
    finally:
        for handle in handles:
            handle.remove()
    adapted = copy.deepcopy(layers[0])
    adapted.mlp.up_proj = type("LoraLinear", (torch.nn.Linear,), {})(4, 4)  # a subclass computes otherwise
    assert _gemv_eligible(adapted) == frozenset({"qkv", "output"})


def test_fused_projections_leave_hooked_layers_to_their_modules(module):
    decoder = module.model.model.language_model
    assert all(projection is not None for projection in fused_projections(decoder))
    handle = decoder.layers[0].self_attn.v_proj.register_forward_hook(lambda *args: None)
    try:
        hooked = fused_projections(decoder)
    finally:
        handle.remove()
    assert hooked[0] is None and all(projection is not None for projection in hooked[1:])


def test_with_the_decode_kernel_a_call_keeps_its_cache_until_its_slots_shrink(module, monkeypatch):
    # Graph buckets on the CPU (steps eager), the kernel in Triton's interpreter: one input at a time,
    # short rollouts after a long prompt's, so the tight policy would shrink the cache between them.
    from ume_plugins.engine import slots as slot_engine
    from ume_plugins.engine.attention import triton_available

    if not triton_available(torch.device("cpu")):
        pytest.skip("the decode kernel needs Triton (its interpreter on the CPU)")
    resize = slot_engine.SlotRun._resize
    shapes = []

    def graph_buckets(run):
        run.graphs, run.paths = True, StepPaths(None, kernel)

    def recorded(self, rows, slots, capacity):
        shapes.append((self.t.slots, self.t.capacity, slots, capacity))
        resize(self, rows, slots, capacity)

    adjust_runs(monkeypatch, graph_buckets)
    monkeypatch.setattr(slot_engine.SlotRun, "_resize", recorded)
    monkeypatch.setattr(slot_engine, "StepRunner", lambda step, *graph_args: step)
    inputs = [{"text": "word " * 300}, "a cat", "a dog"]
    kwargs = {"generation_kwargs": {"logits_processor": [GenEmbByPromptLength(module.tokenizer)], "max_new_tokens": 60}}
    results = {}
    for kernel in (False, True):
        shapes.clear()
        results[kernel] = rollouts(module, inputs, "slots", spec={"max_slots": 1}, **kwargs)
        shrinks = [shape for shape in shapes if shape[3] < shape[1]]
        assert bool(shrinks) != kernel  # SDPA: the cache follows the live rollout down; the kernel: kept
    assert_same(results[False], results[True])
