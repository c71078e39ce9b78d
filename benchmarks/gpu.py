"""UME-R1 generative mode on one GPU: the slot engine against the reference loop, mteb's wrapper and generate.

    python benchmarks/gpu.py                      # CUDA: UME-R1-2B's architecture in bf16, < 8 min on one H100
    python benchmarks/gpu.py --quick              # CPU: a small shape, < 3 min
    python benchmarks/gpu.py --mteb-wheel W.whl   # mteb's wrapper read from its wheel when mteb does not import
    python benchmarks/gpu.py --gemv-sweep         # also time a wider grid of GEMV block sizes (~150 compilations)

The model is Qwen2-VL-2B's exact architecture (UME-R1-2B: 28 layers x 1536, vocab 151936, a
32-block vision tower) with random weights, built on the device (no download); the tiny
tokenizer gives the special tokens. Inputs are texts and texts with a 448x448 image; every
rollout is scripted to a length drawn from a seeded 64-1024 distribution (``--quick``: 16-64),
identical for every contender, which all see the same prompts and pixels.

Contenders, each at slot/batch sizes 1, 8, 32, 64 as the time budget allows:

- ``ours-graphs`` / ``ours-compile`` / ``ours-eager``: the slot engine (continuous batching, the
  size is its slot count) with CUDA graphs, ``torch.compile`` (inductor kernels in our CUDA graphs) or eager;
- ``reference``: the dynamic reference loop, one static batch after another;
- ``generate``: plain HF ``generate``, no hidden states kept, one static batch after another;
- ``mteb``: mteb's ``UMER1Wrapper.encode`` (``generate`` keeping every step's hidden states).

Reported: items/s, decode tokens/s, peak GPU memory above the weights, decode steps against total
tokens / slots, the % of the memory-bandwidth roofline of one decode step at batch 1 (weights plus
live KV read per step, divided by the bandwidth of a device-to-device copy measured in the same
run) with the GPU kernels that step launches (count, summed time, the costliest), and the lowest
cosine between an input's vector batched and alone (bf16). Each contender has a share of the time
budget; a run predicted (from its warm-up) to overrun it is skipped and listed.
Results go to ``benchmarks/results/gpu-<device>.json`` and ``.md`` after every run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import re
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from gpu_model import Prompts, build_model, decode_bytes, mteb_encoder, mteb_wrapper, tokenizer
from gpu_probes import aten_op_count, bandwidth, gemv_sweep, kernel_profile
from gpu_report import markdown
from transformers import LogitsProcessorList
from workload import ForcedReasoning, texts

from ume_plugins.engine import Engine, EngineSpec
from ume_plugins.engine.batching import model_inputs

HERE = Path(__file__).resolve().parent
SEED = 12
SIZES = (1, 8, 32, 64)
QUICK_SIZES = (1, 4, 8, 16)


# ("run", contender, inputs, size, items[, longest reasoning]) | ("roofline", contender) | ("cosine", contender, inputs)
# | ("kept", contender): GPU memory that finished calls leave behind
Task = tuple


def make_plan(sizes: tuple[int, ...]) -> tuple[dict[str, float], list[Task]]:
    """Each contender's share of the time budget, and every task, most informative first.

    The acceptance numbers come first: the batch-1 roofline, ours against mteb's wrapper on one
    batch of ``small`` mixed-length inputs, and the batched-vs-alone cosines. ``roofline``,
    ``cosine`` and ``kept`` have shares of their own: measuring them never eats a contender's runs.
    """
    one, small, large, largest = sizes
    shares = {
        "ours-graphs": 0.18,
        "ours-compile": 0.2,
        "mteb": 0.4,  # mteb keeps every step's hidden states: its one batch is the slowest run
        "generate": 0.05,
        "reference": 0.04,
        "ours-eager": 0.04,
        "roofline": 0.07,
        "cosine": 0.07,
        "kept": 0.02,
    }
    tasks: list[Task] = [
        ("roofline", "ours-graphs"),
        ("run", "ours-graphs", "text", one, 2),
        ("run", "ours-graphs", "text", small, small, PAIR_HIGH),
        ("run", "mteb", "text", small, small, PAIR_HIGH),
        ("run", "ours-graphs", "text", small, 2 * small),
        ("cosine", "ours-graphs", "text"),
        ("kept", "ours-graphs"),
        ("roofline", "ours-compile"),
        ("run", "ours-compile", "text", one, 2),
        ("run", "ours-graphs", "text+image", one, 2),
        ("run", "ours-graphs", "text+image", small, 2 * small),
        ("cosine", "ours-graphs", "text+image"),
        ("run", "ours-compile", "text", small, 2 * small),
        ("run", "ours-graphs", "text", large, 2 * large),
        ("run", "ours-graphs", "text", largest, 2 * largest),
        ("run", "ours-graphs", "text+image", large, 2 * large),
        ("run", "generate", "text", small, small),
        ("run", "reference", "text", small, small),
        ("run", "ours-eager", "text", one, 2),
        ("run", "ours-eager", "text", small, small),
        ("roofline", "ours-eager"),
        ("roofline", "generate"),
        ("run", "ours-compile", "text", largest, 2 * largest),
        ("run", "mteb", "text+image", small, small),
        ("run", "ours-graphs", "text+image", small, small),
        ("run", "ours-graphs", "text+image", largest, 2 * largest),
    ]
    return shares, tasks


PAIR_HIGH = 512  # the mteb comparison's longest reasoning: one batch of mteb at 64-1024 outruns the budget
CONTENDERS = ("ours-graphs", "ours-compile", "ours-eager", "reference", "generate", "mteb")
COMPILE_RESERVE_S = 60  # inductor compiled the 28-layer step (dynamic shapes) in ~31 s on an H200
SAFETY = 1.25  # predictions come from short calibration runs; long contexts cost a little more per step
ROOFLINE = ("ours-graphs", "ours-compile", "ours-eager", "generate")
MODES = {"ours-graphs": "cuda_graphs", "ours-compile": "torch_compile", "ours-eager": "eager"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shape on the CPU")
    parser.add_argument("--budget-s", type=float, help="time budget in seconds (default 440, quick 150)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset")
    parser.add_argument("--mteb-wheel", help="mteb wheel to read UMER1Wrapper from when mteb does not import")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument(
        "--gemv-sweep", action="store_true", help="CUDA: also time a wider grid of GEMV block sizes (~150 compilations)"
    )
    options = parser.parse_args()
    Bench(options).run()


class Bench:
    """One benchmark run: setup, the planned runs within the budget, and the tables."""

    def __init__(self, options: argparse.Namespace) -> None:
        self.started = time.perf_counter()
        self.quick = options.quick or not torch.cuda.is_available()
        self.budget = options.budget_s or (150.0 if self.quick else 440.0)
        self.device = torch.device("cpu" if self.quick else "cuda")
        self.dtype = torch.float32 if self.quick else torch.bfloat16
        shares, self.tasks = make_plan(QUICK_SIZES if self.quick else SIZES)
        self.contenders = [name for name in options.contenders.split(",") if name in CONTENDERS]
        if self.quick:  # no CUDA: eager is the slot engine's mode, and takes over the graphs' share
            torch.set_num_threads(min(4, torch.get_num_threads()))
            self.contenders = [name for name in self.contenders if name not in ("ours-graphs", "ours-compile")]
            shares["ours-eager"] += shares["ours-graphs"]
            self.tasks = [_as_eager(task) for task in self.tasks]
        active = sum(shares[name] for name in [*self.contenders, "roofline", "cosine", "kept"])
        self.shares = {name: share / active for name, share in shares.items()}
        self.primary = "ours-graphs" if "ours-graphs" in self.contenders else "ours-eager"
        self.mteb_wheel, self.out = options.mteb_wheel, options.out
        self.gemv_sweep = options.gemv_sweep and not self.quick
        self.low, self.high = (16, 64) if self.quick else (64, 1024)
        self.results: dict[str, Any] = {"runs": [], "skipped": [], "roofline": [], "cosine": []}
        self.states: dict[tuple[str, str, int, int, int], torch.Tensor] = {}  # contender, inputs, size, items, high

    # ---- setup -------------------------------------------------------------------------------

    def run(self) -> None:
        """Set up, run the plan, write the results."""
        self.tok = tokenizer()
        self.model = build_model(self.tok, self.device, self.dtype, self.quick)
        self.prompts = Prompts(self.tok, self.device, self.dtype)
        weights, per_token = decode_bytes(self.model)
        name = torch.cuda.get_device_name() if self.device.type == "cuda" else f"CPU ({platform.machine()})"
        self.results["settings"] = {
            "device": name,
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "model": "random Qwen2-VL shape " + ("(quick)" if self.quick else "of UME-R1-2B"),
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "dtype": str(self.dtype).removeprefix("torch."),
            "lengths": [self.low, self.high],
            "decode_weight_bytes": weights,
            "kv_bytes_per_token": per_token,
            "copy_bandwidth_gbs": bandwidth(self.device) / 1e9,
            "budget_s": self.budget,
            "step_paths": self.step_paths(),
        }
        words = texts(128, seed=SEED)
        pictures = _square_images(128, 112 if self.quick else 448)
        self.items = {
            "text": [(text, None) for text in words],
            "text+image": list(zip(words, pictures, strict=True)),
        }
        for contender in self.contenders:
            self.results.setdefault("budget_s_by_contender", {})[contender] = self.shares[contender] * self.budget
        self.used = dict.fromkeys([*self.contenders, "roofline", "cosine", "kept"], 0.0)
        if self.gemv_sweep:
            try:
                self.results["gemv_sweep"] = gemv_sweep(self.model.model.language_model.layers[0])
            except Exception:  # the sweep is a probe: its failure must not cost the run
                traceback.print_exc()
        self.plan()
        self.results["seconds"] = time.perf_counter() - self.started
        self.write()
        print((self.out / f"gpu-{self.slug}.md").read_text(encoding="utf-8"))

    def step_paths(self) -> dict[str, Any]:
        """The device paths the slot engine's step takes here (see ``device_paths``).

        On CUDA also what chose the GEMV kernels: each unit's microseconds as its tuned kernels and as the
        modules, and the configurations the tuning kept (``gemv_units``).
        """
        from ume_plugins.engine import dependent_launch
        from ume_plugins.engine.attention import triton_available
        from ume_plugins.engine.gemv_tuning import LayerShape, unit_timings
        from ume_plugins.engine.step import device_paths

        start = time.perf_counter()
        paths = device_paths(self.model)
        # The kernels' checks and the GEMV tuning, Triton's compilations included (once per process).
        taken = {"choice_s": time.perf_counter() - start}
        taken |= {"fused": paths.projections is not None, "kernel": paths.kernel_attention}
        taken["rotary"] = paths.kernel_rotary
        taken["rotary_in_gemv"] = paths.fused_rotary
        taken["dependent_launch"] = dependent_launch.enabled(self.device)
        taken["gemv"] = sorted(paths.gemv_units[0]) if paths.gemv_units else []
        if self.device.type == "cuda" and triton_available(self.device):
            shape = LayerShape.of(self.model.model.language_model.layers[0])
            try:
                timings = unit_timings(self.device, self.dtype, shape)
            except Exception as error:  # the kernel's failure is already logged; the run goes on
                print(f"GEMV unit timings unavailable: {error}", flush=True)
            else:
                taken["gemv_units"] = {
                    name: {"kernel_us": t.kernel * 1e6, "modules_us": t.modules * 1e6, "configs": t.configs}
                    for name, t in timings.items()
                }
        return taken

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.results["settings"]["device"].lower()).strip("-")

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.started)

    # ---- the plan ----------------------------------------------------------------------------

    def plan(self) -> None:
        """Run the tasks in order, each once, as far as the budget goes."""
        done: set[Task] = set()
        for task in self.tasks:
            if task in done:
                continue
            done.add(task)
            if task[0] == "roofline":
                contender = task[1]
                if contender in self.contenders:
                    # Inductor's compilation happens in the first compiled task: it is the contender's cost.
                    share = contender if contender == "ours-compile" else "roofline"
                    self.guard(contender, "roofline", 1, lambda c=contender: self.roofline(c), share=share)
            elif task[0] == "kept":
                contender = task[1]
                if contender in self.contenders and self.device.type == "cuda":
                    self.guard(contender, "memory kept by calls", 1, lambda c=contender: self.kept(c), share="kept")
            elif task[0] == "cosine":
                _, contender, kind = task
                if contender in self.contenders and self.batched_run(contender, kind):
                    self.guard(
                        contender, f"cosine {kind}", 1, lambda c=contender, k=kind: self.cosine(c, k), share="cosine"
                    )
            elif task[1] in self.contenders:
                contender, kind, size = task[1:4]
                self.guard(contender, kind, size, lambda t=task: self.measure(*t[1:]))

    def guard(self, contender: str, kind: str, size: int, run: Any, share: str | None = None) -> None:
        """Run one task unless its share or the budget is spent; a failure is recorded, never fatal."""
        share = share or contender
        left_in_share = self.shares[share] * self.budget - self.used[share]
        if self.left() < 10 or left_in_share <= 0:
            self.skip(contender, kind, size, f"budget spent ({self.left():.0f} s left overall)")
            return
        if contender == "ours-compile" and not self.used[contender] and self.left() < COMPILE_RESERVE_S:
            self.skip(contender, kind, size, f"{self.left():.0f} s left, too few for inductor's compilation")
            return
        start = time.perf_counter()
        try:
            run()
        except _Skip as skip:
            self.skip(contender, kind, size, str(skip))
        except Exception as error:  # noqa: BLE001 - one broken contender must not end the run
            traceback.print_exc()
            self.skip(contender, kind, size, f"failed: {type(error).__name__}: {str(error)[:200]}")
        finally:
            self.used[share] += time.perf_counter() - start
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.write()

    def batched_run(self, contender: str, kind: str) -> bool:
        return any(key[0] == contender and key[1] == kind and key[2] > 1 and key[3] >= 3 for key in self.states)

    def skip(self, contender: str, kind: str, size: int, why: str) -> None:
        self.results["skipped"].append({"contender": contender, "inputs": kind, "size": size, "why": why})
        print(f"skipped {contender} {kind} {size}: {why}", flush=True)

    def allowance(self, contender: str) -> float:
        return min(self.shares[contender] * self.budget - self.used[contender], self.left() - 5)

    # ---- one measured run ------------------------------------------------------------------------

    def measure(self, contender: str, kind: str, size: int, count: int, high: int | None = None) -> None:
        items = self.items[kind][:count]
        high = high if high and not self.quick else self.high
        forced = ForcedReasoning(self.tok, high, varied=True, low=self.low, seed=SEED)
        lengths = self.scripted_lengths(items, forced)
        started = time.perf_counter()
        self.execute(contender, items[:size], size, ForcedReasoning(self.tok, 4))  # warm-up (compiles, captures)
        warmup = time.perf_counter() - started
        timed = []
        for length in (4, 20):  # calibration: one wave's prefill and the cost of a step
            start = time.perf_counter()
            self.execute(contender, items[:size], size, ForcedReasoning(self.tok, length))
            timed.append(time.perf_counter() - start)
        per_step = max(timed[1] - timed[0], 1e-6) / 16  # one step of `size` rollouts, prefill excluded
        waves = -(-len(items) // size)
        predicted = waves * max(timed[0] - 4 * per_step, 0) + per_step * self.steps_needed(contender, lengths, size)
        predicted *= SAFETY
        if predicted > self.allowance(contender) - (time.perf_counter() - started):
            raise _Skip(f"predicted {predicted:.0f} s (from its warm-up) exceeds its remaining budget")
        memory = self.memory_before()
        start = time.perf_counter()
        result = self.execute(contender, items, size, forced)
        seconds = time.perf_counter() - start
        peak = self.peak_above(memory)
        tokens = sum(lengths)
        steps = result.get("steps") or self.steps_needed(contender, lengths, size)
        row = {
            "contender": contender,
            "inputs": kind,
            "size": size,
            "items": len(items),
            "seconds": seconds,
            "items_per_s": len(items) / seconds,
            "decode_tokens_per_s": tokens / seconds,
            "peak_gib_above_weights": peak,
            "decode_steps": steps,
            "steps_vs_ideal": steps / (tokens / size),
            "tokens": tokens,
            "lengths": [self.low, high],
            "calibrated_step_ms": per_step * 1e3,
        }
        if "tokens" in result and result["tokens"] != tokens:
            row["note"] = f"wrote {result['tokens']} tokens, scripted {tokens}"
        if "note" in result:
            row["note"] = result["note"]
        if contender == "ours-compile" and not any(run["contender"] == contender for run in self.results["runs"]):
            row["note"] = f"first call compiled in {warmup:.0f} s"
        self.results["runs"].append(row)
        if "states" in result:
            self.states[(contender, kind, size, len(items), high)] = result["states"].float().cpu()
        if size == 1 and contender in ROOFLINE:
            # The engine's own step at batch 1 (host loop included): total time over decode steps.
            live = sum(int(self.features([item])["attention_mask"].sum()) for item in items) / len(items)
            self.add_roofline(f"{contender}, whole engine, {kind}", seconds / steps, live + tokens / len(items) / 2)
        print(json.dumps(row), flush=True)

    def execute(self, contender: str, items: list, size: int, forced: ForcedReasoning) -> dict[str, Any]:
        """Run ``items`` through a contender at slot/batch ``size``."""
        self.sync()
        if contender.startswith("ours"):
            result = self.engine(MODES[contender], size).rollouts(
                self.model, self.features(items), generation_kwargs=self.kwargs(forced)
            )
            self.sync()
            return {"steps": result.decode_steps, "states": result.states[:, 0], "tokens": self.written(result)}
        chunks = [items[start : start + size] for start in range(0, len(items), size)]
        if contender == "reference":
            engine = self.engine("eager", size)
            for chunk in chunks:
                engine.rollouts(
                    self.model, self.features(chunk), generation_kwargs=self.kwargs(forced), decoder="reference"
                )
        elif contender == "generate":
            with torch.inference_mode():
                for chunk in chunks:
                    self.model.generate(
                        **model_inputs(self.features(chunk)),
                        logits_processor=LogitsProcessorList([forced]),
                        max_new_tokens=forced.length + 1,
                        do_sample=False,
                    )
        else:
            found = self.run_mteb(items, size, forced)
            self.sync()
            return found
        self.sync()
        return {}

    def run_mteb(self, items: list, size: int, forced: ForcedReasoning) -> dict[str, Any]:
        from torch.utils.data import DataLoader

        cls, origin = mteb_wrapper(self.mteb_wheel)
        if cls is None:
            raise _Skip(origin)
        self.results["mteb_origin"] = origin
        wrapper = mteb_encoder(cls, _ForcedGenerate(self.model, forced), self.prompts, self.device)

        class Rows(list):
            features = {"text": None}

        rows = Rows({"text": text, "image": image} for text, image in items)
        with_images = items[0][1] is not None

        def collate(batch: list[dict]) -> dict[str, list]:
            out = {"text": [row["text"] for row in batch]}
            if with_images:
                out["image"] = [row["image"] for row in batch]
            return out

        loader = DataLoader(rows, batch_size=size, collate_fn=collate)
        self.prompts.built.clear()
        wrapper.encode(loader, task_metadata=None, hf_split="test", hf_subset="default", show_progress_bar=False)
        ours = [ids[mask.bool()].tolist() for item in items for ids, mask in self._prompt_rows(item)]
        return {"note": "prompts differ from ours"} if self.prompts.built != ours else {}

    def _prompt_rows(self, item: tuple) -> Any:
        features = self.features([item])
        return zip(features["input_ids"], features["attention_mask"], strict=True)

    # ---- roofline and cosine -------------------------------------------------------------------

    def roofline(self, contender: str) -> None:
        """Time of one decode step at batch 1 and the share of the copy bandwidth it reaches.

        The slot engine's step is timed on its own: one slot, 400 live tokens, the step (decoder and
        LM head) run as the engine runs it (eager, replayed CUDA graph, or compiled) 100 times; per-call
        captures and compilation stay out. The primary contender's step is also timed over the cache
        bucket for 8x its live tokens (what padding costs at batch 1), and without each of the
        step's device paths (the decode kernel, the fused projections, the GEMV kernels, the rotary
        kernel, the rotary inside the GEMV kernel, dependent launch) to show what each is worth.
        ``generate`` is timed as the difference of two calls that differ only in their scripted length.
        """
        kernels = None
        if contender.startswith("ours"):
            live = 400 if not self.quick else 40
            step, kernels = self.slot_step_seconds(contender, live)
        else:
            item = self.items["text"][:1]
            short, long = (8, 40) if self.quick else (64, 320)
            self.execute(contender, item, 1, ForcedReasoning(self.tok, 16))
            times = []
            for length in (short, long):
                start = time.perf_counter()
                self.execute(contender, item, 1, ForcedReasoning(self.tok, length))
                times.append(time.perf_counter() - start)
            step = (times[1] - times[0]) / (long - short)
            live = int(self.features(item)["attention_mask"].sum()) + (short + long) / 2
        name = f"{contender}, step alone" if contender.startswith("ours") else contender
        self.add_roofline(name, step, live, kernels)
        if contender == self.primary:
            padded = 8 * (live + 1)
            for label, holds, paths in (
                ("cache bucket for 8x its tokens", padded, {}),
                ("SDPA attention", None, {"kernel": False}),
                ("SDPA attention, cache bucket for 8x its tokens", padded, {"kernel": False}),
                ("three projections", None, {"fused": False}),
                ("no GEMV kernels", None, {"gemv": False}),
                ("rotary and cache write as torch operations", None, {"rotary": False}),
                ("rotary and cache write in a kernel of their own", None, {"rotary_in_gemv": False}),
                ("no dependent launch", None, {"dependent": False}),
            ):
                seconds, profile = self.slot_step_seconds(contender, live, holds=holds, **paths)
                self.add_roofline(f"{name}, {label}", seconds, live, profile)

    def add_roofline(self, name: str, step: float, live: float, kernels: dict[str, Any] | None = None) -> None:
        """Record a decode step of ``step`` seconds reading the weights and ``live`` tokens of KV."""
        settings = self.results["settings"]
        read = settings["decode_weight_bytes"] + settings["kv_bytes_per_token"] * live
        self.results["roofline"].append(
            {
                "contender": name,
                "step_ms": step * 1e3,
                "live_tokens": live,
                "bytes_per_step": read,
                "percent_of_copy_bandwidth": 100 * read / (settings["copy_bandwidth_gbs"] * 1e9) / step,
                "kernels_per_step": (kernels or {}).get("count"),
                "kernel_busy_ms": (kernels or {}).get("busy_ms"),
                "top_kernels": (kernels or {}).get("top"),
            }
        )

    def slot_step_seconds(
        self,
        contender: str,
        live: int,
        holds: int | None = None,
        fused: bool | None = None,
        kernel: bool | None = None,
        gemv: bool | None = None,
        rotary: bool | None = None,
        rotary_in_gemv: bool | None = None,
        dependent: bool | None = None,
    ) -> tuple[float, dict[str, Any] | None]:
        """Seconds of one slot-engine decode step (decoder + LM head) for one slot holding ``live`` tokens.

        The cache is the engine's bucket for ``holds`` positions (default ``live + 1``). The step takes
        the engine's device paths; ``fused`` / ``kernel`` / ``gemv`` / ``rotary`` / ``rotary_in_gemv`` False
        turn off the fused projections / the decode kernel / the GEMV kernels / the rotary kernel / the rotary
        inside the query/key/value GEMV kernel; ``dependent`` False launches the Triton kernels without
        programmatic dependent launch.

        Also the profile of the GPU kernels one step launches (what its graph replays); on the CPU, the
        count of aten operations it dispatches, the nearest stand-in.
        """
        from ume_plugins.engine import dependent_launch
        from ume_plugins.engine.capture import capture_stream
        from ume_plugins.engine.slot_state import SlotOptions, SlotTensors, StepRunner, capacity_bucket, compiled_step
        from ume_plugins.engine.stages import Budget
        from ume_plugins.engine.step import StepPaths, decode_step, device_paths

        mode = MODES[contender]
        spec = self.engine(mode, 1).spec
        budget = Budget(gen_emb_id=spec.gen_emb_id, eos_ids=(spec.pad_token_id,), max_new_tokens=self.high)
        graphs = SlotOptions(compile=mode).graphs(self.device)  # as the engine runs each mode
        capacity = capacity_bucket(holds or live + 1, graphs=graphs)
        slots = SlotTensors(self.model, budget, 1, capacity, False)
        slots.lengths.fill_(live)  # every step writes position `live` again and reads 0..live
        fed = torch.ones(1, dtype=torch.bool, device=self.device)
        forward = compiled_step(None, self.device) if mode == "torch_compile" else decode_step
        decoder = self.model.model.language_model
        paths = device_paths(self.model)
        paths = StepPaths(
            paths.projections if fused is not False else None,
            paths.kernel_attention and kernel is not False,
            paths.gemv_units if gemv is not False else None,
            paths.kernel_rotary and rotary is not False,
            paths.fused_rotary and rotary_in_gemv is not False,
        )

        def step() -> None:
            tensors = (slots.tokens, slots.lengths, slots.offsets, fed, slots.keys, slots.values)
            hidden = forward(decoder, *tensors, *paths)
            slots.logits.copy_(self.model.lm_head(hidden))  # widened by the copy, as the engine does

        runner = StepRunner(step, graphs, slots.graph_pool, capture_stream(self.device) if graphs else None)
        plain = dependent_launch.switched_off() if dependent is False else contextlib.nullcontext()
        with torch.inference_mode(), plain:  # read when the kernels launch, so when the graph is captured
            for _ in range(5):
                runner()
            self.sync()
            repeats = 10 if self.quick else 100
            start = time.perf_counter()
            for _ in range(repeats):
                runner()
            self.sync()
            seconds = (time.perf_counter() - start) / repeats
            return seconds, kernel_profile(step) if self.device.type == "cuda" else {"count": aten_op_count(step)}

    def kept(self, contender: str, calls: int = 20) -> None:
        """GPU memory still held after ``calls`` more short batch-1 calls (allocated and reserved, caches emptied).

        Each call captures graphs of its own (a memory pool per step shape) on a capture stream;
        nothing of a finished call should stay behind.
        """
        item, forced = self.items["text"][:1], ForcedReasoning(self.tok, 32)

        def after(count: int) -> tuple[int, int]:
            for _ in range(count):
                self.execute(contender, item, 1, forced)  # ends synchronised
            torch.cuda.empty_cache()
            return torch.cuda.memory_allocated(), torch.cuda.memory_reserved()

        first = after(3)
        last = after(calls)
        self.results["kept"] = {
            "contender": contender,
            "calls": calls,
            "allocated_mib": (last[0] - first[0]) / 2**20,
            "reserved_mib": (last[1] - first[1]) / 2**20,
        }

    def cosine(self, contender: str, kind: str) -> None:
        """Lowest cosine between inputs' vectors batched (largest slot count run) and alone."""
        batched = [key for key in self.states if key[0] == contender and key[1] == kind and key[2] > 1 and key[3] >= 3]
        key = max(batched, key=lambda found: found[2:4])
        forced = ForcedReasoning(self.tok, key[4], varied=True, low=self.low, seed=SEED)
        count = min(3 if self.quick else 6, key[3])
        alone = []
        for item in self.items[kind][:count]:
            features = self.features([item])
            result = self.engine(MODES[contender], 1).rollouts(
                self.model, features, generation_kwargs=self.kwargs(forced)
            )
            alone.append(result.states[0, 0].float().cpu())
        cosines = torch.nn.functional.cosine_similarity(self.states[key][:count], torch.stack(alone), dim=-1)
        self.results["cosine"].append(
            {
                "contender": contender,
                "inputs": kind,
                "batched_size": key[2],
                "items": count,
                "min": float(cosines.min()),
            }
        )

    # ---- helpers -------------------------------------------------------------------------------

    def engine(self, mode: str, slots: int) -> Engine:
        spec = EngineSpec.from_tokenizer(
            self.tok, "random-ume-r1", max_new_tokens=self.high, max_slots=slots, compile=mode
        )
        return Engine(spec)

    def features(self, items: list) -> dict[str, torch.Tensor]:
        return self.prompts.features([self.prompts.message(text, image) for text, image in items])

    def kwargs(self, forced: ForcedReasoning) -> dict[str, Any]:
        return {"logits_processor": [forced], "max_new_tokens": self.high}

    def written(self, result: Any) -> int:
        return int((result.generated_ids != self.tok.pad_token_id).sum())

    def scripted_lengths(self, items: list, forced: ForcedReasoning) -> list[int]:
        """Each item's scripted reasoning length, read from its prompt as the processor reads it."""
        features = self.features(items)
        lengths = []
        for ids, mask in zip(features["input_ids"], features["attention_mask"], strict=True):
            prompt = ids[mask.bool()][None]
            lengths.append(int(forced.lengths(prompt, torch.tensor([prompt.shape[1]], device=ids.device))[0]))
        return lengths

    @staticmethod
    def steps_needed(contender: str, lengths: list[int], size: int) -> int:
        if contender.startswith("ours"):
            return int(sum(lengths) / size * 1.15) + 1
        return sum(max(lengths[start : start + size]) + 1 for start in range(0, len(lengths), size))

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def memory_before(self) -> int:
        if self.device.type != "cuda":
            return 0
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()

    def peak_above(self, before: int) -> float | None:
        return (torch.cuda.max_memory_allocated() - before) / 2**30 if self.device.type == "cuda" else None

    # ---- output --------------------------------------------------------------------------------

    def write(self) -> None:
        if "settings" not in self.results:
            return
        self.results["seconds"] = time.perf_counter() - self.started
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / f"gpu-{self.slug}.json").write_text(json.dumps(self.results, indent=2) + "\n", encoding="utf-8")
        (self.out / f"gpu-{self.slug}.md").write_text(markdown(self.results), encoding="utf-8")


class _Skip(Exception):
    """A task not run, and why."""


class _ForcedGenerate:
    """The model, with the scripted reasoning added to every ``generate`` call (mteb's encode hard-codes them)."""

    def __init__(self, model: torch.nn.Module, forced: ForcedReasoning) -> None:
        self._model, self._forced = model, forced

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self._model.generate(*args, logits_processor=LogitsProcessorList([self._forced]), **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _as_eager(task: Task) -> Task:
    """A CUDA-graph task as the CPU runs it (eagerly); compiled tasks are dropped with their contender."""
    return tuple("ours-eager" if part == "ours-graphs" else part for part in task)


def _square_images(count: int, side: int) -> list:
    """Random RGB images of ``side`` x ``side`` pixels (a multiple of 28: no resize anywhere)."""
    from PIL import Image

    rng = random.Random(SEED)
    return [Image.frombytes("RGB", (side, side), rng.randbytes(side * side * 3)) for _ in range(count)]


if __name__ == "__main__":
    main()
