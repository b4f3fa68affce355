"""Samples per second validated over the serial protocol, through QEMU's UART on a loopback socket.

For each model (a digits MLP: 64-byte inputs; a Fashion-MNIST CNN: 784-byte inputs; both 8-bit,
untrained, since throughput does not depend on weight values): build the serial firmware for
--target, start it in QEMU with its UART on a TCP socket, stream --limit test samples through
pyserial (HELLO checked, every output byte compared with the numpy reference) and report:

- unthrottled: samples per second measured end to end over the socket (QEMU's inference time,
  the host's framing and comparison included; no instruction counting);
- 115200 baud: *computed*, not throttled: the bytes one sample puts on the wire (RUN frame and
  its answer, 10 bits per byte on an 8N1 line) give the line-bound ceiling, and adding the
  measured unthrottled round trip to that wire time gives the expected rate on a 115200-baud
  line (a conservative figure: QEMU's emulated inference is slower than a board's).

Prints a table and, last, one JSON line.

    python bench/serial_throughput.py [--target cortex-m4] [--limit 500]
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

from edgejpq.cost.target import load_target
from edgejpq.data import calibration_subset, load_dataset
from edgejpq.graph import build_float_graph
from edgejpq.plan import uniform_plan
from edgejpq.quant.integerize import export_model, quantize_input
from edgejpq.serial.link import BITS_PER_BYTE
from edgejpq.serial.validate import validate_qemu
from edgejpq.zoo import build_model

BAUD = 115200
CASES = (("digits", "zoo:mlp"), ("fashion-mnist", "zoo:cnn"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="cortex-m4")
    parser.add_argument("--limit", type=int, default=500)
    args = parser.parse_args()
    target = load_target(args.target)
    rows = []
    for data, spec in CASES:
        torch.manual_seed(0)
        ds = load_dataset(data)
        net = build_model(spec, ds.input_shape, ds.num_classes)
        graph = build_float_graph(net, ds.input_shape)
        model, _ = export_model(graph, uniform_plan(graph, 8), calibration_subset(ds, 200), name=data.replace("-", "_"))
        n = min(args.limit, len(ds.x_test))
        inputs = quantize_input(model, ds.x_test[:n])
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = validate_qemu(model, inputs, Path(tmp), target, ds.y_test[:n], count_instructions=False)
            total = time.perf_counter() - start
        wire_bytes = result.wire_bytes_per_sample
        wire_seconds = wire_bytes * BITS_PER_BYTE / BAUD
        round_trip = float(result.round_trip_seconds.mean())
        rows.append({
            "model": f"{spec} on {data}", "input_bytes": model.input_info.size, "output_bytes": model.output_info.size,
            "samples": n, "bit_exact": result.bit_exact, "resends": result.stats["resends"],
            "unthrottled_samples_per_second": round(n / result.seconds, 1),
            "round_trip_ms": round(1e3 * round_trip, 3),
            "wire_bytes_per_sample": wire_bytes,
            "baud_115200_wire_bound_samples_per_second": round(result.wire_samples_per_second(BAUD), 1),
            "baud_115200_expected_samples_per_second": round(1.0 / (wire_seconds + round_trip), 1),
            "build_and_run_seconds": round(total, 2),
        })
    table = Table(title=f"serial validation throughput through QEMU's socket ({target.name} on "
                        f"{target.qemu.machine if target.qemu else '-'})", title_justify="left")
    columns = (("model", "model"), ("samples", "samples"), ("bit-exact", "bit_exact"),
               ("unthrottled samples/s", "unthrottled_samples_per_second"), ("round trip ms", "round_trip_ms"),
               ("wire bytes/sample", "wire_bytes_per_sample"),
               ("115200: wire-bound samples/s", "baud_115200_wire_bound_samples_per_second"),
               ("115200: expected samples/s", "baud_115200_expected_samples_per_second"))
    for title, _ in columns:
        table.add_column(title, justify="left" if title == "model" else "right")
    for row in rows:
        table.add_row(*(str(row[key]) for _, key in columns))
    Console().print(table)
    print(json.dumps({"benchmark": "serial_throughput", "target": target.name, "baud": BAUD,
                      "baud_figures": "computed from bytes on the wire (10 bits per byte), not throttled",
                      "rows": rows}, sort_keys=True))


if __name__ == "__main__":
    main()
