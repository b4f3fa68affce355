"""`edgejpq calibrate`: the latency fit, the calibrated target file and the command.

The fit must recover known coefficients exactly from measurements the cost model's own formula
made; a `--quick` calibration in QEMU must write a target file that load_target accepts, that
says it is calibrated and how, whose numbers the cost model reads back exactly, and whose
predictions stay within HOLDOUT_TOLERANCE of fresh QEMU measurements on shapes outside the grid;
a target with no QEMU machine is refused in one line.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from edgejpq.calibrate import (BITS, ELEMENTWISE, WEIGHTED_KINDS, KernelMeasurement, LatencyFit, calibration_grid,
                               compiler_version, fit_latency, holdout_cases, kernel_model, measure_cases, quick_grid)
from edgejpq.cli import app
from edgejpq.cost.model import kernel_names, model_cost
from edgejpq.cost.target import CHANNEL_KINDS, GROUPED_KINDS, KERNEL_QUANTITIES, load_target
from edgejpq.resources import targets_dir

# |predicted / measured cycles - 1| on shapes in neither grid (edgejpq.calibrate.holdout_cases), for a
# --quick table: every shape within 25%, their mean within 12.5% (the full grid fits tighter).
HOLDOUT_TOLERANCE = 0.25
TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-nm", "qemu-system-arm", "cc")


def _known_fit() -> LatencyFit:
    table = {kind: {f"w{b}a8": 0.5 + 0.1 * i + 0.05 * b for b in BITS} for i, kind in enumerate(WEIGHTED_KINDS)}
    kernel = {kind: {q: 5.0 + 3 * i + 0.5 * j for j, q in enumerate(quantities)}
              for i, (kind, quantities) in enumerate(KERNEL_QUANTITIES.items())}
    # the shared per-pixel and per-output-value overheads are not fitted (per kind in kernel_cycles instead)
    return LatencyFit(cycles_per_mac_table=table, per_layer_overhead_cycles=412.0,
                      per_output_pixel_overhead_cycles=0.0, per_output_channel_overhead_cycles=0.0,
                      per_input_element_cycles={k: 1.5 + i for i, k in enumerate(WEIGHTED_KINDS)},
                      per_channel_cycles={k: 40.0 + 9 * i for i, k in enumerate(CHANNEL_KINDS)},
                      ungrouped_cycles_per_mac={k: 4.0 + i for i, k in enumerate(GROUPED_KINDS)},
                      sub_byte_output_value_cycles={"w4a8": 6.5, "w2a8": 11.0}, per_window_row_cycles=17.0,
                      per_gathered_input_element_cycles=2.75,
                      elementwise_cycles_per_element={k: 3.0 + 7 * i for i, k in enumerate(ELEMENTWISE)},
                      kernel_cycles=kernel)


@pytest.mark.unit
@pytest.mark.parametrize("grid", [calibration_grid, quick_grid], ids=["full", "quick"])
@pytest.mark.parametrize("kernels", ["dsp", "portable"])
def test_fit_recovers_known_coefficients_exactly(grid, kernels: str) -> None:
    truth = _known_fit()
    cases = [replace(case, kernels=kernels) for case in grid()]  # the kernel set changes what is counted
    measured = [KernelMeasurement(case, truth.predict(case) / 1.5, truth.predict(case), ()) for case in cases]
    fit = fit_latency(measured)
    assert fit.max_relative_error < 1e-9
    for kind in WEIGHTED_KINDS:
        for bits in BITS:
            assert fit.cycles_per_mac(kind, bits) == pytest.approx(truth.cycles_per_mac(kind, bits), rel=1e-7)
        assert fit.input_element_cycles(kind) == pytest.approx(truth.input_element_cycles(kind), rel=1e-7)
        assert fit.channel_cycles(kind) == pytest.approx(truth.channel_cycles(kind), rel=1e-7)
        assert fit.ungrouped_cycles(kind) == pytest.approx(truth.ungrouped_cycles(kind), rel=1e-7)
    for kind in ELEMENTWISE:
        assert fit.elementwise_cycles(kind) == pytest.approx(truth.elementwise_cycles(kind), rel=1e-7)
    assert fit.per_layer_overhead_cycles == pytest.approx(412.0, rel=1e-7)
    assert fit.per_output_pixel_overhead_cycles == 0.0 and fit.per_output_channel_overhead_cycles == 0.0
    for kind, quantities in KERNEL_QUANTITIES.items():
        for quantity in quantities:
            assert fit.kernel_quantity_cycles(kind, quantity) == pytest.approx(
                truth.kernel_quantity_cycles(kind, quantity), rel=1e-7), (kind, quantity)
    assert fit.sub_byte_output_value_cycles == pytest.approx(truth.sub_byte_output_value_cycles, rel=1e-7)
    assert fit.per_window_row_cycles == pytest.approx(17.0, rel=1e-7)
    assert fit.per_gathered_input_element_cycles == pytest.approx(2.75, rel=1e-7)


@pytest.mark.unit
def test_fit_covers_every_kind_and_bits_in_both_grids() -> None:
    for grid in (calibration_grid(), quick_grid()):
        assert {(c.kind, c.bits) for c in grid if c.weighted} == {(k, b) for k in WEIGHTED_KINDS for b in BITS}
        assert {c.table_kind for c in grid if not c.weighted} == set(ELEMENTWISE)
    grids = {c.label for c in calibration_grid()} | {c.label for c in quick_grid()}
    assert not grids & {c.label for c in holdout_cases()}  # the hold-out shapes are new


@pytest.mark.unit
def test_cli_refuses_a_target_without_qemu(tmp_path: Path) -> None:
    data = yaml.safe_load((targets_dir() / "cortex-m4.yaml").read_text())
    data["qemu"] = None
    path = tmp_path / "board-only.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    result = CliRunner().invoke(app, ["calibrate", "--target", str(path), "-o", str(tmp_path / "out.yaml")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {path}: key qemu:") and "no QEMU machine" in lines[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.yaml").exists()


def _require_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{', '.join(missing)} not on PATH: CI must install the Arm toolchain and QEMU")
        pytest.skip(f"{', '.join(missing)} not on PATH: install gcc-arm-none-eabi and qemu-system-arm")


@pytest.mark.qemu
def test_code_size_calibration_is_what_the_firmware_links(tmp_path: Path) -> None:
    """`--code-size-only` rewrites only code_size, from linked builds; the shipped table is that
    measurement (a kernel edit must recalibrate it); and the cost model's code estimate for a
    three-layer mixed-precision model matches its linked firmware: the kernels to the byte, the model
    code within 5%."""
    import torch

    from codegen.generate import generate_sources
    from edgejpq.emulate.qemu import build_qemu
    from edgejpq.graph import build_float_graph
    from edgejpq.plan import LayerPlan, PrecisionPlan
    from edgejpq.quant.integerize import export_model
    from edgejpq.zoo import build_model

    _require_tools()
    out = tmp_path / "m4.yaml"
    result = CliRunner().invoke(app, ["calibrate", "--target", "cortex-m4", "--code-size-only", "-o", str(out),
                                      "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output.strip().splitlines()[-1])
    spec, shipped = load_target(str(out)), load_target("cortex-m4")
    assert payload["grid"] == "none" and spec.latency == shipped.latency
    assert spec.code_size.measured and "edgejpq calibrate --target cortex-m4" in spec.code_size.source
    assert spec.code_size.per_kernel_bytes == payload["code_size"]["per_kernel_bytes"]
    assert spec.code_size.shared_bytes == payload["code_size"]["shared_bytes"]
    if compiler_version("arm-none-eabi-gcc") in " ".join(shipped.code_size.source.split()):
        assert spec.code_size == replace(shipped.code_size, source=spec.code_size.source)

    torch.manual_seed(0)
    graph = build_float_graph(build_model("zoo:cnn", (1, 12, 12), 10).eval(), (1, 12, 12))
    bits = (8, 4, 2, 0)
    plan = PrecisionPlan({layer.name: LayerPlan(tuple(bits[i % (3 if layer.kind == "linear" else 4)]
                                                      for i in range(layer.out_channels)))
                          for layer in graph.weighted})
    calib = np.random.default_rng(0).random((16, 1, 12, 12), dtype=np.float32)
    model, _ = export_model(graph, plan, calib, name="mixed")
    assert {"conv2d_w8", "conv2d_w4", "conv2d_w2", "fully_connected_w2"} <= kernel_names(model)
    sizes = build_qemu(model, generate_sources(model, tmp_path / "src", kernels=spec.kernels), tmp_path / "build",
                       spec).sizes
    assert sizes.kernel_code_bytes == spec.kernels_code_bytes(kernel_names(model))
    # the support objects the three conv kernels share are linked once
    shares = {share for name in kernel_names(model) for share in spec.kernel_shares(name)}
    assert {sizes.kernels[f"ejq_{share}.o"] for share in shares} == {spec.code_size.shared_bytes[s] for s in shares}
    assert spec.kernel_shares("conv2d_w8") == ("dsp_dw", "dsp_im2col", "dsp_rq")
    linked = sizes.kernel_code_bytes + sizes.model_code_bytes + sizes.runtime_bytes
    assert abs(model_cost(model, spec).code_bytes - linked) <= 0.05 * linked, (model_cost(model, spec), sizes)


@pytest.mark.qemu
def test_quick_calibration_in_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _require_tools()
    monkeypatch.chdir(tmp_path)  # the default output is ./<target>.yaml
    result = CliRunner().invoke(app, ["calibrate", "--target", "cortex-m4", "--quick", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output.strip().splitlines()[-1])
    out = tmp_path / "cortex-m4.yaml"
    assert payload["output"] == "cortex-m4.yaml" and out.is_file()
    assert payload["measurements"] == len(quick_grid()) and payload["grid"] == "quick"
    assert not list(tmp_path.glob(".*tmp*")), "the atomic write left a temporary file"

    spec = load_target(str(out))
    shipped = load_target("cortex-m4")
    latency = spec.latency
    assert latency.calibrated is True and "edgejpq calibrate --target cortex-m4 --quick" in latency.source
    assert "cycles per instruction" in latency.instructions_to_cycles
    provenance = latency.calibration
    assert provenance is not None
    assert provenance.date and provenance.tool.startswith("edgejpq ") and provenance.kernels == "dsp"
    assert "QEMU emulator version" in provenance.emulator and "mps2-an386" in provenance.emulator
    assert "arm-none-eabi-gcc" in provenance.compiler
    assert provenance.measurements == len(quick_grid()) and provenance.grid == "quick"
    assert provenance.max_relative_error == pytest.approx(payload["max_relative_error"], abs=1e-4)
    assert 1.0 < provenance.cycles_per_instruction < 3.0
    # everything but the latency table and the code size (measured again, see below) is the shipped file's
    assert (spec.name, spec.compiler, spec.memory, spec.qemu, spec.boards) == \
        (shipped.name, shipped.compiler, shipped.memory, shipped.qemu, shipped.boards)
    assert spec.code_size.measured and payload["code_size"]["per_kernel_bytes"] == spec.code_size.per_kernel_bytes
    assert latency.instruction_cycles == shipped.latency.instruction_cycles
    assert set(latency.per_input_element_cycles) == set(WEIGHTED_KINDS)
    assert set(latency.per_channel_cycles) == set(CHANNEL_KINDS)
    assert set(latency.ungrouped_cycles_per_mac) == set(GROUPED_KINDS)
    for kind in WEIGHTED_KINDS:
        for bits in BITS:
            assert spec.cycles_per_mac(kind, bits) == pytest.approx(payload["cycles_per_mac"][kind][f"w{bits}a8"],
                                                                   rel=1e-3, abs=1e-3)

    # fresh measurements on shapes in neither grid; the cost model, reading the written file, predicts them
    holdout = holdout_cases()
    measured = measure_cases(holdout, spec, tmp_path / "holdout", workers=2)
    errors = {}
    for m in measured:
        predicted = model_cost(kernel_model(m.case), spec).layers[-1].cycles
        errors[m.case.label] = predicted / m.cycles - 1.0
    worst = max(errors.items(), key=lambda item: abs(item[1]))
    assert abs(worst[1]) <= HOLDOUT_TOLERANCE, errors
    assert np.mean([abs(e) for e in errors.values()]) <= HOLDOUT_TOLERANCE / 2, errors


@pytest.mark.unit
def test_written_table_is_what_the_cost_model_reads(tmp_path: Path) -> None:
    """Every fitted number goes into the YAML, and model_cost on that file predicts what the fit predicts."""
    from edgejpq.calibrate import calibrated_text, write_calibration

    truth = _known_fit()
    shipped = load_target("cortex-m4")
    # measured with the shipped file's kernel set (the cost model prices a 1-channel conv by the set that runs it)
    cases = [replace(case, kernels=shipped.kernels) for case in calibration_grid()]
    measured = [KernelMeasurement(case, truth.predict(case) / 1.5, truth.predict(case), ()) for case in cases]
    fit = fit_latency(measured)
    text = calibrated_text(Path(shipped.path).read_text(), shipped, fit, measured, "full", "QEMU test, machine x",
                           "cc test", date="2026-01-01T00:00:00+00:00")
    spec = write_calibration(tmp_path / "m4.yaml", text)
    assert spec.latency.calibrated and spec.latency.calibration.measurements == len(cases)
    assert spec.latency.calibration.cycles_per_instruction == pytest.approx(1.5, rel=1e-3)
    for case in [*cases, *(replace(case, kernels=shipped.kernels) for case in holdout_cases())]:
        if case.kind == "copy":
            continue  # a planned model never copies (the planner aliases reshapes): model_cost counts 0
        predicted = model_cost(kernel_model(case), spec).layers[-1].cycles
        assert predicted == pytest.approx(fit.predict(case), rel=2e-3), case.label
