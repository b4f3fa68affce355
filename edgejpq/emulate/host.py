"""Host emulation: build the generated C with the host compiler and run it on many inputs.

The runner (firmware_templates/runner.c.j2) streams raw int8 bytes: whole input tensors on stdin,
whole output tensors on stdout, until EOF. Built with EJQ_TRACE_ENABLED, `runner --trace` runs
one input and writes every tensor after each op (the trace format of edgejpq.emulate.common), so a
mismatch against the numpy reference is traced to the first op whose output differs.
"""

from __future__ import annotations

import os
import shutil
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
from edgejpq.emulate.common import (TRACE_END, TRACE_MAGIC, Mismatch, ProgressCallback, as_samples, compare_outputs,
                                    first_errors, parse_trace)
from edgejpq.errors import EdgejpqError

if TYPE_CHECKING:  # codegen imports edgejpq; import it lazily at run time
    from codegen.generate import GeneratedSources

COMPILE_FLAGS = ("-std=c99", "-O2", "-Wall", "-Wextra", "-Werror")
SANITIZE_FLAGS = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g")
_SANITIZER_ENV = {"ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0", "UBSAN_OPTIONS": "print_stacktrace=1"}
__all__ = ["TRACE_END", "TRACE_MAGIC", "HostEmulation", "HostRunner", "Mismatch", "ProgressCallback", "build_host",
           "compare_with_reference", "emulate_host", "find_compiler", "run_host", "trace_host"]


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
                           f"{first_errors(result.stderr)}")
    names = tensor_order(model)
    return HostRunner(path=exe, model_hash=model.short_hash, input_size=model.input_info.size,
                      output_size=model.output_info.size, tensor_names=names,
                      tensor_shapes=tuple(model.tensors[n].shape for n in names), sanitize=sanitize,
                      build_seconds=seconds)


# --------------------------------------------------------------------------- run


def _as_samples(runner: HostRunner, inputs: np.ndarray) -> np.ndarray:
    return as_samples(inputs, runner.input_size)


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
    return parse_trace(data, runner.tensor_names, runner.tensor_shapes, f"host runner {runner.path}")


# --------------------------------------------------------------------------- compare


def compare_with_reference(model: QuantizedModel, inputs: np.ndarray, c_outputs: np.ndarray, *,
                           runner: Optional[HostRunner] = None,
                           reference_outputs: Optional[np.ndarray] = None) -> Optional[Mismatch]:
    """None if the C outputs equal the reference byte for byte; else the first mismatch.

    With `runner`, the first mismatching sample is re-run in trace mode and the mismatch names the
    first tensor (in op order) whose bytes differ and the op that wrote it.
    """
    trace = None if runner is None else (lambda x: trace_host(runner, x))
    return compare_outputs(model, inputs, c_outputs, trace=trace, reference_outputs=reference_outputs)


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
