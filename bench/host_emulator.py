"""Host-emulator throughput and arena size for every zoo model on Fashion-MNIST.

For each zoo model: export at uniform 8 bits (post-training quantization; weights from a model
trained for --epochs, 0 = untrained, since neither throughput nor arena depend on weight
values), build the generated C with the host gcc (-O2), stream the 10,000 test images through it,
check every output byte against the numpy reference, and report inferences per second, the
arena against the lower bound (largest sum of simultaneously live buffers) and against a
TFLite-Micro-like greedy-by-size planner. Prints a table and, last, one JSON line.

    python bench/host_emulator.py [--epochs 0] [--limit 10000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from edgejpq.cost.memory import activation_lower_bound, greedy_baseline_bytes
from edgejpq.data import calibration_subset, load_dataset
from edgejpq.emulate.host import emulate_host
from edgejpq.graph import build_float_graph
from edgejpq.plan import uniform_plan
from edgejpq.quant.integerize import export_model, quantize_input
from edgejpq.train import train_float
from edgejpq.zoo import ZOO_NAMES, build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=0)
    parser.add_argument("--limit", type=int, default=10_000)
    args = parser.parse_args()
    ds = load_dataset("fashion-mnist")
    x = ds.x_test[: args.limit]
    rows = []
    for name in ZOO_NAMES:
        torch.manual_seed(0)
        model = build_model(f"zoo:{name}", ds.input_shape, ds.num_classes)
        if args.epochs:
            train_float(model, ds, epochs=args.epochs)
        graph = build_float_graph(model, ds.input_shape)
        qmodel, _ = export_model(graph, uniform_plan(graph, 8), calibration_subset(ds, 500), name=name)
        inputs = quantize_input(qmodel, x)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = emulate_host(qmodel, inputs, Path(tmp))
            total = time.perf_counter() - start
        rows.append({
            "model": name, "weight_bytes": qmodel.weight_bytes, "arena_bytes": qmodel.layout.arena_bytes,
            "lower_bound_bytes": activation_lower_bound(qmodel), "greedy_by_size_bytes": greedy_baseline_bytes(qmodel),
            "samples": len(inputs), "bit_exact": result.bit_exact,
            "inferences_per_second": round(len(inputs) / result.run_seconds, 1),
            "build_seconds": round(result.build_seconds, 2), "total_seconds": round(total, 2),
        })
    table = Table(title="host emulator: Fashion-MNIST test set, uniform 8-bit, gcc -O2")
    for col in rows[0]:
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console(width=200).print(table)
    print(json.dumps({"benchmark": "host_emulator", "rows": rows}))


if __name__ == "__main__":
    main()
