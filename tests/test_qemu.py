"""Generated C cross-compiled for Cortex-M and run in qemu-system-arm, against the numpy reference.

Random models (and the model holding every op at every bit-width) are built for the Cortex-M4
(DSP kernel set) and the Cortex-M3 (portable C), run on many inputs per QEMU start and compared
byte for byte; instruction counts must repeat exactly; a failing harness must fail the command;
sizes must add up; every generated board project must compile.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import codegen.boards
from codegen.generate import generate_sources
from codegen.lower import lower_model
from edgejpq.artifact import save_model
from edgejpq.cli import app
from edgejpq.cost.target import load_target
from edgejpq.emulate.qemu import (COUNTER_NAMES, build_qemu, emulate_qemu, estimate_cycles, run_qemu)
from edgejpq.errors import EdgejpqError
from edgejpq.quant.reference import predict

from needs import need_programs
from random_models import ALL_LABELS, coverage_model, op_coverage, random_model

pytestmark = pytest.mark.qemu

SEEDS_M4 = tuple(range(24))
SEEDS_M3 = tuple(range(100, 112))
SAMPLES = 48


@pytest.fixture(scope="session", autouse=True)
def tools() -> None:
    need_programs()


def _inputs(model, n: int = SAMPLES, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).integers(-128, 128, size=(n, *model.input_info.shape), dtype=np.int8)
    for row, value in zip(x, (-128, 127, model.input_info.zero_point)):
        row[...] = value
    return x


def _sweep(target_name: str, seeds: tuple[int, ...], root: Path) -> None:
    target = load_target(target_name)
    models = [coverage_model(), *(random_model(seed) for seed in seeds)]
    assert set().union(*(op_coverage(m) for m in models)) == ALL_LABELS

    def check(model):
        x = _inputs(model)
        result = emulate_qemu(model, x, root / model.name, target)
        assert result.bit_exact, f"{target_name} {model.name}: {result.mismatch}"
        assert np.array_equal(result.outputs, predict(model, x).reshape(len(x), -1))
        return result

    with ThreadPoolExecutor(2) as pool:
        for result in pool.map(check, models):
            assert result.instructions_per_inference > 0


def test_random_models_bit_exact_cortex_m4_dsp(tmp_path: Path) -> None:
    _sweep("cortex-m4", SEEDS_M4, tmp_path)


def test_random_models_bit_exact_cortex_m3_portable(tmp_path: Path) -> None:
    assert load_target("cortex-m3").kernels == "portable"
    _sweep("cortex-m3", SEEDS_M3, tmp_path)


def test_instruction_counts_repeat_exactly(tmp_path: Path) -> None:
    model = coverage_model()
    target = load_target("cortex-m4")
    sources = generate_sources(model, tmp_path / "src", kernels=target.kernels)
    fw = build_qemu(model, sources, tmp_path / "build", target)
    x = _inputs(model, 6)
    x[3] = x[4] = x[5]
    first = run_qemu(fw, x, tmp_path / "a")
    second = run_qemu(fw, x, tmp_path / "b", workers=1)
    assert np.array_equal(first.counts.per_inference, second.counts.per_inference)
    assert np.array_equal(first.counts.per_region, second.counts.per_region)
    per = first.counts.per_inference
    assert np.array_equal(per[3], per[4]) and np.array_equal(per[4], per[5])  # same input, same count
    # every op has its region, and the regions add up to the inferences' totals
    assert first.counts.per_region.shape == (len(model.ops) + 1, len(COUNTER_NAMES))
    assert np.array_equal(first.counts.per_region.sum(axis=0), per.sum(axis=0))
    cycles = estimate_cycles(per, target.latency.instruction_cycles)
    assert (cycles > per[:, 0]).all()  # loads and taken branches cost more than one cycle on a Cortex-M4


def test_sizes_and_ram(tmp_path: Path) -> None:
    model = coverage_model()
    result = emulate_qemu(model, _inputs(model, 4), tmp_path, load_target("cortex-m4"))
    sizes = result.sizes
    assert sizes.weight_bytes == model.weight_bytes
    # the model's arrays plus what the generator precomputes from them (weight row sums)
    assert sizes.constant_bytes == lower_model(model, "coverage", load_target("cortex-m4").kernels).constant_bytes
    assert sizes.constant_bytes >= model.constant_bytes
    assert sizes.kernel_code_bytes > 0 and sizes.model_code_bytes > 0
    assert sizes.flash_bytes < sizes.firmware_flash_bytes  # the harness is not the model's
    assert sizes.static_ram_bytes >= model.layout.arena_bytes
    assert 0 < result.run.stack_bytes < 4096
    assert result.ram_bytes == sizes.static_ram_bytes + result.run.stack_bytes


def _trapping_harness(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the generated harness fault in the middle of main (as a broken kernel would)."""
    original = codegen.boards.write_qemu_harness

    def write(*args, **kwargs):
        ctx = original(*args, **kwargs)
        harness = args[-1] / "harness.c"
        text = harness.read_text()
        harness.write_text(text.replace("        ejq_measure_begin();\n", "        ejq_measure_begin();\n"
                                        "        { void (*volatile jump)(void) = 0; jump(); }\n", 1))
        return ctx

    monkeypatch.setattr(codegen.boards, "write_qemu_harness", write)


def test_failing_harness_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = coverage_model()
    _trapping_harness(monkeypatch)
    with pytest.raises(EdgejpqError, match="faulted"):
        emulate_qemu(model, _inputs(model, 4), tmp_path / "api", load_target("cortex-m4"))
    path = tmp_path / "m.ejq"
    save_model(model, path)
    result = CliRunner().invoke(app, ["emulate", str(path), "--qemu", "--target", "cortex-m4", "--limit", "3"])
    assert result.exit_code == 2
    assert "error:" in result.output and "faulted" in result.output and "Traceback" not in result.output


def test_harness_timeout_and_bad_input(tmp_path: Path) -> None:
    model = coverage_model()
    target = load_target("cortex-m4")
    fw = build_qemu(model, generate_sources(model, tmp_path / "src", kernels=target.kernels), tmp_path / "b", target)
    with pytest.raises(EdgejpqError, match="did not finish within"):
        run_qemu(fw, _inputs(model, 2), tmp_path / "slow", timeout=0.01)
    with pytest.raises(EdgejpqError, match="inputs must be int8"):
        run_qemu(fw, np.zeros((2, 3), np.int16), tmp_path / "bad")


def test_cli_emulate_qemu_json(tmp_path: Path) -> None:
    import json

    path = tmp_path / "m.ejq"
    model = coverage_model()
    save_model(model, path)
    result = CliRunner().invoke(app, ["emulate", str(path), "--qemu", "--target", "cortex-m4", "--limit", "5",
                                      "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output.strip().splitlines()[-1])
    for key in ("bit_exact", "samples", "accuracy", "arena_bytes", "weight_bytes", "instructions_per_inference",
                "cycles_estimate_per_inference", "flash_bytes", "ram_bytes"):
        assert key in payload
    assert payload["bit_exact"] is True and payload["samples"] == 5
    assert payload["weight_bytes"] == model.weight_bytes
    assert len(payload["layers"]) == len(model.ops)
    refused = CliRunner().invoke(app, ["emulate", str(path), "--target", "cortex-m4"])
    assert refused.exit_code == 2 and "--qemu" in refused.output
