"""The GPU benchmark's markdown table, from its results."""

from __future__ import annotations

from typing import Any


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown tables."""
    settings = results["settings"]
    lines = [
        f"Device: **{settings['device']}**, torch {settings['torch']}, transformers {settings['transformers']}. "
        f"{settings['model']}, {settings['parameters'] / 1e9:.2f} B parameters, {settings['dtype']}; scripted "
        f"reasoning lengths {settings['lengths'][0]}-{settings['lengths'][1]} tokens (seeded); copy bandwidth "
        f"{settings['copy_bandwidth_gbs']:.0f} GB/s; a decode step reads "
        f"{settings['decode_weight_bytes'] / 1e9:.2f} GB of weights + "
        f"{settings['kv_bytes_per_token'] / 1e3:.1f} KB of KV per live token; the slot engine's step "
        f"{_paths(settings.get('step_paths', {}))}; "
        f"total {results.get('seconds', 0):.0f} s of a {settings['budget_s']:.0f} s budget.",
        "",
        "| contender | inputs | reasoning tokens | slots / batch | items | items/s | decode tok/s "
        "| peak GiB above weights | decode steps | steps / (tokens / slots) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        peak = "-" if run["peak_gib_above_weights"] is None else f"{run['peak_gib_above_weights']:.2f}"
        note = f" ({run['note']})" if run.get("note") else ""
        lines.append(
            f"| {run['contender']}{note} | {run['inputs']} | {'-'.join(map(str, run['lengths']))} | {run['size']} "
            f"| {run['items']} | {run['items_per_s']:.3f} "
            f"| {run['decode_tokens_per_s']:.0f} | {peak} | {run['decode_steps']} | {run['steps_vs_ideal']:.2f} |"
        )
    lines += [
        "",
        "| decode step at batch 1 | ms | live tokens | bytes read | % of copy bandwidth (roofline) "
        "| kernels (CPU: aten ops) | kernel-busy ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["roofline"]:
        busy = row.get("kernel_busy_ms")
        lines.append(
            f"| {row['contender']} | {row['step_ms']:.2f} | {row['live_tokens']:.0f} "
            f"| {row['bytes_per_step'] / 1e9:.2f} GB | {row['percent_of_copy_bandwidth']:.0f}% "
            f"| {row.get('kernels_per_step') or '-'} | {'-' if busy is None else f'{busy:.2f}'} |"
        )
    profiled = [row for row in results["roofline"] if row.get("top_kernels")]
    if profiled:
        lines += ["", "| costliest kernels of a batch-1 step | kernel | calls | ms |", "|---|---|---|---|"]
        for row in profiled:
            for kernel in row["top_kernels"]:
                name = kernel["kernel"].replace("|", "/")
                lines.append(f"| {row['contender']} | `{name}` | {kernel['calls']} | {kernel['ms']:.3f} |")
    lines += ["", "| cosine, batched vs alone | inputs | batched slots | items | min |", "|---|---|---|---|---|"]
    for row in results["cosine"]:
        lines.append(
            f"| {row['contender']} | {row['inputs']} | {row['batched_size']} | {row['items']} | {row['min']:.4f} |"
        )
    lines += _gemv(settings.get("step_paths", {}).get("gemv_units"), results.get("gemv_sweep"))
    kept = results.get("kept")
    if kept:
        lines += [
            "",
            f"Memory kept by {kept['calls']} more batch-1 calls ({kept['contender']}, 32 tokens each): "
            f"{kept['allocated_mib']:+.1f} MiB allocated, {kept['reserved_mib']:+.1f} MiB reserved.",
        ]
    lines += ["", *_ratios(results)]
    if results.get("mteb_origin"):
        lines += ["", f"mteb contender: {results['mteb_origin']}."]
    if results["skipped"]:
        lines += ["", "| not run | inputs | size | why |", "|---|---|---|---|"]
        for row in results["skipped"]:
            lines.append(f"| {row['contender']} | {row['inputs']} | {row['size']} | {row['why']} |")
    return "\n".join(lines) + "\n"


def _ratios(results: dict[str, Any]) -> list[str]:
    """Items/s of the slot engine over each other contender on the same inputs and size."""

    def key(run: dict[str, Any]) -> tuple:
        return run["inputs"], tuple(run["lengths"]), run["size"], run["items"]

    runs = {(run["contender"], *key(run)): run for run in results["runs"]}
    lines = ["| ours items/s over | inputs | reasoning tokens | size | items | ratio |", "|---|---|---|---|---|---|"]
    for run in results["runs"]:
        for mine in ("ours-graphs", "ours-compile", "ours-eager"):
            ours = runs.get((mine, *key(run)))
            if ours is not None and not run["contender"].startswith("ours"):
                kind, lengths, size, items = key(run)
                ratio = ours["items_per_s"] / run["items_per_s"]
                span = "-".join(map(str, lengths))
                lines.append(f"| {mine} over {run['contender']} | {kind} | {span} | {size} | {items} | {ratio:.2f}x |")
    return lines


def _paths(paths: dict) -> str:
    names = (("the fused projections", "fused"), ("the decode kernel", "kernel"), ("the rotary kernel", "rotary"))
    taken = [name for name, key in names if paths.get(key)]
    if paths.get("gemv"):
        taken.append(f"the GEMV kernels at one slot ({', '.join(paths['gemv'])})")
    if paths.get("rotary_in_gemv"):
        taken.append("the rotary inside the query/key/value GEMV kernel")
    if paths.get("dependent_launch"):
        taken.append("dependent launch of its Triton kernels")
    chosen = "takes " + ", ".join(taken) if taken else "runs the modules' projections and SDPA"
    if paths.get("choice_s") is not None:
        chosen += f" (checked and tuned in {paths['choice_s']:.1f} s)"
    return chosen


def _gemv(units: dict | None, sweep: list | None) -> list[str]:
    """The GEMV kernels' timings: what chose each unit (with the tuned block sizes), and the sweep when it ran."""
    lines = []
    if units:
        lines += [
            "",
            "| GEMV unit at one token | tuned (BLOCK_N, BLOCK_K, warps, stages) per call | kernel us | modules us "
            "| taken |",
            "|---|---|---|---|---|",
        ]
        for name, unit in units.items():
            configs = ", ".join(str(tuple(config)) for config in unit["configs"])
            kernel, modules = unit["kernel_us"], unit["modules_us"]
            lines.append(
                f"| {name} | {configs} | {kernel:.1f} | {modules:.1f} | {'yes' if kernel < modules else 'no'} |"
            )
    if sweep:
        lines += [
            "",
            "| GEMV call | default (BLOCK_N, BLOCK_K, warps, stages) | us | tuned | us | best of the grid | us "
            "| best GB/s | modules us |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in sweep:
            lines.append(
                f"| {row['call']} | {tuple(row['default'])} | {row['default_us']:.1f} | {tuple(row['tuned'])} "
                f"| {row['tuned_us']:.1f} | {tuple(row['best'])} | {row['best_us']:.1f} | {row['best_gbs']:.0f} "
                f"| {row['modules_us']:.1f} |"
            )
    return lines
