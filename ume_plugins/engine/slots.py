"""The slot engine: static-shape decoding with continuous batching.

A fixed number of slots decode together; each holds one rollout with its own length, M-RoPE
offset and KV region (:mod:`ume_plugins.engine.slot_state`). A step feeds every slot one token
through :func:`~ume_plugins.engine.step.decode_step`, whose shapes never change, so on CUDA it is
captured once per shape and replayed (or compiled with ``torch.compile``).

Continuous batching: when a rollout reads its ``<gen_emb>`` state, its slot takes the next waiting
rollout, whose prompt is prefilled (in length groups, vision tower included) and copied into the
slot's KV region; it joins the running decode at the next step. A batch of mixed reasoning
lengths thus costs about (total tokens / slots) steps. Rollouts of one input share its prefill.
Results come back in input order.

Greedy results do not depend on slots or batch-mates: a slot's KV region holds only its own
tokens (no padding), its positions are its own, and sampling draws from per-rollout streams.

The host learns which slots finished one step late: step t+1 is queued before the flags of
step t are read, so the device never waits for the host (a finished slot idles for that step).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch
from transformers import GenerationConfig

from ume_plugins.engine.base import OnMissing, Rollout, assemble, missing_gen_emb_error
from ume_plugins.engine.capture import capture_stream
from ume_plugins.engine.prefill import Prompt, prefill_prompts
from ume_plugins.engine.processors import ScoreProcessors
from ume_plugins.engine.sampling import CHUNK, call_seed, draw, rollout_seed
from ume_plugins.engine.slot_state import (
    SlotOptions,
    SlotTensors,
    StepRunner,
    capacity_bucket,
    compiled_step,
    right_aligned,
    slot_bucket,
)
from ume_plugins.engine.stages import Budget
from ume_plugins.engine.step import decode_step, device_paths


class SlotRun:
    """One call of the slot engine over a batch of inputs.

    Args:
        model: A ``Qwen2VLForConditionalGeneration``.
        features: Left-padded processor outputs (with per-row image/video counts).
        budget: How rollouts end.
        config: The call's generation config.
        processors: Score processors (config fields and user processors).
        on_missing: ``"raise"`` raises when a rollout's ``<gen_emb>`` was forced.
        options: Slots and compilation.
        disc_emb_id: Id of ``<disc_emb>``, to read its prefill states (``mode="both"``), or None.
        num_samples: Rollouts per input.
        seed: Seed of sampled rollouts.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        features: dict[str, Any],
        *,
        budget: Budget,
        config: GenerationConfig,
        processors: ScoreProcessors,
        on_missing: OnMissing,
        options: SlotOptions,
        disc_emb_id: int | None,
        num_samples: int,
        seed: int | None,
    ) -> None:
        self.model, self.features, self.budget, self.config = model, features, budget, config
        self.processors, self.on_missing, self.num_samples = processors, on_missing, num_samples
        self.disc_emb_id = disc_emb_id
        # A user processor that is not declared capturable runs eagerly, outside the step's graph.
        self.eager_choice = processors.reads_order and not processors.capturable
        mask = features["attention_mask"]
        self.prompt_ids = [ids[row.bool()].tolist() for ids, row in zip(features["input_ids"], mask, strict=True)]
        inputs = len(self.prompt_ids)
        count = inputs * num_samples
        self.seed = call_seed(seed) if config.do_sample else None
        mode = options.mode(model.device)
        self.graphs = options.graphs(model.device)
        self.stream = capture_stream(model.device) if self.graphs else None
        self.compiled = compiled_step(options.compile_backend, model.device) if mode == "torch_compile" else None
        self.paths = device_paths(model)  # fused projections held for this call
        self.queue = deque(range(count))  # rollout r is sample r % k of input r // k
        self.prompts: dict[int, Prompt] = {}
        slots = min(options.max_slots, count)
        longest = max(len(ids) for ids in self.prompt_ids)
        capacity = capacity_bucket(longest + 1, self.graphs)
        self.t = SlotTensors(model, budget, slots, capacity, config.do_sample)
        self.rollout_of: list[int] = [-1] * slots  # -1: free
        self.start = [0] * slots
        hidden = model.config.text_config.hidden_size
        self.states = torch.zeros(count, hidden, dtype=torch.float32, device=model.device)
        with_disc = disc_emb_id is not None
        self.disc = torch.zeros(inputs, hidden, dtype=torch.float32, device=model.device) if with_disc else None
        self.generated: list[torch.Tensor | None] = [None] * count
        self.forced = [False] * count
        self.answer_forced = [False] * count
        self.step = 0

    def run(self) -> Rollout:
        """Decode every rollout; the results in input-major order."""
        try:
            self._decode_all()
        finally:
            self.t = None  # its step runners refer back to this run: free the buffers now, not at a GC
            self.prompts.clear()
            self.paths = None
        generated = [ids.tolist() for ids in self.generated]
        return assemble(
            self.states,
            generated,
            self.forced,
            num_samples=self.num_samples,
            pad_token_id=self.config.pad_token_id,
            answer_forced=self.answer_forced,
            disc_states=self.disc,
            decode_steps=self.step,
        )

    def _decode_all(self) -> None:
        self._fill()
        # On CUDA the host reads step t's flags after queueing step t+1; on the CPU there is no queue.
        lag = self.model.device.type == "cuda"
        pending = None
        while pending is not None or any(rollout >= 0 for rollout in self.rollout_of):
            launched = None
            if any(rollout >= 0 for rollout in self.rollout_of):
                self._fit_capacity()
                launched = self._launch()
            if not lag and launched is not None:
                pending, launched = launched, None
            if pending is not None:
                self._collect(*pending)
            pending = launched

    def _launch(self) -> tuple[torch.Tensor, Any, list[int], int]:
        """Queue one step for every slot; returns its flags (copied to the host) and who ran it."""
        t = self.t
        if t.uniforms is not None:
            due = [s for s, r in enumerate(self.rollout_of) if r >= 0 and self._fed(s) and self._fed(s) % CHUNK == 0]
            t.uniforms.refresh(due)
        if self.eager_choice:
            self._choose()
        kind = "decode" if self.eager_choice else "full"
        if kind not in t.runners:
            step = self._decode if self.eager_choice else self._full_step
            t.runners[kind] = StepRunner(step, self.graphs, t.graph_pool, self.stream)
        t.runners[kind]()
        host, event = t.flags_to_host(self.step)
        launched = (host, event, list(self.rollout_of), self.step)
        self.step += 1
        return launched

    def _full_step(self) -> None:
        self._choose()
        self._decode()

    def _choose(self) -> None:
        """Pick each slot's next input from its logits (processors, then greedy or its random stream)."""
        t = self.t
        scores = t.logits
        if self.processors:
            ordered = right_aligned(t.ids, t.lengths, self.config.pad_token_id) if self.processors.reads_order else None
            scores = self.processors(
                t.logits,
                own_ids=t.ids,
                ordered_ids=ordered,
                new_tokens=t.stages.new,
                prompt_lengths=t.prompt_lengths,
            )
        proposed = draw(scores, t.uniforms.at(t.stages.new)) if t.uniforms is not None else scores.argmax(dim=-1)
        t.tokens.copy_(t.stages.choose(proposed))

    def _decode(self) -> None:
        """Feed the chosen tokens, keep the ``<gen_emb>`` states and the next logits."""
        t, stages = self.t, self.t.stages
        fed = stages.live | stages.final
        step = self.compiled or decode_step
        decoder = self.model.model.language_model
        hidden = step(decoder, t.tokens, t.lengths, t.offsets, fed, t.keys, t.values, *self.paths)
        write = torch.where(fed, t.lengths, torch.zeros_like(t.lengths))
        t.ids.scatter_(1, write[:, None], torch.where(fed, t.tokens, t.ids[:, 0])[:, None])
        # Both widen to float32 inside the kernels they run anyway (no conversion kernels of their own).
        t.states.copy_(torch.where(stages.final[:, None], hidden, t.states))
        t.logits.copy_(self.model.lm_head(hidden))
        t.lengths.add_(fed.long())
        stages.flags(out=t.flags)

    def _fed(self, slot: int) -> int:
        """Tokens slot ``slot`` has fed after its prompt, as the host counts them (one step late at most)."""
        return self.step - self.start[slot]

    def _collect(self, host: torch.Tensor, event: Any, rollout_of: list[int], step: int) -> None:
        """Read a step's flags: keep finished rollouts' results, refill and reshape the slots."""
        if event is not None:
            event.synchronize()
        final, forced, answer = host.tolist()
        done = [(s, r) for s, r in enumerate(rollout_of) if r >= 0 and final[s]]
        if not done:
            return
        raising = [r for s, r in done if forced[s]] if self.on_missing == "raise" else []
        if raising:
            raise missing_gen_emb_error(raising, self.num_samples, self.config.max_new_tokens)
        t = self.t
        for s_then, rollout in done:
            slot = self.rollout_of.index(rollout)
            prompt = len(self.prompt_ids[rollout // self.num_samples])
            fed = step - self.start[slot] + 1 - int(forced[s_then])  # a forced <gen_emb> is not reasoning
            self.states[rollout] = t.states[slot]
            self.generated[rollout] = t.ids[slot, prompt : prompt + fed].clone()
            self.forced[rollout], self.answer_forced[rollout] = bool(forced[s_then]), bool(answer[s_then])
            self.rollout_of[slot] = -1
            # An idle slot keeps nothing: its stale length could exceed a later, smaller capacity.
            t.lengths[slot] = 0
        self._fill()
        self._reshape()

    def _fill(self) -> None:
        """Give free slots the next waiting rollouts, prefilling the inputs they need."""
        free = [slot for slot, rollout in enumerate(self.rollout_of) if rollout < 0]
        starting = [self.queue.popleft() for _ in range(min(len(free), len(self.queue)))]
        needed = sorted({rollout // self.num_samples for rollout in starting} - set(self.prompts))
        if needed:
            self._prefill(needed)
        t = self.t
        for slot, rollout in zip(free, starting, strict=False):
            source = rollout // self.num_samples
            prompt, length = self.prompts[source], len(self.prompt_ids[source])
            self._fit_capacity(length + 1)
            t = self.t
            for layer, (keys, values) in enumerate(zip(prompt.keys, prompt.values, strict=True)):
                t.keys[layer][slot, :, :length] = keys
                t.values[layer][slot, :, :length] = values
            ids = torch.tensor(self.prompt_ids[source], dtype=torch.long, device=t.ids.device)
            t.ids[slot] = ids[0]  # padding that repeats a prompt token changes no penalty
            t.ids[slot, :length] = ids
            t.lengths[slot] = length
            t.prompt_lengths[slot] = length
            t.offsets[slot] = prompt.offset
            t.logits[slot] = prompt.logits
            t.stages.start(slot)
            if t.uniforms is not None:
                t.uniforms.assign(slot, rollout_seed(self.seed, self.prompt_ids[source], rollout % self.num_samples))
            self.rollout_of[slot], self.start[slot] = rollout, self.step
            prompt.remaining -= 1
            if not prompt.remaining:
                del self.prompts[source]

    def _prefill(self, inputs: list[int]) -> None:
        """Prefill ``inputs`` (indices into the batch); each waits for its rollouts in :attr:`prompts`."""
        prompts = prefill_prompts(
            self.model, self.features, self.prompt_ids, inputs, self.num_samples, self.disc, self.disc_emb_id
        )
        self.prompts.update(prompts)

    def _live_length(self) -> int:
        """Longest cache a live slot can need at the next step (the host's upper bound)."""
        return max(
            (
                len(self.prompt_ids[r // self.num_samples]) + self._fed(s) + 1
                for s, r in enumerate(self.rollout_of)
                if r >= 0
            ),
            default=1,
        )

    def _fit_capacity(self, needed: int = 0) -> None:
        """Grow the KV capacity when the next step (or a prompt) would not fit."""
        needed = max(needed, self._live_length())
        if needed > self.t.capacity:
            self._resize(list(range(self.t.slots)), self.t.slots, capacity_bucket(needed, self.graphs))

    def _reshape(self) -> None:
        """Shrink the capacity to the live rollouts' bucket, and drop idle slots once nothing waits.

        Where the decode kernel attends, the capacity shrinks only along with the slots: the kernel
        reads live positions alone, so a smaller cache by itself saves no step time, while every
        new shape costs a capture (and a batch-1 call of many inputs would climb the buckets anew
        for each).
        """
        live = [slot for slot, rollout in enumerate(self.rollout_of) if rollout >= 0]
        if not live:
            return
        capacity = capacity_bucket(self._live_length(), self.graphs)
        slots = self.t.slots if self.queue else slot_bucket(len(live), self.graphs)
        shrink = capacity < self.t.capacity and (self.graphs or capacity <= self.t.capacity * 3 // 4)
        shrink = shrink and not (self.paths.kernel_attention and slots == self.t.slots)
        if slots < self.t.slots or shrink:
            capacity = min(capacity, self.t.capacity) if shrink else self.t.capacity
            rows = live if slots < self.t.slots else list(range(self.t.slots))
            self._resize(rows, max(slots, len(rows)), capacity)

    def _resize(self, rows: list[int], slots: int, capacity: int) -> None:
        self.t = self.t.resized(self.model, rows, slots, capacity)
        self.rollout_of = [self.rollout_of[row] for row in rows] + [-1] * (slots - len(rows))
        self.start = [self.start[row] for row in rows] + [0] * (slots - len(rows))
