"""Validate a model's firmware over a serial link: same model (HELLO), same bytes as the numpy reference.

`validate_link` streams int8 inputs through any open link (a board's port, or QEMU's socket) and
compares every output byte with `edgejpq.quant.reference.predict`; `validate_qemu` builds the
firmware with the serial harness for a target, starts it in QEMU with its UART on a loopback
socket, validates through pyserial and stops QEMU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from edgejpq.artifact import QuantizedModel
from edgejpq.emulate.common import Mismatch, ProgressCallback, as_samples, compare_outputs
from edgejpq.errors import EdgejpqError
from edgejpq.quant.reference import predict
from edgejpq.serial.link import BITS_PER_BYTE, DEFAULT_RETRIES, DEFAULT_TIMEOUT_SECONDS, BoardResetError, SerialLink
from edgejpq.serial.protocol import FRAME_OVERHEAD, RUN_REPLY_HEADER, Hello, model_hello

if TYPE_CHECKING:
    from edgejpq.cost.target import TargetSpec
    from edgejpq.emulate.qemu import QemuFirmware


@dataclass(frozen=True)
class Validation:
    """What streaming a data set through the firmware showed."""

    hello: Hello
    port: str  # the device or pyserial URL validated through
    outputs: np.ndarray  # (N, output size) int8, from the firmware
    mismatch: Optional[Mismatch]  # the first sample whose bytes differ from the reference
    mismatched_samples: int
    accuracy: Optional[float]  # of the firmware's outputs, with labels
    cycles: Optional[np.ndarray]  # per sample, from the core's cycle counter (None without one)
    round_trip_seconds: np.ndarray  # per sample: request sent → answer decoded (wire time included)
    seconds: float
    stats: dict[str, int]
    instructions_per_inference: Optional[float] = None  # QEMU with the instruction-count plugin
    cycles_estimate_per_inference: Optional[float] = None  # from those counts and the target's instruction timings
    firmware: Optional["QemuFirmware"] = None

    @property
    def samples(self) -> int:
        return len(self.outputs)

    @property
    def bit_exact(self) -> bool:
        return self.mismatch is None and self.samples > 0

    @property
    def wire_bytes_per_sample(self) -> int:
        """Bytes on the line per sample: the RUN frame and its answer."""
        return 2 * FRAME_OVERHEAD + self.hello.input.size + RUN_REPLY_HEADER.size + self.hello.output.size

    def wire_samples_per_second(self, baud: int) -> float:
        """Samples per second a `baud` 8N1 line allows for the bytes alone (no inference time)."""
        return baud / (BITS_PER_BYTE * self.wire_bytes_per_sample)


def check_hello(model: QuantizedModel, hello: Hello, where: str) -> None:
    """The firmware must run this very model: same content hash, shapes and quantization."""
    if hello.model_hash != model.content_hash:
        raise EdgejpqError(f"{where}: the firmware runs model {hello.model_hash[:16]} ({hello.target} on {hello.board}), "
                           f"but the model file is {model.short_hash} ({model.name}): flash the firmware generated "
                           f"from this model file, or validate with the model file the firmware was built from")
    expected = model_hello(model, target=hello.target, board=hello.board, clock_hz=hello.clock_hz)
    for what, got, want in (("input", hello.input, expected.input), ("output", hello.output, expected.output)):
        if got != want:
            raise EdgejpqError(f"{where}: the firmware's {what} is {got.describe()}, the model's {want.describe()} "
                               f"although the hashes match: this is a bug in edgejpq, please report it")


def _labels_accuracy(outputs: np.ndarray, labels: Optional[np.ndarray]) -> Optional[float]:
    if labels is None or len(outputs) == 0:
        return None
    return float((outputs.reshape(len(labels), -1).argmax(axis=1) == np.asarray(labels)).mean())


def validate_link(link: SerialLink, model: QuantizedModel, inputs: np.ndarray, labels: Optional[np.ndarray] = None,
                  *, on_progress: Optional[ProgressCallback] = None, hello: Optional[Hello] = None) -> Validation:
    """HELLO (checked against `model`), then one RUN per int8 input; every output compared with the reference."""
    if hello is None:
        hello = link.hello()
    check_hello(model, hello, link.where)
    in_size, out_size = model.input_info.size, model.output_info.size
    x = as_samples(inputs, in_size)
    n = len(x)
    outputs = np.zeros((n, out_size), dtype=np.int8)
    cycles = np.zeros(n, dtype=np.int64)
    have_cycles = True
    round_trip = np.zeros(n, dtype=np.float64)
    start = time.perf_counter()
    for i in range(n):
        began = time.perf_counter()
        try:
            reply = link.run(x[i].tobytes(), out_size, what=f"sample {i}")
        except BoardResetError as exc:
            raise EdgejpqError(f"{exc} (at sample {i} of {n})") from None
        round_trip[i] = time.perf_counter() - began
        outputs[i] = np.frombuffer(reply.output, dtype=np.int8)
        if reply.cycles is None:
            have_cycles = False
        else:
            cycles[i] = reply.cycles
        if on_progress is not None:
            on_progress(i + 1)
    seconds = time.perf_counter() - start
    reference = predict(model, x.reshape(n, *model.input_info.shape)).reshape(n, -1) if n else outputs
    mismatch = compare_outputs(model, x.reshape(n, *model.input_info.shape), outputs,
                               reference_outputs=reference) if n else None
    differing = int((reference != outputs).any(axis=1).sum()) if n else 0
    return Validation(hello=hello, port=link.url, outputs=outputs, mismatch=mismatch, mismatched_samples=differing,
                      accuracy=_labels_accuracy(outputs, labels), cycles=cycles if have_cycles and n else None,
                      round_trip_seconds=round_trip, seconds=seconds, stats=link.stats.as_dict())


def validate_qemu(model: QuantizedModel, inputs: np.ndarray, workdir: Path, target: "TargetSpec",
                  labels: Optional[np.ndarray] = None, *, timeout: float = DEFAULT_TIMEOUT_SECONDS,
                  retries: int = DEFAULT_RETRIES, kernels: Optional[str] = None, count_instructions: bool = True,
                  on_progress: Optional[ProgressCallback] = None,
                  firmware: Optional["QemuFirmware"] = None) -> Validation:
    """Build the serial firmware for `target` (unless `firmware` is given), run it in QEMU, validate over its socket.

    With `count_instructions`, QEMU also loads the instruction-count plugin: QEMU has no cycle
    counter, so instructions per inference (exact, from the plugin's report when QEMU stops) stand
    in for cycles.
    """
    from codegen.generate import generate_sources
    from edgejpq.emulate.qemu import build_qemu, estimate_cycles, parse_counts
    from edgejpq.serial.qemu import QemuSerial

    workdir = Path(workdir)
    fw = firmware
    if fw is None:
        sources = generate_sources(model, workdir / "src", kernels=kernels or target.kernels)
        fw = build_qemu(model, sources, workdir / "build", target, serial=True)
    counts_file = workdir / "ejq_counts.txt" if count_instructions else None
    if counts_file is not None:
        counts_file.parent.mkdir(parents=True, exist_ok=True)
        counts_file.unlink(missing_ok=True)
    with QemuSerial(fw, counts_file=counts_file) as qemu:
        link = qemu.connect(timeout=timeout, retries=retries)
        result = validate_link(link, model, inputs, labels, on_progress=on_progress)
        qemu.stop()
    per_inference = cycles = None
    if counts_file is not None and counts_file.is_file():
        counts = parse_counts(counts_file.read_text(), str(counts_file))
        if len(counts.per_inference):  # resent RUNs add inferences: the mean is still per inference
            per_inference = float(counts.instructions.astype(np.float64).mean())
            weights = target.latency.instruction_cycles
            if weights is not None:
                cycles = float(estimate_cycles(counts.per_inference, weights).mean())
    return Validation(**{**result.__dict__, "instructions_per_inference": per_inference,
                         "cycles_estimate_per_inference": cycles, "firmware": fw})


__all__ = ["Validation", "check_hello", "validate_link", "validate_qemu"]
