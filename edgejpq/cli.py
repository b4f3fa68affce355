"""The `edgejpq` command line: train, export, generate, emulate, inspect.

Conventions for every command: examples in --help; progress bars for long work; a short
summary table at the end; `--json` prints a machine-readable summary as the last line of
stdout; a user error prints one line `error: ...` (no traceback) and exits with status 2.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Optional, TypeVar

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgejpq import __version__
from edgejpq.errors import EdgejpqError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    help="edgejpq: pruning + mixed-precision quantization of PyTorch models into bit-exact C for microcontrollers.",
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def user_errors(func: F) -> F:
    """Turn an EdgejpqError (or a missing file) into one line on stderr and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EdgejpqError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _progress() -> Progress:
    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=err_console, transient=False)


def _summary(title: str, rows: list[tuple[str, Any]], as_json: bool, payload: dict[str, Any]) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)
    if as_json:
        print(json.dumps(payload, sort_keys=True))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.reshape(len(labels), -1).argmax(axis=1) == labels).mean())


JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON summary as the last line of stdout.")]


# --------------------------------------------------------------------------- train


@app.command(epilog="Example: `edgejpq train --model zoo:resnet8 --data fashion-mnist --epochs 6 -o float.pt`")
@user_errors
def train(
    model: Annotated[str, typer.Option(help="zoo:cnn | zoo:resnet8 | zoo:mlp | path/to/file.py:ClassName")],
    data: Annotated[str, typer.Option(help="fashion-mnist | digits | npz:PATH | idx:FOLDER")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Float checkpoint to write (.pt).")],
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    lr: Annotated[float, typer.Option(help="Adam learning rate (cosine schedule).")] = 1e-3,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    seed: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """Train the float model (Adam, cosine schedule) and save a checkpoint `export` accepts."""
    from edgejpq.data import load_dataset
    from edgejpq.train import save_float_checkpoint, train_float
    from edgejpq.zoo import build_model

    _check_output_folder(output)
    ds = load_dataset(data)
    net = build_model(model, ds.input_shape, ds.num_classes, seed=seed)
    params = sum(p.numel() for p in net.parameters())
    start = time.perf_counter()
    with _progress() as progress:
        task = progress.add_task(f"training {model} on {ds.name}", total=epochs)

        def on_epoch(epoch: int, loss: float, acc: float) -> None:
            progress.update(task, advance=1, description=f"epoch {epoch} loss {loss:.4f} test {100 * acc:.2f}%")

        history = train_float(net, ds, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, on_epoch=on_epoch)
    seconds = time.perf_counter() - start
    save_float_checkpoint(output, net, model_spec=model, data_spec=data, input_shape=ds.input_shape,
                          num_classes=ds.num_classes, history=history)
    acc = float(history[-1]["test_accuracy"])
    _summary(f"edgejpq train → {output}", [("model", model), ("parameters", params), ("data", ds.name),
                                           ("epochs", epochs), ("test accuracy", _pct(acc)),
                                           ("wall time", f"{seconds:.1f} s")], as_json,
             {"model": model, "data": data, "parameters": params, "epochs": epochs, "test_accuracy": acc,
              "seconds": round(seconds, 2), "output": str(output)})


def _check_output_folder(path: Path) -> None:
    folder = path.resolve().parent
    if not folder.is_dir():
        raise EdgejpqError(f"{path}: output folder {folder} does not exist")
    import os

    if not os.access(folder, os.W_OK):
        raise EdgejpqError(f"{path}: output folder {folder} is not writable")


# --------------------------------------------------------------------------- export


def _load_model_for_data(model_spec: str, input_shape: tuple[int, ...], num_classes: int,
                         seed: int = 0) -> tuple[Any, str]:
    """A trained checkpoint (.pt) or a model spec (untrained: useful only to exercise the pipeline; its initial
    weights drawn from `seed`, zoo.build_model, so the same command gives the same model)."""
    from edgejpq.train import load_float_checkpoint
    from edgejpq.zoo import build_model

    if model_spec.endswith(".pt"):
        net, meta = load_float_checkpoint(model_spec)
        if tuple(meta["input_shape"]) != tuple(input_shape) or int(meta["num_classes"]) != num_classes:
            raise EdgejpqError(f"{model_spec}: trained for inputs {tuple(meta['input_shape'])} with "
                               f"{meta['num_classes']} classes, but the data has {tuple(input_shape)} and {num_classes}")
        return net, str(meta.get("model_spec", model_spec))
    return build_model(model_spec, input_shape, num_classes, seed=seed), model_spec


@app.command(epilog="Examples: `edgejpq export --model float.pt --plan uniform:8 --data fashion-mnist -o model.ejq`; "
                    "`edgejpq export --model float.pt --plan runs/a/plan.json --data digits -o m.ejq`")
@user_errors
def export(
    model: Annotated[str, typer.Option(help="Float checkpoint from `edgejpq train` (.pt), or a model spec.")],
    plan: Annotated[str, typer.Option(help="plan.json, or uniform:8 | uniform:4 | uniform:2")],
    data: Annotated[str, typer.Option(help="Data set for calibration and evaluation.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="QuantizedModel file to write (.ejq).")],
    calibration: Annotated[int, typer.Option(min=1, help="Training samples used to calibrate ranges.")] = 1000,
    eval_limit: Annotated[Optional[int], typer.Option(min=1, help="Evaluate on the first N test samples.")] = None,
    name: Annotated[Optional[str], typer.Option(help="Model name (C prefix); default: the output file's stem.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Post-training quantization: fold batch norm, calibrate, quantize per the plan, write `.ejq`."""
    from edgejpq.artifact import save_model
    from edgejpq.data import calibration_subset, load_dataset
    from edgejpq.graph import build_float_graph
    from edgejpq.plan import load_plan
    from edgejpq.quant.integerize import export_model, integer_logits, predict_float

    _check_output_folder(output)
    ds = load_dataset(data)
    net, model_spec = _load_model_for_data(model, ds.input_shape, ds.num_classes)
    graph = build_float_graph(net, ds.input_shape)
    precision = load_plan(plan, graph)
    calib = calibration_subset(ds, min(calibration, len(ds.x_train)))
    qmodel, state = export_model(graph, precision, calib, name=name or output.stem,
                                 provenance={"model_spec": model_spec, "data": data, "plan": plan})
    content_hash = save_model(qmodel, output)
    n = len(ds.x_test) if eval_limit is None else min(eval_limit, len(ds.x_test))
    x, y = ds.x_test[:n], ds.y_test[:n]
    acc_float = _accuracy(predict_float(graph, x), y)
    acc_fake = _accuracy(predict_float(graph, x, state=state), y)
    acc_int = _accuracy(integer_logits(qmodel, x), y)
    _summary(f"edgejpq export → {output}", [
        ("model", model_spec), ("plan", plan), ("layers", len(qmodel.ops)),
        ("weight bytes (packed)", qmodel.weight_bytes), ("constant bytes", qmodel.constant_bytes),
        ("arena bytes", f"{qmodel.layout.arena_bytes} (lower bound {qmodel.layout.lower_bound})"),
        (f"accuracy float / fake-quant / integer (n={n})", f"{_pct(acc_float)} / {_pct(acc_fake)} / {_pct(acc_int)}"),
        ("hash", content_hash[:16])], as_json,
        {"output": str(output), "hash": content_hash, "weight_bytes": qmodel.weight_bytes,
         "arena_bytes": qmodel.layout.arena_bytes, "samples": n, "accuracy_float": acc_float,
         "accuracy_fake_quant": acc_fake, "accuracy_integer": acc_int})


# --------------------------------------------------------------------------- import


@app.command("import", epilog="Example: `edgejpq import model_int8.tflite -o model.ejq`; then `edgejpq emulate "
                              "model_int8.tflite` compares our C with the TFLite interpreter")
@user_errors
def import_(
    source: Annotated[Path, typer.Argument(metavar="MODEL.tflite", help="Fully-int8 TensorFlow Lite model.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="QuantizedModel file to write (.ejq).")],
    name: Annotated[Optional[str], typer.Option(help="Model name (C prefix); default: the output file's stem.")] = None,
    keep_softmax: Annotated[bool, typer.Option(
        "--keep-softmax", help="Refuse a final SOFTMAX instead of dropping it (edgejpq has no int8 softmax).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Import a fully-int8 `.tflite` (needs `pip install 'edgejpq[tflite]'`) into a `.ejq` that matches TFLite's
    reference kernels byte for byte."""
    from edgejpq.artifact import save_model
    from edgejpq.tflite_import import import_tflite

    _check_output_folder(output)
    imported = import_tflite(source, name=name or output.stem, drop_softmax=not keep_softmax)
    qmodel = imported.model
    content_hash = save_model(qmodel, output)
    kinds: dict[str, int] = {}
    for op in qmodel.ops:
        kinds[op.kind] = kinds.get(op.kind, 0) + 1
    _summary(f"edgejpq import → {output}", [
        ("source", f"{source} ({source.stat().st_size:,} B)"), ("ops", ", ".join(f"{k} {v}" for k, v in kinds.items())),
        ("input / output", f"{qmodel.input_info.shape} / {qmodel.output_info.shape}"),
        ("weight bytes (packed)", qmodel.weight_bytes), ("constant bytes", qmodel.constant_bytes),
        ("arena bytes", f"{qmodel.layout.arena_bytes} (lower bound {qmodel.layout.lower_bound})"),
        *((f"note {i + 1}", note) for i, note in enumerate(imported.notes)),
        ("hash", content_hash[:16])], as_json,
        {"output": str(output), "hash": content_hash, "ops": len(qmodel.ops), "weight_bytes": qmodel.weight_bytes,
         "arena_bytes": qmodel.layout.arena_bytes, "tflite_bytes": source.stat().st_size,
         "notes": list(imported.notes)})


# --------------------------------------------------------------------------- generate


@app.command(epilog="Examples: `edgejpq generate model.ejq -o firmware/`: then `make -C firmware test`; "
                    "`edgejpq generate model.ejq -o f446/ --board nucleo-f446re`: then `make -C f446 flash`")
@user_errors
def generate(
    model_file: Annotated[Path, typer.Argument(metavar="MODEL.ejq", help="QuantizedModel file.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write the C sources into.")],
    name: Annotated[Optional[str], typer.Option(help="C prefix; default: the model's name.")] = None,
    board: Annotated[Optional[str], typer.Option(
        help="Write a firmware project for this board (e.g. nucleo-f446re; an unknown name lists them all): "
             "the sources in model/ plus start-up, linker script, UART, a golden test main and a Makefile.")] = None,
    target: Annotated[Optional[str], typer.Option(
        help="With --board: target name or YAML file for the compiler flags and kernels (default: the target "
             "listing the board); its core must be the board's.")] = None,
    serial: Annotated[bool, typer.Option(
        "--serial", help="With --board: the project's main speaks the serial protocol (docs/serial-protocol.md) "
                         "for `edgejpq validate --port`, instead of running the golden vectors.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Emit the C sources: model, packed weights, the kernels used, Makefile, CMake fragment, golden test."""
    from codegen.generate import generate_sources
    from edgejpq.artifact import load_model

    if target is not None and board is None:
        raise EdgejpqError("--target selects the board project's flags and kernels: add --board")
    if serial and board is None:
        raise EdgejpqError("--serial makes a board project speak the serial protocol: add --board")
    qmodel = load_model(model_file)
    if board is not None:
        from codegen.boards import generate_board_project, generate_serial_board_project
        from edgejpq.cost.target import load_target

        make_project = generate_serial_board_project if serial else generate_board_project
        project = make_project(qmodel, board, output, name=name,
                               target=None if target is None else load_target(target))
        _summary(f"edgejpq generate → {output}", [
            ("board", project.board), ("target", project.target), ("kernels", project.kernels),
            ("name", project.name), ("files", len(project.files)), ("weight bytes", qmodel.weight_bytes),
            ("arena bytes", qmodel.layout.arena_bytes), ("model hash", qmodel.short_hash),
            ("main", "serial protocol harness" if serial else "golden-vector self-test"),
            ("build it", f"make -C {output}"), ("flash it", f"make -C {output} flash")], as_json,
            {"output": str(output), "board": project.board, "target": project.target, "name": project.name,
             "files": list(project.files), "elf": str(project.elf), "weight_bytes": qmodel.weight_bytes,
             "arena_bytes": qmodel.layout.arena_bytes, "hash": qmodel.content_hash})
        return
    result = generate_sources(qmodel, output, name=name)
    files = [Path(f).name for f in result.files]
    _summary(f"edgejpq generate → {output}", [
        ("name", result.name), ("files", len(files)), ("weight bytes", qmodel.weight_bytes),
        ("arena bytes", qmodel.layout.arena_bytes), ("model hash", qmodel.short_hash),
        ("check it", f"make -C {output} test")], as_json,
        {"output": str(output), "name": result.name, "files": files, "weight_bytes": qmodel.weight_bytes,
         "arena_bytes": qmodel.layout.arena_bytes, "hash": qmodel.content_hash})


# --------------------------------------------------------------------------- emulate


RANDOM_SAMPLES = 64


def _load_model_or_tflite(model_file: Path) -> tuple[Any, Any]:
    """A `.ejq` file, or a fully-int8 `.tflite` imported on the fly: (QuantizedModel, the import or None)."""
    if model_file.suffix.lower() == ".tflite":
        from edgejpq.tflite_import import import_tflite

        imported = import_tflite(model_file)
        return imported.model, imported
    from edgejpq.artifact import load_model

    return load_model(model_file), None


def _check_tflite_interpreter(model_file: Path, imported: Any, inputs: np.ndarray, outputs: np.ndarray,
                              rows: list[tuple[str, Any]], payload: dict[str, Any]) -> None:
    """The TFLite interpreter as a third reference: add its verdict to the summary rows and JSON."""
    from edgejpq.tflite_import import run_interpreter

    n = len(inputs)
    interpreter = run_interpreter(model_file, inputs, tensor=imported.reference_tensor)
    differ = int((interpreter != outputs.reshape(n, -1)).sum())
    rows.append(("equal to the TFLite interpreter", "yes (reference kernels, every byte)" if differ == 0
                 else f"NO: {differ} bytes differ"))
    payload["tflite_interpreter_equal"] = differ == 0
    payload["tflite_notes"] = list(imported.notes)


@app.command(epilog="Examples: `edgejpq emulate model.ejq --data fashion-mnist --limit 1000 --json`; "
                    "`edgejpq emulate model.ejq --target cortex-m4 --qemu --data fashion-mnist --limit 500`")
@user_errors
def emulate(
    model_file: Annotated[Path, typer.Argument(metavar="MODEL.ejq", help="QuantizedModel file, or a fully-int8 "
                                                                         ".tflite (imported on the fly and its "
                                                                         "interpreter added as a third reference).")],
    data: Annotated[Optional[str], typer.Option(
        help="Labelled data set; its test split is streamed through the C build. Without it: "
             f"seeded random inputs (--limit of them, default {RANDOM_SAMPLES}), no accuracy.")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Use only the first N test samples.")] = None,
    qemu: Annotated[bool, typer.Option("--qemu", help="Cross-compile for --target and run in qemu-system-arm: "
                                                      "also reports flash, RAM and instruction counts.")] = False,
    target: Annotated[Optional[str], typer.Option(
        help="With --qemu: target name or YAML file (default cortex-m4); its compiler flags, kernel set and "
             "QEMU machine are used.")] = None,
    timeout: Annotated[float, typer.Option(min=1, help="With --qemu: seconds one QEMU run may take.")] = 600.0,
    save_outputs: Annotated[Optional[Path], typer.Option(help="Save the C path's raw int8 outputs (.npy).")] = None,
    sanitize: Annotated[bool, typer.Option(help="Host build: compile with -fsanitize=address,undefined.")] = False,
    workdir: Annotated[Optional[Path], typer.Option(help="Keep the generated sources and build here.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Build the generated C (host gcc, or a Cortex-M target in QEMU), stream inputs through it, compare every byte.

    With `--qemu` the firmware runs many samples per QEMU start and the summary adds the model's
    flash (weights, kernel code, total) and RAM (arena, stack high-water mark), and exact
    instructions per layer and per inference with a cycle estimate from the target's timings.
    """
    if target is not None and not qemu:
        raise EdgejpqError("--target selects the QEMU target: add --qemu (the host build always uses the portable "
                           "kernels)")
    if sanitize and qemu:
        raise EdgejpqError("--sanitize applies to the host build only: drop it or --qemu")
    qmodel, imported = _load_model_or_tflite(model_file)
    if save_outputs is not None:
        _check_output_folder(save_outputs)
    n, inputs, labels = _stream_inputs(qmodel, data, limit)
    with tempfile.TemporaryDirectory(prefix="edgejpq-emulate-") as tmp:
        folder = workdir if workdir is not None else Path(tmp)
        with _progress() as progress:
            if qemu:
                from edgejpq.cost.target import load_target
                from edgejpq.emulate.qemu import emulate_qemu

                spec = load_target(target or "cortex-m4")
                task = progress.add_task(f"QEMU {spec.qemu.machine if spec.qemu else spec.name} inference", total=n)
                result = emulate_qemu(qmodel, inputs, folder, spec, timeout=timeout,
                                      on_progress=lambda done: progress.update(task, completed=done))
            else:
                from edgejpq.emulate.host import emulate_host

                task = progress.add_task("host C inference", total=n)
                result = emulate_host(qmodel, inputs, folder, sanitize=sanitize,
                                      on_progress=lambda done: progress.update(task, completed=done))
    if save_outputs is not None:
        from edgejpq.artifact import atomic_write_bytes

        buffer = io.BytesIO()
        np.save(buffer, result.outputs)
        atomic_write_bytes(save_outputs, buffer.getvalue())
    accuracy = None if labels is None else _accuracy(result.outputs, labels)
    mismatch = None if result.mismatch is None else str(result.mismatch)
    rows = [("model", f"{qmodel.name} ({qmodel.short_hash})"),
            ("samples", n if data is not None else f"{n} (seeded random inputs)"),
            ("bit-exact vs reference", "yes" if result.bit_exact else f"NO: {mismatch}"),
            ("accuracy (C path)", _pct(accuracy)), ("weight bytes", qmodel.weight_bytes),
            ("arena bytes", qmodel.layout.arena_bytes)]
    payload: dict[str, Any] = {
        "bit_exact": result.bit_exact, "samples": n, "accuracy": accuracy,
        "arena_bytes": qmodel.layout.arena_bytes, "weight_bytes": qmodel.weight_bytes,
        "hash": qmodel.content_hash, "mismatch": mismatch}
    if imported is not None:
        _check_tflite_interpreter(model_file, imported, inputs, result.outputs, rows, payload)
    if qemu:
        title = _qemu_summary(qmodel, spec, result, rows, payload)
    else:
        seconds = result.run_seconds
        rows.append(("throughput", f"{n / max(seconds, 1e-9):.0f} inferences/s (host)"))
        payload["inferences_per_second"] = n / max(seconds, 1e-9)
        title = f"edgejpq emulate (host gcc{', sanitizers' if sanitize else ''})"
    _summary(title, rows, as_json, payload)
    if not result.bit_exact or payload.get("tflite_interpreter_equal") is False:
        raise typer.Exit(1)


def _qemu_summary(qmodel: Any, spec: Any, result: Any, rows: list[tuple[str, Any]], payload: dict[str, Any]) -> str:
    """Per-layer table (printed) and the QEMU rows / JSON keys of `emulate --qemu`."""
    fw, sizes = result.firmware, result.sizes
    cycles = result.cycles_estimate_per_inference
    per_inference = result.instructions_per_inference
    if result.ops:
        profiled = len(result.run.counts.per_inference)
        table = Table(title=f"instructions per inference by layer ({spec.name}, mean of {profiled})",
                      title_justify="left")
        for col in ("op", "layer", "kind", "instructions", "share", "est. cycles"):
            table.add_column(col, justify="right" if col in ("instructions", "share", "est. cycles") else "left")
        for op_counts, op in zip(result.ops, qmodel.ops):
            share = op_counts.instructions / per_inference if per_inference else 0.0
            table.add_row(str(op_counts.index), op_counts.name, op.kind, f"{op_counts.instructions:,.0f}",
                          f"{100 * share:.1f}%",
                          "" if op_counts.cycles_estimate is None else f"{op_counts.cycles_estimate:,.0f}")
        console.print(table)
    lo, hi = result.instructions_min_max or (0, 0)
    rows += [
        ("target", f"{spec.name} ({spec.core}, {fw.kernels} kernels) on QEMU {spec.qemu.machine}"),
        ("instructions / inference", f"{per_inference:,.0f} (min {lo:,}, max {hi:,})" if per_inference else "n/a"),
        ("est. cycles / inference",
         "n/a (no latency.instruction_cycles)" if cycles is None
         else f"{cycles:,.0f} = {1e3 * cycles / spec.clock_hz:.3f} ms at {spec.clock_hz / 1e6:g} MHz"),
        ("flash: weights / other constants",
         f"{sizes.weight_bytes:,} / {sizes.constant_bytes - sizes.weight_bytes:,} B"),
        ("flash: kernels / model code / runtime",
         f"{sizes.kernel_code_bytes:,} / {sizes.model_code_bytes:,} / {sizes.runtime_bytes:,} B"),
        ("flash: model total", f"{sizes.flash_bytes:,} B of {spec.model_flash_budget:,} "
                               f"(whole QEMU image {sizes.firmware_flash_bytes:,} B)"),
        ("RAM: static (arena {:,}) + stack".format(qmodel.layout.arena_bytes),
         f"{sizes.static_ram_bytes:,} + {result.run.stack_bytes:,} = {result.ram_bytes:,} B of {spec.model_ram_budget:,}"),
        ("QEMU time", f"{result.run.seconds:.2f} s run, {fw.build_seconds:.2f} s build"),
    ]
    payload.update({
        "target": spec.name, "machine": spec.qemu.machine if spec.qemu else None,
        "instructions_per_inference": per_inference,
        "instructions_min_max": list(result.instructions_min_max) if result.instructions_min_max else None,
        "cycles_estimate_per_inference": cycles,
        "flash_bytes": sizes.flash_bytes, "ram_bytes": result.ram_bytes,
        "flash": {"weights": sizes.weight_bytes, "constants": sizes.constant_bytes,
                  "kernels": sizes.kernel_code_bytes, "model_code": sizes.model_code_bytes,
                  "runtime": sizes.runtime_bytes, "total": sizes.flash_bytes},
        "ram": {"arena": qmodel.layout.arena_bytes, "static": sizes.static_ram_bytes,
                "stack": result.run.stack_bytes, "total": result.ram_bytes},
        "layers": [{"op": o.name, "instructions": o.instructions, "cycles_estimate": o.cycles_estimate}
                   for o in result.ops],
    })
    return f"edgejpq emulate (QEMU {spec.qemu.machine if spec.qemu else ''}, target {spec.name})"


# --------------------------------------------------------------------------- validate


def _stream_inputs(qmodel: Any, data: Optional[str], limit: Optional[int]) -> tuple[int, np.ndarray,
                                                                                 Optional[np.ndarray]]:
    """The int8 inputs (and labels) `emulate` and `validate` stream: the data set's test split, or seeded
    random inputs without --data."""
    if data is None:
        n = limit or RANDOM_SAMPLES
        return n, np.random.default_rng(0).integers(-128, 128, size=(n, *qmodel.input_info.shape), dtype=np.int8), None
    from edgejpq.data import load_dataset
    from edgejpq.quant.integerize import quantize_input

    ds = load_dataset(data)
    n = len(ds.x_test) if limit is None else min(limit, len(ds.x_test))
    return n, quantize_input(qmodel, ds.x_test[:n]), ds.y_test[:n]


@app.command(epilog="Examples: `edgejpq validate model.ejq --port /dev/ttyACM0 --data fashion-mnist --limit 200`; "
                    "`edgejpq validate model.ejq --qemu --target cortex-m4 --data digits --json`; "
                    "`--port socket://127.0.0.1:4444` reaches any firmware whose UART is on a TCP socket")
@user_errors
def validate(
    model_file: Annotated[Path, typer.Argument(metavar="MODEL.ejq", help="QuantizedModel file the firmware was built "
                                                                         "from, or the fully-int8 .tflite it was "
                                                                         "imported from (its interpreter is then a "
                                                                         "third reference).")],
    port: Annotated[Optional[str], typer.Option(help="Serial port or pyserial URL (/dev/ttyACM0, COM3, "
                                                     "socket://HOST:PORT) of a board running the serial firmware.")] = None,
    baud: Annotated[int, typer.Option(min=1, help="Baud rate of --port (the firmware's is 115200).")] = 115200,
    data: Annotated[Optional[str], typer.Option(
        help="Labelled data set whose test split is streamed through the firmware. Without it: seeded random "
             f"inputs (--limit of them, default {RANDOM_SAMPLES}), no accuracy.")] = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Use only the first N test samples.")] = None,
    qemu: Annotated[bool, typer.Option("--qemu", help="Build the serial firmware for --target, run it in "
                                                      "qemu-system-arm with its UART on a loopback socket, validate "
                                                      "through it and stop QEMU.")] = False,
    target: Annotated[Optional[str], typer.Option(help="With --qemu: target name or YAML file (default cortex-m4).")] = None,
    timeout: Annotated[float, typer.Option(min=0.01, help="Seconds an answer may take (plus its bytes' time on "
                                                          "the wire) before the request is resent.")] = 2.0,
    retries: Annotated[int, typer.Option(min=0, help="Resends of a request whose answer is late or damaged.")] = 3,
    workdir: Annotated[Optional[Path], typer.Option(help="With --qemu: keep the generated sources and build here.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a board's (or QEMU's) firmware over serial: its HELLO must name this model; every output byte of
    the data set must equal the numpy reference. Reports bit-exactness, accuracy and latency.

    Latency is the core's cycle counter (DWT CYCCNT) where the firmware has one running; QEMU has none,
    so `--qemu` reports exact instructions per inference (instruction-count plugin) instead. The
    protocol is described in docs/serial-protocol.md.
    """
    from edgejpq.serial.link import SerialLink
    from edgejpq.serial.validate import validate_link, validate_qemu

    if (port is None) == (not qemu):
        raise EdgejpqError("give either --port PORT (a board or socket://HOST:PORT) or --qemu (with --target)")
    if target is not None and not qemu:
        raise EdgejpqError("--target selects the firmware to build for QEMU: add --qemu")
    qmodel, imported = _load_model_or_tflite(model_file)
    n, inputs, labels = _stream_inputs(qmodel, data, limit)
    spec = None
    with tempfile.TemporaryDirectory(prefix="edgejpq-validate-") as tmp, _progress() as progress:
        if qemu:
            from edgejpq.cost.target import load_target

            spec = load_target(target or "cortex-m4")
            task = progress.add_task(f"validating on QEMU {spec.qemu.machine if spec.qemu else spec.name}", total=n)
            result = validate_qemu(qmodel, inputs, workdir if workdir is not None else Path(tmp), spec, labels,
                                   timeout=timeout, retries=retries,
                                   on_progress=lambda done: progress.update(task, completed=done))
        else:
            task = progress.add_task(f"validating on {port}", total=n)
            with SerialLink.open(str(port), baud=baud, timeout=timeout, retries=retries) as link:
                result = validate_link(link, qmodel, inputs, labels,
                                       on_progress=lambda done: progress.update(task, completed=done))
    hello = result.hello
    cycles = None if result.cycles is None else float(result.cycles.mean())
    latency_ms = None if cycles is None or not hello.clock_hz else 1e3 * cycles / hello.clock_hz
    round_trip_ms = 1e3 * float(result.round_trip_seconds.mean()) if n else None
    stats = result.stats
    mismatch = None if result.mismatch is None else str(result.mismatch)
    if cycles is not None:
        latency_text = f"{cycles:,.0f} cycles = {latency_ms:.3f} ms at {hello.clock_hz / 1e6:g} MHz (DWT CYCCNT)"
    else:
        latency_text = "n/a: the firmware has no running cycle counter" + (" (QEMU has none)" if qemu else "")
    rows: list[tuple[str, Any]] = [
        ("model", f"{qmodel.name} ({qmodel.short_hash})"),
        ("firmware", f"{hello.target} on {hello.board}, edgejpq {hello.firmware}, protocol {hello.version}"),
        ("port", result.port),
        ("samples", n if data is not None else f"{n} (seeded random inputs)"),
        ("bit-exact vs reference", "yes" if result.bit_exact else
         f"NO: {result.mismatched_samples} of {n} samples differ; first: {mismatch}"),
        ("accuracy (firmware)", _pct(result.accuracy)),
        ("latency / inference", latency_text)]
    if result.instructions_per_inference is not None:
        rows.append(("instructions / inference", f"{result.instructions_per_inference:,.0f} (QEMU plugin, exact)"))
    estimate = result.cycles_estimate_per_inference
    if estimate is not None and spec is not None:
        rows.append(("est. cycles / inference", f"{estimate:,.0f} = {1e3 * estimate / spec.clock_hz:.3f} ms at "
                                                f"{spec.clock_hz / 1e6:g} MHz (instruction timings of {spec.name})"))
    rows += [("round trip / sample", "n/a" if round_trip_ms is None else
              f"{round_trip_ms:.2f} ms ({n / max(result.seconds, 1e-9):.0f} samples/s, wire time included)"),
             ("link", f"{stats['requests']} requests, {stats['resends']} resent, {stats['timeouts']} timeouts, "
                      f"{stats['damaged_reports']} damaged frames reported, {stats['bad_frames']} dropped")]
    payload: dict[str, Any] = {
        "bit_exact": result.bit_exact, "samples": n, "accuracy": result.accuracy,
        "mismatched_samples": result.mismatched_samples, "mismatch": mismatch, "hash": qmodel.content_hash,
        "port": result.port, "target": hello.target, "board": hello.board,
        "clock_hz": hello.clock_hz, "cycles_per_inference": cycles, "latency_ms_per_inference": latency_ms,
        "instructions_per_inference": result.instructions_per_inference,
        "cycles_estimate_per_inference": estimate, "round_trip_ms_per_sample": round_trip_ms,
        "samples_per_second": n / max(result.seconds, 1e-9), "link": stats}
    if imported is not None:
        _check_tflite_interpreter(model_file, imported, inputs, result.outputs, rows, payload)
    title = f"edgejpq validate ({'QEMU ' + spec.qemu.machine if spec is not None and spec.qemu else port})"
    _summary(title, rows, as_json, payload)
    if not result.bit_exact or payload.get("tflite_interpreter_equal") is False:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- flash


@app.command(epilog="Example: `edgejpq flash f446/build/firmware.elf --board nucleo-f446re --port /dev/ttyUSB0` "
                    "(BOOT0 high, USB-serial adapter on USART1 PA9/PA10, then reset)")
@user_errors
def flash(
    firmware: Annotated[Path, typer.Argument(metavar="FIRMWARE", help="The .elf or .bin to program.")],
    board: Annotated[str, typer.Option(help="Board name (see `edgejpq generate --help`), e.g. nucleo-f446re.")],
    port: Annotated[str, typer.Option(help="Serial port (or pyserial URL) wired to the chip's bootloader USART.")],
    baud: Annotated[int, typer.Option(min=1200, help="Baud rate (the bootloader detects it from the 0x7F sync).")] = 115200,
    verify: Annotated[bool, typer.Option(help="Read the flash back and compare.")] = True,
    go: Annotated[bool, typer.Option(help="Start the firmware when done.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Program an STM32 board through its ROM bootloader over a UART (ST AN3155): sync, chip ID check,
    erase, write, read back and verify, go. Uses the `stm32loader` library (`pip install 'edgejpq[flash]'`).

    NUCLEO boards flash more simply through their ST-LINK with OpenOCD: `make flash` in a project from
    `edgejpq generate --board`; this command is for a chip reached only over a UART.
    """
    from codegen.boards import load_board
    from edgejpq.serial.flash import firmware_image, flash_stm32, open_bootloader_port

    spec = load_board(board)
    if not spec.chip.upper().startswith("STM32"):
        raise EdgejpqError(f"board {board} has a {spec.chip}: only STM32 boards flash through the ROM bootloader; "
                           f"use its debug probe (OpenOCD target {spec.openocd_target})")
    image = firmware_image(firmware)
    if len(image) > spec.memory.flash.bytes:
        raise EdgejpqError(f"{firmware}: {len(image):,} bytes do not fit the {spec.memory.flash.bytes:,}-byte flash "
                           f"of {spec.chip}")
    connection = open_bootloader_port(port, baud)
    try:
        with _progress() as progress:
            task = progress.add_task("connecting", total=len(image))

            def on_progress(step: str, done: int, total: int) -> None:
                progress.update(task, description=step, completed=done, total=total)

            result = flash_stm32(image, connection, port=port, chip=spec.chip, address=spec.memory.flash.base,
                                 verify=verify, start=go, on_progress=on_progress)
    finally:
        connection.close()
    _summary(f"edgejpq flash → {board}", [
        ("chip", f"{spec.chip} (product ID 0x{result.chip_id:03X}, bootloader {result.bootloader_version >> 4}."
                 f"{result.bootloader_version & 0xF})"),
        ("written", f"{result.bytes_written:,} bytes at 0x{result.address:08X}"),
        ("verified", "yes" if result.verified else "no (--no-verify)"),
        ("started", "yes" if result.started else "no (--no-go)"), ("time", f"{result.seconds:.1f} s")], as_json,
        {"board": board, "port": port, "chip_id": result.chip_id, "bytes_written": result.bytes_written,
         "address": result.address, "verified": result.verified, "started": result.started,
         "seconds": round(result.seconds, 2)})


# --------------------------------------------------------------------------- inspect


@app.command(epilog="Example: `edgejpq inspect model.ejq`")
@user_errors
def inspect(
    model_file: Annotated[Path, typer.Argument(metavar="MODEL.ejq", help="QuantizedModel file.")],
    as_json: JsonOpt = False,
) -> None:
    """Validate a `.ejq` file and print its layers: shapes, bit-widths, bytes, arena placement."""
    from edgejpq.artifact import WEIGHTED_OPS, load_model

    qmodel = load_model(model_file)
    table = Table(title=f"{qmodel.name} ({qmodel.short_hash})")
    for col in ("op", "kind", "output shape", "bits (channels)", "weight bytes", "arena offset"):
        table.add_column(col)
    layers = []
    for op in qmodel.ops:
        out = qmodel.tensors[op.output]
        bits = ""
        wbytes = 0
        if isinstance(op, WEIGHTED_OPS):
            bits = " ".join(f"w{r.bits}×{r.count}" for r in op.runs)
            wbytes = int(qmodel.arrays[f"{op.name}.weights"].size)
        place = qmodel.layout.placements[op.output]
        table.add_row(op.name, op.kind, "×".join(map(str, out.shape)), bits, str(wbytes) if wbytes else "",
                      str(place.offset) if place.region == "arena" else place.region)
        layers.append({"op": op.name, "kind": op.kind, "shape": list(out.shape), "bits": bits,
                       "weight_bytes": wbytes})
    console.print(table)
    _summary("totals", [("weight bytes", qmodel.weight_bytes), ("constant bytes", qmodel.constant_bytes),
                        ("arena bytes", qmodel.layout.arena_bytes), ("hash", qmodel.content_hash)], as_json,
             {"layers": layers, "weight_bytes": qmodel.weight_bytes, "arena_bytes": qmodel.layout.arena_bytes,
              "hash": qmodel.content_hash})


# --------------------------------------------------------------------------- targets and search


def parse_size(text: str, option: str) -> int:
    """Bytes from `65536`, `64K`, `64KiB`, `1.5MiB`, `64kB` (kB/MB are decimal, K/KiB binary)."""
    import re

    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(B|K|KiB|KB|kB|M|MiB|MB)?\s*", text)
    if not match:
        raise EdgejpqError(f"{option} {text!r}: expected a size such as 65536, 64KiB or 1.5MiB")
    unit = match.group(2) or "B"
    factor = {"B": 1, "K": 1024, "KiB": 1024, "KB": 1000, "kB": 1000, "M": 1 << 20, "MiB": 1 << 20, "MB": 10**6}
    return int(float(match.group(1)) * factor[unit])


@app.command(epilog="Example: `edgejpq targets`; `edgejpq targets --json`")
@user_errors
def targets(as_json: JsonOpt = False) -> None:
    """List the shipped targets: core, clock, flash and RAM, board, QEMU machine, latency table status."""
    from edgejpq.cost.target import list_targets

    specs = list_targets()
    table = Table(title="edgejpq targets (use --target NAME, or --target path/to/my.yaml)")
    for column in ("name", "core", "clock", "flash", "RAM", "kernels", "QEMU", "board", "latency table"):
        table.add_column(column)
    rows = []
    for t in specs:
        board = t.boards[0].vendor_board if t.boards else ""
        qemu = t.qemu.machine if t.qemu else "none"
        table.add_row(t.name, t.core, f"{t.clock_hz / 1e6:.0f} MHz", f"{t.memory.flash_bytes // 1024} KiB",
                      f"{t.memory.ram_bytes // 1024} KiB", t.kernels, qemu, board,
                      "calibrated" if t.latency.calibrated else "initial estimate")
        rows.append({"name": t.name, "core": t.core, "clock_hz": t.clock_hz, "flash_bytes": t.memory.flash_bytes,
                     "ram_bytes": t.memory.ram_bytes, "qemu": qemu, "board": board,
                     "calibrated": t.latency.calibrated})
    console.print(table)
    if as_json:
        print(json.dumps({"targets": rows}, sort_keys=True))


def _code_rows(result: Any, config: Any) -> list[tuple[str, str]]:
    """Summary rows on the code: the kernel variants the plan links, and a note when code takes most of the flash."""
    from edgejpq.artifact import Conv2D, FullyConnected
    from edgejpq.cost.model import kernel_family, op_kind

    variants: dict[str, set[int]] = {}
    for op in result.model.ops:
        if isinstance(op, (Conv2D, FullyConnected)):
            variants.setdefault(kernel_family(op_kind(op)), set()).update(run.bits for run in op.runs)
    linked = "; ".join(f"{family} {','.join(map(str, sorted(bits)))}-bit" for family, bits in sorted(variants.items()))
    if result.variant_exchanges:
        linked += f" ({result.variant_exchanges} exchange{'s' if result.variant_exchanges > 1 else ''} after the search)"
    rows = [("kernel variants", linked)]
    cost = result.cost
    if config.method != "uniform" and len(config.choices) > 1 and 2 * cost.code_bytes > cost.flash_bytes:
        fit = ("the search and the exchange after it keep the variants that fit" if config.budgets.flash_bytes
               else "without --flash no budget counts that code")
        rows.append(("note", f"code is {100 * cost.code_bytes / cost.flash_bytes:.0f}% of the flash: every bit-width "
                             f"a kernel family uses links its kernel (the target file's code_size); {fit}, and "
                             f"--bits 4 allows one width only"))
    return rows


def bit_widths(text: Optional[str]) -> tuple[int, ...]:
    """`--bits 8` or `--bits 2,4,8`: the bit-widths, increasing ("" or None: none given)."""
    if not text:
        return ()
    try:
        return tuple(sorted({int(part) for part in text.split(",")}))
    except ValueError:
        raise EdgejpqError(f"--bits {text!r}: expected bit-widths such as 8 or 2,4,8") from None


@app.command(epilog="Examples: `edgejpq search --target cortex-m4 --model zoo:resnet8 --data fashion-mnist "
                    "--flash 48KiB -o runs/r8`; `edgejpq search --model float.pt --data digits "
                    "--strength 1 -o runs/s1`; `edgejpq search --method uniform --bits 4 ...` (baseline); "
                    "`edgejpq search ... --flash 32KiB,48KiB,64KiB -o runs/sweep` (one run per budget + pareto.png)")
@user_errors
def search(
    model: Annotated[str, typer.Option(help="Float checkpoint (.pt from `edgejpq train`) or a model spec "
                                            "(pre-trained here for --pretrain-epochs).")],
    data: Annotated[str, typer.Option(help="fashion-mnist | digits | mnist1d | npz:PATH | idx:FOLDER | imagefolder:PATH")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder (plan.json, model.ejq, report.md, plots).")],
    target: Annotated[str, typer.Option(help="Target name (see `edgejpq targets`) or a YAML path.")] = "cortex-m4",
    flash: Annotated[Optional[str], typer.Option(help="Flash budget for the model (weights + constants + code), e.g. "
                                                     "64KiB; a list such as 32KiB,48KiB,64KiB sweeps it.")] = None,
    weights: Annotated[Optional[str], typer.Option(help=(
        "Budget for the packed weights alone, e.g. 6KiB (a list sweeps). Kernel code does not count against it: "
        "give --flash too when the code must fit as well."))] = None,
    ram: Annotated[Optional[str], typer.Option(help="RAM budget for the activation arena, e.g. 32KiB (a list sweeps).")] = None,
    latency_ms: Annotated[Optional[str], typer.Option(help="Latency budget in ms at the target clock (a list sweeps).")] = None,
    strength: Annotated[str, typer.Option(help="Loss = task + strength × cost / cost of the 8-bit model (a list such "
                                               "as 0.5,1,2 sweeps).")] = "0",
    objective: Annotated[str, typer.Option(help="The cost --strength scales: flash | weights | ram | latency.")] = "flash",
    method: Annotated[str, typer.Option(help="joint | uniform | two-stage")] = "joint",
    bits: Annotated[Optional[str], typer.Option(
        help="--method uniform: its bit-width (default 8). joint and two-stage: the bit-widths a channel may take "
             "(default 2,4,8); each one a kernel family uses links its kernel (the target file's code_size), and the "
             "search drops the ones it cannot afford.")] = None,
    epochs: Annotated[int, typer.Option(min=0, help="Search epochs (uniform: QAT epochs).")] = 2,
    finetune_epochs: Annotated[int, typer.Option(min=0, help="Quantization-aware fine-tuning epochs.")] = 6,
    pretrain_epochs: Annotated[int, typer.Option(min=0, help="Float epochs when --model is a spec.")] = 3,
    lr: Annotated[float, typer.Option(help="Adam learning rate of the weights (search, fine-tuning, QAT).")] = 1e-3,
    distill: Annotated[float, typer.Option(min=0.0, max=1.0, help=(
        "Share of the task loss taken by distillation from the float model (KL to its softmax); the rest is "
        "cross entropy. 0 trains on the labels only."))] = 0.0,
    learn_steps: Annotated[bool, typer.Option(help=(
        "Fine-tuning (and uniform QAT) trains every channel's weight step (LSQ), from its least-error one; "
        "--no-learn-steps keeps the least-error steps of the current weights."))] = True,
    batch_norm: Annotated[bool, typer.Option(help=(
        "Fine-tuning (and uniform QAT) puts a batch norm back after every convolution: trained on each batch's "
        "statistics, quantized folded with the running ones (Jacob et al., 2018), at about twice the time per "
        "epoch. Off by default: the folded convolutions train as they are."))] = False,
    pin_input: Annotated[bool, typer.Option(help=(
        "joint and two-stage keep the layers that read the model's input at the widest bit-width of --bits "
        "(their channels' pruning still searched), as quantization practice keeps the first layer wide. It buys "
        "accuracy per weight byte, but when no other layer uses that width its kernel's code comes out of the "
        "flash budget. Off by default: the search decides their width like the rest."))] = False,
    trial_batches: Annotated[int, typer.Option(min=0, help=(
        "Weight-training steps each candidate plan of the kernel-variant exchange gets before it is judged, so "
        "pruned channels' neighbours can adapt (0: judge the searched weights as they are)."))] = 100,
    batch_size: Annotated[int, typer.Option(min=1)] = 128,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto")] = "auto",
    seed: int = 0,
    resume: Annotated[bool, typer.Option(help="Reuse the run folder's float model and search checkpoint.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Joint pruning + per-channel mixed-precision search for a target, repaired to the budgets,
    fine-tuned with quantization-aware training and exported to `model.ejq`."""
    import torch

    from edgejpq.cost.target import load_target
    from edgejpq.data import load_dataset
    from edgejpq.graph import build_float_graph
    from edgejpq.search.report import write_report
    from edgejpq.search.run import METRICS, SearchConfig, run_search
    from edgejpq.search.sweep import pareto_point, sweep_points, write_sweep
    from edgejpq.train import save_float_checkpoint, train_float

    if objective not in METRICS:
        raise EdgejpqError(f"--objective {objective!r}: use {', '.join(METRICS[:-1])} or {METRICS[-1]}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise EdgejpqError("--device cuda: no CUDA device is available here (use cpu or auto)")
    spec = load_target(target)
    points = sweep_points(flash, weights, ram, latency_ms, strength, parse_size)
    # a bad method, bit-width or missing budget is refused here, before any data is loaded or trained
    widths = bit_widths(bits)
    if method == "uniform" and len(widths) > 1:
        raise EdgejpqError(f"--bits {bits}: --method uniform takes one bit-width")
    configs = [SearchConfig(method=method, bits=widths[0] if method == "uniform" and widths else 8,  # type: ignore[arg-type]
                            choices=widths if method != "uniform" and widths else (2, 4, 8), search_epochs=epochs,
                            finetune_epochs=finetune_epochs, strength=point.strength, objective=objective,  # type: ignore[arg-type]
                            budgets=point.budgets, lr=lr, distill=distill, learn_steps=learn_steps,
                            batch_norm=batch_norm, pin_input=pin_input, trial_batches=trial_batches,
                            batch_size=batch_size, seed=seed, device=device)
               for point in points]
    if output.exists() and not output.is_dir():
        raise EdgejpqError(f"{output}: exists and is not a folder")
    output.mkdir(parents=True, exist_ok=True)
    _check_output_folder(output / "plan.json")
    ds = load_dataset(data)
    float_path = output / "float.pt"
    if model.endswith(".pt"):
        net, model_spec = _load_model_for_data(model, ds.input_shape, ds.num_classes)
    elif resume and float_path.exists():
        net, model_spec = _load_model_for_data(str(float_path), ds.input_shape, ds.num_classes)
    else:
        net, model_spec = _load_model_for_data(model, ds.input_shape, ds.num_classes, seed=seed)
        if pretrain_epochs:
            with _progress() as progress:
                task = progress.add_task(f"float pre-training {model}", total=pretrain_epochs)
                history = train_float(net, ds, epochs=pretrain_epochs, seed=seed,
                                      on_epoch=lambda e, loss, acc: progress.update(
                                          task, advance=1, description=f"float epoch {e} test {100 * acc:.2f}%"))
            save_float_checkpoint(float_path, net, model_spec=model_spec, data_spec=data, input_shape=ds.input_shape,
                                  num_classes=ds.num_classes, history=history)
    pareto: list[dict[str, Any]] = []
    for point, config in zip(points, configs):
        run_dir = output / point.label if point.label else output
        budgets = point.budgets
        graph = build_float_graph(copy.deepcopy(net), ds.input_shape)
        with _progress() as progress:
            task = progress.add_task(f"{method} search{' ' + point.label if point.label else ''}",
                                     total=epochs + finetune_epochs)

            def on_epoch(record: Any, task: Any = task, progress: Any = progress, budgets: Any = budgets) -> None:
                budget_text = " ".join(f"{m} {v:.0f}" for m, v in budgets.items())
                progress.update(task, advance=1, description=(
                    f"{record.stage} {record.epoch}: loss {record.loss:.3f} acc {100 * record.test_accuracy:.1f}% "
                    f"flash {record.flash_bytes / 1024:.1f}K ram {record.ram_bytes / 1024:.1f}K "
                    f"{record.latency_ms:.2f} ms {('[budgets ' + budget_text + ']') if budget_text else ''}"))

            run_dir.mkdir(parents=True, exist_ok=True)
            result = run_search(graph, ds, spec, config, on_epoch=on_epoch,
                                checkpoint=run_dir / "search_checkpoint.pt", resume=resume)
        header = {"model": model_spec, "data": data, "target": spec.name, "method": method,
                  "budgets": {k: v for k, v in vars(budgets).items() if v is not None}, "strength": point.strength,
                  "epochs": epochs, "finetune_epochs": finetune_epochs, "distill": distill, "learn_steps": learn_steps,
                  "batch_norm": batch_norm, "pin_input": pin_input, "trial_batches": trial_batches, "device": device,
                  "seed": seed}
        summary = write_report(run_dir, result, spec, header)
        pareto.append(pareto_point(point, summary, method))
    if len(points) == 1:
        cost = result.cost
        _summary(f"edgejpq search ({method}) → {output}", [
            ("target", f"{spec.name} ({spec.clock_hz / 1e6:.0f} MHz)"),
            ("flash", f"{cost.flash_bytes} B (weights {cost.weight_bytes}, constants {cost.constant_bytes}, "
                      f"code {cost.code_bytes})" + (f" / budget {budgets.flash_bytes}" if budgets.flash_bytes else "")
                      + (f" / weights budget {budgets.weight_bytes}" if budgets.weight_bytes else "")),
            ("RAM (arena)", f"{cost.arena_bytes} B" + (f" / budget {budgets.ram_bytes}" if budgets.ram_bytes else "")),
            ("latency", f"{cost.latency_ms:.3f} ms" + (f" / budget {budgets.latency_ms}" if budgets.latency_ms else "")),
            ("accuracy float / fake-quant / integer",
             f"{_pct(result.accuracy_float)} / {_pct(result.accuracy_fake_quant)} / {_pct(result.accuracy_integer)}"),
            *_code_rows(result, config),
            ("wall time", f"{result.seconds:.0f} s"), ("files", "plan.json model.ejq report.md training.png")],
            as_json, summary)
        return
    write_sweep(output, pareto, f"{model_spec} on {data}, {spec.name} ({method})")
    table = Table(title=f"edgejpq search sweep ({method}) → {output}/", title_justify="left")
    for column in ("run", "weight B", "flash B", "arena B", "latency ms", "integer acc.", "seconds"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for p in pareto:
        table.add_row(p["label"], str(p["weight_bytes"]), str(p["flash_bytes"]), str(p["arena_bytes"]),
                      f"{p['latency_ms']:.3f}", _pct(p["accuracy"]), f"{p['seconds']:.0f}")
    console.print(table)
    console.print(f"files: {output}/pareto.png, {output}/sweep.json, one run folder per point")
    if as_json:
        print(json.dumps({"sweep": pareto, "model": model_spec, "data": data, "target": spec.name,
                          "method": method}, sort_keys=True))


# --------------------------------------------------------------------------- calibrate


@app.command(epilog="Examples: `edgejpq calibrate --target cortex-m4` (writes ./cortex-m4.yaml; then "
                    "`--target ./cortex-m4.yaml` uses it); `edgejpq calibrate --target my.yaml -o my.yaml --quick --json`; "
                    "`edgejpq calibrate --target cortex-m7 --code-size-only`")
@user_errors
def calibrate(
    target: Annotated[str, typer.Option(help="Target name (see `edgejpq targets`) or a YAML path; it needs a QEMU "
                                             "machine.")] = "cortex-m4",
    output: Annotated[Optional[Path], typer.Option(
        "-o", "--output", help="Target file to write (default: ./TARGET.yaml). Use it with `--target PATH`.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="A small grid of shapes (about 65 kernel runs instead of "
                                                        "160): a first look, a looser fit.")] = False,
    code_size_only: Annotated[bool, typer.Option("--code-size-only", help="Measure only the code size (links, no "
                                                                          "QEMU runs: a minute); keep the latency "
                                                                          "table.")] = False,
    workers: Annotated[int, typer.Option(min=1, help="QEMU builds and runs in parallel.")] = 2,
    holdout: Annotated[bool, typer.Option("--holdout", help="Then measure the hold-out shapes (in neither grid) and "
                                                            "report the written table's error on them.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Measure the target's code size and its latency table: every kernel × bit-width, linked and run in QEMU.

    Code size: every kernel × bit-width is linked as a one-layer model with the target's compiler
    flags and kernel set; a kernel costs its object's linked bytes, and the model code (parameter
    structs, run tables, calls) is fitted per layer and per weight run. Latency: each kernel runs
    alone over a grid of shapes (checked bit-exact); exact instruction counts become cycles with the
    target's `latency.instruction_cycles`; a least-squares fit gives cycles per MAC and the
    overheads. The target's file is written to `-o` with the measured `code_size:` and fitted
    `latency:` blocks and their provenance (date, edgejpq, QEMU and compiler versions, fit error),
    never into the installed package: pass `--target` that file to search with it, or copy the
    blocks into `targets/NAME.yaml` in a checkout to ship them.
    """
    from edgejpq.calibrate import calibrate_target, check_calibratable, fit_summary
    from edgejpq.cost.target import load_target

    spec = load_target(target)
    check_calibratable(spec)  # a QEMU machine and instruction timings, else a one-line error
    if code_size_only and (quick or holdout):
        raise EdgejpqError("--code-size-only measures no latency: drop --quick and --holdout")
    output = output if output is not None else Path(f"{spec.name}.yaml")
    _check_output_folder(output)
    with _progress() as progress:
        task = progress.add_task(f"linking and measuring kernels for {spec.name}", total=None)
        result = calibrate_target(
            spec, output, quick=quick, latency=not code_size_only, workers=workers,
            on_start=lambda total: progress.update(task, total=total),
            on_done=lambda label: progress.update(task, advance=1, description=label))
    code = result.code
    table = Table(title=f"measured code size for {spec.name} ({spec.kernels} kernels)", title_justify="left")
    for col in ("kernel", "bytes"):
        table.add_column(col, justify="left" if col == "kernel" else "right")
    for name, size in code.per_kernel_bytes.items():
        table.add_row(name, f"{size:,}")
    for name, size in code.shared_bytes.items():
        users = [kernel for kernel, shares in code.kernel_shares.items() if name in shares]
        table.add_row(f"{name} (shared by {len(users)} kernels, linked once)", f"{size:,}")
    console.print(table)
    code_row = ("code size", f"kernels {min(code.per_kernel_bytes.values()):,}–{code.default_kernel_bytes:,} B; "
                             f"model code {code.base_bytes} + {code.per_layer_bytes} per layer + "
                             f"{code.per_weight_run_bytes} per weight run (largest miss {code.max_model_code_error} B)")
    code_payload = {"code_size": {"base_bytes": code.base_bytes, "per_layer_bytes": code.per_layer_bytes,
                                  "per_weight_run_bytes": code.per_weight_run_bytes,
                                  "per_kernel_bytes": code.per_kernel_bytes,
                                  "shared_bytes": code.shared_bytes, "kernel_shares": code.kernel_shares,
                                  "max_model_code_error": code.max_model_code_error}}
    head = [("target", f"{spec.name} ({spec.core}) on QEMU {spec.qemu.machine}")]  # type: ignore[union-attr]
    tail = [("emulator / compiler", f"{result.emulator} / {result.compiler}"),
            ("wall time", f"{result.seconds:.1f} s"), ("use it", f"--target {output}")]
    base_payload = {"target": spec.name, "output": str(output), "grid": result.grid, "seconds": round(result.seconds, 2)}
    fit = result.fit
    if fit is None:
        _summary(f"edgejpq calibrate → {output}", [*head, code_row, ("latency table", "kept as it was"), *tail],
                 as_json, {**base_payload, **code_payload})
        return
    rows = fit_summary(fit, result.measurements)
    table = Table(title=f"fitted latency table for {spec.name} ({spec.kernels} kernels)", title_justify="left")
    for col in ("kind", "bits", "cycles / MAC (element)", "measured", "max fit error"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    for row in rows:
        per = row.get("cycles_per_mac", row.get("cycles_per_element"))
        table.add_row(str(row["kind"]), str(row["bits"] or "-"), f"{per:.3f}", str(row["measurements"]),
                      f"{100 * float(row['max_relative_error']):.1f}%")  # type: ignore[arg-type]
    console.print(table)
    holdout_errors: dict[str, float] = {}
    if holdout:
        import tempfile

        from edgejpq.calibrate import holdout_cases, measure_cases

        with tempfile.TemporaryDirectory(prefix="edgejpq-holdout-") as tmp:
            for m in measure_cases(holdout_cases(), result.target, Path(tmp), workers=workers):
                holdout_errors[m.case.label] = fit.predict(m.case) / m.cycles - 1.0
    holdout_rows = ([("hold-out error", f"largest {100 * max(abs(e) for e in holdout_errors.values()):.1f}%, mean "
                                        f"{100 * sum(abs(e) for e in holdout_errors.values()) / len(holdout_errors):.1f}% "
                                        f"over {len(holdout_errors)} shapes in neither grid")]
                    if holdout_errors else [])
    _summary(f"edgejpq calibrate → {output}", [
        *head,
        ("kernel runs", f"{len(result.measurements)} ({result.grid} grid), all bit-exact"),
        ("overheads (cycles)", f"per call {fit.per_layer_overhead_cycles:.0f}, per output value "
                               + ", ".join(f"{kind} {fit.kernel_quantity_cycles(kind, 'value'):.1f}"
                                           for kind in ("conv2d", "pointwise_conv2d", "depthwise_conv2d"))),
        ("largest fit error", f"{100 * fit.max_relative_error:.1f}%"),
        *holdout_rows, code_row, *tail], as_json,
        {**base_payload, **code_payload, "measurements": len(result.measurements),
         "max_relative_error": fit.max_relative_error,
         "per_layer_overhead_cycles": fit.per_layer_overhead_cycles,
         "per_output_pixel_overhead_cycles": fit.per_output_pixel_overhead_cycles,
         "per_output_channel_overhead_cycles": fit.per_output_channel_overhead_cycles,
         "per_input_element_cycles": fit.per_input_element_cycles,
         "elementwise_cycles_per_element": fit.elementwise_cycles_per_element,
         "cycles_per_mac": fit.cycles_per_mac_table, "kernel_cycles": fit.kernel_cycles, "kinds": rows,
         "holdout_relative_errors": holdout_errors or None})


@app.callback(invoke_without_command=True)
def _root(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False) -> None:
    if version:
        print(f"edgejpq {__version__}")
        raise typer.Exit(0)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
