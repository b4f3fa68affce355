"""Generated C, built with the host compiler, against the numpy integer reference.

Every model (seeded random graphs plus one model holding every op at every bit-width) is
generated and compiled once per session, plain and under -fsanitize=address,undefined, in
parallel; its outputs must equal the reference byte for byte, and so must every intermediate
tensor in a trace. Also: the golden `make test`, build files, atomic generation, banners,
no malloc/float at inference, error messages, and streaming 10,000 inputs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from codegen.generate import MARKER, GeneratedSources, generate_sources
from edgejpq import __version__
from edgejpq.artifact import Conv2D, QuantizedModel
from edgejpq.emulate.host import (HostRunner, build_host, compare_with_reference, emulate_host, run_host,
                                  trace_host)
from edgejpq.errors import EdgejpqError
from edgejpq.quant.reference import predict, run_reference

from random_models import ALL_LABELS, ModelBuilder, coverage_model, op_coverage, random_model

pytestmark = pytest.mark.host_c

SEEDS = tuple(range(36))
MODEL_KEYS = ("coverage", *(f"seed{s}" for s in SEEDS))
SAMPLES = 96
WORKERS = max(2, os.cpu_count() or 2)


@pytest.fixture(scope="session")
def compiler() -> str:
    path = shutil.which("cc")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("no host C compiler `cc` on PATH: CI must install gcc")
        pytest.skip("no host C compiler `cc` on PATH: install gcc to run the host_c tier")
    return path


def _model(key: str) -> QuantizedModel:
    return coverage_model() if key == "coverage" else random_model(int(key.removeprefix("seed")))


def _inputs(model: QuantizedModel, n: int = SAMPLES, seed: int = 0) -> np.ndarray:
    """Random inputs plus the extremes (all -128, all 127, all at the zero point)."""
    shape = model.input_info.shape
    x = np.random.default_rng(seed).integers(-128, 128, size=(n, *shape), dtype=np.int8)
    x[0], x[1], x[2] = -128, 127, model.input_info.zero_point
    return x


@dataclass(frozen=True)
class Built:
    model: QuantizedModel
    sources: GeneratedSources
    runner: HostRunner
    sanitized: HostRunner
    inputs: np.ndarray


@pytest.fixture(scope="session")
def built(compiler: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Built]:
    """Generate every model and build its runner twice (plain, sanitized), in parallel."""
    root = tmp_path_factory.mktemp("models")

    def make(key: str) -> Built:
        model = _model(key)
        sources = generate_sources(model, root / key / "src", golden_inputs=_inputs(model, 3))
        plain = build_host(model, sources, root / key / "build")
        sanitized = build_host(model, sources, root / key / "build", sanitize=True)
        return Built(model, sources, plain, sanitized, _inputs(model))

    with ThreadPoolExecutor(WORKERS) as pool:
        return dict(zip(MODEL_KEYS, pool.map(make, MODEL_KEYS)))


# --------------------------------------------------------------------------- bit-exactness


def test_models_cover_every_op_and_bit_width() -> None:
    covered = set().union(*(op_coverage(_model(key)) for key in MODEL_KEYS))
    assert covered == ALL_LABELS
    assert op_coverage(coverage_model()) == ALL_LABELS
    layouts = [p for key in MODEL_KEYS for p in _model(key).layout.placements.values()]
    assert {p.region for p in layouts} == {"arena", "input", "output"}


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_outputs_equal_reference(built: dict[str, Built], key: str) -> None:
    b = built[key]
    got = run_host(b.runner, b.inputs)
    expected = predict(b.model, b.inputs).reshape(len(b.inputs), -1)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_every_intermediate_tensor_equals_reference(built: dict[str, Built], key: str) -> None:
    b = built[key]
    for sample in (0, 3, 4):
        traced = trace_host(b.runner, b.inputs[sample])
        reference = run_reference(b.model, b.inputs[sample: sample + 1])
        assert set(traced) == {op.output for op in b.model.ops}
        for op in b.model.ops:
            np.testing.assert_array_equal(traced[op.output], reference[op.output][0],
                                          err_msg=f"{key} sample {sample}: tensor {op.output} of op {op.name}")


@pytest.mark.parametrize("key", MODEL_KEYS)
def test_sanitized_build_equals_reference(built: dict[str, Built], key: str) -> None:
    b = built[key]
    got = run_host(b.sanitized, b.inputs[:32])
    np.testing.assert_array_equal(got, predict(b.model, b.inputs[:32]).reshape(32, -1))
    traced = trace_host(b.sanitized, b.inputs[5])
    reference = run_reference(b.model, b.inputs[5:6])
    for name, value in traced.items():
        np.testing.assert_array_equal(value, reference[name][0], err_msg=f"{key}: tensor {name}")


# --------------------------------------------------------------------------- strictness of the generated C


@pytest.mark.parametrize("std", ["-std=c99", "-std=c11"])
def test_generated_c_compiles_pedantic_and_warning_free(built: dict[str, Built], compiler: str, std: str) -> None:
    flags = [std, "-pedantic", "-Wall", "-Wextra", "-Werror", "-Wconversion", "-Wsign-conversion", "-Wshadow",
             "-Wstrict-prototypes", "-Wmissing-prototypes", "-Wcast-qual", "-fsyntax-only"]
    for key in ("coverage", "seed0", "seed1", "seed2", "seed3"):
        s = built[key].sources
        files = [*s.library_sources, s.test_source, s.golden_source, s.runner_source]
        for define in ([], ["-DEJQ_TRACE_ENABLED"]):
            result = subprocess.run([compiler, *flags, *define, "-I.", *files], cwd=s.out_dir, capture_output=True,
                                    text=True)
            assert result.returncode == 0, f"{key} {define}: {result.stderr}"


def _code_only(text: str) -> str:
    """C text without comments and string literals."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return re.sub(r'"(\\.|[^"\\])*"', '""', text)


def test_no_malloc_or_float_at_inference(built: dict[str, Built]) -> None:
    forbidden = re.compile(r"\b(malloc|calloc|realloc|free|float|double|alloca)\b|\d\.\d*f\b")
    s = built["coverage"].sources
    inference = [f for f in s.files if f.endswith((".c", ".h")) and f not in (s.test_source, s.runner_source,
                                                                                s.golden_source, s.header)]
    assert "ejq_kernels.h" in inference and f"{s.name}_model.c" in inference
    for name in inference:
        code = _code_only((s.out_dir / name).read_text())
        assert not forbidden.search(code), f"{name}: {forbidden.search(code).group(0)!r}"
    header = _code_only((s.out_dir / s.header).read_text())
    float_lines = [line for line in header.splitlines() if re.search(r"\d\.\d*(e-?\d+)?f\b|\bfloat\b", line)]
    assert float_lines and all("_SCALE " in line for line in float_lines), float_lines


def test_banner_names_version_and_hash(built: dict[str, Built]) -> None:
    b = built["coverage"]
    for name in b.sources.files:
        head = "\n".join((b.sources.out_dir / name).read_text().splitlines()[:3])
        assert f"edgejpq {__version__}" in head and b.model.short_hash in head and "do not edit" in head, name


def test_only_used_kernel_sources_are_emitted(built: dict[str, Built]) -> None:
    for key in ("coverage", "seed0", "seed7"):
        b = built[key]
        kernel_c = {f for f in b.sources.files if f.startswith("ejq_") and f.endswith(".c")}
        model_c = (b.sources.out_dir / f"{b.sources.name}_model.c").read_text()
        called = set(re.findall(r"\b(ejq_\w+_s8(?:_w\d)?)\(", _code_only(model_c)))
        from codegen.generate import kernel_set_sources
        from codegen.lower import KERNEL_SOURCES

        assert kernel_c == set(kernel_set_sources(b.sources.kernels, {KERNEL_SOURCES[f] for f in called})), key


# --------------------------------------------------------------------------- build files and golden test


def test_make_test_passes_and_fails_on_a_flipped_golden_byte(built: dict[str, Built], tmp_path: Path) -> None:
    model = built["coverage"].model
    sources = generate_sources(model, tmp_path / "fw")
    run = subprocess.run(["make", "-s", "test"], cwd=sources.out_dir, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 golden samples bit-exact" in run.stdout
    golden = sources.out_dir / sources.golden_source
    text = golden.read_text()
    outputs_at = text.index("_golden_outputs[")
    first = re.compile(r"(/\* sample 0 \*/\s*)(-?\d+)").search(text, outputs_at)
    flipped = (int(first.group(2)) + 1 + 128) % 256 - 128
    golden.write_text(text[: first.start(2)] + str(flipped) + text[first.end(2):])
    run = subprocess.run(["make", "-s", "test"], cwd=sources.out_dir, capture_output=True, text=True)
    assert run.returncode != 0
    assert f"MISMATCH sample 0 index 0 expected {flipped} got {first.group(2)}" in run.stdout


def test_makefile_library_and_runner_targets(built: dict[str, Built], tmp_path: Path) -> None:
    sources = generate_sources(built["seed1"].model, tmp_path / "fw", name="net")
    run = subprocess.run(["make", "-s", "all", "runner"], cwd=sources.out_dir, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (sources.out_dir / "libnet.a").is_file() and (sources.out_dir / "net_runner").is_file()


def test_cmake_fragment_builds_into_a_firmware_project(built: dict[str, Built], tmp_path: Path) -> None:
    if shutil.which("cmake") is None:
        pytest.skip("cmake not installed (optional: only this check of the CMake fragment needs it)")
    sources = generate_sources(built["coverage"].model, tmp_path / "app" / "model", name="net")
    (tmp_path / "app" / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.13)\nproject(app C)\nadd_subdirectory(model)\n"
        "add_executable(app model/net_test.c model/net_golden.c)\ntarget_link_libraries(app PRIVATE net)\n")
    build = tmp_path / "build"
    for command in (["cmake", "-S", str(tmp_path / "app"), "-B", str(build)], ["cmake", "--build", str(build)],
                    [str(build / "app")]):
        run = subprocess.run(command, capture_output=True, text=True)
        assert run.returncode == 0, f"{command}: {run.stdout}{run.stderr}"
    assert "bit-exact" in run.stdout
    assert sources.name == "net"


# --------------------------------------------------------------------------- mismatch diagnosis


def test_corrupted_weight_byte_is_traced_to_its_layer(built: dict[str, Built], tmp_path: Path) -> None:
    good = built["coverage"]
    model = good.model
    target = next(op for op in model.ops if isinstance(op, Conv2D) and not op.depthwise)
    arrays = dict(model.arrays)
    weights = arrays[f"{target.name}.weights"].copy()
    run8 = next(r for r in target.runs if r.bits == 8)
    weights[run8.offset] ^= 0x7F
    arrays[f"{target.name}.weights"] = weights
    corrupted = replace(model, arrays=arrays)
    sources = generate_sources(corrupted, tmp_path / "src")
    runner = build_host(corrupted, sources, tmp_path / "build")
    outputs = run_host(runner, good.inputs)
    mismatch = compare_with_reference(model, good.inputs, outputs, runner=runner)
    assert mismatch is not None and mismatch.traced
    assert (mismatch.tensor, mismatch.op_name) == (target.output, target.name)
    assert mismatch.expected != mismatch.got
    assert target.name in str(mismatch) and target.output in str(mismatch)
    # without a runner it still names the sample and the output
    plain = compare_with_reference(model, good.inputs, outputs)
    assert plain is not None and plain.tensor == model.output and not plain.traced
    assert compare_with_reference(model, good.inputs, run_host(good.runner, good.inputs)) is None


def test_emulate_host_reports_bit_exact_and_timings(tmp_path: Path, compiler: str) -> None:
    model = random_model(3)
    x = _inputs(model, 50)
    seen: list[int] = []
    result = emulate_host(model, x, tmp_path / "work", on_progress=seen.append)
    assert result.bit_exact and result.mismatch is None
    assert result.outputs.shape == (50, model.output_info.size) and result.outputs.dtype == np.int8
    assert result.build_seconds > 0 and result.run_seconds > 0
    assert seen and seen[-1] == 50
    # running again into the same work folder replaces the previous output
    assert emulate_host(model, x[:5], tmp_path / "work").bit_exact


def test_streams_ten_thousand_fashion_mnist_sized_inputs(tmp_path: Path, compiler: str) -> None:
    rng = np.random.default_rng(5)
    b = ModelBuilder(rng, "lenet_like", clamps=False)
    x = b.tensor((28, 28, 1))
    h = b.conv(x, 8, (3, 3), (2, 2), (1, 1, 1, 1), bits=(8, 4))
    h = b.conv(h, 16, (3, 3), (2, 2), (1, 1, 1, 1), bits=(4, 2, 8))
    h = b.pool(h, "avg", b.shape(h)[:2], (1, 1))
    out = b.fc(b.reshape(h, (1, 1, 16)), 10, bits=(8,))
    model = b.build(x, out)
    sources = generate_sources(model, tmp_path / "src")
    runner = build_host(model, sources, tmp_path / "build")
    inputs = rng.integers(-128, 128, size=(10_000, 28, 28, 1), dtype=np.int8)
    progress: list[int] = []
    start = time.perf_counter()
    outputs = run_host(runner, inputs, on_progress=progress.append, chunk=1000)
    seconds = time.perf_counter() - start
    assert seconds < 30, f"10,000 inputs took {seconds:.1f} s"
    assert progress == sorted(progress) and progress[-1] == 10_000 and len(progress) >= 2
    np.testing.assert_array_equal(outputs, predict(model, inputs).reshape(10_000, -1))


# --------------------------------------------------------------------------- errors a user can meet


def test_existing_foreign_folder_is_refused_and_left_untouched(tmp_path: Path) -> None:
    model = random_model(1)
    foreign = tmp_path / "firmware"
    foreign.mkdir()
    (foreign / "main.c").write_text("int main(void) { return 0; }\n")
    with pytest.raises(EdgejpqError, match=re.escape(str(foreign))):
        generate_sources(model, foreign)
    assert sorted(p.name for p in foreign.iterdir()) == ["main.c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["firmware"], "no temporary folder left behind"
    file_target = tmp_path / "a_file"
    file_target.write_text("x")
    with pytest.raises(EdgejpqError, match="not a folder"):
        generate_sources(model, file_target)


def test_regeneration_replaces_previous_output_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "fw"
    first = generate_sources(random_model(1), out, name="net")
    (out / "stale.c").write_text("/* left from an old run */\n")
    assert (out / MARKER).is_file()
    second = generate_sources(random_model(2), out, name="net")
    assert not (out / "stale.c").exists()
    assert second.model_hash in (out / "net_model.c").read_text() and first.model_hash != second.model_hash
    # a failure while writing leaves the previous output complete and no temporary folder
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = {"n": 0}
    real_write = Path.write_text

    def failing_write(self: Path, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(28, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", failing_write)
    with pytest.raises(EdgejpqError, match="No space left"):
        generate_sources(random_model(3), out, name="net")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fw"]


def test_empty_existing_folder_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "fw").mkdir()
    sources = generate_sources(random_model(1), tmp_path / "fw")
    assert (tmp_path / "fw" / MARKER).is_file() and sources.name == "random_1"


def test_unwritable_location_names_the_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(EdgejpqError, match=re.escape(str(blocker))):
        generate_sources(random_model(1), blocker / "sub" / "fw")


@pytest.mark.parametrize("name", ["2fast", "my-model", "int", ""])
def test_invalid_explicit_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(EdgejpqError, match="C identifier"):
        generate_sources(random_model(1), tmp_path / "fw", name=name)
    assert not (tmp_path / "fw").exists()


def test_default_name_is_sanitized(tmp_path: Path) -> None:
    model = replace(random_model(1), name="resnet-8 v2")
    sources = generate_sources(model, tmp_path / "fw")
    assert sources.name == "resnet_8_v2" and (tmp_path / "fw" / "resnet_8_v2_model.h").is_file()


def test_unknown_kernel_set_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EdgejpqError, match="available: dsp, portable"):
        generate_sources(random_model(1), tmp_path / "fw", kernels="no_such_set")


def test_bad_golden_inputs_are_refused(tmp_path: Path) -> None:
    model = random_model(1)
    with pytest.raises(EdgejpqError, match="golden inputs"):
        generate_sources(model, tmp_path / "fw", golden_inputs=np.zeros((2, 99, 1, 1), dtype=np.int8))


def test_missing_compiler_says_what_to_install(built: dict[str, Built], tmp_path: Path) -> None:
    b = built["seed1"]
    with pytest.raises(EdgejpqError, match="install gcc"):
        build_host(b.model, b.sources, tmp_path, compiler="edgejpq-no-such-cc")


def test_compile_error_is_reported_as_an_edgejpq_bug(built: dict[str, Built], tmp_path: Path) -> None:
    b = built["seed1"]
    sources = generate_sources(b.model, tmp_path / "src")
    model_c = sources.out_dir / f"{sources.name}_model.c"
    model_c.write_text(model_c.read_text() + "\nthis is not C;\n")
    with pytest.raises(EdgejpqError, match=r"(?s)bug in edgejpq.*error"):
        build_host(b.model, sources, tmp_path / "build")


def test_crashing_runner_reports_its_stderr(built: dict[str, Built], tmp_path: Path) -> None:
    script = tmp_path / "crash.sh"
    script.write_text("#!/bin/sh\nhead -c 10 >/dev/null\necho 'segmentation fault in ejq_conv2d_s8_w4' >&2\nexit 139\n")
    script.chmod(0o755)
    runner = replace(built["seed1"].runner, path=script)
    with pytest.raises(EdgejpqError, match=r"(?s)exit status 139.*segmentation fault in ejq_conv2d_s8_w4"):
        run_host(runner, built["seed1"].inputs)


def test_inputs_of_the_wrong_size_are_refused(built: dict[str, Built]) -> None:
    b = built["seed1"]
    with pytest.raises(EdgejpqError, match="values per sample"):
        run_host(b.runner, np.zeros((2, b.runner.input_size + 1), dtype=np.int8))
    with pytest.raises(EdgejpqError, match="int8"):
        run_host(b.runner, b.inputs.astype(np.int16))
