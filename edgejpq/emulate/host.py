"""Host emulation: build the generated C with the host compiler and run it on many inputs.

The runner (firmware_templates/runner.c.j2) streams raw int8 bytes: whole input tensors on stdin,
whole output tensors on stdout, until EOF. Built with EJQ_TRACE_ENABLED, `runner --trace` runs
one input and writes every tensor after each op, so a mismatch against the numpy reference is
traced to the first op whose output differs.

Trace format (little-endian): b"EJQT", then records (uint32 tensor index, uint32 n, n bytes),
closed by the record (0xFFFFFFFF, 0). Tensor indices are positions in model.tensors.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from edgejpq.artifact import QuantizedModel
from edgejpq.errors import EdgejpqError
from edgejpq.quant.reference import predict, run_reference

if TYPE_CHECKING:  # codegen imports edgejpq; import it lazily at run time
    from codegen.generate import GeneratedSources

COMPILE_FLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra", "-Werror")
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g")
_SANITIZER_ENV = {"ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}
TRACE_MAGIC = b"EJQT"
TRACE_END = 0xFFFFFFFF

ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class HostRunner:
    """A built runner and what it needs to know about its model."""

    path: Path
    model_hash: str
    input_size: int
    output_size: int
    tensor_names: tuple[str, ...]  # trace index -> tensor name
    tensor_shapes: tuple[tuple[int, int, int], ...]
    sanitize: bool
    build_seconds: float


@dataclass(frozen=True)
class Mismatch:
    """The first place the C build and the reference disagree."""

    sample: int
    tensor: str
    op_index: int  # the op that wrote `tensor`
    op_name: str
    index: int  # flat index inside the tensor
    expected: int
    got: int
    traced: bool  # False: only the final outputs were compared

    def __str__(self) -> str:
        where = "first differing tensor" if self.traced else "output tensor"
        return (f"sample {self.sample}: {where} {self.tensor} (written by op {self.op_index} {self.op_name}) "
                f"differs at flat index {self.index}: reference {self.expected}, C {self.got}")


@dataclass(frozen=True)
class HostEmulation:
    outputs: np.ndarray  # (N, output size) int8, from the C build
    bit_exact: bool
    mismatch: Optional[Mismatch]
    build_seconds: float
    run_seconds: float
    runner: HostRunner


# --------------------------------------------------------------------------- build


def find_compiler(compiler: str = "cc") -> str:
    """Absolute path of the host C compiler, or an EdgejpqError saying what to install."""
    path = shutil.which(compiler)
    if path is None:
        raise EdgejpqError(f"no host C compiler {compiler!r} on PATH: install gcc (Debian/Ubuntu: "
                           f"`apt-get install gcc`; macOS: `xcode-select --install`) to emulate on the host")
    return path


def _first_errors(stderr: str, lines: int = 12) -> str:
    text = stderr.strip().splitlines()
    first = next((i for i, line in enumerate(text) if "error" in line), 0)
    return "\n".join(text[first: first + lines])


def build_host(model: QuantizedModel, sources: "GeneratedSources", workdir: Path, *, sanitize: bool = False,
               compiler: str = "cc", extra_flags: tuple[str, ...] = ()) -> HostRunner:
    """Compile the generated sources and their runner (with EJQ_TRACE_ENABLED) into `workdir`."""
    from codegen.lower import tensor_order

    cc = find_compiler(compiler)
    workdir = Path(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgejpqError(f"{workdir}: cannot create the build folder ({exc.strerror})") from None
    exe = workdir / f"{sources.name}_runner{'_san' if sanitize else ''}"
    src = sources.out_dir
    command = [cc, *COMPILE_FLAGS, *(SANITIZE_FLAGS if sanitize else ()), *extra_flags, "-DEJQ_TRACE_ENABLED",
               f"-I{src}", "-o", str(exe), str(src / sources.runner_source),
               *(str(src / f) for f in sources.library_sources)]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise EdgejpqError(f"compiling the generated C for model {model.name} ({model.short_hash}) in {src} failed; "
                           f"this is a bug in edgejpq, please report it with the model file:\n"
                           f"{_first_errors(result.stderr)}")
    names = tensor_order(model)
    return HostRunner(path=exe, model_hash=model.short_hash, input_size=model.input_info.size,
                      output_size=model.output_info.size, tensor_names=names,
                      tensor_shapes=tuple(model.tensors[n].shape for n in names), sanitize=sanitize,
                      build_seconds=seconds)


# --------------------------------------------------------------------------- run


def _as_samples(runner: HostRunner, inputs: np.ndarray) -> np.ndarray:
    x = np.asarray(inputs)
    if x.dtype != np.int8 or x.ndim < 1 or (x.size and x[0].size != runner.input_size):
        raise EdgejpqError(f"inputs must be int8 with {runner.input_size} values per sample, got {x.dtype}{x.shape}")
    return np.ascontiguousarray(x.reshape(len(x), runner.input_size))


def _stderr_tail(handle, limit: int = 2000) -> str:
    handle.seek(0)
    text = handle.read().decode(errors="replace").strip()
    return text[-limit:] if text else "(no message on stderr)"


def _run(runner: HostRunner, payload: bytes, expected_bytes: int, args: tuple[str, ...] = (),
         on_chunk: Optional[Callable[[int], None]] = None, chunk_bytes: int = 1 << 16) -> bytes:
    """Feed `payload` to the runner's stdin while reading `expected_bytes` (or all, if -1) from stdout."""
    env = dict(os.environ, **_SANITIZER_ENV) if runner.sanitize else None
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen([str(runner.path), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=err, env=env)
        except OSError as exc:
            raise EdgejpqError(f"{runner.path}: cannot start the host runner ({exc.strerror})") from None

        def feed() -> None:
            try:
                view = memoryview(payload)
                for start in range(0, len(view), 1 << 20):
                    proc.stdin.write(view[start: start + (1 << 20)])
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass  # the runner died: reported below from its exit status and stderr

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        if expected_bytes < 0:
            data = proc.stdout.read()
        else:
            buffer = bytearray(expected_bytes)
            view = memoryview(buffer)
            done = 0
            while done < expected_bytes:
                got = proc.stdout.readinto(view[done: done + chunk_bytes])
                if not got:
                    break
                done += got
                if on_chunk is not None:
                    on_chunk(done)
            data = bytes(buffer[:done])
        proc.stdout.close()
        code = proc.wait()
        writer.join()
        if code != 0 or (expected_bytes >= 0 and len(data) != expected_bytes):
            raise EdgejpqError(f"host runner {runner.path} failed (exit status {code}) after "
                               f"{len(data)} of {expected_bytes if expected_bytes >= 0 else '?'} output bytes:\n"
                               f"{_stderr_tail(err)}")
    return data


def run_host(runner: HostRunner, inputs: np.ndarray, on_progress: Optional[ProgressCallback] = None,
             chunk: int = 512, workers: Optional[int] = None) -> np.ndarray:
    """Run the runner on int8 inputs (N, H, W, C); return its outputs (N, output size) int8.

    Large batches are split into contiguous shards, one runner process each (`workers`, default
    one per CPU core). `on_progress(done)` is called from the calling thread with the number of
    finished samples, about every `chunk` samples.
    """
    x = _as_samples(runner, inputs)
    n = len(x)
    out_bytes = runner.output_size
    if n == 0:
        return np.zeros((0, out_bytes), dtype=np.int8)
    chunk = max(1, chunk)
    shards = max(1, min(workers or os.cpu_count() or 1, n // chunk))
    bounds = np.linspace(0, n, shards + 1).astype(int)
    done = [0] * shards  # output bytes received per shard, written by the worker threads

    def shard(i: int) -> bytes:
        def received(count: int) -> None:
            done[i] = count

        lo, hi = bounds[i], bounds[i + 1]
        return _run(runner, x[lo:hi].tobytes(), (hi - lo) * out_bytes, on_chunk=received,
                    chunk_bytes=chunk * out_bytes)

    with ThreadPoolExecutor(shards) as pool:
        futures = [pool.submit(shard, i) for i in range(shards)]
        reported = -1
        while True:
            finished = all(f.done() for f in futures)
            current = sum(done) // out_bytes
            if on_progress is not None and current != reported:
                on_progress(current)
                reported = current
            if finished:
                break
            wait(futures, timeout=0.05, return_when=FIRST_EXCEPTION)
        data = b"".join(f.result() for f in futures)
    return np.frombuffer(data, dtype=np.int8).reshape(n, out_bytes).copy()


def trace_host(runner: HostRunner, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run one input (H, W, C) in trace mode; return the input and every tensor an op produced, (H, W, C)."""
    sample = _as_samples(runner, np.asarray(x).reshape(1, -1))
    data = _run(runner, sample.tobytes(), -1, args=("--trace",))
    if data[:4] != TRACE_MAGIC:
        raise EdgejpqError(f"host runner {runner.path}: trace output does not start with {TRACE_MAGIC!r}")
    tensors: dict[str, np.ndarray] = {}
    pos = 4
    while True:
        if pos + 8 > len(data):
            raise EdgejpqError(f"host runner {runner.path}: trace output truncated at byte {pos}")
        index, size = struct.unpack_from("<II", data, pos)
        pos += 8
        if index == TRACE_END:
            break
        if index >= len(runner.tensor_names) or pos + size > len(data):
            raise EdgejpqError(f"host runner {runner.path}: bad trace record at byte {pos - 8} "
                               f"(tensor {index}, {size} bytes)")
        shape = runner.tensor_shapes[index]
        tensors[runner.tensor_names[index]] = np.frombuffer(data, np.int8, size, pos).reshape(shape).copy()
        pos += size
    return tensors


# --------------------------------------------------------------------------- compare


def compare_with_reference(model: QuantizedModel, inputs: np.ndarray, c_outputs: np.ndarray, *,
                           runner: Optional[HostRunner] = None,
                           reference_outputs: Optional[np.ndarray] = None) -> Optional[Mismatch]:
    """None if the C outputs equal the reference byte for byte; else the first mismatch.

    With `runner`, the first mismatching sample is re-run in trace mode and the mismatch names the
    first tensor (in op order) whose bytes differ and the op that wrote it.
    """
    x = np.asarray(inputs)
    n = len(x)
    expected = predict(model, x) if reference_outputs is None else np.asarray(reference_outputs)
    expected = expected.reshape(n, -1)
    got = np.asarray(c_outputs).reshape(n, -1)
    if expected.shape != got.shape:
        raise EdgejpqError(f"C outputs have shape {got.shape}, the reference {expected.shape}")
    rows = np.flatnonzero((expected != got).any(axis=1))
    if rows.size == 0:
        return None
    sample = int(rows[0])
    producer = {op.output: (i, op.name) for i, op in enumerate(model.ops)}
    if runner is not None:
        traced = trace_host(runner, x[sample])
        reference = run_reference(model, x[sample: sample + 1])
        for op_index, op in enumerate(model.ops):
            want = reference[op.output][0].ravel()
            have = traced.get(op.output)
            if have is None:
                continue
            diff = np.flatnonzero(want != have.ravel())
            if diff.size:
                i = int(diff[0])
                return Mismatch(sample, op.output, op_index, op.name, i, int(want[i]), int(have.ravel()[i]), True)
    i = int(np.flatnonzero(expected[sample] != got[sample])[0])
    op_index, op_name = producer[model.output]
    return Mismatch(sample, model.output, op_index, op_name, i, int(expected[sample, i]), int(got[sample, i]), False)


def emulate_host(model: QuantizedModel, inputs: np.ndarray, workdir: Path, *, sanitize: bool = False,
                 on_progress: Optional[ProgressCallback] = None) -> HostEmulation:
    """Generate, build and run `model` on the host; compare every output byte with the reference."""
    from codegen.generate import generate_sources

    workdir = Path(workdir)
    sources = generate_sources(model, workdir / "src")
    runner = build_host(model, sources, workdir / "build", sanitize=sanitize)
    start = time.perf_counter()
    outputs = run_host(runner, inputs, on_progress=on_progress)
    run_seconds = time.perf_counter() - start
    mismatch = compare_with_reference(model, inputs, outputs, runner=runner)
    return HostEmulation(outputs=outputs, bit_exact=mismatch is None, mismatch=mismatch,
                         build_seconds=runner.build_seconds, run_seconds=run_seconds, runner=runner)
