"""The run folder of a search: plan.json, model.ejq, report.md, history.json and PNG plots."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from edgejpq.artifact import atomic_write_bytes, save_model
from edgejpq.search.run import EpochRecord, SearchResult


def _kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB"


def write_report(run_dir: Path, result: SearchResult, target: Any, header: dict[str, Any]) -> dict[str, Any]:
    """Write every file of the run folder (each atomically); return the JSON summary."""
    run_dir.mkdir(parents=True, exist_ok=True)
    result.plan.save(run_dir / "plan.json")
    content_hash = save_model(result.model, run_dir / "model.ejq")
    history = [asdict(r) for r in result.history]
    atomic_write_bytes(run_dir / "history.json", json.dumps(history, indent=1).encode())
    plot_history(result.history, run_dir / "training.png", budgets=header.get("budgets", {}))
    cost = result.cost
    summary = {
        **header, "cost": cost.as_dict(), "accuracy_float": result.accuracy_float,
        "accuracy_fake_quant": result.accuracy_fake_quant, "accuracy_integer": result.accuracy_integer,
        "seconds": round(result.seconds, 1), "repair_steps": result.repair_steps,
        "fill_steps": result.fill_steps, "variant_exchanges": result.variant_exchanges, "hash": content_hash,
        "pinned": dict(result.pinned),
        "plan": result.plan.summary(),
    }
    atomic_write_bytes(run_dir / "summary.json", json.dumps(summary, indent=1).encode())
    lines = [
        f"# edgejpq search: {header.get('model')} on {header.get('data')} for {target.name}", "",
        f"Method **{header.get('method')}**, budgets {header.get('budgets') or 'none'}, strength "
        f"{header.get('strength')}, {len(result.history)} epochs, {result.seconds:.0f} s.", "",
        *([f"Pinned (`--pin-input`: the layers reading the input): "
           + ", ".join(f"{name} at {bits} bits" for name, bits in result.pinned.items()) + ".", ""]
          if result.pinned else []),
        "## Totals against the target", "",
        "| figure | value | target budget |", "|---|---|---|",
        f"| flash (weights + constants + code) | {cost.flash_bytes} B ({_kib(cost.flash_bytes)}) | "
        f"{target.model_flash_budget} B |",
        f"| — packed weights | {cost.weight_bytes} B | |",
        f"| — per-channel constants | {cost.constant_bytes} B | |",
        f"| — code (kernels and model) | {cost.code_bytes} B | |",
        f"| RAM: activation arena | {cost.arena_bytes} B ({_kib(cost.arena_bytes)}) | {target.model_ram_budget} B |",
        f"| latency (look-up table{'' if target.latency.calibrated else ', not yet calibrated'}) | "
        f"{cost.latency_ms:.3f} ms ({cost.cycles:.0f} cycles at {target.clock_hz / 1e6:.0f} MHz) | |",
        f"| MACs per inference | {cost.macs} | |", "",
        "## Accuracy (test set)", "",
        "| float (before search) | fake-quantized | integer reference |", "|---|---|---|",
        f"| {100 * result.accuracy_float:.2f}% | {100 * result.accuracy_fake_quant:.2f}% | "
        f"{100 * result.accuracy_integer:.2f}% |", "",
        "## Layers", "",
        "| layer | kind | kept / channels | bits | MACs | weight bytes | predicted cycles |",
        "|---|---|---|---|---|---|---|",
    ]
    plan_summary = result.plan.summary()
    for layer in cost.layers:
        kept = plan_summary.get(layer.name)
        kept_text = f"{kept['kept']} / {kept['channels']}" if kept else str(layer.channels)
        lines.append(f"| {layer.name} | {layer.kind} | {kept_text} | {layer.bits} | {layer.macs} | "
                     f"{layer.weight_bytes} | {layer.cycles:.0f} |")
    lines += ["", "![training](training.png)", ""]
    atomic_write_bytes(run_dir / "report.md", "\n".join(lines).encode())
    return summary


def plot_history(history: Sequence[EpochRecord], path: Path, budgets: dict[str, float]) -> None:
    """Accuracy, flash and weights, and latency of the discrete plan after every epoch, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    epochs = [r.epoch for r in history]
    axes[0].plot(epochs, [100 * r.test_accuracy for r in history], marker="o")
    axes[0].set_title("test accuracy (hard model), %")
    axes[1].plot(epochs, [r.flash_bytes / 1024 for r in history], marker="o", color="tab:orange", label="flash")
    axes[1].plot(epochs, [r.weight_bytes / 1024 for r in history], marker="s", color="tab:brown", label="weights")
    axes[1].set_title("flash and weights of the discrete plan, KiB")
    axes[2].plot(epochs, [r.latency_ms for r in history], marker="o", color="tab:green")
    axes[2].set_title("latency estimate, ms")
    if budgets.get("flash_bytes"):
        axes[1].axhline(budgets["flash_bytes"] / 1024, color="red", linestyle="--", label="flash budget")
    if budgets.get("weight_bytes"):
        axes[1].axhline(budgets["weight_bytes"] / 1024, color="darkred", linestyle=":", label="weights budget")
    axes[1].legend()
    if budgets.get("latency_ms"):
        axes[2].axhline(budgets["latency_ms"], color="red", linestyle="--", label="budget")
        axes[2].legend()
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    stages = [r.stage for r in history]
    for i in range(1, len(stages)):
        if stages[i] != stages[i - 1]:
            for ax in axes:
                ax.axvline(epochs[i] - 0.5, color="grey", linestyle=":")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def plot_pareto(points: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Weight bytes vs accuracy, one series per method (benchmarks and sweeps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method in sorted({p["method"] for p in points}):
        series = sorted((p for p in points if p["method"] == method), key=lambda p: p["weight_bytes"])
        ax.plot([p["weight_bytes"] / 1024 for p in series], [100 * p["accuracy"] for p in series], marker="o",
                label=method)
        for p in series:
            if p.get("label"):
                ax.annotate(p["label"], (p["weight_bytes"] / 1024, 100 * p["accuracy"]), fontsize=7,
                            textcoords="offset points", xytext=(4, -10))
    ax.set_xlabel("packed weight bytes (KiB)")
    ax.set_ylabel("integer model test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
