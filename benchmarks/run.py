"""ume-plugins throughput and memory on a CPU-sized random UME-R1, side by side, in one run.

    .venv/bin/python benchmarks/run.py            # ~17 minutes on 2 cores
    .venv/bin/python benchmarks/run.py --quick    # smaller budget, a smoke test

Prints a markdown table and writes ``benchmarks/results/results.json`` and ``results.md``.
Sections:

- disc: our ``encode`` vs the raw model forward on identical pre-built batches, and vs one
  ``encode`` call per input;
- gen: our engine vs mteb's ``UMER1Wrapper`` (same checkpoint, inputs and forced decode lengths),
  throughput and peak memory, each contender in a fresh process; vs one input per call; the cost
  of re-reading ``<gen_emb>`` with a second forward instead of capturing it while decoding;
- overhead: the slot engine vs plain HF ``generate`` on one pre-built batch, same scripted lengths,
  no hidden states kept (the engine's cost over the decode floor on a CPU);
- continuous: decode steps of a mixed-length workload against total tokens / slots (continuous
  batching) and against static batches of the same size (tiny checkpoint: steps do not depend on it);
- cosine of batched vs one-by-one generative vectors (free greedy decoding, fp32).

Timings on a shared machine are noisy: each comparison runs its contenders back to back and
repeats them, keeping the best time. Torch runs on ``--threads`` threads (default 1: on a busy
2-core machine two OpenMP threads spin against other work and swing 10x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="budget 64 and fewer inputs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--contender", help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    options = parser.parse_args()

    import torch

    torch.set_num_threads(options.threads)
    if options.contender:
        from contenders import CONTENDERS

        print(json.dumps(CONTENDERS[options.contender](json.loads(options.args))))
        return

    from checkpoint import bench_checkpoint_path

    started = time.perf_counter()
    checkpoint = str(bench_checkpoint_path())
    budget, count = (64, 8) if options.quick else (512, 8)
    results = {
        "settings": {
            "checkpoint": "random, UME-R1-2B shape ratios (benchmarks/checkpoint.py)",
            "threads": options.threads,
            "budget": budget,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        }
    }
    sections = {
        "disc": lambda: disc_section(checkpoint, repeats=2 if options.quick else 3),
        "gen": lambda: gen_section(checkpoint, budget, count, options.threads),
        "overhead": lambda: overhead_section(checkpoint, budget // 2, repeats=2 if options.quick else 3),
        "continuous": lambda: continuous_section(
            count=32 if options.quick else 64, budget=256 if options.quick else 512
        ),
        "cosine": lambda: cosine_section(checkpoint, budget=32 if options.quick else 64),
    }
    results["section_seconds"] = {}
    for name, section in sections.items():
        start = time.perf_counter()
        results[name] = section()
        results["section_seconds"][name] = time.perf_counter() - start
    results["seconds"] = time.perf_counter() - started
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    table = markdown(results)
    (options.out / "results.md").write_text(table, encoding="utf-8")
    print(table)


def best_of(repeats: int, runs: dict) -> dict[str, float]:
    """Best time of each contender, running them in turn ``repeats`` times."""
    times = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name] = min(times[name], time.perf_counter() - start)
    return times


def disc_section(checkpoint: str, repeats: int) -> dict:
    """Discriminative throughput: encode vs raw forward on the same batches vs one call per input."""
    import numpy as np
    import torch
    from workload import images, texts

    import ume_plugins
    from ume_plugins.engine.batching import last_position, length_groups, sub_batch

    model = ume_plugins.load(checkpoint, device="cpu", mode="discriminative")
    module = model[0]
    inputs = texts(48, seed=1) + images(16, seed=1)
    batch = 32
    order = np.argsort([-model._input_length(item) for item in inputs])  # as encode batches them
    prebuilt, grouped = [], []
    for start in range(0, len(inputs), batch):
        features = module.preprocess([inputs[index] for index in order[start : start + batch]])
        prebuilt.append({key: value for key, value in features.items() if key in _MODEL_KEYS})
        for rows in length_groups(features["attention_mask"].sum(dim=1).tolist()):
            grouped.append({key: value for key, value in sub_batch(features, rows).items() if key in _MODEL_KEYS})

    def raw(batches: list[dict]) -> None:
        with torch.inference_mode():
            for features in batches:
                hidden = module.model.model(**features, use_cache=False).last_hidden_state
                rows = torch.arange(hidden.shape[0])
                torch.nn.functional.normalize(hidden[rows, last_position(features["input_ids"], module.disc_emb_id)])

    times = best_of(
        repeats,
        {
            "encode": lambda: model.encode(inputs, batch_size=batch),
            "raw_forward": lambda: raw(prebuilt),
            "raw_forward_length_groups": lambda: raw(grouped),
            "one_per_call": lambda: [model.encode(item) for item in inputs],
        },
    )
    return {
        "items": len(inputs),
        "batch": batch,
        "seconds": times,
        "items_per_s": {name: len(inputs) / seconds for name, seconds in times.items()},
        "encode_vs_raw": times["raw_forward"] / times["encode"],
        "encode_vs_raw_length_groups": times["raw_forward_length_groups"] / times["encode"],
        "encode_vs_one_per_call": times["one_per_call"] / times["encode"],
    }


_MODEL_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values", "image_grid_thw")


def run_contender(name: str, threads: int, **args) -> dict:
    """One contender in a fresh process (its own peak memory); returns its measurements."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, __file__, "--threads", str(threads), "--contender", name, "--args", json.dumps(args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"contender {name} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["items_per_s"] = result["items"] / result["seconds"]
    return result


def gen_section(checkpoint: str, budget: int, count: int, threads: int) -> dict:
    """Generative mode: ours vs mteb's wrapper (fixed and varied lengths), vs one input per call."""
    common = {"checkpoint": checkpoint, "budget": budget, "count": count, "batch": 8, "single": 0}
    section = {"budget": budget, "items": count, "batch": 8}
    for lengths in ("fixed", "varied"):
        varied = lengths == "varied"
        runs = {
            "ours": run_contender("ours", threads, **common, dtype="bfloat16", varied=varied, reforward=not varied),
            "mteb": run_contender("mteb", threads, **common, dtype="bfloat16", varied=varied),
        }
        section[lengths] = {
            **runs,
            "throughput_ratio": runs["ours"]["items_per_s"] / runs["mteb"]["items_per_s"],
            "memory_ratio": runs["ours"]["peak_mib"] / runs["mteb"]["peak_mib"],
        }
    fixed = section["fixed"]
    fixed["reforward_overhead"] = fixed["ours"]["reforward_seconds"] / fixed["ours"]["seconds"]
    # What the memory saving buys: a 4x larger batch still fits in mteb's peak memory.
    wide = run_contender("ours", threads, **{**common, "batch": 32, "count": 32}, dtype="bfloat16", varied=False)
    section["equal_memory"] = {
        "ours_batch_32": wide,
        "throughput_ratio": wide["items_per_s"] / fixed["mteb"]["items_per_s"],
        "memory_ratio": wide["peak_mib"] / fixed["mteb"]["peak_mib"],
    }
    single = run_contender("ours", threads, **{**common, "single": 2}, dtype="bfloat16", varied=False)
    section["one_per_call"] = single
    section["batched_vs_one_per_call"] = fixed["ours"]["items_per_s"] / single["items_per_s"]
    return section


def overhead_section(checkpoint: str, budget: int, repeats: int) -> dict:
    """The slot engine vs plain ``generate``: one batch of 8, every row scripted to ``budget`` tokens."""
    import torch
    from transformers import LogitsProcessorList
    from workload import ForcedReasoning, texts

    import ume_plugins
    from ume_plugins.engine.batching import model_inputs

    model = ume_plugins.load(checkpoint, device="cpu", model_kwargs={"dtype": torch.bfloat16})
    module = model[0]
    features = module.preprocess(texts(8, seed=3), mode="generative")
    forced = ForcedReasoning(module.tokenizer, budget)
    engine = module.engine()

    def ours() -> None:
        kwargs = {"logits_processor": [forced], "max_new_tokens": budget}
        engine.rollouts(module.model, features, generation_kwargs=kwargs)

    def generate() -> None:
        # budget + 1: generate then writes EOS after <gen_emb>, so both run `budget` decoder steps
        with torch.inference_mode():
            module.model.generate(
                **model_inputs(features),
                logits_processor=LogitsProcessorList([forced]),
                max_new_tokens=budget + 1,
                do_sample=False,
            )

    forced.length = 8
    ours(), generate()  # warm-up: lazy imports, kernels for these shapes
    forced.length = budget
    times = best_of(repeats, {"engine": ours, "generate": generate})
    return {"batch": 8, "budget": budget, "seconds": times, "ratio": times["engine"] / times["generate"]}


def continuous_section(count: int, budget: int, slots: int = 8) -> dict:
    """Decode steps of ``count`` inputs of mixed scripted lengths on ``slots`` slots."""
    import math

    from workload import ForcedReasoning, texts

    import ume_plugins

    model = ume_plugins.load("ume-r1-tiny", device="cpu", max_slots=slots)
    module = model[0]
    forced = ForcedReasoning(module.tokenizer, budget, varied=True, low=budget // 8)
    features = module.preprocess(texts(count, seed=4), mode="generative")
    kwargs = {"logits_processor": [forced], "max_new_tokens": budget}
    result = module.engine().rollouts(module.model, features, generation_kwargs=kwargs)
    lengths = (result.generated_ids[:, 0] != module.tokenizer.pad_token_id).sum(dim=1).tolist()
    ideal = sum(lengths) / slots
    static = sum(max(lengths[start : start + slots]) for start in range(0, count, slots))
    return {
        "items": count,
        "slots": slots,
        "lengths": [min(lengths), max(lengths)],
        "total_tokens": sum(lengths),
        "decode_steps": result.decode_steps,
        "steps_vs_ideal": result.decode_steps / ideal,
        "static_steps_vs_ideal": static / ideal,
        "lower_bound_steps": math.ceil(ideal),
    }


def cosine_section(checkpoint: str, budget: int) -> dict:
    """Batched vs one-by-one generative vectors, free greedy decoding in fp32."""
    import numpy as np
    from workload import images, texts

    import ume_plugins

    model = ume_plugins.load(checkpoint, device="cpu")
    inputs = texts(6, seed=2) + images(2, seed=2)
    kwargs = {"generation_kwargs": {"max_new_tokens": budget}}
    batched = model.encode(inputs, batch_size=len(inputs), **kwargs)
    single = np.stack([model.encode(item, **kwargs) for item in inputs])
    cosines = np.sum(batched * single, axis=1)
    return {"items": len(inputs), "budget": budget, "min": float(cosines.min()), "mean": float(cosines.mean())}


def markdown(results: dict) -> str:
    """The results as a short markdown table."""
    disc, gen, cosine = results["disc"], results["gen"], results["cosine"]
    overhead, continuous = results["overhead"], results["continuous"]
    fixed, varied, wide = gen["fixed"], gen["varied"], gen["equal_memory"]
    budget = gen["budget"]
    rows = [
        ("disc: encode vs raw forward, same batches (items/s)", disc["encode_vs_raw"], ">= 0.90"),
        ("disc: encode vs raw forward on its own length groups", disc["encode_vs_raw_length_groups"], "-"),
        (f"disc: encode (batch {disc['batch']}) vs one input per call", disc["encode_vs_one_per_call"], ">= 5x"),
        (f"gen: throughput vs mteb UMER1Wrapper, {budget} tokens each", fixed["throughput_ratio"], ">= 3x"),
        (f"gen: peak memory vs mteb UMER1Wrapper, {budget} tokens each", fixed["memory_ratio"], "<= 0.25"),
        (f"gen: throughput vs mteb, lengths {budget // 8}-{budget} per input", varied["throughput_ratio"], "-"),
        (f"gen: peak memory vs mteb, lengths {budget // 8}-{budget} per input", varied["memory_ratio"], "-"),
        ("gen: throughput vs mteb at <= its memory (ours batch 32, mteb 8)", wide["throughput_ratio"], "-"),
        ("gen: peak memory of that batch-32 run vs mteb batch 8", wide["memory_ratio"], "<= 1"),
        ("gen: batched (8) vs one input per call", gen["batched_vs_one_per_call"], "-"),
        ("gen: re-forward time / decode time (capture costs ~0)", fixed["reforward_overhead"], "-"),
        (
            f"gen: slot engine time / plain HF generate, batch 8 x {overhead['budget']} tokens (CPU overhead)",
            overhead["ratio"],
            "<= 1.03",
        ),
        (
            f"gen: decode steps / (total tokens / {continuous['slots']} slots), {continuous['items']} mixed lengths",
            continuous["steps_vs_ideal"],
            "<= 1.2",
        ),
        ("gen: same with static batches of that size (for comparison)", continuous["static_steps_vs_ideal"], "-"),
        ("gen: cosine batched vs one-by-one, fp32 (min)", cosine["min"], ">= 0.999"),
    ]
    settings = results["settings"]
    lines = [
        f"Random UME-R1-2B-shaped checkpoint, {settings['machine']}, {settings['threads']} thread(s), "
        f"gen bf16 batch {gen['batch']} x {gen['items']} inputs; total {results['seconds']:.0f} s.",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        *(f"| {name} | {value:.3f} | {target} |" for name, value, target in rows),
        "",
        "| gen contender | items/s | peak MiB | tokens |",
        "|---|---|---|---|",
    ]
    for lengths in ("fixed", "varied"):
        for name in ("ours", "mteb"):
            run = gen[lengths][name]
            tokens = run.get("generated_tokens", "")
            lines.append(f"| {name}, {lengths} lengths | {run['items_per_s']:.3f} | {run['peak_mib']:.1f} | {tokens} |")
    run = wide["ours_batch_32"]
    lines.append(f"| ours, fixed lengths, batch 32 x 32 inputs | {run['items_per_s']:.3f} | {run['peak_mib']:.1f} | |")
    single = gen["one_per_call"]
    lines.append(f"| ours, one input per call | {single['items_per_s']:.3f} | {single['peak_mib']:.1f} | |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
