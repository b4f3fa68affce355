"""edgejpq against TensorFlow Lite on a Keras CNN trained on Fashion-MNIST and converted to full int8.

Trains a small Keras CNN (conv 16 → conv 32 stride 2 → depthwise + pointwise 48 stride 2 → global
average pool → dense 10) for --epochs, converts it with TFLiteConverter and a representative data set
to full int8 (int8 input and output), imports the .tflite with `edgejpq.tflite_import`, and reports:
  - the .tflite file size against edgejpq's packed weight bytes and all its constants;
  - edgejpq's planned arena against the interpreter's arena (ai-edge-litert reports none: the row
    says so) and against a TFLite-style greedy-by-size plan of the same tensors;
  - whether the host C build and the Cortex-M4 firmware in QEMU equal the interpreter (reference
    kernels) on every output byte, and how many bytes TFLite's own optimized kernels and its
    default (XNNPACK) path differ from its reference kernels on the same inputs;
  - instructions per inference of edgejpq's C on Cortex-M4 (QEMU, exact counts, DSP kernels);
  - top-1 accuracy of the interpreter and of edgejpq's C on the test images used.
Prints a table and, last, one JSON line. Needs the tflite extra (`pip install '.[tflite]'`).

    OMP_NUM_THREADS=1 python bench/tflite_compare.py [--epochs 2] [--limit 1000] [--qemu-limit 200]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build_cnn(tf: object) -> object:
    keras = tf.keras  # type: ignore[attr-defined]
    layers = keras.layers
    inp = keras.Input((28, 28, 1), batch_size=None)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inp)
    x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", activation="relu")(x)
    x = layers.Conv2D(48, 1, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(10)(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-limit", type=int, default=60_000)
    parser.add_argument("--limit", type=int, default=1000, help="test images for accuracy and the host comparison")
    parser.add_argument("--qemu-limit", type=int, default=200, help="test images run in QEMU")
    parser.add_argument("--out", type=Path, default=Path("bench/out/tflite_compare"))
    args = parser.parse_args()

    import tensorflow as tf
    from rich.console import Console
    from rich.table import Table

    from edgejpq.cost.memory import greedy_baseline_bytes
    from edgejpq.cost.target import load_target
    from edgejpq.data import load_dataset
    from edgejpq.emulate.host import emulate_host
    from edgejpq.emulate.qemu import emulate_qemu
    from edgejpq.quant.integerize import quantize_input
    from edgejpq.tflite_import import import_tflite, run_interpreter

    tf.keras.utils.set_random_seed(0)
    ds = load_dataset("fashion-mnist")
    x_train = ds.x_train[: args.train_limit].transpose(0, 2, 3, 1)
    y_train = ds.y_train[: args.train_limit]
    x_test, y_test = ds.x_test[: args.limit], ds.y_test[: args.limit]
    model = build_cnn(tf)
    model.compile(optimizer="adam", loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=128, verbose=0)
    train_seconds = time.perf_counter() - start
    float_acc = float((model.predict(x_test.transpose(0, 2, 3, 1), verbose=0).argmax(1) == y_test).mean())

    calibration = x_train[np.random.default_rng(0).choice(len(x_train), 300, replace=False)]

    def representative():
        for sample in calibration:
            yield [sample[None]]

    # a batch-1 copy of the trained model: the flatbuffer then has static shapes only
    fixed_in = tf.keras.Input((28, 28, 1), batch_size=1)
    fixed = tf.keras.Model(fixed_in, model(fixed_in))
    converter = tf.lite.TFLiteConverter.from_keras_model(fixed)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    content = converter.convert()
    args.out.mkdir(parents=True, exist_ok=True)
    tflite_path = args.out / "fashion_cnn_int8.tflite"
    tflite_path.write_bytes(content)

    imported = import_tflite(tflite_path, name="fashion_cnn")
    qmodel = imported.model
    inputs = quantize_input(qmodel, x_test)
    interp = {resolver: run_interpreter(content, inputs, tensor=imported.reference_tensor, resolver=resolver)
              for resolver in ("reference", "optimized", "default")}
    reference = interp["reference"]
    spec = load_target("cortex-m4")
    with tempfile.TemporaryDirectory(prefix="edgejpq-tflite-bench-") as tmp:
        host = emulate_host(qmodel, inputs, Path(tmp) / "host")
        q_inputs = inputs[: args.qemu_limit]
        qemu = emulate_qemu(qmodel, q_inputs, Path(tmp) / "qemu", spec)
    host_out = host.outputs.reshape(len(inputs), -1)
    qemu_out = qemu.outputs.reshape(len(q_inputs), -1)
    result = {
        "epochs": args.epochs, "train_seconds": round(train_seconds, 1), "test_images": len(inputs),
        "qemu_images": len(q_inputs), "accuracy_float_keras": float_acc,
        "accuracy_tflite_int8": float((reference.argmax(1) == y_test).mean()),
        "accuracy_edgejpq_c": float((host_out.argmax(1) == y_test).mean()),
        "tflite_file_bytes": len(content), "edgejpq_weight_bytes": qmodel.weight_bytes,
        "edgejpq_constant_bytes": qmodel.constant_bytes,
        "edgejpq_arena_bytes": qmodel.layout.arena_bytes, "edgejpq_arena_lower_bound": qmodel.layout.lower_bound,
        "greedy_by_size_arena_bytes": greedy_baseline_bytes(qmodel), "tflite_interpreter_arena_bytes": None,
        "host_c_equals_interpreter": bool(np.array_equal(host_out, reference)),
        "qemu_m4_equals_interpreter": bool(np.array_equal(qemu_out, reference[: len(q_inputs)])),
        "bytes_optimized_kernels_differ_from_reference": int((interp["optimized"] != reference).sum()),
        "bytes_default_xnnpack_differ_from_reference": int((interp["default"] != reference).sum()),
        "output_bytes_compared": int(reference.size),
        "instructions_per_inference_m4": qemu.instructions_per_inference,
        "flash_bytes_m4": qemu.sizes.flash_bytes, "ram_bytes_m4": qemu.ram_bytes,
        "notes": list(imported.notes),
    }
    table = Table(title="edgejpq vs TFLite (Keras CNN, Fashion-MNIST, full int8)", title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("training", f"{args.epochs} epochs, {train_seconds:.0f} s; float accuracy {100 * float_acc:.2f}%"),
        (".tflite file", f"{len(content):,} B"),
        ("edgejpq weights / all constants", f"{qmodel.weight_bytes:,} / {qmodel.constant_bytes:,} B"),
        ("edgejpq arena (lower bound)", f"{qmodel.layout.arena_bytes:,} B ({qmodel.layout.lower_bound:,})"),
        ("TFLite-style greedy-by-size arena", f"{result['greedy_by_size_arena_bytes']:,} B"),
        ("TFLite interpreter arena", "not reported by ai-edge-litert"),
        ("host C = interpreter (reference kernels)", f"{result['host_c_equals_interpreter']} ({len(inputs)} images)"),
        ("QEMU Cortex-M4 = interpreter", f"{result['qemu_m4_equals_interpreter']} ({len(q_inputs)} images)"),
        ("TFLite optimized / XNNPACK vs its reference",
         f"{result['bytes_optimized_kernels_differ_from_reference']} / "
         f"{result['bytes_default_xnnpack_differ_from_reference']} of {reference.size:,} bytes differ"),
        ("instructions / inference (Cortex-M4)", f"{qemu.instructions_per_inference:,.0f}"),
        ("flash / RAM on Cortex-M4", f"{qemu.sizes.flash_bytes:,} / {qemu.ram_bytes:,} B"),
        ("top-1: TFLite int8 / edgejpq C",
         f"{100 * result['accuracy_tflite_int8']:.2f}% / {100 * result['accuracy_edgejpq_c']:.2f}%"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
