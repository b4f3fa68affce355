"""Kernel efficiency on a Cortex-M target in QEMU: MACs per instruction and per estimated cycle.

Every kernel of the target's set (DSP kernels on a Cortex-M4) runs alone, as a one-layer model,
at 8-, 4- and 2-bit weights on the shapes of the issue ("Cortex-M firmware in QEMU"); the
instruction-count plugin counts the layer's instructions exactly (all of the layer: input
conversion, requantization table, loops, requantization and stores), the target's
latency.instruction_cycles turns them into an estimated cycle count. Every run is checked
bit-exact against the numpy reference. Prints a table and, last, one JSON line.

Targets (per instruction; SMLAD's 2 MACs per instruction is the ceiling): 3x3 conv at 8 bits
>= 0.7, pointwise >= 0.7, linear >= 0.6, depthwise >= 0.3, a 1-channel first layer >= 0.3;
4- and 2-bit kernels no more instructions per MAC than 8-bit on the same shape. Also writes
bench/out/qemu_kernels_<target>.json.

    python bench/qemu_kernels.py [--target cortex-m4] [--bits 8,4,2] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgejpq.artifact import atomic_write_bytes
from edgejpq.calibrate import KernelCase, KernelMeasurement, conv_case, fc_case, measure_cases
from edgejpq.cost.target import load_target

OUT = Path(__file__).resolve().parent / "out"

# (name, builder(bits), MAC/instruction target at 8 bits)
SHAPES = (
    ("conv3x3 32x32x16->16", lambda b: conv_case("conv2d", (32, 32, 16), 16, b), 0.7),
    ("conv3x3 16x16x32->32", lambda b: conv_case("conv2d", (16, 16, 32), 32, b), 0.7),
    ("conv3x3 8x8x64->64", lambda b: conv_case("conv2d", (8, 8, 64), 64, b), 0.7),
    ("first layer 28x28x1->16 3x3", lambda b: conv_case("conv2d", (28, 28, 1), 16, b), 0.3),
    ("pointwise 16x16x64->64", lambda b: conv_case("pointwise_conv2d", (16, 16, 64), 64, b), 0.7),
    ("depthwise 16x16x64 3x3", lambda b: conv_case("depthwise_conv2d", (16, 16, 64), 0, b), 0.3),
    ("linear 256->10", lambda b: fc_case(256, 10, b), 0.6),
    ("linear 1024->128", lambda b: fc_case(1024, 128, b), 0.6),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="cortex-m4")
    parser.add_argument("--bits", default="8,4,2")
    parser.add_argument("--workers", type=int, default=2, help="QEMU builds and runs in parallel")
    args = parser.parse_args()
    target = load_target(args.target)
    bits = tuple(int(b) for b in args.bits.split(","))
    cases: list[tuple[str, KernelCase, float]] = [(name, build(b), goal) for name, build, goal in SHAPES for b in bits]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgejpq-bench-") as tmp:
        measured = measure_cases([c for _, c, _ in cases], target, Path(tmp), workers=args.workers)
    seconds = time.perf_counter() - start
    by_shape: dict[str, dict[int, KernelMeasurement]] = {}
    for (name, case, _), m in zip(cases, measured):
        by_shape.setdefault(name, {})[case.bits] = m
    table = Table(title=f"kernels on {target.name} ({target.kernels} set, QEMU {target.qemu.machine}): "
                        f"MACs per instruction / per estimated cycle", title_justify="left")
    for col in ("shape", "bits", "MACs", "instructions", "MAC/instr", "est. cycles", "MAC/cycle", "target", "check"):
        table.add_column(col, justify="left" if col in ("shape", "check") else "right")
    rows = []
    for (name, case, goal), m in zip(cases, measured):
        eight = by_shape[name].get(8)
        if case.bits == 8:
            ok = m.macs_per_instruction >= goal
            check = f"{'ok' if ok else 'MISSED'} (>= {goal})"
        else:
            ok = eight is None or m.instructions / case.macs <= eight.instructions / eight.case.macs
            check = "ok (<= 8-bit instr/MAC)" if ok else "MISSED (more instr/MAC than 8-bit)"
        table.add_row(name, str(case.bits), f"{case.macs:,}", f"{m.instructions:,.0f}",
                      f"{m.macs_per_instruction:.3f}", f"{m.cycles:,.0f}", f"{m.macs_per_cycle:.3f}",
                      f"{goal}" if case.bits == 8 else "", check)
        rows.append({"shape": name, "kernel": case.kind, "label": case.label, "bits": case.bits, "macs": case.macs,
                     "instructions": round(m.instructions), "cycles_estimate": round(m.cycles),
                     "macs_per_instruction": round(m.macs_per_instruction, 4),
                     "macs_per_cycle": round(m.macs_per_cycle, 4), "target_macs_per_instruction": goal,
                     "meets_target": ok})
    Console(width=160).print(table)
    summary = {"bench": "qemu_kernels", "target": target.name, "kernels": target.kernels,
               "machine": target.qemu.machine, "seconds": round(seconds, 1), "all_bit_exact": True,
               "targets_met": sum(1 for r in rows if r["meets_target"]), "targets": len(rows),
               "all_targets_met": all(r["meets_target"] for r in rows), "results": rows}
    OUT.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(OUT / f"qemu_kernels_{target.name}.json", (json.dumps(summary, indent=1) + "\n").encode())
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
