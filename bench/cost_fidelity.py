"""Cost-model fidelity: the cost model's predictions against the built firmware measured in QEMU.

For every zoo model (random-initialised weights, small inputs) under several plans (uniform 8, 4
and 2 bits, and a seeded random mixed plan with pruned channels), the model is exported
(edgejpq.quant.integerize.export_model), its cost predicted by edgejpq.cost.model.model_cost
with the target's latency table, then generated, cross-compiled and run in QEMU
(edgejpq.emulate.qemu.emulate_qemu, checked bit-exact). Compared:
  - cycles per inference: the table's prediction vs the QEMU estimate (exact instruction counts
    by class x latency.instruction_cycles: the quantity the table is fitted to);
  - instructions per inference: the predicted cycles / the calibrated cycles per instruction
    (latency.calibration.cycles_per_instruction) vs the exact count;
  - weight bytes (flash) and arena bytes (RAM): the model's vs the linked ELF's (the packed weight
    arrays, the `<name>_arena` symbol);
  - code bytes: the cost model's estimate (targets/*.yaml code_size) vs the linked model code,
    kernels and runtime routines (edgejpq.emulate.qemu.FirmwareSizes). The DSP kernels' scratch buffer, the stack and the extra
    constants the generator precomputes are reported apart: the cost model does not count them.
Issue requirement: instructions within +-10% for every model and plan; weights and arena equal.
Prints a table and, last, one JSON line; writes bench/out/cost_fidelity_<target>.json.

    python bench/cost_fidelity.py [--target cortex-m4] [--models cnn,resnet8] [--plans uniform:8,mixed]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from edgejpq.artifact import QuantizedModel, atomic_write_bytes
from edgejpq.cost.model import model_cost
from edgejpq.cost.target import TargetSpec, load_target
from edgejpq.emulate.qemu import _nm_sizes, emulate_qemu, find_cross_tools
from edgejpq.graph import build_float_graph
from edgejpq.plan import LayerPlan, PrecisionPlan, uniform_plan
from edgejpq.quant.integerize import export_model
from edgejpq.search.groups import channel_groups
from edgejpq.zoo import ZOO_NAMES, build_model

INPUT_SHAPES: dict[str, tuple[int, ...]] = {"cnn": (1, 28, 28), "resnet8": (1, 28, 28), "mlp": (1, 8, 8),
                                            "dscnn": (1, 28, 28), "mobilenet": (1, 28, 28), "cnn1d": (1, 40)}
PLANS = ("uniform:8", "uniform:4", "uniform:2", "mixed")
TOLERANCE = 0.10
OUT = Path(__file__).resolve().parent / "out"


def mixed_plan(graph: Any, seed: int) -> PrecisionPlan:
    """Random 8/4/2 bits per channel, a quarter of every prunable channel group pruned (same channels in
    every member of a group, as the search prunes them)."""
    rng = np.random.default_rng(seed)
    groups = channel_groups(graph)
    keep = {}
    for group in groups.groups:
        mask = np.ones(group.channels, dtype=bool)
        if not group.fixed and group.channels > 1:
            mask[rng.choice(group.channels, size=max(1, group.channels // 4), replace=False)] = False
        keep[group.index] = mask
    layers = {}
    for layer in graph.weighted:
        mask = keep[groups.layer_group[layer.name]]
        bits = rng.choice([8, 4, 2], size=layer.out_channels)
        layers[layer.name] = LayerPlan(tuple(int(b) if k else 0 for b, k in zip(bits, mask)))
    return PrecisionPlan(layers)


@dataclass(frozen=True)
class Case:
    model: str
    plan: str
    qmodel: QuantizedModel


def build_cases(models: list[str], plans: list[str], seed: int) -> list[Case]:
    import torch

    cases = []
    for name in models:
        shape = INPUT_SHAPES[name]
        torch.manual_seed(seed)
        net = build_model(f"zoo:{name}", shape, 10).eval()
        with torch.no_grad():  # random weights, zero biases: deep random nets shrink their activations so
            for module in net.modules():  # much that a random bias would not fit int32 (export refuses it)
                if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)) and module.bias is not None:
                    module.bias.zero_()
        graph = build_float_graph(net, shape)
        calib = np.random.default_rng(seed).random((64, *shape), dtype=np.float32)
        for plan_name in plans:
            plan = mixed_plan(graph, seed) if plan_name == "mixed" else uniform_plan(graph, int(plan_name[8:]))
            try:
                qmodel, _ = export_model(graph, plan, calib, name=f"{name}_{plan_name.replace(':', '')}")
            except Exception as exc:
                raise SystemExit(f"exporting zoo:{name} with plan {plan_name} failed: {exc}") from None
            cases.append(Case(name, plan_name, qmodel))
    return cases


def measure(case: Case, target: TargetSpec, root: Path, samples: int) -> dict[str, Any]:
    qmodel = case.qmodel
    predicted = model_cost(qmodel, target)
    x = np.random.default_rng(0).integers(-128, 128, size=(samples, *qmodel.input_info.shape), dtype=np.int8)
    result = emulate_qemu(qmodel, x, root / qmodel.name, target)
    symbols = _nm_sizes(find_cross_tools(target.compiler.cc).nm, result.firmware.elf)
    name = result.firmware.name
    cpi = target.latency.calibration.cycles_per_instruction if target.latency.calibration else None
    measured_insns = float(result.instructions_per_inference or 0.0)
    measured_cycles = float(result.cycles_estimate_per_inference or 0.0)
    predicted_insns = predicted.cycles / cpi if cpi else None
    # per layer: predicted cycles vs the QEMU estimate of that op (reshapes cost nothing in the model)
    by_name = {layer.name: layer for layer in predicted.layers}
    layers = []
    for op, counts in zip(qmodel.ops, result.ops):
        layer = by_name.get(op.source or op.name) or by_name.get(op.name)
        layers.append({"op": op.name, "kind": op.kind, "instructions": round(counts.instructions),
                       "cycles_estimate": round(counts.cycles_estimate or 0.0),
                       "predicted_cycles": round(layer.cycles) if layer is not None else 0})
    return {
        "model": case.model, "plan": case.plan, "bit_exact": result.bit_exact, "macs": predicted.macs,
        "instructions": round(measured_insns), "predicted_instructions": round(predicted_insns) if cpi else None,
        "instructions_error": (predicted_insns / measured_insns - 1.0) if cpi and measured_insns else None,
        "cycles_estimate": round(measured_cycles), "predicted_cycles": round(predicted.cycles),
        "cycles_error": predicted.cycles / measured_cycles - 1.0 if measured_cycles else None,
        "weight_bytes": result.sizes.weight_bytes, "predicted_weight_bytes": predicted.weight_bytes,
        "arena_bytes": symbols.get(f"{name}_arena", 0), "predicted_arena_bytes": predicted.arena_bytes,
        "scratch_bytes": symbols.get(f"{name}_scratch", 0), "stack_bytes": result.run.stack_bytes,
        "constant_bytes": result.sizes.constant_bytes, "predicted_constant_bytes": predicted.constant_bytes,
        "code_bytes": result.sizes.model_code_bytes + result.sizes.kernel_code_bytes + result.sizes.runtime_bytes,
        "predicted_code_bytes": predicted.code_bytes,
        "layers": layers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="cortex-m4")
    parser.add_argument("--models", default=",".join(ZOO_NAMES))
    parser.add_argument("--plans", default=",".join(PLANS))
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    target = load_target(args.target)
    start = time.perf_counter()
    cases = build_cases(args.models.split(","), args.plans.split(","), args.seed)
    with tempfile.TemporaryDirectory(prefix="edgejpq-fidelity-") as tmp, ThreadPoolExecutor(args.workers) as pool:
        rows = list(pool.map(lambda c: measure(c, target, Path(tmp), args.samples), cases))
    seconds = time.perf_counter() - start

    console = Console(width=200)
    calibrated = target.latency.calibrated
    table = Table(title=f"cost model vs firmware on {target.name} (QEMU {target.qemu.machine}, latency table "
                        f"{'calibrated' if calibrated else 'NOT calibrated: initial estimate'})", title_justify="left")
    for col in ("model", "plan", "MACs", "instr. measured", "instr. predicted", "error", "cycles est.",
                "cycles predicted", "error", "weights (fw / model)", "arena (fw / model)", "code (fw / est.)", "scratch", "stack", "check"):
        table.add_column(col, justify="left" if col in ("model", "plan", "check") else "right")
    for r in rows:
        ok_insns = r["instructions_error"] is not None and abs(r["instructions_error"]) <= TOLERANCE
        ok_bytes = r["weight_bytes"] == r["predicted_weight_bytes"] and r["arena_bytes"] == r["predicted_arena_bytes"]
        r["meets_requirement"] = bool(ok_insns and ok_bytes and r["bit_exact"])
        problems = ([] if ok_insns else ["instructions"]) + ([] if ok_bytes else ["bytes"]) + \
                   ([] if r["bit_exact"] else ["NOT BIT-EXACT"])
        table.add_row(r["model"], r["plan"], f"{r['macs']:,}", f"{r['instructions']:,}",
                      f"{r['predicted_instructions']:,}" if r["predicted_instructions"] is not None else "n/a",
                      f"{100 * r['instructions_error']:+.1f}%" if r["instructions_error"] is not None else "n/a",
                      f"{r['cycles_estimate']:,}", f"{r['predicted_cycles']:,}", f"{100 * r['cycles_error']:+.1f}%",
                      f"{r['weight_bytes']:,} / {r['predicted_weight_bytes']:,}",
                      f"{r['arena_bytes']:,} / {r['predicted_arena_bytes']:,}",
                      f"{r['code_bytes']:,} / {r['predicted_code_bytes']:,}", f"{r['scratch_bytes']:,}",
                      f"{r['stack_bytes']:,}", "ok" if not problems else "MISSED: " + ", ".join(problems))
    console.print(table)
    errors = [abs(r["instructions_error"]) for r in rows if r["instructions_error"] is not None]
    cycle_errors = [abs(r["cycles_error"]) for r in rows if r["cycles_error"] is not None]
    summary = {"bench": "cost_fidelity", "target": target.name, "machine": target.qemu.machine,
               "latency_calibrated": calibrated,
               "cycles_per_instruction": (target.latency.calibration.cycles_per_instruction
                                          if target.latency.calibration else None),
               "tolerance": TOLERANCE, "cases": len(rows), "seconds": round(seconds, 1),
               "all_bit_exact": all(r["bit_exact"] for r in rows),
               "max_abs_instructions_error": max(errors) if errors else None,
               "max_abs_cycles_error": max(cycle_errors) if cycle_errors else None,
               "within_tolerance": sum(1 for r in rows if r["instructions_error"] is not None
                                       and abs(r["instructions_error"]) <= TOLERANCE),
               "weights_equal": all(r["weight_bytes"] == r["predicted_weight_bytes"] for r in rows),
               "arena_equal": all(r["arena_bytes"] == r["predicted_arena_bytes"] for r in rows),
               "max_abs_code_error": max(abs(r["predicted_code_bytes"] / r["code_bytes"] - 1.0) for r in rows),
               "all_requirements_met": all(r["meets_requirement"] for r in rows), "results": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(OUT / f"cost_fidelity_{target.name}.json", (json.dumps(summary, indent=1) + "\n").encode())
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
