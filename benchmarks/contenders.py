"""Generative-mode contenders, each run in a fresh process so its peak memory is its own.

Each contender first runs its workload with short rollouts (one-time costs: lazy imports, oneDNN
kernels for each batch shape), then once measured. Peak memory is the growth of the process's resident set
during the measured call: the kernel's high-water mark (VmHWM) is reset right before it
(``/proc/self/clear_refs``), after ``malloc_trim`` gave the pages freed by the warm-up run back to
the kernel, and glibc hands every block of 64 KiB or more straight back to the kernel
(``MALLOC_MMAP_THRESHOLD_``, set by the parent): the RSS follows torch's live CPU tensors instead
of the allocator's free lists (without the trim, the many small per-step tensors of the second run
would reuse the first run's pages unseen). tracemalloc would see none of torch's allocations.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import time
from typing import Any

import torch
from transformers import LogitsProcessorList
from workload import ForcedReasoning, texts

WARM_LENGTH = 32


def _status_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> int:
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")
    return _status_kib("VmRSS")


def _measured(run, forced: ForcedReasoning) -> dict[str, float]:
    """Warm up on the same inputs and batches with short rollouts, then time one full run and its peak."""
    length = forced.length
    forced.length = WARM_LENGTH
    run()
    forced.length = length
    base = _reset_peak()
    start = time.perf_counter()
    run()
    return {"seconds": time.perf_counter() - start, "peak_mib": (_status_kib("VmHWM") - base) / 1024}


def ours(args: dict[str, Any]) -> dict[str, Any]:
    """ume-plugins' engine through ``SentenceTransformer.encode`` (batched, or one input per call)."""
    import ume_plugins
    from ume_plugins.engine.continuation import states_after

    dtype = getattr(torch, args["dtype"])
    model = ume_plugins.load(args["checkpoint"], device="cpu", model_kwargs={"dtype": dtype})
    module = model[0]
    inputs = texts(args["count"])
    forced = ForcedReasoning(module.tokenizer, args["budget"], varied=args["varied"])
    kwargs = {"generation_kwargs": {"logits_processor": [forced], "max_new_tokens": args["budget"]}}
    if args["single"]:
        inputs = inputs[: args["single"]]
        result = _measured(lambda: [model.encode([item], **kwargs) for item in inputs], forced)
    else:
        rows = []

        def encode() -> None:
            rows[:] = model.encode(inputs, batch_size=args["batch"], output_value=None, **kwargs)

        result = _measured(encode, forced)
        result["generated_tokens"] = int(
            sum(int((row["generated_ids"] != module.tokenizer.pad_token_id).sum()) for row in rows)
        )
        if args.get("reforward"):
            result["reforward_seconds"] = _reforward_seconds(model, module, inputs, rows, args["batch"], states_after)
    result["items"] = len(inputs)
    return result


def _reforward_seconds(model, module, inputs, rows, batch_size, states_after) -> float:
    """Time of the alternative to capture-during-decode: one forward over prompt + generated ids."""
    order = sorted(range(len(inputs)), key=lambda index: -model._input_length(inputs[index]))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    prepared = []
    for batch in batches:
        features = module.preprocess([inputs[index] for index in batch], mode="generative")
        features = {key: value for key, value in features.items() if not key.startswith("ume_")}
        pad = module.tokenizer.pad_token_id
        prepared.append((features, [[t for t in rows[index]["generated_ids"].tolist() if t != pad] for index in batch]))
    start = time.perf_counter()
    with torch.inference_mode():
        for features, continuations in prepared:
            states_after(module.model, features, continuations)
    return time.perf_counter() - start


def mteb(args: dict[str, Any]) -> dict[str, Any]:
    """mteb's ``UMER1Wrapper`` (bf16 as shipped; ``dtype=float32`` casts it), same inputs and lengths."""
    from mteb.models.model_implementations.ume_r1 import UMER1Wrapper
    from torch.utils.data import DataLoader

    wrapper = UMER1Wrapper(model=args["checkpoint"], device="cpu")
    if args["dtype"] != "bfloat16":
        wrapper.model.to(getattr(torch, args["dtype"]))
    tokenizer = wrapper.processor.tokenizer
    generate = wrapper.model.generate
    processor = ForcedReasoning(tokenizer, args["budget"], varied=args["varied"])

    # Its encode hard-codes generate's arguments: the forced reasoning goes in here.
    @functools.wraps(generate)
    def forced_generate(*a, **kw):
        return generate(*a, logits_processor=LogitsProcessorList([processor]), **kw)

    wrapper.model.generate = forced_generate
    inputs = texts(args["count"])

    class Rows(list):
        features = {"text": None}

    def loader(items):
        return DataLoader(Rows({"text": t} for t in items), batch_size=args["batch"], collate_fn=_collate)

    call = {"task_metadata": None, "hf_split": "test", "hf_subset": "default", "show_progress_bar": False}
    result = _measured(lambda: wrapper.encode(loader(inputs), **call), processor)
    result["items"] = len(inputs)
    return result


def _collate(rows: list[dict[str, str]]) -> dict[str, list[str]]:
    return {"text": [row["text"] for row in rows]}


CONTENDERS = {"ours": ours, "mteb": mteb}
